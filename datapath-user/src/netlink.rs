//! The devices of the agent's network namespace, and a wake-up on every link
//! change (RTMGRP_LINK). The agent re-reads the whole device list on each
//! wake-up, so no message needs parsing and a missed one (ENOBUFS) costs nothing.

use std::{
    ffi::CStr,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};
use tokio::io::unix::AsyncFd;

/// Devices in the agent's network namespace: name -> ifindex.
pub type Devices = std::collections::BTreeMap<String, u32>;

/// Every device of the current network namespace: name -> ifindex.
pub fn list_devices() -> Result<Devices> {
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry, freed below.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(io::Error::last_os_error()).context("listing network devices (if_nameindex)");
    }
    let mut devices = Devices::new();
    let mut cur = head;
    // SAFETY: walking the array up to its terminator; names are NUL-terminated.
    unsafe {
        while (*cur).if_index != 0 {
            let name = CStr::from_ptr((*cur).if_name).to_string_lossy().into_owned();
            devices.insert(name, (*cur).if_index);
            cur = cur.add(1);
        }
        libc::if_freenameindex(head);
    }
    Ok(devices)
}

/// A netlink socket subscribed to link events.
pub struct LinkEvents {
    fd: AsyncFd<OwnedFd>,
}

impl LinkEvents {
    /// Subscribes to RTMGRP_LINK in the current network namespace.
    pub fn open() -> Result<Self> {
        // SAFETY: plain socket(2) call; the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("opening a NETLINK_ROUTE socket");
        }
        // SAFETY: raw is a fresh, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid starting value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: addr is a valid sockaddr_nl of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error()).context("subscribing to link events (RTMGRP_LINK)");
        }
        // SAFETY: we own the fd and it stays open (inside the AsyncFd) while registered.
        let fd = unsafe { AsyncFd::register(fd) }
            .map_err(|e| e.into_parts().1)
            .context("registering the netlink socket with tokio")?;
        Ok(Self { fd })
    }

    /// Waits for at least one link event and drains the rest.
    pub async fn changed(&mut self) -> Result<()> {
        loop {
            let mut guard = self.fd.readable().await.context("waiting for link events")?;
            let mut buf = [0u8; 16384];
            let mut got = false;
            loop {
                // SAFETY: buf is valid for writes of its length.
                let n = unsafe {
                    libc::recv(self.fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n >= 0 {
                    got = true;
                    continue;
                }
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    // Overrun: events were lost, which a full re-read covers.
                    Some(libc::ENOBUFS) => {
                        got = true;
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => return Err(err).context("reading link events"),
                }
            }
            guard.clear_ready();
            if got {
                return Ok(());
            }
        }
    }
}
