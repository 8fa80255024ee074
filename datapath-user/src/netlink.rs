//! The devices of the agent's network namespace, and the link changes
//! (RTMGRP_LINK) that keep the agent's copy of the list current. Listing
//! costs about 17 ms with 4,000 taps, so the agent lists only at start, on
//! its periodic resync, and when events were lost (ENOBUFS); in between it
//! applies each event's name and ifindex.

use std::{
    collections::BTreeSet,
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

/// The device (name, ifindex) that holds IPv4 address `addr`, if one does.
pub fn device_with_ipv4(addr: std::net::Ipv4Addr) -> Result<Option<(String, u32)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error()).context("listing addresses (getifaddrs)");
    }
    let mut found = None;
    let mut cur = head;
    // SAFETY: walking the list getifaddrs returned; every name is NUL-terminated and
    // an AF_INET address is a sockaddr_in.
    unsafe {
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                if u32::from_be(sin.sin_addr.s_addr) == u32::from(addr) {
                    let name = CStr::from_ptr((*cur).ifa_name).to_string_lossy().into_owned();
                    let index = libc::if_nametoindex((*cur).ifa_name);
                    found = Some((name, index));
                    break;
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    Ok(found.filter(|(_, i)| *i != 0))
}

/// What link events said since the last call.
#[derive(Debug, Default, PartialEq)]
pub struct LinkChanges {
    /// ifindex -> its name now, or None when the device went; in arrival order.
    pub changes: Vec<(u32, Option<String>)>,
    /// Events were lost: only a full listing is right.
    pub overrun: bool,
}

impl LinkChanges {
    /// Applies the changes to `devices`. Returns the names that came, went or
    /// changed ifindex (a rename gives both names).
    pub fn apply(&self, devices: &mut Devices) -> BTreeSet<String> {
        let mut moved = BTreeSet::new();
        for (ifindex, name) in &self.changes {
            if let Some(name) = name
                && devices.get(name) == Some(ifindex)
            {
                continue;
            }
            // Gone, or renamed: the old name of this ifindex goes.
            devices.retain(|old, i| {
                let keep = i != ifindex;
                if !keep {
                    moved.insert(old.clone());
                }
                keep
            });
            if let Some(name) = name {
                devices.insert(name.clone(), *ifindex);
                moved.insert(name.clone());
            }
        }
        moved
    }
}

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFLA_IFNAME: u16 = 3;

/// Parses one buffer of RTM_NEWLINK/RTM_DELLINK messages into `out`; any
/// other message is skipped, and a truncated one ends the buffer and asks
/// for a listing (what it said is lost).
fn parse_link_messages(buf: &[u8], out: &mut LinkChanges) {
    let u16_at = |b: &[u8], at: usize| b.get(at..at + 2).map(|x| u16::from_ne_bytes([x[0], x[1]]));
    let u32_at =
        |b: &[u8], at: usize| b.get(at..at + 4).map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]));
    let mut off = 0;
    while off < buf.len() {
        let (Some(len), Some(kind)) = (u32_at(buf, off), u16_at(buf, off + 4)) else {
            out.overrun = true;
            return;
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            out.overrun = true;
            return;
        }
        let msg = &buf[off..off + len];
        off += (len + 3) & !3;
        if kind != libc::RTM_NEWLINK && kind != libc::RTM_DELLINK {
            continue;
        }
        let Some(ifindex) = u32_at(msg, NLMSG_HDRLEN + 4).filter(|i| *i != 0) else { continue };
        if kind == libc::RTM_DELLINK {
            out.changes.push((ifindex, None));
            continue;
        }
        let mut at = NLMSG_HDRLEN + IFINFOMSG_LEN;
        let mut name = None;
        while let (Some(alen), Some(atype)) = (u16_at(msg, at), u16_at(msg, at + 2)) {
            let alen = alen as usize;
            if alen < 4 || at + alen > msg.len() {
                break;
            }
            if atype & 0x3fff == IFLA_IFNAME {
                let raw = &msg[at + 4..at + alen];
                let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
                name = Some(String::from_utf8_lossy(&raw[..end]).into_owned());
            }
            at += (alen + 3) & !3;
        }
        match name {
            Some(n) => out.changes.push((ifindex, Some(n))),
            // A NEWLINK without a name cannot be applied: list again.
            None => out.overrun = true,
        }
    }
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
    pub async fn changed(&mut self) -> Result<LinkChanges> {
        let mut out = LinkChanges::default();
        loop {
            let mut guard = self.fd.readable().await.context("waiting for link events")?;
            let got = self.drain(&mut out)?;
            guard.clear_ready();
            if got {
                return Ok(out);
            }
        }
    }

    /// The events that arrived since, without waiting; None when there are none.
    pub fn pending(&mut self) -> Option<Result<LinkChanges>> {
        let mut out = LinkChanges::default();
        match self.drain(&mut out) {
            Ok(true) => Some(Ok(out)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Reads every queued message into `out`. Returns whether there was any.
    fn drain(&self, out: &mut LinkChanges) -> Result<bool> {
        let mut buf = vec![0u8; 65536];
        let mut got = false;
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                got = true;
                parse_link_messages(&buf[..n as usize], out);
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(got),
                // Overrun: events were lost, which a full listing covers.
                Some(libc::ENOBUFS) => {
                    got = true;
                    out.overrun = true;
                }
                Some(libc::EINTR) => {}
                _ => return Err(err).context("reading link events"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One rtnetlink link message as the kernel sends it.
    fn link_msg(kind: u16, ifindex: u32, name: Option<&str>) -> Vec<u8> {
        let mut attrs = Vec::new();
        // An attribute before the name (IFLA_MTU), as the kernel sends several.
        attrs.extend_from_slice(&8u16.to_ne_bytes());
        attrs.extend_from_slice(&4u16.to_ne_bytes());
        attrs.extend_from_slice(&1500u32.to_ne_bytes());
        if let Some(n) = name {
            let len = 4 + n.len() + 1;
            attrs.extend_from_slice(&(len as u16).to_ne_bytes());
            attrs.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
            attrs.extend_from_slice(n.as_bytes());
            attrs.push(0);
            attrs.resize((attrs.len() + 3) & !3, 0);
        }
        let len = NLMSG_HDRLEN + IFINFOMSG_LEN + attrs.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&[0u8; 4]);
        m.extend_from_slice(&ifindex.to_ne_bytes());
        m.extend_from_slice(&[0u8; 8]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn new_renamed_and_deleted_links_update_the_list() {
        let mut buf = link_msg(libc::RTM_NEWLINK, 7, Some("tapaaaaaaaa-00"));
        buf.extend(link_msg(libc::RTM_NEWLINK, 8, Some("eth2")));
        buf.extend(link_msg(libc::RTM_DELLINK, 5, None));
        let mut c = LinkChanges::default();
        parse_link_messages(&buf, &mut c);
        assert_eq!(c.changes, vec![(7, Some("tapaaaaaaaa-00".into())), (8, Some("eth2".into())), (5, None)]);
        assert!(!c.overrun);
        let mut devices: Devices = [("old".to_string(), 5), ("eth2-old".to_string(), 8)].into();
        let moved: Vec<String> = c.apply(&mut devices).into_iter().collect();
        assert_eq!(moved, ["eth2", "eth2-old", "old", "tapaaaaaaaa-00"]);
        assert_eq!(devices, [("tapaaaaaaaa-00".to_string(), 7), ("eth2".to_string(), 8)].into());
        assert!(c.apply(&mut devices).is_empty(), "the same events again change nothing");
    }

    #[test]
    fn hostile_buffers_end_the_parse_without_a_panic() {
        let good = link_msg(libc::RTM_NEWLINK, 7, Some("tap1"));
        for cut in 0..good.len() {
            let mut c = LinkChanges::default();
            parse_link_messages(&good[..cut], &mut c);
            assert!(c.changes.is_empty(), "a truncated message is not applied (cut at {cut})");
            assert_eq!(c.overrun, cut > 0, "and the list is read again (cut at {cut})");
        }
        // A length that points past the buffer, and one below the header.
        let mut bad = good.clone();
        bad[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
        let mut c = LinkChanges::default();
        parse_link_messages(&bad, &mut c);
        assert!(c.changes.is_empty());
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        parse_link_messages(&bad, &mut c);
        assert!(c.changes.is_empty());
        // A NEWLINK without a name asks for a listing.
        parse_link_messages(&link_msg(libc::RTM_NEWLINK, 9, None), &mut c);
        assert!(c.overrun);
    }
}
