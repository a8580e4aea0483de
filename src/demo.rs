//! `hermes demo`: a relay on a free loopback port in a temporary
//! directory, three users, one of them offline when the group is created,
//! a conversation, a removal with re-keying; then what each user read
//! beside what the relay stored (ciphertext only).
//!
//! A shell like `cli.rs`: it is the one place that starts a relay and
//! clients in one process, so it imports both (the client itself never
//! imports the relay).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::net::{Client, ClientConfig, Receipt};
use crate::client::session::Change;
use crate::client::state::KdfCost;
use crate::relay::{ServerConfig, spawn_relay};

type DemoResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Passphrase of the demo's throwaway users.
const DEMO_PASSPHRASE: &[u8] = b"demo passphrase";

struct User {
    name: &'static str,
    client: Option<Client<rand::rngs::ThreadRng>>,
    read: Vec<String>,
}

fn cfg(addr: &str, name: &str, root: &Path) -> ClientConfig {
    let mut c = ClientConfig::new(addr, name, root.to_path_buf());
    // Throwaway users: a cheap passphrase hash keeps the demo quick.
    c.kdf = KdfCost::insecure_for_tests(1_000);
    c
}

impl User {
    fn client(&mut self) -> DemoResult<&mut Client<rand::rngs::ThreadRng>> {
        self.client
            .as_mut()
            .ok_or_else(|| format!("{} is offline", self.name).into())
    }

    fn read(&mut self) -> DemoResult {
        let c = self.client()?;
        c.receive(Duration::ZERO, Duration::from_millis(300))?;
        let (entries, _) = c.take_inbox()?;
        for e in entries {
            let line = crate::client::commands::format_entry(&e);
            println!("  {} reads: {line}", self.name);
            self.read.push(line);
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// All bytes of the relay's files under `dir` (recursively).
fn relay_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.extend_from_slice(&b);
            }
        }
    }
    out
}

/// Runs the demo in a fresh temporary directory (removed afterwards unless
/// `keep`).
///
/// # Errors
/// Any step failing, or a plaintext found in the relay's files, or a user
/// reading what it should not.
pub fn run(keep: bool) -> DemoResult {
    let mut nonce = [0u8; 8];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut nonce);
    let dir = std::env::temp_dir().join(format!(
        "hermes-demo-{}-{}",
        std::process::id(),
        u64::from_be_bytes(nonce)
    ));
    let result = demo(&dir);
    if keep {
        println!("(files kept in {})", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn demo(dir: &Path) -> DemoResult {
    let relay_dir = dir.join("relay");
    let clients: PathBuf = dir.join("clients");
    let mut config = ServerConfig::ephemeral_in(&relay_dir);
    config.core.registrations_per_minute = 10_000;
    let relay = spawn_relay(config)?;
    let addr = relay.addr().to_string();
    println!(
        "relay listening on {addr}, mailbox in {}",
        relay_dir.display()
    );
    println!("(demo users use a cheap passphrase hash; real users get 600,000 PBKDF2 rounds)");

    let mut users = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let c = Client::register(cfg(&addr, name, &clients), DEMO_PASSPHRASE, rand::rng())?;
        println!("registered {name}");
        users.push(User {
            name,
            client: Some(c),
            read: Vec::new(),
        });
    }
    let [alice, bob, carol] = users.as_mut_slice() else {
        return Err("three users expected".into());
    };
    carol.client = None;
    println!("carol goes offline");

    let mut sent: Vec<(String, String, Receipt)> = Vec::new();
    let mut say = |u: &mut User, text: &str| -> DemoResult {
        let r = u.client()?.send_text("crew", text)?;
        println!("{} -> crew: {text}", u.name);
        sent.push((u.name.to_owned(), text.to_owned(), r));
        Ok(())
    };

    alice
        .client()?
        .create_group("crew", &["bob".into(), "carol".into()])?;
    println!(
        "alice created crew with bob and carol (carol is offline: her keys wait in the mailbox)"
    );
    say(alice, "hello crew, zoë says hi")?;
    bob.read()?;
    say(bob, "hi alice")?;
    for i in 1..=3 {
        say(alice, &format!("back-to-back message {i}"))?;
    }
    alice.read()?;
    bob.read()?;

    carol.client = Some(Client::open(
        cfg(&addr, "carol", &clients),
        DEMO_PASSPHRASE,
        rand::rng(),
    )?);
    println!("carol comes online");
    carol.read()?;
    say(carol, "sorry, I was offline")?;
    alice.read()?;
    bob.read()?;

    alice
        .client()?
        .change("crew", Change::Remove("bob".into()))?;
    println!("alice removed bob: alice and carol start fresh sender keys");
    say(alice, "bob is gone; new keys from here on")?;
    carol.read()?;
    bob.read()?;
    alice.read()?;

    println!();
    println!("== what each user read ==");
    for u in [&*alice, &*bob, &*carol] {
        println!("{}:", u.name);
        for l in &u.read {
            println!("    {l}");
        }
    }

    relay.shutdown();
    relay.join()?;
    let stored = relay_bytes(&relay_dir);
    println!();
    println!(
        "== what the relay stored ({} bytes of mailbox files) ==",
        stored.len()
    );
    let mut leaked = Vec::new();
    for (who, text, r) in &sent {
        // The stored entry: message id (16), unix_ms (8), u32 length,
        // then the group message: envelope (version, u16 header length,
        // header, 16-byte nonce, ciphertext, EAX tag, HMAC), signature.
        let excerpt = find(&stored, &r.message_id)
            .and_then(|i| stored.get(i + 28..))
            .and_then(|env| {
                let hl = usize::from(u16::from_be_bytes([*env.get(1)?, *env.get(2)?]));
                env.get(3 + hl + 16..3 + hl + 16 + text.len())
            })
            .map(hex)
            .unwrap_or_else(|| "(not found)".into());
        let plain = find(&stored, text.as_bytes()).is_some();
        println!("{who}: {text:?}");
        println!(
            "    relay has message {} (seq {}); where the text would be: {excerpt}\n    plaintext anywhere in the relay's files: {}",
            crate::client::session::group_hex(&r.message_id),
            r.seq,
            if plain { "YES" } else { "no" }
        );
        if plain {
            leaked.push(text.clone());
        }
    }

    // The demo checks itself.
    let carol_read = |t: &str| carol.read.iter().any(|l| l.ends_with(t));
    if !carol_read("hello crew, zoë says hi") || !carol_read("bob is gone; new keys from here on")
    {
        return Err("carol did not read everything".into());
    }
    if bob.read.iter().any(|l| l.contains("bob is gone")) {
        return Err("bob read a message sent after his removal".into());
    }
    if !leaked.is_empty() {
        return Err(format!("plaintext found in the relay's files: {leaked:?}").into());
    }
    println!();
    println!(
        "ok: everyone read what they should, bob nothing after his removal, and the relay holds ciphertext only"
    );
    Ok(())
}
