//! Running a workload against the strategies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self};
use futures::StreamExt;
use hdrhistogram::Histogram;

use super::check::BidFacts;
use super::engine::{retrying, Engine, Strategy};
use super::lifecycle;
use super::reader::read_outcomes;
use super::report::Report;
use super::summary::{sample, summarize};
use super::workload::{Planned, WithdrawWhen, Workload};
use super::{baseline, report::Baseline};
use crate::client::AllotClient;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{label, timestamp, AuctionSpec, BidReply, RejectReason, TryAt};

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
    /// Write the client-side history here (see [`super::history`]).
    pub history: Option<std::path::PathBuf>,
    /// Stop resending a bid this long after it was due (the attempts
    /// still bound it too).
    pub give_up: Option<Duration>,
    /// `tcc`: send bids, withdraws and raises over a connection of their
    /// own to this URL (a backend's user under `serve --identity bound`,
    /// say); opens, closes and reads use the run's client.
    pub bid_url: Option<String>,
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
            history: None,
            give_up: None,
            bid_url: None,
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
    if w.capacity == 0 {
        return Err(Error::new(
            ErrorKind::Config,
            "capacity: an auction has at least one slot",
        ));
    }
    if w.raises > 0.0 && !w.holds_until_close() {
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
    if let Some(other) = options.strategies.iter().find(|s| !s.is_allot()) {
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
        let engine = Engine::new(strategy, client, options.bid_url.as_deref()).await?;
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
pub(super) struct Record {
    pub(super) facts: BidFacts,
    /// When its first request was due.
    pub(super) due: Instant,
    /// Why it was rejected, if it was.
    pub(super) rejected: Option<RejectReason>,
    /// What went wrong on its last unanswered request, while it has no
    /// answer.
    pub(super) error: Option<String>,
    /// Every request sent for it (resends and duplicates included), with
    /// what it was told: the client-side history.
    pub(super) attempts: Vec<Attempt>,
    /// When each of its outcomes was read, microseconds from the start.
    pub(super) outcomes_at: Vec<u64>,
}

/// One request of a bid and its answer.
pub(super) struct Attempt {
    /// Sent and answered (or given up on), microseconds from the start.
    pub(super) sent_us: u64,
    pub(super) done_us: u64,
    /// `accepted`, `rejected:<reason>` or `error:<label>`.
    pub(super) answer: String,
    /// An error's message, if it had one.
    pub(super) message: String,
}

/// State shared by the senders, the outcome reader and the sampler.
pub(super) struct Shared {
    pub(super) workload: Workload,
    /// allot's subjects: which outcome-stream messages are entries.
    pub(super) subjects: crate::wire::Subjects,
    /// Every auction as opened, with its `closes_at`.
    pub(super) specs: Vec<AuctionSpec>,
    /// Accepted replies name the try's place in allot's log (`tcc`); the
    /// aggregate strategies' name their own stream's, which no outcome
    /// shares.
    pub(super) log_seqs: bool,
    pub(super) start: Instant,
    pub(super) records: Mutex<Vec<Option<Record>>>,
    pub(super) reply_latency: Mutex<Histogram<u64>>,
    pub(super) outcome_latency: Mutex<Histogram<u64>>,
    /// An accepted bid's last attempt, sent to replied.
    pub(super) admitted_latency: Mutex<Histogram<u64>>,
    pub(super) sent: AtomicU64,
    pub(super) replied: AtomicU64,
    pub(super) accepted: AtomicU64,
    pub(super) decided: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) stray: AtomicU64,
    /// Stream sequence of the last message read.
    pub(super) read_to: AtomicU64,
    /// Microseconds from the start to the last first outcome.
    pub(super) last_outcome_us: AtomicU64,
    /// `held` notices received for this run's auctions.
    pub(super) held_notices: AtomicU64,
    /// See [`Options::give_up`].
    pub(super) give_up: Option<Duration>,
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

pub(super) fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds are valid")
}

pub(super) fn micros(d: Duration) -> u64 {
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
        subjects: client.subjects.clone(),
        specs: vec![spec.clone(); w.auctions as usize],
        log_seqs: strategy.is_allot(),
        start: Instant::now(),
        records: Mutex::new(Vec::with_capacity(w.requests.unwrap_or(0) as usize)),
        reply_latency: Mutex::new(histogram()),
        outcome_latency: Mutex::new(histogram()),
        admitted_latency: Mutex::new(histogram()),
        sent: AtomicU64::new(0),
        replied: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        decided: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stray: AtomicU64::new(0),
        read_to: AtomicU64::new(0),
        last_outcome_us: AtomicU64::new(0),
        held_notices: AtomicU64::new(0),
        give_up: options.give_up,
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
    let holds = if w.holds_until_close() {
        Some(lifecycle::read_holds(client, shared.clone()).await?)
    } else {
        None
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
    if w.holds_until_close() && close_due.is_none() {
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

    let report = summarize(&shared, engine, strategy, started_at, send_secs, timeline);
    if let Some(path) = &options.history {
        let path = match options.strategies.len() {
            1 => path.clone(),
            _ => path.with_extension(format!("{}.jsonl", strategy.name())),
        };
        super::history::write(&shared, &report, &path)?;
    }
    Ok(report)
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
                // The sends already started are driven while waiting for
                // the next slot, so that a reply is timed when it comes, not
                // at the next slot (up to a timer tick later).
                let slot = tokio::time::sleep_until(due.into());
                tokio::pin!(slot);
                loop {
                    tokio::select! {
                        biased;
                        Some(()) = tasks.next(), if !tasks.is_empty() => {}
                        _ = &mut slot => break,
                    }
                }
                register(shared, n, due);
                let permit = in_flight.clone().acquire_owned();
                tasks.push(async move {
                    let _permit = permit.await;
                    send(engine, shared, n, due, options.attempts).await
                });
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
        attempts: Vec::new(),
        outcomes_at: Vec::new(),
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
        let log = Mutex::new(Vec::new());
        let (auction_id, bid, sent_log) = (&auction_id, &bid, &log);
        let resending = retrying(attempts, || async move {
            let sent_us = micros(shared.start.elapsed());
            let reply = engine.bid(auction_id, bid).await;
            let (answer, message) = match &reply {
                Ok(
                    BidReply::Accepted { .. }
                    | BidReply::Confirmed { .. }
                    | BidReply::Cancelled { .. },
                ) => ("accepted".to_string(), String::new()),
                Ok(BidReply::Rejected { reason, .. }) => {
                    (format!("rejected:{}", label(reason)), String::new())
                }
                Ok(BidReply::Error { error, message, .. }) => {
                    (format!("error:{}", label(error)), message.clone())
                }
                Err(f) => (format!("error:{}", f.label), f.message.clone()),
            };
            let done_us = micros(shared.start.elapsed());
            sent_log.lock().expect("lock poisoned").push(Attempt {
                sent_us,
                done_us,
                answer,
                message,
            });
            reply
        });
        let result = match shared.give_up {
            None => resending.await,
            Some(limit) => match tokio::time::timeout_at((due + limit).into(), resending).await {
                Ok(result) => result,
                Err(_) => {
                    let now = micros(shared.start.elapsed());
                    log.lock().expect("lock poisoned").push(Attempt {
                        sent_us: now,
                        done_us: now,
                        answer: "error:gave_up".into(),
                        message: String::new(),
                    });
                    Err("gave_up".into())
                }
            },
        };
        shared
            .reply_latency
            .lock()
            .expect("lock poisoned")
            .saturating_record(micros(due.elapsed()));
        shared.replied.fetch_add(1, Ordering::Relaxed);
        let log = log.into_inner().expect("lock poisoned");
        if let Some(last) = log.last().filter(|a| a.answer == "accepted") {
            shared
                .admitted_latency
                .lock()
                .expect("lock poisoned")
                .saturating_record(last.done_us.saturating_sub(last.sent_us));
        }
        record_reply(shared, &p, result, log)
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
    attempts: Vec<Attempt>,
) -> bool {
    let mut records = shared.records.lock().expect("lock poisoned");
    let Some(Some(record)) = records.get_mut(p.bid as usize) else {
        return false;
    };
    record.attempts.extend(attempts);
    match result {
        Ok(
            BidReply::Accepted {
                try_seq, try_index, ..
            }
            | BidReply::Confirmed {
                try_seq, try_index, ..
            }
            | BidReply::Cancelled {
                try_seq, try_index, ..
            },
        ) => {
            if !record.facts.accepted {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
            }
            record.facts.accepted = true;
            // The earliest try named: a resend that a gateway wrote again
            // names a later copy.
            let named = TryAt::new(try_seq, try_index);
            if shared.log_seqs {
                let first = record.facts.try_seq.map_or(named, |t| t.min(named));
                record.facts.try_seq = Some(first);
            }
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
