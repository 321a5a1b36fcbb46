//! What a load test measured, as data: printed as a table, written as JSON
//! (`--report`) and drawn as a page (`--html`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::check::Verdict;
use super::workload::Workload;

/// One strategy's run of a workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// `tcc`, `occ` or `lock`.
    pub strategy: String,
    pub workload: Workload,
    pub started_at: DateTime<Utc>,
    /// From the first bid sent to the last reply.
    pub send_secs: f64,
    /// From the first bid sent to the last outcome seen.
    pub decide_secs: f64,
    /// The open-loop target rate, if any (bids/s).
    pub offered_rate: Option<f64>,
    /// Bid requests sent, duplicates and resends included.
    pub requests: u64,
    /// Distinct bids (bid ids) sent.
    pub bids: u64,
    /// Replies per second over `send_secs`.
    pub replied_per_sec: f64,
    /// Accepted bids decided per second over `decide_secs`.
    pub decided_per_sec: f64,
    /// Distinct bids accepted (a try, or an aggregate event, was written).
    pub accepted: u64,
    /// Distinct bids rejected without a write, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Distinct bids that never got an answer, by what went wrong.
    pub errors: BTreeMap<String, u64>,
    pub confirmed: u64,
    /// Outcomes of `cancelled`, by reason.
    pub cancelled: BTreeMap<String, u64>,
    /// Bid sent (or due, in an open loop) to its reply.
    pub reply_latency: Latency,
    /// Bid sent (or due) to its outcome.
    pub outcome_latency: Latency,
    /// Each accepted request's last attempt (a duplicate bid id is a
    /// request of its own), from its send to its reply: how long
    /// the service took with what it admitted, apart from the load
    /// generator's own lag and the pauses after earlier refusals.
    #[serde(default)]
    pub admitted_latency: Latency,
    /// Throughput over time.
    pub timeline: Vec<Tick>,
    /// The first tenth of the run against the last.
    pub trend: Option<Trend>,
    /// How much the strategy fought itself.
    pub contention: Contention,
    /// Raw JetStream publish rate on the same server, if measured.
    pub baseline: Option<Baseline>,
    /// `decided_per_sec` over the baseline's rate.
    pub baseline_ratio: Option<f64>,
    pub invariants: Verdict,
    /// Withdraws, raises and held notices (all zero without the lifecycle
    /// knobs). Their effect on outcomes shows in `cancelled`: `withdrawn`,
    /// `outbid`.
    #[serde(default)]
    pub lifecycle: Lifecycle,
}

/// Microseconds for people: "850 µs", "12.3 ms", "1.20 s".
pub fn micros_text(us: u64) -> String {
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=999_999 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Counts per bucket (upper bound in microseconds, count), on a log
    /// scale, for drawing.
    pub buckets: Vec<(u64, u64)>,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let mut buckets = Vec::new();
        // Quarter-decades from 10 µs: fine enough to see a shape, few
        // enough to draw.
        let mut upper = 10f64;
        let mut below = 0u64;
        while below < h.len() {
            let bound = upper.round() as u64;
            let n = h.count_between(0, bound) - below;
            buckets.push((bound, n));
            below += n;
            upper *= 10f64.powf(0.25);
        }
        Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            buckets,
        }
    }
}

/// One interval of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tick {
    /// End of the interval, seconds from the start.
    pub at_secs: f64,
    /// Replies received in the interval.
    pub replied: u64,
    /// Outcomes received in the interval.
    pub decided: u64,
    /// Errors in the interval.
    pub errors: u64,
}

/// Throughput at the start of a run against its end, to show a slowdown as
/// history grows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trend {
    /// Bids decided per second over the first tenth of the run.
    pub first_tenth_per_sec: f64,
    /// ... and over the last tenth.
    pub last_tenth_per_sec: f64,
    /// last / first.
    pub ratio: f64,
}

/// Conflicts and waits: zero for `tcc` by design.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Contention {
    /// Appends refused for a wrong expected sequence (`occ`, and `lock`
    /// when a lock expired under its holder).
    pub conflicts: u64,
    /// Attempts made again after a conflict.
    pub retries: u64,
    /// Bids that gave up after the last retry.
    pub exhausted: u64,
    /// Times a bid found its auction's lock held and waited (`lock`).
    pub lock_waits: u64,
    /// Bids that gave up waiting for the lock (`lock`).
    pub lock_timeouts: u64,
}

/// What the withdraws and raises of a run were answered.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Withdraw requests sent (a resent bid sends its withdraw again).
    pub withdraws_sent: u64,
    /// Withdraws answered `withdrawn`...
    pub withdrawn: u64,
    /// ... of which empty rollbacks: the withdraw found no try in the log,
    /// and the try, when it came, was cancelled `withdrawn`.
    pub empty_rollbacks: u64,
    /// Withdraws refused, by reason (`already_confirmed`, ...).
    pub withdraws_refused: BTreeMap<String, u64>,
    /// Raise requests sent, retries after a conflict included.
    pub raises_sent: u64,
    /// Raises answered `raised`.
    pub raised: u64,
    /// Raises refused as `conflict`: another raise of the bid came first.
    pub raise_conflicts: u64,
    /// Raises refused, by reason (conflicts included).
    pub raises_refused: BTreeMap<String, u64>,
    /// Withdraws and raises that got no answer.
    pub unanswered: u64,
    /// `held` notices received (core NATS: some may be lost).
    pub held_notices: u64,
}

/// Raw pipelined JetStream publishes on the same server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Baseline {
    pub publishes: u64,
    pub payload_bytes: usize,
    pub in_flight: usize,
    pub per_sec: f64,
}
