//! The agent's side of connection tracking: deleting expired entries, and
//! cutting the connections a port's policy no longer admits.
//!
//! A connection is re-checked as it was opened: direction, protocol,
//! destination port (or ICMP echo request) and remote address against the
//! port's current policy. One that no rule admits any more loses its entry,
//! so its next packet is judged as new and dropped, both ways; the ones
//! still admitted carry on. Entries opened by a fixed allowance (DHCP, NDP)
//! stay: allowances do not change.

use std::{
    collections::{BTreeSet, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result};
use aya::maps::IterableMap;
use datapath_common::{CT_F_CLOSING, CT_F_INGRESS, CtEntry, CtKey, IP_FAMILY_V4};

use crate::{
    batch,
    bindings::{Direction, Family, PROTO_ICMP, PROTO_ICMPV6, has_ports},
    desired::SecurityLayer,
    learned::monotonic_ns,
    loader::Maps,
    policy::Packet,
};

/// Which ports' connections a sweep re-checks against their policy.
pub enum Recheck<'a> {
    /// None: only expired entries go.
    None,
    /// These ports' (their policy changed or went).
    Ports(&'a BTreeSet<u32>),
    /// Every port's (the periodic resync).
    All,
}

/// What a sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub expired: usize,
    pub cut: usize,
}

/// The remote end of a connection key, as an address.
pub fn remote_of(k: &CtKey) -> IpAddr {
    addr(k.family, &k.remote)
}

/// The port's end of a connection key, as an address.
pub fn local_of(k: &CtKey) -> IpAddr {
    addr(k.family, &k.local)
}

fn addr(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == IP_FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

/// The packet that opened the connection, as the policy sees it.
pub fn opening_packet(k: &CtKey, e: &CtEntry) -> Packet {
    let ingress = e.flags & CT_F_INGRESS != 0;
    let family = if k.family == IP_FAMILY_V4 { Family::V4 } else { Family::V6 };
    let port = if has_ports(k.protocol) {
        if ingress { k.local_port } else { k.remote_port }
    } else if k.protocol == PROTO_ICMP && family == Family::V4 {
        8 << 8
    } else if k.protocol == PROTO_ICMPV6 && family == Family::V6 {
        128 << 8
    } else {
        0
    };
    Packet {
        direction: if ingress { Direction::Ingress } else { Direction::Egress },
        family,
        protocol: k.protocol,
        port,
        remote: remote_of(k),
    }
}

/// Whether the port's tables (in `security`) still admit the connection.
pub fn still_admitted(security: &SecurityLayer, k: &CtKey, e: &CtEntry) -> bool {
    let Some(port) = security.port(k.ifindex) else { return false };
    if !port.stateful() {
        return false;
    }
    // Opened by a fixed allowance, which no change takes away.
    e.table == 0 || port.admits(&opening_packet(k, e))
}

/// Every tracked connection: `CONNTRACK`'s, then the closing ones of
/// `CT_CLOSING` (one the programs are moving, in both, is listed once).
pub fn read_all(maps: &Maps) -> Result<Vec<(CtKey, CtEntry)>> {
    let mut all = batch::read_all::<CtKey, CtEntry>(maps.conntrack.map()).context("reading CONNTRACK")?;
    let open: HashSet<CtKey> = all.iter().map(|(k, _)| *k).collect();
    let closing = batch::read_all::<CtKey, CtEntry>(maps.ct_closing.map()).context("reading CT_CLOSING")?;
    all.extend(closing.into_iter().filter(|(k, _)| !open.contains(k)));
    Ok(all)
}

/// Deletes connection `k` from both tables; whether it was in one.
pub fn remove(maps: &mut Maps, k: &CtKey) -> bool {
    let open = maps.conntrack.remove(k).is_ok();
    maps.ct_closing.remove(k).is_ok() || open
}

/// Writes connection `k` where the programs look for it: `CT_CLOSING` when
/// it is closing, `CONNTRACK` otherwise.
pub fn insert(maps: &mut Maps, k: &CtKey, e: &CtEntry) -> Result<(), aya::maps::MapError> {
    if e.flags & CT_F_CLOSING != 0 { maps.ct_closing.insert(k, e, 0) } else { maps.conntrack.insert(k, e, 0) }
}

/// Whether the programs track connection `k` already, in either table.
pub fn tracked(maps: &Maps, k: &CtKey) -> bool {
    maps.conntrack.get(k, 0).is_ok() || maps.ct_closing.get(k, 0).is_ok()
}

/// Deletes expired entries and cuts the connections that `recheck` names
/// and their port's policy no longer admits.
pub fn sweep(maps: &mut Maps, security: &SecurityLayer, recheck: Recheck) -> Result<Swept> {
    let now = monotonic_ns();
    let mut out = Swept::default();
    let mut doomed = Vec::new();
    // Read whole first: deleting while walking would restart the kernel's walk.
    let table = read_all(maps).context("reading the connection tables")?;
    for (k, e) in table {
        if now.saturating_sub(e.last_seen_ns) > u64::from(e.lifetime_s) * 1_000_000_000 {
            out.expired += 1;
            doomed.push(k);
            continue;
        }
        let check = match &recheck {
            Recheck::None => false,
            Recheck::Ports(p) => p.contains(&k.ifindex),
            Recheck::All => true,
        };
        if check && !still_admitted(security, &k, &e) {
            out.cut += 1;
            doomed.push(k);
        }
    }
    for k in &doomed {
        // Gone already (the port's packet raced us) is fine.
        remove(maps, k);
    }
    Ok(out)
}
