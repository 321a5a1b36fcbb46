//! One verifier at a time per partition of the log.
//!
//! Two verifiers folding the same partition would each see part of it and
//! could confirm more than N bids. So a verifier holds a lease per
//! partition: an entry in the leases bucket, whose `max_age` is the lease
//! time, renewed with a compare-and-set well within it. The server ages out
//! the entries of a verifier that died, and the others (each looking for
//! free partitions, see `assign.rs`) then take them in [`Lease::try_acquire`]. A verifier that cannot renew
//! stops deciding before its lease can lapse, and one that finds its lease
//! taken goes back to standing by. A verifier paused past its lease does
//! not know it has lost it until it looks; the fence (`fence.rs`) keeps
//! what it publishes meanwhile out of the outcome stream.
//!
//! A restart of the same verifier (same host, same data directory, which a
//! file lock keeps to one process) takes its own lease over at once.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};

/// A lease's timing, apart from its I/O (the simulator keeps the same):
/// renewed every quarter of its time to live, and deciding is safe for
/// half of it from when a renewal was sent, so that one late renewal still
/// leaves a quarter to spare before the entry can age out.
#[derive(Clone, Copy, Debug)]
pub struct Term {
    /// How long an unrenewed entry lasts (the bucket's `max_age`).
    pub ttl: Duration,
}

impl Term {
    /// How often the holder renews.
    pub fn renew_every(self) -> Duration {
        self.ttl / 4
    }

    /// How long after sending a renewal that succeeded deciding is safe.
    pub fn safe_for(self) -> Duration {
        self.ttl / 2
    }
}

/// Holds the data directory for this process alone, until dropped.
pub(super) struct DirLock {
    /// Locked with an OS file lock, released by the OS even on `kill -9`.
    _file: File,
}

impl DirLock {
    pub(super) fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::with_source(ErrorKind::Config, e)
                .context(format!("cannot create data directory {}", dir.display()))
        })?;
        let path = dir.join("allot.lock");
        let file = File::create(&path).map_err(|e| {
            Error::with_source(ErrorKind::Config, e).context(path.display().to_string())
        })?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "data directory {} is in use by another allot process",
                    dir.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::with_source(ErrorKind::Config, e).context(path.display().to_string()))
            }
        }
    }
}

/// A held lease, renewed in the background until released.
pub(super) struct Lease {
    bucket: kv::Store,
    /// The lease's entry: one per partition.
    key: String,
    /// Who holds it: host and data directory.
    owner: String,
    /// How long an unrenewed lease lasts.
    ttl: Duration,
    state: Arc<Mutex<State>>,
    renewer: tokio::task::JoinHandle<()>,
}

struct State {
    /// Revision of our lease entry, for the next compare-and-set.
    revision: u64,
    /// Until when deciding is safe: well before the entry can age out.
    valid_until: Instant,
    /// Another verifier took the lease.
    lost: bool,
}

impl Lease {
    /// Takes the lease on `key` if nobody else holds it (or this same
    /// verifier's earlier run does); `None` while another verifier does:
    /// its entry ages out `ttl` after its holder's last renewal.
    pub(super) async fn try_acquire(
        bucket: &kv::Store,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let context = format!("verifier lease {key}");
        let revision = match bucket.create(key, owner.to_string().into()).await {
            Ok(revision) => revision,
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let entry = bucket.entry(key).await;
                let Some(entry) = entry.map_err(Error::wrap(ErrorKind::Nats, context.as_str()))?
                else {
                    return Ok(None);
                };
                if entry.value != owner.as_bytes() {
                    return Ok(None);
                }
                // Our own earlier run: take it over at once.
                match bucket
                    .update(key, owner.to_string().into(), entry.revision)
                    .await
                {
                    Ok(revision) => revision,
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => return Ok(None),
                    Err(e) => return Err(Error::with_source(ErrorKind::Nats, e).context(context)),
                }
            }
            Err(e) => return Err(Error::with_source(ErrorKind::Nats, e).context(context)),
        };
        let state = Arc::new(Mutex::new(State {
            revision,
            valid_until: Instant::now() + Term { ttl }.safe_for(),
            lost: false,
        }));
        let renewer = tokio::spawn(renew(
            bucket.clone(),
            key.to_string(),
            owner.to_string(),
            ttl,
            state.clone(),
        ));
        tracing::info!(owner, key, "verifier lease taken");
        Ok(Some(Lease {
            bucket: bucket.clone(),
            key: key.to_string(),
            owner: owner.to_string(),
            ttl,
            state,
            renewer,
        }))
    }

    /// Ok while deciding is safe. A lost lease means superseded (stand
    /// by); an expired one is a transient error (start over, which takes
    /// the lease again unless someone else has).
    pub(super) fn check(&self) -> Result<()> {
        let state = self.state.lock().unwrap();
        if state.lost {
            return Err(Error::new(
                ErrorKind::Superseded,
                format!("another verifier took the lease {}", self.key),
            ));
        }
        if Instant::now() >= state.valid_until {
            return Err(Error::new(
                ErrorKind::Nats,
                format!(
                    "verifier lease not renewed within {:?}",
                    Term { ttl: self.ttl }.safe_for()
                ),
            ));
        }
        Ok(())
    }

    /// Who holds it: host and data directory.
    pub(super) fn owner(&self) -> &str {
        &self.owner
    }

    /// Stops renewing a lease that another verifier holds now, leaving its
    /// entry alone.
    pub(super) fn abandon(self) {
        self.renewer.abort();
    }

    /// Gives the lease up, so a successor need not wait for it to lapse.
    pub(super) async fn release(self) {
        self.renewer.abort();
        let revision = self.state.lock().unwrap().revision;
        let released = self
            .bucket
            .delete_expect_revision(&self.key, Some(revision));
        match tokio::time::timeout(super::assign::GOODBYE, released).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, key = self.key, "cannot release the verifier lease; it will lapse")
            }
            Err(_) => tracing::warn!(
                key = self.key,
                "no answer releasing the verifier lease; it will lapse"
            ),
        }
    }
}

/// Renews the lease every quarter of its time: deciding is allowed for
/// half of it after each renewal, so one late renewal still leaves a
/// quarter to spare.
async fn renew(
    bucket: kv::Store,
    key: String,
    owner: String,
    ttl: Duration,
    state: Arc<Mutex<State>>,
) {
    let term = Term { ttl };
    loop {
        tokio::time::sleep(term.renew_every()).await;
        let revision = state.lock().unwrap().revision;
        let started = Instant::now();
        match bucket.update(&key, owner.clone().into(), revision).await {
            Ok(revision) => {
                let mut state = state.lock().unwrap();
                state.revision = revision;
                state.valid_until = started + term.safe_for();
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                // Not necessarily taken: a renewal whose reply was lost (NATS
                // restarting, say) still moved the revision on, or the
                // entry aged out meanwhile. Only another owner means lost.
                match reclaim(&bucket, &key, &owner).await {
                    Ok(Some(revision)) => {
                        tracing::info!("verifier lease still ours; renewing");
                        let mut state = state.lock().unwrap();
                        state.revision = revision;
                        state.valid_until = started + term.safe_for();
                    }
                    Ok(None) => {
                        tracing::error!("the verifier lease was taken by another verifier");
                        state.lock().unwrap().lost = true;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot renew the verifier lease; retrying")
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the verifier lease; retrying"),
        }
    }
}

/// After a failed compare-and-set: renews the lease if it is still ours,
/// returning the new revision; `None` if it is not ([`after_refusal`]).
async fn reclaim(bucket: &kv::Store, key: &str, owner: &str) -> Result<Option<u64>> {
    let entry = bucket
        .entry(key)
        .await
        .map_err(Error::wrap(ErrorKind::Nats, "verifier lease"))?;
    let now = entry
        .as_ref()
        .filter(|e| e.operation == kv::Operation::Put)
        .map(|e| (e.value.as_ref(), e.revision));
    match after_refusal(now, owner.as_bytes()) {
        Refused::Renew(revision) => bucket
            .update(key, owner.to_string().into(), revision)
            .await
            .map(Some)
            .map_err(Error::wrap(ErrorKind::Nats, "verifier lease")),
        Refused::Lost => Ok(None),
    }
}

/// What a holder does when its renewal was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Renew at this revision: the entry is still its own (a renewal whose
    /// reply was lost moved the revision on).
    Renew(u64),
    /// Stand by: the lease is lost.
    Lost,
}

/// The rule after a refused renewal, given the entry as it is now (its
/// holder's name and revision; `None` when it aged out or was deleted).
/// An entry that aged out is not the holder's any more: another verifier
/// may have held it and decided meanwhile, and going on from this
/// verifier's state would skip what that one decided. So the holder
/// stands by, and takes the partition again from the start (lease,
/// fence, snapshot, consumer) if it is still free. (Found by the
/// simulator, seed 24494: a holder paused past its lease, whose successor
/// was paused in turn, woke to a lapsed entry, took it again and decided
/// on from where it had stopped.)
pub fn after_refusal(now: Option<(&[u8], u64)>, owner: &[u8]) -> Refused {
    match now {
        Some((holder, revision)) if holder == owner => Refused::Renew(revision),
        _ => Refused::Lost,
    }
}

/// Names this verifier: host and data directory.
pub(super) fn owner(data_dir: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    format!("{host}:{}", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats_server::NatsServer;
    use crate::wire::names::lease_key as key;

    /// After a refused renewal only the holder's own entry is renewed: an
    /// entry that aged out may have been another's meanwhile.
    #[test]
    fn a_refused_renewal_renews_only_the_holders_own_entry() {
        assert_eq!(after_refusal(Some((b"me", 7)), b"me"), Refused::Renew(7));
        assert_eq!(after_refusal(Some((b"other", 7)), b"me"), Refused::Lost);
        assert_eq!(after_refusal(None, b"me"), Refused::Lost);
    }

    #[tokio::test]
    async fn a_renewal_whose_reply_was_lost_keeps_the_lease_but_another_owner_takes_it() {
        let server = NatsServer::start().unwrap();
        let client = crate::client::connect(server.url()).await.unwrap();
        let ttl = Duration::from_secs(3);
        let bucket = async_nats::jetstream::new(client)
            .create_key_value(kv::Config {
                bucket: "LEASE_TEST".into(),
                max_age: ttl,
                ..Default::default()
            })
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = key(3);
        let lease = Lease::try_acquire(&bucket, &key, &owner(dir.path()), ttl)
            .await
            .unwrap()
            .expect("free");
        let other = Lease::try_acquire(&bucket, &key, "elsewhere:/data", ttl).await;
        assert!(other.unwrap().is_none(), "held by the first");

        // As a renewal that NATS applied but whose reply never came back:
        // the entry moves on, with our own name in it.
        bucket.put(&key, lease.owner.clone().into()).await.unwrap();
        tokio::time::sleep(ttl / 4 + Duration::from_millis(500)).await;
        lease.check().expect("still ours");
        assert!(!lease.state.lock().unwrap().lost);

        // Another owner's name in the entry: superseded, stand by.
        bucket.put(&key, "elsewhere:/data".into()).await.unwrap();
        tokio::time::sleep(ttl / 4 + Duration::from_millis(500)).await;
        let lost = lease.check().expect_err("taken");
        assert_eq!(lost.kind(), ErrorKind::Superseded);
    }
}
