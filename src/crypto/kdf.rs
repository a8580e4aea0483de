//! Key derivation: HKDF-SHA256 (RFC 5869) for high-entropy inputs such as a
//! DH shared secret, PBKDF2-HMAC-SHA256 (RFC 8018) for passphrases.
//!
//! Every derivation is labelled. The HKDF `info` of a labelled derivation is
//!
//! ```text
//! info = u16(len(label)) || label || for each context item: u16(len(item)) || item
//! ```
//!
//! (lengths big-endian), so no two different (label, context) lists give
//! the same `info`. PBKDF2 stretching is for low-entropy secrets only: it
//! adds nothing to a 2048-bit DH output, which HKDF takes as it is.

use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::dh::SharedSecret;
use super::error::CryptoError;
use super::secret::SecretKey;
use crate::limits::{
    PBKDF2_DEFAULT_ITERATIONS, PBKDF2_MAX_ITERATIONS, PBKDF2_MIN_ITERATIONS, PBKDF2_SALT_LEN,
};

/// HKDF label of the pairwise channel keys (context: sender name, recipient
/// name).
pub const LABEL_CHANNEL: &str = "hermes/v1/channel";

/// HKDF label that turns the PBKDF2 output into the two passphrase keys.
pub const LABEL_PASSPHRASE: &str = "hermes/v1/passphrase";

/// Bytes of the AES-128 key.
pub const ENC_KEY_LEN: usize = 16;

/// Bytes of the HMAC-SHA256 key.
pub const MAC_KEY_LEN: usize = 32;

/// Algorithm id of PBKDF2-HMAC-SHA256 in encoded [`PassphraseParams`].
pub const KDF_ID_PBKDF2_HMAC_SHA256: u8 = 1;

/// The two keys of one envelope direction: AES-128 for EAX, a 32-byte
/// HMAC-SHA256 key for the outer MAC. Both zeroize on drop.
#[derive(Debug, PartialEq, Eq)]
pub struct EnvelopeKeys {
    /// AES-128-EAX key.
    pub enc: SecretKey<ENC_KEY_LEN>,
    /// HMAC-SHA256 key.
    pub mac: SecretKey<MAC_KEY_LEN>,
}

impl EnvelopeKeys {
    /// Splits 48 bytes of key material: the first 16 are `enc`, the next 32
    /// are `mac`.
    #[must_use]
    pub fn from_okm(okm: &[u8; ENC_KEY_LEN + MAC_KEY_LEN]) -> Self {
        let mut enc = [0u8; ENC_KEY_LEN];
        let mut mac = [0u8; MAC_KEY_LEN];
        let (e, m) = okm.split_at(ENC_KEY_LEN);
        enc.copy_from_slice(e);
        mac.copy_from_slice(m);
        Self {
            enc: SecretKey::from_bytes(enc),
            mac: SecretKey::from_bytes(mac),
        }
    }

    /// An explicit copy of both keys.
    #[must_use]
    pub fn duplicate(&self) -> Self {
        Self {
            enc: self.enc.duplicate(),
            mac: self.mac.duplicate(),
        }
    }
}

/// The HKDF `info` for `label` and `context` (see the module doc).
///
/// # Errors
/// [`CryptoError::TooLong`] if the label or an item exceeds 65,535 bytes.
pub fn labelled_info(label: &str, context: &[&[u8]]) -> Result<Vec<u8>, CryptoError> {
    let mut info =
        Vec::with_capacity(2 + label.len() + context.iter().map(|c| 2 + c.len()).sum::<usize>());
    for item in core::iter::once(label.as_bytes()).chain(context.iter().copied()) {
        let len = u16::try_from(item.len()).map_err(|_| CryptoError::TooLong {
            what: "HKDF info item",
            max: usize::from(u16::MAX),
            got: item.len(),
        })?;
        info.extend_from_slice(&len.to_be_bytes());
        info.extend_from_slice(item);
    }
    Ok(info)
}

/// HKDF-SHA256 (RFC 5869) extract-then-expand with a labelled `info`:
/// `PRK = HMAC-SHA256(salt, ikm)` (an empty salt means 32 zero bytes, as
/// the RFC says), then `out = HKDF-Expand(PRK, labelled_info(label,
/// context), out.len())`.
///
/// # Errors
/// [`CryptoError::KdfOutputTooLong`] for more than 8160 bytes of output;
/// [`CryptoError::TooLong`] for an item over 65,535 bytes.
pub fn hkdf_expand_label(
    ikm: &[u8],
    salt: &[u8],
    label: &str,
    context: &[&[u8]],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let info = labelled_info(label, context)?;
    hkdf_sha256(ikm, salt, &info, out)
}

/// Plain HKDF-SHA256 (RFC 5869) with a raw `info` (the Wycheproof tests use
/// this; protocol code uses [`hkdf_expand_label`]).
///
/// # Errors
/// [`CryptoError::KdfOutputTooLong`] for more than 255 * 32 bytes.
pub fn hkdf_sha256(
    ikm: &[u8],
    salt: &[u8],
    info: &[u8],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    hk.expand(info, out)
        .map_err(|_| CryptoError::KdfOutputTooLong(out.len()))
}

/// The keys for messages from `sender` to `recipient` over the pairwise
/// channel with shared secret `z`:
/// `HKDF-SHA256(salt = "", ikm = Z, info = labelled_info(LABEL_CHANNEL,
/// [sender, recipient]), L = 48)`, split 16 + 32 by [`EnvelopeKeys::from_okm`].
///
/// The two directions get unrelated keys, so a message from A to B cannot
/// be reflected to A as if from B. Names are passed as their UTF-8 (NFC)
/// bytes, exactly as on the wire.
#[must_use]
pub fn channel_keys(z: &SharedSecret, sender: &str, recipient: &str) -> EnvelopeKeys {
    let mut okm = Zeroizing::new([0u8; ENC_KEY_LEN + MAC_KEY_LEN]);
    // Names are at most 200 bytes (the wire limit); a name over 65,535
    // bytes cannot be length-prefixed, so it is cut to its first 65,535
    // bytes here rather than panicking. Both sides cut identically.
    let s = sender.as_bytes();
    let r = recipient.as_bytes();
    let s = s.get(..s.len().min(usize::from(u16::MAX))).unwrap_or(s);
    let r = r.get(..r.len().min(usize::from(u16::MAX))).unwrap_or(r);
    // Cannot fail: 48 bytes of output and items within the u16 bound.
    let _ = hkdf_expand_label(
        z.as_bytes(),
        &[],
        LABEL_CHANNEL,
        &[s, r],
        okm.as_mut_slice(),
    );
    EnvelopeKeys::from_okm(&okm)
}

/// PBKDF2 parameters stored in front of passphrase-encrypted data.
///
/// Encoding (21 bytes): `kdf id (1 byte, 1 = PBKDF2-HMAC-SHA256) ||
/// iterations (u32 big-endian) || salt (16 bytes)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassphraseParams {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// Random salt.
    pub salt: [u8; PBKDF2_SALT_LEN],
}

impl PassphraseParams {
    /// Length of [`PassphraseParams::encode`]'s output.
    pub const ENCODED_LEN: usize = 1 + 4 + PBKDF2_SALT_LEN;

    /// Fresh parameters: the default iteration count and a random salt.
    #[must_use]
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut salt = [0u8; PBKDF2_SALT_LEN];
        rng.fill_bytes(&mut salt);
        Self {
            iterations: PBKDF2_DEFAULT_ITERATIONS,
            salt,
        }
    }

    /// The 21-byte encoding.
    #[must_use]
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        let (id, rest) = out.split_at_mut(1);
        let (iters, salt) = rest.split_at_mut(4);
        id.copy_from_slice(&[KDF_ID_PBKDF2_HMAC_SHA256]);
        iters.copy_from_slice(&self.iterations.to_be_bytes());
        salt.copy_from_slice(&self.salt);
        out
    }

    /// Parses exactly [`PassphraseParams::ENCODED_LEN`] bytes and enforces
    /// the iteration bounds.
    ///
    /// # Errors
    /// [`CryptoError::BadLength`], [`CryptoError::UnknownKdf`],
    /// [`CryptoError::WeakPassphraseParams`] below
    /// [`PBKDF2_MIN_ITERATIONS`], [`CryptoError::ExcessivePassphraseParams`]
    /// above [`PBKDF2_MAX_ITERATIONS`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: &[u8; Self::ENCODED_LEN] =
            bytes.try_into().map_err(|_| CryptoError::BadLength {
                what: "passphrase params",
                expected: Self::ENCODED_LEN,
                got: bytes.len(),
            })?;
        let (id, rest) = arr.split_at(1);
        let (iters, salt) = rest.split_at(4);
        let id = id.first().copied().unwrap_or_default();
        if id != KDF_ID_PBKDF2_HMAC_SHA256 {
            return Err(CryptoError::UnknownKdf(id));
        }
        let mut it = [0u8; 4];
        it.copy_from_slice(iters);
        let mut s = [0u8; PBKDF2_SALT_LEN];
        s.copy_from_slice(salt);
        let params = Self {
            iterations: u32::from_be_bytes(it),
            salt: s,
        };
        params.check()?;
        Ok(params)
    }

    /// Checks the iteration count against the named bounds.
    ///
    /// # Errors
    /// As [`PassphraseParams::decode`].
    pub fn check(&self) -> Result<(), CryptoError> {
        if self.iterations < PBKDF2_MIN_ITERATIONS {
            return Err(CryptoError::WeakPassphraseParams {
                iterations: self.iterations,
            });
        }
        if self.iterations > PBKDF2_MAX_ITERATIONS {
            return Err(CryptoError::ExcessivePassphraseParams {
                iterations: self.iterations,
            });
        }
        Ok(())
    }
}

/// PBKDF2-HMAC-SHA256 (RFC 8018 §5.2) with no bounds on `iterations` (for
/// known-answer tests; protocol code calls [`passphrase_keys`]).
pub fn pbkdf2_hmac_sha256(password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, out);
}

/// The keys that protect data under a passphrase:
/// 1. `master = PBKDF2-HMAC-SHA256(passphrase, salt, iterations, 32)`;
/// 2. `okm = hkdf_expand_label(ikm = master, salt = "", LABEL_PASSPHRASE, [], 48)`;
/// 3. split 16 + 32 by [`EnvelopeKeys::from_okm`].
///
/// One 32-byte PBKDF2 block (not 48 bytes of PBKDF2 output, which would
/// double the defender's cost and not the attacker's).
///
/// # Errors
/// As [`PassphraseParams::check`].
pub fn passphrase_keys(
    passphrase: &[u8],
    params: &PassphraseParams,
) -> Result<EnvelopeKeys, CryptoError> {
    params.check()?;
    let mut master = Zeroizing::new([0u8; 32]);
    pbkdf2_hmac_sha256(
        passphrase,
        &params.salt,
        params.iterations,
        master.as_mut_slice(),
    );
    let mut okm = Zeroizing::new([0u8; ENC_KEY_LEN + MAC_KEY_LEN]);
    hkdf_expand_label(
        master.as_slice(),
        &[],
        LABEL_PASSPHRASE,
        &[],
        okm.as_mut_slice(),
    )?;
    Ok(EnvelopeKeys::from_okm(&okm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::dh::{DhGroup, DhPrivateKey};
    use rand::SeedableRng;

    #[test]
    fn labelled_info_is_length_prefixed() {
        let info = labelled_info("ab", &[b"c", b""]).unwrap();
        assert_eq!(info, vec![0, 2, b'a', b'b', 0, 1, b'c', 0, 0]);
        // ("ab","c") and ("a","bc") differ
        assert_ne!(
            labelled_info("x", &[b"ab", b"c"]).unwrap(),
            labelled_info("x", &[b"a", b"bc"]).unwrap()
        );
        let big = vec![0u8; 70_000];
        assert!(matches!(
            labelled_info("x", &[&big]),
            Err(CryptoError::TooLong { .. })
        ));
    }

    #[test]
    fn channel_keys_differ_per_direction() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = DhPrivateKey::generate(DhGroup::Ffdhe2048, &mut rng);
        let b = DhPrivateKey::generate(DhGroup::Ffdhe2048, &mut rng);
        let zab = a.agree(&b.public_key()).unwrap();
        let zba = b.agree(&a.public_key()).unwrap();
        let ab = channel_keys(&zab, "alice", "bob");
        let ab2 = channel_keys(&zba, "alice", "bob");
        let ba = channel_keys(&zab, "bob", "alice");
        assert_eq!(ab, ab2);
        assert_ne!(ab.enc, ba.enc);
        assert_ne!(ab.mac, ba.mac);
    }

    #[test]
    fn passphrase_params_round_trip_and_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let p = PassphraseParams::generate(&mut rng);
        assert_eq!(p.iterations, PBKDF2_DEFAULT_ITERATIONS);
        assert_eq!(PassphraseParams::decode(&p.encode()).unwrap(), p);

        let weak = PassphraseParams {
            iterations: PBKDF2_MIN_ITERATIONS - 1,
            salt: [0; 16],
        };
        assert_eq!(
            PassphraseParams::decode(&weak.encode()),
            Err(CryptoError::WeakPassphraseParams {
                iterations: PBKDF2_MIN_ITERATIONS - 1
            })
        );
        assert!(passphrase_keys(b"pw", &weak).is_err());
        let huge = PassphraseParams {
            iterations: PBKDF2_MAX_ITERATIONS + 1,
            salt: [0; 16],
        };
        assert!(matches!(
            PassphraseParams::decode(&huge.encode()),
            Err(CryptoError::ExcessivePassphraseParams { .. })
        ));
        let mut bad = p.encode();
        bad[0] = 9;
        assert_eq!(
            PassphraseParams::decode(&bad),
            Err(CryptoError::UnknownKdf(9))
        );
        assert!(matches!(
            PassphraseParams::decode(&bad[1..]),
            Err(CryptoError::BadLength { .. })
        ));
    }

    #[test]
    fn passphrase_keys_depend_on_passphrase_and_salt() {
        let p = PassphraseParams {
            iterations: PBKDF2_MIN_ITERATIONS,
            salt: [7; 16],
        };
        let k1 = passphrase_keys(b"correct horse", &p).unwrap();
        let k2 = passphrase_keys(b"correct horse", &p).unwrap();
        let k3 = passphrase_keys(b"correct horsf", &p).unwrap();
        assert_eq!(k1, k2);
        assert_ne!(k1.enc, k3.enc);
    }

    #[test]
    fn hkdf_output_limit() {
        let mut out = vec![0u8; 255 * 32 + 1];
        assert_eq!(
            hkdf_sha256(b"k", b"", b"", &mut out),
            Err(CryptoError::KdfOutputTooLong(255 * 32 + 1))
        );
        let mut ok = vec![0u8; 255 * 32];
        assert!(hkdf_sha256(b"k", b"", b"", &mut ok).is_ok());
    }
}
