//! Answers to control-socket requests: the `ovs-ofctl`/`ovs-appctl` of this
//! datapath. Every answer is one of `api`'s reply types; the CLI turns it
//! into tables.

use std::{collections::BTreeMap, time::Instant};

use crate::{
    agent::Agent,
    api::{
        Answer, ApiError, ConnRow, ConntrackReply, ErrorKind, FdbReply, FdbRow, FlushReply, MetricsReply,
        MonitorStarted, NetworkRow, NetworksReply, PortRow, PortStats, PortsReply, Refused, Request,
        StageStats, StatsReply, StatusReply, TraceReply, TraceTarget,
    },
    attach::XdpState,
    batch,
    bindings::{
        PROTO_DCCP, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PROTO_UDPLITE, format_mac,
        has_ports,
    },
    conntrack,
    desired::{PortReport, PortState, TrunkRole},
    frames,
    learned::monotonic_ns,
    metrics::{self, KERNEL_COUNT_EVERY, MapFill, PortSample, Snapshot},
    monitor::{self, Monitor, Place},
    synced::summed,
    testrun::{self, SkbRun},
};
use anyhow::{Context, Result, bail};
use aya::maps::{IterableMap, PerCpuValues};
use datapath_common::{
    ABI_VERSION, Action, CT_F_FIN_ORIG, CT_F_FIN_REPLY, CT_F_INGRESS, CT_F_REPLIED, CT_F_RST, CtEntry, CtKey,
    DropReason, FDB_F_LOCAL, FdbKey, FragKey, FragVerdict, LearnedEntry, MONITOR_SNAP, PORT_F_SECGROUPS,
    PORT_KIND_TUNNEL, PORT_KIND_UPLINK, PortCounters, SG_JUDGED_ALLOWANCE, SG_JUDGED_FRAGMENT,
    SG_JUDGED_NONE, SG_JUDGED_TRACKED, TRACE_DRY_RUN, TRACE_MAGIC, TraceRecord, names, sg_judged_parts,
};

/// Longest frame `trace` accepts (a page minus the kernel's headroom).
const MAX_TRACE_FRAME: usize = 3500;

impl Agent {
    /// Answers one control request. A port or network this node does not
    /// have is `not_found`; anything else that fails is `failed`.
    pub fn answer(&mut self, request: Request) -> Result<Answer, ApiError> {
        self.refresh_status();
        let answer = match request {
            Request::Status {} => Ok(Answer::Status(self.status_reply())),
            Request::Ports {} => Ok(Answer::Ports(PortsReply {
                ports: self.status.derived.ports.iter().map(port_row).collect(),
            })),
            Request::Networks {} => Ok(Answer::Networks(self.networks_reply())),
            Request::Fdb { network } => self.fdb_reply(network.as_deref()).map(Answer::Fdb),
            Request::Stats { port } => self.stats_reply(port.as_deref()).map(Answer::Stats),
            Request::Conntrack { port } => self.conntrack_reply(port.as_deref()).map(Answer::Conntrack),
            Request::ConntrackFlush { port } => self.conntrack_flush(port.as_deref()).map(Answer::Flushed),
            Request::Trace { port, frame, vni, vtep, receive } => {
                self.trace_reply(&port, &frame, (vni, vtep.as_deref()), receive).map(Answer::Trace)
            }
            Request::Metrics {} => self.metrics_reply().map(Answer::Metrics),
            Request::Monitor { .. } => {
                Err(bad_request("monitor streams: it needs a connection of its own".into()))
            }
        };
        answer.map_err(api_error)
    }

    /// Brings the derived state the answers read up to the engine's, if a reconcile moved it.
    fn refresh_status(&mut self) {
        if self.status.stale {
            self.status.derived = self.engine.derived(&self.cfg);
            self.status.stale = false;
        }
    }

    fn status_reply(&self) -> StatusReply {
        let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
        for p in &self.status.derived.ports {
            *by_state.entry(state_name(&p.state).to_string()).or_default() += 1;
        }
        let refused = self
            .source
            .good()
            .map(|b| {
                b.refused.iter().map(|r| Refused { what: r.what.clone(), reason: r.reason.clone() }).collect()
            })
            .unwrap_or_default();
        StatusReply {
            host: self.cfg.host.clone(),
            pin_path: self.cfg.pin_path.display().to_string(),
            abi_version: ABI_VERSION,
            kernel: self.features.kernel.clone(),
            tc_hook: self.features.describe_hook().to_string(),
            xdp: self.attacher.xdp_states().iter().map(|(d, s)| (d.clone(), s.to_string())).collect(),
            source: self.source.kind().to_string(),
            bindings: self.source.location(),
            bindings_error: self.source.error(),
            source_health: self.source.health(),
            syncs: self.status.syncs,
            ports: by_state,
            networks: self.status.derived.networks.len(),
            errors: self.status.errors.clone(),
            refused,
        }
    }

    fn networks_reply(&self) -> NetworksReply {
        let networks = self
            .status
            .derived
            .networks
            .iter()
            .map(|n| NetworkRow {
                id: n.id.clone(),
                name: n.name.clone(),
                net_type: n.net_type.clone(),
                segmentation_id: n.segmentation_id,
                physical_network: n.physical_network.clone(),
                local_index: n.net_index,
                local_ports: n.local_ports,
                error: n.error.clone(),
            })
            .collect();
        NetworksReply { networks }
    }

    /// The network report matching an id, a name or a local index.
    fn find_network(&self, key: &str) -> Result<u32> {
        let nets = &self.status.derived.networks;
        nets.iter()
            .find(|n| {
                n.id == key || n.name == key || n.net_index.map(|i| i.to_string()).as_deref() == Some(key)
            })
            .and_then(|n| n.net_index)
            .ok_or_else(|| not_found(format!("no network {key:?} with ports on this node")))
    }

    fn network_id(&self, index: u32) -> String {
        let nets = &self.status.derived.networks;
        nets.iter().find(|n| n.net_index == Some(index)).map(|n| n.id.clone()).unwrap_or_default()
    }

    fn device_of(&self, ifindex: u32) -> String {
        self.place(ifindex).device
    }

    fn fdb_reply(&self, network: Option<&str>) -> Result<FdbReply> {
        let only = network.map(|n| self.find_network(n)).transpose()?;
        let mut entries = Vec::new();
        for item in self.dp.maps.synced.fdb.iter() {
            let (k, v) = item.context("reading FDB")?;
            if only.is_some_and(|n| n != k.net_index) {
                continue;
            }
            entries.push(FdbRow {
                network: self.network_id(k.net_index),
                local_index: k.net_index,
                mac: format_mac(&k.mac),
                device: self.device_of(v.ifindex),
                kind: if v.flags & FDB_F_LOCAL != 0 { "local" } else { "remote" }.into(),
                age_s: None,
            });
        }
        let now = monotonic_ns();
        for item in self.dp.maps.fdb_learned.iter() {
            let (k, v) = item.context("reading FDB_LEARNED")?;
            if only.is_some_and(|n| n != k.net_index) {
                continue;
            }
            entries.push(FdbRow {
                network: self.network_id(k.net_index),
                local_index: k.net_index,
                mac: format_mac(&k.mac),
                device: self.device_of(v.ifindex),
                kind: "learned".into(),
                age_s: Some(now.saturating_sub(v.last_seen_ns) / 1_000_000_000),
            });
        }
        Ok(FdbReply { entries })
    }

    /// The ifindex a `--port` names (None: every port). A port without a
    /// device has no connections: `Some(None)`.
    fn port_filter(&self, port: Option<&str>) -> Result<Option<Option<u32>>> {
        port.map(|key| self.find_port(key).map(|p| p.ifindex)).transpose()
    }

    /// Both connection tables, read in batches.
    fn connections(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        conntrack::read_all(&self.dp.maps)
    }

    fn conntrack_reply(&self, port: Option<&str>) -> Result<ConntrackReply> {
        let only = self.port_filter(port)?;
        let now = monotonic_ns();
        let mut connections = Vec::new();
        for (k, e) in self.connections()? {
            if only.is_some_and(|i| i != Some(k.ifindex)) {
                continue;
            }
            let rule = match e.table {
                0 => "fixed allowance".to_string(),
                id => self.engine.security().rule_id(id, e.rule).unwrap_or("-").to_string(),
            };
            let lifetime = u64::from(e.lifetime_s) * 1_000_000_000;
            connections.push(ConnRow {
                port: self.device_of(k.ifindex),
                protocol: protocol_name(k.protocol),
                local: conn_end(&k, conntrack::local_of(&k), k.local_port),
                remote: conn_end(&k, conntrack::remote_of(&k), k.remote_port),
                direction: if e.flags & CT_F_INGRESS != 0 { "ingress" } else { "egress" }.into(),
                state: conn_state(e.flags).into(),
                rule,
                age_s: now.saturating_sub(e.created_ns) / 1_000_000_000,
                expires_s: (e.last_seen_ns + lifetime).saturating_sub(now) / 1_000_000_000,
            });
        }
        connections.sort_by(|a, b| (&a.port, &a.local, &a.remote).cmp(&(&b.port, &b.local, &b.remote)));
        Ok(ConntrackReply { connections })
    }

    fn conntrack_flush(&mut self, port: Option<&str>) -> Result<FlushReply> {
        let only = self.port_filter(port)?;
        let mut doomed = Vec::new();
        for (k, _) in self.connections()? {
            if only.is_none_or(|i| i == Some(k.ifindex)) {
                doomed.push(k);
            }
        }
        let mut flushed = 0;
        for k in &doomed {
            // One that went meanwhile (expired, cut) is not counted.
            if conntrack::remove(&mut self.dp.maps, k) {
                flushed += 1;
            }
        }
        log::info!(
            "conntrack flush{}: {flushed} connections deleted",
            port.map(|p| format!(" of {p}")).unwrap_or_default()
        );
        Ok(FlushReply { flushed })
    }

    /// How the security groups of the port at `ifindex` judged a traced
    /// frame, in words; None when they did not look at it (an unfiltered
    /// port, or a program that applies none).
    fn sg_judgement(&self, program: &str, ifindex: u32, rec: &TraceRecord) -> Option<String> {
        let filtered =
            self.dp.maps.synced.ports.get(&ifindex, 0).is_ok_and(|p| p.flags & PORT_F_SECGROUPS != 0);
        if !filtered || ![names::PROG_VM_PORT, names::PROG_VM_PORT_OUT].contains(&program) {
            return None;
        }
        match DropReason::from_index(rec.reason) {
            Some(DropReason::SgIngressDenied | DropReason::SgEgressDenied) => {
                return Some("no rule admits it".into());
            }
            // Dropped before the security groups, or by the connection table (the reason says which).
            Some(_) => return None,
            None => {}
        }
        Some(match rec.sg_judged {
            SG_JUDGED_NONE => "not IP: security groups filter IP only".into(),
            SG_JUDGED_TRACKED => "a tracked connection (or an ICMP error related to one)".into(),
            SG_JUDGED_ALLOWANCE => "a fixed allowance (DHCP, NDP)".into(),
            SG_JUDGED_FRAGMENT => "a later fragment: its datagram's first fragment decides".into(),
            n => {
                let (slot, rule) = sg_judged_parts(n)?;
                // The tables the run used are the port's: the trace ran against the live maps.
                let port = self.dp.maps.synced.sg_ports.get(&ifindex, 0).ok();
                let table = port.and_then(|p| p.tables.get(slot as usize).copied()).unwrap_or(0);
                match self.engine.security().rule_id(table, rule) {
                    Some(id) => format!("admitted by rule {id}"),
                    None => format!("admitted by rule {rule} of table {table} (no longer in force)"),
                }
            }
        })
    }

    /// The report of a port given by device name or (a prefix of) its port id.
    fn find_port(&self, key: &str) -> Result<&PortReport> {
        let ports = &self.status.derived.ports;
        if let Some(p) = ports.iter().find(|p| p.device == key || (!p.id.is_empty() && p.id == key)) {
            return Ok(p);
        }
        let mut matches = ports.iter().filter(|p| !p.id.is_empty() && p.id.starts_with(key));
        match (matches.next(), matches.next()) {
            (Some(p), None) => Ok(p),
            (Some(_), Some(_)) => Err(not_found(format!("port {key:?} is ambiguous: give more of the id"))),
            _ => Err(not_found(format!("no port {key:?} on this node (give a device name or a port id)"))),
        }
    }

    fn counters(&self, ifindex: u32) -> Result<Option<(u32, PortCounters)>> {
        let Ok(info) = self.dp.maps.synced.ports.get(&ifindex, 0) else { return Ok(None) };
        let sum = summed(&self.dp.maps.port_stats, info.stats_slot).context("reading PORT_STATS")?;
        Ok(Some((info.stats_slot, sum)))
    }

    /// The XDP stage's counters of `device` (slot `slot`), where it runs or counted anything.
    fn xdp_counters(&self, device: &str, slot: u32) -> Result<Option<PortCounters>> {
        let c = summed(&self.dp.maps.xdp_stats, slot).context("reading XDP_STATS")?;
        // The VXLAN device's stage runs on the underlay device.
        let runs = self.attacher.xdp_states().get(device) == Some(&XdpState::Native)
            || (device == crate::tunnel::TUNNEL_DEVICE
                && self.attacher.underlay().is_some_and(|(_, s)| s == Some(&XdpState::Native)));
        if !runs && c.actions.iter().all(|&n| n == 0) {
            return Ok(None);
        }
        Ok(Some(c))
    }

    fn stats_reply(&self, port: Option<&str>) -> Result<StatsReply> {
        let ports: Vec<&PortReport> = match port {
            Some(key) => vec![self.find_port(key)?],
            None => self.status.derived.ports.iter().collect(),
        };
        let mut out = Vec::new();
        for p in ports {
            let Some(ifindex) = p.ifindex else { continue };
            let Some((slot, c)) = self.counters(ifindex)? else { continue };
            let (actions, drops) = labelled(&c);
            out.push(PortStats {
                device: p.device.clone(),
                port_id: p.id.clone(),
                kind: p.kind.to_string(),
                ifindex,
                slot,
                actions,
                drops,
                dropped: c.drops.iter().sum(),
                xdp: self.xdp_counters(&p.device, slot)?.map(|x| {
                    let (actions, drops) = labelled(&x);
                    StageStats { actions, drops, dropped: x.drops.iter().sum() }
                }),
            });
        }
        Ok(StatsReply { ports: out })
    }

    /// Adds a monitor listener sending to `lines`: the drops of `port` (or
    /// every port) for `reason` (or every reason), and with `decisions` every
    /// decision at `port`.
    pub fn subscribe(
        &mut self,
        port: Option<&str>,
        reason: Option<String>,
        decisions: bool,
        lines: tokio::sync::mpsc::Sender<String>,
    ) -> Result<Answer, ApiError> {
        self.refresh_status();
        let (ifindex, device) = match port {
            Some(key) => {
                let p = self.find_port(key).map_err(api_error)?;
                let i = p.ifindex.ok_or_else(|| {
                    ApiError::new(ErrorKind::NotFound, format!("port {key:?} has no device on this node"))
                })?;
                (Some(i), p.device.clone())
            }
            None => (None, String::new()),
        };
        // A subport's frames run on its parent's tap: the programs report that device's.
        let on = ifindex.map(|i| self.engine.state().subports.get(&i).map_or(i, |s| s.parent_ifindex));
        if decisions && ifindex.is_none() {
            return Err(ApiError::new(ErrorKind::BadRequest, "decisions need a port (--port)"));
        }
        if let Some(r) = &reason
            && !monitor::reason_labels().contains_key(r.as_str())
        {
            let known: Vec<&str> = monitor::reason_labels().into_keys().collect();
            return Err(ApiError::new(
                ErrorKind::BadRequest,
                format!("no drop reason {r:?}; one of {}", known.join(", ")),
            ));
        }
        let kernel_now = monitor::suppressed(&self.dp.maps).map_err(api_error)?;
        let listener = Monitor::listener((ifindex, on), reason.clone(), decisions, lines, kernel_now);
        let m = self.monitor.as_mut().expect("the monitor is back");
        m.add(&mut self.dp.maps, listener).map_err(|e| ApiError::new(ErrorKind::Busy, e))?;
        log::info!(
            "monitor: a listener for {} ({}){}",
            if device.is_empty() { "every port" } else { &device },
            reason.as_deref().unwrap_or("every reason"),
            if decisions { ", every decision" } else { "" }
        );
        Ok(Answer::Monitoring(MonitorStarted {
            port: device,
            reason: reason.unwrap_or_default(),
            decisions,
            snap: MONITOR_SNAP,
        }))
    }

    /// Sends the ring buffer's waiting events to the listeners.
    pub fn drain_events(&mut self) {
        self.refresh_status();
        let Some(mut m) = self.monitor.take() else { return };
        m.drain(|ev| {
            let port = self.port_at(ev.ifindex, ev.slot);
            (port, self.place(port))
        });
        self.monitor = Some(m);
    }

    /// Once a second: listeners that went, and what was suppressed.
    pub fn monitor_tick(&mut self) {
        let Some(mut m) = self.monitor.take() else { return };
        if m.active() {
            let kernel = monitor::suppressed(&self.dp.maps).unwrap_or(0);
            if let Err(e) = m.tick(&mut self.dp.maps, kernel) {
                log::warn!("monitor: {e:#}");
            }
        }
        self.monitor = Some(m);
    }

    /// The device, port and network at `ifindex`, as the agent knows them.
    /// The port whose frame at device `ifindex` was counted in `slot`: the
    /// device's, or one of the subports its tap carries (their frames run
    /// on the parent's tap, under their own counter slots).
    fn port_at(&self, ifindex: u32, slot: u32) -> u32 {
        let state = self.engine.state();
        state
            .subports
            .iter()
            .filter(|(_, tv)| tv.parent_ifindex == ifindex)
            .find(|(id, _)| state.ports.get(id).is_some_and(|p| p.stats_slot == slot))
            .map_or(ifindex, |(id, _)| *id)
    }

    fn place(&self, ifindex: u32) -> Place {
        match self.status.derived.ports.iter().find(|p| p.ifindex == Some(ifindex)) {
            Some(p) => {
                Place { device: p.device.clone(), port_id: p.id.clone(), network: p.network_id.clone() }
            }
            None => Place { device: format!("ifindex {ifindex}"), ..Place::default() },
        }
    }

    /// The metrics: every port's counters, the node's drops, the maps' fill.
    fn metrics_reply(&mut self) -> Result<MetricsReply> {
        let mut ports = Vec::new();
        let mut node: PortCounters = bytemuck::Zeroable::zeroed();
        for p in &self.status.derived.ports {
            let Some(ifindex) = p.ifindex else { continue };
            let Some((slot, c)) = self.counters(ifindex)? else { continue };
            node.accumulate(&c);
            let (actions, drops) = labelled(&c);
            let xdp = self.xdp_counters(&p.device, slot)?;
            if let Some(x) = &xdp {
                // The XDP stage's drops are the node's too; its rx are the TC stage's rx plus those.
                for (n, d) in node.drops.iter_mut().zip(x.drops) {
                    *n += d;
                }
            }
            ports.push(PortSample {
                port_id: p.id.clone(),
                device: p.device.clone(),
                network: p.network_id.clone(),
                actions,
                drops,
                xdp: xdp.map(|x| labelled(&x)),
            });
        }
        // Slot 0: frames on devices the agent does not (or no longer) know.
        for c in self.dp.maps.port_stats.get(&0, 0).context("reading PORT_STATS slot 0")?.iter() {
            node.accumulate(c);
        }
        let node_drops =
            DropReason::ALL.iter().map(|r| (r.label().to_string(), node.drops[*r as usize])).collect();
        let snapshot = Snapshot {
            ports,
            node_drops,
            reconciles: self.status.syncs,
            reconcile_seconds: self.telemetry.reconcile_seconds.clone(),
            bindings_ok: self.status.bindings_error.is_none() && self.source.good().is_some(),
            bindings_last_good: self
                .telemetry
                .bindings_last_good
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64()),
            maps: self.map_fills()?,
            hook: self.features.hook_name().to_string(),
            xdp: self
                .attacher
                .xdp_states()
                .iter()
                .map(|(d, s)| (d.clone(), *s == XdpState::Native))
                .collect(),
            kernel: self.features.kernel.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            abi_version: ABI_VERSION,
            source: self.source.kind().to_string(),
            monitor_suppressed: monitor::suppressed(&self.dp.maps)?,
            monitor_listeners: self.monitor.as_ref().map_or(0, Monitor::listeners),
        };
        Ok(MetricsReply { text: metrics::render(snapshot)? })
    }

    /// Each map's entries and capacity: the agent-owned maps as the agent
    /// wrote them, the kernel-written ones counted at most every
    /// `KERNEL_COUNT_EVERY`, the arrays by the slots in use.
    fn map_fills(&mut self) -> Result<Vec<MapFill>> {
        let fresh =
            self.telemetry.kernel_counts.as_ref().is_some_and(|(t, _)| t.elapsed() < KERNEL_COUNT_EVERY);
        if !fresh {
            let m = &self.dp.maps;
            let mut counts = BTreeMap::new();
            counts.insert(
                names::FDB_LEARNED,
                batch::read_all::<FdbKey, LearnedEntry>(m.fdb_learned.map())?.len(),
            );
            counts.insert(
                names::FRAG_VERDICTS,
                batch::read_all::<FragKey, FragVerdict>(m.frag_verdicts.map())?.len(),
            );
            counts.insert(names::CONNTRACK, batch::read_all::<CtKey, CtEntry>(m.conntrack.map())?.len());
            counts.insert(names::CT_CLOSING, batch::read_all::<CtKey, CtEntry>(m.ct_closing.map())?.len());
            counts.insert(names::SG_FRAGS, batch::read_all::<FragKey, FragVerdict>(m.sg_frags.map())?.len());
            let counts = counts.into_iter().map(|(k, v)| (k, v as u64)).collect();
            self.telemetry.kernel_counts = Some((Instant::now(), counts));
        }
        let kernel = &self.telemetry.kernel_counts.as_ref().expect("counted above").1;
        let synced = self.engine.state().counts();
        let mut out = Vec::new();
        for (name, map) in self.dp.maps.all() {
            let capacity =
                u64::from(map.info().with_context(|| format!("reading map {name}'s info"))?.max_entries());
            let entries = match name {
                // A slot per port with counters, and slot 0.
                names::PORT_STATS => synced.get(names::PORTS).map_or(0, |n| *n as u64) + 1,
                names::TRACE => capacity,
                _ => synced.get(name).map(|n| *n as u64).or_else(|| kernel.get(name).copied()).unwrap_or(0),
            };
            out.push(MapFill { name: name.to_string(), entries, capacity });
        }
        Ok(out)
    }

    fn trace_reply(
        &mut self,
        port: &str,
        frame_hex: &str,
        (vni, vtep): (Option<u32>, Option<&str>),
        receive: bool,
    ) -> Result<TraceReply> {
        let frame = parse_hex(frame_hex).map_err(|e| bad_request(format!("{e:#}")))?;
        if !(15..=MAX_TRACE_FRAME).contains(&frame.len()) {
            return Err(bad_request(format!(
                "frame is {} bytes; trace takes 15..={MAX_TRACE_FRAME}",
                frame.len()
            )));
        }
        let report = self.find_port(port)?.clone();
        let ifindex = report.ifindex.with_context(|| format!("port {port} has no device on this node"))?;
        let kind = self.dp.maps.synced.ports.get(&ifindex, 0).map(|p| p.kind).unwrap_or(0);
        // A subport has no device: what it sends is what the VM tags with its
        // VLAN id on the parent's tap, where the program runs.
        let (ifindex, frame) = match self.engine.state().subports.get(&ifindex) {
            Some(_) if receive => {
                return Err(bad_request(format!(
                    "{port} is a subport: what it receives leaves its parent's tap with the VLAN id \
                     as the skb's tag, which a traced run cannot carry; trace what the sender sends"
                )));
            }
            Some(sub) => (sub.parent_ifindex, frames::tagged(&frame, 0x8100, sub.vid as u16)),
            None => (ifindex, frame),
        };
        let program = match (kind, receive) {
            (PORT_KIND_UPLINK | PORT_KIND_TUNNEL, true) => {
                return Err(bad_request(format!(
                    "{port} is no VM or network port: --receive traces a port's egress"
                )));
            }
            (PORT_KIND_UPLINK, _) => names::PROG_UPLINK,
            (PORT_KIND_TUNNEL, _) => names::PROG_TUNNEL,
            (_, true) => names::PROG_VM_PORT_OUT,
            _ => names::PROG_VM_PORT,
        };
        // tunnel_in takes the tunnel key through its trace hook: a test run carries no metadata.
        let tunnel = match (program == names::PROG_TUNNEL, vni, vtep) {
            (true, Some(vni), Some(vtep)) if vni != 0 => {
                let vtep: std::net::Ipv4Addr = vtep
                    .parse()
                    .map_err(|_| bad_request(format!("--vtep {vtep:?} is not an IPv4 address")))?;
                [vni, u32::from(vtep)]
            }
            (true, _, _) => {
                return Err(bad_request(format!(
                    "{port} is the VXLAN device: say where the frame came from with --vni N --vtep IP"
                )));
            }
            (false, None, None) => [0, 0],
            (false, _, _) => {
                return Err(bad_request("--vni and --vtep are for the VXLAN device only".into()));
            }
        };

        // An uplink with the XDP stage: the frame meets it first, and may end there.
        let mut stages = program.to_string();
        if program == names::PROG_UPLINK
            && self.attacher.xdp_states().get(&report.device) == Some(&XdpState::Native)
        {
            let reply = self.trace_xdp(&report, ifindex, &frame)?;
            // Dropped in the driver, or sent to a tap from there (the fast path): TC never sees it.
            if reply.verdict == "drop" || reply.action.as_deref() == Some(Action::Redirected.label()) {
                return Ok(reply);
            }
            stages = format!("{} -> {program}", names::PROG_UPLINK_XDP);
        }
        self.clear_trace()?;
        let cb = [TRACE_MAGIC[0], TRACE_MAGIC[1], TRACE_DRY_RUN, tunnel[0], tunnel[1]];
        let out = {
            let prog = self.dp.program(program)?;
            testrun::run_prog(prog, &SkbRun { frame: &frame, ifindex, cb, mark: 0 })?
        };
        let per_cpu = self.dp.maps.trace.get(&0, 0).context("reading TRACE")?;
        let rec =
            per_cpu.iter().find(|r| r.valid == 1).copied().context("the program wrote no trace record")?;
        let targets = self.targets_of(&rec);
        let security_group = self.sg_judgement(program, ifindex, &rec);
        Ok(self.decision(report.device, stages, &rec, &out, targets, security_group))
    }
}

impl Agent {
    /// The reply of a traced run: the record `rec` the program left and its output `out`.
    fn decision(
        &self,
        port: String,
        program: String,
        rec: &TraceRecord,
        out: &testrun::RunOutput,
        targets: Vec<TraceTarget>,
        security_group: Option<String>,
    ) -> TraceReply {
        let reason = DropReason::from_index(rec.reason);
        TraceReply {
            port,
            program,
            verdict: if reason.is_some() { "drop" } else { "forward" }.into(),
            reason: reason.map(|r| r.label().to_string()),
            action: if reason.is_none() {
                Action::from_index(rec.action).map(|a| a.label().to_string())
            } else {
                None
            },
            network: self.network_id(rec.net_index),
            local_index: rec.net_index,
            targets,
            tc_verdict: out.retval,
            frame_out: out.frame.iter().map(|b| format!("{b:02x}")).collect(),
            security_group,
        }
    }

    /// The destinations a traced run recorded.
    fn targets_of(&self, rec: &TraceRecord) -> Vec<TraceTarget> {
        rec.targets[..(rec.target_count as usize).min(rec.targets.len())]
            .iter()
            .map(|t| TraceTarget {
                device: self.device_of(t.ifindex),
                ifindex: t.ifindex,
                vlan: t.vlan,
                vtep: (t.vtep_ipv4 != 0).then(|| std::net::Ipv4Addr::from(t.vtep_ipv4).to_string()),
                vni: t.vni,
            })
            .collect()
    }

    fn clear_trace(&mut self) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let zero = PerCpuValues::try_from(vec![bytemuck::Zeroable::zeroed(); cpus])?;
        self.dp.maps.trace.set(0, zero, 0).context("clearing TRACE")
    }

    /// `trace` through an uplink's XDP stage, dry: its verdict on `frame`.
    fn trace_xdp(&mut self, report: &PortReport, ifindex: u32, frame: &[u8]) -> Result<TraceReply> {
        self.clear_trace()?;
        let meta: Vec<u8> =
            [TRACE_MAGIC[0], TRACE_MAGIC[1], TRACE_DRY_RUN].iter().flat_map(|w| w.to_ne_bytes()).collect();
        let out = testrun::run_xdp(self.dp.xdp_program(names::PROG_UPLINK_XDP)?, frame, ifindex, &meta)?;
        let per_cpu = self.dp.maps.trace.get(&0, 0).context("reading TRACE")?;
        let rec =
            per_cpu.iter().find(|r| r.valid == 1).copied().context("the XDP stage wrote no trace record")?;
        let targets = self.targets_of(&rec);
        Ok(self.decision(report.device.clone(), names::PROG_UPLINK_XDP.into(), &rec, &out, targets, None))
    }
}

/// A failure as the control protocol reports it: the `ApiError` it carries, else `failed`.
fn api_error(e: anyhow::Error) -> ApiError {
    match e.downcast_ref::<ApiError>() {
        Some(api) => api.clone(),
        None => ApiError::new(ErrorKind::Failed, format!("{e:#}")),
    }
}

/// A port's counters by label: every action, and the drop reasons that counted any.
fn labelled(c: &PortCounters) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let actions = Action::ALL.iter().map(|a| (a.label().to_string(), c.actions[*a as usize])).collect();
    let drops = DropReason::ALL
        .iter()
        .filter(|r| c.drops[**r as usize] != 0)
        .map(|r| (r.label().to_string(), c.drops[*r as usize]))
        .collect();
    (actions, drops)
}

/// A port's report as a row of `ports`.
fn port_row(p: &PortReport) -> PortRow {
    let detail = match &p.state {
        PortState::Error(e) => e.clone(),
        _ => String::new(),
    };
    let (trunk_id, parent, vid) = match &p.trunk {
        Some(TrunkRole::Parent { trunk_id }) => (Some(trunk_id.clone()), None, None),
        Some(TrunkRole::Subport { trunk_id, parent, vid }) => {
            (Some(trunk_id.clone()), Some(parent.clone()), Some(*vid))
        }
        None => (None, None, None),
    };
    PortRow {
        device: p.device.clone(),
        port_id: p.id.clone(),
        kind: p.kind.to_string(),
        ifindex: p.ifindex,
        network: p.network_id.clone(),
        local_index: p.net_index,
        state: state_name(&p.state).to_string(),
        detail,
        trunk_id,
        parent,
        vid,
        qos_policy_id: p.qos_policy.clone(),
    }
}

/// An error that tells the client the port or network it named is not here.
fn not_found(message: String) -> anyhow::Error {
    ApiError::new(ErrorKind::NotFound, message).into()
}

/// An error that tells the client its request was wrong.
fn bad_request(message: String) -> anyhow::Error {
    ApiError::new(ErrorKind::BadRequest, message).into()
}

fn state_name(s: &PortState) -> &'static str {
    match s {
        PortState::Up => "up",
        PortState::AdminDown => "admin_down",
        PortState::NoDevice => "no_device",
        PortState::Unbound => "unbound",
        PortState::Error(_) => "error",
    }
}

/// Hex bytes, with optional spaces, colons or a 0x prefix.
pub fn parse_hex(text: &str) -> Result<Vec<u8>> {
    let clean: Vec<char> =
        text.trim().trim_start_matches("0x").chars().filter(|c| !c.is_whitespace() && *c != ':').collect();
    // Checked per character: slicing the text by byte offsets would split a
    // multi-byte character and panic (a request the fuzzer found).
    if let Some(at) = clean.iter().position(|c| !c.is_ascii_hexdigit()) {
        bail!("bad hex {:?} at digit {at}", clean[at]);
    }
    if !clean.len().is_multiple_of(2) {
        bail!("hex frame has an odd number of digits ({})", clean.len());
    }
    Ok(clean
        .chunks(2)
        .map(|pair| {
            let digit = |c: char| c.to_digit(16).unwrap_or(0) as u8;
            digit(pair[0]) << 4 | digit(pair[1])
        })
        .collect())
}

/// A protocol's name as `conntrack -L` and Neutron write it, or its number.
fn protocol_name(p: u8) -> String {
    match p {
        PROTO_ICMP => "icmp".into(),
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_DCCP => "dccp".into(),
        PROTO_ICMPV6 => "ipv6-icmp".into(),
        PROTO_SCTP => "sctp".into(),
        PROTO_UDPLITE => "udplite".into(),
        other => other.to_string(),
    }
}

/// One end of a connection: address and port, the ICMP echo identifier, or the address alone.
fn conn_end(k: &CtKey, addr: std::net::IpAddr, port: u16) -> String {
    if has_ports(k.protocol) {
        std::net::SocketAddr::new(addr, port).to_string()
    } else if (k.protocol == PROTO_ICMP || k.protocol == PROTO_ICMPV6) && port != 0 {
        format!("{addr} id {port}")
    } else {
        addr.to_string()
    }
}

fn conn_state(flags: u32) -> &'static str {
    if flags & CT_F_RST != 0 {
        "reset"
    } else if flags & (CT_F_FIN_ORIG | CT_F_FIN_REPLY) != 0 {
        "closing"
    } else if flags & CT_F_REPLIED != 0 {
        "established"
    } else {
        "new"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_frames_parse_with_separators() {
        assert_eq!(parse_hex("ff:ff 0a").unwrap(), vec![0xff, 0xff, 0x0a]);
        assert_eq!(parse_hex("0x0102").unwrap(), vec![1, 2]);
        assert!(parse_hex("abc").unwrap_err().to_string().contains("odd"));
        assert!(parse_hex("zz").unwrap_err().to_string().contains("digit 0"));
        // Found by the input fuzzer: a multi-byte character where a digit should be.
        assert!(parse_hex("`\u{1060}").unwrap_err().to_string().contains("bad hex"));
        assert!(parse_hex("0é").unwrap_err().to_string().contains("digit 1"));
    }
}
