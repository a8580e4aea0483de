//! Criterion benchmarks of the mailbox store: appends (100 B and 4 KiB
//! records, `--fsync never` and `batch`) and the recovery scan on open.
//!
//! Run with small samples (two shared cores):
//! `cargo bench --bench mailbox -- --sample-size 10 --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hermes::mailbox::{FsyncPolicy, MemStore, MmapConfig, MmapStore, Store};

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("mailbox_append");
    for size in [100usize, 4096] {
        let payload = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        for policy in [FsyncPolicy::Never, FsyncPolicy::Batch] {
            let dir = tempfile::tempdir().unwrap();
            let config = MmapConfig {
                fsync: policy,
                ..MmapConfig::default()
            };
            let mut store = MmapStore::open(dir.path(), config, Box::new(|| {})).unwrap();
            let name = format!("{policy:?}").to_lowercase();
            group.bench_with_input(BenchmarkId::new(name, size), &payload, |b, p| {
                b.iter(|| {
                    let id = store.append(1, 1_700_000_000_000, black_box(p)).unwrap();
                    // Keep the disk footprint bounded: everything is done with
                    // at once, and full segments are deleted as they go.
                    store.release(id);
                    if store.stats().segments > 2 {
                        store.compact().unwrap();
                    }
                    id
                });
            });
        }
        let mut mem = MemStore::new();
        group.bench_with_input(BenchmarkId::new("memstore", size), &payload, |b, p| {
            b.iter(|| {
                let id = mem.append(1, 1_700_000_000_000, black_box(p)).unwrap();
                mem.release(id);
                if mem.stats().segments > 2 {
                    mem.compact().unwrap();
                }
                id
            });
        });
    }
    group.finish();
}

const RECOVERY_RECORDS: u64 = 200_000;

fn recovery(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let config = MmapConfig {
        fsync: FsyncPolicy::Never,
        ..MmapConfig::default()
    };
    {
        let mut store = MmapStore::open(dir.path(), config.clone(), Box::new(|| {})).unwrap();
        let payload = [0x5au8; 100];
        for i in 0..RECOVERY_RECORDS {
            store.append(1, i, &payload).unwrap();
        }
    }
    let mut group = c.benchmark_group("mailbox_recovery");
    group.throughput(Throughput::Elements(RECOVERY_RECORDS));
    group.bench_function("open_200k_records_100B", |b| {
        b.iter(|| {
            let store = MmapStore::open(dir.path(), config.clone(), Box::new(|| {})).unwrap();
            assert_eq!(store.recovery_report().records_recovered, RECOVERY_RECORDS);
            store.stats().records
        });
    });
    group.finish();
}

criterion_group!(benches, append, recovery);
criterion_main!(benches);
