//! Bounds-checked header access. Every byte of a frame is hostile: each read
//! checks against `data_end` explicitly and fails as `Malformed`.

use aya_ebpf::programs::TcContext;
use datapath_common::DropReason;

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Headers the programs read live in the first bytes; pulling that much into
/// the linear area once lets every later read use direct packet access.
const LINEAR_WANT: u32 = 128;

/// The linear part of a frame, re-derived after every helper that may move it.
pub struct Pkt {
    data: usize,
    end: usize,
}

impl Pkt {
    /// Pointers to the current linear data of `ctx`.
    #[inline(always)]
    pub fn new(ctx: &TcContext) -> Self {
        Self { data: ctx.data(), end: ctx.data_end() }
    }

    /// Like `new`, first pulling up to `LINEAR_WANT` bytes of a non-linear skb
    /// (GSO frames from veth/tap may carry headers in fragments).
    #[inline(always)]
    pub fn linear(ctx: &TcContext) -> Self {
        let pkt = Self::new(ctx);
        let want = if ctx.len() < LINEAR_WANT { ctx.len() } else { LINEAR_WANT };
        if pkt.data + (want as usize) > pkt.end {
            // A failed pull leaves the frame as it was; the bounds checks
            // below then report what is missing as Malformed.
            let _ = ctx.pull_data(want);
            return Self::new(ctx);
        }
        pkt
    }

    /// Pointer to a `T` at `off`, if the whole `T` lies inside the frame.
    #[inline(always)]
    pub fn ptr<T>(&self, off: usize) -> Result<*const T, DropReason> {
        let start = self.data + off;
        if start + core::mem::size_of::<T>() > self.end {
            return Err(DropReason::Malformed);
        }
        Ok(start as *const T)
    }

    #[inline(always)]
    pub fn u8_at(&self, off: usize) -> Result<u8, DropReason> {
        // SAFETY: bounds checked by `ptr`.
        Ok(unsafe { *self.ptr::<u8>(off)? })
    }

    /// A big-endian u16 at `off`, in host order.
    #[inline(always)]
    pub fn be16_at(&self, off: usize) -> Result<u16, DropReason> {
        // SAFETY: bounds checked by `ptr`; unaligned read of plain bytes.
        let raw = unsafe { core::ptr::read_unaligned(self.ptr::<[u8; 2]>(off)?) };
        Ok(u16::from_be_bytes(raw))
    }

    #[inline(always)]
    pub fn bytes_at<const N: usize>(&self, off: usize) -> Result<[u8; N], DropReason> {
        // SAFETY: bounds checked by `ptr`; unaligned read of plain bytes.
        Ok(unsafe { core::ptr::read_unaligned(self.ptr::<[u8; N]>(off)?) })
    }
}

/// The Ethernet header of a frame.
pub struct Eth {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Host order.
    pub ethertype: u16,
}

impl Eth {
    #[inline(always)]
    pub fn parse(pkt: &Pkt) -> Result<Self, DropReason> {
        Ok(Self { dst: pkt.bytes_at(0)?, src: pkt.bytes_at(6)?, ethertype: pkt.be16_at(12)? })
    }
}

/// Group bit set: broadcast or multicast.
#[inline(always)]
pub fn is_multicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

#[inline(always)]
pub fn is_zero(mac: &[u8; 6]) -> bool {
    (mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]) == 0
}

/// IEEE 802.1D reserved group addresses 01:80:c2:00:00:0x (STP, pause, LLDP, 802.1X).
#[inline(always)]
pub fn is_l2_control(dst: &[u8; 6]) -> bool {
    dst[0] == 0x01 && dst[1] == 0x80 && dst[2] == 0xc2 && dst[3] == 0 && dst[4] == 0 && dst[5] & 0xf0 == 0
}

/// The fields of an IPv4 header the programs use.
pub struct Ipv4 {
    pub src: [u8; 4],
    pub proto: u8,
    /// Offset of the L4 header.
    pub l4_off: usize,
}

impl Ipv4 {
    #[inline(always)]
    pub fn parse(pkt: &Pkt, off: usize) -> Result<Self, DropReason> {
        let vihl = pkt.u8_at(off)?;
        let ihl = (vihl & 0x0f) as usize;
        if vihl >> 4 != 4 || ihl < 5 {
            return Err(DropReason::Malformed);
        }
        let proto = pkt.u8_at(off + 9)?;
        let src = pkt.bytes_at(off + 12)?;
        // Bound the options so the verifier (and the reader) know l4_off <= off + 60.
        Ok(Self { src, proto, l4_off: off + ihl * 4 })
    }
}

/// The fields of an IPv6 header the programs use (no extension-header walk).
pub struct Ipv6 {
    pub src: [u8; 16],
    pub next: u8,
    pub l4_off: usize,
}

impl Ipv6 {
    #[inline(always)]
    pub fn parse(pkt: &Pkt, off: usize) -> Result<Self, DropReason> {
        if pkt.u8_at(off)? >> 4 != 6 {
            return Err(DropReason::Malformed);
        }
        Ok(Self { next: pkt.u8_at(off + 6)?, src: pkt.bytes_at(off + 8)?, l4_off: off + 40 })
    }
}
