//! The rules on one bid's lifecycle: what its withdraws, raises and held
//! notices, as answered to the client, say its one outcome must be.
//!
//! Each rule uses only what the service itself told the client, so that a
//! break is the service contradicting itself, never a guess about timing.

use super::{Answer, BidFacts, SeenOutcome, Verdict};
use crate::wire::{
    label, AuctionSpec, CancelReason, CommandResult, OutcomeKind, Policy, RefuseReason, TryAt,
};

/// Checks one bid's withdraws, raises, held notices and close against its
/// outcome. `id` names the bid in messages.
pub(super) fn check_bid(v: &mut Verdict, id: &str, b: &BidFacts, spec: &AuctionSpec) {
    let outcome = b.outcomes.first();
    // The try that decided the bid: a resend that a gateway wrote again is
    // named in its reply, but decides nothing.
    let try_seq = outcome.map(|o| o.try_seq).or(b.try_seq);
    if let (Some(replied), Some(o)) = (b.try_seq, outcome) {
        // A reply names the deciding try, or a later copy of it; never an
        // earlier try.
        if replied < o.try_seq {
            v.fail(format!(
                "{id}: its outcome decides try {}, but its accepted reply named the earlier try {replied}",
                o.try_seq
            ));
        }
    }
    for answer in b.withdraws.iter().flatten() {
        withdraw(v, id, answer, try_seq, outcome, !b.held.is_empty());
    }
    if let Some(o) = outcome {
        let withdrawn = b
            .withdraws
            .iter()
            .any(|w| w.is_none_or(|a| matches!(a.result, CommandResult::Withdrawn { .. })));
        if o.is_cancelled(CancelReason::Withdrawn) && !withdrawn {
            v.fail(format!("{id} was cancelled withdrawn, but never withdrawn"));
        }
    }
    raises(v, id, b, spec, outcome);
    held(v, id, b, spec, outcome);
    // Whether a try came too late is the log's to say, by when it stored
    // the try, not the gateway's `tried_at` that the outcome carries: the
    // audit's replay checks it, and the fault campaign's skew rows check it
    // by the client's own clock.
    // The load test closes an auction by request only after its last bid,
    // so only a deadline can make a try too late.
    if outcome.is_some_and(|o| o.is_cancelled(CancelReason::AuctionClosed))
        && spec.closes_at.is_none()
    {
        v.fail(format!(
            "{id} was cancelled auction_closed, but its auction has no closes_at"
        ));
    }
}

/// One answered withdraw against the bid's try and outcome.
fn withdraw(
    v: &mut Verdict,
    id: &str,
    answer: &Answer,
    try_seq: Option<TryAt>,
    outcome: Option<&SeenOutcome>,
    held: bool,
) {
    let seq = answer.seq;
    match answer.result {
        CommandResult::Withdrawn { empty_rollback } => {
            if let Some(o) = outcome.filter(|o| !o.is_cancelled(CancelReason::Withdrawn)) {
                v.fail(format!(
                    "{id} is {}, though its withdraw at seq {seq} was answered withdrawn",
                    describe(o)
                ));
            }
            match (empty_rollback, try_seq) {
                (true, Some(t)) if t.seq < seq => v.fail(format!(
                    "{id}: its withdraw at seq {seq} was an empty rollback, but its try was already in the log at seq {t}"
                )),
                (false, Some(t)) if t.seq > seq => v.fail(format!(
                    "{id}: its withdraw at seq {seq} was answered as withdrawing a try, but the try came later, at seq {t}"
                )),
                _ => {}
            }
            if empty_rollback && held {
                v.fail(format!(
                    "{id} held a slot, though it was withdrawn before its try (empty rollback at seq {seq})"
                ));
            }
        }
        CommandResult::Refused { reason, .. } => {
            let contradicted = match reason {
                RefuseReason::AlreadyConfirmed => {
                    outcome.is_some_and(|o| o.kind != OutcomeKind::Confirmed)
                }
                // A bid cancelled `withdrawn` is answered `withdrawn` again.
                RefuseReason::AlreadyCancelled => outcome.is_some_and(|o| {
                    o.kind != OutcomeKind::Cancelled || o.is_cancelled(CancelReason::Withdrawn)
                }),
                // The load test withdraws only as the bid's own bidder.
                RefuseReason::NotOwner => true,
                _ => false,
            };
            if contradicted {
                v.fail(format!(
                    "{id}: its withdraw at seq {seq} was refused as {}, but the bid is {}",
                    label(&reason),
                    outcome.map_or("its own bidder's".into(), describe)
                ));
            }
        }
        CommandResult::Raised { .. } => {
            v.fail(format!(
                "{id}: its withdraw at seq {seq} was answered as a raise"
            ));
        }
    }
}

/// The bid's raises against its outcome's amount.
fn raises(
    v: &mut Verdict,
    id: &str,
    b: &BidFacts,
    spec: &AuctionSpec,
    outcome: Option<&SeenOutcome>,
) {
    let mut highest_raised = None;
    for r in &b.raises {
        let Some(answer) = r.answer else { continue };
        match answer.result {
            CommandResult::Raised { amount } => {
                match spec.policy {
                    Policy::FirstN => v.fail(format!(
                        "{id} was raised at seq {}, but its auction is first_n",
                        answer.seq
                    )),
                    Policy::TopAmount => {}
                }
                highest_raised = highest_raised.max(Some(amount));
            }
            CommandResult::Refused {
                reason: RefuseReason::NotOwner,
                ..
            } => v.fail(format!(
                "{id}: its own bidder's raise at seq {} was refused as not_owner",
                answer.seq
            )),
            CommandResult::Refused { .. } => {}
            CommandResult::Withdrawn { .. } => v.fail(format!(
                "{id}: its raise at seq {} was answered as a withdraw",
                answer.seq
            )),
        }
    }
    let Some(o) = outcome else { return };
    if let Some(raised) = highest_raised.filter(|&r| o.amount < r) {
        v.fail(format!(
            "{id} was raised to {raised}, but its outcome has amount {}",
            o.amount
        ));
    }
    // The amount decided is the bid's, or one it asked a raise to (an
    // unanswered raise may have applied).
    let granted = b.raises.iter().any(|r| {
        r.amount == o.amount
            && r.answer
                .is_none_or(|a| matches!(a.result, CommandResult::Raised { .. }))
    });
    if o.amount != b.amount && !granted {
        v.fail(format!(
            "{id}: its outcome has amount {}, neither its bid ({}) nor a raise it was granted",
            o.amount, b.amount
        ));
    }
}

/// The bid's held notices against its auction and outcome.
fn held(
    v: &mut Verdict,
    id: &str,
    b: &BidFacts,
    spec: &AuctionSpec,
    outcome: Option<&SeenOutcome>,
) {
    let Some(&highest) = b.held.iter().max() else {
        return;
    };
    match spec.policy {
        Policy::FirstN => v.fail(format!(
            "{id} has a held notice, but its auction is first_n"
        )),
        Policy::TopAmount => {}
    }
    let Some(o) = outcome else { return };
    // Only a higher bid, the bidder, or the close ends a hold.
    let ends_a_hold = o.kind == OutcomeKind::Confirmed
        || o.is_cancelled(CancelReason::Outbid)
        || o.is_cancelled(CancelReason::Withdrawn);
    if !ends_a_hold {
        v.fail(format!("{id} held a slot, but is {}", describe(o)));
    }
    if highest > o.amount {
        v.fail(format!(
            "{id} held a slot with {highest}, above its outcome's amount {}",
            o.amount
        ));
    }
}

/// "confirmed rank 2", "cancelled outbid".
pub(super) fn describe(o: &SeenOutcome) -> String {
    match (o.kind, o.rank, o.reason) {
        (OutcomeKind::Confirmed, Some(rank), _) => format!("confirmed rank {rank}"),
        (OutcomeKind::Confirmed, None, _) => "confirmed".into(),
        (OutcomeKind::Cancelled, _, Some(reason)) => format!("cancelled {}", label(&reason)),
        (OutcomeKind::Cancelled, _, None) => "cancelled".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{at, bid, broken, cancelled, confirmed, passes};
    use super::super::{Answer, Raise};
    use super::*;

    fn withdrawn(seq: u64, empty_rollback: bool) -> Option<Answer> {
        Some(Answer {
            seq,
            result: CommandResult::Withdrawn { empty_rollback },
        })
    }

    fn refused(seq: u64, reason: RefuseReason) -> Option<Answer> {
        Some(Answer {
            seq,
            result: CommandResult::Refused {
                reason,
                current_amount: None,
            },
        })
    }

    fn raised(seq: u64, amount: u64) -> Raise {
        Raise {
            amount,
            answer: Some(Answer {
                seq,
                result: CommandResult::Raised { amount },
            }),
        }
    }

    fn ranked(capacity: u32) -> AuctionSpec {
        AuctionSpec {
            policy: Policy::TopAmount,
            ..AuctionSpec::with_capacity(capacity)
        }
    }

    /// A first_n auction of one slot: b0's withdraw raced its try and won
    /// (empty rollback), b1 took the slot and its late withdraw was
    /// refused, b2 came too late.
    fn first_n() -> (Vec<AuctionSpec>, Vec<Option<BidFacts>>) {
        let specs = vec![AuctionSpec {
            closes_at: Some(at() + chrono::Duration::seconds(1)),
            ..AuctionSpec::with_capacity(1)
        }];
        let mut b0 = bid(0, vec![cancelled(CancelReason::Withdrawn)]).unwrap();
        b0.try_seq = Some(11.into());
        b0.outcomes[0].try_seq = 11.into();
        b0.withdraws = vec![withdrawn(10, true)];
        let mut b1 = bid(1, vec![confirmed(1)]).unwrap();
        b1.try_seq = Some(12.into());
        b1.outcomes[0].try_seq = 12.into();
        b1.withdraws = vec![refused(13, RefuseReason::AlreadyConfirmed)];
        let mut b2 = bid(2, vec![cancelled(CancelReason::AuctionClosed)]).unwrap();
        b2.outcomes[0].tried_at = at() + chrono::Duration::seconds(2);
        (specs, vec![Some(b0), Some(b1), Some(b2)])
    }

    #[test]
    fn a_sound_first_n_lifecycle_passes() {
        let (specs, bids) = first_n();
        // The withdrawn and the late try could not have won: one slot of
        // one is full.
        passes(&specs, &bids);
    }

    #[test]
    fn catches_a_bid_confirmed_after_it_was_withdrawn() {
        let (specs, mut bids) = first_n();
        let b1 = bids[1].as_mut().unwrap();
        b1.withdraws = vec![withdrawn(13, false)];
        broken(
            &specs,
            &bids,
            "is confirmed rank 1, though its withdraw at seq 13 was answered withdrawn",
        );
    }

    #[test]
    fn catches_a_try_that_took_a_slot_after_its_empty_rollback() {
        let (specs, mut bids) = first_n();
        bids[0].as_mut().unwrap().outcomes = vec![confirmed(1)];
        bids[0].as_mut().unwrap().outcomes[0].try_seq = 11.into();
        bids[1].as_mut().unwrap().outcomes = vec![cancelled(CancelReason::CapacityFull)];
        bids[1].as_mut().unwrap().outcomes[0].try_seq = 12.into();
        bids[1].as_mut().unwrap().withdraws.clear();
        broken(
            &specs,
            &bids,
            "though its withdraw at seq 10 was answered withdrawn",
        );
    }

    #[test]
    fn catches_an_empty_rollback_answered_after_the_try() {
        let (specs, mut bids) = first_n();
        bids[0].as_mut().unwrap().withdraws = vec![withdrawn(12, true)];
        broken(&specs, &bids, "its try was already in the log at seq 11");
        bids[0].as_mut().unwrap().withdraws = vec![withdrawn(10, false)];
        broken(&specs, &bids, "but the try came later, at seq 11");
    }

    #[test]
    fn catches_a_withdrawn_cancel_nobody_asked_for() {
        let (specs, mut bids) = first_n();
        bids[0].as_mut().unwrap().withdraws.clear();
        broken(
            &specs,
            &bids,
            "was cancelled withdrawn, but never withdrawn",
        );
        // A withdraw that got no answer may be what cancelled it.
        bids[0].as_mut().unwrap().withdraws = vec![None];
        passes(&specs, &bids);
    }

    #[test]
    fn catches_refusals_that_contradict_the_outcome() {
        let (specs, mut bids) = first_n();
        bids[1].as_mut().unwrap().withdraws = vec![refused(13, RefuseReason::AlreadyCancelled)];
        broken(
            &specs,
            &bids,
            "refused as already_cancelled, but the bid is confirmed rank 1",
        );
        bids[1].as_mut().unwrap().withdraws = vec![refused(13, RefuseReason::NotOwner)];
        broken(&specs, &bids, "refused as not_owner");
        let (specs, mut bids) = first_n();
        bids[0]
            .as_mut()
            .unwrap()
            .withdraws
            .push(refused(14, RefuseReason::AlreadyConfirmed));
        broken(
            &specs,
            &bids,
            "refused as already_confirmed, but the bid is cancelled withdrawn",
        );
    }

    #[test]
    fn catches_closes_without_a_deadline() {
        let (mut specs, bids) = first_n();
        specs[0].closes_at = None;
        broken(
            &specs,
            &bids,
            "cancelled auction_closed, but its auction has no closes_at",
        );
    }

    #[test]
    fn catches_a_reply_naming_a_try_before_the_deciding_one() {
        let (specs, mut bids) = first_n();
        bids[1].as_mut().unwrap().outcomes[0].try_seq = 99.into();
        broken(
            &specs,
            &bids,
            "decides try 99.0, but its accepted reply named the earlier try 12.0",
        );
        // A later copy of the deciding try (a resend a gateway wrote again)
        // is no contradiction.
        bids[1].as_mut().unwrap().outcomes[0].try_seq = 7.into();
        let mut v = Verdict::default();
        let b = bids[1].as_ref().unwrap();
        check_bid(&mut v, "b1", b, &specs[0]);
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }

    /// One held, raised bid in a ranked auction, confirmed at the close.
    fn raised_bid() -> (Vec<AuctionSpec>, Vec<Option<BidFacts>>) {
        let mut b = bid(0, vec![confirmed(1)]).unwrap();
        b.try_seq = Some(5.into());
        b.outcomes[0].try_seq = 5.into();
        b.outcomes[0].amount = 130;
        b.held = vec![100, 120, 130];
        // A conflict, retried from the current amount.
        b.raises = vec![
            raised(6, 120),
            Raise {
                amount: 110,
                answer: Some(Answer {
                    seq: 7,
                    result: CommandResult::Refused {
                        reason: RefuseReason::Conflict,
                        current_amount: Some(120),
                    },
                }),
            },
            raised(8, 130),
        ];
        (vec![ranked(1)], vec![Some(b)])
    }

    #[test]
    fn a_sound_raise_passes() {
        let (specs, bids) = raised_bid();
        passes(&specs, &bids);
    }

    #[test]
    fn catches_an_outcome_below_a_granted_raise() {
        let (specs, mut bids) = raised_bid();
        let b = bids[0].as_mut().unwrap();
        b.outcomes[0].amount = 120;
        b.held.pop();
        broken(
            &specs,
            &bids,
            "was raised to 130, but its outcome has amount 120",
        );
        // An amount nobody bid or raised to.
        let (specs, mut bids) = raised_bid();
        bids[0].as_mut().unwrap().outcomes[0].amount = 150;
        broken(
            &specs,
            &bids,
            "neither its bid (100) nor a raise it was granted",
        );
    }

    #[test]
    fn catches_a_raise_in_a_first_n_auction() {
        let (_, bids) = raised_bid();
        broken(
            &[AuctionSpec::with_capacity(1)],
            &bids,
            "was raised at seq 6, but its auction is first_n",
        );
    }

    #[test]
    fn catches_held_notices_that_no_outcome_explains() {
        let (specs, mut bids) = raised_bid();
        bids[0].as_mut().unwrap().held.push(140);
        broken(
            &specs,
            &bids,
            "held a slot with 140, above its outcome's amount 130",
        );
        let (specs, mut bids) = raised_bid();
        let b = bids[0].as_mut().unwrap();
        b.raises.clear();
        b.held = vec![100];
        b.outcomes = vec![cancelled(CancelReason::BidderLimit)];
        b.outcomes[0].try_seq = 5.into();
        broken(&specs, &bids, "held a slot, but is cancelled bidder_limit");
    }

    #[test]
    fn catches_a_held_notice_after_an_empty_rollback() {
        let (specs, mut bids) = first_n();
        let b0 = bids[0].as_mut().unwrap();
        b0.held = vec![100];
        broken(
            &specs,
            &bids,
            "though it was withdrawn before its try (empty rollback at seq 10)",
        );
    }
}
