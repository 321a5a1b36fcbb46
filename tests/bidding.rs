//! Bidding end to end against a real nats-server: concurrent bids,
//! duplicates, conflicts, fast rejects, malformed input, outcome subjects.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use allot::core::{Ledger, Step, Verdict};
use allot::wire::{
    AuctionSpec, AuctionState, BidReply, BidRequest, LogEvent, OpenEvent, OutcomeKind,
    RejectReason, StatusReply,
};
use chrono::Utc;
use common::{assert_matches, one_outcome_per_bid, Harness};
use futures::StreamExt;

fn bid(bid_id: &str, bidder: &str, amount: u64) -> BidRequest {
    BidRequest {
        bid_id: bid_id.into(),
        bidder_id: bidder.into(),
        amount,
    }
}

/// Sends raw bytes as a request and returns the reply message.
async fn raw(h: &Harness, subject: String, body: &[u8]) -> async_nats::Message {
    h.client
        .client
        .request(subject, body.to_vec().into())
        .await
        .expect("a reply")
}

/// The acceptance scenario: capacity 5, 50 concurrent requests from 30
/// bidders, some bidding twice, some resent, some malformed.
#[tokio::test]
async fn five_slots_fifty_concurrent_bids() {
    let h = Harness::start().await;
    h.open("drop", AuctionSpec::with_capacity(5)).await;

    // 30 bidders bid once, 10 of them bid again with a new bid id, 5 bids
    // are sent twice, and 5 requests are malformed: 50 requests in all.
    let mut requests: Vec<Vec<u8>> = Vec::new();
    for i in 0..30 {
        requests.push(serde_json::to_vec(&bid(&format!("b{i}"), &format!("u{i}"), 100)).unwrap());
    }
    for i in 0..10 {
        requests
            .push(serde_json::to_vec(&bid(&format!("again{i}"), &format!("u{i}"), 200)).unwrap());
    }
    for i in 0..5 {
        requests.push(serde_json::to_vec(&bid(&format!("b{i}"), &format!("u{i}"), 100)).unwrap());
    }
    requests.push(b"not json".to_vec());
    requests.push(br#"{"bid_id":"x1","bidder_id":"u1"}"#.to_vec());
    requests.push(br#"{"bid_id":"x 2","bidder_id":"u1","amount":1}"#.to_vec());
    requests.push(br#"{"bid_id":"x3","bidder_id":"u1","amount":-5}"#.to_vec());
    requests.push(br#"{"bid_id":"x4","bidder_id":"u1","amount":1,"price":2}"#.to_vec());
    assert_eq!(requests.len(), 50);

    // Five client connections, all requests in flight at once.
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(async_nats::connect(h.server.url()).await.unwrap());
    }
    let subject = h.client.subjects.bid("drop");
    let replies: Vec<async_nats::Message> =
        futures::future::join_all(requests.iter().enumerate().map(|(i, body)| {
            let client = clients[i % clients.len()].clone();
            let subject = subject.clone();
            let body = body.clone();
            async move { client.request(subject, body.into()).await.unwrap() }
        }))
        .await;

    // A bid that reaches the gateway after the verifier has reported the
    // auction full may be refused (sold_out) without a try: that is the
    // fast reject doing its job, and such a bid gets no outcome.
    let mut accepted: HashMap<String, Vec<(u64, bool)>> = HashMap::new();
    let mut sold_out: HashSet<String> = HashSet::new();
    let mut errors = 0;
    for (request, reply) in requests.iter().zip(&replies) {
        assert_matches("bid-reply.schema.json", &reply.payload);
        match serde_json::from_slice::<BidReply>(&reply.payload).unwrap() {
            BidReply::Accepted {
                bid_id,
                try_seq,
                duplicate,
                ..
            } => {
                assert!(
                    reply.headers.is_none(),
                    "accepted replies carry no error headers"
                );
                accepted
                    .entry(bid_id)
                    .or_default()
                    .push((try_seq, duplicate));
            }
            BidReply::Rejected {
                bid_id,
                reason: RejectReason::SoldOut,
                ..
            } => {
                sold_out.insert(bid_id);
            }
            BidReply::Error { error, message } => {
                errors += 1;
                let headers = reply.headers.as_ref().expect("error headers");
                assert_eq!(
                    headers.get("Nats-Service-Error-Code").unwrap().as_str(),
                    "400"
                );
                assert_eq!(headers.get("Nats-Service-Error").unwrap().as_str(), message);
                assert!(
                    !message.is_empty(),
                    "{error:?} for {}",
                    String::from_utf8_lossy(request)
                );
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    assert_eq!(errors, 5, "each malformed request gets an error");
    assert!(
        accepted.keys().all(|b| !sold_out.contains(b)),
        "a resend never contradicts its original"
    );
    assert_eq!(accepted.len() + sold_out.len(), 40, "40 distinct bids");
    assert!(accepted.len() >= 5);
    let n = accepted.len();
    for (bid_id, acks) in &accepted {
        let seqs: HashSet<u64> = acks.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs.len(), 1, "{bid_id}: one try_seq for every resend");
        let originals = acks.iter().filter(|(_, dup)| !dup).count();
        assert_eq!(originals, 1, "{bid_id}: exactly one reply is the original");
    }

    let outcomes = h.wait_for_outcomes("drop", n).await;
    h.wait_until_decided().await;
    let outcomes_after = h.outcomes(Some("drop")).await;
    assert_eq!(outcomes_after.len(), n, "no outcome beyond one per bid");
    let by_bid = one_outcome_per_bid(&outcomes);
    assert_eq!(
        by_bid.keys().collect::<HashSet<_>>(),
        accepted.keys().collect::<HashSet<_>>(),
        "every accepted bid has an outcome"
    );

    // The winners: the first eligible tries in log order, one per bidder.
    let tries = h.tries("drop").await;
    assert_eq!(
        tries.len(),
        n,
        "one try per accepted bid, none for a resend"
    );
    let mut winners_seen = HashSet::new();
    let mut expected = Vec::new();
    for (_, t) in &tries {
        if expected.len() < 5 && winners_seen.insert(t.bidder_id.clone()) {
            expected.push(t.bid_id.clone());
        }
    }
    let mut confirmed: Vec<_> = outcomes
        .iter()
        .filter(|o| o.kind == OutcomeKind::Confirmed)
        .collect();
    confirmed.sort_by_key(|o| o.rank);
    assert_eq!(
        confirmed
            .iter()
            .map(|o| o.bid_id.clone())
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(
        confirmed
            .iter()
            .map(|o| o.rank.unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let bidders: HashSet<_> = confirmed.iter().map(|o| &o.bidder_id).collect();
    assert_eq!(bidders.len(), 5, "five distinct winners");
    for o in &outcomes {
        let (seq, t) = tries.iter().find(|(_, t)| t.bid_id == o.bid_id).unwrap();
        assert_eq!(o.try_seq, *seq);
        assert_eq!(o.tried_at, t.tried_at);
        if o.kind == OutcomeKind::Cancelled {
            assert!(o.reason.is_some());
        }
    }

    // Replaying the log offline gives exactly the published decisions.
    let mut ledger = Ledger::new();
    ledger.apply(&LogEvent::Open(OpenEvent {
        auction_id: "drop".into(),
        spec: AuctionSpec::with_capacity(5),
        opened_at: Utc::now(),
    }));
    for (_, t) in &tries {
        let Step::Decided(verdict) = ledger.apply(&LogEvent::Try(t.clone())) else {
            panic!("every try is decided once");
        };
        assert_eq!(
            Some(verdict),
            Verdict::of(&by_bid[&t.bid_id]),
            "bid {}",
            t.bid_id
        );
    }
}

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

    let BidReply::Accepted { try_seq, .. } =
        h.client.bid("one", &bid("win", "u1", 10)).await.unwrap()
    else {
        panic!("first bid accepted");
    };
    h.wait_for_outcomes("one", 1).await;
    // The verifier reports the auction sold out; the gateway then refuses
    // new bids without writing them.
    let mut sold_out = false;
    for i in 0..100 {
        match h
            .client
            .bid("one", &bid(&format!("late{i}"), "u2", 10))
            .await
            .unwrap()
        {
            BidReply::Rejected {
                reason: RejectReason::SoldOut,
                ..
            } => {
                sold_out = true;
                break;
            }
            BidReply::Accepted { .. } => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(sold_out, "gateway learns the auction is sold out");
    let tries_before = h.tries("one").await.len();

    // The winner resending its bid gets the original acceptance, not a reject.
    assert_eq!(
        h.client.bid("one", &bid("win", "u1", 10)).await.unwrap(),
        BidReply::Accepted {
            bid_id: "win".into(),
            auction_id: "one".into(),
            try_seq,
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
    assert_eq!(
        reply
            .headers
            .unwrap()
            .get("Nats-Service-Error-Code")
            .unwrap()
            .as_str(),
        "409"
    );
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
        BidReply::Error { error, message } => {
            assert_eq!(error, allot::wire::ErrorCode::Conflict);
            assert!(message.contains("b1"), "{message}");
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
            br#"{"bid_id":"b.c","bidder_id":"u","amount":1}"#.to_vec(),
            "bid_id",
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
        let headers = reply.headers.expect("error headers");
        assert_eq!(
            headers.get("Nats-Service-Error-Code").unwrap().as_str(),
            "400"
        );
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

#[tokio::test]
async fn opening_is_idempotent_and_conflicting_settings_are_refused() {
    let h = Harness::start().await;
    let spec = AuctionSpec {
        capacity: 3,
        min_amount: 7,
        closes_at: Some(Utc::now() + chrono::Duration::hours(1)),
        max_wins_per_bidder: 2,
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
    assert_eq!(
        reply
            .headers
            .unwrap()
            .get("Nats-Service-Error-Code")
            .unwrap()
            .as_str(),
        "409"
    );

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
    assert_eq!(
        unknown
            .headers
            .unwrap()
            .get("Nats-Service-Error-Code")
            .unwrap()
            .as_str(),
        "404"
    );
}

#[tokio::test]
async fn outcome_subjects_carry_each_kind_live_and_in_the_stream() {
    let h = Harness::start().await;
    h.open(
        "w",
        AuctionSpec {
            min_amount: 5,
            ..AuctionSpec::with_capacity(3)
        },
    )
    .await;
    let nats = &h.client.client;
    let mut confirmed = nats.subscribe("allot.outcome.w.confirmed").await.unwrap();
    let mut cancelled = nats.subscribe("allot.outcome.w.cancelled").await.unwrap();
    nats.flush().await.unwrap();

    for (i, bidder) in ["u1", "u1", "u2", "u3"].iter().enumerate() {
        let reply = h
            .client
            .bid("w", &bid(&format!("b{i}"), bidder, 5))
            .await
            .unwrap();
        assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    }
    let mut live = Vec::new();
    for _ in 0..3 {
        let m = next(&mut confirmed).await;
        assert_matches("outcome-event.schema.json", &m.payload);
        live.push(serde_json::from_slice::<allot::wire::OutcomeEvent>(&m.payload).unwrap());
    }
    for _ in 0..1 {
        let m = next(&mut cancelled).await;
        assert_matches("outcome-event.schema.json", &m.payload);
        live.push(serde_json::from_slice::<allot::wire::OutcomeEvent>(&m.payload).unwrap());
    }
    let kinds: Vec<_> = live
        .iter()
        .map(|o| (o.bid_id.as_str(), o.kind, o.reason))
        .collect();
    assert!(kinds.contains(&("b0", OutcomeKind::Confirmed, None)));
    assert!(kinds.contains(&(
        "b1",
        OutcomeKind::Cancelled,
        Some(allot::wire::CancelReason::BidderLimit)
    )));
    assert!(kinds.contains(&("b2", OutcomeKind::Confirmed, None)));
    assert!(kinds.contains(&("b3", OutcomeKind::Confirmed, None)));

    // Replay from the stream gives the same events, and the tries match
    // their schema.
    let mut replayed = h.outcomes(Some("w")).await;
    replayed.sort_by(|a, b| a.bid_id.cmp(&b.bid_id));
    live.sort_by(|a, b| a.bid_id.cmp(&b.bid_id));
    assert_eq!(replayed, live);
    let s = &h.client.subjects;
    for m in h.read_stream(&s.tries_stream(), &s.try_event("w")).await {
        assert_matches("try-event.schema.json", &m.payload);
    }
    assert_matches(
        "bid-request.schema.json",
        &serde_json::to_vec(&bid("b0", "u1", 5)).unwrap(),
    );
}

#[test]
fn schemas_reject_what_the_contract_forbids() {
    let bad: [(&str, &str); 5] = [
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
    ];
    for (schema, instance) in bad {
        let json: serde_json::Value = serde_json::from_str(instance).unwrap();
        assert!(
            !common::schema(schema).is_valid(&json),
            "{schema} accepted {instance}"
        );
    }
}

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an outcome in time")
        .unwrap()
}
