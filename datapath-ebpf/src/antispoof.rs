//! Neutron's port-security rules for frames a port sends: source MAC, IPv4
//! and IPv6 source, ARP sender, neighbour-advertisement target, and no DHCP
//! server replies from VMs. Used only for ports with `PORT_F_ANTI_SPOOF`.

use aya_ebpf::maps::lpm_trie::Key;
use datapath_common::{ADDR_KEY_FIXED_BITS, AddrKeyV4, AddrKeyV6, DropReason, MacKey, PORT_KIND_VM};

use crate::{
    maps::{ALLOWED_MACS, ALLOWED_V4, ALLOWED_V6},
    parse::{ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, Eth, IPPROTO_ICMPV6, IPPROTO_UDP, Ipv4, Ipv6, Pkt},
};

const DHCPV4_SERVER_PORT: u16 = 67;
const DHCPV4_CLIENT_PORT: u16 = 68;
const DHCPV6_SERVER_PORT: u16 = 547;
const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;

/// Checks the frame against the port's allowed (MAC, IP) pairs.
#[inline(always)]
pub fn check(pkt: &Pkt, eth: &Eth, l3_off: usize, ifindex: u32, kind: u8) -> Result<(), DropReason> {
    let mac_key = MacKey { ifindex, mac: eth.src, _pad: [0; 2] };
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected for this run.
    if unsafe { ALLOWED_MACS.get(mac_key) }.is_none() {
        return Err(DropReason::SrcMacSpoof);
    }
    match eth.ethertype {
        ETH_P_IPV4 => check_ipv4(pkt, eth, l3_off, ifindex, kind),
        ETH_P_ARP => check_arp(pkt, eth, l3_off, ifindex),
        ETH_P_IPV6 => check_ipv6(pkt, eth, l3_off, ifindex, kind),
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

#[inline(always)]
fn check_ipv4(pkt: &Pkt, eth: &Eth, off: usize, ifindex: u32, kind: u8) -> Result<(), DropReason> {
    let ip = Ipv4::parse(pkt, off)?;
    if ip.proto == IPPROTO_UDP {
        let sport = pkt.be16_at(ip.l4_off)?;
        let dport = pkt.be16_at(ip.l4_off + 2)?;
        if kind == PORT_KIND_VM && sport == DHCPV4_SERVER_PORT {
            return Err(DropReason::DhcpServerFromVm);
        }
        // DHCPDISCOVER/REQUEST before the VM has an address.
        if ip.src == [0; 4] && sport == DHCPV4_CLIENT_PORT && dport == DHCPV4_SERVER_PORT {
            return Ok(());
        }
    }
    if !v4_allowed(ifindex, eth.src, ip.src) {
        return Err(DropReason::Ipv4SrcSpoof);
    }
    Ok(())
}

#[inline(always)]
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

#[inline(always)]
fn check_ipv6(pkt: &Pkt, eth: &Eth, off: usize, ifindex: u32, kind: u8) -> Result<(), DropReason> {
    let ip = Ipv6::parse(pkt, off)?;
    if ip.next == IPPROTO_UDP && kind == PORT_KIND_VM && pkt.be16_at(ip.l4_off)? == DHCPV6_SERVER_PORT {
        return Err(DropReason::DhcpServerFromVm);
    }
    // The unspecified source is what duplicate address detection uses.
    if ip.src != [0; 16] && !v6_allowed(ifindex, eth.src, ip.src) {
        return Err(DropReason::Ipv6SrcSpoof);
    }
    if ip.next == IPPROTO_ICMPV6 && pkt.u8_at(ip.l4_off)? == ICMPV6_NEIGHBOR_ADVERT {
        let target: [u8; 16] = pkt.bytes_at(ip.l4_off + 8)?;
        if !v6_allowed(ifindex, eth.src, target) {
            return Err(DropReason::NdSpoof);
        }
    }
    Ok(())
}
