//! A raw protocol client over a blocking socket, built only from
//! `hermes::wire` (no client session, no crypto beyond the login
//! signature), for tests that drive a real relay.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    reason = "test harness: a failed step is a failed test"
)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use hermes::crypto::dh::{DhGroup, DhPublicKey};
use hermes::crypto::identity::{PublicIdentity, SigningKeyPair, certificate_message};
use hermes::membership::Commit;
use hermes::wire::{
    EntryKind, ErrorCode, Frame, GroupId, MessageId, login_message, register_message, split_frame,
};

/// How long any blocking read may wait before the test fails (bounded tests).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One decoded relay frame, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Hello {
        challenge: [u8; 32],
        relay_key: [u8; 32],
    },
    Authenticated {
        name: String,
        acked: u64,
    },
    Deliver {
        seq: u64,
        sender: String,
        kind: EntryKind,
        message_id: MessageId,
        ciphertext: Vec<u8>,
    },
    Gap {
        seq: u64,
        count: u32,
    },
    Receipt {
        message_id: MessageId,
        seq: u64,
    },
    Error {
        code: u16,
        refers_to: u8,
    },
    CommitAccepted {
        epoch: u64,
    },
    Pong {
        nonce: u64,
    },
    Other(u8),
}

impl Got {
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Got::Error { code, .. } => ErrorCode::from_u16(*code),
            _ => None,
        }
    }
}

fn parse(frame: &[u8]) -> Got {
    match Frame::decode(frame).expect("relay output decodes") {
        Frame::Hello(h) => Got::Hello {
            challenge: h.challenge,
            relay_key: h.relay_key,
        },
        Frame::Authenticated { name, acked } => Got::Authenticated {
            name: name.into(),
            acked,
        },
        Frame::Deliver(d) => Got::Deliver {
            seq: d.seq,
            sender: d.sender.into(),
            kind: d.kind,
            message_id: d.message_id,
            ciphertext: d.ciphertext.to_vec(),
        },
        Frame::GapNotice(g) => Got::Gap {
            seq: g.seq,
            count: g.count,
        },
        Frame::StoredReceipt {
            message_id, seq, ..
        } => Got::Receipt { message_id, seq },
        Frame::Error(e) => Got::Error {
            code: e.code,
            refers_to: e.refers_to,
        },
        Frame::CommitAccepted { epoch, .. } => Got::CommitAccepted { epoch },
        Frame::Pong { nonce } => Got::Pong { nonce },
        f => Got::Other(f.kind() as u8),
    }
}

/// A test user: name, Ed25519 key, encoded public identity (with a fake but
/// well-formed DH key: the relay only checks the certificate signature).
pub struct User {
    pub name: String,
    pub keys: SigningKeyPair,
    pub identity: Vec<u8>,
}

impl User {
    pub fn new(name: &str, seed: u64) -> Self {
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&seed.to_be_bytes());
        secret[8..16].copy_from_slice(&(name.len() as u64).to_be_bytes());
        for (i, b) in name.bytes().enumerate().take(16) {
            secret[16 + i] = b;
        }
        let keys = SigningKeyPair::from_secret_bytes(&secret);
        let mut dh = vec![0u8; DhGroup::Ffdhe2048.modulus_len()];
        dh[0] = 0x40;
        dh[1..9].copy_from_slice(&seed.to_be_bytes());
        let dh_public = DhPublicKey::from_bytes(DhGroup::Ffdhe2048, &dh).unwrap();
        let certificate = keys.sign(&certificate_message(&dh_public));
        let identity = PublicIdentity {
            signing_key: keys.public_key(),
            dh_public,
            certificate,
        }
        .encode();
        Self {
            name: name.into(),
            keys,
            identity,
        }
    }
}

/// A blocking connection speaking raw frames.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub challenge: [u8; 32],
    pub relay_key: [u8; 32],
}

impl RawClient {
    /// Connects and reads the hello.
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut c = Self {
            stream,
            buf: Vec::new(),
            challenge: [0; 32],
            relay_key: [0; 32],
        };
        match c.recv() {
            Some(Got::Hello {
                challenge,
                relay_key,
            }) => {
                c.challenge = challenge;
                c.relay_key = relay_key;
            }
            other => panic!("expected hello, got {other:?}"),
        }
        c
    }

    /// Connects and registers `u`; panics unless authenticated.
    pub fn register(addr: SocketAddr, u: &User) -> Self {
        let mut c = Self::connect(addr);
        let proof = u
            .keys
            .sign(&register_message(&c.challenge, &c.relay_key, &u.name));
        c.send(&Frame::Register {
            name: &u.name,
            identity: &u.identity,
            proof,
        });
        match c.recv() {
            Some(Got::Authenticated { .. }) => c,
            other => panic!("register {}: {other:?}", u.name),
        }
    }

    /// Connects and logs in as `u`; returns the client and its ack position.
    pub fn login(addr: SocketAddr, u: &User) -> (Self, u64) {
        let mut c = Self::connect(addr);
        let signature = u
            .keys
            .sign(&login_message(&c.challenge, &c.relay_key, &u.name));
        c.send(&Frame::Login {
            name: &u.name,
            signature,
        });
        match c.recv() {
            Some(Got::Authenticated { acked, .. }) => (c, acked),
            other => panic!("login {}: {other:?}", u.name),
        }
    }

    pub fn send(&mut self, f: &Frame<'_>) {
        self.stream.write_all(&f.to_vec()).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next frame; `None` once the relay closed the connection.
    pub fn recv(&mut self) -> Option<Got> {
        loop {
            if let Some((frame, n)) = split_frame(&self.buf, 1 << 24).unwrap() {
                let got = parse(frame);
                self.buf.drain(..n);
                return Some(got);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Frames until `pred` matches one (returned last), or panics at EOF.
    pub fn recv_until(&mut self, mut pred: impl FnMut(&Got) -> bool) -> Vec<Got> {
        let mut out = Vec::new();
        loop {
            let g = self.recv().expect("connection closed while waiting");
            let done = pred(&g);
            out.push(g);
            if done {
                return out;
            }
        }
    }

    /// Creates a group of `members` (admin first) and waits for acceptance.
    pub fn create_group(&mut self, admin: &User, members: &[&User], gid: GroupId) {
        let roster = members
            .iter()
            .map(|m| (m.name.clone(), m.keys.public_key()))
            .collect();
        let genesis = Commit::genesis(gid, "g".into(), admin.name.clone(), roster, |m| {
            admin.keys.sign(m)
        })
        .unwrap();
        self.send(&Frame::CreateGroup {
            genesis: &genesis.encode(),
        });
        self.recv_until(|g| matches!(g, Got::CommitAccepted { epoch: 0 }));
    }

    pub fn group_send(&mut self, gid: GroupId, message_id: MessageId, text: &[u8]) {
        self.send(&Frame::GroupSend {
            group_id: gid,
            epoch: 0,
            message_id,
            ciphertext: text,
        });
    }
}

/// Message id `n` of sender `s`.
pub fn mid(s: u32, n: u32) -> MessageId {
    let mut m = [0u8; 16];
    m[..4].copy_from_slice(&s.to_be_bytes());
    m[4..8].copy_from_slice(&n.to_be_bytes());
    m
}

/// True for a delivered group message.
pub fn is_message(g: &Got) -> bool {
    matches!(
        g,
        Got::Deliver {
            kind: EntryKind::GroupMessage,
            ..
        }
    )
}
