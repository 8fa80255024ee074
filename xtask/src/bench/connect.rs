//! The connection-rate client: keeps `in_flight` non-blocking connects
//! outstanding, and closes each connection with a RST the moment its
//! handshake completes (no TIME_WAIT, so the ephemeral ports last).
//!
//! With one in flight the rate is the handshake's round trip: the path's
//! latency and two wake-ups per connection. With several the sending CPU
//! never waits, and the rate is what the path and the end hosts' TCP cost in
//! CPU per connection: the node's capacity for new connections.

use std::{
    io,
    net::SocketAddrV4,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use datapath_tests::netns::reset_on_close;

/// What one run counted between `from` and `until`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counted {
    /// Handshakes completed.
    pub done: u64,
    /// Connects refused, reset or timed out.
    pub failed: u64,
}

/// One outstanding connect.
struct Slot {
    fd: OwnedFd,
    started: Instant,
}

fn open(addr: SocketAddrV4) -> Result<Slot> {
    // SAFETY: plain socket(2); the fd is owned right after.
    let fd = unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a TCP socket");
    }
    // SAFETY: the kernel just handed us this fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    reset_on_close(&fd).context("setting SO_LINGER 0")?;
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid socket and a sockaddr_in of the right size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e).with_context(|| format!("connecting to {addr}"));
        }
    }
    Ok(Slot { fd, started: Instant::now() })
}

/// The socket's pending error: 0 once the handshake completed.
fn so_error(fd: &OwnedFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket, and an int-sized out buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 { libc::EBADF } else { err }
}

/// Connects to `addr` with `in_flight` connects outstanding until `until`,
/// counting what completes or fails after `from`. A connect that takes over
/// `timeout` counts as failed (a lost SYN is retried by the kernel only after
/// a second; giving up sooner keeps one loss from eating the window).
pub fn run(
    addr: SocketAddrV4,
    in_flight: usize,
    timeout: Duration,
    from: Instant,
    until: Instant,
) -> Result<Counted> {
    let mut slots = (0..in_flight.max(1)).map(|_| open(addr)).collect::<Result<Vec<_>>>()?;
    let mut polls: Vec<libc::pollfd> = Vec::with_capacity(slots.len());
    let mut counted = Counted::default();
    loop {
        let now = Instant::now();
        if now >= until {
            return Ok(counted);
        }
        polls.clear();
        polls.extend(slots.iter().map(|s| libc::pollfd {
            fd: s.fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        }));
        let wait = timeout.min(until - now).as_millis().max(1) as libc::c_int;
        // SAFETY: `polls` holds one valid pollfd per slot, and outlives the call.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, wait) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("polling the connects");
        }
        let now = Instant::now();
        let counts = now >= from;
        for (slot, p) in slots.iter_mut().zip(&polls) {
            let ended = if p.revents != 0 {
                if so_error(&slot.fd) == 0 {
                    counted.done += u64::from(counts);
                } else {
                    counted.failed += u64::from(counts);
                }
                true
            } else if now - slot.started > timeout {
                counted.failed += u64::from(counts);
                true
            } else {
                false
            };
            if ended {
                // Replacing the slot closes the old socket: a RST, thanks to SO_LINGER 0.
                *slot = open(addr)?;
            }
        }
    }
}
