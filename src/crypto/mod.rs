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

/// Fuzz entry point: feeds `data` to every decoder of untrusted bytes in
/// this module (public values, public identities, passphrase parameters,
/// envelopes, signatures). None may panic; results are ignored. Kept
/// compiling and exercised by the tests (`tests/crypto_props.rs`).
pub fn fuzz_decoders(data: &[u8]) {
    use dh::{DhGroup, DhPublicKey};
    for group in DhGroup::ALL {
        let _ = DhPublicKey::from_bytes(group, data);
    }
    let _ = identity::PublicIdentity::decode(data).map(|p| p.verify());
    let _ = kdf::PassphraseParams::decode(data);
    let keys = kdf::EnvelopeKeys::from_okm(&[0u8; 48]);
    let _ = envelope::open(&keys, data);
    if let Some((key, rest)) = data.split_first_chunk::<32>()
        && let Some((sig, msg)) = rest.split_first_chunk::<64>()
    {
        let _ = identity::verify_signature(key, msg, sig);
    }
    let _ = dh::modexp_ct(data, data, 64, data);
}
