//! Security groups: what a port sends (checked in `vm_port`) and what is
//! delivered to it (`vm_port_out`) against its policy.
//!
//! The order is the hybrid driver's, with invalid packets dropped first as
//! the OVS firewall does: a packet of a tracked connection passes; an
//! invalid one drops; then the fixed allowances (DHCP, NDP), then the rules.
//! A port has a rule table per security group. A table lookup is two LPM
//! lookups whatever the number of rules (three when the protocol has no rule
//! of its own): the destination port's block gives a class, the remote
//! address within the class gives the rule. A packet that no table admits
//! is dropped. Only IP is filtered, like the hybrid driver.

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use datapath_common::{
    DropReason, FragKey, IP_FAMILY_V4, IP_FAMILY_V6, SG_DIR_INGRESS, SG_F_IPV6, SG_F_STATEFUL,
    SG_JUDGED_ALLOWANCE, SG_JUDGED_FRAGMENT, SG_JUDGED_NONE, SG_JUDGED_TRACKED, SG_MAX_TABLE_RULES,
    SG_PORT_KEY_FIXED_BITS, SG_PORT_TABLES, SG_REMOTE_KEY_FIXED_BITS, SgPort, SgPortKey, SgRemoteKeyV4,
    SgRemoteKeyV6, sg_judged_rule,
};

use crate::{
    conntrack::{self, Seen, Side},
    flow::{Flow, ICMP_ERROR},
    frag,
    maps::{SG_FRAGS, SG_PORTS, SG_REMOTE_V4, SG_REMOTE_V6, SG_RULE_PORTS},
    parse::{
        DHCPV4_CLIENT_PORT, DHCPV4_SERVER_PORT, DHCPV6_CLIENT_PORT, DHCPV6_SERVER_PORT, Frag, FragId,
        ICMPV6_MLD_QUERY, ICMPV6_NEIGHBOR_ADVERT, ICMPV6_NEIGHBOR_SOLICIT, ICMPV6_ROUTER_ADVERT,
        IPPROTO_ICMPV6, IPPROTO_UDP,
    },
    trace,
    verdict::Meta,
};

/// The port a packet meets and which way it goes.
pub struct At {
    pub ifindex: u32,
    /// `SG_DIR_*`.
    pub dir: u8,
    pub dry_run: bool,
    /// A traced run: `check` records `judged` in `TRACE`.
    pub trace: bool,
    /// What admitted the packet, for a traced run: `SG_JUDGED_*`, or a rule
    /// of one of the port's tables (`sg_judged_rule`). Written through the
    /// caller's pointer: a `Result` with a payload would come back through
    /// memory, where the verifier loses the range of the drop reason.
    pub judged: u32,
}

impl At {
    /// The port at `ifindex`, packets going `dir` (`SG_DIR_*`), in the run `meta` describes.
    #[inline(always)]
    pub fn new(ifindex: u32, dir: u8, meta: &Meta) -> Self {
        Self { ifindex, dir, dry_run: meta.dry_run, trace: meta.trace, judged: SG_JUDGED_NONE }
    }
}

/// Applies the security groups of a port with `PORT_F_SECGROUPS` (the
/// caller checks the flag) to the IP packet at `l3_off` of a frame with
/// `ethertype`. A traced run records what admitted it. A subprogram of its
/// own, so that its keys never share a frame with the forwarding path's.
#[inline(never)]
pub fn check(ctx: &TcContext, ethertype: u16, l3_off: usize, at: &mut At) -> Result<(), DropReason> {
    let verdict = check_packet(ctx, ethertype, l3_off, at);
    if at.trace && verdict.is_ok() {
        trace::judged(at.judged);
    }
    verdict
}

#[inline(always)]
fn check_packet(ctx: &TcContext, ethertype: u16, l3_off: usize, at: &mut At) -> Result<(), DropReason> {
    let denied = denied(at.dir);
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected for the run. It
    // is read in place, as a copy would not fit the stack: an update that
    // races the read shows this packet the old or the new table of a group.
    let sg = unsafe { SG_PORTS.get(at.ifindex) }.ok_or(denied)?;
    let mut flow = Flow::EMPTY;
    if !flow.parse(ctx, ethertype, l3_off)? {
        return Ok(());
    }
    if let Frag::Later(fid) = flow.frag {
        at.judged = SG_JUDGED_FRAGMENT;
        return later_frag(at, &flow, fid);
    }
    let verdict = judge(ctx, at, sg, &flow);
    if let Frag::First(fid) = flow.frag {
        remember_frag(at, &flow, fid, &verdict);
    }
    verdict
}

/// The verdict on a whole packet or a first fragment. An ICMP error of a
/// stateful port is judged by the connection it quotes, and by nothing else.
#[inline(always)]
fn judge(ctx: &TcContext, at: &mut At, sg: &SgPort, flow: &Flow) -> Result<(), DropReason> {
    let side = Side { ifindex: at.ifindex, dir: at.dir, dry_run: at.dry_run };
    if sg.flags & SG_F_STATEFUL != 0 && flow.icmp == ICMP_ERROR {
        at.judged = SG_JUDGED_TRACKED;
        return conntrack::related(ctx, &side, flow);
    }
    decide(at, sg, flow)
}

/// The datagram a fragment belongs to, at this port.
#[inline(always)]
fn frag_key(at: &At, flow: &Flow, fid: FragId) -> FragKey {
    if flow.family == IP_FAMILY_V4 {
        frag::key_v4(at.ifindex, v4(&flow.src), v4(&flow.dst), fid)
    } else {
        frag::key_v6(at.ifindex, flow.src, flow.dst, fid)
    }
}

// Subprograms of their own, like the others here: a fragment's key and a
// connection's key never share a frame.
#[inline(never)]
fn remember_frag(at: &At, flow: &Flow, fid: FragId, verdict: &Result<(), DropReason>) {
    frag::remember(&SG_FRAGS, &frag_key(at, flow, fid), verdict, at.dry_run);
}

#[inline(never)]
fn later_frag(at: &At, flow: &Flow, fid: FragId) -> Result<(), DropReason> {
    frag::verdict_of(&SG_FRAGS, &frag_key(at, flow, fid))
}

#[inline(always)]
fn denied(dir: u8) -> DropReason {
    if dir == SG_DIR_INGRESS { DropReason::SgIngressDenied } else { DropReason::SgEgressDenied }
}

#[inline(always)]
fn v4(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

/// The connection table, then the allowances and the rules. A subprogram
/// of its own: the connection key then takes no room in `check`'s frame.
#[inline(never)]
fn decide(at: &mut At, sg: &SgPort, flow: &Flow) -> Result<(), DropReason> {
    let side = Side { ifindex: at.ifindex, dir: at.dir, dry_run: at.dry_run };
    let stateful = sg.flags & SG_F_STATEFUL != 0;
    let key = conntrack::key(&side, flow);
    if stateful && let Seen::Tracked = conntrack::track(&side, &key, flow)? {
        at.judged = SG_JUDGED_TRACKED;
        return Ok(());
    }
    let (table, rule) = if allowed_anyway(at.dir, sg, flow) {
        at.judged = SG_JUDGED_ALLOWANCE;
        (0, 0)
    } else {
        let judged = lookup(sg, at.dir, flow);
        if judged == SG_JUDGED_NONE {
            return Err(denied(at.dir));
        }
        at.judged = judged;
        // The slot is below SG_PORT_TABLES by construction; the mask says so to the verifier.
        let slot = (judged >> 24) as usize & (SG_PORT_TABLES - 1);
        (sg.tables[slot], (judged & (SG_MAX_TABLE_RULES - 1)) - 1)
    };
    if stateful && conntrack::opens(flow) {
        conntrack::open(&side, &key, table, rule)?;
    }
    Ok(())
}

/// The hybrid driver's fixed allowances, before any rule: DHCP and DHCPv6
/// clients and their servers' answers, ICMPv6 but router advertisements
/// from the port (which anti-spoofing dropped already), and neighbour
/// discovery and MLD queries towards it (router advertisements only to a
/// port with an IPv6 address).
#[inline(always)]
fn allowed_anyway(dir: u8, sg: &SgPort, flow: &Flow) -> bool {
    let ingress = dir == SG_DIR_INGRESS;
    match (flow.family, flow.proto) {
        (IP_FAMILY_V4, IPPROTO_UDP) => {
            let (client, server) = (DHCPV4_CLIENT_PORT, DHCPV4_SERVER_PORT);
            if ingress {
                (flow.sport, flow.dport) == (server, client)
            } else {
                (flow.sport, flow.dport) == (client, server)
            }
        }
        (IP_FAMILY_V6, IPPROTO_UDP) => {
            let (client, server) = (DHCPV6_CLIENT_PORT, DHCPV6_SERVER_PORT);
            if ingress {
                (flow.sport, flow.dport) == (server, client)
            } else {
                (flow.sport, flow.dport) == (client, server)
            }
        }
        (IP_FAMILY_V6, IPPROTO_ICMPV6) => {
            let t = (flow.dport >> 8) as u8;
            if !ingress {
                return t != ICMPV6_ROUTER_ADVERT;
            }
            matches!(t, ICMPV6_MLD_QUERY | ICMPV6_NEIGHBOR_SOLICIT | ICMPV6_NEIGHBOR_ADVERT)
                || (t == ICMPV6_ROUTER_ADVERT && sg.flags & SG_F_IPV6 != 0)
        }
        _ => false,
    }
}

/// The first rule that admits the packet, in the first of the port's
/// tables that has one, as `sg_judged_rule(slot, rule)`; `SG_JUDGED_NONE`
/// when none does.
#[inline(always)]
fn lookup(sg: &SgPort, dir: u8, flow: &Flow) -> u32 {
    let remote = if dir == SG_DIR_INGRESS { &flow.src } else { &flow.dst };
    let probe = u64::from(dir)
        | u64::from(flow.family) << 8
        | u64::from(flow.proto) << 16
        | u64::from(flow.dport) << 32;
    sg_lookup(sg, probe, remote)
}

/// `lookup` with the packet's (direction, family, protocol, destination
/// port) packed into `probe` as `lookup` does, and the remote address.
///
/// A global function: the verifier checks it once, against its prototype,
/// rather than once per state of its callers, which a loop over the tables
/// would multiply by the number of tables. Its pointers may therefore be
/// null as far as the verifier knows. It takes scalars rather than the
/// flow: given a pointer to the flow, the 6.1 verifier forgot what it knew
/// of the flow's fields after the call, and its work on `vm_port` doubled
/// (measured: 146k to 300k instructions).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sg_lookup(sg: *const SgPort, probe: u64, remote: *const [u8; 16]) -> u32 {
    if sg.is_null() || remote.is_null() {
        return SG_JUDGED_NONE;
    }
    // SAFETY: non-null, and valid for the call: the caller's map value and stack.
    let (sg, remote) = unsafe { (&*sg, &*remote) };
    let (dir, family, protocol, port) =
        (probe as u8, (probe >> 8) as u8, (probe >> 16) as u8, (probe >> 32) as u16);
    // The keys are built once; each table changes only its id in them. Two
    // loops, one per family, so that the two remote keys share their room:
    // the frame is part of a call chain at the stack's 512-byte limit.
    let mut ports = Key::new(
        SG_PORT_KEY_FIXED_BITS + 16,
        SgPortKey {
            table: 0,
            direction: dir,
            family,
            protocol,
            any_protocol: 0,
            // 0 for protocols without ports or ICMP type (`Flow` leaves it so).
            port: port.to_be_bytes(),
            _pad: [0; 2],
        },
    );
    if family == IP_FAMILY_V4 {
        let mut k =
            Key::new(SG_REMOTE_KEY_FIXED_BITS + 32, SgRemoteKeyV4 { table: 0, class: 0, addr: v4(remote) });
        scan(sg, &mut ports, |table, class| {
            k.data.table = table;
            k.data.class = class;
            SG_REMOTE_V4.get(&k).copied()
        })
    } else {
        let mut k =
            Key::new(SG_REMOTE_KEY_FIXED_BITS + 128, SgRemoteKeyV6 { table: 0, class: 0, addr: *remote });
        scan(sg, &mut ports, |table, class| {
            k.data.table = table;
            k.data.class = class;
            SG_REMOTE_V6.get(&k).copied()
        })
    }
}

/// `sg_lookup` over the port's tables, with `remote` the lookup of the
/// remote address in (table, class).
#[inline(always)]
fn scan(sg: &SgPort, ports: &mut Key<SgPortKey>, mut remote: impl FnMut(u32, u32) -> Option<u32>) -> u32 {
    let protocol = ports.data.protocol;
    for slot in 0..SG_PORT_TABLES {
        if slot as u32 >= sg.count {
            break;
        }
        let table = sg.tables[slot];
        ports.data.table = table;
        ports.data.protocol = protocol;
        ports.data.any_protocol = 0;
        let class = match SG_RULE_PORTS.get(&*ports) {
            Some(c) => Some(*c),
            None => {
                // The protocol has no rule of its own: the rules of any protocol decide.
                ports.data.protocol = 0;
                ports.data.any_protocol = 1;
                SG_RULE_PORTS.get(&*ports).copied()
            }
        };
        if let Some(rule) = class.and_then(|c| remote(table, c)) {
            return sg_judged_rule(slot as u32, rule);
        }
    }
    SG_JUDGED_NONE
}
