//! Pure cryptographic primitives: finite-field Diffie-Hellman over the RFC 7919
//! groups, HKDF/PBKDF2 key derivation, the EAX+HMAC envelope, Ed25519
//! identities and safety numbers. No sockets, no files; every RNG is injected.
//!
//! Imports nothing of ours but [`crate::limits`].
