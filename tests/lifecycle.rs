//! The rest of the TCC lifecycle end to end, through a real nats-server and
//! the real service: withdrawals (empty rollback, anti-hanging), ranked
//! auctions with held notices, closes (by request and at the deadline) and
//! raises.

use crate::common;

use std::time::Duration;

use allot::wire::{AuctionSpec, CancelReason, LogEvent, OutcomeEvent, OutcomeKind, Policy};
use chrono::Utc;
use common::{raw, Harness};
use futures::StreamExt;
use serde_json::{json, Value};

async fn request(h: &Harness, subject: String, body: Value) -> Value {
    let reply = raw(h, subject, body.to_string().as_bytes()).await;
    serde_json::from_slice(&reply.payload).unwrap()
}

async fn bid(h: &Harness, auction: &str, bid_id: &str, bidder: &str, amount: u64) -> Value {
    let body = json!({"bid_id": bid_id, "bidder_id": bidder, "amount": amount});
    request(h, h.client.subjects.bid(auction), body).await
}

async fn withdraw(h: &Harness, auction: &str, bid_id: &str, bidder: &str) -> Value {
    let body = json!({"bid_id": bid_id, "bidder_id": bidder});
    request(h, h.client.subjects.withdraw(auction), body).await
}

async fn raise(
    h: &Harness,
    auction: &str,
    bid_id: &str,
    bidder: &str,
    expected: u64,
    amount: u64,
) -> Value {
    let body = json!({"bid_id": bid_id, "bidder_id": bidder, "amount": amount, "expected_amount": expected});
    request(h, h.client.subjects.raise(auction), body).await
}

async fn close(h: &Harness, auction: &str) -> Value {
    let reply = raw(h, h.client.subjects.close_request(auction), b"").await;
    serde_json::from_slice(&reply.payload).unwrap()
}

fn ranked(capacity: u32) -> AuctionSpec {
    AuctionSpec {
        policy: Policy::TopAmount,
        ..AuctionSpec::with_capacity(capacity)
    }
}

fn outcome_of<'a>(outcomes: &'a [OutcomeEvent], bid_id: &str) -> &'a OutcomeEvent {
    let found: Vec<_> = outcomes.iter().filter(|o| o.bid_id == bid_id).collect();
    assert_eq!(found.len(), 1, "one outcome for {bid_id}: {outcomes:?}");
    found[0]
}

fn cancelled(reason: CancelReason) -> (OutcomeKind, Option<u32>, Option<CancelReason>) {
    (OutcomeKind::Cancelled, None, Some(reason))
}

fn confirmed(rank: u32) -> (OutcomeKind, Option<u32>, Option<CancelReason>) {
    (OutcomeKind::Confirmed, Some(rank), None)
}

fn verdict(o: &OutcomeEvent) -> (OutcomeKind, Option<u32>, Option<CancelReason>) {
    (o.kind, o.rank, o.reason)
}

/// DTM's disorder case: the bidder's try is late, it withdraws (twice), and
/// then the try arrives. The withdraw is an empty rollback; the late try is
/// cancelled `withdrawn` and never takes the slot, which the next bidder gets.
#[tokio::test]
async fn a_withdraw_before_its_try_is_an_empty_rollback_and_the_late_try_never_wins() {
    let h = Harness::start().await;
    h.open("a", AuctionSpec::with_capacity(1)).await;

    let first = withdraw(&h, "a", "late", "u1").await;
    assert_eq!(first["status"], "withdrawn", "{first}");
    assert_eq!(first["empty_rollback"], true);
    let again = withdraw(&h, "a", "late", "u1").await;
    assert_eq!(again, first, "withdrawing twice is idempotent");

    let late = bid(&h, "a", "late", "u1", 10).await;
    assert_eq!(late["status"], "accepted", "{late}");
    let next = bid(&h, "a", "next", "u2", 10).await;
    assert_eq!(next["status"], "accepted", "{next}");

    let outcomes = h.wait_for_outcomes("a", 2).await;
    assert_eq!(
        verdict(outcome_of(&outcomes, "late")),
        cancelled(CancelReason::Withdrawn)
    );
    assert_eq!(verdict(outcome_of(&outcomes, "next")), confirmed(1));
    // A withdraw after the fact is answered from the decided bid.
    let after = withdraw(&h, "a", "late", "u1").await;
    assert_eq!(after["status"], "withdrawn", "{after}");
    common::assert_replay_matches_outcomes(&h).await;
}

#[tokio::test]
async fn withdraws_of_confirmed_bids_and_by_other_bidders_are_refused() {
    let h = Harness::start().await;
    h.open("a", AuctionSpec::with_capacity(2)).await;
    bid(&h, "a", "b1", "u1", 10).await;
    h.wait_for_outcomes("a", 1).await;

    let other = withdraw(&h, "a", "b1", "u2").await;
    assert_eq!(
        (other["status"].as_str(), other["reason"].as_str()),
        (Some("refused"), Some("not_owner")),
        "{other}"
    );
    let own = withdraw(&h, "a", "b1", "u1").await;
    assert_eq!(
        (own["status"].as_str(), own["reason"].as_str()),
        (Some("refused"), Some("already_confirmed")),
        "{own}"
    );
    let unknown = withdraw(&h, "nope", "b1", "u1").await;
    assert_eq!(unknown["error"], "unknown_auction", "{unknown}");
    let bad = request(&h, h.client.subjects.withdraw("a"), json!({"bid_id": "b1"})).await;
    assert_eq!(bad["error"], "missing_field", "{bad}");
    assert!(
        bad["message"].as_str().unwrap().contains("bidder_id"),
        "{bad}"
    );
    // Still exactly one outcome, and it stands.
    let outcomes = h.outcomes(Some("a")).await;
    assert_eq!(outcomes.len(), 1);
    assert_eq!(verdict(&outcomes[0]), confirmed(1));
}

/// Another bidder's withdraw that came before the try (an empty rollback
/// of its own) does not touch the owner's bid; resent once the owner's try
/// is decided, it is a refusal, not "withdrawn" again.
#[tokio::test]
async fn a_resent_early_withdraw_by_another_bidder_is_refused_once_the_bid_is_tried() {
    let h = Harness::start().await;
    h.open("a", AuctionSpec::with_capacity(2)).await;
    let early = withdraw(&h, "a", "b1", "mallory").await;
    assert_eq!(
        (early["status"].as_str(), early["empty_rollback"].as_bool()),
        (Some("withdrawn"), Some(true)),
        "{early}"
    );
    bid(&h, "a", "b1", "alice", 10).await;
    let outcomes = h.wait_for_outcomes("a", 1).await;
    assert_eq!(verdict(&outcomes[0]), confirmed(1));
    // The same request again: JetStream de-duplicates it to the first
    // event, whose result was an empty rollback.
    let again = withdraw(&h, "a", "b1", "mallory").await;
    assert_eq!(
        (again["status"].as_str(), again["reason"].as_str()),
        (Some("refused"), Some("not_owner")),
        "{again}"
    );
    assert_eq!(again["withdraw_seq"], early["withdraw_seq"], "{again}");
    // The owner's own early withdraw stays what it was.
    let mine = withdraw(&h, "a", "b2", "bob").await;
    bid(&h, "a", "b2", "bob", 10).await;
    h.wait_for_outcomes("a", 2).await;
    let mine_again = withdraw(&h, "a", "b2", "bob").await;
    assert_eq!(mine_again, mine, "{mine_again}");
    assert_eq!(mine_again["empty_rollback"], true);
}

/// A raise to no more than the bid's amount reaches the verifier, which
/// refuses it `not_higher` with the amount; from a stale amount it is a
/// `conflict`, as for any raise.
#[tokio::test]
async fn a_raise_that_is_not_higher_is_refused_with_the_current_amount() {
    let h = Harness::start().await;
    h.open("r", ranked(2)).await;
    let held = bid(&h, "r", "b1", "u1", 100).await;
    assert_eq!(held["status"], "accepted", "{held}");
    for amount in [100, 60] {
        let refused = raise(&h, "r", "b1", "u1", 100, amount).await;
        assert_eq!(
            (
                refused["reason"].as_str(),
                refused["current_amount"].as_u64()
            ),
            (Some("not_higher"), Some(100)),
            "{refused}"
        );
    }
    let stale = raise(&h, "r", "b1", "u1", 90, 95).await;
    assert_eq!(stale["reason"], "conflict", "{stale}");
    let raised = raise(&h, "r", "b1", "u1", 100, 120).await;
    assert_eq!(raised["status"], "raised", "{raised}");
}

/// A ranked auction from bids to close: holds with notices, outbids, a
/// withdrawal of a held bid, two raises of one bid sent together, a close
/// request, a second close, and a bid after the close.
#[tokio::test]
async fn a_ranked_auction_holds_the_highest_bids_and_confirms_them_at_close() {
    let h = Harness::start().await;
    let mut holds = h
        .client
        .client
        .subscribe(h.client.subjects.hold("r"))
        .await
        .unwrap();
    h.open("r", ranked(2)).await;

    for (b, u, amount) in [("b1", "u1", 10), ("b2", "u2", 20), ("b3", "u3", 15)] {
        let reply = bid(&h, "r", b, u, amount).await;
        assert_eq!(reply["status"], "accepted", "{reply}");
    }
    // b3 pushed b1 out.
    let outcomes = h.wait_for_outcomes("r", 1).await;
    assert_eq!(
        verdict(outcome_of(&outcomes, "b1")),
        cancelled(CancelReason::Outbid)
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        let notice = tokio::time::timeout(Duration::from_secs(5), holds.next())
            .await
            .expect("a held notice")
            .unwrap();
        common::assert_matches("held-event.schema.json", &notice.payload);
        let notice: Value = serde_json::from_slice(&notice.payload).unwrap();
        held.push((
            notice["bid_id"].as_str().unwrap().to_string(),
            notice["amount"].as_u64().unwrap(),
        ));
    }
    assert_eq!(
        held,
        [("b1".into(), 10), ("b2".into(), 20), ("b3".into(), 15)]
    );

    // Two raises of b2 from the same expected amount: the first in the log
    // applies, the other conflicts and names the current amount.
    let (x, y) = tokio::join!(
        raise(&h, "r", "b2", "u2", 20, 30),
        raise(&h, "r", "b2", "u2", 20, 40)
    );
    let statuses = [x["status"].as_str().unwrap(), y["status"].as_str().unwrap()];
    assert!(
        statuses.contains(&"raised") && statuses.contains(&"refused"),
        "{x} {y}"
    );
    let (won, lost) = if x["status"] == "raised" {
        (&x, &y)
    } else {
        (&y, &x)
    };
    assert_eq!(lost["reason"], "conflict");
    assert_eq!(lost["current_amount"], won["amount"]);
    let current = won["amount"].as_u64().unwrap();
    // Retrying with the current amount applies.
    let retry = raise(&h, "r", "b2", "u2", current, 50).await;
    assert_eq!(retry["status"], "raised", "{retry}");
    let wrong = raise(&h, "r", "b1", "u1", 10, 60).await;
    assert_eq!(wrong["reason"], "already_cancelled", "{wrong}");

    // Withdrawing the held b3 frees its slot for a lower bid.
    let w = withdraw(&h, "r", "b3", "u3").await;
    assert_eq!(
        (w["status"].as_str(), w["empty_rollback"].as_bool()),
        (Some("withdrawn"), Some(false)),
        "{w}"
    );
    let low = bid(&h, "r", "b4", "u4", 5).await;
    assert_eq!(low["status"], "accepted", "{low}");

    let closing = close(&h, "r").await;
    assert_eq!(closing["status"], "closing", "{closing}");
    let again = close(&h, "r").await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["close_seq"], closing["close_seq"]);

    let outcomes = h.wait_for_outcomes("r", 4).await;
    assert_eq!(
        verdict(outcome_of(&outcomes, "b3")),
        cancelled(CancelReason::Withdrawn)
    );
    let b2 = outcome_of(&outcomes, "b2");
    assert_eq!((verdict(b2), b2.amount), (confirmed(1), 50));
    assert_eq!(verdict(outcome_of(&outcomes, "b4")), confirmed(2));

    // After the close: refused at once, or cancelled `auction_closed`.
    let late = bid(&h, "r", "b5", "u5", 1000).await;
    match late["status"].as_str() {
        Some("rejected") => assert_eq!(late["reason"], "auction_closed"),
        Some("accepted") => {
            let outcomes = h.wait_for_outcomes("r", 5).await;
            assert_eq!(
                verdict(outcome_of(&outcomes, "b5")),
                cancelled(CancelReason::AuctionClosed)
            );
        }
        _ => panic!("{late}"),
    }
    common::assert_replay_matches_outcomes(&h).await;
}

/// `closes_at` ends up as one close event in the log, written by the
/// verifier; a second close event (as a racing instance would write) changes
/// nothing.
#[tokio::test]
async fn the_deadline_writes_one_close_event() {
    let h = Harness::start().await;
    let spec = AuctionSpec {
        closes_at: Some(Utc::now() + chrono::Duration::milliseconds(1500)),
        ..ranked(1)
    };
    h.open("d", spec).await;
    bid(&h, "d", "b1", "u1", 10).await;
    bid(&h, "d", "b2", "u2", 20).await;
    let outcomes = h.wait_for_outcomes("d", 2).await;
    assert_eq!(
        verdict(outcome_of(&outcomes, "b1")),
        cancelled(CancelReason::Outbid)
    );
    assert_eq!(verdict(outcome_of(&outcomes, "b2")), confirmed(1));

    // A racing instance's copy, past the de-duplication (another id).
    let s = &h.client.subjects;
    let events = h
        .read_stream(&s.tries_stream(), &s.auction_event("d"))
        .await;
    let closes: Vec<_> = events
        .iter()
        .filter(|m| matches!(serde_json::from_slice(&m.payload), Ok(LogEvent::Close(_))))
        .collect();
    assert_eq!(closes.len(), 1, "one close event");
    common::assert_matches("close-event.schema.json", &closes[0].payload);
    h.js.publish(s.auction_event("d"), closes[0].payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    h.wait_until_decided().await;
    assert_eq!(h.outcomes(Some("d")).await.len(), 2);
    common::assert_replay_matches_outcomes(&h).await;
}

/// Held bids, tombstones and command results survive a restart of the
/// service: the snapshot keeps them, and the close after the restart
/// confirms exactly the bids held before it.
#[tokio::test]
async fn held_bids_and_tombstones_survive_a_restart() {
    let mut h = Harness::start().await;
    h.open("s", ranked(2)).await;
    bid(&h, "s", "b1", "u1", 10).await;
    bid(&h, "s", "b2", "u2", 30).await;
    let early = withdraw(&h, "s", "b3", "u3").await;
    assert_eq!(early["empty_rollback"], true);
    raise(&h, "s", "b1", "u1", 10, 20).await;
    h.wait_until_decided().await;
    h.stop_service().await;
    h.start_service().await;

    // The withdraw's answer is still known after the restart.
    assert_eq!(withdraw(&h, "s", "b3", "u3").await, early);
    bid(&h, "s", "b3", "u3", 99).await;
    let raised = raise(&h, "s", "b1", "u1", 20, 25).await;
    assert_eq!(raised["status"], "raised", "{raised}");
    close(&h, "s").await;
    let outcomes = h.wait_for_outcomes("s", 3).await;
    assert_eq!(
        verdict(outcome_of(&outcomes, "b3")),
        cancelled(CancelReason::Withdrawn)
    );
    assert_eq!(verdict(outcome_of(&outcomes, "b2")), confirmed(1));
    let b1 = outcome_of(&outcomes, "b1");
    assert_eq!((verdict(b1), b1.amount), (confirmed(2), 25));
    common::assert_replay_matches_outcomes(&h).await;
}

/// Another bidder's raise identical to the owner's is its own event: it is
/// refused `not_owner`, and the owner's raise, sent after it, applies.
#[tokio::test]
async fn another_bidders_identical_raise_does_not_shadow_the_owners() {
    let h = Harness::start().await;
    h.open("o", ranked(2)).await;
    bid(&h, "o", "b1", "u1", 10).await;
    let theirs = raise(&h, "o", "b1", "u2", 10, 20).await;
    assert_eq!(theirs["reason"], "not_owner", "{theirs}");
    let mine = raise(&h, "o", "b1", "u1", 10, 20).await;
    assert_eq!(mine["status"], "raised", "{mine}");
    assert_ne!(mine["raise_seq"], theirs["raise_seq"]);
}

/// A verifier killed right after committing a close, before telling the
/// gateways, tells them when it starts again: the status says closed, and
/// new bids are refused at once.
#[tokio::test]
async fn a_close_is_announced_even_after_a_crash_right_after_it() {
    let h = Harness::server_only().await;
    let mut serve = common::serve_process(&h, &[], &[("ALLOT_CRASH_AT", "after_close_commit")]);
    h.wait_until_serving().await;
    h.open("k", AuctionSpec::with_capacity(5)).await;
    bid(&h, "k", "b1", "u1", 10).await;
    h.wait_for_outcomes("k", 1).await;
    close(&h, "k").await;
    let status = common::wait_exit(&mut serve, 30).await;
    assert!(!status.success(), "the crash point was reached");

    let mut serve = common::serve_process(&h, &[], &[]);
    h.wait_until_serving().await;
    h.wait_until_decided().await;
    let mut state = Value::Null;
    for _ in 0..100 {
        let reply = raw(&h, h.client.subjects.status_request("k"), b"").await;
        state = serde_json::from_slice::<Value>(&reply.payload).unwrap()["state"].clone();
        if state == "closed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "closed");
    let late = bid(&h, "k", "b2", "u2", 10).await;
    assert_eq!(
        (late["status"].as_str(), late["reason"].as_str()),
        (Some("rejected"), Some("auction_closed")),
        "{late}"
    );
    serve.kill().unwrap();
    serve.wait().unwrap();
}

/// A close of a ranked auction decides every held bid at once: here 6,000
/// outcomes from one log entry, more than the 5,000 publishes JetStream's
/// client lets be unacked at once. They are all published (the verifier
/// once waited forever for a permit only its own unawaited acks held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_deciding_thousands_of_bids_publishes_them_all() {
    const BIDS: u32 = 6000;
    let h = Harness::start().await;
    h.open("big", ranked(BIDS)).await;
    let client = &h.client;
    let accepted = futures::stream::iter(0..BIDS)
        .map(|i| async move {
            let reply = client
                .bid(
                    "big",
                    &common::bid(&format!("b{i}"), &format!("u{i}"), 10 + u64::from(i)),
                )
                .await
                .unwrap();
            matches!(reply, allot::wire::BidReply::Accepted { .. })
        })
        .buffer_unordered(256)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    assert_eq!(accepted, BIDS as usize);
    h.wait_until_decided().await;
    assert!(
        h.outcomes(Some("big")).await.is_empty(),
        "all held until the close"
    );
    close(&h, "big").await;
    let outcomes = h.wait_for_outcomes("big", BIDS as usize).await;
    let ranks: std::collections::HashSet<u32> = outcomes.iter().filter_map(|o| o.rank).collect();
    assert_eq!(ranks.len(), BIDS as usize);
    // The highest amount has rank 1.
    assert_eq!(
        outcome_of(&outcomes, &format!("b{}", BIDS - 1)).rank,
        Some(1)
    );
}

/// The log's clock closes an auction: a try that a gateway with a slow
/// clock stamps a minute before `closes_at`, but that the log stores after
/// it, is cancelled `auction_closed`. The verifier is away meanwhile, so
/// that no deadline close gets into the log first.
#[tokio::test]
async fn a_try_stored_after_closes_at_is_late_whatever_its_tried_at() {
    let mut h = Harness::start().await;
    let closes_at = Utc::now() + chrono::Duration::milliseconds(1_500);
    h.open(
        "clock",
        AuctionSpec {
            closes_at: Some(closes_at),
            ..AuctionSpec::with_capacity(5)
        },
    )
    .await;
    h.stop_service().await;
    let wait = (closes_at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(200)).await;

    let streams = allot::streams::Streams::ensure(
        h.js.clone(),
        h.client.subjects.clone(),
        &allot::streams::StreamOptions::default(),
    )
    .await
    .unwrap();
    let slow = LogEvent::Try(allot::wire::TryEvent {
        bid_id: "slow".into(),
        auction_id: "clock".into(),
        bidder_id: "u1".into(),
        amount: 10,
        tried_at: closes_at - chrono::Duration::seconds(60),
    });
    let ack = streams.append(&slow).await.unwrap();
    let stored = streams.entry(ack.sequence).await.unwrap().time;
    assert!(
        stored >= closes_at,
        "stored at {stored}, before {closes_at}"
    );

    h.start_service().await;
    let outcomes = h.wait_for_outcomes("clock", 1).await;
    assert_eq!(
        verdict(outcome_of(&outcomes, "slow")),
        cancelled(CancelReason::AuctionClosed)
    );
    common::assert_replay_matches_outcomes(&h).await;
}

/// A gateway's clock decides nothing: past `closes_at` by its own clock,
/// with the close not yet decided (no verifier runs), it writes a bid's try
/// rather than refuse it, since a refusal is final and a gateway whose
/// clock runs ahead would refuse bids that the log still takes. Once a
/// verifier has written and decided the close, that try is cancelled
/// `auction_closed` and new bids are refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refuses_a_closed_auction_only_once_its_close_is_decided() {
    let h = Harness::server_only().await;
    let start = |role| {
        let mut config = h.config();
        config.role = role;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(allot::service::run(config, async {
            let _ = stopped.await;
        }));
        (stop, task)
    };
    let (stop_gateway, gateway) = start(allot::service::Role::Gateway);
    h.wait_until_serving().await;
    let closes_at = Utc::now() + chrono::Duration::milliseconds(500);
    h.open(
        "deadline",
        AuctionSpec {
            closes_at: Some(closes_at),
            ..AuctionSpec::with_capacity(5)
        },
    )
    .await;
    // Well past closes_at by every clock here, and no close decided.
    let wait = (closes_at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_secs(2)).await;
    let late = bid(&h, "deadline", "late", "u1", 10).await;
    assert_eq!(late["status"], "accepted", "{late}");

    let (stop_verifier, verifier) = start(allot::service::Role::Verifier);
    let outcomes = h.wait_for_outcomes("deadline", 1).await;
    assert_eq!(
        verdict(outcome_of(&outcomes, "late")),
        cancelled(CancelReason::AuctionClosed)
    );
    // Until the gateway's view has the close, a new bid is still written.
    let mut refused = Value::Null;
    for i in 0..100 {
        refused = bid(&h, "deadline", &format!("later-{i}"), "u2", 10).await;
        if refused["status"] == "rejected" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused["reason"], "auction_closed", "{refused}");
    for (stop, task) in [(stop_verifier, verifier), (stop_gateway, gateway)] {
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }
}
