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
pub use datapath_common::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

pub const DHCPV4_SERVER_PORT: u16 = 67;
pub const DHCPV4_CLIENT_PORT: u16 = 68;
pub const DHCPV6_CLIENT_PORT: u16 = 546;
pub const DHCPV6_SERVER_PORT: u16 = 547;
pub const ICMPV6_MLD_QUERY: u8 = 130;
pub const ICMPV6_ROUTER_ADVERT: u8 = 134;
pub const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;

/// Headers the programs read live in the first bytes; pulling that much into
/// the linear area once lets every later read use direct packet access. The
/// deepest direct read is an IPv6 header behind an 802.1Q tag (58 bytes);
/// everything further in (IPv4 options, IPv6 extension headers, upper-layer
/// headers) is read with `load_*`, which reach the fragments. No more than
/// that: a TCP frame from a guest's stack carries its headers (66 bytes with
/// timestamps) in the linear area and its payload in fragments, and pulling
/// payload into a cloned skb (TCP keeps the original for retransmission)
/// reallocates its head, on every frame.
const LINEAR_WANT: u32 = 64;

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

    /// The frame an XDP program sees: always linear (the uplinks run XDP on
    /// frames of at most one page).
    #[inline(always)]
    pub fn xdp(ctx: &aya_ebpf::programs::XdpContext) -> Self {
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

/// Where a packet stands in its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented: the upper-layer header follows the IP headers.
    Whole,
    /// The first fragment (offset 0, more to come): it carries the upper-layer header.
    First(FragId),
    /// A later fragment: it carries no upper-layer header.
    Later(FragId),
}

/// What ties the fragments of one datagram together (with the addresses).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FragId {
    pub id: u32,
    /// IPv4: the protocol; IPv6: the fragment header's next header.
    pub proto: u8,
}

/// The upper layer of an IP packet: its protocol, where its header starts,
/// and whether the packet is a fragment.
pub struct L4 {
    pub proto: u8,
    pub off: usize,
    pub frag: Frag,
}

/// The fields of an IPv4 header the programs use.
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub l4: L4,
}

impl Ipv4 {
    /// Parses and sanity-checks the header at `off`: version, header length,
    /// and a total length that covers the header and fits in the frame.
    #[inline(always)]
    pub fn parse(ctx: &TcContext, pkt: &Pkt, off: usize) -> Result<Self, DropReason> {
        let vihl = pkt.u8_at(off)?;
        let hdr = ((vihl & 0x0f) as usize) * 4;
        if vihl >> 4 != 4 || hdr < 20 {
            return Err(DropReason::Malformed);
        }
        check_ip_len(ctx, off, pkt.be16_at(off + 2)? as usize, 0, hdr)?;
        let id = pkt.be16_at(off + 4)? as u32;
        let frag_field = pkt.be16_at(off + 6)?;
        let proto = pkt.u8_at(off + 9)?;
        let fid = FragId { id, proto };
        let frag = if frag_field & IPV4_FRAG_OFFSET != 0 {
            Frag::Later(fid)
        } else if frag_field & IPV4_MORE_FRAGMENTS != 0 {
            Frag::First(fid)
        } else {
            Frag::Whole
        };
        Ok(Self {
            src: pkt.bytes_at(off + 12)?,
            dst: pkt.bytes_at(off + 16)?,
            l4: L4 { proto, off: off + hdr, frag },
        })
    }
}

const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV4_FRAG_OFFSET: u16 = 0x1fff;

/// Checks an IP length field against the frame: `len` (the datagram, counted
/// from `off + base`) must hold `hdr` bytes of header and fit in the frame.
/// A zero length is valid only on a GSO frame (BIG TCP leaves it 0).
#[inline(always)]
fn check_ip_len(ctx: &TcContext, off: usize, len: usize, base: usize, hdr: usize) -> Result<(), DropReason> {
    let frame = ctx.len() as usize;
    if len == 0 {
        if crate::skb::gso_size(ctx) == 0 || off + hdr > frame {
            return Err(DropReason::Malformed);
        }
        return Ok(());
    }
    if len + base < hdr || off + base + len > frame {
        return Err(DropReason::Malformed);
    }
    Ok(())
}

/// The fields of an IPv6 header the programs use.
pub struct Ipv6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The fixed header's next header.
    pub next: u8,
    /// Where the first header after the fixed one starts.
    pub next_off: usize,
}

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before the upper layer; a longer chain fails closed.
pub const IPV6_MAX_EXT_HEADERS: usize = 6;

impl Ipv6 {
    /// Parses the fixed header at `off` and checks the payload length against the frame.
    #[inline(always)]
    pub fn parse(ctx: &TcContext, pkt: &Pkt, off: usize) -> Result<Self, DropReason> {
        if pkt.u8_at(off)? >> 4 != 6 {
            return Err(DropReason::Malformed);
        }
        check_ip_len(ctx, off, pkt.be16_at(off + 4)? as usize, 40, 40)?;
        Ok(Self {
            next: pkt.u8_at(off + 6)?,
            src: pkt.bytes_at(off + 8)?,
            dst: pkt.bytes_at(off + 24)?,
            next_off: off + 40,
        })
    }

    /// Walks the extension headers (hop-by-hop, routing, fragment,
    /// destination options, AH) to the upper layer, as ip6tables does. They
    /// may lie beyond the linear area, so they are read with
    /// `bpf_skb_load_bytes`. A truncated chain, or one longer than
    /// `IPV6_MAX_EXT_HEADERS`, is `Malformed`. A later fragment ends the walk:
    /// what follows its fragment header is payload, not a header.
    #[inline(always)]
    pub fn upper(&self, ctx: &TcContext) -> Result<L4, DropReason> {
        let mut next = self.next;
        let mut off = self.next_off;
        let mut frag = Frag::Whole;
        for _ in 0..IPV6_MAX_EXT_HEADERS {
            let len = match next {
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                    (load_u8(ctx, off + 1)? as usize + 1) * 8
                }
                IPPROTO_AH => (load_u8(ctx, off + 1)? as usize + 2) * 4,
                IPPROTO_FRAGMENT => {
                    let field = load_be16(ctx, off + 2)?;
                    let fid = FragId { id: load_be32(ctx, off + 4)?, proto: load_u8(ctx, off)? };
                    if field & 0xfff8 != 0 {
                        frag = Frag::Later(fid);
                    } else if field & 1 != 0 {
                        frag = Frag::First(fid);
                    }
                    8
                }
                _ => return Ok(L4 { proto: next, off, frag }),
            };
            next = load_u8(ctx, off)?;
            off += len;
            if off > ctx.len() as usize {
                return Err(DropReason::Malformed);
            }
            if let Frag::Later(_) = frag {
                return Ok(L4 { proto: next, off, frag });
            }
        }
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
                Err(DropReason::Malformed)
            }
            _ => Ok(L4 { proto: next, off, frag }),
        }
    }
}

/// Checks the IP header (if the frame has one) against the frame: every port
/// gets this, with or without port security. A subprogram of its own, so
/// that its locals stay off the frames of its callers.
#[inline(never)]
pub fn check_ip(ctx: &TcContext, pkt: &Pkt, ethertype: u16, off: usize) -> Result<(), DropReason> {
    match ethertype {
        ETH_P_IPV4 => Ipv4::parse(ctx, pkt, off).map(drop),
        ETH_P_IPV6 => Ipv6::parse(ctx, pkt, off).map(drop),
        _ => Ok(()),
    }
}

/// A byte at `off` anywhere in the frame (linear or not).
#[inline(always)]
pub fn load_u8(ctx: &TcContext, off: usize) -> Result<u8, DropReason> {
    ctx.load::<u8>(off).map_err(|_| DropReason::Malformed)
}

/// A big-endian u16 at `off` anywhere in the frame, in host order.
#[inline(always)]
pub fn load_be16(ctx: &TcContext, off: usize) -> Result<u16, DropReason> {
    Ok(u16::from_be_bytes(load_bytes(ctx, off)?))
}

/// A big-endian u32 at `off` anywhere in the frame, in host order.
#[inline(always)]
pub fn load_be32(ctx: &TcContext, off: usize) -> Result<u32, DropReason> {
    Ok(u32::from_be_bytes(load_bytes(ctx, off)?))
}

/// `N` bytes at `off` anywhere in the frame.
#[inline(always)]
pub fn load_bytes<const N: usize>(ctx: &TcContext, off: usize) -> Result<[u8; N], DropReason> {
    ctx.load::<[u8; N]>(off).map_err(|_| DropReason::Malformed)
}
