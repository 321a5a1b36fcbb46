//! Test harness: a real `nats-server` per test (free 127.0.0.1 port, own
//! temporary store, killed on drop) and the real service running in-process
//! against it, with a oneshot as its shutdown signal.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use allot::client::{connect, AllotClient};
use allot::nats_server::NatsServer;
use allot::service::{self, Config, Role};
use allot::verifier::VerifierConfig;
use allot::wire::{AuctionSpec, LogEvent, OpenReply, OutcomeEvent, Subjects, TryAt, TryEvent};
use async_nats::jetstream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A message read back from a stream.
pub use allot::log::StoredMessage as Stored;

pub struct Harness {
    pub server: NatsServer,
    /// What the service is given as `--nats-url`: the server's URL, or
    /// every node's on a cluster.
    pub nats_url: String,
    pub client: AllotClient,
    pub js: jetstream::Context,
    /// The verifier's data directory.
    pub data: tempfile::TempDir,
    service: Option<(oneshot::Sender<()>, JoinHandle<allot::Result<()>>)>,
}

impl Harness {
    /// A server and a running service.
    pub async fn start() -> Harness {
        let mut h = Harness::server_only().await;
        h.start_service().await;
        h
    }

    /// A server, no service yet.
    pub async fn server_only() -> Harness {
        let server = NatsServer::start().expect("nats-server starts");
        Harness::on(server, None).await
    }

    /// A harness whose own client uses `server`, and whose service is
    /// given `urls` (all of a cluster's nodes), or `server`'s alone.
    pub async fn on(server: NatsServer, urls: Option<String>) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "allot=warn".into()),
            )
            .with_test_writer()
            .try_init();
        let nats = connect(server.url()).await.expect("connects");
        Harness {
            nats_url: urls.unwrap_or_else(|| server.url().to_string()),
            client: AllotClient::new(nats.clone(), Subjects::default()),
            js: jetstream::new(nats),
            server,
            data: tempfile::tempdir().unwrap(),
            service: None,
        }
    }

    pub fn config(&self) -> Config {
        Config {
            nats_url: self.nats_url.clone(),
            role: Role::All,
            verifier: VerifierConfig {
                data_dir: self.data.path().to_path_buf(),
                ..VerifierConfig::default()
            },
            ..Config::default()
        }
    }

    /// Starts the service in-process and waits until it answers.
    pub async fn start_service(&mut self) {
        assert!(self.service.is_none(), "service already running");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(service::run(self.config(), async {
            let _ = stopped.await;
        }));
        self.service = Some((stop, task));
        self.wait_until_serving().await;
        self.wait_until_verifying().await;
    }

    /// Waits until the verifier answers gateways' lookups: until then, a
    /// gateway cannot prove a bid new, and appends rather than rejects it.
    pub async fn wait_until_verifying(&self) {
        let body = serde_json::to_vec(&allot::wire::DecidedRequest {
            bid_id: "probe".into(),
            outcome: false,
            wait_for: None,
        })
        .unwrap();
        for _ in 0..200 {
            let subject = self.client.subjects.decided("probe");
            if self
                .client
                .client
                .request(subject, body.clone().into())
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the verifier did not start answering");
    }

    /// Waits until a gateway answers status requests.
    pub async fn wait_until_serving(&self) {
        self.wait_until_serving_for(Duration::from_secs(10)).await
    }

    /// Waits up to `patience` until a gateway answers status requests.
    pub async fn wait_until_serving_for(&self, patience: Duration) {
        let started = std::time::Instant::now();
        while started.elapsed() < patience {
            let probe: allot::Result<serde_json::Value> = self
                .client
                .request(self.client.subjects.status_request("probe"), Vec::new())
                .await;
            if probe.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("service did not start serving");
    }

    /// Stops the service cleanly and waits for it.
    pub async fn stop_service(&mut self) {
        let (stop, task) = self.service.take().expect("service running");
        let _ = stop.send(());
        task.await.unwrap().expect("service stops cleanly");
    }

    /// The snapshot files of every partition the verifier has decided.
    pub fn snapshot_files(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.data.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("partition-"))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        dirs.iter()
            .flat_map(|d| {
                ["allot.sqlite", "allot.sqlite-wal", "allot.sqlite-shm"].map(|f| d.join(f))
            })
            .collect()
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    pub async fn open(&self, auction_id: &str, spec: AuctionSpec) {
        match self.client.open(auction_id, &spec).await.unwrap() {
            OpenReply::Opened { .. } => {}
            other => panic!("open failed: {other:?}"),
        }
    }

    /// Every message on `filter` in `stream`, in stream order.
    /// Asked again a few times: on a cluster that just lost a node, the
    /// JetStream API can time out while its groups elect leaders.
    pub async fn read_stream(&self, stream: &str, filter: &str) -> Vec<Stored> {
        self.read_stream_on(stream, vec![filter.to_string()]).await
    }

    /// [`Self::read_stream`], on several filters at once.
    pub async fn read_stream_on(&self, stream: &str, filters: Vec<String>) -> Vec<Stored> {
        let mut tries = 0;
        loop {
            match allot::log::read_all(&self.js, stream, filters.clone()).await {
                Ok(messages) => return messages,
                Err(e) if tries < 5 && e.kind() != allot::ErrorKind::Integrity => {
                    eprintln!("reading {stream} failed ({e}); asking again");
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("stream read in time: {e}"),
            }
        }
    }

    /// Once the log is decided: the auction's outcomes, after checking
    /// that every `accepted` bid has exactly one and that a replay of the
    /// log agrees with all of them.
    pub async fn settled_outcomes(
        &self,
        auction_id: &str,
        accepted: &std::collections::HashSet<String>,
    ) -> Vec<OutcomeEvent> {
        self.wait_for_outcomes(auction_id, accepted.len()).await;
        self.wait_until_decided().await;
        let outcomes = self.outcomes(Some(auction_id)).await;
        let by_bid = one_outcome_per_bid(&outcomes);
        for bid_id in accepted {
            assert!(by_bid.contains_key(bid_id), "accepted bid {bid_id} lost");
        }
        assert_replay_matches_outcomes(self).await;
        outcomes
    }

    /// The tries of one auction, each at its place in the log, in log
    /// order: alone in a message, or in its partition's entries of tries.
    pub async fn tries(&self, auction_id: &str) -> Vec<(TryAt, TryEvent)> {
        let s = &self.client.subjects;
        let mut tries = Vec::new();
        let entries = s.tries_entry(s.partition(auction_id));
        for filter in [s.try_event(auction_id), entries] {
            for m in self.read_stream(&s.tries_stream(), &filter).await {
                let read = allot::wire::LogEntry::read(s, &m.subject, &m.payload, m.time);
                for (i, entry) in read.into_iter().enumerate() {
                    match entry {
                        allot::wire::LogEntry::Event(LogEvent::Try(t))
                            if t.auction_id == auction_id =>
                        {
                            tries.push((TryAt::new(m.seq, i as u32), t))
                        }
                        allot::wire::LogEntry::Event(LogEvent::Try(_)) => {}
                        other => panic!("not a try: {other:?}"),
                    }
                }
            }
        }
        tries.sort_by_key(|(at, _)| *at);
        tries
    }

    /// The subjects with the partitions the log was created with.
    pub async fn log_subjects(&self) -> allot::wire::Subjects {
        allot::streams::log_subjects(&self.js, self.client.subjects.clone())
            .await
            .unwrap()
    }

    /// The outcomes of one auction (or all), in stream order.
    pub async fn outcomes(&self, auction_id: Option<&str>) -> Vec<OutcomeEvent> {
        let s = &self.log_subjects().await;
        self.read_stream_on(&s.outcomes_stream(), s.outcome_filters(auction_id))
            .await
            .into_iter()
            .flat_map(|m| allot::wire::outcomes_in(s, &m.subject, &m.payload).unwrap())
            .filter(|o| auction_id.is_none_or(|a| a == o.auction_id))
            .collect()
    }

    /// Waits until the outcome stream holds at least `n` outcomes for the
    /// auction, then returns them all.
    pub async fn wait_for_outcomes(&self, auction_id: &str, n: usize) -> Vec<OutcomeEvent> {
        let s = &self.log_subjects().await;
        for _ in 0..600 {
            let counts = allot::log::outcome_counts(&self.js, s, Some(auction_id))
                .await
                .unwrap();
            let count = counts
                .get(auction_id)
                .map_or(0, |d| d.confirmed + d.cancelled);
            if count as usize >= n {
                return self.outcomes(Some(auction_id)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "expected {n} outcomes for {auction_id}, have {}",
            self.outcomes(Some(auction_id)).await.len()
        );
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.service.take() {
            let _ = stop.send(());
            task.abort();
        }
    }
}

/// Asserts one outcome per bid id, and returns them keyed by bid id.
pub fn one_outcome_per_bid(outcomes: &[OutcomeEvent]) -> HashMap<String, OutcomeEvent> {
    let mut by_bid = HashMap::new();
    for o in outcomes {
        let previous = by_bid.insert(o.bid_id.clone(), o.clone());
        assert!(previous.is_none(), "bid {} has two outcomes", o.bid_id);
    }
    by_bid
}

/// A JSON Schema validator for one file in `schemas/`.
pub fn schema(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&json).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Asserts that `instance` (JSON bytes) matches the schema file `name`.
pub fn assert_matches(name: &str, instance: &[u8]) {
    let json: serde_json::Value = serde_json::from_slice(instance).unwrap();
    let validator = schema(name);
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{json} does not match {name}: {errors:?}"
    );
}

/// Decides the whole log again offline with the pure core, and asserts
/// that every published outcome is exactly what the replay decides, and
/// that every decided try has a published outcome.
pub async fn assert_replay_matches_outcomes(h: &Harness) {
    let findings = allot::audit::run(&h.js, &h.client.subjects, None, None)
        .await
        .expect("audit runs");
    assert_eq!(
        findings.differences,
        Vec::<String>::new(),
        "published outcomes equal an offline replay of the log"
    );
}

impl Harness {
    /// Waits until the verifier has decided, published and acked every
    /// event in the log: after this, no further outcome can appear for
    /// what is in the log now.
    pub async fn wait_until_decided(&self) {
        let s = allot::streams::log_subjects(&self.js, self.client.subjects.clone())
            .await
            .unwrap();
        let log = self.js.get_stream(s.tries_stream()).await.unwrap();
        for p in 0..s.partitions() {
            let last = match log.direct_get_last_for_subject(s.log_partition(p)).await {
                Ok(m) => m.sequence,
                Err(_) => continue, // nothing in this partition
            };
            let consumer =
                allot::wire::names::verifier_consumer(allot::wire::names::VERIFIER_CONSUMER, p);
            let mut decided = false;
            for _ in 0..600 {
                if let Ok(info) = log.consumer_info(&consumer).await {
                    if info.ack_floor.stream_sequence >= last {
                        decided = true;
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                decided,
                "the verifier did not decide partition {p} up to {last}"
            );
        }
    }
}

/// The real `allot serve` binary against the harness's server, with a data
/// directory, extra arguments and environment; stdout discarded.
fn serve_command(
    h: &Harness,
    data_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_allot"));
    command
        .args(["serve", "--nats-url", &h.nats_url, "--data-dir"])
        .arg(data_dir)
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null());
    command
}

/// An `allot serve` child process, killed when dropped: a test that fails
/// midway must not leave one running, reconnecting to whatever server
/// later takes its port.
pub struct Serve(pub std::process::Child);

impl std::ops::Deref for Serve {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Serve {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `allot serve` on the harness's data directory, stderr discarded.
pub fn serve_process(h: &Harness, args: &[&str], env: &[(&str, &str)]) -> Serve {
    serve_process_in(h, h.data_dir(), args, env)
}

/// Starts `allot serve` on another data directory, stderr discarded.
pub fn serve_process_in(
    h: &Harness,
    data_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Serve {
    // ALLOT_TEST_LOG_DIR keeps each serve's log there, for a failing test.
    let stderr = match std::env::var_os("ALLOT_TEST_LOG_DIR") {
        Some(dir) => {
            let name = format!(
                "serve-{}.log",
                std::time::UNIX_EPOCH.elapsed().unwrap().as_nanos()
            );
            std::fs::File::create(std::path::Path::new(&dir).join(name))
                .map(std::process::Stdio::from)
                .unwrap_or_else(|_| std::process::Stdio::null())
        }
        None => std::process::Stdio::null(),
    };
    Serve(
        serve_command(h, data_dir, args, env)
            .stderr(stderr)
            .spawn()
            .expect("allot serve starts"),
    )
}

/// Runs `allot serve` with `data_dir` and `args`, expects it to fail, and
/// returns what it printed on stderr.
pub async fn serve_failure(h: &Harness, data_dir: &Path, args: &[&str]) -> String {
    let mut serve = serve_command(h, data_dir, args, &[])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("allot serve starts");
    let status = wait_exit(&mut serve, 30).await;
    assert!(!status.success(), "allot serve should fail");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut log).unwrap();
    log
}

/// Waits for a child process to exit, failing the test after `secs`.
pub async fn wait_exit(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    for _ in 0..secs * 20 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    panic!("process did not exit within {secs} s");
}

/// A bid request.
pub fn bid(bid_id: &str, bidder: &str, amount: u64) -> allot::wire::BidRequest {
    allot::wire::BidRequest {
        bid_id: bid_id.into(),
        bidder_id: bidder.into(),
        amount,
        wait: false,
    }
}

/// A bid, resent (same bid id) while the gateway answers `unavailable`:
/// as while a verifier restarts or rebuilds, when a bid to a sold-out
/// auction cannot yet be told from a resend. Up to 100 times, 100 ms
/// apart; the last answer otherwise.
pub async fn bid_resent_while_unavailable(
    h: &Harness,
    auction: &str,
    request: &allot::wire::BidRequest,
) -> allot::wire::BidReply {
    let mut reply = h.client.bid(auction, request).await.unwrap();
    for _ in 0..100 {
        let allot::wire::BidReply::Error {
            error: allot::wire::ErrorCode::Unavailable,
            ..
        } = reply
        else {
            break;
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        reply = h.client.bid(auction, request).await.unwrap();
    }
    reply
}

/// Sends raw bytes as a request and returns the reply message.
pub async fn raw(h: &Harness, subject: String, body: &[u8]) -> async_nats::Message {
    h.client
        .client
        .request(subject, body.to_vec().into())
        .await
        .expect("a reply")
}

/// The `Nats-Service-Error-Code` header of a reply, if any.
pub fn error_code(reply: &async_nats::Message) -> Option<&str> {
    reply
        .headers
        .as_ref()?
        .get("Nats-Service-Error-Code")
        .map(|v| v.as_str())
}

/// Bidders that keep bidding on one auction until stopped, each resending
/// an unanswered bid with the same bid id (safe: the id makes it one bid).
pub struct Bidders {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Bids answered `accepted` so far.
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Attempts that got an error or no answer.
    pub failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Of those, the replies `internal`: faults, where every other failure
    /// is expected to pass (`unavailable`, or no answer at all).
    pub internal: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The longest a single attempt took, in ms.
    pub slowest_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    tasks: Vec<JoinHandle<Vec<String>>>,
}

impl Bidders {
    /// `workers` concurrent bidders on `auction`, with bidder ids cycling
    /// through `bidders` names; each attempt times out after 2 s.
    pub fn start(h: &Harness, auction: &str, workers: u32, bidders: u32) -> Bidders {
        use std::sync::atomic::Ordering;
        use std::sync::Arc;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let internal = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let slowest_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks = (0..workers)
            .map(|worker| {
                let mut client = h.client.clone();
                client.timeout = Duration::from_secs(2);
                let auction = auction.to_string();
                let (stop, count) = (stop.clone(), accepted.clone());
                let (failed, slowest) = (failed.clone(), slowest_ms.clone());
                let internal = internal.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    let mut i = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let request = bid(
                            &format!("w{worker}-{i}"),
                            &format!("u{}", (worker * 7 + i) % bidders),
                            10,
                        );
                        for attempt in 0.. {
                            let started = std::time::Instant::now();
                            let reply = client.bid(&auction, &request).await;
                            let took = started.elapsed().as_millis() as u64;
                            slowest.fetch_max(took, Ordering::Relaxed);
                            match reply {
                                Ok(
                                    allot::wire::BidReply::Accepted { .. }
                                    | allot::wire::BidReply::Confirmed { .. }
                                    | allot::wire::BidReply::Cancelled { .. },
                                ) => {
                                    mine.push(request.bid_id.clone());
                                    count.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                                Ok(allot::wire::BidReply::Rejected { .. }) => break,
                                // The service or NATS is down: an error now,
                                // or a reply saying the append failed.
                                Ok(allot::wire::BidReply::Error { .. }) | Err(_) => {
                                    if is_internal(&reply) {
                                        internal.fetch_add(1, Ordering::Relaxed);
                                    }
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    assert!(attempt < 600, "no answer after {attempt} resends");
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                            }
                        }
                        i += 1;
                    }
                    mine
                })
            })
            .collect();
        Bidders {
            stop,
            accepted,
            failed,
            internal,
            slowest_ms,
            tasks,
        }
    }

    /// Bids accepted so far.
    pub fn accepted_now(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `n` bids are accepted (at most 60 s).
    pub async fn reach(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.accepted_now() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "fewer than {n} bids accepted in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops bidding; returns the ids of every accepted bid.
    pub async fn stop(self) -> std::collections::HashSet<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut accepted = std::collections::HashSet::new();
        for task in self.tasks {
            accepted.extend(task.await.unwrap());
        }
        accepted
    }
}

/// Whether a bid's reply is a fault (`internal`); one saying "not now"
/// (`unavailable`) must say when to send it again.
fn is_internal<E: std::fmt::Debug>(reply: &Result<allot::wire::BidReply, E>) -> bool {
    use allot::wire::{BidReply, ErrorCode};
    match reply {
        Ok(BidReply::Error {
            error: ErrorCode::Internal,
            ..
        }) => true,
        Ok(BidReply::Error {
            error: ErrorCode::Unavailable,
            retry_after_ms,
            ..
        }) => {
            assert!(retry_after_ms.is_some(), "no hint in {reply:?}");
            false
        }
        _ => false,
    }
}

/// A 127.0.0.1 address nothing listens on (just now).
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The whole HTTP response to `GET path` on `addr`.
pub async fn http_get(addr: &str, path: &str) -> String {
    try_http_get(addr, path)
        .await
        .unwrap_or_else(|| panic!("no answer from {addr}"))
}

/// The whole HTTP response to `GET path` on `addr`, if it answers.
pub async fn try_http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    socket.read_to_string(&mut response).await.ok()?;
    Some(response)
}

/// The whole HTTP response to `method path` on `addr`, with extra
/// request headers.
pub async fn http_with(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("no answer from {addr}: {e}"));
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    response
}

/// A metric's value on a serve's `/metrics` page, if it answers.
pub async fn metric(addr: &str, name: &str) -> Option<f64> {
    let page = try_http_get(addr, "/metrics").await?;
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Starts `allot serve` with a metrics page on a free port, and waits until
/// the page answers. A port picked free can be taken again before the
/// process binds it (by any outgoing connection): then it starts over on
/// another.
pub async fn serve_with_page(
    h: &Harness,
    data_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Serve, String) {
    for _ in 0..5 {
        let page = free_addr();
        let mut all = args.to_vec();
        all.extend(["--metrics-addr", page.as_str()]);
        let mut serve = serve_process_in(h, data_dir, &all, env);
        for _ in 0..400 {
            if metric(&page, "allot_partitions_owned").await.is_some() {
                return (serve, page);
            }
            if serve.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    panic!("allot serve did not start with a metrics page");
}

/// Runs the `allot` binary with `args` against the harness's NATS, and
/// waits for it.
pub fn allot(h: &Harness, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(args)
        .env("NATS_URL", &h.nats_url)
        .output()
        .expect("allot runs")
}

/// A three-node cluster on 127.0.0.1, once its JetStream answers: a
/// harness whose own client is on the first node (the service is given
/// every node's URL), and the other two nodes.
pub async fn cluster_harness() -> (Harness, Vec<NatsServer>) {
    let mut cluster = allot::nats_server::NatsCluster::start(3).expect("the cluster starts");
    let urls = cluster.urls();
    let first = cluster.nodes.remove(0);
    let h = Harness::on(first, Some(urls)).await;
    for _ in 0..300 {
        if h.js.query_account().await.is_ok() {
            return (h, cluster.nodes);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the cluster's JetStream did not come up in 30 s");
}

/// `allot serve --nats-url <url>` with `args`, its stderr in `log`.
pub fn serve_logged(url: &str, data_dir: &Path, args: &[&str], log: &Path) -> Serve {
    let stderr = std::fs::File::create(log).expect("a log file");
    Serve(
        std::process::Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(["serve", "--nats-url", url, "--data-dir"])
            .arg(data_dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("allot serve starts"),
    )
}

/// Waits until `log` has a line containing `text` (at most `patience`).
pub async fn wait_for_log(log: &Path, text: &str, patience: Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < patience {
        if std::fs::read_to_string(log).is_ok_and(|l| l.contains(text)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} has no {text:?} after {patience:?}", log.display());
}

/// The port of a `nats://host:port` URL.
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// The TCP sockets in this network namespace, from `/proc/net/tcp`: local
/// port, remote port, state (`0A` listening, `01` established) and inode.
fn tcp_sockets() -> Vec<(u16, u16, String, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = |address: &str| {
        let hex = address.rsplit(':').next().unwrap_or_default();
        u16::from_str_radix(hex, 16).unwrap_or(0)
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode = fields.get(9)?.parse().ok()?;
            Some((
                port(fields[1]),
                port(fields[2]),
                fields[3].to_string(),
                inode,
            ))
        })
        .collect()
}

/// The socket inodes `pid` holds open.
fn socket_inodes(pid: u32) -> std::collections::HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The pid of the process listening on TCP `port` (one of this test's
/// nats-servers), found through `/proc`.
pub fn listener_pid(port: u16) -> u32 {
    let inode = tcp_sockets()
        .into_iter()
        .find(|(local, _, state, _)| *local == port && state == "0A")
        .map(|(_, _, _, inode)| inode)
        .unwrap_or_else(|| panic!("nothing listens on port {port}"));
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| socket_inodes(pid).contains(&inode))
        .unwrap_or_else(|| panic!("no process of ours holds the listener on {port}"))
}

/// The remote ports of `pid`'s established TCP connections.
pub fn peer_ports(pid: u32) -> Vec<u16> {
    let mine = socket_inodes(pid);
    tcp_sockets()
        .into_iter()
        .filter(|(_, _, state, inode)| state == "01" && mine.contains(inode))
        .map(|(_, remote, _, _)| remote)
        .collect()
}

/// A process stopped with SIGSTOP, as a hung or cut-off node would be,
/// until [`Frozen::thaw`] or drop sends SIGCONT: a failing test must not
/// leave a stopped nats-server behind.
pub struct Frozen(Option<u32>);

impl Frozen {
    pub fn freeze(pid: u32) -> Frozen {
        signal(pid, "-STOP");
        Frozen(Some(pid))
    }

    pub fn thaw(mut self) {
        if let Some(pid) = self.0.take() {
            signal(pid, "-CONT");
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            signal(pid, "-CONT");
        }
    }
}

fn signal(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill {signal} {pid}");
}

/// A stand-in for an older allot (one that reads a single try per log
/// message): answers `$SRV.PING.allot` as such a version does, with no
/// `log_format` in its metadata, until the task is aborted.
pub async fn older_allot(nats: async_nats::Client) -> JoinHandle<()> {
    use futures::StreamExt;
    let mut pings = nats.subscribe("$SRV.PING.allot").await.unwrap();
    tokio::spawn(async move {
        while let Some(ping) = pings.next().await {
            let answer = serde_json::json!({
                "type": "io.nats.micro.v1.ping_response",
                "name": "allot",
                "id": "an-older-allot",
                "version": "0.1.0",
                "metadata": {"role": "all", "prefix": "allot"},
            });
            if let Some(reply) = ping.reply {
                let body = serde_json::to_vec(&answer).unwrap();
                let _ = nats.publish(reply, body.into()).await;
            }
        }
    })
}
