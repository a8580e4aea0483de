//! `--target hermes`: synthetic Hermes users over the relay's wire protocol
//! (`PROTOCOL.md` Part 3).
//!
//! Before the swarm starts, [`setup`] (blocking sockets, a few threads):
//! 1. loads the synthetic identities from the cache (`--cache-dir`, default
//!    `<temp dir>/hermes-loadtest`), generating and appending only the ones
//!    missing, so later runs spend no time on DH key generation;
//! 2. registers every member (`register`; a name already taken — the same
//!    cached identity on a relay that kept its data — logs in instead);
//! 3. creates every group with one signed genesis commit by its admin (the
//!    member at position 0) listing all members (`create group`).
//!
//! Then each swarm connection ([`Hermes`]) logs in on the relay's hello,
//! is ready at `authenticated`, sends `group send` frames whose ciphertext is
//! the stamped payload, and acks what it receives (cumulatively, every
//! [`ACK_EVERY`] entries, and on a tick, every 100 ms or `--ack-interval`,
//! unless a batch ack went out since the previous tick) so the relay can
//! release it.
//! Entries of other groups (an earlier run's backlog on a kept account) and
//! membership commits are acked and not counted.
//!
//! `--crypto none` sends opaque ciphertexts exactly as long as a real sealed
//! group message with the same plaintext size ([`sealed_len`] seals one with
//! `group::SenderKey` to measure it). `--crypto real` gives every sender a
//! `group::SenderKey` and every other member of its group the distribution
//! (handed over in memory at set-up, not through the relay); senders seal
//! (EAX + HMAC + Ed25519) and receivers verify and open every message, so
//! the stamp travels encrypted. The relay's hello signature is not checked:
//! the swarm trusts its loopback relay.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hermes::crypto::dh::DhGroup;
use hermes::crypto::identity::{IdentityKeyPair, SigningKeyPair};
use hermes::group::{ReceiverStore, SenderKey};
use hermes::limits::MAX_FRAME_LEN;
use hermes::membership::Commit;
use hermes::wire::{
    EntryKind, ErrorCode, Frame, GroupId, login_message, register_message, split_frame,
};
use rayon::prelude::*;

use crate::proto::{Event, Member, Proto, ProtoError};

/// Cumulative ack after this many unacked entries (also on a tick, unless a
/// batch ack went out since the previous tick).
pub(crate) const ACK_EVERY: u64 = 64;

/// Magic at the start of the identity cache file.
const CACHE_MAGIC: &[u8; 8] = b"HLTID\x00\x00\x01";
/// Cache file name inside the cache directory.
const CACHE_FILE: &str = "identities-v1.bin";
/// Bytes of one cached identity: Ed25519 seed, then the encoded public
/// identity (ffdhe2048).
fn record_len() -> usize {
    32 + hermes::crypto::identity::PublicIdentity::encoded_len(DhGroup::Ffdhe2048)
}

/// Why the Hermes set-up failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HermesError {
    /// A socket or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The relay refused a set-up step.
    #[error("{what}: the relay refused with code {code} ({text})")]
    Refused {
        /// The step.
        what: String,
        /// The error code.
        code: u16,
        /// The relay's text.
        text: String,
    },
    /// The relay sent something that does not decode or does not fit.
    #[error("{0}")]
    Protocol(String),
    /// The identity cache is unusable.
    #[error("identity cache {path}: {why}")]
    Cache {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Building the sender keys failed.
    #[error("sender key set-up: {0}")]
    Group(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> HermesError {
    let what = what.into();
    move |source| HermesError::Io { what, source }
}

/// One synthetic user's keys.
pub(crate) struct Identity {
    signing: SigningKeyPair,
    public: Vec<u8>,
}

/// Loads `n` identities from the cache in `dir`, generating (in parallel)
/// and appending the ones missing. Returns the cache's id (part of every
/// user name, so a kept relay sees the same names for the same keys) and the
/// identities.
///
/// # Errors
/// [`HermesError::Io`] or [`HermesError::Cache`].
pub(crate) fn load_identities(dir: &Path, n: usize) -> Result<(u64, Vec<Identity>), HermesError> {
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let path = dir.join(CACHE_FILE);
    let bad = |why: &str| HermesError::Cache {
        path: path.clone(),
        why: why.to_string(),
    };
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)
                .map_err(io_err(format!("reading {}", path.display())))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("opening {}", path.display()))(e)),
    }
    let rec = record_len();
    let (cache_id, body) = if bytes.len() >= 16 && bytes.get(..8) == Some(&CACHE_MAGIC[..]) {
        let id = bytes
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| bad("short header"))?;
        (id, bytes.get(16..).unwrap_or_default())
    } else if bytes.is_empty() {
        (0, &[][..])
    } else {
        return Err(bad("not an identity cache (bad magic); delete it"));
    };
    let mut out = Vec::with_capacity(n);
    for chunk in body.chunks_exact(rec).take(n) {
        let (seed, public) = chunk.split_at(32);
        let seed: [u8; 32] = seed.try_into().map_err(|_| bad("short record"))?;
        let signing = SigningKeyPair::from_secret_bytes(&seed);
        if public.get(1..33) != Some(&signing.public_key()[..]) {
            return Err(bad(
                "a record's public identity does not match its key; delete it",
            ));
        }
        out.push(Identity {
            signing,
            public: public.to_vec(),
        });
    }
    if out.len() == n {
        return Ok((cache_id, out));
    }
    let cache_id = if bytes.is_empty() {
        rand::random::<u64>()
    } else {
        cache_id
    };
    let missing = n - out.len();
    let started = Instant::now();
    let fresh: Vec<([u8; 32], Vec<u8>)> = (0..missing)
        .into_par_iter()
        .map(|_| {
            let mut rng = rand::rng();
            let id = IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng);
            (
                *id.signing().to_secret_bytes().expose(),
                id.public().encode(),
            )
        })
        .collect();
    eprintln!(
        "hermes-loadtest: generated {missing} identities in {:.1} s (cached in {})",
        started.elapsed().as_secs_f64(),
        path.display()
    );
    let mut append = Vec::with_capacity(16 + missing * rec);
    if bytes.is_empty() {
        append.extend_from_slice(CACHE_MAGIC);
        append.extend_from_slice(&cache_id.to_be_bytes());
    } else if body.len() % rec != 0 {
        return Err(bad("torn record at the end; delete it"));
    }
    for (seed, public) in &fresh {
        append.extend_from_slice(seed);
        append.extend_from_slice(public);
    }
    write_cache(&path, &append, bytes.is_empty())?;
    for (seed, public) in fresh {
        out.push(Identity {
            signing: SigningKeyPair::from_secret_bytes(&seed),
            public,
        });
    }
    Ok((cache_id, out))
}

fn write_cache(path: &Path, data: &[u8], create: bool) -> Result<(), HermesError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .append(true)
        .create(create)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("writing {}", path.display())))
}

/// The default cache directory: `<temp dir>/hermes-loadtest`.
pub(crate) fn default_cache_dir() -> PathBuf {
    std::env::temp_dir().join("hermes-loadtest")
}

/// The length of a real sealed group message carrying `plaintext_len`
/// bytes from a sender named like the swarm's members.
pub(crate) fn sealed_len(plaintext_len: usize, sender: &str) -> usize {
    let mut rng = rand::rng();
    let mut key = SenderKey::generate([0; 16], 1, &mut rng);
    let plaintext = vec![0u8; plaintext_len];
    key.seal(0, sender, 0, [0; 16], &plaintext)
        .map_or(plaintext_len, |m| m.len())
}

/// What every Hermes connection of the swarm shares.
pub(crate) struct HermesCtx {
    /// Global index of `names[0]`; groups start at `first_member / group_size`.
    first_member: usize,
    group_size: usize,
    names: Vec<String>,
    keys: Vec<SigningKeyPair>,
    /// Group id and epoch, by group index.
    groups: Vec<(GroupId, u64)>,
    /// `--crypto real`: each member's own sender key (senders only) and its
    /// receiver store holding the other senders' chains, taken by the
    /// member's connection when it is created.
    real: Option<Vec<Mutex<RealKeys>>>,
    /// A tick ack goes out at most every this many ticks (`--ack-interval`;
    /// 1: every tick).
    ack_ticks: u32,
}

/// One member's group keys for `--crypto real`.
#[derive(Default)]
struct RealKeys {
    sender: Option<SenderKey>,
    receiver: Option<ReceiverStore>,
}

/// Set-up parameters.
#[derive(Debug, Clone)]
pub(crate) struct SetupConfig {
    pub(crate) server: SocketAddr,
    pub(crate) connections: usize,
    /// Global index of the first member (a multiple of `group_size`).
    pub(crate) first_member: usize,
    pub(crate) group_size: usize,
    pub(crate) cache_dir: PathBuf,
    pub(crate) timeout: Duration,
    pub(crate) threads: usize,
    /// Senders per group (positions `0..senders`).
    pub(crate) senders_per_group: usize,
    /// `--crypto real`: build sender keys and distribute them.
    pub(crate) real_crypto: bool,
    /// Ticks between tick acks (`--ack-interval` / the tick period).
    pub(crate) ack_ticks: u32,
}

/// The member name of member `i` under cache `cache_id`.
pub(crate) fn member_name(cache_id: u64, i: usize) -> String {
    format!("lt{cache_id:016x}-{i}")
}

/// Registers every member and creates every group (see the module doc).
///
/// # Errors
/// The first failing step.
pub(crate) fn setup(cfg: &SetupConfig) -> Result<HermesCtx, HermesError> {
    let deadline = Instant::now() + cfg.timeout;
    // Member i of this process is global member first_member + i.
    let (cache_id, mut ids) = load_identities(&cfg.cache_dir, cfg.first_member + cfg.connections)?;
    ids.drain(..cfg.first_member.min(ids.len()));
    let names: Vec<String> = (0..cfg.connections)
        .map(|i| member_name(cache_id, cfg.first_member + i))
        .collect();
    let threads = cfg.threads.clamp(1, 8);

    let started = Instant::now();
    parallel(cfg.connections, threads, |i| {
        let (Some(id), Some(name)) = (ids.get(i), names.get(i)) else {
            return Ok(());
        };
        register_or_login(cfg.server, name, id, deadline)
    })?;
    eprintln!(
        "hermes-loadtest: {} users registered in {:.1} s",
        cfg.connections,
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let n_groups = cfg.connections.div_ceil(cfg.group_size);
    let group_ids: Vec<GroupId> = (0..n_groups).map(|_| rand::random()).collect();
    parallel(n_groups, threads, |g| {
        let start = g * cfg.group_size;
        let end = (start + cfg.group_size).min(cfg.connections);
        let members: Vec<(String, [u8; 32])> = (start..end)
            .filter_map(|i| Some((names.get(i)?.clone(), ids.get(i)?.signing.public_key())))
            .collect();
        let (Some(admin), Some(admin_name), Some(gid)) =
            (ids.get(start), names.get(start), group_ids.get(g))
        else {
            return Ok(());
        };
        let genesis = Commit::genesis(
            *gid,
            format!("loadtest g{g}"),
            admin_name.clone(),
            members,
            |m| admin.signing.sign(m),
        )
        .map_err(|e| HermesError::Protocol(format!("genesis of group {g}: {e}")))?;
        create_group(cfg.server, admin_name, admin, &genesis.encode(), deadline)
    })?;
    eprintln!(
        "hermes-loadtest: {n_groups} groups created in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let real = if cfg.real_crypto {
        Some(sender_keys(cfg, &names, &group_ids)?)
    } else {
        None
    };
    Ok(HermesCtx {
        names,
        keys: ids.into_iter().map(|i| i.signing).collect(),
        groups: group_ids.into_iter().map(|g| (g, 0)).collect(),
        real,
        first_member: cfg.first_member,
        group_size: cfg.group_size,
        ack_ticks: cfg.ack_ticks,
    })
}

/// `--crypto real`: a sender key per sender, and every other member of its
/// group given its distribution. The swarm hands distributions over in
/// memory instead of in pairwise envelopes through the relay (the set-up is
/// not what is measured; the messages are).
fn sender_keys(
    cfg: &SetupConfig,
    names: &[String],
    group_ids: &[GroupId],
) -> Result<Vec<Mutex<RealKeys>>, HermesError> {
    let mut keys: Vec<RealKeys> = (0..cfg.connections).map(|_| RealKeys::default()).collect();
    let mut rng = rand::rng();
    for (g, gid) in group_ids.iter().enumerate() {
        let start = g * cfg.group_size;
        let end = (start + cfg.group_size).min(cfg.connections);
        for r in start..end {
            if let Some(k) = keys.get_mut(r) {
                k.receiver = Some(ReceiverStore::new(*gid));
            }
        }
        for s in start..(start + cfg.senders_per_group).min(end) {
            let mut sk = SenderKey::generate(*gid, 1, &mut rng);
            let sender_name = names.get(s).map_or("", String::as_str);
            for r in (start..end).filter(|&r| r != s) {
                let d = sk.distribution_for(names.get(r).map_or("", String::as_str), 0);
                if let Some(store) = keys.get_mut(r).and_then(|k| k.receiver.as_mut()) {
                    store
                        .handle_distribution(sender_name, &d)
                        .map_err(|e| HermesError::Group(e.to_string()))?;
                }
            }
            if let Some(k) = keys.get_mut(s) {
                k.sender = Some(sk);
            }
        }
    }
    Ok(keys.into_iter().map(Mutex::new).collect())
}

/// Runs `f(0..n)` on `threads` threads; the first error wins.
fn parallel(
    n: usize,
    threads: usize,
    f: impl Fn(usize) -> Result<(), HermesError> + Sync,
) -> Result<(), HermesError> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(());
                        }
                        if let Err(e) = f(i) {
                            next.store(n, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                })
            })
            .collect();
        let mut result = Ok(());
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = result.and(Err(e)),
                Err(_) => {
                    result = result.and(Err(HermesError::Protocol("set-up thread panicked".into())))
                }
            }
        }
        result
    })
}

/// A blocking connection used only during set-up.
struct Blocking {
    stream: TcpStream,
    buf: Vec<u8>,
    challenge: [u8; 32],
    relay_key: [u8; 32],
}

impl Drop for Blocking {
    fn drop(&mut self) {
        // The step is over (its answer was read); no TIME_WAIT left behind.
        crate::sys::reset_on_close(&self.stream);
    }
}

impl Blocking {
    fn open(server: SocketAddr, deadline: Instant) -> Result<Blocking, HermesError> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let stream = crate::sys::connect_blocking(server, left)
            .map_err(io_err(format!("connecting to {server}")))?;
        stream
            .set_read_timeout(Some(left))
            .map_err(io_err("setting a read timeout"))?;
        let _ = stream.set_nodelay(true);
        let mut b = Blocking {
            stream,
            buf: Vec::new(),
            challenge: [0; 32],
            relay_key: [0; 32],
        };
        let hello = b.recv()?;
        match Frame::decode(&hello) {
            Ok(Frame::Hello(h)) => {
                b.challenge = h.challenge;
                b.relay_key = h.relay_key;
                Ok(b)
            }
            _ => Err(HermesError::Protocol(
                "the relay did not start with a hello".into(),
            )),
        }
    }

    fn send(&mut self, f: &Frame<'_>) -> Result<(), HermesError> {
        self.stream
            .write_all(&f.to_vec())
            .map_err(io_err("writing to the relay"))
    }

    /// The next frame (version, kind, body).
    fn recv(&mut self) -> Result<Vec<u8>, HermesError> {
        loop {
            match split_frame(&self.buf, MAX_FRAME_LEN) {
                Ok(Some((frame, n))) => {
                    let f = frame.to_vec();
                    self.buf.drain(..n);
                    return Ok(f);
                }
                Ok(None) => {}
                Err(e) => return Err(HermesError::Protocol(format!("relay frame: {e}"))),
            }
            let mut chunk = [0u8; 16384];
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(io_err("reading from the relay"))?;
            if n == 0 {
                return Err(HermesError::Protocol(
                    "the relay closed the connection".into(),
                ));
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }

    /// Reads until a frame `want` accepts, skipping pushed entries; an error
    /// frame fails the step.
    fn expect<T>(
        &mut self,
        what: &str,
        mut want: impl FnMut(&Frame<'_>) -> Option<T>,
    ) -> Result<T, HermesError> {
        loop {
            let bytes = self.recv()?;
            let f =
                Frame::decode(&bytes).map_err(|e| HermesError::Protocol(format!("{what}: {e}")))?;
            if let Frame::Error(e) = &f {
                return Err(HermesError::Refused {
                    what: what.to_string(),
                    code: e.code,
                    text: e.text.to_string(),
                });
            }
            if let Some(t) = want(&f) {
                return Ok(t);
            }
        }
    }

    fn login(&mut self, name: &str, keys: &SigningKeyPair) -> Result<(), HermesError> {
        let signature = keys.sign(&login_message(&self.challenge, &self.relay_key, name));
        self.send(&Frame::Login { name, signature })?;
        self.expect(&format!("login of {name}"), |f| {
            matches!(f, Frame::Authenticated { .. }).then_some(())
        })
    }
}

fn register_or_login(
    server: SocketAddr,
    name: &str,
    id: &Identity,
    deadline: Instant,
) -> Result<(), HermesError> {
    loop {
        let mut c = Blocking::open(server, deadline)?;
        let proof = id
            .signing
            .sign(&register_message(&c.challenge, &c.relay_key, name));
        c.send(&Frame::Register {
            name,
            identity: &id.public,
            proof,
        })?;
        match c.expect(&format!("registration of {name}"), |f| {
            matches!(f, Frame::Authenticated { .. }).then_some(())
        }) {
            Ok(()) => return Ok(()),
            Err(HermesError::Refused { code, .. }) if code == ErrorCode::NameTaken as u16 => {
                let mut c = Blocking::open(server, deadline)?;
                return c.login(name, &id.signing);
            }
            Err(HermesError::Refused { code, .. })
                if code == ErrorCode::RegistrationRateLimited as u16
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

fn create_group(
    server: SocketAddr,
    admin_name: &str,
    admin: &Identity,
    genesis: &[u8],
    deadline: Instant,
) -> Result<(), HermesError> {
    let mut c = Blocking::open(server, deadline)?;
    c.login(admin_name, &admin.signing)?;
    c.send(&Frame::CreateGroup { genesis })?;
    c.expect(&format!("group creation by {admin_name}"), |f| {
        matches!(f, Frame::CommitAccepted { .. }).then_some(())
    })
}

/// Where a swarm connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitAuth,
    Ready,
}

/// A Hermes member connection of the swarm.
pub(crate) struct Hermes {
    name: String,
    keys: SigningKeyPair,
    group: Option<(GroupId, u64)>,
    member: u32,
    run_tag: u32,
    state: State,
    next_id: u64,
    /// Highest entry sequence number received, and acked.
    seen: u64,
    acked: u64,
    unacked: u64,
    /// A batch ack ([`ACK_EVERY`]) went out since the last tick.
    batch_acked: bool,
    /// Ticks since the last ack, and how many a tick ack waits for
    /// (`--ack-interval` in ticks).
    ticks_since_ack: u32,
    ack_ticks: u32,
    ping_nonce: u64,
    /// `--crypto real`: this member's keys.
    real: Option<RealKeys>,
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Hermes {
    fn ack(&mut self, out: &mut Vec<u8>) {
        self.ticks_since_ack = 0;
        if self.seen > self.acked {
            Frame::Ack { up_to: self.seen }.encode(out);
            self.acked = self.seen;
            self.unacked = 0;
        }
    }

    fn saw(&mut self, seq: u64) {
        if seq > self.seen {
            self.seen = seq;
            self.unacked += 1;
        }
    }
}

/// True for the error codes after which the relay closes the connection
/// (`PROTOCOL.md` 3.5).
fn closes(code: u16) -> bool {
    matches!(code, 100..=104 | 202..=205 | 206 | 207)
}

impl Proto for Hermes {
    type Ctx = HermesCtx;

    fn new(member: &Member, ctx: &HermesCtx) -> Hermes {
        let first_group = ctx.first_member / ctx.group_size.max(1);
        let i = usize::try_from(member.index)
            .ok()
            .and_then(|m| m.checked_sub(ctx.first_member))
            .unwrap_or(usize::MAX);
        let g = usize::try_from(member.group)
            .ok()
            .and_then(|g| g.checked_sub(first_group))
            .unwrap_or(usize::MAX);
        Hermes {
            name: ctx.names.get(i).cloned().unwrap_or_default(),
            keys: ctx
                .keys
                .get(i)
                .map(|k| SigningKeyPair::from_secret_bytes(k.to_secret_bytes().expose()))
                .unwrap_or_else(|| SigningKeyPair::from_secret_bytes(&[0; 32])),
            group: ctx.groups.get(g).copied(),
            member: member.index,
            run_tag: member.run_tag,
            state: State::AwaitHello,
            next_id: 0,
            seen: 0,
            acked: 0,
            unacked: 0,
            batch_acked: false,
            ticks_since_ack: 0,
            ack_ticks: ctx.ack_ticks.max(1),
            ping_nonce: 0,
            real: ctx.real.as_ref().and_then(|v| {
                let slot = v.get(i)?;
                let mut keys = slot.lock().ok()?;
                Some(std::mem::take(&mut *keys))
            }),
        }
    }

    fn start(&mut self, _out: &mut Vec<u8>) {
        // The relay speaks first (hello).
    }

    fn on_read(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) -> Result<usize, ProtoError> {
        let mut at = 0;
        loop {
            let rest = buf.get(at..).unwrap_or_default();
            let (frame, n) = match split_frame(rest, MAX_FRAME_LEN) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(_) => return Err(ProtoError::Malformed("Hermes frame length")),
            };
            let f = Frame::decode(frame).map_err(|_| ProtoError::Malformed("Hermes frame"))?;
            match (f, self.state) {
                (Frame::Hello(h), State::AwaitHello) => {
                    let msg = login_message(&h.challenge, &h.relay_key, &self.name);
                    let signature = self.keys.sign(&msg);
                    Frame::Login {
                        name: &self.name,
                        signature,
                    }
                    .encode(out);
                    self.state = State::AwaitAuth;
                }
                (Frame::Authenticated { acked, .. }, State::AwaitAuth) => {
                    self.seen = acked;
                    self.acked = acked;
                    self.state = State::Ready;
                    events.push(Event::Ready);
                }
                (Frame::Deliver(d), State::Ready) => {
                    self.saw(d.seq);
                    let mine = self.group.is_some_and(|(g, _)| g == d.group_id);
                    if d.kind == EntryKind::GroupMessage && mine {
                        if let Some(store) = self.real.as_mut().and_then(|r| r.receiver.as_mut()) {
                            match store.open(d.ciphertext, unix_ms_now()) {
                                Ok(m) => events.push(Event::Plain(m.plaintext.to_vec())),
                                Err(_) => events.push(Event::Undecryptable),
                            }
                            at += n;
                            continue;
                        }
                        // The ciphertext borrows from `frame`, a sub-slice of `buf`.
                        let offset =
                            (d.ciphertext.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
                        events.push(Event::Message(offset..offset + d.ciphertext.len()));
                    }
                }
                (Frame::GapNotice(g), State::Ready) => self.saw(g.seq),
                (Frame::StoredReceipt { .. }, State::Ready) => {}
                (Frame::Pong { .. }, _) => events.push(Event::Pong),
                (Frame::Error(e), _) => {
                    if closes(e.code) {
                        return Err(ProtoError::Refused(format!("code {}: {}", e.code, e.text)));
                    }
                    events.push(Event::ServerError(e.code));
                }
                _ => return Err(ProtoError::Malformed("unexpected Hermes frame")),
            }
            at += n;
        }
        if self.unacked >= ACK_EVERY {
            self.ack(out);
            self.batch_acked = true;
        }
        Ok(at)
    }

    fn publish(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let Some((group_id, epoch)) = self.group else {
            return;
        };
        let mut message_id = [0u8; 16];
        message_id[..4].copy_from_slice(&self.member.to_be_bytes());
        message_id[4..8].copy_from_slice(&self.run_tag.to_be_bytes());
        message_id[8..].copy_from_slice(&self.next_id.to_be_bytes());
        self.next_id += 1;
        let sealed;
        let ciphertext = match self.real.as_mut().and_then(|r| r.sender.as_mut()) {
            Some(sk) => match sk.seal(epoch, &self.name, unix_ms_now(), message_id, payload) {
                Ok(m) => {
                    sealed = m;
                    &sealed[..]
                }
                // A chain exhausted after 2^32 messages: nothing sensible to send.
                Err(_) => return,
            },
            None => payload,
        };
        Frame::GroupSend {
            group_id,
            epoch,
            message_id,
            ciphertext,
        }
        .encode(out);
    }

    fn ping(&mut self, out: &mut Vec<u8>) {
        self.ping_nonce += 1;
        Frame::Ping {
            nonce: self.ping_nonce,
        }
        .encode(out);
    }

    fn tick(&mut self, out: &mut Vec<u8>) {
        // A connection that acked a full batch since the last tick is
        // flowing: its tail goes out with the next batch or, once the flow
        // stops, at the next tick (so a tick ack is at most two periods late
        // and a busy receiver sends no extra acks).
        self.ticks_since_ack = self.ticks_since_ack.saturating_add(1);
        if std::mem::take(&mut self.batch_acked) || self.ticks_since_ack < self.ack_ticks {
            return;
        }
        self.ack(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hermes::wire::{Deliver, ErrorFrame, Hello};

    fn ctx() -> HermesCtx {
        HermesCtx {
            names: vec!["a".into(), "b".into()],
            keys: vec![
                SigningKeyPair::from_secret_bytes(&[1; 32]),
                SigningKeyPair::from_secret_bytes(&[2; 32]),
            ],
            groups: vec![([9; 16], 3)],
            real: None,
            first_member: 0,
            group_size: 2,
            ack_ticks: 1,
        }
    }

    fn member() -> Member {
        Member {
            index: 1,
            group: 0,
            run_tag: 5,
        }
    }

    fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some((f, n)) = split_frame(rest, MAX_FRAME_LEN).unwrap() {
            out.push(f.to_vec());
            rest = &rest[n..];
        }
        assert!(rest.is_empty());
        out
    }

    fn deliver(seq: u64, group_id: GroupId, kind: EntryKind, ct: &[u8]) -> Vec<u8> {
        Frame::Deliver(Deliver {
            seq,
            sender: "a",
            group_id,
            kind,
            message_id: [0; 16],
            unix_ms: 1,
            ciphertext: ct,
        })
        .to_vec()
    }

    /// A connection that has logged in.
    fn ready() -> Hermes {
        ready_with(&ctx(), 1)
    }

    fn ready_with(ctx: &HermesCtx, index: u32) -> Hermes {
        let m = Member {
            index,
            group: 0,
            run_tag: 5,
        };
        let mut c = Hermes::new(&m, ctx);
        let mut out = Vec::new();
        let mut ev = Vec::new();
        let hello = Frame::Hello(Hello {
            software: "t",
            dh_group: 1,
            relay_key: [4; 32],
            challenge: [5; 32],
            signature: [0; 64],
        })
        .to_vec();
        c.on_read(&hello, &mut out, &mut ev).unwrap();
        let sent = frames(&out);
        let Frame::Login { name, signature } = Frame::decode(&sent[0]).unwrap() else {
            panic!("expected a login")
        };
        let i = usize::try_from(index).unwrap();
        assert_eq!(name, ctx.names[i]);
        let keys = SigningKeyPair::from_secret_bytes(&[u8::try_from(index).unwrap() + 1; 32]);
        assert_eq!(
            signature,
            keys.sign(&login_message(&[5; 32], &[4; 32], name))
        );
        let auth = Frame::Authenticated { name, acked: 10 }.to_vec();
        c.on_read(&auth, &mut out, &mut ev).unwrap();
        assert_eq!(ev, vec![Event::Ready]);
        c
    }

    #[test]
    fn logs_in_on_hello_and_is_ready_when_authenticated() {
        let c = ready();
        assert_eq!(
            (c.seen, c.acked),
            (10, 10),
            "resumes after the account's ack position"
        );
    }

    #[test]
    fn yields_own_group_messages_and_acks_everything() {
        let mut c = ready();
        let mut input = deliver(11, [9; 16], EntryKind::GroupMessage, b"stamped");
        input.extend(deliver(12, [8; 16], EntryKind::GroupMessage, b"old run"));
        input.extend(deliver(13, [9; 16], EntryKind::Commit, b"commit"));
        input.extend(deliver(14, [9; 16], EntryKind::GroupMessage, b"x")[..5].to_vec());
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        let used = c.on_read(&input, &mut out, &mut ev).unwrap();
        assert_eq!(used, input.len() - 5, "the partial frame stays");
        assert_eq!(ev.len(), 1, "{ev:?}");
        let Event::Message(r) = ev[0].clone() else {
            panic!("{ev:?}")
        };
        assert_eq!(&input[r], b"stamped");
        assert!(out.is_empty(), "acks are batched");
        c.tick(&mut out);
        assert_eq!(
            Frame::decode(&frames(&out)[0]).unwrap(),
            Frame::Ack { up_to: 13 }
        );
        out.clear();
        c.tick(&mut out);
        assert!(out.is_empty(), "nothing new to ack");
    }

    #[test]
    fn a_longer_ack_interval_acks_every_nth_tick() {
        let mut ctx = ctx();
        ctx.ack_ticks = 3;
        let mut c = ready_with(&ctx, 1);
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        c.on_read(
            &deliver(11, [9; 16], EntryKind::GroupMessage, b"m"),
            &mut out,
            &mut ev,
        )
        .unwrap();
        c.tick(&mut out);
        c.tick(&mut out);
        assert!(out.is_empty(), "two ticks of three");
        c.tick(&mut out);
        assert_eq!(
            Frame::decode(&frames(&out)[0]).unwrap(),
            Frame::Ack { up_to: 11 }
        );
    }

    #[test]
    fn acks_every_batch_without_waiting_for_a_tick() {
        let mut c = ready();
        let mut input = Vec::new();
        for seq in 11..11 + ACK_EVERY {
            input.extend(deliver(seq, [9; 16], EntryKind::GroupMessage, b"m"));
        }
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        c.on_read(&input, &mut out, &mut ev).unwrap();
        assert_eq!(ev.len(), usize::try_from(ACK_EVERY).unwrap());
        assert_eq!(
            Frame::decode(&frames(&out)[0]).unwrap(),
            Frame::Ack {
                up_to: 10 + ACK_EVERY
            }
        );
        // One more entry: the next tick skips it (a batch went out since the
        // last tick), the tick after acks it.
        let more = deliver(11 + ACK_EVERY, [9; 16], EntryKind::GroupMessage, b"m");
        out.clear();
        c.on_read(&more, &mut out, &mut ev).unwrap();
        assert!(out.is_empty());
        c.tick(&mut out);
        assert!(out.is_empty(), "a batch was acked since the last tick");
        c.tick(&mut out);
        assert_eq!(
            Frame::decode(&frames(&out)[0]).unwrap(),
            Frame::Ack {
                up_to: 11 + ACK_EVERY
            }
        );
    }

    #[test]
    fn publishes_group_sends_with_unique_ids_under_the_group_epoch() {
        let mut c = ready();
        let mut out = Vec::new();
        c.publish(b"one", &mut out);
        c.publish(b"two", &mut out);
        let f = frames(&out);
        let (
            Frame::GroupSend {
                group_id,
                epoch,
                message_id: m1,
                ciphertext,
            },
            Frame::GroupSend { message_id: m2, .. },
        ) = (Frame::decode(&f[0]).unwrap(), Frame::decode(&f[1]).unwrap())
        else {
            panic!("expected group sends")
        };
        assert_eq!((group_id, epoch, ciphertext), ([9; 16], 3, &b"one"[..]));
        assert_ne!(m1, m2);
    }

    #[test]
    fn errors_close_only_when_the_relay_closes() {
        let err = |code: u16| {
            Frame::Error(ErrorFrame {
                code,
                refers_to: 0x28,
                reference: [0; 16],
                text: "t",
            })
            .to_vec()
        };
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        let mut c = ready();
        c.on_read(&err(ErrorCode::StaleEpoch as u16), &mut out, &mut ev)
            .unwrap();
        assert_eq!(ev, vec![Event::ServerError(302)]);
        assert!(matches!(
            c.on_read(&err(ErrorCode::BadSignature as u16), &mut out, &mut ev),
            Err(ProtoError::Refused(_))
        ));
        let mut c = Hermes::new(&member(), &ctx());
        assert!(
            c.on_read(
                &deliver(1, [9; 16], EntryKind::GroupMessage, b"m"),
                &mut out,
                &mut ev
            )
            .is_err(),
            "a delivery before login breaks the protocol"
        );
    }

    #[test]
    fn identity_cache_is_reused_and_extended() {
        let dir = tempfile::tempdir().unwrap();
        let (id1, a) = load_identities(dir.path(), 3).unwrap();
        let (id2, b) = load_identities(dir.path(), 5).unwrap();
        let (id3, c) = load_identities(dir.path(), 2).unwrap();
        assert_eq!((id1, id2), (id3, id3), "one cache id");
        assert_eq!((a.len(), b.len(), c.len()), (3, 5, 2));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                x.signing.public_key(),
                y.signing.public_key(),
                "kept, not regenerated"
            );
            assert_eq!(x.public, y.public);
        }
        let public = hermes::crypto::identity::PublicIdentity::decode(&b[4].public).unwrap();
        public.verify().unwrap();
        assert_eq!(public.signing_key, b[4].signing.public_key());
        let len = std::fs::metadata(dir.path().join(CACHE_FILE))
            .unwrap()
            .len();
        assert_eq!(len, 16 + 5 * record_len() as u64);
    }

    #[test]
    fn identity_cache_rejects_foreign_and_torn_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CACHE_FILE), b"something else entirely").unwrap();
        assert!(matches!(
            load_identities(dir.path(), 1),
            Err(HermesError::Cache { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        load_identities(dir.path(), 1).unwrap();
        let p = dir.path().join(CACHE_FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.extend_from_slice(&[0; 7]);
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(
            load_identities(dir.path(), 2),
            Err(HermesError::Cache { .. })
        ));
        bytes[20] ^= 1; // a seed no longer matching its public identity
        bytes.truncate(bytes.len() - 7);
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(
            load_identities(dir.path(), 1),
            Err(HermesError::Cache { .. })
        ));
    }

    #[test]
    fn real_crypto_seals_for_and_opens_from_the_group() {
        let cfg = SetupConfig {
            server: "127.0.0.1:1".parse().unwrap(),
            connections: 2,
            first_member: 0,
            group_size: 2,
            cache_dir: PathBuf::new(),
            timeout: Duration::from_secs(1),
            threads: 1,
            senders_per_group: 1,
            real_crypto: true,
            ack_ticks: 1,
        };
        let mut c = ctx();
        c.groups = vec![([9; 16], 0)];
        c.real = Some(sender_keys(&cfg, &c.names, &[[9; 16]]).unwrap());
        let mut a = ready_with(&c, 0);
        let mut b = ready_with(&c, 1);
        let mut out = Vec::new();
        a.publish(b"stamped payload", &mut out);
        let sent = frames(&out);
        let Frame::GroupSend { ciphertext, .. } = Frame::decode(&sent[0]).unwrap() else {
            panic!("expected a group send")
        };
        assert_eq!(ciphertext.len(), sealed_len(15, "a"));
        let (mut o, mut ev) = (Vec::new(), Vec::new());
        let mut tampered = ciphertext.to_vec();
        *tampered.last_mut().unwrap() ^= 1;
        let mut input = deliver(11, [9; 16], EntryKind::GroupMessage, &tampered);
        input.extend(deliver(12, [9; 16], EntryKind::GroupMessage, ciphertext));
        b.on_read(&input, &mut o, &mut ev).unwrap();
        assert_eq!(
            ev,
            vec![
                Event::Undecryptable,
                Event::Plain(b"stamped payload".to_vec())
            ]
        );
    }

    #[test]
    fn opaque_payloads_have_the_sealed_length() {
        let n = sealed_len(100, "lt0000000000000000-1");
        assert!(n > 100 + 64, "signature and envelope overhead: {n}");
        assert_eq!(sealed_len(200, "lt0000000000000000-1"), n + 100);
    }
}
