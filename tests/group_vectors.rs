//! The worked vectors of `PROTOCOL.md` Part 2, recomputed from the inputs
//! stated there; a block that differs from the code fails the test. Run the
//! ignored `print_group_vectors` to regenerate them after a deliberate
//! format change.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use hermes::crypto::identity::SigningKeyPair;
use hermes::group::distribution::{DISTRIBUTION_KIND, DirectHeader, KeyRequest, Welcome};
use hermes::group::{ChainKey, Distribution, SenderKey};
use hermes::membership::{Commit, GroupState, Operation};

const GID: [u8; 16] = [0x11; 16];

fn key(seed: u8) -> SigningKeyPair {
    SigningKeyPair::from_secret_bytes(&[seed; 32])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every vector: (name, bytes).
fn vectors() -> Vec<(&'static str, Vec<u8>)> {
    let (alice, bob, carol) = (key(1), key(2), key(3));
    let mut v = Vec::new();
    v.push(("group-key-alice", alice.public_key().to_vec()));
    v.push(("group-key-bob", bob.public_key().to_vec()));
    v.push(("group-key-carol", carol.public_key().to_vec()));

    let genesis = Commit::genesis(
        GID,
        "team".into(),
        "alice".into(),
        vec![
            ("bob".into(), bob.public_key()),
            ("alice".into(), alice.public_key()),
        ],
        |m| alice.sign(m),
    )
    .unwrap();
    let s0 = GroupState::from_genesis(&genesis).unwrap();
    v.push(("group-roster-hash-0", s0.roster_hash().to_vec()));
    v.push(("group-genesis-signing-input", genesis.signing_input()));
    v.push(("group-genesis", genesis.encode()));

    let add = s0
        .propose(
            Operation::Add {
                name: "carol".into(),
                identity_key: carol.public_key(),
                public_identity: vec![0x01, 0x02, 0x03],
            },
            "alice",
            |m| alice.sign(m),
        )
        .unwrap();
    let s1 = s0.apply(&add).unwrap();
    assert_eq!(s1.roster_hash(), add.roster_hash);
    v.push(("group-commit-add", add.encode()));
    let leave = s1
        .propose(
            Operation::Leave {
                name: "bob".into(),
                identity_key: bob.public_key(),
            },
            "bob",
            |m| bob.sign(m),
        )
        .unwrap();
    s1.apply(&leave).unwrap();
    v.push(("group-commit-leave", leave.encode()));

    let mut chain = ChainKey::new([0x42; 32], 0);
    let seed0 = chain.step().unwrap();
    v.push(("group-chain-seed-0", seed0.as_bytes().to_vec()));
    v.push(("group-chain-key-1", chain.key_bytes().to_vec()));
    let k0 = seed0.keys();
    let mut okm = k0.enc.to_vec();
    okm.extend_from_slice(&k0.mac);
    okm.extend_from_slice(&k0.nonce);
    v.push(("group-message-keys-0", okm));

    let mut sk = SenderKey::from_parts(GID, 1, [0x42; 32], 0, &[0x05; 32]);
    v.push(("group-sender-signing-public", sk.signing_public().to_vec()));
    let msg = sk
        .seal(1, "alice", 1_700_000_000_000, [0x22; 16], b"hello group")
        .unwrap();
    v.push(("group-message", msg));

    let d = Distribution::new(GID, 1, 1, 0, [0x42; 32], sk.signing_public());
    v.push(("group-distribution", d.encode().to_vec()));
    v.push((
        "group-direct-header",
        DirectHeader {
            kind: DISTRIBUTION_KIND,
            sender: "alice".into(),
            recipient: "bob".into(),
        }
        .encode()
        .unwrap(),
    ));
    v.push((
        "group-welcome",
        Welcome {
            group_id: GID,
            epoch: 1,
            roster_hash: s1.roster_hash(),
        }
        .encode(),
    ));
    v.push((
        "group-key-request",
        KeyRequest {
            group_id: GID,
            key_id: 1,
        }
        .encode(),
    ));
    v
}

/// Hex of a ```` ```hex NAME ```` block in PROTOCOL.md, whitespace removed.
fn block(doc: &str, name: &str) -> String {
    let open = format!("```hex {name}\n");
    let start = doc
        .find(&open)
        .unwrap_or_else(|| panic!("PROTOCOL.md lacks block {name}"))
        + open.len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].split_whitespace().collect()
}

#[test]
fn protocol_md_group_vectors_match_the_code() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md")).unwrap();
    for (name, bytes) in vectors() {
        assert_eq!(block(&doc, name), hex(&bytes), "PROTOCOL.md vector {name}");
    }
}

#[test]
#[ignore = "prints the PROTOCOL.md Part 2 vector blocks; run by hand"]
fn print_group_vectors() {
    for (name, bytes) in vectors() {
        println!("```hex {name}");
        for line in bytes.chunks(32) {
            println!("{}", hex(line));
        }
        println!("```\n");
    }
}

/// The roster hash formula of PROTOCOL.md 2.2, written out independently.
#[test]
fn roster_hash_formula_matches() {
    use sha2::{Digest, Sha256};
    let mut input = vec![16u8];
    input.extend_from_slice(b"Hermes roster v1");
    input.extend_from_slice(&GID);
    input.extend_from_slice(&[0, 5]);
    input.extend_from_slice(b"alice");
    input.extend_from_slice(&2u32.to_be_bytes());
    for (name, k) in [("alice", key(1)), ("bob", key(2))] {
        input.extend_from_slice(&(name.len() as u16).to_be_bytes());
        input.extend_from_slice(name.as_bytes());
        input.extend_from_slice(&k.public_key());
    }
    let expected: [u8; 32] = Sha256::digest(&input).into();
    let (_, bytes) = vectors()
        .into_iter()
        .find(|(n, _)| *n == "group-roster-hash-0")
        .unwrap();
    assert_eq!(bytes, expected);
}
