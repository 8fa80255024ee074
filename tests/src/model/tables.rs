//! The model's view of the maps: the agent's desired state, indexed for the
//! lookups the rules make, and the two tables the programs themselves write.

use std::collections::{BTreeMap, HashMap};

use datapath_common::{ADDR_KEY_FIXED_BITS, DropReason, FdbEntry, FdbKey, NetInfo, PortInfo, SegmentKey};
use datapath_user::desired::MapState;

/// (ifindex, MAC) -> the prefixes (address, prefix length) that port may send from with that MAC.
type Prefixes<const N: usize> = HashMap<(u32, [u8; 6]), Vec<([u8; N], u32)>>;

/// The agent's maps, as the model reads them.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub state: MapState,
    v4: Prefixes<4>,
    v6: Prefixes<16>,
}

/// Whether `addr` lies in `net`/`len`.
fn in_prefix(addr: &[u8], net: &[u8], len: u32) -> bool {
    let mut bits = len as usize;
    for (a, n) in addr.iter().zip(net) {
        if bits == 0 {
            return true;
        }
        let take = bits.min(8);
        let mask = (0xffu16 << (8 - take)) as u8;
        if a & mask != n & mask {
            return false;
        }
        bits -= take;
    }
    true
}

impl Model {
    /// Indexes `state` for the model's lookups.
    pub fn new(state: MapState) -> Self {
        let mut v4: HashMap<_, Vec<_>> = HashMap::new();
        for (prefix, k) in state.allowed_v4.keys() {
            v4.entry((k.ifindex, k.mac)).or_default().push((k.addr, prefix - ADDR_KEY_FIXED_BITS));
        }
        let mut v6: HashMap<_, Vec<_>> = HashMap::new();
        for (prefix, k) in state.allowed_v6.keys() {
            v6.entry((k.ifindex, k.mac)).or_default().push((k.addr, prefix - ADDR_KEY_FIXED_BITS));
        }
        Self { state, v4, v6 }
    }

    pub fn port(&self, ifindex: u32) -> Option<PortInfo> {
        self.state.ports.get(&ifindex).copied()
    }

    pub fn network(&self, index: u32) -> Option<NetInfo> {
        self.state.networks.get(&index).copied()
    }

    pub fn segment(&self, ifindex: u32, segment: u32) -> Option<u32> {
        self.state.segments.get(&SegmentKey { ifindex, segment }).copied()
    }

    /// Whether `vtep` hosts a port of network `net_index` (a tunnel peer of it).
    pub fn tunnel_peer(&self, net_index: u32, vtep: u32) -> bool {
        self.state.tunnel_peers.contains_key(&datapath_common::TunnelPeerKey { net_index, vtep_ipv4: vtep })
    }

    pub fn fdb(&self, net_index: u32, mac: [u8; 6]) -> Option<FdbEntry> {
        self.state.fdb.get(&FdbKey { net_index, mac, _pad: [0; 2] }).copied()
    }

    /// Whether the port may send from `mac` at all.
    pub fn mac_allowed(&self, ifindex: u32, mac: [u8; 6]) -> bool {
        self.state.allowed_macs.contains_key(&datapath_common::MacKey { ifindex, mac, _pad: [0; 2] })
    }

    /// Whether the port may send from (`mac`, `addr`).
    pub fn v4_allowed(&self, ifindex: u32, mac: [u8; 6], addr: [u8; 4]) -> bool {
        self.v4.get(&(ifindex, mac)).is_some_and(|l| l.iter().any(|(n, len)| in_prefix(&addr, n, *len)))
    }

    /// Whether the port may send from (`mac`, `addr`).
    pub fn v6_allowed(&self, ifindex: u32, mac: [u8; 6], addr: [u8; 16]) -> bool {
        self.v6.get(&(ifindex, mac)).is_some_and(|l| l.iter().any(|(n, len)| in_prefix(&addr, n, *len)))
    }
}

/// MACs the kernel learned from the wire: (network, MAC) -> (ifindex, VTEP).
pub type Learned = BTreeMap<(u32, [u8; 6]), (u32, u32)>;

/// What identifies a fragmented datagram from one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FragKey {
    pub ifindex: u32,
    /// IPv4 addresses sit in the first 4 bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
}

/// The verdict of each first fragment seen: `None` for pass.
pub type Frags = BTreeMap<FragKey, Option<DropReason>>;
