//! The one owner of the log and the outcome stream, as async-nats's
//! `kv::Store` owns its subjects and headers: every append to the log,
//! every outcome published (under its verifier's fence, [`fence`]), and
//! every read of either stream goes through here. Callers hand over an
//! event or an outcome; the subject, the message id and the expectations
//! come from it ([`LogEvent::msg_id`], [`OutcomeEvent::msg_id`]), so no two
//! writers can spell them differently.
//!
//! The verifier's durable consumer, which delivers the log in bulk, is
//! made in `verifier/recovery.rs`: its position belongs to the verifier's
//! snapshot, not to the log.
//!
//! [`OutcomeEvent::msg_id`]: crate::wire::OutcomeEvent::msg_id

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::{PublishMessage, StreamMessage};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{DirectGetError, DirectGetErrorKind, LastRawMessageErrorKind};

use async_nats::jetstream::stream::Stream;

use crate::streams::Streams;
use crate::wire::{LogEntry, LogEvent, Subjects, TryAt, TryEvent};

mod counts;
pub mod fence;
mod group;
mod outcomes;
pub mod read;

pub use counts::{all_try_counts, outcome_counts, try_counts, Decided, OutcomeCounter, TryCounts};
pub use group::{AppendError, GroupCommit, MAX_ENTRY_BYTES};
pub use outcomes::{outcome_message, outcomes_entry_message, send_live, StoredSince};
pub use read::{count, count_after, read_after, read_all, Reader, StoredMessage};

impl Streams {
    /// Appends `event` on its subject with its message id: a resend within
    /// the de-duplication window is acked with the first copy's sequence
    /// and `duplicate` set. No sequence check, except that an `open` must
    /// be its auction's first event (JetStream settles two racing opens:
    /// the second gets `WrongLastSequence`).
    pub async fn append(&self, event: &LogEvent) -> Result<PublishAck, PublishError> {
        self.send_append(event).await?.await
    }

    /// [`Self::append`], without waiting for the ack.
    pub async fn send_append(&self, event: &LogEvent) -> Result<PublishAckFuture, PublishError> {
        let auction_id = event.auction_id();
        let subject = match event {
            LogEvent::Try(_) => self.subjects.try_event(auction_id),
            _ => self.subjects.auction_event(auction_id),
        };
        let mut message = PublishMessage::build()
            .payload(serde_json::to_vec(event).expect("events serialize").into());
        if let Some(id) = event.msg_id() {
            message = message.message_id(id);
        }
        if matches!(event, LogEvent::Open(_)) {
            message = message.expected_last_subject_sequence(0);
        }
        self.js.send_publish(subject, message).await
    }

    /// The log entry at sequence `seq`.
    pub async fn entry(&self, seq: u64) -> Result<StreamMessage, DirectGetError> {
        self.log.direct_get(seq).await
    }

    /// The first event of an auction (its `open`), if it has any. Any
    /// replica may answer a direct get, and one that has not caught up
    /// with the stream's leader would make an auction just opened look
    /// unknown, whose refusal is final: so "none" is asked of the leader.
    pub async fn first_event(
        &self,
        auction_id: &str,
    ) -> Result<Option<StreamMessage>, async_nats::Error> {
        if let Some(found) = first_event(&self.log, &self.subjects, auction_id).await? {
            return Ok(Some(found));
        }
        let subject = self.subjects.auction_event(auction_id);
        match self.log.get_first_raw_message_by_subject(subject, 1).await {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The try at `at`, as the log stored it (`None` if the entry there
    /// holds no try at that place).
    pub async fn try_at(&self, at: TryAt) -> Result<Option<TryEvent>, DirectGetError> {
        let stored = self.entry(at.seq).await?;
        let entries = LogEntry::read(
            &self.subjects,
            &stored.subject,
            &stored.payload,
            stored.time,
        );
        Ok(match entries.into_iter().nth(at.index as usize) {
            Some(LogEntry::Event(LogEvent::Try(t)) | LogEntry::InvalidTry(t)) => Some(t),
            _ => None,
        })
    }

    /// The log sequence of the last entry that may hold a try of the
    /// auction, if any: its last try alone in a message (format 1), or
    /// its partition's last entry of tries.
    pub async fn last_try(&self, auction_id: &str) -> Result<Option<u64>, DirectGetError> {
        let alone = self.subjects.try_event(auction_id);
        let alone = found(self.log.direct_get_last_for_subject(alone).await)?;
        let entries = self
            .subjects
            .tries_entry(self.subjects.partition(auction_id));
        let entries = found(self.log.direct_get_last_for_subject(entries).await)?;
        Ok(alone.into_iter().chain(entries).map(|m| m.sequence).max())
    }

    /// The sequence of a partition's first entry at or after `from`, if any.
    pub async fn next_in_partition(
        &self,
        partition: u32,
        from: u64,
    ) -> Result<Option<u64>, DirectGetError> {
        let filter = self.subjects.log_partition(partition);
        let next = found(
            self.log
                .direct_get_next_for_subject(filter, Some(from))
                .await,
        )?;
        Ok(next.map(|m| m.sequence))
    }
}

/// The first event of an auction in `log`, if it has any.
async fn first_event(
    log: &Stream,
    subjects: &Subjects,
    auction_id: &str,
) -> Result<Option<StreamMessage>, DirectGetError> {
    found(
        log.direct_get_first_for_subject(subjects.auction_event(auction_id))
            .await,
    )
}

/// A direct get's answer, with "no such message" as `None`.
fn found(
    got: Result<StreamMessage, DirectGetError>,
) -> Result<Option<StreamMessage>, DirectGetError> {
    match got {
        Ok(message) => Ok(Some(message)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
