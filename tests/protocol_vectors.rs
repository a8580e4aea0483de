//! Checks the worked vectors printed in `PROTOCOL.md` against the code, so
//! the specification cannot drift from the implementation.
//!
//! Each vector is a fenced block opened by ```` ```vector <id> ````; inside,
//! `name: value` lines (values are hex, or a "quoted string", or a decimal
//! count), with long hex continued on indented lines. The test reads the
//! inputs of each block from the document, recomputes every intermediate
//! and output with the crate (cross-checking the high-level API against the
//! lower-level primitives), and requires the block to match exactly. The
//! set of block ids is checked too, so a vector cannot silently go
//! unchecked.
//!
//! To print the blocks (after a deliberate protocol change):
//! `cargo test --test protocol_vectors -- --ignored --nocapture print_vectors`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers outside #[test] fns: a failure here is a test failure"
)]

use hermes::crypto::dh::{DhGroup, DhPrivateKey, LABEL_FFDHE3072_EXPONENT};
use hermes::crypto::envelope::{
    ENVELOPE_VERSION, eax_encrypt_in_place, hmac_sha256, hmac_sha256_any_key, open, seal_with_nonce,
};
use hermes::crypto::fingerprint::{FINGERPRINT_VERSION, fingerprint_half, safety_number};
use hermes::crypto::identity::{
    IdentityKeyPair, PublicIdentity, SigningKeyPair, certificate_message,
};
use hermes::crypto::kdf::{
    EnvelopeKeys, LABEL_CHANNEL, LABEL_PASSPHRASE, PassphraseParams, channel_keys,
    hkdf_expand_label, labelled_info, passphrase_keys, pbkdf2_hmac_sha256,
};
use hermes::crypto::secret::SecretKey;
use sha2::{Digest, Sha512};

type Fields = Vec<(String, String)>;

const IDS: [&str; 7] = [
    "dh-ffdhe2048",
    "dh-ffdhe3072-exponent",
    "channel-keys",
    "passphrase",
    "envelope",
    "identity",
    "safety-number",
];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|_| panic!("bad hex {s}")))
        .collect()
}

fn arr<const N: usize>(s: &str) -> [u8; N] {
    unhex(s)
        .try_into()
        .unwrap_or_else(|_| panic!("want {N} bytes: {s}"))
}

fn quoted(s: &str) -> String {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_else(|| panic!("want a quoted string: {s}"))
        .to_string()
}

/// The vector blocks of a markdown text, in order.
fn parse(md: &str) -> Vec<(String, Fields)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, Fields)> = None;
    for line in md.lines() {
        if let Some(id) = line.strip_prefix("```vector ") {
            cur = Some((id.trim().to_string(), Vec::new()));
            continue;
        }
        let Some((_, fields)) = cur.as_mut() else {
            continue;
        };
        if line.starts_with("```") {
            out.push(cur.take().unwrap());
        } else if line.starts_with(' ') {
            let last = fields.last_mut().expect("continuation before any field");
            last.1.push_str(line.trim());
        } else if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    assert!(cur.is_none(), "unterminated vector block");
    out
}

fn render(id: &str, fields: &Fields) -> String {
    let mut s = format!("```vector {id}\n");
    for (k, v) in fields {
        if v.len() <= 64 || v.starts_with('"') {
            s.push_str(&format!("{k}: {v}\n"));
        } else {
            s.push_str(&format!("{k}:\n"));
            for chunk in v.as_bytes().chunks(64) {
                s.push_str(&format!("    {}\n", std::str::from_utf8(chunk).unwrap()));
            }
        }
    }
    s.push_str("```\n");
    s
}

fn input<'a>(f: &'a Fields, k: &str) -> &'a str {
    &f.iter()
        .find(|(kk, _)| kk == k)
        .unwrap_or_else(|| panic!("input {k} missing"))
        .1
}

fn push(f: &mut Fields, k: &str, v: String) {
    f.push((k.to_string(), v));
}

/// Recomputes a block from its inputs (taken from `given`, which is either
/// the document or the defaults below) and `all`, the blocks before it.
fn compute(id: &str, given: &Fields, all: &[(String, Fields)]) -> Fields {
    let prior = |bid: &str, k: &str| -> String {
        let (_, f) = all
            .iter()
            .find(|(i, _)| i == bid)
            .unwrap_or_else(|| panic!("{bid} first"));
        input(f, k).to_string()
    };
    let mut f = Fields::new();
    match id {
        "dh-ffdhe2048" => {
            let g = DhGroup::Ffdhe2048;
            let sa: [u8; 32] = arr(input(given, "seed_a"));
            let sb: [u8; 32] = arr(input(given, "seed_b"));
            let a = DhPrivateKey::from_bytes(g, &sa).unwrap();
            let b = DhPrivateKey::from_bytes(g, &sb).unwrap();
            let z = a.agree(&b.public_key()).unwrap();
            assert_eq!(z.as_bytes(), b.agree(&a.public_key()).unwrap().as_bytes());
            push(&mut f, "seed_a", hex(&sa));
            push(&mut f, "seed_b", hex(&sb));
            push(&mut f, "y_a", hex(a.public_key().as_bytes()));
            push(&mut f, "y_b", hex(b.public_key().as_bytes()));
            push(&mut f, "z", hex(z.as_bytes()));
        }
        "dh-ffdhe3072-exponent" => {
            let g = DhGroup::Ffdhe3072;
            let seed: [u8; 32] = arr(input(given, "seed"));
            let info = labelled_info(LABEL_FFDHE3072_EXPONENT, &[]).unwrap();
            let mut x = [0u8; 40];
            hkdf_expand_label(&seed, &[], LABEL_FFDHE3072_EXPONENT, &[], &mut x).unwrap();
            let k = DhPrivateKey::from_bytes(g, &seed).unwrap();
            // y = 2^x mod p, independently through num-bigint.
            let p = num_bigint::BigUint::from_bytes_be(g.modulus_bytes());
            let y =
                num_bigint::BigUint::from(2u32).modpow(&num_bigint::BigUint::from_bytes_be(&x), &p);
            let mut y_bytes = vec![0u8; g.modulus_len() - y.to_bytes_be().len()];
            y_bytes.extend_from_slice(&y.to_bytes_be());
            assert_eq!(k.public_key().as_bytes(), y_bytes.as_slice());
            push(&mut f, "seed", hex(&seed));
            push(&mut f, "info", hex(&info));
            push(&mut f, "x", hex(&x));
            push(&mut f, "y", hex(k.public_key().as_bytes()));
        }
        "channel-keys" => {
            let sender = quoted(input(given, "sender"));
            let recipient = quoted(input(given, "recipient"));
            let g = DhGroup::Ffdhe2048;
            let a = DhPrivateKey::from_bytes(g, &arr(&prior("dh-ffdhe2048", "seed_a"))).unwrap();
            let b = DhPrivateKey::from_bytes(g, &arr(&prior("dh-ffdhe2048", "seed_b"))).unwrap();
            let z = a.agree(&b.public_key()).unwrap();
            assert_eq!(hex(z.as_bytes()), prior("dh-ffdhe2048", "z"));
            let prk = hmac_sha256_any_key(&[0u8; 32], z.as_bytes());
            let info =
                labelled_info(LABEL_CHANNEL, &[sender.as_bytes(), recipient.as_bytes()]).unwrap();
            // HKDF-Expand by hand: T(1) = HMAC(PRK, info || 1), T(2) = HMAC(PRK, T(1) || info || 2).
            let t1 = hmac_sha256(&prk, &[&info, &[1]]);
            let t2 = hmac_sha256(&prk, &[&t1, &info, &[2]]);
            let okm: Vec<u8> = t1.iter().chain(&t2[..16]).copied().collect();
            let keys = channel_keys(&z, &sender, &recipient);
            assert_eq!(hex(keys.enc.expose()), hex(&okm[..16]));
            assert_eq!(hex(keys.mac.expose()), hex(&okm[16..]));
            let back = channel_keys(&z, &recipient, &sender);
            push(&mut f, "sender", format!("\"{sender}\""));
            push(&mut f, "recipient", format!("\"{recipient}\""));
            push(&mut f, "prk", hex(&prk));
            push(&mut f, "info", hex(&info));
            push(&mut f, "okm", hex(&okm));
            push(&mut f, "enc", hex(keys.enc.expose()));
            push(&mut f, "mac", hex(keys.mac.expose()));
            push(&mut f, "enc_reverse", hex(back.enc.expose()));
            push(&mut f, "mac_reverse", hex(back.mac.expose()));
        }
        "passphrase" => {
            let pass = quoted(input(given, "passphrase"));
            let iterations: u32 = input(given, "iterations").parse().unwrap();
            let salt: [u8; 16] = arr(input(given, "salt"));
            let params = PassphraseParams { iterations, salt };
            let mut master = [0u8; 32];
            pbkdf2_hmac_sha256(pass.as_bytes(), &salt, iterations, &mut master);
            let info = labelled_info(LABEL_PASSPHRASE, &[]).unwrap();
            let mut okm = [0u8; 48];
            hkdf_expand_label(&master, &[], LABEL_PASSPHRASE, &[], &mut okm).unwrap();
            let keys = passphrase_keys(pass.as_bytes(), &params).unwrap();
            assert_eq!(keys, EnvelopeKeys::from_okm(&okm));
            assert_eq!(PassphraseParams::decode(&params.encode()).unwrap(), params);
            push(&mut f, "passphrase", format!("\"{pass}\""));
            push(&mut f, "iterations", iterations.to_string());
            push(&mut f, "salt", hex(&salt));
            push(&mut f, "params", hex(&params.encode()));
            push(&mut f, "master", hex(&master));
            push(&mut f, "info", hex(&info));
            push(&mut f, "enc", hex(keys.enc.expose()));
            push(&mut f, "mac", hex(keys.mac.expose()));
        }
        "envelope" => {
            let enc: [u8; 16] = arr(&prior("channel-keys", "enc"));
            let mac: [u8; 32] = arr(&prior("channel-keys", "mac"));
            let nonce: [u8; 16] = arr(input(given, "nonce"));
            let header = quoted(input(given, "header"));
            let plaintext = quoted(input(given, "plaintext"));
            let keys = EnvelopeKeys {
                enc: SecretKey::from_bytes(enc),
                mac: SecretKey::from_bytes(mac),
            };
            let mut ct = plaintext.as_bytes().to_vec();
            let tag = eax_encrypt_in_place(&enc, &nonce, header.as_bytes(), &mut ct).unwrap();
            let len = u16::try_from(header.len()).unwrap().to_be_bytes();
            let hm = hmac_sha256(
                &mac,
                &[
                    &[ENVELOPE_VERSION],
                    &len,
                    header.as_bytes(),
                    &nonce,
                    &ct,
                    &tag,
                ],
            );
            let sealed = seal_with_nonce(&keys, header.as_bytes(), plaintext.as_bytes(), &nonce);
            let manual: Vec<u8> = [
                &[ENVELOPE_VERSION][..],
                &len,
                header.as_bytes(),
                &nonce,
                &ct,
                &tag,
                &hm,
            ]
            .concat();
            assert_eq!(sealed, manual);
            let opened = open(&keys, &sealed).unwrap();
            assert_eq!(opened.plaintext.as_slice(), plaintext.as_bytes());
            push(
                &mut f,
                "keys",
                "\"enc and mac of channel-keys\"".to_string(),
            );
            push(&mut f, "nonce", hex(&nonce));
            push(&mut f, "header", format!("\"{header}\""));
            push(&mut f, "plaintext", format!("\"{plaintext}\""));
            push(&mut f, "ciphertext", hex(&ct));
            push(&mut f, "eax_tag", hex(&tag));
            push(&mut f, "hmac", hex(&hm));
            push(&mut f, "sealed", hex(&sealed));
        }
        "identity" => {
            let ed: [u8; 32] = arr(input(given, "ed25519_seed"));
            let dh_seed = prior("dh-ffdhe2048", "seed_a");
            let secret = [
                &[1u8][..],
                &ed,
                &[DhGroup::Ffdhe2048.id()],
                &unhex(&dh_seed),
            ]
            .concat();
            let id = IdentityKeyPair::from_secret_bytes(&secret).unwrap();
            assert_eq!(id.to_secret_bytes().as_slice(), secret.as_slice());
            let pubid = id.public();
            assert_eq!(
                hex(pubid.dh_public.as_bytes()),
                prior("dh-ffdhe2048", "y_a")
            );
            let msg = certificate_message(&pubid.dh_public);
            let signer = SigningKeyPair::from_secret_bytes(&ed);
            assert_eq!(signer.sign(&msg), pubid.certificate);
            let enc = pubid.encode();
            let back = PublicIdentity::decode(&enc).unwrap();
            back.verify().unwrap();
            push(&mut f, "ed25519_seed", hex(&ed));
            push(&mut f, "dh_seed", "\"seed_a of dh-ffdhe2048\"".to_string());
            push(&mut f, "secret_identity", hex(&secret));
            push(&mut f, "ed25519_public", hex(&pubid.signing_key));
            push(
                &mut f,
                "certificate_message_prefix",
                hex(&msg[..msg.len() - 256]),
            );
            push(&mut f, "certificate", hex(&pubid.certificate));
            push(&mut f, "public_identity", hex(&enc));
        }
        "safety-number" => {
            let name_a = quoted(input(given, "name_a"));
            let name_b = quoted(input(given, "name_b"));
            let key_a: [u8; 32] = arr(&prior("identity", "ed25519_public"));
            let key_b: [u8; 32] = arr(input(given, "key_b"));
            let mut h = Sha512::new();
            h.update(FINGERPRINT_VERSION);
            h.update(key_a);
            h.update(name_a.as_bytes());
            let h0 = h.finalize();
            let ha = fingerprint_half(&name_a, &key_a);
            let hb = fingerprint_half(&name_b, &key_b);
            let sn = safety_number(&name_a, &key_a, &name_b, &key_b);
            assert_eq!(sn, safety_number(&name_b, &key_b, &name_a, &key_a));
            push(&mut f, "name_a", format!("\"{name_a}\""));
            push(
                &mut f,
                "key_a",
                "\"ed25519_public of identity\"".to_string(),
            );
            push(&mut f, "name_b", format!("\"{name_b}\""));
            push(&mut f, "key_b", hex(&key_b));
            push(&mut f, "h0_a", hex(&h0));
            push(&mut f, "half_a", format!("\"{ha}\""));
            push(&mut f, "half_b", format!("\"{hb}\""));
            push(&mut f, "safety_number", format!("\"{sn}\""));
        }
        other => panic!("unknown vector id {other}"),
    }
    f
}

/// The inputs the printed vectors were generated from.
fn defaults(id: &str) -> Fields {
    let s = |k: &str, v: &str| (k.to_string(), v.to_string());
    match id {
        "dh-ffdhe2048" => vec![
            s(
                "seed_a",
                &hex(&core::array::from_fn::<u8, 32, _>(|i| {
                    u8::try_from(i).unwrap() + 1
                })),
            ),
            s(
                "seed_b",
                &hex(&core::array::from_fn::<u8, 32, _>(|i| {
                    0xff - u8::try_from(i).unwrap()
                })),
            ),
        ],
        "dh-ffdhe3072-exponent" => vec![s("seed", &hex(&[0x42u8; 32]))],
        "channel-keys" => vec![s("sender", "\"alice\""), s("recipient", "\"bob\"")],
        "passphrase" => vec![
            s("passphrase", "\"correct horse battery staple\""),
            s("iterations", "600000"),
            s("salt", "000102030405060708090a0b0c0d0e0f"),
        ],
        "envelope" => vec![
            s("nonce", "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"),
            s("header", "\"hdr\""),
            s("plaintext", "\"attack at dawn\""),
        ],
        "identity" => vec![s("ed25519_seed", &hex(&[0x07u8; 32]))],
        "safety-number" => vec![
            s("name_a", "\"alice\""),
            s("name_b", "\"bob\""),
            s(
                "key_b",
                &hex(&SigningKeyPair::from_secret_bytes(&[0x08; 32]).public_key()),
            ),
        ],
        other => panic!("unknown vector id {other}"),
    }
}

#[test]
#[ignore = "prints the PROTOCOL.md vector blocks; run by hand"]
fn print_vectors() {
    let mut all: Vec<(String, Fields)> = Vec::new();
    for id in IDS {
        let f = compute(id, &defaults(id), &all);
        println!("{}", render(id, &f));
        all.push((id.to_string(), f));
    }
}

#[test]
fn protocol_md_vectors_match_the_code() {
    let path = format!("{}/PROTOCOL.md", env!("CARGO_MANIFEST_DIR"));
    let md = std::fs::read_to_string(&path).unwrap();
    let blocks: Vec<(String, Fields)> = parse(&md)
        .into_iter()
        .filter(|(id, _)| IDS.contains(&id.as_str()))
        .collect();
    let ids: Vec<&str> = blocks.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, IDS, "PROTOCOL.md Part 1 vector blocks");
    let mut done: Vec<(String, Fields)> = Vec::new();
    for (id, doc) in &blocks {
        let computed = compute(id, doc, &done);
        assert_eq!(
            render(id, doc),
            render(id, &computed),
            "PROTOCOL.md vector `{id}` differs from the code"
        );
        done.push((id.clone(), computed));
    }
}

#[test]
fn parser_reads_what_render_writes() {
    let f: Fields = vec![
        ("a".into(), "\"x y\"".into()),
        ("b".into(), "ab".repeat(70)),
    ];
    let text = render("t", &f);
    assert_eq!(parse(&text), vec![("t".to_string(), f)]);
}
