//! The verifier's protocol for one partition, with no I/O: no NATS, no
//! SQLite, no clock. The driver (`mod.rs`) feeds it what happened (a chunk
//! of deliveries, a commit done, a batch's outcomes acked, a gateway's
//! question, the time) and does what it answers (ask the log about a gap,
//! commit this batch, publish these outcomes, record this position, ack
//! up to here, send this reply).
//!
//! The order it keeps, per batch of the log:
//! 1. decide every new entry with the [`Ledger`];
//! 2. commit the batch (decisions with their exact outcome bytes, and the
//!    last applied sequence);
//! 3. publish its outcomes, each with a deterministic message id, and its
//!    held notices;
//! 4. once every outcome is acked, record the batch as published, then
//!    terminate its poison entries and ack its deliveries.
//!
//! Batches finish in log order, so what is recorded as published only
//! moves forward, and nothing is acked that is not durably decided.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::core::{Decision, Ledger, Step, Verdict};
use crate::error::{Error, ErrorKind, Result};
use crate::snapshot::{Batch, Position, StoredOutcome};
use crate::wire::{
    timestamp, CloseEvent, ClosedBy, CommandResult, DecidedReply, HeldEvent, HeldKind, LogEntry,
    LogEvent, OutcomeEvent, OutcomeKind, Subjects, TriesReply, TryAt, TRIES_FORMAT,
};

/// What the protocol needs of one delivery of the log.
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    /// The entry's stream sequence.
    pub seq: u64,
    /// The consumer's count of deliveries: first deliveries are numbered
    /// one after another, so a skipped number went elsewhere.
    pub consumer_seq: u64,
    /// 1 for a first delivery, more for a redelivery.
    pub delivered: u64,
    pub subject: &'a str,
    pub payload: &'a [u8],
    /// When the log stored the entry.
    pub stored_at: DateTime<Utc>,
}

/// A delivery as the driver holds it: the protocol reads it, and hands it
/// back in [`Action::Ack`] and [`Action::Terminate`].
pub trait Delivered {
    fn delivery(&self) -> Delivery<'_>;
}

/// What the driver does for the protocol, in the order given. Those that
/// say so are answered with a call back into the protocol, whose actions
/// come next.
#[derive(Debug)]
pub enum Action<T> {
    /// Ask the log whether this partition has an entry in each gap (first
    /// sequence skipped, sequence delivered); fail (and start over from
    /// the snapshot) if one has. Then call [`Protocol::gaps_clear`].
    CheckGaps(Vec<(u64, u64)>),
    /// Fail unless this verifier still holds the partition's lease.
    CheckLease,
    /// Commit the batch to the snapshot in one transaction; then call
    /// [`Protocol::committed`]. `closes`: it closes an auction.
    Commit { batch: Arc<Batch>, closes: bool },
    /// Answer parked command requests: (reply subject, result, decided
    /// through).
    AnswerCommands(Vec<(String, Option<CommandResult>, u64)>),
    /// Answer gateways waiting for bids to be decided: (reply subject, the
    /// answer). Sent once the deciding batch is committed: the log holds
    /// the try, so a replay decides the same whatever happens next.
    AnswerDecided(Vec<(String, DecidedReply)>),
    /// Publish the batch's outcomes under the fence, except `skip` (already
    /// in the stream), without waiting: when every one is acked, call
    /// [`Protocol::outcomes_acked`] with the highest outcome-stream
    /// sequence. Batches are acked in the order they were published.
    Publish {
        batch: Arc<Batch>,
        skip: HashSet<(String, String)>,
    },
    /// Send `held` notices: notices, not records.
    SendHolds(Vec<HeldEvent>),
    /// These outcomes are in the stream: count them, and announce the
    /// auctions they filled and the `closed` ones to the gateways.
    /// `restart`: they are what a start republished, not a batch of
    /// deliveries (no fault point of a batch's life is on the way).
    Announce {
        batch: Arc<Batch>,
        closed: HashSet<String>,
        restart: bool,
    },
    /// Record in the snapshot that every outcome of a try up to `last_seq`
    /// is published, and the outcome stream's position; then call
    /// [`Protocol::recorded`]. `restart` as for `Announce`.
    Record {
        last_seq: u64,
        outcomes_seq: u64,
        restart: bool,
    },
    /// Terminate these deliveries (entries that are not valid events), so
    /// that they are never delivered again.
    Terminate(Vec<T>),
    /// Ack this delivery and every one before it.
    Ack(T),
}

/// One partition's verifier state between I/O steps.
pub struct Protocol<T> {
    /// The decision state, equal to the snapshot's after each commit.
    ledger: Ledger,
    /// Where the snapshot stands in the log and the outcome stream.
    position: Position,
    /// Outcomes found in the outcome stream for tries the snapshot has not
    /// applied: after a snapshot loss, these are reused, not published again.
    published: Published,
    /// The consumer sequence the next first delivery should have; any
    /// other means a delivery went elsewhere.
    next_delivery: u64,
    /// A chunk waiting for its gaps to be checked.
    checking: Option<Vec<T>>,
    /// A batch waiting for its commit.
    committing: Option<Box<Pending<T>>>,
    /// Batches committed and published, oldest first, waiting for their
    /// outcome acks.
    flights: VecDeque<Flight<T>>,
    /// The oldest batch, acked and waiting for its record.
    recording: Option<Flight<T>>,
    /// Gateways' command requests for log sequences not decided yet, with
    /// where to answer: answered as the batches that decide them commit.
    parked: Vec<(u64, String)>,
    /// Gateways waiting for a bid's decision: the try's log sequence, the
    /// bid, and where to answer.
    waiting: Vec<(u64, (String, String), String)>,
    /// Auctions whose deadline close this verifier is writing or wrote.
    closing: HashSet<String>,
}

/// A batch decided and not committed yet.
#[derive(Debug)]
struct Pending<T> {
    batch: Arc<Batch>,
    /// Decisions taken from the outcome stream: not published again.
    reused: HashSet<(String, String)>,
    /// `held` notices, sent once the batch is committed.
    holds: Vec<HeldEvent>,
    /// Auctions this batch closed, to announce.
    closed: HashSet<String>,
    /// Deliveries of entries that are not valid events: terminated once
    /// the batch is recorded.
    poison: Vec<T>,
    /// The batch's last delivery: acking it acks the whole batch.
    last: T,
}

/// A batch being decided, entry by entry.
struct Work {
    batch: Batch,
    /// Decisions taken from the outcome stream: not published again.
    reused: HashSet<(String, String)>,
    /// `held` notices, sent once the batch is committed.
    holds: Vec<HeldEvent>,
    /// Auctions this batch closed, to announce.
    closed: HashSet<String>,
}

/// A batch committed and published.
#[derive(Debug)]
struct Flight<T> {
    batch: Arc<Batch>,
    closed: HashSet<String>,
    poison: Vec<T>,
    /// `None` for the outcomes a restart republishes: nothing to ack.
    last: Option<T>,
    /// The first outcome found in the stream and not yet matched to a try,
    /// as of this batch: the outcome-stream position to record must stay
    /// below it even when later batches have matched it already.
    first_unmatched: Option<u64>,
}

/// What a gateway's command request gets.
#[derive(Debug, PartialEq, Eq)]
pub enum CommandAnswer {
    /// Not decided yet: answered when it is.
    Parked,
    /// Decided: read its result from the snapshot.
    Read { through: u64 },
    /// Not decided, and too many requests wait: "not yet", ask again.
    NotYet { through: u64 },
}

/// Most command requests parked at once.
pub const MAX_PARKED: usize = 100_000;

/// Bugs kept in the code on purpose, off unless the `mutants` feature is
/// on and a test picks one: the simulator must find each (see
/// `tests/simulation/`), or it has stopped looking where it should.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mutant {
    /// Ack a batch's tries once committed, before its outcomes are stored.
    AckBeforePublish = 1,
    /// Never ask the log about a gap in the deliveries.
    IgnoreGaps = 2,
    /// On a restart, do not look for outcomes already in the stream.
    SkipOutcomeLookup = 3,
    /// Publish outcomes without the fence's expectation headers
    /// (`log/fence.rs`), so that a superseded verifier's get in.
    DropFenceHeader = 4,
}

impl Mutant {
    pub const ALL: [Mutant; 4] = [
        Mutant::AckBeforePublish,
        Mutant::IgnoreGaps,
        Mutant::SkipOutcomeLookup,
        Mutant::DropFenceHeader,
    ];
}

#[cfg(feature = "mutants")]
thread_local! {
    /// Per thread: a simulation picks its mutant, and the service, on
    /// other threads, never sees it.
    static ACTIVE: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Turns one mutant on (or none) for protocols driven on this thread.
#[cfg(feature = "mutants")]
pub fn set_mutant(m: Option<Mutant>) {
    ACTIVE.with(|a| a.set(m.map_or(0, |m| m as u8)));
}

/// Whether mutant `m` is on for this thread.
#[cfg(feature = "mutants")]
pub(crate) fn mutant(m: Mutant) -> bool {
    ACTIVE.with(|a| a.get() == m as u8)
}

#[cfg(not(feature = "mutants"))]
#[inline(always)]
pub(crate) fn mutant(_: Mutant) -> bool {
    false
}

impl<T: Delivered + Clone> Protocol<T> {
    /// A protocol resuming from a loaded snapshot: its ledger and
    /// position, the decisions it holds that may not be published
    /// (`unpublished`), and the outcomes found in the stream past its
    /// position (`found`). Returns the actions that publish what is
    /// missing and record the snapshot as caught up; the driver runs them
    /// before taking deliveries.
    pub fn recover(
        ledger: Ledger,
        position: Position,
        unpublished: Vec<StoredOutcome>,
        mut found: Published,
    ) -> (Protocol<T>, Vec<Action<T>>) {
        if mutant(Mutant::SkipOutcomeLookup) {
            found = Published::through(0);
        }
        // JetStream's de-duplication only covers a recent window: what the
        // stream already has is not published again.
        let skip: HashSet<(String, String)> = unpublished
            .iter()
            .map(|d| key(&d.outcome))
            .filter(|k| found.take(k).is_some())
            .collect();
        if !unpublished.is_empty() {
            tracing::info!(
                decided = unpublished.len(),
                already_published = skip.len(),
                "publishing outcomes decided before a stop"
            );
        }
        // Outcomes of tries the snapshot has applied are settled; the rest
        // will be matched as the log is decided again.
        found.forget_decided(&ledger);
        if !found.is_empty() {
            tracing::warn!(
                published = found.len(),
                "the snapshot is behind the outcome stream; deciding the log again from sequence {}",
                position.last_seq + 1
            );
        }
        // A stop between a close's commit and its notice would leave the
        // gateways taking bids for a closed auction: tell them again.
        let closed = ledger.closed_auctions().into_iter().collect();
        let batch = Arc::new(Batch {
            decisions: unpublished,
            last_seq: position.last_seq,
            ..Batch::default()
        });
        let mut protocol = Protocol {
            ledger,
            position,
            published: found,
            next_delivery: 0,
            checking: None,
            committing: None,
            flights: VecDeque::new(),
            recording: None,
            parked: Vec::new(),
            waiting: Vec::new(),
            closing: HashSet::new(),
        };
        protocol.flights.push_back(Flight {
            batch: batch.clone(),
            closed,
            poison: Vec::new(),
            last: None,
            first_unmatched: protocol.published.first_unmatched(),
        });
        (protocol, vec![Action::Publish { batch, skip }])
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn position(&self) -> Position {
        self.position
    }

    /// Batches published and not yet recorded.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// The consumer's next delivery number, from the consumer's info.
    pub fn expect_delivery(&mut self, consumer_seq: u64) {
        self.next_delivery = consumer_seq;
    }

    /// A chunk of deliveries arrived.
    pub fn deliveries(&mut self, chunk: Vec<T>) -> Vec<Action<T>> {
        debug_assert!(self.checking.is_none() && self.committing.is_none());
        let gaps = self.gaps(&chunk);
        self.checking = Some(chunk);
        vec![Action::CheckGaps(gaps)]
    }

    /// The gaps in a chunk that the log must be asked about before the
    /// chunk is decided: (first sequence skipped, sequence delivered).
    /// Other partitions' entries leave gaps in the sequence; only a
    /// delivery that went elsewhere (to a superseded puller) leaves a gap
    /// in the consumer's count, and only then is the log asked whether
    /// this partition has an entry in the gap.
    fn gaps(&self, chunk: &[T]) -> Vec<(u64, u64)> {
        if mutant(Mutant::IgnoreGaps) {
            return Vec::new();
        }
        let mut last = self.position.last_seq;
        let mut next = self.next_delivery;
        let mut gaps = Vec::new();
        for d in chunk.iter().map(Delivered::delivery) {
            if d.seq <= last {
                continue;
            }
            let counted = d.delivered == 1 && d.consumer_seq == next;
            if d.delivered == 1 {
                next = d.consumer_seq + 1;
            }
            if d.seq > last + 1 && !counted {
                gaps.push((last + 1, d.seq));
            }
            last = d.seq;
        }
        gaps
    }

    /// The chunk's gaps hold nothing of this partition: decide it, with
    /// decisions stamped `now`. An error is an integrity failure: a
    /// replayed decision that differs from the published one.
    pub fn gaps_clear(
        &mut self,
        subjects: &Subjects,
        now: DateTime<Utc>,
    ) -> Result<Vec<Action<T>>> {
        let chunk = self.checking.take().expect("a chunk is being checked");
        let mut work = Work {
            batch: Batch {
                last_seq: self.position.last_seq,
                ..Batch::default()
            },
            reused: HashSet::new(),
            holds: Vec::new(),
            closed: HashSet::new(),
        };
        let mut poison = Vec::new();
        for (index, d) in chunk.iter().map(Delivered::delivery).enumerate() {
            let seq = d.seq;
            let batch = &mut work.batch;
            if seq <= batch.last_seq {
                continue; // redelivered: already in the snapshot
            }
            if d.delivered == 1 {
                self.next_delivery = d.consumer_seq + 1;
            }
            batch.last_seq = seq;
            let entries = LogEntry::read(subjects, d.subject, d.payload, d.stored_at);
            if entries
                .iter()
                .any(|e| matches!(e, LogEntry::InvalidTry(_) | LogEntry::Unreadable(_)))
            {
                poison.push(index);
            }
            for (i, entry) in entries.into_iter().enumerate() {
                let at = TryAt::new(seq, u32::try_from(i).unwrap_or(u32::MAX));
                self.apply_one(entry, at, d, now, &mut work)?;
            }
        }
        let Work {
            mut batch,
            reused,
            holds,
            closed,
        } = work;
        for auction_id in self.ledger.take_changed() {
            if let Some(life) = self.ledger.life(&auction_id) {
                batch.lives.push((auction_id, life));
            }
        }
        batch.tries = self.ledger.take_counted();
        let mut chunk = chunk;
        let Some(last) = chunk.pop() else {
            return Ok(Vec::new());
        };
        if batch.last_seq <= self.position.last_seq {
            // All redelivered. An ack covers every delivery up to this one,
            // so it is sent only when their outcomes are all published;
            // otherwise the ack of the batch in flight will cover them.
            return Ok(
                match last.delivery().seq <= self.position.published_through {
                    true => vec![Action::Ack(last)],
                    false => Vec::new(),
                },
            );
        }
        let poison = poison
            .iter()
            .map(|&i| chunk.get(i).unwrap_or(&last).clone())
            .collect();
        let batch = Arc::new(batch);
        let closes = !closed.is_empty();
        self.committing = Some(Box::new(Pending {
            batch: batch.clone(),
            reused,
            holds,
            closed,
            poison,
            last,
        }));
        Ok(vec![Action::CheckLease, Action::Commit { batch, closes }])
    }

    /// Decides one entry of delivery `d`, at `at`, into `work`.
    fn apply_one(
        &mut self,
        entry: LogEntry,
        at: TryAt,
        d: Delivery<'_>,
        now: DateTime<Utc>,
        work: &mut Work,
    ) -> Result<()> {
        let seq = at.seq;
        if let LogEntry::NewerFormat(v) = entry {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "log entry {seq} on {:?} is in format {v}, and this allot reads formats up to {TRIES_FORMAT}: upgrade every allot serve to a version that reads it",
                    d.subject
                ),
            ));
        }
        let Some(step) = self.ledger.apply_entry(&entry, at, d.stored_at) else {
            if let LogEntry::Unreadable(problem) = &entry {
                tracing::warn!(
                    %at,
                    subject = d.subject,
                    problem,
                    "skipping a log entry with nothing to decide"
                );
            }
            return Ok(());
        };
        let (own_try, entry) = match entry {
            LogEntry::Event(LogEvent::Try(t)) | LogEntry::InvalidTry(t) => (Some(t), None),
            other => (None, Some(other)),
        };
        if let Some(hold) = step.hold(own_try.as_ref(), at) {
            work.holds.push(HeldEvent {
                kind: HeldKind::Held,
                bid_id: hold.bid.bid_id,
                auction_id: hold.bid.auction_id,
                bidder_id: hold.bid.bidder_id,
                amount: hold.bid.amount,
                try_seq: hold.try_seq,
                try_index: hold.try_index,
                held_seq: seq,
            });
        }
        // The common case, a try decided at once, takes the try itself
        // rather than a copy.
        let decisions = match (&step, own_try) {
            (Step::Decided(verdict), Some(bid)) => vec![Decision {
                at,
                bid,
                verdict: *verdict,
            }],
            _ => step.decisions(None, at),
        };
        for d in decisions {
            let key = (d.bid.auction_id.clone(), d.bid.bid_id.clone());
            let decision = match self.published.take(&key) {
                Some(published) => {
                    work.reused.insert(key);
                    reuse(published, d.verdict)?
                }
                None => decide(d, now),
            };
            work.batch.decisions.push(decision);
        }
        if let (Some(result), Some(LogEntry::Event(e))) = (step.command_result(), &entry) {
            work.batch
                .commands
                .push((seq, e.auction_id().to_string(), result));
        }
        match (entry, step) {
            (Some(LogEntry::Event(LogEvent::Open(open))), Step::Opened) => {
                work.batch.opens.push((seq, open))
            }
            (Some(LogEntry::Event(LogEvent::Close(close))), Step::Closed { .. }) => {
                work.closed.insert(close.auction_id);
            }
            (_, Step::Duplicate) => {
                tracing::info!(%at, "try for an already decided bid; it keeps its outcome")
            }
            _ => {}
        }
        Ok(())
    }

    /// The batch is committed: it is the snapshot's position now.
    pub fn committed(&mut self) -> Vec<Action<T>> {
        let pending = *self.committing.take().expect("a batch is being committed");
        self.position.last_seq = pending.batch.last_seq;
        let mut actions = Vec::new();
        let answers = self.answer_parked(&pending.batch.commands);
        if !answers.is_empty() {
            actions.push(Action::AnswerCommands(answers));
        }
        let decided = self.answer_waiting(&pending.batch);
        if !decided.is_empty() {
            actions.push(Action::AnswerDecided(decided));
        }
        let mut flight = Flight {
            batch: pending.batch.clone(),
            closed: pending.closed,
            poison: pending.poison,
            last: Some(pending.last),
            first_unmatched: self.published.first_unmatched(),
        };
        if mutant(Mutant::AckBeforePublish) {
            actions.extend(flight.last.take().map(Action::Ack));
        }
        self.flights.push_back(flight);
        actions.push(Action::Publish {
            batch: pending.batch,
            skip: pending.reused,
        });
        if !pending.holds.is_empty() {
            actions.push(Action::SendHolds(pending.holds));
        }
        actions
    }

    /// Every outcome of the oldest batch in flight is acked, the highest
    /// at outcome-stream sequence `acked`.
    pub fn outcomes_acked(&mut self, acked: u64) -> Vec<Action<T>> {
        debug_assert!(self.recording.is_none());
        let flight = self.flights.pop_front().expect("a batch is in flight");
        self.published.stored_through(acked);
        let outcomes_seq = self.published.safe_position(flight.first_unmatched);
        let restart = flight.last.is_none();
        let actions = vec![
            Action::Announce {
                batch: flight.batch.clone(),
                closed: flight.closed.clone(),
                restart,
            },
            Action::Record {
                last_seq: flight.batch.last_seq,
                outcomes_seq,
                restart,
            },
        ];
        self.recording = Some(flight);
        actions
    }

    /// The oldest batch is recorded as published: its deliveries may be
    /// acked now.
    pub fn recorded(&mut self, last_seq: u64, outcomes_seq: u64) -> Vec<Action<T>> {
        let flight = self.recording.take().expect("a batch is being recorded");
        self.position.published_through = last_seq;
        self.position.outcomes_seq = outcomes_seq;
        let mut actions = Vec::new();
        // Terminated only now: a `+TERM` under the consumer's ack-all
        // policy may count as an ack of everything before it.
        if !flight.poison.is_empty() {
            actions.push(Action::Terminate(flight.poison));
        }
        if let Some(last) = flight.last {
            actions.push(Action::Ack(last));
        }
        actions
    }
    /// How many tries each auction (or `auction_id`) has in the log, up to
    /// the last entry applied to the ledger (committed or being
    /// committed): what the status adds the later entries to.
    pub fn tries(&self, auction_id: Option<&str>) -> TriesReply {
        let through = self
            .committing
            .as_ref()
            .map_or(self.position.last_seq, |p| p.batch.last_seq);
        let tries = match auction_id {
            Some(a) => [(a.to_string(), self.ledger.tries(a))]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect(),
            None => self
                .ledger
                .all_tries()
                .map(|(a, n)| (a.to_string(), n))
                .collect(),
        };
        TriesReply { through, tries }
    }

    /// A gateway asks which try decided a bid: (that try, decided through).
    pub fn decided(&self, auction_id: &str, bid_id: &str) -> (Option<TryAt>, u64) {
        (
            self.ledger.decided_try(auction_id, bid_id),
            self.position.last_seq,
        )
    }

    /// A gateway waits for the decision of the bid whose try is at log
    /// sequence `try_seq`: parked (`None`) until a batch through it is
    /// committed, or, when it is decided already or too many wait, the
    /// answer to look up now, as for [`Self::decided`].
    pub fn decided_wait(
        &mut self,
        auction_id: &str,
        bid_id: &str,
        try_seq: u64,
        reply_to: String,
    ) -> Option<(Option<TryAt>, u64)> {
        if try_seq <= self.position.last_seq || self.waiting.len() >= MAX_PARKED {
            return Some(self.decided(auction_id, bid_id));
        }
        let key = (auction_id.to_string(), bid_id.to_string());
        self.waiting.push((try_seq, key, reply_to));
        None
    }

    /// The waiting gateways that the batch just committed answers: with
    /// the bid's outcome when this batch decided it (a held bid of a ranked
    /// auction is decided only at its close, and a bid id decided earlier
    /// keeps that decision, read from the snapshot by asking again).
    fn answer_waiting(&mut self, batch: &Batch) -> Vec<(String, DecidedReply)> {
        let through = self.position.last_seq;
        if self.waiting.is_empty() {
            return Vec::new();
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(seq, _, _)| *seq <= through);
        self.waiting = waiting;
        ready
            .into_iter()
            .map(|(_, (auction_id, bid_id), reply_to)| {
                let outcome = batch
                    .decisions
                    .iter()
                    .map(|d| &d.outcome)
                    .find(|o| o.auction_id == auction_id && o.bid_id == bid_id)
                    .cloned();
                let decided = self.ledger.decided_try(&auction_id, &bid_id);
                let reply = DecidedReply {
                    try_seq: decided.map(|at| at.seq),
                    try_index: decided.map_or(0, |at| at.index),
                    through,
                    outcome,
                };
                (reply_to, reply)
            })
            .collect()
    }

    /// A gateway asks what the withdraw or raise at `seq` did.
    pub fn command(&mut self, seq: u64, reply_to: Option<String>) -> CommandAnswer {
        let through = self.position.last_seq;
        if seq <= through {
            return CommandAnswer::Read { through };
        }
        match reply_to {
            Some(reply_to) if self.parked.len() < MAX_PARKED => {
                self.parked.push((seq, reply_to));
                CommandAnswer::Parked
            }
            _ => CommandAnswer::NotYet { through },
        }
    }

    /// The parked command requests that the batch just committed decided.
    fn answer_parked(
        &mut self,
        commands: &[(u64, String, CommandResult)],
    ) -> Vec<(String, Option<CommandResult>, u64)> {
        let through = self.position.last_seq;
        if self.parked.is_empty() {
            return Vec::new();
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(seq, _)| *seq <= through);
        self.parked = waiting;
        ready
            .into_iter()
            .map(|(seq, reply_to)| {
                let result = commands
                    .iter()
                    .find(|(s, _, _)| *s == seq)
                    .map(|(_, _, r)| *r);
                (reply_to, result, through)
            })
            .collect()
    }

    /// The close events to write for auctions past their `closes_at` at
    /// `now`, each once (until [`Self::close_failed`]).
    pub fn due_closes(&mut self, now: DateTime<Utc>) -> Vec<CloseEvent> {
        self.ledger
            .due(now)
            .into_iter()
            .filter(|(auction_id, _)| self.closing.insert(auction_id.clone()))
            .map(|(auction_id, closes_at)| CloseEvent {
                auction_id,
                closed_at: closes_at,
                by: ClosedBy::Deadline,
            })
            .collect()
    }

    /// A deadline close could not be written: tried again at the next check.
    pub fn close_failed(&mut self, auction_id: &str) {
        self.closing.remove(auction_id);
    }
}

/// Outcomes in the outcome stream that the snapshot does not account for,
/// and how far the outcome stream can be recorded as accounted for.
#[derive(Debug, Default)]
pub struct Published {
    /// By bid: the outcome and its outcome-stream sequence.
    by_bid: HashMap<(String, String), (u64, StoredOutcome)>,
    /// Outcome-stream sequences of the outcomes not matched to a try yet,
    /// with how many there are at each (an entry holds several).
    unmatched: BTreeMap<u64, usize>,
    /// Highest outcome-stream sequence known to be stored.
    high: u64,
}

impl Published {
    /// Nothing found yet, with the outcome stream known through `high`.
    pub fn through(high: u64) -> Published {
        Published {
            high,
            ..Published::default()
        }
    }

    /// An outcome found at outcome-stream sequence `seq`; a later one for
    /// the same bid replaces it.
    pub fn found(&mut self, seq: u64, stored: StoredOutcome) {
        *self.unmatched.entry(seq).or_default() += 1;
        if let Some((earlier, _)) = self.by_bid.insert(key(&stored.outcome), (seq, stored)) {
            matched(&mut self.unmatched, earlier);
        }
    }

    /// The published outcome of a bid, if one was found; it is then matched.
    pub fn take(&mut self, key: &(String, String)) -> Option<StoredOutcome> {
        let (seq, stored) = self.by_bid.remove(key)?;
        matched(&mut self.unmatched, seq);
        Some(stored)
    }

    /// Drops the outcomes of bids the snapshot has decided. (Not "of
    /// tries up to its position": a held try of a ranked auction is decided
    /// by a later close.)
    pub fn forget_decided(&mut self, ledger: &Ledger) {
        let unmatched = &mut self.unmatched;
        self.by_bid.retain(|_, (seq, stored)| {
            let o = &stored.outcome;
            let keep = !ledger.is_decided(&o.auction_id, &o.bid_id);
            if !keep {
                matched(unmatched, *seq);
            }
            keep
        });
    }

    /// Notes that the outcome stream holds everything up to `seq`.
    pub fn stored_through(&mut self, seq: u64) {
        self.high = self.high.max(seq);
    }

    /// The first found outcome not yet matched to its try.
    pub fn first_unmatched(&self) -> Option<u64> {
        self.unmatched.keys().next().copied()
    }

    /// The outcome-stream position that may be recorded: below every found
    /// outcome that was not matched to its try when the batch being
    /// recorded was decided (`first_unmatched`, from [`Self::first_unmatched`]
    /// then), so that a restart in the middle of a rebuild finds them again
    /// instead of publishing them twice.
    pub fn safe_position(&self, first_unmatched: Option<u64>) -> u64 {
        match first_unmatched {
            Some(first) => first - 1,
            None => self.high,
        }
    }

    /// How many found outcomes are not matched to a try.
    pub fn len(&self) -> usize {
        self.by_bid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_bid.is_empty()
    }
}

/// One found outcome at `seq` is matched (or replaced).
fn matched(unmatched: &mut BTreeMap<u64, usize>, seq: u64) {
    if let Some(left) = unmatched.get_mut(&seq) {
        *left -= 1;
        if *left == 0 {
            unmatched.remove(&seq);
        }
    }
}

/// The key outcomes are matched by: (auction, bid).
pub fn key(o: &OutcomeEvent) -> (String, String) {
    (o.auction_id.clone(), o.bid_id.clone())
}

/// The outcome event for a fresh decision, decided at `now`.
fn decide(d: Decision, now: DateTime<Utc>) -> StoredOutcome {
    let (kind, rank, reason) = match d.verdict {
        Verdict::Confirmed { rank } => (OutcomeKind::Confirmed, Some(rank), None),
        Verdict::Cancelled { reason } => (OutcomeKind::Cancelled, None, Some(reason)),
    };
    let t = d.bid;
    let outcome = OutcomeEvent {
        kind,
        bid_id: t.bid_id,
        auction_id: t.auction_id,
        bidder_id: t.bidder_id,
        amount: t.amount,
        try_seq: d.at.seq,
        try_index: d.at.index,
        tried_at: t.tried_at,
        decided_at: timestamp::micros(now),
        rank,
        reason,
    };
    let payload = serde_json::to_vec(&outcome)
        .expect("outcomes serialize")
        .into();
    StoredOutcome { outcome, payload }
}

/// An outcome already in the stream, taken as this try's decision. The
/// core decided it again; a difference means the log was not replayed
/// faithfully, and the verifier stops rather than build on it.
fn reuse(published: StoredOutcome, verdict: Verdict) -> Result<StoredOutcome> {
    let o = &published.outcome;
    if Verdict::of(o) != Some(verdict) {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "bid {:?} in auction {:?} was published as {:?} (try {}) but the log decides {verdict:?}",
                o.bid_id,
                o.auction_id,
                Verdict::of(o),
                o.try_seq
            ),
        ));
    }
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delivery as a test holds it.
    #[derive(Clone, Debug)]
    struct Held {
        seq: u64,
        consumer_seq: u64,
        subject: String,
        payload: Vec<u8>,
    }

    impl Delivered for Held {
        fn delivery(&self) -> Delivery<'_> {
            Delivery {
                seq: self.seq,
                consumer_seq: self.consumer_seq,
                delivered: 1,
                subject: &self.subject,
                payload: &self.payload,
                stored_at: timestamp::parse("2030-01-01T00:00:00Z").unwrap(),
            }
        }
    }

    fn entries(subjects: &Subjects) -> Vec<Held> {
        let open = serde_json::json!({"type": "open", "auction_id": "a", "capacity": 1, "opened_at": "2030-01-01T00:00:00.000000Z"});
        let bid = |b: &str| serde_json::json!({"type": "try", "bid_id": b, "auction_id": "a", "bidder_id": b, "amount": 1, "tried_at": "2030-01-01T00:00:00.000000Z"});
        [
            (subjects.auction_event("a"), open),
            (subjects.try_event("a"), bid("b1")),
            (subjects.try_event("a"), bid("b2")),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (subject, body))| Held {
            seq: i as u64 + 1,
            consumer_seq: i as u64 + 1,
            subject,
            payload: serde_json::to_vec(&body).unwrap(),
        })
        .collect()
    }

    fn kinds(actions: &[Action<Held>]) -> Vec<&'static str> {
        actions
            .iter()
            .map(|a| match a {
                Action::CheckGaps(_) => "check gaps",
                Action::CheckLease => "check lease",
                Action::Commit { .. } => "commit",
                Action::AnswerCommands(_) | Action::AnswerDecided(_) => "answer",
                Action::Publish { .. } => "publish",
                Action::SendHolds(_) => "holds",
                Action::Announce { .. } => "announce",
                Action::Record { .. } => "record",
                Action::Terminate(_) => "terminate",
                Action::Ack(_) => "ack",
            })
            .collect()
    }

    fn fresh() -> Protocol<Held> {
        let (mut p, actions) = Protocol::recover(
            Ledger::new(),
            Position::default(),
            Vec::new(),
            Published::default(),
        );
        assert_eq!(kinds(&actions), ["publish"]);
        assert_eq!(kinds(&p.outcomes_acked(0)), ["announce", "record"]);
        assert!(p.recorded(0, 0).is_empty(), "a start acks nothing");
        p.expect_delivery(1);
        p
    }

    /// Nothing is acked before its outcomes are stored and recorded.
    #[test]
    fn a_batch_is_acked_only_after_its_outcomes_are_recorded() {
        let subjects = Subjects::default();
        let mut p = fresh();
        assert_eq!(kinds(&p.deliveries(entries(&subjects))), ["check gaps"]);
        let now = timestamp::parse("2030-01-01T00:00:01Z").unwrap();
        let actions = p.gaps_clear(&subjects, now).unwrap();
        assert_eq!(kinds(&actions), ["check lease", "commit"]);
        let Action::Commit { batch, .. } = &actions[1] else {
            unreachable!()
        };
        assert_eq!(batch.decisions.len(), 2);
        assert_eq!(kinds(&p.committed()), ["publish"]);
        assert_eq!(p.position().last_seq, 3);
        assert_eq!(p.position().published_through, 0, "not published yet");
        let actions = p.outcomes_acked(2);
        assert_eq!(kinds(&actions), ["announce", "record"]);
        let actions = p.recorded(3, 2);
        assert!(
            matches!(&actions[..], [Action::Ack(last)] if last.seq == 3),
            "{:?}",
            kinds(&actions)
        );
    }

    /// A gateway waiting for a bid's decision is answered once the batch
    /// that decides it is committed, with the outcome; one asking about a
    /// try already committed is answered at once.
    #[test]
    fn a_waiting_gateway_is_answered_when_the_deciding_batch_commits() {
        let subjects = Subjects::default();
        let now = timestamp::parse("2030-01-01T00:00:01Z").unwrap();
        let mut p = fresh();
        assert_eq!(p.decided_wait("a", "b1", 2, "inbox.1".into()), None);
        assert_eq!(p.decided_wait("a", "b2", 3, "inbox.2".into()), None);
        p.deliveries(entries(&subjects));
        p.gaps_clear(&subjects, now).unwrap();
        let actions = p.committed();
        assert_eq!(kinds(&actions), ["answer", "publish"]);
        let Action::AnswerDecided(answers) = &actions[0] else {
            unreachable!()
        };
        let answer = |inbox: &str| &answers.iter().find(|(to, _)| to == inbox).unwrap().1;
        let first = answer("inbox.1");
        assert_eq!((first.try_seq, first.through), (Some(2), 3));
        assert_eq!(first.outcome.as_ref().unwrap().rank, Some(1));
        let second = answer("inbox.2").outcome.as_ref().unwrap();
        assert_eq!(second.reason, Some(crate::wire::CancelReason::CapacityFull));
        // Decided already: looked up now, nothing parked.
        assert_eq!(
            p.decided_wait("a", "b1", 2, "inbox.3".into()),
            Some((Some(2.into()), 3))
        );
    }

    /// A chunk of only redelivered entries is acked when everything in it
    /// is published, and otherwise left to the batch in flight.
    #[test]
    fn a_redelivered_chunk_is_acked_only_once_published() {
        let subjects = Subjects::default();
        let now = timestamp::parse("2030-01-01T00:00:01Z").unwrap();
        let mut p = fresh();
        p.deliveries(entries(&subjects));
        p.gaps_clear(&subjects, now).unwrap();
        p.committed();
        // Redelivered while its batch waits for its acks.
        p.deliveries(entries(&subjects));
        assert!(p.gaps_clear(&subjects, now).unwrap().is_empty());
        p.outcomes_acked(2);
        p.recorded(3, 2);
        p.deliveries(entries(&subjects));
        let actions = p.gaps_clear(&subjects, now).unwrap();
        assert!(matches!(&actions[..], [Action::Ack(last)] if last.seq == 3));
    }

    /// Other partitions' entries leave gaps in the stream sequence; only a
    /// gap in the consumer's count means a delivery went elsewhere.
    #[test]
    fn only_a_gap_in_the_consumers_count_is_checked() {
        let subjects = Subjects::default();
        let mut all = entries(&subjects);
        all[1].seq = 5;
        all[2].seq = 9;
        let mut p = fresh();
        let actions = p.deliveries(all.clone());
        assert!(matches!(&actions[..], [Action::CheckGaps(g)] if g.is_empty()));
        let mut p = fresh();
        all[2].consumer_seq = 4;
        let actions = p.deliveries(all);
        assert!(matches!(&actions[..], [Action::CheckGaps(g)] if g == &vec![(6, 9)]));
    }
}
