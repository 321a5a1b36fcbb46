//! Pessimistic locking: take the auction's lock in a KV bucket, then read,
//! decide, append and release.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::{self, stream::StorageType};

use super::{backoff, Aggregates, BidError, Counters};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{AuctionSpec, BidReply, BidRequest, Subjects};

/// How the locking handler waits.
#[derive(Clone, Debug)]
pub struct LockConfig {
    /// A lock unreleased for this long expires: the bucket's max age. Long
    /// enough for any read-decide-append; short enough that a crashed
    /// holder blocks its auction only briefly.
    pub ttl: Duration,
    /// How long a bid waits for its auction's lock before giving up.
    pub wait_limit: Duration,
    /// First pause when the lock is held; doubles per wait.
    pub backoff_base: Duration,
    /// Longest pause.
    pub backoff_cap: Duration,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            ttl: Duration::from_secs(5),
            wait_limit: Duration::from_secs(10),
            backoff_base: Duration::from_micros(200),
            backoff_cap: Duration::from_millis(10),
        }
    }
}

/// Bid handlers guarding each auction with a lock in a KV bucket.
pub struct Locking {
    pub aggregates: Aggregates,
    /// Key: auction id; value: the holder. Present (a put) means held.
    pub locks: kv::Store,
    pub config: LockConfig,
    pub counters: Counters,
}

/// A held lock: the revision that took it, which releasing expects.
struct Held {
    revision: u64,
}

impl Locking {
    /// Binds to (or creates) the stream `<PREFIX>_LOCK` and the bucket
    /// `<PREFIX>_LOCKS`.
    pub async fn new(
        client: async_nats::Client,
        subjects: &Subjects,
        config: LockConfig,
    ) -> Result<Self> {
        let aggregates = Aggregates::ensure(client.clone(), subjects, "lock").await?;
        let bucket = format!("{}_LOCKS", subjects.prefix().to_uppercase());
        let locks = jetstream::new(client)
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                history: 1,
                max_age: config.ttl,
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(Error::wrap(ErrorKind::Setup, bucket))?;
        Ok(Locking {
            aggregates,
            locks,
            config,
            counters: Counters::default(),
        })
    }

    pub async fn open(&self, auction_id: &str, spec: &AuctionSpec) -> Result<()> {
        self.aggregates.open(auction_id, spec).await
    }

    /// Handles one bid under the auction's lock.
    pub async fn bid(
        &self,
        auction_id: &str,
        bid: &BidRequest,
    ) -> std::result::Result<BidReply, BidError> {
        let held = self.acquire(auction_id, &bid.bid_id).await?;
        let result = self.decide(auction_id, bid).await;
        // Release even when deciding failed; a failed release only means the
        // lock expired and the TTL already freed it.
        if let Err(e) = self
            .locks
            .delete_expect_revision(auction_id, Some(held.revision))
            .await
        {
            tracing::warn!(auction_id, error = %e, "lock release failed");
        }
        result
    }

    async fn decide(
        &self,
        auction_id: &str,
        bid: &BidRequest,
    ) -> std::result::Result<BidReply, BidError> {
        // The expected sequence the append carries is the fence for a
        // holder whose lock expired while it worked: its append fails rather
        // than overwrite a decision.
        match self.aggregates.decide_and_append(auction_id, bid).await? {
            Some(reply) => Ok(reply),
            None => {
                Counters::add(&self.counters.conflicts);
                Err(BidError::Exhausted {
                    auction_id: auction_id.to_string(),
                    attempts: 1,
                })
            }
        }
    }

    /// Takes the lock: create-if-absent, where "absent" is no entry, or a
    /// delete marker whose revision the create then expects.
    async fn acquire(&self, auction_id: &str, holder: &str) -> std::result::Result<Held, BidError> {
        let started = Instant::now();
        let nats = |e: Box<dyn std::error::Error + Send + Sync>| {
            BidError::Nats(Error::new(
                ErrorKind::Nats,
                format!("lock {auction_id}: {e}"),
            ))
        };
        // `None`: held by someone else when last looked.
        let mut expected = Some(0);
        let mut waits = 0;
        loop {
            if let Some(revision) = expected {
                let value = bytes::Bytes::copy_from_slice(holder.as_bytes());
                match self.locks.update(auction_id, value, revision).await {
                    Ok(revision) => return Ok(Held { revision }),
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                    Err(e) => return Err(nats(e.into())),
                }
            }
            match self
                .locks
                .entry(auction_id)
                .await
                .map_err(|e| nats(e.into()))?
            {
                // Never taken, or expired.
                None => expected = Some(0),
                Some(e) if e.operation != Operation::Put => expected = Some(e.revision),
                Some(_) => {
                    Counters::add(&self.counters.lock_waits);
                    if started.elapsed() >= self.config.wait_limit {
                        Counters::add(&self.counters.lock_timeouts);
                        return Err(BidError::LockTimeout {
                            auction_id: auction_id.to_string(),
                            waited: started.elapsed(),
                        });
                    }
                    let pause = backoff(waits, self.config.backoff_base, self.config.backoff_cap);
                    tokio::time::sleep(pause).await;
                    waits += 1;
                    expected = None;
                }
            }
        }
    }
}
