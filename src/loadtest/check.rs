//! The invariant check: pure, over what the load test saw. A strategy
//! passes only if every rule holds for every auction and every bid.
//!
//! Here: one outcome per accepted try and none for a rejected bid,
//! capacity, the first-N fill, ranks and the bidder limit. In
//! [`lifecycle`]: what one bid's withdraws, raises and held notices say
//! about its outcome. In [`ranked`]: each `top_amount` auction replayed in
//! log order, which decides who must have won.

mod lifecycle;
mod ranked;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::wire::{AuctionSpec, CancelReason, CommandResult, OutcomeKind, Policy, TryAt};

/// What the client learned of one distinct bid.
#[derive(Clone, Debug, Default)]
pub struct BidFacts {
    pub auction: u32,
    pub bidder: u32,
    /// The amount bid, before any raise.
    pub amount: u64,
    /// Some request for this bid was answered `accepted`.
    pub accepted: bool,
    /// Some request for this bid was answered `rejected`.
    pub rejected: bool,
    /// Where the try is in the log, from an `accepted` reply (the earliest
    /// one named, if resends named several): where the try stands among
    /// the withdraws and raises, and which of two equal amounts ranks
    /// first.
    pub try_seq: Option<TryAt>,
    /// The outcomes seen for this bid, in stream order.
    pub outcomes: Vec<SeenOutcome>,
    /// The withdraws sent for this bid, each with its answer (`None`: no
    /// answer came, so it may or may not have been decided).
    pub withdraws: Vec<Option<Answer>>,
    /// The raises sent for this bid.
    pub raises: Vec<Raise>,
    /// The amounts of the `held` notices seen for this bid. Notices are
    /// core NATS messages and may be lost, so only their presence counts.
    pub held: Vec<u64>,
}

/// The service's answer to a withdraw or a raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Log sequence of the withdraw or raise event that was decided.
    pub seq: u64,
    pub result: CommandResult,
}

/// A raise the client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raise {
    /// The amount asked for.
    pub amount: u64,
    /// `None`: no answer came.
    pub answer: Option<Answer>,
}

/// One outcome event, as far as the check needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenOutcome {
    pub kind: OutcomeKind,
    pub rank: Option<u32>,
    pub reason: Option<CancelReason>,
    /// The bid's amount as decided: after its raises.
    pub amount: u64,
    /// The try it decides.
    pub try_seq: TryAt,
    pub tried_at: DateTime<Utc>,
    /// The event's auction and bidder are the bid's.
    pub matches_bid: bool,
}

impl SeenOutcome {
    fn is_cancelled(&self, reason: CancelReason) -> bool {
        self.kind == OutcomeKind::Cancelled && self.reason == Some(reason)
    }
}

/// The verdict of the check.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Verdict {
    pub ok: bool,
    pub auctions: u64,
    pub bids: u64,
    /// How many rule breaks were found.
    pub violation_count: u64,
    /// The first of them, described.
    pub violations: Vec<String>,
    /// `top_amount` auctions replayed in log order (see [`ranked`]).
    #[serde(default)]
    pub replayed: u64,
    /// `top_amount` auctions that could not be replayed, because a withdraw
    /// or a raise got no answer and so has no known place in the log.
    #[serde(default)]
    pub not_replayed: u64,
}

impl Verdict {
    fn fail(&mut self, what: String) {
        self.violation_count += 1;
        if self.violations.len() < SHOWN {
            self.violations.push(what);
        }
    }
}

/// Most violations described in a verdict; the count has them all.
const SHOWN: usize = 50;

/// Checks every rule. `specs` are the auctions as opened (with their
/// `closes_at`); `bids` is indexed by bid number (`None` for a number never
/// sent); `stray` counts outcomes for this run's auctions that name no bid
/// the run sent.
pub fn check<'a>(
    specs: &[AuctionSpec],
    bids: impl IntoIterator<Item = Option<&'a BidFacts>>,
    stray: u64,
) -> Verdict {
    let mut v = Verdict {
        auctions: specs.len() as u64,
        ..Verdict::default()
    };
    if stray > 0 {
        v.fail(format!("{stray} outcomes name bids that were never sent"));
    }

    #[derive(Default)]
    struct Tally<'a> {
        confirmed: u64,
        ranks: Vec<u32>,
        wins: HashMap<u32, u32>,
        /// Tries (bids with an outcome) that could have won, per bidder.
        eligible: HashMap<u32, u64>,
        /// `top_amount`: every bid, by number, for the replay.
        bids: Vec<(u64, &'a BidFacts)>,
    }
    let mut tallies: Vec<Tally> = specs.iter().map(|_| Tally::default()).collect();

    for (i, facts) in bids.into_iter().enumerate() {
        let Some(b) = facts else { continue };
        v.bids += 1;
        let id = format!("bid b{i} (auction {}, bidder u{})", b.auction, b.bidder);
        if b.accepted && b.rejected {
            v.fail(format!("{id} was both accepted and rejected"));
        }
        match b.outcomes.len() {
            0 if b.accepted => v.fail(format!("{id} was accepted but has no outcome")),
            0 => {}
            1 => {}
            n => v.fail(format!("{id} has {n} outcomes")),
        }
        if b.rejected && !b.outcomes.is_empty() {
            v.fail(format!("{id} was rejected but has an outcome"));
        }
        let (Some(spec), Some(tally)) = (
            specs.get(b.auction as usize),
            tallies.get_mut(b.auction as usize),
        ) else {
            v.fail(format!("{id} names an auction the run did not open"));
            continue;
        };
        lifecycle::check_bid(&mut v, &id, b, spec);
        match spec.policy {
            Policy::FirstN => {}
            // Kept for the replay below.
            Policy::TopAmount => tally.bids.push((i as u64, b)),
        }
        let Some(first) = b.outcomes.first() else {
            continue;
        };
        if !first.matches_bid {
            v.fail(format!("{id}: its outcome names another bidder or amount"));
        }
        // A try withdrawn, or too late, could not have won; the rules in
        // `lifecycle` make sure that either reason is true.
        let ineligible = b.amount < spec.min_amount
            || first.is_cancelled(CancelReason::Withdrawn)
            || first.is_cancelled(CancelReason::AuctionClosed);
        if !ineligible {
            *tally.eligible.entry(b.bidder).or_default() += 1;
        }
        match first.kind {
            OutcomeKind::Confirmed => {
                tally.confirmed += 1;
                tally.ranks.extend(first.rank);
                *tally.wins.entry(b.bidder).or_default() += 1;
                if b.amount < spec.min_amount {
                    v.fail(format!("{id} was confirmed below the minimum amount"));
                }
            }
            OutcomeKind::Cancelled => {
                if first.reason.is_none() {
                    v.fail(format!("{id} was cancelled without a reason"));
                }
            }
        }
    }

    for (a, (spec, tally)) in specs.iter().zip(&mut tallies).enumerate() {
        let capacity = u64::from(spec.capacity.get());
        if tally.confirmed > capacity {
            v.fail(format!(
                "auction {a}: {} confirmed, over its capacity of {capacity}",
                tally.confirmed
            ));
        }
        let limit = u64::from(spec.max_wins_per_bidder);
        match spec.policy {
            Policy::FirstN => {
                // First-N with a per-bidder limit fills min(capacity, sum
                // over bidders of min(limit, their eligible tries)) slots,
                // whatever the order of the tries.
                let fillable: u64 = tally.eligible.values().map(|&n| n.min(limit)).sum();
                let expected = capacity.min(fillable);
                if tally.confirmed != expected && tally.confirmed <= capacity {
                    v.fail(format!(
                        "auction {a}: {} confirmed, but {expected} of its eligible tries could have won",
                        tally.confirmed
                    ));
                }
            }
            // Who wins depends on the order of tries, withdraws and raises:
            // no count says it, a replay does.
            Policy::TopAmount => {
                if ranked::replay(&mut v, a, spec, &tally.bids) {
                    v.replayed += 1;
                } else {
                    v.not_replayed += 1;
                }
            }
        }
        tally.ranks.sort_unstable();
        if tally.ranks.iter().zip(1..).any(|(&r, want)| r != want) {
            v.fail(format!("auction {a}: ranks are not 1..{}", tally.confirmed));
        }
        for (bidder, &wins) in &tally.wins {
            if u64::from(wins) > limit {
                v.fail(format!(
                    "auction {a}: bidder u{bidder} won {wins} slots, over the limit of {limit}"
                ));
            }
        }
    }
    v.ok = v.violation_count == 0;
    v
}

#[cfg(test)]
mod tests {
    //! The rules on counts; also the helpers every check test builds its
    //! hand-made histories with.

    use super::*;

    /// When every hand-made try was made.
    pub(super) fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    pub(super) fn confirmed(rank: u32) -> SeenOutcome {
        SeenOutcome {
            kind: OutcomeKind::Confirmed,
            rank: Some(rank),
            reason: None,
            amount: 100,
            try_seq: 0.into(),
            tried_at: at(),
            matches_bid: true,
        }
    }

    pub(super) fn cancelled(reason: CancelReason) -> SeenOutcome {
        SeenOutcome {
            kind: OutcomeKind::Cancelled,
            rank: None,
            reason: Some(reason),
            ..confirmed(0)
        }
    }

    pub(super) fn bid(bidder: u32, outcomes: Vec<SeenOutcome>) -> Option<BidFacts> {
        Some(BidFacts {
            auction: 0,
            bidder,
            amount: 100,
            accepted: true,
            rejected: false,
            outcomes,
            ..BidFacts::default()
        })
    }

    /// Two slots, four bidders: two confirmed, two cancelled for capacity.
    fn good() -> (Vec<AuctionSpec>, Vec<Option<BidFacts>>) {
        let specs = vec![AuctionSpec::with_capacity(2)];
        let bids = vec![
            bid(0, vec![confirmed(1)]),
            bid(1, vec![confirmed(2)]),
            bid(2, vec![cancelled(CancelReason::CapacityFull)]),
            bid(3, vec![cancelled(CancelReason::CapacityFull)]),
        ];
        (specs, bids)
    }

    pub(super) fn passes(specs: &[AuctionSpec], bids: &[Option<BidFacts>]) -> Verdict {
        let v = check(specs, bids.iter().map(Option::as_ref), 0);
        assert!(v.ok, "{:?}", v.violations);
        v
    }

    pub(super) fn broken(specs: &[AuctionSpec], bids: &[Option<BidFacts>], says: &str) {
        let v = check(specs, bids.iter().map(Option::as_ref), 0);
        assert!(!v.ok, "should fail with {says:?}");
        assert!(
            v.violations.iter().any(|m| m.contains(says)),
            "{says:?} not in {:?}",
            v.violations
        );
    }

    #[test]
    fn a_sound_history_passes() {
        let (specs, bids) = good();
        let v = passes(&specs, &bids);
        assert_eq!((v.auctions, v.bids), (1, 4));
    }

    #[test]
    fn catches_a_double_outcome() {
        let (specs, mut bids) = good();
        bids[2].as_mut().unwrap().outcomes.push(confirmed(3));
        broken(&specs, &bids, "has 2 outcomes");
    }

    #[test]
    fn catches_an_over_capacity_auction() {
        let (specs, mut bids) = good();
        bids[2].as_mut().unwrap().outcomes = vec![confirmed(3)];
        broken(&specs, &bids, "over its capacity of 2");
    }

    #[test]
    fn catches_a_missing_outcome() {
        let (specs, mut bids) = good();
        bids[3].as_mut().unwrap().outcomes.clear();
        broken(&specs, &bids, "accepted but has no outcome");
    }

    #[test]
    fn catches_an_outcome_for_a_rejected_bid() {
        let (specs, mut bids) = good();
        let b = bids[3].as_mut().unwrap();
        b.accepted = false;
        b.rejected = true;
        broken(&specs, &bids, "rejected but has an outcome");
    }

    #[test]
    fn catches_an_unfilled_slot() {
        let (specs, mut bids) = good();
        bids[1].as_mut().unwrap().outcomes = vec![cancelled(CancelReason::CapacityFull)];
        broken(&specs, &bids, "2 of its eligible tries could have won");
    }

    #[test]
    fn catches_a_bidder_over_its_limit() {
        let (specs, mut bids) = good();
        bids[1].as_mut().unwrap().bidder = 0;
        broken(&specs, &bids, "won 2 slots, over the limit of 1");
    }

    #[test]
    fn catches_stray_and_mismatched_outcomes() {
        let (specs, mut bids) = good();
        bids[0].as_mut().unwrap().outcomes[0].matches_bid = false;
        broken(&specs, &bids, "another bidder or amount");
        let v = check(&specs, good().1.iter().map(Option::as_ref), 3);
        assert!(!v.ok && v.violations[0].contains("3 outcomes name bids that were never sent"));
    }

    #[test]
    fn the_limit_counts_per_bidder_not_per_try() {
        // One bidder with three eligible tries fills one slot of two: sound.
        let specs = vec![AuctionSpec::with_capacity(2)];
        let bids = [
            bid(7, vec![confirmed(1)]),
            bid(7, vec![cancelled(CancelReason::BidderLimit)]),
            bid(7, vec![cancelled(CancelReason::BidderLimit)]),
        ];
        assert!(check(&specs, bids.iter().map(Option::as_ref), 0).ok);
    }

    #[test]
    fn withdrawn_and_late_tries_could_not_have_filled_a_slot() {
        // Two slots, one confirmed: the other two tries were withdrawn
        // before they came, or came after the close.
        let specs = vec![AuctionSpec {
            closes_at: Some(at()),
            ..AuctionSpec::with_capacity(2)
        }];
        let mut bids = vec![
            bid(0, vec![confirmed(1)]),
            bid(1, vec![cancelled(CancelReason::Withdrawn)]),
            bid(2, vec![cancelled(CancelReason::AuctionClosed)]),
        ];
        bids[0].as_mut().unwrap().outcomes[0].tried_at = at() - chrono::Duration::seconds(1);
        // Its try (at seq 2) came after its withdraw (at seq 1).
        bids[1].as_mut().unwrap().outcomes[0].try_seq = 2.into();
        bids[1].as_mut().unwrap().withdraws = vec![Some(Answer {
            seq: 1,
            result: CommandResult::Withdrawn {
                empty_rollback: true,
            },
        })];
        passes(&specs, &bids);
        // A try cancelled for capacity while a slot was free is a break.
        bids[1].as_mut().unwrap().outcomes = vec![cancelled(CancelReason::CapacityFull)];
        bids[1].as_mut().unwrap().withdraws.clear();
        broken(
            &specs,
            &bids,
            "1 confirmed, but 2 of its eligible tries could have won",
        );
    }
}
