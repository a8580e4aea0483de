//! The envelope: AES-128-EAX, then HMAC-SHA256 over everything (encrypt
//! then MAC, as the original Hermes README promised).
//!
//! Layout (all lengths in bytes, integers big-endian):
//!
//! ```text
//! offset        field          length
//! 0             version = 0x01 1
//! 1             header_len     2  (u16)
//! 3             header         header_len   (authenticated, not encrypted)
//! 3+h           nonce          16           (random per envelope)
//! 19+h          ciphertext     len(plaintext)
//! 19+h+n        eax_tag        16
//! 35+h+n        mac            32  HMAC-SHA256(mac_key, bytes 0 .. 35+h+n)
//! ```
//!
//! Sealing (numbered as in `PROTOCOL.md` Part 1):
//! 1. `ciphertext, eax_tag = AES-128-EAX(enc_key, nonce, ad = header, plaintext)`;
//! 2. `mac = HMAC-SHA256(mac_key, version || header_len || header || nonce || ciphertext || eax_tag)`.
//!
//! Opening checks, in this order: version byte, minimum length (67), the
//! HMAC in constant time, the header length, and only then EAX (whose own
//! tag check is constant time too). Nothing is decrypted before both MACs
//! pass.

use aes::Aes128;
use eax::Eax;
use eax::aead::{AeadInOut, KeyInit};
use hmac::{Hmac, Mac};
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::error::CryptoError;
use super::kdf::EnvelopeKeys;
use crate::limits::ENVELOPE_MAX_HEADER_LEN;

/// The version byte of this layout.
pub const ENVELOPE_VERSION: u8 = 1;
/// Nonce bytes.
pub const NONCE_LEN: usize = 16;
/// EAX tag bytes.
pub const TAG_LEN: usize = 16;
/// HMAC-SHA256 bytes.
pub const MAC_LEN: usize = 32;
/// Bytes an envelope adds to header + plaintext: 1 + 2 + 16 + 16 + 32.
pub const OVERHEAD: usize = 1 + 2 + NONCE_LEN + TAG_LEN + MAC_LEN;

type Aes128Eax = Eax<Aes128>;

/// A successfully opened envelope: the authenticated header (borrowed from
/// the input) and the plaintext (zeroized on drop). `Debug` shows the header
/// and only the plaintext's length.
pub struct Opened<'a> {
    /// The authenticated, unencrypted header.
    pub header: &'a [u8],
    /// The decrypted plaintext.
    pub plaintext: Zeroizing<Vec<u8>>,
}

impl core::fmt::Debug for Opened<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Opened")
            .field("header", &self.header)
            .field("plaintext_len", &self.plaintext.len())
            .finish()
    }
}

/// HMAC-SHA256 keyed with `key` (32 bytes, zero-padded to the 64-byte
/// block as RFC 2104 does anyway, so construction cannot fail).
fn hmac(key: &[u8; 32]) -> Hmac<Sha256> {
    let mut block = hmac::digest::Key::<Hmac<Sha256>>::default();
    for (dst, src) in block.iter_mut().zip(key) {
        *dst = *src;
    }
    let mac = <Hmac<Sha256> as KeyInit>::new(&block);
    block.as_mut_slice().zeroize();
    mac
}

fn eax(key: &[u8; 16]) -> Aes128Eax {
    let mut k = eax::aead::Key::<Aes128Eax>::default();
    for (dst, src) in k.iter_mut().zip(key) {
        *dst = *src;
    }
    let cipher = Aes128Eax::new(&k);
    k.as_mut_slice().zeroize();
    cipher
}

/// Seals `plaintext` under `keys` with a fresh random nonce.
///
/// Returns an empty vector (which [`open`] refuses as truncated) only if
/// the header is longer than [`ENVELOPE_MAX_HEADER_LEN`] or the plaintext
/// over 2^36 bytes; use [`seal_into`] to get those as errors.
#[must_use]
pub fn seal(
    keys: &EnvelopeKeys,
    header: &[u8],
    plaintext: &[u8],
    rng: &mut impl CryptoRng,
) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    seal_with_nonce(keys, header, plaintext, &nonce)
}

/// Seals with a caller-chosen nonce (deterministic: for test vectors only;
/// a nonce must never repeat under one key).
///
/// Returns an empty vector under the same conditions as [`seal`].
#[must_use]
pub fn seal_with_nonce(
    keys: &EnvelopeKeys,
    header: &[u8],
    plaintext: &[u8],
    nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(OVERHEAD + header.len() + plaintext.len());
    match seal_into(&mut out, keys, header, plaintext, nonce) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

/// Appends the envelope of `plaintext` to `out` with a fresh random nonce
/// (the hot-path form of [`seal`]: no allocation when `out` has capacity).
///
/// # Errors
/// As [`seal_into`].
pub fn seal_append(
    out: &mut Vec<u8>,
    keys: &EnvelopeKeys,
    header: &[u8],
    plaintext: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<(), CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    seal_into(out, keys, header, plaintext, &nonce)
}

/// Appends the envelope of `plaintext` to `out` with a caller-chosen nonce (no allocation when `out`
/// has capacity for `OVERHEAD + header.len() + plaintext.len()` more bytes).
/// On error `out` is left as it was.
///
/// # Errors
/// [`CryptoError::TooLong`] for a header over [`ENVELOPE_MAX_HEADER_LEN`]
/// bytes or a plaintext over 2^36 bytes.
pub fn seal_into(
    out: &mut Vec<u8>,
    keys: &EnvelopeKeys,
    header: &[u8],
    plaintext: &[u8],
    nonce: &[u8; NONCE_LEN],
) -> Result<(), CryptoError> {
    let header_len = u16::try_from(header.len()).map_err(|_| CryptoError::TooLong {
        what: "envelope header",
        max: ENVELOPE_MAX_HEADER_LEN,
        got: header.len(),
    })?;
    let start = out.len();
    out.reserve(OVERHEAD + header.len() + plaintext.len());
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&header_len.to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(nonce);
    let ct_start = out.len();
    out.extend_from_slice(plaintext);

    // Step 1: EAX over the plaintext in place, header as associated data.
    let nonce_arr = eax::aead::Nonce::<Aes128Eax>::from(*nonce);
    let tag = match out.get_mut(ct_start..) {
        Some(ct) => eax(keys.enc.expose()).encrypt_inout_detached(&nonce_arr, header, ct.into()),
        None => Err(eax::aead::Error),
    };
    let tag = match tag {
        Ok(tag) => tag,
        Err(_) => {
            // Only for plaintexts over 2^36 bytes; erase what we wrote.
            if let Some(tail) = out.get_mut(start..) {
                tail.zeroize();
            }
            out.truncate(start);
            return Err(CryptoError::TooLong {
                what: "envelope plaintext",
                max: 1 << 36,
                got: plaintext.len(),
            });
        }
    };
    out.extend_from_slice(&tag);

    // Step 2: HMAC over everything so far.
    let mut mac = hmac(keys.mac.expose());
    mac.update(out.get(start..).unwrap_or_default());
    out.extend_from_slice(&mac.finalize().into_bytes());
    Ok(())
}

/// Verifies and decrypts an envelope.
///
/// # Errors
/// [`CryptoError::UnknownVersion`] for a first byte other than 1;
/// [`CryptoError::Truncated`] for fewer than [`OVERHEAD`] bytes;
/// [`CryptoError::MacMismatch`] if the HMAC fails (checked in constant
/// time, before anything else is read); [`CryptoError::MalformedEnvelope`]
/// if the header length overruns; [`CryptoError::AeadFailure`] if EAX fails.
/// On the wire all of these should look the same.
pub fn open<'a>(keys: &EnvelopeKeys, sealed: &'a [u8]) -> Result<Opened<'a>, CryptoError> {
    let version = *sealed
        .first()
        .ok_or(CryptoError::Truncated { what: "envelope" })?;
    if version != ENVELOPE_VERSION {
        return Err(CryptoError::UnknownVersion {
            what: "envelope",
            version,
        });
    }
    if sealed.len() < OVERHEAD {
        return Err(CryptoError::Truncated { what: "envelope" });
    }
    let (body, tag_mac) = sealed.split_at(sealed.len() - MAC_LEN);

    // 1. HMAC first, constant-time compare (`verify_slice` uses subtle).
    let mut mac = hmac(keys.mac.expose());
    mac.update(body);
    mac.verify_slice(tag_mac)
        .map_err(|_| CryptoError::MacMismatch)?;

    // 2. Layout (authenticated now, so a failure here means a bad sender).
    let (len_bytes, rest) = body
        .get(1..)
        .and_then(|b| b.split_at_checked(2))
        .ok_or(CryptoError::MalformedEnvelope)?;
    let header_len = usize::from(u16::from_be_bytes(
        len_bytes
            .try_into()
            .map_err(|_| CryptoError::MalformedEnvelope)?,
    ));
    let (header, rest) = rest
        .split_at_checked(header_len)
        .ok_or(CryptoError::MalformedEnvelope)?;
    let (nonce, rest) = rest
        .split_at_checked(NONCE_LEN)
        .ok_or(CryptoError::MalformedEnvelope)?;
    let ct_len = rest
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(CryptoError::MalformedEnvelope)?;
    let (ct, tag) = rest.split_at(ct_len);

    // 3. EAX (its own constant-time tag check, then CTR decryption).
    let nonce: [u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| CryptoError::MalformedEnvelope)?;
    let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| CryptoError::MalformedEnvelope)?;
    let mut plaintext = Zeroizing::new(ct.to_vec());
    eax(keys.enc.expose())
        .decrypt_inout_detached(
            &eax::aead::Nonce::<Aes128Eax>::from(nonce),
            header,
            plaintext.as_mut_slice().into(),
            &eax::Tag::from(tag),
        )
        .map_err(|_| CryptoError::AeadFailure)?;
    Ok(Opened { header, plaintext })
}

/// The bare EAX encryption of `plaintext` in place (no HMAC, no layout):
/// the baseline `benches/crypto.rs` compares the envelope against, and the
/// known-answer tests' entry point.
///
/// # Errors
/// [`CryptoError::TooLong`] for inputs over 2^36 bytes.
pub fn eax_encrypt_in_place(
    key: &[u8; 16],
    nonce: &[u8; NONCE_LEN],
    ad: &[u8],
    buffer: &mut [u8],
) -> Result<[u8; TAG_LEN], CryptoError> {
    let tag = eax(key)
        .encrypt_inout_detached(
            &eax::aead::Nonce::<Aes128Eax>::from(*nonce),
            ad,
            buffer.into(),
        )
        .map_err(|_| CryptoError::TooLong {
            what: "EAX input",
            max: 1 << 36,
            got: buffer.len(),
        })?;
    Ok(tag.into())
}

/// The bare EAX decryption of `buffer` in place.
///
/// # Errors
/// [`CryptoError::AeadFailure`] if the tag does not verify (then `buffer`
/// is unchanged).
pub fn eax_decrypt_in_place(
    key: &[u8; 16],
    nonce: &[u8; NONCE_LEN],
    ad: &[u8],
    buffer: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), CryptoError> {
    eax(key)
        .decrypt_inout_detached(
            &eax::aead::Nonce::<Aes128Eax>::from(*nonce),
            ad,
            buffer.into(),
            &eax::Tag::from(*tag),
        )
        .map_err(|_| CryptoError::AeadFailure)
}

/// HMAC-SHA256 of the concatenation of `parts` under a 32-byte key.
#[must_use]
pub fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = hmac(key);
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 with a key of any length (RFC 2104; for known-answer tests
/// and derivations that need it).
#[must_use]
pub fn hmac_sha256_any_key(key: &[u8], data: &[u8]) -> [u8; 32] {
    // Hashing or padding keys of every length is what `new_from_slice`
    // does; it cannot fail for HMAC.
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0u8; 32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::secret::SecretKey;
    use rand::SeedableRng;

    fn keys() -> EnvelopeKeys {
        EnvelopeKeys {
            enc: SecretKey::from_bytes([1u8; 16]),
            mac: SecretKey::from_bytes([2u8; 32]),
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let sealed = seal(&keys(), b"hdr", b"hello", &mut rng);
        assert_eq!(sealed.len(), OVERHEAD + 3 + 5);
        assert_eq!(sealed[0], ENVELOPE_VERSION);
        assert_eq!(&sealed[1..3], &[0, 3]);
        assert_eq!(&sealed[3..6], b"hdr");
        let opened = open(&keys(), &sealed).unwrap();
        assert_eq!(opened.header, b"hdr");
        assert_eq!(opened.plaintext.as_slice(), b"hello");
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let sealed = seal_with_nonce(&keys(), b"header", b"some plaintext", &[9u8; 16]);
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut t = sealed.clone();
                t[i] ^= 1 << bit;
                let err = open(&keys(), &t).unwrap_err();
                if i == 0 {
                    assert!(matches!(err, CryptoError::UnknownVersion { .. }), "{i}");
                } else {
                    assert_eq!(err, CryptoError::MacMismatch, "byte {i} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn truncation_and_wrong_keys_fail() {
        let sealed = seal_with_nonce(&keys(), b"", b"", &[0u8; 16]);
        assert_eq!(sealed.len(), OVERHEAD);
        assert!(open(&keys(), &sealed).is_ok());
        assert!(matches!(
            open(&keys(), &sealed[..OVERHEAD - 1]),
            Err(CryptoError::Truncated { .. })
        ));
        assert!(matches!(
            open(&keys(), &[]),
            Err(CryptoError::Truncated { .. })
        ));
        let mut other = keys();
        other.mac = SecretKey::from_bytes([3u8; 32]);
        assert_eq!(open(&other, &sealed).unwrap_err(), CryptoError::MacMismatch);
    }

    #[test]
    fn right_mac_wrong_enc_key_is_an_aead_failure() {
        let sealed = seal_with_nonce(&keys(), b"h", b"p", &[0u8; 16]);
        let mut other = keys();
        other.enc = SecretKey::from_bytes([5u8; 16]);
        assert_eq!(open(&other, &sealed).unwrap_err(), CryptoError::AeadFailure);
    }

    #[test]
    fn debug_hides_plaintext_and_seal_append_appends() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut out = b"prefix".to_vec();
        seal_append(&mut out, &keys(), b"h", b"secret words", &mut rng).unwrap();
        assert_eq!(&out[..6], b"prefix");
        let opened = open(&keys(), &out[6..]).unwrap();
        let dbg = format!("{opened:?}");
        assert!(dbg.contains("plaintext_len: 12"), "{dbg}");
        assert!(!dbg.contains("115"), "{dbg}"); // no b's' byte values
    }

    #[test]
    fn oversized_header_is_refused() {
        let big = vec![0u8; ENVELOPE_MAX_HEADER_LEN + 1];
        let mut out = vec![7u8];
        assert!(matches!(
            seal_into(&mut out, &keys(), &big, b"", &[0; 16]),
            Err(CryptoError::TooLong { .. })
        ));
        assert_eq!(out, vec![7u8]);
        assert!(seal_with_nonce(&keys(), &big, b"", &[0; 16]).is_empty());
        let max = vec![0u8; ENVELOPE_MAX_HEADER_LEN];
        let sealed = seal_with_nonce(&keys(), &max, b"x", &[0; 16]);
        assert_eq!(
            open(&keys(), &sealed).unwrap().header.len(),
            ENVELOPE_MAX_HEADER_LEN
        );
    }
}
