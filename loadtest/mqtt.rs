//! A minimal MQTT 3.1.1 client codec for `--target mqtt`, QoS 0 only:
//! CONNECT/CONNACK, SUBSCRIBE/SUBACK (one topic per group), PUBLISH and
//! PINGREQ/PINGRESP (OASIS MQTT 3.1.1, sections 2.2, 3.1-3.3, 3.8, 3.9,
//! 3.12, 3.13).
//!
//! The client sends CONNECT and SUBSCRIBE back to back (section 3.1.4 lets a
//! client send before the CONNACK) and is ready at the SUBACK. MQTT 3.1.1
//! has no "no local" option, so the broker echoes a member's own publish to
//! it; the driver counts those as `self_echo`.

use std::ops::Range;

use crate::proto::{Event, Member, Proto, ProtoError};

/// Packet types (the high nibble of the first byte).
pub(crate) const CONNECT: u8 = 1;
pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;
pub(crate) const SUBSCRIBE: u8 = 8;
pub(crate) const SUBACK: u8 = 9;
pub(crate) const PINGREQ: u8 = 12;
pub(crate) const PINGRESP: u8 = 13;

/// Largest remaining length the encoding allows (section 2.2.3).
const MAX_REMAINING: usize = 268_435_455;

/// The keep-alive the client announces, in seconds; the driver pings well
/// within it.
pub(crate) const KEEP_ALIVE_SECS: u16 = 120;

/// The topic of group `group`.
pub(crate) fn topic(group: u32) -> String {
    format!("hermes-loadtest/g{group}")
}

/// Appends the remaining-length varint (section 2.2.3).
fn put_remaining(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = u8::try_from(n % 128).unwrap_or(0);
        n /= 128;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.get(..usize::from(len)).unwrap_or(s));
}

/// Appends a CONNECT with a clean session.
pub(crate) fn encode_connect(out: &mut Vec<u8>, client_id: &str, keep_alive: u16) {
    let id = client_id.as_bytes();
    out.push(CONNECT << 4);
    put_remaining(out, 10 + 2 + id.len());
    put_str(out, b"MQTT");
    out.push(4); // protocol level 3.1.1
    out.push(0x02); // clean session
    out.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(out, id);
}

/// Appends a SUBSCRIBE for one topic at QoS 0.
pub(crate) fn encode_subscribe(out: &mut Vec<u8>, packet_id: u16, topic: &str) {
    out.push((SUBSCRIBE << 4) | 0x02); // reserved flags 0010
    put_remaining(out, 2 + 2 + topic.len() + 1);
    out.extend_from_slice(&packet_id.to_be_bytes());
    put_str(out, topic.as_bytes());
    out.push(0); // requested QoS 0
}

/// Appends a QoS 0 PUBLISH.
pub(crate) fn encode_publish(out: &mut Vec<u8>, topic: &[u8], payload: &[u8]) {
    out.push(PUBLISH << 4);
    put_remaining(out, 2 + topic.len() + payload.len());
    put_str(out, topic);
    out.extend_from_slice(payload);
}

/// Appends a PINGREQ.
pub(crate) fn encode_pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[PINGREQ << 4, 0]);
}

/// A packet found at the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packet {
    /// The first byte: type in the high nibble, flags in the low one.
    pub(crate) first: u8,
    /// The variable header and payload, as a range of the buffer.
    pub(crate) body: Range<usize>,
}

impl Packet {
    /// The packet type.
    pub(crate) fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// Finds the packet at the front of `buf`: `Ok(None)` if it is incomplete,
/// otherwise the packet and the bytes it spans.
///
/// # Errors
/// A remaining length longer than four bytes.
pub(crate) fn decode_packet(buf: &[u8]) -> Result<Option<(Packet, usize)>, ProtoError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut shift = 0u32;
    let mut i = 1usize;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(ProtoError::Malformed("MQTT remaining length over 4 bytes"));
        }
    }
    if len > MAX_REMAINING {
        return Err(ProtoError::Malformed("MQTT remaining length too large"));
    }
    let end = i + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        Packet {
            first,
            body: i..end,
        },
        end,
    )))
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]))
}

/// Splits a PUBLISH body into (topic, payload) ranges of `buf`, skipping the
/// packet id of QoS 1 and 2 publishes.
///
/// # Errors
/// A topic length past the end of the packet.
pub(crate) fn parse_publish(
    buf: &[u8],
    p: &Packet,
) -> Result<(Range<usize>, Range<usize>), ProtoError> {
    let bad = ProtoError::Malformed("MQTT PUBLISH too short");
    let tlen = usize::from(read_u16(buf, p.body.start).ok_or(bad.clone())?);
    let topic = p.body.start + 2..p.body.start + 2 + tlen;
    let qos = (p.first >> 1) & 0x03;
    let payload_start = topic.end + if qos > 0 { 2 } else { 0 };
    if payload_start > p.body.end {
        return Err(bad);
    }
    Ok((topic, payload_start..p.body.end))
}

/// Splits a SUBSCRIBE body into (packet id, first topic filter range); used
/// by the test broker.
///
/// # Errors
/// A body too short for its topic.
#[cfg(test)]
pub(crate) fn parse_subscribe(buf: &[u8], p: &Packet) -> Result<(u16, Range<usize>), ProtoError> {
    let bad = ProtoError::Malformed("MQTT SUBSCRIBE too short");
    let id = read_u16(buf, p.body.start).ok_or(bad.clone())?;
    let tlen = usize::from(read_u16(buf, p.body.start + 2).ok_or(bad.clone())?);
    let topic = p.body.start + 4..p.body.start + 4 + tlen;
    if topic.end + 1 > p.body.end {
        return Err(bad);
    }
    Ok((id, topic))
}

/// Where a connection is in its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitConnack,
    AwaitSuback,
    Ready,
}

/// An MQTT member connection.
#[derive(Debug)]
pub(crate) struct Mqtt {
    client_id: String,
    topic: Vec<u8>,
    state: State,
}

const SUBSCRIBE_ID: u16 = 1;

impl Proto for Mqtt {
    type Ctx = ();

    fn new(member: &Member, _ctx: &()) -> Mqtt {
        Mqtt {
            client_id: format!("hl{}-{}", member.run_tag, member.index),
            topic: topic(member.group).into_bytes(),
            state: State::AwaitConnack,
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        encode_connect(out, &self.client_id, KEEP_ALIVE_SECS);
        let topic = String::from_utf8_lossy(&self.topic).into_owned();
        encode_subscribe(out, SUBSCRIBE_ID, &topic);
    }

    fn on_read(
        &mut self,
        buf: &[u8],
        _out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) -> Result<usize, ProtoError> {
        let mut at = 0;
        while let Some((p, n)) = decode_packet(buf.get(at..).unwrap_or_default())? {
            let p = Packet {
                first: p.first,
                body: p.body.start + at..p.body.end + at,
            };
            let body = buf.get(p.body.clone()).unwrap_or_default();
            match (p.kind(), self.state) {
                (PUBLISH, State::Ready) => {
                    let (_topic, payload) = parse_publish(buf, &p)?;
                    events.push(Event::Message(payload));
                }
                (CONNACK, State::AwaitConnack) => match body {
                    [_, 0] => self.state = State::AwaitSuback,
                    [_, code] => return Err(ProtoError::Refused(format!("CONNACK code {code}"))),
                    _ => return Err(ProtoError::Malformed("MQTT CONNACK length")),
                },
                (SUBACK, State::AwaitSuback) => match body {
                    [_, _, 0x80, ..] => return Err(ProtoError::Refused("SUBACK failure".into())),
                    [_, _, _, ..] => {
                        self.state = State::Ready;
                        events.push(Event::Ready);
                    }
                    _ => return Err(ProtoError::Malformed("MQTT SUBACK length")),
                },
                (PINGRESP, _) => events.push(Event::Pong),
                _ => return Err(ProtoError::Malformed("unexpected MQTT packet")),
            }
            at += n;
        }
        Ok(at)
    }

    fn publish(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        encode_publish(out, &self.topic, payload);
    }

    fn ping(&mut self, out: &mut Vec<u8>) {
        encode_pingreq(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_matches_the_spec_example_layout() {
        let mut out = Vec::new();
        encode_connect(&mut out, "ab", 60);
        assert_eq!(
            out,
            [
                0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'a', b'b'
            ]
        );
    }

    #[test]
    fn subscribe_and_publish_bytes() {
        let mut out = Vec::new();
        encode_subscribe(&mut out, 1, "t");
        assert_eq!(out, [0x82, 6, 0, 1, 0, 1, b't', 0]);
        out.clear();
        encode_publish(&mut out, b"t", b"xyz");
        assert_eq!(out, [0x30, 6, 0, 1, b't', b'x', b'y', b'z']);
        out.clear();
        encode_pingreq(&mut out);
        assert_eq!(out, [0xc0, 0]);
    }

    #[test]
    fn remaining_length_varint_boundaries() {
        for (n, bytes) in [
            (0usize, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (268_435_455, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut out = Vec::new();
            put_remaining(&mut out, n);
            assert_eq!(out, bytes, "{n}");
        }
    }

    #[test]
    fn decode_waits_for_a_whole_packet_and_rejects_long_lengths() {
        let mut out = Vec::new();
        encode_publish(&mut out, b"topic", &[7u8; 300]);
        for cut in 0..out.len() {
            assert_eq!(decode_packet(&out[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (p, n) = decode_packet(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        let (t, pl) = parse_publish(&out, &p).unwrap();
        assert_eq!(&out[t], b"topic");
        assert_eq!(&out[pl], &[7u8; 300][..]);
        assert!(decode_packet(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn publish_with_topic_past_the_end_is_an_error() {
        let buf = [0x30, 3, 0, 9, b'x'];
        let (p, _) = decode_packet(&buf).unwrap().unwrap();
        assert!(parse_publish(&buf, &p).is_err());
    }

    #[test]
    fn qos1_publish_skips_the_packet_id() {
        let buf = [0x32, 7, 0, 1, b't', 0, 9, b'h', b'i'];
        let (p, _) = decode_packet(&buf).unwrap().unwrap();
        let (_, pl) = parse_publish(&buf, &p).unwrap();
        assert_eq!(&buf[pl], b"hi");
    }

    #[test]
    fn session_becomes_ready_at_suback_and_yields_messages() {
        let m = Member {
            index: 3,
            group: 1,
            run_tag: 9,
        };
        let mut c = Mqtt::new(&m, &());
        let mut out = Vec::new();
        c.start(&mut out);
        let (p, n) = decode_packet(&out).unwrap().unwrap();
        assert_eq!(p.kind(), CONNECT);
        let (s, _) = decode_packet(&out[n..]).unwrap().unwrap();
        assert_eq!(s.kind(), SUBSCRIBE);

        let mut input = vec![0x20, 2, 0, 0, 0x90, 3, 0, 1, 0];
        encode_publish(&mut input, topic(1).as_bytes(), b"payload");
        input.extend_from_slice(&[0xd0, 0]);
        input.extend_from_slice(&[0x30]); // an incomplete packet stays unconsumed
        let mut ev = Vec::new();
        let used = c.on_read(&input, &mut out, &mut ev).unwrap();
        assert_eq!(used, input.len() - 1);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0], Event::Ready);
        let Event::Message(r) = ev[1].clone() else {
            panic!("{ev:?}")
        };
        assert_eq!(&input[r], b"payload");
        assert_eq!(ev[2], Event::Pong);
    }

    #[test]
    fn refusals_and_out_of_order_packets_are_errors() {
        let m = Member {
            index: 0,
            group: 0,
            run_tag: 0,
        };
        let mut ev = Vec::new();
        let mut out = Vec::new();
        let mut c = Mqtt::new(&m, &());
        assert!(matches!(
            c.on_read(&[0x20, 2, 0, 5], &mut out, &mut ev),
            Err(ProtoError::Refused(_))
        ));
        let mut c = Mqtt::new(&m, &());
        assert!(matches!(
            c.on_read(&[0x20, 2, 0, 0, 0x90, 3, 0, 1, 0x80], &mut out, &mut ev),
            Err(ProtoError::Refused(_))
        ));
        let mut c = Mqtt::new(&m, &());
        assert!(
            c.on_read(&[0x30, 3, 0, 1, b't'], &mut out, &mut ev)
                .is_err(),
            "PUBLISH before the session is ready"
        );
    }
}
