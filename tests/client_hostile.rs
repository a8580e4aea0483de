//! A hostile relay in the middle: a proxy between one client and the real
//! relay that renumbers deliveries (so it can insert its own) and tampers
//! with, replays and forges group messages. Whatever it does, the client
//! shows only what the real sender wrote, once, and warns about the rest.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers: a failure is a test failure"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes::client::net::{Client, ClientConfig};
use hermes::client::state::{InboxEntry, KdfCost};
use hermes::group::SenderKey;
use hermes::relay::{ServerConfig, spawn_relay};
use hermes::wire::{Deliver, EntryKind, Frame, split_frame};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// What the proxy does to group messages on their way to the client.
#[derive(Default)]
struct Plan {
    /// Flip a ciphertext byte of the n-th group message (1-based).
    tamper: Option<usize>,
    /// Deliver every group message twice.
    replay: bool,
    /// Insert a forged message claiming to be from this sender.
    forge_as: Option<String>,
    seen: usize,
}

#[derive(Default)]
struct Seqs {
    /// (proxy seq, relay seq) for everything forwarded.
    map: Vec<(u64, u64)>,
    next: u64,
}

fn pump_up(mut from: TcpStream, mut to: TcpStream, seqs: Arc<Mutex<Seqs>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some((frame, used))) = split_frame(&buf, 1 << 20) {
            let out = match Frame::decode(frame) {
                // Translate the client's ack back to the relay's numbers.
                Ok(Frame::Ack { up_to }) => {
                    let s = seqs.lock().unwrap();
                    let relay = s
                        .map
                        .iter()
                        .filter(|(p, _)| *p <= up_to)
                        .map(|(_, r)| *r)
                        .max()
                        .unwrap_or(0);
                    Frame::Ack { up_to: relay }.to_vec()
                }
                _ => buf[..used].to_vec(),
            };
            buf.drain(..used);
            if to.write_all(&out).is_err() {
                return;
            }
        }
    }
}

fn pump_down(
    mut from: TcpStream,
    mut to: TcpStream,
    seqs: Arc<Mutex<Seqs>>,
    plan: Arc<Mutex<Plan>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some((frame, used))) = split_frame(&buf, 1 << 20) {
            let mut out = Vec::new();
            match Frame::decode(frame) {
                Ok(Frame::Deliver(d)) => {
                    let mut s = seqs.lock().unwrap();
                    let mut p = plan.lock().unwrap();
                    let emit = |d: &Deliver<'_>, ct: &[u8], s: &mut Seqs, out: &mut Vec<u8>| {
                        s.next += 1;
                        let next = s.next;
                        s.map.push((next, d.seq));
                        Frame::Deliver(Deliver {
                            seq: next,
                            ciphertext: ct,
                            ..d.clone()
                        })
                        .encode(out);
                    };
                    if d.kind == EntryKind::GroupMessage {
                        p.seen += 1;
                        if let Some(who) = p.forge_as.take() {
                            let mut forger = SenderKey::generate(d.group_id, 1, &mut rand::rng());
                            let ct = forger.seal(0, &who, 1, [0x66; 16], b"forged").unwrap();
                            let fake = Deliver {
                                sender: &who,
                                message_id: [0x66; 16],
                                ..d.clone()
                            };
                            emit(&fake, &ct, &mut s, &mut out);
                        }
                        if p.tamper == Some(p.seen) {
                            let mut ct = d.ciphertext.to_vec();
                            let i = ct.len() / 2;
                            ct[i] ^= 0x80;
                            emit(&d, &ct, &mut s, &mut out);
                        } else {
                            emit(&d, d.ciphertext, &mut s, &mut out);
                        }
                        if p.replay {
                            emit(&d, d.ciphertext, &mut s, &mut out);
                        }
                    } else {
                        emit(&d, d.ciphertext, &mut s, &mut out);
                    }
                }
                Ok(Frame::GapNotice(mut g)) => {
                    let mut s = seqs.lock().unwrap();
                    s.next += 1;
                    let next = s.next;
                    s.map.push((next, g.seq));
                    g.seq = next;
                    Frame::GapNotice(g).encode(&mut out);
                }
                _ => {
                    out.extend_from_slice(&u32::try_from(frame.len()).unwrap().to_be_bytes());
                    out.extend_from_slice(frame);
                }
            }
            buf.drain(..used);
            if to.write_all(&out).is_err() {
                return;
            }
        }
    }
}

/// A proxy to `relay` for one client at a time.
fn proxy(relay: SocketAddr, plan: Arc<Mutex<Plan>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let seqs = Arc::new(Mutex::new(Seqs::default()));
        for client in l.incoming() {
            let Ok(client) = client else { return };
            let up = TcpStream::connect(relay).unwrap();
            // A new login resumes after the relay's ack position: start a
            // fresh numbering above everything used so far.
            {
                let mut s = seqs.lock().unwrap();
                s.next += 1_000;
            }
            let (c2, u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
            let s2 = seqs.clone();
            std::thread::spawn(move || pump_up(c2, u2, s2));
            let (s3, p3) = (seqs.clone(), plan.clone());
            std::thread::spawn(move || pump_down(up, client, s3, p3));
        }
    });
    addr
}

fn config(addr: &str, user: &str, root: &Path) -> ClientConfig {
    let mut c = ClientConfig::new(addr, user, root.to_path_buf());
    c.kdf = KdfCost::insecure_for_tests(1);
    c
}

fn read(c: &mut Client<StdRng>) -> Vec<InboxEntry> {
    c.receive(Duration::ZERO, Duration::from_millis(300))
        .unwrap();
    c.take_inbox().unwrap().0
}

fn lines(v: &[InboxEntry]) -> Vec<String> {
    v.iter()
        .map(|e| {
            if e.notice {
                format!("* {}", e.text)
            } else {
                format!("{}: {}", e.sender, e.text)
            }
        })
        .collect()
}

#[test]
fn tampered_replayed_and_forged_messages_are_refused_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::ephemeral_in(&tmp.path().join("relay"));
    cfg.core.registrations_per_minute = 100_000;
    let relay = spawn_relay(cfg).unwrap();
    let plan = Arc::new(Mutex::new(Plan::default()));
    let bad = proxy(relay.addr(), plan.clone()).to_string();
    let good = relay.addr().to_string();
    let root = tmp.path().join("clients");
    let mut alice = Client::register(
        config(&good, "alice", &root),
        b"pw",
        StdRng::seed_from_u64(1),
    )
    .unwrap();
    let mut bob =
        Client::register(config(&bad, "bob", &root), b"pw", StdRng::seed_from_u64(2)).unwrap();
    alice.create_group("crew", &["bob".into()]).unwrap();
    {
        let mut p = plan.lock().unwrap();
        p.tamper = Some(2);
        p.replay = true;
        p.forge_as = Some("alice".into());
    }
    for t in ["one", "two", "three"] {
        alice.send_text("crew", t).unwrap();
    }
    let got = lines(&read(&mut bob));
    let shown: Vec<&String> = got.iter().filter(|l| !l.starts_with("* ")).collect();
    // Each real message exactly once: the tampered copy of "two" is refused
    // and its genuine replay shown; every other replay is dropped.
    assert_eq!(
        shown,
        ["alice: one", "alice: two", "alice: three"],
        "{got:?}"
    );
    let warnings = got
        .iter()
        .filter(|l| l.contains("failed verification and was not shown"))
        .count();
    assert_eq!(warnings, 2, "the forgery and the tampered copy: {got:?}");
    // The conversation goes on; the relay saw bob's acks (nothing is
    // re-delivered on the next login).
    plan.lock().unwrap().replay = false;
    alice.send_text("crew", "four").unwrap();
    assert_eq!(lines(&read(&mut bob)), ["alice: four"]);
    bob.disconnect();
    assert!(read(&mut bob).is_empty());
}
