//! Neutron's port-security rules for frames a port sends: source MAC, IPv4
//! and IPv6 source, ARP sender, neighbour-advertisement target, no DHCP
//! server replies and no router advertisements from VMs. Used only for ports
//! with `PORT_F_ANTI_SPOOF`.
//!
//! The upper-layer rules look past IPv6 extension headers, and a later
//! fragment (which has no upper-layer header) gets the verdict its first
//! fragment got.

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use datapath_common::{ADDR_KEY_FIXED_BITS, AddrKeyV4, AddrKeyV6, DropReason, MacKey, PORT_KIND_VM};

use crate::{
    frag,
    maps::{ALLOWED_MACS, ALLOWED_V4, ALLOWED_V6, FRAG_VERDICTS},
    parse::{
        DHCPV4_CLIENT_PORT, DHCPV4_SERVER_PORT, DHCPV6_SERVER_PORT, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, Eth,
        Frag, ICMPV6_NEIGHBOR_ADVERT, ICMPV6_ROUTER_ADVERT, IPPROTO_ICMPV6, IPPROTO_UDP, Ipv4, Ipv6, L4, Pkt,
        load_be16, load_bytes, load_u8,
    },
};

/// The port a frame comes from, as the checks need it.
pub struct From {
    pub ifindex: u32,
    pub kind: u8,
    /// A trace against live maps: remember no fragment.
    pub dry_run: bool,
}

/// Checks the frame against the port's allowed (MAC, IP) pairs and the
/// upper-layer rules. A BPF subprogram of its own: its locals (addresses,
/// LPM and fragment keys) then never add to the stack of the flood's
/// `bpf_loop` callbacks, which Linux 6.1 caps at 512 bytes for the chain.
#[inline(never)]
pub fn check(ctx: &TcContext, pkt: &Pkt, eth: &Eth, l3_off: usize, port: &From) -> Result<(), DropReason> {
    // The IP header is checked against the frame first, as on every port.
    crate::parse::check_ip(ctx, pkt, eth.ethertype, l3_off)?;
    let mac_key = MacKey { ifindex: port.ifindex, mac: eth.src, _pad: [0; 2] };
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected for this run.
    if unsafe { ALLOWED_MACS.get(mac_key) }.is_none() {
        return Err(DropReason::SrcMacSpoof);
    }
    match eth.ethertype {
        ETH_P_IPV4 => check_ipv4(ctx, pkt, eth, l3_off, port),
        ETH_P_IPV6 => check_ipv6(ctx, pkt, eth, l3_off, port),
        ETH_P_ARP => check_arp(pkt, eth, l3_off, port.ifindex),
        // Like the hybrid firewall, which filters only IP: other ethertypes pass.
        _ => Ok(()),
    }
}

#[inline(always)]
fn v4_allowed(ifindex: u32, mac: [u8; 6], addr: [u8; 4]) -> bool {
    let key = Key::new(ADDR_KEY_FIXED_BITS + 32, AddrKeyV4 { ifindex, mac, _pad: [0; 2], addr });
    ALLOWED_V4.get(&key).is_some()
}

#[inline(always)]
fn v6_allowed(ifindex: u32, mac: [u8; 6], addr: [u8; 16]) -> bool {
    let key = Key::new(ADDR_KEY_FIXED_BITS + 128, AddrKeyV6 { ifindex, mac, _pad: [0; 2], addr });
    ALLOWED_V6.get(&key).is_some()
}

// Subprograms of their own, like `check`: their keys share no frame.
#[inline(never)]
fn check_ipv4(ctx: &TcContext, pkt: &Pkt, eth: &Eth, off: usize, port: &From) -> Result<(), DropReason> {
    let ip = &Ipv4::parse(ctx, pkt, off)?;
    let src_ok = || {
        if v4_allowed(port.ifindex, eth.src, ip.src) { Ok(()) } else { Err(DropReason::Ipv4SrcSpoof) }
    };
    let dhcp_discover = match ip.l4.frag {
        Frag::Later(fid) => {
            src_ok()?;
            return frag::verdict_of(&FRAG_VERDICTS, &frag::key_v4(port.ifindex, ip.src, ip.dst, fid));
        }
        Frag::First(fid) => {
            let upper = ipv4_upper(ctx, ip, port.kind);
            let key = frag::key_v4(port.ifindex, ip.src, ip.dst, fid);
            frag::remember(&FRAG_VERDICTS, &key, &upper.map(|_| ()), port.dry_run);
            upper?
        }
        Frag::Whole => ipv4_upper(ctx, ip, port.kind)?,
    };
    // DHCPDISCOVER/REQUEST before the VM has an address.
    if dhcp_discover { Ok(()) } else { src_ok() }
}

/// The upper-layer rules of IPv4: no DHCP server from a VM. Returns whether
/// the packet is a DHCP client's request from 0.0.0.0, which needs no address.
#[inline(always)]
fn ipv4_upper(ctx: &TcContext, ip: &Ipv4, kind: u8) -> Result<bool, DropReason> {
    if ip.l4.proto != IPPROTO_UDP {
        return Ok(false);
    }
    let sport = load_be16(ctx, ip.l4.off)?;
    let dport = load_be16(ctx, ip.l4.off + 2)?;
    if kind == PORT_KIND_VM && sport == DHCPV4_SERVER_PORT {
        return Err(DropReason::DhcpServerFromVm);
    }
    Ok(ip.src == [0; 4] && sport == DHCPV4_CLIENT_PORT && dport == DHCPV4_SERVER_PORT)
}

#[inline(never)]
fn check_arp(pkt: &Pkt, eth: &Eth, off: usize, ifindex: u32) -> Result<(), DropReason> {
    // htype(2) ptype(2) hlen(1) plen(1) oper(2) sha(6) spa(4) tha(6) tpa(4)
    if pkt.be16_at(off + 2)? != ETH_P_IPV4 || pkt.u8_at(off + 4)? != 6 || pkt.u8_at(off + 5)? != 4 {
        return Err(DropReason::Malformed);
    }
    let sha: [u8; 6] = pkt.bytes_at(off + 8)?;
    let spa: [u8; 4] = pkt.bytes_at(off + 14)?;
    let _tpa: [u8; 4] = pkt.bytes_at(off + 24)?;
    if sha != eth.src {
        return Err(DropReason::ArpSpoof);
    }
    // An ARP probe (RFC 5227) carries sender IP 0.0.0.0.
    if spa != [0; 4] && !v4_allowed(ifindex, sha, spa) {
        return Err(DropReason::ArpSpoof);
    }
    Ok(())
}

#[inline(never)]
fn check_ipv6(ctx: &TcContext, pkt: &Pkt, eth: &Eth, off: usize, port: &From) -> Result<(), DropReason> {
    let ip = &Ipv6::parse(ctx, pkt, off)?;
    // The unspecified source is what duplicate address detection uses.
    let src_ok = || {
        if ip.src == [0; 16] || v6_allowed(port.ifindex, eth.src, ip.src) {
            Ok(())
        } else {
            Err(DropReason::Ipv6SrcSpoof)
        }
    };
    let l4 = ip.upper(ctx)?;
    let upper = match l4.frag {
        Frag::Later(fid) => {
            src_ok()?;
            return frag::verdict_of(&FRAG_VERDICTS, &frag::key_v6(port.ifindex, ip.src, ip.dst, fid));
        }
        Frag::First(fid) => {
            let upper = ipv6_upper(ctx, eth, &l4, port);
            frag::remember(
                &FRAG_VERDICTS,
                &frag::key_v6(port.ifindex, ip.src, ip.dst, fid),
                &upper,
                port.dry_run,
            );
            upper
        }
        Frag::Whole => ipv6_upper(ctx, eth, &l4, port),
    };
    // A DHCPv6 server is refused whatever its source, as before the source check.
    if upper == Err(DropReason::DhcpServerFromVm) {
        return upper;
    }
    src_ok()?;
    upper
}

/// The upper-layer rules of IPv6: no DHCPv6 server and no router
/// advertisement from a VM, and neighbour advertisements only for the
/// port's own addresses.
#[inline(always)]
fn ipv6_upper(ctx: &TcContext, eth: &Eth, l4: &L4, port: &From) -> Result<(), DropReason> {
    match l4.proto {
        IPPROTO_UDP => {
            if port.kind == PORT_KIND_VM && load_be16(ctx, l4.off)? == DHCPV6_SERVER_PORT {
                return Err(DropReason::DhcpServerFromVm);
            }
        }
        IPPROTO_ICMPV6 => match load_u8(ctx, l4.off)? {
            ICMPV6_ROUTER_ADVERT => return Err(DropReason::RaFromVm),
            ICMPV6_NEIGHBOR_ADVERT => {
                let target: [u8; 16] = load_bytes(ctx, l4.off + 8)?;
                if !v6_allowed(port.ifindex, eth.src, target) {
                    return Err(DropReason::NdSpoof);
                }
            }
            _ => {}
        },
        _ => {}
    }
    Ok(())
}
