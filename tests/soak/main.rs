//! Churn (soak): two nodes with many bound ports, whose bindings, devices and
//! agents change at random, round after round, while steady traffic flows
//! between ports that are never touched. Every round ends with the maps of
//! both nodes holding exactly what the bindings imply; at the end, no packet
//! of the steady traffic was lost, every agent's memory and fds stayed flat
//! for its lifetime, and no reconcile took longer than `MAX_RECONCILE_MS`.
//!
//! `DP_SOAK_MINUTES` (default 1.5), `DP_SOAK_PORTS` (per node, default 100)
//! and `DP_SOAK_SEED` (default: from the clock; printed) choose the run;
//! `cargo xtask soak` sets them.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use datapath_tests::{
    cluster::{Cluster, PortSpec, network_json},
    netns::ThreadNetns,
    pinned::entry_counts,
};
use datapath_user::{
    bindings::Bindings,
    config::Config,
    desired::{Allocations, derive},
    netlink::list_devices,
};
use serde_json::{Value, json};

/// No reconcile may take longer (both nodes, churn included) on the 2-core test machine.
const MAX_RECONCILE_MS: f64 = 2000.0;
/// An agent's RSS may grow this much over its life after the first round (allocator noise).
const RSS_SLACK_KB: u64 = 4096;
/// Networks the churned ports spread over: 64 local ports per network per node at most.
const NETWORKS: usize = 24;

/// A small, seeded generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn net_id(n: usize) -> String {
    format!("{n:08x}-5ea0-4ea0-8ea0-5ea05ea05ea0")
}

/// A churned port: node `node`, number `i`.
fn churn_port(node: usize, i: usize) -> PortSpec {
    PortSpec::vm(
        &format!("{:02x}{i:06x}-50a0-40a0-80a0-50a050a050a0", node),
        &net_id(i % NETWORKS),
        &format!("fa:16:3e:{node:02x}:{:02x}:{:02x}", i / 256, i % 256),
        &format!("10.{}.{}.{}", 100 + i % NETWORKS, node * 20 + i / 250, i % 250 + 2),
        &format!("node{node}"),
    )
}

/// RSS (kB) and open fds of a process.
type Usage = (u64, usize);

/// The `Usage` of process `pid`.
fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// What the maps of `node` must hold: the agent's own derivation from the same inputs.
fn expected(c: &Cluster, node: usize, doc: &Value) -> BTreeMap<&'static str, usize> {
    let n = &c.nodes[node];
    let cfg = Config::load(&n.config).unwrap();
    let bindings = Bindings::parse_str(&doc.to_string(), "soak").unwrap();
    let devices = {
        let _inside = ThreadNetns::enter(&n.ns).unwrap();
        list_devices().unwrap()
    };
    derive(&cfg, &bindings, &devices, &mut Allocations::default()).state.counts()
}

#[test]
fn churn_keeps_maps_exact_traffic_whole_and_agents_flat() {
    datapath_tests::require_root();
    let minutes: f64 = env("DP_SOAK_MINUTES").unwrap_or(1.5);
    let ports: usize = env("DP_SOAK_PORTS").unwrap_or(100);
    let seed: u64 = env("DP_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::UNIX_EPOCH.elapsed().map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    println!("soak: seed {seed}, {minutes} minutes, {ports} ports per node (DP_SOAK_SEED={seed})");
    let mut rng = Rng(seed);

    let mut c = Cluster::new("soak", 2).unwrap();
    // The steady VMs, never touched: a and b on node0, far on node1, on a network of their own.
    let steady_net = "5ea0beef-5ea0-4ea0-8ea0-5ea05ea05ea0";
    let a = PortSpec::vm(
        "a0a0a0a0-5ea0-4ea0-8ea0-5ea05ea05ea0",
        steady_net,
        "fa:16:3e:a0:00:01",
        "10.99.0.1",
        "node0",
    );
    let b = PortSpec::vm(
        "b0b0b0b0-5ea0-4ea0-8ea0-5ea05ea05ea0",
        steady_net,
        "fa:16:3e:b0:00:02",
        "10.99.0.2",
        "node0",
    );
    let far = PortSpec::vm(
        "f0f0f0f0-5ea0-4ea0-8ea0-5ea05ea05ea0",
        steady_net,
        "fa:16:3e:f0:00:03",
        "10.99.0.3",
        "node1",
    );
    let mut networks = vec![network_json(steady_net, "steady", "vlan", Some(999))];
    networks.extend(
        (0..NETWORKS).map(|n| network_json(&net_id(n), &format!("churn{n}"), "vlan", Some(1500 + n as u32))),
    );
    let churn: Vec<PortSpec> = (0..2).flat_map(|node| (0..ports).map(move |i| churn_port(node, i))).collect();

    // Devices of every churned port, created in bulk.
    let mut has_device: BTreeSet<usize> = BTreeSet::new();
    for node in 0..2 {
        let batch: String = churn
            .iter()
            .enumerate()
            .filter(|(_, p)| p.host == format!("node{node}"))
            .map(|(k, p)| {
                format!("link add {} type veth peer name s{k}\nlink set {} up\n", p.device(), p.device())
            })
            .collect();
        let file = c.dir.join(format!("soak-{node}.batch"));
        std::fs::write(&file, batch).unwrap();
        c.nodes[node].ns.exec(&["ip", "-batch", file.to_str().unwrap()]).unwrap();
    }
    has_device.extend(0..churn.len());
    let mut bound: BTreeSet<usize> = (0..churn.len()).collect();
    let mut admin_down: BTreeSet<usize> = BTreeSet::new();
    let doc = |bound: &BTreeSet<usize>, admin_down: &BTreeSet<usize>| {
        let mut ports: Vec<Value> = [&a, &b, &far].iter().map(|p| p.to_json()).collect();
        for &k in bound {
            let mut p = churn[k].to_json();
            p["admin_state_up"] = json!(!admin_down.contains(&k));
            ports.push(p);
        }
        json!({"networks": networks, "ports": ports})
    };
    c.write_bindings(&doc(&bound, &admin_down)).unwrap();
    for (node, p) in [("node0", &a), ("node0", &b), ("node1", &far)] {
        let i = c.add_vm(node, p.clone()).unwrap();
        c.vms[i].set_static_ip().unwrap();
    }
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();
    assert!(c.vms[0].ping_until(&far.ip, Duration::from_secs(30)), "steady: a reaches far");
    assert!(c.vms[0].reaches(&b.ip), "steady: a reaches b");

    let total = Duration::from_secs_f64(minutes * 60.0);
    let secs = (total.as_secs() + 5).to_string();
    let mut to_far = c.vms[0].ns.spawn(&["ping", "-i", "0.02", "-w", &secs, "-W", "2", &far.ip]).unwrap();
    let mut to_b = c.vms[0].ns.spawn(&["ping", "-i", "0.02", "-w", &secs, "-W", "2", &b.ip]).unwrap();

    // Per agent process (pid): its (RSS kB, fds) at the end of each round it lived through.
    let mut life: BTreeMap<u32, Vec<Usage>> = BTreeMap::new();
    let start = Instant::now();
    let mut rounds = 0;
    let (mut restarts, mut kills) = (0, 0);
    while start.elapsed() < total {
        rounds += 1;
        let k = (churn.len() / 10).max(1);
        for _ in 0..k {
            let i = rng.below(churn.len());
            if !bound.remove(&i) {
                bound.insert(i);
            }
        }
        for _ in 0..k / 2 {
            let i = rng.below(churn.len());
            if !admin_down.remove(&i) {
                admin_down.insert(i);
            }
        }
        // Devices come and go (their bindings stay as they are).
        for _ in 0..k / 2 {
            let i = rng.below(churn.len());
            let node = if churn[i].host == "node0" { 0 } else { 1 };
            let dev = churn[i].device();
            if has_device.remove(&i) {
                c.nodes[node].ns.exec(&["ip", "link", "del", &dev]).unwrap();
            } else {
                c.nodes[node]
                    .ns
                    .exec(&["ip", "link", "add", &dev, "type", "veth", "peer", "name", &format!("s{i}")])
                    .unwrap();
                c.nodes[node].ns.exec(&["ip", "link", "set", &dev, "up"]).unwrap();
                has_device.insert(i);
            }
        }
        let d = doc(&bound, &admin_down);
        c.write_bindings(&d).unwrap();
        // Only node0's agent restarts, so node1's lives through the whole run
        // and shows whether memory and fds stay flat over it.
        match rng.below(10) {
            0 => {
                let node = 0;
                c.nodes[node].agent.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
                c.start_agent(&format!("node{node}")).unwrap();
                restarts += 1;
            }
            1 => {
                let node = 0;
                c.nodes[node].agent.as_mut().unwrap().stop(libc::SIGKILL).unwrap();
                c.start_agent(&format!("node{node}")).unwrap();
                kills += 1;
            }
            _ => {}
        }
        for node in 0..2 {
            let pin = c.pins.path().join(format!("node{node}"));
            let want = expected(&c, node, &d);
            let ok = datapath_tests::wait_until(Duration::from_secs(30), || {
                entry_counts(&pin).is_ok_and(|n| n == want)
            });
            assert!(
                ok,
                "round {rounds}, node{node}: the maps did not converge to the bindings (seed {seed}): have {:?}, want {want:?}",
                entry_counts(&pin)
            );
            let pid = c.nodes[node].agent.as_ref().unwrap().pid();
            if let Some(u) = usage(pid) {
                life.entry(pid).or_default().push(u);
            }
        }
    }

    let mut lost = Vec::new();
    for (what, ping) in [("a -> far (across the wire)", &mut to_far), ("a -> b (same node)", &mut to_b)] {
        let _ = ping.stop(libc::SIGINT, Duration::from_secs(10));
        let out = ping.output();
        let summary = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("{what}: {out}"));
        println!("soak: {what}: {summary}");
        if !summary.contains(" 0% packet loss") {
            lost.push(format!("{what}: {summary}"));
        }
    }
    let mut max_ms: f64 = 0.0;
    for node in &c.nodes {
        let log = node.agent.as_ref().unwrap().log_text();
        for ms in log.lines().filter_map(|l| l.split(" in ").last()?.strip_suffix(" ms")?.parse::<f64>().ok())
        {
            max_ms = max_ms.max(ms);
        }
    }
    // A process's first sample may catch it starting up (the maps it adopted
    // already match): its baseline is its second round.
    let grown: Vec<(u32, Usage, Usage)> = life
        .iter()
        .filter(|(_, s)| s.len() >= 3)
        .map(|(pid, s)| (*pid, s[1], *s.last().expect("three samples")))
        .collect();
    let longest = life.values().map(Vec::len).max().unwrap_or(0);
    println!(
        "soak: {rounds} rounds, {restarts} restarts, {kills} kills, longest reconcile {max_ms:.1} ms, {} agent processes, the longest-lived over {longest} rounds",
        life.len()
    );
    assert!(lost.is_empty(), "steady traffic lost packets (seed {seed}): {lost:?}");
    assert!(max_ms <= MAX_RECONCILE_MS, "a reconcile took {max_ms:.1} ms (bound {MAX_RECONCILE_MS} ms)");
    for &(pid, (rss0, fds0), (rss1, fds1)) in &grown {
        if life[&pid].len() == longest {
            println!(
                "soak: agent {pid} (through every round): RSS {rss0} -> {rss1} kB, fds {fds0} -> {fds1}"
            );
        }
        assert!(rss1 <= rss0 + rss0 / 4 + RSS_SLACK_KB, "agent {pid}: RSS grew from {rss0} kB to {rss1} kB");
        assert!(fds1 <= fds0 + 4, "agent {pid}: fds grew from {fds0} to {fds1}");
    }
    assert!(rounds >= 3, "too few rounds to mean anything: {rounds}");
}
