//! `MmapStore`: append-only, checksummed, preallocated segment files under
//! `<data-dir>/segments/`, read and written through memory maps
//! (PROTOCOL.md, Part 4, has every byte).
//!
//! ```text
//!   loop thread                         sync thread
//!   append ─► encode into MmapMut ─┐
//!            (active segment)      └─► dirty range ─► msync (MmapRaw) ─► durable mark
//!   get / replay ◄─ index: id → (segment, offset)     (Always / Batch)  └─► on_durable()
//!   rollover ◄─ rename prepared.tmp ◄──────────────── prepare next segment (all policies)
//!   compact ──► segment map + path ──────────────────► munmap + unlink  (all policies)
//! ```
//!
//! On open every segment is scanned and sealed; appends always go to a fresh
//! segment, so a recovered file is never written again (bytes after a torn
//! tail can never be mistaken for new records).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use memmap2::{Advice, MmapMut, MmapOptions, MmapRaw};
use rustix::fs::{FallocateFlags, fallocate};
use rustix::io::Errno;

use super::record::{
    self, RECORD_HEADER_BYTES, RECORD_TRAILER_BYTES, SEGMENT_HEADER_BYTES, Scan,
    decode_segment_header, encode_record, encode_segment_header, encoded_len,
};
use super::sync::SyncThread;
use super::{
    CompactionStats, CorruptRecord, FsyncPolicy, RecordId, RecordRef, RecoveryReport,
    SkippedSegment, Store, StoreError, StoreStats, TornTail,
};
use crate::limits::{
    MAILBOX_MAX_PAYLOAD_BYTES, MAILBOX_MAX_SEGMENT_BYTES, MAILBOX_MAX_SEGMENTS,
    MAILBOX_MIN_SEGMENT_BYTES, MAILBOX_RESERVE_BYTES, MAILBOX_RESERVE_MAX_FRACTION,
    MAILBOX_SEGMENT_BYTES, MAILBOX_SYNC_BATCH_INTERVAL,
};

/// The memory-mapped store's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmapConfig {
    /// Size of each preallocated segment file, between
    /// [`MAILBOX_MIN_SEGMENT_BYTES`] and [`MAILBOX_MAX_SEGMENT_BYTES`]
    /// (default [`MAILBOX_SEGMENT_BYTES`]). The largest payload is the
    /// smaller of [`MAILBOX_MAX_PAYLOAD_BYTES`] and what fits in one segment.
    pub segment_bytes: u64,
    /// Most segment files in use at once (default [`MAILBOX_MAX_SEGMENTS`]);
    /// an append that needs one more fails with [`StoreError::StoreFull`].
    /// [`Store::append_reserved`] may create one segment beyond it, and
    /// ordinary appends are refused while the store is over it.
    pub max_segments: usize,
    /// When records become durable.
    pub fsync: FsyncPolicy,
    /// How long the sync thread lets a batch fill under
    /// [`FsyncPolicy::Batch`] (default [`MAILBOX_SYNC_BATCH_INTERVAL`]).
    pub batch_interval: Duration,
    /// Bytes at the end of each segment that only
    /// [`Store::append_reserved`] may use (default
    /// [`MAILBOX_RESERVE_BYTES`]); at most `segment_bytes /`
    /// [`MAILBOX_RESERVE_MAX_FRACTION`], rounded down to the record
    /// alignment. The largest payload fits in a segment without it.
    pub reserve_bytes: u64,
}

impl Default for MmapConfig {
    fn default() -> Self {
        Self {
            segment_bytes: MAILBOX_SEGMENT_BYTES,
            max_segments: MAILBOX_MAX_SEGMENTS,
            fsync: FsyncPolicy::default(),
            batch_interval: MAILBOX_SYNC_BATCH_INTERVAL,
            reserve_bytes: MAILBOX_RESERVE_BYTES,
        }
    }
}

/// One record in the in-memory index.
#[derive(Clone, Copy)]
struct Entry {
    id: u64,
    offset: u32,
    released: bool,
}

struct Segment {
    number: u64,
    path: PathBuf,
    map: MmapMut,
    /// Every record in this segment has an id >= this.
    base_id: u64,
    /// End of the records (the next append goes here, if active).
    end: usize,
    entries: Vec<Entry>,
    live: usize,
    bytes: u64,
    /// The last id appended when `live` last dropped to zero.
    released_at: u64,
    /// The sync thread's view of the map (active segment only).
    raw: Option<Arc<MmapRaw>>,
}

impl Segment {
    fn find(&self, id: u64) -> Option<usize> {
        // Ids in a segment are consecutive unless a corrupt record was
        // skipped: try the direct slot first.
        let guess = usize::try_from(id.checked_sub(self.entries.first()?.id)?).ok()?;
        if self.entries.get(guess).is_some_and(|e| e.id == id) {
            return Some(guess);
        }
        self.entries.binary_search_by_key(&id, |e| e.id).ok()
    }

    fn record(&self, e: Entry) -> Option<RecordRef<'_>> {
        let offset = usize::try_from(e.offset).ok()?;
        let buf = self.map.get(offset..self.end)?;
        let d = record::read_trusted(buf)?;
        Some(RecordRef {
            id: RecordId(d.id),
            kind: d.kind,
            unix_ms: d.unix_ms,
            payload: d.payload,
        })
    }
}

/// The memory-mapped, append-only segment store.
///
/// One thread (the relay's event loop) owns it. With [`FsyncPolicy::Always`]
/// or [`FsyncPolicy::Batch`] a sync thread msyncs behind it and calls
/// `on_durable` each time the durable mark advances (the loop passes a
/// closure that wakes its `mio::Waker`). Under [`FsyncPolicy::Never`] the
/// thread never msyncs and [`Store::durable_up_to`] is always `None`. Under
/// every policy the same thread unmaps and unlinks compacted segments, so
/// [`Store::compact`] costs the loop microseconds, not the milliseconds an
/// unlink of a large cached file takes.
///
/// Open file descriptors: one, the data directory's lock; segment files are
/// closed as soon as they are mapped.
pub struct MmapStore {
    /// First field, so it drops first: the final flush runs while every
    /// segment is still mapped.
    sync: Option<SyncThread>,
    dir: PathBuf,
    config: MmapConfig,
    max_payload: usize,
    /// Bytes at the end of each segment that ordinary appends leave free.
    reserve: usize,
    segments: Vec<Segment>,
    /// The last segment in `segments` was created by this process and takes
    /// appends.
    has_active: bool,
    next_id: u64,
    next_segment: u64,
    report: RecoveryReport,
    /// A segment the sync thread is preparing (or has prepared).
    prepared: Option<PreparedSlot>,
    /// Held (and locked) until the store is dropped.
    lock: File,
}

impl std::fmt::Debug for MmapStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmapStore")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// Maps an error from preallocating `path` to a typed store error.
fn prealloc_error(path: &Path, e: io::Error) -> StoreError {
    match Errno::from_io_error(&e) {
        Some(Errno::NOSPC | Errno::DQUOT | Errno::FBIG) => StoreError::DiskFull {
            path: path.to_path_buf(),
        },
        _ => StoreError::Io {
            op: "preallocate",
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Preallocates (optionally) and maps `len` bytes of `file` read-write.
/// The crate's one `unsafe` function.
#[allow(unsafe_code, reason = "the memory map; see the SAFETY comment")]
fn map_file(file: &File, len: usize, preallocate: bool) -> Result<MmapMut, io::Error> {
    if preallocate {
        preallocate_file(file, len)?;
    }
    // SAFETY: a shared file mapping is only undefined behaviour if the file
    // is truncated (SIGBUS) or changed by someone else while mapped. The
    // segment files are this store's alone: created 0600 under a directory
    // that this process holds an exclusive lock on; `len` never exceeds the
    // file's size (just preallocated, or read from its metadata); the store
    // never truncates a file while it is mapped (open unmaps before it
    // truncates a recovered segment); and the bytes are treated as untrusted
    // input (checked parsing, never cast to typed references), so even a
    // foreign writer could cause wrong data, not memory unsafety in our code.
    unsafe { MmapOptions::new().len(len).map_mut(file) }
}

/// Allocates blocks for the first `len` bytes of `file` (`posix_fallocate`),
/// so a full disk shows up here as `ENOSPC` rather than later as a SIGBUS on
/// a write through the map.
///
/// Linux's `fallocate(2)` with no flags is `posix_fallocate` except that it
/// refuses (`EOPNOTSUPP`) on file systems without it, where glibc's
/// `posix_fallocate` falls back to writing into every block; so does this.
fn preallocate_file(file: &File, len: usize) -> io::Result<()> {
    let len = u64::try_from(len).map_err(|_| io::Error::from(Errno::FBIG))?;
    match fallocate(file, FallocateFlags::empty(), 0, len) {
        Err(Errno::OPNOTSUPP) => write_zero_blocks(file, len),
        r => r.map_err(io::Error::from),
    }
}

/// The fallback of [`preallocate_file`]: extends `file` to `len` and writes
/// a zero byte into each 4 KiB block of `0..len` that reads back as a hole
/// or as zero (a non-zero byte is data and is left alone), as glibc does.
fn write_zero_blocks(file: &File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const BLOCK: u64 = 4096;
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    let mut offset = 0;
    while offset < len {
        let mut byte = [0u8; 1];
        let n = file.read_at(&mut byte, offset)?;
        if n == 0 || byte == [0] {
            file.write_all_at(&[0], offset)?;
        }
        offset += BLOCK;
    }
    Ok(())
}

/// A freshly created, preallocated, mapped segment file (header not yet
/// written).
struct NewSegment {
    map: MmapMut,
    raw: Option<Arc<MmapRaw>>,
    path: PathBuf,
}

/// Where the sync thread hands over the segment it prepared.
type PreparedSlot = Arc<Mutex<Option<Result<NewSegment, StoreError>>>>;

/// The temporary name of a prepared segment (renamed on rollover; removed
/// on open if a previous run left it).
const PREPARED_NAME: &str = "prepared.tmp";

/// Creates `path` (0600, must not exist), preallocates and maps `len`
/// bytes, and optionally maps it again for the sync thread (`want_raw`).
/// A failed creation leaves no file behind.
fn create_segment_file(path: &Path, len: usize, want_raw: bool) -> Result<NewSegment, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    let mapped = map_file(&file, len, true)
        .map_err(|e| prealloc_error(path, e))
        .and_then(|map| {
            // No readahead on the loop's map of a fresh segment: its first
            // write to a page then faults in that page alone. With
            // readahead, one fault zero-filled a whole (large-folio)
            // window in one go: single faults of 18-25 ms on the loop
            // thread on the 2-core VM, the largest source of tail latency
            // at 90k deliveries/s (issue 7). Only a hint: best effort.
            let _ = map.advise(Advice::Random);
            let raw = if want_raw {
                let raw = MmapOptions::new()
                    .len(len)
                    .map_raw(&file)
                    .map_err(io_err("map", path))?;
                Some(Arc::new(raw))
            } else {
                None
            };
            Ok((map, raw))
        });
    drop(file);
    match mapped {
        Ok((map, raw)) => Ok(NewSegment {
            map,
            raw,
            path: path.to_path_buf(),
        }),
        Err(e) => {
            // Best effort: a failed creation leaves no file behind.
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016x}.seg"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// What recovering one segment file found.
enum Recovered {
    /// Records to keep.
    Kept(Segment),
    /// No records (blank, or nothing valid): remove once a newer segment
    /// carries the next id.
    Empty,
    /// Unreadable header: reported, left alone.
    Skipped,
}

/// How a segment's scan ended.
enum ScanEnd {
    /// An all-zero header (or the end of the file).
    Clean,
    /// A torn or garbage tail was cut off.
    Torn,
}

impl MmapStore {
    /// Opens (or creates) the store under `<dir>/segments/`, scans every
    /// segment (see [`Store::recovery_report`]), starts a fresh segment for
    /// appends, and starts the sync thread (which msyncs under
    /// [`FsyncPolicy::Always`] and [`FsyncPolicy::Batch`], and does the
    /// background file work under every policy). `on_durable` is called on
    /// the sync thread each time the durable mark advances.
    ///
    /// # Errors
    /// [`StoreError::BadConfig`] for settings out of range;
    /// [`StoreError::Locked`] if another process has the directory open;
    /// [`StoreError::UnsupportedVersion`] for a segment from another format
    /// version; [`StoreError::Io`] for file-system errors. A full disk is
    /// not an error here: appends report it, and retry when space returns.
    pub fn open(
        dir: &Path,
        config: MmapConfig,
        on_durable: Box<dyn Fn() + Send>,
    ) -> Result<Self, StoreError> {
        let (max_payload, reserve) = validate(&config)?;
        let seg_dir = dir.join("segments");
        std::fs::create_dir_all(&seg_dir).map_err(io_err("create", &seg_dir))?;
        let lock_path = seg_dir.join("LOCK");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path: lock_path });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }

        let stale = seg_dir.join(PREPARED_NAME);
        if stale.exists() {
            std::fs::remove_file(&stale).map_err(io_err("remove", &stale))?;
        }
        let mut store = Self {
            dir: seg_dir,
            config,
            max_payload,
            reserve,
            segments: Vec::new(),
            has_active: false,
            next_id: 1,
            next_segment: 0,
            report: RecoveryReport::default(),
            prepared: None,
            sync: None,
            lock,
        };
        let empty = store.recover()?;
        let durable = store
            .segments
            .last()
            .and_then(|s| s.entries.last())
            .map_or(0, |e| e.id);
        if store.config.fsync != FsyncPolicy::Never {
            // What was found on disk may still sit in the page cache after a
            // crash of the previous process: make it durable before the mark
            // claims it.
            for seg in &store.segments {
                seg.map.flush().map_err(io_err("msync", &seg.path))?;
            }
        }
        // The new active segment records the next id in its header; only
        // once it is on disk may the empty segments that carried it go.
        match store.create_segment(0) {
            Ok(()) => {
                if let Some(seg) = store.segments.last() {
                    seg.map
                        .flush_range(0, SEGMENT_HEADER_BYTES)
                        .map_err(io_err("msync", &seg.path))?;
                }
                File::open(&store.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err("sync", &store.dir))?;
                for path in empty {
                    std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
                    store.report.empty_segments_removed += 1;
                }
            }
            Err(e) if e.is_full() => {
                tracing::warn!(error = %e, "mailbox: no room for a new segment; appends will retry");
            }
            Err(e) => return Err(e),
        }
        {
            let sync = SyncThread::start(
                store.config.fsync,
                store.config.batch_interval,
                store.dir.clone(),
                durable,
                on_durable,
            )
            .map_err(io_err("spawn sync thread for", dir))?;
            store.sync = Some(sync);
        }
        Ok(store)
    }

    /// Scans every segment file; returns the empty ones (to remove once the
    /// new active segment is durable).
    fn recover(&mut self) -> Result<Vec<PathBuf>, StoreError> {
        let mut numbers = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            if let Some(n) = entry.file_name().to_str().and_then(parse_segment_name) {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let mut empty = Vec::new();
        let mut last_id = 0u64;
        for number in numbers {
            self.next_segment = self.next_segment.max(number.saturating_add(1));
            self.report.segments_scanned += 1;
            let path = segment_path(&self.dir, number);
            match self.recover_segment(number, &path, &mut last_id)? {
                Recovered::Kept(seg) => self.segments.push(seg),
                Recovered::Empty => empty.push(path),
                Recovered::Skipped => {}
            }
        }
        self.next_id = self.next_id.max(last_id.saturating_add(1));
        self.report.records_recovered = self.segments.iter().map(|s| s.entries.len() as u64).sum();
        Ok(empty)
    }

    /// Scans one segment file.
    fn recover_segment(
        &mut self,
        number: u64,
        path: &Path,
        last_id: &mut u64,
    ) -> Result<Recovered, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("open", path))?;
        let file_len = file.metadata().map_err(io_err("stat", path))?.len();
        let skip = |this: &mut Self, reason: &str| {
            this.report.skipped_segments.push(SkippedSegment {
                path: path.to_path_buf(),
                reason: reason.to_string(),
            });
            Ok(Recovered::Skipped)
        };
        let Ok(len) = usize::try_from(file_len) else {
            return skip(self, "larger than the address space");
        };
        if len < SEGMENT_HEADER_BYTES {
            // Created, then the process died before the header was written.
            let bytes = std::fs::read(path).map_err(io_err("read", path))?;
            if bytes.iter().all(|&b| b == 0) {
                return Ok(Recovered::Empty);
            }
            return skip(self, "shorter than a segment header");
        }
        let map = map_file(&file, len, false).map_err(io_err("map", path))?;
        let header = match decode_segment_header(&map) {
            Ok(h) if h.number == number => h,
            Ok(_) => return skip(self, "header names another segment number"),
            Err(record::HeaderError::Blank) => {
                // A blank header over blank space is a segment whose creation
                // never reached the disk; a blank header over data is damage.
                if map
                    .get(SEGMENT_HEADER_BYTES..)
                    .unwrap_or(&[])
                    .iter()
                    .all(|&b| b == 0)
                {
                    return Ok(Recovered::Empty);
                }
                return skip(self, "blank header but data follows");
            }
            Err(record::HeaderError::Corrupt) => return skip(self, "corrupt segment header"),
            Err(record::HeaderError::Version(version)) => {
                return Err(StoreError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    version,
                });
            }
        };
        self.next_id = self.next_id.max(header.base_id);
        let mut seg = Segment {
            number,
            path: path.to_path_buf(),
            map,
            base_id: header.base_id.max(last_id.saturating_add(1)),
            end: SEGMENT_HEADER_BYTES,
            entries: Vec::new(),
            live: 0,
            bytes: 0,
            released_at: 0,
            raw: None,
        };
        let end = self.scan_segment(&mut seg, last_id);
        if seg.entries.is_empty() {
            return Ok(Recovered::Empty);
        }
        if matches!(end, ScanEnd::Clean) && seg.end < len {
            // Give back the preallocated space after the last record: unmap,
            // truncate, map again (never truncate a mapped file).
            drop(seg.map);
            file.set_len(seg.end as u64)
                .map_err(io_err("truncate", path))?;
            seg.map = map_file(&file, seg.end, false).map_err(io_err("map", path))?;
        }
        Ok(Recovered::Kept(seg))
    }

    /// Indexes the records of `seg`, cutting off a torn tail and skipping
    /// corrupt records in the middle (both reported).
    fn scan_segment(&mut self, seg: &mut Segment, last_id: &mut u64) -> ScanEnd {
        let mut off = SEGMENT_HEADER_BYTES;
        let min_id = seg.base_id;
        loop {
            let accept = |id: u64, last: u64| id >= min_id && id > last;
            match scan_at(&seg.map, off) {
                Scan::Record(d) if accept(d.id, *last_id) => {
                    let Ok(offset) = u32::try_from(off) else {
                        break;
                    };
                    seg.entries.push(Entry {
                        id: d.id,
                        offset,
                        released: false,
                    });
                    seg.bytes += d.size as u64;
                    *last_id = d.id;
                    off += d.size;
                }
                Scan::Record(d) => {
                    // Checksum fine but out of order: not ours to replay.
                    self.report.corrupt_records.push(CorruptRecord {
                        segment: seg.number,
                        offset: off as u64,
                        claimed_id: d.id,
                        bytes: d.size as u64,
                    });
                    off += d.size;
                }
                Scan::End => {
                    // Zeros where a header is due. If anything non-zero
                    // follows (a page that never reached the disk before
                    // later ones did), the records after it are beyond any
                    // completed msync: cut them, but say so.
                    if is_zero(seg.map.get(off..).unwrap_or(&[])) {
                        seg.end = off;
                        seg.live = seg.entries.len();
                        return ScanEnd::Clean;
                    }
                    break;
                }
                Scan::Bad { claimed_id, size } => {
                    // Corrupt in the middle if a good record follows;
                    // otherwise this is where the writes stopped.
                    let next = off.saturating_add(size);
                    if let Scan::Record(d) = scan_at(&seg.map, next)
                        && accept(d.id, *last_id)
                    {
                        self.report.corrupt_records.push(CorruptRecord {
                            segment: seg.number,
                            offset: off as u64,
                            claimed_id,
                            bytes: size as u64,
                        });
                        off = next;
                    } else {
                        break;
                    }
                }
                Scan::Garbage => break,
            }
        }
        let tail = seg.map.get(off..).unwrap_or(&[]);
        let bytes = tail.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        self.report.torn_tails.push(TornTail {
            segment: seg.number,
            offset: off as u64,
            bytes: bytes as u64,
        });
        seg.end = off;
        seg.live = seg.entries.len();
        ScanEnd::Torn
    }

    /// Makes the next segment active: the one the sync thread prepared if
    /// it is ready (renamed into place), else one created here. `beyond`
    /// segments over `max_segments` are allowed (1 for reserved appends).
    /// On error nothing changes.
    fn create_segment(&mut self, beyond: usize) -> Result<(), StoreError> {
        let in_use = self.segments.len();
        if in_use >= self.config.max_segments.saturating_add(beyond) {
            return Err(StoreError::StoreFull {
                segments: in_use,
                max_segments: self.config.max_segments,
            });
        }
        let number = self.next_segment;
        let path = segment_path(&self.dir, number);
        let (mut map, raw) = match self.take_prepared() {
            Some(ready) => {
                if let Err(e) = std::fs::rename(&ready.path, &path) {
                    drop(ready.map);
                    // Best effort: a stale prepared file is removed on open.
                    let _ = std::fs::remove_file(&ready.path);
                    return Err(io_err("rename", &ready.path)(e));
                }
                (ready.map, ready.raw)
            }
            None => {
                let len = usize::try_from(self.config.segment_bytes).map_err(|_| {
                    StoreError::BadConfig("segment size exceeds the address space".into())
                })?;
                let fresh =
                    create_segment_file(&path, len, self.config.fsync != FsyncPolicy::Never)?;
                (fresh.map, fresh.raw)
            }
        };
        let header = encode_segment_header(number, self.next_id);
        if let Some(dst) = map.get_mut(..SEGMENT_HEADER_BYTES) {
            dst.copy_from_slice(&header);
        }
        if let (Some(sync), Some(raw)) = (&self.sync, &raw) {
            sync.new_segment(raw, SEGMENT_HEADER_BYTES);
        }
        if let Some(old) = self.segments.last_mut().filter(|_| self.has_active) {
            old.raw = None;
        }
        self.segments.push(Segment {
            number,
            path,
            map,
            base_id: self.next_id,
            end: SEGMENT_HEADER_BYTES,
            entries: Vec::new(),
            live: 0,
            bytes: 0,
            released_at: 0,
            raw,
        });
        self.has_active = true;
        self.next_segment = number.saturating_add(1);
        Ok(())
    }

    /// Asks the sync thread to create, preallocate and map the next segment
    /// file (under a temporary name), so that rollover on the loop thread is
    /// a rename.
    /// Called once the active segment is half full.
    fn prepare_next(&mut self) {
        let (Some(sync), None) = (&self.sync, &self.prepared) else {
            return;
        };
        let Ok(len) = usize::try_from(self.config.segment_bytes) else {
            return;
        };
        let slot: PreparedSlot = Arc::default();
        let job_slot = Arc::clone(&slot);
        let path = self.dir.join(PREPARED_NAME);
        let want_raw = self.config.fsync != FsyncPolicy::Never;
        sync.spawn(Box::new(move || {
            let result = create_segment_file(&path, len, want_raw);
            *job_slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
        }));
        self.prepared = Some(slot);
    }

    /// The prepared segment, if the sync thread has finished it.
    fn take_prepared(&mut self) -> Option<NewSegment> {
        let slot = self.prepared.as_ref()?;
        let result = slot.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        self.prepared = None;
        match result {
            Ok(ready) => Some(ready),
            Err(e) => {
                tracing::warn!(error = %e, "mailbox: preparing the next segment failed; creating it inline");
                None
            }
        }
    }

    fn locate(&self, id: u64) -> Option<(usize, usize)> {
        let after = self.segments.partition_point(|s| s.base_id <= id);
        let s = after.checked_sub(1)?;
        let e = self.segments.get(s)?.find(id)?;
        Some((s, e))
    }

    /// The largest payload this store accepts.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &MmapConfig {
        &self.config
    }
}

/// True if every byte is zero (word at a time: it runs over up to a whole
/// preallocated segment on open).
fn is_zero(bytes: &[u8]) -> bool {
    let (words, rest) = bytes.as_chunks::<8>();
    words.iter().all(|w| u64::from_ne_bytes(*w) == 0) && rest.iter().all(|&b| b == 0)
}

/// The record at byte `at` of a segment map.
fn scan_at(map: &[u8], at: usize) -> Scan<'_> {
    record::scan_record(map.get(at..).unwrap_or(&[]), MAILBOX_MAX_PAYLOAD_BYTES)
}

/// Checks `config`; returns the largest payload it allows and the reserve
/// (bytes at the end of each segment for [`Store::append_reserved`]).
fn validate(config: &MmapConfig) -> Result<(usize, usize), StoreError> {
    let range = MAILBOX_MIN_SEGMENT_BYTES..=MAILBOX_MAX_SEGMENT_BYTES;
    if !range.contains(&config.segment_bytes) {
        return Err(StoreError::BadConfig(format!(
            "segment size {} outside {}..={}",
            config.segment_bytes, MAILBOX_MIN_SEGMENT_BYTES, MAILBOX_MAX_SEGMENT_BYTES
        )));
    }
    if config.max_segments == 0 {
        return Err(StoreError::BadConfig(
            "max_segments must be at least 1".into(),
        ));
    }
    let seg = usize::try_from(config.segment_bytes)
        .map_err(|_| StoreError::BadConfig("segment size exceeds the address space".into()))?;
    let reserve = config
        .reserve_bytes
        .min(config.segment_bytes / MAILBOX_RESERVE_MAX_FRACTION);
    let reserve = usize::try_from(reserve).unwrap_or(0) & !(record::RECORD_ALIGN - 1);
    // Payload room in an empty segment below the reserve, rounded down to
    // the record alignment.
    let room = (seg - SEGMENT_HEADER_BYTES - reserve) & !(record::RECORD_ALIGN - 1);
    let fits = room - RECORD_HEADER_BYTES - RECORD_TRAILER_BYTES;
    Ok((fits.min(MAILBOX_MAX_PAYLOAD_BYTES), reserve))
}

impl Drop for MmapStore {
    /// Stops the sync thread (after its final flush and pending jobs),
    /// removes a prepared but unused segment file, truncates the active
    /// segment to its records, and unlocks the directory.
    fn drop(&mut self) {
        drop(self.sync.take());
        if let Some(ready) = self.take_prepared() {
            drop(ready.map);
            // Best effort: open removes a stale prepared file anyway.
            let _ = std::fs::remove_file(&ready.path);
        }
        // A clean close gives back the active segment's unused preallocated
        // space, so the next open need not check megabytes of zeros after
        // its last record. Both maps go first (never truncate a mapped
        // file). Best effort: if this fails, the next open scans the zeros.
        if self.has_active
            && let Some(seg) = self.segments.pop()
        {
            let (path, end) = (seg.path, seg.end);
            drop(seg.map);
            drop(seg.raw);
            if let Ok(file) = OpenOptions::new().write(true).open(&path) {
                let _ = file.set_len(end as u64);
            }
        }
        // Unlock explicitly, last: closing our descriptor is not enough
        // while a child process forked by another thread (not yet past the
        // `exec` that closes its inherited copies) shares the open file
        // description, and with it the lock. Best effort: closing still
        // releases it once every copy is gone.
        let _ = self.lock.unlock();
    }
}

impl MmapStore {
    /// Appends a record. An ordinary one leaves the reserve free at the end
    /// of the active segment and needs the store within `max_segments`; a
    /// `reserved` one may use the reserve and create one segment beyond
    /// the limit (a store reopened at its limit has no active segment, and
    /// its acks must still get in).
    fn append_class(
        &mut self,
        reserved: bool,
        kind: u8,
        unix_ms: u64,
        payload: &[u8],
    ) -> Result<RecordId, StoreError> {
        if self.sync.as_ref().is_some_and(|s| s.shared().failed()) {
            return Err(StoreError::SyncFailed);
        }
        let max_segments = self.config.max_segments;
        if !reserved && self.segments.len() > max_segments {
            return Err(StoreError::StoreFull {
                segments: self.segments.len(),
                max_segments,
            });
        }
        let keep_free = if reserved { 0 } else { self.reserve };
        if payload.len() > self.max_payload {
            return Err(StoreError::TooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let size = encoded_len(payload.len()).ok_or(StoreError::TooLarge {
            len: payload.len(),
            max: self.max_payload,
        })?;
        let id = self.next_id;
        let next = id.checked_add(1).ok_or(StoreError::IdsExhausted)?;
        let fits = |s: &Segment| {
            s.end
                .checked_add(size)
                .is_some_and(|e| e.saturating_add(keep_free) <= s.map.len())
        };
        if !self.has_active || !self.segments.last().is_some_and(fits) {
            self.create_segment(usize::from(reserved))?;
        }
        let Some(seg) = self.segments.last_mut() else {
            return Err(StoreError::BadConfig("no active segment".into()));
        };
        let from = seg.end;
        let to = from + size;
        let offset = u32::try_from(from)
            .map_err(|_| StoreError::BadConfig("segment offset over u32".into()))?;
        let written = seg
            .map
            .get_mut(from..to)
            .and_then(|buf| encode_record(buf, id, kind, unix_ms, payload));
        if written.is_none() {
            return Err(StoreError::TooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        seg.entries.push(Entry {
            id,
            offset,
            released: false,
        });
        seg.end = to;
        let half_full = to > seg.map.len() / 2;
        seg.live += 1;
        seg.bytes += size as u64;
        self.next_id = next;
        if let (Some(sync), Some(raw)) = (&self.sync, &seg.raw) {
            sync.dirty(raw, from, to, id);
        }
        if half_full && self.prepared.is_none() {
            self.prepare_next();
        }
        Ok(RecordId(id))
    }
}

impl Store for MmapStore {
    fn append(&mut self, kind: u8, unix_ms: u64, payload: &[u8]) -> Result<RecordId, StoreError> {
        self.append_class(false, kind, unix_ms, payload)
    }

    fn append_reserved(
        &mut self,
        kind: u8,
        unix_ms: u64,
        payload: &[u8],
    ) -> Result<RecordId, StoreError> {
        self.append_class(true, kind, unix_ms, payload)
    }

    fn get(&self, id: RecordId) -> Result<RecordRef<'_>, StoreError> {
        // `ok_or_else`: building the error eagerly costs a drop per call
        // on the delivery path.
        let missing = || StoreError::NotFound(id);
        let (s, e) = self.locate(id.0).ok_or_else(missing)?;
        let seg = self.segments.get(s).ok_or_else(missing)?;
        let entry = *seg.entries.get(e).ok_or_else(missing)?;
        seg.record(entry).ok_or_else(missing)
    }

    fn release(&mut self, id: RecordId) {
        let last_appended = self.next_id.saturating_sub(1);
        let Some((s, e)) = self.locate(id.0) else {
            return;
        };
        let Some(seg) = self.segments.get_mut(s) else {
            return;
        };
        let Some(entry) = seg.entries.get_mut(e) else {
            return;
        };
        if !entry.released {
            entry.released = true;
            seg.live -= 1;
            if seg.live == 0 {
                seg.released_at = last_appended;
            }
        }
    }

    fn durable_up_to(&self) -> Option<RecordId> {
        if self.config.fsync == FsyncPolicy::Never {
            return None;
        }
        let d = self.sync.as_ref()?.shared().durable();
        (d > 0).then_some(RecordId(d))
    }

    fn replay(&self, f: &mut dyn FnMut(RecordRef<'_>)) {
        for seg in &self.segments {
            for &e in &seg.entries {
                if let Some(r) = seg.record(e) {
                    f(r);
                }
            }
        }
    }

    fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    fn compact(&mut self) -> Result<CompactionStats, StoreError> {
        // Under Never nothing is ever known durable; deleting is then as
        // safe as anything else that policy does.
        let durable = match self.config.fsync {
            FsyncPolicy::Never => u64::MAX,
            _ => self.durable_up_to().map_or(0, |d| d.0),
        };
        let mut stats = CompactionStats::default();
        let deletable = self.segments.len() - usize::from(self.has_active);
        let mut i = 0;
        let mut examined = 0;
        while examined < deletable {
            examined += 1;
            let Some(seg) = self.segments.get(i) else {
                break;
            };
            if seg.live > 0 {
                i += 1;
                continue;
            }
            if durable < seg.released_at {
                stats.segments_waiting_for_sync += 1;
                i += 1;
                continue;
            }
            if self.sync.is_none() {
                std::fs::remove_file(&seg.path).map_err(io_err("remove", &seg.path))?;
            }
            let seg = self.segments.remove(i);
            if let Some(sync) = &self.sync {
                let (map, path) = (seg.map, seg.path);
                sync.spawn(Box::new(move || {
                    drop(map);
                    if let Err(e) = std::fs::remove_file(&path) {
                        // It reappears on the next open; its records are
                        // replayed and released again. Nothing is lost.
                        tracing::warn!(error = %e, path = %path.display(), "mailbox: cannot remove a compacted segment");
                    }
                }));
            }
            stats.segments_deleted += 1;
            stats.records_dropped += seg.entries.len() as u64;
            stats.bytes_freed += seg.bytes;
        }
        Ok(stats)
    }

    fn pinning_oldest(&self, max: usize) -> Vec<RecordId> {
        if self.segments.len() < 2 && self.has_active {
            return Vec::new();
        }
        self.segments
            .first()
            .into_iter()
            .flat_map(|s| s.entries.iter())
            .filter(|e| !e.released)
            .take(max)
            .map(|e| RecordId(e.id))
            .collect()
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            records: self.segments.iter().map(|s| s.entries.len() as u64).sum(),
            live_records: self.segments.iter().map(|s| s.live as u64).sum(),
            bytes: self.segments.iter().map(|s| s.bytes).sum(),
            segments: self.segments.len(),
            next_id: self.next_id,
            durable_up_to: self.durable_up_to(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(segment_bytes: u64) -> MmapConfig {
        MmapConfig {
            segment_bytes,
            ..MmapConfig::default()
        }
    }

    #[test]
    fn segment_size_bounds_and_payload_room() {
        assert!(validate(&config(MAILBOX_MIN_SEGMENT_BYTES - 1)).is_err());
        assert!(validate(&config(MAILBOX_MAX_SEGMENT_BYTES + 1)).is_err());
        assert_eq!(
            validate(&config(MAILBOX_MAX_SEGMENT_BYTES)).unwrap(),
            (
                MAILBOX_MAX_PAYLOAD_BYTES,
                usize::try_from(MAILBOX_RESERVE_BYTES).unwrap()
            )
        );
        assert_eq!(
            validate(&config(MAILBOX_SEGMENT_BYTES)).unwrap(),
            (
                MAILBOX_MAX_PAYLOAD_BYTES,
                usize::try_from(MAILBOX_RESERVE_BYTES).unwrap()
            )
        );
        let (min, reserve) = validate(&config(MAILBOX_MIN_SEGMENT_BYTES)).unwrap();
        // The reserve of a tiny segment is 1/64 of it (one ack record), and
        // the largest payload fills the smallest segment up to the reserve.
        assert_eq!(reserve, 64);
        let size = encoded_len(min).unwrap();
        assert_eq!(SEGMENT_HEADER_BYTES + size + reserve, 4096);
        let no_reserve = MmapConfig {
            reserve_bytes: 0,
            ..config(MAILBOX_MIN_SEGMENT_BYTES)
        };
        let (all, none) = validate(&no_reserve).unwrap();
        assert_eq!(
            (SEGMENT_HEADER_BYTES + encoded_len(all).unwrap(), none),
            (4096, 0)
        );
        assert!(
            validate(&MmapConfig {
                max_segments: 0,
                ..MmapConfig::default()
            })
            .is_err()
        );
        // Offsets are kept as u32: the largest segment must fit.
        assert!(u32::try_from(MAILBOX_MAX_SEGMENT_BYTES).is_ok());
    }

    #[test]
    fn preallocation_failures_map_to_disk_full() {
        let p = Path::new("x.seg");
        for errno in [Errno::NOSPC, Errno::DQUOT, Errno::FBIG] {
            let e = prealloc_error(p, io::Error::from(errno));
            assert!(matches!(e, StoreError::DiskFull { .. }), "{errno}");
            assert!(e.is_full());
        }
        let e = prealloc_error(p, io::Error::from(Errno::IO));
        assert!(matches!(
            e,
            StoreError::Io {
                op: "preallocate",
                ..
            }
        ));
        assert!(!e.is_full());
    }

    #[test]
    fn preallocation_allocates_blocks_and_the_fallback_keeps_data() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let dir = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("a"))
            .unwrap();
        preallocate_file(&f, 64 * 1024).unwrap();
        let m = f.metadata().unwrap();
        assert_eq!(m.len(), 64 * 1024);
        // st_blocks counts 512-byte units actually allocated (not a hole).
        assert!(m.blocks() * 512 >= 64 * 1024, "{} blocks", m.blocks());

        // The EOPNOTSUPP fallback, called directly: a sparse file gets every
        // block written, bytes already there are kept, and it grows to len.
        let g = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("b"))
            .unwrap();
        g.write_all_at(b"keep", 8192).unwrap();
        write_zero_blocks(&g, 40 * 1024 + 1).unwrap();
        let m = g.metadata().unwrap();
        assert_eq!(m.len(), 40 * 1024 + 1);
        assert!(m.blocks() * 512 >= 40 * 1024, "{} blocks", m.blocks());
        let mut buf = [0u8; 4];
        g.read_exact_at(&mut buf, 8192).unwrap();
        assert_eq!(&buf, b"keep");
    }

    /// The flaky `corrupt_segment_header_is_skipped_and_left_alone`: a
    /// child process spawned by another test thread inherits every open
    /// descriptor until its `exec` closes them (close-on-exec), including a
    /// store's `LOCK`. An inherited copy shares the open file description,
    /// and with it the `flock`, so closing our descriptor on drop did not
    /// unlock while the child was between fork and exec, and the reopen
    /// failed with `Locked`. `try_clone` makes exactly such a copy.
    #[test]
    fn a_lock_descriptor_inherited_by_a_child_does_not_outlive_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = MmapConfig {
            fsync: FsyncPolicy::Never,
            ..config(MAILBOX_MIN_SEGMENT_BYTES)
        };
        let s = MmapStore::open(dir.path(), cfg.clone(), Box::new(|| {})).unwrap();
        let inherited = s.lock.try_clone().unwrap();
        drop(s);
        let reopened = MmapStore::open(dir.path(), cfg.clone(), Box::new(|| {}));
        assert!(reopened.is_ok(), "{:?}", reopened.err());
        // And the reopened store holds the lock against a second opener.
        let second = MmapStore::open(dir.path(), cfg, Box::new(|| {}));
        assert!(matches!(second, Err(StoreError::Locked { .. })));
        drop(inherited);
    }

    /// The loop's map of a segment it creates is `MADV_RANDOM` (no
    /// readahead): `VmFlags` of its mapping in `/proc/self/smaps` has `rr`.
    #[test]
    fn a_fresh_segment_is_mapped_without_readahead() {
        let dir = tempfile::tempdir().unwrap();
        let s = MmapStore::open(dir.path(), config(64 * 1024), Box::new(|| {})).unwrap();
        let seg = s.segments.last().unwrap();
        let start = seg.map.as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_vma = false;
        let mut flags = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((a, _)) = range.split_once('-')
                && let Ok(a) = usize::from_str_radix(a, 16)
            {
                in_vma = a == start;
            } else if in_vma && let Some(f) = line.strip_prefix("VmFlags:") {
                flags = Some(f.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
            }
        }
        let flags = flags.expect("the segment's mapping is in smaps");
        assert!(flags.iter().any(|f| f == "rr"), "{flags:?}");
        assert!(
            flags.iter().any(|f| f == "sh"),
            "a shared mapping: {flags:?}"
        );
    }

    #[test]
    fn segment_names() {
        assert_eq!(parse_segment_name("00000000000000ff.seg"), Some(255));
        assert_eq!(
            segment_path(Path::new("d"), 255),
            Path::new("d/00000000000000ff.seg")
        );
        for bad in [
            "ff.seg",
            "00000000000000ff.tmp",
            "00000000000000fg.seg",
            "LOCK",
            "+000000000000000.seg",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }
}
