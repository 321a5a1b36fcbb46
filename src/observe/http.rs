//! The Prometheus page: `GET /metrics` on `--metrics-addr`, in the text
//! exposition format (version 0.0.4).
//!
//! A scrape is one small request every few seconds, so this is a plain
//! HTTP/1.1 responder on a tokio listener rather than a web framework in
//! the build: it reads the request head, answers, and closes.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, PullConsumer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{BidResult, Endpoint, Metrics, LATENCY_BOUNDS};
use crate::streams::Streams;
use crate::wire::{CancelReason, ErrorCode};

/// Where the verifier's lag is read: the log and its consumer.
pub struct Lag {
    pub streams: Streams,
    pub consumer: String,
}

impl Lag {
    /// Per partition, log entries not yet decided and acked: undelivered
    /// plus delivered but unacked. Partitions NATS cannot say about (no
    /// verifier has decided them yet) are left out.
    async fn pending(&self) -> Vec<(u32, u64)> {
        // Asked all at once, each for at most a second: a consumer still
        // being set up on a cluster can leave its info request waiting for
        // the client's whole timeout, and the page must not.
        let asks = (0..self.streams.subjects.partitions()).map(|p| async move {
            let name = crate::wire::names::verifier_consumer(&self.consumer, p);
            let ask = async {
                let mut consumer: PullConsumer = self
                    .streams
                    .log
                    .get_consumer::<pull::Config>(&name)
                    .await
                    .ok()?;
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
}

/// Serves the page until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    lag: Arc<Lag>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (socket, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (metrics, lag) = (metrics.clone(), lag.clone());
        tokio::spawn(async move {
            // A client that never finishes its request holds nothing for long.
            let answered =
                tokio::time::timeout(Duration::from_secs(10), answer(socket, &metrics, &lag));
            if let Ok(Err(e)) = answered.await {
                tracing::debug!(error = %e, "metrics request");
            }
        });
    }
}

async fn answer(mut socket: TcpStream, metrics: &Metrics, lag: &Lag) -> std::io::Result<()> {
    // The request line is all that matters; read until the head ends.
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            let pending = lag.pending().await;
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                render(metrics, pending),
            )
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only /metrics is served here\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET /metrics is served here\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}

/// The page's text. `pending` is the verifiers' lag per partition, where known.
pub fn render(m: &Metrics, pending: Vec<(u32, u64)>) -> String {
    let mut out = String::with_capacity(4096);
    let mut w = |line: String| {
        out.push_str(&line);
        out.push('\n');
    };

    w(header(
        "allot_bids_total",
        "counter",
        "Bid requests answered, by result.",
    ));
    for result in BidResult::ALL {
        w(format!(
            "allot_bids_total{{result=\"{result}\"}} {}",
            m.bids(result)
        ));
    }

    let per_endpoint = |name: &str, help: &str, count: fn(&super::EndpointStats) -> u64| {
        let mut lines = vec![header(name, "counter", help)];
        for e in Endpoint::ALL {
            let n = count(m.endpoint(e));
            lines.push(format!("{name}{{endpoint=\"{}\"}} {n}", e.name()));
        }
        lines.join("\n")
    };
    w(per_endpoint(
        "allot_requests_total",
        "Requests answered, by endpoint.",
        |s| s.requests.load(Relaxed),
    ));
    w(per_endpoint(
        "allot_request_errors_total",
        "Error replies, by endpoint.",
        |s| s.errors.load(Relaxed),
    ));
    w(header(
        "allot_request_errors_by_code_total",
        "counter",
        "Error replies of every endpoint, by error code.",
    ));
    for code in ErrorCode::ALL {
        w(format!(
            "allot_request_errors_by_code_total{{code=\"{code}\"}} {}",
            m.errors(code)
        ));
    }

    w(header(
        "allot_outcomes_total",
        "counter",
        "Outcomes published by this process's verifier, by type and reason.",
    ));
    w(format!(
        "allot_outcomes_total{{type=\"confirmed\",reason=\"\"}} {}",
        m.confirmed()
    ));
    for reason in CancelReason::ALL {
        w(format!(
            "allot_outcomes_total{{type=\"cancelled\",reason=\"{}\"}} {}",
            reason.name(),
            m.cancelled(reason)
        ));
    }

    w(header(
        "allot_decision_latency_seconds",
        "histogram",
        "From a try's tried_at to its outcome's decided_at.",
    ));
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BOUNDS.iter().enumerate() {
        cumulative += m.latency[i].load(Relaxed);
        w(format!(
            "allot_decision_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        ));
    }
    cumulative += m.latency[LATENCY_BOUNDS.len()].load(Relaxed);
    w(format!(
        "allot_decision_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    ));
    w(format!(
        "allot_decision_latency_seconds_sum {}",
        m.latency_sum_us.load(Relaxed) as f64 / 1e6
    ));
    w(format!("allot_decision_latency_seconds_count {cumulative}"));

    w(header(
        "allot_verifier_pending",
        "gauge",
        "Log entries not yet decided and acked, per partition.",
    ));
    for (p, pending) in pending {
        w(format!(
            "allot_verifier_pending{{partition=\"{p}\"}} {pending}"
        ));
    }
    w(header(
        "allot_partitions_owned",
        "gauge",
        "Partitions this process decides.",
    ));
    w(format!(
        "allot_partitions_owned {}",
        m.partitions_owned.load(Relaxed)
    ));
    w(header(
        "allot_superseded_total",
        "counter",
        "Times this process's verifier found another had taken over, and stood by.",
    ));
    w(format!(
        "allot_superseded_total {}",
        m.superseded.load(Relaxed)
    ));
    w(header(
        "allot_fenced_total",
        "counter",
        "Times JetStream refused this process's outcomes because another verifier's fence was newer.",
    ));
    w(format!("allot_fenced_total {}", m.fenced.load(Relaxed)));
    out
}

fn header(name: &str, kind: &str, help: &str) -> String {
    format!("# HELP {name} {help}\n# TYPE {name} {kind}")
}
