//! Restart and upgrade without loss: a fast ping stream between two VMs on
//! two nodes runs through each event, and every packet must come back.

use std::time::Duration;

use datapath_tests::{
    cluster::{Cluster, datapath_bin},
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

/// Starts `ping -i 0.005` for `secs` seconds in VM `from`, runs `event`, then
/// returns (transmitted, received).
fn ping_through(
    c: &mut Cluster,
    from: usize,
    to: &str,
    secs: u32,
    event: impl FnOnce(&mut Cluster),
) -> (u64, u64) {
    let w = secs.to_string();
    let mut ping = c.vms[from].ns.spawn(&["ping", "-i", "0.005", "-w", &w, "-W", "1", to]).unwrap();
    // The event must hit a stream that flows, not one still starting.
    wait_for("the ping stream to flow", Duration::from_secs(5), || ping.output().contains("bytes from"));
    event(c);
    let status = ping.wait_timeout(Duration::from_secs(secs as u64 + 5)).unwrap();
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

/// The same with the hook of kernels without tcx (cls_bpf filters through
/// netlink), forced here; the lts-kernel layer runs it where it is the default.
#[test]
fn traffic_survives_restart_kill_and_upgrade_with_netlink_filters() {
    let mut c = restart_kill_upgrade("restart-nl", Some("netlink"));
    let tap = vm1().device();
    let filters = c.node("node0").ns.exec(&["tc", "filter", "show", "dev", &tap, "ingress"]).unwrap();
    assert!(filters.contains("vm_port") && filters.contains("direct-action"), "{filters}");
    c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
    c.nodes[0].cleanup().unwrap();
    let filters = c.node("node0").ns.exec(&["tc", "filter", "show", "dev", &tap, "ingress"]).unwrap();
    assert!(!filters.contains("vm_port"), "--cleanup leaves no filter behind: {filters}");
}

/// Runs the three events with `tc_hook` (if given) in both agents' configs;
/// returns the cluster, still up.
fn restart_kill_upgrade(tag: &str, hook: Option<&str>) -> Cluster {
    let mut c = Cluster::new(tag, 2).unwrap();
    if let Some(h) = hook {
        for n in ["node0", "node1"] {
            c.config_line(n, &format!("tc_hook = \"{h}\"")).unwrap();
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
    if let Some(h) = hook {
        assert!(log.contains(if h == "netlink" { "cls_bpf filters" } else { "tcx links" }), "{log}");
    }
    c
}

#[test]
fn an_agent_refuses_pins_of_a_map_layout_it_does_not_know() {
    let mut c = Cluster::new("abi", 1).unwrap();
    let pin = c.pins.path().join("node0");
    let foreign = pin.join("v999");
    std::fs::create_dir_all(&foreign).unwrap();
    c.start_agent("node0").unwrap();
    let agent = c.nodes[0].agent.as_mut().unwrap();
    assert!(
        datapath_tests::wait_until(Duration::from_secs(10), || !agent.running()),
        "the agent must refuse to start"
    );
    let log = agent.log_text();
    assert!(log.contains("v999") && log.contains("does not know"), "the refusal names the layout: {log}");
    assert!(!pin.join(format!("v{}", datapath_common::ABI_VERSION)).exists(), "nothing of ours was created");
    std::fs::remove_dir(&foreign).unwrap();
}
