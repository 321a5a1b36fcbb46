//! Drives the protocol as `allot serve`'s verifier does (`verifier/mod.rs`
//! and `recovery.rs`), against the simulated world: the same actions, in
//! the order the protocol gives them, with faults injected where the real
//! I/O can fail. Any failure of a step ends the verifier's run and it
//! starts over from its snapshot, as the real one does.

use std::collections::VecDeque;

use allot::snapshot::{Snapshot, StoredOutcome, Sync};
use allot::verifier::protocol::{Action, Protocol, Published};
use allot::wire::OutcomeEvent;

use crate::oracle;
use crate::workload::Workload;
use crate::world::{Log, Millis, Outcomes, Rng, SimDelivery};

/// Fault probabilities, per mille of the chances each has.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// A crash of the verifier's process, per step.
    pub crash: u64,
    /// A crash that also loses the snapshot file, per step.
    pub lose_snapshot: u64,
    /// A power loss: a crash that also loses the snapshot's last write
    /// (SQLite `synchronous=NORMAL` keeps a process crash's, not a power
    /// loss's), per step.
    pub power_loss: u64,
    /// A snapshot write refused (a full disk, an I/O error).
    pub write_fails: u64,
    /// A delivery's ack lost on the way: it comes again.
    pub ack_lost: u64,
    /// A first delivery taken by another (superseded) puller.
    pub steal: u64,
    /// An outcome publish whose ack is lost although it was stored.
    pub publish_ack_lost: u64,
    /// An outcome publish lost with its connection: not stored.
    pub publish_lost: u64,
    /// The log's API failing a request (a gap check).
    pub log_unavailable: u64,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            crash: 15,
            lose_snapshot: 3,
            power_loss: 8,
            write_fails: 20,
            ack_lost: 100,
            steal: 15,
            publish_ack_lost: 10,
            publish_lost: 5,
            log_unavailable: 10,
        }
    }
}

impl Faults {
    fn none() -> Faults {
        Faults {
            crash: 0,
            lose_snapshot: 0,
            power_loss: 0,
            write_fails: 0,
            ack_lost: 0,
            steal: 0,
            publish_ack_lost: 0,
            publish_lost: 0,
            log_unavailable: 0,
        }
    }
}

/// What a passing run did.
pub struct Report {
    pub steps: u64,
    /// Times the verifier started over (crashes and failed steps).
    pub restarts: u64,
    /// Outcomes in the stream at the end, and how many are confirmed.
    pub outcomes: u64,
    pub confirmed: u64,
    /// One line per step: what happened, for comparing two runs of a seed.
    pub trace: Vec<String>,
}

/// Entries the workload appends per run, at most.
const ENTRIES: u64 = 160;
/// Steps with faults, then steps to settle without them.
const STEPS: u64 = 500;
const SETTLE: u64 = 3_000;
/// Deliveries per chunk, batches in flight, and the streams' timings (ms).
const CHUNK: usize = 8;
const PIPELINE_DEPTH: usize = 4;
const ACK_WAIT: u64 = 1_000;
const DEDUPE_WINDOW: u64 = 2_000;

/// Outcome acks of one published batch: when they all arrive, and the
/// highest sequence, or the error one of them brings.
struct Acks {
    ready_at: Millis,
    result: Result<u64, String>,
}

struct Verifier {
    protocol: Protocol<SimDelivery>,
    /// How far this process's clock is off the true time, in ms: each
    /// start draws its own, up to 3 s either way.
    skew: i64,
    snapshot: Snapshot,
    in_flight: VecDeque<Acks>,
    /// A second, read-only connection to the snapshot, for the oracle.
    reader: rusqlite::Connection,
}

struct Sim {
    rng: Rng,
    now: Millis,
    faults: Faults,
    log: Log,
    outcomes: Outcomes,
    workload: Workload,
    dir: tempfile::TempDir,
    /// The snapshot's files as they were before its last write.
    before_last_write: tempfile::TempDir,
    trace: Vec<String>,
}

/// Runs one seed; `Err` names the first broken promise.
pub fn run(seed: u64, faults: Faults) -> Result<Report, String> {
    let mut rng = Rng::new(seed);
    let workload = Workload::new(&mut rng);
    let mut sim = Sim {
        rng,
        now: Millis(0),
        faults,
        log: Log::new(ACK_WAIT),
        outcomes: Outcomes::new(DEDUPE_WINDOW),
        workload,
        dir: snapshot_dir()?,
        before_last_write: snapshot_dir()?,
        trace: Vec::new(),
    };
    let mut verifier: Option<Verifier> = None;
    let mut steps = 0;
    let mut appended = 0;
    for step in 0..STEPS + SETTLE {
        steps += 1;
        let settling = step >= STEPS;
        if settling {
            sim.faults = Faults::none();
            let idle = verifier.as_ref().is_some_and(|v| v.in_flight.is_empty());
            if idle && !sim.log.pending() && appended >= ENTRIES {
                break;
            }
        }
        let Some(v) = verifier.as_mut() else {
            sim.tick(50);
            verifier = match sim.start() {
                Ok(v) => Some(v),
                Err(Failure::Transient(e)) => {
                    sim.note(format!("start failed: {e}"));
                    None
                }
                Err(Failure::Broken(e)) => return Err(e),
            };
            continue;
        };
        let roll = sim.rng.below(100);
        let result = if !settling && sim.rng.chance(sim.faults.crash) {
            Err(Failure::Transient("crash".into()))
        } else if !settling && sim.rng.chance(sim.faults.lose_snapshot) {
            sim.lose_snapshot();
            Err(Failure::Transient("crash, snapshot lost".into()))
        } else if !settling && sim.rng.chance(sim.faults.power_loss) {
            verifier = None;
            sim.lose_last_write();
            Err(Failure::Transient("power loss".into()))
        } else if roll < 30 && appended < ENTRIES {
            appended += 1;
            let (subject, payload, ours) = sim.workload.next(&mut sim.rng, sim.now);
            let seq = sim.log.append(subject, payload, sim.now, ours);
            sim.note(format!("append {seq}"));
            Ok(())
        } else if roll < 60 && v.in_flight.len() < PIPELINE_DEPTH {
            let steal = sim.faults.steal;
            let chunk = sim.log.deliver(CHUNK, sim.now, &mut sim.rng, steal);
            if chunk.is_empty() {
                sim.tick(10);
                Ok(())
            } else {
                sim.note(format!(
                    "deliver {:?}",
                    chunk.iter().map(|d| d.seq).collect::<Vec<_>>()
                ));
                let actions = v.protocol.deliveries(chunk);
                sim.execute(v, actions)
            }
        } else if roll < 85 && v.in_flight.front().is_some_and(|a| a.ready_at <= sim.now) {
            let acks = v.in_flight.pop_front().unwrap();
            match acks.result {
                Ok(acked) => {
                    sim.note(format!("acked {acked}"));
                    let actions = v.protocol.outcomes_acked(acked);
                    sim.execute(v, actions)
                }
                Err(e) => Err(Failure::Transient(e)),
            }
        } else {
            let ms = 1 + sim.rng.below(150);
            sim.tick(ms);
            sim.close_due(v);
            Ok(())
        };
        match result {
            Ok(()) => {}
            Err(Failure::Transient(e)) => {
                sim.note(format!("restart: {e}"));
                verifier = None;
            }
            Err(Failure::Broken(e)) => return Err(format!("step {step}: {e}")),
        }
    }
    let Some(v) = verifier else {
        return Err("the verifier never settled".into());
    };
    if sim.log.pending() || !v.in_flight.is_empty() {
        return Err("the log was not all decided and acked after settling".into());
    }
    oracle::check(
        &sim.workload.subjects,
        sim.workload.partition,
        &sim.log,
        &sim.outcomes,
    )?;
    let restarts = sim
        .trace
        .iter()
        .filter(|l| l.contains(" restart: "))
        .count() as u64;
    Ok(Report {
        steps,
        restarts,
        outcomes: sim.outcomes.last_seq(),
        confirmed: sim
            .outcomes
            .messages
            .iter()
            .filter(|m| m.payload.starts_with(br#"{"type":"confirmed""#))
            .count() as u64,
        trace: sim.trace,
    })
}

/// A directory for the run's snapshot: in memory where the machine has a
/// tmpfs (a real SQLite file all the same, without waiting for the disk).
fn snapshot_dir() -> Result<tempfile::TempDir, String> {
    let shm = std::path::Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::tempdir_in(shm),
        false => tempfile::tempdir(),
    }
    .map_err(|e| e.to_string())
}

/// Makes `to` hold exactly the files of `from` (none without it).
fn copy_files(from: Option<&std::path::Path>, to: &std::path::Path) {
    for entry in std::fs::read_dir(to).unwrap() {
        let _ = std::fs::remove_file(entry.unwrap().path());
    }
    if let Some(from) = from {
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let _ = std::fs::copy(&path, to.join(path.file_name().unwrap()));
        }
    }
}

/// How a step failed.
enum Failure {
    /// I/O failed or the process crashed: start over from the snapshot.
    Transient(String),
    /// A promise is broken: the run fails.
    Broken(String),
}

impl Sim {
    fn note(&mut self, line: String) {
        self.trace.push(format!("{} {line}", self.now.0));
    }

    /// What the verifier's own clock reads now.
    fn clock(&self, v: &Verifier) -> chrono::DateTime<chrono::Utc> {
        self.now.at() + chrono::Duration::milliseconds(v.skew)
    }

    fn tick(&mut self, ms: u64) {
        self.now = Millis(self.now.0 + ms);
    }

    fn lose_snapshot(&mut self) {
        copy_files(None, self.dir.path());
    }

    /// Keeps the snapshot's files as they are, before a write.
    fn keep_before_write(&mut self) {
        copy_files(Some(self.dir.path()), self.before_last_write.path());
    }

    /// The snapshot's files as they were before its last write (with the
    /// verifier gone: no connection is open).
    fn lose_last_write(&mut self) {
        copy_files(Some(self.before_last_write.path()), self.dir.path());
    }

    /// A verifier (re)starting: load the snapshot, find what the outcome
    /// stream holds past it, let the protocol publish what is missing, and
    /// re-create the consumer at the snapshot's position.
    fn start(&mut self) -> Result<Verifier, Failure> {
        let io = |e: allot::snapshot::SnapshotError| Failure::Transient(e.to_string());
        let mut snapshot = Snapshot::open(self.dir.path(), Sync::Normal).map_err(io)?;
        if snapshot.log_identity().map_err(io)?.is_none() {
            snapshot.reset("simulated-log").map_err(io)?;
        }
        let ledger = snapshot.load().map_err(io)?;
        let position = snapshot.position().map_err(io)?;
        let unpublished = snapshot.unpublished().map_err(io)?;
        let mut found = Published::through(position.outcomes_seq);
        found.stored_through(self.outcomes.last_seq());
        for m in &self.outcomes.messages {
            let Ok(outcome) = serde_json::from_slice::<OutcomeEvent>(&m.payload) else {
                continue;
            };
            let ours =
                self.workload.subjects.partition(&outcome.auction_id) == self.workload.partition;
            if m.seq > position.outcomes_seq && ours {
                let payload = m.payload.clone().into();
                found.found(m.seq, StoredOutcome { outcome, payload });
            }
        }
        let (protocol, actions) = Protocol::recover(ledger, position, unpublished, found);
        let reader = rusqlite::Connection::open_with_flags(
            self.dir.path().join(allot::snapshot::FILE_NAME),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(|e| Failure::Transient(e.to_string()))?;
        let skew = self.rng.below(6_001) as i64 - 3_000;
        let mut v = Verifier {
            protocol,
            skew,
            snapshot,
            in_flight: VecDeque::new(),
            reader,
        };
        self.note(format!("start at {}", position.last_seq));
        self.execute(&mut v, actions)?;
        while let Some(acks) = v.in_flight.pop_front() {
            let acked = acks.result.map_err(Failure::Transient)?;
            let actions = v.protocol.outcomes_acked(acked);
            self.execute(&mut v, actions)?;
        }
        let next = self.log.realign(v.protocol.position().last_seq);
        v.protocol.expect_delivery(next);
        Ok(v)
    }

    /// Writes the deadline closes that are due, as the verifier does.
    fn close_due(&mut self, v: &mut Verifier) {
        for close in v.protocol.due_closes(self.clock(v)) {
            let subject = self.workload.subjects.auction_event(&close.auction_id);
            let payload = serde_json::to_vec(&allot::wire::LogEvent::Close(close)).unwrap();
            let seq = self.log.append(subject, payload, self.now, true);
            self.note(format!("deadline close {seq}"));
        }
    }

    /// Does the protocol's actions in order, each answer's actions first.
    fn execute(
        &mut self,
        v: &mut Verifier,
        actions: Vec<Action<SimDelivery>>,
    ) -> Result<(), Failure> {
        let mut queue: VecDeque<_> = actions.into();
        while let Some(action) = queue.pop_front() {
            let next = self.act(v, action)?;
            for action in next.into_iter().rev() {
                queue.push_front(action);
            }
        }
        Ok(())
    }

    fn act(
        &mut self,
        v: &mut Verifier,
        action: Action<SimDelivery>,
    ) -> Result<Vec<Action<SimDelivery>>, Failure> {
        let faults = self.faults;
        let io = |e: allot::snapshot::SnapshotError| Failure::Transient(e.to_string());
        Ok(match action {
            Action::CheckGaps(gaps) => {
                for (from, delivered) in gaps {
                    if self.rng.chance(faults.log_unavailable) {
                        return Err(Failure::Transient("the log is unavailable".into()));
                    }
                    if self.log.ours_between(from, delivered) {
                        return Err(Failure::Transient(format!(
                            "an entry before {delivered} was not delivered"
                        )));
                    }
                }
                let subjects = self.workload.subjects.clone();
                v.protocol
                    .gaps_clear(&subjects, self.clock(v))
                    .map_err(|e| Failure::Broken(e.to_string()))?
            }
            Action::CheckLease => Vec::new(),
            Action::Commit { batch, .. } => {
                if self.rng.chance(faults.write_fails) {
                    return Err(Failure::Transient("snapshot write refused".into()));
                }
                if faults.power_loss > 0 {
                    self.keep_before_write();
                }
                v.snapshot.commit(&batch).map_err(io)?;
                self.note(format!("commit {}", batch.last_seq));
                v.protocol.committed()
            }
            Action::AnswerCommands(_) | Action::SendHolds(_) | Action::Announce { .. } => {
                Vec::new()
            }
            Action::Publish { batch, skip } => {
                let mut high = 0;
                let mut failed = None;
                for d in &batch.decisions {
                    let o = &d.outcome;
                    if skip.contains(&(o.auction_id.clone(), o.bid_id.clone())) {
                        continue;
                    }
                    if self.rng.chance(faults.publish_lost) {
                        failed = Some("an outcome publish was lost".to_string());
                        continue;
                    }
                    let id = OutcomeEvent::msg_id(&o.auction_id, &o.bid_id);
                    high = high.max(self.outcomes.publish(id, d.payload.to_vec(), self.now));
                    if self.rng.chance(faults.publish_ack_lost) {
                        failed = Some("an outcome ack was lost".to_string());
                    }
                }
                let ready_at = Millis(self.now.0 + self.rng.below(60));
                self.note(format!("publish {} outcomes", batch.decisions.len()));
                v.in_flight.push_back(Acks {
                    ready_at,
                    result: failed.map_or(Ok(high), Err),
                });
                Vec::new()
            }
            Action::Record {
                last_seq,
                outcomes_seq,
                ..
            } => {
                if self.rng.chance(faults.write_fails) {
                    return Err(Failure::Transient("snapshot write refused".into()));
                }
                if faults.power_loss > 0 {
                    self.keep_before_write();
                }
                v.snapshot
                    .mark_published(last_seq, outcomes_seq)
                    .map_err(io)?;
                v.protocol.recorded(last_seq, outcomes_seq)
            }
            Action::Terminate(deliveries) => {
                for d in deliveries {
                    self.acked(v, &d)?;
                }
                Vec::new()
            }
            Action::Ack(d) => {
                if !self.rng.chance(faults.ack_lost) {
                    self.acked(v, &d)?;
                }
                Vec::new()
            }
        })
    }

    /// An ack (or a terminate, which may count as one) reaches the log:
    /// everything it covers must be decided in the snapshot and published.
    fn acked(&mut self, v: &Verifier, d: &SimDelivery) -> Result<(), Failure> {
        let position = v
            .snapshot
            .position()
            .map_err(|e| Failure::Transient(e.to_string()))?;
        if position.published_through < d.seq {
            return Err(Failure::Broken(format!(
                "delivery {} acked, but the snapshot records outcomes published only through {}",
                d.seq, position.published_through
            )));
        }
        // Decisions made by entries up to the acked one (a close decides
        // older tries too, so by the deciding entry, not the try).
        let mut query = v
            .reader
            .prepare_cached(
                "SELECT auction_id, bid_id, try_seq FROM decisions WHERE decided_seq <= ?1",
            )
            .map_err(|e| Failure::Transient(e.to_string()))?;
        let decided: Vec<(String, String, u64)> = query
            .query_map([d.seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| Failure::Transient(e.to_string()))?;
        let stored = &self.outcomes.keys;
        if let Some((_, _, try_seq)) = decided
            .into_iter()
            .find(|(a, b, _)| !stored.contains(&(a.clone(), b.clone())))
        {
            return Err(Failure::Broken(format!(
                "delivery {} acked, but the outcome of try {try_seq} is not in the stream",
                d.seq
            )));
        }
        self.note(format!("ack {}", d.seq));
        self.log.ack(d.seq, d.generation);
        Ok(())
    }
}
