//! The agent: reconciles the kernel with the bindings and the devices, on
//! every binding change, link event and periodic tick, until told to stop.
//! Stopping leaves the datapath forwarding (links and maps are pinned).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{MissedTickBehavior, interval, sleep},
};

use crate::{
    api::Request,
    attach::{self, Attacher},
    config::Source as SourceConfig,
    config::{Config, XdpChoice},
    conntrack::{self, Recheck, Swept},
    control::{self, Pending},
    desired::{Derived, Engine, Scope},
    features, learned,
    loader::{self, Datapath},
    metrics, migrate,
    monitor::Monitor,
    netlink::{self, Devices, LinkEvents},
    neutron::l2agent::NeutronSource,
    source::{BindingSource, Source},
    sync, tunnel,
};

/// How often the bindings file is checked for changes.
const BINDINGS_POLL: Duration = Duration::from_millis(200);
/// A full re-sync even without events, to repair anything changed behind our back.
const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// Link events come in bursts (200 VMs booting): wait this long for the rest.
const EVENT_SETTLE: Duration = Duration::from_millis(20);

/// What the last reconciliation found, for status reports.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The engine's state as one derivation, built when a request needs it.
    pub derived: Derived,
    /// Whether `derived` lags behind the engine.
    pub stale: bool,
    /// Map entries or attachments that failed, with the reason.
    pub errors: Vec<String>,
    /// Why the bindings file is not in force, if it is not.
    pub bindings_error: Option<String>,
    /// Reconciliations done since start.
    pub syncs: u64,
}

/// The running agent's state.
pub struct Agent {
    pub(crate) cfg: Config,
    pub(crate) dp: Datapath,
    pub(crate) engine: Engine,
    pub(crate) attacher: Attacher,
    pub(crate) source: Source,
    /// What the last reconciliation found.
    pub(crate) status: Status,
    /// What the kernel offers, as probed at start.
    pub(crate) features: features::Features,
    /// Whether the agent-owned maps hold exactly the engine's state: true
    /// after a sync without map errors, false at start and after any failure.
    maps_known: bool,
    /// Another layout version's pins this agent is taking over, until every device runs its programs.
    migration: Option<Migration>,
    /// The namespace's devices: listed at start and on verify, kept by link events in between.
    devices: Option<Devices>,
    /// Devices that came, went or changed since the last reconcile.
    moved: BTreeSet<String>,
    /// Whether the last attachment pass left a device without its program.
    attach_failed: bool,
    /// What the metrics keep between scrapes.
    pub(crate) telemetry: metrics::Telemetry,
    /// The monitor's listeners and ring buffer (taken out while it calls back into the agent).
    pub(crate) monitor: Option<Monitor>,
}

/// An upgrade or downgrade across map layouts in progress (see `migrate`).
struct Migration {
    /// The other versions' pin directories, removed once the swap is done.
    dirs: Vec<PathBuf>,
    /// What they learned from the wire, restored once our networks exist.
    learned: Vec<migrate::Learned>,
    /// The connections they track, restored before our programs take over.
    connections: Vec<(datapath_common::CtKey, datapath_common::CtEntry)>,
}

impl Agent {
    /// Loads (or adopts) the datapath under the config's pin path.
    pub fn start(cfg: Config) -> Result<Self> {
        ensure_bpffs(&cfg.pin_path)?;
        let foreign = migrate::foreign_versions(&cfg.pin_path)?;
        let dp = Datapath::load_pinned(&cfg.pin_path)
            .with_context(|| format!("loading the datapath pinned at {}", cfg.pin_path.display()))?;
        let migration = take_over(&foreign, dp.pin_dir().context("the datapath is pinned")?)?;
        let current = sync::read_state(&dp.maps)?;
        if !current.ports.is_empty() {
            log::info!(
                "adopting pinned state: {} ports, {} networks",
                current.ports.len(),
                current.networks.len()
            );
        }
        let features = features::probe(cfg.tc_hook)?;
        log::info!("kernel {}: programs attach with {}", features.kernel, features.describe_hook());
        let attacher = Attacher::new(features.hook, cfg.xdp, dp.pin_dir())?.with_underlay(cfg.tunnel_ip());
        let source = match &cfg.source {
            SourceConfig::File(path) => Source::File(BindingSource::new(path.clone())),
            SourceConfig::Neutron(opts) => {
                log::info!("ports come from neutron-server at {}", opts.display_url());
                Source::Neutron(NeutronSource::start(&cfg, opts, !current.ports.is_empty())?)
            }
        };
        let mut dp = dp;
        let monitor = Monitor::new(dp.events.take())?;
        // A previous agent's listeners are gone: the programs report nothing until one comes.
        if let Err(e) = dp.maps.monitor.set(0, datapath_common::MonitorConfig { flags: 0, ifindex: 0 }, 0) {
            log::warn!("clearing MONITOR: {e}");
        }
        Ok(Self {
            cfg,
            dp,
            engine: Engine::recover(&current),
            attacher,
            source,
            status: Status::default(),
            features,
            maps_known: false,
            migration,
            devices: None,
            moved: BTreeSet::new(),
            attach_failed: false,
            telemetry: metrics::Telemetry::default(),
            monitor: Some(monitor),
        })
    }

    /// One reconciliation. With `verify`, the maps are read back and any
    /// drift repaired; otherwise the diff is taken against what the agent last
    /// applied, so a one-port change costs a few map writes, not a read of
    /// every map. Without good bindings nothing is touched: the kernel keeps
    /// what it has.
    pub fn reconcile(&mut self, verify: bool) -> Result<()> {
        let started = Instant::now();
        self.source.poll();
        let bindings_error = self.source.error();
        // A fresh listing has no record of what moved: everything is looked at.
        let (mut devices, mut listed) = match self.devices.take() {
            Some(d) if !verify => (d, false),
            _ => (netlink::list_devices()?, true),
        };
        if self.source.good().is_none() {
            self.source.observe_devices(&devices);
            self.status.bindings_error = bindings_error;
            self.devices = Some(devices);
            return Ok(());
        };
        if let Some(ip) = self.cfg.tunnel_ip() {
            match tunnel::ensure(&devices, ip) {
                Ok(true) => (devices, listed) = (netlink::list_devices()?, true),
                Ok(false) => {}
                Err(e) => log::error!("creating the VXLAN device: {e:#}"),
            }
        }
        // Nothing fallible from here to the update: what changed is taken once.
        let changed = self.source.take_changed();
        let moved = std::mem::take(&mut self.moved);
        let full = verify || listed || changed.all || self.status.syncs == 0;
        let scope =
            if full { Scope::Full } else { Scope::Changed { networks: &changed.networks, devices: &moved } };
        let catalog = self.source.good().context("the source lost its bindings")?;
        let change = self.engine.update(&self.cfg, catalog, &devices, scope);
        self.devices = Some(devices);
        let trusted = self.maps_known && !verify;
        // Until it has converged, the kernel's contents are unknown.
        self.maps_known = false;
        let done = if trusted {
            sync::apply_known(&mut self.dp.maps, &change.diff)
        } else {
            sync::converge(&mut self.dp.maps, self.engine.state())?
        };
        if done.changes > 0 {
            log::info!(
                "sync: {} map changes for {} networks{} in {:.1} ms",
                done.changes,
                change.networks,
                if trusted { "" } else { " (maps read back)" },
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
        self.maps_known = done.errors.is_empty();
        let mut errors = done.errors;
        if let Some(m) = &mut self.migration {
            // Before the programs swap, so that they find what the old ones learned.
            let n = migrate::restore_learned(&mut self.dp.maps, self.engine.state(), &m.learned);
            if !m.learned.is_empty() {
                log::info!("carried over {n} of {} learned MACs", m.learned.len());
            }
            m.learned.clear();
            let n = migrate::restore_connections(&mut self.dp.maps, &m.connections);
            if !m.connections.is_empty() {
                log::info!("carried over {n} of {} tracked connections", m.connections.len());
            }
            m.connections.clear();
        }
        // After the maps (and what a migration carried over): a connection is
        // cut once its port's new tables are in place.
        let recheck = if verify {
            Recheck::All
        } else if !change.policy_changed.is_empty() {
            Recheck::Ports(&change.policy_changed)
        } else {
            Recheck::None
        };
        if verify || !change.policy_changed.is_empty() {
            match conntrack::sweep(&mut self.dp.maps, self.engine.security(), recheck) {
                Ok(s) if s != Swept::default() => {
                    log::info!("connections: {} expired, {} cut by a policy change", s.expired, s.cut)
                }
                Ok(_) => {}
                Err(e) => errors.push(format!("sweeping the connection table: {e:#}")),
            }
        }
        // The attacher walks every device: only when a program changed, or to retry.
        let attach_errors = if full || change.attach_changed || self.attach_failed {
            self.attacher.reconcile(&mut self.dp, self.engine.attach(), verify)
        } else {
            Vec::new()
        };
        self.attach_failed = !attach_errors.is_empty();
        if attach_errors.is_empty()
            && let Some(m) = self.migration.take()
        {
            for dir in &m.dirs {
                match migrate::remove(dir) {
                    Ok(()) => {
                        log::info!("every device runs this build's programs: removed {}", dir.display())
                    }
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
        }
        errors.extend(attach_errors);
        for e in &errors {
            log::error!("{e}");
        }
        for (dev, report) in &change.reports {
            match report {
                Some(p) => log::info!("port {dev} {} ({}): {:?}", p.id, p.kind, p.state),
                None => log::info!("port {dev}: gone"),
            }
        }
        if full {
            self.source.observe(self.engine.port_reports());
        } else {
            self.source.observe_changes(&change.reports);
        }
        if bindings_error.is_none() {
            self.telemetry.bindings_last_good = Some(std::time::SystemTime::now());
        }
        self.telemetry.reconcile_seconds.observe(started.elapsed().as_secs_f64());
        self.status.errors = errors;
        self.status.bindings_error = bindings_error;
        self.status.syncs += 1;
        self.status.stale = true;
        Ok(())
    }

    fn age_learned(&mut self) {
        let live: BTreeSet<u32> = self.engine.state().networks.keys().copied().collect();
        match learned::age(&mut self.dp.maps, Duration::from_secs(self.cfg.mac_age_seconds), &live) {
            Ok(0) => {}
            Ok(n) => log::debug!("aged out {n} learned MACs"),
            Err(e) => log::warn!("aging learned MACs: {e:#}"),
        }
    }

    /// Runs until SIGTERM or SIGINT. The datapath stays in place afterwards.
    pub async fn run(mut self) -> Result<()> {
        let mut events = LinkEvents::open()?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut poll = interval(BINDINGS_POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut aging = interval(Duration::from_secs((self.cfg.mac_age_seconds / 4).clamp(1, 60)));
        aging.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_verify = Instant::now();
        let mut monitor_tick = interval(Duration::from_secs(1));
        monitor_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (tx, mut requests) = mpsc::channel::<Pending>(16);
        // Bound before the first reconcile: once a port forwards, its agent
        // answers (requests wait in the channel until the loop runs).
        let socket = control::bind(&self.cfg.control_socket)?;
        let metrics = match self.cfg.metrics_address {
            Some(addr) => {
                let listener = metrics::bind(addr).await?;
                let tx = tx.clone();
                Some(tokio::spawn(async move {
                    if let Err(e) = metrics::serve(listener, tx).await {
                        log::error!("metrics endpoint: {e:#}");
                    }
                }))
            }
            None => None,
        };
        let server = tokio::spawn(async move {
            if let Err(e) = control::serve(socket, tx).await {
                log::error!("control socket: {e:#}");
            }
        });
        self.reconcile(true)?;
        if self.cfg.xdp == XdpChoice::Native
            && let Some((device, why)) = self.attacher.xdp_failures().iter().next()
        {
            bail!("xdp = \"native\": {device} cannot run the XDP stage in its driver: {why}");
        }
        log::info!("agent for host {} running", self.cfg.host);
        loop {
            let due = last_verify.elapsed() >= RESYNC_EVERY;
            let (sync, verify) = tokio::select! {
                r = events.changed() => {
                    let mut links = r?;
                    sleep(EVENT_SETTLE).await;
                    // The rest of the burst, without waiting.
                    while let Some(more) = events.pending() {
                        let more = more?;
                        links.overrun |= more.overrun;
                        links.changes.extend(more.changes);
                    }
                    let changed = match (&mut self.devices, links.overrun) {
                        (Some(d), false) => {
                            let moved = links.apply(d);
                            let any = !moved.is_empty();
                            self.moved.extend(moved);
                            any
                        }
                        _ => {
                            self.devices = None;
                            true
                        }
                    };
                    (changed || due, due)
                }
                _ = poll.tick() => (self.source_changed() || due, due),
                _ = self.source.changed() => (true, false),
                _ = aging.tick() => {
                    self.age_learned();
                    (false, false)
                }
                Some(p) = requests.recv() => {
                    let answer = match (p.request, p.stream) {
                        (Request::Monitor { port, reason, decisions }, Some(lines)) => {
                            self.subscribe(port.as_deref(), reason, decisions, lines)
                        }
                        (request, _) => self.answer(request),
                    };
                    let _ = p.reply.send(answer);
                    (false, false)
                }
                _ = async { self.monitor.as_ref().expect("the monitor is back").readable().await } => {
                    self.drain_events();
                    (false, false)
                }
                _ = monitor_tick.tick() => {
                    self.monitor_tick();
                    (false, false)
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            };
            if sync {
                if let Err(e) = self.reconcile(verify) {
                    log::error!("reconcile: {e:#}");
                }
                if verify {
                    last_verify = Instant::now();
                }
            }
        }
        server.abort();
        if let Some(m) = metrics {
            m.abort();
        }
        let _ = std::fs::remove_file(&self.cfg.control_socket);
        log::info!("stopping; the datapath keeps forwarding (remove it with --cleanup)");
        Ok(())
    }

    fn source_changed(&mut self) -> bool {
        let before = self.source.error();
        self.source.poll() || self.source.error() != before
    }
}

/// Takes over the pins of other layout versions: what they learned, and
/// their attachments, which the first reconcile swaps to this build's programs.
fn take_over(foreign: &[(u32, PathBuf)], own_dir: &Path) -> Result<Option<Migration>> {
    if foreign.is_empty() {
        return Ok(None);
    }
    let mut m = Migration { dirs: Vec::new(), learned: Vec::new(), connections: Vec::new() };
    for (version, dir) in foreign {
        log::info!(
            "{} holds map layout v{version}: taking it over as v{} without stopping traffic",
            dir.display(),
            datapath_common::ABI_VERSION
        );
        match migrate::learned_of(dir) {
            Ok(l) => m.learned.extend(l),
            Err(e) => {
                log::warn!("not carrying over learned MACs of v{version} (they will be learned again): {e:#}")
            }
        }
        match migrate::connections_of(dir) {
            Ok(c) => m.connections.extend(c),
            Err(e) => log::warn!("not carrying over the connections of v{version}: {e:#}"),
        }
        let moved = migrate::adopt_attachments(dir, own_dir)?;
        log::info!("took over {moved} attachments of v{version}");
        m.dirs.push(dir.clone());
    }
    Ok(Some(m))
}

/// Makes sure `pin_path` lives on a bpffs, mounting /sys/fs/bpf if that is where it goes.
fn ensure_bpffs(pin_path: &Path) -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let bpffs_root = Path::new("/sys/fs/bpf");
    let mut probe = pin_path;
    while !probe.exists() {
        probe = probe.parent().context("pin_path has no existing ancestor")?;
    }
    if fs_magic(probe)? == BPF_FS_MAGIC {
        return Ok(());
    }
    if pin_path.starts_with(bpffs_root) && fs_magic(bpffs_root).is_ok_and(|m| m != BPF_FS_MAGIC) {
        log::info!("mounting bpffs at {}", bpffs_root.display());
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .context("running mount -t bpf bpf /sys/fs/bpf")?;
        if status.success() {
            return Ok(());
        }
    }
    bail!(
        "pin_path {} is not on a bpffs; mount one (mount -t bpf bpf /sys/fs/bpf) or choose a pin_path on one",
        pin_path.display()
    )
}

fn fs_magic(path: &Path) -> Result<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs writes into a zeroed struct of the right type.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated; st is valid for writes.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64)
}

/// Removes everything an agent with this config created: links (which detaches
/// the programs), pinned maps and the pin directories.
pub fn cleanup(cfg: &Config) -> Result<()> {
    // Every layout version's pins: an interrupted upgrade may have left two.
    let mut dirs = vec![loader::versioned_pin_dir(&cfg.pin_path)];
    dirs.extend(migrate::foreign_versions(&cfg.pin_path)?.into_iter().map(|(_, d)| d));
    for dir in dirs {
        attach::detach_all(&dir)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    if cfg.tunnel_ip().is_some() {
        tunnel::remove()?;
    }
    // The pin_path itself, if we leave it empty; other versions' pins stay.
    let _ = std::fs::remove_dir(&cfg.pin_path);
    if cfg.control_socket.exists() {
        let _ = std::fs::remove_file(&cfg.control_socket);
    }
    log::info!("removed the datapath pinned at {}", cfg.pin_path.display());
    Ok(())
}
