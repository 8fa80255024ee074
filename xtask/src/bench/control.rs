//! Control plane: what the agent's reconcile costs with 10,000 ports on 4,000
//! networks, into the real maps of a privately loaded datapath: programming
//! from scratch (read the bindings file, derive everything, read the maps
//! back, diff, apply, as the agent does at start and on its periodic resync),
//! and one port's change from either source. From the file, a change costs a
//! read of the whole file and a comparison of every network; from neutron it
//! costs the port's own details and its network's re-derivation.
//!
//! The node's device list is synthetic (map keys take any ifindex), so no
//! 10,000 devices need to exist; attaching tcx links is not part of the figure.
//! A node holds at most 4,095 ports of its own (MAX_PORTS), so the cloud is
//! VXLAN with l2population: one port of each network on this node (4,000) and
//! 6,000 on 15 other hosts, each of which becomes an FDB entry behind its VTEP
//! and an ARP responder entry here. That is 10,000 ports in this node's maps.
//!
//! With security groups, the same cloud has every port in two groups of five
//! rules each: one that all 10,000 share, and its project's (one per ten
//! networks), whose rules name the project's members. A rule added to (or
//! removed from) the shared group changes that group's table, which every
//! local port holds; its time runs until the kernel's `SG_PORTS` names the
//! new table, from either
//! source. The memory figure then adds 100,000 tracked connections.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use datapath_common::{CtEntry, CtKey, IP_FAMILY_V4};
use datapath_tests::cluster::{PortSpec, agents_json, network_json, vtep_ip};
use datapath_user::{
    bindings::{Bindings, Catalog},
    config::Config,
    desired::{Allocations, Engine, PortState, Scope},
    loader::Datapath,
    netlink::Devices,
    neutron::{
        notify::{FdbPort, NetworkFdb, Notification},
        plugin::{Details, DeviceDetails},
        ports::{NeutronState, Wired},
        secgroups,
    },
    sync,
    tunnel::TUNNEL_DEVICE,
};
use serde_json::{Value, json};

use super::{interrupt, stats};

const REMOTE_HOSTS: usize = 15;
/// The group every port of the security-group cloud is in.
const SHARED_GROUP: &str = "5ec0a110-0000-4000-8000-000000000001";
/// Networks per project (and project group).
const NETWORKS_PER_PROJECT: usize = 10;
/// Tracked connections in the memory figure.
const CONNECTIONS: usize = 100_000;
/// ifindex of the first local port's synthetic device.
const FIRST_IFINDEX: u32 = 1000;

/// The control-plane figures and where the time goes.
pub struct ControlPlane {
    pub program_10k_s: f64,
    /// One port's change from the bindings file.
    pub change_ms: f64,
    pub change_1k_ms: f64,
    /// One port's change from neutron.
    pub change_neutron_ms: f64,
    pub change_neutron_1k_ms: f64,
    pub map_memory_mb: f64,
    /// A rule change of the group every port is in, 10,000 ports present, from the file.
    pub sg_rule_change_ms: f64,
    /// The same from neutron.
    pub sg_rule_change_neutron_ms: f64,
    /// Every map with the security-group cloud and 100,000 tracked connections.
    pub sg_map_memory_mb: f64,
    /// One line per reconcile kind, phase by phase, for the terminal and the docs.
    pub profile: Vec<String>,
}

/// Measures it all; `changes` one-port changes are timed at each size.
pub fn measure(scratch: &Path, changes: usize) -> Result<ControlPlane> {
    let mut profile = Vec::new();
    let (program_10k, change_10k, neutron_10k, memory, empty) = {
        let mut node = Node::new(scratch, "cp10k", 4_000, 10_000, false)?;
        let empty = maps_memlock()?;
        let program = node.program()?;
        node.check_programmed()?;
        let memory = maps_memlock()?;
        let change = node.changes(changes, Source::File)?;
        let neutron = node.changes(changes, Source::Neutron)?;
        (program, change, neutron, memory, empty)
    };
    profile.push(format!("program 10,000 ports on 4,000 networks: {}", program_10k.describe()));
    profile
        .push(format!("one port change from the file, 10,000 present (median): {}", change_10k.describe()));
    profile
        .push(format!("one port change from neutron, 10,000 present (median): {}", neutron_10k.describe()));
    let (change_1k, neutron_1k) = {
        let mut node = Node::new(scratch, "cp1k", 400, 1_000, false)?;
        let program = node.program()?;
        node.check_programmed()?;
        profile.push(format!("program 1,000 ports on 400 networks: {}", program.describe()));
        (node.changes(changes, Source::File)?, node.changes(changes, Source::Neutron)?)
    };
    profile.push(format!("one port change from the file, 1,000 present (median): {}", change_1k.describe()));
    profile.push(format!("one port change from neutron, 1,000 present (median): {}", neutron_1k.describe()));
    profile.push(format!(
        "map memory (memlock of every map): {:.1} MB loaded empty, {:.1} MB with the 10,000 ports",
        empty as f64 / 1e6,
        memory as f64 / 1e6
    ));
    let (sg_program, sg_file, sg_neutron, sg_ports_mem, sg_ct_mem) = {
        let mut node = Node::new(scratch, "cpsg", 4_000, 10_000, true)?;
        let program = node.program()?;
        node.check_programmed()?;
        let ports = maps_memlock()?;
        let file = node.rule_changes(changes, Source::File)?;
        let neutron = node.rule_changes(changes, Source::Neutron)?;
        node.fill_conntrack(CONNECTIONS)?;
        (program, file, neutron, ports, maps_memlock()?)
    };
    profile.push(format!(
        "program 10,000 ports in 2 groups of 5 rules each (4,000 local): {}",
        sg_program.describe()
    ));
    profile.push(format!(
        "rule change of the group all 10,000 ports are in, from the file (median): {}",
        sg_file.describe()
    ));
    profile.push(format!("the same from neutron (median): {}", sg_neutron.describe()));
    profile.push(format!(
        "map memory with security groups: {:.1} MB with the 10,000 ports and their 10 rules, \
         {:.1} MB with {CONNECTIONS} tracked connections more",
        sg_ports_mem as f64 / 1e6,
        sg_ct_mem as f64 / 1e6
    ));
    let ms = |p: &Phases| p.total().as_secs_f64() * 1e3;
    Ok(ControlPlane {
        sg_rule_change_ms: ms(&sg_file),
        sg_rule_change_neutron_ms: ms(&sg_neutron),
        sg_map_memory_mb: sg_ct_mem as f64 / 1e6,
        program_10k_s: program_10k.total().as_secs_f64(),
        change_ms: ms(&change_10k),
        change_1k_ms: ms(&change_1k),
        change_neutron_ms: ms(&neutron_10k),
        change_neutron_1k_ms: ms(&neutron_1k),
        map_memory_mb: memory as f64 / 1e6,
        profile,
    })
}

/// Where a port's change comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    File,
    Neutron,
}

/// Where one reconcile spent its time.
#[derive(Debug, Clone, Copy, Default)]
struct Phases {
    /// Reading the source: the file parsed and split by network, or neutron's details made bindings.
    parse: Duration,
    /// The engine's update: derivation of what changed, and the patch of the desired state.
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
            "{:.1} ms = source {:.1} + derive {:.1} + read maps {:.1} + diff {:.1} + apply {:.1} ({} map changes)",
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
    engine: Engine,
    dp: Datapath,
    bindings: PathBuf,
    networks: usize,
    ports: usize,
    /// The bindings text without and with one more local port.
    texts: [String; 2],
    /// The added port's device.
    extra: (String, u32),
    /// The same cloud as neutron would tell it.
    neutron: NeutronState,
    /// The added port's details.
    extra_details: DeviceDetails,
    /// The bindings as the agent's side holds them.
    catalog: Catalog,
    /// With security groups: neutron's answer to security_group_info_for_devices
    /// without and with the shared group's extra rule (the file's texts differ alike).
    sg_answers: Option<[Value; 2]>,
}

impl Node {
    /// `groups`: every port in the shared group and its project's; the two
    /// texts then differ by a rule of the shared group instead of a port.
    fn new(scratch: &Path, tag: &str, networks: usize, ports: usize, groups: bool) -> Result<Self> {
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
        let texts = if groups {
            [document(networks, &specs, Some(false))?, document(networks, &specs, Some(true))?]
        } else {
            [
                document(networks, &specs, None)?,
                document(networks, &[specs.as_slice(), std::slice::from_ref(&extra)].concat(), None)?,
            ]
        };
        std::fs::write(&bindings, &texts[0]).with_context(|| format!("writing {}", bindings.display()))?;
        let neutron = neutron_feed(&specs)?;
        let sg_answers = groups.then(|| [sg_answer(&specs, false), sg_answer(&specs, true)]);
        let dp =
            Datapath::load_private().context("loading a private datapath for the control-plane figures")?;
        Ok(Self {
            cfg,
            devices,
            engine: Engine::new(Allocations::default()),
            dp,
            bindings,
            networks,
            ports,
            texts,
            extra: (extra.device(), FIRST_IFINDEX + ports as u32),
            neutron,
            extra_details: details_of(&extra)?,
            catalog: Catalog::default(),
            sg_answers,
        })
    }

    /// Programs the node from scratch, from the file, as the agent does at start.
    fn program(&mut self) -> Result<Phases> {
        interrupt::check()?;
        let mut p = Phases::default();
        let t = Instant::now();
        self.catalog = self.read_file()?;
        p.parse = t.elapsed();
        let t = Instant::now();
        self.engine.update(&self.cfg, &self.catalog, &self.devices, Scope::Full);
        p.derive = t.elapsed();
        let done = sync::converge(&mut self.dp.maps, self.engine.state())?;
        (p.read, p.diff, p.apply, p.changes) = (done.read, done.diff, done.apply, done.changes);
        if let Some(e) = done.errors.first() {
            bail!("applying the synthetic cloud: {} map updates failed, first: {e}", done.errors.len());
        }
        let derived = self.engine.derived(&self.cfg);
        if let Some(r) = derived.ports.iter().find(|r| matches!(r.state, PortState::Error(_))) {
            bail!("the agent refused port {} ({}): {:?}", r.id, r.device, r.state);
        }
        Ok(p)
    }

    /// Writes the bindings text with (`add`) or without the change.
    fn write_text(&self, add: bool) -> Result<()> {
        std::fs::write(&self.bindings, &self.texts[usize::from(add)])
            .with_context(|| format!("writing {}", self.bindings.display()))
    }

    /// Reads the file again, as the agent does on a change; returns the networks that changed.
    fn reread_file(&mut self) -> Result<BTreeSet<String>> {
        let new = self.read_file()?;
        let changed = new.changed_since(&self.catalog);
        self.catalog = new;
        Ok(changed)
    }

    fn read_file(&self) -> Result<Catalog> {
        let bindings = Bindings::load(&self.bindings)?;
        ensure!(
            bindings.refused.is_empty(),
            "the synthetic bindings were refused: {:?}",
            &bindings.refused[..1]
        );
        Ok(Catalog::split(bindings))
    }

    /// One incremental reconcile, as the agent does it for a change, minus the
    /// tcx attachment; from neutron, with the agent's neutron task's work for
    /// the change (the RPC round trips aside).
    fn change(&mut self, source: Source, add: bool) -> Result<Phases> {
        interrupt::check()?;
        let mut p = Phases::default();
        // The device's arrival is not the agent's work; nor, for the file, the sync tool's write.
        let dev = self.extra.0.clone();
        if add {
            self.devices.insert(dev.clone(), self.extra.1);
        } else {
            self.devices.remove(&dev);
        }
        if source == Source::File {
            self.write_text(add)?;
        }
        let moved: BTreeSet<String> = [dev.clone()].into();
        let t = Instant::now();
        let networks = match source {
            Source::File => self.reread_file()?,
            Source::Neutron => {
                // The task: the tap seen (or gone), its details asked for and taken in,
                // its network's bindings rebuilt; the agent takes the delta in.
                let now = std::time::Instant::now();
                self.neutron.observe_changes([(dev.clone(), add.then_some(Wired::Unbound))]);
                if add {
                    let asked = self.neutron.to_fetch(now);
                    ensure!(asked == [dev.clone()], "the task would ask for {asked:?}");
                    let answer = Details { devices: vec![self.extra_details.clone()], ..Details::default() };
                    self.neutron.fetched(&asked, answer, now);
                }
                let delta = self.neutron.take_delta()?.context("one port's change made no delta")?;
                self.catalog.apply(delta)
            }
        };
        p.parse = t.elapsed();
        let t = Instant::now();
        let scope = Scope::Changed { networks: &networks, devices: &moved };
        let change = self.engine.update(&self.cfg, &self.catalog, &self.devices, scope);
        p.derive = t.elapsed();
        let done = sync::apply_known(&mut self.dp.maps, &change.diff);
        (p.apply, p.changes) = (done.apply, done.changes);
        if let Some(e) = done.errors.first() {
            bail!("applying one port's change: {} map updates failed, first: {e}", done.errors.len());
        }
        ensure!(p.changes > 0, "one port change made no map change");
        if source == Source::Neutron {
            // The task again: the port's new state, and what to tell neutron.
            let t = Instant::now();
            let state = change.reports.get(&dev).cloned().flatten();
            let wired = state.map(|r| if r.state == PortState::Up { Wired::Up } else { Wired::Failed });
            self.neutron.observe_changes([(dev.clone(), wired)]);
            let report = self.neutron.to_report();
            ensure!(report.up.len() + report.down.len() == 1, "the task would report {report:?}");
            self.neutron.reported(&report);
            p.parse += t.elapsed();
        }
        Ok(p)
    }

    /// Times `n` changes that each add or remove the shared group's extra rule; returns the median one.
    fn rule_changes(&mut self, n: usize, source: Source) -> Result<Phases> {
        let answers = self.sg_answers.clone().context("a node without security groups")?;
        if source == Source::Neutron {
            self.neutron.take_delta()?;
            self.neutron.sg_fetched(secgroups::parse(&answers[0])?);
            self.adopt_neutron_view()?;
        }
        self.timed(n, |node, add| node.rule_change(source, add, &answers))
    }

    /// One change of the shared group: the extra rule added (`add`) or removed,
    /// timed until the first local port's `SG_PORTS` entry names the group's new table.
    fn rule_change(&mut self, source: Source, add: bool, answers: &[Value; 2]) -> Result<Phases> {
        interrupt::check()?;
        let mut p = Phases::default();
        let port = FIRST_IFINDEX;
        let before =
            self.dp.maps.synced.sg_ports.get(&port, 0).context("the first port's SG_PORTS entry")?.tables;
        if source == Source::File {
            self.write_text(add)?;
        }
        let t = Instant::now();
        let networks = match source {
            Source::File => self.reread_file()?,
            Source::Neutron => {
                // The task: the notification, the groups asked for again (the RPC
                // round trip aside), the answer taken in, the delta made.
                let groups = vec![SHARED_GROUP.to_string()];
                self.neutron.apply(&Notification::SecurityGroupRuleUpdated { security_groups: groups });
                ensure!(self.neutron.sg_to_fetch().is_some(), "a rule update did not make the task ask");
                self.neutron.sg_fetched(secgroups::parse(&answers[usize::from(add)])?);
                let delta = self.neutron.take_delta()?.context("a rule change made no delta")?;
                self.catalog.apply(delta)
            }
        };
        p.parse = t.elapsed();
        let t = Instant::now();
        let none = BTreeSet::new();
        let scope = Scope::Changed { networks: &networks, devices: &none };
        let change = self.engine.update(&self.cfg, &self.catalog, &self.devices, scope);
        p.derive = t.elapsed();
        let t = Instant::now();
        let done = sync::apply_known(&mut self.dp.maps, &change.diff);
        let after =
            self.dp.maps.synced.sg_ports.get(&port, 0).context("the first port's SG_PORTS entry")?.tables;
        p.apply = t.elapsed();
        p.changes = done.changes;
        if let Some(e) = done.errors.first() {
            bail!("applying a rule change: {} map updates failed, first: {e}", done.errors.len());
        }
        ensure!(after != before, "a rule change left the first port's tables at {before:?}");
        Ok(p)
    }

    /// Writes `n` connections into `CONNTRACK`, spread over the local ports, as the programs would.
    fn fill_conntrack(&mut self, n: usize) -> Result<()> {
        for i in 0..n {
            let port = i % self.networks;
            let key = CtKey {
                ifindex: FIRST_IFINDEX + port as u32,
                local_port: 80,
                remote_port: (1024 + i / self.networks) as u16,
                protocol: 6,
                family: IP_FAMILY_V4,
                _pad: [0; 2],
                local: v4(10, 64 + port / 256, port % 256, 2),
                remote: v4(172, 16 + i / 65536 % 16, i / 256 % 256, i % 256),
            };
            let entry =
                CtEntry { created_ns: 0, last_seen_ns: 0, flags: 0, table: 0, rule: 0, lifetime_s: 432_000 };
            self.dp.maps.conntrack.insert(key, entry, 0).with_context(|| format!("connection {i}"))?;
        }
        Ok(())
    }

    /// Every port is in the maps: local ones as ports and FDB entries, remote ones behind their VTEP.
    fn check_programmed(&self) -> Result<()> {
        let state = sync::read_state(&self.dp.maps)?;
        ensure!(&state == self.engine.state(), "the maps differ from the desired state");
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
    fn changes(&mut self, n: usize, source: Source) -> Result<Phases> {
        if source == Source::Neutron {
            self.adopt_neutron_view()?;
        }
        self.timed(n, |node, add| node.change(source, add))
    }

    /// Takes the catalog from neutron's side (its pending delta taken first): the
    /// same cloud told by neutron, so the desired state must not move.
    fn adopt_neutron_view(&mut self) -> Result<()> {
        self.neutron.take_delta()?;
        self.catalog = self.neutron.catalog().clone();
        let change = self.engine.update(&self.cfg, &self.catalog, &self.devices, Scope::Full);
        ensure!(
            change.diff.is_empty(),
            "neutron's view of the cloud differs from the file's in {} map entries",
            change.diff.len()
        );
        Ok(())
    }

    /// Runs `n` (at least two) changes that alternately add and remove; returns
    /// the median one. Leaves the node as it was: without the addition.
    fn timed(&mut self, n: usize, mut one: impl FnMut(&mut Self, bool) -> Result<Phases>) -> Result<Phases> {
        let mut samples = Vec::new();
        for k in 0..n.max(2) {
            samples.push(one(self, k % 2 == 0)?);
        }
        if samples.len() % 2 == 1 {
            one(self, false)?;
        }
        self.check_programmed()?;
        Ok(median_phases(&samples))
    }
}

/// The sample whose total is nearest the median (at least one sample).
fn median_phases(samples: &[Phases]) -> Phases {
    let totals: Vec<f64> = samples.iter().map(|p| p.total().as_secs_f64()).collect();
    let mid = stats::median(&totals).unwrap_or(0.0);
    *samples
        .iter()
        .min_by(|a, b| {
            (a.total().as_secs_f64() - mid).abs().total_cmp(&(b.total().as_secs_f64() - mid).abs())
        })
        .expect("at least one sample")
}

/// An IPv4 address in a `CtKey`'s 16 bytes.
fn v4(a: usize, b: usize, c: usize, d: usize) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&[a as u8, b as u8, c as u8, d as u8]);
    out
}

/// Neutron's side of the same cloud: the details of node0's ports, and
/// l2population's FDB of the others, every local port reported up.
fn neutron_feed(specs: &[PortSpec]) -> Result<NeutronState> {
    let mut st = NeutronState::new("node0");
    let local: Vec<&PortSpec> = specs.iter().filter(|p| p.host == "node0").collect();
    let present: BTreeMap<String, Wired> = local.iter().map(|p| (p.device(), Wired::Unbound)).collect();
    st.observe(present.clone());
    let devices: Vec<String> = local.iter().map(|p| p.device()).collect();
    let details = local.iter().map(|p| details_of(p)).collect::<Result<Vec<_>>>()?;
    st.fetched(&devices, Details { devices: details, ..Details::default() }, std::time::Instant::now());
    let mut fdb: BTreeMap<String, NetworkFdb> = BTreeMap::new();
    for p in specs.iter().filter(|p| p.host != "node0") {
        let host: usize = p.host.trim_start_matches("node").parse().context("a synthetic host name")?;
        let vtep: IpAddr = vtep_ip(host).parse().context("a synthetic VTEP")?;
        let segment = segment_of(&p.network_id)?;
        let net = fdb.entry(p.network_id.clone()).or_insert_with(|| NetworkFdb {
            segment_id: Some(segment),
            network_type: "vxlan".into(),
            ports: BTreeMap::new(),
        });
        net.ports.entry(vtep).or_default().push(FdbPort { mac: p.mac.clone(), ip: p.ip.clone() });
    }
    st.apply(&Notification::AddFdbEntries(fdb));
    // Neutron was told every port is up, as a running node's agent would have.
    let up: BTreeMap<String, Wired> = present.keys().map(|d| (d.clone(), Wired::Up)).collect();
    st.observe(up);
    let report = st.to_report();
    st.reported(&report);
    Ok(st)
}

/// What neutron's get_devices_details_list answers for a port of the cloud.
fn details_of(p: &PortSpec) -> Result<DeviceDetails> {
    serde_json::from_value(json!({
        "device": p.device(), "network_id": p.network_id, "port_id": p.id, "mac_address": p.mac,
        "admin_state_up": p.admin_up, "network_type": "vxlan",
        "segmentation_id": segment_of(&p.network_id)?, "physical_network": null, "mtu": 1450,
        "fixed_ips": [{"subnet_id": "sub", "ip_address": p.ip}], "device_owner": p.owner,
        "allowed_address_pairs": [], "port_security_enabled": p.port_security,
    }))
    .context("synthetic device details")
}

/// The VNI of network `n` (see `document`).
fn vni(n: usize) -> u32 {
    10_000 + n as u32
}

/// The VNI of the network whose id `network_id` made.
fn segment_of(id: &str) -> Result<u32> {
    Ok(vni(network_index(id)?))
}

/// n of the network whose id `network_id` made: it starts with n + 1 in hex.
fn network_index(id: &str) -> Result<usize> {
    let n = id.get(..8).and_then(|h| usize::from_str_radix(h, 16).ok()).filter(|n| *n > 0);
    Ok(n.with_context(|| format!("{id:?} is not a synthetic network id"))? - 1)
}

/// The project group of the ports of network `n`.
fn project_group(n: usize) -> String {
    let k = n / NETWORKS_PER_PROJECT + 1;
    format!("{k:08x}-5ec0-4000-8000-{k:012x}")
}

/// The groups of the security-group cloud by id, each with its rules (without ids,
/// as neutron sends them): the shared one (with `extra`, one rule more), then each project's.
fn groups(networks: usize, extra: bool) -> Vec<(String, Vec<Value>)> {
    let tcp = |port: u16| {
        json!({"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                                 "port_range_min": port, "port_range_max": port})
    };
    let mut shared = vec![
        json!({"direction": "egress", "ethertype": "IPv4"}),
        json!({"direction": "egress", "ethertype": "IPv6"}),
        json!({"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22,
               "port_range_max": 22, "remote_ip_prefix": "192.0.2.0/24"}),
        json!({"direction": "ingress", "ethertype": "IPv4", "protocol": "icmp"}),
        tcp(443),
    ];
    if extra {
        shared.push(tcp(8080));
    }
    let mut out = vec![(SHARED_GROUP.to_string(), shared)];
    for k in 0..networks.div_ceil(NETWORKS_PER_PROJECT) {
        let id = project_group(k * NETWORKS_PER_PROJECT);
        let mut mysql = tcp(3306);
        mysql["remote_group_id"] = json!(id);
        out.push((
            id.clone(),
            vec![
                json!({"direction": "ingress", "ethertype": "IPv4", "remote_group_id": id}),
                json!({"direction": "ingress", "ethertype": "IPv6", "remote_group_id": id}),
                tcp(80),
                json!({"direction": "ingress", "ethertype": "IPv4", "protocol": "udp", "port_range_min": 53,
                   "port_range_max": 53, "remote_ip_prefix": "10.0.0.0/8"}),
                mysql,
            ],
        ));
    }
    out
}

/// The groups port `p` is in: the shared one and its project's.
fn groups_of(p: &PortSpec) -> Result<[String; 2]> {
    Ok([SHARED_GROUP.to_string(), project_group(network_index(&p.network_id)?)])
}

/// What neutron's security_group_info_for_devices answers for node0's ports
/// of the security-group cloud (with or without the shared group's extra rule).
fn sg_answer(specs: &[PortSpec], extra: bool) -> Value {
    let networks = specs.iter().filter(|p| p.host == "node0").count();
    let mut devices = serde_json::Map::new();
    let mut members: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for p in specs {
        let Ok(groups) = groups_of(p) else { continue };
        members.entry(groups[1].clone()).or_default().push(json!([p.ip, p.mac]));
        if p.host == "node0" {
            devices.insert(p.id.clone(), json!({"id": p.id, "fixed_ips": [p.ip], "security_groups": groups}));
        }
    }
    let groups: serde_json::Map<String, Value> = groups(networks, extra)
        .into_iter()
        .map(|(id, rules)| {
            let rules = rules
                .into_iter()
                .map(|mut r| {
                    r["stateful"] = json!(true);
                    r
                })
                .collect();
            (id, Value::Array(rules))
        })
        .collect();
    let member_ips: serde_json::Map<String, Value> =
        members.into_iter().map(|(id, ips)| (id, json!({"IPv4": ips, "IPv6": []}))).collect();
    json!({"devices": devices, "security_groups": groups, "sg_member_ips": member_ips})
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

/// The bindings document: the VXLAN networks, `ports` and every host's agent;
/// with `groups` (Some(extra rule)), the groups and each port's.
fn document(networks: usize, ports: &[PortSpec], groups: Option<bool>) -> Result<String> {
    let nets: Vec<Value> = (0..networks)
        .map(|n| {
            let mut v = network_json(&network_id(n), &format!("net{n}"), "vxlan", Some(vni(n)));
            v["mtu"] = json!(1450);
            v["provider:physical_network"] = Value::Null;
            v
        })
        .collect();
    let mut doc = json!({
        "networks": nets,
        "ports": ports.iter().map(PortSpec::to_json).collect::<Vec<_>>(),
        "agents": agents_json(1 + REMOTE_HOSTS),
    });
    if let Some(extra) = groups {
        for (v, p) in doc["ports"].as_array_mut().into_iter().flatten().zip(ports) {
            v["security_groups"] = json!(groups_of(p)?);
        }
        let list: Vec<Value> = self::groups(networks, extra)
            .into_iter()
            .map(|(id, rules)| {
                let rules: Vec<Value> = rules
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut r)| {
                        r["id"] = json!(format!("{id}#{i}"));
                        r
                    })
                    .collect();
                json!({"id": id, "stateful": true, "security_group_rules": rules})
            })
            .collect();
        doc["security_groups"] = json!(list);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The file and neutron describe the bench's cloud alike: one desired state.
    #[test]
    fn both_sources_give_the_same_desired_state() {
        let (networks, ports) = (4, 10);
        let cfg = Config::parse_str(
            "host = \"node0\"\nphysical_interface_mappings = [\"default:eth2\"]\nbindings = \"/b\"\n\
             pin_path = \"/sys/fs/bpf/t\"\nlocal_ip = \"192.0.2.10\"\ntunnel_types = [\"vxlan\"]\n",
            "test",
        )
        .unwrap();
        let specs: Vec<PortSpec> = (0..ports).map(|i| port(i, networks, i < networks)).collect();
        let mut devices: Devices = [("eth2".to_string(), 2), (TUNNEL_DEVICE.to_string(), 3)].into();
        for (i, p) in specs.iter().enumerate().filter(|(_, p)| p.host == "node0") {
            devices.insert(p.device(), FIRST_IFINDEX + i as u32);
        }
        let file = Bindings::parse_str(&document(networks, &specs, None).unwrap(), "test").unwrap();
        let mut engine = Engine::new(Allocations::default());
        engine.update(&cfg, &Catalog::split(file), &devices, Scope::Full);
        let mut st = neutron_feed(&specs).unwrap();
        st.take_delta().unwrap();
        let mut other = Engine::new(engine.alloc().clone());
        other.update(&cfg, st.catalog(), &devices, Scope::Full);
        assert_eq!(other.state(), engine.state());
    }
}
