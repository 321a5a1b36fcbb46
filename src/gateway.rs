//! The gateway: turns bid requests into try events, and answers auction
//! open and status requests.
//!
//! A try is appended with no lock and no sequence check, so concurrent bids
//! never conflict; the log's order decides. The gateway only refuses early
//! what can provably never win (unknown auction, below the minimum, closed,
//! sold out), from a view of each auction that the verifier keeps current.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::{Client, HeaderMap, Message, Subject};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::error::{Error, ErrorKind, Result};
use crate::streams::Streams;
use crate::wire::{
    self, decode_bid, decode_open, timestamp, AuctionSpec, AuctionState, AuctionView, BidReply,
    BidRequest, ErrorCode, LogEvent, OpenEvent, OpenReply, OutcomeEvent, OutcomeKind, RejectReason,
    Reply, RequestError, StatusReply, Subjects, TryEvent,
};

/// Queue group shared by every gateway, so each request is served once.
pub const QUEUE_GROUP: &str = "allot-gateway";

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Requests served at once; more wait in the subscription buffer.
    pub max_in_flight: usize,
    /// The verifier's durable consumer, whose ack floor tells how far the
    /// log is decided.
    pub verifier_consumer: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_in_flight: 4096,
            verifier_consumer: crate::verifier::CONSUMER.into(),
        }
    }
}

/// What the gateway knows about auctions, for fast rejects.
#[derive(Default)]
struct View {
    /// Specs of auctions seen open. Specs never change once opened, so a
    /// cached one is never stale; auctions not found are not cached.
    specs: RwLock<HashMap<String, Arc<AuctionSpec>>>,
    /// Auctions the verifier has reported sold out. In first-come, first-N
    /// allocation a sold-out auction stays sold out.
    sold_out: RwLock<HashSet<String>>,
    /// Sold-out or closed auctions whose every try the verifier has
    /// decided: a bid id missing from the bids bucket is then provably new.
    settled: RwLock<HashSet<String>>,
    /// Try appends in progress in this gateway, per auction.
    appends: Appends,
}

/// Counts the try appends in progress per auction, so that a resend that
/// finds its auction sold out or closed first waits for the appends that
/// began before: one of them may be its own original.
#[derive(Default)]
struct Appends(Mutex<HashMap<String, usize>>);

/// One append in progress; counted until dropped.
struct Appending<'a> {
    appends: &'a Appends,
    auction_id: String,
}

impl Appends {
    fn start(&self, auction_id: &str) -> Appending<'_> {
        *self
            .0
            .lock()
            .unwrap()
            .entry(auction_id.to_string())
            .or_default() += 1;
        Appending {
            appends: self,
            auction_id: auction_id.to_string(),
        }
    }

    /// Waits until no append is in progress for the auction (bounded: an
    /// append ends with its ack or its timeout).
    async fn drained(&self, auction_id: &str) {
        for _ in 0..5000 {
            if !self.0.lock().unwrap().contains_key(auction_id) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        let mut counts = self.appends.0.lock().unwrap();
        if let Some(n) = counts.get_mut(&self.auction_id) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.auction_id);
            }
        }
    }
}

struct Gateway {
    client: Client,
    streams: Streams,
    config: GatewayConfig,
    view: View,
}

/// Serves requests until `shutdown` completes, then stops taking new ones,
/// answers those already received, and returns.
pub async fn run(
    client: Client,
    streams: Streams,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let gateway = Arc::new(Gateway {
        client: client.clone(),
        streams,
        config: config.clone(),
        view: View::default(),
    });
    let watcher = tokio::spawn(watch_fill(gateway.clone()));
    let subjects = gateway.streams.subjects.clone();
    let mut requests = futures::stream::SelectAll::new();
    for kind in ["bid", "admin.open", "status"] {
        let subject = subjects.request_wildcard(kind);
        let sub = client
            .queue_subscribe(subject.clone(), QUEUE_GROUP.into())
            .await
            .map_err(|e| Error::with_source(ErrorKind::Nats, e).context(subject))?;
        requests.push(sub);
    }
    tracing::info!(prefix = subjects.prefix(), "gateway serving requests");

    let permits = Arc::new(Semaphore::new(config.max_in_flight));
    tokio::pin!(shutdown);
    let mut draining = false;
    loop {
        let message = tokio::select! {
            _ = &mut shutdown, if !draining => {
                // Stop new deliveries; what is already buffered is still served.
                for sub in requests.iter_mut() {
                    let _ = sub.drain().await;
                }
                draining = true;
                continue;
            }
            message = requests.next() => message,
        };
        let Some(message) = message else { break };
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let gateway = gateway.clone();
        tokio::spawn(async move {
            gateway.handle(message).await;
            drop(permit);
        });
    }
    let _ = permits.acquire_many(config.max_in_flight as u32).await;
    watcher.abort();
    client
        .flush()
        .await
        .map_err(|e| Error::with_source(ErrorKind::Nats, e))?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Follows the status bucket, so fast rejects see what the verifier decided.
async fn watch_fill(gateway: Arc<Gateway>) {
    loop {
        match gateway.streams.status.watch_with_history(">").await {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    let Ok(entry) = entry else { break };
                    if let Ok(view) = serde_json::from_slice::<AuctionView>(&entry.value) {
                        if view.sold_out {
                            gateway.view.sold_out.write().unwrap().insert(entry.key);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the status bucket; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

impl Gateway {
    async fn handle(&self, message: Message) {
        let Some(reply_to) = message.reply.clone() else {
            tracing::debug!(subject = %message.subject, "request without a reply subject ignored");
            return;
        };
        let prefix = self.streams.subjects.prefix();
        let kind = message
            .subject
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or_default();
        if kind.starts_with("bid.") {
            self.respond(reply_to, self.bid(&message).await).await
        } else if kind.starts_with("admin.open.") {
            self.respond(reply_to, self.open(&message).await).await
        } else {
            self.respond(reply_to, self.status(&message).await).await
        }
    }

    /// Sends a reply; error replies also carry the NATS micro error headers.
    async fn respond<R: Reply>(&self, reply_to: Subject, result: Result<R, RequestError>) {
        let reply = result.unwrap_or_else(R::from);
        let body = serde_json::to_vec(&reply)
            .expect("replies serialize")
            .into();
        let sent = match reply.error() {
            None => self.client.publish(reply_to, body).await,
            Some((code, text)) => {
                let mut headers = HeaderMap::new();
                headers.insert(wire::SERVICE_ERROR, one_line(text).as_str());
                headers.insert(wire::SERVICE_ERROR_CODE, code.status().to_string().as_str());
                self.client
                    .publish_with_headers(reply_to, headers, body)
                    .await
            }
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot send reply");
        }
    }

    /// A bid: validate, maybe refuse early, else append its try.
    async fn bid(&self, message: &Message) -> Result<BidReply, RequestError> {
        let subjects = &self.streams.subjects;
        let auction_id = subjects.auction_in(&message.subject, "bid")?;
        let request = decode_bid(&message.payload, auction_id)?;
        let reject = |reason| BidReply::Rejected {
            bid_id: request.bid_id.clone(),
            auction_id: auction_id.to_string(),
            reason,
        };
        let Some(spec) = self.spec(auction_id).await? else {
            return Ok(reject(RejectReason::UnknownAuction));
        };
        // An accepted bid always met the minimum, so a resend below it
        // cannot be an earlier accepted bid.
        if request.amount < spec.min_amount {
            return Ok(reject(RejectReason::BelowMinimum));
        }
        // Counted before the fill and close checks, so that a resend seeing
        // the auction sold out or closed can wait for this append.
        let mut appending = self.view.appends.start(auction_id);
        let now = timestamp::now();
        let blocked = if spec.is_closed_at(now) {
            Some(RejectReason::AuctionClosed)
        } else if self.view.sold_out.read().unwrap().contains(auction_id) {
            Some(RejectReason::SoldOut)
        } else {
            None
        };
        if let Some(reason) = blocked {
            // The bid may be a resend of one accepted before the auction
            // filled or closed: that one gets its original reply. Once the
            // verifier has decided all of the auction's tries, the bids
            // bucket knows every such bid. Until then the bid cannot be
            // proven new, and takes the normal path below: JetStream's
            // de-duplication and the verifier give it the right answer.
            drop(appending);
            self.view.appends.drained(auction_id).await;
            if self.settled(auction_id).await? {
                return match self.decided(auction_id, &request.bid_id).await? {
                    Some(o) => resend(auction_id, &request, o.try_seq, &o.bidder_id, o.amount),
                    None => Ok(reject(reason)),
                };
            }
            appending = self.view.appends.start(auction_id);
        }
        let event = LogEvent::Try(TryEvent {
            bid_id: request.bid_id.clone(),
            auction_id: auction_id.to_string(),
            bidder_id: request.bidder_id.clone(),
            amount: request.amount,
            tried_at: now,
        });
        let ack = self
            .streams
            .js
            .send_publish(
                subjects.try_event(auction_id),
                PublishMessage::build()
                    .message_id(TryEvent::msg_id(auction_id, &request.bid_id))
                    .payload(serde_json::to_vec(&event).expect("events serialize").into()),
            )
            .await
            .map_err(internal)?
            .await
            .map_err(internal)?;
        drop(appending);
        if ack.duplicate {
            return self.duplicate(auction_id, &request, ack.sequence).await;
        }
        Ok(BidReply::Accepted {
            bid_id: request.bid_id,
            auction_id: auction_id.to_string(),
            try_seq: ack.sequence,
            duplicate: false,
        })
    }

    /// The reply to a bid id already in the log at `try_seq`.
    async fn duplicate(
        &self,
        auction_id: &str,
        request: &BidRequest,
        try_seq: u64,
    ) -> Result<BidReply, RequestError> {
        let stored = self
            .streams
            .log
            .direct_get(try_seq)
            .await
            .map_err(internal)?;
        match serde_json::from_slice::<LogEvent>(&stored.payload) {
            Ok(LogEvent::Try(t)) => resend(auction_id, request, try_seq, &t.bidder_id, t.amount),
            _ => Err(RequestError::new(
                ErrorCode::Internal,
                format!("log entry {try_seq} is not a try"),
            )),
        }
    }

    /// The outcome of a decided bid, from the bids bucket.
    async fn decided(
        &self,
        auction_id: &str,
        bid_id: &str,
    ) -> Result<Option<OutcomeEvent>, RequestError> {
        let key = Subjects::bid_key(auction_id, bid_id);
        match self.streams.bids.get(key).await.map_err(internal)? {
            Some(value) => serde_json::from_slice(&value).map(Some).map_err(internal),
            None => Ok(None),
        }
    }

    /// True once the verifier has decided every try of this auction. Asked
    /// only of sold-out or closed auctions, which take no new tries, so the
    /// answer stays true and is cached.
    async fn settled(&self, auction_id: &str) -> Result<bool, RequestError> {
        if self.view.settled.read().unwrap().contains(auction_id) {
            return Ok(true);
        }
        let log = &self.streams.log;
        let subject = self.streams.subjects.try_event(auction_id);
        let last_try = match log.direct_get_last_for_subject(subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => 0,
            Err(e) => return Err(internal(e)),
        };
        // The verifier acks a try only after its outcome and bids-bucket
        // entry are stored. Give it a moment to catch up.
        for _ in 0..25 {
            let Ok(info) = log.consumer_info(&self.config.verifier_consumer).await else {
                return Ok(false);
            };
            if info.ack_floor.stream_sequence >= last_try {
                self.view
                    .settled
                    .write()
                    .unwrap()
                    .insert(auction_id.to_string());
                return Ok(true);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(false)
    }

    /// An auction's spec: from the cache, else from its `open` event.
    async fn spec(&self, auction_id: &str) -> Result<Option<Arc<AuctionSpec>>, RequestError> {
        if let Some(spec) = self.view.specs.read().unwrap().get(auction_id) {
            return Ok(Some(spec.clone()));
        }
        let subject = self.streams.subjects.auction_event(auction_id);
        let stored = match self.streams.log.direct_get_last_for_subject(subject).await {
            Ok(stored) => stored,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(internal(e)),
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

    /// Opens an auction by appending its `open` event, expecting no earlier
    /// event on the auction's subject: JetStream itself settles a race
    /// between two opens.
    async fn open(&self, message: &Message) -> Result<OpenReply, RequestError> {
        let subjects = &self.streams.subjects;
        let auction_id = subjects.auction_in(&message.subject, "admin.open")?;
        let spec = decode_open(&message.payload, auction_id)?;
        let event = LogEvent::Open(OpenEvent {
            auction_id: auction_id.to_string(),
            spec: spec.clone(),
            opened_at: timestamp::now(),
        });
        let result = self
            .streams
            .js
            .send_publish(
                subjects.auction_event(auction_id),
                PublishMessage::build()
                    .expected_last_subject_sequence(0)
                    .payload(serde_json::to_vec(&event).expect("events serialize").into()),
            )
            .await
            .map_err(internal)?
            .await;
        let (open_seq, duplicate) = match result {
            Ok(ack) => (ack.sequence, false),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                let stored = self
                    .streams
                    .log
                    .direct_get_last_for_subject(subjects.auction_event(auction_id))
                    .await
                    .map_err(internal)?;
                let Ok(LogEvent::Open(existing)) = serde_json::from_slice(&stored.payload) else {
                    return Err(RequestError::new(
                        ErrorCode::Internal,
                        format!("auction event for {auction_id:?} is not an open event"),
                    ));
                };
                if existing.spec != spec {
                    return Err(RequestError::new(
                        ErrorCode::Conflict,
                        format!(
                            "auction {auction_id:?} is already open with different settings: {}",
                            serde_json::to_string(&existing.spec).expect("specs serialize")
                        ),
                    ));
                }
                (stored.sequence, true)
            }
            Err(e) => return Err(internal(e)),
        };
        self.view
            .specs
            .write()
            .unwrap()
            .insert(auction_id.to_string(), Arc::new(spec.clone()));
        Ok(OpenReply::Opened {
            auction_id: auction_id.to_string(),
            spec,
            open_seq,
            duplicate,
        })
    }

    /// An auction's fill, counted from the streams themselves.
    async fn status(&self, message: &Message) -> Result<StatusReply, RequestError> {
        let subjects = &self.streams.subjects;
        let auction_id = subjects.auction_in(&message.subject, "status")?;
        let Some(spec) = self.spec(auction_id).await? else {
            return Err(RequestError::new(
                ErrorCode::UnknownAuction,
                format!("no auction {auction_id:?} has been opened"),
            ));
        };
        let count = |stream, subject: String| async move {
            Streams::count(stream, &subject).await.map_err(internal)
        };
        let tries = count(&self.streams.log, subjects.try_event(auction_id)).await?;
        let confirmed = count(
            &self.streams.outcomes,
            subjects.outcome(auction_id, OutcomeKind::Confirmed),
        )
        .await?;
        let cancelled = count(
            &self.streams.outcomes,
            subjects.outcome(auction_id, OutcomeKind::Cancelled),
        )
        .await?;
        let state = if confirmed >= u64::from(spec.capacity) {
            AuctionState::SoldOut
        } else if spec.is_closed_at(timestamp::now()) {
            AuctionState::Closed
        } else {
            AuctionState::Open
        };
        Ok(StatusReply::Ok {
            auction_id: auction_id.to_string(),
            spec: (*spec).clone(),
            state,
            tries,
            confirmed,
            cancelled,
            pending: tries.saturating_sub(confirmed + cancelled),
        })
    }
}

/// The reply to a resent bid id whose first try is at `try_seq`: the
/// original acceptance if the body is the same, a conflict if not.
fn resend(
    auction_id: &str,
    request: &BidRequest,
    try_seq: u64,
    bidder_id: &str,
    amount: u64,
) -> Result<BidReply, RequestError> {
    if request.bidder_id != bidder_id || request.amount != amount {
        return Err(RequestError::new(
            ErrorCode::Conflict,
            format!(
                "bid_id {:?} was already used in auction {auction_id:?} with bidder_id {bidder_id:?} and amount {amount}; use a new bid_id for a different bid",
                request.bid_id
            ),
        ));
    }
    Ok(BidReply::Accepted {
        bid_id: request.bid_id.clone(),
        auction_id: auction_id.to_string(),
        try_seq,
        duplicate: true,
    })
}

fn internal(e: impl std::fmt::Display) -> RequestError {
    tracing::error!(error = %e, "request failed");
    RequestError::new(ErrorCode::Internal, format!("internal error: {e}"))
}

/// Header values cannot hold line breaks.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}
