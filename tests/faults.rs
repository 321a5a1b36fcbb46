//! Faults outside the service: NATS itself stops and comes back.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use allot::wire::{AuctionSpec, BidReply};
use common::{assert_replay_matches_outcomes, one_outcome_per_bid, Bidders, Harness};

/// nats-server is stopped and restarted (same store, same port) while bids
/// flow. The service reconnects by itself; clients get errors (not hangs)
/// while it is down and resend; afterwards every accepted bid has exactly
/// one outcome and a replay of the log agrees with all of them.
#[tokio::test]
async fn nats_restart_mid_run_loses_and_doubles_nothing() {
    let mut h = Harness::server_only().await;
    let mut serve = common::serve_process(&h, &[], &[]);
    h.wait_until_serving().await;
    h.open(
        "n",
        AuctionSpec {
            max_wins_per_bidder: 2,
            ..AuctionSpec::with_capacity(400)
        },
    )
    .await;

    let bidders = Bidders::start(&h, "n", 8, 300);
    bidders.reach(150).await;
    let before = bidders.accepted_now();
    // Down for longer than a bid's 2 s timeout, so that bidders see it.
    h.server.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    h.server
        .restart()
        .expect("nats-server restarts on its store");
    bidders.reach(before + 150).await;
    let failed = bidders.failed.load(Ordering::Relaxed);
    let slowest = bidders.slowest_ms.load(Ordering::Relaxed);
    let accepted = bidders.stop().await;
    assert!(failed > 0, "the outage was seen by the bidders");
    assert!(slowest < 10_000, "a bid attempt hung for {slowest} ms");

    h.settled_outcomes("n", &accepted).await;
    serve.kill().unwrap();
    serve.wait().unwrap();
}

/// The verifier (the whole `allot serve` process) is killed with SIGKILL
/// three times at irregular moments during a load test with duplicate
/// submissions, and restarted each time. The load test's invariant check is
/// the oracle: every accepted bid exactly one outcome, no auction over its
/// capacity, confirmed = min(capacity, eligible tries); and an offline
/// replay of the log agrees with every published outcome.
#[tokio::test]
async fn verifier_crash_loop_under_load_keeps_every_invariant() {
    crash_loop(allot::loadtest::workload::Workload {
        auctions: 10,
        capacity: 300,
        bidders: 2000,
        max_wins_per_bidder: 2,
        requests: Some(8000),
        rate: Some(2000.0),
        concurrency: 256,
        duplicates: 0.02,
        run_id: "crashloop".into(),
        ..Default::default()
    })
    .await;
}

/// The same with the whole lifecycle: ranked auctions, withdraws (some
/// racing their bid), raises, and a deadline close in the middle of the
/// kills. Holds, tombstones and closes must survive each kill.
#[tokio::test]
async fn verifier_crash_loop_with_the_whole_lifecycle_keeps_every_invariant() {
    crash_loop(allot::loadtest::workload::Workload {
        auctions: 10,
        capacity: 100,
        bidders: 2000,
        max_wins_per_bidder: 2,
        requests: Some(8000),
        rate: Some(2000.0),
        concurrency: 256,
        duplicates: 0.02,
        policy: allot::wire::Policy::TopAmount,
        withdraws: 0.1,
        early_withdraws: 0.05,
        raises: 0.1,
        close_after_secs: Some(3.0),
        run_id: "crashlife".into(),
        ..Default::default()
    })
    .await;
}

/// Kills `allot serve` (SIGKILL) three times while `workload` runs.
async fn crash_loop(workload: allot::loadtest::workload::Workload) {
    use allot::loadtest::{self, Options, Strategy};

    let lifecycle = workload.withdraws > 0.0;
    let h = Harness::server_only().await;
    let mut serve = common::serve_process(&h, &[], &[]);
    h.wait_until_serving().await;
    let mut client = h.client.clone();
    client.timeout = Duration::from_secs(2);
    let options = Options {
        workload,
        strategies: vec![Strategy::Tcc],
        progress: false,
        // Generous: restarts of a debug build on a busy machine are slow.
        settle: Duration::from_secs(60),
        // A bid that meets a dead gateway is resent, with the same bid id,
        // for up to 5 s.
        attempts: 50,
        ..Options::default()
    };
    let run = tokio::spawn(async move { loadtest::run(&client, &options).await });

    // Irregular gaps from the clock's low bits: 0.6 to 1.4 s. The first
    // kill comes once tries are being appended.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let log_end = || async {
        let mut log = h.js.get_stream("ALLOT_TRIES").await.unwrap();
        log.info().await.unwrap().state.last_sequence
    };
    for kill in 0..3u64 {
        let gap = 600 + (nanos >> (kill * 7)) % 800;
        tokio::time::sleep(Duration::from_millis(gap)).await;
        if kill == 0 {
            for _ in 0..100 {
                if log_end().await > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(log_end().await > 0, "tries flow before the first kill");
        } else {
            // A restart on a busy machine can take longer than the gap:
            // the next kill waits until the restarted process answers and
            // decides (10 s at most each). Not until tries flow: they
            // stop once the auctions sell out.
            h.wait_until_serving().await;
            h.wait_until_verifying().await;
        }
        serve.kill().expect("kill -9");
        serve.wait().unwrap();
        serve = common::serve_process(&h, &[], &[]);
    }
    let outcome = run.await.unwrap().expect("the load test runs");
    let report = &outcome.reports[0];
    assert!(report.invariants.ok, "{:?}", report.invariants.violations);
    // Enough to have meant something: on a busy machine the restarts are
    // slow, and the lifecycle run's auctions close after 3 s.
    assert!(
        report.accepted > 500,
        "bids got through: {}",
        report.accepted
    );
    let l = &report.lifecycle;
    eprintln!(
        "lifecycle: {l:?}; auctions replayed {} (not: {})",
        report.invariants.replayed, report.invariants.not_replayed
    );
    if lifecycle {
        assert!(
            l.withdrawn > 0 && l.empty_rollbacks > 0 && l.raised > 0,
            "{l:?}"
        );
        assert!(
            report.invariants.replayed > 0,
            "some auction checked in full"
        );
    }
    h.wait_until_decided().await;
    assert_replay_matches_outcomes(&h).await;
    serve.kill().unwrap();
    serve.wait().unwrap();
}

/// Places `n` bids on `auction`, one bidder each; all must be accepted.
async fn place(h: &Harness, auction: &str, n: u32) -> usize {
    for i in 0..n {
        let reply = h
            .client
            .bid(
                auction,
                &common::bid(&format!("b{i}"), &format!("u{i}"), 10),
            )
            .await
            .unwrap();
        assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    }
    n as usize
}

/// The durable consumer of the verifier deciding `auction_id`, as the
/// server sees it.
async fn verifier_consumer(h: &Harness, auction_id: &str) -> async_nats::jetstream::consumer::Info {
    let log = h.js.get_stream("ALLOT_TRIES").await.unwrap();
    let p = h.client.subjects.partition(auction_id);
    let name = allot::wire::names::verifier_consumer(allot::wire::names::VERIFIER_CONSUMER, p);
    // The verifier makes it when it starts deciding the partition.
    for _ in 0..200 {
        if let Ok(info) = log.consumer_info(&name).await {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no consumer {name}");
}

/// The verifier stalls past the consumer's ack wait, so JetStream delivers
/// the same tries again while they are being finished: nothing is decided
/// or published twice.
#[tokio::test]
async fn redelivery_past_the_ack_wait_has_no_duplicate_effect() {
    let h = Harness::server_only().await;
    let mut serve = common::serve_process(
        &h,
        &["--ack-wait-secs", "1"],
        &[("ALLOT_STALL_AT", "before_ack:2500")],
    );
    h.wait_until_serving().await;
    // Room for every bid: a sold-out notice would turn later ones into
    // fast rejects, depending on how quickly the first batch is decided.
    h.open("r", AuctionSpec::with_capacity(60)).await;
    let accepted = place(&h, "r", 60).await;
    h.wait_for_outcomes("r", accepted).await;
    h.wait_until_decided().await;
    // More deliveries than log entries: some were delivered twice.
    let delivered = verifier_consumer(&h, "r").await.delivered;
    assert!(
        delivered.consumer_sequence > delivered.stream_sequence,
        "the stall made JetStream redeliver: {delivered:?}"
    );
    let outcomes = h.outcomes(Some("r")).await;
    assert_eq!(outcomes.len(), accepted);
    one_outcome_per_bid(&outcomes);
    assert_replay_matches_outcomes(&h).await;
    serve.kill().unwrap();
    serve.wait().unwrap();
}

/// The snapshot cannot be written for 3 s (as with a full disk): nothing is
/// acked or published meanwhile, bids are still accepted, and once writes
/// work again every bid is decided exactly once.
#[tokio::test]
async fn a_failing_snapshot_write_stops_acks_until_it_works_again() {
    let h = Harness::server_only().await;
    let mut serve = common::serve_process(&h, &[], &[("ALLOT_FAIL_AT", "commit:3000")]);
    h.wait_until_serving().await;
    h.open("f", AuctionSpec::with_capacity(100)).await;
    let accepted = place(&h, "f", 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let consumer = verifier_consumer(&h, "f").await;
    assert_eq!(
        consumer.ack_floor.stream_sequence, 0,
        "nothing acked while the snapshot cannot be written"
    );
    assert!(h.outcomes(Some("f")).await.is_empty(), "nothing published");

    h.wait_for_outcomes("f", accepted).await;
    h.wait_until_decided().await;
    let outcomes = h.outcomes(Some("f")).await;
    assert_eq!(outcomes.len(), accepted);
    one_outcome_per_bid(&outcomes);
    assert_replay_matches_outcomes(&h).await;
    serve.kill().unwrap();
    serve.wait().unwrap();
}

/// A gateway process is killed with SIGKILL mid-run while a separate
/// verifier process keeps going. Bids answered `accepted` are never lost;
/// bidders that got no answer resend the same bid id to the restarted
/// gateway, safely.
#[tokio::test]
async fn gateway_crash_loses_no_accepted_bid() {
    let h = Harness::server_only().await;
    let verifier = common::serve_process(&h, &["--role", "verifier"], &[]);
    let mut gateway = common::serve_process(&h, &["--role", "gateway"], &[]);
    h.wait_until_serving().await;
    h.open("g", AuctionSpec::with_capacity(10_000)).await;

    let bidders = Bidders::start(&h, "g", 8, 100_000);
    bidders.reach(150).await;
    gateway.kill().expect("kill -9 the gateway");
    gateway.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = bidders.accepted_now();
    let gateway = common::serve_process(&h, &["--role", "gateway"], &[]);
    bidders.reach(before + 150).await;
    let failed = bidders.failed.load(Ordering::Relaxed);
    let accepted = bidders.stop().await;
    assert!(failed > 0, "bidders saw the gateway gone");

    h.settled_outcomes("g", &accepted).await;
    for mut child in [gateway, verifier] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// With NATS gone for good, a stop signal still stops `allot serve`: every
/// wait on NATS during shutdown is bounded, and the failure is reported.
#[tokio::test]
async fn serve_stops_on_sigterm_even_with_nats_gone() {
    let mut h = Harness::server_only().await;
    let mut serve = common::serve_process(&h, &[], &[]);
    h.wait_until_serving().await;
    h.open("s", AuctionSpec::with_capacity(5)).await;
    h.client
        .bid("s", &common::bid("b1", "u1", 10))
        .await
        .unwrap();
    h.server.kill();
    let term = std::process::Command::new("kill")
        .arg(serve.id().to_string())
        .status()
        .unwrap();
    assert!(term.success());
    let status = common::wait_exit(&mut serve, 20).await;
    assert!(
        !status.success(),
        "NATS gone before the last flush is an error"
    );
}
