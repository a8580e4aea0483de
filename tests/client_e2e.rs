//! End-to-end client scenarios against an in-process relay on a free
//! loopback port: several clients, each with its own state directory.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers: a failure is a test failure"
)]

use std::path::Path;
use std::time::Duration;

use hermes::client::net::{Client, ClientConfig};
use hermes::client::session::{Change, SessionConfig};
use hermes::client::state::{InboxEntry, KdfCost};
use hermes::relay::{RelayHandle, ServerConfig, spawn_relay};
use rand::SeedableRng;
use rand::rngs::StdRng;

const PW: &[u8] = b"correct horse";

fn relay(dir: &Path) -> RelayHandle {
    let mut cfg = ServerConfig::ephemeral_in(dir);
    cfg.core.registrations_per_minute = 100_000;
    spawn_relay(cfg).unwrap()
}

fn config(addr: &str, user: &str, root: &Path) -> ClientConfig {
    let mut c = ClientConfig::new(addr, user, root.to_path_buf());
    c.kdf = KdfCost::insecure_for_tests(1);
    c.io_timeout = Duration::from_secs(10);
    c.session = SessionConfig::default();
    c
}

fn register(addr: &str, user: &str, root: &Path, seed: u64) -> Client<StdRng> {
    Client::register(config(addr, user, root), PW, StdRng::seed_from_u64(seed)).unwrap()
}

fn open(addr: &str, user: &str, root: &Path, seed: u64) -> Client<StdRng> {
    Client::open(config(addr, user, root), PW, StdRng::seed_from_u64(seed)).unwrap()
}

/// Receives until `want` non-notice messages are in the inbox (or 5 s).
fn read(c: &mut Client<StdRng>) -> Vec<InboxEntry> {
    c.receive(Duration::from_millis(0), Duration::from_millis(200))
        .unwrap();
    c.take_inbox().unwrap().0
}

fn texts(entries: &[InboxEntry]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| !e.notice)
        .map(|e| format!("{}: {}", e.sender, e.text))
        .collect()
}

#[test]
fn offline_member_at_creation_gets_keys_and_messages_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let r = relay(&tmp.path().join("relay"));
    let addr = r.addr().to_string();
    let root = tmp.path().join("clients");
    let mut alice = register(&addr, "alice", &root, 1);
    let mut bob = register(&addr, "bob", &root, 2);
    drop(register(&addr, "zoë", &root, 3)); // offline from now on

    alice
        .create_group("crew", &["bob".into(), "zoë".into()])
        .unwrap();
    for i in 0..10 {
        alice.send_text("crew", &format!("message {i}")).unwrap();
    }
    let all = read(&mut bob);
    let got = texts(&all);
    let want: Vec<String> = (0..10).map(|i| format!("alice: message {i}")).collect();
    assert_eq!(got, want);

    bob.send_text("crew", "hi from bob").unwrap();
    // zoë logs in later: keys and messages arrive, in order.
    let mut zoe = open(&addr, "zoë", &root, 4);
    let got = texts(&read(&mut zoe));
    let mut want2 = want.clone();
    want2.push("bob: hi from bob".into());
    assert_eq!(got, want2);
    zoe.send_text("crew", "zoë here").unwrap();
    assert_eq!(
        texts(&read(&mut alice)),
        vec!["bob: hi from bob", "zoë: zoë here"]
    );
    assert_eq!(texts(&read(&mut bob)), vec!["zoë: zoë here"]);
    // Nothing twice.
    assert!(texts(&read(&mut zoe)).is_empty());
}

fn key_id(c: &mut Client<StdRng>, group: &str) -> u32 {
    c.state(|st| {
        let gid = hermes::client::session::resolve_group(st, group).unwrap();
        hermes::group::GroupSession::from_state_bytes(&st.groups[&gid].crypto)
            .unwrap()
            .my_key()
            .key_id()
    })
    .unwrap()
}

fn notices(entries: &[InboxEntry]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.notice)
        .map(|e| e.text.clone())
        .collect()
}

#[test]
fn add_remove_and_leave_rekey_and_removed_member_reads_nothing_new() {
    let tmp = tempfile::tempdir().unwrap();
    let r = relay(&tmp.path().join("relay"));
    let addr = r.addr().to_string();
    let root = tmp.path().join("clients");
    let mut alice = register(&addr, "alice", &root, 11);
    let mut bob = register(&addr, "bob", &root, 12);
    let mut carol = register(&addr, "carol", &root, 13);

    alice.create_group("crew", &["bob".into()]).unwrap();
    alice.send_text("crew", "one").unwrap();
    assert_eq!(texts(&read(&mut bob)), vec!["alice: one"]);

    // Add: carol joins, reads nothing from before, everyone keeps its key.
    alice.change("crew", Change::Add("carol".into())).unwrap();
    let c = read(&mut carol);
    assert!(
        texts(&c).is_empty(),
        "a newcomer reads nothing sent before: {c:?}"
    );
    assert!(
        notices(&c).iter().any(|n| n == "you have joined crew"),
        "{c:?}"
    );
    let b = read(&mut bob);
    assert!(
        notices(&b).iter().any(|n| n == "carol has joined crew"),
        "{b:?}"
    );
    assert_eq!(key_id(&mut alice, "crew"), 1);
    alice.send_text("crew", "two").unwrap();
    carol.send_text("crew", "three").unwrap();
    assert_eq!(texts(&read(&mut bob)), vec!["alice: two", "carol: three"]);
    assert_eq!(texts(&read(&mut carol)), vec!["alice: two"]);
    assert_eq!(texts(&read(&mut alice)), vec!["carol: three"]);

    // Remove: bob is out, alice and carol start fresh keys.
    alice.change("crew", Change::Remove("bob".into())).unwrap();
    assert_eq!(key_id(&mut alice, "crew"), 2);
    alice.send_text("crew", "four").unwrap();
    let c = read(&mut carol);
    assert!(
        notices(&c).iter().any(|n| n == "bob has left crew"),
        "{c:?}"
    );
    assert_eq!(texts(&c), vec!["alice: four"]);
    assert_eq!(key_id(&mut carol, "crew"), 2);
    let b = read(&mut bob);
    assert!(texts(&b).is_empty(), "removed member read {b:?}");
    assert!(
        notices(&b)
            .iter()
            .any(|n| n == "you were removed from crew"),
        "{b:?}"
    );
    assert!(bob.send_text("crew", "still here?").is_err());
    carol.send_text("crew", "five").unwrap();
    assert_eq!(texts(&read(&mut alice)), vec!["carol: five"]);
    assert!(texts(&read(&mut bob)).is_empty());

    // Leave: carol goes, alice re-keys again.
    carol.change("crew", Change::Leave).unwrap();
    let a = read(&mut alice);
    assert!(
        notices(&a).iter().any(|n| n == "carol has left crew"),
        "{a:?}"
    );
    assert_eq!(key_id(&mut alice, "crew"), 3);
    alice.send_text("crew", "six").unwrap();
    assert!(texts(&read(&mut carol)).is_empty());

    // Transfer the admin role and back.
    alice.change("crew", Change::Add("bob".into())).unwrap();
    alice
        .change("crew", Change::TransferAdmin("bob".into()))
        .unwrap();
    read(&mut bob);
    bob.change("crew", Change::Remove("alice".into())).unwrap();
    let a = read(&mut alice);
    assert!(
        notices(&a)
            .iter()
            .any(|n| n == "you were removed from crew"),
        "{a:?}"
    );
}

#[test]
fn two_commands_on_one_state_dir_neither_fork_nor_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let r = relay(&tmp.path().join("relay"));
    let addr = r.addr().to_string();
    let root = tmp.path().join("clients");
    let mut alice = register(&addr, "alice", &root, 21);
    drop(register(&addr, "bob", &root, 22));
    alice.create_group("crew", &["bob".into()]).unwrap();
    // bob runs "chat" and a scripted "send" at once, same state dir.
    let mut bob_chat = open(&addr, "bob", &root, 23);
    let mut bob_script = open(&addr, "bob", &root, 24);
    read(&mut bob_chat);
    bob_chat.send_text("crew", "a").unwrap();
    bob_script.send_text("crew", "b").unwrap();
    bob_chat.send_text("crew", "c").unwrap();
    bob_script.send_text("crew", "d").unwrap();
    assert_eq!(
        texts(&read(&mut alice)),
        vec!["bob: a", "bob: b", "bob: c", "bob: d"]
    );
    alice.send_text("crew", "x").unwrap();
    let mut both = texts(&read(&mut bob_chat));
    both.extend(texts(&read(&mut bob_script)));
    assert_eq!(both, vec!["alice: x"], "shown exactly once");
}

#[test]
fn relay_restart_mid_conversation() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let r = relay(&data);
    let addr = r.addr();
    let a = addr.to_string();
    let root = tmp.path().join("clients");
    let mut alice = register(&a, "alice", &root, 31);
    let mut bob = register(&a, "bob", &root, 32);
    alice.create_group("crew", &["bob".into()]).unwrap();
    alice.send_text("crew", "before").unwrap();
    assert_eq!(texts(&read(&mut bob)), vec!["alice: before"]);
    alice.send_text("crew", "in flight").unwrap();
    r.shutdown();
    r.join().unwrap();

    let mut cfg = ServerConfig::ephemeral_in(&data);
    cfg.listen = addr;
    cfg.core.registrations_per_minute = 100_000;
    let _r2 = spawn_relay(cfg).unwrap();
    // Both clients notice the broken connection, log in again (the relay
    // key is the same, so the pin holds) and resume.
    alice.send_text("crew", "after").unwrap();
    assert_eq!(
        texts(&read(&mut bob)),
        vec!["alice: in flight", "alice: after"]
    );
    bob.send_text("crew", "back").unwrap();
    assert_eq!(texts(&read(&mut alice)), vec!["bob: back"]);
}

#[test]
fn text_typed_while_the_relay_is_down_is_queued_encrypted_and_sent_later() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let r = relay(&data);
    let addr = r.addr();
    let a = addr.to_string();
    let root = tmp.path().join("clients");
    let mut alice = register(&a, "alice", &root, 41);
    let mut bob = register(&a, "bob", &root, 42);
    alice.create_group("crew", &["bob".into()]).unwrap();
    r.shutdown();
    r.join().unwrap();

    alice.queue_text("crew", "typed offline").unwrap();
    assert!(
        alice.queue_text("crew", "  ").is_err(),
        "never queue an empty line"
    );
    assert!(alice.flush_outbox().is_err());
    assert_eq!(alice.state(|st| st.outbox.len()).unwrap(), 1);
    // The state file holds it encrypted: the text is not in the file.
    let file = std::fs::read(root.join("alice").join("state")).unwrap();
    assert!(!file.windows(13).any(|w| w == b"typed offline"));

    let mut cfg = ServerConfig::ephemeral_in(&data);
    cfg.listen = addr;
    cfg.core.registrations_per_minute = 100_000;
    let _r2 = spawn_relay(cfg).unwrap();
    let sent = alice.flush_outbox().unwrap();
    assert_eq!(
        sent,
        vec![Ok(("crew".to_string(), "typed offline".to_string()))]
    );
    assert_eq!(alice.state(|st| st.outbox.len()).unwrap(), 0);
    assert_eq!(texts(&read(&mut bob)), vec!["alice: typed offline"]);
}

#[test]
fn a_larger_group_sets_up_in_parallel_and_everyone_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let r = relay(&tmp.path().join("relay"));
    let addr = r.addr().to_string();
    let root = tmp.path().join("clients");
    let mut alice = register(&addr, "alice", &root, 51);
    // Above PARALLEL_SETUP_THRESHOLD peers: the pairwise channels are
    // computed with rayon.
    let names: Vec<String> = (0..6).map(|i| format!("member{i}")).collect();
    assert!(names.len() >= hermes::limits::PARALLEL_SETUP_THRESHOLD);
    let mut others: Vec<Client<StdRng>> = names
        .iter()
        .zip(60..)
        .map(|(n, seed)| register(&addr, n, &root, seed))
        .collect();
    alice.create_group("big", &names).unwrap();
    alice.send_text("big", "hello all").unwrap();
    for c in &mut others {
        assert_eq!(texts(&read(c)), vec!["alice: hello all"]);
    }
    others[3].send_text("big", "hi from 3").unwrap();
    assert_eq!(texts(&read(&mut alice)), vec!["member3: hi from 3"]);
    assert_eq!(texts(&read(&mut others[0])), vec!["member3: hi from 3"]);
}

#[test]
fn poll_ready_handles_what_the_socket_has_without_waiting() {
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};

    let tmp = tempfile::tempdir().unwrap();
    let r = relay(&tmp.path().join("relay"));
    let addr = r.addr().to_string();
    let root = tmp.path().join("clients");
    let mut alice = register(&addr, "alice", &root, 41);
    let mut bob = register(&addr, "bob", &root, 42);
    alice.create_group("crew", &["bob".into()]).unwrap();
    read(&mut bob); // the welcome and alice's keys

    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(4);
    let (number, fd) = bob.connection_fd().unwrap();
    poll.registry()
        .register(&mut SourceFd(&fd), Token(1), Interest::READABLE)
        .unwrap();
    // Nothing sent: it returns with nothing handled (and does not block).
    let ready = bob.poll_ready().unwrap();
    assert_eq!((ready.handled, ready.more), (0, false));

    alice.send_text("crew", "one").unwrap();
    alice.send_text("crew", "two").unwrap();
    let mut got = Vec::new();
    for _ in 0..50 {
        if got.len() >= 2 {
            break;
        }
        // Woken by the socket, not by a timeout.
        poll.poll(&mut events, Some(Duration::from_secs(10)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == Token(1)));
        bob.poll_ready().unwrap();
        got.extend(texts(&bob.take_inbox().unwrap().0));
    }
    assert_eq!(got, ["alice: one", "alice: two"]);
    // Still the same connection, and it still answers requests (the
    // socket is back in blocking mode).
    assert_eq!(bob.connection_fd().map(|c| c.0), Some(number));
    bob.send_text("crew", "three").unwrap();
    assert_eq!(texts(&read(&mut alice)), ["bob: three"]);
}
