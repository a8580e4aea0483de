//! Criterion benchmarks of the cryptographic primitives.
//!
//! Two cores shared with other work: run with small samples, e.g.
//! `cargo bench --bench crypto -- --sample-size 10 --warm-up-time 1 --measurement-time 3`.
//! The figures and their ratios are recorded in README "Performance".
//!
//! Times are the benchmark thread's **CPU time** (from
//! `/proc/thread-self/schedstat`, wall time where that is unavailable), the
//! same kind of figure `openssl speed` reports by default (user CPU time),
//! so that other work on the shared machine inflates them less than wall
//! time. Set `HERMES_BENCH_WALL=1` to measure wall time instead.
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hermes::crypto::dh::{DhGroup, DhPrivateKey, MontyBackend, modexp_ct_in_group};
use hermes::crypto::envelope::{
    eax_decrypt_in_place, eax_encrypt_in_place, hmac_sha256, open, seal_into, seal_with_nonce,
};
use hermes::crypto::identity::{SigningKeyPair, verify_signature};
use hermes::crypto::kdf::{EnvelopeKeys, PassphraseParams, passphrase_keys};
use hermes::crypto::secret::SecretKey;
use hermes::limits::PBKDF2_DEFAULT_ITERATIONS;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// CPU time of the current thread, in nanoseconds.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
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

impl NsFormatter {
    fn unit(ns: f64) -> (f64, &'static str) {
        if ns < 1e3 {
            (1.0, "ns")
        } else if ns < 1e6 {
            (1e-3, "µs")
        } else if ns < 1e9 {
            (1e-6, "ms")
        } else {
            (1e-9, "s")
        }
    }
}

impl ValueFormatter for NsFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (f, u) = Self::unit(typical);
        values.iter_mut().for_each(|v| *v *= f);
        u
    }

    fn scale_throughputs(&self, typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let per = match *t {
            Throughput::Bytes(b) | Throughput::BytesDecimal(b) => b as f64,
            Throughput::Elements(e) | Throughput::ElementsAndBytes { elements: e, .. } => e as f64,
            Throughput::Bits(b) => b as f64 / 8.0,
        };
        // MiB per second of (CPU) time.
        let _ = typical;
        values
            .iter_mut()
            .for_each(|v| *v = per * 1e9 / *v / (1024.0 * 1024.0));
        "MiB/s"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

type C = Criterion<CpuTime>;

/// One 2048-bit modexp, 256-bit and full 2048-bit exponent, per backend.
fn modexp(c: &mut C) {
    let group = DhGroup::Ffdhe2048;
    let mut rng = StdRng::seed_from_u64(1);
    let base = DhPrivateKey::generate(group, &mut rng).public_key();
    let mut exp256 = [0u8; 32];
    rand::Rng::fill_bytes(&mut rng, &mut exp256);
    let mut exp2048 = vec![0u8; 256];
    rand::Rng::fill_bytes(&mut rng, &mut exp2048);
    // Keep the full-size exponent below p.
    if let Some(top) = exp2048.first_mut() {
        *top &= 0x7f;
    }
    let mut g = c.benchmark_group("modexp2048");
    for (name, backend) in [
        ("fixed", MontyBackend::Fixed),
        ("fixed_amm", MontyBackend::FixedAmm),
        ("boxed", MontyBackend::Boxed),
    ] {
        g.bench_function(BenchmarkId::new(name, "exp256"), |b| {
            b.iter(|| modexp_ct_in_group(group, backend, black_box(base.as_bytes()), &exp256, 256))
        });
        g.bench_function(BenchmarkId::new(name, "exp2048"), |b| {
            b.iter(|| {
                modexp_ct_in_group(group, backend, black_box(base.as_bytes()), &exp2048, 2048)
            })
        });
    }
    g.finish();
}

/// DH key generation (one modexp) and agreement (one modexp + checks).
fn dh(c: &mut C) {
    let mut g = c.benchmark_group("dh");
    for group in DhGroup::ALL {
        let mut rng = StdRng::seed_from_u64(2);
        let a = DhPrivateKey::generate(group, &mut rng);
        let peer = DhPrivateKey::generate(group, &mut rng).public_key();
        g.bench_function(BenchmarkId::new("keygen", group.name()), |b| {
            b.iter(|| DhPrivateKey::generate(group, &mut rng))
        });
        g.bench_function(BenchmarkId::new("agree", group.name()), |b| {
            b.iter(|| a.agree(black_box(&peer)))
        });
    }
    g.finish();
}

fn keys() -> EnvelopeKeys {
    EnvelopeKeys {
        enc: SecretKey::from_bytes([1u8; 16]),
        mac: SecretKey::from_bytes([2u8; 32]),
    }
}

/// seal+open at three sizes, and the bare EAX + two HMACs baseline at 1 KiB.
fn envelope(c: &mut C) {
    let keys = keys();
    let header = [7u8; 32];
    let nonce = [9u8; 16];
    let mut g = c.benchmark_group("envelope");
    for size in [64usize, 1024, 65536] {
        let pt = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("seal_open", size), |b| {
            b.iter(|| {
                let sealed = seal_with_nonce(&keys, &header, black_box(&pt), &nonce);
                open(&keys, &sealed).map(|o| o.plaintext.len())
            })
        });
    }
    let pt = vec![0x5au8; 1024];
    g.throughput(Throughput::Bytes(1024));
    let mut out = Vec::with_capacity(2048);
    g.bench_function(BenchmarkId::new("seal_into_open", 1024), |b| {
        b.iter(|| {
            out.clear();
            let _ = seal_into(&mut out, &keys, &header, black_box(&pt), &nonce);
            open(&keys, &out).map(|o| o.plaintext.len())
        })
    });
    let mut buf = vec![0u8; 1024];
    g.bench_function(BenchmarkId::new("bare_eax_2hmac", 1024), |b| {
        b.iter(|| {
            buf.copy_from_slice(black_box(&pt));
            let tag = eax_encrypt_in_place(keys.enc.expose(), &nonce, &header, &mut buf)
                .unwrap_or([0; 16]);
            let m1 = hmac_sha256(keys.mac.expose(), &[&header, &nonce, &buf, &tag]);
            let m2 = hmac_sha256(keys.mac.expose(), &[&header, &nonce, &buf, &tag]);
            let ok = eax_decrypt_in_place(keys.enc.expose(), &nonce, &header, &mut buf, &tag);
            (m1 == m2, ok.is_ok())
        })
    });
    g.finish();
}

fn ed25519(c: &mut C) {
    let mut rng = StdRng::seed_from_u64(3);
    let k = SigningKeyPair::generate(&mut rng);
    let msg = [0x42u8; 64];
    let sig = k.sign(&msg);
    let pk = k.public_key();
    let mut g = c.benchmark_group("ed25519");
    g.bench_function("sign64", |b| b.iter(|| k.sign(black_box(&msg))));
    g.bench_function("verify64", |b| {
        b.iter(|| verify_signature(&pk, black_box(&msg), &sig))
    });
    g.finish();
}

fn passphrase(c: &mut C) {
    let params = PassphraseParams {
        iterations: PBKDF2_DEFAULT_ITERATIONS,
        salt: [3u8; 16],
    };
    let mut g = c.benchmark_group("passphrase");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("pbkdf2_600k", |b| {
        b.iter(|| passphrase_keys(black_box(b"correct horse battery staple"), &params))
    });
    g.finish();
}

fn config() -> C {
    Criterion::default().with_measurement(CpuTime {
        wall: std::env::var_os("HERMES_BENCH_WALL").is_some(),
    })
}

criterion_group! {
    name = benches;
    config = config();
    targets = modexp, dh, envelope, ed25519, passphrase
}
criterion_main!(benches);
