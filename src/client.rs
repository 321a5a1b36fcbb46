//! A typed client for allot's subjects, used by the CLI, the demo and the
//! tests: bid, withdraw, raise, open, close, status, and outcome streams.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::{Client, ConnectOptions, ReconnectToServer, Server, ServerAddr, ServerInfo};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};
use crate::nats_server::{parse_version, MIN_VERSION};
use crate::wire::{
    outcomes_in, AuctionSpec, BidReply, BidRequest, CloseReply, OpenReply, OutcomeEvent,
    RaiseReply, RaiseRequest, ResultReply, ResultRequest, StatusReply, Subjects, WithdrawReply,
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

/// How long a connection may go without a word from its server before
/// the client pings it. Any message from the server counts, so a busy
/// connection sends no pings at all. After three such intervals of silence
/// (the client allows two pings unanswered) the connection is given up
/// and another server tried: a server that hangs or is cut off without
/// closing the connection is left within 3 s. (With the client's default,
/// 60 s, it took minutes.)
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// How long one attempt to connect to a server may take. A server that
/// accepts connections but does not answer (hung, or stopped) costs this
/// much before the next server is tried; a reconnect tries it last (see
/// [`next_server`]).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The server a reconnect tries: not the one tried last when there is
/// another (after a silent loss, that is the server that hung, and trying
/// it first cost a whole [`CONNECT_TIMEOUT`]); among the others, one that
/// failed least, chosen by `seed` so that clients spread. `last` is the
/// server chosen before; on the first reconnect it is the one the server's
/// `info` names (host and port as in the URL, or else unknown). `None`
/// leaves the choice to the client: unknown, or no other server.
fn next_server(
    pool: &[Server],
    info: &ServerInfo,
    last: &mut Option<ServerAddr>,
    seed: u64,
) -> Option<ServerAddr> {
    let left = last.clone().or_else(|| {
        let mut named = pool
            .iter()
            .filter(|s| s.addr.port() == info.port && s.addr.host() == info.host);
        match (named.next(), named.next()) {
            (Some(server), None) => Some(server.addr.clone()),
            _ => None,
        }
    })?;
    let others: Vec<&Server> = pool.iter().filter(|s| s.addr != left).collect();
    let fewest = others.iter().map(|s| s.failed_attempts).min()?;
    let least: Vec<&Server> = others
        .into_iter()
        .filter(|s| s.failed_attempts == fewest)
        .collect();
    let chosen = least[(seed % least.len() as u64) as usize].addr.clone();
    *last = Some(chosen.clone());
    Some(chosen)
}

/// Connects to NATS, failing fast with the URL in the error. `url` may
/// list several servers of a cluster, comma-separated; the client moves to
/// another when its server goes away or stops answering
/// ([`PING_INTERVAL`]), and the servers it learns from the cluster count
/// too. Losing and regaining the connection is logged.
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
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let last = std::sync::Mutex::new(None);
    let client = options
        .name("allot")
        .connection_timeout(CONNECT_TIMEOUT)
        .ping_interval(PING_INTERVAL)
        .event_callback(move |event| {
            let lost = lost.clone();
            async move { log_event(&lost, event) }
        })
        .reconnect_to_server_callback(move |pool, info| {
            use std::hash::BuildHasher;
            let seed = std::collections::hash_map::RandomState::new().hash_one(());
            let chosen = next_server(&pool, &info, &mut last.lock().unwrap(), seed);
            async move { chosen.map(|addr| ReconnectToServer { addr, delay: None }) }
        })
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

/// Logs the connection's losses and recoveries (the first connection is
/// the start, not news); `lost` is set while it is down.
fn log_event(lost: &std::sync::atomic::AtomicBool, event: async_nats::Event) {
    use std::sync::atomic::Ordering;
    match event {
        async_nats::Event::Disconnected => {
            lost.store(true, Ordering::Relaxed);
            tracing::warn!("lost the NATS connection; reconnecting");
        }
        async_nats::Event::Connected if lost.swap(false, Ordering::Relaxed) => {
            tracing::info!("reconnected to NATS");
        }
        async_nats::Event::LameDuckMode => {
            tracing::warn!("the NATS server is shutting down (lame duck mode)");
        }
        _ => {}
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
        // Outcomes stored alone by earlier versions, and sent live.
        let subject = self.subjects.outcomes_followed(auction_id);
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
        // An auction's entries are on its partition's subject, by the
        // partitions the log was created with.
        let subjects = match auction_id {
            Some(_) => crate::streams::log_subjects(&js, self.subjects.clone()).await?,
            None => self.subjects.clone(),
        };
        let consumer = stream
            .create_consumer(crate::log::read::ordered(
                subjects.outcome_filters(auction_id),
                DeliverPolicy::All,
            ))
            .await
            .map_err(Error::wrap(ErrorKind::Nats, "outcome stream"))?;
        let messages = consumer
            .messages()
            .await
            .map_err(Error::wrap(ErrorKind::Nats, "outcome stream"))?;
        let auction = auction_id.map(str::to_string);
        Ok(messages
            .flat_map(move |m| {
                let found = m
                    .map_err(Error::wrap(ErrorKind::Nats, "outcome stream"))
                    .and_then(|m| {
                        outcomes_in(&subjects, &m.subject, &m.payload)
                            .map_err(Error::wrap(ErrorKind::Protocol, "outcome event"))
                    });
                let found: Vec<Result<OutcomeEvent>> = match found {
                    Ok(outcomes) => outcomes
                        .into_iter()
                        .filter(|o| auction.as_ref().is_none_or(|a| *a == o.auction_id))
                        .map(Ok)
                        .collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(found)
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

    fn server(url: &str, failed_attempts: usize) -> Server {
        Server {
            addr: url.parse().unwrap(),
            failed_attempts,
            did_connect: false,
            is_discovered: false,
            last_error: None,
        }
    }

    #[test]
    fn a_reconnect_tries_another_server_first() {
        let pool = [
            server("nats://127.0.0.1:4222", 0),
            server("nats://127.0.0.2:4222", 0),
            server("nats://127.0.0.3:4222", 1),
        ];
        let on_first = ServerInfo {
            host: "127.0.0.1".into(),
            port: 4222,
            ..Default::default()
        };
        // The first reconnect leaves the server the INFO names, for the one
        // that failed least.
        for seed in 0..4 {
            let mut last = None;
            let chosen = next_server(&pool, &on_first, &mut last, seed);
            assert_eq!(chosen, Some(pool[1].addr.clone()));
            assert_eq!(last, chosen);
        }
        // Later ones leave the server chosen before, and spread by seed.
        let mut seen = std::collections::HashSet::new();
        for seed in 0..4 {
            let mut last = Some(pool[2].addr.clone());
            seen.insert(next_server(&pool, &on_first, &mut last, seed).unwrap());
        }
        assert_eq!(seen, [pool[0].addr.clone(), pool[1].addr.clone()].into());
        // Unknown (the first connection, or a host the pool spells
        // otherwise) or alone: the client chooses.
        let unknown = ServerInfo {
            host: "0.0.0.0".into(),
            port: 4222,
            ..Default::default()
        };
        assert_eq!(next_server(&pool, &unknown, &mut None, 0), None);
        assert_eq!(next_server(&pool[..1], &on_first, &mut None, 0), None);
    }
}
