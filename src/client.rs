//! A typed client for allot's subjects, used by the CLI, the demo and the
//! tests: bid, withdraw, raise, open, close, status, and outcome streams.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::{Client, ConnectOptions};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};
use crate::nats_server::{parse_version, MIN_VERSION};
use crate::wire::{
    AuctionSpec, BidReply, BidRequest, CloseReply, OpenReply, OutcomeEvent, RaiseReply,
    RaiseRequest, ResultReply, ResultRequest, StatusReply, Subjects, WithdrawReply,
    WithdrawRequest,
};

/// Credentials written into a NATS URL.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    None,
    /// `nats://user:password@host`
    User(String, String),
    /// `nats://token@host`
    Token(String),
}

/// Splits `scheme://[user[:password]@]host...` into the URL without the
/// credentials, and the credentials.
fn split_credentials(url: &str) -> (String, Credentials) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("nats", url));
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return (url.to_string(), Credentials::None);
    };
    let credentials = match userinfo.split_once(':') {
        Some((user, password)) => Credentials::User(user.into(), password.into()),
        None => Credentials::Token(userinfo.into()),
    };
    (format!("{scheme}://{host}"), credentials)
}

/// The URL (or comma-separated URLs) as it may be shown: without a
/// password or token.
pub fn redact(url: &str) -> String {
    let shown: Vec<String> = url
        .split(',')
        .map(|url| match split_credentials(url.trim()) {
            (address, Credentials::None) => address,
            (address, Credentials::User(user, _)) => {
                address.replacen("://", &format!("://{user}:***@"), 1)
            }
            (address, Credentials::Token(_)) => address.replacen("://", "://***@", 1),
        })
        .collect();
    shown.join(",")
}

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

/// Connects to NATS, failing fast with the URL in the error. `url` may
/// list several servers of a cluster, comma-separated; the client moves to
/// another when its server goes away.
pub async fn connect(url: &str) -> Result<Client> {
    // The client does not send credentials written into the URL itself.
    // With several URLs, the first that carries credentials gives them.
    let mut addresses = Vec::new();
    let mut credentials = Credentials::None;
    for url in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (address, found) = split_credentials(url);
        addresses.push(address);
        if matches!(credentials, Credentials::None) {
            credentials = found;
        }
    }
    let options = match credentials {
        Credentials::None => ConnectOptions::new(),
        Credentials::User(user, password) => ConnectOptions::with_user_and_password(user, password),
        Credentials::Token(token) => ConnectOptions::with_token(token),
    };
    let shown = redact(url);
    let client = options
        .name("allot")
        .connection_timeout(Duration::from_secs(5))
        .connect(addresses)
        .await
        .map_err(|e| Error::with_source(ErrorKind::Connect, e).context(shown.clone()))?;
    let url = shown.as_str();
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
        let subject = self.subjects.bid(auction_id);
        let reply = self.request_bytes(&subject, body).await?;
        BidReply::from_json(&reply)
            .map_err(|e| Error::with_source(ErrorKind::Protocol, e).context(subject))
    }

    /// Withdraws a bid on `auction_id`, whether or not its try is in the
    /// log yet. The reply comes once the verifier has decided the withdraw.
    pub async fn withdraw(
        &self,
        auction_id: &str,
        withdraw: &WithdrawRequest,
    ) -> Result<WithdrawReply> {
        let body = serde_json::to_vec(withdraw).expect("withdraws serialize");
        self.request(self.subjects.withdraw(auction_id), body).await
    }

    /// Raises a held bid on a `top_amount` auction from `expected_amount`
    /// to `amount`. The reply comes once the verifier has decided the raise.
    pub async fn raise(&self, auction_id: &str, raise: &RaiseRequest) -> Result<RaiseReply> {
        let body = serde_json::to_vec(raise).expect("raises serialize");
        self.request(self.subjects.raise(auction_id), body).await
    }

    /// Opens an auction (admin).
    pub async fn open(&self, auction_id: &str, spec: &AuctionSpec) -> Result<OpenReply> {
        let body = serde_json::to_vec(spec).expect("specs serialize");
        self.request(self.subjects.open_request(auction_id), body)
            .await
    }

    /// Closes an auction now (admin); closing it again is idempotent.
    pub async fn close(&self, auction_id: &str) -> Result<CloseReply> {
        self.request(self.subjects.close_request(auction_id), Vec::new())
            .await
    }

    /// An auction's settings and fill.
    pub async fn status(&self, auction_id: &str) -> Result<StatusReply> {
        self.request(self.subjects.status_request(auction_id), Vec::new())
            .await
    }

    /// What became of one of this client's own bids.
    pub async fn result(&self, auction_id: &str, bid_id: &str) -> Result<ResultReply> {
        let body = serde_json::to_vec(&ResultRequest {
            bid_id: bid_id.to_string(),
        })
        .expect("requests serialize");
        self.request(self.subjects.result_request(auction_id), body)
            .await
    }

    /// Sends raw bytes to a subject and decodes the JSON reply.
    pub async fn request<T: DeserializeOwned>(&self, subject: String, body: Vec<u8>) -> Result<T> {
        let reply = self.request_bytes(&subject, body).await?;
        serde_json::from_slice(&reply)
            .map_err(|e| Error::with_source(ErrorKind::Protocol, e).context(subject))
    }

    /// Sends raw bytes to a subject and returns the reply's body.
    async fn request_bytes(&self, subject: &str, body: Vec<u8>) -> Result<bytes::Bytes> {
        let reply = tokio::time::timeout(
            self.timeout,
            self.client.request(subject.to_string(), body.into()),
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
                _ => subject.to_string(),
            };
            Error::with_source(ErrorKind::Nats, e).context(hint)
        })?;
        Ok(reply.payload)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_url_and_stay_out_of_messages() {
        assert_eq!(
            split_credentials("nats://bidder:s3cret@127.0.0.1:4222"),
            (
                "nats://127.0.0.1:4222".to_string(),
                Credentials::User("bidder".into(), "s3cret".into())
            )
        );
        assert_eq!(
            split_credentials("tls://tok@example:4222"),
            (
                "tls://example:4222".to_string(),
                Credentials::Token("tok".into())
            )
        );
        assert_eq!(
            split_credentials("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222".to_string(), Credentials::None)
        );
        assert_eq!(redact("nats://u:p@h:1"), "nats://u:***@h:1");
        assert_eq!(redact("nats://t@h:1"), "nats://***@h:1");
        assert_eq!(redact("nats://h:1"), "nats://h:1");
        assert_eq!(
            redact("nats://u:p@h:1, nats://u:p@h:2"),
            "nats://u:***@h:1,nats://u:***@h:2"
        );
    }
}
