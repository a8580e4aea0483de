//! Signed group membership: genesis and commits, rosters, epochs.
//!
//! This is the one membership module that both the relay core and the client
//! import (DESIGN.md, "One membership module"). It is pure and needs only
//! Ed25519 signature checks (`crypto::identity::verify_signature`, strict):
//! it imports no DH, no envelope and nothing from `group`.
//!
//! ```text
//!   genesis commit (epoch 0) ──► GroupState::from_genesis ──► state@0
//!   commit (epoch 1)  ──► state@0.apply(commit) ──► state@1
//!   commit (epoch 2)  ──► state@1.apply(commit) ──► state@2   ...
//! ```
//!
//! A [`GroupState`] only ever comes out of a verified genesis or a verified
//! commit, so holding one is the proof that every check ran. [`GroupState::apply`]
//! never changes `self`: it returns the next state or an error, and a client
//! that gets an error freezes the group (DESIGN.md, "Genesis and roster").
//!
//! Checks made by [`GroupState::apply`], in order:
//! 1. the group is not dissolved and the group id matches;
//! 2. the epoch is exactly the current epoch plus one;
//! 3. the signer is a member and has the authority for the operation (the
//!    admin for add, remove and transfer-admin; the leaver itself for leave);
//! 4. the Ed25519 signature verifies under the signer's roster key;
//! 5. the operation is valid on the roster (target present or absent, target
//!    key equal to its roster key, size limit);
//! 6. the commit's roster hash equals the hash of the resulting roster.
//!
//! Names arrive here already NFC-normalised (the relay and client do that);
//! this module compares them byte for byte. `PROTOCOL.md`, "Part 2", has every
//! byte of the encodings below.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::limits::{
    MAX_GROUP_DISPLAY_NAME_BYTES, MAX_GROUP_MEMBERS, MAX_PUBLIC_IDENTITY_BYTES,
    MAX_ROSTER_NAME_BYTES,
};

/// A group id: 128 random bits chosen by the creator.
pub type GroupId = [u8; 16];

/// An Ed25519 identity (verifying) key, as 32 bytes.
pub type IdentityKey = [u8; 32];

/// Version byte that opens every encoded commit.
pub const COMMIT_VERSION: u8 = 1;

/// Version byte of [`GroupState::to_state_bytes`].
pub const STATE_VERSION: u8 = 1;

/// Domain-separation label of the commit signature input.
pub const COMMIT_SIGNATURE_LABEL: &[u8] = b"Hermes membership commit v1";

/// Domain-separation label of the roster hash input.
pub const ROSTER_HASH_LABEL: &[u8] = b"Hermes roster v1";

/// Everything that can be wrong with a commit or an encoded commit.
///
/// Variants carry names and numbers, never key bytes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MembershipError {
    /// The encoding ended before a field was complete.
    #[error("commit truncated")]
    Truncated,
    /// Bytes were left over after the last field.
    #[error("{0} trailing bytes after commit")]
    TrailingBytes(usize),
    /// The version byte is not one this build knows.
    #[error("unknown commit version {0}")]
    UnknownVersion(u8),
    /// The operation tag is not one this build knows.
    #[error("unknown commit operation {0}")]
    UnknownOperation(u8),
    /// A name or display name is empty, too long or not UTF-8.
    #[error("invalid name in commit")]
    InvalidName,
    /// An encoded public identity is empty or longer than the limit.
    #[error("public identity of {0} bytes is out of range")]
    InvalidPublicIdentity(usize),
    /// The roster would exceed [`MAX_GROUP_MEMBERS`].
    #[error("roster of {count} members exceeds the limit of {max}")]
    TooManyMembers {
        /// Members the roster would have.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A genesis roster is not sorted by name, or names repeat.
    #[error("genesis roster not strictly sorted by name")]
    UnsortedRoster,
    /// The genesis signer is not in its own roster.
    #[error("genesis admin {0:?} not in the roster")]
    AdminNotMember(String),
    /// A genesis was given where a commit was expected, or the reverse.
    #[error("expected a {expected} commit")]
    WrongKind {
        /// "genesis" or "non-genesis".
        expected: &'static str,
    },
    /// The commit is for another group.
    #[error("commit for another group")]
    WrongGroup,
    /// The group was dissolved; nothing applies any more.
    #[error("group dissolved")]
    Dissolved,
    /// The commit's epoch is not the next one (replay, skip or fork).
    #[error("commit epoch {got}, expected {expected}")]
    EpochMismatch {
        /// The epoch this state accepts next.
        expected: u64,
        /// The epoch in the commit.
        got: u64,
    },
    /// The signer is not a member of the group.
    #[error("signer {0:?} is not a member")]
    SignerNotMember(String),
    /// The signer may not make this change.
    #[error("{signer:?} may not {operation}")]
    NotAuthorized {
        /// Who signed.
        signer: String,
        /// The operation name.
        operation: &'static str,
    },
    /// The Ed25519 signature does not verify.
    #[error("bad commit signature")]
    BadSignature,
    /// The target of a remove, leave or transfer is not a member.
    #[error("{0:?} is not a member")]
    NotMember(String),
    /// The target of an add is already a member.
    #[error("{0:?} is already a member")]
    AlreadyMember(String),
    /// The target key in the commit is not the target's roster key.
    #[error("identity key of {0:?} does not match the roster")]
    KeyMismatch(String),
    /// The roster hash in the commit is not the hash of the resulting roster.
    #[error("roster hash mismatch")]
    RosterHashMismatch,
    /// The epoch counter would overflow.
    #[error("epoch overflow")]
    EpochOverflow,
}

/// A membership change, as carried in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Epoch 0: creates the group. The signer is the admin and must be in
    /// `members`, which is strictly sorted by name bytes.
    Genesis {
        /// A label for humans, not a key.
        display_name: String,
        /// The initial roster, sorted by name, admin included.
        members: Vec<(String, IdentityKey)>,
    },
    /// The admin adds `name` with identity key `identity_key`.
    Add {
        /// The newcomer.
        name: String,
        /// The newcomer's Ed25519 identity key (enters the roster).
        identity_key: IdentityKey,
        /// The newcomer's encoded public identity (signing key, certified DH
        /// key) as the crypto layer encodes it; opaque to this module. The
        /// client checks that it decodes, that its certificate verifies and
        /// that its signing key equals `identity_key`.
        public_identity: Vec<u8>,
    },
    /// The admin removes `name` (not itself).
    Remove {
        /// The member removed.
        name: String,
        /// Its roster key.
        identity_key: IdentityKey,
    },
    /// `name` leaves, signing itself. If `name` is the admin, the group is
    /// dissolved.
    Leave {
        /// The member leaving (the signer).
        name: String,
        /// Its roster key.
        identity_key: IdentityKey,
    },
    /// The admin hands the admin role to another member.
    TransferAdmin {
        /// The new admin.
        name: String,
        /// Its roster key.
        identity_key: IdentityKey,
    },
}

impl Operation {
    /// The operation's tag byte on the wire.
    pub fn tag(&self) -> u8 {
        match self {
            Operation::Genesis { .. } => 0,
            Operation::Add { .. } => 1,
            Operation::Remove { .. } => 2,
            Operation::Leave { .. } => 3,
            Operation::TransferAdmin { .. } => 4,
        }
    }

    /// A short name for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Genesis { .. } => "genesis",
            Operation::Add { .. } => "add",
            Operation::Remove { .. } => "remove",
            Operation::Leave { .. } => "leave",
            Operation::TransferAdmin { .. } => "transfer-admin",
        }
    }

    /// The member the operation is about (`None` for genesis).
    pub fn target(&self) -> Option<(&str, &IdentityKey)> {
        match self {
            Operation::Genesis { .. } => None,
            Operation::Add {
                name, identity_key, ..
            }
            | Operation::Remove { name, identity_key }
            | Operation::Leave { name, identity_key }
            | Operation::TransferAdmin { name, identity_key } => Some((name, identity_key)),
        }
    }
}

/// A signed membership commit (a genesis is the commit of epoch 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The group this commit belongs to.
    pub group_id: GroupId,
    /// The epoch this commit creates (0 for genesis).
    pub epoch: u64,
    /// The change.
    pub op: Operation,
    /// SHA-256 of the roster after the change ([`GroupState::roster_hash`]).
    pub roster_hash: [u8; 32],
    /// The member who signed (its roster key verifies `signature`).
    pub signer: String,
    /// Ed25519 signature over [`Commit::signing_input`].
    pub signature: [u8; 64],
}

impl Commit {
    /// Builds and signs a commit. `sign` is the signer's Ed25519 signing
    /// function (for example `|m| keys.sign(m)`), so this module never holds a
    /// private key.
    pub fn sign(
        group_id: GroupId,
        epoch: u64,
        op: Operation,
        roster_hash: [u8; 32],
        signer: String,
        sign: impl FnOnce(&[u8]) -> [u8; 64],
    ) -> Commit {
        let mut commit = Commit {
            group_id,
            epoch,
            op,
            roster_hash,
            signer,
            signature: [0; 64],
        };
        commit.signature = sign(&commit.signing_input());
        commit
    }

    /// Builds and signs the genesis commit of a new group. `members` may be
    /// in any order (it is sorted here) and must include `admin`.
    ///
    /// # Errors
    /// Anything [`GroupState::from_genesis`] would reject except the
    /// signature: bad names, duplicates, admin missing, too many members.
    pub fn genesis(
        group_id: GroupId,
        display_name: String,
        admin: String,
        mut members: Vec<(String, IdentityKey)>,
        sign: impl FnOnce(&[u8]) -> [u8; 64],
    ) -> Result<Commit, MembershipError> {
        members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let op = Operation::Genesis {
            display_name,
            members,
        };
        let state = GroupState::genesis_state(group_id, &op, &admin)?;
        Ok(Commit::sign(
            group_id,
            0,
            op,
            state.roster_hash(),
            admin,
            sign,
        ))
    }

    /// The encoding without the signature (see `PROTOCOL.md`).
    fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(COMMIT_VERSION);
        out.extend_from_slice(&self.group_id);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.push(self.op.tag());
        match &self.op {
            Operation::Genesis {
                display_name,
                members,
            } => {
                put_str(out, display_name);
                put_u32_len(out, members.len());
                for (name, key) in members {
                    put_str(out, name);
                    out.extend_from_slice(key);
                }
            }
            Operation::Add {
                name,
                identity_key,
                public_identity,
            } => {
                put_str(out, name);
                out.extend_from_slice(identity_key);
                put_u16_len(out, public_identity.len());
                out.extend_from_slice(public_identity);
            }
            Operation::Remove { name, identity_key }
            | Operation::Leave { name, identity_key }
            | Operation::TransferAdmin { name, identity_key } => {
                put_str(out, name);
                out.extend_from_slice(identity_key);
            }
        }
        out.extend_from_slice(&self.roster_hash);
        put_str(out, &self.signer);
    }

    /// The bytes the signer signs: `u8 len ‖ COMMIT_SIGNATURE_LABEL ‖ body`.
    pub fn signing_input(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        put_label(&mut out, COMMIT_SIGNATURE_LABEL);
        self.encode_body(&mut out);
        out
    }

    /// The wire encoding: body followed by the 64-byte signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode_body(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses an encoded commit. Checks structure and limits only; the
    /// signature and the authority are checked by [`GroupState`].
    ///
    /// # Errors
    /// [`MembershipError::Truncated`], [`MembershipError::TrailingBytes`],
    /// unknown version or operation, invalid names, identities out of range,
    /// too many members, an unsorted genesis roster.
    pub fn decode(bytes: &[u8]) -> Result<Commit, MembershipError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != COMMIT_VERSION {
            return Err(MembershipError::UnknownVersion(version));
        }
        let group_id = r.array::<16>()?;
        let epoch = r.u64()?;
        let tag = r.u8()?;
        let op = match tag {
            0 => {
                let display_name = r.string(MAX_GROUP_DISPLAY_NAME_BYTES)?;
                let members = read_roster(&mut r)?;
                Operation::Genesis {
                    display_name,
                    members,
                }
            }
            1 => {
                let name = r.string(MAX_ROSTER_NAME_BYTES)?;
                let identity_key = r.array::<32>()?;
                let len = usize::from(r.u16()?);
                if len == 0 || len > MAX_PUBLIC_IDENTITY_BYTES {
                    return Err(MembershipError::InvalidPublicIdentity(len));
                }
                let public_identity = r.bytes(len)?.to_vec();
                Operation::Add {
                    name,
                    identity_key,
                    public_identity,
                }
            }
            2..=4 => {
                let name = r.string(MAX_ROSTER_NAME_BYTES)?;
                let identity_key = r.array::<32>()?;
                match tag {
                    2 => Operation::Remove { name, identity_key },
                    3 => Operation::Leave { name, identity_key },
                    _ => Operation::TransferAdmin { name, identity_key },
                }
            }
            other => return Err(MembershipError::UnknownOperation(other)),
        };
        let roster_hash = r.array::<32>()?;
        let signer = r.string(MAX_ROSTER_NAME_BYTES)?;
        let signature = r.array::<64>()?;
        r.finish()?;
        if let Operation::Genesis { members, .. } = &op {
            check_sorted(members)?;
        }
        Ok(Commit {
            group_id,
            epoch,
            op,
            roster_hash,
            signer,
            signature,
        })
    }
}

/// The verified state of a group at one epoch.
///
/// Only [`GroupState::from_genesis`] and [`GroupState::apply`] make one, so a
/// `GroupState` is proof that every commit leading to it verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    group_id: GroupId,
    display_name: String,
    admin: String,
    epoch: u64,
    members: BTreeMap<String, IdentityKey>,
    dissolved: bool,
}

impl GroupState {
    /// Verifies a genesis commit and returns the group at epoch 0.
    ///
    /// The genesis is self-signed by the admin's roster key; the caller must
    /// check that key against the admin's registered identity (the relay's
    /// directory, or a safety number).
    ///
    /// # Errors
    /// Not a genesis, epoch not 0, invalid or unsorted roster, admin not in
    /// the roster, bad signature, roster hash mismatch.
    pub fn from_genesis(c: &Commit) -> Result<GroupState, MembershipError> {
        if c.epoch != 0 {
            return Err(MembershipError::EpochMismatch {
                expected: 0,
                got: c.epoch,
            });
        }
        let state = GroupState::genesis_state(c.group_id, &c.op, &c.signer)?;
        let admin_key = state
            .members
            .get(&c.signer)
            .ok_or_else(|| MembershipError::AdminNotMember(c.signer.clone()))?;
        verify(admin_key, &c.signing_input(), &c.signature)?;
        if state.roster_hash() != c.roster_hash {
            return Err(MembershipError::RosterHashMismatch);
        }
        Ok(state)
    }

    fn genesis_state(
        group_id: GroupId,
        op: &Operation,
        admin: &str,
    ) -> Result<GroupState, MembershipError> {
        let Operation::Genesis {
            display_name,
            members,
        } = op
        else {
            return Err(MembershipError::WrongKind {
                expected: "genesis",
            });
        };
        check_name(display_name, MAX_GROUP_DISPLAY_NAME_BYTES)?;
        check_name(admin, MAX_ROSTER_NAME_BYTES)?;
        if members.len() > MAX_GROUP_MEMBERS {
            return Err(MembershipError::TooManyMembers {
                count: members.len(),
                max: MAX_GROUP_MEMBERS,
            });
        }
        check_sorted(members)?;
        let mut map = BTreeMap::new();
        for (name, key) in members {
            check_name(name, MAX_ROSTER_NAME_BYTES)?;
            map.insert(name.clone(), *key);
        }
        if !map.contains_key(admin) {
            return Err(MembershipError::AdminNotMember(admin.to_owned()));
        }
        Ok(GroupState {
            group_id,
            display_name: display_name.clone(),
            admin: admin.to_owned(),
            epoch: 0,
            members: map,
            dissolved: false,
        })
    }

    /// Verifies `c` against this state and returns the next state; `self` is
    /// unchanged either way.
    ///
    /// # Errors
    /// Dissolved group, wrong group, epoch not exactly `epoch() + 1`, signer
    /// not a member or without authority, bad signature, invalid target,
    /// roster hash mismatch (the numbered checks in the module doc).
    pub fn apply(&self, c: &Commit) -> Result<GroupState, MembershipError> {
        let next = self.transition(c.group_id, c.epoch, &c.op, &c.signer)?;
        let signer_key = self
            .members
            .get(&c.signer)
            .ok_or_else(|| MembershipError::SignerNotMember(c.signer.clone()))?;
        verify(signer_key, &c.signing_input(), &c.signature)?;
        if next.roster_hash() != c.roster_hash {
            return Err(MembershipError::RosterHashMismatch);
        }
        Ok(next)
    }

    /// Builds and signs the commit for `op` at the next epoch, as `signer`.
    /// The result is exactly what [`GroupState::apply`] accepts when `sign`
    /// is the signer's roster key.
    ///
    /// # Errors
    /// The same authority and roster checks as [`GroupState::apply`].
    pub fn propose(
        &self,
        op: Operation,
        signer: &str,
        sign: impl FnOnce(&[u8]) -> [u8; 64],
    ) -> Result<Commit, MembershipError> {
        let epoch = self
            .epoch
            .checked_add(1)
            .ok_or(MembershipError::EpochOverflow)?;
        let next = self.transition(self.group_id, epoch, &op, signer)?;
        Ok(Commit::sign(
            self.group_id,
            epoch,
            op,
            next.roster_hash(),
            signer.to_owned(),
            sign,
        ))
    }

    /// Checks 1-3 and 5 of the module doc and computes the next state.
    fn transition(
        &self,
        group_id: GroupId,
        epoch: u64,
        op: &Operation,
        signer: &str,
    ) -> Result<GroupState, MembershipError> {
        if self.dissolved {
            return Err(MembershipError::Dissolved);
        }
        if group_id != self.group_id {
            return Err(MembershipError::WrongGroup);
        }
        let expected = self
            .epoch
            .checked_add(1)
            .ok_or(MembershipError::EpochOverflow)?;
        if epoch != expected {
            return Err(MembershipError::EpochMismatch {
                expected,
                got: epoch,
            });
        }
        if !self.members.contains_key(signer) {
            return Err(MembershipError::SignerNotMember(signer.to_owned()));
        }
        let not_authorized = || MembershipError::NotAuthorized {
            signer: signer.to_owned(),
            operation: op.name(),
        };
        let mut next = self.clone();
        next.epoch = epoch;
        match op {
            Operation::Genesis { .. } => {
                return Err(MembershipError::WrongKind {
                    expected: "non-genesis",
                });
            }
            Operation::Add {
                name,
                identity_key,
                public_identity,
            } => {
                if signer != self.admin {
                    return Err(not_authorized());
                }
                check_name(name, MAX_ROSTER_NAME_BYTES)?;
                if public_identity.is_empty() || public_identity.len() > MAX_PUBLIC_IDENTITY_BYTES {
                    return Err(MembershipError::InvalidPublicIdentity(
                        public_identity.len(),
                    ));
                }
                if self.members.contains_key(name) {
                    return Err(MembershipError::AlreadyMember(name.clone()));
                }
                if self.members.len() >= MAX_GROUP_MEMBERS {
                    return Err(MembershipError::TooManyMembers {
                        count: self.members.len() + 1,
                        max: MAX_GROUP_MEMBERS,
                    });
                }
                next.members.insert(name.clone(), *identity_key);
            }
            Operation::Remove { name, identity_key } => {
                // The admin cannot remove itself: it leaves (dissolving) or
                // transfers first.
                if signer != self.admin || name == &self.admin {
                    return Err(not_authorized());
                }
                self.check_target(name, identity_key)?;
                next.members.remove(name);
            }
            Operation::Leave { name, identity_key } => {
                if signer != name {
                    return Err(not_authorized());
                }
                self.check_target(name, identity_key)?;
                next.members.remove(name);
                if name == &self.admin {
                    next.dissolved = true;
                }
            }
            Operation::TransferAdmin { name, identity_key } => {
                if signer != self.admin || name == &self.admin {
                    return Err(not_authorized());
                }
                self.check_target(name, identity_key)?;
                next.admin = name.clone();
            }
        }
        Ok(next)
    }

    fn check_target(&self, name: &str, key: &IdentityKey) -> Result<(), MembershipError> {
        match self.members.get(name) {
            None => Err(MembershipError::NotMember(name.to_owned())),
            Some(k) if k != key => Err(MembershipError::KeyMismatch(name.to_owned())),
            Some(_) => Ok(()),
        }
    }

    /// SHA-256 of the labelled roster encoding (`PROTOCOL.md`, "Roster
    /// hash"): group id, admin name, then the members sorted by name bytes.
    pub fn roster_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut buf = Vec::with_capacity(64);
        put_label(&mut buf, ROSTER_HASH_LABEL);
        buf.extend_from_slice(&self.group_id);
        put_str(&mut buf, &self.admin);
        put_u32_len(&mut buf, self.members.len());
        h.update(&buf);
        for (name, key) in &self.members {
            buf.clear();
            put_str(&mut buf, name);
            buf.extend_from_slice(key);
            h.update(&buf);
        }
        h.finalize().into()
    }

    /// The group id.
    pub fn group_id(&self) -> &GroupId {
        &self.group_id
    }

    /// The display name from the genesis.
    pub fn display_name(&self) -> &str {
        &self.display_name
    }

    /// The current admin (after a dissolving leave: the admin who left).
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// The current epoch (0 after genesis).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the admin left without a transfer; no commit applies after.
    pub fn is_dissolved(&self) -> bool {
        self.dissolved
    }

    /// Whether `name` is in the roster.
    pub fn is_member(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    /// The roster key of `name`, if it is a member.
    pub fn identity_key(&self, name: &str) -> Option<&IdentityKey> {
        self.members.get(name)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the roster is empty (only possible after a dissolving leave
    /// by a lone admin).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The roster, sorted by name bytes.
    pub fn members(&self) -> impl Iterator<Item = (&str, &IdentityKey)> {
        self.members.iter().map(|(n, k)| (n.as_str(), k))
    }

    /// Encodes this verified state for the client's own state file:
    /// `u8 version (1) ‖ group id ‖ str display name ‖ str admin ‖ u64 epoch
    /// ‖ u8 dissolved ‖ u32 count ‖ (str name ‖ key) per member`.
    pub fn to_state_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.members.len() * 48);
        out.push(STATE_VERSION);
        out.extend_from_slice(&self.group_id);
        put_str(&mut out, &self.display_name);
        put_str(&mut out, &self.admin);
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.push(u8::from(self.dissolved));
        put_u32_len(&mut out, self.members.len());
        for (name, key) in &self.members {
            put_str(&mut out, name);
            out.extend_from_slice(key);
        }
        out
    }

    /// Decodes [`GroupState::to_state_bytes`].
    ///
    /// **Trusted input only**: this skips every signature check, so it is
    /// for bytes this client wrote itself into its authenticated, encrypted
    /// state file, never for anything from the network.
    ///
    /// # Errors
    /// Structural errors, limits, an unsorted roster.
    pub fn from_trusted_state_bytes(bytes: &[u8]) -> Result<GroupState, MembershipError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != STATE_VERSION {
            return Err(MembershipError::UnknownVersion(version));
        }
        let group_id = r.array::<16>()?;
        let display_name = r.string(MAX_GROUP_DISPLAY_NAME_BYTES)?;
        let admin = r.string(MAX_ROSTER_NAME_BYTES)?;
        let epoch = r.u64()?;
        let dissolved = r.u8()? != 0;
        let list = read_roster(&mut r)?;
        r.finish()?;
        check_sorted(&list)?;
        Ok(GroupState {
            group_id,
            display_name,
            admin,
            epoch,
            members: list.into_iter().collect(),
            dissolved,
        })
    }
}

/// `u32 count ‖ (str name ‖ 32-byte key) per member`, as a genesis and the
/// state encoding both hold it: at most [`MAX_GROUP_MEMBERS`] entries, the
/// allocation bounded by what the input can hold (each entry is at least
/// 2 + 1 + 32 bytes). Order is not checked here.
fn read_roster(r: &mut Reader<'_>) -> Result<Vec<(String, IdentityKey)>, MembershipError> {
    let count = r.u32()? as usize;
    if count > MAX_GROUP_MEMBERS {
        return Err(MembershipError::TooManyMembers {
            count,
            max: MAX_GROUP_MEMBERS,
        });
    }
    let mut members = Vec::with_capacity(count.min(r.remaining() / 35));
    for _ in 0..count {
        let name = r.string(MAX_ROSTER_NAME_BYTES)?;
        members.push((name, r.array::<32>()?));
    }
    Ok(members)
}

fn verify(key: &IdentityKey, msg: &[u8], sig: &[u8; 64]) -> Result<(), MembershipError> {
    crate::crypto::identity::verify_signature(key, msg, sig)
        .map_err(|_| MembershipError::BadSignature)
}

fn check_name(name: &str, max: usize) -> Result<(), MembershipError> {
    if name.is_empty() || name.len() > max {
        return Err(MembershipError::InvalidName);
    }
    Ok(())
}

fn check_sorted(members: &[(String, IdentityKey)]) -> Result<(), MembershipError> {
    if members
        .windows(2)
        .all(|w| matches!(w, [a, b] if a.0.as_bytes() < b.0.as_bytes()))
    {
        Ok(())
    } else {
        Err(MembershipError::UnsortedRoster)
    }
}

// Lengths are bounded by the limits before encoding (names <= 200 bytes,
// identities <= 1,024 bytes, rosters <= MAX_GROUP_MEMBERS); the saturating
// conversions below only guard against misuse and a decoder rejects them.
fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u16_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_u16_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
}

fn put_u32_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_label(out: &mut Vec<u8>, label: &[u8]) {
    out.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(label);
}

/// A checked cursor over a byte slice: every read checks the length first.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], MembershipError> {
        if n > self.rest.len() {
            return Err(MembershipError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], MembershipError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, MembershipError> {
        Ok(u8::from_be_bytes(self.array::<1>()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, MembershipError> {
        Ok(u16::from_be_bytes(self.array::<2>()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, MembershipError> {
        Ok(u32::from_be_bytes(self.array::<4>()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, MembershipError> {
        Ok(u64::from_be_bytes(self.array::<8>()?))
    }

    /// A u16-length-prefixed UTF-8 string of 1..=max bytes.
    pub(crate) fn string(&mut self, max: usize) -> Result<String, MembershipError> {
        let len = usize::from(self.u16()?);
        if len == 0 || len > max {
            return Err(MembershipError::InvalidName);
        }
        let raw = self.bytes(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| MembershipError::InvalidName)
    }

    pub(crate) fn finish(self) -> Result<(), MembershipError> {
        self.finish_ref()
    }

    /// Like [`Reader::finish`], for a borrowed reader.
    pub(crate) fn finish_ref(&self) -> Result<(), MembershipError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(MembershipError::TrailingBytes(self.rest.len()))
        }
    }
}

/// Fuzz entry point: decoding arbitrary bytes never panics. Returns `false`
/// only if something decoded but did not re-encode to the same bytes (the
/// encoding is canonical, so a fuzzer should treat `false` as a bug).
pub fn fuzz_decode_commit(data: &[u8]) -> bool {
    match Commit::decode(data) {
        Ok(c) => c.encode() == data,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    struct User {
        name: String,
        key: SigningKey,
    }

    impl User {
        fn new(name: &str, seed: u8) -> User {
            User {
                name: name.to_owned(),
                key: SigningKey::from_bytes(&[seed; 32]),
            }
        }
        fn public(&self) -> IdentityKey {
            self.key.verifying_key().to_bytes()
        }
        fn signer(&self) -> impl FnOnce(&[u8]) -> [u8; 64] + '_ {
            |m| self.key.sign(m).to_bytes()
        }
    }

    const GID: GroupId = [7; 16];

    fn setup() -> (User, User, User, GroupState) {
        let alice = User::new("alice", 1);
        let bob = User::new("bob", 2);
        let carol = User::new("carol", 3);
        let genesis = Commit::genesis(
            GID,
            "friends".into(),
            "alice".into(),
            vec![
                ("bob".into(), bob.public()),
                ("alice".into(), alice.public()),
            ],
            alice.signer(),
        )
        .unwrap();
        let state = GroupState::from_genesis(&Commit::decode(&genesis.encode()).unwrap()).unwrap();
        (alice, bob, carol, state)
    }

    fn add(s: &GroupState, admin: &User, who: &User) -> Commit {
        s.propose(
            Operation::Add {
                name: who.name.clone(),
                identity_key: who.public(),
                public_identity: vec![1, 2, 3],
            },
            &admin.name,
            admin.signer(),
        )
        .unwrap()
    }

    #[test]
    fn genesis_roundtrip_and_state() {
        let (alice, bob, _, s) = setup();
        assert_eq!(s.epoch(), 0);
        assert_eq!(s.admin(), "alice");
        assert_eq!(s.display_name(), "friends");
        assert_eq!(
            s.members().collect::<Vec<_>>(),
            vec![("alice", &alice.public()), ("bob", &bob.public())]
        );
    }

    #[test]
    fn genesis_signed_by_wrong_key_is_refused() {
        let alice = User::new("alice", 1);
        let mallory = User::new("mallory", 9);
        let g = Commit::genesis(
            GID,
            "g".into(),
            "alice".into(),
            vec![("alice".into(), alice.public())],
            mallory.signer(),
        )
        .unwrap();
        assert_eq!(
            GroupState::from_genesis(&g),
            Err(MembershipError::BadSignature)
        );
    }

    #[test]
    fn genesis_requires_admin_and_sorted_unique_roster() {
        let alice = User::new("alice", 1);
        let bob = User::new("bob", 2);
        assert_eq!(
            Commit::genesis(
                GID,
                "g".into(),
                "alice".into(),
                vec![("bob".into(), bob.public())],
                alice.signer()
            ),
            Err(MembershipError::AdminNotMember("alice".into()))
        );
        assert_eq!(
            Commit::genesis(
                GID,
                "g".into(),
                "alice".into(),
                vec![
                    ("alice".into(), alice.public()),
                    ("alice".into(), bob.public())
                ],
                alice.signer()
            ),
            Err(MembershipError::UnsortedRoster)
        );
    }

    #[test]
    fn add_remove_leave_transfer() {
        let (alice, bob, carol, s0) = setup();
        let c1 = add(&s0, &alice, &carol);
        let s1 = s0.apply(&Commit::decode(&c1.encode()).unwrap()).unwrap();
        assert!(s1.is_member("carol"));
        assert_eq!(s1.epoch(), 1);

        let c2 = s1
            .propose(
                Operation::Remove {
                    name: "bob".into(),
                    identity_key: bob.public(),
                },
                "alice",
                alice.signer(),
            )
            .unwrap();
        let s2 = s1.apply(&c2).unwrap();
        assert!(!s2.is_member("bob"));

        let c3 = s2
            .propose(
                Operation::TransferAdmin {
                    name: "carol".into(),
                    identity_key: carol.public(),
                },
                "alice",
                alice.signer(),
            )
            .unwrap();
        let s3 = s2.apply(&c3).unwrap();
        assert_eq!(s3.admin(), "carol");

        let c4 = s3
            .propose(
                Operation::Leave {
                    name: "alice".into(),
                    identity_key: alice.public(),
                },
                "alice",
                alice.signer(),
            )
            .unwrap();
        let s4 = s3.apply(&c4).unwrap();
        assert!(!s4.is_member("alice"));
        assert!(!s4.is_dissolved());
        assert_eq!(s4.len(), 1);
    }

    #[test]
    fn out_of_order_and_replayed_commits_are_refused() {
        let (alice, _, carol, s0) = setup();
        let c1 = add(&s0, &alice, &carol);
        let s1 = s0.apply(&c1).unwrap();
        // Replay of epoch 1 on state 1.
        assert_eq!(
            s1.apply(&c1),
            Err(MembershipError::EpochMismatch {
                expected: 2,
                got: 1
            })
        );
        // Epoch 2 commit applied to state 0 (skipping epoch 1).
        let dave = User::new("dave", 4);
        let c2 = add(&s1, &alice, &dave);
        assert_eq!(
            s0.apply(&c2),
            Err(MembershipError::EpochMismatch {
                expected: 1,
                got: 2
            })
        );
    }

    #[test]
    fn forged_commit_is_refused() {
        let (alice, _, carol, s0) = setup();
        let mut c1 = add(&s0, &alice, &carol);
        c1.signature[5] ^= 1;
        assert_eq!(s0.apply(&c1), Err(MembershipError::BadSignature));
        // Signature by someone else under the admin's name.
        let c1 = s0
            .propose(
                Operation::Add {
                    name: "carol".into(),
                    identity_key: carol.public(),
                    public_identity: vec![1],
                },
                "alice",
                carol.signer(),
            )
            .unwrap();
        assert_eq!(s0.apply(&c1), Err(MembershipError::BadSignature));
        // A field changed after signing.
        let mut c1 = add(&s0, &alice, &carol);
        c1.group_id[0] ^= 1;
        assert_eq!(s0.apply(&c1), Err(MembershipError::WrongGroup));
    }

    #[test]
    fn non_admin_cannot_add_remove_or_transfer() {
        let (alice, bob, carol, s0) = setup();
        assert!(matches!(
            s0.propose(
                Operation::Add {
                    name: "carol".into(),
                    identity_key: carol.public(),
                    public_identity: vec![1],
                },
                "bob",
                bob.signer()
            ),
            Err(MembershipError::NotAuthorized { .. })
        ));
        // A validly signed commit by bob, built by hand, is still refused.
        let mut forged = add(&s0, &alice, &carol);
        forged.signer = "bob".into();
        forged.signature = bob.key.sign(&forged.signing_input()).to_bytes();
        assert_eq!(
            s0.apply(&forged),
            Err(MembershipError::NotAuthorized {
                signer: "bob".into(),
                operation: "add"
            })
        );
        let mut forged = s0
            .propose(
                Operation::Remove {
                    name: "bob".into(),
                    identity_key: bob.public(),
                },
                "alice",
                alice.signer(),
            )
            .unwrap();
        forged.op = Operation::Leave {
            name: "alice".into(),
            identity_key: alice.public(),
        };
        forged.signer = "bob".into();
        forged.signature = bob.key.sign(&forged.signing_input()).to_bytes();
        assert!(matches!(
            s0.apply(&forged),
            Err(MembershipError::NotAuthorized { .. })
        ));
        // An outsider cannot even leave.
        assert_eq!(
            s0.propose(
                Operation::Leave {
                    name: "carol".into(),
                    identity_key: carol.public()
                },
                "carol",
                carol.signer()
            ),
            Err(MembershipError::SignerNotMember("carol".into()))
        );
    }

    #[test]
    fn admin_leave_dissolves() {
        let (alice, _, carol, s0) = setup();
        let c1 = s0
            .propose(
                Operation::Leave {
                    name: "alice".into(),
                    identity_key: alice.public(),
                },
                "alice",
                alice.signer(),
            )
            .unwrap();
        let s1 = s0.apply(&c1).unwrap();
        assert!(s1.is_dissolved());
        assert!(!s1.is_member("alice"));
        assert_eq!(
            s1.propose(
                Operation::Add {
                    name: "carol".into(),
                    identity_key: carol.public(),
                    public_identity: vec![1]
                },
                "alice",
                alice.signer()
            ),
            Err(MembershipError::Dissolved)
        );
    }

    #[test]
    fn roster_hash_mismatch_is_refused() {
        let (alice, _, carol, s0) = setup();
        let c1 = add(&s0, &alice, &carol);
        let bad = Commit::sign(
            c1.group_id,
            c1.epoch,
            c1.op.clone(),
            s0.roster_hash(),
            "alice".into(),
            alice.signer(),
        );
        assert_eq!(s0.apply(&bad), Err(MembershipError::RosterHashMismatch));
    }

    #[test]
    fn target_checks() {
        let (alice, bob, carol, s0) = setup();
        assert_eq!(
            s0.propose(
                Operation::Remove {
                    name: "bob".into(),
                    identity_key: carol.public()
                },
                "alice",
                alice.signer()
            ),
            Err(MembershipError::KeyMismatch("bob".into()))
        );
        assert_eq!(
            s0.propose(
                Operation::Add {
                    name: "bob".into(),
                    identity_key: bob.public(),
                    public_identity: vec![1]
                },
                "alice",
                alice.signer()
            ),
            Err(MembershipError::AlreadyMember("bob".into()))
        );
        assert!(matches!(
            s0.propose(
                Operation::Remove {
                    name: "alice".into(),
                    identity_key: alice.public()
                },
                "alice",
                alice.signer()
            ),
            Err(MembershipError::NotAuthorized { .. })
        ));
    }

    #[test]
    fn decode_rejects_malformed_input() {
        let (alice, _, carol, s0) = setup();
        let bytes = add(&s0, &alice, &carol).encode();
        for cut in 0..bytes.len() {
            assert_eq!(
                Commit::decode(&bytes[..cut]),
                Err(MembershipError::Truncated),
                "cut {cut}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Commit::decode(&long),
            Err(MembershipError::TrailingBytes(1))
        );
        let mut v = bytes.clone();
        v[0] = 2;
        assert_eq!(Commit::decode(&v), Err(MembershipError::UnknownVersion(2)));
        let mut op = bytes.clone();
        op[25] = 9;
        assert_eq!(
            Commit::decode(&op),
            Err(MembershipError::UnknownOperation(9))
        );
        // Every single-byte corruption either fails to decode or fails to apply.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            if let Ok(c) = Commit::decode(&b) {
                assert!(s0.apply(&c).is_err(), "byte {i}");
            }
            assert!(fuzz_decode_commit(&b));
        }
    }

    #[test]
    fn roster_size_limit() {
        let alice = User::new("alice", 1);
        let mut members: Vec<(String, IdentityKey)> = (0..MAX_GROUP_MEMBERS)
            .map(|i| (format!("m{i:06}"), [1; 32]))
            .collect();
        members.push(("alice".into(), alice.public()));
        assert!(matches!(
            Commit::genesis(GID, "g".into(), "alice".into(), members.clone(), |_| [0;
                64]),
            Err(MembershipError::TooManyMembers { .. })
        ));
        members.pop();
        members.pop();
        members.push(("alice".into(), alice.public()));
        let g = Commit::genesis(GID, "g".into(), "alice".into(), members, alice.signer()).unwrap();
        let s = GroupState::from_genesis(&Commit::decode(&g.encode()).unwrap()).unwrap();
        assert_eq!(s.len(), MAX_GROUP_MEMBERS);
        let carol = User::new("carol", 3);
        assert!(matches!(
            s.propose(
                Operation::Add {
                    name: "carol".into(),
                    identity_key: carol.public(),
                    public_identity: vec![1]
                },
                "alice",
                alice.signer()
            ),
            Err(MembershipError::TooManyMembers { .. })
        ));
    }

    #[test]
    fn state_bytes_roundtrip() {
        let (alice, _, carol, s0) = setup();
        let s1 = s0.apply(&add(&s0, &alice, &carol)).unwrap();
        let bytes = s1.to_state_bytes();
        assert_eq!(GroupState::from_trusted_state_bytes(&bytes).unwrap(), s1);
        for cut in 0..bytes.len() {
            assert!(GroupState::from_trusted_state_bytes(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn public_identity_limit() {
        let (alice, _, carol, s0) = setup();
        let op = |len: usize| Operation::Add {
            name: carol.name.clone(),
            identity_key: carol.public(),
            public_identity: vec![5; len],
        };
        let ok = s0
            .propose(op(MAX_PUBLIC_IDENTITY_BYTES), "alice", alice.signer())
            .unwrap();
        assert_eq!(Commit::decode(&ok.encode()).unwrap(), ok);
        for len in [0, MAX_PUBLIC_IDENTITY_BYTES + 1] {
            assert_eq!(
                s0.propose(op(len), "alice", alice.signer()),
                Err(MembershipError::InvalidPublicIdentity(len))
            );
            // Hand-built over-long encoding is refused by the decoder too.
            let c = Commit::sign(GID, 1, op(len), [0; 32], "alice".into(), alice.signer());
            assert_eq!(
                Commit::decode(&c.encode()),
                Err(MembershipError::InvalidPublicIdentity(len))
            );
        }
    }

    #[test]
    fn name_limit() {
        let alice = User::new("alice", 1);
        let long = "x".repeat(MAX_ROSTER_NAME_BYTES + 1);
        assert_eq!(
            Commit::genesis(
                GID,
                "g".into(),
                "alice".into(),
                vec![("alice".into(), alice.public()), (long, [1; 32])],
                alice.signer()
            ),
            Err(MembershipError::InvalidName)
        );
        assert_eq!(
            Commit::genesis(
                GID,
                "g".repeat(MAX_GROUP_DISPLAY_NAME_BYTES + 1),
                "alice".into(),
                vec![("alice".into(), alice.public())],
                alice.signer()
            ),
            Err(MembershipError::InvalidName)
        );
        let ok = "x".repeat(MAX_ROSTER_NAME_BYTES);
        assert!(
            Commit::genesis(
                GID,
                "g".repeat(MAX_GROUP_DISPLAY_NAME_BYTES),
                "alice".into(),
                vec![("alice".into(), alice.public()), (ok, [1; 32])],
                alice.signer()
            )
            .is_ok()
        );
    }
}
