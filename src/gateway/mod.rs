//! The gateway: turns bid requests into try events, and answers auction
//! open and status requests.
//!
//! A try is appended with no lock and no sequence check, so concurrent bids
//! never conflict; the log's order decides. The gateway only refuses early
//! what can provably never win (unknown auction, below the minimum, closed,
//! sold out), from a view of each auction that the verifier keeps current.
//!
//! - `bid.rs`: the bid path, including resends and fast rejects; what to
//!   answer is decided by `gate.rs`, a pure state machine fed what the I/O
//!   found (unit- and property-tested without a server);
//! - `admin.rs`: opening auctions and reporting their status;
//! - `lifecycle.rs`: withdrawals, raises and closes;
//! - `result.rs`: a bidder asking for the outcome of its own bid;
//! - `intake.rs`: takes requests off NATS on a thread of its own, and
//!   refuses at once what the gateway cannot serve in time;
//! - `failure.rs`: which failures are `unavailable` (resend in a moment)
//!   and which are `internal`;
//! - `view.rs`: what the gateway knows of each auction.

mod admin;
mod bid;
mod failure;
mod gate;
mod intake;
mod lifecycle;
mod recent;
mod result;
mod view;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, HeaderMap, Message, Subject};
use tokio::sync::Semaphore;

use crate::error::Result;
use crate::identity::{Gate, IdentityConfig};
use crate::log::GroupCommit;
use crate::observe::{BidResult, Endpoint, Metrics};
use crate::streams::Streams;
use crate::wire::names;
use crate::wire::{self, AuctionSpec, BidReply, ErrorCode, LogEvent, Reply, RequestError};
use failure::internal;
use view::View;

/// How long a stopping gateway waits for its subscriptions to drain, and
/// then for the requests already buffered.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// The hint of a request refused because the gateway cannot serve it in
/// time.
const OVERLOAD_RETRY_MS: u64 = 50;

/// How long a starting gateway waits for its view of the auctions.
const VIEW_WAIT: Duration = Duration::from_secs(5);

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Requests served at once. One more is answered `unavailable` at once,
    /// with a hint to send it again shortly, rather than left to wait
    /// until its client times out.
    pub max_in_flight: usize,
    /// Longest a bid taken in may wait for a worker thread before its
    /// work starts. Past it, it is answered `unavailable` with a retry
    /// hint instead: under overload, a quick refusal that the client
    /// resends beats an answer that comes when the client has given up.
    pub max_queued: Duration,
    /// The verifier's durable consumer, whose ack floor tells how far the
    /// log is decided.
    pub verifier_consumer: String,
    /// Who bids, withdraws and raises: the body's claim, or the NATS user.
    pub identity: IdentityConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_in_flight: 4096,
            max_queued: Duration::from_millis(100),
            verifier_consumer: names::VERIFIER_CONSUMER.into(),
            identity: IdentityConfig::default(),
        }
    }
}

/// One gateway: shared by every request task.
struct Gateway {
    /// For replies, and requests to the verifier. Not the intake's
    /// connection: with every reply written by the intake's thread, that
    /// thread fell behind under overload (fewer bids decided).
    client: Client,
    /// For appends and lookups.
    streams: Streams,
    /// Settings, as given.
    config: GatewayConfig,
    /// What this gateway knows of each auction.
    view: View,
    /// Request counts for the operators' metrics.
    metrics: Arc<Metrics>,
    /// Who sent a bid, withdraw or raise, and whether it may act now.
    gate: Gate,
    /// Appends tries, several to an entry.
    tries: GroupCommit,
    /// The tries appended lately, for resends.
    recent: recent::Recent,
    /// Outcomes per auction for the status: each request reads only the
    /// entries stored since the last. A tokio lock: held while it reads.
    outcomes: tokio::sync::Mutex<crate::log::OutcomeCounter>,
}

/// Serves requests until `shutdown` completes, then stops taking new ones,
/// answers those already received, and returns. Requests come in on a
/// connection of the intake's own to `url`; replies go out on `client`.
pub async fn run(
    url: &str,
    client: Client,
    streams: Streams,
    config: GatewayConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let gateway = Arc::new(Gateway {
        client,
        tries: GroupCommit::new(streams.clone()),
        recent: recent::Recent::default(),
        outcomes: Default::default(),
        streams,
        config: config.clone(),
        view: View::default(),
        metrics,
        gate: Gate::new(config.identity.clone()),
    });
    // A gateway that answered bids before its view of sold-out and closed
    // auctions had caught up could accept a resend that another gateway
    // (or this one, before a restart) has rejected. Bounded: until the
    // view is current, each bid it does not refuse reads its auction's
    // status entry instead (as after a watch is lost, later), which is
    // slower, not wrong.
    let watcher = AbortOnDrop(tokio::spawn(view::watch_fill(gateway.clone())));
    // Entries of several tries only once no older allot runs beside this
    // one; checked before serving, then every few seconds.
    check_formats(&gateway).await;
    let formats = AbortOnDrop(tokio::spawn({
        let gateway = gateway.clone();
        async move {
            loop {
                tokio::time::sleep(FORMAT_CHECK_EVERY).await;
                check_formats(&gateway).await;
            }
        }
    }));
    if !gateway.view.freshness.wait_current(VIEW_WAIT).await {
        tracing::warn!("the auction view did not catch up in time; serving anyway");
    }
    let permits = Arc::new(Semaphore::new(config.max_in_flight));
    let intake = intake::Intake::start(url.to_string(), gateway.clone(), permits.clone()).await?;
    shutdown.await;
    intake.stop().await;
    drop(formats);
    let _ = permits.acquire_many(config.max_in_flight as u32).await;
    drop(watcher);
    // The last replies are flushed by the owner of the connection
    // (`service::run`), once, rather than here and there again.
    tracing::info!("gateway stopped");
    Ok(())
}

/// A task that ends with its owner, on every way out.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often a gateway asks which log formats the running allot
/// instances read.
const FORMAT_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Sets the gateway's entry format to the oldest any running allot reads
/// (see [`crate::observe::micro::LOG_FORMAT`]). No answer changes nothing.
async fn check_formats(gateway: &Gateway) {
    let wait = std::time::Duration::from_millis(150);
    match crate::observe::micro::oldest_log_format(&gateway.client, wait).await {
        Ok(Some(format)) => gateway.tries.set_format(format),
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "cannot ask which log formats run"),
    }
}

impl Gateway {
    /// The endpoint a request was sent to.
    fn endpoint(&self, message: &Message) -> Endpoint {
        let prefix = self.streams.subjects.prefix();
        let kind = message
            .subject
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or_default();
        // Only the endpoints' kinds are subscribed to.
        Endpoint::of(kind).unwrap_or(Endpoint::Status)
    }

    /// Answers a request that cannot be served in time, on `client`:
    /// `unavailable` with a hint, at once, and nothing written. Either
    /// every slot is taken, or it has waited too long for a worker.
    async fn overloaded(&self, client: &Client, message: Message, received: Instant) {
        let Some(reply_to) = message.reply.clone() else {
            return;
        };
        let endpoint = self.endpoint(&message);
        let busy = failure::unavailable(
            format!("this gateway is at capacity; send the same request again in {OVERLOAD_RETRY_MS} ms"),
            OVERLOAD_RETRY_MS,
        );
        let error = match endpoint {
            Endpoint::Bid => {
                self.metrics.bid(BidResult::Error);
                respond::<BidReply>(client, reply_to, Err(busy)).await
            }
            Endpoint::Withdraw => respond::<wire::WithdrawReply>(client, reply_to, Err(busy)).await,
            Endpoint::Raise => respond::<wire::RaiseReply>(client, reply_to, Err(busy)).await,
            Endpoint::Close => respond::<wire::CloseReply>(client, reply_to, Err(busy)).await,
            Endpoint::Open => respond::<wire::OpenReply>(client, reply_to, Err(busy)).await,
            Endpoint::Status => respond::<wire::StatusReply>(client, reply_to, Err(busy)).await,
            Endpoint::Result => respond::<wire::ResultReply>(client, reply_to, Err(busy)).await,
        };
        let error = error.as_ref().map(|(code, text)| (*code, text.as_str()));
        self.metrics.request(endpoint, received.elapsed(), error);
    }

    /// Serves a request taken in at `received`, unless it is a bid that
    /// has waited too long for a worker thread.
    async fn handle(&self, message: Message, received: Instant) {
        let endpoint = self.endpoint(&message);
        if refused_when_late(endpoint) && received.elapsed() > self.config.max_queued {
            return self.overloaded(&self.client, message, received).await;
        }
        let Some(reply_to) = message.reply.clone() else {
            tracing::debug!(subject = %message.subject, "request without a reply subject ignored");
            return;
        };
        let error = match endpoint {
            Endpoint::Bid => {
                let result = self.bid(&message).await;
                self.metrics.bid(match &result {
                    Ok(BidReply::Accepted { .. }) => BidResult::Accepted,
                    Ok(BidReply::Rejected { .. }) => BidResult::Rejected,
                    _ => BidResult::Error,
                });
                self.respond(reply_to, result).await
            }
            Endpoint::Withdraw => self.respond(reply_to, self.withdraw(&message).await).await,
            Endpoint::Raise => self.respond(reply_to, self.raise(&message).await).await,
            Endpoint::Close => self.respond(reply_to, self.close(&message).await).await,
            Endpoint::Open => self.respond(reply_to, self.open(&message).await).await,
            // Boxed: a status read is rare, and its future is the largest
            // (9.5 kB against 2.6 kB for a bid), which made every
            // request's task as large.
            Endpoint::Status => {
                self.respond(reply_to, Box::pin(self.status(&message)).await)
                    .await
            }
            Endpoint::Result => self.respond(reply_to, self.result(&message).await).await,
        };
        let error = error.as_ref().map(|(code, text)| (*code, text.as_str()));
        self.metrics.request(endpoint, received.elapsed(), error);
    }

    /// Sends a reply on the gateway's connection.
    async fn respond<R: Reply>(
        &self,
        reply_to: Subject,
        result: Result<R, RequestError>,
    ) -> Option<(ErrorCode, String)> {
        respond(&self.client, reply_to, result).await
    }

    /// An auction's spec: from the cache, else from its `open` event (the
    /// first on its subject, as for the verifier).
    async fn spec(&self, auction_id: &str) -> Result<Option<Arc<AuctionSpec>>, RequestError> {
        if let Some(spec) = self.view.specs.read().unwrap().get(auction_id) {
            return Ok(Some(spec.clone()));
        }
        let Some(stored) = self
            .streams
            .first_event(auction_id)
            .await
            .map_err(internal)?
        else {
            return Ok(None);
        };
        let LogEvent::Open(open) = serde_json::from_slice(&stored.payload).map_err(internal)?
        else {
            return Err(RequestError::new(
                ErrorCode::Internal,
                format!("auction event for {auction_id:?} is not an open event"),
            ));
        };
        let spec = Arc::new(open.spec);
        self.view
            .specs
            .write()
            .unwrap()
            .insert(auction_id.to_string(), spec.clone());
        Ok(Some(spec))
    }
}

/// Sends a reply; error replies also carry the NATS micro error headers.
/// Returns an error reply's code and text, for the stats.
async fn respond<R: Reply>(
    client: &Client,
    reply_to: Subject,
    result: Result<R, RequestError>,
) -> Option<(ErrorCode, String)> {
    let reply = result.unwrap_or_else(R::from);
    let body = serde_json::to_vec(&reply)
        .expect("replies serialize")
        .into();
    let error = reply.error().map(|(code, text)| (code, one_line(text)));
    let sent = match &error {
        None => client.publish(reply_to, body).await,
        Some((code, text)) => {
            let mut headers = HeaderMap::new();
            headers.insert(wire::SERVICE_ERROR, text.as_str());
            headers.insert(wire::SERVICE_ERROR_CODE, code.status().to_string().as_str());
            client.publish_with_headers(reply_to, headers, body).await
        }
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot send reply");
    }
    error
}

/// Whether a request to `endpoint` that waited too long for a worker is
/// refused: bids are the flood; the rare rest is served, however late.
fn refused_when_late(endpoint: Endpoint) -> bool {
    match endpoint {
        Endpoint::Bid => true,
        Endpoint::Withdraw
        | Endpoint::Raise
        | Endpoint::Close
        | Endpoint::Open
        | Endpoint::Status
        | Endpoint::Result => false,
    }
}

/// Header values cannot hold line breaks.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}
