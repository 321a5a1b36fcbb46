//! One verifier at a time per log.
//!
//! Two verifiers folding the same log would each see part of it and could
//! confirm more than N bids. So a verifier holds a lease: an entry in the
//! leases bucket, whose `max_age` is the lease time, renewed with a
//! compare-and-set well within it. The server ages out the entry of a
//! verifier that died, and a standby (another `allot serve`, waiting in
//! [`Lease::acquire`]) then takes the lease. A verifier that cannot renew
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

/// The key of the verifier's lease in the leases bucket.
pub(crate) const KEY: &str = "verifier";

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
    /// Takes the lease, standing by for as long as another verifier holds
    /// it: its entry ages out `ttl` after its holder's last renewal.
    pub(super) async fn acquire(
        bucket: kv::Store,
        data_dir: &Path,
        ttl: Duration,
    ) -> Result<Lease> {
        let owner = owner(data_dir);
        let mut standing_by = None;
        let revision = loop {
            match bucket.create(KEY, owner.clone().into()).await {
                Ok(revision) => break revision,
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Error::with_source(ErrorKind::Nats, e).context("verifier lease"))
                }
            }
            let entry = bucket
                .entry(KEY)
                .await
                .map_err(Error::wrap(ErrorKind::Nats, "verifier lease"))?;
            if let Some(entry) = entry {
                if entry.value == owner.as_bytes() {
                    // Our own earlier run: take it over at once.
                    match bucket
                        .update(KEY, owner.clone().into(), entry.revision)
                        .await
                    {
                        Ok(revision) => break revision,
                        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                        Err(e) => {
                            return Err(
                                Error::with_source(ErrorKind::Nats, e).context("verifier lease")
                            )
                        }
                    }
                }
                let holder = String::from_utf8_lossy(&entry.value).to_string();
                if standing_by.as_ref() != Some(&holder) {
                    tracing::info!(
                        holder,
                        "another verifier holds the lease; standing by to take over"
                    );
                    standing_by = Some(holder);
                }
            }
            // A fifth of the lease time: a successor starts within that
            // much of the lapse.
            tokio::time::sleep((ttl / 5).min(Duration::from_millis(500))).await;
        };
        let state = Arc::new(Mutex::new(State {
            revision,
            valid_until: Instant::now() + ttl / 2,
            lost: false,
        }));
        let renewer = tokio::spawn(renew(bucket.clone(), owner.clone(), ttl, state.clone()));
        tracing::info!(owner, "verifier lease taken");
        Ok(Lease {
            bucket,
            owner,
            ttl,
            state,
            renewer,
        })
    }

    /// Ok while deciding is safe. A lost lease means superseded (stand
    /// by); an expired one is a transient error (start over, which takes
    /// the lease again unless someone else has).
    pub(super) fn check(&self) -> Result<()> {
        let state = self.state.lock().unwrap();
        if state.lost {
            return Err(Error::new(
                ErrorKind::Superseded,
                "another verifier took the lease on this log",
            ));
        }
        if Instant::now() >= state.valid_until {
            return Err(Error::new(
                ErrorKind::Nats,
                format!("verifier lease not renewed within {:?}", self.ttl / 2),
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
        if let Err(e) = self
            .bucket
            .delete_expect_revision(KEY, Some(revision))
            .await
        {
            tracing::warn!(error = %e, owner = self.owner, "cannot release the verifier lease; it will lapse");
        }
    }
}

/// Renews the lease every third of its time.
async fn renew(bucket: kv::Store, owner: String, ttl: Duration, state: Arc<Mutex<State>>) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        let revision = state.lock().unwrap().revision;
        let started = Instant::now();
        match bucket.update(KEY, owner.clone().into(), revision).await {
            Ok(revision) => {
                let mut state = state.lock().unwrap();
                state.revision = revision;
                state.valid_until = started + ttl / 2;
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                // Not necessarily taken: a renewal whose reply was lost (NATS
                // restarting, say) still moved the revision on, or the
                // entry aged out meanwhile. Only another owner means lost.
                match reclaim(&bucket, &owner).await {
                    Ok(Some(revision)) => {
                        tracing::info!("verifier lease still ours; renewing");
                        let mut state = state.lock().unwrap();
                        state.revision = revision;
                        state.valid_until = started + ttl / 2;
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

/// After a failed compare-and-set: renews the lease if it is still ours
/// (or lapsed, and nobody took it), returning the new revision; `None` if
/// another verifier holds it.
async fn reclaim(bucket: &kv::Store, owner: &str) -> Result<Option<u64>> {
    let entry = bucket
        .entry(KEY)
        .await
        .map_err(Error::wrap(ErrorKind::Nats, "verifier lease"))?;
    let written = match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            if entry.value != owner.as_bytes() {
                return Ok(None);
            }
            bucket
                .update(KEY, owner.to_string().into(), entry.revision)
                .await
                .map_err(Error::wrap(ErrorKind::Nats, "verifier lease"))
        }
        // Aged out (or deleted): take it again, unless someone is faster.
        _ => match bucket.create(KEY, owner.to_string().into()).await {
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => return Ok(None),
            created => created.map_err(Error::wrap(ErrorKind::Nats, "verifier lease")),
        },
    };
    written.map(Some)
}

/// Names this verifier: host and data directory.
fn owner(data_dir: &Path) -> String {
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
        let lease = Lease::acquire(bucket.clone(), dir.path(), ttl)
            .await
            .unwrap();

        // As a renewal that NATS applied but whose reply never came back:
        // the entry moves on, with our own name in it.
        bucket.put(KEY, lease.owner.clone().into()).await.unwrap();
        tokio::time::sleep(ttl / 3 + Duration::from_millis(500)).await;
        lease.check().expect("still ours");
        assert!(!lease.state.lock().unwrap().lost);

        // Another owner's name in the entry: superseded, stand by.
        bucket.put(KEY, "elsewhere:/data".into()).await.unwrap();
        tokio::time::sleep(ttl / 3 + Duration::from_millis(500)).await;
        let lost = lease.check().expect_err("taken");
        assert_eq!(lost.kind(), ErrorKind::Superseded);
    }
}
