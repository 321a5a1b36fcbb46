//! The three strategies behind one interface: where a bid goes, and where
//! its outcome shows up.

use async_nats::Client;
use serde::{Deserialize, Serialize};

use super::report::Contention;
use crate::client::AllotClient;
use crate::error::{ErrorKind, Result};
use crate::strategies::{BidError, Counters, Locking, Optimistic};
use crate::wire::{label, AuctionSpec, BidReply, BidRequest, OpenReply, Subjects};

/// How concurrent bids on one auction are kept consistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// allot: un-locked try events, the verifier decides.
    Tcc,
    /// Optimistic concurrency on an event-sourced aggregate.
    Occ,
    /// A per-auction lock in a KV bucket around read, decide, append.
    Lock,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Tcc => "tcc",
            Strategy::Occ => "occ",
            Strategy::Lock => "lock",
        }
    }
}

/// A bid that got no answer: what went wrong, and whether sending it again
/// (same `bid_id`) may help.
pub struct Failure {
    pub label: String,
    pub retry: bool,
}

pub enum Engine {
    /// Requests to a running allot gateway.
    Tcc(AllotClient),
    /// Handlers in this process, on this process's NATS connection.
    Occ(Box<Optimistic>),
    Lock(Box<Locking>),
}

impl Engine {
    pub async fn new(strategy: Strategy, client: &AllotClient) -> Result<Engine> {
        let nats: Client = client.client.clone();
        let subjects = &client.subjects;
        Ok(match strategy {
            Strategy::Tcc => Engine::Tcc(client.clone()),
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
            Engine::Tcc(client) => match client.open(auction_id, spec).await? {
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
            retry: matches!(e, BidError::Nats(_)),
            label: e.label().to_string(),
        };
        match self {
            Engine::Tcc(client) => match client.bid(auction_id, bid).await {
                Ok(BidReply::Error { error, .. }) => Err(Failure {
                    label: label(&error),
                    retry: error == crate::wire::ErrorCode::Internal,
                }),
                Ok(reply) => Ok(reply),
                Err(e) => Err(Failure {
                    label: match e.kind() {
                        ErrorKind::Timeout => "timeout".into(),
                        _ => "nats".into(),
                    },
                    retry: true,
                }),
            },
            Engine::Occ(occ) => occ.bid(auction_id, bid).await.map_err(strategy),
            Engine::Lock(lock) => lock.bid(auction_id, bid).await.map_err(strategy),
        }
    }

    /// The stream the outcomes are in: all of it is outcomes or aggregate
    /// events, so reading it to its last sequence sees every outcome.
    pub fn outcome_stream(&self, subjects: &Subjects) -> String {
        match self {
            Engine::Tcc(_) => subjects.outcomes_stream(),
            Engine::Occ(occ) => occ.aggregates.stream_name(),
            Engine::Lock(lock) => lock.aggregates.stream_name(),
        }
    }

    pub fn contention(&self) -> Contention {
        let c = match self {
            Engine::Tcc(_) => return Contention::default(),
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
