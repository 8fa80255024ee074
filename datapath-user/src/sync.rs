//! Map sync: read what the kernel holds, diff it against the desired state
//! (a pure function), and apply the diff entry by entry.
//!
//! Order matters while traffic flows: additions go in dependency order
//! (networks before the ports that point at them), removals in reverse (ports
//! first), so a program never follows a reference to a missing entry.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{MapError, PerCpuValues, lpm_trie::Key};
use datapath_common::PortCounters;

use crate::{desired::MapState, loader::Maps};

/// Changes to one map.
#[derive(Debug, Clone, PartialEq)]
pub struct MapDiff<K, V> {
    pub upserts: Vec<(K, V)>,
    pub deletes: Vec<K>,
}

impl<K, V> Default for MapDiff<K, V> {
    fn default() -> Self {
        Self { upserts: Vec::new(), deletes: Vec::new() }
    }
}

impl<K, V> MapDiff<K, V> {
    fn len(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }
}

/// Changes to every agent-owned map.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    pub ports: MapDiff<u32, datapath_common::PortInfo>,
    pub networks: MapDiff<u32, datapath_common::NetInfo>,
    pub segments: MapDiff<datapath_common::SegmentKey, u32>,
    pub fdb: MapDiff<datapath_common::FdbKey, datapath_common::FdbEntry>,
    pub flood_sets: MapDiff<u32, datapath_common::FloodSet>,
    pub allowed_macs: MapDiff<datapath_common::MacKey, u32>,
    pub allowed_v4: MapDiff<(u32, datapath_common::AddrKeyV4), u32>,
    pub allowed_v6: MapDiff<(u32, datapath_common::AddrKeyV6), u32>,
    pub flood_vteps: MapDiff<u32, datapath_common::VtepSet>,
    pub arp: MapDiff<datapath_common::ArpKey, datapath_common::ArpEntry>,
}

impl Diff {
    /// Number of entries to write or delete.
    pub fn len(&self) -> usize {
        self.ports.len()
            + self.networks.len()
            + self.segments.len()
            + self.fdb.len()
            + self.flood_sets.len()
            + self.allowed_macs.len()
            + self.allowed_v4.len()
            + self.allowed_v6.len()
            + self.flood_vteps.len()
            + self.arp.len()
    }

    /// Whether the kernel already matches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn diff_map<K: Ord + Clone, V: PartialEq + Clone>(
    desired: &BTreeMap<K, V>,
    current: &BTreeMap<K, V>,
) -> MapDiff<K, V> {
    MapDiff {
        upserts: desired
            .iter()
            .filter(|(k, v)| current.get(k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        deletes: current.keys().filter(|k| !desired.contains_key(k)).cloned().collect(),
    }
}

/// What must change in the kernel to get from `current` to `desired`.
pub fn diff(desired: &MapState, current: &MapState) -> Diff {
    Diff {
        ports: diff_map(&desired.ports, &current.ports),
        networks: diff_map(&desired.networks, &current.networks),
        segments: diff_map(&desired.segments, &current.segments),
        fdb: diff_map(&desired.fdb, &current.fdb),
        flood_sets: diff_map(&desired.flood_sets, &current.flood_sets),
        allowed_macs: diff_map(&desired.allowed_macs, &current.allowed_macs),
        allowed_v4: diff_map(&desired.allowed_v4, &current.allowed_v4),
        allowed_v6: diff_map(&desired.allowed_v6, &current.allowed_v6),
        flood_vteps: diff_map(&desired.flood_vteps, &current.flood_vteps),
        arp: diff_map(&desired.arp, &current.arp),
    }
}

/// What one `converge` did, and where its time went.
#[derive(Debug, Default)]
pub struct Converged {
    /// Entries written or deleted.
    pub changes: usize,
    /// Entries that failed, with the reason; the rest were applied.
    pub errors: Vec<String>,
    /// Time spent reading the maps (zero when the known state was trusted).
    pub read: Duration,
    pub diff: Duration,
    pub apply: Duration,
}

/// Brings the maps to `desired`. `known` is what the kernel is believed to
/// hold (what the last error-free converge applied); without it the maps are
/// read, which costs a syscall per entry and is kept for start-up and the
/// periodic resync that repairs changes made behind the agent's back.
pub fn converge(maps: &mut Maps, desired: &MapState, known: Option<&MapState>) -> Result<Converged> {
    let mut out = Converged::default();
    let t = Instant::now();
    let read;
    let current = match known {
        Some(k) => k,
        None => {
            read = read_state(maps)?;
            &read
        }
    };
    out.read = t.elapsed();
    let t = Instant::now();
    let diff = diff(desired, current);
    out.diff = t.elapsed();
    out.changes = diff.len();
    let t = Instant::now();
    if !diff.is_empty() {
        out.errors = apply(maps, &diff);
    }
    out.apply = t.elapsed();
    Ok(out)
}

/// Reads every agent-owned map.
pub fn read_state(maps: &Maps) -> Result<MapState> {
    fn collect<K: Ord, V>(
        name: &str,
        iter: impl Iterator<Item = Result<(K, V), MapError>>,
    ) -> Result<BTreeMap<K, V>> {
        iter.collect::<Result<_, _>>().with_context(|| format!("reading map {name}"))
    }
    use datapath_common::names;
    Ok(MapState {
        ports: collect(names::PORTS, maps.ports.iter())?,
        networks: collect(names::NETWORKS, maps.networks.iter())?,
        segments: collect(names::NET_BY_SEGMENT, maps.net_by_segment.iter())?,
        fdb: collect(names::FDB, maps.fdb.iter())?,
        flood_sets: collect(names::FLOOD_SETS, maps.flood_sets.iter())?,
        allowed_macs: collect(names::ALLOWED_MACS, maps.allowed_macs.iter())?,
        allowed_v4: collect(
            names::ALLOWED_V4,
            maps.allowed_v4.iter().map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v))),
        )?,
        allowed_v6: collect(
            names::ALLOWED_V6,
            maps.allowed_v6.iter().map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v))),
        )?,
        flood_vteps: collect(names::FLOOD_VTEPS, maps.flood_vteps.iter())?,
        arp: collect(names::ARP_TABLE, maps.arp_table.iter())?,
    })
}

/// Applies `diff`; every failed entry is reported and the rest still applied.
pub fn apply(maps: &mut Maps, diff: &Diff) -> Vec<String> {
    let mut errors = Vec::new();
    let mut note = |what: String, r: Result<(), MapError>| {
        if let Err(e) = r {
            errors.push(format!("{what}: {e}"));
        }
    };
    let fresh_ports: Vec<u32> = diff
        .ports
        .upserts
        .iter()
        .filter(|(ifindex, _)| maps.ports.get(ifindex, 0).is_err())
        .map(|(_, p)| p.stats_slot)
        .collect();

    for (k, v) in &diff.networks.upserts {
        note(format!("NETWORKS[{k}]"), maps.networks.insert(k, v, 0));
    }
    for (k, v) in &diff.segments.upserts {
        note(format!("NET_BY_SEGMENT[{k:?}]"), maps.net_by_segment.insert(k, v, 0));
    }
    for (k, v) in &diff.allowed_macs.upserts {
        note(format!("ALLOWED_MACS[{k:?}]"), maps.allowed_macs.insert(k, v, 0));
    }
    for ((plen, data), v) in &diff.allowed_v4.upserts {
        note(format!("ALLOWED_V4[{data:?}/{plen}]"), maps.allowed_v4.insert(&Key::new(*plen, *data), v, 0));
    }
    for ((plen, data), v) in &diff.allowed_v6.upserts {
        note(format!("ALLOWED_V6[{data:?}/{plen}]"), maps.allowed_v6.insert(&Key::new(*plen, *data), v, 0));
    }
    for (k, v) in &diff.fdb.upserts {
        note(format!("FDB[{k:?}]"), maps.fdb.insert(k, v, 0));
    }
    for (k, v) in &diff.flood_sets.upserts {
        note(format!("FLOOD_SETS[{k}]"), maps.flood_sets.insert(k, v, 0));
    }
    for (k, v) in &diff.flood_vteps.upserts {
        note(format!("FLOOD_VTEPS[{k}]"), maps.flood_vteps.insert(k, v, 0));
    }
    for (k, v) in &diff.arp.upserts {
        note(format!("ARP_TABLE[{k:?}]"), maps.arp_table.insert(k, v, 0));
    }
    // A slot that is new to a port starts from zero, whatever a previous owner left.
    for slot in fresh_ports {
        note(format!("PORT_STATS[{slot}]"), zero_slot(maps, slot));
    }
    for (k, v) in &diff.ports.upserts {
        note(format!("PORTS[{k}]"), maps.ports.insert(k, v, 0));
    }

    for k in &diff.ports.deletes {
        let slot = maps.ports.get(k, 0).ok().map(|p| p.stats_slot);
        note(format!("PORTS[{k}]"), maps.ports.remove(k));
        if let Some(slot) = slot {
            note(format!("PORT_STATS[{slot}]"), zero_slot(maps, slot));
        }
    }
    for k in &diff.arp.deletes {
        note(format!("ARP_TABLE[{k:?}]"), maps.arp_table.remove(k));
    }
    for k in &diff.flood_vteps.deletes {
        note(format!("FLOOD_VTEPS[{k}]"), maps.flood_vteps.remove(k));
    }
    for k in &diff.flood_sets.deletes {
        note(format!("FLOOD_SETS[{k}]"), maps.flood_sets.remove(k));
    }
    for k in &diff.fdb.deletes {
        note(format!("FDB[{k:?}]"), maps.fdb.remove(k));
    }
    for (plen, data) in &diff.allowed_v6.deletes {
        note(format!("ALLOWED_V6[{data:?}/{plen}]"), maps.allowed_v6.remove(&Key::new(*plen, *data)));
    }
    for (plen, data) in &diff.allowed_v4.deletes {
        note(format!("ALLOWED_V4[{data:?}/{plen}]"), maps.allowed_v4.remove(&Key::new(*plen, *data)));
    }
    for k in &diff.allowed_macs.deletes {
        note(format!("ALLOWED_MACS[{k:?}]"), maps.allowed_macs.remove(k));
    }
    for k in &diff.segments.deletes {
        note(format!("NET_BY_SEGMENT[{k:?}]"), maps.net_by_segment.remove(k));
    }
    for k in &diff.networks.deletes {
        note(format!("NETWORKS[{k}]"), maps.networks.remove(k));
    }
    errors
}

fn zero_slot(maps: &mut Maps, slot: u32) -> Result<(), MapError> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| MapError::SyscallError(aya::sys::SyscallError { call: "nr_cpus", io_error: e }))?;
    let zero = PerCpuValues::try_from(vec![bytemuck::Zeroable::zeroed(); cpus])?;
    let zero: PerCpuValues<PortCounters> = zero;
    maps.port_stats.set(slot, zero, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_upserts_changed_and_new_deletes_gone() {
        let desired: BTreeMap<u32, u32> = [(1, 10), (2, 20), (3, 30)].into();
        let current: BTreeMap<u32, u32> = [(1, 10), (2, 21), (4, 40)].into();
        let d = diff_map(&desired, &current);
        assert_eq!(d.upserts, vec![(2, 20), (3, 30)]);
        assert_eq!(d.deletes, vec![4]);
    }

    #[test]
    fn diff_of_equal_states_is_empty() {
        let mut s = MapState::default();
        s.networks.insert(
            1,
            datapath_common::NetInfo {
                uplink_ifindex: 3,
                segmentation_id: 1000,
                net_type: datapath_common::NET_TYPE_VLAN,
                mtu: 1500,
                generation: 0,
                _pad: 0,
            },
        );
        assert!(diff(&s, &s.clone()).is_empty());
        let d = diff(&MapState::default(), &s);
        assert_eq!(d.networks.deletes, vec![1]);
        assert_eq!(d.len(), 1);
    }
}
