//! `allot withdraw`: withdraw one bid, whether or not its try is in the
//! log yet. Exits 0 when the bid is withdrawn (or will be when its try
//! arrives); a refusal prints the reply and fails, like a rejected bid.

use std::time::Duration;

use super::{parse_id, Common};
use crate::wire::{label, WithdrawReply, WithdrawRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Auction id.
    #[arg(value_parser = parse_id)]
    pub auction_id: String,
    /// The bid to withdraw.
    #[arg(long, value_parser = parse_id)]
    pub bid_id: String,
    /// Bidder id: only the bidder who placed a bid may withdraw it.
    #[arg(long, value_parser = parse_id)]
    pub bidder: String,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

pub async fn run(common: Common, args: Args) -> anyhow::Result<()> {
    let mut client = common.client().await?;
    client.timeout = Duration::from_secs(args.timeout);
    let withdraw = WithdrawRequest {
        bid_id: args.bid_id,
        bidder_id: args.bidder,
    };
    let reply = client.withdraw(&args.auction_id, &withdraw).await?;
    super::auction::finish(&reply)?;
    if let WithdrawReply::Refused { reason, .. } = &reply {
        anyhow::bail!("withdraw refused: {}", label(reason));
    }
    Ok(())
}
