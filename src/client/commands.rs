//! The client commands behind `hermes register`, `group`, `send`, `recv`,
//! `fingerprint`, `trust`: plain options in, text on stdout out. `cli.rs`
//! turns clap options into [`CommonOptions`]; nothing here sees clap.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use zeroize::{Zeroize, Zeroizing};

use super::net::{Client, ClientConfig};
use super::session::{Change, GroupInfo, group_hex, list_groups, resolve_group};
use super::state::{InboxEntry, KdfCost};
use crate::limits::{CLIENT_PASSPHRASE_MAX_BYTES, CLIENT_RECV_QUIET};

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

/// Ctrl-C (or `Ctrl-\`) at a passphrase prompt: the terminal is restored and
/// the command stops. `main` exits 130 on it, as a shell does for SIGINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled at the passphrase prompt")]
pub struct Cancelled;

/// Reads a passphrase without echo from the terminal (`/dev/tty`).
fn prompt(text: &str) -> CmdResult<Zeroizing<String>> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| format!("no terminal to ask for the passphrase ({e}); set HERMES_PASSPHRASE or --passphrase-file"))?;
    match prompt_on(&tty, text)? {
        Some(p) => Ok(p),
        None => Err(Box::new(Cancelled)),
    }
}

/// The terminal set up for a passphrase prompt (`tcsetattr`): no echo, and
/// no signals from the keyboard, so Ctrl-C cannot kill the process while
/// echo is off (a killed prompt left the shell without echo). Instead the
/// interrupt and quit characters end the line like Enter does (they become
/// the `VEOL`/`VEOL2` line ends), and the reader treats a line ending in one
/// of them as a cancel. The line stays canonical, so Backspace and Ctrl-U
/// still edit it. The saved settings are put back when this is dropped, so
/// every way out of the prompt (a line, a cancel, an I/O error, end of
/// input, a panic unwinding) restores them.
struct PromptTerminal<'a> {
    tty: &'a std::fs::File,
    saved: rustix::termios::Termios,
    /// The bytes that cancel: the terminal's interrupt and quit characters.
    cancel: [u8; 2],
}

impl<'a> PromptTerminal<'a> {
    fn new(tty: &'a std::fs::File) -> std::io::Result<Self> {
        use rustix::termios::{
            LocalModes, OptionalActions, SpecialCodeIndex as Cc, tcgetattr, tcsetattr,
        };
        let saved = tcgetattr(tty)?;
        // A disabled character reads as 0 (`_POSIX_VDISABLE`); Ctrl-C and
        // Ctrl-\ cancel then.
        let or = |c: u8, default: u8| if c == 0 { default } else { c };
        let cancel = [
            or(saved.special_codes[Cc::VINTR], 0x03),
            or(saved.special_codes[Cc::VQUIT], 0x1c),
        ];
        let mut quiet = saved.clone();
        quiet
            .local_modes
            .remove(LocalModes::ECHO | LocalModes::ISIG);
        quiet
            .local_modes
            .insert(LocalModes::ICANON | LocalModes::IEXTEN);
        quiet.special_codes[Cc::VEOL] = cancel[0];
        quiet.special_codes[Cc::VEOL2] = cancel[1];
        // As `stty -echo` does: after the output queued so far is written.
        tcsetattr(tty, OptionalActions::Drain, &quiet)?;
        Ok(Self { tty, saved, cancel })
    }

    /// Drops what was typed and not read (the rest of a line cut short), so
    /// it does not reach the shell.
    fn discard_input(&self) {
        let _ = rustix::termios::tcflush(self.tty, rustix::termios::QueueSelector::IFlush);
    }
}

impl Drop for PromptTerminal<'_> {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            self.tty,
            rustix::termios::OptionalActions::Drain,
            &self.saved,
        );
    }
}

/// Shows `text` on the terminal `tty` and reads one line with echo off
/// (turned off before the prompt appears, so nothing typed after it shows).
/// `None` when the user cancelled with Ctrl-C or `Ctrl-\` (the terminal is
/// restored either way).
///
/// # Errors
/// Terminal I/O, a line that is not UTF-8 or longer than
/// [`CLIENT_PASSPHRASE_MAX_BYTES`].
fn prompt_on(tty: &std::fs::File, text: &str) -> std::io::Result<Option<Zeroizing<String>>> {
    // Room for the longest passphrase, so nothing grows and leaves copies
    // behind; one-byte reads keep no copy either (a terminal in canonical
    // mode hands out the line as it is read).
    let mut bytes = Zeroizing::new(Vec::with_capacity(CLIENT_PASSPHRASE_MAX_BYTES));
    let mut cancelled = false;
    {
        let term = PromptTerminal::new(tty)?;
        let mut out = tty;
        write!(out, "{text}")?;
        out.flush()?;
        let mut input = tty;
        let mut byte = [0u8; 1];
        // One more than the limit, to tell "at the limit" from "over it".
        for _ in 0..=CLIENT_PASSPHRASE_MAX_BYTES {
            match input.read(&mut byte) {
                // End of input (Ctrl-D on an empty line).
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let [b] = byte;
            if term.cancel.contains(&b) {
                cancelled = true;
                break;
            }
            if b == b'\n' {
                break;
            }
            if bytes.len() == CLIENT_PASSPHRASE_MAX_BYTES {
                term.discard_input();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("passphrase longer than {CLIENT_PASSPHRASE_MAX_BYTES} bytes"),
                ));
            }
            bytes.push(b);
        }
        byte.zeroize();
        if cancelled {
            term.discard_input();
        }
    }
    // The Enter (or Ctrl-C) the user typed was not echoed.
    let mut out = tty;
    writeln!(out)?;
    if cancelled {
        return Ok(None);
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "passphrase is not UTF-8")
    })?;
    let mut line = Zeroizing::new(String::with_capacity(text.len()));
    line.push_str(text.trim_end_matches('\r'));
    Ok(Some(line))
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

    /// A pseudo-terminal: the master side (what a terminal emulator reads
    /// and writes, non-blocking here) and the path of the slave side.
    fn pty() -> (std::fs::File, std::ffi::CString) {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        rustix::io::ioctl_fionbio(&master, true).unwrap();
        (std::fs::File::from(master), name)
    }

    fn open_slave(name: &std::ffi::CStr, access: rustix::fs::OFlags) -> std::fs::File {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            name,
            access | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        std::fs::File::from(fd)
    }

    fn echo_on(tty: &std::fs::File) -> bool {
        let t = rustix::termios::tcgetattr(tty).unwrap();
        t.local_modes.contains(rustix::termios::LocalModes::ECHO)
    }

    /// Reads the master until `out` contains `want` (bounded).
    fn read_until(master: &mut std::fs::File, out: &mut String, want: &str) {
        let mut buf = [0u8; 256];
        for _ in 0..10_000 {
            if out.contains(want) {
                return;
            }
            match master.read(&mut buf) {
                Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("reading the pty master: {e}"),
            }
        }
        panic!("{want:?} never came; got {out:?}");
    }

    /// Asks on a fresh slave of the pty `name` (on a thread) and waits
    /// until `prompt` has been shown on the master.
    fn ask(
        master: &mut std::fs::File,
        name: &std::ffi::CStr,
        screen: &mut String,
        prompt: &'static str,
    ) -> std::thread::JoinHandle<std::io::Result<Option<Zeroizing<String>>>> {
        let tty = open_slave(name, rustix::fs::OFlags::RDWR);
        let asking = std::thread::spawn(move || prompt_on(&tty, prompt));
        read_until(master, screen, prompt);
        asking
    }

    #[test]
    fn the_prompt_reads_a_line_with_echo_off_and_restores_it() {
        use rustix::fs::OFlags;
        let (mut master, name) = pty();
        let watch = open_slave(&name, OFlags::RDWR);
        assert!(echo_on(&watch));
        let mut screen = String::new();
        let asking = ask(&mut master, &name, &mut screen, "passphrase: ");
        // The prompt shows only once echo is off.
        assert!(!echo_on(&watch));
        master.write_all(b"hunter2\n").unwrap();
        let got = asking.join().unwrap().unwrap().unwrap();
        assert_eq!(got.as_str(), "hunter2");
        assert!(echo_on(&watch));
        // What the user saw: the prompt and the newline written after the
        // answer; an echo of the answer would have come before it.
        read_until(&mut master, &mut screen, "\n");
        assert_eq!(screen, "passphrase: \r\n");
    }

    fn signals_on(tty: &std::fs::File) -> bool {
        let t = rustix::termios::tcgetattr(tty).unwrap();
        t.local_modes.contains(rustix::termios::LocalModes::ISIG)
    }

    #[test]
    fn ctrl_c_at_the_prompt_cancels_and_restores_the_terminal() {
        use rustix::fs::OFlags;
        let (mut master, name) = pty();
        let watch = open_slave(&name, OFlags::RDWR);
        assert!(echo_on(&watch) && signals_on(&watch));
        let before = rustix::termios::tcgetattr(&watch).unwrap();
        let mut screen = String::new();
        let asking = ask(&mut master, &name, &mut screen, "passphrase: ");
        // While it asks, Ctrl-C is a character, not a SIGINT (which would
        // kill the process with echo still off).
        assert!(!echo_on(&watch) && !signals_on(&watch));
        // Half a passphrase, then Ctrl-C: no Enter follows, so only the
        // Ctrl-C can end the read.
        master.write_all(b"hunt\x03").unwrap();
        let got = asking.join().unwrap().unwrap();
        assert!(got.is_none(), "Ctrl-C must cancel");
        assert!(echo_on(&watch) && signals_on(&watch));
        read_until(&mut master, &mut screen, "\n");
        assert_eq!(screen, "passphrase: \r\n");
        // The terminal's own settings are back, line ends included.
        let after = rustix::termios::tcgetattr(&watch).unwrap();
        assert_eq!(after.local_modes, before.local_modes);
        for c in [
            rustix::termios::SpecialCodeIndex::VEOL,
            rustix::termios::SpecialCodeIndex::VEOL2,
        ] {
            assert_eq!(after.special_codes[c], before.special_codes[c]);
        }
    }

    #[test]
    fn ctrl_backslash_cancels_and_backspace_still_edits() {
        use rustix::fs::OFlags;
        let (mut master, name) = pty();
        let watch = open_slave(&name, OFlags::RDWR);
        let mut screen = String::new();
        let asking = ask(&mut master, &name, &mut screen, "passphrase: ");
        master.write_all(b"x\x1c").unwrap();
        assert!(asking.join().unwrap().unwrap().is_none());
        assert!(echo_on(&watch) && signals_on(&watch));

        let asking = ask(&mut master, &name, &mut screen, "again: ");
        // DEL erases the `x` (the line is still edited by the terminal).
        master.write_all(b"hunterx\x7f2\n").unwrap();
        let got = asking.join().unwrap().unwrap().unwrap();
        assert_eq!(got.as_str(), "hunter2");
        assert!(echo_on(&watch) && signals_on(&watch));
    }

    #[test]
    fn an_overlong_passphrase_is_refused_and_echo_restored() {
        use rustix::fs::OFlags;
        let (mut master, name) = pty();
        let watch = open_slave(&name, OFlags::RDWR);
        let mut screen = String::new();
        let asking = ask(&mut master, &name, &mut screen, "passphrase: ");
        let mut line = vec![b'a'; CLIENT_PASSPHRASE_MAX_BYTES + 1];
        line.push(b'\n');
        master.write_all(&line).unwrap();
        let e = asking.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("longer than"), "{e}");
        assert!(echo_on(&watch));

        // At the limit exactly, it is read.
        let asking = ask(&mut master, &name, &mut screen, "again: ");
        line.drain(..1);
        master.write_all(&line).unwrap();
        let got = asking.join().unwrap().unwrap().unwrap();
        assert_eq!(got.len(), CLIENT_PASSPHRASE_MAX_BYTES);
    }

    #[test]
    fn the_prompt_restores_echo_when_reading_fails() {
        use rustix::fs::OFlags;
        let (mut master, name) = pty();
        let watch = open_slave(&name, OFlags::RDWR);
        // Write-only: the prompt goes out (with echo off), then the read
        // fails (EBADF).
        let tty = open_slave(&name, OFlags::WRONLY);
        let e = prompt_on(&tty, "passphrase: ").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::BADF.raw_os_error())
        );
        let mut screen = String::new();
        read_until(&mut master, &mut screen, "passphrase: ");
        assert!(echo_on(&watch));
    }

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
