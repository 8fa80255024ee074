//! The datapath on the same topologies, built with the topology tests' own
//! cluster: two nodes (uplink eth2 on the physical bridge, eth1 on the VXLAN
//! underlay), one agent each, a VLAN network and a VXLAN network, and the
//! VMs of `plan::VMS`; the security-group pairs' ports carry their group.
//! node0 serves its Prometheus metrics, for the scrape's cost.

use anyhow::{Result, bail};
use datapath_tests::{
    cluster::{Cluster, PortSpec, agents_json, network_json},
    netns::http_get,
};
use serde_json::{Value, json};

use super::{
    plan::{Group, QOS_POLICY_ID, Scenario, VLAN_SEGMENT, VMS, VNI, VXLAN_MTU, qos_policy_json},
    traffic::{Endpoint, Flow, napi_for_generator},
};

/// node0's Prometheus endpoint, inside its namespace.
const METRICS_ADDRESS: &str = "127.0.0.1:9110";

const VLAN_NET: &str = "b0b0b0b0-0000-4000-8000-00000000b001";
const VXLAN_NET: &str = "b0b0b0b0-0000-4000-8000-00000000b002";

/// The running cluster; agents, namespaces and pins go when it drops.
pub struct Ours {
    cluster: Cluster,
}

impl Ours {
    /// Builds the cluster, starts both agents and waits until every scenario's flow pings.
    pub fn new() -> Result<Self> {
        let mut c = Cluster::with_tunnels("bench", 2)?;
        let ports: Vec<PortSpec> = VMS
            .iter()
            .map(|v| {
                let net = if v.vxlan { VXLAN_NET } else { VLAN_NET };
                PortSpec::vm(v.port_id, net, v.mac, v.ip, &format!("node{}", v.node))
            })
            .collect();
        let mut vx = network_json(VXLAN_NET, "bench-vxlan", "vxlan", Some(VNI));
        vx["mtu"] = json!(VXLAN_MTU);
        vx["provider:physical_network"] = Value::Null;
        let groups: Vec<Group> = Scenario::SG.into_iter().filter_map(Group::of).collect();
        let port_json = |(p, spec): (&PortSpec, &super::plan::VmSpec)| {
            let mut v = p.to_json();
            if let Some(g) = spec.group.and_then(Group::of) {
                v["security_groups"] = json!([g.id]);
            }
            if spec.qos {
                v["qos_policy_id"] = json!(QOS_POLICY_ID);
            }
            v
        };
        c.write_bindings(&json!({
            "networks": [network_json(VLAN_NET, "bench-vlan", "vlan", Some(VLAN_SEGMENT)), vx],
            "ports": ports.iter().zip(&VMS).map(port_json).collect::<Vec<_>>(),
            "security_groups": groups.iter().map(Group::to_json).collect::<Vec<_>>(),
            "qos_policies": [qos_policy_json()],
            "agents": agents_json(2),
        }))?;
        for (port, spec) in ports.into_iter().zip(&VMS) {
            let (node, dev) = (port.host.clone(), port.device());
            let i = c.add_vm(&node, port)?;
            napi_for_generator(&c.node(&node).ns, &dev)?;
            c.vms[i].set_static_ip()?;
            if spec.vxlan {
                c.vms[i].exec(&["ip", "link", "set", "eth0", "mtu", &VXLAN_MTU.to_string()])?;
            }
        }
        c.append_config("node0", &format!("metrics_address = \"{METRICS_ADDRESS}\""))?;
        c.start_agent("node0")?;
        c.start_agent("node1")?;
        let ours = Self { cluster: c };
        for sc in Scenario::ALL.into_iter().chain(Scenario::SG).chain([Scenario::SameNodeQos]) {
            let (a, b) = sc.pair();
            let vms = &ours.cluster.vms;
            if !vms[a].reaches(&vms[b].port.ip) {
                let logs: Vec<String> = ours
                    .cluster
                    .nodes
                    .iter()
                    .filter_map(|n| n.agent.as_ref().map(|a| format!("--- {}:\n{}", n.name, a.log_text())))
                    .collect();
                bail!(
                    "datapath {}: {} does not reach {} within 10 s; agent logs:\n{}",
                    sc.name(),
                    vms[a].port.ip,
                    vms[b].port.ip,
                    logs.join("\n")
                );
            }
        }
        Ok(ours)
    }

    /// One scrape of node0's metrics, as Prometheus makes it: the exposition's size in bytes.
    pub fn scrape(&self) -> Result<usize> {
        let (status, body) = http_get(&self.cluster.node("node0").ns, METRICS_ADDRESS, "/metrics")?;
        if status != 200 {
            bail!("scraping node0's metrics: HTTP {status}: {body}");
        }
        Ok(body.len())
    }

    /// A `datapath monitor` of every drop on node0, running until the child is killed.
    pub fn monitor(&self) -> Result<std::process::Child> {
        let child = std::process::Command::new(datapath_tests::cluster::datapath_bin())
            .args(["monitor", "--json", "--config"])
            .arg(&self.cluster.node("node0").config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(child)
    }

    /// `datapath metrics` of node0: the value of `series`.
    pub fn metric(&self, series: &str) -> Result<Option<f64>> {
        self.cluster.metric("node0", series)
    }

    /// The flow of `scenario`.
    pub fn flow(&self, scenario: Scenario) -> Flow<'_> {
        let (a, b) = scenario.pair();
        let end = |i: usize| {
            let vm = &self.cluster.vms[i];
            Endpoint { ns: &vm.ns, ip: &vm.port.ip, mac: &vm.port.mac }
        };
        Flow { src: end(a), dst: end(b) }
    }
}
