//! `allot result`: what became of one of the sender's bids, asked of the
//! service (`allot.result.<auction_id>`), so it works for a bidder with no
//! right to read the outcome stream. Exits 0 when the bid is confirmed;
//! a cancelled or undecided bid prints the reply and fails.

use std::time::Duration;

use super::{parse_id, Common};
use crate::wire::{label, ResultReply};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Auction id.
    #[arg(value_parser = parse_id)]
    pub auction_id: String,
    /// The bid asked about (with `serve --identity bound`, one of the
    /// sender's own).
    #[arg(long, value_parser = parse_id)]
    pub bid_id: String,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

pub async fn run(common: Common, args: Args) -> anyhow::Result<()> {
    let mut client = common.client().await?;
    client.timeout = Duration::from_secs(args.timeout);
    let reply = client.result(&args.auction_id, &args.bid_id).await?;
    super::auction::finish(&reply)?;
    match &reply {
        ResultReply::Cancelled { reason, .. } => anyhow::bail!("bid cancelled: {}", label(reason)),
        ResultReply::Undecided { .. } => anyhow::bail!(
            "no outcome for bid {:?} yet (not decided, held until a ranked auction's close, or never accepted)",
            args.bid_id
        ),
        ResultReply::Confirmed { .. } | ResultReply::Error { .. } => Ok(()),
    }
}
