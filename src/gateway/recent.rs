//! The tries this gateway appended lately, by bid: a resend that reaches
//! the same gateway gets its original reply without a second try. With
//! tries in entries of several, JetStream's per-message de-duplication no
//! longer applies; a resend this gateway does not remember (sent through
//! another gateway, or long after) is written again, and the verifier
//! decides it as a duplicate, with no second outcome.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::wire::TryAt;

/// Bids remembered; the oldest are forgotten first. About 100 bytes each.
const REMEMBERED: usize = 65_536;

#[derive(Default)]
pub(super) struct Recent {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (auction, bid id as logged) -> the try's place.
    placed: HashMap<(Box<str>, Box<str>), TryAt>,
    /// Insertion order, for forgetting.
    order: VecDeque<(Box<str>, Box<str>)>,
}

impl Recent {
    /// Where this gateway appended the bid's try, if it remembers.
    pub(super) fn get(&self, auction_id: &str, bid_id: &str) -> Option<TryAt> {
        let inner = self.inner.lock().expect("no panics under this lock");
        inner
            .placed
            .get(&(auction_id.into(), bid_id.into()))
            .copied()
    }

    /// Remembers the bid's try at `at`.
    pub(super) fn insert(&self, auction_id: &str, bid_id: &str, at: TryAt) {
        let key: (Box<str>, Box<str>) = (auction_id.into(), bid_id.into());
        let mut inner = self.inner.lock().expect("no panics under this lock");
        if inner.placed.insert(key.clone(), at).is_none() {
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
