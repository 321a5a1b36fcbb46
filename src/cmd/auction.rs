//! `allot auction open|close|status`.

use std::num::NonZeroU32;

use chrono::{DateTime, Utc};

use super::{parse_id, print_json, Common};
use crate::wire::{timestamp, AuctionSpec, CloseReply, OpenReply, Policy, Reply, StatusReply};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Open an auction (idempotent for the same settings).
    Open(OpenArgs),
    /// Close an auction now: later bids are cancelled, and in a top_amount
    /// auction the held bids are confirmed (idempotent).
    Close {
        /// Auction id.
        #[arg(value_parser = parse_id)]
        auction_id: String,
    },
    /// Show an auction's settings and fill.
    Status {
        /// Auction id.
        #[arg(value_parser = parse_id)]
        auction_id: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct OpenArgs {
    /// Auction id: 1 to 64 characters of [A-Za-z0-9_-].
    #[arg(value_parser = parse_id)]
    pub auction_id: String,
    /// Number of winning slots.
    #[arg(long)]
    pub capacity: NonZeroU32,
    /// Smallest winning amount, in minor units.
    #[arg(long, default_value_t = 0)]
    pub min_amount: u64,
    /// When the auction stops taking bids (RFC 3339, e.g.
    /// 2026-12-01T12:00:00Z); must be in the future.
    #[arg(long, value_parser = parse_closes_at)]
    pub closes_at: Option<DateTime<Utc>>,
    /// Most slots one bidder may win.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_wins_per_bidder: u32,
    /// Who wins: the first N eligible bids, or the N highest amounts at close.
    #[arg(long, default_value_t = Policy::default())]
    pub policy: Policy,
}

/// A `closes_at` in the future. The service takes a past one (the auction
/// then opens closed, refusing every bid), but from the command line that
/// is a typo, not a wish.
fn parse_closes_at(s: &str) -> Result<DateTime<Utc>, String> {
    let at = timestamp::parse(s).map_err(|e| format!("not an RFC 3339 time: {e}"))?;
    let now = timestamp::now();
    if at <= now {
        return Err(format!(
            "{} is not in the future (now is {}): the auction would open closed",
            timestamp::format(&at),
            timestamp::format(&now)
        ));
    }
    Ok(at)
}

pub async fn run(common: Common, command: Command) -> anyhow::Result<()> {
    let client = common.client().await?;
    match command {
        Command::Open(args) => {
            let spec = AuctionSpec {
                capacity: args.capacity,
                min_amount: args.min_amount,
                closes_at: args.closes_at,
                max_wins_per_bidder: args.max_wins_per_bidder,
                policy: args.policy,
            };
            let reply: OpenReply = client.open(&args.auction_id, &spec).await?;
            finish(&reply)
        }
        Command::Close { auction_id } => {
            let reply: CloseReply = client.close(&auction_id).await?;
            finish(&reply)
        }
        Command::Status { auction_id } => {
            let reply: StatusReply = client.status(&auction_id).await?;
            finish(&reply)
        }
    }
}

/// Prints the reply; an error reply also makes the command fail.
pub(crate) fn finish<R: Reply>(reply: &R) -> anyhow::Result<()> {
    print_json(reply);
    match reply.error() {
        Some((code, message)) => anyhow::bail!("{message} ({})", crate::wire::label(&code)),
        None => Ok(()),
    }
}
