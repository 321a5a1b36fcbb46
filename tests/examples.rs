//! The client examples in other languages (`examples/python`,
//! `examples/typescript`) run against the real service: once directly, and
//! once through a relay that answers each of their requests `unavailable`
//! first. Their JSON summaries must agree with the outcome stream, the log
//! and the status reply.

use crate::common;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use allot::wire::{AuctionState, OutcomeKind, StatusReply, Subjects};
use common::Harness;
use futures::StreamExt;
use serde_json::{json, Value};

/// The relay's prefix: the examples take it as `ALLOT_PREFIX`.
const FLAKY: &str = "flaky";

/// The distinct requests each example sends: open, four bids (one of them
/// resent, one resent with `wait`) and two withdraws.
const DISTINCT_REQUESTS: usize = 7;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/install-examples` once for both tests.
fn install_examples() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        let out = std::process::Command::new(root().join("scripts/install-examples"))
            .output()
            .map_err(|e| format!("scripts/install-examples: {e}"))?;
        match out.status.success() {
            true => Ok(()),
            false => Err(format!(
                "scripts/install-examples: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    });
    if let Err(e) = installed {
        panic!("{e}");
    }
}

/// An example: the program that runs its script, and its environment
/// beside `NATS_URL`, `ALLOT_PREFIX` and `AUCTION_ID`.
struct Example {
    program: &'static str,
    script: PathBuf,
    env: Vec<(&'static str, PathBuf)>,
}

impl Example {
    fn python() -> Example {
        Example {
            program: "python3",
            script: root().join("examples/python/bidding.py"),
            env: vec![
                ("PYTHONPATH", root().join(".tools/python-examples")),
                // What it printed, even if it is killed.
                ("PYTHONUNBUFFERED", "1".into()),
            ],
        }
    }

    fn node() -> Example {
        Example {
            program: "node",
            script: root().join("examples/typescript/dist/bidding.js"),
            env: vec![],
        }
    }

    /// Runs the example on `auction` through `prefix`, and returns its
    /// summary, the last line of its stdout. Killed if it takes over 20 s.
    async fn run(&self, h: &Harness, prefix: &str, auction: &str) -> Value {
        let started = Instant::now();
        let child = tokio::process::Command::new(self.program)
            .arg(&self.script)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NATS_URL", &h.nats_url)
            .env("ALLOT_PREFIX", prefix)
            .env("AUCTION_ID", auction)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.program));
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{} did not finish in 20 s", self.script.display()))
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}\n{stdout}{}",
            self.script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "{} on {prefix}.*.{auction}: {:?}\n{stdout}",
            self.program,
            started.elapsed()
        );
        let last = stdout.lines().last().expect("a summary line");
        serde_json::from_str(last).unwrap_or_else(|e| panic!("summary {last:?}: {e}"))
    }
}

/// Asserts that an example's summary of `auction` is what the service says:
/// the outcomes on the stream, the tries in the log and the status reply;
/// and that the walk-through went as the contract says it must.
async fn check_summary(h: &Harness, auction: &str, summary: &Value) {
    assert_eq!(summary["auction_id"], auction, "{summary}");

    let mut accepted = HashSet::new();
    for kind in ["confirmed", "cancelled"] {
        for bid in summary[kind].as_array().expect("a list") {
            accepted.insert(bid["bid_id"].as_str().expect("a bid id").to_string());
        }
    }
    let mut outcomes = h.settled_outcomes(auction, &accepted).await;
    outcomes.sort_by_key(|o| (o.try_seq, o.try_index));
    let listed = |kind: OutcomeKind| -> Vec<Value> {
        outcomes
            .iter()
            .filter(|o| o.kind == kind)
            .map(|o| {
                let mut bid = json!({
                    "bid_id": o.bid_id,
                    "try_seq": o.try_seq,
                    "try_index": o.try_index,
                });
                match kind {
                    OutcomeKind::Confirmed => bid["rank"] = json!(o.rank),
                    OutcomeKind::Cancelled => bid["reason"] = json!(o.reason),
                }
                bid
            })
            .collect()
    };
    assert_eq!(
        summary["confirmed"],
        json!(listed(OutcomeKind::Confirmed)),
        "the example's confirmed bids are the stream's"
    );
    assert_eq!(
        summary["cancelled"],
        json!(listed(OutcomeKind::Cancelled)),
        "the example's cancelled bids are the stream's"
    );

    // A rejected bid wrote nothing, and no resend wrote a second try.
    let tries: BTreeSet<(String, u64, u32)> = h
        .tries(auction)
        .await
        .into_iter()
        .map(|(at, t)| (t.bid_id, at.seq, at.index))
        .collect();
    let outcome_tries: BTreeSet<(String, u64, u32)> = outcomes
        .iter()
        .map(|o| (o.bid_id.clone(), o.try_seq, o.try_index))
        .collect();
    assert_eq!(tries, outcome_tries, "one try per decided bid, no other");

    match h.client.status(auction).await.unwrap() {
        StatusReply::Ok {
            state,
            tries,
            confirmed,
            cancelled,
            pending,
            ..
        } => {
            assert_eq!(state, AuctionState::SoldOut);
            assert_eq!(
                confirmed as usize,
                summary["confirmed"].as_array().unwrap().len()
            );
            assert_eq!(
                cancelled as usize,
                summary["cancelled"].as_array().unwrap().len()
            );
            assert_eq!(tries, confirmed + cancelled);
            assert_eq!(pending, 0);
        }
        other => panic!("status: {other:?}"),
    }

    // The walk-through: alice and bob win the two slots in that order,
    // dave's bid arrives after its withdraw, and carol's comes when the
    // auction is full: cancelled if its try was written before the gateway
    // learnt that, else rejected with nothing written.
    let pairs = |kind: &str, field: &str| -> Value {
        summary[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|bid| json!([bid["bid_id"], bid[field]]))
            .collect()
    };
    assert_eq!(
        pairs("confirmed", "rank"),
        json!([["b-alice", 1], ["b-bob", 2]])
    );
    let cancelled = match pairs("rejected", "reason") {
        rejected if rejected == json!([]) => {
            json!([["b-dave", "withdrawn"], ["b-carol", "capacity_full"]])
        }
        rejected => {
            assert_eq!(rejected, json!([["b-carol", "sold_out"]]));
            json!([["b-dave", "withdrawn"]])
        }
    };
    assert_eq!(pairs("cancelled", "reason"), cancelled);
    assert_eq!(summary["resend_duplicate"], true, "one gateway remembers");
    assert_eq!(
        summary["withdrawn"],
        json!({"bid_id": "b-dave", "empty_rollback": true})
    );
    assert_eq!(
        summary["withdraw_refused"],
        json!({"bid_id": "b-alice", "reason": "already_confirmed"})
    );
}

/// A relay from `flaky.<kind>.<auction>` to the service's subjects: it
/// answers the first of each distinct request (subject and body)
/// `unavailable`, as a gateway whose stream is electing a leader would, and
/// forwards every other request and the auction's outcomes. Counts what it
/// refused; stops when dropped.
struct Relay {
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(h: &Harness, auction: &str) -> Relay {
    let nats = h.client.client.clone();
    let prefix = h.client.subjects.prefix().to_string();
    let flaky = Subjects::new(FLAKY).unwrap();
    let mut requests = futures::stream::select_all([
        nats.subscribe(flaky.open_request(auction)).await.unwrap(),
        nats.subscribe(flaky.bid(auction)).await.unwrap(),
        nats.subscribe(flaky.withdraw(auction)).await.unwrap(),
    ]);
    let real_outcomes = h.client.subjects.outcomes_followed(Some(auction));
    let mut outcomes = nats.subscribe(real_outcomes).await.unwrap();
    nats.flush().await.unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    let unavailable = serde_json::to_vec(&json!({
        "status": "error",
        "error": "unavailable",
        "message": "the relay says: not now",
        "retry_after_ms": 20,
    }))
    .unwrap();
    let task = tokio::spawn(async move {
        let mut seen = HashSet::new();
        loop {
            tokio::select! {
                Some(request) = requests.next() => {
                    let reply = request.reply.clone().expect("a request");
                    if seen.insert((request.subject.to_string(), request.payload.clone())) {
                        count.fetch_add(1, Ordering::SeqCst);
                        nats.publish(reply, unavailable.clone().into()).await.unwrap();
                        continue;
                    }
                    let rest = request.subject.strip_prefix(FLAKY).expect("a relayed subject");
                    let subject = format!("{prefix}{rest}");
                    let nats = nats.clone();
                    tokio::spawn(async move {
                        if let Ok(answer) = nats.request(subject, request.payload).await {
                            let _ = nats.publish(reply, answer.payload).await;
                        }
                    });
                }
                Some(outcome) = outcomes.next() => {
                    let rest = outcome.subject.strip_prefix(prefix.as_str()).expect("an outcome");
                    nats.publish(format!("{FLAKY}{rest}"), outcome.payload).await.unwrap();
                }
                else => return,
            }
        }
    });
    Relay { refused, task }
}

/// Runs `example` directly and through the relay, checking both runs.
async fn directly_and_through_relay(example: Example, name: &str) {
    install_examples();
    let h = Harness::start().await;

    let auction = format!("{name}-direct");
    let summary = example.run(&h, h.client.subjects.prefix(), &auction).await;
    check_summary(&h, &auction, &summary).await;

    let auction = format!("{name}-relayed");
    let relay = relay(&h, &auction).await;
    let summary = example.run(&h, FLAKY, &auction).await;
    check_summary(&h, &auction, &summary).await;
    let refused = relay.refused.load(Ordering::SeqCst);
    assert_eq!(
        refused, DISTINCT_REQUESTS,
        "the relay refused each request once"
    );
    let retries = summary["unavailable_retries"].as_u64().expect("a count") as usize;
    assert!(
        retries >= refused,
        "every unavailable reply was resent: {retries} resends, {refused} refused"
    );
}

#[tokio::test]
async fn python_example_agrees_with_the_service() {
    directly_and_through_relay(Example::python(), "py").await;
}

#[tokio::test]
async fn node_example_agrees_with_the_service() {
    install_examples();
    // `npm run build`: tsc checks bidding.ts against allot.d.ts and nats.js's
    // types, and compiles it into dist/bidding.js, the file that runs.
    let dir = root().join("examples/typescript");
    let _ = std::fs::remove_dir_all(dir.join("dist"));
    let out = std::process::Command::new("npm")
        .args(["run", "--silent", "build"])
        .current_dir(&dir)
        .output()
        .expect("npm runs");
    assert!(
        out.status.success(),
        "npm run build: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    directly_and_through_relay(Example::node(), "js").await;
}
