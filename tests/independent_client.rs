//! PROTOCOL.md against the real relay and the real CLI, through a client
//! that shares no code with Hermes: `tests/independent/wire_client.py`, a
//! Python client written from PROTOCOL.md alone (pyca `cryptography` for
//! AES, CMAC and Ed25519). It verifies the relay's hello, registers users,
//! creates a group, distributes sender keys, sends, receives, decrypts and
//! acks a group message, checks the documented error codes (malformed,
//! oversized, wrong version or kind, wrong login proof, refused commits
//! and sends, ...), and exchanges messages both ways with the `hermes`
//! binary through genesis, add with welcome, remove with rotation, admin
//! transfer, an admin's leave (dissolution) and key requests both ways. On
//! a second relay with a per-member queue cap of 5 it checks gap notices.
//! Then, with the first relay stopped, the same script reads the relay's
//! mailbox files (PROTOCOL.md Part 4 and 3.6) and checks that what its
//! users did is recorded as documented.
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
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hermes::relay::{ServerConfig, spawn_relay};

/// One script run takes a few seconds (three Python users, a dozen CLI
/// runs); this bound only keeps a hung run from hanging `cargo test`.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/independent/wire_client.py"
);

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

/// Runs the script with `args`, bounded by [`SCRIPT_TIMEOUT`]; asserts it
/// passed and returns its stdout.
fn run_script(args: &[&str], tmp: &Path) -> String {
    let mut child = Command::new("python3")
        .arg(SCRIPT)
        .args(args)
        .env("TMPDIR", tmp)
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
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("all ") && last.ends_with(" checks passed"),
        "{report}"
    );
    stdout
}

fn assert_ran(stdout: &str, checks: &[&str]) {
    for check in checks {
        assert!(
            stdout.lines().any(|l| l.starts_with(check)),
            "missing check {check:?}\n{stdout}"
        );
    }
}

#[test]
fn independent_python_client_talks_to_relay_and_rust_cli() {
    if let Err(why) = python_with_cryptography() {
        eprintln!("SKIP independent_client: {why}; the independent Python client did not run");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("relay");
    let mut cfg = ServerConfig::ephemeral_in(&data_dir);
    cfg.core.registrations_per_minute = 100_000;
    let relay = spawn_relay(cfg).unwrap();
    let addr = relay.addr().to_string();
    let relay_key: String = relay
        .relay_key()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let facts = tmp.path().join("facts.json");
    let facts = facts.to_str().unwrap();

    let stdout = run_script(
        &[
            "--server",
            &addr,
            "--relay-key",
            &relay_key,
            "--hermes",
            env!("CARGO_BIN_EXE_hermes"),
            "--facts",
            facts,
        ],
        tmp.path(),
    );
    // The checks that matter must each have run, not merely not failed.
    assert_ran(
        &stdout,
        &[
            "ok 3.7 worked vectors rebuilt from their descriptions",
            "ok hello verified (signature over \"hermes hello v2\\0\" || body before the challenge, ffdhe2048, pinned relay key)",
            "ok length below 2: Malformed (100), closed",
            "ok length above max_frame: FrameTooLarge (104), closed",
            "ok version 0: OldVersion (101), closed",
            "ok unassigned kind 0x3f: UnknownKind (103)",
            "ok relay kind from a client: UnexpectedFrame (105), connection kept",
            "ok login with a wrong signature: BadSignature (205), closed",
            "ok genesis commit accepted at epoch 0",
            "ok sender keys distributed over pairwise channels",
            "ok group message delivered, signature verified, decrypted, acked",
            "ok ack position reported on login, nothing redelivered",
            "ok group send under a wrong epoch: StaleEpoch (302)",
            "ok direct send naming an unknown group: UnknownGroup (300)",
            "ok add signed by a non-admin: NotAuthorized (304)",
            "ok Rust CLI verified and decrypted a message from the Python client",
            "ok Python client verified and decrypted a message from the Rust CLI",
            "ok Python client verified the Rust CLI genesis commit",
            "ok Rust CLI decrypted the reply in its own group",
            "ok Python newcomer accepted the Rust admin's add commit and welcome",
            "ok remove: Python applied it and rotated",
            "ok Rust CLI accepted the Python admin's add commit and welcome",
            "ok Rust CLI sent a key request (2.7)",
            "ok Python key request answered by the Rust CLI",
            "ok Python applied the Rust admin's transfer-admin commit",
            "ok Rust CLI applied the Python admin's leave",
        ],
    );

    // Gap notices need a relay with a small per-member queue cap.
    let small_dir = tmp.path().join("small");
    let small_cfg = || {
        let mut cfg = ServerConfig::ephemeral_in(&small_dir);
        cfg.core.queue_cap = 5;
        cfg
    };
    let small = spawn_relay(small_cfg()).unwrap();
    let gap_facts = tmp.path().join("gap-facts.json");
    let gap_facts = gap_facts.to_str().unwrap();
    let stdout = run_script(
        &[
            "--server",
            &small.addr().to_string(),
            "--queue-cap",
            "5",
            "--facts",
            gap_facts,
        ],
        tmp.path(),
    );
    assert_ran(
        &stdout,
        &["ok queue cap 5: 3 oldest dropped, one gap notice"],
    );
    small.join().unwrap();
    // Its drop record is written at a maintenance pass or after a restart's
    // replay (PROTOCOL.md 3.6): restart it once, then read its mailbox.
    spawn_relay(small_cfg()).unwrap().join().unwrap();
    let stdout = run_script(
        &[
            "--verify-records",
            small_dir.to_str().unwrap(),
            "--facts",
            gap_facts,
        ],
        tmp.path(),
    );
    assert_ran(&stdout, &["ok drop records: 1 gap notices matched"]);

    // Stop the relay (a clean close) and read its mailbox files.
    relay.join().unwrap();
    let stdout = run_script(
        &[
            "--verify-records",
            data_dir.to_str().unwrap(),
            "--facts",
            facts,
        ],
        tmp.path(),
    );
    assert_ran(
        &stdout,
        &[
            "ok account records: one per registered name",
            "ok message records: lsn = receipt seq",
            "ok commit records: sender = signer",
            "ok ack records: account number and cumulative position",
        ],
    );
}
