//! Sender-key distributions: a member's (group id, epoch, key id, chain key,
//! iteration, signing public key), sealed inside the pairwise envelope from
//! the sender to one recipient.
//!
//! The envelope's authenticated header names the sender and the recipient
//! ([`DistributionHeader`]) and the keys are the pairwise channel keys of
//! that direction (`channel_keys(Z, sender, recipient)`), so a distribution
//! reflected back to its sender, or replayed to another member, fails the
//! HMAC or the header check.

use rand_core::CryptoRng;
use zeroize::{Zeroize, Zeroizing};

use super::GroupError;
use crate::crypto::envelope;
use crate::crypto::kdf::EnvelopeKeys;
use crate::limits::MAX_ROSTER_NAME_BYTES;
use crate::membership::{GroupId, MembershipError, Reader};

/// Kind byte that opens a distribution's envelope header.
pub const DISTRIBUTION_KIND: u8 = 0x02;

/// Version byte that opens a distribution body.
pub const DISTRIBUTION_VERSION: u8 = 1;

/// Bytes of an encoded distribution body.
pub const DISTRIBUTION_LEN: usize = 1 + 16 + 8 + 4 + 4 + 32 + 32;

/// A member's sender key as given to another member.
pub struct Distribution {
    group_id: GroupId,
    epoch: u64,
    key_id: u32,
    iteration: u32,
    chain_key: Box<[u8; 32]>,
    signing_public: [u8; 32],
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.chain_key.zeroize();
    }
}

impl std::fmt::Debug for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distribution")
            .field("epoch", &self.epoch)
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .finish_non_exhaustive()
    }
}

impl Distribution {
    /// A distribution from its parts.
    pub fn new(
        group_id: GroupId,
        epoch: u64,
        key_id: u32,
        iteration: u32,
        chain_key: [u8; 32],
        signing_public: [u8; 32],
    ) -> Distribution {
        let mut ck = Zeroizing::new(chain_key);
        let chain_key = Box::new(*ck);
        ck.zeroize();
        Distribution {
            group_id,
            epoch,
            key_id,
            iteration,
            chain_key,
            signing_public,
        }
    }

    /// The group.
    pub fn group_id(&self) -> &GroupId {
        &self.group_id
    }
    /// The epoch at which it was first given.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// The sender key's id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }
    /// The chain iteration of `chain_key`.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }
    /// The chain key at `iteration`.
    pub fn chain_key(&self) -> &[u8; 32] {
        &self.chain_key
    }
    /// The sender key's Ed25519 signing public key.
    pub fn signing_public(&self) -> &[u8; 32] {
        &self.signing_public
    }

    /// The 97-byte body (`PROTOCOL.md` Part 2), zeroized on drop.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(DISTRIBUTION_LEN));
        out.push(DISTRIBUTION_VERSION);
        out.extend_from_slice(&self.group_id);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&self.iteration.to_be_bytes());
        out.extend_from_slice(self.chain_key.as_slice());
        out.extend_from_slice(&self.signing_public);
        out
    }

    /// Parses a body.
    ///
    /// # Errors
    /// [`GroupError::Malformed`] for a wrong version, truncation or trailing
    /// bytes.
    pub fn decode(bytes: &[u8]) -> Result<Distribution, GroupError> {
        let mut r = Reader::new(bytes);
        let inner = |r: &mut Reader<'_>| -> Result<Option<Distribution>, MembershipError> {
            if r.u8()? != DISTRIBUTION_VERSION {
                return Ok(None);
            }
            let group_id = r.array()?;
            let epoch = r.u64()?;
            let key_id = r.u32()?;
            let iteration = r.u32()?;
            let chain_key = Zeroizing::new(r.array::<32>()?);
            let signing_public = r.array()?;
            r.finish_ref()?;
            Ok(Some(Distribution::new(
                group_id,
                epoch,
                key_id,
                iteration,
                *chain_key,
                signing_public,
            )))
        };
        inner(&mut r)
            .map_err(|_| GroupError::Malformed("distribution"))?
            .ok_or(GroupError::Malformed("distribution version"))
    }

    /// Seals this distribution from `sender` to `recipient` under the
    /// pairwise keys of that direction.
    ///
    /// # Errors
    /// [`GroupError::Malformed`] for names out of range.
    pub fn seal(
        &self,
        keys: &EnvelopeKeys,
        sender: &str,
        recipient: &str,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<u8>, GroupError> {
        let header = DistributionHeader {
            sender: sender.to_owned(),
            recipient: recipient.to_owned(),
        }
        .encode()?;
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let mut out = Vec::new();
        envelope::seal_into(&mut out, keys, &header, &self.encode(), &nonce)?;
        Ok(out)
    }

    /// Opens a distribution sealed from `sender` to `recipient` with the
    /// pairwise keys of that direction, and checks the authenticated header
    /// names exactly that pair.
    ///
    /// # Errors
    /// [`GroupError::Crypto`] (HMAC or EAX), [`GroupError::Malformed`],
    /// [`GroupError::WrongParties`].
    pub fn open(
        keys: &EnvelopeKeys,
        sender: &str,
        recipient: &str,
        sealed: &[u8],
    ) -> Result<Distribution, GroupError> {
        let opened = envelope::open(keys, sealed)?;
        let header = DistributionHeader::decode(opened.header)?;
        if header.sender != sender || header.recipient != recipient {
            return Err(GroupError::WrongParties);
        }
        Distribution::decode(&opened.plaintext)
    }
}

/// The authenticated header of a distribution envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributionHeader {
    /// Who gives its sender key.
    pub sender: String,
    /// To whom.
    pub recipient: String,
}

impl DistributionHeader {
    /// `kind (0x02) ‖ u16 len ‖ sender ‖ u16 len ‖ recipient`.
    ///
    /// # Errors
    /// [`GroupError::Malformed`] for an empty or over-long name.
    pub fn encode(&self) -> Result<Vec<u8>, GroupError> {
        let mut out = vec![DISTRIBUTION_KIND];
        for name in [&self.sender, &self.recipient] {
            if name.is_empty() || name.len() > MAX_ROSTER_NAME_BYTES {
                return Err(GroupError::Malformed("distribution name"));
            }
            out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        Ok(out)
    }

    /// Parses a header.
    ///
    /// # Errors
    /// [`GroupError::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<DistributionHeader, GroupError> {
        let mut r = Reader::new(bytes);
        let inner = |r: &mut Reader<'_>| -> Result<Option<DistributionHeader>, MembershipError> {
            if r.u8()? != DISTRIBUTION_KIND {
                return Ok(None);
            }
            let sender = r.string(MAX_ROSTER_NAME_BYTES)?;
            let recipient = r.string(MAX_ROSTER_NAME_BYTES)?;
            r.finish_ref()?;
            Ok(Some(DistributionHeader { sender, recipient }))
        };
        inner(&mut r)
            .map_err(|_| GroupError::Malformed("distribution header"))?
            .ok_or(GroupError::Malformed("distribution kind"))
    }
}
