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
//!
//! The ports with security groups sit on a node of their own (sg0), whose
//! iptables holds the ruleset Neutron's hybrid iptables firewall driver
//! (`neutron/agent/linux/iptables_firewall.py`, `OVSHybridIptablesFirewallDriver`)
//! writes for them, laid out as it lays it out; see `ruleset`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use datapath_tests::netns::Netns;
use serde_json::Value;

use super::{
    plan::{Group, Scenario, VMS, VNI, VXLAN_MTU},
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
    /// No wire: the node's VMs only reach each other.
    None,
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
    /// The ports with security groups go to node sg0, whose ruleset is written to
    /// `scratch` and loaded with iptables-restore, as the agent loads its own.
    pub fn build(scratch: &Path) -> Result<Self> {
        let mut l = Self::new()?;
        let vlan = [l.add_node("vlan0", Wire::Vlan)?, l.add_node("vlan1", Wire::Vlan)?];
        let tun = [
            l.add_node("tun0", Wire::Vxlan { local: VTEPS[0], remote: VTEPS[1] })?,
            l.add_node("tun1", Wire::Vxlan { local: VTEPS[1], remote: VTEPS[0] })?,
        ];
        let sg = l.add_node("sg0", Wire::None)?;
        let mut firewalled = Vec::new();
        // The policed pair is the datapath's alone (a cost against itself).
        for v in VMS.iter().filter(|v| !v.qos) {
            let (node, mtu) = match (v.group, v.vxlan) {
                (Some(_), _) => (sg, 1500),
                (None, true) => (tun[v.node], VXLAN_MTU),
                (None, false) => (vlan[v.node], 1500),
            };
            let group = v.group.and_then(Group::of);
            l.add_vm(node, v.port_id, v.ip, v.mac, mtu, group.is_none())?;
            if let Some(group) = group {
                firewalled.push(FwPort { device: tap_of(v.port_id), ip: v.ip, mac: v.mac, group });
            }
        }
        l.security_groups(&l.nodes[sg], &firewalled, scratch).context("the hybrid firewall's ruleset")?;
        Ok(l)
    }

    /// Creates each group's ipset of members and loads the ruleset of `ports` into `ns`.
    fn security_groups(&self, ns: &Netns, ports: &[FwPort], scratch: &Path) -> Result<()> {
        let mut groups: Vec<&Group> = ports.iter().map(|p| &p.group).collect();
        groups.dedup();
        for g in groups {
            // Neutron's ipset of a remote group: its members' fixed IPs (enable_ipset, the default).
            let set = ipset_name(&g.id);
            ns.exec(&["ipset", "create", &set, "hash:net", "family", "inet"])?;
            for p in ports.iter().filter(|p| p.group == *g) {
                ns.exec(&["ipset", "add", &set, p.ip])?;
            }
        }
        let file = scratch.join(format!("{}.iptables", ns.name()));
        std::fs::write(&file, ruleset(ports)?).with_context(|| format!("writing {}", file.display()))?;
        let path = file.to_str().context("scratch path is not UTF-8")?;
        ns.exec(&["iptables-restore", path]).map(drop)
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
            Wire::None => {}
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
    /// `port_id` names the devices as Nova and Neutron do. A port in no group gets
    /// the physdev ACCEPT pair (`accept`); the others get `ruleset`'s chains. Returns
    /// the VM's index.
    fn add_vm(
        &mut self,
        node: usize,
        port_id: &str,
        ip: &str,
        mac: &str,
        mtu: u32,
        accept: bool,
    ) -> Result<usize> {
        let n = &self.nodes[node];
        let vm = Netns::new("lg-vm")?;
        let id = &port_id[..11];
        let (tap, qbr, qvb, qvo) =
            (tap_of(port_id), format!("qbr{id}"), format!("qvb{id}"), format!("qvo{id}"));
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
        for dir in ["--physdev-in", "--physdev-out"].into_iter().filter(|_| accept) {
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

/// The tap Nova names after a port id.
fn tap_of(port_id: &str) -> String {
    format!("tap{}", &port_id[..11])
}

/// A port of the hybrid firewall.
struct FwPort {
    device: String,
    ip: &'static str,
    mac: &'static str,
    group: Group,
}

/// The firewall's prefix for the chains it owns (the agent's binary name, cut).
const PREFIX: &str = "neutron-openvswi";
/// The first conntrack zone; the agent gives each port its own, the number does not matter.
const ZONE_START: usize = 1;

/// Neutron's ipset for the IPv4 members of group `id`: "NIPv4" and the id, cut to 31 characters.
fn ipset_name(id: &str) -> String {
    format!("NIPv4{id}").chars().take(31).collect()
}

/// A port's chain: `kind` (i ingress, o egress, s spoofing) and the device name
/// without "tap", cut to iptables' limit as the agent cuts it.
fn chain(kind: &str, device: &str) -> String {
    let name: String = format!("{kind}{}", &device[3..]).chars().take(11).collect();
    format!("{PREFIX}-{name}")
}

/// One security-group rule as the driver writes it into the port's chain
/// (`_convert_sgr_to_iptables_rules`): remote prefix or ipset, protocol, port, RETURN.
fn rule_args(rule: &Value) -> Result<String> {
    let ingress = rule["direction"] == "ingress";
    let mut a = Vec::new();
    if let Some(prefix) = rule["remote_ip_prefix"].as_str() {
        a.push(format!("{} {prefix}", if ingress { "-s" } else { "-d" }));
    }
    if let Some(g) = rule["remote_group_id"].as_str() {
        a.push(format!("-m set --match-set {} {}", ipset_name(g), if ingress { "src" } else { "dst" }));
    }
    if let Some(proto) = rule["protocol"].as_str() {
        a.push(format!("-p {proto} -m {proto}"));
    }
    match (rule["port_range_min"].as_u64(), rule["port_range_max"].as_u64()) {
        (Some(lo), Some(hi)) if lo == hi => a.push(format!("--dport {lo}")),
        (Some(lo), Some(hi)) => a.push(format!("-m multiport --dports {lo}:{hi}")),
        (None, None) => {}
        _ => bail!("rule {rule} has half a port range"),
    }
    a.push("-j RETURN".into());
    Ok(a.join(" "))
}

/// The hybrid driver's ruleset for `ports`, as iptables-restore input (raw and filter).
///
/// raw: every frame from a port's tap or qvb gets the port's conntrack zone
/// (one per port). filter: FORWARD goes to neutron-filter-top, then to
/// neutron-openvswi-FORWARD, whose physdev matches send each port's bridged
/// traffic to sg-chain; sg-chain sends frames leaving through a tap to the
/// port's ingress chain (i), frames entering from a tap to its egress chain
/// (o), and accepts what comes back. Each port chain first returns
/// RELATED,ESTABLISHED, then the fixed DHCP allowances, then (o) the
/// anti-spoofing chain (s: the port's IP and MAC), then one RETURN per rule
/// in the group's order, then drops INVALID and sends the rest to
/// sg-fallback, which drops.
fn ruleset(ports: &[FwPort]) -> Result<String> {
    let (fwd, sg, fallback) =
        (format!("{PREFIX}-FORWARD"), format!("{PREFIX}-sg-chain"), format!("{PREFIX}-sg-fallback"));
    let (input, output, local) =
        (format!("{PREFIX}-INPUT"), format!("{PREFIX}-OUTPUT"), format!("{PREFIX}-local"));
    let pre = format!("{PREFIX}-PREROUTING");
    let mut raw = vec!["*raw".to_string(), format!(":{pre} - [0:0]"), format!("-A PREROUTING -j {pre}")];
    let mut chains = vec![
        "*filter".to_string(),
        ":neutron-filter-top - [0:0]".into(),
        format!(":{fwd} - [0:0]"),
        format!(":{input} - [0:0]"),
        format!(":{output} - [0:0]"),
        format!(":{local} - [0:0]"),
        format!(":{sg} - [0:0]"),
        format!(":{fallback} - [0:0]"),
    ];
    let mut rules = vec![
        format!("-A INPUT -j {input}"),
        "-A FORWARD -j neutron-filter-top".into(),
        format!("-A FORWARD -j {fwd}"),
        "-A OUTPUT -j neutron-filter-top".into(),
        format!("-A OUTPUT -j {output}"),
        format!("-A neutron-filter-top -j {local}"),
    ];
    let mut port_rules = Vec::new();
    for (k, p) in ports.iter().enumerate() {
        let (tap, qvb) = (&p.device, format!("qvb{}", &p.device[3..]));
        let zone = ZONE_START + k;
        raw.push(format!("-A {pre} -m physdev --physdev-in {qvb} -j CT --zone {zone}"));
        raw.push(format!("-A {pre} -i {qvb} -j CT --zone {zone}"));
        raw.push(format!("-A {pre} -m physdev --physdev-in {tap} -j CT --zone {zone}"));
        let (i, o, s) = (chain("i", tap), chain("o", tap), chain("s", tap));
        chains.extend([format!(":{i} - [0:0]"), format!(":{o} - [0:0]"), format!(":{s} - [0:0]")]);
        let bridged = "--physdev-is-bridged";
        rules.push(format!("-A {fwd} -m physdev --physdev-out {tap} {bridged} -j {sg}"));
        rules.push(format!("-A {fwd} -m physdev --physdev-in {tap} {bridged} -j {sg}"));
        rules.push(format!("-A {input} -m physdev --physdev-in {tap} {bridged} -j {o}"));
        port_rules.push(format!("-A {sg} -m physdev --physdev-out {tap} {bridged} -j {i}"));
        port_rules.push(format!("-A {sg} -m physdev --physdev-in {tap} {bridged} -j {o}"));
        let established = "-m state --state RELATED,ESTABLISHED -j RETURN";
        let dhcp = "-p udp -m udp --sport 67 --dport 68 -j RETURN";
        let mut ingress = vec![
            established.to_string(),
            format!("-d {}/32 {dhcp}", p.ip),
            format!("-d 255.255.255.255/32 {dhcp}"),
        ];
        let mut egress = vec![
            "-s 0.0.0.0/32 -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 -j RETURN".to_string(),
            format!("-j {s}"),
            "-p udp -m udp --sport 68 --dport 67 -j RETURN".into(),
            "-p udp -m udp --sport 67 --dport 68 -j DROP".into(),
            established.into(),
        ];
        for r in p.group.rules_json() {
            let to = if r["direction"] == "ingress" { &mut ingress } else { &mut egress };
            to.push(rule_args(&r)?);
        }
        for (name, list) in [(&i, ingress), (&o, egress)] {
            port_rules.extend(list.into_iter().map(|r| format!("-A {name} {r}")));
            port_rules.push(format!("-A {name} -m state --state INVALID -j DROP"));
            port_rules.push(format!("-A {name} -j {fallback}"));
        }
        port_rules.push(format!(
            "-A {s} -s {}/32 -m mac --mac-source {} -j RETURN",
            p.ip,
            p.mac.to_uppercase()
        ));
        port_rules.push(format!("-A {s} -j DROP"));
    }
    rules.extend(port_rules);
    rules.push(format!("-A {sg} -j ACCEPT"));
    rules.push(format!("-A {fallback} -j DROP"));
    raw.push("COMMIT".into());
    chains.extend(rules);
    chains.push("COMMIT".into());
    Ok([raw, chains].concat().join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hybrid_layout() {
        let group = Group::of(Scenario::SameNodeSg10).unwrap();
        let port = FwPort { device: tap_of(VMS[5].port_id), ip: VMS[5].ip, mac: VMS[5].mac, group };
        let text = ruleset(&[port]).unwrap();
        let i = "neutron-openvswi-ib0000011-0";
        assert!(text.contains(&format!("-A {i} -m state --state RELATED,ESTABLISHED -j RETURN")), "{text}");
        assert!(text.contains("-m physdev --physdev-in tapb0000011-0a -j CT --zone 1"), "{text}");
        assert!(
            text.contains(&format!(
                "-A {i} -m set --match-set NIPv45ec0000a-0000-4000-8000-00 src -j RETURN"
            )),
            "{text}"
        );
        assert!(text.contains(&format!("-A {i} -p tcp -m tcp --dport 30000 -j RETURN")), "{text}");
        assert!(
            text.contains(&format!("-A {i} -s 172.16.0.1/32 -p udp -m udp --dport 9 -j RETURN")),
            "{text}"
        );
        // Ten rules: one egress, eight misses and the members' rule.
        assert_eq!(text.matches(&format!("-A {i} ")).count(), 3 + 9 + 2, "{text}");
        assert!(text.contains(
            "-A neutron-openvswi-sb0000011-0 -s 10.30.0.11/32 -m mac --mac-source FA:16:3E:30:00:11 -j RETURN"
        ));
    }
}
