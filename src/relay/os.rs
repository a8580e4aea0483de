//! The two operating-system calls the relay needs and neither `std` nor
//! `mio` offers: raising the open-file limit and a listen backlog above
//! mio's 128. Both are plain `libc` calls on values we own; they are the
//! crate's only `unsafe` besides the mailbox's memory map.

use std::io;
use std::os::fd::AsRawFd;

/// The open-file limit after [`raise_nofile_limit`]: the soft limit now in
/// force and the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit (what `open`/`accept` are held to).
    pub soft: u64,
    /// The hard limit (the ceiling an unprivileged process may raise to).
    pub hard: u64,
}

/// Raises this process's open-file soft limit to its hard limit and returns
/// both. `RLIM_INFINITY` hard limits are capped at `fs.nr_open`'s usual
/// default (1,048,576) because Linux refuses a soft limit above it.
///
/// # Errors
/// The `getrlimit` error. A failing `setrlimit` is not an error: the
/// unchanged limit is returned.
#[allow(unsafe_code)] // reason: getrlimit/setrlimit have no safe wrapper in std or mio
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    const NR_OPEN_DEFAULT: u64 = 1 << 20;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let target = if lim.rlim_max == libc::RLIM_INFINITY {
        NR_OPEN_DEFAULT
    } else {
        lim.rlim_max
    };
    if lim.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid `rlimit`; the call only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = target;
        }
    }
    Ok(NofileLimit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// Calls `listen(2)` again on an already listening socket: Linux then only
/// changes the accept backlog (mio binds with 128).
///
/// # Errors
/// The `listen` error.
#[allow(unsafe_code)] // reason: listen(2) with a chosen backlog has no safe wrapper in std or mio
pub fn set_listen_backlog(listener: &impl AsRawFd, backlog: i32) -> io::Result<()> {
    // SAFETY: the descriptor is borrowed from a live listener for the call;
    // `listen` takes no pointers.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_leaves_soft_at_most_hard_and_is_idempotent() {
        let a = raise_nofile_limit().unwrap();
        assert!(a.soft <= a.hard || a.hard == libc::RLIM_INFINITY);
        let b = raise_nofile_limit().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn backlog_can_be_raised_on_a_mio_listener() {
        let l = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        set_listen_backlog(&l, crate::limits::RELAY_LISTEN_BACKLOG).unwrap();
        // Still a working listener.
        let addr = l.local_addr().unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
    }
}
