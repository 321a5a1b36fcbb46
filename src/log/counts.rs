//! How many tries and outcomes each auction has. Tries share entries with
//! the other auctions of their partition, so no subject counts them: the
//! partition's verifier keeps a count per auction up to the last entry it
//! applied, and the entries after that are read and counted here.
//! Outcomes stored alone (before entries of outcomes) are counted per
//! subject by the server; entries of outcomes are read and counted here.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::Context;

use super::read::{for_each_after, per_subject, read_after};
use async_nats::jetstream::stream::DirectGetErrorKind;

use crate::error::{Error, ErrorKind};
use crate::wire::{outcomes_in, LogEntry, LogEvent, OutcomeKind, Subjects, TriesReply};

/// How long the verifier has to answer; without an answer the partition's
/// whole log is counted here.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Tries per auction of one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TryCounts {
    /// Tries in the log, per auction.
    pub tries: BTreeMap<String, u64>,
    /// Of those, the tries past the last entry the verifier applied.
    pub not_reached: BTreeMap<String, u64>,
}

/// Counts the tries of partition `partition`'s auctions, or of
/// `auction_id` alone.
pub async fn try_counts(
    js: &Context,
    subjects: &Subjects,
    partition: u32,
    auction_id: Option<&str>,
) -> Result<TryCounts, Error> {
    let asked = tokio::time::timeout(
        ASK_TIMEOUT,
        js.client().request(
            subjects.tries_count(partition, auction_id),
            bytes::Bytes::new(),
        ),
    )
    .await;
    let known = match asked {
        Ok(Ok(reply)) => serde_json::from_slice::<TriesReply>(&reply.payload).unwrap_or_else(|e| {
            tracing::warn!(error = %e, partition, "unreadable try counts from the verifier");
            TriesReply::default()
        }),
        _ => TriesReply::default(),
    };
    let mut counts = TryCounts {
        tries: known.tries,
        not_reached: BTreeMap::new(),
    };
    let filters = match auction_id {
        Some(a) => vec![subjects.try_event(a), subjects.tries_entry(partition)],
        None => vec![
            format!("{}.try.{partition}.*", subjects.prefix()),
            subjects.tries_entry(partition),
        ],
    };
    // Most often the verifier has counted everything: one direct get each
    // says so, with no consumer to create.
    let stream = js
        .get_stream(subjects.tries_stream())
        .await
        .map_err(Error::wrap(ErrorKind::Nats, subjects.tries_stream()))?;
    let mut last = 0;
    for filter in &filters {
        match stream.direct_get_last_for_subject(filter.as_str()).await {
            Ok(m) => last = last.max(m.sequence),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
            Err(e) => return Err(Error::with_source(ErrorKind::Nats, e).context(filter.clone())),
        }
    }
    if last <= known.through {
        return Ok(counts);
    }
    let tail = read_after(js, &subjects.tries_stream(), filters, known.through).await?;
    for m in &tail {
        for entry in LogEntry::read(subjects, &m.subject, &m.payload, m.time) {
            let auction = match &entry {
                LogEntry::Event(LogEvent::Try(t)) | LogEntry::InvalidTry(t) => &t.auction_id,
                _ => continue,
            };
            if auction_id.is_some_and(|a| a != auction) {
                continue;
            }
            *counts.tries.entry(auction.clone()).or_default() += 1;
            *counts.not_reached.entry(auction.clone()).or_default() += 1;
        }
    }
    Ok(counts)
}

/// Tries per auction of every partition.
pub async fn all_try_counts(
    js: &Context,
    subjects: &Subjects,
) -> Result<BTreeMap<String, u64>, Error> {
    let counted = futures::future::join_all(
        (0..subjects.partitions()).map(|p| try_counts(js, subjects, p, None)),
    )
    .await;
    let mut all = BTreeMap::new();
    for counts in counted {
        all.extend(counts?.tries);
    }
    Ok(all)
}

/// One auction's outcomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decided {
    pub confirmed: u64,
    pub cancelled: u64,
}

impl Decided {
    fn add(&mut self, kind: OutcomeKind, n: u64) {
        match kind {
            OutcomeKind::Confirmed => self.confirmed += n,
            OutcomeKind::Cancelled => self.cancelled += n,
        }
    }
}

/// Outcomes per auction in the outcome stream, of `auction_id` alone or of
/// every auction. Reading the entries costs a pass over them (over the
/// auction's partition's, for one auction): slower as the stream grows,
/// not wrong. A process that counts again and again keeps an
/// [`OutcomeCounter`] instead.
pub async fn outcome_counts(
    js: &Context,
    subjects: &Subjects,
    auction_id: Option<&str>,
) -> Result<BTreeMap<String, Decided>, Error> {
    let [alone, entries] =
        <[String; 2]>::try_from(subjects.outcome_filters(auction_id)).expect("two outcome filters");
    let mut counts = counted_alone(js, subjects, &alone).await?;
    count_entries(js, subjects, entries, &mut 0, auction_id, &mut counts).await?;
    Ok(counts)
}

/// Adds the outcomes (of `auction_id` alone, if given) in the entries on
/// `filter` stored after `*through` to `counts`, moving `*through` along
/// with each entry read, so that a read cut short counts none twice.
async fn count_entries(
    js: &Context,
    subjects: &Subjects,
    filter: String,
    through: &mut u64,
    auction_id: Option<&str>,
    counts: &mut BTreeMap<String, Decided>,
) -> Result<(), Error> {
    let name = subjects.outcomes_stream();
    for_each_after(js, &name, vec![filter], *through, |m| {
        *through = (*through).max(m.seq);
        for o in outcomes_in(subjects, &m.subject, &m.payload).unwrap_or_default() {
            if auction_id.is_none_or(|a| a == o.auction_id) {
                counts.entry(o.auction_id).or_default().add(o.kind, 1);
            }
        }
    })
    .await
}

/// Every auction's outcomes, kept up to date by reading only the entries
/// stored since the last count (outcomes stored alone are counted by the
/// server, afresh each time). It counts what it has read: entries purged
/// below its position (a retention cut, docs/operating.md) stay counted
/// until the process starts again, as the cut's procedure has it do.
#[derive(Debug, Default)]
pub struct OutcomeCounter {
    /// The last outcome-stream sequence read.
    through: u64,
    /// Outcomes in the entries read, per auction.
    in_entries: BTreeMap<String, Decided>,
}

impl OutcomeCounter {
    /// Reads the entries stored since the last count; then the outcomes of
    /// `auction_id` (with those of the other auctions in the entries read)
    /// or of every auction.
    pub async fn count(
        &mut self,
        js: &Context,
        subjects: &Subjects,
        auction_id: Option<&str>,
    ) -> Result<BTreeMap<String, Decided>, Error> {
        let [_, entries] =
            <[String; 2]>::try_from(subjects.outcome_filters(None)).expect("two outcome filters");
        let alone = subjects.outcomes(auction_id);
        let (through, in_entries) = (&mut self.through, &mut self.in_entries);
        count_entries(js, subjects, entries, through, None, in_entries).await?;
        let mut counts = counted_alone(js, subjects, &alone).await?;
        for (auction, d) in &self.in_entries {
            let c = counts.entry(auction.clone()).or_default();
            c.confirmed += d.confirmed;
            c.cancelled += d.cancelled;
        }
        Ok(counts)
    }
}

/// Outcomes stored alone on `filter`, per auction, as the server counts
/// them per subject.
async fn counted_alone(
    js: &Context,
    subjects: &Subjects,
    filter: &str,
) -> Result<BTreeMap<String, Decided>, Error> {
    let name = subjects.outcomes_stream();
    let stream = js
        .get_stream(&name)
        .await
        .map_err(Error::wrap(ErrorKind::Nats, name.clone()))?;
    let mut counts: BTreeMap<String, Decided> = BTreeMap::new();
    let prefix = format!("{}.outcome.", subjects.prefix());
    for (subject, n) in per_subject(&stream, filter).await? {
        let Some((auction, kind)) = subject
            .strip_prefix(&prefix)
            .and_then(|r| r.split_once('.'))
        else {
            continue;
        };
        let kind = match kind {
            "confirmed" => OutcomeKind::Confirmed,
            "cancelled" => OutcomeKind::Cancelled,
            _ => continue,
        };
        counts.entry(auction.to_string()).or_default().add(kind, n);
    }
    Ok(counts)
}
