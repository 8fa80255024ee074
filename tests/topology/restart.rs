//! Restart and upgrade without loss: a fast ping stream between two VMs on
//! two nodes runs through each event, and every packet must come back.

use std::time::Duration;

use datapath_tests::{
    cluster::{Cluster, datapath_bin, datapath_bin_abi_next},
    wait_for,
};

use crate::scenario::*;

/// How many times `node`'s agents have said they run (the log is appended across restarts).
fn runs(c: &Cluster, node: &str) -> usize {
    let line = format!("agent for host {node} running");
    c.node(node).agent.as_ref().map_or(0, |a| a.log_text().matches(&line).count())
}

/// Starts `node`'s agent from `bin` and waits until it has done its first reconcile.
fn start_and_settle(c: &mut Cluster, node: &str, bin: &std::path::Path) {
    let before = runs(c, node);
    c.start_agent_with(node, bin).unwrap();
    wait_for("the new agent's first reconcile", Duration::from_secs(10), || runs(c, node) > before);
}

/// Replaces every node's agent by one of `bin` (SIGTERM, start, first reconcile), node by node.
fn restart_all(c: &mut Cluster, bin: &std::path::Path) {
    for i in 0..c.nodes.len() {
        c.nodes[i].agent.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
        let name = c.nodes[i].name.clone();
        start_and_settle(c, &name, bin);
    }
}

/// Starts `ping -i 0.005` for about `secs` seconds in VM `from`, runs `event`,
/// then returns (transmitted, received).
fn ping_through(
    c: &mut Cluster,
    from: usize,
    to: &str,
    secs: u32,
    event: impl FnOnce(&mut Cluster),
) -> (u64, u64) {
    // A count, not a deadline: ping then waits (-W) for the last replies, where a
    // deadline would cut off the one in flight and count it lost (on a slow guest, often).
    let count = (secs * 200).to_string();
    let mut ping = c.vms[from].ns.spawn(&["ping", "-i", "0.005", "-c", &count, "-W", "1", to]).unwrap();
    // The event must hit a stream that flows, not one still starting.
    wait_for("the ping stream to flow", Duration::from_secs(5), || ping.output().contains("bytes from"));
    event(c);
    let status = ping.wait_timeout(Duration::from_secs(2 * secs as u64 + 5)).unwrap();
    assert!(status.is_some(), "ping did not finish");
    let out = ping.output();
    let summary = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {out}"));
    let nums: Vec<u64> =
        summary.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    (nums[0], nums[1])
}

#[test]
fn traffic_survives_restart_kill_and_upgrade_without_loss() {
    restart_kill_upgrade("restart", None);
}

/// The same with the XDP stage in the uplinks' driver: its links are pinned
/// and adopted like the TC ones, and an upgrade swaps its program in place.
#[test]
fn traffic_survives_restart_kill_and_upgrade_with_the_xdp_stage() {
    let c = restart_kill_upgrade("restart-xdp", Some("xdp = \"native\""));
    for node in ["node0", "node1"] {
        let log = c.node(node).agent.as_ref().unwrap().log_text();
        assert!(log.contains("eth2: adopted the pinned XDP link"), "{node}: {log}");
        let status = c.cli_json(node, &["status"]).unwrap();
        assert_eq!(status["xdp"]["eth2"], "native", "{node}: {status}");
    }
}

/// The same with the hook of kernels without tcx (cls_bpf filters through
/// netlink), forced here; the lts-kernel layer runs it where it is the default.
#[test]
fn traffic_survives_restart_kill_and_upgrade_with_netlink_filters() {
    let mut c = restart_kill_upgrade("restart-nl", Some("tc_hook = \"netlink\""));
    let tap = vm1().device();
    let filters = c.node("node0").ns.exec(&["tc", "filter", "show", "dev", &tap, "ingress"]).unwrap();
    assert!(filters.contains("vm_port") && filters.contains("direct-action"), "{filters}");
    c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
    c.nodes[0].cleanup().unwrap();
    let filters = c.node("node0").ns.exec(&["tc", "filter", "show", "dev", &tap, "ingress"]).unwrap();
    assert!(!filters.contains("vm_port"), "--cleanup leaves no filter behind: {filters}");
}

/// Runs the three events with the `config` line (if given) in both agents' configs;
/// returns the cluster, still up.
fn restart_kill_upgrade(tag: &str, config: Option<&str>) -> Cluster {
    let mut c = Cluster::new(tag, 2).unwrap();
    if let Some(line) = config {
        for n in ["node0", "node1"] {
            c.config_line(n, line).unwrap();
        }
    }
    let (a, b) = (vm1(), vm2());
    c.write_bindings(&bindings(&[&a, &b])).unwrap();
    let ia = c.add_vm("node0", a.clone()).unwrap();
    let ib = c.add_vm("node1", b.clone()).unwrap();
    c.vms[ia].set_static_ip().unwrap();
    c.vms[ib].set_static_ip().unwrap();
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();
    assert!(c.vms[ia].ping_until(&b.ip, Duration::from_secs(10)));

    // systemctl restart: SIGTERM, then a new agent.
    let (tx, rx) = ping_through(&mut c, ia, &b.ip, 4, |c| {
        c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
        start_and_settle(c, "node0", &datapath_bin());
    });
    assert!(tx > 300, "the stream was too slow to mean anything: {tx}");
    assert_eq!(tx, rx, "packets lost across SIGTERM + restart: {tx} sent, {rx} received");

    // SIGKILL, then a new agent.
    let (tx, rx) = ping_through(&mut c, ia, &b.ip, 4, |c| {
        c.nodes[1].agent.as_mut().unwrap().stop(libc::SIGKILL).unwrap();
        start_and_settle(c, "node1", &datapath_bin());
    });
    assert_eq!(tx, rx, "packets lost across SIGKILL + restart: {tx} sent, {rx} received");

    // An upgrade: a new binary takes over and swaps its programs into the live links.
    let upgraded = c.dir.join("datapath-upgraded");
    std::fs::copy(datapath_bin(), &upgraded).unwrap();
    let (tx, rx) = ping_through(&mut c, ia, &b.ip, 4, |c| {
        c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
        start_and_settle(c, "node0", &upgraded);
    });
    assert_eq!(tx, rx, "packets lost across the upgrade: {tx} sent, {rx} received");
    let log = c.node("node0").agent.as_ref().unwrap().log_text();
    assert!(log.contains("adopting pinned state"), "the new agent adopted the pins: {log}");
    if config.is_some_and(|l| l.contains("netlink")) {
        assert!(log.contains("cls_bpf filters"), "{log}");
    }
    c
}

/// An upgrade to a build of another map layout, then the downgrade back, on
/// both nodes, while a fast ping and one long TCP connection run across them.
/// Both ports are in stateful security groups that admit the replies only as
/// replies: a connection table not carried over would drop them. node1 runs
/// the XDP stage on its uplink, whose link moves across the layouts too.
#[test]
fn an_upgrade_and_a_downgrade_across_map_layouts_lose_nothing() {
    let mut c = Cluster::new("abi", 2).unwrap();
    c.config_line("node1", "xdp = \"native\"").unwrap();
    let (a, b) = (vm1(), vm2());
    let in_group = |p: &datapath_tests::cluster::PortSpec, g: &str| {
        let mut v = p.to_json();
        v["security_groups"] = serde_json::json!([g]);
        v
    };
    c.write_bindings(&serde_json::json!({
        "networks": networks(),
        "ports": [in_group(&a, "client"), in_group(&b, "server")],
        "security_groups": [
            {"id": "client", "security_group_rules": [
                {"id": "c-out", "direction": "egress", "ethertype": "IPv4"}]},
            {"id": "server", "security_group_rules": [
                {"id": "s-out", "direction": "egress", "ethertype": "IPv4"},
                {"id": "s-iperf", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                 "port_range_min": 5201, "port_range_max": 5201},
                {"id": "s-ping", "direction": "ingress", "ethertype": "IPv4", "protocol": "icmp"}]}]
    }))
    .unwrap();
    let ia = c.add_vm("node0", a.clone()).unwrap();
    let ib = c.add_vm("node1", b.clone()).unwrap();
    c.vms[ia].set_static_ip().unwrap();
    c.vms[ib].set_static_ip().unwrap();
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();
    assert!(c.vms[ia].ping_until(&b.ip, Duration::from_secs(10)));
    let (ours, next) = (datapath_bin(), datapath_bin_abi_next());
    let pins = c.pins.path().join("node0");
    let version = |n: u32| pins.join(format!("v{n}"));
    let (v_ours, v_next) = (datapath_common::ABI_VERSION, datapath_common::ABI_VERSION + 1);
    assert!(version(v_ours).exists(), "the agent pins under its layout version");

    let _server = c.vms[ib].ns.spawn(&["iperf3", "-s", "-1"]).unwrap();
    wait_for("iperf3 to listen", Duration::from_secs(5), || {
        c.vms[ib].ns.exec(&["ss", "-ltnH", "sport", "= :5201"]).is_ok_and(|o| !o.trim().is_empty())
    });
    let mut tcp = c.vms[ia].ns.spawn(&["iperf3", "-c", &b.ip, "-t", "16", "-b", "200M", "-J"]).unwrap();
    let (tx, rx) = ping_through(&mut c, ia, &b.ip, 14, |c| {
        restart_all(c, &next);
        wait_for("the old layout's pins to go", Duration::from_secs(15), || !version(v_ours).exists());
        assert!(version(v_next).exists(), "the new build pins under its own version");
        let log = c.node("node0").agent.as_ref().unwrap().log_text();
        assert!(
            log.contains(&format!("holds map layout v{v_ours}")),
            "the upgrade says what it takes over: {log}"
        );
        assert!(
            log.contains("learned MACs") && !log.contains("carried over 0 of"),
            "vm-2's MAC, learned from the wire, is carried over: {log}"
        );
        assert!(log.contains("tracked connections"), "the tracked connections are carried over: {log}");
        // Traffic runs on the new layout for a while before the way back.
        std::thread::sleep(Duration::from_secs(2));
        restart_all(c, &ours);
        wait_for("the newer layout's pins to go", Duration::from_secs(15), || !version(v_next).exists());
    });
    assert!(tx > 1000, "the stream was too slow to mean anything: {tx}");
    assert_eq!(tx, rx, "packets lost across the upgrade and the downgrade: {tx} sent, {rx} received");
    let status = tcp.wait_timeout(Duration::from_secs(30)).unwrap();
    let out = tcp.output();
    assert!(status.is_some_and(|s| s.success()), "the TCP connection did not survive: {out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("iperf3 -J prints JSON");
    assert!(report["error"].is_null(), "iperf3 reported an error: {}", report["error"]);
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(bytes > 10_000_000, "the connection carried data all along: {bytes} bytes");
    assert!(version(v_ours).exists() && !version(v_next).exists(), "back on our layout, alone");
    let status = c.cli_json("node1", &["status"]).unwrap();
    assert_eq!(status["xdp"]["eth2"], "native", "node1's XDP stage came along: {status}");
}
