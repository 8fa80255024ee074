//! What the agent knows from neutron-server, as plain data: the details of
//! its local devices, l2population's FDB, and what it told neutron about each
//! device. Every notification handler is idempotent (the server sends some
//! twice); the async side (`l2agent`) only moves messages in and out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::model;
use super::notify::{FdbPort, NetworkFdb, Notification};
use super::plugin::{Details, DeviceDetails};
use super::secgroups::SgInfo;
use crate::bindings::{Bindings, Catalog, CatalogDelta, Refusal, Security, device_name};

/// A device whose details neutron refused or failed is asked again after this long.
pub const RETRY_REFUSED: Duration = Duration::from_secs(10);

/// How the last reconciliation left a local device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wired {
    /// Programmed and forwarding.
    Up,
    /// Programmed, administratively down.
    AdminDown,
    /// A tap without a binding: its details are needed.
    Unbound,
    /// Bound, but the datapath refused it (see `datapath ports`).
    Failed,
}

/// What neutron was last told about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Told {
    port_id: String,
    up: bool,
}

/// The agent's view of neutron, for one host.
#[derive(Debug)]
pub struct NeutronState {
    host: String,
    /// Device details by device name (`tap` + 11 characters of the port id).
    details: BTreeMap<String, DeviceDetails>,
    /// l2population's entries by network id.
    fdb: BTreeMap<String, NetworkFdb>,
    /// Local devices as the last reconciliation saw them.
    present: BTreeMap<String, Wired>,
    /// What neutron was told about each device, by device name.
    told: BTreeMap<String, Told>,
    /// Devices neutron refused, with why and when to ask again.
    refused: BTreeMap<String, (String, Instant)>,
    /// Devices whose details must be fetched again (port or network updated, resync).
    stale: BTreeSet<String>,
    /// Set after a (re)start or resync: the next `update_device_list` asks l2pop for the full FDB.
    refresh_tunnels: bool,
    /// Port ids whose details the bindings refused (unknown network type, bad MAC, ...), with their network.
    rejected: BTreeMap<String, String>,
    /// The devices with details, by network.
    net_devices: BTreeMap<String, BTreeSet<String>>,
    /// Networks whose entry in `catalog` is out of date.
    dirty: BTreeSet<String>,
    /// The bindings by network, rebuilt network by network.
    catalog: Catalog,
    /// Present devices without details: what to ask neutron for.
    missing: BTreeSet<String>,
    /// Devices whose state may differ from what neutron was told.
    unreported: BTreeSet<String>,
    /// What the bindings refused, by network.
    refusals: BTreeMap<String, Vec<Refusal>>,
    /// The last `security_group_info_for_devices` answer for the devices with details.
    sg: Option<SgInfo>,
    /// Whether it must be asked again (a device came or went, a group changed, a resync).
    sg_stale: bool,
    /// Whether the groups or their members changed since the last delta.
    security_dirty: bool,
}

/// Devices to report to neutron: port ids up and down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// (device, port id) to report up.
    pub up: Vec<(String, String)>,
    /// (device, port id) to report down.
    pub down: Vec<(String, String)>,
}

impl Report {
    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.up.is_empty() && self.down.is_empty()
    }
}

impl NeutronState {
    /// A state that knows nothing yet; the first report asks for the full FDB.
    pub fn new(host: &str) -> Self {
        Self {
            host: host.to_string(),
            details: BTreeMap::new(),
            fdb: BTreeMap::new(),
            present: BTreeMap::new(),
            told: BTreeMap::new(),
            refused: BTreeMap::new(),
            stale: BTreeSet::new(),
            refresh_tunnels: true,
            rejected: BTreeMap::new(),
            net_devices: BTreeMap::new(),
            dirty: BTreeSet::new(),
            catalog: Catalog::default(),
            refusals: BTreeMap::new(),
            missing: BTreeSet::new(),
            unreported: BTreeSet::new(),
            sg: None,
            sg_stale: true,
            security_dirty: false,
        }
    }

    /// The ports whose security groups to ask neutron for now (every port
    /// with details: one answer holds the groups of all of them), or None.
    pub fn sg_to_fetch(&self) -> Option<Vec<String>> {
        self.sg_stale.then(|| self.details.values().map(|d| d.port_id.clone()).collect())
    }

    /// Whether the security groups of the ports are known (the bindings wait for them).
    pub fn sg_ready(&self) -> bool {
        !self.sg_stale
    }

    /// Takes in the security groups of every port with details. Returns
    /// whether the bindings changed.
    pub fn sg_fetched(&mut self, info: SgInfo) -> bool {
        self.sg_stale = false;
        for r in &info.refused {
            log::warn!("neutron's security groups: refused {}: {}", r.what, r.reason);
        }
        let old = self.sg.take();
        let mut changed = false;
        for (dev, d) in &self.details {
            let before = old.as_ref().map(|o| o.ports.get(&d.port_id));
            if before != Some(info.ports.get(&d.port_id)) {
                self.dirty.insert(d.network_id.clone());
                self.unreported.insert(dev.clone());
                changed = true;
            }
        }
        if old.as_ref().is_none_or(|o| {
            o.groups != info.groups || o.members != info.members || o.address_groups != info.address_groups
        }) {
            self.security_dirty = true;
            changed = true;
        }
        self.sg = Some(info);
        changed
    }

    /// The networks whose bindings changed since the last call, rebuilt from
    /// the details and the FDB (the others are not touched), or None. Details
    /// the bindings refuse are logged with why, and their ports reported down.
    pub fn take_delta(&mut self) -> Result<Option<CatalogDelta>> {
        if self.dirty.is_empty() && !self.security_dirty {
            return Ok(None);
        }
        let mut delta = CatalogDelta::default();
        if std::mem::take(&mut self.security_dirty)
            && let Some(info) = &self.sg
        {
            delta.security = Some(std::sync::Arc::new(Security {
                groups: info.groups.iter().map(|g| (g.id.clone(), g.clone())).collect(),
                address_groups: info.address_groups.iter().map(|a| (a.id.clone(), a.clone())).collect(),
                members: Some(info.members.clone()),
            }));
        }
        for net in std::mem::take(&mut self.dirty) {
            let devices: Vec<String> = self.net_devices.get(&net).into_iter().flatten().cloned().collect();
            let details: Vec<DeviceDetails> =
                devices.iter().filter_map(|d| self.details.get(d).cloned()).collect();
            let fdb: BTreeMap<String, NetworkFdb> =
                self.fdb.get(&net).map(|f| (net.clone(), f.clone())).into_iter().collect();
            let b = if details.is_empty() {
                Bindings::default()
            } else {
                model::bindings(&self.host, &details, &fdb, self.sg.as_ref().map(|s| &s.ports))?
            };
            self.note_rejected(&net, &details, &b);
            self.unreported.extend(devices);
            if b.refused.is_empty() {
                self.refusals.remove(&net);
            } else {
                self.refusals.insert(net.clone(), b.refused.clone());
            }
            let entry = Catalog::split(b).networks.into_values().next();
            delta.networks.push((net, entry));
        }
        delta.refused = self.refusals.values().flatten().cloned().collect();
        self.catalog.apply(delta.clone());
        Ok(Some(delta))
    }

    /// The bindings by network as of the last `take_delta`.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Logs details of `net` that the bindings refused, once, and remembers their ports.
    fn note_rejected(&mut self, net: &str, details: &[DeviceDetails], b: &Bindings) {
        let before: BTreeSet<String> =
            self.rejected.iter().filter(|(_, n)| *n == net).map(|(p, _)| p.clone()).collect();
        self.rejected.retain(|_, n| n != net);
        let accepted: BTreeSet<&str> = b.ports.iter().map(|p| p.id.as_str()).collect();
        for d in details.iter().filter(|d| !accepted.contains(d.port_id.as_str())) {
            if !before.contains(&d.port_id) {
                let why: Vec<&str> = b
                    .refused
                    .iter()
                    .filter(|r| r.what.contains(d.port_id.as_str()) || r.what.contains(net))
                    .map(|r| r.reason.as_str())
                    .collect();
                log::error!("port {}: neutron's details cannot be programmed: {}", d.port_id, why.join("; "));
            }
            self.rejected.insert(d.port_id.clone(), net.to_string());
        }
    }

    /// Every network's bindings in one (tests and tools).
    pub fn bindings(&mut self) -> Result<Bindings> {
        self.take_delta()?;
        Ok(self.catalog.subset(&self.catalog.networks.keys().cloned().collect()))
    }

    /// Records `dev`'s details. Returns whether they changed.
    fn put_detail(&mut self, dev: &str, d: DeviceDetails) -> bool {
        if self.details.get(dev) == Some(&d) {
            return false;
        }
        self.drop_detail(dev);
        self.missing.remove(dev);
        self.unreported.insert(dev.to_string());
        self.dirty.insert(d.network_id.clone());
        self.net_devices.entry(d.network_id.clone()).or_default().insert(dev.to_string());
        self.details.insert(dev.to_string(), d);
        // A new port's groups (or a changed port's addresses, which are members) must be asked.
        self.sg_stale = true;
        true
    }

    /// Forgets `dev`'s details. Returns whether it had any.
    fn drop_detail(&mut self, dev: &str) -> bool {
        let Some(old) = self.details.remove(dev) else { return false };
        self.dirty.insert(old.network_id.clone());
        self.sg_stale = true;
        self.unreported.insert(dev.to_string());
        if self.present.contains_key(dev) {
            self.missing.insert(dev.to_string());
        }
        if let Some(set) = self.net_devices.get_mut(&old.network_id) {
            set.remove(dev);
            if set.is_empty() {
                self.net_devices.remove(&old.network_id);
            }
        }
        true
    }

    /// Devices with details.
    pub fn known(&self) -> usize {
        self.details.len()
    }

    /// Devices refused by neutron or the datapath, with why.
    pub fn refused(&self) -> impl Iterator<Item = (&str, &str)> {
        self.refused.iter().map(|(d, (why, _))| (d.as_str(), why.as_str()))
    }

    /// Takes in the local devices after a reconciliation. Returns whether the
    /// bindings changed (details of vanished devices are dropped).
    pub fn observe(&mut self, present: BTreeMap<String, Wired>) -> bool {
        let mut changes: Vec<(String, Option<Wired>)> =
            self.present.keys().filter(|d| !present.contains_key(*d)).map(|d| (d.clone(), None)).collect();
        changes.extend(
            present.into_iter().filter(|(d, w)| self.present.get(d) != Some(w)).map(|(d, w)| (d, Some(w))),
        );
        self.observe_changes(changes)
    }

    /// Takes in the devices whose state changed (None: gone), in time that
    /// grows with the changes only. Returns whether the bindings changed.
    pub fn observe_changes(&mut self, changes: impl IntoIterator<Item = (String, Option<Wired>)>) -> bool {
        let mut changed = false;
        for (dev, state) in changes {
            match state {
                Some(w) => {
                    if !self.details.contains_key(&dev) {
                        self.missing.insert(dev.clone());
                    }
                    if self.present.insert(dev.clone(), w) != Some(w) {
                        self.unreported.insert(dev);
                    }
                }
                None => {
                    if self.present.remove(&dev).is_none() {
                        continue;
                    }
                    self.missing.remove(&dev);
                    self.refused.remove(&dev);
                    self.stale.remove(&dev);
                    changed |= self.drop_detail(&dev);
                    self.unreported.insert(dev);
                }
            }
        }
        changed
    }

    /// Forgets every detail's freshness: the next fetch asks for all present devices again.
    pub fn resync(&mut self) {
        self.stale.extend(self.present.keys().cloned());
        self.refused.clear();
        // Told again, so that neutron's view and l2population's FDB are rebuilt.
        self.told.clear();
        self.unreported.extend(self.details.keys().cloned());
        self.refresh_tunnels = true;
        self.sg_stale = true;
    }

    /// The devices whose details to ask for now.
    pub fn to_fetch(&self, now: Instant) -> Vec<String> {
        let waiting = |d: &String| self.refused.get(d).is_some_and(|(_, at)| *at > now);
        let wanted: BTreeSet<&String> =
            self.missing.iter().filter(|d| !waiting(d)).chain(self.stale.iter()).collect();
        wanted.into_iter().cloned().collect()
    }

    /// When the next refused device is due to be asked again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.refused.values().map(|(_, at)| *at).min()
    }

    /// Takes in the answer for `asked`. Returns whether the bindings changed.
    pub fn fetched(&mut self, asked: &[String], answer: Details, now: Instant) -> bool {
        let mut changed = false;
        for d in answer.devices {
            let Some(dev) = asked.iter().find(|a| device_name(&d.port_id) == **a) else {
                log::warn!("neutron sent details of {} ({}), which was not asked for", d.device, d.port_id);
                continue;
            };
            self.stale.remove(dev);
            self.refused.remove(dev);
            changed |= self.put_detail(dev, d);
        }
        let failed =
            answer.failed_devices.iter().map(|d| (d.clone(), "neutron failed to get its details".into()));
        for (name, why) in answer.refused.into_iter().chain(failed) {
            let dev = if name.starts_with("tap") { name.clone() } else { device_name(&name) };
            if !asked.contains(&dev) {
                continue;
            }
            log::warn!("neutron gave no usable details for {dev}: {why}; asking again in {RETRY_REFUSED:?}");
            self.stale.remove(&dev);
            changed |= self.drop_detail(&dev);
            self.refused.insert(dev, (why, now + RETRY_REFUSED));
        }
        changed
    }

    /// The devices whose state neutron has not been told yet: programmed ports
    /// go up; admin-down, refused and vanished ones go down.
    /// Only the devices whose state changed since they were last reported are looked at.
    pub fn to_report(&mut self) -> Report {
        let mut r = Report::default();
        let mut settled = Vec::new();
        for dev in &self.unreported {
            let Some(d) = self.details.get(dev) else {
                match self.told.get(dev) {
                    Some(told) if told.up => r.down.push((dev.clone(), told.port_id.clone())),
                    _ => settled.push(dev.clone()),
                }
                continue;
            };
            let up = match self.present.get(dev) {
                _ if self.rejected.contains_key(&d.port_id) => false,
                Some(Wired::Up) => true,
                Some(Wired::AdminDown | Wired::Failed) => false,
                // Not programmed yet: the next reconciliation decides.
                Some(Wired::Unbound) | None => continue,
            };
            if self.told.get(dev) == Some(&Told { port_id: d.port_id.clone(), up }) {
                settled.push(dev.clone());
            } else {
                let entry = (dev.clone(), d.port_id.clone());
                if up { r.up.push(entry) } else { r.down.push(entry) }
            }
        }
        for dev in settled {
            self.unreported.remove(&dev);
        }
        r
    }

    /// On a restart over maps that still forward: every admin-up port with
    /// details, to report up before the first bindings (see `l2agent`).
    pub fn prime(&self) -> Report {
        let up = self
            .details
            .iter()
            .filter(|(_, d)| d.admin_state_up)
            .map(|(dev, d)| (dev.clone(), d.port_id.clone()))
            .collect();
        Report { up, down: Vec::new() }
    }

    /// Whether the next `update_device_list` should ask for the full FDB.
    pub fn refresh_tunnels(&self) -> bool {
        self.refresh_tunnels
    }

    /// Records a report that neutron accepted.
    pub fn reported(&mut self, r: &Report) {
        for (dev, port_id) in &r.up {
            self.told.insert(dev.clone(), Told { port_id: port_id.clone(), up: true });
            self.unreported.remove(dev);
        }
        for (dev, port_id) in &r.down {
            self.unreported.remove(dev);
            if self.details.contains_key(dev) {
                self.told.insert(dev.clone(), Told { port_id: port_id.clone(), up: false });
            } else {
                self.told.remove(dev);
            }
        }
        if !r.up.is_empty() {
            self.refresh_tunnels = false;
        }
    }

    /// Applies a notification. Returns whether the bindings changed; details
    /// to fetch again show in `to_fetch`.
    pub fn apply(&mut self, n: &Notification) -> bool {
        match n {
            Notification::PortUpdate { port_id, .. } => {
                let dev = device_name(port_id);
                if self.present.contains_key(&dev) {
                    self.stale.insert(dev.clone());
                    self.refused.remove(&dev);
                }
                // Its groups, or (for a port of another host) its addresses and
                // allowed address pairs as a member of a remote group, may be
                // what changed: neutron sends no member update for the pairs.
                self.sg_stale = true;
                false
            }
            Notification::PortDelete { port_id } => {
                let dev = device_name(port_id);
                self.told.remove(&dev);
                self.drop_detail(&dev)
            }
            Notification::NetworkUpdate { network_id, .. } => {
                self.stale.extend(self.net_devices.get(network_id).into_iter().flatten().cloned());
                false
            }
            Notification::NetworkDelete { network_id } => {
                let devs: Vec<String> =
                    self.net_devices.get(network_id).into_iter().flatten().cloned().collect();
                let mut changed = false;
                for dev in &devs {
                    changed |= self.drop_detail(dev);
                }
                if self.fdb.remove(network_id).is_some() {
                    self.dirty.insert(network_id.clone());
                    changed = true;
                }
                changed
            }
            Notification::AddFdbEntries(nets) => {
                let mut changed = false;
                for (net, entries) in nets {
                    let have = self.fdb.entry(net.clone()).or_insert_with(|| NetworkFdb {
                        segment_id: entries.segment_id,
                        network_type: entries.network_type.clone(),
                        ports: BTreeMap::new(),
                    });
                    for (vtep, ports) in &entries.ports {
                        if add_ports(have.ports.entry(*vtep).or_default(), ports) {
                            self.dirty.insert(net.clone());
                            changed = true;
                        }
                    }
                }
                changed
            }
            Notification::RemoveFdbEntries(nets) => {
                let mut changed = false;
                for (net, entries) in nets {
                    let Some(have) = self.fdb.get_mut(net) else { continue };
                    for (vtep, ports) in &entries.ports {
                        if remove_ports(&mut have.ports, vtep, ports) {
                            self.dirty.insert(net.clone());
                            changed = true;
                        }
                    }
                    if have.ports.is_empty() {
                        self.fdb.remove(net);
                    }
                }
                changed
            }
            Notification::UpdateFdbEntries(nets) => {
                let mut changed = false;
                for (net, vteps) in nets {
                    let Some(have) = self.fdb.get_mut(net) else { continue };
                    for (vtep, chg) in vteps {
                        let c = remove_ports(&mut have.ports, vtep, &chg.before)
                            | add_ports(have.ports.entry(*vtep).or_default(), &chg.after);
                        if c {
                            self.dirty.insert(net.clone());
                            changed = true;
                        }
                    }
                }
                changed
            }
            Notification::SecurityGroupRuleUpdated { .. }
            | Notification::SecurityGroupMemberUpdated { .. }
            | Notification::SecurityGroupProviderUpdated { .. }
            | Notification::ResourcesPushed { .. } => {
                // One answer holds every local port's groups and the address
                // groups their rules name: ask again, whichever it was.
                self.sg_stale = true;
                true
            }
            Notification::Unknown { method } => {
                log::warn!("neutron sent {method:?}, which this agent does not handle; ignored");
                false
            }
        }
    }
}

fn add_ports(have: &mut Vec<FdbPort>, ports: &[FdbPort]) -> bool {
    let mut changed = false;
    for p in ports {
        if !have.contains(p) {
            have.push(p.clone());
            changed = true;
        }
    }
    changed
}

fn remove_ports(have: &mut BTreeMap<IpAddr, Vec<FdbPort>>, vtep: &IpAddr, ports: &[FdbPort]) -> bool {
    let Some(list) = have.get_mut(vtep) else { return false };
    let before = list.len();
    list.retain(|p| !ports.contains(p));
    let changed = list.len() != before;
    if list.is_empty() {
        have.remove(vtep);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neutron::notify::FdbChange;
    use serde_json::json;
    use std::sync::Arc;

    const PORT: &str = "da64417a-c3f0-4b7e-9d6e-1a2b3c4d5e6f";
    const DEV: &str = "tapda64417a-c3";

    fn detail(port: &str, net: &str, admin: bool) -> DeviceDetails {
        serde_json::from_value(json!({
            "device": &port[..11], "network_id": net, "port_id": port, "mac_address": "fa:16:3e:00:00:01",
            "admin_state_up": admin, "network_type": "vxlan", "segmentation_id": 5000, "physical_network": null,
            "mtu": 1450, "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.5"}], "device_owner": "compute:nova",
            "allowed_address_pairs": [], "port_security_enabled": true
        }))
        .unwrap()
    }

    fn answer(devices: Vec<DeviceDetails>) -> Details {
        Details { devices, refused: vec![], failed_devices: vec![] }
    }

    fn present(devs: &[(&str, Wired)]) -> BTreeMap<String, Wired> {
        devs.iter().map(|(d, w)| (d.to_string(), *w)).collect()
    }

    #[test]
    fn a_port_change_rebuilds_its_network_only() {
        let mut s = NeutronState::new("node0");
        let ports = ["aaaaaaaa-0001-4b7e", "bbbbbbbb-0002-4b7e", "cccccccc-0003-4b7e"];
        let devs: Vec<String> = ports.iter().map(|p| device_name(p)).collect();
        s.observe(devs.iter().map(|d| (d.clone(), Wired::Unbound)).collect());
        let details = vec![detail(ports[0], "n1", true), detail(ports[1], "n2", true)];
        s.fetched(&devs[..2], answer(details), Instant::now());
        let d = s.take_delta().unwrap().unwrap();
        assert_eq!(d.networks.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["n1", "n2"]);
        let first = s.catalog().clone();
        assert_eq!(s.take_delta().unwrap(), None, "nothing changed: no delta");
        // A third port joins n2: n1's entry is kept as it was.
        let mut third = detail(ports[2], "n2", true);
        third.mac_address = "fa:16:3e:00:00:03".into();
        s.fetched(&devs[2..], answer(vec![third]), Instant::now());
        let d = s.take_delta().unwrap().unwrap();
        assert_eq!(d.networks.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["n2"]);
        let second = s.catalog().clone();
        assert!(Arc::ptr_eq(&first.networks["n1"], &second.networks["n1"]));
        assert_eq!(second.networks["n2"].bindings.ports.len(), 2);
        assert_eq!(second.changed_since(&first), ["n2".to_string()].into());
        // Its network deleted: the entry goes.
        s.apply(&Notification::NetworkDelete { network_id: "n2".into() });
        let d = s.take_delta().unwrap().unwrap();
        assert_eq!(d.networks, vec![("n2".to_string(), None)]);
        assert_eq!(s.catalog().networks.keys().collect::<Vec<_>>(), ["n1"]);
    }

    #[test]
    fn a_tap_is_asked_for_programmed_then_reported_up_once() {
        let now = Instant::now();
        let mut s = NeutronState::new("node0");
        assert!(!s.observe(present(&[(DEV, Wired::Unbound)])));
        assert_eq!(s.to_fetch(now), vec![DEV]);
        assert!(s.fetched(&[DEV.into()], answer(vec![detail(PORT, "n1", true)]), now));
        assert_eq!(s.to_fetch(now), Vec::<String>::new());
        assert_eq!(s.bindings().unwrap().ports_on_host("node0").count(), 1);
        // Not programmed yet: nothing to report.
        assert!(s.to_report().is_empty());
        s.observe(present(&[(DEV, Wired::Up)]));
        let r = s.to_report();
        assert_eq!(r.up, vec![(DEV.to_string(), PORT.to_string())]);
        assert!(s.refresh_tunnels());
        s.reported(&r);
        assert!(!s.refresh_tunnels());
        assert!(s.to_report().is_empty(), "reported once");
        // The same details again change nothing.
        assert!(!s.fetched(&[DEV.into()], answer(vec![detail(PORT, "n1", true)]), now));
        // The tap goes away: its details go, and neutron hears it is down.
        assert!(s.observe(present(&[])));
        let r = s.to_report();
        assert_eq!(r.down, vec![(DEV.to_string(), PORT.to_string())]);
        s.reported(&r);
        assert!(s.to_report().is_empty());
    }

    #[test]
    fn admin_down_and_refused_ports_are_reported_down() {
        let now = Instant::now();
        let mut s = NeutronState::new("node0");
        s.observe(present(&[(DEV, Wired::Unbound)]));
        s.fetched(&[DEV.into()], answer(vec![detail(PORT, "n1", false)]), now);
        s.observe(present(&[(DEV, Wired::AdminDown)]));
        let r = s.to_report();
        assert_eq!((r.up.len(), r.down.len()), (0, 1));
        s.reported(&r);
        // A port update makes it stale; new details turn it up.
        s.apply(&Notification::PortUpdate { port_id: PORT.into(), port: json!({"id": PORT}) });
        assert_eq!(s.to_fetch(now), vec![DEV]);
        assert!(s.fetched(&[DEV.into()], answer(vec![detail(PORT, "n1", true)]), now));
        s.observe(present(&[(DEV, Wired::Up)]));
        assert_eq!(s.to_report().up.len(), 1);
    }

    #[test]
    fn security_groups_are_asked_before_the_bindings_and_again_on_notifications() {
        let now = Instant::now();
        let mut s = NeutronState::new("node0");
        s.observe(present(&[(DEV, Wired::Unbound)]));
        assert!(s.fetched(&[DEV.into()], answer(vec![detail(PORT, "n1", true)]), now));
        assert!(!s.sg_ready(), "the bindings wait for the groups");
        assert_eq!(s.sg_to_fetch(), Some(vec![PORT.to_string()]));
        let info = SgInfo {
            ports: [(PORT.to_string(), vec!["sg".to_string()])].into(),
            groups: vec![crate::bindings::SecurityGroup {
                id: "sg".into(),
                name: String::new(),
                stateful: true,
                rules: vec![],
            }],
            ..SgInfo::default()
        };
        assert!(s.sg_fetched(info.clone()));
        assert!(s.sg_ready() && s.sg_to_fetch().is_none());
        let d = s.take_delta().unwrap().expect("the port's network and the groups");
        let sec = d.security.expect("the groups go with the first delta");
        assert!(sec.groups.contains_key("sg") && sec.members.is_some());
        let b = s.bindings().unwrap();
        assert_eq!(b.ports[0].security_groups, Some(vec!["sg".to_string()]));
        assert!(!s.sg_fetched(info.clone()), "the same answer changes nothing");
        assert!(s.take_delta().unwrap().is_none());
        assert!(s.apply(&Notification::SecurityGroupRuleUpdated { security_groups: vec!["sg".into()] }));
        assert_eq!(s.sg_to_fetch(), Some(vec![PORT.to_string()]), "a group changed: asked again");
    }

    #[test]
    fn unknown_devices_wait_before_being_asked_again() {
        let now = Instant::now();
        let mut s = NeutronState::new("node0");
        s.observe(present(&[(DEV, Wired::Unbound)]));
        let refused = Details {
            devices: vec![],
            refused: vec![("da64417a-c3".into(), "neutron does not know this port".into())],
            failed_devices: vec![],
        };
        assert!(!s.fetched(&[DEV.into()], refused, now));
        assert_eq!(s.to_fetch(now), Vec::<String>::new());
        assert_eq!(s.refused().next(), Some((DEV, "neutron does not know this port")));
        assert_eq!(s.to_fetch(now + RETRY_REFUSED), vec![DEV]);
        assert_eq!(s.next_retry(), Some(now + RETRY_REFUSED));
        // A resync asks at once.
        s.resync();
        assert_eq!(s.to_fetch(now), vec![DEV]);
    }

    #[test]
    fn details_the_datapath_cannot_program_are_reported_down() {
        let now = Instant::now();
        let mut s = NeutronState::new("node0");
        s.observe(present(&[(DEV, Wired::Unbound)]));
        let mut d = detail(PORT, "n1", true);
        d.network_type = "geneve".into();
        s.fetched(&[DEV.into()], answer(vec![d]), now);
        assert_eq!(s.bindings().unwrap().ports.len(), 0);
        assert_eq!(s.to_report().down, vec![(DEV.to_string(), PORT.to_string())]);
    }

    #[test]
    fn port_and_network_deletes_drop_details() {
        let now = Instant::now();
        let mut s = NeutronState::new("node0");
        let other = "eeeeeeee-c3f0-4b7e-9d6e-1a2b3c4d5e6f";
        s.observe(present(&[(DEV, Wired::Unbound), ("tapeeeeeeee-c3", Wired::Unbound)]));
        s.fetched(
            &[DEV.into(), "tapeeeeeeee-c3".into()],
            answer(vec![detail(PORT, "n1", true), detail(other, "n2", true)]),
            now,
        );
        assert!(s.apply(&Notification::PortDelete { port_id: PORT.into() }));
        assert!(!s.apply(&Notification::PortDelete { port_id: PORT.into() }), "idempotent");
        assert!(s.apply(&Notification::NetworkDelete { network_id: "n2".into() }));
        assert_eq!(s.known(), 0);
    }

    #[test]
    fn l2pop_entries_are_added_updated_and_removed_idempotently() {
        let now = Instant::now();
        let mut s = NeutronState::new("node0");
        s.observe(present(&[(DEV, Wired::Unbound)]));
        s.fetched(&[DEV.into()], answer(vec![detail(PORT, "n1", true)]), now);
        let vtep: IpAddr = "192.0.2.11".parse().unwrap();
        let p = |mac: &str, ip: &str| FdbPort { mac: mac.into(), ip: ip.into() };
        let net = |ports: Vec<FdbPort>| {
            BTreeMap::from([(
                "n1".to_string(),
                NetworkFdb {
                    segment_id: Some(5000),
                    network_type: "vxlan".into(),
                    ports: BTreeMap::from([(vtep, ports)]),
                },
            )])
        };
        let add = Notification::AddFdbEntries(net(vec![
            p("00:00:00:00:00:00", "0.0.0.0"),
            p("fa:16:3e:00:00:09", "10.0.0.9"),
        ]));
        assert!(s.apply(&add));
        assert!(!s.apply(&add), "the server sends some messages twice");
        let remote = |s: &mut NeutronState| {
            let b = s.bindings().unwrap();
            b.ports_on_host("vtep-192.0.2.11").flat_map(|p| p.fixed_ips.clone()).collect::<Vec<_>>()
        };
        assert_eq!(remote(&mut s), vec!["10.0.0.9".parse::<IpAddr>().unwrap()]);
        let chg = Notification::UpdateFdbEntries(BTreeMap::from([(
            "n1".to_string(),
            BTreeMap::from([(
                vtep,
                FdbChange {
                    before: vec![p("fa:16:3e:00:00:09", "10.0.0.9")],
                    after: vec![p("fa:16:3e:00:00:09", "10.0.0.10")],
                },
            )]),
        )]));
        assert!(s.apply(&chg));
        assert_eq!(remote(&mut s), vec!["10.0.0.10".parse::<IpAddr>().unwrap()]);
        let rm = Notification::RemoveFdbEntries(net(vec![
            p("00:00:00:00:00:00", "0.0.0.0"),
            p("fa:16:3e:00:00:09", "10.0.0.10"),
        ]));
        assert!(s.apply(&rm));
        assert!(!s.apply(&rm));
        assert_eq!(remote(&mut s), Vec::<IpAddr>::new());
        assert!(s.bindings().unwrap().agents.is_empty());
    }
}
