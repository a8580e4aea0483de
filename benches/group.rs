//! Criterion benchmarks of group cryptography: the pairwise setup (serial
//! vs rayon), one ratchet step, and a 100-byte group message sealed and
//! opened with and without the Ed25519 signature.
//!
//! Two cores shared with other work: run with small samples, e.g.
//! `cargo bench --bench group -- --sample-size 10 --warm-up-time 1 --measurement-time 3`.
//! The figures are recorded in README "Performance".
// A benchmark aborts loudly on a broken fixture.
#![allow(clippy::unwrap_used, clippy::panic, clippy::cast_possible_truncation)]
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hermes::crypto::dh::DhGroup;
use hermes::crypto::envelope::{open, seal_into};
use hermes::crypto::identity::{IdentityKeyPair, PublicIdentity};
use hermes::crypto::kdf::EnvelopeKeys;
use hermes::group::{
    ChainKey, Distribution, GroupSession, Parallelism, ReceiverStore, SenderKey, pairwise_channels,
};
use hermes::membership::{Commit, GroupState};
use rand::SeedableRng;
use rand::rngs::StdRng;

const GID: [u8; 16] = [0x42; 16];

/// `n` peers with identities, the caller's identity, and the verified
/// genesis state with all of them in it.
fn peers(n: usize) -> (IdentityKeyPair, Vec<(String, PublicIdentity)>, GroupState) {
    let mut rng = StdRng::seed_from_u64(n as u64);
    let me = IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng);
    let peers: Vec<(String, PublicIdentity)> = (0..n)
        .map(|i| {
            let id = IdentityKeyPair::generate(DhGroup::Ffdhe2048, &mut rng);
            (format!("peer{i:04}"), id.public())
        })
        .collect();
    let mut roster: Vec<(String, [u8; 32])> = peers
        .iter()
        .map(|(name, p)| (name.clone(), p.signing_key))
        .collect();
    roster.push(("me".into(), me.public().signing_key));
    let genesis =
        Commit::genesis(GID, "bench".into(), "me".into(), roster, |m| me.sign(m)).unwrap();
    let state = GroupState::from_genesis(&genesis).unwrap();
    (me, peers, state)
}

/// Pairwise channels to 100 and 1,000 peers, serial vs rayon, and a new
/// member's full setup (channels + sealed distributions) for 1,000.
fn setup(c: &mut Criterion) {
    let mut g = c.benchmark_group("pairwise_setup");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    for n in [100usize, 1_000] {
        let (me, peers, state) = peers(n);
        for (name, mode) in [
            ("serial", Parallelism::Serial),
            ("rayon", Parallelism::Parallel),
        ] {
            g.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| pairwise_channels("me", &me, black_box(&peers), Some(&state), mode))
            });
        }
        if n == 1_000 {
            let mut rng = StdRng::seed_from_u64(5);
            g.bench_function(BenchmarkId::new("full_new_member", n), |b| {
                b.iter(|| {
                    let mut s = GroupSession::new("me", state.clone(), &mut rng).unwrap();
                    s.setup_and_distribute(&me, &peers, Parallelism::Auto, &mut rng)
                })
            });
        }
    }
    g.finish();
}

/// One chain step: message seed + next chain key; and the seed's expansion.
fn ratchet(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratchet");
    let mut chain = ChainKey::new([7; 32], 0);
    g.bench_function("step", |b| {
        b.iter(|| {
            if chain.iteration() == u32::MAX {
                chain = ChainKey::new([7; 32], 0);
            }
            chain.step()
        })
    });
    let mut chain = ChainKey::new([7; 32], 0);
    g.bench_function("step_and_expand", |b| {
        b.iter(|| {
            if chain.iteration() == u32::MAX {
                chain = ChainKey::new([7; 32], 0);
            }
            chain.step().map(|s| s.keys())
        })
    });
    g.finish();
}

/// A 100-byte group message: full seal + open (ratchet, envelope, Ed25519
/// sign and verify), against the same without the signature (ratchet on
/// both sides + envelope seal + open).
fn message(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_message_100B");
    let plaintext = [0x61u8; 100];
    let mut sk = SenderKey::from_parts(GID, 1, [3; 32], 0, &[4; 32]);
    let mut rs = ReceiverStore::new(GID);
    let d = Distribution::new(GID, 0, 1, 0, [3; 32], sk.signing_public());
    rs.handle_distribution("alice", &d).unwrap();
    g.bench_function("seal_open_signed", |b| {
        b.iter(|| {
            let m = sk
                .seal(0, "alice", 1, [0; 16], black_box(&plaintext))
                .unwrap();
            rs.open(&m, 1).map(|o| o.plaintext.len())
        })
    });
    let mut send = ChainKey::new([5; 32], 0);
    let mut recv = ChainKey::new([5; 32], 0);
    let header = [0u8; 60];
    let mut buf = Vec::with_capacity(256);
    g.bench_function("seal_open_unsigned", |b| {
        b.iter(|| {
            let (Ok(s1), Ok(s2)) = (send.step(), recv.step()) else {
                panic!("chain exhausted")
            };
            let (k1, k2) = (s1.keys(), s2.keys());
            let ek1 = envelope_keys(&k1.enc, &k1.mac);
            buf.clear();
            seal_into(&mut buf, &ek1, &header, black_box(&plaintext), &k1.nonce).unwrap();
            let ek2 = envelope_keys(&k2.enc, &k2.mac);
            open(&ek2, &buf).map(|o| o.plaintext.len())
        })
    });
    g.finish();
}

fn envelope_keys(enc: &[u8; 16], mac: &[u8; 32]) -> EnvelopeKeys {
    let mut okm = [0u8; 48];
    for (d, s) in okm.iter_mut().zip(enc.iter().chain(mac.iter())) {
        *d = *s;
    }
    EnvelopeKeys::from_okm(&okm)
}

criterion_group!(benches, ratchet, message, setup);
criterion_main!(benches);
