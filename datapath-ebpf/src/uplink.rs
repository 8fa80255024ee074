//! The uplink family: frames from the physical network. The VLAN tag (or its
//! absence, for flat networks) selects the network; the source MAC is learned;
//! the tag is removed and the frame bridged to the local ports only.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use datapath_common::{Action, DropReason, FDB_F_LOCAL, FdbKey, LearnedEntry, SEGMENT_UNTAGGED, SegmentKey};

use crate::{
    forward::{self, From},
    maps::{FDB, FDB_LEARNED, NET_BY_SEGMENT, NETWORKS, PORTS},
    parse::{ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, Eth, Pkt, is_multicast, is_zero},
    skb, stats,
    verdict::{Meta, Verdict},
};

/// A learned entry is rewritten at most this often per MAC, to keep writes off the fast path.
const LEARN_REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn try_uplink(ctx: &TcContext, meta: &mut Meta) -> Result<Verdict, DropReason> {
    let ifindex = skb::ifindex(ctx);
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let port = *unsafe { PORTS.get(ifindex) }.ok_or(DropReason::PortUnknown)?;
    meta.slot = port.stats_slot;

    let pkt = Pkt::linear(ctx);
    let eth = Eth::parse(&pkt)?;
    let (segment, tagged) = match skb::hw_vlan(ctx) {
        Some(vid) => (vid as u32, true),
        None if eth.ethertype == ETH_P_8021Q => ((pkt.be16_at(ETH_LEN)? & 0x0fff) as u32, true),
        None if eth.ethertype == ETH_P_8021AD => return Err(DropReason::UnknownSegment),
        None => (SEGMENT_UNTAGGED, false),
    };
    let seg_key = SegmentKey { ifindex, segment };
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let net_index = *unsafe { NET_BY_SEGMENT.get(seg_key) }.ok_or(DropReason::UnknownSegment)?;
    meta.net_index = net_index;
    // SAFETY: as above.
    let net = *unsafe { NETWORKS.get(net_index) }.ok_or(DropReason::NoNetwork)?;

    if is_multicast(&eth.src) || is_zero(&eth.src) {
        return Err(DropReason::SrcMacInvalid);
    }
    learn(meta, ifindex, &eth.src)?;
    if tagged {
        skb::vlan_pop(ctx)?;
    }
    forward::forward(ctx, meta, &net, ifindex, From::Uplink, &eth.dst)
}

/// Learns (or refreshes) the source MAC as living behind this uplink. A local
/// port's MAC is never learned from the wire: such a frame is a spoof or a loop.
#[inline(always)]
fn learn(meta: &Meta, ifindex: u32, src: &[u8; 6]) -> Result<(), DropReason> {
    let key = FdbKey { net_index: meta.net_index, mac: *src, _pad: [0; 2] };
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected for this run.
    if let Some(entry) = unsafe { FDB.get(key) } {
        if entry.flags & FDB_F_LOCAL != 0 {
            return Err(DropReason::UplinkSrcIsLocal);
        }
        // Statically known remote MACs need no learning.
        return Ok(());
    }
    if meta.dry_run {
        return Ok(());
    }
    // SAFETY: reading the time has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: LRU value read; a racing writer only refreshes the same entry.
    if let Some(seen) = unsafe { FDB_LEARNED.get(key) }
        && seen.ifindex == ifindex
        && now.wrapping_sub(seen.last_seen_ns) < LEARN_REFRESH_NS
    {
        return Ok(());
    }
    let entry = LearnedEntry { ifindex, vtep_ipv4: 0, last_seen_ns: now };
    // A full LRU evicts the oldest entry; an insert error leaves the MAC unknown (flooded).
    if FDB_LEARNED.insert(key, entry, 0).is_ok() {
        stats::count_action(meta.slot, Action::Learned, 1);
    }
    Ok(())
}
