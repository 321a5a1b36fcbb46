//! Old and new side by side: an allot of a version that reads one try per
//! log message (format 1) has a verifier that would skip entries of
//! several tries, and would not find outcomes stored in entries. While any
//! allot instance that does not say it reads format 2 (3) answers the
//! micro service ping, a gateway writes one try per message with
//! JetStream's de-duplication (a verifier stores each outcome alone, with
//! its message id), and both go back to entries of several once none is
//! left. Here the older instance is a
//! responder that answers `$SRV.PING.allot` as such a version does, with
//! no `log_format` in its metadata.

use crate::common;

use std::time::Duration;

use allot::wire::{AuctionSpec, BidReply};
use common::{bid, Harness};

#[tokio::test]
async fn a_gateway_writes_one_try_per_message_while_an_older_allot_runs() {
    let mut h = Harness::server_only().await;
    let nats = async_nats::connect(h.server.url()).await.unwrap();
    let old = common::older_allot(nats.clone()).await;
    h.start_service().await;
    h.open("up", AuctionSpec::with_capacity(5)).await;
    bid_all(&h, 0..3).await;
    // A resend is de-duplicated by JetStream, as the older version expects.
    let again = h.client.bid("up", &bid("b0", "u0", 5)).await.unwrap();
    assert!(
        matches!(
            again,
            BidReply::Accepted {
                duplicate: true,
                try_index: 0,
                ..
            }
        ),
        "{again:?}"
    );
    let (single, grouped) = in_log(&h).await;
    assert_eq!((single, grouped), (3, 0), "one try per message");
    h.wait_for_outcomes("up", 3).await;
    assert_eq!(outcomes_stored(&h).await, (3, 0), "each outcome alone");

    // The older instance is gone: within a check or two, entries of
    // several tries again.
    old.abort();
    drop(nats);
    tokio::time::sleep(Duration::from_secs(11)).await;
    bid_all(&h, 3..5).await;
    let (single, grouped) = in_log(&h).await;
    assert_eq!(single, 3, "no try alone in a message since");
    assert!(grouped > 0, "entries of tries again");

    // Both formats are decided alike: five bids, five outcomes, and the
    // replay agrees.
    let accepted = (0..5).map(|i| format!("b{i}")).collect();
    let outcomes = h.settled_outcomes("up", &accepted).await;
    assert_eq!(outcomes.len(), 5);
    let (alone, entries) = outcomes_stored(&h).await;
    assert_eq!(alone, 3, "no outcome alone since");
    assert!(entries > 0, "entries of outcomes again");
}

/// Messages holding the auction's outcomes: (each alone, entries).
async fn outcomes_stored(h: &Harness) -> (usize, usize) {
    let s = &h.client.subjects;
    let [alone, entries] = <[String; 2]>::try_from(s.outcome_filters(Some("up"))).unwrap();
    let alone = h.read_stream("ALLOT_OUTCOMES", &alone).await;
    let entries = h.read_stream("ALLOT_OUTCOMES", &entries).await;
    (alone.len(), entries.len())
}

/// Bids `b<i>` from bidders `u<i>`, each accepted.
async fn bid_all(h: &Harness, ids: std::ops::Range<u32>) {
    for i in ids {
        let reply = h
            .client
            .bid("up", &bid(&format!("b{i}"), &format!("u{i}"), 5))
            .await
            .unwrap();
        assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    }
}

/// Messages of auction `up` in the log: tries alone, entries of several.
async fn in_log(h: &Harness) -> (usize, usize) {
    let s = &h.client.subjects;
    let single = h.read_stream("ALLOT_TRIES", &s.try_event("up")).await;
    let grouped = h
        .read_stream("ALLOT_TRIES", &s.tries_entry(s.partition("up")))
        .await;
    (single.len(), grouped.len())
}
