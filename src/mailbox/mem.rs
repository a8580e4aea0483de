//! `MemStore`: the in-memory twin of the memory-mapped store, for the relay
//! core's deterministic tests and simulations.

use std::collections::VecDeque;

use super::record::encoded_len;
use super::{CompactionStats, RecordId, RecordRef, RecoveryReport, Store, StoreError, StoreStats};
use crate::limits::{MAILBOX_MAX_PAYLOAD_BYTES, MAILBOX_MEM_SEGMENT_RECORDS};

struct MemRecord {
    id: u64,
    kind: u8,
    unix_ms: u64,
    payload: Box<[u8]>,
    released: bool,
}

/// A virtual segment: up to `segment_records` records with consecutive ids.
struct MemSegment {
    records: Vec<MemRecord>,
    live: usize,
    /// The last id appended when `live` last dropped to zero.
    released_at: u64,
}

impl MemSegment {
    fn first_id(&self) -> u64 {
        self.records.first().map_or(u64::MAX, |r| r.id)
    }

    fn find(&self, id: u64) -> Option<usize> {
        self.records.binary_search_by_key(&id, |r| r.id).ok()
    }
}

/// Records in memory, grouped into virtual segments of a fixed number of
/// records so compaction and copy-forward behave as with segment files.
///
/// Everything appended is immediately "durable" (there is nothing more to
/// wait for): [`Store::durable_up_to`] is the last id appended. Use
/// [`super::FaultStore`] to test power loss.
pub struct MemStore {
    segments: VecDeque<MemSegment>,
    segment_records: usize,
    max_payload: usize,
    next_id: u64,
    bytes: u64,
    report: RecoveryReport,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore")
            .field("stats", &self.stats())
            .finish()
    }
}

impl MemStore {
    /// An empty store with [`MAILBOX_MEM_SEGMENT_RECORDS`] records per
    /// virtual segment.
    pub fn new() -> Self {
        Self::with_segment_records(MAILBOX_MEM_SEGMENT_RECORDS)
    }

    /// An empty store with `n` records per virtual segment (at least 1).
    pub fn with_segment_records(n: usize) -> Self {
        Self {
            segments: VecDeque::new(),
            segment_records: n.max(1),
            max_payload: MAILBOX_MAX_PAYLOAD_BYTES,
            next_id: 1,
            bytes: 0,
            report: RecoveryReport::default(),
        }
    }

    /// Simulates a clean restart: every record survives and is live again
    /// (release marks are not persisted; see the module doc of
    /// [`crate::mailbox`]).
    pub fn restart(&mut self) {
        for seg in &mut self.segments {
            for r in &mut seg.records {
                r.released = false;
            }
            seg.live = seg.records.len();
            seg.released_at = 0;
        }
        self.report = RecoveryReport {
            segments_scanned: self.segments.len(),
            records_recovered: self.segments.iter().map(|s| s.records.len() as u64).sum(),
            ..RecoveryReport::default()
        };
    }

    /// Drops every record with an id above `mark` (all of them for `None`)
    /// and makes the next id `mark + 1`. Returns how many records went.
    pub(crate) fn truncate_after(&mut self, mark: Option<RecordId>) -> u64 {
        let keep_up_to = mark.map_or(0, |m| m.0);
        let mut dropped = 0u64;
        while let Some(seg) = self.segments.back_mut() {
            let before = seg.records.len();
            seg.records.retain(|r| r.id <= keep_up_to);
            let gone = before - seg.records.len();
            dropped += gone as u64;
            if seg.records.is_empty() {
                self.segments.pop_back();
            }
            if gone < before {
                break;
            }
        }
        self.bytes = self.total_bytes();
        self.next_id = keep_up_to.saturating_add(1);
        dropped
    }

    fn total_bytes(&self) -> u64 {
        self.segments
            .iter()
            .flat_map(|s| s.records.iter())
            .map(|r| record_bytes(r.payload.len()))
            .sum()
    }

    fn locate(&self, id: u64) -> Option<(usize, usize)> {
        let after = self.segments.partition_point(|s| s.first_id() <= id);
        let seg_index = after.checked_sub(1)?;
        let rec_index = self.segments.get(seg_index)?.find(id)?;
        Some((seg_index, rec_index))
    }

    /// Compaction honouring an external durable mark (for `FaultStore`).
    pub(crate) fn compact_with_mark(&mut self, durable: Option<RecordId>) -> CompactionStats {
        let mut stats = CompactionStats::default();
        let last = self.segments.len().saturating_sub(1);
        let mut index = 0usize;
        self.segments.retain(|seg| {
            let is_last = index == last;
            index += 1;
            if is_last || seg.live > 0 {
                return true;
            }
            if durable.is_none_or(|d| d.0 < seg.released_at) {
                stats.segments_waiting_for_sync += 1;
                return true;
            }
            stats.segments_deleted += 1;
            stats.records_dropped += seg.records.len() as u64;
            stats.bytes_freed += seg
                .records
                .iter()
                .map(|r| record_bytes(r.payload.len()))
                .sum::<u64>();
            false
        });
        self.bytes -= stats.bytes_freed;
        stats
    }
}

fn record_bytes(payload_len: usize) -> u64 {
    encoded_len(payload_len).map_or(u64::MAX, |n| n as u64)
}

impl Store for MemStore {
    fn append(&mut self, kind: u8, unix_ms: u64, payload: &[u8]) -> Result<RecordId, StoreError> {
        if payload.len() > self.max_payload {
            return Err(StoreError::TooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let id = self.next_id;
        let next = id.checked_add(1).ok_or(StoreError::IdsExhausted)?;
        let need_new = self
            .segments
            .back()
            .is_none_or(|s| s.records.len() >= self.segment_records);
        if need_new {
            self.segments.push_back(MemSegment {
                records: Vec::new(),
                live: 0,
                released_at: 0,
            });
        }
        let Some(seg) = self.segments.back_mut() else {
            return Err(StoreError::BadConfig("no segment".into()));
        };
        seg.records.push(MemRecord {
            id,
            kind,
            unix_ms,
            payload: payload.into(),
            released: false,
        });
        seg.live += 1;
        self.bytes += record_bytes(payload.len());
        self.next_id = next;
        Ok(RecordId(id))
    }

    /// The memory store is never full: the same as [`Store::append`].
    fn append_reserved(
        &mut self,
        kind: u8,
        unix_ms: u64,
        payload: &[u8],
    ) -> Result<RecordId, StoreError> {
        self.append(kind, unix_ms, payload)
    }

    fn get(&self, id: RecordId) -> Result<RecordRef<'_>, StoreError> {
        let (s, r) = self.locate(id.0).ok_or(StoreError::NotFound(id))?;
        let rec = self
            .segments
            .get(s)
            .and_then(|seg| seg.records.get(r))
            .ok_or(StoreError::NotFound(id))?;
        Ok(RecordRef {
            id,
            kind: rec.kind,
            unix_ms: rec.unix_ms,
            payload: &rec.payload,
        })
    }

    fn release(&mut self, id: RecordId) {
        let last_appended = self.next_id.saturating_sub(1);
        let Some((s, r)) = self.locate(id.0) else {
            return;
        };
        let Some(seg) = self.segments.get_mut(s) else {
            return;
        };
        let Some(rec) = seg.records.get_mut(r) else {
            return;
        };
        if !rec.released {
            rec.released = true;
            seg.live -= 1;
            if seg.live == 0 {
                seg.released_at = last_appended;
            }
        }
    }

    fn durable_up_to(&self) -> Option<RecordId> {
        self.next_id.checked_sub(1).filter(|&n| n > 0).map(RecordId)
    }

    fn replay(&self, f: &mut dyn FnMut(RecordRef<'_>)) {
        for rec in self.segments.iter().flat_map(|s| s.records.iter()) {
            f(RecordRef {
                id: RecordId(rec.id),
                kind: rec.kind,
                unix_ms: rec.unix_ms,
                payload: &rec.payload,
            });
        }
    }

    fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    fn compact(&mut self) -> Result<CompactionStats, StoreError> {
        let mark = self.durable_up_to();
        Ok(self.compact_with_mark(mark))
    }

    fn pinning_oldest(&self, max: usize) -> Vec<RecordId> {
        if self.segments.len() < 2 {
            return Vec::new();
        }
        self.segments
            .front()
            .into_iter()
            .flat_map(|s| s.records.iter())
            .filter(|r| !r.released)
            .take(max)
            .map(|r| RecordId(r.id))
            .collect()
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            records: self.segments.iter().map(|s| s.records.len() as u64).sum(),
            live_records: self.segments.iter().map(|s| s.live as u64).sum(),
            bytes: self.bytes,
            segments: self.segments.len(),
            next_id: self.next_id,
            durable_up_to: self.durable_up_to(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_get_replay() {
        let mut s = MemStore::new();
        let a = s.append(1, 10, b"one").unwrap();
        let b = s.append(2, 20, b"").unwrap();
        assert!(a < b);
        assert_eq!(a, RecordId(1));
        let r = s.get(b).unwrap();
        assert_eq!((r.kind, r.unix_ms, r.payload), (2, 20, &b""[..]));
        let mut seen = Vec::new();
        s.replay(&mut |r| seen.push((r.id, r.payload.to_vec())));
        assert_eq!(seen, vec![(a, b"one".to_vec()), (b, Vec::new())]);
        assert!(matches!(
            s.get(RecordId(99)),
            Err(StoreError::NotFound(RecordId(99)))
        ));
        assert_eq!(s.durable_up_to(), Some(b));
    }

    #[test]
    fn max_payload_limit() {
        let mut s = MemStore::new();
        let big = vec![0u8; MAILBOX_MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            s.append(1, 0, &big),
            Err(StoreError::TooLarge { .. })
        ));
        assert_eq!(s.stats().records, 0);
        s.append(1, 0, &big[..MAILBOX_MAX_PAYLOAD_BYTES]).unwrap();
    }

    #[test]
    fn default_segment_records_limit() {
        let mut s = MemStore::new();
        for _ in 0..MAILBOX_MEM_SEGMENT_RECORDS {
            s.append(0, 0, b"x").unwrap();
        }
        assert_eq!(s.stats().segments, 1);
        s.append(0, 0, b"x").unwrap();
        assert_eq!(s.stats().segments, 2);
    }

    #[test]
    fn compaction_and_copy_forward() {
        let mut s = MemStore::with_segment_records(2);
        let ids: Vec<_> = (0..5u8).map(|i| s.append(i, 0, &[i]).unwrap()).collect();
        assert_eq!(s.stats().segments, 3);
        // The oldest segment is pinned by ids[1].
        s.release(ids[0]);
        assert_eq!(s.pinning_oldest(10), vec![ids[1]]);
        assert_eq!(s.compact().unwrap().segments_deleted, 0);
        let copy = {
            let r = s.get(ids[1]).unwrap();
            let (k, t, p) = (r.kind, r.unix_ms, r.payload.to_vec());
            s.append(k, t, &p).unwrap()
        };
        s.release(ids[1]);
        s.release(ids[1]); // idempotent
        let st = s.compact().unwrap();
        assert_eq!(st.segments_deleted, 1);
        assert_eq!(st.records_dropped, 2);
        assert!(s.get(ids[0]).is_err());
        assert_eq!(s.get(copy).unwrap().payload, &[1]);
        // The segment being appended to is never deleted.
        for id in [ids[2], ids[3], ids[4], copy] {
            s.release(id);
        }
        s.compact().unwrap();
        assert_eq!(s.stats().segments, 1);
        assert_eq!(s.stats().live_records, 0);
        assert_eq!(s.pinning_oldest(10), Vec::<RecordId>::new());
    }

    #[test]
    fn restart_revives_released_records() {
        let mut s = MemStore::with_segment_records(2);
        let a = s.append(0, 0, b"a").unwrap();
        s.release(a);
        s.restart();
        assert_eq!(s.stats().live_records, 1);
        assert_eq!(s.recovery_report().records_recovered, 1);
        assert!(s.recovery_report().is_clean());
        let b = s.append(0, 0, b"b").unwrap();
        assert!(b > a);
    }
}
