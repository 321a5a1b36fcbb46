//! `allot audit`: decide the log again, offline, and compare the result with
//! the outcome stream and, if given, the verifier's snapshot.
//!
//! The verifier is a deterministic fold over the log, so a fresh replay must
//! give exactly what was published: one outcome per decided bid, with the
//! same verdict from the same try, and nothing else. Any difference means a
//! lost, doubled or wrong outcome. The comparison ([`compare`]) is pure;
//! [`run`] reads the streams and the snapshot for it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use async_nats::jetstream;
use chrono::{DateTime, Utc};

use crate::core::{Decision, Ledger, Verdict};
use crate::error::{Error, ErrorKind, Result};
use crate::log::{read_all, StoredMessage};
use crate::snapshot::Snapshot;
use crate::wire::{outcomes_in, LogEntry, LogEvent, OutcomeEvent, Subjects, TryAt};

/// What an audit found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// Log entries replayed.
    pub log_entries: usize,
    /// Auctions with at least one decided bid.
    pub auctions: usize,
    /// Bids the replay decided.
    pub decided: usize,
    /// Outcome events read.
    pub outcomes: usize,
    /// Decisions read from the snapshot, when one was given.
    pub snapshot: Option<usize>,
    /// Each difference, in words.
    pub differences: Vec<String>,
}

/// One partition's snapshot as the audit sees it.
pub struct SnapshotView {
    /// The partition it decides, and the log's number of partitions.
    pub partition: (u32, u32),
    /// The last log sequence the snapshot has applied.
    pub last_seq: u64,
    /// Its decisions.
    pub decisions: Vec<OutcomeEvent>,
}

/// Replays `log` (place, storage time and entry, in log order) and compares the
/// decisions with the published `outcomes` and the `snapshots`' (one per
/// partition; none when no data directory was given).
pub fn compare(
    log: &[(TryAt, DateTime<Utc>, LogEntry)],
    outcomes: &[OutcomeEvent],
    snapshots: Option<&[SnapshotView]>,
) -> Findings {
    let mut ledger = Ledger::new();
    // By (auction, bid): the decision, and the sequence of the log event
    // that made it (in a ranked auction, a close decides older tries).
    let mut decisions: BTreeMap<(String, String), (Decision, u64)> = BTreeMap::new();
    let mut differences = Vec::new();
    for (at, stored_at, entry) in log {
        if let LogEntry::NewerFormat(v) = entry {
            differences.push(format!(
                "log entry {} is in format {v}, newer than this allot reads: the replay stops there",
                at.seq
            ));
            break;
        }
        let Some(step) = ledger.apply_entry(entry, *at, *stored_at) else {
            continue;
        };
        let own = match entry {
            LogEntry::Event(LogEvent::Try(t)) | LogEntry::InvalidTry(t) => Some(t),
            _ => None,
        };
        for d in step.decisions(own, *at) {
            let key = (d.bid.auction_id.clone(), d.bid.bid_id.clone());
            decisions.insert(key, (d, at.seq));
        }
    }
    let replayed: BTreeMap<(&str, &str), (&Decision, u64)> = decisions
        .iter()
        .map(|((a, b), (d, at))| ((a.as_str(), b.as_str()), (d, *at)))
        .collect();
    let mut published: HashMap<(&str, &str), Vec<&OutcomeEvent>> = HashMap::new();
    for o in outcomes {
        published
            .entry((&o.auction_id, &o.bid_id))
            .or_default()
            .push(o);
    }
    for (&(auction, bid), &(d, _)) in &replayed {
        let what = format!("bid {bid:?} in auction {auction:?}");
        match published.get(&(auction, bid)).map(Vec::as_slice) {
            None | Some([]) => differences.push(format!(
                "{what}: the log decides {} (try {}) but no outcome was published",
                show(d.verdict),
                d.at
            )),
            Some([o]) => {
                if let Some(problem) = disagrees(o, d) {
                    differences.push(format!("{what}: published {problem}"));
                }
            }
            Some(many) => differences.push(format!(
                "{what}: {} outcomes were published, not one",
                many.len()
            )),
        }
    }
    for ((auction, bid), list) in &published {
        if !replayed.contains_key(&(*auction, *bid)) {
            differences.push(format!(
                "bid {bid:?} in auction {auction:?}: {} outcome(s) published, but no try in the log decides it",
                list.len()
            ));
        }
    }
    for snapshot in snapshots.unwrap_or_default() {
        let (partition, partitions) = snapshot.partition;
        let mut stored: HashMap<(&str, &str), &OutcomeEvent> = HashMap::new();
        for o in &snapshot.decisions {
            let what = format!("bid {:?} in auction {:?}", o.bid_id, o.auction_id);
            if stored.insert((&o.auction_id, &o.bid_id), o).is_some() {
                differences.push(format!("{what}: the snapshot holds two decisions"));
            }
            match replayed.get(&(o.auction_id.as_str(), o.bid_id.as_str())) {
                None => differences.push(format!(
                    "{what}: in the snapshot, but no try in the log decides it"
                )),
                Some(&(d, _)) => {
                    if let Some(problem) = disagrees(o, d) {
                        differences.push(format!("{what}: the snapshot holds {problem}"));
                    }
                }
            }
        }
        for (&(auction, bid), &(d, decided_at)) in &replayed {
            let covered = crate::wire::partition_of(auction, partitions) == partition;
            if covered && decided_at <= snapshot.last_seq && !stored.contains_key(&(auction, bid)) {
                differences.push(format!(
                    "bid {bid:?} in auction {auction:?}: the snapshot of partition {partition} has applied the log to {} but lacks the decision {} (try {})",
                    snapshot.last_seq,
                    show(d.verdict),
                    d.at
                ));
            }
        }
    }
    differences.sort();
    let auctions = replayed
        .keys()
        .map(|(a, _)| *a)
        .collect::<std::collections::HashSet<_>>()
        .len();
    Findings {
        log_entries: log.len(),
        auctions,
        decided: replayed.len(),
        outcomes: outcomes.len(),
        snapshot: snapshots.map(|s| s.iter().map(|s| s.decisions.len()).sum()),
        differences,
    }
}

/// How a recorded decision differs from the replay's, if it does.
fn disagrees(o: &OutcomeEvent, d: &Decision) -> Option<String> {
    let recorded = Verdict::of(o);
    let at = TryAt::new(o.try_seq, o.try_index);
    if recorded == Some(d.verdict) && at == d.at && o.amount == d.bid.amount {
        return None;
    }
    let recorded = recorded.map_or_else(|| format!("{:?} without a rank", o.kind), show);
    Some(format!(
        "{recorded} (try {at}, amount {}) where the log decides {} (try {}, amount {})",
        o.amount,
        show(d.verdict),
        d.at,
        d.bid.amount
    ))
}

/// The entries of the log's messages, each at its place, in log order;
/// with `auction_id`, only that auction's (a tries entry holds those of
/// every auction in its partition).
fn entries(
    subjects: &Subjects,
    log: &[StoredMessage],
    auction_id: Option<&str>,
) -> Vec<(TryAt, DateTime<Utc>, LogEntry)> {
    let mut out = Vec::with_capacity(log.len());
    for m in log {
        let read = LogEntry::read(subjects, &m.subject, &m.payload, m.time);
        for (i, entry) in read.into_iter().enumerate() {
            let theirs = match (&entry, auction_id) {
                (LogEntry::Event(e), Some(a)) => e.auction_id() == a,
                (LogEntry::InvalidTry(t), Some(a)) => t.auction_id == a,
                _ => true,
            };
            if theirs {
                let at = TryAt::new(m.seq, u32::try_from(i).unwrap_or(u32::MAX));
                out.push((at, m.time, entry));
            }
        }
    }
    out
}

fn show(v: Verdict) -> String {
    match v {
        Verdict::Confirmed { rank } => format!("confirmed rank {rank}"),
        Verdict::Cancelled { reason } => format!("cancelled {}", crate::wire::label(&reason)),
    }
}

/// The partition snapshots a verifier's data directory holds: those of
/// the partitions it decides or decided earlier.
fn partition_snapshots(dir: &Path, partitions: u32) -> Result<Vec<(u32, std::path::PathBuf)>> {
    let found: Vec<(u32, std::path::PathBuf)> = (0..partitions)
        .map(|p| (p, crate::wire::names::partition_dir(dir, p)))
        .filter(|(_, d)| d.join(crate::snapshot::FILE_NAME).exists())
        .collect();
    if found.is_empty() {
        return Err(Error::new(
            ErrorKind::Snapshot,
            format!("no verifier snapshot in {}", dir.display()),
        ));
    }
    Ok(found)
}

/// Reads the log, the outcome stream and (with `data_dir`) the snapshots,
/// for one auction or all, and compares them.
pub async fn run(
    js: &jetstream::Context,
    subjects: &Subjects,
    auction_id: Option<&str>,
    data_dir: Option<&Path>,
) -> Result<Findings> {
    if let Some(a) = auction_id.filter(|a| !crate::wire::valid_id(a)) {
        // Not a subject token: `*` or `a.>` would read other auctions.
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "auction id {a:?} must be 1 to {} characters of [A-Za-z0-9_-]",
                crate::wire::MAX_ID_LEN
            ),
        ));
    }
    let subjects = &crate::streams::log_subjects(js, subjects.clone()).await?;
    // Read the snapshots first: anything they hold is then in the streams.
    let snapshots = match data_dir {
        None => None,
        Some(dir) => {
            let found = partition_snapshots(dir, subjects.partitions())?;
            let auction = auction_id.map(str::to_string);
            let partitions = subjects.partitions();
            let views = tokio::task::spawn_blocking(move || {
                let mut views = Vec::new();
                for (partition, dir) in found {
                    let snapshot = Snapshot::open_read_only(&dir)?;
                    views.push(SnapshotView {
                        partition: (partition, partitions),
                        last_seq: snapshot.position()?.last_seq,
                        decisions: snapshot.decisions(auction.as_deref())?,
                    });
                }
                Ok::<_, crate::snapshot::SnapshotError>(views)
            })
            .await
            .map_err(Error::wrap(ErrorKind::Snapshot, "snapshot thread"))??;
            Some(views)
        }
    };
    let log_filters = match auction_id {
        Some(a) => vec![
            subjects.auction_event(a),
            subjects.try_event(a),
            subjects.tries_entry(subjects.partition(a)),
        ],
        None => vec![">".to_string()],
    };
    let log = read_all(js, &subjects.tries_stream(), log_filters).await?;
    let log = entries(subjects, &log, auction_id);
    let outcome_filters = subjects.outcome_filters(auction_id);
    let outcomes = read_all(js, &subjects.outcomes_stream(), outcome_filters).await?;
    let mut events = Vec::with_capacity(outcomes.len());
    let mut unreadable = Vec::new();
    for m in &outcomes {
        match outcomes_in(subjects, &m.subject, &m.payload) {
            Ok(found) => events.extend(
                found
                    .into_iter()
                    .filter(|o| auction_id.is_none_or(|a| a == o.auction_id)),
            ),
            Err(e) => unreadable.push(format!(
                "outcome stream entry {} on {:?}: {e}",
                m.seq, m.subject
            )),
        }
    }
    let mut findings = compare(&log, &events, snapshots.as_deref());
    findings.outcomes = events.len();
    findings.differences.extend(unreadable);
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AuctionSpec, CancelReason, OpenEvent, OutcomeKind, TryEvent};
    use chrono::Utc;

    fn log() -> Vec<(TryAt, DateTime<Utc>, LogEntry)> {
        let open = LogEvent::Open(OpenEvent {
            auction_id: "a".into(),
            spec: AuctionSpec::with_capacity(1),
            opened_at: Utc::now(),
        });
        let try_ = |bid: &str| {
            LogEntry::Event(LogEvent::Try(TryEvent {
                bid_id: bid.into(),
                auction_id: "a".into(),
                bidder_id: format!("u-{bid}"),
                amount: 5,
                tried_at: Utc::now(),
            }))
        };
        let now = Utc::now();
        vec![
            (1.into(), now, LogEntry::Event(open)),
            (2.into(), now, try_("b1")),
            (3.into(), now, try_("b2")),
        ]
    }

    /// A try's identity is its entry's sequence and its place in the
    /// entry: an outcome naming the right entry but the wrong place is a
    /// difference.
    #[test]
    fn tries_sharing_an_entry_are_told_apart_by_their_place() {
        let subjects = Subjects::default().with_partitions(1).unwrap();
        let now = Utc::now();
        let t = |bid: &str| TryEvent {
            bid_id: bid.into(),
            auction_id: "a".into(),
            bidder_id: format!("u-{bid}"),
            amount: 5,
            tried_at: now,
        };
        let entry = crate::wire::TriesEntry::new(vec![t("b1"), t("b2")]);
        let mut log = log();
        log.truncate(1);
        let payload = serde_json::to_vec(&entry).unwrap();
        for (i, e) in LogEntry::read(&subjects, &subjects.tries_entry(0), &payload, now)
            .into_iter()
            .enumerate()
        {
            log.push((TryAt::new(2, i as u32), now, e));
        }
        let mut second = outcome("b2", 2, None);
        second.try_index = 1;
        let right = [outcome("b1", 2, Some(1)), second.clone()];
        assert_eq!(
            compare(&log, &right, None).differences,
            Vec::<String>::new()
        );
        second.try_index = 0;
        let wrong = [outcome("b1", 2, Some(1)), second];
        let f = compare(&log, &wrong, None);
        assert_eq!(f.differences.len(), 1, "{:?}", f.differences);
        assert!(f.differences[0].contains("try 2.0") && f.differences[0].contains("try 2.1"));
    }

    fn outcome(bid: &str, seq: u64, rank: Option<u32>) -> OutcomeEvent {
        OutcomeEvent {
            kind: if rank.is_some() {
                OutcomeKind::Confirmed
            } else {
                OutcomeKind::Cancelled
            },
            bid_id: bid.into(),
            auction_id: "a".into(),
            bidder_id: format!("u-{bid}"),
            amount: 5,
            try_seq: seq,
            try_index: 0,
            tried_at: Utc::now(),
            decided_at: Utc::now(),
            rank,
            reason: rank.is_none().then_some(CancelReason::CapacityFull),
        }
    }

    #[test]
    fn a_faithful_history_has_no_differences() {
        let outcomes = [outcome("b1", 2, Some(1)), outcome("b2", 3, None)];
        let snapshot = SnapshotView {
            partition: (0, 1),
            last_seq: 3,
            decisions: outcomes.to_vec(),
        };
        let f = compare(&log(), &outcomes, Some(std::slice::from_ref(&snapshot)));
        assert_eq!(f.differences, Vec::<String>::new());
        assert_eq!((f.decided, f.outcomes, f.auctions), (2, 2, 1));
    }

    #[test]
    fn lost_doubled_wrong_and_stray_outcomes_are_each_reported() {
        let lost = compare(&log(), &[outcome("b1", 2, Some(1))], None);
        assert!(
            lost.differences[0].contains("\"b2\"") && lost.differences[0].contains("no outcome")
        );

        let doubled = [
            outcome("b1", 2, Some(1)),
            outcome("b2", 3, None),
            outcome("b2", 3, None),
        ];
        let f = compare(&log(), &doubled, None);
        assert_eq!(f.differences.len(), 1);
        assert!(f.differences[0].contains("2 outcomes"));

        // Two winners for one slot: the second is not what the log decides.
        let wrong = [outcome("b1", 2, Some(1)), outcome("b2", 3, Some(2))];
        let f = compare(&log(), &wrong, None);
        assert_eq!(f.differences.len(), 1);
        assert!(f.differences[0].contains("confirmed rank 2"));

        let stray = [
            outcome("b1", 2, Some(1)),
            outcome("b2", 3, None),
            outcome("b9", 9, None),
        ];
        let f = compare(&log(), &stray, None);
        assert_eq!(f.differences.len(), 1);
        assert!(f.differences[0].contains("no try in the log"));
    }

    #[test]
    fn a_snapshot_behind_is_fine_but_a_gap_or_a_wrong_decision_is_not() {
        let outcomes = [outcome("b1", 2, Some(1)), outcome("b2", 3, None)];
        let behind = SnapshotView {
            partition: (0, 1),
            last_seq: 2,
            decisions: vec![outcome("b1", 2, Some(1))],
        };
        assert!(
            compare(&log(), &outcomes, Some(std::slice::from_ref(&behind)))
                .differences
                .is_empty()
        );
        let gap = SnapshotView {
            partition: (0, 1),
            last_seq: 3,
            decisions: vec![outcome("b1", 2, Some(1))],
        };
        let f = compare(&log(), &outcomes, Some(std::slice::from_ref(&gap)));
        assert_eq!(f.differences.len(), 1);
        assert!(f.differences[0].contains("lacks"));
        let wrong = SnapshotView {
            partition: (0, 1),
            last_seq: 3,
            decisions: vec![outcome("b1", 2, None), outcome("b2", 3, None)],
        };
        let f = compare(&log(), &outcomes, Some(std::slice::from_ref(&wrong)));
        assert_eq!(f.differences.len(), 1);
        assert!(f.differences[0].contains("the snapshot holds cancelled"));
    }
}
