//! Criterion benchmarks of the wire codec and the relay core's fan-out.
//!
//! The fan-out bench is the ceiling the event loop can reach: one group
//! send to a 1,000-member group, then `poll_transmit` for every member's
//! connection (no sockets), with members acking in batches of 64 as real
//! clients do (the ack records are inside the timed region).
//!
//! Run with small samples (two shared cores):
//! `cargo bench --bench relay_core -- --sample-size 10 --warm-up-time 1 --measurement-time 3`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "benchmark setup"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hermes::crypto::dh::{DhGroup, DhPublicKey};
use hermes::crypto::identity::{PublicIdentity, SigningKeyPair, certificate_message};
use hermes::mailbox::{FsyncPolicy, MemStore, MmapConfig, MmapStore, Store};
use hermes::membership::Commit;
use hermes::relay::{ConnId, RelayConfig, RelayCore};
use hermes::wire::{
    Deliver, EntryKind, Frame, LENGTH_PREFIX_LEN, encode_deliver_header, put_entry_body,
    register_message, split_frame,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

const UNIX_MS: u64 = 1_800_000_000_000;

fn codec(c: &mut Criterion) {
    let ct = vec![0xabu8; 256];
    let send = Frame::GroupSend {
        group_id: [1; 16],
        epoch: 3,
        message_id: [2; 16],
        ciphertext: &ct,
    };
    let send_bytes = send.to_vec();
    let deliver_bytes = Frame::Deliver(Deliver {
        seq: 9,
        sender: "alice",
        group_id: [1; 16],
        kind: EntryKind::GroupMessage,
        message_id: [2; 16],
        unix_ms: UNIX_MS,
        ciphertext: &ct,
    })
    .to_vec();
    let mut body = Vec::new();
    put_entry_body(
        &mut body,
        "alice",
        &[1; 16],
        EntryKind::GroupMessage,
        &[2; 16],
        UNIX_MS,
        &ct,
    );
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(1024);
    g.bench_function("encode_group_send_256B", |b| {
        b.iter(|| {
            out.clear();
            black_box(&send).encode(&mut out);
            out.len()
        });
    });
    g.bench_function("decode_group_send_256B", |b| {
        b.iter(|| {
            let (f, _) = split_frame(black_box(&send_bytes), 1 << 20)
                .unwrap()
                .unwrap();
            Frame::decode(f).unwrap().kind()
        });
    });
    g.bench_function("decode_deliver_256B", |b| {
        b.iter(|| {
            Frame::decode(black_box(&deliver_bytes[LENGTH_PREFIX_LEN..]))
                .unwrap()
                .kind()
        });
    });
    g.bench_function("encode_deliver_fast_path_256B", |b| {
        b.iter(|| {
            out.clear();
            encode_deliver_header(&mut out, black_box(9), body.len());
            out.extend_from_slice(black_box(&body));
            out.len()
        });
    });
    g.finish();
}

struct Setup<S: Store> {
    core: RelayCore<S, StdRng>,
    conns: Vec<ConnId>,
    gid: [u8; 16],
    now: Instant,
}

fn drain<S: Store>(core: &mut RelayCore<S, StdRng>, c: ConnId) -> Vec<u8> {
    let mut out = Vec::new();
    while core.poll_transmit(c, &mut out, 1 << 20) > 0 {}
    out
}

/// `n` registered, connected users in one group (the first is the sender).
fn setup<S: Store>(store: S, n: usize) -> Setup<S> {
    let config = RelayConfig {
        registrations_per_minute: u32::MAX,
        queue_cap: 1 << 20,
        idle_timeout: Duration::from_secs(1 << 30),
        maintenance_interval: Duration::from_secs(1 << 30),
        ..RelayConfig::default()
    };
    let now = Instant::now();
    let (mut core, _) = RelayCore::open(
        store,
        StdRng::seed_from_u64(1),
        SigningKeyPair::from_secret_bytes(&[9; 32]),
        config,
        now,
        UNIX_MS,
    )
    .unwrap();
    let mut conns = Vec::new();
    let mut roster = Vec::new();
    let mut keys = Vec::new();
    for i in 0..n {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        let k = SigningKeyPair::from_secret_bytes(&seed);
        let mut dh = vec![0u8; DhGroup::Ffdhe2048.modulus_len()];
        dh[0] = 0x40;
        let dh_public = DhPublicKey::from_bytes(DhGroup::Ffdhe2048, &dh).unwrap();
        let certificate = k.sign(&certificate_message(&dh_public));
        let identity = PublicIdentity {
            signing_key: k.public_key(),
            dh_public,
            certificate,
        }
        .encode();
        let c = ConnId(i as u64 + 1);
        core.handle_connect(c, now);
        let hello = drain(&mut core, c);
        let (f, _) = split_frame(&hello, 1 << 20).unwrap().unwrap();
        let Frame::Hello(h) = Frame::decode(f).unwrap() else {
            panic!()
        };
        let name = format!("user{i:04}");
        let proof = k.sign(&register_message(&h.challenge, &core.relay_key(), &name));
        let reg = Frame::Register {
            name: &name,
            identity: &identity,
            proof,
        }
        .to_vec();
        core.handle_bytes(c, &reg, now, UNIX_MS);
        drain(&mut core, c);
        roster.push((name, k.public_key()));
        keys.push(k);
        conns.push(c);
    }
    let gid = [7u8; 16];
    let admin = roster[0].0.clone();
    let genesis = Commit::genesis(gid, "bench".into(), admin, roster, |m| keys[0].sign(m)).unwrap();
    let f = Frame::CreateGroup {
        genesis: &genesis.encode(),
    }
    .to_vec();
    core.handle_bytes(conns[0], &f, now, UNIX_MS);
    let mut ready = Vec::new();
    core.poll_ready_conns(&mut ready);
    for &c in &conns {
        drain(&mut core, c);
    }
    Setup {
        core,
        conns,
        gid,
        now,
    }
}

fn fanout(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let config = MmapConfig {
        fsync: FsyncPolicy::Never,
        ..MmapConfig::default()
    };
    let mmap = MmapStore::open(dir.path(), config, Box::new(|| {})).unwrap();
    fanout_on(c, "memstore", setup(MemStore::new(), 1000));
    fanout_on(c, "mmap_fsync_never", setup(mmap, 1000));
}

fn fanout_on<S: Store>(c: &mut Criterion, store_name: &str, mut s: Setup<S>) {
    let members = s.conns.len();
    let ct = vec![0x5au8; 256];
    let mut g = c.benchmark_group("relay_core_fanout");
    g.throughput(Throughput::Elements((members - 1) as u64));
    let mut counter = 0u64;
    let mut ready = Vec::with_capacity(members);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut send_buf = Vec::with_capacity(512);
    let mut last_seq = 0u64;
    g.bench_function(format!("group_send_1000_members_256B/{store_name}"), |b| {
        b.iter(|| {
            counter += 1;
            let mut mid = [0u8; 16];
            mid[..8].copy_from_slice(&counter.to_be_bytes());
            send_buf.clear();
            Frame::GroupSend {
                group_id: s.gid,
                epoch: 0,
                message_id: mid,
                ciphertext: &ct,
            }
            .encode(&mut send_buf);
            s.core.handle_bytes(s.conns[0], &send_buf, s.now, UNIX_MS);
            ready.clear();
            s.core.poll_ready_conns(&mut ready);
            let mut bytes = 0;
            for &c in &ready {
                out.clear();
                bytes += s.core.poll_transmit(c, &mut out, 256 * 1024);
                if c != s.conns[0] && out.len() >= 14 {
                    last_seq = u64::from_be_bytes(out[6..14].try_into().unwrap());
                }
            }
            // Members ack in batches of 64 messages.
            if counter.is_multiple_of(64) {
                let ack = Frame::Ack { up_to: last_seq }.to_vec();
                for &c in &s.conns[1..] {
                    s.core.handle_bytes(c, &ack, s.now, UNIX_MS);
                }
                // The sender's own receipts.
                out.clear();
                s.core.poll_transmit(s.conns[0], &mut out, 1 << 20);
            }
            bytes
        });
    });
    g.finish();
    let st = s.core.stats();
    eprintln!(
        "fan-out ({store_name}): {} deliveries, {} messages, store live records {}",
        st.deliveries,
        st.messages_accepted,
        s.core.store().stats().live_records
    );
}

criterion_group!(benches, codec, fanout);
criterion_main!(benches);
