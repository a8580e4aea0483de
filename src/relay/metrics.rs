//! The relay's counters, their Prometheus text rendering, the one-line log
//! summary, and the tiny HTTP/1.0 request parser of the `--metrics`
//! endpoint (served by the same poll loop as the relay itself).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::mailbox::StoreStats;
use crate::wire::FrameKind;

/// What the core counts, copied out for rendering (the loop fills it from
/// `RelayCore::stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreCounters {
    /// Deliver and gap-notice frames written.
    pub deliveries: u64,
    /// Messages (group, direct, commit) accepted.
    pub messages_accepted: u64,
    /// Entries dropped over a queue cap.
    pub dropped_over_cap: u64,
    /// Entries dropped past the time to live.
    pub dropped_expired: u64,
    /// Error frames the core sent.
    pub errors_sent: u64,
}

/// The pass durations counted by [`Metrics::slow_passes`], in µs.
pub const PASS_THRESHOLDS_US: [u64; 4] = [250, 1_000, 4_000, 16_000];

/// Counters kept by the event loop. Plain integers: one thread owns them.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Connections accepted.
    pub accepted: u64,
    /// Times accepting waited for the accept rate (`--max-accepts-per-sec`).
    pub accepts_deferred: u64,
    /// Connections closed (for any reason).
    pub closed: u64,
    /// Connections open now.
    pub open: u64,
    /// The `--max-connections` in force.
    pub max_connections: u64,
    /// Successful registrations and logins (authenticated frames sent).
    pub logins: u64,
    /// Frames received, by kind byte (index 0 also counts unknown kinds).
    pub frames_in: Box<[u64; 256]>,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// `read` calls on client sockets.
    pub read_calls: u64,
    /// `write` calls on client sockets.
    pub write_calls: u64,
    /// `epoll_wait` calls (loop passes).
    pub poll_calls: u64,
    /// `epoll_ctl` calls to change a connection's interest.
    pub reregister_calls: u64,
    /// Times a connection hit its frames-per-second limit.
    pub throttled: u64,
    /// Times a connection's output bound held deliveries in its mailbox.
    pub output_bound_hits: u64,
    /// Loop passes (poll return to the next poll) that took at least
    /// [`PASS_THRESHOLDS_US`] microseconds, per threshold: what a
    /// logged-in client's frame can wait behind (issue 8's measure of how
    /// much an attack adds to a pass).
    pub slow_passes: [u64; PASS_THRESHOLDS_US.len()],
    /// Highest unsent output the loop held over all connections (bytes;
    /// capped by `RELAY_MAX_QUEUED_OUTPUT`).
    pub output_queued_peak: usize,
    /// Closes and refusals by reason (`protocol:Malformed`, `idle`, ...).
    pub errors: BTreeMap<String, u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            accepted: 0,
            accepts_deferred: 0,
            closed: 0,
            open: 0,
            max_connections: 0,
            logins: 0,
            frames_in: Box::new([0; 256]),
            bytes_in: 0,
            bytes_out: 0,
            read_calls: 0,
            write_calls: 0,
            poll_calls: 0,
            reregister_calls: 0,
            throttled: 0,
            output_bound_hits: 0,
            output_queued_peak: 0,
            slow_passes: [0; PASS_THRESHOLDS_US.len()],
            errors: BTreeMap::new(),
        }
    }
}

impl Metrics {
    /// Counts one loop pass that took `us` microseconds.
    pub fn pass(&mut self, us: u64) {
        for (n, t) in self.slow_passes.iter_mut().zip(PASS_THRESHOLDS_US) {
            if us >= t {
                *n += 1;
            }
        }
    }

    /// Counts one error or close reason.
    pub fn error(&mut self, reason: &str) {
        if let Some(n) = self.errors.get_mut(reason) {
            *n += 1;
        } else {
            self.errors.insert(reason.to_owned(), 1);
        }
    }

    /// Counts one received frame by its kind byte.
    pub fn frame_in(&mut self, kind: u8) {
        let slot = if FrameKind::from_u8(kind).is_some() {
            usize::from(kind)
        } else {
            0
        };
        if let Some(n) = self.frames_in.get_mut(slot) {
            *n += 1;
        }
    }

    /// Frames received of `kind`.
    #[must_use]
    pub fn frames_of(&self, kind: FrameKind) -> u64 {
        self.frames_in.get(kind as usize).copied().unwrap_or(0)
    }

    /// The Prometheus text exposition (format 0.0.4) of every counter.
    #[must_use]
    pub fn render(&self, core: &CoreCounters, store: &StoreStats) -> String {
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(out, "# HELP hermes_{name} {help}");
            let _ = writeln!(out, "# TYPE hermes_{name} {kind}");
            let _ = writeln!(out, "hermes_{name} {v}");
        };
        counter(
            "connections_accepted_total",
            "Connections accepted.",
            "counter",
            self.accepted,
        );
        counter(
            "accepts_deferred_total",
            "Times new connections were left in the backlog by the accept rate.",
            "counter",
            self.accepts_deferred,
        );
        counter(
            "connections_closed_total",
            "Connections closed.",
            "counter",
            self.closed,
        );
        counter(
            "connections_open",
            "Connections open now.",
            "gauge",
            self.open,
        );
        counter(
            "connections_max",
            "The --max-connections in force.",
            "gauge",
            self.max_connections,
        );
        counter(
            "logins_total",
            "Successful registrations and logins.",
            "counter",
            self.logins,
        );
        counter(
            "deliveries_total",
            "Deliver and gap-notice frames sent.",
            "counter",
            core.deliveries,
        );
        counter(
            "messages_accepted_total",
            "Messages stored for delivery.",
            "counter",
            core.messages_accepted,
        );
        counter(
            "acks_total",
            "Ack frames received.",
            "counter",
            self.frames_of(FrameKind::Ack),
        );
        counter(
            "dropped_over_cap_total",
            "Queue entries dropped over a member's cap.",
            "counter",
            core.dropped_over_cap,
        );
        counter(
            "dropped_expired_total",
            "Queue entries dropped past the time to live.",
            "counter",
            core.dropped_expired,
        );
        counter(
            "error_frames_sent_total",
            "Error frames sent by the core.",
            "counter",
            core.errors_sent,
        );
        counter(
            "bytes_received_total",
            "Bytes read from clients.",
            "counter",
            self.bytes_in,
        );
        counter(
            "bytes_sent_total",
            "Bytes written to clients.",
            "counter",
            self.bytes_out,
        );
        counter(
            "read_calls_total",
            "read(2) calls on client sockets.",
            "counter",
            self.read_calls,
        );
        counter(
            "write_calls_total",
            "write(2) calls on client sockets.",
            "counter",
            self.write_calls,
        );
        counter(
            "poll_calls_total",
            "epoll_wait calls (loop passes).",
            "counter",
            self.poll_calls,
        );
        counter(
            "reregister_calls_total",
            "epoll_ctl calls changing write interest.",
            "counter",
            self.reregister_calls,
        );
        counter(
            "throttled_total",
            "Times a connection hit its frames-per-second limit.",
            "counter",
            self.throttled,
        );
        counter(
            "output_bound_hits_total",
            "Times a slow reader's output bound kept entries in its mailbox.",
            "counter",
            self.output_bound_hits,
        );
        let _ = writeln!(
            out,
            "# HELP hermes_loop_slow_passes_total Loop passes that took at least `over_us` microseconds."
        );
        let _ = writeln!(out, "# TYPE hermes_loop_slow_passes_total counter");
        for (n, t) in self.slow_passes.iter().zip(PASS_THRESHOLDS_US) {
            let _ = writeln!(out, "hermes_loop_slow_passes_total{{over_us=\"{t}\"}} {n}");
        }
        let mut counter = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(out, "# HELP hermes_{name} {help}");
            let _ = writeln!(out, "# TYPE hermes_{name} {kind}");
            let _ = writeln!(out, "hermes_{name} {v}");
        };
        counter(
            "output_queued_peak_bytes",
            "Most unsent output held over all connections (capped relay-wide).",
            "gauge",
            self.output_queued_peak as u64,
        );
        counter(
            "mailbox_records",
            "Records in the mailbox (released or not).",
            "gauge",
            store.records,
        );
        counter(
            "mailbox_live_records",
            "Records in the mailbox still needed.",
            "gauge",
            store.live_records,
        );
        counter(
            "mailbox_bytes",
            "Bytes used by mailbox records.",
            "gauge",
            store.bytes,
        );
        counter(
            "mailbox_segments",
            "Mailbox segments in use.",
            "gauge",
            store.segments as u64,
        );
        let _ = writeln!(
            out,
            "# HELP hermes_frames_received_total Frames received, by kind."
        );
        let _ = writeln!(out, "# TYPE hermes_frames_received_total counter");
        for (kind, n) in self.frames_in.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            let label = u8::try_from(kind)
                .ok()
                .and_then(FrameKind::from_u8)
                .map_or_else(|| "unknown".to_owned(), |k| format!("{k:?}"));
            let _ = writeln!(out, "hermes_frames_received_total{{kind=\"{label}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP hermes_errors_total Closes and refusals, by reason."
        );
        let _ = writeln!(out, "# TYPE hermes_errors_total counter");
        for (reason, n) in &self.errors {
            let _ = writeln!(out, "hermes_errors_total{{reason=\"{reason}\"}} {n}");
        }
        out
    }

    /// The one-line summary the loop logs every
    /// [`crate::limits::RELAY_SUMMARY_INTERVAL`].
    #[must_use]
    pub fn summary(&self, core: &CoreCounters, store: &StoreStats) -> String {
        let errors: u64 = self.errors.values().sum();
        format!(
            "conns {open}/{max} (+{acc} -{closed}) logins {logins} accepted {msgs} delivered {del} \
             bytes in {bin} out {bout} mailbox {recs} records {mb} bytes errors {errors}",
            open = self.open,
            max = self.max_connections,
            acc = self.accepted,
            closed = self.closed,
            logins = self.logins,
            msgs = core.messages_accepted,
            del = core.deliveries,
            bin = self.bytes_in,
            bout = self.bytes_out,
            recs = store.records,
            mb = store.bytes,
        )
    }
}

/// What the metrics endpoint makes of the bytes a client sent so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRequest {
    /// The request head is not complete yet.
    Incomplete,
    /// `GET /metrics` (or `GET /`).
    Metrics,
    /// Any other complete request (answered 404).
    NotFound,
    /// Too long or not HTTP (answered 400).
    Bad,
}

/// Parses an HTTP/1.x request head: only the request line matters.
#[must_use]
pub fn parse_http_request(buf: &[u8], max: usize) -> HttpRequest {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"));
    let Some(_) = end else {
        return if buf.len() >= max {
            HttpRequest::Bad
        } else {
            HttpRequest::Incomplete
        };
    };
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = String::from_utf8_lossy(buf.get(..line_end).unwrap_or_default());
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics" | "/")) => HttpRequest::Metrics,
        (Some(_), Some(_)) => HttpRequest::NotFound,
        _ => HttpRequest::Bad,
    }
}

/// A whole HTTP/1.0 response (the connection closes after it).
#[must_use]
pub fn http_response(status: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_labels() {
        let mut m = Metrics {
            accepted: 3,
            ..Metrics::default()
        };
        m.frame_in(FrameKind::Ack as u8);
        m.frame_in(FrameKind::Ack as u8);
        m.frame_in(0xee);
        m.error("idle");
        m.error("idle");
        let text = m.render(
            &CoreCounters {
                deliveries: 7,
                ..Default::default()
            },
            &StoreStats::default(),
        );
        assert!(text.contains("hermes_connections_accepted_total 3\n"));
        assert!(text.contains("hermes_deliveries_total 7\n"));
        assert!(text.contains("hermes_acks_total 2\n"));
        assert!(text.contains("hermes_frames_received_total{kind=\"Ack\"} 2\n"));
        assert!(text.contains("hermes_frames_received_total{kind=\"unknown\"} 1\n"));
        assert!(text.contains("hermes_errors_total{reason=\"idle\"} 2\n"));
        // Every sample line is `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<u64>().unwrap();
        }
    }

    #[test]
    fn http_request_parsing() {
        let max = crate::limits::RELAY_METRICS_MAX_REQUEST;
        assert_eq!(
            parse_http_request(b"GET /metrics HTTP/1.0\r\n", max),
            HttpRequest::Incomplete
        );
        assert_eq!(
            parse_http_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", max),
            HttpRequest::Metrics
        );
        assert_eq!(
            parse_http_request(b"GET / HTTP/1.0\n\n", max),
            HttpRequest::Metrics
        );
        assert_eq!(
            parse_http_request(b"GET /x HTTP/1.0\r\n\r\n", max),
            HttpRequest::NotFound
        );
        assert_eq!(parse_http_request(b"\r\n\r\n", max), HttpRequest::Bad);
        assert_eq!(parse_http_request(&vec![b'a'; max], max), HttpRequest::Bad);
        let r = http_response("200 OK", "abc");
        assert!(r.starts_with(b"HTTP/1.0 200 OK\r\n"));
        assert!(r.ends_with(b"\r\n\r\nabc"));
    }
}
