//! What operators see: the NATS micro service answers, the Prometheus
//! page and `allot status`, against a real `allot serve` process.

use crate::common;

use std::time::Duration;

use allot::wire::{AuctionSpec, BidReply};
use async_nats::service::{Info, PingResponse, Stats};
use common::{allot, bid, http_get, raw, serve_failure, serve_with_page, Harness};

async fn micro<T: serde::de::DeserializeOwned>(h: &Harness, subject: &str) -> T {
    let answer = h
        .client
        .client
        .request(subject.to_string(), "".into())
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&answer.payload).unwrap_or_else(|e| panic!("{subject}: {e}"))
}

fn allot_status(h: &Harness, args: &[&str]) -> String {
    let out = allot(h, &[&["status"], args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn micro_stats_metrics_page_and_status_count_what_happened() {
    let h = Harness::server_only().await;
    let (_serve, addr) = serve_with_page(&h, h.data_dir(), &[], &[]).await;
    h.wait_until_serving().await;
    h.open("obs", AuctionSpec::with_capacity(2)).await;

    // Three bids for two slots, one for an auction that does not exist,
    // one that is not JSON.
    for (id, bidder) in [("b1", "u1"), ("b2", "u2"), ("b3", "u3")] {
        let reply = h.client.bid("obs", &bid(id, bidder, 10)).await.unwrap();
        assert!(matches!(reply, BidReply::Accepted { .. }), "{reply:?}");
    }
    let reply = h.client.bid("nowhere", &bid("b4", "u4", 10)).await.unwrap();
    assert!(matches!(reply, BidReply::Rejected { .. }), "{reply:?}");
    let subject = h.client.subjects.bid("obs");
    let garbage = raw(&h, subject, b"not json").await;
    assert!(
        garbage.headers.is_some(),
        "an error reply carries the micro headers"
    );
    h.wait_for_outcomes("obs", 3).await;

    // $SRV: one instance, the seven endpoints, the bid endpoint's counts.
    let ping: PingResponse = micro(&h, "$SRV.PING.allot").await;
    assert_eq!(ping.name, "allot");
    assert_eq!(ping.metadata.get("role").map(String::as_str), Some("all"));
    let info: Info = micro(&h, &format!("$SRV.INFO.allot.{}", ping.id)).await;
    let names: Vec<&str> = info.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["bid", "withdraw", "raise", "open", "close", "status", "result"]
    );
    assert_eq!(info.endpoints[0].subject, "allot.bid.>");
    let stats: Stats = micro(&h, "$SRV.STATS").await;
    let endpoint = |name: &str| {
        stats
            .endpoints
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no {name} endpoint"))
            .clone()
    };
    let bids = endpoint("bid");
    assert_eq!((bids.requests, bids.errors), (5, 1));
    assert_eq!(bids.last_error.as_ref().map(|e| e.code), Some(400));
    assert!(bids.processing_time > Duration::ZERO);
    assert_eq!((endpoint("open").requests, endpoint("open").errors), (1, 0));

    // The Prometheus page, once the verifier of the auction's partition
    // has acked everything.
    let p = h.client.subjects.partition("obs");
    let pending = format!("allot_verifier_pending{{partition=\"{p}\"}} 0");
    let mut page = String::new();
    for _ in 0..100 {
        page = http_get(&addr, "/metrics").await;
        if page.contains(&format!("{pending}\n")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    for line in [
        "allot_bids_total{result=\"accepted\"} 3",
        "allot_bids_total{result=\"rejected\"} 1",
        "allot_bids_total{result=\"error\"} 1",
        "allot_request_errors_total{endpoint=\"bid\"} 1",
        "allot_outcomes_total{type=\"confirmed\",reason=\"\"} 2",
        "allot_outcomes_total{type=\"cancelled\",reason=\"capacity_full\"} 1",
        "allot_outcomes_total{type=\"cancelled\",reason=\"outbid\"} 0",
        "allot_decision_latency_seconds_bucket{le=\"+Inf\"} 3",
        "allot_decision_latency_seconds_count 3",
        pending.as_str(),
        "allot_partitions_owned 8",
    ] {
        assert!(
            page.contains(&format!("{line}\n")),
            "no {line:?} in\n{page}"
        );
    }
    assert!(http_get(&addr, "/other").await.starts_with("HTTP/1.1 404"));

    // allot status: the instance, the owner, the auction's fill.
    let status: serde_json::Value =
        serde_json::from_str(allot_status(&h, &["--json"]).trim()).unwrap();
    assert_eq!(status["instances"].as_array().unwrap().len(), 1);
    assert_eq!(status["instances"][0]["id"], ping.id.as_str());
    let partitions = status["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 8, "the default number of partitions");
    for partition in partitions {
        assert!(partition["owner"].as_str().is_some(), "{partition}");
        assert_eq!(partition["pending"], 0);
        let auctions = u64::from(partition["partition"] == p);
        assert_eq!(partition["auctions"], auctions, "{partition}");
    }
    assert_eq!(status["auctions_total"], 1);
    let fill = &status["auctions"][0];
    assert_eq!(fill["auction_id"], "obs");
    assert_eq!(
        (
            &fill["capacity"],
            &fill["tries"],
            &fill["confirmed"],
            &fill["cancelled"],
            &fill["open"]
        ),
        (&2.into(), &3.into(), &2.into(), &1.into(), &0.into())
    );
    let table = allot_status(&h, &[]);
    assert!(table.contains("instances: 1"), "{table}");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("obs "))
        .unwrap_or_else(|| panic!("no row for obs in\n{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(row, ["obs", "first_n", "2", "3", "2", "0", "1"]);
}

#[tokio::test]
async fn a_metrics_address_in_use_stops_the_start_with_its_name() {
    let h = Harness::server_only().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let log = serve_failure(&h, h.data_dir(), &["--metrics-addr", &addr]).await;
    assert!(log.contains(&format!("--metrics-addr {addr}")), "{log}");
}

/// Full entries of outcomes, as a verifier writes them when it catches up
/// on a backlog: `allot status` reads them all. The client library asked
/// for 500 messages at a time, up to 250 MiB of these; nats-server dropped
/// status as a slow consumer and its read timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_a_stream_of_full_entries() {
    let mut h = Harness::start().await;
    h.open("full", AuctionSpec::with_capacity(1)).await;
    h.stop_service().await;
    let outcomes: Vec<Vec<u8>> = (0..allot::wire::MAX_OUTCOMES_PER_ENTRY)
        .map(|i| {
            serde_json::to_vec(&serde_json::json!({
                "type": "cancelled", "bid_id": format!("b{i}"), "auction_id": "full",
                "bidder_id": format!("u{i}"), "amount": 5, "try_seq": 3, "try_index": i,
                "tried_at": "2026-12-05T00:00:00Z", "decided_at": "2026-12-05T00:00:01Z",
                "reason": "capacity_full"
            }))
            .unwrap()
        })
        .collect();
    let refs: Vec<&[u8]> = outcomes.iter().map(Vec::as_slice).collect();
    let entry = allot::wire::outcome_entries(&refs).swap_remove(0);
    assert!(
        entry.len() > 500 * 1024,
        "a full entry: {} bytes",
        entry.len()
    );
    let per_entry = serde_json::from_slice::<allot::wire::OutcomesEntry>(&entry)
        .unwrap()
        .outcomes
        .len() as u64;
    let subject = h.client.subjects.outcomes_entry(0);
    let entries = 300;
    for _ in 0..entries {
        h.js.publish(subject.clone(), entry.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let status: serde_json::Value =
        serde_json::from_str(allot_status(&h, &["--json"]).trim()).unwrap();
    let fill = &status["auctions"][0];
    assert_eq!(fill["auction_id"], "full");
    assert_eq!(fill["cancelled"], entries * per_entry, "{fill}");
}
