//! Reading the log and the outcome stream in bulk or by counts: for the
//! audit, the status and the gateway's status replies. Readers need only
//! the rights to read; nothing here creates a stream or writes.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy, PullConsumer};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, DirectGetError};
use async_nats::jetstream::Context;
use futures::StreamExt;

use crate::error::{Error, ErrorKind};
use crate::wire::Subjects;

/// Most messages an ordered read asks nats-server for at a time. Entries
/// are up to 512 KiB ([`MAX_ENTRY_BYTES`](super::MAX_ENTRY_BYTES), and as
/// much for outcomes); the client library asks for 500 at once, up to 250
/// MiB, and nats-server drops a client with more than 64 MiB pending to it
/// as a slow consumer. After a verifier caught up on a million bids, whose
/// entries were full, `allot status` failed so every time.
pub const READ_BATCH: i64 = 64;

/// An ordered consumer's configuration for reading `filters` (all of the
/// stream if empty) from `from`, asking for at most [`READ_BATCH`]
/// messages at a time.
pub fn ordered(filters: Vec<String>, from: DeliverPolicy) -> pull::OrderedConfig {
    pull::OrderedConfig {
        filter_subjects: filters,
        deliver_policy: from,
        max_batch: READ_BATCH,
        ..Default::default()
    }
}

/// The log and the outcome stream of a running service, opened for
/// reading by a tool that may not create them (`allot status`,
/// `allot audit`, under an operator's read-only rights).
pub struct Reader {
    /// Subjects, with the log's own number of partitions.
    pub subjects: Subjects,
    /// The ordered log.
    pub log: stream::Stream,
    /// The outcome stream.
    pub outcomes: stream::Stream,
}

impl Reader {
    /// Opens both streams; an error says when they do not exist.
    pub async fn open(js: &Context, subjects: Subjects) -> Result<Reader, Error> {
        let subjects = crate::streams::log_subjects(js, subjects).await?;
        let log = js
            .get_stream(subjects.tries_stream())
            .await
            .map_err(Error::wrap(
                ErrorKind::Nats,
                format!(
                    "stream {} (is allot serve running here?)",
                    subjects.tries_stream()
                ),
            ))?;
        let outcomes = js
            .get_stream(subjects.outcomes_stream())
            .await
            .map_err(Error::wrap(ErrorKind::Nats, subjects.outcomes_stream()))?;
        Ok(Reader {
            subjects,
            log,
            outcomes,
        })
    }

    /// The first event of an auction (its `open`), if it has any.
    pub async fn first_event(
        &self,
        auction_id: &str,
    ) -> Result<Option<StreamMessage>, DirectGetError> {
        super::first_event(&self.log, &self.subjects, auction_id).await
    }

    /// Message counts per log subject matching `filter`.
    pub async fn log_counts(&self, filter: &str) -> Result<BTreeMap<String, u64>, Error> {
        per_subject(&self.log, filter).await
    }
}

/// Message counts per subject matching `filter`.
/// Message counts per subject of `stream` matching `filter`.
pub async fn per_subject(
    stream: &stream::Stream,
    filter: &str,
) -> Result<BTreeMap<String, u64>, Error> {
    let mut counts = BTreeMap::new();
    let mut info = stream
        .info_with_subjects(filter)
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, e).context(filter.to_string()))?;
    while let Some(entry) = info.next().await {
        let (subject, count) = entry
            .map_err(|e| Error::with_source(ErrorKind::Nats, e).context(filter.to_string()))?;
        counts.insert(subject, count as u64);
    }
    Ok(counts)
}

/// Number of messages stored on the subjects matching `filter`. Counted
/// by the server, as a consumer's pending count, so that a filter
/// matching one subject per bid sends no list of subjects.
pub async fn count(stream: &stream::Stream, filter: &str) -> Result<u64, Error> {
    count_after(stream, filter, 0).await
}

/// Entries on `filter` after sequence `after`: a short-lived consumer's
/// count, as in [`count`].
pub async fn count_after(stream: &stream::Stream, filter: &str, after: u64) -> Result<u64, Error> {
    let counting = || Error::wrap(ErrorKind::Nats, format!("counting {filter}"));
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            inactive_threshold: Duration::from_secs(5),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(counting())?;
    let info = consumer.cached_info();
    let (pending, name) = (info.num_pending, info.name.clone());
    // Left alone, the server removes it after `inactive_threshold`.
    let _ = stream.delete_consumer(&name).await;
    Ok(pending)
}

/// A stream message as read back.
pub struct StoredMessage {
    pub seq: u64,
    pub subject: String,
    pub payload: bytes::Bytes,
    pub time: chrono::DateTime<chrono::Utc>,
}

/// Every message on `filters` in the stream, in order, as of now.
pub async fn read_all(
    js: &Context,
    name: &str,
    filters: Vec<String>,
) -> Result<Vec<StoredMessage>, Error> {
    read_after(js, name, filters, 0).await
}

/// Every message on `filters` in the stream after sequence `after`, in
/// order, as of now.
pub async fn read_after(
    js: &Context,
    name: &str,
    filters: Vec<String>,
    after: u64,
) -> Result<Vec<StoredMessage>, Error> {
    let mut out = Vec::new();
    for_each_after(js, name, filters, after, |m| out.push(m)).await?;
    Ok(out)
}

/// [`read_after`], handing each message to `f` as it comes instead of
/// keeping them all.
pub async fn for_each_after(
    js: &Context,
    name: &str,
    filters: Vec<String>,
    after: u64,
    mut f: impl FnMut(StoredMessage),
) -> Result<(), Error> {
    let reading = format!("reading stream {name}");
    let stream: stream::Stream = js
        .get_stream(name)
        .await
        .map_err(Error::wrap(ErrorKind::Nats, reading.as_str()))?;
    let consumer = stream
        .create_consumer(ordered(
            filters,
            DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
        ))
        .await
        .map_err(Error::wrap(ErrorKind::Nats, reading.as_str()))?;
    // The count when the read starts: later messages are not audited.
    let mut remaining = consumer.cached_info().num_pending;
    let mut messages = consumer
        .messages()
        .await
        .map_err(Error::wrap(ErrorKind::Nats, reading.as_str()))?;
    while remaining > 0 {
        let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
        let message = match next {
            Ok(Some(m)) => m.map_err(Error::wrap(ErrorKind::Nats, reading.as_str()))?,
            Ok(None) => break,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("stream {name} stopped delivering with {remaining} messages to go"),
                ))
            }
        };
        let info = message
            .info()
            .map_err(Error::wrap(ErrorKind::Nats, reading.as_str()))?;
        f(StoredMessage {
            seq: info.stream_sequence,
            subject: message.subject.to_string(),
            payload: message.payload.clone(),
            time: info.published,
        });
        remaining -= 1;
    }
    Ok(())
}
