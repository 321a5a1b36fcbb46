//! `allot loadtest` end to end: the CI-sized load test of all three
//! strategies, failing on any invariant break.

mod common;

use std::process::Command;
use std::time::Duration;

use allot::loadtest::workload::Workload;
use allot::loadtest::{self, Options, Strategy};
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
    }
    let tcc = &outcome.reports[0];
    assert_eq!(
        (tcc.contention.conflicts, tcc.contention.lock_waits),
        (0, 0)
    );
    // The tries of the tcc run are in allot's log, one per accepted bid.
    let tries = h.read_stream("ALLOT_TRIES", "allot.try.*").await;
    assert_eq!(tries.len() as u64, tcc.accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_writes_its_reports_and_fails_on_bad_flags() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (json, html) = (dir.path().join("r.json"), dir.path().join("r.html"));
    let out = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args([
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
}
