//! The decision core: a deterministic state machine over the ordered log.
//!
//! No I/O, no clock, no async. Events go in, in log order; decisions come
//! out. Every decision depends only on the events before it (time comes from
//! each try's own `tried_at`), so replaying the log from the start reproduces
//! every decision exactly. The verifier wraps this with NATS and SQLite; the
//! tests and any audit can run it bare.

use std::collections::HashMap;

use crate::wire::{
    AuctionSpec, CancelReason, LogEntry, LogEvent, OpenEvent, OutcomeEvent, OutcomeKind, TryEvent,
};

/// What the core made of one try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The try won slot `rank` (1..N, in order of confirmation).
    Confirmed {
        rank: u32,
    },
    Cancelled {
        reason: CancelReason,
    },
}

impl Verdict {
    /// The verdict an outcome event records; `None` for a confirmed event
    /// without a rank, which allot never writes.
    pub fn of(outcome: &OutcomeEvent) -> Option<Verdict> {
        match (outcome.kind, outcome.rank, outcome.reason) {
            (OutcomeKind::Confirmed, Some(rank), _) => Some(Verdict::Confirmed { rank }),
            (OutcomeKind::Confirmed, None, _) => None,
            (OutcomeKind::Cancelled, _, reason) => Some(Verdict::Cancelled {
                reason: reason.unwrap_or(CancelReason::InvalidEvent),
            }),
        }
    }
}

/// What the core made of one log event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A new auction was opened.
    Opened,
    /// A second `open` for an auction that is already open; the first one
    /// stands. (The gateway never writes one, but the log is the authority.)
    OpenIgnored,
    /// A try was decided: exactly one outcome must be published for it.
    Decided(Verdict),
    /// A try for a bid that was already decided (a resend past JetStream's
    /// de-duplication window). The bid keeps its one outcome; no new one.
    Duplicate,
}

/// One auction's state: only what future decisions need.
/// Bid ids decided in an auction, each with the log sequence of the try
/// that decided it (what a resent bid is answered with).
type Decided = HashMap<Box<str>, u64>;

#[derive(Clone, Debug)]
struct Auction {
    /// The rules, from the auction's `open` event.
    spec: AuctionSpec,
    /// Confirmed slots so far; the next confirmation gets rank `confirmed + 1`.
    confirmed: u32,
    /// Confirmed slots per bidder. At most `capacity` entries.
    wins: HashMap<Box<str>, u32>,
    /// Every bid id decided in this auction, so that a late duplicate try
    /// never gets a second outcome.
    decided: Decided,
}

/// The state of every auction, built by folding the log.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Open auctions by id.
    auctions: HashMap<String, Auction>,
    /// Tries for auctions that were never opened. They are decided
    /// (cancelled) once each too.
    orphans: HashMap<String, Decided>,
}

/// A read-only view of one auction, for status and fast rejects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fill {
    /// Winning slots.
    pub capacity: u32,
    /// Slots confirmed so far.
    pub confirmed: u32,
}

impl Fill {
    pub fn sold_out(&self) -> bool {
        self.confirmed >= self.capacity
    }
}

impl Ledger {
    pub fn new() -> Self {
        Ledger::default()
    }

    /// Applies the next event of the log, at log sequence `seq`.
    pub fn apply(&mut self, event: &LogEvent, seq: u64) -> Step {
        match event {
            LogEvent::Open(open) => self.open(open),
            LogEvent::Try(t) => self.decide(t, seq),
        }
    }

    /// Applies an `open` event.
    pub fn open(&mut self, open: &OpenEvent) -> Step {
        if self.auctions.contains_key(&open.auction_id) {
            return Step::OpenIgnored;
        }
        self.auctions.insert(
            open.auction_id.clone(),
            Auction {
                spec: open.spec.clone(),
                confirmed: 0,
                wins: HashMap::new(),
                // A bid cancelled as `unknown_auction` before the open keeps
                // that one outcome.
                decided: self.orphans.remove(&open.auction_id).unwrap_or_default(),
            },
        );
        Step::Opened
    }

    /// Decides a try at log sequence `seq`: first-come, first-N,
    /// re-checking every rule.
    pub fn decide(&mut self, t: &TryEvent, seq: u64) -> Step {
        let step = self.judge(t);
        if let Step::Decided(verdict) = step {
            self.record(&t.auction_id, &t.bid_id, &t.bidder_id, verdict, seq);
        }
        step
    }

    /// What [`Ledger::decide`] would make of a try, without recording it.
    /// The optimistic and locking strategies decide on a read of the
    /// aggregate and record only what their append made durable.
    pub fn judge(&self, t: &TryEvent) -> Step {
        let Some(auction) = self.auctions.get(&t.auction_id) else {
            let seen = self
                .orphans
                .get(&t.auction_id)
                .is_some_and(|s| s.contains_key(t.bid_id.as_str()));
            if seen {
                return Step::Duplicate;
            }
            return Step::Decided(Verdict::Cancelled {
                reason: CancelReason::UnknownAuction,
            });
        };
        if auction.decided.contains_key(t.bid_id.as_str()) {
            return Step::Duplicate;
        }
        let spec = &auction.spec;
        let wins = auction.wins.get(t.bidder_id.as_str()).copied().unwrap_or(0);
        let reason = if spec.is_closed_at(t.tried_at) {
            Some(CancelReason::AuctionClosed)
        } else if t.amount < spec.min_amount {
            Some(CancelReason::BelowMinimum)
        } else if auction.confirmed >= spec.capacity {
            Some(CancelReason::CapacityFull)
        } else if wins >= spec.max_wins_per_bidder {
            Some(CancelReason::BidderLimit)
        } else {
            None
        };
        Step::Decided(match reason {
            Some(reason) => Verdict::Cancelled { reason },
            None => Verdict::Confirmed {
                rank: auction.confirmed + 1,
            },
        })
    }

    /// Decides an unreadable try that names its bid: cancelled
    /// (`invalid_event`), once per bid like any try.
    pub fn invalid(&mut self, t: &TryEvent, seq: u64) -> Step {
        let decided = match self.auctions.get_mut(&t.auction_id) {
            Some(auction) => &mut auction.decided,
            None => self.orphans.entry(t.auction_id.clone()).or_default(),
        };
        if decided.contains_key(t.bid_id.as_str()) {
            return Step::Duplicate;
        }
        decided.insert(t.bid_id.as_str().into(), seq);
        Step::Decided(Verdict::Cancelled {
            reason: CancelReason::InvalidEvent,
        })
    }

    /// Applies a log entry at log sequence `seq` as the verifier reads it;
    /// `None` for an entry with nothing to decide.
    pub fn apply_entry(&mut self, entry: &LogEntry, seq: u64) -> Option<Step> {
        match entry {
            LogEntry::Event(event) => Some(self.apply(event, seq)),
            LogEntry::InvalidTry(t) => Some(self.invalid(t, seq)),
            LogEntry::Unreadable(_) => None,
        }
    }

    /// Re-enters a decision of the try at `seq`, read back from a snapshot
    /// (or from an aggregate's events), without deciding again.
    pub fn restore(
        &mut self,
        auction_id: &str,
        bid_id: &str,
        bidder_id: &str,
        verdict: Verdict,
        seq: u64,
    ) {
        self.record(auction_id, bid_id, bidder_id, verdict, seq);
    }

    /// The sequence of the try that decided a bid, if it is decided.
    pub fn decided_try(&self, auction_id: &str, bid_id: &str) -> Option<u64> {
        let decided = match self.auctions.get(auction_id) {
            Some(auction) => &auction.decided,
            None => self.orphans.get(auction_id)?,
        };
        decided.get(bid_id).copied()
    }

    fn record(
        &mut self,
        auction_id: &str,
        bid_id: &str,
        bidder_id: &str,
        verdict: Verdict,
        seq: u64,
    ) {
        let Some(auction) = self.auctions.get_mut(auction_id) else {
            self.orphans
                .entry(auction_id.to_string())
                .or_default()
                .insert(bid_id.into(), seq);
            return;
        };
        auction.decided.insert(bid_id.into(), seq);
        if let Verdict::Confirmed { rank } = verdict {
            auction.confirmed = auction.confirmed.max(rank);
            *auction.wins.entry(bidder_id.into()).or_insert(0) += 1;
        }
    }

    /// The spec of an open auction.
    pub fn spec(&self, auction_id: &str) -> Option<&AuctionSpec> {
        self.auctions.get(auction_id).map(|a| &a.spec)
    }

    /// How full an auction is.
    pub fn fill(&self, auction_id: &str) -> Option<Fill> {
        self.auctions.get(auction_id).map(|a| Fill {
            capacity: a.spec.capacity,
            confirmed: a.confirmed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Duration, TimeZone, Utc};
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn open(id: &str, spec: AuctionSpec) -> LogEvent {
        LogEvent::Open(OpenEvent {
            auction_id: id.into(),
            spec,
            opened_at: t0(),
        })
    }

    fn try_(auction: &str, bid: &str, bidder: &str, amount: u64, secs: i64) -> LogEvent {
        LogEvent::Try(TryEvent {
            bid_id: bid.into(),
            auction_id: auction.into(),
            bidder_id: bidder.into(),
            amount,
            tried_at: t0() + Duration::seconds(secs),
        })
    }

    fn cancelled(reason: CancelReason) -> Step {
        Step::Decided(Verdict::Cancelled { reason })
    }

    fn confirmed(rank: u32) -> Step {
        Step::Decided(Verdict::Confirmed { rank })
    }

    /// Applies each event in order and checks the step it gives.
    fn check(ledger: &mut Ledger, script: &[(LogEvent, Step)]) {
        for (i, (event, expected)) in script.iter().enumerate() {
            assert_eq!(
                ledger.apply(event, i as u64 + 1),
                *expected,
                "event {i}: {event:?}"
            );
        }
    }

    #[test]
    fn first_n_eligible_tries_win_in_log_order() {
        let mut l = Ledger::new();
        check(
            &mut l,
            &[
                (open("a", AuctionSpec::with_capacity(2)), Step::Opened),
                (try_("a", "b1", "u1", 10, 1), confirmed(1)),
                (
                    try_("a", "b2", "u1", 10, 2),
                    cancelled(CancelReason::BidderLimit),
                ),
                (try_("a", "b3", "u2", 10, 3), confirmed(2)),
                (
                    try_("a", "b4", "u3", 10, 4),
                    cancelled(CancelReason::CapacityFull),
                ),
            ],
        );
        assert!(l.fill("a").unwrap().sold_out());
    }

    #[test]
    fn every_rule_is_checked_from_the_event_alone() {
        let spec = AuctionSpec {
            capacity: 5,
            min_amount: 100,
            closes_at: Some(t0() + Duration::seconds(60)),
            max_wins_per_bidder: 2,
        };
        check(
            &mut Ledger::new(),
            &[
                (open("a", spec), Step::Opened),
                (
                    try_("a", "b1", "u1", 99, 1),
                    cancelled(CancelReason::BelowMinimum),
                ),
                (
                    try_("a", "b2", "u1", 100, 60),
                    cancelled(CancelReason::AuctionClosed),
                ),
                (try_("a", "b3", "u1", 100, 59), confirmed(1)),
                (try_("a", "b4", "u1", 100, 59), confirmed(2)),
                (
                    try_("a", "b5", "u1", 100, 59),
                    cancelled(CancelReason::BidderLimit),
                ),
                (
                    try_("x", "b1", "u1", 100, 1),
                    cancelled(CancelReason::UnknownAuction),
                ),
            ],
        );
    }

    #[test]
    fn duplicates_and_second_opens_change_nothing() {
        let mut l = Ledger::new();
        l.apply(&open("a", AuctionSpec::with_capacity(1)), 1);
        assert_eq!(
            l.apply(&open("a", AuctionSpec::with_capacity(9)), 2),
            Step::OpenIgnored
        );
        l.apply(&try_("a", "b1", "u1", 1, 1), 3);
        assert_eq!(l.apply(&try_("a", "b1", "u1", 1, 2), 4), Step::Duplicate);
        l.apply(&try_("x", "b1", "u1", 1, 1), 5);
        assert_eq!(l.apply(&try_("x", "b1", "u1", 1, 1), 6), Step::Duplicate);
        assert_eq!(l.spec("a").unwrap().capacity, 1);
        // A bid is known by the try that decided it, not by later copies.
        assert_eq!(l.decided_try("a", "b1"), Some(3));
        assert_eq!(l.decided_try("x", "b1"), Some(5));
        assert_eq!(l.decided_try("a", "b2"), None);
    }

    /// A random log: a few auctions (some never opened), bidders, bids,
    /// repeated bid ids, amounts around the minimum and times around the
    /// close.
    fn arb_log() -> impl Strategy<Value = Vec<LogEvent>> {
        let event = prop_oneof![
            1 => (0..4u8, 1..6u32, 0..3u64, 1..3u32).prop_map(|(a, cap, min, wins)| {
                open(&format!("a{a}"), AuctionSpec {
                    capacity: cap,
                    min_amount: min,
                    closes_at: Some(t0() + Duration::seconds(50)),
                    max_wins_per_bidder: wins,
                })
            }),
            8 => (0..4u8, 0..40u8, 0..10u8, 0..4u64, 0..60i64).prop_map(|(a, b, u, amt, s)| {
                try_(&format!("a{a}"), &format!("b{b}"), &format!("u{u}"), amt, s)
            }),
        ];
        proptest::collection::vec(event, 0..200)
    }

    /// The allocation rules written a second, naive way: each decision is
    /// recomputed by scanning the whole log before it, with no state kept
    /// between events but the earlier decisions themselves.
    fn reference(log: &[LogEvent]) -> Vec<Step> {
        let mut steps: Vec<Step> = Vec::new();
        for (i, event) in log.iter().enumerate() {
            let earlier = &log[..i];
            let step = match event {
                LogEvent::Open(o) => {
                    let again = earlier
                        .iter()
                        .any(|e| matches!(e, LogEvent::Open(p) if p.auction_id == o.auction_id));
                    if again {
                        Step::OpenIgnored
                    } else {
                        Step::Opened
                    }
                }
                LogEvent::Try(t) => {
                    let seen = earlier.iter().any(|e| {
                        matches!(e, LogEvent::Try(u) if u.auction_id == t.auction_id && u.bid_id == t.bid_id)
                    });
                    let spec = earlier.iter().find_map(|e| match e {
                        LogEvent::Open(o) if o.auction_id == t.auction_id => Some(&o.spec),
                        _ => None,
                    });
                    let wins = |same_bidder: bool| {
                        earlier
                            .iter()
                            .zip(&steps)
                            .filter(|(e, s)| {
                                matches!(s, Step::Decided(Verdict::Confirmed { .. }))
                                    && matches!(e, LogEvent::Try(u) if u.auction_id == t.auction_id
                                        && (!same_bidder || u.bidder_id == t.bidder_id))
                            })
                            .count() as u32
                    };
                    match spec {
                        _ if seen => Step::Duplicate,
                        None => cancelled(CancelReason::UnknownAuction),
                        Some(spec) if spec.is_closed_at(t.tried_at) => {
                            cancelled(CancelReason::AuctionClosed)
                        }
                        Some(spec) if t.amount < spec.min_amount => {
                            cancelled(CancelReason::BelowMinimum)
                        }
                        Some(spec) if wins(false) >= spec.capacity => {
                            cancelled(CancelReason::CapacityFull)
                        }
                        Some(spec) if wins(true) >= spec.max_wins_per_bidder => {
                            cancelled(CancelReason::BidderLimit)
                        }
                        Some(_) => confirmed(wins(false) + 1),
                    }
                }
            };
            steps.push(step);
        }
        steps
    }

    fn run(log: &[LogEvent]) -> Vec<Step> {
        let mut l = Ledger::new();
        log.iter()
            .zip(1..)
            .map(|(e, seq)| l.apply(e, seq))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn the_ledger_agrees_with_a_from_scratch_reference(log in arb_log()) {
            prop_assert_eq!(run(&log), reference(&log));
        }

        #[test]
        fn never_more_than_n_and_one_outcome_per_bid(log in arb_log()) {
            let steps = run(&log);
            let mut decided: HashSet<(String, String)> = HashSet::new();
            let mut confirmed: HashMap<String, Vec<u32>> = HashMap::new();
            let mut wins: HashMap<(String, String), u32> = HashMap::new();
            let mut specs: HashMap<String, AuctionSpec> = HashMap::new();
            for (event, step) in log.iter().zip(&steps) {
                match (event, step) {
                    (LogEvent::Open(o), Step::Opened) => {
                        specs.insert(o.auction_id.clone(), o.spec.clone());
                    }
                    (LogEvent::Try(t), Step::Decided(v)) => {
                        let fresh = decided.insert((t.auction_id.clone(), t.bid_id.clone()));
                        prop_assert!(fresh, "second outcome for {}", t.bid_id);
                        if let Verdict::Confirmed { rank } = v {
                            let spec = &specs[&t.auction_id];
                            prop_assert!(!spec.is_closed_at(t.tried_at));
                            prop_assert!(t.amount >= spec.min_amount);
                            let ranks = confirmed.entry(t.auction_id.clone()).or_default();
                            ranks.push(*rank);
                            prop_assert_eq!(*rank as usize, ranks.len());
                            prop_assert!(*rank <= spec.capacity);
                            let w = wins.entry((t.auction_id.clone(), t.bidder_id.clone())).or_default();
                            *w += 1;
                            prop_assert!(*w <= spec.max_wins_per_bidder);
                        }
                    }
                    (LogEvent::Try(t), Step::Duplicate) => {
                        prop_assert!(decided.contains(&(t.auction_id.clone(), t.bid_id.clone())));
                    }
                    (LogEvent::Open(o), Step::OpenIgnored) => {
                        prop_assert!(specs.contains_key(&o.auction_id));
                    }
                    (e, s) => prop_assert!(false, "unexpected {:?} for {:?}", s, e),
                }
            }
        }

        #[test]
        fn restoring_decisions_continues_like_the_original(log in arb_log(), cut in 0usize..200) {
            let cut = cut.min(log.len());
            let full = run(&log);
            // Rebuild the state at `cut` the way a snapshot load does, then
            // go on with the rest of the log.
            let mut restored = Ledger::new();
            for ((event, step), seq) in log[..cut].iter().zip(&full).zip(1..) {
                match (event, step) {
                    (LogEvent::Open(o), _) => { restored.open(o); }
                    (LogEvent::Try(t), Step::Decided(v)) => {
                        restored.restore(&t.auction_id, &t.bid_id, &t.bidder_id, *v, seq)
                    }
                    _ => {}
                }
            }
            let rest: Vec<Step> = log[cut..]
                .iter()
                .zip(cut as u64 + 1..)
                .map(|(e, seq)| restored.apply(e, seq))
                .collect();
            prop_assert_eq!(&rest[..], &full[cut..]);
            // And both know each bid by the same deciding try.
            let mut original = Ledger::new();
            for (e, seq) in log.iter().zip(1..) {
                original.apply(e, seq);
            }
            for t in log.iter().filter_map(|e| match e { LogEvent::Try(t) => Some(t), _ => None }) {
                prop_assert_eq!(
                    restored.decided_try(&t.auction_id, &t.bid_id),
                    original.decided_try(&t.auction_id, &t.bid_id)
                );
            }
        }
    }
}
