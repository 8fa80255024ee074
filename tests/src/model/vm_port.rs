//! The VM-port family (architecture.md, "VM port ingress"): port state, VM
//! tags, L2 control frames, IP sanity, anti-spoofing, the ARP responder of
//! tunnel networks, then bridging.

use datapath_common::{
    Action, ArpKey, DropReason, NET_TYPE_VXLAN, PORT_F_ADMIN_UP, PORT_F_ANTI_SPOOF, PORT_F_BOUND,
};

use super::{
    Decision, Run, Target, antispoof,
    forward::{self, From},
    frame::{ETH_LEN, Skb, TPID_8021AD, is_vlan},
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

pub(super) fn decide(run: &mut Run, skb: &mut Skb) -> Decision {
    use DropReason::*;
    let ifindex = run.ingress.ifindex;
    let port = run.model.port(ifindex).ok_or(PortUnknown)?;
    if port.flags & PORT_F_BOUND == 0 {
        return Err(PortUnbound);
    }
    if port.flags & PORT_F_ADMIN_UP == 0 {
        return Err(PortAdminDown);
    }
    run.net_index = port.net_index;
    strip_priority_tag(skb)?;
    let src: [u8; 6] = skb.take(6)?;
    let dst: [u8; 6] = skb.take(0)?;
    let ethertype = skb.ethertype()?;
    if src[0] & 1 != 0 || src == [0; 6] {
        return Err(SrcMacInvalid);
    }
    if dst[..5] == [0x01, 0x80, 0xc2, 0, 0] && dst[5] & 0xf0 == 0 {
        return Err(L2Control);
    }
    match ethertype {
        ETH_P_IPV4 => ipv4_sane(skb)?,
        ETH_P_IPV6 => ipv6_sane(skb)?,
        _ => {}
    }
    if port.flags & PORT_F_ANTI_SPOOF != 0 {
        antispoof::check(run, skb, &port)?;
    }
    let net = run.model.network(port.net_index).ok_or(NoNetwork)?;
    if net.net_type == NET_TYPE_VXLAN
        && ethertype == ETH_P_ARP
        && let Some(reply) = arp_reply(run, skb)?
    {
        return Ok(reply);
    }
    forward::forward(run, skb, &net, From::Port, dst)
}

/// A VM owns no VLANs: a priority tag (802.1Q, VID 0) is stripped; any
/// other tag, any 802.1ad tag, or a second tag is `vm_tagged`.
fn strip_priority_tag(skb: &mut Skb) -> Result<(), DropReason> {
    if let Some(hw) = skb.hw {
        if hw.proto == TPID_8021AD || hw.vid() != 0 {
            return Err(DropReason::VmTagged);
        }
        skb.vlan_pop()?;
    }
    let ethertype = skb.ethertype()?;
    if is_vlan(ethertype) {
        if ethertype == TPID_8021AD || skb.be16(ETH_LEN)? & 0x0fff != 0 {
            return Err(DropReason::VmTagged);
        }
        skb.vlan_pop()?;
    }
    if skb.hw.is_some() || is_vlan(skb.ethertype()?) {
        return Err(DropReason::VmTagged);
    }
    Ok(())
}

/// IPv4 sanity on every VM-port frame: version 4, IHL >= 5, a total length
/// that holds the header and fits in the frame; zero only on a GSO frame.
fn ipv4_sane(skb: &Skb) -> Result<(), DropReason> {
    let first = skb.u8(ETH_LEN)?;
    let ihl = (first & 0x0f) as usize * 4;
    if first >> 4 != 4 || ihl < 20 {
        return Err(DropReason::Malformed);
    }
    ip_len_fits(skb, skb.be16(ETH_LEN + 2)? as usize, 0, ihl)?;
    skb.take::<20>(ETH_LEN)?;
    Ok(())
}

/// IPv6 sanity: version 6, the payload within the frame; zero only on a GSO frame.
fn ipv6_sane(skb: &Skb) -> Result<(), DropReason> {
    if skb.u8(ETH_LEN)? >> 4 != 6 {
        return Err(DropReason::Malformed);
    }
    ip_len_fits(skb, skb.be16(ETH_LEN + 4)? as usize, 40, 40)?;
    skb.take::<40>(ETH_LEN)?;
    Ok(())
}

/// `len` (counted from `base` bytes into the IP header) must hold `hdr`
/// bytes and end within the frame; a zero length (BIG TCP) only on GSO.
fn ip_len_fits(skb: &Skb, len: usize, base: usize, hdr: usize) -> Result<(), DropReason> {
    let fits = if len == 0 {
        skb.gso_size != 0 && ETH_LEN + hdr <= skb.len()
    } else {
        base + len >= hdr && ETH_LEN + base + len <= skb.len()
    };
    if fits { Ok(()) } else { Err(DropReason::Malformed) }
}

/// The ARP responder: a request for a known address in the network comes
/// back to the asker as the owner's reply; `None` when it does not apply.
fn arp_reply(run: &Run, skb: &mut Skb) -> Result<Option<(Action, Vec<Target>)>, DropReason> {
    let off = ETH_LEN;
    if skb.be16(off + 2)? != ETH_P_IPV4 || skb.u8(off + 4)? != 6 || skb.u8(off + 5)? != 4 {
        return Err(DropReason::Malformed);
    }
    if skb.be16(off + 6)? != 1 {
        return Ok(None);
    }
    let sha: [u8; 6] = skb.take(off + 8)?;
    let spa: [u8; 4] = skb.take(off + 14)?;
    let tpa: [u8; 4] = skb.take(off + 24)?;
    let src: [u8; 6] = skb.take(6)?;
    let key = ArpKey { net_index: run.net_index, ipv4: tpa };
    let Some(owner) = run.model.state.arp.get(&key).map(|e| e.mac) else { return Ok(None) };
    if owner == src {
        return Ok(None);
    }
    let b = &mut skb.bytes;
    b[0..6].copy_from_slice(&src);
    b[6..12].copy_from_slice(&owner);
    b[off + 6..off + 8].copy_from_slice(&2u16.to_be_bytes());
    b[off + 8..off + 14].copy_from_slice(&owner);
    b[off + 14..off + 18].copy_from_slice(&tpa);
    b[off + 18..off + 24].copy_from_slice(&sha);
    b[off + 24..off + 28].copy_from_slice(&spa);
    Ok(Some((Action::ArpReplied, vec![Target::port(run.ingress.ifindex)])))
}
