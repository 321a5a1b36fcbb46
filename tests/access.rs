//! The example nats-server configuration (`deploy/nats-server.conf`): the
//! service runs with its own user, an admin opens auctions, a bidder bids
//! and sees outcomes, and a bidder can do nothing else.

use std::path::Path;
use std::time::Duration;

use allot::client::{connect, AllotClient};
use allot::nats_server::NatsServer;
use allot::service::{self, Config};
use allot::streams::Streams;
use allot::verifier::VerifierConfig;
use allot::wire::{AuctionSpec, BidReply, BidRequest, OpenReply, Subjects};
use futures::StreamExt;

/// The server's URL with a user's credentials from the example file.
fn as_user(server: &NatsServer, user: &str, password: &str) -> String {
    let url = server.url();
    let host = url.strip_prefix("nats://").expect("nats:// URL");
    format!("nats://{user}:{password}@{host}")
}

async fn client(url: &str) -> AllotClient {
    AllotClient::new(connect(url).await.expect("connects"), Subjects::default())
}

#[tokio::test]
async fn a_bidder_can_bid_and_watch_but_cannot_write_the_log_open_auctions_or_delete_streams() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nats-server.conf");
    let server = NatsServer::start_with_config(&config).expect("nats-server starts");
    let data = tempfile::tempdir().unwrap();
    let service_url = as_user(&server, "allot-service", "service-secret");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(service::run(
        Config {
            nats_url: service_url.clone(),
            verifier: VerifierConfig {
                data_dir: data.path().to_path_buf(),
                ..VerifierConfig::default()
            },
            ..Config::default()
        },
        async {
            let _ = stopped.await;
        },
    ));

    // The admin opens an auction, once the service answers.
    let admin = client(&as_user(&server, "admin", "admin-secret")).await;
    let mut opened = None;
    for _ in 0..100 {
        match admin.open("a", &AuctionSpec::with_capacity(5)).await {
            Ok(reply) => {
                opened = Some(reply);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(
        matches!(opened, Some(OpenReply::Opened { .. })),
        "admin opens: {opened:?}"
    );

    // A bidder bids and sees its outcome.
    let bidder = client(&as_user(&server, "bidder", "bidder-secret")).await;
    let mut outcomes = bidder.live_outcomes(Some("a")).await.unwrap();
    let bid = BidRequest {
        bid_id: "b1".into(),
        bidder_id: "alice".into(),
        amount: 10,
    };
    let reply = bidder.bid("a", &bid).await.unwrap();
    assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    let outcome = tokio::time::timeout(Duration::from_secs(10), outcomes.next())
        .await
        .expect("outcome in time")
        .unwrap();
    assert_eq!((outcome.bid_id.as_str(), outcome.rank), ("b1", Some(1)));

    // A bidder withdraws its own bids (here one whose try never came: an
    // empty rollback) but cannot close the auction.
    let withdrawn = bidder
        .withdraw(
            "a",
            &allot::wire::WithdrawRequest {
                bid_id: "b2".into(),
                bidder_id: "alice".into(),
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(
            withdrawn,
            allot::wire::WithdrawReply::Withdrawn {
                empty_rollback: true,
                ..
            }
        ),
        "{withdrawn:?}"
    );
    let close_attempt = tokio::time::timeout(Duration::from_secs(3), bidder.close("a")).await;
    assert!(
        !matches!(
            close_attempt,
            Ok(Ok(allot::wire::CloseReply::Closing { .. }))
        ),
        "a bidder cannot close an auction: {close_attempt:?}"
    );

    // What the bidder must not do. Each attempt is refused by the server;
    // the streams, read with the service's user, show nothing written.
    let s = &bidder.subjects;
    let forged_try = br#"{"type":"try","bid_id":"x","auction_id":"a","bidder_id":"mallory","amount":1,"tried_at":"2026-01-01T00:00:00Z"}"#;
    bidder
        .client
        .publish(s.try_event("a"), forged_try.as_slice().into())
        .await
        .unwrap();
    let forged_outcome = serde_json::to_vec(&outcome).unwrap();
    bidder
        .client
        .publish(
            s.outcome("a", allot::wire::OutcomeKind::Confirmed),
            forged_outcome.into(),
        )
        .await
        .unwrap();
    let _ = bidder.client.flush().await;
    let bidder_js = async_nats::jetstream::new(bidder.client.clone());
    let appended = tokio::time::timeout(
        Duration::from_secs(3),
        bidder_js.publish(s.try_event("a"), forged_try.as_slice().into()),
    )
    .await;
    let acked = match appended {
        Ok(Ok(ack)) => tokio::time::timeout(Duration::from_secs(3), ack)
            .await
            .is_ok_and(|a| a.is_ok()),
        _ => false,
    };
    assert!(!acked, "a bidder's try append is refused");
    let open_attempt = tokio::time::timeout(
        Duration::from_secs(3),
        bidder.open("evil", &AuctionSpec::with_capacity(1)),
    )
    .await;
    assert!(
        !matches!(open_attempt, Ok(Ok(OpenReply::Opened { .. }))),
        "a bidder cannot open an auction: {open_attempt:?}"
    );
    let deleted = tokio::time::timeout(
        Duration::from_secs(3),
        bidder_js.delete_stream("ALLOT_TRIES"),
    )
    .await;
    assert!(
        !matches!(deleted, Ok(Ok(_))),
        "a bidder cannot delete the log"
    );

    let service_js = async_nats::jetstream::new(connect(&service_url).await.unwrap());
    let log = service_js
        .get_stream("ALLOT_TRIES")
        .await
        .expect("the log is still there");
    let outcomes_stream = service_js.get_stream("ALLOT_OUTCOMES").await.unwrap();
    assert_eq!(Streams::count(&log, &s.try_event("a")).await.unwrap(), 1);
    assert_eq!(
        Streams::count(&log, &s.auction_event("evil"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        Streams::count(&outcomes_stream, &s.outcomes(Some("a")))
            .await
            .unwrap(),
        1
    );

    // The operator's view: `allot status` works with the admin's read-only
    // rights, and sees the service and its lease through them.
    let status = allot::observe::status::read(
        &admin.client,
        &Subjects::default(),
        allot::verifier::CONSUMER,
        10,
    )
    .await
    .expect("admin reads the status");
    assert_eq!(status.instances.len(), 1, "the service answers $SRV.PING");
    assert!(status.partitions[0].owner.is_some(), "{status:?}");
    assert_eq!(status.auctions[0].auction_id, "a");
    assert_eq!(status.auctions[0].capacity, 5);

    let _ = stop.send(());
    running
        .await
        .unwrap()
        .expect("the service ran and stopped cleanly");
}
