//! The invariant check: pure, over what the load test saw. A strategy
//! passes only if every rule below holds for every auction and every bid.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::wire::{AuctionSpec, CancelReason, OutcomeKind};

/// What the client learned of one distinct bid.
#[derive(Clone, Debug, Default)]
pub struct BidFacts {
    pub auction: u32,
    pub bidder: u32,
    pub amount: u64,
    /// Some request for this bid was answered `accepted`.
    pub accepted: bool,
    /// Some request for this bid was answered `rejected`.
    pub rejected: bool,
    /// The outcomes seen for this bid, in stream order.
    pub outcomes: Vec<SeenOutcome>,
}

/// One outcome event, as far as the check needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenOutcome {
    pub kind: OutcomeKind,
    pub rank: Option<u32>,
    pub reason: Option<CancelReason>,
    /// The event's bidder and amount are the bid's.
    pub matches_bid: bool,
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
}

/// Most violations described in a verdict; the count has them all.
const SHOWN: usize = 50;

/// Checks every rule. `bids` is indexed by bid number (`None` for a number
/// never sent); `stray` counts outcomes for this run's auctions that name no
/// bid the run sent.
pub fn check<'a>(
    specs: &[AuctionSpec],
    bids: impl IntoIterator<Item = Option<&'a BidFacts>>,
    stray: u64,
) -> Verdict {
    let mut v = Verdict {
        auctions: specs.len() as u64,
        ..Verdict::default()
    };
    let fail = |v: &mut Verdict, what: String| {
        v.violation_count += 1;
        if v.violations.len() < SHOWN {
            v.violations.push(what);
        }
    };
    if stray > 0 {
        fail(
            &mut v,
            format!("{stray} outcomes name bids that were never sent"),
        );
    }

    struct Tally {
        confirmed: u64,
        ranks: Vec<u32>,
        wins: HashMap<u32, u32>,
        /// Tries (bids with an outcome) that pass the amount rule, per bidder.
        eligible: HashMap<u32, u64>,
    }
    let mut tallies: Vec<Tally> = specs
        .iter()
        .map(|_| Tally {
            confirmed: 0,
            ranks: Vec::new(),
            wins: HashMap::new(),
            eligible: HashMap::new(),
        })
        .collect();

    for (i, facts) in bids.into_iter().enumerate() {
        let Some(b) = facts else { continue };
        v.bids += 1;
        let id = format!("bid b{i} (auction {}, bidder u{})", b.auction, b.bidder);
        if b.accepted && b.rejected {
            fail(&mut v, format!("{id} was both accepted and rejected"));
        }
        match b.outcomes.len() {
            0 if b.accepted => fail(&mut v, format!("{id} was accepted but has no outcome")),
            0 => {}
            1 => {}
            n => fail(&mut v, format!("{id} has {n} outcomes")),
        }
        if b.rejected && !b.outcomes.is_empty() {
            fail(&mut v, format!("{id} was rejected but has an outcome"));
        }
        let Some(first) = b.outcomes.first() else {
            continue;
        };
        if !first.matches_bid {
            fail(
                &mut v,
                format!("{id}: its outcome names another bidder or amount"),
            );
        }
        let Some(tally) = tallies.get_mut(b.auction as usize) else {
            fail(
                &mut v,
                format!("{id} names an auction the run did not open"),
            );
            continue;
        };
        let spec = &specs[b.auction as usize];
        if b.amount >= spec.min_amount {
            *tally.eligible.entry(b.bidder).or_default() += 1;
        }
        match first.kind {
            OutcomeKind::Confirmed => {
                tally.confirmed += 1;
                tally.ranks.extend(first.rank);
                *tally.wins.entry(b.bidder).or_default() += 1;
                if b.amount < spec.min_amount {
                    fail(
                        &mut v,
                        format!("{id} was confirmed below the minimum amount"),
                    );
                }
            }
            OutcomeKind::Cancelled => {
                if first.reason.is_none() {
                    fail(&mut v, format!("{id} was cancelled without a reason"));
                }
            }
        }
    }

    for (a, (spec, tally)) in specs.iter().zip(&mut tallies).enumerate() {
        let capacity = u64::from(spec.capacity);
        if tally.confirmed > capacity {
            fail(
                &mut v,
                format!(
                    "auction {a}: {} confirmed, over its capacity of {capacity}",
                    tally.confirmed
                ),
            );
        }
        // First-N with a per-bidder limit fills min(capacity, sum over
        // bidders of min(limit, their eligible tries)) slots, whatever the
        // order of the tries.
        let limit = u64::from(spec.max_wins_per_bidder);
        let fillable: u64 = tally.eligible.values().map(|&n| n.min(limit)).sum();
        let expected = capacity.min(fillable);
        if tally.confirmed != expected && tally.confirmed <= capacity {
            fail(
                &mut v,
                format!(
                "auction {a}: {} confirmed, but {expected} of its eligible tries could have won",
                tally.confirmed
            ),
            );
        }
        tally.ranks.sort_unstable();
        if tally.ranks.iter().zip(1..).any(|(&r, want)| r != want) {
            fail(
                &mut v,
                format!("auction {a}: ranks are not 1..{}", tally.confirmed),
            );
        }
        for (bidder, &wins) in &tally.wins {
            if u64::from(wins) > limit {
                fail(
                    &mut v,
                    format!(
                        "auction {a}: bidder u{bidder} won {wins} slots, over the limit of {limit}"
                    ),
                );
            }
        }
    }
    v.ok = v.violation_count == 0;
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confirmed(rank: u32) -> SeenOutcome {
        SeenOutcome {
            kind: OutcomeKind::Confirmed,
            rank: Some(rank),
            reason: None,
            matches_bid: true,
        }
    }

    fn cancelled(reason: CancelReason) -> SeenOutcome {
        SeenOutcome {
            kind: OutcomeKind::Cancelled,
            rank: None,
            reason: Some(reason),
            matches_bid: true,
        }
    }

    fn bid(bidder: u32, outcomes: Vec<SeenOutcome>) -> Option<BidFacts> {
        Some(BidFacts {
            auction: 0,
            bidder,
            amount: 100,
            accepted: true,
            rejected: false,
            outcomes,
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

    fn broken(specs: &[AuctionSpec], bids: &[Option<BidFacts>], says: &str) {
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
        let v = check(&specs, bids.iter().map(Option::as_ref), 0);
        assert!(v.ok, "{:?}", v.violations);
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
}
