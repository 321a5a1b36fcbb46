//! Optimistic concurrency: read the aggregate, decide, append with the
//! expected last sequence; on a conflict read again and retry.

use std::time::Duration;

use super::{backoff, Aggregates, BidError, Counters};
use crate::error::Result;
use crate::wire::{AuctionSpec, BidReply, BidRequest, Subjects};

/// How hard the optimistic handler tries.
#[derive(Clone, Debug)]
pub struct OccConfig {
    /// Attempts per bid before giving up.
    pub max_attempts: u32,
    /// First backoff after a conflict; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_cap: Duration,
}

impl Default for OccConfig {
    fn default() -> Self {
        OccConfig {
            max_attempts: 25,
            backoff_base: Duration::from_micros(500),
            backoff_cap: Duration::from_millis(20),
        }
    }
}

/// Bid handlers guarding each auction with an optimistic sequence check.
pub struct Optimistic {
    pub aggregates: Aggregates,
    pub config: OccConfig,
    pub counters: Counters,
}

impl Optimistic {
    /// Binds to (or creates) the stream `<PREFIX>_OCC`.
    pub async fn new(
        client: async_nats::Client,
        subjects: &Subjects,
        config: OccConfig,
    ) -> Result<Self> {
        Ok(Optimistic {
            aggregates: Aggregates::ensure(client, subjects, "occ").await?,
            config,
            counters: Counters::default(),
        })
    }

    pub async fn open(&self, auction_id: &str, spec: &AuctionSpec) -> Result<()> {
        self.aggregates.open(auction_id, spec).await
    }

    /// Handles one bid to the end: a reply, or an error after the last retry.
    pub async fn bid(
        &self,
        auction_id: &str,
        bid: &BidRequest,
    ) -> std::result::Result<BidReply, BidError> {
        for attempt in 0..self.config.max_attempts {
            if attempt > 0 {
                Counters::add(&self.counters.retries);
                let pause = backoff(
                    attempt - 1,
                    self.config.backoff_base,
                    self.config.backoff_cap,
                );
                tokio::time::sleep(pause).await;
            }
            match self.aggregates.decide_and_append(auction_id, bid).await? {
                Some(reply) => return Ok(reply),
                None => Counters::add(&self.counters.conflicts),
            }
        }
        Counters::add(&self.counters.exhausted);
        Err(BidError::Exhausted {
            auction_id: auction_id.to_string(),
            attempts: self.config.max_attempts,
        })
    }
}
