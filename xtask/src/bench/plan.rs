//! What is measured and how long: the scenarios, the VMs both paths share
//! (same ports, addresses and placement), and the quick and full durations.

use std::time::Duration;

/// A traffic scenario, measured on both paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// VM to VM on one node, VLAN network.
    SameNodeVlan,
    /// VM to VM across two nodes over the physical network, VLAN 1000.
    CrossNodeVlan,
    /// VM to VM across two nodes through VXLAN (VNI 5000) over the underlay.
    CrossNodeVxlan,
}

impl Scenario {
    /// Every scenario, in the order they run and are reported.
    pub const ALL: [Scenario; 3] =
        [Scenario::SameNodeVlan, Scenario::CrossNodeVlan, Scenario::CrossNodeVxlan];

    /// Its name in results.json.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::SameNodeVlan => "same-node-vlan",
            Scenario::CrossNodeVlan => "cross-node-vlan",
            Scenario::CrossNodeVxlan => "cross-node-vxlan",
        }
    }

    /// (sender, receiver) indices into `VMS`.
    pub fn pair(self) -> (usize, usize) {
        match self {
            Scenario::SameNodeVlan => (0, 1),
            Scenario::CrossNodeVlan => (0, 2),
            Scenario::CrossNodeVxlan => (3, 4),
        }
    }
}

/// One VM of the benchmark.
pub struct VmSpec {
    /// Neutron port id; device names are derived from it.
    pub port_id: &'static str,
    /// On the VXLAN network (else on the VLAN one).
    pub vxlan: bool,
    pub mac: &'static str,
    pub ip: &'static str,
    /// node0 or node1.
    pub node: usize,
}

/// The VMs of both paths.
pub const VMS: [VmSpec; 5] = [
    VmSpec {
        port_id: "b0000001-0a00-4000-8000-000000000001",
        vxlan: false,
        mac: "fa:16:3e:30:00:01",
        ip: "10.30.0.1",
        node: 0,
    },
    VmSpec {
        port_id: "b0000002-0a00-4000-8000-000000000002",
        vxlan: false,
        mac: "fa:16:3e:30:00:02",
        ip: "10.30.0.2",
        node: 0,
    },
    VmSpec {
        port_id: "b0000003-0a00-4000-8000-000000000003",
        vxlan: false,
        mac: "fa:16:3e:30:00:03",
        ip: "10.30.0.3",
        node: 1,
    },
    VmSpec {
        port_id: "b0000004-0a00-4000-8000-000000000004",
        vxlan: true,
        mac: "fa:16:3e:31:00:01",
        ip: "10.31.0.1",
        node: 0,
    },
    VmSpec {
        port_id: "b0000005-0a00-4000-8000-000000000005",
        vxlan: true,
        mac: "fa:16:3e:31:00:02",
        ip: "10.31.0.2",
        node: 1,
    },
];

/// VLAN segment of the VLAN network.
pub const VLAN_SEGMENT: u32 = 1000;
/// VNI of the VXLAN network.
pub const VNI: u32 = 5000;
/// MTU of the VXLAN network (Neutron's 1450 on a 1500 underlay), set in its VMs.
pub const VXLAN_MTU: u32 = 1450;

/// Rounds and durations.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Each round measures every scenario on both paths; figures are medians over rounds.
    pub rounds: usize,
    /// How long the receiver counts 64-byte frames.
    pub pps_window: Duration,
    /// iperf3 -t.
    pub tcp_secs: u32,
    /// sockperf -t (it spends the first 400 ms warming up).
    pub rtt_secs: u32,
    /// One-port changes timed (half adds, half removes).
    pub changes: usize,
    /// Taps plugged one by one to time their wiring, per binding source.
    pub wiring_ports: usize,
}

impl Plan {
    /// The quick (CI smoke) or the full plan.
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 1,
                pps_window: Duration::from_millis(1500),
                tcp_secs: 2,
                rtt_secs: 1,
                changes: 4,
                wiring_ports: 10,
            }
        } else {
            Self {
                rounds: 3,
                pps_window: Duration::from_secs(5),
                tcp_secs: 5,
                rtt_secs: 5,
                changes: 20,
                wiring_ports: 200,
            }
        }
    }
}
