//! Neutron's port-security rules (architecture.md, "Anti-spoofing"), with
//! the IPv6 extension-header walk and the fragment rules: a first fragment
//! gets the L4 checks and its verdict is remembered; a later fragment gets
//! the source checks and then its datagram's remembered verdict.

use datapath_common::{DropReason, PORT_KIND_VM, PortInfo};

use super::{FragKey, Run, frame::Skb};

const L3: usize = 14;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
/// Extension headers the walk steps over, at most `MAX_EXT_HEADERS` of them.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTS: u8 = 60;
const MAX_EXT_HEADERS: usize = 6;
const ICMPV6_RA: u8 = 134;
const ICMPV6_NA: u8 = 136;

/// Checks a frame of an anti-spoofing port; the tags are gone and the IP header is sane.
pub(super) fn check(run: &mut Run, skb: &Skb, port: &PortInfo) -> Result<(), DropReason> {
    let src: [u8; 6] = skb.take(6)?;
    if !run.model.mac_allowed(run.ingress.ifindex, src) {
        return Err(DropReason::SrcMacSpoof);
    }
    match skb.ethertype()? {
        0x0800 => ipv4(run, skb, port, src),
        0x0806 => arp(run, skb, src),
        0x86dd => ipv6(run, skb, port, src),
        // Other ethertypes pass, as through the hybrid iptables firewall.
        _ => Ok(()),
    }
}

fn drop(r: DropReason) -> Result<(), DropReason> {
    Err(r)
}

/// The remembered verdict of a later fragment's datagram.
fn remembered(run: &Run, key: &FragKey) -> Result<(), DropReason> {
    match run.tables.frags.get(key) {
        None => Err(DropReason::FragUnknown),
        Some(None) => Ok(()),
        Some(Some(r)) => Err(*r),
    }
}

fn ipv4(run: &mut Run, skb: &Skb, port: &PortInfo, mac: [u8; 6]) -> Result<(), DropReason> {
    let hdr: [u8; 20] = skb.take(L3)?;
    let l4 = L3 + (hdr[0] & 0x0f) as usize * 4;
    let src: [u8; 4] = hdr[12..16].try_into().expect("4 bytes");
    let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    let mut key = FragKey {
        ifindex: run.ingress.ifindex,
        src: [0; 16],
        dst: [0; 16],
        id: u16::from_be_bytes([hdr[4], hdr[5]]) as u32,
        proto: hdr[9],
    };
    key.src[..4].copy_from_slice(&src);
    key.dst[..4].copy_from_slice(&hdr[16..20]);
    let src_ok = || {
        if run.model.v4_allowed(run.ingress.ifindex, mac, src) {
            Ok(())
        } else {
            drop(DropReason::Ipv4SrcSpoof)
        }
    };
    if frag & 0x1fff != 0 {
        src_ok()?;
        return remembered(run, &key);
    }
    // The upper-layer rules: no DHCP server from a VM; a DHCP client's
    // request from 0.0.0.0 needs no address.
    let upper = (|| {
        if hdr[9] != IPPROTO_UDP {
            return Ok(false);
        }
        let sport = skb.be16(l4)?;
        let dport = skb.be16(l4 + 2)?;
        if port.kind == PORT_KIND_VM && sport == 67 {
            return Err(DropReason::DhcpServerFromVm);
        }
        Ok(src == [0; 4] && sport == 68 && dport == 67)
    })();
    if frag & 0x2000 != 0 && !run.ingress.dry_run {
        run.tables.frags.insert(key, upper.err());
    }
    if upper? { Ok(()) } else { src_ok() }
}

fn arp(run: &Run, skb: &Skb, mac: [u8; 6]) -> Result<(), DropReason> {
    let off = L3;
    if skb.be16(off + 2)? != 0x0800 || skb.u8(off + 4)? != 6 || skb.u8(off + 5)? != 4 {
        return drop(DropReason::Malformed);
    }
    let sha: [u8; 6] = skb.take(off + 8)?;
    let spa: [u8; 4] = skb.take(off + 14)?;
    let _tpa: [u8; 4] = skb.take(off + 24)?;
    if sha != mac {
        return drop(DropReason::ArpSpoof);
    }
    // An ARP probe (RFC 5227) carries sender IP 0.0.0.0.
    if spa != [0; 4] && !run.model.v4_allowed(run.ingress.ifindex, sha, spa) {
        return drop(DropReason::ArpSpoof);
    }
    Ok(())
}

/// Where a packet stands in its datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frag {
    Whole,
    /// Offset 0, more to come: carries the upper-layer header.
    First(u32, u8),
    /// Offset > 0: no upper-layer header in this frame.
    Later(u32, u8),
}

/// Walks the extension headers to the upper layer: (protocol, offset, fragment state).
fn walk(skb: &Skb) -> Result<(u8, usize, Frag), DropReason> {
    let mut next = skb.u8(L3 + 6)?;
    let mut off = L3 + 40;
    let mut frag = Frag::Whole;
    let mut seen = 0;
    loop {
        let len = match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => (skb.u8(off + 1)? as usize + 1) * 8,
            AUTH => (skb.u8(off + 1)? as usize + 2) * 4,
            FRAGMENT => 8,
            _ => return Ok((next, off, frag)),
        };
        seen += 1;
        if seen > MAX_EXT_HEADERS || off + len > skb.len() {
            return Err(DropReason::Malformed);
        }
        if next == FRAGMENT {
            let h: [u8; 8] = skb.take(off)?;
            let (id, proto) = (u32::from_be_bytes([h[4], h[5], h[6], h[7]]), h[0]);
            let field = u16::from_be_bytes([h[2], h[3]]);
            if field >> 3 != 0 {
                return Ok((proto, off + len, Frag::Later(id, proto)));
            }
            if field & 1 != 0 {
                frag = Frag::First(id, proto);
            }
        }
        next = skb.u8(off)?;
        off += len;
    }
}

fn ipv6(run: &mut Run, skb: &Skb, port: &PortInfo, mac: [u8; 6]) -> Result<(), DropReason> {
    let hdr: [u8; 40] = skb.take(L3)?;
    let src: [u8; 16] = hdr[8..24].try_into().expect("16 bytes");
    let ifindex = run.ingress.ifindex;
    // The unspecified source is what duplicate address detection uses.
    let src_ok = || {
        if src == [0; 16] || run.model.v6_allowed(ifindex, mac, src) {
            Ok(())
        } else {
            drop(DropReason::Ipv6SrcSpoof)
        }
    };
    let (proto, l4, frag) = walk(skb)?;
    let key = |id, proto| FragKey { ifindex, src, dst: hdr[24..40].try_into().expect("16 bytes"), id, proto };
    if let Frag::Later(id, p) = frag {
        src_ok()?;
        return remembered(run, &key(id, p));
    }
    // The upper-layer rules: no DHCPv6 server or router advertisement from a
    // VM, neighbour advertisements only for the port's own addresses.
    let upper = (|| {
        match proto {
            IPPROTO_UDP if port.kind == PORT_KIND_VM && skb.be16(l4)? == 547 => {
                return Err(DropReason::DhcpServerFromVm);
            }
            IPPROTO_ICMPV6 => match skb.u8(l4)? {
                ICMPV6_RA => return Err(DropReason::RaFromVm),
                ICMPV6_NA => {
                    let target: [u8; 16] = skb.take(l4 + 8)?;
                    if !run.model.v6_allowed(ifindex, mac, target) {
                        return Err(DropReason::NdSpoof);
                    }
                }
                _ => {}
            },
            _ => {}
        }
        Ok(())
    })();
    if let Frag::First(id, p) = frag
        && !run.ingress.dry_run
    {
        run.tables.frags.insert(key(id, p), upper.err());
    }
    // A DHCPv6 server is refused whatever its source; the other rules come after the source check.
    if upper == Err(DropReason::DhcpServerFromVm) {
        return upper;
    }
    src_ok()?;
    upper
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv6 frame whose fixed header says `first`, then `chain` bytes.
    fn v6(first: u8, chain: &[u8]) -> Skb {
        let mut b = vec![0u8; 14];
        b[12..14].copy_from_slice(&[0x86, 0xdd]);
        let mut hdr = [0u8; 40];
        hdr[0] = 0x60;
        hdr[4..6].copy_from_slice(&(chain.len() as u16).to_be_bytes());
        hdr[6] = first;
        b.extend_from_slice(&hdr);
        b.extend_from_slice(chain);
        Skb { bytes: b, hw: None, gso_size: 0 }
    }

    /// `n` destination-options headers (8 bytes each), then `upper`.
    fn dst_opts(n: usize, upper: u8) -> Vec<u8> {
        let mut c = Vec::new();
        for i in 0..n {
            let next = if i + 1 == n { upper } else { DEST_OPTS };
            c.extend_from_slice(&[next, 0, 1, 1, 1, 1, 1, 1]);
        }
        c.extend_from_slice(&[136, 0, 0, 0]);
        c
    }

    #[test]
    fn the_walk_takes_six_headers_and_no_more() {
        let (proto, off, frag) = walk(&v6(DEST_OPTS, &dst_opts(6, IPPROTO_ICMPV6))).unwrap();
        assert!(proto == IPPROTO_ICMPV6 && off == 14 + 40 + 48 && frag == Frag::Whole);
        assert_eq!(walk(&v6(DEST_OPTS, &dst_opts(7, IPPROTO_ICMPV6))).err(), Some(DropReason::Malformed));
    }

    #[test]
    fn a_header_past_the_frame_is_malformed_and_ah_counts_in_words() {
        let mut chain = dst_opts(1, IPPROTO_UDP);
        chain[1] = 3; // 32 bytes claimed, 12 present
        assert_eq!(walk(&v6(DEST_OPTS, &chain)).err(), Some(DropReason::Malformed));
        // AH: (hdrlen + 2) * 4 = 12 bytes.
        let ah = [IPPROTO_UDP, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(walk(&v6(AUTH, &ah)).unwrap().1, 14 + 40 + 12);
    }

    #[test]
    fn fragments_first_later_and_atomic() {
        let frag = |field: u16| {
            let mut c = vec![IPPROTO_UDP, 0];
            c.extend_from_slice(&field.to_be_bytes());
            c.extend_from_slice(&[0, 0, 0, 9, 0, 0]);
            c
        };
        assert_eq!(walk(&v6(FRAGMENT, &frag(1))).unwrap().2, Frag::First(9, IPPROTO_UDP));
        assert_eq!(walk(&v6(FRAGMENT, &frag(8 << 3))).unwrap().2, Frag::Later(9, IPPROTO_UDP));
        // Offset 0 and no more fragments: a whole datagram (RFC 6946).
        assert_eq!(walk(&v6(FRAGMENT, &frag(0))).unwrap().2, Frag::Whole);
    }
}
