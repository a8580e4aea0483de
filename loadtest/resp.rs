//! A minimal RESP3 client codec for `--target redis` (Redis pub/sub).
//!
//! Each member opens one connection, switches it to RESP3 with `HELLO 3`
//! and `SUBSCRIBE`s to its group's channel; it is ready at the subscribe
//! confirmation. Senders `PUBLISH` on that same connection: in RESP3 a
//! subscribed connection may run any command, and messages arrive as push
//! frames (`>3 message <channel> <payload>`) that cannot be confused with
//! replies. Under RESP2 a subscribed connection may only (un)subscribe and
//! ping, so a RESP2 swarm would need a second, publishing connection per
//! sender; HELLO 3 (Redis 6 and later) avoids that and keeps one connection
//! per member on every target. Redis echoes a member's own publish to its
//! subscription; the driver counts those as `self_echo`.

use std::ops::Range;

use crate::proto::{Event, Member, Proto, ProtoError};

/// Deepest aggregate nesting the parser follows (a HELLO reply nests 3).
const MAX_DEPTH: u32 = 8;

/// Longest bulk string accepted (Redis's own `proto-max-bulk-len` default).
const MAX_BULK: usize = 512 * 1024 * 1024;

/// Most elements accepted in one aggregate.
const MAX_ELEMENTS: usize = 1 << 20;

/// The channel of group `group`.
pub(crate) fn channel(group: u32) -> String {
    format!("hermes-loadtest:g{group}")
}

/// Appends a command as an array of bulk strings.
pub(crate) fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A parsed RESP value, summarised: scalars as ranges of the buffer,
/// aggregates by kind, length and their first three scalar elements (all a
/// pub/sub client looks at), without allocating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resp {
    /// `+...` simple string.
    Simple(Range<usize>),
    /// `-...` error or `!` bulk error.
    Error(Range<usize>),
    /// `:` integer.
    Int(i64),
    /// `$` bulk string (or `=` verbatim string); `None` for a null bulk.
    Bulk(Option<Range<usize>>),
    /// `*` array, `>` push, `%` map, `~` set, `|` attribute.
    Aggregate {
        /// The type byte.
        kind: u8,
        /// Number of elements (a map's pairs count twice).
        len: usize,
        /// The first three elements when they are strings.
        items: [Option<Range<usize>>; 3],
    },
    /// Null, boolean, double, big number, or a null aggregate.
    Other,
}

fn crlf_line(buf: &[u8], at: usize) -> Option<(Range<usize>, usize)> {
    let rest = buf.get(at..)?;
    let i = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((at..at + i, at + i + 2))
}

fn parse_int(bytes: &[u8]) -> Result<i64, ProtoError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ProtoError::Malformed("RESP integer"))
}

fn parse_len(bytes: &[u8], max: usize) -> Result<Option<usize>, ProtoError> {
    let n = parse_int(bytes)?;
    if n == -1 {
        return Ok(None);
    }
    let n = usize::try_from(n).map_err(|_| ProtoError::Malformed("RESP negative length"))?;
    if n > max {
        return Err(ProtoError::Malformed("RESP length over limit"));
    }
    Ok(Some(n))
}

/// Parses the value starting at `at`: `Ok(None)` if it is incomplete,
/// otherwise the value and the offset just past it.
///
/// # Errors
/// Bytes that are not RESP, lengths over the limits, nesting deeper than
/// the limit.
pub(crate) fn parse(buf: &[u8], at: usize) -> Result<Option<(Resp, usize)>, ProtoError> {
    parse_depth(buf, at, 0)
}

fn parse_depth(buf: &[u8], at: usize, depth: u32) -> Result<Option<(Resp, usize)>, ProtoError> {
    if depth > MAX_DEPTH {
        return Err(ProtoError::Malformed("RESP nesting too deep"));
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((line, next)) = crlf_line(buf, at + 1) else {
        return Ok(None);
    };
    let text = buf.get(line.clone()).unwrap_or_default();
    match kind {
        b'+' => Ok(Some((Resp::Simple(line), next))),
        b'-' => Ok(Some((Resp::Error(line), next))),
        b':' => Ok(Some((Resp::Int(parse_int(text)?), next))),
        b'_' | b',' | b'#' | b'(' => Ok(Some((Resp::Other, next))),
        b'$' | b'=' | b'!' => {
            let Some(n) = parse_len(text, MAX_BULK)? else {
                return Ok(Some((Resp::Bulk(None), next)));
            };
            let end = next + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if buf.get(end..end + 2) != Some(b"\r\n") {
                return Err(ProtoError::Malformed("RESP bulk without CRLF"));
            }
            let r = next..end;
            Ok(Some((
                if kind == b'!' {
                    Resp::Error(r)
                } else {
                    Resp::Bulk(Some(r))
                },
                end + 2,
            )))
        }
        b'*' | b'>' | b'~' | b'%' | b'|' => {
            let Some(n) = parse_len(text, MAX_ELEMENTS)? else {
                return Ok(Some((Resp::Other, next)));
            };
            let len = if matches!(kind, b'%' | b'|') {
                n * 2
            } else {
                n
            };
            let mut items: [Option<Range<usize>>; 3] = [None, None, None];
            let mut pos = next;
            for i in 0..len {
                let Some((v, after)) = parse_depth(buf, pos, depth + 1)? else {
                    return Ok(None);
                };
                if let (Some(slot), Resp::Bulk(Some(r)) | Resp::Simple(r)) = (items.get_mut(i), v) {
                    *slot = Some(r);
                }
                pos = after;
            }
            if kind == b'|' {
                // An attribute annotates the value that follows it: skip to it.
                return parse_depth(buf, pos, depth + 1);
            }
            Ok(Some((Resp::Aggregate { kind, len, items }, pos)))
        }
        _ => Err(ProtoError::Malformed("unknown RESP type byte")),
    }
}

/// Where a connection is in its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitSubscribe,
    Ready,
}

/// A Redis member connection (RESP3).
#[derive(Debug)]
pub(crate) struct Redis {
    channel: Vec<u8>,
    state: State,
}

impl Proto for Redis {
    type Ctx = ();

    fn new(member: &Member, _ctx: &()) -> Redis {
        Redis {
            channel: channel(member.group).into_bytes(),
            state: State::AwaitHello,
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        encode_command(out, &[b"HELLO", b"3"]);
        encode_command(out, &[b"SUBSCRIBE", &self.channel]);
    }

    fn on_read(
        &mut self,
        buf: &[u8],
        _out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) -> Result<usize, ProtoError> {
        let mut at = 0;
        while let Some((v, next)) = parse(buf, at)? {
            let text = |r: &Option<Range<usize>>| r.clone().and_then(|r| buf.get(r));
            match (v, self.state) {
                (Resp::Error(r), _) => {
                    let msg = String::from_utf8_lossy(buf.get(r).unwrap_or_default()).into_owned();
                    return Err(ProtoError::Refused(msg));
                }
                (Resp::Aggregate { kind: b'%', .. }, State::AwaitHello) => {
                    self.state = State::AwaitSubscribe;
                }
                (
                    Resp::Aggregate {
                        kind: b'>', items, ..
                    },
                    state,
                ) => match (text(&items[0]), state) {
                    (Some(b"message"), State::Ready) => match items[2].clone() {
                        Some(p) => events.push(Event::Message(p)),
                        None => return Err(ProtoError::Malformed("RESP message without payload")),
                    },
                    (Some(b"subscribe"), State::AwaitSubscribe) => {
                        self.state = State::Ready;
                        events.push(Event::Ready);
                    }
                    _ => return Err(ProtoError::Malformed("unexpected RESP push")),
                },
                // PUBLISH's reply: the number of subscribers reached.
                (Resp::Int(_), State::Ready) => {}
                (Resp::Simple(r), State::Ready) if buf.get(r.clone()) == Some(b"PONG") => {
                    events.push(Event::Pong);
                }
                _ => return Err(ProtoError::Malformed("unexpected RESP reply")),
            }
            at = next;
        }
        Ok(at)
    }

    fn publish(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        encode_command(out, &[b"PUBLISH", &self.channel, payload]);
    }

    fn ping(&mut self, out: &mut Vec<u8>) {
        encode_command(out, &[b"PING"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"PUBLISH", b"ch", b"hi"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$2\r\nhi\r\n");
    }

    #[test]
    fn parses_scalars() {
        let b = b"+OK\r\n-ERR no\r\n:-42\r\n$3\r\nabc\r\n$-1\r\n_\r\n#t\r\n,1.5\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((v, n)) = parse(b, at).unwrap() {
            got.push(v);
            at = n;
        }
        assert_eq!(at, b.len());
        assert_eq!(
            got,
            vec![
                Resp::Simple(1..3),
                Resp::Error(6..12),
                Resp::Int(-42),
                Resp::Bulk(Some(24..27)),
                Resp::Bulk(None),
                Resp::Other,
                Resp::Other,
                Resp::Other,
            ]
        );
    }

    #[test]
    fn incomplete_values_wait_for_more() {
        let b = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        for cut in 0..b.len() {
            assert_eq!(parse(&b[..cut], 0).unwrap(), None, "cut at {cut}");
        }
        let (v, n) = parse(b, 0).unwrap().unwrap();
        assert_eq!(n, b.len());
        let Resp::Aggregate { kind, len, items } = v else {
            panic!("{v:?}")
        };
        assert_eq!((kind, len), (b'>', 3));
        assert_eq!(&b[items[2].clone().unwrap()], b"hello");
    }

    #[test]
    fn rejects_garbage_overlong_and_too_deep() {
        assert!(parse(b"?x\r\n", 0).is_err());
        assert!(parse(b"$abc\r\n", 0).is_err());
        assert!(parse(b"$3\r\nabcXY", 0).is_err());
        assert!(parse(b"$999999999999\r\n", 0).is_err());
        assert!(parse(b"*-5\r\n", 0).is_err());
        let deep = "*1\r\n".repeat(20) + ":1\r\n";
        assert!(parse(deep.as_bytes(), 0).is_err());
    }

    #[test]
    fn maps_count_pairs_and_attributes_are_skipped() {
        let b = b"%1\r\n+k\r\n*2\r\n:1\r\n:2\r\n";
        let (v, n) = parse(b, 0).unwrap().unwrap();
        assert_eq!(n, b.len());
        assert!(matches!(
            v,
            Resp::Aggregate {
                kind: b'%',
                len: 2,
                ..
            }
        ));
        let b = b"|1\r\n+a\r\n+b\r\n:7\r\n";
        assert_eq!(parse(b, 0).unwrap(), Some((Resp::Int(7), b.len())));
    }

    fn member() -> Member {
        Member {
            index: 1,
            group: 2,
            run_tag: 0,
        }
    }

    #[test]
    fn session_hello_subscribe_message_pong() {
        let mut c = Redis::new(&member(), &());
        let mut out = Vec::new();
        c.start(&mut out);
        assert!(out.starts_with(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*2\r\n$9\r\nSUBSCRIBE\r\n"));
        let ch = channel(2);
        let mut input = b"%1\r\n$6\r\nserver\r\n$5\r\nredis\r\n".to_vec();
        input.extend_from_slice(
            format!(">3\r\n$9\r\nsubscribe\r\n${}\r\n{ch}\r\n:1\r\n", ch.len()).as_bytes(),
        );
        input.extend_from_slice(
            format!(
                ">3\r\n$7\r\nmessage\r\n${}\r\n{ch}\r\n$3\r\nxyz\r\n",
                ch.len()
            )
            .as_bytes(),
        );
        input.extend_from_slice(b":5\r\n+PONG\r\n:1");
        let mut ev = Vec::new();
        let used = c.on_read(&input, &mut out, &mut ev).unwrap();
        assert_eq!(used, input.len() - 2, "the partial integer stays");
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0], Event::Ready);
        let Event::Message(r) = ev[1].clone() else {
            panic!("{ev:?}")
        };
        assert_eq!(&input[r], b"xyz");
        assert_eq!(ev[2], Event::Pong);
    }

    #[test]
    fn resp2_server_refuses_hello() {
        let mut c = Redis::new(&member(), &());
        let mut ev = Vec::new();
        let r = c.on_read(
            b"-ERR unknown command 'HELLO'\r\n",
            &mut Vec::new(),
            &mut ev,
        );
        assert!(matches!(r, Err(ProtoError::Refused(m)) if m.contains("HELLO")));
    }

    #[test]
    fn message_before_subscribe_is_an_error() {
        let mut c = Redis::new(&member(), &());
        let mut ev = Vec::new();
        let r = c.on_read(
            b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n",
            &mut Vec::new(),
            &mut ev,
        );
        assert!(r.is_err());
    }
}
