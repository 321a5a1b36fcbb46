//! The two classic ways to guard an aggregate against concurrent commands,
//! as real code, so that allot's Try-Confirm-Cancel can be measured against
//! them on the same workload (`allot loadtest --strategy occ|lock|all`).
//!
//! Both keep each auction as an event-sourced aggregate: one subject per
//! auction in a stream of their own (`<PREFIX>_OCC`, `<PREFIX>_LOCK`), an
//! `open` event followed by one decided event (an [`OutcomeEvent`]) per
//! accepted bid. A bid handler reads the aggregate, decides with the same
//! pure [`Ledger`] the verifier uses, and appends the decision:
//!
//! - [`occ`]: optimistic concurrency. The append carries
//!   `Nats-Expected-Last-Subject-Sequence`; a concurrent writer makes it
//!   fail, and the handler reads again and retries with jittered backoff.
//! - [`lock`]: pessimistic locking. The handler first takes a per-auction
//!   lock in a KV bucket (create-if-absent; the bucket's max age is the
//!   lock's time to live, so a crashed holder cannot block the auction),
//!   then reads, decides, appends and releases.
//!
//! Unlike allot, the bid's outcome is known when the handler replies: the
//! decision is made on the request path, which is exactly what serializes
//! the writers of one auction.

pub mod aggregate;
pub mod lock;
pub mod occ;

pub use aggregate::{Aggregates, Attempt};
pub use lock::Locking;
pub use occ::Optimistic;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::Error;

/// Why a bid handler gave up without an answer. A bid that failed this way
/// may be sent again with the same `bid_id`.
#[derive(Debug, thiserror::Error)]
pub enum BidError {
    /// Every attempt lost the race for the aggregate's next sequence.
    #[error("gave up after {attempts} conflicting appends to auction {auction_id}")]
    Exhausted { auction_id: String, attempts: u32 },
    /// The auction's lock stayed held by others.
    #[error("lock on auction {auction_id} not acquired within {waited:?}")]
    LockTimeout {
        auction_id: String,
        waited: Duration,
    },
    /// NATS or JetStream failed.
    #[error(transparent)]
    Nats(#[from] Error),
}

impl BidError {
    /// A short name for counting errors by kind.
    pub fn label(&self) -> &'static str {
        match self {
            BidError::Exhausted { .. } => "conflict_retries_exhausted",
            BidError::LockTimeout { .. } => "lock_timeout",
            BidError::Nats(_) => "nats",
        }
    }
}

/// Counters of how much a strategy fought itself, shared by its handlers.
#[derive(Debug, Default)]
pub struct Counters {
    pub conflicts: AtomicU64,
    pub retries: AtomicU64,
    pub exhausted: AtomicU64,
    pub lock_waits: AtomicU64,
    pub lock_timeouts: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Backoff before attempt `attempt + 1`: exponential from `base`, capped at
/// `cap`, times a random factor in [0.5, 1.5) so that the losers of one race
/// do not collide again in lockstep.
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1 << attempt.min(16));
    exp.min(cap).mul_f64(0.5 + jitter())
}

/// A number in [0, 1) from a per-thread xorshift; good enough to spread
/// retries, and no dependency for it.
fn jitter() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1);
            (t ^ 0x9e37_79b9_7f4a_7c15) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_millis(1);
        let cap = Duration::from_millis(20);
        for attempt in 0..30 {
            let d = backoff(attempt, base, cap);
            let nominal = base.saturating_mul(1 << attempt.min(16)).min(cap);
            assert!(
                d >= nominal.mul_f64(0.5) && d < nominal.mul_f64(1.5),
                "{attempt}: {d:?}"
            );
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff(3, base, cap)).collect();
        assert!(spread.len() > 10, "jitter spreads retries: {spread:?}");
    }
}
