//! Connection tracking for stateful security groups, in a map of our own
//! (the kernel's conntrack kfuncs are out of reach of aya 0.14).
//!
//! Each port keeps its own entries, keyed by the connection as the port sees
//! it (its end first), so the port is the zone. An entry remembers who opened
//! the connection, whether a reply came, and TCP's FIN and RST; its lifetime
//! (`ct_lifetime_ns`) follows from that. The TCP checks are Linux
//! conntrack's without window tracking: invalid flag combinations drop, a
//! new connection starts with a SYN or (picked up mid-stream, as with
//! `nf_conntrack_tcp_loose`) an ACK.

use aya_ebpf::programs::TcContext;
use datapath_common::{
    CT_F_CLOSING, CT_F_FIN_ORIG, CT_F_FIN_REPLY, CT_F_INGRESS, CT_F_REPLIED, CT_F_RST, CtEntry, CtKey,
    DropReason, IP_FAMILY_V4, SG_DIR_INGRESS, ct_lifetime_ns,
};

use crate::{
    flow::{Flow, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_NONE, has_ports, icmp_kind, is_icmp},
    maps::{CONNTRACK, CT_CLOSING},
    parse::{IPPROTO_TCP, load_be16, load_bytes, load_u8},
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;

/// An entry's `last_seen_ns` is rewritten at most this often, to keep writes off the fast path.
const REFRESH_NS: u64 = 1_000_000_000;

/// What the connection table says about a packet.
pub enum Seen {
    /// Part of (or related to) a live connection: it passes.
    Tracked,
    /// Not part of one: the rules decide, and an admitted packet opens one.
    New,
}

/// Where a packet meets the port, for the table.
pub struct Side {
    pub ifindex: u32,
    /// `SG_DIR_*`: whether the port receives (ingress) or sends (egress) the packet.
    pub dir: u8,
    pub dry_run: bool,
}

/// The key of `flow` as the port sees it: its end first.
#[inline(always)]
pub fn key(side: &Side, flow: &Flow) -> CtKey {
    let ingress = side.dir == SG_DIR_INGRESS;
    let (local, remote) = if ingress { (flow.dst, flow.src) } else { (flow.src, flow.dst) };
    // ICMP: the echo identifier (0 for other messages, as `Flow` leaves it)
    // names the exchange in both directions; protocols without ports have 0s.
    let (local_port, remote_port) = if flow.icmp != ICMP_NONE {
        (flow.sport, 0)
    } else if ingress {
        (flow.dport, flow.sport)
    } else {
        (flow.sport, flow.dport)
    };
    CtKey {
        ifindex: side.ifindex,
        local_port,
        remote_port,
        protocol: flow.proto,
        family: flow.family,
        _pad: [0; 2],
        local,
        remote,
    }
}

/// Whether the flags could be part of a TCP connection (Linux's `tcp_valid_flags`).
#[inline(always)]
fn tcp_valid(flags: u8) -> bool {
    let f = flags & !(TCP_PSH | TCP_ECE | TCP_CWR);
    const SYN_URG: u8 = TCP_SYN | TCP_URG;
    const SYN_ACK: u8 = TCP_SYN | TCP_ACK;
    const RST_ACK: u8 = TCP_RST | TCP_ACK;
    const FIN_ACK: u8 = TCP_FIN | TCP_ACK;
    const FIN_ACK_URG: u8 = TCP_FIN | TCP_ACK | TCP_URG;
    const ACK_URG: u8 = TCP_ACK | TCP_URG;
    matches!(f, TCP_SYN | SYN_URG | SYN_ACK | TCP_RST | RST_ACK | FIN_ACK | FIN_ACK_URG | TCP_ACK | ACK_URG)
}

/// Whether `flow` is a TCP SYN without ACK: the first packet of a connection.
#[inline(always)]
fn opening_syn(flow: &Flow) -> bool {
    flow.proto == IPPROTO_TCP && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether a TCP packet without a live entry may open one: a SYN, or an ACK
/// of a connection picked up mid-stream.
#[inline(always)]
fn tcp_may_open(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) == TCP_SYN
        || flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) == TCP_ACK
}

/// CLOCK_MONOTONIC at the last tick: lifetimes are seconds, and the coarse
/// clock costs a load where the precise one reads the TSC (in a VM, through
/// the hypervisor's clock page), several times for every new connection.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: reading the time has no preconditions.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
}

/// Whether `e` is still alive at `now`. A time ahead of `now` (written with
/// the precise clock, which runs up to a tick ahead) counts as just seen.
#[inline(always)]
fn live(e: &CtEntry, now: u64) -> bool {
    now.saturating_sub(e.last_seen_ns) <= e.lifetime_s as u64 * 1_000_000_000
}

/// `ct_lifetime_ns` in seconds, as entries keep it.
#[inline(always)]
fn lifetime_s(protocol: u8, flags: u32) -> u32 {
    (ct_lifetime_ns(protocol, flags) / 1_000_000_000) as u32
}

/// Looks `flow` up: a packet of a live connection is `Tracked` (and the
/// entry learns what it shows); one that cannot open a connection is
/// `CtInvalid`; any other is `New`. A connection's first FIN or RST moves
/// its entry from `CONNTRACK` to `CT_CLOSING`, where it is looked up next,
/// except by a SYN: on a closing connection a SYN opens a new one, which the
/// rules judge (Linux conntrack kills a closed entry that a SYN meets and
/// judges the SYN as new), so that table has nothing to say to it.
/// ICMP errors are not looked up here: they are `related` or invalid.
#[inline(always)]
pub fn track(side: &Side, key: &CtKey, flow: &Flow) -> Result<Seen, DropReason> {
    if flow.proto == IPPROTO_TCP && !tcp_valid(flow.tcp_flags) {
        return Err(DropReason::CtInvalid);
    }
    let now = now();
    if let Some(e) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: a map value pointer from this lookup; fields are plain integers,
        // and a racing writer only sets flags or refreshes the time.
        let entry = unsafe { &mut *e };
        if live(entry, now) {
            let seen = learn(side, entry, flow, now);
            if entry.flags & CT_F_CLOSING != 0 && !side.dry_run {
                close(key, entry);
            }
            return Ok(seen);
        }
    } else if !opening_syn(flow)
        && let Some(e) = CT_CLOSING.get_ptr_mut(key)
    {
        // SAFETY: as above.
        let entry = unsafe { &mut *e };
        if live(entry, now) {
            return Ok(learn(side, entry, flow, now));
        }
    }
    if flow.proto == IPPROTO_TCP && !tcp_may_open(flow.tcp_flags) {
        return Err(DropReason::CtInvalid);
    }
    if flow.icmp == ICMP_ECHO_REPLY {
        return Err(DropReason::CtInvalid);
    }
    Ok(Seen::New)
}

/// What a packet of the live connection `entry` says: `Tracked`, or `New`
/// for the opener's new SYN on a closing connection (it opens anew). The
/// entry learns the reply, FIN and RST, unless this is a dry run.
#[inline(always)]
fn learn(side: &Side, entry: &mut CtEntry, flow: &Flow, now: u64) -> Seen {
    let reply = (side.dir == SG_DIR_INGRESS) != (entry.flags & CT_F_INGRESS != 0);
    let mut flags = entry.flags;
    if reply {
        flags |= CT_F_REPLIED;
    }
    if flow.proto == IPPROTO_TCP {
        let f = flow.tcp_flags;
        if !reply && f & (TCP_SYN | TCP_ACK) == TCP_SYN && flags & CT_F_CLOSING != 0 {
            return Seen::New;
        }
        if f & TCP_FIN != 0 {
            flags |= if reply { CT_F_FIN_REPLY } else { CT_F_FIN_ORIG };
        }
        if f & TCP_RST != 0 {
            flags |= CT_F_RST;
        }
    }
    if !side.dry_run && flags != entry.flags {
        entry.flags = flags;
        entry.lifetime_s = lifetime_s(flow.proto, flags);
        entry.last_seen_ns = now;
    } else if !side.dry_run && now.saturating_sub(entry.last_seen_ns) > REFRESH_NS {
        entry.last_seen_ns = now;
    }
    Seen::Tracked
}

/// Moves the closing connection `key` to `CT_CLOSING`. Copied first, so
/// that a packet racing the move finds it in one table or the other.
#[inline(never)]
fn close(key: &CtKey, entry: &CtEntry) {
    let copy = *entry;
    if CT_CLOSING.insert(key, copy, 0).is_ok() {
        let _ = CONNTRACK.remove(key);
    }
}

/// Whether a packet admitted as new opens an entry: everything but ICMP
/// messages other than echo requests (errors are related, the rest has no reply).
#[inline(always)]
pub fn opens(flow: &Flow) -> bool {
    flow.icmp == ICMP_NONE || flow.icmp == ICMP_ECHO_REQUEST
}

/// Opens an entry for a connection admitted by `rule` of rule table `table`
/// (0, 0: a fixed allowance). A full table refuses it: `CtFull`.
#[inline(always)]
pub fn open(side: &Side, key: &CtKey, table: u32, rule: u32) -> Result<(), DropReason> {
    if side.dry_run {
        return Ok(());
    }
    let now = now();
    let flags = if side.dir == SG_DIR_INGRESS { CT_F_INGRESS } else { 0 };
    let lifetime_s = lifetime_s(key.protocol, flags);
    let entry = CtEntry { created_ns: now, last_seen_ns: now, flags, table, rule, lifetime_s };
    CONNTRACK.insert(key, entry, 0).map_err(|_| DropReason::CtFull)
}

/// An ICMP error passes when the packet it quotes belongs to a live
/// connection of the port; otherwise it is invalid. The quoted packet went
/// the other way: the port sent what an error it receives quotes.
#[inline(never)]
pub fn related(ctx: &TcContext, side: &Side, flow: &Flow) -> Result<(), DropReason> {
    let inner = flow.l4_off + 8;
    // The quoted source and destination go to `local`/`remote` first, and
    // are swapped below when the port received the quoted packet.
    let mut key = CtKey {
        ifindex: side.ifindex,
        local_port: 0,
        remote_port: 0,
        protocol: 0,
        family: flow.family,
        _pad: [0; 2],
        local: [0; 16],
        remote: [0; 16],
    };
    let l4 = if flow.family == IP_FAMILY_V4 {
        let vihl = load_u8(ctx, inner)?;
        let hdr = ((vihl & 0x0f) as usize) * 4;
        if vihl >> 4 != 4 || hdr < 20 {
            return Err(DropReason::CtInvalid);
        }
        key.protocol = load_u8(ctx, inner + 9)?;
        key.local[..4].copy_from_slice(&load_bytes::<4>(ctx, inner + 12)?);
        key.remote[..4].copy_from_slice(&load_bytes::<4>(ctx, inner + 16)?);
        inner + hdr
    } else {
        if load_u8(ctx, inner)? >> 4 != 6 {
            return Err(DropReason::CtInvalid);
        }
        // Extension headers in the quote are not walked: such an error is invalid.
        key.protocol = load_u8(ctx, inner + 6)?;
        key.local = load_bytes::<16>(ctx, inner + 8)?;
        key.remote = load_bytes::<16>(ctx, inner + 24)?;
        inner + 40
    };
    let (sport, dport) = if has_ports(key.protocol) {
        (load_be16(ctx, l4)?, load_be16(ctx, l4 + 2)?)
    } else if is_icmp(flow.family, key.protocol) {
        let kind = icmp_kind(flow.family, load_u8(ctx, l4)?);
        if kind != ICMP_ECHO_REQUEST && kind != ICMP_ECHO_REPLY {
            return Err(DropReason::CtInvalid);
        }
        (load_be16(ctx, l4 + 4)?, 0)
    } else {
        (0, 0)
    };
    let echo = is_icmp(flow.family, key.protocol);
    if side.dir == SG_DIR_INGRESS {
        key.local_port = sport;
        key.remote_port = if echo { 0 } else { dport };
    } else {
        core::mem::swap(&mut key.local, &mut key.remote);
        key.local_port = if echo { sport } else { dport };
        key.remote_port = if echo { 0 } else { sport };
    }
    let now = now();
    // SAFETY: hash values read and copied at once.
    let live_in = |e: Option<&CtEntry>| e.is_some_and(|e| live(e, now));
    if live_in(unsafe { CONNTRACK.get(key) }) || live_in(unsafe { CT_CLOSING.get(key) }) {
        Ok(())
    } else {
        Err(DropReason::CtInvalid)
    }
}
