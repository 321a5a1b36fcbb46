//! The oracle, as `allot audit` judges a real run: the outcome stream
//! holds exactly one outcome per try the log decides, each equal to what a
//! fold of the log from scratch decides, and no auction confirms more
//! bids than it has slots.

use std::collections::HashMap;

use allot::core::{Ledger, Verdict};
use allot::wire::{LogEntry, LogEvent, OutcomeKind, Subjects, TryAt};

use crate::world::{Log, Outcomes};

pub fn check(
    subjects: &Subjects,
    partition: u32,
    log: &Log,
    outcomes: &Outcomes,
) -> Result<(), String> {
    // The fold from scratch.
    let mut ledger = Ledger::new();
    let mut expected: HashMap<(String, String), Verdict> = HashMap::new();
    for (i, stored) in log.entries.iter().enumerate().filter(|(_, e)| e.ours) {
        let seq = i as u64 + 1;
        let entries = LogEntry::read(subjects, &stored.subject, &stored.payload, stored.stored_at);
        for (index, entry) in entries.into_iter().enumerate() {
            let at = TryAt::new(seq, index as u32);
            let Some(step) = ledger.apply_entry(&entry, at, stored.stored_at) else {
                continue;
            };
            let own_try = match &entry {
                LogEntry::Event(LogEvent::Try(t)) | LogEntry::InvalidTry(t) => Some(t),
                _ => None,
            };
            for d in step.decisions(own_try, at) {
                let key = (d.bid.auction_id.clone(), d.bid.bid_id.clone());
                if expected.insert(key.clone(), d.verdict).is_some() {
                    return Err(format!("the fold decided {key:?} twice"));
                }
            }
        }
    }
    // The stream: one outcome per decided try, the fold's.
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    let mut confirmed: HashMap<String, Vec<u32>> = HashMap::new();
    for m in outcomes.messages.iter().filter(|m| m.outcome) {
        let found = crate::world::outcomes_of(&m.payload);
        if found.is_empty() {
            return Err(format!("outcome message {} unreadable", m.seq));
        }
        for o in found {
            if subjects.partition(&o.auction_id) != partition {
                continue;
            }
            let key = (o.auction_id.clone(), o.bid_id.clone());
            *seen.entry(key.clone()).or_default() += 1;
            if seen[&key] > 1 {
                return Err(format!(
                    "a second outcome for {key:?} (stream sequence {})",
                    m.seq
                ));
            }
            match expected.get(&key) {
                None => {
                    return Err(format!(
                        "an outcome for {key:?}, which the log does not decide"
                    ))
                }
                Some(v) if Verdict::of(&o) != Some(*v) => {
                    return Err(format!(
                        "{key:?} published as {:?} {:?} {:?}, the log decides {v:?}",
                        o.kind, o.rank, o.reason
                    ))
                }
                Some(_) => {}
            }
            if o.kind == OutcomeKind::Confirmed {
                confirmed
                    .entry(o.auction_id.clone())
                    .or_default()
                    .extend(o.rank);
            }
        }
    }
    if let Some(missing) = expected.keys().find(|k| !seen.contains_key(*k)) {
        return Err(format!("no outcome for {missing:?}, which the log decides"));
    }
    for (auction_id, ranks) in confirmed {
        let capacity = ledger.fill(&auction_id).map_or(0, |f| f.capacity);
        if ranks.len() as u32 > capacity {
            return Err(format!(
                "{auction_id} confirmed {} bids for {capacity} slots",
                ranks.len()
            ));
        }
    }
    Ok(())
}
