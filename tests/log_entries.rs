//! Entries in the log that the gateway did not write: the verifier decides
//! around them and never lets them block an auction.

use crate::common;

use futures::StreamExt;

use allot::wire::{AuctionSpec, BidReply, BidRequest, CancelReason, OutcomeKind};
use common::{assert_matches, assert_replay_matches_outcomes, one_outcome_per_bid, Harness};

#[tokio::test]
async fn hand_written_garbage_in_the_log_never_blocks_an_auction() {
    let h = Harness::start().await;
    h.open("p", AuctionSpec::with_capacity(2)).await;
    let subject = h.client.subjects.try_event("p");
    // JetStream reports each terminated delivery.
    let mut terminated = h
        .client
        .client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.ALLOT_TRIES.*")
        .await
        .unwrap();
    let garbage: [&[u8]; 4] = [
        b"garbage",
        br#"{"bid_id":"bad-1","amount":"lots"}"#,
        br#"{"type":"try","bid_id":"bad-2","auction_id":"other","bidder_id":"u9","amount":5,"tried_at":"2026-01-01T00:00:00.000000Z"}"#,
        br#"{"type":"open","auction_id":"p","capacity":99,"opened_at":"2026-01-01T00:00:00.000000Z"}"#,
    ];
    for payload in garbage {
        h.js.publish(subject.clone(), payload.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let reply = h
        .client
        .bid(
            "p",
            &BidRequest {
                bid_id: "good".into(),
                bidder_id: "u1".into(),
                amount: 5,
                wait: false,
            },
        )
        .await
        .unwrap();
    assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");

    h.wait_until_decided().await;
    let outcomes = h.outcomes(Some("p")).await;
    let by_bid = one_outcome_per_bid(&outcomes);
    assert_eq!(by_bid.len(), 3, "{outcomes:?}");
    for bad in ["bad-1", "bad-2"] {
        assert_eq!(by_bid[bad].kind, OutcomeKind::Cancelled);
        assert_eq!(by_bid[bad].reason, Some(CancelReason::InvalidEvent));
    }
    assert_eq!(by_bid["bad-1"].bidder_id, "unknown");
    assert_eq!(by_bid["bad-2"].bidder_id, "u9");
    assert_eq!(by_bid["good"].rank, Some(1), "garbage takes no slot");
    for o in &outcomes {
        assert_matches("outcome-event.schema.json", &serde_json::to_vec(o).unwrap());
    }
    assert_replay_matches_outcomes(&h).await;

    // Every garbage entry, with a bid id or not, was terminated (+TERM).
    let mut terminated_seqs = std::collections::BTreeSet::new();
    while terminated_seqs.len() < garbage.len() {
        let advisory = tokio::time::timeout(std::time::Duration::from_secs(10), terminated.next())
            .await
            .expect("a termination advisory per garbage entry")
            .unwrap();
        let advisory: serde_json::Value = serde_json::from_slice(&advisory.payload).unwrap();
        terminated_seqs.insert(advisory["stream_seq"].as_u64().unwrap());
    }
    // The open event is entry 1; the garbage follows it.
    assert_eq!(terminated_seqs, (2..=5).collect());
}
