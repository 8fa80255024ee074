//! `cargo xtask demo`: the seed walkthrough, live, in namespaces. Two nodes
//! on one physical network, VLAN network net1 (segmentation id 1000), a DHCP
//! namespace running dnsmasq, one VM per node, and one agent per node. It
//! shows the DHCP leases, a ping across nodes, the tags on the wire, the
//! agent's view, and security groups (an allowed and a blocked connection,
//! with `datapath trace` naming the rule), then tears everything down (also
//! on Ctrl-C).

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use datapath_tests::{
    capture::Capture,
    cluster::{Cluster, PortSpec, datapath_bin, network_json},
    netns::tcp_connects,
    neutron::{Neutron, Provider},
    wait_until,
};
use serde_json::json;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn checkpoint() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn step(n: u32, title: &str) -> Result<()> {
    checkpoint()?;
    println!("\n\x1b[1m== {n}. {title}\x1b[0m");
    Ok(())
}

/// Runs `datapath ARGS --config` inside `node`'s namespace and prints its output.
fn datapath(c: &Cluster, node: &str, args: &[&str]) -> Result<()> {
    let n = c.node(node);
    let out = Command::new("nsenter")
        .arg(format!("--net={}", n.ns.path().display()))
        .arg("--")
        .arg(datapath_bin())
        .args(args)
        .arg("--config")
        .arg(&n.config)
        .output()
        .context("running datapath")?;
    println!("$ datapath {} --config {}.toml", args.join(" "), node);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("datapath {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn main() {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let pause = std::env::args().any(|a| a == "--pause");
    let result = if std::env::args().any(|a| a == "--neutron") { run_neutron(pause) } else { run(pause) };
    match result {
        Ok(()) => println!("\nTorn down: namespaces, agents, pins. Bye."),
        Err(e) => {
            eprintln!("\ndemo stopped: {e:#} (everything it built has been removed)");
            std::process::exit(1);
        }
    }
}

fn run(pause: bool) -> Result<()> {
    const NET1: &str = "5f833617-6179-4797-b7c0-7d420d84040c";
    let vm1 = PortSpec::vm(
        "02407769-97c6-45ae-8fba-ea464020951c",
        NET1,
        "fa:16:3e:ad:66:9e",
        "10.10.10.2",
        "node0",
    );
    let vm2 = PortSpec::vm(
        "f4c391da-2295-479a-95c5-c7759132f2ea",
        NET1,
        "fa:16:3e:f5:ca:f5",
        "10.10.10.3",
        "node1",
    );
    let mut dhcp = PortSpec::vm(
        "26c9b807-7c3d-4d5e-8f60-7a8b9c0d1e2f",
        NET1,
        "fa:16:3e:1d:5c:81",
        "10.10.10.10",
        "node0",
    );
    dhcp.owner = "network:dhcp".into();

    step(1, "Two nodes on one physical network (a bridge), uplink eth2 each")?;
    let mut c = Cluster::new("demo", 2)?;
    c.write_bindings(&json!({
        "networks": [network_json(NET1, "net1", "vlan", Some(1000))],
        "ports": [vm1.to_json(), vm2.to_json(), dhcp.to_json()],
    }))?;
    println!("bindings (Neutron API shapes): {}", c.bindings.display());
    println!("{}", std::fs::read_to_string(&c.node("node0").config)?);
    c.add_dhcp("node0", dhcp.clone(), &[(&vm1.mac, &vm1.ip), (&vm2.mac, &vm2.ip)], None)?;
    let a = c.add_vm("node0", vm1.clone())?;
    let b = c.add_vm("node1", vm2.clone())?;
    println!(
        "vm-1 {} on node0 behind {}, vm-2 {} on node1 behind {}",
        vm1.mac,
        vm1.device(),
        vm2.mac,
        vm2.device()
    );
    println!("dnsmasq serves net1 from a qdhcp namespace on node0 ({})", dhcp.device());

    step(2, "One datapath agent per node")?;
    c.start_agent("node0")?;
    c.start_agent("node1")?;
    let wire = Capture::start(&c.phys, "up-node0", "")?;
    println!("agents started; no bridge, no veth pair per VM, no OVS on the nodes");

    step(3, "DHCP: each VM asks dnsmasq for its address (vm-2's request crosses the wire)")?;
    let script = c.udhcpc_script()?;
    for (i, name) in [(a, "vm-1"), (b, "vm-2")] {
        let ip = c.vms[i].dhcp(&script)?;
        println!("{name} leased {ip}");
    }

    step(4, "Ping vm-1 (node0) -> vm-2 (node1)")?;
    let out = c.vms[a].exec(&["ping", "-c", "3", "-i", "0.3", &vm2.ip])?;
    print!("{out}");
    checkpoint()?;

    step(5, "On the wire: every frame of net1 carries tag 1000 (and never a node-local number)")?;
    let lines = wire.stop()?;
    let ours: Vec<&String> = lines.iter().filter(|l| l.contains(&vm1.mac) || l.contains(&vm2.mac)).collect();
    for l in ours.iter().take(8) {
        println!("{l}");
    }
    println!(
        "... {} frames of vm-1/vm-2 captured, {} with tag 1000",
        ours.len(),
        ours.iter().filter(|l| l.contains("vlan 1000,")).count()
    );

    step(6, "What the agent on node0 says")?;
    datapath(&c, "node0", &["ports"])?;
    println!();
    datapath(&c, "node0", &["fdb"])?;
    println!();
    datapath(&c, "node0", &["stats"])?;

    step(7, "Why would a forged ARP be dropped? Trace it through the real program")?;
    let spec = format!("arp who-has {} from {} 10.10.10.66", vm2.ip, vm1.mac);
    datapath(&c, "node0", &["trace", "--port", &vm1.device(), "--frame", &spec])?;

    step(8, "Security groups: vm-2 admits ssh and nothing else, vm-1 only sends")?;
    let groups = json!([
        {"id": "ssh-only", "security_group_rules": [
            {"id": "allow-ssh", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
             "port_range_min": 22, "port_range_max": 22},
            {"id": "ssh-only-egress", "direction": "egress", "ethertype": "IPv4"}]},
        {"id": "client", "security_group_rules": [
            {"id": "client-egress", "direction": "egress", "ethertype": "IPv4"}]}
    ]);
    let mut p1 = vm1.to_json();
    p1["security_groups"] = json!(["client"]);
    let mut p2 = vm2.to_json();
    p2["security_groups"] = json!(["ssh-only"]);
    c.write_bindings(&json!({
        "networks": [network_json(NET1, "net1", "vlan", Some(1000))],
        "ports": [p1, p2, dhcp.to_json()],
        "security_groups": groups,
    }))?;
    println!("{}", serde_json::to_string_pretty(&groups)?);
    let syn_to =
        |port: u16| format!("tcp from {} {}:40000 to {} {}:{port}", vm1.mac, vm1.ip, vm2.mac, vm2.ip);
    // The agent picks the file up within a second or two.
    let receive = |port: u16| {
        ["trace", "--port", &vm2.device(), "--receive", "--frame", &syn_to(port)].map(String::from)
    };
    let filtered = || {
        let args = receive(80);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.cli_json("node1", &args).is_ok_and(|v| v["reason"] == "sg_ingress_denied")
    };
    if !wait_until(Duration::from_secs(15), filtered) {
        bail!("vm-2's groups did not take effect within 15 s");
    }
    for port in [22, 80] {
        let (client, server) = (&c.vms[a].ns, &c.vms[b].ns);
        let connected = tcp_connects(client, server, &format!("{}:{port}", vm2.ip), Duration::from_secs(2))?;
        println!("vm-1 -> vm-2 tcp {port}: {}", if connected { "connected" } else { "no answer (dropped)" });
    }

    step(9, "Which rule let the ssh SYN in, and why was 80 dropped? Trace both at vm-2")?;
    for port in [22, 80] {
        let args = receive(port);
        datapath(&c, "node1", &args.iter().map(String::as_str).collect::<Vec<_>>())?;
        println!();
    }
    datapath(&c, "node1", &["stats", "--port", &vm2.device()])?;

    finish(pause)
}

fn finish(pause: bool) -> Result<()> {
    if pause {
        println!("\nThe cluster stays up; press Enter (or Ctrl-C) to tear it down.");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}

/// The port as the cluster plugs it (tap name, MAC, fixed IP) from neutron's answer.
fn plugged(port: &serde_json::Value, host: &str) -> PortSpec {
    let s = |k: &str| port[k].as_str().unwrap_or_default().to_string();
    let ip = port["fixed_ips"][0]["ip_address"].as_str().unwrap_or_default();
    let mut p = PortSpec::vm(&s("id"), &s("network_id"), &s("mac_address"), ip, host);
    p.owner = s("device_owner");
    p
}

/// The same story, with neutron-server binding the ports and the agents taking
/// them over Neutron's agent RPC, as in a cloud.
fn run_neutron(pause: bool) -> Result<()> {
    step(1, "A real neutron-server (API + RPC server, RabbitMQ, MariaDB) with the datapath ML2 driver")?;
    let n = Neutron::start()?;
    println!("API at {}; mechanism_drivers = datapath,l2population", n.api().base());

    step(2, "Two nodes, one datapath agent each, taking their ports from neutron over the bus")?;
    let mut c = Cluster::new("demo", 2)?;
    c.use_neutron(&n.transport_url(), 5)?;
    println!("{}", std::fs::read_to_string(&c.node("node0").config)?);
    c.start_agent("node0")?;
    c.start_agent("node1")?;
    let alive = wait_until(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(300));
        n.api().agents(None).is_ok_and(|a| a.iter().filter(|a| a["alive"] == json!(true)).count() == 2)
    });
    if !alive {
        bail!("the agents did not come alive in neutron");
    }
    println!("GET /v2.0/agents:");
    for a in n.api().agents(None)? {
        println!(
            "  {:<6} {:<22} binary {:<9} alive {}",
            a["host"].as_str().unwrap_or("?"),
            a["agent_type"].as_str().unwrap_or("?"),
            a["binary"].as_str().unwrap_or("?"),
            a["alive"]
        );
    }

    step(
        3,
        "As an operator and Nova would: network net1 (VLAN 1000), a subnet, a DHCP port and a VM port per node",
    )?;
    let api = n.api();
    let net = api.create_network("net1", Provider::Vlan { physnet: "default", id: 1000 })?;
    let net_id = net["id"].as_str().context("network without id")?.to_string();
    api.create_subnet(&net_id, "10.10.10.0/24")?;
    let dhcp = plugged(&api.create_port(&net_id, "node0", "network:dhcp")?, "node0");
    let vm1 = plugged(&api.create_port(&net_id, "node0", "compute:nova")?, "node0");
    let vm2 = plugged(&api.create_port(&net_id, "node1", "compute:nova")?, "node1");
    for (name, p) in [("dhcp", &dhcp), ("vm-1", &vm1), ("vm-2", &vm2)] {
        let v = api.port(&p.id)?;
        println!(
            "{name:<5} {} {} on {}: vif_type {}, status {}",
            p.id,
            p.ip,
            p.host,
            v["binding:vif_type"].as_str().unwrap_or("?"),
            v["status"].as_str().unwrap_or("?")
        );
    }

    step(4, "Nova plugs the taps; the agents ask neutron for the details, program them, and report them up")?;
    let started = std::time::Instant::now();
    c.add_dhcp("node0", dhcp.clone(), &[(&vm1.mac, &vm1.ip), (&vm2.mac, &vm2.ip)], None)?;
    let a = c.add_vm("node0", vm1.clone())?;
    let b = c.add_vm("node1", vm2.clone())?;
    for (name, p) in [("dhcp", &dhcp), ("vm-1", &vm1), ("vm-2", &vm2)] {
        let active = wait_until(Duration::from_secs(30), || {
            std::thread::sleep(Duration::from_millis(20));
            api.port(&p.id).is_ok_and(|v| v["status"] == "ACTIVE")
        });
        if !active {
            bail!("{name} did not go ACTIVE");
        }
        println!(
            "{name:<5} {} ACTIVE ({:.0} ms after the taps were plugged)",
            p.device(),
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    let wire = Capture::start(&c.phys, "up-node0", "")?;

    step(5, "DHCP from dnsmasq, then ping vm-1 (node0) -> vm-2 (node1)")?;
    let script = c.udhcpc_script()?;
    for (i, name) in [(a, "vm-1"), (b, "vm-2")] {
        println!("{name} leased {}", c.vms[i].dhcp(&script)?);
    }
    print!("{}", c.vms[a].exec(&["ping", "-c", "3", "-i", "0.3", &vm2.ip])?);
    let lines = wire.stop()?;
    let tagged = lines.iter().filter(|l| l.contains("vlan 1000,")).count();
    println!("on the wire: {} frames captured, {tagged} with tag 1000", lines.len());

    step(6, "What the agent on node0 says")?;
    datapath(&c, "node0", &["status"])?;
    println!();
    datapath(&c, "node0", &["ports"])?;
    finish(pause)
}
