//! Reads a running agent's pinned maps, to check what the kernel counted.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData, PerCpuArray};
use datapath_common::{Action, DropReason, PortCounters, PortInfo, names};
use datapath_user::loader::versioned_pin_dir;

use crate::netns::Netns;

/// The ifindex of `dev` inside `ns`.
pub fn ifindex_in(ns: &Netns, dev: &str) -> Result<u32> {
    let out = ns.exec(&["ip", "-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j output")?;
    v[0]["ifindex"].as_u64().map(|i| i as u32).with_context(|| format!("no ifindex for {dev}"))
}

/// Counters of one port of an agent, summed over CPUs.
pub struct PortView {
    pub info: PortInfo,
    pub counters: PortCounters,
}

impl PortView {
    /// Drops counted under `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.counters.drops[reason as usize]
    }

    /// Frames counted under `action`.
    pub fn actions(&self, action: Action) -> u64 {
        self.counters.actions[action as usize]
    }
}

/// The pinned PORTS entry and counters of `ifindex`, for the agent pinned at `pin_path`.
pub fn port_view(pin_path: &Path, ifindex: u32) -> Result<PortView> {
    let maps = versioned_pin_dir(pin_path).join("maps");
    let ports: HashMap<MapData, u32, PortInfo> =
        HashMap::try_from(aya::maps::Map::HashMap(MapData::from_pin(maps.join(names::PORTS))?))?;
    let info = ports.get(&ifindex, 0).with_context(|| format!("no PORTS entry for ifindex {ifindex}"))?;
    let stats: PerCpuArray<MapData, PortCounters> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(MapData::from_pin(maps.join(names::PORT_STATS))?))?;
    let per_cpu = stats.get(&info.stats_slot, 0)?;
    let mut counters: PortCounters = bytemuck::Zeroable::zeroed();
    for c in per_cpu.iter() {
        counters.accumulate(c);
    }
    Ok(PortView { info, counters })
}

/// How many entries each agent-owned map holds, for the agent pinned at `pin_path`.
pub fn entry_counts(pin_path: &Path) -> Result<std::collections::BTreeMap<&'static str, usize>> {
    use aya::maps::{Map, lpm_trie::LpmTrie};
    use datapath_common::{AddrKeyV4, AddrKeyV6, FdbEntry, FdbKey, FloodSet, MacKey, NetInfo, SegmentKey};
    let dir = versioned_pin_dir(pin_path).join("maps");
    let open =
        |name: &str| MapData::from_pin(dir.join(name)).with_context(|| format!("opening pinned {name}"));
    let mut counts = std::collections::BTreeMap::new();
    let ports: HashMap<MapData, u32, PortInfo> = HashMap::try_from(Map::HashMap(open(names::PORTS)?))?;
    counts.insert(names::PORTS, ports.keys().count());
    let nets: HashMap<MapData, u32, NetInfo> = HashMap::try_from(Map::HashMap(open(names::NETWORKS)?))?;
    counts.insert(names::NETWORKS, nets.keys().count());
    let segs: HashMap<MapData, SegmentKey, u32> =
        HashMap::try_from(Map::HashMap(open(names::NET_BY_SEGMENT)?))?;
    counts.insert(names::NET_BY_SEGMENT, segs.keys().count());
    let fdb: HashMap<MapData, FdbKey, FdbEntry> = HashMap::try_from(Map::HashMap(open(names::FDB)?))?;
    counts.insert(names::FDB, fdb.keys().count());
    let flood: HashMap<MapData, u32, FloodSet> = HashMap::try_from(Map::HashMap(open(names::FLOOD_SETS)?))?;
    counts.insert(names::FLOOD_SETS, flood.keys().count());
    let macs: HashMap<MapData, MacKey, u32> = HashMap::try_from(Map::HashMap(open(names::ALLOWED_MACS)?))?;
    counts.insert(names::ALLOWED_MACS, macs.keys().count());
    let v4: LpmTrie<MapData, AddrKeyV4, u32> = LpmTrie::try_from(Map::LpmTrie(open(names::ALLOWED_V4)?))?;
    counts.insert(names::ALLOWED_V4, v4.keys().count());
    let v6: LpmTrie<MapData, AddrKeyV6, u32> = LpmTrie::try_from(Map::LpmTrie(open(names::ALLOWED_V6)?))?;
    counts.insert(names::ALLOWED_V6, v6.keys().count());
    Ok(counts)
}
