//! Property tests of the primitives (small case counts: bigint work is the
//! slow part of the suite on two cores).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers outside #[test] fns: a failure here is a test failure"
)]

use hermes::crypto::CryptoError;
use hermes::crypto::dh::{
    DhGroup, DhPrivateKey, DhPublicKey, MontyBackend, modexp_ct, modexp_ct_in_group,
};
use hermes::crypto::envelope::{OVERHEAD, open, seal_with_nonce};
use hermes::crypto::identity::{IdentityKeyPair, PublicIdentity};
use hermes::crypto::kdf::{EnvelopeKeys, channel_keys};
use hermes::crypto::secret::SecretKey;
use num_bigint::BigUint;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn to_len(x: &BigUint, len: usize) -> Vec<u8> {
    let b = x.to_bytes_be();
    let mut v = vec![0u8; len - b.len()];
    v.extend_from_slice(&b);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `modexp_ct` equals num-bigint's `modpow` for random odd moduli of
    /// 2 to 1024 bits, bases below the modulus and exponents of 0 to 512 bits.
    #[test]
    fn modexp_matches_num_bigint(
        m in proptest::collection::vec(any::<u8>(), 1..128),
        b in proptest::collection::vec(any::<u8>(), 0..128),
        e in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut m = BigUint::from_bytes_be(&m);
        m |= BigUint::from(1u32);
        prop_assume!(m > BigUint::from(1u32));
        let len = usize::try_from(m.bits().div_ceil(8)).unwrap();
        let base = BigUint::from_bytes_be(&b) % &m;
        let exp = BigUint::from_bytes_be(&e);
        let bound = u32::try_from(exp.bits()).unwrap();
        let got = modexp_ct(&to_len(&base, len), &exp.to_bytes_be(), bound, &to_len(&m, len)).unwrap();
        prop_assert_eq!(got.to_vec(), to_len(&base.modpow(&exp, &m), len));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Every backend equals num-bigint in both RFC 7919 groups with
    /// exponents at the public bound.
    #[test]
    fn group_modexp_matches_num_bigint(base in proptest::collection::vec(any::<u8>(), 384), exp in any::<[u8; 40]>(), g3072 in any::<bool>()) {
        let group = if g3072 { DhGroup::Ffdhe3072 } else { DhGroup::Ffdhe2048 };
        let len = group.modulus_len();
        let p = BigUint::from_bytes_be(group.modulus_bytes());
        let base = BigUint::from_bytes_be(&base[..len]) % &p;
        let bits = group.exponent_bits();
        let exp_len = usize::try_from(bits / 8).unwrap();
        let e = &exp[..exp_len];
        let want = to_len(&base.modpow(&BigUint::from_bytes_be(e), &p), len);
        for backend in [MontyBackend::Fixed, MontyBackend::FixedAmm, MontyBackend::Boxed] {
            let got = modexp_ct_in_group(group, backend, &to_len(&base, len), e, bits).unwrap();
            prop_assert_eq!(got.to_vec(), want.clone(), "{:?}", backend);
        }
    }

    /// Two parties from random seeds agree on Z, and on the channel keys in
    /// each direction.
    #[test]
    fn dh_agreement(sa in any::<[u8; 32]>(), sb in any::<[u8; 32]>(), g3072 in any::<bool>()) {
        let group = if g3072 { DhGroup::Ffdhe3072 } else { DhGroup::Ffdhe2048 };
        let a = DhPrivateKey::from_bytes(group, &sa);
        let b = DhPrivateKey::from_bytes(group, &sb);
        prop_assume!(a.is_ok() && b.is_ok());
        let (a, b) = (a.unwrap(), b.unwrap());
        let zab = a.agree(&b.public_key()).unwrap();
        let zba = b.agree(&a.public_key()).unwrap();
        prop_assert_eq!(zab.as_bytes(), zba.as_bytes());
        prop_assert_eq!(zab.as_bytes().len(), group.modulus_len());
        prop_assert_eq!(channel_keys(&zab, "a", "b"), channel_keys(&zba, "a", "b"));
        // Public keys survive their encoding.
        let pk = DhPublicKey::from_bytes(group, a.public_key().as_bytes()).unwrap();
        prop_assert_eq!(pk, a.public_key());
    }

    /// The certificate verifies after an encode/decode round trip; any
    /// single-bit change to the signing key, DH value or certificate fails
    /// decoding or verification.
    #[test]
    fn identity_certificate(seed in any::<u64>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut rng = StdRng::seed_from_u64(seed);
        let id = IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng);
        let enc = id.public().encode();
        let back = PublicIdentity::decode(&enc).unwrap();
        back.verify().unwrap();
        prop_assert_eq!(&back, &id.public());
        // Flip one bit anywhere after the version and group id bytes.
        let mut bad = enc.clone();
        let i = flip.index(enc.len());
        bad[i] ^= 1 << bit;
        let outcome = PublicIdentity::decode(&bad).and_then(|p| p.verify());
        prop_assert!(outcome.is_err(), "bit {} of byte {} accepted", bit, i);
    }
}

fn keys(k: &[u8; 48]) -> EnvelopeKeys {
    EnvelopeKeys::from_okm(k)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn seal_open_round_trip(
        k in proptest::collection::vec(any::<u8>(), 48),
        header in proptest::collection::vec(any::<u8>(), 0..300),
        pt in proptest::collection::vec(any::<u8>(), 0..2000),
        nonce in any::<[u8; 16]>(),
    ) {
        let k: [u8; 48] = k.try_into().unwrap();
        let keys = keys(&k);
        let sealed = seal_with_nonce(&keys, &header, &pt, &nonce);
        prop_assert_eq!(sealed.len(), OVERHEAD + header.len() + pt.len());
        let opened = open(&keys, &sealed).unwrap();
        prop_assert_eq!(opened.header, header.as_slice());
        prop_assert_eq!(opened.plaintext.as_slice(), pt.as_slice());
    }

    /// Any bit flip, truncation or extension is refused with a typed error,
    /// and so is the right envelope under the other direction's keys.
    #[test]
    fn tamper_is_rejected(
        header in proptest::collection::vec(any::<u8>(), 0..64),
        pt in proptest::collection::vec(any::<u8>(), 0..256),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in 1usize..40,
    ) {
        let keys = EnvelopeKeys {
            enc: SecretKey::from_bytes([0x11; 16]),
            mac: SecretKey::from_bytes([0x22; 32]),
        };
        let sealed = seal_with_nonce(&keys, &header, &pt, &[0x33; 16]);
        let i = at.index(sealed.len());
        let mut t = sealed.clone();
        t[i] ^= 1 << bit;
        let e = open(&keys, &t).unwrap_err();
        prop_assert!(matches!(e, CryptoError::MacMismatch | CryptoError::UnknownVersion { .. }), "{:?}", e);
        let short = &sealed[..sealed.len() - cut.min(sealed.len())];
        prop_assert!(open(&keys, short).is_err());
        let mut long = sealed.clone();
        long.push(0);
        prop_assert_eq!(open(&keys, &long).unwrap_err(), CryptoError::MacMismatch);
        let other = EnvelopeKeys {
            enc: SecretKey::from_bytes([0x11; 16]),
            mac: SecretKey::from_bytes([0x23; 32]),
        };
        prop_assert_eq!(open(&other, &sealed).unwrap_err(), CryptoError::MacMismatch);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// No decoder of untrusted bytes panics, whatever the input.
    #[test]
    fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        hermes::crypto::fuzz_decoders(&data);
    }
}

/// Structured near-misses for the fuzz entry point: valid encodings with
/// one field broken.
#[test]
fn fuzz_decoders_on_near_misses() {
    let mut rng = StdRng::seed_from_u64(9);
    let id = IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng)
        .public()
        .encode();
    for cut in [0, 1, 33, 34, 290, id.len() - 1, id.len()] {
        hermes::crypto::fuzz_decoders(&id[..cut]);
    }
    let keys = EnvelopeKeys::from_okm(&[0u8; 48]);
    let sealed = seal_with_nonce(&keys, b"h", b"p", &[0; 16]);
    hermes::crypto::fuzz_decoders(&sealed);
    assert!(open(&keys, &sealed).is_ok());
}
