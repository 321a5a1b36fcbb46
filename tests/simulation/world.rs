//! The simulated world around one verifier: a seeded random generator, a
//! clock, the log stream with its durable consumer, and the outcome
//! stream. Each models the JetStream behaviour the protocol relies on,
//! faults included (see the README of this folder's `main.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};

use allot::verifier::protocol::{Delivered, Delivery};
use async_nats::jetstream::message::PublishMessage;
use chrono::{DateTime, TimeZone, Utc};

/// SplitMix64: small, fast, and the same sequence for the same seed on
/// every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// Simulated time, in milliseconds since the start of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub u64);

impl Millis {
    /// As a wall-clock time, for timestamps (a fixed epoch: runs replay).
    pub fn at(self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_900_000_000_000 + self.0 as i64)
            .unwrap()
    }
}

/// One stored entry of the log.
#[derive(Clone, Debug)]
pub struct Stored {
    pub subject: String,
    pub payload: Vec<u8>,
    pub stored_at: DateTime<Utc>,
    /// Whether it is on one of the simulated partition's subjects.
    pub ours: bool,
}

/// A delivery as the simulated consumer hands it out.
#[derive(Clone, Debug)]
pub struct SimDelivery {
    pub seq: u64,
    pub consumer_seq: u64,
    pub delivered: u64,
    pub entry: Stored,
    /// Which consumer (by generation) delivered it: an ack to an older
    /// consumer is lost, as it would be after the consumer was re-created.
    pub generation: u64,
}

impl Delivered for SimDelivery {
    fn delivery(&self) -> Delivery<'_> {
        Delivery {
            seq: self.seq,
            consumer_seq: self.consumer_seq,
            delivered: self.delivered,
            subject: &self.entry.subject,
            payload: &self.entry.payload,
            stored_at: self.entry.stored_at,
        }
    }
}

/// The log stream and the verifier's durable consumer on the partition's
/// subjects, with JetStream's explicit ack-all policy: an ack covers every
/// earlier delivery; an unacked delivery comes again after the ack wait
/// (so also one whose ack was lost); a terminated one never comes again,
/// and, as the protocol assumes the worst, counts as an ack of all before.
pub struct Log {
    pub entries: Vec<Stored>,
    /// Every entry of ours up to here is acked.
    pub ack_floor: u64,
    /// The next entry to deliver for the first time.
    next: u64,
    /// Deliveries so far of this consumer (its `consumer_seq`).
    consumer_seq: u64,
    /// Delivered and not acked: (times delivered, when it may come again).
    outstanding: BTreeMap<u64, (u64, Millis)>,
    /// The consumer's generation: bumped when it is re-created.
    pub generation: u64,
    pub ack_wait: u64,
}

impl Log {
    pub fn new(ack_wait: u64) -> Log {
        Log {
            entries: Vec::new(),
            ack_floor: 0,
            next: 1,
            consumer_seq: 0,
            outstanding: BTreeMap::new(),
            generation: 0,
            ack_wait,
        }
    }

    pub fn append(&mut self, subject: String, payload: Vec<u8>, now: Millis, ours: bool) -> u64 {
        self.entries.push(Stored {
            subject,
            payload,
            stored_at: now.at(),
            ours,
        });
        self.entries.len() as u64
    }

    /// Re-creates the consumer to deliver from just after `last_seq`, as
    /// the verifier does at every start. Returns its next `consumer_seq`.
    pub fn realign(&mut self, last_seq: u64) -> u64 {
        self.ack_floor = last_seq;
        self.next = last_seq + 1;
        self.consumer_seq = 0;
        self.outstanding.clear();
        self.generation += 1;
        1
    }

    /// Whether the partition has an entry with a sequence in `from..to`.
    pub fn ours_between(&self, from: u64, to: u64) -> bool {
        (from..to).any(|seq| self.entries[seq as usize - 1].ours)
    }

    /// Whether anything of ours is delivered and unacked, or not delivered.
    pub fn pending(&self) -> bool {
        !self.outstanding.is_empty() || self.undelivered().is_some()
    }

    fn undelivered(&self) -> Option<u64> {
        (self.next..=self.entries.len() as u64).find(|&s| self.entries[s as usize - 1].ours)
    }

    /// Up to `max` deliveries: those due again first, then new ones. With
    /// `steal`, a first delivery goes to another puller instead (one that
    /// lost the lease): counted, and never acked by it.
    pub fn deliver(
        &mut self,
        max: usize,
        now: Millis,
        rng: &mut Rng,
        steal: u64,
    ) -> Vec<SimDelivery> {
        let mut out = Vec::new();
        let due: Vec<u64> = self
            .outstanding
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(seq, _)| *seq)
            .take(max)
            .collect();
        for seq in due {
            let (times, at) = self.outstanding.get_mut(&seq).unwrap();
            *times += 1;
            *at = Millis(now.0 + self.ack_wait);
            let times = *times;
            self.consumer_seq += 1;
            out.push(self.delivery(seq, times));
        }
        while out.len() < max {
            let Some(seq) = self.undelivered() else { break };
            self.next = seq + 1;
            self.consumer_seq += 1;
            self.outstanding
                .insert(seq, (1, Millis(now.0 + self.ack_wait)));
            if rng.chance(steal) {
                continue;
            }
            out.push(self.delivery(seq, 1));
        }
        out
    }

    fn delivery(&self, seq: u64, delivered: u64) -> SimDelivery {
        SimDelivery {
            seq,
            consumer_seq: self.consumer_seq,
            delivered,
            entry: self.entries[seq as usize - 1].clone(),
            generation: self.generation,
        }
    }

    /// Acks every delivery up to `seq` (an ack to an older consumer is lost).
    pub fn ack(&mut self, seq: u64, generation: u64) {
        if generation != self.generation {
            return;
        }
        self.ack_floor = self.ack_floor.max(seq);
        self.outstanding.retain(|s, _| *s > seq);
    }
}

/// One message of the outcome stream.
#[derive(Clone, Debug)]
pub struct OutcomeMessage {
    pub seq: u64,
    /// An outcome, or a fence marker.
    pub outcome: bool,
    pub payload: Vec<u8>,
}

/// Why a publish was refused: the fence's expectation failed (another
/// verifier wrote its markers since), as JetStream's `wrong last sequence`.
#[derive(Debug)]
pub struct Fenced;

/// The outcome stream, with JetStream's de-duplication by message id
/// within a window (a copy inside it is dropped and acked with the
/// first's sequence, a copy after it is stored again) and its
/// expected-last-subject-sequence check, which the fence relies on.
pub struct Outcomes {
    pub messages: Vec<OutcomeMessage>,
    seen: HashMap<String, (u64, Millis)>,
    /// Each subject's last sequence.
    last_on: HashMap<String, u64>,
    /// (auction, bid) of every stored outcome, read once as it is stored.
    pub keys: HashSet<(String, String)>,
    pub window: u64,
}

impl Outcomes {
    pub fn new(window: u64) -> Outcomes {
        Outcomes {
            messages: Vec::new(),
            seen: HashMap::new(),
            last_on: HashMap::new(),
            keys: HashSet::new(),
            window,
        }
    }

    /// Stores (or de-duplicates, or refuses) a message as the real code
    /// builds it (`allot::log::outcome_message`); its stream sequence.
    pub fn publish(
        &mut self,
        subject: String,
        message: PublishMessage,
        now: Millis,
    ) -> Result<u64, Fenced> {
        let message = message.outbound_message(subject.clone());
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        // JetStream checks the expectation before de-duplicating.
        if let Some(expected) = header("Nats-Expected-Last-Subject-Sequence") {
            let on =
                header("Nats-Expected-Last-Subject-Sequence-Subject").unwrap_or(subject.clone());
            let last = self.last_on.get(&on).copied().unwrap_or(0);
            if expected.parse::<u64>().ok() != Some(last) {
                return Err(Fenced);
            }
        }
        let msg_id = header("Nats-Msg-Id");
        if let Some((seq, at)) = msg_id.as_ref().and_then(|id| self.seen.get(id)) {
            if now.0 < at.0 + self.window {
                return Ok(*seq);
            }
        }
        let payload = message.payload.to_vec();
        let seq = self.store(subject, payload);
        if let Some(id) = msg_id {
            self.seen.insert(id, (seq, now));
        }
        Ok(seq)
    }

    /// Stores a message unconditionally (a fence marker); its sequence.
    pub fn store(&mut self, subject: String, payload: Vec<u8>) -> u64 {
        let seq = self.messages.len() as u64 + 1;
        let outcome = !subject.contains(".fence.");
        for o in outcomes_of(&payload) {
            self.keys.insert((o.auction_id, o.bid_id));
        }
        self.last_on.insert(subject, seq);
        self.messages.push(OutcomeMessage {
            seq,
            outcome,
            payload,
        });
        seq
    }

    pub fn last_seq(&self) -> u64 {
        self.messages.len() as u64
    }
}

/// The outcomes in a stored message: an entry's, one stored alone, or
/// none (a fence marker).
pub fn outcomes_of(payload: &[u8]) -> Vec<allot::wire::OutcomeEvent> {
    if let Ok(entry) = serde_json::from_slice::<allot::wire::OutcomesEntry>(payload) {
        return entry.outcomes;
    }
    serde_json::from_slice(payload).map_or_else(|_| Vec::new(), |o| vec![o])
}

/// The leases bucket's entry for the simulated partition, with the KV
/// behaviour the lease relies on: create only if absent (or aged out),
/// update only at the expected revision, and age out `ttl` after the last
/// write, by the server's (true) time.
pub struct LeaseEntry {
    /// Holder (a host's index), revision, and when it was last written.
    entry: Option<(usize, u64, Millis)>,
    revision: u64,
    pub ttl: u64,
}

impl LeaseEntry {
    pub fn new(ttl: u64) -> LeaseEntry {
        LeaseEntry {
            entry: None,
            revision: 0,
            ttl,
        }
    }

    /// The live entry's holder and revision, if any.
    pub fn get(&self, now: Millis) -> Option<(usize, u64)> {
        self.entry
            .filter(|(_, _, at)| now.0 < at.0 + self.ttl)
            .map(|(holder, revision, _)| (holder, revision))
    }

    /// Writes `holder` if the entry is absent or aged out (`expected`
    /// `None`), or at revision `expected`; the new revision.
    pub fn write(&mut self, holder: usize, expected: Option<u64>, now: Millis) -> Option<u64> {
        let current = self.get(now).map(|(_, revision)| revision);
        if current != expected {
            return None;
        }
        self.revision += 1;
        self.entry = Some((holder, self.revision, now));
        Some(self.revision)
    }
}
