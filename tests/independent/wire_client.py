#!/usr/bin/env python3
"""An independent Hermes client, written from PROTOCOL.md alone (Parts 1-3
and Part 5, client flows) with Python's hashlib/hmac/socket and pyca
`cryptography` (AES, CMAC, Ed25519); it shares no code with Hermes.
Against a live relay it:

  * rebuilds the worked frames of 3.7 from their descriptions (offline);
  * connects and verifies the relay's hello (3.4), optionally against a
    pinned relay key;
  * checks the errors Part 3 promises (3.1, 3.4, 3.5), each with its code,
    `refers_to`, `reference` and whether the connection is closed: a
    length below 2 or above max_frame, old/unknown version, unassigned
    kinds, a body with a byte left over, a relay-only kind from a client,
    a request before login, wrong login / registration proofs, unknown
    user, taken / bad / over-long names, a bad certificate, a second
    login, a stale epoch, an ack out of range, direct sends outside a
    shared group, refused commits and geneses (304, 305, 303, 306, 206),
    and a duplicate send (same receipt);
  * registers users with fresh identities (1.10), logs them in, creates a
    group (genesis commit, 2.3), sends every member's sender key over the
    pairwise channels (1.7, 2.7), sends a group message (2.4, 2.5),
    receives, verifies, decrypts and acks it (3.4), and checks that the
    ack position survives a reconnect;
  * with --hermes BIN, interoperates with the Rust `hermes` CLI (Part 5):
    messages both ways in a group each side created, the Rust admin adding
    (commit + welcome, log verified from genesis) and removing a Python
    user (everyone rotates to key id 2), a transfer of the admin role to
    Python and Python's leave dissolving the group, the Python admin adding
    the Rust user, and key requests both ways (each side answers the
    other's);
  * with --queue-cap N (a relay started with that per-member cap), only
    the gap scenario: an offline member misses the oldest messages, gets
    one gap notice and opens the rest with the gap allowance (2.6, 3.4);
  * reads the stopped relay's mailbox files (Part 4: segment headers,
    records, CRC32C; 3.6: record payloads) and checks that every account,
    send, commit and ack of its users is recorded as documented, and
    nothing for refused registrations or the duplicate send.

Usage:
  wire_client.py --server 127.0.0.1:PORT [--relay-key HEX] [--hermes BIN]
                 [--facts FILE]                   # FILE: what its users did
  wire_client.py --verify-records DATA_DIR --facts FILE   # relay stopped
  wire_client.py --hermes target/release/hermes   # own relay, all of the above
Prints one `ok ...` line per check and `all N checks passed` (exit 0), or
`FAIL ...` (exit 1). Every socket read has a 5 s timeout. WIRE_TRACE=1
prints every pushed entry. Run by `cargo test --test independent_client`.
Not implemented (not needed against `hermes` here): stored skipped message
keys, identity changes, ffdhe3072."""
import argparse, hashlib, hmac, json, os, secrets, shutil, socket, struct
import subprocess, sys, tempfile, time, unicodedata

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey, Ed25519PublicKey)
from cryptography.hazmat.primitives import serialization
from cryptography.exceptions import InvalidSignature

READ_TIMEOUT = 5.0      # seconds, every socket read
PINNED_RELAY_KEY = None  # --relay-key: compared with every hello's relay_key
# What the Python users did that the relay must have recorded (3.6), for
# --facts / --verify-records: hex strings, JSON-ready.
FACTS = dict(accounts={}, refused_names=[], messages=[], commits=[], acks=[], gaps=[])
CHECKS = []             # (name) of every check that passed


def ok(name):
    CHECKS.append(name)
    print('ok', name, flush=True)


class Fail(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Fail(what)


# ---------------------------------------------------------------- Part 1
u8 = lambda x: x.to_bytes(1, 'big')
u16 = lambda x: x.to_bytes(2, 'big')
u32 = lambda x: x.to_bytes(4, 'big')
u64 = lambda x: x.to_bytes(8, 'big')

# RFC 7919 ffdhe2048 (Appendix A.1), group id 1.
P2048 = int(
    'FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695'
    'A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617A'
    'D3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935'
    '984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797A'
    'BC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4'
    'AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F61'
    '9172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005'
    'C58EF1837D1683B2C6F34A26C1B2EFFA886B423861285C97FFFFFFFFFFFFFFFF', 16)
DH_GROUP = 1
PLEN = 256


def be(x, n):
    return x.to_bytes(n, 'big')


def labelled_info(label, items):
    out = u16(len(label)) + label
    for it in items:
        out += u16(len(it)) + it
    return out


def hkdf(ikm, salt, info, length):
    prk = hmac.new(salt or b'\0' * 32, ikm, 'sha256').digest()
    t, okm, i = b'', b'', 1
    while len(okm) < length:
        t = hmac.new(prk, t + info + bytes([i]), 'sha256').digest()
        okm += t
        i += 1
    return okm[:length]


def omac(k, t, data):
    c = CMAC(algorithms.AES(k))
    c.update(b'\0' * 15 + bytes([t]) + data)
    return c.finalize()


def ctr(k, n, data):
    e = Cipher(algorithms.AES(k), modes.CTR(n)).encryptor()
    return e.update(data) + e.finalize()


def seal(enc, mac, header, nonce, pt):
    """Part 1, 1.9."""
    n = omac(enc, 0, nonce)
    c = ctr(enc, n, pt)
    tag = bytes(a ^ b ^ d for a, b, d in zip(n, omac(enc, 1, header), omac(enc, 2, c)))
    body = b'\x01' + u16(len(header)) + header + nonce + c + tag
    return body + hmac.new(mac, body, 'sha256').digest()


def envelope_header(env):
    """The header of an envelope, read without verifying (2.5 step 1)."""
    expect(len(env) >= 67 and env[0] == 1, 'envelope: version/length')
    h = int.from_bytes(env[1:3], 'big')
    expect(3 + h + 32 <= len(env) - 32, 'envelope: header length')
    return env[3:3 + h]


def open_envelope(enc, mac, env):
    """Part 1, 1.9, in the document's order. Returns (header, plaintext)."""
    expect(len(env) > 0 and env[0] == 1, 'envelope: UnknownVersion')
    expect(len(env) >= 67, 'envelope: Truncated')
    expect(hmac.compare_digest(hmac.new(mac, env[:-32], 'sha256').digest(), env[-32:]),
           'envelope: MacMismatch')
    h = int.from_bytes(env[1:3], 'big')
    expect(3 + h + 16 + 16 <= len(env) - 32, 'envelope: MalformedEnvelope')
    header, nonce = env[3:3 + h], env[3 + h:19 + h]
    c, tag = env[19 + h:-48], env[-48:-32]
    n = omac(enc, 0, nonce)
    want = bytes(a ^ b ^ d for a, b, d in zip(n, omac(enc, 1, header), omac(enc, 2, c)))
    expect(hmac.compare_digest(want, tag), 'envelope: AeadFailure')
    return header, ctr(enc, n, c)


def ed_public(sk):
    return sk.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)


def ed_verify(pub, sig, msg):
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


class Identity:
    """1.3, 1.4, 1.10: an Ed25519 key plus a certified ffdhe2048 key."""

    def __init__(self):
        self.sk = Ed25519PrivateKey.generate()
        while True:
            self.dh_seed = secrets.token_bytes(32)
            self.x = int.from_bytes(self.dh_seed, 'big')
            if self.x >= 2:
                break
        self.y = be(pow(2, self.x, P2048), PLEN)
        self.key = ed_public(self.sk)
        cert = self.sk.sign(b'hermes/v1/dh-certificate\x00' + u8(DH_GROUP) + self.y)
        self.public = u8(1) + self.key + u8(DH_GROUP) + self.y + cert
        expect(len(self.public) == 354, 'public identity is 354 bytes')


def parse_public_identity(b):
    """1.10: decode and verify; returns (ed25519 key, y as int)."""
    expect(len(b) >= 1 and b[0] == 1, 'identity version')
    expect(len(b) >= 34 and b[33] == DH_GROUP, 'identity group')
    expect(len(b) == 354, 'identity length')
    key, y, cert = b[1:33], b[34:290], b[290:354]
    yi = int.from_bytes(y, 'big')
    expect(2 <= yi <= P2048 - 2, 'identity y range')
    expect(ed_verify(key, cert, b'hermes/v1/dh-certificate\x00' + u8(DH_GROUP) + y),
           'identity certificate')
    return key, yi


def channel_keys(z, sender, recipient):
    okm = hkdf(z, b'', labelled_info(b'hermes/v1/channel', [sender.encode(), recipient.encode()]), 48)
    return okm[:16], okm[16:]


# ---------------------------------------------------------------- Part 2
def s16(t):
    b = t.encode()
    return u16(len(b)) + b


def roster_hash(gid, admin, roster):
    h = u8(16) + b'Hermes roster v1' + gid + s16(admin) + u32(len(roster))
    for name in sorted(roster, key=lambda n: n.encode()):
        h += s16(name) + roster[name]
    return hashlib.sha256(h).digest()


COMMIT_LABEL = u8(27) + b'Hermes membership commit v1'


def make_genesis(gid, display, admin, admin_sk, roster):
    fields = s16(display) + u32(len(roster))
    for name in sorted(roster, key=lambda n: n.encode()):
        fields += s16(name) + roster[name]
    body = (u8(1) + gid + u64(0) + u8(0) + fields
            + roster_hash(gid, admin, roster) + s16(admin))
    return body + admin_sk.sign(COMMIT_LABEL + body)


class Reader:
    """A checked cursor (2.1): running past the end is an error."""

    def __init__(self, b):
        self.b, self.i = b, 0

    def take(self, n):
        expect(self.i + n <= len(self.b), 'truncated')
        out = self.b[self.i:self.i + n]
        self.i += n
        return out

    def int(self, n):
        return int.from_bytes(self.take(n), 'big')

    def str16(self):
        return self.take(self.int(2)).decode()

    def str8(self):
        return self.take(self.int(1)).decode()

    def flag(self):
        f = self.int(1)
        expect(f in (0, 1), 'flag')
        return f == 1

    def end(self):
        expect(self.i == len(self.b), 'bytes left over')

    def rest(self):
        return self.b[self.i:]


def parse_genesis(c):
    """2.3: a genesis commit, fully checked. Returns (gid, display, admin, roster)."""
    body, sig = c[:-64], c[-64:]
    r = Reader(body)
    expect(r.int(1) == 1, 'commit version')
    gid = r.take(16)
    expect(r.int(8) == 0, 'genesis epoch')
    expect(r.int(1) == 0, 'genesis op')
    display = r.str16()
    roster, prev = {}, None
    for _ in range(r.int(4)):
        name = r.str16()
        expect(prev is None or name.encode() > prev.encode(), 'roster order')
        roster[name] = r.take(32)
        prev = name
    rh = r.take(32)
    signer = r.str16()
    r.end()
    expect(signer in roster, 'genesis signer in roster')
    expect(ed_verify(roster[signer], sig, COMMIT_LABEL + body), 'genesis signature')
    expect(rh == roster_hash(gid, signer, roster), 'genesis roster hash')
    return gid, display, signer, roster


OPS = {1: 'add', 2: 'remove', 3: 'leave', 4: 'transfer'}


def apply_commit(g, c):
    """2.3: apply a non-genesis commit to group state `g` (a dict with gid,
    epoch, admin, roster, dissolved), checks 1-6 in order; returns (op,
    target name, signer) or None for a harmless re-delivery (epoch <= E).
    Any failure raises and leaves `g` unchanged."""
    body, sig = c[:-64], c[-64:]
    r = Reader(body)
    expect(r.int(1) == 1, 'commit version')
    gid, epoch, op = r.take(16), r.int(8), r.int(1)
    expect(not g['dissolved'] and gid == g['gid'], '1: group')
    if epoch <= g['epoch']:
        return None                 # a re-delivery (the genesis included)
    expect(op in OPS, f'commit op {op}')
    name, key = r.str16(), r.take(32)
    identity = r.take(r.int(2)) if op == 1 else None
    rh, signer = r.take(32), r.str16()
    r.end()
    expect(epoch == g['epoch'] + 1, '2: next epoch')
    roster = g['roster']
    expect(signer in roster, '3: signer is a member')
    if op == 3:
        expect(signer == name, '3: leave by the member itself')
    else:
        expect(signer == g['admin'] and name != signer, '3: admin, of another member')
    expect(ed_verify(roster[signer], sig, COMMIT_LABEL + body), '4: signature')
    after, admin = dict(roster), g['admin']
    if op == 1:
        expect(name not in roster and len(roster) < 4000, '5: add fits')
        ikey, _ = parse_public_identity(identity)
        expect(ikey == key, "5: the added identity's signing key is the commit's key")
        after[name] = key
    else:
        expect(roster.get(name) == key, '5: target is a member with this key')
        if op == 4:
            admin = name
        else:
            del after[name]
    expect(rh == roster_hash(gid, admin, after), '6: roster hash')
    g.update(epoch=epoch, roster=after, admin=admin,
             dissolved=(op == 3 and name == g['admin']))
    return OPS[op], name, signer


def make_commit(g, op, name, key, signer_sk, identity=b''):
    """2.3: the commit for epoch E+1 (op 1..4), signed by g's admin or,
    for a leave, by the member itself."""
    roster, admin = dict(g['roster']), g['admin']
    if op == 1:
        roster[name] = key
    elif op == 4:
        admin = name
    else:
        del roster[name]
    signer = name if op == 3 else g['admin']
    fields = s16(name) + key + (u16(len(identity)) + identity if op == 1 else b'')
    body = (u8(1) + g['gid'] + u64(g['epoch'] + 1) + u8(op) + fields
            + roster_hash(g['gid'], admin, roster) + s16(signer))
    return body + signer_sk.sign(COMMIT_LABEL + body)


def ratchet(ck):
    """2.4: (seed_i, ck_i+1)."""
    return hmac.new(ck, b'\x01', 'sha256').digest(), hmac.new(ck, b'\x02', 'sha256').digest()


def message_keys(seed, i):
    okm = hkdf(seed, b'', labelled_info(b'hermes/v1/group-message-keys', [u32(i)]), 64)
    return okm[:16], okm[16:48], okm[48:64]


MSG_SIG_LABEL = u8(33) + b'hermes/v1/group-message-signature'


class SenderKey:
    def __init__(self, key_id=1):
        self.key_id, self.iteration = key_id, 0
        self.ck = secrets.token_bytes(32)
        self.sk = Ed25519PrivateKey.generate()
        self.public = ed_public(self.sk)
        self.given = {}     # member -> the distribution first given to it (2.7)


class Chain:
    """A received sender key (2.4); no skipped keys kept (in-order tests).
    `allowance`: iterations gap notices let it skip (2.6)."""

    def __init__(self, iteration, ck, public):
        self.iteration, self.ck, self.public = iteration, ck, public
        self.allowance = 0


# ---------------------------------------------------------------- Part 3
KIND = dict(hello=0x01, authenticated=0x02, identities=0x03, commit_accepted=0x04,
            commits=0x05, groups=0x06, members=0x07, deliver=0x08, receipt=0x09,
            gap=0x0a, pong=0x0b, error=0x0c, register=0x20, login=0x21,
            fetch_identities=0x22, create_group=0x23, commit=0x24,
            fetch_commits=0x25, list_groups=0x26, list_members=0x27,
            group_send=0x28, direct_send=0x29, ack=0x2a, ping=0x2b)
MAX_FRAME = 1 << 20


def frame(kind, body, version=1):
    return u32(len(body) + 2) + u8(version) + u8(kind) + body


def str8(t):
    b = unicodedata.normalize('NFC', t).encode()
    return u8(len(b)) + b


class Closed(Exception):
    pass


class Conn:
    def __init__(self, addr):
        host, port = addr.rsplit(':', 1)
        self.sock = socket.create_connection((host, int(port)), timeout=READ_TIMEOUT)
        self.sock.settimeout(READ_TIMEOUT)
        self.buf = b''
        self.inbox = []          # pushed deliver / gap notice frames, in order
        self.hello()

    def close(self):
        self.sock.close()

    def send_raw(self, b):
        self.sock.sendall(b)

    def send(self, kind, body):
        self.sock.sendall(frame(kind, body))

    def read_exact(self, n):
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise Fail(f'read timed out after {READ_TIMEOUT} s')
            except ConnectionResetError:
                chunk = b''
            if not chunk:
                raise Closed()
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self):
        length = int.from_bytes(self.read_exact(4), 'big')
        expect(2 <= length <= MAX_FRAME, f'relay frame length {length}')
        body = self.read_exact(length)
        expect(body[0] == 1, 'relay frame version')
        return body[1], body[2:]

    def is_closed(self):
        """True when the relay has closed the connection (EOF), after any
        frames already sent."""
        try:
            while True:
                self.read_frame()
        except Closed:
            return True

    def answer(self, kinds):
        """Read until a frame of one of `kinds` or an error; pushed
        entries seen on the way go to the inbox."""
        while True:
            kind, body = self.read_frame()
            if kind in kinds or kind == KIND['error']:
                return kind, body
            expect(kind in (KIND['deliver'], KIND['gap']), f'unexpected frame kind {kind:#x}')
            self.inbox.append((kind, body))

    def request(self, kind, body, answer):
        self.send(kind, body)
        k, b = self.answer({KIND[answer]})
        if k == KIND['error']:
            code, _, _, text = parse_error(b)
            raise Fail(f'{answer}: relay error {code} {text!r}')
        return b

    def expect_error(self, code, refers_to=None, reference=None):
        k, b = self.answer(set())
        got = parse_error(b)
        expect(got[0] == code, f'expected error {code}, got {got}')
        if refers_to is not None:
            expect(got[1] == refers_to, f'error refers_to {got[1]:#x}, expected {refers_to:#x}')
        if reference is not None:
            expect(got[2] == reference, 'error reference')
        return got

    def next_entry(self):
        """The next pushed deliver / gap notice, parsed."""
        if self.inbox:
            kind, body = self.inbox.pop(0)
        else:
            kind, body = self.read_frame()
        if kind == KIND['deliver']:
            return parse_deliver(body)
        expect(kind == KIND['gap'], f'expected a pushed entry, got {kind:#x}')
        r = Reader(body)
        out = dict(kind='gap', seq=r.int(8), group=r.take(16), sender=r.str8(), count=r.int(4))
        r.end()
        return out

    def ping(self, nonce=7):
        body = self.request(KIND['ping'], u64(nonce), 'pong')
        expect(body == u64(nonce), 'pong echoes the nonce')

    def hello(self):
        kind, body = self.read_frame()
        expect(kind == KIND['hello'], 'first frame is hello')
        r = Reader(body)
        self.software = r.str8()
        self.dh_group = r.int(1)
        self.relay_key = r.take(32)
        self.challenge = r.take(32)
        sig = r.take(64)
        r.end()
        expect(self.dh_group == DH_GROUP, 'relay DH group is ffdhe2048')
        expect(PINNED_RELAY_KEY in (None, self.relay_key), 'relay key is the pinned one')
        # The signature covers software, dh_group and relay_key: the body
        # up to the challenge (3.4, hello v2).
        expect(ed_verify(self.relay_key, sig, b'hermes hello v2\x00' + body[:-96]),
               'hello signature')


def parse_error(body):
    r = Reader(body)
    out = (r.int(2), r.int(1), r.take(16), r.str8())
    r.end()
    return out


def parse_deliver(body):
    r = Reader(body)
    out = dict(kind='deliver', seq=r.int(8), sender=r.str8(), group=r.take(16),
               entry_kind=r.int(1), message_id=r.take(16), unix_ms=r.int(8))
    out['ciphertext'] = r.take(r.int(4))
    r.end()
    return out


def auth_message(label, conn, name):
    n = unicodedata.normalize('NFC', name).encode()
    return label + conn.challenge + conn.relay_key + u8(len(n)) + n


class User:
    """A Python Hermes user: identity, connection, groups and sender keys."""

    def __init__(self, addr, name):
        self.addr, self.name = addr, name
        self.id = Identity()
        self.conn = None
        self.peers = {}        # name -> (key, y)
        self.raw_identities = {}
        self.lazy = False      # True: on an add, record my key as given but lose it
                               # (so the newcomer must send a key request)
        self.lose_distribution_from = None   # ignore this sender's next distribution
        self.asked = set()     # (group, sender) key requests sent
        self.pending = []      # entries kept until their group or key is known (5.4)
        self.key_requests_sent = 0
        self.groups = {}       # gid -> dict(epoch, admin, roster, mine, chains)
        self.last_seq = 0

    def connect(self):
        if self.conn:
            self.conn.close()
        self.conn = Conn(self.addr)
        return self.conn

    def register(self):
        c = self.connect()
        proof = self.id.sk.sign(auth_message(b'hermes register v1\x00', c, self.name))
        body = c.request(KIND['register'], str8(self.name) + u16(len(self.id.public))
                         + self.id.public + proof, 'authenticated')
        FACTS['accounts'][unicodedata.normalize('NFC', self.name)] = self.id.public.hex()
        return self.parse_authenticated(body)

    def login(self):
        c = self.connect()
        sig = self.id.sk.sign(auth_message(b'hermes login v1\x00', c, self.name))
        body = c.request(KIND['login'], str8(self.name) + sig, 'authenticated')
        return self.parse_authenticated(body)

    def parse_authenticated(self, body):
        r = Reader(body)
        name, acked = r.str8(), r.int(8)
        r.end()
        expect(name == unicodedata.normalize('NFC', self.name), 'authenticated name')
        return acked

    def fetch_identities(self, names):
        body = u16(len(names)) + b''.join(str8(n) for n in names)
        r = Reader(self.conn.request(KIND['fetch_identities'], body, 'identities'))
        out = {}
        expect(r.int(2) == len(names), 'identities count')
        for want in names:
            name = r.str8()
            expect(name == want, 'identities in the order asked')
            if r.flag():
                raw = r.take(r.int(2))
                out[name] = parse_public_identity(raw)
                self.raw_identities[name] = raw
        r.end()
        self.peers.update(out)
        return out

    def z(self, peer):
        key, y = self.peers[peer]
        zz = pow(y, self.id.x, P2048)
        expect(zz != 1, 'Z != 1')
        return be(zz, PLEN)

    def create_group(self, display, members):
        self.fetch_identities(members)
        roster = {self.name: self.id.key}
        roster.update({m: self.peers[m][0] for m in members})
        gid = secrets.token_bytes(16)
        genesis = make_genesis(gid, display, self.name, self.id.sk, roster)
        body = self.conn.request(KIND['create_group'], u32(len(genesis)) + genesis,
                                 'commit_accepted')
        expect(body == gid + u64(0), 'commit accepted: group id, epoch 0')
        FACTS['commits'].append(dict(signer=self.name, group=gid.hex(), epoch=0,
                                     commit=genesis.hex()))
        self.join(gid, 0, self.name, roster)
        return gid, genesis

    def join(self, gid, epoch, admin, roster, display=''):
        self.groups[gid] = dict(gid=gid, epoch=epoch, admin=admin, roster=roster,
                                display=display, dissolved=False, closed=False,
                                mine=SenderKey(), chains={})

    def accept_genesis(self, entry):
        """A commit entry (kind 5) carrying a genesis: verify it (2.3), check
        the admin's key against the directory, join."""
        gid, display, admin, roster = parse_genesis(entry['ciphertext'])
        expect(entry['group'] == gid and entry['sender'] == admin, 'commit entry routing')
        expect(entry['message_id'] == b'\0' * 8 + u64(0), 'commit entry message id')
        expect(self.name in roster, 'I am in the roster')
        others = [m for m in roster if m != self.name]
        self.fetch_identities(others)
        for m in others:
            expect(self.peers[m][0] == roster[m], f'roster key of {m} is its registered key')
        self.join(gid, 0, admin, roster, display)
        return gid, display

    def direct_send(self, peer, gid, entry_kind, header_kind, plaintext):
        """2.7: a direct message under the pairwise keys of my direction."""
        if peer not in self.peers:
            self.fetch_identities([peer])
        enc, mac = channel_keys(self.z(peer), self.name, peer)
        header = u8(header_kind) + s16(self.name) + s16(peer)
        env = seal(enc, mac, header, secrets.token_bytes(16), plaintext)
        mid = secrets.token_bytes(16)
        body = str8(peer) + gid + u8(entry_kind) + mid + u32(len(env)) + env
        r = self.parse_receipt(self.conn.request(KIND['direct_send'], body, 'receipt'), mid)
        FACTS['messages'].append(dict(kind=entry_kind, sender=self.name, recipient=peer,
                                      group=gid.hex(), message_id=mid.hex(), seq=r['seq'],
                                      unix_ms=r['unix_ms'], ciphertext=env.hex()))
        return r

    def open_direct(self, entry, header_kind):
        sender = entry['sender']
        if sender not in self.peers:
            self.fetch_identities([sender])
        enc, mac = channel_keys(self.z(sender), sender, self.name)
        header, pt = open_envelope(enc, mac, entry['ciphertext'])
        expect(header == u8(header_kind) + s16(sender) + s16(self.name), 'direct header')
        return pt

    def distribute(self, gid, to=None, send=True):
        """2.7, 2.8: my current sender key (current iteration) to every
        other member, or to `to`, one direct send each; records what each
        member was first given for this key id."""
        g = self.groups[gid]
        mine = g['mine']
        receipts = []
        for peer in sorted(to or g['roster']):
            if peer == self.name:
                continue
            dist = (u8(1) + gid + u64(g['epoch']) + u32(mine.key_id) + u32(mine.iteration)
                    + mine.ck + mine.public)
            expect(len(dist) == 97, 'distribution is 97 bytes')
            mine.given.setdefault(peer, dist)
            if send:
                receipts.append(self.direct_send(peer, gid, 2, 0x02, dist))
        return receipts

    def rotate(self, gid):
        """2.8, after a remove or leave: key id + 1, new chain and signing key."""
        g = self.groups[gid]
        g['mine'] = SenderKey(g['mine'].key_id + 1)
        self.distribute(gid)

    def parse_receipt(self, body, mid):
        r = Reader(body)
        out = dict(message_id=r.take(16), seq=r.int(8), unix_ms=r.int(8))
        r.end()
        expect(out['message_id'] == mid, 'receipt names the message id')
        return out

    def open_distribution(self, entry):
        expect(entry['entry_kind'] == 2, 'distribution entry')
        sender = entry['sender']
        dist = self.open_direct(entry, 0x02)
        r = Reader(dist)
        expect(r.int(1) == 1, 'distribution version')
        gid = r.take(16)
        epoch, key_id, iteration, ck, public = r.int(8), r.int(4), r.int(4), r.take(32), r.take(32)
        r.end()
        g = self.groups[gid]
        expect(gid == entry['group'], 'distribution group matches routing')
        expect(sender in g['roster'], 'distribution from a roster member')
        held = [k for (m, k) in g['chains'] if m == sender]
        expect(not held or key_id >= max(held), 'distribution rollback')
        g['chains'][(sender, key_id)] = Chain(iteration, ck, public)
        for k in sorted(held)[:-1]:            # keep 2 key ids per sender (2.6)
            if k < key_id:
                del g['chains'][(sender, k)]
        return sender, gid, epoch, key_id

    def group_send(self, gid, text, message_id=None):
        g = self.groups[gid]
        mine = g['mine']
        mid = message_id or secrets.token_bytes(16)
        seed, nxt = ratchet(mine.ck)
        enc, mac, nonce = message_keys(seed, mine.iteration)
        header = (u8(1) + gid + u64(g['epoch']) + s16(self.name) + u32(mine.key_id)
                  + u32(mine.iteration) + u64(int(time.time() * 1000)) + mid)
        env = seal(enc, mac, header, nonce, text.encode())
        msg = env + mine.sk.sign(MSG_SIG_LABEL + env)
        mine.ck, mine.iteration = nxt, mine.iteration + 1
        body = gid + u64(g['epoch']) + mid + u32(len(msg)) + msg
        r = self.parse_receipt(self.conn.request(KIND['group_send'], body, 'receipt'), mid)
        FACTS['messages'].append(dict(kind=1, sender=self.name, group=gid.hex(),
                                      epoch=g['epoch'], message_id=mid.hex(), seq=r['seq'],
                                      unix_ms=r['unix_ms'], ciphertext=msg.hex()))
        return mid, body, r

    def open_group_message(self, entry):
        """2.5, in the document's order. Returns (sender, text)."""
        expect(entry['entry_kind'] == 1, 'group message entry')
        msg = entry['ciphertext']
        env, sig = msg[:-64], msg[-64:]
        r = Reader(envelope_header(env))
        expect(r.int(1) == 1, 'group header kind')
        gid = r.take(16)
        epoch, sender, key_id, iteration = r.int(8), r.str16(), r.int(4), r.int(4)
        unix_ms, mid = r.int(8), r.take(16)
        r.end()
        g = self.groups[gid]
        expect(gid == entry['group'], 'group id')
        expect(sender in g['roster'] and sender != self.name, 'sender in roster, not me')
        chain = g['chains'].get((sender, key_id))
        expect(chain is not None, f'no sender key for {sender} key id {key_id}')
        expect(ed_verify(chain.public, sig, MSG_SIG_LABEL + env), 'message signature')
        jump = iteration - chain.iteration
        expect(jump >= 0, 'not a duplicate')
        free = min(jump, chain.allowance)          # 2.6: gap allowance first
        expect(jump - free <= 25000, 'within MAX_FORWARD_JUMP')
        ck = chain.ck
        for _ in range(iteration - chain.iteration):
            ck = ratchet(ck)[1]
        seed, nxt = ratchet(ck)
        enc, mac, nonce = message_keys(seed, iteration)
        header, pt = open_envelope(enc, mac, env)
        expect(env[3 + len(header):19 + len(header)] == nonce, 'nonce is nonce_i')
        chain.ck, chain.iteration = nxt, iteration + 1
        chain.allowance -= free
        entry['skipped_by_allowance'] = free
        return dict(sender=sender, text=pt.decode(), epoch=epoch, message_id=mid,
                    unix_ms=unix_ms, wire_message_id=entry['message_id'], key_id=key_id)

    def fetch_commits(self, gid, from_epoch):
        out = []
        for _ in range(1000):
            r = Reader(self.conn.request(KIND['fetch_commits'], gid + u64(from_epoch), 'commits'))
            expect(r.take(16) == gid, 'commits: group id')
            more = r.flag()
            batch = [r.take(r.int(4)) for _ in range(r.int(2))]
            r.end()
            out += batch
            if not more:
                return out
            from_epoch += len(batch)
        raise Fail('fetch commits did not end')

    def welcome(self, entry):
        """2.7: open a welcome, fetch and verify the log from genesis, check
        the welcome's roster hash and admin at its epoch, join with a fresh
        sender key (key id 1) sent to every other member (2.8, add me)."""
        r = Reader(self.open_direct(entry, 0x03))
        expect(r.int(1) == 1, 'welcome version')
        gid, epoch, rh = r.take(16), r.int(8), r.take(32)
        r.end()
        expect(gid == entry['group'], 'welcome group matches routing')
        log = self.fetch_commits(gid, 0)
        _, display, admin, roster = parse_genesis(log[0])
        others = [m for m in roster if m != self.name]
        self.fetch_identities(others)
        for m in others:
            expect(self.peers[m][0] == roster[m], f'genesis key of {m} is its registered key')
        g = dict(gid=gid, epoch=0, admin=admin, roster=roster, dissolved=False)
        for c in log[1:]:
            if g['epoch'] == epoch:
                break
            apply_commit(g, c)
        expect(g['epoch'] == epoch, 'the log reaches the welcome epoch')
        expect(roster_hash(gid, g['admin'], g['roster']) == rh, 'welcome roster hash')
        expect(g['admin'] == entry['sender'], 'welcome sent by the admin')
        expect(self.name in g['roster'], 'I am in the welcomed roster')
        self.join(gid, epoch, g['admin'], g['roster'], display)
        for c in log[1 + epoch:]:
            self.on_commit(gid, c)
        self.distribute(gid)
        return gid

    def on_commit(self, gid, c):
        """Apply a commit and its effects on keys (2.8)."""
        g = self.groups[gid]
        if g['closed']:
            return None
        res = apply_commit(g, c)
        if res is None:
            return None
        op, target, _ = res
        if target == self.name and op in ('remove', 'leave'):
            g['closed'] = True
        elif g['dissolved']:
            g['closed'] = True
        elif op == 'add':
            self.distribute(gid, to=[target], send=not self.lazy)
        elif op in ('remove', 'leave'):
            for k in [k for k in g['chains'] if k[0] == target]:
                del g['chains'][k]
            self.rotate(gid)
        return res

    def commit(self, gid, op, name, key, identity=b''):
        """Make and send a commit as admin (or as the leaver); apply it."""
        g = self.groups[gid]
        c = make_commit(g, op, name, key, self.id.sk, identity)
        body = self.conn.request(KIND['commit'], u32(len(c)) + c, 'commit_accepted')
        expect(body == gid + u64(g['epoch'] + 1), 'commit accepted: group id, next epoch')
        FACTS['commits'].append(dict(signer=self.name, group=gid.hex(), epoch=g['epoch'] + 1,
                                     commit=c.hex()))
        return c

    def add_member(self, gid, name):
        """2.3 add, 2.7 welcome, 2.8: admin adds `name`."""
        self.fetch_identities([name])
        ident = self.raw_identities[name]
        c = self.commit(gid, 1, name, self.peers[name][0], ident)
        self.on_commit(gid, c)          # sends my current key to the newcomer
        g = self.groups[gid]
        welcome = u8(1) + gid + u64(g['epoch']) + roster_hash(gid, g['admin'], g['roster'])
        self.direct_send(name, gid, 4, 0x03, welcome)
        return c

    def process(self, e, pending):
        """One pushed entry, as a client would handle it; entries that
        cannot be handled yet (group or sender key unknown) go to `pending`.
        Returns the opened group message, if any."""
        user_trace(self, e)
        if e['kind'] == 'gap':
            g = self.groups.get(e['group'])
            if g:
                ids = [k for (m, k) in g['chains'] if m == e['sender']]
                if ids:
                    g['chains'][(e['sender'], max(ids))].allowance += e['count']
            return None
        k, gid = e['entry_kind'], e['group']
        if k == 4:
            self.welcome(e)
            return None
        if k == 5 and gid not in self.groups:
            if e['message_id'] == b'\0' * 16:          # a genesis naming me
                self.accept_genesis(e)
                self.distribute(gid)
            else:
                pending.append(e)                       # wait for the welcome
            return None
        if gid not in self.groups:
            pending.append(e)
            return None
        g = self.groups[gid]
        if k == 5:
            self.on_commit(gid, e['ciphertext'])
        elif k == 2:
            if e['sender'] == self.lose_distribution_from:
                self.lose_distribution_from = None      # as if it never came
                return None
            self.open_distribution(e)
        elif k == 3:
            r = Reader(self.open_direct(e, 0x04))
            expect(r.int(1) == 1 and r.take(16) == gid, 'key request')
            key_id = r.int(4)
            r.end()
            mine = g['mine']
            if key_id == mine.key_id and e['sender'] in g['roster']:
                dist = mine.given.get(e['sender'])
                if dist is None:
                    self.distribute(gid, to=[e['sender']])
                else:
                    self.direct_send(e['sender'], gid, 2, 0x02, dist)
            self.key_requests_answered = getattr(self, 'key_requests_answered', 0) + 1
        elif k == 1:
            env = e['ciphertext'][:-64]
            r = Reader(envelope_header(env))
            r.take(1 + 16 + 8)
            sender, key_id = r.str16(), r.int(4)
            if (sender, key_id) not in g['chains']:
                pending.append(e)
                if (gid, sender) not in self.asked and sender in g['roster']:
                    self.asked.add((gid, sender))       # 5.4: once per sender
                    self.direct_send(sender, gid, 3, 0x04, u8(1) + gid + u32(key_id))
                    self.key_requests_sent += 1
                return None
            return self.open_group_message(e)
        return None

    def pump(self, until, rounds=40):
        """Process pushed entries (acking each) until `until(messages)`
        holds; retries pending entries after each one. Returns the group
        messages opened."""
        got, pending = [], self.pending
        for _ in range(rounds):
            e = self.conn.next_entry()
            self.last_seq = e['seq']
            m = self.process(e, pending)
            if m:
                got.append(m)
            for _ in range(len(pending)):
                m = self.process(pending.pop(0), pending)
                if m:
                    got.append(m)
            self.ack(e['seq'])
            if until(got):
                return got
        raise Fail(f'expected entries did not arrive; got {got}')

    def ack(self, up_to):
        self.conn.send(KIND['ack'], u64(up_to))
        FACTS['acks'].append(dict(user=self.name, up_to=up_to))


# ---------------------------------------------------------------- checks
def check_wire_vectors():
    """3.7: rebuild each worked frame from its description and compare it
    with the document's hex (offline)."""
    doc = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                            'PROTOCOL.md')).read()
    part = doc[doc.index('### 3.7 Worked vectors'):doc.index('## Part 4')]
    hexes = [bytes.fromhex(line.strip()) for line in part.splitlines()
             if line.startswith('    ') and line.strip()]
    gid, mid = b'\x11' * 16, b'\x22' * 16
    built = [
        frame(KIND['ack'], u64(5)),
        frame(KIND['login'], str8('al') + b'\xaa' * 64),
        frame(KIND['group_send'], gid + u64(2) + mid + u32(2) + b'hi'),
        frame(KIND['deliver'], u64(7) + str8('al') + gid + u8(1) + mid + u64(1000)
              + u32(2) + b'hi'),
        frame(KIND['error'], u16(302) + u8(KIND['group_send']) + mid + u8(11)
              + b'stale epoch'),
    ]
    expect(len(hexes) == len(built), f'3.7 has {len(hexes)} vectors, expected {len(built)}')
    for want, got in zip(hexes, built):
        expect(want == got, f'3.7 vector: document {want.hex()} != built {got.hex()}')
    expect(parse_deliver(built[3][6:])['seq'] == 7, 'the deliver vector parses')
    expect(parse_error(built[4][6:]) == (302, 0x28, mid, 'stale epoch'), 'error parses')
    ok(f'3.7 worked vectors rebuilt from their descriptions ({len(built)} frames)')


def user_trace(user, e):
    if os.environ.get('WIRE_TRACE'):
        print(f'  {user.name} entry', {k: (v.hex() if isinstance(v, bytes) and len(v) <= 16
                                          else (len(v) if isinstance(v, bytes) else v))
                                      for k, v in e.items()}, flush=True)


def fresh_name(prefix):
    return f'{prefix}{secrets.token_hex(3)}'


def negative_checks(addr, alice):
    """The errors of 3.1 and 3.5 on fresh connections."""
    # 3.1: a length below 2 cannot be resynchronised: Malformed, close.
    c = Conn(addr)
    c.send_raw(u32(1) + b'\x01')
    c.expect_error(100, refers_to=0, reference=b'\0' * 16)
    expect(c.is_closed(), 'closed after length 1')
    ok('length below 2: Malformed (100), closed')

    # 3.1: a length above max_frame: FrameTooLarge, close (nothing more sent).
    c = Conn(addr)
    c.send_raw(u32(MAX_FRAME + 1) + b'\x01\x2b')
    c.expect_error(104, refers_to=0)
    expect(c.is_closed(), 'closed after oversized length')
    ok('length above max_frame: FrameTooLarge (104), closed')

    for version, code, what in ((0, 101, 'OldVersion'), (2, 102, 'UnknownVersion')):
        c = Conn(addr)
        c.send_raw(frame(KIND['ping'], u64(1), version=version))
        c.expect_error(code, refers_to=KIND['ping'])
        expect(c.is_closed(), f'closed after version {version}')
        ok(f'version {version}: {what} ({code}), closed')

    for kind in (0x3f, 0x10, 0x00, 0x40):
        c = Conn(addr)
        c.send_raw(frame(kind, b''))
        c.expect_error(103, refers_to=kind)
        expect(c.is_closed(), 'closed after unknown kind')
        ok(f'unassigned kind {kind:#04x}: UnknownKind (103), refers_to = that kind, closed')

    c = Conn(addr)
    c.send(KIND['ping'], u64(1) + b'\x00')
    c.expect_error(100, refers_to=KIND['ping'])
    expect(c.is_closed(), 'closed after a ping with a byte left over')
    ok('ping with a byte left over: Malformed (100), closed')

    c = Conn(addr)
    c.send(KIND['pong'], u64(1))
    c.expect_error(105, refers_to=KIND['pong'])
    c.ping()
    ok('relay kind from a client: UnexpectedFrame (105), connection kept')

    c.send(KIND['list_groups'], b'')
    c.expect_error(200, refers_to=KIND['list_groups'])
    c.ping()
    ok('request before login: NotAuthenticated (200), connection kept')

    # Wrong login signature: signed over another challenge.
    c = Conn(addr)
    bad = alice.id.sk.sign(b'hermes login v1\x00' + b'\0' * 32 + c.relay_key
                           + u8(len(alice.name)) + alice.name.encode())
    c.send(KIND['login'], str8(alice.name) + bad)
    c.expect_error(205, refers_to=KIND['login'])
    expect(c.is_closed(), 'closed after a bad login')
    ok('login with a wrong signature: BadSignature (205), closed')

    # A registration proof used as a login (label differs): refused.
    c = Conn(addr)
    bad = alice.id.sk.sign(auth_message(b'hermes register v1\x00', c, alice.name))
    c.send(KIND['login'], str8(alice.name) + bad)
    c.expect_error(205)
    expect(c.is_closed(), 'closed')
    ok('registration proof replayed as a login: BadSignature (205)')

    c = Conn(addr)
    nobody = fresh_name('nobody')
    c.send(KIND['login'], str8(nobody) + alice.id.sk.sign(
        auth_message(b'hermes login v1\x00', c, nobody)))
    c.expect_error(206)
    expect(c.is_closed(), 'closed after unknown user login')
    ok('login as an unknown user: UnknownUser (206), closed')

    def register_with(name, ident, proof_label=b'hermes register v1\x00'):
        c = Conn(addr)
        proof = ident.sk.sign(auth_message(proof_label, c, name))
        c.send(KIND['register'], str8(name) + u16(len(ident.public)) + ident.public + proof)
        return c

    c = register_with(alice.name, Identity())
    c.expect_error(203)
    expect(c.is_closed(), 'closed')
    ok('register a taken name: NameTaken (203), closed')

    c = register_with('bad\x07name', Identity())
    c.expect_error(202)
    expect(c.is_closed(), 'closed')
    ok('register a name with a control character: BadName (202), closed')

    refused = fresh_name('proof')
    FACTS['refused_names'].append(refused)
    c = register_with(refused, Identity(), b'hermes login v1\x00')
    c.expect_error(205)
    expect(c.is_closed(), 'closed')
    ok('register with a login-labelled proof: BadSignature (205), closed')

    # An identity whose certificate does not verify.
    ident = Identity()
    ident.public = ident.public[:-1] + bytes([ident.public[-1] ^ 1])
    refused = fresh_name('cert')
    FACTS['refused_names'].append(refused)
    c = register_with(refused, ident)
    c.expect_error(204)
    expect(c.is_closed(), 'closed')
    ok('register an identity with a bad certificate: BadIdentity (204), closed')


def python_group(addr):
    alice, bob, carol = (User(addr, fresh_name(n)) for n in ('alice', 'bob', 'carol'))
    for u in (alice, bob, carol):
        expect(u.register() == 0, 'a new account has acked 0')
    ok(f'registered {alice.name}, {bob.name}, {carol.name} (fresh identities)')
    c = alice.conn
    c.send(KIND['login'], str8(alice.name) + alice.id.sk.sign(
        auth_message(b'hermes login v1\x00', c, alice.name)))
    c.expect_error(201, refers_to=KIND['login'])
    c.ping()
    ok('second login on a connection: AlreadyAuthenticated (201), connection kept')

    negative_checks(addr, alice)

    for u in (alice, bob, carol):
        u.login()
    ok('logged in (fresh connections, challenge signed)')

    gid, genesis = alice.create_group('wire test', [bob.name, carol.name])
    ok('genesis commit accepted at epoch 0')
    for u in (alice, bob, carol):
        e = u.conn.next_entry()
        expect(e['kind'] == 'deliver' and e['entry_kind'] == 5, 'commit entry')
        expect(e['ciphertext'] == genesis, 'commit entry carries the genesis')
        if u is not alice:
            got, display = u.accept_genesis(e)
            expect(got == gid and display == 'wire test', 'genesis decoded')
        u.last_seq = e['seq']
    ok('genesis queued to every member (kind 5, message id 0^8 || epoch), verified')

    body = Reader(alice.conn.request(KIND['list_members'], gid, 'members'))
    expect(body.take(16) == gid and body.int(8) == 0 and body.str8() == alice.name, 'members')
    names = [body.str8() for _ in range(body.int(2))]
    body.end()
    expect(names == sorted([alice.name, bob.name, carol.name], key=str.encode), 'member list')
    r = Reader(bob.conn.request(KIND['list_groups'], b'', 'groups'))
    expect(r.int(2) == 1 and r.take(16) == gid and r.int(8) == 0 and r.str8() == alice.name,
           'groups')
    r.end()
    r = Reader(carol.conn.request(KIND['fetch_commits'], gid + u64(0), 'commits'))
    expect(r.take(16) == gid and not r.flag() and r.int(2) == 1, 'commits header')
    expect(r.take(r.int(4)) == genesis, 'fetched genesis')
    r.end()
    ok('list members / list groups / fetch commits answer as documented')

    for u in (alice, bob, carol):
        u.distribute(gid)
    for u in (alice, bob, carol):
        for _ in range(2):
            e = u.conn.next_entry()
            expect(e['seq'] > u.last_seq, 'queue sequence numbers increase')
            u.last_seq = e['seq']
            u.open_distribution(e)
        expect(len(u.groups[gid]['chains']) == 2, 'two chains')
    ok('sender keys distributed over pairwise channels and opened (6 direct sends)')

    mid, send_body, receipt = alice.group_send(gid, 'hello from python')
    for u in (bob, carol):
        e = u.conn.next_entry()
        expect(e['seq'] == receipt['seq'], 'deliver seq equals the receipt seq')
        expect(e['message_id'] == mid and e['sender'] == alice.name, 'deliver routing')
        m = u.open_group_message(e)
        expect(m['sender'] == alice.name and m['text'] == 'hello from python', 'decrypted')
        u.ack(e['seq'])
        u.last_seq = e['seq']
    ok('group message delivered, signature verified, decrypted, acked')

    # Dedupe: the same (sender, message id) again stores nothing, same receipt.
    again = alice.parse_receipt(alice.conn.request(KIND['group_send'], send_body, 'receipt'), mid)
    expect(again == receipt, f'duplicate send gets the same receipt {again} {receipt}')
    ok('duplicate group send: same receipt, nothing stored')

    # The ack position survives a reconnect; nothing is delivered again.
    bob.conn.ping()
    expect(bob.login() == bob.last_seq, 'authenticated.acked is the ack position')
    bob.conn.ping()
    expect(not bob.conn.inbox, 'nothing redelivered after the ack')
    ok('ack position reported on login, nothing redelivered')

    # Stale epoch: refers_to 0x28, reference = the message id.
    bad_mid = secrets.token_bytes(16)
    bob.conn.send(KIND['group_send'], gid + u64(5) + bad_mid + u32(2) + b'hi')
    bob.conn.expect_error(302, refers_to=KIND['group_send'], reference=bad_mid)
    ok('group send under a wrong epoch: StaleEpoch (302), reference = message id')

    bob.conn.send(KIND['ack'], u64(bob.last_seq + 1_000_000))
    bob.conn.expect_error(402, refers_to=KIND['ack'])
    bob.conn.ping()
    ok('ack beyond assigned sequence numbers: AckOutOfRange (402)')

    other = secrets.token_bytes(16)
    dm = secrets.token_bytes(16)
    bob.conn.send(KIND['direct_send'], str8(carol.name) + other + u8(2) + dm + u32(2) + b'hi')
    bob.conn.expect_error(300, refers_to=KIND['direct_send'], reference=dm)
    bob.conn.ping()
    ok('direct send naming an unknown group: UnknownGroup (300), reference = message id')

    dave = User(addr, fresh_name('dave'))
    dave.register()
    dm = secrets.token_bytes(16)
    bob.conn.send(KIND['direct_send'], str8(dave.name) + gid + u8(2) + dm + u32(2) + b'hi')
    bob.conn.expect_error(400, refers_to=KIND['direct_send'], reference=dm)
    bob.conn.ping()
    ok('direct send to a non-member: NoSharedGroup (400), reference = message id')

    dm = secrets.token_bytes(16)
    bob.conn.send(KIND['direct_send'], str8(carol.name) + gid + u8(1) + dm + u32(2) + b'hi')
    bob.conn.expect_error(100, refers_to=KIND['direct_send'])
    expect(bob.conn.is_closed(), 'closed after a direct send of kind 1')
    ok('direct send of entry kind 1: Malformed (100), closed')
    bob.login()

    bob.conn.send(KIND['list_members'], other)
    bob.conn.expect_error(300, refers_to=KIND['list_members'], reference=other)
    ok('list members of an unknown group: UnknownGroup (300), reference = group id')

    # Commits the relay must refuse (3.4, 3.5), each on a live connection.
    g = alice.groups[gid]
    dave.fetch_identities([alice.name])
    bob.fetch_identities([dave.name])
    c = make_commit(g, 1, dave.name, bob.peers[dave.name][0], bob.id.sk,
                    bob.raw_identities[dave.name])
    bob.conn.send(KIND['commit'], u32(len(c)) + c)
    bob.conn.expect_error(304, refers_to=KIND['commit'], reference=gid)
    ok('add signed by a non-admin: NotAuthorized (304), reference = group id')
    c = make_commit(dict(g, epoch=g['epoch'] + 1), 2, carol.name, carol.id.key, alice.id.sk)
    alice.conn.send(KIND['commit'], u32(len(c)) + c)
    alice.conn.expect_error(305, refers_to=KIND['commit'], reference=gid)
    ok('commit for epoch E+2: EpochConflict (305)')
    c = make_commit(g, 2, carol.name, carol.id.key, alice.id.sk)
    c = c[:-1] + bytes([c[-1] ^ 1])
    alice.conn.send(KIND['commit'], u32(len(c)) + c)
    alice.conn.expect_error(303, refers_to=KIND['commit'], reference=gid)
    ok('commit with a bad signature: BadCommit (303)')
    alice.conn.send(KIND['create_group'], u32(len(genesis)) + genesis)
    alice.conn.expect_error(306, refers_to=KIND['create_group'], reference=gid)
    ok('the same genesis again: GroupExists (306)')
    fake = {alice.name: alice.id.key, bob.name: Identity().key}
    gid_fake = secrets.token_bytes(16)
    c = make_genesis(gid_fake, 'fake', alice.name, alice.id.sk, fake)
    alice.conn.send(KIND['create_group'], u32(len(c)) + c)
    err = alice.conn.expect_error(303, refers_to=KIND['create_group'], reference=gid_fake)
    ok(f'genesis with a roster key that is not the registered one: BadCommit (303) {err[3]!r}')
    c = make_genesis(gid_fake, 'fake', bob.name, bob.id.sk,
                     {alice.name: alice.id.key, bob.name: bob.id.key})
    alice.conn.send(KIND['create_group'], u32(len(c)) + c)
    alice.conn.expect_error(304, refers_to=KIND['create_group'], reference=gid_fake)
    ok('genesis signed by another member than the sender: NotAuthorized (304)')
    c = make_genesis(gid_fake, 'fake', alice.name, alice.id.sk,
                     {alice.name: alice.id.key, fresh_name('ghost'): Identity().key})
    alice.conn.send(KIND['create_group'], u32(len(c)) + c)
    alice.conn.expect_error(206, refers_to=KIND['create_group'], reference=gid_fake)
    alice.conn.ping()
    ok('genesis naming an unregistered member: UnknownUser (206), connection kept')
    c = make_commit(g, 2, carol.name, carol.id.key, alice.id.sk)
    bob.conn.send(KIND['commit'], u32(len(c)) + c)
    bob.conn.expect_error(304, refers_to=KIND['commit'], reference=gid)
    ok("a valid commit sent by another member than its signer: NotAuthorized (304)")
    alice.conn.send(KIND['commit'], u32(3) + b'\x01\x02\x03')
    alice.conn.expect_error(303, refers_to=KIND['commit'], reference=b'\0' * 16)
    alice.conn.ping()
    ok('a commit that does not decode: BadCommit (303), reference zeros')

    # Members only (3.4).
    dave.conn.send(KIND['fetch_commits'], gid + u64(0))
    dave.conn.expect_error(301, refers_to=KIND['fetch_commits'], reference=gid)
    dave.conn.send(KIND['list_members'], gid)
    dave.conn.expect_error(301, refers_to=KIND['list_members'], reference=gid)
    dave.conn.ping()
    ok('fetch commits / list members by a non-member: NotMember (301), reference = group id')

    # An ack at or below the position is ignored (no answer, no error).
    bob.ack(1)
    bob.conn.ping()
    expect(not bob.conn.inbox, 'nothing after an old ack')
    ok('an ack below the position is ignored')

    # An identities answer over max_frame: FrameTooLarge, connection kept.
    n = 4000                                   # 4000 x ~370 bytes > 1 MiB
    dave.conn.send(KIND['fetch_identities'], u16(n) + str8(alice.name) * n)
    dave.conn.expect_error(104, refers_to=KIND['fetch_identities'])
    dave.conn.ping()
    ok(f'fetch identities answer over max_frame ({n} names): FrameTooLarge (104), kept')

    # Body errors (3.1): Malformed, close.
    for what, body in (
            ('a list of 8193 names', u16(8193) + str8('a') * 8193),
            ('a name of 201 bytes', u16(1) + u8(201) + b'a' * 201),
            ('a name that is not UTF-8', u16(1) + u8(2) + b'\xff\xfe')):
        c = User(addr, dave.name)
        c.id = dave.id
        c.login()
        c.conn.send(KIND['fetch_identities'], body)
        c.conn.expect_error(100, refers_to=KIND['fetch_identities'])
        expect(c.conn.is_closed(), f'closed after {what}')
        ok(f'fetch identities with {what}: Malformed (100), closed')

    # Names (3.2): the relay NFC-normalises; 1..=50 characters.
    r = alice.fetch_identities([fresh_name('ghost')])
    expect(r == {}, 'unknown name: found = 0')
    ok('fetch identities of an unknown name: found = 0')
    ident = Identity()
    base = fresh_name('zoe')
    decomposed, composed = base + 'e\u0301', base + '\u00e9'
    c = Conn(addr)
    proof = ident.sk.sign(auth_message(b'hermes register v1\x00', c, composed))
    raw = decomposed.encode()
    body = c.request(KIND['register'], u8(len(raw)) + raw + u16(len(ident.public))
                     + ident.public + proof, 'authenticated')
    expect(Reader(body).str8() == composed, 'authenticated name is NFC')
    ok('register with a decomposed name: the relay answers (and signs for) the NFC name')
    c = Conn(addr)
    long_name = 'x' * 51
    ident = Identity()
    proof = ident.sk.sign(auth_message(b'hermes register v1\x00', c, long_name))
    c.send(KIND['register'], str8(long_name) + u16(len(ident.public)) + ident.public + proof)
    c.expect_error(202)
    ok('register a 51-character name: BadName (202)')

    # Two sessions of one user each get a new entry (5.1).
    bob2 = User(addr, bob.name)
    bob2.id = bob.id
    bob2.login()
    mid, _, _ = alice.group_send(gid, 'to both sessions')
    for conn in (bob.conn, bob2.conn):
        for _ in range(20):
            e = conn.next_entry()
            if e['kind'] == 'deliver' and e['message_id'] == mid:
                break
        else:
            raise Fail('a session did not get the new entry')
    ok('two sessions of one user: both are pushed the new entry')
    return alice


def gap_scenario(addr, cap):
    """A relay with a per-member queue cap of `cap` (3.5 limits): an
    offline member misses the oldest messages, gets one gap notice (3.4)
    and opens the rest with the gap allowance (2.6)."""
    alice, bob = User(addr, fresh_name('gapa')), User(addr, fresh_name('gapb'))
    alice.register()
    bob.register()
    gid, _ = alice.create_group('gaps', [bob.name])
    alice.distribute(gid)
    # Bob joins on the genesis (and sends his key), installs alice's key.
    bob.pump(lambda ms: gid in bob.groups and (alice.name, 1) in bob.groups[gid]['chains'])
    bob.conn.close()                                  # bob goes offline
    extra = 3
    sent = [alice.group_send(gid, f'message {i}')[2]['seq'] for i in range(cap + extra)]
    bob.login()
    entries = []
    for _ in range(cap + 10):
        e = bob.conn.next_entry()
        entries.append(e)
        m = bob.process(e, bob.pending)
        if m:
            e['text'] = m['text']
        if sum(1 for x in entries if 'text' in x) == cap:
            break
    gaps = [e for e in entries if e['kind'] == 'gap']
    expect(len(gaps) == 1, f'one gap notice: {entries}')
    gap = gaps[0]
    expect(gap['group'] == gid and gap['sender'] == alice.name and gap['count'] == extra,
           f'gap notice names the group, the sender and {extra} dropped: {gap}')
    texts = [e['text'] for e in entries if e['kind'] == 'deliver']
    expect(texts == [f'message {i}' for i in range(extra, cap + extra)],
           f'the oldest {extra} were dropped, the rest opened in order: {texts}')
    first = next(e for e in entries if e['kind'] == 'deliver')
    expect(first['skipped_by_allowance'] == extra, 'skipped by the allowance, not stored')
    expect(first['seq'] == sent[extra], 'seq of the first kept message is its receipt seq')
    expect(entries[0] is gap and gap['seq'] < first['seq'],
           'the gap notice comes before the kept messages')
    ok(f'queue cap {cap}: {extra} oldest dropped, one gap notice (group, sender, count '
       f'{extra}) before the rest, opened with the gap allowance (2.6)')
    # Bob did not ack it: the relay must keep it as a drop record (3.6).
    FACTS['gaps'].append(dict(member=bob.name, seq=gap['seq'], group=gid.hex(),
                              sender=alice.name, count=extra, through=sent[extra - 1]))


# ---------------------------------------------------------------- Rust CLI
class Rust:
    def __init__(self, binary, addr, state):
        self.binary, self.addr, self.state = binary, addr, state
        self.name = fresh_name('rusty')

    def run(self, *args, timeout=60):
        p = subprocess.run([self.binary, *args], env=self.env(), capture_output=True,
                           text=True, timeout=timeout)
        if p.returncode != 0:
            raise Fail(f'hermes {" ".join(args)}: exit {p.returncode}: {p.stderr.strip()}')
        return p.stdout

    def env(self):
        return dict(os.environ, HERMES_SERVER=self.addr, HERMES_USER=self.name,
                    HERMES_STATE_DIR=self.state, HERMES_PASSPHRASE='pw',
                    HERMES_INSECURE_TEST_KDF='1', RUST_LOG='warn')

    def recv(self, wait=0):
        out = self.run('recv', '--json', '--wait', str(wait))
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def start(self, *args):
        return subprocess.Popen([self.binary, *args], env=self.env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def finish(self, child, timeout=30):
        out, err = child.communicate(timeout=timeout)
        if child.returncode != 0:
            raise Fail(f'hermes: exit {child.returncode}: {err.strip()}')
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def has(msgs, group, sender, text):
    return (group, sender, text) in [(m.get('group'), m.get('sender'), m.get('text'))
                                     for m in msgs]


def texts(text):
    return lambda ms: any(m['text'] == text for m in ms)


def interop(addr, binary):
    state = tempfile.mkdtemp(prefix='hermes-wire-client-')
    try:
        rust = Rust(binary, addr, state)
        py, pz = User(addr, fresh_name('py')), User(addr, fresh_name('pz'))
        py.register()
        pz.register()
        rust.run('register')
        ok(f'Rust user {rust.name} registered through the CLI')

        # 1. The Python user creates the group; the Rust user is a member.
        gid, genesis = py.create_group('py-made', [rust.name])
        e = py.conn.next_entry()
        expect(e['entry_kind'] == 5 and e['ciphertext'] == genesis, 'own genesis queued')
        py.ack(e['seq'])
        py.distribute(gid)
        py.group_send(gid, 'hello rust, from python')
        msgs = rust.recv()
        expect(has(msgs, 'py-made', py.name, 'hello rust, from python'),
               f'Rust received the Python message: {msgs}')
        ok('Rust CLI verified and decrypted a message from the Python client')

        # Python loses the Rust user's distribution, asks for it (5.4), and
        # the Rust client answers on its next run with the same key.
        py.lose_distribution_from = rust.name
        rust.run('send', '--group', 'py-made', 'hello python, from rust')
        py.pump(lambda ms: py.key_requests_sent == 1)
        expect(not py.groups[gid]['chains'], 'no Rust chain yet')
        rust.recv()
        got = py.pump(texts('hello python, from rust'))
        expect(got[-1]['sender'] == rust.name, 'sender is the Rust user')
        expect(got[-1]['message_id'] == got[-1]['wire_message_id'],
               'the Rust client uses the header message id as the wire message id')
        ok('Python key request answered by the Rust CLI; the pending message opened')
        ok('Python client verified and decrypted a message from the Rust CLI')

        # 2. The Rust user creates a group; the Python user is a member.
        rust.run('group', 'create', 'rust-made', '--members', py.name)
        e = py.conn.next_entry()
        expect(e['kind'] == 'deliver' and e['entry_kind'] == 5, 'genesis from Rust')
        gid2, display = py.accept_genesis(e)
        expect(display == 'rust-made', 'display name')
        expect(py.groups[gid2]['admin'] == rust.name, 'Rust user is admin')
        py.ack(e['seq'])
        ok('Python client verified the Rust CLI genesis commit')
        py.distribute(gid2)
        rust.run('send', '--group', 'rust-made', 'second hello from rust')
        py.pump(texts('second hello from rust'))
        ok('Python client decrypted a message in the Rust-made group')
        py.group_send(gid2, 'reply from python')
        msgs = rust.recv()
        expect(has(msgs, 'rust-made', py.name, 'reply from python'),
               f'Rust received the reply: {msgs}')
        ok('Rust CLI decrypted the reply in its own group')

        # 3. The Rust admin adds a second Python user: add commit, welcome,
        # the log fetched and verified from genesis, keys exchanged.
        pz.login()
        rust.run('group', 'add', 'rust-made', pz.name)
        rust.run('send', '--group', 'rust-made', 'welcome, three of us')
        got = pz.pump(texts('welcome, three of us'))
        expect(gid2 in pz.groups and pz.groups[gid2]['epoch'] == 1, 'pz joined at epoch 1')
        expect(got[-1]['sender'] == rust.name, 'sender')
        ok('Python newcomer accepted the Rust admin\'s add commit and welcome, '
           'verified the log, decrypted')
        py.pump(texts('welcome, three of us'))
        expect(py.groups[gid2]['epoch'] == 1 and pz.name in py.groups[gid2]['roster'],
               'py applied the add')
        pz.pump(lambda ms: (py.name, 1) in [k for k in pz.groups[gid2]['chains']], rounds=1) \
            if (py.name, 1) not in pz.groups[gid2]['chains'] else None
        pz.group_send(gid2, 'hello from the newcomer')
        msgs = rust.recv()
        expect(has(msgs, 'rust-made', pz.name, 'hello from the newcomer'),
               f'Rust received the newcomer: {msgs}')
        py.pump(texts('hello from the newcomer'))
        ok('existing Python member sent its key to the newcomer (2.8); '
           'Rust and Python read the newcomer')

        # 4. The Rust admin removes the newcomer: everyone left rotates.
        rust.run('group', 'remove', 'rust-made', pz.name)
        rust.run('send', '--group', 'rust-made', 'after the removal')
        got = py.pump(texts('after the removal'))
        expect(got[-1]['key_id'] == 2, f'Rust rotated to key id 2: {got[-1]}')
        expect(py.groups[gid2]['mine'].key_id == 2, 'Python rotated to key id 2')
        pz.pump(lambda ms: pz.groups[gid2]['closed'], rounds=10)
        ok('remove: Python applied it and rotated; Rust\'s next message is under key id 2; '
           'the removed member closed the group')
        py.group_send(gid2, 'python after the removal')
        msgs = rust.recv()
        expect(has(msgs, 'rust-made', py.name, 'python after the removal'),
               f'Rust read the rotated key: {msgs}')
        ok('Rust CLI decrypted the Python member\'s rotated sender key (key id 2)')

        # Transfer of the admin role to Python, then Python (admin) leaves:
        # the group is dissolved for everyone (2.3).
        rust.run('group', 'admin', 'rust-made', py.name)
        py.pump(lambda ms: py.groups[gid2]['admin'] == py.name, rounds=10)
        expect(py.groups[gid2]['mine'].key_id == 2, 'a transfer changes no keys')
        ok('Python applied the Rust admin\'s transfer-admin commit (no rotation)')
        c = py.commit(gid2, 3, py.name, py.id.key)
        py.on_commit(gid2, c)
        expect(py.groups[gid2]['dissolved'], 'a leave by the admin dissolves')
        mid = secrets.token_bytes(16)
        py.conn.send(KIND['group_send'], gid2 + u64(4) + mid + u32(2) + b'hi')
        py.conn.expect_error(300, refers_to=KIND['group_send'], reference=mid)
        ok('admin leave (signed by the leaver) accepted; a send to the dissolved group '
           'is UnknownGroup (300)')
        rust.recv()
        p = subprocess.run([rust.binary, 'send', '--group', 'rust-made', 'anyone?'],
                           env=rust.env(), capture_output=True, text=True, timeout=60)
        expect(p.returncode != 0, 'Rust refuses to send to a dissolved group')
        ok(f'Rust CLI applied the Python admin\'s leave: {p.stderr.strip()!r}')

        # 5. The Python admin adds the Rust user to a group; the other
        # Python member holds back its key so the Rust client must ask.
        gid3, _ = py.create_group('py-add', [pz.name])
        py.distribute(gid3)
        pz.pump(lambda ms: gid3 in pz.groups and (py.name, 1) in pz.groups[gid3]['chains'])
        py.pump(lambda ms: (pz.name, 1) in py.groups[gid3]['chains'])
        pz.lazy = True
        py.add_member(gid3, rust.name)
        pz.pump(lambda ms: pz.groups[gid3]['epoch'] == 1, rounds=10)
        pz.group_send(gid3, 'sent before my key')
        py.pump(texts('sent before my key'))
        py.group_send(gid3, 'hello new member')
        child = rust.start('recv', '--json', '--wait', '2')
        before = getattr(pz, 'key_requests_answered', 0)
        pz.pump(lambda ms: getattr(pz, 'key_requests_answered', 0) > before, rounds=20)
        msgs = rust.finish(child)
        expect(has(msgs, 'py-add', py.name, 'hello new member'),
               f'Rust accepted the Python add + welcome: {msgs}')
        ok('Rust CLI accepted the Python admin\'s add commit and welcome')
        expect(has(msgs, 'py-add', pz.name, 'sent before my key'),
               f'Rust read a message after a key request: {msgs}')
        ok('Rust CLI sent a key request (2.7); the Python answer let it open the message')
        rust.run('send', '--group', 'py-add', 'rust joined')
        py.pump(texts('rust joined'))
        pz.pump(texts('rust joined'))
        ok('Rust newcomer\'s sender key reached both Python members')
    finally:
        shutil.rmtree(state, ignore_errors=True)


# ---------------------------------------------------------------- Part 4, 3.6
def crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def read_segments(data_dir):
    """Part 4: every record of every segment, checked; returns
    [(record id, kind, unix_ms, payload)] in id order."""
    seg_dir = os.path.join(data_dir, 'segments')
    names = sorted(n for n in os.listdir(seg_dir) if n.endswith('.seg'))
    expect(names, 'at least one segment')
    records, last_id = [], 0
    for n in names:
        expect(len(n) == 20 and all(ch in '0123456789abcdef' for ch in n[:16]),
               f'segment name {n}')
        b = open(os.path.join(seg_dir, n), 'rb').read()
        h = b[:40]
        expect(h[:8] == b'HERMESMB', f'{n}: magic')
        expect(int.from_bytes(h[8:12], 'big') == 1, f'{n}: version')
        expect(h[12:16] == b'\0' * 4 and h[32:36] == b'\0' * 4, f'{n}: reserved')
        expect(int.from_bytes(h[16:24], 'big') == int(n[:16], 16), f'{n}: segment number')
        base = int.from_bytes(h[24:32], 'big')
        expect(crc32c(h[:36]) == int.from_bytes(h[36:40], 'big'), f'{n}: header checksum')
        off = 40
        while off + 24 <= len(b) and b[off:off + 24] != b'\0' * 24:
            length, kind = int.from_bytes(b[off:off + 4], 'big'), b[off + 4]
            expect(b[off + 5:off + 8] == b'\0' * 3, f'{n}@{off}: reserved')
            rid = int.from_bytes(b[off + 8:off + 16], 'big')
            unix_ms = int.from_bytes(b[off + 16:off + 24], 'big')
            expect(length <= 2 << 20 and off + 28 + length <= len(b), f'{n}@{off}: length')
            crc = int.from_bytes(b[off + 24 + length:off + 28 + length], 'big')
            expect(crc32c(b[off:off + 24 + length]) == crc, f'{n}@{off}: checksum')
            expect(rid > last_id and rid >= base, f'{n}@{off}: id order')
            last_id = rid
            records.append((rid, kind, unix_ms, b[off + 24:off + 24 + length]))
            off += (28 + length + 7) & ~7
        expect(all(x == 0 for x in b[off:]), f'{n}: only zeros after the last record')
    return records


def parse_entry_body(r):
    """3.6: a deliver frame after its seq."""
    out = dict(sender=r.str8(), group=r.take(16).hex(), kind=r.int(1),
               message_id=r.take(16).hex(), unix_ms=r.int(8))
    out['ciphertext'] = r.take(r.int(4)).hex()
    return out


def verify_records(data_dir, facts):
    """3.6: decode every record payload and check that what the Python
    users did (facts) is recorded as the document says."""
    by_lsn = {}
    for rid, kind, unix_ms, payload in read_segments(data_dir):
        r = Reader(payload)
        lsn = r.int(8)
        if kind == 1:
            rec = dict(name=r.str8(), identity=r.take(r.int(2)).hex())
        elif kind == 2:
            rec = parse_entry_body(r)
            expect(rec['kind'] == 5, 'commit record: entry kind 5')
        elif kind == 3:
            rec = dict(epoch=r.int(8), **parse_entry_body(r))
            expect(rec['kind'] == 1, 'group message record: entry kind 1')
        elif kind == 4:
            rec = dict(recipient=r.int(4), **parse_entry_body(r))
            expect(rec['kind'] in (2, 3, 4), 'direct record: entry kind 2, 3 or 4')
        elif kind == 5:
            rec = dict(user=r.int(4), up_to=r.int(8))
        elif kind == 6:
            rec = dict(member=r.int(4), seq=r.int(8), group=r.take(16).hex(),
                       sender=r.int(4), count=r.int(4), through=r.int(8))
            expect(rec['count'] >= 1 and rec['seq'] <= rec['through'] < lsn,
                   f'drop record: count >= 1, seq <= through < its own lsn: {rec}')
        else:
            raise Fail(f'record kind {kind}')
        r.end()
        rec.update(record_kind=kind, lsn=lsn, record_unix_ms=unix_ms)
        by_lsn[lsn] = rec      # a later copy (higher record id) of one lsn wins
    recs = [by_lsn[k] for k in sorted(by_lsn)]
    ok(f'{len(recs)} records read: segment headers, CRC32C, ids, padding as Part 4 says')
    accounts = [x for x in recs if x['record_kind'] == 1]
    number = {x['name']: i for i, x in enumerate(accounts)}
    names = [x['name'] for x in accounts]
    for name, identity in facts['accounts'].items():
        expect(names.count(name) == 1, f'one account record for {name}')
        expect(accounts[number[name]]['identity'] == identity, f'identity of {name}')
    for name in facts['refused_names']:
        expect(name not in number, f'no account for the refused {name}')
    ok(f'account records: one per registered name with its identity '
       f'({len(facts["accounts"])} Python users), none for refused registrations')
    for m in facts['messages']:
        rec = by_lsn.get(m['seq'])
        expect(rec is not None, f'a record with lsn = receipt seq {m["seq"]}')
        want_kind = 3 if m['kind'] == 1 else 4
        expect(rec['record_kind'] == want_kind and rec['kind'] == m['kind'], 'record kind')
        for f in ('sender', 'group', 'message_id', 'unix_ms', 'ciphertext'):
            expect(rec[f] == m[f], f'record field {f}: {rec[f]} != {m[f]}')
        expect(rec['record_unix_ms'] == m['unix_ms'], 'record header unix_ms = time stored')
        if m['kind'] == 1:
            expect(rec['epoch'] == m['epoch'], 'group message record epoch')
        else:
            expect(names[rec['recipient']] == m['recipient'], 'recipient account number')
    mids = [x['message_id'] for x in recs if x['record_kind'] in (3, 4)]
    expect(len(mids) == len(set(mids)), 'each message stored once (the duplicate was not)')
    ok(f'message records: lsn = receipt seq, entry body = the deliver frame after its seq '
       f'({len(facts["messages"])} sends checked)')
    commits = [x for x in recs if x['record_kind'] == 2]
    for c in facts['commits']:
        found = [x for x in commits if x['ciphertext'] == c['commit']]
        expect(len(found) == 1, 'one commit record per accepted commit')
        x = found[0]
        expect(x['sender'] == c['signer'] and x['group'] == c['group'], 'commit sender, group')
        expect(x['record_unix_ms'] == x['unix_ms'], 'record header unix_ms = time stored')
        expect(x['message_id'] == (b'\0' * 8 + u64(c['epoch'])).hex(),
               f'commit record message id {x["message_id"]}: 8 zero bytes || epoch')
    ok(f'commit records: sender = signer, message id = 8 zero bytes || epoch '
       f'({len(facts["commits"])} commits)')
    acks = {}
    for a in facts['acks']:
        acks[a['user']] = max(acks.get(a['user'], 0), a['up_to'])
    ack_recs = [x for x in recs if x['record_kind'] == 5]
    for user, up_to in acks.items():
        mine = [x['up_to'] for x in ack_recs if x['user'] == number[user]]
        expect(mine and max(mine) == up_to, f'ack record of {user}: {mine} vs {up_to}')
    expect(all(x['up_to'] <= max(by_lsn) for x in ack_recs), 'no ack beyond assigned seqs')
    ok(f'ack records: account number and cumulative position ({len(acks)} users)')
    verify_drop_records(recs, names, facts.get('gaps', []))


def verify_drop_records(recs, names, gaps):
    """3.6 kind 6: each gap notice the Python users were sent and did not
    ack is stored as a drop record (member, seq, group, sender, count, and
    `through`: the highest seq among the dropped entries it counts)."""
    drops = [x for x in recs if x['record_kind'] == 6]
    groups = {x['group'] for x in recs if x['record_kind'] == 2}
    for d in drops:
        expect(d['member'] < len(names) and d['sender'] < len(names),
               f'drop record account numbers: {d}')
        expect(d['group'] in groups, f'drop record names a group with a commit: {d}')
    newest = {}
    for d in drops:                  # recs are in lsn order: the newest wins
        newest[(d['member'], d['seq'])] = d
    for g in gaps:
        d = newest.get((names.index(g['member']), g['seq']))
        expect(d is not None, f'a drop record for the gap notice {g}')
        expect(d['group'] == g['group'] and names[d['sender']] == g['sender']
               and d['count'] == g['count'] and d['through'] == g['through'],
               f'drop record {d} matches the notice {g}')
    ok(f'drop records: {len(gaps)} gap notices matched (member, seq, group, sender, count, '
       f'through) among {len(drops)} read')


# ---------------------------------------------------------------- main
def start_relay(binary, data_dir):
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    addr = f'127.0.0.1:{port}'
    proc = subprocess.Popen([binary, 'relay', '--listen', addr, '--data-dir', data_dir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            return proc, addr
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise Fail('relay did not start')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--server', help='relay address HOST:PORT (else start BIN relay)')
    ap.add_argument('--hermes', help='the hermes binary: interoperate with its CLI')
    ap.add_argument('--relay-key', help="the relay's Ed25519 public key (hex) to pin")
    ap.add_argument('--facts', help='write (or, with --verify-records, read) what the '
                    'Python users did, as JSON')
    ap.add_argument('--queue-cap', type=int, metavar='N',
                    help='the relay was started with a per-member queue cap of N: '
                    'run only the gap notice scenario')
    ap.add_argument('--verify-records', metavar='DATA_DIR',
                    help="only check a stopped relay's mailbox (Part 4, 3.6) against --facts")
    args = ap.parse_args()
    global PINNED_RELAY_KEY
    if args.relay_key:
        PINNED_RELAY_KEY = bytes.fromhex(args.relay_key)
    proc = data = None
    try:
        if args.verify_records:
            if not args.facts:
                ap.error('--verify-records needs --facts')
            with open(args.facts) as f:
                verify_records(args.verify_records, json.load(f))
            print(f'all {len(CHECKS)} checks passed', flush=True)
            return 0
        addr = args.server
        if not addr:
            if not args.hermes:
                ap.error('give --server or --hermes')
            data = tempfile.mkdtemp(prefix='hermes-wire-relay-')
            proc, addr = start_relay(args.hermes, data)
        check_wire_vectors()
        if args.queue_cap:
            gap_scenario(addr, args.queue_cap)
            if args.facts:
                with open(args.facts, 'w') as f:
                    json.dump(FACTS, f)
            print(f'all {len(CHECKS)} checks passed', flush=True)
            return 0
        Conn(addr).close()
        ok('hello verified (signature over "hermes hello v2\\0" || body before the challenge, ffdhe2048'
           + (', pinned relay key' if PINNED_RELAY_KEY else '') + ')')
        python_group(addr)
        if args.hermes:
            interop(addr, args.hermes)
        if args.facts:
            with open(args.facts, 'w') as f:
                json.dump(FACTS, f)
        if proc:
            proc.terminate()             # SIGTERM: a clean close (README)
            expect(proc.wait(timeout=10) == 0, 'relay exits 0 on SIGTERM')
            proc = None
            verify_records(data, FACTS)
    except (Fail, Closed, OSError, ValueError, subprocess.TimeoutExpired) as e:
        print(f'FAIL after {len(CHECKS)} checks: {type(e).__name__}: {e}', flush=True)
        return 1
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=10)
        if data:
            shutil.rmtree(data, ignore_errors=True)
    print(f'all {len(CHECKS)} checks passed', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
