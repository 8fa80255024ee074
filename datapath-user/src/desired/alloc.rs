//! Node-local numbering: network indices (the OVS agent's "local VLAN") and
//! per-port stats slots, kept across reconciliations and recovered from the
//! kernel maps after a restart.

use std::collections::{BTreeMap, BTreeSet};

use datapath_common::{MAX_NETWORKS, MAX_PORTS, MAX_SUBPORTS, NetInfo, SUBPORT_ID_BASE, TrunkVid};

use super::MapState;

/// What identifies a network on the wire of this node; stable across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WireId {
    pub net_type: u32,
    pub segmentation_id: u32,
    pub uplink_ifindex: u32,
}

/// Node-local numbering: network indices (the "local VLAN") and stats slots.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocations {
    net_index: BTreeMap<WireId, u32>,
    slots: BTreeMap<u32, u32>,
    /// Subports' ids by (parent tap, VLAN id).
    subports: BTreeMap<(u32, u32), u32>,
    free_nets: Pool,
    free_slots: Pool,
    free_subports: Pool,
    /// Devices that were in a flood list after the last derivation: they keep
    /// their place when a network is full, so a new port cannot push one out.
    flooding: BTreeSet<u32>,
}

impl Default for Allocations {
    fn default() -> Self {
        Self {
            net_index: BTreeMap::new(),
            slots: BTreeMap::new(),
            subports: BTreeMap::new(),
            // Index 0 means "no network"; slot 0 counts frames on devices the agent does not know.
            free_nets: Pool::new(1..MAX_NETWORKS),
            free_slots: Pool::new(1..MAX_PORTS),
            free_subports: Pool::new(SUBPORT_ID_BASE + 1..SUBPORT_ID_BASE + 1 + MAX_SUBPORTS),
            flooding: BTreeSet::new(),
        }
    }
}

/// The free numbers of a range; the lowest is handed out first, so numbering
/// stays dense and a freed number is the next one reused.
#[derive(Debug, Clone, PartialEq)]
struct Pool(BTreeSet<u32>);

impl Pool {
    fn new(range: std::ops::Range<u32>) -> Self {
        Self(range.collect())
    }

    fn take(&mut self) -> Option<u32> {
        self.0.pop_first()
    }

    /// Returns `keep`; a number that is not kept goes back to the pool.
    fn keep_or_free(&mut self, keep: bool, n: u32) -> bool {
        if !keep {
            self.0.insert(n);
        }
        keep
    }
}

impl Allocations {
    /// Recovers the numbering a previous agent left in the kernel maps.
    pub fn recover(current: &MapState) -> Self {
        let mut a = Self::default();
        for (idx, n) in &current.networks {
            a.net_index.insert(wire_id_of(n), *idx);
            a.free_nets.0.remove(idx);
        }
        for (ifindex, p) in &current.ports {
            a.slots.insert(*ifindex, p.stats_slot);
            a.free_slots.0.remove(&p.stats_slot);
        }
        for (id, sub) in &current.subports {
            a.subports.insert((sub.parent_ifindex, sub.vid), *id);
            a.free_subports.0.remove(id);
        }
        for set in current.flood_sets.values() {
            let n = (set.count as usize).min(set.ifindex.len());
            a.flooding.extend(&set.ifindex[..n]);
        }
        a
    }

    /// Whether the device was in a flood list after the last derivation.
    pub(super) fn was_flooding(&self, ifindex: u32) -> bool {
        self.flooding.contains(&ifindex)
    }

    /// Takes `gone` out of and puts `now` into the devices in flood lists.
    pub(super) fn update_flooding(
        &mut self,
        gone: impl Iterator<Item = u32>,
        now: impl Iterator<Item = u32>,
    ) {
        for i in gone {
            self.flooding.remove(&i);
        }
        self.flooding.extend(now);
    }

    /// Frees the index of a network no longer programmed.
    pub(super) fn release_net(&mut self, id: WireId) {
        if let Some(idx) = self.net_index.remove(&id) {
            self.free_nets.0.insert(idx);
        }
    }

    /// Frees the stats slot of a device no longer programmed.
    pub(super) fn release_slot(&mut self, ifindex: u32) {
        if let Some(slot) = self.slots.remove(&ifindex) {
            self.free_slots.0.insert(slot);
        }
    }

    pub(super) fn net_index(&mut self, id: WireId) -> Option<u32> {
        if let Some(idx) = self.net_index.get(&id) {
            return Some(*idx);
        }
        let idx = self.free_nets.take()?;
        self.net_index.insert(id, idx);
        Some(idx)
    }

    pub(super) fn slot(&mut self, ifindex: u32) -> Option<u32> {
        if let Some(slot) = self.slots.get(&ifindex) {
            return Some(*slot);
        }
        let slot = self.free_slots.take()?;
        self.slots.insert(ifindex, slot);
        Some(slot)
    }

    /// Frees the id of a subport no longer programmed.
    pub(super) fn release_subport(&mut self, sub: &TrunkVid) {
        if let Some(id) = self.subports.remove(&(sub.parent_ifindex, sub.vid)) {
            self.free_subports.0.insert(id);
        }
    }

    /// The id of the subport `vid` of the trunk on tap `parent_ifindex`: kept
    /// while the pair is in use (connections and counters are keyed by it).
    pub(super) fn subport_id(&mut self, parent_ifindex: u32, vid: u32) -> Option<u32> {
        if let Some(id) = self.subports.get(&(parent_ifindex, vid)) {
            return Some(*id);
        }
        let id = self.free_subports.take()?;
        self.subports.insert((parent_ifindex, vid), id);
        Some(id)
    }

    /// The id a subport already has, without numbering it.
    pub(super) fn subport_of(&self, parent_ifindex: u32, vid: u32) -> Option<u32> {
        self.subports.get(&(parent_ifindex, vid)).copied()
    }

    /// Forgets numbers no longer in use, so they can be reused.
    pub(super) fn retain(&mut self, nets: &BTreeSet<WireId>, ports: &BTreeSet<u32>) {
        let free = &mut self.free_nets;
        self.net_index.retain(|id, idx| free.keep_or_free(nets.contains(id), *idx));
        let free = &mut self.free_slots;
        self.slots.retain(|ifindex, slot| free.keep_or_free(ports.contains(ifindex), *slot));
        let free = &mut self.free_subports;
        self.subports.retain(|_, id| free.keep_or_free(ports.contains(id), *id));
    }

    /// Stats slot of a device, if it has one.
    pub fn slot_of(&self, ifindex: u32) -> Option<u32> {
        self.slots.get(&ifindex).copied()
    }
}

/// The wire identity of a network entry.
pub fn wire_id_of(n: &NetInfo) -> WireId {
    WireId { net_type: n.net_type, segmentation_id: n.segmentation_id, uplink_ifindex: n.uplink_ifindex }
}
