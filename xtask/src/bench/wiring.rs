//! Wiring: how long a port takes from its tap appearing to being ready, per
//! binding source. With the Neutron source, ready is what Nova waits for: the
//! port ACTIVE in neutron's API (details asked, port programmed, device
//! reported up). With the file, it is `datapath ports` saying `up`. Taps come
//! one at a time, as VMs boot on a compute node.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use datapath_tests::{
    cluster::{Cluster, PortSpec, network_json},
    neutron::{Neutron, Provider},
    wait_until,
};
use datapath_user::{
    api::{PortsReply, Request},
    control,
};
use serde_json::json;

/// How long one port may take before the run is called failed (not a speed goal: a hang).
const PORT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is polled; the figures' resolution.
const POLL: Duration = Duration::from_millis(5);
/// Ports per network: a node floods to at most 64 local ports of one network.
const PER_NETWORK: usize = 50;

/// Tap-to-ready times, in ms, per source.
pub struct Wiring {
    pub ports: usize,
    pub neutron_ms: Vec<f64>,
    pub file_ms: Vec<f64>,
}

/// Measures `ports` taps with each source.
pub fn measure(ports: usize) -> Result<Wiring> {
    let file_ms = file(ports).context("tap to up with the bindings file")?;
    let neutron_ms = neutron(ports).context("tap to ACTIVE with neutron-server")?;
    Ok(Wiring { ports, neutron_ms, file_ms })
}

/// Creates the tap of `p` in `node` (a veth whose peer stays in the node: no VM is needed).
fn plug(c: &Cluster, node: &str, p: &PortSpec) -> Result<()> {
    let ns = &c.node(node).ns;
    let peer = format!("vm{}", &p.id[..8]);
    ns.exec(&["ip", "link", "add", &p.device(), "type", "veth", "peer", "name", &peer])?;
    ns.exec(&["ip", "link", "set", &peer, "address", &p.mac])?;
    ns.exec(&["ip", "link", "set", &peer, "up"])?;
    ns.exec(&["ip", "link", "set", &p.device(), "up"]).map(drop)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn file(ports: usize) -> Result<Vec<f64>> {
    let mut c = Cluster::new("bwire", 1)?;
    let nets: Vec<String> =
        (0..ports.div_ceil(PER_NETWORK)).map(|n| format!("a1a1a1a1-0000-4000-8000-{n:012x}")).collect();
    let specs: Vec<PortSpec> = (0..ports)
        .map(|i| {
            PortSpec::vm(
                &format!("{:08x}-0000-4000-8000-{i:012x}", 0xb000_0000u32 + i as u32),
                &nets[i / PER_NETWORK],
                &format!("fa:16:3e:b0:{:02x}:{:02x}", i / 256, i % 256),
                &format!("10.70.{}.{}", i / 250, i % 250 + 2),
                "node0",
            )
        })
        .collect();
    let networks: Vec<_> = nets
        .iter()
        .enumerate()
        .map(|(n, id)| network_json(id, &format!("wire{n}"), "vlan", Some(1100 + n as u32)))
        .collect();
    c.write_bindings(&json!({
        "networks": networks,
        "ports": specs.iter().map(PortSpec::to_json).collect::<Vec<_>>(),
    }))?;
    c.start_agent("node0")?;
    let socket = c.dir.join("node0.sock");
    if !wait_until(Duration::from_secs(30), || socket.exists()) {
        bail!("the agent's control socket did not appear");
    }
    let mut out = Vec::new();
    for p in &specs {
        let start = Instant::now();
        plug(&c, "node0", p)?;
        wait_ready(start, &p.device(), || up_in(&socket, &p.device()))?;
        out.push(ms(start.elapsed()));
    }
    Ok(out)
}

fn up_in(socket: &Path, device: &str) -> bool {
    control::query::<PortsReply>(socket, &Request::Ports {})
        .is_ok_and(|r| r.ports.iter().any(|p| p.device == device && p.state == "up"))
}

fn wait_ready(start: Instant, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    while !ready() {
        if start.elapsed() > PORT_TIMEOUT {
            bail!("{what} not ready after {PORT_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

fn neutron(ports: usize) -> Result<Vec<f64>> {
    let n = Neutron::start()?;
    let mut c = Cluster::new("bwneu", 1)?;
    c.use_neutron(&n.transport_url(), 10)?;
    c.start_agent("node0")?;
    let alive = wait_until(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(200));
        n.api().agents(Some("node0")).is_ok_and(|a| a.iter().any(|a| a["alive"] == json!(true)))
    });
    if !alive {
        bail!("the agent did not come alive in neutron:\n{}", n.log_tail(20));
    }
    let api = n.api();
    let mut specs = Vec::new();
    for i in 0..ports {
        if i % PER_NETWORK == 0 {
            let k = i / PER_NETWORK;
            let net = api.create_network(
                &format!("wire{k}"),
                Provider::Vlan { physnet: "default", id: 1100 + k as u32 },
            )?;
            let id = net["id"].as_str().context("network without id")?.to_string();
            api.create_subnet(&id, &format!("10.{}.0.0/16", 70 + k))?;
            specs.push((id, Vec::new()));
        }
        let (net_id, list) = specs.last_mut().expect("a network was created first");
        let p = api.create_port(net_id, "node0", "compute:nova")?;
        let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
        let ip = p["fixed_ips"][0]["ip_address"].as_str().unwrap_or_default();
        list.push(PortSpec::vm(&s("id"), net_id, &s("mac_address"), ip, "node0"));
    }
    let specs: Vec<PortSpec> = specs.into_iter().flat_map(|(_, l)| l).collect();
    let mut out = Vec::new();
    for p in &specs {
        let start = Instant::now();
        plug(&c, "node0", p)?;
        wait_ready(start, &p.device(), || api.port(&p.id).is_ok_and(|v| v["status"] == "ACTIVE"))?;
        out.push(ms(start.elapsed()));
    }
    Ok(out)
}

/// The `q` quantile (0..=1) of `samples`, nearest rank.
pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}
