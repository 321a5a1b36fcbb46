//! Group commit of tries: a gateway appends the tries of one partition as
//! one log entry ([`TriesEntry`]), with no lock and no sequence check.
//!
//! One appender per partition takes whatever tries arrived while its
//! previous entry was being appended, up to [`MAX_TRIES_PER_ENTRY`] and
//! [`MAX_ENTRY_BYTES`], in arrival order. Nothing waits for a timer: a
//! try that finds the appender idle is appended at once, alone; under
//! load each entry carries the tries of one append's round trip, so the
//! cost per try (a stored message, a delivery, in the durable profile an
//! fsync) falls as the load rises.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use async_nats::jetstream::context::PublishError;
use tokio::sync::{mpsc, oneshot};

use crate::streams::Streams;
use crate::wire::{LogEvent, TriesEntry, TryAt, TryEvent, MAX_TRIES_PER_ENTRY, TRIES_FORMAT};

/// Most bytes of tries in one entry: well under nats-server's default
/// 1 MiB payload limit.
pub const MAX_ENTRY_BYTES: usize = 512 * 1024;

/// Tries waiting for their partition's appender; a full queue makes a
/// bid wait, and the gateway's own bound on requests in flight answers
/// the excess at once.
const QUEUE: usize = 4 * MAX_TRIES_PER_ENTRY;

/// A gateway's appenders, one per partition, started on first use.
#[derive(Clone)]
pub struct GroupCommit {
    streams: Streams,
    lanes: Arc<Vec<OnceLock<mpsc::Sender<Queued>>>>,
    /// The entry format to write: [`TRIES_FORMAT`], or 1 while an older
    /// allot that reads only one try per message runs beside this one
    /// (its verifier would skip entries of several).
    format: Arc<AtomicU32>,
}

/// A try waiting to be appended, and who waits for its place.
struct Queued {
    try_: TryEvent,
    done: oneshot::Sender<Result<TryAt, AppendError>>,
}

/// Why an entry could not be appended: every try in it gets the error,
/// whose cause is JetStream's (so that a caller can tell one that passes).
#[derive(Clone, Debug)]
pub struct AppendError(Arc<PublishError>);

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "appending tries: {}", self.0)
    }
}

impl std::error::Error for AppendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

impl AppendError {
    fn new(e: PublishError) -> AppendError {
        AppendError(Arc::new(e))
    }
}

impl GroupCommit {
    pub fn new(streams: Streams) -> GroupCommit {
        let partitions = streams.subjects.partitions() as usize;
        GroupCommit {
            streams,
            lanes: Arc::new((0..partitions).map(|_| OnceLock::new()).collect()),
            format: Arc::new(AtomicU32::new(TRIES_FORMAT)),
        }
    }

    /// Writes entries in `format` from now on: 1 (one try per message,
    /// with JetStream's de-duplication) or [`TRIES_FORMAT`].
    pub fn set_format(&self, format: u32) {
        let format = format.clamp(1, TRIES_FORMAT);
        if self.format.swap(format, Ordering::Relaxed) != format {
            tracing::warn!(format, "writing tries in log entry format {format}");
        }
    }

    /// Appends `t`; its place in the log once stored, and whether the log
    /// had it already (format 1 only: a resend JetStream de-duplicated).
    pub async fn append(&self, t: TryEvent) -> Result<(TryAt, bool), AppendError> {
        if self.format.load(Ordering::Relaxed) < TRIES_FORMAT {
            let ack = self
                .streams
                .append(&LogEvent::Try(t))
                .await
                .map_err(AppendError::new)?;
            return Ok((TryAt::new(ack.sequence, 0), ack.duplicate));
        }
        self.append_grouped(t).await.map(|at| (at, false))
    }

    /// Appends `t` in its partition's next entry of several.
    async fn append_grouped(&self, t: TryEvent) -> Result<TryAt, AppendError> {
        let partition = self.streams.subjects.partition(&t.auction_id);
        let lane = self.lanes[partition as usize].get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(appender(self.streams.clone(), partition, rx));
            tx
        });
        let (done, placed) = oneshot::channel();
        let queued = Queued { try_: t, done };
        if lane.send(queued).await.is_err() {
            unreachable!("an appender runs while its gateway holds its queue");
        }
        placed
            .await
            .expect("the appender answers every try it takes")
    }
}

/// One partition's appender: an entry at a time, each with every try
/// that queued meanwhile. Ends when the gateway drops its queue.
async fn appender(streams: Streams, partition: u32, mut queue: mpsc::Receiver<Queued>) {
    let subject = streams.subjects.tries_entry(partition);
    let mut tries = Vec::with_capacity(MAX_TRIES_PER_ENTRY);
    let mut waiting = Vec::with_capacity(MAX_TRIES_PER_ENTRY);
    while let Some(first) = queue.recv().await {
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(q) = next.take() {
            bytes += q.try_.bid_id.len() + q.try_.bidder_id.len() + q.try_.auction_id.len() + 96;
            tries.push(q.try_);
            waiting.push(q.done);
            if tries.len() < MAX_TRIES_PER_ENTRY && bytes < MAX_ENTRY_BYTES {
                next = queue.try_recv().ok();
            }
        }
        let entry = TriesEntry::new(std::mem::take(&mut tries));
        let placed = streams
            .append_tries(&subject, &entry)
            .await
            .map_err(AppendError::new);
        tries = entry.tries;
        tries.clear();
        for (index, done) in waiting.drain(..).enumerate() {
            let index = u32::try_from(index).expect("entries hold few tries");
            // A bid whose request ended meanwhile no longer listens.
            let _ = done.send(placed.clone().map(|seq| TryAt::new(seq, index)));
        }
    }
}

impl Streams {
    /// Appends one entry of tries on `subject`: no message id (a resent
    /// bid is the verifier's business, [`crate::core::Ledger`]) and no
    /// sequence check. The entry's stream sequence.
    async fn append_tries(&self, subject: &str, entry: &TriesEntry) -> Result<u64, PublishError> {
        let payload = serde_json::to_vec(entry).expect("entries serialize");
        let ack = self
            .js
            .publish(subject.to_string(), payload.into())
            .await?
            .await?;
        Ok(ack.sequence)
    }
}
