//! Test support: a tiny in-process MQTT broker (a thread per connection) on
//! `127.0.0.1:0`, with optional faults, so the swarm's accounting can be
//! checked against a server whose behaviour the test controls.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::mqtt::{self, CONNECT, PINGREQ, PUBLISH, SUBSCRIBE};

/// Faults the broker injects into forwarded publishes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    /// Forward every n-th delivery twice (0: never).
    pub(crate) duplicate_every: u64,
    /// Drop every n-th delivery (0: never).
    pub(crate) drop_every: u64,
}

type Subscribers = Arc<Mutex<HashMap<Vec<u8>, Vec<Arc<Mutex<TcpStream>>>>>>;

/// Starts the broker; returns its address. Threads end when their
/// connections close.
pub(crate) fn start(faults: Faults) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let subs: Subscribers = Arc::default();
    let counter = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            let subs = Arc::clone(&subs);
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || serve(s, &subs, &counter, faults));
        }
    });
    addr
}

fn serve(mut s: TcpStream, subs: &Subscribers, counter: &AtomicU64, faults: Faults) {
    let writer = Arc::new(Mutex::new(s.try_clone().unwrap()));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Ok(Some((p, len))) = mqtt::decode_packet(&buf[at..]) {
            let pkt = &buf[at..at + len];
            let p = mqtt::Packet {
                first: p.first,
                body: p.body,
            };
            let reply: Option<Vec<u8>> = match p.kind() {
                CONNECT => Some(vec![0x20, 2, 0, 0]),
                SUBSCRIBE => {
                    let (id, topic) = mqtt::parse_subscribe(pkt, &p).unwrap();
                    subs.lock()
                        .unwrap()
                        .entry(pkt[topic].to_vec())
                        .or_default()
                        .push(Arc::clone(&writer));
                    let id = id.to_be_bytes();
                    Some(vec![0x90, 3, id[0], id[1], 0])
                }
                PUBLISH => {
                    let (topic, _) = mqtt::parse_publish(pkt, &p).unwrap();
                    let targets = subs
                        .lock()
                        .unwrap()
                        .get(&pkt[topic])
                        .cloned()
                        .unwrap_or_default();
                    for t in targets {
                        let k = counter.fetch_add(1, Ordering::Relaxed) + 1;
                        if faults.drop_every > 0 && k.is_multiple_of(faults.drop_every) {
                            continue;
                        }
                        let copies = if faults.duplicate_every > 0
                            && k.is_multiple_of(faults.duplicate_every)
                        {
                            2
                        } else {
                            1
                        };
                        let mut w = t.lock().unwrap();
                        for _ in 0..copies {
                            let _ = w.write_all(pkt);
                        }
                    }
                    None
                }
                PINGREQ => Some(vec![0xd0, 0]),
                _ => return,
            };
            if let Some(r) = reply {
                let _ = writer.lock().unwrap().write_all(&r);
            }
            at += len;
        }
        buf.drain(..at);
    }
}
