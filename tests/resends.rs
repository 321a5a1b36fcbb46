//! Resent bids, conflicts and fast rejects: nothing written twice, and a
//! resend always gets its original reply.

use crate::common;

use std::time::Duration;

use allot::wire::{AuctionSpec, AuctionState, BidReply, RejectReason, StatusReply};
use chrono::Utc;
use common::{assert_matches, bid, raw, Harness};

#[tokio::test]
async fn fast_rejects_write_nothing_and_resends_keep_their_reply() {
    let h = Harness::start().await;
    h.open(
        "one",
        AuctionSpec {
            min_amount: 10,
            ..AuctionSpec::with_capacity(1)
        },
    )
    .await;
    h.open(
        "past",
        AuctionSpec {
            closes_at: Some(Utc::now() - chrono::Duration::seconds(1)),
            ..AuctionSpec::with_capacity(1)
        },
    )
    .await;

    let reject = |reply: BidReply| match reply {
        BidReply::Rejected { reason, .. } => reason,
        other => panic!("expected a reject, got {other:?}"),
    };
    // A gateway refuses a closed auction's bids once the verifier has
    // decided its close (its deadline close, written within 250 ms), never
    // by its own clock.
    decided_closed(&h, "past").await;
    assert_eq!(
        reject(h.client.bid("nope", &bid("b1", "u1", 10)).await.unwrap()),
        RejectReason::UnknownAuction
    );
    let body = serde_json::to_vec(&bid("b1", "u1", 10)).unwrap();
    let reply = raw(&h, h.client.subjects.bid("nope"), &body).await;
    assert_matches("bid-reply.schema.json", &reply.payload);
    assert!(reply.headers.is_none(), "a reject is not an error");
    assert_eq!(
        reject(h.client.bid("one", &bid("b1", "u1", 9)).await.unwrap()),
        RejectReason::BelowMinimum
    );
    assert_eq!(
        reject(h.client.bid("past", &bid("b1", "u1", 10)).await.unwrap()),
        RejectReason::AuctionClosed
    );
    assert!(h.tries("one").await.is_empty(), "rejects write no try");
    assert!(h.tries("past").await.is_empty(), "rejects write no try");

    let BidReply::Accepted {
        try_seq, try_index, ..
    } = h.client.bid("one", &bid("win", "u1", 10)).await.unwrap()
    else {
        panic!("first bid accepted");
    };
    h.wait_for_outcomes("one", 1).await;
    // The verifier reports the auction sold out; the gateway then refuses
    // new bids without writing them.
    first_refused_as_sold_out(&h, "one").await;
    let tries_before = h.tries("one").await.len();

    // The winner resending its bid gets the original acceptance, not a reject.
    assert_eq!(
        h.client.bid("one", &bid("win", "u1", 10)).await.unwrap(),
        BidReply::Accepted {
            bid_id: "win".into(),
            auction_id: "one".into(),
            try_seq,
            try_index,
            duplicate: true
        }
    );
    // The same bid id with another body is a conflict.
    let reply = raw(
        &h,
        h.client.subjects.bid("one"),
        &serde_json::to_vec(&bid("win", "u1", 11)).unwrap(),
    )
    .await;
    assert_matches("bid-reply.schema.json", &reply.payload);
    assert_eq!(common::error_code(&reply), Some("409"));
    assert_eq!(
        h.tries("one").await.len(),
        tries_before,
        "no try written by the resends"
    );

    let StatusReply::Ok {
        state, confirmed, ..
    } = h.client.status("one").await.unwrap()
    else {
        panic!("status");
    };
    assert_eq!((state, confirmed), (AuctionState::SoldOut, 1));
}

#[tokio::test]
async fn same_bid_id_with_another_body_is_a_conflict() {
    let h = Harness::start().await;
    h.open("a", AuctionSpec::with_capacity(3)).await;
    let first = h.client.bid("a", &bid("b1", "u1", 5)).await.unwrap();
    assert!(matches!(
        first,
        BidReply::Accepted {
            duplicate: false,
            ..
        }
    ));
    let again = h.client.bid("a", &bid("b1", "u1", 5)).await.unwrap();
    assert!(matches!(
        again,
        BidReply::Accepted {
            duplicate: true,
            ..
        }
    ));
    match h.client.bid("a", &bid("b1", "u2", 5)).await.unwrap() {
        BidReply::Error { error, message, .. } => {
            assert_eq!(error, allot::wire::ErrorCode::Conflict);
            assert!(message.contains("b1"), "{message}");
            // Never the other bid's bidder or amount.
            assert!(
                !message.contains("u1") && !message.contains('5'),
                "{message}"
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The same bid id in another auction is another bid.
    h.open("b", AuctionSpec::with_capacity(3)).await;
    assert!(matches!(
        h.client.bid("b", &bid("b1", "u2", 5)).await.unwrap(),
        BidReply::Accepted {
            duplicate: false,
            ..
        }
    ));
    assert_eq!(h.tries("a").await.len(), 1);
}

/// Every bid is sent twice at the same moment while a one-slot auction
/// sells out: the two replies always agree, and each accepted bid has
/// exactly one outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bid_and_its_resend_sent_together_get_the_same_reply() {
    let h = Harness::start().await;
    h.open("race", AuctionSpec::with_capacity(1)).await;
    let requests = (0..150).flat_map(|i| {
        let request = bid(&format!("b{i}"), &format!("u{i}"), 5);
        [request.clone(), request]
    });
    let replies = futures::future::join_all(requests.map(|request| {
        let client = h.client.clone();
        async move {
            (
                request.bid_id.clone(),
                client.bid("race", &request).await.unwrap(),
            )
        }
    }))
    .await;
    let mut by_bid: std::collections::HashMap<String, Vec<BidReply>> = Default::default();
    for (bid_id, reply) in replies {
        by_bid.entry(bid_id).or_default().push(reply);
    }
    let mut accepted = 0;
    for (bid_id, replies) in &by_bid {
        let strip = |r: &BidReply| match r {
            BidReply::Accepted { try_seq, .. } => Ok(*try_seq),
            BidReply::Rejected { reason, .. } => Err(*reason),
            other => panic!("{bid_id}: {other:?}"),
        };
        assert_eq!(
            strip(&replies[0]),
            strip(&replies[1]),
            "{bid_id}: {replies:?}"
        );
        if let BidReply::Accepted { .. } = replies[0] {
            accepted += 1;
            let originals = replies
                .iter()
                .filter(|r| {
                    matches!(
                        r,
                        BidReply::Accepted {
                            duplicate: false,
                            ..
                        }
                    )
                })
                .count();
            assert_eq!(originals, 1, "{bid_id}: {replies:?}");
        }
    }
    let outcomes = h.wait_for_outcomes("race", accepted).await;
    h.wait_until_decided().await;
    assert_eq!(h.outcomes(Some("race")).await.len(), accepted);
    common::one_outcome_per_bid(&outcomes);
    assert_eq!(
        h.tries("race").await.len(),
        accepted,
        "one try per accepted bid"
    );
}

/// The log keeps the resend window (`--dedupe-window-secs`, 120 s by
/// default); the outcome stream at most 10 s, since one outcome per bid
/// does not rest on it and a long window keeps every outcome's id in the
/// server's memory. An outcome stream made with a longer window (by an
/// earlier allot) is shortened when the service starts.
#[tokio::test]
async fn the_outcome_stream_keeps_a_short_de_duplication_window() {
    use allot::streams::OUTCOME_DUPLICATE_WINDOW;
    use async_nats::jetstream::stream;

    let mut h = Harness::server_only().await;
    let subjects = allot::wire::Subjects::default();
    h.js.create_stream(stream::Config {
        name: subjects.outcomes_stream(),
        subjects: subjects.outcome_stream_subjects(),
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
    h.start_service().await;

    let window = |name: String| {
        let js = h.js.clone();
        async move {
            let mut s = js.get_stream(name).await.unwrap();
            s.info().await.unwrap().config.duplicate_window
        }
    };
    assert_eq!(
        window(subjects.tries_stream()).await,
        Duration::from_secs(120)
    );
    assert_eq!(OUTCOME_DUPLICATE_WINDOW, Duration::from_secs(10));
    assert_eq!(
        window(subjects.outcomes_stream()).await,
        OUTCOME_DUPLICATE_WINDOW
    );

    // Outcomes stored alone (beside an allot that reads no entries of
    // outcomes) are still de-duplicated within the window: one published
    // again with the same Nats-Msg-Id is not stored twice.
    h.open("w", allot::wire::AuctionSpec::with_capacity(1))
        .await;
    let reply = h.client.bid("w", &bid("b1", "u1", 10)).await.unwrap();
    assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    let outcomes = h.wait_for_outcomes("w", 1).await;
    let alone = || {
        h.js.send_publish(
            subjects.outcome("w", outcomes[0].kind),
            async_nats::jetstream::message::PublishMessage::build()
                .message_id(allot::wire::OutcomeEvent::msg_id("w", "b1"))
                .payload(serde_json::to_vec(&outcomes[0]).unwrap().into()),
        )
    };
    let first = alone().await.unwrap().await.unwrap();
    assert!(!first.duplicate, "entries of outcomes carry no message id");
    let again = alone().await.unwrap().await.unwrap();
    assert!(
        again.duplicate,
        "a republished outcome within the window is a duplicate"
    );
    assert_eq!(outcomes.len(), 1);
}

/// A bid refused as new while its auction is sold out stays refused: when
/// the verifier cannot be asked, a bid to the sold-out auction gets a 503
/// `unavailable` error to resend it, with a hint of when, not a try (which would make a refused bid accepted
/// on its resend, then cancelled: two answers for one bid).
#[tokio::test]
async fn a_refused_bid_stays_refused_while_the_verifier_is_away() {
    let h = Harness::server_only().await;
    let mut verifier = common::serve_process(&h, &["--role", "verifier"], &[]);
    let _gateway = common::serve_process(&h, &["--role", "gateway"], &[]);
    h.wait_until_serving().await;
    h.wait_until_verifying().await;
    h.open("full", AuctionSpec::with_capacity(1)).await;
    let reply = h.client.bid("full", &bid("win", "u1", 10)).await.unwrap();
    assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    h.wait_for_outcomes("full", 1).await;
    let refused = first_refused_as_sold_out(&h, "full").await;
    let tries = h.tries("full").await.len();

    verifier.kill().unwrap();
    verifier.wait().unwrap();
    let body = serde_json::to_vec(&bid(&refused, "u2", 10)).unwrap();
    let reply = raw(&h, h.client.subjects.bid("full"), &body).await;
    // Not a fault: an expected state that passes, and says when to resend.
    assert_eq!(common::error_code(&reply), Some("503"), "{reply:?}");
    assert_matches("bid-reply.schema.json", &reply.payload);
    let text = String::from_utf8_lossy(&reply.payload);
    assert!(text.contains("cannot be told from a resend"), "{text}");
    let answer: BidReply = serde_json::from_slice(&reply.payload).unwrap();
    assert!(
        matches!(
            answer,
            BidReply::Error {
                error: allot::wire::ErrorCode::Unavailable,
                retry_after_ms: Some(100),
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(h.tries("full").await.len(), tries, "no try written");

    // Back: the verifier proves the bid new again, and it is refused again.
    let _verifier = common::serve_process(&h, &["--role", "verifier"], &[]);
    h.wait_until_verifying().await;
    // Resent until the new verifier has decided the partition's tries.
    let again = common::bid_resent_while_unavailable(&h, "full", &bid(&refused, "u2", 10)).await;
    assert!(
        matches!(
            again,
            BidReply::Rejected {
                reason: RejectReason::SoldOut,
                ..
            }
        ),
        "{again:?}"
    );
    assert_eq!(h.tries("full").await.len(), tries, "no try written");
}

/// Bids `late0`, `late1`, ... by `u2` on a full auction until the gateway
/// refuses one as sold out, and returns its id. Until the gateway has
/// learned from the verifier that the auction sold out, a late bid is
/// written and cancelled.
async fn first_refused_as_sold_out(h: &Harness, auction: &str) -> String {
    for i in 0..100 {
        let id = format!("late{i}");
        match h.client.bid(auction, &bid(&id, "u2", 10)).await.unwrap() {
            BidReply::Rejected {
                reason: RejectReason::SoldOut,
                ..
            } => return id,
            BidReply::Accepted { .. } => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("the gateway learns the auction is sold out");
}

/// A gateway with every request slot taken answers `unavailable` at once,
/// with a hint, rather than leaving the request to wait until its client
/// times out; nothing of such a bid is written, and sent again it is
/// accepted and decided once, like every other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_answers_unavailable_at_once_and_loses_nothing() {
    let h = Harness::server_only().await;
    let mut config = h.config();
    config.gateway.max_in_flight = 2;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(allot::service::run(config, async {
        let _ = stopped.await;
    }));
    h.wait_until_serving().await;
    // More slots than bids: a resend is never refused as sold out.
    h.open("busy", AuctionSpec::with_capacity(500)).await;

    let bids: Vec<_> = (0..200)
        .map(|i| bid(&format!("b{i}"), &format!("u{i}"), 5))
        .collect();
    let started = std::time::Instant::now();
    let replies = futures::future::join_all(bids.iter().map(|b| h.client.bid("busy", b))).await;
    let mut refused = Vec::new();
    for (b, reply) in bids.iter().zip(replies) {
        match reply.unwrap() {
            BidReply::Accepted { .. } => {}
            BidReply::Error {
                error: allot::wire::ErrorCode::Unavailable,
                retry_after_ms: Some(_),
                message,
            } => {
                assert!(message.contains("send the same request again"), "{message}");
                refused.push(b.clone());
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(!refused.is_empty(), "200 bids at once find 2 slots taken");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered, not left to time out"
    );
    let written = h.tries("busy").await.len();
    assert_eq!(written, 200 - refused.len(), "a refused bid writes nothing");

    for b in &refused {
        let reply = common::bid_resent_while_unavailable(&h, "busy", b).await;
        assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    }
    let outcomes = h.wait_for_outcomes("busy", 200).await;
    let one_each = common::one_outcome_per_bid(&outcomes);
    assert_eq!(one_each.len(), 200);
    common::assert_replay_matches_outcomes(&h).await;
    let _ = stop.send(());
    service.await.unwrap().unwrap();
}

/// A bid that waits for a worker thread longer than the gateway's
/// `max_queued` is answered `unavailable` with a hint before any work is
/// done for it: nothing written, and sent again to a gateway that keeps up,
/// it is accepted and decided once. (`max_queued` of zero: every bid
/// has waited too long.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waited_too_long_is_refused_before_any_work() {
    let h = Harness::server_only().await;
    let run = |config: allot::service::Config| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = tokio::spawn(allot::service::run(config, async {
            let _ = stopped.await;
        }));
        (stop, service)
    };
    let (stop, service) = run(h.config());
    h.wait_until_serving().await;
    h.open("late", AuctionSpec::with_capacity(50)).await;
    let _ = stop.send(());
    service.await.unwrap().unwrap();

    let mut behind = h.config();
    behind.gateway.max_queued = Duration::ZERO;
    let (stop, service) = run(behind);
    h.wait_until_serving().await;
    let bids: Vec<_> = (0..20)
        .map(|i| bid(&format!("b{i}"), &format!("u{i}"), 5))
        .collect();
    for b in &bids {
        match h.client.bid("late", b).await.unwrap() {
            BidReply::Error {
                error: allot::wire::ErrorCode::Unavailable,
                retry_after_ms: Some(_),
                message,
            } => assert!(message.contains("send the same request again"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
    let _ = stop.send(());
    service.await.unwrap().unwrap();
    assert_eq!(
        h.tries("late").await.len(),
        0,
        "a refused bid writes nothing"
    );

    let (stop, service) = run(h.config());
    h.wait_until_serving().await;
    for b in &bids {
        let reply = common::bid_resent_while_unavailable(&h, "late", b).await;
        assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    }
    let outcomes = h.wait_for_outcomes("late", 20).await;
    assert_eq!(common::one_outcome_per_bid(&outcomes).len(), 20);
    common::assert_replay_matches_outcomes(&h).await;
    let _ = stop.send(());
    service.await.unwrap().unwrap();
}

/// Waits until the verifier has decided `auction`'s close: its entry in the
/// status bucket, which the gateways watch, says closed.
async fn decided_closed(h: &Harness, auction: &str) {
    let bucket =
        h.js.get_key_value(h.client.subjects.status_bucket())
            .await
            .unwrap();
    for _ in 0..200 {
        if let Ok(Some(entry)) = bucket.get(auction).await {
            let view: allot::wire::AuctionView = serde_json::from_slice(&entry).unwrap();
            if view.closed {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the close of {auction} was not decided within 5 s");
}
