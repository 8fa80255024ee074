//! Map and program names, defined once for both sides.
//!
//! The eBPF crate names its `static` maps and program functions exactly like
//! these constants; the user side looks them up by these constants, and a unit
//! test on the user side checks that the embedded object holds exactly these
//! maps and programs. Every name fits the kernel's 15-character limit.

/// Port attributes by ifindex: [`crate::PortInfo`].
pub const PORTS: &str = "PORTS";
/// Network attributes by node-local network index: [`crate::NetInfo`].
pub const NETWORKS: &str = "NETWORKS";
/// Node-local network index by (uplink ifindex, segment): [`crate::SegmentKey`] -> `u32`.
pub const NET_BY_SEGMENT: &str = "NET_BY_SEGMENT";
/// Static forwarding entries from the bindings: [`crate::FdbKey`] -> [`crate::FdbEntry`].
pub const FDB: &str = "FDB";
/// Remote MACs learned by the kernel, LRU-bounded and aged by the agent.
pub const FDB_LEARNED: &str = "FDB_LEARNED";
/// Local ports of each network, the flood list: `u32` -> [`crate::FloodSet`].
pub const FLOOD_SETS: &str = "FLOOD_SETS";
/// MACs a port may send from: [`crate::MacKey`] -> `u32`.
pub const ALLOWED_MACS: &str = "ALLOWED_MACS";
/// IPv4 (port, MAC, prefix) triples a port may send from (LPM trie).
pub const ALLOWED_V4: &str = "ALLOWED_V4";
/// IPv6 (port, MAC, prefix) triples a port may send from (LPM trie).
pub const ALLOWED_V6: &str = "ALLOWED_V6";
/// Remote VTEPs hosting ports of each tunnel network (head-end replication): `u32` -> [`crate::VtepSet`].
pub const FLOOD_VTEPS: &str = "FLOOD_VTEPS";
/// The remote VTEPs each tunnel network accepts frames from: [`crate::TunnelPeerKey`] -> `u32`.
pub const TUNNEL_PEERS: &str = "TUNNEL_PEERS";
/// IPv4 -> MAC of every known port, per network, for the ARP responder: [`crate::ArpKey`] -> [`crate::ArpEntry`].
pub const ARP_TABLE: &str = "ARP_TABLE";
/// The verdict of each fragmented datagram's first fragment, for its later fragments:
/// [`crate::FragKey`] -> [`crate::FragVerdict`] (LRU).
pub const FRAG_VERDICTS: &str = "FRAG_VERDICTS";
/// The security-group policy of each port: `u32` -> [`crate::SgPort`].
pub const SG_PORTS: &str = "SG_PORTS";
/// Policies' destination-port blocks -> class (LPM trie): [`crate::SgPortKey`] -> `u32`.
pub const SG_RULE_PORTS: &str = "SG_RULE_PORTS";
/// Policies' IPv4 remotes per class -> rule (LPM trie): [`crate::SgRemoteKeyV4`] -> `u32`.
pub const SG_REMOTE_V4: &str = "SG_REMOTE_V4";
/// Policies' IPv6 remotes per class -> rule (LPM trie): [`crate::SgRemoteKeyV6`] -> `u32`.
pub const SG_REMOTE_V6: &str = "SG_REMOTE_V6";
/// Tracked connections of stateful ports: [`crate::CtKey`] -> [`crate::CtEntry`].
pub const CONNTRACK: &str = "CONNTRACK";
/// Tracked TCP connections that saw a FIN or a RST (LRU, so that closing
/// connections cannot fill `CONNTRACK`): [`crate::CtKey`] -> [`crate::CtEntry`].
pub const CT_CLOSING: &str = "CT_CLOSING";
/// The security-group verdict of fragmented datagrams' first fragments, for
/// the later ones (LRU): [`crate::FragKey`] -> [`crate::FragVerdict`].
pub const SG_FRAGS: &str = "SG_FRAGS";
/// Each subport's parent tap and VLAN id: `u32` (subport id) -> [`crate::TrunkVid`].
pub const SUBPORTS: &str = "SUBPORTS";
/// The subport a VLAN id of a trunk's parent tap carries: [`crate::TrunkVid`] -> `u32` (subport id).
pub const TRUNK_VIDS: &str = "TRUNK_VIDS";
/// Each policed or marked port's QoS limits: `u32` (ifindex or subport id) -> [`crate::QosPort`].
pub const QOS_PORTS: &str = "QOS_PORTS";
/// The policers' state per port (LRU, kernel-owned): `u32` -> [`crate::QosBucket`].
pub const QOS_BUCKETS: &str = "QOS_BUCKETS";
/// Per-CPU counters per port slot: [`crate::PortCounters`].
pub const PORT_STATS: &str = "PORT_STATS";
/// Per-CPU counters of the uplinks' XDP stage, by the uplink's port slot: [`crate::PortCounters`].
pub const XDP_STATS: &str = "XDP_STATS";
/// Taps the uplinks' XDP stage may hand frames to (devmap hash): ifindex -> the tap.
pub const XDP_TAPS: &str = "XDP_TAPS";
/// The underlay device whose XDP stage checks tunnel traffic: ifindex -> [`crate::UnderlayInfo`].
pub const XDP_UNDERLAY: &str = "XDP_UNDERLAY";
/// Per-CPU decision record of the last traced run: [`crate::TraceRecord`].
pub const TRACE: &str = "TRACE";
/// What the monitor's listeners asked for (array, index 0): [`crate::MonitorConfig`].
pub const MONITOR: &str = "MONITOR";
/// The monitor's per-CPU rate limit and what it suppressed: [`crate::MonitorRate`].
pub const MONITOR_RATE: &str = "MONITOR_RATE";
/// The monitor's events, to the agent (ring buffer): [`crate::MonitorEvent`] records.
pub const MONITOR_EVENTS: &str = "MONITOR_EVENTS";

/// All maps of the object, in a stable order.
pub const ALL_MAPS: [&str; 32] = [
    PORTS,
    NETWORKS,
    NET_BY_SEGMENT,
    FDB,
    FDB_LEARNED,
    FLOOD_SETS,
    ALLOWED_MACS,
    ALLOWED_V4,
    ALLOWED_V6,
    FLOOD_VTEPS,
    TUNNEL_PEERS,
    ARP_TABLE,
    FRAG_VERDICTS,
    SG_PORTS,
    SG_RULE_PORTS,
    SG_REMOTE_V4,
    SG_REMOTE_V6,
    CONNTRACK,
    CT_CLOSING,
    SG_FRAGS,
    SUBPORTS,
    TRUNK_VIDS,
    QOS_PORTS,
    QOS_BUCKETS,
    PORT_STATS,
    XDP_STATS,
    XDP_TAPS,
    XDP_UNDERLAY,
    TRACE,
    MONITOR,
    MONITOR_RATE,
    MONITOR_EVENTS,
];

/// TC ingress program for VM taps and namespace ports (traffic sent by the port).
pub const PROG_VM_PORT: &str = "vm_port";
/// TC ingress program for the physical uplink (traffic from the wire).
pub const PROG_UPLINK: &str = "uplink_in";

/// TC ingress program for the VXLAN device (traffic decapsulated from tunnels).
pub const PROG_TUNNEL: &str = "tunnel_in";

/// TC egress program for VM taps and namespace ports (traffic delivered to
/// the port): the ingress security-group rules.
pub const PROG_VM_PORT_OUT: &str = "vm_port_out";

/// XDP program for the physical uplink, in the driver before the TC stage:
/// the drops that need no skb.
pub const PROG_UPLINK_XDP: &str = "uplink_xdp";

/// XDP program for the underlay device (the one holding `local_ip`): tunnel
/// traffic of no served VNI, or from no tunnel peer, dropped in the driver.
pub const PROG_UNDERLAY_XDP: &str = "underlay_xdp";

/// All programs of the object.
pub const ALL_PROGRAMS: [&str; 6] = {
    let mut all = [""; 6];
    all[PROG_INDEX_VM_PORT as usize] = PROG_VM_PORT;
    all[PROG_INDEX_UPLINK as usize] = PROG_UPLINK;
    all[PROG_INDEX_TUNNEL as usize] = PROG_TUNNEL;
    all[PROG_INDEX_VM_PORT_OUT as usize] = PROG_VM_PORT_OUT;
    all[PROG_INDEX_UPLINK_XDP as usize] = PROG_UPLINK_XDP;
    all[PROG_INDEX_UNDERLAY_XDP as usize] = PROG_UNDERLAY_XDP;
    all
};

/// `vm_port`'s index in `ALL_PROGRAMS` (`MonitorEvent::program`).
pub const PROG_INDEX_VM_PORT: u32 = 0;
/// `uplink_in`'s index in `ALL_PROGRAMS`.
pub const PROG_INDEX_UPLINK: u32 = 1;
/// `tunnel_in`'s index in `ALL_PROGRAMS`.
pub const PROG_INDEX_TUNNEL: u32 = 2;
/// `vm_port_out`'s index in `ALL_PROGRAMS`.
pub const PROG_INDEX_VM_PORT_OUT: u32 = 3;
/// `uplink_xdp`'s index in `ALL_PROGRAMS`.
pub const PROG_INDEX_UPLINK_XDP: u32 = 4;
/// `underlay_xdp`'s index in `ALL_PROGRAMS`.
pub const PROG_INDEX_UNDERLAY_XDP: u32 = 5;

const _: () = {
    let mut i = 0;
    while i < ALL_MAPS.len() {
        assert!(ALL_MAPS[i].len() <= 15);
        i += 1;
    }
    let mut i = 0;
    while i < ALL_PROGRAMS.len() {
        assert!(ALL_PROGRAMS[i].len() <= 15);
        i += 1;
    }
};
