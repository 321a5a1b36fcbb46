//! Restarts: with the snapshot, without it, and after `kill -9` of a real
//! `allot serve` process in the middle of a bidding run.

use crate::common;

use std::time::Duration;

use allot::wire::{AuctionSpec, BidReply, BidRequest, OutcomeKind};
use common::{assert_replay_matches_outcomes, one_outcome_per_bid, Bidders, Harness};

fn bid(bid_id: String, bidder: String) -> BidRequest {
    BidRequest {
        bid_id,
        bidder_id: bidder,
        amount: 10,
        wait: false,
    }
}

/// Places one bid per bidder; returns how many were accepted (once the
/// auction is sold out, the gateway may refuse the rest).
async fn place(h: &Harness, auction: &str, range: std::ops::Range<u32>) -> usize {
    let mut accepted = 0;
    for i in range {
        let request = bid(format!("b{i}"), format!("u{i}"));
        // Resent while the verifier rebuilds: until it has decided a
        // sold-out auction's tries, a gateway cannot tell a new bid from a
        // resend, and asks for the bid again.
        match common::bid_resent_while_unavailable(h, auction, &request).await {
            BidReply::Accepted { .. } => accepted += 1,
            BidReply::Rejected {
                reason: allot::wire::RejectReason::SoldOut,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
    }
    accepted
}

fn ranks(outcomes: &[allot::wire::OutcomeEvent]) -> Vec<u32> {
    let mut ranks: Vec<u32> = outcomes.iter().filter_map(|o| o.rank).collect();
    ranks.sort_unstable();
    ranks
}

#[tokio::test]
async fn restart_resumes_from_the_snapshot() {
    let mut h = Harness::start().await;
    h.open("r", AuctionSpec::with_capacity(10)).await;
    place(&h, "r", 0..6).await;
    h.wait_for_outcomes("r", 6).await;
    h.stop_service().await;
    assert!(h.snapshot_files()[0].exists(), "snapshot written");

    h.start_service().await;
    let total = 6 + place(&h, "r", 6..14).await;
    let outcomes = h.wait_for_outcomes("r", total).await;
    h.wait_until_decided().await;
    let outcomes_later = h.outcomes(Some("r")).await;
    assert_eq!(outcomes_later.len(), total, "nothing published twice");
    one_outcome_per_bid(&outcomes);
    assert_eq!(ranks(&outcomes), (1..=10).collect::<Vec<_>>());
    assert_replay_matches_outcomes(&h).await;
}

#[tokio::test]
async fn a_lost_snapshot_is_rebuilt_from_the_streams_without_duplicates() {
    let mut h = Harness::start().await;
    h.open("r", AuctionSpec::with_capacity(10)).await;
    place(&h, "r", 0..6).await;
    h.wait_for_outcomes("r", 6).await;
    h.stop_service().await;
    for file in h.snapshot_files() {
        let _ = std::fs::remove_file(file);
    }

    h.start_service().await;
    let total = 6 + place(&h, "r", 6..14).await;
    let outcomes = h.wait_for_outcomes("r", total).await;
    h.wait_until_decided().await;
    assert_eq!(
        h.outcomes(Some("r")).await.len(),
        total,
        "old outcomes not republished"
    );
    one_outcome_per_bid(&outcomes);
    // The rebuilt state knew 6 slots were taken: the next ones are 7..10.
    assert_eq!(ranks(&outcomes), (1..=10).collect::<Vec<_>>());
    assert_replay_matches_outcomes(&h).await;

    // And the rebuilt snapshot is complete: a plain restart changes nothing.
    h.stop_service().await;
    h.start_service().await;
    let more = place(&h, "r", 14..15).await;
    h.wait_for_outcomes("r", total + more).await;
    assert_eq!(h.outcomes(Some("r")).await.len(), total + more);
    assert_replay_matches_outcomes(&h).await;
}

fn serve(h: &Harness) -> common::Serve {
    common::serve_process(h, &[], &[])
}

#[tokio::test]
async fn kill_9_mid_run_leaves_every_accepted_bid_with_one_outcome() {
    let h = Harness::server_only().await;
    let mut child = serve(&h);
    h.wait_until_serving().await;
    h.open(
        "k",
        AuctionSpec {
            max_wins_per_bidder: 2,
            ..AuctionSpec::with_capacity(1000)
        },
    )
    .await;

    // Eight bidders send bids without pause. A bid that gets no answer (the
    // service is down) is resent with the same bid id until it does.
    let bidders = Bidders::start(&h, "k", 8, 400);

    // Kill while bids are flowing, restart, and keep bidding through it.
    bidders.reach(150).await;
    child.kill().expect("kill -9");
    child.wait().unwrap();
    let before = bidders.accepted_now();
    let mut child = serve(&h);
    bidders.reach(before + 150).await;
    let accepted = bidders.stop().await;

    let outcomes = h.wait_for_outcomes("k", accepted.len()).await;
    h.wait_until_decided().await;
    let outcomes = {
        let later = h.outcomes(Some("k")).await;
        assert_eq!(later.len(), outcomes.len(), "no outcome published twice");
        later
    };
    let by_bid = one_outcome_per_bid(&outcomes);
    for bid_id in &accepted {
        assert!(
            by_bid.contains_key(bid_id),
            "accepted bid {bid_id} has no outcome"
        );
    }
    let confirmed = outcomes
        .iter()
        .filter(|o| o.kind == OutcomeKind::Confirmed)
        .count();
    assert!(confirmed <= 1000);
    assert_eq!(ranks(&outcomes), (1..=confirmed as u32).collect::<Vec<_>>());
    assert_replay_matches_outcomes(&h).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A crash right after each step of a batch (snapshot commit, outcome
/// publish, publish recorded) and a restart after JetStream's
/// de-duplication window has passed: every accepted bid still has exactly
/// one outcome, so recovery does not lean on de-duplication.
#[tokio::test]
async fn a_crash_after_each_step_of_a_batch_neither_loses_nor_doubles() {
    for point in ["after_commit", "after_publish", "before_ack"] {
        let h = Harness::server_only().await;
        // A gateway alone takes the first bids, so that the verifier's
        // first batch holds decisions.
        let mut gateway =
            common::serve_process(&h, &["--role", "gateway", "--dedupe-window-secs", "1"], &[]);
        h.wait_until_serving().await;
        h.open("c", AuctionSpec::with_capacity(3)).await;
        assert_eq!(place(&h, "c", 0..2).await, 2);

        let mut verifier = common::serve_process(
            &h,
            &["--role", "verifier"],
            &[(allot::faults::CRASH_AT, point)],
        );
        let status = common::wait_exit(&mut verifier, 20).await;
        assert!(!status.success(), "{point}: crashed ({status})");
        // Past the de-duplication window, a second publish would be stored.
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let mut verifier = common::serve_process(&h, &["--role", "verifier"], &[]);
        let accepted = 2 + place(&h, "c", 2..6).await;
        let outcomes = h.wait_for_outcomes("c", accepted).await;
        h.wait_until_decided().await;
        assert_eq!(h.outcomes(Some("c")).await.len(), outcomes.len(), "{point}");
        one_outcome_per_bid(&outcomes);
        assert_eq!(ranks(&outcomes), vec![1, 2, 3], "{point}");
        assert_replay_matches_outcomes(&h).await;
        for child in [&mut gateway, &mut verifier] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

/// The snapshot is lost, and the rebuild from the log is itself cut short
/// by a crash; the next start, after the de-duplication window, must still
/// find the outcomes published before and not publish them again.
#[tokio::test]
async fn an_interrupted_rebuild_publishes_nothing_twice() {
    let h = Harness::server_only().await;
    let mut first = common::serve_process(&h, &["--dedupe-window-secs", "1"], &[]);
    h.wait_until_serving().await;
    h.open("i", AuctionSpec::with_capacity(5)).await;
    let accepted = place(&h, "i", 0..20).await;
    h.wait_for_outcomes("i", accepted).await;
    h.wait_until_decided().await;
    first.kill().unwrap();
    first.wait().unwrap();
    for file in h.snapshot_files() {
        let _ = std::fs::remove_file(file);
    }

    // Rebuild in small batches, crashing after the first one is committed.
    let mut rebuild = common::serve_process(
        &h,
        &["--role", "verifier", "--batch-size", "4"],
        &[(allot::faults::CRASH_AT, "after_commit")],
    );
    let status = common::wait_exit(&mut rebuild, 20).await;
    assert!(!status.success(), "the rebuild crashed ({status})");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut verifier = common::serve_process(&h, &["--role", "verifier", "--batch-size", "4"], &[]);
    h.wait_until_decided().await;
    // Wait until the rebuild has gone through the whole log again.
    let outcomes = h.outcomes(Some("i")).await;
    assert_eq!(outcomes.len(), accepted, "nothing published twice");
    one_outcome_per_bid(&outcomes);
    assert_replay_matches_outcomes(&h).await;
    verifier.kill().unwrap();
    verifier.wait().unwrap();
}

/// On a log of one partition, a second verifier (another data directory,
/// as on another machine) stands by while the first holds its lease, and
/// takes over when the first dies.
#[tokio::test]
async fn a_second_verifier_stands_by_and_takes_over() {
    let h = Harness::server_only().await;
    let args = ["--lease-secs", "2", "--partitions", "1"];
    let mut first = common::serve_process(&h, &args, &[]);
    h.wait_until_serving().await;
    h.open("l", AuctionSpec::with_capacity(3)).await;
    let before = place(&h, "l", 0..2).await;
    h.wait_for_outcomes("l", before).await;

    let other = tempfile::tempdir().unwrap();
    let mut standby = common::serve_process_in(&h, other.path(), &args, &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        standby.try_wait().unwrap().is_none(),
        "the standby keeps running"
    );
    let owner = lease_owner(&h).await;
    assert!(
        owner.ends_with(&h.data_dir().display().to_string()),
        "{owner}"
    );

    // The first dies; the standby takes over and rebuilds from the log.
    first.kill().unwrap();
    first.wait().unwrap();
    // Patient: under the whole suite's load on two cores, the standby's
    // answer once took longer than the usual 10 s.
    h.wait_until_serving_for(Duration::from_secs(30)).await;
    let after = place(&h, "l", 2..6).await;
    let outcomes = h.wait_for_outcomes("l", before + after).await;
    h.wait_until_decided().await;
    assert_eq!(h.outcomes(Some("l")).await.len(), before + after);
    one_outcome_per_bid(&outcomes);
    assert_eq!(ranks(&outcomes), vec![1, 2, 3]);
    assert_replay_matches_outcomes(&h).await;
    let owner = lease_owner(&h).await;
    assert!(
        owner.ends_with(&other.path().display().to_string()),
        "{owner}"
    );
    standby.kill().unwrap();
    standby.wait().unwrap();
}

/// Who holds the lease of a log's only partition: host and data directory.
async fn lease_owner(h: &Harness) -> String {
    let bucket = h.js.get_key_value("ALLOT_LEASES").await.unwrap();
    let value = bucket
        .get("verifier.0")
        .await
        .unwrap()
        .expect("a lease is held");
    String::from_utf8(value.to_vec()).unwrap()
}

/// A damaged snapshot file stops `allot serve` with an error that says what
/// to do; doing it (deleting the file) rebuilds the snapshot with nothing
/// published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_truncated_snapshot_is_set_aside_and_rebuilt_without_duplicates() {
    let mut h = Harness::start().await;
    h.open("d", AuctionSpec::with_capacity(2)).await;
    let accepted = place(&h, "d", 0..4).await;
    h.wait_for_outcomes("d", accepted).await;
    let files = h.snapshot_files();

    // Overwritten with garbage, then (after a rebuild) cut in half.
    let damage: [&dyn Fn(&std::path::Path); 2] = [
        &|main| std::fs::write(main, vec![0x5a; 8192]).unwrap(),
        &|main| {
            let len = std::fs::metadata(main).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(main).unwrap();
            file.set_len(len / 2).unwrap();
        },
    ];
    for (round, damage) in damage.iter().enumerate() {
        h.stop_service().await;
        damage(&files[0]);
        for file in &files[1..] {
            let _ = std::fs::remove_file(file);
        }
        h.start_service().await;
        // A new auction's bid is decided after the whole log before it, so
        // its outcome shows the rebuild is done.
        let after = format!("after{round}");
        h.open(&after, AuctionSpec::with_capacity(1)).await;
        place(&h, &after, 0..1).await;
        h.wait_for_outcomes(&after, 1).await;
        h.wait_until_decided().await;
        assert_eq!(
            h.outcomes(Some("d")).await.len(),
            accepted,
            "round {round}: no outcome published twice"
        );
        assert_replay_matches_outcomes(&h).await;
    }
    let aside = (0..8)
        .map(|p| allot::wire::names::partition_dir(h.data_dir(), p))
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("allot.sqlite.damaged-")
        })
        .count();
    assert!(aside >= 1, "the damaged snapshot is kept for a post-mortem");
}
