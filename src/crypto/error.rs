//! The one error type of the cryptographic primitives.

use thiserror::Error;

/// Everything that can go wrong in `crate::crypto`.
///
/// Variants carry ids, lengths and counts, never key bytes. Peer-supplied
/// input that fails a check (a public key out of range, a bad MAC, a bad
/// signature) and local misuse (a bad length passed by our own code) are
/// distinct variants so callers can map them to wire error codes explicitly;
/// on the wire every decryption failure should look the same.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A DH group id that this build does not know (a client accepts only
    /// the named RFC 7919 groups).
    #[error("unknown Diffie-Hellman group id {0}")]
    UnknownGroup(u8),
    /// A peer's DH public value is outside `[2, p-2]`.
    #[error("Diffie-Hellman public value outside [2, p-2]")]
    PublicKeyOutOfRange,
    /// The DH shared secret came out as 1 (a degenerate peer value).
    #[error("Diffie-Hellman shared secret is 1")]
    SharedSecretIsOne,
    /// A private DH seed that gives an exponent below 2.
    #[error("Diffie-Hellman private exponent is below 2")]
    PrivateKeyOutOfRange,
    /// An input has the wrong length.
    #[error("{what}: expected {expected} bytes, got {got}")]
    BadLength {
        /// What was being decoded.
        what: &'static str,
        /// The length required.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// An input is shorter than its own length fields (or than the
    /// minimum for its kind) say it must be.
    #[error("{what}: truncated")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
    },
    /// An input longer than its encoding can carry.
    #[error("{what}: {got} bytes exceeds the maximum of {max}")]
    TooLong {
        /// What was being encoded.
        what: &'static str,
        /// The maximum allowed.
        max: usize,
        /// The length given.
        got: usize,
    },
    /// A version byte we do not know.
    #[error("{what}: unknown version {version}")]
    UnknownVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version byte found.
        version: u8,
    },
    /// The envelope's HMAC-SHA256 did not verify.
    #[error("envelope MAC mismatch")]
    MacMismatch,
    /// The envelope's EAX tag did not verify (after the HMAC did: only a
    /// sender holding both keys can produce this).
    #[error("envelope AEAD tag mismatch")]
    AeadFailure,
    /// An envelope whose MAC verified but whose inner layout is
    /// inconsistent (only a sender holding the keys can produce this).
    #[error("envelope layout is inconsistent")]
    MalformedEnvelope,
    /// An Ed25519 signature failed strict verification.
    #[error("bad Ed25519 signature")]
    BadSignature,
    /// An Ed25519 public key is not a valid (or is a weak) curve point.
    #[error("bad Ed25519 public key")]
    BadSigningKey,
    /// The Ed25519 certificate over an identity's DH public key failed.
    #[error("bad identity certificate")]
    BadCertificate,
    /// Passphrase parameters below the minimum iteration count.
    #[error("passphrase KDF iterations {iterations} below the minimum")]
    WeakPassphraseParams {
        /// The iteration count found.
        iterations: u32,
    },
    /// Passphrase parameters above the maximum iteration count (a file
    /// could otherwise make us spin for hours).
    #[error("passphrase KDF iterations {iterations} above the maximum")]
    ExcessivePassphraseParams {
        /// The iteration count found.
        iterations: u32,
    },
    /// An unknown passphrase KDF algorithm id.
    #[error("unknown passphrase KDF algorithm {0}")]
    UnknownKdf(u8),
    /// A KDF was asked for more output than it can give.
    #[error("KDF output of {0} bytes is too long")]
    KdfOutputTooLong(usize),
    /// A modulus that Montgomery exponentiation cannot use (even, or < 3).
    #[error("modulus must be odd and at least 3")]
    BadModulus,
    /// A base or exponent that does not fit the stated bounds.
    #[error("{what} out of range")]
    OutOfRange {
        /// Which operand.
        what: &'static str,
    },
}
