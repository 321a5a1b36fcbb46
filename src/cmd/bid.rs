//! `allot bid`: place one bid, optionally wait for its outcome. Exits 0
//! when the bid was accepted, whatever its outcome.

use std::time::Duration;

use futures::StreamExt;

use super::{parse_id, print_json, Common};
use crate::wire::{BidReply, BidRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Auction id.
    #[arg(value_parser = parse_id)]
    pub auction_id: String,
    /// Bidder id.
    #[arg(long, value_parser = parse_id)]
    pub bidder: String,
    /// Amount in minor units.
    #[arg(long)]
    pub amount: u64,
    /// Bid id; resending the same one is safe. Default: a new random id.
    #[arg(long, value_parser = parse_id)]
    pub bid_id: Option<String>,
    /// Also wait for the outcome and print it.
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait for the reply and the outcome.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

pub async fn run(common: Common, args: Args) -> anyhow::Result<()> {
    let mut client = common.client().await?;
    client.timeout = Duration::from_secs(args.timeout);
    let bid = BidRequest {
        bid_id: args.bid_id.unwrap_or_else(new_bid_id),
        bidder_id: args.bidder,
        amount: args.amount,
    };
    // Follow the auction's outcomes from the start of the stream, set up
    // before bidding: a fast outcome is not missed, and a resent bid's
    // earlier outcome is found.
    let mut outcomes = if args.wait {
        Some(client.replay_outcomes(Some(&args.auction_id)).await?)
    } else {
        None
    };
    let reply = client.bid(&args.auction_id, &bid).await?;
    super::auction::finish(&reply)?;
    if let BidReply::Rejected { reason, .. } = &reply {
        anyhow::bail!("bid rejected: {}", crate::wire::label(reason));
    }
    let (Some(outcomes), BidReply::Accepted { .. }) = (outcomes.as_mut(), &reply) else {
        return Ok(());
    };
    let wait = async {
        while let Some(o) = outcomes.next().await {
            let o = o?;
            if o.bid_id == bid.bid_id {
                return Ok(o);
            }
        }
        anyhow::bail!("outcome stream ended")
    };
    let outcome = tokio::time::timeout(Duration::from_secs(args.timeout), wait)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no outcome for bid {:?} within {} s",
                bid.bid_id,
                args.timeout
            )
        })??;
    print_json(&outcome);
    Ok(())
}

/// A fresh bid id: the time in nanoseconds and the process id, unique for
/// one CLI call.
fn new_bid_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bid-{nanos:x}-{:x}", std::process::id())
}
