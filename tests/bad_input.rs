//! Bad input: every malformed request gets an error naming what is wrong,
//! nothing is written, and the service keeps serving.

use crate::common;

use allot::wire::{AuctionSpec, BidReply};
use common::{assert_matches, bid, raw, Harness};

#[tokio::test]
async fn malformed_requests_get_clear_errors_and_the_service_keeps_serving() {
    let h = Harness::start().await;
    h.open("m", AuctionSpec::with_capacity(2)).await;
    let big = vec![b' '; 1024 * 1024 - 4096];
    let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
    let cases: Vec<(String, Vec<u8>, &str)> = vec![
        (h.client.subjects.bid("m"), b"".to_vec(), "empty"),
        (h.client.subjects.bid("m"), b"{".to_vec(), "JSON"),
        (h.client.subjects.bid("m"), vec![0xc3, 0x28], "JSON"),
        (h.client.subjects.bid("m"), deep.into_bytes(), "JSON"),
        (h.client.subjects.bid("m"), big, "limit"),
        (
            h.client.subjects.bid("m"),
            br#"{"bid_id":"b","bidder_id":"u","amount":1e40}"#.to_vec(),
            "amount",
        ),
        (
            h.client.subjects.bid("m"),
            br#"{"bid_id":"b","bidder_id":"u","amount":0.5}"#.to_vec(),
            "amount",
        ),
        (
            h.client.subjects.bid("m"),
            br#"{"bid_id":"b","bidder_id":"u","amount":-5}"#.to_vec(),
            "amount",
        ),
        (
            h.client.subjects.bid("m"),
            br#"{"bid_id":"b.c","bidder_id":"u","amount":1}"#.to_vec(),
            "bid_id",
        ),
        (
            h.client.subjects.bid("m"),
            br#"{"bid_id":"b*","bidder_id":"u","amount":1}"#.to_vec(),
            "bid_id",
        ),
        (
            h.client.subjects.bid("m"),
            br#"{"bid_id":"b","bidder_id":"u v","amount":1}"#.to_vec(),
            "bidder_id",
        ),
        (
            h.client.subjects.bid("m"),
            br#"{"bid_id":"b","bidder_id":">","amount":1}"#.to_vec(),
            "bidder_id",
        ),
        (
            h.client.subjects.bid("m"),
            br#"{"bid_id":"b","bidder_id":"u","amount":true}"#.to_vec(),
            "amount",
        ),
        (
            h.client.subjects.bid("m"),
            br#"{"bid_id":"b","bidder_id":"u","amount":1,"auction_id":"x"}"#.to_vec(),
            "auction_id",
        ),
        (
            "allot.bid.m.extra".to_string(),
            br#"{"bid_id":"b","bidder_id":"u","amount":1}"#.to_vec(),
            "subject",
        ),
        (
            h.client.subjects.open_request("m2"),
            br#"{"capacity":0}"#.to_vec(),
            "capacity",
        ),
        (
            h.client.subjects.open_request("m2"),
            br#"{"capacity":1,"min_amount":-1}"#.to_vec(),
            "min_amount",
        ),
        // A key given twice, which readers that keep the first or the last
        // would take for two different requests.
        (
            h.client.subjects.bid("m"),
            br#"{"bid_id":"b","bidder_id":"u","amount":5,"amount":500000}"#.to_vec(),
            "duplicate key \"amount\"",
        ),
        (
            h.client.subjects.open_request("m2"),
            br#"{"capacity":1,"capacity":1000}"#.to_vec(),
            "duplicate key \"capacity\"",
        ),
        (
            h.client.subjects.open_request("m2"),
            br#"{"capacity":1,"policy":null}"#.to_vec(),
            "policy",
        ),
        (
            h.client.subjects.bid("m"),
            br#"{"bid_id":"b","bidder_id":"u","amount":1e2}"#.to_vec(),
            "digits alone",
        ),
    ];
    for (subject, body, needle) in &cases {
        let reply = raw(&h, subject.clone(), body).await;
        let json: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(json["status"], "error", "{subject}: {json}");
        let message = json["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{subject}: {message:?} should mention {needle:?}"
        );
        assert_eq!(common::error_code(&reply), Some("400"), "{subject}");
        let schema = if subject.contains(".admin.open.") {
            "auction-open-reply.schema.json"
        } else {
            "bid-reply.schema.json"
        };
        assert_matches(schema, &reply.payload);
    }
    assert!(
        h.tries("m").await.is_empty(),
        "nothing written for bad input"
    );
    assert!(matches!(
        h.client.bid("m", &bid("ok", "u1", 1)).await.unwrap(),
        BidReply::Accepted { .. }
    ));
    h.wait_for_outcomes("m", 1).await;
}

#[test]
fn schemas_reject_what_the_contract_forbids() {
    let bad: [(&str, &str); 7] = [
        (
            "bid-request.schema.json",
            r#"{"bid_id":"b","bidder_id":"u","amount":-1}"#,
        ),
        (
            "bid-request.schema.json",
            r#"{"bid_id":"b","bidder_id":"u","amount":1,"x":1}"#,
        ),
        (
            "bid-reply.schema.json",
            r#"{"status":"accepted","bid_id":"b","auction_id":"a"}"#,
        ),
        (
            "outcome-event.schema.json",
            r#"{"type":"confirmed","bid_id":"b","auction_id":"a","bidder_id":"u","amount":1,"try_seq":1,"tried_at":"2026-01-01T00:00:00.000000Z","decided_at":"2026-01-01T00:00:00.000000Z","reason":"capacity_full"}"#,
        ),
        (
            "try-event.schema.json",
            r#"{"type":"try","bid_id":"b","auction_id":"a.b","bidder_id":"u","amount":1,"tried_at":"2026-01-01T00:00:00.000000Z"}"#,
        ),
        (
            "tries-entry.schema.json",
            r#"{"type":"tries","v":2,"tries":[]}"#,
        ),
        (
            "tries-entry.schema.json",
            r#"{"type":"tries","v":3,"tries":[{"bid_id":"b","auction_id":"a","bidder_id":"u","amount":1,"tried_at":"2026-01-01T00:00:00.000000Z"}]}"#,
        ),
    ];
    for (schema, instance) in bad {
        let json: serde_json::Value = serde_json::from_str(instance).unwrap();
        assert!(
            !common::schema(schema).is_valid(&json),
            "{schema} accepted {instance}"
        );
    }
}
