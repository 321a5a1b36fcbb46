//! Dividing the partitions among the verifiers that are running.
//!
//! Each verifier process keeps a member entry in the leases bucket, aged
//! out like a lease (the bucket's `max_age`) once it stops renewing it.
//! Every tick it counts the live members and aims for a fair share,
//! `ceil(P / members)` partitions: it gives up partitions above that
//! (finishing what is in flight and releasing their leases, so another
//! takes them at once), and takes free ones below it. Which partition
//! belongs to whom is only ever settled by the leases themselves (a
//! create-if-absent in JetStream), so a count that is briefly wrong (a
//! member just started, or just died) costs balance, never safety.
//!
//! When a process dies, its leases and its member entry age out together,
//! and the survivors' next tick sees a larger share and takes its
//! partitions: a takeover within the lease time and a tick.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lease::{self, Lease};
use super::{decide_partition, VerifierConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::observe::Metrics;
use crate::streams::Streams;
use crate::wire::names::{lease_key, member_key, MEMBER_PREFIX};

/// A partition this process decides.
struct Owned {
    /// Tells its task to finish and release the partition.
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
}

/// Takes and gives up partitions until `shutdown`, then stops them all.
pub(super) async fn run(
    streams: Streams,
    config: VerifierConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(shutdown);
    // Outcomes in entries only once no older allot runs beside this one;
    // checked before deciding, then every few seconds.
    check_formats(&streams).await;
    let formats = tokio::spawn({
        let streams = streams.clone();
        async move {
            loop {
                tokio::time::sleep(FORMAT_CHECK_EVERY).await;
                check_formats(&streams).await;
            }
        }
    });
    let _formats = AbortOnDrop(formats);
    let owner = lease::owner(&config.data_dir);
    let me = member_key(&owner);
    let partitions = streams.subjects.partitions();
    let ttl = streams.lease_ttl;
    // A fifth of the lease time: a successor starts within that much of
    // the lapse.
    let tick = (ttl / 5).min(Duration::from_millis(500));
    let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
    let mut share = None;
    let failed = loop {
        // One round of looking; a shutdown meanwhile (NATS may be gone,
        // and its requests slow to fail) wins.
        let round = async {
            reap(&mut owned).await?;
            let counted = tokio::time::timeout(ASK, members(&streams, &me, &owner)).await;
            let counted = counted.unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Timeout,
                    "no answer counting the verifiers",
                ))
            });
            match counted {
                Ok((count, rank)) => {
                    let fair = partitions.div_ceil(count);
                    if share != Some(fair) {
                        tracing::info!(
                            members = count,
                            partitions,
                            share = fair,
                            "verifiers sharing the partitions"
                        );
                        share = Some(fair);
                    }
                    shed(&mut owned, fair as usize).await;
                    take(&streams, &config, &metrics, &owner, &mut owned, fair, rank).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot count the verifiers; keeping the partitions held")
                }
            }
            metrics
                .partitions_owned
                .store(owned.len() as u64, Ordering::Relaxed);
            Ok::<_, Error>(())
        };
        tokio::select! {
            _ = &mut shutdown => break None,
            round = round => if let Err(e) = round { break Some(e) },
        }
        tokio::select! {
            _ = &mut shutdown => break None,
            _ = tokio::time::sleep(tick) => {}
        }
    };
    // Stop every partition and leave the membership, all at once: with
    // NATS gone, each of these waits out its bound.
    let mut result = failed.map_or(Ok(()), Err);
    for o in owned.values() {
        let _ = o.stop.send(true);
    }
    let stopped = async {
        for (_, o) in std::mem::take(&mut owned) {
            if let Err(e) = join(o.task).await {
                if result.is_ok() && !superseded(&e) {
                    result = Err(e);
                }
            }
        }
    };
    let leave = tokio::time::timeout(GOODBYE, streams.leases.delete(&me));
    let _ = tokio::join!(stopped, leave);
    metrics.partitions_owned.store(0, Ordering::Relaxed);
    // Said once for the process too: one stopped before it owned a
    // partition has no partition's word for it.
    tracing::info!("verifier stopped");
    result
}

/// How long one question to the leases bucket may take before the round
/// moves on: a request stuck on a busy cluster must not hold up taking
/// over a dead verifier's partitions for the client's 10 s timeout.
const ASK: Duration = Duration::from_secs(2);

/// How long a stopping verifier tries to hand its entries back (its member
/// entry, its leases) before leaving them to age out.
pub(super) const GOODBYE: Duration = Duration::from_secs(1);

/// Takes free partitions until this member holds `fair` of them.
async fn take(
    streams: &Streams,
    config: &VerifierConfig,
    metrics: &Arc<Metrics>,
    owner: &str,
    owned: &mut BTreeMap<u32, Owned>,
    fair: u32,
    rank: u32,
) {
    let partitions = streams.subjects.partitions();
    // Each member starts looking at its own stretch of the partitions, so
    // that they do not all race for the same ones.
    let first = rank * fair;
    for p in (0..partitions).map(|i| (first + i) % partitions) {
        if owned.len() >= fair as usize {
            break;
        }
        if owned.contains_key(&p) {
            continue;
        }
        let key = lease_key(p);
        let taken = Lease::try_acquire(&streams.leases, &key, owner, streams.lease_ttl);
        // A lease created but not answered in time is ours all the same:
        // the next round takes it over as this verifier's own.
        let taken = tokio::time::timeout(ASK, taken)
            .await
            .unwrap_or_else(|_| Err(Error::new(ErrorKind::Timeout, "no answer taking the lease")));
        match taken {
            Ok(Some(lease)) => {
                owned.insert(p, start(streams, config, p, lease, metrics));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cannot take a partition's lease");
                break;
            }
        }
    }
}

/// Starts deciding partition `p`.
fn start(
    streams: &Streams,
    config: &VerifierConfig,
    p: u32,
    lease: Lease,
    metrics: &Arc<Metrics>,
) -> Owned {
    let (stop, stopped) = watch::channel(false);
    let stopping = async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let task = tokio::spawn(decide_partition(
        streams.clone(),
        config.clone(),
        p,
        lease,
        metrics.clone(),
        stopping,
    ));
    Owned { stop, task }
}

/// Drops the partitions whose task ended. One superseded by another
/// verifier, or stopped by a passing NATS failure, is simply no longer
/// owned (it may be taken again); any other error stops the verifier.
async fn reap(owned: &mut BTreeMap<u32, Owned>) -> Result<()> {
    let done: Vec<u32> = owned
        .iter()
        .filter(|(_, o)| o.task.is_finished())
        .map(|(p, _)| *p)
        .collect();
    for p in done {
        let o = owned.remove(&p).expect("listed");
        match join(o.task).await {
            Ok(()) => {}
            Err(e) if superseded(&e) => {}
            Err(e) if matches!(e.kind(), ErrorKind::Nats | ErrorKind::Timeout) => {
                tracing::warn!(partition = p, error = %e, "could not start deciding the partition; will try again");
            }
            Err(e) => return Err(e.context(format!("partition {p}"))),
        }
    }
    Ok(())
}

/// Gives up partitions above `fair`, the last of this member's order first.
async fn shed(owned: &mut BTreeMap<u32, Owned>, fair: usize) {
    while owned.len() > fair {
        let (p, o) = owned.pop_last().expect("more than fair");
        tracing::info!(partition = p, "giving the partition up to share the load");
        let _ = o.stop.send(true);
        if let Err(e) = join(o.task).await {
            tracing::warn!(partition = p, error = %e, "partition stopped with an error");
        }
    }
}

async fn join(task: JoinHandle<Result<()>>) -> Result<()> {
    task.await
        .map_err(|e| Error::new(ErrorKind::Setup, format!("partition task failed: {e}")))?
}

fn superseded(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Superseded | ErrorKind::Fenced)
}

/// Renews this member's entry and counts the live members; also returns
/// this member's rank among them (by key), which spreads where each starts
/// looking for free partitions.
async fn members(streams: &Streams, me: &str, owner: &str) -> Result<(u32, u32)> {
    const MEMBERSHIP: &str = "verifier membership";
    streams
        .leases
        .put(me, owner.to_string().into())
        .await
        .map_err(Error::wrap(ErrorKind::Nats, MEMBERSHIP))?;
    let keys = streams.leases.keys().await;
    let mut keys = keys.map_err(Error::wrap(ErrorKind::Nats, MEMBERSHIP))?;
    let mut members = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(Error::wrap(ErrorKind::Nats, MEMBERSHIP))?;
        if key.starts_with(MEMBER_PREFIX) {
            members.push(key);
        }
    }
    members.sort();
    let rank = members.iter().position(|k| k == me).unwrap_or(0);
    Ok((members.len().max(1) as u32, rank as u32))
}

/// How often a verifier asks which record formats the running allot
/// instances read.
const FORMAT_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Sets the outcome format to the oldest any running allot reads (see
/// [`crate::observe::micro::LOG_FORMAT`]). No answer changes nothing.
async fn check_formats(streams: &Streams) {
    let wait = Duration::from_millis(150);
    let client = streams.js.client();
    match crate::observe::micro::oldest_log_format(&client, wait).await {
        Ok(Some(format)) => {
            let format = format.min(crate::wire::RECORD_FORMAT);
            let was = streams
                .record_format
                .swap(format, std::sync::atomic::Ordering::Relaxed);
            if was != format {
                tracing::warn!(format, "storing outcomes for record format {format}");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "cannot ask which record formats run"),
    }
}

/// A task that ends with its owner, on every way out.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
