//! Criterion benchmarks of group cryptography: the pairwise setup (serial
//! vs rayon), one ratchet step, and a 100-byte group message sealed and
//! opened with and without the Ed25519 signature.
//!
//! Two cores shared with other work: run with small samples, e.g.
//! `cargo bench --bench group -- --sample-size 10 --warm-up-time 1 --measurement-time 3`.
//! The figures are recorded in README "Performance".
//!
//! The single-threaded benches (ratchet, message) report the thread's CPU
//! time (`/proc/thread-self/schedstat`, as `benches/crypto.rs` does), so
//! other engineers' builds on the same two cores do not inflate them;
//! `HERMES_BENCH_WALL=1` switches to wall time. The setup benches must be
//! wall time (rayon's speed-up is the point); `setup_report` also prints,
//! per mode, wall time and the process's CPU time, so a run on busy cores
//! can be read as "parallelism actually obtained".
// A benchmark aborts loudly on a broken fixture.
#![allow(clippy::unwrap_used, clippy::panic, clippy::cast_possible_truncation)]
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
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

/// CPU time of the current thread, in nanoseconds.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// CPU time (user + system) of the whole process, in seconds.
fn process_cpu_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line, in clock ticks (100 Hz on Linux).
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Thread CPU time as a criterion measurement (falls back to wall time).
struct CpuTime {
    wall: bool,
}

impl Measurement for CpuTime {
    type Intermediate = (Instant, Option<u64>);
    type Value = f64;

    fn start(&self) -> Self::Intermediate {
        (Instant::now(), thread_cpu_ns())
    }

    fn end(&self, (t0, c0): Self::Intermediate) -> f64 {
        let c1 = thread_cpu_ns();
        let wall = t0.elapsed().as_nanos() as f64;
        match (self.wall, c0, c1) {
            (false, Some(a), Some(b)) => b.saturating_sub(a) as f64,
            _ => wall,
        }
    }

    fn add(&self, a: &f64, b: &f64) -> f64 {
        a + b
    }

    fn zero(&self) -> f64 {
        0.0
    }

    fn to_f64(&self, v: &f64) -> f64 {
        *v
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &NsFormatter
    }
}

struct NsFormatter;

impl ValueFormatter for NsFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (f, u) = if typical < 1e3 {
            (1.0, "ns")
        } else if typical < 1e6 {
            (1e-3, "µs")
        } else if typical < 1e9 {
            (1e-6, "ms")
        } else {
            (1e-9, "s")
        };
        values.iter_mut().for_each(|v| *v *= f);
        u
    }

    fn scale_throughputs(&self, _: f64, _: &Throughput, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v = 1e9 / *v);
        "elem/s"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

type C = Criterion<CpuTime>;

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
fn ratchet(c: &mut C) {
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
fn message(c: &mut C) {
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

/// One run per mode of the 1,000-peer setup, printing wall and process CPU
/// time (criterion's figures are the wall times; this shows how much of the
/// two cores rayon actually got while other work ran).
fn setup_report(_: &mut Criterion) {
    let (me, peers, state) = peers(1_000);
    for (name, mode) in [
        ("serial", Parallelism::Serial),
        ("rayon", Parallelism::Parallel),
        ("serial", Parallelism::Serial),
        ("rayon", Parallelism::Parallel),
    ] {
        let (c0, t0) = (process_cpu_s(), Instant::now());
        let out = pairwise_channels("me", &me, &peers, Some(&state), mode);
        let wall = t0.elapsed().as_secs_f64();
        let cpu = process_cpu_s().zip(c0).map(|(b, a)| b - a);
        black_box(out);
        println!(
            "setup_report/{name}/1000: wall {wall:.3} s, process CPU {} s",
            cpu.map_or("?".into(), |c| format!("{c:.2}"))
        );
    }
}

fn cpu_config() -> C {
    Criterion::default().with_measurement(CpuTime {
        wall: std::env::var_os("HERMES_BENCH_WALL").is_some(),
    })
}

criterion_group! {
    name = per_message;
    config = cpu_config();
    targets = ratchet, message
}
criterion_group!(pairwise, setup, setup_report);
criterion_main!(per_message, pairwise);
