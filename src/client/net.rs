//! The client's socket driver: a blocking TCP connection to the relay,
//! request/response calls with relay pushes buffered in between, the
//! locked state transactions around every session step, reconnects with
//! backoff.
//!
//! Rules it keeps (DESIGN.md, "One binary"):
//! - every session step runs inside [`Unlocked::transact`] (flock, reload,
//!   change, atomic save), and frames the step produced are written only
//!   after that save: the state is saved before a message is sent and
//!   before anything is acked;
//! - the lock is never held across network I/O;
//! - pushed entries are handled strictly in sequence order; one already at
//!   or below the saved ack position (handled by another command on the
//!   same state directory, or re-delivered after a reconnect) is skipped.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand_core::CryptoRng;

use super::session::{
    Change, HelloInfo, Need, Session, SessionConfig, SessionError, login_frame, register_frame,
    verify_hello,
};
use super::state::{ClientState, InboxEntry, KdfCost, StateDir, StateError, Unlocked};
use crate::crypto::identity::IdentityKeyPair;
use crate::limits::{
    CLIENT_BACKOFF_MAX, CLIENT_BACKOFF_MIN, CLIENT_CONNECT_ATTEMPTS, CLIENT_DRAIN_FRAMES,
    CLIENT_IO_TIMEOUT, CLIENT_PING_INTERVAL, MAX_FRAME_LEN,
};
use crate::membership::Commit;
use crate::wire::{DecodeError, ErrorCode, Frame, FrameKind, GroupId, MessageId, split_frame};

/// Plain settings of a client (the CLI fills them; no clap types).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The relay's address (`host:port`).
    pub server: String,
    /// My user name (NFC-normalised by [`Client::open`]).
    pub user: String,
    /// The state directory root (`<root>/<user>/`).
    pub state_root: PathBuf,
    /// The passphrase KDF cost (and which stored costs are accepted).
    pub kdf: KdfCost,
    /// Session settings.
    pub session: SessionConfig,
    /// How long to wait for one answer from the relay.
    pub io_timeout: Duration,
    /// Connection attempts before giving up (0: forever).
    pub connect_attempts: u32,
}

impl ClientConfig {
    /// Defaults for `user` on `server` with state under `state_root`.
    #[must_use]
    pub fn new(server: &str, user: &str, state_root: PathBuf) -> Self {
        Self {
            server: server.to_owned(),
            user: user.to_owned(),
            state_root,
            kdf: KdfCost::standard(),
            session: SessionConfig::default(),
            io_timeout: CLIENT_IO_TIMEOUT,
            connect_attempts: CLIENT_CONNECT_ATTEMPTS,
        }
    }
}

/// Errors of the client driver.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The relay could not be reached.
    #[error("cannot reach the relay at {server}: {source}")]
    Connect {
        /// The address.
        server: String,
        /// The last error.
        source: std::io::Error,
    },
    /// The connection broke or timed out.
    #[error("connection to the relay failed: {0}")]
    Io(#[from] std::io::Error),
    /// The relay sent something that does not decode.
    #[error("the relay sent a malformed frame: {0}")]
    Decode(#[from] DecodeError),
    /// The relay sent a frame that makes no sense here.
    #[error("unexpected {0:?} from the relay")]
    Unexpected(FrameKind),
    /// The relay refused a request.
    #[error("the relay refused: {text} (code {code})")]
    Refused {
        /// The error code.
        code: u16,
        /// Its text.
        text: String,
    },
    /// No answer in time.
    #[error("no answer from the relay within {0:?}")]
    Timeout(Duration),
    /// A user name is not valid.
    #[error("invalid name {name:?}: {why}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        why: String,
    },
    /// The session refused.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The state file failed.
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<StateError> for SessionErrorOrState {
    fn from(e: StateError) -> Self {
        Self(SessionError::State(e))
    }
}

/// Lets session steps use `?` on both session and state errors inside a
/// transaction.
#[derive(Debug)]
struct SessionErrorOrState(SessionError);

impl From<SessionError> for SessionErrorOrState {
    fn from(e: SessionError) -> Self {
        Self(e)
    }
}

impl From<SessionErrorOrState> for ClientError {
    fn from(e: SessionErrorOrState) -> Self {
        match e.0 {
            SessionError::State(s) => ClientError::State(s),
            other => ClientError::Session(other),
        }
    }
}

/// Current Unix time in milliseconds.
#[must_use]
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn normalize(name: &str) -> Result<String, ClientError> {
    crate::wire::normalize_name(name).map_err(|e| ClientError::BadName {
        name: name.to_owned(),
        why: e.to_string(),
    })
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    hello: HelloInfo,
}

/// What [`Client::poll_ready`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// Entries handled.
    pub handled: usize,
    /// The socket may hold more ([`CLIENT_DRAIN_FRAMES`] frames were read):
    /// call again before waiting for it.
    pub more: bool,
}

/// What a stored receipt said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The message id.
    pub message_id: MessageId,
    /// The relay's sequence number.
    pub seq: u64,
    /// When the relay stored it.
    pub unix_ms: u64,
}

/// A connected (or reconnecting) client of one user.
pub struct Client<R: CryptoRng> {
    config: ClientConfig,
    unlocked: Unlocked,
    session: Session,
    rng: R,
    conn: Option<Conn>,
    pushes: VecDeque<Vec<u8>>,
    ping_nonce: u64,
    last_ping: Instant,
    /// Counts logins, so a caller watching the socket can tell a new
    /// connection from the one it registered (a descriptor number may be
    /// reused).
    conn_epoch: u64,
}

impl<R: CryptoRng> std::fmt::Debug for Client<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.config.user)
            .field("server", &self.config.server)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl<R: CryptoRng> Client<R> {
    /// Registers a new user: makes the identity, registers it with the
    /// relay, and creates the encrypted state file. An existing state file
    /// is never touched.
    ///
    /// # Errors
    /// [`StateError::AlreadyExists`], connection errors, the relay's
    /// refusal (name taken, rate limit).
    pub fn register(
        mut config: ClientConfig,
        passphrase: &[u8],
        mut rng: R,
    ) -> Result<Self, ClientError> {
        config.user = normalize(&config.user)?;
        let dir = StateDir::new(&config.state_root, &config.user)?;
        if dir.exists() {
            return Err(StateError::AlreadyExists {
                user: config.user.clone(),
                dir: dir.path().display().to_string(),
            }
            .into());
        }
        let mut conn = connect_once(&config)?;
        let hello = read_hello(&mut conn, &config, None)?;
        let identity = IdentityKeyPair::generate(hello.dh_group, &mut rng);
        let mut st = ClientState::new(&config.user, identity);
        let frame = register_frame(&mut st, &hello);
        let mut c = Conn {
            stream: conn,
            buf: Vec::new(),
            hello,
        };
        write_frame(&mut c.stream, &frame)?;
        let acked = await_authenticated(&mut c, config.io_timeout)?;
        st.acked = acked;
        let unlocked = dir.create(passphrase, config.kdf, &st, &mut rng)?;
        Ok(Self {
            session: Session::new(config.session.clone()),
            config,
            unlocked,
            rng,
            conn: Some(c),
            pushes: VecDeque::new(),
            ping_nonce: 0,
            last_ping: Instant::now(),
            conn_epoch: 1,
        })
    }

    /// Unlocks an existing user's state (no connection yet; the first
    /// request connects).
    ///
    /// # Errors
    /// The state errors (not registered, wrong passphrase, corrupted).
    pub fn open(mut config: ClientConfig, passphrase: &[u8], rng: R) -> Result<Self, ClientError> {
        config.user = normalize(&config.user)?;
        let dir = StateDir::new(&config.state_root, &config.user)?;
        let unlocked = dir.unlock(passphrase, config.kdf)?;
        Ok(Self {
            session: Session::new(config.session.clone()),
            config,
            unlocked,
            rng,
            conn: None,
            pushes: VecDeque::new(),
            ping_nonce: 0,
            last_ping: Instant::now(),
            conn_epoch: 0,
        })
    }

    /// My user name.
    #[must_use]
    pub fn user(&self) -> &str {
        &self.config.user
    }

    /// True while a connection is up.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// The connection's socket, to watch for readability (for example with
    /// a `mio::unix::SourceFd`), and the connection's number: it changes
    /// with every login, so a watcher knows when to register again. `None`
    /// while disconnected. The socket stays in blocking mode; read it only
    /// through [`Client::poll_ready`] and the other methods.
    #[must_use]
    pub fn connection_fd(&self) -> Option<(u64, RawFd)> {
        self.conn
            .as_ref()
            .map(|c| (self.conn_epoch, c.stream.as_raw_fd()))
    }

    /// When [`Client::poll_ready`] next pings the relay: a caller waiting
    /// for the socket wakes up by then.
    #[must_use]
    pub fn next_ping(&self) -> Instant {
        self.last_ping + CLIENT_PING_INTERVAL
    }

    /// Drops the connection (the next request reconnects).
    pub fn disconnect(&mut self) {
        self.conn = None;
        self.pushes.clear();
    }

    /// Reads the state (under the lock, without changing it).
    ///
    /// # Errors
    /// State errors.
    pub fn state<T>(&mut self, f: impl FnOnce(&ClientState) -> T) -> Result<T, ClientError> {
        let _lock = self.unlocked.lock()?;
        let st = self.unlocked.load()?;
        Ok(f(&st))
    }

    /// One locked load-modify-save with the session.
    fn step<T>(
        &mut self,
        f: impl FnOnce(&mut Session, &mut ClientState, &mut R) -> Result<T, SessionError>,
    ) -> Result<T, ClientError> {
        let Self {
            unlocked,
            session,
            rng,
            ..
        } = self;
        unlocked
            .transact(rng, |st, rng| -> Result<T, SessionErrorOrState> {
                Ok(f(session, st, rng)?)
            })
            .map_err(ClientError::from)
    }
}

impl<R: CryptoRng> Client<R> {
    // -----------------------------------------------------------------
    // Connection
    // -----------------------------------------------------------------

    /// Connects and logs in if not connected, retrying with exponential
    /// backoff ([`CLIENT_BACKOFF_MIN`] doubling to [`CLIENT_BACKOFF_MAX`])
    /// up to `connect_attempts` times (0: forever). After a login the relay
    /// resumes after the account's ack position.
    ///
    /// # Errors
    /// [`ClientError::Connect`] after the last attempt; login refusals
    /// (which are not retried).
    pub fn ensure_connected(&mut self) -> Result<(), ClientError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let mut backoff = CLIENT_BACKOFF_MIN;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.try_login() {
                Ok(()) => return Ok(()),
                Err(ClientError::Connect { server, source }) => {
                    if self.config.connect_attempts != 0 && attempt >= self.config.connect_attempts
                    {
                        return Err(ClientError::Connect { server, source });
                    }
                }
                Err(ClientError::Io(e)) => {
                    if self.config.connect_attempts != 0 && attempt >= self.config.connect_attempts
                    {
                        return Err(ClientError::Io(e));
                    }
                }
                Err(e) => return Err(e),
            }
            std::thread::sleep(backoff);
            backoff = next_backoff(backoff);
        }
    }

    fn try_login(&mut self) -> Result<(), ClientError> {
        let mut stream = connect_once(&self.config)?;
        let pinned = self.state(|st| st.relay_key)?;
        let hello = read_hello(&mut stream, &self.config, pinned)?;
        let frame = self.step(|_, st, _| Ok(login_frame(st, &hello)))?;
        let mut c = Conn {
            stream,
            buf: Vec::new(),
            hello,
        };
        write_frame(&mut c.stream, &frame)?;
        await_authenticated(&mut c, self.config.io_timeout)?;
        self.pushes.clear();
        self.conn = Some(c);
        self.conn_epoch += 1;
        Ok(())
    }

    fn send_raw(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        let conn = self
            .conn
            .as_mut()
            .ok_or(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "not connected",
            )))?;
        if let Err(e) = write_frame(&mut conn.stream, frame) {
            self.disconnect();
            return Err(e.into());
        }
        Ok(())
    }

    fn send_raw_or_reconnect(
        &mut self,
        frame: &[u8],
        retried: &mut bool,
    ) -> Result<(), ClientError> {
        match self.send_raw(frame) {
            Err(ClientError::Io(_)) if !*retried => {
                *retried = true;
                self.ensure_connected()?;
                self.send_raw(frame)
            }
            other => other,
        }
    }

    /// Reads one frame, waiting at most until `deadline`; `None` on
    /// timeout. A broken connection is dropped (and reported).
    fn read_one(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "not connected",
            )));
        };
        match read_frame(conn, deadline) {
            Ok(f) => Ok(f),
            Err(e) => {
                self.disconnect();
                Err(e)
            }
        }
    }

    /// Sends `frame` and reads until `is_answer` accepts a frame (returned)
    /// or an error frame refers to this request. Pushes read meanwhile are
    /// buffered for [`Client::pump`].
    fn call(
        &mut self,
        frame: &[u8],
        kind: FrameKind,
        reference: Option<[u8; 16]>,
        is_answer: impl Fn(&Frame<'_>) -> bool,
    ) -> Result<Vec<u8>, ClientError> {
        let mut retried = false;
        self.ensure_connected()?;
        self.send_raw_or_reconnect(frame, &mut retried)?;
        let mut deadline = Instant::now() + self.config.io_timeout;
        loop {
            let raw = match self.read_one(deadline) {
                Ok(Some(raw)) => raw,
                Ok(None) => return Err(ClientError::Timeout(self.config.io_timeout)),
                Err(ClientError::Io(_)) if !retried => {
                    // The connection broke (relay restart): log in again and
                    // repeat the request; sends are idempotent by message id.
                    retried = true;
                    self.ensure_connected()?;
                    self.send_raw(frame)?;
                    deadline = Instant::now() + self.config.io_timeout;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let f = Frame::decode(&raw)?;
            match &f {
                Frame::Deliver(_) | Frame::GapNotice(_) => {
                    self.pushes.push_back(raw);
                    continue;
                }
                Frame::Error(e)
                    if e.refers_to == kind as u8 && reference.is_none_or(|r| r == e.reference) =>
                {
                    return Err(ClientError::Refused {
                        code: e.code,
                        text: if e.text.is_empty() {
                            ErrorCode::from_u16(e.code)
                                .map_or("refused", ErrorCode::describe)
                                .to_owned()
                        } else {
                            e.text.to_owned()
                        },
                    });
                }
                _ if is_answer(&f) => return Ok(raw),
                Frame::Error(e) => {
                    tracing::debug!("relay error {} for another request: {}", e.code, e.text);
                }
                _ => {} // receipts of fire-and-forget sends, pongs
            }
        }
    }

    /// Sends a frame whose answer is a stored receipt.
    fn call_send(
        &mut self,
        frame: &[u8],
        kind: FrameKind,
        id: MessageId,
    ) -> Result<Receipt, ClientError> {
        let raw = self.call(
            frame,
            kind,
            Some(id),
            |f| matches!(f, Frame::StoredReceipt { message_id, .. } if *message_id == id),
        )?;
        match Frame::decode(&raw)? {
            Frame::StoredReceipt {
                message_id,
                seq,
                unix_ms,
            } => Ok(Receipt {
                message_id,
                seq,
                unix_ms,
            }),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    // -----------------------------------------------------------------
    // Pushes
    // -----------------------------------------------------------------

    /// Reads pushes for up to `wait` (returning early once nothing arrived
    /// for `quiet`), then handles everything buffered. Returns the number
    /// of entries handled.
    ///
    /// # Errors
    /// Connection and state errors.
    pub fn receive(&mut self, wait: Duration, quiet: Duration) -> Result<usize, ClientError> {
        self.ensure_connected()?;
        // A ping makes the relay flush: its pong and the backlog follow.
        self.ping_nonce += 1;
        let nonce = self.ping_nonce;
        let ping = Frame::Ping { nonce }.to_vec();
        let mut retried = false;
        self.send_raw_or_reconnect(&ping, &mut retried)?;
        let end = Instant::now() + wait;
        let mut last = Instant::now();
        let mut handled = 0;
        // Read until `wait` is over and nothing came for `quiet`.
        loop {
            if self.conn.is_none() {
                if retried {
                    break;
                }
                retried = true;
                self.ensure_connected()?;
                self.send_raw(&ping)?;
            }
            let raw = match self.read_one(end.max(last + quiet)) {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(ClientError::Io(_)) if !retried => {
                    retried = true;
                    self.ensure_connected()?;
                    self.send_raw(&ping)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            last = Instant::now();
            if matches!(
                frame_kind_of(&raw),
                Some(FrameKind::Deliver | FrameKind::GapNotice)
            ) {
                self.pushes.push_back(raw);
                handled += self.pump()?;
            }
        }
        handled += self.pump()?;
        Ok(handled)
    }

    /// Waits up to `timeout` for pushes (no ping), handles what arrived,
    /// and pings the relay when the connection was quiet for
    /// [`CLIENT_PING_INTERVAL`] (the relay closes silent connections).
    /// Returns the number of entries handled. For interactive use: call it
    /// in a loop between reading user input.
    ///
    /// # Errors
    /// Connection and state errors (the caller reconnects with backoff).
    pub fn poll(&mut self, timeout: Duration) -> Result<usize, ClientError> {
        self.ensure_connected()?;
        if self.last_ping.elapsed() >= CLIENT_PING_INTERVAL {
            self.ping_nonce += 1;
            let nonce = self.ping_nonce;
            self.send_raw(&Frame::Ping { nonce }.to_vec())?;
            self.last_ping = Instant::now();
        }
        let deadline = Instant::now() + timeout;
        let mut handled = 0;
        while let Some(raw) = self.read_one(deadline)? {
            if matches!(
                frame_kind_of(&raw),
                Some(FrameKind::Deliver | FrameKind::GapNotice)
            ) {
                self.pushes.push_back(raw);
                handled += self.pump()?;
            }
        }
        Ok(handled)
    }

    /// Handles what the relay has sent so far without waiting: connects
    /// first if disconnected (one [`Client::ensure_connected`]), pings if
    /// [`CLIENT_PING_INTERVAL`] has passed, reads the socket without
    /// blocking until it has nothing more (at most [`CLIENT_DRAIN_FRAMES`]
    /// frames), then handles the pushes buffered so far, including those
    /// that arrived during earlier requests. For an event loop that wakes
    /// on the socket of [`Client::connection_fd`]: after this call the
    /// socket has been read until `WouldBlock` unless [`Ready::more`] says
    /// otherwise.
    ///
    /// # Errors
    /// Connection and state errors (the caller reconnects with backoff).
    pub fn poll_ready(&mut self) -> Result<Ready, ClientError> {
        self.ensure_connected()?;
        if self.last_ping.elapsed() >= CLIENT_PING_INTERVAL {
            self.ping_nonce += 1;
            let nonce = self.ping_nonce;
            self.send_raw(&Frame::Ping { nonce }.to_vec())?;
            self.last_ping = Instant::now();
        }
        let more = self.drain_nonblocking()?;
        let handled = if self.pushes.is_empty() {
            0
        } else {
            self.pump()?
        };
        Ok(Ready { handled, more })
    }

    /// Buffers the pushes that can be read without blocking (at most
    /// [`CLIENT_DRAIN_FRAMES`] frames); true if the limit stopped it.
    fn drain_nonblocking(&mut self) -> Result<bool, ClientError> {
        let not_connected = || {
            ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "not connected",
            ))
        };
        let conn = self.conn.as_mut().ok_or_else(not_connected)?;
        conn.stream.set_nonblocking(true)?;
        // Non-blocking, a read with nothing there is `WouldBlock`: `None`.
        let deadline = Instant::now() + self.config.io_timeout;
        let mut more = true;
        let mut result = Ok(());
        for _ in 0..CLIENT_DRAIN_FRAMES {
            match self.read_one(deadline) {
                Ok(Some(raw)) => {
                    if matches!(
                        frame_kind_of(&raw),
                        Some(FrameKind::Deliver | FrameKind::GapNotice)
                    ) {
                        self.pushes.push_back(raw);
                    }
                }
                Ok(None) => {
                    more = false;
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Requests and acks write with blocking calls.
        if let Some(conn) = self.conn.as_mut()
            && let Err(e) = conn.stream.set_nonblocking(false)
        {
            self.disconnect();
            return Err(e.into());
        }
        result.map(|()| more)
    }

    /// Handles every buffered push in order, each in its own transaction,
    /// then acks the highest handled sequence number; afterwards sends the
    /// distributions I owe. Returns the number of entries handled.
    ///
    /// # Errors
    /// Connection and state errors.
    pub fn pump(&mut self) -> Result<usize, ClientError> {
        let mut handled = 0;
        let mut ack = None;
        while let Some(raw) = self.pushes.pop_front() {
            let seq = self.handle_push(&raw)?;
            if let Some(seq) = seq {
                ack = Some(seq);
                handled += 1;
            }
        }
        self.step(|session, st, rng| {
            session.tick(st, unix_ms(), rng);
            Ok(())
        })?;
        if let Some(up_to) = ack {
            // Best effort: the position is saved; if the connection broke,
            // the relay re-sends, we skip what we handled and ack again.
            let _ = self.send_raw(&Frame::Ack { up_to }.to_vec());
        }
        self.flush_owed()?;
        Ok(handled)
    }

    /// Handles one push; returns its sequence number once it is handled
    /// (and saved), `None` for a frame that is not a push.
    fn handle_push(&mut self, raw: &[u8]) -> Result<Option<u64>, ClientError> {
        let frame = Frame::decode(raw)?;
        let seq = match &frame {
            Frame::Deliver(d) => d.seq,
            Frame::GapNotice(g) => g.seq,
            _ => return Ok(None),
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let result = self.step(|session, st, rng| {
                if seq <= st.acked {
                    return Ok(Vec::new()); // handled by another command already
                }
                let out = match &frame {
                    Frame::Deliver(d) => session.handle_deliver(st, d, unix_ms(), rng)?,
                    Frame::GapNotice(g) => {
                        session.handle_gap(st, g, unix_ms(), rng);
                        Vec::new()
                    }
                    _ => Vec::new(),
                };
                st.acked = seq;
                Ok(out)
            });
            match result {
                Ok(frames) => {
                    for f in frames {
                        // Key requests and re-sent keys: best effort (a
                        // broken connection is re-opened by the next call).
                        let _ = self.send_raw(&f);
                    }
                    return Ok(Some(seq));
                }
                Err(ClientError::Session(SessionError::Need(need))) if tries < 8 => {
                    self.fulfil(need)?;
                }
                Err(ClientError::Session(e)) => {
                    // The entry cannot be handled (for example an identity
                    // that changed): say so, and move past it so the queue
                    // never stalls.
                    let text = format!("warning: an entry from the relay was not handled: {e}");
                    self.step(|_, st, rng| {
                        st.acked = st.acked.max(seq);
                        let mut id = [0u8; 16];
                        rng.fill_bytes(&mut id);
                        st.push_inbox(InboxEntry {
                            group_id: [0; 16],
                            group_name: String::new(),
                            sender: String::new(),
                            sent_at_ms: unix_ms(),
                            text,
                            id,
                            notice: true,
                        });
                        Ok(())
                    })?;
                    return Ok(Some(seq));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Fetches what the session needs.
    fn fulfil(&mut self, need: Need) -> Result<(), ClientError> {
        match need {
            Need::Identities(names) => self.fetch_identities(&names),
            Need::Commits {
                group_id,
                from_epoch,
            } => {
                let log = self.fetch_commits(group_id, from_epoch)?;
                for _ in 0..8 {
                    let r = self.step(|session, st, rng| {
                        if from_epoch == 0 {
                            session.join_from_log(st, &group_id, &log, unix_ms(), rng)
                        } else {
                            session.catch_up(st, &group_id, &log, unix_ms(), rng)
                        }
                    });
                    match r {
                        Err(ClientError::Session(SessionError::Need(Need::Identities(n)))) => {
                            self.fetch_identities(&n)?;
                        }
                        other => return other,
                    }
                }
                Ok(())
            }
        }
    }

    /// Fetches and pins identities.
    ///
    /// # Errors
    /// [`SessionError::NoSuchUser`], connection errors.
    pub fn fetch_identities(&mut self, names: &[String]) -> Result<(), ClientError> {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let raw = self.call(
            &Frame::FetchIdentities(names).to_vec(),
            FrameKind::FetchIdentities,
            None,
            |f| matches!(f, Frame::Identities(_)),
        )?;
        let Frame::Identities(entries) = Frame::decode(&raw)? else {
            return Err(ClientError::Unexpected(FrameKind::Identities));
        };
        self.step(|session, st, _| session.pin_identities(st, &entries))?;
        Ok(())
    }

    fn fetch_commits(&mut self, group_id: GroupId, from: u64) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut log = Vec::new();
        let mut from_epoch = from;
        loop {
            let raw = self.call(
                &Frame::FetchCommits {
                    group_id,
                    from_epoch,
                }
                .to_vec(),
                FrameKind::FetchCommits,
                None,
                |f| matches!(f, Frame::Commits { group_id: g, .. } if *g == group_id),
            )?;
            let Frame::Commits { more, commits, .. } = Frame::decode(&raw)? else {
                return Err(ClientError::Unexpected(FrameKind::Commits));
            };
            let n = commits.len() as u64;
            log.extend(commits.into_iter().map(<[u8]>::to_vec));
            if !more || n == 0 {
                return Ok(log);
            }
            from_epoch += n;
        }
    }

    /// Sends every distribution I owe, in every group, and waits for the
    /// receipts.
    ///
    /// # Errors
    /// Connection and state errors.
    pub fn flush_owed(&mut self) -> Result<(), ClientError> {
        let groups: Vec<GroupId> = self.state(|st| {
            st.groups
                .iter()
                .filter(|(_, r)| !r.owe_key_to.is_empty() && r.frozen.is_none())
                .map(|(g, _)| *g)
                .collect()
        })?;
        for gid in groups {
            self.flush_owed_in(&gid)?;
        }
        Ok(())
    }

    fn flush_owed_in(&mut self, gid: &GroupId) -> Result<(), ClientError> {
        let mut tries = 0;
        let frames = loop {
            tries += 1;
            match self.step(|session, st, rng| session.owed_distributions(st, gid, rng)) {
                Ok((frames, _blocked)) => break frames,
                Err(ClientError::Session(SessionError::Need(need))) if tries < 4 => {
                    self.fulfil(need)?
                }
                Err(e) => return Err(e),
            }
        };
        let bar = progress_bar(frames.len());
        for (peer, frame) in frames {
            let id = direct_message_id(&frame);
            match self.call_send(&frame, FrameKind::DirectSend, id) {
                Ok(_) => {
                    self.step(|session, st, _| {
                        session.distribution_delivered(st, gid, &peer);
                        Ok(())
                    })?;
                }
                Err(ClientError::Refused { code, .. })
                    if code == ErrorCode::NoSharedGroup.to_u16()
                        || code == ErrorCode::UnknownUser.to_u16() =>
                {
                    // The peer left meanwhile: its commit will follow.
                    self.step(|session, st, _| {
                        session.distribution_delivered(st, gid, &peer);
                        Ok(())
                    })?;
                }
                Err(e) => return Err(e),
            }
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(())
    }

    // -----------------------------------------------------------------
    // Commands
    // -----------------------------------------------------------------

    /// Creates a group named `name` with `members` (besides me), sends my
    /// key to each, and returns its id.
    ///
    /// # Errors
    /// Unknown users, changed identities, refusals, connection errors.
    pub fn create_group(&mut self, name: &str, members: &[String]) -> Result<GroupId, ClientError> {
        let members = members
            .iter()
            .map(|m| normalize(m))
            .collect::<Result<Vec<_>, _>>()?;
        self.ensure_connected()?;
        self.pump()?;
        if !members.is_empty() {
            self.fetch_identities(&members)?;
        }
        let genesis =
            self.step(|session, st, rng| session.create_group(st, name, &members, rng))?;
        let gid = genesis.group_id;
        let bytes = genesis.encode();
        self.call(
            &Frame::CreateGroup { genesis: &bytes }.to_vec(),
            FrameKind::CreateGroup,
            None,
            |f| matches!(f, Frame::CommitAccepted { group_id, .. } if *group_id == gid),
        )?;
        self.step(|session, st, rng| session.group_created(st, &genesis, rng))?;
        self.pump()?;
        Ok(gid)
    }

    /// Applies a membership change to the group named `group`, retrying
    /// once against a newer epoch if another commit won the race.
    ///
    /// # Errors
    /// Refusals, connection errors, session errors.
    pub fn change(&mut self, group: &str, change: Change) -> Result<(), ClientError> {
        let change = match change {
            Change::Add(n) => Change::Add(normalize(&n)?),
            Change::Remove(n) => Change::Remove(normalize(&n)?),
            Change::TransferAdmin(n) => Change::TransferAdmin(normalize(&n)?),
            Change::Leave => Change::Leave,
        };
        self.ensure_connected()?;
        self.pump()?;
        let gid = self.state(|st| super::session::resolve_group(st, group))??;
        if let Change::Add(n) = &change {
            self.fetch_identities(std::slice::from_ref(n))?;
        }
        let mut tries = 0;
        loop {
            tries += 1;
            let commit: Commit =
                self.step(|session, st, _| session.propose(st, &gid, change.clone()))?;
            let bytes = commit.encode();
            let r = self.call(
                &Frame::Commit { commit: &bytes }.to_vec(),
                FrameKind::Commit,
                None,
                |f| matches!(f, Frame::CommitAccepted { group_id, .. } if *group_id == gid),
            );
            match r {
                Ok(_) => {
                    let frames = self.step(|session, st, rng| {
                        session.commit_accepted(st, &commit, unix_ms(), rng)
                    })?;
                    for f in frames {
                        let id = direct_message_id(&f);
                        self.call_send(&f, FrameKind::DirectSend, id)?;
                    }
                    self.pump()?;
                    return Ok(());
                }
                Err(ClientError::Refused { code, .. })
                    if code == ErrorCode::EpochConflict.to_u16() && tries < 3 =>
                {
                    self.catch_up_group(&gid)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn catch_up_group(&mut self, gid: &GroupId) -> Result<(), ClientError> {
        let epoch = self.state(|st| {
            st.groups
                .get(gid)
                .and_then(|r| crate::group::GroupSession::from_state_bytes(&r.crypto).ok())
                .map(|g| g.state().epoch())
        })?;
        if let Some(epoch) = epoch {
            self.fulfil(Need::Commits {
                group_id: *gid,
                from_epoch: epoch + 1,
            })?;
        }
        self.pump()?;
        Ok(())
    }

    /// Sends `text` to the group named `group`; returns once the relay's
    /// stored receipt arrived. My key reaches every member first.
    ///
    /// # Errors
    /// [`SessionError::EmptyMessage`], refusals, connection errors.
    pub fn send_text(&mut self, group: &str, text: &str) -> Result<Receipt, ClientError> {
        if text.trim().is_empty() {
            return Err(SessionError::EmptyMessage.into());
        }
        self.ensure_connected()?;
        self.pump()?;
        let gid = self.state(|st| super::session::resolve_group(st, group))??;
        let mut id = [0u8; 16];
        self.rng.fill_bytes(&mut id);
        self.send_text_as(&gid, text, id)
    }

    fn send_text_as(
        &mut self,
        gid: &GroupId,
        text: &str,
        id: MessageId,
    ) -> Result<Receipt, ClientError> {
        let mut tries = 0;
        loop {
            tries += 1;
            self.flush_owed_in(gid)?;
            let frame =
                self.step(|session, st, _| session.seal_text(st, gid, text, id, unix_ms()))?;
            match self.call_send(&frame, FrameKind::GroupSend, id) {
                Ok(r) => return Ok(r),
                Err(ClientError::Refused { code, .. })
                    if code == ErrorCode::StaleEpoch.to_u16() && tries < 4 =>
                {
                    // A commit raced the send: apply it, re-key if needed,
                    // and re-seal under the new epoch (same message id).
                    self.catch_up_group(gid)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Queues `text` for the group named `group` in the encrypted state
    /// (the outbox), to be sealed and sent by [`Client::flush_outbox`] once
    /// the relay is reachable and my key is out: text typed while offline
    /// is never lost and never sent in plaintext.
    ///
    /// # Errors
    /// [`SessionError::EmptyMessage`], unknown group, state errors.
    pub fn queue_text(&mut self, group: &str, text: &str) -> Result<(), ClientError> {
        if text.trim().is_empty() {
            return Err(SessionError::EmptyMessage.into());
        }
        self.step(|_, st, rng| {
            let group_id = super::session::resolve_group(st, group)?;
            let mut message_id = [0u8; 16];
            rng.fill_bytes(&mut message_id);
            st.outbox.push(super::state::QueuedText {
                group_id,
                message_id,
                text: text.to_owned(),
            });
            Ok(())
        })
    }

    /// Sends the outbox in order; returns (group name, text) of each line
    /// sent. Stops at the first connection failure (the rest stays
    /// queued); a line that can never be sent (group closed, say) is
    /// dropped and reported as an `Err` entry.
    ///
    /// # Errors
    /// Connection errors (nothing lost: the unsent lines stay queued).
    #[allow(clippy::type_complexity)] // (group, text) per line, or why it was dropped
    pub fn flush_outbox(&mut self) -> Result<Vec<Result<(String, String), String>>, ClientError> {
        let mut done = Vec::new();
        loop {
            let next = self.state(|st| {
                st.outbox.first().map(|q| {
                    let name = st
                        .groups
                        .get(&q.group_id)
                        .and_then(|r| crate::group::GroupSession::from_state_bytes(&r.crypto).ok())
                        .map(|g| g.state().display_name().to_owned())
                        .unwrap_or_default();
                    (q.clone(), name)
                })
            })?;
            let Some((q, name)) = next else {
                return Ok(done);
            };
            self.ensure_connected()?;
            let r = self.send_text_as(&q.group_id, &q.text, q.message_id);
            let outcome = match r {
                Ok(_) => Ok((name, q.text.clone())),
                Err(
                    e
                    @ (ClientError::Io(_) | ClientError::Connect { .. } | ClientError::Timeout(_)),
                ) => {
                    return Err(e);
                }
                Err(e) => Err(format!("not sent to {name}: {:?}: {e}", q.text)),
            };
            self.step(|_, st, _| {
                st.outbox.retain(|x| x.message_id != q.message_id);
                Ok(())
            })?;
            done.push(outcome);
        }
    }

    /// Takes the inbox (the entries are removed from the state).
    ///
    /// # Errors
    /// State errors.
    pub fn take_inbox(&mut self) -> Result<(Vec<InboxEntry>, u64), ClientError> {
        self.step(|_, st, _| {
            let dropped = std::mem::take(&mut st.inbox_dropped);
            Ok((st.inbox.drain(..).collect(), dropped))
        })
    }

    /// Accepts `name`'s changed identity.
    ///
    /// # Errors
    /// State errors; false if nothing was pending.
    pub fn trust(&mut self, name: &str) -> Result<bool, ClientError> {
        let name = normalize(name)?;
        self.step(|_, st, _| Ok(super::session::trust(st, &name)))
    }

    /// The safety number with `name` (fetching its identity on first use).
    ///
    /// # Errors
    /// Unknown user, connection errors.
    pub fn fingerprint(&mut self, name: &str) -> Result<(String, Option<String>), ClientError> {
        let name = normalize(name)?;
        let known = self.state(|st| st.contacts.contains_key(&name))?;
        if !known {
            self.fetch_identities(std::slice::from_ref(&name))?;
        } else if self.ensure_connected().is_ok() {
            // Refresh: a changed identity shows up as pending.
            let _ = self.fetch_identities(std::slice::from_ref(&name));
        }
        self.state(|st| {
            (
                super::session::safety_number_with(st, &name, false).unwrap_or_default(),
                st.contacts
                    .get(&name)
                    .and_then(|c| c.changed_to.as_ref())
                    .and_then(|_| super::session::safety_number_with(st, &name, true)),
            )
        })
    }
}

/// The reconnect delay after `d`: doubled, at most [`CLIENT_BACKOFF_MAX`]
/// (start from [`CLIENT_BACKOFF_MIN`]).
#[must_use]
pub fn next_backoff(d: Duration) -> Duration {
    (d * 2).clamp(CLIENT_BACKOFF_MIN, CLIENT_BACKOFF_MAX)
}

fn progress_bar(n: usize) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if n < crate::limits::CLIENT_PROGRESS_MIN_PEERS || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_message("sending keys");
    Some(bar)
}

/// The message id of an encoded direct-send frame.
fn direct_message_id(frame: &[u8]) -> MessageId {
    match frame
        .get(crate::wire::LENGTH_PREFIX_LEN..)
        .map(Frame::decode)
    {
        Some(Ok(Frame::DirectSend { message_id, .. })) => message_id,
        _ => [0; 16],
    }
}

fn frame_kind_of(raw: &[u8]) -> Option<FrameKind> {
    crate::wire::frame_kind(raw).ok()
}

fn connect_once(config: &ClientConfig) -> Result<TcpStream, ClientError> {
    let err = |source| ClientError::Connect {
        server: config.server.clone(),
        source,
    };
    let addrs: Vec<SocketAddr> = config.server.to_socket_addrs().map_err(err)?.collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, config.io_timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(err(last))
}

fn read_hello(
    stream: &mut TcpStream,
    config: &ClientConfig,
    pinned: Option<[u8; 32]>,
) -> Result<HelloInfo, ClientError> {
    let mut c = Conn {
        stream: stream.try_clone()?,
        buf: Vec::new(),
        hello: HelloInfo {
            relay_key: [0; 32],
            dh_group: crate::crypto::dh::DhGroup::Ffdhe2048,
            challenge: [0; 32],
        },
    };
    let deadline = Instant::now() + config.io_timeout;
    let raw = read_frame(&mut c, deadline)?.ok_or(ClientError::Timeout(config.io_timeout))?;
    match Frame::decode(&raw)? {
        Frame::Hello(h) => Ok(verify_hello(&h, pinned)?),
        other => Err(ClientError::Unexpected(other.kind())),
    }
}

fn await_authenticated(c: &mut Conn, timeout: Duration) -> Result<u64, ClientError> {
    let deadline = Instant::now() + timeout;
    let raw = read_frame(c, deadline)?.ok_or(ClientError::Timeout(timeout))?;
    match Frame::decode(&raw)? {
        Frame::Authenticated { acked, .. } => Ok(acked),
        Frame::Error(e) => Err(ClientError::Refused {
            code: e.code,
            text: e.text.to_owned(),
        }),
        other => Err(ClientError::Unexpected(other.kind())),
    }
}

fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> std::io::Result<()> {
    stream.write_all(frame)
}

/// Reads one whole frame (version, kind, body) or `None` at `deadline`.
fn read_frame(c: &mut Conn, deadline: Instant) -> Result<Option<Vec<u8>>, ClientError> {
    let _ = &c.hello;
    loop {
        if let Some((frame, used)) = split_frame(&c.buf, MAX_FRAME_LEN)? {
            let out = frame.to_vec();
            c.buf.drain(..used);
            return Ok(Some(out));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        c.stream
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))?;
        let mut chunk = [0u8; 16 * 1024];
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                return Err(ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the relay closed the connection",
                )));
            }
            Ok(n) => c.buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{CLIENT_PROGRESS_MIN_PEERS, CLIENT_RECV_QUIET, RELAY_IDLE_TIMEOUT};

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_maximum() {
        let mut d = CLIENT_BACKOFF_MIN;
        let mut seen = vec![d];
        for _ in 0..20 {
            d = next_backoff(d);
            seen.push(d);
        }
        assert_eq!(seen[1], CLIENT_BACKOFF_MIN * 2);
        assert!(seen.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*seen.last().unwrap(), CLIENT_BACKOFF_MAX);
        assert_eq!(next_backoff(Duration::ZERO), CLIENT_BACKOFF_MIN);
    }

    #[test]
    fn timing_limits_fit_together() {
        // Pings keep an idle interactive connection open.
        assert!(CLIENT_PING_INTERVAL < RELAY_IDLE_TIMEOUT);
        // "The backlog is drained" is short next to "the relay does not
        // answer".
        assert!(CLIENT_RECV_QUIET < CLIENT_IO_TIMEOUT);
        assert!(CLIENT_BACKOFF_MIN < CLIENT_BACKOFF_MAX);
    }

    #[test]
    fn small_setups_show_no_progress_bar() {
        assert!(progress_bar(CLIENT_PROGRESS_MIN_PEERS - 1).is_none());
        assert!(progress_bar(0).is_none());
    }

    #[test]
    fn poll_ready_reads_at_most_the_drain_limit_and_leaves_the_socket_blocking() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let tmp = tempfile::tempdir().unwrap();
        let kdf = KdfCost::insecure_for_tests(1);
        let identity = IdentityKeyPair::generate(crate::crypto::dh::DhGroup::Ffdhe2048, &mut rng);
        StateDir::new(tmp.path(), "al")
            .unwrap()
            .create(b"pw", kdf, &ClientState::new("al", identity), &mut rng)
            .unwrap();
        let mut cfg = ClientConfig::new("127.0.0.1:1", "al", tmp.path().to_path_buf());
        cfg.kdf = kdf;
        let mut client = Client::open(cfg, b"pw", rng).unwrap();

        // A fake relay that has sent more frames than one call reads.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut relay, _) = l.accept().unwrap();
        let mut bytes = Vec::new();
        for nonce in 0..(CLIENT_DRAIN_FRAMES as u64 + 76) {
            bytes.extend_from_slice(&Frame::Pong { nonce }.to_vec());
        }
        relay.write_all(&bytes).unwrap();
        for _ in 0..10_000 {
            if rustix::io::ioctl_fionread(&stream).unwrap() == bytes.len() as u64 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        client.conn = Some(Conn {
            stream,
            buf: Vec::new(),
            hello: HelloInfo {
                relay_key: [0; 32],
                dh_group: crate::crypto::dh::DhGroup::Ffdhe2048,
                challenge: [0; 32],
            },
        });
        let blocking = |c: &Client<_>| {
            let s = &c.conn.as_ref().unwrap().stream;
            !rustix::fs::fcntl_getfl(s)
                .unwrap()
                .contains(rustix::fs::OFlags::NONBLOCK)
        };
        assert_eq!(
            client.poll_ready().unwrap(),
            Ready {
                handled: 0,
                more: true
            }
        );
        assert!(blocking(&client));
        assert_eq!(
            client.poll_ready().unwrap(),
            Ready {
                handled: 0,
                more: false
            }
        );
        assert!(blocking(&client));
        assert!(client.conn.as_ref().unwrap().buf.is_empty());
        // A closed connection is an error (once the FIN is in), and the
        // client drops it.
        drop(relay);
        let mut closed = None;
        for _ in 0..10_000 {
            if let Err(e) = client.poll_ready() {
                closed = Some(e);
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(matches!(closed, Some(ClientError::Io(_))), "{closed:?}");
        assert!(!client.is_connected());
    }

    #[test]
    fn a_one_shot_command_gives_up_after_its_attempts() {
        // A port with nothing listening: refused at once, so the attempts
        // cost only the backoff sleeps.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = ClientConfig::new(&addr, "al", tmp.path().to_path_buf());
        cfg.kdf = KdfCost::insecure_for_tests(1);
        assert_eq!(cfg.connect_attempts, CLIENT_CONNECT_ATTEMPTS);
        let err = Client::register(cfg, b"pw", rand::rng()).unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("cannot reach the relay"));
    }
}
