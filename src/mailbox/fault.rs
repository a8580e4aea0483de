//! `FaultStore`: a [`MemStore`] with an explicit durable mark, for power-loss
//! and full-disk tests of the relay.

use super::{
    CompactionStats, MemStore, RecordId, RecordRef, RecoveryReport, Store, StoreError, StoreStats,
};

/// A [`MemStore`] whose records become durable only when the test says so.
///
/// [`FaultStore::sync`] moves the durable mark to the last record appended
/// (what the sync thread's msync does); [`FaultStore::simulate_power_loss`]
/// then drops every record above the mark and forgets every release, exactly
/// what a restart after power loss sees. [`FaultStore::set_full`] makes
/// appends fail as on a full disk.
#[derive(Debug, Default)]
pub struct FaultStore {
    inner: MemStore,
    durable: Option<RecordId>,
    full: bool,
}

impl FaultStore {
    /// An empty store; nothing is durable until [`FaultStore::sync`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with `n` records per virtual segment.
    pub fn with_segment_records(n: usize) -> Self {
        Self {
            inner: MemStore::with_segment_records(n),
            ..Self::default()
        }
    }

    /// Makes every record appended so far durable; returns the new mark.
    pub fn sync(&mut self) -> Option<RecordId> {
        self.durable = self.inner.durable_up_to();
        self.durable
    }

    /// Makes records up to `id` durable (never moves the mark backwards or
    /// past the last record appended).
    pub fn sync_up_to(&mut self, id: RecordId) {
        let capped = self.inner.durable_up_to().map(|last| last.min(id));
        self.durable = self.durable.max(capped);
    }

    /// While `full` is set, appends fail with [`StoreError::DiskFull`] and
    /// change nothing.
    pub fn set_full(&mut self, full: bool) {
        self.full = full;
    }

    /// Power loss and restart: every record above the durable mark is gone,
    /// every surviving record is live again, and the next id follows the
    /// mark. Returns how many records were lost.
    pub fn simulate_power_loss(&mut self) -> u64 {
        let lost = self.inner.truncate_after(self.durable);
        self.inner.restart();
        lost
    }
}

impl Store for FaultStore {
    fn append(&mut self, kind: u8, unix_ms: u64, payload: &[u8]) -> Result<RecordId, StoreError> {
        if self.full {
            return Err(StoreError::DiskFull {
                path: "fault-store".into(),
            });
        }
        self.inner.append(kind, unix_ms, payload)
    }

    fn get(&self, id: RecordId) -> Result<RecordRef<'_>, StoreError> {
        self.inner.get(id)
    }

    fn release(&mut self, id: RecordId) {
        self.inner.release(id);
    }

    fn durable_up_to(&self) -> Option<RecordId> {
        self.durable
    }

    fn replay(&self, f: &mut dyn FnMut(RecordRef<'_>)) {
        self.inner.replay(f);
    }

    fn recovery_report(&self) -> &RecoveryReport {
        self.inner.recovery_report()
    }

    fn compact(&mut self) -> Result<CompactionStats, StoreError> {
        Ok(self.inner.compact_with_mark(self.durable))
    }

    fn pinning_oldest(&self, max: usize) -> Vec<RecordId> {
        self.inner.pinning_oldest(max)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            durable_up_to: self.durable,
            ..self.inner.stats()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_loss_drops_exactly_the_undurable_records() {
        let mut s = FaultStore::with_segment_records(2);
        let a = s.append(1, 0, b"a").unwrap();
        let b = s.append(1, 0, b"b").unwrap();
        assert_eq!(s.durable_up_to(), None);
        assert_eq!(s.sync(), Some(b));
        s.release(a);
        let c = s.append(1, 0, b"c").unwrap();
        let _d = s.append(1, 0, b"d").unwrap();
        s.sync_up_to(c);
        assert_eq!(s.durable_up_to(), Some(c));
        assert_eq!(s.simulate_power_loss(), 1);
        let mut seen = Vec::new();
        s.replay(&mut |r| seen.push(r.id));
        assert_eq!(seen, vec![a, b, c]);
        assert_eq!(s.stats().live_records, 3, "releases are forgotten");
        assert_eq!(s.append(1, 0, b"e").unwrap(), RecordId(c.0 + 1));
    }

    #[test]
    fn compaction_waits_for_the_releasing_records_to_be_durable() {
        let mut s = FaultStore::with_segment_records(1);
        let a = s.append(1, 0, b"a").unwrap();
        let _ack = s.append(2, 0, b"ack a").unwrap();
        s.release(a);
        let st = s.compact().unwrap();
        assert_eq!((st.segments_deleted, st.segments_waiting_for_sync), (0, 1));
        s.sync();
        assert_eq!(s.compact().unwrap().segments_deleted, 1);
    }

    #[test]
    fn full_disk_fails_appends_and_recovers() {
        let mut s = FaultStore::new();
        let a = s.append(1, 0, b"a").unwrap();
        s.set_full(true);
        let err = s.append(1, 0, b"b").unwrap_err();
        assert!(err.is_full(), "{err}");
        assert_eq!(s.get(a).unwrap().payload, b"a");
        s.set_full(false);
        assert_eq!(s.append(1, 0, b"b").unwrap(), RecordId(a.0 + 1));
    }
}
