//! One member's queue: a FIFO of entries with strictly increasing sequence
//! numbers, each referencing a stored message (by its index in the core's
//! message table) or standing for dropped entries (a gap notice).
//!
//! Dropping an entry (over the cap, past the time to live) replaces it with
//! a gap entry for its (group, sender), or adds to such a gap entry that no
//! session has been sent yet. Gap entries do not count against the cap, and
//! a member that reads without acking would get one per drop; so once the
//! queue holds `max_gaps` of them a drop merges into the newest gap entry of
//! its pair, sent or not, and the gap entries stay at most `max_gaps` plus
//! one per (group, sender) pair (`limits::RELAY_MAX_GAP_ENTRIES`).
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
    /// Gap entries among `entries`.
    gaps: usize,
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

    /// Gap entries (they do not count against the cap).
    #[cfg(test)]
    pub(crate) fn gaps(&self) -> usize {
        self.gaps
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
        self.gaps += 1;
        true
    }

    /// Removes every entry with `seq <= up_to`, calling `released` with each
    /// message index removed.
    pub(crate) fn ack(&mut self, up_to: u64, mut released: impl FnMut(u32)) {
        while let Some(e) = self.entries.front() {
            if e.seq > up_to {
                break;
            }
            match e.item {
                Item::Msg { msg, capped } => {
                    if capped {
                        self.capped -= 1;
                    }
                    released(msg);
                }
                Item::Gap(_) => self.gaps -= 1,
            }
            self.entries.pop_front();
        }
    }

    /// Drops the oldest capped entry (over the cap), turning it into a gap.
    /// `pushed` is the highest sequence number any session of this member
    /// has been sent: a gap entry above it can still grow (any gap entry of
    /// the pair can, once the queue holds `max_gaps`). Returns what was
    /// dropped and where it went.
    pub(crate) fn evict_oldest(
        &mut self,
        pushed: u64,
        max_gaps: usize,
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
        let (_, gap_seq) = self.drop_at(idx, pushed, max_gaps, group, sender, None);
        Some(Dropped { msg, seq, gap_seq })
    }

    /// Walks the queue from the front, dropping entries the verdict says to
    /// drop, until it says stop. Calls `dropped` with each drop. `pushed`
    /// and `max_gaps` as for [`Queue::evict_oldest`].
    pub(crate) fn drop_while(
        &mut self,
        pushed: u64,
        max_gaps: usize,
        mut verdict: impl FnMut(u32) -> Verdict,
        mut dropped: impl FnMut(Dropped),
    ) {
        // The newest gap seen so far of each (group, sender): all before
        // `idx`, so removing the entry at `idx` never moves them.
        let mut last_gaps = HashMap::new();
        let mut idx = 0;
        while let Some(e) = self.entries.get(idx).copied() {
            let msg = match e.item {
                Item::Gap(g) => {
                    last_gaps.insert((g.group, g.sender), idx);
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
                        self.drop_at(idx, pushed, max_gaps, group, sender, Some(&mut last_gaps));
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

    /// Replaces the message entry at `idx` by a gap, or merges it into the
    /// newest earlier gap of the same (group, sender) if no session was sent
    /// that gap, or if the queue holds `max_gaps` gap entries already.
    /// `last_gaps` (from `drop_while`) is the index of the newest gap of
    /// each pair before `idx`; without it the queue is searched. Returns
    /// whether the entry stayed (as a gap) at `idx` (false: it was removed),
    /// and the sequence number of the gap entry that now counts it.
    fn drop_at(
        &mut self,
        idx: usize,
        pushed: u64,
        max_gaps: usize,
        group: u32,
        sender: u32,
        last_gaps: Option<&mut HashMap<(u32, u32), usize>>,
    ) -> (bool, u64) {
        let seq = self.entries.get(idx).map_or(0, |e| e.seq);
        if let Some(Entry {
            item: Item::Msg { capped: true, .. },
            ..
        }) = self.entries.get(idx)
        {
            self.capped -= 1;
        }
        let newest = match &last_gaps {
            Some(map) => map.get(&(group, sender)).copied(),
            None => self.entries.iter().take(idx).rposition(
                |e| matches!(e.item, Item::Gap(g) if g.group == group && g.sender == sender),
            ),
        };
        let full = self.gaps >= max_gaps;
        if let Some(j) = newest
            && let Some(Entry {
                seq: gap_seq,
                item: Item::Gap(g),
            }) = self.entries.get_mut(j)
            && (*gap_seq > pushed || full)
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
            self.gaps += 1;
            if let Some(map) = last_gaps {
                map.insert((group, sender), idx);
            }
        }
        (true, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::RELAY_MAX_GAP_ENTRIES;

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
        assert_eq!(
            q.evict_oldest(0, RELAY_MAX_GAP_ENTRIES, |_| (0, 7)),
            d(2, 2, 2)
        );
        assert_eq!(
            q.evict_oldest(0, RELAY_MAX_GAP_ENTRIES, |_| (0, 7)),
            d(3, 3, 2)
        );
        assert_eq!(gaps(&q), vec![(2, 2)]);
        assert_eq!(q.capped(), 2);
        // Once the gap was sent (pushed >= 2) a new gap starts.
        assert_eq!(
            q.evict_oldest(2, RELAY_MAX_GAP_ENTRIES, |_| (0, 7)),
            d(4, 4, 4)
        );
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
            RELAY_MAX_GAP_ENTRIES,
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

    /// A member whose session reads everything and never acks, with a cap
    /// of `cap`: `rounds` messages from the pairs `pair(i)`, each dropped
    /// over the cap once the session was sent it. Returns the queue and the
    /// number of drops.
    fn reader_never_acking(
        cap: usize,
        max_gaps: usize,
        rounds: u32,
        pair: impl Fn(u32) -> (u32, u32),
    ) -> (Queue, u32) {
        let mut q = Queue::default();
        let mut drops = 0;
        for i in 1..=rounds {
            let seq = u64::from(i);
            q.push(seq, i, true);
            if q.capped() > cap {
                // Every entry up to `seq` was sent to the session.
                let d = q.evict_oldest(seq, max_gaps, &pair).unwrap();
                assert!(d.gap_seq <= d.seq);
                drops += 1;
            }
        }
        (q, drops)
    }

    fn gap_total(q: &Queue) -> u32 {
        gaps(q).iter().map(|&(_, n)| n).sum()
    }

    /// Gap entries do not count against the cap; without a bound a member
    /// that reads but never acks gains one per drop (the first assertion
    /// shows that growth), with it they stop at `max_gaps` and later drops
    /// are counted in the newest notice of their pair: no drop goes
    /// uncounted.
    #[test]
    fn gap_entries_of_a_never_acking_reader_stop_at_the_bound() {
        let (unbounded, drops) = reader_never_acking(4, usize::MAX, 500, |_| (1, 2));
        assert_eq!(drops, 496);
        assert_eq!(unbounded.gaps(), 496, "one gap entry per drop");

        let (q, drops) = reader_never_acking(4, 8, 500, |_| (1, 2));
        assert_eq!(drops, 496);
        assert_eq!(q.gaps(), 8);
        assert_eq!(gaps(&q).len(), 8);
        assert_eq!(q.capped(), 4);
        assert_eq!(gap_total(&q), drops, "every drop is counted once");
        assert_eq!(q.entries().len(), 8 + 4);
        // The first seven notices are exact; the newest took the rest.
        assert_eq!(gaps(&q).last(), Some(&(8, 496 - 7)));
    }

    /// Past the bound a pair with no notice yet still gets one (its drops
    /// cannot be counted elsewhere), so the bound is `max_gaps` plus one
    /// entry per (group, sender) pair.
    #[test]
    fn past_the_bound_only_a_new_pair_adds_a_gap_entry() {
        let pairs = 20;
        let (q, drops) = reader_never_acking(4, 8, 2_000, |m| (m % pairs, 7));
        assert!(q.gaps() <= 8 + pairs as usize, "{} gap entries", q.gaps());
        assert!(q.gaps() > 8, "new pairs past the bound still get a notice");
        assert_eq!(gap_total(&q), drops);
        // Acking everything leaves nothing, the gap count included.
        q_ack_all(q);
    }

    fn q_ack_all(mut q: Queue) {
        let last = q.last_seq().unwrap();
        q.ack(last, |_| {});
        assert_eq!((q.entries().len(), q.gaps(), q.capped()), (0, 0, 0));
    }

    /// The real bound, with a queue that keeps up (cap 16) over three times
    /// as many drops.
    #[test]
    fn the_gap_entry_limit_holds() {
        let rounds = u32::try_from(3 * RELAY_MAX_GAP_ENTRIES).unwrap();
        let (q, drops) = reader_never_acking(16, RELAY_MAX_GAP_ENTRIES, rounds, |_| (3, 4));
        assert_eq!(q.gaps(), RELAY_MAX_GAP_ENTRIES);
        assert_eq!(gap_total(&q), drops);
        q_ack_all(q);
    }

    /// Expiry (`drop_while`) obeys the same bound: under it a drop after a
    /// sent notice starts a new one, at it the drop joins the sent notice.
    #[test]
    fn expiry_merges_into_a_sent_notice_only_at_the_bound() {
        for (max_gaps, want) in [(8, vec![(1, 1), (2, 1), (3, 2)]), (2, vec![(1, 1), (2, 3)])] {
            let mut q = Queue::default();
            for s in 1..=5 {
                q.push(s, u32::try_from(s).unwrap(), true);
            }
            let drop = |_| Verdict::Drop {
                group: 1,
                sender: 1,
            };
            let stop_after = |n: u32| {
                move |m: u32| {
                    if m <= n { drop(m) } else { Verdict::Stop }
                }
            };
            // Entry 1 dropped and its notice sent, then 2, then 3 and 4
            // together with nothing more sent.
            q.drop_while(1, max_gaps, stop_after(1), |_| {});
            q.drop_while(2, max_gaps, stop_after(2), |_| {});
            q.drop_while(2, max_gaps, stop_after(4), |_| {});
            assert_eq!(gaps(&q), want, "max_gaps {max_gaps}");
            assert_eq!(q.gaps(), want.len());
            assert_eq!(q.capped(), 1);
        }
    }
}
