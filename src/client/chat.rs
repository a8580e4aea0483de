//! `hermes chat`: the interactive terminal client.
//!
//! One mio loop sleeps until something happens: the relay's socket turns
//! readable (pushes: [`Client::poll_ready`]), a typed line arrives (a
//! thread reads stdin lines into a channel and wakes the loop with a
//! [`mio::Waker`]), the next ping is due, or a reconnect attempt is. So a
//! typed line goes out at once, incoming messages appear while the user
//! types, and an idle chat does not wake up. A broken connection is
//! retried with backoff; lines typed meanwhile wait in a queue and are
//! sent, encrypted, once the client is connected and its keys are out.

use std::io::{self, BufRead, Write};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use rand_core::CryptoRng;

use super::commands::{CmdResult, CommonOptions};
use super::net::{Client, ClientError};
use super::session::{Change, list_groups};
use super::state::InboxEntry;
use crate::limits::{CLIENT_BACKOFF_MAX, CLIENT_BACKOFF_MIN};

const HELP: &str = "\
commands:
  /create NAME [USER ...]   create a group (you are its admin) and switch to it
  /add USER ...             add users to the current group (admin)
  /remove USER ...          remove members from the current group (admin)
  /leave                    leave the current group
  /groups                   list your groups
  /members                  list the current group's members
  /switch GROUP             talk in another group
  /fingerprint USER         the safety number to compare with USER
  /help                     this text
  /quit                     leave the chat
anything else is sent to the current group";

/// One line to show for an inbox entry: `name: text` in the current
/// group, `[group] name: text` elsewhere, notices as they are.
#[must_use]
pub fn chat_line(e: &InboxEntry, current: Option<&str>) -> String {
    use super::commands::printable;
    let here = current == Some(e.group_name.as_str());
    let (g, who, text) = (
        printable(&e.group_name),
        printable(&e.sender),
        printable(&e.text),
    );
    match (e.notice, here || e.group_name.is_empty()) {
        (true, _) => text,
        (false, true) => format!("{who}: {text}"),
        (false, false) => format!("[{g}] {who}: {text}"),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Input {
    Line(String),
    Eof,
}

/// The stdin thread's wake-ups.
const KEYBOARD: Token = Token(0);
/// The relay connection's readability.
const RELAY: Token = Token(1);

/// Reads `input` line by line on a thread, sending each line (then
/// [`Input::Eof`]) to `tx` and waking the loop after each.
fn spawn_reader(
    input: impl BufRead + Send + 'static,
    tx: mpsc::Sender<Input>,
    waker: Arc<Waker>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("chat-stdin".into())
        .spawn(move || {
            for line in input.lines() {
                let Ok(l) = line else { break };
                if tx.send(Input::Line(l)).is_err() {
                    return;
                }
                let _ = waker.wake();
            }
            let _ = tx.send(Input::Eof);
            let _ = waker.wake();
        })
}

/// The loop's sleep: a mio poll on the relay socket and the stdin thread's
/// waker.
struct Sleeper {
    poll: Poll,
    events: Events,
    /// The connection (by [`Client::connection_fd`] number) registered
    /// under [`RELAY`]. A closed socket leaves the epoll set by itself.
    watching: Option<u64>,
    /// Kept here too: the last `Waker` dropped closes its eventfd, and a
    /// wake-up not yet collected would go with it (the reader thread drops
    /// its copy right after waking the loop for end of input).
    waker: Arc<Waker>,
}

impl Sleeper {
    fn new() -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), KEYBOARD)?);
        Ok(Self {
            poll,
            events: Events::with_capacity(8),
            watching: None,
            waker,
        })
    }

    /// The waker for the keyboard thread.
    fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Registers the client's connection if it is not the one registered.
    fn watch<R: CryptoRng>(&mut self, client: &Client<R>) -> io::Result<()> {
        let Some((number, fd)) = client.connection_fd() else {
            return Ok(());
        };
        if self.watching == Some(number) {
            return Ok(());
        }
        let registry = self.poll.registry();
        let mut source = SourceFd(&fd);
        match registry.register(&mut source, RELAY, Interest::READABLE) {
            // The descriptor number is still in the set (not closed yet).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                registry.reregister(&mut source, RELAY, Interest::READABLE)?;
            }
            r => r?,
        }
        self.watching = Some(number);
        Ok(())
    }

    /// Sleeps until the relay socket or the keyboard has something, or
    /// `timeout` passes (`None`: no timeout). True if the keyboard's waker
    /// was among the wake-ups (the loop looks at the keyboard either way).
    fn sleep(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(e),
        }
        Ok(self.events.iter().any(|ev| ev.token() == KEYBOARD))
    }
}

struct Chat<R: CryptoRng> {
    client: Client<R>,
    current: Option<String>,
    maybe_queued: bool,
    out: std::io::Stdout,
}

impl<R: CryptoRng> Chat<R> {
    fn say(&mut self, line: &str) {
        let mut o = self.out.lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    }

    fn show_inbox(&mut self) -> Result<(), ClientError> {
        let (entries, dropped) = self.client.take_inbox()?;
        if dropped > 0 {
            self.say(&format!("({dropped} older lines were dropped: inbox full)"));
        }
        for e in entries {
            let line = chat_line(&e, self.current.as_deref());
            self.say(&line);
        }
        Ok(())
    }

    /// Sends the queued lines (the outbox in the encrypted state); stops at
    /// the first connection failure, leaving the rest queued.
    fn flush_queue(&mut self) -> Result<(), ClientError> {
        self.maybe_queued = true;
        let sent = self.client.flush_outbox()?;
        self.maybe_queued = false;
        let me = self.client.user().to_owned();
        for line in sent {
            let text = match line {
                Ok((group, text)) if self.current.as_deref() == Some(group.as_str()) => {
                    format!("{me}: {text}")
                }
                Ok((group, text)) => format!("[{group}] {me}: {text}"),
                Err(why) => why,
            };
            self.say(&text);
        }
        Ok(())
    }

    /// True while lines may be waiting in the outbox (cheap: an in-memory
    /// flag, set when a line is queued or a flush fails).
    fn queued(&self) -> bool {
        self.maybe_queued
    }

    fn current_or_complain(&mut self) -> Option<String> {
        if self.current.is_none() {
            self.say("no current group: /create one or /switch to one (see /groups)");
        }
        self.current.clone()
    }

    /// Handles one typed line; false on /quit.
    fn command(&mut self, line: &str) -> bool {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return true; // an empty line is never sent
        }
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let args: Vec<String> = words.map(str::to_owned).collect();
        let result: Result<(), ClientError> = match first {
            "/quit" | "/exit" => return false,
            "/help" => {
                self.say(HELP);
                Ok(())
            }
            "/create" => match args.split_first() {
                Some((name, members)) => self.client.create_group(name, members).map(|_| {
                    self.current = Some(name.clone());
                    self.say(&format!("created {name}; now talking in {name}"));
                }),
                None => {
                    self.say("usage: /create NAME [USER ...]");
                    Ok(())
                }
            },
            "/add" | "/remove" => {
                if let Some(g) = self.current_or_complain() {
                    let mut r = Ok(());
                    for u in &args {
                        let change = if first == "/add" {
                            Change::Add(u.clone())
                        } else {
                            Change::Remove(u.clone())
                        };
                        r = self.client.change(&g, change);
                        if r.is_err() {
                            break;
                        }
                    }
                    r
                } else {
                    Ok(())
                }
            }
            "/leave" => match self.current_or_complain() {
                Some(g) => self.client.change(&g, Change::Leave).map(|()| {
                    self.current = None;
                }),
                None => Ok(()),
            },
            "/groups" => self.client.state(list_groups).map(|gs| {
                for g in gs {
                    let mark = if self.current.as_deref() == Some(g.name.as_str()) {
                        "*"
                    } else {
                        " "
                    };
                    let closed = g.closed.map(|w| format!(" ({w})")).unwrap_or_default();
                    self.say(&format!("{mark} {} ({} members, admin {}){closed}", g.name, g.members.len(), g.admin));
                }
            }),
            "/members" => match self.current_or_complain() {
                Some(g) => self.client.state(list_groups).map(|gs| {
                    if let Some(info) = gs.into_iter().find(|i| i.name == g) {
                        for m in info.members {
                            let admin = if m == info.admin { " (admin)" } else { "" };
                            self.say(&format!("  {m}{admin}"));
                        }
                    }
                }),
                None => Ok(()),
            },
            "/switch" => match args.first() {
                Some(g) => {
                    let known = self.client.state(|st| super::session::resolve_group(st, g).is_ok());
                    match known {
                        Ok(true) => {
                            self.current = Some(g.clone());
                            self.say(&format!("now talking in {g}"));
                            Ok(())
                        }
                        Ok(false) => {
                            self.say(&format!("no group {g} (see /groups)"));
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                None => {
                    self.say("usage: /switch GROUP");
                    Ok(())
                }
            },
            "/fingerprint" => match args.first() {
                Some(u) => self.client.fingerprint(u).map(|(n, changed)| {
                    self.say(&format!("safety number with {u}: {n}"));
                    if let Some(c) = changed {
                        self.say(&format!("warning: {u} now shows another identity ({c}); check it, then `hermes trust {u}`"));
                    }
                }),
                None => {
                    self.say("usage: /fingerprint USER");
                    Ok(())
                }
            },
            _ if first.starts_with('/') => {
                self.say(&format!("unknown command {first} (see /help)"));
                Ok(())
            }
            _ => {
                if let Some(g) = self.current_or_complain() {
                    match self.client.queue_text(&g, line) {
                        Ok(()) => {
                            if let Err(e) = self.flush_queue() {
                                self.say(&format!("(queued until the relay is back: {e})"));
                                self.client.disconnect();
                            }
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    Ok(())
                }
            }
        };
        if let Err(e) = result {
            self.say(&format!("error: {e}"));
        }
        let _ = self.show_inbox();
        true
    }
}

/// Runs `hermes chat` until `/quit` or end of input.
///
/// # Errors
/// Only start-up failures (state, passphrase); connection trouble is
/// shown and retried.
pub fn run(o: &CommonOptions) -> CmdResult {
    let p = super::commands::passphrase_for(o)?;
    let mut config = super::commands::config_for(o);
    config.connect_attempts = 1;
    let client = Client::open(config, p.as_bytes(), rand::rng())?;
    let mut sleeper = Sleeper::new()?;
    let (tx, rx) = mpsc::channel();
    spawn_reader(io::BufReader::new(io::stdin()), tx, sleeper.waker())?;
    let mut chat = Chat {
        client,
        current: None,
        maybe_queued: true, // lines left queued by an earlier run
        out: std::io::stdout(),
    };
    let groups = chat.client.state(list_groups)?;
    chat.current = groups
        .iter()
        .find(|g| g.closed.is_none())
        .map(|g| g.name.clone());
    chat.say(&format!(
        "hermes chat as {}{} — /help for commands",
        chat.client.user(),
        chat.current
            .as_ref()
            .map(|g| format!(", talking in {g}"))
            .unwrap_or_default()
    ));
    let mut backoff = CLIENT_BACKOFF_MIN;
    let mut retry_at: Option<Instant> = None;
    let mut was_down = false;
    let mut eof = false;
    loop {
        // 1. The relay: whatever it sent (and what earlier requests
        // buffered), reconnecting first when the backoff allows.
        let mut more = false;
        if chat.client.is_connected() || retry_at.is_none_or(|t| Instant::now() >= t) {
            match chat.client.poll_ready() {
                Ok(ready) => {
                    if was_down {
                        chat.say("(reconnected)");
                        was_down = false;
                    }
                    backoff = CLIENT_BACKOFF_MIN;
                    retry_at = None;
                    more = ready.more;
                    if ready.handled > 0 {
                        let _ = chat.show_inbox();
                    }
                    if chat.queued() && chat.flush_queue().is_err() {
                        chat.client.disconnect();
                    }
                }
                Err(e) => {
                    if !was_down {
                        chat.say(&format!("(connection lost: {e}; retrying)"));
                        was_down = true;
                    }
                    chat.client.disconnect();
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(CLIENT_BACKOFF_MAX);
                }
            }
        }
        // 2. Sleep until the relay or the keyboard has something, or the
        // next ping or reconnect attempt is due.
        sleeper.watch(&chat.client)?;
        let wake_at = match retry_at {
            Some(t) if !chat.client.is_connected() => t,
            _ => chat.client.next_ping(),
        };
        let timeout = if more {
            Duration::ZERO
        } else {
            wake_at.saturating_duration_since(Instant::now())
        };
        sleeper.sleep(Some(timeout))?;
        // 3. The keyboard.
        loop {
            match rx.try_recv() {
                Ok(Input::Line(l)) => {
                    if !chat.command(&l) {
                        return Ok(());
                    }
                }
                Ok(Input::Eof) => {
                    eof = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if eof {
            // Piped input ended: give queued lines a last chance, then stop.
            if chat.queued() {
                let _ = chat.flush_queue();
            }
            let _ = chat.client.poll(Duration::from_millis(200));
            let _ = chat.show_inbox();
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_line_wakes_the_sleeping_loop() {
        let mut sleeper = Sleeper::new().unwrap();
        let (tx, rx) = mpsc::channel();
        let (keyboard, mut typing) = io::pipe().unwrap();
        let reader = spawn_reader(io::BufReader::new(keyboard), tx, sleeper.waker()).unwrap();
        // Nothing typed: nothing wakes the loop.
        assert!(!sleeper.sleep(Some(Duration::ZERO)).unwrap());
        assert!(rx.try_recv().is_err());
        typing.write_all(b"hello\n").unwrap();
        // Nothing but the reader's waker can end this sleep before its
        // minute is up (and `true` says the waker did), with the line
        // there when it does.
        let a_minute = Some(Duration::from_secs(60));
        assert!(sleeper.sleep(a_minute).unwrap());
        assert_eq!(rx.try_recv(), Ok(Input::Line("hello".into())));
        // End of input wakes it too, even after the reader has finished
        // (and dropped its waker) before the loop looked.
        drop(typing);
        reader.join().unwrap();
        assert!(sleeper.sleep(a_minute).unwrap());
        assert_eq!(rx.try_recv(), Ok(Input::Eof));
    }
}
