//! The seed scenario in namespaces: a "physical network" (a plain Linux
//! bridge in its own namespace, which passes 802.1Q frames untouched), nodes
//! whose uplink `eth2` plugs into it, VMs (namespaces behind a veth whose host
//! end is the port's tap name), a DHCP namespace running dnsmasq the way
//! Neutron runs it, and one `datapath agent` per node.
//!
//! Everything is removed on drop, also when a test panics: agents get SIGTERM
//! and then `--cleanup`, namespaces and pins go with their guards.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{bpffs::PinDir, netns::Netns};

/// Physical network name used by every node's mapping.
pub const PHYSNET: &str = "default";

/// The `datapath` binary under test: `DATAPATH_BIN`, or the newest build in target/.
pub fn datapath_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DATAPATH_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let candidates = [root.join("target/release/datapath"), root.join("target/debug/datapath")];
    candidates
        .into_iter()
        .filter(|p| p.exists())
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .expect("no datapath binary: run through `cargo xtask test` (or set DATAPATH_BIN)")
}

/// The `abi-next` test build of the binary (one map-layout version ahead),
/// which `cargo xtask test` builds for the upgrade tests: `DATAPATH_BIN_ABI_NEXT`.
pub fn datapath_bin_abi_next() -> PathBuf {
    std::env::var_os("DATAPATH_BIN_ABI_NEXT").map(PathBuf::from).expect(
        "DATAPATH_BIN_ABI_NEXT is not set: run through `cargo xtask test`, which builds the abi-next binary",
    )
}

/// A Neutron port as the tests describe it.
#[derive(Debug, Clone)]
pub struct PortSpec {
    pub id: String,
    pub network_id: String,
    pub mac: String,
    pub ip: String,
    pub host: String,
    pub owner: String,
    pub admin_up: bool,
    pub port_security: bool,
}

impl PortSpec {
    /// A VM port (`compute:nova`) bound to `host`.
    pub fn vm(id: &str, network_id: &str, mac: &str, ip: &str, host: &str) -> Self {
        Self {
            id: id.into(),
            network_id: network_id.into(),
            mac: mac.into(),
            ip: ip.into(),
            host: host.into(),
            owner: "compute:nova".into(),
            admin_up: true,
            port_security: true,
        }
    }

    /// The tap name Nova gives it.
    pub fn device(&self) -> String {
        format!("tap{}", &self.id[..11])
    }

    /// The port in Neutron's API shape.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "network_id": self.network_id, "mac_address": self.mac,
            "fixed_ips": [{"subnet_id": "sub-".to_string() + &self.network_id[..8], "ip_address": self.ip}],
            "device_owner": self.owner, "binding:host_id": self.host,
            "admin_state_up": self.admin_up, "port_security_enabled": self.port_security,
            "allowed_address_pairs": []
        })
    }
}

/// A network in Neutron's API shape.
pub fn network_json(id: &str, name: &str, net_type: &str, segmentation_id: Option<u32>) -> Value {
    json!({
        "id": id, "name": name, "provider:network_type": net_type,
        "provider:physical_network": PHYSNET, "provider:segmentation_id": segmentation_id,
        "mtu": 1500, "admin_state_up": true
    })
}

/// A VM: a namespace whose `eth0` is the far end of the port's veth.
pub struct Vm {
    pub ns: Netns,
    pub port: PortSpec,
}

impl Vm {
    /// Runs a command in the VM.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        self.ns.exec(args)
    }

    /// Whether `count` pings to `ip` get answers.
    pub fn ping(&self, ip: &str, count: u32) -> bool {
        let c = count.to_string();
        self.ns.exec(&["ping", "-c", &c, "-i", "0.2", "-W", "1", ip]).is_ok()
    }

    /// Whether `count` pings from source address `src` to `ip` get answers.
    pub fn ping_from(&self, src: &str, ip: &str, count: u32) -> bool {
        let c = count.to_string();
        self.ns.exec(&["ping", "-c", &c, "-i", "0.2", "-W", "1", "-I", src, ip]).is_ok()
    }

    /// Pings until one answer comes back or `timeout` (times `patience()`) passes.
    pub fn ping_until(&self, ip: &str, timeout: Duration) -> bool {
        let (start, timeout) = (Instant::now(), timeout * crate::patience());
        while start.elapsed() < timeout {
            if self.ns.exec(&["ping", "-c", "1", "-W", "1", ip]).is_ok() {
                return true;
            }
        }
        false
    }

    /// Whether `ip` answers a ping within 10 s. Positive checks use this: one
    /// lost reply on a loaded 2-core machine must not fail a test.
    pub fn reaches(&self, ip: &str) -> bool {
        self.ping_until(ip, Duration::from_secs(10))
    }

    /// Runs iperf3 TCP for `secs` seconds to `server` (which must reach us);
    /// returns (bytes received, bits per second) as the receiver counted them.
    pub fn tcp_to(&self, server: &Vm, secs: u32) -> Result<(u64, f64)> {
        let _listener = server.ns.spawn(&["iperf3", "-s", "-1"])?;
        let listening =
            || server.ns.exec(&["ss", "-ltnH", "sport", "= :5201"]).is_ok_and(|o| !o.trim().is_empty());
        if !crate::wait_until(Duration::from_secs(5), listening) {
            bail!("iperf3 -s did not listen on port 5201 within 5 s");
        }
        let out = self.exec(&["iperf3", "-c", &server.port.ip, "-t", &secs.to_string(), "-J"])?;
        let v: Value = serde_json::from_str(&out).context("iperf3 -J output")?;
        let sum = &v["end"]["sum_received"];
        let bytes = sum["bytes"].as_u64().context("iperf3 reported no bytes")?;
        Ok((bytes, sum["bits_per_second"].as_f64().unwrap_or(0.0)))
    }

    /// Assigns the port's fixed IP statically (/24).
    pub fn set_static_ip(&self) -> Result<()> {
        self.ns.exec(&["ip", "addr", "add", &format!("{}/24", self.port.ip), "dev", "eth0"]).map(drop)
    }

    /// Runs a DHCP client (busybox udhcpc); returns the address it was leased.
    pub fn dhcp(&self, script: &Path) -> Result<String> {
        let s = script.to_str().context("script path")?;
        let out = self
            .ns
            .exec(&["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "8", "-T", "1", "-s", s])?;
        // The script prints the bound address (udhcpc itself logs to stderr).
        out.lines()
            .find_map(|l| l.strip_prefix("bound "))
            .map(|ip| ip.trim().to_string())
            .with_context(|| format!("udhcpc got no lease: {out}"))
    }
}

/// A running agent; stopped (SIGTERM) on drop. Its node removes its pins.
pub struct AgentProc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl AgentProc {
    fn spawn(ns: &Netns, bin: &Path, config: &Path, log: &Path) -> Result<Self> {
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg(bin)
            .args(["agent", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting datapath agent")?;
        Ok(Self { child: Some(child), log: log.into() })
    }

    /// Sends `signal` and waits for the process to exit.
    pub fn stop(&mut self, signal: i32) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, signal) };
            child.wait().context("waiting for the agent to exit")?;
        }
        Ok(())
    }

    /// The agent's process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the agent process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // Only the process: its pins outlive it, as they do in production.
        let _ = self.stop(libc::SIGTERM);
    }
}

/// One node: a namespace with uplink `eth2` on the physical network.
pub struct Node {
    pub name: String,
    pub ns: Netns,
    pub config: PathBuf,
    pub agent: Option<AgentProc>,
    /// The node's way to the message bus, when its agent takes its ports from neutron-server.
    pub bus: Option<crate::neutron::BusProxy>,
}

impl Node {
    /// Runs `datapath agent --config .. --cleanup` in the node.
    pub fn cleanup(&self) -> Result<()> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.ns.path().display()))
            .arg("--")
            .arg(datapath_bin())
            .args(["agent", "--cleanup", "--config"])
            .arg(&self.config)
            .output()
            .context("running datapath agent --cleanup")?;
        if !out.status.success() {
            bail!("--cleanup failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Stop the agent, then remove what it left, while the namespace still exists.
        self.agent.take();
        if let Err(e) = self.cleanup() {
            eprintln!("warning: cleaning up {}: {e:#}", self.name);
        }
    }
}

/// dnsmasq serving one network from a `qdhcp-` style namespace.
pub struct Dhcp {
    pub ns: Netns,
    pub port: PortSpec,
    child: Child,
}

impl Drop for Dhcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole scenario.
pub struct Cluster {
    // Drop order matters: agents (in nodes) and dnsmasq go before namespaces and pins.
    pub vms: Vec<Vm>,
    pub dhcp: Vec<Dhcp>,
    pub nodes: Vec<Node>,
    pub phys: Netns,
    pub pins: PinDir,
    pub dir: PathBuf,
    pub bindings: PathBuf,
}

impl Cluster {
    /// `n` nodes on one physical network; bindings start empty.
    pub fn new(tag: &str, n: usize) -> Result<Self> {
        Self::build(tag, n, false)
    }

    /// Like `new`, plus an underlay: a second bridge `ul0`, each node's `eth1`
    /// on it with VTEP address `vtep_ip(i)`, and tunnels in every agent config.
    pub fn with_tunnels(tag: &str, n: usize) -> Result<Self> {
        Self::build(tag, n, true)
    }

    fn build(tag: &str, n: usize, tunnels: bool) -> Result<Self> {
        crate::require_root();
        let phys = Netns::new(&format!("{tag}-phys"))?;
        phys.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        phys.exec(&["ip", "link", "set", "br0", "up"])?;
        if tunnels {
            phys.exec(&["ip", "link", "add", "ul0", "type", "bridge"])?;
            phys.exec(&["ip", "link", "set", "ul0", "up"])?;
        }
        let pins = PinDir::new()?;
        let dir = std::env::temp_dir().join(format!("dpt-{}", phys.name()));
        fs::create_dir_all(&dir)?;
        let bindings = dir.join("bindings.json");
        let mut cluster =
            Self { vms: Vec::new(), dhcp: Vec::new(), nodes: Vec::new(), phys, pins, dir, bindings };
        cluster.write_bindings(&json!({"networks": [], "ports": []}))?;
        for i in 0..n {
            cluster.add_node(&format!("node{i}"), tunnels.then(|| vtep_ip(i)))?;
        }
        Ok(cluster)
    }

    /// Plugs a new namespace into the underlay as `eth1` with `ip`/24 (peer `ul-<tag>` on `ul0`).
    pub fn underlay_port(&self, ns: &Netns, tag: &str, ip: &str) -> Result<()> {
        let peer = format!("ul-{tag}");
        ns.exec(&[
            "ip",
            "link",
            "add",
            "eth1",
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            self.phys.name(),
        ])?;
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth1"])?;
        ns.exec(&["ip", "link", "set", "eth1", "up"])?;
        self.phys.exec(&["ip", "link", "set", &peer, "master", "ul0", "up"])?;
        Ok(())
    }

    fn add_node(&mut self, name: &str, vtep: Option<String>) -> Result<()> {
        let ns = Netns::new(name)?;
        let up = format!("up-{name}");
        ns.exec(&[
            "ip",
            "link",
            "add",
            "eth2",
            "type",
            "veth",
            "peer",
            "name",
            &up,
            "netns",
            self.phys.name(),
        ])?;
        ns.exec(&["ip", "link", "set", "eth2", "up"])?;
        self.phys.exec(&["ip", "link", "set", &up, "master", "br0", "up"])?;
        // A wire carries the tags in the frame: the switch port writes them in (no tx
        // VLAN offload towards the node), so that an XDP stage on eth2 sees them.
        self.phys.exec(&["ethtool", "-K", &up, "txvlan", "off"])?;
        let mut tunnel_cfg = String::new();
        if let Some(ip) = &vtep {
            self.underlay_port(&ns, name, ip)?;
            tunnel_cfg = format!("local_ip = \"{ip}\"\ntunnel_types = [\"vxlan\"]\n");
        }
        let config = self.dir.join(format!("{name}.toml"));
        let pin_path = self.pins.path().join(name);
        fs::write(
            &config,
            tunnel_cfg
                + &format!(
                    "host = \"{name}\"\nphysical_interface_mappings = [\"{PHYSNET}:eth2\"]\nbindings = \"{}\"\npin_path = \"{}\"\ncontrol_socket = \"{}\"\n",
                    self.bindings.display(),
                    pin_path.display(),
                    self.dir.join(format!("{name}.sock")).display()
                ),
        )?;
        self.nodes.push(Node { name: name.into(), ns, config, agent: None, bus: None });
        Ok(())
    }

    /// Makes every node's agent take its ports from neutron-server at
    /// `transport_url` (on the host's loopback, reached through a `BusProxy`)
    /// instead of the bindings file, reporting every `report_interval` seconds.
    pub fn use_neutron(&mut self, transport_url: &str, report_interval: u32) -> Result<()> {
        let line = format!("bindings = \"{}\"", self.bindings.display());
        for n in &mut self.nodes {
            let text = fs::read_to_string(&n.config)?;
            let text = text.replace(
                &line,
                &format!("transport_url = \"{transport_url}\"\nreport_interval = {report_interval}"),
            );
            fs::write(&n.config, text)?;
            n.bus = Some(crate::neutron::BusProxy::start(&n.ns)?);
        }
        Ok(())
    }

    /// Adds `line` to `node`'s agent config (for options the cluster leaves at their defaults).
    pub fn config_line(&self, node: &str, line: &str) -> Result<()> {
        let path = &self.node(node).config;
        let mut text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        text.push_str(line);
        text.push('\n');
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Runs `datapath ARGS --config <node's config>` inside `node`; returns (success, stdout, stderr).
    pub fn cli(&self, node: &str, args: &[&str]) -> Result<(bool, String, String)> {
        let n = self.node(node);
        let out = Command::new("nsenter")
            .arg(format!("--net={}", n.ns.path().display()))
            .arg("--")
            .arg(datapath_bin())
            .args(args)
            .arg("--config")
            .arg(&n.config)
            .output()
            .context("running the datapath CLI")?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ok((out.status.success(), text(&out.stdout), text(&out.stderr)))
    }

    /// `datapath ARGS --json` inside `node`, parsed; fails with the CLI's error.
    pub fn cli_json(&self, node: &str, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let (ok, out, err) = self.cli(node, &all)?;
        if !ok {
            bail!("datapath {args:?} failed: {err}");
        }
        serde_json::from_str(&out).with_context(|| format!("datapath {args:?} printed no JSON: {out}"))
    }

    /// Waits until `node`'s agent answers on its control socket, which it
    /// serves once its first reconcile is done (maps written, programs
    /// attached). On the 6.1 guest the verifier alone takes seconds.
    pub fn wait_agent(&self, node: &str, timeout: std::time::Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.cli_json(node, &["status"]) {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => {
                    return Err(e.context(format!("{node}'s agent does not answer after {timeout:?}")));
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }

    /// The value of the series `series` (name and labels, as printed) in
    /// `datapath metrics` of `node`; None when the series is not there.
    pub fn metric(&self, node: &str, series: &str) -> Result<Option<f64>> {
        let (ok, text, err) = self.cli(node, &["metrics"])?;
        if !ok {
            bail!("datapath metrics on {node}: {err}");
        }
        Ok(text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()))
    }

    /// `node`'s `datapath ports` row of `device`, if it lists one.
    pub fn port_row(&self, node: &str, device: &str) -> Option<Value> {
        let ports = self.cli_json(node, &["ports"]).ok()?;
        ports["ports"].as_array()?.iter().find(|r| r["device"] == device).cloned()
    }

    /// Whether `node`'s agent has programmed `device` (its row says up).
    pub fn port_is_up(&self, node: &str, device: &str) -> bool {
        self.port_row(node, device).is_some_and(|r| r["state"] == "up")
    }

    /// Whether `node` has learned `mac` (from the uplink or a tunnel), and on which device.
    pub fn learned_on(&self, node: &str, mac: &str) -> Option<String> {
        let fdb = self.cli_json(node, &["fdb"]).ok()?;
        fdb["entries"]
            .as_array()?
            .iter()
            .find(|e| e["mac"] == mac && e["type"] == "learned")
            .and_then(|e| e["device"].as_str().map(str::to_owned))
    }

    /// Adds TOML lines to `node`'s agent config (before its agent starts).
    pub fn append_config(&self, node: &str, toml: &str) -> Result<()> {
        let path = &self.node(node).config;
        let mut text = fs::read_to_string(path)?;
        text.push_str(toml);
        text.push('\n');
        fs::write(path, text)?;
        Ok(())
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Replaces the bindings file atomically (write + rename), as a sync tool would.
    pub fn write_bindings(&self, doc: &Value) -> Result<()> {
        self.write_bindings_text(&serde_json::to_string_pretty(doc)?)
    }

    /// Replaces the bindings file with raw text (to test bad input).
    pub fn write_bindings_text(&self, text: &str) -> Result<()> {
        let tmp = self.bindings.with_extension("tmp");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &self.bindings)?;
        Ok(())
    }

    /// Starts the agent of `node`.
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        self.start_agent_with(node, &datapath_bin())
    }

    /// Starts the agent of `node` from the binary `bin` (an upgrade, say).
    pub fn start_agent_with(&mut self, node: &str, bin: &Path) -> Result<()> {
        let log = self.dir.join(format!("{node}.log"));
        let n = self.node_mut(node);
        n.agent = Some(AgentProc::spawn(&n.ns, bin, &n.config, &log)?);
        Ok(())
    }

    /// Creates the VM of `port` on `node` (veth: port tap name on the node, eth0 in the VM).
    pub fn add_vm(&mut self, node: &str, port: PortSpec) -> Result<usize> {
        let ns = Netns::new("vm")?;
        let dev = port.device();
        let n = self.node(node);
        n.ns.exec(&["ip", "link", "add", &dev, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
        n.ns.exec(&["ip", "link", "set", &dev, "up"])?;
        ns.exec(&["ip", "link", "set", "eth0", "address", &port.mac])?;
        ns.exec(&["ip", "link", "set", "eth0", "up"])?;
        self.vms.push(Vm { ns, port });
        Ok(self.vms.len() - 1)
    }

    /// Creates a DHCP namespace for `port` (owner network:dhcp) on `node`, running
    /// dnsmasq with a Neutron-style static hosts file for `hosts` (mac, ip); with
    /// `mtu`, it advertises that MTU (option 26), as Neutron does for VXLAN networks.
    pub fn add_dhcp(
        &mut self,
        node: &str,
        port: PortSpec,
        hosts: &[(&str, &str)],
        mtu: Option<u32>,
    ) -> Result<()> {
        let ns = Netns::new("qdhcp")?;
        let dev = port.device();
        let inner = format!("ns-{}", &port.id[..11]);
        let n = self.node(node);
        n.ns.exec(&["ip", "link", "add", &dev, "type", "veth", "peer", "name", &inner, "netns", ns.name()])?;
        n.ns.exec(&["ip", "link", "set", &dev, "up"])?;
        ns.exec(&["ip", "link", "set", &inner, "address", &port.mac])?;
        ns.exec(&["ip", "link", "set", &inner, "up"])?;
        ns.exec(&["ip", "addr", "add", &format!("{}/24", port.ip), "dev", &inner])?;
        let dir = self.dir.join(format!("dhcp-{}", &port.network_id[..8]));
        fs::create_dir_all(&dir)?;
        let hosts_file = dir.join("host");
        let lines: String = hosts
            .iter()
            .map(|(mac, ip)| format!("{mac},host-{}.openstacklocal,{ip}\n", ip.replace('.', "-")))
            .collect();
        fs::write(&hosts_file, lines)?;
        let subnet = format!("{}.0", port.ip.rsplit_once('.').context("IPv4 DHCP address")?.0);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                "dnsmasq",
                "--keep-in-foreground",
                "--no-hosts",
                "--no-resolv",
            ])
            .args(["--strict-order", "--bind-interfaces", "--port=0", "--except-interface=lo"])
            .arg(format!("--interface={inner}"))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--dhcp-hostsfile={}", hosts_file.display()))
            .arg("--leasefile-ro")
            .arg(format!("--dhcp-range=set:tag0,{subnet},static,120s"))
            .args(["--dhcp-lease-max=256", "--conf-file=/dev/null", "--domain=openstacklocal"])
            .args(mtu.map(|m| format!("--dhcp-option-force=tag:tag0,option:mtu,{m}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq")?;
        self.dhcp.push(Dhcp { ns, port, child });
        Ok(())
    }

    /// A udhcpc script that prints the bound address and configures it.
    pub fn udhcpc_script(&self) -> Result<PathBuf> {
        let path = self.dir.join("udhcpc.sh");
        fs::write(
            &path,
            "#!/bin/sh\nif [ \"$1\" = bound ]; then\n  ip addr add \"$ip/${mask:-24}\" dev \"$interface\"\n  echo \"bound $ip\"\nfi\n",
        )?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nodes (agents, then --cleanup) before their namespaces and the pin dir go.
        self.vms.clear();
        self.dhcp.clear();
        self.nodes.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The VTEP address of node `i` in a cluster with tunnels.
pub fn vtep_ip(i: usize) -> String {
    format!("192.0.2.{}", 10 + i)
}

/// Neutron's agent list for `n` nodes with tunnels, as `GET /v2.0/agents` returns it.
pub fn agents_json(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"host": format!("node{i}"), "agent_type": "Open vSwitch agent",
                   "configurations": {"tunneling_ip": vtep_ip(i)}})
        })
        .collect()
}
