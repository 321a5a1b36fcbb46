//! Publishing decisions: outcome events, and the sold-out notices the
//! gateways read.

use std::collections::HashSet;
use std::future::{Future, IntoFuture};
use std::pin::Pin;

use async_nats::jetstream::context::PublishAckFuture;

use crate::core::Ledger;
use crate::error::{Error, ErrorKind, Result};
use crate::log::fence::{refused, Fence};
use crate::snapshot::StoredOutcome;
use crate::streams::Streams;
use crate::wire::{outcome_entries, AuctionView, OutcomeEvent, RECORD_FORMAT};
use std::sync::atomic::Ordering;

/// The acks of a batch of outcomes: the highest outcome-stream sequence
/// acked once all are in.
pub(super) type Acks = Pin<Box<dyn Future<Output = Result<u64>> + Send>>;

/// Most outcome acks one batch leaves outstanding. Each unacked publish
/// holds one of the JetStream context's 5,000 permits until its ack is
/// awaited, and up to [`super::PIPELINE_DEPTH`] batches are in flight: past
/// 5,000, the next publish would wait for a permit that only awaiting an
/// earlier ack can free. A ranked close decides a whole auction at once, so
/// a batch can hold many more outcomes than log entries. It also sets how
/// many fence lanes a partition needs (`log/fence.rs`), written at every change
/// of owner: 256 keeps that at 1,024 per partition, and with several
/// partitions deciding at once there are still thousands in flight.
pub(super) const MAX_UNACKED: usize = 256;

/// Stores outcomes in order, as entries of several (or each alone beside
/// an allot that reads no entries, [`Streams::record_format`]); the
/// returned future waits for the acks, then sends the outcomes live.
/// Outcomes in `published` are already in the outcome stream and are
/// skipped.
pub(super) async fn send(
    streams: &Streams,
    fence: &Fence,
    outcomes: &[StoredOutcome],
    published: &HashSet<(String, String)>,
) -> Result<Acks> {
    if streams.record_format.load(Ordering::Relaxed) < RECORD_FORMAT {
        return send_alone(streams, fence, outcomes, published).await;
    }
    let fresh: Vec<&StoredOutcome> = outcomes
        .iter()
        .filter(|d| {
            let o = &d.outcome;
            published.is_empty() || !published.contains(&(o.auction_id.clone(), o.bid_id.clone()))
        })
        .collect();
    let Some(first) = fresh.first() else {
        return Ok(Box::pin(async { Ok(0) }));
    };
    let partition = streams.subjects.partition(&first.outcome.auction_id);
    let mut acks = Vec::new();
    let payloads: Vec<&[u8]> = fresh.iter().map(|d| d.payload.as_ref()).collect();
    for entry in outcome_entries(&payloads) {
        let ack = streams.send_outcomes_entry(fence, partition, entry).await;
        acks.push(ack.map_err(Error::wrap(ErrorKind::Nats, "store outcomes"))?);
    }
    let live: Vec<(String, bytes::Bytes)> = fresh
        .iter()
        .map(|d| {
            let o = &d.outcome;
            (
                streams.subjects.outcome_live(&o.auction_id, o.kind),
                d.payload.clone(),
            )
        })
        .collect();
    let client = streams.js.client();
    Ok(Box::pin(async move {
        let mut last = 0;
        for ack in futures::future::join_all(acks.into_iter().map(IntoFuture::into_future)).await {
            last = last.max(ack.map_err(refused)?.sequence);
        }
        crate::log::send_live(&client, &live).await;
        Ok(last)
    }))
}

/// [`send`] for an allot beside one that reads no entries of outcomes:
/// each outcome stored alone with its message id, waiting for acks only
/// to keep at most [`MAX_UNACKED`] outstanding.
async fn send_alone(
    streams: &Streams,
    fence: &Fence,
    outcomes: &[StoredOutcome],
    published: &HashSet<(String, String)>,
) -> Result<Acks> {
    let nats = || Error::wrap(ErrorKind::Nats, "publish outcome");
    let mut acks = std::collections::VecDeque::with_capacity(outcomes.len().min(MAX_UNACKED));
    let mut last = 0;
    for d in outcomes {
        let o = &d.outcome;
        if !published.is_empty() && published.contains(&(o.auction_id.clone(), o.bid_id.clone())) {
            continue;
        }
        if acks.len() >= MAX_UNACKED {
            let oldest: PublishAckFuture = acks.pop_front().expect("not empty");
            last = last.max(oldest.await.map_err(refused)?.sequence);
        }
        acks.push_back(streams.send_outcome(fence, d).await.map_err(nats())?);
    }
    Ok(Box::pin(async move {
        for ack in futures::future::join_all(acks.into_iter().map(IntoFuture::into_future)).await {
            last = last.max(ack.map_err(refused)?.sequence);
        }
        Ok(last)
    }))
}

/// Tells the gateways which auctions these confirmations filled.
pub(super) async fn announce_sold_out<'o>(
    streams: &Streams,
    ledger: &Ledger,
    outcomes: impl Iterator<Item = &'o OutcomeEvent>,
) -> Result<()> {
    for o in outcomes {
        let filled = ledger
            .fill(&o.auction_id)
            .is_some_and(|fill| o.rank.is_some_and(|rank| rank >= fill.capacity));
        if filled {
            announce(streams, ledger, &o.auction_id).await?;
        }
    }
    Ok(())
}

/// Tells the gateways which auctions are closed, so that they refuse bids
/// for them at once.
pub(super) async fn announce_closed(
    streams: &Streams,
    ledger: &Ledger,
    auctions: &HashSet<String>,
) -> Result<()> {
    for auction_id in auctions {
        announce(streams, ledger, auction_id).await?;
    }
    Ok(())
}

/// Writes an auction's view to the status bucket, which the gateways watch.
async fn announce(streams: &Streams, ledger: &Ledger, auction_id: &str) -> Result<()> {
    let Some(fill) = ledger.fill(auction_id) else {
        return Ok(());
    };
    let view = AuctionView {
        confirmed: fill.confirmed,
        sold_out: fill.sold_out(),
        closed: fill.closed,
    };
    streams
        .status
        .put(
            auction_id,
            serde_json::to_vec(&view).expect("views serialize").into(),
        )
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, e).context("status bucket"))?;
    Ok(())
}
