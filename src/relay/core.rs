//! The relay's protocol core: accounts, groups, queues and acks as a pure
//! state machine over a [`Store`]. No sockets, no files, no clocks: the
//! event loop feeds it bytes and times and pulls its output.
//!
//! # Call order (for the event loop)
//!
//! ```text
//! RelayCore::open(store, rng, identity, config, now, unix_ms)   once
//! loop {
//!     handle_connect(conn, now)                 new socket (queues hello)
//!     handle_bytes(conn, &buf, now, unix_ms)    returns bytes consumed;
//!                                               keep the rest for next time
//!     handle_disconnect(conn)                   socket gone
//!     handle_durable()                          store's durable mark moved
//!     handle_timeout(now, unix_ms)              when poll_timeout() passes
//!     poll_ready_conns(&mut ready)              conns whose output became pending
//!     poll_transmit(conn, &mut out, max_bytes)  fill the conn's write buffer
//!     poll_close()                              conns to close after flushing
//!     poll_timeout()                            next handle_timeout deadline
//! }
//! ```
//!
//! Output is pulled, never pushed: a member's queue is its backlog, and each
//! session keeps only a cursor ("highest sequence number sent"). A slow
//! reader whose socket is full is simply not asked for more; its entries
//! stay in the mailbox and flow when it drains, so memory per connection is
//! bounded by what the event loop chooses to buffer.
//!
//! `poll_ready_conns` is edge-triggered: a connection is reported when it
//! goes from "nothing to send" to "something to send", and not again until a
//! `poll_transmit` has drained it. After a `poll_transmit` that stopped at
//! `max_bytes`, [`RelayCore::has_pending_output`] is true and the loop calls
//! `poll_transmit` again when the socket is writable.
//!
//! Readiness comes in two classes. A message to a group of more than
//! [`limits::RELAY_BULK_FANOUT`] members makes its recipients ready as
//! *bulk* ([`RelayCore::poll_ready_bulk`]); everything else (replies, small
//! groups, direct messages) is ordinary ([`RelayCore::poll_ready_conns`]).
//! The loop writes ordinary readiness in the pass it appears and spreads
//! bulk over passes, so one message to a thousand members does not hold up
//! a small group's delivery, nor does a busy small group starve anyone. A
//! connection reported as bulk that then gets ordinary output is reported
//! again as ordinary.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand_core::CryptoRng;
use slab::Slab;

use super::queue::{Dropped, Gap, Item, Queue, Verdict};
use super::records::{self, EntryBody};
use crate::crypto::dh::DhGroup;
use crate::crypto::identity::{PublicIdentity, SigningKeyPair, verify_signature};
use crate::limits;
use crate::mailbox::{RecordId, Store, StoreError};
use crate::membership::{Commit, GroupState, MembershipError, Operation};
use crate::wire::{
    DELIVER_HEADER_LEN, EntryKind, ErrorCode, ErrorFrame, Frame, FrameKind, GapNotice, GroupId,
    GroupSummary, Hello, IdentityEntry, MessageId, commit_message_id, encode_deliver_header,
    login_message, normalize_name, put_entry_body, register_message, split_frame,
};

/// A connection, as named by the event loop (a slab key plus a generation,
/// or any other id that is never reused while the core may still see it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Why the core wants a connection closed (after its pending output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer broke the protocol (the error frame says how).
    Protocol(ErrorCode),
    /// Register or login failed (the error frame says why).
    AuthFailed(ErrorCode),
    /// No frame for longer than the idle timeout.
    Idle,
}

/// Settings of the core (plain values; the CLI fills them).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Largest frame accepted, in bytes (`length` prefix value).
    pub max_frame: usize,
    /// Time to live of queued entries, in milliseconds.
    pub ttl_ms: u64,
    /// Entries per member queue that count against the cap.
    pub queue_cap: usize,
    /// Stored, not yet fully delivered messages a sender may have.
    pub sender_quota: usize,
    /// How long a `(sender, message id)` is remembered for idempotent sends.
    pub dedupe_window_ms: u64,
    /// Registrations allowed per minute, relay-wide (also the burst). The
    /// burst is kept equal to the rate: the set-ups that raise the rate
    /// (load test, demo, test relays) register their users in one burst,
    /// and accounts grow by the rate in the long run whatever the burst. A
    /// token is taken before the proof is checked, so a bad proof spends
    /// one (deliberately: bad proofs cannot buy unlimited signature checks).
    pub registrations_per_minute: u32,
    /// Key requests each user may send per minute (also the burst).
    pub key_requests_per_minute: u32,
    /// Close connections silent for this long.
    pub idle_timeout: Duration,
    /// How often to expire entries, prune the dedupe window and compact.
    pub maintenance_interval: Duration,
    /// Records copied forward per maintenance pass.
    pub copy_forward_batch: usize,
    /// Send stored receipts only once the store's durable mark covers the
    /// record (`--fsync always`).
    pub receipts_after_durable: bool,
    /// The DH group clients must use.
    pub dh_group: DhGroup,
    /// Software name in the hello.
    pub software: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_frame: limits::MAX_FRAME_LEN,
            ttl_ms: limits::RELAY_TTL_MS,
            queue_cap: limits::RELAY_QUEUE_CAP,
            sender_quota: limits::RELAY_SENDER_QUOTA,
            dedupe_window_ms: limits::RELAY_DEDUPE_WINDOW_MS,
            registrations_per_minute: limits::RELAY_REGISTRATIONS_PER_MINUTE,
            key_requests_per_minute: limits::RELAY_KEY_REQUESTS_PER_MINUTE,
            idle_timeout: limits::RELAY_IDLE_TIMEOUT,
            maintenance_interval: limits::RELAY_MAINTENANCE_INTERVAL,
            copy_forward_batch: limits::RELAY_COPY_FORWARD_BATCH,
            receipts_after_durable: false,
            dh_group: DhGroup::Ffdhe2048,
            software: concat!("hermes/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Why the core could not start.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The store failed while replaying.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What [`RelayCore::open`] found in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records replayed.
    pub records: u64,
    /// Records skipped: unknown kind, undecodable, or inconsistent (for
    /// example a commit that no longer verifies). Kept in the store.
    pub skipped: u64,
    /// Older copies of records that were copied forward (released again).
    pub duplicates: u64,
    /// Accounts rebuilt.
    pub accounts: usize,
    /// Groups rebuilt.
    pub groups: usize,
    /// Messages still queued for someone.
    pub live_messages: usize,
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Deliver and gap-notice frames written by `poll_transmit`.
    pub deliveries: u64,
    /// Messages (group, direct, commit) accepted.
    pub messages_accepted: u64,
    /// Entries dropped over the cap.
    pub dropped_over_cap: u64,
    /// Entries dropped past the time to live.
    pub dropped_expired: u64,
    /// Records copied forward by compaction.
    pub copied_forward: u64,
    /// Error frames sent.
    pub errors_sent: u64,
}

const NO_USER: u32 = u32::MAX;

/// A multiply-shift hasher for ids the relay assigns itself (connection and
/// record ids): no attacker chooses them, so SipHash's flood resistance buys
/// nothing on the per-delivery path. Keys chosen by clients (names, group
/// ids, message ids) keep the standard hasher.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the high bits, which hashbrown uses, mix all
        // input bits.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;
/// Room a connection's control buffer gets at its first reply after being
/// drained (a receipt or a pong fits, so one allocation, no regrowth).
const CONTROL_FIRST_CAPACITY: usize = 128;

enum Auth {
    Challenge([u8; 32]),
    Spent,
    User(u32),
}

struct Conn {
    auth: Auth,
    control: Vec<u8>,
    control_pos: usize,
    pushed: u64,
    reported: bool,
    /// Reported through `poll_ready_bulk` (and not since drained).
    reported_bulk: bool,
    closing: bool,
    last_seen: Instant,
}

struct User {
    name: Box<str>,
    identity: Box<[u8]>,
    signing_key: [u8; 32],
    record: RecordId,
    queue: Queue,
    acked: u64,
    ack_record: Option<RecordId>,
    sessions: Vec<ConnId>,
    /// Every session in `sessions` is marked `reported` (so a new entry
    /// needs no lookup of each session to mark it ready). Cleared when a
    /// session drains (`transmit`) or attaches.
    all_reported: bool,
    /// The same for bulk readiness (`reported` or `reported_bulk`).
    all_reported_bulk: bool,
    groups: Vec<u32>,
    quota_used: usize,
    key_requests: TokenBucket,
}

struct Group {
    state: GroupState,
    members: Vec<u32>,
    commits: Vec<u32>,
}

struct Msg {
    record: RecordId,
    lsn: u64,
    refs: u32,
    kind: EntryKind,
    sender: u32,
    recipient: u32,
    group: u32,
    unix_ms: u64,
    body_off: u8,
    permanent: bool,
}

#[derive(Clone, Copy)]
enum Owner {
    Account(u32),
    Msg(u32),
    Ack(u32),
    /// A drop record of this member's queue (`RelayCore::drop_records`).
    Drop(u32),
}

/// The live drop record of one gap entry (member, seq).
#[derive(Clone, Copy)]
struct DropRec {
    record: RecordId,
    /// The highest sequence number the gap counts; the record is released
    /// once the member's ack reaches it.
    through: u64,
}

/// A drop record seen by replay: which entries of its member's queue
/// replay must not queue again.
struct ReplayDrop {
    group_id: GroupId,
    sender: u32,
    seq: u64,
    through: u64,
}

#[derive(Clone, Copy)]
struct Receipt {
    record: RecordId,
    lsn: u64,
    unix_ms: u64,
}

struct HeldReceipt {
    record: RecordId,
    conn: ConnId,
    message_id: MessageId,
    lsn: u64,
    unix_ms: u64,
}

/// How a new queue entry makes its member's sessions ready (see the
/// module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    /// Reported by `poll_ready_conns`, written in the pass it appears.
    Ordinary,
    /// A large group's message: reported by `poll_ready_bulk`.
    Bulk,
}

struct TokenBucket {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn new(per_minute: u32) -> Self {
        let burst = f64::from(per_minute.max(1));
        Self {
            tokens: burst,
            per_sec: f64::from(per_minute) / 60.0,
            burst,
            last: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The relay's pure protocol core. See the module doc for the call order.
pub struct RelayCore<S: Store, R: CryptoRng> {
    config: RelayConfig,
    store: S,
    rng: R,
    relay_key: [u8; 32],
    /// The hello signature, made once at start (it does not cover the
    /// per-connection challenge): a connection costs no signing.
    hello_signature: [u8; 64],
    conns: IdMap<ConnId, Conn>,
    ready: Vec<ConnId>,
    ready_bulk: Vec<ConnId>,
    closes: VecDeque<(ConnId, CloseReason)>,
    users: Vec<User>,
    by_name: HashMap<Box<str>, u32>,
    groups: Vec<Group>,
    by_group_id: HashMap<GroupId, u32>,
    msgs: Slab<Msg>,
    owners: IdMap<RecordId, Owner>,
    dedupe: HashMap<(u32, MessageId), Receipt>,
    dedupe_order: VecDeque<(u64, u32, MessageId)>,
    newest_dist: HashMap<(u32, u32, u32), u64>,
    /// The live drop record of each gap entry, by (member, gap seq).
    drop_records: BTreeMap<(u32, u64), DropRec>,
    /// Gap entries changed since the last `flush_drops`, by (member, gap
    /// seq): the highest sequence number dropped into each.
    dirty_gaps: IdMap<(u32, u64), u64>,
    /// Records of dropped messages, released once `flush_drops` has
    /// appended the drop records that count them.
    deferred_releases: Vec<RecordId>,
    /// During replay only: each member's drop records, with the highest
    /// `through` among them.
    replay_drops: IdMap<u32, (u64, Vec<ReplayDrop>)>,
    next_lsn: u64,
    held: VecDeque<HeldReceipt>,
    registrations: TokenBucket,
    next_maintenance: Option<Instant>,
    next_idle_check: Option<Instant>,
    scratch: Vec<u8>,
    scratch_msgs: Vec<u32>,
    stats: CoreStats,
}

fn membership_code(e: &MembershipError) -> ErrorCode {
    match e {
        MembershipError::EpochMismatch { .. } => ErrorCode::EpochConflict,
        MembershipError::NotAuthorized { .. } | MembershipError::SignerNotMember(_) => {
            ErrorCode::NotAuthorized
        }
        MembershipError::Dissolved => ErrorCode::UnknownGroup,
        _ => ErrorCode::BadCommit,
    }
}

fn store_code(e: &StoreError) -> ErrorCode {
    if e.is_full() {
        ErrorCode::StoreFull
    } else {
        ErrorCode::Internal
    }
}

impl<S: Store, R: CryptoRng> RelayCore<S, R> {
    /// Rebuilds the core from every record in `store` (accounts, groups,
    /// queues, acks), then expires what the time to live says is gone at
    /// `unix_ms`.
    ///
    /// # Errors
    /// [`CoreError::Store`] if a record listed by the replay cannot be read.
    pub fn open(
        store: S,
        rng: R,
        identity: SigningKeyPair,
        config: RelayConfig,
        now: Instant,
        unix_ms: u64,
    ) -> Result<(Self, ReplayReport), CoreError> {
        let relay_key = identity.public_key();
        let registrations = TokenBucket::new(config.registrations_per_minute);
        let hello_signature = identity.sign(
            &Hello {
                software: &config.software,
                dh_group: config.dh_group.id(),
                relay_key,
                challenge: [0; 32],
                signature: [0; 64],
            }
            .signed_bytes(),
        );
        let mut core = Self {
            config,
            store,
            rng,
            relay_key,
            hello_signature,
            conns: IdMap::default(),
            ready: Vec::new(),
            ready_bulk: Vec::new(),
            closes: VecDeque::new(),
            users: Vec::new(),
            by_name: HashMap::new(),
            groups: Vec::new(),
            by_group_id: HashMap::new(),
            msgs: Slab::new(),
            owners: IdMap::default(),
            dedupe: HashMap::new(),
            dedupe_order: VecDeque::new(),
            newest_dist: HashMap::new(),
            drop_records: BTreeMap::new(),
            dirty_gaps: IdMap::default(),
            deferred_releases: Vec::new(),
            replay_drops: IdMap::default(),
            next_lsn: 1,
            held: VecDeque::new(),
            registrations,
            next_maintenance: None,
            next_idle_check: None,
            scratch: Vec::new(),
            scratch_msgs: Vec::new(),
            stats: CoreStats::default(),
        };
        let report = core.replay(unix_ms)?;
        // Replay released what the stored acks cover: give that space back
        // now, not a maintenance interval later (a relay restarted at its
        // segment limit needs it for its first append).
        if let Err(e) = core.store.compact() {
            tracing::warn!("compaction after replay failed: {e}");
        }
        core.next_maintenance = Some(now + core.config.maintenance_interval);
        core.next_idle_check = Some(now + core.config.idle_timeout / 3);
        Ok((core, report))
    }

    /// The relay's Ed25519 public key (what clients pin).
    #[must_use]
    pub fn relay_key(&self) -> [u8; 32] {
        self.relay_key
    }

    /// The store (for metrics and tests).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Mutable access to the store (for tests that inject faults).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Gives the store back (a restart in tests: open a new core on it).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    // ------------------------------------------------------------------
    // Inputs
    // ------------------------------------------------------------------

    /// A new connection: queues the hello (signed once at start) with a
    /// fresh challenge.
    pub fn handle_connect(&mut self, conn: ConnId, now: Instant) {
        let mut challenge = [0u8; 32];
        self.rng.fill_bytes(&mut challenge);
        let hello = Hello {
            software: &self.config.software,
            dh_group: self.config.dh_group.id(),
            relay_key: self.relay_key,
            challenge,
            signature: self.hello_signature,
        };
        let mut control = Vec::with_capacity(256);
        Frame::Hello(hello).encode(&mut control);
        self.conns.insert(
            conn,
            Conn {
                auth: Auth::Challenge(challenge),
                control,
                control_pos: 0,
                pushed: 0,
                reported: false,
                reported_bulk: false,
                closing: false,
                last_seen: now,
            },
        );
        self.mark_ready(conn);
    }

    /// Bytes read from `conn`: processes every complete frame and returns
    /// how many bytes it consumed (the caller keeps the rest, a partial
    /// frame, and passes it again with more bytes). After a framing error
    /// everything is consumed and the connection is marked for closing.
    pub fn handle_bytes(
        &mut self,
        conn: ConnId,
        bytes: &[u8],
        now: Instant,
        unix_ms: u64,
    ) -> usize {
        let mut used = 0;
        loop {
            if self.conns.get(&conn).is_none_or(|c| c.closing) {
                return bytes.len();
            }
            let rest = bytes.get(used..).unwrap_or_default();
            match split_frame(rest, self.config.max_frame) {
                Ok(None) => return used,
                Ok(Some((frame, n))) => {
                    self.handle_frame(conn, frame, now, unix_ms);
                    used += n;
                }
                Err(e) => {
                    self.fail(conn, e.code(), 0, [0; 16], true);
                    return bytes.len();
                }
            }
        }
    }

    /// One complete frame (version, kind and body, without the length
    /// prefix) from `conn`.
    pub fn handle_frame(&mut self, conn: ConnId, frame: &[u8], now: Instant, unix_ms: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        c.last_seen = now;
        if c.control.len().saturating_sub(c.control_pos) > limits::RELAY_MAX_REPLY_BACKLOG {
            let kind = frame.get(1).copied().unwrap_or(0);
            return self.fail(conn, ErrorCode::RateLimited, kind, [0; 16], true);
        }
        let user = match c.auth {
            Auth::User(u) => Some(u),
            Auth::Challenge(_) | Auth::Spent => None,
        };
        let kind_byte = frame.get(1).copied().unwrap_or(0);
        let f = match Frame::decode(frame) {
            Ok(f) => f,
            Err(e) => {
                self.fail(conn, e.code(), kind_byte, [0; 16], true);
                return;
            }
        };
        if !f.kind().is_client_to_relay() {
            self.fail(conn, ErrorCode::UnexpectedFrame, kind_byte, [0; 16], false);
            return;
        }
        match (f, user) {
            (Frame::Ping { nonce }, _) => self.reply(conn, &Frame::Pong { nonce }),
            (
                Frame::Register {
                    name,
                    identity,
                    proof,
                },
                None,
            ) => self.on_register(conn, name, identity, &proof, now, unix_ms),
            (Frame::Login { name, signature }, None) => self.on_login(conn, name, &signature),
            (Frame::Register { .. } | Frame::Login { .. }, Some(_)) => {
                self.fail(
                    conn,
                    ErrorCode::AlreadyAuthenticated,
                    kind_byte,
                    [0; 16],
                    false,
                );
            }
            (_, None) => self.fail(conn, ErrorCode::NotAuthenticated, kind_byte, [0; 16], false),
            (f, Some(u)) => self.on_request(conn, u, f, now, unix_ms),
        }
    }

    fn on_request(&mut self, conn: ConnId, user: u32, f: Frame<'_>, now: Instant, unix_ms: u64) {
        match f {
            Frame::FetchIdentities(names) => self.on_fetch_identities(conn, &names),
            Frame::CreateGroup { genesis } => self.on_create_group(conn, user, genesis, unix_ms),
            Frame::Commit { commit } => self.on_commit(conn, user, commit, unix_ms),
            Frame::FetchCommits {
                group_id,
                from_epoch,
            } => self.on_fetch_commits(conn, user, group_id, from_epoch),
            Frame::ListGroups => self.on_list_groups(conn, user),
            Frame::ListMembers { group_id } => self.on_list_members(conn, user, group_id),
            Frame::GroupSend {
                group_id,
                epoch,
                message_id,
                ciphertext,
            } => self.on_group_send(conn, user, group_id, epoch, message_id, ciphertext, unix_ms),
            Frame::DirectSend {
                recipient,
                group_id,
                kind,
                message_id,
                ciphertext,
            } => self.on_direct_send(
                conn, user, recipient, group_id, kind, message_id, ciphertext, now, unix_ms,
            ),
            Frame::Ack { up_to } => self.on_ack(conn, user, up_to, unix_ms),
            // Register, login and ping are handled by the caller; relay
            // kinds were refused before.
            _ => {}
        }
    }

    /// The connection is gone (closed by either side).
    pub fn handle_disconnect(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn)
            && let Auth::User(u) = c.auth
            && let Some(user) = self.users.get_mut(u as usize)
        {
            user.sessions.retain(|s| *s != conn);
        }
    }

    /// The store's durable mark may have moved: releases stored receipts
    /// held back under `receipts_after_durable`.
    pub fn handle_durable(&mut self) {
        let durable = self.store.durable_up_to();
        while let Some(h) = self.held.front() {
            if durable.is_none_or(|d| d < h.record) {
                break;
            }
            let conn = h.conn;
            let f = Frame::StoredReceipt {
                message_id: h.message_id,
                seq: h.lsn,
                unix_ms: h.unix_ms,
            };
            self.held.pop_front();
            self.reply(conn, &f);
        }
    }

    /// Timers: idle connections, expiry by time to live, the dedupe
    /// window, and compaction (copy-forward, then `Store::compact`).
    pub fn handle_timeout(&mut self, now: Instant, unix_ms: u64) {
        if self.next_idle_check.is_some_and(|t| now >= t) {
            self.next_idle_check = Some(now + self.config.idle_timeout / 3);
            let idle = self.config.idle_timeout;
            let mut expired: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| !c.closing && now.saturating_duration_since(c.last_seen) > idle)
                .map(|(id, _)| *id)
                .collect();
            expired.sort_unstable();
            for id in expired {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.closing = true;
                }
                self.closes.push_back((id, CloseReason::Idle));
            }
        }
        if self.next_maintenance.is_some_and(|t| now >= t) {
            self.next_maintenance = Some(now + self.config.maintenance_interval);
            self.maintain(unix_ms);
        }
    }

    /// Runs expiry, the drop records of this interval's gaps, dedupe
    /// pruning and compaction now (also done by `handle_timeout` every
    /// maintenance interval).
    pub fn maintain(&mut self, unix_ms: u64) {
        self.expire(unix_ms);
        self.flush_drops(unix_ms);
        self.prune_dedupe(unix_ms);
        self.copy_forward();
        if let Err(e) = self.store.compact() {
            tracing::warn!("compaction failed: {e}");
        }
    }

    // ------------------------------------------------------------------
    // Outputs
    // ------------------------------------------------------------------

    /// Appends to `out` the connections whose output became pending since
    /// the last call (edge-triggered: see the module doc).
    pub fn poll_ready_conns(&mut self, out: &mut Vec<ConnId>) {
        out.append(&mut self.ready);
    }

    /// Appends to `out` the connections that became ready through a large
    /// group's message (bulk: see the module doc), edge-triggered likewise.
    pub fn poll_ready_bulk(&mut self, out: &mut Vec<ConnId>) {
        out.append(&mut self.ready_bulk);
    }

    /// True if `conn` has output that `poll_transmit` would write.
    #[must_use]
    pub fn has_pending_output(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| self.pending(c))
    }

    fn pending(&self, c: &Conn) -> bool {
        if c.control_pos < c.control.len() {
            return true;
        }
        if c.closing {
            return false;
        }
        match c.auth {
            Auth::User(u) => self
                .users
                .get(u as usize)
                .and_then(|user| user.queue.last_seq())
                .is_some_and(|last| last > c.pushed),
            Auth::Challenge(_) | Auth::Spent => false,
        }
    }

    /// Writes `conn`'s pending output to `out`: first control frames
    /// (replies, receipts, errors; may stop mid-frame), then queue entries
    /// (whole deliver and gap-notice frames) from the session's cursor.
    /// Stops before exceeding `max_bytes`, except that one whole entry is
    /// always written if nothing else was. Returns the bytes written.
    pub fn poll_transmit(&mut self, conn: ConnId, out: &mut Vec<u8>, max_bytes: usize) -> usize {
        self.transmit(conn, out, max_bytes).0
    }

    /// [`RelayCore::poll_transmit`], also saying whether output is still
    /// pending afterwards (what [`RelayCore::has_pending_output`] would
    /// answer, without a second lookup).
    pub fn transmit(&mut self, conn: ConnId, out: &mut Vec<u8>, max_bytes: usize) -> (usize, bool) {
        let start = out.len();
        let Some(c) = self.conns.get_mut(&conn) else {
            return (0, false);
        };
        if c.control_pos < c.control.len() {
            let rest = c.control.get(c.control_pos..).unwrap_or_default();
            let n = rest.len().min(max_bytes);
            out.extend_from_slice(rest.get(..n).unwrap_or_default());
            c.control_pos += n;
            if c.control_pos < c.control.len() {
                return (n, true);
            }
        }
        // Drained: the buffer goes, so an idle connection holds none (tens
        // of thousands of idle sessions would otherwise each keep the
        // largest reply they ever had); the next reply allocates afresh.
        c.control_pos = 0;
        c.control = Vec::new();
        if let Auth::User(u) = c.auth
            && !c.closing
            && let Some(user) = self.users.get(u as usize)
        {
            let entries = user.queue.entries();
            let mut i = user.queue.first_after(c.pushed);
            while let Some(e) = entries.get(i) {
                let written = out.len() - start;
                match e.item {
                    Item::Msg { msg, .. } => {
                        let Some(m) = self.msgs.get(msg as usize) else {
                            // Never expected (an entry holds a reference),
                            // but passed over like an unreadable record: a
                            // cursor left behind it would keep output
                            // "pending" and the session never reported again.
                            tracing::error!("queued message {msg} missing");
                            c.pushed = e.seq;
                            i += 1;
                            continue;
                        };
                        let body = match self.store.get(m.record) {
                            Ok(r) => r.payload.get(usize::from(m.body_off)..).unwrap_or_default(),
                            Err(err) => {
                                tracing::error!("queued record {:?} unreadable: {err}", m.record);
                                c.pushed = e.seq;
                                i += 1;
                                continue;
                            }
                        };
                        if written > 0 && written + DELIVER_HEADER_LEN + body.len() > max_bytes {
                            break;
                        }
                        encode_deliver_header(out, e.seq, body.len());
                        out.extend_from_slice(body);
                    }
                    Item::Gap(g) => {
                        if written > 0 && written + 64 > max_bytes {
                            break;
                        }
                        let (Some(group), Some(sender)) = (
                            self.groups.get(g.group as usize),
                            self.users.get(g.sender as usize),
                        ) else {
                            c.pushed = e.seq;
                            i += 1;
                            continue;
                        };
                        Frame::GapNotice(GapNotice {
                            seq: e.seq,
                            group_id: *group.state.group_id(),
                            sender: &sender.name,
                            count: g.count,
                        })
                        .encode(out);
                    }
                }
                self.stats.deliveries += 1;
                c.pushed = e.seq;
                i += 1;
            }
        }
        let c_ref = &*c;
        let still = c_ref.control_pos < c_ref.control.len()
            || !c_ref.closing
                && match c_ref.auth {
                    Auth::User(u) => self
                        .users
                        .get(u as usize)
                        .and_then(|user| user.queue.last_seq())
                        .is_some_and(|last| last > c_ref.pushed),
                    Auth::Challenge(_) | Auth::Spent => false,
                };
        if !still {
            c.reported = false;
            c.reported_bulk = false;
            if let Auth::User(u) = c.auth
                && let Some(user) = self.users.get_mut(u as usize)
            {
                user.all_reported = false;
                user.all_reported_bulk = false;
            }
        }
        (out.len() - start, still)
    }

    /// The next connection to close (after writing its pending output), if any.
    pub fn poll_close(&mut self) -> Option<(ConnId, CloseReason)> {
        self.closes.pop_front()
    }

    /// When `handle_timeout` should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_maintenance, self.next_idle_check) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ------------------------------------------------------------------
    // Replies
    // ------------------------------------------------------------------

    fn mark_ready(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn)
            && !c.reported
        {
            c.reported = true;
            self.ready.push(conn);
        }
    }

    fn reply(&mut self, conn: ConnId, f: &Frame<'_>) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.control.capacity() == 0 {
                c.control.reserve(CONTROL_FIRST_CAPACITY);
            }
            f.encode(&mut c.control);
            self.mark_ready(conn);
        }
    }

    fn fail(
        &mut self,
        conn: ConnId,
        code: ErrorCode,
        refers_to: u8,
        reference: [u8; 16],
        close: bool,
    ) {
        self.stats.errors_sent += 1;
        self.reply(
            conn,
            &Frame::Error(ErrorFrame {
                code: code.to_u16(),
                refers_to,
                reference,
                text: code.describe(),
            }),
        );
        if close && let Some(c) = self.conns.get_mut(&conn) {
            c.closing = true;
            let reason =
                if refers_to == FrameKind::Register as u8 || refers_to == FrameKind::Login as u8 {
                    CloseReason::AuthFailed(code)
                } else {
                    CloseReason::Protocol(code)
                };
            self.closes.push_back((conn, reason));
        }
    }

    fn receipt(&mut self, conn: ConnId, message_id: MessageId, r: Receipt) {
        let durable = self.store.durable_up_to();
        if self.config.receipts_after_durable && durable.is_none_or(|d| d < r.record) {
            self.held.push_back(HeldReceipt {
                record: r.record,
                conn,
                message_id,
                lsn: r.lsn,
                unix_ms: r.unix_ms,
            });
        } else {
            self.reply(
                conn,
                &Frame::StoredReceipt {
                    message_id,
                    seq: r.lsn,
                    unix_ms: r.unix_ms,
                },
            );
        }
    }

    fn take_lsn(&mut self) -> u64 {
        let l = self.next_lsn;
        self.next_lsn += 1;
        l
    }
}

mod apply;
mod requests;
#[cfg(test)]
mod tests;
