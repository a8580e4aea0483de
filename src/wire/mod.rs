//! The wire protocol: length-prefixed, versioned binary frames, encoded and
//! decoded over a checked reader. Pure: bytes in, values out.
