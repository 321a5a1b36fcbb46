//! `allot withdraw`, `allot raise` and `allot auction close` against a
//! stand-in responder on a real nats-server: the request each sends, and
//! what each prints and exits with for every kind of reply. The service's
//! own answers are tested with the gateway.

mod common;

use std::process::{Command, Output};

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
