//! One client connection as the event loop sees it: the socket, a read
//! buffer for frames split across reads, an output buffer flushed with one
//! write per pass, a frames-per-second bucket, and where it is in its life.
//!
//! Both buffers are empty `Vec`s (no heap allocation) while there is nothing
//! in them: reads land in the loop's shared buffer first and only the tail
//! of a split frame is kept here; output is pulled from the core just before
//! a write and the buffer is freed once the socket took all of it. An idle
//! logged-in connection is this struct in the slab plus the core's session.

use std::time::Instant;

use mio::Token;
use mio::net::TcpStream;

use crate::wire::{FrameKind, LENGTH_PREFIX_LEN};

/// A connection's id: the slab key and a generation, packed into the mio
/// token and into the core's `ConnId`. The generation makes a token of a
/// closed connection useless once its slab key is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    /// The slab key.
    pub slot: usize,
    /// Nonzero generation, distinct for each connection that used `slot`
    /// (wraps after 2^32 accepts).
    pub generation: u32,
}

/// Tokens below this are the loop's own (listener, waker, signals, metrics).
pub const FIRST_CONN_TOKEN: usize = 16;
/// Tokens with this bit set are metrics clients (their own small slab).
pub const METRICS_TOKEN_BIT: usize = 1 << 62;

impl ConnKey {
    /// The mio token: `generation << 32 | (slot + FIRST_CONN_TOKEN)`.
    #[must_use]
    pub fn token(self) -> Token {
        Token(
            (usize::try_from(self.generation).unwrap_or(0) << 32) | (self.slot + FIRST_CONN_TOKEN),
        )
    }

    /// The inverse of [`ConnKey::token`]; `None` for the loop's own tokens.
    #[must_use]
    pub fn from_token(token: Token) -> Option<Self> {
        let low = token.0 & 0xffff_ffff;
        let generation = u32::try_from((token.0 >> 32) & 0xffff_ffff).ok()?;
        if token.0 & METRICS_TOKEN_BIT != 0 || low < FIRST_CONN_TOKEN || generation == 0 {
            return None;
        }
        Some(Self {
            slot: low - FIRST_CONN_TOKEN,
            generation,
        })
    }

    /// The number the core knows this connection by.
    #[must_use]
    pub fn as_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | self.slot as u64
    }

    /// The inverse of [`ConnKey::as_u64`].
    #[must_use]
    pub fn from_u64(v: u64) -> Self {
        Self {
            slot: usize::try_from(v & 0xffff_ffff).unwrap_or(usize::MAX),
            generation: u32::try_from(v >> 32).unwrap_or(0),
        }
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading and writing.
    Open,
    /// The core (or the loop) asked for a close: write what is pending,
    /// then shut down the write side.
    Closing,
    /// Write side shut down; reading and discarding until the peer closes
    /// (so its last frames are not destroyed by a reset) or the linger ends.
    Draining,
    /// Gone: deregistered and removed at the end of the pass.
    Dead,
}

/// Watches the frames written to a connection that has not logged in yet,
/// to see the `Authenticated` frame go out (the handshake timeout stops
/// then). Works across writes cut in the middle of a frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthSniffer {
    /// Bytes of the current frame still to skip.
    skip: usize,
    /// Length prefix bytes and version/kind seen of the next frame.
    head: [u8; LENGTH_PREFIX_LEN + 2],
    head_len: u8,
}

impl AuthSniffer {
    /// Feeds bytes written to the socket buffer; true once an
    /// `Authenticated` frame went by.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = bytes.get(n..).unwrap_or_default();
                continue;
            }
            let have = usize::from(self.head_len);
            let want = self.head.len() - have;
            let n = want.min(bytes.len());
            if let (Some(dst), Some(src)) = (self.head.get_mut(have..have + n), bytes.get(..n)) {
                dst.copy_from_slice(src);
            }
            self.head_len += u8::try_from(n).unwrap_or(0);
            bytes = bytes.get(n..).unwrap_or_default();
            if usize::from(self.head_len) == self.head.len() {
                let [a, b, c, d, _version, kind] = self.head;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                if kind == FrameKind::Authenticated as u8 {
                    return true;
                }
                self.skip = len.saturating_sub(2);
                self.head_len = 0;
            }
        }
        false
    }
}

/// A token bucket: `per_sec` tokens a second, at most `burst` held. Each
/// connection's frames per second (burst = rate) and the loop's
/// relay-wide accept rate (burst [`crate::limits::RELAY_ACCEPT_BURST`]).
#[derive(Debug, Clone, Copy)]
pub struct RateBucket {
    tokens: u32,
    last: Instant,
}

impl RateBucket {
    /// A full bucket.
    #[must_use]
    pub fn new(burst: u32, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    /// Tokens available now, after refilling for the time since the last
    /// token came (fractions carry over: `last` moves only with a token).
    pub fn available(&mut self, per_sec: u32, burst: u32, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.last);
        let add = elapsed.as_micros().saturating_mul(u128::from(per_sec)) / 1_000_000;
        if add > 0 {
            let add = u32::try_from(add).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(add).min(burst);
            self.last = now;
        }
        self.tokens
    }

    /// Spends `n` tokens (at most what [`RateBucket::available`] said).
    pub fn spend(&mut self, n: u32) {
        self.tokens = self.tokens.saturating_sub(n);
    }
}

/// One relay client connection.
pub struct Conn {
    /// The socket (non-blocking, `TCP_NODELAY`).
    pub stream: TcpStream,
    /// Its id.
    pub key: ConnKey,
    /// Unconsumed input: the start of a frame whose end has not arrived.
    /// Empty (no allocation) between frames.
    pub inbuf: Vec<u8>,
    /// Output not yet taken by the socket, from `out_pos`. Empty (no
    /// allocation) when drained.
    pub out: Vec<u8>,
    /// How much of `out` the socket took.
    pub out_pos: usize,
    /// Registered for write readiness (only while output waits).
    pub write_interest: bool,
    /// Already in this pass's flush list.
    pub flush_queued: bool,
    /// In the loop's bulk queue (see `RelayCore::poll_ready_bulk`).
    pub bulk_queued: bool,
    /// Already in the list of connections to read again next pass.
    pub read_queued: bool,
    /// The peer's FIN or a socket error was reported: read until the
    /// 0-byte read or the error, never stop at a short read.
    pub hup: bool,
    /// Life phase.
    pub phase: Phase,
    /// Logged in (the handshake timeout no longer applies).
    pub authenticated: bool,
    /// Watches output for the `Authenticated` frame until logged in.
    pub sniffer: AuthSniffer,
    /// Frames-per-second limit.
    pub bucket: RateBucket,
    /// When the first byte of the partial frame at the head of `inbuf`
    /// arrived (`None` while `inbuf` is empty): the frame must be whole by
    /// this plus `RELAY_FRAME_TIMEOUT`.
    pub partial_since: Option<Instant>,
    /// A frame deadline for this connection is in the loop's heap.
    pub deadline_queued: bool,
    /// Unsent output counted in the loop's relay-wide total
    /// (`RELAY_MAX_QUEUED_OUTPUT`) for this connection.
    pub counted: usize,
}

impl Conn {
    /// Bytes waiting for the socket.
    #[must_use]
    pub fn pending_out(&self) -> usize {
        self.out.len().saturating_sub(self.out_pos)
    }

    /// Frees the output buffer once the socket took all of it.
    pub fn release_drained_output(&mut self) {
        if self.out_pos >= self.out.len() {
            self.out = Vec::new();
            self.out_pos = 0;
        }
    }

    /// Moves unsent output to the front so more can be appended.
    pub fn compact_output(&mut self) {
        if self.out_pos > 0 {
            self.out.drain(..self.out_pos.min(self.out.len()));
            self.out_pos = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Frame;

    #[test]
    fn token_round_trip_and_generation_mismatch() {
        let k = ConnKey {
            slot: 5,
            generation: 9,
        };
        assert_eq!(ConnKey::from_token(k.token()), Some(k));
        assert_eq!(ConnKey::from_u64(k.as_u64()), k);
        let reused = ConnKey {
            slot: 5,
            generation: 10,
        };
        assert_ne!(k.token(), reused.token());
        assert_eq!(ConnKey::from_token(Token(0)), None);
        assert_eq!(ConnKey::from_token(Token(METRICS_TOKEN_BIT | 3)), None);
    }

    #[test]
    fn sniffer_finds_authenticated_across_split_writes() {
        let mut bytes = Vec::new();
        Frame::Pong { nonce: 7 }.encode(&mut bytes);
        Frame::Authenticated {
            name: "alice",
            acked: 0,
        }
        .encode(&mut bytes);
        for cut in 0..bytes.len() {
            let mut s = AuthSniffer::default();
            let (a, b) = bytes.split_at(cut);
            let hit = s.feed(a) || s.feed(b);
            assert!(hit, "cut at {cut}");
        }
        let mut s = AuthSniffer::default();
        let mut pong = Vec::new();
        Frame::Pong { nonce: 7 }.encode(&mut pong);
        assert!(!s.feed(&pong));
        assert!(!s.feed(&pong));
    }

    #[test]
    fn bucket_refills_at_rate_and_caps_at_burst() {
        let t0 = Instant::now();
        let mut b = RateBucket::new(100, t0);
        assert_eq!(b.available(100, 100, t0), 100);
        b.spend(100);
        assert_eq!(b.available(100, 100, t0), 0);
        assert_eq!(
            b.available(100, 100, t0 + std::time::Duration::from_millis(50)),
            5
        );
        assert_eq!(
            b.available(100, 100, t0 + std::time::Duration::from_secs(10)),
            100
        );
    }

    #[test]
    fn a_bucket_with_a_smaller_burst_allows_the_burst_then_the_rate() {
        use std::time::Duration;
        let t0 = Instant::now();
        let mut b = RateBucket::new(5, t0);
        assert_eq!(b.available(2_000, 5, t0), 5);
        b.spend(5);
        assert_eq!(b.available(2_000, 5, t0), 0);
        // One token every 500 us; fractions carry over.
        assert_eq!(b.available(2_000, 5, t0 + Duration::from_micros(499)), 0);
        assert_eq!(b.available(2_000, 5, t0 + Duration::from_micros(500)), 1);
        assert_eq!(b.available(2_000, 5, t0 + Duration::from_millis(2)), 4);
        // Never more than the burst, however long it waited.
        assert_eq!(b.available(2_000, 5, t0 + Duration::from_secs(3600)), 5);
        // 3 a second: the token comes at 333,334 us (the loop retries after
        // 1 s / rate rounded up), not before.
        let mut b = RateBucket::new(1, t0);
        b.spend(1);
        assert_eq!(b.available(3, 1, t0 + Duration::from_micros(333_333)), 0);
        assert_eq!(b.available(3, 1, t0 + Duration::from_micros(333_334)), 1);
    }
}
