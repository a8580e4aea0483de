//! Client requests: validation, then a record appended, then the same
//! `install_*` function that replay uses.

use super::*;

impl<S: Store, R: CryptoRng> RelayCore<S, R> {
    fn take_challenge(&mut self, conn: ConnId) -> Option<[u8; 32]> {
        let c = self.conns.get_mut(&conn)?;
        match std::mem::replace(&mut c.auth, Auth::Spent) {
            Auth::Challenge(ch) => Some(ch),
            other => {
                c.auth = other;
                None
            }
        }
    }

    fn attach_session(&mut self, conn: ConnId, user: u32) {
        let Some(u) = self.users.get_mut(user as usize) else {
            return;
        };
        u.sessions.push(conn);
        u.all_reported = false;
        u.all_reported_bulk = false;
        let acked = u.acked;
        let name = u.name.clone();
        if let Some(c) = self.conns.get_mut(&conn) {
            c.auth = Auth::User(user);
            c.pushed = acked;
        }
        self.reply(conn, &Frame::Authenticated { name: &name, acked });
    }

    pub(super) fn on_register(
        &mut self,
        conn: ConnId,
        name: &str,
        identity: &[u8],
        proof: &[u8; 64],
        now: Instant,
        unix_ms: u64,
    ) {
        let k = FrameKind::Register as u8;
        let Some(challenge) = self.take_challenge(conn) else {
            return self.fail(conn, ErrorCode::AlreadyAuthenticated, k, [0; 16], false);
        };
        // Cheap refusals first (no token spent on them), then the
        // relay-wide rate, and only then the two signature checks: a flood
        // past the rate costs no cryptography. Deliberately, a request
        // that then fails its signature checks has spent its token: were
        // tokens spent only on success, bad proofs would buy unlimited
        // signature checks (tests/relay_core.rs, registration_rate_limit).
        let Ok(name) = normalize_name(name) else {
            return self.fail(conn, ErrorCode::BadName, k, [0; 16], true);
        };
        if self.by_name.contains_key(name.as_str()) {
            return self.fail(conn, ErrorCode::NameTaken, k, [0; 16], true);
        }
        if !self.registrations.take(now) {
            return self.fail(conn, ErrorCode::RegistrationRateLimited, k, [0; 16], true);
        }
        let pi = match PublicIdentity::decode(identity) {
            Ok(pi) if pi.verify().is_ok() && pi.dh_public.group() == self.config.dh_group => pi,
            _ => return self.fail(conn, ErrorCode::BadIdentity, k, [0; 16], true),
        };
        let msg = register_message(&challenge, &self.relay_key, &name);
        if verify_signature(&pi.signing_key, &msg, proof).is_err() {
            return self.fail(conn, ErrorCode::BadSignature, k, [0; 16], true);
        }
        let lsn = self.next_lsn;
        let payload = records::account(lsn, &name, identity);
        let record = match self.store.append(records::KIND_ACCOUNT, unix_ms, &payload) {
            Ok(r) => r,
            Err(e) => return self.fail(conn, store_code(&e), k, [0; 16], true),
        };
        self.take_lsn();
        let user = self.install_account(record, &name, identity, pi.signing_key);
        self.attach_session(conn, user);
    }

    pub(super) fn on_login(&mut self, conn: ConnId, name: &str, signature: &[u8; 64]) {
        let k = FrameKind::Login as u8;
        let Some(challenge) = self.take_challenge(conn) else {
            return self.fail(conn, ErrorCode::AlreadyAuthenticated, k, [0; 16], false);
        };
        let Ok(name) = normalize_name(name) else {
            return self.fail(conn, ErrorCode::BadName, k, [0; 16], true);
        };
        let Some(&user) = self.by_name.get(name.as_str()) else {
            return self.fail(conn, ErrorCode::UnknownUser, k, [0; 16], true);
        };
        let Some(key) = self.users.get(user as usize).map(|u| u.signing_key) else {
            return self.fail(conn, ErrorCode::Internal, k, [0; 16], true);
        };
        let msg = login_message(&challenge, &self.relay_key, &name);
        if verify_signature(&key, &msg, signature).is_err() {
            return self.fail(conn, ErrorCode::BadSignature, k, [0; 16], true);
        }
        self.attach_session(conn, user);
    }

    pub(super) fn on_fetch_identities(&mut self, conn: ConnId, names: &[&str]) {
        let normalized: Vec<Option<String>> =
            names.iter().map(|n| normalize_name(n).ok()).collect();
        let entries: Vec<IdentityEntry<'_>> = names
            .iter()
            .zip(&normalized)
            .map(|(raw, norm)| {
                let user = norm
                    .as_deref()
                    .and_then(|n| self.by_name.get(n))
                    .and_then(|&u| self.users.get(u as usize));
                IdentityEntry {
                    name: norm.as_deref().unwrap_or(raw),
                    identity: user.map(|u| &*u.identity),
                }
            })
            .collect();
        let mut out = Vec::new();
        Frame::Identities(entries).encode(&mut out);
        // The answer is positional and cannot be split: a request whose
        // answer would not fit in one frame is refused (ask for fewer).
        if out.len() - crate::wire::LENGTH_PREFIX_LEN > self.config.max_frame {
            let k = FrameKind::FetchIdentities as u8;
            return self.fail(conn, ErrorCode::FrameTooLarge, k, [0; 16], false);
        }
        self.reply_bytes(conn, &out);
    }

    fn reply_bytes(&mut self, conn: ConnId, bytes: &[u8]) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.control.extend_from_slice(bytes);
            self.mark_ready(conn);
        }
    }

    /// Checks that every roster name is a registered user with that key.
    fn roster_matches_directory<'a>(
        &self,
        mut members: impl Iterator<Item = (&'a str, &'a [u8; 32])>,
    ) -> Result<(), ErrorCode> {
        members.try_for_each(|(name, key)| {
            let u = self
                .by_name
                .get(name)
                .and_then(|&u| self.users.get(u as usize))
                .ok_or(ErrorCode::UnknownUser)?;
            if &u.signing_key == key {
                Ok(())
            } else {
                Err(ErrorCode::BadCommit)
            }
        })
    }

    pub(super) fn on_create_group(
        &mut self,
        conn: ConnId,
        user: u32,
        genesis: &[u8],
        unix_ms: u64,
    ) {
        let k = FrameKind::CreateGroup as u8;
        let commit = match Commit::decode(genesis) {
            Ok(c) => c,
            Err(_) => return self.fail(conn, ErrorCode::BadCommit, k, [0; 16], false),
        };
        let gid = commit.group_id;
        if self.by_group_id.contains_key(&gid) {
            return self.fail(conn, ErrorCode::GroupExists, k, gid, false);
        }
        let state = match GroupState::from_genesis(&commit) {
            Ok(s) => s,
            Err(e) => return self.fail(conn, membership_code(&e), k, gid, false),
        };
        if self
            .users
            .get(user as usize)
            .is_none_or(|u| *u.name != *commit.signer)
        {
            return self.fail(conn, ErrorCode::NotAuthorized, k, gid, false);
        }
        if let Err(code) = self.roster_matches_directory(state.members()) {
            return self.fail(conn, code, k, gid, false);
        }
        self.accept_commit(conn, user, None, &commit, state, genesis, unix_ms);
    }

    pub(super) fn on_commit(&mut self, conn: ConnId, user: u32, bytes: &[u8], unix_ms: u64) {
        let k = FrameKind::Commit as u8;
        let commit = match Commit::decode(bytes) {
            Ok(c) => c,
            Err(_) => return self.fail(conn, ErrorCode::BadCommit, k, [0; 16], false),
        };
        let gid = commit.group_id;
        let Some(&g) = self.by_group_id.get(&gid) else {
            return self.fail(conn, ErrorCode::UnknownGroup, k, gid, false);
        };
        let Some(name) = self.users.get(user as usize).map(|u| u.name.clone()) else {
            return;
        };
        let Some(group) = self.groups.get(g as usize) else {
            return;
        };
        if !group.state.is_member(&name) {
            return self.fail(conn, ErrorCode::NotMember, k, gid, false);
        }
        if *commit.signer != *name {
            return self.fail(conn, ErrorCode::NotAuthorized, k, gid, false);
        }
        let next = match group.state.apply(&commit) {
            Ok(s) => s,
            Err(e) => return self.fail(conn, membership_code(&e), k, gid, false),
        };
        if let Operation::Add {
            name, identity_key, ..
        } = &commit.op
            && let Err(code) =
                self.roster_matches_directory(std::iter::once((name.as_str(), identity_key)))
        {
            return self.fail(conn, code, k, gid, false);
        }
        self.accept_commit(conn, user, Some(g), &commit, next, bytes, unix_ms);
    }

    #[allow(clippy::too_many_arguments, reason = "one call site per commit kind")]
    fn accept_commit(
        &mut self,
        conn: ConnId,
        user: u32,
        group: Option<u32>,
        commit: &Commit,
        state: GroupState,
        bytes: &[u8],
        unix_ms: u64,
    ) {
        let k = if group.is_some() {
            FrameKind::Commit as u8
        } else {
            FrameKind::CreateGroup as u8
        };
        let gid = commit.group_id;
        let lsn = self.next_lsn;
        let entry = EntryRecord {
            record_kind: records::KIND_COMMIT,
            header: &[],
            sender: &commit.signer,
            group_id: &gid,
            kind: EntryKind::Commit,
            message_id: &commit_message_id(commit.epoch),
            ciphertext: bytes,
        };
        let appended = append_entry(&mut self.store, &mut self.scratch, lsn, unix_ms, &entry);
        let record = match appended {
            Ok(r) => r,
            Err(e) => return self.fail(conn, store_code(&e), k, gid, false),
        };
        self.take_lsn();
        let epoch = state.epoch();
        let removed = removed_member(commit);
        self.install_commit(record, lsn, unix_ms, user, group, state, removed.as_deref());
        self.reply(
            conn,
            &Frame::CommitAccepted {
                group_id: gid,
                epoch,
            },
        );
    }

    pub(super) fn on_fetch_commits(&mut self, conn: ConnId, user: u32, gid: GroupId, from: u64) {
        let k = FrameKind::FetchCommits as u8;
        let Some(g) = self.member_group(conn, user, gid, k) else {
            return;
        };
        let budget = self.config.max_frame.saturating_sub(64);
        let mut used = 0usize;
        let mut commits = Vec::new();
        let mut more = false;
        let list = self
            .groups
            .get(g as usize)
            .map(|g| g.commits.as_slice())
            .unwrap_or_default();
        let start = usize::try_from(from).unwrap_or(usize::MAX);
        for &m in list.iter().skip(start) {
            let Some(bytes) = self
                .msgs
                .get(m as usize)
                .and_then(|msg| self.store.get(msg.record).ok().map(|r| (msg, r)))
                .and_then(|(msg, r)| r.payload.get(usize::from(msg.body_off)..))
                .and_then(|body| records::parse_body(body).ok())
                .map(|b| b.ciphertext)
            else {
                continue;
            };
            if used + 4 + bytes.len() > budget || commits.len() >= limits::MAX_LIST_ITEMS {
                more = true;
                break;
            }
            used += 4 + bytes.len();
            commits.push(bytes);
        }
        let mut out = Vec::with_capacity(used + 32);
        Frame::Commits {
            group_id: gid,
            more,
            commits,
        }
        .encode(&mut out);
        self.reply_bytes(conn, &out);
    }

    /// The group `gid` if the user is a member; otherwise sends the error.
    fn member_group(&mut self, conn: ConnId, user: u32, gid: GroupId, k: u8) -> Option<u32> {
        let Some(&g) = self.by_group_id.get(&gid) else {
            self.fail(conn, ErrorCode::UnknownGroup, k, gid, false);
            return None;
        };
        let is_member = self
            .users
            .get(user as usize)
            .zip(self.groups.get(g as usize))
            .is_some_and(|(u, grp)| grp.state.is_member(&u.name));
        if !is_member {
            self.fail(conn, ErrorCode::NotMember, k, gid, false);
            return None;
        }
        Some(g)
    }

    pub(super) fn on_list_groups(&mut self, conn: ConnId, user: u32) {
        let Some(u) = self.users.get(user as usize) else {
            return;
        };
        let list: Vec<GroupSummary<'_>> = u
            .groups
            .iter()
            .filter_map(|&g| self.groups.get(g as usize))
            .map(|g| GroupSummary {
                group_id: *g.state.group_id(),
                epoch: g.state.epoch(),
                admin: g.state.admin(),
            })
            .collect();
        let mut out = Vec::new();
        Frame::Groups(list).encode(&mut out);
        self.reply_bytes(conn, &out);
    }

    pub(super) fn on_list_members(&mut self, conn: ConnId, user: u32, gid: GroupId) {
        let Some(g) = self.member_group(conn, user, gid, FrameKind::ListMembers as u8) else {
            return;
        };
        let Some(group) = self.groups.get(g as usize) else {
            return;
        };
        let mut out = Vec::new();
        Frame::Members {
            group_id: gid,
            epoch: group.state.epoch(),
            admin: group.state.admin(),
            members: group.state.members().map(|(n, _)| n).collect(),
        }
        .encode(&mut out);
        self.reply_bytes(conn, &out);
    }

    /// A re-send within the dedupe window: the same receipt again.
    fn resend_receipt(&mut self, conn: ConnId, user: u32, message_id: MessageId) -> bool {
        match self.dedupe.get(&(user, message_id)).copied() {
            Some(r) => {
                self.receipt(conn, message_id, r);
                true
            }
            None => false,
        }
    }

    #[allow(clippy::too_many_arguments, reason = "the fields of one frame")]
    pub(super) fn on_group_send(
        &mut self,
        conn: ConnId,
        user: u32,
        gid: GroupId,
        epoch: u64,
        message_id: MessageId,
        ciphertext: &[u8],
        unix_ms: u64,
    ) {
        let k = FrameKind::GroupSend as u8;
        if self.resend_receipt(conn, user, message_id) {
            return;
        }
        let Some(&g) = self.by_group_id.get(&gid) else {
            return self.fail(conn, ErrorCode::UnknownGroup, k, message_id, false);
        };
        let (Some(u), Some(group)) = (self.users.get(user as usize), self.groups.get(g as usize))
        else {
            return;
        };
        if group.state.is_dissolved() {
            return self.fail(conn, ErrorCode::UnknownGroup, k, message_id, false);
        }
        if !group.state.is_member(&u.name) {
            return self.fail(conn, ErrorCode::NotMember, k, message_id, false);
        }
        if group.state.epoch() != epoch {
            return self.fail(conn, ErrorCode::StaleEpoch, k, message_id, false);
        }
        if u.quota_used >= self.config.sender_quota {
            return self.fail(conn, ErrorCode::QuotaExceeded, k, message_id, false);
        }
        let lsn = self.next_lsn;
        let entry = EntryRecord {
            record_kind: records::KIND_GROUP_MESSAGE,
            header: &epoch.to_be_bytes(),
            sender: &u.name,
            group_id: &gid,
            kind: EntryKind::GroupMessage,
            message_id: &message_id,
            ciphertext,
        };
        let appended = append_entry(&mut self.store, &mut self.scratch, lsn, unix_ms, &entry);
        let record = match appended {
            Ok(r) => r,
            Err(e) => return self.fail(conn, store_code(&e), k, message_id, false),
        };
        self.take_lsn();
        self.install_group_message(record, lsn, unix_ms, user, g);
        let r = Receipt {
            record,
            lsn,
            unix_ms,
        };
        self.dedupe_insert(user, message_id, r);
        self.receipt(conn, message_id, r);
    }

    #[allow(clippy::too_many_arguments, reason = "the fields of one frame")]
    pub(super) fn on_direct_send(
        &mut self,
        conn: ConnId,
        user: u32,
        recipient: &str,
        gid: GroupId,
        kind: EntryKind,
        message_id: MessageId,
        ciphertext: &[u8],
        now: Instant,
        unix_ms: u64,
    ) {
        let k = FrameKind::DirectSend as u8;
        if self.resend_receipt(conn, user, message_id) {
            return;
        }
        if kind == EntryKind::KeyRequest
            && self
                .users
                .get_mut(user as usize)
                .is_some_and(|u| !u.key_requests.take(now))
        {
            return self.fail(conn, ErrorCode::RateLimited, k, message_id, false);
        }
        let Ok(recipient) = normalize_name(recipient) else {
            return self.fail(conn, ErrorCode::BadName, k, message_id, false);
        };
        let Some(&to) = self.by_name.get(recipient.as_str()) else {
            return self.fail(conn, ErrorCode::UnknownUser, k, message_id, false);
        };
        let Some(&g) = self.by_group_id.get(&gid) else {
            return self.fail(conn, ErrorCode::UnknownGroup, k, message_id, false);
        };
        let (Some(u), Some(group)) = (self.users.get(user as usize), self.groups.get(g as usize))
        else {
            return;
        };
        if !group.state.is_member(&u.name) || !group.state.is_member(&recipient) {
            return self.fail(conn, ErrorCode::NoSharedGroup, k, message_id, false);
        }
        if u.quota_used >= self.config.sender_quota {
            return self.fail(conn, ErrorCode::QuotaExceeded, k, message_id, false);
        }
        let lsn = self.next_lsn;
        let entry = EntryRecord {
            record_kind: records::KIND_DIRECT,
            header: &to.to_be_bytes(),
            sender: &u.name,
            group_id: &gid,
            kind,
            message_id: &message_id,
            ciphertext,
        };
        let appended = append_entry(&mut self.store, &mut self.scratch, lsn, unix_ms, &entry);
        let record = match appended {
            Ok(r) => r,
            Err(e) => return self.fail(conn, store_code(&e), k, message_id, false),
        };
        self.take_lsn();
        self.install_direct(record, lsn, unix_ms, user, to, g, kind);
        let r = Receipt {
            record,
            lsn,
            unix_ms,
        };
        self.dedupe_insert(user, message_id, r);
        self.receipt(conn, message_id, r);
    }

    pub(super) fn on_ack(&mut self, conn: ConnId, user: u32, up_to: u64, unix_ms: u64) {
        let k = FrameKind::Ack as u8;
        if up_to >= self.next_lsn {
            return self.fail(conn, ErrorCode::AckOutOfRange, k, [0; 16], false);
        }
        if self
            .users
            .get(user as usize)
            .is_none_or(|u| up_to <= u.acked)
        {
            return;
        }
        let lsn = self.next_lsn;
        let payload = records::ack(lsn, user, up_to);
        let record = match self
            .store
            .append_reserved(records::KIND_ACK, unix_ms, &payload)
        {
            Ok(r) => r,
            Err(e) => return self.fail(conn, store_code(&e), k, [0; 16], false),
        };
        self.take_lsn();
        self.apply_ack(record, user, up_to);
    }
}

/// One message record to store: `lsn ‖ header ‖ entry body`
/// (`records.rs` has the layouts: `header` is a group message's epoch, a
/// direct message's recipient, empty for a commit).
struct EntryRecord<'a> {
    record_kind: u8,
    header: &'a [u8],
    sender: &'a str,
    group_id: &'a GroupId,
    kind: EntryKind,
    message_id: &'a MessageId,
    ciphertext: &'a [u8],
}

/// Encodes `e` with `lsn` into the core's reused `scratch` buffer (no
/// allocation once it has grown) and appends it to the store.
fn append_entry<S: Store>(
    store: &mut S,
    scratch: &mut Vec<u8>,
    lsn: u64,
    unix_ms: u64,
    e: &EntryRecord<'_>,
) -> Result<RecordId, StoreError> {
    scratch.clear();
    scratch.extend_from_slice(&lsn.to_be_bytes());
    scratch.extend_from_slice(e.header);
    put_entry_body(
        scratch,
        e.sender,
        e.group_id,
        e.kind,
        e.message_id,
        unix_ms,
        e.ciphertext,
    );
    store.append(e.record_kind, unix_ms, scratch)
}

/// The member a remove or leave takes out of the roster.
fn removed_member(c: &Commit) -> Option<String> {
    match &c.op {
        Operation::Remove { name, .. } | Operation::Leave { name, .. } => Some(name.clone()),
        _ => None,
    }
}

pub(super) fn removed_member_of(c: &Commit) -> Option<String> {
    removed_member(c)
}
