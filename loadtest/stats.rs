//! Accounting: the stamp every payload carries, the shared counters, the
//! per-receiver exactly-once check, the closed-loop window, latency
//! histograms and the report (one line a second, a final one, JSON).
//!
//! Counting rules (the same on every target):
//! - `sent`: messages written by senders during the run.
//! - `expected_deliveries`: every sent message times the number of *other*
//!   members of its group. A copy a member receives of its own message (MQTT
//!   and Redis echo a publish to the publisher's own subscription) is counted
//!   as `self_echo`, not as a delivery.
//! - `delivered`: first receipts of (sender, sequence) at a member.
//!   `duplicates`: further receipts of an already-received sequence.
//!   `gaps`: sequences skipped over when a later one arrived first (lost, or
//!   reordered). `missing = expected_deliveries - delivered` at the end.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use hdrhistogram::Histogram;

/// Bytes at the front of every payload: sender index (u32), sequence (u64),
/// send time in nanoseconds since the swarm's start instant (u64), all
/// little-endian. The rest of the payload is filler.
pub(crate) const STAMP_LEN: usize = 20;

/// The sender's identity, sequence and send time embedded in a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Global member index of the sender.
    pub(crate) sender: u32,
    /// The sender's message counter, from 0.
    pub(crate) seq: u64,
    /// Send time, nanoseconds since the swarm's base instant.
    pub(crate) sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp over the first [`STAMP_LEN`] bytes; false if the
    /// payload is shorter.
    pub(crate) fn write(&self, payload: &mut [u8]) -> bool {
        let Some(head) = payload.get_mut(..STAMP_LEN) else {
            return false;
        };
        let (a, rest) = head.split_at_mut(4);
        let (b, c) = rest.split_at_mut(8);
        a.copy_from_slice(&self.sender.to_le_bytes());
        b.copy_from_slice(&self.seq.to_le_bytes());
        c.copy_from_slice(&self.sent_ns.to_le_bytes());
        true
    }

    /// Reads the stamp; `None` if the payload is shorter than [`STAMP_LEN`].
    pub(crate) fn read(payload: &[u8]) -> Option<Stamp> {
        let sender = u32::from_le_bytes(payload.get(0..4)?.try_into().ok()?);
        let seq = u64::from_le_bytes(payload.get(4..12)?.try_into().ok()?);
        let sent_ns = u64::from_le_bytes(payload.get(12..20)?.try_into().ok()?);
        Some(Stamp {
            sender,
            seq,
            sent_ns,
        })
    }
}

/// What went wrong, counted by kind in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// A connect attempt failed (refused, reset during connect).
    Connect,
    /// Every loopback source address ran out of ephemeral ports.
    SourceAddrs,
    /// The swarm hit its open-file limit (`EMFILE`/`ENFILE`).
    FileLimit,
    /// The server closed a connection.
    Closed,
    /// A read or write failed.
    Io,
    /// The server sent bytes that do not parse, or an unexpected reply.
    Protocol,
    /// The server answered with an error (refused login, subscribe, ...).
    ServerError,
    /// A connection was not ready before the connect deadline.
    Timeout,
    /// A payload whose stamp is malformed or names a sender outside the
    /// receiver's group.
    Corrupt,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub(crate) const ALL: [ErrorKind; 9] = [
        ErrorKind::Connect,
        ErrorKind::SourceAddrs,
        ErrorKind::FileLimit,
        ErrorKind::Closed,
        ErrorKind::Io,
        ErrorKind::Protocol,
        ErrorKind::ServerError,
        ErrorKind::Timeout,
        ErrorKind::Corrupt,
    ];

    /// The name used in reports and JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::SourceAddrs => "source_addrs",
            ErrorKind::FileLimit => "file_limit",
            ErrorKind::Closed => "closed",
            ErrorKind::Io => "io",
            ErrorKind::Protocol => "protocol",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Corrupt => "corrupt",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters a worker accumulates locally and adds to [`Counters`] in batches
/// (so two threads do not fight over one cache line per delivery).
#[derive(Debug, Default, Clone)]
pub(crate) struct LocalCounts {
    /// TCP connections established (cumulative).
    pub(crate) connected: u64,
    /// Connections closed after being established (cumulative).
    pub(crate) closed: u64,
    /// Members that never became ready (connect or handshake failed).
    pub(crate) failed: u64,
    pub(crate) ready: u64,
    pub(crate) sent: u64,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) duplicates: u64,
    pub(crate) gaps: u64,
    pub(crate) self_echo: u64,
    pub(crate) pongs: u64,
    pub(crate) errors: [u64; ErrorKind::ALL.len()],
}

impl LocalCounts {
    /// Counts one error.
    pub(crate) fn error(&mut self, kind: ErrorKind) {
        if let Some(e) = self.errors.get_mut(kind.index()) {
            *e += 1;
        }
    }
}

/// The swarm-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    connected: AtomicU64,
    closed: AtomicU64,
    failed: AtomicU64,
    ready: AtomicU64,
    sent: AtomicU64,
    expected: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    self_echo: AtomicU64,
    pongs: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
}

impl Counters {
    /// Adds a worker's batch and zeroes it.
    pub(crate) fn absorb(&self, l: &mut LocalCounts) {
        let add = |a: &AtomicU64, v: &mut u64| {
            if *v != 0 {
                a.fetch_add(*v, Ordering::Relaxed);
                *v = 0;
            }
        };
        add(&self.connected, &mut l.connected);
        add(&self.closed, &mut l.closed);
        add(&self.failed, &mut l.failed);
        add(&self.ready, &mut l.ready);
        add(&self.sent, &mut l.sent);
        add(&self.expected, &mut l.expected);
        add(&self.delivered, &mut l.delivered);
        add(&self.duplicates, &mut l.duplicates);
        add(&self.gaps, &mut l.gaps);
        add(&self.self_echo, &mut l.self_echo);
        add(&self.pongs, &mut l.pongs);
        for (a, v) in self.errors.iter().zip(l.errors.iter_mut()) {
            add(a, v);
        }
    }

    /// A consistent-enough copy for reporting.
    pub(crate) fn snapshot(&self) -> LocalCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut errors = [0; ErrorKind::ALL.len()];
        for (e, a) in errors.iter_mut().zip(self.errors.iter()) {
            *e = g(a);
        }
        LocalCounts {
            connected: g(&self.connected),
            closed: g(&self.closed),
            failed: g(&self.failed),
            ready: g(&self.ready),
            sent: g(&self.sent),
            expected: g(&self.expected),
            delivered: g(&self.delivered),
            duplicates: g(&self.duplicates),
            gaps: g(&self.gaps),
            self_echo: g(&self.self_echo),
            pongs: g(&self.pongs),
            errors,
        }
    }
}

/// A receiver's view of its group's senders: the next sequence it expects
/// from each, so every (sender, sequence) counts once.
#[derive(Debug, Clone)]
pub(crate) struct SeqTracker {
    next: Vec<u64>,
}

/// What one receipt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Receipt {
    /// The first receipt of this sequence, in order.
    New,
    /// The first receipt, but `skipped` earlier sequences never arrived first.
    NewAfterGap {
        /// How many sequences were jumped over.
        skipped: u64,
    },
    /// A sequence already received (or jumped over).
    Duplicate,
}

impl SeqTracker {
    /// A tracker for a group of `members` members.
    pub(crate) fn new(members: usize) -> SeqTracker {
        SeqTracker {
            next: vec![0; members],
        }
    }

    /// Records `seq` from the member at `position` in the group; `None` if
    /// the position is outside the group.
    pub(crate) fn record(&mut self, position: usize, seq: u64) -> Option<Receipt> {
        let next = self.next.get_mut(position)?;
        Some(if seq < *next {
            Receipt::Duplicate
        } else if seq == *next {
            *next = seq + 1;
            Receipt::New
        } else {
            let skipped = seq - *next;
            *next = seq + 1;
            Receipt::NewAfterGap { skipped }
        })
    }
}

/// Closed-loop bookkeeping: for each sender, how many members still have to
/// receive each outstanding message, and how many messages are complete.
///
/// A sender may have at most `window` messages outstanding ("sent but not yet
/// received by every member"). Slots are a ring indexed by sequence; it is
/// four windows long so that a message completing out of order never shares a
/// slot with a live one.
#[derive(Debug)]
pub(crate) struct Window {
    window: u64,
    mask: u64,
    senders: Vec<SenderRing>,
}

#[derive(Debug)]
struct SenderRing {
    completed: AtomicU64,
    slots: Box<[AtomicU32]>,
}

impl Window {
    /// Bookkeeping for `senders` senders (by global member index) with at
    /// most `window` outstanding messages each.
    pub(crate) fn new(senders: usize, window: u32) -> Window {
        let ring = (u64::from(window.max(1)) * 4).next_power_of_two();
        let len = usize::try_from(ring).unwrap_or(usize::MAX);
        Window {
            window: u64::from(window.max(1)),
            mask: ring - 1,
            senders: (0..senders)
                .map(|_| SenderRing {
                    completed: AtomicU64::new(0),
                    slots: (0..len).map(|_| AtomicU32::new(0)).collect(),
                })
                .collect(),
        }
    }

    /// How many more messages `sender` may send now, having sent `sent`.
    pub(crate) fn room(&self, sender: usize, sent: u64) -> u64 {
        let Some(s) = self.senders.get(sender) else {
            return 0;
        };
        let outstanding = sent.saturating_sub(s.completed.load(Ordering::Acquire));
        self.window.saturating_sub(outstanding)
    }

    /// Marks `seq` of `sender` as sent to `receivers` other members. Call
    /// before the message is written to the socket.
    pub(crate) fn on_send(&self, sender: usize, seq: u64, receivers: u32) {
        let Some(s) = self.senders.get(sender) else {
            return;
        };
        if receivers == 0 {
            s.completed.fetch_add(1, Ordering::AcqRel);
            return;
        }
        if let Some(slot) = usize::try_from(seq & self.mask)
            .ok()
            .and_then(|i| s.slots.get(i))
        {
            slot.store(receivers, Ordering::Release);
        }
    }

    /// Records that one member received `seq` of `sender` for the first
    /// time; true if that completed the message (every member has it).
    pub(crate) fn on_receive(&self, sender: usize, seq: u64) -> bool {
        let Some(s) = self.senders.get(sender) else {
            return false;
        };
        let Some(slot) = usize::try_from(seq & self.mask)
            .ok()
            .and_then(|i| s.slots.get(i))
        else {
            return false;
        };
        let before = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
        if before == Ok(1) {
            s.completed.fetch_add(1, Ordering::AcqRel);
            true
        } else {
            false
        }
    }
}

/// A latency histogram in nanoseconds (1 ns to 1 hour, 3 significant digits).
pub(crate) fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; fall back to an
    // auto-resizing one rather than fail.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
        .or_else(|_| Histogram::new(3))
        .unwrap_or_else(|_| unreachable_histogram())
}

#[allow(
    clippy::panic,
    reason = "Histogram::new(3) cannot fail: 3 is a valid sigfig"
)]
fn unreachable_histogram() -> Histogram<u64> {
    panic!("hdrhistogram rejected constant bounds")
}

/// A histogram of loop-pass durations in nanoseconds (1 ns to 1 hour, 2
/// significant digits: a pass is timed to 1%, and the histogram is small
/// enough to hand over every few milliseconds).
fn new_pass_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 2)
        .or_else(|_| Histogram::new(2))
        .unwrap_or_else(|_| unreachable_histogram())
}

/// Loop passes: how many, and their durations in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Passes {
    /// Passes timed.
    pub(crate) count: u64,
    /// Wall time from `poll`'s return to the end of the pass.
    pub(crate) us: Latency,
    /// The worker thread's CPU time in the pass: well below `us` when the
    /// thread was preempted (another task on its core) during the pass.
    pub(crate) cpu_us: Latency,
}

/// Loop-pass durations in nanoseconds, wall and on-CPU.
#[derive(Debug)]
pub(crate) struct PassHistograms {
    wall: Histogram<u64>,
    cpu: Histogram<u64>,
}

impl PassHistograms {
    /// Empty ones.
    pub(crate) fn new() -> PassHistograms {
        PassHistograms {
            wall: new_pass_histogram(),
            cpu: new_pass_histogram(),
        }
    }

    /// One pass.
    pub(crate) fn record(&mut self, wall_ns: u64, cpu_ns: u64) {
        self.wall.saturating_record(wall_ns.max(1));
        self.cpu.saturating_record(cpu_ns.max(1));
    }

    /// Adds `other`'s passes.
    pub(crate) fn add(&mut self, other: &PassHistograms) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.wall.add(&other.wall);
        let _ = self.cpu.add(&other.cpu);
    }

    /// Forgets every pass.
    pub(crate) fn reset(&mut self) {
        self.wall.reset();
        self.cpu.reset();
    }

    /// The figures.
    pub(crate) fn figures(&self) -> Passes {
        Passes {
            count: self.wall.len(),
            us: Latency::of(&self.wall),
            cpu_us: Latency::of(&self.cpu),
        }
    }
}

/// A worker's pass histograms, handed to the reporter in batches.
#[derive(Debug)]
pub(crate) struct SharedPasses {
    inner: Mutex<PassHistograms>,
}

impl SharedPasses {
    /// Empty.
    pub(crate) fn new() -> SharedPasses {
        SharedPasses {
            inner: Mutex::new(PassHistograms::new()),
        }
    }

    /// Adds `local` and clears it.
    pub(crate) fn absorb(&self, local: &mut PassHistograms) {
        if local.wall.is_empty() {
            return;
        }
        if let Ok(mut h) = self.inner.lock() {
            h.add(local);
        }
        local.reset();
    }

    /// Moves everything collected so far into `into`.
    pub(crate) fn drain_into(&self, into: &mut PassHistograms) {
        if let Ok(mut h) = self.inner.lock() {
            into.add(&h);
            h.reset();
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

impl Latency {
    /// The percentiles of a nanosecond histogram, in microseconds.
    pub(crate) fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns_to_us(ns);
        Latency {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

#[allow(
    clippy::cast_precision_loss,
    reason = "latencies are far below 2^52 ns"
)]
fn ns_to_us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

/// A worker's latency samples, handed to the reporter in batches.
#[derive(Debug)]
pub(crate) struct SharedHistogram {
    inner: Mutex<Histogram<u64>>,
}

impl SharedHistogram {
    /// An empty one.
    pub(crate) fn new() -> SharedHistogram {
        SharedHistogram {
            inner: Mutex::new(new_histogram()),
        }
    }

    /// Adds `local` and clears it.
    pub(crate) fn absorb(&self, local: &mut Histogram<u64>) {
        if local.is_empty() {
            return;
        }
        if let Ok(mut h) = self.inner.lock() {
            // Same bounds on both sides, so adding cannot fail.
            let _ = h.add(&*local);
        }
        local.reset();
    }

    /// Moves everything collected so far into `into`.
    pub(crate) fn drain_into(&self, into: &mut Histogram<u64>) {
        if let Ok(mut h) = self.inner.lock() {
            let _ = into.add(&*h);
            h.reset();
        }
    }
}

/// Errors by kind, non-zero ones only.
pub(crate) fn errors_by_kind(c: &LocalCounts) -> BTreeMap<&'static str, u64> {
    ErrorKind::ALL
        .iter()
        .zip(c.errors.iter())
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.name(), *n))
        .collect()
}

/// Total errors of every kind.
pub(crate) fn error_total(c: &LocalCounts) -> u64 {
    c.errors.iter().sum()
}

/// One line of the per-second report; `passes`, one per worker, adds the
/// swarm's loop health as `pass_us=[p99/max/cpu_max,...]` (the passes' wall
/// time p99 and max, and the longest on-CPU time of a pass).
pub(crate) fn report_line(
    elapsed_s: f64,
    phase: &str,
    c: &LocalCounts,
    per_sec: f64,
    lat: &Latency,
    passes: &[Passes],
) -> String {
    let errs: Vec<String> = errors_by_kind(c)
        .into_iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    let passes = if passes.is_empty() {
        String::new()
    } else {
        let w: Vec<String> = passes
            .iter()
            .map(|p| format!("{}/{}/{}", p.us.p99, p.us.max, p.cpu_us.max))
            .collect();
        format!(" pass_us=[{}]", w.join(","))
    };
    format!(
        "[{elapsed_s:6.1}s {phase:<10}] connected={} sent={} delivered={} deliveries/s={:.0} \
         p50={}us p90={}us p99={}us p99.9={}us max={}us errors={{{}}}{passes}",
        c.connected.saturating_sub(c.closed),
        c.sent,
        c.delivered,
        per_sec,
        lat.p50,
        lat.p90,
        lat.p99,
        lat.p999,
        lat.max,
        errs.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_rejects_short_payloads() {
        let s = Stamp {
            sender: 7,
            seq: u64::MAX - 1,
            sent_ns: 123_456_789,
        };
        let mut p = vec![0x5a; 100];
        assert!(s.write(&mut p));
        assert_eq!(Stamp::read(&p), Some(s));
        assert_eq!(p.get(STAMP_LEN), Some(&0x5a), "filler untouched");
        assert_eq!(Stamp::read(&p[..STAMP_LEN - 1]), None);
        assert!(!s.write(&mut [0u8; STAMP_LEN - 1]));
    }

    #[test]
    fn tracker_counts_new_gaps_and_duplicates() {
        let mut t = SeqTracker::new(3);
        assert_eq!(t.record(1, 0), Some(Receipt::New));
        assert_eq!(t.record(1, 1), Some(Receipt::New));
        assert_eq!(t.record(1, 1), Some(Receipt::Duplicate));
        assert_eq!(t.record(1, 5), Some(Receipt::NewAfterGap { skipped: 3 }));
        assert_eq!(t.record(1, 3), Some(Receipt::Duplicate));
        assert_eq!(
            t.record(2, 0),
            Some(Receipt::New),
            "senders are independent"
        );
        assert_eq!(t.record(3, 0), None, "outside the group");
    }

    #[test]
    fn window_releases_only_when_every_member_has_the_message() {
        let w = Window::new(2, 2);
        assert_eq!(w.room(0, 0), 2);
        w.on_send(0, 0, 3);
        w.on_send(0, 1, 3);
        assert_eq!(w.room(0, 2), 0, "two outstanding, window full");
        assert!(!w.on_receive(0, 0));
        assert!(!w.on_receive(0, 0));
        assert_eq!(w.room(0, 2), 0);
        assert!(w.on_receive(0, 0), "third member completes it");
        assert_eq!(w.room(0, 2), 1);
        assert!(
            !w.on_receive(0, 0),
            "a stray extra receipt does not underflow"
        );
        assert_eq!(w.room(0, 2), 1);
        assert_eq!(w.room(1, 0), 2, "senders are independent");
        assert_eq!(w.room(9, 0), 0, "unknown sender gets no room");
    }

    #[test]
    fn window_with_no_receivers_completes_at_send() {
        let w = Window::new(1, 1);
        w.on_send(0, 0, 0);
        assert_eq!(w.room(0, 1), 1);
    }

    #[test]
    fn counters_absorb_and_zero_the_batch() {
        let c = Counters::default();
        let mut l = LocalCounts {
            sent: 3,
            delivered: 5,
            ..LocalCounts::default()
        };
        l.error(ErrorKind::Closed);
        l.error(ErrorKind::Closed);
        c.absorb(&mut l);
        c.absorb(&mut l);
        let s = c.snapshot();
        assert_eq!((s.sent, s.delivered), (3, 5));
        assert_eq!(errors_by_kind(&s).get("closed"), Some(&2));
        assert_eq!(error_total(&s), 2);
        assert_eq!(l.sent, 0);
    }

    #[test]
    fn latency_percentiles_in_microseconds() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = Latency::of(&h);
        assert!((l.p50 - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max - 1000.0).abs() < 1.0, "{l:?}");
        assert_eq!(Latency::of(&new_histogram()), Latency::default());
    }

    #[test]
    fn pass_figures_and_the_progress_line() {
        let mut h = PassHistograms::new();
        for us in [100u64, 200, 300, 40_000] {
            // The long one was mostly preempted.
            h.record(us * 1000, us.min(1000) * 900);
        }
        let shared = SharedPasses::new();
        shared.absorb(&mut h);
        assert_eq!(h.figures().count, 0, "handed over");
        let mut total = PassHistograms::new();
        shared.drain_into(&mut total);
        shared.drain_into(&mut total);
        let p = total.figures();
        assert_eq!(p.count, 4);
        assert!((p.us.max - 40_000.0).abs() <= 400.0, "2 digits: {p:?}");
        assert!(p.us.p50 < 250.0, "{p:?}");
        assert!((p.cpu_us.max - 900.0).abs() <= 9.0, "{p:?}");
        let c = LocalCounts::default();
        let line = report_line(1.0, "running", &c, 0.0, &Latency::default(), &[p, p]);
        let one = format!("{}/{}/{}", p.us.p99, p.us.max, p.cpu_us.max);
        assert!(line.ends_with(&format!(" pass_us=[{one},{one}]")), "{line}");
        let line = report_line(1.0, "connecting", &c, 0.0, &Latency::default(), &[]);
        assert!(!line.contains("pass_us"), "{line}");
    }

    #[test]
    fn shared_histogram_moves_samples() {
        let s = SharedHistogram::new();
        let mut local = new_histogram();
        local.record(5).unwrap();
        s.absorb(&mut local);
        assert!(local.is_empty());
        let mut total = new_histogram();
        s.drain_into(&mut total);
        s.drain_into(&mut total);
        assert_eq!(total.len(), 1);
    }
}
