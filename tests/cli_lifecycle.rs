//! `allot withdraw`, `allot raise` and `allot auction close`: against a
//! stand-in responder, the request each sends and what each prints and exits
//! with for every kind of reply; against the real service, a ranked auction
//! run from the command line, with every reply and log event checked
//! against its schema.

mod common;

use std::process::{Command, Output};

use allot::wire::{LogEvent, OutcomeKind};
use common::{assert_matches, Harness};
use futures::StreamExt;
use serde_json::{json, Value};

fn allot(h: &Harness, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(args)
        .env("NATS_URL", h.server.url())
        .output()
        .expect("allot runs")
}

/// One command run against a canned reply.
struct Case {
    args: &'static [&'static str],
    subject: &'static str,
    reply: Value,
    /// The request body the command must send (`None`: empty).
    request: Option<Value>,
    /// Schema the request body must match.
    request_schema: Option<&'static str>,
    reply_schema: &'static str,
    succeeds: bool,
    /// Part of what a failing command says on stderr.
    says: &'static str,
}

fn cases() -> Vec<Case> {
    let withdraw: &[&str] = &["withdraw", "a1", "--bid-id", "b1", "--bidder", "u1"];
    let withdraw_body = json!({"bid_id": "b1", "bidder_id": "u1"});
    let raise: &[&str] = &[
        "raise",
        "a1",
        "--bid-id",
        "b1",
        "--bidder",
        "u1",
        "--amount",
        "40",
        "--expected",
        "10",
    ];
    let raise_body =
        json!({"bid_id": "b1", "bidder_id": "u1", "amount": 40, "expected_amount": 10});
    let close: &[&str] = &["auction", "close", "a1"];
    let case = |args, subject, reply, request: &Value, succeeds, says| Case {
        args,
        subject,
        reply,
        request: (!request.is_null()).then(|| request.clone()),
        request_schema: match subject {
            "allot.withdraw.a1" => Some("withdraw-request.schema.json"),
            "allot.raise.a1" => Some("raise-request.schema.json"),
            _ => None,
        },
        reply_schema: match subject {
            "allot.withdraw.a1" => "withdraw-reply.schema.json",
            "allot.raise.a1" => "raise-reply.schema.json",
            _ => "close-reply.schema.json",
        },
        succeeds,
        says,
    };
    vec![
        case(
            withdraw,
            "allot.withdraw.a1",
            json!({"status": "withdrawn", "bid_id": "b1", "auction_id": "a1", "withdraw_seq": 4, "empty_rollback": true}),
            &withdraw_body,
            true,
            "",
        ),
        case(
            withdraw,
            "allot.withdraw.a1",
            json!({"status": "refused", "bid_id": "b1", "auction_id": "a1", "withdraw_seq": 4, "reason": "already_confirmed"}),
            &withdraw_body,
            false,
            "withdraw refused: already_confirmed",
        ),
        case(
            raise,
            "allot.raise.a1",
            json!({"status": "raised", "bid_id": "b1", "auction_id": "a1", "raise_seq": 5, "amount": 40}),
            &raise_body,
            true,
            "",
        ),
        case(
            raise,
            "allot.raise.a1",
            json!({"status": "refused", "bid_id": "b1", "auction_id": "a1", "raise_seq": 5, "reason": "conflict", "current_amount": 30}),
            &raise_body,
            false,
            "raise refused: conflict (the bid's amount is 30)",
        ),
        case(
            raise,
            "allot.raise.a1",
            json!({"status": "error", "error": "invalid_field", "message": "field \"bid_id\" must be 1 to 64 characters"}),
            &raise_body,
            false,
            "field \"bid_id\" must be 1 to 64 characters (invalid_field)",
        ),
        case(
            close,
            "allot.admin.close.a1",
            json!({"status": "closing", "auction_id": "a1", "close_seq": 9, "duplicate": true}),
            &Value::Null,
            true,
            "",
        ),
        case(
            close,
            "allot.admin.close.a1",
            json!({"status": "error", "error": "unknown_auction", "message": "no auction \"a1\""}),
            &Value::Null,
            false,
            "no auction \"a1\" (unknown_auction)",
        ),
    ]
}

// Multi-threaded: each command blocks one thread while the stand-in answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_commands_print_the_reply_and_fail_on_refusals_and_errors() {
    let h = Harness::server_only().await;
    let nats = h.client.client.clone();
    for case in cases() {
        let mut requests = nats.subscribe(case.subject.to_string()).await.unwrap();
        nats.flush().await.unwrap();
        let reply = serde_json::to_vec(&case.reply).unwrap();
        let responder = nats.clone();
        let answered = tokio::spawn(async move {
            let m = requests.next().await.expect("a request");
            responder
                .publish(m.reply.expect("a reply subject"), reply.into())
                .await
                .unwrap();
            responder.flush().await.unwrap();
            m.payload
        });

        let out = allot(&h, case.args);
        let sent = answered.await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = case.args.join(" ");

        match &case.request {
            Some(expected) => {
                let body: Value = serde_json::from_slice(&sent).unwrap();
                assert_eq!(&body, expected, "{name}");
            }
            None => assert!(sent.is_empty(), "{name} sent {sent:?}"),
        }
        if let Some(schema) = case.request_schema {
            assert_matches(schema, &sent);
        }
        // The reply is printed as it came, whatever it says.
        assert_matches(case.reply_schema, &out.stdout);
        let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(printed, case.reply, "{name}");
        assert_eq!(out.status.success(), case.succeeds, "{name}: {stderr}");
        assert!(stderr.contains(case.says), "{name}: {stderr}");
    }
}

#[test]
fn a_raise_to_no_more_than_expected_is_refused_before_connecting() {
    let out = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args([
            "raise",
            "a1",
            "--bid-id",
            "b1",
            "--bidder",
            "u1",
            "--amount",
            "10",
            "--expected",
            "10",
            "--nats-url",
            "nats://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--amount (10) must be above --expected (10)"),
        "{stderr}"
    );
}

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
