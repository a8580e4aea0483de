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

// ---------------------------------------------------------------------------
// Relay event loop (src/relay/event_loop)
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Client (src/client)
// ---------------------------------------------------------------------------
