//! `top_amount` auctions, replayed. The client knows where each try,
//! withdraw and raise stands in the log (the sequence in its reply), so it
//! can work out anew, in log order, which tries hold the N slots, and then
//! demand that every outcome is the one the replay gives: confirmed at the
//! close with the rank of its amount (ties to the earlier try), or
//! cancelled `outbid`, `withdrawn` or `bidder_limit` at the right moment.
//!
//! A replay rather than "the N highest amounts win": a try outbid earlier
//! does not come back when a holder is later withdrawn, nor does a try
//! refused for the bidder limit when that bidder's hold is later outbid.
//! Which bids win depends on the order of events, so the check follows it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::lifecycle::describe;
use super::{Answer, BidFacts, Verdict};
use crate::wire::{AuctionSpec, CancelReason, CommandResult, OutcomeKind, TryAt};

/// A log event of one bid, as the client saw it answered.
#[derive(Clone, Copy, Debug)]
enum Event {
    Try,
    Withdraw { empty_rollback: bool },
    Raise { amount: u64 },
}

/// What the replay says a bid's outcome must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected {
    Confirmed(u32),
    Cancelled(CancelReason),
    /// Whatever it is: decided by what the client cannot see (a try's
    /// `tried_at` against the close's place in the log).
    AsSeen,
}

/// Rank order of holders: highest amount first, then the earlier try.
type Key = (Reverse<u64>, TryAt);

/// Replays auction `a` from its bids (by bid number) and fails every
/// outcome the replay does not give. False when it cannot: a withdraw or a
/// raise got no answer, so its place in the log is unknown.
pub(super) fn replay(
    v: &mut Verdict,
    a: usize,
    spec: &AuctionSpec,
    bids: &[(u64, &BidFacts)],
) -> bool {
    let unanswered = bids.iter().any(|(_, b)| {
        b.withdraws.iter().any(Option::is_none) || b.raises.iter().any(|r| r.answer.is_none())
    });
    if unanswered {
        return false;
    }
    let mut events: Vec<(TryAt, usize, Event)> = Vec::new();
    for (k, (_, b)) in bids.iter().enumerate() {
        // The deciding try: a reply may name a later copy of it.
        if let Some(t) = b.outcomes.first().map(|o| o.try_seq).or(b.try_seq) {
            events.push((t, k, Event::Try));
        }
        for w in b.withdraws.iter().flatten() {
            if let CommandResult::Withdrawn { empty_rollback } = w.result {
                events.push((w.seq.into(), k, Event::Withdraw { empty_rollback }));
            }
        }
        for r in &b.raises {
            if let Some(Answer {
                seq,
                result: CommandResult::Raised { amount },
            }) = r.answer
            {
                events.push((seq.into(), k, Event::Raise { amount }));
            }
        }
    }
    events.sort_by_key(|&(seq, ..)| seq);
    // One event answered twice (a resend JetStream de-duplicated) is one.
    events.dedup_by(|x, y| (x.0, x.1) == (y.0, y.1));

    let mut held: BTreeMap<Key, usize> = BTreeMap::new();
    let mut key_of: HashMap<usize, Key> = HashMap::new();
    let mut ever_held: HashSet<usize> = HashSet::new();
    let mut tombstones: HashSet<usize> = HashSet::new();
    let mut expected: Vec<Option<Expected>> = vec![None; bids.len()];
    let name = |k: usize| format!("auction {a}: b{}", bids[k].0);
    for (seq, k, event) in events {
        let b = bids[k].1;
        match event {
            Event::Try => {
                let seen = b.outcomes.first();
                let holding = |bidder| {
                    held.values()
                        .filter(|&&j| bids[j].1.bidder == bidder)
                        .count()
                };
                let verdict = if tombstones.contains(&k) {
                    Expected::Cancelled(CancelReason::Withdrawn)
                } else if seen.is_some_and(|o| {
                    matches!(
                        o.reason,
                        Some(
                            CancelReason::AuctionClosed
                                | CancelReason::InvalidEvent
                                | CancelReason::UnknownAuction
                        )
                    )
                }) {
                    Expected::AsSeen
                } else if b.amount < spec.min_amount {
                    Expected::Cancelled(CancelReason::BelowMinimum)
                } else if holding(b.bidder) >= spec.max_wins_per_bidder as usize {
                    Expected::Cancelled(CancelReason::BidderLimit)
                } else {
                    let key = (Reverse(b.amount), seq);
                    let full = held.len() >= spec.capacity.get() as usize;
                    match held.last_key_value() {
                        // Not above the lowest holder (equal: the holder's
                        // try is earlier, and ranks first).
                        Some((&lowest, _)) if full && key > lowest => {
                            Expected::Cancelled(CancelReason::Outbid)
                        }
                        Some((&lowest, &j)) if full => {
                            held.remove(&lowest);
                            key_of.remove(&j);
                            expected[j] = Some(Expected::Cancelled(CancelReason::Outbid));
                            hold(&mut held, &mut key_of, &mut ever_held, key, k);
                            continue;
                        }
                        _ => {
                            hold(&mut held, &mut key_of, &mut ever_held, key, k);
                            continue;
                        }
                    }
                };
                expected[k] = Some(verdict);
            }
            Event::Withdraw {
                empty_rollback: true,
            } => {
                tombstones.insert(k);
            }
            Event::Withdraw {
                empty_rollback: false,
            } => {
                if let Some(key) = key_of.remove(&k) {
                    held.remove(&key);
                    expected[k] = Some(Expected::Cancelled(CancelReason::Withdrawn));
                }
            }
            Event::Raise { amount } => match key_of.get(&k) {
                Some(&key) => {
                    held.remove(&key);
                    hold(
                        &mut held,
                        &mut key_of,
                        &mut ever_held,
                        (Reverse(amount), key.1),
                        k,
                    );
                }
                None => v.fail(format!(
                    "{}: its raise at seq {} was answered raised, but it held no slot then",
                    name(k),
                    seq.seq
                )),
            },
        }
    }
    // The close confirms every holder, in rank order.
    for (rank, &k) in (1..).zip(held.values()) {
        expected[k] = Some(Expected::Confirmed(rank));
    }

    for (k, (_, b)) in bids.iter().enumerate() {
        if !b.held.is_empty() && expected[k].is_some() && !ever_held.contains(&k) {
            v.fail(format!(
                "{}: it has a held notice, but no replay of its auction lets it hold a slot",
                name(k)
            ));
        }
        let (Some(seen), Some(want)) = (b.outcomes.first(), expected[k]) else {
            continue;
        };
        let agrees = match want {
            Expected::AsSeen => true,
            Expected::Confirmed(rank) => {
                seen.kind == OutcomeKind::Confirmed && seen.rank == Some(rank)
            }
            Expected::Cancelled(reason) => seen.is_cancelled(reason),
        };
        if !agrees {
            let want = match want {
                Expected::Confirmed(rank) => format!("confirmed rank {rank}"),
                Expected::Cancelled(reason) => format!("cancelled {}", crate::wire::label(&reason)),
                Expected::AsSeen => unreachable!("agrees"),
            };
            v.fail(format!(
                "{} (amount {}, try {}) is {}, but replaying its auction's tries, withdraws and raises in log order makes it {want}",
                name(k),
                seen.amount,
                seen.try_seq,
                describe(seen)
            ));
        }
    }
    true
}

fn hold(
    held: &mut BTreeMap<Key, usize>,
    key_of: &mut HashMap<usize, Key>,
    ever_held: &mut HashSet<usize>,
    key: Key,
    k: usize,
) {
    held.insert(key, k);
    key_of.insert(k, key);
    ever_held.insert(k);
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bid, broken, cancelled, confirmed, passes};
    use super::super::Raise;
    use super::*;
    use crate::wire::{Policy, RefuseReason};

    fn ranked(capacity: u32) -> Vec<AuctionSpec> {
        vec![AuctionSpec {
            policy: Policy::TopAmount,
            ..AuctionSpec::with_capacity(capacity)
        }]
    }

    /// A try at `seq` of `amount` by its own bidder, with its outcome.
    fn tried(
        bidder: u32,
        seq: u64,
        amount: u64,
        outcome: crate::loadtest::check::SeenOutcome,
    ) -> Option<BidFacts> {
        let mut b = bid(bidder, vec![outcome]).unwrap();
        b.amount = amount;
        b.try_seq = Some(seq.into());
        b.outcomes[0].amount = amount;
        b.outcomes[0].try_seq = seq.into();
        b.held = vec![amount];
        Some(b)
    }

    fn answer(seq: u64, result: CommandResult) -> Option<Answer> {
        Some(Answer { seq, result })
    }

    /// Two slots. b0 (50) and b1 (70) hold; b2 (60) pushes b0 out; b3 (60)
    /// ties b2 but comes later, so it is outbid; b1 is raised to 90; b2 is
    /// withdrawn, and b4 (10), arriving after, takes its slot, though b0
    /// and b3 bid more: they were outbid for good. b5 withdrew before its
    /// try (99), which never held. Close: b1 first, b4 second.
    fn history() -> (Vec<AuctionSpec>, Vec<Option<BidFacts>>) {
        let outbid = || cancelled(CancelReason::Outbid);
        let mut bids = vec![
            tried(0, 1, 50, outbid()),
            tried(1, 2, 70, confirmed(1)),
            tried(2, 3, 60, cancelled(CancelReason::Withdrawn)),
            tried(3, 4, 60, outbid()),
            tried(4, 8, 10, confirmed(2)),
            tried(5, 10, 99, cancelled(CancelReason::Withdrawn)),
        ];
        bids[3].as_mut().unwrap().held.clear();
        let b1 = bids[1].as_mut().unwrap();
        b1.outcomes[0].amount = 90;
        b1.raises = vec![Raise {
            amount: 90,
            answer: answer(6, CommandResult::Raised { amount: 90 }),
        }];
        b1.held.push(90);
        bids[2].as_mut().unwrap().withdraws = vec![answer(
            7,
            CommandResult::Withdrawn {
                empty_rollback: false,
            },
        )];
        let b5 = bids[5].as_mut().unwrap();
        b5.held.clear();
        b5.withdraws = vec![answer(
            9,
            CommandResult::Withdrawn {
                empty_rollback: true,
            },
        )];
        // A late withdraw of an outbid bid changes nothing.
        bids[0].as_mut().unwrap().withdraws = vec![answer(
            11,
            CommandResult::Refused {
                reason: RefuseReason::AlreadyCancelled,
                current_amount: None,
            },
        )];
        (ranked(2), bids)
    }

    #[test]
    fn a_sound_ranked_history_passes_though_higher_amounts_lost() {
        let (specs, bids) = history();
        let v = passes(&specs, &bids);
        assert_eq!((v.replayed, v.not_replayed), (1, 0));
    }

    #[test]
    fn catches_a_lower_amount_confirmed_over_a_higher_one() {
        // b4 bid before b2's withdraw freed a slot: it could not win.
        let (specs, mut bids) = history();
        let b4 = bids[4].as_mut().unwrap();
        b4.try_seq = Some(5.into());
        b4.outcomes[0].try_seq = 5.into();
        broken(&specs, &bids, "b4 (amount 10, try 5.0) is confirmed rank 2, but replaying its auction's tries, withdraws and raises in log order makes it cancelled outbid");
    }

    #[test]
    fn catches_ranks_out_of_amount_order() {
        let (specs, mut bids) = history();
        bids[1].as_mut().unwrap().outcomes[0].rank = Some(2);
        bids[4].as_mut().unwrap().outcomes[0].rank = Some(1);
        broken(&specs, &bids, "is confirmed rank 2, but replaying");
    }

    #[test]
    fn catches_a_tie_given_to_the_later_try() {
        let bids = [
            tried(0, 1, 60, confirmed(1)),
            tried(1, 2, 60, cancelled(CancelReason::Outbid)),
        ];
        let mut held_later = bids.clone();
        held_later[1].as_mut().unwrap().held.clear();
        passes(&ranked(1), &held_later);
        let swapped = [
            tried(0, 1, 60, cancelled(CancelReason::Outbid)),
            tried(1, 2, 60, confirmed(1)),
        ];
        broken(
            &ranked(1),
            &swapped,
            "b0 (amount 60, try 1.0) is cancelled outbid, but replaying its auction's tries, withdraws and raises in log order makes it confirmed rank 1",
        );
    }

    #[test]
    fn catches_a_confirmation_beyond_capacity() {
        let (specs, mut bids) = history();
        bids[0].as_mut().unwrap().outcomes = vec![confirmed(3)];
        bids[0].as_mut().unwrap().outcomes[0].amount = 50;
        broken(&specs, &bids, "3 confirmed, over its capacity of 2");
    }

    #[test]
    fn catches_a_raise_of_a_bid_that_held_nothing() {
        let (specs, mut bids) = history();
        bids[3].as_mut().unwrap().raises = vec![Raise {
            amount: 61,
            answer: answer(5, CommandResult::Raised { amount: 61 }),
        }];
        broken(
            &specs,
            &bids,
            "b3: its raise at seq 5 was answered raised, but it held no slot then",
        );
    }

    #[test]
    fn catches_a_withdrawn_try_that_held_a_slot() {
        // b5's try came after its empty rollback; a notice says it held.
        let (specs, mut bids) = history();
        bids[5].as_mut().unwrap().held = vec![99];
        broken(
            &specs,
            &bids,
            "b5: it has a held notice, but no replay of its auction lets it hold a slot",
        );
    }

    #[test]
    fn an_unanswered_command_leaves_the_auction_unreplayed() {
        let (specs, mut bids) = history();
        bids[0].as_mut().unwrap().withdraws.push(None);
        let v = passes(&specs, &bids);
        assert_eq!((v.replayed, v.not_replayed), (0, 1));
    }
}
