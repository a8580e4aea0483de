//! Error reason codes carried by the error frame (PROTOCOL.md, Part 3,
//! "Error codes"). Grouped by hundreds: 1xx framing, 2xx accounts and login,
//! 3xx groups, 4xx sending and queues, 5xx relay-side conditions.

/// Why the relay refused a request. The numeric value is the `u16` on the
/// wire; a client that receives a code it does not know treats it by its
/// hundred (see [`ErrorCode::class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame did not decode (short field, leftover bytes, bad value).
    Malformed = 100,
    /// The frame's protocol version is older than this relay speaks.
    OldVersion = 101,
    /// The frame's protocol version is newer than this relay knows.
    UnknownVersion = 102,
    /// The frame kind is not known.
    UnknownKind = 103,
    /// The frame is longer than the relay's maximum frame size.
    FrameTooLarge = 104,
    /// The frame kind is valid but not allowed in this direction or state
    /// (for example a relay-only frame sent by a client).
    UnexpectedFrame = 105,
    /// The request needs a logged-in session.
    NotAuthenticated = 200,
    /// The session already logged in or registered.
    AlreadyAuthenticated = 201,
    /// The name is empty, too long, not NFC-normalisable or has control characters.
    BadName = 202,
    /// The name is already registered.
    NameTaken = 203,
    /// The identity does not decode or its certificate does not verify.
    BadIdentity = 204,
    /// The login signature or the registration proof does not verify.
    BadSignature = 205,
    /// No such user.
    UnknownUser = 206,
    /// Too many registrations relay-wide; try later.
    RegistrationRateLimited = 207,
    /// No such group.
    UnknownGroup = 300,
    /// The sender (or the named user) is not a member of the group.
    NotMember = 301,
    /// The group send carries an epoch older than the group's: re-encrypt
    /// under the current epoch and retry.
    StaleEpoch = 302,
    /// The commit does not verify (signature, roster hash, encoding).
    BadCommit = 303,
    /// The commit's signer may not make this change (for example a non-admin add).
    NotAuthorized = 304,
    /// The commit is not for the group's next epoch (another commit won).
    EpochConflict = 305,
    /// A group with this id already exists.
    GroupExists = 306,
    /// Direct sends are only allowed between users who share the named group.
    NoSharedGroup = 400,
    /// The sender's own stored-message quota is used up.
    QuotaExceeded = 401,
    /// The ack names a sequence number the relay never assigned.
    AckOutOfRange = 402,
    /// Too many requests of this kind; try later.
    RateLimited = 403,
    /// The store is full or failed; the request was not stored.
    StoreFull = 500,
    /// An internal relay error; the request was not applied.
    Internal = 501,
}

impl ErrorCode {
    /// Every code, in numeric order (documentation and tests).
    pub const ALL: [ErrorCode; 27] = [
        Self::Malformed,
        Self::OldVersion,
        Self::UnknownVersion,
        Self::UnknownKind,
        Self::FrameTooLarge,
        Self::UnexpectedFrame,
        Self::NotAuthenticated,
        Self::AlreadyAuthenticated,
        Self::BadName,
        Self::NameTaken,
        Self::BadIdentity,
        Self::BadSignature,
        Self::UnknownUser,
        Self::RegistrationRateLimited,
        Self::UnknownGroup,
        Self::NotMember,
        Self::StaleEpoch,
        Self::BadCommit,
        Self::NotAuthorized,
        Self::EpochConflict,
        Self::GroupExists,
        Self::NoSharedGroup,
        Self::QuotaExceeded,
        Self::AckOutOfRange,
        Self::RateLimited,
        Self::StoreFull,
        Self::Internal,
    ];

    /// The code's value on the wire.
    #[must_use]
    pub fn to_u16(self) -> u16 {
        self as u16
    }

    /// The code for a wire value, if this version knows it.
    #[must_use]
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.to_u16() == v)
    }

    /// The hundred a code belongs to (1 framing, 2 accounts, 3 groups,
    /// 4 sending, 5 relay), also for codes this version does not know.
    #[must_use]
    pub fn class(v: u16) -> u16 {
        v / 100
    }

    /// A short, stable English description.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Malformed => "malformed frame",
            Self::OldVersion => "protocol version too old",
            Self::UnknownVersion => "unknown protocol version",
            Self::UnknownKind => "unknown frame kind",
            Self::FrameTooLarge => "frame too large",
            Self::UnexpectedFrame => "frame not allowed here",
            Self::NotAuthenticated => "not logged in",
            Self::AlreadyAuthenticated => "already logged in",
            Self::BadName => "invalid name",
            Self::NameTaken => "name already registered",
            Self::BadIdentity => "invalid identity",
            Self::BadSignature => "signature does not verify",
            Self::UnknownUser => "unknown user",
            Self::RegistrationRateLimited => "registration rate limit",
            Self::UnknownGroup => "unknown group",
            Self::NotMember => "not a member of the group",
            Self::StaleEpoch => "stale epoch",
            Self::BadCommit => "invalid commit",
            Self::NotAuthorized => "not authorized for this commit",
            Self::EpochConflict => "commit is not for the next epoch",
            Self::GroupExists => "group already exists",
            Self::NoSharedGroup => "no shared group",
            Self::QuotaExceeded => "sender quota exceeded",
            Self::AckOutOfRange => "ack beyond assigned sequence",
            Self::RateLimited => "rate limited",
            Self::StoreFull => "store full",
            Self::Internal => "internal error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(c.to_u16()), Some(c));
            seen.insert(c.to_u16());
        }
        assert_eq!(seen.len(), 27);
        assert_eq!(ErrorCode::from_u16(999), None);
        assert_eq!(ErrorCode::class(302), 3);
    }
}
