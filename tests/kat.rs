//! Known-answer tests of the primitives over the published vectors in
//! `tests/vectors/` (see its README for sources). Every failure names the
//! vector (file and tcId / COUNT). Counts of run and skipped cases are
//! asserted, so a vector file that silently loses cases fails too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test helpers outside #[test] fns: a failure here is a test failure"
)]

use hermes::crypto::CryptoError;
use hermes::crypto::dh::{DhGroup, modexp_ct};
use hermes::crypto::envelope::{eax_decrypt_in_place, eax_encrypt_in_place, hmac_sha256_any_key};
use hermes::crypto::kdf::{hkdf_sha256, pbkdf2_hmac_sha256};
use num_bigint::BigUint;
use serde_json::Value;

fn vectors(path: &str) -> String {
    let p = format!("{}/tests/vectors/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn json(path: &str) -> Value {
    serde_json::from_str(&vectors(path)).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    let s = s.trim();
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn field<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("missing {k} in {v}"))
}

fn wycheproof_tests(v: &Value) -> impl Iterator<Item = (&Value, &Value)> {
    v["testGroups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["tests"].as_array().unwrap().iter().map(move |t| (g, t)))
}

// ---------------------------------------------------------------- ffdhe

#[test]
fn ffdhe_constants_match_rfc7919() {
    let v = json("rfc7919_ffdhe.json");
    for group in DhGroup::ALL {
        let g = &v["groups"][group.name()];
        let p = hex(field(g, "p"));
        assert_eq!(group.modulus_bytes(), p.as_slice(), "{} p", group.name());
        assert_eq!(p.len(), group.modulus_len(), "{} length", group.name());
        assert_eq!(g["g"].as_u64(), Some(2), "{} g", group.name());
        let min_bits = g["short_exponent_min_bits"].as_u64().unwrap();
        assert!(
            u64::from(group.exponent_bits()) >= min_bits,
            "{}: exponent bits {} below RFC 7919 minimum {min_bits}",
            group.name(),
            group.exponent_bits()
        );
        // q = (p-1)/2 and g^q = 1 (g generates the prime-order subgroup).
        let q = hex(field(g, "q"));
        let pb = BigUint::from_bytes_be(&p);
        assert_eq!(
            BigUint::from_bytes_be(&q),
            (&pb - 1u32) >> 1,
            "{} q",
            group.name()
        );
        let q_bits = u32::try_from(BigUint::from_bytes_be(&q).bits()).unwrap();
        let mut two = vec![0u8; p.len()];
        *two.last_mut().unwrap() = 2;
        let r = modexp_ct(&two, &q, q_bits, &p).unwrap();
        assert_eq!(
            BigUint::from_bytes_be(&r),
            BigUint::from(1u32),
            "{} 2^q",
            group.name()
        );
        // The RFC's generating formula.
        let f = &g["formula"];
        let b = f["b"].as_u64().unwrap();
        assert_eq!(b, 8 * group.modulus_len() as u64);
    }
}

// ---------------------------------------------------------------- EAX

#[test]
fn eax_paper_vectors() {
    let v = json("eax_paper_vectors.json");
    let cases = v["vectors"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for (i, c) in cases.iter().enumerate() {
        let key: [u8; 16] = hex(field(c, "key")).try_into().unwrap();
        let nonce: [u8; 16] = hex(field(c, "nonce")).try_into().unwrap();
        let header = hex(field(c, "header"));
        let msg = hex(field(c, "msg"));
        let mut buf = msg.clone();
        let tag = eax_encrypt_in_place(&key, &nonce, &header, &mut buf).unwrap();
        assert_eq!(
            buf,
            hex(field(c, "ciphertext")),
            "EAX paper vector {}",
            i + 1
        );
        assert_eq!(
            tag.to_vec(),
            hex(field(c, "tag")),
            "EAX paper vector {} tag",
            i + 1
        );
        eax_decrypt_in_place(&key, &nonce, &header, &mut buf, &tag).unwrap();
        assert_eq!(buf, msg, "EAX paper vector {} decrypt", i + 1);
    }
}

/// Wycheproof AES-EAX: the 74 cases with a 128-bit key, a 128-bit nonce and
/// a 128-bit tag (47 valid, 27 invalid) run; the other 166 are skipped
/// because Hermes uses only AES-128 with a 16-byte nonce (the `eax` crate
/// fixes the nonce at the block size, so other nonce lengths cannot even be
/// expressed, and 192/256-bit keys are another cipher).
#[test]
fn wycheproof_aes_eax() {
    let v = json("wycheproof/aes_eax_test.json");
    let (mut run, mut skipped, mut invalid) = (0, 0, 0);
    for (g, t) in wycheproof_tests(&v) {
        let id = t["tcId"].as_u64().unwrap();
        if g["keySize"] != 128 || g["ivSize"] != 128 || g["tagSize"] != 128 {
            skipped += 1;
            continue;
        }
        run += 1;
        let key: [u8; 16] = hex(field(t, "key")).try_into().unwrap();
        let nonce: [u8; 16] = hex(field(t, "iv")).try_into().unwrap();
        let aad = hex(field(t, "aad"));
        let msg = hex(field(t, "msg"));
        let ct = hex(field(t, "ct"));
        let tag: [u8; 16] = hex(field(t, "tag")).try_into().unwrap();
        let mut buf = ct.clone();
        let dec = eax_decrypt_in_place(&key, &nonce, &aad, &mut buf, &tag);
        match field(t, "result") {
            "valid" => {
                dec.unwrap_or_else(|e| panic!("wycheproof aes_eax tcId {id}: {e}"));
                assert_eq!(buf, msg, "wycheproof aes_eax tcId {id} plaintext");
                let mut enc = msg.clone();
                let got = eax_encrypt_in_place(&key, &nonce, &aad, &mut enc).unwrap();
                assert_eq!(enc, ct, "wycheproof aes_eax tcId {id} ciphertext");
                assert_eq!(got, tag, "wycheproof aes_eax tcId {id} tag");
            }
            _ => {
                invalid += 1;
                assert_eq!(
                    dec,
                    Err(CryptoError::AeadFailure),
                    "wycheproof aes_eax tcId {id} must fail"
                );
                assert_eq!(
                    buf, ct,
                    "wycheproof aes_eax tcId {id}: buffer touched on failure"
                );
            }
        }
    }
    assert_eq!((run, skipped, invalid), (74, 166, 27));
}

// ---------------------------------------------------------------- HMAC

/// All 174 Wycheproof HMAC-SHA256 cases (keys of 16, 32 and 65 bytes; tags
/// truncated to 128 bits compare the prefix). None skipped.
#[test]
fn wycheproof_hmac_sha256() {
    let v = json("wycheproof/hmac_sha256_test.json");
    let mut n = 0;
    for (g, t) in wycheproof_tests(&v) {
        let id = t["tcId"].as_u64().unwrap();
        let tag_len = usize::try_from(g["tagSize"].as_u64().unwrap() / 8).unwrap();
        let mac = hmac_sha256_any_key(&hex(field(t, "key")), &hex(field(t, "msg")));
        let matches = mac[..tag_len] == hex(field(t, "tag"))[..];
        let valid = field(t, "result") == "valid";
        assert_eq!(matches, valid, "wycheproof hmac_sha256 tcId {id}");
        n += 1;
    }
    assert_eq!(n, 174);
}

#[test]
fn rfc4231_hmac_sha256() {
    let v = json("rfc4231_hmac_sha256.json");
    let tests = v["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 7);
    for t in tests {
        let tc = t["tc"].as_u64().unwrap();
        let want = match t.get("hmac_sha256") {
            Some(_) => hex(field(t, "hmac_sha256")),
            None => hex(field(t, "hmac_sha256_truncated_128")),
        };
        let mac = hmac_sha256_any_key(&hex(field(t, "key")), &hex(field(t, "data")));
        // TC5 is truncated to 128 bits; the file stores the truncated value.
        assert_eq!(
            &mac[..want.len()],
            want.as_slice(),
            "RFC 4231 test case {tc}"
        );
    }
}

// ---------------------------------------------------------------- PBKDF2

/// All 60 Wycheproof PBKDF2-HMAC-SHA256 cases (iteration counts 1, 4096
/// and 80,000; none is too large to run, none skipped).
#[test]
fn wycheproof_pbkdf2_hmac_sha256() {
    let v = json("wycheproof/pbkdf2_hmacsha256_test.json");
    let mut n = 0;
    for (_, t) in wycheproof_tests(&v) {
        let id = t["tcId"].as_u64().unwrap();
        assert_eq!(field(t, "result"), "valid", "tcId {id}");
        let iterations = u32::try_from(t["iterationCount"].as_u64().unwrap()).unwrap();
        let mut out = vec![0u8; usize::try_from(t["dkLen"].as_u64().unwrap()).unwrap()];
        pbkdf2_hmac_sha256(
            &hex(field(t, "password")),
            &hex(field(t, "salt")),
            iterations,
            &mut out,
        );
        assert_eq!(
            out,
            hex(field(t, "dk")),
            "wycheproof pbkdf2_hmacsha256 tcId {id}"
        );
        n += 1;
    }
    assert_eq!(n, 60);
}

#[test]
fn rfc7914_pbkdf2_hmac_sha256() {
    let v = json("rfc7914_pbkdf2_hmac_sha256.json");
    let tests = v["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 2);
    for (i, t) in tests.iter().enumerate() {
        let iterations = u32::try_from(t["c"].as_u64().unwrap()).unwrap();
        let mut out = vec![0u8; usize::try_from(t["dkLen"].as_u64().unwrap()).unwrap()];
        pbkdf2_hmac_sha256(
            field(t, "P").as_bytes(),
            field(t, "S").as_bytes(),
            iterations,
            &mut out,
        );
        assert_eq!(
            out,
            hex(field(t, "DK")),
            "RFC 7914 §11 vector {} (c={iterations})",
            i + 1
        );
    }
}

// ---------------------------------------------------------------- HKDF

/// All 86 Wycheproof HKDF-SHA256 cases; the 3 invalid ones ask for more
/// than 255 * 32 bytes and must fail with `KdfOutputTooLong`.
#[test]
fn wycheproof_hkdf_sha256() {
    let v = json("wycheproof/hkdf_sha256_test.json");
    let (mut n, mut invalid) = (0, 0);
    for (_, t) in wycheproof_tests(&v) {
        let id = t["tcId"].as_u64().unwrap();
        let size = usize::try_from(t["size"].as_u64().unwrap()).unwrap();
        let mut out = vec![0u8; size];
        let r = hkdf_sha256(
            &hex(field(t, "ikm")),
            &hex(field(t, "salt")),
            &hex(field(t, "info")),
            &mut out,
        );
        if field(t, "result") == "valid" {
            r.unwrap_or_else(|e| panic!("wycheproof hkdf_sha256 tcId {id}: {e}"));
            assert_eq!(
                out,
                hex(field(t, "okm")),
                "wycheproof hkdf_sha256 tcId {id}"
            );
        } else {
            invalid += 1;
            assert_eq!(
                r,
                Err(CryptoError::KdfOutputTooLong(size)),
                "wycheproof hkdf_sha256 tcId {id} must fail"
            );
        }
        n += 1;
    }
    assert_eq!((n, invalid), (86, 3));
}

// ---------------------------------------------------------------- DH at the modexp layer

/// `NAME = value` records of a pyca/NIST-style vector file, split at
/// `COUNT` lines.
fn records(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('[') || line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        if k == "COUNT" {
            out.push(Vec::new());
        }
        if let Some(r) = out.last_mut() {
            r.push((k, v));
        }
    }
    out
}

fn get<'a>(r: &'a [(String, String)], k: &str) -> &'a str {
    &r.iter()
        .find(|(kk, _)| kk == k)
        .unwrap_or_else(|| panic!("no {k}"))
        .1
}

fn bits(x: &[u8]) -> u32 {
    u32::try_from(BigUint::from_bytes_be(x).bits())
        .unwrap()
        .max(1)
}

fn pad(x: &[u8], len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len - x.len()];
    v.extend_from_slice(x);
    v
}

/// RFC 5114 groups (pyca `RFC5114.txt`, 3 records): both public keys from
/// the private ones, and Z from either side, all through `modexp_ct`.
#[test]
fn rfc5114_dh_at_modexp_layer() {
    let recs = records(&vectors("pyca/RFC5114.txt"));
    assert_eq!(recs.len(), 3);
    for r in &recs {
        let count = get(r, "COUNT");
        let p = hex(get(r, "P"));
        let g = pad(&hex(get(r, "G")), p.len());
        let z = hex(get(r, "Z"));
        let pairs = [("XstatCAVS", "YstatCAVS"), ("XstatIUT", "YstatIUT")];
        for (x, y) in pairs {
            let xb = hex(get(r, x));
            let got = modexp_ct(&g, &xb, bits(&xb), &p).unwrap();
            assert_eq!(
                *got,
                pad(&hex(get(r, y)), p.len()),
                "RFC5114 COUNT={count} {y}"
            );
        }
        let xa = hex(get(r, "XstatCAVS"));
        let yb = pad(&hex(get(r, "YstatIUT")), p.len());
        let za = modexp_ct(&yb, &xa, bits(&xa), &p).unwrap();
        assert_eq!(*za, pad(&z, p.len()), "RFC5114 COUNT={count} Z (CAVS side)");
        let xb = hex(get(r, "XstatIUT"));
        let ya = pad(&hex(get(r, "YstatCAVS")), p.len());
        let zb = modexp_ct(&ya, &xb, bits(&xb), &p).unwrap();
        assert_eq!(*zb, pad(&z, p.len()), "RFC5114 COUNT={count} Z (IUT side)");
    }
}

/// Botan's FFDH agreement vectors (pyca `vec.txt`, 5 records, decimal P, X,
/// Y and hex K): K = Y^X mod P. All five moduli are odd; none skipped.
#[test]
fn pyca_botan_dh_at_modexp_layer() {
    let recs = records(&vectors("pyca/vec.txt"));
    assert_eq!(recs.len(), 5);
    for r in &recs {
        let count = get(r, "COUNT");
        let dec = |k: &str| {
            BigUint::parse_bytes(get(r, k).as_bytes(), 10)
                .unwrap()
                .to_bytes_be()
        };
        let p = dec("P");
        let x = dec("X");
        let y = pad(&dec("Y"), p.len());
        let k = modexp_ct(&y, &x, bits(&x), &p).unwrap();
        let want = hex(get(r, "K"));
        assert_eq!(
            BigUint::from_bytes_be(&k),
            BigUint::from_bytes_be(&want),
            "pyca vec.txt COUNT={count}"
        );
    }
}
