//! The JetStream resources allot runs on, created when missing: the log
//! stream (tries and auction events), the outcome stream, and the status
//! bucket the verifier fills for the gateway's fast rejects.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::error::{Error, ErrorKind};
use crate::wire::Subjects;

/// How the streams are created. Existing streams are used as they are,
/// but for the outcome stream's subjects and de-duplication window.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// JetStream's de-duplication window for the log: a bid resent within
    /// it gets its original reply. Past it, the verifier still gives each
    /// bid one outcome. The outcome stream keeps at most
    /// [`OUTCOME_DUPLICATE_WINDOW`].
    pub duplicate_window: Duration,
    /// Replicas per stream (1 on a single server).
    pub replicas: usize,
    /// How long a verifier's lease lasts unrenewed: how long a successor
    /// waits after a verifier dies without releasing it.
    pub lease_ttl: Duration,
    /// Partitions of a new log. An existing log keeps the number it was
    /// created with, recorded in its metadata.
    pub partitions: u32,
}

/// The outcome stream's de-duplication window, at most. One outcome per bid
/// does not rest on it: a verifier looks in the outcome stream before it
/// publishes what a predecessor may have published, and the fence refuses
/// a superseded one. It is a second guard, against an outcome still in
/// flight from a verifier that just died while its successor reads, which
/// is a matter of milliseconds. Held longer, every outcome's id stays in
/// nats-server's memory for the whole window: with 120 s, a million bids
/// a minute slowed the server down by a quarter as its heap grew.
pub const OUTCOME_DUPLICATE_WINDOW: Duration = Duration::from_secs(10);

/// The log stream's metadata key recording its number of partitions.
pub const PARTITIONS_KEY: &str = "allot.partitions";

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            lease_ttl: Duration::from_secs(3),
            partitions: crate::wire::DEFAULT_PARTITIONS,
        }
    }
}

/// Handles on everything allot reads and writes in JetStream.
#[derive(Clone)]
pub struct Streams {
    /// The JetStream context everything is published through.
    pub js: jetstream::Context,
    /// Subject and stream names.
    pub subjects: Subjects,
    /// The ordered log: `<prefix>.try.*` and `<prefix>.auction.*`.
    pub log: stream::Stream,
    /// Outcomes: entries `<prefix>.outcomes.<partition>`, outcomes stored
    /// alone `<prefix>.outcome.<auction_id>.<kind>`, and the fences.
    pub outcomes: stream::Stream,
    /// Auction id -> [`crate::wire::AuctionView`], written by the verifier.
    pub status: kv::Store,
    /// The verifier's lease; entries age out after `lease_ttl`.
    pub leases: kv::Store,
    /// How long an unrenewed lease lasts.
    pub lease_ttl: Duration,
    /// The oldest record format that every running allot reads
    /// ([`crate::wire::RECORD_FORMAT`]); a verifier stores outcomes in
    /// entries only while it is 3. Shared by every clone, set by the
    /// verifiers' check (`verifier::assign`).
    pub record_format: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Streams {
    /// Creates the streams and the buckets if missing. A JetStream that
    /// does not answer in time (a cluster still electing its leaders, or
    /// several processes creating replicated streams at once) is asked
    /// again for up to [`SETUP_PATIENCE`].
    pub async fn ensure(
        js: jetstream::Context,
        subjects: Subjects,
        options: &StreamOptions,
    ) -> Result<Streams, Error> {
        let started = std::time::Instant::now();
        loop {
            match Streams::ensure_once(js.clone(), subjects.clone(), options).await {
                Err(e) if e.kind() == ErrorKind::Timeout && started.elapsed() < SETUP_PATIENCE => {
                    tracing::warn!(error = %e, "JetStream setup timed out; asking again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                result => return result,
            }
        }
    }

    async fn ensure_once(
        js: jetstream::Context,
        subjects: Subjects,
        options: &StreamOptions,
    ) -> Result<Streams, Error> {
        let stream = |name: String, description: &str, subjects: Vec<String>| stream::Config {
            name,
            description: Some(format!("allot: {description}")),
            subjects,
            storage: stream::StorageType::File,
            duplicate_window: options.duplicate_window,
            num_replicas: options.replicas,
            allow_direct: true,
            ..Default::default()
        };
        let bucket = |bucket: String, description: &str| kv::Config {
            bucket,
            description: format!("allot: {description}"),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: options.replicas,
            ..Default::default()
        };
        let name = subjects.tries_stream();
        let mut log = js
            .get_or_create_stream(stream::Config {
                metadata: [(PARTITIONS_KEY.to_string(), options.partitions.to_string())].into(),
                ..stream(
                    name.clone(),
                    "the ordered log of auction events and bid tries",
                    subjects.log_subjects(),
                )
            })
            .await
            .map_err(|e| stream_error(e, name.clone()))?;
        // The log's own number of partitions wins over the option: every
        // event of an auction must stay in one partition.
        let info = log
            .info()
            .await
            .map_err(Error::wrap(ErrorKind::Setup, name.clone()))?;
        let info = info.clone();
        let subjects = partitioned(subjects, &info)?;
        // A log made before entries of several tries gets their subject.
        let wanted = subjects.log_subjects();
        if wanted.iter().any(|s| !info.config.subjects.contains(s)) {
            let mut config = info.config.clone();
            config.subjects = wanted;
            js.update_stream(config)
                .await
                .map_err(Error::wrap(ErrorKind::Setup, name.clone()))?;
        }
        if subjects.partitions() != options.partitions {
            tracing::info!(
                partitions = subjects.partitions(),
                asked = options.partitions,
                "the log keeps the partitions it was created with"
            );
        }
        let name = subjects.outcomes_stream();
        let window = options.duplicate_window.min(OUTCOME_DUPLICATE_WINDOW);
        let mut outcomes = js
            .get_or_create_stream(stream::Config {
                duplicate_window: window,
                ..stream(
                    name.clone(),
                    "one confirmed or cancelled event per try",
                    subjects.outcome_stream_subjects(),
                )
            })
            .await
            .map_err(|e| stream_error(e, name.clone()))?;
        // Streams made before fences existed get the fence subject added;
        // those made with a longer window get the shorter one.
        let info = outcomes
            .info()
            .await
            .map_err(Error::wrap(ErrorKind::Setup, name.clone()))?
            .clone();
        let wanted = subjects.outcome_stream_subjects();
        if wanted.iter().any(|s| !info.config.subjects.contains(s))
            || info.config.duplicate_window > window
        {
            let mut config = info.config.clone();
            config.subjects = wanted;
            config.duplicate_window = window;
            outcomes = js
                .update_stream(config)
                .await
                .map(|_| outcomes)
                .map_err(Error::wrap(ErrorKind::Setup, name))?;
        }
        let name = subjects.status_bucket();
        let status = js
            .create_or_update_key_value(bucket(name.clone(), "auction fill for fast rejects"))
            .await
            .map_err(|e| bucket_error(e, name))?;
        let name = subjects.leases_bucket();
        let leases = js
            .create_or_update_key_value(kv::Config {
                max_age: options.lease_ttl,
                ..bucket(name.clone(), "the verifier's lease")
            })
            .await
            .map_err(|e| bucket_error(e, name))?;
        Ok(Streams {
            js,
            subjects,
            log,
            outcomes,
            status,
            leases,
            lease_ttl: options.lease_ttl,
            record_format: std::sync::Arc::new(crate::wire::RECORD_FORMAT.into()),
        })
    }
}

/// `subjects` with the number of partitions the log was created with,
/// as its metadata records it.
fn partitioned(subjects: Subjects, log: &stream::Info) -> Result<Subjects, Error> {
    match log.config.metadata.get(PARTITIONS_KEY).map(|p| p.parse::<u32>()) {
        Some(Ok(p)) => subjects.with_partitions(p),
        _ => Err(Error::new(
            ErrorKind::Setup,
            format!(
                "stream {} has no valid {PARTITIONS_KEY:?} metadata (made by an allot without partitions?): delete it and {}, or use another --prefix",
                log.config.name,
                subjects.outcomes_stream()
            ),
        )),
    }
}

/// `subjects` with the existing log's number of partitions, for a reader
/// of the log (`allot audit`, `allot status`): every event subject names
/// its partition, and a reader must compute the same ones.
pub async fn log_subjects(js: &jetstream::Context, subjects: Subjects) -> Result<Subjects, Error> {
    let name = subjects.tries_stream();
    let mut log = js.get_stream(&name).await.map_err(Error::wrap(
        ErrorKind::Nats,
        format!("stream {name} (is allot serve running here?)"),
    ))?;
    let info = log
        .info()
        .await
        .map_err(Error::wrap(ErrorKind::Nats, name))?;
    partitioned(subjects, info)
}

/// How long [`Streams::ensure`] asks a JetStream that does not answer.
const SETUP_PATIENCE: Duration = Duration::from_secs(120);

/// A stream that could not be created: a timeout is worth asking again.
fn stream_error(e: jetstream::context::CreateStreamError, name: String) -> Error {
    use jetstream::context::CreateStreamErrorKind::{JetStreamUnavailable, TimedOut};
    let kind = match e.kind() {
        TimedOut | JetStreamUnavailable => ErrorKind::Timeout,
        _ if timed_out(&e) => ErrorKind::Timeout,
        _ => ErrorKind::Setup,
    };
    Error::with_source(kind, e).context(name)
}

/// The client reports some timeouts inside a generic `JetStream` error
/// kind (creating a bucket on a busy cluster did): only its text tells.
fn timed_out(e: &dyn std::error::Error) -> bool {
    e.to_string().contains("timed out")
}

/// A bucket that could not be created: a timeout is worth asking again.
fn bucket_error(e: jetstream::context::CreateKeyValueError, name: String) -> Error {
    let kind = match e.kind() {
        jetstream::context::CreateKeyValueErrorKind::TimedOut => ErrorKind::Timeout,
        _ if timed_out(&e) => ErrorKind::Timeout,
        _ => ErrorKind::Setup,
    };
    Error::with_source(kind, e).context(name)
}
