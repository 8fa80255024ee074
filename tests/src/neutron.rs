//! A real neutron-server per test: its own MariaDB database and RabbitMQ vhost,
//! `neutron-rpc-server` and the API under gunicorn, configured with our ML2
//! mechanism driver beside l2population (docs/neutron.md). The venv comes from
//! `cargo xtask setup` (target/neutron/venv).
//!
//! On drop the servers are stopped (SIGTERM to their process groups, SIGKILL
//! after a grace period) and the database, the vhost and their users dropped.

mod agent;
mod bus;
mod rest;
mod services;

/// Starts RabbitMQ and MariaDB if they are down (machine services, never stopped).
pub fn ensure_services() -> Result<()> {
    services::ensure_running()
}

use std::{
    fs,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub use agent::{AGENT_TYPE, publish, report_state};
use anyhow::{Context, Result, bail};
pub use bus::BusProxy;
pub use rest::{Api, PROJECT, Provider};
use serde_json::Value;

use crate::TempDir;

/// Physical networks with VLAN ranges: `default` (VLANs 1000-2000) and `unmapped`,
/// which the tests' agents do not map (provider VLANs only).
pub const VLAN_RANGES: &str = "default:1000:2000,unmapped";

/// How long the servers may take to answer after start (2.5 to 6 s when idle;
/// much more when the machine's two cores are busy compiling).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a graceful stop may take before SIGKILL (about 5 s for the RPC server).
const STOP_GRACE: Duration = Duration::from_secs(8);

/// The venv with neutron and our driver: `DATAPATH_NEUTRON_VENV` (set by
/// `cargo xtask test`), or target/neutron/venv.
pub fn venv() -> PathBuf {
    if let Some(p) = std::env::var_os("DATAPATH_NEUTRON_VENV") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").join("target/neutron/venv")
}

/// One neutron-server (RPC server + API) with its own database and vhost.
pub struct Neutron {
    name: String,
    dir: TempDir,
    port: u16,
    api: Api,
    rpc_server: Option<Child>,
    api_server: Option<Child>,
    db_created: bool,
    vhost_created: bool,
}

impl Neutron {
    /// Starts RabbitMQ and MariaDB if needed, then a neutron-server of its own, and
    /// waits until its API answers and its RPC worker consumes.
    pub fn start() -> Result<Self> {
        let venv = venv();
        let stamp = venv.join("datapath-stamp");
        let stamp = fs::read(&stamp).with_context(|| {
            format!(
                "no neutron venv at {} ({} is missing): run the tests through \
                 `cargo xtask test --layer neutron`, or `cargo xtask setup` first",
                venv.display(),
                stamp.display()
            )
        })?;
        services::ensure_running()?;
        let name = format!("{}{}_{}", services::PREFIX, std::process::id(), crate::next_id());
        let dir = TempDir::new("neutron")?;
        let port = free_port()?;
        let mut me = Self {
            name,
            dir,
            port,
            api: Api::new(format!("http://127.0.0.1:{port}/v2.0")),
            rpc_server: None,
            api_server: None,
            db_created: false,
            vhost_created: false,
        };
        fs::create_dir_all(me.logs_dir()).context("creating the log directory")?;
        fs::create_dir_all(me.dir.path().join("state/lock")).context("creating the state directory")?;
        let template = services::template(&venv, fnv1a(&stamp), me.dir.path())?;
        let name = me.name.clone();
        // The vhost's three rabbitmqctl runs (an Erlang VM each) overlap the copy.
        let vhost = std::thread::spawn(move || create_vhost(&name));
        // Marked before they exist: a creation that fails half-way is still removed on drop.
        me.db_created = true;
        let db = create_database(&me.name, &template);
        me.vhost_created = true;
        let vhost = vhost.join().map_err(|_| anyhow::anyhow!("the vhost thread panicked"))?;
        db?;
        vhost?;
        me.write_config(&venv)?;
        me.spawn_servers(&venv)?;
        me.wait_ready()?;
        Ok(me)
    }

    /// The REST API client.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// The `transport_url` of this server's vhost, for agents' config.
    pub fn transport_url(&self) -> String {
        format!("rabbit://{0}:{0}@127.0.0.1:5672/{0}", self.name)
    }

    /// The same broker and vhost as an AMQP URI.
    pub fn amqp_url(&self) -> String {
        format!("amqp://{0}:{0}@127.0.0.1:5672/{0}", self.name)
    }

    /// Reports an agent of our type alive on `host` (see [`report_state`]).
    pub fn report_agent(&self, host: &str, configurations: Value) -> Result<()> {
        report_state(&self.amqp_url(), host, configurations)
    }

    /// The server logs: RPC server, API, and the processes' own output.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        ["rpc-server.log", "gunicorn.log", "rpc-server.out", "api.out"]
            .iter()
            .map(|f| self.logs_dir().join(f))
            .collect()
    }

    /// Every server log, concatenated.
    pub fn logs(&self) -> String {
        self.log_paths().iter().filter_map(|p| fs::read_to_string(p).ok()).collect()
    }

    /// The last `n` lines of every server log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let mut out = String::new();
        for path in self.log_paths() {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} (last {n} lines)\n", path.display()));
            for line in &lines[lines.len().saturating_sub(n)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn logs_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn write_config(&self, venv: &Path) -> Result<()> {
        let (dir, name) = (self.dir.path().display(), &self.name);
        let neutron_conf = format!(
            "[DEFAULT]\n\
             host = {host}\n\
             core_plugin = ml2\n\
             service_plugins =\n\
             auth_strategy = noauth\n\
             allow_overlapping_ips = true\n\
             transport_url = {transport}\n\
             # One RPC worker that also takes the agents' state reports: the smallest footprint.\n\
             rpc_workers = 1\n\
             rpc_state_report_workers = 0\n\
             enable_traditional_dhcp = false\n\
             notify_nova_on_port_status_changes = false\n\
             notify_nova_on_port_data_changes = false\n\
             # The binding decisions are logged at debug level.\n\
             debug = true\n\
             log_dir = {dir}/logs\n\
             state_path = {dir}/state\n\
             api_paste_config = {paste}\n\
             \n\
             [database]\n\
             connection = mysql+pymysql://{name}:{name}@127.0.0.1/{name}?charset=utf8\n\
             \n\
             [oslo_concurrency]\n\
             lock_path = {dir}/state/lock\n",
            host = name.replace('_', "-"),
            transport = self.transport_url(),
            paste = venv.join("etc/neutron/api-paste.ini").display(),
        );
        let ml2_conf = format!(
            "[ml2]\n\
             type_drivers = flat,vlan,vxlan\n\
             tenant_network_types = vxlan\n\
             mechanism_drivers = datapath,l2population\n\
             extension_drivers = port_security\n\
             \n\
             [ml2_type_flat]\n\
             flat_networks = *\n\
             \n\
             [ml2_type_vlan]\n\
             network_vlan_ranges = {VLAN_RANGES}\n\
             \n\
             [ml2_type_vxlan]\n\
             vni_ranges = 1:1000\n\
             \n\
             [securitygroup]\n\
             enable_security_group = true\n"
        );
        // Neutron's WSGI app parses sys.argv with oslo.config, which rejects gunicorn's
        // own arguments: hide them; the config comes from OS_NEUTRON_CONFIG_*.
        let shim = "import sys\nsys.argv = sys.argv[:1]\nfrom neutron.wsgi.api import application  # noqa: E402,F401\n";
        for (file, text) in
            [("neutron.conf", neutron_conf.as_str()), ("ml2_conf.ini", &ml2_conf), ("neutron_wsgi.py", shim)]
        {
            let path = self.dir.path().join(file);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    fn spawn_servers(&mut self, venv: &Path) -> Result<()> {
        let dir = self.dir.path().to_path_buf();
        self.rpc_server = Some(self.spawn(rpc_server(venv), "rpc-server.out")?);
        let port = self.port;
        let mut api = Command::new(venv.join("bin/gunicorn"));
        api.arg("neutron_wsgi:application")
            .env("OS_NEUTRON_CONFIG_DIR", &dir)
            .env("OS_NEUTRON_CONFIG_FILES", "neutron.conf;ml2_conf.ini")
            // --graceful-timeout: no request is in flight when a test drops the server,
            // and gunicorn's default of 30 s would only delay the stop.
            .env(
                "GUNICORN_CMD_ARGS",
                format!(
                    "--workers 1 --threads 4 --timeout 120 --graceful-timeout 3 --bind 127.0.0.1:{port} --chdir {}",
                    dir.display()
                ),
            );
        self.api_server = Some(self.spawn(api, "api.out")?);
        Ok(())
    }

    /// Starts `cmd` in the instance directory, in a process group of its own (so that
    /// its workers can be stopped with it), with its output in `logs/<out>`.
    fn spawn(&self, mut cmd: Command, out: &str) -> Result<Child> {
        let path = self.logs_dir().join(out);
        let log = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating a log descriptor")?)
            .stderr(log)
            .process_group(0);
        cmd.spawn().with_context(|| format!("starting {cmd:?}"))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        let rpc_log = self.logs_dir().join("rpc-server.log");
        let (mut api_up, mut rpc_up) = (false, false);
        while !(api_up && rpc_up) {
            let exited = |c: &mut Option<Child>| c.as_mut().and_then(|c| c.try_wait().ok().flatten());
            let died = [
                ("neutron-rpc-server", exited(&mut self.rpc_server)),
                ("gunicorn", exited(&mut self.api_server)),
            ];
            if let Some((what, Some(status))) = died.into_iter().find(|(_, s)| s.is_some()) {
                bail!("{what} exited during start-up ({status}):\n{}", self.log_tail(30));
            }
            if start.elapsed() > START_TIMEOUT {
                bail!(
                    "neutron not ready after {START_TIMEOUT:?} (API answering: {api_up}, RPC worker started: {rpc_up}):\n{}",
                    self.log_tail(30)
                );
            }
            api_up = api_up || self.api.request("GET", "/networks", None).is_ok();
            rpc_up =
                rpc_up || fs::read_to_string(&rpc_log).is_ok_and(|l| l.contains("RpcWorker start finished"));
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "neutron {} ready in {:.1}s at {}",
            self.name,
            start.elapsed().as_secs_f64(),
            self.api.base()
        );
        Ok(())
    }

    /// Has the broker close every connection of this test's vhost, neutron-server's
    /// included, as a RabbitMQ restart does to its clients: their auto-delete queues go,
    /// and everyone reconnects and declares them again. Returns how many it closed.
    pub fn close_bus_connections(&self) -> Result<usize> {
        let out = services::rabbitmqctl(&[
            "close_all_connections",
            "--vhost",
            &self.name,
            "datapath test: the broker drops its clients",
        ])?;
        // "Closed N connections"
        out.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("rabbitmqctl close_all_connections said {out:?}"))
    }

    /// Stops the RPC server (the agents' side of neutron-server); the API stays up.
    pub fn stop_rpc_server(&mut self) {
        if let Some(mut c) = self.rpc_server.take() {
            signal_group(&c, libc::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            signal_group(&c, libc::SIGKILL);
            let _ = c.wait();
        }
    }

    /// Starts the RPC server again and waits until its worker consumes.
    pub fn start_rpc_server(&mut self) -> Result<()> {
        let log = self.logs_dir().join("rpc-server.log");
        let count =
            || fs::read_to_string(&log).map(|l| l.matches("RpcWorker start finished").count()).unwrap_or(0);
        let before = count();
        self.rpc_server =
            Some(self.spawn(rpc_server(&venv()), &format!("rpc-server-{}.out", crate::next_id()))?);
        let start = Instant::now();
        while count() == before {
            if start.elapsed() > START_TIMEOUT {
                bail!("the RPC server did not start again within {START_TIMEOUT:?}:\n{}", self.log_tail(30));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn stop_servers(&mut self) {
        let mut children: Vec<Child> =
            [self.rpc_server.take(), self.api_server.take()].into_iter().flatten().collect();
        for c in &children {
            signal_group(c, libc::SIGTERM);
        }
        let start = Instant::now();
        let deadline = start + STOP_GRACE;
        while Instant::now() < deadline && children.iter_mut().any(|c| matches!(c.try_wait(), Ok(None))) {
            std::thread::sleep(Duration::from_millis(100));
        }
        for c in &mut children {
            // Also after a graceful exit: a worker the master did not wait for must not linger.
            signal_group(c, libc::SIGKILL);
            let _ = c.wait();
        }
        eprintln!("neutron {} stopped in {:.1}s", self.name, start.elapsed().as_secs_f64());
    }
}

impl Drop for Neutron {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("neutron {} logs at the failure:\n{}", self.name, self.log_tail(40));
        }
        self.stop_servers();
        let name = &self.name;
        if self.db_created
            && let Err(e) = services::mysql(&format!(
                "DROP DATABASE IF EXISTS `{name}`; DROP USER IF EXISTS '{name}'@'localhost'"
            ))
        {
            eprintln!("warning: dropping the database {name}: {e:#}");
        }
        if self.vhost_created {
            for args in [["delete_vhost", name.as_str()], ["delete_user", name.as_str()]] {
                if let Err(e) = services::rabbitmqctl(&args) {
                    eprintln!("warning: rabbitmqctl {}: {e:#}", args.join(" "));
                }
            }
        }
    }
}

/// neutron-rpc-server as the instance runs it (from its directory, logging to rpc-server.log).
fn rpc_server(venv: &Path) -> Command {
    let mut rpc = Command::new(venv.join("bin/neutron-rpc-server"));
    rpc.args([
        "--config-file",
        "neutron.conf",
        "--config-file",
        "ml2_conf.ini",
        "--log-file",
        "rpc-server.log",
    ]);
    rpc
}

/// Sends `sig` to the process group `child` leads.
fn signal_group(child: &Child, sig: libc::c_int) {
    let pgid = child.id() as libc::pid_t;
    // SAFETY: kill has no memory preconditions; the group is the one we created for it.
    unsafe { libc::kill(-pgid, sig) };
}

fn create_database(name: &str, template: &str) -> Result<()> {
    services::mysql(&format!(
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4; \
         CREATE USER '{name}'@'localhost' IDENTIFIED BY '{name}'; \
         GRANT ALL ON `{name}`.* TO '{name}'@'localhost'"
    ))?;
    services::copy_template(template, name)
}

fn create_vhost(name: &str) -> Result<()> {
    services::rabbitmqctl(&["add_vhost", name])?;
    services::rabbitmqctl(&["add_user", name, name])?;
    services::rabbitmqctl(&["set_permissions", "-p", name, name, ".*", ".*", ".*"])?;
    Ok(())
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr().context("reading the port of a bound socket")?.port())
}

/// FNV-1a: a stable short key for the venv's contents (the template database's name).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
