//! Opening auctions and reading their status.

use crate::common;

use allot::wire::{AuctionSpec, AuctionState, BidReply, Policy, RejectReason, StatusReply};
use chrono::Utc;
use common::{assert_matches, bid, raw, Harness};

#[tokio::test]
async fn opening_is_idempotent_and_conflicting_settings_are_refused() {
    let h = Harness::start().await;
    let spec = AuctionSpec {
        min_amount: 7,
        closes_at: Some(Utc::now() + chrono::Duration::hours(1)),
        max_wins_per_bidder: 2,
        ..AuctionSpec::with_capacity(3)
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
        capacity: AuctionSpec::with_capacity(4).capacity,
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

/// The status of `auction_id`, asked until `done` holds for it (10 s at most).
async fn status_until(
    h: &Harness,
    auction_id: &str,
    done: impl Fn(&StatusReply) -> bool,
) -> StatusReply {
    let mut status = h.client.status(auction_id).await.unwrap();
    for _ in 0..200 {
        if done(&status) {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        status = h.client.status(auction_id).await.unwrap();
    }
    panic!("status of {auction_id} never reached what was waited for: {status:?}");
}

fn state_of(status: &StatusReply) -> Option<AuctionState> {
    match status {
        StatusReply::Ok { state, .. } => Some(*state),
        StatusReply::Error { .. } => None,
    }
}

/// `closed` comes before `sold_out`: the close is final. A bid after it is
/// still refused as a closed auction's.
#[tokio::test]
async fn a_filled_auction_is_closed_once_closed() {
    let h = Harness::start().await;
    h.open("f", AuctionSpec::with_capacity(1)).await;
    h.client.bid("f", &bid("b1", "u1", 5)).await.unwrap();
    h.wait_for_outcomes("f", 1).await;
    let sold_out = |s: &StatusReply| state_of(s) == Some(AuctionState::SoldOut);
    status_until(&h, "f", sold_out).await;

    h.client.close("f").await.unwrap();
    let closed = |s: &StatusReply| state_of(s) == Some(AuctionState::Closed);
    let status = status_until(&h, "f", closed).await;
    assert_matches(
        "auction-status-reply.schema.json",
        &serde_json::to_vec(&status).unwrap(),
    );
    assert_eq!(
        common::bid_resent_while_unavailable(&h, "f", &bid("b2", "u2", 5)).await,
        BidReply::Rejected {
            bid_id: "b2".into(),
            auction_id: "f".into(),
            reason: RejectReason::AuctionClosed
        }
    );

    // A ranked auction fills at its close, and is closed, not sold out.
    h.open(
        "r",
        AuctionSpec {
            policy: Policy::TopAmount,
            ..AuctionSpec::with_capacity(1)
        },
    )
    .await;
    h.client.bid("r", &bid("b1", "u1", 5)).await.unwrap();
    h.client.close("r").await.unwrap();
    h.wait_for_outcomes("r", 1).await;
    let status = status_until(&h, "r", closed).await;
    let StatusReply::Ok {
        confirmed, pending, ..
    } = status
    else {
        unreachable!()
    };
    assert_eq!((confirmed, pending), (1, 0));
}

/// `pending` counts what the verifier has still to reach: an entry it
/// skipped, or a held try of a ranked auction, is not pending once passed.
#[tokio::test]
async fn pending_reaches_zero_past_a_skipped_entry_and_held_tries() {
    let h = Harness::start().await;
    h.open("p", AuctionSpec::with_capacity(2)).await;
    // Not even a bid id: the verifier skips it, with no outcome.
    h.js.publish(h.client.subjects.try_event("p"), "garbage".into())
        .await
        .unwrap()
        .await
        .unwrap();
    h.client.bid("p", &bid("b1", "u1", 5)).await.unwrap();
    h.open(
        "r",
        AuctionSpec {
            policy: Policy::TopAmount,
            ..AuctionSpec::with_capacity(2)
        },
    )
    .await;
    h.client.bid("r", &bid("b1", "u1", 5)).await.unwrap();
    h.wait_until_decided().await;

    let counts = |s: StatusReply| match s {
        StatusReply::Ok {
            tries,
            confirmed,
            cancelled,
            pending,
            ..
        } => (tries, confirmed, cancelled, pending),
        other => panic!("{other:?}"),
    };
    // The garbage names no bid, so it is no try.
    assert_eq!(counts(h.client.status("p").await.unwrap()), (1, 1, 0, 0));
    // Held: no outcome until the close, and not pending.
    assert_eq!(counts(h.client.status("r").await.unwrap()), (1, 0, 0, 0));
}

/// A status request takes what a close request takes, and refuses the rest
/// with the codes of every other endpoint.
#[tokio::test]
async fn status_refuses_a_body_that_is_not_a_status_request() {
    let h = Harness::start().await;
    h.open("s", AuctionSpec::with_capacity(1)).await;
    let subject = h.client.subjects.status_request("s");
    for body in [&b""[..], b" ", b"{}", br#"{"auction_id":"s"}"#] {
        let reply = raw(&h, subject.clone(), body).await;
        assert_matches("auction-status-reply.schema.json", &reply.payload);
        assert_eq!(common::error_code(&reply), None, "{body:?}");
    }
    let huge = vec![b'x'; 64 * 1024];
    let refused: [(&[u8], &str); 5] = [
        (&huge, "too_large"),
        (b"garbage", "invalid_json"),
        (b"[]", "invalid_json"),
        (br#"{"capacity":1}"#, "unknown_field"),
        (br#"{"auction_id":"other"}"#, "invalid_field"),
    ];
    for (body, code) in refused {
        let reply = raw(&h, subject.clone(), body).await;
        assert_matches("auction-status-reply.schema.json", &reply.payload);
        assert_eq!(common::error_code(&reply), Some("400"));
        let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["error"], code, "{reply}");
    }
}
