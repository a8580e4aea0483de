#!/usr/bin/env python3
"""An independent implementation of PROTOCOL.md Part 1, written from the
document alone with Python's hashlib/hmac and pyca `cryptography` (AES,
CMAC, Ed25519): it recomputes every worked vector printed in PROTOCOL.md.
Not part of `cargo test` (it needs Python and `cryptography`); run it with
`python3 tests/independent/protocol_part1.py` after changing Part 1."""
import os
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
import re, hashlib, hmac, json
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
txt=open(os.path.join(ROOT,'PROTOCOL.md')).read()
V={}
for m in re.finditer(r'```vector (\S+)\n(.*?)```', txt, re.S):
    f={}; last=None
    for line in m.group(2).splitlines():
        if line.startswith(' '): f[last]+=line.strip()
        elif ':' in line:
            k,v=line.split(':',1); f[k.strip()]=v.strip(); last=k.strip()
    V[m.group(1)]=f
H=bytes.fromhex
d=json.load(open(os.path.join(ROOT,'tests/vectors/rfc7919_ffdhe.json')))
p2048=int(d['groups']['ffdhe2048']['p'],16); p3072=int(d['groups']['ffdhe3072']['p'],16)
def be(x,n): return x.to_bytes(n,'big')
def info(label, items): 
    out=len(label).to_bytes(2,'big')+label
    for i in items: out+=len(i).to_bytes(2,'big')+i
    return out
def hkdf(ikm, salt, inf, L):
    prk=hmac.new(salt or b'\0'*32, ikm, 'sha256').digest()
    t=b''; okm=b''; i=1
    while len(okm)<L:
        t=hmac.new(prk,t+inf+bytes([i]),'sha256').digest(); okm+=t; i+=1
    return prk, okm[:L]
v=V['dh-ffdhe2048']; xa=int(v['seed_a'],16); xb=int(v['seed_b'],16)
ya=pow(2,xa,p2048); yb=pow(2,xb,p2048); z=pow(yb,xa,p2048)
assert be(ya,256).hex()==v['y_a'] and be(yb,256).hex()==v['y_b'] and be(z,256).hex()==v['z'] and pow(ya,xb,p2048)==z
v=V['dh-ffdhe3072-exponent']; inf=info(b'hermes/v1/dh-exponent/ffdhe3072',[]); assert inf.hex()==v['info']
_,x=hkdf(H(v['seed']),b'',inf,40); assert x.hex()==v['x']; assert be(pow(2,int.from_bytes(x,'big'),p3072),384).hex()==v['y']
v=V['channel-keys']; inf=info(b'hermes/v1/channel',[b'alice',b'bob']); assert inf.hex()==v['info']
prk,okm=hkdf(be(z,256),b'',inf,48); assert prk.hex()==v['prk'] and okm.hex()==v['okm'] and okm[:16].hex()==v['enc'] and okm[16:].hex()==v['mac']
_,okm2=hkdf(be(z,256),b'',info(b'hermes/v1/channel',[b'bob',b'alice']),48); assert okm2[:16].hex()==v['enc_reverse'] and okm2[16:].hex()==v['mac_reverse']
enc,mac=okm[:16],okm[16:]
v=V['passphrase']; salt=H(v['salt'])
assert (b'\x01'+(600000).to_bytes(4,'big')+salt).hex()==v['params']
master=hashlib.pbkdf2_hmac('sha256',b'correct horse battery staple',salt,600000,32); assert master.hex()==v['master']
_,ok=hkdf(master,b'',info(b'hermes/v1/passphrase',[]),48); assert ok[:16].hex()==v['enc'] and ok[16:].hex()==v['mac']
# EAX from the paper with AES-128
def omac(k,t,data):
    c=CMAC(algorithms.AES(k)); c.update(b'\0'*15+bytes([t])+data); return c.finalize()
def eax_enc(k,n,h,m):
    N=omac(k,0,n); Hh=omac(k,1,h)
    e=Cipher(algorithms.AES(k),modes.CTR(N)).encryptor(); C=e.update(m)+e.finalize()
    Cm=omac(k,2,C); tag=bytes(a^b^c for a,b,c in zip(N,Hh,Cm)); return C,tag
v=V['envelope']; nonce=H(v['nonce'])
C,tag=eax_enc(enc,nonce,b'hdr',b'attack at dawn'); assert C.hex()==v['ciphertext'] and tag.hex()==v['eax_tag']
body=b'\x01'+(3).to_bytes(2,'big')+b'hdr'+nonce+C+tag; hm=hmac.new(mac,body,'sha256').digest()
assert hm.hex()==v['hmac'] and (body+hm).hex()==v['sealed']
v=V['identity']; sk=Ed25519PrivateKey.from_private_bytes(H(v['ed25519_seed']))
pk=sk.public_key().public_bytes(serialization.Encoding.Raw,serialization.PublicFormat.Raw); assert pk.hex()==v['ed25519_public']
msg=b'hermes/v1/dh-certificate\x00'+b'\x01'+be(ya,256); assert msg[:-256].hex()==v['certificate_message_prefix']
cert=sk.sign(msg); assert cert.hex()==v['certificate']
assert (b'\x01'+pk+b'\x01'+be(ya,256)+cert).hex()==v['public_identity']
assert (b'\x01'+H(v['ed25519_seed'])+b'\x01'+be(xa,32)).hex()==v['secret_identity']
v=V['safety-number']
def half(name,key):
    h=hashlib.sha512(b'\0\0'+key+name).digest(); h0=h
    for _ in range(5200): h=hashlib.sha512(h+key).digest()
    return h0,''.join('%05d'%(int.from_bytes(h[i:i+5],'big')%100000) for i in range(0,30,5))
h0,ha=half(b'alice',pk); _,hb=half(b'bob',H(v['key_b']))
assert h0.hex()==v['h0_a'] and '"%s"'%ha==v['half_a'] and '"%s"'%hb==v['half_b']
s=''.join(sorted([ha,hb])); assert '"%s"'%' '.join(s[i:i+5] for i in range(0,60,5))==v['safety_number']
print('independent python implementation agrees with all', len(V), 'vectors')
