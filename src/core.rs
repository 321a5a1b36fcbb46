//! The decision core: a deterministic state machine over the ordered log.
//!
//! No I/O, no clock, no async. Events go in, in log order; decisions come
//! out. Every decision depends only on the events before it (time comes from
//! each event's own timestamp), so replaying the log from the start
//! reproduces every decision exactly. The verifier wraps this with NATS and
//! SQLite; the tests and the audit run it bare.
//!
//! The two classic TCC hazards are solved here, in log order, with no fence
//! table: a withdraw that finds no try leaves a tombstone (empty rollback),
//! and a try that finds its own tombstone is cancelled before it can hold
//! anything (anti-hanging).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::id_map::IdMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::wire::{
    AuctionSpec, CancelReason, CloseEvent, CommandResult, LogEntry, LogEvent, OpenEvent,
    OutcomeEvent, OutcomeKind, Policy, RaiseEvent, RefuseReason, TryAt, TryEvent, WithdrawEvent,
};

/// What the core made of one try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The try won slot `rank` (1..N: in order of confirmation for
    /// `first_n`, by amount for `top_amount`).
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

/// The one final decision on one try: what its outcome event records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Where the try is in the log.
    pub at: TryAt,
    /// The try, with its amount as decided (a raised bid's last amount).
    pub bid: TryEvent,
    pub verdict: Verdict,
}

/// A try holding a slot in a `top_amount` auction, until the close.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub try_seq: u64,
    /// The try's place in its log entry.
    #[serde(default)]
    pub try_index: u32,
    /// The try, with its current amount.
    pub bid: TryEvent,
}

impl Hold {
    /// Where the held try is in the log.
    pub fn at(&self) -> TryAt {
        TryAt::new(self.try_seq, self.try_index)
    }
}

/// What the core made of one log event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A new auction was opened.
    Opened,
    /// A second `open` for an auction that is already open; the first one
    /// stands. (The gateway never writes one, but the log is the authority.)
    OpenIgnored,
    /// The try was decided: exactly one outcome must be published for it.
    Decided(Verdict),
    /// `top_amount`: the try holds a slot until the close. It may have
    /// pushed the lowest holder out (cancelled `outbid`).
    Held { displaced: Option<Box<Decision>> },
    /// A try for a bid already decided or held (a resend past JetStream's
    /// de-duplication window). The bid keeps its one outcome; no new one.
    Duplicate,
    /// A withdraw: what it did, and the held try it cancelled, if any.
    Withdraw {
        result: CommandResult,
        cancelled: Option<Box<Decision>>,
    },
    /// A raise: what it did, and the bid's new hold if it applied.
    Raise {
        result: CommandResult,
        held: Option<Box<Hold>>,
    },
    /// The auction closed; in a `top_amount` auction, every held try is
    /// confirmed, ranked by amount.
    Closed { confirmed: Vec<Decision> },
    /// A close of an auction already closed, or never opened.
    CloseIgnored,
}

impl Step {
    /// Every try this step decided, `t` being the event's own try (if the
    /// event was a try, at `seq`).
    pub fn decisions(&self, t: Option<&TryEvent>, at: TryAt) -> Vec<Decision> {
        match self {
            Step::Decided(verdict) => t
                .map(|t| Decision {
                    at,
                    bid: t.clone(),
                    verdict: *verdict,
                })
                .into_iter()
                .collect(),
            Step::Held { displaced } => displaced.iter().map(|d| (**d).clone()).collect(),
            Step::Withdraw { cancelled, .. } => cancelled.iter().map(|d| (**d).clone()).collect(),
            Step::Closed { confirmed } => confirmed.clone(),
            _ => Vec::new(),
        }
    }

    /// The hold this step made, `t` being the event's own try at `seq`.
    pub fn hold(&self, t: Option<&TryEvent>, at: TryAt) -> Option<Hold> {
        match self {
            Step::Held { .. } => t.map(|t| Hold {
                try_seq: at.seq,
                try_index: at.index,
                bid: t.clone(),
            }),
            Step::Raise { held, .. } => held.as_deref().cloned(),
            _ => None,
        }
    }

    /// The result of a withdraw or a raise.
    pub fn command_result(&self) -> Option<CommandResult> {
        match self {
            Step::Withdraw { result, .. } | Step::Raise { result, .. } => Some(*result),
            _ => None,
        }
    }
}

/// A bid decided in an auction: the try that decided it, a fingerprint of
/// its bidder (for withdraws and raises by someone else), and the verdict.
/// 16 bytes: a million decided bids stay cheap to keep in memory.
#[derive(Clone, Copy, Debug)]
struct Settled {
    seq: u64,
    owner: u32,
    /// The try's place in its entry: entries are read up to
    /// [`crate::wire::MAX_TRIES_READ`] tries.
    index: u16,
    verdict: SettledAs,
}

impl Settled {
    fn new(bidder_id: &str, verdict: Verdict, at: TryAt) -> Settled {
        Settled {
            seq: at.seq,
            index: u16::try_from(at.index).expect("entries are read up to 65,536 tries"),
            owner: owner(bidder_id),
            verdict: verdict.into(),
        }
    }
}

/// As much of a verdict as later withdraws and raises need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SettledAs {
    Confirmed,
    Withdrawn,
    Cancelled,
}

impl From<Verdict> for SettledAs {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Confirmed { .. } => SettledAs::Confirmed,
            Verdict::Cancelled {
                reason: CancelReason::Withdrawn,
            } => SettledAs::Withdrawn,
            Verdict::Cancelled { .. } => SettledAs::Cancelled,
        }
    }
}

/// The core's maps: foldhash is several times faster than the standard
/// SipHash on short ids, and still seeded per process, so bid ids chosen
/// to collide cannot be prepared in advance. No decision depends on a
/// map's iteration order (what is iterated is sorted first, or a BTreeMap).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = HashSet<K, foldhash::fast::RandomState>;

/// Bid ids decided in an auction.
type Decided = IdMap<Settled>;

/// Rank order of held tries: highest amount first, then the earlier try.
type HoldKey = (Reverse<u64>, TryAt);

/// One auction's state: only what future decisions need.
#[derive(Clone, Debug)]
struct Auction {
    /// The rules, from the auction's `open` event.
    spec: AuctionSpec,
    /// Confirmed slots so far; the next confirmation gets rank `confirmed + 1`.
    confirmed: u32,
    /// Confirmed slots per bidder. At most `capacity` entries.
    wins: IdMap<u32>,
    /// Every bid id decided in this auction, so that a late duplicate try
    /// never gets a second outcome.
    decided: Decided,
    /// A `close` event was decided.
    closed: bool,
    /// Bids withdrawn before their try arrived (the tombstones of the
    /// empty rollback), with the bidders who withdrew them: the id has no
    /// owner until its try arrives, so each bidder's withdraw counts for
    /// that bidder's try alone.
    withdrawn_early: Map<Box<str>, Vec<Box<str>>>,
    /// `top_amount`: the tries holding slots, in rank order.
    held: BTreeMap<HoldKey, Hold>,
    /// `top_amount`: each held bid's key in `held`.
    held_bids: Map<Box<str>, HoldKey>,
    /// `top_amount`: slots held per bidder, for the bidder limit.
    held_per_bidder: Map<Box<str>, u32>,
}

/// The parts of an auction's state that are not decisions: kept in the
/// snapshot beside them, and restored with [`Ledger::restore_life`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Life {
    pub closed: bool,
    /// (bid id, bidder id) of each bid withdrawn before its try.
    pub withdrawn_early: Vec<(String, String)>,
    pub held: Vec<Hold>,
}

/// The state of every auction, built by folding the log.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Open auctions by id.
    auctions: Map<String, Auction>,
    /// Tries for auctions that were never opened. They are decided
    /// (cancelled) once each too.
    orphans: Map<String, Decided>,
    /// Auctions whose [`Life`] changed since [`Ledger::take_changed`].
    changed: Set<String>,
    /// Tries in the log per auction id (opened or not), whatever was made
    /// of them: what a status shows beside the outcomes.
    tries: Map<String, u64>,
    /// Auctions whose try count changed since [`Ledger::take_counted`].
    counted: Set<String>,
}

/// A read-only view of one auction, for status and fast rejects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fill {
    /// Winning slots.
    pub capacity: u32,
    /// Slots confirmed so far.
    pub confirmed: u32,
    /// Slots held (`top_amount`, until the close).
    pub held: u32,
    /// The auction's `close` event was decided.
    pub closed: bool,
}

impl Fill {
    pub fn sold_out(&self) -> bool {
        self.confirmed >= self.capacity
    }
}

/// A fixed fingerprint of a bidder id (32-bit FNV-1a), the same in every
/// process and version, so replays agree. Only ever compared for a bid
/// that is already decided, where a withdraw or a raise changes nothing
/// anyway: a collision can only turn a `not_owner` refusal into another
/// refusal.
fn owner(bidder_id: &str) -> u32 {
    crate::wire::fnv1a32(bidder_id)
}

fn refused(reason: RefuseReason) -> CommandResult {
    CommandResult::Refused {
        reason,
        current_amount: None,
    }
}

impl Auction {
    fn new(spec: AuctionSpec, decided: Decided) -> Self {
        Auction {
            spec,
            confirmed: 0,
            wins: IdMap::default(),
            decided,
            closed: false,
            withdrawn_early: Map::default(),
            held: BTreeMap::new(),
            held_bids: Map::default(),
            held_per_bidder: Map::default(),
        }
    }

    fn record(&mut self, bid_id: &str, bidder_id: &str, verdict: Verdict, at: TryAt) {
        self.decided
            .insert(bid_id, Settled::new(bidder_id, verdict, at));
        if let Verdict::Confirmed { rank } = verdict {
            self.confirmed = self.confirmed.max(rank);
            *self.wins.get_or_insert_with(bidder_id, || 0) += 1;
        }
    }

    /// Takes a held try out, decided with `verdict`.
    fn release(&mut self, key: HoldKey, verdict: Verdict) -> Decision {
        let hold = self.unhold(key);
        self.record(&hold.bid.bid_id, &hold.bid.bidder_id, verdict, hold.at());
        Decision {
            at: hold.at(),
            bid: hold.bid,
            verdict,
        }
    }

    fn hold(&mut self, hold: Hold) {
        let key = (Reverse(hold.bid.amount), hold.at());
        self.held_bids.insert(hold.bid.bid_id.as_str().into(), key);
        *self
            .held_per_bidder
            .entry(hold.bid.bidder_id.as_str().into())
            .or_insert(0) += 1;
        self.held.insert(key, hold);
    }

    /// Takes a held try out of the holds, undecided.
    fn unhold(&mut self, key: HoldKey) -> Hold {
        let hold = self.held.remove(&key).expect("held keys are in `held`");
        self.held_bids.remove(hold.bid.bid_id.as_str());
        let bidder = hold.bid.bidder_id.as_str();
        if let Some(n) = self.held_per_bidder.get_mut(bidder) {
            *n -= 1;
            if *n == 0 {
                self.held_per_bidder.remove(bidder);
            }
        }
        hold
    }

    fn held_by(&self, bidder_id: &str) -> u32 {
        self.held_per_bidder.get(bidder_id).copied().unwrap_or(0)
    }

    /// Why a bid that is already decided cannot be withdrawn or raised.
    fn settled_refusal(settled: &Settled, bidder_id: &str) -> RefuseReason {
        if settled.owner != owner(bidder_id) {
            RefuseReason::NotOwner
        } else if settled.verdict == SettledAs::Confirmed {
            RefuseReason::AlreadyConfirmed
        } else {
            RefuseReason::AlreadyCancelled
        }
    }
}

impl Ledger {
    pub fn new() -> Self {
        Ledger::default()
    }

    /// Applies the next event of the log, at log sequence `seq` (a try
    /// alone in its entry).
    pub fn apply(&mut self, event: &LogEvent, seq: u64) -> Step {
        match event {
            LogEvent::Open(open) => self.open(open),
            LogEvent::Try(t) => self.decide(t, TryAt::new(seq, 0)),
            LogEvent::Withdraw(w) => self.withdraw(w),
            LogEvent::Raise(r) => self.raise(r),
            LogEvent::Close(c) => self.close(c),
        }
    }

    /// Applies an `open` event.
    pub fn open(&mut self, open: &OpenEvent) -> Step {
        if self.auctions.contains_key(&open.auction_id) {
            return Step::OpenIgnored;
        }
        // A bid cancelled as `unknown_auction` before the open keeps that
        // one outcome.
        let decided = self.orphans.remove(&open.auction_id).unwrap_or_default();
        self.auctions.insert(
            open.auction_id.clone(),
            Auction::new(open.spec.clone(), decided),
        );
        Step::Opened
    }

    /// Decides a try at log sequence `seq`, re-checking every rule, late
    /// by its own `tried_at` (for tries with no storage time: the
    /// alternatives' aggregates, tests). The log's tries are decided by
    /// [`Ledger::apply_entry`], late by the time the log stored them.
    pub fn decide(&mut self, t: &TryEvent, at: TryAt) -> Step {
        self.decide_at(t, at, t.tried_at)
    }

    /// Decides a try that the log stored at `logged_at`: at or past its
    /// auction's `closes_at` it is late, whatever clock stamped `tried_at`.
    fn decide_at(&mut self, t: &TryEvent, at: TryAt, logged_at: DateTime<Utc>) -> Step {
        let step = self.judge_at(t, logged_at);
        let Some(auction) = self.auctions.get_mut(&t.auction_id) else {
            if let Step::Decided(verdict) = step {
                self.record_orphan(&t.auction_id, &t.bid_id, &t.bidder_id, verdict, at);
            }
            return step;
        };
        if let Step::Decided(verdict) = step {
            // The id now belongs to this try's bidder: its tombstones are
            // spent, and other bidders' can never apply.
            if auction.withdrawn_early.remove(t.bid_id.as_str()).is_some() {
                self.changed.insert(t.auction_id.clone());
            }
            auction.record(&t.bid_id, &t.bidder_id, verdict, at);
            return step;
        }
        if step == Step::Duplicate {
            return step;
        }
        // The id now belongs to this try's bidder; other bidders'
        // tombstones for it can never apply.
        if auction.withdrawn_early.remove(t.bid_id.as_str()).is_some() {
            self.changed.insert(t.auction_id.clone());
        }
        // `judge` left this try to the ranking: hold it if it is among the
        // N highest, pushing the lowest holder out when all are taken.
        self.changed.insert(t.auction_id.clone());
        let outbid = Verdict::Cancelled {
            reason: CancelReason::Outbid,
        };
        let mut displaced = None;
        if auction.held.len() as u32 >= auction.spec.capacity.get() {
            let (&lowest, hold) = auction.held.last_key_value().expect("capacity >= 1");
            // Equal amounts: the earlier try (the holder) ranks higher.
            if t.amount <= hold.bid.amount {
                auction.record(&t.bid_id, &t.bidder_id, outbid, at);
                return Step::Decided(outbid);
            }
            displaced = Some(Box::new(auction.release(lowest, outbid)));
        }
        auction.hold(Hold {
            try_seq: at.seq,
            try_index: at.index,
            bid: t.clone(),
        });
        Step::Held { displaced }
    }

    /// What [`Ledger::decide`] would make of a try, without recording it:
    /// `Decided`, `Duplicate`, or (`top_amount`, eligible) `Held` with no
    /// displacement worked out. The optimistic and locking alternatives
    /// decide on a read of the aggregate and record only what their append
    /// made durable.
    pub fn judge(&self, t: &TryEvent) -> Step {
        self.judge_at(t, t.tried_at)
    }

    /// [`Ledger::judge`], late by `logged_at`.
    fn judge_at(&self, t: &TryEvent, logged_at: DateTime<Utc>) -> Step {
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
        let bid = t.bid_id.as_str();
        if auction.decided.contains_key(bid) || auction.held_bids.contains_key(bid) {
            return Step::Duplicate;
        }
        let spec = &auction.spec;
        // What counts toward the bidder's limit: its slots won, or those
        // it holds until the close.
        let wins = match spec.policy {
            Policy::FirstN => auction.wins.get(t.bidder_id.as_str()).copied().unwrap_or(0),
            Policy::TopAmount => auction.held_by(&t.bidder_id),
        };
        // Anti-hanging: the bidder withdrew this bid before its try
        // arrived, so it is cancelled before it can take or hold anything.
        let reason = if auction
            .withdrawn_early
            .get(bid)
            .is_some_and(|by| by.iter().any(|b| **b == *t.bidder_id))
        {
            Some(CancelReason::Withdrawn)
        } else if auction.closed || spec.is_closed_at(logged_at) {
            Some(CancelReason::AuctionClosed)
        } else if t.amount < spec.min_amount {
            Some(CancelReason::BelowMinimum)
        } else if auction.confirmed >= spec.capacity.get() {
            // (A ranked auction confirms only at its close; this is an
            // auction with no slot at all, which no gateway opens.)
            Some(CancelReason::CapacityFull)
        } else if wins >= spec.max_wins_per_bidder {
            Some(CancelReason::BidderLimit)
        } else {
            None
        };
        if let Some(reason) = reason {
            return Step::Decided(Verdict::Cancelled { reason });
        }
        match spec.policy {
            Policy::FirstN => Step::Decided(Verdict::Confirmed {
                rank: auction.confirmed + 1,
            }),
            Policy::TopAmount => Step::Held { displaced: None },
        }
    }

    /// Applies a withdraw: cancels the bid if it is held, leaves a
    /// tombstone if its try has not arrived, and refuses otherwise.
    pub fn withdraw(&mut self, w: &WithdrawEvent) -> Step {
        self.withdraw_at(w, w.withdrawn_at)
    }

    /// A withdraw that the log stored at `logged_at`: late by that time.
    fn withdraw_at(&mut self, w: &WithdrawEvent, logged_at: DateTime<Utc>) -> Step {
        let unchanged = |reason| Step::Withdraw {
            result: refused(reason),
            cancelled: None,
        };
        let Some(auction) = self.auctions.get_mut(&w.auction_id) else {
            return unchanged(RefuseReason::UnknownAuction);
        };
        let bid = w.bid_id.as_str();
        if let Some(settled) = auction.decided.get(bid) {
            let reason = Auction::settled_refusal(settled, &w.bidder_id);
            if settled.verdict == SettledAs::Withdrawn && reason != RefuseReason::NotOwner {
                // Withdrawing twice changes nothing, and says so kindly.
                return Step::Withdraw {
                    result: CommandResult::Withdrawn {
                        empty_rollback: false,
                    },
                    cancelled: None,
                };
            }
            return unchanged(reason);
        }
        if let Some(&key) = auction.held_bids.get(bid) {
            if auction.held[&key].bid.bidder_id != w.bidder_id {
                return unchanged(RefuseReason::NotOwner);
            }
            if auction.spec.is_closed_at(logged_at) {
                return unchanged(RefuseReason::AuctionClosed);
            }
            let cancelled = auction.release(
                key,
                Verdict::Cancelled {
                    reason: CancelReason::Withdrawn,
                },
            );
            self.changed.insert(w.auction_id.clone());
            return Step::Withdraw {
                result: CommandResult::Withdrawn {
                    empty_rollback: false,
                },
                cancelled: Some(Box::new(cancelled)),
            };
        }
        // A closed auction cancels every later try anyway: no tombstone.
        if auction.closed {
            return unchanged(RefuseReason::AuctionClosed);
        }
        // Empty rollback: no try yet. The tombstone cancels it on arrival.
        let by = auction.withdrawn_early.entry(bid.into()).or_default();
        if !by.iter().any(|b| **b == *w.bidder_id) {
            by.push(w.bidder_id.as_str().into());
            self.changed.insert(w.auction_id.clone());
        }
        Step::Withdraw {
            result: CommandResult::Withdrawn {
                empty_rollback: true,
            },
            cancelled: None,
        }
    }

    /// Applies a raise of a held bid: only if its amount is still the one
    /// the bidder expected, so that of two raises sent together, the first
    /// in the log applies and the other is refused as a conflict. Raises of
    /// different bids commute: ranks depend only on amounts and try order.
    pub fn raise(&mut self, r: &RaiseEvent) -> Step {
        self.raise_at(r, r.raised_at)
    }

    /// A raise that the log stored at `logged_at`: late by that time.
    fn raise_at(&mut self, r: &RaiseEvent, logged_at: DateTime<Utc>) -> Step {
        let unchanged = |result| Step::Raise { result, held: None };
        let Some(auction) = self.auctions.get_mut(&r.auction_id) else {
            return unchanged(refused(RefuseReason::UnknownAuction));
        };
        match auction.spec.policy {
            // Only a held bid can be raised.
            Policy::FirstN => return unchanged(refused(RefuseReason::NotRanked)),
            Policy::TopAmount => {}
        }
        let bid = r.bid_id.as_str();
        if let Some(settled) = auction.decided.get(bid) {
            return unchanged(refused(Auction::settled_refusal(settled, &r.bidder_id)));
        }
        let Some(&key) = auction.held_bids.get(bid) else {
            return unchanged(refused(RefuseReason::UnknownBid));
        };
        let current = &auction.held[&key].bid;
        let refuse = |reason, current: u64| {
            unchanged(CommandResult::Refused {
                reason,
                current_amount: Some(current),
            })
        };
        if current.bidder_id != r.bidder_id {
            return unchanged(refused(RefuseReason::NotOwner));
        }
        if auction.spec.is_closed_at(logged_at) {
            return unchanged(refused(RefuseReason::AuctionClosed));
        }
        if current.amount != r.expected_amount {
            return refuse(RefuseReason::Conflict, current.amount);
        }
        if r.amount <= current.amount {
            return refuse(RefuseReason::NotHigher, current.amount);
        }
        let mut hold = auction.unhold(key);
        hold.bid.amount = r.amount;
        auction.hold(hold.clone());
        self.changed.insert(r.auction_id.clone());
        Step::Raise {
            result: CommandResult::Raised { amount: r.amount },
            held: Some(Box::new(hold)),
        }
    }

    /// Applies a close: later tries are cancelled `auction_closed`, and in
    /// a `top_amount` auction every held try is confirmed, ranked by amount.
    pub fn close(&mut self, c: &CloseEvent) -> Step {
        let Some(auction) = self.auctions.get_mut(&c.auction_id) else {
            return Step::CloseIgnored;
        };
        if auction.closed {
            return Step::CloseIgnored;
        }
        auction.closed = true;
        self.changed.insert(c.auction_id.clone());
        let keys: Vec<HoldKey> = auction.held.keys().copied().collect();
        let confirmed = keys
            .into_iter()
            .map(|key| {
                let rank = auction.confirmed + 1;
                auction.release(key, Verdict::Confirmed { rank })
            })
            .collect();
        Step::Closed { confirmed }
    }

    /// Decides an unreadable try that names its bid: cancelled
    /// (`invalid_event`), once per bid like any try.
    pub fn invalid(&mut self, t: &TryEvent, at: TryAt) -> Step {
        let invalid = Verdict::Cancelled {
            reason: CancelReason::InvalidEvent,
        };
        match self.auctions.get_mut(&t.auction_id) {
            Some(auction) => {
                let bid = t.bid_id.as_str();
                if auction.decided.contains_key(bid) || auction.held_bids.contains_key(bid) {
                    return Step::Duplicate;
                }
                auction.record(&t.bid_id, &t.bidder_id, invalid, at);
            }
            None => {
                if self.is_decided(&t.auction_id, &t.bid_id) {
                    return Step::Duplicate;
                }
                self.record_orphan(&t.auction_id, &t.bid_id, &t.bidder_id, invalid, at);
            }
        }
        Step::Decided(invalid)
    }

    /// Applies a log entry at `at` (its message's sequence and its place
    /// in it), stored at `stored_at`, as the verifier reads it; `None` for
    /// an entry with nothing to decide.
    ///
    /// # Panics
    ///
    /// On [`LogEntry::NewerFormat`]: a reader must stop before it.
    /// A try, a withdraw or a raise is late by the time the log stored it,
    /// not by the time its gateway stamped on it: the clock of whichever
    /// gateway wrote it has no say in the close.
    pub fn apply_entry(
        &mut self,
        entry: &LogEntry,
        at: TryAt,
        stored_at: DateTime<Utc>,
    ) -> Option<Step> {
        let seq = at.seq;
        if let LogEntry::Event(LogEvent::Try(t)) | LogEntry::InvalidTry(t) = entry {
            self.count_try(&t.auction_id);
        }
        match entry {
            LogEntry::Event(LogEvent::Try(t)) => Some(self.decide_at(t, at, stored_at)),
            LogEntry::Event(LogEvent::Withdraw(w)) => Some(self.withdraw_at(w, stored_at)),
            LogEntry::Event(LogEvent::Raise(r)) => Some(self.raise_at(r, stored_at)),
            LogEntry::Event(event) => Some(self.apply(event, seq)),
            LogEntry::InvalidTry(t) => Some(self.invalid(t, at)),
            LogEntry::Unreadable(_) => None,
            LogEntry::NewerFormat(v) => panic!("log entry {seq} is in format {v}, not read here"),
        }
    }

    /// Re-enters a decision of the try at `at`, read back from a snapshot
    /// (or from an aggregate's events), without deciding again.
    pub fn restore(
        &mut self,
        auction_id: &str,
        bid_id: &str,
        bidder_id: &str,
        verdict: Verdict,
        at: TryAt,
    ) {
        match self.auctions.get_mut(auction_id) {
            Some(auction) => auction.record(bid_id, bidder_id, verdict, at),
            None => self.record_orphan(auction_id, bid_id, bidder_id, verdict, at),
        }
    }

    /// Records a decision on a try for an auction never opened.
    fn record_orphan(
        &mut self,
        auction_id: &str,
        bid_id: &str,
        bidder_id: &str,
        verdict: Verdict,
        at: TryAt,
    ) {
        self.orphans
            .entry(auction_id.to_string())
            .or_default()
            .insert(bid_id, Settled::new(bidder_id, verdict, at));
    }

    /// An auction's state besides its decisions; `None` for an auction
    /// never opened.
    pub fn life(&self, auction_id: &str) -> Option<Life> {
        let auction = self.auctions.get(auction_id)?;
        let mut withdrawn_early: Vec<(String, String)> = auction
            .withdrawn_early
            .iter()
            .flat_map(|(bid, by)| by.iter().map(|b| (bid.to_string(), b.to_string())))
            .collect();
        withdrawn_early.sort();
        Some(Life {
            closed: auction.closed,
            withdrawn_early,
            held: auction.held.values().cloned().collect(),
        })
    }

    /// Re-enters an auction's [`Life`], read back from a snapshot, after
    /// its `open` and its decisions.
    pub fn restore_life(&mut self, auction_id: &str, life: Life) {
        let Some(auction) = self.auctions.get_mut(auction_id) else {
            return;
        };
        auction.closed = life.closed;
        auction.withdrawn_early.clear();
        for (bid, by) in life.withdrawn_early {
            auction
                .withdrawn_early
                .entry(bid.into())
                .or_default()
                .push(by.into());
        }
        auction.held.clear();
        auction.held_bids.clear();
        auction.held_per_bidder.clear();
        for hold in life.held {
            auction.hold(hold);
        }
    }

    /// The auctions whose [`Life`] changed since the last call.
    pub fn take_changed(&mut self) -> Vec<String> {
        let mut changed: Vec<String> = self.changed.drain().collect();
        changed.sort();
        changed
    }

    /// The sequence of the try that decided a bid, or that holds a slot
    /// for it.
    pub fn decided_try(&self, auction_id: &str, bid_id: &str) -> Option<TryAt> {
        let decided = match self.auctions.get(auction_id) {
            Some(auction) => {
                if let Some(key) = auction.held_bids.get(bid_id) {
                    return Some(key.1);
                }
                &auction.decided
            }
            None => self.orphans.get(auction_id)?,
        };
        decided
            .get(bid_id)
            .map(|s| TryAt::new(s.seq, u32::from(s.index)))
    }

    /// True when a bid has its one decision (not merely a held slot).
    pub fn is_decided(&self, auction_id: &str, bid_id: &str) -> bool {
        match self.auctions.get(auction_id) {
            Some(auction) => auction.decided.contains_key(bid_id),
            None => self
                .orphans
                .get(auction_id)
                .is_some_and(|d| d.contains_key(bid_id)),
        }
    }

    /// The auctions whose close event is decided.
    pub fn closed_auctions(&self) -> Vec<String> {
        let mut closed: Vec<String> = self
            .auctions
            .iter()
            .filter(|(_, a)| a.closed)
            .map(|(id, _)| id.clone())
            .collect();
        closed.sort();
        closed
    }

    /// The spec of an open auction.
    pub fn spec(&self, auction_id: &str) -> Option<&AuctionSpec> {
        self.auctions.get(auction_id).map(|a| &a.spec)
    }

    /// Open auctions with a `closes_at` at or before `now` and no close
    /// event yet: each needs one written.
    pub fn due(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
        let mut due: Vec<_> = self
            .auctions
            .iter()
            .filter(|(_, a)| !a.closed)
            .filter_map(|(id, a)| {
                a.spec
                    .closes_at
                    .filter(|at| *at <= now)
                    .map(|at| (id.clone(), at))
            })
            .collect();
        due.sort();
        due
    }

    /// Counts one more try of `auction_id` in the log.
    fn count_try(&mut self, auction_id: &str) {
        match self.tries.get_mut(auction_id) {
            Some(n) => *n += 1,
            None => {
                self.tries.insert(auction_id.to_string(), 1);
            }
        }
        if !self.counted.contains(auction_id) {
            self.counted.insert(auction_id.to_string());
        }
    }

    /// Tries of `auction_id` in the log so far (0 if none).
    pub fn tries(&self, auction_id: &str) -> u64 {
        self.tries.get(auction_id).copied().unwrap_or(0)
    }

    /// Every auction id with tries, with its count.
    pub fn all_tries(&self) -> impl Iterator<Item = (&str, u64)> {
        self.tries.iter().map(|(a, n)| (a.as_str(), *n))
    }

    /// The try counts that changed since the last call, for the snapshot.
    pub fn take_counted(&mut self) -> Vec<(String, u64)> {
        let mut counted: Vec<(String, u64)> = self
            .counted
            .drain()
            .map(|a| {
                let n = self.tries.get(&a).copied().unwrap_or(0);
                (a, n)
            })
            .collect();
        counted.sort();
        counted
    }

    /// Re-enters an auction's try count, read back from a snapshot.
    pub fn restore_tries(&mut self, auction_id: &str, tries: u64) {
        self.tries.insert(auction_id.to_string(), tries);
    }

    /// How full an auction is.
    pub fn fill(&self, auction_id: &str) -> Option<Fill> {
        self.auctions.get(auction_id).map(|a| Fill {
            capacity: a.spec.capacity.get(),
            confirmed: a.confirmed,
            held: a.held.len() as u32,
            closed: a.closed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Duration, TimeZone, Utc};
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::num::NonZeroU32;

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

    /// The log's clock closes an auction, not the gateway's: a try stored
    /// past `closes_at` is late whatever its `tried_at` says (a gateway
    /// whose clock is behind), and one stored before it is on time even
    /// if its `tried_at` is past it (a gateway whose clock is ahead).
    #[test]
    fn a_try_is_late_by_the_time_the_log_stored_it() {
        let spec = AuctionSpec {
            closes_at: Some(t0() + Duration::seconds(60)),
            ..AuctionSpec::with_capacity(5)
        };
        let mut l = Ledger::new();
        let read = |event: LogEvent| LogEntry::Event(event);
        let at = |secs| t0() + Duration::seconds(secs);
        assert_eq!(
            l.apply_entry(&read(open("a", spec)), 1.into(), at(0)),
            Some(Step::Opened)
        );
        // Stamped 10 s before the close by a slow clock, stored 1 s after it.
        let behind = read(try_("a", "b1", "u1", 5, 50));
        assert_eq!(
            l.apply_entry(&behind, 2.into(), at(61)),
            Some(cancelled(CancelReason::AuctionClosed))
        );
        // Stamped 10 s after the close by a fast clock, stored before it.
        let ahead = read(try_("a", "b2", "u2", 5, 70));
        assert_eq!(l.apply_entry(&ahead, 3.into(), at(59)), Some(confirmed(1)));
    }

    #[test]
    fn every_rule_is_checked_from_the_event_alone() {
        let spec = AuctionSpec {
            capacity: NonZeroU32::new(5).unwrap(),
            min_amount: 100,
            closes_at: Some(t0() + Duration::seconds(60)),
            max_wins_per_bidder: 2,
            policy: Policy::FirstN,
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
        assert_eq!(l.spec("a").unwrap().capacity.get(), 1);
        // A bid is known by the try that decided it, not by later copies.
        assert_eq!(l.decided_try("a", "b1"), Some(3.into()));
        assert_eq!(l.decided_try("x", "b1"), Some(5.into()));
        assert_eq!(l.decided_try("a", "b2"), None);
    }

    /// A random log: a few auctions (some never opened), bidders, bids,
    /// repeated bid ids, amounts around the minimum and times around the
    /// close.
    fn arb_log() -> impl Strategy<Value = Vec<LogEvent>> {
        let event = prop_oneof![
            1 => (0..4u8, 1..6u32, 0..3u64, 1..3u32).prop_map(|(a, cap, min, wins)| {
                open(&format!("a{a}"), AuctionSpec {
                    capacity: NonZeroU32::new(cap).unwrap(),
                    min_amount: min,
                    closes_at: Some(t0() + Duration::seconds(50)),
                    max_wins_per_bidder: wins,
                    policy: Policy::FirstN,
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
                        Some(spec) if wins(false) >= spec.capacity.get() => {
                            cancelled(CancelReason::CapacityFull)
                        }
                        Some(spec) if wins(true) >= spec.max_wins_per_bidder => {
                            cancelled(CancelReason::BidderLimit)
                        }
                        Some(_) => confirmed(wins(false) + 1),
                    }
                }
                _ => unreachable!("arb_log makes opens and tries only"),
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
                            prop_assert!(*rank <= spec.capacity.get());
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
                        restored.restore(&t.auction_id, &t.bid_id, &t.bidder_id, *v, seq.into())
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

/// The rest of the lifecycle: withdrawals (with the empty rollback and the
/// anti-hanging rule), ranked auctions, closes and raises.
#[cfg(test)]
mod lifecycle_tests {
    use super::*;
    use crate::wire::ClosedBy;
    use chrono::{DateTime, Duration, TimeZone, Utc};
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    fn open(capacity: u32, policy: Policy) -> LogEvent {
        LogEvent::Open(OpenEvent {
            auction_id: "a".into(),
            spec: AuctionSpec {
                closes_at: Some(t0() + Duration::seconds(100)),
                policy,
                ..AuctionSpec::with_capacity(capacity)
            },
            opened_at: t0(),
        })
    }

    fn try_(bid: &str, bidder: &str, amount: u64) -> LogEvent {
        LogEvent::Try(TryEvent {
            bid_id: bid.into(),
            auction_id: "a".into(),
            bidder_id: bidder.into(),
            amount,
            tried_at: t0() + Duration::seconds(1),
        })
    }

    fn withdraw(bid: &str, bidder: &str) -> LogEvent {
        LogEvent::Withdraw(WithdrawEvent {
            bid_id: bid.into(),
            auction_id: "a".into(),
            bidder_id: bidder.into(),
            withdrawn_at: t0() + Duration::seconds(2),
        })
    }

    fn raise(bid: &str, bidder: &str, expected: u64, amount: u64) -> LogEvent {
        LogEvent::Raise(RaiseEvent {
            bid_id: bid.into(),
            auction_id: "a".into(),
            bidder_id: bidder.into(),
            amount,
            expected_amount: expected,
            raised_at: t0() + Duration::seconds(3),
        })
    }

    fn close() -> LogEvent {
        LogEvent::Close(CloseEvent {
            auction_id: "a".into(),
            closed_at: t0() + Duration::seconds(100),
            by: ClosedBy::Request,
        })
    }

    /// Runs a log; returns every step and, per bid, its one final verdict.
    fn run(log: &[LogEvent]) -> (Vec<Step>, BTreeMap<String, Verdict>) {
        let mut ledger = Ledger::new();
        let mut steps = Vec::new();
        let mut verdicts = BTreeMap::new();
        for (event, seq) in log.iter().zip(1..) {
            let step = ledger.apply(event, seq);
            let own = match event {
                LogEvent::Try(t) => Some(t),
                _ => None,
            };
            for d in step.decisions(own, seq.into()) {
                let earlier = verdicts.insert(d.bid.bid_id.clone(), d.verdict);
                assert!(earlier.is_none(), "second outcome for {}", d.bid.bid_id);
            }
            steps.push(step);
        }
        (steps, verdicts)
    }

    fn withdrawn() -> Verdict {
        Verdict::Cancelled {
            reason: CancelReason::Withdrawn,
        }
    }

    fn result(step: &Step) -> CommandResult {
        step.command_result().expect("a withdraw or a raise")
    }

    fn refusal(step: &Step) -> Option<RefuseReason> {
        match result(step) {
            CommandResult::Refused { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Every order of a try, its duplicate, a withdraw and its duplicate
    /// (DTM's disorder test: the try times out, the cancel runs twice, the
    /// late try arrives), under both policies: the bid ends cancelled
    /// `withdrawn` unless its try came first in a `first_n` auction (then
    /// it was confirmed at once, and each withdraw is refused), and a try
    /// after a withdraw never holds a slot, not even for a moment.
    #[test]
    fn every_interleaving_of_try_withdraw_and_their_duplicates() {
        let events = [
            try_("b", "u", 10),
            try_("b", "u", 10),
            withdraw("b", "u"),
            withdraw("b", "u"),
        ];
        let mut orders = vec![];
        permutations(&mut (0..4).collect::<Vec<_>>(), 0, &mut orders);
        for policy in Policy::ALL {
            for order in &orders {
                let mut log = vec![open(1, policy)];
                log.extend(order.iter().map(|&i| events[i].clone()));
                let (steps, verdicts) = run(&log);
                let first_try = order.iter().position(|&i| i < 2).unwrap();
                let first_withdraw = order.iter().position(|&i| i >= 2).unwrap();
                let try_first = first_try < first_withdraw;
                let context = format!("{policy:?} {order:?}: {steps:?}");
                let confirmed_at_once = match policy {
                    Policy::FirstN => try_first,
                    Policy::TopAmount => false,
                };
                if confirmed_at_once {
                    assert_eq!(verdicts["b"], Verdict::Confirmed { rank: 1 }, "{context}");
                } else {
                    assert_eq!(verdicts["b"], withdrawn(), "{context}");
                }
                for (step, &i) in steps[1..].iter().zip(order) {
                    if i >= 2 {
                        let expected = match (try_first, policy) {
                            (true, Policy::FirstN) => refused(RefuseReason::AlreadyConfirmed),
                            (true, Policy::TopAmount) => CommandResult::Withdrawn {
                                empty_rollback: false,
                            },
                            (false, _) => CommandResult::Withdrawn {
                                empty_rollback: step_is_before_try(&steps, order, i),
                            },
                        };
                        assert_eq!(result(step), expected, "{context}");
                    }
                    if !try_first && i < 2 {
                        assert!(!matches!(step, Step::Held { .. }), "{context}");
                    }
                }
                // A tombstone is consumed by its try.
                let ledger_life = {
                    let mut l = Ledger::new();
                    for (e, seq) in log.iter().zip(1..) {
                        l.apply(e, seq);
                    }
                    l.life("a").unwrap()
                };
                assert!(ledger_life.withdrawn_early.is_empty(), "{context}");
                assert!(ledger_life.held.is_empty(), "{context}");
            }
        }
    }

    /// For the withdraw at `index` in `order`: whether no try preceded it.
    fn step_is_before_try(_steps: &[Step], order: &[usize], index: usize) -> bool {
        let at = order.iter().position(|&i| i == index).unwrap();
        !order[..at].iter().any(|&i| i < 2)
    }

    fn permutations(items: &mut Vec<usize>, k: usize, out: &mut Vec<Vec<usize>>) {
        if k == items.len() {
            out.push(items.clone());
            return;
        }
        for i in k..items.len() {
            items.swap(k, i);
            permutations(items, k + 1, out);
            items.swap(k, i);
        }
    }

    #[test]
    fn withdraws_by_others_and_of_decided_bids_are_refused() {
        let (steps, verdicts) = run(&[
            open(1, Policy::FirstN),
            try_("b1", "u1", 10),
            withdraw("b1", "u2"),
            withdraw("b1", "u1"),
            try_("b2", "u2", 10),
            withdraw("b2", "u2"),
            withdraw("b3", "u3"),
            withdraw("b3", "u4"),
            try_("b3", "u4", 10),
            try_("b3", "u3", 10),
            withdraw("b9", "u1"),
        ]);
        assert_eq!(refusal(&steps[2]), Some(RefuseReason::NotOwner));
        assert_eq!(refusal(&steps[3]), Some(RefuseReason::AlreadyConfirmed));
        assert_eq!(
            verdicts["b2"],
            Verdict::Cancelled {
                reason: CancelReason::CapacityFull
            }
        );
        assert_eq!(refusal(&steps[5]), Some(RefuseReason::AlreadyCancelled));
        assert_eq!(
            result(&steps[6]),
            CommandResult::Withdrawn {
                empty_rollback: true
            }
        );
        // Before its try, an id has no owner: each bidder's withdraw is an
        // empty rollback that cancels that bidder's try alone.
        assert_eq!(
            result(&steps[7]),
            CommandResult::Withdrawn {
                empty_rollback: true
            }
        );
        assert_eq!(verdicts["b3"], withdrawn());
        assert_eq!(steps[9], Step::Duplicate);
        assert!(!verdicts.contains_key("b9"));
    }

    #[test]
    fn top_amount_holds_the_n_highest_and_confirms_them_at_close() {
        let (steps, verdicts) = run(&[
            open(2, Policy::TopAmount),
            try_("b1", "u1", 10),
            try_("b2", "u2", 20),
            try_("b3", "u3", 10), // ties the lowest holder: the earlier try keeps it
            try_("b4", "u4", 15), // pushes b1 out
            try_("b5", "u5", 30), // pushes b4 out
            close(),
            try_("b6", "u6", 99),
            close(),
        ]);
        assert!(matches!(steps[1], Step::Held { displaced: None }));
        assert_eq!(
            steps[3],
            Step::Decided(Verdict::Cancelled {
                reason: CancelReason::Outbid
            })
        );
        let Step::Held { displaced: Some(d) } = &steps[4] else {
            panic!("{:?}", steps[4])
        };
        assert_eq!((d.bid.bid_id.as_str(), d.at), ("b1", 2.into()));
        let outbid = Verdict::Cancelled {
            reason: CancelReason::Outbid,
        };
        assert_eq!(verdicts["b1"], outbid);
        assert_eq!(verdicts["b4"], outbid);
        assert_eq!(verdicts["b5"], Verdict::Confirmed { rank: 1 });
        assert_eq!(verdicts["b2"], Verdict::Confirmed { rank: 2 });
        assert_eq!(
            verdicts["b6"],
            Verdict::Cancelled {
                reason: CancelReason::AuctionClosed
            }
        );
        assert_eq!(steps[8], Step::CloseIgnored);
    }

    #[test]
    fn a_withdrawal_frees_a_held_slot_for_a_lower_bid() {
        let (steps, verdicts) = run(&[
            open(1, Policy::TopAmount),
            try_("b1", "u1", 50),
            withdraw("b1", "u1"),
            try_("b2", "u2", 5),
            close(),
        ]);
        assert_eq!(
            result(&steps[2]),
            CommandResult::Withdrawn {
                empty_rollback: false
            }
        );
        assert_eq!(verdicts["b1"], withdrawn());
        assert_eq!(verdicts["b2"], Verdict::Confirmed { rank: 1 });
    }

    #[test]
    fn of_two_raises_of_one_bid_the_first_applies_and_the_second_conflicts() {
        let (steps, verdicts) = run(&[
            open(2, Policy::TopAmount),
            try_("b1", "u1", 10),
            try_("b2", "u2", 20),
            raise("b1", "u1", 10, 30),
            raise("b1", "u1", 10, 25),
            raise("b1", "u2", 30, 40),
            raise("b1", "u1", 30, 30),
            raise("b9", "u1", 0, 30),
            close(),
            raise("b1", "u1", 30, 50),
        ]);
        assert_eq!(result(&steps[3]), CommandResult::Raised { amount: 30 });
        assert_eq!(
            result(&steps[4]),
            CommandResult::Refused {
                reason: RefuseReason::Conflict,
                current_amount: Some(30)
            }
        );
        assert_eq!(refusal(&steps[5]), Some(RefuseReason::NotOwner));
        assert_eq!(refusal(&steps[6]), Some(RefuseReason::NotHigher));
        assert_eq!(refusal(&steps[7]), Some(RefuseReason::UnknownBid));
        assert_eq!(refusal(&steps[9]), Some(RefuseReason::AlreadyConfirmed));
        // The raise moved b1 to the top.
        assert_eq!(verdicts["b1"], Verdict::Confirmed { rank: 1 });
        assert_eq!(verdicts["b2"], Verdict::Confirmed { rank: 2 });
    }

    #[test]
    fn a_raise_lifts_a_bid_above_the_ones_that_would_have_displaced_it() {
        // Capacity 2: b1 (10) is the lowest holder. Raised to 40, it is no
        // longer the one a new 25 pushes out; b2 is.
        let (_, verdicts) = run(&[
            open(2, Policy::TopAmount),
            try_("b1", "u1", 10),
            try_("b2", "u2", 20),
            raise("b1", "u1", 10, 40),
            try_("b3", "u3", 25),
            close(),
        ]);
        assert_eq!(
            verdicts["b2"],
            Verdict::Cancelled {
                reason: CancelReason::Outbid
            }
        );
        assert_eq!(verdicts["b1"], Verdict::Confirmed { rank: 1 });
        assert_eq!(verdicts["b3"], Verdict::Confirmed { rank: 2 });
    }

    /// A withdraw or a raise, like a try, is late by the time the log
    /// stored it: stamped before `closes_at` by a slow gateway clock and
    /// stored after it, each is refused `auction_closed`; stamped after it
    /// by a fast clock and stored before it, each applies.
    #[test]
    fn withdraws_and_raises_are_late_by_the_logs_clock() {
        let at = |secs| t0() + Duration::seconds(secs);
        let entry = |e: LogEvent| LogEntry::Event(e);
        let stamped = |mut e: LogEvent, secs| {
            match &mut e {
                LogEvent::Withdraw(w) => w.withdrawn_at = at(secs),
                LogEvent::Raise(r) => r.raised_at = at(secs),
                _ => unreachable!(),
            }
            entry(e)
        };
        let held = || {
            let mut l = Ledger::new();
            l.apply_entry(&entry(open(2, Policy::TopAmount)), 1.into(), at(0));
            l.apply_entry(&entry(try_("b1", "u1", 10)), 2.into(), at(1));
            l
        };
        let slow_withdraw = stamped(withdraw("b1", "u1"), 90);
        let step = held()
            .apply_entry(&slow_withdraw, 3.into(), at(101))
            .unwrap();
        assert_eq!(refusal(&step), Some(RefuseReason::AuctionClosed));
        let slow_raise = stamped(raise("b1", "u1", 10, 20), 90);
        let step = held().apply_entry(&slow_raise, 3.into(), at(101)).unwrap();
        assert_eq!(refusal(&step), Some(RefuseReason::AuctionClosed));

        let fast_withdraw = stamped(withdraw("b1", "u1"), 110);
        let step = held()
            .apply_entry(&fast_withdraw, 3.into(), at(99))
            .unwrap();
        assert_eq!(refusal(&step), None, "{step:?}");
        let fast_raise = stamped(raise("b1", "u1", 10, 20), 110);
        let step = held().apply_entry(&fast_raise, 3.into(), at(99)).unwrap();
        assert_eq!(refusal(&step), None, "{step:?}");
    }

    #[test]
    fn raises_on_first_n_auctions_and_late_raises_are_refused() {
        let (steps, _) = run(&[
            open(1, Policy::FirstN),
            try_("b1", "u1", 10),
            raise("b1", "u1", 10, 20),
        ]);
        assert_eq!(refusal(&steps[2]), Some(RefuseReason::NotRanked));
        let mut late = raise("b1", "u1", 10, 20);
        if let LogEvent::Raise(r) = &mut late {
            r.raised_at = t0() + Duration::seconds(100);
        }
        let (steps, _) = run(&[open(1, Policy::TopAmount), try_("b1", "u1", 10), late]);
        assert_eq!(refusal(&steps[2]), Some(RefuseReason::AuctionClosed));
    }

    #[test]
    fn life_round_trips_through_restore() {
        let log = [
            open(2, Policy::TopAmount),
            try_("b1", "u1", 10),
            try_("b2", "u2", 20),
            withdraw("b7", "u7"),
            raise("b1", "u1", 10, 15),
            try_("b3", "u3", 5),
        ];
        let mut original = Ledger::new();
        for (e, seq) in log.iter().zip(1..) {
            original.apply(e, seq);
        }
        let mut restored = Ledger::new();
        restored.apply(&log[0], 1);
        restored.restore(
            "a",
            "b3",
            "u3",
            Verdict::Cancelled {
                reason: CancelReason::Outbid,
            },
            6.into(),
        );
        restored.restore_life("a", original.life("a").unwrap());
        assert_eq!(restored.life("a"), original.life("a"));
        let rest = [try_("b7", "u7", 99), try_("b4", "u4", 12), close()];
        for (e, seq) in rest.iter().zip(7..) {
            assert_eq!(restored.apply(e, seq), original.apply(e, seq), "{e:?}");
        }
    }

    /// Held bids with distinct try order, and raises on different bids.
    fn standings(raises: &[(usize, u64)], order: &[usize]) -> BTreeMap<String, Verdict> {
        let mut log = vec![open(3, Policy::TopAmount)];
        for b in 0..5 {
            log.push(try_(&format!("b{b}"), &format!("u{b}"), 10 + b as u64));
        }
        let mut ledger = Ledger::new();
        for (e, seq) in log.iter().zip(1..) {
            ledger.apply(e, seq);
        }
        let mut seq = log.len() as u64 + 1;
        let mut verdicts = BTreeMap::new();
        for &i in order {
            let (b, by) = raises[i];
            // Each bidder raises its own bid by `by`, from whatever it is now.
            let current = ledger
                .life("a")
                .unwrap()
                .held
                .iter()
                .find(|h| h.bid.bid_id == format!("b{b}"))
                .map(|h| h.bid.amount);
            if let Some(current) = current {
                ledger.apply(
                    &raise(&format!("b{b}"), &format!("u{b}"), current, current + by),
                    seq,
                );
            }
            seq += 1;
        }
        let step = ledger.apply(&close(), seq);
        for d in step.decisions(None, seq.into()) {
            verdicts.insert(d.bid.bid_id, d.verdict);
        }
        verdicts
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Raises of different bids commute: any order of the same raises
        /// gives the same final standings.
        #[test]
        fn raises_of_different_bids_commute(
            by in proptest::collection::vec(1..50u64, 5),
            order in Just((0..5usize).collect::<Vec<_>>()).prop_shuffle(),
        ) {
            // One raise per bid (b0..b4); only the held ones apply.
            let raises: Vec<(usize, u64)> = by.iter().copied().enumerate().collect();
            let in_order: Vec<usize> = (0..5).collect();
            prop_assert_eq!(standings(&raises, &order), standings(&raises, &in_order));
        }
    }

    /// A random lifecycle log: two auctions (either policy), tries,
    /// withdraws (some before their try), raises and closes, over few bid
    /// ids and bidders so that they collide.
    fn arb_lifecycle_log() -> impl Strategy<Value = Vec<LogEvent>> {
        let auction = || prop_oneof![Just("a"), Just("c")];
        let open_event = (
            auction(),
            1..4u32,
            proptest::sample::select(Policy::ALL.to_vec()),
            1..3u32,
        )
            .prop_map(|(a, cap, policy, wins)| {
                LogEvent::Open(OpenEvent {
                    auction_id: a.into(),
                    spec: AuctionSpec {
                        capacity: std::num::NonZeroU32::new(cap).unwrap(),
                        min_amount: 2,
                        closes_at: Some(t0() + Duration::seconds(50)),
                        max_wins_per_bidder: wins,
                        policy,
                    },
                    opened_at: t0(),
                })
            });
        let at = |s: i64| t0() + Duration::seconds(s);
        let event = prop_oneof![
            1 => open_event,
            6 => (auction(), 0..8u8, 0..4u8, 0..20u64, 0..60i64).prop_map(move |(a, b, u, amt, s)| {
                LogEvent::Try(TryEvent {
                    bid_id: format!("b{b}"), auction_id: a.into(), bidder_id: format!("u{u}"),
                    amount: amt, tried_at: at(s),
                })
            }),
            2 => (auction(), 0..8u8, 0..4u8, 0..60i64).prop_map(move |(a, b, u, s)| {
                LogEvent::Withdraw(WithdrawEvent {
                    bid_id: format!("b{b}"), auction_id: a.into(), bidder_id: format!("u{u}"),
                    withdrawn_at: at(s),
                })
            }),
            2 => (auction(), 0..8u8, 0..4u8, 0..20u64, 1..10u64, 0..60i64).prop_map(move |(a, b, u, exp, by, s)| {
                LogEvent::Raise(RaiseEvent {
                    bid_id: format!("b{b}"), auction_id: a.into(), bidder_id: format!("u{u}"),
                    amount: exp + by, expected_amount: exp, raised_at: at(s),
                })
            }),
            1 => auction().prop_map(move |a| LogEvent::Close(CloseEvent {
                auction_id: a.into(), closed_at: at(50), by: crate::wire::ClosedBy::Request,
            })),
        ];
        proptest::collection::vec(event, 0..120)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// What a snapshot keeps (decisions and each auction's life) is
        /// enough: a ledger rebuilt from it at any point of a lifecycle log
        /// goes on exactly like the original.
        #[test]
        fn a_restored_lifecycle_continues_like_the_original(log in arb_lifecycle_log(), cut in 0usize..120) {
            let cut = cut.min(log.len());
            let mut original = Ledger::new();
            let mut decided: Vec<(Decision, u64)> = Vec::new();
            let mut opens = Vec::new();
            for (e, seq) in log[..cut].iter().zip(1..) {
                let step = original.apply(e, seq);
                if let (LogEvent::Open(o), Step::Opened) = (e, &step) {
                    opens.push((seq, o.clone()));
                }
                let own = match e { LogEvent::Try(t) => Some(t), _ => None };
                decided.extend(step.decisions(own, seq.into()).into_iter().map(|d| (d, seq)));
            }
            // As `Snapshot::load` does: opens, decisions by try, lives.
            let mut restored = Ledger::new();
            decided.sort_by_key(|(d, _)| d.at);
            let mut opens = opens.into_iter().peekable();
            for (d, _) in &decided {
                while let Some((_, o)) = opens.next_if(|(open_seq, _)| *open_seq < d.at.seq) {
                    restored.open(&o);
                }
                restored.restore(&d.bid.auction_id, &d.bid.bid_id, &d.bid.bidder_id, d.verdict, d.at);
            }
            for (_, o) in opens {
                restored.open(&o);
            }
            for a in ["a", "c"] {
                if let Some(life) = original.life(a) {
                    restored.restore_life(a, life);
                }
            }
            for (e, seq) in log[cut..].iter().zip(cut as u64 + 1..) {
                prop_assert_eq!(restored.apply(e, seq), original.apply(e, seq), "event {}: {:?}", seq, e);
            }
        }

        /// The lifecycle's rules, checked on every random log: one outcome
        /// per bid; a try after its own withdraw never holds and is
        /// cancelled `withdrawn`; never more than N held or confirmed, nor
        /// more than a bidder's limit; a ranked close confirms by amount.
        #[test]
        fn lifecycle_rules_hold(log in arb_lifecycle_log()) {
            let mut ledger = Ledger::new();
            let mut outcome: HashMap<(String, String), Verdict> = HashMap::new();
            let mut withdrawn_first: HashSet<(String, String, String)> = HashSet::new();
            let mut tried: HashSet<(String, String)> = HashSet::new();
            let mut specs: HashMap<String, AuctionSpec> = HashMap::new();
            for (e, seq) in log.iter().zip(1..) {
                let step = ledger.apply(e, seq);
                match e {
                    LogEvent::Open(o) => { specs.entry(o.auction_id.clone()).or_insert_with(|| o.spec.clone()); }
                    // Before its try, a withdraw on an open auction is an
                    // empty rollback (refused only if the auction is not
                    // open yet, or closed).
                    LogEvent::Withdraw(w) if !tried.contains(&(w.auction_id.clone(), w.bid_id.clone())) => {
                        let open = ledger.fill(&w.auction_id).is_some_and(|f| !f.closed);
                        let rollback = step.command_result() == Some(CommandResult::Withdrawn { empty_rollback: true });
                        prop_assert_eq!(open, rollback, "{:?}: {:?}", w, step);
                        if rollback {
                            withdrawn_first.insert((w.auction_id.clone(), w.bid_id.clone(), w.bidder_id.clone()));
                        }
                    }
                    LogEvent::Try(t) => {
                        let key = (t.auction_id.clone(), t.bid_id.clone());
                        let fresh = tried.insert(key);
                        if fresh && specs.contains_key(&t.auction_id)
                            && withdrawn_first.contains(&(t.auction_id.clone(), t.bid_id.clone(), t.bidder_id.clone())) {
                            prop_assert_eq!(&step, &Step::Decided(Verdict::Cancelled { reason: CancelReason::Withdrawn }));
                        }
                    }
                    _ => {}
                }
                let own = match e { LogEvent::Try(t) => Some(t), _ => None };
                let decisions = step.decisions(own, seq.into());
                if let Step::Closed { confirmed } = &step {
                    let amounts: Vec<(Reverse<u64>, TryAt)> = confirmed.iter().map(|d| (Reverse(d.bid.amount), d.at)).collect();
                    let mut sorted = amounts.clone();
                    sorted.sort();
                    prop_assert_eq!(amounts, sorted, "a close confirms in rank order");
                }
                for d in decisions {
                    let key = (d.bid.auction_id.clone(), d.bid.bid_id.clone());
                    prop_assert!(outcome.insert(key, d.verdict).is_none(), "second outcome for {:?}", d);
                }
                for (a, spec) in &specs {
                    let fill = ledger.fill(a).unwrap();
                    prop_assert!(fill.held <= spec.capacity.get() && fill.confirmed <= spec.capacity.get());
                    if fill.closed {
                        prop_assert_eq!(fill.held, 0);
                    }
                    let life = ledger.life(a).unwrap();
                    let mut per_bidder: HashMap<&str, u32> = HashMap::new();
                    for h in &life.held {
                        *per_bidder.entry(&h.bid.bidder_id).or_default() += 1;
                    }
                    prop_assert!(per_bidder.values().all(|&n| n <= spec.max_wins_per_bidder));
                }
            }
            // Every try of an opened auction is decided or still held, and
            // a close leaves nothing held.
            for (a, b) in &tried {
                prop_assert!(ledger.decided_try(a, b).is_some(), "bid {} in {} lost", b, a);
            }
        }
    }
}
