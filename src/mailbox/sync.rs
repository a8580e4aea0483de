//! The sync thread: msyncs the dirty ranges of the memory map off the event
//! loop's thread (group commit), then advances the durable mark and wakes
//! the loop. It also unmaps and unlinks compacted segments, which takes
//! milliseconds for a 64 MiB file with cached pages: too long for the loop.
//!
//! The loop thread writes records through its own `MmapMut`; this thread
//! flushes through a second, shared mapping of the same file (`MmapRaw`,
//! which only exposes `flush_range` here). Both mappings are `MAP_SHARED`
//! views of the same page-cache pages, and on Linux `msync(MS_SYNC)` writes
//! back the file range whatever mapping dirtied it (it is `fsync` of that
//! range), so flushing one flushes the other's writes.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use memmap2::MmapRaw;

/// A piece of background work for the sync thread.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

use super::FsyncPolicy;

/// A dirty byte range of one segment.
struct DirtyRange {
    map: Arc<MmapRaw>,
    from: usize,
    to: usize,
}

#[derive(Default)]
struct Pending {
    ranges: Vec<DirtyRange>,
    /// Background work: unmapping and unlinking compacted segments,
    /// preparing the next segment.
    jobs: Vec<Job>,
    /// A segment file was created: its directory entry must be synced too.
    dir_sync: bool,
    /// Every record up to this id is covered by `ranges` (or already synced).
    last_id: u64,
    shutdown: bool,
}

impl Pending {
    fn has_work(&self) -> bool {
        !self.ranges.is_empty() || self.dir_sync || !self.jobs.is_empty()
    }
}

/// State shared between the store (loop thread) and the sync thread.
pub(crate) struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The durable mark: every record id <= this is on stable storage
    /// (0: none).
    durable: AtomicU64,
    /// A flush failed: nothing more can be promised.
    failed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic on the sync thread cannot leave `Pending` inconsistent
        // (every update is a single push or assignment), so a poisoned lock
        // is still usable.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// The store's handle on its sync thread.
pub(crate) struct SyncThread {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl SyncThread {
    /// Starts the thread. `durable` is the mark to start from (records
    /// found on disk and synced at open).
    pub(crate) fn start(
        policy: FsyncPolicy,
        batch_interval: Duration,
        dir: PathBuf,
        durable: u64,
        on_durable: Box<dyn Fn() + Send>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                last_id: durable,
                ..Pending::default()
            }),
            wake: Condvar::new(),
            durable: AtomicU64::new(durable),
            failed: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("hermes-mailbox-sync".into())
            .spawn(move || run(&thread_shared, policy, batch_interval, &dir, &*on_durable))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Records that bytes `from..to` of `map` hold records up to `last_id`.
    /// Wakes the thread only when the queue goes from empty to non-empty.
    pub(crate) fn dirty(&self, map: &Arc<MmapRaw>, from: usize, to: usize, last_id: u64) {
        let mut p = self.shared.lock();
        let was_idle = !p.has_work();
        match p.ranges.last_mut() {
            Some(r) if Arc::ptr_eq(&r.map, map) && r.to == from => r.to = to,
            _ => p.ranges.push(DirtyRange {
                map: Arc::clone(map),
                from,
                to,
            }),
        }
        p.last_id = p.last_id.max(last_id);
        drop(p);
        if was_idle {
            self.shared.wake.notify_one();
        }
    }

    /// A new segment file exists: sync its directory entry with the next
    /// batch, and its header (`0..header_len`).
    pub(crate) fn new_segment(&self, map: &Arc<MmapRaw>, header_len: usize) {
        let mut p = self.shared.lock();
        let was_idle = !p.has_work();
        p.dir_sync = true;
        p.ranges.push(DirtyRange {
            map: Arc::clone(map),
            from: 0,
            to: header_len,
        });
        drop(p);
        if was_idle {
            self.shared.wake.notify_one();
        }
    }
}

impl SyncThread {
    /// Runs `job` on the sync thread, after the next batch of msyncs.
    pub(crate) fn spawn(&self, job: Job) {
        let mut p = self.shared.lock();
        let was_idle = !p.has_work();
        p.jobs.push(job);
        drop(p);
        if was_idle {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for SyncThread {
    /// Flushes everything still pending, then stops the thread.
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            // A panicked sync thread has nothing left to flush.
            let _ = t.join();
        }
    }
}

fn run(
    shared: &Shared,
    policy: FsyncPolicy,
    interval: Duration,
    dir: &std::path::Path,
    on_durable: &dyn Fn(),
) {
    loop {
        let mut p = shared.lock();
        while !p.has_work() && !p.shutdown {
            p = shared.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
        if !p.has_work() {
            return; // shutdown with nothing pending
        }
        if policy == FsyncPolicy::Batch {
            // Let the batch fill for one interval (appends keep going; they
            // do not notify while work is pending). Shutdown cuts it short.
            p = shared
                .wake
                .wait_timeout_while(p, interval, |p| !p.shutdown)
                .map_or_else(|e| e.into_inner().0, |(p, _)| p);
        }
        let ranges = std::mem::take(&mut p.ranges);
        let jobs = std::mem::take(&mut p.jobs);
        let dir_sync = std::mem::take(&mut p.dir_sync);
        let last_id = p.last_id;
        drop(p);

        if !shared.failed() {
            flush(shared, &ranges, dir_sync, dir, last_id, on_durable);
        }
        drop(ranges);
        // Background jobs come after the msyncs: a slow one (preparing a
        // segment) must not delay a durable mark.
        for job in jobs {
            job();
        }
    }
}

/// Flushes `ranges` (and the directory), then advances the durable mark to
/// `last_id` and calls `on_durable`; on failure marks the store failed.
fn flush(
    shared: &Shared,
    ranges: &[DirtyRange],
    dir_sync: bool,
    dir: &std::path::Path,
    last_id: u64,
    on_durable: &dyn Fn(),
) {
    for r in ranges {
        if let Err(e) = r.map.flush_range(r.from, r.to.saturating_sub(r.from)) {
            tracing::error!(error = %e, "mailbox msync failed; refusing further appends");
            shared.failed.store(true, Ordering::Release);
            return;
        }
    }
    if dir_sync && let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::error!(error = %e, dir = %dir.display(), "mailbox directory sync failed; refusing further appends");
        shared.failed.store(true, Ordering::Release);
        return;
    }
    if last_id > shared.durable() {
        shared.durable.store(last_id, Ordering::Release);
        on_durable();
    }
}
