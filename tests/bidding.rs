//! Bidding end to end against a real nats-server: many concurrent bids,
//! the winners, and the outcome subjects.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use allot::core::{Ledger, Step, Verdict};
use allot::wire::{
    AuctionSpec, BidReply, BidRequest, CancelReason, LogEvent, OpenEvent, OutcomeKind, Policy,
    RejectReason, ResultReply, TryAt,
};
use chrono::Utc;
use common::{assert_matches, bid, one_outcome_per_bid, Harness};
use futures::StreamExt;

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
            BidReply::Error { error, message, .. } => {
                errors += 1;
                assert_eq!(common::error_code(reply), Some("400"));
                let headers = reply.headers.as_ref().expect("error headers");
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
        assert_eq!(TryAt::new(o.try_seq, o.try_index), *seq);
        assert_eq!(o.tried_at, t.tried_at);
        if o.kind == OutcomeKind::Cancelled {
            assert!(o.reason.is_some());
        }
    }

    // Replaying the log offline gives exactly the published decisions.
    let mut ledger = Ledger::new();
    let open = LogEvent::Open(OpenEvent {
        auction_id: "drop".into(),
        spec: AuctionSpec::with_capacity(5),
        opened_at: Utc::now(),
    });
    ledger.apply(&open, 1);
    for (seq, t) in &tries {
        let Step::Decided(verdict) = ledger.decide(t, *seq) else {
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
    let mut confirmed = nats.subscribe("allot.outcome.w.confirmed.>").await.unwrap();
    let mut cancelled = nats.subscribe("allot.outcome.w.cancelled.>").await.unwrap();
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
    let entries = h
        .read_stream(&s.tries_stream(), &s.tries_entry(s.partition("w")))
        .await;
    assert!(!entries.is_empty(), "the tries are in entries of tries");
    for m in entries {
        assert_matches("tries-entry.schema.json", &m.payload);
    }
    // The outcomes are stored in entries of outcomes, none alone.
    let stored = h
        .read_stream_on(&s.outcomes_stream(), s.outcome_filters(Some("w")))
        .await;
    assert!(!stored.is_empty());
    for m in stored {
        assert!(
            s.is_outcomes_entry(&m.subject),
            "{} stored alone",
            m.subject
        );
        assert_matches("outcomes-entry.schema.json", &m.payload);
        let entry: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        for o in entry["outcomes"].as_array().unwrap() {
            assert_matches("outcome-event.schema.json", &serde_json::to_vec(o).unwrap());
        }
    }
    assert_matches(
        "bid-request.schema.json",
        &serde_json::to_vec(&bid("b0", "u1", 5)).unwrap(),
    );
}

/// The status counts outcomes from the entries: a counter kept by a
/// process reads only the entries stored since its last count, and agrees
/// with a count from the start, outcomes stored alone included.
#[tokio::test]
async fn outcome_counts_read_only_new_entries_and_agree_with_a_full_count() {
    let h = Harness::start().await;
    h.open("c", AuctionSpec::with_capacity(10)).await;
    // A bidder's second bid is cancelled (one win per bidder).
    let place = |bids: &'static [(&'static str, &'static str)]| {
        let h = &h;
        async move {
            for (id, who) in bids {
                let reply = h.client.bid("c", &bid(id, who, 5)).await.unwrap();
                assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
            }
        }
    };
    place(&[("b0", "u0"), ("b1", "u0"), ("b2", "u1")]).await;
    h.wait_for_outcomes("c", 3).await;
    let s = h.log_subjects().await;
    let mut counter = allot::log::OutcomeCounter::default();
    let first = counter.count(&h.js, &s, None).await.unwrap();
    assert_eq!((first["c"].confirmed, first["c"].cancelled), (2, 1));

    place(&[("b3", "u1"), ("b4", "u2")]).await;
    h.wait_for_outcomes("c", 5).await;
    // One stored alone, as an older allot would, for an auction of its own.
    let mut alone = h.outcomes(Some("c")).await.pop().unwrap();
    alone.auction_id = "d".into();
    h.js.publish(
        s.outcome("d", alone.kind),
        serde_json::to_vec(&alone).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let second = counter.count(&h.js, &s, None).await.unwrap();
    assert_eq!((second["c"].confirmed, second["c"].cancelled), (3, 2));
    assert_eq!(second["d"].confirmed + second["d"].cancelled, 1);
    let full = allot::log::outcome_counts(&h.js, &s, None).await.unwrap();
    assert_eq!(second, full);
}

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an outcome in time")
        .unwrap()
}

/// A bidder asks what became of its bid: the outcome itself once decided,
/// `undecided` before (and for a bid id never accepted), matching the
/// result-reply schema.
#[tokio::test]
async fn a_bidder_asks_for_its_bids_result() {
    let h = Harness::start().await;
    // One slot per bidder: u1's second bid is cancelled, and the gateway
    // cannot refuse it early (as it would a bid to a sold-out auction).
    h.open("one", AuctionSpec::with_capacity(5)).await;
    for (b, who) in [("first", "u1"), ("second", "u1")] {
        let reply = h.client.bid("one", &bid(b, who, 7)).await.unwrap();
        assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    }
    h.wait_for_outcomes("one", 2).await;
    let first = h.client.result("one", "first").await.unwrap();
    assert!(
        matches!(&first, ResultReply::Confirmed { bid_id, auction_id, rank: 1, amount: 7, .. } if bid_id == "first" && auction_id == "one"),
        "{first:?}"
    );
    let second = h.client.result("one", "second").await.unwrap();
    assert!(
        matches!(
            second,
            ResultReply::Cancelled {
                reason: allot::wire::CancelReason::BidderLimit,
                ..
            }
        ),
        "{second:?}"
    );
    let never = h.client.result("one", "never").await.unwrap();
    assert!(matches!(never, ResultReply::Undecided { .. }), "{never:?}");
    for body in [&b"{\"bid_id\":\"first\"}"[..], b"{\"bid_id\":\"never\"}"] {
        let reply = common::raw(&h, h.client.subjects.result_request("one"), body).await;
        assert_matches("result-reply.schema.json", &reply.payload);
    }
    let bad = common::raw(&h, h.client.subjects.result_request("one"), b"{}").await;
    assert_eq!(common::error_code(&bad), Some("400"));
}

/// A bid that asks to wait gets its decision in the reply: `confirmed`
/// with its rank, or `cancelled` with its reason; a resend gets the same
/// decision; in a ranked auction, where a held bid is decided at the
/// close, the reply is `accepted`. Every reply matches the schema, and the
/// outcome stream agrees with each.
#[tokio::test]
async fn a_bid_that_waits_gets_its_decision_in_the_reply() {
    let h = Harness::start().await;
    h.open("w", AuctionSpec::with_capacity(2)).await;
    let waiting = |bid_id: &str, bidder: &str, amount: u64| BidRequest {
        wait: true,
        ..bid(bid_id, bidder, amount)
    };
    let check = |reply: &BidReply| {
        assert_matches("bid-reply.schema.json", &serde_json::to_vec(reply).unwrap());
    };

    let first = h.client.bid("w", &waiting("b1", "u1", 5)).await.unwrap();
    check(&first);
    let BidReply::Confirmed {
        rank,
        try_seq,
        try_index,
        ..
    } = first
    else {
        panic!("{first:?}");
    };
    assert_eq!(rank, 1);
    // The same bidder again, past its one win.
    let second = h.client.bid("w", &waiting("b2", "u1", 5)).await.unwrap();
    check(&second);
    assert!(
        matches!(
            second,
            BidReply::Cancelled {
                reason: CancelReason::BidderLimit,
                ..
            }
        ),
        "{second:?}"
    );
    let again = h.client.bid("w", &waiting("b1", "u1", 5)).await.unwrap();
    check(&again);
    assert_eq!(
        again,
        BidReply::Confirmed {
            bid_id: "b1".into(),
            auction_id: "w".into(),
            try_seq,
            try_index,
            duplicate: true,
            rank: 1,
        }
    );
    let outcomes = one_outcome_per_bid(&h.wait_for_outcomes("w", 2).await);
    assert_eq!(outcomes["b1"].rank, Some(1));
    assert_eq!(outcomes["b2"].reason, Some(CancelReason::BidderLimit));

    h.open(
        "r",
        AuctionSpec {
            policy: Policy::TopAmount,
            ..AuctionSpec::with_capacity(1)
        },
    )
    .await;
    let held = h.client.bid("r", &waiting("h1", "u1", 5)).await.unwrap();
    check(&held);
    assert!(matches!(held, BidReply::Accepted { .. }), "{held:?}");
    let outbid = h.client.bid("r", &waiting("h2", "u2", 4)).await.unwrap();
    assert!(
        matches!(
            outbid,
            BidReply::Cancelled {
                reason: CancelReason::Outbid,
                ..
            }
        ),
        "{outbid:?}"
    );
}
