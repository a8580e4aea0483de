//! The few operating-system calls std does not wrap: raising the open-file
//! soft limit, binding a socket to a chosen loopback source address before
//! connecting, and reading a process's RSS and CPU time from `/proc`.
//!
//! The system calls go through `rustix` and `socket2`, which wrap them
//! safely: the swarm has no `unsafe` code.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};

use rustix::io::Errno;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use socket2::{Domain, SockAddr, Socket, Type};

/// Raises this process's open-file soft limit to its hard limit.
///
/// Returns `(soft, hard)` after the change (`u64::MAX` is unlimited).
///
/// # Errors
/// The `setrlimit` error.
pub(crate) fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let lim = getrlimit(Resource::Nofile);
    // `None` is RLIM_INFINITY.
    let mut soft = lim.current.unwrap_or(u64::MAX);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    if soft < hard {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        )?;
        soft = hard;
    }
    Ok((soft, hard))
}

/// How a bind-before-connect attempt failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The source address has no free ephemeral port left (`EADDRINUSE` or
    /// `EADDRNOTAVAIL`): move on to the next source address.
    SourceExhausted,
    /// Any other failure.
    Io(io::Error),
}

/// Whether `e` says this process is out of file descriptors (`EMFILE`) or the
/// system is (`ENFILE`).
pub(crate) fn is_file_limit(e: &io::Error) -> bool {
    matches!(Errno::from_io_error(e), Some(Errno::MFILE | Errno::NFILE))
}

/// Opens a non-blocking TCP socket bound to `src` (any port) and starts
/// connecting it to `dst`; the connection completes later (write readiness).
///
/// # Errors
/// [`ConnectError::SourceExhausted`] when `src` has no ephemeral port left.
pub(crate) fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> Result<TcpStream, ConnectError> {
    let socket = source_socket(src, dst)?;
    socket.set_nonblocking(true).map_err(ConnectError::Io)?;
    match socket.connect(&SockAddr::from(dst)) {
        Ok(()) => {}
        Err(e) if Errno::from_io_error(&e) == Some(Errno::INPROGRESS) => {}
        Err(e) => return Err(classify(e)),
    }
    Ok(TcpStream::from(socket))
}

/// `SourceExhausted` for "no port left on that source address".
fn classify(e: io::Error) -> ConnectError {
    match Errno::from_io_error(&e) {
        Some(Errno::ADDRINUSE | Errno::ADDRNOTAVAIL) => ConnectError::SourceExhausted,
        _ => ConnectError::Io(e),
    }
}

/// A TCP socket that will connect to `dst` from `src`: bound to `src`
/// (any port), except from 127.0.0.1 to loopback, where the kernel
/// connects from anyway. Unbound, the port is chosen at connect time, per
/// destination and reusing TIME_WAIT ports on loopback; `bind(port 0)`
/// must find a port free of every TIME_WAIT socket, and with tens of
/// thousands of them left by the previous run each bind scanned the range
/// (connects fell from ~7,000 to ~1,300 a second). socket2 opens it
/// close-on-exec; dropping it closes it.
fn source_socket(src: Ipv4Addr, dst: SocketAddrV4) -> Result<Socket, ConnectError> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(ConnectError::Io)?;
    if src != Ipv4Addr::LOCALHOST || !dst.ip().is_loopback() {
        socket
            .bind(&SockAddr::from(SocketAddrV4::new(src, 0)))
            .map_err(classify)?;
    }
    Ok(socket)
}

/// The last octet of the source address [`connect_blocking`] uses now.
static BLOCKING_SRC_OCTET: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);

/// A blocking connect to `dst` within `timeout`, for the set-up phase
/// (registering and creating groups): from 127.0.0.1, moving on to
/// 127.0.0.2, ... (for the rest of the process) when the current source
/// address has no ephemeral port left, as after a previous run's tens of
/// thousands of connections still in TIME_WAIT. Other destinations connect
/// plainly.
///
/// # Errors
/// The connect failed, or every source address up to 127.0.0.254 is out of
/// ports.
pub(crate) fn connect_blocking(
    dst: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> io::Result<TcpStream> {
    use std::sync::atomic::Ordering;
    let std::net::SocketAddr::V4(v4) = dst else {
        return TcpStream::connect_timeout(&dst, timeout);
    };
    if !v4.ip().is_loopback() {
        return TcpStream::connect_timeout(&dst, timeout);
    }
    loop {
        let last = BLOCKING_SRC_OCTET.load(Ordering::Acquire);
        if last == 255 {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no ephemeral port left on 127.0.0.1-127.0.0.254",
            ));
        }
        let attempt = source_socket(Ipv4Addr::new(127, 0, 0, last), v4).and_then(|socket| {
            socket
                .connect_timeout(&SockAddr::from(v4), timeout)
                .map_err(classify)?;
            Ok(socket)
        });
        match attempt {
            Ok(socket) => return Ok(TcpStream::from(socket)),
            Err(ConnectError::SourceExhausted) => {
                // Move every thread on to the next address (once).
                let _ = BLOCKING_SRC_OCTET.compare_exchange(
                    last,
                    last + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            Err(ConnectError::Io(e)) => return Err(e),
        }
    }
}

/// A process's resident set size and CPU time, read from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcSample {
    /// `VmRSS` from `/proc/PID/status`, in KiB.
    pub(crate) rss_kib: u64,
    /// `utime + stime` from `/proc/PID/stat`, in milliseconds.
    pub(crate) cpu_ms: u64,
}

/// Makes the next close of `socket` reset the connection (`SO_LINGER` 0)
/// instead of leaving it in TIME_WAIT for 60 s. The swarm closes first, so
/// a shape-4 run would leave ~21,000 loopback ports in TIME_WAIT (set-up
/// and swarm), and every `bind(127.0.0.1:0)` on the machine (the tests'
/// listeners) failed with `EADDRINUSE` for a minute after it. Only for
/// connections whose exchange is over: a reset drops unsent data.
pub(crate) fn reset_on_close<S: std::os::fd::AsFd>(socket: &S) {
    // Best effort: without it the close is an ordinary one.
    let _ = socket2::SockRef::from(socket).set_linger(Some(std::time::Duration::ZERO));
}

/// The calling thread's CPU time, nanoseconds (`CLOCK_THREAD_CPUTIME_ID`).
pub(crate) fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Reads `pid`'s RSS and CPU time (`"self"` for this process).
///
/// # Errors
/// The file could not be read or did not parse.
pub(crate) fn proc_sample(pid: &str) -> io::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}: unexpected format"),
        )
    };
    let rss_kib = parse_vmrss(&status).ok_or_else(bad)?;
    let ticks = parse_cpu_ticks(&stat).ok_or_else(bad)?;
    Ok(ProcSample {
        rss_kib,
        cpu_ms: ticks.saturating_mul(1000) / clock_ticks_per_sec(),
    })
}

/// `VmRSS:   1234 kB` -> 1234.
pub(crate) fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How long this process's threads have been runnable but waiting for a
/// CPU (the run queue), nanoseconds, summed over its threads
/// (`/proc/self/task/*/schedstat`, second field).
///
/// # Errors
/// `/proc/self/task` cannot be listed.
pub(crate) fn runq_wait_ns() -> io::Result<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task")? {
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(entry?.path().join("schedstat")) else {
            continue;
        };
        total = total.saturating_add(parse_schedstat_wait(&text).unwrap_or(0));
    }
    Ok(total)
}

/// The run-queue wait (second field) of a `schedstat` line: `on-CPU ns,
/// waiting ns, time slices`.
pub(crate) fn parse_schedstat_wait(line: &str) -> Option<u64> {
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted from
/// the last `)`.
pub(crate) fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

fn clock_ticks_per_sec() -> u64 {
    // 0 would mean the kernel did not pass AT_CLKTCK; Linux's USER_HZ is 100.
    match rustix::param::clock_ticks_per_second() {
        0 => 100,
        t => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_close_leaves_no_time_wait() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // From a source address nothing else uses: a port that connect()
        // picks on 127.0.0.1 may be shared with other tests' connections.
        let src = SockAddr::from(std::net::SocketAddr::from(([127, 0, 3, 77], 0)));
        let close_first = |reset: bool| {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            socket.bind(&src).unwrap();
            socket.connect(&SockAddr::from(addr)).unwrap();
            let client: TcpStream = socket.into();
            let (server, _) = listener.accept().unwrap();
            let port = client.local_addr().unwrap();
            if reset {
                reset_on_close(&client);
            }
            drop(client);
            // The server sees the close, then closes too.
            let mut buf = [0u8; 1];
            let _ = std::io::Read::read(&mut &server, &mut buf);
            drop(server);
            // Without SO_REUSEADDR, a port in TIME_WAIT cannot be bound.
            std::net::TcpListener::bind(port).is_ok()
        };
        assert!(close_first(true), "reset: the port is free at once");
        assert!(!close_first(false), "an ordinary close leaves TIME_WAIT");
    }

    #[test]
    fn parses_vmrss() {
        let s = "Name:\tredis\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads: 4\n";
        assert_eq!(parse_vmrss(s), Some(4321));
        assert_eq!(parse_vmrss("Name: x\n"), None);
    }

    #[test]
    fn parses_schedstat_and_reads_our_own() {
        assert_eq!(
            parse_schedstat_wait("5080000000 234000000 11615\n"),
            Some(234_000_000)
        );
        assert_eq!(parse_schedstat_wait("5080000000\n"), None);
        assert_eq!(parse_schedstat_wait("5 x 1"), None);
        // Some thread of this test process has a schedstat to read.
        assert!(runq_wait_ns().is_ok());
    }

    #[test]
    fn parses_cpu_ticks_with_odd_command_names() {
        // Field 2 contains spaces and a ')' — fields are counted from the last one.
        let s = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 1 0 100 1000 50";
        assert_eq!(parse_cpu_ticks(s), Some(22));
        assert_eq!(parse_cpu_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = proc_sample("self").unwrap();
        assert!(s.rss_kib > 0);
    }

    #[test]
    fn raising_the_limit_reaches_the_hard_limit() {
        let (soft, hard) = raise_nofile_limit().unwrap();
        assert_eq!(soft, hard);
    }

    #[test]
    fn an_unusable_source_address_is_source_exhausted() {
        // 192.0.2.1 (TEST-NET-1) is on no interface here, so bind(2) fails
        // with EADDRNOTAVAIL before anything is sent; the destination is a
        // loopback listener in case it were assigned.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(dst) = l.local_addr().unwrap() else {
            unreachable!()
        };
        let r = connect_from(Ipv4Addr::new(192, 0, 2, 1), dst);
        assert!(matches!(r, Err(ConnectError::SourceExhausted)), "{r:?}");
        let e = io::Error::from(Errno::MFILE);
        assert!(is_file_limit(&e));
        assert!(!is_file_limit(&io::Error::from(Errno::CONNREFUSED)));
    }

    #[test]
    fn blocking_connects_come_from_loopback_and_refusals_are_errors() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = connect_blocking(addr, std::time::Duration::from_secs(5)).unwrap();
        let (_accepted, peer) = l.accept().unwrap();
        assert_eq!(s.local_addr().unwrap(), peer);
        assert!(peer.ip().is_loopback(), "{peer}");
        drop(l);
        // Nothing listens there now: refused, not retried from other sources.
        let e = connect_blocking(addr, std::time::Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

    #[test]
    fn binds_the_requested_source_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(dst) = l.local_addr().unwrap() else {
            unreachable!()
        };
        let s = connect_from(Ipv4Addr::new(127, 0, 0, 3), dst).unwrap();
        let (_accepted, peer) = l.accept().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(s.local_addr().unwrap().ip(), peer.ip());
    }
}
