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
//! - `failure.rs`: which failures are `unavailable` (resend in a moment)
//!   and which are `internal`;
//! - `view.rs`: what the gateway knows of each auction.

mod admin;
mod bid;
mod failure;
mod gate;
mod lifecycle;
mod recent;
mod result;
mod view;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_nats::{Client, HeaderMap, Message, Subject};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::error::{Error, ErrorKind, Result};
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
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The hint of a request refused because every slot was taken.
const OVERLOAD_RETRY_MS: u64 = 50;

/// How long a starting gateway waits for its view of the auctions.
const VIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Requests served at once. One more is answered `unavailable` at once,
    /// with a hint to send it again shortly, rather than left to wait
    /// until its client times out.
    pub max_in_flight: usize,
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
            verifier_consumer: names::VERIFIER_CONSUMER.into(),
            identity: IdentityConfig::default(),
        }
    }
}

/// One gateway: shared by every request task.
struct Gateway {
    /// For replies.
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
/// answers those already received, and returns.
pub async fn run(
    client: Client,
    streams: Streams,
    config: GatewayConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let gateway = Arc::new(Gateway {
        client: client.clone(),
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
    let watcher = tokio::spawn(view::watch_fill(gateway.clone()));
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
    let subjects = gateway.streams.subjects.clone();
    let mut requests = futures::stream::SelectAll::new();
    for endpoint in Endpoint::ALL {
        let subject = subjects.request_wildcard(endpoint.kind());
        let sub = client
            .queue_subscribe(subject.clone(), names::GATEWAY_QUEUE.into())
            .await
            .map_err(|e| Error::with_source(ErrorKind::Nats, e).context(subject))?;
        requests.push(sub);
    }
    tracing::info!(prefix = subjects.prefix(), "gateway serving requests");

    let permits = Arc::new(Semaphore::new(config.max_in_flight));
    tokio::pin!(shutdown);
    // Once shutting down: until when buffered requests are still served.
    let mut draining: Option<tokio::time::Instant> = None;
    loop {
        let message = tokio::select! {
            _ = &mut shutdown, if draining.is_none() => {
                // Stop new deliveries; what is already buffered is still
                // served. Bounded: with NATS gone, a drain never completes
                // and the subscriptions never end.
                let drains = futures::future::join_all(requests.iter_mut().map(|s| s.drain()));
                let _ = tokio::time::timeout(DRAIN_LIMIT, drains).await;
                draining = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                continue;
            }
            _ = tokio::time::sleep_until(draining.unwrap_or_else(tokio::time::Instant::now)), if draining.is_some() => break,
            message = requests.next() => message,
        };
        let Some(message) = message else { break };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            gateway.overloaded(message).await;
            continue;
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            gateway.handle(message).await;
            drop(permit);
        });
    }
    drop(formats);
    let _ = permits.acquire_many(config.max_in_flight as u32).await;
    watcher.abort();
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

    /// Answers a request that finds every slot taken: `unavailable` with a
    /// hint, at once, and nothing written.
    async fn overloaded(&self, message: Message) {
        let Some(reply_to) = message.reply.clone() else {
            return;
        };
        let received = Instant::now();
        let endpoint = self.endpoint(&message);
        let busy = failure::unavailable(
            format!(
                "this gateway has {} requests in hand; send the same request again in {OVERLOAD_RETRY_MS} ms",
                self.config.max_in_flight
            ),
            OVERLOAD_RETRY_MS,
        );
        let error = match endpoint {
            Endpoint::Bid => {
                self.metrics.bid(BidResult::Error);
                self.respond::<BidReply>(reply_to, Err(busy)).await
            }
            Endpoint::Withdraw => {
                self.respond::<wire::WithdrawReply>(reply_to, Err(busy))
                    .await
            }
            Endpoint::Raise => self.respond::<wire::RaiseReply>(reply_to, Err(busy)).await,
            Endpoint::Close => self.respond::<wire::CloseReply>(reply_to, Err(busy)).await,
            Endpoint::Open => self.respond::<wire::OpenReply>(reply_to, Err(busy)).await,
            Endpoint::Status => self.respond::<wire::StatusReply>(reply_to, Err(busy)).await,
            Endpoint::Result => self.respond::<wire::ResultReply>(reply_to, Err(busy)).await,
        };
        let error = error.as_ref().map(|(code, text)| (*code, text.as_str()));
        self.metrics.request(endpoint, received.elapsed(), error);
    }

    async fn handle(&self, message: Message) {
        let Some(reply_to) = message.reply.clone() else {
            tracing::debug!(subject = %message.subject, "request without a reply subject ignored");
            return;
        };
        let received = Instant::now();
        let endpoint = self.endpoint(&message);
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
            Endpoint::Status => self.respond(reply_to, self.status(&message).await).await,
            Endpoint::Result => self.respond(reply_to, self.result(&message).await).await,
        };
        let error = error.as_ref().map(|(code, text)| (*code, text.as_str()));
        self.metrics.request(endpoint, received.elapsed(), error);
    }

    /// Sends a reply; error replies also carry the NATS micro error headers.
    /// Returns an error reply's code and text, for the stats.
    async fn respond<R: Reply>(
        &self,
        reply_to: Subject,
        result: Result<R, RequestError>,
    ) -> Option<(ErrorCode, String)> {
        let reply = result.unwrap_or_else(R::from);
        let body = serde_json::to_vec(&reply)
            .expect("replies serialize")
            .into();
        let error = reply.error().map(|(code, text)| (code, one_line(text)));
        let sent = match &error {
            None => self.client.publish(reply_to, body).await,
            Some((code, text)) => {
                let mut headers = HeaderMap::new();
                headers.insert(wire::SERVICE_ERROR, text.as_str());
                headers.insert(wire::SERVICE_ERROR_CODE, code.status().to_string().as_str());
                self.client
                    .publish_with_headers(reply_to, headers, body)
                    .await
            }
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot send reply");
        }
        error
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

/// Header values cannot hold line breaks.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}
