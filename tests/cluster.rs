//! A three-node JetStream cluster on 127.0.0.1, streams at three replicas.

use crate::common;

use std::time::Duration;

use allot::nats_server::NatsCluster;
use allot::wire::AuctionSpec;
use common::{
    assert_replay_matches_outcomes, one_outcome_per_bid, serve_process, Bidders, Harness,
};

/// A harness on the first node of a new three-node cluster, once the
/// cluster has elected its JetStream meta leader; and the other two nodes.
async fn cluster() -> (Harness, Vec<allot::nats_server::NatsServer>) {
    let mut cluster = NatsCluster::start(3).expect("the cluster starts");
    let urls = cluster.urls();
    let first = cluster.nodes.remove(0);
    let h = Harness::on(first, Some(urls)).await;
    for _ in 0..300 {
        if h.js.query_account().await.is_ok() {
            return (h, cluster.nodes);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the cluster's JetStream did not come up in 30 s");
}

/// The node that leads the log stream's replicas, by name (`n1`..`n3`).
async fn log_leader(h: &Harness) -> String {
    let mut log = h.js.get_stream("ALLOT_TRIES").await.unwrap();
    let info = log.info().await.unwrap();
    info.cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("a clustered stream has a leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_log_leaders_node_mid_run_loses_and_doubles_nothing() {
    let (h, mut others) = cluster().await;
    let _serve = serve_process(&h, &["--replicas", "3"], &[]);
    for _ in 0..3 {
        // Stream creation waits on the cluster; serving starts after it.
        if tokio::time::timeout(Duration::from_secs(20), h.wait_until_serving())
            .await
            .is_ok()
        {
            break;
        }
    }
    let mut log = h.js.get_stream("ALLOT_TRIES").await.unwrap();
    assert_eq!(log.info().await.unwrap().config.num_replicas, 3);
    // Never sold out: a sold-out auction's bids are rejected, not accepted,
    // and the run would stop making progress.
    h.open(
        "c",
        AuctionSpec {
            max_wins_per_bidder: 1_000_000,
            ..AuctionSpec::with_capacity(1_000_000)
        },
    )
    .await;

    let bidders = Bidders::start(&h, "c", 8, 300);
    bidders.reach(200).await;
    // The harness's own client is on n1, so the node to lose must be
    // another: move the log's leadership off n1 if it is there.
    let mut leader = log_leader(&h).await;
    for _ in 0..10 {
        if leader != "n1" {
            break;
        }
        let _ = h
            .client
            .client
            .request("$JS.API.STREAM.LEADER.STEPDOWN.ALLOT_TRIES", "".into())
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        leader = log_leader(&h).await;
    }
    assert_ne!(leader, "n1", "the log's leadership stayed on n1");
    let index = if leader == "n2" { 0 } else { 1 };
    others[index].kill();

    // The service goes on: the survivors elect a new leader, bids that
    // failed meanwhile are resent with their ids.
    let before = bidders.accepted_now();
    bidders.reach(before + 500).await;
    let failed = bidders.failed.load(std::sync::atomic::Ordering::Relaxed);
    let accepted = bidders.stop().await;
    assert!(failed > 0, "the lost leader was noticed");
    assert_ne!(log_leader(&h).await, leader, "a survivor leads the log");

    h.wait_until_decided().await;
    let outcomes = h.outcomes(Some("c")).await;
    let by_bid = one_outcome_per_bid(&outcomes);
    for bid in &accepted {
        assert!(
            by_bid.contains_key(bid),
            "accepted bid {bid} has no outcome"
        );
    }
    let confirmed = outcomes.iter().filter(|o| o.rank.is_some()).count();
    assert_eq!(confirmed, by_bid.len(), "every bid wins a slot");
    assert_eq!(
        by_bid.len(),
        accepted.len(),
        "no outcome for a bid never accepted"
    );
    assert_replay_matches_outcomes(&h).await;
}
