//! Drives the protocol as `allot serve`'s verifier does (`verifier/mod.rs`
//! and `recovery.rs`), against the simulated world: the same actions, in
//! the order the protocol gives them, with faults injected where the real
//! I/O can fail. Any failure of a step ends the verifier's run and it
//! starts over from its snapshot, as the real one does.
//!
//! One to three hosts run a verifier each, with a data directory of their
//! own, and take turns as a real cluster's would: only the holder of the
//! partition's lease decides; the others stand by and take the lease once
//! it ages out. A host may be paused (as by `SIGSTOP`) for longer than its
//! lease, even between its lease check and its publish, and then resumes
//! where it stopped: the fence (`allot::log::fence`), written by each new
//! holder before it reads the outcome stream, must keep its outcomes out.

use std::collections::VecDeque;

use std::time::Duration;

use allot::log::fence::Fence;
use allot::snapshot::{Snapshot, StoredOutcome, Sync};
use allot::verifier::lease::{after_refusal, Refused, Term};
use allot::verifier::protocol::{Action, Protocol, Published};

use crate::oracle;
use crate::workload::Workload;
use crate::world::{LeaseEntry, Log, Millis, Outcomes, Rng, SimDelivery};

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
    /// A host paused (its process stopped) for 2 to 7 s, per step, and
    /// again before each publish.
    pub pause: u64,
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
            pause: 4,
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
            pause: 0,
        }
    }
}

/// What a passing run did.
pub struct Report {
    pub steps: u64,
    /// Times the verifier started over (crashes and failed steps).
    pub restarts: u64,
    /// Starts of a verifier on another host than the last one's, and
    /// publishes the fence refused (a paused holder's, once superseded).
    pub takeovers: u64,
    pub fenced: u64,
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
/// The lease's time to live (the real default), and fence lanes.
const LEASE_TTL: u64 = 3_000;
const LANES: usize = 3;

/// Outcome acks of one published batch: when they all arrive, and the
/// highest sequence, or the error one of them brings.
struct Acks {
    ready_at: Millis,
    result: Result<u64, String>,
}

struct Verifier {
    protocol: Protocol<SimDelivery>,
    /// This run's fence, and its lease: revision, until when deciding is
    /// safe and when to renew (by the host's own clock, in true ms).
    fence: Fence,
    lease_revision: u64,
    safe_until: Millis,
    renew_at: Millis,
    /// Actions left undone when the host was paused, done first on waking.
    suspended: VecDeque<Action<SimDelivery>>,
    /// A pause (ms) to begin after the current step.
    pause: Option<u64>,
    /// Whether it may be paused before a publish (not while starting).
    may_pause: bool,
    /// The host's data directory and its copy before the last write.
    dir: std::path::PathBuf,
    before_last_write: std::path::PathBuf,
    /// How far this process's clock is off the true time, in ms: each
    /// start draws its own, up to 3 s either way.
    skew: i64,
    snapshot: Snapshot,
    in_flight: VecDeque<Acks>,
    /// A second, read-only connection to the snapshot, for the oracle.
    reader: rusqlite::Connection,
}

/// A machine with its own data directory, running a verifier or standing
/// by.
struct Host {
    verifier: Option<Verifier>,
    /// Stopped until then.
    paused_until: Millis,
    dir: tempfile::TempDir,
    /// The snapshot's files as they were before its last write.
    before_last_write: tempfile::TempDir,
}

impl Verifier {
    /// Nothing in flight and nothing left undone.
    fn idle(&self) -> bool {
        self.in_flight.is_empty() && self.suspended.is_empty()
    }
}

struct Sim {
    rng: Rng,
    now: Millis,
    faults: Faults,
    log: Log,
    outcomes: Outcomes,
    lease: LeaseEntry,
    term: Term,
    /// The host whose verifier started last.
    holder: Option<usize>,
    workload: Workload,
    trace: Vec<String>,
}

/// Runs one seed; `Err` names the first broken promise. With
/// `SIM_TRACE` set, a failing run prints its trace first.
pub fn run(seed: u64, faults: Faults) -> Result<Report, String> {
    let mut trace = Vec::new();
    let result = run_traced(seed, faults, &mut trace);
    if result.is_err() && std::env::var_os("SIM_TRACE").is_some() {
        trace.iter().for_each(|line| eprintln!("{line}"));
    }
    result
}

fn run_traced(seed: u64, faults: Faults, out: &mut Vec<String>) -> Result<Report, String> {
    let mut rng = Rng::new(seed);
    let workload = Workload::new(&mut rng);
    let host_count = 1 + rng.below(3) as usize;
    let mut hosts = Vec::with_capacity(host_count);
    for _ in 0..host_count {
        hosts.push(Host {
            verifier: None,
            paused_until: Millis(0),
            dir: snapshot_dir()?,
            before_last_write: snapshot_dir()?,
        });
    }
    let mut sim = Sim {
        rng,
        now: Millis(0),
        faults,
        log: Log::new(ACK_WAIT),
        outcomes: Outcomes::new(DEDUPE_WINDOW),
        lease: LeaseEntry::new(LEASE_TTL),
        term: Term {
            ttl: Duration::from_millis(LEASE_TTL),
        },
        holder: None,
        workload,
        trace: Vec::new(),
    };
    let result = drive(&mut sim, &mut hosts);
    *out = std::mem::take(&mut sim.trace);
    result
}

/// Runs the steps of a seed, then the oracle.
fn drive(sim: &mut Sim, hosts: &mut [Host]) -> Result<Report, String> {
    let host_count = hosts.len();
    let mut steps = 0;
    let mut appended = 0;
    for step in 0..STEPS + SETTLE {
        steps += 1;
        let settling = step >= STEPS;
        if settling {
            sim.faults = Faults::none();
            let idle = hosts
                .iter()
                .any(|h| h.verifier.as_ref().is_some_and(Verifier::idle));
            if idle && !sim.log.pending() && appended >= ENTRIES {
                break;
            }
        }
        let h = sim.rng.below(host_count as u64) as usize;
        let host = &mut hosts[h];
        if host.paused_until > sim.now {
            sim.tick(10);
            continue;
        }
        // Tries come from the gateways, whichever verifier runs.
        let roll = sim.rng.below(100);
        if roll < 30 && appended < ENTRIES {
            appended += 1;
            let (subject, payload, ours) = sim.workload.next(&mut sim.rng, sim.now);
            let seq = sim.log.append(subject, payload, sim.now, ours);
            sim.note(format!("append {seq}"));
            continue;
        }
        let Some(v) = host.verifier.as_mut() else {
            sim.tick(50);
            host.verifier = match sim.start(h, host) {
                Ok(v) => v,
                Err(Failure::Transient(e)) => {
                    sim.note(format!("host {h}: start failed: {e}"));
                    None
                }
                Err(Failure::Broken(e)) => return Err(e),
            };
            continue;
        };
        let result = if !settling && sim.rng.chance(sim.faults.crash) {
            Err(Failure::Transient("crash".into()))
        } else if !settling && sim.rng.chance(sim.faults.lose_snapshot) {
            copy_files(None, host.dir.path());
            Err(Failure::Transient("crash, snapshot lost".into()))
        } else if !settling && sim.rng.chance(sim.faults.power_loss) {
            host.verifier = None;
            copy_files(Some(host.before_last_write.path()), host.dir.path());
            Err(Failure::Transient("power loss".into()))
        } else if !settling && sim.rng.chance(sim.faults.pause) {
            v.pause = Some(2_000 + sim.rng.below(5_001));
            Ok(())
        } else if !v.suspended.is_empty() {
            // Woken: carry on where it stopped, before anything else.
            let actions: Vec<_> = std::mem::take(&mut v.suspended).into();
            sim.note(format!("host {h}: resumes"));
            sim.execute(v, actions)
        } else if sim.now >= v.renew_at {
            sim.renew(h, v)
        } else if roll < 60 && v.in_flight.len() < PIPELINE_DEPTH {
            let steal = sim.faults.steal;
            let chunk = sim.log.deliver(CHUNK, sim.now, &mut sim.rng, steal);
            if chunk.is_empty() {
                sim.tick(10);
                Ok(())
            } else {
                sim.note(format!(
                    "host {h}: deliver {:?}",
                    chunk.iter().map(|d| d.seq).collect::<Vec<_>>()
                ));
                let actions = v.protocol.deliveries(chunk);
                sim.execute(v, actions)
            }
        } else if roll < 85 && v.in_flight.front().is_some_and(|a| a.ready_at <= sim.now) {
            let acks = v.in_flight.pop_front().unwrap();
            match acks.result {
                Ok(acked) => {
                    sim.note(format!("host {h}: acked {acked}"));
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
        if let Some(ms) = host.verifier.as_mut().and_then(|v| v.pause.take()) {
            host.paused_until = Millis(sim.now.0 + ms);
            sim.note(format!("host {h}: paused for {ms} ms"));
        }
        match result {
            Ok(()) => {}
            Err(Failure::Transient(e)) => {
                sim.note(format!("host {h}: restart: {e}"));
                host.verifier = None;
            }
            Err(Failure::Broken(e)) => return Err(format!("step {step}: {e}")),
        }
    }
    // The holder settles; a superseded host may still be paused with work
    // undone, which the fence keeps out whenever it wakes.
    let settled = hosts
        .iter()
        .filter_map(|h| h.verifier.as_ref())
        .any(Verifier::idle);
    if sim.log.pending() || !settled {
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
    let count = |what: &str| sim.trace.iter().filter(|l| l.contains(what)).count() as u64;
    let stored: Vec<_> = sim
        .outcomes
        .messages
        .iter()
        .flat_map(|m| crate::world::outcomes_of(&m.payload))
        .collect();
    Ok(Report {
        steps,
        restarts,
        takeovers: count(" takes over"),
        fenced: count("refused by the fence"),
        outcomes: stored.len() as u64,
        confirmed: stored
            .iter()
            .filter(|o| o.kind == allot::wire::OutcomeKind::Confirmed)
            .count() as u64,
        trace: sim.trace.clone(),
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

    /// Keeps the snapshot's files as they are, before a write.
    fn keep_before_write(&self, v: &Verifier) {
        copy_files(Some(&v.dir), &v.before_last_write);
    }

    /// Renews the lease as `verifier/lease.rs` does: at the revision it
    /// holds; after a refusal, by `lease::after_refusal`'s rule.
    fn renew(&mut self, host: usize, v: &mut Verifier) -> Result<(), Failure> {
        let sent = self.now;
        v.renew_at = Millis(sent.0 + self.term.renew_every().as_millis() as u64);
        let mut renewed = self.lease.write(host, Some(v.lease_revision), sent);
        if renewed.is_none() {
            let name = |h: usize| format!("host-{h}");
            let now = self.lease.get(sent).map(|(holder, r)| (name(holder), r));
            let now = now.as_ref().map(|(holder, r)| (holder.as_bytes(), *r));
            renewed = match after_refusal(now, name(host).as_bytes()) {
                Refused::Renew(revision) => self.lease.write(host, Some(revision), sent),
                Refused::Lost => None,
            };
        }
        let Some(revision) = renewed else {
            return Err(Failure::Transient(
                "superseded: another verifier took the lease".into(),
            ));
        };
        v.lease_revision = revision;
        v.safe_until = Millis(sent.0 + self.term.safe_for().as_millis() as u64);
        Ok(())
    }

    /// A verifier (re)starting: load the snapshot, find what the outcome
    /// stream holds past it, let the protocol publish what is missing, and
    /// re-create the consumer at the snapshot's position.
    /// `None` while another host holds the lease.
    fn start(&mut self, h: usize, host: &Host) -> Result<Option<Verifier>, Failure> {
        // The lease: free (or aged out), or this host's own earlier run's.
        let taken = match self.lease.get(self.now) {
            None => self.lease.write(h, None, self.now),
            Some((holder, revision)) if holder == h => {
                self.lease.write(h, Some(revision), self.now)
            }
            Some(_) => None,
        };
        let Some(lease_revision) = taken else {
            return Ok(None);
        };
        if self.holder.is_some_and(|last| last != h) {
            self.note(format!("host {h}: takes over"));
        }
        self.holder = Some(h);
        // The fence, before the outcome stream is read: from here on, no
        // earlier holder's outcome gets in.
        let lanes = (0..LANES)
            .map(|lane| {
                let subject = self.workload.subjects.fence(self.workload.partition, lane);
                let seq = self
                    .outcomes
                    .store(subject.clone(), br#"{"type":"fence"}"#.to_vec());
                (subject, seq)
            })
            .collect();
        let fence = Fence::from_lanes(lanes);
        let io = |e: allot::snapshot::SnapshotError| Failure::Transient(e.to_string());
        let mut snapshot = Snapshot::open(host.dir.path(), Sync::Normal).map_err(io)?;
        if snapshot.log_identity().map_err(io)?.is_none() {
            snapshot.reset("simulated-log").map_err(io)?;
        }
        let ledger = snapshot.load().map_err(io)?;
        let position = snapshot.position().map_err(io)?;
        let unpublished = snapshot.unpublished().map_err(io)?;
        let mut found = Published::through(position.outcomes_seq);
        found.stored_through(self.outcomes.last_seq());
        for m in &self.outcomes.messages {
            for outcome in crate::world::outcomes_of(&m.payload) {
                let ours = self.workload.subjects.partition(&outcome.auction_id)
                    == self.workload.partition;
                if m.seq > position.outcomes_seq && ours {
                    let payload = serde_json::to_vec(&outcome).unwrap().into();
                    found.found(m.seq, StoredOutcome { outcome, payload });
                }
            }
        }
        let (protocol, actions) = Protocol::recover(ledger, position, unpublished, found);
        let reader = rusqlite::Connection::open_with_flags(
            host.dir.path().join(allot::snapshot::FILE_NAME),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(|e| Failure::Transient(e.to_string()))?;
        let skew = self.rng.below(6_001) as i64 - 3_000;
        let mut v = Verifier {
            protocol,
            fence,
            lease_revision,
            safe_until: Millis(self.now.0 + self.term.safe_for().as_millis() as u64),
            renew_at: Millis(self.now.0 + self.term.renew_every().as_millis() as u64),
            suspended: VecDeque::new(),
            pause: None,
            may_pause: false,
            dir: host.dir.path().to_path_buf(),
            before_last_write: host.before_last_write.path().to_path_buf(),
            skew,
            snapshot,
            in_flight: VecDeque::new(),
            reader,
        };
        self.note(format!("host {h}: start at {}", position.last_seq));
        self.execute(&mut v, actions)?;
        while let Some(acks) = v.in_flight.pop_front() {
            let acked = acks.result.map_err(Failure::Transient)?;
            let actions = v.protocol.outcomes_acked(acked);
            self.execute(&mut v, actions)?;
        }
        let next = self.log.realign(v.protocol.position().last_seq);
        v.protocol.expect_delivery(next);
        v.may_pause = true;
        Ok(Some(v))
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
            // A pause between the lease check and the publish: the worst
            // moment, as the lease may lapse meanwhile.
            let publish = matches!(action, Action::Publish { .. });
            if publish && v.may_pause && self.rng.chance(self.faults.pause * 10) {
                queue.push_front(action);
                v.suspended = queue;
                v.pause = Some(2_000 + self.rng.below(5_001));
                return Ok(());
            }
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
            Action::CheckLease => {
                if self.now >= v.safe_until {
                    return Err(Failure::Transient("lease not renewed in time".into()));
                }
                Vec::new()
            }
            Action::Commit { batch, .. } => {
                if self.rng.chance(faults.write_fails) {
                    return Err(Failure::Transient("snapshot write refused".into()));
                }
                if faults.power_loss > 0 {
                    self.keep_before_write(v);
                }
                v.snapshot.commit(&batch).map_err(io)?;
                self.note(format!("commit {}", batch.last_seq));
                v.protocol.committed()
            }
            Action::AnswerCommands(_)
            | Action::AnswerDecided(_)
            | Action::SendHolds(_)
            | Action::Announce { .. } => Vec::new(),
            Action::Publish { batch, skip } => {
                let mut high = 0;
                let mut failed = None;
                // As `verifier::outcomes::send` stores them: entries of
                // several, each under the fence.
                let fresh: Vec<&[u8]> = batch
                    .decisions
                    .iter()
                    .filter(|d| {
                        let o = &d.outcome;
                        !skip.contains(&(o.auction_id.clone(), o.bid_id.clone()))
                    })
                    .map(|d| d.payload.as_ref())
                    .collect();
                let entries = allot::wire::outcome_entries(&fresh);
                for entry in entries {
                    if self.rng.chance(faults.publish_lost) {
                        failed = Some("an entry of outcomes was lost".to_string());
                        continue;
                    }
                    let (subject, message) = allot::log::outcomes_entry_message(
                        &self.workload.subjects,
                        &v.fence,
                        self.workload.partition,
                        entry,
                    );
                    match self.outcomes.publish(subject, message, self.now) {
                        Ok(seq) => high = high.max(seq),
                        Err(_fenced) => {
                            self.note("an entry of outcomes refused by the fence".into());
                            failed = Some("an entry was refused by the fence".to_string());
                            continue;
                        }
                    }
                    if self.rng.chance(faults.publish_ack_lost) {
                        failed = Some("an entry's ack was lost".to_string());
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
                    self.keep_before_write(v);
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
