//! The sender-key chain: Signal's symmetric ratchet with an iteration counter.
//!
//! ```text
//!   chain key ck_i ──HMAC(ck_i, 0x01)──► message seed_i ──HKDF──► enc ‖ mac ‖ nonce
//!        │
//!        └──HMAC(ck_i, 0x02)──► ck_{i+1}
//! ```
//!
//! 1. `seed_i = HMAC-SHA256(ck_i, 0x01)`
//! 2. `ck_{i+1} = HMAC-SHA256(ck_i, 0x02)`
//! 3. `okm = HKDF-SHA256(salt = "", ikm = seed_i, info = u16(len(label)) ‖
//!    label ‖ u16(4) ‖ u32(i), L = 64)` with label [`LABEL_MESSAGE_KEYS`];
//!    `enc = okm[0..16]` (AES-128-EAX), `mac = okm[16..48]` (HMAC-SHA256),
//!    `nonce = okm[48..64]` (the EAX nonce; every message key is used once).
//!
//! The chain key lives in a `Box` that is overwritten in place at every step
//! and zeroized on drop; seeds and expanded keys are zeroizing arrays.

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::GroupError;

/// HKDF label of the per-message keys (see the module doc, step 3).
pub const LABEL_MESSAGE_KEYS: &str = "hermes/v1/group-message-keys";

/// Byte that derives a message seed from a chain key.
pub const MESSAGE_SEED_BYTE: u8 = 0x01;

/// Byte that derives the next chain key.
pub const CHAIN_STEP_BYTE: u8 = 0x02;

/// HMAC-SHA256 keyed by a 32-byte key, without the `Result` of
/// `new_from_slice`: the key is zero-padded to the block size, which is what
/// HMAC does with a short key anyway (RFC 2104, step 1).
fn keyed(key: &[u8; 32]) -> Hmac<Sha256> {
    let mut block = hmac::digest::Key::<Hmac<Sha256>>::default();
    for (d, s) in block.iter_mut().zip(key.iter()) {
        *d = *s;
    }
    let mac = <Hmac<Sha256> as KeyInit>::new(&block);
    block.as_mut_slice().zeroize();
    mac
}

fn finish(mac: Hmac<Sha256>, byte: u8, out: &mut [u8; 32]) {
    let mut mac = mac;
    mac.update(&[byte]);
    let tag = mac.finalize().into_bytes();
    for (d, s) in out.iter_mut().zip(tag.iter()) {
        *d = *s;
    }
}

/// A chain key and the iteration of the next message key it yields.
///
/// Not `Clone`: [`ChainKey::duplicate`] makes an explicit copy.
pub struct ChainKey {
    key: Box<[u8; 32]>,
    iteration: u32,
}

impl Drop for ChainKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainKey")
            .field("iteration", &self.iteration)
            .finish_non_exhaustive()
    }
}

impl ChainKey {
    /// A chain at `iteration` with key `key`.
    pub fn new(key: [u8; 32], iteration: u32) -> ChainKey {
        let mut key = Zeroizing::new(key);
        let boxed = Box::new(*key);
        key.zeroize();
        ChainKey {
            key: boxed,
            iteration,
        }
    }

    /// The iteration of the next message key.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// The chain key bytes (for distributions).
    pub fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// An explicit copy.
    pub fn duplicate(&self) -> ChainKey {
        ChainKey::new(*self.key, self.iteration)
    }

    /// Derives the message seed at the current iteration and advances the
    /// chain by one, overwriting the old chain key (steps 1 and 2).
    ///
    /// # Errors
    /// [`GroupError::ChainExhausted`] at iteration `u32::MAX`; the chain is
    /// unchanged then.
    pub fn step(&mut self) -> Result<MessageSeed, GroupError> {
        let next_iteration = self
            .iteration
            .checked_add(1)
            .ok_or(GroupError::ChainExhausted)?;
        let mac = keyed(&self.key);
        let mut seed = MessageSeed {
            seed: [0; 32],
            iteration: self.iteration,
        };
        finish(mac.clone(), MESSAGE_SEED_BYTE, &mut seed.seed);
        finish(mac, CHAIN_STEP_BYTE, &mut self.key);
        self.iteration = next_iteration;
        Ok(seed)
    }

    /// Advances `n` steps without keeping the seeds.
    ///
    /// # Errors
    /// [`GroupError::ChainExhausted`] if the iteration would pass `u32::MAX`;
    /// the chain is unchanged then.
    pub fn skip(&mut self, n: u32) -> Result<(), GroupError> {
        if self.iteration.checked_add(n).is_none() {
            return Err(GroupError::ChainExhausted);
        }
        for _ in 0..n {
            let mac = keyed(&self.key);
            finish(mac, CHAIN_STEP_BYTE, &mut self.key);
        }
        self.iteration += n;
        Ok(())
    }
}

/// The seed of one message key (step 1), zeroized on drop.
pub struct MessageSeed {
    seed: [u8; 32],
    iteration: u32,
}

impl Drop for MessageSeed {
    fn drop(&mut self) {
        self.seed.zeroize();
    }
}

impl MessageSeed {
    /// A seed from stored bytes (the client's state file).
    pub(crate) fn from_parts(seed: [u8; 32], iteration: u32) -> MessageSeed {
        MessageSeed { seed, iteration }
    }

    /// The iteration this seed belongs to.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// The seed bytes (for test vectors).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.seed
    }

    /// Expands the seed into the message's keys (step 3).
    pub fn keys(&self) -> MessageKeys {
        let hk = Hkdf::<Sha256>::new(Some(&[]), &self.seed);
        let mut info = [0u8; 2 + LABEL_MESSAGE_KEYS.len() + 2 + 4];
        let label_len = u16::try_from(LABEL_MESSAGE_KEYS.len()).unwrap_or(u16::MAX);
        let parts = label_len
            .to_be_bytes()
            .into_iter()
            .chain(LABEL_MESSAGE_KEYS.bytes())
            .chain(4u16.to_be_bytes())
            .chain(self.iteration.to_be_bytes());
        for (d, s) in info.iter_mut().zip(parts) {
            *d = s;
        }
        let mut okm = [0u8; 64];
        // 64 bytes is far below HKDF-SHA256's 8,160-byte maximum.
        let _ = hk.expand(&info, &mut okm);
        let mut keys = MessageKeys {
            enc: [0; 16],
            mac: [0; 32],
            nonce: [0; 16],
        };
        let (enc, rest) = okm.split_at(16);
        let (mac, nonce) = rest.split_at(32);
        keys.enc.copy_from_slice(enc);
        keys.mac.copy_from_slice(mac);
        keys.nonce.copy_from_slice(nonce);
        okm.zeroize();
        keys
    }
}

/// One message's keys (step 3), zeroized on drop.
pub struct MessageKeys {
    /// AES-128-EAX key.
    pub enc: [u8; 16],
    /// HMAC-SHA256 key of the envelope.
    pub mac: [u8; 32],
    /// EAX nonce.
    pub nonce: [u8; 16],
}

impl Drop for MessageKeys {
    fn drop(&mut self) {
        self.enc.zeroize();
        self.mac.zeroize();
        self.nonce.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::Mac;

    fn reference_hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().into()
    }

    #[test]
    fn step_matches_plain_hmac() {
        let ck0 = [0x42u8; 32];
        let mut chain = ChainKey::new(ck0, 7);
        let seed = chain.step().unwrap();
        assert_eq!(seed.iteration(), 7);
        assert_eq!(seed.as_bytes(), &reference_hmac(&ck0, &[1]));
        assert_eq!(chain.key_bytes(), &reference_hmac(&ck0, &[2]));
        assert_eq!(chain.iteration(), 8);
    }

    #[test]
    fn skip_equals_steps() {
        let mut a = ChainKey::new([9; 32], 0);
        let mut b = a.duplicate();
        a.skip(10).unwrap();
        for _ in 0..10 {
            b.step().unwrap();
        }
        assert_eq!(a.key_bytes(), b.key_bytes());
        assert_eq!(a.iteration(), 10);
        assert_eq!(a.step().unwrap().as_bytes(), b.step().unwrap().as_bytes());
    }

    #[test]
    fn exhausted_chain_is_unchanged() {
        let mut c = ChainKey::new([1; 32], u32::MAX);
        let before = *c.key_bytes();
        assert!(matches!(c.step(), Err(GroupError::ChainExhausted)));
        assert!(matches!(c.skip(1), Err(GroupError::ChainExhausted)));
        assert_eq!(c.key_bytes(), &before);
        let mut c = ChainKey::new([1; 32], u32::MAX - 2);
        assert!(matches!(c.skip(3), Err(GroupError::ChainExhausted)));
        c.skip(2).unwrap();
        assert_eq!(c.iteration(), u32::MAX);
    }

    #[test]
    fn keys_differ_by_iteration_and_match_hkdf() {
        let seed = MessageSeed {
            seed: [3; 32],
            iteration: 5,
        };
        let k = seed.keys();
        let hk = Hkdf::<Sha256>::new(None, &[3; 32]);
        let mut info = Vec::new();
        info.extend_from_slice(
            &u16::try_from(LABEL_MESSAGE_KEYS.len())
                .unwrap()
                .to_be_bytes(),
        );
        info.extend_from_slice(LABEL_MESSAGE_KEYS.as_bytes());
        info.extend_from_slice(&4u16.to_be_bytes());
        info.extend_from_slice(&5u32.to_be_bytes());
        let mut okm = [0u8; 64];
        hk.expand(&info, &mut okm).unwrap();
        assert_eq!(k.enc, okm[..16]);
        assert_eq!(k.mac, okm[16..48]);
        assert_eq!(k.nonce, okm[48..]);
        let other = MessageSeed {
            seed: [3; 32],
            iteration: 6,
        }
        .keys();
        assert_ne!(other.enc, k.enc);
    }
}
