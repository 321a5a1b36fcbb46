//! What an operator sees of a running `allot serve`: counters kept by the
//! gateway and the verifier as they work, answered as NATS micro service
//! stats (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`, in [`micro`]) and as a
//! Prometheus page (`--metrics-addr`, in [`http`]).
//!
//! Counting is a few relaxed atomic adds per request or outcome, so that
//! it costs the bid path next to nothing; everything else (the verifier's
//! lag, the text formats) is computed when someone asks.

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

/// One endpoint's counts.
#[derive(Default)]
pub struct EndpointStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Total time from receiving a request to sending its reply.
    pub processing_ns: AtomicU64,
    /// The last error reply, as `code:text`; only written on errors.
    pub last_error: Mutex<Option<(u16, String)>>,
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
    /// Decision latency: one count per bucket of [`LATENCY_BOUNDS`], then
    /// the overflow.
    latency: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_us: AtomicU64,
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
            latency: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            partitions_owned: AtomicU64::new(0),
            superseded: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
        }
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
        let secs = waited.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(waited.as_micros().min(u64::MAX as u128) as u64, Relaxed);
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
        let page = http::render(&m, Vec::new());
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
        let page = http::render(&m, Vec::new());
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
        let counts: Vec<u64> = m.latency.iter().map(|c| c.load(Relaxed)).collect();
        // 3 ms in the 5 ms bucket, a clock skew in the first, a minute over.
        assert_eq!(counts[0], 1);
        assert_eq!(counts[2], 1);
        assert_eq!(counts[LATENCY_BOUNDS.len()], 1);
        assert_eq!(m.confirmed(), 3);
    }
}
