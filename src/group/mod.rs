//! Pure group cryptography: sender-key chains, group messages,
//! distributions, the parallel pairwise setup, and the client's reaction to
//! membership commits. No sockets, no files; time and randomness come in as
//! arguments.
//!
//! ```text
//!   membership (crate::membership)      verified GroupState per epoch
//!        │ commit applied
//!        ▼
//!   session::GroupSession ── effects: who gets my key, rotate?, forget whom
//!        │                     │
//!        │ seal/open           │ distributions
//!        ▼                     ▼
//!   sender_key::{SenderKey, ReceiverStore}   distribution::Distribution
//!        │ chain steps                        │ pairwise envelope
//!        ▼                                    ▼
//!   ratchet::ChainKey                    setup::pairwise_channels (rayon)
//!        │                                    │
//!        └──────────── crypto::{envelope, kdf, dh, identity} ─┘
//! ```
//!
//! `PROTOCOL.md` Part 2 has every byte; `ARCHITECTURE.md` the data flow.

pub mod distribution;
pub mod ratchet;
pub mod sender_key;
pub mod session;
pub mod setup;

use thiserror::Error;

use crate::crypto::CryptoError;
use crate::membership::MembershipError;

pub use distribution::{Distribution, KeyRequest, Welcome};
pub use ratchet::ChainKey;
pub use sender_key::{
    DistributionOutcome, GroupMessageHeader, OpenedMessage, ReceiverStore, SenderKey,
};
pub use session::{CommitEffects, GroupSession};
pub use setup::{Parallelism, PeerChannel, pairwise_channels};

/// Everything that can go wrong in group cryptography.
///
/// Peer misbehaviour (forgeries, rollbacks, malformed input) and local
/// misuse are separate variants; none carries key bytes. On the wire all
/// decryption failures should look alike.
#[derive(Debug, Error)]
pub enum GroupError {
    /// Structurally invalid input (what was wrong).
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A message or distribution for another group.
    #[error("wrong group")]
    WrongGroup,
    /// No chain for this sender and key id: keep the message pending and ask
    /// the sender for its distribution.
    #[error("no sender key from {sender:?} with key id {key_id}")]
    NoSenderKey {
        /// The (signed, but not yet verified) sender name.
        sender: String,
        /// The key id asked for.
        key_id: u32,
    },
    /// The group message's Ed25519 signature does not verify.
    #[error("bad group message signature")]
    BadSignature,
    /// A replay, or a key already used, evicted or expired.
    #[error("duplicate or expired message (key id {key_id}, iteration {iteration})")]
    DuplicateOrExpired {
        /// Key id.
        key_id: u32,
        /// Iteration asked for.
        iteration: u32,
    },
    /// A jump beyond the forward limit.
    #[error("iteration {iteration} too far ahead of {current} (key id {key_id})")]
    TooFarAhead {
        /// Key id.
        key_id: u32,
        /// Iteration asked for.
        iteration: u32,
        /// The chain's next iteration.
        current: u32,
    },
    /// A distribution with a lower key id or epoch, or an earlier iteration
    /// of the held key id.
    #[error("distribution rollback (hold key id {held_key_id}, got {got_key_id})")]
    Rollback {
        /// Newest key id held.
        held_key_id: u32,
        /// Key id offered.
        got_key_id: u32,
    },
    /// A distribution for a held key id that disagrees with the held chain.
    #[error("conflicting distribution for a held key id")]
    ConflictingDistribution,
    /// A distribution's signing public key is not a valid Ed25519 point.
    #[error("invalid sender signing key")]
    BadSigningKey,
    /// A distribution envelope names another sender or recipient.
    #[error("distribution addressed between other parties")]
    WrongParties,
    /// The sender is not in the verified roster.
    #[error("{0:?} is not a member")]
    NotMember(String),
    /// A peer's identity does not match its roster key or fails its
    /// certificate.
    #[error("identity of {0:?} does not verify")]
    BadIdentity(String),
    /// The chain reached iteration 2^32 - 1: rotate the key.
    #[error("sender chain exhausted")]
    ChainExhausted,
    /// Plaintext longer than the group message limit.
    #[error("plaintext of {0} bytes too long")]
    PlaintextTooLong(usize),
    /// The group is frozen after a commit failed verification, or I was
    /// removed, or it was dissolved.
    #[error("group is not usable: {0}")]
    Unusable(&'static str),
    /// A primitive failed (HMAC, EAX, DH validation).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A membership commit failed verification.
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

/// Fuzz entry point: every decoder of group bytes (network and state file)
/// on arbitrary input, plus opening it as a group message against a store
/// holding one chain. None may panic; the store must be unchanged unless
/// the input opened.
pub fn fuzz_group_decoders(data: &[u8]) -> bool {
    let _ = GroupMessageHeader::peek(data);
    let _ = GroupMessageHeader::decode(data);
    let _ = Distribution::decode(data);
    let _ = distribution::DirectHeader::decode(data);
    let _ = Welcome::decode(data);
    let _ = KeyRequest::decode(data);
    let _ = SenderKey::from_state_bytes(data);
    let _ = ReceiverStore::from_state_bytes(data);
    let _ = GroupSession::from_state_bytes(data);
    let _ = crate::membership::GroupState::from_trusted_state_bytes(data);
    let gid = data
        .get(4..20)
        .and_then(|s| <[u8; 16]>::try_from(s).ok())
        .unwrap_or_default();
    let mut store = ReceiverStore::new(gid);
    let key = SenderKey::from_parts(gid, 1, [1; 32], 0, &[2; 32]);
    let d = Distribution::new(gid, 0, 1, 0, [1; 32], key.signing_public());
    if store.handle_distribution("alice", &d).is_err() {
        return false;
    }
    let before = store.to_state_bytes();
    match store.open(data, 0) {
        Ok(_) => true,
        Err(_) => store.to_state_bytes() == before,
    }
}
