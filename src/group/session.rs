//! The client's group state machine: the verified roster, my sender key and
//! the other members' chains, kept consistent across membership commits.
//!
//! Call order: [`GroupSession::new`] with a verified [`GroupState`]; then,
//! as inputs arrive, [`GroupSession::apply_commit`] (which says, in its
//! [`CommitEffects`], who must receive my sender key now and whether it was
//! rotated), [`GroupSession::handle_distribution`] and
//! [`GroupSession::open`]; [`GroupSession::seal`] to send. Rules (DESIGN.md,
//! "Protocol rules"): an add keeps every sender key, and each member sends
//! its current one to the newcomer; a remove or leave makes every remaining
//! member start a fresh key (key id + 1) and send it to every remaining
//! member. A commit that fails verification freezes the session.

use rand_core::CryptoRng;

use super::GroupError;
use super::distribution::{Distribution, KeyRequest, Welcome};
use super::sender_key::{
    DistributionOutcome, GroupMessageHeader, OpenedMessage, ReceiverStore, SenderKey,
};
use super::setup::{Parallelism, PeerChannel, pairwise_channels};
use crate::crypto::identity::{IdentityKeyPair, PublicIdentity};
use zeroize::Zeroizing;

use crate::membership::{Commit, GroupState, MembershipError, Operation, Reader};

/// Version byte of [`GroupSession::to_state_bytes`].
pub const SESSION_STATE_VERSION: u8 = 1;

const FROZEN: &str = "a membership commit failed verification";
const REMOVED: &str = "removed from the group";
const DISSOLVED: &str = "the group was dissolved";
const CLOSED_REASONS: [&str; 3] = [FROZEN, REMOVED, DISSOLVED];

/// Key id of a member's first sender key in a group.
pub const FIRST_KEY_ID: u32 = 1;

/// What a client must do after a commit is applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitEffects {
    /// Members who must receive my sender key (current, or the fresh one if
    /// `rotated`) before my next message, sorted by name.
    pub send_my_key_to: Vec<String>,
    /// My sender key was replaced by a fresh one with the next key id.
    pub rotated: bool,
    /// The member whose chains were dropped (removed or left).
    pub forgot: Option<String>,
    /// The member who joined (the admin also sends it a welcome).
    pub joined: Option<String>,
    /// I was removed or left: the session is closed.
    pub removed_me: bool,
    /// The admin left without a transfer: the session is closed.
    pub dissolved: bool,
}

/// The effects of `op` (already verified into `after`) for member `me`.
/// Pure: [`GroupSession::apply_commit`] acts on them.
pub fn commit_effects(me: &str, op: &Operation, after: &GroupState) -> CommitEffects {
    let others = || {
        after
            .members()
            .map(|(n, _)| n)
            .filter(|n| *n != me)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let mut fx = CommitEffects::default();
    match op {
        Operation::Genesis { .. } | Operation::TransferAdmin { .. } => {}
        Operation::Add { name, .. } => {
            fx.joined = Some(name.clone());
            fx.send_my_key_to = if name == me {
                others()
            } else {
                vec![name.clone()]
            };
        }
        Operation::Remove { name, .. } | Operation::Leave { name, .. } => {
            if name == me {
                fx.removed_me = true;
            } else if after.is_dissolved() {
                fx.dissolved = true;
                fx.forgot = Some(name.clone());
            } else {
                fx.forgot = Some(name.clone());
                fx.rotated = true;
                fx.send_my_key_to = others();
            }
        }
    }
    if after.is_dissolved() {
        fx.dissolved = true;
        fx.send_my_key_to.clear();
        fx.rotated = false;
    }
    fx
}

/// One group as one member sees it.
pub struct GroupSession {
    me: String,
    state: GroupState,
    my_key: SenderKey,
    receivers: ReceiverStore,
    closed: Option<&'static str>,
}

impl std::fmt::Debug for GroupSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSession")
            .field("me", &self.me)
            .field("epoch", &self.state.epoch())
            .field("my_key", &self.my_key)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl GroupSession {
    /// A session for `me` in the verified `state`, with a fresh sender key
    /// ([`FIRST_KEY_ID`]). After creating it, give my key to every other
    /// member ([`GroupSession::distribution_for`]).
    ///
    /// # Errors
    /// [`GroupError::NotMember`] if `me` is not in the roster.
    pub fn new(
        me: &str,
        state: GroupState,
        rng: &mut impl CryptoRng,
    ) -> Result<GroupSession, GroupError> {
        if !state.is_member(me) || state.is_dissolved() {
            return Err(GroupError::NotMember(me.to_owned()));
        }
        let gid = *state.group_id();
        Ok(GroupSession {
            me: me.to_owned(),
            my_key: SenderKey::generate(gid, FIRST_KEY_ID, rng),
            receivers: ReceiverStore::new(gid),
            state,
            closed: None,
        })
    }

    /// Verifies a whole commit log (genesis first) and builds the session,
    /// as a newcomer does with the commits it fetched.
    ///
    /// # Errors
    /// Any verification failure of the log; [`GroupError::NotMember`].
    pub fn from_log(
        me: &str,
        log: &[Commit],
        rng: &mut impl CryptoRng,
    ) -> Result<GroupSession, GroupError> {
        let (genesis, rest) = log
            .split_first()
            .ok_or(GroupError::Malformed("empty commit log"))?;
        let mut state = GroupState::from_genesis(genesis)?;
        for c in rest {
            state = state.apply(c)?;
        }
        GroupSession::new(me, state, rng)
    }

    /// Builds the session of a newcomer from the commit log it fetched and
    /// the admin's welcome (opened from the pairwise envelope of `admin`):
    /// the log must verify from genesis, and at the welcome's epoch its
    /// roster hash must be the welcome's and its admin must be `admin`.
    ///
    /// # Errors
    /// Log verification errors; [`GroupError::Malformed`] if the welcome does
    /// not match the log; [`GroupError::NotMember`].
    pub fn from_welcome(
        me: &str,
        admin: &str,
        welcome: &Welcome,
        log: &[Commit],
        rng: &mut impl CryptoRng,
    ) -> Result<GroupSession, GroupError> {
        let (genesis, rest) = log
            .split_first()
            .ok_or(GroupError::Malformed("empty commit log"))?;
        let mut state = GroupState::from_genesis(genesis)?;
        let mut matched = false;
        for c in std::iter::once(None).chain(rest.iter().map(Some)) {
            if let Some(c) = c {
                state = state.apply(c)?;
            }
            if state.epoch() == welcome.epoch {
                matched = state.group_id() == &welcome.group_id
                    && state.roster_hash() == welcome.roster_hash
                    && state.admin() == admin;
            }
        }
        if !matched {
            return Err(GroupError::Malformed(
                "welcome does not match the commit log",
            ));
        }
        GroupSession::new(me, state, rng)
    }

    /// My name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The verified roster at the current epoch.
    pub fn state(&self) -> &GroupState {
        &self.state
    }

    /// My sender key.
    pub fn my_key(&self) -> &SenderKey {
        &self.my_key
    }

    /// The other members' chains.
    pub fn receivers(&self) -> &ReceiverStore {
        &self.receivers
    }

    /// The receivers, for gap notices and expiry.
    pub fn receivers_mut(&mut self) -> &mut ReceiverStore {
        &mut self.receivers
    }

    /// Why the session is closed (frozen, removed, dissolved), if it is.
    pub fn closed(&self) -> Option<&'static str> {
        self.closed
    }

    fn usable(&self) -> Result<(), GroupError> {
        match self.closed {
            Some(why) => Err(GroupError::Unusable(why)),
            None => Ok(()),
        }
    }

    /// Verifies and applies a commit, rotating my key and dropping a
    /// departed member's chains as [`commit_effects`] says.
    ///
    /// # Errors
    /// [`GroupError::Unusable`] if closed; [`GroupError::Membership`] if the
    /// commit fails verification, which also freezes the session (never
    /// skipped silently) unless it is merely a replay of an applied epoch.
    pub fn apply_commit(
        &mut self,
        c: &Commit,
        rng: &mut impl CryptoRng,
    ) -> Result<CommitEffects, GroupError> {
        self.usable()?;
        let next = match self.state.apply(c) {
            Ok(next) => next,
            Err(e) => {
                // A re-delivered old commit is harmless; anything else is a
                // fork or a forgery and freezes the group.
                let replay = matches!(e, MembershipError::EpochMismatch { got, .. } if got <= self.state.epoch());
                if !replay {
                    self.closed = Some(FROZEN);
                }
                return Err(e.into());
            }
        };
        let fx = commit_effects(&self.me, &c.op, &next);
        if let Some(gone) = &fx.forgot {
            self.receivers.forget_sender(gone);
            self.my_key.forget_member(gone);
        }
        if fx.rotated {
            let key_id = self
                .my_key
                .key_id()
                .checked_add(1)
                .ok_or(GroupError::ChainExhausted)?;
            self.my_key = SenderKey::generate(*next.group_id(), key_id, rng);
        }
        if fx.removed_me {
            self.closed = Some(REMOVED);
        } else if fx.dissolved {
            self.closed = Some(DISSOLVED);
        }
        self.state = next;
        Ok(fx)
    }

    /// My distribution for `member` at the current epoch (the one first
    /// given under this key id, if any).
    ///
    /// # Errors
    /// [`GroupError::NotMember`], [`GroupError::Unusable`].
    pub fn distribution_for(&mut self, member: &str) -> Result<Distribution, GroupError> {
        self.usable()?;
        if !self.state.is_member(member) || member == self.me {
            return Err(GroupError::NotMember(member.to_owned()));
        }
        Ok(self.my_key.distribution_for(member, self.state.epoch()))
    }

    /// The welcome the admin sends a newcomer right after the add commit.
    ///
    /// # Errors
    /// [`GroupError::NotMember`] if I am not the admin or `newcomer` is not a
    /// member; [`GroupError::Unusable`].
    pub fn welcome_for(&self, newcomer: &str) -> Result<Welcome, GroupError> {
        self.usable()?;
        if self.state.admin() != self.me || !self.state.is_member(newcomer) {
            return Err(GroupError::NotMember(newcomer.to_owned()));
        }
        Ok(Welcome {
            group_id: *self.state.group_id(),
            epoch: self.state.epoch(),
            roster_hash: self.state.roster_hash(),
        })
    }

    /// Answers `requester`'s key request (opened from its pairwise
    /// envelope): my distribution for it if it asks for my current key id
    /// (exactly what I first gave it), `None` for an older key id, which is
    /// gone.
    ///
    /// # Errors
    /// [`GroupError::NotMember`] for a requester outside the roster (or
    /// myself); [`GroupError::WrongGroup`]; [`GroupError::Unusable`].
    pub fn handle_key_request(
        &mut self,
        requester: &str,
        req: &KeyRequest,
    ) -> Result<Option<Distribution>, GroupError> {
        self.usable()?;
        if &req.group_id != self.state.group_id() {
            return Err(GroupError::WrongGroup);
        }
        if !self.state.is_member(requester) || requester == self.me {
            return Err(GroupError::NotMember(requester.to_owned()));
        }
        if req.key_id != self.my_key.key_id() {
            return Ok(None);
        }
        Ok(Some(
            self.my_key.distribution_for(requester, self.state.epoch()),
        ))
    }

    /// Installs `sender`'s distribution (opened from its pairwise envelope).
    ///
    /// # Errors
    /// [`GroupError::NotMember`] if `sender` is not in the roster, and
    /// everything [`ReceiverStore::handle_distribution`] refuses.
    pub fn handle_distribution(
        &mut self,
        sender: &str,
        d: &Distribution,
    ) -> Result<DistributionOutcome, GroupError> {
        self.usable()?;
        if !self.state.is_member(sender) || sender == self.me {
            return Err(GroupError::NotMember(sender.to_owned()));
        }
        self.receivers.handle_distribution(sender, d)
    }

    /// Seals a group message at the current epoch.
    ///
    /// # Errors
    /// As [`SenderKey::seal`]; [`GroupError::Unusable`].
    pub fn seal(
        &mut self,
        unix_ms: u64,
        message_id: [u8; 16],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, GroupError> {
        self.usable()?;
        self.my_key
            .seal(self.state.epoch(), &self.me, unix_ms, message_id, plaintext)
    }

    /// Opens a group message from a current member.
    ///
    /// # Errors
    /// [`GroupError::NotMember`] for a sender not in the roster (including
    /// myself: a reflected message), and everything [`ReceiverStore::open`]
    /// refuses.
    pub fn open(&mut self, message: &[u8], now_unix_ms: u64) -> Result<OpenedMessage, GroupError> {
        self.usable()?;
        let (header, _, _) = GroupMessageHeader::peek(message)?;
        if !self.state.is_member(&header.sender) || header.sender == self.me {
            return Err(GroupError::NotMember(header.sender));
        }
        self.receivers.open(message, now_unix_ms)
    }

    /// A new member's full setup (or a re-keying member's): the pairwise
    /// channels to `peers` (each checked against the roster and its
    /// certificate, computed with rayon above the threshold) and my
    /// distribution sealed to each, in input order. Send each sealed
    /// distribution as a direct message to its peer.
    ///
    /// # Errors
    /// [`GroupError::Unusable`] for the whole call; per peer,
    /// [`GroupError::NotMember`], [`GroupError::BadIdentity`] or a DH
    /// validation error, without stopping the others.
    #[allow(clippy::type_complexity)] // a per-peer result list reads best here
    pub fn setup_and_distribute(
        &mut self,
        identity: &IdentityKeyPair,
        peers: &[(String, PublicIdentity)],
        mode: Parallelism,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<Result<(PeerChannel, Vec<u8>), GroupError>>, GroupError> {
        self.usable()?;
        let epoch = self.state.epoch();
        let channels = pairwise_channels(&self.me, identity, peers, Some(&self.state), mode);
        Ok(channels
            .into_iter()
            .map(|ch| {
                let ch = ch?;
                if ch.peer == self.me {
                    return Err(GroupError::NotMember(ch.peer));
                }
                let dist = self.my_key.distribution_for(&ch.peer, epoch);
                let sealed = dist.seal(&ch.send, &self.me, &ch.peer, rng)?;
                Ok((ch, sealed))
            })
            .collect())
    }

    /// Encodes the whole session for the client's encrypted state file
    /// (zeroized on drop): `u8 version ‖ str me ‖ u8 closed (0 open, 1
    /// frozen, 2 removed, 3 dissolved) ‖ u32 len ‖ roster state ‖ u32 len ‖
    /// my sender key ‖ u32 len ‖ receiver store`.
    pub fn to_state_bytes(&self) -> Zeroizing<Vec<u8>> {
        let state = self.state.to_state_bytes();
        let key = self.my_key.to_state_bytes();
        let recv = self.receivers.to_state_bytes();
        let mut out = Zeroizing::new(Vec::with_capacity(
            16 + self.me.len() + state.len() + key.len() + recv.len(),
        ));
        out.push(SESSION_STATE_VERSION);
        out.extend_from_slice(
            &u16::try_from(self.me.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(self.me.as_bytes());
        let closed = self
            .closed
            .and_then(|why| CLOSED_REASONS.iter().position(|r| *r == why))
            .map_or(0, |i| i + 1);
        out.push(u8::try_from(closed).unwrap_or(1));
        for part in [&state[..], &key[..], &recv[..]] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Decodes [`GroupSession::to_state_bytes`].
    ///
    /// **Trusted input only** (the roster is not re-verified): bytes this
    /// client wrote into its own authenticated, encrypted state file.
    ///
    /// # Errors
    /// [`GroupError::Malformed`] and the errors of the parts' decoders.
    pub fn from_state_bytes(bytes: &[u8]) -> Result<GroupSession, GroupError> {
        let bad = |_| GroupError::Malformed("session state");
        let mut r = Reader::new(bytes);
        if r.u8().map_err(bad)? != SESSION_STATE_VERSION {
            return Err(GroupError::Malformed("session state version"));
        }
        let me = r
            .string(crate::limits::MAX_ROSTER_NAME_BYTES)
            .map_err(bad)?;
        let closed = match r.u8().map_err(bad)? {
            0 => None,
            i => Some(
                *CLOSED_REASONS
                    .get(usize::from(i) - 1)
                    .ok_or(GroupError::Malformed("session state closed"))?,
            ),
        };
        let mut part = || -> Result<&[u8], GroupError> {
            let len = r.u32().map_err(bad)? as usize;
            r.bytes(len).map_err(bad)
        };
        let state = GroupState::from_trusted_state_bytes(part()?)?;
        let my_key = SenderKey::from_state_bytes(part()?)?;
        let receivers = ReceiverStore::from_state_bytes(part()?)?;
        r.finish().map_err(bad)?;
        if my_key.group_id() != state.group_id() || receivers.group_id() != state.group_id() {
            return Err(GroupError::WrongGroup);
        }
        Ok(GroupSession {
            me,
            state,
            my_key,
            receivers,
            closed,
        })
    }
}
