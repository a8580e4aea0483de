//! The real relay loop on loopback: one sender fans group messages out to
//! 1,000 connected members. Prints deliveries per second and the relay's
//! system calls per delivery (from its own counters: `read`, `write`,
//! `epoll_wait`, `epoll_ctl`).
//!
//! ```text
//! cargo bench --bench relay_loop                      # in-process relay
//! HERMES_BENCH_RELAY=127.0.0.1:33001 HERMES_BENCH_METRICS=127.0.0.1:9333 \
//!     cargo bench --bench relay_loop                  # an external `hermes relay`
//!                                                     # (e.g. under `strace -c -f -p`)
//! ```
//!
//! Knobs: `HERMES_BENCH_MEMBERS` (default 1000), `HERMES_BENCH_MESSAGES`
//! (default 2000), `HERMES_BENCH_WINDOW` (sends in flight, default 64),
//! `HERMES_BENCH_SIZE` (ciphertext bytes, default 100).
//!
//! A plain `main` rather than criterion: one run is 2 million deliveries,
//! and the figure of interest is a ratio of counters, not a distribution.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "benchmark harness"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hermes::crypto::dh::{DhGroup, DhPublicKey};
use hermes::crypto::identity::{PublicIdentity, SigningKeyPair, certificate_message};
use hermes::membership::Commit;
use hermes::relay::{ServerConfig, spawn_relay};
use hermes::wire::{Frame, FrameKind, login_message, register_message, split_frame};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct User {
    name: String,
    keys: SigningKeyPair,
    identity: Vec<u8>,
}

fn user(name: String, seed: u64) -> User {
    let mut secret = [7u8; 32];
    secret[..8].copy_from_slice(&seed.to_be_bytes());
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
    User {
        name,
        keys,
        identity,
    }
}

/// Reads one frame (blocking) and returns its kind byte and body.
fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u8, Vec<u8>) {
    loop {
        if let Some((f, n)) = split_frame(buf, 1 << 24).unwrap() {
            let out = (f[1], f.to_vec());
            buf.drain(..n);
            return out;
        }
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "relay closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn connect(addr: SocketAddr, u: &User, register: bool) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let (_, hello) = read_frame(&mut s, &mut buf);
    let Ok(Frame::Hello(h)) = Frame::decode(&hello) else {
        panic!("no hello")
    };
    let f = if register {
        Frame::Register {
            name: &u.name,
            identity: &u.identity,
            proof: u
                .keys
                .sign(&register_message(&h.challenge, &h.relay_key, &u.name)),
        }
    } else {
        Frame::Login {
            name: &u.name,
            signature: u
                .keys
                .sign(&login_message(&h.challenge, &h.relay_key, &u.name)),
        }
    };
    s.write_all(&f.to_vec()).unwrap();
    let (kind, body) = read_frame(&mut s, &mut buf);
    assert_eq!(
        kind,
        FrameKind::Authenticated as u8,
        "{:?}",
        Frame::decode(&body)
    );
    assert!(buf.is_empty());
    s
}

fn scrape(metrics: SocketAddr) -> std::collections::HashMap<String, f64> {
    let mut s = TcpStream::connect(metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with("hermes_"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench`-less args; a
    // quick run keeps that cheap.
    let quick = std::env::args().all(|a| a != "--bench");
    let members = env_or("HERMES_BENCH_MEMBERS", if quick { 20 } else { 1000 });
    let messages = env_or("HERMES_BENCH_MESSAGES", if quick { 20 } else { 2000 });
    let window = env_or("HERMES_BENCH_WINDOW", 64);
    let size = env_or("HERMES_BENCH_SIZE", 100);
    let _ = hermes::relay::os::raise_nofile_limit();

    let external = std::env::var("HERMES_BENCH_RELAY")
        .ok()
        .map(|a| a.parse::<SocketAddr>().unwrap());
    let (_relay, addr, metrics) = match external {
        Some(addr) => {
            let m = std::env::var("HERMES_BENCH_METRICS")
                .expect("HERMES_BENCH_METRICS")
                .parse()
                .unwrap();
            (None, addr, m)
        }
        None => {
            let mut c = ServerConfig::ephemeral();
            c.core.registrations_per_minute = u32::MAX / 2;
            c.max_frames_per_sec = u32::MAX / 2;
            c.metrics = Some("127.0.0.1:0".parse().unwrap());
            let r = spawn_relay(c).unwrap();
            let (a, m) = (r.addr(), r.metrics_addr().unwrap());
            (Some(r), a, m)
        }
    };

    // Unique names per run, so an external relay can be reused.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let users: Vec<User> = (0..members)
        .map(|i| user(format!("b{run}x{i}"), run ^ (i as u64) << 20))
        .collect();
    let mut socks: Vec<TcpStream> = users.iter().map(|u| connect(addr, u, true)).collect();
    let roster = users
        .iter()
        .map(|u| (u.name.clone(), u.keys.public_key()))
        .collect();
    let mut gid = [0u8; 16];
    gid[..8].copy_from_slice(&run.to_be_bytes());
    let genesis = Commit::genesis(gid, "bench".into(), users[0].name.clone(), roster, |m| {
        users[0].keys.sign(m)
    })
    .unwrap();
    socks[0]
        .write_all(
            &Frame::CreateGroup {
                genesis: &genesis.encode(),
            }
            .to_vec(),
        )
        .unwrap();

    // Receivers: one thread, one mio poll over the other members' sockets,
    // counting deliver frames.
    let receivers: Vec<TcpStream> = socks.drain(1..).collect();
    let mut sender = socks.pop().unwrap();
    let expected = messages as u64 * receivers.len() as u64;
    let reader = std::thread::spawn(move || {
        let mut poll = mio::Poll::new().unwrap();
        let mut conns: Vec<(mio::net::TcpStream, Vec<u8>)> = receivers
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.set_nonblocking(true).unwrap();
                let mut m = mio::net::TcpStream::from_std(s);
                poll.registry()
                    .register(&mut m, mio::Token(i), mio::Interest::READABLE)
                    .unwrap();
                (m, Vec::new())
            })
            .collect();
        let mut events = mio::Events::with_capacity(1024);
        let mut got = 0u64;
        let mut chunk = vec![0u8; 256 * 1024];
        let deadline = Instant::now() + Duration::from_secs(600);
        while got < expected {
            assert!(Instant::now() < deadline, "timed out at {got}/{expected}");
            poll.poll(&mut events, Some(Duration::from_secs(1)))
                .unwrap();
            for e in &events {
                let (s, buf) = &mut conns[e.token().0];
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) => panic!("relay closed a member"),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                let mut off = 0;
                while let Some((f, n)) = split_frame(&buf[off..], 1 << 24).unwrap() {
                    if let Ok(Frame::Deliver(d)) = Frame::decode(f)
                        && d.kind == hermes::wire::EntryKind::GroupMessage
                    {
                        got += 1;
                    }
                    off += n;
                }
                buf.drain(..off);
            }
        }
        got
    });

    let before = scrape(metrics);
    let payload = vec![0xabu8; size];
    let start = Instant::now();
    let mut sbuf = Vec::new();
    let mut in_flight = 0usize;
    let mut sent = 0usize;
    let mut batch = Vec::new();
    while sent < messages || in_flight > 0 {
        batch.clear();
        while sent < messages && in_flight < window {
            let mut mid = [0u8; 16];
            mid[..8].copy_from_slice(&(sent as u64).to_be_bytes());
            Frame::GroupSend {
                group_id: gid,
                epoch: 0,
                message_id: mid,
                ciphertext: &payload,
            }
            .encode(&mut batch);
            sent += 1;
            in_flight += 1;
        }
        if !batch.is_empty() {
            sender.write_all(&batch).unwrap();
        }
        let (kind, body) = read_frame(&mut sender, &mut sbuf);
        match kind {
            k if k == FrameKind::StoredReceipt as u8 => in_flight -= 1,
            k if k == FrameKind::Error as u8 => panic!("{:?}", Frame::decode(&body)),
            _ => {}
        }
    }
    let got = reader.join().unwrap();
    let elapsed = start.elapsed();
    let after = scrape(metrics);
    let d = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let deliveries = d("hermes_deliveries_total");
    let syscalls = d("hermes_read_calls_total")
        + d("hermes_write_calls_total")
        + d("hermes_poll_calls_total")
        + d("hermes_reregister_calls_total");
    println!(
        "relay_loop: {} members, {} messages of {} B, window {}: {} deliveries in {:.2} s = {:.0} deliveries/s",
        members,
        messages,
        size,
        window,
        got,
        elapsed.as_secs_f64(),
        got as f64 / elapsed.as_secs_f64()
    );
    println!(
        "relay syscalls: read {} write {} epoll_wait {} epoll_ctl {} => {:.4} per delivery (relay-counted deliveries {})",
        d("hermes_read_calls_total"),
        d("hermes_write_calls_total"),
        d("hermes_poll_calls_total"),
        d("hermes_reregister_calls_total"),
        syscalls / deliveries.max(1.0),
        deliveries
    );
}
