//! Reads a running agent's pinned maps, to check what the kernel counted.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData, PerCpuArray};
use datapath_common::{Action, DropReason, PortCounters, PortInfo, QosPort, names};
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
    let dir = versioned_pin_dir(pin_path).join("maps");
    Ok(datapath_user::synced::SyncedMaps::from_pins(&dir)?.read()?.counts())
}

/// The pinned `QOS_PORTS` entry of `ifindex` (None when the port has no
/// enforced policy), for the agent pinned at `pin_path`: what the kernel
/// polices and marks with right now.
pub fn qos_port(pin_path: &Path, ifindex: u32) -> Result<Option<QosPort>> {
    let maps = versioned_pin_dir(pin_path).join("maps");
    let qos: HashMap<MapData, u32, QosPort> =
        HashMap::try_from(aya::maps::Map::HashMap(MapData::from_pin(maps.join(names::QOS_PORTS))?))?;
    match qos.get(&ifindex, 0) {
        Ok(q) => Ok(Some(q)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
