//! `allot watch`: print outcome events as JSON lines, and with `--holds`
//! the `held` notices of ranked auctions too.

use futures::stream::BoxStream;
use futures::StreamExt;

use super::{parse_id, print_json, Common};
use crate::wire::{HeldEvent, OutcomeEvent};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this auction's outcomes.
    #[arg(value_parser = parse_id)]
    pub auction_id: Option<String>,
    /// Replay the outcome stream from its start before following it.
    #[arg(long)]
    pub from_start: bool,
    /// Also print `held` notices (`top_amount` auctions) as they come.
    /// They are not stored, so `--from-start` cannot replay them.
    #[arg(long)]
    pub holds: bool,
}

pub async fn run(common: Common, args: Args) -> anyhow::Result<()> {
    let client = common.client().await?;
    let auction = args.auction_id.as_deref();
    let mut outcomes: BoxStream<'static, anyhow::Result<OutcomeEvent>> = if args.from_start {
        client
            .replay_outcomes(auction)
            .await?
            .map(|o| o.map_err(anyhow::Error::from))
            .boxed()
    } else {
        client.live_outcomes(auction).await?.map(Ok).boxed()
    };
    let mut holds = match args.holds {
        true => {
            let subject = common.prefix.hold(auction.unwrap_or("*"));
            let sub = client.client.subscribe(subject).await?;
            sub.boxed()
        }
        false => futures::stream::pending().boxed(),
    };
    // One signal future for the whole run, so no signal falls between two.
    let stop = super::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            o = outcomes.next() => match o {
                Some(o) => print_json(&o?),
                None => return Ok(()),
            },
            Some(h) = holds.next() => match serde_json::from_slice::<HeldEvent>(&h.payload) {
                Ok(h) => print_json(&h),
                Err(e) => eprintln!("allot: unreadable held notice on {}: {e}", h.subject),
            },
        }
    }
}
