//! `allot bid`: place one bid, optionally wait for its outcome. Exits 0
//! when the bid was accepted, whatever its outcome.

use std::time::Duration;

use futures::StreamExt;

use super::{parse_id, print_json, Common};
use crate::client::AllotClient;
use crate::wire::{BidReply, BidRequest, HeldEvent, Policy, StatusReply};

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
    /// Wait for the bid to be decided: the reply is then `confirmed` or
    /// `cancelled`. In a top_amount auction, where a held bid's outcome
    /// comes at the close, the reply is `accepted` and its held notice is
    /// printed after it.
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait for the reply and the outcome.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

/// What `--wait` saw first for the bid.
enum Seen {
    Outcome(crate::wire::OutcomeEvent),
    Held(HeldEvent),
}

pub async fn run(common: Common, args: Args) -> anyhow::Result<()> {
    let mut client = common.client().await?;
    client.timeout = Duration::from_secs(args.timeout);
    let bid = BidRequest {
        bid_id: args.bid_id.unwrap_or_else(new_bid_id),
        bidder_id: args.bidder,
        amount: args.amount,
        wait: args.wait,
    };
    // The reply carries the decision. Should it come without one (a held
    // bid, or a verifier too slow to answer the gateway in time), follow
    // the auction's outcomes from the start of the stream, set up before
    // bidding: a fast outcome is not missed, and a resent bid's earlier
    // outcome is found. Held notices are not stored, so they are followed
    // live, from before the bid too.
    let (mut outcomes, mut holds) = if args.wait {
        let outcomes = client.replay_outcomes(Some(&args.auction_id)).await?;
        let holds = client
            .client
            .subscribe(common.prefix.hold(&args.auction_id))
            .await?;
        (Some(outcomes), Some(holds))
    } else {
        (None, None)
    };
    let reply = client.bid(&args.auction_id, &bid).await?;
    super::auction::finish(&reply)?;
    if let BidReply::Rejected { reason, .. } = &reply {
        anyhow::bail!("bid rejected: {}", crate::wire::label(reason));
    }
    let (Some(outcomes), Some(holds), BidReply::Accepted { .. }) =
        (outcomes.as_mut(), holds.as_mut(), &reply)
    else {
        return Ok(());
    };
    let wait = async {
        loop {
            tokio::select! {
                o = outcomes.next() => match o {
                    Some(o) => {
                        let o = o?;
                        if o.bid_id == bid.bid_id {
                            return Ok(Seen::Outcome(o));
                        }
                    }
                    None => anyhow::bail!("outcome stream ended"),
                },
                Some(h) = holds.next() => {
                    if let Ok(h) = serde_json::from_slice::<HeldEvent>(&h.payload) {
                        if h.bid_id == bid.bid_id {
                            return Ok(Seen::Held(h));
                        }
                    }
                }
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(args.timeout), wait).await {
        Ok(Ok(Seen::Outcome(o))) => print_json(&o),
        Ok(Ok(Seen::Held(h))) => {
            print_json(&h);
            eprintln!(
                "allot: bid {:?} holds a slot; its outcome comes at the close (allot watch {} prints it)",
                bid.bid_id, args.auction_id
            );
        }
        Ok(Err(e)) => return Err(e),
        // A resent bid that holds a slot gets no second held notice.
        Err(_) if ranked(&client, &args.auction_id).await => eprintln!(
            "allot: no outcome for bid {:?} within {} s: in a top_amount auction a held bid's outcome comes at the close",
            bid.bid_id, args.timeout
        ),
        Err(_) => anyhow::bail!(
            "no outcome for bid {:?} within {} s",
            bid.bid_id,
            args.timeout
        ),
    }
    Ok(())
}

/// Whether the auction ranks its bids, so that an accepted bid may wait for
/// the close for its outcome. False when the status cannot be read.
async fn ranked(client: &AllotClient, auction_id: &str) -> bool {
    match client.status(auction_id).await {
        Ok(StatusReply::Ok { spec, .. }) => match spec.policy {
            Policy::FirstN => false,
            Policy::TopAmount => true,
        },
        _ => false,
    }
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
