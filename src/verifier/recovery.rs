//! Starting from a snapshot: load it, publish what it decided but may not
//! have published, notice when it is behind the outcome stream, and align
//! the durable consumer with it.

use std::collections::VecDeque;
use std::path::Path;

use async_nats::jetstream::consumer::{
    pull, AckPolicy, DeliverPolicy, PriorityPolicy, PullConsumer,
};
use async_nats::jetstream::stream;

use super::lease::Lease;
use super::protocol::{Protocol, Published};
use super::{blocking, Verifier, VerifierConfig};
use crate::core::Ledger;
use crate::error::{Error, ErrorKind, Result};
use crate::log::fence::Fence;
use crate::observe::Metrics;
use crate::snapshot::{Position, Snapshot, SnapshotError, StoredOutcome, Sync};
use crate::streams::Streams;
use crate::wire::names::PULL_GROUP;

impl<'a> Verifier<'a> {
    /// Loads the snapshot, and makes sure everything it decided is
    /// published exactly once.
    pub(super) async fn start(
        streams: &'a Streams,
        partition: u32,
        lease: &'a Lease,
        fence: &'a Fence,
        metrics: &'a Metrics,
        config: &VerifierConfig,
    ) -> Result<Verifier<'a>> {
        let log = log_info(streams).await?;
        streams.check_outcomes_follow_log(&log).await?;
        let identity = format!("{}@{}", log.config.name, log.created.to_rfc3339());
        let dir = config.data_dir.clone();
        let sync = config.sync;
        let (snapshot, ledger, position, unpublished) = blocking(move || -> Result<_> {
            match load(&dir, sync, &identity) {
                Err(e @ (SnapshotError::Damaged { .. } | SnapshotError::Corrupt { .. })) => {
                    // The streams hold everything the snapshot did: set the
                    // damaged files aside (for a post-mortem) and rebuild.
                    let aside = crate::snapshot::set_aside(&dir)
                        .map_err(Error::wrap(ErrorKind::Snapshot, "setting a damaged snapshot aside"))?;
                    tracing::error!(error = %e, moved_to = %aside.display(), "snapshot damaged; rebuilding it from the streams");
                    Ok(load(&dir, sync, &identity)?)
                }
                loaded => Ok(loaded?),
            }
        })
        .await?;

        // Outcomes the snapshot does not know to be published: a crash came
        // between publishing and recording it, or the snapshot was lost (or
        // a rebuild after that was interrupted). JetStream's de-duplication
        // only covers a recent window, so look.
        let found = read_published(streams, partition, position.outcomes_seq).await?;
        let (protocol, actions) = Protocol::recover(ledger, position, unpublished, found);
        let mut v = Verifier {
            streams,
            partition,
            lease,
            fence,
            metrics,
            snapshot: Some(snapshot),
            protocol,
        };
        let mut in_flight = VecDeque::new();
        v.run(actions, &mut in_flight).await?;
        while let Some(acks) = in_flight.pop_front() {
            let actions = v.protocol.outcomes_acked(acks.await?);
            v.run(actions, &mut in_flight).await?;
        }
        Ok(v)
    }
}

/// A loaded snapshot: the file, the ledger, the position and the
/// decisions not known to be published.
type Loaded = (Snapshot, Ledger, Position, Vec<StoredOutcome>);

/// Opens the snapshot in `dir` for the log `identity` and loads it; a
/// snapshot of another log is emptied first.
fn load(dir: &Path, sync: Sync, identity: &str) -> std::result::Result<Loaded, SnapshotError> {
    let mut snapshot = Snapshot::open(dir, sync)?;
    match snapshot.log_identity()? {
        Some(known) if known == identity => {}
        Some(known) => {
            tracing::warn!(snapshot = %known, log = %identity, "snapshot belongs to an earlier log; starting over");
            snapshot.reset(identity)?;
        }
        None => snapshot.reset(identity)?,
    }
    let ledger = snapshot.load()?;
    let position = snapshot.position()?;
    let unpublished = snapshot.unpublished()?;
    Ok((snapshot, ledger, position, unpublished))
}

/// Outcomes of the partition's auctions stored after outcome-stream
/// sequence `after`: the ones the snapshot may not account for.
async fn read_published(streams: &Streams, partition: u32, after: u64) -> Result<Published> {
    let stored = streams.outcomes_since(partition, after).await?;
    let mut found = Published::through(after);
    found.stored_through(stored.stored_through);
    for (seq, outcome) in stored.outcomes {
        found.found(seq, outcome);
    }
    Ok(found)
}

/// Makes the durable consumer deliver from just after the snapshot's
/// position. The snapshot, not the consumer, is the record of progress:
/// a consumer that is ahead (snapshot lost) or holds unacked deliveries
/// (crash before ack) is re-created at the right sequence, so recovery
/// does not wait for redelivery timeouts.
pub(super) async fn align_consumer(
    streams: &Streams,
    partition: u32,
    last_seq: u64,
    config: &VerifierConfig,
) -> Result<PullConsumer> {
    let log = &streams.log;
    let name = config.consumer.as_str();
    let filter = streams.subjects.log_partition(partition);
    if let Ok(info) = log.consumer_info(name).await {
        // A consumer made before pinning is made again, with it.
        let pinned = info.config.priority_policy == PriorityPolicy::PinnedClient;
        let aligned = pinned
            && info.config.filter_subject == filter
            && info.ack_floor.stream_sequence == last_seq
            && info.num_ack_pending == 0;
        if aligned {
            return log
                .get_consumer(name)
                .await
                .map_err(Error::wrap(ErrorKind::Setup, format!("consumer {name}")));
        }
        tracing::info!(
            consumer_ack_floor = info.ack_floor.stream_sequence,
            snapshot_last_seq = last_seq,
            "re-aligning the verifier consumer with the snapshot"
        );
        log.delete_consumer(name)
            .await
            .map_err(Error::wrap(ErrorKind::Setup, format!("consumer {name}")))?;
    }
    let deliver_policy = match last_seq {
        0 => DeliverPolicy::All,
        seq => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
    };
    log.create_consumer(pull::Config {
        durable_name: Some(name.to_string()),
        description: Some(format!(
            "allot verifier: decides partition {partition}'s tries in log order"
        )),
        filter_subject: filter,
        deliver_policy,
        ack_policy: AckPolicy::All,
        ack_wait: config.ack_wait,
        max_ack_pending: (config.batch_size * 8) as i64,
        // One puller at a time: a verifier woken from a pause past its
        // lease, still pulling, is refused deliveries meant for its
        // successor (who unpins it on taking over).
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec![PULL_GROUP.to_string()],
        ..Default::default()
    })
    .await
    .map_err(Error::wrap(ErrorKind::Setup, format!("consumer {name}")))
}

/// The log stream's info.
async fn log_info(streams: &Streams) -> Result<stream::Info> {
    let mut log = streams.log.clone();
    log.info()
        .await
        .cloned()
        .map_err(Error::wrap(ErrorKind::Setup, "log stream info"))
}
