//! The client's encrypted state file, its lock, and the typed state it holds.
//!
//! One directory per user, `<state-dir>/<user>/`, mode 0700:
//!
//! ```text
//! <state-dir>/<user>/state      the encrypted state (mode 0600)
//! <state-dir>/<user>/state.tmp  a save in progress (renamed over `state`)
//! <state-dir>/<user>/lock       the flock every load-modify-save holds
//! ```
//!
//! The state file is one crypto envelope (`PROTOCOL.md` Part 1) whose
//! authenticated header is
//!
//! ```text
//! magic "HERMESST" (8) ‖ file version 0x01 (1) ‖ passphrase params (21) ‖ check (32)
//! ```
//!
//! where the params are `crypto::kdf::PassphraseParams::encode` (PBKDF2
//! iterations and salt) and `check = HMAC-SHA256(mac key, "hermes/v1/state-check")`
//! lets a wrong passphrase be told apart from a corrupted file. The
//! envelope's keys are the passphrase keys (`kdf::passphrase_keys`); its
//! plaintext is [`ClientState::encode`]. The keys are derived once per
//! process ([`StateDir::unlock`]) and reused for every save (a fresh random
//! nonce each time).
//!
//! Every change goes through [`Unlocked::transact`]: take the flock, read
//! and decrypt the file (so a second process's save is never overwritten),
//! run the change, and write the file atomically (temp file, fsync, rename,
//! fsync of the directory) before the lock is released. Nothing here ever
//! creates fresh keys over an existing file: a wrong passphrase or a
//! corrupted file is an error, never a reset.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::crypto::CryptoError;
use crate::crypto::envelope;
use crate::crypto::identity::{IdentityKeyPair, PublicIdentity};
use crate::crypto::kdf::{
    ENC_KEY_LEN, EnvelopeKeys, KDF_ID_PBKDF2_HMAC_SHA256, LABEL_PASSPHRASE, MAC_KEY_LEN,
    PassphraseParams, hkdf_expand_label, passphrase_keys, pbkdf2_hmac_sha256,
};
use crate::limits::{
    CLIENT_INBOX_MAX_ENTRIES, CLIENT_PENDING_MAX_MESSAGES, CLIENT_SEEN_IDS_MAX,
    CLIENT_STATE_MAX_BYTES, PBKDF2_DEFAULT_ITERATIONS, PBKDF2_MAX_ITERATIONS,
    PBKDF2_MIN_ITERATIONS, PBKDF2_SALT_LEN,
};
use crate::wire::{DecodeError, GroupId, MessageId, Reader};

/// First bytes of a state file.
pub const STATE_MAGIC: &[u8; 8] = b"HERMESST";
/// The state file layout version.
pub const STATE_FILE_VERSION: u8 = 1;
/// Version of the [`ClientState`] encoding inside the envelope.
pub const STATE_ENCODING_VERSION: u8 = 1;
/// Label of the passphrase check value in the header.
pub const STATE_CHECK_LABEL: &[u8] = b"hermes/v1/state-check";
/// Bytes of the envelope header: magic, version, params, check.
pub const STATE_HEADER_LEN: usize = 8 + 1 + PassphraseParams::ENCODED_LEN + 32;

/// File names inside a user's directory.
const STATE_FILE: &str = "state";
const STATE_TMP: &str = "state.tmp";
const LOCK_FILE: &str = "lock";

/// Errors of the state file. None carries key bytes or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// There is no state file: the user has not registered here.
    #[error("no state for {user:?} in {dir} (run `hermes register` first)")]
    NotRegistered {
        /// The user.
        user: String,
        /// The directory looked in.
        dir: String,
    },
    /// `create` found an existing state file (keys are never overwritten).
    #[error("state for {user:?} already exists in {dir}")]
    AlreadyExists {
        /// The user.
        user: String,
        /// The directory.
        dir: String,
    },
    /// The passphrase does not open the state file.
    #[error("wrong passphrase for the state file")]
    WrongPassphrase,
    /// The file is damaged (the passphrase check passed, or the layout is
    /// broken): nothing was changed.
    #[error("state file is corrupted ({0}); it was left untouched")]
    Corrupted(String),
    /// The file asks for fewer PBKDF2 iterations than the minimum and the
    /// caller did not opt in to test-strength parameters.
    #[error("state file uses {iterations} PBKDF2 iterations, below the minimum of {min}")]
    WeakKdf {
        /// Iterations in the file.
        iterations: u32,
        /// [`PBKDF2_MIN_ITERATIONS`].
        min: u32,
    },
    /// A state file version this build does not know.
    #[error("state file version {0} is not supported by this build")]
    UnsupportedVersion(u8),
    /// File-system error.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A primitive failed (parameters out of range).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.display().to_string();
    move |source| StateError::Io { op, path, source }
}

/// How expensive the passphrase KDF is for a new state file, and which
/// stored costs are accepted on unlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCost {
    iterations: u32,
    allow_weak: bool,
}

impl KdfCost {
    /// The real thing: [`PBKDF2_DEFAULT_ITERATIONS`]; files below
    /// [`PBKDF2_MIN_ITERATIONS`] are refused.
    #[must_use]
    pub fn standard() -> Self {
        Self {
            iterations: PBKDF2_DEFAULT_ITERATIONS,
            allow_weak: false,
        }
    }

    /// A cheap KDF for test suites (`iterations` may be as low as 1). A file
    /// made with it opens only for a caller that passes this cost again: a
    /// client using [`KdfCost::standard`] refuses it with
    /// [`StateError::WeakKdf`], so a tampered header cannot weaken a real
    /// user's file.
    #[must_use]
    pub fn insecure_for_tests(iterations: u32) -> Self {
        Self {
            iterations: iterations.max(1),
            allow_weak: true,
        }
    }

    /// The iteration count used for new files.
    #[must_use]
    pub fn iterations(&self) -> u32 {
        self.iterations
    }
}

/// The state file's KDF parameters (the `PassphraseParams` encoding, with
/// the iteration floor applied by [`KdfCost`] rather than by the decoder).
fn encode_params(
    iterations: u32,
    salt: &[u8; PBKDF2_SALT_LEN],
) -> [u8; PassphraseParams::ENCODED_LEN] {
    PassphraseParams {
        iterations,
        salt: *salt,
    }
    .encode()
}

fn decode_params(bytes: &[u8]) -> Result<(u32, [u8; PBKDF2_SALT_LEN]), StateError> {
    let mut r = Reader::new(bytes);
    let parsed = (|| -> Result<_, DecodeError> {
        let id = r.u8("kdf id")?;
        let iterations = r.u32("kdf iterations")?;
        let salt = r.array::<PBKDF2_SALT_LEN>("kdf salt")?;
        Ok((id, iterations, salt))
    })();
    let (id, iterations, salt) = parsed.map_err(|e| StateError::Corrupted(e.to_string()))?;
    if id != KDF_ID_PBKDF2_HMAC_SHA256 {
        return Err(StateError::Crypto(CryptoError::UnknownKdf(id)));
    }
    Ok((iterations, salt))
}

/// Derives the state keys. At or above the minimum this is exactly
/// `kdf::passphrase_keys`; below it (tests only, see [`KdfCost`]) the same
/// two steps without the floor.
fn derive_keys(
    passphrase: &[u8],
    iterations: u32,
    salt: &[u8; PBKDF2_SALT_LEN],
    cost: KdfCost,
) -> Result<EnvelopeKeys, StateError> {
    if iterations > PBKDF2_MAX_ITERATIONS {
        return Err(CryptoError::ExcessivePassphraseParams { iterations }.into());
    }
    if iterations >= PBKDF2_MIN_ITERATIONS {
        let params = PassphraseParams {
            iterations,
            salt: *salt,
        };
        return Ok(passphrase_keys(passphrase, &params)?);
    }
    if !cost.allow_weak {
        return Err(StateError::WeakKdf {
            iterations,
            min: PBKDF2_MIN_ITERATIONS,
        });
    }
    let mut master = Zeroizing::new([0u8; 32]);
    pbkdf2_hmac_sha256(passphrase, salt, iterations, master.as_mut_slice());
    let mut okm = Zeroizing::new([0u8; ENC_KEY_LEN + MAC_KEY_LEN]);
    hkdf_expand_label(
        master.as_slice(),
        &[],
        LABEL_PASSPHRASE,
        &[],
        okm.as_mut_slice(),
    )?;
    Ok(EnvelopeKeys::from_okm(&okm))
}

fn check_value(keys: &EnvelopeKeys) -> [u8; 32] {
    envelope::hmac_sha256(keys.mac.expose(), &[STATE_CHECK_LABEL])
}

/// A user's state directory (not yet unlocked).
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
    user: String,
}

impl StateDir {
    /// The directory of `user` under `root` (the name must already be
    /// NFC-normalised; it is used as one path component).
    ///
    /// # Errors
    /// [`StateError::Corrupted`] is never returned here; a name with a path
    /// separator or `..` is refused as [`StateError::Io`] with
    /// `InvalidInput`.
    pub fn new(root: &Path, user: &str) -> Result<Self, StateError> {
        if user.is_empty()
            || user.contains('/')
            || user == "."
            || user == ".."
            || user.contains('\0')
        {
            return Err(StateError::Io {
                op: "use user name",
                path: user.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not usable as a directory name",
                ),
            });
        }
        Ok(Self {
            dir: root.join(user),
            user: user.to_owned(),
        })
    }

    /// The user's directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The user name.
    #[must_use]
    pub fn user(&self) -> &str {
        &self.user
    }

    fn file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// True if a state file exists.
    #[must_use]
    pub fn exists(&self) -> bool {
        self.file().exists()
    }

    /// Creates the directory and a new state file holding `initial`,
    /// under the lock.
    ///
    /// # Errors
    /// [`StateError::AlreadyExists`] if there is a state file already (its
    /// keys are never overwritten); I/O errors.
    pub fn create(
        &self,
        passphrase: &[u8],
        cost: KdfCost,
        initial: &ClientState,
        rng: &mut impl CryptoRng,
    ) -> Result<Unlocked, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err("create directory", &self.dir))?;
        let mut salt = [0u8; PBKDF2_SALT_LEN];
        rng.fill_bytes(&mut salt);
        let keys = derive_keys(passphrase, cost.iterations, &salt, cost)?;
        let mut header = Vec::with_capacity(STATE_HEADER_LEN);
        header.extend_from_slice(STATE_MAGIC);
        header.push(STATE_FILE_VERSION);
        header.extend_from_slice(&encode_params(cost.iterations, &salt));
        header.extend_from_slice(&check_value(&keys));
        let unlocked = Unlocked {
            dir: self.clone(),
            keys,
            header,
        };
        let lock = unlocked.lock()?;
        if self.exists() {
            return Err(StateError::AlreadyExists {
                user: self.user.clone(),
                dir: self.dir.display().to_string(),
            });
        }
        unlocked.write(&initial.encode(), rng)?;
        drop(lock);
        Ok(unlocked)
    }

    /// Reads the header, derives the keys from `passphrase` and checks
    /// them, and decrypts the file once to prove it is intact.
    ///
    /// # Errors
    /// [`StateError::NotRegistered`], [`StateError::WrongPassphrase`],
    /// [`StateError::Corrupted`], [`StateError::WeakKdf`],
    /// [`StateError::UnsupportedVersion`], I/O errors.
    pub fn unlock(&self, passphrase: &[u8], cost: KdfCost) -> Result<Unlocked, StateError> {
        let bytes = self.read_file()?;
        let header = parse_header(&bytes)?;
        let (iterations, salt) = decode_params(header.get(9..30).unwrap_or_default())?;
        let keys = derive_keys(passphrase, iterations, &salt, cost)?;
        let stored_check = header.get(30..STATE_HEADER_LEN).unwrap_or_default();
        if !bool::from(check_value(&keys).as_slice().ct_eq(stored_check)) {
            return Err(StateError::WrongPassphrase);
        }
        let unlocked = Unlocked {
            dir: self.clone(),
            keys,
            header: header.to_vec(),
        };
        unlocked.decrypt(&bytes)?;
        Ok(unlocked)
    }

    fn read_file(&self) -> Result<Vec<u8>, StateError> {
        let path = self.file();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotRegistered {
                    user: self.user.clone(),
                    dir: self.dir.display().to_string(),
                });
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let mut bytes = Vec::new();
        file.take(CLIENT_STATE_MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;
        if bytes.len() as u64 > CLIENT_STATE_MAX_BYTES {
            return Err(StateError::Corrupted(format!(
                "larger than {CLIENT_STATE_MAX_BYTES} bytes"
            )));
        }
        Ok(bytes)
    }
}

/// The envelope header of a state file: checks magic, version, length.
fn parse_header(bytes: &[u8]) -> Result<&[u8], StateError> {
    let mut r = Reader::new(bytes);
    let header = (|| -> Result<&[u8], DecodeError> {
        let _envelope_version = r.u8("envelope version")?;
        r.bytes16("state header")
    })()
    .map_err(|_| StateError::Corrupted("not a Hermes state file (too short)".into()))?;
    if header.get(..8) != Some(STATE_MAGIC.as_slice()) {
        return Err(StateError::Corrupted(
            "not a Hermes state file (bad magic)".into(),
        ));
    }
    let version = header.get(8).copied().unwrap_or_default();
    if version != STATE_FILE_VERSION {
        return Err(StateError::UnsupportedVersion(version));
    }
    if header.len() != STATE_HEADER_LEN {
        return Err(StateError::Corrupted("bad header length".into()));
    }
    Ok(header)
}

/// An unlocked state directory: the derived keys, ready for transactions.
pub struct Unlocked {
    dir: StateDir,
    keys: EnvelopeKeys,
    header: Vec<u8>,
}

impl std::fmt::Debug for Unlocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unlocked")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The held flock of a user directory; released on drop.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl Unlocked {
    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &StateDir {
        &self.dir
    }

    /// Takes the user's exclusive lock (blocking until the other holder
    /// releases it).
    ///
    /// # Errors
    /// I/O errors opening or locking `lock`.
    pub fn lock(&self) -> Result<LockGuard, StateError> {
        let path = self.dir.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        file.lock().map_err(io_err("lock", &path))?;
        Ok(LockGuard { file })
    }

    fn decrypt(&self, bytes: &[u8]) -> Result<ClientState, StateError> {
        let header = parse_header(bytes)?;
        if !bool::from(header.ct_eq(self.header.as_slice())) {
            // Another process re-created the file with other parameters.
            return Err(StateError::Corrupted("header changed under us".into()));
        }
        let opened = envelope::open(&self.keys, bytes)
            .map_err(|e| StateError::Corrupted(format!("envelope: {e}")))?;
        ClientState::decode(&opened.plaintext)
    }

    /// Loads the state (take [`Unlocked::lock`] first if you mean to save).
    ///
    /// # Errors
    /// As [`StateDir::unlock`].
    pub fn load(&self) -> Result<ClientState, StateError> {
        let bytes = self.dir.read_file()?;
        self.decrypt(&bytes)
    }

    /// One load-modify-save under the lock: reload, run `f`, save if `f`
    /// returned `Ok` (even if it changed nothing: saving is cheap next to
    /// a network round trip, and a forgotten save would fork the ratchet).
    ///
    /// # Errors
    /// The state errors, or `f`'s own error (then nothing is saved).
    /// `f` gets the RNG too (the save uses it afterwards for its nonce).
    pub fn transact<T, E, G: CryptoRng>(
        &self,
        rng: &mut G,
        f: impl FnOnce(&mut ClientState, &mut G) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StateError>,
    {
        let _lock = self.lock()?;
        let mut state = self.load()?;
        let out = f(&mut state, rng)?;
        self.write(&state.encode(), rng)?;
        Ok(out)
    }

    /// Seals `plaintext` and replaces the state file atomically: write
    /// `state.tmp` (mode 0600), fsync it, rename over `state`, fsync the
    /// directory. Call with the lock held.
    fn write(&self, plaintext: &[u8], rng: &mut impl CryptoRng) -> Result<(), StateError> {
        let sealed = envelope::seal(&self.keys, &self.header, plaintext, rng);
        if sealed.is_empty() {
            return Err(StateError::Corrupted("state too large to seal".into()));
        }
        let tmp = self.dir.dir.join(STATE_TMP);
        let path = self.dir.file();
        {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("create", &tmp))?;
            f.write_all(&sealed).map_err(io_err("write", &tmp))?;
            f.sync_all().map_err(io_err("fsync", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
        File::open(&self.dir.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", &self.dir.dir))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The typed state
// ---------------------------------------------------------------------------

/// What a contact's pinned identity looks like to us (TOFU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The pinned encoded `PublicIdentity`.
    pub identity: Vec<u8>,
    /// A different identity the relay now shows for this name, not yet
    /// accepted with `hermes trust`: while set, nothing is sent to the
    /// contact and its distributions are refused.
    pub changed_to: Option<Vec<u8>>,
}

impl Contact {
    /// The pinned Ed25519 identity key, if the pinned bytes decode.
    #[must_use]
    pub fn signing_key(&self) -> Option<[u8; 32]> {
        PublicIdentity::decode(&self.identity)
            .ok()
            .map(|p| p.signing_key)
    }
}

/// One line of the local inbox: a decrypted message or a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// The group (all zeros for notices that belong to none).
    pub group_id: GroupId,
    /// The group's display name when the entry was made.
    pub group_name: String,
    /// The verified sender (empty for notices).
    pub sender: String,
    /// The sender's timestamp (Unix ms) from the signed header, or when
    /// the notice was made.
    pub sent_at_ms: u64,
    /// The message text, or the notice.
    pub text: String,
    /// The message id (notices: random).
    pub id: MessageId,
    /// True for a notice (join, leave, warning), false for a message.
    pub notice: bool,
}

/// A group message that arrived before its sender key: acked, kept here,
/// and retried when a distribution arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMessage {
    /// The group.
    pub group_id: GroupId,
    /// The sender named by the relay (used only to ask for the key).
    pub sender: String,
    /// The message id.
    pub message_id: MessageId,
    /// When we received it (Unix ms): after
    /// `limits::CLIENT_PENDING_TIMEOUT_MS` it is reported undecryptable.
    pub received_ms: u64,
    /// The ciphertext as delivered.
    pub ciphertext: Vec<u8>,
}

/// Text the user sent before the group's keys were ready (or while a send
/// awaits its receipt): sent encrypted later, never in plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedText {
    /// The group.
    pub group_id: GroupId,
    /// The message id it will be sent under (fixed, so retries dedupe).
    pub message_id: MessageId,
    /// The text.
    pub text: String,
}

/// One group as this client keeps it.
pub struct GroupRecord {
    /// The encoded commits, genesis first, in epoch order (all verified).
    pub commits: Vec<Vec<u8>>,
    /// The group cryptography (my sender key, the others' chains) as the
    /// group module encodes it; empty until the session exists.
    pub crypto: Zeroizing<Vec<u8>>,
    /// Why the group is frozen (a commit failed verification), if it is.
    pub frozen: Option<String>,
    /// Members my current sender key must reach before my next message.
    pub owe_key_to: Vec<String>,
    /// Members I asked for their key (no need to ask twice).
    pub asked_key_of: Vec<String>,
}

impl std::fmt::Debug for GroupRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupRecord")
            .field("commits", &self.commits.len())
            .field("frozen", &self.frozen)
            .field("owe_key_to", &self.owe_key_to)
            .finish_non_exhaustive()
    }
}

/// Everything a client keeps between runs. Encoded by
/// [`ClientState::encode`] (layout in the method doc) and sealed by
/// [`Unlocked`].
pub struct ClientState {
    /// My NFC user name.
    pub user: String,
    /// My long-term identity.
    pub identity: IdentityKeyPair,
    /// The relay key pinned on first contact (TOFU).
    pub relay_key: Option<[u8; 32]>,
    /// Highest queue sequence number acked to the relay.
    pub acked: u64,
    /// Pinned identities of other users.
    pub contacts: BTreeMap<String, Contact>,
    /// My groups.
    pub groups: BTreeMap<GroupId, GroupRecord>,
    /// Decrypted messages and notices not yet printed by `recv`.
    pub inbox: VecDeque<InboxEntry>,
    /// Entries dropped from the inbox because it was full (reported once).
    pub inbox_dropped: u64,
    /// Group messages waiting for their key.
    pub pending: Vec<PendingMessage>,
    /// Texts waiting to be sent.
    pub outbox: Vec<QueuedText>,
    /// Recently seen message ids (at-least-once delivery dedupe).
    pub seen: VecDeque<MessageId>,
}

impl std::fmt::Debug for ClientState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientState")
            .field("user", &self.user)
            .field("acked", &self.acked)
            .field("groups", &self.groups.len())
            .field("inbox", &self.inbox.len())
            .finish_non_exhaustive()
    }
}

impl ClientState {
    /// A fresh state for `user` with `identity`.
    #[must_use]
    pub fn new(user: &str, identity: IdentityKeyPair) -> Self {
        Self {
            user: user.to_owned(),
            identity,
            relay_key: None,
            acked: 0,
            contacts: BTreeMap::new(),
            groups: BTreeMap::new(),
            inbox: VecDeque::new(),
            inbox_dropped: 0,
            pending: Vec::new(),
            outbox: Vec::new(),
            seen: VecDeque::new(),
        }
    }

    /// Appends to the inbox, dropping the oldest entry (and counting it)
    /// beyond [`CLIENT_INBOX_MAX_ENTRIES`].
    pub fn push_inbox(&mut self, entry: InboxEntry) {
        self.inbox.push_back(entry);
        while self.inbox.len() > CLIENT_INBOX_MAX_ENTRIES {
            self.inbox.pop_front();
            self.inbox_dropped = self.inbox_dropped.saturating_add(1);
        }
    }

    /// Records `id` as seen; returns false if it was seen before.
    pub fn mark_seen(&mut self, id: &MessageId) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        self.seen.push_back(*id);
        while self.seen.len() > CLIENT_SEEN_IDS_MAX {
            self.seen.pop_front();
        }
        true
    }

    /// True if `id` was seen.
    #[must_use]
    pub fn was_seen(&self, id: &MessageId) -> bool {
        self.seen.contains(id)
    }

    /// Adds a pending message; beyond [`CLIENT_PENDING_MAX_MESSAGES`] the
    /// oldest is returned so the caller can report it undecryptable.
    pub fn push_pending(&mut self, p: PendingMessage) -> Option<PendingMessage> {
        self.pending.push(p);
        if self.pending.len() > CLIENT_PENDING_MAX_MESSAGES {
            Some(self.pending.remove(0))
        } else {
            None
        }
    }

    /// The encoding (all integers big-endian):
    ///
    /// ```text
    /// u8 encoding version (1)
    /// str16 user ‖ bytes16 identity secret (IdentityKeyPair::to_secret_bytes)
    /// u8 has relay key ‖ [32] relay key if so ‖ u64 acked
    /// u32 n ‖ n × (str16 name ‖ bytes16 identity ‖ u8 changed ‖ bytes16 new identity if changed)
    /// u32 n ‖ n × (group id [16] ‖ u32 m ‖ m × bytes32 commit ‖ bytes32 crypto
    ///              ‖ u8 frozen ‖ str16 why if frozen ‖ names owe_key_to ‖ names asked_key_of)
    /// u32 n ‖ n × (group id ‖ str16 group name ‖ str16 sender ‖ u64 sent_at
    ///              ‖ str32 text ‖ message id [16] ‖ u8 notice)
    /// u64 inbox dropped
    /// u32 n ‖ n × (group id ‖ str16 sender ‖ message id ‖ u64 received ‖ bytes32 ciphertext)
    /// u32 n ‖ n × (group id ‖ message id ‖ str32 text)
    /// u32 n ‖ n × message id
    /// ```
    /// where `names` is `u32 n ‖ n × str16`.
    #[must_use]
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer(Zeroizing::new(Vec::with_capacity(4096)));
        w.u8(STATE_ENCODING_VERSION);
        w.str16(&self.user);
        w.bytes16(&self.identity.to_secret_bytes());
        match &self.relay_key {
            Some(k) => {
                w.u8(1);
                w.raw(k);
            }
            None => w.u8(0),
        }
        w.u64(self.acked);
        w.len32(self.contacts.len());
        for (name, c) in &self.contacts {
            w.str16(name);
            w.bytes16(&c.identity);
            match &c.changed_to {
                Some(n) => {
                    w.u8(1);
                    w.bytes16(n);
                }
                None => w.u8(0),
            }
        }
        w.len32(self.groups.len());
        for (gid, g) in &self.groups {
            w.raw(gid);
            w.len32(g.commits.len());
            for c in &g.commits {
                w.bytes32(c);
            }
            w.bytes32(&g.crypto);
            match &g.frozen {
                Some(why) => {
                    w.u8(1);
                    w.str16(why);
                }
                None => w.u8(0),
            }
            w.names(&g.owe_key_to);
            w.names(&g.asked_key_of);
        }
        w.len32(self.inbox.len());
        for e in &self.inbox {
            w.raw(&e.group_id);
            w.str16(&e.group_name);
            w.str16(&e.sender);
            w.u64(e.sent_at_ms);
            w.bytes32(e.text.as_bytes());
            w.raw(&e.id);
            w.u8(u8::from(e.notice));
        }
        w.u64(self.inbox_dropped);
        w.len32(self.pending.len());
        for p in &self.pending {
            w.raw(&p.group_id);
            w.str16(&p.sender);
            w.raw(&p.message_id);
            w.u64(p.received_ms);
            w.bytes32(&p.ciphertext);
        }
        w.len32(self.outbox.len());
        for q in &self.outbox {
            w.raw(&q.group_id);
            w.raw(&q.message_id);
            w.bytes32(q.text.as_bytes());
        }
        w.len32(self.seen.len());
        for id in &self.seen {
            w.raw(id);
        }
        w.0
    }

    /// Parses [`ClientState::encode`]'s output.
    ///
    /// # Errors
    /// [`StateError::Corrupted`] for anything that does not parse (the
    /// envelope's MAC passed, so this means a bug or a future version).
    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        decode_state(bytes).map_err(|e| StateError::Corrupted(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
enum StateDecodeError {
    #[error(transparent)]
    Wire(#[from] DecodeError),
    #[error("identity: {0}")]
    Crypto(#[from] CryptoError),
    #[error("unknown state encoding version {0}")]
    Version(u8),
    #[error("{0} is not UTF-8")]
    Utf8(&'static str),
}

fn str16<'a>(r: &mut Reader<'a>, f: &'static str) -> Result<&'a str, StateDecodeError> {
    std::str::from_utf8(r.bytes16(f)?).map_err(|_| StateDecodeError::Utf8(f))
}

fn str32<'a>(r: &mut Reader<'a>, f: &'static str) -> Result<&'a str, StateDecodeError> {
    std::str::from_utf8(r.bytes32(f)?).map_err(|_| StateDecodeError::Utf8(f))
}

fn flag(r: &mut Reader<'_>, f: &'static str) -> Result<bool, StateDecodeError> {
    match r.u8(f)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(DecodeError::InvalidValue {
            field: f,
            value: u64::from(v),
        }
        .into()),
    }
}

fn count(r: &mut Reader<'_>, f: &'static str, min_item: usize) -> Result<usize, StateDecodeError> {
    let n = r.u32(f)? as usize;
    // Every item takes at least `min_item` bytes: a corrupt count cannot
    // make us allocate more than the file holds.
    if n.saturating_mul(min_item.max(1)) > r.remaining() {
        return Err(DecodeError::TooManyItems { field: f, count: n }.into());
    }
    Ok(n)
}

fn names(r: &mut Reader<'_>, f: &'static str) -> Result<Vec<String>, StateDecodeError> {
    let n = count(r, f, 2)?;
    (0..n).map(|_| Ok(str16(r, f)?.to_owned())).collect()
}

fn decode_state(bytes: &[u8]) -> Result<ClientState, StateDecodeError> {
    let mut r = Reader::new(bytes);
    let version = r.u8("encoding version")?;
    if version != STATE_ENCODING_VERSION {
        return Err(StateDecodeError::Version(version));
    }
    let user = str16(&mut r, "user")?.to_owned();
    let identity = IdentityKeyPair::from_secret_bytes(r.bytes16("identity")?)?;
    let mut st = ClientState::new(&user, identity);
    if flag(&mut r, "has relay key")? {
        st.relay_key = Some(r.array("relay key")?);
    }
    st.acked = r.u64("acked")?;
    for _ in 0..count(&mut r, "contacts", 5)? {
        let name = str16(&mut r, "contact name")?.to_owned();
        let identity = r.bytes16("contact identity")?.to_vec();
        let changed_to = if flag(&mut r, "contact changed")? {
            Some(r.bytes16("contact new identity")?.to_vec())
        } else {
            None
        };
        st.contacts.insert(
            name,
            Contact {
                identity,
                changed_to,
            },
        );
    }
    for _ in 0..count(&mut r, "groups", 16)? {
        let gid: GroupId = r.array("group id")?;
        let n = count(&mut r, "commits", 4)?;
        let commits = (0..n)
            .map(|_| Ok(r.bytes32("commit")?.to_vec()))
            .collect::<Result<Vec<_>, StateDecodeError>>()?;
        let crypto = Zeroizing::new(r.bytes32("group crypto")?.to_vec());
        let frozen = if flag(&mut r, "frozen")? {
            Some(str16(&mut r, "frozen reason")?.to_owned())
        } else {
            None
        };
        let owe_key_to = names(&mut r, "owe key to")?;
        let asked_key_of = names(&mut r, "asked key of")?;
        st.groups.insert(
            gid,
            GroupRecord {
                commits,
                crypto,
                frozen,
                owe_key_to,
                asked_key_of,
            },
        );
    }
    for _ in 0..count(&mut r, "inbox", 16)? {
        st.inbox.push_back(InboxEntry {
            group_id: r.array("inbox group")?,
            group_name: str16(&mut r, "inbox group name")?.to_owned(),
            sender: str16(&mut r, "inbox sender")?.to_owned(),
            sent_at_ms: r.u64("inbox sent at")?,
            text: str32(&mut r, "inbox text")?.to_owned(),
            id: r.array("inbox id")?,
            notice: flag(&mut r, "inbox notice")?,
        });
    }
    st.inbox_dropped = r.u64("inbox dropped")?;
    for _ in 0..count(&mut r, "pending", 16)? {
        st.pending.push(PendingMessage {
            group_id: r.array("pending group")?,
            sender: str16(&mut r, "pending sender")?.to_owned(),
            message_id: r.array("pending id")?,
            received_ms: r.u64("pending received")?,
            ciphertext: r.bytes32("pending ciphertext")?.to_vec(),
        });
    }
    for _ in 0..count(&mut r, "outbox", 16)? {
        st.outbox.push(QueuedText {
            group_id: r.array("outbox group")?,
            message_id: r.array("outbox id")?,
            text: str32(&mut r, "outbox text")?.to_owned(),
        });
    }
    for _ in 0..count(&mut r, "seen", 16)? {
        st.seen.push_back(r.array("seen id")?);
    }
    r.finish()?;
    Ok(st)
}

/// A byte writer for the state encoding (zeroized on drop: it holds keys).
struct Writer(Zeroizing<Vec<u8>>);

impl Writer {
    fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.raw(&v.to_be_bytes());
    }
    fn len32(&mut self, n: usize) {
        // Every list here is bounded far below 2^32 by the named limits.
        self.raw(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
    }
    fn bytes16(&mut self, b: &[u8]) {
        let n = u16::try_from(b.len()).unwrap_or(u16::MAX);
        self.raw(&n.to_be_bytes());
        self.raw(b.get(..usize::from(n)).unwrap_or_default());
    }
    fn bytes32(&mut self, b: &[u8]) {
        self.len32(b.len());
        self.raw(b);
    }
    fn str16(&mut self, s: &str) {
        self.bytes16(s.as_bytes());
    }
    fn names(&mut self, v: &[String]) {
        self.len32(v.len());
        for n in v {
            self.str16(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::dh::DhGroup;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn sample_state(rng: &mut StdRng) -> ClientState {
        let mut st = ClientState::new("zoë", IdentityKeyPair::generate(DhGroup::Ffdhe2048, rng));
        st.relay_key = Some([9; 32]);
        st.acked = 42;
        let bob = IdentityKeyPair::generate(DhGroup::Ffdhe2048, rng)
            .public()
            .encode();
        st.contacts.insert(
            "bob".into(),
            Contact {
                identity: bob.clone(),
                changed_to: Some(bob),
            },
        );
        st.groups.insert(
            [1; 16],
            GroupRecord {
                commits: vec![vec![1, 2, 3], vec![4]],
                crypto: Zeroizing::new(vec![5; 40]),
                frozen: Some("bad commit".into()),
                owe_key_to: vec!["bob".into()],
                asked_key_of: vec![],
            },
        );
        st.push_inbox(InboxEntry {
            group_id: [1; 16],
            group_name: "crew".into(),
            sender: "bob".into(),
            sent_at_ms: 1000,
            text: "hi zoë".into(),
            id: [3; 16],
            notice: false,
        });
        st.pending.push(PendingMessage {
            group_id: [1; 16],
            sender: "bob".into(),
            message_id: [4; 16],
            received_ms: 5,
            ciphertext: vec![7; 100],
        });
        st.outbox.push(QueuedText {
            group_id: [1; 16],
            message_id: [8; 16],
            text: "later".into(),
        });
        st.mark_seen(&[3; 16]);
        st
    }

    fn assert_same(a: &ClientState, b: &ClientState) {
        assert_eq!(a.encode().as_slice(), b.encode().as_slice());
        assert_eq!(a.user, b.user);
        assert_eq!(a.identity.public(), b.identity.public());
    }

    #[test]
    fn encoding_round_trips() {
        let mut rng = rng();
        let st = sample_state(&mut rng);
        let back = ClientState::decode(&st.encode()).unwrap();
        assert_same(&st, &back);
        assert_eq!(back.inbox.front().unwrap().text, "hi zoë");
        assert_eq!(back.groups[&[1; 16]].owe_key_to, vec!["bob".to_string()]);
    }

    #[test]
    fn truncated_or_padded_encoding_is_an_error_not_a_panic() {
        let mut rng = rng();
        let bytes = sample_state(&mut rng).encode();
        // Every cut up to the identity, then a sample (each later decode
        // recomputes the DH public key, a modexp).
        let cuts = (0..100).chain((100..bytes.len()).step_by(17));
        for cut in cuts {
            assert!(ClientState::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(ClientState::decode(&longer).is_err());
    }

    #[test]
    fn file_round_trip_wrong_passphrase_and_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = rng();
        let dir = StateDir::new(tmp.path(), "zoë").unwrap();
        let cost = KdfCost::insecure_for_tests(10);
        let st = sample_state(&mut rng);
        let un = dir.create(b"pw", cost, &st, &mut rng).unwrap();
        assert_same(&un.load().unwrap(), &st);

        // Mode 0600 on the file, 0700 on the directory.
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        // Creating again never overwrites the keys.
        let other = sample_state(&mut rng);
        assert!(matches!(
            dir.create(b"pw", cost, &other, &mut rng),
            Err(StateError::AlreadyExists { .. })
        ));
        assert_same(&dir.unlock(b"pw", cost).unwrap().load().unwrap(), &st);

        assert!(matches!(
            dir.unlock(b"pW", cost),
            Err(StateError::WrongPassphrase)
        ));

        // Flip one byte of the ciphertext: corrupted, not "wrong passphrase".
        let path = dir.path().join(STATE_FILE);
        let good = fs::read(&path).unwrap();
        let mut bad = good.clone();
        let i = bad.len() - 40;
        bad[i] ^= 1;
        fs::write(&path, &bad).unwrap();
        assert!(matches!(
            dir.unlock(b"pw", cost),
            Err(StateError::Corrupted(_))
        ));
        // The damaged file is left as it was.
        assert_eq!(fs::read(&path).unwrap(), bad);

        // Truncated and garbage files.
        fs::write(&path, &good[..10]).unwrap();
        assert!(matches!(
            dir.unlock(b"pw", cost),
            Err(StateError::Corrupted(_))
        ));
        fs::write(&path, b"not a state file at all, just text").unwrap();
        assert!(matches!(
            dir.unlock(b"pw", cost),
            Err(StateError::Corrupted(_))
        ));
        fs::write(&path, &good).unwrap();
        assert!(dir.unlock(b"pw", cost).is_ok());
    }

    #[test]
    fn the_standard_kdf_round_trips() {
        // One real 600,000-iteration file (two derivations): the path every
        // user takes goes through `kdf::passphrase_keys`.
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = rng();
        let dir = StateDir::new(tmp.path(), "al").unwrap();
        let st = sample_state(&mut rng);
        dir.create(b"pw", KdfCost::standard(), &st, &mut rng)
            .unwrap();
        let un = dir.unlock(b"pw", KdfCost::standard()).unwrap();
        assert_same(&un.load().unwrap(), &st);
        let header = parse_header(&fs::read(dir.path().join(STATE_FILE)).unwrap())
            .unwrap()
            .to_vec();
        let (iterations, _) = decode_params(&header[9..30]).unwrap();
        assert_eq!(iterations, PBKDF2_DEFAULT_ITERATIONS);
    }

    #[test]
    fn weak_kdf_is_refused_without_opt_in() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = rng();
        let dir = StateDir::new(tmp.path(), "al").unwrap();
        let st = sample_state(&mut rng);
        dir.create(b"pw", KdfCost::insecure_for_tests(3), &st, &mut rng)
            .unwrap();
        assert!(matches!(
            dir.unlock(b"pw", KdfCost::standard()),
            Err(StateError::WeakKdf { iterations: 3, min }) if min == PBKDF2_MIN_ITERATIONS
        ));
        assert_eq!(KdfCost::standard().iterations(), PBKDF2_DEFAULT_ITERATIONS);
    }

    #[test]
    fn an_oversized_state_file_is_refused_unread() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path(), "al").unwrap();
        fs::create_dir_all(dir.path()).unwrap();
        // Sparse: costs no disk.
        let f = File::create(dir.path().join(STATE_FILE)).unwrap();
        f.set_len(CLIENT_STATE_MAX_BYTES + 1).unwrap();
        let err = dir
            .unlock(b"pw", KdfCost::insecure_for_tests(1))
            .unwrap_err();
        assert!(
            matches!(err, StateError::Corrupted(ref m) if m.contains("larger than")),
            "{err}"
        );
    }

    #[test]
    fn missing_state_says_register_first() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path(), "nobody").unwrap();
        let err = dir
            .unlock(b"pw", KdfCost::insecure_for_tests(1))
            .unwrap_err();
        assert!(matches!(err, StateError::NotRegistered { .. }));
        assert!(err.to_string().contains("hermes register"));
        assert!(StateDir::new(tmp.path(), "../x").is_err());
        assert!(StateDir::new(tmp.path(), "..").is_err());
    }

    #[test]
    fn transactions_reload_inside_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = rng();
        let dir = StateDir::new(tmp.path(), "al").unwrap();
        let cost = KdfCost::insecure_for_tests(1);
        let mut st = sample_state(&mut rng);
        st.acked = 0;
        dir.create(b"pw", cost, &st, &mut rng).unwrap();
        // Two "commands" on the same directory, each in its own thread
        // with its own unlocked handle: no increment may be lost.
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let mut rng = StdRng::seed_from_u64(100 + t);
                    let un = dir.unlock(b"pw", cost).unwrap();
                    for _ in 0..10 {
                        un.transact(&mut rng, |s, _| {
                            s.acked += 1;
                            Ok::<_, StateError>(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let un = dir.unlock(b"pw", cost).unwrap();
        assert_eq!(un.load().unwrap().acked, 20);
        // A failed transaction saves nothing.
        let r: Result<(), StateError> = un.transact(&mut rng, |s, _| {
            s.acked = 999;
            Err(StateError::WrongPassphrase)
        });
        assert!(r.is_err());
        assert_eq!(un.load().unwrap().acked, 20);
    }

    #[test]
    fn inbox_seen_and_pending_are_bounded() {
        let mut rng = rng();
        let mut st = ClientState::new(
            "al",
            IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng),
        );
        for i in 0..CLIENT_INBOX_MAX_ENTRIES + 3 {
            st.push_inbox(InboxEntry {
                group_id: [0; 16],
                group_name: String::new(),
                sender: String::new(),
                sent_at_ms: i as u64,
                text: String::new(),
                id: [0; 16],
                notice: true,
            });
        }
        assert_eq!(st.inbox.len(), CLIENT_INBOX_MAX_ENTRIES);
        assert_eq!(st.inbox_dropped, 3);
        assert_eq!(st.inbox.front().unwrap().sent_at_ms, 3);

        for i in 0..CLIENT_SEEN_IDS_MAX + 1 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            assert!(st.mark_seen(&id));
            assert!(!st.mark_seen(&id));
        }
        assert_eq!(st.seen.len(), CLIENT_SEEN_IDS_MAX);
        assert!(!st.was_seen(&[0; 16]), "oldest id forgotten");

        let p = |i: usize| PendingMessage {
            group_id: [0; 16],
            sender: "b".into(),
            message_id: {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                id
            },
            received_ms: 0,
            ciphertext: vec![],
        };
        for i in 0..CLIENT_PENDING_MAX_MESSAGES {
            assert!(st.push_pending(p(i)).is_none());
        }
        let evicted = st.push_pending(p(usize::MAX)).unwrap();
        assert_eq!(evicted.message_id, [0; 16]);
        assert_eq!(st.pending.len(), CLIENT_PENDING_MAX_MESSAGES);
    }
}
