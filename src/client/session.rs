//! The client's pure session: relay frames in, frames out, all the
//! client-side cryptography in between. No sockets, no files, no clock: the
//! caller passes the [`ClientState`] to change (inside one locked
//! load-modify-save), `now_ms` and the RNG.
//!
//! Call order (the driver in `net.rs` follows it):
//!
//! ```text
//! connect ── hello ──► verify_hello (TOFU relay key) ──► login_frame / register_frame
//!          ◄── authenticated
//! for each pushed deliver / gap notice, in sequence order:
//!     Session::handle_deliver(st, ..)  ──► frames to send (key requests,
//!         │                                re-sent distributions), inbox lines
//!         └─ Err(SessionError::Need(..)) ──► fetch identities or commits,
//!                                            Session::pin_identities / join_from_log,
//!                                            then handle the same entry again
//!     then ack it (after the state is saved)
//! commands: create_group ─► CreateGroup ─► group_created ─► owed_distributions
//!           propose ─► Commit ─► commit_accepted ─► owed_distributions (+ welcome)
//!           seal_text ─► GroupSend ─► stored receipt
//! Session::tick(st, now_ms) now and then: undecryptable-message timeouts
//! ```
//!
//! Every entry a handler is given either changes the state and succeeds,
//! or returns an error and leaves the state as it was (the caller discards
//! the transaction), so an entry is never half-applied.

use std::collections::HashMap;

use rand_core::CryptoRng;

use super::state::{ClientState, Contact, GroupRecord, InboxEntry, PendingMessage, StateError};
use crate::crypto::dh::DhGroup;
use crate::crypto::identity::{PublicIdentity, verify_signature};
use crate::crypto::kdf::{EnvelopeKeys, channel_keys};
use crate::group::distribution::{KEY_REQUEST_KIND, WELCOME_KIND, open_direct, seal_direct};
use crate::group::{
    Distribution, GroupError, GroupSession, KeyRequest, Parallelism, Welcome, pairwise_channels,
};
use crate::limits::CLIENT_PENDING_TIMEOUT_MS;
use crate::membership::{Commit, GroupState, MembershipError, Operation};
use crate::wire::{
    Deliver, EntryKind, Frame, GapNotice, GroupId, Hello, IdentityEntry, MessageId, login_message,
    register_message,
};

/// Plain settings of a session (no clap types).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// How long a message may wait for its key before it is reported
    /// undecryptable.
    pub pending_timeout_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            pending_timeout_ms: CLIENT_PENDING_TIMEOUT_MS,
        }
    }
}

/// Something the session must learn from the relay before it can handle
/// the current input; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Fetch these users' identities and pass them to
    /// [`Session::pin_identities`].
    Identities(Vec<String>),
    /// Fetch the group's commits from this epoch and pass them to
    /// [`Session::join_from_log`].
    Commits {
        /// The group.
        group_id: GroupId,
        /// The first epoch wanted.
        from_epoch: u64,
    },
}

/// Errors of the session. Peer misbehaviour ends up as inbox warnings, not
/// as errors; errors are local misuse, refusals and missing inputs.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The session must fetch something first (see [`Need`]).
    #[error("need {0:?} from the relay first")]
    Need(Need),
    /// The relay's hello signature does not verify.
    #[error("the relay's hello signature does not verify")]
    BadHello,
    /// The relay presents another key than the one pinned on first contact.
    #[error(
        "the relay's key changed since first contact (possible impersonation); refusing to continue"
    )]
    RelayKeyChanged,
    /// The relay asks for a DH group this client does not know.
    #[error("the relay uses an unknown Diffie-Hellman group {0}")]
    UnknownDhGroup(u8),
    /// A user's identity is not the one pinned.
    #[error(
        "the identity of {0} changed since first contact; compare `hermes fingerprint {0}` out of band, then run `hermes trust {0}`"
    )]
    IdentityChanged(String),
    /// A user's identity does not verify (bad certificate).
    #[error("the identity the relay gave for {0} does not verify")]
    BadIdentity(String),
    /// No such user on the relay.
    #[error("no such user: {0}")]
    NoSuchUser(String),
    /// No group matches the name.
    #[error("no group named {0:?}")]
    NoSuchGroup(String),
    /// Several groups have this name.
    #[error("several groups are named {0:?}; use the group id")]
    AmbiguousGroup(String),
    /// The group cannot be used (frozen, removed, dissolved).
    #[error("group {name:?} cannot be used: {why}")]
    GroupClosed {
        /// The group's name.
        name: String,
        /// Why.
        why: String,
    },
    /// An empty message is never sent.
    #[error("empty message not sent")]
    EmptyMessage,
    /// Only the admin may do this.
    #[error("only the admin of {0:?} may do this")]
    NotAdmin(String),
    /// Group cryptography refused.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// A commit did not verify.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The state file failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// What the relay's hello told us, once verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloInfo {
    /// The relay's key (now pinned).
    pub relay_key: [u8; 32],
    /// The DH group.
    pub dh_group: DhGroup,
    /// This connection's challenge.
    pub challenge: [u8; 32],
}

/// Verifies the relay's hello: the signature under the key it presents,
/// the key against `pinned` (TOFU: the first key seen is pinned by the
/// caller), a DH group we know.
///
/// # Errors
/// [`SessionError::BadHello`], [`SessionError::RelayKeyChanged`],
/// [`SessionError::UnknownDhGroup`].
pub fn verify_hello(
    hello: &Hello<'_>,
    pinned: Option<[u8; 32]>,
) -> Result<HelloInfo, SessionError> {
    verify_signature(&hello.relay_key, &hello.signed_bytes(), &hello.signature)
        .map_err(|_| SessionError::BadHello)?;
    if let Some(p) = pinned
        && p != hello.relay_key
    {
        return Err(SessionError::RelayKeyChanged);
    }
    let dh_group = DhGroup::from_id(hello.dh_group)
        .map_err(|_| SessionError::UnknownDhGroup(hello.dh_group))?;
    Ok(HelloInfo {
        relay_key: hello.relay_key,
        dh_group,
        challenge: hello.challenge,
    })
}

/// The login frame for `st`'s user, and pins the relay key on first use.
#[must_use]
pub fn login_frame(st: &mut ClientState, hello: &HelloInfo) -> Vec<u8> {
    st.relay_key.get_or_insert(hello.relay_key);
    let sig = st
        .identity
        .sign(&login_message(&hello.challenge, &hello.relay_key, &st.user));
    Frame::Login {
        name: &st.user,
        signature: sig,
    }
    .to_vec()
}

/// The register frame for a fresh state (pins the relay key).
#[must_use]
pub fn register_frame(st: &mut ClientState, hello: &HelloInfo) -> Vec<u8> {
    st.relay_key.get_or_insert(hello.relay_key);
    let identity = st.identity.public().encode();
    let proof = st.identity.sign(&register_message(
        &hello.challenge,
        &hello.relay_key,
        &st.user,
    ));
    Frame::Register {
        name: &st.user,
        identity: &identity,
        proof,
    }
    .to_vec()
}

/// The pairwise keys with one peer, derived from its pinned identity.
struct Channel {
    identity: Vec<u8>,
    send: EnvelopeKeys,
    recv: EnvelopeKeys,
}

/// Result of pinning a user's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// First contact: pinned now.
    New,
    /// The same identity as pinned.
    Same,
    /// A different identity than pinned: the contact is now blocked until
    /// `hermes trust`.
    Changed,
}

/// The pure client session: see the module doc for the call order. Holds
/// only caches (pairwise keys); everything that must survive is in the
/// [`ClientState`] passed to each call.
pub struct Session {
    config: SessionConfig,
    channels: HashMap<String, Channel>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("config", &self.config)
            .field("channels", &self.channels.len())
            .finish()
    }
}

fn random_id(rng: &mut impl CryptoRng) -> [u8; 16] {
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    id
}

/// A group's display name in notices, or its hex id if the record does
/// not decode.
fn group_label(rec: &GroupRecord) -> String {
    GroupSession::from_state_bytes(&rec.crypto)
        .map(|g| g.state().display_name().to_owned())
        .unwrap_or_else(|_| "?".into())
}

fn notice(
    st: &mut ClientState,
    group_id: GroupId,
    group_name: &str,
    text: String,
    now_ms: u64,
    rng: &mut impl CryptoRng,
) {
    st.push_inbox(InboxEntry {
        group_id,
        group_name: group_name.to_owned(),
        sender: String::new(),
        sent_at_ms: now_ms,
        text,
        id: random_id(rng),
        notice: true,
    });
}

/// Hex of a group id (32 lowercase digits).
#[must_use]
pub fn group_hex(id: &GroupId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds a group by display name (unambiguous among my groups) or hex id.
///
/// # Errors
/// [`SessionError::NoSuchGroup`], [`SessionError::AmbiguousGroup`].
pub fn resolve_group(st: &ClientState, name: &str) -> Result<GroupId, SessionError> {
    let mut found = Vec::new();
    for (gid, rec) in &st.groups {
        if group_hex(gid) == name.to_ascii_lowercase() {
            return Ok(*gid);
        }
        if let Ok(gs) = GroupSession::from_state_bytes(&rec.crypto)
            && gs.state().display_name() == name
        {
            // Prefer groups I am still in when names repeat.
            found.push((*gid, gs.closed().is_none()));
        }
    }
    let open: Vec<_> = found.iter().filter(|(_, open)| *open).collect();
    match (open.as_slice(), found.as_slice()) {
        ([one], _) => Ok(one.0),
        ([], [one]) => Ok(one.0),
        ([], []) => Err(SessionError::NoSuchGroup(name.to_owned())),
        _ => Err(SessionError::AmbiguousGroup(name.to_owned())),
    }
}

/// A summary of one group for `group list` / `/groups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The id.
    pub id: GroupId,
    /// Display name.
    pub name: String,
    /// Admin.
    pub admin: String,
    /// Epoch.
    pub epoch: u64,
    /// Members, sorted.
    pub members: Vec<String>,
    /// Why it is closed, if it is.
    pub closed: Option<String>,
}

/// Every group this client knows.
#[must_use]
pub fn list_groups(st: &ClientState) -> Vec<GroupInfo> {
    st.groups
        .iter()
        .filter_map(|(gid, rec)| {
            let gs = GroupSession::from_state_bytes(&rec.crypto).ok()?;
            Some(GroupInfo {
                id: *gid,
                name: gs.state().display_name().to_owned(),
                admin: gs.state().admin().to_owned(),
                epoch: gs.state().epoch(),
                members: gs.state().members().map(|(n, _)| n.to_owned()).collect(),
                closed: rec
                    .frozen
                    .clone()
                    .or_else(|| gs.closed().map(str::to_owned)),
            })
        })
        .collect()
}

impl Session {
    /// A session with `config`.
    #[must_use]
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            channels: HashMap::new(),
        }
    }

    /// Pins identities the relay returned (TOFU): a first identity is
    /// pinned, the same one is fine, a different one blocks the contact
    /// until [`trust`]. Returns, per name asked, the outcome.
    ///
    /// # Errors
    /// [`SessionError::NoSuchUser`] for a name the relay does not know,
    /// [`SessionError::BadIdentity`] for one that does not verify; nothing
    /// is pinned then.
    pub fn pin_identities(
        &mut self,
        st: &mut ClientState,
        entries: &[IdentityEntry<'_>],
    ) -> Result<Vec<(String, Pinned)>, SessionError> {
        let mut checked = Vec::with_capacity(entries.len());
        for e in entries {
            let bytes = e
                .identity
                .ok_or_else(|| SessionError::NoSuchUser(e.name.to_owned()))?;
            let public = PublicIdentity::decode(bytes)
                .map_err(|_| SessionError::BadIdentity(e.name.to_owned()))?;
            public
                .verify()
                .map_err(|_| SessionError::BadIdentity(e.name.to_owned()))?;
            checked.push((e.name.to_owned(), bytes.to_vec()));
        }
        Ok(checked
            .into_iter()
            .map(|(name, bytes)| {
                let outcome = pin(st, &name, bytes);
                (name, outcome)
            })
            .collect())
    }

    /// The pairwise channel with `peer`, from its pinned identity.
    fn channel(&mut self, st: &ClientState, peer: &str) -> Result<&Channel, SessionError> {
        let contact = st
            .contacts
            .get(peer)
            .ok_or_else(|| SessionError::Need(Need::Identities(vec![peer.to_owned()])))?;
        if contact.changed_to.is_some() {
            return Err(SessionError::IdentityChanged(peer.to_owned()));
        }
        let fresh = self
            .channels
            .get(peer)
            .is_some_and(|c| c.identity == contact.identity);
        if !fresh {
            let public = PublicIdentity::decode(&contact.identity)
                .map_err(|_| SessionError::BadIdentity(peer.to_owned()))?;
            let z = st
                .identity
                .dh()
                .agree(&public.dh_public)
                .map_err(|_| SessionError::BadIdentity(peer.to_owned()))?;
            self.channels.insert(
                peer.to_owned(),
                Channel {
                    identity: contact.identity.clone(),
                    send: channel_keys(&z, &st.user, peer),
                    recv: channel_keys(&z, peer, &st.user),
                },
            );
        }
        self.channels
            .get(peer)
            .ok_or_else(|| SessionError::Need(Need::Identities(vec![peer.to_owned()])))
    }

    /// Computes the pairwise channels to `peers` that are not cached yet,
    /// in parallel (rayon above `PARALLEL_SETUP_THRESHOLD` peers: the DH
    /// agreements are the O(n) per-client share of a group's setup). Peers
    /// that are blocked, unpinned or do not match their roster key are
    /// left out; [`Session::channel`] reports them one by one.
    fn warm_channels(&mut self, st: &ClientState, roster: &GroupState, peers: &[String]) {
        self.warm_channels_with(st, roster, peers, Parallelism::Auto);
    }

    /// [`Session::warm_channels`] with the parallelism chosen (tests).
    fn warm_channels_with(
        &mut self,
        st: &ClientState,
        roster: &GroupState,
        peers: &[String],
        mode: Parallelism,
    ) {
        let todo: Vec<(String, PublicIdentity)> = peers
            .iter()
            .filter_map(|p| {
                let c = st.contacts.get(p)?;
                if c.changed_to.is_some()
                    || self
                        .channels
                        .get(p)
                        .is_some_and(|ch| ch.identity == c.identity)
                {
                    return None;
                }
                Some((p.clone(), PublicIdentity::decode(&c.identity).ok()?))
            })
            .collect();
        if todo.is_empty() {
            return;
        }
        let made = pairwise_channels(&st.user, &st.identity, &todo, Some(roster), mode);
        for ((peer, _), ch) in todo.into_iter().zip(made) {
            let (Ok(ch), Some(c)) = (ch, st.contacts.get(&peer)) else {
                continue;
            };
            self.channels.insert(
                peer,
                Channel {
                    identity: c.identity.clone(),
                    send: ch.send,
                    recv: ch.recv,
                },
            );
        }
    }

    /// Checks that the pinned identity of every named member matches its
    /// roster key; unknown ones are a [`Need`].
    fn check_roster_keys(&self, st: &ClientState, gs: &GroupState) -> Result<(), SessionError> {
        let missing: Vec<String> = gs
            .members()
            .filter(|(n, _)| *n != st.user && !st.contacts.contains_key(*n))
            .map(|(n, _)| n.to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(SessionError::Need(Need::Identities(missing)));
        }
        Ok(())
    }

    // -----------------------------------------------------------------
    // Commands
    // -----------------------------------------------------------------

    /// Builds the genesis of a new group with me as admin and `members`
    /// (whose identities must be pinned). Nothing is recorded until
    /// [`Session::group_created`].
    ///
    /// # Errors
    /// [`SessionError::Need`] for unpinned members,
    /// [`SessionError::IdentityChanged`], membership errors (bad names,
    /// too many members).
    pub fn create_group(
        &mut self,
        st: &ClientState,
        display_name: &str,
        members: &[String],
        rng: &mut impl CryptoRng,
    ) -> Result<Commit, SessionError> {
        let mut roster = vec![(st.user.clone(), st.identity.public().signing_key)];
        let mut missing = Vec::new();
        for m in members {
            if *m == st.user || roster.iter().any(|(n, _)| n == m) {
                continue;
            }
            match st.contacts.get(m) {
                None => missing.push(m.clone()),
                Some(c) if c.changed_to.is_some() => {
                    return Err(SessionError::IdentityChanged(m.clone()));
                }
                Some(c) => {
                    let key = c
                        .signing_key()
                        .ok_or_else(|| SessionError::BadIdentity(m.clone()))?;
                    roster.push((m.clone(), key));
                }
            }
        }
        if !missing.is_empty() {
            return Err(SessionError::Need(Need::Identities(missing)));
        }
        let gid = random_id(rng);
        Ok(Commit::genesis(
            gid,
            display_name.to_owned(),
            st.user.clone(),
            roster,
            |m| st.identity.sign(m),
        )?)
    }

    /// Records a group the relay accepted the genesis of: a fresh sender
    /// key, owed to every other member.
    ///
    /// # Errors
    /// Membership errors (the genesis does not verify).
    pub fn group_created(
        &mut self,
        st: &mut ClientState,
        genesis: &Commit,
        rng: &mut impl CryptoRng,
    ) -> Result<GroupId, SessionError> {
        let state = GroupState::from_genesis(genesis)?;
        let gid = *state.group_id();
        if st.groups.contains_key(&gid) {
            return Ok(gid);
        }
        let others = others(&state, &st.user);
        let gs = GroupSession::new(&st.user, state, rng)?;
        st.groups.insert(
            gid,
            GroupRecord {
                commits: vec![genesis.encode()],
                crypto: gs.to_state_bytes(),
                frozen: None,
                owe_key_to: others,
                asked_key_of: Vec::new(),
            },
        );
        Ok(gid)
    }

    /// Signs a membership change of group `gid` (not applied until the
    /// relay accepts it: [`Session::commit_accepted`]). For an add, the
    /// newcomer's identity must be pinned.
    ///
    /// # Errors
    /// [`SessionError::Need`], [`SessionError::NotAdmin`],
    /// [`SessionError::GroupClosed`], membership errors.
    pub fn propose(
        &mut self,
        st: &ClientState,
        gid: &GroupId,
        change: Change,
    ) -> Result<Commit, SessionError> {
        let (rec, gs) = open_group(st, gid)?;
        let name = gs.state().display_name().to_owned();
        if let Some(why) = rec
            .frozen
            .clone()
            .or_else(|| gs.closed().map(str::to_owned))
        {
            return Err(SessionError::GroupClosed { name, why });
        }
        let key_of = |who: &str| -> Result<[u8; 32], SessionError> {
            gs.state()
                .identity_key(who)
                .copied()
                .ok_or_else(|| SessionError::Group(GroupError::NotMember(who.to_owned())))
        };
        let op = match change {
            Change::Add(who) => {
                let c = st
                    .contacts
                    .get(&who)
                    .ok_or_else(|| SessionError::Need(Need::Identities(vec![who.clone()])))?;
                if c.changed_to.is_some() {
                    return Err(SessionError::IdentityChanged(who));
                }
                let identity_key = c
                    .signing_key()
                    .ok_or_else(|| SessionError::BadIdentity(who.clone()))?;
                Operation::Add {
                    name: who,
                    identity_key,
                    public_identity: c.identity.clone(),
                }
            }
            Change::Remove(who) => Operation::Remove {
                identity_key: key_of(&who)?,
                name: who,
            },
            Change::Leave => Operation::Leave {
                identity_key: key_of(&st.user)?,
                name: st.user.clone(),
            },
            Change::TransferAdmin(who) => Operation::TransferAdmin {
                identity_key: key_of(&who)?,
                name: who,
            },
        };
        let needs_admin = !matches!(op, Operation::Leave { .. });
        if needs_admin && gs.state().admin() != st.user {
            return Err(SessionError::NotAdmin(name));
        }
        Ok(gs.state().propose(op, &st.user, |m| st.identity.sign(m))?)
    }

    /// Applies my own commit once the relay accepted it (the same path as
    /// a pushed commit; a later push of it is a harmless duplicate).
    /// Returns the frames to send now: for an add, the welcome to the
    /// newcomer.
    ///
    /// # Errors
    /// As [`Session::handle_deliver`].
    pub fn commit_accepted(
        &mut self,
        st: &mut ClientState,
        commit: &Commit,
        now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<Vec<u8>>, SessionError> {
        let mut out = Vec::new();
        self.apply_commit(st, commit, now_ms, rng, &mut out)?;
        if let Operation::Add { name, .. } = &commit.op {
            let (_, gs) = open_group(st, &commit.group_id)?;
            let welcome = gs.welcome_for(name)?;
            let ch = self.channel(st, name)?;
            let sealed = seal_direct(
                WELCOME_KIND,
                &ch.send,
                &st.user,
                name,
                &welcome.encode(),
                rng,
            )?;
            out.push(direct_frame(
                name,
                &commit.group_id,
                EntryKind::Welcome,
                &sealed,
                rng,
            ));
        }
        Ok(out)
    }

    /// The distributions I still owe in group `gid`, sealed, as direct-send
    /// frames with the recipient's name. The caller sends them and, once
    /// each stored receipt arrived, calls [`Session::distribution_delivered`].
    /// Members whose identity changed are skipped (listed in the second
    /// value) so one blocked contact does not hold up the rest.
    ///
    /// # Errors
    /// [`SessionError::Need`] for unpinned members; group errors.
    #[allow(clippy::type_complexity)] // (recipient, frame) pairs and the blocked names
    pub fn owed_distributions(
        &mut self,
        st: &mut ClientState,
        gid: &GroupId,
        rng: &mut impl CryptoRng,
    ) -> Result<(Vec<(String, Vec<u8>)>, Vec<String>), SessionError> {
        let (rec, mut gs) = open_group(st, gid)?;
        if rec.owe_key_to.is_empty() || gs.closed().is_some() || rec.frozen.is_some() {
            return Ok((Vec::new(), Vec::new()));
        }
        let owed = rec.owe_key_to.clone();
        let missing: Vec<String> = owed
            .iter()
            .filter(|n| !st.contacts.contains_key(*n))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(SessionError::Need(Need::Identities(missing)));
        }
        self.warm_channels(st, gs.state(), &owed);
        let mut frames = Vec::new();
        let mut blocked = Vec::new();
        for peer in owed {
            if !gs.state().is_member(&peer) {
                continue;
            }
            let roster_key = gs.state().identity_key(&peer).copied();
            let pinned_key = st.contacts.get(&peer).and_then(Contact::signing_key);
            if roster_key != pinned_key {
                blocked.push(peer);
                continue;
            }
            let ch = match self.channel(st, &peer) {
                Ok(ch) => ch,
                Err(SessionError::IdentityChanged(_)) => {
                    blocked.push(peer);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let d = gs.distribution_for(&peer)?;
            let sealed = d.seal(&ch.send, &st.user, &peer, rng)?;
            frames.push((
                peer.clone(),
                direct_frame(&peer, gid, EntryKind::Distribution, &sealed, rng),
            ));
        }
        if let Some(rec) = st.groups.get_mut(gid) {
            // `distribution_for` records what was given: save it.
            rec.crypto = gs.to_state_bytes();
        }
        Ok((frames, blocked))
    }

    /// Marks my key as delivered to `peer` in `gid`.
    pub fn distribution_delivered(&mut self, st: &mut ClientState, gid: &GroupId, peer: &str) {
        if let Some(rec) = st.groups.get_mut(gid) {
            rec.owe_key_to.retain(|n| n != peer);
        }
    }

    /// Seals `text` for group `gid` as a group-send frame under
    /// `message_id`. My key must have reached every member first
    /// ([`Session::owed_distributions`]).
    ///
    /// # Errors
    /// [`SessionError::EmptyMessage`], [`SessionError::GroupClosed`],
    /// [`SessionError::IdentityChanged`] when a member could not be given
    /// my key, group errors.
    pub fn seal_text(
        &mut self,
        st: &mut ClientState,
        gid: &GroupId,
        text: &str,
        message_id: MessageId,
        now_ms: u64,
    ) -> Result<Vec<u8>, SessionError> {
        if text.trim().is_empty() {
            return Err(SessionError::EmptyMessage);
        }
        let (rec, mut gs) = open_group(st, gid)?;
        let name = gs.state().display_name().to_owned();
        if let Some(why) = rec
            .frozen
            .clone()
            .or_else(|| gs.closed().map(str::to_owned))
        {
            return Err(SessionError::GroupClosed { name, why });
        }
        if let Some(peer) = rec.owe_key_to.iter().find(|p| gs.state().is_member(p)) {
            // Only reachable when that member's identity is blocked.
            return Err(SessionError::IdentityChanged(peer.clone()));
        }
        let epoch = gs.state().epoch();
        let ct = gs.seal(now_ms, message_id, text.as_bytes())?;
        if let Some(rec) = st.groups.get_mut(gid) {
            rec.crypto = gs.to_state_bytes();
        }
        Ok(Frame::GroupSend {
            group_id: *gid,
            epoch,
            message_id,
            ciphertext: &ct,
        }
        .to_vec())
    }

    /// Builds the session of a group I was added to from its full commit
    /// log (fetched after [`Need::Commits`]).
    ///
    /// # Errors
    /// Membership errors (the log does not verify), [`SessionError::Need`]
    /// for members whose identities are not pinned.
    pub fn join_from_log(
        &mut self,
        st: &mut ClientState,
        gid: &GroupId,
        log: &[Vec<u8>],
        now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(), SessionError> {
        if let Some(rec) = st.groups.get(gid) {
            let closed = rec.frozen.is_none()
                && GroupSession::from_state_bytes(&rec.crypto).is_ok_and(|g| g.closed().is_some());
            if !closed {
                return Ok(());
            }
        }
        let commits = log
            .iter()
            .map(|b| Commit::decode(b))
            .collect::<Result<Vec<_>, _>>()?;
        let gs = GroupSession::from_log(&st.user, &commits, rng)?;
        if gs.state().group_id() != gid {
            return Err(SessionError::Group(GroupError::WrongGroup));
        }
        if gs.state().identity_key(&st.user) != Some(&st.identity.public().signing_key) {
            return Err(SessionError::Group(GroupError::BadIdentity(
                st.user.clone(),
            )));
        }
        self.check_roster_keys(st, gs.state())?;
        let name = gs.state().display_name().to_owned();
        let others = others(gs.state(), &st.user);
        self.warm_channels(st, gs.state(), &others);
        st.groups.insert(
            *gid,
            GroupRecord {
                commits: log.to_vec(),
                crypto: gs.to_state_bytes(),
                frozen: None,
                owe_key_to: others,
                asked_key_of: Vec::new(),
            },
        );
        notice(
            st,
            *gid,
            &name,
            format!("you have joined {name}"),
            now_ms,
            rng,
        );
        Ok(())
    }

    /// Applies commits fetched after [`Need::Commits`] for a group I am in
    /// (a gap in the pushed commits, or a send refused as stale).
    ///
    /// # Errors
    /// As [`Session::handle_deliver`].
    pub fn catch_up(
        &mut self,
        st: &mut ClientState,
        gid: &GroupId,
        log: &[Vec<u8>],
        now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(), SessionError> {
        let mut out = Vec::new();
        for bytes in log {
            match Commit::decode(bytes) {
                Ok(c) if c.group_id == *gid => self.apply_commit(st, &c, now_ms, rng, &mut out)?,
                Ok(_) => {}
                Err(e) => {
                    self.freeze(st, gid, &format!("undecodable commit: {e}"), now_ms, rng);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------
    // Pushed entries
    // -----------------------------------------------------------------

    /// Handles one pushed queue entry. Returns frames to send (key
    /// requests, re-sent distributions); messages and notices land in the
    /// inbox. On error nothing changed: fetch what a [`Need`] asks and call
    /// again; any other error should be reported and the entry skipped.
    ///
    /// # Errors
    /// [`SessionError::Need`]; state errors.
    pub fn handle_deliver(
        &mut self,
        st: &mut ClientState,
        d: &Deliver<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Vec<Vec<u8>>, SessionError> {
        let mut out = Vec::new();
        match d.kind {
            EntryKind::Commit => {
                let commit = match Commit::decode(d.ciphertext) {
                    Ok(c) => c,
                    Err(e) => {
                        self.freeze(
                            st,
                            &d.group_id,
                            &format!("undecodable commit: {e}"),
                            now_ms,
                            rng,
                        );
                        return Ok(out);
                    }
                };
                self.apply_commit(st, &commit, now_ms, rng, &mut out)?;
            }
            EntryKind::Distribution => self.handle_distribution(st, d, now_ms, rng, &mut out)?,
            EntryKind::Welcome => self.handle_welcome(st, d, now_ms, rng)?,
            EntryKind::KeyRequest => self.handle_key_request(st, d, rng, &mut out)?,
            EntryKind::GroupMessage => self.handle_group_message(st, d, now_ms, rng, &mut out)?,
        }
        Ok(out)
    }

    /// A gap notice: let the sender's chain skip the lost messages, and say
    /// so in the inbox.
    pub fn handle_gap(
        &mut self,
        st: &mut ClientState,
        g: &GapNotice<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRng,
    ) {
        let Some(rec) = st.groups.get_mut(&g.group_id) else {
            return;
        };
        let Ok(mut gs) = GroupSession::from_state_bytes(&rec.crypto) else {
            return;
        };
        gs.receivers_mut().handle_gap(g.sender, g.count);
        rec.crypto = gs.to_state_bytes();
        let name = gs.state().display_name().to_owned();
        notice(
            st,
            g.group_id,
            &name,
            format!(
                "{} messages from {} in {name} were dropped by the relay",
                g.count, g.sender
            ),
            now_ms,
            rng,
        );
    }

    /// Reports messages that waited longer than the timeout for their key.
    pub fn tick(&mut self, st: &mut ClientState, now_ms: u64, rng: &mut impl CryptoRng) {
        let timeout = self.config.pending_timeout_ms;
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut st.pending)
            .into_iter()
            .partition(|p| now_ms.saturating_sub(p.received_ms) >= timeout);
        st.pending = kept;
        for p in expired {
            report_undecryptable(st, &p, now_ms, rng);
        }
    }

    fn freeze(
        &mut self,
        st: &mut ClientState,
        gid: &GroupId,
        why: &str,
        now_ms: u64,
        rng: &mut impl CryptoRng,
    ) {
        let Some(rec) = st.groups.get_mut(gid) else {
            return;
        };
        if rec.frozen.is_some() {
            return;
        }
        rec.frozen = Some(why.to_owned());
        let name = group_label(rec);
        notice(
            st,
            *gid,
            &name,
            format!("warning: {name} is frozen: {why}"),
            now_ms,
            rng,
        );
    }

    fn apply_commit(
        &mut self,
        st: &mut ClientState,
        commit: &Commit,
        now_ms: u64,
        rng: &mut impl CryptoRng,
        _out: &mut Vec<Vec<u8>>,
    ) -> Result<(), SessionError> {
        let gid = commit.group_id;
        let Some(rec) = st.groups.get(&gid) else {
            return self.commit_for_unknown_group(st, commit, now_ms, rng);
        };
        if rec.frozen.is_some() {
            return Ok(());
        }
        let mut gs = GroupSession::from_state_bytes(&rec.crypto)?;
        let epoch = gs.state().epoch();
        if gs.closed().is_some() {
            // Added again after I left or was removed: join afresh.
            return match &commit.op {
                Operation::Add { name, .. } if *name == st.user && commit.epoch > epoch => {
                    Err(SessionError::Need(Need::Commits {
                        group_id: gid,
                        from_epoch: 0,
                    }))
                }
                _ => Ok(()),
            };
        }
        if commit.epoch <= epoch {
            return Ok(()); // a re-delivery (or my own, already applied)
        }
        if commit.epoch > epoch + 1 {
            return Err(SessionError::Need(Need::Commits {
                group_id: gid,
                from_epoch: epoch + 1,
            }));
        }
        if let Operation::Add {
            name,
            identity_key,
            public_identity,
        } = &commit.op
        {
            // The newcomer's identity comes signed in the commit: pin it
            // (TOFU) if it verifies and matches its roster key.
            let ok = PublicIdentity::decode(public_identity)
                .ok()
                .filter(|p| p.verify().is_ok() && &p.signing_key == identity_key);
            if ok.is_some() && *name != st.user {
                pin(st, name, public_identity.clone());
            }
        }
        let name = gs.state().display_name().to_owned();
        let fx = match gs.apply_commit(commit, rng) {
            Ok(fx) => fx,
            Err(e) => {
                self.freeze(
                    st,
                    &gid,
                    &format!("a membership commit failed verification ({e})"),
                    now_ms,
                    rng,
                );
                return Ok(());
            }
        };
        let new_name = gs.state().display_name().to_owned();
        if let Some(rec) = st.groups.get_mut(&gid) {
            rec.commits.push(commit.encode());
            rec.crypto = gs.to_state_bytes();
            if fx.rotated {
                rec.owe_key_to = fx.send_my_key_to.clone();
                rec.asked_key_of.clear();
            } else {
                for n in &fx.send_my_key_to {
                    if !rec.owe_key_to.contains(n) {
                        rec.owe_key_to.push(n.clone());
                    }
                }
            }
            if let Some(gone) = &fx.forgot {
                rec.owe_key_to.retain(|n| n != gone);
            }
        }
        if let Some(j) = &fx.joined
            && *j != st.user
        {
            notice(
                st,
                gid,
                &name,
                format!("{j} has joined {name}"),
                now_ms,
                rng,
            );
        }
        if let Some(gone) = &fx.forgot {
            notice(
                st,
                gid,
                &name,
                format!("{gone} has left {name}"),
                now_ms,
                rng,
            );
            // Their pending messages can never be opened now.
            let (theirs, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut st.pending)
                .into_iter()
                .partition(|p| p.group_id == gid && p.sender == *gone);
            st.pending = rest;
            for p in theirs {
                report_undecryptable(st, &p, now_ms, rng);
            }
        }
        if fx.removed_me {
            let how = if matches!(commit.op, Operation::Leave { .. }) {
                "you have left"
            } else {
                "you were removed from"
            };
            notice(st, gid, &name, format!("{how} {name}"), now_ms, rng);
        } else if fx.dissolved {
            notice(
                st,
                gid,
                &name,
                format!("{name} was dissolved (its admin left)"),
                now_ms,
                rng,
            );
        }
        if let Operation::TransferAdmin { name: who, .. } = &commit.op {
            notice(
                st,
                gid,
                &new_name,
                format!("{who} is now the admin of {new_name}"),
                now_ms,
                rng,
            );
        }
        Ok(())
    }

    fn commit_for_unknown_group(
        &mut self,
        st: &mut ClientState,
        commit: &Commit,
        now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(), SessionError> {
        let gid = commit.group_id;
        match &commit.op {
            Operation::Genesis { .. } => {
                let state = match GroupState::from_genesis(commit) {
                    Ok(s) => s,
                    Err(_) => return Ok(()), // not a group we can join; never applied
                };
                if state.identity_key(&st.user) != Some(&st.identity.public().signing_key) {
                    return Ok(()); // not for me (or a wrong key for me): ignore
                }
                // Pin everyone first (the roster key of each must be the
                // key the relay shows for that name).
                self.check_roster_keys(st, &state)?;
                for (n, key) in state.members() {
                    if n == st.user {
                        continue;
                    }
                    let pinned = st.contacts.get(n).and_then(Contact::signing_key);
                    if pinned != Some(*key) {
                        return Err(SessionError::IdentityChanged(n.to_owned()));
                    }
                }
                let name = state.display_name().to_owned();
                let admin = state.admin().to_owned();
                let others = others(&state, &st.user);
                // Every member's distribution (and mine to each) needs the
                // channel: compute them all now, in bulk.
                self.warm_channels(st, &state, &others);
                let gs = GroupSession::new(&st.user, state, rng)?;
                st.groups.insert(
                    gid,
                    GroupRecord {
                        commits: vec![commit.encode()],
                        crypto: gs.to_state_bytes(),
                        frozen: None,
                        owe_key_to: others,
                        asked_key_of: Vec::new(),
                    },
                );
                notice(
                    st,
                    gid,
                    &name,
                    format!("{admin} created {name} with you in it"),
                    now_ms,
                    rng,
                );
                Ok(())
            }
            Operation::Add { name, .. } if *name == st.user => {
                Err(SessionError::Need(Need::Commits {
                    group_id: gid,
                    from_epoch: 0,
                }))
            }
            _ => Ok(()), // a group I am not in (any more)
        }
    }

    fn open_group_for_peer(
        &mut self,
        st: &ClientState,
        d: &Deliver<'_>,
    ) -> Result<Option<GroupSession>, SessionError> {
        let Some(rec) = st.groups.get(&d.group_id) else {
            return Ok(None);
        };
        if rec.frozen.is_some() {
            return Ok(None);
        }
        let gs = GroupSession::from_state_bytes(&rec.crypto)?;
        if gs.closed().is_some() || !gs.state().is_member(d.sender) || d.sender == st.user {
            return Ok(None);
        }
        if !st.contacts.contains_key(d.sender) {
            return Err(SessionError::Need(Need::Identities(vec![
                d.sender.to_owned(),
            ])));
        }
        Ok(Some(gs))
    }

    fn handle_distribution(
        &mut self,
        st: &mut ClientState,
        d: &Deliver<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRng,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), SessionError> {
        let Some(mut gs) = self.open_group_for_peer(st, d)? else {
            return Ok(());
        };
        let name = gs.state().display_name().to_owned();
        let sender = d.sender;
        let roster_key = gs.state().identity_key(sender).copied();
        let ch = match self.channel(st, sender) {
            Ok(ch) if roster_key == st.contacts.get(sender).and_then(Contact::signing_key) => ch,
            Ok(_) | Err(SessionError::IdentityChanged(_)) => {
                notice(
                    st,
                    d.group_id,
                    &name,
                    format!(
                        "warning: refused {sender}'s key in {name}: its identity changed; run `hermes trust {sender}` after checking `hermes fingerprint {sender}`"
                    ),
                    now_ms,
                    rng,
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let dist = match Distribution::open(&ch.recv, sender, &st.user, d.ciphertext) {
            Ok(dist) => dist,
            Err(_) => {
                notice(
                    st,
                    d.group_id,
                    &name,
                    format!(
                        "warning: a key from {sender} in {name} failed verification and was dropped"
                    ),
                    now_ms,
                    rng,
                );
                return Ok(());
            }
        };
        if let Err(e) = gs.handle_distribution(sender, &dist) {
            notice(
                st,
                d.group_id,
                &name,
                format!("warning: refused a key from {sender} in {name}: {e}"),
                now_ms,
                rng,
            );
            return Ok(());
        }
        if let Some(rec) = st.groups.get_mut(&d.group_id) {
            rec.crypto = gs.to_state_bytes();
            rec.asked_key_of.retain(|n| n != sender);
        }
        self.retry_pending(st, &d.group_id, now_ms, rng, out)
    }

    /// Tries every pending message of `gid` again.
    fn retry_pending(
        &mut self,
        st: &mut ClientState,
        gid: &GroupId,
        now_ms: u64,
        rng: &mut impl CryptoRng,
        _out: &mut Vec<Vec<u8>>,
    ) -> Result<(), SessionError> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut st.pending)
            .into_iter()
            .partition(|p| p.group_id == *gid);
        st.pending = rest;
        for p in mine {
            match self.open_message(st, gid, &p.ciphertext, now_ms, rng)? {
                Opened::Shown | Opened::Dropped => {}
                Opened::NoKey { .. } => st.pending.push(p),
            }
        }
        Ok(())
    }

    fn handle_welcome(
        &mut self,
        st: &mut ClientState,
        d: &Deliver<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(), SessionError> {
        let Some(gs) = self.open_group_for_peer(st, d)? else {
            return Ok(());
        };
        let name = gs.state().display_name().to_owned();
        let sender = d.sender;
        let ch = match self.channel(st, sender) {
            Ok(ch) => ch,
            Err(SessionError::IdentityChanged(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let welcome = open_direct(WELCOME_KIND, &ch.recv, sender, &st.user, d.ciphertext)
            .ok()
            .and_then(|body| Welcome::decode(&body).ok());
        let Some(welcome) = welcome else {
            notice(
                st,
                d.group_id,
                &name,
                format!("warning: a welcome from {sender} to {name} failed verification"),
                now_ms,
                rng,
            );
            return Ok(());
        };
        // The welcome must match the verified log at its epoch.
        let matches = st
            .groups
            .get(&d.group_id)
            .is_some_and(|rec| welcome_matches_log(&welcome, sender, &rec.commits));
        if !matches {
            self.freeze(
                st,
                &d.group_id,
                "the admin's welcome does not match the commit log",
                now_ms,
                rng,
            );
        }
        Ok(())
    }

    fn handle_key_request(
        &mut self,
        st: &mut ClientState,
        d: &Deliver<'_>,
        rng: &mut impl CryptoRng,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), SessionError> {
        let Some(mut gs) = self.open_group_for_peer(st, d)? else {
            return Ok(());
        };
        let sender = d.sender;
        let roster_key = gs.state().identity_key(sender).copied();
        if roster_key != st.contacts.get(sender).and_then(Contact::signing_key) {
            return Ok(());
        }
        let ch = match self.channel(st, sender) {
            Ok(ch) => ch,
            Err(SessionError::IdentityChanged(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some(req) = open_direct(KEY_REQUEST_KIND, &ch.recv, sender, &st.user, d.ciphertext)
            .ok()
            .and_then(|body| KeyRequest::decode(&body).ok())
        else {
            return Ok(());
        };
        let Ok(Some(dist)) = gs.handle_key_request(sender, &req) else {
            return Ok(());
        };
        let sealed = dist.seal(&ch.send, &st.user, sender, rng)?;
        out.push(direct_frame(
            sender,
            &d.group_id,
            EntryKind::Distribution,
            &sealed,
            rng,
        ));
        if let Some(rec) = st.groups.get_mut(&d.group_id) {
            rec.crypto = gs.to_state_bytes();
        }
        Ok(())
    }

    fn handle_group_message(
        &mut self,
        st: &mut ClientState,
        d: &Deliver<'_>,
        now_ms: u64,
        rng: &mut impl CryptoRng,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), SessionError> {
        if st.was_seen(&d.message_id) || st.pending.iter().any(|p| p.message_id == d.message_id) {
            return Ok(());
        }
        if !st.groups.contains_key(&d.group_id) {
            return Ok(());
        }
        match self.open_message(st, &d.group_id, d.ciphertext, now_ms, rng)? {
            Opened::Shown | Opened::Dropped => Ok(()),
            Opened::NoKey { sender, key_id } => {
                let p = PendingMessage {
                    group_id: d.group_id,
                    sender: sender.clone(),
                    message_id: d.message_id,
                    received_ms: now_ms,
                    ciphertext: d.ciphertext.to_vec(),
                };
                if let Some(old) = st.push_pending(p) {
                    report_undecryptable(st, &old, now_ms, rng);
                }
                self.request_key(st, &d.group_id, &sender, key_id, rng, out)
            }
        }
    }

    fn request_key(
        &mut self,
        st: &mut ClientState,
        gid: &GroupId,
        sender: &str,
        key_id: u32,
        rng: &mut impl CryptoRng,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), SessionError> {
        let Some(rec) = st.groups.get(gid) else {
            return Ok(());
        };
        if rec.asked_key_of.iter().any(|n| n == sender) {
            return Ok(());
        }
        let gs = GroupSession::from_state_bytes(&rec.crypto)?;
        // Key requests go only to members of the verified roster.
        if !gs.state().is_member(sender) || sender == st.user {
            return Ok(());
        }
        let ch = match self.channel(st, sender) {
            Ok(ch) => ch,
            Err(SessionError::IdentityChanged(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let body = KeyRequest {
            group_id: *gid,
            key_id,
        }
        .encode();
        let sealed = seal_direct(KEY_REQUEST_KIND, &ch.send, &st.user, sender, &body, rng)?;
        out.push(direct_frame(
            sender,
            gid,
            EntryKind::KeyRequest,
            &sealed,
            rng,
        ));
        if let Some(rec) = st.groups.get_mut(gid) {
            rec.asked_key_of.push(sender.to_owned());
        }
        Ok(())
    }

    /// Opens one group message into the inbox.
    fn open_message(
        &mut self,
        st: &mut ClientState,
        gid: &GroupId,
        ct: &[u8],
        now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Opened, SessionError> {
        let Some(rec) = st.groups.get(gid) else {
            return Ok(Opened::Dropped);
        };
        if rec.frozen.is_some() {
            return Ok(Opened::Dropped);
        }
        let mut gs = GroupSession::from_state_bytes(&rec.crypto)?;
        let name = gs.state().display_name().to_owned();
        match gs.open(ct, now_ms) {
            Ok(m) => {
                if !st.mark_seen(&m.header.message_id) {
                    return Ok(Opened::Dropped);
                }
                if let Some(rec) = st.groups.get_mut(gid) {
                    rec.crypto = gs.to_state_bytes();
                }
                match std::str::from_utf8(&m.plaintext) {
                    Ok(text) => st.push_inbox(InboxEntry {
                        group_id: *gid,
                        group_name: name,
                        sender: m.header.sender.clone(),
                        sent_at_ms: m.header.unix_ms,
                        text: text.to_owned(),
                        id: m.header.message_id,
                        notice: false,
                    }),
                    Err(_) => notice(
                        st,
                        *gid,
                        &name,
                        format!(
                            "warning: a message from {} in {name} is not text and was not shown",
                            m.header.sender
                        ),
                        now_ms,
                        rng,
                    ),
                }
                Ok(Opened::Shown)
            }
            Err(GroupError::NoSenderKey { sender, key_id }) => Ok(Opened::NoKey { sender, key_id }),
            Err(GroupError::DuplicateOrExpired { .. }) => Ok(Opened::Dropped),
            Err(e) => {
                let who = crate::group::GroupMessageHeader::peek(ct)
                    .map(|(h, _, _)| h.sender)
                    .unwrap_or_else(|_| "an unknown sender".into());
                notice(
                    st,
                    *gid,
                    &name,
                    format!(
                        "warning: a message from {who} in {name} failed verification and was not shown ({e})"
                    ),
                    now_ms,
                    rng,
                );
                Ok(Opened::Dropped)
            }
        }
    }
}

enum Opened {
    Shown,
    Dropped,
    NoKey { sender: String, key_id: u32 },
}

/// A membership change to propose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add this user (admin only).
    Add(String),
    /// Remove this member (admin only).
    Remove(String),
    /// Leave (any member, signed by itself).
    Leave,
    /// Hand the admin role to this member (admin only).
    TransferAdmin(String),
}

fn others(state: &GroupState, me: &str) -> Vec<String> {
    state
        .members()
        .map(|(n, _)| n.to_owned())
        .filter(|n| n != me)
        .collect()
}

fn open_group<'a>(
    st: &'a ClientState,
    gid: &GroupId,
) -> Result<(&'a GroupRecord, GroupSession), SessionError> {
    let rec = st
        .groups
        .get(gid)
        .ok_or_else(|| SessionError::NoSuchGroup(group_hex(gid)))?;
    let gs = GroupSession::from_state_bytes(&rec.crypto)?;
    Ok((rec, gs))
}

fn report_undecryptable(
    st: &mut ClientState,
    p: &PendingMessage,
    now_ms: u64,
    rng: &mut impl CryptoRng,
) {
    let name = st
        .groups
        .get(&p.group_id)
        .map(group_label)
        .unwrap_or_default();
    notice(
        st,
        p.group_id,
        &name,
        format!(
            "undecryptable message from {} in {name} (its key never arrived)",
            p.sender
        ),
        now_ms,
        rng,
    );
}

fn welcome_matches_log(w: &Welcome, admin: &str, log: &[Vec<u8>]) -> bool {
    let mut state: Option<GroupState> = None;
    for bytes in log {
        let Ok(c) = Commit::decode(bytes) else {
            return false;
        };
        let next = match &state {
            None => GroupState::from_genesis(&c),
            Some(s) => s.apply(&c),
        };
        let Ok(next) = next else {
            return false;
        };
        if next.epoch() == w.epoch {
            return next.group_id() == &w.group_id
                && next.roster_hash() == w.roster_hash
                && next.admin() == admin;
        }
        state = Some(next);
    }
    false
}

/// Pins `bytes` as `name`'s identity (TOFU).
fn pin(st: &mut ClientState, name: &str, bytes: Vec<u8>) -> Pinned {
    match st.contacts.get_mut(name) {
        None => {
            st.contacts.insert(
                name.to_owned(),
                Contact {
                    identity: bytes,
                    changed_to: None,
                },
            );
            Pinned::New
        }
        Some(c) if c.identity == bytes => Pinned::Same,
        Some(c) => {
            c.changed_to = Some(bytes);
            Pinned::Changed
        }
    }
}

/// Accepts the changed identity of `name` (`hermes trust`). Returns false
/// if there was no change pending.
pub fn trust(st: &mut ClientState, name: &str) -> bool {
    match st.contacts.get_mut(name) {
        Some(c) => match c.changed_to.take() {
            Some(new) => {
                c.identity = new;
                true
            }
            None => false,
        },
        None => false,
    }
}

/// The safety number between me and `name` (from the pinned identity, or
/// the changed one if `changed` is set and one is pending).
#[must_use]
pub fn safety_number_with(st: &ClientState, name: &str, changed: bool) -> Option<String> {
    let c = st.contacts.get(name)?;
    let bytes = if changed {
        c.changed_to.as_ref().unwrap_or(&c.identity)
    } else {
        &c.identity
    };
    let theirs = PublicIdentity::decode(bytes).ok()?;
    let mine = st.identity.public().signing_key;
    Some(crate::crypto::fingerprint::safety_number(
        &st.user,
        &mine,
        name,
        &theirs.signing_key,
    ))
}

fn direct_frame(
    recipient: &str,
    gid: &GroupId,
    kind: EntryKind,
    sealed: &[u8],
    rng: &mut impl CryptoRng,
) -> Vec<u8> {
    Frame::DirectSend {
        recipient,
        group_id: *gid,
        kind,
        message_id: random_id(rng),
        ciphertext: sealed,
    }
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pending_timeout_is_the_named_limit() {
        assert_eq!(
            SessionConfig::default().pending_timeout_ms,
            CLIENT_PENDING_TIMEOUT_MS
        );
    }

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use crate::crypto::dh::DhGroup;
    use crate::crypto::identity::IdentityKeyPair;

    /// `me` with `n` pinned peers (`p0`..), the genesis of a group of all of
    /// us signed by `p0`, and the peers' key pairs.
    fn group_of(n: usize, rng: &mut StdRng) -> (ClientState, Commit, Vec<IdentityKeyPair>) {
        let mut st = ClientState::new("me", IdentityKeyPair::generate(DhGroup::Ffdhe2048, rng));
        let peers: Vec<IdentityKeyPair> = (0..n)
            .map(|_| IdentityKeyPair::generate(DhGroup::Ffdhe2048, rng))
            .collect();
        let mut roster = vec![("me".to_owned(), st.identity.public().signing_key)];
        for (i, p) in peers.iter().enumerate() {
            pin(&mut st, &format!("p{i}"), p.public().encode());
            roster.push((format!("p{i}"), p.public().signing_key));
        }
        let genesis = Commit::genesis([5; 16], "g".into(), "p0".into(), roster, |m| {
            peers[0].sign(m)
        })
        .unwrap();
        (st, genesis, peers)
    }

    /// The bulk path (`pairwise_channels`, rayon at and above the
    /// threshold) gives exactly the channels the one-by-one path does, for
    /// the same peers, whatever the parallelism; peers it cannot do
    /// (unpinned, identity changed) it leaves to the one-by-one path, which
    /// reports them.
    #[test]
    fn bulk_channels_equal_the_one_by_one_channels() {
        let mut rng = StdRng::seed_from_u64(3);
        let n = crate::limits::PARALLEL_SETUP_THRESHOLD + 2;
        let (mut st, genesis, _) = group_of(n, &mut rng);
        let state = GroupState::from_genesis(&genesis).unwrap();
        // p1's identity changed since it was pinned; "stranger" is unpinned.
        let other = IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng);
        pin(&mut st, "p1", other.public().encode());
        let mut names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
        names.push("stranger".into());

        let mut one_by_one = Session::new(SessionConfig::default());
        for name in &names {
            let got = one_by_one.channel(&st, name).map(|_| ());
            match name.as_str() {
                "p1" => assert!(matches!(got, Err(SessionError::IdentityChanged(_)))),
                "stranger" => assert!(matches!(got, Err(SessionError::Need(_)))),
                _ => assert!(got.is_ok(), "{name}: {got:?}"),
            }
        }
        for mode in [
            Parallelism::Auto,
            Parallelism::Parallel,
            Parallelism::Serial,
        ] {
            let mut bulk = Session::new(SessionConfig::default());
            bulk.warm_channels_with(&st, &state, &names, mode);
            let mut got: Vec<&String> = bulk.channels.keys().collect();
            got.sort();
            let mut want: Vec<&String> = one_by_one.channels.keys().collect();
            want.sort();
            assert_eq!(got, want, "{mode:?}");
            for (name, a) in &one_by_one.channels {
                let b = &bulk.channels[name];
                assert_eq!(a.identity, b.identity, "{mode:?} {name}");
                assert!(a.send == b.send && a.recv == b.recv, "{mode:?} {name}");
            }
        }
    }

    /// Joining a group (a genesis naming me) computes the channels to every
    /// other member at once, in bulk, so the distributions that follow
    /// from each of them open without a DH agreement apiece.
    #[test]
    fn joining_a_group_computes_every_members_channel_in_bulk() {
        let mut rng = StdRng::seed_from_u64(4);
        let n = crate::limits::PARALLEL_SETUP_THRESHOLD + 1;
        let (mut st, genesis, _) = group_of(n, &mut rng);
        let mut s = Session::new(SessionConfig::default());
        s.apply_commit(&mut st, &genesis, 1_000, &mut rng, &mut Vec::new())
            .unwrap();
        assert!(st.groups.contains_key(&[5; 16]));
        assert_eq!(s.channels.len(), n, "one channel per other member");
    }

    #[test]
    fn group_ids_print_as_32_hex_digits() {
        let mut id = [0u8; 16];
        id[0] = 0xab;
        id[15] = 0x01;
        assert_eq!(group_hex(&id), format!("ab{}01", "0".repeat(28)));
    }
}
