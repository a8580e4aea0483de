//! Frame kinds and their byte layouts (PROTOCOL.md, Part 3).
//!
//! A frame on the stream is `length: u32` followed by `length` bytes:
//! `version: u8, kind: u8, body`. Decoding borrows from the input (names,
//! identities, ciphertexts are slices of it), so a relay decoding a group
//! send copies nothing until it stores the ciphertext.

use super::reader::{Reader, put_bytes8, put_bytes16, put_bytes32, put_str8};
use super::{DecodeError, ErrorCode};
use crate::limits::{MAX_LIST_ITEMS, MAX_NAME_BYTES, MAX_PUBLIC_IDENTITY_BYTES};

/// The protocol version this code speaks; the first byte after the length.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes in the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Bytes of a deliver frame before the stored entry body: length (4),
/// version (1), kind (1), sequence number (8). See [`encode_deliver_header`].
pub const DELIVER_HEADER_LEN: usize = LENGTH_PREFIX_LEN + 2 + 8;

/// A 128-bit group id (random, chosen by the group's creator).
pub type GroupId = [u8; 16];
/// A 128-bit message id (chosen by the sender, unique per sender).
pub type MessageId = [u8; 16];

/// Domain-separation label of the relay's hello signature (v2: the
/// signature no longer covers the per-connection challenge, so the relay
/// signs once per start rather than once per connection; PROTOCOL.md 3.4).
pub const HELLO_LABEL: &[u8] = b"hermes hello v2\0";
/// Domain-separation label of a login signature.
pub const LOGIN_LABEL: &[u8] = b"hermes login v1\0";
/// Domain-separation label of a registration proof of possession.
pub const REGISTER_LABEL: &[u8] = b"hermes register v1\0";

/// The one-byte frame kind. Relay-to-client kinds are `0x01..=0x1f`,
/// client-to-relay kinds `0x20..=0x3f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Relay greeting with the login challenge.
    Hello = 0x01,
    /// Register or login succeeded.
    Authenticated = 0x02,
    /// Answer to fetch identities.
    Identities = 0x03,
    /// A create-group or commit was applied.
    CommitAccepted = 0x04,
    /// Answer to fetch commits.
    Commits = 0x05,
    /// Answer to list groups.
    Groups = 0x06,
    /// Answer to list members.
    Members = 0x07,
    /// A queue entry pushed to the client.
    Deliver = 0x08,
    /// A send was stored.
    StoredReceipt = 0x09,
    /// Entries were dropped from the client's queue.
    GapNotice = 0x0a,
    /// Answer to ping.
    Pong = 0x0b,
    /// A request was refused.
    Error = 0x0c,
    /// Create an account.
    Register = 0x20,
    /// Log in to an account.
    Login = 0x21,
    /// Ask for users' public identities.
    FetchIdentities = 0x22,
    /// Create a group from its genesis commit.
    CreateGroup = 0x23,
    /// A membership change.
    Commit = 0x24,
    /// Ask for a group's commits after an epoch.
    FetchCommits = 0x25,
    /// Ask for the groups the user is in.
    ListGroups = 0x26,
    /// Ask for a group's roster.
    ListMembers = 0x27,
    /// A message for every other member of a group.
    GroupSend = 0x28,
    /// A message for one other member (distribution, key request, welcome).
    DirectSend = 0x29,
    /// Cumulative acknowledgement.
    Ack = 0x2a,
    /// Liveness probe.
    Ping = 0x2b,
}

impl FrameKind {
    /// The kind for a wire byte.
    #[must_use]
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::Hello,
            0x02 => Self::Authenticated,
            0x03 => Self::Identities,
            0x04 => Self::CommitAccepted,
            0x05 => Self::Commits,
            0x06 => Self::Groups,
            0x07 => Self::Members,
            0x08 => Self::Deliver,
            0x09 => Self::StoredReceipt,
            0x0a => Self::GapNotice,
            0x0b => Self::Pong,
            0x0c => Self::Error,
            0x20 => Self::Register,
            0x21 => Self::Login,
            0x22 => Self::FetchIdentities,
            0x23 => Self::CreateGroup,
            0x24 => Self::Commit,
            0x25 => Self::FetchCommits,
            0x26 => Self::ListGroups,
            0x27 => Self::ListMembers,
            0x28 => Self::GroupSend,
            0x29 => Self::DirectSend,
            0x2a => Self::Ack,
            0x2b => Self::Ping,
            _ => return None,
        })
    }

    /// True for kinds a client sends to the relay.
    #[must_use]
    pub fn is_client_to_relay(self) -> bool {
        (self as u8) >= 0x20
    }
}

/// What a queue entry is. Group messages come from group sends; the next
/// three from direct sends; commits are fanned out by the relay itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// A group message (one ciphertext for the whole group).
    GroupMessage = 1,
    /// A sender-key distribution (pairwise envelope).
    Distribution = 2,
    /// A request for the recipient's sender key (pairwise envelope).
    KeyRequest = 3,
    /// A welcome for a newly added member (pairwise envelope).
    Welcome = 4,
    /// A membership commit (the encoded commit, not encrypted).
    Commit = 5,
}

impl EntryKind {
    /// The kind for a wire byte.
    #[must_use]
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::GroupMessage,
            2 => Self::Distribution,
            3 => Self::KeyRequest,
            4 => Self::Welcome,
            5 => Self::Commit,
            _ => return None,
        })
    }

    /// True for the kinds a direct send may carry.
    #[must_use]
    pub fn is_direct(self) -> bool {
        matches!(self, Self::Distribution | Self::KeyRequest | Self::Welcome)
    }
}

/// Relay greeting, the first frame on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Relay software name and version, e.g. `hermes/0.1.0` (informative).
    pub software: &'a str,
    /// The DH group clients must use (`crypto::dh::DhGroup` wire id).
    pub dh_group: u8,
    /// The relay's Ed25519 public key.
    pub relay_key: [u8; 32],
    /// The fresh login challenge for this connection.
    pub challenge: [u8; 32],
    /// Ed25519 signature by `relay_key` over [`Hello::signed_bytes`]
    /// (which leaves the challenge out).
    pub signature: [u8; 64],
}

impl Hello<'_> {
    /// The bytes the relay signs: [`HELLO_LABEL`], `software`, `dh_group`
    /// and `relay_key` as encoded in the body. The challenge is not signed:
    /// the same signature serves every connection of one relay start (see
    /// PROTOCOL.md 3.4 for why that loses nothing a client relied on).
    #[must_use]
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_LABEL.len() + 34 + self.software.len());
        out.extend_from_slice(HELLO_LABEL);
        put_str8(&mut out, self.software);
        out.push(self.dh_group);
        out.extend_from_slice(&self.relay_key);
        out
    }

    fn put_unsigned(&self, out: &mut Vec<u8>) {
        put_str8(out, self.software);
        out.push(self.dh_group);
        out.extend_from_slice(&self.relay_key);
        out.extend_from_slice(&self.challenge);
    }
}

fn put_auth_message(
    label: &[u8],
    challenge: &[u8; 32],
    relay_key: &[u8; 32],
    name: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + 65 + name.len());
    out.extend_from_slice(label);
    out.extend_from_slice(challenge);
    out.extend_from_slice(relay_key);
    put_bytes8(&mut out, name.as_bytes());
    out
}

/// The message a login signature covers: [`LOGIN_LABEL`] ‖ challenge (32)
/// ‖ relay key (32) ‖ name length (u8) ‖ NFC name.
#[must_use]
pub fn login_message(challenge: &[u8; 32], relay_key: &[u8; 32], name: &str) -> Vec<u8> {
    put_auth_message(LOGIN_LABEL, challenge, relay_key, name)
}

/// The message a registration proof covers: [`REGISTER_LABEL`] ‖ challenge
/// (32) ‖ relay key (32) ‖ name length (u8) ‖ NFC name.
#[must_use]
pub fn register_message(challenge: &[u8; 32], relay_key: &[u8; 32], name: &str) -> Vec<u8> {
    put_auth_message(REGISTER_LABEL, challenge, relay_key, name)
}

/// One answer of an identities frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityEntry<'a> {
    /// The name asked for (as normalised by the relay).
    pub name: &'a str,
    /// The encoded `PublicIdentity`, or `None` if no such user.
    pub identity: Option<&'a [u8]>,
}

/// One line of a groups frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary<'a> {
    /// The group.
    pub group_id: GroupId,
    /// Its current epoch.
    pub epoch: u64,
    /// Its admin's name.
    pub admin: &'a str,
}

/// A queue entry pushed to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliver<'a> {
    /// The entry's sequence number in the recipient's queue (ack this).
    pub seq: u64,
    /// Who sent it (for a commit: its signer).
    pub sender: &'a str,
    /// The group it belongs to (for direct sends: the context group).
    pub group_id: GroupId,
    /// What it is.
    pub kind: EntryKind,
    /// The sender's message id (commits: see [`commit_message_id`]).
    pub message_id: MessageId,
    /// When the relay stored it (Unix milliseconds).
    pub unix_ms: u64,
    /// The opaque payload (for commits: the encoded commit).
    pub ciphertext: &'a [u8],
}

/// Entries were dropped from the client's queue (cap or time to live).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapNotice<'a> {
    /// The notice's sequence number in the recipient's queue (ack this).
    pub seq: u64,
    /// The group the dropped entries belonged to.
    pub group_id: GroupId,
    /// Their sender.
    pub sender: &'a str,
    /// How many were dropped.
    pub count: u32,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame<'a> {
    /// The reason code (see [`ErrorCode`]; unknown values are kept raw).
    pub code: u16,
    /// The kind byte of the refused frame, or 0 if none applies.
    pub refers_to: u8,
    /// The message id (sends) or group id (group requests) the error is
    /// about, or all zeros.
    pub reference: [u8; 16],
    /// A short human-readable text (at most 255 bytes).
    pub text: &'a str,
}

/// One decoded frame. Fields borrow from the decoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// See [`Hello`].
    Hello(Hello<'a>),
    /// Register or login succeeded.
    Authenticated {
        /// The account name, NFC-normalised.
        name: &'a str,
        /// The account's cumulative ack position (resume after it).
        acked: u64,
    },
    /// Answer to [`Frame::FetchIdentities`], in the order asked.
    Identities(Vec<IdentityEntry<'a>>),
    /// A create-group or commit was applied.
    CommitAccepted {
        /// The group.
        group_id: GroupId,
        /// Its new epoch.
        epoch: u64,
    },
    /// Answer to [`Frame::FetchCommits`], in epoch order.
    Commits {
        /// The group.
        group_id: GroupId,
        /// True if more commits follow: ask again after the last one.
        more: bool,
        /// Encoded commits.
        commits: Vec<&'a [u8]>,
    },
    /// Answer to [`Frame::ListGroups`].
    Groups(Vec<GroupSummary<'a>>),
    /// Answer to [`Frame::ListMembers`].
    Members {
        /// The group.
        group_id: GroupId,
        /// Its current epoch.
        epoch: u64,
        /// Its admin.
        admin: &'a str,
        /// Every member's name, sorted.
        members: Vec<&'a str>,
    },
    /// See [`Deliver`].
    Deliver(Deliver<'a>),
    /// A send was stored (and, with `--fsync always`, synced).
    StoredReceipt {
        /// The message id of the send.
        message_id: MessageId,
        /// The relay's sequence number for the stored record.
        seq: u64,
        /// When the relay stored it (Unix milliseconds).
        unix_ms: u64,
    },
    /// See [`GapNotice`].
    GapNotice(GapNotice<'a>),
    /// Answer to [`Frame::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// See [`ErrorFrame`].
    Error(ErrorFrame<'a>),
    /// Create an account and log in.
    Register {
        /// The wanted name (the relay normalises it to NFC).
        name: &'a str,
        /// The encoded, self-certified `PublicIdentity`.
        identity: &'a [u8],
        /// Signature by the identity's signing key over [`register_message`].
        proof: [u8; 64],
    },
    /// Log in.
    Login {
        /// The account name.
        name: &'a str,
        /// Signature over [`login_message`].
        signature: [u8; 64],
    },
    /// Ask for public identities.
    FetchIdentities(Vec<&'a str>),
    /// Create a group.
    CreateGroup {
        /// The encoded genesis commit.
        genesis: &'a [u8],
    },
    /// A membership change.
    Commit {
        /// The encoded commit.
        commit: &'a [u8],
    },
    /// Ask for a group's commits with epoch at least `from_epoch`.
    FetchCommits {
        /// The group.
        group_id: GroupId,
        /// The first epoch wanted (0 for the genesis).
        from_epoch: u64,
    },
    /// Ask for the caller's groups.
    ListGroups,
    /// Ask for a group's roster.
    ListMembers {
        /// The group.
        group_id: GroupId,
    },
    /// A group message.
    GroupSend {
        /// The group.
        group_id: GroupId,
        /// The epoch the sender encrypted under.
        epoch: u64,
        /// The sender's id for this message (idempotent retries).
        message_id: MessageId,
        /// The opaque ciphertext.
        ciphertext: &'a [u8],
    },
    /// A pairwise message.
    DirectSend {
        /// The recipient's name.
        recipient: &'a str,
        /// The group both share (context for routing and for the recipient).
        group_id: GroupId,
        /// Distribution, key request or welcome.
        kind: EntryKind,
        /// The sender's id for this message.
        message_id: MessageId,
        /// The opaque ciphertext.
        ciphertext: &'a [u8],
    },
    /// Everything up to and including `up_to` was received.
    Ack {
        /// The highest sequence number acknowledged.
        up_to: u64,
    },
    /// Liveness probe.
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
}

fn name<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a str, DecodeError> {
    let s = r.str8(field)?;
    if s.len() > MAX_NAME_BYTES {
        return Err(DecodeError::NameTooLong { len: s.len() });
    }
    Ok(s)
}

fn count(r: &mut Reader<'_>, field: &'static str) -> Result<usize, DecodeError> {
    let n = usize::from(r.u16(field)?);
    if n > MAX_LIST_ITEMS {
        return Err(DecodeError::TooManyItems { field, count: n });
    }
    Ok(n)
}

fn flag(r: &mut Reader<'_>, field: &'static str) -> Result<bool, DecodeError> {
    match r.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(DecodeError::InvalidValue {
            field,
            value: u64::from(v),
        }),
    }
}

fn identity<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], DecodeError> {
    let id = r.bytes16("identity")?;
    if id.len() > MAX_PUBLIC_IDENTITY_BYTES {
        return Err(DecodeError::InvalidValue {
            field: "identity length",
            value: id.len() as u64,
        });
    }
    Ok(id)
}

fn entry_kind(r: &mut Reader<'_>) -> Result<EntryKind, DecodeError> {
    let v = r.u8("entry kind")?;
    EntryKind::from_u8(v).ok_or(DecodeError::InvalidValue {
        field: "entry kind",
        value: u64::from(v),
    })
}

/// Splits the first frame off a byte stream.
///
/// Returns `Ok(None)` if `buf` does not yet hold a whole frame, else the
/// frame (version, kind and body, without the length prefix) and the number
/// of bytes it took from `buf`.
///
/// # Errors
/// [`DecodeError::FrameTooLarge`] if the length exceeds `max_frame`,
/// [`DecodeError::FrameTooShort`] if it is below 2. Either way the stream
/// cannot be resynchronised and should be closed.
pub fn split_frame(buf: &[u8], max_frame: usize) -> Result<Option<(&[u8], usize)>, DecodeError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > max_frame {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    if len < 2 {
        return Err(DecodeError::FrameTooShort { len });
    }
    let total = LENGTH_PREFIX_LEN + len;
    Ok(buf
        .get(LENGTH_PREFIX_LEN..total)
        .map(|frame| (frame, total)))
}

/// Reads the version and kind bytes of a frame (after the length prefix).
///
/// # Errors
/// [`DecodeError::OldVersion`], [`DecodeError::UnknownVersion`],
/// [`DecodeError::UnknownKind`], or `Truncated` for fewer than 2 bytes.
pub fn frame_kind(frame: &[u8]) -> Result<FrameKind, DecodeError> {
    let mut r = Reader::new(frame);
    let version = r.u8("version")?;
    check_version(version)?;
    let kind = r.u8("kind")?;
    FrameKind::from_u8(kind).ok_or(DecodeError::UnknownKind(kind))
}

fn check_version(version: u8) -> Result<(), DecodeError> {
    match version.cmp(&PROTOCOL_VERSION) {
        std::cmp::Ordering::Less => Err(DecodeError::OldVersion(version)),
        std::cmp::Ordering::Greater => Err(DecodeError::UnknownVersion(version)),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

impl<'a> Frame<'a> {
    /// This frame's kind.
    #[must_use]
    pub fn kind(&self) -> FrameKind {
        match self {
            Self::Hello(_) => FrameKind::Hello,
            Self::Authenticated { .. } => FrameKind::Authenticated,
            Self::Identities(_) => FrameKind::Identities,
            Self::CommitAccepted { .. } => FrameKind::CommitAccepted,
            Self::Commits { .. } => FrameKind::Commits,
            Self::Groups(_) => FrameKind::Groups,
            Self::Members { .. } => FrameKind::Members,
            Self::Deliver(_) => FrameKind::Deliver,
            Self::StoredReceipt { .. } => FrameKind::StoredReceipt,
            Self::GapNotice(_) => FrameKind::GapNotice,
            Self::Pong { .. } => FrameKind::Pong,
            Self::Error(_) => FrameKind::Error,
            Self::Register { .. } => FrameKind::Register,
            Self::Login { .. } => FrameKind::Login,
            Self::FetchIdentities(_) => FrameKind::FetchIdentities,
            Self::CreateGroup { .. } => FrameKind::CreateGroup,
            Self::Commit { .. } => FrameKind::Commit,
            Self::FetchCommits { .. } => FrameKind::FetchCommits,
            Self::ListGroups => FrameKind::ListGroups,
            Self::ListMembers { .. } => FrameKind::ListMembers,
            Self::GroupSend { .. } => FrameKind::GroupSend,
            Self::DirectSend { .. } => FrameKind::DirectSend,
            Self::Ack { .. } => FrameKind::Ack,
            Self::Ping { .. } => FrameKind::Ping,
        }
    }

    /// Decodes one frame: version byte, kind byte and body, as returned by
    /// [`split_frame`] (no length prefix).
    ///
    /// # Errors
    /// A [`DecodeError`] naming what is wrong; never panics.
    pub fn decode(frame: &'a [u8]) -> Result<Self, DecodeError> {
        let kind = frame_kind(frame)?;
        let mut r = Reader::new(frame.get(2..).unwrap_or_default());
        let f = match kind {
            FrameKind::Hello => Self::Hello(Hello {
                software: r.str8("software")?,
                dh_group: r.u8("dh group")?,
                relay_key: r.array("relay key")?,
                challenge: r.array("challenge")?,
                signature: r.array("signature")?,
            }),
            FrameKind::Authenticated => Self::Authenticated {
                name: name(&mut r, "name")?,
                acked: r.u64("acked")?,
            },
            FrameKind::Identities => {
                let n = count(&mut r, "identities")?;
                let mut v = Vec::with_capacity(n.min(r.remaining()));
                for _ in 0..n {
                    let name = name(&mut r, "name")?;
                    let identity = if flag(&mut r, "found")? {
                        Some(identity(&mut r)?)
                    } else {
                        None
                    };
                    v.push(IdentityEntry { name, identity });
                }
                Self::Identities(v)
            }
            FrameKind::CommitAccepted => Self::CommitAccepted {
                group_id: r.array("group id")?,
                epoch: r.u64("epoch")?,
            },
            FrameKind::Commits => {
                let group_id = r.array("group id")?;
                let more = flag(&mut r, "more")?;
                let n = count(&mut r, "commits")?;
                let mut commits = Vec::with_capacity(n.min(r.remaining()));
                for _ in 0..n {
                    commits.push(r.bytes32("commit")?);
                }
                Self::Commits {
                    group_id,
                    more,
                    commits,
                }
            }
            FrameKind::Groups => {
                let n = count(&mut r, "groups")?;
                let mut v = Vec::with_capacity(n.min(r.remaining()));
                for _ in 0..n {
                    v.push(GroupSummary {
                        group_id: r.array("group id")?,
                        epoch: r.u64("epoch")?,
                        admin: name(&mut r, "admin")?,
                    });
                }
                Self::Groups(v)
            }
            FrameKind::Members => {
                let group_id = r.array("group id")?;
                let epoch = r.u64("epoch")?;
                let admin = name(&mut r, "admin")?;
                let n = count(&mut r, "members")?;
                let mut members = Vec::with_capacity(n.min(r.remaining()));
                for _ in 0..n {
                    members.push(name(&mut r, "member")?);
                }
                Self::Members {
                    group_id,
                    epoch,
                    admin,
                    members,
                }
            }
            FrameKind::Deliver => Self::Deliver(Deliver {
                seq: r.u64("seq")?,
                sender: name(&mut r, "sender")?,
                group_id: r.array("group id")?,
                kind: entry_kind(&mut r)?,
                message_id: r.array("message id")?,
                unix_ms: r.u64("unix ms")?,
                ciphertext: r.bytes32("ciphertext")?,
            }),
            FrameKind::StoredReceipt => Self::StoredReceipt {
                message_id: r.array("message id")?,
                seq: r.u64("seq")?,
                unix_ms: r.u64("unix ms")?,
            },
            FrameKind::GapNotice => Self::GapNotice(GapNotice {
                seq: r.u64("seq")?,
                group_id: r.array("group id")?,
                sender: name(&mut r, "sender")?,
                count: r.u32("count")?,
            }),
            FrameKind::Pong => Self::Pong {
                nonce: r.u64("nonce")?,
            },
            FrameKind::Error => Self::Error(ErrorFrame {
                code: r.u16("code")?,
                refers_to: r.u8("refers to")?,
                reference: r.array("reference")?,
                text: r.str8("text")?,
            }),
            FrameKind::Register => Self::Register {
                name: name(&mut r, "name")?,
                identity: identity(&mut r)?,
                proof: r.array("proof")?,
            },
            FrameKind::Login => Self::Login {
                name: name(&mut r, "name")?,
                signature: r.array("signature")?,
            },
            FrameKind::FetchIdentities => {
                let n = count(&mut r, "names")?;
                let mut v = Vec::with_capacity(n.min(r.remaining()));
                for _ in 0..n {
                    v.push(name(&mut r, "name")?);
                }
                Self::FetchIdentities(v)
            }
            FrameKind::CreateGroup => Self::CreateGroup {
                genesis: r.bytes32("genesis")?,
            },
            FrameKind::Commit => Self::Commit {
                commit: r.bytes32("commit")?,
            },
            FrameKind::FetchCommits => Self::FetchCommits {
                group_id: r.array("group id")?,
                from_epoch: r.u64("from epoch")?,
            },
            FrameKind::ListGroups => Self::ListGroups,
            FrameKind::ListMembers => Self::ListMembers {
                group_id: r.array("group id")?,
            },
            FrameKind::GroupSend => Self::GroupSend {
                group_id: r.array("group id")?,
                epoch: r.u64("epoch")?,
                message_id: r.array("message id")?,
                ciphertext: r.bytes32("ciphertext")?,
            },
            FrameKind::DirectSend => {
                let recipient = name(&mut r, "recipient")?;
                let group_id = r.array("group id")?;
                let kind = entry_kind(&mut r)?;
                if !kind.is_direct() {
                    return Err(DecodeError::InvalidValue {
                        field: "direct kind",
                        value: kind as u64,
                    });
                }
                Self::DirectSend {
                    recipient,
                    group_id,
                    kind,
                    message_id: r.array("message id")?,
                    ciphertext: r.bytes32("ciphertext")?,
                }
            }
            FrameKind::Ack => Self::Ack {
                up_to: r.u64("up to")?,
            },
            FrameKind::Ping => Self::Ping {
                nonce: r.u64("nonce")?,
            },
        };
        r.finish()?;
        Ok(f)
    }

    /// Appends the whole frame, length prefix included, to `out`.
    ///
    /// The encoder trusts its input to respect the limits (names at most
    /// 200 bytes, lists at most [`MAX_LIST_ITEMS`]); a longer name or error
    /// text is cut, so the output always decodes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; LENGTH_PREFIX_LEN]);
        out.push(PROTOCOL_VERSION);
        out.push(self.kind() as u8);
        self.encode_body(out);
        patch_length(out, start);
    }

    /// The encoded frame as a new vector (tests and rare frames).
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Hello(h) => {
                h.put_unsigned(out);
                out.extend_from_slice(&h.signature);
            }
            Self::Authenticated { name, acked } => {
                put_str8(out, name);
                out.extend_from_slice(&acked.to_be_bytes());
            }
            Self::Identities(v) => {
                put_count(out, v.len());
                for e in v.iter().take(MAX_LIST_ITEMS) {
                    put_str8(out, e.name);
                    match e.identity {
                        Some(id) => {
                            out.push(1);
                            put_bytes16(out, id);
                        }
                        None => out.push(0),
                    }
                }
            }
            Self::CommitAccepted { group_id, epoch } => {
                out.extend_from_slice(group_id);
                out.extend_from_slice(&epoch.to_be_bytes());
            }
            Self::Commits {
                group_id,
                more,
                commits,
            } => {
                out.extend_from_slice(group_id);
                out.push(u8::from(*more));
                put_count(out, commits.len());
                for c in commits.iter().take(MAX_LIST_ITEMS) {
                    put_bytes32(out, c);
                }
            }
            Self::Groups(v) => {
                put_count(out, v.len());
                for g in v.iter().take(MAX_LIST_ITEMS) {
                    out.extend_from_slice(&g.group_id);
                    out.extend_from_slice(&g.epoch.to_be_bytes());
                    put_str8(out, g.admin);
                }
            }
            Self::Members {
                group_id,
                epoch,
                admin,
                members,
            } => {
                out.extend_from_slice(group_id);
                out.extend_from_slice(&epoch.to_be_bytes());
                put_str8(out, admin);
                put_count(out, members.len());
                for m in members.iter().take(MAX_LIST_ITEMS) {
                    put_str8(out, m);
                }
            }
            Self::Deliver(d) => {
                out.extend_from_slice(&d.seq.to_be_bytes());
                put_entry_body(
                    out,
                    d.sender,
                    &d.group_id,
                    d.kind,
                    &d.message_id,
                    d.unix_ms,
                    d.ciphertext,
                );
            }
            Self::StoredReceipt {
                message_id,
                seq,
                unix_ms,
            } => {
                out.extend_from_slice(message_id);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&unix_ms.to_be_bytes());
            }
            Self::GapNotice(g) => {
                out.extend_from_slice(&g.seq.to_be_bytes());
                out.extend_from_slice(&g.group_id);
                put_str8(out, g.sender);
                out.extend_from_slice(&g.count.to_be_bytes());
            }
            Self::Pong { nonce } | Self::Ping { nonce } => {
                out.extend_from_slice(&nonce.to_be_bytes());
            }
            Self::Error(e) => {
                out.extend_from_slice(&e.code.to_be_bytes());
                out.push(e.refers_to);
                out.extend_from_slice(&e.reference);
                put_str8(out, e.text);
            }
            Self::Register {
                name,
                identity,
                proof,
            } => {
                put_str8(out, name);
                put_bytes16(out, identity);
                out.extend_from_slice(proof);
            }
            Self::Login { name, signature } => {
                put_str8(out, name);
                out.extend_from_slice(signature);
            }
            Self::FetchIdentities(names) => {
                put_count(out, names.len());
                for n in names.iter().take(MAX_LIST_ITEMS) {
                    put_str8(out, n);
                }
            }
            Self::CreateGroup { genesis: blob } | Self::Commit { commit: blob } => {
                put_bytes32(out, blob);
            }
            Self::FetchCommits {
                group_id,
                from_epoch,
            } => {
                out.extend_from_slice(group_id);
                out.extend_from_slice(&from_epoch.to_be_bytes());
            }
            Self::ListGroups => {}
            Self::ListMembers { group_id } => out.extend_from_slice(group_id),
            Self::GroupSend {
                group_id,
                epoch,
                message_id,
                ciphertext,
            } => {
                out.extend_from_slice(group_id);
                out.extend_from_slice(&epoch.to_be_bytes());
                out.extend_from_slice(message_id);
                put_bytes32(out, ciphertext);
            }
            Self::DirectSend {
                recipient,
                group_id,
                kind,
                message_id,
                ciphertext,
            } => {
                put_str8(out, recipient);
                out.extend_from_slice(group_id);
                out.push(*kind as u8);
                out.extend_from_slice(message_id);
                put_bytes32(out, ciphertext);
            }
            Self::Ack { up_to } => out.extend_from_slice(&up_to.to_be_bytes()),
        }
    }

    /// An error frame for `code` with its standard text.
    #[must_use]
    pub fn error(code: ErrorCode, refers_to: u8, reference: [u8; 16]) -> Frame<'static> {
        Frame::Error(ErrorFrame {
            code: code.to_u16(),
            refers_to,
            reference,
            text: code.describe(),
        })
    }
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    let n = u16::try_from(n.min(MAX_LIST_ITEMS)).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
}

fn patch_length(out: &mut [u8], start: usize) {
    let len = u32::try_from(out.len() - start - LENGTH_PREFIX_LEN).unwrap_or(u32::MAX);
    if let Some(prefix) = out.get_mut(start..start + LENGTH_PREFIX_LEN) {
        prefix.copy_from_slice(&len.to_be_bytes());
    }
}

/// Appends an entry body: everything of a deliver frame after its sequence
/// number. The relay stores exactly these bytes for every queued message, so
/// a delivery is [`encode_deliver_header`] followed by one copy of them.
pub fn put_entry_body(
    out: &mut Vec<u8>,
    sender: &str,
    group_id: &GroupId,
    kind: EntryKind,
    message_id: &MessageId,
    unix_ms: u64,
    ciphertext: &[u8],
) {
    put_str8(out, sender);
    out.extend_from_slice(group_id);
    out.push(kind as u8);
    out.extend_from_slice(message_id);
    out.extend_from_slice(&unix_ms.to_be_bytes());
    put_bytes32(out, ciphertext);
}

/// Appends the [`DELIVER_HEADER_LEN`]-byte header of a deliver frame whose
/// entry body (see [`put_entry_body`]) is `body_len` bytes long; the caller
/// appends the body right after.
pub fn encode_deliver_header(out: &mut Vec<u8>, seq: u64, body_len: usize) {
    let len = u32::try_from(2 + 8 + body_len).unwrap_or(u32::MAX);
    let mut h = [0u8; DELIVER_HEADER_LEN];
    let (l, rest) = h.split_at_mut(LENGTH_PREFIX_LEN);
    l.copy_from_slice(&len.to_be_bytes());
    let (vk, s) = rest.split_at_mut(2);
    vk.copy_from_slice(&[PROTOCOL_VERSION, FrameKind::Deliver as u8]);
    s.copy_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&h);
}

/// The message id of a commit entry: eight zero bytes then the commit's
/// epoch (big-endian). Unique within a group, which the entry names.
#[must_use]
pub fn commit_message_id(epoch: u64) -> MessageId {
    let mut id = [0u8; 16];
    let (_, tail) = id.split_at_mut(8);
    tail.copy_from_slice(&epoch.to_be_bytes());
    id
}
