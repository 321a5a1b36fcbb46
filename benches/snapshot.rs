//! The verifier's snapshot commit, the SQLite work that follows every
//! decided batch (`cargo bench --bench snapshot`).
//!
//! Each iteration commits one batch as the pipeline scenario makes them:
//! 256 decisions spread over 1,000 auctions, with the try count of every
//! auction the batch touched. The snapshot grows as it does in a run, so
//! later commits append to a table of many rows.

use std::hint::black_box;

use allot::snapshot::{Batch, Snapshot, StoredOutcome, Sync};
use allot::wire::{OutcomeEvent, OutcomeKind};
use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const AUCTIONS: u64 = 1_000;
const PER_BATCH: u64 = 256;

/// The batch of the log entry at `seq`: its tries decided, one per index.
fn batch(seq: u64) -> Batch {
    let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut tries = std::collections::BTreeMap::new();
    let decisions = (0..PER_BATCH)
        .map(|i| {
            let n = seq * PER_BATCH + i;
            let auction_id = format!("a{}", (n * 7919) % AUCTIONS);
            *tries.entry(auction_id.clone()).or_insert(n / AUCTIONS) += 1;
            let outcome = OutcomeEvent {
                kind: OutcomeKind::Confirmed,
                bid_id: format!("b{n}"),
                auction_id,
                bidder_id: format!("u{}", n % 50_000),
                amount: 100,
                try_seq: seq,
                try_index: i as u32,
                tried_at: at,
                decided_at: at,
                rank: Some((n / AUCTIONS) as u32 + 1),
                reason: None,
            };
            let payload = serde_json::to_vec(&outcome).unwrap().into();
            StoredOutcome { outcome, payload }
        })
        .collect();
    Batch {
        decisions,
        tries: tries.into_iter().collect(),
        last_seq: seq,
        ..Batch::default()
    }
}

fn commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut snapshot = Snapshot::open(dir.path(), Sync::Normal).unwrap();
    let mut seq = 0;
    let mut group = c.benchmark_group("snapshot");
    group.throughput(Throughput::Elements(PER_BATCH));
    group.bench_function("commit 256 decisions", |b| {
        b.iter_batched(
            || {
                seq += 1;
                batch(seq)
            },
            |batch| snapshot.commit(black_box(&batch)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
