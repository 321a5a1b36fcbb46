//! The bid path's resend gate, as a state machine with no I/O: from what
//! the gateway finds out about a bid, one fact at a time, it decides what
//! to find out next, whether to append the bid's try, and what to answer.
//!
//! A bid may be a resend of one already accepted, and a resend must get
//! its original reply. The gate refuses early only what can never win
//! (no such auction, below the minimum, closed, sold out), and refuses a
//! closed or sold-out auction only once the verifier proves the bid new;
//! until then the bid gets `unavailable`, to be resent.
//!
//! [`BidGate::step`] says what the driver (`bid.rs`) does next;
//! [`BidGate::handle`] takes what it found. The driver owns the I/O and
//! the view: taking one bid id at a time, counting appends in progress,
//! the view's freshness, the time. Those are tested by the integration
//! tests (`tests/resends.rs`, `tests/partitions.rs`), the gate here.

use super::failure::CATCH_UP_RETRY_MS;
use crate::wire::{RejectReason, TryAt};

/// What the verifier knows of a bid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Known {
    /// Decided by the try at this log sequence.
    Decided(TryAt),
    /// Not decided, and the verifier has decided every try it needs to know.
    New,
    /// No answer, or the verifier is behind: the bid cannot be proven new.
    Unknown,
}

/// What the driver does next for a bid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Find the auction's spec: [`Fact::NoAuction`] or [`Fact::Auction`].
    LookUpSpec,
    /// Ask the verifier about the bid id, counting it new only if the
    /// verifier has decided the log through `through`: [`Fact::Verifier`].
    AskVerifier { through: u64 },
    /// Count the bid as an append in progress on its auction (a resend
    /// that finds the auction blocked waits for it), take the time its try
    /// will carry, and say what the view holds then: [`Fact::View`].
    BeginAppend,
    /// Read the auction's status entry into the view: [`Fact::StatusRead`].
    ReadStatus,
    /// Say what the view holds now: [`Fact::View`].
    CheckView,
    /// Stop counting the bid as appending, and wait for the auction's
    /// appends that began before it: [`Fact::Drained`].
    Drain,
    /// Wait for the verifier to decide the auction's last try:
    /// [`Fact::Settled`].
    Settle,
    /// Append the bid's try: [`Fact::Appended`].
    Append,
    /// Nothing more to find out: answer the bid.
    Answer(Answer),
}

/// The gate's answer to a bid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// Its try is in the log at `at`, appended now.
    Accepted { at: TryAt },
    /// The bid id is already in the log at `at`: the reply of that
    /// bid (its acceptance, or a conflict if the bodies differ).
    Duplicate { at: TryAt },
    /// Refused without a try.
    Rejected(RejectReason),
    /// The auction is `blocked`, but the bid cannot be told yet from a
    /// resend of an accepted bid: resend it in `retry_after_ms`.
    Unavailable {
        blocked: RejectReason,
        retry_after_ms: u64,
    },
}

/// What the driver found, answering the gate's last [`Step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fact {
    /// No auction has that id.
    NoAuction,
    /// The auction is open with this minimum amount.
    Auction { min_amount: u64 },
    /// Why the view says the bid cannot win (closed or sold out), if it
    /// does, and whether the view vouches for itself.
    View {
        blocked: Option<RejectReason>,
        current: bool,
    },
    /// The auction's status entry is in the view.
    StatusRead,
    /// Whether the appends before this bid's ended in time.
    Drained(bool),
    /// The auction's last try (0 if none), once the verifier decided it;
    /// `None` if it did not in time.
    Settled(Option<u64>),
    /// What the verifier said of the bid id.
    Verifier(Known),
    /// The try is in the log at `at`; `duplicate` when the log had
    /// it already (a resend within the de-duplication window).
    Appended { at: TryAt, duplicate: bool },
}

/// The resend gate for one bid.
#[derive(Debug)]
pub(super) struct BidGate {
    /// The bid's amount, against the auction's minimum.
    amount: u64,
    /// What the gate waits for.
    state: State,
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// The spec.
    Spec,
    /// Below the minimum: whether the verifier decided the bid id.
    BelowMinimum,
    /// The view; `read` once the auction's status was read into it.
    View { read: bool },
    /// The status read.
    Status,
    /// The earlier appends, the auction being `blocked`.
    Drain { blocked: RejectReason },
    /// The verifier's catching up.
    Settle { blocked: RejectReason },
    /// Whether the verifier decided the bid id, having decided the log
    /// through `through`, the auction's last try.
    Verifier { blocked: RejectReason, through: u64 },
    /// The append's ack.
    Append,
    /// Nothing: answered.
    Done(Answer),
}

impl BidGate {
    pub(super) fn new(amount: u64) -> BidGate {
        BidGate {
            amount,
            state: State::Spec,
        }
    }

    /// What the driver does next.
    pub(super) fn step(&self) -> Step {
        match self.state {
            State::Spec => Step::LookUpSpec,
            // An accepted bid met the minimum, so this is no resend of one,
            // but its id may have been used with another amount: a
            // conflict. (Seen once that bid is decided; until then the
            // reply is below_minimum.)
            State::BelowMinimum => Step::AskVerifier { through: 0 },
            State::View { read: false } => Step::BeginAppend,
            State::View { read: true } => Step::CheckView,
            State::Status => Step::ReadStatus,
            State::Drain { .. } => Step::Drain,
            State::Settle { .. } => Step::Settle,
            State::Verifier { through, .. } => Step::AskVerifier { through },
            State::Append => Step::Append,
            State::Done(answer) => Step::Answer(answer),
        }
    }

    /// Takes what the driver found for the last [`step`](Self::step).
    ///
    /// # Panics
    ///
    /// If `fact` does not answer that step: the driver is wrong.
    pub(super) fn handle(&mut self, fact: Fact) {
        self.state = match (self.state, fact) {
            (State::Spec, Fact::NoAuction) => {
                State::Done(Answer::Rejected(RejectReason::UnknownAuction))
            }
            (State::Spec, Fact::Auction { min_amount }) if self.amount < min_amount => {
                State::BelowMinimum
            }
            (State::Spec, Fact::Auction { .. }) => State::View { read: false },
            (State::BelowMinimum, Fact::Verifier(Known::Decided(at))) => {
                State::Done(Answer::Duplicate { at })
            }
            (State::BelowMinimum, Fact::Verifier(Known::New | Known::Unknown)) => {
                State::Done(Answer::Rejected(RejectReason::BelowMinimum))
            }
            // The bid may be a resend of one accepted before the auction
            // filled or closed: that one gets its original reply. Once the
            // verifier has decided all of the auction's tries, it knows
            // every such bid. Until then (or if the verifier cannot be
            // asked) the bid cannot be proven new, and gets an error to
            // resend it. Writing its try instead would answer a resend
            // without the verifier, but a bid already refused here as new
            // would then be accepted on its next resend, and cancelled:
            // two answers for one bid.
            (
                State::View { .. },
                Fact::View {
                    blocked: Some(blocked),
                    ..
                },
            ) => State::Drain { blocked },
            // A view that cannot vouch for itself (its watch lost,
            // restarted or behind) may lack a sell-out or close for which
            // another gateway has refused bids already: read the auction's
            // status instead.
            (
                State::View { read: false },
                Fact::View {
                    blocked: None,
                    current: false,
                },
            ) => State::Status,
            (State::View { .. }, Fact::View { blocked: None, .. }) => State::Append,
            (State::Status, Fact::StatusRead) => State::View { read: true },
            (State::Drain { blocked }, Fact::Drained(true)) => State::Settle { blocked },
            (State::Drain { blocked }, Fact::Drained(false))
            | (State::Settle { blocked }, Fact::Settled(None))
            | (State::Verifier { blocked, .. }, Fact::Verifier(Known::Unknown)) => {
                State::Done(Answer::Unavailable {
                    blocked,
                    retry_after_ms: CATCH_UP_RETRY_MS,
                })
            }
            (State::Settle { blocked }, Fact::Settled(Some(last_try))) => State::Verifier {
                blocked,
                through: last_try,
            },
            (State::Verifier { .. }, Fact::Verifier(Known::Decided(at))) => {
                State::Done(Answer::Duplicate { at })
            }
            (State::Verifier { blocked, .. }, Fact::Verifier(Known::New)) => {
                State::Done(Answer::Rejected(blocked))
            }
            (State::Append, Fact::Appended { at, duplicate }) => State::Done(match duplicate {
                true => Answer::Duplicate { at },
                false => Answer::Accepted { at },
            }),
            (state, fact) => panic!("{fact:?} does not answer the gate waiting in {state:?}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RejectReason::{AuctionClosed, BelowMinimum, SoldOut, UnknownAuction};

    /// Feeds a gate for a bid of `amount` the `facts` in turn; the steps
    /// it took, its answer last.
    fn walk(amount: u64, facts: &[Fact]) -> Vec<Step> {
        let mut gate = BidGate::new(amount);
        let mut steps = vec![gate.step()];
        for &fact in facts {
            gate.handle(fact);
            steps.push(gate.step());
        }
        steps
    }

    fn open(min_amount: u64) -> Fact {
        Fact::Auction { min_amount }
    }

    fn view(blocked: Option<RejectReason>, current: bool) -> Fact {
        Fact::View { blocked, current }
    }

    fn unavailable(blocked: RejectReason) -> Step {
        Step::Answer(Answer::Unavailable {
            blocked,
            retry_after_ms: CATCH_UP_RETRY_MS,
        })
    }

    #[test]
    fn every_path_of_the_table() {
        use Step::{Append, BeginAppend, CheckView, Drain, LookUpSpec, ReadStatus, Settle};
        let ask = |through| Step::AskVerifier { through };
        let decided = |seq: u64| Fact::Verifier(Known::Decided(seq.into()));
        let new = Fact::Verifier(Known::New);
        let unknown = Fact::Verifier(Known::Unknown);
        let clear = |current| view(None, current);
        let sold = |current| view(Some(SoldOut), current);
        let closed = |current| view(Some(AuctionClosed), current);
        let settled = |last_try| Fact::Settled(Some(last_try));
        let (drained, status) = (Fact::Drained(true), Fact::StatusRead);
        let appended = |seq: u64, duplicate| Fact::Appended {
            at: seq.into(),
            duplicate,
        };
        let dup = |seq: u64| Step::Answer(Answer::Duplicate { at: seq.into() });
        let rejected = |reason| Step::Answer(Answer::Rejected(reason));
        let accepted = Step::Answer(Answer::Accepted { at: 9.into() });
        #[rustfmt::skip]
        let cases = [
            ("no such auction", 10,
                vec![Fact::NoAuction],
                vec![LookUpSpec, rejected(UnknownAuction)]),
            ("below the minimum, its id decided: a resend or a conflict", 9,
                vec![open(10), decided(4)],
                vec![LookUpSpec, ask(0), dup(4)]),
            ("below the minimum, new", 9,
                vec![open(10), new],
                vec![LookUpSpec, ask(0), rejected(BelowMinimum)]),
            ("below the minimum, the verifier silent", 9,
                vec![open(10), unknown],
                vec![LookUpSpec, ask(0), rejected(BelowMinimum)]),
            ("at the minimum, a current view: appended", 10,
                vec![open(10), clear(true), appended(9, false)],
                vec![LookUpSpec, BeginAppend, Append, accepted]),
            ("appended, but the log had it: the original reply", 10,
                vec![open(10), clear(true), appended(3, true)],
                vec![LookUpSpec, BeginAppend, Append, dup(3)]),
            ("a view not current, the status open: appended", 10,
                vec![open(1), clear(false), status, clear(false), appended(9, false)],
                vec![LookUpSpec, BeginAppend, ReadStatus, CheckView, Append, accepted]),
            ("a view not current, the status sold out", 10,
                vec![open(1), clear(false), status, sold(false), drained, settled(7), new],
                vec![LookUpSpec, BeginAppend, ReadStatus, CheckView, Drain, Settle, ask(7),
                    rejected(SoldOut)]),
            ("closed, from a view not current: no status read", 10,
                vec![open(1), closed(false), drained, settled(0), new],
                vec![LookUpSpec, BeginAppend, Drain, Settle, ask(0), rejected(AuctionClosed)]),
            ("sold out, a resend of an accepted bid", 10,
                vec![open(1), sold(true), drained, settled(7), decided(5)],
                vec![LookUpSpec, BeginAppend, Drain, Settle, ask(7), dup(5)]),
            ("sold out, the verifier cannot tell", 10,
                vec![open(1), sold(true), drained, settled(7), unknown],
                vec![LookUpSpec, BeginAppend, Drain, Settle, ask(7), unavailable(SoldOut)]),
            ("closed, the verifier behind", 10,
                vec![open(1), closed(true), drained, Fact::Settled(None)],
                vec![LookUpSpec, BeginAppend, Drain, Settle, unavailable(AuctionClosed)]),
            ("sold out, an earlier append still going", 10,
                vec![open(1), sold(true), Fact::Drained(false)],
                vec![LookUpSpec, BeginAppend, Drain, unavailable(SoldOut)]),
        ];
        for (name, amount, facts, expected) in cases {
            assert_eq!(walk(amount, &facts), expected, "{name}");
        }
    }

    #[test]
    #[should_panic(expected = "does not answer")]
    fn a_fact_that_answers_another_step_is_a_driver_bug() {
        walk(
            10,
            &[
                open(1),
                Fact::Appended {
                    at: 1.into(),
                    duplicate: false,
                },
            ],
        );
    }

    #[test]
    #[should_panic(expected = "does not answer")]
    fn an_answered_gate_takes_no_more_facts() {
        walk(10, &[Fact::NoAuction, Fact::NoAuction]);
    }

    /// What the driver would find for one bid, whatever the gate asks.
    #[derive(Clone, Debug)]
    struct World {
        amount: u64,
        min_amount: Option<u64>,
        /// The view at the first and any second look.
        views: [(Option<RejectReason>, bool); 2],
        drained: bool,
        settled: Option<u64>,
        verifier: Known,
        appended: (u64, bool),
    }

    fn world() -> impl Strategy<Value = World> {
        let blocked = prop_oneof![Just(None), Just(Some(SoldOut)), Just(Some(AuctionClosed))];
        let view = (blocked, any::<bool>());
        let known = prop_oneof![
            (0..20u64).prop_map(|seq| Known::Decided(seq.into())),
            Just(Known::New),
            Just(Known::Unknown),
        ];
        (
            0..20u64,
            proptest::option::weighted(0.9, 0..20u64),
            [view.clone(), view],
            any::<bool>(),
            proptest::option::of(0..20u64),
            known,
            (0..20u64, any::<bool>()),
        )
            .prop_map(
                |(amount, min_amount, views, drained, settled, verifier, appended)| World {
                    amount,
                    min_amount,
                    views,
                    drained,
                    settled,
                    verifier,
                    appended,
                },
            )
    }

    /// Runs a gate against `world`: each step with the fact it got, and the
    /// answer. Fails if the gate takes more steps than the longest path.
    fn run(world: &World) -> (Vec<(Step, Fact)>, Answer) {
        let mut gate = BidGate::new(world.amount);
        let mut trace = Vec::new();
        let mut views = world.views.iter();
        loop {
            let step = gate.step();
            let fact = match step {
                Step::LookUpSpec => match world.min_amount {
                    None => Fact::NoAuction,
                    Some(min_amount) => Fact::Auction { min_amount },
                },
                Step::AskVerifier { .. } => Fact::Verifier(world.verifier),
                Step::BeginAppend | Step::CheckView => {
                    let &(blocked, current) = views.next().expect("two looks at most");
                    Fact::View { blocked, current }
                }
                Step::ReadStatus => Fact::StatusRead,
                Step::Drain => Fact::Drained(world.drained),
                Step::Settle => Fact::Settled(world.settled),
                Step::Append => Fact::Appended {
                    at: world.appended.0.into(),
                    duplicate: world.appended.1,
                },
                Step::Answer(answer) => return (trace, answer),
            };
            trace.push((step, fact));
            assert!(trace.len() <= 7, "no path is this long: {trace:?}");
            gate.handle(fact);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_gate_keeps_its_promises(world in world()) {
            let (trace, answer) = run(&world);
            let found = |wanted: Fact| trace.iter().any(|&(_, fact)| fact == wanted);
            let asked = |wanted: Step| trace.iter().any(|&(step, _)| step == wanted);
            let appended = asked(Step::Append);
            let below_minimum = world.min_amount.is_some_and(|min| world.amount < min);

            // Nothing is appended while the view blocks the bid, nor from a
            // view that does not vouch for itself without a status read.
            let mut last_view = None;
            let mut read = false;
            for &(step, fact) in &trace {
                match fact {
                    Fact::View { blocked, current } => last_view = Some((blocked, current)),
                    Fact::StatusRead => read = true,
                    _ => {}
                }
                if step == Step::Append {
                    let (blocked, current) = last_view.expect("a look at the view first");
                    prop_assert_eq!(blocked, None);
                    prop_assert!(current || read);
                }
            }

            // Below the minimum, nothing is appended or counted as appending.
            if below_minimum {
                prop_assert!(!appended && !asked(Step::BeginAppend));
                let expected = match world.verifier {
                    Known::Decided(at) => Answer::Duplicate { at },
                    Known::New | Known::Unknown => Answer::Rejected(BelowMinimum),
                };
                prop_assert_eq!(answer, expected);
            }

            match answer {
                // A final reject of a sold-out or closed auction only from
                // a verifier that found the bid new, once the earlier
                // appends drained and the verifier decided the auction's
                // last try; and for the reason the view gave.
                Answer::Rejected(reason @ (SoldOut | AuctionClosed)) => {
                    let Some(last_try) = world.settled else {
                        return Err(TestCaseError::fail("rejected without settling"));
                    };
                    prop_assert!(found(Fact::Drained(true)));
                    prop_assert!(asked(Step::Settle));
                    prop_assert!(trace.contains(&(
                        Step::AskVerifier { through: last_try },
                        Fact::Verifier(Known::New)
                    )), "rejected without a verifier's new through {}", last_try);
                    prop_assert_eq!(last_view.and_then(|(blocked, _)| blocked), Some(reason));
                    prop_assert!(!appended);
                }
                Answer::Rejected(UnknownAuction) => {
                    prop_assert_eq!(world.min_amount, None);
                    prop_assert_eq!(trace.len(), 1);
                }
                Answer::Rejected(BelowMinimum) => prop_assert!(below_minimum),
                // Accepted only by an append the log did not have.
                Answer::Accepted { at } => {
                    prop_assert_eq!((at, false), (world.appended.0.into(), world.appended.1));
                    prop_assert!(appended);
                }
                Answer::Duplicate { at } => prop_assert!(
                    found(Fact::Verifier(Known::Decided(at)))
                        || found(Fact::Appended { at, duplicate: true }),
                    "a duplicate of {} that neither the verifier nor the log named", at
                ),
                Answer::Unavailable { blocked, retry_after_ms } => {
                    prop_assert_eq!(retry_after_ms, CATCH_UP_RETRY_MS);
                    prop_assert_eq!(last_view.and_then(|(blocked, _)| blocked), Some(blocked));
                    prop_assert!(!appended);
                }
            }

            // Whatever the verifier knows of the bid decides a blocked one.
            if !below_minimum && asked(Step::Drain) {
                if found(Fact::Verifier(Known::Unknown)) {
                    prop_assert!(
                        matches!(answer, Answer::Unavailable { .. }),
                        "the verifier could not tell, yet {:?}", answer
                    );
                }
                if let Known::Decided(at) = world.verifier {
                    if found(Fact::Verifier(world.verifier)) {
                        prop_assert_eq!(answer, Answer::Duplicate { at });
                    }
                }
            }
            // The log's word on a duplicate append is final.
            let appended = world.appended.0.into();
            if found(Fact::Appended { at: appended, duplicate: true }) {
                prop_assert_eq!(answer, Answer::Duplicate { at: appended });
            }
        }
    }
}
