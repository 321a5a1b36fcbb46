//! A typed client for allot's subjects, used by the CLI, the demo and the
//! tests: bid, open, status, and outcome streams.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::{Client, ConnectOptions};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};
use crate::nats_server::{parse_version, MIN_VERSION};
use crate::wire::{
    AuctionSpec, BidReply, BidRequest, OpenReply, OutcomeEvent, StatusReply, Subjects,
};

/// How long a stopping process waits for NATS to take its last messages.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Flushes what is buffered for NATS. Bounded: with the server gone, the
/// client would otherwise wait for a reconnect that may never come, and a
/// stopping process would hang.
pub async fn flush(client: &Client) -> Result<()> {
    match tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await {
        Ok(flushed) => flushed.map_err(|e| Error::with_source(ErrorKind::Nats, e).context("flush")),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!("NATS did not take the last messages within {FLUSH_TIMEOUT:?}"),
        )),
    }
}

/// Connects to NATS, failing fast with the URL in the error.
pub async fn connect(url: &str) -> Result<Client> {
    let client = ConnectOptions::new()
        .name("allot")
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| Error::with_source(ErrorKind::Connect, e).context(url.to_string()))?;
    let version = client.server_info().version;
    match parse_version(&version) {
        Some(v) if v >= MIN_VERSION => Ok(client),
        _ => Err(Error::new(
            ErrorKind::Config,
            format!(
                "{url} runs nats-server {version}; allot needs {}.{} or newer",
                MIN_VERSION.0, MIN_VERSION.1
            ),
        )),
    }
}

/// Requests to a running allot service.
#[derive(Clone)]
pub struct AllotClient {
    /// The NATS connection; clone it freely.
    pub client: Client,
    /// Where the service listens.
    pub subjects: Subjects,
    /// How long to wait for a reply.
    pub timeout: Duration,
}

impl AllotClient {
    pub fn new(client: Client, subjects: Subjects) -> Self {
        AllotClient {
            client,
            subjects,
            timeout: Duration::from_secs(10),
        }
    }

    /// Places a bid on `auction_id`.
    pub async fn bid(&self, auction_id: &str, bid: &BidRequest) -> Result<BidReply> {
        let body = serde_json::to_vec(bid).expect("bids serialize");
        self.request(self.subjects.bid(auction_id), body).await
    }

    /// Opens an auction (admin).
    pub async fn open(&self, auction_id: &str, spec: &AuctionSpec) -> Result<OpenReply> {
        let body = serde_json::to_vec(spec).expect("specs serialize");
        self.request(self.subjects.open_request(auction_id), body)
            .await
    }

    /// An auction's settings and fill.
    pub async fn status(&self, auction_id: &str) -> Result<StatusReply> {
        self.request(self.subjects.status_request(auction_id), Vec::new())
            .await
    }

    /// Sends raw bytes to a subject and decodes the JSON reply.
    pub async fn request<T: DeserializeOwned>(&self, subject: String, body: Vec<u8>) -> Result<T> {
        let reply = tokio::time::timeout(
            self.timeout,
            self.client.request(subject.clone(), body.into()),
        )
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!("no reply on {subject} within {:?}", self.timeout),
            )
        })?
        .map_err(|e| {
            let hint = match e.kind() {
                async_nats::RequestErrorKind::NoResponders => {
                    format!("{subject}: no allot gateway is running (start one with `allot serve`)")
                }
                _ => subject.clone(),
            };
            Error::with_source(ErrorKind::Nats, e).context(hint)
        })?;
        serde_json::from_slice(&reply.payload)
            .map_err(|e| Error::with_source(ErrorKind::Protocol, e).context(subject))
    }

    /// Outcome events as they are published, for one auction or all.
    pub async fn live_outcomes(
        &self,
        auction_id: Option<&str>,
    ) -> Result<BoxStream<'static, OutcomeEvent>> {
        let subject = self.subjects.outcomes(auction_id);
        let sub = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::with_source(ErrorKind::Nats, e).context(subject))?;
        Ok(sub
            .filter_map(|m| async move { serde_json::from_slice(&m.payload).ok() })
            .boxed())
    }

    /// Every outcome event in the outcome stream from the start, then new
    /// ones as they arrive.
    pub async fn replay_outcomes(
        &self,
        auction_id: Option<&str>,
    ) -> Result<BoxStream<'static, Result<OutcomeEvent>>> {
        let js = async_nats::jetstream::new(self.client.clone());
        let stream = js
            .get_stream(self.subjects.outcomes_stream())
            .await
            .map_err(Error::wrap(ErrorKind::Nats, "outcome stream"))?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.subjects.outcomes(auction_id),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(Error::wrap(ErrorKind::Nats, "outcome stream"))?;
        let messages = consumer
            .messages()
            .await
            .map_err(Error::wrap(ErrorKind::Nats, "outcome stream"))?;
        Ok(messages
            .map(|m| {
                let m = m.map_err(Error::wrap(ErrorKind::Nats, "outcome stream"))?;
                serde_json::from_slice(&m.payload)
                    .map_err(Error::wrap(ErrorKind::Protocol, "outcome event"))
            })
            .boxed())
    }
}
