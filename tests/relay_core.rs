//! Deterministic simulation of the relay core with many clients and no
//! sockets (in the manner of quinn-proto's test `Pair`): each scenario
//! drives `RelayCore` through `handle_*` and reads its output through
//! `poll_transmit`, exactly as the event loop does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test harness: a failed step is a failed test"
)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hermes::crypto::dh::{DhGroup, DhPublicKey};
use hermes::crypto::identity::{PublicIdentity, SigningKeyPair, certificate_message};
use hermes::mailbox::{
    CompactionStats, FaultStore, FsyncPolicy, MemStore, MmapConfig, MmapStore, RecordId, RecordRef,
    RecoveryReport, Store, StoreError, StoreStats,
};
use hermes::membership::{Commit, GroupState, Operation};
use hermes::relay::{CloseReason, ConnId, RelayConfig, RelayCore};
use hermes::wire::{
    EntryKind, ErrorCode, Frame, GroupId, MessageId, login_message, register_message, split_frame,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;
const T0_MS: u64 = 1_800_000_000_000;

/// A store that can be "restarted": everything released is live again and
/// whatever was durable survives.
trait Restart: Store + Sized {
    fn reopen(self) -> Self;
}

impl Restart for MemStore {
    fn reopen(mut self) -> Self {
        self.restart();
        self
    }
}

impl Restart for FaultStore {
    fn reopen(mut self) -> Self {
        self.sync();
        self.simulate_power_loss();
        self
    }
}

/// The memory-mapped store in a temp dir; a restart drops and reopens it.
struct Mmap {
    store: Option<MmapStore>,
    dir: tempfile::TempDir,
    config: MmapConfig,
}

impl Mmap {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = MmapConfig {
            segment_bytes: 16 * 1024,
            fsync: FsyncPolicy::Batch,
            ..MmapConfig::default()
        };
        let store = MmapStore::open(dir.path(), config.clone(), Box::new(|| {})).unwrap();
        Self {
            store: Some(store),
            dir,
            config,
        }
    }

    fn s(&self) -> &MmapStore {
        self.store.as_ref().unwrap()
    }

    fn m(&mut self) -> &mut MmapStore {
        self.store.as_mut().unwrap()
    }

    /// The newest segment file (the one written last).
    fn newest_segment(&self) -> std::path::PathBuf {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path().join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        files.sort();
        files.pop().unwrap()
    }
}

impl Store for Mmap {
    fn append(&mut self, kind: u8, unix_ms: u64, payload: &[u8]) -> Result<RecordId, StoreError> {
        self.m().append(kind, unix_ms, payload)
    }
    fn append_reserved(
        &mut self,
        kind: u8,
        unix_ms: u64,
        payload: &[u8],
    ) -> Result<RecordId, StoreError> {
        self.m().append_reserved(kind, unix_ms, payload)
    }
    fn get(&self, id: RecordId) -> Result<RecordRef<'_>, StoreError> {
        self.s().get(id)
    }
    fn release(&mut self, id: RecordId) {
        self.m().release(id);
    }
    fn durable_up_to(&self) -> Option<RecordId> {
        self.s().durable_up_to()
    }
    fn replay(&self, f: &mut dyn FnMut(RecordRef<'_>)) {
        self.s().replay(f);
    }
    fn recovery_report(&self) -> &RecoveryReport {
        self.s().recovery_report()
    }
    fn compact(&mut self) -> Result<CompactionStats, StoreError> {
        self.m().compact()
    }
    fn pinning_oldest(&self, max: usize) -> Vec<RecordId> {
        self.s().pinning_oldest(max)
    }
    fn stats(&self) -> StoreStats {
        self.s().stats()
    }
}

impl Restart for Mmap {
    fn reopen(mut self) -> Self {
        drop(self.store.take());
        self.store =
            Some(MmapStore::open(self.dir.path(), self.config.clone(), Box::new(|| {})).unwrap());
        self
    }
}

/// One decoded frame the relay sent, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Hello {
        challenge: [u8; 32],
        relay_key: [u8; 32],
    },
    Authenticated {
        name: String,
        acked: u64,
    },
    Deliver {
        seq: u64,
        sender: String,
        kind: EntryKind,
        message_id: MessageId,
        ciphertext: Vec<u8>,
    },
    Gap {
        seq: u64,
        sender: String,
        count: u32,
    },
    Receipt {
        message_id: MessageId,
        seq: u64,
    },
    Error(ErrorCode),
    CommitAccepted {
        epoch: u64,
    },
    Other(Vec<u8>),
}

fn parse(frame: &[u8]) -> Got {
    match Frame::decode(frame).expect("relay output decodes") {
        Frame::Hello(h) => Got::Hello {
            challenge: h.challenge,
            relay_key: h.relay_key,
        },
        Frame::Authenticated { name, acked } => Got::Authenticated {
            name: name.into(),
            acked,
        },
        Frame::Deliver(d) => Got::Deliver {
            seq: d.seq,
            sender: d.sender.into(),
            kind: d.kind,
            message_id: d.message_id,
            ciphertext: d.ciphertext.to_vec(),
        },
        Frame::GapNotice(g) => Got::Gap {
            seq: g.seq,
            sender: g.sender.into(),
            count: g.count,
        },
        Frame::StoredReceipt {
            message_id, seq, ..
        } => Got::Receipt { message_id, seq },
        Frame::Error(e) => Got::Error(ErrorCode::from_u16(e.code).expect("known code")),
        Frame::CommitAccepted { epoch, .. } => Got::CommitAccepted { epoch },
        _ => Got::Other(frame.to_vec()),
    }
}

struct User {
    name: String,
    keys: SigningKeyPair,
    identity: Vec<u8>,
}

struct Sim<S: Store> {
    core: RelayCore<S, StdRng>,
    relay_secret: [u8; 32],
    config: RelayConfig,
    now: Instant,
    unix_ms: u64,
    next_conn: u64,
    rng: StdRng,
    /// Challenge of each connection, from its hello.
    challenges: HashMap<ConnId, [u8; 32]>,
}

fn identity(keys: &SigningKeyPair, seed: u8) -> Vec<u8> {
    let mut dh = vec![0u8; DhGroup::Ffdhe2048.modulus_len()];
    dh[0] = 0x40;
    dh[1] = seed;
    let dh_public = DhPublicKey::from_bytes(DhGroup::Ffdhe2048, &dh).unwrap();
    let certificate = keys.sign(&certificate_message(&dh_public));
    PublicIdentity {
        signing_key: keys.public_key(),
        dh_public,
        certificate,
    }
    .encode()
}

impl<S: Restart> Sim<S> {
    fn new(store: S, config: RelayConfig) -> Self {
        let now = Instant::now();
        let relay_secret = [42u8; 32];
        let (core, _) = RelayCore::open(
            store,
            StdRng::seed_from_u64(1),
            SigningKeyPair::from_secret_bytes(&relay_secret),
            config.clone(),
            now,
            T0_MS,
        )
        .unwrap();
        Self {
            core,
            relay_secret,
            config,
            now,
            unix_ms: T0_MS,
            next_conn: 1,
            rng: StdRng::seed_from_u64(7),
            challenges: HashMap::new(),
        }
    }

    /// Stops the relay and starts a new core on the same store.
    fn restart(self) -> (Self, hermes::relay::ReplayReport) {
        let store = self.core.into_store().reopen();
        let (core, report) = RelayCore::open(
            store,
            StdRng::seed_from_u64(2),
            SigningKeyPair::from_secret_bytes(&self.relay_secret),
            self.config.clone(),
            self.now,
            self.unix_ms,
        )
        .unwrap();
        (
            Self {
                core,
                challenges: HashMap::new(),
                ..self
            },
            report,
        )
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.unix_ms += u64::try_from(d.as_millis()).unwrap();
        self.core.handle_timeout(self.now, self.unix_ms);
    }

    fn connect(&mut self) -> ConnId {
        let c = ConnId(self.next_conn);
        self.next_conn += 1;
        self.core.handle_connect(c, self.now);
        let got = self.recv(c);
        let Some(Got::Hello {
            challenge,
            relay_key,
        }) = got.first().cloned()
        else {
            panic!("no hello: {got:?}");
        };
        assert_eq!(relay_key, self.core.relay_key());
        self.challenges.insert(c, challenge);
        c
    }

    fn send(&mut self, c: ConnId, f: &Frame<'_>) {
        let bytes = f.to_vec();
        let used = self.core.handle_bytes(c, &bytes, self.now, self.unix_ms);
        assert_eq!(used, bytes.len());
    }

    /// Everything the relay has for `c`, drained in small slices.
    fn recv(&mut self, c: ConnId) -> Vec<Got> {
        let mut out = Vec::new();
        while self.core.poll_transmit(c, &mut out, 4096) > 0 {}
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while let Some((f, n)) = split_frame(rest, 1 << 20).unwrap() {
            frames.push(parse(f));
            rest = &rest[n..];
        }
        assert!(rest.is_empty(), "partial frame left");
        frames
    }

    fn new_user(&mut self, name: &str) -> User {
        let mut seed = [0u8; 32];
        rand::Rng::fill_bytes(&mut self.rng, &mut seed);
        let keys = SigningKeyPair::from_secret_bytes(&seed);
        let identity = identity(&keys, seed[0]);
        User {
            name: name.into(),
            keys,
            identity,
        }
    }

    fn register(&mut self, u: &User) -> (ConnId, Vec<Got>) {
        let c = self.connect();
        let proof = u.keys.sign(&register_message(
            &self.challenges[&c],
            &self.core.relay_key(),
            &u.name,
        ));
        self.send(
            c,
            &Frame::Register {
                name: &u.name,
                identity: &u.identity,
                proof,
            },
        );
        let got = self.recv(c);
        (c, got)
    }

    fn login(&mut self, u: &User) -> (ConnId, Vec<Got>) {
        let c = self.connect();
        let signature = u.keys.sign(&login_message(
            &self.challenges[&c],
            &self.core.relay_key(),
            &u.name,
        ));
        self.send(
            c,
            &Frame::Login {
                name: &u.name,
                signature,
            },
        );
        let got = self.recv(c);
        (c, got)
    }

    fn user(&mut self, name: &str) -> (User, ConnId) {
        let u = self.new_user(name);
        let (c, got) = self.register(&u);
        assert_eq!(
            got,
            vec![Got::Authenticated {
                name: name.into(),
                acked: 0
            }]
        );
        (u, c)
    }

    fn create_group(
        &mut self,
        admin: &User,
        c: ConnId,
        members: &[&User],
        gid: GroupId,
    ) -> GroupState {
        let roster = members
            .iter()
            .map(|m| (m.name.clone(), m.keys.public_key()))
            .collect();
        let genesis = Commit::genesis(gid, "g".into(), admin.name.clone(), roster, |m| {
            admin.keys.sign(m)
        })
        .unwrap();
        self.send(
            c,
            &Frame::CreateGroup {
                genesis: &genesis.encode(),
            },
        );
        let state = GroupState::from_genesis(&genesis).unwrap();
        let got = self.recv(c);
        assert!(got.contains(&Got::CommitAccepted { epoch: 0 }), "{got:?}");
        state
    }

    fn group_send(
        &mut self,
        c: ConnId,
        gid: GroupId,
        epoch: u64,
        mid: u8,
        text: &[u8],
    ) -> Vec<Got> {
        self.send(
            c,
            &Frame::GroupSend {
                group_id: gid,
                epoch,
                message_id: [mid; 16],
                ciphertext: text,
            },
        );
        self.recv(c)
    }

    fn closes(&mut self) -> Vec<(ConnId, CloseReason)> {
        std::iter::from_fn(|| self.core.poll_close()).collect()
    }
}

fn delivered(got: &[Got]) -> Vec<(u64, Vec<u8>)> {
    got.iter()
        .filter_map(|g| match g {
            Got::Deliver {
                seq,
                kind:
                    EntryKind::GroupMessage
                    | EntryKind::Distribution
                    | EntryKind::KeyRequest
                    | EntryKind::Welcome,
                ciphertext,
                ..
            } => Some((*seq, ciphertext.clone())),
            _ => None,
        })
        .collect()
}

fn texts(got: &[Got]) -> Vec<Vec<u8>> {
    delivered(got).into_iter().map(|(_, t)| t).collect()
}

fn last_seq(got: &[Got]) -> u64 {
    got.iter()
        .filter_map(|g| match g {
            Got::Deliver { seq, .. } | Got::Gap { seq, .. } => Some(*seq),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

fn mem() -> MemStore {
    MemStore::new()
}

// ---------------------------------------------------------------------------
// Scenarios, generic over the store.
// ---------------------------------------------------------------------------

fn register_login_wrong_signature_replayed_login<S: Restart>(store: S) {
    let mut sim = Sim::new(store, RelayConfig::default());
    let (alice, _) = sim.user("alice");
    // Name taken.
    let imposter = sim.new_user("alice");
    let (c, got) = sim.register(&imposter);
    assert_eq!(got, vec![Got::Error(ErrorCode::NameTaken)]);
    assert!(
        sim.closes()
            .contains(&(c, CloseReason::AuthFailed(ErrorCode::NameTaken)))
    );
    // Good login.
    let (c1, got) = sim.login(&alice);
    assert_eq!(
        got,
        vec![Got::Authenticated {
            name: "alice".into(),
            acked: 0
        }]
    );
    // A second login on the same connection is refused.
    sim.send(
        c1,
        &Frame::Login {
            name: "alice",
            signature: [0; 64],
        },
    );
    assert_eq!(
        sim.recv(c1),
        vec![Got::Error(ErrorCode::AlreadyAuthenticated)]
    );
    // Wrong key.
    let c2 = sim.connect();
    let sig = imposter.keys.sign(&login_message(
        &sim.challenges[&c2],
        &sim.core.relay_key(),
        "alice",
    ));
    sim.send(
        c2,
        &Frame::Login {
            name: "alice",
            signature: sig,
        },
    );
    assert_eq!(sim.recv(c2), vec![Got::Error(ErrorCode::BadSignature)]);
    assert!(
        sim.closes()
            .contains(&(c2, CloseReason::AuthFailed(ErrorCode::BadSignature)))
    );
    // Replayed login: a valid signature over c1's challenge, sent on c3.
    let replay = alice.keys.sign(&login_message(
        &sim.challenges[&c1],
        &sim.core.relay_key(),
        "alice",
    ));
    let c3 = sim.connect();
    sim.send(
        c3,
        &Frame::Login {
            name: "alice",
            signature: replay,
        },
    );
    assert_eq!(sim.recv(c3), vec![Got::Error(ErrorCode::BadSignature)]);
    // A registration proof is not a login signature (labels differ).
    let c4 = sim.connect();
    let proof = alice.keys.sign(&register_message(
        &sim.challenges[&c4],
        &sim.core.relay_key(),
        "alice",
    ));
    sim.send(
        c4,
        &Frame::Login {
            name: "alice",
            signature: proof,
        },
    );
    assert_eq!(sim.recv(c4), vec![Got::Error(ErrorCode::BadSignature)]);
    // Unknown user, bad name, requests before login.
    let c5 = sim.connect();
    sim.send(c5, &Frame::ListGroups);
    assert_eq!(sim.recv(c5), vec![Got::Error(ErrorCode::NotAuthenticated)]);
    sim.send(
        c5,
        &Frame::Login {
            name: "nobody",
            signature: [0; 64],
        },
    );
    assert_eq!(sim.recv(c5), vec![Got::Error(ErrorCode::UnknownUser)]);
    let bad = sim.new_user("a\u{7}b");
    let (_, got) = sim.register(&bad);
    assert_eq!(got, vec![Got::Error(ErrorCode::BadName)]);
    // Registration with a proof by another key.
    let mallory = sim.new_user("mallory");
    let c6 = sim.connect();
    let proof = alice.keys.sign(&register_message(
        &sim.challenges[&c6],
        &sim.core.relay_key(),
        "mallory",
    ));
    sim.send(
        c6,
        &Frame::Register {
            name: "mallory",
            identity: &mallory.identity,
            proof,
        },
    );
    assert_eq!(sim.recv(c6), vec![Got::Error(ErrorCode::BadSignature)]);
    // NFC: a decomposed name logs into the precomposed account.
    let (zoe, _) = sim.user("zo\u{00eb}");
    let c7 = sim.connect();
    let sig = zoe.keys.sign(&login_message(
        &sim.challenges[&c7],
        &sim.core.relay_key(),
        "zo\u{00eb}",
    ));
    sim.send(
        c7,
        &Frame::Login {
            name: "zoe\u{0308}",
            signature: sig,
        },
    );
    assert_eq!(
        sim.recv(c7),
        vec![Got::Authenticated {
            name: "zo\u{00eb}".into(),
            acked: 0
        }]
    );
}

fn group_fanout_online_and_offline_in_order<S: Restart>(store: S) {
    let mut sim = Sim::new(store, RelayConfig::default());
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let (carol, cc) = sim.user("carol");
    sim.core.handle_disconnect(cc); // carol is offline
    let gid = [1; 16];
    sim.create_group(&alice, ca, &[&alice, &bob, &carol], gid);
    let got = sim.recv(cb);
    assert!(
        matches!(
            got.as_slice(),
            [Got::Deliver {
                kind: EntryKind::Commit,
                ..
            }]
        ),
        "{got:?}"
    );
    for i in 0..5u8 {
        let r = sim.group_send(ca, gid, 0, i, &[b'm', i]);
        assert!(matches!(r.as_slice(), [Got::Receipt { .. }]), "{r:?}");
    }
    // Bob is online: pushed at once, in order; the sender gets no copy.
    let mut ready = Vec::new();
    sim.core.poll_ready_conns(&mut ready);
    assert!(ready.contains(&cb));
    let got = sim.recv(cb);
    assert_eq!(
        texts(&got),
        (0..5u8).map(|i| vec![b'm', i]).collect::<Vec<_>>()
    );
    assert!(texts(&sim.recv(ca)).is_empty());
    // Carol logs in later and gets the commit then the five, in order.
    let (cc2, got) = sim.login(&carol);
    assert!(matches!(got[0], Got::Authenticated { .. }));
    assert!(matches!(
        got[1],
        Got::Deliver {
            kind: EntryKind::Commit,
            ..
        }
    ));
    assert_eq!(
        texts(&got),
        (0..5u8).map(|i| vec![b'm', i]).collect::<Vec<_>>()
    );
    let seqs: Vec<u64> = delivered(&got).iter().map(|d| d.0).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let _ = cc2;
}

fn cumulative_ack_and_no_redelivery<S: Restart>(store: S) {
    let mut sim = Sim::new(store, RelayConfig::default());
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let gid = [2; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    for i in 0..4u8 {
        sim.group_send(ca, gid, 0, i, &[i]);
    }
    let got = sim.recv(cb);
    let d = delivered(&got);
    assert_eq!(d.len(), 4);
    // Ack the first two (and the commit before them).
    sim.send(cb, &Frame::Ack { up_to: d[1].0 });
    assert!(sim.recv(cb).is_empty());
    sim.core.handle_disconnect(cb);
    let (_, got) = sim.login(&bob);
    assert_eq!(
        got[0],
        Got::Authenticated {
            name: "bob".into(),
            acked: d[1].0
        }
    );
    assert_eq!(texts(&got), vec![vec![2u8], vec![3u8]]);
    // An ack beyond anything assigned is refused.
    let (cb3, _) = sim.login(&bob);
    sim.send(cb3, &Frame::Ack { up_to: u64::MAX });
    assert_eq!(sim.recv(cb3), vec![Got::Error(ErrorCode::AckOutOfRange)]);
    // Acking everything: nothing more, even after a restart.
    sim.send(cb3, &Frame::Ack { up_to: d[3].0 });
    let (mut sim, _) = sim.restart();
    let (_, got) = sim.login(&bob);
    assert_eq!(
        got,
        vec![Got::Authenticated {
            name: "bob".into(),
            acked: d[3].0
        }]
    );
}

fn idempotent_resend<S: Restart>(store: S) {
    let mut sim = Sim::new(store, RelayConfig::default());
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let gid = [3; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    let r1 = sim.group_send(ca, gid, 0, 9, b"once");
    let r2 = sim.group_send(ca, gid, 0, 9, b"once");
    assert_eq!(r1, r2, "same receipt");
    assert_eq!(texts(&sim.recv(cb)), vec![b"once".to_vec()]);
    // Still idempotent after a restart (the record is replayed).
    let (mut sim, _) = sim.restart();
    let (ca, _) = sim.login(&alice);
    assert_eq!(sim.group_send(ca, gid, 0, 9, b"once"), r1);
    let (_, got) = sim.login(&bob);
    assert_eq!(texts(&got), vec![b"once".to_vec()]);
    // Outside the window it is a new message.
    sim.advance(
        Duration::from_millis(hermes::limits::RELAY_DEDUPE_WINDOW_MS + 1)
            + sim.config.maintenance_interval,
    );
    let r3 = sim.group_send(ca, gid, 0, 9, b"once");
    assert_ne!(r3, r1);
}

fn stale_epoch_and_commit_rules<S: Restart>(store: S) {
    let mut sim = Sim::new(store, RelayConfig::default());
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let (carol, cc) = sim.user("carol");
    let gid = [4; 16];
    let s0 = sim.create_group(&alice, ca, &[&alice, &bob], gid);
    // Bob (not admin) tries to add carol: refused.
    let bad = Commit::sign(
        gid,
        1,
        Operation::Add {
            name: "carol".into(),
            identity_key: carol.keys.public_key(),
            public_identity: carol.identity.clone(),
        },
        [0; 32],
        "bob".into(),
        |m| bob.keys.sign(m),
    );
    sim.recv(cb);
    sim.send(
        cb,
        &Frame::Commit {
            commit: &bad.encode(),
        },
    );
    assert_eq!(sim.recv(cb), vec![Got::Error(ErrorCode::NotAuthorized)]);
    // The admin adds carol: epoch 1; the same commit again is a conflict.
    let add = s0
        .propose(
            Operation::Add {
                name: "carol".into(),
                identity_key: carol.keys.public_key(),
                public_identity: carol.identity.clone(),
            },
            "alice",
            |m| alice.keys.sign(m),
        )
        .unwrap();
    sim.send(
        ca,
        &Frame::Commit {
            commit: &add.encode(),
        },
    );
    assert!(sim.recv(ca).contains(&Got::CommitAccepted { epoch: 1 }));
    sim.send(
        ca,
        &Frame::Commit {
            commit: &add.encode(),
        },
    );
    assert!(sim.recv(ca).contains(&Got::Error(ErrorCode::EpochConflict)));
    // Carol got the add commit (she is a member now).
    let got = sim.recv(cc);
    assert!(got.iter().any(|g| matches!(
        g,
        Got::Deliver {
            kind: EntryKind::Commit,
            ..
        }
    )));
    // Bob sends under epoch 0: stale.
    let r = sim.group_send(cb, gid, 0, 1, b"old");
    assert!(r.contains(&Got::Error(ErrorCode::StaleEpoch)), "{r:?}");
    let r = sim.group_send(cb, gid, 1, 1, b"new");
    assert!(matches!(r.last(), Some(Got::Receipt { .. })), "{r:?}");
    // Commits are fetchable from any epoch.
    sim.send(
        cb,
        &Frame::FetchCommits {
            group_id: gid,
            from_epoch: 0,
        },
    );
    let got = sim.recv(cb);
    let Some(Got::Other(bytes)) = got.last() else {
        panic!("{got:?}")
    };
    let Frame::Commits { commits, more, .. } = Frame::decode(&bytes[..]).unwrap() else {
        panic!()
    };
    assert!(!more);
    assert_eq!(commits.len(), 2);
    assert_eq!(Commit::decode(commits[1]).unwrap(), add);
    // Remove bob: he gets the commit, then can no longer send.
    let s1 = s0.apply(&add).unwrap();
    let rm = s1
        .propose(
            Operation::Remove {
                name: "bob".into(),
                identity_key: bob.keys.public_key(),
            },
            "alice",
            |m| alice.keys.sign(m),
        )
        .unwrap();
    sim.send(
        ca,
        &Frame::Commit {
            commit: &rm.encode(),
        },
    );
    let got = sim.recv(cb);
    assert!(
        got.iter().any(|g| matches!(
            g,
            Got::Deliver {
                kind: EntryKind::Commit,
                ..
            }
        )),
        "{got:?}"
    );
    let r = sim.group_send(cb, gid, 2, 2, b"x");
    assert!(r.contains(&Got::Error(ErrorCode::NotMember)), "{r:?}");
}

fn direct_send_rules<S: Restart>(store: S) {
    let mut sim = Sim::new(store, RelayConfig::default());
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let (_eve, ce) = sim.user("eve");
    let gid = [5; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    sim.recv(cb);
    let dm = |to: &'static str, mid: u8| Frame::DirectSend {
        recipient: to,
        group_id: gid,
        kind: EntryKind::Distribution,
        message_id: [mid; 16],
        ciphertext: b"key",
    };
    // Eve shares no group with bob.
    sim.send(ce, &dm("bob", 1));
    assert_eq!(sim.recv(ce), vec![Got::Error(ErrorCode::NoSharedGroup)]);
    sim.send(ca, &dm("eve", 2));
    assert_eq!(sim.recv(ca), vec![Got::Error(ErrorCode::NoSharedGroup)]);
    sim.send(ca, &dm("nobody", 3));
    assert_eq!(sim.recv(ca), vec![Got::Error(ErrorCode::UnknownUser)]);
    sim.send(ca, &dm("bob", 4));
    assert!(matches!(sim.recv(ca).as_slice(), [Got::Receipt { .. }]));
    let got = sim.recv(cb);
    assert!(
        matches!(got.as_slice(), [Got::Deliver { kind: EntryKind::Distribution, sender, .. }] if sender == "alice"),
        "{got:?}"
    );
    assert!(sim.recv(ce).is_empty());
}

fn cap_and_gap_notice<S: Restart>(store: S) {
    let config = RelayConfig {
        queue_cap: 3,
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(store, config);
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let gid = [6; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    sim.core.handle_disconnect(cb);
    // A distribution first: exempt from the cap.
    sim.send(
        ca,
        &Frame::DirectSend {
            recipient: "bob",
            group_id: gid,
            kind: EntryKind::Distribution,
            message_id: [99; 16],
            ciphertext: b"dist",
        },
    );
    for i in 0..5u8 {
        let r = sim.group_send(ca, gid, 0, i, &[i]);
        assert!(
            r.iter().all(|g| matches!(g, Got::Receipt { .. })),
            "a send never fails for the recipient's cap: {r:?}"
        );
    }
    let (_, got) = sim.login(&bob);
    // Commit, distribution, one gap for 2 dropped, then the newest 3.
    assert!(
        matches!(
            got[1],
            Got::Deliver {
                kind: EntryKind::Commit,
                ..
            }
        ),
        "{got:?}"
    );
    assert!(
        matches!(
            &got[2],
            Got::Deliver {
                kind: EntryKind::Distribution,
                ..
            }
        ),
        "{got:?}"
    );
    assert!(
        matches!(&got[3], Got::Gap { sender, count: 2, .. } if sender == "alice"),
        "{got:?}"
    );
    assert_eq!(texts(&got[4..]), vec![vec![2u8], vec![3], vec![4]]);
    // The gap notice survives a restart until acked.
    let (mut sim, _) = sim.restart();
    let (cb, got) = sim.login(&bob);
    assert!(
        got.iter().any(|g| matches!(g, Got::Gap { count: 2, .. })),
        "{got:?}"
    );
    sim.send(
        cb,
        &Frame::Ack {
            up_to: last_seq(&got),
        },
    );
    let (_, got) = sim.login(&bob);
    assert_eq!(got.len(), 1);
}

/// Record kinds (PROTOCOL.md 3.6) these tests count in the store.
const RECORD_GROUP_MESSAGE: u8 = 3;
const RECORD_DROP: u8 = 6;

/// How many surviving records of `kind` the store holds.
fn stored<S: Store>(store: &S, kind: u8) -> usize {
    let mut n = 0;
    store.replay(&mut |r| n += usize::from(r.kind == kind));
    n
}

/// The gap notices in `got`: (seq, sender, count).
fn gap_notices(got: &[Got]) -> Vec<(u64, String, u32)> {
    got.iter()
        .filter_map(|g| match g {
            Got::Gap { seq, sender, count } => Some((*seq, sender.clone(), *count)),
            _ => None,
        })
        .collect()
}

/// Alice (online) and bob (offline) in group `gid`; alice sends `n`
/// messages (`big` bytes each, filled with the message number) to bob's
/// queue, capped at 3. Returns the receipts' sequence numbers.
fn offline_bob_over_cap<S: Restart>(
    store: S,
    gid: GroupId,
    n: u8,
    big: usize,
) -> (Sim<S>, User, ConnId, User, Vec<u64>) {
    let config = RelayConfig {
        queue_cap: 3,
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(store, config);
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    sim.core.handle_disconnect(cb);
    let mut seqs = Vec::new();
    for i in 0..n {
        let r = sim.group_send(ca, gid, 0, i, &vec![i; big]);
        seqs.extend(r.iter().filter_map(|g| match g {
            Got::Receipt { seq, .. } => Some(*seq),
            _ => None,
        }));
    }
    assert_eq!(seqs.len(), usize::from(n));
    (sim, alice, ca, bob, seqs)
}

/// A gap notice is backed by a drop record (PROTOCOL.md 3.6, kind 6):
/// once compaction has deleted the dropped messages' records, a restart
/// still gives the member its notice, at its place, with its count; once
/// the member acks past it, the record goes too. `exact`: the store has one
/// record per segment, so compaction deletes every released record.
fn gap_notice_survives_a_restart_after_its_messages_are_compacted<S: Restart>(
    store: S,
    exact: bool,
) {
    let gid = [7; 16];
    // Enough big messages that the relay copies the live records forward
    // and the store deletes the dropped ones' segments.
    let (mut sim, _, _, bob, seqs) = offline_bob_over_cap(store, gid, 12, 6000);
    compact(&mut sim);
    // Dropped messages' records are gone from the store (all nine with one
    // record per segment; the memory-mapped store keeps the ones that share
    // its open segment), and the drop record that counts them is there.
    let left = stored(sim.core.store(), RECORD_GROUP_MESSAGE);
    assert!(
        left < 12 && (!exact || left == 3),
        "{left} message records left"
    );
    assert_eq!(stored(sim.core.store(), RECORD_DROP), 1);
    let (mut sim, _) = sim.restart();
    let (cb, got) = sim.login(&bob);
    assert_eq!(
        gap_notices(&got),
        vec![(seqs[0], "alice".to_owned(), 9)],
        "{got:?}"
    );
    let texts = texts(&got);
    assert_eq!(texts.len(), 3);
    for (t, i) in texts.iter().zip(9u8..) {
        assert_eq!(t, &vec![i; 6000]);
    }
    let kept: Vec<u64> = delivered(&got).iter().map(|(seq, _)| *seq).collect();
    assert_eq!(kept, seqs[9..]);
    // The notice comes first, at the first dropped message's place.
    let first = got.iter().position(|g| matches!(g, Got::Gap { .. }));
    let first_msg = got.iter().position(|g| {
        matches!(
            g,
            Got::Deliver {
                kind: EntryKind::GroupMessage,
                ..
            }
        )
    });
    assert!(first < first_msg, "{got:?}");
    // A second restart (the record copied forward or not) says the same.
    sim.core.handle_disconnect(cb);
    compact(&mut sim);
    let (mut sim, _) = sim.restart();
    let (cb, got2) = sim.login(&bob);
    assert_eq!(gap_notices(&got2), gap_notices(&got));
    // Acked past it: released, compacted, not sent again.
    sim.send(
        cb,
        &Frame::Ack {
            up_to: last_seq(&got),
        },
    );
    compact(&mut sim);
    if exact {
        assert_eq!(stored(sim.core.store(), RECORD_DROP), 0, "released");
    }
    let (mut sim, _) = sim.restart();
    let (_, got) = sim.login(&bob);
    assert!(
        gap_notices(&got).is_empty() && delivered(&got).is_empty(),
        "{got:?}"
    );
}

/// Replay applies a drop record instead of re-deriving the gap from the
/// dropped messages whose records survive (here: not yet compacted, all in
/// the store's open segment), so the count is not doubled; a drop after
/// the last drop record (a crash before the next maintenance pass) is
/// re-derived from its message's record and merged into the same notice.
fn drop_records_are_not_counted_twice<S: Restart>(store: S) {
    let gid = [8; 16];
    let (mut sim, alice, _, bob, seqs) = offline_bob_over_cap(store, gid, 5, 1);
    sim.core.maintain(sim.unix_ms);
    assert_eq!(stored(sim.core.store(), RECORD_DROP), 1);
    let (mut sim, _) = sim.restart();
    let (cb, got) = sim.login(&bob);
    assert_eq!(gap_notices(&got), vec![(seqs[0], "alice".to_owned(), 2)]);
    assert_eq!(texts(&got), vec![vec![2u8], vec![3], vec![4]]);
    sim.core.handle_disconnect(cb);
    // Bob was sent the notice but acked nothing, so it can still grow: one
    // more message drops the oldest kept one into it. Restart without a
    // maintenance pass: that drop has no record yet; its message's record
    // was kept for it, and replay re-derives it into the same notice.
    let (ca, _) = sim.login(&alice);
    let r = sim.group_send(ca, gid, 0, 5, &[5]);
    let seq5 = match r.as_slice() {
        [Got::Receipt { seq, .. }] => *seq,
        _ => panic!("{r:?}"),
    };
    let (mut sim, _) = sim.restart();
    let (_, got) = sim.login(&bob);
    let notices = gap_notices(&got);
    assert_eq!(
        notices,
        vec![(seqs[0], "alice".to_owned(), 3)],
        "2 recorded + 1 re-derived, none twice: {got:?}"
    );
    assert_eq!(texts(&got), vec![vec![3u8], vec![4], vec![5]]);
    assert_eq!(last_seq(&got), seq5);
    // After the replay's own flush and compaction, a further restart says
    // exactly the same.
    compact(&mut sim);
    let (mut sim, _) = sim.restart();
    let (_, again) = sim.login(&bob);
    assert_eq!(gap_notices(&again), notices);
    assert_eq!(texts(&again), texts(&got));
}

/// The drop record is appended before the dropped messages' records are
/// released, so power loss before it is durable loses neither: compaction
/// waits for it, and replay re-derives the gap from the messages. It may
/// use the store's reserve (like an ack, it lets records go): a full store
/// still records the drops of its time-to-live expiry and frees the
/// expired messages' space.
#[test]
fn drop_records_survive_power_loss_and_a_full_store() {
    let gid = [9; 16];
    let (mut sim, alice, _, bob, seqs) =
        offline_bob_over_cap(FaultStore::with_segment_records(1), gid, 5, 1);
    sim.core.store_mut().sync();
    sim.core.maintain(sim.unix_ms);
    assert_eq!(stored(sim.core.store(), RECORD_DROP), 1);
    assert_eq!(
        stored(sim.core.store(), RECORD_GROUP_MESSAGE),
        5,
        "released, but not deleted before the drop record is durable"
    );
    assert_eq!(sim.core.store_mut().simulate_power_loss(), 1);
    let (mut sim, _) = sim.restart();
    let (cb, got) = sim.login(&bob);
    assert_eq!(gap_notices(&got), vec![(seqs[0], "alice".to_owned(), 2)]);
    assert_eq!(texts(&got), vec![vec![2u8], vec![3], vec![4]]);
    sim.core.handle_disconnect(cb);

    // Full: sends are refused, the expiry's drop record still goes in.
    let (ca, _) = sim.login(&alice);
    sim.core.store_mut().set_full(true);
    assert_eq!(
        sim.group_send(ca, gid, 0, 50, b"x"),
        vec![Got::Error(ErrorCode::StoreFull)]
    );
    let drops_before = stored(sim.core.store(), RECORD_DROP);
    sim.unix_ms += 31 * DAY_MS;
    sim.core.maintain(sim.unix_ms);
    assert_eq!(sim.core.stats().dropped_expired, 3);
    assert!(stored(sim.core.store(), RECORD_DROP) > drops_before);
    sim.core.store_mut().sync();
    sim.core.maintain(sim.unix_ms);
    assert_eq!(
        stored(sim.core.store(), RECORD_GROUP_MESSAGE),
        0,
        "the expired messages' space is freed while full"
    );
    let (mut sim, _) = sim.restart();
    let (_, got) = sim.login(&bob);
    assert_eq!(gap_notices(&got), vec![(seqs[0], "alice".to_owned(), 5)]);
    assert!(texts(&got).is_empty(), "{got:?}");
}

/// A drop record that cannot be appended (a full store with its reserve
/// used up) is retried at the next pass, and until then the dropped
/// messages' records stay: nothing is deleted that no record counts.
#[test]
fn drop_records_wait_for_space_and_keep_the_messages_meanwhile() {
    let gid = [11; 16];
    let (mut sim, _, _, bob, seqs) =
        offline_bob_over_cap(FaultStore::with_segment_records(1), gid, 5, 1);
    let store = sim.core.store_mut();
    store.set_full(true);
    // Use the reserve up with records of a kind the core does not know,
    // down to the last bytes.
    let mut filled = 0;
    for size in [60_000, 2_000, 100, 1] {
        while store.append_reserved(99, T0_MS, &vec![0u8; size]).is_ok() {
            filled += 1;
            assert!(filled < 1_000, "the reserve is bounded");
        }
    }
    store.sync();
    sim.core.maintain(sim.unix_ms);
    sim.core.store_mut().sync();
    sim.core.maintain(sim.unix_ms);
    assert_eq!(stored(sim.core.store(), RECORD_DROP), 0, "no space for it");
    assert_eq!(
        stored(sim.core.store(), RECORD_GROUP_MESSAGE),
        5,
        "the dropped messages' records are kept until their drop record exists"
    );
    // Space again: the next pass writes it and lets the messages go.
    sim.core.store_mut().set_full(false);
    sim.core.maintain(sim.unix_ms);
    assert_eq!(stored(sim.core.store(), RECORD_DROP), 1);
    sim.core.store_mut().sync();
    sim.core.maintain(sim.unix_ms);
    assert_eq!(stored(sim.core.store(), RECORD_GROUP_MESSAGE), 3);
    let (mut sim, _) = sim.restart();
    let (_, got) = sim.login(&bob);
    assert_eq!(gap_notices(&got), vec![(seqs[0], "alice".to_owned(), 2)]);
    assert_eq!(texts(&got), vec![vec![2u8], vec![3], vec![4]]);
}

/// Every message alice sends to bob is, after any mix of drops (over the
/// cap, past the time to live), maintenance passes, compactions, restarts,
/// bob's logins (some acking all he got) and carol acking (so messages'
/// records go at different times), either delivered to bob or counted in a
/// gap notice: exactly once over all his sessions. (Before drop records, a
/// restart after compaction lost counts.)
fn every_message_delivered_or_counted_once<S: Restart>(store: S, seed: u64) {
    let config = RelayConfig {
        queue_cap: 3,
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(store, config);
    let (alice, mut ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let (carol, cc) = sim.user("carol");
    let gid = [12; 16];
    sim.create_group(&alice, ca, &[&alice, &bob, &carol], gid);
    sim.core.handle_disconnect(cb);
    sim.core.handle_disconnect(cc);
    // A small xorshift: the scenario only needs a reproducible mix.
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut sent = 0u32;
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut counted = 0u32;
    let mut take = |got: &[Got], seen: &mut Vec<Vec<u8>>| {
        counted += gap_notices(got).iter().map(|(_, _, c)| c).sum::<u32>();
        seen.extend(texts(got));
        counted
    };
    for _ in 0..60 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match x % 14 {
            0..=5 => {
                let mid = u8::try_from(sent).unwrap();
                let r = sim.group_send(ca, gid, 0, mid, &sent.to_be_bytes());
                assert!(matches!(r.as_slice(), [Got::Receipt { .. }]), "{r:?}");
                sent += 1;
            }
            6 => sim.core.maintain(sim.unix_ms),
            7 => compact(&mut sim),
            8 => sim.unix_ms += 31 * DAY_MS,
            9 => {
                // Bob looks and leaves: all of it comes again next time.
                let (cb, _) = sim.login(&bob);
                sim.core.handle_disconnect(cb);
            }
            10 => {
                // Bob takes and acks everything he got.
                let (cb, got) = sim.login(&bob);
                take(&got, &mut seen);
                sim.send(
                    cb,
                    &Frame::Ack {
                        up_to: last_seq(&got),
                    },
                );
                sim.core.handle_disconnect(cb);
            }
            11 => {
                let (cc, got) = sim.login(&carol);
                sim.send(
                    cc,
                    &Frame::Ack {
                        up_to: last_seq(&got),
                    },
                );
                sim.core.handle_disconnect(cc);
            }
            _ => {
                sim = sim.restart().0;
                ca = sim.login(&alice).0;
            }
        }
    }
    let (_, got) = sim.login(&bob);
    let counted = take(&got, &mut seen);
    let delivered = u32::try_from(seen.len()).unwrap();
    assert_eq!(counted + delivered, sent, "seed {seed}: {got:?}");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "seed {seed}: no message twice");
}

#[test]
fn mmap_every_message_delivered_or_counted_once() {
    for seed in 0..8 {
        every_message_delivered_or_counted_once(Mmap::new(), seed);
    }
}

#[test]
fn mem_every_message_delivered_or_counted_once() {
    for seed in 0..64 {
        every_message_delivered_or_counted_once(mem(), seed);
        every_message_delivered_or_counted_once(MemStore::with_segment_records(1), seed);
    }
}

fn ttl_expiry<S: Restart>(store: S) {
    let mut sim = Sim::new(store, RelayConfig::default());
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let gid = [7; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    sim.core.handle_disconnect(cb);
    let dist = |mid: u8| Frame::DirectSend {
        recipient: "bob",
        group_id: gid,
        kind: EntryKind::Distribution,
        message_id: [mid; 16],
        ciphertext: &[],
    };
    sim.send(ca, &dist(50));
    sim.send(ca, &dist(51)); // the newest distribution: kept past the TTL
    for i in 0..3u8 {
        sim.group_send(ca, gid, 0, i, &[i]);
    }
    sim.advance(Duration::from_millis(20 * DAY_MS));
    // Alice's connection was closed as idle meanwhile.
    assert!(sim.closes().contains(&(ca, CloseReason::Idle)));
    let (ca, _) = sim.login(&alice);
    let r = sim.group_send(ca, gid, 0, 10, b"fresh");
    assert!(matches!(r.as_slice(), [Got::Receipt { .. }]), "{r:?}");
    sim.advance(Duration::from_millis(11 * DAY_MS));
    let (_, got) = sim.login(&bob);
    let kinds: Vec<_> = got
        .iter()
        .map(|g| match g {
            Got::Deliver {
                kind, message_id, ..
            } => format!("{kind:?}{}", message_id[0]),
            Got::Gap { count, .. } => format!("gap{count}"),
            _ => "auth".into(),
        })
        .collect();
    // The commit and the newest distribution stay; the older distribution
    // and the three messages become one gap of 4; the fresh one stays.
    assert_eq!(
        kinds,
        vec![
            "auth",
            "Commit0",
            "gap4",
            "Distribution51",
            "GroupMessage10"
        ],
        "{got:?}"
    );
}

fn restart_delivers_unacked_and_nothing_acked<S: Restart>(store: S) {
    let mut sim = Sim::new(store, RelayConfig::default());
    let (alice, ca) = sim.user("alice");
    let mut others = Vec::new();
    for i in 0..20 {
        others.push(sim.user(&format!("user{i}")));
    }
    let gid = [8; 16];
    let mut members: Vec<&User> = others.iter().map(|(u, _)| u).collect();
    members.push(&alice);
    sim.create_group(&alice, ca, &members, gid);
    for i in 0..10u8 {
        sim.group_send(ca, gid, 0, i, &[i]);
    }
    // Even members ack everything up to message 5, odd ones nothing.
    let mut cut = HashMap::new();
    for (n, (u, c)) in others.iter().enumerate() {
        let got = sim.recv(*c);
        let d = delivered(&got);
        assert_eq!(d.len(), 10);
        if n % 2 == 0 {
            sim.send(*c, &Frame::Ack { up_to: d[5].0 });
            cut.insert(u.name.clone(), 6usize);
        } else {
            cut.insert(u.name.clone(), 0usize);
        }
    }
    let (mut sim, report) = sim.restart();
    assert_eq!(report.accounts, 21);
    assert_eq!(report.groups, 1);
    for (u, _) in &others {
        let (_, got) = sim.login(u);
        let want: Vec<Vec<u8>> = (u8::try_from(cut[&u.name]).unwrap()..10)
            .map(|i| vec![i])
            .collect();
        assert_eq!(texts(&got), want, "{}", u.name);
    }
}

fn several_sessions_get_everything<S: Restart>(store: S) {
    let mut sim = Sim::new(store, RelayConfig::default());
    let (alice, ca) = sim.user("alice");
    let (bob, cb1) = sim.user("bob");
    let (cb2, _) = sim.login(&bob);
    let gid = [9; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    sim.group_send(ca, gid, 0, 1, b"hi");
    let g1 = sim.recv(cb1);
    let g2 = sim.recv(cb2);
    assert_eq!(texts(&g1), vec![b"hi".to_vec()]);
    assert_eq!(g1, g2);
    // An ack on one session is the user's position.
    sim.send(
        cb2,
        &Frame::Ack {
            up_to: last_seq(&g2),
        },
    );
    let (_, got) = sim.login(&bob);
    assert_eq!(
        got,
        vec![Got::Authenticated {
            name: "bob".into(),
            acked: last_seq(&g2)
        }]
    );
}

fn quota_and_full_store(store: FaultStore) {
    let config = RelayConfig {
        sender_quota: 2,
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(store, config);
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let gid = [10; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    sim.group_send(ca, gid, 0, 1, b"1");
    sim.group_send(ca, gid, 0, 2, b"2");
    assert_eq!(
        sim.group_send(ca, gid, 0, 3, b"3"),
        vec![Got::Error(ErrorCode::QuotaExceeded)]
    );
    // Bob acks: the quota frees.
    let got = sim.recv(cb);
    sim.send(
        cb,
        &Frame::Ack {
            up_to: last_seq(&got),
        },
    );
    assert!(matches!(
        sim.group_send(ca, gid, 0, 3, b"3").as_slice(),
        [Got::Receipt { .. }]
    ));
    sim.core.store_mut().set_full(true);
    assert_eq!(
        sim.group_send(ca, gid, 0, 4, b"4"),
        vec![Got::Error(ErrorCode::StoreFull)]
    );
    sim.core.store_mut().set_full(false);
    assert!(matches!(
        sim.group_send(ca, gid, 0, 4, b"4").as_slice(),
        [Got::Receipt { .. }]
    ));
}

fn framing_errors_are_answered_and_close<S: Restart>(store: S) {
    let mut sim = Sim::new(
        store,
        RelayConfig {
            max_frame: 4096,
            ..RelayConfig::default()
        },
    );
    // Ping works before login; a frame split across reads is reassembled.
    let c = sim.connect();
    let ping = Frame::Ping { nonce: 77 }.to_vec();
    assert_eq!(
        sim.core.handle_bytes(c, &ping[..5], sim.now, sim.unix_ms),
        0
    );
    assert_eq!(
        sim.core.handle_bytes(c, &ping, sim.now, sim.unix_ms),
        ping.len()
    );
    assert!(matches!(sim.recv(c).as_slice(), [Got::Other(_)]));
    // A relay-only kind from a client: refused, connection kept.
    sim.send(c, &Frame::Pong { nonce: 1 });
    assert_eq!(sim.recv(c), vec![Got::Error(ErrorCode::UnexpectedFrame)]);
    assert!(sim.closes().is_empty());
    // Unknown kind, old and unknown versions: refused and closed.
    for (bytes, code) in [
        (vec![0, 0, 0, 2, 1, 0x7f], ErrorCode::UnknownKind),
        (vec![0, 0, 0, 2, 0, 0x2b], ErrorCode::OldVersion),
        (vec![0, 0, 0, 2, 9, 0x2b], ErrorCode::UnknownVersion),
        (vec![0, 0, 0x10, 1, 1, 0x28], ErrorCode::FrameTooLarge),
        (vec![0, 0, 0, 3, 1, 0x2a, 0], ErrorCode::Malformed),
    ] {
        let c = sim.connect();
        let used = sim.core.handle_bytes(c, &bytes, sim.now, sim.unix_ms);
        assert_eq!(used, bytes.len());
        assert_eq!(sim.recv(c), vec![Got::Error(code)], "{bytes:?}");
        assert_eq!(sim.closes(), vec![(c, CloseReason::Protocol(code))]);
        // Nothing more is processed on a closing connection.
        sim.core.handle_bytes(c, &ping, sim.now, sim.unix_ms);
        assert!(sim.recv(c).is_empty());
        sim.core.handle_disconnect(c);
    }
    // Other connections carry on.
    sim.send(c, &Frame::Ping { nonce: 1 });
    assert_eq!(sim.recv(c).len(), 1);
}

fn lists_and_identities<S: Restart>(store: S) {
    let mut sim = Sim::new(store, RelayConfig::default());
    let (alice, ca) = sim.user("alice");
    let (bob, _) = sim.user("bob");
    let (_, ce) = sim.user("eve");
    let gid = [11; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    sim.send(ca, &Frame::FetchIdentities(vec!["bob", "nobody"]));
    let got = sim.recv(ca);
    let Some(Got::Other(bytes)) = got.last() else {
        panic!("{got:?}")
    };
    let Frame::Identities(ids) = Frame::decode(bytes).unwrap() else {
        panic!()
    };
    assert_eq!(ids[0].identity, Some(&bob.identity[..]));
    assert_eq!(ids[1].identity, None);
    // An answer that would not fit in one frame is refused, not cut.
    let many: Vec<&str> = std::iter::repeat_n("bob", 3000).collect();
    sim.send(ca, &Frame::FetchIdentities(many));
    assert_eq!(sim.recv(ca), vec![Got::Error(ErrorCode::FrameTooLarge)]);
    assert!(sim.closes().is_empty());
    sim.send(ca, &Frame::ListGroups);
    let got = sim.recv(ca);
    let Some(Got::Other(bytes)) = got.last() else {
        panic!("{got:?}")
    };
    let Frame::Groups(groups) = Frame::decode(bytes).unwrap() else {
        panic!()
    };
    assert_eq!(
        (groups.len(), groups[0].group_id, groups[0].admin),
        (1, gid, "alice")
    );
    sim.send(ca, &Frame::ListMembers { group_id: gid });
    let got = sim.recv(ca);
    let Some(Got::Other(bytes)) = got.last() else {
        panic!("{got:?}")
    };
    let Frame::Members { members, epoch, .. } = Frame::decode(bytes).unwrap() else {
        panic!()
    };
    assert_eq!((members, epoch), (vec!["alice", "bob"], 0));
    // Non-members may not list or fetch.
    sim.send(ce, &Frame::ListMembers { group_id: gid });
    assert_eq!(sim.recv(ce), vec![Got::Error(ErrorCode::NotMember)]);
    sim.send(
        ce,
        &Frame::FetchCommits {
            group_id: gid,
            from_epoch: 0,
        },
    );
    assert_eq!(sim.recv(ce), vec![Got::Error(ErrorCode::NotMember)]);
    sim.send(ce, &Frame::ListMembers { group_id: [0; 16] });
    assert_eq!(sim.recv(ce), vec![Got::Error(ErrorCode::UnknownGroup)]);
    // Group ids are first come, first served.
    let dup = Commit::genesis(
        gid,
        "x".into(),
        "alice".into(),
        vec![("alice".into(), alice.keys.public_key())],
        |m| alice.keys.sign(m),
    )
    .unwrap();
    sim.send(
        ca,
        &Frame::CreateGroup {
            genesis: &dup.encode(),
        },
    );
    assert_eq!(sim.recv(ca), vec![Got::Error(ErrorCode::GroupExists)]);
    // A genesis naming a key that is not the member's registered one.
    let fake = SigningKeyPair::from_secret_bytes(&[5; 32]);
    let bad = Commit::genesis(
        [12; 16],
        "x".into(),
        "alice".into(),
        vec![
            ("alice".into(), alice.keys.public_key()),
            ("bob".into(), fake.public_key()),
        ],
        |m| alice.keys.sign(m),
    )
    .unwrap();
    sim.send(
        ca,
        &Frame::CreateGroup {
            genesis: &bad.encode(),
        },
    );
    assert_eq!(sim.recv(ca), vec![Got::Error(ErrorCode::BadCommit)]);
}

fn registration_rate_limit<S: Restart>(store: S) {
    let mut sim = Sim::new(
        store,
        RelayConfig {
            registrations_per_minute: 2,
            ..RelayConfig::default()
        },
    );
    sim.user("a1");
    sim.user("a2");
    let u = sim.new_user("a3");
    let (c, got) = sim.register(&u);
    assert_eq!(got, vec![Got::Error(ErrorCode::RegistrationRateLimited)]);
    assert!(sim.closes().contains(&(
        c,
        CloseReason::AuthFailed(ErrorCode::RegistrationRateLimited)
    )));
    sim.advance(Duration::from_secs(31));
    let (_, got) = sim.register(&u);
    assert!(
        matches!(got.as_slice(), [Got::Authenticated { .. }]),
        "{got:?}"
    );

    // Deliberate: the rate is taken before the signature checks, so a bad
    // proof spends its token (else a flood of bad proofs would buy
    // unlimited signature checks). The next good one waits for the refill.
    sim.advance(Duration::from_secs(31));
    let u = sim.new_user("a4");
    let c = sim.connect();
    let mut proof = u.keys.sign(&register_message(
        &sim.challenges[&c],
        &sim.core.relay_key(),
        &u.name,
    ));
    proof[0] ^= 1;
    sim.send(
        c,
        &Frame::Register {
            name: &u.name,
            identity: &u.identity,
            proof,
        },
    );
    assert_eq!(sim.recv(c), vec![Got::Error(ErrorCode::BadSignature)]);
    let (_, got) = sim.register(&u);
    assert_eq!(got, vec![Got::Error(ErrorCode::RegistrationRateLimited)]);
    sim.advance(Duration::from_secs(31));
    let (_, got) = sim.register(&u);
    assert!(
        matches!(got.as_slice(), [Got::Authenticated { .. }]),
        "{got:?}"
    );
}

/// Waits (briefly) until everything appended is durable, so compaction is
/// not held back by a sync thread that has not run yet.
fn settle<S: Store>(store: &S) {
    for _ in 0..2000 {
        let last = store.stats().next_id - 1;
        if store.durable_up_to().is_some_and(|d| d.0 >= last) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn compact<S: Restart>(sim: &mut Sim<S>) {
    for _ in 0..8 {
        settle(sim.core.store());
        sim.core.maintain(sim.unix_ms);
    }
}

fn compaction_keeps_everything_needed<S: Restart>(store: S) {
    let config = RelayConfig {
        copy_forward_batch: 64,
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(store, config);
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let (carol, cc) = sim.user("carol");
    let g1 = [13; 16];
    let g2 = [16; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], g1);
    sim.create_group(&alice, ca, &[&alice, &carol], g2);
    // Carol never reads: her distribution, the accounts and the commits
    // stay live in the oldest segment.
    sim.core.handle_disconnect(cc);
    sim.send(
        ca,
        &Frame::DirectSend {
            recipient: "carol",
            group_id: g2,
            kind: EntryKind::Distribution,
            message_id: [200; 16],
            ciphertext: b"carol's key",
        },
    );
    sim.recv(ca);
    let big = vec![0x33u8; 700];
    for round in 0..6u8 {
        for i in 0..20u8 {
            let r = sim.group_send(ca, g1, 0, round * 20 + i, &big);
            assert!(matches!(r.as_slice(), [Got::Receipt { .. }]), "{r:?}");
        }
        let got = sim.recv(cb);
        sim.send(
            cb,
            &Frame::Ack {
                up_to: last_seq(&got),
            },
        );
    }
    let before = sim.core.store().stats();
    compact(&mut sim);
    let after = sim.core.store().stats();
    assert!(
        sim.core.stats().copied_forward > 0,
        "{:?}",
        sim.core.stats()
    );
    assert!(after.segments < before.segments, "{before:?} -> {after:?}");
    assert!(
        after.records < 30,
        "acked messages compacted away: {before:?} -> {after:?}"
    );
    // After a restart on the compacted store nothing is lost.
    let (mut sim, report) = sim.restart();
    assert_eq!((report.accounts, report.groups), (3, 2), "{report:?}");
    let (cc, got) = sim.login(&carol);
    assert_eq!(texts(&got), vec![b"carol's key".to_vec()]);
    let (_, got_b) = sim.login(&bob);
    assert!(
        delivered(&got_b).is_empty(),
        "bob acked everything: {got_b:?}"
    );
    sim.send(
        cc,
        &Frame::Ack {
            up_to: last_seq(&got),
        },
    );
    let (ca, _) = sim.login(&alice);
    let r = sim.group_send(ca, g1, 0, 250, b"after");
    assert!(matches!(r.as_slice(), [Got::Receipt { .. }]), "{r:?}");
    compact(&mut sim);
    let (mut sim, _) = sim.restart();
    let (_, got) = sim.login(&bob);
    assert_eq!(texts(&got), vec![b"after".to_vec()]);
    let (_, got) = sim.login(&carol);
    assert!(delivered(&got).is_empty(), "{got:?}");
}

fn key_requests_are_rate_limited<S: Restart>(store: S) {
    let config = RelayConfig {
        key_requests_per_minute: 2,
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(store, config);
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let gid = [17; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    let req = |mid: u8| Frame::DirectSend {
        recipient: "alice",
        group_id: gid,
        kind: EntryKind::KeyRequest,
        message_id: [mid; 16],
        ciphertext: b"?",
    };
    sim.recv(cb);
    for mid in 1..=2 {
        sim.send(cb, &req(mid));
    }
    sim.send(cb, &req(3));
    let got = sim.recv(cb);
    assert!(
        matches!(
            got.as_slice(),
            [
                Got::Receipt { .. },
                Got::Receipt { .. },
                Got::Error(ErrorCode::RateLimited)
            ]
        ),
        "{got:?}"
    );
    // Distributions are not key requests.
    sim.send(
        cb,
        &Frame::DirectSend {
            recipient: "alice",
            group_id: gid,
            kind: EntryKind::Distribution,
            message_id: [4; 16],
            ciphertext: b"k",
        },
    );
    assert!(matches!(sim.recv(cb).as_slice(), [Got::Receipt { .. }]));
    sim.now += Duration::from_secs(31);
    sim.send(cb, &req(5));
    assert!(matches!(sim.recv(cb).as_slice(), [Got::Receipt { .. }]));
}

#[test]
fn default_limits_are_the_config_defaults() {
    use hermes::limits::*;
    let c = RelayConfig::default();
    assert_eq!(c.max_frame, MAX_FRAME_LEN);
    assert_eq!(c.ttl_ms, RELAY_TTL_MS);
    assert_eq!(RELAY_TTL_MS, 30 * DAY_MS);
    assert_eq!(c.queue_cap, RELAY_QUEUE_CAP);
    assert_eq!(c.sender_quota, RELAY_SENDER_QUOTA);
    assert_eq!(c.dedupe_window_ms, RELAY_DEDUPE_WINDOW_MS);
    assert_eq!(c.registrations_per_minute, RELAY_REGISTRATIONS_PER_MINUTE);
    assert_eq!(c.key_requests_per_minute, RELAY_KEY_REQUESTS_PER_MINUTE);
    assert_eq!(c.idle_timeout, RELAY_IDLE_TIMEOUT);
    assert_eq!(c.maintenance_interval, RELAY_MAINTENANCE_INTERVAL);
    assert_eq!(c.copy_forward_batch, RELAY_COPY_FORWARD_BATCH);
    assert!(!c.receipts_after_durable);
}

/// The default cap: one message over it drops exactly the oldest.
#[test]
fn relay_queue_cap_default_limit() {
    let mut sim = Sim::new(MemStore::new(), RelayConfig::default());
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let gid = [18; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    sim.core.handle_disconnect(cb);
    let n = hermes::limits::RELAY_QUEUE_CAP + 1;
    for i in 0..n {
        let mut mid = [0u8; 16];
        mid[..8].copy_from_slice(&(i as u64).to_be_bytes());
        sim.send(
            ca,
            &Frame::GroupSend {
                group_id: gid,
                epoch: 0,
                message_id: mid,
                ciphertext: b"m",
            },
        );
        if i % 1024 == 0 {
            sim.recv(ca);
        }
    }
    assert_eq!(sim.core.stats().dropped_over_cap, 1);
    let (_, got) = sim.login(&bob);
    assert!(
        matches!(got[2], Got::Gap { count: 1, .. }),
        "{:?}",
        &got[..3]
    );
    assert_eq!(delivered(&got).len(), hermes::limits::RELAY_QUEUE_CAP);
}

/// The default idle timeout closes a silent connection, and a ping keeps
/// one alive.
#[test]
fn relay_idle_timeout_default_limit() {
    let mut sim = Sim::new(MemStore::new(), RelayConfig::default());
    let quiet = sim.connect();
    let chatty = sim.connect();
    let step = hermes::limits::RELAY_IDLE_TIMEOUT / 4;
    for _ in 0..6 {
        sim.send(chatty, &Frame::Ping { nonce: 1 });
        sim.recv(chatty);
        sim.advance(step);
    }
    assert_eq!(sim.closes(), vec![(quiet, CloseReason::Idle)]);
}

// ---------------------------------------------------------------------------
// Durability: receipts under fsync always, power loss.
// ---------------------------------------------------------------------------

#[test]
fn receipts_wait_for_durability_and_power_loss_keeps_what_was_receipted() {
    let config = RelayConfig {
        receipts_after_durable: true,
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(FaultStore::new(), config);
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let gid = [14; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    assert!(
        sim.group_send(ca, gid, 0, 1, b"one").is_empty(),
        "no receipt before the sync"
    );
    sim.core.store_mut().sync();
    sim.core.handle_durable();
    let got = sim.recv(ca);
    assert!(matches!(got.as_slice(), [Got::Receipt { message_id, .. }] if *message_id == [1; 16]));
    // Two is stored but never synced: no receipt, lost with the power.
    assert!(sim.group_send(ca, gid, 0, 2, b"two").is_empty());
    sim.core.handle_durable();
    assert!(sim.recv(ca).is_empty());
    // Bob received both and acked both, but the ack was not synced either.
    let got = sim.recv(cb);
    assert_eq!(texts(&got), vec![b"one".to_vec(), b"two".to_vec()]);
    sim.send(
        cb,
        &Frame::Ack {
            up_to: last_seq(&got),
        },
    );
    let mut store = sim.core.into_store();
    assert!(store.simulate_power_loss() > 0);
    let (core, _) = RelayCore::open(
        store,
        StdRng::seed_from_u64(3),
        SigningKeyPair::from_secret_bytes(&sim.relay_secret),
        sim.config.clone(),
        sim.now,
        sim.unix_ms,
    )
    .unwrap();
    let mut sim = Sim {
        core,
        challenges: HashMap::new(),
        ..sim
    };
    // Receipted "one" is still there (its ack was lost: delivered again);
    // "two" was never receipted, so alice re-sends it under the same id.
    let (_, got) = sim.login(&bob);
    assert_eq!(texts(&got), vec![b"one".to_vec()]);
    let (ca, _) = sim.login(&alice);
    sim.group_send(ca, gid, 0, 2, b"two");
    sim.core.store_mut().sync();
    sim.core.handle_durable();
    assert!(matches!(sim.recv(ca).as_slice(), [Got::Receipt { .. }]));
}

// ---------------------------------------------------------------------------
// Against the memory-mapped store: torn tail and corruption through the core.
// ---------------------------------------------------------------------------

/// Offset just past the last non-zero byte of a file.
fn data_end(path: &std::path::Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |p| p as u64 + 1)
}

fn patch(path: &std::path::Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

#[test]
fn mmap_torn_tail_and_corrupt_record_through_the_core() {
    let mut sim = Sim::new(Mmap::new(), RelayConfig::default());
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let gid = [15; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    sim.core.handle_disconnect(cb);
    sim.group_send(ca, gid, 0, 1, b"first");
    sim.group_send(ca, gid, 0, 2, b"CORRUPT-ME-PLEASE");
    sim.group_send(ca, gid, 0, 3, b"third");
    sim.group_send(ca, gid, 0, 4, b"torn-tail-message");
    let store = sim.core.into_store();
    let seg = store.newest_segment();
    let mut store = store;
    drop(store.store.take());
    // Flip a byte inside the second message's ciphertext.
    let bytes = std::fs::read(&seg).unwrap();
    let at = bytes
        .windows(17)
        .position(|w| w == b"CORRUPT-ME-PLEASE")
        .unwrap() as u64;
    patch(&seg, at + 3, b"X");
    // Tear the last record: its last bytes never reached the disk.
    let end = data_end(&seg);
    patch(&seg, end - 8, &[0; 8]);
    store.store =
        Some(MmapStore::open(store.dir.path(), store.config.clone(), Box::new(|| {})).unwrap());
    let report = store.recovery_report().clone();
    assert_eq!(report.corrupt_records.len(), 1, "{report:?}");
    assert_eq!(report.torn_tails.len(), 1, "{report:?}");
    let (core, replay) = RelayCore::open(
        store,
        StdRng::seed_from_u64(3),
        SigningKeyPair::from_secret_bytes(&sim.relay_secret),
        sim.config.clone(),
        sim.now,
        sim.unix_ms,
    )
    .unwrap();
    assert_eq!((replay.accounts, replay.groups), (2, 1));
    let mut sim = Sim {
        core,
        challenges: HashMap::new(),
        ..sim
    };
    let (_, got) = sim.login(&bob);
    assert_eq!(texts(&got), vec![b"first".to_vec(), b"third".to_vec()]);
    // The relay keeps working on the recovered store.
    let (ca, _) = sim.login(&alice);
    let r = sim.group_send(ca, gid, 0, 4, b"torn-tail-message");
    assert!(matches!(r.as_slice(), [Got::Receipt { .. }]), "{r:?}");
}

// ---------------------------------------------------------------------------
// Against the in-memory store.
// ---------------------------------------------------------------------------

#[test]
fn mem_register_login_wrong_signature_replayed_login() {
    register_login_wrong_signature_replayed_login(mem());
}
#[test]
fn mem_group_fanout_online_and_offline_in_order() {
    group_fanout_online_and_offline_in_order(mem());
}
#[test]
fn mem_cumulative_ack_and_no_redelivery() {
    cumulative_ack_and_no_redelivery(mem());
}
#[test]
fn mem_idempotent_resend() {
    idempotent_resend(mem());
}
#[test]
fn mem_stale_epoch_and_commit_rules() {
    stale_epoch_and_commit_rules(mem());
}
#[test]
fn mem_direct_send_rules() {
    direct_send_rules(mem());
}
#[test]
fn mem_cap_and_gap_notice() {
    cap_and_gap_notice(mem());
}
#[test]
fn mem_ttl_expiry() {
    ttl_expiry(mem());
}
#[test]
fn mem_restart_delivers_unacked_and_nothing_acked() {
    restart_delivers_unacked_and_nothing_acked(mem());
}
#[test]
fn mem_several_sessions_get_everything() {
    several_sessions_get_everything(mem());
}
#[test]
fn fault_quota_and_full_store() {
    quota_and_full_store(FaultStore::new());
}
#[test]
fn small_segments_gap_notice_survives_a_restart_after_its_messages_are_compacted() {
    gap_notice_survives_a_restart_after_its_messages_are_compacted(
        MemStore::with_segment_records(1),
        true,
    );
}
#[test]
fn mem_drop_records_are_not_counted_twice() {
    drop_records_are_not_counted_twice(mem());
}
#[test]
fn small_segments_drop_records_are_not_counted_twice() {
    drop_records_are_not_counted_twice(MemStore::with_segment_records(1));
}
#[test]
fn small_segments_restart_delivers_unacked_and_nothing_acked() {
    restart_delivers_unacked_and_nothing_acked(MemStore::with_segment_records(4));
}
#[test]
fn mem_framing_errors_are_answered_and_close() {
    framing_errors_are_answered_and_close(mem());
}
#[test]
fn mem_lists_and_identities() {
    lists_and_identities(mem());
}
#[test]
fn mem_registration_rate_limit() {
    registration_rate_limit(mem());
}
#[test]
fn mem_key_requests_are_rate_limited() {
    key_requests_are_rate_limited(mem());
}
#[test]
fn mem_compaction_keeps_everything_needed() {
    compaction_keeps_everything_needed(MemStore::with_segment_records(16));
}

// ---------------------------------------------------------------------------
// The same scenarios against the memory-mapped store in a temp dir.
// ---------------------------------------------------------------------------

#[test]
fn mmap_register_login_wrong_signature_replayed_login() {
    register_login_wrong_signature_replayed_login(Mmap::new());
}
#[test]
fn mmap_group_fanout_online_and_offline_in_order() {
    group_fanout_online_and_offline_in_order(Mmap::new());
}
#[test]
fn mmap_cumulative_ack_and_no_redelivery() {
    cumulative_ack_and_no_redelivery(Mmap::new());
}
#[test]
fn mmap_idempotent_resend() {
    idempotent_resend(Mmap::new());
}
#[test]
fn mmap_stale_epoch_and_commit_rules() {
    stale_epoch_and_commit_rules(Mmap::new());
}
#[test]
fn mmap_direct_send_rules() {
    direct_send_rules(Mmap::new());
}
#[test]
fn mmap_cap_and_gap_notice() {
    cap_and_gap_notice(Mmap::new());
}
#[test]
fn mmap_ttl_expiry() {
    ttl_expiry(Mmap::new());
}
#[test]
fn mmap_restart_delivers_unacked_and_nothing_acked() {
    restart_delivers_unacked_and_nothing_acked(Mmap::new());
}
#[test]
fn mmap_several_sessions_get_everything() {
    several_sessions_get_everything(Mmap::new());
}
#[test]
fn mmap_gap_notice_survives_a_restart_after_its_messages_are_compacted() {
    gap_notice_survives_a_restart_after_its_messages_are_compacted(Mmap::new(), false);
}
#[test]
fn mmap_drop_records_are_not_counted_twice() {
    drop_records_are_not_counted_twice(Mmap::new());
}
#[test]
fn mmap_compaction_keeps_everything_needed() {
    compaction_keeps_everything_needed(Mmap::new());
}

/// A connection the core closes gets its error frame, then nothing more:
/// its queue stays in the mailbox for the next session.
#[test]
fn closing_session_gets_no_more_deliveries() {
    let mut sim = Sim::new(MemStore::new(), RelayConfig::default());
    let (alice, ca) = sim.user("alice");
    let (bob, cb) = sim.user("bob");
    let gid = [19; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    sim.recv(cb);
    sim.core
        .handle_bytes(cb, &[0, 0, 0, 2, 1, 0x7f], sim.now, sim.unix_ms);
    sim.group_send(ca, gid, 0, 1, b"later");
    assert_eq!(sim.recv(cb), vec![Got::Error(ErrorCode::UnknownKind)]);
    assert!(!sim.core.has_pending_output(cb));
    sim.core.handle_disconnect(cb);
    let (_, got) = sim.login(&bob);
    assert_eq!(texts(&got), vec![b"later".to_vec()]);
}

/// Ready edges with several sessions of one member: once every session was
/// reported, further entries report none again until a session drains;
/// then that session (and only that one) is reported for the next entry,
/// and a session that logs in later is reported too.
#[test]
fn each_session_is_reported_again_after_it_drains() {
    let mut sim = Sim::new(mem(), RelayConfig::default());
    let (alice, ca) = sim.user("alice");
    let (bob, cb1) = sim.user("bob");
    let (cb2, _) = sim.login(&bob);
    let gid = [12; 16];
    sim.create_group(&alice, ca, &[&alice, &bob], gid);
    sim.recv(cb1);
    sim.recv(cb2);
    let mut ready = Vec::new();
    sim.core.poll_ready_conns(&mut ready);

    sim.group_send(ca, gid, 0, 1, b"one");
    ready.clear();
    sim.core.poll_ready_conns(&mut ready);
    assert!(ready.contains(&cb1) && ready.contains(&cb2), "{ready:?}");
    // Not drained: a second entry reports nothing new.
    sim.group_send(ca, gid, 0, 2, b"two");
    ready.clear();
    sim.core.poll_ready_conns(&mut ready);
    assert!(!ready.contains(&cb1) && !ready.contains(&cb2), "{ready:?}");
    // Only the first session drains: the next entry reports it, only it.
    assert_eq!(
        texts(&sim.recv(cb1)),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
    sim.group_send(ca, gid, 0, 3, b"three");
    ready.clear();
    sim.core.poll_ready_conns(&mut ready);
    assert!(ready.contains(&cb1) && !ready.contains(&cb2), "{ready:?}");
    // A third session logs in (and drains the backlog at login); the next
    // entry reports it.
    let (cb3, got) = sim.login(&bob);
    assert_eq!(texts(&got).len(), 3, "{got:?}");
    sim.group_send(ca, gid, 0, 4, b"four");
    ready.clear();
    sim.core.poll_ready_conns(&mut ready);
    assert!(ready.contains(&cb3), "{ready:?}");
    assert_eq!(
        texts(&sim.recv(cb2)),
        vec![
            b"one".to_vec(),
            b"two".to_vec(),
            b"three".to_vec(),
            b"four".to_vec()
        ]
    );
    assert_eq!(
        texts(&sim.recv(cb1)),
        vec![b"three".to_vec(), b"four".to_vec()]
    );
    assert_eq!(texts(&sim.recv(cb3)), vec![b"four".to_vec()]);
}
