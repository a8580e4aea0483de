//! The relay's durable mailbox: a store trait, an in-memory twin and the
//! memory-mapped append-only segment store.
//!
//! ```text
//!   relay core ──append(kind, unix_ms, payload)──► Store ──► RecordId
//!        │      ──get(id)──────────────────────────►  │  ──► RecordRef (zero-copy)
//!        │      ──release(id) / compact()───────────►  │
//!        ▲                                             │
//!        └── replay(f) once at start: every surviving record, in id order
//!
//!   MemStore     records in memory, virtual segments (tests, simulation)
//!   FaultStore   MemStore + a durable mark; simulate_power_loss() (issue 8)
//!   MmapStore    <data-dir>/segments/*.seg, memmap2, sync thread (msync)
//! ```
//!
//! The store is a generic, durable, append-only record log; it knows nothing
//! about accounts, groups or queues. The relay core serialises its own
//! records as opaque payloads tagged with a one-byte `kind`, and rebuilds its
//! state on start by replaying every surviving record in append order.
//!
//! # The reserve: a full store still takes acks
//!
//! Ordinary appends ([`Store::append`]) stop short of the last
//! [`crate::limits::MAILBOX_RESERVE_BYTES`] of every segment; records that
//! free space ([`Store::append_reserved`]: the relay's acks) may use them.
//! So when no new segment can be created (the segment limit, or no disk
//! space) sends are refused but acks are still stored, the messages they
//! acknowledge are released, and compaction deletes the segments they
//! filled: the store recovers without a restart or an operator. Past the
//! reserve (or with no active segment at all, after a reopen at the limit)
//! a reserved append may create one segment beyond the segment limit;
//! ordinary appends stay refused while the store is over it.
//!
//! # Release and compaction
//!
//! Release marks are **not** persisted. The store keeps, in memory, which
//! records are still needed; the core logs its acks (and anything else that
//! ends a record's life) as records of its own. After a restart every
//! surviving record is live again: the core replays, works out what it no
//! longer needs, and calls [`Store::release`] again. A segment is deleted by
//! [`Store::compact`] only when every record in it is released, it is not the
//! segment being appended to, and every record appended up to the moment of
//! its last release is durable (so the ack that released it, or the copy
//! that replaced it, cannot be lost with it).
//!
//! # Copy-forward: one slow member must not pin every segment
//!
//! A single live record (an account, a commit, an un-acked message for a
//! member who never logs in) keeps its whole segment alive. To stop that
//! pinning everything behind it, the core periodically asks
//! [`Store::pinning_oldest`] for the live records of the oldest segment,
//! re-appends each one ([`Store::get`] then [`Store::append`] with the same
//! kind, `unix_ms` and payload: a new id at the head of the log), points its
//! own references at the new id and releases the old one. The oldest segment
//! then becomes deletable, and disk use stays proportional to the live data.
//! Copied records appear again, later, in the next replay: the core's record
//! formats must make a replayed copy mean the same as the original.

mod fault;
mod mem;
mod mmap;
mod record;
mod sync;

pub use fault::FaultStore;
pub use mem::MemStore;
pub use mmap::{MmapConfig, MmapStore};

use std::path::PathBuf;

/// Identifies one record. Strictly increasing in append order, stable across
/// restarts and compaction (it is stored in the record's header); never 0.
///
/// Ids of records that were lost (power loss before they became durable) may
/// be handed out again; ids of surviving records never are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(pub u64);

/// A zero-copy view of one stored record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The record's id.
    pub id: RecordId,
    /// The caller's one-byte record kind (opaque to the store).
    pub kind: u8,
    /// The caller's timestamp (milliseconds since the Unix epoch), opaque to
    /// the store; copy-forward keeps the original.
    pub unix_ms: u64,
    /// The payload, borrowed from the store (for the mmap store: straight
    /// out of the memory map).
    pub payload: &'a [u8],
}

/// When records become durable; the meaning of the relay's `--fsync` flag
/// (DESIGN.md, "Durability").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// A sync thread msyncs as soon as records are appended (group commit:
    /// many records share one msync) and then advances the durable mark; the
    /// relay sends a stored receipt only once the mark covers the record.
    Always,
    /// The sync thread msyncs every batch interval; receipts go out as soon
    /// as the record is in the map. Survives any process crash; power loss
    /// may cost the last interval.
    #[default]
    Batch,
    /// No msync at all: write-back is left to the OS. The durable mark never
    /// advances ([`Store::durable_up_to`] returns `None`).
    Never,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The payload is larger than this store accepts; nothing was written.
    #[error("record payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload this store accepts.
        max: usize,
    },
    /// The store reached its configured segment limit; nothing was written.
    /// Compaction (after releases) makes room again.
    #[error("store full: {segments} segments in use, limit {max_segments}")]
    StoreFull {
        /// Segments in use.
        segments: usize,
        /// The configured limit.
        max_segments: usize,
    },
    /// The file system has no room for a new segment (preallocation failed
    /// with ENOSPC, EDQUOT or EFBIG); nothing was written.
    #[error("disk full: cannot preallocate segment {path}")]
    DiskFull {
        /// The segment file that could not be created.
        path: PathBuf,
    },
    /// No record with this id survives (never appended, lost, or compacted).
    #[error("no record {0:?} in the store")]
    NotFound(RecordId),
    /// Record ids are exhausted (u64); nothing was written.
    #[error("record ids exhausted")]
    IdsExhausted,
    /// A background msync failed. Durability can no longer be promised, so
    /// the store refuses further appends (reads still work).
    #[error("a background msync failed; the store accepts no more appends")]
    SyncFailed,
    /// A segment was written by a newer (or unknown) format version.
    #[error("segment {path} has unsupported format version {version}")]
    UnsupportedVersion {
        /// The segment file.
        path: PathBuf,
        /// The version found in its header.
        version: u32,
    },
    /// Another process holds the data directory's lock.
    #[error("data directory {path} is locked by another process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The store's configuration is out of range.
    #[error("bad store configuration: {0}")]
    BadConfig(String),
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl StoreError {
    /// True for the "no room" errors ([`StoreError::StoreFull`],
    /// [`StoreError::DiskFull`]) that the relay reports to a sender as a full
    /// store.
    pub fn is_full(&self) -> bool {
        matches!(self, Self::StoreFull { .. } | Self::DiskFull { .. })
    }
}

/// A record tail that was cut off on open (a write torn by a crash, or
/// garbage after the last valid record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment number.
    pub segment: u64,
    /// Byte offset in the segment file where the valid data ends.
    pub offset: u64,
    /// Non-zero bytes dropped after `offset`.
    pub bytes: u64,
}

/// A record in the middle of a segment that failed its checksum (or its
/// header checks) and was skipped; the records after it were kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptRecord {
    /// The segment number.
    pub segment: u64,
    /// Byte offset of the record in the segment file.
    pub offset: u64,
    /// The id its (unverified) header claims.
    pub claimed_id: u64,
    /// Bytes skipped.
    pub bytes: u64,
}

/// A whole segment file that was ignored on open (unreadable header). It is
/// left on disk, untouched, for an operator to inspect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedSegment {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// What opening a store found. Empty for a fresh or cleanly written store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files scanned.
    pub segments_scanned: usize,
    /// Records recovered (replayable).
    pub records_recovered: u64,
    /// Tails cut off (at most one per segment).
    pub torn_tails: Vec<TornTail>,
    /// Corrupt records skipped in the middle of a segment.
    pub corrupt_records: Vec<CorruptRecord>,
    /// Segment files ignored.
    pub skipped_segments: Vec<SkippedSegment>,
    /// Empty segment files removed (left by a previous run or a crash).
    pub empty_segments_removed: usize,
}

impl RecoveryReport {
    /// True when nothing was cut off, skipped or ignored.
    pub fn is_clean(&self) -> bool {
        self.torn_tails.is_empty()
            && self.corrupt_records.is_empty()
            && self.skipped_segments.is_empty()
    }

    /// Total non-zero bytes cut off in torn tails.
    pub fn torn_tail_bytes(&self) -> u64 {
        self.torn_tails.iter().map(|t| t.bytes).sum()
    }
}

/// What one [`Store::compact`] call did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Records dropped with them.
    pub records_dropped: u64,
    /// Record bytes (headers, payloads, checksums) freed.
    pub bytes_freed: u64,
    /// Fully released segments kept because the records appended up to
    /// their last release are not durable yet (retry later).
    pub segments_waiting_for_sync: usize,
}

/// A snapshot of the store's size, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Records stored (released or not) that compaction has not dropped.
    pub records: u64,
    /// Of those, records not yet released.
    pub live_records: u64,
    /// Bytes used by stored records (headers, payloads, checksums, padding).
    pub bytes: u64,
    /// Segments in use (for the mmap store: files; for the memory stores:
    /// virtual segments).
    pub segments: usize,
    /// The id the next append will get.
    pub next_id: u64,
    /// The durable mark.
    pub durable_up_to: Option<RecordId>,
}

/// A durable, append-only record log.
///
/// Ids grow strictly in append order. One thread owns the store (the relay's
/// event loop); implementations never fsync on that thread.
pub trait Store {
    /// Appends one record and returns its id. `Ok` once the record is
    /// readable through [`Store::get`] (not necessarily durable: see
    /// [`Store::durable_up_to`]).
    ///
    /// # Errors
    /// [`StoreError::TooLarge`] for a payload over the store's limit;
    /// [`StoreError::StoreFull`] / [`StoreError::DiskFull`] when no segment
    /// can be created; [`StoreError::SyncFailed`] after a failed msync;
    /// [`StoreError::Io`] otherwise. On any error nothing half-written is
    /// visible, and the store remains usable for reads (and for appends once
    /// space returns).
    fn append(&mut self, kind: u8, unix_ms: u64, payload: &[u8]) -> Result<RecordId, StoreError>;

    /// Appends a record that frees space (an ack, which lets compaction drop
    /// what it acknowledges). Like [`Store::append`], but it may also use
    /// the reserve that ordinary appends leave free
    /// ([`crate::limits::MAILBOX_RESERVE_BYTES`]), so it still succeeds when
    /// the store is full and refuses ordinary appends. Without that, a full
    /// store could never take the acks that would empty it.
    ///
    /// # Errors
    /// As [`Store::append`], once the reserve is used up too.
    fn append_reserved(
        &mut self,
        kind: u8,
        unix_ms: u64,
        payload: &[u8],
    ) -> Result<RecordId, StoreError>;

    /// A zero-copy view of the record `id`, released or not, as long as
    /// compaction has not dropped it.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if no such record survives.
    fn get(&self, id: RecordId) -> Result<RecordRef<'_>, StoreError>;

    /// The caller no longer needs record `id` (acked by everyone, expired, or
    /// copied forward); compaction may drop it. Idempotent; unknown ids are
    /// ignored. Not persisted: see the module doc.
    fn release(&mut self, id: RecordId);

    /// Every record with an id up to this one survives power loss; `None`
    /// if no record is known durable. Under [`FsyncPolicy::Always`] the
    /// relay sends a stored receipt once this covers the record.
    fn durable_up_to(&self) -> Option<RecordId>;

    /// Calls `f` with every surviving record (released or not, not yet
    /// compacted), in id order. Used once at start to rebuild state.
    fn replay(&self, f: &mut dyn FnMut(RecordRef<'_>));

    /// What opening the store found (torn tails, corrupt records).
    fn recovery_report(&self) -> &RecoveryReport;

    /// Deletes every segment whose records are all released, except the
    /// segment being appended to, once the records appended up to its last
    /// release are durable.
    ///
    /// # Errors
    /// [`StoreError::Io`] if a segment file cannot be removed (the segment
    /// stays and is retried next time).
    fn compact(&mut self) -> Result<CompactionStats, StoreError>;

    /// Up to `max` live (unreleased) records in the oldest segment, oldest
    /// first, if that segment is not the one being appended to; empty
    /// otherwise. The caller copies them forward (see the module doc) so the
    /// oldest segment can be compacted.
    fn pinning_oldest(&self, max: usize) -> Vec<RecordId>;

    /// Sizes for metrics.
    fn stats(&self) -> StoreStats;
}

/// Fuzz entry point: segment recovery over arbitrary bytes (issue 8).
///
/// `data[0]` picks the mode. Raw (bit 0 clear): the rest of `data` is the
/// segment file, after a valid segment header if bit 1 is set. Structured
/// (bit 0 set): valid records are built from `data` (count, then kind,
/// length and payload per record), then `(u16 offset, xor)` pairs damage
/// the file. Either way the file is written to a scratch directory and
/// [`MmapStore::open`]ed, every record is replayed and read back, and one
/// record is appended and read back.
///
/// # Errors
/// A description of the broken invariant (structured mode): a replayed
/// record that differs from what was written, an undamaged record before
/// the first damaged byte that was not recovered, a damaged file reported
/// clean, or a store that cannot append after recovery.
pub fn fuzz_segment_recovery(data: &[u8]) -> Result<(), String> {
    use record::{SEGMENT_HEADER_BYTES, encode_record, encode_segment_header, encoded_len};
    let (mode, rest) = data.split_first().map_or((0, &[][..]), |(m, r)| (*m, r));
    let structured = mode & 1 == 1;
    let mut file = Vec::new();
    // (id, kind, payload, start offset, end offset of the checked bytes)
    let mut written: Vec<(u64, u8, Vec<u8>, usize, usize)> = Vec::new();
    let mut first_damage = usize::MAX;
    if structured || mode & 2 == 2 {
        file.extend_from_slice(&encode_segment_header(0, 1));
    }
    if structured {
        let mut it = rest.iter().copied();
        let count = it.next().unwrap_or(0) % 32;
        for id in 1..=u64::from(count) {
            let kind = it.next().unwrap_or(0);
            let len = usize::from(it.next().unwrap_or(0));
            let payload: Vec<u8> = it.by_ref().take(len).collect();
            let Some(size) = encoded_len(payload.len()) else {
                return Err("encoded_len overflow".into());
            };
            let start = file.len();
            file.resize(start + size, 0);
            let slot = file.get_mut(start..).unwrap_or_default();
            encode_record(slot, id, kind, id * 1000, &payload)
                .ok_or_else(|| "encode_record refused its own length".to_string())?;
            let checked_end = start + record::RECORD_HEADER_BYTES + payload.len() + 4;
            written.push((id, kind, payload, start, checked_end));
        }
        let min_len = usize::try_from(crate::limits::MAILBOX_MIN_SEGMENT_BYTES).unwrap_or(4096);
        if file.len() < min_len {
            file.resize(min_len, 0);
        }
        let damage: Vec<u8> = it.collect();
        for pair in damage.chunks_exact(3) {
            let (Some(&hi), Some(&lo), Some(&xor)) = (pair.first(), pair.get(1), pair.get(2))
            else {
                continue;
            };
            let len = file.len();
            let at = usize::from(u16::from_be_bytes([hi, lo])) % len.max(1);
            if let Some(b) = file.get_mut(at)
                && xor != 0
            {
                *b ^= xor;
                first_damage = first_damage.min(at);
            }
        }
    } else {
        file.extend_from_slice(rest);
    }

    let root = crate::fuzz::scratch_dir("segment").map_err(|e| format!("scratch dir: {e}"))?;
    let result = (|| -> Result<(), String> {
        let seg_dir = root.join("segments");
        std::fs::create_dir_all(&seg_dir).map_err(|e| e.to_string())?;
        std::fs::write(seg_dir.join("0000000000000000.seg"), &file).map_err(|e| e.to_string())?;
        let config = MmapConfig {
            segment_bytes: crate::limits::MAILBOX_MIN_SEGMENT_BYTES,
            fsync: FsyncPolicy::Never,
            ..MmapConfig::default()
        };
        let mut store = match MmapStore::open(&root, config, Box::new(|| {})) {
            Ok(s) => s,
            Err(StoreError::UnsupportedVersion { .. })
                if !structured || first_damage < SEGMENT_HEADER_BYTES =>
            {
                return Ok(());
            }
            Err(e) => return Err(format!("open failed: {e}")),
        };
        let mut replayed = Vec::new();
        store.replay(&mut |r| replayed.push((r.id.0, r.kind, r.unix_ms, r.payload.to_vec())));
        for (id, kind, unix_ms, payload) in &replayed {
            let got = store
                .get(RecordId(*id))
                .map_err(|e| format!("replayed record {id} unreadable: {e}"))?;
            if (got.kind, got.unix_ms, got.payload) != (*kind, *unix_ms, payload.as_slice()) {
                return Err(format!("record {id}: get differs from replay"));
            }
        }
        if structured {
            for (id, kind, unix_ms, payload) in &replayed {
                let ok = written.iter().any(|(wid, wkind, wpayload, _, _)| {
                    wid == id && wkind == kind && *unix_ms == wid * 1000 && wpayload == payload
                });
                if !ok {
                    return Err(format!("record {id} was recovered but never written"));
                }
            }
            for (id, _, _, _, end) in &written {
                if first_damage >= SEGMENT_HEADER_BYTES
                    && *end <= first_damage
                    && !replayed.iter().any(|r| r.0 == *id)
                {
                    return Err(format!("undamaged record {id} before the damage was lost"));
                }
            }
            let report = store.recovery_report();
            if first_damage == usize::MAX && !(report.is_clean() && replayed.len() == written.len())
            {
                return Err(format!(
                    "an intact segment did not recover cleanly: {report:?}"
                ));
            }
        }
        let last = replayed.iter().map(|r| r.0).max().unwrap_or(0);
        let id = store
            .append(7, 1, b"after recovery")
            .map_err(|e| format!("append after recovery failed: {e}"))?;
        if id.0 <= last {
            return Err(format!("append reused id {} (last recovered {last})", id.0));
        }
        match store.get(id) {
            Ok(r) if r.payload == b"after recovery" => Ok(()),
            _ => Err("appended record unreadable".into()),
        }
    })();
    let _ = std::fs::remove_dir_all(&root);
    result
}
