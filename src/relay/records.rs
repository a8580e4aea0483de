//! The relay core's record payloads in the mailbox store.
//!
//! Every payload starts with the core's logical sequence number (`lsn`,
//! u64): the order in which the core first applied the record. Replay sorts
//! by it, so a record copied forward by compaction (new store id, same
//! payload) means exactly what the original meant. The lsn of a message
//! record is also its sequence number in every recipient's queue.
//!
//! ```text
//! ACCOUNT        lsn u64 ‖ name str8 ‖ identity bytes16
//! COMMIT         lsn u64 ‖ entry body (kind 5: signer, group, commit id, unix_ms, commit)
//! GROUP_MESSAGE  lsn u64 ‖ epoch u64 ‖ entry body (kind 1)
//! DIRECT         lsn u64 ‖ recipient u32 ‖ entry body (kind 2, 3 or 4)
//! ACK            lsn u64 ‖ user u32 ‖ up_to u64
//! DROP           lsn u64 ‖ member u32 ‖ seq u64 ‖ group id [16] ‖ sender u32
//!                ‖ count u32 ‖ through u64
//! ```
//!
//! A DROP record is the gap entry at `seq` in `member`'s queue: `count`
//! entries from (`group`, `sender`) were dropped there (absolute: a newer
//! record for the same (member, seq) replaces an older one), and every
//! capped entry of `member` with a sequence number up to `through` is gone
//! (dropped or acked), so replay does not queue (and drop again) one whose
//! record survives.
//!
//! The entry body is [`crate::wire::put_entry_body`]'s layout: a delivery is
//! a deliver header plus a copy of those bytes. User numbers (`u32`) are the
//! order in which accounts were registered (account records are never
//! released, so the numbering survives every restart).

use crate::wire::{DecodeError, EntryKind, GroupId, MessageId, Reader};

/// Record kind: an account was registered.
pub(crate) const KIND_ACCOUNT: u8 = 1;
/// Record kind: a genesis or commit was applied.
pub(crate) const KIND_COMMIT: u8 = 2;
/// Record kind: a group message was accepted.
pub(crate) const KIND_GROUP_MESSAGE: u8 = 3;
/// Record kind: a direct message was accepted.
pub(crate) const KIND_DIRECT: u8 = 4;
/// Record kind: a user's cumulative ack advanced.
pub(crate) const KIND_ACK: u8 = 5;
/// Record kind: entries were dropped from a member's queue (a gap entry).
pub(crate) const KIND_DROP: u8 = 6;

/// Offset of the entry body in a commit record.
pub(crate) const COMMIT_BODY_OFFSET: u8 = 8;
/// Offset of the entry body in a group-message record.
pub(crate) const GROUP_BODY_OFFSET: u8 = 16;
/// Offset of the entry body in a direct record.
pub(crate) const DIRECT_BODY_OFFSET: u8 = 12;

/// The lsn every payload starts with.
pub(crate) fn lsn(payload: &[u8]) -> Option<u64> {
    payload.first_chunk::<8>().map(|b| u64::from_be_bytes(*b))
}

/// A parsed entry body (borrowing from the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryBody<'a> {
    pub(crate) sender: &'a str,
    pub(crate) group_id: GroupId,
    pub(crate) kind: EntryKind,
    pub(crate) message_id: MessageId,
    pub(crate) unix_ms: u64,
    pub(crate) ciphertext: &'a [u8],
}

pub(crate) fn parse_body(body: &[u8]) -> Result<EntryBody<'_>, DecodeError> {
    let mut r = Reader::new(body);
    let sender = r.str8("sender")?;
    let group_id = r.array("group id")?;
    let k = r.u8("entry kind")?;
    let kind = EntryKind::from_u8(k).ok_or(DecodeError::InvalidValue {
        field: "entry kind",
        value: u64::from(k),
    })?;
    let b = EntryBody {
        sender,
        group_id,
        kind,
        message_id: r.array("message id")?,
        unix_ms: r.u64("unix ms")?,
        ciphertext: r.bytes32("ciphertext")?,
    };
    r.finish()?;
    Ok(b)
}

/// Encodes an account record.
pub(crate) fn account(lsn: u64, name: &str, identity: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 1 + name.len() + 2 + identity.len());
    out.extend_from_slice(&lsn.to_be_bytes());
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(
        &u16::try_from(identity.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(identity);
    out
}

/// Parses an account record: (name, identity).
pub(crate) fn parse_account(payload: &[u8]) -> Result<(&str, &[u8]), DecodeError> {
    let mut r = Reader::new(payload);
    r.u64("lsn")?;
    let name = r.str8("name")?;
    let identity = r.bytes16("identity")?;
    r.finish()?;
    Ok((name, identity))
}

/// Encodes an ack record.
pub(crate) fn ack(lsn: u64, user: u32, up_to: u64) -> [u8; 20] {
    let mut out = [0u8; 20];
    let (a, rest) = out.split_at_mut(8);
    a.copy_from_slice(&lsn.to_be_bytes());
    let (b, c) = rest.split_at_mut(4);
    b.copy_from_slice(&user.to_be_bytes());
    c.copy_from_slice(&up_to.to_be_bytes());
    out
}

/// Parses an ack record: (user, up_to).
pub(crate) fn parse_ack(payload: &[u8]) -> Result<(u32, u64), DecodeError> {
    let mut r = Reader::new(payload);
    r.u64("lsn")?;
    let user = r.u32("user")?;
    let up_to = r.u64("up to")?;
    r.finish()?;
    Ok((user, up_to))
}

/// A drop record's fields (after the lsn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DropRecord {
    /// Account number of the member whose queue dropped entries.
    pub(crate) member: u32,
    /// Sequence number of the gap entry in that queue.
    pub(crate) seq: u64,
    /// The group the dropped entries belong to.
    pub(crate) group_id: GroupId,
    /// Account number of their sender.
    pub(crate) sender: u32,
    /// Entries the gap entry stands for (its whole count, not an increment).
    pub(crate) count: u32,
    /// Every capped entry of `member` up to this sequence number is gone.
    pub(crate) through: u64,
}

/// Length of a drop record's payload.
pub(crate) const DROP_LEN: usize = 8 + 4 + 8 + 16 + 4 + 4 + 8;

/// Encodes a drop record.
pub(crate) fn drop_record(lsn: u64, d: &DropRecord) -> [u8; DROP_LEN] {
    let mut out = [0u8; DROP_LEN];
    let parts: [&[u8]; 7] = [
        &lsn.to_be_bytes(),
        &d.member.to_be_bytes(),
        &d.seq.to_be_bytes(),
        &d.group_id,
        &d.sender.to_be_bytes(),
        &d.count.to_be_bytes(),
        &d.through.to_be_bytes(),
    ];
    let mut at = 0;
    for p in parts {
        if let Some(dst) = out.get_mut(at..at + p.len()) {
            dst.copy_from_slice(p);
        }
        at += p.len();
    }
    out
}

/// Parses a drop record.
pub(crate) fn parse_drop(payload: &[u8]) -> Result<DropRecord, DecodeError> {
    let mut r = Reader::new(payload);
    r.u64("lsn")?;
    let d = DropRecord {
        member: r.u32("member")?,
        seq: r.u64("seq")?,
        group_id: r.array("group id")?,
        sender: r.u32("sender")?,
        count: r.u32("count")?,
        through: r.u64("through")?,
    };
    r.finish()?;
    Ok(d)
}

/// Parses the fixed prefix of a group message: its epoch.
#[cfg(test)]
pub(crate) fn group_epoch(payload: &[u8]) -> Result<u64, DecodeError> {
    let mut r = Reader::new(payload);
    r.u64("lsn")?;
    r.u64("epoch")
}

/// Parses the fixed prefix of a direct message: its recipient.
pub(crate) fn direct_recipient(payload: &[u8]) -> Result<u32, DecodeError> {
    let mut r = Reader::new(payload);
    r.u64("lsn")?;
    r.u32("recipient")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::put_entry_body;

    #[test]
    fn records_round_trip() {
        let a = account(7, "zoë", b"ident");
        assert_eq!(lsn(&a), Some(7));
        assert_eq!(parse_account(&a).unwrap(), ("zoë", &b"ident"[..]));
        let k = ack(9, 3, 55);
        assert_eq!(lsn(&k), Some(9));
        assert_eq!(parse_ack(&k).unwrap(), (3, 55));
        let d = DropRecord {
            member: 2,
            seq: 40,
            group_id: [6; 16],
            sender: 1,
            count: 7,
            through: 52,
        };
        let p = drop_record(60, &d);
        assert_eq!(lsn(&p), Some(60));
        assert_eq!(parse_drop(&p).unwrap(), d);
        assert_eq!(&p[12..20], &40u64.to_be_bytes());
        assert_eq!(&p[20..36], &[6; 16]);
        assert!(parse_drop(&p[..DROP_LEN - 1]).is_err());
        let mut g = Vec::new();
        g.extend_from_slice(&1u64.to_be_bytes());
        g.extend_from_slice(&4u64.to_be_bytes());
        put_entry_body(
            &mut g,
            "al",
            &[1; 16],
            EntryKind::GroupMessage,
            &[2; 16],
            5,
            b"ct",
        );
        assert_eq!(group_epoch(&g).unwrap(), 4);
        let body = parse_body(&g[usize::from(GROUP_BODY_OFFSET)..]).unwrap();
        assert_eq!(body.sender, "al");
        assert_eq!(body.ciphertext, b"ct");
        assert!(parse_body(&g[usize::from(GROUP_BODY_OFFSET) + 1..]).is_err());
    }
}
