//! The live dashboard on the HTTP page (`--http-addr`): one HTML page
//! with inline script and style (`dashboard.html`, no build step, nothing
//! loaded from elsewhere), fed by server-sent events.
//!
//! - `GET /` (or `/dashboard`): the page.
//! - `GET /dashboard/events?offset=&limit=&q=`: a `text/event-stream`, one
//!   `data:` line of JSON a second: totals, one page of the auctions
//!   (busiest first, `limit` at most [`MAX_LIMIT`], `q` filters by id),
//!   the partitions with their owner and lag, the instances, and per second
//!   over the last [`HISTORY`] seconds, bids and decisions and latencies.
//! - `GET /dashboard/state?...`: the same JSON once.
//!
//! What it shows is read as `allot status` reads it (the streams' subject
//! counts, the verifiers' consumers, the leases bucket, `$SRV.PING`), once
//! a second and only while a page is open; the auctions' settings are read
//! once per auction, and their closed or sold-out state is followed in the
//! status bucket. So once bidding stops, its numbers are those of
//! `allot status`. The latencies, and the bids answered by result, are this
//! process's own (its gateway's replies, its verifier's decisions), read
//! from [`Metrics`] at no cost to NATS.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::Stream as JsStream;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use super::http::{whole, Body};
use super::{BidResult, Endpoint, HistogramCounts, Metrics};
use crate::streams::Streams;
use crate::wire::{AuctionView, LogEvent, Policy};

/// The page itself.
const PAGE: &str = include_str!("dashboard.html");

/// Seconds of per-second history kept and shown.
pub const HISTORY: usize = 300;

/// Most auctions sent in one update.
pub const MAX_LIMIT: usize = 500;

/// Auctions sent when the page does not say.
const DEFAULT_LIMIT: usize = 50;

/// How long `$SRV.PING` answers are collected, as `allot status` does.
const PING_WAIT: Duration = Duration::from_millis(500);

/// How long one read of the cluster may take before it is given up.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The dashboard's state, shared by the poller and every open page.
pub struct Dashboard {
    streams: Streams,
    consumer: String,
    metrics: Arc<Metrics>,
    role: String,
    latest: watch::Sender<Arc<Snapshot>>,
    /// Wakes the poller when a page opens.
    opened: Notify,
    /// Closed and sold-out auctions, from the status bucket.
    views: Mutex<HashMap<String, AuctionView>>,
}

/// One auction's settings, from its open event.
#[derive(Clone, Copy, Debug)]
struct Spec {
    capacity: u32,
    policy: Policy,
}

/// One auction as the page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Auction {
    pub auction_id: String,
    pub policy: Policy,
    pub capacity: u32,
    pub tries: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    /// Tries with no outcome yet: held (`top_amount`) or not yet decided.
    pub open: u64,
    /// `open`, `sold_out` or `closed`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Partition {
    pub partition: u32,
    pub owner: Option<String>,
    pub auctions: u64,
    pub events: u64,
    /// The verifier's lag: entries not yet decided and acked.
    pub pending: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Instance {
    pub id: String,
    pub role: String,
    pub version: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub auctions: usize,
    pub tries: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    pub open: u64,
    pub sold_out: usize,
    pub closed: usize,
}

/// One second of history. Rates are per second; latencies in ms, the
/// bounds of the histogram buckets the quantile falls in.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    /// Unix time, ms.
    pub t: i64,
    /// Tries appended to the log, every gateway (known while a page is open).
    pub tries: Option<f64>,
    /// Outcomes published, every verifier (known while a page is open).
    pub decided: Option<f64>,
    /// This process's gateway: bids answered, by result.
    pub accepted: f64,
    pub rejected: f64,
    pub errors: f64,
    /// This process's gateway: bid reply time.
    pub reply_p50: Option<f64>,
    pub reply_p99: Option<f64>,
    /// This process's verifier: from a try's `tried_at` to its outcome.
    pub decision_p50: Option<f64>,
    pub decision_p99: Option<f64>,
}

/// Everything read at one moment; each page takes its slice of it.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// When the cluster was read; `None` before the first read.
    pub at: Option<DateTime<Utc>>,
    /// Why the last read failed, if it did (the rest is the read before).
    pub error: Option<String>,
    /// Every auction, busiest first (most tries, then by id).
    pub auctions: Vec<Auction>,
    pub totals: Totals,
    pub partitions: Vec<Partition>,
    pub instances: Vec<Instance>,
    pub history: Vec<Sample>,
}

/// What one page asked for.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub offset: usize,
    pub limit: usize,
    pub filter: String,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        let mut q = Query {
            limit: DEFAULT_LIMIT,
            ..Query::default()
        };
        for pair in query.unwrap_or("").split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "offset" => q.offset = value.parse().unwrap_or(0),
                "limit" => q.limit = value.parse().unwrap_or(DEFAULT_LIMIT),
                // Auction ids are [A-Za-z0-9_-]: anything else is dropped.
                "q" => {
                    q.filter = value
                        .chars()
                        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                        .take(64)
                        .collect()
                }
                _ => {}
            }
        }
        q.limit = q.limit.clamp(1, MAX_LIMIT);
        q
    }
}

/// One page's update.
#[derive(Serialize)]
struct View<'a> {
    at: Option<DateTime<Utc>>,
    error: Option<&'a str>,
    this_instance: &'a str,
    role: &'a str,
    totals: &'a Totals,
    auctions: Vec<&'a Auction>,
    /// Auctions matching the filter, of `totals.auctions`.
    matching: usize,
    offset: usize,
    limit: usize,
    filter: &'a str,
    partitions: &'a [Partition],
    instances: &'a [Instance],
    history: &'a [Sample],
}

impl Dashboard {
    pub fn new(streams: Streams, consumer: String, metrics: Arc<Metrics>, role: String) -> Self {
        Dashboard {
            streams,
            consumer,
            metrics,
            role,
            latest: watch::channel(Arc::new(Snapshot::default())).0,
            opened: Notify::new(),
            views: Mutex::new(HashMap::new()),
        }
    }

    fn view(&self, snapshot: &Snapshot, q: &Query) -> String {
        let matching: Vec<&Auction> = snapshot
            .auctions
            .iter()
            .filter(|a| q.filter.is_empty() || a.auction_id.contains(&q.filter))
            .collect();
        let view = View {
            at: snapshot.at,
            error: snapshot.error.as_deref(),
            this_instance: &self.metrics.id,
            role: &self.role,
            totals: &snapshot.totals,
            matching: matching.len(),
            auctions: matching.into_iter().skip(q.offset).take(q.limit).collect(),
            offset: q.offset,
            limit: q.limit,
            filter: &q.filter,
            partitions: &snapshot.partitions,
            instances: &snapshot.instances,
            history: &snapshot.history,
        };
        serde_json::to_string(&view).expect("views serialize")
    }

    /// Samples this process's counters every second, and reads the
    /// cluster too while a page is open, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let watcher = tokio::spawn(self.clone().follow_views());
        let mut specs: HashMap<String, Spec> = HashMap::new();
        // Each read counts only the entries of outcomes stored since the last.
        let mut outcomes = crate::log::OutcomeCounter::default();
        let mut history: VecDeque<Sample> = VecDeque::with_capacity(HISTORY + 1);
        let mut before = Local::read(&self.metrics);
        let mut cluster_before: Option<(Instant, u64, u64)> = None;
        let mut last = Snapshot::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {}
                _ = self.opened.notified() => {}
            }
            let now = Local::read(&self.metrics);
            let mut sample = now.since(&before);
            before = now;
            if self.latest.receiver_count() > 0 {
                let read = tokio::time::timeout(
                    READ_TIMEOUT,
                    self.read_cluster(&mut specs, &mut outcomes),
                )
                .await;
                match read {
                    Ok(Ok(mut snapshot)) => {
                        let (tries, decided) = (
                            snapshot.totals.tries,
                            snapshot.totals.confirmed + snapshot.totals.cancelled,
                        );
                        let at = Instant::now();
                        if let Some((then, tries_then, decided_then)) = cluster_before {
                            let secs = at.duration_since(then).as_secs_f64().max(0.001);
                            let rate =
                                |now: u64, then: u64| round(now.saturating_sub(then) as f64 / secs);
                            sample.tries = Some(rate(tries, tries_then));
                            sample.decided = Some(rate(decided, decided_then));
                        }
                        cluster_before = Some((at, tries, decided));
                        snapshot.history = Vec::new();
                        last = snapshot;
                    }
                    Ok(Err(e)) => last.error = Some(e),
                    Err(_) => last.error = Some(format!("no answer from NATS in {READ_TIMEOUT:?}")),
                }
            } else {
                // Rates need two reads in a row.
                cluster_before = None;
            }
            history.push_back(sample);
            while history.len() > HISTORY {
                history.pop_front();
            }
            if self.latest.receiver_count() > 0 {
                let snapshot = Snapshot {
                    at: last.at,
                    error: last.error.clone(),
                    auctions: last.auctions.clone(),
                    totals: last.totals.clone(),
                    partitions: last.partitions.clone(),
                    instances: last.instances.clone(),
                    history: history.iter().cloned().collect(),
                };
                self.latest.send_replace(Arc::new(snapshot));
            }
        }
        watcher.abort();
    }

    /// Keeps [`Dashboard::views`] current from the status bucket; started
    /// again when the watch ends.
    async fn follow_views(self: Arc<Self>) {
        loop {
            match self.streams.status.watch_all().await {
                Ok(mut entries) => {
                    while let Some(Ok(entry)) = entries.next().await {
                        let mut views = self.views.lock().expect("lock poisoned");
                        match entry.operation {
                            kv::Operation::Put => {
                                if let Ok(view) = serde_json::from_slice(&entry.value) {
                                    views.insert(entry.key, view);
                                }
                            }
                            kv::Operation::Delete | kv::Operation::Purge => {
                                views.remove(&entry.key);
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "dashboard: status bucket watch"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Reads what `allot status` reads, for every auction.
    async fn read_cluster(
        &self,
        specs: &mut HashMap<String, Spec>,
        outcomes: &mut crate::log::OutcomeCounter,
    ) -> Result<Snapshot, String> {
        let s = &self.streams.subjects;
        let prefix = s.prefix();
        let client = self.streams.js.client();
        let (opened, tries, decided, partitions_pending, owners, instances) = tokio::join!(
            per_subject(&self.streams.log, format!("{prefix}.*.*.*")),
            async {
                crate::log::all_try_counts(&self.streams.js, s)
                    .await
                    .map_err(|e| e.to_string())
            },
            async {
                outcomes
                    .count(&self.streams.js, s, None)
                    .await
                    .map_err(|e| e.to_string())
            },
            self.pending(),
            self.owners(),
            instances(&client),
        );
        let (logged, tries, decided) = (opened?, tries?, decided?);
        let opened = super::status::opened(&logged);

        let ids: Vec<&str> = opened
            .keys()
            .filter_map(|subject| subject.rsplit('.').next())
            .collect();
        // Settings of auctions not seen before: their open events.
        let new: Vec<String> = ids
            .iter()
            .filter(|id| !specs.contains_key(**id))
            .map(|id| id.to_string())
            .collect();
        let log = &self.streams.log;
        let mut read = futures::stream::iter(new)
            .map(|id| async move {
                let subject = s.auction_event(&id);
                let spec = match log.direct_get_first_for_subject(subject).await {
                    Ok(open) => match serde_json::from_slice(&open.payload) {
                        Ok(LogEvent::Open(open)) => Some(Spec {
                            capacity: open.spec.capacity.get(),
                            policy: open.spec.policy,
                        }),
                        _ => None,
                    },
                    Err(_) => None,
                };
                (id, spec)
            })
            .buffer_unordered(32);
        while let Some((id, spec)) = read.next().await {
            // One that could not be read is asked again next time.
            if let Some(spec) = spec {
                specs.insert(id, spec);
            }
        }

        let views = self.views.lock().expect("lock poisoned").clone();
        let mut totals = Totals::default();
        let mut auctions: Vec<Auction> = ids
            .iter()
            .map(|&id| {
                let tries = tries.get(id).copied().unwrap_or(0);
                let d = decided.get(id).copied().unwrap_or_default();
                let (confirmed, cancelled) = (d.confirmed, d.cancelled);
                let spec = specs.get(id).copied().unwrap_or(Spec {
                    capacity: 0,
                    policy: Policy::default(),
                });
                let view = views.get(id);
                let state = if view.is_some_and(|v| v.closed) {
                    totals.closed += 1;
                    "closed"
                } else if spec.capacity > 0 && confirmed >= u64::from(spec.capacity) {
                    totals.sold_out += 1;
                    "sold_out"
                } else {
                    "open"
                };
                Auction {
                    auction_id: id.to_string(),
                    policy: spec.policy,
                    capacity: spec.capacity,
                    tries,
                    confirmed,
                    cancelled,
                    open: tries.saturating_sub(confirmed + cancelled),
                    state,
                }
            })
            .collect();
        auctions.sort_by(|a, b| {
            b.tries
                .cmp(&a.tries)
                .then_with(|| a.auction_id.cmp(&b.auction_id))
        });
        totals.auctions = auctions.len();
        for a in &auctions {
            totals.tries += a.tries;
            totals.confirmed += a.confirmed;
            totals.cancelled += a.cancelled;
            totals.open += a.open;
        }

        let partitions = (0..s.partitions())
            .map(|p| {
                let (auctions, events) = super::status::partition_counts(&logged, p);
                Partition {
                    partition: p,
                    owner: owners.get(&p).cloned(),
                    auctions,
                    events,
                    // No verifier has decided it yet: everything is pending.
                    pending: partitions_pending.get(&p).copied().unwrap_or(events),
                }
            })
            .collect();
        Ok(Snapshot {
            at: Some(Utc::now()),
            error: None,
            auctions,
            totals,
            partitions,
            instances,
            history: Vec::new(),
        })
    }

    /// Each partition's lag, where its consumer exists.
    async fn pending(&self) -> HashMap<u32, u64> {
        super::http::verifier_lag(&self.streams, &self.consumer)
            .await
            .into_iter()
            .collect()
    }

    /// Each partition's lease holder, where it has one.
    async fn owners(&self) -> HashMap<u32, String> {
        let leases = &self.streams.leases;
        let asks = (0..self.streams.subjects.partitions()).map(|p| async move {
            let owner = leases.get(crate::wire::names::lease_key(p)).await.ok()??;
            Some((p, String::from_utf8_lossy(&owner).into_owned()))
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Message counts per subject matching `filter`.
/// Message counts per subject (`log::read::per_subject`), the error as text.
async fn per_subject(stream: &JsStream, filter: String) -> Result<BTreeMap<String, u64>, String> {
    crate::log::read::per_subject(stream, &filter)
        .await
        .map_err(|e| e.to_string())
}

/// Every `allot serve` that answers `$SRV.PING.allot` within [`PING_WAIT`].
async fn instances(client: &async_nats::Client) -> Vec<Instance> {
    let inbox = client.new_inbox();
    let Ok(mut answers) = client.subscribe(inbox.clone()).await else {
        return Vec::new();
    };
    let ping = format!("$SRV.PING.{}", super::micro::NAME);
    if client
        .publish_with_reply(ping, inbox, "".into())
        .await
        .is_err()
    {
        return Vec::new();
    }
    let mut found = Vec::new();
    let deadline = tokio::time::sleep(PING_WAIT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            answer = answers.next() => {
                let Some(answer) = answer else { break };
                if let Ok(ping) =
                    serde_json::from_slice::<async_nats::service::PingResponse>(&answer.payload)
                {
                    found.push(Instance {
                        role: ping.metadata.get("role").cloned().unwrap_or_default(),
                        id: ping.id,
                        version: ping.version,
                    });
                }
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

/// This process's counters at one moment.
struct Local {
    at: Instant,
    bids: [u64; 3],
    reply: HistogramCounts,
    decision: HistogramCounts,
}

impl Local {
    fn read(m: &Metrics) -> Local {
        Local {
            at: Instant::now(),
            bids: [BidResult::Accepted, BidResult::Rejected, BidResult::Error].map(|r| m.bids(r)),
            reply: m.endpoint(Endpoint::Bid).reply_time.read(),
            decision: m.latency.read(),
        }
    }

    /// The second (or so) since `earlier`.
    fn since(&self, earlier: &Local) -> Sample {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(0.001);
        let rate = |i: usize| round(self.bids[i].saturating_sub(earlier.bids[i]) as f64 / secs);
        let ms = |q: Option<f64>| q.map(|s| s * 1000.0);
        let reply = self.reply.since(&earlier.reply);
        let decision = self.decision.since(&earlier.decision);
        Sample {
            t: Utc::now().timestamp_millis(),
            tries: None,
            decided: None,
            accepted: rate(0),
            rejected: rate(1),
            errors: rate(2),
            reply_p50: ms(reply.quantile(0.5)),
            reply_p99: ms(reply.quantile(0.99)),
            decision_p50: ms(decision.quantile(0.5)),
            decision_p99: ms(decision.quantile(0.99)),
        }
    }
}

/// A rate to a tenth: more digits say nothing and cost bytes in every update.
fn round(rate: f64) -> f64 {
    (rate * 10.0).round() / 10.0
}

/// Whether `path` is the dashboard's.
pub fn serves(path: &str) -> bool {
    matches!(
        path,
        "/" | "/dashboard" | "/dashboard/events" | "/dashboard/state"
    )
}

pub async fn route(dashboard: &Arc<Dashboard>, request: &Request<Incoming>) -> Response<Body> {
    let query = Query::parse(request.uri().query());
    match request.uri().path() {
        "/dashboard/events" => events(dashboard.clone(), query),
        "/dashboard/state" => {
            let mut rx = dashboard.latest.subscribe();
            dashboard.opened.notify_one();
            // A fresh read: the next one after this request.
            let _ = tokio::time::timeout(READ_TIMEOUT, rx.changed()).await;
            let snapshot = rx.borrow_and_update().clone();
            let body = dashboard.view(&snapshot, &query);
            whole(StatusCode::OK, "application/json", body)
        }
        _ => {
            let mut response = whole(StatusCode::OK, "text/html; charset=utf-8", PAGE);
            // Nothing but itself: inline script and style, same-origin
            // fetches and events.
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
                ),
            );
            response
        }
    }
}

/// The event stream: the latest snapshot now, then each new one.
fn events(dashboard: Arc<Dashboard>, query: Query) -> Response<Body> {
    let rx = dashboard.latest.subscribe();
    dashboard.opened.notify_one();
    let updates = futures::stream::unfold(
        (dashboard, rx, query, true),
        |(dashboard, mut rx, query, first)| async move {
            if !first {
                rx.changed().await.ok()?;
            }
            let snapshot = rx.borrow_and_update().clone();
            let data = if snapshot.at.is_some() || !snapshot.history.is_empty() {
                format!("data: {}\n\n", dashboard.view(&snapshot, &query))
            } else {
                // Before the first read: a comment keeps the stream open.
                ": waiting for the first read\n\n".to_string()
            };
            let frame = Frame::data(Bytes::from(data));
            Some((Ok::<_, Infallible>(frame), (dashboard, rx, query, false)))
        },
    );
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(updates)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_bounded_and_its_filter_is_an_id_fragment() {
        let q = Query::parse(Some("offset=100&limit=100000&q=a%3Cb>c_1-"));
        assert_eq!((q.offset, q.limit), (100, MAX_LIMIT));
        assert_eq!(q.filter, "a3Cbc_1-");
        let q = Query::parse(None);
        assert_eq!(
            (q.offset, q.limit, q.filter.as_str()),
            (0, DEFAULT_LIMIT, "")
        );
        assert_eq!(Query::parse(Some("limit=0")).limit, 1);
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "src=", "@import", "url("] {
            assert!(!PAGE.contains(needle), "the page has {needle:?}");
        }
        assert!(PAGE.contains("new EventSource("));
    }
}
