//! A three-node JetStream cluster on 127.0.0.1, streams at three replicas.

use crate::common;

use std::time::Duration;

use futures::StreamExt;

use allot::wire::AuctionSpec;
use common::{
    assert_replay_matches_outcomes, bid, metric, one_outcome_per_bid, serve_process,
    serve_with_page, Bidders, Harness,
};

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
    let (h, mut others) = common::cluster_harness().await;
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
    let internal = bidders.internal.load(std::sync::atomic::Ordering::Relaxed);
    let accepted = bidders.stop().await;
    assert!(failed > 0, "the lost leader was noticed");
    // An election is expected and passes: bids told to come back are told
    // so with 503 `unavailable` and a hint, never 500 `internal`.
    assert_eq!(
        internal, 0,
        "internal errors while the log elected a leader"
    );
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

/// Places bid `b<i>` on `auction`; it must be accepted.
async fn place(h: &Harness, auction: &str, i: usize) {
    let reply = h
        .client
        .bid(auction, &bid(&format!("b{i}"), &format!("u{i}"), 10))
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

/// Two processes share the 8 partitions; the first freezes (`SIGSTOP`)
/// just before it publishes a batch of outcomes, and stays frozen past its
/// leases. The second takes every partition and decides those tries
/// itself. When the first wakes (`SIGCONT`) it goes on publishing the
/// batch it held: JetStream refuses every outcome of it (the fence), it
/// gives up the partitions it had, and the two share them again. Every bid
/// has exactly one outcome (with a de-duplication window of 1 s, only the
/// fence keeps the late outcomes out), and a replay of the log agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_frozen_past_its_lease_is_fenced_out_when_it_wakes() {
    let (h, _others) = common::cluster_harness().await;
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
    until_metric(&first_metrics, "allot_partitions_owned", PARTITIONS as f64).await;
    let (_second, second_metrics) = serve_with_page(&h, second_dir.path(), &common_args, &[]).await;
    // Stream creation waits on the cluster; serving starts after it.
    h.wait_until_serving_for(Duration::from_secs(120)).await;
    let pages = [first_metrics.clone(), second_metrics.clone()];
    owned_by(&pages, |owned| owned == [4, 4]).await;

    // An auction in one of the first's partitions: its first batch with
    // outcomes freezes the first.
    let leases = h.js.get_key_value("ALLOT_LEASES").await.unwrap();
    let first_owner = first_dir.path().display().to_string();
    let mut auction = None;
    for k in 0.. {
        let id = format!("f{k}");
        let key = format!("verifier.{}", h.client.subjects.partition(&id));
        let owner = leases.get(&key).await.unwrap().unwrap_or_default();
        if String::from_utf8_lossy(&owner).ends_with(&first_owner) {
            auction = Some(id);
            break;
        }
    }
    let auction = auction.unwrap();
    h.open(&auction, AuctionSpec::with_capacity(10)).await;
    let mut placed = 0;
    for i in 0..4 {
        place(&h, &auction, i).await;
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

    // The second takes every partition once the first's leases lapse, and
    // decides everything.
    let took = until_metric(&second_metrics, "allot_partitions_owned", PARTITIONS as f64).await;
    eprintln!("the second took every partition {took:?} after the owner froze (lease 3 s)");
    for i in 4..8 {
        place(&h, &auction, i).await;
        placed += 1;
    }
    h.wait_for_outcomes(&auction, placed).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The first wakes mid-batch: its outcomes are refused, it gives its
    // partitions up, and then the two share them again.
    std::process::Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status()
        .unwrap();
    // It gives up: the fence refused its held outcomes (`fenced`), or, when
    // their acks timed out first on waking, its lost leases told it.
    until_metric(&first_metrics, "allot_superseded_total", 4.0).await;
    let fenced = metric(&first_metrics, "allot_fenced_total").await;
    eprintln!("the woken owner gave up its 4 partitions; fenced: {fenced:?}");
    owned_by(&pages, |owned| owned == [4, 4]).await;

    for i in 8..10 {
        place(&h, &auction, i).await;
        placed += 1;
    }
    h.wait_for_outcomes(&auction, placed).await;
    h.wait_until_decided().await;
    let outcomes = h.outcomes(Some(&auction)).await;
    assert_eq!(outcomes.len(), placed, "nothing published twice");
    one_outcome_per_bid(&outcomes);
    assert_eq!(outcomes.iter().filter(|o| o.rank.is_some()).count(), 10);
    assert_replay_matches_outcomes(&h).await;
}

/// `n` `allot serve` processes on the cluster, the first alone until it
/// has made the streams (and taken every partition); then the others, and
/// once the partitions are divided fairly among them (each holds
/// `P / n` rounded down or up), their pages.
async fn sharing(h: &Harness, dirs: &[tempfile::TempDir]) -> (Vec<common::Serve>, Vec<String>) {
    let (mut serves, mut pages) = (Vec::new(), Vec::new());
    for dir in dirs {
        let args = ["--lease-secs", "3", "--replicas", "3"];
        let (serve, page) = serve_with_page(h, dir.path(), &args, &[]).await;
        if serves.is_empty() {
            until_metric(&page, "allot_partitions_owned", PARTITIONS as f64).await;
        }
        serves.push(serve);
        pages.push(page);
    }
    // Stream creation waits on the cluster; serving starts after it.
    h.wait_until_serving_for(Duration::from_secs(120)).await;
    let divided = owned_by(&pages, |owned| {
        let (low, high) = (PARTITIONS / dirs.len(), PARTITIONS.div_ceil(dirs.len()));
        owned.iter().sum::<usize>() == PARTITIONS
            && owned.iter().all(|&o| (low..=high).contains(&o))
    })
    .await;
    eprintln!(
        "{} serves divided the partitions in {divided:?}",
        dirs.len()
    );
    (serves, pages)
}

/// The default number of partitions.
const PARTITIONS: usize = allot::wire::DEFAULT_PARTITIONS as usize;

/// Polls the partitions each page's process owns until `want` holds of
/// them (60 s); returns how long that took. A page that does not answer
/// (its process is dead) counts as owning none.
async fn owned_by(pages: &[String], want: impl Fn(&[usize]) -> bool) -> Duration {
    let started = std::time::Instant::now();
    let mut owned = Vec::new();
    while started.elapsed() < Duration::from_secs(60) {
        owned.clear();
        for page in pages {
            let n = metric(page, "allot_partitions_owned").await;
            owned.push(n.unwrap_or(0.0) as usize);
        }
        if want(&owned) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("partitions owned stayed {owned:?} for 60 s");
}

/// Runs `allot loadtest` against the cluster's serves over 32 auctions of
/// `capacity` slots, for `seconds`; its exit status is the invariant
/// check's verdict.
fn loadtest(
    h: &Harness,
    seconds: u32,
    capacity: u32,
    report: &std::path::Path,
) -> std::process::Child {
    let (seconds, capacity) = (seconds.to_string(), capacity.to_string());
    std::process::Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["loadtest", "--auctions", "32", "--capacity", &capacity])
        .args(["--bidders", "400", "--max-wins", "1000000"])
        .args(["--concurrency", "32", "--duration", &seconds, "--report"])
        .arg(report)
        .env("NATS_URL", &h.nats_url)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("allot loadtest runs")
}

/// The loadtest's verdict and `allot audit --all` over the whole log.
async fn verdicts(h: &Harness, mut run: std::process::Child, report: &std::path::Path) {
    let status = tokio::task::spawn_blocking(move || run.wait())
        .await
        .unwrap()
        .unwrap();
    let text = std::fs::read_to_string(report).unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    assert!(
        status.success(),
        "the loadtest's invariant check failed: {}",
        report["runs"][0]["invariants"]
    );
    assert!(report.to_string().contains("accepted"), "{report}");
    h.wait_until_decided().await;
    let audit = common::allot(h, &["audit", "--all"]);
    assert!(
        audit.status.success(),
        "allot audit: {}{}",
        String::from_utf8_lossy(&audit.stdout),
        String::from_utf8_lossy(&audit.stderr)
    );
    assert_replay_matches_outcomes(h).await;
}

/// Two `allot serve` processes divide the partitions (four each) and
/// decide a loadtest over 32 auctions together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serves_share_the_partitions() {
    let (h, _others) = common::cluster_harness().await;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (_serves, pages) = sharing(&h, &dirs).await;
    let report = dirs[0].path().join("report.json");
    let run = loadtest(&h, 6, 20, &report);
    verdicts(&h, run, &report).await;
    owned_by(&pages, |owned| owned == [4, 4]).await;
}

/// Three `allot serve` processes divide the partitions and share the
/// requests; one is killed with SIGKILL under load. Its partitions move
/// to the other two once its leases lapse, and every accepted bid has
/// exactly one outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serves_share_the_partitions_and_survive_a_kill_9() {
    let (h, _others) = common::cluster_harness().await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut serves, pages) = sharing(&h, &dirs).await;
    // One probe auction per partition, to see when each decides again.
    let subjects = &h.client.subjects;
    let mut probes: Vec<Option<String>> = vec![None; PARTITIONS];
    for k in 0.. {
        let id = format!("probe-{k}");
        let slot = &mut probes[subjects.partition(&id) as usize];
        if slot.is_none() {
            h.open(&id, AuctionSpec::with_capacity(1_000_000)).await;
            *slot = Some(id);
        }
        if probes.iter().all(Option::is_some) {
            break;
        }
    }
    let probes: Vec<String> = probes.into_iter().flatten().collect();
    let mut outcomes = h
        .client
        .client
        .subscribe("allot.outcome.*.>")
        .await
        .unwrap();
    let report = dirs[0].path().join("report.json");
    // Never sold out: with one gateway killed mid-append, a resend that
    // another gateway rejects as sold out while the dead one's append
    // still lands is the documented limit of several gateways
    // (docs/guarantees.md, "Several gateways"), not what this test is about.
    let run = loadtest(&h, 12, 1_000_000, &report);
    tokio::time::sleep(Duration::from_secs(4)).await;

    serves[0].kill().unwrap();
    serves[0].wait().unwrap();
    let killed = std::time::Instant::now();
    let held = owned_by(&pages[1..], |owned| {
        owned.iter().sum::<usize>() == PARTITIONS
    })
    .await;
    // Every partition decides again: a bid placed after the kill on each
    // probe auction gets its outcome.
    let mut resumed: Vec<Option<Duration>> = vec![None; PARTITIONS];
    let mut round = 0;
    while resumed.iter().any(Option::is_none) {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "not deciding again: {resumed:?}"
        );
        round += 1;
        for (p, id) in probes.iter().enumerate() {
            if resumed[p].is_none() {
                let b = bid(&format!("after-{round}"), "prober", 1);
                let _ = h.client.bid(id, &b).await;
            }
        }
        let wait = tokio::time::sleep(Duration::from_millis(250));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                Some(m) = outcomes.next() => {
                    let Ok(o) = serde_json::from_slice::<allot::wire::OutcomeEvent>(&m.payload) else { continue };
                    if o.bid_id.starts_with("after-") {
                        let p = subjects.partition(&o.auction_id) as usize;
                        resumed[p].get_or_insert(killed.elapsed());
                    }
                }
            }
        }
    }
    let slowest = resumed.iter().flatten().max().copied().unwrap();
    eprintln!("after the kill (lease 3 s): every lease held in {held:?}, every partition deciding in {slowest:?}");
    // Within the lease, the survivors' next look, the fence and the
    // rebuild (about 4 s here), with room for a machine running the other
    // tests at once (figures in RELIABILITY.md).
    assert!(slowest < Duration::from_secs(20), "took {slowest:?}");
    verdicts(&h, run, &report).await;
}
