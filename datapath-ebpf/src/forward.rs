//! Bridging inside one network: FDB lookup, delivery to a local port, to the
//! wire (the uplink, tagged with the segmentation id; or a tunnel, with the
//! remote VTEP and VNI as tunnel key), or flooding.
//!
//! Flooding clones with `bpf_clone_redirect` to every target but one and
//! redirects the original to that one, so a flood costs one copy per extra
//! target and never a drop of the original. Local ports come first: the VLAN
//! tag (or tunnel key) is only set once they have their copies.

use aya_ebpf::{bindings::TC_ACT_REDIRECT, cty::c_void, helpers::generated::bpf_loop, programs::TcContext};
use datapath_common::{
    Action, DropReason, FDB_F_LOCAL, FdbKey, FloodSet, LearnedEntry, MAX_FLOOD_PORTS, MAX_FLOOD_VTEPS,
    NET_TYPE_VLAN, NET_TYPE_VXLAN, NetInfo, VtepSet, is_subport,
};

use crate::{
    maps::{FDB, FDB_LEARNED, FLOOD_SETS, FLOOD_VTEPS, SUBPORTS},
    parse::{ETH_LEN, is_multicast},
    skb, stats, trace,
    verdict::{Meta, Verdict},
};

/// Where the frame entered the network on this node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// A VM or namespace port.
    Port,
    /// The wire: the uplink of a physical network, or a tunnel.
    Wire,
}

/// One destination and what the frame needs on its way there.
#[derive(Clone, Copy)]
struct Target {
    ifindex: u32,
    /// VLAN id to push (VLAN uplink); 0 for none.
    vlan: u32,
    /// Remote VTEP (tunnel); 0 for none.
    vtep: u32,
    vni: u32,
}

impl Target {
    const NONE: Target = Target { ifindex: 0, vlan: 0, vtep: 0, vni: 0 };

    /// Local port `ifindex`: its device, or for a subport its parent's tap
    /// with the subport's VLAN id pushed (the VM's own tag, never on the wire).
    #[inline(always)]
    fn port(ifindex: u32) -> Result<Self, DropReason> {
        if !is_subport(ifindex) {
            return Ok(Target { ifindex, vlan: 0, vtep: 0, vni: 0 });
        }
        // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
        let sub = *unsafe { SUBPORTS.get(ifindex) }.ok_or(DropReason::RedirectFailed)?;
        Ok(Target { ifindex: sub.parent_ifindex, vlan: sub.vid, vtep: 0, vni: 0 })
    }

    /// The wire target of `net` towards `vtep` (ignored for VLAN/flat networks).
    fn wire(net: &NetInfo, vtep: u32) -> Self {
        if net.net_type == NET_TYPE_VXLAN {
            return Target { ifindex: net.uplink_ifindex, vlan: 0, vtep, vni: net.segmentation_id };
        }
        let vlan = if net.net_type == NET_TYPE_VLAN { net.segmentation_id } else { 0 };
        Target { ifindex: net.uplink_ifindex, vlan, vtep: 0, vni: 0 }
    }
}

/// Delivers a frame of network `meta.net_index` to `dst`.
#[inline(always)]
pub fn forward(
    ctx: &TcContext,
    meta: &Meta,
    net: &NetInfo,
    ingress: u32,
    from: From,
    dst: &[u8; 6],
) -> Result<Verdict, DropReason> {
    if is_multicast(dst) {
        return flood(ctx, meta, net, ingress, from);
    }
    let key = FdbKey { net_index: meta.net_index, mac: *dst, _pad: [0; 2] };
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected for this run.
    if let Some(entry) = unsafe { FDB.get(key) } {
        if entry.flags & FDB_F_LOCAL != 0 {
            if entry.ifindex == ingress {
                return Err(DropReason::Hairpin);
            }
            return send(ctx, meta, Target::port(entry.ifindex)?, Action::ToLocalPort);
        }
        return to_wire(ctx, meta, net, from, entry.vtep_ipv4);
    }
    // SAFETY: read-only use of an LRU value; a concurrent update only refreshes it.
    if let Some(seen) = unsafe { FDB_LEARNED.get(key) } {
        return to_wire(ctx, meta, net, from, seen.vtep_ipv4);
    }
    flood(ctx, meta, net, ingress, from)
}

/// A learned entry is rewritten at most this often per MAC, to keep writes off the fast path.
const LEARN_REFRESH_NS: u64 = 1_000_000_000;

/// Whether `seen` (at `now`) already says what learning a frame from
/// `ifindex` (and `vtep_ipv4`) would write: then nothing is rewritten.
#[inline(always)]
pub fn learned_fresh(seen: &LearnedEntry, ifindex: u32, vtep_ipv4: u32, now: u64) -> bool {
    seen.ifindex == ifindex
        && seen.vtep_ipv4 == vtep_ipv4
        && now.wrapping_sub(seen.last_seen_ns) < LEARN_REFRESH_NS
}

/// Learns (or refreshes) `src` as living behind `ifindex` (and `vtep` for tunnels).
/// A local port's MAC is never learned from the wire: such a frame is a spoof or a loop.
#[inline(always)]
pub fn learn(meta: &Meta, ifindex: u32, vtep_ipv4: u32, src: &[u8; 6]) -> Result<(), DropReason> {
    let key = FdbKey { net_index: meta.net_index, mac: *src, _pad: [0; 2] };
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected for this run.
    if let Some(entry) = unsafe { FDB.get(key) } {
        if entry.flags & FDB_F_LOCAL != 0 {
            return Err(DropReason::UplinkSrcIsLocal);
        }
        // Statically known remote MACs (l2population) need no learning.
        return Ok(());
    }
    if meta.dry_run {
        return Ok(());
    }
    // SAFETY: reading the time has no preconditions.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    // SAFETY: LRU value read; a racing writer only refreshes the same entry.
    if let Some(seen) = unsafe { FDB_LEARNED.get(key) }
        && learned_fresh(seen, ifindex, vtep_ipv4, now)
    {
        return Ok(());
    }
    let entry = LearnedEntry { ifindex, vtep_ipv4, last_seen_ns: now };
    // A full LRU evicts the oldest entry; an insert error leaves the MAC unknown (flooded).
    if FDB_LEARNED.insert(key, entry, 0).is_ok() {
        stats::count_action(meta.slot, Action::Learned, 1);
    }
    Ok(())
}

/// A destination on the wire: only frames from local ports go there.
#[inline(always)]
fn to_wire(
    ctx: &TcContext,
    meta: &Meta,
    net: &NetInfo,
    from: From,
    vtep: u32,
) -> Result<Verdict, DropReason> {
    if from == From::Wire {
        return Err(DropReason::Hairpin);
    }
    if net.uplink_ifindex == 0 {
        return Err(DropReason::NoUplink);
    }
    if net.net_type == NET_TYPE_VXLAN {
        if vtep == 0 {
            return Err(DropReason::NoVtep);
        }
        check_tunnel_mtu(ctx, net)?;
    }
    send(ctx, meta, Target::wire(net, vtep), Action::ToUplink)
}

/// Frames larger than the network MTU cannot be encapsulated into the
/// underlay; GSO super-frames are cut to the sender's MSS, which the MTU bounds.
#[inline(always)]
fn check_tunnel_mtu(ctx: &TcContext, net: &NetInfo) -> Result<(), DropReason> {
    if skb::gso_size(ctx) == 0 && ctx.len() > net.mtu + ETH_LEN as u32 {
        return Err(DropReason::MtuExceeded);
    }
    Ok(())
}

/// What a frame needs before it leaves towards `t`: a tunnel key, a VLAN tag.
/// May move packet data.
#[inline(always)]
fn prepare(ctx: &TcContext, t: &Target) -> Result<(), DropReason> {
    if t.vtep != 0 {
        skb::set_tunnel(ctx, t.vtep, t.vni)?;
    }
    if t.vlan != 0 {
        skb::vlan_push(ctx, t.vlan)?;
    }
    Ok(())
}

/// Sends the frame itself to local port `ifindex` (a device or a subport).
#[inline(always)]
pub fn send_to_port(
    ctx: &TcContext,
    meta: &Meta,
    ifindex: u32,
    action: Action,
) -> Result<Verdict, DropReason> {
    send(ctx, meta, Target::port(ifindex)?, action)
}

/// Sends the frame itself to `t`.
#[inline(always)]
fn send(ctx: &TcContext, meta: &Meta, t: Target, action: Action) -> Result<Verdict, DropReason> {
    if meta.trace {
        trace::target(t.ifindex, t.vlan, t.vtep, t.vni);
    }
    prepare(ctx, &t)?;
    Ok(Verdict { action, ret: skb::redirect(t.ifindex)? })
}

/// One extra copy of a flooded frame. A failed copy is counted (not as a
/// drop: the flooded frame itself goes on), and the flood goes on.
#[inline(always)]
fn copy(ctx: &TcContext, meta: &Meta, t: &Target) {
    if meta.trace {
        trace::target(t.ifindex, t.vlan, t.vtep, t.vni);
        return;
    }
    let prepared = prepare(ctx, t).is_ok();
    let mut done = prepared && ctx.clone_redirect(t.ifindex, 0).is_ok();
    // Only a subport's copy carries a tag (a VLAN wire target takes the
    // original, last): it comes off again before the next target's copy.
    if prepared && t.vlan != 0 && skb::vlan_pop(ctx).is_err() {
        done = false;
    }
    count_copy(meta, done);
}

/// Counts one flood copy, made or failed.
#[inline(always)]
fn count_copy(meta: &Meta, done: bool) {
    if !meta.dry_run {
        stats::count_action(meta.slot, if done { Action::FloodCopies } else { Action::FloodCopyFailed }, 1);
    }
}

/// What the `bpf_loop` callbacks of a flood need. Nothing in it changes
/// while they run: Linux 6.1 verifies a callback once, with the state of the
/// first call, and treats branches on values it then knew as dead code, so
/// state carried from one iteration to the next would be miscompiled there.
struct Flood<'a> {
    ctx: &'a TcContext,
    meta: &'a Meta,
    net: &'a NetInfo,
    ingress: u32,
    /// The port that takes the frame itself (not a copy); 0 when a wire target does.
    original: u32,
    ports: *const FloodSet,
    vteps: *const VtepSet,
}

/// `bpf_loop` callback: a copy to member `i` of the network's flood set,
/// unless it is the ingress or takes the original. Looping with the helper
/// keeps verification to one pass over the body: an unrolled walk of 64
/// members (then 64 VTEPs) is more than Linux 6.1's verifier accepts.
#[inline(never)]
extern "C" fn flood_port(i: u64, flood: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `flood` was given: a live Flood.
    let f = unsafe { &*(flood as *const Flood) };
    // SAFETY: a map value pointer from a lookup in this run.
    let set = unsafe { &*f.ports };
    let Some(target) = at(&set.ifindex, i as usize) else { return 1 };
    if target != 0 && target != f.ingress && target != f.original {
        match Target::port(target) {
            Ok(t) => copy(f.ctx, f.meta, &t),
            Err(_) if !f.meta.dry_run => count_copy(f.meta, false),
            Err(_) => {}
        }
    }
    0
}

/// `bpf_loop` callback: a copy to remote VTEP `i` of the network (head-end replication).
#[inline(never)]
extern "C" fn flood_vtep(i: u64, flood: *mut c_void) -> i64 {
    // SAFETY: as in flood_port.
    let f = unsafe { &*(flood as *const Flood) };
    // SAFETY: a map value pointer from a lookup in this run.
    let set = unsafe { &*f.vteps };
    let Some(vtep) = at(&set.vtep_ipv4, i as usize) else { return 1 };
    if vtep != 0 {
        copy(f.ctx, f.meta, &Target::wire(f.net, vtep));
    }
    0
}

/// Runs `body` for 0..n (at most `max`) over `flood`.
#[inline(always)]
fn walk(n: u32, max: usize, body: extern "C" fn(u64, *mut c_void) -> i64, flood: &Flood) {
    let n = if n as usize > max { max as u32 } else { n };
    // SAFETY: `body` is a static BPF subprogram and `flood` outlives the call.
    unsafe { bpf_loop(n, body as *mut c_void, flood as *const Flood as *mut c_void, 0) };
}

/// `a[i]` when `i` is in range. `i` goes through an opaque (volatile) copy
/// first: LLVM otherwise checks `i - 1` in one register and addresses with
/// `i` in another, whose bound the verifier cannot see.
#[inline(always)]
fn at<const N: usize>(a: &[u32; N], i: usize) -> Option<u32> {
    // SAFETY: a read of a local.
    let i = unsafe { core::ptr::read_volatile(&i) };
    a.get(i).copied()
}

/// The last member of `set` that may take a flooded frame: not the ingress.
/// The agent writes the members densely, so at most one of the last two is out.
#[inline(always)]
fn last_member(set: &FloodSet, ingress: u32) -> u32 {
    let count = set.count as usize;
    for back in 1..=2 {
        if back > count {
            break;
        }
        if let Some(t) = at(&set.ifindex, count - back)
            && t != 0
            && t != ingress
        {
            return t;
        }
    }
    0
}

/// Broadcast, multicast and unknown unicast: every local port of the network
/// but the ingress, plus (for frames from local ports) the uplink, or every
/// remote VTEP that hosts a port of the network (head-end replication).
///
/// The frame itself goes last, to the wire target if there is one (the VLAN
/// is pushed after the ports got their copies), else to the last member; all
/// other targets get copies (`bpf_clone_redirect`), N targets cost N-1 copies.
#[inline(always)]
fn flood(
    ctx: &TcContext,
    meta: &Meta,
    net: &NetInfo,
    ingress: u32,
    from: From,
) -> Result<Verdict, DropReason> {
    // SAFETY: NO_PREALLOC hash: the values are RCU-protected for this run.
    let ports = unsafe { FLOOD_SETS.get(meta.net_index) };
    let mut vteps = None;
    let mut last = Target::NONE;
    if from == From::Port && net.uplink_ifindex != 0 {
        if net.net_type != NET_TYPE_VXLAN {
            last = Target::wire(net, 0);
        } else if check_tunnel_mtu(ctx, net).is_err() {
            // Local ports still get it; the tunnel cannot carry it.
            if !meta.dry_run {
                stats::count_action(meta.slot, Action::FloodTunnelMtu, 1);
            }
        // SAFETY: as above.
        } else if let Some(set) = unsafe { FLOOD_VTEPS.get(meta.net_index) } {
            let n = set.count as usize;
            if n > 0
                && let Some(vtep) = at(&set.vtep_ipv4, n - 1)
                && vtep != 0
            {
                last = Target::wire(net, vtep);
                vteps = Some(set);
            }
        }
    }
    let mut original = 0;
    if last.ifindex == 0
        && let Some(set) = ports
    {
        original = last_member(set, ingress);
        if original != 0 {
            last = Target::port(original)?;
        }
    }
    if last.ifindex == 0 {
        return Err(DropReason::FloodNoTarget);
    }
    let f = Flood {
        ctx,
        meta,
        net,
        ingress,
        original,
        ports: ports.map_or(core::ptr::null(), |p| p as *const FloodSet),
        vteps: vteps.map_or(core::ptr::null(), |v| v as *const VtepSet),
    };
    if let Some(set) = ports {
        walk(set.count, MAX_FLOOD_PORTS, flood_port, &f);
    }
    if let Some(set) = vteps {
        // The last VTEP takes the frame itself.
        walk(set.count - 1, MAX_FLOOD_VTEPS - 1, flood_vtep, &f);
    }
    send(ctx, meta, last, Action::Flooded)?;
    Ok(Verdict { action: Action::Flooded, ret: TC_ACT_REDIRECT })
}
