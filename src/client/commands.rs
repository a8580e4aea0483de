//! The client commands behind `hermes register`, `group`, `send`, `recv`,
//! `fingerprint`, `trust`: plain options in, text on stdout out. `cli.rs`
//! turns clap options into [`CommonOptions`]; nothing here sees clap.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

use super::net::{Client, ClientConfig};
use super::session::{Change, GroupInfo, group_hex, list_groups, resolve_group};
use super::state::{InboxEntry, KdfCost};
use crate::limits::CLIENT_RECV_QUIET;

/// Where passphrases come from.
#[derive(Debug, Clone)]
pub enum PassphraseSource {
    /// The value itself (from `HERMES_PASSPHRASE`).
    Value(Zeroizing<String>),
    /// The first line of a file (`--passphrase-file`).
    File(PathBuf),
    /// A no-echo prompt on the terminal.
    Prompt,
}

/// Options every client command shares.
#[derive(Debug, Clone)]
pub struct CommonOptions {
    /// `host:port` of the relay.
    pub server: String,
    /// The user.
    pub user: String,
    /// State directory root.
    pub state_root: PathBuf,
    /// Where the passphrase comes from.
    pub passphrase: PassphraseSource,
    /// KDF cost.
    pub kdf: KdfCost,
}

/// Boxed error for the command layer (printed as one line by `main`).
pub type CmdResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The default state directory: `$XDG_DATA_HOME/hermes`, else
/// `~/.local/share/hermes`, else `./hermes-state`.
#[must_use]
pub fn default_state_root() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("hermes");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/hermes");
    }
    PathBuf::from("hermes-state")
}

/// Reads a passphrase without echo from the terminal (`stty -echo` on
/// `/dev/tty`, restored afterwards).
fn prompt(text: &str) -> CmdResult<Zeroizing<String>> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| format!("no terminal to ask for the passphrase ({e}); set HERMES_PASSPHRASE or --passphrase-file"))?;
    let stty = |arg: &str, tty: &std::fs::File| {
        tty.try_clone().ok().and_then(|t| {
            std::process::Command::new("stty")
                .arg(arg)
                .stdin(t)
                .status()
                .ok()
        })
    };
    write!(tty, "{text}")?;
    tty.flush()?;
    stty("-echo", &tty);
    let mut line = Zeroizing::new(String::new());
    let r = std::io::BufReader::new(tty.try_clone()?).read_line(&mut line);
    stty("echo", &tty);
    writeln!(tty)?;
    r?;
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(line)
}

fn passphrase(src: &PassphraseSource, confirm: bool) -> CmdResult<Zeroizing<String>> {
    let p = match src {
        PassphraseSource::Value(v) => v.clone(),
        PassphraseSource::File(path) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read passphrase file {}: {e}", path.display()))?,
            );
            Zeroizing::new(text.lines().next().unwrap_or_default().to_owned())
        }
        PassphraseSource::Prompt => {
            let p = prompt("passphrase: ")?;
            if confirm {
                let again = prompt("passphrase again: ")?;
                if *again != *p {
                    return Err("the passphrases differ".into());
                }
            }
            p
        }
    };
    if p.is_empty() {
        return Err("empty passphrase".into());
    }
    Ok(p)
}

/// The passphrase of `o` (file, environment or prompt).
///
/// # Errors
/// Unreadable file, no terminal, empty passphrase.
pub fn passphrase_for(o: &CommonOptions) -> CmdResult<Zeroizing<String>> {
    passphrase(&o.passphrase, false)
}

/// The client configuration of `o`.
#[must_use]
pub fn config_for(o: &CommonOptions) -> ClientConfig {
    config(o)
}

fn config(o: &CommonOptions) -> ClientConfig {
    let mut c = ClientConfig::new(&o.server, &o.user, o.state_root.clone());
    c.kdf = o.kdf;
    c
}

fn open(o: &CommonOptions) -> CmdResult<Client<rand::rngs::ThreadRng>> {
    let p = passphrase(&o.passphrase, false)?;
    Ok(Client::open(config(o), p.as_bytes(), rand::rng())?)
}

/// `hermes register`.
///
/// # Errors
/// Any failure, as one line.
pub fn register(o: &CommonOptions) -> CmdResult {
    let p = passphrase(&o.passphrase, true)?;
    let c = Client::register(config(o), p.as_bytes(), rand::rng())?;
    println!("registered {} on {}", c.user(), o.server);
    Ok(())
}

/// What `hermes group` does.
#[derive(Debug, Clone)]
pub enum GroupCommand {
    /// Create a group.
    Create {
        /// Display name.
        name: String,
        /// Members besides me.
        members: Vec<String>,
    },
    /// Add users.
    Add {
        /// Group.
        group: String,
        /// Users.
        users: Vec<String>,
    },
    /// Remove members.
    Remove {
        /// Group.
        group: String,
        /// Users.
        users: Vec<String>,
    },
    /// Leave.
    Leave {
        /// Group.
        group: String,
    },
    /// Hand over the admin role.
    Admin {
        /// Group.
        group: String,
        /// New admin.
        user: String,
    },
    /// List my groups.
    List,
    /// List a group's members.
    Members {
        /// Group.
        group: String,
    },
}

/// Syncs with the relay if it is reachable (for read-only commands).
fn best_effort_sync<R: rand_core::CryptoRng>(c: &mut Client<R>) {
    if let Err(e) = c.receive(Duration::ZERO, CLIENT_RECV_QUIET) {
        eprintln!("hermes: showing local state only ({e})");
    }
}

fn print_group(g: &GroupInfo) {
    let closed = g
        .closed
        .as_ref()
        .map(|w| format!(" [{w}]"))
        .unwrap_or_default();
    println!(
        "{}\t{}\tadmin {}\tepoch {}\t{} members{closed}",
        g.name,
        group_hex(&g.id),
        g.admin,
        g.epoch,
        g.members.len()
    );
}

/// `hermes group ...`.
///
/// # Errors
/// Any failure, as one line.
pub fn group(o: &CommonOptions, cmd: GroupCommand) -> CmdResult {
    let mut c = open(o)?;
    match cmd {
        GroupCommand::Create { name, members } => {
            let gid = c.create_group(&name, &members)?;
            println!("created {name} ({})", group_hex(&gid));
        }
        GroupCommand::Add { group, users } => {
            for u in users {
                c.change(&group, Change::Add(u.clone()))?;
                println!("added {u} to {group}");
            }
        }
        GroupCommand::Remove { group, users } => {
            for u in users {
                c.change(&group, Change::Remove(u.clone()))?;
                println!("removed {u} from {group}");
            }
        }
        GroupCommand::Leave { group } => {
            c.change(&group, Change::Leave)?;
            println!("left {group}");
        }
        GroupCommand::Admin { group, user } => {
            c.change(&group, Change::TransferAdmin(user.clone()))?;
            println!("{user} is now the admin of {group}");
        }
        GroupCommand::List => {
            best_effort_sync(&mut c);
            for g in c.state(list_groups)? {
                print_group(&g);
            }
        }
        GroupCommand::Members { group } => {
            best_effort_sync(&mut c);
            let groups =
                c.state(|st| resolve_group(st, &group).map(|id| (id, list_groups(st))))??;
            let (id, all) = groups;
            if let Some(g) = all.iter().find(|g| g.id == id) {
                for m in &g.members {
                    let role = if *m == g.admin { "\tadmin" } else { "" };
                    println!("{m}{role}");
                }
            }
        }
    }
    Ok(())
}

/// `hermes send`: `text` or, if `None`, all of stdin.
///
/// # Errors
/// Any failure, as one line; exits 0 only after the stored receipt.
pub fn send(o: &CommonOptions, group: &str, text: Option<String>) -> CmdResult {
    let text = match text {
        Some(t) => t,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| format!("reading the message from stdin: {e}"))?;
            while s.ends_with('\n') || s.ends_with('\r') {
                s.pop();
            }
            s
        }
    };
    let mut c = open(o)?;
    c.send_text(group, &text)?;
    Ok(())
}

/// `s` safe to print on a terminal: control characters (escape sequences
/// that could rewrite the screen or fake another sender's line, carriage
/// returns, newlines) are shown as `\u{..}` escapes. Message text is
/// attacker-chosen; the JSON output escapes by itself.
#[must_use]
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One inbox entry as a line of text (control characters escaped).
#[must_use]
pub fn format_entry(e: &InboxEntry) -> String {
    let (g, who, text) = (
        printable(&e.group_name),
        printable(&e.sender),
        printable(&e.text),
    );
    if e.notice {
        if g.is_empty() {
            format!("* {text}")
        } else {
            format!("[{g}] * {text}")
        }
    } else {
        format!("[{g}] {who}: {text}")
    }
}

/// One inbox entry as a JSON object.
#[must_use]
pub fn json_entry(e: &InboxEntry) -> String {
    serde_json::json!({
        "group": e.group_name,
        "group_id": group_hex(&e.group_id),
        "sender": e.sender,
        "sent_at": e.sent_at_ms,
        "text": e.text,
        "id": group_hex(&e.id),
        "notice": e.notice,
    })
    .to_string()
}

/// `hermes recv`.
///
/// # Errors
/// Any failure, as one line.
pub fn recv(o: &CommonOptions, wait: Duration, json: bool) -> CmdResult {
    let mut c = open(o)?;
    c.receive(wait, CLIENT_RECV_QUIET.max(Duration::ZERO))?;
    let (entries, dropped) = c.take_inbox()?;
    let mut out = std::io::stdout().lock();
    if dropped > 0 {
        eprintln!("hermes: {dropped} older inbox entries were dropped (inbox full)");
    }
    for e in &entries {
        let line = if json { json_entry(e) } else { format_entry(e) };
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `hermes fingerprint USER`.
///
/// # Errors
/// Any failure, as one line.
pub fn fingerprint(o: &CommonOptions, user: &str) -> CmdResult {
    let mut c = open(o)?;
    let (pinned, changed) = c.fingerprint(user)?;
    println!("{pinned}");
    if let Some(ch) = changed {
        println!("warning: {user} now shows another identity; its safety number would be:");
        println!("{ch}");
        println!("compare it out of band, then run `hermes trust {user}`");
    }
    Ok(())
}

/// `hermes trust USER`.
///
/// # Errors
/// Any failure, as one line.
pub fn trust(o: &CommonOptions, user: &str) -> CmdResult {
    let mut c = open(o)?;
    if c.trust(user)? {
        println!("now trusting the new identity of {user}");
        Ok(())
    } else {
        Err(format!("no changed identity pending for {user}").into())
    }
}

/// True if stdin is a terminal (chat prompts only then).
#[must_use]
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str, notice: bool) -> InboxEntry {
        InboxEntry {
            group_id: [1; 16],
            group_name: "crew".into(),
            sender: "zoë".into(),
            sent_at_ms: 5,
            text: text.into(),
            id: [2; 16],
            notice,
        }
    }

    #[test]
    fn lines_escape_terminal_control_characters() {
        let e = entry("hi\u{1b}[2J\rbob: fake\nline", false);
        let line = format_entry(&e);
        assert_eq!(line, "[crew] zoë: hi\\u{1b}[2J\\u{d}bob: fake\\u{a}line");
        assert!(!line.chars().any(char::is_control));
        assert_eq!(
            format_entry(&entry("bob has left crew", true)),
            "[crew] * bob has left crew"
        );
    }

    #[test]
    fn json_lines_carry_the_documented_fields() {
        let v: serde_json::Value =
            serde_json::from_str(&json_entry(&entry("a\nb", false))).unwrap();
        assert_eq!(v["group"], "crew");
        assert_eq!(v["sender"], "zoë");
        assert_eq!(v["sent_at"], 5);
        assert_eq!(v["text"], "a\nb");
        assert_eq!(v["id"], "02".repeat(16));
        assert_eq!(v["notice"], false);
    }
}
