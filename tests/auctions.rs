//! Opening auctions and reading their status.

use crate::common;

use allot::wire::AuctionSpec;
use chrono::Utc;
use common::{assert_matches, raw, Harness};

#[tokio::test]
async fn opening_is_idempotent_and_conflicting_settings_are_refused() {
    let h = Harness::start().await;
    let spec = AuctionSpec {
        capacity: 3,
        min_amount: 7,
        closes_at: Some(Utc::now() + chrono::Duration::hours(1)),
        max_wins_per_bidder: 2,
        policy: Default::default(),
    };
    let body = serde_json::to_vec(&spec).unwrap();
    assert_matches("auction-open-request.schema.json", &body);
    let first = raw(&h, h.client.subjects.open_request("x"), &body).await;
    assert_matches("auction-open-reply.schema.json", &first.payload);
    let again = raw(&h, h.client.subjects.open_request("x"), &body).await;
    let first: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
    let again: serde_json::Value = serde_json::from_slice(&again.payload).unwrap();
    assert_eq!(first["status"], "opened");
    assert_eq!(again["duplicate"], true);
    assert_eq!(first["open_seq"], again["open_seq"]);

    let other = AuctionSpec {
        capacity: 4,
        ..spec.clone()
    };
    let reply = raw(
        &h,
        h.client.subjects.open_request("x"),
        &serde_json::to_vec(&other).unwrap(),
    )
    .await;
    assert_matches("auction-open-reply.schema.json", &reply.payload);
    assert_eq!(common::error_code(&reply), Some("409"));

    // The log holds one open event, and it matches its schema.
    let s = &h.client.subjects;
    let events = h
        .read_stream(&s.tries_stream(), &s.auction_event("x"))
        .await;
    assert_eq!(events.len(), 1);
    assert_matches("open-event.schema.json", &events[0].payload);

    let status = raw(&h, s.status_request("x"), b"").await;
    assert_matches("auction-status-reply.schema.json", &status.payload);
    let unknown = raw(&h, s.status_request("nope"), b"").await;
    assert_matches("auction-status-reply.schema.json", &unknown.payload);
    assert_eq!(common::error_code(&unknown), Some("404"));
}
