//! A three-node JetStream cluster on 127.0.0.1, streams at three replicas.

use crate::common;

use std::time::Duration;

use allot::nats_server::NatsCluster;
use allot::wire::AuctionSpec;
use common::{
    assert_replay_matches_outcomes, bid, metric, one_outcome_per_bid, serve_process,
    serve_with_page, Bidders, Harness,
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
    // Stream creation waits on the cluster; serving starts after it.
    h.wait_until_serving_for(Duration::from_secs(120)).await;
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

/// Places bid `b<i>` on auction `f`; it must be accepted.
async fn place(h: &Harness, i: usize) {
    let reply = h
        .client
        .bid("f", &bid(&format!("b{i}"), &format!("u{i}"), 10))
        .await
        .unwrap();
    assert!(
        matches!(reply, allot::wire::BidReply::Accepted { .. }),
        "{reply:?}"
    );
}

/// The process state letter in `/proc/<pid>/stat` (`T` when stopped).
fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    after_name.trim_start().chars().next().unwrap_or('?')
}

/// Polls `name` on a serve's metrics page until it reads `want` (60 s).
async fn until_metric(addr: &str, name: &str, want: f64) -> Duration {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if metric(addr, name).await == Some(want) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} on {addr} did not reach {want} in 60 s");
}

/// The verifier that owns the log freezes (`SIGSTOP`) just before it
/// publishes a batch of outcomes, and stays frozen past its lease. A
/// standby takes over and decides those tries itself. When the first
/// wakes (`SIGCONT`) it goes on publishing the batch it held: JetStream
/// refuses every outcome of it (the fence), and it stands by. Every bid
/// has exactly one outcome, and a replay of the log agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_frozen_past_its_lease_is_fenced_out_when_it_wakes() {
    let (h, _others) = cluster().await;
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A de-duplication window shorter than the freeze: without the fence,
    // JetStream would store the frozen owner's late outcomes as doubles.
    let common_args = [
        "--lease-secs",
        "3",
        "--dedupe-window-secs",
        "1",
        "--replicas",
        "3",
    ];
    let mut first_args = vec!["--role", "verifier"];
    first_args.extend(common_args);
    let (first, first_metrics) = serve_with_page(
        &h,
        first_dir.path(),
        &first_args,
        &[("ALLOT_STOP_AT", "before_publish")],
    )
    .await;
    until_metric(&first_metrics, "allot_partitions_owned", 1.0).await;
    let (_second, second_metrics) = serve_with_page(&h, second_dir.path(), &common_args, &[]).await;
    // Stream creation waits on the cluster; serving starts after it.
    h.wait_until_serving_for(Duration::from_secs(120)).await;
    assert_eq!(
        metric(&second_metrics, "allot_partitions_owned").await,
        Some(0.0),
        "the second stands by"
    );

    // The first batch with outcomes freezes the owner.
    h.open("f", AuctionSpec::with_capacity(10)).await;
    let mut placed = 0;
    for i in 0..4 {
        place(&h, i).await;
        placed += 1;
    }
    let pid = first.id();
    let frozen = std::time::Instant::now();
    while state(pid) != 'T' {
        assert!(
            frozen.elapsed() < Duration::from_secs(30),
            "the owner never stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The standby takes the lease once it lapses, and decides everything.
    let took = until_metric(&second_metrics, "allot_partitions_owned", 1.0).await;
    eprintln!("the standby took over {took:?} after the owner froze (lease 3 s)");
    for i in 4..8 {
        place(&h, i).await;
        placed += 1;
    }
    h.wait_for_outcomes("f", placed).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The first wakes mid-batch: its outcomes are refused, it stands by.
    std::process::Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status()
        .unwrap();
    until_metric(&first_metrics, "allot_fenced_total", 1.0).await;
    until_metric(&first_metrics, "allot_partitions_owned", 0.0).await;
    assert_eq!(
        metric(&second_metrics, "allot_partitions_owned").await,
        Some(1.0)
    );

    for i in 8..10 {
        place(&h, i).await;
        placed += 1;
    }
    h.wait_for_outcomes("f", placed).await;
    h.wait_until_decided().await;
    let outcomes = h.outcomes(Some("f")).await;
    assert_eq!(outcomes.len(), placed, "nothing published twice");
    one_outcome_per_bid(&outcomes);
    assert_eq!(outcomes.iter().filter(|o| o.rank.is_some()).count(), 10);
    assert_replay_matches_outcomes(&h).await;
}

/// Three `allot serve` processes on the cluster: their gateways share the
/// requests, one verifier decides and two stand by. The owner is killed
/// with SIGKILL under load; a standby takes over, and every accepted bid
/// has exactly one outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_owner_killed_mid_run_is_replaced_by_a_standby() {
    let (h, _others) = cluster().await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut serves = Vec::new();
    let mut pages = Vec::new();
    for dir in &dirs {
        let args = ["--lease-secs", "3", "--replicas", "3"];
        let (serve, page) = serve_with_page(&h, dir.path(), &args, &[]).await;
        if serves.is_empty() {
            until_metric(&page, "allot_partitions_owned", 1.0).await;
        }
        serves.push(serve);
        pages.push(page);
    }
    // Stream creation waits on the cluster; serving starts after it.
    h.wait_until_serving_for(Duration::from_secs(120)).await;
    h.open(
        "k",
        AuctionSpec {
            max_wins_per_bidder: 1_000_000,
            ..AuctionSpec::with_capacity(1_000_000)
        },
    )
    .await;
    let bidders = Bidders::start(&h, "k", 8, 300);
    bidders.reach(300).await;

    serves[0].kill().unwrap();
    serves[0].wait().unwrap();
    let killed = std::time::Instant::now();
    let owner = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no standby took over"
        );
        if metric(&pages[1], "allot_partitions_owned").await == Some(1.0) {
            break 1;
        }
        if metric(&pages[2], "allot_partitions_owned").await == Some(1.0) {
            break 2;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "serve {owner} took over {:?} after the kill (lease 3 s)",
        killed.elapsed()
    );
    let before = bidders.accepted_now();
    bidders.reach(before + 300).await;
    let accepted = bidders.stop().await;

    h.wait_until_decided().await;
    let outcomes = h.outcomes(Some("k")).await;
    let by_bid = one_outcome_per_bid(&outcomes);
    for bid in &accepted {
        assert!(
            by_bid.contains_key(bid),
            "accepted bid {bid} has no outcome"
        );
    }
    assert_eq!(
        by_bid.len(),
        accepted.len(),
        "no outcome for a bid never accepted"
    );
    let other = 3 - owner;
    assert_eq!(
        metric(&pages[other], "allot_partitions_owned").await,
        Some(0.0),
        "one owner"
    );
    assert_replay_matches_outcomes(&h).await;
}
