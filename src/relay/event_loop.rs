//! The relay's I/O shell: one thread, one `mio::Poll`, connections in a
//! `slab`, feeding bytes to the pure [`RelayCore`] and pulling its output.
//!
//! ```text
//!  poll(timeout) ─► events ─┬─ listener ──► accept (≤ RELAY_ACCEPTS_PER_PASS, gated on --max-connections and --max-accepts-per-sec)
//!                           ├─ waker ─────► core.handle_durable()   (sync thread: records durable)
//!                           ├─ signals ───► stop accepting, flush, exit
//!                           ├─ metrics ───► tiny HTTP/1.0 responder
//!                           └─ conn token ─► (generation checked) read / write lists
//!  reads:   logged-in connections first, then ≤ RELAY_UNAUTHENTICATED_READS_PER_PASS others;
//!           read into the shared buffer until WouldBlock (≤ RELAY_READ_BUDGET_PER_PASS,
//!           frames-per-second bucket) ─► core.handle_bytes(); keep a split frame's tail
//!           (whole within RELAY_FRAME_TIMEOUT)
//!  timers:  core.handle_timeout(), handshake deadlines, close lingers
//!  closes:  core.poll_close() ─► flush, shutdown(Write), drain reads, drop
//!  writes:  core.poll_ready_conns() + writable events ─► per connection:
//!           core.poll_transmit(≤ RELAY_OUTPUT_BOUND) then ONE write(2)
//!  reap:    closed connections leave the slab after the whole batch
//! ```
//!
//! A connection's id (mio token and core `ConnId`) carries its slab key and
//! a generation, so an event for a closed connection never reaches a new
//! one that reused the key. No cryptography beyond the core's login
//! signature checks, no fsync and no rayon run on this thread; with
//! `--fsync always` the mailbox's sync thread wakes the loop through a
//! `mio::Waker` and the held receipts go out then.
//!
//! [`spawn_relay`] runs the loop on a background thread (tests, demos, the
//! load generator); [`run_relay`] runs it on the calling thread (`hermes
//! relay`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use rand::SeedableRng;
use rand::rngs::StdRng;
use slab::Slab;

use super::conn::{AuthSniffer, Conn, ConnKey, METRICS_TOKEN_BIT, Phase, RateBucket};
use super::core::{CloseReason, ConnId, CoreError, RelayConfig, RelayCore};
use super::metrics::{self, CoreCounters, HttpRequest, Metrics};
use super::os;
use crate::crypto::identity::SigningKeyPair;
use crate::limits::{
    RELAY_ACCEPT_BURST, RELAY_ACCEPTS_PER_PASS, RELAY_BULK_FLUSHES_PER_PASS, RELAY_CLOSE_LINGER,
    RELAY_DEFAULT_FRAMES_PER_SEC, RELAY_EVENTS_PER_POLL, RELAY_FD_RESERVE, RELAY_FLUSHES_PER_PASS,
    RELAY_FRAME_TIMEOUT, RELAY_HANDSHAKE_TIMEOUT, RELAY_LISTEN_BACKLOG, RELAY_MAX_ACCEPTS_PER_SEC,
    RELAY_MAX_QUEUED_OUTPUT, RELAY_METRICS_MAX_CLIENTS, RELAY_METRICS_MAX_REQUEST,
    RELAY_METRICS_TIMEOUT, RELAY_OUTPUT_BOUND, RELAY_READ_BUDGET_PER_PASS, RELAY_READ_CHUNK,
    RELAY_SHUTDOWN_GRACE, RELAY_SUMMARY_INTERVAL, RELAY_THROTTLE_RECHECK,
    RELAY_UNAUTHENTICATED_READS_PER_PASS,
};
use crate::mailbox::{FsyncPolicy, MemStore, MmapConfig, MmapStore, Store, StoreError};
use crate::wire::{ErrorCode, ErrorFrame, Frame, LENGTH_PREFIX_LEN, split_frame};

/// The relay's default listen address (the original's port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:33001";
/// The relay's default data directory.
pub const DEFAULT_DATA_DIR: &str = "./hermes-data";
/// The relay's identity key file inside the data directory (32 secret
/// bytes, mode 0600, created on first start).
pub const IDENTITY_FILE: &str = "relay-identity.key";

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
const METRICS_LISTENER: Token = Token(3);

/// Everything `hermes relay` (or a test) configures. Plain values; the CLI
/// fills them from flags and environment.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Data directory (mailbox segments, identity key). `None`: an
    /// in-memory store and a fresh identity (tests).
    pub data_dir: Option<PathBuf>,
    /// When records become durable (and receipts go out).
    pub fsync: FsyncPolicy,
    /// Most client connections; `None`: the open-file soft limit (raised
    /// to the hard limit) minus [`RELAY_FD_RESERVE`].
    pub max_connections: Option<usize>,
    /// Frames per second per connection (and burst).
    pub max_frames_per_sec: u32,
    /// New connections accepted per second, relay-wide, after a burst of
    /// `accept_burst` ([`RELAY_MAX_ACCEPTS_PER_SEC`]); 0: no limit.
    pub max_accepts_per_sec: u32,
    /// Connections accepted at once before that rate applies
    /// ([`RELAY_ACCEPT_BURST`]).
    pub accept_burst: u32,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// How long a connection may stay unauthenticated.
    pub handshake_timeout: Duration,
    /// How long a frame may take to arrive whole ([`RELAY_FRAME_TIMEOUT`]).
    pub frame_timeout: Duration,
    /// Relay-wide cap on unsent output bytes ([`RELAY_MAX_QUEUED_OUTPUT`]).
    pub max_queued_output: usize,
    /// Install SIGINT/SIGTERM handlers (the `hermes relay` process only:
    /// handlers are process-wide).
    pub handle_signals: bool,
    /// Log startup and the periodic summary at info level.
    pub log_summary: bool,
    /// The core's settings (frame size, queue cap, rates, idle timeout...).
    /// `receipts_after_durable` is set from `fsync`.
    pub core: RelayConfig,
}

impl Default for ServerConfig {
    /// The defaults of `hermes relay` with no flags.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 33001)),
            data_dir: Some(PathBuf::from(DEFAULT_DATA_DIR)),
            fsync: FsyncPolicy::Batch,
            max_connections: None,
            max_frames_per_sec: RELAY_DEFAULT_FRAMES_PER_SEC,
            max_accepts_per_sec: RELAY_MAX_ACCEPTS_PER_SEC,
            accept_burst: RELAY_ACCEPT_BURST,
            metrics: None,
            handshake_timeout: RELAY_HANDSHAKE_TIMEOUT,
            frame_timeout: RELAY_FRAME_TIMEOUT,
            max_queued_output: RELAY_MAX_QUEUED_OUTPUT,
            handle_signals: false,
            log_summary: true,
            core: RelayConfig::default(),
        }
    }
}

impl ServerConfig {
    /// A relay on `127.0.0.1:0` with an in-memory store: for tests and
    /// demos that need a relay and nothing else.
    #[must_use]
    pub fn ephemeral() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: None,
            log_summary: false,
            ..Self::default()
        }
    }

    /// A relay on `127.0.0.1:0` over the memory-mapped store in `dir`.
    #[must_use]
    pub fn ephemeral_in(dir: &Path) -> Self {
        Self {
            data_dir: Some(dir.to_path_buf()),
            ..Self::ephemeral()
        }
    }
}

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen (or metrics) address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// Creating or waiting on the poll, waker or signal pipe failed.
    #[error("event loop: {0}")]
    Poll(#[source] io::Error),
    /// The data directory or the identity key could not be used.
    #[error("{what} {path}: {source}")]
    DataDir {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The identity key file is not 32 bytes.
    #[error("identity key {0} is not 32 bytes")]
    BadIdentity(PathBuf),
    /// The OS random generator failed.
    #[error("no randomness from the operating system")]
    Rng,
    /// The mailbox could not be opened.
    #[error("mailbox: {0}")]
    Store(#[from] StoreError),
    /// The core could not replay the mailbox.
    #[error("relay core: {0}")]
    Core(#[from] CoreError),
    /// The relay thread could not be started, or it panicked.
    #[error("relay thread: {0}")]
    Thread(String),
}

/// What a started relay tells its caller.
#[derive(Debug, Clone)]
struct Started {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    relay_key: [u8; 32],
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
}

/// A relay running on a background thread (see [`spawn_relay`]). Dropping
/// the handle shuts the relay down and waits for it.
pub struct RelayHandle {
    started: Started,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("addr", &self.started.addr)
            .finish_non_exhaustive()
    }
}

impl RelayHandle {
    /// The address clients connect to (the real port if `:0` was asked).
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.started.addr
    }

    /// The metrics endpoint's address, if `metrics` was set.
    #[must_use]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.started.metrics_addr
    }

    /// The relay's Ed25519 public key (what its hello carries).
    #[must_use]
    pub fn relay_key(&self) -> [u8; 32] {
        self.started.relay_key
    }

    /// Asks the relay to stop: it stops accepting, flushes pending output
    /// (up to [`RELAY_SHUTDOWN_GRACE`]) and returns. Does not wait; see
    /// [`RelayHandle::join`].
    pub fn shutdown(&self) {
        self.started.stop.store(true, Ordering::Release);
        if let Err(e) = self.started.waker.wake() {
            tracing::warn!(error = %e, "cannot wake the relay loop");
        }
    }

    /// Shuts the relay down and waits for its thread.
    ///
    /// # Errors
    /// The loop's error, or [`ServerError::Thread`] if it panicked.
    pub fn join(mut self) -> Result<(), ServerError> {
        self.shutdown();
        self.wait()
    }

    fn wait(&mut self) -> Result<(), ServerError> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| ServerError::Thread("the relay thread panicked".into()))?,
            None => Ok(()),
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.shutdown();
        if let Err(e) = self.wait() {
            tracing::warn!(error = %e, "relay stopped with an error");
        }
    }
}

/// Starts a relay on a background thread and returns once it listens.
///
/// # Errors
/// Anything that keeps it from starting: bind, data directory, identity
/// key, mailbox recovery, thread spawn.
pub fn spawn_relay(config: ServerConfig) -> Result<RelayHandle, ServerError> {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("hermes-relay".into())
        .spawn(move || run_inner(config, Some(tx)))
        .map_err(|e| ServerError::Thread(e.to_string()))?;
    match rx.recv() {
        Ok(Ok(started)) => Ok(RelayHandle {
            started,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(ServerError::Thread(
                "the relay thread ended before listening".into(),
            )),
            Err(_) => Err(ServerError::Thread("the relay thread panicked".into())),
        },
    }
}

/// Runs a relay on the calling thread until SIGINT/SIGTERM (if
/// `handle_signals`) or a fatal error.
///
/// # Errors
/// Anything that keeps it from starting, or a failing poll.
pub fn run_relay(config: ServerConfig) -> Result<(), ServerError> {
    run_inner(config, None)
}

type StartTx = mpsc::Sender<Result<Started, ServerError>>;

fn run_inner(config: ServerConfig, started: Option<StartTx>) -> Result<(), ServerError> {
    let result = match config.data_dir.clone() {
        None => {
            let identity = SigningKeyPair::generate(&mut os_rng()?);
            start(config, identity, |_| Ok(MemStore::new()), started.as_ref())
        }
        Some(dir) => {
            let identity = load_or_create_identity(&dir)?;
            let fsync = config.fsync;
            start(
                config,
                identity,
                |waker| {
                    let on_durable = Box::new(move || {
                        let _ = waker.wake();
                    });
                    MmapStore::open(
                        &dir,
                        MmapConfig {
                            fsync,
                            ..MmapConfig::default()
                        },
                        on_durable,
                    )
                },
                started.as_ref(),
            )
        }
    };
    match (result, started) {
        (Err(e), Some(tx)) => {
            // The spawner is waiting for the outcome; it returns the error.
            let _ = tx.send(Err(e));
            Ok(())
        }
        (r, _) => r,
    }
}

fn os_rng() -> Result<StdRng, ServerError> {
    StdRng::try_from_rng(&mut rand::rngs::SysRng).map_err(|_| ServerError::Rng)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads the relay's identity from `<dir>/relay-identity.key`, creating it
/// (mode 0600) on first start.
fn load_or_create_identity(dir: &Path) -> Result<SigningKeyPair, ServerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| ServerError::DataDir { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(dir_err("create", dir))?;
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let bytes = zeroize::Zeroizing::new(bytes);
            let secret: &[u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| ServerError::BadIdentity(path.clone()))?;
            Ok(SigningKeyPair::from_secret_bytes(secret))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = SigningKeyPair::generate(&mut os_rng()?);
            let secret = key.to_secret_bytes();
            let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(dir_err("create", &tmp))?;
            f.write_all(secret.expose())
                .map_err(dir_err("write", &tmp))?;
            f.sync_all().map_err(dir_err("sync", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(dir_err("rename", &path))?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(dir_err("sync", dir))?;
            Ok(key)
        }
        Err(e) => Err(dir_err("read", &path)(e)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn start<S: Store>(
    mut config: ServerConfig,
    identity: SigningKeyPair,
    open_store: impl FnOnce(Arc<Waker>) -> Result<S, StoreError>,
    started: Option<&StartTx>,
) -> Result<(), ServerError> {
    let limit = os::raise_nofile_limit();
    let max_connections = config.max_connections.unwrap_or_else(|| {
        usize::try_from(limit.soft)
            .unwrap_or(usize::MAX)
            .saturating_sub(RELAY_FD_RESERVE)
            .max(1)
    });

    let poll = Poll::new().map_err(ServerError::Poll)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ServerError::Poll)?);
    let bind_err = |addr| move |source| ServerError::Bind { addr, source };
    let mut listener =
        os::bind_listener(config.listen, RELAY_LISTEN_BACKLOG).map_err(bind_err(config.listen))?;
    let addr = listener.local_addr().map_err(bind_err(config.listen))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(ServerError::Poll)?;
    let mut metrics_listener = match config.metrics {
        Some(m) => {
            let mut l = TcpListener::bind(m).map_err(bind_err(m))?;
            poll.registry()
                .register(&mut l, METRICS_LISTENER, Interest::READABLE)
                .map_err(ServerError::Poll)?;
            Some(l)
        }
        None => None,
    };
    let metrics_addr = match &mut metrics_listener {
        Some(l) => Some(l.local_addr().map_err(bind_err(addr))?),
        None => None,
    };
    let signals = if config.handle_signals {
        Some(Signals::install(&poll).map_err(ServerError::Poll)?)
    } else {
        None
    };

    let store = open_store(Arc::clone(&waker))?;
    let recovery = store.recovery_report().clone();
    config.core.receipts_after_durable = config.fsync == FsyncPolicy::Always;
    let now = Instant::now();
    let (core, replay) = RelayCore::open(
        store,
        os_rng()?,
        identity,
        config.core.clone(),
        now,
        unix_ms(),
    )?;
    let relay_key = core.relay_key();

    if config.log_summary {
        tracing::info!(
            listen = %addr,
            data_dir = %config.data_dir.as_deref().map_or_else(|| "(memory)".into(), |d| d.display().to_string()),
            fsync = ?config.fsync,
            dh_group = ?config.core.dh_group,
            identity = %hex(&relay_key),
            max_connections,
            nofile_soft = limit.soft,
            nofile_hard = limit.hard,
            metrics = ?metrics_addr,
            "hermes relay listening"
        );
        tracing::info!(
            records = replay.records,
            accounts = replay.accounts,
            groups = replay.groups,
            live_messages = replay.live_messages,
            skipped = replay.skipped,
            torn_tails = recovery.torn_tails.len(),
            corrupt_records = recovery.corrupt_records.len(),
            "mailbox replayed"
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    if let Some(tx) = started {
        let _ = tx.send(Ok(Started {
            addr,
            metrics_addr,
            relay_key,
            waker: Arc::clone(&waker),
            stop: Arc::clone(&stop),
        }));
    }

    let metrics = Metrics {
        max_connections: max_connections as u64,
        ..Metrics::default()
    };
    let mut server = Server {
        poll,
        listener: Some(listener),
        listener_registered: true,
        metrics_listener,
        http: Slab::new(),
        conns: Slab::new(),
        next_generation: 1,
        core,
        max_connections,
        frames_per_sec: config.max_frames_per_sec.max(1),
        max_frame: config.core.max_frame,
        handshake_timeout: config.handshake_timeout,
        frame_timeout: config.frame_timeout,
        max_queued_output: config.max_queued_output,
        queued_out: 0,
        log_summary: config.log_summary,
        scratch: vec![0; RELAY_READ_CHUNK],
        outbuf: Vec::with_capacity(RELAY_OUTPUT_BOUND),
        metrics,
        stop,
        signals,
        to_read: Vec::new(),
        unauthenticated: VecDeque::new(),
        throttled: Vec::new(),
        throttle_at: None,
        to_flush: Vec::new(),
        flush_again: Vec::new(),
        deferred: VecDeque::new(),
        bulk: VecDeque::new(),
        cap_waiting: Vec::new(),
        ready: Vec::new(),
        dead: Vec::new(),
        handshakes: VecDeque::new(),
        frame_deadlines: BinaryHeap::new(),
        lingers: VecDeque::new(),
        accept_more: false,
        accept_retry_at: None,
        max_accepts_per_sec: config.max_accepts_per_sec,
        accept_burst: config.accept_burst,
        accept_bucket: RateBucket::new(config.accept_burst, Instant::now()),
        next_summary: now + RELAY_SUMMARY_INTERVAL,
    };
    let result = server.run();
    server.shutdown();
    if config.log_summary {
        tracing::info!("hermes relay stopped");
    }
    result
}

/// SIGINT and SIGTERM written to a self-pipe the poll watches.
struct Signals {
    rx: mio::net::UnixStream,
    ids: Vec<signal_hook::SigId>,
}

impl Signals {
    fn install(poll: &Poll) -> io::Result<Self> {
        let (rx, tx) = std::os::unix::net::UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        let mut rx = mio::net::UnixStream::from_std(rx);
        poll.registry()
            .register(&mut rx, SIGNALS, Interest::READABLE)?;
        let tx2 = tx.try_clone()?;
        let ids = vec![
            signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, tx)?,
            signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, tx2)?,
        ];
        Ok(Self { rx, ids })
    }

    /// Empties the pipe; true if a signal arrived.
    fn drain(&mut self) -> bool {
        let mut buf = [0u8; 64];
        let mut got = false;
        loop {
            match self.rx.read(&mut buf) {
                Ok(0) => return got,
                Ok(_) => got = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return got,
            }
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// A client of the metrics endpoint.
struct HttpConn {
    stream: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
    written: usize,
    deadline: Instant,
}

struct Server<S: Store> {
    poll: Poll,
    listener: Option<TcpListener>,
    listener_registered: bool,
    metrics_listener: Option<TcpListener>,
    http: Slab<HttpConn>,
    conns: Slab<Conn>,
    next_generation: u32,
    core: RelayCore<S, StdRng>,
    max_connections: usize,
    frames_per_sec: u32,
    max_frame: usize,
    handshake_timeout: Duration,
    frame_timeout: Duration,
    max_queued_output: usize,
    /// Unsent output held over all connections (the sum of their
    /// `Conn::counted`), kept under `max_queued_output`.
    queued_out: usize,
    log_summary: bool,
    /// The one read buffer all connections share.
    scratch: Vec<u8>,
    /// The one output buffer connections with nothing left over share:
    /// pulled into, written from, then only the unsent tail is kept.
    outbuf: Vec<u8>,
    metrics: Metrics,
    stop: Arc<AtomicBool>,
    signals: Option<Signals>,
    /// Read again next pass (budget used up while data may remain).
    to_read: Vec<ConnKey>,
    /// Readable connections not logged in, waiting for their turn
    /// ([`RELAY_UNAUTHENTICATED_READS_PER_PASS`]).
    unauthenticated: VecDeque<ConnKey>,
    /// Out of frame tokens: read again at `throttle_at`.
    throttled: Vec<ConnKey>,
    throttle_at: Option<Instant>,
    /// Write this pass.
    to_flush: Vec<ConnKey>,
    /// The socket took everything but the core has more: write next pass.
    flush_again: Vec<ConnKey>,
    /// Bulk-ready connections (a large group's message), flushed
    /// [`RELAY_BULK_FLUSHES_PER_PASS`] a pass, oldest first.
    bulk: VecDeque<ConnKey>,
    /// Flushes past [`RELAY_FLUSHES_PER_PASS`], served first next pass.
    deferred: VecDeque<ConnKey>,
    /// Held back by the relay-wide output cap: flushed again once under it.
    cap_waiting: Vec<ConnKey>,
    ready: Vec<ConnId>,
    /// Closed this pass; removed from the slab after the batch.
    dead: Vec<ConnKey>,
    handshakes: VecDeque<(Instant, ConnKey)>,
    /// When a connection's partial frame must be whole (at most one entry
    /// per connection: `Conn::deadline_queued`).
    frame_deadlines: BinaryHeap<Reverse<(Instant, ConnKey)>>,
    lingers: VecDeque<(Instant, ConnKey)>,
    accept_more: bool,
    accept_retry_at: Option<Instant>,
    /// The relay-wide accept rate ([`RELAY_MAX_ACCEPTS_PER_SEC`]; 0: none)
    /// and its burst, and their bucket.
    max_accepts_per_sec: u32,
    accept_burst: u32,
    accept_bucket: RateBucket,
    next_summary: Instant,
}

fn core_id(k: ConnKey) -> ConnId {
    ConnId(k.as_u64())
}

fn close_label(reason: CloseReason) -> String {
    match reason {
        CloseReason::Protocol(code) => format!("protocol:{code:?}"),
        CloseReason::AuthFailed(code) => format!("auth:{code:?}"),
        CloseReason::Idle => "idle".to_owned(),
    }
}

impl<S: Store> Server<S> {
    fn run(&mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(RELAY_EVENTS_PER_POLL);
        loop {
            let timeout = self.next_timeout(Instant::now());
            self.metrics.poll_calls += 1;
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError::Poll(e));
            }
            let now = Instant::now();
            let unix_ms = unix_ms();
            let mut durable = false;
            let mut readable = std::mem::take(&mut self.to_read);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_more = true,
                    WAKER => durable = true,
                    SIGNALS => {
                        if self.signals.as_mut().is_some_and(Signals::drain) {
                            self.stop.store(true, Ordering::Release);
                        }
                    }
                    METRICS_LISTENER => self.accept_metrics(now),
                    t if t.0 & METRICS_TOKEN_BIT != 0 => {
                        self.serve_metrics(t.0 & !METRICS_TOKEN_BIT)
                    }
                    t => {
                        // Unknown or stale tokens (a closed connection's
                        // generation) are ignored.
                        let Some(k) = ConnKey::from_token(t) else {
                            continue;
                        };
                        let Some(c) = self.conns.get_mut(k.slot).filter(|c| c.key == k) else {
                            continue;
                        };
                        if event.is_read_closed() || event.is_error() {
                            c.hup = true;
                        }
                        if (event.is_readable() || event.is_read_closed() || event.is_error())
                            && !c.read_queued
                        {
                            c.read_queued = true;
                            readable.push(k);
                        }
                        if event.is_writable() && !c.flush_queued {
                            c.flush_queued = true;
                            self.to_flush.push(k);
                        }
                    }
                }
            }
            if self.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            if durable {
                self.core.handle_durable();
            }
            if self.accept_more && self.accept_retry_at.is_none_or(|t| now >= t) {
                self.accept(now);
            }
            if self.throttle_at.is_some_and(|t| now >= t) {
                self.throttle_at = None;
                for k in std::mem::take(&mut self.throttled) {
                    if let Some(c) = self.conns.get_mut(k.slot).filter(|c| c.key == k)
                        && !c.read_queued
                    {
                        c.read_queued = true;
                        readable.push(k);
                    }
                }
            }
            // Logged-in connections first; the others (handshakes,
            // garbage, closing) at most RELAY_UNAUTHENTICATED_READS_PER_PASS
            // a pass, oldest first.
            for k in readable.drain(..) {
                match self.conns.get(k.slot).filter(|c| c.key == k) {
                    Some(c) if !c.authenticated => self.unauthenticated.push_back(k),
                    _ => self.read(k, now, unix_ms),
                }
            }
            for _ in 0..RELAY_UNAUTHENTICATED_READS_PER_PASS {
                let Some(k) = self.unauthenticated.pop_front() else {
                    break;
                };
                self.read(k, now, unix_ms);
            }
            self.timers(now, unix_ms);
            self.pass_output();
            self.reap();
            let took = Instant::now().saturating_duration_since(now);
            self.metrics
                .pass(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
            if now >= self.next_summary {
                self.next_summary = now + RELAY_SUMMARY_INTERVAL;
                if self.log_summary {
                    let (core, store) = self.counters();
                    tracing::info!("{}", self.metrics.summary(&core, &store));
                }
            }
        }
    }

    fn next_timeout(&self, now: Instant) -> Option<Duration> {
        let busy = !self.to_read.is_empty()
            || !self.unauthenticated.is_empty()
            || !self.flush_again.is_empty()
            || !self.deferred.is_empty()
            || !self.bulk.is_empty()
            || (self.accept_more && self.listener_registered && self.accept_retry_at.is_none());
        if busy {
            return Some(Duration::ZERO);
        }
        let deadlines = [
            self.core.poll_timeout(),
            self.handshakes.front().map(|(t, _)| *t),
            self.frame_deadlines.peek().map(|Reverse((t, _))| *t),
            self.lingers.front().map(|(t, _)| *t),
            self.throttle_at,
            self.accept_retry_at,
            self.http.iter().map(|(_, h)| h.deadline).min(),
            Some(self.next_summary),
        ];
        deadlines
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    fn counters(&self) -> (CoreCounters, crate::mailbox::StoreStats) {
        let s = self.core.stats();
        (
            CoreCounters {
                deliveries: s.deliveries,
                messages_accepted: s.messages_accepted,
                dropped_over_cap: s.dropped_over_cap,
                dropped_expired: s.dropped_expired,
                errors_sent: s.errors_sent,
            },
            self.core.store().stats(),
        )
    }

    // ------------------------------------------------------------------
    // Accepting
    // ------------------------------------------------------------------

    fn accept(&mut self, now: Instant) {
        self.accept_more = false;
        self.accept_retry_at = None;
        let rate = self.max_accepts_per_sec;
        let allowed = if rate == 0 {
            RELAY_ACCEPTS_PER_PASS
        } else {
            self.accept_bucket.available(rate, self.accept_burst, now) as usize
        };
        if allowed == 0 {
            // Over the accept rate: the rest wait in the backlog until a
            // token has come (the listener's edge will not come again).
            self.metrics.accepts_deferred += 1;
            self.accept_more = true;
            let period = Duration::from_micros(1_000_000u64.div_ceil(u64::from(rate)));
            self.accept_retry_at = Some(now + period);
            return;
        }
        for _ in 0..RELAY_ACCEPTS_PER_PASS.min(allowed) {
            if self.conns.len() >= self.max_connections {
                // Gate: stop listening for accepts until a slot frees (the
                // backlog holds the rest; `reap` re-registers).
                self.pause_accepting();
                return;
            }
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, _)) => {
                    self.accept_bucket.spend(1);
                    self.add_conn(stream, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS...: the connection stays in
                    // the backlog; try again shortly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    self.metrics.error("accept");
                    self.accept_more = true;
                    self.accept_retry_at = Some(now + RELAY_THROTTLE_RECHECK);
                    return;
                }
            }
        }
        // Budget used up: more may be waiting (the edge will not come again).
        self.accept_more = true;
    }

    fn pause_accepting(&mut self) {
        if self.listener_registered
            && let Some(l) = self.listener.as_mut()
        {
            if let Err(e) = self.poll.registry().deregister(l) {
                tracing::warn!(error = %e, "cannot pause the listener");
            }
            self.listener_registered = false;
        }
    }

    fn resume_accepting(&mut self) {
        if !self.listener_registered
            && self.conns.len() < self.max_connections
            && let Some(l) = self.listener.as_mut()
        {
            // Registering a listener with a non-empty backlog reports it
            // readable at once.
            match self
                .poll
                .registry()
                .register(l, LISTENER, Interest::READABLE)
            {
                Ok(()) => {
                    self.listener_registered = true;
                    self.accept_more = true;
                }
                Err(e) => tracing::warn!(error = %e, "cannot resume the listener"),
            }
        }
    }

    fn add_conn(&mut self, mut stream: TcpStream, now: Instant) {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY failed");
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let entry = self.conns.vacant_entry();
        let key = ConnKey {
            slot: entry.key(),
            generation,
        };
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, key.token(), Interest::READABLE)
        {
            tracing::warn!(error = %e, "cannot register a connection");
            self.metrics.error("register");
            return;
        }
        entry.insert(Conn {
            stream,
            key,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            write_interest: false,
            flush_queued: false,
            bulk_queued: false,
            read_queued: false,
            hup: false,
            phase: Phase::Open,
            authenticated: false,
            sniffer: AuthSniffer::default(),
            bucket: RateBucket::new(self.frames_per_sec, now),
            partial_since: None,
            deadline_queued: false,
            counted: 0,
        });
        self.metrics.accepted += 1;
        self.metrics.open += 1;
        self.handshakes
            .push_back((now + self.handshake_timeout, key));
        self.core.handle_connect(core_id(key), now);
    }

    // ------------------------------------------------------------------
    // Reading
    // ------------------------------------------------------------------

    fn read(&mut self, k: ConnKey, now: Instant, unix_ms: u64) {
        let Some(c) = self.conns.get_mut(k.slot).filter(|c| c.key == k) else {
            return;
        };
        c.read_queued = false;
        match c.phase {
            Phase::Dead => {}
            Phase::Closing | Phase::Draining => self.discard_input(k),
            Phase::Open => self.read_open(k, now, unix_ms),
        }
    }

    /// Reads and feeds frames until WouldBlock, the per-pass budget, or the
    /// frame bucket runs dry.
    fn read_open(&mut self, k: ConnKey, now: Instant, unix_ms: u64) {
        let fps = self.frames_per_sec;
        let max_frame = self.max_frame;
        let mut budget = RELAY_READ_BUDGET_PER_PASS;
        let mut drained = false;
        let Some(c) = self.conns.get_mut(k.slot) else {
            return;
        };
        loop {
            if c.phase != Phase::Open {
                return;
            }
            // Frames already buffered go first.
            if !c.inbuf.is_empty() {
                let allowed = c.bucket.available(fps, fps, now);
                let (used, frames) = feed(
                    &mut self.core,
                    &mut self.metrics,
                    k,
                    &c.inbuf,
                    allowed,
                    max_frame,
                    now,
                    unix_ms,
                );
                c.bucket.spend(frames);
                c.inbuf.drain(..used.min(c.inbuf.len()));
                if c.inbuf.is_empty() {
                    c.inbuf = Vec::new();
                }
                track_partial(
                    c,
                    used > 0,
                    now,
                    self.frame_timeout,
                    &mut self.frame_deadlines,
                );
            }
            if c.bucket.available(fps, fps, now) == 0 {
                self.metrics.throttled += 1;
                self.throttled.push(k);
                self.throttle_at.get_or_insert(now + RELAY_THROTTLE_RECHECK);
                return;
            }
            if drained {
                return;
            }
            if budget == 0 {
                c.read_queued = true;
                self.to_read.push(k);
                return;
            }
            let res = c.stream.read(&mut self.scratch);
            self.metrics.read_calls += 1;
            match res {
                Ok(0) => {
                    // The peer finished sending: answer what it sent (the
                    // replies may still be in the core), then close.
                    self.begin_close(k, None, now);
                    return;
                }
                Ok(n) => {
                    self.metrics.bytes_in += n as u64;
                    budget = budget.saturating_sub(n);
                    let data = self.scratch.get(..n).unwrap_or_default();
                    let fresh = c.inbuf.is_empty();
                    if fresh {
                        let allowed = c.bucket.available(fps, fps, now);
                        let (used, frames) = feed(
                            &mut self.core,
                            &mut self.metrics,
                            k,
                            data,
                            allowed,
                            max_frame,
                            now,
                            unix_ms,
                        );
                        c.bucket.spend(frames);
                        c.inbuf
                            .extend_from_slice(data.get(used..).unwrap_or_default());
                    } else {
                        c.inbuf.extend_from_slice(data);
                    }
                    reserve_for_frame(&mut c.inbuf, max_frame);
                    track_partial(c, fresh, now, self.frame_timeout, &mut self.frame_deadlines);
                    // A short read emptied the socket. Edge-triggered epoll
                    // reports the next data that arrives, so once what was
                    // read is fed, the read that would only say WouldBlock
                    // is skipped (not once the peer's FIN or an error was
                    // reported: then read on until the 0 or the error).
                    drained = n < self.scratch.len() && !c.hup;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    kill(
                        &mut self.dead,
                        c,
                        &mut self.metrics,
                        Some(io_label("read", &e)),
                    );
                    return;
                }
            }
        }
    }

    /// A closing connection: read and drop whatever the peer still sends,
    /// until it closes (then the connection is gone).
    fn discard_input(&mut self, k: ConnKey) {
        let Some(c) = self.conns.get_mut(k.slot) else {
            return;
        };
        let mut budget = RELAY_READ_BUDGET_PER_PASS;
        c.inbuf = Vec::new();
        loop {
            match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    kill(&mut self.dead, c, &mut self.metrics, None);
                    return;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        c.read_queued = true;
                        self.to_read.push(k);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    kill(&mut self.dead, c, &mut self.metrics, None);
                    return;
                }
            }
        }
    }

    // ------------------------------------------------------------------
    // Timers and closes
    // ------------------------------------------------------------------

    fn timers(&mut self, now: Instant, unix_ms: u64) {
        if self.core.poll_timeout().is_some_and(|t| now >= t) {
            self.core.handle_timeout(now, unix_ms);
        }
        while let Some(&(deadline, k)) = self.handshakes.front() {
            if deadline > now {
                break;
            }
            self.handshakes.pop_front();
            let Some(c) = self.conns.get_mut(k.slot).filter(|c| c.key == k) else {
                continue;
            };
            if c.authenticated || c.phase != Phase::Open {
                continue;
            }
            Frame::Error(ErrorFrame {
                code: ErrorCode::NotAuthenticated.to_u16(),
                refers_to: 0,
                reference: [0; 16],
                text: "no login within the handshake timeout",
            })
            .encode(&mut c.out);
            self.begin_close(k, Some("handshake_timeout"), now);
        }
        while let Some(&Reverse((deadline, k))) = self.frame_deadlines.peek() {
            if deadline > now {
                break;
            }
            self.frame_deadlines.pop();
            self.frame_deadline(k, now);
        }
        while let Some(&(deadline, k)) = self.lingers.front() {
            if deadline > now {
                break;
            }
            self.lingers.pop_front();
            if let Some(c) = self.conns.get_mut(k.slot).filter(|c| c.key == k) {
                kill(&mut self.dead, c, &mut self.metrics, None);
            }
        }
        while let Some((id, reason)) = self.core.poll_close() {
            self.begin_close(ConnKey::from_u64(id.0), Some(&close_label(reason)), now);
        }
        if !self.http.is_empty() {
            let expired: Vec<usize> = self
                .http
                .iter()
                .filter(|(_, h)| h.deadline <= now)
                .map(|(i, _)| i)
                .collect();
            for i in expired {
                self.remove_http(i);
            }
        }
    }

    /// A partial-frame deadline came: closes `k` if the frame that was
    /// partial then is still not whole, else watches its current one.
    fn frame_deadline(&mut self, k: ConnKey, now: Instant) {
        let Some(c) = self.conns.get_mut(k.slot).filter(|c| c.key == k) else {
            return;
        };
        c.deadline_queued = false;
        let Some(since) = c.partial_since.filter(|_| c.phase == Phase::Open) else {
            return;
        };
        let due = since + self.frame_timeout;
        // Whole frames waiting for frame tokens are throttling, not a slow
        // sender.
        let whole = matches!(split_frame(&c.inbuf, self.max_frame), Ok(Some(_)));
        if due > now || whole {
            c.deadline_queued = true;
            let at = if whole { now + self.frame_timeout } else { due };
            self.frame_deadlines.push(Reverse((at, k)));
            return;
        }
        Frame::Error(ErrorFrame {
            code: ErrorCode::Malformed.to_u16(),
            refers_to: 0,
            reference: [0; 16],
            text: "frame not completed within the frame timeout",
        })
        .encode(&mut c.out);
        self.begin_close(k, Some("frame_timeout"), now);
    }

    /// Starts closing `k`: its pending output (the error frame) goes out,
    /// then its write side is shut down and its input drained, for at most
    /// [`RELAY_CLOSE_LINGER`].
    fn begin_close(&mut self, k: ConnKey, reason: Option<&str>, now: Instant) {
        let Some(c) = self.conns.get_mut(k.slot).filter(|c| c.key == k) else {
            return;
        };
        if c.phase != Phase::Open {
            return;
        }
        if let Some(reason) = reason {
            self.metrics.error(reason);
        }
        tracing::debug!(conn = k.as_u64(), reason, "closing connection");
        c.phase = Phase::Closing;
        c.inbuf = Vec::new();
        self.lingers.push_back((now + RELAY_CLOSE_LINGER, k));
        self.queue_flush(k);
    }

    // ------------------------------------------------------------------
    // Writing
    // ------------------------------------------------------------------

    /// Puts `k` on this pass's flush list unless it is there already (or
    /// gone).
    fn queue_flush(&mut self, k: ConnKey) {
        if let Some(c) = self.conns.get_mut(k.slot).filter(|c| c.key == k)
            && !c.flush_queued
        {
            c.flush_queued = true;
            self.to_flush.push(k);
        }
    }

    fn pass_output(&mut self) {
        let mut ready = std::mem::take(&mut self.ready);
        self.core.poll_ready_conns(&mut ready);
        for id in ready.drain(..) {
            self.queue_flush(ConnKey::from_u64(id.0));
        }
        for k in std::mem::take(&mut self.flush_again) {
            self.queue_flush(k);
        }
        // At most RELAY_FLUSHES_PER_PASS: older deferred flushes first, but
        // only what leaves the new ones three quarters of the budget.
        let old = self.deferred.len().min(
            (RELAY_FLUSHES_PER_PASS / 4)
                .max(RELAY_FLUSHES_PER_PASS.saturating_sub(self.to_flush.len())),
        );
        for _ in 0..old {
            if let Some(k) = self.deferred.pop_front() {
                self.flush(k);
            }
        }
        let room = RELAY_FLUSHES_PER_PASS - old;
        let list = std::mem::take(&mut self.to_flush);
        for (i, &k) in list.iter().enumerate() {
            if i < room {
                self.flush(k);
            } else {
                // Still marked flush_queued: not queued twice meanwhile.
                self.deferred.push_back(k);
            }
        }
        self.to_flush = list;
        self.to_flush.clear();
        // Bulk: a few a pass, oldest first. One that an ordinary flush
        // also waits for is left to it (that flush writes everything).
        self.core.poll_ready_bulk(&mut ready);
        for id in ready.drain(..) {
            let k = ConnKey::from_u64(id.0);
            if let Some(c) = self.conns.get_mut(k.slot).filter(|c| c.key == k)
                && !c.bulk_queued
            {
                c.bulk_queued = true;
                self.bulk.push_back(k);
            }
        }
        self.ready = ready; // keep its allocation for the next pass
        for _ in 0..RELAY_BULK_FLUSHES_PER_PASS {
            let Some(k) = self.bulk.pop_front() else {
                break;
            };
            if let Some(c) = self.conns.get_mut(k.slot).filter(|c| c.key == k) {
                c.bulk_queued = false;
                if !c.flush_queued {
                    self.flush(k);
                }
            }
        }
        if self.queued_out >= self.max_queued_output {
            self.evict_backlogs();
        }
        if !self.cap_waiting.is_empty() && self.queued_out < self.max_queued_output {
            self.flush_again.append(&mut self.cap_waiting);
        }
    }

    /// At the relay-wide output cap: closes the connections holding the most
    /// unsent output until the total is under three quarters of the cap
    /// ([`RELAY_MAX_QUEUED_OUTPUT`]). Their unsent bytes are dropped at once;
    /// their entries are still in the mailbox, unacknowledged.
    fn evict_backlogs(&mut self) {
        let mut holders: Vec<(usize, ConnKey)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.counted > 0 && c.phase != Phase::Dead)
            .map(|(_, c)| (c.counted, c.key))
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        let target = self.max_queued_output / 4 * 3;
        for (_, k) in holders {
            if self.queued_out < target {
                break;
            }
            let Some(c) = self.conns.get_mut(k.slot) else {
                continue;
            };
            self.queued_out -= c.counted;
            c.counted = 0;
            c.out = Vec::new();
            c.out_pos = 0;
            kill(&mut self.dead, c, &mut self.metrics, Some("output_cap"));
        }
    }

    /// Tops the connection's output up from the core (to at most
    /// [`RELAY_OUTPUT_BOUND`]) and writes it with one `write(2)`.
    ///
    /// Output with nothing left over from an earlier pass is pulled into
    /// the loop's one shared output buffer and written from there; only
    /// what the socket does not take is copied into the connection's own
    /// buffer. So a connection whose socket keeps up costs no allocation
    /// per pass, and an idle one holds no buffer.
    fn flush(&mut self, k: ConnKey) {
        let Some(c) = self.conns.get_mut(k.slot).filter(|c| c.key == k) else {
            return;
        };
        c.flush_queued = false;
        if matches!(c.phase, Phase::Dead | Phase::Draining) {
            return;
        }
        let id = core_id(k);
        let pending = c.pending_out();
        // Nothing left over: pull into the shared buffer (emptied here, so
        // no other connection's bytes can ever be written to this one).
        let shared = pending == 0;
        self.outbuf.clear();
        let mut pulled = 0;
        let mut more = false;
        if self.queued_out >= self.max_queued_output {
            if self.core.has_pending_output(id) {
                // The relay-wide cap: pull again once evictions made room.
                self.cap_waiting.push(k);
            }
        } else if pending < RELAY_OUTPUT_BOUND {
            let buf = if shared {
                &mut self.outbuf
            } else {
                c.compact_output();
                &mut c.out
            };
            let start = buf.len();
            (pulled, more) = self.core.transmit(id, buf, RELAY_OUTPUT_BOUND - pending);
            if pulled > 0
                && !c.authenticated
                && c.sniffer.feed(buf.get(start..).unwrap_or_default())
            {
                c.authenticated = true;
                self.metrics.logins += 1;
            }
        } else if self.core.has_pending_output(id) {
            self.metrics.output_bound_hits += 1;
            more = true;
        }
        let unsent = if shared {
            self.outbuf.as_slice()
        } else {
            c.out.get(c.out_pos..).unwrap_or_default()
        };
        if !unsent.is_empty() {
            let res = loop {
                self.metrics.write_calls += 1;
                match c.stream.write(unsent) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r,
                }
            };
            let taken = match res {
                Ok(n) => {
                    self.metrics.bytes_out += n as u64;
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => {
                    kill(
                        &mut self.dead,
                        c,
                        &mut self.metrics,
                        Some(io_label("write", &e)),
                    );
                    return;
                }
            };
            if shared {
                // Keep what the socket did not take (allocates only then).
                c.out.clear();
                c.out
                    .extend_from_slice(self.outbuf.get(taken..).unwrap_or_default());
                c.out_pos = 0;
            } else {
                c.out_pos += taken;
            }
        }
        self.queued_out = self.queued_out - c.counted + c.pending_out();
        c.counted = c.pending_out();
        self.metrics.output_queued_peak = self.metrics.output_queued_peak.max(self.queued_out);
        self.outbuf.clear();
        if self.outbuf.capacity() > 2 * RELAY_OUTPUT_BOUND {
            // One oversized entry went through: do not keep its buffer.
            self.outbuf = Vec::with_capacity(RELAY_OUTPUT_BOUND);
        }
        let want_write = if c.pending_out() > 0 {
            true
        } else {
            c.release_drained_output();
            if c.phase == Phase::Closing {
                // Everything the peer should see is out: FIN, then read
                // until the peer closes so no reset destroys that output.
                let _ = c.stream.shutdown(Shutdown::Write);
                c.phase = Phase::Draining;
                if !c.read_queued {
                    c.read_queued = true;
                    self.to_read.push(k);
                }
            } else if pulled > 0 && more {
                // The socket took everything and the core has more. (A
                // pull that produced nothing is not retried at once: that
                // would spin; the next readiness or core event retries.)
                self.flush_again.push(k);
            }
            false
        };
        if want_write != c.write_interest {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            self.metrics.reregister_calls += 1;
            match self
                .poll
                .registry()
                .reregister(&mut c.stream, k.token(), interest)
            {
                Ok(()) => c.write_interest = want_write,
                Err(_) => kill(&mut self.dead, c, &mut self.metrics, Some("register")),
            }
        }
    }

    /// Removes the connections closed during this pass (after the whole
    /// event batch, so no key is reused within it).
    fn reap(&mut self) {
        for k in std::mem::take(&mut self.dead) {
            let Some(c) = self.conns.get(k.slot).filter(|c| c.key == k) else {
                continue;
            };
            if c.phase != Phase::Dead {
                continue;
            }
            let mut c = self.conns.remove(k.slot);
            self.queued_out -= c.counted;
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.core.handle_disconnect(core_id(k));
            self.metrics.closed += 1;
            self.metrics.open = self.metrics.open.saturating_sub(1);
        }
        self.resume_accepting();
    }

    // ------------------------------------------------------------------
    // Metrics endpoint
    // ------------------------------------------------------------------

    fn accept_metrics(&mut self, now: Instant) {
        loop {
            let Some(l) = self.metrics_listener.as_ref() else {
                return;
            };
            match l.accept() {
                Ok((mut stream, _)) => {
                    if self.http.len() >= RELAY_METRICS_MAX_CLIENTS {
                        continue; // dropped: closed at once
                    }
                    let entry = self.http.vacant_entry();
                    let token = Token(METRICS_TOKEN_BIT | entry.key());
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_ok()
                    {
                        entry.insert(HttpConn {
                            stream,
                            request: Vec::new(),
                            response: Vec::new(),
                            written: 0,
                            deadline: now + RELAY_METRICS_TIMEOUT,
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn serve_metrics(&mut self, i: usize) {
        let counters = self.counters();
        let Some(h) = self.http.get_mut(i) else {
            return;
        };
        if h.response.is_empty() {
            let mut buf = [0u8; 1024];
            loop {
                match h.stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        h.request
                            .extend_from_slice(buf.get(..n).unwrap_or_default());
                        if h.request.len() >= RELAY_METRICS_MAX_REQUEST {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            h.response = match metrics::parse_http_request(&h.request, RELAY_METRICS_MAX_REQUEST) {
                HttpRequest::Incomplete => return,
                HttpRequest::Metrics => {
                    metrics::http_response("200 OK", &self.metrics.render(&counters.0, &counters.1))
                }
                HttpRequest::NotFound => metrics::http_response("404 Not Found", "not found\n"),
                HttpRequest::Bad => metrics::http_response("400 Bad Request", "bad request\n"),
            };
        }
        loop {
            match h
                .stream
                .write(h.response.get(h.written..).unwrap_or_default())
            {
                Ok(0) => break,
                Ok(n) => {
                    h.written += n;
                    if h.written >= h.response.len() {
                        self.remove_http(i);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        self.remove_http(i);
    }

    fn remove_http(&mut self, i: usize) {
        if self.http.contains(i) {
            let mut h = self.http.remove(i);
            let _ = h.stream.shutdown(Shutdown::Write);
            let _ = self.poll.registry().deregister(&mut h.stream);
        }
    }

    // ------------------------------------------------------------------
    // Shutdown
    // ------------------------------------------------------------------

    /// Stops accepting, then keeps flushing pending output (receipts,
    /// deliveries) for up to [`RELAY_SHUTDOWN_GRACE`].
    fn shutdown(&mut self) {
        if let Some(mut l) = self.listener.take()
            && self.listener_registered
        {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.listener_registered = false;
        self.metrics_listener = None;
        let deadline = Instant::now() + RELAY_SHUTDOWN_GRACE;
        let mut events = Events::with_capacity(RELAY_EVENTS_PER_POLL);
        loop {
            self.core.handle_durable();
            let keys: Vec<ConnKey> = self.conns.iter().map(|(_, c)| c.key).collect();
            let mut pending = false;
            for k in keys {
                self.flush(k);
                if let Some(c) = self.conns.get(k.slot)
                    && c.phase != Phase::Dead
                    && (c.pending_out() > 0 || self.core.has_pending_output(core_id(k)))
                {
                    pending = true;
                }
            }
            self.flush_again.clear();
            self.deferred.clear();
            self.reap();
            let now = Instant::now();
            if !pending || now >= deadline {
                break;
            }
            let wait = deadline
                .saturating_duration_since(now)
                .min(Duration::from_millis(10));
            let _ = self.poll.poll(&mut events, Some(wait));
        }
        for (_, c) in &mut self.conns {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }
}

/// After `inbuf` changed: notes when its first (partial) frame began —
/// `now` if the frame at its head is new (`new_head`: whole frames went to
/// the core, or the buffer was empty) — and makes sure a deadline watches
/// it ([`RELAY_FRAME_TIMEOUT`]).
fn track_partial(
    c: &mut Conn,
    new_head: bool,
    now: Instant,
    timeout: Duration,
    deadlines: &mut BinaryHeap<Reverse<(Instant, ConnKey)>>,
) {
    if c.inbuf.is_empty() {
        c.partial_since = None;
        return;
    }
    if new_head || c.partial_since.is_none() {
        c.partial_since = Some(now);
    }
    if !c.deadline_queued {
        c.deadline_queued = true;
        deadlines.push(Reverse((now + timeout, c.key)));
    }
}

/// Once a split frame's length prefix is in `inbuf`, reserves exactly the
/// rest of that frame, so a large frame costs its own size rather than the
/// next power of two.
fn reserve_for_frame(inbuf: &mut Vec<u8>, max_frame: usize) {
    let Some(prefix) = inbuf.first_chunk::<LENGTH_PREFIX_LEN>() else {
        return;
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len <= max_frame {
        let total = LENGTH_PREFIX_LEN + len;
        inbuf.reserve_exact(total.saturating_sub(inbuf.len()));
    }
}

/// The metrics label of a socket error: a peer that reset or vanished is
/// ordinary churn, anything else an I/O error.
fn io_label(op: &str, e: &io::Error) -> &'static str {
    match (op, e.kind()) {
        (_, io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => "peer_reset",
        ("read", _) => "read_error",
        _ => "write_error",
    }
}

/// Marks a connection gone; `reap` removes it after the event batch.
fn kill(dead: &mut Vec<ConnKey>, c: &mut Conn, metrics: &mut Metrics, reason: Option<&str>) {
    if c.phase == Phase::Dead {
        return;
    }
    if let Some(r) = reason {
        metrics.error(r);
    }
    c.phase = Phase::Dead;
    dead.push(c.key);
}

/// Hands the core at most `allowed` whole frames from `data` (all of it if
/// the framing is broken, so the core answers with the error). Returns the
/// bytes the core consumed and the frames counted.
#[allow(clippy::too_many_arguments)] // reason: disjoint borrows of the server's fields
fn feed<S: Store>(
    core: &mut RelayCore<S, StdRng>,
    metrics: &mut Metrics,
    k: ConnKey,
    data: &[u8],
    allowed: u32,
    max_frame: usize,
    now: Instant,
    unix_ms: u64,
) -> (usize, u32) {
    let mut end = 0;
    let mut frames = 0;
    while frames < allowed {
        match split_frame(data.get(end..).unwrap_or_default(), max_frame) {
            Ok(Some((frame, n))) => {
                metrics.frame_in(frame.get(1).copied().unwrap_or(0));
                end += n;
                frames += 1;
            }
            Ok(None) => break,
            Err(_) => {
                end = data.len();
                break;
            }
        }
    }
    if end == 0 {
        return (0, 0);
    }
    let used = core.handle_bytes(
        core_id(k),
        data.get(..end).unwrap_or_default(),
        now,
        unix_ms,
    );
    (used, frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_key_is_created_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_identity(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create_identity(dir.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        std::fs::write(&path, [1u8; 31]).unwrap();
        assert!(matches!(
            load_or_create_identity(dir.path()),
            Err(ServerError::BadIdentity(_))
        ));
    }

    #[test]
    fn loop_limits_are_consistent() {
        // The reserve covers the loop's own descriptors: listener, metrics
        // listener and its clients, epoll, waker, signal pipe, data lock.
        const { assert!(RELAY_FD_RESERVE >= 8 + RELAY_METRICS_MAX_CLIENTS) };
        // A read pass can take at least one whole buffer.
        const { assert!(RELAY_READ_BUDGET_PER_PASS >= RELAY_READ_CHUNK) };
        // The output bound holds many small deliveries per write.
        const { assert!(RELAY_OUTPUT_BOUND >= 64 * 1024) };
        const { assert!(RELAY_LISTEN_BACKLOG >= 1024) };
        const { assert!(RELAY_ACCEPTS_PER_PASS > 0 && RELAY_EVENTS_PER_POLL >= RELAY_ACCEPTS_PER_PASS) };
        const { assert!(RELAY_DEFAULT_FRAMES_PER_SEC > 0) };
        const { assert!(RELAY_UNAUTHENTICATED_READS_PER_PASS > 0) };
        const { assert!(RELAY_FLUSHES_PER_PASS >= 4 && RELAY_BULK_FLUSHES_PER_PASS > 0) };
        const { assert!(RELAY_BULK_FLUSHES_PER_PASS <= RELAY_FLUSHES_PER_PASS) };
        assert!(RELAY_THROTTLE_RECHECK < Duration::from_secs(1));
        assert!(RELAY_HANDSHAKE_TIMEOUT < crate::limits::RELAY_IDLE_TIMEOUT);
        assert!(RELAY_CLOSE_LINGER <= RELAY_SHUTDOWN_GRACE);
        assert!(RELAY_METRICS_TIMEOUT < RELAY_SUMMARY_INTERVAL);
        const { assert!(RELAY_METRICS_MAX_REQUEST >= 1024) };
    }

    #[test]
    fn default_config_is_the_documented_command_line() {
        let c = ServerConfig::default();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir.as_deref(), Some(Path::new(DEFAULT_DATA_DIR)));
        assert_eq!(c.fsync, FsyncPolicy::Batch);
        assert_eq!(c.core.max_frame, crate::limits::MAX_FRAME_LEN);
        let e = ServerConfig::ephemeral();
        assert_eq!(e.listen.port(), 0);
        assert!(e.data_dir.is_none());
    }

    #[test]
    fn shutdown_and_drop_stop_the_thread() {
        let relay = spawn_relay(ServerConfig::ephemeral()).unwrap();
        let addr = relay.addr();
        relay.shutdown();
        relay.join().unwrap();
        assert!(std::net::TcpStream::connect(addr).is_err());
        let again = spawn_relay(ServerConfig::ephemeral()).unwrap();
        drop(again);
    }

    #[test]
    fn a_split_frame_reserves_exactly_its_own_length() {
        let mut buf = vec![0, 1, 0, 0, 1, 0x28, 7];
        reserve_for_frame(&mut buf, crate::limits::MAX_FRAME_LEN);
        assert!(buf.capacity() >= 4 + 0x1_0000);
        assert!(buf.capacity() < 2 * (4 + 0x1_0000));
        // An absurd length reserves nothing (the core refuses the frame).
        let mut bad = vec![0xff, 0xff, 0xff, 0xff, 1];
        reserve_for_frame(&mut bad, crate::limits::MAX_FRAME_LEN);
        assert!(bad.capacity() < 64);
    }

    #[test]
    fn a_busy_address_is_a_bind_error() {
        let relay = spawn_relay(ServerConfig::ephemeral()).unwrap();
        let mut c = ServerConfig::ephemeral();
        c.listen = relay.addr();
        assert!(matches!(spawn_relay(c), Err(ServerError::Bind { .. })));
    }
}
