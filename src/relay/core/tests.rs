//! Unit tests of the core's internals that no sequence of frames reaches:
//! what `poll_transmit` does when a queued entry's message is gone.

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::mailbox::MemStore;
use crate::wire::Deliver;

/// A core over an empty memory store, opened at the returned instant.
fn fresh_core() -> (RelayCore<MemStore, StdRng>, Instant) {
    let now = Instant::now();
    let (core, _) = RelayCore::open(
        MemStore::new(),
        StdRng::seed_from_u64(1),
        SigningKeyPair::from_secret_bytes(&[7; 32]),
        RelayConfig::default(),
        now,
        1_000,
    )
    .unwrap();
    (core, now)
}

fn core_with_user() -> (RelayCore<MemStore, StdRng>, u32, ConnId, Instant) {
    let (mut core, now) = fresh_core();
    let record = core
        .store
        .append(records::KIND_ACCOUNT, 1_000, b"account")
        .unwrap();
    let u = core.install_account(record, "alice", b"identity", [1; 32]);
    let conn = ConnId(1);
    core.handle_connect(conn, now);
    core.conns.get_mut(&conn).unwrap().auth = Auth::User(u);
    core.users[u as usize].sessions.push(conn);
    let mut out = Vec::new();
    core.poll_transmit(conn, &mut out, 1 << 20); // the hello
    core.poll_ready_conns(&mut Vec::new());
    (core, u, conn, now)
}

fn message_id(seq: u64) -> [u8; 16] {
    let mut id = [0; 16];
    id[..8].copy_from_slice(&seq.to_be_bytes());
    id[8..].copy_from_slice(&seq.to_be_bytes());
    id
}

/// A real group message queued for `u` at `seq` (ordinary readiness).
fn queue_message(core: &mut RelayCore<MemStore, StdRng>, u: u32, seq: u64, text: &[u8]) {
    queue_message_as(core, u, seq, text, Readiness::Ordinary);
}

/// The same, queued with `readiness`.
fn queue_message_as(
    core: &mut RelayCore<MemStore, StdRng>,
    u: u32,
    seq: u64,
    text: &[u8],
    readiness: Readiness,
) {
    let mut payload = Vec::new();
    put_entry_body(
        &mut payload,
        "alice",
        &[9; 16],
        EntryKind::GroupMessage,
        &message_id(seq),
        1_000,
        text,
    );
    let record = core
        .store
        .append(records::KIND_GROUP_MESSAGE, 1_000, &payload)
        .unwrap();
    let m = core.new_msg(Msg {
        record,
        lsn: seq,
        refs: 0,
        kind: EntryKind::GroupMessage,
        sender: u,
        recipient: NO_USER,
        group: 0,
        unix_ms: 1_000,
        body_off: 0,
        permanent: false,
    });
    core.enqueue(u, seq, m, true, readiness);
}

fn delivered(out: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut got = Vec::new();
    let mut rest = out;
    while let Some((f, n)) = split_frame(rest, 1 << 24).unwrap() {
        if let Frame::Deliver(Deliver {
            seq, ciphertext, ..
        }) = Frame::decode(f).unwrap()
        {
            got.push((seq, ciphertext.to_vec()));
        }
        rest = &rest[n..];
    }
    got
}

/// An entry whose message is gone from the message table (an invariant
/// broken elsewhere) used to be skipped without moving the session's
/// cursor: as the last entry it left output "pending" for ever, so the
/// connection stayed marked as reported and was never reported ready again:
/// later deliveries to that session stalled. It is now passed over like an
/// unreadable record.
#[test]
fn an_entry_whose_message_is_gone_does_not_stall_the_session() {
    let (mut core, u, conn, _) = core_with_user();
    queue_message(&mut core, u, 5, b"five");
    core.users[u as usize].queue.push(6, 999, true); // no message 999
    let mut ready = Vec::new();
    core.poll_ready_conns(&mut ready);
    assert_eq!(ready, vec![conn]);
    let mut out = Vec::new();
    core.poll_transmit(conn, &mut out, 1 << 20);
    assert_eq!(delivered(&out), vec![(5, b"five".to_vec())]);
    assert!(!core.has_pending_output(conn), "nothing more to send");

    // The next message is reported and delivered, and nothing is repeated.
    queue_message(&mut core, u, 7, b"seven");
    ready.clear();
    core.poll_ready_conns(&mut ready);
    assert_eq!(ready, vec![conn], "the session is reported ready again");
    out.clear();
    core.poll_transmit(conn, &mut out, 1 << 20);
    assert_eq!(delivered(&out), vec![(7, b"seven".to_vec())]);
    out.clear();
    assert_eq!(core.poll_transmit(conn, &mut out, 1 << 20), 0);
}

/// A message whose record is missing from the store is passed over too
/// (logged), without a stall or a repeat.
#[test]
fn an_entry_whose_record_is_missing_from_the_store_is_passed_over() {
    let (mut core, u, conn, _) = core_with_user();
    queue_message(&mut core, u, 5, b"five");
    let m = core.new_msg(Msg {
        record: RecordId(9_999),
        lsn: 6,
        refs: 0,
        kind: EntryKind::GroupMessage,
        sender: u,
        recipient: NO_USER,
        group: 0,
        unix_ms: 1_000,
        body_off: 0,
        permanent: false,
    });
    core.enqueue(u, 6, m, true, Readiness::Ordinary);
    let mut ready = Vec::new();
    core.poll_ready_conns(&mut ready);
    assert_eq!(ready, vec![conn]);
    let mut out = Vec::new();
    core.poll_transmit(conn, &mut out, 1 << 20);
    assert_eq!(delivered(&out), vec![(5, b"five".to_vec())]);
    assert!(!core.has_pending_output(conn));
    queue_message(&mut core, u, 7, b"seven");
    ready.clear();
    core.poll_ready_conns(&mut ready);
    assert_eq!(ready, vec![conn]);
    out.clear();
    core.poll_transmit(conn, &mut out, 1 << 20);
    assert_eq!(delivered(&out), vec![(7, b"seven".to_vec())]);
}

/// Readiness classes: entries queued as a large group's fan-out report
/// the session as bulk (once); an ordinary entry then reports it again as
/// ordinary, after which bulk entries add nothing; once drained, the next
/// bulk entry reports it afresh.
#[test]
fn bulk_readiness_is_reported_apart_and_raised_by_ordinary_output() {
    let (mut core, u, conn, _) = core_with_user();
    let poll = |core: &mut RelayCore<MemStore, StdRng>| {
        let (mut ready, mut bulk) = (Vec::new(), Vec::new());
        core.poll_ready_conns(&mut ready);
        core.poll_ready_bulk(&mut bulk);
        (ready, bulk)
    };
    queue_message_as(&mut core, u, 5, b"five", Readiness::Bulk);
    queue_message_as(&mut core, u, 6, b"six", Readiness::Bulk);
    assert_eq!(poll(&mut core), (vec![], vec![conn]));
    queue_message(&mut core, u, 7, b"seven");
    assert_eq!(poll(&mut core), (vec![conn], vec![]), "raised to ordinary");
    queue_message_as(&mut core, u, 8, b"eight", Readiness::Bulk);
    assert_eq!(poll(&mut core), (vec![], vec![]), "already reported");
    let mut out = Vec::new();
    core.poll_transmit(conn, &mut out, 1 << 20);
    let seqs: Vec<u64> = delivered(&out).into_iter().map(|(s, _)| s).collect();
    assert_eq!(seqs, vec![5, 6, 7, 8]);
    queue_message_as(&mut core, u, 9, b"nine", Readiness::Bulk);
    assert_eq!(poll(&mut core), (vec![], vec![conn]), "reported afresh");
}

/// A drained connection holds no control buffer: not after the hello, not
/// after the authenticated reply, not after a later pong; and each reply
/// still goes out whole on a buffer allocated afresh.
#[test]
fn a_drained_connection_holds_no_control_buffer() {
    let (mut core, now) = fresh_core();
    let keys = SigningKeyPair::from_secret_bytes(&[3; 32]);
    let record = core
        .store
        .append(records::KIND_ACCOUNT, 1_000, b"account")
        .unwrap();
    core.install_account(record, "alice", b"identity", keys.public_key());
    let conn = ConnId(1);
    core.handle_connect(conn, now);
    let capacity = |core: &RelayCore<MemStore, StdRng>| core.conns[&conn].control.capacity();
    assert!(capacity(&core) > 0, "the hello waits in the buffer");

    // The hello, in two slices: the buffer stays until the last byte.
    let mut out = Vec::new();
    core.poll_transmit(conn, &mut out, 10);
    assert!(capacity(&core) > 0);
    while core.poll_transmit(conn, &mut out, 1 << 20) > 0 {}
    assert_eq!(capacity(&core), 0, "released once the hello is out");
    let (hello, n) = split_frame(&out, 1 << 20).unwrap().unwrap();
    assert_eq!(n, out.len());
    let Frame::Hello(hello) = Frame::decode(hello).unwrap() else {
        panic!("not a hello");
    };

    let signature = keys.sign(&crate::wire::login_message(
        &hello.challenge,
        &core.relay_key(),
        "alice",
    ));
    for (request, want) in [
        (
            Frame::Login {
                name: "alice",
                signature,
            },
            Frame::Authenticated {
                name: "alice",
                acked: 0,
            },
        ),
        (Frame::Ping { nonce: 7 }, Frame::Pong { nonce: 7 }),
        (Frame::Ping { nonce: 8 }, Frame::Pong { nonce: 8 }),
    ] {
        let bytes = request.to_vec();
        assert_eq!(core.handle_bytes(conn, &bytes, now, 1_000), bytes.len());
        assert!(capacity(&core) > 0, "the reply waits in the buffer");
        let mut out = Vec::new();
        while core.poll_transmit(conn, &mut out, 1 << 20) > 0 {}
        assert_eq!(capacity(&core), 0, "released after {want:?}");
        let (f, n) = split_frame(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(Frame::decode(f).unwrap(), want);
    }
    assert!(matches!(core.conns[&conn].auth, Auth::User(_)));
    assert!(!core.has_pending_output(conn));
}

/// A session that reads every delivery and never acks: each message past
/// the cap is dropped after it was sent, which used to leave one more gap
/// entry (and one more pending drop record) each time. The gap entries stop
/// at `RELAY_MAX_GAP_ENTRIES`, every drop is still counted, and the session
/// keeps getting its messages.
#[test]
fn a_member_reading_without_acks_has_bounded_gap_entries() {
    let (mut core, u, conn, _) = core_with_user();
    core.config.queue_cap = 4;
    let rounds = limits::RELAY_MAX_GAP_ENTRIES as u64 + 200;
    let mut out = Vec::new();
    for seq in 5..5 + rounds {
        queue_message(&mut core, u, seq, b"m");
        out.clear();
        core.poll_transmit(conn, &mut out, 1 << 20);
        assert_eq!(delivered(&out), vec![(seq, b"m".to_vec())]);
    }
    let q = &core.users[u as usize].queue;
    assert_eq!(q.gaps(), limits::RELAY_MAX_GAP_ENTRIES);
    assert_eq!(q.capped(), 4);
    let counted: u64 = q
        .entries()
        .iter()
        .filter_map(|e| match e.item {
            Item::Gap(g) => Some(u64::from(g.count)),
            Item::Msg { .. } => None,
        })
        .sum();
    assert_eq!(counted, rounds - 4, "every drop counted once");
    assert_eq!(core.dirty_gaps.len(), limits::RELAY_MAX_GAP_ENTRIES);
}
