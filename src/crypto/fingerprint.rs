//! Safety numbers: 60 decimal digits two users compare out of band, the
//! same on both sides (Signal's "numeric fingerprint", version 0).
//!
//! For each user, with `name` its UTF-8 (NFC) bytes and `key` its 32-byte
//! Ed25519 identity key:
//!
//! 1. `h = SHA-512(0x00 0x00 || key || name)`;
//! 2. repeat [`SAFETY_NUMBER_ITERATIONS`] times: `h = SHA-512(h || key)`;
//! 3. take `h[0..30]` as six 5-byte big-endian integers, each `mod 100000`,
//!    written as 5 zero-padded digits: 30 digits.
//!
//! The safety number is the two 30-digit strings in ascending (string)
//! order, concatenated, then shown in 12 groups of 5 digits separated by
//! single spaces.

use sha2::{Digest, Sha512};

use crate::limits::SAFETY_NUMBER_ITERATIONS;

/// The version prefix of the first hash (two bytes, big-endian 0).
pub const FINGERPRINT_VERSION: [u8; 2] = [0, 0];

/// The 30-digit half for one user.
#[must_use]
pub fn fingerprint_half(name: &str, key: &[u8; 32]) -> String {
    let mut h = Sha512::new();
    h.update(FINGERPRINT_VERSION);
    h.update(key);
    h.update(name.as_bytes());
    let mut digest = h.finalize();
    for _ in 0..SAFETY_NUMBER_ITERATIONS {
        let mut h = Sha512::new();
        h.update(digest);
        h.update(key);
        digest = h.finalize();
    }
    let mut out = String::with_capacity(30);
    for chunk in digest.chunks_exact(5).take(6) {
        let v = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        out.push_str(&format!("{:05}", v % 100_000));
    }
    out
}

/// The 60-digit safety number of users `a` and `b`, in 12 groups of 5;
/// symmetric in its two users.
#[must_use]
pub fn safety_number(a_name: &str, a_key: &[u8; 32], b_name: &str, b_key: &[u8; 32]) -> String {
    let a = fingerprint_half(a_name, a_key);
    let b = fingerprint_half(b_name, b_key);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let digits: Vec<char> = lo.chars().chain(hi.chars()).collect();
    digits
        .chunks(5)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_well_formed() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let ab = safety_number("alice", &a, "bob", &b);
        assert_eq!(ab, safety_number("bob", &b, "alice", &a));
        assert_eq!(ab.len(), 60 + 11);
        let groups: Vec<&str> = ab.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(
            groups
                .iter()
                .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit()))
        );
        assert_ne!(ab, safety_number("alice", &a, "bob", &[3u8; 32]));
        assert_ne!(ab, safety_number("alicf", &a, "bob", &b));
    }
}
