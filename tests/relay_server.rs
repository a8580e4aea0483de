//! The relay as a server: real sockets on 127.0.0.1, raw protocol clients
//! (`tests/support`), the in-process relay (`spawn_relay`) and the real
//! binary as a child process (SIGKILL and restart, memory of a relay with a
//! client that never reads, SIGTERM). Every wait is bounded by a read
//! timeout; nothing asserts on timing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    reason = "test harness: a failed step is a failed test"
)]

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hermes::relay::{ServerConfig, spawn_relay};
use hermes::wire::{ErrorCode, Frame, FrameKind};
use support::{Got, RawClient, User, is_message, mid};

fn test_config() -> ServerConfig {
    let mut c = ServerConfig::ephemeral();
    c.core.registrations_per_minute = 1_000_000;
    c.max_frames_per_sec = 1_000_000;
    c
}

#[test]
fn login_fanout_offline_delivery_and_ack() {
    let relay = spawn_relay(test_config()).unwrap();
    let addr = relay.addr();
    let (alice, bob, carol) = (
        User::new("alice", 1),
        User::new("bob", 2),
        User::new("carol", 3),
    );
    let mut a = RawClient::register(addr, &alice);
    let mut b = RawClient::register(addr, &bob);
    drop(RawClient::register(addr, &carol)); // carol is offline from now on
    let gid = [7; 16];
    a.create_group(&alice, &[&alice, &bob, &carol], gid);

    for i in 0..5 {
        a.group_send(gid, mid(1, i), format!("m{i}").as_bytes());
    }
    // Five stored receipts, in order.
    let receipts: Vec<_> = (0..5)
        .map(|_| {
            a.recv_until(|g| matches!(g, Got::Receipt { .. }))
                .pop()
                .unwrap()
        })
        .collect();
    for (i, r) in receipts.iter().enumerate() {
        assert!(matches!(r, Got::Receipt { message_id, .. } if *message_id == mid(1, i as u32)));
    }
    // Bob (online) gets them pushed, in order, from alice.
    let mut got = Vec::new();
    while got.len() < 5 {
        let g = b.recv().unwrap();
        if is_message(&g) {
            got.push(g);
        }
    }
    let texts: Vec<Vec<u8>> = got
        .iter()
        .map(|g| match g {
            Got::Deliver {
                ciphertext, sender, ..
            } => {
                assert_eq!(sender, "alice");
                ciphertext.clone()
            }
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        texts,
        (0..5)
            .map(|i| format!("m{i}").into_bytes())
            .collect::<Vec<_>>()
    );
    let seq_of = |g: &Got| match g {
        Got::Deliver { seq, .. } => *seq,
        _ => unreachable!(),
    };
    // Bob acks the first three and reconnects: resumes after them.
    let third = seq_of(&got[2]);
    b.send(&Frame::Ack { up_to: third });
    b.send(&Frame::Ping { nonce: 9 });
    b.recv_until(|g| matches!(g, Got::Pong { nonce: 9 }));
    drop(b);
    let (mut b2, acked) = RawClient::login(addr, &bob);
    assert_eq!(acked, third);
    let mut again = Vec::new();
    while again.len() < 2 {
        let g = b2.recv().unwrap();
        if is_message(&g) {
            again.push(seq_of(&g));
        }
    }
    assert_eq!(again, vec![seq_of(&got[3]), seq_of(&got[4])]);

    // Carol logs in later: the commit, then all five.
    let (mut c, acked) = RawClient::login(addr, &carol);
    assert_eq!(acked, 0);
    let first = c.recv().unwrap();
    assert!(
        matches!(
            first,
            Got::Deliver {
                kind: hermes::wire::EntryKind::Commit,
                ..
            }
        ),
        "{first:?}"
    );
    let mut n = 0;
    while n < 5 {
        if is_message(&c.recv().unwrap()) {
            n += 1;
        }
    }
    relay.join().unwrap();
}

#[test]
fn thousand_concurrent_connections_exchange_messages() {
    const GROUPS: usize = 100;
    const PER_GROUP: usize = 10;
    let relay = spawn_relay(test_config()).unwrap();
    let addr = relay.addr();
    let users: Vec<User> = (0..GROUPS * PER_GROUP)
        .map(|i| User::new(&format!("u{i}"), i as u64))
        .collect();
    let mut clients: Vec<RawClient> = users.iter().map(|u| RawClient::register(addr, u)).collect();
    for g in 0..GROUPS {
        let members: Vec<&User> = users[g * PER_GROUP..(g + 1) * PER_GROUP].iter().collect();
        let mut gid = [0u8; 16];
        gid[..8].copy_from_slice(&(g as u64).to_be_bytes());
        clients[g * PER_GROUP].create_group(members[0], &members, gid);
    }
    // Everyone sends one message to its group (all 1,000 connections open).
    for (i, c) in clients.iter_mut().enumerate() {
        let mut gid = [0u8; 16];
        gid[..8].copy_from_slice(&((i / PER_GROUP) as u64).to_be_bytes());
        c.group_send(gid, mid(i as u32, 0), format!("from u{i}").as_bytes());
    }
    // Everyone receives the other nine members' messages.
    for (i, c) in clients.iter_mut().enumerate() {
        let mut senders = BTreeSet::new();
        while senders.len() < PER_GROUP - 1 {
            match c.recv().unwrap() {
                Got::Deliver {
                    kind: hermes::wire::EntryKind::GroupMessage,
                    sender,
                    ciphertext,
                    ..
                } => {
                    assert_eq!(ciphertext, format!("from {sender}").into_bytes());
                    assert!(senders.insert(sender));
                }
                Got::Error { code, .. } => panic!("u{i}: error {code}"),
                _ => {}
            }
        }
        assert!(!senders.contains(&format!("u{i}")));
    }
    relay.join().unwrap();
}

#[test]
fn malformed_input_gets_error_and_close_while_others_chat() {
    let relay = spawn_relay(test_config()).unwrap();
    let addr = relay.addr();
    let (alice, bob) = (User::new("alice", 1), User::new("bob", 2));
    let mut a = RawClient::register(addr, &alice);
    let mut b = RawClient::register(addr, &bob);
    let gid = [9; 16];
    a.create_group(&alice, &[&alice, &bob], gid);
    let mut n = 0u32;
    let mut chat = |a: &mut RawClient, b: &mut RawClient| {
        a.group_send(gid, mid(1, n), b"still here");
        loop {
            if let Got::Deliver { message_id, .. } = b.recv().unwrap()
                && message_id == mid(1, n)
            {
                break;
            }
        }
        n += 1;
    };
    chat(&mut a, &mut b);

    // Each bad input: an error frame with the right code, then the relay
    // closes (EOF), and alice and bob carry on.
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |len: usize| {
        (0..len)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state as u8
            })
            .collect::<Vec<u8>>()
    };
    let mut garbage = random(512);
    garbage[0] = 0xa5; // the length prefix announces gigabytes
    let mut bad_version = vec![0, 0, 0, 100];
    bad_version.extend(random(100));
    bad_version[4] = 0xf0; // unknown version byte
    let truncated_ping = {
        // A ping frame whose body is 3 of its 8 bytes.
        let mut f = vec![0, 0, 0, 5, 1, FrameKind::Ping as u8];
        f.extend([1, 2, 3]);
        f
    };
    let unknown_kind = vec![0, 0, 0, 2, 1, 0x7f];
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("random bytes", garbage, ErrorCode::FrameTooLarge),
        (
            "absurd length",
            vec![0xff, 0xff, 0xff, 0xff, 1, 0x2b],
            ErrorCode::FrameTooLarge,
        ),
        (
            "random body, bad version",
            bad_version,
            ErrorCode::UnknownVersion,
        ),
        ("truncated frame", truncated_ping, ErrorCode::Malformed),
        ("unknown kind", unknown_kind, ErrorCode::UnknownKind),
        ("too short", vec![0, 0, 0, 1, 1], ErrorCode::Malformed),
    ];
    for (what, bytes, code) in cases {
        let mut bad = RawClient::connect(addr);
        bad.send_raw(&bytes).unwrap();
        let got = bad.recv();
        assert_eq!(
            got.as_ref().and_then(Got::error_code),
            Some(code),
            "{what}: {got:?}"
        );
        assert_eq!(bad.recv(), None, "{what}: the relay must close");
        chat(&mut a, &mut b);
    }

    // A relay-to-client kind, and a request before login: refused with an
    // error, the connection stays usable (the stream is still in sync).
    let mut wrong = RawClient::connect(addr);
    wrong.send(&Frame::Pong { nonce: 1 });
    assert_eq!(
        wrong.recv().as_ref().and_then(Got::error_code),
        Some(ErrorCode::UnexpectedFrame)
    );
    wrong.send(&Frame::ListGroups);
    assert_eq!(
        wrong.recv().as_ref().and_then(Got::error_code),
        Some(ErrorCode::NotAuthenticated)
    );
    wrong.send(&Frame::Ping { nonce: 5 });
    assert_eq!(wrong.recv(), Some(Got::Pong { nonce: 5 }));

    // A frame split across many writes (one byte at a time) still works.
    let bytes = Frame::Ping { nonce: 77 }.to_vec();
    for byte in &bytes {
        wrong.send_raw(std::slice::from_ref(byte)).unwrap();
        wrong.stream.flush().unwrap();
    }
    assert_eq!(wrong.recv(), Some(Got::Pong { nonce: 77 }));
    chat(&mut a, &mut b);
    relay.join().unwrap();
}

#[test]
fn handshake_timeout_closes_connections_that_never_log_in() {
    let mut config = test_config();
    config.handshake_timeout = Duration::from_millis(200);
    let relay = spawn_relay(config).unwrap();
    let mut idle = RawClient::connect(relay.addr());
    // Pings do not extend the handshake.
    idle.send(&Frame::Ping { nonce: 1 });
    assert_eq!(idle.recv(), Some(Got::Pong { nonce: 1 }));
    let got = idle.recv();
    assert_eq!(
        got.as_ref().and_then(Got::error_code),
        Some(ErrorCode::NotAuthenticated),
        "{got:?}"
    );
    assert_eq!(idle.recv(), None);
    // A client that logs in in time is not affected.
    let alice = User::new("alice", 1);
    let mut a = RawClient::register(relay.addr(), &alice);
    std::thread::sleep(Duration::from_millis(400));
    a.send(&Frame::Ping { nonce: 2 });
    assert_eq!(a.recv(), Some(Got::Pong { nonce: 2 }));
    relay.join().unwrap();
}

#[test]
fn max_connections_gates_accepts_until_a_slot_frees() {
    let mut config = test_config();
    config.max_connections = Some(2);
    let relay = spawn_relay(config).unwrap();
    let addr = relay.addr();
    let first = RawClient::connect(addr);
    let _second = RawClient::connect(addr);
    // The third connects (kernel backlog) but gets no hello while full.
    let mut third = TcpStream::connect(addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 4];
    let r = third.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "{r:?}"
    );
    // A slot frees: the waiting connection is accepted and greeted.
    drop(first);
    third.set_read_timeout(Some(support::READ_TIMEOUT)).unwrap();
    third.read_exact(&mut buf).unwrap();
    assert!(u32::from_be_bytes(buf) > 2);
    relay.join().unwrap();
}

#[test]
fn metrics_endpoint_serves_prometheus_text_from_the_loop() {
    let mut config = test_config();
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    let relay = spawn_relay(config).unwrap();
    let alice = User::new("alice", 1);
    let mut a = RawClient::register(relay.addr(), &alice);
    a.send(&Frame::Ping { nonce: 3 });
    assert_eq!(a.recv(), Some(Got::Pong { nonce: 3 }));
    let body = http_get(relay.metrics_addr().unwrap(), "/metrics");
    assert!(body.starts_with("HTTP/1.0 200 OK\r\n"), "{body}");
    assert!(body.contains("hermes_logins_total 1\n"), "{body}");
    assert!(body.contains("hermes_connections_open 1\n"), "{body}");
    assert!(
        body.contains("hermes_frames_received_total{kind=\"Ping\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("hermes_frames_received_total{kind=\"Register\"} 1\n"),
        "{body}"
    );
    assert!(http_get(relay.metrics_addr().unwrap(), "/nope").starts_with("HTTP/1.0 404"));
    relay.join().unwrap();
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(support::READ_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

// ---------------------------------------------------------------------------
// The real binary as a child process.
// ---------------------------------------------------------------------------

struct ChildRelay {
    child: Child,
    addr: SocketAddr,
}

impl ChildRelay {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hermes"))
            .args(["relay", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args([
                "--max-registrations-per-sec",
                "100000",
                "--max-frames-per-sec",
                "1000000",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listen=").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(support::READ_TIMEOUT)
            .expect("relay logs its address");
        Self {
            child,
            addr: addr.parse().unwrap(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Anonymous resident memory (heap, stacks) in KiB: the memory-mapped
    /// mailbox is file-backed and not counted.
    fn rss_anon_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for ChildRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigkill_mid_stream_then_restart_delivers_every_receipted_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = ChildRelay::start(dir.path(), &[]);
    let (alice, bob) = (User::new("alice", 1), User::new("bob", 2));
    let mut a = RawClient::register(relay.addr, &alice);
    drop(RawClient::register(relay.addr, &bob)); // bob reads after the restart
    let gid = [3; 16];
    a.create_group(&alice, &[&alice, &bob], gid);

    // A writer thread streams sends; this thread reads receipts and kills
    // the relay after the 200th, while sends are still in flight.
    let mut writer = a.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut sent = 0u32;
        for i in 0..100_000u32 {
            let f = Frame::GroupSend {
                group_id: gid,
                epoch: 0,
                message_id: mid(1, i),
                ciphertext: format!("msg {i}").as_bytes(),
            }
            .to_vec();
            if writer.write_all(&f).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut receipted = BTreeSet::new();
    loop {
        match a.recv() {
            Some(Got::Receipt { message_id, .. }) => {
                receipted.insert(message_id);
                if receipted.len() == 200 {
                    relay.child.kill().unwrap(); // SIGKILL
                    relay.child.wait().unwrap();
                }
            }
            Some(Got::Deliver { .. }) => {} // the group's own commit
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    let sent = sender.join().unwrap();
    assert!(
        receipted.len() >= 200,
        "receipts before the kill: {}",
        receipted.len()
    );
    assert!((sent as usize) > receipted.len() || sent == 100_000);

    // Restart on the same data dir: every receipted message reaches bob.
    let relay2 = ChildRelay::start(dir.path(), &[]);
    let (mut b, _) = RawClient::login(relay2.addr, &bob);
    let mut missing = receipted.clone();
    let mut seen = BTreeSet::new();
    while !missing.is_empty() {
        if let Got::Deliver {
            kind: hermes::wire::EntryKind::GroupMessage,
            message_id,
            ciphertext,
            ..
        } = b
            .recv()
            .expect("relay closed before delivering every receipted message")
        {
            let n = u32::from_be_bytes(message_id[4..8].try_into().unwrap());
            assert_eq!(ciphertext, format!("msg {n}").into_bytes());
            assert!(seen.insert(message_id), "delivered twice");
            missing.remove(&message_id);
        }
    }
    drop(relay2);
}

#[test]
fn a_client_that_never_reads_keeps_relay_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let relay = ChildRelay::start(dir.path(), &[]);
    let (alice, bob, lazy) = (
        User::new("alice", 1),
        User::new("bob", 2),
        User::new("lazy", 3),
    );
    let mut a = RawClient::register(relay.addr, &alice);
    let mut b = RawClient::register(relay.addr, &bob);
    let l = RawClient::register(relay.addr, &lazy);
    let gid = [4; 16];
    a.create_group(&alice, &[&alice, &bob, &lazy], gid);
    let payload = vec![0x5a; 8 * 1024];
    let round = |a: &mut RawClient, b: &mut RawClient, from: u32, count: u32| {
        for i in from..from + count {
            a.group_send(gid, mid(1, i), &payload);
        }
        let mut n = 0;
        while n < count {
            if is_message(&b.recv().unwrap()) {
                n += 1;
            }
        }
        let mut r = 0;
        while r < count {
            if matches!(a.recv().unwrap(), Got::Receipt { .. }) {
                r += 1;
            }
        }
    };
    // Warm up (buffers, maps), then measure while 30 MiB pile up for lazy.
    round(&mut a, &mut b, 0, 256);
    let before = relay.rss_anon_kib();
    for k in 1..16 {
        round(&mut a, &mut b, k * 256, 256);
    }
    let after = relay.rss_anon_kib();
    // Lazy's socket buffers fill up (a few MiB at most, in the kernel);
    // the relay holds at most RELAY_OUTPUT_BOUND for it and reads the rest
    // from the mailbox later. Without the bound it would hold ~30 MiB.
    let growth = after.saturating_sub(before);
    eprintln!("relay RssAnon before {before} KiB, after {after} KiB, growth {growth} KiB");
    assert!(
        growth < 16 * 1024,
        "relay heap grew by {growth} KiB (before {before}, after {after})"
    );
    // Bob kept chatting the whole time; lazy's connection is still open.
    b.send(&Frame::Ping { nonce: 1 });
    assert_eq!(
        b.recv_until(|g| matches!(g, Got::Pong { .. })).pop(),
        Some(Got::Pong { nonce: 1 })
    );
    drop(l);
}

#[test]
fn sigterm_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = ChildRelay::start(dir.path(), &[]);
    let alice = User::new("alice", 1);
    let mut a = RawClient::register(relay.addr, &alice);
    let status = Command::new("kill")
        .args(["-TERM", &relay.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = relay.child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    // The relay closed the connection on its way out.
    assert_eq!(a.recv(), None);
    // The data dir is reusable (lock released) and the identity is kept.
    let relay2 = ChildRelay::start(dir.path(), &[]);
    let c = RawClient::connect(relay2.addr);
    assert_eq!(c.relay_key, a.relay_key);
    let (_, acked) = RawClient::login(relay2.addr, &alice);
    assert_eq!(acked, 0);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join(hermes::relay::event_loop::IDENTITY_FILE))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn an_idle_logged_in_connection_costs_well_under_a_kibibyte() {
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let relay = ChildRelay::start(dir.path(), &[]);
    let users: Vec<User> = (0..N)
        .map(|i| User::new(&format!("idle{i}"), i as u64))
        .collect();
    // Accounts first: their state is per user, not per connection. The
    // growth measured below includes the connection tables' own growth
    // (slab, core session map), so it is the cold cost.
    for u in &users {
        drop(RawClient::register(relay.addr, u));
    }
    // Let the relay see the closes.
    let mut probe = RawClient::login(relay.addr, &users[0]).0;
    probe.send(&Frame::Ping { nonce: 1 });
    assert_eq!(probe.recv(), Some(Got::Pong { nonce: 1 }));
    let before = relay.rss_anon_kib();
    let idle: Vec<RawClient> = users
        .iter()
        .map(|u| RawClient::login(relay.addr, u).0)
        .collect();
    probe.send(&Frame::Ping { nonce: 2 });
    assert_eq!(probe.recv(), Some(Got::Pong { nonce: 2 }));
    let after = relay.rss_anon_kib();
    let per_conn = after.saturating_sub(before) * 1024 / N as u64;
    eprintln!(
        "relay RssAnon {before} KiB -> {after} KiB with {N} idle logged-in connections: {per_conn} B each"
    );
    assert!(per_conn < 1024, "{per_conn} bytes per idle connection");
    drop(idle);
}

#[test]
fn frames_over_the_per_connection_rate_wait_and_are_not_dropped() {
    let mut config = test_config();
    config.max_frames_per_sec = 50;
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    let relay = spawn_relay(config).unwrap();
    let mut c = RawClient::connect(relay.addr());
    // 120 pings in one write: more than the 50-frame burst.
    let mut burst = Vec::new();
    for nonce in 0..120 {
        Frame::Ping { nonce }.encode(&mut burst);
    }
    c.send_raw(&burst).unwrap();
    for nonce in 0..120 {
        assert_eq!(c.recv(), Some(Got::Pong { nonce }));
    }
    let body = http_get(relay.metrics_addr().unwrap(), "/metrics");
    let throttled: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("hermes_throttled_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(throttled > 0, "{body}");
    relay.join().unwrap();
}

#[test]
fn a_maximal_frame_crosses_read_buffer_budget_and_output_bound() {
    // One ciphertext larger than RELAY_READ_CHUNK, RELAY_READ_BUDGET_PER_PASS
    // and RELAY_OUTPUT_BOUND: read over several passes, written whole.
    use hermes::limits::{RELAY_OUTPUT_BOUND, RELAY_READ_BUDGET_PER_PASS, RELAY_READ_CHUNK};
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    assert!(
        big.len() > RELAY_READ_CHUNK
            && big.len() > RELAY_READ_BUDGET_PER_PASS
            && big.len() > RELAY_OUTPUT_BOUND
    );
    let relay = spawn_relay(test_config()).unwrap();
    let (alice, bob) = (User::new("alice", 1), User::new("bob", 2));
    let mut a = RawClient::register(relay.addr(), &alice);
    let mut b = RawClient::register(relay.addr(), &bob);
    let gid = [5; 16];
    a.create_group(&alice, &[&alice, &bob], gid);
    for i in 0..3 {
        a.group_send(gid, mid(1, i), &big);
    }
    for _ in 0..3 {
        a.recv_until(|g| matches!(g, Got::Receipt { .. }));
    }
    let mut n = 0;
    while n < 3 {
        if let Got::Deliver {
            kind: hermes::wire::EntryKind::GroupMessage,
            ciphertext,
            ..
        } = b.recv().unwrap()
        {
            assert!(ciphertext == big, "ciphertext {n} altered");
            n += 1;
        }
    }
    // One byte over the configured maximum: refused with FrameTooLarge.
    let mut over = RawClient::connect(relay.addr());
    let len = u32::try_from(hermes::limits::MAX_FRAME_LEN + 1).unwrap();
    over.send_raw(&len.to_be_bytes()).unwrap();
    assert_eq!(
        over.recv().as_ref().and_then(Got::error_code),
        Some(ErrorCode::FrameTooLarge)
    );
    relay.join().unwrap();
}

#[test]
fn fsync_always_receipts_come_through_the_waker() {
    // Receipts are held until the sync thread's msync covers the record
    // and wakes the loop; without the waker path they would never arrive.
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::ephemeral_in(dir.path());
    config.fsync = hermes::mailbox::FsyncPolicy::Always;
    config.core.registrations_per_minute = 1_000_000;
    let relay = spawn_relay(config).unwrap();
    let (alice, bob) = (User::new("alice", 1), User::new("bob", 2));
    let mut a = RawClient::register(relay.addr(), &alice);
    let mut b = RawClient::register(relay.addr(), &bob);
    let gid = [6; 16];
    a.create_group(&alice, &[&alice, &bob], gid);
    for i in 0..50 {
        a.group_send(gid, mid(1, i), b"durable");
    }
    let mut receipts = BTreeSet::new();
    while receipts.len() < 50 {
        if let Got::Receipt { message_id, .. } = a.recv().unwrap() {
            receipts.insert(message_id);
        }
    }
    assert_eq!(receipts, (0..50).map(|i| mid(1, i)).collect());
    let mut n = 0;
    while n < 50 {
        if is_message(&b.recv().unwrap()) {
            n += 1;
        }
    }
    relay.join().unwrap();
}

#[test]
fn idle_connections_are_closed_and_pings_keep_one_alive() {
    let mut config = test_config();
    config.core.idle_timeout = Duration::from_millis(300);
    let relay = spawn_relay(config).unwrap();
    let (alice, bob) = (User::new("alice", 1), User::new("bob", 2));
    let mut silent = RawClient::register(relay.addr(), &alice);
    let mut pinger = RawClient::register(relay.addr(), &bob);
    // Bob pings well within the timeout until alice has been closed.
    let (tx, rx) = mpsc::channel();
    let watcher = std::thread::spawn(move || {
        let closed = silent.recv();
        tx.send(()).unwrap();
        closed
    });
    let mut nonce = 0;
    while rx.try_recv().is_err() {
        pinger.send(&Frame::Ping { nonce });
        assert_eq!(
            pinger.recv(),
            Some(Got::Pong { nonce }),
            "the pinging client was closed"
        );
        nonce += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(watcher.join().unwrap(), None, "the silent client gets EOF");
    pinger.send(&Frame::Ping { nonce: 999 });
    assert_eq!(pinger.recv(), Some(Got::Pong { nonce: 999 }));
    relay.join().unwrap();
}

#[test]
fn a_client_that_half_closes_still_gets_its_answers() {
    let relay = spawn_relay(test_config()).unwrap();
    let mut c = RawClient::connect(relay.addr());
    c.send(&Frame::Ping { nonce: 1 });
    c.send(&Frame::Ping { nonce: 2 });
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.recv(), Some(Got::Pong { nonce: 1 }));
    assert_eq!(c.recv(), Some(Got::Pong { nonce: 2 }));
    assert_eq!(c.recv(), None);
    relay.join().unwrap();
}

#[test]
fn relay_command_line_maps_to_the_config() {
    use clap::Parser;
    use hermes::cli::{Cli, Command};
    let cli = Cli::try_parse_from([
        "hermes",
        "relay",
        "--listen",
        "127.0.0.1:4000",
        "--data-dir",
        "/tmp/x",
        "--fsync",
        "always",
        "--max-frame-bytes",
        "4096",
        "--max-connections",
        "7",
        "--max-registrations-per-sec",
        "5",
        "--max-frames-per-sec",
        "9",
        "--metrics",
        "127.0.0.1:9333",
    ])
    .unwrap();
    let Some(Command::Relay(args)) = cli.command else {
        panic!("not the relay command")
    };
    let c = args.to_config();
    assert_eq!(c.listen, "127.0.0.1:4000".parse().unwrap());
    assert_eq!(c.data_dir.as_deref(), Some(Path::new("/tmp/x")));
    assert_eq!(c.fsync, hermes::mailbox::FsyncPolicy::Always);
    assert_eq!(c.core.max_frame, 4096);
    assert_eq!(c.max_connections, Some(7));
    assert_eq!(c.core.registrations_per_minute, 300);
    assert_eq!(c.max_frames_per_sec, 9);
    assert_eq!(c.metrics, Some("127.0.0.1:9333".parse().unwrap()));
    assert!(c.handle_signals);
    // No flags: the documented defaults (unless the environment overrides).
    if std::env::var_os("HERMES_LISTEN").is_none() && std::env::var_os("HERMES_DATA_DIR").is_none()
    {
        let Some(Command::Relay(args)) = Cli::try_parse_from(["hermes", "relay"]).unwrap().command
        else {
            panic!("not the relay command")
        };
        let c = args.to_config();
        assert_eq!(c.listen.to_string(), "127.0.0.1:33001");
        assert_eq!(c.data_dir.as_deref(), Some(Path::new("./hermes-data")));
        assert_eq!(c.fsync, hermes::mailbox::FsyncPolicy::Batch);
        assert_eq!(c.core.max_frame, 1_048_576);
        assert_eq!(c.max_connections, None);
    }
    assert!(Cli::try_parse_from(["hermes", "relay", "--fsync", "sometimes"]).is_err());
}
