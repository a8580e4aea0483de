//! Identities: an Ed25519 signing key (the identity itself) and a DH key
//! certified by it.
//!
//! Public identity encoding (`PROTOCOL.md` Part 1):
//!
//! ```text
//! version = 0x01 (1) || signing_key (32) || group id (1) || dh_public (modulus_len) || certificate (64)
//! ```
//!
//! The certificate is the Ed25519 signature of
//! `CERT_LABEL || group id (1 byte) || dh_public (modulus_len bytes)`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use super::dh::{DhGroup, DhPrivateKey, DhPublicKey};
use super::error::CryptoError;
use super::secret::SecretKey;

/// Domain-separation prefix of the DH certificate's signed message.
pub const CERT_LABEL: &[u8] = b"hermes/v1/dh-certificate\x00";

/// Version byte of the public identity and secret identity encodings.
pub const IDENTITY_VERSION: u8 = 1;

/// Length of an Ed25519 public key.
pub const SIGNING_KEY_LEN: usize = 32;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// An Ed25519 key pair (ed25519-dalek; its secret zeroizes on drop).
/// `Debug` shows the public key only.
pub struct SigningKeyPair(SigningKey);

impl SigningKeyPair {
    /// A fresh key pair from a CSPRNG.
    #[must_use]
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let seed = SecretKey::<32>::random(rng);
        Self(SigningKey::from_bytes(seed.expose()))
    }

    /// The 32-byte public key.
    #[must_use]
    pub fn public_key(&self) -> [u8; SIGNING_KEY_LEN] {
        self.0.verifying_key().to_bytes()
    }

    /// An Ed25519 (RFC 8032, pure) signature of `message`.
    #[must_use]
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(message).to_bytes()
    }

    /// The 32-byte secret seed.
    #[must_use]
    pub fn to_secret_bytes(&self) -> SecretKey<32> {
        SecretKey::from_bytes(self.0.to_bytes())
    }

    /// Rebuilds the pair from its 32-byte seed (every seed is valid).
    #[must_use]
    pub fn from_secret_bytes(bytes: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(bytes))
    }
}

impl core::fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SigningKeyPair")
            .field("public", &hex(&self.public_key()))
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Strict Ed25519 verification (`verify_strict`: rejects non-canonical
/// encodings, small-order keys and the malleable `s`).
///
/// # Errors
/// [`CryptoError::BadSigningKey`] if the key is not a valid point;
/// [`CryptoError::BadSignature`] if the signature fails.
pub fn verify_signature(
    public_key: &[u8; SIGNING_KEY_LEN],
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), CryptoError> {
    let vk = VerifyingKey::from_bytes(public_key).map_err(|_| CryptoError::BadSigningKey)?;
    let sig = Signature::from_bytes(signature);
    vk.verify_strict(message, &sig)
        .map_err(|_| CryptoError::BadSignature)
}

/// The message a certificate signs: `CERT_LABEL || group id || dh_public`.
#[must_use]
pub fn certificate_message(dh_public: &DhPublicKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(CERT_LABEL.len() + 1 + dh_public.as_bytes().len());
    m.extend_from_slice(CERT_LABEL);
    m.push(dh_public.group().id());
    m.extend_from_slice(dh_public.as_bytes());
    m
}

/// A user's long-term secret identity. `Debug` shows public parts only.
pub struct IdentityKeyPair {
    signing: SigningKeyPair,
    dh: DhPrivateKey,
    certificate: [u8; SIGNATURE_LEN],
}

impl IdentityKeyPair {
    /// A fresh identity (one Ed25519 key, one DH key in `group`).
    #[must_use]
    pub fn generate(group: DhGroup, rng: &mut impl CryptoRng) -> Self {
        let signing = SigningKeyPair::generate(rng);
        let dh = DhPrivateKey::generate(group, rng);
        Self::assemble(signing, dh)
    }

    fn assemble(signing: SigningKeyPair, dh: DhPrivateKey) -> Self {
        let certificate = signing.sign(&certificate_message(&dh.public_key()));
        Self {
            signing,
            dh,
            certificate,
        }
    }

    /// The public half, with its certificate.
    #[must_use]
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            signing_key: self.signing.public_key(),
            dh_public: self.dh.public_key(),
            certificate: self.certificate,
        }
    }

    /// Signs `msg` with the identity key.
    #[must_use]
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(msg)
    }

    /// The Ed25519 key pair.
    #[must_use]
    pub fn signing(&self) -> &SigningKeyPair {
        &self.signing
    }

    /// The DH private key.
    #[must_use]
    pub fn dh(&self) -> &DhPrivateKey {
        &self.dh
    }

    /// Secret encoding (66 bytes):
    /// `version 0x01 || ed25519 seed (32) || group id (1) || dh seed (32)`.
    /// The certificate is recomputed on load (Ed25519 is deterministic).
    #[must_use]
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(Self::SECRET_LEN));
        out.push(IDENTITY_VERSION);
        out.extend_from_slice(self.signing.to_secret_bytes().expose());
        out.push(self.dh.group().id());
        out.extend_from_slice(self.dh.to_bytes().expose());
        out
    }

    /// Length of [`IdentityKeyPair::to_secret_bytes`].
    pub const SECRET_LEN: usize = 1 + 32 + 1 + 32;

    /// Parses [`IdentityKeyPair::to_secret_bytes`]'s output.
    ///
    /// # Errors
    /// [`CryptoError::BadLength`], [`CryptoError::UnknownVersion`],
    /// [`CryptoError::UnknownGroup`], [`CryptoError::PrivateKeyOutOfRange`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != Self::SECRET_LEN {
            return Err(CryptoError::BadLength {
                what: "secret identity",
                expected: Self::SECRET_LEN,
                got: bytes.len(),
            });
        }
        let (version, rest) = bytes.split_at(1);
        let (ed, rest) = rest.split_at(32);
        let (group, dh) = rest.split_at(1);
        let version = version.first().copied().unwrap_or_default();
        if version != IDENTITY_VERSION {
            return Err(CryptoError::UnknownVersion {
                what: "secret identity",
                version,
            });
        }
        let group = DhGroup::from_id(group.first().copied().unwrap_or_default())?;
        let ed = SecretKey::<32>::from_slice(ed)?;
        let dh = SecretKey::<32>::from_slice(dh)?;
        let signing = SigningKeyPair::from_secret_bytes(ed.expose());
        let dh = DhPrivateKey::from_bytes(group, dh.expose())?;
        Ok(Self::assemble(signing, dh))
    }
}

impl core::fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentityKeyPair")
            .field("signing", &self.signing)
            .field("dh", &self.dh)
            .finish_non_exhaustive()
    }
}

/// The public half of an identity: what the relay stores under a user name
/// and what peers pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicIdentity {
    /// Ed25519 public key (the identity).
    pub signing_key: [u8; SIGNING_KEY_LEN],
    /// The DH public value.
    pub dh_public: DhPublicKey,
    /// Ed25519 signature of [`certificate_message`]`(dh_public)`.
    pub certificate: [u8; SIGNATURE_LEN],
}

impl PublicIdentity {
    /// The encoding (354 bytes for `ffdhe2048`, 482 for `ffdhe3072`).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let dh = self.dh_public.as_bytes();
        let mut out = Vec::with_capacity(1 + SIGNING_KEY_LEN + 1 + dh.len() + SIGNATURE_LEN);
        out.push(IDENTITY_VERSION);
        out.extend_from_slice(&self.signing_key);
        out.push(self.dh_public.group().id());
        out.extend_from_slice(dh);
        out.extend_from_slice(&self.certificate);
        out
    }

    /// The encoded length for `group`.
    #[must_use]
    pub fn encoded_len(group: DhGroup) -> usize {
        1 + SIGNING_KEY_LEN + 1 + group.modulus_len() + SIGNATURE_LEN
    }

    /// Parses an encoding and range-checks the DH value. Does **not** check
    /// the certificate: call [`PublicIdentity::verify`].
    ///
    /// # Errors
    /// [`CryptoError::Truncated`], [`CryptoError::UnknownVersion`],
    /// [`CryptoError::UnknownGroup`], [`CryptoError::BadLength`] (exact
    /// length for the group), [`CryptoError::PublicKeyOutOfRange`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CryptoError> {
        let truncated = CryptoError::Truncated {
            what: "public identity",
        };
        let (&version, rest) = bytes.split_first().ok_or(truncated.clone())?;
        if version != IDENTITY_VERSION {
            return Err(CryptoError::UnknownVersion {
                what: "public identity",
                version,
            });
        }
        let (signing_key, rest) = rest
            .split_first_chunk::<SIGNING_KEY_LEN>()
            .ok_or(truncated.clone())?;
        let (&group_id, rest) = rest.split_first().ok_or(truncated.clone())?;
        let group = DhGroup::from_id(group_id)?;
        let expected = Self::encoded_len(group);
        if bytes.len() != expected {
            return Err(CryptoError::BadLength {
                what: "public identity",
                expected,
                got: bytes.len(),
            });
        }
        let (dh, cert) = rest
            .split_at_checked(group.modulus_len())
            .ok_or(truncated.clone())?;
        let certificate: [u8; SIGNATURE_LEN] = cert.try_into().map_err(|_| truncated)?;
        Ok(Self {
            signing_key: *signing_key,
            dh_public: DhPublicKey::from_bytes(group, dh)?,
            certificate,
        })
    }

    /// Checks the certificate: the Ed25519 key signed this DH value.
    ///
    /// # Errors
    /// [`CryptoError::BadCertificate`] if it does not verify (strictly).
    pub fn verify(&self) -> Result<(), CryptoError> {
        verify_signature(
            &self.signing_key,
            &certificate_message(&self.dh_public),
            &self.certificate,
        )
        .map_err(|_| CryptoError::BadCertificate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn certificate_round_trip_and_forgery() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let id = IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng);
        let public = id.public();
        public.verify().unwrap();
        let enc = public.encode();
        assert_eq!(enc.len(), 354);
        let back = PublicIdentity::decode(&enc).unwrap();
        assert_eq!(back, public);
        back.verify().unwrap();

        // Another identity's DH key under this signing key: refused.
        let other = IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng);
        let mut forged = public.clone();
        forged.dh_public = other.public().dh_public;
        assert_eq!(forged.verify(), Err(CryptoError::BadCertificate));
        let mut forged = public.clone();
        forged.signing_key = other.public().signing_key;
        assert_eq!(forged.verify(), Err(CryptoError::BadCertificate));
    }

    #[test]
    fn secret_round_trip() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let id = IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng);
        let bytes = id.to_secret_bytes();
        assert_eq!(bytes.len(), IdentityKeyPair::SECRET_LEN);
        let back = IdentityKeyPair::from_secret_bytes(&bytes).unwrap();
        assert_eq!(back.public(), id.public());
        let mut bad = bytes.to_vec();
        bad[33] = 9;
        assert_eq!(
            IdentityKeyPair::from_secret_bytes(&bad).unwrap_err(),
            CryptoError::UnknownGroup(9)
        );
        assert!(!format!("{id:?}").contains(&hex(id.signing().to_secret_bytes().expose())));
    }

    #[test]
    fn decode_rejects_malformed() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let enc = IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng)
            .public()
            .encode();
        for n in 0..enc.len() {
            assert!(PublicIdentity::decode(&enc[..n]).is_err(), "prefix {n}");
        }
        let mut longer = enc.clone();
        longer.push(0);
        assert!(matches!(
            PublicIdentity::decode(&longer),
            Err(CryptoError::BadLength { .. })
        ));
        let mut v = enc.clone();
        v[0] = 2;
        assert!(matches!(
            PublicIdentity::decode(&v),
            Err(CryptoError::UnknownVersion { .. })
        ));
    }

    #[test]
    fn signatures_verify_strictly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let k = SigningKeyPair::generate(&mut rng);
        let sig = k.sign(b"msg");
        verify_signature(&k.public_key(), b"msg", &sig).unwrap();
        assert_eq!(
            verify_signature(&k.public_key(), b"msh", &sig),
            Err(CryptoError::BadSignature)
        );
        let k2 = SigningKeyPair::from_secret_bytes(k.to_secret_bytes().expose());
        assert_eq!(k2.public_key(), k.public_key());
    }
}
