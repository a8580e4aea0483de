//! State changes shared by live requests and replay: each `install_*`
//! applies one stored record; replay calls them in lsn order, so a restart
//! rebuilds exactly the accounts, rosters and queues the records describe.
//!
//! Gaps: a drop from a member's queue (over the cap, past the time to live)
//! is noted in `dirty_gaps`, and the dropped message's record, if that was
//! its last reference, goes to `deferred_releases` instead of being
//! released. `flush_drops` (each maintenance pass, and after replay)
//! appends one DROP record per changed gap entry, then releases those
//! records: compaction cannot delete a dropped message before the record
//! that counts it exists (and is durable, by the store's compaction rule).
//! A crash before the flush leaves the messages' records in the store, and
//! replay re-derives the drop from them as it always did. Replay reads the
//! DROP records first: it puts each gap entry back at its sequence number
//! and does not queue again the entries a record counts (else a dropped
//! message whose record survives for another member would be counted
//! twice).

use super::*;

impl<S: Store, R: CryptoRng> RelayCore<S, R> {
    pub(super) fn replay(&mut self, unix_ms: u64) -> Result<ReplayReport, CoreError> {
        let mut report = ReplayReport::default();
        let mut list: Vec<(u64, RecordId)> = Vec::new();
        let mut unreadable = 0u64;
        let mut drops: Vec<(u64, records::DropRecord)> = Vec::new();
        self.store.replay(&mut |r| match records::lsn(r.payload) {
            Some(l) => {
                list.push((l, r.id));
                if r.kind == records::KIND_DROP
                    && let Ok(d) = records::parse_drop(r.payload)
                {
                    drops.push((l, d));
                }
            }
            None => unreadable += 1,
        });
        report.skipped = unreadable;
        list.sort_unstable();
        // The newest record of each gap entry (member, seq) is its count.
        drops.sort_unstable_by_key(|(l, d)| (d.member, d.seq, *l));
        let mut gaps: Vec<records::DropRecord> = Vec::with_capacity(drops.len());
        for (_, d) in drops {
            if let Some(last) = gaps.last_mut()
                && (last.member, last.seq) == (d.member, d.seq)
            {
                *last = d;
            } else {
                gaps.push(d);
            }
        }
        for d in &gaps {
            let (through, list) = self.replay_drops.entry(d.member).or_default();
            *through = (*through).max(d.through);
            list.push(ReplayDrop {
                group_id: d.group_id,
                sender: d.sender,
                seq: d.seq,
                through: d.through,
            });
        }
        gaps.sort_unstable_by_key(|d| std::cmp::Reverse(d.seq));
        let mut buf = Vec::new();
        for (idx, &(lsn, id)) in list.iter().enumerate() {
            self.replay_gaps_up_to(&mut gaps, lsn);
            if list.get(idx + 1).is_some_and(|next| next.0 == lsn) {
                // An older copy of a record that was copied forward.
                self.store.release(id);
                report.duplicates += 1;
                continue;
            }
            buf.clear();
            let (kind, at) = {
                let rec = self.store.get(id)?;
                buf.extend_from_slice(rec.payload);
                (rec.kind, rec.unix_ms)
            };
            if self.replay_one(kind, id, lsn, at, &buf) {
                report.records += 1;
            } else {
                tracing::warn!("replay: skipped record {id:?} (kind {kind}, lsn {lsn})");
                report.skipped += 1;
            }
            self.next_lsn = self.next_lsn.max(lsn.saturating_add(1));
        }
        self.replay_gaps_up_to(&mut gaps, u64::MAX);
        self.replay_drops = IdMap::default();
        self.expire(unix_ms);
        // Drops replay re-derived (their messages' records survived a crash
        // before the flush) get their records now, before the compaction
        // that `open` runs next.
        self.flush_drops(unix_ms);
        self.prune_dedupe(unix_ms);
        report.accounts = self.users.len();
        report.groups = self.groups.len();
        report.live_messages = self.msgs.iter().filter(|(_, m)| !m.permanent).count();
        Ok(report)
    }

    fn replay_one(
        &mut self,
        kind: u8,
        id: RecordId,
        lsn: u64,
        unix_ms: u64,
        payload: &[u8],
    ) -> bool {
        match kind {
            records::KIND_ACCOUNT => {
                let Ok((name, identity)) = records::parse_account(payload) else {
                    return false;
                };
                let Ok(pi) = PublicIdentity::decode(identity) else {
                    return false;
                };
                if self.by_name.contains_key(name) {
                    return false;
                }
                self.install_account(id, name, identity, pi.signing_key);
                true
            }
            records::KIND_COMMIT => self.replay_commit(id, lsn, unix_ms, payload).is_some(),
            records::KIND_GROUP_MESSAGE => {
                let Some(body) = payload.get(usize::from(records::GROUP_BODY_OFFSET)..) else {
                    return false;
                };
                let Some((sender, g, b)) = self.resolve_body(body) else {
                    return false;
                };
                self.install_group_message(id, lsn, unix_ms, sender, g);
                self.dedupe_insert(
                    sender,
                    b.message_id,
                    Receipt {
                        record: id,
                        lsn,
                        unix_ms,
                    },
                );
                true
            }
            records::KIND_DIRECT => {
                let (Ok(to), Some(body)) = (
                    records::direct_recipient(payload),
                    payload.get(usize::from(records::DIRECT_BODY_OFFSET)..),
                ) else {
                    return false;
                };
                let Some((sender, g, b)) = self.resolve_body(body) else {
                    return false;
                };
                if to as usize >= self.users.len() || !b.kind.is_direct() {
                    return false;
                }
                self.install_direct(id, lsn, unix_ms, sender, to, g, b.kind);
                self.dedupe_insert(
                    sender,
                    b.message_id,
                    Receipt {
                        record: id,
                        lsn,
                        unix_ms,
                    },
                );
                true
            }
            records::KIND_DROP => {
                let Ok(d) = records::parse_drop(payload) else {
                    return false;
                };
                let Some(user) = self.users.get(d.member as usize) else {
                    return false;
                };
                if d.through <= user.acked {
                    // Acked past everything it counts: not needed.
                    self.store.release(id);
                } else {
                    self.keep_drop_record(id, d.member, d.seq, d.through);
                }
                true
            }
            records::KIND_ACK => {
                let Ok((user, up_to)) = records::parse_ack(payload) else {
                    return false;
                };
                if self
                    .users
                    .get(user as usize)
                    .is_none_or(|u| up_to <= u.acked)
                {
                    return false;
                }
                self.apply_ack(id, user, up_to);
                true
            }
            _ => false,
        }
    }

    /// Puts back, in sequence order, the gap entries of the drop records
    /// (`gaps`, highest seq last-out: sorted by descending seq) whose
    /// sequence number is at most `up_to`.
    fn replay_gaps_up_to(&mut self, gaps: &mut Vec<records::DropRecord>, up_to: u64) {
        while let Some(d) = gaps.last().copied() {
            if d.seq > up_to {
                break;
            }
            gaps.pop();
            let group = self.by_group_id.get(&d.group_id).copied();
            let sender_known = (d.sender as usize) < self.users.len();
            let placed = match (group, self.users.get_mut(d.member as usize)) {
                (Some(group), Some(user)) if sender_known => user.queue.push_gap(
                    d.seq,
                    Gap {
                        group,
                        sender: d.sender,
                        count: d.count,
                    },
                ),
                _ => false,
            };
            if !placed {
                tracing::warn!(
                    "replay: drop record of member {} at seq {} does not fit",
                    d.member,
                    d.seq
                );
            }
        }
    }

    /// During replay: true if a drop record says entry `seq` of `uid`'s
    /// queue (message `m`) was dropped, so it must not be queued again. A
    /// capped entry is, if its (group, sender) has a gap at or before it
    /// that counts up to it or beyond (every capped entry up to a dropped
    /// one is gone: drops take the oldest first); an uncapped one (a
    /// distribution, dropped past the time to live) only if it is the
    /// entry the gap replaced.
    #[inline(never)]
    fn dropped_on_replay(&self, uid: u32, seq: u64, m: u32, capped: bool) -> bool {
        let Some((through, list)) = self.replay_drops.get(&uid) else {
            return false;
        };
        if seq > *through {
            return false;
        }
        let Some(msg) = self.msgs.get(m as usize) else {
            return false;
        };
        let Some(group) = self.groups.get(msg.group as usize) else {
            return false;
        };
        let gid = group.state.group_id();
        list.iter().any(|d| {
            d.sender == msg.sender
                && d.group_id == *gid
                && (seq == d.seq || capped && d.seq <= seq && seq <= d.through)
        })
    }

    /// Sender and group of a stored entry body.
    fn resolve_body<'b>(&self, body: &'b [u8]) -> Option<(u32, u32, EntryBody<'b>)> {
        let b = records::parse_body(body).ok()?;
        let sender = *self.by_name.get(b.sender)?;
        let g = *self.by_group_id.get(&b.group_id)?;
        Some((sender, g, b))
    }

    fn replay_commit(
        &mut self,
        id: RecordId,
        lsn: u64,
        unix_ms: u64,
        payload: &[u8],
    ) -> Option<()> {
        let body =
            records::parse_body(payload.get(usize::from(records::COMMIT_BODY_OFFSET)..)?).ok()?;
        let commit = Commit::decode(body.ciphertext).ok()?;
        let signer = *self.by_name.get(commit.signer.as_str())?;
        if matches!(commit.op, Operation::Genesis { .. }) {
            if self.by_group_id.contains_key(&commit.group_id) {
                return None;
            }
            let state = GroupState::from_genesis(&commit).ok()?;
            self.install_commit(id, lsn, unix_ms, signer, None, state, None);
        } else {
            let g = *self.by_group_id.get(&commit.group_id)?;
            let state = self.groups.get(g as usize)?.state.apply(&commit).ok()?;
            let removed = requests::removed_member_of(&commit);
            self.install_commit(id, lsn, unix_ms, signer, Some(g), state, removed.as_deref());
        }
        Some(())
    }

    pub(super) fn install_account(
        &mut self,
        record: RecordId,
        name: &str,
        identity: &[u8],
        signing_key: [u8; 32],
    ) -> u32 {
        let id = u32::try_from(self.users.len()).unwrap_or(NO_USER);
        self.users.push(User {
            name: name.into(),
            identity: identity.into(),
            signing_key,
            record,
            queue: Queue::default(),
            acked: 0,
            ack_record: None,
            sessions: Vec::new(),
            all_reported: false,
            all_reported_bulk: false,
            groups: Vec::new(),
            quota_used: 0,
            key_requests: TokenBucket::new(self.config.key_requests_per_minute),
        });
        self.by_name.insert(name.into(), id);
        self.owners.insert(record, Owner::Account(id));
        id
    }

    pub(super) fn new_msg(&mut self, m: Msg) -> u32 {
        let record = m.record;
        let idx = u32::try_from(self.msgs.insert(m)).unwrap_or(u32::MAX);
        self.owners.insert(record, Owner::Msg(idx));
        self.stats.messages_accepted += 1;
        idx
    }

    #[allow(clippy::too_many_arguments, reason = "one stored commit")]
    pub(super) fn install_commit(
        &mut self,
        record: RecordId,
        lsn: u64,
        unix_ms: u64,
        signer: u32,
        group: Option<u32>,
        state: GroupState,
        removed: Option<&str>,
    ) {
        let g = match group {
            Some(g) => g,
            None => {
                let g = u32::try_from(self.groups.len()).unwrap_or(u32::MAX);
                self.by_group_id.insert(*state.group_id(), g);
                self.groups.push(Group {
                    state: state.clone(),
                    members: Vec::new(),
                    commits: Vec::new(),
                });
                g
            }
        };
        let m = self.new_msg(Msg {
            record,
            lsn,
            refs: 0,
            kind: EntryKind::Commit,
            sender: signer,
            recipient: NO_USER,
            group: g,
            unix_ms,
            body_off: records::COMMIT_BODY_OFFSET,
            permanent: true,
        });
        let new_members: Vec<u32> = state
            .members()
            .filter_map(|(n, _)| self.by_name.get(n).copied())
            .collect();
        let old_members = self
            .groups
            .get(g as usize)
            .map(|grp| grp.members.clone())
            .unwrap_or_default();
        for &u in &old_members {
            if !new_members.contains(&u)
                && let Some(user) = self.users.get_mut(u as usize)
            {
                user.groups.retain(|&x| x != g);
            }
        }
        for &u in &new_members {
            if !old_members.contains(&u)
                && let Some(user) = self.users.get_mut(u as usize)
            {
                user.groups.push(g);
            }
        }
        let removed_uid = removed
            .and_then(|n| self.by_name.get(n).copied())
            .filter(|u| !new_members.contains(u));
        if let Some(grp) = self.groups.get_mut(g as usize) {
            grp.state = state;
            grp.members.clone_from(&new_members);
            grp.commits.push(m);
        }
        for u in new_members.into_iter().chain(removed_uid) {
            self.enqueue(u, lsn, m, false, Readiness::Ordinary);
        }
    }

    pub(super) fn install_group_message(
        &mut self,
        record: RecordId,
        lsn: u64,
        unix_ms: u64,
        sender: u32,
        g: u32,
    ) {
        let m = self.new_msg(Msg {
            record,
            lsn,
            refs: 0,
            kind: EntryKind::GroupMessage,
            sender,
            recipient: NO_USER,
            group: g,
            unix_ms,
            body_off: records::GROUP_BODY_OFFSET,
            permanent: false,
        });
        if let Some(u) = self.users.get_mut(sender as usize) {
            u.quota_used += 1;
        }
        let n = self
            .groups
            .get(g as usize)
            .map_or(0, |grp| grp.members.len());
        // Replay only: entries a drop record counts are not queued again.
        let replaying = !self.replay_drops.is_empty();
        let readiness = if n > limits::RELAY_BULK_FANOUT {
            Readiness::Bulk
        } else {
            Readiness::Ordinary
        };
        for i in 0..n {
            let Some(&u) = self
                .groups
                .get(g as usize)
                .and_then(|grp| grp.members.get(i))
            else {
                break;
            };
            if u != sender && !(replaying && self.dropped_on_replay(u, lsn, m, true)) {
                self.enqueue(u, lsn, m, true, readiness);
            }
        }
        self.release_if_unreferenced(m);
    }

    #[allow(clippy::too_many_arguments, reason = "one stored direct message")]
    pub(super) fn install_direct(
        &mut self,
        record: RecordId,
        lsn: u64,
        unix_ms: u64,
        sender: u32,
        to: u32,
        g: u32,
        kind: EntryKind,
    ) {
        let m = self.new_msg(Msg {
            record,
            lsn,
            refs: 0,
            kind,
            sender,
            recipient: to,
            group: g,
            unix_ms,
            body_off: records::DIRECT_BODY_OFFSET,
            permanent: false,
        });
        if let Some(u) = self.users.get_mut(sender as usize) {
            u.quota_used += 1;
        }
        let is_distribution = kind == EntryKind::Distribution;
        if is_distribution {
            self.newest_dist.insert((sender, to, g), lsn);
        }
        // Replay only: an entry a drop record counts is not queued again.
        if self.replay_drops.is_empty() || !self.dropped_on_replay(to, lsn, m, !is_distribution) {
            self.enqueue(to, lsn, m, !is_distribution, Readiness::Ordinary);
        }
        self.release_if_unreferenced(m);
    }

    /// The highest sequence number any session of `u` was sent (or its ack).
    fn pushed_max(&self, u: &User) -> u64 {
        u.sessions
            .iter()
            .filter_map(|s| self.conns.get(s))
            .map(|c| c.pushed)
            .fold(u.acked, u64::max)
    }

    pub(super) fn enqueue(
        &mut self,
        uid: u32,
        seq: u64,
        m: u32,
        capped: bool,
        readiness: Readiness,
    ) {
        let Some(user) = self.users.get_mut(uid as usize) else {
            return;
        };
        user.queue.push(seq, m, capped);
        if let Some(msg) = self.msgs.get_mut(m as usize) {
            msg.refs += 1;
        }
        let over = capped && user.queue.capped() > self.config.queue_cap;
        if over && let Some(user) = self.users.get(uid as usize) {
            let pushed = self.pushed_max(user);
            let msgs = &self.msgs;
            let evicted = self.users.get_mut(uid as usize).and_then(|user| {
                user.queue
                    .evict_oldest(pushed, limits::RELAY_MAX_GAP_ENTRIES, |mm| {
                        msgs.get(mm as usize)
                            .map_or((0, 0), |x| (x.group, x.sender))
                    })
            });
            if let Some(d) = evicted {
                self.stats.dropped_over_cap += 1;
                self.note_drop(uid, d);
            }
        }
        self.mark_sessions_ready(uid, readiness);
    }

    /// Reports `uid`'s sessions ready, once each until they drain: as bulk
    /// only if not already reported either way, as ordinary unless already
    /// reported as ordinary (a bulk report is raised).
    fn mark_sessions_ready(&mut self, uid: u32, readiness: Readiness) {
        let Some(user) = self.users.get_mut(uid as usize) else {
            return;
        };
        let bulk = readiness == Readiness::Bulk;
        if user.all_reported || (bulk && user.all_reported_bulk) {
            // The usual case in a busy group: this member's sessions were
            // marked by an earlier entry and have not drained since; the
            // hash lookups below were ~45% of `enqueue`.
            return;
        }
        if bulk {
            user.all_reported_bulk = true;
        } else {
            user.all_reported = true;
        }
        let list = if bulk {
            &mut self.ready_bulk
        } else {
            &mut self.ready
        };
        for s in &user.sessions {
            if let Some(c) = self.conns.get_mut(s)
                && !c.reported
                && !(bulk && c.reported_bulk)
            {
                if bulk {
                    c.reported_bulk = true;
                } else {
                    c.reported = true;
                }
                list.push(*s);
            }
        }
    }

    fn unref(&mut self, m: u32) {
        if let Some(record) = self.unref_forget(m) {
            self.store.release(record);
        }
    }

    /// A drop from `uid`'s queue: the gap it landed in needs a (new) drop
    /// record, and the message's record, if this was its last reference,
    /// is released only once that record is appended (`flush_drops`).
    fn note_drop(&mut self, uid: u32, d: Dropped) {
        let through = self.dirty_gaps.entry((uid, d.gap_seq)).or_insert(0);
        *through = (*through).max(d.seq);
        if let Some(record) = self.unref_forget(d.msg) {
            self.deferred_releases.push(record);
        }
    }

    /// Drops one reference to `m`; if it was the last, forgets the message
    /// and returns its record for the caller to release.
    fn unref_forget(&mut self, m: u32) -> Option<RecordId> {
        let msg = self.msgs.get_mut(m as usize)?;
        msg.refs = msg.refs.saturating_sub(1);
        self.forget_if_unreferenced(m)
    }

    fn release_if_unreferenced(&mut self, m: u32) {
        if let Some(record) = self.forget_if_unreferenced(m) {
            self.store.release(record);
        }
    }

    fn forget_if_unreferenced(&mut self, m: u32) -> Option<RecordId> {
        if self
            .msgs
            .get(m as usize)
            .is_none_or(|msg| msg.refs > 0 || msg.permanent)
        {
            return None;
        }
        let msg = self.msgs.remove(m as usize);
        self.owners.remove(&msg.record);
        if let Some(u) = self.users.get_mut(msg.sender as usize) {
            u.quota_used = u.quota_used.saturating_sub(1);
        }
        if msg.kind == EntryKind::Distribution {
            let key = (msg.sender, msg.recipient, msg.group);
            if self.newest_dist.get(&key) == Some(&msg.lsn) {
                self.newest_dist.remove(&key);
            }
        }
        Some(msg.record)
    }

    /// Keeps `record` as the drop record of the gap entry (`uid`, `seq`),
    /// releasing the one it replaces.
    fn keep_drop_record(&mut self, record: RecordId, uid: u32, seq: u64, through: u64) {
        self.owners.insert(record, Owner::Drop(uid));
        if let Some(old) = self
            .drop_records
            .insert((uid, seq), DropRec { record, through })
        {
            self.store.release(old.record);
            self.owners.remove(&old.record);
        }
    }

    /// Appends a drop record for every gap entry that changed since the
    /// last call (its whole count, and the highest sequence number it
    /// counts), then releases the dropped messages' records (see the module
    /// doc). Uses the store's reserve: each record lets dropped messages'
    /// records go, and a member has at most one live drop record per gap
    /// entry. If an append fails, what is left is kept for the next call.
    pub(super) fn flush_drops(&mut self, unix_ms: u64) {
        if self.dirty_gaps.is_empty() && self.deferred_releases.is_empty() {
            return;
        }
        let mut dirty: Vec<((u32, u64), u64)> = self.dirty_gaps.drain().collect();
        dirty.sort_unstable();
        for (i, &((uid, seq), through)) in dirty.iter().enumerate() {
            let gap = self
                .users
                .get(uid as usize)
                .and_then(|u| u.queue.gap_at(seq));
            // No gap any more: the member acked past it.
            if let Some(gap) = gap
                && let Some(group) = self.groups.get(gap.group as usize)
            {
                let prev = self.drop_records.get(&(uid, seq)).map_or(0, |r| r.through);
                let d = records::DropRecord {
                    member: uid,
                    seq,
                    group_id: *group.state.group_id(),
                    sender: gap.sender,
                    count: gap.count,
                    through: through.max(prev),
                };
                let payload = records::drop_record(self.next_lsn, &d);
                match self
                    .store
                    .append_reserved(records::KIND_DROP, unix_ms, &payload)
                {
                    Ok(record) => {
                        self.take_lsn();
                        self.keep_drop_record(record, uid, seq, d.through);
                    }
                    Err(e) => {
                        tracing::warn!("drop records stopped (retried next pass): {e}");
                        self.dirty_gaps
                            .extend(dirty.get(i..).unwrap_or_default().iter().copied());
                        return;
                    }
                }
            }
        }
        for record in std::mem::take(&mut self.deferred_releases) {
            self.store.release(record);
        }
    }

    pub(super) fn apply_ack(&mut self, record: RecordId, uid: u32, up_to: u64) {
        let mut released = std::mem::take(&mut self.scratch_msgs);
        released.clear();
        let Some(user) = self.users.get_mut(uid as usize) else {
            return;
        };
        user.acked = up_to;
        let prev = user.ack_record.replace(record);
        user.queue.ack(up_to, |m| released.push(m));
        for s in &user.sessions {
            if let Some(c) = self.conns.get_mut(s) {
                c.pushed = c.pushed.max(up_to);
            }
        }
        self.owners.insert(record, Owner::Ack(uid));
        if let Some(p) = prev {
            self.store.release(p);
            self.owners.remove(&p);
        }
        for &m in &released {
            self.unref(m);
        }
        self.scratch_msgs = released;
        if !self.drop_records.is_empty() {
            let done: Vec<(u32, u64)> = self
                .drop_records
                .range((uid, 0)..=(uid, u64::MAX))
                .filter(|(_, r)| r.through <= up_to)
                .map(|(k, _)| *k)
                .collect();
            for k in done {
                if let Some(r) = self.drop_records.remove(&k) {
                    self.store.release(r.record);
                    self.owners.remove(&r.record);
                }
            }
        }
    }

    /// Drops every entry older than the time to live, except commits and
    /// the newest distribution per (sender, recipient, group), leaving gap
    /// notices in their place.
    pub(super) fn expire(&mut self, unix_ms: u64) {
        let cutoff = unix_ms.saturating_sub(self.config.ttl_ms);
        let mut dropped: Vec<Dropped> = Vec::new();
        for uid in 0..self.users.len() {
            dropped.clear();
            let Some(user) = self.users.get(uid) else {
                break;
            };
            let pushed = self.pushed_max(user);
            let msgs = &self.msgs;
            let newest = &self.newest_dist;
            if let Some(user) = self.users.get_mut(uid) {
                user.queue.drop_while(
                    pushed,
                    limits::RELAY_MAX_GAP_ENTRIES,
                    |m| {
                        let Some(msg) = msgs.get(m as usize) else {
                            return Verdict::Keep;
                        };
                        if msg.unix_ms >= cutoff {
                            Verdict::Stop
                        } else if msg.permanent
                            || (msg.kind == EntryKind::Distribution
                                && newest.get(&(msg.sender, msg.recipient, msg.group))
                                    == Some(&msg.lsn))
                        {
                            Verdict::Keep
                        } else {
                            Verdict::Drop {
                                group: msg.group,
                                sender: msg.sender,
                            }
                        }
                    },
                    |d| dropped.push(d),
                );
            }
            if !dropped.is_empty() {
                self.stats.dropped_expired += dropped.len() as u64;
                let uid = u32::try_from(uid).unwrap_or(NO_USER);
                for &d in &dropped {
                    self.note_drop(uid, d);
                }
                self.mark_sessions_ready(uid, Readiness::Ordinary);
            }
        }
    }

    pub(super) fn dedupe_insert(&mut self, user: u32, message_id: MessageId, r: Receipt) {
        self.dedupe.insert((user, message_id), r);
        self.dedupe_order.push_back((r.unix_ms, user, message_id));
    }

    pub(super) fn prune_dedupe(&mut self, unix_ms: u64) {
        let window = self.config.dedupe_window_ms;
        while let Some(&(at, user, mid)) = self.dedupe_order.front() {
            if at.saturating_add(window) >= unix_ms {
                break;
            }
            self.dedupe_order.pop_front();
            if self
                .dedupe
                .get(&(user, mid))
                .is_some_and(|r| r.unix_ms == at)
            {
                self.dedupe.remove(&(user, mid));
            }
        }
    }

    /// Copies the live records of the oldest segment to the head of the log
    /// (new ids, same payloads) and releases the originals, so one record
    /// that must live long (an account, a commit, an un-acked message for a
    /// member who never logs in) does not pin its whole segment. Only runs
    /// while less than half of the stored records are live: when most of
    /// the log is live, copying it gains no space.
    pub(super) fn copy_forward(&mut self) {
        let stats = self.store.stats();
        if stats.live_records.saturating_mul(2) >= stats.records
            || !self.deferred_releases.is_empty()
        {
            // (Records waiting for their drop records have no owner: they
            // must be neither released nor copied here.)
            return;
        }
        let ids = self.store.pinning_oldest(self.config.copy_forward_batch);
        let mut buf = std::mem::take(&mut self.scratch);
        for id in ids {
            let Some(owner) = self.owners.get(&id).copied() else {
                self.store.release(id);
                continue;
            };
            buf.clear();
            let (kind, at) = match self.store.get(id) {
                Ok(r) => {
                    buf.extend_from_slice(r.payload);
                    (r.kind, r.unix_ms)
                }
                Err(_) => continue,
            };
            let new = match self.store.append(kind, at, &buf) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!("copy-forward stopped: {e}");
                    break;
                }
            };
            match owner {
                Owner::Account(u) => {
                    if let Some(user) = self.users.get_mut(u as usize) {
                        user.record = new;
                    }
                }
                Owner::Msg(m) => {
                    if let Some(msg) = self.msgs.get_mut(m as usize) {
                        msg.record = new;
                    }
                }
                Owner::Ack(u) => {
                    if let Some(user) = self.users.get_mut(u as usize) {
                        user.ack_record = Some(new);
                    }
                }
                Owner::Drop(u) => {
                    if let Some(r) = self
                        .drop_records
                        .range_mut((u, 0)..=(u, u64::MAX))
                        .map(|(_, r)| r)
                        .find(|r| r.record == id)
                    {
                        r.record = new;
                    }
                }
            }
            self.owners.remove(&id);
            self.owners.insert(new, owner);
            self.store.release(id);
            self.stats.copied_forward += 1;
        }
        self.scratch = buf;
    }
}
