//! `allot serve` as a NATS micro service: answers `$SRV.PING`, `$SRV.INFO`
//! and `$SRV.STATS` (each also by name, and by name and id), so `nats micro
//! ls`, `info` and `stats` list every running instance with per-endpoint
//! request and error counts.
//!
//! The answers are async-nats's own micro types (`async_nats::service`),
//! but the requests are not served through its `Service`: that one answers
//! an error with an empty body, where allot's error replies carry a JSON
//! body that clients and `schemas/` rely on, and it counts as an error only
//! what is answered through it. So the gateway keeps its own request loop
//! and counts into [`Metrics`], and this module answers the three verbs
//! from those counts.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::{endpoint, error, Info, PingResponse, Stats};
use async_nats::Client;
use futures::StreamExt;

use super::{Endpoint, Metrics};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::names::GATEWAY_QUEUE;
use crate::wire::Subjects;

/// The service's name in `$SRV` subjects and answers.
pub const NAME: &str = "allot";

/// What the answers say about this process.
pub struct Registration {
    pub subjects: Subjects,
    /// Whether this process serves requests (a verifier-only process lists
    /// no endpoints).
    pub serves_requests: bool,
    /// `role`, the subject prefix and anything else worth showing.
    pub metadata: HashMap<String, String>,
}

/// Answers the micro service verbs until `shutdown`.
pub async fn serve(
    client: Client,
    registration: Registration,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let mut verbs = futures::stream::SelectAll::new();
    for verb in ["PING", "INFO", "STATS"] {
        for subject in [
            format!("$SRV.{verb}"),
            format!("$SRV.{verb}.{NAME}"),
            format!("$SRV.{verb}.{NAME}.{}", metrics.id),
        ] {
            let sub = client
                .subscribe(subject.clone())
                .await
                .map_err(|e| Error::with_source(ErrorKind::Nats, e).context(subject))?;
            verbs.push(sub.map(move |m| (verb, m)));
        }
    }
    tokio::pin!(shutdown);
    loop {
        let (verb, message) = tokio::select! {
            _ = &mut shutdown => break,
            next = verbs.next() => match next {
                Some(next) => next,
                None => break,
            },
        };
        let Some(reply) = message.reply else { continue };
        let body = match verb {
            "PING" => serde_json::to_vec(&ping(&registration, &metrics)),
            "INFO" => serde_json::to_vec(&info(&registration, &metrics)),
            _ => serde_json::to_vec(&stats(&registration, &metrics)),
        }
        .expect("micro answers serialize");
        if let Err(e) = client.publish(reply, body.into()).await {
            tracing::warn!(error = %e, verb, "cannot answer a micro service request");
        }
    }
    Ok(())
}

/// The metadata key naming the newest record format an instance reads
/// and writes ([`crate::wire::RECORD_FORMAT`]: 2, entries of several
/// tries; 3, entries of outcomes too); instances of versions before
/// entries of several tries do not set it, and read format 1 only.
pub const LOG_FORMAT: &str = "log_format";

/// The oldest log entry format that any allot instance answering a ping
/// within `wait` reads; `None` when none answers.
pub async fn oldest_log_format(client: &Client, wait: Duration) -> Result<Option<u32>> {
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, e).context(inbox.clone()))?;
    let subject = format!("$SRV.PING.{NAME}");
    client
        .publish_with_reply(subject.clone(), inbox, bytes::Bytes::new())
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, e).context(subject))?;
    let mut oldest = None;
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await {
        let Ok(ping) = serde_json::from_slice::<PingResponse>(&answer.payload) else {
            continue;
        };
        let format = ping
            .metadata
            .get(LOG_FORMAT)
            .and_then(|f| f.parse::<u32>().ok())
            .unwrap_or(1);
        oldest = Some(oldest.map_or(format, |o: u32| o.min(format)));
    }
    Ok(oldest)
}

fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

fn ping(r: &Registration, m: &Metrics) -> PingResponse {
    PingResponse {
        kind: "io.nats.micro.v1.ping_response".into(),
        name: NAME.into(),
        id: m.id.clone(),
        version: version(),
        metadata: r.metadata.clone(),
    }
}

fn endpoints(r: &Registration) -> impl Iterator<Item = (Endpoint, String)> + '_ {
    Endpoint::ALL
        .into_iter()
        .filter(|_| r.serves_requests)
        .map(|e| (e, r.subjects.request_wildcard(e.kind())))
}

fn info(r: &Registration, m: &Metrics) -> Info {
    Info {
        kind: "io.nats.micro.v1.info_response".into(),
        name: NAME.into(),
        id: m.id.clone(),
        description: "competitive bidding for N winning slots (Try-Confirm-Cancel)".into(),
        version: version(),
        metadata: r.metadata.clone(),
        endpoints: endpoints(r)
            .map(|(e, subject)| endpoint::Info {
                name: e.name().into(),
                subject,
                queue_group: GATEWAY_QUEUE.into(),
                metadata: HashMap::new(),
            })
            .collect(),
    }
}

fn stats(r: &Registration, m: &Metrics) -> Stats {
    Stats {
        kind: "io.nats.micro.v1.stats_response".into(),
        name: NAME.into(),
        id: m.id.clone(),
        version: version(),
        started: m.started,
        endpoints: endpoints(r)
            .map(|(e, subject)| {
                let s = m.endpoint(e);
                let requests = s.requests.load(Relaxed);
                let processing_time = Duration::from_nanos(s.processing_ns.load(Relaxed));
                let last_error =
                    s.last_error
                        .lock()
                        .expect("lock poisoned")
                        .clone()
                        .map(|(code, status)| error::Error {
                            code: code.into(),
                            status,
                        });
                endpoint::Stats {
                    name: e.name().into(),
                    subject,
                    requests: requests as usize,
                    errors: s.errors.load(Relaxed) as usize,
                    processing_time,
                    average_processing_time: Duration::from_nanos(
                        s.processing_ns.load(Relaxed) / requests.max(1),
                    ),
                    last_error,
                    data: None,
                    queue_group: GATEWAY_QUEUE.into(),
                }
            })
            .collect(),
    }
}
