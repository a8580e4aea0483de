#!/usr/bin/env python3
"""An independent implementation of PROTOCOL.md Part 2 (group cryptography),
written from the document with Python's hashlib/hmac and pyca
`cryptography` (AES, CMAC, Ed25519): it rebuilds every worked vector of
2.11 from the stated inputs and checks it against the `hex` blocks.
Not part of `cargo test` (it needs Python and `cryptography`); run it with
`python3 tests/independent/protocol_part2.py` after changing Part 2."""
import os, re, hashlib, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives import serialization

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
doc = open(os.path.join(ROOT, 'PROTOCOL.md')).read()
B = {m.group(1): bytes.fromhex(''.join(m.group(2).split()))
     for m in re.finditer(r'```hex (\S+)\n(.*?)```', doc, re.S)}

def check(name, value):
    assert B[name] == value, f'{name}: document {B[name].hex()} != computed {value.hex()}'
    print('ok', name)

u8 = lambda x: x.to_bytes(1, 'big')
u16 = lambda x: x.to_bytes(2, 'big')
u32 = lambda x: x.to_bytes(4, 'big')
u64 = lambda x: x.to_bytes(8, 'big')
def s(t): b = t.encode(); return u16(len(b)) + b
def label(t): return u8(len(t)) + t
def sk(seed): return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
def pk(k): return k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
def hkdf(ikm, salt, info, L):
    prk = hmac.new(salt or b'\0' * 32, ikm, 'sha256').digest()
    t, okm, i = b'', b'', 1
    while len(okm) < L:
        t = hmac.new(prk, t + info + bytes([i]), 'sha256').digest(); okm += t; i += 1
    return okm[:L]
def labelled_info(lab, items):
    out = u16(len(lab)) + lab
    for it in items: out += u16(len(it)) + it
    return out
def omac(k, t, data):
    c = CMAC(algorithms.AES(k)); c.update(b'\0' * 15 + bytes([t]) + data); return c.finalize()
def eax(k, n, h, m):
    N = omac(k, 0, n); Hh = omac(k, 1, h)
    e = Cipher(algorithms.AES(k), modes.CTR(N)).encryptor(); C = e.update(m) + e.finalize()
    Cm = omac(k, 2, C); return C, bytes(a ^ b ^ c for a, b, c in zip(N, Hh, Cm))
def envelope(enc, mac, header, nonce, pt):  # Part 1, 1.9
    C, tag = eax(enc, nonce, header, pt)
    body = b'\x01' + u16(len(header)) + header + nonce + C + tag
    return body + hmac.new(mac, body, 'sha256').digest()

GID = b'\x11' * 16
alice, bob, carol = sk(1), sk(2), sk(3)
check('group-key-alice', pk(alice)); check('group-key-bob', pk(bob)); check('group-key-carol', pk(carol))

# 2.2 roster hash
def roster_hash(admin, members):
    h = label(b'Hermes roster v1') + GID + s(admin) + u32(len(members))
    for name in sorted(members, key=lambda n: n.encode()):
        h += s(name) + members[name]
    return hashlib.sha256(h).digest()
roster0 = {'alice': pk(alice), 'bob': pk(bob)}
rh0 = roster_hash('alice', roster0)
check('group-roster-hash-0', rh0)

# 2.3 commits
def commit(epoch, op, fields, rhash, signer, key):
    body = b'\x01' + GID + u64(epoch) + u8(op) + fields + rhash + s(signer)
    signing_input = label(b'Hermes membership commit v1') + body
    return signing_input, body + key.sign(signing_input)
fields = s('team') + u32(2) + s('alice') + pk(alice) + s('bob') + pk(bob)
si, c = commit(0, 0, fields, rh0, 'alice', alice)
check('group-genesis-signing-input', si); check('group-genesis', c)
roster1 = dict(roster0, carol=pk(carol)); rh1 = roster_hash('alice', roster1)
_, c = commit(1, 1, s('carol') + pk(carol) + u16(3) + b'\x01\x02\x03', rh1, 'alice', alice)
check('group-commit-add', c)
roster2 = {k: v for k, v in roster1.items() if k != 'bob'}
_, c = commit(2, 3, s('bob') + pk(bob), roster_hash('alice', roster2), 'bob', bob)
check('group-commit-leave', c)

# 2.4 ratchet
ck0 = b'\x42' * 32
seed0 = hmac.new(ck0, b'\x01', 'sha256').digest(); ck1 = hmac.new(ck0, b'\x02', 'sha256').digest()
check('group-chain-seed-0', seed0); check('group-chain-key-1', ck1)
okm = hkdf(seed0, b'', labelled_info(b'hermes/v1/group-message-keys', [u32(0)]), 64)
check('group-message-keys-0', okm)
enc, mac, nonce = okm[:16], okm[16:48], okm[48:]

# 2.5 group message
signer = sk(5); check('group-sender-signing-public', pk(signer))
header = b'\x01' + GID + u64(1) + s('alice') + u32(1) + u32(0) + u64(1_700_000_000_000) + b'\x22' * 16
env = envelope(enc, mac, header, nonce, b'hello group')
msg = env + signer.sign(label(b'hermes/v1/group-message-signature') + env)
check('group-message', msg)
# and a receiver's view: signature, then HMAC, then EAX
Ed25519PublicKey.from_public_bytes(pk(signer)).verify(msg[-64:], label(b'hermes/v1/group-message-signature') + msg[:-64])

# 2.7 direct messages
check('group-distribution', b'\x01' + GID + u64(1) + u32(1) + u32(0) + ck0 + pk(signer))
check('group-direct-header', b'\x02' + s('alice') + s('bob'))
check('group-welcome', b'\x01' + GID + u64(1) + rh1)
check('group-key-request', b'\x01' + GID + u32(1))
print('PROTOCOL.md Part 2: all vectors reproduced independently')
