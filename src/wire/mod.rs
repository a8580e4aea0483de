//! The wire protocol: length-prefixed, versioned binary frames, encoded and
//! decoded over a checked reader. Pure: bytes in, values out.
//!
//! ```text
//!  ┌──────────────┬─────────┬──────┬───────────────────────────┐
//!  │ length: u32  │ version │ kind │ body (kind-specific)      │
//!  │ (big-endian) │  u8 = 1 │  u8  │ length - 2 bytes          │
//!  └──────────────┴─────────┴──────┴───────────────────────────┘
//! ```
//!
//! [`split_frame`] cuts a frame off a byte stream, [`Frame::decode`] parses
//! it (borrowing from the input), [`Frame::encode`] writes one. A deliver
//! frame is built without re-encoding its payload: the relay stores each
//! entry body ([`put_entry_body`]) once and a delivery is a 14-byte
//! [`encode_deliver_header`] plus one copy of those bytes. PROTOCOL.md,
//! Part 3, has every byte.

mod codes;
mod frame;
mod name;
mod reader;

pub use codes::ErrorCode;
pub use frame::{
    DELIVER_HEADER_LEN, Deliver, EntryKind, ErrorFrame, Frame, FrameKind, GapNotice, GroupId,
    GroupSummary, HELLO_LABEL, Hello, IdentityEntry, LENGTH_PREFIX_LEN, LOGIN_LABEL, MessageId,
    PROTOCOL_VERSION, REGISTER_LABEL, commit_message_id, encode_deliver_header, frame_kind,
    login_message, put_entry_body, register_message, split_frame,
};
pub use name::{NameError, is_normalized_name, normalize_name};
pub use reader::Reader;

/// Why bytes did not decode as a frame. Each variant maps to one error code
/// ([`DecodeError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A field needs more bytes than remain.
    #[error("truncated {field}: needs {needed} bytes, {remaining} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes that were left.
        remaining: usize,
    },
    /// Bytes remain after the last field.
    #[error("{count} bytes left over after the frame body")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The kind byte is not a known frame kind.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The version byte is older than [`PROTOCOL_VERSION`].
    #[error("protocol version {0} is too old")]
    OldVersion(u8),
    /// The version byte is newer than [`PROTOCOL_VERSION`].
    #[error("unknown protocol version {0}")]
    UnknownVersion(u8),
    /// The length prefix exceeds the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The length prefix is below 2 (no room for version and kind).
    #[error("frame of {len} bytes is too short")]
    FrameTooShort {
        /// The announced length.
        len: usize,
    },
    /// A text field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    BadUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A name is longer than [`crate::limits::MAX_NAME_BYTES`].
    #[error("name of {len} bytes is too long")]
    NameTooLong {
        /// Its length.
        len: usize,
    },
    /// A list is longer than [`crate::limits::MAX_LIST_ITEMS`].
    #[error("{field}: {count} items is too many")]
    TooManyItems {
        /// The list.
        field: &'static str,
        /// Its announced length.
        count: usize,
    },
    /// A field has a value outside its range (flag not 0/1, unknown entry kind).
    #[error("{field} has invalid value {value}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// The value.
        value: u64,
    },
}

impl DecodeError {
    /// The error code the relay answers this decoding failure with.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownKind(_) => ErrorCode::UnknownKind,
            Self::OldVersion(_) => ErrorCode::OldVersion,
            Self::UnknownVersion(_) => ErrorCode::UnknownVersion,
            Self::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            _ => ErrorCode::Malformed,
        }
    }
}

/// Fuzz entry point: splits and decodes arbitrary bytes; must never panic.
/// Re-encoding a decoded frame must give back the same bytes.
pub fn fuzz_decode(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((frame, used))) = split_frame(rest, crate::limits::MAX_FRAME_LEN) {
        if let Ok(f) = Frame::decode(frame) {
            let again = f.to_vec();
            debug_assert_eq!(again.get(LENGTH_PREFIX_LEN..), Some(frame));
        }
        rest = rest.get(used..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests;
