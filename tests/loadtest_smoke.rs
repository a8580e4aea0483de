//! Smoke test of the load-test swarm against a real Hermes relay core: the
//! `hermes-loadtest` binary runs briefly (a few hundred connections, one or
//! two seconds) against an in-process relay — `RelayCore` over a `MemStore`
//! behind a minimal mio loop written here — and the test checks from the
//! JSON report that every message sent was delivered exactly once to every
//! other member and that the counts agree. No timing assertions.
//!
//! The loop below is deliberately minimal (no write batching limits, no
//! accept gating): it stands in for `hermes relay` so the swarm's Hermes
//! target is exercised end to end with the real wire protocol, accounts,
//! groups, queues and acks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test harness: a failed step is a failed test"
)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hermes::crypto::identity::SigningKeyPair;
use hermes::mailbox::MemStore;
use hermes::relay::{ConnId, RelayConfig, RelayCore};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rand::SeedableRng;
use rand::rngs::StdRng;

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
}

fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A relay on 127.0.0.1:0 served by a thread until `stop` is set.
fn start_relay(stop: Arc<AtomicBool>) -> SocketAddr {
    let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .unwrap();
        let config = RelayConfig {
            registrations_per_minute: 10_000_000,
            ..RelayConfig::default()
        };
        let (mut core, _) = RelayCore::open(
            MemStore::new(),
            StdRng::seed_from_u64(1),
            SigningKeyPair::from_secret_bytes(&[7; 32]),
            config,
            Instant::now(),
            unix_ms(),
        )
        .unwrap();
        let mut conns: HashMap<usize, Conn> = HashMap::new();
        let mut next_id = 0usize;
        let mut events = Events::with_capacity(1024);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut ready = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            poll.poll(&mut events, Some(Duration::from_millis(5)))
                .unwrap();
            let now = Instant::now();
            let ms = unix_ms();
            for ev in &events {
                if ev.token() == LISTENER {
                    while let Ok((mut stream, _)) = listener.accept() {
                        next_id += 1;
                        poll.registry()
                            .register(
                                &mut stream,
                                Token(next_id),
                                Interest::READABLE | Interest::WRITABLE,
                            )
                            .unwrap();
                        let _ = stream.set_nodelay(true);
                        conns.insert(
                            next_id,
                            Conn {
                                stream,
                                inbuf: Vec::new(),
                                out: Vec::new(),
                                out_pos: 0,
                            },
                        );
                        core.handle_connect(ConnId(next_id as u64), now);
                    }
                    continue;
                }
                let id = ev.token().0;
                let mut gone = false;
                if let Some(c) = conns.get_mut(&id) {
                    loop {
                        match c.stream.read(&mut chunk) {
                            Ok(0) => {
                                gone = true;
                                break;
                            }
                            Ok(n) => {
                                c.inbuf.extend_from_slice(&chunk[..n]);
                                let used = core.handle_bytes(ConnId(id as u64), &c.inbuf, now, ms);
                                c.inbuf.drain(..used);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => {
                                gone = true;
                                break;
                            }
                        }
                    }
                }
                if gone {
                    conns.remove(&id);
                    core.handle_disconnect(ConnId(id as u64));
                }
            }
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now, ms);
            }
            core.poll_ready_conns(&mut ready);
            ready.clear();
            // Every connection: pull output while the buffer is drained, write.
            let mut dead = Vec::new();
            for (&id, c) in &mut conns {
                loop {
                    if c.out_pos == c.out.len() {
                        c.out.clear();
                        c.out_pos = 0;
                        if !core.has_pending_output(ConnId(id as u64)) {
                            break;
                        }
                        core.poll_transmit(ConnId(id as u64), &mut c.out, 256 * 1024);
                        if c.out.is_empty() {
                            break;
                        }
                    }
                    match c.stream.write(&c.out[c.out_pos..]) {
                        Ok(n) => c.out_pos += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            dead.push(id);
                            break;
                        }
                    }
                }
            }
            while let Some((id, _)) = core.poll_close() {
                dead.push(usize::try_from(id.0).unwrap());
            }
            for id in dead {
                if let Some(mut c) = conns.remove(&id) {
                    let _ = c.stream.write(&c.out[c.out_pos..]);
                    core.handle_disconnect(ConnId(id as u64));
                }
            }
        }
    });
    addr
}

fn run_swarm(addr: SocketAddr, dir: &Path, json: &str, args: &[&str]) -> serde_json::Value {
    let out = dir.join(json);
    let status = Command::new(env!("CARGO_BIN_EXE_hermes-loadtest"))
        .args([
            "--target",
            "hermes",
            "--server",
            &addr.to_string(),
            "--quiet",
        ])
        .args(["--cache-dir", dir.join("cache").to_str().unwrap()])
        .args(["--json", out.to_str().unwrap()])
        .args(["--connect-timeout", "60", "--drain", "10"])
        .args(args)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap_or_else(|_| {
        panic!(
            "no report; stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr)
        )
    });
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        status.status.success(),
        "swarm reported a failure: {v:#}\nstderr:\n{}",
        String::from_utf8_lossy(&status.stderr)
    );
    v
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v:#}"))
}

fn assert_exactly_once(v: &serde_json::Value, connections: u64) {
    assert_eq!(u(v, "connected"), connections, "{v:#}");
    assert!(u(v, "sent") > 0, "{v:#}");
    assert_eq!(u(v, "delivered"), u(v, "expected_deliveries"), "{v:#}");
    assert_eq!(u(v, "missing"), 0, "{v:#}");
    assert_eq!(u(v, "duplicates"), 0, "{v:#}");
    assert_eq!(u(v, "gaps"), 0, "{v:#}");
    assert_eq!(u(v, "errors"), 0, "{v:#}");
    // The relay does not echo a sender's own message.
    assert_eq!(u(v, "self_echo"), 0, "{v:#}");
    assert!(v["latency_us"]["max"].as_f64().unwrap() > 0.0, "{v:#}");
}

#[test]
fn swarm_against_an_in_process_relay_delivers_exactly_once() {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = start_relay(Arc::clone(&stop));
    let dir = tempfile::tempdir().unwrap();

    // Many groups, open loop: 200 members in 20 groups of 10, 2 s.
    let v = run_swarm(
        addr,
        dir.path(),
        "groups.json",
        &[
            "--connections",
            "200",
            "--group-size",
            "10",
            "--rate",
            "20",
            "--duration",
            "2",
        ],
    );
    assert_exactly_once(&v, 200);
    // Every message goes to the 9 other members of its group.
    assert_eq!(u(&v, "expected_deliveries"), u(&v, "sent") * 9, "{v:#}");
    // --crypto none: ciphertexts as long as real sealed messages, > payload.
    assert!(u(&v, "wire_payload") > u(&v, "payload"), "{v:#}");

    // Fan-out, closed loop, reusing the cached identities (and, on this
    // relay, the accounts: names taken, so the swarm logs in).
    let v = run_swarm(
        addr,
        dir.path(),
        "fanout.json",
        &[
            "--connections",
            "100",
            "--group-size",
            "100",
            "--senders",
            "1",
            "--window",
            "8",
            "--duration",
            "1",
        ],
    );
    assert_exactly_once(&v, 100);
    assert_eq!(u(&v, "expected_deliveries"), u(&v, "sent") * 99, "{v:#}");

    // Real sender-key crypto: every message sealed, verified and opened (the
    // stamp is inside the plaintext, so a delivery counts only if it opened).
    let v = run_swarm(
        addr,
        dir.path(),
        "real.json",
        &[
            "--connections",
            "40",
            "--group-size",
            "10",
            "--senders",
            "3",
            "--rate",
            "20",
            "--duration",
            "1",
            "--crypto",
            "real",
        ],
    );
    assert_exactly_once(&v, 40);
    assert_eq!(u(&v, "expected_deliveries"), u(&v, "sent") * 9, "{v:#}");
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn crypto_real_is_for_hermes_only() {
    let out = Command::new(env!("CARGO_BIN_EXE_hermes-loadtest"))
        .args(["--target", "redis", "--crypto", "real", "--rate", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--crypto real applies to --target hermes only"),
        "{err}"
    );
}
