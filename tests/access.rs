//! The example nats-server configuration (`deploy/nats-server.conf`) with
//! `serve --identity bound`: bidders and backends are who NATS says they
//! are. Nobody bids, withdraws or raises as another, squats another's bid
//! id, or reads another's bidder or amount through a reply; the service
//! and the admin keep working.

use crate::common;

use std::path::Path;
use std::time::Duration;

use allot::client::{connect, AllotClient};
use allot::identity::{IdentityConfig, Mode};
use allot::nats_server::NatsServer;
use allot::service::{self, Config};
use allot::verifier::VerifierConfig;
use allot::wire::{
    AuctionSpec, BidReply, BidRequest, ErrorCode, OpenReply, OutcomeEvent, Policy, RaiseReply,
    RaiseRequest, RefuseReason, ResultReply, Subjects, WithdrawReply, WithdrawRequest,
};
use futures::StreamExt;

/// The server's URL with a user's credentials from the example file.
fn as_user(server: &NatsServer, user: &str) -> String {
    let url = server.url();
    let host = url.strip_prefix("nats://").expect("nats:// URL");
    let password = match user {
        "allot-service" => "service-secret".to_string(),
        other => format!("{other}-secret"),
    };
    format!("nats://{user}:{password}@{host}")
}

async fn client(url: &str) -> AllotClient {
    AllotClient::new(connect(url).await.expect("connects"), Subjects::default())
}

/// `allot serve --identity bound --backend-account BACKENDS` in-process,
/// as `allot-service` at `url`: a way to stop it, and its task.
fn bound_service(
    url: &str,
    data: &Path,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<allot::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut config = Config {
        nats_url: url.to_string(),
        verifier: VerifierConfig {
            data_dir: data.to_path_buf(),
            ..VerifierConfig::default()
        },
        ..Config::default()
    };
    config.gateway.identity = IdentityConfig {
        mode: Mode::Bound,
        backend_accounts: vec!["BACKENDS".into()],
        bidder_rate: Some(5),
    };
    let running = tokio::spawn(service::run(config, async {
        let _ = stopped.await;
    }));
    (stop, running)
}

/// The admin opens auction `a` (5 slots) once the service answers.
async fn first_open(admin: &AllotClient) {
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
}

fn bid(bid_id: &str, bidder_id: &str, amount: u64) -> BidRequest {
    BidRequest {
        bid_id: bid_id.into(),
        bidder_id: bidder_id.into(),
        amount,
        wait: false,
    }
}

/// The error of a reply that must be one, checked to name neither of
/// `secrets` (another bidder's id or amount).
fn error_of(reply: &BidReply, secrets: &[&str]) -> ErrorCode {
    let BidReply::Error { error, message, .. } = reply else {
        panic!("expected an error, got {reply:?}");
    };
    for secret in secrets {
        assert!(!message.contains(secret), "{message:?} names {secret:?}");
    }
    *error
}

/// Sends a bid as-is with the given headers, reading the reply.
async fn bid_with_headers(
    who: &AllotClient,
    auction_id: &str,
    headers: async_nats::HeaderMap,
    body: &BidRequest,
) -> BidReply {
    let reply = who
        .client
        .request_with_headers(
            who.subjects.bid(auction_id),
            headers,
            serde_json::to_vec(body).unwrap().into(),
        )
        .await
        .expect("a reply");
    BidReply::from_json(&reply.payload).expect("a bid reply")
}

#[tokio::test]
async fn bidders_and_backends_act_only_as_themselves_under_the_example_config() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nats-server.conf");
    let server = NatsServer::start_with_config(&config).expect("nats-server starts");
    let data = tempfile::tempdir().unwrap();
    let service_url = as_user(&server, "allot-service");
    let (stop, running) = bound_service(&service_url, data.path());

    // The admin opens two auctions, once the service answers, and watches
    // the outcomes (bidders cannot: see below).
    let admin = client(&as_user(&server, "admin")).await;
    let mut outcomes = admin.live_outcomes(None).await.unwrap();
    first_open(&admin).await;
    let ranked = AuctionSpec {
        policy: Policy::TopAmount,
        ..AuctionSpec::with_capacity(2)
    };
    let opened = admin.open("r", &ranked).await.unwrap();
    assert!(matches!(opened, OpenReply::Opened { .. }), "{opened:?}");

    let alice = client(&as_user(&server, "alice")).await;
    let bob = client(&as_user(&server, "bob")).await;
    let shop_a = client(&as_user(&server, "shop-a")).await;
    let shop_b = client(&as_user(&server, "shop-b")).await;

    // A bidder bids as itself, and only as itself.
    let reply = alice.bid("a", &bid("b1", "alice", 10)).await.unwrap();
    let BidReply::Accepted {
        bid_id,
        try_seq: alice_seq,
        ..
    } = reply
    else {
        panic!("alice bids: {reply:?}");
    };
    assert_eq!(bid_id, "b1", "the reply names the bid as sent");
    let reply = alice.bid("a", &bid("b2", "bob", 10)).await.unwrap();
    assert_eq!(error_of(&reply, &[]), ErrorCode::Forbidden);

    // A header the client sets is not believed: the server replaces it.
    let mut forged = async_nats::HeaderMap::new();
    forged.insert(
        allot::identity::REQUEST_INFO,
        r#"{"acc":"BIDDERS","user":"bob"}"#,
    );
    let reply = bid_with_headers(&alice, "a", forged, &bid("b3", "bob", 10)).await;
    assert_eq!(error_of(&reply, &[]), ErrorCode::Forbidden);

    // Bid ids are per identity: bob's b1 is his own bid, not a resend of
    // alice's and not a conflict that would name her or her amount.
    let reply = bob.bid("a", &bid("b1", "bob", 99)).await.unwrap();
    assert!(
        matches!(reply, BidReply::Accepted { duplicate: false, try_seq, .. } if try_seq != alice_seq),
        "{reply:?}"
    );

    // Ranked: bob can neither raise nor withdraw alice's held bid, nor
    // learn its amount from a refusal or an error.
    let reply = alice.bid("r", &bid("r1", "alice", 100)).await.unwrap();
    assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    let raise = |bidder: &str, expected_amount, amount| RaiseRequest {
        bid_id: "r1".into(),
        bidder_id: bidder.into(),
        amount,
        expected_amount,
    };
    let reply = bob.raise("r", &raise("bob", 1, 2)).await.unwrap();
    assert!(
        matches!(
            reply,
            RaiseReply::Refused {
                reason: RefuseReason::UnknownBid,
                current_amount: None,
                ..
            }
        ),
        "{reply:?}"
    );
    let reply = bob.raise("r", &raise("alice", 100, 9_000)).await.unwrap();
    assert!(
        matches!(&reply, RaiseReply::Error { error: ErrorCode::Forbidden, message, .. } if !message.contains("100")),
        "{reply:?}"
    );
    let reply = bob
        .withdraw(
            "r",
            &WithdrawRequest {
                bid_id: "r1".into(),
                bidder_id: "alice".into(),
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(
            reply,
            WithdrawReply::Error {
                error: ErrorCode::Forbidden,
                ..
            }
        ),
        "{reply:?}"
    );
    // Alice's bid is untouched: her raise from 100 applies.
    let reply = alice.raise("r", &raise("alice", 100, 150)).await.unwrap();
    assert!(
        matches!(reply, RaiseReply::Raised { amount: 150, .. }),
        "{reply:?}"
    );

    // Backends: each bids for its own end users; shop-b's "carol" is not
    // shop-a's, so its withdraw of b9 leaves shop-a's bid alone.
    let reply = shop_a.bid("a", &bid("b9", "carol", 10)).await.unwrap();
    assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    let reply = shop_b
        .withdraw(
            "a",
            &WithdrawRequest {
                bid_id: "b9".into(),
                bidder_id: "carol".into(),
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(
            reply,
            WithdrawReply::Withdrawn {
                empty_rollback: true,
                ..
            }
        ),
        "only shop-b's own (absent) b9: {reply:?}"
    );

    // The service's own account stamps no identity: a request from it is
    // refused, never taken at the body's word.
    let service_client = client(&service_url).await;
    let reply = service_client
        .bid("a", &bid("b5", "alice", 10))
        .await
        .unwrap();
    assert_eq!(error_of(&reply, &[]), ErrorCode::Unauthenticated);
    // The admin may not bid at all.
    let attempt =
        tokio::time::timeout(Duration::from_secs(3), admin.bid("a", &bid("b6", "x", 1))).await;
    assert!(
        !matches!(attempt, Ok(Ok(BidReply::Accepted { .. }))),
        "{attempt:?}"
    );

    // The admin sees the outcomes, with ids qualified by their identity:
    // alice's and bob's b1 are two bids, and shop-a's b9 stands.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let outcome: OutcomeEvent = tokio::time::timeout(Duration::from_secs(10), outcomes.next())
            .await
            .expect("outcomes in time")
            .unwrap();
        seen.push((outcome.bid_id, outcome.bidder_id, outcome.rank));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                "b1@BIDDERS/alice".to_string(),
                "alice@BIDDERS/alice".to_string(),
                Some(1)
            ),
            ("b1@BIDDERS/bob".into(), "bob@BIDDERS/bob".into(), Some(2)),
            (
                "b9@BACKENDS/shop-a".into(),
                "carol@BACKENDS/shop-a".into(),
                Some(3)
            ),
        ]
    );
    // And replays them from the outcome stream (`allot watch --from-start`).
    let mut replayed = admin
        .replay_outcomes(Some("a"))
        .await
        .expect("admin replays");
    let mut again = Vec::new();
    while again.len() < 3 {
        let outcome = tokio::time::timeout(Duration::from_secs(10), replayed.next())
            .await
            .expect("replayed in time")
            .expect("the replay goes on")
            .expect("an outcome");
        again.push((outcome.bid_id, outcome.bidder_id, outcome.rank));
    }
    again.sort();
    assert_eq!(again, seen);

    // Each asks for the outcome of its own bids, and gets its own: bob's
    // b1 is not alice's, and shop-b has no b9.
    let result = alice.result("a", "b1").await.unwrap();
    assert!(
        matches!(&result, ResultReply::Confirmed { bid_id, rank: 1, amount: 10, .. } if bid_id == "b1"),
        "{result:?}"
    );
    let result = bob.result("a", "b1").await.unwrap();
    assert!(
        matches!(
            result,
            ResultReply::Confirmed {
                rank: 2,
                amount: 99,
                ..
            }
        ),
        "{result:?}"
    );
    let result = shop_b.result("a", "b9").await.unwrap();
    assert!(
        matches!(result, ResultReply::Undecided { .. }),
        "{result:?}"
    );
    let result = alice.result("r", "r1").await.unwrap();
    assert!(
        matches!(result, ResultReply::Undecided { .. }),
        "held until the close: {result:?}"
    );

    // A bidder over its rate is told when to come back.
    let burst_bids: Vec<BidRequest> = (0..30)
        .map(|i| bid(&format!("burst-{i}"), "bob", 10))
        .collect();
    let burst = futures::future::join_all(burst_bids.iter().map(|b| bob.bid("a", b))).await;
    let limited: Vec<_> = burst
        .iter()
        .filter_map(|r| match r {
            Ok(BidReply::Error {
                error: ErrorCode::RateLimited,
                retry_after_ms,
                ..
            }) => Some(*retry_after_ms),
            _ => None,
        })
        .collect();
    assert!(!limited.is_empty(), "{burst:?}");
    assert!(limited.iter().all(|ms| ms.is_some_and(|ms| ms > 0)));

    // What a bidder must not do. Each attempt is refused by the server;
    // the streams, read with the service's user, show nothing written.
    let mut feed = alice.client.subscribe("allot.outcome.>").await.unwrap();
    let s = &alice.subjects;
    let forged_try = br#"{"type":"try","bid_id":"x","auction_id":"a","bidder_id":"mallory","amount":1,"tried_at":"2026-01-01T00:00:00Z"}"#;
    alice
        .client
        .publish(s.try_event("a"), forged_try.as_slice().into())
        .await
        .unwrap();
    let _ = alice.client.flush().await;
    let alice_js = async_nats::jetstream::new(alice.client.clone());
    let appended = tokio::time::timeout(
        Duration::from_secs(3),
        alice_js.publish(s.try_event("a"), forged_try.as_slice().into()),
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
        alice.open("evil", &AuctionSpec::with_capacity(1)),
    )
    .await;
    assert!(
        !matches!(open_attempt, Ok(Ok(OpenReply::Opened { .. }))),
        "a bidder cannot open an auction: {open_attempt:?}"
    );
    let close_attempt = tokio::time::timeout(Duration::from_secs(3), alice.close("a")).await;
    assert!(
        !matches!(
            close_attempt,
            Ok(Ok(allot::wire::CloseReply::Closing { .. }))
        ),
        "a bidder cannot close an auction: {close_attempt:?}"
    );
    let deleted = tokio::time::timeout(
        Duration::from_secs(3),
        alice_js.delete_stream("ALLOT_TRIES"),
    )
    .await;
    assert!(
        !matches!(deleted, Ok(Ok(_))),
        "a bidder cannot delete the log"
    );
    // Bob's next bid is decided while alice's feed subscription stands:
    // nothing reaches her.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reply = bob.bid("a", &bid("late", "bob", 10)).await.unwrap();
    assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    let leaked = tokio::time::timeout(Duration::from_secs(2), feed.next()).await;
    assert!(
        !matches!(leaked, Ok(Some(_))),
        "a bidder reads no outcome feed: {leaked:?}"
    );

    let service_js = async_nats::jetstream::new(connect(&service_url).await.unwrap());
    let log = service_js
        .get_stream("ALLOT_TRIES")
        .await
        .expect("the log is still there");
    assert_eq!(
        allot::log::count(&log, &s.auction_event("evil"))
            .await
            .unwrap(),
        0
    );
    let counts = allot::log::try_counts(&service_js, s, s.partition("a"), Some("a"))
        .await
        .unwrap();
    let tries = counts.tries.get("a").copied().unwrap_or(0);
    // b1 twice, b9, the burst's admitted bids and "late"; nothing forged.
    let admitted = burst
        .iter()
        .filter(|r| matches!(r, Ok(BidReply::Accepted { .. })))
        .count() as u64;
    assert_eq!(tries, 3 + admitted + 1);

    // The operator's view: `allot status` works with the admin's read-only
    // rights, and sees the service and its lease through them.
    let status = allot::observe::status::read(
        &admin.client,
        &Subjects::default(),
        allot::wire::names::VERIFIER_CONSUMER,
        10,
    )
    .await
    .expect("admin reads the status");
    assert_eq!(status.instances.len(), 1, "the service answers $SRV.PING");
    assert!(status.partitions[0].owner.is_some(), "{status:?}");
    assert_eq!(status.auctions.len(), 2);

    let _ = stop.send(());
    running
        .await
        .unwrap()
        .expect("the service ran and stopped cleanly");
}

/// Under the example configuration too, the service sees an older allot
/// (one that reads a single try per log message) and writes format 1
/// beside it: its user may ping `$SRV.PING.allot` (docs/operating.md,
/// "Upgrading"). The older instance is a stand-in answering the ping as
/// such a version does, under the service's own user.
#[tokio::test]
async fn the_service_sees_an_older_allot_under_the_example_config() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nats-server.conf");
    let server = NatsServer::start_with_config(&config).expect("nats-server starts");
    let data = tempfile::tempdir().unwrap();
    let service_url = as_user(&server, "allot-service");
    let older = connect(&service_url).await.unwrap();
    let answering = common::older_allot(older.clone()).await;
    let (stop, running) = bound_service(&service_url, data.path());
    let admin = client(&as_user(&server, "admin")).await;
    first_open(&admin).await;

    let alice = client(&as_user(&server, "alice")).await;
    let reply = alice.bid("a", &bid("b1", "alice", 10)).await.unwrap();
    assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    let s = Subjects::default();
    let service_js = async_nats::jetstream::new(connect(&service_url).await.unwrap());
    let log = service_js.get_stream("ALLOT_TRIES").await.unwrap();
    let alone = allot::log::count(&log, &s.try_event("a")).await.unwrap();
    let entries = s.tries_entry(s.partition("a"));
    assert_eq!(
        (alone, allot::log::count(&log, &entries).await.unwrap()),
        (1, 0),
        "one try per message beside the older allot"
    );

    // Once it is gone, entries of several tries again.
    answering.abort();
    drop(older);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let reply = alice.bid("a", &bid("b2", "alice", 10)).await.unwrap();
    assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    assert_eq!(allot::log::count(&log, &entries).await.unwrap(), 1);
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
