//! Pure cryptographic primitives: finite-field Diffie-Hellman over the RFC 7919
//! groups, HKDF/PBKDF2 key derivation, the EAX+HMAC envelope, Ed25519
//! identities and safety numbers. No sockets, no files; every RNG is injected.
//!
//! Imports nothing of ours but [`crate::limits`]. `PROTOCOL.md` Part 1 has
//! every byte, with worked vectors checked by `tests/protocol_vectors.rs`.
//!
//! ```text
//!  IdentityKeyPair ── signing: SigningKeyPair (Ed25519) ── certifies ──┐
//!        │                                                             │
//!        └── dh: DhPrivateKey ── agree(peer DhPublicKey) ──► SharedSecret (Z)
//!                                                                      │
//!                         kdf::channel_keys(Z, sender, recipient) ◄────┘
//!                                       │
//!                                       ▼
//!     EnvelopeKeys { enc: AES-128, mac: HMAC-SHA256 } ──► envelope::seal / open
//!     kdf::passphrase_keys(passphrase, PBKDF2 params) ──┘
//! ```

pub mod dh;
pub mod envelope;
pub mod error;
pub mod fingerprint;
pub mod identity;
pub mod kdf;
pub mod secret;

pub use error::CryptoError;
