//! The datapath agent as Neutron's L2 agent: nodes whose agents take their
//! ports from a real neutron-server over the message bus, driven through the
//! REST API as Nova and an operator drive it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use datapath_common::DropReason;
use datapath_tests::{
    capture::Capture,
    cluster::{Cluster, PortSpec},
    netns::tcp_connects,
    neutron::{AGENT_TYPE, Neutron, Provider},
    pinned::{ifindex_in, port_view},
    wait_until,
};
use serde_json::{Value, json};

/// How long a port may take from its tap appearing to ACTIVE (generous: the machine is shared).
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Seconds between state reports of the agents under test.
const REPORT_INTERVAL: u32 = 2;

fn id(v: &Value) -> &str {
    v["id"].as_str().expect("objects have an id")
}

/// The port as the cluster builds its tap and VM.
fn spec(port: &Value, host: &str) -> PortSpec {
    let mut p = PortSpec::vm(
        id(port),
        port["network_id"].as_str().unwrap(),
        port["mac_address"].as_str().unwrap(),
        port["fixed_ips"][0]["ip_address"].as_str().unwrap(),
        host,
    );
    p.owner = port["device_owner"].as_str().unwrap_or_default().to_string();
    p
}

/// Waits until both agents are listed alive with our type and binary.
fn agents_alive(n: &Neutron, c: &Cluster, hosts: &[&str]) {
    let mut last = Vec::new();
    let ok = wait_until(Duration::from_secs(60), || {
        last = n.api().agents(None).unwrap_or_default();
        std::thread::sleep(Duration::from_millis(200));
        hosts.iter().all(|h| {
            last.iter().any(|a| {
                a["host"] == *h
                    && a["alive"] == json!(true)
                    && a["agent_type"] == AGENT_TYPE
                    && a["binary"] == "datapath"
            })
        })
    });
    assert!(ok, "agents {hosts:?} not alive: {last:#?}\n{}", logs(c, n));
}

fn logs(c: &Cluster, n: &Neutron) -> String {
    let mut out = String::new();
    for node in &c.nodes {
        if let Some(a) = &node.agent {
            let text = a.log_text();
            // State reports and their replies every few seconds would push everything else out.
            let tail: Vec<&str> = text
                .lines()
                .rev()
                .filter(|l| !l.contains("report_state") && !l.contains("reply to call"))
                .take(25)
                .collect();
            out += &format!(
                "--- agent {} ---\n{}\n",
                node.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    // What the server did with the agents' calls, and what went wrong there.
    let wanted = ["get_devices_details", "update_device", "ERROR", "Traceback", "Exception"];
    let lines: Vec<String> = n
        .logs()
        .lines()
        .filter(|l| wanted.iter().any(|w| l.contains(w)))
        .map(|l| l.chars().take(400).collect())
        .collect();
    let start = lines.len().saturating_sub(30);
    out + "--- neutron (agent calls and errors) ---\n" + &lines[start..].join("\n")
}

/// Waits until `port` is ACTIVE (or `status`); returns how long it took.
fn wait_status(n: &Neutron, c: &Cluster, port: &str, status: &str) -> Duration {
    let start = Instant::now();
    let mut last = Value::Null;
    let ok = wait_until(ACTIVE_TIMEOUT, || {
        last = n.api().port(port).unwrap_or_default();
        if last["status"] != status {
            std::thread::sleep(Duration::from_millis(50));
        }
        last["status"] == status
    });
    assert!(ok, "port {port} not {status}: {last:#}\n{}", logs(c, n));
    start.elapsed()
}

/// Waits for a running `ping` and fails unless every request got its reply.
fn assert_no_loss(ping: &mut datapath_tests::netns::NsChild, timeout: Duration, what: &str) {
    let out = ping.wait_timeout(timeout).unwrap();
    let text = ping.output();
    assert!(out.is_some_and(|s| s.success()) && text.contains(" 0% packet loss"), "{what}: {text}");
}

/// A network with a subnet; returns the network.
fn network(n: &Neutron, name: &str, provider: Provider, cidr: &str) -> Result<Value> {
    let net = n.api().create_network(name, provider).with_context(|| format!("creating {name}"))?;
    n.api().create_subnet(id(&net), cidr)?;
    Ok(net)
}

fn drops(c: &Cluster, p: &PortSpec, reason: DropReason) -> u64 {
    let ifindex = ifindex_in(&c.node(&p.host).ns, &p.device()).unwrap();
    port_view(&c.pins.path().join(&p.host), ifindex).unwrap().drops(reason)
}

fn fdb_has(c: &Cluster, node: &str, mac: &str, kind: &str) -> bool {
    c.cli_json(node, &["fdb"])
        .ok()
        .and_then(|f| f["entries"].as_array().cloned())
        .is_some_and(|e| e.iter().any(|e| e["mac"] == mac && e["type"] == kind))
}

fn cluster(tag: &str, n: &Neutron, nodes: usize, tunnels: bool) -> Result<Cluster> {
    let mut c = if tunnels { Cluster::with_tunnels(tag, nodes)? } else { Cluster::new(tag, nodes)? };
    c.use_neutron(&n.transport_url(), REPORT_INTERVAL)?;
    for i in 0..nodes {
        c.start_agent(&format!("node{i}"))?;
    }
    Ok(c)
}

#[test]
fn the_seed_scenario_through_neutron_on_a_vlan_network() {
    let n = Neutron::start().expect("starting neutron");
    let mut c = cluster("nvl", &n, 2, false).unwrap();
    agents_alive(&n, &c, &["node0", "node1"]);
    let agent = &n.api().agents(Some("node0")).unwrap()[0];
    assert_eq!(agent["configurations"]["interface_mappings"], json!({"default": "eth2"}), "{agent:#}");
    assert_eq!(agent["configurations"]["l2_population"], true, "{agent:#}");

    let net =
        network(&n, "vlan1000", Provider::Vlan { physnet: "default", id: 1000 }, "10.10.0.0/24").unwrap();
    let api = n.api();
    let dhcp = api.create_port(id(&net), "node0", "network:dhcp").unwrap();
    let vm_a = api.create_port(id(&net), "node0", "compute:nova").unwrap();
    let vm_b = api.create_port(id(&net), "node1", "compute:nova").unwrap();
    for p in [&dhcp, &vm_a, &vm_b] {
        assert_eq!(p["binding:vif_type"], "tap", "{p:#}");
        assert_eq!(p["status"], "DOWN", "no tap yet: {p:#}");
    }
    let (d, a, b) = (spec(&dhcp, "node0"), spec(&vm_a, "node0"), spec(&vm_b, "node1"));
    c.add_dhcp("node0", d.clone(), &[(&a.mac, &a.ip), (&b.mac, &b.ip)], None).unwrap();
    let ia = c.add_vm("node0", a.clone()).unwrap();
    let ib = c.add_vm("node1", b.clone()).unwrap();
    for p in [&d, &a, &b] {
        let took = wait_status(&n, &c, &p.id, "ACTIVE");
        eprintln!("{} ACTIVE {took:?} after its tap", p.device());
    }

    // The VMs get their leases from the DHCP port and reach each other across nodes.
    let script = c.udhcpc_script().unwrap();
    assert_eq!(c.vms[ia].dhcp(&script).unwrap(), a.ip);
    assert_eq!(c.vms[ib].dhcp(&script).unwrap(), b.ip);
    assert!(c.vms[ia].reaches(&b.ip), "{}", logs(&c, &n));

    // admin_state_up false: the port stops forwarding and goes DOWN; true brings it back.
    api.update_port(&b.id, json!({"admin_state_up": false})).unwrap();
    wait_status(&n, &c, &b.id, "DOWN");
    let ok = wait_until(Duration::from_secs(20), || {
        ports_of(&c, "node1").iter().any(|(id, _, state)| *id == b.id && state == "admin_down")
    });
    assert!(ok, "node1 did not take the port down: {:?}\n{}", ports_of(&c, "node1"), logs(&c, &n));
    assert!(
        !c.vms[ib].ping(&a.ip, 2),
        "an admin-down port forwarded: {:#}\n{}",
        c.cli_json("node1", &["ports"]).unwrap_or_default(),
        logs(&c, &n)
    );
    assert!(drops(&c, &b, DropReason::PortAdminDown) >= 1, "port_admin_down counted");
    api.update_port(&b.id, json!({"admin_state_up": true})).unwrap();
    wait_status(&n, &c, &b.id, "ACTIVE");
    assert!(c.vms[ia].reaches(&b.ip), "back up: {}", logs(&c, &n));

    // Allowed address pairs take effect: b may send from an extra address.
    let extra = "10.10.0.250";
    c.vms[ib].exec(&["ip", "addr", "add", &format!("{extra}/24"), "dev", "eth0"]).unwrap();
    assert!(!c.vms[ib].ping_from(extra, &a.ip, 2), "an address not allowed got through");
    assert!(drops(&c, &b, DropReason::Ipv4SrcSpoof) >= 1, "ipv4_src_spoof counted");
    api.update_port(&b.id, json!({"allowed_address_pairs": [{"ip_address": extra}]})).unwrap();
    let ok = wait_until(Duration::from_secs(20), || c.vms[ib].ping_from(extra, &a.ip, 1));
    assert!(ok, "the allowed address pair did not take effect: {}", logs(&c, &n));

    // DELETE the port: it leaves the maps of node1; its tap is left unbound.
    api.delete_port(&b.id).unwrap();
    let ok = wait_until(Duration::from_secs(20), || {
        c.cli_json("node1", &["ports"]).is_ok_and(|v| {
            v["ports"].as_array().is_some_and(|ports| {
                ports.iter().any(|p| p["device"] == b.device().as_str() && p["state"] == "unbound")
            })
        })
    });
    assert!(ok, "the deleted port is still programmed on node1: {}", logs(&c, &n));
    assert!(!c.vms[ib].ping(&a.ip, 1), "a deleted port forwarded");
    assert!(drops(&c, &b, DropReason::PortUnbound) >= 1, "port_unbound counted");

    let status = c.cli_json("node0", &["status"]).unwrap();
    assert_eq!(status["source"], "neutron", "{status:#}");
    assert!(status["bindings"].as_str().unwrap().contains(":***@"), "the password is masked: {status:#}");
    assert_eq!(status["bindings_error"], Value::Null, "{status:#}");
}

#[test]
fn vxlan_with_l2population_reaches_only_the_nodes_of_the_network() {
    let n = Neutron::start().expect("starting neutron");
    let mut c = cluster("nvx", &n, 3, true).unwrap();
    agents_alive(&n, &c, &["node0", "node1", "node2"]);
    let agent = &n.api().agents(Some("node1")).unwrap()[0];
    assert_eq!(agent["configurations"]["tunneling_ip"], "192.0.2.11", "{agent:#}");
    assert_eq!(agent["configurations"]["tunnel_types"], json!(["vxlan"]), "{agent:#}");

    let net = network(&n, "vxlan500", Provider::Vxlan { vni: 500 }, "10.20.0.0/24").unwrap();
    let api = n.api();
    let vm_a = api.create_port(id(&net), "node0", "compute:nova").unwrap();
    let vm_b = api.create_port(id(&net), "node1", "compute:nova").unwrap();
    let (a, b) = (spec(&vm_a, "node0"), spec(&vm_b, "node1"));
    let ia = c.add_vm("node0", a.clone()).unwrap();
    let ib = c.add_vm("node1", b.clone()).unwrap();
    for p in [&a, &b] {
        wait_status(&n, &c, &p.id, "ACTIVE");
    }
    // l2population tells each node where the other's port lives.
    for (node, p) in [("node0", &b), ("node1", &a)] {
        let ok = wait_until(Duration::from_secs(20), || fdb_has(&c, node, &p.mac, "remote"));
        assert!(ok, "{node} has no l2pop entry for {}: {}", p.mac, logs(&c, &n));
    }

    let node2 = Capture::start(&c.node("node2").ns, "eth1", "udp port 4789").unwrap();
    for vm in [ia, ib] {
        c.vms[vm].set_static_ip().unwrap();
    }
    assert!(c.vms[ia].reaches(&b.ip), "{}", logs(&c, &n));
    // A broadcast too: flooding goes only to the VTEPs l2pop named.
    c.vms[ia].exec(&["ping", "-b", "-c", "2", "-W", "1", "10.20.0.255"]).ok();
    let seen = node2.stop().unwrap();
    assert!(seen.is_empty(), "node2 has no port of the network but got its traffic: {seen:?}");

    // DELETE b: it leaves node0's FDB too.
    api.delete_port(&b.id).unwrap();
    let ok = wait_until(Duration::from_secs(20), || !fdb_has(&c, "node0", &b.mac, "remote"));
    assert!(ok, "node0 kept the entry of a deleted port: {}", logs(&c, &n));
}

/// Security groups come from neutron: ports in the project's default group
/// reach each other, a port in a group of its own is closed both ways, and
/// a rule added through the API opens it, with no agent restart.
#[test]
fn security_groups_from_neutron_filter_and_follow_rule_changes() {
    let n = Neutron::start().expect("starting neutron");
    let mut c = cluster("nsg", &n, 2, false).unwrap();
    agents_alive(&n, &c, &["node0", "node1"]);
    let net =
        network(&n, "vlan1002", Provider::Vlan { physnet: "default", id: 1002 }, "10.30.0.0/24").unwrap();
    let api = n.api();
    let group = api
        .request(
            "POST",
            "/security-groups",
            Some(&json!({"security_group": {
            "name": "lonely", "project_id": datapath_tests::neutron::PROJECT}})),
        )
        .unwrap()["security_group"]
        .take();
    let vm_a = api.create_port(id(&net), "node0", "compute:nova").unwrap();
    let vm_b = api.create_port(id(&net), "node1", "compute:nova").unwrap();
    let vm_c = api.create_port(id(&net), "node0", "compute:nova").unwrap();
    api.update_port(id(&vm_c), json!({"security_groups": [id(&group)]})).unwrap();
    let (a, b, cc) = (spec(&vm_a, "node0"), spec(&vm_b, "node1"), spec(&vm_c, "node0"));
    let ia = c.add_vm("node0", a.clone()).unwrap();
    let ib = c.add_vm("node1", b.clone()).unwrap();
    let ic = c.add_vm("node0", cc.clone()).unwrap();
    for (i, p) in [(ia, &a), (ib, &b), (ic, &cc)] {
        wait_status(&n, &c, &p.id, "ACTIVE");
        c.vms[i].set_static_ip().unwrap();
    }
    // The default group: egress anywhere, ingress from its members (on every host).
    assert!(c.vms[ia].reaches(&b.ip), "a and b share the default group: {}", logs(&c, &n));
    // "lonely" has only neutron's default egress rules: nothing comes in.
    assert!(!c.vms[ia].ping(&cc.ip, 2), "c's group admits nothing in");
    assert!(drops(&c, &cc, DropReason::SgIngressDenied) >= 1, "sg_ingress_denied counted at c");
    assert!(!c.vms[ic].ping(&a.ip, 2), "a admits only its group's members");
    assert!(drops(&c, &a, DropReason::SgIngressDenied) >= 1, "sg_ingress_denied counted at a");

    // A rule through the API reaches the agents by notification.
    api.request(
        "POST",
        "/security-group-rules",
        Some(&json!({"security_group_rule": {
        "security_group_id": id(&group), "direction": "ingress", "ethertype": "IPv4", "protocol": "icmp",
        "project_id": datapath_tests::neutron::PROJECT}})),
    )
    .unwrap();
    let ok = wait_until(Duration::from_secs(20), || c.vms[ia].ping(&cc.ip, 1));
    assert!(ok, "the new rule did not open c to pings: {}", logs(&c, &n));
    assert!(!c.vms[ic].ping(&a.ip, 2), "a is still closed to c");
    let listed = c.cli_json("node0", &["conntrack", "--port", &cc.device()]).unwrap();
    let rows = listed["connections"].as_array().cloned().unwrap_or_default();
    assert!(
        rows.iter().any(|r| r["protocol"] == "icmp" && r["direction"] == "ingress"),
        "c tracks a's pings: {listed:#}"
    );

    // An address group through the API: tcp 8080 at c from its addresses only.
    let project = datapath_tests::neutron::PROJECT;
    let ag = api
        .request(
            "POST",
            "/address-groups",
            Some(&json!({"address_group": {
            "name": "ag", "addresses": [format!("{}/32", a.ip)], "project_id": project}})),
        )
        .unwrap()["address_group"]
        .take();
    api.request(
        "POST",
        "/security-group-rules",
        Some(&json!({"security_group_rule": {
        "security_group_id": id(&group), "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
        "port_range_min": 8080, "port_range_max": 8080, "remote_address_group_id": id(&ag),
        "project_id": project}})),
    )
    .unwrap();
    let to_c = format!("{}:8080", cc.ip);
    let connects =
        |from: usize| tcp_connects(&c.vms[from].ns, &c.vms[ic].ns, &to_c, Duration::from_secs(2)).unwrap();
    let ok = wait_until(Duration::from_secs(20), || connects(ia));
    assert!(ok, "a, in the address group, did not reach c's 8080: {}", logs(&c, &n));
    assert!(!connects(ib), "b is in no address of the group");
    // Its addresses change (an OVO push, not a security-group notification): b in, a out.
    let ag_path = |op: &str| format!("/address-groups/{}/{op}", id(&ag));
    let body = |p: &PortSpec| json!({"addresses": [format!("{}/32", p.ip)]});
    api.request("PUT", &ag_path("add_addresses"), Some(&body(&b))).unwrap();
    api.request("PUT", &ag_path("remove_addresses"), Some(&body(&a))).unwrap();
    let ok = wait_until(Duration::from_secs(20), || connects(ib) && !connects(ia));
    assert!(ok, "the address group's new addresses did not take effect: {}", logs(&c, &n));
}

/// Fails unless every listed agent is reported alive (helper for the bus test).
fn alive(n: &Neutron, host: &str) -> Result<bool> {
    let agents = n.api().agents(Some(host))?;
    if agents.is_empty() {
        bail!("no agent on {host}");
    }
    Ok(agents[0]["alive"] == json!(true))
}

/// Neutron, two nodes, a VLAN network and a VM port on each node, ACTIVE and reaching each other.
fn two_nodes_one_vm_each(tag: &str, vlan: u32, cidr: &str) -> (Neutron, Cluster, Value, PortSpec, PortSpec) {
    let n = Neutron::start().expect("starting neutron");
    let mut c = cluster(tag, &n, 2, false).unwrap();
    agents_alive(&n, &c, &["node0", "node1"]);
    let name = format!("vlan{vlan}");
    let net = network(&n, &name, Provider::Vlan { physnet: "default", id: vlan }, cidr).unwrap();
    let a = spec(&n.api().create_port(id(&net), "node0", "compute:nova").unwrap(), "node0");
    let b = spec(&n.api().create_port(id(&net), "node1", "compute:nova").unwrap(), "node1");
    c.add_vm("node0", a.clone()).unwrap();
    c.add_vm("node1", b.clone()).unwrap();
    for p in [&a, &b] {
        wait_status(&n, &c, &p.id, "ACTIVE");
    }
    for vm in &c.vms {
        vm.set_static_ip().unwrap();
    }
    assert!(c.vms[0].reaches(&b.ip));
    (n, c, net, a, b)
}

#[test]
fn without_the_bus_the_datapath_keeps_forwarding_and_catches_up_after() {
    let (n, mut c, net, a, b) = two_nodes_one_vm_each("nbus", 1001, "10.30.0.0/24");
    let api = n.api();
    let ia = 0;

    // Both nodes lose the bus while a ping runs, and the broker drops every
    // client of the vhost (neutron-server's too, with their queues), as a
    // RabbitMQ restart does: not one reply is lost.
    let ping = c.vms[ia].ns.spawn(&["ping", "-c", "40", "-i", "0.1", "-W", "1", &b.ip]).unwrap();
    for node in &c.nodes {
        node.bus.as_ref().unwrap().cut();
    }
    // The agents' connections went with the cut; neutron-server's (RPC and API workers) remain.
    let closed = n.close_bus_connections().unwrap();
    assert!(closed >= 1, "the broker closed no connection of neutron-server");
    let ok = wait_until(Duration::from_secs(10), || {
        c.cli_json("node0", &["status"])
            .is_ok_and(|s| s["bindings_error"].as_str().is_some_and(|e| e.contains("message bus")))
    });
    assert!(ok, "status does not say the bus is gone: {:#}", c.cli_json("node0", &["status"]).unwrap());
    // A port created meanwhile, with its tap plugged while the node has no bus.
    let late = spec(&api.create_port(id(&net), "node1", "compute:nova").unwrap(), "node1");
    let il = c.add_vm("node1", late.clone()).unwrap();
    let mut ping = ping;
    assert_no_loss(&mut ping, Duration::from_secs(20), "lost replies without the bus");
    assert_eq!(api.port(&late.id).unwrap()["status"], "DOWN", "wired without a bus?");

    for node in &c.nodes {
        node.bus.as_ref().unwrap().restore();
    }
    wait_status(&n, &c, &late.id, "ACTIVE");
    c.vms[il].set_static_ip().unwrap();
    assert!(c.vms[il].reaches(&a.ip), "the port created without the bus: {}", logs(&c, &n));
    assert!(alive(&n, "node1").unwrap());
    // node0 may be in its reconnect backoff (up to 30 s after a long cut).
    let ok = wait_until(Duration::from_secs(40), || {
        c.cli_json("node0", &["status"]).is_ok_and(|s| s["bindings_error"] == Value::Null)
    });
    assert!(ok, "node0 did not get the bus back: {:#}", c.cli_json("node0", &["status"]).unwrap());
}

/// The ports of `node` as `datapath ports` lists them: (port id, device, state).
fn ports_of(c: &Cluster, node: &str) -> Vec<(String, String, String)> {
    let v = c.cli_json(node, &["ports"]).unwrap_or_default();
    v["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                    (s("port_id"), s("device"), s("state"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_killed_agent_resyncs_with_neutron_and_keeps_nothing_stale() {
    let n = Neutron::start().expect("starting neutron");
    let mut c = cluster("nkill", &n, 2, false).unwrap();
    agents_alive(&n, &c, &["node0", "node1"]);
    let net =
        network(&n, "vlan1002", Provider::Vlan { physnet: "default", id: 1002 }, "10.40.0.0/24").unwrap();
    let api = n.api();
    let a = spec(&api.create_port(id(&net), "node0", "compute:nova").unwrap(), "node0");
    let b = spec(&api.create_port(id(&net), "node1", "compute:nova").unwrap(), "node1");
    let gone = spec(&api.create_port(id(&net), "node0", "compute:nova").unwrap(), "node0");
    for (node, p) in [("node0", &a), ("node1", &b), ("node0", &gone)] {
        c.add_vm(node, p.clone()).unwrap();
    }
    for p in [&a, &b, &gone] {
        wait_status(&n, &c, &p.id, "ACTIVE");
    }
    for vm in &c.vms {
        vm.set_static_ip().unwrap();
    }
    let (ia, ig) = (0, 2);
    assert!(c.vms[ia].reaches(&b.ip));
    assert!(c.vms[ig].reaches(&b.ip));

    // SIGKILL node0's agent while a ping runs; meanwhile a port goes (with its tap)
    // and another comes.
    let mut ping = c.vms[ia].ns.spawn(&["ping", "-c", "60", "-i", "0.1", "-W", "1", &b.ip]).unwrap();
    c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGKILL).unwrap();
    api.delete_port(&gone.id).unwrap();
    c.node("node0").ns.exec(&["ip", "link", "del", &gone.device()]).unwrap();
    let late = spec(&api.create_port(id(&net), "node0", "compute:nova").unwrap(), "node0");
    let il = c.add_vm("node0", late.clone()).unwrap();
    c.start_agent("node0").unwrap();
    wait_status(&n, &c, &late.id, "ACTIVE");
    c.vms[il].set_static_ip().unwrap();
    assert!(c.vms[il].reaches(&b.ip), "the port created while the agent was dead: {}", logs(&c, &n));
    assert_no_loss(&mut ping, Duration::from_secs(30), "replies lost across the kill and restart");
    let ports = ports_of(&c, "node0");
    assert!(
        !ports.iter().any(|(id, dev, _)| *id == gone.id || *dev == gone.device()),
        "the port deleted while the agent was dead is still there: {ports:?}"
    );
    let fdb = c.cli_json("node0", &["fdb"]).unwrap();
    assert!(!fdb.to_string().contains(&gone.mac), "its MAC is still in node0's FDB: {fdb:#}");
    let mut bound: Vec<_> = ports
        .iter()
        .filter(|(id, _, state)| !id.is_empty() && state == "up")
        .map(|(id, _, _)| id.clone())
        .collect();
    bound.sort();
    let mut want = vec![a.id.clone(), late.id.clone()];
    want.sort();
    assert_eq!(bound, want, "a and the late port, nothing else: {ports:?}");
}

#[test]
fn bad_messages_from_the_bus_are_logged_and_change_nothing() {
    let (n, mut c, _, a, b) = two_nodes_one_vm_each("nbad", 1004, "10.50.0.0/24");
    let api = n.api();
    let ia = 0;

    let envelope = |inner: serde_json::Value| {
        json!({"oslo.version": "2.0", "oslo.message": inner.to_string()}).to_string().into_bytes()
    };
    let bad: [(&str, Vec<u8>, &str); 4] = [
        ("q-agent-notifier-port-update_fanout", b"{not json".to_vec(), "not an oslo 2.0 envelope"),
        (
            "q-agent-notifier-port-delete_fanout",
            envelope(json!({"method": "port_delete", "args": {}, "version": "1.0"})),
            "port_id",
        ),
        (
            "q-agent-notifier-l2population-update_fanout",
            envelope(
                json!({"method": "add_fdb_entries", "args": {"fdb_entries": {"n": {"network_type": "vxlan",
                "ports": {"not-an-ip": [["fa:16:3e:00:00:01", "10.0.0.1"]]}}}}}),
            ),
            "not-an-ip",
        ),
        (
            "q-agent-notifier-port-update_fanout",
            envelope(json!({"method": "frobnicate", "args": {}, "version": "1.0"})),
            "frobnicate",
        ),
    ];
    for (exchange, body, _) in &bad {
        datapath_tests::neutron::publish(&n.amqp_url(), exchange, "", body).unwrap();
    }
    for node in ["node0", "node1"] {
        let agent = c.nodes.iter_mut().find(|x| x.name == node).unwrap().agent.as_mut().unwrap();
        for (_, _, says) in &bad {
            let ok = wait_until(Duration::from_secs(10), || agent.log_text().contains(says));
            assert!(ok, "{node}'s log does not name {says:?}:\n{}", agent.log_text());
        }
        assert!(agent.running(), "{node}'s agent died of bad input");
    }
    // A port_delete for a port this node does not have, twice, changes nothing either.
    let stray = envelope(
        json!({"method": "port_delete", "args": {"port_id": "00000000-dead-beef-0000-000000000000"}}),
    );
    for _ in 0..2 {
        datapath_tests::neutron::publish(&n.amqp_url(), "q-agent-notifier-port-delete_fanout", "", &stray)
            .unwrap();
    }
    assert!(c.vms[ia].ping(&b.ip, 3), "forwarding after bad input: {}", logs(&c, &n));
    for p in [&a, &b] {
        assert_eq!(api.port(&p.id).unwrap()["status"], "ACTIVE");
    }
}

#[test]
fn without_neutron_server_the_datapath_keeps_forwarding_and_wires_ports_after() {
    let (mut n, mut c, net, a, b) = two_nodes_one_vm_each("nsrv", 1005, "10.60.0.0/24");
    let mut ping = c.vms[0].ns.spawn(&["ping", "-c", "100", "-i", "0.1", "-W", "1", &b.ip]).unwrap();
    n.stop_rpc_server();
    // The API still takes a port; its tap is plugged while nobody serves the agents.
    let late = spec(&n.api().create_port(id(&net), "node1", "compute:nova").unwrap(), "node1");
    let il = c.add_vm("node1", late.clone()).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(n.api().port(&late.id).unwrap()["status"], "DOWN", "wired without neutron-server?");
    n.start_rpc_server().unwrap();
    wait_status(&n, &c, &late.id, "ACTIVE");
    c.vms[il].set_static_ip().unwrap();
    assert!(c.vms[il].reaches(&a.ip), "the port plugged while neutron-server was down: {}", logs(&c, &n));
    assert_no_loss(&mut ping, Duration::from_secs(30), "replies lost while neutron-server was down");
    let ok = wait_until(Duration::from_secs(30), || alive(&n, "node0").unwrap_or(false));
    assert!(ok, "node0's agent is not alive again: {}", logs(&c, &n));
}
