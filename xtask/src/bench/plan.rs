//! What is measured and how long: the scenarios, the VMs both paths share
//! (same ports, addresses and placement), the security groups both paths
//! enforce, and the quick and full durations.

use std::time::Duration;

use serde_json::{Value, json};

/// A traffic scenario, measured on both paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// VM to VM on one node, VLAN network.
    SameNodeVlan,
    /// VM to VM across two nodes over the physical network, VLAN 1000.
    CrossNodeVlan,
    /// VM to VM across two nodes through VXLAN (VNI 5000) over the underlay.
    CrossNodeVxlan,
    /// VM to VM on one node, VLAN network, both in one stateful group of 10 rules.
    SameNodeSg10,
    /// The same with 100 rules: the group the datapath-vs-legacy goals are set for.
    SameNodeSg100,
    /// The same with 1,000 rules.
    SameNodeSg1000,
    /// VM to VM on one node, VLAN network, both ports under a QoS policy
    /// whose limits never bind (and a DSCP mark): the datapath only.
    SameNodeQos,
}

impl Scenario {
    /// Every scenario, in the order they run and are reported.
    pub const ALL: [Scenario; 3] =
        [Scenario::SameNodeVlan, Scenario::CrossNodeVlan, Scenario::CrossNodeVxlan];

    /// The security-group scenarios, in the order they run and are reported.
    pub const SG: [Scenario; 3] = [Scenario::SameNodeSg10, Scenario::SameNodeSg100, Scenario::SameNodeSg1000];

    /// Its name in results.json.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::SameNodeVlan => "same-node-vlan",
            Scenario::CrossNodeVlan => "cross-node-vlan",
            Scenario::CrossNodeVxlan => "cross-node-vxlan",
            Scenario::SameNodeSg10 => "same-node-sg10",
            Scenario::SameNodeSg100 => "same-node-sg100",
            Scenario::SameNodeSg1000 => "same-node-sg1000",
            Scenario::SameNodeQos => "same-node-qos",
        }
    }

    /// (sender, receiver) indices into `VMS`.
    pub fn pair(self) -> (usize, usize) {
        match self {
            Scenario::SameNodeVlan => (0, 1),
            Scenario::CrossNodeVlan => (0, 2),
            Scenario::CrossNodeVxlan => (3, 4),
            Scenario::SameNodeSg10 => (5, 6),
            Scenario::SameNodeSg100 => (7, 8),
            Scenario::SameNodeSg1000 => (9, 10),
            Scenario::SameNodeQos => (11, 12),
        }
    }

    /// How many rules the pair's group has; None for the scenarios without groups.
    pub fn sg_rules(self) -> Option<usize> {
        match self {
            Scenario::SameNodeSg10 => Some(10),
            Scenario::SameNodeSg100 => Some(100),
            Scenario::SameNodeSg1000 => Some(1000),
            _ => None,
        }
    }
}

/// UDP port of the 64-byte frames (source and destination); the receiver drops it in its raw table.
pub const SINK_PORT: u16 = 9;

/// A stateful security group of `rules` rules that both VMs of a pair are in,
/// in Neutron's API shape: egress to anyone, then `rules - 2` ingress rules
/// that miss the pair's traffic (TCP ports 30000 and up; UDP to the sink port
/// from 172.16.x.y), then the one that admits it, from the group's members
/// (Neutron's default group has the same rule). A new packet meets every
/// miss before the admitting rule, as in a long iptables chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub rules: usize,
}

impl Group {
    /// The group of a security-group scenario.
    pub fn of(sc: Scenario) -> Option<Self> {
        let rules = sc.sg_rules()?;
        Some(Self { id: format!("5ec0{rules:04x}-0000-4000-8000-{rules:012x}"), rules })
    }

    /// The group with its rules, as `GET /v2.0/security-groups` returns it.
    pub fn to_json(&self) -> Value {
        json!({"id": self.id, "name": format!("bench-{}-rules", self.rules), "stateful": true,
               "security_group_rules": self.rules_json()})
    }

    /// The rules, in order.
    pub fn rules_json(&self) -> Vec<Value> {
        let g = &self.id;
        let mut out = vec![json!({"id": format!("{g}-egress"), "direction": "egress", "ethertype": "IPv4"})];
        for i in 0..self.rules.saturating_sub(2) {
            let id = format!("{g}-miss{i}");
            out.push(if i % 2 == 0 {
                json!({"id": id, "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                       "port_range_min": 30000 + i, "port_range_max": 30000 + i})
            } else {
                json!({"id": id, "direction": "ingress", "ethertype": "IPv4", "protocol": "udp",
                       "port_range_min": SINK_PORT, "port_range_max": SINK_PORT,
                       "remote_ip_prefix": format!("172.16.{}.{}/32", i / 256, i % 256)})
            });
        }
        out.push(json!({"id": format!("{g}-members"), "direction": "ingress", "ethertype": "IPv4",
                        "remote_group_id": g}));
        out
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
    /// The security-group scenario whose group the port is in (None: no `security_groups` key).
    pub group: Option<Scenario>,
    /// The port is under `QOS_POLICY` (the datapath only; the legacy chain builds it plain).
    pub qos: bool,
}

/// The id of the QoS policy of the policed pair.
pub const QOS_POLICY_ID: &str = "b0b0b0b0-0000-4000-8000-00000000a05a";

/// The policed pair's policy, as `GET /v2.0/qos/policies` returns it: every
/// limit in both directions, far above what a veth carries, so that it
/// measures what policing costs and never what it drops; and a DSCP mark.
pub fn qos_policy_json() -> Value {
    let mut rules = vec![json!({"type": "dscp_marking", "dscp_mark": 10})];
    for direction in ["egress", "ingress"] {
        rules.push(json!({"type": "bandwidth_limit", "max_kbps": 2_000_000_000u64, "direction": direction}));
        rules.push(json!({"type": "packet_rate_limit", "max_kpps": 1_000_000u64, "direction": direction}));
    }
    json!({"id": QOS_POLICY_ID, "name": "bench-never-binding", "rules": rules})
}

/// A VM of a security-group pair, on node0 of the VLAN network.
const fn sg_vm(port_id: &'static str, mac: &'static str, ip: &'static str, sc: Scenario) -> VmSpec {
    VmSpec { port_id, vxlan: false, mac, ip, node: 0, group: Some(sc), qos: false }
}

/// A VM of the policed pair, on node0 of the VLAN network.
const fn qos_vm(port_id: &'static str, mac: &'static str, ip: &'static str) -> VmSpec {
    VmSpec { port_id, vxlan: false, mac, ip, node: 0, group: None, qos: true }
}

/// The VMs of both paths, in `Scenario::pair`'s numbering.
pub const VMS: [VmSpec; 13] = [
    VmSpec {
        port_id: "b0000001-0a00-4000-8000-000000000001",
        vxlan: false,
        mac: "fa:16:3e:30:00:01",
        ip: "10.30.0.1",
        node: 0,
        group: None,
        qos: false,
    },
    VmSpec {
        port_id: "b0000002-0a00-4000-8000-000000000002",
        vxlan: false,
        mac: "fa:16:3e:30:00:02",
        ip: "10.30.0.2",
        node: 0,
        group: None,
        qos: false,
    },
    VmSpec {
        port_id: "b0000003-0a00-4000-8000-000000000003",
        vxlan: false,
        mac: "fa:16:3e:30:00:03",
        ip: "10.30.0.3",
        node: 1,
        group: None,
        qos: false,
    },
    VmSpec {
        port_id: "b0000004-0a00-4000-8000-000000000004",
        vxlan: true,
        mac: "fa:16:3e:31:00:01",
        ip: "10.31.0.1",
        node: 0,
        group: None,
        qos: false,
    },
    VmSpec {
        port_id: "b0000005-0a00-4000-8000-000000000005",
        vxlan: true,
        mac: "fa:16:3e:31:00:02",
        ip: "10.31.0.2",
        node: 1,
        group: None,
        qos: false,
    },
    sg_vm("b0000011-0a00-4000-8000-000000000011", "fa:16:3e:30:00:11", "10.30.0.11", Scenario::SameNodeSg10),
    sg_vm("b0000012-0a00-4000-8000-000000000012", "fa:16:3e:30:00:12", "10.30.0.12", Scenario::SameNodeSg10),
    sg_vm("b0000013-0a00-4000-8000-000000000013", "fa:16:3e:30:00:13", "10.30.0.13", Scenario::SameNodeSg100),
    sg_vm("b0000014-0a00-4000-8000-000000000014", "fa:16:3e:30:00:14", "10.30.0.14", Scenario::SameNodeSg100),
    sg_vm(
        "b0000015-0a00-4000-8000-000000000015",
        "fa:16:3e:30:00:15",
        "10.30.0.15",
        Scenario::SameNodeSg1000,
    ),
    sg_vm(
        "b0000016-0a00-4000-8000-000000000016",
        "fa:16:3e:30:00:16",
        "10.30.0.16",
        Scenario::SameNodeSg1000,
    ),
    qos_vm("b0000021-0a00-4000-8000-000000000021", "fa:16:3e:30:00:21", "10.30.0.21"),
    qos_vm("b0000022-0a00-4000-8000-000000000022", "fa:16:3e:30:00:22", "10.30.0.22"),
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
    /// How long the receiver counts 64-byte frames, and new connections are counted.
    pub pps_window: Duration,
    /// iperf3 -t.
    pub tcp_secs: u32,
    /// sockperf -t (it spends the first 400 ms warming up).
    pub rtt_secs: u32,
    /// One-port changes timed (half adds, half removes); also security-group rule changes.
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
