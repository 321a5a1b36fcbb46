//! Running a workload against the strategies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures::StreamExt;
use hdrhistogram::Histogram;

use super::check::{self, BidFacts, SeenOutcome};
use super::engine::{retrying, Engine, Strategy};
use super::lifecycle;
use super::progress::{Progress, Snapshot};
use super::report::{Latency, Report, Tick, Trend};
use super::workload::{bid_index, Planned, WithdrawWhen, Workload};
use super::{baseline, report::Baseline};
use crate::client::AllotClient;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{label, timestamp, AuctionSpec, BidReply, OutcomeEvent, Policy, RejectReason};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub workload: Workload,
    /// Run each, one after the other, on the same workload.
    pub strategies: Vec<Strategy>,
    /// Measure raw JetStream publishes first.
    pub baseline: bool,
    /// Give up waiting for outcomes after this long without a new one.
    pub settle: Duration,
    /// Attempts per bid: a bid with no answer is resent with its `bid_id`.
    pub attempts: u32,
    /// Show progress on stderr.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workload: Workload::default(),
            strategies: vec![Strategy::Tcc],
            baseline: false,
            settle: Duration::from_secs(30),
            attempts: 3,
            progress: true,
        }
    }
}

/// Every strategy's report, and the baseline they share.
pub struct Outcome {
    pub baseline: Option<Baseline>,
    pub reports: Vec<Report>,
}

impl Outcome {
    /// True when every strategy passed the invariant check.
    pub fn ok(&self) -> bool {
        self.reports.iter().all(|r| r.invariants.ok)
    }
}

/// The latest deadline a run may set: a day is already far beyond any run.
const MAX_CLOSE_AFTER_SECS: f64 = 86_400.0;

/// Refuses options the strategies cannot run.
fn check_options(options: &Options) -> Result<()> {
    let w = &options.workload;
    if w.raises > 0.0 && w.policy != Policy::TopAmount {
        return Err(Error::new(
            ErrorKind::Config,
            "raises: only held bids can be raised, so they need policy top_amount",
        ));
    }
    if w.close_after_secs
        .is_some_and(|s| !(s > 0.0 && s <= MAX_CLOSE_AFTER_SECS))
    {
        return Err(Error::new(
            ErrorKind::Config,
            format!("close after: give 0 to {MAX_CLOSE_AFTER_SECS} seconds"),
        ));
    }
    if let Some(other) = options.strategies.iter().find(|s| **s != Strategy::Tcc) {
        if w.lifecycle() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "strategy {}: its aggregates take plain first_n bids only; policy top_amount, withdraws, early withdraws, raises and a close need strategy tcc",
                    other.name()
                ),
            ));
        }
    }
    Ok(())
}

/// Runs the workload through each strategy in turn.
pub async fn run(client: &AllotClient, options: &Options) -> Result<Outcome> {
    check_options(options)?;
    let baseline = match options.baseline {
        true => {
            let count = options
                .workload
                .requests
                .unwrap_or(100_000)
                .clamp(20_000, 200_000);
            let b = baseline::measure(client.client.clone(), &client.subjects, count, 1024).await?;
            if options.progress {
                eprintln!(
                    "baseline: {:.0} JetStream publishes/s ({} of {} bytes, 1024 in flight)",
                    b.per_sec, b.publishes, b.payload_bytes
                );
            }
            Some(b)
        }
        false => None,
    };
    let mut reports = Vec::new();
    for &strategy in &options.strategies {
        let mut workload = options.workload.clone();
        workload.run_id = format!("{}-{}", workload.run_id, strategy.name());
        let engine = Engine::new(strategy, client).await?;
        let mut report = run_one(client, &engine, strategy, &workload, options).await?;
        report.baseline_ratio = baseline
            .as_ref()
            .map(|b| report.decided_per_sec / b.per_sec);
        report.baseline = baseline.clone();
        reports.push(report);
    }
    Ok(Outcome { baseline, reports })
}

/// One distinct bid, as the run sees it.
struct Record {
    facts: BidFacts,
    /// When its first request was due.
    due: Instant,
    /// Why it was rejected, if it was.
    rejected: Option<RejectReason>,
    /// What went wrong on its last unanswered request, while it has no
    /// answer.
    error: Option<String>,
}

/// State shared by the senders, the outcome reader and the sampler.
pub(super) struct Shared {
    pub(super) workload: Workload,
    /// Every auction as opened, with its `closes_at`.
    specs: Vec<AuctionSpec>,
    /// Accepted replies name the try's place in allot's log (`tcc`); the
    /// aggregate strategies' name their own stream's, which no outcome
    /// shares.
    log_seqs: bool,
    start: Instant,
    records: Mutex<Vec<Option<Record>>>,
    reply_latency: Mutex<Histogram<u64>>,
    outcome_latency: Mutex<Histogram<u64>>,
    sent: AtomicU64,
    replied: AtomicU64,
    accepted: AtomicU64,
    decided: AtomicU64,
    errors: AtomicU64,
    stray: AtomicU64,
    /// Stream sequence of the last message read.
    read_to: AtomicU64,
    /// Microseconds from the start to the last first outcome.
    last_outcome_us: AtomicU64,
    /// `held` notices received for this run's auctions.
    pub(super) held_notices: AtomicU64,
}

impl Shared {
    /// Updates what is known of bid `bid`, if it was sent.
    pub(super) fn facts(&self, bid: u64, update: impl FnOnce(&mut BidFacts)) {
        let mut records = self.records.lock().expect("lock poisoned");
        if let Some(Some(record)) = records.get_mut(bid as usize) {
            update(&mut record.facts);
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds are valid")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

async fn run_one(
    client: &AllotClient,
    engine: &Engine,
    strategy: Strategy,
    w: &Workload,
    options: &Options,
) -> Result<Report> {
    let mut spec = w.spec();
    // The deadline counts from the opening, so that it falls inside the
    // run; its instant on this machine's clock tells the settling below how
    // long held bids may wait for it.
    let close_due = w.close_after_secs.map(|secs| {
        let after = Duration::from_secs_f64(secs);
        spec.closes_at = Some(timestamp::micros(
            chrono::Utc::now() + chrono::Duration::from_std(after).expect("checked: at most a day"),
        ));
        Instant::now() + after
    });
    // Open every auction; the service may still be starting.
    let opening = Instant::now();
    futures::stream::iter(0..w.auctions)
        .map(|i| {
            let id = w.auction_id(i);
            let spec = &spec;
            async move {
                loop {
                    match engine.open(&id, spec).await {
                        Ok(()) => return Ok(()),
                        Err(e)
                            if e.kind() != ErrorKind::Config
                                && opening.elapsed() < Duration::from_secs(15) =>
                        {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<Result<()>>>()
        .await
        .into_iter()
        .collect::<Result<()>>()?;

    let started_at = timestamp::now();
    let shared = Arc::new(Shared {
        workload: w.clone(),
        specs: vec![spec.clone(); w.auctions as usize],
        log_seqs: strategy == Strategy::Tcc,
        start: Instant::now(),
        records: Mutex::new(Vec::with_capacity(w.requests.unwrap_or(0) as usize)),
        reply_latency: Mutex::new(histogram()),
        outcome_latency: Mutex::new(histogram()),
        sent: AtomicU64::new(0),
        replied: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        decided: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stray: AtomicU64::new(0),
        read_to: AtomicU64::new(0),
        last_outcome_us: AtomicU64::new(0),
        held_notices: AtomicU64::new(0),
    });

    // Read outcomes from before the first bid, so none is missed.
    let js = jetstream::new(client.client.clone());
    let stream_name = engine.outcome_stream(&client.subjects);
    let mut stream = js
        .get_stream(&stream_name)
        .await
        .map_err(Error::wrap(ErrorKind::Nats, stream_name.clone()))?;
    let from = stream
        .info()
        .await
        .map_err(Error::wrap(ErrorKind::Nats, stream_name.clone()))?
        .state
        .last_sequence;
    shared.read_to.store(from, Ordering::Relaxed);
    let reader = tokio::spawn(read_outcomes(shared.clone(), stream.clone()));
    let holds = match w.policy {
        Policy::TopAmount => Some(lifecycle::read_holds(client, shared.clone()).await?),
        Policy::FirstN => None,
    };

    let (stop_sampling, sampling_stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(sample(
        shared.clone(),
        strategy.name(),
        options.progress,
        sampling_stopped,
    ));

    send_all(engine, &shared, options).await;
    let send_secs = shared.start.elapsed().as_secs_f64();
    // Held bids are decided at the close: without a deadline, the run
    // closes its ranked auctions once every bid has been sent.
    if w.policy == Policy::TopAmount && close_due.is_none() {
        lifecycle::close_all(engine, w, options.attempts).await?;
    }

    // Settle: every accepted bid decided, and the stream read to its end.
    // Held bids wait for the deadline, so the patience counts from it.
    let mut last_progress = (Instant::now(), 0);
    loop {
        let decided = shared.decided.load(Ordering::Relaxed);
        if decided != last_progress.1 {
            last_progress = (Instant::now(), decided);
        }
        let undecided = {
            let records = shared.records.lock().expect("lock poisoned");
            records
                .iter()
                .flatten()
                .any(|r| r.facts.accepted && r.facts.outcomes.is_empty())
        };
        let waited = last_progress.0.elapsed() > options.settle
            && close_due.is_none_or(|due| due.elapsed() > options.settle);
        if !undecided || waited {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end = stream
        .info()
        .await
        .map_err(Error::wrap(ErrorKind::Nats, stream_name.clone()))?
        .state
        .last_sequence;
    let reading = Instant::now();
    while shared.read_to.load(Ordering::Relaxed) < end && reading.elapsed() < options.settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    if let Some(holds) = holds {
        holds.abort();
    }
    let _ = stop_sampling.send(());
    let timeline = sampler.await.unwrap_or_default();

    Ok(summarize(
        &shared, engine, strategy, started_at, send_secs, timeline,
    ))
}

/// Sends every request of the workload, closed or open loop.
async fn send_all(engine: &Engine, shared: &Arc<Shared>, options: &Options) {
    let w = &shared.workload;
    let limit = w.requests.unwrap_or(u64::MAX);
    let deadline = w
        .duration_secs
        .map(|s| shared.start + Duration::from_secs_f64(s));
    let more = |n: u64| n < limit && deadline.is_none_or(|d| Instant::now() < d);
    match w.rate {
        None => {
            let mut n = 0;
            futures::stream::poll_fn(|_| {
                let next = more(n).then(|| {
                    n += 1;
                    n - 1
                });
                std::task::Poll::Ready(next)
            })
            .map(|n| {
                let due = Instant::now();
                register(shared, n, due);
                send(engine, shared, n, due, options.attempts)
            })
            .buffer_unordered(w.concurrency.max(1))
            .collect::<()>()
            .await;
        }
        Some(rate) => {
            // Every request starts at its due time on the schedule, however
            // late the earlier ones are; at most `concurrency` wait at once.
            let in_flight = Arc::new(tokio::sync::Semaphore::new(w.concurrency.max(1)));
            let mut tasks = futures::stream::FuturesUnordered::new();
            let mut n = 0;
            while more(n) {
                let due = shared.start + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                register(shared, n, due);
                let permit = in_flight.clone().acquire_owned();
                tasks.push(async move {
                    let _permit = permit.await;
                    send(engine, shared, n, due, options.attempts).await
                });
                // Drive the sends already started while waiting for the next slot.
                while let Some(Some(())) = futures::FutureExt::now_or_never(tasks.next()) {}
                n += 1;
            }
            tasks.collect::<()>().await;
        }
    }
}

/// Notes a request's bid before it is sent, so that an outcome read before
/// the reply finds it.
fn register(shared: &Shared, n: u64, due: Instant) {
    let p = shared.workload.request(n);
    shared.sent.fetch_add(1, Ordering::Relaxed);
    if p.duplicate {
        return;
    }
    let mut records = shared.records.lock().expect("lock poisoned");
    let i = p.bid as usize;
    if records.len() <= i {
        records.resize_with(i + 1, || None);
    }
    records[i] = Some(Record {
        facts: BidFacts {
            auction: p.auction,
            bidder: p.bidder,
            amount: p.amount,
            ..BidFacts::default()
        },
        due,
        rejected: None,
        error: None,
    });
}

/// Sends request `n`, resending on no answer, and records what came back;
/// then the bid's withdraw and raise, if the plan has them.
async fn send(engine: &Engine, shared: &Shared, n: u64, due: Instant, attempts: u32) {
    let w = &shared.workload;
    let p = w.request(n);
    let bid = async {
        let auction_id = w.auction_id(p.auction);
        let bid = w.bid_request(&p);
        let result = retrying(attempts, || engine.bid(&auction_id, &bid)).await;
        shared
            .reply_latency
            .lock()
            .expect("lock poisoned")
            .saturating_record(micros(due.elapsed()));
        shared.replied.fetch_add(1, Ordering::Relaxed);
        record_reply(shared, &p, result)
    };
    let accepted = match p.withdraw {
        // The withdraw goes first and the bid right behind it, unanswered:
        // either may reach the log first.
        Some(WithdrawWhen::Early) => {
            tokio::join!(lifecycle::withdraw(engine, shared, &p, attempts), bid).1
        }
        _ => bid.await,
    };
    if accepted {
        lifecycle::follow_up(engine, shared, &p, attempts).await;
    }
}

/// Records a bid's reply; true when it was accepted.
fn record_reply(
    shared: &Shared,
    p: &Planned,
    result: std::result::Result<BidReply, String>,
) -> bool {
    let mut records = shared.records.lock().expect("lock poisoned");
    let Some(Some(record)) = records.get_mut(p.bid as usize) else {
        return false;
    };
    match result {
        Ok(BidReply::Accepted { try_seq, .. }) => {
            if !record.facts.accepted {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
            }
            record.facts.accepted = true;
            record.facts.try_seq = shared.log_seqs.then_some(try_seq);
            record.error = None;
            true
        }
        Ok(BidReply::Rejected { reason, .. }) => {
            record.facts.rejected = true;
            record.rejected = Some(reason);
            record.error = None;
            false
        }
        Ok(BidReply::Error { error, .. }) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            record.error.get_or_insert(label(&error));
            false
        }
        Err(e) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            if !record.facts.accepted && !record.facts.rejected {
                record.error = Some(e);
            }
            false
        }
    }
}

/// Reads the outcome stream from just after `shared.read_to`, and goes on
/// from where it stopped whenever the read fails (NATS restarting, say).
async fn read_outcomes(shared: Arc<Shared>, stream: jetstream::stream::Stream) {
    loop {
        let from = shared.read_to.load(Ordering::Relaxed) + 1;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await;
        if let Ok(consumer) = consumer {
            if let Ok(messages) = consumer.messages().await {
                match_outcomes(&shared, messages).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Matches outcome events to the run's bids, as they arrive, until the
/// read fails.
async fn match_outcomes(shared: &Shared, mut messages: pull::Ordered) {
    while let Some(Ok(message)) = messages.next().await {
        if let Ok(info) = message.info() {
            shared
                .read_to
                .store(info.stream_sequence, Ordering::Relaxed);
        }
        let Ok(outcome) = serde_json::from_slice::<OutcomeEvent>(&message.payload) else {
            continue; // an aggregate's open event
        };
        if shared.workload.auction_index(&outcome.auction_id).is_none() {
            continue; // another run's
        }
        let now = Instant::now();
        let mut records = shared.records.lock().expect("lock poisoned");
        let record = bid_index(&outcome.bid_id)
            .and_then(|i| records.get_mut(i as usize))
            .and_then(Option::as_mut);
        let Some(record) = record else {
            shared.stray.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let facts = &mut record.facts;
        facts.outcomes.push(SeenOutcome {
            kind: outcome.kind,
            rank: outcome.rank,
            reason: outcome.reason,
            amount: outcome.amount,
            try_seq: outcome.try_seq,
            tried_at: outcome.tried_at,
            matches_bid: shared.workload.auction_index(&outcome.auction_id) == Some(facts.auction)
                && outcome.bidder_id == format!("u{}", facts.bidder),
        });
        if facts.outcomes.len() == 1 {
            shared.decided.fetch_add(1, Ordering::Relaxed);
            let since_due = now.duration_since(record.due);
            shared
                .outcome_latency
                .lock()
                .expect("lock poisoned")
                .saturating_record(micros(since_due));
            shared
                .last_outcome_us
                .fetch_max(micros(now.duration_since(shared.start)), Ordering::Relaxed);
        }
    }
}

/// Samples the counters into a timeline, and shows progress.
async fn sample(
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

fn summarize(
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
