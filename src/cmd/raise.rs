//! `allot raise`: raise a bid that holds a slot in a `top_amount` auction.
//! Exits 0 when the raise applied; a refusal prints the reply and fails,
//! like a rejected bid.

use std::time::Duration;

use super::{parse_id, Common};
use crate::wire::{label, RaiseReply, RaiseRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Auction id.
    #[arg(value_parser = parse_id)]
    pub auction_id: String,
    /// The bid to raise.
    #[arg(long, value_parser = parse_id)]
    pub bid_id: String,
    /// Bidder id: only the bidder who placed a bid may raise it.
    #[arg(long, value_parser = parse_id)]
    pub bidder: String,
    /// The new amount in minor units, above --expected.
    #[arg(long)]
    pub amount: u64,
    /// The bid's amount now. If another raise of the bid came first, this
    /// one is refused as a conflict, with the amount to retry from.
    #[arg(long)]
    pub expected: u64,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

pub async fn run(common: Common, args: Args) -> anyhow::Result<()> {
    let mut client = common.client().await?;
    client.timeout = Duration::from_secs(args.timeout);
    let raise = RaiseRequest {
        bid_id: args.bid_id,
        bidder_id: args.bidder,
        amount: args.amount,
        expected_amount: args.expected,
    };
    let reply = client.raise(&args.auction_id, &raise).await?;
    super::auction::finish(&reply)?;
    if let RaiseReply::Refused {
        reason,
        current_amount,
        ..
    } = &reply
    {
        match current_amount {
            Some(current) => anyhow::bail!(
                "raise refused: {} (the bid's amount is {current})",
                label(reason)
            ),
            None => anyhow::bail!("raise refused: {}", label(reason)),
        }
    }
    Ok(())
}
