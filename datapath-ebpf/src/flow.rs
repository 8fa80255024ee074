//! What the security groups and connection tracking see of an IP packet:
//! family, protocol, addresses, ports (or ICMP type, code and identifier),
//! TCP flags, and where the packet stands in its datagram. Every read is
//! bounds-checked; a header that is not there is `Malformed`.

use aya_ebpf::programs::TcContext;
use datapath_common::{DropReason, IP_FAMILY_V4, IP_FAMILY_V6};

use crate::parse::{
    ETH_P_IPV4, ETH_P_IPV6, Frag, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, Ipv4, Ipv6, Pkt, load_be16,
    load_bytes,
};

/// What kind of ICMP message a packet is (`Flow::icmp`).
pub const ICMP_NONE: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 1;
pub const ICMP_ECHO_REPLY: u8 = 2;
/// An error that quotes the packet it is about (destination unreachable, ...).
pub const ICMP_ERROR: u8 = 3;
pub const ICMP_OTHER: u8 = 4;

/// One IP packet as the policy and the connection table see it.
pub struct Flow {
    /// `IP_FAMILY_*`.
    pub family: u8,
    pub proto: u8,
    /// TCP flags (FIN 0x01 ... CWR 0x80); 0 for other protocols.
    pub tcp_flags: u8,
    /// `ICMP_*` for ICMP/ICMPv6, `ICMP_NONE` for other protocols.
    pub icmp: u8,
    /// IPv4 addresses fill the first 4 bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Source port; ICMP echo: the identifier.
    pub sport: u16,
    /// Destination port; ICMP: type << 8 | code, the key of ICMP rules.
    pub dport: u16,
    /// Where the upper-layer header starts.
    pub l4_off: usize,
    pub frag: Frag,
}

/// Whether `proto` has ports that security-group rules match.
pub use datapath_common::proto_has_ports as has_ports;

/// Whether `proto` is the ICMP of `family`.
#[inline(always)]
pub fn is_icmp(family: u8, proto: u8) -> bool {
    (family == IP_FAMILY_V4 && proto == IPPROTO_ICMP) || (family == IP_FAMILY_V6 && proto == IPPROTO_ICMPV6)
}

/// The kind of an ICMP message of `family` with type `t`.
#[inline(always)]
pub fn icmp_kind(family: u8, t: u8) -> u8 {
    match (family, t) {
        (IP_FAMILY_V4, 8) | (IP_FAMILY_V6, 128) => ICMP_ECHO_REQUEST,
        (IP_FAMILY_V4, 0) | (IP_FAMILY_V6, 129) => ICMP_ECHO_REPLY,
        (IP_FAMILY_V4, 3 | 4 | 5 | 11 | 12) | (IP_FAMILY_V6, 1..=4) => ICMP_ERROR,
        _ => ICMP_OTHER,
    }
}

impl Flow {
    /// A flow of nothing, to parse into.
    pub const EMPTY: Flow = Flow {
        family: 0,
        proto: 0,
        tcp_flags: 0,
        icmp: ICMP_NONE,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        l4_off: 0,
        frag: Frag::Whole,
    };

    /// Parses the IP packet at `off` of a frame with `ethertype` into
    /// `self`; false for frames that are not IP (the security groups filter
    /// only IP). A subprogram of its own, writing in place: its parsing
    /// temporaries then never stack on the connection table's keys.
    #[inline(never)]
    pub fn parse(&mut self, ctx: &TcContext, ethertype: u16, off: usize) -> Result<bool, DropReason> {
        let pkt = Pkt::new(ctx);
        match ethertype {
            ETH_P_IPV4 => {
                let ip = Ipv4::parse(ctx, &pkt, off)?;
                self.family = IP_FAMILY_V4;
                self.proto = ip.l4.proto;
                self.l4_off = ip.l4.off;
                self.frag = ip.l4.frag;
                self.src[..4].copy_from_slice(&ip.src);
                self.dst[..4].copy_from_slice(&ip.dst);
            }
            ETH_P_IPV6 => {
                let ip = Ipv6::parse(ctx, &pkt, off)?;
                let l4 = ip.upper(ctx)?;
                self.family = IP_FAMILY_V6;
                self.proto = l4.proto;
                self.l4_off = l4.off;
                self.frag = l4.frag;
                self.src = ip.src;
                self.dst = ip.dst;
            }
            _ => return Ok(false),
        }
        if !matches!(self.frag, Frag::Later(_)) {
            self.read_l4(ctx)?;
        }
        Ok(true)
    }

    #[inline(always)]
    fn read_l4(&mut self, ctx: &TcContext) -> Result<(), DropReason> {
        let off = self.l4_off;
        // One load per header: each is a helper call, on every packet the
        // groups see. A TCP header has at least 20 bytes; the others' ports
        // are their first 4.
        if self.proto == IPPROTO_TCP {
            let h = load_bytes::<14>(ctx, off)?;
            self.sport = u16::from_be_bytes([h[0], h[1]]);
            self.dport = u16::from_be_bytes([h[2], h[3]]);
            self.tcp_flags = h[13];
        } else if has_ports(self.proto) {
            let h = load_bytes::<4>(ctx, off)?;
            self.sport = u16::from_be_bytes([h[0], h[1]]);
            self.dport = u16::from_be_bytes([h[2], h[3]]);
        } else if is_icmp(self.family, self.proto) {
            let [t, code] = load_bytes::<2>(ctx, off)?;
            self.dport = (t as u16) << 8 | code as u16;
            self.icmp = icmp_kind(self.family, t);
            if self.icmp == ICMP_ECHO_REQUEST || self.icmp == ICMP_ECHO_REPLY {
                self.sport = load_be16(ctx, off + 4)?;
            }
        }
        Ok(())
    }
}
