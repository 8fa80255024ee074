//! Neutron's QoS rules on a port: bandwidth and packet-rate limits in each
//! direction, policed here, and the DSCP mark of what the port sends.
//!
//! Each limit is a GCRA policer (the virtual-scheduling form of a token
//! bucket): a frame conforms while the limit's theoretical arrival time is
//! at most its burst ahead of now, and pushes that time on by its cost. One
//! timestamp per limit, no refill arithmetic. The buckets of all CPUs are
//! one map value, without a lock: a frame is judged on the time it reads,
//! then charged with an atomic add, so that no charge is lost to another
//! CPU's. (A read-then-store lost one now and then: 6 % over a 1 Gbit/s
//! limit with two CPUs sending.) CPUs judging at the same instant
//! may each pass a frame over the burst, once: the long-run rate holds. A
//! port under its limit restarts its time with a plain store, where a
//! racing charge can be lost: it was under the limit.

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, programs::TcContext};
use datapath_common::{DropReason, QosBucket, QosPort};

use crate::{
    maps::{QOS_BUCKETS, QOS_PORTS},
    parse::{ETH_P_IPV4, ETH_P_IPV6},
    skb,
};

/// The QoS limits of port `ifindex` (a device or a subport), if it has any.
#[inline(always)]
pub fn of(ifindex: u32) -> Option<&'static QosPort> {
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected for this run.
    unsafe { QOS_PORTS.get(ifindex) }
}

/// Whether a frame conforms to a limit whose theoretical arrival time is
/// `tat`, charged at `charged_ps` per unit, now that it costs `cost_ps`:
/// another cost is another policy, which starts with a full burst.
#[inline(always)]
fn conforms(tat: u64, charged_ps: u64, cost_ps: u64, burst_ns: u64, now: u64) -> bool {
    let tat = if charged_ps != cost_ps || tat < now { now } else { tat };
    tat - now <= burst_ns
}

/// Charges `units` at `cost_ps` each to the limit at (`tat`, `charged`).
///
/// # Safety
/// Both point into a live `QOS_BUCKETS` value.
#[inline(always)]
unsafe fn charge(tat: *mut u64, charged: *mut u64, cost_ps: u64, units: u64, now: u64) {
    let cost = units * cost_ps / 1000;
    // SAFETY: the caller's pointers; other CPUs write the same words, hence
    // the volatile reads and the atomic add.
    unsafe {
        if read_volatile(charged) != cost_ps || read_volatile(tat) < now {
            write_volatile(tat, now + cost);
            write_volatile(charged, cost_ps);
        } else {
            // The target has no atomic types' read-modify-write (no CAS): the
            // intrinsic is BPF's atomic add, which every kernel we run has.
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(tat, cost);
        }
    }
}

/// Charges the frame to port `ifindex`'s limits in direction `dir`
/// (`QOS_DIR_*`); over either limit, it is dropped and charged to neither.
/// A GSO super-frame counts by its real size: all its bytes, each segment a
/// packet. A dry run (a trace) judges without charging.
#[inline(never)]
pub fn police(
    ctx: &TcContext,
    ifindex: u32,
    qos: &QosPort,
    dir: usize,
    dry_run: bool,
) -> Result<(), DropReason> {
    let dir = dir & 1;
    let (byte_ps, packet_ps) = (qos.ps_per_byte[dir], qos.ps_per_packet[dir]);
    if byte_ps == 0 && packet_ps == 0 {
        return Ok(());
    }
    // SAFETY: reading the time has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let bytes = ctx.len() as u64;
    let segs = skb::gso_segs(ctx).max(1) as u64;
    let bucket = match QOS_BUCKETS.get_ptr_mut(ifindex) {
        Some(b) => b,
        None if dry_run => return Ok(()),
        None => {
            let fresh = QosBucket { tat_ns: [0; 4], cost_ps: [0; 4] };
            // A racing CPU may have made it first: then this insert fails, and the lookup finds it.
            let _ = QOS_BUCKETS.insert(ifindex, fresh, BPF_NOEXIST as u64);
            // A bucket that cannot be made (the LRU is churning) polices nothing.
            let Some(b) = QOS_BUCKETS.get_ptr_mut(ifindex) else { return Ok(()) };
            b
        }
    };
    let (bi, pi) = (dir, 2 + dir);
    // SAFETY: a map value pointer from this lookup, valid for the run; the
    // indices are below 4. Plain integers, read once each (see the module's doc).
    let (byte_tat, byte_cost, packet_tat, packet_cost) = unsafe {
        let b = &raw mut *bucket;
        (
            &raw mut (*b).tat_ns[bi],
            &raw mut (*b).cost_ps[bi],
            &raw mut (*b).tat_ns[pi],
            &raw mut (*b).cost_ps[pi],
        )
    };
    // SAFETY: pointers into the bucket, as above.
    let over = |tat: *mut u64, charged: *mut u64, cost_ps: u64, burst_ns: u64| unsafe {
        cost_ps != 0 && !conforms(read_volatile(tat), read_volatile(charged), cost_ps, burst_ns, now)
    };
    if over(byte_tat, byte_cost, byte_ps, qos.byte_burst_ns[dir])
        || over(packet_tat, packet_cost, packet_ps, qos.packet_burst_ns[dir])
    {
        return Err(DropReason::QosPoliced);
    }
    if dry_run {
        return Ok(());
    }
    // SAFETY: pointers into the bucket, as above.
    unsafe {
        if byte_ps != 0 {
            charge(byte_tat, byte_cost, byte_ps, bytes, now);
        }
        if packet_ps != 0 {
            charge(packet_tat, packet_cost, packet_ps, segs, now);
        }
    }
    Ok(())
}

/// Rewrites the DSCP of an IPv4 or IPv6 packet at `l3_off` to `dscp`,
/// keeping its ECN bits and (IPv4) its header checksum right; other frames
/// are left alone. Returns whether it changed the packet. Moves packet data.
#[inline(never)]
pub fn mark(ctx: &TcContext, ethertype: u16, l3_off: usize, dscp: u8) -> Result<bool, DropReason> {
    let first: [u8; 2] = ctx.load(l3_off).map_err(|_| DropReason::Malformed)?;
    let now = match ethertype {
        ETH_P_IPV4 => [first[0], (dscp << 2) | (first[1] & 0x03)],
        // Version (4 bits), traffic class (8: DSCP then ECN), flow label: the class straddles the bytes.
        ETH_P_IPV6 => {
            let class = (first[0] << 4) | (first[1] >> 4);
            let class = (dscp << 2) | (class & 0x03);
            [(first[0] & 0xf0) | (class >> 4), (class << 4) | (first[1] & 0x0f)]
        }
        _ => return Ok(false),
    };
    if now == first {
        return Ok(false);
    }
    if ethertype == ETH_P_IPV4 {
        // The checksum covers the header as 16-bit words: this one changed.
        let (from, to) = (u16::from_ne_bytes(first) as u64, u16::from_ne_bytes(now) as u64);
        ctx.l3_csum_replace(l3_off + 10, from, to, 2).map_err(|_| DropReason::Malformed)?;
    }
    ctx.store(l3_off, &now, 0).map_err(|_| DropReason::Malformed)?;
    Ok(true)
}
