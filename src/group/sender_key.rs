//! Sender keys: my own sending chain ([`SenderKey`]) and the chains of the
//! other members ([`ReceiverStore`]), the group message format, sealing and
//! opening.
//!
//! A group message is a crypto envelope (`PROTOCOL.md` Part 1) whose
//! authenticated header is a [`GroupMessageHeader`], followed by a 64-byte
//! Ed25519 signature of the sender key's signing key over
//! `u8(len(label)) ‖ label ‖ envelope` with label [`LABEL_GROUP_SIGNATURE`].
//!
//! Opening ([`ReceiverStore::open`]), after spec step numbers in `PROTOCOL.md`
//! Part 2:
//! 1. parse the header out of the envelope (no state touched);
//! 2. find the chain for (header sender, key id); none: [`GroupError::NoSenderKey`];
//! 3. verify the signature with that chain's signing key;
//! 4. find or derive the message key on a *copy* of the chain (skipped-key
//!    and forward-jump limits checked here);
//! 5. open the envelope: HMAC, then EAX;
//! 6. only now commit the copied chain, the new skipped keys, and evict.
//!
//! Any error leaves the store exactly as it was. The sender the caller acts
//! on is the chain's owner, which came from a distribution authenticated by
//! the pairwise channel, and is the signed header's sender; never a routing
//! field.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, VerifyingKey};
use rand_core::CryptoRng;
use zeroize::{Zeroize, Zeroizing};

use super::GroupError;
use super::distribution::Distribution;
use super::ratchet::{ChainKey, MessageKeys, MessageSeed};
use crate::crypto::envelope;
use crate::crypto::identity::SigningKeyPair;
use crate::crypto::kdf::EnvelopeKeys;
use crate::limits::{
    MAX_FORWARD_JUMP, MAX_GAP_ALLOWANCE, MAX_GROUP_PLAINTEXT_BYTES, MAX_ROSTER_NAME_BYTES,
    MAX_SENDER_KEYS_PER_SENDER, MAX_SKIPPED_KEY_AGE_MS, MAX_SKIPPED_KEYS_PER_CHAIN,
    MAX_SKIPPED_KEYS_TOTAL,
};
use crate::membership::{GroupId, MembershipError, Reader};

/// Kind byte that opens a group message header.
pub const GROUP_MESSAGE_KIND: u8 = 0x01;

/// Signature label of group messages.
pub const LABEL_GROUP_SIGNATURE: &str = "hermes/v1/group-message-signature";

/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// The authenticated header of a group message (`PROTOCOL.md` Part 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMessageHeader {
    /// The group.
    pub group_id: GroupId,
    /// The group epoch when the message was sent.
    pub epoch: u64,
    /// The sender's name.
    pub sender: String,
    /// The sender key's id.
    pub key_id: u32,
    /// The chain iteration of this message.
    pub iteration: u32,
    /// The sender's clock when sealing, Unix milliseconds.
    pub unix_ms: u64,
    /// Globally unique message id, chosen by the sender.
    pub message_id: [u8; 16],
}

impl GroupMessageHeader {
    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(GROUP_MESSAGE_KIND);
        out.extend_from_slice(&self.group_id);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        let name = self.sender.as_bytes();
        out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&self.iteration.to_be_bytes());
        out.extend_from_slice(&self.unix_ms.to_be_bytes());
        out.extend_from_slice(&self.message_id);
    }

    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.sender.len());
        self.encode_into(&mut out);
        out
    }

    /// Parses a header.
    ///
    /// # Errors
    /// [`GroupError::Malformed`] for a wrong kind, truncation, trailing
    /// bytes or an invalid sender name.
    pub fn decode(bytes: &[u8]) -> Result<GroupMessageHeader, GroupError> {
        let mut r = Reader::new(bytes);
        let inner = |r: &mut Reader<'_>| -> Result<Option<GroupMessageHeader>, MembershipError> {
            if r.u8()? != GROUP_MESSAGE_KIND {
                return Ok(None);
            }
            Ok(Some(GroupMessageHeader {
                group_id: r.array()?,
                epoch: r.u64()?,
                sender: r.string(MAX_ROSTER_NAME_BYTES)?,
                key_id: r.u32()?,
                iteration: r.u32()?,
                unix_ms: r.u64()?,
                message_id: r.array()?,
            }))
        };
        let header = inner(&mut r)
            .map_err(|_| GroupError::Malformed("group message header"))?
            .ok_or(GroupError::Malformed("group message kind"))?;
        r.finish()
            .map_err(|_| GroupError::Malformed("group message header"))?;
        Ok(header)
    }

    /// Splits a group message into (header, envelope, signature) without
    /// verifying anything (step 1 of opening).
    ///
    /// # Errors
    /// [`GroupError::Malformed`] if the message is too short or the
    /// envelope's header is not a group message header.
    pub fn peek(message: &[u8]) -> Result<(GroupMessageHeader, &[u8], [u8; 64]), GroupError> {
        let split = message
            .len()
            .checked_sub(SIGNATURE_LEN)
            .ok_or(GroupError::Malformed("group message too short"))?;
        let (env, sig) = message.split_at(split);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(sig);
        // Envelope layout (Part 1): version (1), header_len (u16), header.
        let mut r = Reader::new(env);
        let header_bytes = r
            .u8()
            .and_then(|_version| r.u16())
            .and_then(|len| r.bytes(usize::from(len)))
            .map_err(|_| GroupError::Malformed("group message envelope"))?;
        let header = GroupMessageHeader::decode(header_bytes)?;
        Ok((header, env, signature))
    }
}

fn signature_input(envelope: &[u8], out: &mut Vec<u8>) {
    out.push(u8::try_from(LABEL_GROUP_SIGNATURE.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(LABEL_GROUP_SIGNATURE.as_bytes());
    out.extend_from_slice(envelope);
}

fn envelope_keys(keys: &MessageKeys) -> EnvelopeKeys {
    let mut okm = Zeroizing::new([0u8; 48]);
    for (d, s) in okm.iter_mut().zip(keys.enc.iter().chain(keys.mac.iter())) {
        *d = *s;
    }
    EnvelopeKeys::from_okm(&okm)
}

/// The (epoch, iteration, chain key) first given to one member.
struct Given {
    epoch: u64,
    iteration: u32,
    chain_key: Box<[u8; 32]>,
}

impl Drop for Given {
    fn drop(&mut self) {
        self.chain_key.zeroize();
    }
}

/// My sending chain in one group: key id, chain, signing key pair, and what
/// I first gave each member under this key id.
pub struct SenderKey {
    group_id: GroupId,
    key_id: u32,
    chain: ChainKey,
    signing: SigningKeyPair,
    given: BTreeMap<String, Given>,
}

impl std::fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKey")
            .field("key_id", &self.key_id)
            .field("iteration", &self.chain.iteration())
            .field("given", &self.given.len())
            .finish_non_exhaustive()
    }
}

impl SenderKey {
    /// A fresh sender key: random chain key at iteration 0, fresh signing
    /// key pair.
    pub fn generate(group_id: GroupId, key_id: u32, rng: &mut impl CryptoRng) -> SenderKey {
        let mut ck = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(ck.as_mut_slice());
        SenderKey {
            group_id,
            key_id,
            chain: ChainKey::new(*ck, 0),
            signing: SigningKeyPair::generate(rng),
            given: BTreeMap::new(),
        }
    }

    /// Builds a sender key from known parts (tests, vectors, state files).
    pub fn from_parts(
        group_id: GroupId,
        key_id: u32,
        chain_key: [u8; 32],
        iteration: u32,
        signing_secret: &[u8; 32],
    ) -> SenderKey {
        SenderKey {
            group_id,
            key_id,
            chain: ChainKey::new(chain_key, iteration),
            signing: SigningKeyPair::from_secret_bytes(signing_secret),
            given: BTreeMap::new(),
        }
    }

    /// The group.
    pub fn group_id(&self) -> &GroupId {
        &self.group_id
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The iteration of the next message.
    pub fn iteration(&self) -> u32 {
        self.chain.iteration()
    }

    /// The signing public key that receivers verify with.
    pub fn signing_public(&self) -> [u8; 32] {
        self.signing.public_key()
    }

    /// My distribution for `member`: the one first given to it under this key
    /// id if there is one (re-sent exactly, so a message that arrived before
    /// its key can still be opened), else the current chain state, recorded
    /// as given.
    pub fn distribution_for(&mut self, member: &str, epoch: u64) -> Distribution {
        if let Some(d) = self.resend_for(member) {
            return d;
        }
        let given = Given {
            epoch,
            iteration: self.chain.iteration(),
            chain_key: Box::new(*self.chain.key_bytes()),
        };
        let d = self.distribution(&given);
        self.given.insert(member.to_owned(), given);
        d
    }

    /// Exactly the distribution first given to `member`, if any.
    pub fn resend_for(&self, member: &str) -> Option<Distribution> {
        self.given.get(member).map(|g| self.distribution(g))
    }

    /// Forgets what was given to `member` (it left or was removed; the caller
    /// rotates the key anyway).
    pub fn forget_member(&mut self, member: &str) {
        self.given.remove(member);
    }

    fn distribution(&self, g: &Given) -> Distribution {
        Distribution::new(
            self.group_id,
            g.epoch,
            self.key_id,
            g.iteration,
            *g.chain_key,
            self.signing.public_key(),
        )
    }

    /// Seals and signs a group message at the chain's current iteration and
    /// advances the chain (the used key is erased).
    ///
    /// # Errors
    /// [`GroupError::PlaintextTooLong`], [`GroupError::ChainExhausted`];
    /// the chain is unchanged then.
    pub fn seal(
        &mut self,
        epoch: u64,
        sender: &str,
        unix_ms: u64,
        message_id: [u8; 16],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, GroupError> {
        if plaintext.len() > MAX_GROUP_PLAINTEXT_BYTES {
            return Err(GroupError::PlaintextTooLong(plaintext.len()));
        }
        if sender.is_empty() || sender.len() > MAX_ROSTER_NAME_BYTES {
            return Err(GroupError::Malformed("sender name"));
        }
        let header = GroupMessageHeader {
            group_id: self.group_id,
            epoch,
            sender: sender.to_owned(),
            key_id: self.key_id,
            iteration: self.chain.iteration(),
            unix_ms,
            message_id,
        };
        let mut chain = self.chain.duplicate();
        let seed = chain.step()?;
        let keys = seed.keys();
        let mut hbuf = Vec::with_capacity(64 + sender.len());
        header.encode_into(&mut hbuf);
        let mut out =
            Vec::with_capacity(envelope::OVERHEAD + hbuf.len() + plaintext.len() + SIGNATURE_LEN);
        envelope::seal_into(
            &mut out,
            &envelope_keys(&keys),
            &hbuf,
            plaintext,
            &keys.nonce,
        )?;
        let mut input = Vec::with_capacity(1 + LABEL_GROUP_SIGNATURE.len() + out.len());
        signature_input(&out, &mut input);
        let signature = self.signing.sign(&input);
        out.extend_from_slice(&signature);
        self.chain = chain;
        Ok(out)
    }
}

/// A skipped message key kept for a late message.
struct Skipped {
    seed: MessageSeed,
    stored_unix_ms: u64,
}

/// One received chain: a member's sender key at one key id.
struct ReceiverChain {
    key_id: u32,
    epoch: u64,
    signing: VerifyingKey,
    /// The next iteration not yet derived.
    chain: ChainKey,
    skipped: BTreeMap<u32, Skipped>,
    /// Keys a gap notice lets us skip without storing.
    gap_allowance: u32,
}

/// How to get a message key, found without changing state (step 4).
enum Plan {
    /// The key is a stored skipped key.
    Skipped { iteration: u32, keys: MessageKeys },
    /// The key is ahead: commit `chain` and `new_skipped`.
    Forward {
        keys: MessageKeys,
        chain: ChainKey,
        new_skipped: Vec<MessageSeed>,
        allowance_used: u32,
    },
}

impl ReceiverChain {
    fn plan(&self, iteration: u32, now_unix_ms: u64) -> Result<Plan, GroupError> {
        let current = self.chain.iteration();
        if iteration < current {
            return match self.skipped.get(&iteration) {
                Some(s) if !expired(s.stored_unix_ms, now_unix_ms) => Ok(Plan::Skipped {
                    iteration,
                    keys: s.seed.keys(),
                }),
                _ => Err(GroupError::DuplicateOrExpired {
                    key_id: self.key_id,
                    iteration,
                }),
            };
        }
        let jump = iteration - current;
        let unstored = jump.min(self.gap_allowance);
        let to_store = jump - unstored;
        if to_store > MAX_FORWARD_JUMP {
            return Err(GroupError::TooFarAhead {
                key_id: self.key_id,
                iteration,
                current,
            });
        }
        // Keys beyond the per-chain limit would be evicted at once: derive
        // them without keeping them.
        let discard =
            to_store.saturating_sub(u32::try_from(MAX_SKIPPED_KEYS_PER_CHAIN).unwrap_or(u32::MAX));
        let mut chain = self.chain.duplicate();
        chain.skip(unstored + discard)?;
        let keep = to_store - discard;
        let mut new_skipped = Vec::with_capacity(usize::try_from(keep).unwrap_or(0));
        for _ in 0..keep {
            new_skipped.push(chain.step()?);
        }
        let seed = chain.step()?;
        Ok(Plan::Forward {
            keys: seed.keys(),
            chain,
            new_skipped,
            allowance_used: unstored,
        })
    }
}

fn expired(stored: u64, now: u64) -> bool {
    now.saturating_sub(stored) > MAX_SKIPPED_KEY_AGE_MS
}

/// A group message that verified and decrypted.
pub struct OpenedMessage {
    /// The signed header; `header.sender` is the verified sender.
    pub header: GroupMessageHeader,
    /// The plaintext, zeroized on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// What [`ReceiverStore::handle_distribution`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistributionOutcome {
    /// A new chain (first for this sender, or a higher key id) is installed.
    Installed,
    /// The same chain we already hold (a re-send): nothing changed.
    Duplicate,
}

/// The chains of the other members of one group, with their skipped keys.
///
/// Call order: [`ReceiverStore::handle_distribution`] for each verified
/// distribution, [`ReceiverStore::handle_gap`] for each gap notice,
/// [`ReceiverStore::open`] for each group message, and
/// [`ReceiverStore::forget_sender`] after a remove or leave.
#[derive(Default)]
pub struct ReceiverStore {
    group_id: GroupId,
    chains: BTreeMap<String, Vec<ReceiverChain>>,
    skipped_total: usize,
}

impl std::fmt::Debug for ReceiverStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverStore")
            .field("senders", &self.chains.len())
            .field("skipped_total", &self.skipped_total)
            .finish_non_exhaustive()
    }
}

impl ReceiverStore {
    /// An empty store for `group_id`.
    pub fn new(group_id: GroupId) -> ReceiverStore {
        ReceiverStore {
            group_id,
            chains: BTreeMap::new(),
            skipped_total: 0,
        }
    }

    /// The group.
    pub fn group_id(&self) -> &GroupId {
        &self.group_id
    }

    /// Total skipped keys held across all chains.
    pub fn skipped_total(&self) -> usize {
        self.skipped_total
    }

    /// Skipped keys held for `sender` at `key_id`.
    pub fn skipped_for(&self, sender: &str, key_id: u32) -> usize {
        self.chain(sender, key_id).map_or(0, |c| c.skipped.len())
    }

    /// The newest key id held for `sender` and its next iteration.
    pub fn current(&self, sender: &str) -> Option<(u32, u32)> {
        self.chains
            .get(sender)
            .and_then(|v| v.last())
            .map(|c| (c.key_id, c.chain.iteration()))
    }

    fn chain(&self, sender: &str, key_id: u32) -> Option<&ReceiverChain> {
        self.chains
            .get(sender)
            .and_then(|v| v.iter().find(|c| c.key_id == key_id))
    }

    /// Installs `sender`'s distribution. `sender` must come from the
    /// authenticated pairwise envelope the distribution arrived in, and be a
    /// member of the verified roster (the caller checks).
    ///
    /// # Errors
    /// [`GroupError::WrongGroup`]; [`GroupError::Rollback`] for a key id (or
    /// epoch) lower than one held, or the same key id at an earlier
    /// iteration; [`GroupError::ConflictingDistribution`] for the same key id
    /// with another signing key or chain; [`GroupError::BadSigningKey`].
    /// State is unchanged on error.
    pub fn handle_distribution(
        &mut self,
        sender: &str,
        d: &Distribution,
    ) -> Result<DistributionOutcome, GroupError> {
        if d.group_id() != &self.group_id {
            return Err(GroupError::WrongGroup);
        }
        let signing =
            VerifyingKey::from_bytes(d.signing_public()).map_err(|_| GroupError::BadSigningKey)?;
        if let Some(newest) = self.chains.get(sender).and_then(|v| v.last()) {
            if d.key_id() < newest.key_id || d.epoch() < newest.epoch {
                return Err(GroupError::Rollback {
                    held_key_id: newest.key_id,
                    got_key_id: d.key_id(),
                });
            }
            if d.key_id() == newest.key_id {
                if signing != newest.signing {
                    return Err(GroupError::ConflictingDistribution);
                }
                let current = newest.chain.iteration();
                if d.iteration() < current {
                    return Err(GroupError::Rollback {
                        held_key_id: newest.key_id,
                        got_key_id: d.key_id(),
                    });
                }
                // Same chain, same or later point: it must derive from ours.
                let mut probe = newest.chain.duplicate();
                if d.iteration() - current > MAX_FORWARD_JUMP {
                    return Err(GroupError::ConflictingDistribution);
                }
                probe.skip(d.iteration() - current)?;
                return if bool::from(subtle::ConstantTimeEq::ct_eq(
                    probe.key_bytes().as_slice(),
                    d.chain_key().as_slice(),
                )) {
                    Ok(DistributionOutcome::Duplicate)
                } else {
                    Err(GroupError::ConflictingDistribution)
                };
            }
        }
        let chains = self.chains.entry(sender.to_owned()).or_default();
        chains.push(ReceiverChain {
            key_id: d.key_id(),
            epoch: d.epoch(),
            signing,
            chain: ChainKey::new(*d.chain_key(), d.iteration()),
            skipped: BTreeMap::new(),
            gap_allowance: 0,
        });
        while chains.len() > MAX_SENDER_KEYS_PER_SENDER {
            let old = chains.remove(0);
            self.skipped_total -= old.skipped.len();
        }
        Ok(DistributionOutcome::Installed)
    }

    /// A gap notice: `dropped` messages from `sender` will never arrive, so
    /// the next jump on its newest chain may skip that many keys without
    /// storing them (capped at [`MAX_GAP_ALLOWANCE`]).
    pub fn handle_gap(&mut self, sender: &str, dropped: u32) {
        if let Some(c) = self.chains.get_mut(sender).and_then(|v| v.last_mut()) {
            c.gap_allowance = c
                .gap_allowance
                .saturating_add(dropped)
                .min(MAX_GAP_ALLOWANCE);
        }
    }

    /// The gap allowance of `sender`'s newest chain.
    pub fn gap_allowance(&self, sender: &str) -> Option<u32> {
        self.chains
            .get(sender)
            .and_then(|v| v.last())
            .map(|c| c.gap_allowance)
    }

    /// Drops every chain of `sender` (removed, or left).
    pub fn forget_sender(&mut self, sender: &str) {
        if let Some(v) = self.chains.remove(sender) {
            self.skipped_total -= v.iter().map(|c| c.skipped.len()).sum::<usize>();
        }
    }

    /// Drops skipped keys older than [`MAX_SKIPPED_KEY_AGE_MS`].
    pub fn expire(&mut self, now_unix_ms: u64) {
        for c in self.chains.values_mut().flatten() {
            let before = c.skipped.len();
            c.skipped
                .retain(|_, s| !expired(s.stored_unix_ms, now_unix_ms));
            self.skipped_total -= before - c.skipped.len();
        }
    }

    /// Verifies and decrypts a group message (steps in the module doc).
    ///
    /// # Errors
    /// [`GroupError::Malformed`], [`GroupError::WrongGroup`],
    /// [`GroupError::NoSenderKey`] (keep the message pending and request the
    /// key), [`GroupError::BadSignature`], [`GroupError::DuplicateOrExpired`],
    /// [`GroupError::TooFarAhead`], [`GroupError::Crypto`] (HMAC or EAX).
    /// The store is unchanged on every error.
    pub fn open(&mut self, message: &[u8], now_unix_ms: u64) -> Result<OpenedMessage, GroupError> {
        // Step 1.
        let (header, env, signature) = GroupMessageHeader::peek(message)?;
        if header.group_id != self.group_id {
            return Err(GroupError::WrongGroup);
        }
        // Step 2.
        let chain =
            self.chain(&header.sender, header.key_id)
                .ok_or_else(|| GroupError::NoSenderKey {
                    sender: header.sender.clone(),
                    key_id: header.key_id,
                })?;
        // Step 3.
        let mut input = Vec::with_capacity(1 + LABEL_GROUP_SIGNATURE.len() + env.len());
        signature_input(env, &mut input);
        chain
            .signing
            .verify_strict(&input, &Signature::from_bytes(&signature))
            .map_err(|_| GroupError::BadSignature)?;
        // Step 4.
        let plan = chain.plan(header.iteration, now_unix_ms)?;
        // Step 5.
        let keys = match &plan {
            Plan::Skipped { keys, .. } | Plan::Forward { keys, .. } => keys,
        };
        let opened = envelope::open(&envelope_keys(keys), env)?;
        let plaintext = opened.plaintext;
        // Step 6.
        self.commit(&header.sender, header.key_id, plan, now_unix_ms);
        Ok(OpenedMessage { header, plaintext })
    }

    fn commit(&mut self, sender: &str, key_id: u32, plan: Plan, now_unix_ms: u64) {
        let Some(chain) = self
            .chains
            .get_mut(sender)
            .and_then(|v| v.iter_mut().find(|c| c.key_id == key_id))
        else {
            return;
        };
        match plan {
            Plan::Skipped { iteration, .. } => {
                if chain.skipped.remove(&iteration).is_some() {
                    self.skipped_total -= 1;
                }
            }
            Plan::Forward {
                chain: next,
                new_skipped,
                allowance_used,
                ..
            } => {
                chain.chain = next;
                chain.gap_allowance -= allowance_used;
                self.skipped_total += new_skipped.len();
                for seed in new_skipped {
                    chain.skipped.insert(
                        seed.iteration(),
                        Skipped {
                            seed,
                            stored_unix_ms: now_unix_ms,
                        },
                    );
                }
                while chain.skipped.len() > MAX_SKIPPED_KEYS_PER_CHAIN {
                    if chain.skipped.pop_first().is_some() {
                        self.skipped_total -= 1;
                    }
                }
            }
        }
        self.expire(now_unix_ms);
        self.evict_total();
    }

    /// Evicts the oldest skipped keys (by storage time, then sender, key id
    /// and iteration) until at most [`MAX_SKIPPED_KEYS_TOTAL`] remain.
    fn evict_total(&mut self) {
        let excess = self.skipped_total.saturating_sub(MAX_SKIPPED_KEYS_TOTAL);
        if excess == 0 {
            return;
        }
        let mut all: Vec<(u64, String, u32, u32)> = Vec::with_capacity(self.skipped_total);
        for (sender, v) in &self.chains {
            for c in v {
                for (it, s) in &c.skipped {
                    all.push((s.stored_unix_ms, sender.clone(), c.key_id, *it));
                }
            }
        }
        all.sort_unstable();
        for (_, sender, key_id, it) in all.into_iter().take(excess) {
            if let Some(c) = self
                .chains
                .get_mut(&sender)
                .and_then(|v| v.iter_mut().find(|c| c.key_id == key_id))
                && c.skipped.remove(&it).is_some()
            {
                self.skipped_total -= 1;
            }
        }
    }
}

/// Version byte of the state encodings below (the client's own state file).
pub const SENDER_STATE_VERSION: u8 = 1;

fn put_name(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
}

fn state_err(_: MembershipError) -> GroupError {
    GroupError::Malformed("sender-key state")
}

impl SenderKey {
    /// Encodes the whole sender key for the client's encrypted state file
    /// (zeroized on drop): `u8 version ‖ group id ‖ u32 key id ‖ u32
    /// iteration ‖ chain key ‖ signing secret ‖ u32 count ‖ (str member ‖ u64
    /// epoch ‖ u32 iteration ‖ chain key) per member given`.
    pub fn to_state_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(100 + self.given.len() * 60));
        out.push(SENDER_STATE_VERSION);
        out.extend_from_slice(&self.group_id);
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&self.chain.iteration().to_be_bytes());
        out.extend_from_slice(self.chain.key_bytes());
        out.extend_from_slice(self.signing.to_secret_bytes().expose());
        out.extend_from_slice(
            &u32::try_from(self.given.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for (member, g) in &self.given {
            put_name(&mut out, member);
            out.extend_from_slice(&g.epoch.to_be_bytes());
            out.extend_from_slice(&g.iteration.to_be_bytes());
            out.extend_from_slice(g.chain_key.as_slice());
        }
        out
    }

    /// Decodes [`SenderKey::to_state_bytes`] (trusted input: the client's
    /// own authenticated state file; still parsed with every check).
    ///
    /// # Errors
    /// [`GroupError::Malformed`].
    pub fn from_state_bytes(bytes: &[u8]) -> Result<SenderKey, GroupError> {
        let mut r = Reader::new(bytes);
        if r.u8().map_err(state_err)? != SENDER_STATE_VERSION {
            return Err(GroupError::Malformed("sender-key state version"));
        }
        let group_id = r.array().map_err(state_err)?;
        let key_id = r.u32().map_err(state_err)?;
        let iteration = r.u32().map_err(state_err)?;
        let chain_key = Zeroizing::new(r.array::<32>().map_err(state_err)?);
        let secret = Zeroizing::new(r.array::<32>().map_err(state_err)?);
        let mut key = SenderKey::from_parts(group_id, key_id, *chain_key, iteration, &secret);
        let count = r.u32().map_err(state_err)?;
        for _ in 0..count {
            let member = r.string(MAX_ROSTER_NAME_BYTES).map_err(state_err)?;
            let epoch = r.u64().map_err(state_err)?;
            let iteration = r.u32().map_err(state_err)?;
            let ck = Zeroizing::new(r.array::<32>().map_err(state_err)?);
            key.given.insert(
                member,
                Given {
                    epoch,
                    iteration,
                    chain_key: Box::new(*ck),
                },
            );
        }
        r.finish().map_err(state_err)?;
        Ok(key)
    }
}

impl ReceiverStore {
    /// Encodes every chain and skipped key for the client's encrypted state
    /// file (zeroized on drop): `u8 version ‖ group id ‖ u32 senders ‖ per
    /// sender (str name ‖ u8 chains ‖ per chain (u32 key id ‖ u64 epoch ‖
    /// signing public ‖ u32 iteration ‖ chain key ‖ u32 gap allowance ‖ u32
    /// skipped ‖ per skipped (u32 iteration ‖ seed ‖ u64 stored unix ms)))`.
    pub fn to_state_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            32 + self.chains.len() * 128 + self.skipped_total * 44,
        ));
        out.push(SENDER_STATE_VERSION);
        out.extend_from_slice(&self.group_id);
        out.extend_from_slice(
            &u32::try_from(self.chains.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        for (sender, chains) in &self.chains {
            put_name(&mut out, sender);
            out.push(u8::try_from(chains.len()).unwrap_or(u8::MAX));
            for c in chains {
                out.extend_from_slice(&c.key_id.to_be_bytes());
                out.extend_from_slice(&c.epoch.to_be_bytes());
                out.extend_from_slice(c.signing.as_bytes());
                out.extend_from_slice(&c.chain.iteration().to_be_bytes());
                out.extend_from_slice(c.chain.key_bytes());
                out.extend_from_slice(&c.gap_allowance.to_be_bytes());
                out.extend_from_slice(
                    &u32::try_from(c.skipped.len())
                        .unwrap_or(u32::MAX)
                        .to_be_bytes(),
                );
                for (it, s) in &c.skipped {
                    out.extend_from_slice(&it.to_be_bytes());
                    out.extend_from_slice(s.seed.as_bytes());
                    out.extend_from_slice(&s.stored_unix_ms.to_be_bytes());
                }
            }
        }
        out
    }

    /// Decodes [`ReceiverStore::to_state_bytes`], enforcing every limit.
    ///
    /// # Errors
    /// [`GroupError::Malformed`], [`GroupError::BadSigningKey`].
    pub fn from_state_bytes(bytes: &[u8]) -> Result<ReceiverStore, GroupError> {
        let mut r = Reader::new(bytes);
        if r.u8().map_err(state_err)? != SENDER_STATE_VERSION {
            return Err(GroupError::Malformed("receiver state version"));
        }
        let mut store = ReceiverStore::new(r.array().map_err(state_err)?);
        let senders = r.u32().map_err(state_err)?;
        for _ in 0..senders {
            let sender = r.string(MAX_ROSTER_NAME_BYTES).map_err(state_err)?;
            let n = usize::from(r.u8().map_err(state_err)?);
            if n > MAX_SENDER_KEYS_PER_SENDER {
                return Err(GroupError::Malformed("receiver state: too many chains"));
            }
            let mut chains = Vec::with_capacity(n);
            for _ in 0..n {
                let key_id = r.u32().map_err(state_err)?;
                let epoch = r.u64().map_err(state_err)?;
                let signing = VerifyingKey::from_bytes(&r.array().map_err(state_err)?)
                    .map_err(|_| GroupError::BadSigningKey)?;
                let iteration = r.u32().map_err(state_err)?;
                let ck = Zeroizing::new(r.array::<32>().map_err(state_err)?);
                let gap_allowance = r.u32().map_err(state_err)?.min(MAX_GAP_ALLOWANCE);
                let count = r.u32().map_err(state_err)? as usize;
                if count > MAX_SKIPPED_KEYS_PER_CHAIN {
                    return Err(GroupError::Malformed(
                        "receiver state: too many skipped keys",
                    ));
                }
                let mut skipped = BTreeMap::new();
                for _ in 0..count {
                    let it = r.u32().map_err(state_err)?;
                    let seed = MessageSeed::from_parts(r.array().map_err(state_err)?, it);
                    let stored_unix_ms = r.u64().map_err(state_err)?;
                    skipped.insert(
                        it,
                        Skipped {
                            seed,
                            stored_unix_ms,
                        },
                    );
                }
                store.skipped_total += skipped.len();
                chains.push(ReceiverChain {
                    key_id,
                    epoch,
                    signing,
                    chain: ChainKey::new(*ck, iteration),
                    skipped,
                    gap_allowance,
                });
            }
            store.chains.insert(sender, chains);
        }
        r.finish().map_err(state_err)?;
        if store.skipped_total > MAX_SKIPPED_KEYS_TOTAL {
            return Err(GroupError::Malformed(
                "receiver state: too many skipped keys",
            ));
        }
        Ok(store)
    }
}
