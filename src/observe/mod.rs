//! What an operator sees of a running `allot serve`: counters kept by the
//! gateway and the verifier as they work, answered as NATS micro service
//! stats (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`, in [`micro`]) and on the
//! HTTP page (`--http-addr`, in [`http`]): Prometheus metrics, health and
//! readiness, and the live dashboard ([`dashboard`]).
//!
//! Counting is a few relaxed atomic adds per request or outcome, so that
//! it costs the bid path next to nothing; everything else (the verifier's
//! lag, the text formats) is computed when someone asks.

pub mod dashboard;
pub mod http;
pub mod micro;
pub mod status;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::wire::{CancelReason, ErrorCode, OutcomeEvent, OutcomeKind};

crate::closed::closed_enum! {
    /// The request endpoints a gateway serves, in the order they are
    /// listed; each name is the endpoint's in `$SRV` answers and metric
    /// labels.
    pub enum Endpoint {
        Bid = "bid",
        Withdraw = "withdraw",
        Raise = "raise",
        Open = "open",
        Close = "close",
        Status = "status",
        Result = "result",
    }
}

impl Endpoint {
    /// The request kind in its subject, `<prefix>.<kind>.<auction_id>`.
    pub fn kind(self) -> &'static str {
        match self {
            Endpoint::Bid => "bid",
            Endpoint::Withdraw => "withdraw",
            Endpoint::Raise => "raise",
            Endpoint::Open => "admin.open",
            Endpoint::Close => "admin.close",
            Endpoint::Status => "status",
            Endpoint::Result => "result",
        }
    }

    /// The endpoint a request subject's kind (after the prefix) belongs to.
    pub fn of(kind: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| {
            kind.strip_prefix(e.kind())
                .is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

crate::closed::closed_enum! {
    /// What became of a bid request; the names are the metric's labels.
    pub enum BidResult {
        /// A try is in the log (a resend's original reply included).
        Accepted = "accepted",
        /// Refused early, before any try was written.
        Rejected = "rejected",
        /// Bad input, or the gateway could not append.
        Error = "error",
    }
}

/// Upper bounds of the decision-latency buckets, in seconds: from a try's
/// `tried_at` to its outcome's `decided_at`.
pub const LATENCY_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Upper bounds of the reply-time buckets, in seconds: from receiving a
/// request to sending its reply. Finer at the low end than
/// [`LATENCY_BOUNDS`]: a fast reject takes tens of microseconds.
pub const REPLY_BOUNDS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A histogram of durations, kept as relaxed atomics: one count per
/// bucket of `N` upper bounds, then the overflow, and the sum in
/// microseconds.
pub struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    counts: [AtomicU64; N],
    overflow: AtomicU64,
    sum_us: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub fn new(bounds: &'static [f64; N]) -> Self {
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            overflow: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match self.bounds.iter().position(|&bound| secs <= bound) {
            Some(i) => self.counts[i].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
        self.sum_us
            .fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// The counts now: per bucket (not cumulative), the overflow last
    /// with an infinite bound.
    pub fn read(&self) -> HistogramCounts {
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(&bound, count)| (bound, count.load(Relaxed)))
            .collect();
        buckets.push((f64::INFINITY, self.overflow.load(Relaxed)));
        HistogramCounts {
            buckets,
            sum_secs: self.sum_us.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramCounts {
    /// Upper bound and count of each bucket, not cumulative; the last
    /// bound is infinite.
    pub buckets: Vec<(f64, u64)>,
    pub sum_secs: f64,
}

impl HistogramCounts {
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| n).sum()
    }

    /// What was observed since `earlier` (counts of the same histogram).
    pub fn since(&self, earlier: &HistogramCounts) -> HistogramCounts {
        HistogramCounts {
            buckets: self
                .buckets
                .iter()
                .zip(
                    earlier
                        .buckets
                        .iter()
                        .map(|(_, n)| *n)
                        .chain(std::iter::repeat(0)),
                )
                .map(|(&(bound, now), before)| (bound, now.saturating_sub(before)))
                .collect(),
            sum_secs: (self.sum_secs - earlier.sum_secs).max(0.0),
        }
    }

    /// The `q` quantile (0 to 1), as the upper bound of the bucket it
    /// falls in (the last finite bound for the overflow); `None` without
    /// observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        let last_finite = self
            .buckets
            .iter()
            .rev()
            .find(|(b, _)| b.is_finite())
            .map_or(0.0, |(b, _)| *b);
        for &(bound, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(if bound.is_finite() {
                    bound
                } else {
                    last_finite
                });
            }
        }
        Some(last_finite)
    }
}

/// One endpoint's counts.
pub struct EndpointStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Total time from receiving a request to sending its reply.
    pub processing_ns: AtomicU64,
    /// The same times, by bucket.
    pub reply_time: Histogram<{ REPLY_BOUNDS.len() }>,
    /// The last error reply, as `code:text`; only written on errors.
    pub last_error: Mutex<Option<(u16, String)>>,
}

impl Default for EndpointStats {
    fn default() -> Self {
        EndpointStats {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            processing_ns: AtomicU64::new(0),
            reply_time: Histogram::new(&REPLY_BOUNDS),
            last_error: Mutex::new(None),
        }
    }
}

/// The counters of one `allot serve` process. Shared by the gateway's
/// request tasks and the verifier; read by the micro service and the
/// metrics page.
pub struct Metrics {
    /// This process's id in `$SRV` answers: unique per start.
    pub id: String,
    pub started: chrono::DateTime<chrono::Utc>,
    endpoints: [EndpointStats; Endpoint::ALL.len()],
    bids: [AtomicU64; BidResult::ALL.len()],
    /// Error replies of every endpoint, by code: so that `unavailable`
    /// (resend in a moment) is told apart from `internal` (a fault).
    errors: [AtomicU64; ErrorCode::ALL.len()],
    confirmed: AtomicU64,
    cancelled: [AtomicU64; CancelReason::ALL.len()],
    /// Decision latency, from a try's `tried_at` to its outcome's
    /// `decided_at`.
    pub latency: Histogram<{ LATENCY_BOUNDS.len() }>,
    /// Partitions whose lease this process holds.
    pub partitions_owned: AtomicU64,
    /// Times this process's verifier found another had taken over (its
    /// lease lost, or its outcomes refused by the fence) and stood by.
    pub superseded: AtomicU64,
    /// Outcome batches JetStream refused because another verifier's fence
    /// was newer.
    pub fenced: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let started = chrono::Utc::now();
        let nanos = started.timestamp_nanos_opt().unwrap_or_default() as u64;
        Metrics {
            // The pid tells processes on one host apart, the start time
            // restarts of one pid apart.
            id: format!("{:x}{:016x}", std::process::id(), nanos),
            started,
            endpoints: Default::default(),
            bids: Default::default(),
            errors: Default::default(),
            confirmed: AtomicU64::new(0),
            cancelled: Default::default(),
            latency: Histogram::new(&LATENCY_BOUNDS),
            partitions_owned: AtomicU64::new(0),
            superseded: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("id", &self.id).finish()
    }
}

impl Metrics {
    /// Counts one answered request; `error` is the error reply's code and
    /// text, if it was one.
    pub fn request(&self, endpoint: Endpoint, took: Duration, error: Option<(ErrorCode, &str)>) {
        let stats = self.endpoint(endpoint);
        stats.requests.fetch_add(1, Relaxed);
        stats
            .processing_ns
            .fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        stats.reply_time.observe(took);
        if let Some((code, text)) = error {
            stats.errors.fetch_add(1, Relaxed);
            self.errors[code.index()].fetch_add(1, Relaxed);
            *stats.last_error.lock().expect("lock poisoned") =
                Some((code.status(), text.to_string()));
        }
    }

    pub fn bid(&self, result: BidResult) {
        self.bids[result.index()].fetch_add(1, Relaxed);
    }

    /// Counts a published outcome and how long its try waited for it.
    pub fn outcome(&self, o: &OutcomeEvent) {
        match (o.kind, o.reason) {
            (OutcomeKind::Cancelled, Some(reason)) => {
                self.cancelled[reason.index()].fetch_add(1, Relaxed);
            }
            _ => {
                self.confirmed.fetch_add(1, Relaxed);
            }
        }
        // Clocks of different hosts can disagree: a negative wait is zero.
        let waited = (o.decided_at - o.tried_at).to_std().unwrap_or_default();
        self.latency.observe(waited);
    }

    pub fn endpoint(&self, endpoint: Endpoint) -> &EndpointStats {
        &self.endpoints[endpoint.index()]
    }

    pub fn bids(&self, result: BidResult) -> u64 {
        self.bids[result.index()].load(Relaxed)
    }

    /// Error replies with `code`, of every endpoint.
    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors[code.index()].load(Relaxed)
    }

    pub fn confirmed(&self) -> u64 {
        self.confirmed.load(Relaxed)
    }

    pub fn cancelled(&self, reason: CancelReason) -> u64 {
        self.cancelled[reason.index()].load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// An outcome of `kind`, decided the moment it was tried.
    fn outcome(kind: OutcomeKind, rank: Option<u32>) -> OutcomeEvent {
        let now = chrono::Utc::now();
        OutcomeEvent {
            kind,
            bid_id: "b".into(),
            auction_id: "a".into(),
            bidder_id: "u".into(),
            amount: 1,
            try_seq: 1,
            try_index: 0,
            tried_at: now,
            decided_at: now,
            rank,
            reason: None,
        }
    }

    #[test]
    fn every_reason_and_result_is_counted_under_its_wire_name() {
        let m = Metrics::default();
        let mut o = outcome(OutcomeKind::Cancelled, None);
        for (i, reason) in CancelReason::ALL.into_iter().enumerate() {
            o.reason = Some(reason);
            for _ in 0..=i {
                m.outcome(&o);
            }
        }
        for (i, reason) in CancelReason::ALL.into_iter().enumerate() {
            assert_eq!(m.cancelled(reason), i as u64 + 1, "{reason}");
        }
        for result in BidResult::ALL {
            m.bid(result);
            assert_eq!(m.bids(result), 1, "{result}");
        }
        let page = http::render(&Arc::new(m), Vec::new(), http::Format::Prometheus);
        for reason in CancelReason::ALL {
            let label = format!(
                "reason=\"{}\"",
                serde_json::to_value(reason).unwrap().as_str().unwrap()
            );
            assert!(page.contains(&label), "{label} missing from the page");
        }
    }

    #[test]
    fn error_replies_are_counted_by_code_and_keep_their_status() {
        let m = Metrics::default();
        let took = Duration::from_millis(1);
        m.request(Endpoint::Bid, took, Some((ErrorCode::Unavailable, "later")));
        m.request(
            Endpoint::Raise,
            took,
            Some((ErrorCode::Unavailable, "later")),
        );
        m.request(Endpoint::Bid, took, Some((ErrorCode::Internal, "fault")));
        m.request(Endpoint::Bid, took, None);
        assert_eq!(m.errors(ErrorCode::Unavailable), 2);
        assert_eq!(m.errors(ErrorCode::Internal), 1);
        let bids = m.endpoint(Endpoint::Bid);
        assert_eq!(bids.errors.load(Relaxed), 2);
        let last = bids.last_error.lock().unwrap().clone();
        assert_eq!(last, Some((500, "fault".to_string())));
        let m = Arc::new(m);
        let page = http::render(&m, Vec::new(), http::Format::Prometheus);
        for code in ErrorCode::ALL {
            let line = format!(
                "allot_request_errors_by_code_total{{code=\"{code}\"}} {}\n",
                m.errors(code)
            );
            assert!(page.contains(&line), "{line:?} missing from the page");
        }
    }

    #[test]
    fn a_request_kind_names_its_endpoint() {
        assert_eq!(Endpoint::of("bid.a1"), Some(Endpoint::Bid));
        assert_eq!(Endpoint::of("admin.open.a1"), Some(Endpoint::Open));
        assert_eq!(Endpoint::of("admin.close.a1"), Some(Endpoint::Close));
        assert_eq!(Endpoint::of("status.a1"), Some(Endpoint::Status));
        assert_eq!(Endpoint::of("bidder.a1"), None);
        assert_eq!(Endpoint::of("admin.a1"), None);
    }

    #[test]
    fn decision_latency_falls_in_its_bucket() {
        let m = Metrics::default();
        let mut o = outcome(OutcomeKind::Confirmed, Some(1));
        o.decided_at = o.tried_at + chrono::Duration::milliseconds(3);
        m.outcome(&o);
        o.decided_at = o.tried_at - chrono::Duration::seconds(1);
        m.outcome(&o);
        o.decided_at = o.tried_at + chrono::Duration::seconds(60);
        m.outcome(&o);
        let counts: Vec<u64> = m.latency.read().buckets.iter().map(|b| b.1).collect();
        // 3 ms in the 5 ms bucket, a clock skew in the first, a minute over.
        assert_eq!(counts[0], 1);
        assert_eq!(counts[2], 1);
        assert_eq!(counts[LATENCY_BOUNDS.len()], 1);
        assert_eq!(m.confirmed(), 3);
    }

    #[test]
    fn quantiles_are_the_bounds_of_their_buckets() {
        let h = Histogram::new(&REPLY_BOUNDS);
        let before = h.read();
        assert_eq!(before.quantile(0.5), None);
        for _ in 0..98 {
            h.observe(Duration::from_micros(200));
        }
        h.observe(Duration::from_millis(40));
        h.observe(Duration::from_secs(9));
        let window = h.read().since(&before);
        assert_eq!(window.count(), 100);
        assert_eq!(window.quantile(0.5), Some(0.00025));
        assert_eq!(window.quantile(0.99), Some(0.05));
        // Past the last bound: the last bound.
        assert_eq!(window.quantile(1.0), Some(5.0));
        let later = h.read().since(&h.read());
        assert_eq!(later.count(), 0);
    }

    #[test]
    fn both_text_formats_keep_the_names() {
        let m = Arc::new(Metrics::default());
        m.request(Endpoint::Bid, Duration::from_micros(300), None);
        m.bid(BidResult::Accepted);
        m.outcome(&outcome(OutcomeKind::Confirmed, Some(1)));
        let prometheus = http::render(&m, vec![(3, 7)], http::Format::Prometheus);
        let openmetrics = http::render(&m, vec![(3, 7)], http::Format::OpenMetrics);
        for line in [
            "allot_bids_total{result=\"accepted\"} 1",
            "allot_requests_total{endpoint=\"bid\"} 1",
            "allot_request_duration_seconds_count{endpoint=\"bid\"} 1",
            "allot_decision_latency_seconds_count 1",
            "allot_verifier_pending{partition=\"3\"} 7",
            "allot_partitions_owned 0",
        ] {
            for page in [&prometheus, &openmetrics] {
                assert!(
                    page.contains(&format!("{line}\n")),
                    "no {line:?} in\n{page}"
                );
            }
        }
        assert!(prometheus.contains("# TYPE allot_bids_total counter\n"));
        // The bucket's bound comes last in one format, first in the other.
        let inf = "allot_request_duration_seconds_bucket{endpoint=\"bid\",le=\"+Inf\"} 1\n";
        assert!(prometheus.contains(inf), "{prometheus}");
        let inf = "allot_request_duration_seconds_bucket{le=\"+Inf\",endpoint=\"bid\"} 1\n";
        assert!(openmetrics.contains(inf), "{openmetrics}");
        assert!(prometheus
            .contains("allot_request_duration_seconds_bucket{endpoint=\"bid\",le=\"0.0005\"} 1\n"));
        assert!(openmetrics.contains("# TYPE allot_bids counter\n"));
        assert!(openmetrics.contains("# UNIT allot_decision_latency_seconds seconds\n"));
        assert!(openmetrics.ends_with("# EOF\n"));
    }
}
