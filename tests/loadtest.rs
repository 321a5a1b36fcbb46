//! `allot loadtest` end to end: the CI-sized load test of all three
//! strategies, and of allot's whole bid lifecycle, failing on any invariant
//! break.

use crate::common;

use std::process::Command;
use std::time::Duration;

use allot::loadtest::workload::Workload;
use allot::loadtest::{self, Options, Strategy};
use allot::wire::Policy;
use common::Harness;

#[tokio::test]
async fn all_three_strategies_pass_the_invariant_check_on_the_same_workload() {
    let h = Harness::start().await;
    let options = Options {
        workload: Workload {
            auctions: 3,
            capacity: 40,
            bidders: 500,
            max_wins_per_bidder: 2,
            min_amount: 100,
            requests: Some(3000),
            concurrency: 64,
            duplicates: 0.05,
            hot: 0.5,
            run_id: "ci".into(),
            ..Workload::default()
        },
        strategies: vec![Strategy::Tcc, Strategy::Occ, Strategy::Lock],
        progress: false,
        settle: Duration::from_secs(20),
        ..Options::default()
    };
    let outcome = loadtest::run(&h.client, &options).await.unwrap();
    assert_eq!(outcome.reports.len(), 3);
    for r in &outcome.reports {
        assert!(
            r.invariants.ok,
            "{}: {:?}",
            r.strategy, r.invariants.violations
        );
        assert_eq!(r.invariants.auctions, 3);
        assert_eq!(r.requests, 3000, "{}", r.strategy);
        assert!(
            r.bids < 3000,
            "{}: duplicates are resends, not new bids",
            r.strategy
        );
        // Giving up under contention is how occ and lock fail, and a busy
        // machine can make them; anything else is a defect. allot never
        // gives up.
        let expected_failure = match r.strategy.as_str() {
            "occ" => Some("conflict_retries_exhausted"),
            "lock" => Some("lock_timeout"),
            _ => None,
        };
        assert!(
            r.errors
                .keys()
                .all(|e| Some(e.as_str()) == expected_failure),
            "{}: {:?}",
            r.strategy,
            r.errors
        );
        // 3000 requests over 3 auctions of 40 slots: every slot fills.
        assert_eq!(r.confirmed, 120, "{}", r.strategy);
        assert!(
            r.rejected.get("below_minimum").is_some_and(|&n| n > 0),
            "{}: {:?}",
            r.strategy,
            r.rejected
        );
        assert_eq!(r.reply_latency.count, 3000);
        assert_eq!(r.outcome_latency.count, r.accepted, "{}", r.strategy);
        // Once per accepted request: a duplicate bid id is sent, and
        // accepted, twice.
        assert!(
            (r.accepted..=r.requests).contains(&r.admitted_latency.count),
            "{}: {} admitted, {} accepted",
            r.strategy,
            r.admitted_latency.count,
            r.accepted
        );
    }
    let tcc = &outcome.reports[0];
    assert_eq!(
        (tcc.contention.conflicts, tcc.contention.lock_waits),
        (0, 0)
    );
    // The tries of the tcc run are in allot's log, one per accepted bid.
    let s = &h.client.subjects;
    let tries: usize = h
        .read_stream("ALLOT_TRIES", "allot.tries.>")
        .await
        .iter()
        .map(|m| allot::wire::LogEntry::read(s, &m.subject, &m.payload, m.time).len())
        .sum();
    assert_eq!(tries as u64, tcc.accepted);
}

/// Ranked auctions under load with every lifecycle path at once: bids
/// withdrawn once accepted, withdraws racing their own bid, raises (resends
/// raise too, so some conflict), and a deadline that falls while bids are
/// still being sent. The check replays each auction in log order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_lifecycle_under_load_passes_the_invariant_check() {
    let h = Harness::start().await;
    let options = Options {
        workload: Workload {
            auctions: 3,
            capacity: 10,
            bidders: 1000,
            requests: Some(2000),
            // Open loop, 4 s of bids: the close at 2.5 s falls inside.
            rate: Some(500.0),
            concurrency: 64,
            duplicates: 0.05,
            policy: Policy::TopAmount,
            withdraws: 0.1,
            early_withdraws: 0.1,
            raises: 0.3,
            close_after_secs: Some(2.5),
            run_id: "life".into(),
            ..Workload::default()
        },
        strategies: vec![Strategy::Tcc],
        progress: false,
        settle: Duration::from_secs(20),
        ..Options::default()
    };
    let outcome = loadtest::run(&h.client, &options).await.unwrap();
    let r = &outcome.reports[0];
    assert!(r.invariants.ok, "{:?}", r.invariants.violations);
    assert_eq!(
        (r.invariants.replayed, r.invariants.not_replayed),
        (3, 0),
        "every auction replayed in log order"
    );
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let l = &r.lifecycle;
    let cancelled = |reason: &str| r.cancelled.get(reason).copied().unwrap_or(0);
    assert!(l.empty_rollbacks > 0, "{l:?}");
    assert!(l.raised > 0, "{l:?}");
    assert!(l.held_notices > 0, "{l:?}");
    assert_eq!(l.unanswered, 0, "{l:?}");
    assert!(cancelled("outbid") > 0, "{:?}", r.cancelled);
    assert!(cancelled("withdrawn") > 0, "{:?}", r.cancelled);
    let closed =
        cancelled("auction_closed") + r.rejected.get("auction_closed").copied().unwrap_or(0);
    assert!(
        closed > 0,
        "bids after the deadline: {:?} {:?}",
        r.cancelled,
        r.rejected
    );
    assert!((1..=30).contains(&r.confirmed), "{}", r.confirmed);
    assert_eq!(r.outcome_latency.count, r.accepted);
    common::assert_replay_matches_outcomes(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_writes_its_reports_and_fails_on_bad_flags() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (json, html) = (dir.path().join("r.json"), dir.path().join("r.html"));
    // Two worker threads: the default on a machine of two cores is one.
    let out = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args([
            "--threads",
            "2",
            "--nats-url",
            h.server.url(),
            "loadtest",
            "-q",
            "--strategy",
            "all",
            "--bids",
            "1000",
        ])
        .args([
            "--auctions",
            "2",
            "--capacity",
            "20",
            "--baseline",
            "--report",
        ])
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "bids/s replied",
        "vs baseline",
        "reply p50/p99/p99.9/max",
        "invariants",
    ] {
        assert!(stdout.contains(row), "{row} missing from\n{stdout}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    assert!(report["baseline"]["per_sec"].as_f64().unwrap() > 0.0);
    for run in runs {
        assert_eq!(run["invariants"]["ok"], true);
        assert!(run["baseline_ratio"].as_f64().unwrap() > 0.0);
        for p in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
            assert!(run["reply_latency"][p].as_u64().unwrap() > 0, "{p}");
        }
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && !page.contains("https://") && !page.contains("<script"));

    let bad = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args([
            "--nats-url",
            h.server.url(),
            "loadtest",
            "--duplicates",
            "1.5",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a fraction between 0 and 1"));

    // With a lifecycle flag, "all" runs tcc alone, says so, and shows the
    // lifecycle rows; by name, occ and lock refuse; raises need ranked
    // auctions.
    let ranked = dir.path().join("ranked.json");
    let out = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args([
            "--nats-url",
            h.server.url(),
            "loadtest",
            "-q",
            "--strategy",
            "all",
        ])
        .args(["--bids", "300", "--auctions", "2", "--capacity", "5"])
        .args(["--policy", "top_amount", "--withdraws", "0.2"])
        .args(["--early-withdraws", "0.2", "--raises", "0.3", "--report"])
        .arg(&ranked)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("runs tcc alone"), "{stderr}");
    for row in [
        "lifecycle: top_amount",
        "withdraws sent / withdrawn",
        "raises sent/raised/conflicts",
        "held notices / unanswered",
    ] {
        assert!(stdout.contains(row), "{row} missing from\n{stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ranked).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["workload"]["policy"], "top_amount");
    assert!(runs[0]["lifecycle"]["withdraws_sent"].as_u64().unwrap() > 0);

    for (flags, says) in [
        (
            &["--strategy", "occ", "--withdraws", "0.1"][..],
            "strategy occ",
        ),
        (
            &["--strategy", "lock", "--policy", "top_amount"][..],
            "strategy lock",
        ),
        (&["--raises", "0.1"][..], "need policy top_amount"),
    ] {
        let refused = Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(["--nats-url", h.server.url(), "loadtest", "-q"])
            .args(flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && stderr.contains(says),
            "{flags:?}: {stderr}"
        );
    }
}

/// A load test whose bids wait for their decisions: every reply carries
/// one, and the invariant check, which reads the outcome stream on its own,
/// agrees with the replies.
#[tokio::test]
async fn bids_that_wait_get_their_decisions_and_pass_the_invariant_check() {
    let h = Harness::start().await;
    let options = Options {
        workload: Workload {
            auctions: 2,
            capacity: 30,
            bidders: 300,
            requests: Some(1000),
            concurrency: 32,
            duplicates: 0.05,
            run_id: "wait".into(),
            wait: true,
            ..Workload::default()
        },
        strategies: vec![Strategy::Tcc],
        progress: false,
        settle: Duration::from_secs(20),
        ..Options::default()
    };
    let outcome = loadtest::run(&h.client, &options).await.unwrap();
    let r = &outcome.reports[0];
    assert!(r.invariants.ok, "{:?}", r.invariants.violations);
    assert_eq!(r.confirmed, 60, "both auctions fill");
}
