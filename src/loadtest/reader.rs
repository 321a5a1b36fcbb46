//! Reading the outcome stream during a run and matching each outcome to
//! the bid it decides.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures::StreamExt;

use super::check::SeenOutcome;
use super::workload::bid_index;
use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::wire::{CancelReason, OutcomeKind, TryAt};

use super::run::{micros, Shared};

/// Reads the outcome stream from just after `shared.read_to`, and goes on
/// from where it stopped whenever the read fails (NATS restarting, say).
pub(super) async fn read_outcomes(shared: Arc<Shared>, stream: jetstream::stream::Stream) {
    loop {
        let from = shared.read_to.load(Ordering::Relaxed) + 1;
        let consumer = stream
            .create_consumer(crate::log::read::ordered(
                Vec::new(),
                DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
            ))
            .await;
        if let Ok(consumer) = consumer {
            if let Ok(messages) = consumer.messages().await {
                match_outcomes(&shared, messages).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Matches outcome events to the run's bids, as they arrive, until the
/// read fails.
async fn match_outcomes(shared: &Shared, mut messages: pull::Ordered) {
    while let Some(Ok(message)) = messages.next().await {
        if let Ok(info) = message.info() {
            shared
                .read_to
                .store(info.stream_sequence, Ordering::Relaxed);
        }
        // An entry of outcomes, or one stored alone (or an aggregate's
        // open event, of the other strategies, which is none).
        let seen: Vec<Seen> = if shared.subjects.is_outcomes_entry(&message.subject) {
            match serde_json::from_slice::<SeenEntry>(&message.payload) {
                Ok(entry) => entry.outcomes,
                Err(_) => continue,
            }
        } else {
            match serde_json::from_slice::<Seen>(&message.payload) {
                Ok(one) => vec![one],
                Err(_) => continue,
            }
        };
        for outcome in seen {
            matched(shared, outcome);
        }
    }
}

/// Matches one outcome event to the run's bid.
fn matched(shared: &Shared, outcome: Seen) {
    let Some(auction) = shared.workload.auction_index(&outcome.auction_id) else {
        return; // another run's
    };
    let now = Instant::now();
    let mut records = shared.records.lock().expect("lock poisoned");
    // Under `serve --identity bound` the outcome names the ids as the
    // log keeps them, qualified with the sender's scope.
    let record = bid_index(crate::identity::unqualified(&outcome.bid_id))
        .and_then(|i| records.get_mut(i as usize))
        .and_then(Option::as_mut);
    let Some(record) = record else {
        shared.stray.fetch_add(1, Ordering::Relaxed);
        return;
    };
    record
        .outcomes_at
        .push(micros(now.duration_since(shared.start)));
    let facts = &mut record.facts;
    facts.outcomes.push(SeenOutcome {
        kind: outcome.kind,
        rank: outcome.rank,
        reason: outcome.reason,
        amount: outcome.amount,
        try_seq: TryAt::new(outcome.try_seq, outcome.try_index),
        tried_at: outcome.tried_at,
        matches_bid: auction == facts.auction
            && is_bidder(
                crate::identity::unqualified(&outcome.bidder_id),
                facts.bidder,
            ),
    });
    if facts.outcomes.len() == 1 {
        shared.decided.fetch_add(1, Ordering::Relaxed);
        let since_due = now.duration_since(record.due);
        shared
            .outcome_latency
            .lock()
            .expect("lock poisoned")
            .saturating_record(micros(since_due));
        shared
            .last_outcome_us
            .fetch_max(micros(now.duration_since(shared.start)), Ordering::Relaxed);
    }
}

/// An entry of outcomes, read as [`Seen`]s.
#[derive(Deserialize)]
struct SeenEntry<'a> {
    #[serde(borrow)]
    outcomes: Vec<Seen<'a>>,
}

/// The parts of an outcome event the check needs, borrowed where they can
/// be: the reader sees every outcome of the run.
#[derive(Deserialize)]
struct Seen<'a> {
    #[serde(rename = "type")]
    kind: OutcomeKind,
    #[serde(borrow)]
    bid_id: Cow<'a, str>,
    #[serde(borrow)]
    auction_id: Cow<'a, str>,
    #[serde(borrow)]
    bidder_id: Cow<'a, str>,
    amount: u64,
    try_seq: u64,
    #[serde(default)]
    try_index: u32,
    #[serde(with = "crate::wire::timestamp")]
    tried_at: DateTime<Utc>,
    #[serde(default)]
    rank: Option<u32>,
    #[serde(default)]
    reason: Option<CancelReason>,
}

/// True when `bidder_id` is the workload's name for bidder `n` (`u<n>`).
fn is_bidder(bidder_id: &str, n: u32) -> bool {
    let Some(digits) = bidder_id.strip_prefix('u') else {
        return false;
    };
    let canonical = digits == "0" || !digits.starts_with('0');
    canonical && digits.parse::<u32>() == Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidder_names_match_exactly() {
        assert!(is_bidder("u0", 0) && is_bidder("u42", 42));
        assert!(!is_bidder("u042", 42) && !is_bidder("x42", 42) && !is_bidder("u4", 42));
        assert!(!is_bidder("u", 0) && !is_bidder("u-1", 1));
    }
}
