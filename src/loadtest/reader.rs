//! Reading the outcome stream during a run and matching each outcome to
//! the bid it decides.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures::StreamExt;

use super::check::SeenOutcome;
use super::workload::bid_index;
use crate::wire::OutcomeEvent;

use super::run::{micros, Shared};

/// Reads the outcome stream from just after `shared.read_to`, and goes on
/// from where it stopped whenever the read fails (NATS restarting, say).
pub(super) async fn read_outcomes(shared: Arc<Shared>, stream: jetstream::stream::Stream) {
    loop {
        let from = shared.read_to.load(Ordering::Relaxed) + 1;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
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
        let Ok(outcome) = serde_json::from_slice::<OutcomeEvent>(&message.payload) else {
            continue; // an aggregate's open event
        };
        if shared.workload.auction_index(&outcome.auction_id).is_none() {
            continue; // another run's
        }
        let now = Instant::now();
        let mut records = shared.records.lock().expect("lock poisoned");
        let record = bid_index(&outcome.bid_id)
            .and_then(|i| records.get_mut(i as usize))
            .and_then(Option::as_mut);
        let Some(record) = record else {
            shared.stray.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let facts = &mut record.facts;
        facts.outcomes.push(SeenOutcome {
            kind: outcome.kind,
            rank: outcome.rank,
            reason: outcome.reason,
            amount: outcome.amount,
            try_seq: outcome.try_seq,
            tried_at: outcome.tried_at,
            matches_bid: shared.workload.auction_index(&outcome.auction_id) == Some(facts.auction)
                && outcome.bidder_id == format!("u{}", facts.bidder),
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
}
