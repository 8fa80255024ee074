//! The Neutron binding source: an L2 agent on the message bus. A background
//! task asks neutron-server for the details of every local tap, consumes the
//! notifications of an L2 agent, reports its state, and tells neutron which
//! ports are wired. The reconcile loop sees only the bindings by network (`Catalog`), as with the file.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, interval, sleep_until};

use super::notify::{self, Notification};
use super::plugin::{AgentState, Plugin};
use super::ports::{NeutronState, Report, Wired};
use super::rpc::{LinkEvent, Rpc};
use super::secgroups::{self, SgInfo};
use super::transport::TransportUrl;
use crate::bindings::{Catalog, CatalogDelta, Changed};
use crate::config::{Config, NeutronOptions};
use crate::desired::{PortReport, PortState, is_port_device};
use crate::netlink::Devices;

/// The name neutron lists the agent under (`binary` in `openstack network agent list`).
pub const BINARY: &str = "datapath";
/// Devices per details or device-list call.
const BATCH: usize = 100;
/// How often failed calls are retried and refused devices asked again.
const RETRY: Duration = Duration::from_secs(2);
/// After a restart over adopted maps, how long l2population gets to send the
/// full FDB before the first bindings are published (see `start_over_adopted`).
const FDB_SETTLE: Duration = Duration::from_millis(500);

/// How the source is doing, for `datapath status`.
#[derive(Debug, Clone)]
pub struct Health {
    /// Whether the bus link is up.
    pub connected: bool,
    /// Since when the link is in its state.
    pub since: SystemTime,
    /// Why the link or the last call failed, if it did.
    pub last_error: Option<String>,
    /// When neutron last answered a state report, and what.
    pub last_report: Option<(SystemTime, String)>,
    /// Devices with details from neutron.
    pub known: usize,
    /// Devices neutron gave no usable details for, with why.
    pub refused: Vec<(String, String)>,
    /// Whether the first bindings have been published.
    pub synced: bool,
}

impl Health {
    fn new() -> Self {
        Self {
            connected: false,
            since: SystemTime::now(),
            last_error: None,
            last_report: None,
            known: 0,
            refused: Vec::new(),
            synced: false,
        }
    }

    /// One line for `datapath status`.
    pub fn describe(&self) -> String {
        let ago = |t: SystemTime| t.elapsed().map(|d| format!("{}s ago", d.as_secs())).unwrap_or_default();
        let link = if self.connected {
            format!("connected for {}", ago(self.since).trim_end_matches(" ago"))
        } else {
            format!("disconnected since {}; forwarding with the last state, retrying", ago(self.since))
        };
        let report = match &self.last_report {
            Some((t, answer)) => format!("last report_state {} ({answer})", ago(*t)),
            None => "no report_state answered yet".into(),
        };
        let sync = if self.synced { "synced" } else { "waiting for the first details" };
        format!("{link}; {report}; {sync}; {} devices known, {} refused", self.known, self.refused.len())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A batch of device states for the task (None: the device went).
type PortChanges = Vec<(String, Option<Wired>)>;

/// The reconcile loop's handle on the Neutron source. Both ways carry
/// changes only, so a port's event costs that port, not the node.
pub struct NeutronSource {
    deltas: mpsc::UnboundedReceiver<CatalogDelta>,
    ports: mpsc::UnboundedSender<PortChanges>,
    health: Arc<Mutex<Health>>,
    url: String,
    /// The bindings as the task's deltas built them; None until the first.
    catalog: Option<Catalog>,
    /// What changed since the reconcile loop last asked.
    changed: Changed,
    /// The device states sent to the task.
    sent: BTreeMap<String, Wired>,
}

impl NeutronSource {
    /// Starts the agent's RPC task; `adopted` says that the maps still hold a
    /// previous run's ports (a restart), so their FDB is fetched before the
    /// first bindings replace them.
    pub fn start(cfg: &Config, opts: &NeutronOptions, adopted: bool) -> anyhow::Result<Self> {
        let url = TransportUrl::parse(&opts.transport_url)?;
        let (btx, brx) = mpsc::unbounded_channel();
        let (ptx, prx) = mpsc::unbounded_channel();
        let health = Arc::new(Mutex::new(Health::new()));
        let state = AgentState {
            host: cfg.host.clone(),
            binary: BINARY.into(),
            interface_mappings: cfg
                .physical_interface_mappings
                .iter()
                .map(|m| (m.physical_network.clone(), m.interface.clone()))
                .collect(),
            tunneling_ip: cfg.tunnel_ip().map(Into::into),
            tunnel_types: if cfg.tunnel_ip().is_some() { cfg.tunnel_types.clone() } else { vec![] },
            devices: 0,
            uuid: String::new(),
        };
        let task = Task {
            host: cfg.host.clone(),
            report_interval: Duration::from_secs(opts.report_interval),
            agent_state: state,
            adopted,
            bindings: btx,
            ports: prx,
            health: health.clone(),
        };
        tokio::spawn(task.run(url));
        Ok(Self {
            deltas: brx,
            ports: ptx,
            health,
            url: opts.display_url(),
            catalog: None,
            changed: Changed::default(),
            sent: BTreeMap::new(),
        })
    }

    fn absorb(&mut self, d: CatalogDelta) {
        let catalog = match &mut self.catalog {
            Some(c) => c,
            None => {
                self.changed.all = true;
                self.catalog.insert(Catalog::default())
            }
        };
        self.changed.networks.extend(catalog.apply(d));
    }

    /// Takes in the task's deltas. Returns whether any came.
    pub fn poll(&mut self) -> bool {
        let mut any = false;
        while let Ok(d) = self.deltas.try_recv() {
            self.absorb(d);
            any = true;
        }
        any
    }

    /// Waits for the task's next delta, and takes it in.
    pub async fn changed(&mut self) {
        match self.deltas.recv().await {
            Some(d) => self.absorb(d),
            // The task is gone (it only ends with the runtime): never wake again.
            None => std::future::pending::<()>().await,
        }
    }

    /// The bindings in force, once neutron has answered for the local devices.
    pub fn good(&self) -> Option<&Catalog> {
        self.catalog.as_ref()
    }

    /// The networks changed since the last call.
    pub fn take_changed(&mut self) -> Changed {
        std::mem::take(&mut self.changed)
    }

    /// Why the source is not healthy, if it is not.
    pub fn error(&self) -> Option<String> {
        let h = lock(&self.health);
        if !h.connected {
            return Some(format!(
                "message bus unreachable: {}",
                h.last_error.as_deref().unwrap_or("not connected yet")
            ));
        }
        h.last_error.clone()
    }

    /// The transport URL, passwords masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How the source is doing.
    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    /// After a full reconciliation: how each local device was left.
    pub fn observe<'a>(&mut self, ports: impl Iterator<Item = &'a PortReport>) {
        let present: BTreeMap<String, Wired> =
            ports.filter_map(|p| Some((p.device.clone(), wired(p)?))).collect();
        self.replace(present);
    }

    /// After an incremental one: the devices whose report changed (None: gone).
    pub fn observe_changes(&mut self, changes: &BTreeMap<String, Option<PortReport>>) {
        let batch = changes.iter().map(|(dev, r)| (dev.clone(), r.as_ref().and_then(wired))).collect();
        self.send(batch);
    }

    /// Before the first bindings: the taps that exist, so their details are asked for.
    pub fn observe_devices(&mut self, devices: &Devices) {
        let present =
            devices.keys().filter(|d| is_port_device(d)).map(|d| (d.clone(), Wired::Unbound)).collect();
        self.replace(present);
    }

    /// Sends what differs between `present` and what the task has.
    fn replace(&mut self, present: BTreeMap<String, Wired>) {
        let mut batch: PortChanges =
            self.sent.keys().filter(|d| !present.contains_key(*d)).map(|d| (d.clone(), None)).collect();
        batch.extend(
            present.iter().filter(|(d, w)| self.sent.get(*d) != Some(w)).map(|(d, w)| (d.clone(), Some(*w))),
        );
        self.send(batch);
    }

    /// Sends the entries of `batch` that change what the task has.
    fn send(&mut self, batch: PortChanges) {
        let batch: PortChanges = batch
            .into_iter()
            .filter(|(dev, w)| match w {
                Some(w) => self.sent.insert(dev.clone(), *w) != Some(*w),
                None => self.sent.remove(dev).is_some(),
            })
            .collect();
        if !batch.is_empty() {
            // The task lives as long as the runtime; a send error means it is shutting down.
            let _ = self.ports.send(batch);
        }
    }
}

/// How a device's report reads for neutron: None for what is not a local tap that exists.
fn wired(p: &PortReport) -> Option<Wired> {
    if p.ifindex.is_none() || !is_port_device(&p.device) {
        return None;
    }
    Some(match p.state {
        PortState::Up => Wired::Up,
        PortState::AdminDown => Wired::AdminDown,
        PortState::Unbound => Wired::Unbound,
        PortState::Error(_) => Wired::Failed,
        PortState::NoDevice => return None,
    })
}

struct Task {
    host: String,
    report_interval: Duration,
    agent_state: AgentState,
    adopted: bool,
    bindings: mpsc::UnboundedSender<CatalogDelta>,
    ports: mpsc::UnboundedReceiver<PortChanges>,
    health: Arc<Mutex<Health>>,
}

impl Task {
    async fn run(mut self, url: TransportUrl) {
        let (rpc, mut incoming) = Rpc::start(url, notify::subscriptions(&self.host));
        let plugin = Plugin::new(rpc.clone(), &self.host);
        let mut link = rpc.events();
        let devices = Arc::new(AtomicUsize::new(0));
        let (revived_tx, mut revived) = mpsc::unbounded_channel();
        tokio::spawn(report_loop(
            plugin.clone(),
            self.agent_state.clone(),
            self.report_interval,
            devices.clone(),
            self.health.clone(),
            revived_tx,
        ));
        let mut st = NeutronState::new(&self.host);
        let mut retry = interval(RETRY);
        retry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Whether the bindings must be published; None until the first are ready.
        let mut dirty = false;
        let mut published = false;
        // Set while l2population is sending the FDB of a restart (see `prime`).
        let mut hold: Option<tokio::time::Instant> = None;
        let mut primed = !self.adopted;
        loop {
            tokio::select! {
                r = self.ports.recv() => {
                    let Some(changes) = r else { return };
                    log::debug!("local devices changed: {changes:?}");
                    dirty |= st.observe_changes(changes);
                }
                Some(m) = incoming.recv() => match notify::decode(&m) {
                    Ok(n) => {
                        log_notification(&n);
                        dirty |= st.apply(&n);
                    }
                    Err(e) => log::error!("ignoring a message from neutron: {e:#}"),
                },
                ev = link.recv() => match ev {
                    Ok(LinkEvent::Connected { reconnect }) => {
                        lock(&self.health).last_error = None;
                        if reconnect {
                            log::info!("message bus back: resyncing every device with neutron");
                            st.resync();
                        }
                    }
                    Ok(LinkEvent::Disconnected(why)) => {
                        log::warn!("message bus lost: {why}; the datapath keeps forwarding with what it has");
                    }
                    Err(_) => link = rpc.events(),
                },
                Some(()) = revived.recv() => {
                    log::info!("neutron says this agent was revived: resyncing every device");
                    st.resync();
                }
                _ = retry.tick() => {}
                _ = async { sleep_until(hold.unwrap_or_else(tokio::time::Instant::now)).await }, if hold.is_some() => {
                    hold = None;
                }
            }
            {
                let mut h = lock(&self.health);
                let status = rpc.status();
                h.connected = status.connected;
                h.since = status.since;
                if let Some(e) = status.last_error.filter(|_| !status.connected) {
                    h.last_error = Some(e);
                }
            }
            if !rpc.status().connected {
                continue;
            }
            let fetch = st.to_fetch(Instant::now());
            let mut failed = false;
            // In batches, so that a resync of a full node is many bounded calls, not one
            // that outlives its timeout (the OVS agent batches the same way).
            for batch in fetch.chunks(BATCH) {
                log::debug!("asking neutron for the details of {batch:?}");
                match plugin.devices_details(batch).await {
                    Ok(d) => {
                        for (dev, why) in &d.refused {
                            log::debug!("details refused for {dev}: {why}");
                        }
                        dirty |= st.fetched(batch, d, Instant::now());
                    }
                    Err(e) => {
                        log::warn!("asking neutron for the details of {} devices: {e:#}", batch.len());
                        lock(&self.health).last_error = Some(format!("{e:#}"));
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                continue;
            }
            // The security groups before the bindings: a port is programmed
            // with its groups, never open for a moment before them.
            if let Some(ports) = st.sg_to_fetch() {
                let info = if ports.is_empty() {
                    Ok(SgInfo::default())
                } else {
                    plugin.security_group_info_for_devices(&ports).await.and_then(|v| secgroups::parse(&v))
                };
                match info {
                    Ok(info) => dirty |= st.sg_fetched(info),
                    Err(e) => {
                        log::warn!("asking neutron for the security groups of {} ports: {e:#}", ports.len());
                        lock(&self.health).last_error = Some(format!("{e:#}"));
                        continue;
                    }
                }
            }
            let ready = st.to_fetch(Instant::now()).is_empty() && st.sg_ready();
            if !primed && ready {
                // A restart over maps that still forward: l2population sends the
                // full FDB only when told the ports are up, so say so before the
                // first bindings, else the remote entries would go and come back.
                let r = st.prime();
                if !r.is_empty() && self.report(&plugin, &mut st, &r).await {
                    hold = Some(tokio::time::Instant::now() + FDB_SETTLE);
                }
                primed = true;
            }
            if ready && hold.is_none() && (dirty || !published) {
                match st.take_delta() {
                    // The first one goes out even when empty: it says the bindings are ready.
                    Ok(d) if d.is_some() || !published => {
                        let _ = self.bindings.send(d.unwrap_or_default());
                        published = true;
                        dirty = false;
                    }
                    Ok(_) => dirty = false,
                    Err(e) => log::error!("neutron's details do not form bindings: {e:#}"),
                }
            }
            devices.store(st.known(), Ordering::Relaxed);
            {
                let mut h = lock(&self.health);
                h.known = st.known();
                h.refused = st.refused().map(|(d, w)| (d.to_string(), w.to_string())).collect();
                h.synced = published;
            }
            let r = st.to_report();
            if published && !r.is_empty() {
                self.report(&plugin, &mut st, &r).await;
            }
        }
    }

    /// Sends one `update_device_list`; returns whether neutron took it.
    async fn report(&self, plugin: &Plugin, st: &mut NeutronState, r: &Report) -> bool {
        for (up, down) in batches(&r.up, &r.down) {
            // The rest waits for the next try: a failed call means neutron is not answering.
            if !self.report_batch(plugin, st, &Report { up: up.to_vec(), down: down.to_vec() }).await {
                return false;
            }
        }
        true
    }

    async fn report_batch(&self, plugin: &Plugin, st: &mut NeutronState, r: &Report) -> bool {
        let up: Vec<String> = r.up.iter().map(|(_, id)| id.clone()).collect();
        let down: Vec<String> = r.down.iter().map(|(_, id)| id.clone()).collect();
        match plugin.update_device_list(&up, &down, st.refresh_tunnels()).await {
            Ok(res) => {
                let failed: Vec<&String> =
                    res.failed_devices_up.iter().chain(&res.failed_devices_down).collect();
                if !failed.is_empty() {
                    log::warn!("neutron failed to update the status of {failed:?}; retrying");
                }
                let accepted = Report {
                    up: r.up.iter().filter(|(_, id)| !failed.contains(&id)).cloned().collect(),
                    down: r.down.iter().filter(|(_, id)| !failed.contains(&id)).cloned().collect(),
                };
                for (dev, id) in &accepted.up {
                    log::info!("port {id} ({dev}) reported up");
                }
                for (dev, id) in &accepted.down {
                    log::info!("port {id} ({dev}) reported down");
                }
                st.reported(&accepted);
                true
            }
            Err(e) => {
                log::warn!("update_device_list: {e:#}");
                lock(&self.health).last_error = Some(format!("{e:#}"));
                false
            }
        }
    }
}

/// Splits ups and downs into calls of at most `BATCH` devices each way.
fn batches<'a, T>(up: &'a [T], down: &'a [T]) -> Vec<(&'a [T], &'a [T])> {
    let n = up.len().max(down.len()).div_ceil(BATCH);
    let part = |v: &'a [T], i: usize| &v[(i * BATCH).min(v.len())..((i + 1) * BATCH).min(v.len())];
    (0..n).map(|i| (part(up, i), part(down, i))).collect()
}

fn log_notification(n: &Notification) {
    match n {
        Notification::PortUpdate { port_id, .. } => log::debug!("port_update {port_id}"),
        Notification::PortDelete { port_id } => log::info!("port_delete {port_id}"),
        Notification::NetworkUpdate { network_id, .. } => log::debug!("network_update {network_id}"),
        Notification::NetworkDelete { network_id } => log::info!("network_delete {network_id}"),
        other => log::debug!("{other:?}"),
    }
}

/// Reports the agent's state every `every`, as a call like the OVS agent's:
/// only the answer tells that neutron had declared the agent dead ("revived").
async fn report_loop(
    plugin: Plugin,
    mut state: AgentState,
    every: Duration,
    devices: Arc<AtomicUsize>,
    health: Arc<Mutex<Health>>,
    revived: mpsc::UnboundedSender<()>,
) {
    let mut tick = interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tick.tick().await;
        state.devices = devices.load(Ordering::Relaxed);
        state.uuid = super::envelope::new_id();
        match plugin.report_state(&state, first).await {
            Ok(answer) => {
                if first {
                    log::info!("neutron registered this agent ({answer})");
                }
                first = false;
                if answer == "revived" {
                    let _ = revived.send(());
                }
                lock(&health).last_report = Some((SystemTime::now(), answer));
            }
            Err(e) => log::warn!("report_state: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_go_in_batches_of_at_most_100_each_way() {
        let up: Vec<u32> = (0..250).collect();
        let down: Vec<u32> = (0..30).collect();
        let b = batches(&up, &down);
        assert_eq!(
            b.iter().map(|(u, d)| (u.len(), d.len())).collect::<Vec<_>>(),
            [(100, 30), (100, 0), (50, 0)]
        );
        assert_eq!(b.iter().flat_map(|(u, _)| u.iter()).count(), 250);
        assert!(batches::<u32>(&[], &[]).is_empty());
    }
}
