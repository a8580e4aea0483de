//! One member's queue: a FIFO of entries with strictly increasing sequence
//! numbers, each referencing a stored message (by its index in the core's
//! message table) or standing for dropped entries (a gap notice).
//!
//! Dropping an entry (over the cap, past the time to live) replaces it with
//! a gap entry for its (group, sender), or adds to such a gap entry that no
//! session has been sent yet, so the number of gap entries is bounded by the
//! number of distinct (group, sender) pairs with drops since the last push.
//! Every drop reports where it landed ([`Dropped`]) so the core can write
//! the drop record (`records.rs`, kind `DROP`) that makes the gap survive a
//! restart.

use std::collections::{HashMap, VecDeque};

/// A queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Sequence number in this queue (the record's lsn for messages).
    pub(crate) seq: u64,
    /// What it is.
    pub(crate) item: Item,
}

/// The content of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item {
    /// A stored message; `capped` if it counts against the cap.
    Msg {
        /// Index in the core's message table.
        msg: u32,
        /// Counts against the per-member cap (not a distribution or commit).
        capped: bool,
    },
    /// Entries dropped from this queue.
    Gap(Gap),
}

/// Dropped entries of one (group, sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gap {
    pub(crate) group: u32,
    pub(crate) sender: u32,
    pub(crate) count: u32,
}

/// One message entry dropped from the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Index of the dropped message in the core's message table.
    pub(crate) msg: u32,
    /// Sequence number of the dropped entry.
    pub(crate) seq: u64,
    /// Sequence number of the gap entry it became or was merged into.
    pub(crate) gap_seq: u64,
}

/// What a drop decision says about one message entry.
pub(crate) enum Verdict {
    /// Keep it and look further.
    Keep,
    /// Drop it (attributing the gap to this group and sender).
    Drop { group: u32, sender: u32 },
    /// Keep it and stop looking.
    Stop,
}

/// Entries [`Queue::first_after`] steps back over before it binary-searches.
const FIRST_AFTER_SCAN: usize = 32;

/// One member's queue.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    entries: VecDeque<Entry>,
    capped: usize,
}

impl Queue {
    /// Entries in order.
    pub(crate) fn entries(&self) -> &VecDeque<Entry> {
        &self.entries
    }

    /// Entries that count against the cap.
    pub(crate) fn capped(&self) -> usize {
        self.capped
    }

    /// The highest sequence number queued, if any.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.entries.back().map(|e| e.seq)
    }

    /// The gap entry at sequence number `seq`, if there is one.
    pub(crate) fn gap_at(&self, seq: u64) -> Option<Gap> {
        let i = self.entries.partition_point(|e| e.seq < seq);
        match self.entries.get(i) {
            Some(Entry {
                seq: s,
                item: Item::Gap(g),
            }) if *s == seq => Some(*g),
            _ => None,
        }
    }

    /// Index of the first entry with a sequence number above `seq`.
    ///
    /// A session that keeps up asks for the few newest entries: those are
    /// found by stepping back from the end over entries the caller is about
    /// to read anyway, rather than by a binary search whose probes land on
    /// cold cache lines in the middle of the queue (2.3% of the relay's CPU
    /// in the 1,000-member fan-out). A longer backlog falls back to the
    /// binary search.
    pub(crate) fn first_after(&self, seq: u64) -> usize {
        let len = self.entries.len();
        for back in 0..FIRST_AFTER_SCAN.min(len) {
            let i = len - back - 1;
            if self.entries.get(i).is_none_or(|e| e.seq <= seq) {
                return i + 1;
            }
        }
        if len <= FIRST_AFTER_SCAN {
            return 0;
        }
        self.entries.partition_point(|e| e.seq <= seq)
    }

    /// Appends a message entry; `seq` must exceed every queued one.
    pub(crate) fn push(&mut self, seq: u64, msg: u32, capped: bool) {
        debug_assert!(self.last_seq().is_none_or(|l| l < seq));
        self.entries.push_back(Entry {
            seq,
            item: Item::Msg { msg, capped },
        });
        if capped {
            self.capped += 1;
        }
    }

    /// Appends a gap entry (replay of a drop record); `seq` must exceed
    /// every queued one, else nothing happens and false is returned.
    pub(crate) fn push_gap(&mut self, seq: u64, gap: Gap) -> bool {
        if self.last_seq().is_some_and(|l| l >= seq) {
            return false;
        }
        self.entries.push_back(Entry {
            seq,
            item: Item::Gap(gap),
        });
        true
    }

    /// Removes every entry with `seq <= up_to`, calling `released` with each
    /// message index removed.
    pub(crate) fn ack(&mut self, up_to: u64, mut released: impl FnMut(u32)) {
        while let Some(e) = self.entries.front() {
            if e.seq > up_to {
                break;
            }
            if let Item::Msg { msg, capped } = e.item {
                if capped {
                    self.capped -= 1;
                }
                released(msg);
            }
            self.entries.pop_front();
        }
    }

    /// Drops the oldest capped entry (over the cap), turning it into a gap.
    /// `pushed` is the highest sequence number any session of this member
    /// has been sent: a gap entry above it can still grow. Returns what was
    /// dropped and where it went.
    pub(crate) fn evict_oldest(
        &mut self,
        pushed: u64,
        attribute: impl Fn(u32) -> (u32, u32),
    ) -> Option<Dropped> {
        let idx = self
            .entries
            .iter()
            .position(|e| matches!(e.item, Item::Msg { capped: true, .. }))?;
        let Some(&Entry {
            seq,
            item: Item::Msg { msg, .. },
        }) = self.entries.get(idx)
        else {
            return None;
        };
        let (group, sender) = attribute(msg);
        let (_, gap_seq) = self.drop_at(idx, pushed, group, sender, None);
        Some(Dropped { msg, seq, gap_seq })
    }

    /// Walks the queue from the front, dropping entries the verdict says to
    /// drop, until it says stop. Calls `dropped` with each drop.
    pub(crate) fn drop_while(
        &mut self,
        pushed: u64,
        mut verdict: impl FnMut(u32) -> Verdict,
        mut dropped: impl FnMut(Dropped),
    ) {
        // Unsent gaps seen so far, by (group, sender): all before `idx`, so
        // removing the entry at `idx` never moves them.
        let mut open_gaps = HashMap::new();
        let mut idx = 0;
        while let Some(e) = self.entries.get(idx).copied() {
            let msg = match e.item {
                Item::Gap(g) => {
                    if e.seq > pushed {
                        open_gaps.insert((g.group, g.sender), idx);
                    }
                    idx += 1;
                    continue;
                }
                Item::Msg { msg, .. } => msg,
            };
            match verdict(msg) {
                Verdict::Stop => break,
                Verdict::Keep => idx += 1,
                Verdict::Drop { group, sender } => {
                    let (stayed, gap_seq) =
                        self.drop_at(idx, pushed, group, sender, Some(&mut open_gaps));
                    if stayed {
                        idx += 1;
                    }
                    dropped(Dropped {
                        msg,
                        seq: e.seq,
                        gap_seq,
                    });
                }
            }
        }
    }

    /// Replaces the message entry at `idx` by a gap, or merges it into an
    /// earlier, unsent gap of the same (group, sender). Returns whether the
    /// entry stayed (as a gap) at `idx` (false: it was removed), and the
    /// sequence number of the gap entry that now counts it.
    fn drop_at(
        &mut self,
        idx: usize,
        pushed: u64,
        group: u32,
        sender: u32,
        open_gaps: Option<&mut HashMap<(u32, u32), usize>>,
    ) -> (bool, u64) {
        let seq = self.entries.get(idx).map_or(0, |e| e.seq);
        if let Some(Entry {
            item: Item::Msg { capped: true, .. },
            ..
        }) = self.entries.get(idx)
        {
            self.capped -= 1;
        }
        let mergeable = match &open_gaps {
            Some(map) => map.get(&(group, sender)).copied(),
            None => self.entries.iter().take(idx).rposition(|e| {
                e.seq > pushed
                    && matches!(e.item, Item::Gap(g) if g.group == group && g.sender == sender)
            }),
        };
        if let Some(j) = mergeable
            && let Some(Entry {
                seq: gap_seq,
                item: Item::Gap(g),
            }) = self.entries.get_mut(j)
        {
            g.count = g.count.saturating_add(1);
            let gap_seq = *gap_seq;
            self.entries.remove(idx);
            return (false, gap_seq);
        }
        if let Some(e) = self.entries.get_mut(idx) {
            e.item = Item::Gap(Gap {
                group,
                sender,
                count: 1,
            });
            if let Some(map) = open_gaps
                && e.seq > pushed
            {
                map.insert((group, sender), idx);
            }
        }
        (true, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(q: &Queue) -> Vec<(u64, u32)> {
        q.entries()
            .iter()
            .filter_map(|e| match e.item {
                Item::Gap(g) => Some((e.seq, g.count)),
                Item::Msg { .. } => None,
            })
            .collect()
    }

    #[test]
    fn eviction_merges_into_an_unsent_gap() {
        let mut q = Queue::default();
        q.push(1, 10, false); // a distribution: exempt
        for s in 2..=5 {
            q.push(s, u32::try_from(s).unwrap(), true);
        }
        assert_eq!(q.capped(), 4);
        let d = |msg, seq, gap_seq| Some(Dropped { msg, seq, gap_seq });
        assert_eq!(q.evict_oldest(0, |_| (0, 7)), d(2, 2, 2));
        assert_eq!(q.evict_oldest(0, |_| (0, 7)), d(3, 3, 2));
        assert_eq!(gaps(&q), vec![(2, 2)]);
        assert_eq!(q.capped(), 2);
        // Once the gap was sent (pushed >= 2) a new gap starts.
        assert_eq!(q.evict_oldest(2, |_| (0, 7)), d(4, 4, 4));
        assert_eq!(gaps(&q), vec![(2, 2), (4, 1)]);
        let mut released = Vec::new();
        q.ack(4, |m| released.push(m));
        assert_eq!(released, vec![10]);
        assert_eq!(q.entries().len(), 1);
    }

    #[test]
    fn first_after_agrees_with_a_binary_search_short_and_long() {
        for len in [0u64, 1, 5, 31, 32, 33, 100] {
            let mut q = Queue::default();
            // Sequence numbers with holes: 3, 6, 9, ...
            for i in 1..=len {
                q.push(3 * i, 0, true);
            }
            for seq in 0..=3 * len + 4 {
                let want = q.entries().partition_point(|e| e.seq <= seq);
                assert_eq!(q.first_after(seq), want, "len {len} seq {seq}");
            }
        }
    }

    #[test]
    fn drop_while_stops_and_keeps() {
        let mut q = Queue::default();
        for s in 1..=4 {
            q.push(s, u32::try_from(s).unwrap(), true);
        }
        let mut dropped = Vec::new();
        q.drop_while(
            0,
            |m| match m {
                1 => Verdict::Keep,
                2 | 3 => Verdict::Drop {
                    group: 1,
                    sender: 1,
                },
                _ => Verdict::Stop,
            },
            |d| dropped.push((d.msg, d.gap_seq)),
        );
        assert_eq!(dropped, vec![(2, 2), (3, 2)]);
        assert_eq!(gaps(&q), vec![(2, 2)]);
        assert_eq!(q.capped(), 2);
    }

    #[test]
    fn push_gap_keeps_the_order() {
        let mut q = Queue::default();
        q.push(5, 1, true);
        let g = Gap {
            group: 1,
            sender: 2,
            count: 3,
        };
        assert!(!q.push_gap(5, g));
        assert!(q.push_gap(6, g));
        assert_eq!(gaps(&q), vec![(6, 3)]);
        assert_eq!(q.gap_at(6), Some(g));
        assert_eq!(q.gap_at(5), None);
        assert_eq!(q.gap_at(7), None);
        assert_eq!(q.capped(), 1);
    }
}
