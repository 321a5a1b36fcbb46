//! Backup and restore, as docs/operating.md describes it (a cold backup):
//! stop `allot serve`, stop nats-server, copy its store directory (`-sd`)
//! and allot's data directory, then start a fresh nats-server on a copy of
//! the store (another directory, another port) and `allot serve` on a copy
//! of the data directory. The restored log keeps every sequence number, so
//! the outcomes (which name their tries by `try_seq`) still fit it: the
//! audit is clean, the streams equal the original's, resent bids that
//! wait get their original reply, and bidding goes on.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use allot::audit;
use allot::nats_server::NatsServer;
use allot::wire::{
    AuctionSpec, BidReply, ErrorCode, OutcomeEvent, OutcomeKind, Policy, RejectReason,
};
use common::{bid, listener_pid, port_of, serve_process, wait_exit, Harness, Serve, Stored};

/// The store directory (`-sd`) of the nats-server listening on `url`, read
/// from its command line.
fn store_dir(url: &str) -> PathBuf {
    let pid = listener_pid(port_of(url));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let i = args
        .iter()
        .position(|a| a == "-sd")
        .expect("a -sd argument");
    PathBuf::from(&args[i + 1])
}

/// `cp -a`: every file and directory under `from`, into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Stops `allot serve` as an operator would (SIGTERM) and waits for it.
async fn stop_serve(mut serve: Serve) {
    let status = std::process::Command::new("kill")
        .arg(serve.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        wait_exit(&mut serve, 15).await.success(),
        "serve stops cleanly"
    );
}

async fn serving(h: &Harness) {
    h.wait_until_serving().await;
    h.wait_until_verifying().await;
}

/// The whole log and outcome stream: sequence, subject and payload.
async fn streams(h: &Harness) -> (Vec<(u64, String, Vec<u8>)>, Vec<OutcomeEvent>) {
    let s = &h.client.subjects;
    let log = h.read_stream(&s.tries_stream(), ">").await;
    let key = |m: Stored| (m.seq, m.subject, m.payload.to_vec());
    (log.into_iter().map(key).collect(), h.outcomes(None).await)
}

async fn accepted(
    h: &Harness,
    auction: &str,
    bid_id: &str,
    bidder: &str,
    amount: u64,
) -> (u64, u32) {
    match h
        .client
        .bid(auction, &bid(bid_id, bidder, amount))
        .await
        .unwrap()
    {
        BidReply::Accepted {
            try_seq, try_index, ..
        } => (try_seq, try_index),
        other => panic!("{bid_id} on {auction}: {other:?}"),
    }
}

#[tokio::test]
async fn a_cold_backup_restores_into_a_fresh_server_and_bidding_goes_on() {
    let started = Instant::now();
    let h = Harness::server_only().await;
    let serve = serve_process(&h, &[], &[]);
    serving(&h).await;

    // A workload: a first_n auction with room left, one that sold out,
    // and a ranked auction held open (its best two held, the rest outbid).
    h.open("fixed", AuctionSpec::with_capacity(10)).await;
    h.open("small", AuctionSpec::with_capacity(2)).await;
    let ranked = AuctionSpec {
        policy: Policy::TopAmount,
        ..AuctionSpec::with_capacity(2)
    };
    h.open("ranked", ranked).await;
    let mut sent = Vec::new();
    for i in 0..6u64 {
        let (id, who) = (format!("f{i}"), format!("u{i}"));
        sent.push((
            "fixed",
            id.clone(),
            who.clone(),
            5,
            accepted(&h, "fixed", &id, &who, 5).await,
        ));
    }
    for i in 0..2u64 {
        let (id, who) = (format!("s{i}"), format!("u{i}"));
        sent.push((
            "small",
            id.clone(),
            who.clone(),
            5,
            accepted(&h, "small", &id, &who, 5).await,
        ));
    }
    for (i, amount) in [10u64, 40, 20, 30].into_iter().enumerate() {
        let (id, who) = (format!("r{i}"), format!("u{i}"));
        let seq = accepted(&h, "ranked", &id, &who, amount).await;
        sent.push(("ranked", id, who, amount, seq));
    }
    h.wait_until_decided().await;
    let s = h.client.subjects.clone();
    let before = audit::run(&h.js, &s, None, Some(h.data_dir()))
        .await
        .unwrap();
    assert_eq!(before.differences, Vec::<String>::new());
    // 8 confirmed, 2 of the ranked outbid; its best two are still held.
    assert_eq!((before.decided, before.outcomes), (10, 10));
    let (log, outcomes) = streams(&h).await;

    // The backup: stop allot serve, then nats-server, and copy both.
    let store = store_dir(h.server.url());
    stop_serve(serve).await;
    let mut h = h;
    h.server.stop();
    let backup = tempfile::tempdir().unwrap();
    copy_dir(&store, &backup.path().join("store"));
    copy_dir(h.data_dir(), &backup.path().join("data"));
    drop(h);

    // The restore: a fresh server in another directory, on another port,
    // stopped while the copy goes in, then started on it.
    let mut fresh = NatsServer::start().unwrap();
    let fresh_store = store_dir(fresh.url());
    assert_ne!(fresh_store, store);
    fresh.stop();
    std::fs::remove_dir_all(&fresh_store).unwrap();
    copy_dir(&backup.path().join("store"), &fresh_store);
    fresh.restart().unwrap();
    let h = Harness::on(fresh, None).await;
    copy_dir(&backup.path().join("data"), h.data_dir());

    // The restored streams are the original's, sequence for sequence.
    let (log_after, outcomes_after) = streams(&h).await;
    assert_eq!(log_after, log, "the log is restored exactly");
    assert_eq!(
        outcomes_after, outcomes,
        "the outcomes are restored exactly"
    );

    let serve = serve_process(&h, &[], &[]);
    serving(&h).await;
    h.wait_until_decided().await;
    let after = audit::run(&h.js, &s, None, Some(h.data_dir()))
        .await
        .unwrap();
    assert_eq!(after.differences, Vec::<String>::new());
    assert_eq!(after, before, "the restored service decided nothing anew");

    // Every resend that waits for its decision gets its original try,
    // though this restored gateway never saw it: the verifier answers.
    for (auction, id, who, amount, seq) in &sent {
        let resend = allot::wire::BidRequest {
            wait: true,
            ..bid(id, who, *amount)
        };
        let reply = h.client.bid(auction, &resend).await.unwrap();
        let original = match reply {
            BidReply::Accepted {
                try_seq,
                try_index,
                duplicate,
                ..
            }
            | BidReply::Confirmed {
                try_seq,
                try_index,
                duplicate,
                ..
            }
            | BidReply::Cancelled {
                try_seq,
                try_index,
                duplicate,
                ..
            } => ((try_seq, try_index), duplicate),
            other => panic!("resend of {id}: {other:?}"),
        };
        assert_eq!(original, (*seq, true), "resend of {id}");
    }
    // New bids are accepted after the restored log and decided; the
    // ranked auction closes and its best two win.
    let last = log.last().unwrap().0;
    for i in 6..9u64 {
        let (id, who) = (format!("f{i}"), format!("u{i}"));
        assert!(accepted(&h, "fixed", &id, &who, 5).await.0 > last);
    }
    h.client.close("ranked").await.unwrap();
    h.wait_for_outcomes("fixed", 9).await;
    let ranked = h.wait_for_outcomes("ranked", 4).await;
    h.wait_until_decided().await;
    let mut won: Vec<&str> = ranked
        .iter()
        .filter(|o| o.kind == OutcomeKind::Confirmed)
        .map(|o| o.bid_id.as_str())
        .collect();
    won.sort();
    assert_eq!(won, ["r1", "r3"]);
    let end = audit::run(&h.js, &s, None, Some(h.data_dir()))
        .await
        .unwrap();
    assert_eq!(end.differences, Vec::<String>::new());
    assert_eq!((end.decided, end.outcomes), (15, 15));
    stop_serve(serve).await;
    eprintln!("backup and restore: {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// What removing a partition's settled history does (the retention
/// section of docs/operating.md): its tries share entries with other
/// auctions of the partition, so the log is cut by sequence, below the
/// first event of an auction that is kept. The audit of the streams stays
/// clean, the verifier's snapshot still holds the removed auction until
/// it is rebuilt, a resend of a removed bid is told to come back until
/// the snapshot is rebuilt (serve stopped, snapshot deleted), and then
/// that the auction is unknown.
#[tokio::test]
async fn cutting_a_partitions_settled_history_leaves_the_rest_consistent() {
    let mut h = Harness::start().await;
    h.open("old", AuctionSpec::with_capacity(3)).await;
    for i in 0..3u64 {
        let (id, who) = (format!("o{i}"), format!("u{i}"));
        accepted(&h, "old", &id, &who, 5).await;
    }
    h.client.close("old").await.unwrap();
    h.wait_for_outcomes("old", 3).await;
    h.wait_until_decided().await;
    let s = allot::streams::log_subjects(&h.js, h.client.subjects.clone())
        .await
        .unwrap();
    let mut log = h.js.get_stream(s.tries_stream()).await.unwrap();
    let cut = log.info().await.unwrap().state.last_sequence + 1;
    // An auction kept, in the same partition, after the cut.
    let kept = (0..)
        .map(|i| format!("kept{i}"))
        .find(|a| s.partition(a) == s.partition("old"))
        .unwrap();
    h.open(&kept, AuctionSpec::with_capacity(5)).await;
    for i in 0..3u64 {
        let (id, who) = (format!("k{i}"), format!("u{i}"));
        accepted(&h, &kept, &id, &who, 5).await;
    }
    h.wait_for_outcomes(&kept, 3).await;

    // The cut: the partition's log below it, the removed auction's
    // outcomes, its status key.
    log.purge()
        .filter(s.log_partition(s.partition("old")))
        .sequence(cut)
        .await
        .unwrap();
    // The outcomes: the partition's entries below the first that holds an
    // outcome of a try at or above the cut (and any stored alone by an
    // earlier version, by subject).
    let p = s.partition("old");
    let entries = h
        .read_stream(&s.outcomes_stream(), &s.outcomes_entry(p))
        .await;
    let outcome_cut = entries
        .iter()
        .find(|m| {
            allot::wire::outcomes_in(&s, &m.subject, &m.payload)
                .unwrap()
                .iter()
                .any(|o| o.try_seq >= cut)
        })
        .expect("the kept auction's outcomes")
        .seq;
    assert!(
        outcome_cut > entries[0].seq,
        "the old auction's are before it"
    );
    let outcomes = h.js.get_stream(s.outcomes_stream()).await.unwrap();
    outcomes
        .purge()
        .filter(s.outcomes_entry(p))
        .sequence(outcome_cut)
        .await
        .unwrap();
    outcomes
        .purge()
        .filter(s.outcomes(Some("old")))
        .await
        .unwrap();
    let status = h.js.get_key_value(s.status_bucket()).await.unwrap();
    status.purge("old").await.unwrap();

    // The streams alone audit clean; the snapshot still has the auction.
    let streams_only = audit::run(&h.js, &s, None, None).await.unwrap();
    assert_eq!(streams_only.differences, Vec::<String>::new());
    assert_eq!((streams_only.decided, streams_only.outcomes), (3, 3));
    let with_snapshot = audit::run(&h.js, &s, None, Some(h.data_dir()))
        .await
        .unwrap();
    assert_eq!(
        with_snapshot.differences.len(),
        3,
        "o0, o1, o2 in the snapshot only"
    );

    // A resend of a purged bid.
    // A resend of a purged bid: the snapshot knows it, the log no longer
    // has it, so it is told to come back, until the snapshot is rebuilt.
    let resend = h.client.bid("old", &bid("o0", "u0", 5)).await.unwrap();
    assert!(
        matches!(
            resend,
            BidReply::Error {
                error: ErrorCode::Unavailable,
                ..
            }
        ),
        "{resend:?}"
    );

    // With the snapshot deleted (serve stopped), it is rebuilt without it.
    h.stop_service().await;
    for f in h.snapshot_files() {
        let _ = std::fs::remove_file(f);
    }
    h.start_service().await;
    h.wait_until_decided().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rebuilt = audit::run(&h.js, &s, None, Some(h.data_dir()))
        .await
        .unwrap();
    assert_eq!(rebuilt.differences, Vec::<String>::new());
    assert_eq!(rebuilt.snapshot, Some(3));
    // Then the purged auction is unknown, a final refusal.
    let resend = h.client.bid("old", &bid("o0", "u0", 5)).await.unwrap();
    assert!(
        matches!(
            resend,
            BidReply::Rejected {
                reason: RejectReason::UnknownAuction,
                ..
            }
        ),
        "{resend:?}"
    );
    let kept = audit::run(&h.js, &s, Some(&kept), None).await.unwrap();
    assert_eq!((kept.decided, kept.differences.len()), (3, 0));
}
