//! The record and segment-header byte layouts (PROTOCOL.md, Part 4) and
//! CRC32C. Pure: bytes in, bytes or typed results out; no panic on any input.

/// Bytes before the payload: length, kind, reserved, id, unix_ms.
pub(crate) const RECORD_HEADER_BYTES: usize = 24;
/// The CRC32C after the payload.
pub(crate) const RECORD_TRAILER_BYTES: usize = 4;
/// Records start at multiples of this many bytes (zero padding between).
pub(crate) const RECORD_ALIGN: usize = 8;

/// The segment header's magic.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"HERMESMB";
/// The only segment format version this code writes and reads.
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// Segment header length; the first record starts here.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 40;

/// Bytes one record with a `payload_len`-byte payload occupies, padding
/// included. `None` on overflow.
pub(crate) fn encoded_len(payload_len: usize) -> Option<usize> {
    let raw = payload_len.checked_add(RECORD_HEADER_BYTES + RECORD_TRAILER_BYTES)?;
    raw.checked_add(RECORD_ALIGN - 1)
        .map(|n| n & !(RECORD_ALIGN - 1))
}

/// Writes one record into `out`, which must be exactly
/// `encoded_len(payload.len())` bytes long. Returns `None` (writing
/// nothing) if it is not, or if the payload length does not fit in a `u32`.
pub(crate) fn encode_record(
    out: &mut [u8],
    id: u64,
    kind: u8,
    unix_ms: u64,
    payload: &[u8],
) -> Option<()> {
    let len = u32::try_from(payload.len()).ok()?;
    if Some(out.len()) != encoded_len(payload.len()) {
        return None;
    }
    let body_end = RECORD_HEADER_BYTES + payload.len();
    let (body, rest) = out.split_at_mut_checked(body_end)?;
    let (header, body_payload) = body.split_at_mut_checked(RECORD_HEADER_BYTES)?;
    header.get_mut(0..4)?.copy_from_slice(&len.to_be_bytes());
    header.get_mut(4..8)?.copy_from_slice(&[kind, 0, 0, 0]);
    header.get_mut(8..16)?.copy_from_slice(&id.to_be_bytes());
    header
        .get_mut(16..24)?
        .copy_from_slice(&unix_ms.to_be_bytes());
    body_payload.copy_from_slice(payload);
    let crc = crc32c(body);
    let (trailer, padding) = rest.split_at_mut_checked(RECORD_TRAILER_BYTES)?;
    trailer.copy_from_slice(&crc.to_be_bytes());
    padding.fill(0);
    Some(())
}

/// One record parsed out of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decoded<'a> {
    pub(crate) id: u64,
    pub(crate) kind: u8,
    pub(crate) unix_ms: u64,
    pub(crate) payload: &'a [u8],
    /// Bytes the record occupies, padding included.
    pub(crate) size: usize,
}

/// What is found at a record boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan<'a> {
    /// A record whose checksum and header check out.
    Record(Decoded<'a>),
    /// An all-zero header (or less room than a header, all zero): the end
    /// of the data.
    End,
    /// A header whose length fits in the remaining bytes, but the checksum
    /// or a reserved field is wrong. `size` is what the header claims.
    Bad { claimed_id: u64, size: usize },
    /// A header whose length cannot be right (past the end, over `max`).
    Garbage,
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Parses the record starting at the beginning of `buf` (the rest of the
/// segment), accepting payloads of at most `max_payload` bytes.
pub(crate) fn scan_record(buf: &[u8], max_payload: usize) -> Scan<'_> {
    let Some(header) = buf.get(..RECORD_HEADER_BYTES) else {
        // Too short for a record: the end, unless a write was cut short.
        return if buf.iter().all(|&b| b == 0) {
            Scan::End
        } else {
            Scan::Garbage
        };
    };
    if header.iter().all(|&b| b == 0) {
        return Scan::End;
    }
    let (Some(len), Some(id), Some(unix_ms)) =
        (be_u32(header, 0), be_u64(header, 8), be_u64(header, 16))
    else {
        return Scan::Garbage;
    };
    let Ok(len) = usize::try_from(len) else {
        return Scan::Garbage;
    };
    let Some(size) = encoded_len(len) else {
        return Scan::Garbage;
    };
    if len > max_payload || size > buf.len() {
        return Scan::Garbage;
    }
    let body_end = RECORD_HEADER_BYTES + len;
    let (Some(body), Some(stored_crc), Some(payload)) = (
        buf.get(..body_end),
        be_u32(buf, body_end),
        buf.get(RECORD_HEADER_BYTES..body_end),
    ) else {
        return Scan::Garbage;
    };
    let reserved_ok = header.get(5..8) == Some(&[0, 0, 0][..]);
    if !reserved_ok || id == 0 || crc32c(body) != stored_crc {
        return Scan::Bad {
            claimed_id: id,
            size,
        };
    }
    let kind = header.get(4).copied().unwrap_or(0);
    Scan::Record(Decoded {
        id,
        kind,
        unix_ms,
        payload,
        size,
    })
}

/// Reads the record at the start of `buf` without verifying its checksum:
/// for records this store wrote or already verified on open. `None` if the
/// header does not fit `buf` (never panics).
pub(crate) fn read_trusted(buf: &[u8]) -> Option<Decoded<'_>> {
    let len = usize::try_from(be_u32(buf, 0)?).ok()?;
    let size = encoded_len(len)?;
    let payload = buf.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES.checked_add(len)?)?;
    Some(Decoded {
        id: be_u64(buf, 8)?,
        kind: *buf.get(4)?,
        unix_ms: be_u64(buf, 16)?,
        payload,
        size,
    })
}

/// A parsed segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) number: u64,
    pub(crate) base_id: u64,
}

/// Why a segment header was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// All zero: the file was created but its header never reached the disk.
    Blank,
    /// Wrong magic, reserved bits or checksum.
    Corrupt,
    /// A version this code does not read.
    Version(u32),
}

/// The 40-byte segment header.
pub(crate) fn encode_segment_header(number: u64, base_id: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    let fields: [(usize, &[u8]); 4] = [
        (0, &SEGMENT_MAGIC),
        (8, &SEGMENT_VERSION.to_be_bytes()),
        (16, &number.to_be_bytes()),
        (24, &base_id.to_be_bytes()),
    ];
    for (at, bytes) in fields {
        if let Some(dst) = h.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
    let crc = h.get(..36).map(crc32c).unwrap_or(0);
    if let Some(dst) = h.get_mut(36..40) {
        dst.copy_from_slice(&crc.to_be_bytes());
    }
    h
}

/// Parses a segment header from the start of `buf`.
pub(crate) fn decode_segment_header(buf: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let h = buf
        .get(..SEGMENT_HEADER_BYTES)
        .ok_or(HeaderError::Corrupt)?;
    if h.iter().all(|&b| b == 0) {
        return Err(HeaderError::Blank);
    }
    if h.get(..8) != Some(&SEGMENT_MAGIC[..]) {
        return Err(HeaderError::Corrupt);
    }
    let crc_ok = h.get(..36).map(crc32c) == be_u32(h, 36);
    let version = be_u32(h, 8).ok_or(HeaderError::Corrupt)?;
    if !crc_ok {
        return Err(HeaderError::Corrupt);
    }
    if version != SEGMENT_VERSION {
        return Err(HeaderError::Version(version));
    }
    let reserved = be_u32(h, 12).ok_or(HeaderError::Corrupt)?;
    let reserved2 = be_u32(h, 32).ok_or(HeaderError::Corrupt)?;
    if reserved != 0 || reserved2 != 0 {
        return Err(HeaderError::Corrupt);
    }
    Ok(SegmentHeader {
        number: be_u64(h, 16).ok_or(HeaderError::Corrupt)?,
        base_id: be_u64(h, 24).ok_or(HeaderError::Corrupt)?,
    })
}

// ---------------------------------------------------------------------------
// CRC32C (Castagnoli): reflected polynomial 0x82F63B78, initial value and
// final xor 0xFFFFFFFF; check value crc32c(b"123456789") = 0xE3069283.
// Slicing-by-8 tables, generated at compile time.
// ---------------------------------------------------------------------------

const CRC32C_POLY: u32 = 0x82F6_3B78;

#[allow(
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    reason = "compile-time table generation (n < 256): every index is bounded by its loop"
)]
const fn crc32c_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CRC32C_POLY
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][n] = c;
        n += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut n = 0;
        while n < 256 {
            let prev = t[s - 1][n];
            t[s][n] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            n += 1;
        }
        s += 1;
    }
    t
}

static CRC32C_TABLES: [[u32; 256]; 8] = crc32c_tables();

#[inline(always)]
#[allow(
    clippy::indexing_slicing,
    reason = "a u8 index is always below the table's 256 entries, and the table index is a constant below 8"
)]
fn tbl<const T: usize>(i: u32) -> u32 {
    CRC32C_TABLES[T][(i & 0xff) as usize]
}

/// CRC32C of `data`.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    let (chunks, rest) = data.as_chunks::<8>();
    for &[b0, b1, b2, b3, b4, b5, b6, b7] in chunks {
        let lo = u32::from_le_bytes([b0, b1, b2, b3]) ^ crc;
        crc = tbl::<7>(lo)
            ^ tbl::<6>(lo >> 8)
            ^ tbl::<5>(lo >> 16)
            ^ tbl::<4>(lo >> 24)
            ^ tbl::<3>(u32::from(b4))
            ^ tbl::<2>(u32::from(b5))
            ^ tbl::<1>(u32::from(b6))
            ^ tbl::<0>(u32::from(b7));
    }
    for &b in rest {
        crc = (crc >> 8) ^ tbl::<0>(crc ^ u32::from(b));
    }
    !crc
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "test data generators wrap on purpose"
)]
mod tests {
    use super::*;

    fn crc32c_bitwise(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ CRC32C_POLY
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn crc32c_known_answers() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720 (iSCSI) B.4: 32 bytes of zeros, of 0xff, ascending.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
    }

    #[test]
    fn crc32c_slicing_matches_bitwise_at_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in 0..data.len() {
            assert_eq!(crc32c(&data[..n]), crc32c_bitwise(&data[..n]), "length {n}");
        }
    }

    #[test]
    fn record_roundtrip_and_alignment() {
        for len in [0usize, 1, 3, 4, 5, 100, 4096] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let size = encoded_len(len).unwrap();
            assert_eq!(size % RECORD_ALIGN, 0);
            assert!(size >= len + RECORD_HEADER_BYTES + RECORD_TRAILER_BYTES);
            let mut buf = vec![0xAA; size + 16];
            encode_record(&mut buf[..size], 7, 3, 99, &payload).unwrap();
            match scan_record(&buf, 1 << 20) {
                Scan::Record(d) => {
                    assert_eq!(
                        (d.id, d.kind, d.unix_ms, d.payload, d.size),
                        (7, 3, 99, &payload[..], size)
                    );
                }
                other => panic!("len {len}: {other:?}"),
            }
        }
    }

    #[test]
    fn encode_refuses_wrong_buffer_length() {
        let mut buf = [0u8; 64];
        assert_eq!(encode_record(&mut buf, 1, 1, 1, b"x"), None);
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn scan_classifies_end_bad_and_garbage() {
        let mut buf = vec![0u8; 128];
        assert_eq!(scan_record(&buf, 1024), Scan::End);
        assert_eq!(scan_record(&buf[..10], 1024), Scan::End);
        assert_eq!(scan_record(&[0, 0, 1], 1024), Scan::Garbage, "a cut header");
        let size = encoded_len(5).unwrap();
        encode_record(&mut buf[..size], 9, 1, 2, b"hello").unwrap();
        buf[26] ^= 0x01; // a payload byte
        assert_eq!(
            scan_record(&buf, 1024),
            Scan::Bad {
                claimed_id: 9,
                size
            }
        );
        buf[26] ^= 0x01;
        assert_eq!(
            scan_record(&buf, 4),
            Scan::Garbage,
            "payload over the limit"
        );
        buf[0] = 0xff; // length far past the end
        assert_eq!(scan_record(&buf, usize::MAX), Scan::Garbage);
    }

    #[test]
    fn scan_never_panics_on_arbitrary_bytes() {
        let mut state = 0x1234_5678_u32;
        for _ in 0..2000 {
            let len = (state % 80) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect();
            let _ = scan_record(&buf, 64);
            let _ = decode_segment_header(&buf);
        }
    }

    #[test]
    fn segment_header_roundtrip_and_rejections() {
        let h = encode_segment_header(3, 1000);
        assert_eq!(
            decode_segment_header(&h),
            Ok(SegmentHeader {
                number: 3,
                base_id: 1000
            })
        );
        assert_eq!(decode_segment_header(&[0u8; 40]), Err(HeaderError::Blank));
        assert_eq!(decode_segment_header(&h[..39]), Err(HeaderError::Corrupt));
        let mut bad = h;
        bad[20] ^= 1;
        assert_eq!(decode_segment_header(&bad), Err(HeaderError::Corrupt));
        let mut v2 = h;
        v2[8..12].copy_from_slice(&2u32.to_be_bytes());
        let crc = crc32c(&v2[..36]);
        v2[36..40].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(decode_segment_header(&v2), Err(HeaderError::Version(2)));
    }
}
