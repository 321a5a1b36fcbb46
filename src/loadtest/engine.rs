//! The three strategies behind one interface: where a bid goes, and where
//! its outcome shows up.

use std::time::Duration;

use async_nats::Client;

use super::alternatives::{backoff, BidError, Counters, Locking, Optimistic};
use super::report::Contention;
use crate::client::AllotClient;
use crate::error::{ErrorKind, Result};
use crate::wire::{
    label, AuctionSpec, BidReply, BidRequest, CloseReply, ErrorCode, OpenReply, RaiseReply,
    RaiseRequest, Reply, Subjects, WithdrawReply, WithdrawRequest,
};

crate::closed::closed_enum! {
    /// How concurrent bids on one auction are kept consistent.
    #[derive(clap::ValueEnum)]
    pub enum Strategy {
        /// allot: un-locked try events, the verifier decides.
        Tcc = "tcc",
        /// Optimistic concurrency on an event-sourced aggregate.
        Occ = "occ",
        /// A per-auction lock in a KV bucket around read, decide, append.
        Lock = "lock",
    }
}

impl Strategy {
    /// Whether this is allot's own service, rather than one of the
    /// [`alternatives`](super::alternatives) it is compared with: only it
    /// takes the whole lifecycle, and writes tries to the log.
    pub fn is_allot(self) -> bool {
        match self {
            Strategy::Tcc => true,
            Strategy::Occ | Strategy::Lock => false,
        }
    }
}

/// A bid that got no answer: what went wrong, and whether sending it again
/// (same `bid_id`) may help: after about how long, if so.
pub struct Failure {
    pub label: String,
    pub retry: Option<Duration>,
    /// The error reply's message, or the client error (empty for a
    /// timeout): kept in the client-side history.
    pub message: String,
}

/// The pause before a resend when the failure does not say.
const RESEND_PAUSE: Duration = Duration::from_millis(100);

pub enum Engine {
    /// Requests to a running allot gateway: bids, withdraws and raises on
    /// the second client (the first, unless told otherwise).
    Tcc(Box<(AllotClient, AllotClient)>),
    /// Handlers in this process, on this process's NATS connection.
    Occ(Box<Optimistic>),
    Lock(Box<Locking>),
}

impl Engine {
    pub async fn new(
        strategy: Strategy,
        client: &AllotClient,
        bid_url: Option<&str>,
    ) -> Result<Engine> {
        let nats: Client = client.client.clone();
        let subjects = &client.subjects;
        Ok(match strategy {
            Strategy::Tcc => {
                let bidder = match bid_url {
                    Some(url) => AllotClient {
                        client: crate::client::connect(url).await?,
                        ..client.clone()
                    },
                    None => client.clone(),
                };
                Engine::Tcc(Box::new((client.clone(), bidder)))
            }
            Strategy::Occ => Engine::Occ(Box::new(
                Optimistic::new(nats, subjects, Default::default()).await?,
            )),
            Strategy::Lock => Engine::Lock(Box::new(
                Locking::new(nats, subjects, Default::default()).await?,
            )),
        })
    }

    pub async fn open(&self, auction_id: &str, spec: &AuctionSpec) -> Result<()> {
        match self {
            Engine::Tcc(tcc) => match tcc.0.open(auction_id, spec).await? {
                OpenReply::Opened { .. } => Ok(()),
                OpenReply::Error { message, .. } => Err(crate::error::Error::new(
                    ErrorKind::Config,
                    format!("cannot open auction {auction_id}: {message}"),
                )),
            },
            Engine::Occ(occ) => occ.open(auction_id, spec).await,
            Engine::Lock(lock) => lock.open(auction_id, spec).await,
        }
    }

    pub async fn bid(
        &self,
        auction_id: &str,
        bid: &BidRequest,
    ) -> std::result::Result<BidReply, Failure> {
        let strategy = |e: BidError| Failure {
            retry: matches!(e, BidError::Nats(_)).then_some(RESEND_PAUSE),
            label: e.label().to_string(),
            message: String::new(),
        };
        match self {
            Engine::Tcc(tcc) => answered(tcc.1.bid(auction_id, bid).await),
            Engine::Occ(occ) => occ.bid(auction_id, bid).await.map_err(strategy),
            Engine::Lock(lock) => lock.bid(auction_id, bid).await.map_err(strategy),
        }
    }

    /// Withdraws a bid. `tcc` only: the aggregates of `occ` and `lock` hold
    /// plain first_n bids (see [`super::run`]'s option check).
    pub async fn withdraw(
        &self,
        auction_id: &str,
        withdraw: &WithdrawRequest,
    ) -> std::result::Result<WithdrawReply, Failure> {
        answered(self.bidder()?.withdraw(auction_id, withdraw).await)
    }

    /// Raises a held bid (`tcc` only).
    pub async fn raise(
        &self,
        auction_id: &str,
        raise: &RaiseRequest,
    ) -> std::result::Result<RaiseReply, Failure> {
        answered(self.bidder()?.raise(auction_id, raise).await)
    }

    /// Closes an auction now (`tcc` only); closing twice is harmless.
    pub async fn close(&self, auction_id: &str) -> std::result::Result<CloseReply, Failure> {
        answered(self.allot()?.close(auction_id).await)
    }

    fn allot(&self) -> std::result::Result<&AllotClient, Failure> {
        self.tcc().map(|(client, _)| client)
    }

    fn bidder(&self) -> std::result::Result<&AllotClient, Failure> {
        self.tcc().map(|(_, bidder)| bidder)
    }

    fn tcc(&self) -> std::result::Result<(&AllotClient, &AllotClient), Failure> {
        match self {
            Engine::Tcc(tcc) => Ok((&tcc.0, &tcc.1)),
            _ => Err(Failure {
                label: "unsupported".into(),
                retry: None,
                message: String::new(),
            }),
        }
    }

    /// The stream the outcomes are in: all of it is outcomes or aggregate
    /// events, so reading it to its last sequence sees every outcome.
    pub fn outcome_stream(&self, subjects: &Subjects) -> String {
        match self {
            Engine::Tcc(..) => subjects.outcomes_stream(),
            Engine::Occ(occ) => occ.aggregates.stream_name(),
            Engine::Lock(lock) => lock.aggregates.stream_name(),
        }
    }

    pub fn contention(&self) -> Contention {
        let c = match self {
            Engine::Tcc(..) => return Contention::default(),
            Engine::Occ(occ) => &occ.counters,
            Engine::Lock(lock) => &lock.counters,
        };
        Contention {
            conflicts: Counters::get(&c.conflicts),
            retries: Counters::get(&c.retries),
            exhausted: Counters::get(&c.exhausted),
            lock_waits: Counters::get(&c.lock_waits),
            lock_timeouts: Counters::get(&c.lock_timeouts),
        }
    }
}

/// A gateway reply, with error replies as failures: `unavailable` (the
/// verifier had not decided yet, say) is worth sending again, after the
/// reply's `retry_after_ms`.
fn answered<T: Reply>(reply: Result<T>) -> std::result::Result<T, Failure> {
    match reply {
        Ok(reply) => match reply.error() {
            Some((code, message)) => Err(Failure {
                message: message.to_string(),
                label: label(&code),
                retry: match code {
                    ErrorCode::Unavailable => Some(retry_after(&reply).unwrap_or(RESEND_PAUSE)),
                    ErrorCode::InvalidJson
                    | ErrorCode::TooLarge
                    | ErrorCode::UnknownField
                    | ErrorCode::MissingField
                    | ErrorCode::InvalidField
                    | ErrorCode::InvalidSubject
                    | ErrorCode::Conflict
                    | ErrorCode::UnknownAuction
                    | ErrorCode::Unauthenticated
                    | ErrorCode::Forbidden
                    | ErrorCode::RateLimited
                    | ErrorCode::Internal => None,
                },
            }),
            None => Ok(reply),
        },
        Err(e) => Err(Failure {
            label: match e.kind() {
                ErrorKind::Timeout => "timeout".into(),
                _ => "nats".into(),
            },
            retry: Some(RESEND_PAUSE),
            message: match e.kind() {
                ErrorKind::Timeout => String::new(),
                _ => e.to_string(),
            },
        }),
    }
}

/// An error reply's `retry_after_ms` (read from its JSON: the [`Reply`]
/// trait does not expose it).
fn retry_after<T: Reply>(reply: &T) -> Option<Duration> {
    let json = serde_json::to_value(reply).ok()?;
    json.get("retry_after_ms")?
        .as_u64()
        .map(Duration::from_millis)
}

/// Sends with `send` up to `attempts` times while it fails in a way worth
/// retrying, each time after the pause the failure asks for, give or take
/// half (so that bidders told the same pause do not resend in lockstep);
/// the label of the last failure if none succeeded. Every resend is the
/// same request (same ids), so it is safe.
pub async fn retrying<T, F, Fut>(attempts: u32, mut send: F) -> std::result::Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, Failure>>,
{
    let mut last = "no_attempt".to_string();
    for attempt in 0..attempts.max(1) {
        match send().await {
            Ok(reply) => return Ok(reply),
            Err(f) => {
                last = f.label;
                let Some(pause) = f.retry.filter(|_| attempt + 1 < attempts) else {
                    break;
                };
                tokio::time::sleep(backoff(0, pause, pause)).await;
            }
        }
    }
    Err(last)
}
