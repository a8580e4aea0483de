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
