//! The swarm: N connections spread over a few worker threads, each running
//! its own `mio::Poll` over a `slab` of connections; a coordinator (the
//! calling thread) moves every worker through the phases and prints the
//! reports.
//!
//! ```text
//!            coordinator (run)                     workers (one Poll each)
//!  Connecting  ── wait: all ready or deadline ──►  open (bounded in flight),
//!                                                   handshake, join group
//!  Running     ── duration D, a report a second ►  send (rate R / window W),
//!                                                   receive, check, ping
//!  Draining    ── until all delivered or drain ──►  receive only
//!  Done        ── join (bounded) ───────────────►  close everything, exit
//! ```
//!
//! Members are numbered 0..N; member m is in group m / G at position m % G,
//! lives on worker m % T, and sends if its position is below K. Every phase
//! is bounded in time, every loop pass in work, so the swarm always stops.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::proto::{Event, Member, Proto};
use crate::stats::{
    Counters, ErrorKind, Latency, LocalCounts, PassHistograms, Passes, Receipt, STAMP_LEN,
    SeqTracker, SharedHistogram, SharedPasses, Stamp, Window, new_histogram, report_line,
};
use crate::sys::{self, ConnectError, ProcSample};

/// Largest payload accepted.
pub(crate) const MAX_PAYLOAD: usize = 1 << 20;
/// Most connections one swarm process opens.
pub(crate) const MAX_CONNECTIONS: usize = 1_000_000;
/// Longest run.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Most messages one sender writes in one loop pass (open loop catching up).
const MAX_BURST: u64 = 256;
/// A sender stops writing while this much of its output is unsent.
const MAX_UNSENT: usize = 1 << 20;
/// Largest partial frame kept between reads.
const MAX_INBUF: usize = MAX_PAYLOAD + (64 << 10);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 256 << 10;
/// An open-loop sender held back by `MAX_UNSENT` is looked at again after this.
const SCHEDULE_RETRY_NS: u64 = 1_000_000;
/// How often a worker hands its counters and samples to the coordinator.
const ABSORB_EVERY: Duration = Duration::from_millis(20);
/// Every connection's tick (its acks) and ping check come round once per
/// this period; each loop pass handles the share of connections that is
/// due, so they do not all go out in one burst.
const PING_SCAN_EVERY: Duration = Duration::from_millis(100);
/// Most connections one loop pass ticks. A tick usually writes an ack (a
/// send syscall, ~4 µs on loopback); after a long pass (or a 20 ms poll
/// timeout) the share due would be thousands of them in one go, each
/// delaying the reads of deliveries waiting meanwhile. Capped, the rest is
/// ticked over the next passes, which then poll without waiting.
const MAX_TICKS_PER_PASS: usize = 64;
/// How long the coordinator waits for workers to exit after `Done`.
const JOIN_GRACE: Duration = Duration::from_secs(5);

const WAKE: Token = Token(usize::MAX);

/// What the swarm does; plain values (main turns the command line into it).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The server, a loopback address.
    pub(crate) server: SocketAddr,
    /// Connections (= members) in the swarm.
    pub(crate) connections: usize,
    /// Global index of this process's first member (a multiple of the group
    /// size), so several processes can split one swarm: process k runs
    /// members `first_member .. first_member + connections`, whole groups.
    pub(crate) first_member: usize,
    /// Members per group (the last group may be smaller).
    pub(crate) group_size: usize,
    /// Senders per group: the members at positions `0..senders`.
    pub(crate) senders_per_group: usize,
    /// Open loop: messages per second per sender.
    pub(crate) rate: Option<f64>,
    /// Closed loop: most messages per sender not yet received by every member.
    pub(crate) window: Option<u32>,
    /// Connect, join and only ping.
    pub(crate) idle: bool,
    /// How long senders send (or idle connections are held).
    pub(crate) duration: Duration,
    /// Payload bytes per message (at least [`STAMP_LEN`]).
    pub(crate) payload: usize,
    /// Worker threads.
    pub(crate) threads: usize,
    /// How long connecting may take before the run starts anyway.
    pub(crate) connect_timeout: Duration,
    /// How long to wait for in-flight messages after sending stops.
    pub(crate) drain: Duration,
    /// Each ready connection pings this often.
    pub(crate) ping_interval: Duration,
    /// Members per worker between "connect started" and "ready" (TCP
    /// connect plus the target's handshake). Above the server's listen
    /// backlog, connects overflow its accept queue and wait for SYN retries.
    pub(crate) max_pending_connects: usize,
    /// The relay's process id, for RSS and CPU readings.
    pub(crate) relay_pid: Option<u32>,
    /// Print a line every second.
    pub(crate) progress: bool,
}

/// Why the swarm could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DriverError {
    /// Bad configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Setting up polls or threads failed.
    #[error("setting up the swarm: {0}")]
    Setup(#[from] io::Error),
}

/// Relay figures from /proc.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayFigures {
    /// Before any connection was opened.
    pub(crate) before: ProcSample,
    /// When every connection was ready (or the connect deadline passed).
    pub(crate) connected: ProcSample,
    /// At the end of the run, connections still open.
    pub(crate) after: ProcSample,
}

/// The final report.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// Counters at the end.
    pub(crate) counts: LocalCounts,
    /// Connections open at the end of the run phase.
    pub(crate) connected: u64,
    /// `expected_deliveries - delivered`.
    pub(crate) missing: u64,
    /// Deliveries during the run phase divided by its length.
    pub(crate) deliveries_per_sec: f64,
    /// Length of the run phase, seconds.
    pub(crate) run_secs: f64,
    /// Time from start until every connection was ready, seconds.
    pub(crate) connect_secs: f64,
    /// End-to-end latency over the run and drain.
    pub(crate) latency: Latency,
    /// Relay RSS and CPU, with `--relay-pid`.
    pub(crate) relay: Option<RelayFigures>,
    /// The relay's CPU use during the run phase, percent of one core.
    pub(crate) relay_cpu_pct: Option<f64>,
    /// The swarm's own CPU use during the run phase, percent of one core.
    pub(crate) swarm_cpu_pct: Option<f64>,
    /// How long the swarm's threads waited for a CPU while runnable during
    /// the run phase (preempted, or woken and not yet running), summed over
    /// threads, percent of the run.
    pub(crate) swarm_runq_wait_pct: Option<f64>,
    /// The workers' loop passes during the run and drain phases, all
    /// workers together (see [`Worker::run`]) ...
    pub(crate) passes: Passes,
    /// ... and each worker's.
    pub(crate) worker_passes: Vec<Passes>,
}

/// Phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Phase {
    Connecting = 0,
    Running = 1,
    Draining = 2,
    Done = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Connecting,
            1 => Phase::Running,
            2 => Phase::Draining,
            _ => Phase::Done,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Done => "done",
        }
    }
}

/// What every thread shares.
struct Shared {
    cfg: Config,
    base: Instant,
    phase: AtomicU8,
    start_ns: AtomicU64,
    counters: Counters,
    hists: Vec<SharedHistogram>,
    /// Per worker: its loop passes' durations, nanoseconds.
    pass_hists: Vec<SharedPasses>,
    window: Option<Window>,
    wakers: Vec<Waker>,
    wake_pending: Vec<AtomicBool>,
    /// Last octet of the current IPv4 loopback source address.
    src_octet: AtomicU32,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
        for w in 0..self.wakers.len() {
            self.wake(w);
        }
    }

    fn wake(&self, worker: usize) {
        if let (Some(flag), Some(w)) = (self.wake_pending.get(worker), self.wakers.get(worker))
            && !flag.swap(true, Ordering::AcqRel)
        {
            // A failed wake only delays the worker until its poll timeout.
            let _ = w.wake();
        }
    }

    /// A member's index within this process (window slots, worker).
    fn local_index(&self, member: u32) -> Option<usize> {
        usize::try_from(member)
            .ok()?
            .checked_sub(self.cfg.first_member)
    }

    fn group_len(&self, group: u32) -> u32 {
        let g = self.cfg.group_size;
        let start = usize::try_from(group)
            .unwrap_or(usize::MAX)
            .saturating_mul(g);
        let end = self.cfg.first_member + self.cfg.connections;
        let len = end.saturating_sub(start).min(g);
        u32::try_from(len).unwrap_or(u32::MAX)
    }
}

/// Checks the configuration's bounds and consistency.
///
/// # Errors
/// [`DriverError::Config`] naming the offending setting.
pub(crate) fn validate(cfg: &Config) -> Result<(), DriverError> {
    let bad = |m: &str| Err(DriverError::Config(m.to_string()));
    if !cfg.server.ip().is_loopback() {
        return bad("--server must be a loopback address (the swarm is loopback only)");
    }
    if cfg.connections == 0 || cfg.connections > MAX_CONNECTIONS {
        return bad("--connections must be 1..=1000000");
    }
    if cfg.first_member > MAX_CONNECTIONS
        || u32::try_from(cfg.first_member + cfg.connections).is_err()
    {
        return bad("--first-member too large");
    }
    if cfg.group_size == 0 || cfg.group_size > cfg.connections {
        return bad("--group-size must be 1..=connections");
    }
    if cfg.group_size > 0 && !cfg.first_member.is_multiple_of(cfg.group_size) {
        return bad("--first-member must be a multiple of --group-size (whole groups per process)");
    }
    if cfg.senders_per_group == 0 || cfg.senders_per_group > cfg.group_size {
        return bad("--senders must be 1..=group-size");
    }
    if cfg.payload < STAMP_LEN || cfg.payload > MAX_PAYLOAD {
        return bad("--payload must be 20..=1048576 bytes (20 carry sender, sequence, time)");
    }
    if cfg.duration > MAX_DURATION || cfg.connect_timeout > MAX_DURATION || cfg.drain > MAX_DURATION
    {
        return bad("durations are capped at 3600 s");
    }
    if let Some(r) = cfg.rate
        && !(r > 0.0 && r <= 10_000_000.0)
    {
        return bad("--rate must be in (0, 10000000]");
    }
    if let Some(w) = cfg.window
        && (w == 0 || w > 65_536)
    {
        return bad("--window must be 1..=65536");
    }
    if !cfg.idle && cfg.rate.is_none() && cfg.window.is_none() {
        return bad("give --rate, --window or --idle");
    }
    if cfg.threads == 0 || cfg.threads > 64 {
        return bad("--threads must be 1..=64");
    }
    if cfg.max_pending_connects == 0 || cfg.ping_interval.is_zero() {
        return bad("--max-pending-connects and --ping-interval must be positive");
    }
    Ok(())
}

/// Runs the swarm with protocol `P` to the end and returns the report.
///
/// # Errors
/// A bad configuration, or polls/threads that cannot be created. Failures of
/// individual connections are counted in the report, not returned.
pub(crate) fn run<P: Proto + Send + 'static>(
    cfg: Config,
    ctx: Arc<P::Ctx>,
) -> Result<Report, DriverError> {
    validate(&cfg)?;
    let threads = cfg.threads.min(cfg.connections);
    let mut polls = Vec::with_capacity(threads);
    let mut wakers = Vec::with_capacity(threads);
    for _ in 0..threads {
        let poll = Poll::new()?;
        wakers.push(Waker::new(poll.registry(), WAKE)?);
        polls.push(poll);
    }
    let window = match (cfg.idle, cfg.window) {
        (false, Some(w)) => Some(Window::new(cfg.connections, w)),
        _ => None,
    };
    let shared = Arc::new(Shared {
        base: Instant::now(),
        phase: AtomicU8::new(Phase::Connecting as u8),
        start_ns: AtomicU64::new(0),
        counters: Counters::default(),
        hists: (0..threads).map(|_| SharedHistogram::new()).collect(),
        pass_hists: (0..threads).map(|_| SharedPasses::new()).collect(),
        window,
        wakers,
        wake_pending: (0..threads).map(|_| AtomicBool::new(false)).collect(),
        src_octet: AtomicU32::new(1),
        cfg,
    });
    let cfg = &shared.cfg;
    let relay_pid = cfg.relay_pid.map(|p| p.to_string());
    let sample_relay = || relay_pid.as_deref().and_then(|p| sys::proc_sample(p).ok());
    let relay_before = sample_relay();

    let (done_tx, done_rx) = mpsc::channel::<usize>();
    for (id, poll) in polls.into_iter().enumerate() {
        let worker = Worker::<P>::new(id, threads, poll, Arc::clone(&shared), Arc::clone(&ctx))?;
        let tx = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("swarm-{id}"))
            .spawn(move || {
                worker.run();
                let _ = tx.send(id);
            })?;
    }
    drop(done_tx);

    let mut total = new_histogram();
    let mut interval = new_histogram();
    let mut pass_total: Vec<_> = (0..threads).map(|_| PassHistograms::new()).collect();
    let mut pass_interval: Vec<_> = (0..threads).map(|_| PassHistograms::new()).collect();
    let tick = Duration::from_secs(1);
    let n = u64::try_from(cfg.connections).unwrap_or(u64::MAX);

    // Connecting: until every connection is ready or has failed, or the deadline.
    let connect_deadline = shared.base + cfg.connect_timeout;
    let mut next_tick = shared.base + tick;
    let connect_secs = loop {
        std::thread::sleep(Duration::from_millis(20));
        let c = shared.counters.snapshot();
        let now = Instant::now();
        if c.ready + c.failed >= n || now >= connect_deadline {
            break shared.base.elapsed().as_secs_f64();
        }
        if now >= next_tick {
            next_tick += tick;
            progress(
                &shared,
                Phase::Connecting,
                &c,
                0.0,
                &Latency::default(),
                &[],
            );
        }
    };
    let relay_connected = sample_relay();
    let self_before = sys::proc_sample("self").ok();
    let wait_before = sys::runq_wait_ns().ok();
    let relay_run_before = relay_connected;

    // Running.
    let start = Instant::now();
    shared.start_ns.store(shared.now_ns(), Ordering::Release);
    shared.set_phase(Phase::Running);
    let end = start + cfg.duration;
    let mut next_tick = start + tick;
    let mut last_delivered = shared.counters.snapshot().delivered;
    let mut last_tick = start;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep(next_tick.min(end).saturating_duration_since(now));
        let now = Instant::now();
        if now >= next_tick || now >= end {
            let c = shared.counters.snapshot();
            for h in &shared.hists {
                h.drain_into(&mut interval);
            }
            let mut passes = Vec::with_capacity(threads);
            for ((h, i), t) in shared
                .pass_hists
                .iter()
                .zip(&mut pass_interval)
                .zip(&mut pass_total)
            {
                h.drain_into(i);
                passes.push(i.figures());
                t.add(i);
                i.reset();
            }
            let secs = now.duration_since(last_tick).as_secs_f64().max(1e-9);
            let rate = (c.delivered - last_delivered) as f64 / secs;
            let lat = Latency::of(&interval);
            progress(&shared, Phase::Running, &c, rate, &lat, &passes);
            let _ = total.add(&interval);
            interval.reset();
            last_delivered = c.delivered;
            last_tick = now;
            next_tick += tick;
        }
    }
    let run_secs = start.elapsed().as_secs_f64();
    let delivered_in_run = shared.counters.snapshot().delivered;
    let relay_run_after = sample_relay();
    let self_after = sys::proc_sample("self").ok();
    let wait_after = sys::runq_wait_ns().ok();

    // Draining: until everything sent is accounted for, or the drain time.
    shared.set_phase(Phase::Draining);
    let drain_end = Instant::now() + cfg.drain;
    // Workers hand over their counts every ABSORB_EVERY; wait one round so
    // the last sends are counted before comparing.
    std::thread::sleep(ABSORB_EVERY * 3);
    loop {
        let c = shared.counters.snapshot();
        if c.delivered + c.gaps >= c.expected || Instant::now() >= drain_end {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let relay_after = sample_relay();
    let connected_at_end = {
        let c = shared.counters.snapshot();
        c.connected.saturating_sub(c.closed)
    };
    shared.set_phase(Phase::Done);
    let join_deadline = Instant::now() + JOIN_GRACE;
    let mut joined = 0;
    while joined < threads {
        let left = join_deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(_) => joined += 1,
            Err(_) => {
                eprintln!(
                    "hermes-loadtest: {} worker(s) did not stop in time",
                    threads - joined
                );
                break;
            }
        }
    }
    for h in &shared.hists {
        h.drain_into(&mut total);
    }
    let _ = total.add(&interval);
    for (h, t) in shared.pass_hists.iter().zip(&mut pass_total) {
        h.drain_into(t);
    }
    let counts = shared.counters.snapshot();
    let cpu_pct = |a: Option<ProcSample>, b: Option<ProcSample>| {
        let (a, b) = (a?, b?);
        Some(b.cpu_ms.saturating_sub(a.cpu_ms) as f64 / 10.0 / run_secs.max(1e-9))
    };
    let relay = match (relay_before, relay_connected, relay_after) {
        (Some(before), Some(connected), Some(after)) => Some(RelayFigures {
            before,
            connected,
            after,
        }),
        _ => None,
    };
    Ok(Report {
        missing: counts.expected.saturating_sub(counts.delivered),
        connected: connected_at_end,
        deliveries_per_sec: delivered_in_run as f64 / run_secs.max(1e-9),
        run_secs,
        connect_secs,
        latency: Latency::of(&total),
        relay,
        relay_cpu_pct: cpu_pct(relay_run_before, relay_run_after),
        swarm_cpu_pct: cpu_pct(self_before, self_after),
        swarm_runq_wait_pct: wait_before
            .zip(wait_after)
            .map(|(a, b)| b.saturating_sub(a) as f64 / 1e7 / run_secs.max(1e-9)),
        passes: {
            let mut all = PassHistograms::new();
            for t in &pass_total {
                all.add(t);
            }
            all.figures()
        },
        worker_passes: pass_total.iter().map(PassHistograms::figures).collect(),
        counts,
    })
}

fn progress(
    shared: &Shared,
    phase: Phase,
    c: &LocalCounts,
    rate: f64,
    lat: &Latency,
    passes: &[Passes],
) {
    if shared.cfg.progress {
        let elapsed = shared.base.elapsed().as_secs_f64();
        println!(
            "{}",
            report_line(elapsed, phase.name(), c, rate, lat, passes)
        );
    }
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Handshaking,
    Ready,
    Closed,
}

struct SenderState {
    seq: u64,
    /// Spreads the senders' first message over one period.
    offset_ns: u64,
}

impl SenderState {
    /// Open loop: how many messages are due and not yet sent `elapsed` ns
    /// after the start (message k is due `offset + k / rate` after it).
    fn due(&self, elapsed: u64, rate: f64) -> u64 {
        let due = match elapsed.checked_sub(self.offset_ns) {
            Some(t) => f64_to_u64(t as f64 * rate / 1e9) + 1,
            None => 0,
        };
        due.saturating_sub(self.seq)
    }
}

/// Writes `n` stamped messages from one sender into its output, and in a
/// closed loop counts each in the window (`(window, my index, receivers)`).
#[allow(
    clippy::too_many_arguments,
    reason = "disjoint borrows of one worker and one connection"
)]
fn publish_burst<P: Proto>(
    shared: &Shared,
    payload: &mut [u8],
    member: u32,
    s: &mut SenderState,
    proto: &mut P,
    out: &mut Vec<u8>,
    n: u64,
    window: Option<(&Window, usize, u32)>,
) {
    for _ in 0..n {
        let stamp = Stamp {
            sender: member,
            seq: s.seq,
            sent_ns: shared.now_ns(),
        };
        stamp.write(payload);
        if let Some((w, me, receivers)) = window {
            w.on_send(me, s.seq, receivers);
        }
        proto.publish(payload, out);
        s.seq += 1;
    }
}

struct Conn<P> {
    member: u32,
    group_start: u32,
    group_len: u32,
    stream: Option<TcpStream>,
    state: ConnState,
    proto: P,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_at: usize,
    dirty: bool,
    tracker: SeqTracker,
    sender: Option<SenderState>,
    next_ping_ns: u64,
}

struct Worker<P: Proto> {
    ctx: Arc<P::Ctx>,
    id: usize,
    threads: usize,
    poll: Poll,
    shared: Arc<Shared>,
    conns: Slab<Conn<P>>,
    to_open: Vec<u32>,
    pending_connects: usize,
    senders: Vec<usize>,
    /// Open loop without a window: the senders by the time (ns after the
    /// start) their next message is due, so a pass touches only those due
    /// rather than scanning every sender.
    schedule: BinaryHeap<Reverse<(u64, usize)>>,
    reschedule: Vec<(u64, usize)>,
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    payload: Vec<u8>,
    events_buf: Vec<Event>,
    local: LocalCounts,
    hist: Histogram<u64>,
    /// Durations of this worker's loop passes.
    pass_hist: PassHistograms,
    last_absorb: Instant,
    last_ping_scan: Instant,
    /// The round robin has connections due that the last pass left.
    ticks_behind: bool,
    ping_cursor: usize,
    touched: Vec<usize>,
    run_tag: u32,
}

impl<P: Proto> Worker<P> {
    fn new(
        id: usize,
        threads: usize,
        poll: Poll,
        shared: Arc<Shared>,
        ctx: Arc<P::Ctx>,
    ) -> io::Result<Worker<P>> {
        let n = shared.cfg.connections;
        let first = shared.cfg.first_member;
        let mut to_open: Vec<u32> = (0..n)
            .filter(|m| m % threads == id)
            .filter_map(|m| u32::try_from(first + m).ok())
            .collect();
        to_open.reverse();
        let payload = vec![0x5a; shared.cfg.payload];
        Ok(Worker {
            ctx,
            id,
            threads,
            poll,
            conns: Slab::with_capacity(to_open.len()),
            to_open,
            pending_connects: 0,
            senders: Vec::new(),
            schedule: BinaryHeap::new(),
            reschedule: Vec::new(),
            dirty: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            payload,
            events_buf: Vec::new(),
            local: LocalCounts::default(),
            hist: new_histogram(),
            pass_hist: PassHistograms::new(),
            last_absorb: Instant::now(),
            last_ping_scan: Instant::now(),
            ticks_behind: false,
            ping_cursor: 0,
            touched: Vec::new(),
            run_tag: std::process::id(),
            shared,
        })
    }

    /// The worker's loop. A *pass* runs from the return of `poll` to the
    /// end of the loop body (events, sends, ticks, flushes, hand-over);
    /// while a pass runs, deliveries wait in their sockets, so a long pass
    /// adds to the latency measured. Passes of the run and drain phases are
    /// timed into `pass_hist` (the connect phase's handshakes are not), in
    /// wall time and in the thread's CPU time: a pass much longer in wall
    /// time than on the CPU was preempted, not busy.
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut seen_phase = Phase::Connecting;
        loop {
            let phase = self.shared.phase();
            if phase == Phase::Done {
                break;
            }
            if phase != seen_phase {
                if seen_phase == Phase::Connecting {
                    self.give_up_on_unready();
                }
                seen_phase = phase;
            }
            if phase == Phase::Connecting {
                self.open_more();
            }
            let timeout = match phase {
                _ if self.ticks_behind => Duration::ZERO,
                Phase::Connecting => Duration::from_millis(5),
                Phase::Running if self.shared.cfg.rate.is_some() && !self.senders.is_empty() => {
                    Duration::from_millis(1)
                }
                _ => ABSORB_EVERY,
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                self.local.error(ErrorKind::Io);
                break;
            }
            let pass_start = Instant::now();
            let cpu_start = sys::thread_cpu_ns();
            for ev in events.iter() {
                let token = ev.token();
                if token == WAKE {
                    if let Some(f) = self.shared.wake_pending.get(self.id) {
                        f.store(false, Ordering::Release);
                    }
                    continue;
                }
                self.on_event(
                    token.0,
                    ev.is_writable(),
                    ev.is_error(),
                    ev.is_read_closed(),
                );
            }
            if phase == Phase::Running && !self.shared.cfg.idle {
                self.send_due();
            }
            self.ping_due();
            self.flush_dirty();
            if self.last_absorb.elapsed() >= ABSORB_EVERY {
                self.absorb();
            }
            if phase != Phase::Connecting {
                let wall = duration_ns(pass_start.elapsed());
                let cpu = sys::thread_cpu_ns().saturating_sub(cpu_start);
                self.pass_hist.record(wall, cpu);
            }
        }
        self.absorb();
        for (_, c) in self.conns.iter_mut() {
            if let Some(mut s) = c.stream.take() {
                let _ = self.poll.registry().deregister(&mut s);
                sys::reset_on_close(&s);
            }
        }
    }

    fn absorb(&mut self) {
        self.last_absorb = Instant::now();
        self.shared.counters.absorb(&mut self.local);
        if let Some(h) = self.shared.hists.get(self.id) {
            h.absorb(&mut self.hist);
        }
        if let Some(h) = self.shared.pass_hists.get(self.id) {
            h.absorb(&mut self.pass_hist);
        }
    }

    /// Opens connections while fewer than the limit are in flight.
    fn open_more(&mut self) {
        while self.pending_connects < self.shared.cfg.max_pending_connects {
            let Some(m) = self.to_open.pop() else { return };
            match self.connect() {
                Ok(mut stream) => {
                    let key = self.conns.vacant_key();
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(key),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        self.local.error(ErrorKind::Connect);
                        self.local.failed += 1;
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let conn = self.new_conn(m, stream);
                    self.conns.insert(conn);
                    self.pending_connects += 1;
                }
                Err(kind) => {
                    self.local.error(kind);
                    self.local.failed += 1;
                }
            }
        }
    }

    fn connect(&self) -> Result<TcpStream, ErrorKind> {
        let server = self.shared.cfg.server;
        let SocketAddr::V4(dst) = server else {
            return TcpStream::connect(server).map_err(|_| ErrorKind::Connect);
        };
        loop {
            let octet = self.shared.src_octet.load(Ordering::Acquire);
            let Ok(last) = u8::try_from(octet) else {
                return Err(ErrorKind::SourceAddrs);
            };
            if last == 255 {
                return Err(ErrorKind::SourceAddrs);
            }
            match sys::connect_from(Ipv4Addr::new(127, 0, 0, last), dst) {
                Ok(s) => return Ok(TcpStream::from_std(s)),
                Err(ConnectError::SourceExhausted) => {
                    // Move every worker on to the next address (once).
                    let _ = self.shared.src_octet.compare_exchange(
                        octet,
                        octet + 1,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                Err(ConnectError::Io(e)) if sys::is_file_limit(&e) => {
                    return Err(ErrorKind::FileLimit);
                }
                Err(ConnectError::Io(_)) => return Err(ErrorKind::Connect),
            }
        }
    }

    fn new_conn(&self, m: u32, stream: TcpStream) -> Conn<P> {
        let cfg = &self.shared.cfg;
        let g = u32::try_from(cfg.group_size).unwrap_or(u32::MAX);
        let group = m / g;
        let position = m % g;
        let group_len = self.shared.group_len(group);
        let sender = (!cfg.idle
            && usize::try_from(position).is_ok_and(|p| p < cfg.senders_per_group))
        .then(|| {
            let period_ns = cfg.rate.map_or(0.0, |r| 1e9 / r);
            // Spread the senders' phases evenly over the period (golden-ratio
            // sequence), so that an open-loop run offers a steady load
            // rather than one burst per period.
            let frac = (f64::from(m) * 0.618_033_988_749_894_9).fract();
            SenderState {
                seq: 0,
                offset_ns: f64_to_u64(period_ns * frac),
            }
        });
        let member = Member {
            index: m,
            group,
            run_tag: self.run_tag,
        };
        Conn {
            member: m,
            group_start: group * g,
            group_len,
            stream: Some(stream),
            state: ConnState::Connecting,
            proto: P::new(&member, &self.ctx),
            inbuf: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            dirty: false,
            tracker: SeqTracker::new(usize::try_from(group_len).unwrap_or(0)),
            sender,
            next_ping_ns: u64::MAX,
        }
    }

    /// At the end of the connect phase: connections not ready by now count
    /// as timeouts and are closed; members never opened count too.
    fn give_up_on_unready(&mut self) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, ConnState::Connecting | ConnState::Handshaking))
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            self.close(k, Some(ErrorKind::Timeout));
        }
        for _ in self.to_open.drain(..) {
            self.local.error(ErrorKind::Timeout);
            self.local.failed += 1;
        }
    }

    fn close(&mut self, key: usize, why: Option<ErrorKind>) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.state == ConnState::Closed {
            return;
        }
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        match c.state {
            ConnState::Connecting => {
                self.pending_connects = self.pending_connects.saturating_sub(1);
                self.local.failed += 1;
            }
            ConnState::Handshaking => {
                self.pending_connects = self.pending_connects.saturating_sub(1);
                self.local.failed += 1;
                self.local.closed += 1;
            }
            ConnState::Ready | ConnState::Closed => self.local.closed += 1,
        }
        c.state = ConnState::Closed;
        c.inbuf = Vec::new();
        c.out = Vec::new();
        if let Some(kind) = why {
            self.local.error(kind);
        }
    }

    fn on_event(&mut self, key: usize, writable: bool, error: bool, read_closed: bool) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.state == ConnState::Connecting {
            if !writable && !error {
                return;
            }
            let Some(s) = c.stream.as_ref() else { return };
            let failed = !matches!(s.take_error(), Ok(None));
            if failed {
                self.close(key, Some(ErrorKind::Connect));
                return;
            }
            if let Err(e) = s.peer_addr() {
                if e.kind() == io::ErrorKind::NotConnected {
                    return; // not yet: a spurious wake-up
                }
                self.close(key, Some(ErrorKind::Connect));
                return;
            }
            self.local.connected += 1;
            c.state = ConnState::Handshaking;
            c.proto.start(&mut c.out);
            self.mark_dirty(key);
        }
        self.read(key, error || read_closed);
        if writable {
            self.flush(key);
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Reads until the socket would block, handing the bytes to the protocol.
    /// A short read ends it early unless `to_end` (the peer's FIN or an
    /// error was reported): the socket is empty then, and edge-triggered
    /// epoll reports the next bytes that arrive, so the read that would only
    /// say `WouldBlock` is skipped.
    fn read(&mut self, key: usize, to_end: bool) {
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            let n = match stream.read(&mut self.scratch) {
                Ok(0) => {
                    let why = (self.shared.phase() != Phase::Done).then_some(ErrorKind::Closed);
                    self.close(key, why);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(key, Some(ErrorKind::Io));
                    return;
                }
            };
            if let Err(kind) = self.on_bytes(key, n) {
                self.close(key, Some(kind));
                return;
            }
            if n < self.scratch.len() && !to_end {
                return;
            }
        }
    }

    /// Handles `scratch[..n]` just read from connection `key`.
    fn on_bytes(&mut self, key: usize, n: usize) -> Result<(), ErrorKind> {
        let now_ns = self.shared.now_ns();
        let shared = &*self.shared;
        let Some(c) = self.conns.get_mut(key) else {
            return Ok(());
        };
        let data = self.scratch.get(..n).unwrap_or_default();
        let was_empty = c.inbuf.is_empty();
        if !was_empty {
            c.inbuf.extend_from_slice(data);
        }
        let buf: &[u8] = if was_empty { data } else { &c.inbuf };
        let before_out = c.out.len();
        let events = &mut self.events_buf;
        events.clear();
        let parsed = c.proto.on_read(buf, &mut c.out, events);
        let used = match parsed {
            Ok(u) => u,
            Err(crate::proto::ProtoError::Refused(_)) => return Err(ErrorKind::ServerError),
            Err(crate::proto::ProtoError::Malformed(_)) => return Err(ErrorKind::Protocol),
        };
        let mut became_ready = false;
        for ev in events.drain(..) {
            match ev {
                Event::Ready => {
                    if c.state == ConnState::Handshaking {
                        c.state = ConnState::Ready;
                        became_ready = true;
                    }
                }
                Event::Pong => self.local.pongs += 1,
                Event::ServerError(_) => self.local.error(ErrorKind::ServerError),
                Event::Undecryptable => self.local.error(ErrorKind::Corrupt),
                Event::Message(_) | Event::Plain(_) => {
                    let payload = match &ev {
                        Event::Message(r) => buf.get(r.clone()),
                        Event::Plain(p) => Some(&p[..]),
                        _ => None,
                    };
                    let Some(st) = payload.and_then(Stamp::read) else {
                        self.local.error(ErrorKind::Corrupt);
                        continue;
                    };
                    if st.sender == c.member {
                        self.local.self_echo += 1;
                        continue;
                    }
                    let Some(pos) = st
                        .sender
                        .checked_sub(c.group_start)
                        .filter(|p| *p < c.group_len)
                        .and_then(|p| usize::try_from(p).ok())
                    else {
                        self.local.error(ErrorKind::Corrupt);
                        continue;
                    };
                    match c.tracker.record(pos, st.seq) {
                        Some(Receipt::Duplicate) => self.local.duplicates += 1,
                        Some(r) => {
                            if let Receipt::NewAfterGap { skipped } = r {
                                self.local.gaps += skipped;
                            }
                            self.local.delivered += 1;
                            self.hist
                                .saturating_record(now_ns.saturating_sub(st.sent_ns).max(1));
                            if let (Some(w), Some(s)) =
                                (&shared.window, shared.local_index(st.sender))
                                && w.on_receive(s, st.seq)
                            {
                                let owner = s % self.threads;
                                if owner != self.id {
                                    shared.wake(owner);
                                }
                            }
                        }
                        None => self.local.error(ErrorKind::Corrupt),
                    }
                }
            }
        }
        if was_empty {
            if let Some(rest) = data.get(used..) {
                c.inbuf.extend_from_slice(rest);
            }
        } else {
            c.inbuf.drain(..used.min(c.inbuf.len()));
        }
        if c.inbuf.len() > MAX_INBUF {
            return Err(ErrorKind::Protocol);
        }
        if c.inbuf.is_empty() && c.inbuf.capacity() > READ_CHUNK {
            c.inbuf = Vec::new();
        }
        let wrote = c.out.len() > before_out;
        if became_ready {
            self.pending_connects = self.pending_connects.saturating_sub(1);
            self.local.ready += 1;
            let interval = duration_ns(shared.cfg.ping_interval);
            let frac = f64::from(c.member % 65_536) / 65_536.0;
            c.next_ping_ns = now_ns.saturating_add(f64_to_u64(interval as f64 * (0.5 + frac)));
            if let Some(s) = &c.sender {
                if shared.cfg.rate.is_some() && shared.window.is_none() {
                    self.schedule.push(Reverse((s.offset_ns, key)));
                }
                self.senders.push(key);
            }
        }
        if wrote {
            self.mark_dirty(key);
        }
        Ok(())
    }

    /// Open loop: each sender writes what its schedule says is due; closed
    /// loop: what its window allows.
    fn send_due(&mut self) {
        if let (Some(rate), None) = (self.shared.cfg.rate, &self.shared.window) {
            self.send_scheduled(rate);
            return;
        }
        let shared = &*self.shared;
        let now_ns = shared.now_ns();
        let start_ns = shared.start_ns.load(Ordering::Acquire);
        let elapsed = now_ns.saturating_sub(start_ns);
        let mut touched = Vec::new();
        for &key in &self.senders {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if c.state != ConnState::Ready || c.out.len() - c.out_at > MAX_UNSENT {
                continue;
            }
            let Some(s) = c.sender.as_mut() else { continue };
            let mut n = MAX_BURST;
            if let Some(rate) = shared.cfg.rate {
                n = n.min(s.due(elapsed, rate));
            }
            let me = shared.local_index(c.member).unwrap_or(usize::MAX);
            if let Some(w) = &shared.window {
                n = n.min(w.room(me, s.seq));
            }
            if n == 0 {
                continue;
            }
            let receivers = c.group_len.saturating_sub(1);
            let window = shared.window.as_ref().map(|w| (w, me, receivers));
            publish_burst(
                shared,
                &mut self.payload,
                c.member,
                s,
                &mut c.proto,
                &mut c.out,
                n,
                window,
            );
            self.local.sent += n;
            self.local.expected += n * u64::from(receivers);
            if !c.dirty {
                c.dirty = true;
                touched.push(key);
            }
        }
        self.dirty.extend(touched);
    }

    /// Open loop without a window: pops the senders whose next message is
    /// due (same schedule as the scan in [`Worker::send_due`]: message k of
    /// a sender is due `offset + k / rate` after the start) and puts each
    /// back at the time its next one is due.
    fn send_scheduled(&mut self, rate: f64) {
        let shared = &*self.shared;
        let start_ns = shared.start_ns.load(Ordering::Acquire);
        let elapsed = shared.now_ns().saturating_sub(start_ns);
        let period = 1e9 / rate;
        let mut again = std::mem::take(&mut self.reschedule);
        while let Some(&Reverse((due, key))) = self.schedule.peek() {
            if due > elapsed {
                break;
            }
            self.schedule.pop();
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if c.state != ConnState::Ready {
                continue;
            }
            let Some(s) = c.sender.as_mut() else { continue };
            if c.out.len() - c.out_at > MAX_UNSENT {
                again.push((elapsed + SCHEDULE_RETRY_NS, key));
                continue;
            }
            let n = MAX_BURST.min(s.due(elapsed, rate));
            let receivers = c.group_len.saturating_sub(1);
            publish_burst(
                shared,
                &mut self.payload,
                c.member,
                s,
                &mut c.proto,
                &mut c.out,
                n,
                None,
            );
            let next = s.offset_ns + f64_to_u64((s.seq as f64 * period).ceil());
            // Never due again within this pass (a capped burst, or float
            // rounding that made nothing due yet).
            again.push((next.max(elapsed + 1), key));
            if n == 0 {
                continue;
            }
            self.local.sent += n;
            self.local.expected += n * u64::from(receivers);
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(key);
            }
        }
        for &(due, key) in &again {
            self.schedule.push(Reverse((due, key)));
        }
        again.clear();
        self.reschedule = again;
    }

    /// Visits every connection once per [`PING_SCAN_EVERY`], a share of
    /// them each pass (round robin, in proportion to the time since the
    /// last pass), so the ticks' acks and the pings reach the server
    /// spread evenly, not as one burst from every connection at once. At
    /// most [`MAX_TICKS_PER_PASS`] a pass; the rest is left for the next
    /// passes (`ticks_behind`).
    fn ping_due(&mut self) {
        self.ticks_behind = false;
        let len = self.conns.len();
        if len == 0 {
            return;
        }
        let now = Instant::now();
        let since = now.saturating_duration_since(self.last_ping_scan);
        let period = PING_SCAN_EVERY.as_nanos().max(1);
        let share = since.as_nanos().saturating_mul(len as u128) / period;
        if share == 0 {
            return;
        }
        let visit = usize::try_from(share)
            .unwrap_or(len)
            .min(len)
            .min(MAX_TICKS_PER_PASS);
        // Advance by exactly the time the visited share stands for, so the
        // remainder carries over; never fall more than one period behind
        // (those left tick a period late, and their acks cover more).
        self.last_ping_scan = if visit == len {
            now
        } else {
            self.ticks_behind = (visit as u128) < share;
            let spent = u64::try_from(visit as u128 * period / len as u128).unwrap_or(u64::MAX);
            let next = self.last_ping_scan + Duration::from_nanos(spent);
            match now.checked_sub(PING_SCAN_EVERY) {
                Some(floor) if next < floor => floor,
                _ => next,
            }
        };
        let now_ns = self.shared.now_ns();
        let interval = duration_ns(self.shared.cfg.ping_interval);
        let mut touched = std::mem::take(&mut self.touched);
        for _ in 0..visit {
            let key = self.ping_cursor % len;
            self.ping_cursor = (key + 1) % len;
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if c.state != ConnState::Ready {
                continue;
            }
            let before = c.out.len();
            c.proto.tick(&mut c.out);
            if c.out.len() > before && !c.dirty {
                c.dirty = true;
                touched.push(key);
            }
            if now_ns >= c.next_ping_ns {
                c.proto.ping(&mut c.out);
                c.next_ping_ns = now_ns.saturating_add(interval);
                if !c.dirty {
                    c.dirty = true;
                    touched.push(key);
                }
            }
        }
        self.dirty.append(&mut touched);
        self.touched = touched;
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(c) = self.conns.get_mut(key) {
                c.dirty = false;
            }
            self.flush(key);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Writes pending output until done or the socket would block (then a
    /// writable event resumes it).
    fn flush(&mut self, key: usize) {
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if c.out_at >= c.out.len() {
                c.out.clear();
                c.out_at = 0;
                if c.out.capacity() > MAX_UNSENT {
                    c.out = Vec::new();
                }
                return;
            }
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            let pending = c.out.get(c.out_at..).unwrap_or_default();
            match stream.write(pending) {
                Ok(0) => {
                    self.close(key, Some(ErrorKind::Io));
                    return;
                }
                Ok(n) => c.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => {
                    self.close(key, Some(ErrorKind::Io));
                    return;
                }
            }
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "clamped to u64's range first; fractions are meant to be dropped"
)]
fn f64_to_u64(v: f64) -> u64 {
    if v.is_nan() || v <= 0.0 {
        0
    } else if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        v as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{self, Faults};
    use crate::mqtt::Mqtt;

    fn cfg(server: SocketAddr) -> Config {
        Config {
            server,
            connections: 40,
            first_member: 0,
            group_size: 8,
            senders_per_group: 8,
            rate: None,
            window: Some(4),
            idle: false,
            duration: Duration::from_millis(400),
            payload: 64,
            threads: 2,
            connect_timeout: Duration::from_secs(20),
            drain: Duration::from_secs(10),
            ping_interval: Duration::from_secs(10),
            max_pending_connects: 16,
            relay_pid: None,
            progress: false,
        }
    }

    fn assert_exactly_once(r: &Report) {
        let c = &r.counts;
        assert!(c.sent > 0, "{r:?}");
        assert_eq!(c.delivered, c.expected, "{r:?}");
        assert_eq!((c.duplicates, c.gaps, r.missing), (0, 0, 0), "{r:?}");
        assert_eq!(c.errors, [0; ErrorKind::ALL.len()], "{r:?}");
        assert!(r.latency.max > 0.0, "{r:?}");
        assert_passes_sane(r);
    }

    /// Every worker timed its loop passes, and the figures are ordered.
    fn assert_passes_sane(r: &Report) {
        let p = &r.passes;
        assert!(p.count > 0, "{r:?}");
        assert!(0.0 < p.us.p50 && p.us.p50 <= p.us.p99, "{r:?}");
        assert!(p.us.p99 <= p.us.max, "{r:?}");
        assert_eq!(r.worker_passes.len(), 2, "one entry per worker: {r:?}");
        let count: u64 = r.worker_passes.iter().map(|w| w.count).sum();
        assert_eq!(count, p.count, "{r:?}");
        let max = r.worker_passes.iter().map(|w| w.us.max).fold(0.0, f64::max);
        assert!((max - p.us.max).abs() < 1e-9, "the slowest worker's: {r:?}");
        assert!(0.0 < p.cpu_us.max, "{r:?}");
        // On-CPU time within a pass cannot exceed its wall time (2 digits).
        assert!(p.cpu_us.max <= p.us.max * 1.02, "{r:?}");
    }

    #[test]
    fn closed_loop_delivers_everything_exactly_once() {
        let addr = fake::start(Faults::default());
        let r = run::<Mqtt>(cfg(addr), Arc::new(())).unwrap();
        assert_exactly_once(&r);
        assert_eq!((r.connected, r.counts.ready), (40, 40));
        // Groups of 8: every message reaches 7 others, and the broker echoes
        // each publish to its sender once.
        assert_eq!(r.counts.expected, r.counts.sent * 7);
        assert_eq!(r.counts.self_echo, r.counts.sent);
    }

    #[test]
    fn open_loop_with_some_senders_and_a_short_last_group() {
        let addr = fake::start(Faults::default());
        let mut c = cfg(addr);
        c.connections = 21; // groups of 8, 8, 5
        c.senders_per_group = 2;
        c.window = None;
        c.rate = Some(100.0);
        let r = run::<Mqtt>(c, Arc::new(())).unwrap();
        assert_exactly_once(&r);
        // 6 senders: 4 in groups of 8 (7 receivers each), 2 in the group of 5.
        assert!(r.counts.expected <= r.counts.sent * 7);
        assert!(r.counts.expected >= r.counts.sent * 4);
        assert_eq!(r.counts.self_echo, r.counts.sent);
    }

    #[test]
    fn two_processes_split_one_swarm_by_whole_groups() {
        let addr = fake::start(Faults::default());
        let halves: Vec<_> = [0usize, 24]
            .into_iter()
            .map(|first| {
                let mut c = cfg(addr);
                c.first_member = first;
                c.connections = 24; // three groups of 8 each
                std::thread::spawn(move || run::<Mqtt>(c, Arc::new(())).unwrap())
            })
            .collect();
        for h in halves {
            let r = h.join().unwrap();
            assert_exactly_once(&r);
            assert_eq!(r.connected, 24);
            assert_eq!(r.counts.expected, r.counts.sent * 7, "only its own groups");
        }
        let mut c = cfg(addr);
        c.first_member = 4;
        assert!(validate(&c).is_err(), "a process must hold whole groups");
    }

    #[test]
    fn duplicates_and_losses_are_detected_and_counted() {
        let addr = fake::start(Faults {
            duplicate_every: 7,
            drop_every: 11,
        });
        let mut c = cfg(addr);
        // Open loop, so losses do not stall a window; short drain.
        c.window = None;
        c.rate = Some(200.0);
        c.drain = Duration::from_millis(500);
        let r = run::<Mqtt>(c, Arc::new(())).unwrap();
        let k = &r.counts;
        assert!(k.duplicates > 0, "{r:?}");
        assert!(r.missing > 0, "{r:?}");
        assert!(k.gaps > 0, "{r:?}");
        assert_eq!(k.delivered + r.missing, k.expected, "{r:?}");
        assert!(k.delivered < k.expected);
    }

    #[test]
    fn idle_connections_only_ping() {
        let addr = fake::start(Faults::default());
        let mut c = cfg(addr);
        c.idle = true;
        c.window = None;
        c.ping_interval = Duration::from_millis(100);
        c.duration = Duration::from_millis(600);
        let r = run::<Mqtt>(c, Arc::new(())).unwrap();
        assert_eq!((r.counts.sent, r.counts.delivered), (0, 0));
        assert_eq!(r.connected, 40);
        assert!(r.counts.pongs >= 40, "every connection pinged: {r:?}");
        assert_eq!(r.counts.errors, [0; ErrorKind::ALL.len()]);
    }

    #[test]
    fn refused_connections_are_counted_not_fatal() {
        // A port that is held but has no listener. (Binding a listener and
        // dropping it was flaky: the freed port could be taken by another
        // test's listener, or be picked as one of our own source ports,
        // before the swarm connected.) The client end of a connection holds
        // its port for as long as it lives, without SO_REUSEADDR, so no
        // listener and no other bind can take it, and nothing listens on
        // it: every connect is refused.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let holder = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let addr = holder.local_addr().unwrap();
        let mut c = cfg(addr);
        c.connections = 10;
        c.group_size = 5;
        c.senders_per_group = 5;
        c.duration = Duration::from_millis(50);
        let r = run::<Mqtt>(c, Arc::new(())).unwrap();
        assert_eq!(r.counts.failed, 10);
        assert_eq!(r.connected, 0);
        assert_eq!(
            crate::stats::errors_by_kind(&r.counts).get("connect"),
            Some(&10)
        );
        drop((holder, listener));
    }

    #[test]
    fn configuration_bounds() {
        let ok = cfg(SocketAddr::from(([127, 0, 0, 1], 1)));
        assert!(validate(&ok).is_ok());
        type Change = Box<dyn Fn(&mut Config)>;
        let bad: Vec<Change> = vec![
            Box::new(|c| c.server = SocketAddr::from(([10, 0, 0, 1], 1))),
            Box::new(|c| c.connections = 0),
            Box::new(|c| c.connections = MAX_CONNECTIONS + 1),
            Box::new(|c| c.group_size = 41),
            Box::new(|c| c.senders_per_group = 0),
            Box::new(|c| c.payload = STAMP_LEN - 1),
            Box::new(|c| c.payload = MAX_PAYLOAD + 1),
            Box::new(|c| c.duration = MAX_DURATION + Duration::from_secs(1)),
            Box::new(|c| c.rate = Some(0.0)),
            Box::new(|c| c.window = Some(0)),
            Box::new(|c| {
                c.window = None;
                c.rate = None;
            }),
            Box::new(|c| c.threads = 0),
        ];
        for (i, f) in bad.iter().enumerate() {
            let mut c = ok.clone();
            f(&mut c);
            assert!(validate(&c).is_err(), "case {i}");
        }
    }

    #[test]
    fn float_conversion_clamps() {
        assert_eq!(f64_to_u64(-1.0), 0);
        assert_eq!(f64_to_u64(f64::NAN), 0);
        assert_eq!(f64_to_u64(2.9), 2);
        assert_eq!(f64_to_u64(1e30), u64::MAX);
    }
}
