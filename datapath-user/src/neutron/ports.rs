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
use crate::bindings::{Bindings, device_name};

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
    /// Port ids whose details the bindings refused (unknown network type, bad MAC, ...).
    rejected: BTreeSet<String>,
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
            rejected: BTreeSet::new(),
        }
    }

    /// The bindings that the details and the FDB imply. Details they refuse
    /// are logged with why, and their ports are reported down.
    pub fn bindings(&mut self) -> Result<Bindings> {
        let details: Vec<DeviceDetails> = self.details.values().cloned().collect();
        let b = model::bindings(&self.host, &details, &self.fdb)?;
        let accepted: BTreeSet<&str> = b.ports.iter().map(|p| p.id.as_str()).collect();
        let rejected: BTreeSet<String> = details
            .iter()
            .filter(|d| !accepted.contains(d.port_id.as_str()))
            .map(|d| d.port_id.clone())
            .collect();
        for id in rejected.difference(&self.rejected) {
            let why: Vec<&str> = b
                .refused
                .iter()
                .filter(|r| r.what.contains(id.as_str()))
                .map(|r| r.reason.as_str())
                .collect();
            log::error!("port {id}: neutron's details cannot be programmed: {}", why.join("; "));
        }
        self.rejected = rejected;
        Ok(b)
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
        let before = self.details.len();
        self.details.retain(|dev, _| present.contains_key(dev));
        self.refused.retain(|dev, _| present.contains_key(dev));
        self.stale.retain(|dev| present.contains_key(dev));
        self.present = present;
        self.details.len() != before
    }

    /// Forgets every detail's freshness: the next fetch asks for all present devices again.
    pub fn resync(&mut self) {
        self.stale.extend(self.present.keys().cloned());
        self.refused.clear();
        // Told again, so that neutron's view and l2population's FDB are rebuilt.
        self.told.clear();
        self.refresh_tunnels = true;
    }

    /// The devices whose details to ask for now.
    pub fn to_fetch(&self, now: Instant) -> Vec<String> {
        self.present
            .keys()
            .filter(|d| {
                let missing = !self.details.contains_key(*d);
                let waiting = self.refused.get(*d).is_some_and(|(_, at)| *at > now);
                (missing && !waiting) || self.stale.contains(*d)
            })
            .cloned()
            .collect()
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
            if self.details.get(dev) != Some(&d) {
                self.details.insert(dev.clone(), d);
                changed = true;
            }
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
            changed |= self.details.remove(&dev).is_some();
            self.refused.insert(dev, (why, now + RETRY_REFUSED));
        }
        changed
    }

    /// The devices whose state neutron has not been told yet: programmed ports
    /// go up; admin-down, refused and vanished ones go down.
    pub fn to_report(&self) -> Report {
        let mut r = Report::default();
        for (dev, d) in &self.details {
            let up = match self.present.get(dev) {
                _ if self.rejected.contains(&d.port_id) => false,
                Some(Wired::Up) => true,
                Some(Wired::AdminDown | Wired::Failed) => false,
                // Not programmed yet: the next reconciliation decides.
                Some(Wired::Unbound) | None => continue,
            };
            if self.told.get(dev) != Some(&Told { port_id: d.port_id.clone(), up }) {
                let entry = (dev.clone(), d.port_id.clone());
                if up { r.up.push(entry) } else { r.down.push(entry) }
            }
        }
        for (dev, told) in &self.told {
            if told.up && !self.details.contains_key(dev) {
                r.down.push((dev.clone(), told.port_id.clone()));
            }
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
        }
        for (dev, port_id) in &r.down {
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
                false
            }
            Notification::PortDelete { port_id } => {
                let dev = device_name(port_id);
                self.told.remove(&dev);
                self.details.remove(&dev).is_some()
            }
            Notification::NetworkUpdate { network_id, .. } => {
                let devs: Vec<String> = self
                    .details
                    .iter()
                    .filter(|(_, d)| &d.network_id == network_id)
                    .map(|(dev, _)| dev.clone())
                    .collect();
                self.stale.extend(devs);
                false
            }
            Notification::NetworkDelete { network_id } => {
                let before = self.details.len();
                self.details.retain(|_, d| &d.network_id != network_id);
                let fdb = self.fdb.remove(network_id).is_some();
                self.details.len() != before || fdb
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
                        changed |= add_ports(have.ports.entry(*vtep).or_default(), ports);
                    }
                }
                changed
            }
            Notification::RemoveFdbEntries(nets) => {
                let mut changed = false;
                for (net, entries) in nets {
                    let Some(have) = self.fdb.get_mut(net) else { continue };
                    for (vtep, ports) in &entries.ports {
                        changed |= remove_ports(&mut have.ports, vtep, ports);
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
                        changed |= remove_ports(&mut have.ports, vtep, &chg.before);
                        changed |= add_ports(have.ports.entry(*vtep).or_default(), &chg.after);
                    }
                }
                changed
            }
            Notification::SecurityGroupRuleUpdated { .. }
            | Notification::SecurityGroupMemberUpdated { .. }
            | Notification::SecurityGroupProviderUpdated { .. } => {
                log::debug!("security-group notification: security groups are not enforced yet");
                false
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
