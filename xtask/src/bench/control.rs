//! Control plane: what the agent's reconcile costs (read the bindings file,
//! derive, diff, apply; the maps are read back only when programming from
//! scratch, as the agent reads them only at start and on its periodic resync)
//! with 10,000 ports on 4,000 networks, into the real maps of a privately
//! loaded datapath.
//!
//! The node's device list is synthetic (map keys take any ifindex), so no
//! 10,000 devices need to exist; attaching tcx links is not part of the figure.
//! A node holds at most 4,095 ports of its own (MAX_PORTS), so the cloud is
//! VXLAN with l2population: one port of each network on this node (4,000) and
//! 6,000 on 15 other hosts, each of which becomes an FDB entry behind its VTEP
//! and an ARP responder entry here. That is 10,000 ports in this node's maps.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use datapath_tests::cluster::{PortSpec, agents_json, network_json};
use datapath_user::{
    bindings::Bindings,
    config::Config,
    desired::{self, Allocations, MapState, PortState},
    loader::Datapath,
    netlink::Devices,
    sync,
    tunnel::TUNNEL_DEVICE,
};
use serde_json::{Value, json};

use super::{interrupt, stats};

const REMOTE_HOSTS: usize = 15;
/// ifindex of the first local port's synthetic device.
const FIRST_IFINDEX: u32 = 1000;

/// The control-plane figures and where the time goes.
pub struct ControlPlane {
    pub program_10k_s: f64,
    pub change_ms: f64,
    pub change_1k_ms: f64,
    pub map_memory_mb: f64,
    /// One line per reconcile kind, phase by phase, for the terminal and the docs.
    pub profile: Vec<String>,
}

/// Measures it all; `changes` one-port changes are timed at each size.
pub fn measure(scratch: &Path, changes: usize) -> Result<ControlPlane> {
    let mut profile = Vec::new();
    let (program_10k, change_10k, memory, empty) = {
        let mut node = Node::new(scratch, "cp10k", 4_000, 10_000)?;
        let empty = maps_memlock()?;
        let program = node.reconcile()?;
        node.check_programmed()?;
        let memory = maps_memlock()?;
        let change = node.changes(changes)?;
        (program, change, memory, empty)
    };
    profile.push(format!("program 10,000 ports on 4,000 networks: {}", program_10k.describe()));
    profile.push(format!("one port change with 10,000 present (median): {}", change_10k.describe()));
    let change_1k = {
        let mut node = Node::new(scratch, "cp1k", 400, 1_000)?;
        let program = node.reconcile()?;
        node.check_programmed()?;
        profile.push(format!("program 1,000 ports on 400 networks: {}", program.describe()));
        node.changes(changes)?
    };
    profile.push(format!("one port change with 1,000 present (median): {}", change_1k.describe()));
    profile.push(format!(
        "map memory (memlock of every map): {:.1} MB loaded empty, {:.1} MB with the 10,000 ports",
        empty as f64 / 1e6,
        memory as f64 / 1e6
    ));
    Ok(ControlPlane {
        program_10k_s: program_10k.total().as_secs_f64(),
        change_ms: change_10k.total().as_secs_f64() * 1e3,
        change_1k_ms: change_1k.total().as_secs_f64() * 1e3,
        map_memory_mb: memory as f64 / 1e6,
        profile,
    })
}

/// Where one reconcile spent its time.
#[derive(Debug, Clone, Copy, Default)]
struct Phases {
    parse: Duration,
    derive: Duration,
    read: Duration,
    diff: Duration,
    apply: Duration,
    changes: usize,
}

impl Phases {
    fn total(&self) -> Duration {
        self.parse + self.derive + self.read + self.diff + self.apply
    }

    fn describe(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "{:.1} ms = parse {:.1} + derive {:.1} + read maps {:.1} + diff {:.1} + apply {:.1} ({} map changes)",
            ms(self.total()),
            ms(self.parse),
            ms(self.derive),
            ms(self.read),
            ms(self.diff),
            ms(self.apply),
            self.changes
        )
    }
}

/// A node (host node0) of a synthetic cloud, with its own private datapath.
struct Node {
    cfg: Config,
    devices: Devices,
    alloc: Allocations,
    dp: Datapath,
    bindings: PathBuf,
    networks: usize,
    ports: usize,
    /// The bindings text without and with one more local port.
    texts: [String; 2],
    /// The added port's device.
    extra: (String, u32),
    /// What the last reconcile applied without error: the agent diffs against it, not a map read.
    known: Option<MapState>,
}

impl Node {
    fn new(scratch: &Path, tag: &str, networks: usize, ports: usize) -> Result<Self> {
        let bindings = scratch.join(format!("{tag}-bindings.json"));
        let text = format!(
            "host = \"node0\"\nphysical_interface_mappings = [\"default:eth2\"]\nbindings = \"{}\"\n\
             pin_path = \"/sys/fs/bpf/unused-{tag}\"\ncontrol_socket = \"{}\"\n\
             local_ip = \"192.0.2.10\"\ntunnel_types = [\"vxlan\"]\n",
            bindings.display(),
            scratch.join(format!("{tag}.sock")).display()
        );
        let cfg = Config::parse_str(&text, tag)?;
        let specs: Vec<PortSpec> = (0..ports).map(|i| port(i, networks, i < networks)).collect();
        let extra = port(ports, networks, true);
        let mut devices: Devices = [("eth2".to_string(), 2), (TUNNEL_DEVICE.to_string(), 3)].into();
        for (i, p) in specs.iter().enumerate().filter(|(_, p)| p.host == "node0") {
            devices.insert(p.device(), FIRST_IFINDEX + i as u32);
        }
        let texts = [
            document(networks, &specs)?,
            document(networks, &[specs.as_slice(), std::slice::from_ref(&extra)].concat())?,
        ];
        std::fs::write(&bindings, &texts[0]).with_context(|| format!("writing {}", bindings.display()))?;
        let dp =
            Datapath::load_private().context("loading a private datapath for the control-plane figures")?;
        Ok(Self {
            cfg,
            devices,
            alloc: Allocations::default(),
            dp,
            bindings,
            networks,
            ports,
            texts,
            extra: (extra.device(), FIRST_IFINDEX + ports as u32),
            known: None,
        })
    }

    /// One reconcile as the agent does it, minus the tcx attachments.
    fn reconcile(&mut self) -> Result<Phases> {
        interrupt::check()?;
        let mut p = Phases::default();
        let t = Instant::now();
        let bindings = Bindings::load(&self.bindings)?;
        p.parse = t.elapsed();
        ensure!(
            bindings.refused.is_empty(),
            "the synthetic bindings were refused: {:?}",
            &bindings.refused[..1]
        );
        let t = Instant::now();
        let derived = desired::derive(&self.cfg, &bindings, &self.devices, &mut self.alloc);
        p.derive = t.elapsed();
        let done = sync::converge(&mut self.dp.maps, &derived.state, self.known.as_ref())?;
        (p.read, p.diff, p.apply, p.changes) = (done.read, done.diff, done.apply, done.changes);
        if let Some(e) = done.errors.first() {
            bail!("applying the synthetic cloud: {} map updates failed, first: {e}", done.errors.len());
        }
        self.known = Some(derived.state);
        if let Some(r) = derived.ports.iter().find(|r| matches!(r.state, PortState::Error(_))) {
            bail!("the agent refused port {} ({}): {:?}", r.id, r.device, r.state);
        }
        Ok(p)
    }

    /// Every port is in the maps: local ones as ports and FDB entries, remote ones behind their VTEP.
    fn check_programmed(&self) -> Result<()> {
        let state = sync::read_state(&self.dp.maps)?;
        // The local ports, the uplink and the VXLAN device.
        ensure!(state.ports.len() == self.networks + 2, "PORTS holds {} entries", state.ports.len());
        ensure!(state.fdb.len() == self.ports, "FDB holds {} entries, not {}", state.fdb.len(), self.ports);
        ensure!(
            state.arp.len() == self.ports,
            "ARP_TABLE holds {} entries, not {}",
            state.arp.len(),
            self.ports
        );
        Ok(())
    }

    /// Times `n` reconciles that each add or remove one local port; returns the median one.
    fn changes(&mut self, n: usize) -> Result<Phases> {
        let mut samples = Vec::new();
        for k in 0..n.max(2) {
            let add = k % 2 == 0;
            // The sync tool's write and the device's arrival are not the agent's work.
            std::fs::write(&self.bindings, &self.texts[usize::from(add)])
                .with_context(|| format!("writing {}", self.bindings.display()))?;
            if add {
                self.devices.insert(self.extra.0.clone(), self.extra.1);
            } else {
                self.devices.remove(&self.extra.0);
            }
            let p = self.reconcile()?;
            ensure!(p.changes > 0, "one port change made no map change");
            samples.push(p);
        }
        let totals: Vec<f64> = samples.iter().map(|p| p.total().as_secs_f64()).collect();
        let mid = stats::median(&totals).unwrap_or(0.0);
        Ok(*samples
            .iter()
            .min_by(|a, b| {
                (a.total().as_secs_f64() - mid).abs().total_cmp(&(b.total().as_secs_f64() - mid).abs())
            })
            .expect("at least two samples"))
    }
}

fn network_id(n: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", n + 1, n + 1)
}

/// Port `i` of the cloud: on network `i % networks`, on node0 when `local`, else on a remote host.
fn port(i: usize, networks: usize, local: bool) -> PortSpec {
    let n = i % networks;
    let host = if local { "node0".to_string() } else { format!("node{}", 1 + i % REMOTE_HOSTS) };
    let id = format!("{:08x}-c0de-4000-8000-{:012x}", i + 1, i + 1);
    let mac = format!("fa:16:3e:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
    let ip = format!("10.{}.{}.{}", 64 + n / 256, n % 256, 2 + i / networks);
    PortSpec::vm(&id, &network_id(n), &mac, &ip, &host)
}

/// The bindings document: the VXLAN networks, `ports` and every host's agent.
fn document(networks: usize, ports: &[PortSpec]) -> Result<String> {
    let nets: Vec<Value> = (0..networks)
        .map(|n| {
            let mut v = network_json(&network_id(n), &format!("net{n}"), "vxlan", Some(10_000 + n as u32));
            v["mtu"] = json!(1450);
            v["provider:physical_network"] = Value::Null;
            v
        })
        .collect();
    let doc = json!({
        "networks": nets,
        "ports": ports.iter().map(PortSpec::to_json).collect::<Vec<_>>(),
        "agents": agents_json(1 + REMOTE_HOSTS),
    });
    serde_json::to_string(&doc).context("serialising the synthetic bindings")
}

/// Kernel memory of every BPF map this process holds (memlock from fdinfo, each map once).
fn maps_memlock() -> Result<u64> {
    let mut seen = std::collections::BTreeMap::new();
    let dir = std::fs::read_dir("/proc/self/fdinfo").context("listing /proc/self/fdinfo")?;
    for entry in dir {
        let Ok(entry) = entry else { continue };
        // An fd closed since the listing is simply gone.
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        if let Some((id, memlock)) = stats::fdinfo_map_memlock(&text) {
            seen.insert(id, memlock);
        }
    }
    ensure!(!seen.is_empty(), "no BPF map among this process's fds");
    Ok(seen.values().sum())
}
