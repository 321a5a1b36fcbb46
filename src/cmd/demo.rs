//! `allot demo`: the whole product on a laptop. Starts a private
//! `nats-server` and the service in-process, opens an auction, fires a burst
//! of concurrent bids, waits for every outcome and prints a summary. Stops
//! everything it started.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::embedded::Embedded;
use super::Common;
use crate::client::AllotClient;
use crate::wire::{label, AuctionSpec, BidReply, BidRequest, OpenReply, OutcomeKind};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bids to place.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(1..))]
    pub bids: u32,
    /// Distinct bidders (each may bid several times; one win each).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub bidders: u32,
    /// Winning slots.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: u32,
    /// Bids in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
}

const AUCTION: &str = "demo";

pub async fn run(common: Common, args: Args) -> anyhow::Result<()> {
    let embedded = Embedded::start(common.prefix).await?;
    let result = burst(&embedded.client, &args).await;
    embedded.stop().await?;
    let summary = result?;
    println!("{summary}");
    Ok(())
}

/// Opens the demo auction, bids, and waits for all outcomes.
async fn burst(client: &AllotClient, args: &Args) -> anyhow::Result<String> {
    let spec = AuctionSpec::with_capacity(args.capacity);
    let opened = open_when_ready(client, &spec).await?;
    eprintln!("opened auction {AUCTION:?} with {} slots; placing {} bids from {} bidders, {} at a time ...",
        args.capacity, args.bids, args.bidders, args.concurrency);
    let mut outcomes = client.live_outcomes(Some(AUCTION)).await?;
    client.client.flush().await?;

    let start = Instant::now();
    let replies: Vec<_> = futures::stream::iter(0..args.bids)
        .map(|i| {
            let bid = BidRequest {
                bid_id: format!("bid-{i}"),
                bidder_id: format!("bidder-{}", i % args.bidders),
                amount: 100 + u64::from(i % 50),
                wait: false,
            };
            async move { client.bid(AUCTION, &bid).await }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let replied = start.elapsed();

    let mut accepted = 0u64;
    let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0u64;
    for reply in &replies {
        match reply {
            Ok(
                BidReply::Accepted { .. } | BidReply::Confirmed { .. } | BidReply::Cancelled { .. },
            ) => accepted += 1,
            Ok(BidReply::Rejected { reason, .. }) => {
                *rejected.entry(label(reason)).or_default() += 1
            }
            Ok(BidReply::Error { .. }) | Err(_) => errors += 1,
        }
    }

    let mut confirmed = 0u64;
    let mut cancelled: BTreeMap<String, u64> = BTreeMap::new();
    let mut winners = HashSet::new();
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    while confirmed + cancelled.values().sum::<u64>() < accepted {
        let outcome = tokio::select! {
            _ = &mut deadline => anyhow::bail!("timed out waiting for outcomes"),
            o = outcomes.next() => o.ok_or_else(|| anyhow::anyhow!("outcome subscription ended"))?,
        };
        match outcome.kind {
            OutcomeKind::Confirmed => {
                confirmed += 1;
                winners.insert(outcome.bidder_id);
            }
            OutcomeKind::Cancelled => *cancelled.entry(label(&outcome.reason)).or_default() += 1,
        }
    }
    let decided = start.elapsed();
    let secs = decided.as_secs_f64().max(1e-9);
    let mut out = String::new();
    out.push_str(&format!(
        "auction {AUCTION:?}: {} slots (open_seq {})\n",
        args.capacity, opened
    ));
    out.push_str(&format!("bids sent:   {}\n", args.bids));
    out.push_str(&format!("  accepted:  {accepted}\n"));
    for (reason, n) in &rejected {
        out.push_str(&format!("  rejected:  {n} ({reason})\n"));
    }
    out.push_str(&format!("  errors:    {errors}\n"));
    out.push_str(&format!(
        "confirmed:   {confirmed} (distinct winners: {})\n",
        winners.len()
    ));
    for (reason, n) in &cancelled {
        out.push_str(&format!("cancelled:   {n} ({reason})\n"));
    }
    out.push_str(&format!(
        "time:        all replies in {:.2} s, all outcomes in {:.2} s\nthroughput:  {:.0} bids/s replied, {:.0} bids/s decided",
        replied.as_secs_f64(),
        secs,
        f64::from(args.bids) / replied.as_secs_f64().max(1e-9),
        f64::from(args.bids) / secs,
    ));
    if confirmed > u64::from(args.capacity) || winners.len() as u64 != confirmed {
        anyhow::bail!("invariant broken:\n{out}");
    }
    Ok(out)
}

/// Opens the demo auction, retrying while the service is still starting.
async fn open_when_ready(client: &AllotClient, spec: &AuctionSpec) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client.open(AUCTION, spec).await {
            Ok(OpenReply::Opened { open_seq, .. }) => return Ok(open_seq),
            Ok(OpenReply::Error { message, .. }) => {
                anyhow::bail!("cannot open the demo auction: {message}")
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "service not ready yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
