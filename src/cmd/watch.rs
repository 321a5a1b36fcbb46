//! `allot watch`: print outcome events as JSON lines.

use futures::StreamExt;

use super::{print_json, Common};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this auction's outcomes.
    pub auction_id: Option<String>,
    /// Replay the outcome stream from its start before following it.
    #[arg(long)]
    pub from_start: bool,
}

pub async fn run(common: Common, args: Args) -> anyhow::Result<()> {
    let client = common.client().await?;
    let auction = args.auction_id.as_deref();
    if args.from_start {
        let mut outcomes = client.replay_outcomes(auction).await?;
        loop {
            tokio::select! {
                _ = super::shutdown_signal() => return Ok(()),
                o = outcomes.next() => match o {
                    Some(o) => print_json(&o?),
                    None => return Ok(()),
                },
            }
        }
    } else {
        let mut outcomes = client.live_outcomes(auction).await?;
        loop {
            tokio::select! {
                _ = super::shutdown_signal() => return Ok(()),
                o = outcomes.next() => match o {
                    Some(o) => print_json(&o),
                    None => return Ok(()),
                },
            }
        }
    }
}
