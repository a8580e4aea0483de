//! Smoke test of the load-test swarm against a real Hermes relay: the
//! `hermes-loadtest` binary runs briefly (a few hundred connections, one or
//! two seconds) against an in-process relay (`relay::spawn_relay`, the event
//! loop of `hermes relay`, over the memory-mapped mailbox in a temp dir),
//! and the test checks from the JSON report that every message sent was
//! delivered exactly once to every other member and that the counts agree.
//! No timing assertions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test harness: a failed step is a failed test"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use hermes::relay::{RelayHandle, ServerConfig, spawn_relay};

/// A relay as `hermes relay` runs it (mio event loop, memory-mapped
/// mailbox in `dir`, `--fsync batch`) with the registration and frame rate
/// limits lifted, as a load test must.
fn start_relay(dir: &Path) -> RelayHandle {
    let mut config = ServerConfig::ephemeral_in(dir);
    config.max_frames_per_sec = 10_000_000;
    config.core.registrations_per_minute = 100_000_000;
    spawn_relay(config).unwrap()
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
    // The swarm's own loop health: passes timed, per worker too.
    let p = &v["swarm_pass_us"];
    let f = |p: &serde_json::Value, k: &str| {
        p[k].as_f64()
            .unwrap_or_else(|| panic!("swarm_pass_us.{k} missing in {v:#}"))
    };
    assert!(u(p, "passes") > 0, "{v:#}");
    assert!(f(p, "p50") > 0.0 && f(p, "p50") <= f(p, "p99"), "{v:#}");
    assert!(f(p, "p99") <= f(p, "max"), "{v:#}");
    let wait = v["swarm_runq_wait_pct"]
        .as_f64()
        .expect("swarm_runq_wait_pct");
    assert!(wait >= 0.0, "{v:#}");
    let cpu_max = f(&p["cpu"], "max");
    assert!(0.0 < cpu_max && cpu_max <= f(p, "max") * 1.02, "{v:#}");
    let workers = p["workers"].as_array().expect("per-worker passes");
    assert_eq!(workers.len() as u64, u(v, "threads"), "{v:#}");
    let sum: u64 = workers.iter().map(|w| u(w, "passes")).sum();
    assert_eq!(sum, u(p, "passes"), "{v:#}");
}

#[test]
fn swarm_against_an_in_process_relay_delivers_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let relay = start_relay(data.path());
    let addr = relay.addr();

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

    // A second process's share of a split swarm: members 200..220.
    let v = run_swarm(
        addr,
        dir.path(),
        "split.json",
        &[
            "--first-member",
            "200",
            "--connections",
            "20",
            "--group-size",
            "10",
            "--rate",
            "20",
            "--duration",
            "1",
        ],
    );
    assert_exactly_once(&v, 20);
    assert_eq!(u(&v, "first_member"), 200, "{v:#}");
    relay.shutdown();
    relay.join().unwrap();
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
