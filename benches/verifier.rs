//! The pure verifier state machine, single-threaded: how many tries per
//! second the decision core folds (`cargo bench --bench verifier`).
//!
//! The log is built up front, so only `Ledger::apply` is timed: 10,000
//! auctions opened, then tries spread over them with repeat bidders, so
//! that confirmations, capacity-full and bidder-limit cancels all occur.

use std::hint::black_box;

use allot::core::Ledger;
use allot::wire::{AuctionSpec, LogEvent, OpenEvent, TryEvent};
use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const AUCTIONS: u64 = 10_000;
const TRIES: u64 = 200_000;

fn log() -> (Vec<LogEvent>, Vec<LogEvent>) {
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let opens = (0..AUCTIONS)
        .map(|a| {
            LogEvent::Open(OpenEvent {
                auction_id: format!("a{a}"),
                spec: AuctionSpec::with_capacity(10),
                opened_at: t0,
            })
        })
        .collect();
    let tries = (0..TRIES)
        .map(|i| {
            LogEvent::Try(TryEvent {
                bid_id: format!("b{i}"),
                auction_id: format!("a{}", (i * 7919) % AUCTIONS),
                bidder_id: format!("u{}", i % 50_000),
                amount: 100,
                tried_at: t0,
            })
        })
        .collect();
    (opens, tries)
}

fn decide(c: &mut Criterion) {
    let (opens, tries) = log();
    let mut group = c.benchmark_group("verifier");
    group.throughput(Throughput::Elements(TRIES));
    group.sample_size(20);
    group.bench_function("decide 200k tries over 10k auctions", |b| {
        b.iter_batched(
            || {
                let mut ledger = Ledger::new();
                for (open, seq) in opens.iter().zip(1..) {
                    ledger.apply(open, seq);
                }
                ledger
            },
            |mut ledger| {
                for (t, seq) in tries.iter().zip(AUCTIONS + 1..) {
                    black_box(ledger.apply(black_box(t), seq));
                }
                ledger
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
