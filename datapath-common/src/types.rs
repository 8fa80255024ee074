//! Map keys and values. `#[repr(C)]`, explicitly padded, Pod; sizes asserted.

use crate::reason::{ACTION_SLOTS, DROP_REASON_SLOTS};

/// Declares shared POD structs: `#[repr(C)]`, Clone/Copy/Debug, the user-side
/// Pod impls behind the `user` feature, and a compile-time size assertion.
macro_rules! shared {
    ($( $(#[$meta:meta])* pub struct $name:ident [$size:expr] { $($body:tt)* } )+) => {
        $(
            $(#[$meta])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
            #[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
            pub struct $name { $($body)* }

            #[cfg(feature = "user")]
            // SAFETY: repr(C), no implicit padding (checked by bytemuck's derive), any bit pattern valid.
            unsafe impl aya::Pod for $name {}

            const _: () = assert!(core::mem::size_of::<$name>() == $size);
        )+
    };
}

/// Size of `NetInfo` (larger in the `abi-next` test build).
#[cfg(not(feature = "abi-next"))]
pub const NET_INFO_SIZE: usize = 16;
/// Size of `NetInfo` (larger in the `abi-next` test build).
#[cfg(feature = "abi-next")]
pub const NET_INFO_SIZE: usize = 20;

/// Port kind: a VM tap (`compute:*` owner). DHCP server replies from it are dropped.
pub const PORT_KIND_VM: u8 = 1;
/// Port kind: a namespace port of a `network:*` owner (DHCP, router).
pub const PORT_KIND_NETWORK: u8 = 2;
/// Port kind: a physical uplink of a physical network.
pub const PORT_KIND_UPLINK: u8 = 3;
/// Port kind: the collect-metadata VXLAN device.
pub const PORT_KIND_TUNNEL: u8 = 4;

/// The port has a binding for this host.
pub const PORT_F_BOUND: u32 = 1 << 0;
/// `admin_state_up: true`.
pub const PORT_F_ADMIN_UP: u32 = 1 << 1;
/// Anti-spoofing applies (port security on and not a `network:*` owner).
pub const PORT_F_ANTI_SPOOF: u32 = 1 << 2;
/// Security groups apply: the port's `SG_PORTS` entry must exist, else its
/// traffic drops (fail closed).
pub const PORT_F_SECGROUPS: u32 = 1 << 3;
/// On an uplink: untagged frames that no flat network claims go to the host
/// stack (the node's own address on the uplink) instead of being dropped.
pub const PORT_F_HOST_UNTAGGED: u32 = 1 << 4;

/// The port has a QoS policy that limits or marks its traffic: its
/// `QOS_PORTS` entry says how (none: nothing is enforced).
pub const PORT_F_QOS: u32 = 1 << 5;

/// Network type: untagged on the uplink.
pub const NET_TYPE_FLAT: u32 = 1;
/// Network type: 802.1Q tag = segmentation id on the uplink.
pub const NET_TYPE_VLAN: u32 = 2;
/// Network type: VXLAN, VNI = segmentation id.
pub const NET_TYPE_VXLAN: u32 = 3;

/// `SegmentKey::segment` of untagged (and priority-tagged) frames: flat networks.
pub const SEGMENT_UNTAGGED: u32 = 0;

/// FDB entry for one of this node's own bound ports.
pub const FDB_F_LOCAL: u32 = 1 << 0;
/// FDB entry for a MAC behind the uplink or a tunnel (from the bindings).
pub const FDB_F_REMOTE: u32 = 1 << 1;

/// Bound on local ports of one network on one node (the flood list).
pub const MAX_FLOOD_PORTS: usize = 64;
/// Bound on remote VTEPs one tunnel network floods to (head-end replication).
pub const MAX_FLOOD_VTEPS: usize = 64;
/// Capacity of `TUNNEL_PEERS`: (network, remote VTEP) pairs.
pub const MAX_TUNNEL_PEERS: u32 = 65536;
/// The first id of subports (trunk ports' VLAN subinterfaces, which have no
/// device): above every kernel ifindex (a positive `int`), so that a subport
/// takes an ifindex's place in `PORTS`, the FDB, flood sets and every
/// per-port key without meeting a device's.
pub const SUBPORT_ID_BASE: u32 = 0x8000_0000;
/// Capacity of `SUBPORTS` and `TRUNK_VIDS`: subports on one node.
pub const MAX_SUBPORTS: u32 = 4096;

/// Whether `ifindex` is a subport's id rather than a device's.
#[inline(always)]
pub const fn is_subport(ifindex: u32) -> bool {
    ifindex >= SUBPORT_ID_BASE
}

/// Underlay devices (`XDP_UNDERLAY`): the one that holds `local_ip`.
pub const MAX_UNDERLAYS: u32 = 8;
/// Bound on the targets one traced run may record (local ports plus VTEPs or uplink).
pub const MAX_TRACE_TARGETS: usize = MAX_FLOOD_PORTS + MAX_FLOOD_VTEPS;
/// Capacity of `ARP_TABLE`.
pub const MAX_ARP: u32 = 65536;
/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;

/// Capacity of the LRU `FRAG_VERDICTS`: fragmented datagrams in flight from all ports.
pub const MAX_FRAG_DATAGRAMS: u32 = 8192;

/// `FragKey::family` of IPv4 datagrams.
pub const FRAG_FAMILY_V4: u8 = 4;
/// `FragKey::family` of IPv6 datagrams.
pub const FRAG_FAMILY_V6: u8 = 6;

/// `SgPort::flags`: the port's groups are stateful (connections are tracked).
pub const SG_F_STATEFUL: u32 = 1 << 0;
/// `SgPort::flags`: the port has an IPv6 fixed IP, so router advertisements may reach it.
pub const SG_F_IPV6: u32 = 1 << 1;

/// `SgPortKey::direction` of rules for what a port receives.
pub const SG_DIR_INGRESS: u8 = 1;
/// `SgPortKey::direction` of rules for what a port sends.
pub const SG_DIR_EGRESS: u8 = 2;
/// `SgPortKey::family` and `CtKey::family` of IPv4.
pub const IP_FAMILY_V4: u8 = 4;
/// `SgPortKey::family` and `CtKey::family` of IPv6.
pub const IP_FAMILY_V6: u8 = 6;
/// Bits of an `SgPortKey` before the port: the LPM prefix is this plus the port block's.
pub const SG_PORT_KEY_FIXED_BITS: u32 = 64;
/// Bits of an `SgRemoteKeyV4`/`V6` before the address: the LPM prefix is this plus the remote prefix's.
pub const SG_REMOTE_KEY_FIXED_BITS: u32 = 64;

/// Capacity of `SG_RULE_PORTS`, `SG_REMOTE_V4` and `SG_REMOTE_V6` (entries of every policy).
pub const MAX_SG_ENTRIES: u32 = 262_144;
/// Capacity of `CONNTRACK`: when it is full, new connections are refused (`ct_full`).
pub const MAX_CONNTRACK: u32 = 262_144;
/// Capacity of the LRU `CT_CLOSING`: past it, the closing connection least
/// recently seen is forgotten, as Linux conntrack's early drop forgets one.
pub const MAX_CT_CLOSING: u32 = 65_536;
/// Capacity of the LRU `SG_FRAGS`.
pub const MAX_SG_FRAGS: u32 = 8192;

/// `CtEntry::flags`: the connection was opened towards the port (an ingress
/// rule admitted it); without it, the port opened it.
pub const CT_F_INGRESS: u32 = 1 << 0;
/// `CtEntry::flags`: a packet in the reply direction was seen.
pub const CT_F_REPLIED: u32 = 1 << 1;
/// `CtEntry::flags`: the opener sent a FIN.
pub const CT_F_FIN_ORIG: u32 = 1 << 2;
/// `CtEntry::flags`: the other side sent a FIN.
pub const CT_F_FIN_REPLY: u32 = 1 << 3;
/// `CtEntry::table` of a connection carried over from another map layout,
/// whose table ids mean nothing here: no rule is named for it, and a policy
/// change judges it by the rules (0, a fixed allowance, is carried as it is).
pub const CT_TABLE_UNKNOWN: u32 = u32::MAX;
/// `CtEntry::flags`: a RST was seen.
pub const CT_F_RST: u32 = 1 << 4;
/// `CtEntry::flags` of a closing TCP connection (a FIN or a RST was seen):
/// its entry lives in `CT_CLOSING`, not `CONNTRACK`.
pub const CT_F_CLOSING: u32 = CT_F_FIN_ORIG | CT_F_FIN_REPLY | CT_F_RST;

const SEC: u64 = 1_000_000_000;

/// How long a tracked connection lives without a packet, by protocol and
/// state: Linux conntrack's defaults (`nf_conntrack_*_timeout*`), which
/// the hybrid driver's users have. Both sides use it: the programs treat an
/// older entry as gone, the agent deletes it.
pub const fn ct_lifetime_ns(protocol: u8, flags: u32) -> u64 {
    match protocol {
        6 => {
            if flags & CT_F_RST != 0 {
                10 * SEC
            } else if flags & (CT_F_FIN_ORIG | CT_F_FIN_REPLY) != 0 {
                120 * SEC
            } else if flags & CT_F_REPLIED != 0 {
                432_000 * SEC
            } else {
                120 * SEC
            }
        }
        17 | 136 => {
            if flags & CT_F_REPLIED != 0 {
                120 * SEC
            } else {
                30 * SEC
            }
        }
        1 | 58 => 30 * SEC,
        _ => 600 * SEC,
    }
}

/// IP protocol numbers that both sides key security groups and connections by.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_DCCP: u8 = 33;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_UDPLITE: u8 = 136;

/// Whether a protocol has ports: its rules may name a port range
/// (neutron-lib's list), and the kernel keys its packets by port
/// (`SgPortKey::port`, `CtKey` ports). Other protocols key port 0.
pub const fn proto_has_ports(proto: u8) -> bool {
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_DCCP | IPPROTO_UDPLITE)
}

/// `TraceRecord::sg_judged`: the security groups did not judge the frame
/// (the port is not filtered, the frame is not IP, or they refused it).
pub const SG_JUDGED_NONE: u32 = 0;
/// `TraceRecord::sg_judged`: a packet of a tracked connection, or an ICMP error related to one.
pub const SG_JUDGED_TRACKED: u32 = u32::MAX;
/// `TraceRecord::sg_judged`: a fixed allowance (DHCP, NDP, ...).
pub const SG_JUDGED_ALLOWANCE: u32 = u32::MAX - 1;
/// `TraceRecord::sg_judged`: a later fragment, judged as its first fragment was.
pub const SG_JUDGED_FRAGMENT: u32 = u32::MAX - 2;

/// Rule tables a port holds in `SgPort` (a power of two, so that a slot
/// masks into range).
pub const SG_PORT_TABLES: usize = 8;
/// Rules one table may hold: a rule index fits below the slot in `sg_judged_rule`.
pub const SG_MAX_TABLE_RULES: u32 = 1 << 24;

/// `TraceRecord::sg_judged` of rule `rule` of the port's table in `slot`:
/// never one of the `SG_JUDGED_*` values.
#[inline(always)]
pub const fn sg_judged_rule(slot: u32, rule: u32) -> u32 {
    (slot & (SG_PORT_TABLES as u32 - 1)) << 24 | ((rule & (SG_MAX_TABLE_RULES - 1)) + 1)
}

/// The (slot, rule) that `sg_judged_rule` made, or None for an `SG_JUDGED_*` value.
pub const fn sg_judged_parts(judged: u32) -> Option<(u32, u32)> {
    match judged {
        SG_JUDGED_NONE | SG_JUDGED_TRACKED | SG_JUDGED_ALLOWANCE | SG_JUDGED_FRAGMENT => None,
        j => Some((j >> 24, (j & (SG_MAX_TABLE_RULES - 1)) - 1)),
    }
}

/// `MonitorConfig::flags`: a listener wants every drop.
pub const MONITOR_F_DROPS: u32 = 1 << 0;
/// `MonitorConfig::flags`: a listener wants every decision at `MonitorConfig::ifindex`.
pub const MONITOR_F_DECISIONS: u32 = 1 << 1;
/// Bytes of each frame a monitor event carries (a power of two).
pub const MONITOR_SNAP: usize = 128;
/// Events each CPU may send per second; the rest are counted in `MonitorRate::suppressed`.
pub const MONITOR_EVENTS_PER_SEC: u32 = 2000;
/// Size of the `MONITOR_EVENTS` ring buffer in bytes (a power of two, a multiple of the page).
pub const MONITOR_RING_BYTES: u32 = 1 << 20;
/// `MonitorEvent::program`: the index of the program in `names::ALL_PROGRAMS`.
pub const MONITOR_PROGRAMS: usize = crate::names::ALL_PROGRAMS.len();

/// `QosPort` and `QosBucket` index of what a port sends (Neutron's "egress").
pub const QOS_DIR_EGRESS: usize = 0;
/// `QosPort` and `QosBucket` index of what a port receives (Neutron's "ingress").
pub const QOS_DIR_INGRESS: usize = 1;
/// `QosPort::flags`: rewrite the DSCP of the IPv4 and IPv6 packets the port sends.
pub const QOS_F_DSCP: u32 = 1 << 0;
/// Capacity of the LRU `QOS_BUCKETS` (ports and subports).
pub const MAX_QOS_BUCKETS: u32 = MAX_PORTS + MAX_SUBPORTS;

/// Capacity of `PORTS` and of the stats slots (slot 0 is "no port").
pub const MAX_PORTS: u32 = 4096;
/// Capacity of `NETWORKS`; local indices are 1..MAX_NETWORKS.
pub const MAX_NETWORKS: u32 = 4096;
/// Capacity of `NET_BY_SEGMENT`.
pub const MAX_SEGMENTS: u32 = 8192;
/// Capacity of the static `FDB`.
pub const MAX_FDB: u32 = 65536;
/// Capacity of the LRU `FDB_LEARNED`.
pub const MAX_FDB_LEARNED: u32 = 65536;
/// Capacity of each of `ALLOWED_MACS`, `ALLOWED_V4`, `ALLOWED_V6`.
pub const MAX_ALLOWED: u32 = 65536;

/// Bits of an address key taken by (ifindex, mac, pad): the LPM prefix is this plus the IP prefix.
pub const ADDR_KEY_FIXED_BITS: u32 = 96;

/// `cb[0]`/`cb[1]` values that ask a program to record its decision in `TRACE`
/// and to send nothing (`datapath trace` and the program tests).
pub const TRACE_MAGIC: [u32; 2] = [0x7472_6163, 0x6450_6174];
/// `cb[2]` value of a traced run that must leave no trace in the live state:
/// no counters, no learning (`datapath trace` against a running agent).
pub const TRACE_DRY_RUN: u32 = 0x6472_7972;

shared! {
    /// Value of `PORTS` (key: ifindex `u32`).
    pub struct PortInfo [16] {
        /// Node-local network index; 0 when unbound.
        pub net_index: u32,
        /// `PORT_F_*`.
        pub flags: u32,
        /// Index into `PORT_STATS`.
        pub stats_slot: u32,
        /// `PORT_KIND_*`.
        pub kind: u8,
        pub _pad: [u8; 3],
    }

    /// Value of `NETWORKS` (key: node-local network index `u32`).
    ///
    /// Its first three fields (the network's identity on this node's wire)
    /// keep their offsets in every layout version: an agent of another
    /// version maps old network indices to new ones through them when it
    /// carries learned MACs over an upgrade or a downgrade.
    pub struct NetInfo [NET_INFO_SIZE] {
        /// Uplink ifindex for flat/VLAN networks; 0 if the node has none.
        pub uplink_ifindex: u32,
        /// VLAN id or VNI; 0 for flat.
        pub segmentation_id: u32,
        /// `NET_TYPE_*`.
        pub net_type: u32,
        /// Network MTU.
        pub mtu: u32,
        /// A field that only a test build (`abi-next`) has: it gives the
        /// upgrade tests a real layout change to cross.
        #[cfg(feature = "abi-next")]
        pub _next: u32,
    }

    /// Key of `NET_BY_SEGMENT`.
    pub struct SegmentKey [8] {
        /// ifindex of the uplink the frame came in on.
        pub ifindex: u32,
        /// VLAN id, or `SEGMENT_UNTAGGED`.
        pub segment: u32,
    }

    /// Key of `FDB` and `FDB_LEARNED`.
    pub struct FdbKey [12] {
        pub net_index: u32,
        pub mac: [u8; 6],
        pub _pad: [u8; 2],
    }

    /// Value of `FDB`.
    pub struct FdbEntry [12] {
        /// Where to send: a local port or the uplink.
        pub ifindex: u32,
        /// `FDB_F_*`.
        pub flags: u32,
        /// Remote VTEP (IPv4, host byte order, as `bpf_skb_set_tunnel_key` takes it); 0 otherwise.
        pub vtep_ipv4: u32,
    }

    /// Value of `FDB_LEARNED`.
    pub struct LearnedEntry [16] {
        /// The uplink (or tunnel device) the MAC was seen on.
        pub ifindex: u32,
        /// Remote VTEP for tunnel networks (host byte order); 0 otherwise.
        pub vtep_ipv4: u32,
        /// `bpf_ktime_get_ns()` of the last frame from this MAC.
        pub last_seen_ns: u64,
    }

    /// Value of `FLOOD_SETS` (key: network index `u32`): the network's local ports.
    pub struct FloodSet [260] {
        /// Valid entries in `ifindex`.
        pub count: u32,
        pub ifindex: [u32; MAX_FLOOD_PORTS],
    }

    /// Value of `FLOOD_VTEPS` (key: network index `u32`): remote VTEPs of the network.
    pub struct VtepSet [264] {
        /// Valid entries in `vtep_ipv4`.
        pub count: u32,
        pub _pad: u32,
        /// IPv4 addresses, host byte order.
        pub vtep_ipv4: [u32; MAX_FLOOD_VTEPS],
    }

    /// Key of `TUNNEL_PEERS`: a remote VTEP that hosts ports of a tunnel network.
    pub struct TunnelPeerKey [8] {
        pub net_index: u32,
        /// IPv4 address, host byte order.
        pub vtep_ipv4: u32,
    }

    /// Value of `XDP_UNDERLAY` (key: the underlay device's ifindex `u32`):
    /// what its XDP stage needs to tell this node's tunnel traffic.
    pub struct UnderlayInfo [8] {
        /// The VXLAN device's ifindex: its networks' `NET_BY_SEGMENT` keys, and its stats slot.
        pub tunnel_ifindex: u32,
        /// This node's VTEP address (`local_ip`), host byte order.
        pub local_ipv4: u32,
    }

    /// Value of `SUBPORTS` (key: the subport's id) and key of `TRUNK_VIDS`
    /// (value: the subport's id): a subport is its parent's tap and a VLAN id.
    pub struct TrunkVid [8] {
        /// The parent port's tap.
        pub parent_ifindex: u32,
        /// The VLAN id the VM uses for the subport (1..=4094).
        pub vid: u32,
    }

    /// Value of `QOS_PORTS` (key: the port's ifindex or subport id): the
    /// limits of its QoS policy, by direction (`QOS_DIR_*`), as the costs a
    /// GCRA policer charges. A cost of 0: no limit of that kind.
    pub struct QosPort [72] {
        /// Picoseconds each byte costs (8e9 / the rate in kbit/s).
        pub ps_per_byte: [u64; 2],
        /// How far ahead of now the byte limit may run, in ns: the burst.
        pub byte_burst_ns: [u64; 2],
        /// Picoseconds each packet costs (1e9 / the rate in kpps).
        pub ps_per_packet: [u64; 2],
        /// How far ahead of now the packet limit may run, in ns.
        pub packet_burst_ns: [u64; 2],
        /// `QOS_F_*`.
        pub flags: u32,
        /// The DSCP value (0..=63) to mark with (`QOS_F_DSCP`).
        pub dscp: u8,
        pub _pad: [u8; 3],
    }

    /// Value of `QOS_BUCKETS` (key: as `QOS_PORTS`): each limit's
    /// theoretical arrival time (GCRA) and the cost it was computed with,
    /// so that a changed policy starts afresh.
    pub struct QosBucket [64] {
        /// Bytes: [egress, ingress]; then packets: [egress, ingress].
        pub tat_ns: [u64; 4],
        /// The `ps_per_byte`/`ps_per_packet` each `tat_ns` was charged at.
        pub cost_ps: [u64; 4],
    }

    /// Key of `ARP_TABLE`.
    pub struct ArpKey [8] {
        pub net_index: u32,
        pub ipv4: [u8; 4],
    }

    /// Value of `ARP_TABLE`.
    pub struct ArpEntry [8] {
        pub mac: [u8; 6],
        pub _pad: [u8; 2],
    }

    /// Key of `ALLOWED_MACS`.
    pub struct MacKey [12] {
        pub ifindex: u32,
        pub mac: [u8; 6],
        pub _pad: [u8; 2],
    }

    /// LPM data of `ALLOWED_V4`; the prefix covers ifindex and mac fully.
    pub struct AddrKeyV4 [16] {
        pub ifindex: u32,
        pub mac: [u8; 6],
        pub _pad: [u8; 2],
        pub addr: [u8; 4],
    }

    /// LPM data of `ALLOWED_V6`; the prefix covers ifindex and mac fully.
    pub struct AddrKeyV6 [28] {
        pub ifindex: u32,
        pub mac: [u8; 6],
        pub _pad: [u8; 2],
        pub addr: [u8; 16],
    }

    /// Value of `PORT_STATS` (per CPU, index: stats slot).
    pub struct PortCounters [512] {
        /// Packets dropped, by `DropReason`.
        pub drops: [u64; DROP_REASON_SLOTS],
        /// Packets handled, by `Action`.
        pub actions: [u64; ACTION_SLOTS],
    }

    /// Key of `FRAG_VERDICTS`: one fragmented datagram sent by one port.
    /// IPv4 addresses fill the first 4 bytes of `src`/`dst`, the rest zero.
    pub struct FragKey [44] {
        /// The port (ingress ifindex) that sent the datagram.
        pub ifindex: u32,
        /// The IP identification (IPv4: 16 bits; IPv6: the fragment header's 32).
        pub id: u32,
        pub src: [u8; 16],
        pub dst: [u8; 16],
        /// The upper-layer protocol the first fragment carried.
        pub proto: u8,
        /// `FRAG_FAMILY_V4` or `FRAG_FAMILY_V6`.
        pub family: u8,
        pub _pad: [u8; 2],
    }

    /// Value of `FRAG_VERDICTS`: what the first fragment's upper-layer checks decided.
    pub struct FragVerdict [8] {
        /// 0: the datagram passed; otherwise the `DropReason` of its first fragment.
        pub reason: u32,
        pub _pad: u32,
    }

    /// Value of `SG_PORTS` (key: ifindex `u32`): the port's rule tables,
    /// one per security group (`SG_PORT_TABLES` at most; a port with more
    /// groups has the rest compiled into its last table). A packet passes
    /// when any of them admits it.
    pub struct SgPort [40] {
        /// Table ids in `SG_RULE_PORTS` and `SG_REMOTE_*`, the first `count`
        /// used. A changed group gets a new table id, its table written
        /// whole before the ports point at it.
        pub tables: [u32; SG_PORT_TABLES],
        /// Tables in use: 0 for a port whose group list is empty (it admits
        /// only the fixed allowances).
        pub count: u32,
        /// `SG_F_*`.
        pub flags: u32,
    }

    /// LPM data of `SG_RULE_PORTS`: (table, direction, family, protocol)
    /// exactly, then a block of destination ports (ICMP: type << 8 | code).
    /// Value: the class (the set of rules whose ports hold the block).
    pub struct SgPortKey [12] {
        pub table: u32,
        /// `SG_DIR_*`.
        pub direction: u8,
        /// `IP_FAMILY_*`.
        pub family: u8,
        /// The IP protocol; 0 in the table of rules of any protocol.
        pub protocol: u8,
        /// 1: the table of rules of any protocol, for protocols without rules of their own.
        pub any_protocol: u8,
        /// Big-endian, so that a prefix of the key is a block of ports.
        pub port: [u8; 2],
        pub _pad: [u8; 2],
    }

    /// LPM data of `SG_REMOTE_V4`: (table, class) exactly, then the remote
    /// address. Value: the index of the first rule of the table that admits
    /// it (below `SG_MAX_TABLE_RULES`).
    pub struct SgRemoteKeyV4 [12] {
        pub table: u32,
        pub class: u32,
        pub addr: [u8; 4],
    }

    /// LPM data of `SG_REMOTE_V6`, as `SgRemoteKeyV4`.
    pub struct SgRemoteKeyV6 [24] {
        pub table: u32,
        pub class: u32,
        pub addr: [u8; 16],
    }

    /// Key of `CONNTRACK`: one connection as one port sees it. The port is
    /// the zone: overlapping addresses of two networks never meet, and the
    /// two ends of a connection between two local ports have an entry each,
    /// as with the hybrid driver's zone per port.
    pub struct CtKey [44] {
        pub ifindex: u32,
        /// The port's end: source port when it sends; ICMP echo: the identifier.
        pub local_port: u16,
        /// The other end's port; ICMP echo: 0.
        pub remote_port: u16,
        pub protocol: u8,
        /// `IP_FAMILY_*`.
        pub family: u8,
        pub _pad: [u8; 2],
        /// IPv4 addresses fill the first 4 bytes, the rest zero.
        pub local: [u8; 16],
        pub remote: [u8; 16],
    }

    /// Value of `CONNTRACK`.
    pub struct CtEntry [32] {
        /// `bpf_ktime_get_ns()` when the connection was opened.
        pub created_ns: u64,
        /// `bpf_ktime_get_ns()` of a recent packet (refreshed at most once a second).
        pub last_seen_ns: u64,
        /// `CT_F_*`.
        pub flags: u32,
        /// The rule table that admitted the connection (0: a fixed allowance).
        pub table: u32,
        /// The index of the rule in that table that admitted it.
        pub rule: u32,
        /// How long the entry lives without packets: `ct_lifetime_ns` of its
        /// protocol and flags, in seconds, set whenever the flags change.
        pub lifetime_s: u32,
    }

    /// One destination recorded by a traced run.
    pub struct TraceTarget [16] {
        pub ifindex: u32,
        /// VLAN id pushed towards this target; 0 for none.
        pub vlan: u32,
        /// Remote VTEP (host byte order) of a tunnel target; 0 for none.
        pub vtep_ipv4: u32,
        /// VNI of a tunnel target; 0 for none.
        pub vni: u32,
    }

    /// Value of `MONITOR` (index 0): what the agent's monitor listeners asked
    /// for. All zero when nobody listens: the programs then read one word.
    pub struct MonitorConfig [8] {
        /// `MONITOR_F_*`.
        pub flags: u32,
        /// The device whose every decision is reported (`MONITOR_F_DECISIONS`).
        pub ifindex: u32,
    }

    /// Value of `MONITOR_RATE` (per CPU, index 0): a one-second window of events.
    pub struct MonitorRate [24] {
        /// `bpf_ktime_get_ns()` when the current window began.
        pub window_ns: u64,
        /// Events sent in the window, up to `MONITOR_EVENTS_PER_SEC`.
        pub sent: u32,
        pub _pad: u32,
        /// Events not sent since the map was created: over the rate, or the ring full.
        pub suppressed: u64,
    }

    /// One record of `MONITOR_EVENTS`: a drop, or a decision at the watched device.
    pub struct MonitorEvent [168] {
        /// `bpf_ktime_get_ns()` (monotonic, since boot).
        pub ts_ns: u64,
        /// The device the program ran on.
        pub ifindex: u32,
        /// The port's stats slot (0: a device the agent does not know).
        pub slot: u32,
        /// The `DropReason`, or 0 when not dropped.
        pub reason: u32,
        /// The `Action`, when not dropped.
        pub action: u32,
        /// The frame's length on the wire.
        pub len: u32,
        /// Bytes of the frame in `snap`.
        pub snap_len: u32,
        /// Index of the program in `names::ALL_PROGRAMS` (`PROG_INDEX_*`).
        pub program: u32,
        /// The network index the frame was classified into (0: not yet).
        pub net_index: u32,
        pub snap: [u8; MONITOR_SNAP],
    }

    /// Value of `TRACE` (per CPU, index 0).
    pub struct TraceRecord [2072] {
        /// 1 once a traced run wrote it.
        pub valid: u32,
        /// The `Action` taken, when not dropped.
        pub action: u32,
        /// The `DropReason`, or 0.
        pub reason: u32,
        /// Valid entries in `targets`.
        pub target_count: u32,
        /// Node-local network index the frame was classified into.
        pub net_index: u32,
        /// What admitted it past the port's security groups: `SG_JUDGED_*`,
        /// or a rule of one of the port's tables (`sg_judged_rule`).
        pub sg_judged: u32,
        pub targets: [TraceTarget; MAX_TRACE_TARGETS],
    }
}

impl PortCounters {
    /// Adds `other` counter by counter (summing per-CPU values).
    pub fn accumulate(&mut self, other: &PortCounters) {
        for (sum, v) in self.drops.iter_mut().zip(other.drops) {
            *sum += v;
        }
        for (sum, v) in self.actions.iter_mut().zip(other.actions) {
            *sum += v;
        }
    }

    /// What moved since `earlier` (counters only grow while a slot is in use).
    pub fn since(&self, earlier: &PortCounters) -> PortCounters {
        let mut d = *self;
        for (v, e) in d.drops.iter_mut().zip(earlier.drops) {
            *v = v.wrapping_sub(e);
        }
        for (v, e) in d.actions.iter_mut().zip(earlier.actions) {
            *v = v.wrapping_sub(e);
        }
        d
    }
}
