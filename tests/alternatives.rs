//! The optimistic and the locking alternatives on a real server: what allot
//! is compared against must itself be correct.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use allot::loadtest::alternatives::lock::LockConfig;
use allot::loadtest::alternatives::occ::OccConfig;
use allot::loadtest::alternatives::{Counters, Locking, Optimistic};
use allot::wire::{AuctionSpec, BidReply, OutcomeEvent, OutcomeKind};
use common::{bid, Harness};

/// Every decided event of one auction in a strategy's stream.
async fn decided(h: &Harness, stream: &str, subject: &str) -> Vec<OutcomeEvent> {
    h.read_stream(stream, subject)
        .await
        .into_iter()
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect()
}

#[tokio::test]
async fn optimistic_bids_race_and_retry_into_exactly_n_winners() {
    let h = Harness::server_only().await;
    let occ = Arc::new(
        Optimistic::new(
            h.client.client.clone(),
            &h.client.subjects,
            OccConfig {
                max_attempts: 200,
                ..Default::default()
            },
        )
        .await
        .unwrap(),
    );
    occ.open("hot", &AuctionSpec::with_capacity(10))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let occ = occ.clone();
            tokio::spawn(async move {
                occ.bid("hot", &bid(&format!("b{i}"), &format!("u{i}"), 5))
                    .await
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            BidReply::Accepted { .. } => accepted += 1,
            BidReply::Rejected { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let events = decided(&h, "ALLOT_OCC", "allot.occ.hot").await;
    let confirmed: Vec<_> = events
        .iter()
        .filter(|e| e.kind == OutcomeKind::Confirmed)
        .collect();
    assert_eq!(confirmed.len(), 10);
    let mut ranks: Vec<_> = confirmed.iter().map(|e| e.rank.unwrap()).collect();
    ranks.sort();
    assert_eq!(ranks, (1..=10).collect::<Vec<_>>());
    assert_eq!(events.len(), accepted, "one event per accepted bid");
    // A hundred concurrent writers on one aggregate cannot all win the race.
    assert!(Counters::get(&occ.counters.conflicts) > 0);
    assert_eq!(
        Counters::get(&occ.counters.retries),
        Counters::get(&occ.counters.conflicts)
    );

    // A resend gets its original event back, and writes nothing.
    let first = confirmed[0];
    let again = occ
        .bid("hot", &bid(&first.bid_id, &first.bidder_id, 5))
        .await
        .unwrap();
    assert!(matches!(
        again,
        BidReply::Accepted {
            duplicate: true,
            ..
        }
    ));
    assert_eq!(
        decided(&h, "ALLOT_OCC", "allot.occ.hot").await.len(),
        events.len()
    );
}

#[tokio::test]
async fn a_lock_left_by_a_crashed_holder_expires() {
    let h = Harness::server_only().await;
    let config = LockConfig {
        ttl: Duration::from_secs(1),
        ..Default::default()
    };
    let lock = Arc::new(
        Locking::new(h.client.client.clone(), &h.client.subjects, config)
            .await
            .unwrap(),
    );
    lock.open("a", &AuctionSpec::with_capacity(20))
        .await
        .unwrap();
    // A holder that took the lock and died.
    lock.locks.create("a", "crashed".into()).await.unwrap();
    let started = Instant::now();
    let reply = lock.bid("a", &bid("b1", "u1", 5)).await.unwrap();
    assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "waited for the expiry"
    );
    assert!(Counters::get(&lock.counters.lock_waits) > 0);

    // Concurrent bids take turns: all decided, none over capacity, and the
    // lock is free afterwards.
    let tasks: Vec<_> = (2..40)
        .map(|i| {
            let lock = lock.clone();
            tokio::spawn(async move {
                lock.bid("a", &bid(&format!("b{i}"), &format!("u{i}"), 5))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let events = decided(&h, "ALLOT_LOCK", "allot.lock.a").await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == OutcomeKind::Confirmed)
            .count(),
        20
    );
    assert_eq!(
        Counters::get(&lock.counters.conflicts),
        0,
        "the lock kept writers apart"
    );
    let entry = lock.locks.entry("a").await.unwrap();
    assert!(entry.is_none_or(|e| e.operation != async_nats::jetstream::kv::Operation::Put));
}
