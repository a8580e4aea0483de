//! PROTOCOL.md against the real relay and the real CLI, through a client
//! that shares no code with Hermes: `tests/independent/wire_client.py`, a
//! Python client written from PROTOCOL.md alone (pyca `cryptography` for
//! AES, CMAC and Ed25519). It verifies the relay's hello, registers three
//! users, creates a group, distributes sender keys, sends, receives,
//! decrypts and acks a group message, checks the documented error codes
//! (malformed, oversized, wrong version or kind, wrong login proof, ...),
//! and exchanges messages both ways with the `hermes` binary in a group
//! each side created.
//!
//! Needs `python3` with the `cryptography` module (`.ci/run` installs it).
//! When either is missing the test prints a `SKIP` line saying so and
//! passes: the Rust suite must not depend on a Python installation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a test failure"
)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hermes::relay::{ServerConfig, spawn_relay};

/// The whole script (three Python users, four CLI runs) takes a few
/// seconds; this bound only keeps a hung run from hanging `cargo test`.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn python_with_cryptography() -> Result<(), String> {
    match Command::new("python3")
        .args(["-c", "import cryptography"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(_) => Err("python3 has no `cryptography` module \
                      (python3 -m pip install cryptography)"
            .to_string()),
        Err(e) => Err(format!("python3 not found ({e})")),
    }
}

#[test]
fn independent_python_client_talks_to_relay_and_rust_cli() {
    if let Err(why) = python_with_cryptography() {
        eprintln!("SKIP independent_client: {why}; the independent Python client did not run");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::ephemeral_in(&tmp.path().join("relay"));
    cfg.core.registrations_per_minute = 100_000;
    let relay = spawn_relay(cfg).unwrap();
    let addr = relay.addr().to_string();
    let relay_key: String = relay
        .relay_key()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/independent/wire_client.py"
    );

    let mut child = Command::new("python3")
        .arg(script)
        .args(["--server", &addr, "--relay-key", &relay_key])
        .args(["--hermes", env!("CARGO_BIN_EXE_hermes")])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain both pipes on threads so a chatty child cannot block.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).map(|_| s)
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).map(|_| s)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > SCRIPT_TIMEOUT {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap().unwrap();
    let stderr = err_reader.join().unwrap().unwrap();
    let report = format!("--- stdout\n{stdout}--- stderr\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("script timed out\n{report}"));
    assert!(status.success(), "script failed ({status})\n{report}");
    assert!(!stdout.contains("FAIL"), "{report}");

    // The checks that matter must each have run, not merely not failed.
    for check in [
        "ok hello verified (signature over \"hermes hello v1\\0\" || body, ffdhe2048, pinned relay key)",
        "ok length below 2: Malformed (100), closed",
        "ok length above max_frame: FrameTooLarge (104), closed",
        "ok version 0: OldVersion (101), closed",
        "ok unassigned kind 0x3f: UnknownKind (103), refers_to = that kind, closed",
        "ok login with a wrong signature: BadSignature (205), closed",
        "ok genesis commit accepted at epoch 0",
        "ok sender keys distributed over pairwise channels",
        "ok group message delivered, signature verified, decrypted, acked",
        "ok ack position reported on login, nothing redelivered",
        "ok group send under a wrong epoch: StaleEpoch (302)",
        "ok Rust CLI verified and decrypted a message from the Python client",
        "ok Python client verified and decrypted a message from the Rust CLI",
        "ok Python client verified the Rust CLI genesis commit",
        "ok Rust CLI decrypted the reply in its own group",
    ] {
        assert!(stdout.contains(check), "missing check {check:?}\n{report}");
    }
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("all ") && last.ends_with(" checks passed"),
        "{report}"
    );
    relay.join().unwrap();
}
