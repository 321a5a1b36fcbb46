//! The client-side history of a run (`allot loadtest --history`): one JSON
//! line per distinct bid with every request sent for it, what each was
//! told and when, and every outcome read for it and when. A checker
//! outside the service (`scripts/campaign`) reads it against the streams.
//!
//! An attempt is `[sent_ms, answered_ms, answer]`, with the error's
//! message as a fourth element when it has one. The first line is a header: `{"header": true, "started_at", "strategy",
//! "send_secs"}`; times in the bid lines are milliseconds from
//! `started_at` (the moment the first bid was due).

use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::report::Report;
use super::run::Shared;
use super::workload::bid_id;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{label, timestamp};

pub(super) fn write(shared: &Shared, report: &Report, path: &Path) -> Result<()> {
    let failed = |e: std::io::Error| {
        Error::with_source(ErrorKind::Config, e).context(format!("history {}", path.display()))
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(failed)?);
    let ms = |us: u64| us as f64 / 1e3;
    let header = json!({
        "header": true,
        "started_at": timestamp::micros(report.started_at),
        "strategy": report.strategy,
        "send_secs": report.send_secs,
        "closes_at": shared.specs.first().and_then(|s| s.closes_at),
    });
    writeln!(out, "{header}").map_err(failed)?;
    let records = shared.records.lock().expect("lock poisoned");
    for (i, record) in records.iter().enumerate() {
        let Some(r) = record else { continue };
        let outcomes: Vec<_> = r
            .facts
            .outcomes
            .iter()
            .zip(&r.outcomes_at)
            .map(|(o, at)| {
                json!({
                    "kind": label(&o.kind),
                    "rank": o.rank,
                    "reason": o.reason.as_ref().map(label),
                    "try": o.try_seq.to_string(),
                    "tried_at": timestamp::micros(o.tried_at),
                    "at_ms": ms(*at),
                })
            })
            .collect();
        let attempts: Vec<_> = r
            .attempts
            .iter()
            .map(|a| match a.message.is_empty() {
                true => json!([ms(a.sent_us), ms(a.done_us), a.answer]),
                false => json!([ms(a.sent_us), ms(a.done_us), a.answer, a.message]),
            })
            .collect();
        let line = json!({
            "bid_id": bid_id(i as u64),
            "auction_id": shared.workload.auction_id(r.facts.auction),
            "due_ms": ms(r.due.saturating_duration_since(shared.start).as_micros() as u64),
            "try": r.facts.try_seq.map(|t| t.to_string()),
            "attempts": attempts,
            "outcomes": outcomes,
        });
        writeln!(out, "{line}").map_err(failed)?;
    }
    out.flush().map_err(failed)
}
