//! What the driver needs from a target protocol: bytes to open a session and
//! join the member's group, how to publish a payload to the group, how to
//! ping, and a parser turning incoming bytes into events.
//!
//! Implementations are pure: bytes in, bytes and events out; the driver owns
//! the sockets.

use std::ops::Range;

/// Who a connection is in the swarm.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// Global member index (0..connections); also the sender index in stamps.
    pub(crate) index: u32,
    /// Group index (members `group * group_size ..` belong to it).
    pub(crate) group: u32,
    /// A per-run tag (the process id) so client ids of two runs differ.
    pub(crate) run_tag: u32,
}

/// Something the server told a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The session is open and the member has joined its group: it may send
    /// and will receive the group's messages.
    Ready,
    /// A group message; the range is the payload within the parsed buffer.
    Message(Range<usize>),
    /// A group message decrypted by the protocol (`--crypto real`): the
    /// plaintext.
    Plain(Vec<u8>),
    /// A group message that did not verify or decrypt.
    Undecryptable,
    /// The answer to a ping.
    Pong,
    /// The server refused one request but the session goes on (the code
    /// is the server's).
    ServerError(u16),
}

/// The server broke the protocol, or refused something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProtoError {
    /// Bytes that do not parse, or a reply that makes no sense here.
    #[error("malformed input from the server: {0}")]
    Malformed(&'static str),
    /// The server refused (CONNACK/SUBACK failure code, RESP error reply, ...).
    #[error("the server refused: {0}")]
    Refused(String),
}

/// One connection's protocol state.
///
/// Call order: [`Proto::start`] once the TCP connection is up; then
/// [`Proto::on_read`] with every byte received (it returns how many it
/// consumed; the caller keeps the rest and passes it again with more), and
/// [`Proto::publish`] / [`Proto::ping`] whenever the driver wants to send,
/// which only after [`Event::Ready`].
pub(crate) trait Proto: Sized {
    /// What every connection of this target shares (identities, group ids),
    /// prepared before the swarm starts.
    type Ctx: Send + Sync + 'static;

    /// State for a connection of `member`.
    fn new(member: &Member, ctx: &Self::Ctx) -> Self;

    /// Appends the bytes that open the session and join the group.
    fn start(&mut self, out: &mut Vec<u8>);

    /// Parses complete frames at the front of `buf`, appending events (and
    /// any bytes to send back, such as a ping answer) and returning the number
    /// of bytes consumed.
    ///
    /// # Errors
    /// [`ProtoError`] when the stream can no longer be trusted.
    fn on_read(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) -> Result<usize, ProtoError>;

    /// Appends a message carrying `payload` to the member's group.
    fn publish(&mut self, payload: &[u8], out: &mut Vec<u8>);

    /// Appends a keep-alive ping.
    fn ping(&mut self, out: &mut Vec<u8>);

    /// Called every 100 ms or so: a chance to flush batched output (acks).
    fn tick(&mut self, _out: &mut Vec<u8>) {}
}
