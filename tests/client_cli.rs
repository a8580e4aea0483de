//! The real `hermes` binary against an in-process relay: register, group
//! create, send, recv --json, fingerprint, wrong passphrase, demo.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers: a failure is a test failure"
)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use hermes::relay::{ServerConfig, spawn_relay};

fn hermes(addr: &str, state: &Path, user: &str, pass: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hermes"))
        .args(args)
        .env("HERMES_SERVER", addr)
        .env("HERMES_USER", user)
        .env("HERMES_STATE_DIR", state)
        .env("HERMES_PASSPHRASE", pass)
        .env("HERMES_INSECURE_TEST_KDF", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn failed(o: &Output) -> String {
    assert!(!o.status.success(), "should have failed");
    let e = String::from_utf8(o.stderr.clone()).unwrap();
    assert_eq!(e.trim_end().lines().count(), 1, "one line on stderr: {e:?}");
    e
}

#[test]
fn a_conversation_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::ephemeral_in(&tmp.path().join("relay"));
    cfg.core.registrations_per_minute = 100_000;
    let relay = spawn_relay(cfg).unwrap();
    let addr = relay.addr().to_string();
    let state = tmp.path().join("state");
    let run =
        |user: &str, args: &[&str], stdin: &str| hermes(&addr, &state, user, "pw", args, stdin);

    ok(&run("zoë", &["register"], ""));
    ok(&run("bob", &["register"], ""));
    let e = failed(&run("bob", &["register"], ""));
    assert!(e.contains("already exists"), "{e}");

    let out = ok(&run(
        "zoë",
        &["group", "create", "crew", "--members", "bob"],
        "",
    ));
    assert!(out.starts_with("created crew"), "{out}");
    ok(&run(
        "zoë",
        &["send", "--group", "crew", "hello from zoë"],
        "",
    ));
    ok(&run("zoë", &["send", "--group", "crew"], "from stdin\n"));
    let e = failed(&run("zoë", &["send", "--group", "crew"], "\n"));
    assert!(e.contains("empty message"), "{e}");
    let e = failed(&run("zoë", &["send", "--group", "nope", "x"], ""));
    assert!(e.contains("no group"), "{e}");

    let out = ok(&run("bob", &["recv", "--json"], ""));
    let msgs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["notice"] == false)
        .collect();
    assert_eq!(msgs.len(), 2, "{out}");
    assert_eq!(msgs[0]["sender"], "zoë");
    assert_eq!(msgs[0]["group"], "crew");
    assert_eq!(msgs[0]["text"], "hello from zoë");
    assert_eq!(msgs[1]["text"], "from stdin");
    assert!(msgs[0]["sent_at"].as_u64().unwrap() > 0);
    assert_eq!(msgs[0]["id"].as_str().unwrap().len(), 32);
    // Printed once: a second recv finds nothing new.
    assert!(ok(&run("bob", &["recv"], "")).is_empty());

    ok(&run("bob", &["send", "--group", "crew", "hi zoë"], ""));
    let out = ok(&run("zoë", &["recv"], ""));
    assert_eq!(out, "[crew] bob: hi zoë\n");

    let out = ok(&run("zoë", &["group", "members", "crew"], ""));
    assert_eq!(out, "bob\nzoë\tadmin\n");
    let a = ok(&run("zoë", &["fingerprint", "bob"], ""));
    let b = ok(&run("bob", &["fingerprint", "zoë"], ""));
    assert_eq!(a, b, "both sides see the same safety number");
    assert_eq!(a.trim().split(' ').count(), 12);

    let e = failed(&hermes(&addr, &state, "bob", "wrong", &["recv"], ""));
    assert!(e.contains("wrong passphrase"), "{e}");
    let e = failed(&run("nobody", &["recv"], ""));
    assert!(e.contains("hermes register"), "{e}");
}

#[test]
fn the_demo_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_hermes"))
        .arg("demo")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("plaintext anywhere in the relay's files: no"));
    assert!(!text.contains("plaintext anywhere in the relay's files: YES"));
}

#[test]
fn chat_sends_a_typed_line_while_stdin_stays_open() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::ephemeral_in(&tmp.path().join("relay"));
    cfg.core.registrations_per_minute = 100_000;
    let relay = spawn_relay(cfg).unwrap();
    let addr = relay.addr().to_string();
    let state = tmp.path().join("state");
    ok(&hermes(&addr, &state, "ann", "pw", &["register"], ""));
    let mut chat = Command::new(env!("CARGO_BIN_EXE_hermes"))
        .arg("chat")
        .env("HERMES_SERVER", &addr)
        .env("HERMES_USER", "ann")
        .env("HERMES_STATE_DIR", &state)
        .env("HERMES_PASSPHRASE", "pw")
        .env("HERMES_INSECURE_TEST_KDF", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut keyboard = chat.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = chat.stdout.take().unwrap();
    let screen = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    keyboard
        .write_all(b"/create crew\nhello while typing\n")
        .unwrap();
    keyboard.flush().unwrap();
    // The echo means the relay stored it; stdin is still open, so the line
    // went out on the keyboard's wake-up, not on end of input. (The limit
    // only keeps a broken build from hanging the suite.)
    let mut seen = Vec::new();
    let sent = loop {
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(l) if l == "ann: hello while typing" => break true,
            Ok(l) => seen.push(l),
            Err(_) => break false,
        }
    };
    if !sent {
        let _ = chat.kill();
    }
    let _ = keyboard.write_all(b"/quit\n");
    drop(keyboard);
    assert!(chat.wait().unwrap().success() || !sent);
    screen.join().unwrap();
    assert!(sent, "{seen:?}");
}

#[test]
fn chat_reads_commands_and_lines_from_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::ephemeral_in(&tmp.path().join("relay"));
    cfg.core.registrations_per_minute = 100_000;
    let relay = spawn_relay(cfg).unwrap();
    let addr = relay.addr().to_string();
    let state = tmp.path().join("state");
    let run =
        |user: &str, args: &[&str], stdin: &str| hermes(&addr, &state, user, "pw", args, stdin);
    ok(&run("ann", &["register"], ""));
    ok(&run("carol", &["register"], ""));
    let script = "/create crew\n\n/add carol\nhello over chat\n/members\n/nonsense\n/quit\n";
    let out = ok(&run("ann", &["chat"], script));
    assert!(out.contains("created crew; now talking in crew"), "{out}");
    assert!(out.contains("ann: hello over chat"), "{out}");
    assert!(out.contains("  ann (admin)\n  carol\n"), "{out}");
    assert!(out.contains("unknown command /nonsense"), "{out}");
    let out = ok(&run("carol", &["recv"], ""));
    assert!(out.contains("[crew] ann: hello over chat"), "{out}");
    assert!(
        !out.contains("[crew] ann: \n"),
        "an empty line is never sent: {out}"
    );
}
