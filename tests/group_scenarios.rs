//! Group scenarios in the manner of libsignal's `tests/groups.rs`: ordering,
//! duplicates, limits, joins and removals, rollbacks, forgeries, reflection.
// Test helpers outside #[test] functions: clippy.toml's test allowances do
// not reach them.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;

use hermes::crypto::dh::DhGroup;
use hermes::crypto::identity::{IdentityKeyPair, PublicIdentity};
use hermes::group::distribution::{KEY_REQUEST_KIND, WELCOME_KIND, open_direct, seal_direct};
use hermes::group::session::commit_effects;
use hermes::group::{
    ChainKey, Distribution, DistributionOutcome, GroupError, GroupSession, KeyRequest, Parallelism,
    ReceiverStore, SenderKey, Welcome, pairwise_channels,
};
use hermes::limits::{
    MAX_FORWARD_JUMP, MAX_GAP_ALLOWANCE, MAX_GROUP_PLAINTEXT_BYTES, MAX_SENDER_KEYS_PER_SENDER,
    MAX_SKIPPED_KEY_AGE_MS, MAX_SKIPPED_KEYS_PER_CHAIN, MAX_SKIPPED_KEYS_TOTAL,
};
use hermes::membership::{Commit, GroupState, Operation};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

const GID: [u8; 16] = [0x11; 16];
const T0: u64 = 1_700_000_000_000;

struct User {
    id: IdentityKeyPair,
    public: PublicIdentity,
    session: Option<GroupSession>,
}

/// A handful of users, one verified commit log, and a pairwise "post".
struct World {
    rng: StdRng,
    users: BTreeMap<String, User>,
    log: Vec<Commit>,
    next_id: u64,
}

impl World {
    fn new(names: &[&str], members: &[&str]) -> World {
        let mut rng = StdRng::seed_from_u64(42);
        let mut users = BTreeMap::new();
        for n in names {
            let id = IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng);
            let public = id.public();
            users.insert(
                n.to_string(),
                User {
                    id,
                    public,
                    session: None,
                },
            );
        }
        let admin = members[0];
        let roster = members
            .iter()
            .map(|m| (m.to_string(), users[*m].public.signing_key))
            .collect();
        let genesis = Commit::genesis(GID, "test".into(), admin.into(), roster, |m| {
            users[admin].id.sign(m)
        })
        .unwrap();
        let mut w = World {
            rng,
            users,
            log: vec![genesis],
            next_id: 0,
        };
        for m in members {
            w.join(m);
        }
        // Everyone gives its key to everyone.
        for a in members {
            for b in members {
                if a != b {
                    w.give_key(a, b).unwrap();
                }
            }
        }
        w
    }

    fn join(&mut self, name: &str) {
        let s = GroupSession::from_log(name, &self.log, &mut self.rng).unwrap();
        self.users.get_mut(name).unwrap().session = Some(s);
    }

    fn s(&mut self, name: &str) -> &mut GroupSession {
        self.users.get_mut(name).unwrap().session.as_mut().unwrap()
    }

    /// `from` seals its distribution to `to` over their pairwise channel;
    /// `to` opens it and installs it.
    fn give_key(&mut self, from: &str, to: &str) -> Result<DistributionOutcome, GroupError> {
        let sealed = self.seal_distribution(from, to);
        self.receive_distribution(from, to, &sealed)
    }

    fn seal_distribution(&mut self, from: &str, to: &str) -> Vec<u8> {
        let d = self.s(from).distribution_for(to).unwrap();
        let ch = self.channel(from, to);
        d.seal(&ch.send, from, to, &mut self.rng).unwrap()
    }

    fn receive_distribution(
        &mut self,
        from: &str,
        to: &str,
        sealed: &[u8],
    ) -> Result<DistributionOutcome, GroupError> {
        let ch = self.channel(to, from);
        let d = Distribution::open(&ch.recv, from, to, sealed)?;
        self.s(to).handle_distribution(from, &d)
    }

    fn channel(&self, me: &str, peer: &str) -> hermes::group::PeerChannel {
        let peers = vec![(peer.to_string(), self.users[peer].public.clone())];
        pairwise_channels(me, &self.users[me].id, &peers, None, Parallelism::Serial)
            .pop()
            .unwrap()
            .unwrap()
    }

    fn send(&mut self, from: &str, text: &str) -> Vec<u8> {
        self.next_id += 1;
        let mut mid = [0u8; 16];
        mid[8..].copy_from_slice(&self.next_id.to_be_bytes());
        self.s(from).seal(T0, mid, text.as_bytes()).unwrap()
    }

    fn read(&mut self, to: &str, msg: &[u8]) -> Result<(String, String), GroupError> {
        let o = self.s(to).open(msg, T0)?;
        Ok((
            o.header.sender.clone(),
            String::from_utf8(o.plaintext.to_vec()).unwrap(),
        ))
    }

    fn commit(&mut self, signer: &str, op: Operation) -> Commit {
        let state = self.s(signer).state().clone();
        let c = state
            .propose(op, signer, |m| self.users[signer].id.sign(m))
            .unwrap();
        self.log.push(c.clone());
        c
    }

    fn key(&self, name: &str) -> [u8; 32] {
        self.users[name].public.signing_key
    }
}

#[test]
fn in_order_delivery_of_100_messages() {
    let mut w = World::new(&["alice", "bob", "carol"], &["alice", "bob", "carol"]);
    for i in 0..100 {
        let m = w.send("alice", &format!("m{i}"));
        for r in ["bob", "carol"] {
            assert_eq!(w.read(r, &m).unwrap(), ("alice".into(), format!("m{i}")));
        }
    }
    assert_eq!(w.s("bob").receivers().current("alice"), Some((1, 100)));
    assert_eq!(w.s("bob").receivers().skipped_total(), 0);
}

#[test]
fn shuffled_delivery_of_100_messages_and_duplicates() {
    let mut w = World::new(&["alice", "bob"], &["alice", "bob"]);
    let mut msgs: Vec<(usize, Vec<u8>)> = (0..100)
        .map(|i| (i, w.send("alice", &format!("m{i}"))))
        .collect();
    msgs.shuffle(&mut w.rng);
    for (i, m) in &msgs {
        assert_eq!(w.read("bob", m).unwrap().1, format!("m{i}"));
    }
    assert_eq!(w.s("bob").receivers().skipped_total(), 0);
    // Every message a second time: refused, nothing changes.
    for (i, m) in &msgs {
        assert!(
            matches!(
                w.read("bob", m),
                Err(GroupError::DuplicateOrExpired { iteration, .. }) if iteration as usize == *i
            ),
            "duplicate {i}"
        );
    }
    assert_eq!(w.s("bob").receivers().current("alice"), Some((1, 100)));
}

#[test]
fn duplicate_of_skipped_key_message() {
    let mut w = World::new(&["alice", "bob"], &["alice", "bob"]);
    let m0 = w.send("alice", "zero");
    let m1 = w.send("alice", "one");
    assert_eq!(w.read("bob", &m1).unwrap().1, "one");
    assert_eq!(w.s("bob").receivers().skipped_total(), 1);
    assert_eq!(w.read("bob", &m0).unwrap().1, "zero");
    assert_eq!(w.s("bob").receivers().skipped_total(), 0);
    assert!(matches!(
        w.read("bob", &m0),
        Err(GroupError::DuplicateOrExpired { .. })
    ));
    assert!(matches!(
        w.read("bob", &m1),
        Err(GroupError::DuplicateOrExpired { .. })
    ));
}

/// A sender key with known secrets and a receiver holding its distribution.
fn pair(signing_seed: u8, ck: [u8; 32]) -> (SenderKey, ReceiverStore, [u8; 32]) {
    let sk = SenderKey::from_parts(GID, 1, ck, 0, &[signing_seed; 32]);
    let mut rs = ReceiverStore::new(GID);
    let d = Distribution::new(GID, 0, 1, 0, ck, sk.signing_public());
    assert_eq!(
        rs.handle_distribution("alice", &d).unwrap(),
        DistributionOutcome::Installed
    );
    (sk, rs, ck)
}

/// The sender key `sk` moved to `iteration` (same chain, same signing key).
fn at_iteration(signing_seed: u8, ck: [u8; 32], iteration: u32) -> SenderKey {
    let mut c = ChainKey::new(ck, 0);
    c.skip(iteration).unwrap();
    SenderKey::from_parts(GID, 1, *c.key_bytes(), iteration, &[signing_seed; 32])
}

fn seal(sk: &mut SenderKey, text: &str) -> Vec<u8> {
    sk.seal(0, "alice", T0, [0; 16], text.as_bytes()).unwrap()
}

#[test]
fn jump_past_the_forward_limit_is_refused_without_state_change() {
    let (_, mut rs, ck) = pair(1, [5; 32]);
    let too_far = seal(&mut at_iteration(1, ck, MAX_FORWARD_JUMP + 1), "far");
    assert!(matches!(
        rs.open(&too_far, T0),
        Err(GroupError::TooFarAhead { current: 0, .. })
    ));
    assert_eq!(rs.current("alice"), Some((1, 0)));
    assert_eq!(rs.skipped_total(), 0);
    // Exactly at the limit is fine; only the newest keys are kept.
    let edge = seal(&mut at_iteration(1, ck, MAX_FORWARD_JUMP), "edge");
    assert_eq!(&rs.open(&edge, T0).unwrap().plaintext[..], b"edge");
    assert_eq!(rs.current("alice"), Some((1, MAX_FORWARD_JUMP + 1)));
    assert_eq!(rs.skipped_for("alice", 1), MAX_SKIPPED_KEYS_PER_CHAIN);
    // The oldest skipped keys were dropped, the newest kept.
    let old = seal(&mut at_iteration(1, ck, 3), "old");
    assert!(matches!(
        rs.open(&old, T0),
        Err(GroupError::DuplicateOrExpired { iteration: 3, .. })
    ));
    let recent = seal(&mut at_iteration(1, ck, MAX_FORWARD_JUMP - 1), "recent");
    assert_eq!(&rs.open(&recent, T0).unwrap().plaintext[..], b"recent");
    assert_eq!(rs.skipped_total(), MAX_SKIPPED_KEYS_PER_CHAIN - 1);
}

#[test]
fn gap_notice_lets_a_receiver_jump_without_storing_keys() {
    let (_, mut rs, ck) = pair(1, [6; 32]);
    let far = MAX_FORWARD_JUMP + 5_000;
    let m = seal(&mut at_iteration(1, ck, far), "after gap");
    assert!(matches!(
        rs.open(&m, T0),
        Err(GroupError::TooFarAhead { .. })
    ));
    rs.handle_gap("alice", far);
    assert_eq!(&rs.open(&m, T0).unwrap().plaintext[..], b"after gap");
    assert_eq!(rs.skipped_total(), 0);
    // A gap smaller than the jump: only the dropped (oldest) keys go unstored.
    rs.handle_gap("alice", 10);
    let m = seal(&mut at_iteration(1, ck, far + 1 + 15), "later");
    assert_eq!(&rs.open(&m, T0).unwrap().plaintext[..], b"later");
    assert_eq!(rs.skipped_total(), 5);
}

#[test]
fn skipped_keys_total_limit_evicts_the_oldest() {
    let mut rs = ReceiverStore::new(GID);
    let senders = MAX_SKIPPED_KEYS_TOTAL / MAX_SKIPPED_KEYS_PER_CHAIN + 1;
    let mut keys = Vec::new();
    for i in 0..senders {
        let ck = [i as u8; 32];
        let sk = SenderKey::from_parts(GID, 1, ck, 0, &[i as u8 + 1; 32]);
        let d = Distribution::new(GID, 0, 1, 0, ck, sk.signing_public());
        rs.handle_distribution(&format!("s{i:02}"), &d).unwrap();
        keys.push(ck);
    }
    for (i, ck) in keys.iter().enumerate() {
        let mut c = ChainKey::new(*ck, 0);
        c.skip(MAX_SKIPPED_KEYS_PER_CHAIN as u32).unwrap();
        let mut sk = SenderKey::from_parts(
            GID,
            1,
            *c.key_bytes(),
            MAX_SKIPPED_KEYS_PER_CHAIN as u32,
            &[i as u8 + 1; 32],
        );
        let m = sk.seal(0, &format!("s{i:02}"), T0, [0; 16], b"x").unwrap();
        // Later senders' keys are stored later.
        rs.open(&m, T0 + i as u64).unwrap();
        assert!(rs.skipped_total() <= MAX_SKIPPED_KEYS_TOTAL);
    }
    assert_eq!(rs.skipped_total(), MAX_SKIPPED_KEYS_TOTAL);
    // The first sender's keys were the oldest and went first.
    assert_eq!(rs.skipped_for("s00", 1), 0);
    assert_eq!(
        rs.skipped_for(&format!("s{:02}", senders - 1), 1),
        MAX_SKIPPED_KEYS_PER_CHAIN
    );
}

#[test]
fn skipped_keys_expire_by_age() {
    let (_, mut rs, ck) = pair(1, [7; 32]);
    let m5 = seal(&mut at_iteration(1, ck, 5), "five");
    rs.open(&m5, T0).unwrap();
    assert_eq!(rs.skipped_total(), 5);
    let m2 = seal(&mut at_iteration(1, ck, 2), "two");
    let late = T0 + MAX_SKIPPED_KEY_AGE_MS + 1;
    assert!(matches!(
        rs.open(&m2, late),
        Err(GroupError::DuplicateOrExpired { iteration: 2, .. })
    ));
    // Refused without change: within the age it still opens.
    assert_eq!(rs.skipped_total(), 5);
    assert_eq!(
        &rs.open(&m2, T0 + MAX_SKIPPED_KEY_AGE_MS).unwrap().plaintext[..],
        b"two"
    );
    rs.expire(late);
    assert_eq!(rs.skipped_total(), 0);
}

#[test]
fn late_joiner_cannot_read_earlier_messages() {
    let mut w = World::new(&["alice", "bob", "dave"], &["alice", "bob"]);
    let before = w.send("alice", "before dave");
    assert_eq!(w.read("bob", &before).unwrap().1, "before dave");
    let dave_key = w.key("dave");
    let add = Operation::Add {
        name: "dave".into(),
        identity_key: dave_key,
        public_identity: w.users["dave"].public.encode(),
    };
    // Every existing member's effects: give the current key to dave only.
    let mut next = w.s("alice").state().clone();
    let probe = next
        .propose(add, "alice", |m| w.users["alice"].id.sign(m))
        .unwrap();
    next = next.apply(&probe).unwrap();
    for m in ["alice", "bob"] {
        let fx = commit_effects(m, &probe.op, &next);
        assert_eq!(fx.send_my_key_to, vec!["dave".to_string()]);
        assert!(!fx.rotated);
    }
    let c = add_dave(&mut w, &["alice", "bob"]);
    // Dave's own effects: send his key to everybody else.
    let after = w.s("dave").state().clone();
    assert_eq!(
        commit_effects("dave", &c.op, &after).send_my_key_to,
        vec!["alice".to_string(), "bob".to_string()]
    );
    for m in ["alice", "bob"] {
        w.give_key(m, "dave").unwrap();
        w.give_key("dave", m).unwrap();
    }
    // Keys are kept across an add: alice still uses key id 1.
    assert_eq!(w.s("dave").receivers().current("alice"), Some((1, 1)));
    assert!(matches!(
        w.read("dave", &before),
        Err(GroupError::DuplicateOrExpired { .. })
    ));
    let after_msg = w.send("alice", "after dave");
    assert_eq!(w.read("dave", &after_msg).unwrap().1, "after dave");
    assert_eq!(w.read("bob", &after_msg).unwrap().1, "after dave");
    let from_dave = w.send("dave", "hi");
    assert_eq!(w.read("alice", &from_dave).unwrap().0, "dave");
}

#[test]
fn removed_member_cannot_read_later_messages() {
    let mut w = World::new(&["alice", "bob", "carol"], &["alice", "bob", "carol"]);
    let bob_key = w.key("bob");
    let c = w.commit(
        "alice",
        Operation::Remove {
            name: "bob".into(),
            identity_key: bob_key,
        },
    );
    let mut rng = StdRng::seed_from_u64(1);
    for m in ["alice", "carol"] {
        let fx = w.s(m).apply_commit(&c, &mut rng).unwrap();
        assert!(fx.rotated);
        assert_eq!(fx.forgot.as_deref(), Some("bob"));
        assert_eq!(w.s(m).my_key().key_id(), 2);
    }
    let fx = w.s("bob").apply_commit(&c, &mut rng).unwrap();
    assert!(fx.removed_me);
    assert!(w.s("bob").closed().is_some());
    w.give_key("alice", "carol").unwrap();
    w.give_key("carol", "alice").unwrap();
    let secret = w.send("alice", "bob is gone");
    assert_eq!(w.read("carol", &secret).unwrap().1, "bob is gone");
    // Bob still holds alice's key id 1 but not 2.
    assert!(matches!(
        w.s("bob").receivers_mut().open(&secret, T0),
        Err(GroupError::NoSenderKey { key_id: 2, .. })
    ));
    assert!(matches!(
        w.read("bob", &secret),
        Err(GroupError::Unusable(_))
    ));
    // And alice no longer accepts bob's messages nor gives him keys.
    assert!(matches!(
        w.s("alice").distribution_for("bob"),
        Err(GroupError::NotMember(_))
    ));
}

#[test]
fn leave_rotates_keys_and_admin_leave_dissolves() {
    let mut w = World::new(&["alice", "bob", "carol"], &["alice", "bob", "carol"]);
    let carol_key = w.key("carol");
    let leave = Operation::Leave {
        name: "carol".into(),
        identity_key: carol_key,
    };
    let c = w.commit("carol", leave);
    let mut rng = StdRng::seed_from_u64(2);
    for m in ["alice", "bob"] {
        let fx = w.s(m).apply_commit(&c, &mut rng).unwrap();
        assert!(fx.rotated);
        assert_eq!(fx.send_my_key_to.len(), 1);
    }
    let alice_key = w.key("alice");
    let c = w.commit(
        "alice",
        Operation::Leave {
            name: "alice".into(),
            identity_key: alice_key,
        },
    );
    let fx = w.s("bob").apply_commit(&c, &mut rng).unwrap();
    assert!(fx.dissolved);
    assert!(!fx.rotated);
    assert!(matches!(
        w.s("bob").seal(T0, [0; 16], b"x"),
        Err(GroupError::Unusable(_))
    ));
}

#[test]
fn forged_commit_freezes_the_session_but_a_replay_does_not() {
    let mut w = World::new(&["alice", "bob", "carol"], &["alice", "bob"]);
    let carol_key = w.key("carol");
    let mut c = w.commit(
        "alice",
        Operation::Add {
            name: "carol".into(),
            identity_key: carol_key,
            public_identity: vec![1],
        },
    );
    let mut rng = StdRng::seed_from_u64(3);
    let good = c.clone();
    w.s("alice").apply_commit(&good, &mut rng).unwrap();
    // Replay of an applied epoch: refused, not frozen.
    assert!(w.s("alice").apply_commit(&good, &mut rng).is_err());
    assert!(w.s("alice").closed().is_none());
    c.signature[0] ^= 1;
    assert!(matches!(
        w.s("bob").apply_commit(&c, &mut rng),
        Err(GroupError::Membership(_))
    ));
    assert!(w.s("bob").closed().is_some());
    assert!(w.s("bob").apply_commit(&good, &mut rng).is_err());
}

#[test]
fn distribution_replayed_or_rolled_back_is_refused() {
    let mut w = World::new(&["alice", "bob", "carol"], &["alice", "bob", "carol"]);
    let old_for_carol = w.seal_distribution("alice", "carol");
    // Re-sending the same key: a harmless duplicate, no change.
    assert_eq!(
        w.receive_distribution("alice", "carol", &old_for_carol)
            .unwrap(),
        DistributionOutcome::Duplicate
    );
    // Carol reads a few messages, then the same key id at iteration 0 would
    // roll her chain back.
    for _ in 0..3 {
        let m = w.send("alice", "x");
        w.read("carol", &m).unwrap();
    }
    assert!(matches!(
        w.receive_distribution("alice", "carol", &old_for_carol),
        Err(GroupError::Rollback { .. })
    ));
    assert_eq!(w.s("carol").receivers().current("alice"), Some((1, 3)));
    // Rotate alice's key (bob removed); the old key id is then a rollback.
    let bob_key = w.key("bob");
    let c = w.commit(
        "alice",
        Operation::Remove {
            name: "bob".into(),
            identity_key: bob_key,
        },
    );
    let mut rng = StdRng::seed_from_u64(4);
    for m in ["alice", "carol"] {
        w.s(m).apply_commit(&c, &mut rng).unwrap();
    }
    w.give_key("alice", "carol").unwrap();
    assert_eq!(w.s("carol").receivers().current("alice"), Some((2, 0)));
    assert!(matches!(
        w.receive_distribution("alice", "carol", &old_for_carol),
        Err(GroupError::Rollback {
            held_key_id: 2,
            got_key_id: 1
        })
    ));
    // Carol's sealed distribution replayed to alice as if from bob, or to
    // bob: the pairwise keys or the authenticated header refuse it.
    let for_alice = w.seal_distribution("carol", "alice");
    let ch = w.channel("alice", "bob");
    assert!(Distribution::open(&ch.recv, "bob", "alice", &for_alice).is_err());
    let ch = w.channel("alice", "carol");
    assert!(matches!(
        Distribution::open(&ch.recv, "carol", "bob", &for_alice),
        Err(GroupError::WrongParties)
    ));
}

#[test]
fn sender_keys_kept_per_sender_is_bounded() {
    let mut rs = ReceiverStore::new(GID);
    let mut msgs = Vec::new();
    for key_id in 1..=(MAX_SENDER_KEYS_PER_SENDER as u32 + 1) {
        let mut sk = SenderKey::from_parts(GID, key_id, [key_id as u8; 32], 0, &[9; 32]);
        let d = Distribution::new(GID, 0, key_id, 0, [key_id as u8; 32], sk.signing_public());
        rs.handle_distribution("alice", &d).unwrap();
        msgs.push(seal(&mut sk, "m"));
    }
    // The oldest key id was dropped; the newer ones still open.
    assert!(matches!(
        rs.open(&msgs[0], T0),
        Err(GroupError::NoSenderKey { key_id: 1, .. })
    ));
    for m in &msgs[1..] {
        rs.open(m, T0).unwrap();
    }
}

#[test]
fn message_forged_by_another_member_is_refused() {
    let mut w = World::new(&["alice", "bob", "carol"], &["alice", "bob", "carol"]);
    // Bob holds alice's chain key (a valid group key) but not her signing key.
    let d = w.s("alice").distribution_for("bob").unwrap();
    let mut forger =
        SenderKey::from_parts(GID, d.key_id(), *d.chain_key(), d.iteration(), &[0xB0; 32]);
    let forged = forger
        .seal(0, "alice", T0, [1; 16], b"transfer the money")
        .unwrap();
    assert!(matches!(
        w.read("carol", &forged),
        Err(GroupError::BadSignature)
    ));
    assert_eq!(w.s("carol").receivers().current("alice"), Some((1, 0)));
    // Alice's genuine message at that iteration still opens.
    let real = w.send("alice", "hello");
    assert_eq!(w.read("carol", &real).unwrap().1, "hello");
    // A flipped bit anywhere breaks the signature or the MACs.
    let real2 = w.send("alice", "again");
    for i in (0..real2.len()).step_by(7) {
        let mut bad = real2.clone();
        bad[i] ^= 0x20;
        assert!(w.read("carol", &bad).is_err(), "byte {i}");
    }
    assert_eq!(w.read("carol", &real2).unwrap().1, "again");
}

#[test]
fn message_reflected_to_its_sender_is_refused() {
    let mut w = World::new(&["alice", "bob"], &["alice", "bob"]);
    let m = w.send("alice", "to the group");
    assert!(matches!(
        w.read("alice", &m),
        Err(GroupError::NotMember(ref n)) if n == "alice"
    ));
    // Below the session check, alice holds no chain of her own either.
    assert!(matches!(
        w.s("alice").receivers_mut().open(&m, T0),
        Err(GroupError::NoSenderKey { .. })
    ));
    // A distribution from alice to bob reflected back to alice as if from
    // bob fails the pairwise MAC (the directions' keys differ).
    let sealed = w.seal_distribution("alice", "bob");
    assert!(matches!(
        w.receive_distribution("bob", "alice", &sealed),
        Err(GroupError::Crypto(_))
    ));
}

#[test]
fn setup_checks_identities_against_the_roster_and_keeps_order() {
    let mut rng = StdRng::seed_from_u64(77);
    let names = ["p0", "p1", "p2", "p3", "p4", "p5"];
    let ids: Vec<IdentityKeyPair> = names
        .iter()
        .map(|_| IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng))
        .collect();
    let me = IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng);
    let mut roster: Vec<(String, [u8; 32])> = names
        .iter()
        .zip(&ids)
        .map(|(n, i)| (n.to_string(), i.public().signing_key))
        .collect();
    roster.push(("me".into(), me.public().signing_key));
    let g = Commit::genesis(GID, "g".into(), "me".into(), roster, |m| me.sign(m)).unwrap();
    let state = GroupState::from_genesis(&g).unwrap();
    let mut peers: Vec<(String, PublicIdentity)> = names
        .iter()
        .zip(&ids)
        .map(|(n, i)| (n.to_string(), i.public()))
        .collect();
    // p2 presents someone else's identity; p4 a broken certificate.
    peers[2].1 = ids[3].public();
    peers[4].1.certificate[0] ^= 1;
    peers.push(("stranger".into(), ids[0].public()));
    let serial = pairwise_channels("me", &me, &peers, Some(&state), Parallelism::Serial);
    let parallel = pairwise_channels("me", &me, &peers, Some(&state), Parallelism::Parallel);
    for (i, (s, p)) in serial.iter().zip(&parallel).enumerate() {
        match (s, p) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.peer, peers[i].0);
                assert_eq!(b.peer, peers[i].0);
                assert_eq!(a.send, b.send);
                assert_eq!(a.recv, b.recv);
                assert_ne!(a.send, a.recv);
            }
            (Err(_), Err(_)) => assert!([2, 4, 6].contains(&i), "peer {i} failed"),
            _ => panic!("serial and parallel disagree on peer {i}"),
        }
    }
    assert!(matches!(serial[2], Err(GroupError::BadIdentity(_))));
    assert!(matches!(serial[4], Err(GroupError::BadIdentity(_))));
    assert!(matches!(serial[6], Err(GroupError::NotMember(_))));
    // The other side derives the same keys, directions swapped.
    let theirs = pairwise_channels(
        "p1",
        &ids[1],
        &[("me".to_string(), me.public())],
        None,
        Parallelism::Auto,
    );
    let theirs = theirs[0].as_ref().unwrap();
    let mine = serial[1].as_ref().unwrap();
    assert_eq!(theirs.send, mine.recv);
    assert_eq!(theirs.recv, mine.send);

    // The full setup seals my distribution to every good peer.
    let mut session = GroupSession::new("me", state, &mut rng).unwrap();
    let out = session
        .setup_and_distribute(&me, &peers, Parallelism::Auto, &mut rng)
        .unwrap();
    assert_eq!(out.len(), peers.len());
    let (ch, sealed) = out[1].as_ref().unwrap();
    let d = Distribution::open(&theirs.recv, "me", "p1", sealed).unwrap();
    assert_eq!(d.key_id(), 1);
    assert_eq!(ch.peer, "p1");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any delivery order opens every message exactly once and leaves no
    /// skipped keys behind.
    #[test]
    fn any_order_opens_each_message_once(n in 1usize..40, seed in any::<u64>()) {
        let (mut sk, mut rs, _) = pair(3, [seed as u8; 32]);
        let mut msgs: Vec<(usize, Vec<u8>)> =
            (0..n).map(|i| (i, seal(&mut sk, &i.to_string()))).collect();
        msgs.shuffle(&mut StdRng::seed_from_u64(seed));
        for (i, m) in &msgs {
            let o = rs.open(m, T0).unwrap();
            prop_assert_eq!(String::from_utf8(o.plaintext.to_vec()).unwrap(), i.to_string());
        }
        prop_assert_eq!(rs.skipped_total(), 0);
        prop_assert_eq!(rs.current("alice"), Some((1, n as u32)));
        for (_, m) in &msgs {
            prop_assert!(rs.open(m, T0).is_err());
        }
    }

    /// A refused message never changes the receiver's state.
    #[test]
    fn refusals_change_nothing(
        ops in proptest::collection::vec((0u32..60, any::<bool>(), 0usize..200), 1..30)
    ) {
        let ck = [8; 32];
        let (_, mut rs, _) = pair(4, ck);
        for (iteration, corrupt, byte) in ops {
            let mut m = seal(&mut at_iteration(4, ck, iteration), "p");
            if corrupt {
                let i = byte % m.len();
                m[i] ^= 1;
            }
            let before = (rs.current("alice"), rs.skipped_total());
            match rs.open(&m, T0) {
                Ok(o) => prop_assert_eq!(&o.plaintext[..], b"p"),
                Err(_) => prop_assert_eq!((rs.current("alice"), rs.skipped_total()), before),
            }
        }
    }

    /// The chain is deterministic: skip(n) then step equals n + 1 steps.
    #[test]
    fn chain_skip_matches_steps(key in any::<[u8; 32]>(), n in 0u32..200) {
        let mut a = ChainKey::new(key, 0);
        let mut b = ChainKey::new(key, 0);
        a.skip(n).unwrap();
        for _ in 0..n {
            b.step().unwrap();
        }
        let (sa, sb) = (a.step().unwrap(), b.step().unwrap());
        prop_assert_eq!(sa.as_bytes(), sb.as_bytes());
        prop_assert_eq!(a.iteration(), n + 1);
    }
}

#[test]
fn session_state_survives_a_save_and_load() {
    let mut w = World::new(&["alice", "bob", "carol"], &["alice", "bob", "carol"]);
    let msgs: Vec<Vec<u8>> = (0..10).map(|i| w.send("alice", &format!("m{i}"))).collect();
    // Bob reads 7 and 3 (two skipped keys stored, 0..=2 and 4..=6).
    w.read("bob", &msgs[7]).unwrap();
    w.read("bob", &msgs[3]).unwrap();
    let _ = w.s("alice").distribution_for("carol").unwrap();
    for who in ["alice", "bob"] {
        let bytes = w.s(who).to_state_bytes();
        let restored = GroupSession::from_state_bytes(&bytes).unwrap();
        assert_eq!(&restored.to_state_bytes()[..], &bytes[..]);
        for cut in (0..bytes.len()).step_by(13) {
            assert!(GroupSession::from_state_bytes(&bytes[..cut]).is_err());
        }
        w.users.get_mut(who).unwrap().session = Some(restored);
    }
    assert_eq!(w.s("bob").receivers().skipped_total(), 6);
    for i in [0, 9, 5, 4, 6, 1, 2, 8] {
        assert_eq!(w.read("bob", &msgs[i]).unwrap().1, format!("m{i}"));
    }
    assert!(w.read("bob", &msgs[3]).is_err());
    // Alice's restored key continues her chain and re-sends what she gave.
    let m = w.send("alice", "after restore");
    assert_eq!(w.read("carol", &m).unwrap().1, "after restore");
    let resent = w.seal_distribution("alice", "carol");
    assert!(matches!(
        w.receive_distribution("alice", "carol", &resent),
        Err(GroupError::Rollback { .. })
    ));
    assert_eq!(w.s("carol").receivers().skipped_total(), 10);
}

/// Adds `dave` (admin alice), applies the commit for the members, and lets
/// dave join from the log and alice's sealed welcome.
fn add_dave(w: &mut World, members: &[&str]) -> Commit {
    let dave_key = w.key("dave");
    let c = w.commit(
        "alice",
        Operation::Add {
            name: "dave".into(),
            identity_key: dave_key,
            public_identity: w.users["dave"].public.encode(),
        },
    );
    let mut rng = StdRng::seed_from_u64(10);
    for m in members {
        w.s(m).apply_commit(&c, &mut rng).unwrap();
    }
    let welcome = w.s("alice").welcome_for("dave").unwrap();
    let ch = w.channel("alice", "dave");
    let sealed = seal_direct(
        WELCOME_KIND,
        &ch.send,
        "alice",
        "dave",
        &welcome.encode(),
        &mut rng,
    )
    .unwrap();
    let ch = w.channel("dave", "alice");
    let body = open_direct(WELCOME_KIND, &ch.recv, "alice", "dave", &sealed).unwrap();
    let welcome = Welcome::decode(&body).unwrap();
    // A welcome that does not match the log (or comes from a non-admin) is refused.
    let mut wrong = welcome.clone();
    wrong.roster_hash[0] ^= 1;
    assert!(GroupSession::from_welcome("dave", "alice", &wrong, &w.log, &mut rng).is_err());
    assert!(GroupSession::from_welcome("dave", "bob", &welcome, &w.log, &mut rng).is_err());
    let s = GroupSession::from_welcome("dave", "alice", &welcome, &w.log, &mut rng).unwrap();
    w.users.get_mut("dave").unwrap().session = Some(s);
    c
}

#[test]
fn message_before_its_key_is_opened_after_a_key_request() {
    let mut w = World::new(&["alice", "bob", "dave"], &["alice", "bob"]);
    for _ in 0..3 {
        let m = w.send("alice", "old");
        w.read("bob", &m).unwrap();
    }
    add_dave(&mut w, &["alice", "bob"]);
    // Alice gives dave her key (at iteration 3) but the envelope is delayed.
    let delayed = w.seal_distribution("alice", "dave");
    let m = w.send("alice", "early");
    assert!(matches!(
        w.read("dave", &m),
        Err(GroupError::NoSenderKey { ref sender, key_id: 1 }) if sender == "alice"
    ));
    // Dave asks; alice re-sends exactly what she first gave.
    let mut rng = StdRng::seed_from_u64(11);
    let req = KeyRequest {
        group_id: GID,
        key_id: 1,
    };
    let ch = w.channel("dave", "alice");
    let sealed = seal_direct(
        KEY_REQUEST_KIND,
        &ch.send,
        "dave",
        "alice",
        &req.encode(),
        &mut rng,
    )
    .unwrap();
    let ch = w.channel("alice", "dave");
    let body = open_direct(KEY_REQUEST_KIND, &ch.recv, "dave", "alice", &sealed).unwrap();
    // The same bytes are not accepted as another kind.
    assert!(open_direct(WELCOME_KIND, &ch.recv, "dave", "alice", &sealed).is_err());
    let req = KeyRequest::decode(&body).unwrap();
    let d = w
        .s("alice")
        .handle_key_request("dave", &req)
        .unwrap()
        .unwrap();
    assert_eq!(d.iteration(), 3);
    assert_eq!(
        w.s("alice")
            .handle_key_request(
                "dave",
                &KeyRequest {
                    group_id: GID,
                    key_id: 0
                }
            )
            .unwrap()
            .map(|d| d.key_id()),
        None
    );
    let resent = d
        .seal(&w.channel("alice", "dave").send, "alice", "dave", &mut rng)
        .unwrap();
    w.receive_distribution("alice", "dave", &resent).unwrap();
    assert_eq!(w.read("dave", &m).unwrap().1, "early");
    // The delayed original is now a harmless duplicate... of an older point.
    assert!(w.receive_distribution("alice", "dave", &delayed).is_err());
    assert_eq!(w.s("dave").receivers().current("alice"), Some((1, 4)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes never panic a decoder and never change a store.
    #[test]
    fn fuzz_entry_point_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        prop_assert!(hermes::group::fuzz_group_decoders(&data));
        prop_assert!(hermes::membership::fuzz_decode_commit(&data));
    }

    /// A valid message with one byte changed is refused without change.
    #[test]
    fn fuzz_entry_point_mutated_message(pos in any::<usize>(), bit in 0u8..8) {
        let mut sk = SenderKey::from_parts([0x11; 16], 1, [1; 32], 0, &[2; 32]);
        let mut m = sk.seal(0, "alice", 0, [0; 16], b"fuzz").unwrap();
        let i = pos % m.len();
        m[i] ^= 1 << bit;
        prop_assert!(hermes::group::fuzz_group_decoders(&m));
    }
}

#[test]
fn gap_allowance_is_capped() {
    let (_, mut rs, _) = pair(1, [12; 32]);
    rs.handle_gap("alice", u32::MAX);
    rs.handle_gap("alice", u32::MAX);
    // Signed by alice's sender key with the iteration in the signed header;
    // the jump is judged before any derivation, so the chain key (here not
    // alice's) is never used.
    let beyond = seal(
        &mut SenderKey::from_parts(
            GID,
            1,
            [0; 32],
            MAX_GAP_ALLOWANCE + MAX_FORWARD_JUMP + 1,
            &[1; 32],
        ),
        "beyond",
    );
    assert!(matches!(
        rs.open(&beyond, T0),
        Err(GroupError::TooFarAhead { current: 0, .. })
    ));
    assert_eq!(rs.current("alice"), Some((1, 0)));
    assert_eq!(rs.gap_allowance("alice"), Some(MAX_GAP_ALLOWANCE));
}

#[test]
fn plaintext_limit() {
    let mut sk = SenderKey::from_parts(GID, 1, [1; 32], 0, &[2; 32]);
    let big = vec![0u8; MAX_GROUP_PLAINTEXT_BYTES + 1];
    assert!(matches!(
        sk.seal(0, "alice", T0, [0; 16], &big),
        Err(GroupError::PlaintextTooLong(n)) if n == MAX_GROUP_PLAINTEXT_BYTES + 1
    ));
    assert_eq!(sk.iteration(), 0);
    let m = sk
        .seal(0, "alice", T0, [0; 16], &big[..MAX_GROUP_PLAINTEXT_BYTES])
        .unwrap();
    assert!(m.len() > MAX_GROUP_PLAINTEXT_BYTES);
    assert_eq!(sk.iteration(), 1);
}
