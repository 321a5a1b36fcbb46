//! Item 6 of issue 16: does a log stream per partition write faster than
//! one stream for all partitions on a 3-node cluster? Raw JetStream, no
//! allot: `scripts/bench streams` starts the cluster on 127.0.0.1 and runs
//! this (`cargo bench --bench log_streams`) with `ALLOT_BENCH_URLS` set to
//! the nodes' client URLs, comma-separated.
//!
//! Each layout gets fresh streams at 3 replicas, as `allot serve
//! --replicas 3` makes them. Publishers, one connection per node (as
//! gateways spread over a cluster's nodes), append entries of `SIZE` bytes
//! on the partitions' entry subjects in turn, keeping `IN_FLIGHT` unacked
//! each; the rate is stored entries per second until every ack is in.
//! The stream leaders' nodes are printed, since spreading them is the
//! point of the second layout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures::future::join_all;

const PARTITIONS: u32 = 8;
const ENTRIES: u64 = 300_000;
const IN_FLIGHT: usize = 256;
/// About an entry of three tries.
const SIZE: usize = 512;

fn main() {
    // `cargo test --all-targets` runs benches too, with no cluster.
    let Ok(urls) = std::env::var("ALLOT_BENCH_URLS") else {
        eprintln!("log_streams: nothing measured without ALLOT_BENCH_URLS, the cluster's client URLs (scripts/bench streams sets it)");
        return;
    };
    let urls: Vec<String> = urls.split(',').map(str::to_string).collect();
    let runs: usize = std::env::var("ALLOT_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        // Alternating, so that a drift of the machine favours neither.
        for run in 0..runs {
            for (layout, streams) in [("one stream", 1), ("a stream per partition", PARTITIONS)] {
                let rate = measure(&urls, &format!("R{run}S{streams}"), streams).await;
                println!("run {run}: {layout}: {rate:.0} entries/s");
                rates.entry(layout).or_default().push(rate);
            }
        }
        for (layout, mut r) in rates {
            r.sort_by(f64::total_cmp);
            println!(
                "== {layout}: median {:.0} entries/s (runs: {})",
                r[r.len() / 2],
                r.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    });
}

/// Entries per second into `count` streams (named after `tag`), which
/// together take every partition's entry subject.
async fn measure(urls: &[String], tag: &str, count: u32) -> f64 {
    let mut contexts = Vec::new();
    for url in urls {
        let client = async_nats::connect(url).await.expect("connect");
        contexts.push(jetstream::new(client));
    }
    let js = &contexts[0];
    let prefix = format!("bench{}", tag.to_lowercase());
    let mut names = Vec::new();
    for s in 0..count {
        let subjects: Vec<String> = (0..PARTITIONS)
            .filter(|p| p % count == s)
            .map(|p| format!("{prefix}.tries.{p}.v2"))
            .collect();
        let name = format!("BENCH_{tag}_{s}");
        let mut created = None;
        // The meta leader may still be settling after the previous layout.
        for _ in 0..50 {
            let config = stream::Config {
                name: name.clone(),
                subjects: subjects.clone(),
                num_replicas: 3,
                allow_direct: true,
                ..Default::default()
            };
            match js.create_stream(config).await {
                Ok(made) => {
                    created = Some(made);
                    break;
                }
                Err(e) => {
                    eprintln!("creating {name}: {e}; again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let mut created = created.expect("a stream");
        let leader = created
            .info()
            .await
            .ok()
            .and_then(|i| i.cluster.as_ref().and_then(|c| c.leader.clone()));
        println!("  {name}: leader {}", leader.unwrap_or_default());
        names.push(name);
    }
    let payload = bytes::Bytes::from(vec![b'x'; SIZE]);
    // Every node learns of new streams on its own time: until each
    // connection's first entry on each partition is stored, none is timed.
    for js in &contexts {
        for p in 0..PARTITIONS {
            let subject = format!("{prefix}.tries.{p}.v2");
            for attempt in 0.. {
                let stored = match js.publish(subject.clone(), payload.clone()).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if stored {
                    break;
                }
                assert!(attempt < 100, "{subject} is not stored after 10 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let started = Instant::now();
    let per = ENTRIES / contexts.len() as u64;
    let publishers = contexts.iter().enumerate().map(|(c, js)| {
        let payload = payload.clone();
        let prefix = prefix.clone();
        async move {
            let mut acks = std::collections::VecDeque::with_capacity(IN_FLIGHT);
            for i in 0..per {
                let partition = (i + c as u64) % u64::from(PARTITIONS);
                if acks.len() >= IN_FLIGHT {
                    let ack: jetstream::context::PublishAckFuture = acks.pop_front().unwrap();
                    ack.await.expect("stored");
                }
                let subject = format!("{prefix}.tries.{partition}.v2");
                acks.push_back(js.publish(subject, payload.clone()).await.expect("sent"));
            }
            for ack in acks {
                ack.await.expect("stored");
            }
        }
    });
    join_all(publishers).await;
    let rate = (per * contexts.len() as u64) as f64 / started.elapsed().as_secs_f64();
    for name in names {
        let _ = js.delete_stream(&name).await;
    }
    rate
}
