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

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::core::{Decision, Ledger, Step, Verdict};
use crate::error::{Error, ErrorKind, Result};
use crate::snapshot::{Batch, Position, StoredOutcome};
use crate::wire::{
    timestamp, CloseEvent, ClosedBy, CommandResult, HeldEvent, HeldKind, LogEntry, LogEvent,
    OutcomeEvent, OutcomeKind, Subjects,
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

/// One partition's verifier state between I/O steps.
pub struct Protocol {
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
    /// Gateways' command requests for log sequences not decided yet, with
    /// where to answer: answered as the batches that decide them commit.
    parked: Vec<(u64, String)>,
    /// Auctions whose deadline close this verifier is writing or wrote.
    closing: HashSet<String>,
}

/// What to do with a chunk of deliveries.
#[derive(Debug)]
pub enum Plan {
    /// Everything was redelivered and its outcomes are published: ack the
    /// chunk's last delivery.
    Ack,
    /// Everything was redelivered, but not all of it is published yet:
    /// the batch in flight will ack past it.
    Nothing,
    /// Commit this batch, then tell [`Protocol::committed`].
    Commit(Box<Pending>),
}

/// A batch decided and not committed yet.
#[derive(Debug)]
pub struct Pending {
    /// What to commit.
    pub batch: Batch,
    /// Decisions taken from the outcome stream: not published again.
    pub reused: HashSet<(String, String)>,
    /// `held` notices, sent once the batch is committed.
    pub holds: Vec<HeldEvent>,
    /// Auctions this batch closed, to announce.
    pub announce: HashSet<String>,
    /// Indexes in the chunk of entries that are not valid events: to
    /// terminate once the batch is recorded.
    pub poison: Vec<usize>,
}

/// A batch committed: what to send now, and what to keep until its acks.
#[derive(Debug)]
pub struct Sent {
    /// Answers to parked command requests this batch decided: (reply
    /// subject, its log sequence, the result).
    pub answers: Vec<(String, u64, Option<CommandResult>)>,
    /// The batch in flight.
    pub flight: Flight,
    /// Decisions taken from the outcome stream: not published again.
    pub reused: HashSet<(String, String)>,
    /// `held` notices to send.
    pub holds: Vec<HeldEvent>,
}

/// A batch committed and sent, waiting for its outcome acks.
#[derive(Debug)]
pub struct Flight {
    /// The batch's last log sequence.
    pub last_seq: u64,
    /// Its decisions: to publish, then to count and announce.
    pub decided: Vec<StoredOutcome>,
    /// Auctions the batch closed, for the closed notices.
    pub announce: HashSet<String>,
    /// Indexes in the chunk of entries to terminate.
    pub poison: Vec<usize>,
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

impl Protocol {
    /// A protocol resuming from a loaded snapshot, with the outcomes found
    /// in the stream that it has not accounted for.
    pub fn new(ledger: Ledger, position: Position, published: Published) -> Protocol {
        Protocol {
            ledger,
            position,
            published,
            next_delivery: 0,
            parked: Vec::new(),
            closing: HashSet::new(),
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn position(&self) -> Position {
        self.position
    }

    /// The consumer's next delivery number, from the consumer's info.
    pub fn expect_delivery(&mut self, consumer_seq: u64) {
        self.next_delivery = consumer_seq;
    }

    /// The gaps in a chunk that the log must be asked about before the
    /// chunk is decided: (first sequence skipped, sequence delivered).
    /// Other partitions' entries leave gaps in the sequence; only a
    /// delivery that went elsewhere (to a superseded puller) leaves a gap
    /// in the consumer's count, and only then is the log asked whether
    /// this partition has an entry in the gap.
    pub fn gaps(&self, chunk: &[Delivery]) -> Vec<(u64, u64)> {
        let mut last = self.position.last_seq;
        let mut next = self.next_delivery;
        let mut gaps = Vec::new();
        for d in chunk {
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

    /// Decides a chunk whose gaps (see [`Self::gaps`]) hold nothing of
    /// this partition. `now` stamps the decisions. An error is an
    /// integrity failure: a replayed decision that differs from the
    /// published one.
    pub fn decide(
        &mut self,
        subjects: &Subjects,
        chunk: &[Delivery],
        now: DateTime<Utc>,
    ) -> Result<Plan> {
        let Some(last) = chunk.last() else {
            return Ok(Plan::Nothing);
        };
        let mut pending = Pending {
            batch: Batch {
                last_seq: self.position.last_seq,
                ..Batch::default()
            },
            reused: HashSet::new(),
            holds: Vec::new(),
            announce: HashSet::new(),
            poison: Vec::new(),
        };
        let batch = &mut pending.batch;
        for (index, d) in chunk.iter().enumerate() {
            let seq = d.seq;
            if seq <= batch.last_seq {
                continue; // redelivered: already in the snapshot
            }
            if d.delivered == 1 {
                self.next_delivery = d.consumer_seq + 1;
            }
            batch.last_seq = seq;
            let entry = LogEntry::read(subjects, d.subject, d.payload, d.stored_at);
            if matches!(entry, LogEntry::InvalidTry(_) | LogEntry::Unreadable(_)) {
                pending.poison.push(index);
            }
            let Some(step) = self.ledger.apply_entry(&entry, seq) else {
                if let LogEntry::Unreadable(problem) = &entry {
                    tracing::warn!(
                        seq,
                        subject = d.subject,
                        problem,
                        "skipping a log entry with nothing to decide"
                    );
                }
                continue;
            };
            let (own_try, entry) = match entry {
                LogEntry::Event(LogEvent::Try(t)) | LogEntry::InvalidTry(t) => (Some(t), None),
                other => (None, Some(other)),
            };
            if let Some(hold) = step.hold(own_try.as_ref(), seq) {
                pending.holds.push(HeldEvent {
                    kind: HeldKind::Held,
                    bid_id: hold.bid.bid_id,
                    auction_id: hold.bid.auction_id,
                    bidder_id: hold.bid.bidder_id,
                    amount: hold.bid.amount,
                    try_seq: hold.try_seq,
                    held_seq: seq,
                });
            }
            // The common case, a try decided at once, takes the try itself
            // rather than a copy.
            let decisions = match (&step, own_try) {
                (Step::Decided(verdict), Some(bid)) => vec![Decision {
                    try_seq: seq,
                    bid,
                    verdict: *verdict,
                }],
                _ => step.decisions(None, seq),
            };
            for d in decisions {
                let key = (d.bid.auction_id.clone(), d.bid.bid_id.clone());
                let decision = match self.published.take(&key) {
                    Some(published) => {
                        pending.reused.insert(key);
                        reuse(published, d.verdict)?
                    }
                    None => decide(d, now),
                };
                batch.decisions.push(decision);
            }
            if let (Some(result), Some(LogEntry::Event(e))) = (step.command_result(), &entry) {
                batch
                    .commands
                    .push((seq, e.auction_id().to_string(), result));
            }
            match (entry, step) {
                (Some(LogEntry::Event(LogEvent::Open(open))), Step::Opened) => {
                    batch.opens.push((seq, open))
                }
                (Some(LogEntry::Event(LogEvent::Close(close))), Step::Closed { .. }) => {
                    pending.announce.insert(close.auction_id);
                }
                (_, Step::Duplicate) => {
                    tracing::info!(seq, "try for an already decided bid; it keeps its outcome")
                }
                _ => {}
            }
        }
        for auction_id in self.ledger.take_changed() {
            if let Some(life) = self.ledger.life(&auction_id) {
                pending.batch.lives.push((auction_id, life));
            }
        }
        if pending.batch.last_seq > self.position.last_seq {
            return Ok(Plan::Commit(Box::new(pending)));
        }
        // All redelivered. An ack covers every delivery up to this one, so
        // it is sent only when their outcomes are all published; otherwise
        // the ack of the batch in flight will cover them.
        Ok(match last.seq <= self.position.published_through {
            true => Plan::Ack,
            false => Plan::Nothing,
        })
    }

    /// The batch is committed: it is the snapshot's position now. Returns
    /// what to send.
    pub fn committed(&mut self, pending: Box<Pending>) -> Sent {
        let Pending {
            batch,
            reused,
            holds,
            announce,
            poison,
        } = *pending;
        self.position.last_seq = batch.last_seq;
        let answers = self.answer_parked(&batch.commands);
        Sent {
            answers,
            reused,
            holds,
            flight: Flight {
                last_seq: batch.last_seq,
                decided: batch.decisions,
                announce,
                poison,
                first_unmatched: self.published.first_unmatched(),
            },
        }
    }

    /// The oldest batch in flight has every outcome acked, the highest at
    /// outcome-stream sequence `acked`. Returns the position to record as
    /// published: (last log sequence, outcome-stream sequence).
    pub fn acked(&mut self, flight: &Flight, acked: u64) -> (u64, u64) {
        self.published.stored_through(acked);
        let outcomes_seq = self.published.safe_position(flight.first_unmatched);
        (flight.last_seq, outcomes_seq)
    }

    /// The position is recorded: the batch's deliveries may be acked now.
    pub fn recorded(&mut self, last_seq: u64, outcomes_seq: u64) {
        self.position.published_through = last_seq;
        self.position.outcomes_seq = outcomes_seq;
    }

    /// A gateway asks which try decided a bid: (that try, decided through).
    pub fn decided(&self, auction_id: &str, bid_id: &str) -> (Option<u64>, u64) {
        (
            self.ledger.decided_try(auction_id, bid_id),
            self.position.last_seq,
        )
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
    ) -> Vec<(String, u64, Option<CommandResult>)> {
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
                (reply_to, seq, result)
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
    /// Outcome-stream sequences of the outcomes not matched to a try yet.
    unmatched: BTreeSet<u64>,
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
        self.unmatched.insert(seq);
        if let Some((earlier, _)) = self.by_bid.insert(key(&stored.outcome), (seq, stored)) {
            self.unmatched.remove(&earlier);
        }
    }

    /// The published outcome of a bid, if one was found; it is then matched.
    pub fn take(&mut self, key: &(String, String)) -> Option<StoredOutcome> {
        let (seq, stored) = self.by_bid.remove(key)?;
        self.unmatched.remove(&seq);
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
                unmatched.remove(seq);
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
        self.unmatched.first().copied()
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
        try_seq: d.try_seq,
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
                "bid {:?} in auction {:?} was published as {:?} but the log decides {verdict:?}",
                o.bid_id, o.auction_id, o.kind
            ),
        ));
    }
    Ok(published)
}
