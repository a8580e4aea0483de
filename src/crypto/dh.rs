//! Finite-field Diffie-Hellman over the RFC 7919 groups `ffdhe2048` and
//! `ffdhe3072` (g = 2), with constant-time Montgomery exponentiation.
//!
//! Steps follow RFC 7919 §5 and NIST SP 800-56A §5.6.2.3.1 / §5.7.1.1:
//!
//! 1. private seed `s`: 32 random bytes; exponent `x` from `s`
//!    ([`DhPrivateKey::from_bytes`] says how, per group);
//! 2. public value `y = g^x mod p`, encoded as exactly `modulus_len` bytes,
//!    big-endian;
//! 3. a peer value is accepted only in `[2, p-2]`
//!    ([`DhPublicKey::from_bytes`]);
//! 4. `Z = y_peer^x mod p`, rejected if `Z == 1`, encoded as exactly
//!    `modulus_len` bytes big-endian with leading zeros kept.
//!
//! # Constant time
//!
//! Every exponentiation with a secret exponent goes through
//! `crypto_bigint::modular::BoxedMontyForm::pow_bounded_exp(exponent,
//! exponent_bits)` (see [`DEFAULT_BACKEND`]): a fixed-window (4-bit)
//! exponentiation with almost-Montgomery multiplication in which
//!
//! - the sequence of squarings and multiplications depends only on
//!   `exponent_bits`, which is the public bound (256 bits for `ffdhe2048`,
//!   320 for `ffdhe3072`), never the secret exponent's actual bit length;
//! - every window multiplies, even by the table entry for 0 (no skipped
//!   multiplications);
//! - the table entry is chosen by a constant-time scan of all 16 entries
//!   (`ct_assign` with a `ct_eq` mask), so no memory address depends on the
//!   exponent;
//! - the multiplications have no data-dependent branches, and the final
//!   reduction is two masked (constant-time) conditional subtractions.
//!
//! No `*_vartime` function ever sees a secret: the only vartime calls here
//! build the public group parameters. `BoxedMontyForm` was chosen over
//! `FixedMontyForm` by measurement (README "Performance"); all three
//! [`MontyBackend`]s are constant time and tested equal.

use std::sync::OnceLock;

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams, FixedMontyForm, FixedMontyParams};
use crypto_bigint::{BoxedUint, Odd, U2048, U3072, Uint};
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::error::CryptoError;
use super::kdf;
use super::secret::SecretKey;
use crate::limits::{DH_EXPONENT_BITS_FFDHE2048, DH_EXPONENT_BITS_FFDHE3072};

/// RFC 7919 Appendix A.1, `ffdhe2048` p (big-endian hex).
pub const FFDHE2048_P_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695",
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A",
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A",
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4",
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005",
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B423861285C97FFFFFFFFFFFFFFFF",
);

/// RFC 7919 Appendix A.2, `ffdhe3072` p (big-endian hex).
pub const FFDHE3072_P_HEX: &str = concat!(
    "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695",
    "A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A",
    "D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935",
    "984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A",
    "BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4",
    "AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61",
    "9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005",
    "C58EF1837D1683B2C6F34A26C1B2EFFA886B4238611FCFDCDE355B3B6519035B",
    "BC34F4DEF99C023861B46FC9D6E6C9077AD91D2691F7F7EE598CB0FAC186D91C",
    "AEFE130985139270B4130C93BC437944F4FD4452E2D74DD364F2E21E71F54BFF",
    "5CAE82AB9C9DF69EE86D2BC522363A0DABC521979B0DEADA1DBF9A42D5C4484E",
    "0ABCD06BFA53DDEF3C1B20EE3FD59D7C25E41D2B66C62E37FFFFFFFFFFFFFFFF",
);

/// The generator of both groups.
pub const GENERATOR: u8 = 2;

/// HKDF label that stretches a 32-byte seed into the 320-bit `ffdhe3072`
/// exponent (see [`DhPrivateKey::from_bytes`]).
pub const LABEL_FFDHE3072_EXPONENT: &str = "hermes/v1/dh-exponent/ffdhe3072";

const P2048: Odd<U2048> = Odd::<U2048>::from_be_hex(FFDHE2048_P_HEX);
const P3072: Odd<U3072> = Odd::<U3072>::from_be_hex(FFDHE3072_P_HEX);

/// The named groups a Hermes client accepts; nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DhGroup {
    /// RFC 7919 `ffdhe2048` (wire id 1), the default.
    #[default]
    Ffdhe2048,
    /// RFC 7919 `ffdhe3072` (wire id 2).
    Ffdhe3072,
}

impl DhGroup {
    /// Every group, in wire-id order.
    pub const ALL: [DhGroup; 2] = [DhGroup::Ffdhe2048, DhGroup::Ffdhe3072];

    /// The one-byte wire code: 1 for `ffdhe2048`, 2 for `ffdhe3072`.
    #[must_use]
    pub fn id(self) -> u8 {
        match self {
            DhGroup::Ffdhe2048 => 1,
            DhGroup::Ffdhe3072 => 2,
        }
    }

    /// The group with wire code `id`.
    ///
    /// # Errors
    /// [`CryptoError::UnknownGroup`] for any other byte.
    pub fn from_id(id: u8) -> Result<Self, CryptoError> {
        match id {
            1 => Ok(DhGroup::Ffdhe2048),
            2 => Ok(DhGroup::Ffdhe3072),
            other => Err(CryptoError::UnknownGroup(other)),
        }
    }

    /// Length of p (and of every encoded public value and shared secret) in
    /// bytes: 256 or 384.
    #[must_use]
    pub fn modulus_len(self) -> usize {
        match self {
            DhGroup::Ffdhe2048 => 256,
            DhGroup::Ffdhe3072 => 384,
        }
    }

    /// The public bound on private exponent bits (256 or 320).
    #[must_use]
    pub fn exponent_bits(self) -> u32 {
        match self {
            DhGroup::Ffdhe2048 => DH_EXPONENT_BITS_FFDHE2048,
            DhGroup::Ffdhe3072 => DH_EXPONENT_BITS_FFDHE3072,
        }
    }

    /// The RFC 7919 name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Ffdhe2048 => "ffdhe2048",
            DhGroup::Ffdhe3072 => "ffdhe3072",
        }
    }

    /// p, big-endian, exactly `modulus_len` bytes.
    #[must_use]
    pub fn modulus_bytes(self) -> &'static [u8] {
        &self.consts().p
    }

    fn consts(self) -> &'static GroupConsts {
        static C2048: OnceLock<GroupConsts> = OnceLock::new();
        static C3072: OnceLock<GroupConsts> = OnceLock::new();
        match self {
            DhGroup::Ffdhe2048 => C2048.get_or_init(|| GroupConsts::new(&P2048)),
            DhGroup::Ffdhe3072 => C3072.get_or_init(|| GroupConsts::new(&P3072)),
        }
    }
}

/// Public constants of a group, computed once.
struct GroupConsts {
    p: Vec<u8>,
    p_minus_2: Vec<u8>,
    boxed: BoxedMontyParams,
}

impl GroupConsts {
    fn new<const L: usize>(p: &Odd<Uint<L>>) -> Self {
        let p_minus_2 = p.as_ref().wrapping_sub(&Uint::<L>::from_u8(2));
        Self {
            p: p.as_ref().to_be_bytes().as_ref().to_vec(),
            p_minus_2: p_minus_2.to_be_bytes().as_ref().to_vec(),
            boxed: BoxedMontyParams::new_vartime(Odd::<BoxedUint>::from(p)),
        }
    }
}

fn fixed_params_2048() -> &'static FixedMontyParams<{ U2048::LIMBS }> {
    static P: OnceLock<FixedMontyParams<{ U2048::LIMBS }>> = OnceLock::new();
    P.get_or_init(|| FixedMontyParams::new_vartime(P2048))
}

fn fixed_params_3072() -> &'static FixedMontyParams<{ U3072::LIMBS }> {
    static P: OnceLock<FixedMontyParams<{ U3072::LIMBS }>> = OnceLock::new();
    P.get_or_init(|| FixedMontyParams::new_vartime(P3072))
}

/// Which `crypto-bigint` Montgomery representation runs the exponentiation.
/// All three are constant time in the exponent; they differ in speed only
/// (`benches/crypto.rs`, README "Performance").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MontyBackend {
    /// `FixedMontyForm::pow_bounded_exp` on `U2048`/`U3072`: stack-only,
    /// fixed 4-bit window, full Montgomery reduction per step.
    Fixed,
    /// `FixedMontyForm::pow_amm_bounded_exp` (almost-Montgomery
    /// multiplication, exponent widened to the modulus size).
    FixedAmm,
    /// `BoxedMontyForm::pow_bounded_exp` (heap limbs, almost-Montgomery
    /// multiplication).
    Boxed,
}

/// The backend [`DhPrivateKey`] uses: `BoxedMontyForm::pow_bounded_exp`,
/// the fastest of the three in `benches/crypto.rs` (group `modexp2048`,
/// 256-bit exponent; README "Performance" has the figures).
pub const DEFAULT_BACKEND: MontyBackend = MontyBackend::Boxed;

/// `base^exponent mod p` in `group`, constant time in `exponent`.
///
/// `base` is exactly `modulus_len` bytes big-endian and must be below p;
/// `exponent` is big-endian of at most `ceil(exponent_bits / 8)` bytes
/// (shorter is zero-extended) and below `2^exponent_bits`. The time taken
/// depends on `exponent_bits` (public) but not on the exponent's value.
/// Used by [`DhPrivateKey`], and exposed for tests and benches.
///
/// # Errors
/// [`CryptoError::BadLength`] for a wrong-length base,
/// [`CryptoError::OutOfRange`] for a base `>= p` or an exponent that does
/// not fit `exponent_bits` (or `exponent_bits` above the modulus size).
pub fn modexp_ct_in_group(
    group: DhGroup,
    backend: MontyBackend,
    base: &[u8],
    exponent: &[u8],
    exponent_bits: u32,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let len = group.modulus_len();
    if base.len() != len {
        return Err(CryptoError::BadLength {
            what: "modexp base",
            expected: len,
            got: base.len(),
        });
    }
    if base >= group.consts().p.as_slice() {
        return Err(CryptoError::OutOfRange {
            what: "modexp base",
        });
    }
    let mod_bits = u32::try_from(len * 8).map_err(|_| CryptoError::BadModulus)?;
    if exponent_bits > mod_bits {
        return Err(CryptoError::OutOfRange {
            what: "exponent bound",
        });
    }
    // The exponent as a modulus-sized integer (constant-time decode).
    let mut exp = BoxedUint::from_be_slice(exponent, mod_bits)
        .map_err(|_| CryptoError::OutOfRange { what: "exponent" })?;
    // `bits()` is the constant-time bit length; only "fits the bound or not"
    // is revealed, and a well-formed caller always fits.
    if exp.bit_width() > exponent_bits {
        exp.zeroize();
        return Err(CryptoError::OutOfRange { what: "exponent" });
    }
    // `Uint::from_be_slice` requires exactly `Uint::BYTES` bytes: `exp` has
    // exactly `mod_bits` of precision and `base` was checked to be
    // `modulus_len` bytes, which are the sizes of U2048 / U3072.
    let fixed = |walk| match group {
        DhGroup::Ffdhe2048 => pow_fixed(fixed_params_2048(), base, &exp, exponent_bits, walk),
        DhGroup::Ffdhe3072 => pow_fixed(fixed_params_3072(), base, &exp, exponent_bits, walk),
    };
    let out = match backend {
        MontyBackend::Fixed => fixed(FixedWalk::Montgomery),
        MontyBackend::FixedAmm => fixed(FixedWalk::AlmostMontgomery),
        MontyBackend::Boxed => pow_boxed(&group.consts().boxed, base, &exp, exponent_bits)?,
    };
    exp.zeroize();
    Ok(out)
}

/// Which window walk of `FixedMontyForm` [`pow_fixed`] runs (both
/// constant time in the exponent's value).
#[derive(Clone, Copy)]
enum FixedWalk {
    /// `pow_bounded_exp`: Montgomery multiplication throughout.
    Montgomery,
    /// `pow_amm_bounded_exp`: the same walk with almost-Montgomery
    /// multiplication and one final constant-time reduction.
    AlmostMontgomery,
}

/// Fixed-size (stack limbs) constant-time fixed-window exponentiation.
/// `base` and `exp` must be exactly `Uint::<L>::BYTES` long (checked by the
/// caller: `exp` has the modulus's precision); the fixed-size copy of the
/// exponent and every intermediate are zeroized.
fn pow_fixed<const L: usize>(
    params: &FixedMontyParams<L>,
    base: &[u8],
    exp: &BoxedUint,
    exponent_bits: u32,
    walk: FixedWalk,
) -> Zeroizing<Vec<u8>> {
    let mut e = Uint::<L>::from_be_slice(&Zeroizing::new(exp.to_be_bytes()));
    let b = Uint::<L>::from_be_slice(base);
    let form = FixedMontyForm::new(&b, params);
    let mut m = match walk {
        FixedWalk::Montgomery => form.pow_bounded_exp(&e, exponent_bits),
        FixedWalk::AlmostMontgomery => form.pow_amm_bounded_exp(&e, exponent_bits),
    };
    e.zeroize();
    let mut r = m.retrieve();
    m.zeroize();
    let out = Zeroizing::new(r.to_be_bytes().as_ref().to_vec());
    r.zeroize();
    out
}

/// `BoxedMontyForm::pow_bounded_exp` (almost-Montgomery, heap limbs).
fn pow_boxed(
    params: &BoxedMontyParams,
    base: &[u8],
    exponent: &BoxedUint,
    exponent_bits: u32,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let b = BoxedUint::from_be_slice(base, params.bits_precision()).map_err(|_| {
        CryptoError::OutOfRange {
            what: "modexp base",
        }
    })?;
    let mut m = BoxedMontyForm::new(b, params).pow_bounded_exp(exponent, exponent_bits);
    let mut r = m.retrieve();
    m.zeroize();
    let out = Zeroizing::new(r.to_be_bytes().to_vec());
    r.zeroize();
    Ok(out)
}

/// `base^exponent mod modulus` for any odd modulus >= 3 (used by the RFC
/// 5114 known-answer tests and the `num-bigint` property tests).
///
/// Calls `BoxedMontyForm::pow_bounded_exp(exponent, exponent_bits)`, which
/// is constant time in the exponent's value (fixed 4-bit windows, table
/// lookups by a full constant-time scan); only `exponent_bits` and the
/// operand sizes show in the timing. The result is big-endian, exactly as
/// long as `modulus` (leading zeros kept).
///
/// # Errors
/// [`CryptoError::BadModulus`] for an even modulus or one below 3;
/// [`CryptoError::OutOfRange`] for `base >= modulus` or an exponent with
/// more than `exponent_bits` bits.
pub fn modexp_ct(
    base: &[u8],
    exponent: &[u8],
    exponent_bits: u32,
    modulus: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let m = BoxedUint::from_be_slice_vartime(modulus);
    if m.bit_width_vartime() < 2 {
        return Err(CryptoError::BadModulus);
    }
    let m: Odd<BoxedUint> = Option::from(Odd::new(m)).ok_or(CryptoError::BadModulus)?;
    let precision = m.as_ref().bits_precision();
    let params = BoxedMontyParams::new_vartime(m.clone());
    let b = BoxedUint::from_be_slice(base, precision).map_err(|_| CryptoError::OutOfRange {
        what: "modexp base",
    })?;
    if b >= *m.as_ref() {
        return Err(CryptoError::OutOfRange {
            what: "modexp base",
        });
    }
    let exp_precision = exponent_bits.max(1);
    let mut exp = BoxedUint::from_be_slice(exponent, exp_precision.next_multiple_of(64))
        .map_err(|_| CryptoError::OutOfRange { what: "exponent" })?;
    if exp.bit_width() > exponent_bits {
        exp.zeroize();
        return Err(CryptoError::OutOfRange { what: "exponent" });
    }
    let mut z = BoxedMontyForm::new(b, &params).pow_bounded_exp(&exp, exponent_bits);
    exp.zeroize();
    let mut r = z.retrieve();
    z.zeroize();
    let bytes = r.to_be_bytes();
    r.zeroize();
    // `to_be_bytes` is limb-aligned; keep exactly the modulus length.
    let skip = bytes.len().saturating_sub(modulus.len());
    let out = Zeroizing::new(bytes.get(skip..).unwrap_or_default().to_vec());
    let mut bytes = bytes;
    bytes.zeroize();
    // Left-pad if the modulus slice carried extra leading zeros.
    if out.len() < modulus.len() {
        let mut padded = Zeroizing::new(vec![0u8; modulus.len() - out.len()]);
        padded.extend_from_slice(&out);
        return Ok(padded);
    }
    Ok(out)
}

/// A peer's (or our own) DH public value: exactly `modulus_len` bytes,
/// big-endian, checked to lie in `[2, p-2]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DhPublicKey {
    group: DhGroup,
    bytes: Vec<u8>,
}

impl DhPublicKey {
    /// Parses and validates a public value.
    ///
    /// # Errors
    /// [`CryptoError::BadLength`] unless `bytes.len() == group.modulus_len()`;
    /// [`CryptoError::PublicKeyOutOfRange`] unless `2 <= y <= p-2`.
    pub fn from_bytes(group: DhGroup, bytes: &[u8]) -> Result<Self, CryptoError> {
        let len = group.modulus_len();
        if bytes.len() != len {
            return Err(CryptoError::BadLength {
                what: "DH public key",
                expected: len,
                got: bytes.len(),
            });
        }
        // Equal-length big-endian strings compare like the integers they
        // encode. Public data, so a variable-time compare is fine.
        let (high, low) = bytes.split_at(len - 1);
        let below_two = high.iter().all(|&b| b == 0) && low.first().is_some_and(|&b| b < 2);
        if below_two || bytes > group.consts().p_minus_2.as_slice() {
            return Err(CryptoError::PublicKeyOutOfRange);
        }
        Ok(Self {
            group,
            bytes: bytes.to_vec(),
        })
    }

    /// The encoding: `modulus_len` bytes, big-endian.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The group this value belongs to.
    #[must_use]
    pub fn group(&self) -> DhGroup {
        self.group
    }
}

/// A DH private key: a 32-byte secret seed from which the exponent is
/// derived, plus the cached public value. Zeroized on drop; `Debug` shows
/// the group and public value only.
pub struct DhPrivateKey {
    group: DhGroup,
    seed: SecretKey<32>,
    public: DhPublicKey,
}

impl DhPrivateKey {
    /// A fresh key from a CSPRNG (retrying the 2^-255-likely seeds whose
    /// exponent is below 2).
    #[must_use]
    pub fn generate(group: DhGroup, rng: &mut impl CryptoRng) -> Self {
        loop {
            let seed = SecretKey::<32>::random(rng);
            if let Ok(key) = Self::from_seed(group, seed) {
                return key;
            }
        }
    }

    /// Rebuilds a key from its 32-byte seed (see [`DhPrivateKey::to_bytes`]).
    ///
    /// The exponent `x` is, per group:
    /// - `ffdhe2048`: the seed read as a 256-bit big-endian integer;
    /// - `ffdhe3072`: the 40-byte output of
    ///   `hkdf_expand_label(ikm = seed, label = LABEL_FFDHE3072_EXPONENT)`
    ///   read as a 320-bit big-endian integer (RFC 7919 §5.2 asks for at
    ///   least 275 bits).
    ///
    /// # Errors
    /// [`CryptoError::PrivateKeyOutOfRange`] if `x < 2`.
    pub fn from_bytes(group: DhGroup, bytes: &[u8; 32]) -> Result<Self, CryptoError> {
        Self::from_seed(group, SecretKey::from_slice(bytes)?)
    }

    fn from_seed(group: DhGroup, seed: SecretKey<32>) -> Result<Self, CryptoError> {
        let x = exponent_from_seed(group, &seed)?;
        let mut g = vec![0u8; group.modulus_len()];
        if let Some(last) = g.last_mut() {
            *last = GENERATOR;
        }
        let y = modexp_ct_in_group(group, DEFAULT_BACKEND, &g, &x, group.exponent_bits())?;
        let public = DhPublicKey::from_bytes(group, &y)?;
        Ok(Self {
            group,
            seed,
            public,
        })
    }

    /// The group.
    #[must_use]
    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// `g^x mod p` (computed once, at construction).
    #[must_use]
    pub fn public_key(&self) -> DhPublicKey {
        self.public.clone()
    }

    /// `Z = y_peer^x mod p`, exactly `modulus_len` bytes big-endian.
    ///
    /// # Errors
    /// [`CryptoError::UnknownGroup`] if `peer` is in another group (its id);
    /// [`CryptoError::SharedSecretIsOne`] if `Z == 1`.
    pub fn agree(&self, peer: &DhPublicKey) -> Result<SharedSecret, CryptoError> {
        if peer.group != self.group {
            return Err(CryptoError::UnknownGroup(peer.group.id()));
        }
        let x = exponent_from_seed(self.group, &self.seed)?;
        let z = modexp_ct_in_group(
            self.group,
            DEFAULT_BACKEND,
            &peer.bytes,
            &x,
            self.group.exponent_bits(),
        )?;
        // Z == 1, compared in constant time (the branch reveals only the
        // failure, which the caller reports anyway).
        let mut one = vec![0u8; z.len()];
        if let Some(last) = one.last_mut() {
            *last = 1;
        }
        if bool::from(z.as_slice().ct_eq(&one)) {
            return Err(CryptoError::SharedSecretIsOne);
        }
        Ok(SharedSecret {
            group: self.group,
            bytes: z,
        })
    }

    /// The 32-byte seed (store it encrypted; it is the whole private key).
    #[must_use]
    pub fn to_bytes(&self) -> SecretKey<32> {
        self.seed.duplicate()
    }
}

impl core::fmt::Debug for DhPrivateKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DhPrivateKey")
            .field("group", &self.group)
            .field("seed", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ZeroizeOnDrop for DhPrivateKey {}

/// The exponent bytes for `seed` in `group` (big-endian).
fn exponent_from_seed(
    group: DhGroup,
    seed: &SecretKey<32>,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let x = match group {
        DhGroup::Ffdhe2048 => Zeroizing::new(seed.expose().to_vec()),
        DhGroup::Ffdhe3072 => {
            let mut out = Zeroizing::new(vec![0u8; 40]);
            kdf::hkdf_expand_label(seed.expose(), &[], LABEL_FFDHE3072_EXPONENT, &[], &mut out)?;
            out
        }
    };
    // x >= 2: every byte but the last zero and the last below 2 means x < 2.
    let (high, low) = x.split_at(x.len().saturating_sub(1));
    let high_zero = high.iter().fold(0u8, |acc, &b| acc | b).ct_eq(&0);
    let low_small = low.first().map_or(1u8, |&b| b >> 1).ct_eq(&0);
    if bool::from(high_zero & low_small) {
        return Err(CryptoError::PrivateKeyOutOfRange);
    }
    Ok(x)
}

/// The raw shared secret `Z`: exactly `modulus_len` bytes, big-endian,
/// leading zeros kept. Feed it only to [`kdf::channel_keys`]; never use it
/// as a key directly. Zeroized on drop; `Debug` is redacted.
pub struct SharedSecret {
    group: DhGroup,
    bytes: Zeroizing<Vec<u8>>,
}

impl SharedSecret {
    /// `Z`, big-endian, `modulus_len` bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The group it came from.
    #[must_use]
    pub fn group(&self) -> DhGroup {
        self.group
    }
}

impl core::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SharedSecret({}, <redacted>)", self.group.name())
    }
}

impl ZeroizeOnDrop for SharedSecret {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn group_ids_round_trip_and_unknown_ids_fail() {
        for g in DhGroup::ALL {
            assert_eq!(DhGroup::from_id(g.id()).unwrap(), g);
            assert_eq!(g.modulus_bytes().len(), g.modulus_len());
        }
        assert_eq!(DhGroup::from_id(0), Err(CryptoError::UnknownGroup(0)));
        assert_eq!(DhGroup::from_id(3), Err(CryptoError::UnknownGroup(3)));
        assert_eq!(DhGroup::default(), DhGroup::Ffdhe2048);
    }

    #[test]
    fn exponent_bounds_meet_rfc7919_minimums() {
        assert!(DhGroup::Ffdhe2048.exponent_bits() >= 225);
        assert!(DhGroup::Ffdhe3072.exponent_bits() >= 275);
    }

    #[test]
    fn agreement_matches_for_both_groups() {
        let mut rng = rng();
        for g in DhGroup::ALL {
            let a = DhPrivateKey::generate(g, &mut rng);
            let b = DhPrivateKey::generate(g, &mut rng);
            let zab = a.agree(&b.public_key()).unwrap();
            let zba = b.agree(&a.public_key()).unwrap();
            assert_eq!(zab.as_bytes(), zba.as_bytes());
            assert_eq!(zab.as_bytes().len(), g.modulus_len());
        }
    }

    #[test]
    fn all_backends_agree() {
        let mut rng = rng();
        for g in DhGroup::ALL {
            let k = DhPrivateKey::generate(g, &mut rng);
            let base = k.public_key();
            let x = exponent_from_seed(g, &k.seed).unwrap();
            let bits = g.exponent_bits();
            let a = modexp_ct_in_group(g, MontyBackend::Fixed, base.as_bytes(), &x, bits).unwrap();
            let b =
                modexp_ct_in_group(g, MontyBackend::FixedAmm, base.as_bytes(), &x, bits).unwrap();
            let c = modexp_ct_in_group(g, MontyBackend::Boxed, base.as_bytes(), &x, bits).unwrap();
            let d = modexp_ct(base.as_bytes(), &x, bits, g.modulus_bytes()).unwrap();
            assert_eq!(*a, *b);
            assert_eq!(*a, *c);
            assert_eq!(*a, *d);
        }
    }

    #[test]
    fn public_key_range_is_enforced() {
        for g in DhGroup::ALL {
            let len = g.modulus_len();
            let p = g.modulus_bytes().to_vec();
            let mut v = vec![0u8; len];
            assert_eq!(
                DhPublicKey::from_bytes(g, &v),
                Err(CryptoError::PublicKeyOutOfRange)
            );
            v[len - 1] = 1;
            assert_eq!(
                DhPublicKey::from_bytes(g, &v),
                Err(CryptoError::PublicKeyOutOfRange)
            );
            v[len - 1] = 2;
            assert!(DhPublicKey::from_bytes(g, &v).is_ok());
            // p - 1 and p are out; p - 2 is in.
            let mut pm1 = p.clone();
            pm1[len - 1] -= 1;
            assert_eq!(
                DhPublicKey::from_bytes(g, &pm1),
                Err(CryptoError::PublicKeyOutOfRange)
            );
            assert_eq!(
                DhPublicKey::from_bytes(g, &p),
                Err(CryptoError::PublicKeyOutOfRange)
            );
            let mut pm2 = p.clone();
            pm2[len - 1] -= 2;
            assert!(DhPublicKey::from_bytes(g, &pm2).is_ok());
            assert!(matches!(
                DhPublicKey::from_bytes(g, &p[1..]),
                Err(CryptoError::BadLength { .. })
            ));
            assert_eq!(
                DhPublicKey::from_bytes(g, &[0xff; 512][..len]),
                Err(CryptoError::PublicKeyOutOfRange)
            );
        }
    }

    #[test]
    fn shared_secret_of_one_is_rejected() {
        // y = p-1 is out of range; to reach Z == 1 we need y whose order
        // divides x. With an even x, y = p-1 would give 1 but is rejected by
        // range; so test the check on the modexp layer: 1^x = 1 via a
        // hand-built public value bypassing validation.
        let g = DhGroup::Ffdhe2048;
        let k = DhPrivateKey::from_bytes(g, &[0x11; 32]).unwrap();
        let mut one = vec![0u8; g.modulus_len()];
        one[g.modulus_len() - 1] = 1;
        let forged = DhPublicKey {
            group: g,
            bytes: one,
        };
        assert!(matches!(
            k.agree(&forged),
            Err(CryptoError::SharedSecretIsOne)
        ));
    }

    #[test]
    fn tiny_exponents_are_refused() {
        let mut seed = [0u8; 32];
        assert_eq!(
            DhPrivateKey::from_bytes(DhGroup::Ffdhe2048, &seed).unwrap_err(),
            CryptoError::PrivateKeyOutOfRange
        );
        seed[31] = 1;
        assert!(DhPrivateKey::from_bytes(DhGroup::Ffdhe2048, &seed).is_err());
        seed[31] = 2;
        let k = DhPrivateKey::from_bytes(DhGroup::Ffdhe2048, &seed).unwrap();
        // 2^2 = 4
        assert_eq!(k.public_key().as_bytes()[255], 4);
        assert!(k.public_key().as_bytes()[..255].iter().all(|&b| b == 0));
    }

    #[test]
    fn seed_round_trip_and_cross_group_refusal() {
        let mut rng = rng();
        let a = DhPrivateKey::generate(DhGroup::Ffdhe2048, &mut rng);
        let again = DhPrivateKey::from_bytes(DhGroup::Ffdhe2048, a.to_bytes().expose()).unwrap();
        assert_eq!(a.public_key(), again.public_key());
        let b = DhPrivateKey::generate(DhGroup::Ffdhe3072, &mut rng);
        assert!(matches!(
            a.agree(&b.public_key()),
            Err(CryptoError::UnknownGroup(2))
        ));
        assert!(!format!("{a:?}").contains(&format!("{:?}", a.to_bytes().expose())));
    }

    #[test]
    fn modexp_ct_rejects_bad_inputs() {
        assert_eq!(modexp_ct(&[2], &[3], 8, &[4]), Err(CryptoError::BadModulus));
        assert_eq!(modexp_ct(&[0], &[3], 8, &[1]), Err(CryptoError::BadModulus));
        assert!(matches!(
            modexp_ct(&[7], &[3], 8, &[7]),
            Err(CryptoError::OutOfRange { .. })
        ));
        assert!(matches!(
            modexp_ct(&[2], &[0x01, 0x00], 8, &[7]),
            Err(CryptoError::OutOfRange { .. })
        ));
        // 3^5 mod 7 = 5, output as long as the modulus
        assert_eq!(*modexp_ct(&[3], &[5], 8, &[0, 7]).unwrap(), vec![0, 5]);
    }
}
