//! What a gateway does when NATS goes quiet under it without a word: its
//! watch of the status bucket lost, or its node frozen (SIGSTOP), which to
//! the clients connected to it looks as a node cut off by a network
//! partition does. On loopback. (Issue 17, findings 1 and 3.)

use crate::common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::TryStreamExt;

use allot::client::AllotClient;
use allot::wire::{AuctionSpec, BidReply, BidRequest, RejectReason, Subjects};
use common::{
    bid, cluster_harness, listener_pid, peer_ports, port_of, serve_logged, wait_for_log, Frozen,
    Harness,
};

/// Sends `request` until it gets an answer other than an error or a
/// timeout (at most 200 times), as a bidder resending with the same bid id.
async fn answer(client: &AllotClient, auction: &str, request: &BidRequest) -> BidReply {
    for _ in 0..200 {
        match client.bid(auction, request).await {
            Ok(BidReply::Error { .. }) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(reply) => return reply,
        }
    }
    panic!("no answer for {} in 200 attempts", request.bid_id);
}

/// The lines of a log that contain `text`.
fn log_lines(log: &Path, text: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_string)
        .collect()
}

/// The consumers of the status bucket: the gateways' watches.
async fn watches(h: &Harness) -> HashSet<String> {
    let bucket = format!("KV_{}", h.client.subjects.status_bucket());
    let stream = h.js.get_stream(bucket).await.unwrap();
    stream.consumer_names().try_collect().await.unwrap()
}

/// Bids on `auction` in rounds of ten at once until at least ten are
/// refused `sold_out`; the refused ones.
async fn sell_out(client: &AllotClient, auction: &str) -> Vec<BidRequest> {
    let mut refused = Vec::new();
    for round in 0..20 {
        let bids = (0..10).map(|i| {
            let n = round * 10 + i;
            bid(&format!("b{n}"), &format!("u{n}"), 10)
        });
        let replies = futures::future::join_all(bids.map(|request| async move {
            let reply = answer(client, auction, &request).await;
            (request, reply)
        }))
        .await;
        refused.extend(replies.into_iter().filter_map(|(request, reply)| {
            let sold_out = matches!(
                reply,
                BidReply::Rejected {
                    reason: RejectReason::SoldOut,
                    ..
                }
            );
            sold_out.then_some(request)
        }));
        if refused.len() >= 10 {
            return refused;
        }
    }
    panic!("bids are refused once the auction is sold out");
}

/// Gateway B sells an auction out and refuses further bids `sold_out`,
/// while gateway A's watch of the status bucket is gone (its consumer
/// deleted, as when the node that held it is lost) and A has not noticed.
/// B stops, and the refused bids are resent a second later, so A answers
/// them. Each must stay refused: accepting one, and then cancelling it
/// `capacity_full`, tells the bidder both. Before the fix, A answered from
/// its stale view until the client noticed the missing heartbeats (5 to
/// 10 s), and accepted them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bid_refused_sold_out_stays_refused_through_a_gateway_whose_watch_was_lost() {
    let h = Harness::server_only().await;
    let logs = tempfile::tempdir().unwrap();
    let log = |name: &str| logs.path().join(format!("{name}.log"));
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let url = h.nats_url.clone();
    let gateway = ["--role", "gateway"];
    let _verifier = serve_logged(&url, dirs[0].path(), &["--role", "verifier"], &log("v"));
    let mut b = serve_logged(&url, dirs[1].path(), &gateway, &log("b"));
    wait_for_log(
        &log("b"),
        "gateway serving requests",
        Duration::from_secs(30),
    )
    .await;
    h.wait_until_verifying().await;
    let before = watches(&h).await;
    let _a = serve_logged(&url, dirs[2].path(), &gateway, &log("a"));
    wait_for_log(
        &log("a"),
        "gateway serving requests",
        Duration::from_secs(30),
    )
    .await;
    let a_watch: Vec<String> = watches(&h).await.difference(&before).cloned().collect();
    assert!(!a_watch.is_empty(), "A watches the status bucket");
    h.open("s", AuctionSpec::with_capacity(5)).await;

    let bucket = format!("KV_{}", h.client.subjects.status_bucket());
    let stream = h.js.get_stream(bucket).await.unwrap();
    for name in &a_watch {
        stream.delete_consumer(name).await.unwrap();
    }
    let lost = Instant::now();
    // Requests go to A or B at random (a queue group).
    let refused = sell_out(&h.client, "s").await;
    eprintln!(
        "sold out, {} bids refused, {:?} after A's watch was lost",
        refused.len(),
        lost.elapsed()
    );
    b.kill().unwrap();
    // A's view may lag for up to a second after a sell-out when its watch
    // stalls without a word: then it notices, and reads the status.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut accepted = Vec::new();
    for request in &refused {
        if let BidReply::Accepted { .. } = answer(&h.client, "s", request).await {
            accepted.push((request.bid_id.clone(), lost.elapsed()));
        }
    }
    eprintln!("A's warnings: {:#?}", log_lines(&log("a"), "WARN"));
    assert!(
        accepted.is_empty(),
        "bids refused sold_out were accepted when resent through A (time after its watch was lost): {accepted:?}"
    );
    h.wait_until_decided().await;
    let outcomes = h.outcomes(Some("s")).await;
    for request in &refused {
        assert!(
            !outcomes.iter().any(|o| o.bid_id == request.bid_id),
            "bid {} was refused, and has an outcome",
            request.bid_id
        );
    }
    // A starts its watch again, as at a start, and its view is current
    // again (it logged so once at its start).
    let noticed = Instant::now();
    while log_lines(&log("a"), "the auction view is current").len() < 2 {
        assert!(
            noticed.elapsed() < Duration::from_secs(10),
            "A's view is not current again: {:#?}",
            log_lines(&log("a"), "view")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(log_lines(&log("a"), "watching again").len(), 1);
}

/// The node leading a stream.
async fn leader(h: &Harness, stream: &str) -> Option<String> {
    let mut stream = h.js.get_stream(stream).await.ok()?;
    stream.info().await.ok()?.cluster.clone()?.leader
}

/// Moves the leadership of the service's streams and buckets off node
/// `node`: freezing a leader means an election (seconds) before anything
/// is written again, which is another fault than the one tested here.
async fn lead_elsewhere(h: &Harness, node: &str) {
    for stream in [
        "ALLOT_TRIES",
        "ALLOT_OUTCOMES",
        "KV_ALLOT_STATUS",
        "KV_ALLOT_LEASES",
    ] {
        let stepdown = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
        for _ in 0..20 {
            if leader(h, stream).await.is_some_and(|l| l != node) {
                break;
            }
            let _ = h.client.client.request(stepdown.clone(), "".into()).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let now = leader(h, stream).await;
        assert!(
            now.as_deref().is_some_and(|l| l != node),
            "{stream} is still led by {now:?}"
        );
    }
}

/// An `allot serve --role gateway` given every node of a 3-node cluster
/// is connected to one; that node freezes. Bids through the service must
/// succeed again within 8 s: the gateway notices the silent connection
/// (pings) and moves to another node. Before the fix it stayed on the
/// frozen node for minutes (the client pinged every 60 s), and no bid
/// succeeded until the node woke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_node_freezes_serves_again_within_seconds() {
    let (h, nodes) = cluster_harness().await;
    let logs = tempfile::tempdir().unwrap();
    let log = |name: &str| logs.path().join(format!("{name}.log"));
    let dir = tempfile::tempdir().unwrap();
    // A bid is accepted once its try is in the log: no verifier needed.
    let gateway = serve_logged(
        &h.nats_url,
        dir.path(),
        &["--role", "gateway", "--replicas", "3"],
        &log("g"),
    );
    wait_for_log(
        &log("g"),
        "gateway serving requests",
        Duration::from_secs(60),
    )
    .await;
    // The node the gateway is connected to, and a client on another one.
    let node_urls = [h.server.url(), nodes[0].url(), nodes[1].url()];
    let peers = peer_ports(gateway.id());
    let on = (0..3)
        .find(|&i| peers.contains(&port_of(node_urls[i])))
        .expect("the gateway is connected to a node");
    let (name, url) = (format!("n{}", on + 1), node_urls[on]);
    let elsewhere = node_urls[(on + 1) % 3];
    let mut client = AllotClient::new(
        allot::client::connect(elsewhere).await.unwrap(),
        Subjects::default(),
    );
    client.timeout = Duration::from_millis(500);
    h.open(
        "p",
        AuctionSpec {
            max_wins_per_bidder: 1_000,
            ..AuctionSpec::with_capacity(100_000)
        },
    )
    .await;
    let first = answer(&client, "p", &bid("warm", "u", 10)).await;
    assert!(matches!(first, BidReply::Accepted { .. }), "{first:?}");
    lead_elsewhere(&h, &name).await;

    let frozen = Frozen::freeze(listener_pid(port_of(url)));
    let frozen_at = Instant::now();
    let mut served_again = None;
    for i in 0.. {
        if frozen_at.elapsed() > Duration::from_secs(20) {
            break;
        }
        let sent = Instant::now();
        let reply = client.bid("p", &bid(&format!("f{i}"), "u", 10)).await;
        if matches!(reply, Ok(BidReply::Accepted { .. })) {
            served_again = Some(sent.duration_since(frozen_at));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    frozen.thaw();
    eprintln!(
        "gateway on {name} (frozen): a bid sent {served_again:?} after the freeze was accepted; its log: {:#?}",
        log_lines(&log("g"), "allot::client")
    );
    let served_again = served_again.expect("bids succeed again while the node is frozen");
    assert!(
        served_again < Duration::from_secs(8),
        "bids succeeded again only {served_again:?} after the freeze"
    );
}
