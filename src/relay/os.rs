//! The two operating-system facilities the relay needs and neither `std`
//! nor `mio` offers: raising the open-file limit (`rustix`) and a listening
//! socket with a backlog above mio's 128 (`socket2`). Both crates wrap the
//! system calls safely, so this module has no `unsafe`.

use std::io;
use std::net::SocketAddr;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use socket2::{Domain, Socket, Type};

/// The open-file limit after [`raise_nofile_limit`]: the soft limit now in
/// force and the hard limit (`u64::MAX` stands for `RLIM_INFINITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit (what `open`/`accept` are held to).
    pub soft: u64,
    /// The hard limit (the ceiling an unprivileged process may raise to).
    pub hard: u64,
}

/// Raises this process's open-file soft limit to its hard limit and returns
/// both. An unlimited hard limit is capped at `fs.nr_open`'s usual default
/// (1,048,576) because Linux refuses a soft limit above it. A failing
/// `setrlimit` leaves the limit as it was, and that is what is returned
/// (`getrlimit` itself cannot fail for `RLIMIT_NOFILE`).
pub fn raise_nofile_limit() -> NofileLimit {
    const NR_OPEN_DEFAULT: u64 = 1 << 20;
    let lim = getrlimit(Resource::Nofile);
    // `None` is RLIM_INFINITY.
    let mut soft = lim.current.unwrap_or(u64::MAX);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    let target = lim.maximum.unwrap_or(NR_OPEN_DEFAULT);
    if soft < target {
        let raised = Rlimit {
            current: Some(target),
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            soft = target;
        }
    }
    NofileLimit { soft, hard }
}

/// Opens a non-blocking, close-on-exec TCP listener on `addr` with the given
/// accept `backlog`, the way `mio::net::TcpListener::bind` does (including
/// `SO_REUSEADDR`, so a restarted relay rebinds a port with connections in
/// `TIME_WAIT`) except for the backlog, which mio fixes at 128.
///
/// # Errors
/// The `socket`, `setsockopt`, `bind`, `listen` or `fcntl` error.
pub fn bind_listener(addr: SocketAddr, backlog: i32) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_leaves_soft_at_most_hard_and_is_idempotent() {
        let a = raise_nofile_limit();
        assert!(a.soft <= a.hard);
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current.unwrap_or(u64::MAX), a.soft);
        let b = raise_nofile_limit();
        assert_eq!(a, b);
    }

    #[test]
    fn listener_is_nonblocking_reuseaddr_and_accepts() {
        let l = bind_listener("127.0.0.1:0".parse().unwrap(), 4096).unwrap();
        let sock = socket2::SockRef::from(&l);
        assert!(sock.reuse_address().unwrap());
        // Non-blocking: accept with nothing pending returns at once.
        assert_eq!(l.accept().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let addr = l.local_addr().unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        // The handshake is done once connect returned; allow the server side
        // a bounded number of tries to queue it.
        let accepted = (0..1000).find_map(|_| match l.accept() {
            Ok(s) => Some(s),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                std::thread::sleep(std::time::Duration::from_millis(1));
                None
            }
        });
        assert!(accepted.is_some());
    }

    #[test]
    fn ipv6_listener_binds_when_available() {
        // Domain::for_address picks the family from the address.
        if let Ok(l) = bind_listener("[::1]:0".parse().unwrap(), 16) {
            assert!(l.local_addr().unwrap().is_ipv6());
        }
    }
}
