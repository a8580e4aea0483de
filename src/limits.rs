//! Every named limit in Hermes, in one place.
//!
//! Each limit is a `pub const` with a doc comment saying what it bounds and
//! why the value was chosen; each one has a test that exercises it (grep for
//! its name under `tests/` or in the owning module's unit tests). Areas keep
//! their own section below so that parallel work does not collide.

// ---------------------------------------------------------------------------
// Cryptography (src/crypto)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Wire protocol (src/wire)
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Relay core and mailbox (src/relay/core, src/mailbox)
// ---------------------------------------------------------------------------

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

/// How often the sync thread msyncs under `--fsync batch`: the window of
/// receipted records that power loss may cost.
pub const MAILBOX_SYNC_BATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

/// Records per virtual segment of the in-memory stores (`MemStore`,
/// `FaultStore`), so that compaction and copy-forward behave as with files.
pub const MAILBOX_MEM_SEGMENT_RECORDS: usize = 1024;

// ---------------------------------------------------------------------------
// Relay event loop (src/relay/event_loop)
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Client (src/client)
// ---------------------------------------------------------------------------
