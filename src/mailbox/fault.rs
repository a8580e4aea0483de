//! `FaultStore`: a [`MemStore`] with an explicit durable mark, for power-loss
//! and full-disk tests of the relay.

use super::record::encoded_len;
use super::{
    CompactionStats, MemStore, RecordId, RecordRef, RecoveryReport, Store, StoreError, StoreStats,
};
use crate::limits::MAILBOX_RESERVE_BYTES;

/// A [`MemStore`] whose records become durable only when the test says so.
///
/// [`FaultStore::sync`] moves the durable mark to the last record appended
/// (what the sync thread's msync does); [`FaultStore::simulate_power_loss`]
/// then drops every record above the mark and forgets every release, exactly
/// what a restart after power loss sees. [`FaultStore::set_full`] makes
/// appends fail as on a full disk; [`Store::append_reserved`] then still
/// succeeds for up to [`MAILBOX_RESERVE_BYTES`] of records, as the reserve
/// at the end of a real segment does.
#[derive(Debug, Default)]
pub struct FaultStore {
    inner: MemStore,
    durable: Option<RecordId>,
    full: bool,
    /// Record bytes appended from the reserve since the store became full.
    reserve_used: u64,
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
    /// change nothing; reserved appends take from the reserve until it is
    /// used up. Clearing it (space returned) refills the reserve.
    pub fn set_full(&mut self, full: bool) {
        self.full = full;
        if !full {
            self.reserve_used = 0;
        }
    }

    fn disk_full() -> StoreError {
        StoreError::DiskFull {
            path: "fault-store".into(),
        }
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
            return Err(Self::disk_full());
        }
        self.inner.append(kind, unix_ms, payload)
    }

    fn append_reserved(
        &mut self,
        kind: u8,
        unix_ms: u64,
        payload: &[u8],
    ) -> Result<RecordId, StoreError> {
        if !self.full {
            return self.inner.append(kind, unix_ms, payload);
        }
        let size = encoded_len(payload.len()).map_or(u64::MAX, |n| n as u64);
        let used = self.reserve_used.saturating_add(size);
        if used > MAILBOX_RESERVE_BYTES {
            return Err(Self::disk_full());
        }
        let id = self.inner.append(kind, unix_ms, payload)?;
        self.reserve_used = used;
        Ok(id)
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

    #[test]
    fn a_full_store_takes_reserved_appends_until_the_reserve_is_used() {
        let mut s = FaultStore::new();
        s.set_full(true);
        assert!(s.append(1, 0, b"send").unwrap_err().is_full());
        let payload = [7u8; 1000];
        let per = encoded_len(payload.len()).unwrap() as u64;
        let fit = MAILBOX_RESERVE_BYTES / per;
        for _ in 0..fit {
            s.append_reserved(2, 0, &payload).unwrap();
        }
        let err = s.append_reserved(2, 0, &payload).unwrap_err();
        assert!(err.is_full(), "{err}");
        assert_eq!(s.stats().records, fit, "a refused append stores nothing");
        // Space returns: the reserve is whole again.
        s.set_full(false);
        s.append(1, 0, b"send").unwrap();
        s.set_full(true);
        s.append_reserved(2, 0, &payload).unwrap();
    }
}
