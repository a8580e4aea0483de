//! The few operating-system calls std does not wrap: raising the open-file
//! soft limit, binding a socket to a chosen loopback source address before
//! connecting, and reading a process's RSS and CPU time from `/proc`.
//!
//! This module holds the swarm's only `unsafe` code: three plain libc calls,
//! each with its `// SAFETY:` note.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};

/// Raises this process's open-file soft limit to its hard limit.
///
/// Returns `(soft, hard)` after the change.
///
/// # Errors
/// The `getrlimit`/`setrlimit` error.
#[allow(unsafe_code, reason = "getrlimit/setrlimit have no std wrapper")]
pub(crate) fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct we own and pass
    // by a valid, exclusive pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct behind the valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
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

/// Opens a non-blocking TCP socket bound to `src` (any port) and starts
/// connecting it to `dst`; the connection completes later (write readiness).
///
/// # Errors
/// [`ConnectError::SourceExhausted`] when `src` has no ephemeral port left.
#[allow(unsafe_code, reason = "bind before connect has no std wrapper")]
pub(crate) fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> Result<TcpStream, ConnectError> {
    let classify = |e: io::Error| match e.raw_os_error() {
        Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL) => ConnectError::SourceExhausted,
        _ => ConnectError::Io(e),
    };
    // SAFETY: socket(2) takes no pointers; a negative result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(ConnectError::Io(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns; the
    // OwnedFd closes it on every early return below.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>())
        .map_err(|_| ConnectError::Io(io::Error::other("sockaddr_in size")))?;
    let local = sockaddr_in(SocketAddrV4::new(src, 0));
    // SAFETY: `local` is a valid sockaddr_in and `len` is its size.
    let rc = unsafe { libc::bind(fd, std::ptr::from_ref(&local).cast::<libc::sockaddr>(), len) };
    if rc != 0 {
        return Err(classify(io::Error::last_os_error()));
    }
    let remote = sockaddr_in(dst);
    // SAFETY: `remote` is a valid sockaddr_in and `len` is its size.
    let rc = unsafe {
        libc::connect(
            fd,
            std::ptr::from_ref(&remote).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(classify(e));
        }
    }
    Ok(TcpStream::from(owned))
}

/// A process's resident set size and CPU time, read from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcSample {
    /// `VmRSS` from `/proc/PID/status`, in KiB.
    pub(crate) rss_kib: u64,
    /// `utime + stime` from `/proc/PID/stat`, in milliseconds.
    pub(crate) cpu_ms: u64,
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

#[allow(unsafe_code, reason = "sysconf has no std wrapper")]
fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf takes no pointers.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vmrss() {
        let s = "Name:\tredis\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads: 4\n";
        assert_eq!(parse_vmrss(s), Some(4321));
        assert_eq!(parse_vmrss("Name: x\n"), None);
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
