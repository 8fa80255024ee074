//! The two ethtool facts the XDP stage needs, through the SIOCETHTOOL ioctl
//! (a dozen lines, no crate): a device's driver, and its rx VLAN offload,
//! which must be off while XDP runs so that the tag stays in the frame.

use std::{ffi::c_void, io, os::fd::AsRawFd};

use anyhow::{Context, Result, bail};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_SFLAGS: u32 = 0x26;
/// `ETH_FLAG_RXVLAN`: `NETIF_F_HW_VLAN_CTAG_RX` in the legacy flags word.
const ETH_FLAG_RXVLAN: u32 = 1 << 8;

/// `struct ifreq` with `ifr_data`.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut c_void,
    _union_rest: [u8; 16],
}

/// `struct ethtool_value`.
#[repr(C)]
struct Value {
    cmd: u32,
    data: u32,
}

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    counts: [u32; 5],
}

/// Runs ethtool command `data` (whose first u32 is the command) on `device`.
fn ioctl<T>(device: &str, data: &mut T) -> io::Result<()> {
    let mut req =
        IfReq { name: [0; libc::IFNAMSIZ], data: data as *mut T as *mut c_void, _union_rest: [0; 16] };
    if device.len() >= libc::IFNAMSIZ || device.contains('\0') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    req.name[..device.len()].copy_from_slice(device.as_bytes());
    // SAFETY: creating a socket has no preconditions; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: req points at `data`, a live buffer of the layout the command expects.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req as *mut IfReq) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The driver of `device` (`veth`, `ixgbe`, `virtio_net`, ...).
pub fn driver(device: &str) -> Result<String> {
    // SAFETY: all-zero is a valid DrvInfo (integers and byte arrays).
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    ioctl(device, &mut info).with_context(|| format!("asking {device} for its driver (ETHTOOL_GDRVINFO)"))?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

fn flags(device: &str) -> Result<u32> {
    let mut v = Value { cmd: ETHTOOL_GFLAGS, data: 0 };
    ioctl(device, &mut v).with_context(|| format!("reading {device}'s offload flags (ETHTOOL_GFLAGS)"))?;
    Ok(v.data)
}

/// Whether `device` strips VLAN tags into metadata on receive.
pub fn rx_vlan_offload(device: &str) -> Result<bool> {
    Ok(flags(device)? & ETH_FLAG_RXVLAN != 0)
}

/// Turns `device`'s rx VLAN offload on or off (`ethtool -K <device> rxvlan on|off`).
pub fn set_rx_vlan_offload(device: &str, on: bool) -> Result<()> {
    let old = flags(device)?;
    let new = if on { old | ETH_FLAG_RXVLAN } else { old & !ETH_FLAG_RXVLAN };
    if new == old {
        return Ok(());
    }
    let mut v = Value { cmd: ETHTOOL_SFLAGS, data: new };
    if let Err(e) = ioctl(device, &mut v) {
        let state = if on { "on" } else { "off" };
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            bail!("{device}'s driver cannot turn rx VLAN offload {state}");
        }
        return Err(e).with_context(|| format!("turning {device}'s rx VLAN offload {state}"));
    }
    ensure_state(device, on)
}

fn ensure_state(device: &str, on: bool) -> Result<()> {
    let now = rx_vlan_offload(device)?;
    if now != on {
        bail!("{device}'s rx VLAN offload is still {} after the change", if now { "on" } else { "off" });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_uapi() {
        assert_eq!(size_of::<IfReq>(), 40);
        assert_eq!(size_of::<DrvInfo>(), 196);
    }

    #[test]
    fn names_the_kernel_cannot_take_are_refused_before_the_call() {
        let e =
            ioctl("a-name-that-is-far-too-long", &mut Value { cmd: ETHTOOL_GFLAGS, data: 0 }).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        let e = ioctl("nul\0", &mut Value { cmd: ETHTOOL_GFLAGS, data: 0 }).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }
}
