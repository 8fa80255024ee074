//! Raw frames onto a device, as a VM or a wire would send them (AF_PACKET),
//! for frames no tool in a namespace would build: forged router
//! advertisements, extension-header chains, fragments, S-tags.

use anyhow::{Result, bail};

use crate::netns::{Netns, ThreadNetns};

/// Sends `frame` out of `dev` in the current thread's namespace.
pub fn send(dev: &str, frame: &[u8]) -> Result<()> {
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: if_nametoindex reads a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no device {dev}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    // SAFETY: frame and addr are valid for the lengths passed.
    let n = unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    if n != frame.len() as isize {
        bail!("sending {} bytes on {dev}: {err}", frame.len());
    }
    Ok(())
}

/// Sends `frames` out of `dev` inside `ns`, from a thread of its own so that
/// the caller's namespace never changes.
pub fn send_in(ns: &Netns, dev: &str, frames: &[Vec<u8>]) -> Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let _inside = ThreadNetns::enter(ns)?;
            frames.iter().try_for_each(|f| send(dev, f))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the sending thread panicked"))?
    })
}
