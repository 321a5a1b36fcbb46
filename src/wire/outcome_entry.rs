//! Entries of outcomes: a verifier stores each decided batch's outcomes as
//! one message of the outcome stream (`<prefix>.outcomes.<partition>`,
//! under its fence), then sends each outcome live on its auction's subject
//! ([`Subjects::outcome_live`]). Earlier versions stored each outcome alone
//! on `<prefix>.outcome.<auction>.<kind>`; those are still read, and still
//! written beside an allot that does not read entries.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{OutcomeEvent, Subjects};

/// The format of [`OutcomesEntry`] this build writes and reads.
pub const OUTCOMES_FORMAT: u32 = 1;

/// What an allot states it reads, in its micro metadata (`log_format`):
/// 2, entries of tries; 3, entries of outcomes too. A gateway writes
/// entries of tries while every running allot says 2 or more, a verifier
/// entries of outcomes while every one says 3.
pub const RECORD_FORMAT: u32 = 3;

/// Most outcomes in one entry, and most bytes of them: a ranked close can
/// decide a whole auction at once, and nats-server takes at most 1 MiB a
/// message by default.
pub const MAX_OUTCOMES_PER_ENTRY: usize = 4096;
pub const MAX_OUTCOME_ENTRY_BYTES: usize = 512 * 1024;

/// One stored message of several outcomes, in the order they were decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutcomesEntry {
    /// Always `outcomes`.
    #[serde(rename = "type")]
    pub kind: OutcomesKind,
    /// The entry format, [`OUTCOMES_FORMAT`].
    pub v: u32,
    pub outcomes: Vec<OutcomeEvent>,
}

/// The one value of [`OutcomesEntry`]'s `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomesKind {
    Outcomes,
}

/// Entries' payloads holding `outcomes` (each already serialized as an
/// [`OutcomeEvent`]), in order, within [`MAX_OUTCOMES_PER_ENTRY`] and
/// [`MAX_OUTCOME_ENTRY_BYTES`] each. Written from the serialized bytes, so
/// that an outcome reads back exactly as it was decided.
pub fn outcome_entries(outcomes: &[&[u8]]) -> Vec<Bytes> {
    const HEAD: &[u8] = b"{\"type\":\"outcomes\",\"v\":1,\"outcomes\":[";
    const TAIL: &[u8] = b"]}";
    let mut entries = Vec::new();
    let mut rest = outcomes;
    while !rest.is_empty() {
        // As many as fit, at least one; the buffer sized exactly, since
        // it is kept as it is until the entry is sent.
        let mut size = HEAD.len() + rest[0].len() + TAIL.len();
        let mut count = 1;
        while count < rest.len().min(MAX_OUTCOMES_PER_ENTRY) {
            let next = size + 1 + rest[count].len();
            if next > MAX_OUTCOME_ENTRY_BYTES {
                break;
            }
            size = next;
            count += 1;
        }
        let mut body = Vec::with_capacity(size);
        body.extend_from_slice(HEAD);
        for (i, outcome) in rest[..count].iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(outcome);
        }
        body.extend_from_slice(TAIL);
        entries.push(Bytes::from(body));
        rest = &rest[count..];
    }
    entries
}

/// Why a message of the outcome stream cannot be read as outcomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnreadableOutcomes {
    /// An entry in a format this build does not read: a reader stops
    /// rather than miss its outcomes.
    #[error("entry of outcomes in format {0}, newer than this allot reads ({OUTCOMES_FORMAT})")]
    NewerFormat(u32),
    #[error("not an outcome event or an entry of outcomes: {0}")]
    Invalid(String),
}

/// The outcomes in one stored message of the outcome stream: an entry's,
/// an outcome stored alone, or none (a fence marker).
pub fn outcomes_in(
    subjects: &Subjects,
    subject: &str,
    payload: &[u8],
) -> Result<Vec<OutcomeEvent>, UnreadableOutcomes> {
    let invalid = |e: serde_json::Error| UnreadableOutcomes::Invalid(e.to_string());
    if subjects.is_outcomes_entry(subject) {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let Version { v } = serde_json::from_slice(payload).map_err(invalid)?;
        if v > OUTCOMES_FORMAT {
            return Err(UnreadableOutcomes::NewerFormat(v));
        }
        let entry: OutcomesEntry = serde_json::from_slice(payload).map_err(invalid)?;
        return Ok(entry.outcomes);
    }
    let outcome_prefix = format!("{}.outcome.", subjects.prefix());
    if subject.starts_with(&outcome_prefix) {
        return serde_json::from_slice(payload)
            .map(|o| vec![o])
            .map_err(invalid);
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::OutcomeKind;

    fn outcome(bid: &str) -> OutcomeEvent {
        serde_json::from_value(serde_json::json!({
            "type": "cancelled", "bid_id": bid, "auction_id": "a1", "bidder_id": "u",
            "amount": 5, "try_seq": 3, "try_index": 1,
            "tried_at": "2026-12-05T00:00:00Z", "decided_at": "2026-12-05T00:00:01Z",
            "reason": "capacity_full"
        }))
        .unwrap()
    }

    #[test]
    fn entries_read_back_as_the_outcomes_written_in_order() {
        let subjects = Subjects::default();
        let written: Vec<_> = (0..10).map(|i| outcome(&format!("b{i}"))).collect();
        let payloads: Vec<Vec<u8>> = written
            .iter()
            .map(|o| serde_json::to_vec(o).unwrap())
            .collect();
        let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let entries = outcome_entries(&slices);
        assert_eq!(entries.len(), 1);
        let subject = subjects.outcomes_entry(subjects.partition("a1"));
        let read = outcomes_in(&subjects, &subject, &entries[0]).unwrap();
        assert_eq!(read, written);
        // An outcome stored alone, and a fence marker.
        let alone = subjects.outcome("a1", OutcomeKind::Cancelled);
        assert_eq!(
            outcomes_in(&subjects, &alone, &payloads[0]).unwrap(),
            written[..1]
        );
        let fence = subjects.fence(0, 0);
        assert!(outcomes_in(&subjects, &fence, b"{}").unwrap().is_empty());
    }

    #[test]
    fn entries_keep_to_their_limits() {
        let one = serde_json::to_vec(&outcome("b")).unwrap();
        let many = vec![one.as_slice(); MAX_OUTCOMES_PER_ENTRY + 1];
        let entries = outcome_entries(&many);
        assert!(entries.len() >= 2);
        let subjects = Subjects::default();
        let subject = subjects.outcomes_entry(0);
        let mut total = 0;
        for e in &entries {
            assert!(e.len() <= MAX_OUTCOME_ENTRY_BYTES);
            total += outcomes_in(&subjects, &subject, e).unwrap().len();
        }
        assert_eq!(total, MAX_OUTCOMES_PER_ENTRY + 1);
        assert!(outcome_entries(&[]).is_empty());
        // And by bytes: long ids make fewer outcomes fit.
        let mut long = outcome("b");
        long.bidder_id = "u".repeat(400);
        let long = serde_json::to_vec(&long).unwrap();
        let entries = outcome_entries(&vec![long.as_slice(); 2000]);
        assert!(entries.len() >= 2);
        let mut total = 0;
        for e in &entries {
            assert!(e.len() <= MAX_OUTCOME_ENTRY_BYTES);
            total += outcomes_in(&subjects, &subject, e).unwrap().len();
        }
        assert_eq!(total, 2000);
    }

    #[test]
    fn a_newer_entry_is_not_skipped() {
        let subjects = Subjects::default();
        let subject = subjects.outcomes_entry(0);
        let newer = br#"{"type":"outcomes","v":2,"outcomes":[],"more":1}"#;
        assert_eq!(
            outcomes_in(&subjects, &subject, newer),
            Err(UnreadableOutcomes::NewerFormat(2))
        );
        assert!(matches!(
            outcomes_in(&subjects, &subject, b"nonsense"),
            Err(UnreadableOutcomes::Invalid(_))
        ));
    }
}
