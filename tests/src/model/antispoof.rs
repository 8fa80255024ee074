//! Neutron's port-security rules (architecture.md, "Anti-spoofing"), with
//! the IPv6 extension-header walk and the fragment rules: a first fragment
//! gets the L4 checks and its verdict is remembered; a later fragment gets
//! the source checks and then its datagram's remembered verdict.

use datapath_common::{DropReason, PORT_KIND_VM, PortInfo};

use super::{FragKey, Reason, Run, frame::Skb};

const L3: usize = 14;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
/// Extension headers the walk steps over, at most `MAX_EXT_HEADERS` of them.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTS: u8 = 60;
const ESP: u8 = 50;
const NO_NEXT: u8 = 59;
const MAX_EXT_HEADERS: usize = 6;
const ICMPV6_RA: u8 = 134;
const ICMPV6_NA: u8 = 136;

/// Checks a frame of an anti-spoofing port; the tags are gone and the IP header is sane.
pub(super) fn check(run: &mut Run, skb: &Skb, port: &PortInfo) -> Result<(), Reason> {
    let src: [u8; 6] = skb.take(6)?;
    if !run.model.mac_allowed(run.ingress.ifindex, src) {
        return Err(DropReason::SrcMacSpoof.into());
    }
    match skb.ethertype()? {
        0x0800 => ipv4(run, skb, port, src),
        0x0806 => arp(run, skb, src),
        0x86dd => ipv6(run, skb, port, src),
        // Other ethertypes pass, as through the hybrid iptables firewall.
        _ => Ok(()),
    }
}

fn drop(r: DropReason) -> Result<(), Reason> {
    Err(r.into())
}

/// The remembered verdict of a later fragment's datagram.
fn remembered(run: &Run, key: &FragKey) -> Result<(), Reason> {
    match run.tables.frags.get(key) {
        None => Err(Reason::FragUnknown),
        Some(None) => Ok(()),
        Some(Some(r)) => Err(*r),
    }
}

fn ipv4(run: &mut Run, skb: &Skb, port: &PortInfo, mac: [u8; 6]) -> Result<(), Reason> {
    let hdr: [u8; 20] = skb.take(L3)?;
    let l4 = L3 + (hdr[0] & 0x0f) as usize * 4;
    let src: [u8; 4] = hdr[12..16].try_into().expect("4 bytes");
    let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    let (offset, more) = (frag & 0x1fff, frag & 0x2000 != 0);
    let mut key = FragKey {
        ifindex: run.ingress.ifindex,
        src: [0; 16],
        dst: [0; 16],
        id: u16::from_be_bytes([hdr[4], hdr[5]]) as u32,
        proto: hdr[9],
    };
    key.src[..4].copy_from_slice(&src);
    key.dst[..4].copy_from_slice(&hdr[16..20]);
    let allowed = run.model.v4_allowed(run.ingress.ifindex, mac, src);
    if offset != 0 {
        if !allowed {
            return drop(DropReason::Ipv4SrcSpoof);
        }
        return remembered(run, &key);
    }
    let verdict = (|| {
        if hdr[9] == IPPROTO_UDP {
            let sport = skb.be16(l4)?;
            let dport = skb.be16(l4 + 2)?;
            if port.kind == PORT_KIND_VM && sport == 67 {
                return drop(DropReason::DhcpServerFromVm);
            }
            // DHCPDISCOVER/REQUEST before the VM has an address.
            if src == [0; 4] && sport == 68 && dport == 67 {
                return Ok(());
            }
        }
        if !allowed {
            return drop(DropReason::Ipv4SrcSpoof);
        }
        Ok(())
    })();
    if more {
        run.tables.frags.insert(key, verdict.err());
    }
    verdict
}

fn arp(run: &Run, skb: &Skb, mac: [u8; 6]) -> Result<(), Reason> {
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

/// Where the IPv6 extension-header walk ended.
enum Upper {
    /// The upper-layer protocol and its offset.
    L4(u8, usize),
    /// ESP or no-next-header: nothing to check beyond the source.
    Opaque,
    /// A fragment with a non-zero offset: no L4 header in this frame.
    LaterFragment,
}

/// Walks the extension headers; returns where it ended and the fragment
/// header's (id, next header, offset) if one was crossed.
fn walk(skb: &Skb) -> Result<(Upper, Option<(u32, u8)>), Reason> {
    let mut next = skb.u8(L3 + 6)?;
    let mut off = L3 + 40;
    let mut frag = None;
    for _ in 0..=MAX_EXT_HEADERS {
        let len = match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS | AUTH | FRAGMENT => {
                let h: [u8; 2] = skb.take(off)?;
                match next {
                    FRAGMENT => 8,
                    AUTH => (h[1] as usize + 2) * 4,
                    _ => (h[1] as usize + 1) * 8,
                }
            }
            ESP | NO_NEXT => return Ok((Upper::Opaque, frag)),
            l4 => return Ok((Upper::L4(l4, off), frag)),
        };
        if off + len > skb.len() {
            return Err(DropReason::Malformed.into());
        }
        if next == FRAGMENT {
            let h: [u8; 8] = skb.take(off)?;
            let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            frag = Some((id, h[0]));
            if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                return Ok((Upper::LaterFragment, frag));
            }
        }
        next = skb.u8(off)?;
        off += len;
    }
    Err(DropReason::Malformed.into())
}

fn ipv6(run: &mut Run, skb: &Skb, port: &PortInfo, mac: [u8; 6]) -> Result<(), Reason> {
    let hdr: [u8; 40] = skb.take(L3)?;
    let src: [u8; 16] = hdr[8..24].try_into().expect("16 bytes");
    let ifindex = run.ingress.ifindex;
    // The unspecified source is what duplicate address detection uses.
    let allowed = src == [0; 16] || run.model.v6_allowed(ifindex, mac, src);
    let (upper, frag) = walk(skb)?;
    let key = frag.map(|(id, proto)| FragKey {
        ifindex,
        src,
        dst: hdr[24..40].try_into().expect("16 bytes"),
        id,
        proto,
    });
    if let Upper::LaterFragment = upper {
        if !allowed {
            return drop(DropReason::Ipv6SrcSpoof);
        }
        return remembered(run, &key.expect("a later fragment has a fragment header"));
    }
    let verdict = (|| {
        let l4 = match upper {
            Upper::L4(proto, off) => Some((proto, off)),
            _ => None,
        };
        if let Some((IPPROTO_UDP, off)) = l4
            && port.kind == PORT_KIND_VM
            && skb.be16(off)? == 547
        {
            return drop(DropReason::DhcpServerFromVm);
        }
        if !allowed {
            return drop(DropReason::Ipv6SrcSpoof);
        }
        if let Some((IPPROTO_ICMPV6, off)) = l4 {
            match skb.u8(off)? {
                ICMPV6_RA => return Err(Reason::RaFromVm),
                ICMPV6_NA => {
                    let target: [u8; 16] = skb.take(off + 8)?;
                    if !run.model.v6_allowed(ifindex, mac, target) {
                        return drop(DropReason::NdSpoof);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    })();
    if let Some(key) = key {
        run.tables.frags.insert(key, verdict.err());
    }
    verdict
}
