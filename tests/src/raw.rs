//! Raw frames onto a device, as a VM or a wire would send them (AF_PACKET),
//! for frames no tool in a namespace would build: forged router
//! advertisements, extension-header chains, fragments, S-tags.

use anyhow::{Result, bail};

use crate::netns::{Netns, ThreadNetns};

/// Sends `frame` out of `dev` in the current thread's namespace.
pub fn send(dev: &str, frame: &[u8]) -> Result<()> {
    send_all(dev, std::slice::from_ref(&frame))
}

/// Sends `frames` out of `dev` in the current thread's namespace, through one
/// socket (closing an AF_PACKET socket waits for an RCU grace period: one per
/// frame would make a flood crawl).
fn send_all<F: AsRef<[u8]>>(dev: &str, frames: &[F]) -> Result<()> {
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: if_nametoindex reads a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no device {dev}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: plain socket(2); the fd is owned (and closed) below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    for frame in frames {
        let frame = frame.as_ref();
        // SAFETY: frame and addr are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n != frame.len() as isize {
            bail!("sending {} bytes on {dev}: {}", frame.len(), std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `frames` out of `dev` inside `ns`, from a thread of its own so that
/// the caller's namespace never changes.
pub fn send_in(ns: &Netns, dev: &str, frames: &[Vec<u8>]) -> Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let _inside = ThreadNetns::enter(ns)?;
            send_all(dev, frames)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the sending thread panicked"))?
    })
}
