//! The legacy-like chain, built from what this kernel has (no OVS module, no
//! 8021q, no bridge VLAN filtering), in the shape Neutron's OVS hybrid agent
//! gives every VM port:
//!
//! ```text
//! VM eth0 - tapX -[qbrX: Linux bridge + iptables physdev rules]- qvbX/qvoX - br-int
//!   - int-br-eth/phy-br-eth - br-eth - eth2 -> physical network bridge   (VLAN nodes)
//!   - patch-tun/patch-int - br-tun - vxlan-5000 over eth1 -> underlay     (VXLAN nodes)
//! ```
//!
//! br-int, br-eth and br-tun are Linux bridges standing in for OVS bridges.
//! Without VLAN support they forward untagged, which spares the legacy side
//! the tag rewrites OVS does. Every namespace goes with its guard.

use anyhow::{Context, Result};
use datapath_tests::netns::Netns;

use super::{
    plan::{Scenario, VMS, VNI, VXLAN_MTU},
    traffic::{Endpoint, Flow, napi_for_generator},
};

/// VTEP addresses of the two VXLAN nodes on the underlay.
const VTEPS: [&str; 2] = ["192.0.2.20", "192.0.2.21"];

/// A VM of the legacy chain.
struct LegacyVm {
    pub ns: Netns,
    pub ip: String,
    pub mac: String,
}

impl LegacyVm {
    /// The VM as a traffic endpoint.
    fn endpoint(&self) -> Endpoint<'_> {
        Endpoint { ns: &self.ns, ip: &self.ip, mac: &self.mac }
    }
}

/// How a node reaches the others.
enum Wire {
    /// br-eth with uplink eth2 on the physical network bridge.
    Vlan,
    /// br-tun with a VXLAN device from `local` to `remote` over eth1 on the underlay bridge.
    Vxlan { local: &'static str, remote: &'static str },
}

/// Every namespace of the chain; fields drop in order: VMs, nodes, then the physical network.
pub struct Legacy {
    vms: Vec<LegacyVm>,
    nodes: Vec<Netns>,
    phys: Netns,
}

impl Legacy {
    /// The benchmark's layout: VLAN nodes vlan0/vlan1 and VXLAN nodes tun0/tun1
    /// (one br-int cannot have both wires: without VLANs the two would make a loop),
    /// with the VMs of `plan::VMS` in their order.
    pub fn build() -> Result<Self> {
        let mut l = Self::new()?;
        let vlan = [l.add_node("vlan0", Wire::Vlan)?, l.add_node("vlan1", Wire::Vlan)?];
        let tun = [
            l.add_node("tun0", Wire::Vxlan { local: VTEPS[0], remote: VTEPS[1] })?,
            l.add_node("tun1", Wire::Vxlan { local: VTEPS[1], remote: VTEPS[0] })?,
        ];
        for v in &VMS {
            let (node, mtu) = if v.vxlan { (tun[v.node], VXLAN_MTU) } else { (vlan[v.node], 1500) };
            l.add_vm(node, v.port_id, v.ip, v.mac, mtu)?;
        }
        Ok(l)
    }

    /// The flow of `scenario`.
    pub fn flow(&self, scenario: Scenario) -> Flow<'_> {
        let (a, b) = scenario.pair();
        Flow { src: self.vms[a].endpoint(), dst: self.vms[b].endpoint() }
    }

    /// The physical network: bridge br0 for VLAN uplinks, bridge ul0 for the VXLAN underlay.
    fn new() -> Result<Self> {
        let phys = Netns::new("lg-phys")?;
        for br in ["br0", "ul0"] {
            phys.exec(&["ip", "link", "add", br, "type", "bridge"])?;
            phys.exec(&["ip", "link", "set", br, "up"])?;
        }
        Ok(Self { vms: Vec::new(), nodes: Vec::new(), phys })
    }

    /// Adds a node with br-int and its wire side; returns its index.
    fn add_node(&mut self, tag: &str, wire: Wire) -> Result<usize> {
        let ns = Netns::new(&format!("lg-{tag}"))?;
        ns.exec(&["ip", "link", "add", "br-int", "type", "bridge"])?;
        ns.exec(&["ip", "link", "set", "br-int", "up"])?;
        // In the real chain br-int and br-eth are OVS bridges, which netfilter never sees;
        // here they are Linux bridges, so the namespace-wide switches (on by default in a
        // new namespace) go off and only the qbr bridges call iptables (see add_vm).
        for table in ["iptables", "ip6tables", "arptables"] {
            let file = format!("/proc/sys/net/bridge/bridge-nf-call-{table}");
            ns.exec(&["sh", "-c", &format!("echo 0 > {file}")])
                .with_context(|| format!("turning off {file} in {}", ns.name()))?;
        }
        let peer = format!("up-{tag}");
        match wire {
            Wire::Vlan => {
                self.patch(&ns, "br-int", "int-br-eth", "br-eth", "phy-br-eth")?;
                self.plug(&ns, "eth2", &peer, "br0")?;
                ns.exec(&["ip", "link", "set", "eth2", "master", "br-eth"])?;
            }
            Wire::Vxlan { local, remote } => {
                self.patch(&ns, "br-int", "patch-tun", "br-tun", "patch-int")?;
                self.plug(&ns, "eth1", &peer, "ul0")?;
                ns.exec(&["ip", "addr", "add", &format!("{local}/24"), "dev", "eth1"])?;
                let (vx, vni) = (format!("vxlan-{VNI}"), VNI.to_string());
                let vxlan =
                    ["type", "vxlan", "id", &vni, "local", local, "remote", remote, "dstport", "4789"];
                ns.exec(&[&["ip", "link", "add", &vx][..], &vxlan, &["dev", "eth1"]].concat())?;
                ns.exec(&["ip", "link", "set", &vx, "master", "br-tun", "up"])?;
            }
        }
        self.nodes.push(ns);
        Ok(self.nodes.len() - 1)
    }

    /// Creates `dev` in `ns`, up, with its veth peer `peer` on `bridge` of the physical network.
    fn plug(&self, ns: &Netns, dev: &str, peer: &str, bridge: &str) -> Result<()> {
        let phys = self.phys.name();
        ns.exec(&["ip", "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", phys])?;
        ns.exec(&["ip", "link", "set", dev, "up"])?;
        self.phys.exec(&["ip", "link", "set", peer, "master", bridge, "up"])?;
        Ok(())
    }

    /// Creates bridge `bridge` and joins it to `from` through the veth pair `a`/`b`.
    fn patch(&self, ns: &Netns, from: &str, a: &str, bridge: &str, b: &str) -> Result<()> {
        ns.exec(&["ip", "link", "add", bridge, "type", "bridge"])?;
        ns.exec(&["ip", "link", "set", bridge, "up"])?;
        ns.exec(&["ip", "link", "add", a, "type", "veth", "peer", "name", b])?;
        ns.exec(&["ip", "link", "set", a, "master", from, "up"])?;
        ns.exec(&["ip", "link", "set", b, "master", bridge, "up"])?;
        Ok(())
    }

    /// Plugs a VM into `node` the hybrid way (tap, qbr with iptables, qvb/qvo into br-int);
    /// `port_id` names the devices as Nova and Neutron do. Returns the VM's index.
    fn add_vm(&mut self, node: usize, port_id: &str, ip: &str, mac: &str, mtu: u32) -> Result<usize> {
        let n = &self.nodes[node];
        let vm = Netns::new("lg-vm")?;
        let id = &port_id[..11];
        let (tap, qbr, qvb, qvo) =
            (format!("tap{id}"), format!("qbr{id}"), format!("qvb{id}"), format!("qvo{id}"));
        n.exec(&["ip", "link", "add", &tap, "type", "veth", "peer", "name", "eth0", "netns", vm.name()])?;
        // Only the qbr bridges pass frames to iptables, as in the hybrid chain (see add_node).
        let nf = ["nf_call_iptables", "1", "nf_call_ip6tables", "1"];
        n.exec(&[&["ip", "link", "add", &qbr, "type", "bridge"][..], &nf].concat())?;
        n.exec(&["ip", "link", "add", &qvb, "type", "veth", "peer", "name", &qvo])?;
        n.exec(&["ip", "link", "set", &tap, "master", &qbr, "up"])?;
        napi_for_generator(n, &tap)?;
        n.exec(&["ip", "link", "set", &qvb, "master", &qbr, "up"])?;
        n.exec(&["ip", "link", "set", &qvo, "master", "br-int", "up"])?;
        n.exec(&["ip", "link", "set", &qbr, "up"])?;
        // The hybrid firewall matches each port's bridged traffic by physdev, both ways.
        for dir in ["--physdev-in", "--physdev-out"] {
            let rule = ["-m", "physdev", dir, &tap, "--physdev-is-bridged", "-j", "ACCEPT"];
            n.exec(&[&["iptables", "-A", "FORWARD"][..], &rule].concat())?;
        }
        let mtu = mtu.to_string();
        vm.exec(&["ip", "link", "set", "eth0", "address", mac, "mtu", &mtu, "up"])?;
        vm.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        self.vms.push(LegacyVm { ns: vm, ip: ip.into(), mac: mac.into() });
        Ok(self.vms.len() - 1)
    }
}
