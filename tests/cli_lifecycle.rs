//! `allot withdraw`, `allot raise` and `allot auction close` against the
//! real service: a ranked auction run from the command line, with every
//! reply and log event checked against its schema, and the exit status of
//! each refusal and error.

use crate::common;

use std::process::Command;

use allot::wire::{LogEvent, OutcomeKind};
use common::{allot, assert_matches, Harness};
use serde_json::Value;

/// Runs a command against the service, checks its one line of output
/// against `schema`, and returns its success, that line and its stderr.
fn reply(h: &Harness, args: &[&str], schema: &str) -> (bool, Value, String) {
    let out = allot(h, args);
    assert_matches(schema, &out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = serde_json::from_slice(&out.stdout).unwrap();
    (out.status.success(), line, stderr)
}

// Multi-threaded: the commands block one thread while the service runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranked_auction_from_the_command_line() {
    let h = Harness::start().await;
    let open = &[
        "auction",
        "open",
        "r",
        "--capacity",
        "1",
        "--policy",
        "top_amount",
    ];
    let (ok, opened, _) = reply(&h, open, "auction-open-reply.schema.json");
    assert!(ok && opened["policy"] == "top_amount", "{opened}");
    let bid = &[
        "bid", "r", "--bidder", "u1", "--amount", "10", "--bid-id", "b1",
    ];
    let (ok, accepted, _) = reply(&h, bid, "bid-reply.schema.json");
    assert!(ok, "{accepted}");

    let raise = |amount, expected| {
        let args = [
            "raise",
            "r",
            "--bid-id",
            "b1",
            "--bidder",
            "u1",
            "--amount",
            amount,
            "--expected",
            expected,
        ];
        reply(&h, &args, "raise-reply.schema.json")
    };
    let (ok, raised, _) = raise("20", "10");
    assert!(ok && raised["amount"] == 20, "{raised}");
    // The same expected amount again: the bid is at 20 now.
    let (ok, conflict, stderr) = raise("30", "10");
    assert!(!ok && conflict["reason"] == "conflict", "{conflict}");
    assert!(stderr.contains("the bid's amount is 20"), "{stderr}");

    let withdraw = |bid_id, bidder| {
        let args = ["withdraw", "r", "--bid-id", bid_id, "--bidder", bidder];
        reply(&h, &args, "withdraw-reply.schema.json")
    };
    let (ok, other, _) = withdraw("b1", "u2");
    assert!(!ok && other["reason"] == "not_owner", "{other}");
    let (ok, early, _) = withdraw("b2", "u2");
    assert!(ok && early["empty_rollback"] == true, "{early}");

    let close = &["auction", "close", "r"];
    let (ok, closing, _) = reply(&h, close, "close-reply.schema.json");
    assert!(ok && closing["status"] == "closing", "{closing}");
    let (ok, again, _) = reply(&h, close, "close-reply.schema.json");
    assert!(ok && again["duplicate"] == true, "{again}");
    assert_eq!(again["close_seq"], closing["close_seq"]);
    // Decided after the close in log order: confirmed, too late to withdraw.
    let (ok, late, _) = withdraw("b1", "u1");
    assert!(!ok && late["reason"] == "already_confirmed", "{late}");
    let unknown = &["auction", "close", "nope"];
    let (ok, error, _) = reply(&h, unknown, "close-reply.schema.json");
    assert!(!ok && error["error"] == "unknown_auction", "{error}");

    let outcomes = h.wait_for_outcomes("r", 1).await;
    assert_eq!(
        (outcomes[0].kind, outcomes[0].rank, outcomes[0].amount),
        (OutcomeKind::Confirmed, Some(1), 20)
    );
    let s = &h.client.subjects;
    let events = h
        .read_stream(&s.tries_stream(), &s.auction_event("r"))
        .await;
    let mut kinds = Vec::new();
    for m in &events {
        let schema = match serde_json::from_slice(&m.payload).unwrap() {
            LogEvent::Open(_) => "open-event.schema.json",
            LogEvent::Withdraw(_) => "withdraw-event.schema.json",
            LogEvent::Raise(_) => "raise-event.schema.json",
            LogEvent::Close(_) => "close-event.schema.json",
            LogEvent::Try(_) => "try-event.schema.json",
        };
        assert_matches(schema, &m.payload);
        kinds.push(schema.trim_end_matches("-event.schema.json"));
    }
    assert_eq!(
        kinds,
        ["open", "raise", "raise", "withdraw", "withdraw", "close", "withdraw"]
    );
}

/// `allot watch --holds` prints held notices beside the outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_shows_holds_and_outcomes() {
    let h = Harness::start().await;
    let watch = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["watch", "w", "--holds"])
        .env("NATS_URL", h.server.url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its subscriptions are made once it has connected.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (ok, _, _) = reply(
        &h,
        &[
            "auction",
            "open",
            "w",
            "--capacity",
            "1",
            "--policy",
            "top_amount",
        ],
        "auction-open-reply.schema.json",
    );
    assert!(ok);
    for (bid, amount) in [("b1", "10"), ("b2", "20")] {
        let args = [
            "bid", "w", "--bidder", bid, "--amount", amount, "--bid-id", bid,
        ];
        assert!(reply(&h, &args, "bid-reply.schema.json").0);
    }
    reply(&h, &["auction", "close", "w"], "close-reply.schema.json");
    h.wait_for_outcomes("w", 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // SIGTERM: watch stops cleanly.
    let pid = watch.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["type"].as_str().unwrap(), l["bid_id"].as_str().unwrap()))
        .collect();
    assert!(
        kinds.contains(&("held", "b1")) && kinds.contains(&("held", "b2")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("cancelled", "b1")) && kinds.contains(&("confirmed", "b2")),
        "{kinds:?}"
    );
}

/// `allot bid --wait` in a ranked auction: an accepted bid exits 0 with
/// its held notice (its outcome waits for the close), or with its outcome
/// when one comes first; a resend, which gets no second notice, exits 0
/// once the wait is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bid_wait_in_a_ranked_auction_exits_0_when_accepted() {
    let h = Harness::start().await;
    let open = &[
        "auction",
        "open",
        "rw",
        "--capacity",
        "1",
        "--policy",
        "top_amount",
    ];
    assert!(allot(&h, open).status.success());
    let bid = |bid_id: &str, amount: &str| {
        allot(
            &h,
            &[
                "bid",
                "rw",
                "--bidder",
                bid_id,
                "--amount",
                amount,
                "--bid-id",
                bid_id,
                "--wait",
                "--timeout",
                "3",
            ],
        )
    };
    let lines = |out: &std::process::Output| -> Vec<Value> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    let out = bid("b1", "10");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed = lines(&out);
    assert_eq!(printed[0]["status"], "accepted");
    assert_eq!(
        (&printed[1]["type"], &printed[1]["bid_id"]),
        (&"held".into(), &"b1".into())
    );
    assert_matches("held-event.schema.json", printed[1].to_string().as_bytes());
    assert!(stderr.contains("comes at the close"), "{stderr}");

    // Lower than the holder: outbid at once, an outcome.
    let out = bid("b2", "5");
    assert!(out.status.success());
    let printed = lines(&out);
    assert_eq!(
        (&printed[0]["status"], &printed[0]["reason"]),
        (&"cancelled".into(), &"outbid".into()),
        "the reply carries the decision"
    );

    // The holder's resend: no notice comes again, and the wait ends in time.
    let out = bid("b1", "10");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(lines(&out)[0]["duplicate"], true);
    assert!(stderr.contains("comes at the close"), "{stderr}");
}
