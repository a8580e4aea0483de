//! A checked cursor over a byte slice: every read checks the remaining
//! length first and returns a typed error instead of panicking.

use super::DecodeError;

/// A cursor over untrusted bytes. Reads never panic; a short input is
/// [`DecodeError::Truncated`] naming the field being read.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `bytes`.
    #[must_use]
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// Bytes not yet read.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Takes exactly `n` bytes.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] if fewer than `n` bytes remain.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError::Truncated {
                field,
                needed: n,
                remaining: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// Takes a fixed-size array.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] if fewer than `N` bytes remain.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads one byte.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] at the end of input.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `u16`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] if fewer than 2 bytes remain.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `u32`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] if fewer than 4 bytes remain.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `u64`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] if fewer than 8 bytes remain.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Reads a byte string with a one-byte length prefix.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] if the prefix or the bytes are short.
    pub fn bytes8(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u8(field)?;
        self.take(usize::from(n), field)
    }

    /// Reads a byte string with a two-byte length prefix.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] if the prefix or the bytes are short.
    pub fn bytes16(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u16(field)?;
        self.take(usize::from(n), field)
    }

    /// Reads a byte string with a four-byte length prefix.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] if the prefix or the bytes are short.
    pub fn bytes32(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.u32(field)?;
        let n = usize::try_from(n).map_err(|_| DecodeError::Truncated {
            field,
            needed: usize::MAX,
            remaining: self.rest.len(),
        })?;
        self.take(n, field)
    }

    /// Reads a UTF-8 string with a one-byte length prefix.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] if short, [`DecodeError::BadUtf8`] if the
    /// bytes are not UTF-8.
    pub fn str8(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let bytes = self.bytes8(field)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::BadUtf8 { field })
    }

    /// Checks that every byte was consumed.
    ///
    /// # Errors
    /// [`DecodeError::TrailingBytes`] if any input is left.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                count: self.rest.len(),
            })
        }
    }
}

/// Appends a byte string with a one-byte length prefix. The caller has
/// bounded the length (names and short texts are at most 255 bytes); longer
/// input is cut at 255 bytes, on a UTF-8 boundary for `&str` callers.
pub(crate) fn put_bytes8(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = u8::try_from(bytes.len()).unwrap_or(u8::MAX);
    out.push(n);
    out.extend_from_slice(bytes.get(..usize::from(n)).unwrap_or(bytes));
}

/// Appends a string with a one-byte length prefix, cutting at a character
/// boundary at or below 255 bytes (used for error texts).
pub(crate) fn put_str8(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(usize::from(u8::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_bytes8(out, s.as_bytes().get(..end).unwrap_or_default());
}

/// Appends a byte string with a two-byte length prefix (bounded by the caller).
pub(crate) fn put_bytes16(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(bytes.get(..usize::from(n)).unwrap_or(bytes));
}

/// Appends a byte string with a four-byte length prefix (bounded by the
/// frame size, far below 4 GiB).
pub(crate) fn put_bytes32(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_truncated_not_panic() {
        let mut r = Reader::new(&[0, 5, 1, 2]);
        assert!(matches!(
            r.bytes16("x"),
            Err(DecodeError::Truncated {
                needed: 5,
                remaining: 2,
                ..
            })
        ));
    }

    #[test]
    fn finish_reports_leftovers() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes { count: 2 }));
    }

    #[test]
    fn put_str8_cuts_on_char_boundary() {
        let s = "é".repeat(200); // 400 bytes
        let mut out = Vec::new();
        put_str8(&mut out, &s);
        let mut r = Reader::new(&out);
        let got = r.str8("t").unwrap();
        assert_eq!(got.len(), 254);
        r.finish().unwrap();
    }
}
