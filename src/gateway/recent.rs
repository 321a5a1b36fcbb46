//! The tries this gateway appended lately, by bid: a resend that reaches
//! the same gateway gets its original reply without a second try. With
//! tries in entries of several, JetStream's per-message de-duplication no
//! longer applies; a resend this gateway does not remember (sent through
//! another gateway, or long after) is written again, and the verifier
//! decides it as a duplicate, with no second outcome.
//!
//! A bid is remembered by a keyed 64-bit hash of its auction and id (about
//! 40 bytes a bid rather than 150): what it finds is only a candidate,
//! which the caller confirms against the log before taking it as the bid.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use crate::wire::TryAt;

/// Bids remembered; the oldest are forgotten first.
const REMEMBERED: usize = 65_536;

#[derive(Default)]
pub(super) struct Recent {
    /// Seeded per process: hashes that collide cannot be prepared.
    keys: RandomState,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Hash of (auction, bid id as logged) -> the try's place.
    placed: HashMap<u64, TryAt>,
    /// Insertion order, for forgetting.
    order: VecDeque<u64>,
}

impl Recent {
    fn key(&self, auction_id: &str, bid_id: &str) -> u64 {
        self.keys.hash_one((auction_id, bid_id))
    }

    /// Where this gateway appended the bid's try, if it remembers: a
    /// candidate, to be confirmed against the log.
    pub(super) fn get(&self, auction_id: &str, bid_id: &str) -> Option<TryAt> {
        let key = self.key(auction_id, bid_id);
        let inner = self.inner.lock().expect("no panics under this lock");
        inner.placed.get(&key).copied()
    }

    /// Remembers the bid's try at `at`.
    pub(super) fn insert(&self, auction_id: &str, bid_id: &str, at: TryAt) {
        let key = self.key(auction_id, bid_id);
        let mut inner = self.inner.lock().expect("no panics under this lock");
        if inner.placed.insert(key, at).is_none() {
            inner.order.push_back(key);
        }
        while inner.order.len() > REMEMBERED {
            if let Some(old) = inner.order.pop_front() {
                inner.placed.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_bids_are_forgotten_first() {
        let recent = Recent::default();
        for i in 0..=REMEMBERED as u64 {
            recent.insert("a", &format!("b{i}"), TryAt::new(i, 1));
        }
        assert_eq!(recent.get("a", "b0"), None);
        assert_eq!(recent.get("a", "b1"), Some(TryAt::new(1, 1)));
        let last = format!("b{REMEMBERED}");
        assert_eq!(
            recent.get("a", &last),
            Some(TryAt::new(REMEMBERED as u64, 1))
        );
        assert_eq!(recent.get("other", "b1"), None);
    }
}
