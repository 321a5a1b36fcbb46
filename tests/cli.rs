//! The `allot` binary's commands against a running service.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use common::{allot, assert_matches, Harness};

fn stdout_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

// Multi-threaded: the commands block one thread while the service runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_bid_wait_status_and_watch() {
    let h = Harness::start().await;
    let out = allot(
        &h,
        &[
            "auction",
            "open",
            "cli",
            "--capacity",
            "1",
            "--min-amount",
            "5",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_matches("auction-open-reply.schema.json", &out.stdout);

    let out = allot(
        &h,
        &[
            "bid", "cli", "--bidder", "u1", "--amount", "5", "--bid-id", "first", "--wait",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = stdout_lines(&out);
    assert_eq!(
        lines[0]["status"], "confirmed",
        "the reply carries the decision"
    );
    assert_eq!(lines[0]["rank"], 1);
    assert_eq!(lines.len(), 1);
    assert_matches("bid-reply.schema.json", lines[0].to_string().as_bytes());

    // A resend gets the stored decision rather than a new one.
    let out = allot(
        &h,
        &[
            "bid", "cli", "--bidder", "u1", "--amount", "5", "--bid-id", "first", "--wait",
        ],
    );
    let lines = stdout_lines(&out);
    assert_eq!(lines[0]["duplicate"], true);
    assert_eq!(
        (&lines[0]["status"], &lines[0]["bid_id"]),
        (&"confirmed".into(), &"first".into())
    );

    // A fast reject prints the reply and fails.
    let out = allot(&h, &["bid", "cli", "--bidder", "u2", "--amount", "4"]);
    assert!(!out.status.success());
    assert_eq!(stdout_lines(&out)[0]["reason"], "below_minimum");

    let out = allot(&h, &["auction", "status", "cli"]);
    assert!(out.status.success());
    let status = &stdout_lines(&out)[0];
    assert_eq!(
        (status["confirmed"].as_u64(), status["state"].as_str()),
        (Some(1), Some("sold_out"))
    );

    let mut watch = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["watch", "cli", "--from-start"])
        .env("NATS_URL", h.server.url())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let first = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .expect("watch prints an outcome in time")
    .unwrap()
    .unwrap();
    watch.kill().unwrap();
    watch.wait().unwrap();
    let event: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(event["bid_id"], "first");
}

#[test]
fn unreachable_nats_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args([
            "bid",
            "a",
            "--bidder",
            "u",
            "--amount",
            "1",
            "--nats-url",
            "nats://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach NATS at nats://127.0.0.1:1: "),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_are_refused_before_connecting() {
    let out = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["auction", "open", "a", "--capacity", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("capacity"));
}

/// On one thread (a current-thread runtime) and on two worker threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_cleanly_on_sigterm() {
    let h = Harness::server_only().await;
    for threads in ["1", "2"] {
        let mut serve = Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(["serve", "--threads", threads, "--nats-url", h.server.url()])
            .arg("--data-dir")
            .arg(h.data_dir())
            .env("RUST_LOG", "allot=info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        h.wait_until_serving().await;
        let term = Command::new("kill")
            .args(["-TERM", &serve.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let status = common::wait_exit(&mut serve, 20).await;
        assert!(
            status.success(),
            "--threads {threads}: exit status {status}"
        );
        let mut log = String::new();
        std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut log).unwrap();
        assert!(
            log.contains("verifier stopped") && log.contains("gateway stopped"),
            "--threads {threads}: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_with_a_clear_error_when_it_cannot_start() {
    let h = Harness::server_only().await;
    let not_a_dir = h.data_dir().join("file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let log = common::serve_failure(&h, &not_a_dir, &[]).await;
    assert!(log.contains("cannot create data directory"), "{log}");
}

/// Runs `allot` with `args` against a port nothing listens on: a command
/// that gets as far as connecting fails with "cannot reach NATS".
fn offline(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(args)
        .args(["--nats-url", "nats://127.0.0.1:1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("cannot reach NATS"), "{stderr}");
    (out.status.success(), stderr)
}

#[test]
fn bad_ids_are_refused_naming_the_argument() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["bid", "", "--bidder", "u", "--amount", "1"],
            "<AUCTION_ID>",
        ),
        (
            &["bid", "a", "--bidder", "x y", "--amount", "1"],
            "--bidder",
        ),
        (
            &[
                "bid", "a", "--bidder", "u", "--amount", "1", "--bid-id", "a.b",
            ],
            "--bid-id",
        ),
        (
            &["withdraw", "*", "--bid-id", "b", "--bidder", "u"],
            "<AUCTION_ID>",
        ),
        (&["auction", "status", ""], "<AUCTION_ID>"),
        (&["audit", ">"], "[AUCTION_ID]"),
    ];
    for (args, named) in cases {
        let (ok, stderr) = offline(args);
        assert!(!ok, "{args:?}");
        assert!(
            stderr.contains(named) && stderr.contains("1 to 64 characters of [A-Za-z0-9_-]"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_closes_at_in_the_past_is_refused() {
    for at in ["0001-01-01T00:00:00Z", "2020-01-01T00:00:00Z"] {
        let (ok, stderr) = offline(&["auction", "open", "a", "--capacity", "1", "--closes-at", at]);
        assert!(!ok);
        assert!(
            stderr.contains("--closes-at") && stderr.contains("is not in the future"),
            "{stderr}"
        );
    }
}

#[test]
fn a_thread_count_that_is_not_one_or_more_is_refused() {
    for bad in ["0", "-1", "two", ""] {
        let (ok, stderr) = offline(&[&format!("--threads={bad}"), "status"]);
        assert!(!ok, "--threads {bad:?} was taken");
        assert!(
            stderr.contains("--threads")
                && stderr.contains("must be `auto` or a whole number of at least 1"),
            "{stderr}"
        );
    }
}

#[test]
fn a_dedupe_window_of_zero_is_refused() {
    let (ok, stderr) = offline(&["serve", "--dedupe-window-secs", "0"]);
    assert!(!ok);
    assert!(
        stderr.contains("--dedupe-window-secs") && stderr.contains("must be at least 1"),
        "{stderr}"
    );
}

/// `allot result` asks the service about one bid: confirmed exits 0, a
/// bid with no outcome fails, and each reply matches its schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_tells_a_bids_outcome() {
    let h = Harness::start().await;
    h.open("res", allot::wire::AuctionSpec::with_capacity(1))
        .await;
    let reply = h
        .client
        .bid("res", &common::bid("b1", "u1", 5))
        .await
        .unwrap();
    assert!(
        matches!(reply, allot::wire::BidReply::Accepted { .. }),
        "{reply:?}"
    );
    h.wait_for_outcomes("res", 1).await;

    let out = allot(&h, &["result", "res", "--bid-id", "b1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_matches("result-reply.schema.json", &out.stdout);
    let lines = stdout_lines(&out);
    assert_eq!(
        (lines[0]["status"].as_str(), lines[0]["rank"].as_u64()),
        (Some("confirmed"), Some(1))
    );

    let out = allot(&h, &["result", "res", "--bid-id", "never"]);
    assert!(!out.status.success());
    assert_matches("result-reply.schema.json", &out.stdout);
    assert_eq!(stdout_lines(&out)[0]["status"], "undecided");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no outcome for bid \"never\" yet"),
        "{stderr}"
    );
}
