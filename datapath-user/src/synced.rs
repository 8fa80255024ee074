//! The datapath's maps as the user side sees them, each declared once.
//!
//! Agent-owned maps are synced: their whole content is derived
//! (`desired::derive`), diffed against what the kernel holds and written
//! back (`sync`). The declaration order is the dependency order: a diff adds
//! entries map by map in that order and deletes them in the reverse order,
//! so that a program never follows a reference to a missing entry (a port
//! is added after its network, and deleted before it).
//!
//! Kernel-owned maps (counters, learned MACs, fragments, traces) are only
//! taken as typed handles.
//!
//! Adding a map: its name in `datapath_common::names`, its types in
//! `datapath_common::types`, its `#[map]` in the kernel's `maps.rs`, and one
//! line below.

use std::{collections::BTreeMap, fmt::Debug};

use anyhow::{Context, Result};
use aya::{
    Ebpf, Pod,
    maps::{
        Array, DevMapHash, HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key,
    },
};
use datapath_common::{
    AddrKeyV4, AddrKeyV6, ArpEntry, ArpKey, CtEntry, CtKey, FdbEntry, FdbKey, FloodSet, FragKey, FragVerdict,
    LearnedEntry, MacKey, MonitorConfig, MonitorRate, NetInfo, PortCounters, PortInfo, QosBucket, QosPort,
    SegmentKey, SgPort, SgPortKey, SgRemoteKeyV4, SgRemoteKeyV6, TraceRecord, TrunkVid, TunnelPeerKey,
    UnderlayInfo, VtepSet, names,
};

/// A kernel map the agent owns: read whole, written and deleted entry by entry.
pub trait KernelMap {
    /// The key as the desired state holds it.
    type Key: Ord + Clone + Debug;
    /// The value.
    type Value: Clone + PartialEq + Debug;
    /// Every entry.
    fn read_all(&self) -> Result<BTreeMap<Self::Key, Self::Value>, MapError>;
    /// Inserts or replaces one entry.
    fn put(&mut self, key: &Self::Key, value: &Self::Value) -> Result<(), MapError>;
    /// Removes one entry.
    fn del(&mut self, key: &Self::Key) -> Result<(), MapError>;
}

impl<K: Pod + Ord + Debug, V: Pod + PartialEq + Debug> KernelMap for HashMap<MapData, K, V> {
    type Key = K;
    type Value = V;

    fn read_all(&self) -> Result<BTreeMap<K, V>, MapError> {
        self.iter().collect()
    }

    fn put(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        self.insert(key, value, 0)
    }

    fn del(&mut self, key: &K) -> Result<(), MapError> {
        self.remove(key)
    }
}

/// An LPM trie's entries are keyed by (prefix length, data).
impl<K: Pod + Ord + Debug, V: Pod + PartialEq + Debug> KernelMap for LpmTrie<MapData, K, V> {
    type Key = (u32, K);
    type Value = V;

    fn read_all(&self) -> Result<BTreeMap<(u32, K), V>, MapError> {
        self.iter().map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v))).collect()
    }

    fn put(&mut self, (plen, data): &(u32, K), value: &V) -> Result<(), MapError> {
        self.insert(&Key::new(*plen, *data), value, 0)
    }

    fn del(&mut self, (plen, data): &(u32, K)) -> Result<(), MapError> {
        self.remove(&Key::new(*plen, *data))
    }
}

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

impl<K: Ord + Clone, V: PartialEq + Clone> MapDiff<K, V> {
    /// What turns `current` into `desired`.
    pub fn between(desired: &BTreeMap<K, V>, current: &BTreeMap<K, V>) -> Self {
        MapDiff {
            upserts: desired
                .iter()
                .filter(|(k, v)| current.get(k) != Some(v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            deletes: current.keys().filter(|k| !desired.contains_key(k)).cloned().collect(),
        }
    }

    /// Entries to write or delete.
    pub fn len(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn patch_map<K: Ord + Clone, V: PartialEq + Clone>(
    union: &mut BTreeMap<K, V>,
    remove: &BTreeMap<K, V>,
    add: &BTreeMap<K, V>,
) -> MapDiff<K, V> {
    let mut before: BTreeMap<K, Option<V>> = BTreeMap::new();
    for k in remove.keys() {
        let old = union.remove(k);
        before.entry(k.clone()).or_insert(old);
    }
    for (k, v) in add {
        let old = union.insert(k.clone(), v.clone());
        before.entry(k.clone()).or_insert(old);
    }
    let mut d = MapDiff::default();
    for (k, was) in before {
        match union.get(&k) {
            Some(now) if was.as_ref() != Some(now) => d.upserts.push((k, now.clone())),
            None if was.is_some() => d.deletes.push(k),
            _ => {}
        }
    }
    d
}

fn put_all<M: KernelMap>(name: &str, map: &mut M, upserts: &[(M::Key, M::Value)], errors: &mut Vec<String>) {
    for (k, v) in upserts {
        if let Err(e) = map.put(k, v) {
            errors.push(format!("{name}[{k:?}]: {e}"));
        }
    }
}

fn del_all<M: KernelMap>(name: &str, map: &mut M, deletes: &[M::Key], errors: &mut Vec<String>) {
    for k in deletes {
        if let Err(e) = map.del(k) {
            errors.push(format!("{name}[{k:?}]: {e}"));
        }
    }
}

/// Takes map `name` out of the loaded object as a typed handle.
fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).with_context(|| format!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type or layout"))
}

/// Opens the map pinned as `dir/name` as a typed handle.
fn from_pin<T>(dir: &std::path::Path, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("map {}", path.display()))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type or layout"))
}

macro_rules! declare_maps {
    (
        synced { $( $(#[$sdoc:meta])* $sfield:ident: $shandle:ty = $sname:expr, )+ }
        kernel { $( $(#[$kdoc:meta])* $kfield:ident: $khandle:ty = $kname:expr, )+ }
    ) => {
        /// What every agent-owned map holds (desired, or known to be in the kernel).
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct MapState {
            $( $(#[$sdoc])* pub $sfield: BTreeMap<<$shandle as KernelMap>::Key, <$shandle as KernelMap>::Value>, )+
        }

        /// Changes to every agent-owned map.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Diff {
            $( pub $sfield: MapDiff<<$shandle as KernelMap>::Key, <$shandle as KernelMap>::Value>, )+
        }

        /// One agent-owned map, for walking them in dependency order.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Synced { $( $sfield, )+ }

        impl Synced {
            /// Every agent-owned map, in dependency order: added in this order, deleted in reverse.
            pub const ORDER: &'static [Synced] = &[$( Synced::$sfield, )+];

            /// The map's name in the object.
            pub const fn name(self) -> &'static str {
                match self { $( Synced::$sfield => $sname, )+ }
            }
        }

        impl MapState {
            /// What must change in the kernel to get from `current` to `self`.
            pub fn diff(&self, current: &MapState) -> Diff {
                Diff { $( $sfield: MapDiff::between(&self.$sfield, &current.$sfield), )+ }
            }

            /// Replaces the entries of `remove` by those of `add` (fragments of
            /// this state whose keys no other fragment holds), and returns what
            /// changed, in time that grows with the fragments, not with the state.
            pub fn patch(&mut self, remove: &MapState, add: &MapState) -> Diff {
                Diff { $( $sfield: patch_map(&mut self.$sfield, &remove.$sfield, &add.$sfield), )+ }
            }

            /// Adds `other`'s entries (a fragment with keys of its own).
            pub fn merge(&mut self, other: &MapState) {
                $( self.$sfield.extend(other.$sfield.iter().map(|(k, v)| (k.clone(), v.clone()))); )+
            }

            /// Entries per map, by name.
            pub fn counts(&self) -> BTreeMap<&'static str, usize> {
                BTreeMap::from([$( ($sname, self.$sfield.len()), )+])
            }
        }

        impl Diff {
            /// Entries to write or delete.
            pub fn len(&self) -> usize {
                0 $( + self.$sfield.len() )+
            }

            /// Whether the kernel already matches.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }
        }

        /// Typed handles on every agent-owned map.
        pub struct SyncedMaps {
            $( pub $sfield: $shandle, )+
        }

        impl SyncedMaps {
            fn take(ebpf: &mut Ebpf) -> Result<Self> {
                Ok(Self { $( $sfield: take(ebpf, $sname)?, )+ })
            }

            /// Opens the maps an agent pinned in `dir` (tests and tools that inspect a running agent).
            pub fn from_pins(dir: &std::path::Path) -> Result<Self> {
                Ok(Self { $( $sfield: from_pin(dir, $sname)?, )+ })
            }

            /// Reads every agent-owned map.
            pub fn read(&self) -> Result<MapState> {
                Ok(MapState {
                    $( $sfield: self.$sfield.read_all().with_context(|| format!("reading map {}", $sname))?, )+
                })
            }

            /// Writes `which`'s upserts of `diff`; failures go to `errors`.
            pub fn add(&mut self, which: Synced, diff: &Diff, errors: &mut Vec<String>) {
                match which { $( Synced::$sfield => put_all($sname, &mut self.$sfield, &diff.$sfield.upserts, errors), )+ }
            }

            /// Removes `which`'s deletes of `diff`; failures go to `errors`.
            pub fn delete(&mut self, which: Synced, diff: &Diff, errors: &mut Vec<String>) {
                match which { $( Synced::$sfield => del_all($sname, &mut self.$sfield, &diff.$sfield.deletes, errors), )+ }
            }
        }

        /// The kernel-owned maps' names.
        pub const KERNEL_MAPS: &[&str] = &[$( $kname, )+];

        /// Typed handles on every map of the datapath.
        pub struct Maps {
            /// The agent-owned maps.
            pub synced: SyncedMaps,
            $( $(#[$kdoc])* pub $kfield: $khandle, )+
        }

        impl Maps {
            /// Takes every map out of the loaded object.
            pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
                Ok(Self { synced: SyncedMaps::take(ebpf)?, $( $kfield: take(ebpf, $kname)?, )+ })
            }

            /// Every map by name, agent-owned ones first.
            pub fn all(&self) -> Vec<(&'static str, &MapData)> {
                vec![$( ($sname, self.synced.$sfield.map()), )+ $( ($kname, self.$kfield.map()), )+]
            }
        }
    };
}

declare_maps! {
    synced {
        /// A subport's parent and VLAN id, before anything names the subport.
        subports: HashMap<MapData, u32, TrunkVid> = names::SUBPORTS,
        networks: HashMap<MapData, u32, NetInfo> = names::NETWORKS,
        segments: HashMap<MapData, SegmentKey, u32> = names::NET_BY_SEGMENT,
        allowed_macs: HashMap<MapData, MacKey, u32> = names::ALLOWED_MACS,
        /// (LPM prefix length, data) -> value.
        allowed_v4: LpmTrie<MapData, AddrKeyV4, u32> = names::ALLOWED_V4,
        /// (LPM prefix length, data) -> value.
        allowed_v6: LpmTrie<MapData, AddrKeyV6, u32> = names::ALLOWED_V6,
        fdb: HashMap<MapData, FdbKey, FdbEntry> = names::FDB,
        flood_sets: HashMap<MapData, u32, FloodSet> = names::FLOOD_SETS,
        flood_vteps: HashMap<MapData, u32, VtepSet> = names::FLOOD_VTEPS,
        tunnel_peers: HashMap<MapData, TunnelPeerKey, u32> = names::TUNNEL_PEERS,
        arp: HashMap<MapData, ArpKey, ArpEntry> = names::ARP_TABLE,
        /// (LPM prefix length, data) -> class. A rule table comes before the ports that use it.
        sg_rule_ports: LpmTrie<MapData, SgPortKey, u32> = names::SG_RULE_PORTS,
        /// (LPM prefix length, data) -> rule.
        sg_remote_v4: LpmTrie<MapData, SgRemoteKeyV4, u32> = names::SG_REMOTE_V4,
        /// (LPM prefix length, data) -> rule.
        sg_remote_v6: LpmTrie<MapData, SgRemoteKeyV6, u32> = names::SG_REMOTE_V6,
        sg_ports: HashMap<MapData, u32, SgPort> = names::SG_PORTS,
        /// A port's QoS limits, before its entry says it has some.
        qos_ports: HashMap<MapData, u32, QosPort> = names::QOS_PORTS,
        ports: HashMap<MapData, u32, PortInfo> = names::PORTS,
        /// The trunks' VLAN ids, once their subports' entries are there.
        trunk_vids: HashMap<MapData, TrunkVid, u32> = names::TRUNK_VIDS,
    }
    kernel {
        /// MACs learned from the wire (LRU; aged by the agent).
        fdb_learned: HashMap<MapData, FdbKey, LearnedEntry> = names::FDB_LEARNED,
        /// The QoS policers' state (LRU).
        qos_buckets: HashMap<MapData, u32, QosBucket> = names::QOS_BUCKETS,
        /// First-fragment verdicts (LRU).
        frag_verdicts: HashMap<MapData, FragKey, FragVerdict> = names::FRAG_VERDICTS,
        /// Tracked connections (the agent deletes expired ones and cuts what a policy no longer admits).
        conntrack: HashMap<MapData, CtKey, CtEntry> = names::CONNTRACK,
        /// Closing TCP connections (LRU; the agent deletes expired ones too).
        ct_closing: HashMap<MapData, CtKey, CtEntry> = names::CT_CLOSING,
        /// First-fragment security-group verdicts (LRU).
        sg_frags: HashMap<MapData, FragKey, FragVerdict> = names::SG_FRAGS,
        /// Per-port counters.
        port_stats: PerCpuArray<MapData, PortCounters> = names::PORT_STATS,
        /// Per-port counters of the uplinks' XDP stage.
        xdp_stats: PerCpuArray<MapData, PortCounters> = names::XDP_STATS,
        /// The taps the XDP stage's fast path may send to (the attacher keeps it).
        xdp_taps: DevMapHash<MapData> = names::XDP_TAPS,
        /// The underlay device, for its XDP stage (the attacher keeps it).
        xdp_underlay: HashMap<MapData, u32, UnderlayInfo> = names::XDP_UNDERLAY,
        /// The decision record of traced runs.
        trace: PerCpuArray<MapData, TraceRecord> = names::TRACE,
        /// What the monitor's listeners asked for (the agent writes it; the programs read it).
        monitor: Array<MapData, MonitorConfig> = names::MONITOR,
        /// The monitor's per-CPU rate limit and suppressed count.
        monitor_rate: PerCpuArray<MapData, MonitorRate> = names::MONITOR_RATE,
    }
}

/// Slot `slot` of a per-CPU counter map (`PORT_STATS`, `XDP_STATS`), summed over CPUs.
pub fn summed(
    map: &PerCpuArray<MapData, PortCounters>,
    slot: u32,
) -> Result<PortCounters, aya::maps::MapError> {
    let mut sum: PortCounters = bytemuck::Zeroable::zeroed();
    for c in map.get(&slot, 0)?.iter() {
        sum.accumulate(c);
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_upserts_changed_and_new_deletes_gone() {
        let desired: BTreeMap<u32, u32> = [(1, 10), (2, 20), (3, 30)].into();
        let current: BTreeMap<u32, u32> = [(1, 10), (2, 21), (4, 40)].into();
        let d = MapDiff::between(&desired, &current);
        assert_eq!(d.upserts, vec![(2, 20), (3, 30)]);
        assert_eq!(d.deletes, vec![4]);
    }

    #[test]
    fn diff_of_equal_states_is_empty() {
        let mut s = MapState::default();
        s.networks.insert(1, bytemuck::Zeroable::zeroed());
        assert!(s.diff(&s.clone()).is_empty());
        let d = MapState::default().diff(&s);
        assert_eq!(d.networks.deletes, vec![1]);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn patch_reports_what_the_fragments_change() {
        let mut union: BTreeMap<u32, u32> = [(1, 10), (2, 20), (3, 30)].into();
        let remove: BTreeMap<u32, u32> = [(1, 10), (2, 20)].into();
        let add: BTreeMap<u32, u32> = [(2, 20), (4, 40), (1, 11)].into();
        let d = patch_map(&mut union, &remove, &add);
        assert_eq!(union, [(1, 11), (2, 20), (3, 30), (4, 40)].into());
        assert_eq!(d.upserts, vec![(1, 11), (4, 40)], "2 came back unchanged: no write");
        assert!(d.deletes.is_empty());
        let d = patch_map(&mut union, &[(4, 40)].into(), &BTreeMap::new());
        assert_eq!((d.upserts, d.deletes), (vec![], vec![4]));
    }

    /// Every map of the object is declared here exactly once, synced or kernel-owned,
    /// and a port (which points at a network) is added after the network.
    #[test]
    fn every_map_is_declared_once_in_dependency_order() {
        let synced: Vec<&str> = Synced::ORDER.iter().map(|s| s.name()).collect();
        // The ring buffer is the loader's own handle (`Datapath::events`).
        let mut all: Vec<&str> =
            synced.iter().chain(KERNEL_MAPS).copied().chain([names::MONITOR_EVENTS]).collect();
        all.sort();
        let mut want = names::ALL_MAPS.to_vec();
        want.sort();
        assert_eq!(all, want);
        let at = |n: &str| synced.iter().position(|s| *s == n).unwrap();
        assert!(at(names::NETWORKS) < at(names::NET_BY_SEGMENT));
        assert!(at(names::NETWORKS) < at(names::PORTS));
        assert!(at(names::FDB) < at(names::PORTS));
        assert!(at(names::FLOOD_SETS) < at(names::PORTS));
        for table in [names::SG_RULE_PORTS, names::SG_REMOTE_V4, names::SG_REMOTE_V6] {
            assert!(at(table) < at(names::SG_PORTS), "a policy is whole before a port points at it");
        }
        assert!(at(names::SG_PORTS) < at(names::PORTS), "a port's policy exists before the port does");
        assert_eq!(synced[synced.len() - 2], names::PORTS, "a port's entries exist before the port does");
        for named in [names::FDB, names::FLOOD_SETS, names::PORTS] {
            assert!(at(names::SUBPORTS) < at(named), "a subport's parent is known before {named} names it");
        }
        assert_eq!(
            synced.last(),
            Some(&names::TRUNK_VIDS),
            "a VLAN leads to a subport only once it is whole"
        );
    }
}
