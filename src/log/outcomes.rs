//! The outcome stream's side of the log's owner: outcomes are stored here,
//! under their verifier's fence, as entries of several (or each alone,
//! with its message id, beside an allot that reads no entries), sent live
//! once stored, and read back here when a verifier starts.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use futures::StreamExt;

use super::fence::Fence;
use crate::error::{Error, ErrorKind, Result};
use crate::snapshot::StoredOutcome;
use crate::streams::Streams;
use crate::wire::{outcomes_in, OutcomeEvent, Subjects, UnreadableOutcomes};

/// A partition's outcomes stored after some outcome-stream sequence.
pub struct StoredSince {
    /// The stream's last sequence when it was read (fence markers included).
    pub stored_through: u64,
    /// The partition's outcomes, with their sequences, in stream order.
    pub outcomes: Vec<(u64, StoredOutcome)>,
}

/// An outcome as it is published: on its auction's subject, with its
/// message id, under `fence`. (The simulator publishes through this too.)
pub fn outcome_message(
    subjects: &Subjects,
    fence: &Fence,
    stored: &StoredOutcome,
) -> (String, PublishMessage) {
    let o = &stored.outcome;
    let message = fence.stamp(
        PublishMessage::build()
            .message_id(OutcomeEvent::msg_id(&o.auction_id, &o.bid_id))
            .payload(stored.payload.clone()),
    );
    (subjects.outcome(&o.auction_id, o.kind), message)
}

/// An entry of outcomes as it is stored: on its partition's entry
/// subject, under `fence`, with no message id (one outcome per bid rests
/// on the verifier and the fence). (The simulator stores through this too.)
pub fn outcomes_entry_message(
    subjects: &Subjects,
    fence: &Fence,
    partition: u32,
    payload: bytes::Bytes,
) -> (String, PublishMessage) {
    let message = fence.stamp(PublishMessage::build().payload(payload));
    (subjects.outcomes_entry(partition), message)
}

/// Sends stored outcomes live, one message each on its auction's subject
/// ([`Subjects::outcome_live`]): at most once, for followers; the entry is
/// the record.
pub async fn send_live(client: &async_nats::Client, outcomes: &[(String, bytes::Bytes)]) {
    for (subject, payload) in outcomes {
        if let Err(e) = client.publish(subject.clone(), payload.clone()).await {
            tracing::debug!(error = %e, subject, "cannot send an outcome live");
        }
    }
}

impl Streams {
    /// Stores an entry of `partition`'s outcomes under `fence`, without
    /// waiting for the ack. A refused ack means another verifier took over
    /// ([`super::fence::refused`]).
    pub async fn send_outcomes_entry(
        &self,
        fence: &Fence,
        partition: u32,
        payload: bytes::Bytes,
    ) -> std::result::Result<PublishAckFuture, PublishError> {
        let (subject, message) = outcomes_entry_message(&self.subjects, fence, partition, payload);
        self.js.send_publish(subject, message).await
    }

    /// Sends a decided outcome on its auction's subject, with its message id
    /// and under `fence`, without waiting for the ack. A refused ack means
    /// another verifier took over ([`super::fence::refused`]).
    pub async fn send_outcome(
        &self,
        fence: &Fence,
        stored: &StoredOutcome,
    ) -> std::result::Result<PublishAckFuture, PublishError> {
        let (subject, message) = outcome_message(&self.subjects, fence, stored);
        self.js.send_publish(subject, message).await
    }

    /// The outcomes of `partition`'s auctions stored after outcome-stream
    /// sequence `after`: the ones a snapshot may not account for.
    pub async fn outcomes_since(&self, partition: u32, after: u64) -> Result<StoredSince> {
        const READING: &str = "reading the outcome stream";
        let mut stream = self.outcomes.clone();
        let state = stream
            .info()
            .await
            .map_err(Error::wrap(ErrorKind::Nats, READING))?
            .state
            .clone();
        let mut found = StoredSince {
            stored_through: state.last_sequence,
            outcomes: Vec::new(),
        };
        if state.messages == 0 || state.last_sequence <= after {
            return Ok(found);
        }
        // Outcomes only: the fence markers in between are many and no use.
        let consumer = self
            .outcomes
            .create_consumer(super::read::ordered(
                vec![
                    self.subjects.outcomes(None),
                    self.subjects.outcomes_entry(partition),
                ],
                DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
            ))
            .await
            .map_err(Error::wrap(ErrorKind::Nats, READING))?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(found);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(Error::wrap(ErrorKind::Nats, READING))?;
        loop {
            // A stream that stops delivering (its leader lost, say) is read
            // again from the start by the next run, rather than waited on.
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
            let message = match next {
                Ok(Some(message)) => message.map_err(Error::wrap(ErrorKind::Nats, READING))?,
                Ok(None) => break,
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        "the outcome stream stopped delivering",
                    ))
                }
            };
            let info = message
                .info()
                .map_err(Error::wrap(ErrorKind::Nats, READING))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let outcomes = match outcomes_in(&self.subjects, &message.subject, &message.payload) {
                Ok(outcomes) => outcomes,
                Err(e @ UnreadableOutcomes::NewerFormat(_)) => {
                    return Err(Error::new(
                        ErrorKind::Integrity,
                        format!("outcome stream entry {seq}: {e}"),
                    ))
                }
                // Not an outcome of this allot's: nothing to reuse.
                Err(UnreadableOutcomes::Invalid(_)) => Vec::new(),
            };
            let alone = outcomes.len() == 1 && !self.subjects.is_outcomes_entry(&message.subject);
            for outcome in outcomes {
                if self.subjects.partition(&outcome.auction_id) != partition {
                    continue;
                }
                // Republished as it was stored: the same bytes, alone or
                // taken out of its entry.
                let payload = match alone {
                    true => message.payload.clone(),
                    false => serde_json::to_vec(&outcome)
                        .expect("outcomes serialize")
                        .into(),
                };
                found
                    .outcomes
                    .push((seq, StoredOutcome { outcome, payload }));
            }
            if pending == 0 {
                break;
            }
        }
        Ok(found)
    }

    /// Refuses an outcome stream older than the log: its outcomes would
    /// belong to tries of an earlier log, with the same ids but other
    /// decisions.
    pub async fn check_outcomes_follow_log(&self, log: &stream::Info) -> Result<()> {
        let mut outcomes = self.outcomes.clone();
        let info = outcomes
            .info()
            .await
            .map_err(Error::wrap(ErrorKind::Setup, "outcome stream info"))?
            .clone();
        // The first outcome, not the first message: fence markers come and
        // go (a new owner purges the old ones) and are never older than the log.
        let mut first = None;
        for filter in self.subjects.outcome_filters(None) {
            match self.outcomes.direct_get_first_for_subject(filter).await {
                Ok(m) => first = Some(first.map_or(m.time, |f| std::cmp::min(f, m.time))),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::with_source(ErrorKind::Setup, e).context("outcome stream"))
                }
            }
        }
        let Some(first) = first else {
            return Ok(());
        };
        if first < log.created {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "stream {} holds outcomes from before stream {} was created; they belong to an earlier log: delete {} too, or use another --prefix",
                    info.config.name, log.config.name, info.config.name
                ),
            ));
        }
        Ok(())
    }
}
