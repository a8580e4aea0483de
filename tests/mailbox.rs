//! The mailbox's scenarios, run against both the in-memory store and the
//! memory-mapped store in a temp dir; then what only files can do (torn
//! tails, corruption, locking, durability, full disk) against the mmap store.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    reason = "test helpers: a failure is a test failure, and the data generators wrap on purpose"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hermes::limits::{
    MAILBOX_MAX_PAYLOAD_BYTES, MAILBOX_MAX_SEGMENT_BYTES, MAILBOX_MAX_SEGMENTS,
    MAILBOX_MIN_SEGMENT_BYTES, MAILBOX_SEGMENT_BYTES, MAILBOX_SYNC_BATCH_INTERVAL,
};
use hermes::mailbox::{
    FsyncPolicy, MemStore, MmapConfig, MmapStore, RecordId, RecordRef, Store, StoreError,
};

// ---------------------------------------------------------------------------
// Harnesses: open a store, and restart it (what survives a clean restart).
// ---------------------------------------------------------------------------

trait Harness {
    type S: Store;
    /// A fresh store whose segments hold roughly 8 records of `PAYLOAD` bytes.
    fn open(&mut self) -> Self::S;
    fn restart(&mut self, s: Self::S) -> Self::S;
    /// Waits until `id` is durable (where the store promises durability).
    fn settle(&self, s: &Self::S, id: RecordId) {
        wait_durable(s, id);
    }
}

/// Payload size used by the generic scenarios.
const PAYLOAD: usize = 400;

struct Mem;

impl Harness for Mem {
    type S = MemStore;
    fn open(&mut self) -> MemStore {
        MemStore::with_segment_records(8)
    }
    fn restart(&mut self, mut s: MemStore) -> MemStore {
        s.restart();
        s
    }
}

struct Mmap {
    dir: tempfile::TempDir,
    config: MmapConfig,
}

impl Mmap {
    fn new(fsync: FsyncPolicy) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            config: MmapConfig {
                segment_bytes: 4096,
                fsync,
                ..MmapConfig::default()
            },
        }
    }
}

impl Harness for Mmap {
    type S = MmapStore;
    fn open(&mut self) -> MmapStore {
        MmapStore::open(self.dir.path(), self.config.clone(), Box::new(|| {})).unwrap()
    }
    fn restart(&mut self, s: MmapStore) -> MmapStore {
        drop(s);
        self.open()
    }
    fn settle(&self, s: &MmapStore, id: RecordId) {
        if self.config.fsync != FsyncPolicy::Never {
            wait_durable(s, id);
        }
    }
}

fn payload(i: u64) -> Vec<u8> {
    (0..PAYLOAD).map(|j| (i as usize * 31 + j) as u8).collect()
}

fn append_n(s: &mut impl Store, n: u64) -> Vec<RecordId> {
    (0..n)
        .map(|i| s.append((i % 7) as u8, 1_000 + i, &payload(i)).unwrap())
        .collect()
}

fn replayed(s: &impl Store) -> Vec<(RecordId, u8, u64, Vec<u8>)> {
    let mut out = Vec::new();
    s.replay(&mut |r: RecordRef<'_>| out.push((r.id, r.kind, r.unix_ms, r.payload.to_vec())));
    out
}

fn expected(ids: &[RecordId], which: impl Fn(usize) -> bool) -> Vec<(RecordId, u8, u64, Vec<u8>)> {
    ids.iter()
        .enumerate()
        .filter(|(i, _)| which(*i))
        .map(|(i, &id)| (id, (i % 7) as u8, 1_000 + i as u64, payload(i as u64)))
        .collect()
}

// ---------------------------------------------------------------------------
// Generic scenarios
// ---------------------------------------------------------------------------

fn scenario_append_get_replay(h: &mut impl Harness) {
    let mut s = h.open();
    let ids = append_n(&mut s, 20);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids strictly increase");
    assert!(ids[0].0 >= 1);
    for (i, &id) in ids.iter().enumerate() {
        let r = s.get(id).unwrap();
        assert_eq!(
            (r.id, r.kind, r.unix_ms),
            (id, (i % 7) as u8, 1_000 + i as u64)
        );
        assert_eq!(r.payload, &payload(i as u64)[..]);
    }
    assert_eq!(replayed(&s), expected(&ids, |_| true));
    let missing = RecordId(ids[19].0 + 100);
    assert!(matches!(s.get(missing), Err(StoreError::NotFound(id)) if id == missing));
    let empty = s.append(9, 5, b"").unwrap();
    assert_eq!(s.get(empty).unwrap().payload, b"");
    assert_eq!(s.stats().records, 21);
    assert_eq!(s.stats().live_records, 21);
}

fn scenario_ids_monotonic_across_restart(h: &mut impl Harness) {
    let mut s = h.open();
    let first = append_n(&mut s, 5);
    let mut s = h.restart(s);
    let second = append_n(&mut s, 5);
    assert!(second[0] > first[4]);
    // Even when everything was released and compacted away.
    for &id in first.iter().chain(&second) {
        s.release(id);
    }
    let marker = s.append(1, 1, b"marker").unwrap();
    s.release(marker);
    h.settle(&s, marker);
    s.compact().unwrap();
    let mut s = h.restart(s);
    let third = s.append(1, 1, b"after").unwrap();
    assert!(third > marker, "{third:?} after {marker:?}");
}

fn scenario_restart_replays_everything_not_compacted(h: &mut impl Harness) {
    let mut s = h.open();
    let ids = append_n(&mut s, 40);
    assert!(s.stats().segments >= 4);
    // Release the first 16 (whole segments for both harnesses), and one more
    // record that shares a segment with live ones.
    for &id in &ids[..16] {
        s.release(id);
    }
    s.release(ids[20]);
    let last = *ids.last().unwrap();
    h.settle(&s, last);
    let st = s.compact().unwrap();
    assert!(st.segments_deleted >= 1, "{st:?}");
    assert!(st.records_dropped >= 8);
    let survivors: Vec<_> = replayed(&s).into_iter().map(|r| r.0).collect();
    let s = h.restart(s);
    assert!(s.recovery_report().is_clean(), "{:?}", s.recovery_report());
    let after: Vec<_> = replayed(&s).into_iter().map(|r| r.0).collect();
    assert_eq!(after, survivors, "a restart replays what compaction left");
    // The released-but-not-compacted ids[20] is back, live again.
    assert!(after.contains(&ids[20]));
    assert!(after.contains(&ids[39]));
    assert_eq!(s.stats().live_records, after.len() as u64);
    let full = expected(&ids, |_| true);
    let got = replayed(&s);
    assert!(got.iter().all(|r| full.contains(r)), "payloads intact");
}

fn scenario_compaction_never_deletes_live_or_active(h: &mut impl Harness) {
    let mut s = h.open();
    let ids = append_n(&mut s, 24);
    let segments = s.stats().segments;
    assert!(segments >= 3);
    // ids[0] pins the first segment; every later one is fully released,
    // and all of those but the active (last) one go.
    for &id in &ids[1..] {
        s.release(id);
    }
    h.settle(&s, ids[23]);
    let st = s.compact().unwrap();
    assert_eq!(st.segments_deleted, segments - 2, "{st:?}");
    assert_eq!(s.get(ids[0]).unwrap().payload, &payload(0)[..]);
    assert!(replayed(&s).iter().any(|r| r.0 == ids[0]));
    assert!(matches!(s.get(ids[10]), Err(StoreError::NotFound(_))));
    assert!(s.get(ids[23]).is_ok(), "the active segment stays");
    s.release(ids[0]);
    s.compact().unwrap();
    assert_eq!(s.stats().segments, 1, "only the active segment is left");
    assert_eq!(s.stats().live_records, 0);
    let next = s.append(1, 1, b"still appendable").unwrap();
    assert_eq!(s.get(next).unwrap().payload, b"still appendable");
}

fn scenario_copy_forward_unpins_the_oldest_segment(h: &mut impl Harness) {
    let mut s = h.open();
    let ids = append_n(&mut s, 30);
    // A slow member keeps ids[2] (oldest segment) alive; everything else is done.
    for (i, &id) in ids.iter().enumerate() {
        if i != 2 {
            s.release(id);
        }
    }
    assert_eq!(s.pinning_oldest(10), vec![ids[2]]);
    assert_eq!(s.pinning_oldest(0), Vec::<RecordId>::new());
    let copy = {
        let r = s.get(ids[2]).unwrap();
        let (kind, unix_ms, p) = (r.kind, r.unix_ms, r.payload.to_vec());
        s.append(kind, unix_ms, &p).unwrap()
    };
    s.release(ids[2]);
    h.settle(&s, copy);
    s.compact().unwrap();
    assert!(matches!(s.get(ids[2]), Err(StoreError::NotFound(_))));
    let r = s.get(copy).unwrap();
    assert_eq!((r.kind, r.unix_ms, r.payload), (2, 1_002, &payload(2)[..]));
    assert_eq!(s.stats().live_records, 1, "only the copy is live");
    assert_eq!(
        s.stats().segments,
        1,
        "everything behind the active segment went"
    );
}

fn scenario_too_large(h: &mut impl Harness, max: usize) {
    let mut s = h.open();
    let a = s.append(1, 1, b"before").unwrap();
    let err = s.append(1, 1, &vec![7u8; max + 1]).unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { len, max: m } if len == max + 1 && m == max),
        "{err}"
    );
    let b = s.append(1, 1, &vec![7u8; max]).unwrap();
    assert_eq!(s.get(b).unwrap().payload.len(), max);
    assert_eq!(b.0, a.0 + 1, "a refused append uses no id");
    assert_eq!(replayed(&s).len(), 2);
}

/// Bounded wait for the durable mark (no timing assertion: only a cap on
/// how long a broken sync thread can hang the test).
fn wait_durable(s: &impl Store, id: RecordId) {
    for _ in 0..10_000 {
        if s.durable_up_to().is_some_and(|d| d >= id) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("durable mark never reached {id:?}: {:?}", s.durable_up_to());
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod mem {
            use super::*;
            $( #[test] fn $name() { super::$name(&mut Mem); } )*
        }
        mod mmap_batch {
            use super::*;
            $( #[test] fn $name() { super::$name(&mut Mmap::new(FsyncPolicy::Batch)); } )*
        }
    };
}

both!(
    scenario_append_get_replay,
    scenario_ids_monotonic_across_restart,
    scenario_restart_replays_everything_not_compacted,
    scenario_compaction_never_deletes_live_or_active,
    scenario_copy_forward_unpins_the_oldest_segment,
);

#[test]
fn mem_too_large_at_the_payload_limit() {
    scenario_too_large(&mut Mem, MAILBOX_MAX_PAYLOAD_BYTES);
}

#[test]
fn mmap_too_large_at_the_segment_limit() {
    let mut h = Mmap::new(FsyncPolicy::Never);
    let max = h.open().max_payload();
    // 4096-byte segment: 40-byte header, 24-byte record header, 4-byte CRC,
    // and the reserve for acks (4096 / 64 bytes) kept free at the end.
    assert_eq!(max, 4096 - 40 - 24 - 4 - 64);
    scenario_too_large(&mut h, max);
}

#[test]
fn mmap_too_large_at_the_payload_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = MmapConfig {
        segment_bytes: 4 * 1024 * 1024,
        fsync: FsyncPolicy::Never,
        ..MmapConfig::default()
    };
    let mut h = Mmap { dir, config };
    assert_eq!(h.open().max_payload(), MAILBOX_MAX_PAYLOAD_BYTES);
    scenario_too_large(&mut h, MAILBOX_MAX_PAYLOAD_BYTES);
}

#[test]
fn mmap_never_policy_scenarios() {
    scenario_append_get_replay(&mut Mmap::new(FsyncPolicy::Never));
    scenario_restart_replays_everything_not_compacted(&mut Mmap::new(FsyncPolicy::Never));
}

#[test]
fn mmap_always_policy_scenarios() {
    scenario_restart_replays_everything_not_compacted(&mut Mmap::new(FsyncPolicy::Always));
    scenario_copy_forward_unpins_the_oldest_segment(&mut Mmap::new(FsyncPolicy::Always));
}

// ---------------------------------------------------------------------------
// Memory-mapped store only: files
// ---------------------------------------------------------------------------

const HEADER: u64 = 40;

/// Bytes one record with a `PAYLOAD`-byte payload occupies (PROTOCOL.md,
/// Part 4: 24-byte header, payload, 4-byte CRC32C, padded to 8).
fn record_size(payload: usize) -> u64 {
    ((24 + payload + 4 + 7) & !7) as u64
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn open_at(dir: &Path, segment_bytes: u64, fsync: FsyncPolicy) -> MmapStore {
    let config = MmapConfig {
        segment_bytes,
        fsync,
        ..MmapConfig::default()
    };
    MmapStore::open(dir, config, Box::new(|| {})).unwrap()
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

#[test]
fn segment_files_are_named_preallocated_and_rolled_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_at(dir.path(), 4096, FsyncPolicy::Never);
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].file_name().unwrap(), "0000000000000000.seg");
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().len(),
        4096,
        "preallocated"
    );
    // 9 records of 432 bytes fit after the 40-byte header; the 10th rolls over.
    let per_segment = (4096 - HEADER) / record_size(PAYLOAD);
    assert_eq!(per_segment, 9);
    let ids = append_n(&mut s, per_segment);
    assert_eq!(segment_files(dir.path()).len(), 1);
    let next = s.append(0, 0, &payload(99)).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(s.stats().segments, 2);
    assert_eq!(s.get(ids[0]).unwrap().payload, &payload(0)[..]);
    assert_eq!(s.get(next).unwrap().payload, &payload(99)[..]);
}

#[test]
fn default_segment_size_is_preallocated() {
    let dir = tempfile::tempdir().unwrap();
    let s = MmapStore::open(dir.path(), MmapConfig::default(), Box::new(|| {})).unwrap();
    assert_eq!(s.config().segment_bytes, MAILBOX_SEGMENT_BYTES);
    assert_eq!(s.config().max_segments, MAILBOX_MAX_SEGMENTS);
    assert_eq!(s.config().batch_interval, MAILBOX_SYNC_BATCH_INTERVAL);
    assert_eq!(s.max_payload(), MAILBOX_MAX_PAYLOAD_BYTES);
    let files = segment_files(dir.path());
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().len(),
        MAILBOX_SEGMENT_BYTES
    );
}

#[test]
fn segment_size_limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        0,
        MAILBOX_MIN_SEGMENT_BYTES - 1,
        MAILBOX_MAX_SEGMENT_BYTES + 1,
    ] {
        let config = MmapConfig {
            segment_bytes: bad,
            ..MmapConfig::default()
        };
        let err = MmapStore::open(dir.path(), config, Box::new(|| {})).unwrap_err();
        assert!(matches!(err, StoreError::BadConfig(_)), "{bad}: {err}");
    }
    let s = open_at(dir.path(), MAILBOX_MIN_SEGMENT_BYTES, FsyncPolicy::Never);
    assert!(s.max_payload() > 0);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _s = open_at(dir.path(), 4096, FsyncPolicy::Never);
    let err = MmapStore::open(dir.path(), MmapConfig::default(), Box::new(|| {})).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}

#[test]
fn a_clean_restart_gives_back_preallocated_space_and_removes_empty_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    append_n(&mut s, 3);
    drop(s);
    let s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2, "the recovered segment and a new active one");
    let used = HEADER + 3 * record_size(PAYLOAD);
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().len(),
        used,
        "truncated to its records"
    );
    drop(s);
    // The active segment of the last run stayed empty: it is removed.
    let s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    assert_eq!(s.recovery_report().empty_segments_removed, 1);
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(s.recovery_report().records_recovered, 3);
}

#[test]
fn torn_tail_mid_record_recovers_every_earlier_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    let ids = append_n(&mut s, 6);
    drop(s);
    // Cut the file in the middle of the 6th record (a write torn by a crash).
    let file = &segment_files(dir.path())[0];
    let sixth = HEADER + 5 * record_size(PAYLOAD);
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(sixth + 100)
        .unwrap();
    let mut s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    assert_eq!(replayed(&s), expected(&ids, |i| i < 5));
    let report = s.recovery_report().clone();
    assert_eq!(report.torn_tails.len(), 1, "{report:?}");
    assert_eq!(report.torn_tails[0].offset, sixth);
    assert!(report.torn_tails[0].bytes > 0 && report.torn_tails[0].bytes <= 100);
    assert!(report.corrupt_records.is_empty());
    assert_eq!(report.records_recovered, 5);
    // The lost id may be handed out again; earlier ones are intact.
    let next = s.append(1, 1, b"new").unwrap();
    assert!(next > ids[4]);
}

#[test]
fn zero_filled_tail_is_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    let ids = append_n(&mut s, 6);
    drop(s);
    let file = &segment_files(dir.path())[0];
    let fifth = HEADER + 4 * record_size(PAYLOAD);
    patch(file, fifth, &vec![0u8; 2 * record_size(PAYLOAD) as usize]);
    let s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    assert_eq!(replayed(&s), expected(&ids, |i| i < 4));
    assert!(s.recovery_report().is_clean(), "{:?}", s.recovery_report());
}

#[test]
fn torn_last_record_with_zeros_after_is_reported_as_torn() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    let ids = append_n(&mut s, 4);
    drop(s);
    let file = &segment_files(dir.path())[0];
    // The last record's header reached the disk, the end of its payload did not.
    let fourth = HEADER + 3 * record_size(PAYLOAD);
    patch(file, fourth + 200, &vec![0u8; 232]);
    let s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    assert_eq!(replayed(&s), expected(&ids, |i| i < 3));
    let report = s.recovery_report();
    assert_eq!(report.torn_tails.len(), 1, "{report:?}");
    assert_eq!(report.torn_tails[0].offset, fourth);
    assert_eq!(report.torn_tail_bytes(), 200);
}

#[test]
fn corrupt_middle_record_is_skipped_reported_and_later_records_replay() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    let ids = append_n(&mut s, 6);
    drop(s);
    let file = &segment_files(dir.path())[0];
    let third = HEADER + 2 * record_size(PAYLOAD);
    // Flip one payload byte of the third record.
    let mut byte = [0u8; 1];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(file).unwrap();
        f.read_exact_at(&mut byte, third + 24 + 10).unwrap();
    }
    patch(file, third + 24 + 10, &[byte[0] ^ 0x40]);
    let mut s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    assert_eq!(replayed(&s), expected(&ids, |i| i != 2));
    let report = s.recovery_report().clone();
    assert_eq!(report.corrupt_records.len(), 1, "{report:?}");
    let c = &report.corrupt_records[0];
    assert_eq!(
        (c.segment, c.offset, c.claimed_id, c.bytes),
        (0, third, ids[2].0, record_size(PAYLOAD))
    );
    assert!(report.torn_tails.is_empty());
    assert!(matches!(s.get(ids[2]), Err(StoreError::NotFound(_))));
    assert!(s.append(0, 0, b"x").unwrap() > ids[5]);
    // The report survives only until the next clean open.
    drop(s);
    let s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    assert_eq!(
        s.recovery_report().corrupt_records.len(),
        1,
        "the bad bytes are still on disk"
    );
}

#[test]
fn garbage_length_in_the_middle_drops_the_rest_of_that_segment_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_at(dir.path(), 4096, FsyncPolicy::Never);
    let ids = append_n(&mut s, 20); // three segments
    drop(s);
    let files = segment_files(dir.path());
    let second = HEADER + record_size(PAYLOAD);
    patch(&files[0], second, &[0xff, 0xff, 0xff, 0xff]);
    let s = open_at(dir.path(), 4096, FsyncPolicy::Never);
    assert_eq!(replayed(&s), expected(&ids, |i| i == 0 || i >= 9));
    let report = s.recovery_report();
    assert_eq!(report.torn_tails.len(), 1);
    assert_eq!(
        (report.torn_tails[0].segment, report.torn_tails[0].offset),
        (0, second)
    );
}

#[test]
fn corrupt_segment_header_is_skipped_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_at(dir.path(), 4096, FsyncPolicy::Never);
    let ids = append_n(&mut s, 20);
    drop(s);
    let files = segment_files(dir.path());
    patch(&files[1], 20, &[0xAA]); // inside the header's segment number
    let s = open_at(dir.path(), 4096, FsyncPolicy::Never);
    assert_eq!(replayed(&s), expected(&ids, |i| !(9..18).contains(&i)));
    let report = s.recovery_report();
    assert_eq!(report.skipped_segments.len(), 1);
    assert_eq!(report.skipped_segments[0].path, files[1]);
    assert!(files[1].exists());
}

#[test]
fn unknown_segment_version_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_at(dir.path(), 4096, FsyncPolicy::Never);
    append_n(&mut s, 2);
    drop(s);
    let file = &segment_files(dir.path())[0];
    let mut header = std::fs::read(file).unwrap()[..40].to_vec();
    header[8..12].copy_from_slice(&2u32.to_be_bytes());
    let crc = crc32c_reference(&header[..36]);
    header[36..40].copy_from_slice(&crc.to_be_bytes());
    patch(file, 0, &header);
    let err = MmapStore::open(dir.path(), MmapConfig::default(), Box::new(|| {})).unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedVersion { version: 2, .. }),
        "{err}"
    );
}

#[test]
fn durable_mark_advances_under_always_and_batch_and_wakes_the_loop() {
    for policy in [FsyncPolicy::Always, FsyncPolicy::Batch] {
        let dir = tempfile::tempdir().unwrap();
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&wakes);
        let config = MmapConfig {
            segment_bytes: 4096,
            fsync: policy,
            ..MmapConfig::default()
        };
        let mut s = MmapStore::open(
            dir.path(),
            config.clone(),
            Box::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        assert_eq!(s.durable_up_to(), None, "{policy:?}: nothing written yet");
        let ids = append_n(&mut s, 25); // crosses two segment boundaries
        wait_durable(&s, ids[24]);
        // The sync thread publishes the mark, then calls on_durable: the
        // call may come just after the mark is seen.
        for _ in 0..10_000 {
            if wakes.load(Ordering::SeqCst) >= 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            wakes.load(Ordering::SeqCst) >= 1,
            "{policy:?}: on_durable called"
        );
        assert_eq!(s.stats().durable_up_to, Some(ids[24]));
        drop(s);
        // Records found on disk at open are synced and count as durable.
        let s = MmapStore::open(dir.path(), config, Box::new(|| {})).unwrap();
        assert_eq!(s.durable_up_to(), Some(ids[24]), "{policy:?}");
    }
}

#[test]
fn never_policy_never_claims_durability() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_at(dir.path(), 4096, FsyncPolicy::Never);
    append_n(&mut s, 3);
    assert_eq!(s.durable_up_to(), None);
    drop(s);
    let s = open_at(dir.path(), 4096, FsyncPolicy::Never);
    assert_eq!(s.durable_up_to(), None);
    assert_eq!(s.recovery_report().records_recovered, 3);
}

#[test]
fn store_full_is_typed_reads_still_work_and_space_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = MmapConfig {
        segment_bytes: 4096,
        max_segments: 2,
        fsync: FsyncPolicy::Batch,
        ..MmapConfig::default()
    };
    let mut s = MmapStore::open(dir.path(), config, Box::new(|| {})).unwrap();
    let ids = append_n(&mut s, 18); // two full segments
    let err = s.append(1, 1, &payload(18)).unwrap_err();
    assert!(err.is_full(), "{err}");
    assert!(matches!(
        err,
        StoreError::StoreFull {
            segments: 2,
            max_segments: 2
        }
    ));
    assert_eq!(segment_files(dir.path()).len(), 2, "nothing half-created");
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(s.get(id).unwrap().payload, &payload(i as u64)[..]);
    }
    // Space returns: the first segment's records are done with.
    for &id in &ids[..9] {
        s.release(id);
    }
    wait_durable(&s, ids[17]);
    assert_eq!(s.compact().unwrap().segments_deleted, 1);
    let next = s.append(1, 1, &payload(18)).unwrap();
    assert_eq!(next.0, ids[17].0 + 1, "the failed append used no id");
    assert_eq!(replayed(&s).len(), 10);
}

/// The reserve: a store that refuses every ordinary append (segment limit
/// reached, the active segment filled with records of every size down to
/// an empty payload) still takes reserved appends (the relay's acks), and
/// once they release the old records, compaction makes room again.
#[test]
fn a_full_store_still_takes_reserved_appends_and_recovers_through_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = MmapConfig {
        segment_bytes: 8192,
        max_segments: 2,
        fsync: FsyncPolicy::Batch,
        ..MmapConfig::default()
    };
    let mut s = MmapStore::open(dir.path(), config.clone(), Box::new(|| {})).unwrap();
    let mut ids = Vec::new();
    for len in [1000, 100, 0] {
        while let Ok(id) = s.append(1, 1, &vec![len as u8; len]) {
            ids.push(id);
        }
    }
    assert!(s.append(1, 1, b"").unwrap_err().is_full());
    assert_eq!(s.stats().segments, 2);
    // 8192 / 64 = 128 bytes of reserve: two 48-byte ack records.
    let ack = [0xac; 20];
    assert_eq!(record_size(ack.len()), 48);
    let acks = [
        s.append_reserved(2, 1, &ack).unwrap(),
        s.append_reserved(2, 1, &ack).unwrap(),
    ];
    assert!(
        s.append(1, 1, b"").unwrap_err().is_full(),
        "sends stay refused"
    );
    assert_eq!(
        s.stats().segments,
        2,
        "both in the active segment's reserve"
    );
    // More go to one segment beyond the limit, and no further.
    let mut more = Vec::new();
    while let Ok(id) = s.append_reserved(2, 1, &ack) {
        more.push(id);
        assert!(more.len() < 1000, "the reserve is bounded");
    }
    assert_eq!(s.stats().segments, 3);
    assert_eq!(more.len(), (8192 - 40) / 48, "one segment full of acks");
    assert!(
        s.append(1, 1, b"").unwrap_err().is_full(),
        "sends stay refused over the limit"
    );
    // What the acks acknowledge is released (and every ack but the newest,
    // as the relay does); once that is durable, compaction frees both old
    // segments and ordinary appends work again.
    let newest = more.pop().unwrap();
    for &id in ids.iter().chain(&acks).chain(&more) {
        s.release(id);
    }
    wait_durable(&s, newest);
    assert_eq!(s.compact().unwrap().segments_deleted, 2);
    let after = s.append(1, 1, b"after").unwrap();
    // Nothing stored was damaged: a restart recovers cleanly.
    let records = s.stats().records;
    drop(s);
    let s = MmapStore::open(dir.path(), config, Box::new(|| {})).unwrap();
    assert!(s.recovery_report().is_clean(), "{:?}", s.recovery_report());
    assert_eq!(s.stats().records, records);
    assert_eq!(s.get(newest).unwrap().payload, ack);
    assert_eq!(s.get(after).unwrap().payload, b"after");
}

/// A store reopened at its segment limit has no active segment (open
/// could not create one): ordinary appends are refused, but a reserved
/// append (an ack) may create one segment beyond the limit, so the acks
/// that let compaction free space still get in; ordinary appends stay
/// refused until compaction brings the count back under the limit.
#[test]
fn a_store_reopened_at_its_limit_still_takes_reserved_appends() {
    let dir = tempfile::tempdir().unwrap();
    let config = MmapConfig {
        segment_bytes: 4096,
        max_segments: 2,
        fsync: FsyncPolicy::Batch,
        ..MmapConfig::default()
    };
    let mut s = MmapStore::open(dir.path(), config.clone(), Box::new(|| {})).unwrap();
    let ids = append_n(&mut s, 18); // two full segments
    assert!(s.append(1, 1, &payload(18)).unwrap_err().is_full());
    drop(s);
    let mut s = MmapStore::open(dir.path(), config.clone(), Box::new(|| {})).unwrap();
    assert_eq!(s.stats().segments, 2, "no room for an active segment");
    assert!(s.append(1, 1, b"send").unwrap_err().is_full());
    let ack = s.append_reserved(2, 1, b"ack").unwrap();
    assert_eq!(s.stats().segments, 3, "one segment beyond the limit");
    assert!(
        s.append(1, 1, b"send").unwrap_err().is_full(),
        "ordinary appends stay refused over the limit"
    );
    // Only one beyond: once that segment is full, reserved appends stop too.
    let big = vec![0u8; s.max_payload()];
    let mut reserved = 1;
    while s.append_reserved(2, 1, &big).is_ok() {
        reserved += 1;
        assert!(reserved < 10, "the reserve segment is bounded");
    }
    assert_eq!(s.stats().segments, 3);
    // The acks release the old records: compaction frees both old segments
    // and ordinary appends work again.
    for &id in &ids {
        s.release(id);
    }
    wait_durable(&s, RecordId(s.stats().next_id - 1));
    assert_eq!(s.compact().unwrap().segments_deleted, 2);
    let after = s.append(1, 1, b"after").unwrap();
    assert_eq!(s.get(ack).unwrap().payload, b"ack");
    assert_eq!(s.get(after).unwrap().payload, b"after");
}

#[test]
fn compaction_waits_until_the_releasing_appends_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    // A long batch interval keeps the mark behind while we look.
    let config = MmapConfig {
        segment_bytes: 4096,
        fsync: FsyncPolicy::Batch,
        batch_interval: Duration::from_secs(3600),
        ..MmapConfig::default()
    };
    let mut s = MmapStore::open(dir.path(), config, Box::new(|| {})).unwrap();
    let ids = append_n(&mut s, 12);
    for &id in &ids[..9] {
        s.release(id);
    }
    let st = s.compact().unwrap();
    assert_eq!((st.segments_deleted, st.segments_waiting_for_sync), (0, 1));
    assert_eq!(segment_files(dir.path()).len(), 2);
}

#[test]
fn store_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<MmapStore>();
    assert_send::<MemStore>();
}

// ---------------------------------------------------------------------------
// PROTOCOL.md, Part 4: the worked example, byte for byte.
// ---------------------------------------------------------------------------

fn crc32c_reference(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hex of a fenced block in PROTOCOL.md that follows `label`.
fn protocol_block(label: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md")).unwrap();
    let start = doc
        .find(label)
        .unwrap_or_else(|| panic!("PROTOCOL.md lacks {label:?}"));
    let block = &doc[start..];
    let open = block.find("```").unwrap();
    let body = &block[open + 3..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let close = body.find("```").unwrap();
    body[..close]
        .lines()
        .map(|l| l.split('#').next().unwrap())
        .flat_map(|l| l.split_whitespace())
        .collect()
}

#[test]
fn protocol_part4_worked_example() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_at(dir.path(), 4096, FsyncPolicy::Never);
    let id = s.append(0x02, 1_700_000_000_000, b"hi").unwrap();
    assert_eq!(id, RecordId(1));
    drop(s);
    let bytes = std::fs::read(&segment_files(dir.path())[0]).unwrap();
    assert_eq!(
        hex(&bytes[..40]),
        protocol_block("Worked example: segment header")
    );
    assert_eq!(
        hex(&bytes[40..72]),
        protocol_block("Worked example: record")
    );
    assert_eq!(crc32c_reference(b"123456789"), 0xE306_9283);
    assert_eq!(
        u32::from_be_bytes(bytes[36..40].try_into().unwrap()),
        crc32c_reference(&bytes[..36])
    );
    assert_eq!(
        u32::from_be_bytes(bytes[66..70].try_into().unwrap()),
        crc32c_reference(&bytes[40..66])
    );
}

#[test]
fn the_trait_is_object_safe() {
    let mut stores: Vec<Box<dyn Store>> = vec![
        Box::new(MemStore::new()),
        Box::new(hermes::mailbox::FaultStore::new()),
    ];
    for s in &mut stores {
        let id = s.append(1, 2, b"dyn").unwrap();
        assert_eq!(s.get(id).unwrap().payload, b"dyn");
    }
}

#[test]
fn compacted_segment_files_are_removed_in_the_background() {
    for policy in [FsyncPolicy::Never, FsyncPolicy::Batch] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open_at(dir.path(), 4096, policy);
        let ids = append_n(&mut s, 20); // segments 0, 1 and the active 2
        for &id in &ids[..18] {
            s.release(id);
        }
        if policy != FsyncPolicy::Never {
            wait_durable(&s, ids[19]);
        }
        assert_eq!(s.compact().unwrap().segments_deleted, 2);
        assert_eq!(s.stats().segments, 1);
        let mut files = segment_files(dir.path()).len();
        for _ in 0..10_000 {
            if files == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            files = segment_files(dir.path()).len();
        }
        assert_eq!(files, 1, "{policy:?}");
        drop(s);
        let s = open_at(dir.path(), 4096, policy);
        assert_eq!(replayed(&s), expected(&ids, |i| i >= 18));
    }
}

#[test]
fn a_blank_header_over_data_is_reported_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_at(dir.path(), 4096, FsyncPolicy::Never);
    let ids = append_n(&mut s, 12); // segment 0 full, segment 1 active
    drop(s);
    let files = segment_files(dir.path());
    patch(&files[0], 0, &[0u8; 40]);
    let s = open_at(dir.path(), 4096, FsyncPolicy::Never);
    assert_eq!(replayed(&s), expected(&ids, |i| i >= 9));
    let report = s.recovery_report();
    assert_eq!(report.skipped_segments.len(), 1, "{report:?}");
    assert!(files[0].exists(), "left for inspection");
    assert_eq!(report.empty_segments_removed, 0);
}

#[test]
fn a_zeroed_page_before_surviving_bytes_is_reported_as_torn() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    let ids = append_n(&mut s, 8);
    drop(s);
    let file = &segment_files(dir.path())[0];
    let closed_len = std::fs::metadata(file).unwrap().len();
    assert_eq!(
        closed_len,
        HEADER + 8 * record_size(PAYLOAD),
        "a clean close truncates"
    );
    // The page holding records 2..=3 is lost; records 4.. reached the disk.
    let third = HEADER + 2 * record_size(PAYLOAD);
    patch(file, third, &vec![0u8; 2 * record_size(PAYLOAD) as usize]);
    let s = open_at(dir.path(), 8192, FsyncPolicy::Never);
    assert_eq!(replayed(&s), expected(&ids, |i| i < 2));
    let report = s.recovery_report();
    assert_eq!(report.torn_tails.len(), 1, "{report:?}");
    assert_eq!(report.torn_tails[0].offset, third);
    assert!(report.torn_tails[0].bytes >= 4 * record_size(PAYLOAD) - 8);
    assert_eq!(
        std::fs::metadata(file).unwrap().len(),
        closed_len,
        "a torn segment keeps its bytes for inspection"
    );
}

#[test]
fn the_next_segment_is_prepared_in_the_background_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let prepared = dir.path().join("segments").join("prepared.tmp");
    let wait_for = |present: bool| {
        for _ in 0..10_000 {
            if prepared.exists() == present {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("prepared.tmp present: {}", prepared.exists());
    };
    let mut s = open_at(dir.path(), 4096, FsyncPolicy::Batch);
    let mut ids = append_n(&mut s, 4);
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        !prepared.exists(),
        "not before the active segment is half full"
    );
    ids.push(s.append(4, 1_004, &payload(4)).unwrap());
    wait_for(true);
    for i in 5..15u64 {
        // Rolls over at the 10th record (into the prepared file if it is
        // ready, else into one created inline).
        ids.push(s.append((i % 7) as u8, 1_000 + i, &payload(i)).unwrap());
    }
    assert_eq!(segment_files(dir.path()).len(), 2);
    wait_for(true); // the next one is being prepared
    drop(s);
    assert!(
        !prepared.exists(),
        "an unused prepared segment is removed on close"
    );
    // A stale one (a crash) is removed on open and never read as a segment.
    std::fs::write(&prepared, b"junk").unwrap();
    let s = open_at(dir.path(), 4096, FsyncPolicy::Never);
    assert_eq!(replayed(&s), expected(&ids, |_| true));
    assert!(s.recovery_report().is_clean());
}

/// A crash (the process ends without closing the store: no final msync,
/// no truncation, a half-written prepared segment may be left) loses
/// nothing that was appended: the page cache outlives the process.
#[test]
fn crash_without_close_loses_nothing_appended() {
    const CHILD: &str = "HERMES_MAILBOX_CRASH_CHILD";
    if let Ok(dir) = std::env::var(CHILD) {
        let mut s = open_at(Path::new(&dir), 8192, FsyncPolicy::Batch);
        append_n(&mut s, 40);
        // Exit without running destructors: the store is never dropped.
        std::process::exit(3);
    }
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_without_close_loses_nothing_appended",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3), "the child crashed as planned");
    let files = segment_files(dir.path());
    let last_len = std::fs::metadata(files.last().unwrap()).unwrap().len();
    assert_eq!(
        last_len, 8192,
        "no clean close: the preallocated tail is still there"
    );
    let mut s = open_at(dir.path(), 8192, FsyncPolicy::Batch);
    let ids: Vec<RecordId> = (1..=40).map(RecordId).collect();
    assert_eq!(replayed(&s), expected(&ids, |_| true));
    assert!(s.recovery_report().is_clean(), "{:?}", s.recovery_report());
    assert_eq!(s.durable_up_to(), Some(RecordId(40)), "synced on open");
    assert_eq!(s.append(0, 0, b"after").unwrap(), RecordId(41));
}
