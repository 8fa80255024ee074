//! The ARP responder of tunnel networks: a request for the IPv4 address of
//! any port the bindings know in the network is answered on the node, as the
//! OVS agent's ARP responder does, and never flooded into the tunnels.

use aya_ebpf::programs::TcContext;
use datapath_common::{Action, ArpKey, DropReason};

use crate::{
    forward,
    maps::ARP_TABLE,
    parse::{ETH_LEN, ETH_P_IPV4, Eth, Pkt},
    verdict::{Meta, Verdict},
};

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// Answers `eth`'s ARP request from the port `ingress` if the target is
/// known; `None` when the frame is not such a request. Rewrites the frame.
#[inline(always)]
pub fn respond(
    ctx: &TcContext,
    meta: &Meta,
    ingress: u32,
    pkt: &Pkt,
    eth: &Eth,
) -> Result<Option<Verdict>, DropReason> {
    let off = ETH_LEN;
    if pkt.be16_at(off + 2)? != ETH_P_IPV4 || pkt.u8_at(off + 4)? != 6 || pkt.u8_at(off + 5)? != 4 {
        return Err(DropReason::Malformed);
    }
    if pkt.be16_at(off + 6)? != ARP_REQUEST {
        return Ok(None);
    }
    let sha: [u8; 6] = pkt.bytes_at(off + 8)?;
    let spa: [u8; 4] = pkt.bytes_at(off + 14)?;
    let tpa: [u8; 4] = pkt.bytes_at(off + 24)?;
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let Some(entry) = (unsafe { ARP_TABLE.get(ArpKey { net_index: meta.net_index, ipv4: tpa }) }).copied()
    else {
        return Ok(None);
    };
    if entry.mac == eth.src {
        // Duplicate address detection of the owner itself: let it through.
        return Ok(None);
    }
    // The reply, in place: to the asker, from the owner of the address.
    store(ctx, 0, &eth.src)?;
    store(ctx, 6, &entry.mac)?;
    store(ctx, off + 6, &ARP_REPLY.to_be_bytes())?;
    store(ctx, off + 8, &entry.mac)?;
    store(ctx, off + 14, &tpa)?;
    store(ctx, off + 18, &sha)?;
    store(ctx, off + 24, &spa)?;
    // Back to the asker: a subport's reply gets its VLAN id.
    forward::send_to_port(ctx, meta, ingress, Action::ArpReplied).map(Some)
}

/// Writes bytes into the frame (un-cloning it first if needed). Moves packet data.
#[inline(always)]
fn store<const N: usize>(ctx: &TcContext, off: usize, bytes: &[u8; N]) -> Result<(), DropReason> {
    ctx.store(off, bytes, 0).map_err(|_| DropReason::Malformed)
}
