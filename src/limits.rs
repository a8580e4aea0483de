//! Every named limit in Hermes, in one place.
//!
//! Each limit is a `pub const` with a doc comment saying what it bounds and
//! why the value was chosen; each one has a test that exercises it (grep for
//! its name under `tests/` or in the owning module's unit tests). Areas keep
//! their own section below so that parallel work does not collide.

// ---------------------------------------------------------------------------
// Cryptography (src/crypto)
// ---------------------------------------------------------------------------

/// Bits of a Diffie-Hellman private exponent in `ffdhe2048`. RFC 7919 §5.2
/// asks for at least 225 bits; 256 gives the 128-bit level against Pollard's
/// lambda with 8x fewer squarings than a full-size exponent. The bound is
/// public: it is the only exponent property the modexp's timing shows.
pub const DH_EXPONENT_BITS_FFDHE2048: u32 = 256;

/// Bits of a Diffie-Hellman private exponent in `ffdhe3072` (RFC 7919 §5.2:
/// at least 275). Derived from the same 32-byte seed by HKDF, see
/// `PROTOCOL.md` Part 1.
pub const DH_EXPONENT_BITS_FFDHE3072: u32 = 320;

/// Minimum PBKDF2-HMAC-SHA256 iterations for a passphrase (OWASP 2023
/// guidance for PBKDF2-HMAC-SHA256). Stored parameters below this are
/// refused on decode, so a tampered state file cannot weaken the KDF.
pub const PBKDF2_MIN_ITERATIONS: u32 = 600_000;

/// Iterations used for new passphrase parameters. Equal to the minimum
/// today; the count is stored with the ciphertext so it can rise later.
pub const PBKDF2_DEFAULT_ITERATIONS: u32 = 600_000;

/// Maximum PBKDF2 iterations accepted from stored parameters: a corrupted
/// or hostile file must not make the client spin for hours (10^8 is a few
/// minutes on a slow machine).
pub const PBKDF2_MAX_ITERATIONS: u32 = 100_000_000;

/// Length of a passphrase salt in bytes (random per state file).
pub const PBKDF2_SALT_LEN: usize = 16;

/// Longest authenticated header an envelope can carry (its length field is
/// a big-endian u16).
pub const ENVELOPE_MAX_HEADER_LEN: usize = 65_535;

/// Iterations of SHA-512 in a safety number half (Signal's value; a
/// brute-force search for a colliding key costs this factor more).
pub const SAFETY_NUMBER_ITERATIONS: u32 = 5_200;

// ---------------------------------------------------------------------------
// Group cryptography: sender keys, membership, setup (src/group)
// ---------------------------------------------------------------------------

/// Most members a group roster may hold (membership, `src/membership.rs`).
/// A genesis carries the whole initial roster in one commit; at the longest
/// names (200 bytes) 4,000 entries of 234 bytes are 936,000 bytes, so the
/// largest genesis still fits the default 1 MiB frame.
pub const MAX_GROUP_MEMBERS: usize = 4_000;

/// Longest member name, in UTF-8 bytes, a commit or roster may carry (the
/// wire limit on names; names are NFC-normalised before they get here).
pub const MAX_ROSTER_NAME_BYTES: usize = 200;

/// Longest group display name, in UTF-8 bytes.
pub const MAX_GROUP_DISPLAY_NAME_BYTES: usize = 200;

/// Largest encoded public identity an add commit may carry (an ffdhe3072
/// identity is 384 + 32 + 64 bytes plus framing; this leaves room).
pub const MAX_PUBLIC_IDENTITY_BYTES: usize = 1_024;

/// Most skipped message keys a receiver keeps per chain (one sender's key
/// id); beyond it the oldest are evicted. libsignal keeps 2,000.
pub const MAX_SKIPPED_KEYS_PER_CHAIN: usize = 2_000;

/// Most skipped message keys a receiver keeps across all chains of one
/// group; beyond it the oldest (by storage time) are evicted. About 1 MiB of
/// state at ~50 bytes a key.
pub const MAX_SKIPPED_KEYS_TOTAL: usize = 20_000;

/// Age after which a skipped message key is erased, in milliseconds (30
/// days: the relay's default time to live, after which the message it opens
/// cannot arrive any more).
pub const MAX_SKIPPED_KEY_AGE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Furthest a message may be ahead of the chain (stored skips), beyond which
/// it is refused without any state change. libsignal uses 25,000.
pub const MAX_FORWARD_JUMP: u32 = 25_000;

/// Most keys that gap notices may let a receiver skip without storing them
/// (each costs one HMAC; a million is well under a second).
pub const MAX_GAP_ALLOWANCE: u32 = 1_000_000;

/// Sender keys (key ids) kept per sender: the newest and the one before, so
/// messages sent just before a rotation can still be opened.
pub const MAX_SENDER_KEYS_PER_SENDER: usize = 2;

/// Largest group message plaintext, in bytes (a sealed message stays inside
/// the default 1 MiB frame with room for headers).
pub const MAX_GROUP_PLAINTEXT_BYTES: usize = 1_000_000;

/// Peers below which the pairwise setup runs serially (rayon's overhead
/// outweighs a handful of ~0.6 ms modexps).
pub const PARALLEL_SETUP_THRESHOLD: usize = 4;

// ---------------------------------------------------------------------------
// Wire protocol (src/wire)
// ---------------------------------------------------------------------------

/// Default maximum frame length in bytes (the `length` prefix: version, kind
/// and body). 1 MiB holds any realistic message while bounding what one
/// connection can make the relay buffer; the relay's `max_frame` setting
/// overrides it.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Maximum bytes of a user name on the wire (after NFC normalisation).
pub const MAX_NAME_BYTES: usize = 200;

/// Maximum characters (Unicode scalar values) of a user name after NFC
/// normalisation.
pub const MAX_NAME_CHARS: usize = 50;

/// Maximum entries of any list in a frame (names asked for, identities,
/// groups, members, commits). Bounds the decoder's allocation.
pub const MAX_LIST_ITEMS: usize = 8192;

// ---------------------------------------------------------------------------
// Relay core and mailbox (src/relay/core, src/mailbox)
// ---------------------------------------------------------------------------

/// Default time to live of queued entries: 30 days (DESIGN.md, "Retention").
/// Commits and the newest distribution per (sender, recipient, group) are
/// kept past it.
pub const RELAY_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Default per-member queue cap: entries that count against it (everything
/// but commits and distributions). Over it, the oldest go and the member
/// gets a gap notice.
pub const RELAY_QUEUE_CAP: usize = 10_000;

/// Most gap entries (dropped-message notices) in one member's queue before
/// a new drop is merged into the newest notice of its (group, sender) even
/// if a session was already sent that notice. Gap entries do not count
/// against the queue cap; below this a drop merges only into a notice no
/// session has been sent, so a member that reads but never acks gained one
/// gap entry (and one drop record) per message past the cap, without bound.
/// With it a queue holds at most this many gap entries plus one per
/// (group, sender) pair with drops. Past it a live session may see a
/// notice's count short by the drops merged after it was sent (the
/// receiver then keeps skipped keys instead); a session that resumes from
/// its ack sees the whole count.
pub const RELAY_MAX_GAP_ENTRIES: usize = 1_024;

/// Default sender quota: messages a user may have stored and not yet
/// delivered to (and acked by) every recipient. A send over it is refused
/// with `QuotaExceeded`, the only way besides a full store that a send fails.
pub const RELAY_SENDER_QUOTA: usize = 100_000;

/// How long the relay remembers a `(sender, message id)` so that a re-sent
/// message gets the same receipt and is not stored twice: 24 hours.
pub const RELAY_DEDUPE_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// Default relay-wide registrations per minute (also the burst). A load
/// test lifts it with a relay flag.
pub const RELAY_REGISTRATIONS_PER_MINUTE: u32 = 60;

/// Default key requests per user per minute (also the burst). A client
/// asks for a sender key only when a message arrives before its key, so a
/// legitimate burst is one request per undecryptable sender; the limit stops
/// a member from flooding another's queue with requests.
pub const RELAY_KEY_REQUESTS_PER_MINUTE: u32 = 120;

/// Default idle timeout: a connection that sent no frame (not even a ping)
/// for this long is closed.
pub const RELAY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// How often the core expires entries, prunes the dedupe window and
/// compacts the store.
pub const RELAY_MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Records copied forward per maintenance pass (bounds the work per pass).
pub const RELAY_COPY_FORWARD_BATCH: usize = 1024;

/// Most reply bytes (pongs, receipts, lists, errors) the core keeps queued
/// for a connection that is not reading them. A client that keeps sending
/// requests while its replies pile up past this gets a `RateLimited` error
/// and is closed, so a never-reading connection costs at most this plus
/// one reply (deliveries are pulled from the mailbox, never queued here).
/// Added by issue 8 (abuse): before it, a pinging client that never read
/// grew the relay's memory without bound.
pub const RELAY_MAX_REPLY_BACKLOG: usize = 1 << 20;

// --- Mailbox (src/mailbox) -------------------------------------------------

/// Largest record payload any store accepts: a maximal 1 MiB frame plus the
/// relay core's own metadata fits with room to spare. A store with small
/// segments accepts less (a record never spans segments).
pub const MAILBOX_MAX_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;

/// Default size of one preallocated segment file: large enough that
/// rollover (a `posix_fallocate` and an `mmap` on the loop thread) is rare,
/// small enough that compaction frees space in useful steps.
pub const MAILBOX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Smallest configurable segment (tests use tiny segments to force
/// rollover): one page.
pub const MAILBOX_MIN_SEGMENT_BYTES: u64 = 4096;

/// Largest configurable segment: record offsets are kept as `u32` in the
/// in-memory index, and each segment is one contiguous map.
pub const MAILBOX_MAX_SEGMENT_BYTES: u64 = 1024 * 1024 * 1024;

/// Default cap on segment files in use (64 MiB each: 1 TiB). Appends that
/// would need one more segment fail with a "store full" error until
/// compaction frees one.
pub const MAILBOX_MAX_SEGMENTS: usize = 16 * 1024;

/// Bytes at the end of every segment that ordinary appends leave free, for
/// records that free space (acks: [`crate::mailbox::Store::append_reserved`]).
/// When the store is full (segment limit or no disk space for the next
/// segment) sends are refused but acks still land here, so recipients can
/// release what they read and compaction can make room again. Capped at
/// 1/64 of the segment size (`MAILBOX_RESERVE_MAX_FRACTION`); an ack record
/// is 48 bytes, so the default holds about 5,400 acks per segment.
pub const MAILBOX_RESERVE_BYTES: u64 = 256 * 1024;

/// The reserve is at most `segment_bytes / MAILBOX_RESERVE_MAX_FRACTION`
/// (tiny test segments keep almost all their room for ordinary records).
pub const MAILBOX_RESERVE_MAX_FRACTION: u64 = 64;

/// How often the sync thread msyncs under `--fsync batch`: the window of
/// receipted records that power loss may cost.
pub const MAILBOX_SYNC_BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

/// Records per virtual segment of the in-memory stores (`MemStore`,
/// `FaultStore`), so that compaction and copy-forward behave as with files.
pub const MAILBOX_MEM_SEGMENT_RECORDS: usize = 1024;

// ---------------------------------------------------------------------------
// Relay event loop (src/relay/event_loop)
// ---------------------------------------------------------------------------

/// Listen backlog the relay asks for (the kernel caps it at
/// `net.core.somaxconn`, 4096 on current Linux). The original's backlog of 5
/// lost 17-41% of connection bursts; mio's own default is 128.
pub const RELAY_LISTEN_BACKLOG: i32 = 4096;

/// File descriptors kept back from `--max-connections`' default (the
/// open-file soft limit): the listener, the metrics listener and its
/// clients, the poll and waker, the signal pipe, the data directory lock,
/// log files and what the store opens briefly while rolling a segment.
pub const RELAY_FD_RESERVE: usize = 64;

/// Readiness events taken from one `Poll::poll` call.
pub const RELAY_EVENTS_PER_POLL: usize = 1024;

/// Connections the relay accepts per second, relay-wide, after a burst of
/// [`RELAY_ACCEPT_BURST`] (`--max-accepts-per-sec`; 0 lifts it). Past it
/// new connections wait in the listen backlog (then on the client's SYN
/// retry) while logged-in clients are served as usual. Issue 8's abuse
/// swarm reconnects 1,000 random-byte sockets as fast as the relay closes
/// them: about 12,000 connections a second, which alone took the relay to
/// 55% of its core and the normal clients' p99 to 2.2-2.7x. With 2,000 a
/// second the same abuse measured 0.99x (0.18 -> 0.17 ms; 5,000 a second
/// was not enough: 3.4x). A relay for thousands of users sees tens of new
/// connections a second; a restart's reconnect storm of 20,000 clients is
/// greeted within about 8 seconds (clients back off and retry).
pub const RELAY_MAX_ACCEPTS_PER_SEC: u32 = 2_000;

/// Connections accepted at once before [`RELAY_MAX_ACCEPTS_PER_SEC`]
/// applies (the burst of 5,000 simultaneous connects is greeted at
/// once).
pub const RELAY_ACCEPT_BURST: u32 = 5_000;

/// Connections accepted per loop pass before the loop serves the ones it
/// has (the rest are accepted on the next pass): bounds the work per pass,
/// so a connection flood delays logged-in clients by at most this many
/// accepts (each with its hello) per pass. Was 256; lowered by issue 8's
/// abuse measurement, where bursts of hundreds of garbage connections made
/// single passes last milliseconds (16 and 4 were measured; with 4, and
/// the two budgets below, the abused p99 halved again). Still about
/// 15,000 accepts a second on a loop that does nothing else.
pub const RELAY_ACCEPTS_PER_PASS: usize = 4;

/// A message to a group of more than this many members makes its
/// recipients ready as *bulk*: written [`RELAY_BULK_FLUSHES_PER_PASS`] a
/// pass, oldest first, while ordinary readiness (replies, smaller groups,
/// direct messages) is written in the pass it appears. One message to a
/// 1,000-member group is 1,000 writes, about 4 ms here.
pub const RELAY_BULK_FANOUT: usize = 64;

/// Bulk-ready connections (see [`RELAY_BULK_FANOUT`]) flushed per loop
/// pass: 32 writes are about 0.15 ms, so a large fan-out delays a small
/// group's delivery by about that much a pass (issue 8: 10 messages a
/// second to 1,000 members that never read were the largest share of the
/// passes over 1 ms; 128 measured 106 passes a second over 0.25 ms under
/// the abuse swarm, against 30 with 32).
pub const RELAY_BULK_FLUSHES_PER_PASS: usize = 32;

/// Ordinary flushes (output pulled from the core and written) per loop
/// pass; past it the rest wait for the next pass, which serves them
/// first. A bound on one pass's work, not a rate: at 90k deliveries/s in
/// groups of 10 (issue 7, shape 4) passes carry up to a few hundred. The
/// earlier single budget of 32 (shared with bulk, three quarters of it
/// kept for new readiness) left up to 2,300 connections deferred there
/// and doubled the p99 (22.6 against 10.8-13.3 ms in the same session).
pub const RELAY_FLUSHES_PER_PASS: usize = 1024;

/// Connections not logged in (handshakes, garbage, closing ones) read per
/// loop pass; logged-in connections are all read first, the rest of these
/// wait for the next pass. With [`RELAY_ACCEPTS_PER_PASS`] this bounds what
/// a flood of unauthenticated connections adds to a pass (a few hundred
/// microseconds here) however many there are; a flood beyond what that
/// serves fills the listen backlog and slows its own connects.
pub const RELAY_UNAUTHENTICATED_READS_PER_PASS: usize = 4;

/// Size of the loop's one shared read buffer. A read lands there first; only
/// the tail of a frame split across reads is copied into the connection's
/// own buffer, so idle connections own no read buffer at all.
pub const RELAY_READ_CHUNK: usize = 64 * 1024;

/// Bytes read from one connection per loop pass before moving on to the
/// others (the rest is read on the next pass): one fast sender cannot
/// starve the loop.
pub const RELAY_READ_BUDGET_PER_PASS: usize = 256 * 1024;

/// Per-connection output bound: the loop stops pulling deliveries from the
/// core once this many bytes wait for the socket. Past it a recipient's
/// entries stay in its mailbox and flow as it drains, so a client that never
/// reads costs at most this (plus one maximal frame) of relay memory; the
/// worst case over all connections is `--max-connections` times this
/// (1.25 GiB at 20,000). 64 KiB still carries hundreds of small deliveries
/// per `write(2)`; the kernel's socket buffer holds the rest of the burst.
pub const RELAY_OUTPUT_BOUND: usize = 64 * 1024;

/// Relay-wide cap on output bytes the loop holds for sockets that did not
/// take them (the sum of every connection's unsent output, at most
/// [`RELAY_OUTPUT_BOUND`] plus one frame each). At the cap no connection
/// pulls more from the core, and the loop closes the connections holding
/// the most unsent output until the total is back under three quarters of
/// the cap (their entries stay in the mailbox for the next login; a
/// dropped reply is answered again when the client retries, deduplicated).
/// So the loop's output memory is at most this plus one pull (a bound or a
/// frame), whatever `--max-connections` is: without it the worst case was
/// `--max-connections` times the per-connection bound (1.25 GiB at 20,000
/// never-reading connections). 256 MiB is 4,096 connections stuck at
/// their full bound; readers that keep up hold nothing.
pub const RELAY_MAX_QUEUED_OUTPUT: usize = 256 * 1024 * 1024;

/// A frame must arrive whole within this time of its first byte, or the
/// connection gets an error frame (`Malformed`) and is closed. Stops a
/// logged-in slowloris that dribbles a frame that never ends, which
/// before this limit held its connection (and the partial frame) until
/// the idle timeout, 90 s. 30 s lets a maximal 1 MiB frame through at
/// 35 KB/s; a connection held back by its frames-per-second bucket (whole
/// frames waiting) is not closed.
pub const RELAY_FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Default frames per second one connection may send (`--max-frames-per-sec`),
/// also its burst. Past it the loop stops reading that socket until tokens
/// refill (TCP back-pressure; nothing is dropped). Load tests lift it.
pub const RELAY_DEFAULT_FRAMES_PER_SEC: u32 = 2_000;

/// How often a throttled connection is looked at again.
pub const RELAY_THROTTLE_RECHECK: std::time::Duration = std::time::Duration::from_millis(10);

/// A connection that has not registered or logged in this long after
/// connecting gets an error frame and is closed (pings do not extend it).
pub const RELAY_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a connection being closed may take to read its last frames
/// (error frame, replies) before the socket is dropped anyway.
pub const RELAY_CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// On SIGINT/SIGTERM or `shutdown()`, how long the loop keeps flushing
/// pending output before it exits.
pub const RELAY_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Interval of the one-line summary in the log.
pub const RELAY_SUMMARY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Concurrent clients of the metrics endpoint; more are refused (closed).
pub const RELAY_METRICS_MAX_CLIENTS: usize = 16;

/// Largest HTTP request the metrics endpoint reads before answering 400.
pub const RELAY_METRICS_MAX_REQUEST: usize = 4096;

/// A metrics client that has not sent its request (or read the answer) in
/// this long is closed.
pub const RELAY_METRICS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Client (src/client)
// ---------------------------------------------------------------------------

/// Longest passphrase the no-echo prompt reads (bytes). A longer line is
/// refused (and the rest of it discarded) rather than grown into a buffer
/// that would leave unzeroized copies behind.
pub const CLIENT_PASSPHRASE_MAX_BYTES: usize = 1024;

/// Largest state file the client reads (bytes). The state holds keys, a
/// bounded inbox and a bounded pending store; a bigger file is corrupt or
/// hostile and is refused rather than read into memory.
pub const CLIENT_STATE_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Most decrypted messages and notices kept in the local inbox before
/// `recv` prints them. Beyond it the oldest go, and the count of dropped
/// entries is reported by the next `recv` (never a silent loss).
pub const CLIENT_INBOX_MAX_ENTRIES: usize = 10_000;

/// Most group messages kept while waiting for their sender key. Beyond it
/// the oldest is reported as undecryptable.
pub const CLIENT_PENDING_MAX_MESSAGES: usize = 1_000;

/// How long a message may wait for its sender key before the client shows
/// "undecryptable message from X" (Unix ms). A key request round trip to an
/// online member takes well under a second; an offline one may take days,
/// so the message is reported, not silently held forever.
pub const CLIENT_PENDING_TIMEOUT_MS: u64 = 5 * 60 * 1000;

/// Message ids remembered for duplicate suppression (at-least-once
/// delivery re-sends after a reconnect; several sessions of one user).
pub const CLIENT_SEEN_IDS_MAX: usize = 10_000;

/// How long the client waits for one answer from the relay.
pub const CLIENT_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// First reconnect delay; doubles per failed attempt.
pub const CLIENT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(100);

/// Longest reconnect delay.
pub const CLIENT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Connection attempts of a one-shot command before it gives up (chat
/// retries forever).
pub const CLIENT_CONNECT_ATTEMPTS: u32 = 3;

/// Peers from which on a key setup shows a progress bar (on a terminal).
pub const CLIENT_PROGRESS_MIN_PEERS: usize = 20;

/// How long `recv` keeps listening after the last frame before it decides
/// the backlog is drained (loopback and LAN relays flush far faster).
pub const CLIENT_RECV_QUIET: std::time::Duration = std::time::Duration::from_millis(300);

/// How often an interactive client pings a quiet connection (well inside
/// the relay's idle timeout, `RELAY_IDLE_TIMEOUT`).
pub const CLIENT_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Most frames `Client::poll_ready` reads in one call before it lets the
/// chat loop look at the keyboard again (it then polls again at once).
pub const CLIENT_DRAIN_FRAMES: usize = 1024;
