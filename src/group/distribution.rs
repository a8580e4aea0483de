//! Direct (pairwise) group messages: sender-key distributions (a member's
//! group id, epoch, key id, chain key, iteration and signing public key),
//! welcomes and key requests, each sealed inside the pairwise envelope from
//! the sender to one recipient.
//!
//! The envelope's authenticated header names the kind, the sender and the
//! recipient ([`DirectHeader`]) and the keys are the pairwise channel keys
//! of that direction (`channel_keys(Z, sender, recipient)`), so a message
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

/// Kind byte of a welcome's envelope header.
pub const WELCOME_KIND: u8 = 0x03;

/// Kind byte of a key request's envelope header.
pub const KEY_REQUEST_KIND: u8 = 0x04;

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
        seal_direct(
            DISTRIBUTION_KIND,
            keys,
            sender,
            recipient,
            &self.encode(),
            rng,
        )
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
        let body = open_direct(DISTRIBUTION_KIND, keys, sender, recipient, sealed)?;
        Distribution::decode(&body)
    }
}

/// Seals a direct (pairwise) group message body of `kind` from `sender` to
/// `recipient`: a crypto envelope whose header is a [`DirectHeader`], with
/// a random nonce.
///
/// # Errors
/// [`GroupError::Malformed`] for names out of range.
pub fn seal_direct(
    kind: u8,
    keys: &EnvelopeKeys,
    sender: &str,
    recipient: &str,
    body: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, GroupError> {
    let header = DirectHeader {
        kind,
        sender: sender.to_owned(),
        recipient: recipient.to_owned(),
    }
    .encode()?;
    let mut nonce = [0u8; 16];
    rng.fill_bytes(&mut nonce);
    let mut out = Vec::new();
    envelope::seal_into(&mut out, keys, &header, body, &nonce)?;
    Ok(out)
}

/// Opens a direct message of `kind` from `sender` to `recipient` (HMAC,
/// then EAX) and checks that the authenticated header names exactly that
/// kind and pair.
///
/// # Errors
/// [`GroupError::Crypto`], [`GroupError::Malformed`] (wrong kind or
/// header), [`GroupError::WrongParties`].
pub fn open_direct(
    kind: u8,
    keys: &EnvelopeKeys,
    sender: &str,
    recipient: &str,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, GroupError> {
    let opened = envelope::open(keys, sealed)?;
    let header = DirectHeader::decode(opened.header)?;
    if header.kind != kind {
        return Err(GroupError::Malformed("direct message kind"));
    }
    if header.sender != sender || header.recipient != recipient {
        return Err(GroupError::WrongParties);
    }
    Ok(opened.plaintext)
}

/// The authenticated header of a direct (pairwise) group message:
/// distribution, welcome or key request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectHeader {
    /// [`DISTRIBUTION_KIND`], [`WELCOME_KIND`] or [`KEY_REQUEST_KIND`].
    pub kind: u8,
    /// Who gives its sender key.
    pub sender: String,
    /// To whom.
    pub recipient: String,
}

impl DirectHeader {
    /// `kind ‖ u16 len ‖ sender ‖ u16 len ‖ recipient`.
    ///
    /// # Errors
    /// [`GroupError::Malformed`] for an empty or over-long name.
    pub fn encode(&self) -> Result<Vec<u8>, GroupError> {
        let mut out = vec![self.kind];
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
    pub fn decode(bytes: &[u8]) -> Result<DirectHeader, GroupError> {
        let mut r = Reader::new(bytes);
        let inner = |r: &mut Reader<'_>| -> Result<DirectHeader, MembershipError> {
            let kind = r.u8()?;
            let sender = r.string(MAX_ROSTER_NAME_BYTES)?;
            let recipient = r.string(MAX_ROSTER_NAME_BYTES)?;
            r.finish_ref()?;
            Ok(DirectHeader {
                kind,
                sender,
                recipient,
            })
        };
        inner(&mut r).map_err(|_| GroupError::Malformed("direct message header"))
    }
}

/// Version byte of welcome and key-request bodies.
pub const DIRECT_BODY_VERSION: u8 = 1;

/// The admin's welcome to a newcomer: the epoch and roster hash it was
/// added at, so the newcomer can check the commit log it fetched from the
/// relay against what the admin signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The group.
    pub group_id: GroupId,
    /// The epoch of the add commit.
    pub epoch: u64,
    /// The roster hash at that epoch.
    pub roster_hash: [u8; 32],
}

impl Welcome {
    /// `u8 version ‖ group id ‖ u64 epoch ‖ roster hash` (57 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(57);
        out.push(DIRECT_BODY_VERSION);
        out.extend_from_slice(&self.group_id);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.roster_hash);
        out
    }

    /// Parses a welcome body.
    ///
    /// # Errors
    /// [`GroupError::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<Welcome, GroupError> {
        let mut r = Reader::new(bytes);
        let inner = |r: &mut Reader<'_>| -> Result<Option<Welcome>, MembershipError> {
            if r.u8()? != DIRECT_BODY_VERSION {
                return Ok(None);
            }
            let w = Welcome {
                group_id: r.array()?,
                epoch: r.u64()?,
                roster_hash: r.array()?,
            };
            r.finish_ref()?;
            Ok(Some(w))
        };
        inner(&mut r)
            .map_err(|_| GroupError::Malformed("welcome"))?
            .ok_or(GroupError::Malformed("welcome version"))
    }
}

/// A request for a member's sender key (a message arrived before its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRequest {
    /// The group.
    pub group_id: GroupId,
    /// The key id the message named.
    pub key_id: u32,
}

impl KeyRequest {
    /// `u8 version ‖ group id ‖ u32 key id` (21 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(21);
        out.push(DIRECT_BODY_VERSION);
        out.extend_from_slice(&self.group_id);
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out
    }

    /// Parses a key-request body.
    ///
    /// # Errors
    /// [`GroupError::Malformed`].
    pub fn decode(bytes: &[u8]) -> Result<KeyRequest, GroupError> {
        let mut r = Reader::new(bytes);
        let inner = |r: &mut Reader<'_>| -> Result<Option<KeyRequest>, MembershipError> {
            if r.u8()? != DIRECT_BODY_VERSION {
                return Ok(None);
            }
            let k = KeyRequest {
                group_id: r.array()?,
                key_id: r.u32()?,
            };
            r.finish_ref()?;
            Ok(Some(k))
        };
        inner(&mut r)
            .map_err(|_| GroupError::Malformed("key request"))?
            .ok_or(GroupError::Malformed("key request version"))
    }
}
