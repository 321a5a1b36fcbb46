//! The HTTP page on `--http-addr` (also spelt `--metrics-addr`):
//!
//! - `GET /metrics`: the counters of [`Metrics`] and the verifiers' lag,
//!   encoded by `prometheus-client` in the Prometheus text format (0.0.4),
//!   or in OpenMetrics 1.0 when the scraper's `Accept` asks for
//!   `application/openmetrics-text`.
//! - `GET /healthz`: the process is up (200 whenever it answers at all).
//! - `GET /readyz`: the process can do its work: 200 when its NATS
//!   connection is up, the streams and buckets it uses exist, and (for a
//!   process that runs a verifier) every partition has a verifier, this
//!   one or another (owned, or standing by); 503 otherwise. The body says
//!   which check failed.
//! - `GET /`, `/dashboard/events`, `/dashboard/state`: the live dashboard
//!   ([`super::dashboard`]).
//!
//! HTTP/1.1 by hyper, one request per connection: a scrape every few
//! seconds and a dashboard's event stream need no more. Nothing here
//! changes anything: every route is a GET.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, PullConsumer};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;
use tokio::net::TcpListener;

use super::{dashboard, BidResult, Endpoint, HistogramCounts, Metrics};
use crate::streams::Streams;
use crate::wire::{CancelReason, ErrorCode};

/// A response body: whole, or a stream of server-sent events.
pub type Body = BoxBody<Bytes, Infallible>;

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the page reads.
pub struct Page {
    pub metrics: Arc<Metrics>,
    pub lag: Lag,
    pub health: Health,
    /// The dashboard's shared state; `None` serves no dashboard.
    pub dashboard: Option<Arc<dashboard::Dashboard>>,
}

/// Where the verifier's lag is read: the log and its consumer.
pub struct Lag {
    pub streams: Streams,
    pub consumer: String,
}

impl Lag {
    /// Per partition, log entries not yet decided and acked.
    pub async fn pending(&self) -> Vec<(u32, u64)> {
        verifier_lag(&self.streams, &self.consumer).await
    }
}

/// Per partition, log entries not yet decided and acked: undelivered plus
/// delivered but unacked. Partitions NATS cannot say about (no verifier
/// has decided them yet) are left out.
pub(super) async fn verifier_lag(streams: &Streams, consumer: &str) -> Vec<(u32, u64)> {
    // Asked all at once, each for at most a second: a consumer still being
    // set up on a cluster can leave its info request waiting for the
    // client's whole timeout, and the page must not.
    let asks = (0..streams.subjects.partitions()).map(|p| async move {
        let name = crate::wire::names::verifier_consumer(consumer, p);
        let ask = async {
            let mut consumer: PullConsumer =
                streams.log.get_consumer::<pull::Config>(&name).await.ok()?;
            let info = consumer.info().await.ok()?;
            Some((p, info.num_pending + info.num_ack_pending as u64))
        };
        tokio::time::timeout(Duration::from_secs(1), ask)
            .await
            .ok()
            .flatten()
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// What `/readyz` checks.
pub struct Health {
    pub streams: Streams,
    pub metrics: Arc<Metrics>,
    /// Whether this process runs a verifier: then it is ready only while
    /// every partition has one.
    pub verifies: bool,
}

/// The answer of `/readyz`.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub nats: Check,
    pub streams: Check,
    pub partitions: Check,
}

/// One readiness check: whether it passed, and what it saw.
#[derive(Debug, Serialize)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

impl Health {
    pub async fn readiness(&self) -> Readiness {
        let (nats, streams, partitions) =
            tokio::join!(self.nats(), self.streams(), self.partitions());
        Readiness {
            ready: nats.ok && streams.ok && partitions.ok,
            nats,
            streams,
            partitions,
        }
    }

    async fn nats(&self) -> Check {
        let state = self.streams.js.client().connection_state();
        Check {
            ok: state == async_nats::connection::State::Connected,
            detail: format!("{state:?}").to_lowercase(),
        }
    }

    /// The log and outcome streams, the status and leases buckets.
    async fn streams(&self) -> Check {
        let s = &self.streams.subjects;
        let js = &self.streams.js;
        let stream = |name: String| async move {
            let found = tokio::time::timeout(CHECK_TIMEOUT, js.get_stream(&name)).await;
            match found {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("stream {name}: {e}")),
                Err(_) => Some(format!("stream {name}: no answer in {CHECK_TIMEOUT:?}")),
            }
        };
        let bucket = |name: String| async move {
            let found = tokio::time::timeout(CHECK_TIMEOUT, js.get_key_value(&name)).await;
            match found {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("bucket {name}: {e}")),
                Err(_) => Some(format!("bucket {name}: no answer in {CHECK_TIMEOUT:?}")),
            }
        };
        let (log, outcomes, status, leases) = tokio::join!(
            stream(s.tries_stream()),
            stream(s.outcomes_stream()),
            bucket(s.status_bucket()),
            bucket(s.leases_bucket()),
        );
        let missing: Vec<String> = [log, outcomes, status, leases]
            .into_iter()
            .flatten()
            .collect();
        Check {
            ok: missing.is_empty(),
            detail: if missing.is_empty() {
                format!(
                    "{}, {}, {}, {} present",
                    s.tries_stream(),
                    s.outcomes_stream(),
                    s.status_bucket(),
                    s.leases_bucket()
                )
            } else {
                missing.join("; ")
            },
        }
    }

    /// Every partition's lease has a holder: this process (owned) or
    /// another (this one stands by).
    async fn partitions(&self) -> Check {
        let total = self.streams.subjects.partitions();
        if !self.verifies {
            return Check {
                ok: true,
                detail: "not checked: this process runs no verifier".into(),
            };
        }
        let leases = &self.streams.leases;
        let holders = (0..total).map(|p| async move {
            let key = crate::wire::names::lease_key(p);
            match tokio::time::timeout(CHECK_TIMEOUT, leases.get(&key)).await {
                Ok(Ok(Some(owner))) if !owner.is_empty() => (p, true),
                _ => (p, false),
            }
        });
        let unowned: Vec<u32> = futures::future::join_all(holders)
            .await
            .into_iter()
            .filter(|(_, owned)| !owned)
            .map(|(p, _)| p)
            .collect();
        let here = self
            .metrics
            .partitions_owned
            .load(std::sync::atomic::Ordering::Relaxed);
        let owned = u64::from(total) - unowned.len() as u64;
        Check {
            ok: unowned.is_empty(),
            detail: if unowned.is_empty() {
                format!(
                    "{total} of {total} partitions have a verifier: {here} this process, {} others",
                    owned.saturating_sub(here)
                )
            } else {
                format!(
                    "{} of {total} partitions have no verifier: {unowned:?}",
                    unowned.len()
                )
            },
        }
    }
}

/// Serves the page until `shutdown`; then drops every open connection
/// (the dashboard's event streams included).
pub async fn serve(listener: TcpListener, page: Arc<Page>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let socket = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    tracing::warn!(error = %e, "http listener");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let page = page.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let page = page.clone();
                async move { Ok::<_, Infallible>(route(&page, request).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(socket), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "http request");
            }
        });
    }
    connections.shutdown().await;
}

async fn route(page: &Page, request: Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "this page is read-only: GET only\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = request.uri().path();
    match path {
        "/metrics" => {
            let format = Format::accepted(&request);
            let body = render(&page.metrics, page.lag.pending().await, format);
            whole(StatusCode::OK, format.content_type(), body)
        }
        "/healthz" => json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "up",
                "id": page.metrics.id,
                "started": page.metrics.started,
            }),
        ),
        "/readyz" => {
            let readiness = page.health.readiness().await;
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &readiness)
        }
        _ => match &page.dashboard {
            Some(dashboard) if dashboard::serves(path) => {
                dashboard::route(dashboard, &request).await
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not here: this page serves /metrics, /healthz, /readyz and the dashboard at /\n",
            ),
        },
    }
}

/// A whole response.
pub fn whole(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    whole(status, "text/plain; charset=utf-8", body)
}

pub fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("answers serialize");
    whole(status, "application/json", body)
}

/// The text formats `/metrics` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4: the default.
    Prometheus,
    /// OpenMetrics 1.0 text, for a scraper that asks for it.
    OpenMetrics,
}

impl Format {
    fn accepted(request: &Request<Incoming>) -> Format {
        let accept = request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if accept.contains("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The page's text. `pending` is the verifiers' lag per partition, where known.
pub fn render(m: &Arc<Metrics>, pending: Vec<(u32, u64)>, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        metrics: m.clone(),
        pending,
    }));
    let mut out = String::with_capacity(8192);
    match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
    }
    .expect("writing to a String cannot fail");
    out
}

/// One scrape: the counters as they are, and the lag read for it.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    pending: Vec<(u32, u64)>,
}

/// Names are given without the `_total` of a counter and the unit: the
/// encoders add them (`allot_bids` is written `allot_bids_total`).
impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        counters(
            &mut e,
            "allot_bids",
            "Bid requests answered, by result",
            BidResult::ALL.map(|r| ([("result", r.name())], m.bids(r))),
        )?;
        counters(
            &mut e,
            "allot_requests",
            "Requests answered, by endpoint",
            Endpoint::ALL.map(|p| ([("endpoint", p.name())], load(&m.endpoint(p).requests))),
        )?;
        counters(
            &mut e,
            "allot_request_errors",
            "Error replies, by endpoint",
            Endpoint::ALL.map(|p| ([("endpoint", p.name())], load(&m.endpoint(p).errors))),
        )?;
        counters(
            &mut e,
            "allot_request_errors_by_code",
            "Error replies of every endpoint, by error code",
            ErrorCode::ALL.map(|c| ([("code", c.name())], m.errors(c))),
        )?;
        let confirmed = ([("type", "confirmed"), ("reason", "")], m.confirmed());
        let cancelled = CancelReason::ALL.map(|r| {
            (
                [("type", "cancelled"), ("reason", r.name())],
                m.cancelled(r),
            )
        });
        counters(
            &mut e,
            "allot_outcomes",
            "Outcomes published by this process's verifier, by type and reason",
            std::iter::once(confirmed).chain(cancelled),
        )?;
        {
            let mut metric = e.encode_descriptor(
                "allot_request_duration",
                "From receiving a request to sending its reply, by endpoint",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for p in Endpoint::ALL {
                let labels = [("endpoint", p.name())];
                let counts = m.endpoint(p).reply_time.read();
                histogram(&mut metric.encode_family(&labels)?, &counts)?;
            }
        }
        {
            let mut metric = e.encode_descriptor(
                "allot_decision_latency",
                "From a try's tried_at to its outcome's decided_at",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            histogram(&mut metric, &m.latency.read())?;
        }
        {
            let mut metric = e.encode_descriptor(
                "allot_verifier_pending",
                "Log entries not yet decided and acked, per partition",
                None,
                MetricType::Gauge,
            )?;
            for (p, pending) in &self.pending {
                let labels = [("partition", p.to_string())];
                metric.encode_family(&labels)?.encode_gauge(pending)?;
            }
        }
        e.encode_descriptor(
            "allot_partitions_owned",
            "Partitions this process decides",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&load(&m.partitions_owned))?;
        counters(
            &mut e,
            "allot_superseded",
            "Times this process's verifier found another had taken over, and stood by",
            [(NO_LABELS, load(&m.superseded))],
        )?;
        counters(
            &mut e,
            "allot_fenced",
            "Times JetStream refused this process's outcomes because another verifier's fence was newer",
            [(NO_LABELS, load(&m.fenced))],
        )?;
        Ok(())
    }
}

/// The label set of a metric that has none.
const NO_LABELS: [(&str, &str); 0] = [];

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// A counter family: one sample per label set.
fn counters<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

fn histogram(
    metric: &mut prometheus_client::encoding::MetricEncoder,
    counts: &HistogramCounts,
) -> Result<(), std::fmt::Error> {
    metric.encode_histogram::<NoLabelSet>(counts.sum_secs, counts.count(), &counts.buckets, None)
}
