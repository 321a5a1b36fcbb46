//! The periodic samples of a run, and its summary report.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::check;
use super::engine::{Engine, Strategy};
use super::lifecycle;
use super::progress::{Progress, Snapshot};
use super::report::{Latency, Report, Tick, Trend};
use crate::wire::label;

use super::run::Shared;

/// Samples the counters into a timeline, and shows progress.
pub(super) async fn sample(
    shared: Arc<Shared>,
    strategy: &'static str,
    show: bool,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<Tick> {
    let every = Duration::from_millis(250);
    let mut progress = show.then(|| Progress::new(strategy, shared.workload.requests));
    let mut ticks = Vec::new();
    let mut last = (0, 0, 0);
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = interval.tick() => false,
            _ = &mut stop => true,
        };
        let now = (
            shared.replied.load(Ordering::Relaxed),
            shared.decided.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed),
        );
        ticks.push(Tick {
            at_secs: shared.start.elapsed().as_secs_f64(),
            replied: now.0 - last.0,
            decided: now.1 - last.1,
            errors: now.2 - last.2,
        });
        last = now;
        if let Some(p) = &mut progress {
            p.update(Snapshot {
                sent: shared.sent.load(Ordering::Relaxed),
                replied: now.0,
                accepted: shared.accepted.load(Ordering::Relaxed),
                decided: now.1,
                errors: now.2,
            });
            if stopping {
                p.finish();
            }
        }
        if stopping {
            return ticks;
        }
    }
}

pub(super) fn summarize(
    shared: &Shared,
    engine: &Engine,
    strategy: Strategy,
    started_at: chrono::DateTime<chrono::Utc>,
    send_secs: f64,
    timeline: Vec<Tick>,
) -> Report {
    let w = &shared.workload;
    let records = shared.records.lock().expect("lock poisoned");
    let mut rejected = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let mut cancelled = BTreeMap::new();
    let (mut bids, mut accepted, mut confirmed) = (0, 0, 0);
    for r in records.iter().flatten() {
        bids += 1;
        if r.facts.accepted {
            accepted += 1;
        } else if let Some(reason) = &r.rejected {
            *rejected.entry(label(reason)).or_insert(0) += 1;
        } else if let Some(e) = &r.error {
            *errors.entry(e.clone()).or_insert(0) += 1;
        }
        match r.facts.outcomes.first() {
            Some(o) if o.rank.is_some() => confirmed += 1,
            Some(o) => *cancelled.entry(label(&o.reason)).or_insert(0) += 1,
            None => {}
        }
    }
    let facts = records.iter().map(|r| r.as_ref().map(|r| &r.facts));
    let invariants = check::check(&shared.specs, facts, shared.stray.load(Ordering::Relaxed));
    let lifecycle = lifecycle::tally(
        records.iter().flatten().map(|r| &r.facts),
        shared.held_notices.load(Ordering::Relaxed),
    );
    drop(records);

    let decide_secs = shared.last_outcome_us.load(Ordering::Relaxed) as f64 / 1e6;
    let decided = shared.decided.load(Ordering::Relaxed);
    let requests = shared.sent.load(Ordering::Relaxed);
    Report {
        strategy: strategy.name().into(),
        workload: w.clone(),
        started_at,
        send_secs,
        decide_secs,
        offered_rate: w.rate,
        requests,
        bids,
        replied_per_sec: shared.replied.load(Ordering::Relaxed) as f64 / send_secs.max(1e-9),
        decided_per_sec: decided as f64 / decide_secs.max(1e-9),
        accepted,
        rejected,
        errors,
        confirmed,
        cancelled,
        reply_latency: Latency::of(&shared.reply_latency.lock().expect("lock poisoned")),
        outcome_latency: Latency::of(&shared.outcome_latency.lock().expect("lock poisoned")),
        admitted_latency: Latency::of(&shared.admitted_latency.lock().expect("lock poisoned")),
        trend: trend(&timeline, decide_secs),
        timeline,
        contention: engine.contention(),
        baseline: None,
        baseline_ratio: None,
        invariants,
        lifecycle,
    }
}

/// Decided bids per second in the first and the last tenth of the time to
/// the last outcome.
fn trend(ticks: &[Tick], decide_secs: f64) -> Option<Trend> {
    let tenth = decide_secs / 10.0;
    let rate = |from: f64, to: f64| {
        let mut prev = 0.0;
        let (mut n, mut secs) = (0u64, 0.0);
        for t in ticks {
            let mid = (prev + t.at_secs) / 2.0;
            if mid >= from && mid < to {
                n += t.decided;
                secs += t.at_secs - prev;
            }
            prev = t.at_secs;
        }
        (secs > 0.0).then(|| n as f64 / secs)
    };
    // Too short a run has no tenths worth comparing.
    if tenth < 0.5 {
        return None;
    }
    let first = rate(0.0, tenth)?;
    let last = rate(decide_secs - tenth, decide_secs)?;
    Some(Trend {
        first_tenth_per_sec: first,
        last_tenth_per_sec: last,
        ratio: last / first.max(1e-9),
    })
}
