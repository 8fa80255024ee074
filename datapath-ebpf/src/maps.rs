//! Every map of the datapath, in one place. Names match `datapath_common::names`.
//!
//! Maps that the agent rewrites while traffic flows are `BPF_F_NO_PREALLOC`
//! hashes: an update replaces the element under RCU, so a program never reads
//! a half-written value.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use datapath_common::{
    AddrKeyV4, AddrKeyV6, ArpEntry, ArpKey, CtEntry, CtKey, FdbEntry, FdbKey, FloodSet, FragKey, FragVerdict,
    LearnedEntry, MAX_ALLOWED, MAX_ARP, MAX_CONNTRACK, MAX_CT_CLOSING, MAX_FDB, MAX_FDB_LEARNED,
    MAX_FRAG_DATAGRAMS, MAX_NETWORKS, MAX_PORTS, MAX_QOS_BUCKETS, MAX_SEGMENTS, MAX_SG_ENTRIES, MAX_SG_FRAGS,
    MAX_SUBPORTS, MAX_TUNNEL_PEERS, MAX_UNDERLAYS, MONITOR_RING_BYTES, MacKey, MonitorConfig, MonitorRate,
    NetInfo, PortCounters, PortInfo, QosBucket, QosPort, SegmentKey, SgPort, SgPortKey, SgRemoteKeyV4,
    SgRemoteKeyV6, TraceRecord, TrunkVid, TunnelPeerKey, UnderlayInfo, VtepSet,
};

#[map]
pub static PORTS: HashMap<u32, PortInfo> = HashMap::with_max_entries(MAX_PORTS, BPF_F_NO_PREALLOC);

#[map]
pub static NETWORKS: HashMap<u32, NetInfo> = HashMap::with_max_entries(MAX_NETWORKS, BPF_F_NO_PREALLOC);

#[map]
pub static NET_BY_SEGMENT: HashMap<SegmentKey, u32> =
    HashMap::with_max_entries(MAX_SEGMENTS, BPF_F_NO_PREALLOC);

#[map]
pub static FDB: HashMap<FdbKey, FdbEntry> = HashMap::with_max_entries(MAX_FDB, BPF_F_NO_PREALLOC);

#[map]
pub static FDB_LEARNED: LruHashMap<FdbKey, LearnedEntry> = LruHashMap::with_max_entries(MAX_FDB_LEARNED, 0);

#[map]
pub static FLOOD_SETS: HashMap<u32, FloodSet> = HashMap::with_max_entries(MAX_NETWORKS, BPF_F_NO_PREALLOC);

#[map]
pub static ALLOWED_MACS: HashMap<MacKey, u32> = HashMap::with_max_entries(MAX_ALLOWED, BPF_F_NO_PREALLOC);

#[map]
pub static ALLOWED_V4: LpmTrie<AddrKeyV4, u32> = LpmTrie::with_max_entries(MAX_ALLOWED, 0);

#[map]
pub static ALLOWED_V6: LpmTrie<AddrKeyV6, u32> = LpmTrie::with_max_entries(MAX_ALLOWED, 0);

#[map]
pub static FLOOD_VTEPS: HashMap<u32, VtepSet> = HashMap::with_max_entries(MAX_NETWORKS, BPF_F_NO_PREALLOC);

#[map]
pub static TUNNEL_PEERS: HashMap<TunnelPeerKey, u32> =
    HashMap::with_max_entries(MAX_TUNNEL_PEERS, BPF_F_NO_PREALLOC);

#[map]
pub static ARP_TABLE: HashMap<ArpKey, ArpEntry> = HashMap::with_max_entries(MAX_ARP, BPF_F_NO_PREALLOC);

#[map]
pub static FRAG_VERDICTS: LruHashMap<FragKey, FragVerdict> =
    LruHashMap::with_max_entries(MAX_FRAG_DATAGRAMS, 0);

#[map]
pub static SG_PORTS: HashMap<u32, SgPort> = HashMap::with_max_entries(MAX_PORTS, BPF_F_NO_PREALLOC);

#[map]
pub static SG_RULE_PORTS: LpmTrie<SgPortKey, u32> = LpmTrie::with_max_entries(MAX_SG_ENTRIES, 0);

#[map]
pub static SG_REMOTE_V4: LpmTrie<SgRemoteKeyV4, u32> = LpmTrie::with_max_entries(MAX_SG_ENTRIES, 0);

#[map]
pub static SG_REMOTE_V6: LpmTrie<SgRemoteKeyV6, u32> = LpmTrie::with_max_entries(MAX_SG_ENTRIES, 0);

/// A plain hash, not an LRU: a full table refuses new connections instead of
/// evicting established ones. Not preallocated, so memory follows the
/// connections; the agent deletes expired entries.
#[map]
pub static CONNTRACK: HashMap<CtKey, CtEntry> = HashMap::with_max_entries(MAX_CONNTRACK, BPF_F_NO_PREALLOC);

/// TCP connections that saw a FIN or a RST move here from `CONNTRACK`. An
/// LRU: a node that opens and closes connections faster than they expire
/// (10 s after a RST, 120 s after a FIN) forgets the oldest closing ones
/// instead of filling `CONNTRACK` and refusing every port's new connections.
#[map]
pub static CT_CLOSING: LruHashMap<CtKey, CtEntry> = LruHashMap::with_max_entries(MAX_CT_CLOSING, 0);

#[map]
pub static SG_FRAGS: LruHashMap<FragKey, FragVerdict> = LruHashMap::with_max_entries(MAX_SG_FRAGS, 0);

#[map]
pub static SUBPORTS: HashMap<u32, TrunkVid> = HashMap::with_max_entries(MAX_SUBPORTS, BPF_F_NO_PREALLOC);

#[map]
pub static TRUNK_VIDS: HashMap<TrunkVid, u32> = HashMap::with_max_entries(MAX_SUBPORTS, BPF_F_NO_PREALLOC);

#[map]
pub static QOS_PORTS: HashMap<u32, QosPort> =
    HashMap::with_max_entries(MAX_PORTS + MAX_SUBPORTS, BPF_F_NO_PREALLOC);

/// Kernel-owned: a bucket is made by the first frame it polices, and one of
/// a port gone is evicted in time; a port that takes its key over starts
/// afresh, as its policy's costs differ or its time is long past.
#[map]
pub static QOS_BUCKETS: LruHashMap<u32, QosBucket> = LruHashMap::with_max_entries(MAX_QOS_BUCKETS, 0);

#[map]
pub static PORT_STATS: PerCpuArray<PortCounters> = PerCpuArray::with_max_entries(MAX_PORTS, 0);

#[map]
pub static XDP_STATS: PerCpuArray<PortCounters> = PerCpuArray::with_max_entries(MAX_PORTS, 0);

/// Written by the agent for the bound taps (tun devices, which take XDP
/// frames); an entry says a tap can, not that a frame may: `uplink_xdp`
/// checks the port's flags for that.
#[map]
pub static XDP_TAPS: DevMapHash = DevMapHash::with_max_entries(MAX_PORTS, 0);

#[map]
pub static XDP_UNDERLAY: HashMap<u32, UnderlayInfo> =
    HashMap::with_max_entries(MAX_UNDERLAYS, BPF_F_NO_PREALLOC);

#[map]
pub static TRACE: PerCpuArray<TraceRecord> = PerCpuArray::with_max_entries(1, 0);

/// What the monitor's listeners asked for; all zero when nobody listens.
#[map]
pub static MONITOR: Array<MonitorConfig> = Array::with_max_entries(1, 0);

#[map]
pub static MONITOR_RATE: PerCpuArray<MonitorRate> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static MONITOR_EVENTS: RingBuf = RingBuf::with_byte_size(MONITOR_RING_BYTES, 0);
