//! Reading a binding document: entry by entry, each field checked, a
//! broken entry refused on its own with a reason that names the field.
//! Trunks are read after the ports they name, and mark them as parents and
//! subports; a bad subport costs only itself, not its trunk.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value};

use super::{
    AddressPair, Agent, Bindings, Network, NetworkType, Port, Refusal, SubportOf, Trunk,
    addr::{DEVICE_ID_CHARS, device_name, format_mac, parse_cidr, parse_mac},
    qos, secgroups,
};
use crate::config::check_ifname;

// Neutron's defaults for attributes a document may leave out.
const DEFAULT_MTU: u64 = 1500;
// 68 is the IPv4 minimum (RFC 791); above 65535 the IP length field can't count.
const MTU_RANGE: std::ops::RangeInclusive<u64> = 68..=65535;
// 0 and 4095 are reserved by 802.1Q.
const VLAN_RANGE: std::ops::RangeInclusive<u64> = 1..=4094;
// A 24-bit VNI; 0 is not used by Neutron.
const VNI_RANGE: std::ops::RangeInclusive<u64> = 1..=16_777_215;

type Object = Map<String, Value>;

impl Bindings {
    /// Reads and parses the binding source at `path`; errors name the path.
    pub fn load(path: &Path) -> Result<Bindings> {
        // A FIFO or a device would block the read, and with it the agent's loop, forever.
        let meta = std::fs::metadata(path).with_context(|| format!("reading bindings {}", path.display()))?;
        if !meta.is_file() {
            bail!("reading bindings {}: not a regular file", path.display());
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading bindings {}", path.display()))?;
        Bindings::parse_str(&text, &path.display().to_string())
    }

    /// Parses a binding document; `origin` names its source in errors.
    pub fn parse_str(text: &str, origin: &str) -> Result<Bindings> {
        let doc: Value = serde_json::from_str(text).map_err(|e| syntax_error(&e, origin))?;
        let Value::Object(doc) = doc else {
            bail!(
                "bindings {origin}: the document is {}, not an object like {{\"networks\": [...], \"ports\": [...]}}",
                kind(&doc)
            );
        };
        let networks = top_array(&doc, "networks", origin)?;
        let ports = top_array(&doc, "ports", origin)?;

        let mut out = Bindings::default();
        let refused_nets = out.read_networks(networks);
        let refused_ports = out.read_ports(ports, &refused_nets);
        // Trunks name ports, so they come after them; like agents, a broken list costs only itself.
        match doc.get("trunks") {
            None | Some(Value::Null) => {}
            Some(Value::Array(trunks)) => out.read_trunks(trunks, &refused_ports),
            Some(other) => {
                out.refuse("trunks".into(), format!("\"trunks\" is {}, not an array", kind(other)))
            }
        }
        // Like agents, security groups are optional, and a broken list costs only itself.
        for key in ["security_groups", "address_groups"] {
            match doc.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Array(list)) if key == "security_groups" => {
                    out.security_groups = secgroups::read_security_groups(list, &mut out.refused)
                }
                Some(Value::Array(list)) => {
                    out.address_groups = secgroups::read_address_groups(list, &mut out.refused)
                }
                Some(other) => out.refuse(key.into(), format!("\"{key}\" is {}, not an array", kind(other))),
            }
        }
        match doc.get("qos_policies") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => out.qos_policies = qos::read_qos_policies(list, &mut out.refused),
            Some(other) => out
                .refuse("qos_policies".into(), format!("\"qos_policies\" is {}, not an array", kind(other))),
        }
        out.check_qos_references();
        // Agents only matter for tunnels, so a broken list must not cost the node its L2 ports.
        match doc.get("agents") {
            None | Some(Value::Null) => {}
            Some(Value::Array(agents)) => out.read_agents(agents),
            Some(other) => {
                out.refuse("agents".into(), format!("\"agents\" is {}, not an array", kind(other)))
            }
        }
        Ok(out)
    }

    // A port or network that names no accepted policy keeps working without
    // QoS, and says so: what its policy would enforce is unknown.
    fn check_qos_references(&mut self) {
        let known: HashSet<&str> = self.qos_policies.iter().map(|p| p.id.as_str()).collect();
        let mut notes = Vec::new();
        for n in &mut self.networks {
            if let Some(q) = n.qos_policy_id.take_if(|q| !known.contains(q.as_str())) {
                notes.push((format!("network {}", n.id), q));
            }
        }
        for p in &mut self.ports {
            if let Some(q) = p.qos_policy_id.take_if(|q| !known.contains(q.as_str())) {
                notes.push((format!("port {}", p.id), q));
            }
        }
        for (what, q) in notes {
            self.refuse(what, format!("qos_policy_id {q:?} is no accepted QoS policy: no QoS applies"));
        }
    }

    fn refuse(&mut self, what: String, reason: String) {
        self.refused.push(Refusal { what, reason });
    }

    // Returns the ids of the networks it refused.
    fn read_networks(&mut self, entries: &[Value]) -> HashSet<String> {
        let mut refused = HashSet::new();
        // Every id seen, accepted or not: a second definition of an id is
        // suspect whichever of the two was good.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let (what, id) = label(entry, "networks", "network", "id", i);
            if let Some(id) = id {
                if let Some(j) = seen.get(id) {
                    self.refuse(what, format!("duplicate id: networks[{j}] has the same id"));
                    continue;
                }
                seen.insert(id.to_string(), i);
            }
            match as_object(entry).and_then(network_from) {
                Ok(net) => self.networks.push(net),
                Err(reason) => {
                    refused.extend(id.map(str::to_string));
                    self.refuse(what, reason);
                }
            }
        }
        refused
    }

    // Returns the ids of the ports it refused.
    fn read_ports(&mut self, entries: &[Value], refused_nets: &HashSet<String>) -> HashSet<String> {
        let mut refused = HashSet::new();
        let accepted_nets: HashSet<String> = self.networks.iter().map(|n| n.id.clone()).collect();
        let mut seen: HashMap<String, usize> = HashMap::new();
        // (network id, MAC) -> the port that claimed it first.
        let mut macs: HashMap<(String, [u8; 6]), String> = HashMap::new();
        // (host, tap device name) -> the port that claimed it first: a tap lives on one host.
        let mut devices: HashMap<(String, String), String> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let (what, id) = label(entry, "ports", "port", "id", i);
            if let Some(id) = id {
                if let Some(j) = seen.get(id) {
                    self.refuse(what, format!("duplicate id: ports[{j}] has the same id"));
                    continue;
                }
                seen.insert(id.to_string(), i);
            }
            let port = match as_object(entry).and_then(port_from) {
                Ok(port) => port,
                Err(reason) => {
                    refused.extend(id.map(str::to_string));
                    self.refuse(what, reason);
                    continue;
                }
            };
            if !accepted_nets.contains(&port.network_id) {
                // Say whether the network exists but was refused, so the operator looks in the right place.
                let why = if refused_nets.contains(&port.network_id) {
                    "was refused"
                } else {
                    "is not among the networks"
                };
                self.refuse(what, format!("network_id {:?}: unknown network (it {why})", port.network_id));
                refused.insert(port.id);
                continue;
            }
            // Two ports of one host with one tap name (the first 11 characters of
            // their ids) would be programmed on one device; the first in file order
            // keeps it. On different hosts they are two devices.
            if let Some(other) = devices.get(&(port.host.clone(), port.device_name())) {
                self.refuse(
                    what,
                    format!("its device {} is already the device of port {other}", port.device_name()),
                );
                refused.insert(port.id);
                continue;
            }
            // Two ports with one MAC on one network would steal each other's
            // traffic in the FDB; the first in file order keeps it.
            match macs.get(&(port.network_id.clone(), port.mac)) {
                Some(other) => {
                    self.refuse(
                        what,
                        format!(
                            "mac_address {} is already used on network {} by port {other}",
                            format_mac(&port.mac),
                            port.network_id
                        ),
                    );
                    refused.insert(port.id);
                }
                None => {
                    macs.insert((port.network_id.clone(), port.mac), port.id.clone());
                    devices.insert((port.host.clone(), port.device_name()), port.id.clone());
                    self.ports.push(port);
                }
            }
        }
        refused
    }

    fn read_agents(&mut self, entries: &[Value]) {
        for (i, entry) in entries.iter().enumerate() {
            let (what, _) = label(entry, "agents", "agent", "host", i);
            match as_object(entry).and_then(agent_from) {
                Ok(agent) => self.agents.push(agent),
                Err(reason) => self.refuse(what, reason),
            }
        }
    }

    // Reads the trunks, after the ports: a trunk's parent and subports must
    // be accepted ports, and each port belongs to one trunk at most (the
    // first in file order). A bad subport is refused on its own; its trunk
    // keeps the others.
    fn read_trunks(&mut self, entries: &[Value], refused_ports: &HashSet<String>) {
        let mut refs = PortRefs {
            index: self.ports.iter().enumerate().map(|(i, p)| (p.id.clone(), i)).collect(),
            refused: refused_ports,
            claimed: HashMap::new(),
        };
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let (what, id) = label(entry, "trunks", "trunk", "id", i);
            if let Some(id) = id {
                if let Some(j) = seen.get(id) {
                    self.refuse(what, format!("duplicate id: trunks[{j}] has the same id"));
                    continue;
                }
                seen.insert(id.to_string(), i);
            }
            let parsed = as_object(entry).and_then(trunk_from).and_then(|t| {
                let parent = self.trunk_parent(&t, &refs)?;
                Ok((t, parent))
            });
            let (t, parent) = match parsed {
                Ok(ok) => ok,
                Err(reason) => {
                    self.refuse(what, reason);
                    continue;
                }
            };
            refs.claimed.insert(t.port_id.to_string(), format!("the parent of trunk {}", t.id));
            // VLAN id -> the index of the accepted subport that has it.
            let mut vids: HashMap<u16, usize> = HashMap::new();
            let mut sub_ports = Vec::new();
            for (k, sub) in t.sub_ports.iter().enumerate() {
                let checked = subport_from(k, sub)
                    .and_then(|(port_id, vid)| self.trunk_subport(k, port_id, vid, parent, &refs, &vids));
                match checked {
                    Ok((p, vid)) => {
                        let port = &mut self.ports[p];
                        refs.claimed.insert(port.id.clone(), format!("a subport of trunk {}", t.id));
                        vids.insert(vid, k);
                        port.subport = Some(SubportOf {
                            trunk_id: t.id.to_string(),
                            parent_id: t.port_id.to_string(),
                            vid,
                        });
                        sub_ports.push((port.id.clone(), vid));
                    }
                    Err(reason) => self.refuse(what.clone(), reason),
                }
            }
            self.ports[parent].trunk = Some(t.id.to_string());
            self.trunks.push(Trunk {
                id: t.id.to_string(),
                port_id: t.port_id.to_string(),
                sub_ports,
                admin_state_up: t.admin_state_up,
            });
        }
    }

    // The index of a trunk's parent port, if it may be one.
    fn trunk_parent(&self, t: &TrunkEntry, refs: &PortRefs) -> Result<usize, String> {
        let parent = refs.unclaimed("port_id", t.port_id)?;
        // The subports live on the parent's tap, and they are bound where it is.
        if self.ports[parent].host.is_empty() {
            return Err(format!(
                "port_id {:?}: the parent port is bound to no host (its binding:host_id is empty)",
                t.port_id
            ));
        }
        Ok(parent)
    }

    // Checks a trunk's k-th subport against the ports and the trunks read so
    // far (`vids`: the VLAN ids its trunk's earlier subports took); returns
    // its port's index and its VLAN id.
    fn trunk_subport(
        &self,
        k: usize,
        port_id: &str,
        vid: u16,
        parent: usize,
        refs: &PortRefs,
        vids: &HashMap<u16, usize>,
    ) -> Result<(usize, u16), String> {
        let field = format!("sub_ports[{k}].port_id");
        if refs.index.get(port_id) == Some(&parent) {
            return Err(format!("{field} {port_id:?} is the trunk's parent port"));
        }
        let p = refs.unclaimed(&field, port_id)?;
        if let Some(j) = vids.get(&vid) {
            return Err(format!("sub_ports[{k}].segmentation_id {vid} is already subport sub_ports[{j}]'s"));
        }
        // Neutron binds a subport to its parent's host; elsewhere it would have no tap to live on.
        let (host, parent_host) = (&self.ports[p].host, &self.ports[parent].host);
        if host != parent_host {
            let bound = if host.is_empty() {
                "is bound to no host".to_string()
            } else {
                format!("is bound to host {host:?}")
            };
            return Err(format!("{field} {port_id:?} {bound}, not to its parent's host {parent_host:?}"));
        }
        Ok((p, vid))
    }
}

// A trunk entry's own fields, before its ports are looked up.
struct TrunkEntry<'a> {
    id: &'a str,
    port_id: &'a str,
    admin_state_up: bool,
    sub_ports: &'a [Value],
}

fn trunk_from(obj: &Object) -> Result<TrunkEntry<'_>, String> {
    Ok(TrunkEntry {
        id: required_str(obj, "id")?,
        port_id: required_str(obj, "port_id")?,
        admin_state_up: opt_bool(obj, "admin_state_up")?.unwrap_or(true),
        sub_ports: opt_array(obj, "sub_ports")?,
    })
}

// The k-th subport's own fields: its port id and VLAN id.
fn subport_from(k: usize, entry: &Value) -> Result<(&str, u16), String> {
    let field = format!("sub_ports[{k}]");
    let obj = entry.as_object().ok_or_else(|| format!("{field} is {}, not an object", kind(entry)))?;
    let port_id = required_str(obj, "port_id").map_err(|e| format!("{field}.{e}"))?;
    match opt_str(obj, "segmentation_type").map_err(|e| format!("{field}.{e}"))? {
        Some("vlan") => {}
        // "inherit" would take the subport network's segmentation id; Neutron's
        // OVS and Linux bridge trunk drivers refuse it too.
        Some(other) => {
            return Err(format!(
                "{field}.segmentation_type {other:?} is not supported: only \"vlan\" is, \
                 as with Neutron's OVS and Linux bridge drivers"
            ));
        }
        None => return Err(format!("{field}.segmentation_type is missing; it must be \"vlan\"")),
    }
    let vid = opt_uint(obj, "segmentation_id").map_err(|e| format!("{field}.{e}"))?;
    let vid = in_range(vid, &format!("{field}.segmentation_id"), VLAN_RANGE, "VLAN id")?;
    // In range, so it fits.
    Ok((port_id, vid as u16))
}

// What the trunks read so far know of the ports.
struct PortRefs<'a> {
    // Accepted port id -> its index in `Bindings::ports`.
    index: HashMap<String, usize>,
    // The ids of the refused ports, to say why a reference to one fails.
    refused: &'a HashSet<String>,
    // Port id -> its place in the trunk that took it first: "the parent of trunk t1".
    claimed: HashMap<String, String>,
}

impl PortRefs<'_> {
    // The index of the accepted port `id`, if no trunk has it yet; `field` names the reference in reasons.
    fn unclaimed(&self, field: &str, id: &str) -> Result<usize, String> {
        let Some(&p) = self.index.get(id) else {
            let why = if self.refused.contains(id) { "was refused" } else { "is not among the ports" };
            return Err(format!("{field} {id:?} is not an accepted port (it {why})"));
        };
        match self.claimed.get(id) {
            Some(place) => Err(format!("{field} {id:?} is already {place}")),
            None => Ok(p),
        }
    }
}

// serde_json's Display ends in " at line L column C"; say it once, in our words.
fn syntax_error(e: &serde_json::Error, origin: &str) -> anyhow::Error {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let what = full.strip_suffix(&suffix).unwrap_or(&full);
    anyhow!("bindings {origin}: invalid JSON at line {}, column {}: {what}", e.line(), e.column())
}

fn top_array<'a>(doc: &'a Object, key: &str, origin: &str) -> Result<&'a [Value]> {
    match doc.get(key) {
        Some(Value::Array(entries)) => Ok(entries),
        None => {
            bail!("bindings {origin}: \"{key}\" is missing; it must be an array as GET /v2.0/{key} returns")
        }
        Some(other) => bail!("bindings {origin}: \"{key}\" is {}, not an array", kind(other)),
    }
}

// How a refused entry is named: by its key field when it has a usable one,
// by its position otherwise. Also returns that key for duplicate checks.
fn label<'a>(entry: &'a Value, list: &str, singular: &str, key: &str, i: usize) -> (String, Option<&'a str>) {
    match entry.get(key).and_then(Value::as_str) {
        Some(k) if !k.is_empty() => (format!("{singular} {k}"), Some(k)),
        _ => (format!("{list}[{i}]"), None),
    }
}

fn as_object(entry: &Value) -> Result<&Object, String> {
    entry.as_object().ok_or_else(|| format!("the entry is {}, not an object", kind(entry)))
}

fn network_from(obj: &Object) -> Result<Network, String> {
    let id = required_str(obj, "id")?.to_string();
    let name = opt_str(obj, "name")?.unwrap_or_default().to_string();
    let network_type = match opt_str(obj, "provider:network_type")? {
        Some("flat") => NetworkType::Flat,
        Some("vlan") => NetworkType::Vlan,
        Some("vxlan") => NetworkType::Vxlan,
        Some(other) => {
            return Err(format!(
                "provider:network_type {other:?} is not supported (only flat, vlan and vxlan are)"
            ));
        }
        // Neutron hides provider attributes from non-admin credentials.
        None => {
            return Err(
                "provider:network_type is missing (provider attributes need admin credentials)".into()
            );
        }
    };
    let type_name = type_name(&network_type);
    let physical_network =
        opt_str(obj, "provider:physical_network")?.filter(|s| !s.is_empty()).map(str::to_string);
    if physical_network.is_none() && network_type != NetworkType::Vxlan {
        return Err(format!("provider:physical_network is missing; a {type_name} network needs one"));
    }
    let segment = opt_uint(obj, "provider:segmentation_id")?;
    let segmentation_id = match network_type {
        // A flat network is untagged: Neutron leaves the id null, and any value would be meaningless.
        NetworkType::Flat => None,
        NetworkType::Vlan => Some(in_range(segment, "provider:segmentation_id", VLAN_RANGE, "VLAN id")?),
        NetworkType::Vxlan => Some(in_range(segment, "provider:segmentation_id", VNI_RANGE, "VNI")?),
    };
    let mtu = opt_uint(obj, "mtu")?.unwrap_or(DEFAULT_MTU);
    if !MTU_RANGE.contains(&mtu) {
        return Err(format!("mtu {mtu} is outside {}..={}", MTU_RANGE.start(), MTU_RANGE.end()));
    }
    Ok(Network {
        id,
        name,
        network_type,
        physical_network,
        segmentation_id,
        // In range above, so it fits.
        mtu: mtu as u32,
        admin_state_up: opt_bool(obj, "admin_state_up")?.unwrap_or(true),
        qos_policy_id: opt_str(obj, "qos_policy_id")?.filter(|s| !s.is_empty()).map(str::to_string),
    })
}

fn in_range(
    value: Option<u64>,
    field: &str,
    range: std::ops::RangeInclusive<u64>,
    what: &str,
) -> Result<u32, String> {
    let (lo, hi) = (range.start(), range.end());
    match value {
        None => Err(format!("{field} is missing; it must be a {what} in {lo}..={hi}")),
        Some(v) if !range.contains(&v) => Err(format!("{field} {v} is outside the {what} range {lo}..={hi}")),
        // Both ranges end well below u32::MAX.
        Some(v) => Ok(v as u32),
    }
}

fn type_name(t: &NetworkType) -> &'static str {
    match t {
        NetworkType::Flat => "flat",
        NetworkType::Vlan => "vlan",
        NetworkType::Vxlan => "vxlan",
    }
}

fn port_from(obj: &Object) -> Result<Port, String> {
    let id = required_str(obj, "id")?;
    if id.chars().count() < DEVICE_ID_CHARS {
        return Err(format!(
            "id {id:?} is shorter than {DEVICE_ID_CHARS} characters, so it names no tap device"
        ));
    }
    // The id becomes part of an interface name, so it must survive the kernel's rules.
    check_ifname(&device_name(id)).map_err(|e| format!("id {id:?} gives no usable device name: {e}"))?;
    let network_id = required_str(obj, "network_id")?.to_string();
    let mac = port_mac(required_str(obj, "mac_address")?, "mac_address")?;

    let mut fixed_ips = Vec::new();
    for (j, entry) in opt_array(obj, "fixed_ips")?.iter().enumerate() {
        let field = format!("fixed_ips[{j}]");
        let entry = entry.as_object().ok_or_else(|| format!("{field} is {}, not an object", kind(entry)))?;
        let ip = required_str(entry, "ip_address").map_err(|e| format!("{field}.{e}"))?;
        let ip =
            ip.parse::<IpAddr>().map_err(|_| format!("{field}.ip_address {ip:?} is not an IP address"))?;
        fixed_ips.push(ip);
    }

    let mut allowed_address_pairs = Vec::new();
    for (j, entry) in opt_array(obj, "allowed_address_pairs")?.iter().enumerate() {
        let field = format!("allowed_address_pairs[{j}]");
        let entry = entry.as_object().ok_or_else(|| format!("{field} is {}, not an object", kind(entry)))?;
        let text = required_str(entry, "ip_address").map_err(|e| format!("{field}.{e}"))?;
        let (ip, prefix_len) = parse_cidr(text).map_err(|e| format!("{field}.ip_address {text:?}: {e}"))?;
        let pair_mac = match opt_str(entry, "mac_address").map_err(|e| format!("{field}.{e}"))? {
            Some(s) => port_mac(s, &format!("{field}.mac_address"))?,
            None => mac,
        };
        allowed_address_pairs.push(AddressPair { ip, prefix_len, mac: pair_mac });
    }

    let security_groups = match obj.get("security_groups") {
        None | Some(Value::Null) => None,
        Some(_) => {
            let mut ids = Vec::new();
            for (j, g) in opt_array(obj, "security_groups")?.iter().enumerate() {
                let g = g
                    .as_str()
                    .ok_or_else(|| format!("security_groups[{j}] is {}, not a group id", kind(g)))?;
                ids.push(g.to_string());
            }
            Some(ids)
        }
    };

    Ok(Port {
        id: id.to_string(),
        network_id,
        mac,
        fixed_ips,
        device_owner: opt_str(obj, "device_owner")?.unwrap_or_default().to_string(),
        host: opt_str(obj, "binding:host_id")?.unwrap_or_default().to_string(),
        admin_state_up: opt_bool(obj, "admin_state_up")?.unwrap_or(true),
        port_security_enabled: opt_bool(obj, "port_security_enabled")?.unwrap_or(true),
        allowed_address_pairs,
        security_groups,
        subport: None,
        trunk: None,
        qos_policy_id: opt_str(obj, "qos_policy_id")?.filter(|s| !s.is_empty()).map(str::to_string),
    })
}

// A MAC a port may send from: a group or all-zero source address is never legitimate.
fn port_mac(s: &str, field: &str) -> Result<[u8; 6], String> {
    let mac = parse_mac(s).map_err(|e| format!("{field} {e}"))?;
    if mac == [0; 6] {
        return Err(format!("{field} {s:?} is all zeros"));
    }
    if mac[0] & 1 != 0 {
        return Err(format!("{field} {s:?} is a multicast address; a port needs a unicast MAC"));
    }
    Ok(mac)
}

fn agent_from(obj: &Object) -> Result<Agent, String> {
    let host = required_str(obj, "host")?.to_string();
    let agent_type = opt_str(obj, "agent_type")?.unwrap_or_default().to_string();
    let tunneling_ip = match obj.get("configurations") {
        None | Some(Value::Null) => None,
        Some(Value::Object(conf)) => {
            match opt_str(conf, "tunneling_ip").map_err(|e| format!("configurations.{e}"))? {
                // Agents without tunnels report an empty string.
                None | Some("") => None,
                Some(s) => Some(
                    s.parse::<Ipv4Addr>()
                        .map_err(|_| format!("configurations.tunneling_ip {s:?} is not an IPv4 address"))?,
                ),
            }
        }
        Some(other) => {
            return Err(format!("configurations is {}, not an object", kind(other)));
        }
    };
    Ok(Agent { host, agent_type, tunneling_ip })
}

// Field access. JSON null counts as absent: Neutron writes null for unset attributes.

fn present<'a>(obj: &'a Object, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn opt_str<'a>(obj: &'a Object, key: &str) -> Result<Option<&'a str>, String> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(format!("{key} must be a string, not {}", shown(v))),
    }
}

fn required_str<'a>(obj: &'a Object, key: &str) -> Result<&'a str, String> {
    match opt_str(obj, key)? {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(format!("{key} is empty")),
        None => Err(format!("{key} is missing")),
    }
}

fn opt_bool(obj: &Object, key: &str) -> Result<Option<bool>, String> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(format!("{key} must be true or false, not {}", shown(v))),
    }
}

fn opt_uint(obj: &Object, key: &str) -> Result<Option<u64>, String> {
    match present(obj, key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{key} must be a non-negative integer, not {}", shown(v))),
    }
}

fn opt_array<'a>(obj: &'a Object, key: &str) -> Result<&'a [Value], String> {
    match present(obj, key) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(v) => Err(format!("{key} must be an array, not {}", shown(v))),
    }
}

// A value as JSON, cut short so that one huge field can't flood the log.
fn shown(v: &Value) -> String {
    const MAX: usize = 60;
    let s = v.to_string();
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NET: &str = "5f833617-6179-4797-b7c0-7d420d84040c";
    const PORT: &str = "02407769-97c6-45ae-8fba-ea464020951c";

    const EXAMPLE: &str = r#"{"networks": [{"id": "5f833617-6179-4797-b7c0-7d420d84040c", "name": "net1", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 1000, "mtu": 1500, "admin_state_up": true}],
 "ports": [{"id": "02407769-97c6-45ae-8fba-ea464020951c", "network_id": "5f833617-6179-4797-b7c0-7d420d84040c", "mac_address": "fa:16:3e:ad:66:9e", "fixed_ips": [{"subnet_id": "7bdcbbe6-3e4b-4d0b-a1c2-1e1b5c1f5e6d", "ip_address": "10.10.10.2"}], "device_owner": "compute:nova", "binding:host_id": "node0", "admin_state_up": true, "port_security_enabled": true, "allowed_address_pairs": [{"ip_address": "10.10.10.0/24", "mac_address": "fa:16:3e:00:00:01"}]}],
 "agents": [{"host": "node1", "agent_type": "Open vSwitch agent", "configurations": {"tunneling_ip": "192.0.2.11"}}]}"#;

    fn parse(doc: &Value) -> Bindings {
        Bindings::parse_str(&doc.to_string(), "test.json").expect("document should parse")
    }

    fn doc_err(text: &str) -> String {
        let e = Bindings::parse_str(text, "test.json").expect_err("document should be rejected");
        let plain = e.to_string();
        assert_eq!(plain, format!("{e:#}"), "the message should be flat");
        assert!(plain.starts_with("bindings test.json: "), "no origin in: {plain}");
        plain
    }

    fn vlan(id: &str, seg: u64) -> Value {
        json!({"id": id, "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": seg})
    }

    fn port(id: &str, net: &str, mac: &str) -> Value {
        json!({"id": id, "network_id": net, "mac_address": mac, "binding:host_id": "node0"})
    }

    fn pid(n: u8) -> String {
        format!("{n:08x}-0000-4000-8000-000000000000")
    }

    fn mac(n: u8) -> String {
        format!("fa:16:3e:00:00:{n:02x}")
    }

    // Parses one bad network between two good ones; returns the refusal and checks the others survived.
    fn refuse_network(bad: Value) -> Refusal {
        let b = parse(&json!({"networks": [vlan("net-a", 10), bad, vlan("net-b", 11)], "ports": []}));
        let ids: Vec<&str> = b.networks.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["net-a", "net-b"], "refused: {:?}", b.refused);
        assert_eq!(b.refused.len(), 1, "{:?}", b.refused);
        b.refused[0].clone()
    }

    // Same for ports, on network net-a.
    fn refuse_port(bad: Value) -> Refusal {
        let b = parse(&json!({
            "networks": [vlan("net-a", 10)],
            "ports": [port(&pid(1), "net-a", &mac(1)), bad, port(&pid(2), "net-a", &mac(2))],
        }));
        let ids: Vec<&str> = b.ports.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, [pid(1), pid(2)], "refused: {:?}", b.refused);
        assert_eq!(b.refused.len(), 1, "{:?}", b.refused);
        b.refused[0].clone()
    }

    fn assert_refusal(r: &Refusal, what: &str, reason: &str) {
        assert_eq!(r.what, what, "{r:?}");
        assert!(r.reason.contains(reason), "want {reason:?} in {:?}", r.reason);
    }

    #[test]
    fn example_parses_exactly() {
        let b = Bindings::parse_str(EXAMPLE, "example.json").unwrap();
        assert_eq!(
            b,
            Bindings {
                networks: vec![Network {
                    id: NET.into(),
                    name: "net1".into(),
                    network_type: NetworkType::Vlan,
                    physical_network: Some("default".into()),
                    segmentation_id: Some(1000),
                    mtu: 1500,
                    admin_state_up: true,
                    qos_policy_id: None,
                }],
                ports: vec![Port {
                    id: PORT.into(),
                    network_id: NET.into(),
                    mac: [0xfa, 0x16, 0x3e, 0xad, 0x66, 0x9e],
                    fixed_ips: vec!["10.10.10.2".parse().unwrap()],
                    device_owner: "compute:nova".into(),
                    host: "node0".into(),
                    admin_state_up: true,
                    port_security_enabled: true,
                    allowed_address_pairs: vec![AddressPair {
                        ip: "10.10.10.0".parse().unwrap(),
                        prefix_len: 24,
                        mac: [0xfa, 0x16, 0x3e, 0, 0, 1],
                    }],
                    security_groups: None,
                    subport: None,
                    trunk: None,
                    qos_policy_id: None,
                }],
                agents: vec![Agent {
                    host: "node1".into(),
                    agent_type: "Open vSwitch agent".into(),
                    tunneling_ip: Some(Ipv4Addr::new(192, 0, 2, 11)),
                }],
                security_groups: vec![],
                address_groups: vec![],
                trunks: vec![],
                qos_policies: vec![],
                refused: vec![],
            }
        );
        assert_eq!(b.network(NET).unwrap().name, "net1");
        assert!(b.network("nope").is_none());
        assert_eq!(b.ports_on_host("node0").count(), 1);
        assert_eq!(b.ports_on_host("node1").count(), 0);
        assert_eq!(b.ports[0].device_name(), "tap02407769-97");
    }

    #[test]
    fn defaults() {
        let b = parse(&json!({
            "networks": [
                {"id": "net-a", "provider:network_type": "vxlan", "provider:segmentation_id": 77},
                {"id": "net-b", "provider:network_type": "flat", "provider:physical_network": "ext", "name": null, "mtu": null},
            ],
            "ports": [{"id": pid(1), "network_id": "net-a", "mac_address": "FA:16:3E:00:00:01"}],
        }));
        assert!(b.refused.is_empty(), "{:?}", b.refused);
        assert!(b.agents.is_empty());
        assert_eq!(
            b.networks[0],
            Network {
                id: "net-a".into(),
                name: String::new(),
                network_type: NetworkType::Vxlan,
                physical_network: None,
                segmentation_id: Some(77),
                mtu: 1500,
                admin_state_up: true,
                qos_policy_id: None,
            }
        );
        assert_eq!(b.networks[1].network_type, NetworkType::Flat);
        assert_eq!(b.networks[1].segmentation_id, None);
        assert_eq!(b.networks[1].name, "");
        assert_eq!(b.networks[1].mtu, 1500);
        assert_eq!(
            b.ports[0],
            Port {
                id: pid(1),
                network_id: "net-a".into(),
                mac: [0xfa, 0x16, 0x3e, 0, 0, 1],
                fixed_ips: vec![],
                device_owner: String::new(),
                host: String::new(),
                admin_state_up: true,
                port_security_enabled: true,
                allowed_address_pairs: vec![],
                security_groups: None,
                subport: None,
                trunk: None,
                qos_policy_id: None,
            }
        );
    }

    #[test]
    fn explicit_false_flags() {
        let mut p = port(&pid(1), "net-a", &mac(1));
        p["admin_state_up"] = json!(false);
        p["port_security_enabled"] = json!(false);
        let mut n = vlan("net-a", 10);
        n["admin_state_up"] = json!(false);
        let b = parse(&json!({"networks": [n], "ports": [p]}));
        assert!(!b.networks[0].admin_state_up);
        assert!(!b.ports[0].admin_state_up);
        assert!(!b.ports[0].port_security_enabled);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let b = parse(&json!({
            "networks": [{"id": "net-a", "provider:network_type": "vlan", "provider:physical_network": "default",
                "provider:segmentation_id": 5, "tenant_id": "t", "subnets": ["s"], "router:external": false,
                "availability_zones": [], "tags": [], "revision_number": 3, "shared": false}],
            "ports": [{"id": pid(1), "network_id": "net-a", "mac_address": mac(1), "security_groups": ["sg"],
                "binding:vif_type": "ovs", "binding:vif_details": {"port_filter": true}, "status": "ACTIVE",
                "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.5", "extra": 1}],
                "allowed_address_pairs": [{"ip_address": "10.0.0.9", "note": "x"}]}],
            "agents": [{"host": "node1", "id": "a", "alive": true, "configurations": {"bridge_mappings": {}, "tunneling_ip": ""}}],
            "subnets": [{"id": "s"}],
        }));
        assert!(b.refused.is_empty(), "{:?}", b.refused);
        assert_eq!(b.networks.len(), 1);
        assert_eq!(b.ports[0].fixed_ips, vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(b.agents[0].tunneling_ip, None);
        assert_eq!(b.agents[0].agent_type, "");
    }

    #[test]
    fn network_refusals() {
        let mut no_id = vlan("", 12);
        no_id.as_object_mut().unwrap().remove("id");
        let r = refuse_network(no_id);
        assert_refusal(&r, "networks[1]", "id is missing");
        assert_refusal(&refuse_network(vlan("", 12)), "networks[1]", "id is empty");
        assert_refusal(
            &refuse_network(json!("net-x")),
            "networks[1]",
            "the entry is a string, not an object",
        );

        for t in ["geneve", "gre", "local"] {
            let r = refuse_network(json!({"id": "net-x", "provider:network_type": t}));
            assert_refusal(&r, "network net-x", &format!("provider:network_type {t:?} is not supported"));
        }
        let r = refuse_network(json!({"id": "net-x"}));
        assert_refusal(&r, "network net-x", "provider:network_type is missing");

        for seg in [0, 4095] {
            let r = refuse_network(vlan("net-x", seg));
            assert_refusal(
                &r,
                "network net-x",
                &format!("provider:segmentation_id {seg} is outside the VLAN id range 1..=4094"),
            );
        }
        let r = refuse_network(
            json!({"id": "net-x", "provider:network_type": "vlan", "provider:physical_network": "default"}),
        );
        assert_refusal(&r, "network net-x", "provider:segmentation_id is missing");
        let r = refuse_network(
            json!({"id": "net-x", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": "12"}),
        );
        assert_refusal(
            &r,
            "network net-x",
            "provider:segmentation_id must be a non-negative integer, not \"12\"",
        );

        for vni in [0, 16_777_216] {
            let r = refuse_network(
                json!({"id": "net-x", "provider:network_type": "vxlan", "provider:segmentation_id": vni}),
            );
            assert_refusal(
                &r,
                "network net-x",
                &format!("provider:segmentation_id {vni} is outside the VNI range 1..=16777215"),
            );
        }
        let r = refuse_network(json!({"id": "net-x", "provider:network_type": "vxlan"}));
        assert_refusal(&r, "network net-x", "provider:segmentation_id is missing");

        let r = refuse_network(json!({"id": "net-x", "provider:network_type": "flat"}));
        assert_refusal(&r, "network net-x", "provider:physical_network is missing; a flat network needs one");
        let r = refuse_network(
            json!({"id": "net-x", "provider:network_type": "vlan", "provider:physical_network": null, "provider:segmentation_id": 5}),
        );
        assert_refusal(&r, "network net-x", "provider:physical_network is missing; a vlan network needs one");

        for mtu in [67, 65536] {
            let mut n = vlan("net-x", 12);
            n["mtu"] = json!(mtu);
            assert_refusal(&refuse_network(n), "network net-x", &format!("mtu {mtu} is outside 68..=65535"));
        }
        let mut n = vlan("net-x", 12);
        n["admin_state_up"] = json!("yes");
        assert_refusal(
            &refuse_network(n),
            "network net-x",
            "admin_state_up must be true or false, not \"yes\"",
        );
    }

    #[test]
    fn range_edges_are_accepted() {
        let b = parse(&json!({
            "networks": [
                vlan("v1", 1), vlan("v4094", 4094),
                {"id": "x1", "provider:network_type": "vxlan", "provider:segmentation_id": 1},
                {"id": "xmax", "provider:network_type": "vxlan", "provider:segmentation_id": 16_777_215, "mtu": 68},
                {"id": "big", "provider:network_type": "vxlan", "provider:segmentation_id": 9, "mtu": 65535},
            ],
            "ports": [],
        }));
        assert!(b.refused.is_empty(), "{:?}", b.refused);
        assert_eq!(b.networks.len(), 5);
    }

    #[test]
    fn duplicate_network_id() {
        let b = parse(
            &json!({"networks": [vlan("net-a", 10), vlan("net-a", 20), vlan("net-b", 30)], "ports": []}),
        );
        assert_eq!(b.networks.len(), 2);
        assert_eq!(b.networks[0].segmentation_id, Some(10));
        assert_eq!(b.networks[1].id, "net-b");
        assert_eq!(b.refused.len(), 1);
        assert_refusal(&b.refused[0], "network net-a", "duplicate id: networks[0] has the same id");
    }

    #[test]
    fn port_refusals() {
        let mut p = port(&pid(9), "net-a", &mac(9));
        p.as_object_mut().unwrap().remove("id");
        assert_refusal(&refuse_port(p), "ports[1]", "id is missing");
        assert_refusal(
            &refuse_port(port("0240776", "net-a", &mac(9))),
            "port 0240776",
            "id \"0240776\" is shorter than 11 characters",
        );
        assert_refusal(
            &refuse_port(port("0240/776-97c6", "net-a", &mac(9))),
            "port 0240/776-97c6",
            "gives no usable device name",
        );

        let mut p = port(&pid(9), "net-a", &mac(9));
        p.as_object_mut().unwrap().remove("network_id");
        let what = format!("port {}", pid(9));
        assert_refusal(&refuse_port(p), &what, "network_id is missing");

        let mut p = port(&pid(9), "net-a", &mac(9));
        p.as_object_mut().unwrap().remove("mac_address");
        assert_refusal(&refuse_port(p), &what, "mac_address is missing");
        for (bad, why) in [
            ("fa:16:3e:00:00", "is not a MAC address"),
            ("fa-16-3e-00-00-09", "is not a MAC address"),
            ("fa:16:3e:00:00:0g", "is not a MAC address"),
            ("01:00:5e:00:00:01", "is a multicast address"),
            ("ff:ff:ff:ff:ff:ff", "is a multicast address"),
            ("00:00:00:00:00:00", "is all zeros"),
        ] {
            let r = refuse_port(port(&pid(9), "net-a", bad));
            assert_refusal(&r, &what, &format!("mac_address \"{bad}\" {why}"));
        }

        let mut p = port(&pid(9), "net-a", &mac(9));
        p["fixed_ips"] = json!([{"ip_address": "10.0.0.1"}, {"subnet_id": "s", "ip_address": "10.0.0.256"}]);
        assert_refusal(&refuse_port(p), &what, "fixed_ips[1].ip_address \"10.0.0.256\" is not an IP address");
        let mut p = port(&pid(9), "net-a", &mac(9));
        p["fixed_ips"] = json!([{"subnet_id": "s"}]);
        assert_refusal(&refuse_port(p), &what, "fixed_ips[0].ip_address is missing");

        for (ip, why) in [
            ("10.0.0.0/33", "prefix length 33 is over 32"),
            ("2001:db8::/129", "prefix length 129 is over 128"),
            ("10.0.0.0/", "prefix length \"\" is not a number"),
            ("10.0.0.0/+8", "prefix length \"+8\" is not a number"),
            ("10.0.0/24", "\"10.0.0\" is not an IP address"),
            ("bogus", "\"bogus\" is not an IP address"),
        ] {
            let mut p = port(&pid(9), "net-a", &mac(9));
            p["allowed_address_pairs"] = json!([{"ip_address": "10.0.0.7"}, {"ip_address": ip}]);
            assert_refusal(
                &refuse_port(p),
                &what,
                &format!("allowed_address_pairs[1].ip_address {ip:?}: {why}"),
            );
        }
        let mut p = port(&pid(9), "net-a", &mac(9));
        p["allowed_address_pairs"] = json!([{"ip_address": "10.0.0.7", "mac_address": "nope"}]);
        assert_refusal(
            &refuse_port(p),
            &what,
            "allowed_address_pairs[0].mac_address \"nope\" is not a MAC address",
        );
        let mut p = port(&pid(9), "net-a", &mac(9));
        p["allowed_address_pairs"] = json!([{"ip_address": "10.0.0.7", "mac_address": "33:33:00:00:00:01"}]);
        assert_refusal(
            &refuse_port(p),
            &what,
            "allowed_address_pairs[0].mac_address \"33:33:00:00:00:01\" is a multicast address",
        );
        let mut p = port(&pid(9), "net-a", &mac(9));
        p["allowed_address_pairs"] = json!({"ip_address": "10.0.0.7"});
        assert_refusal(&refuse_port(p), &what, "allowed_address_pairs must be an array");
    }

    #[test]
    fn eleven_character_id_is_enough() {
        let b = parse(
            &json!({"networks": [vlan("net-a", 10)], "ports": [port("0240776997c", "net-a", &mac(1))]}),
        );
        assert!(b.refused.is_empty(), "{:?}", b.refused);
        assert_eq!(b.ports[0].device_name(), "tap0240776997c");
    }

    #[test]
    fn duplicate_port_id() {
        let b = parse(&json!({
            "networks": [vlan("net-a", 10)],
            "ports": [port(&pid(1), "net-a", &mac(1)), port(&pid(1), "net-a", &mac(2)), port(&pid(2), "net-a", &mac(3))],
        }));
        assert_eq!(b.ports.len(), 2);
        assert_eq!(b.ports[0].mac, parse_mac(&mac(1)).unwrap());
        assert_eq!(b.ports[1].id, pid(2));
        assert_eq!(b.refused.len(), 1);
        assert_refusal(&b.refused[0], &format!("port {}", pid(1)), "duplicate id: ports[0] has the same id");
    }

    #[test]
    fn port_on_unknown_or_refused_network() {
        let r = refuse_port(port(&pid(9), "net-zz", &mac(9)));
        assert_refusal(
            &r,
            &format!("port {}", pid(9)),
            "network_id \"net-zz\": unknown network (it is not among the networks)",
        );

        let b = parse(&json!({
            "networks": [vlan("net-a", 10), vlan("net-bad", 5000)],
            "ports": [port(&pid(1), "net-bad", &mac(1)), port(&pid(2), "net-a", &mac(2))],
        }));
        assert_eq!(b.ports.len(), 1);
        assert_eq!(b.ports[0].id, pid(2));
        assert_eq!(b.refused.len(), 2, "{:?}", b.refused);
        assert_refusal(
            &b.refused[1],
            &format!("port {}", pid(1)),
            "network_id \"net-bad\": unknown network (it was refused)",
        );
    }

    #[test]
    fn duplicate_mac_within_a_network() {
        let b = parse(&json!({
            "networks": [vlan("net-a", 10), vlan("net-b", 11)],
            "ports": [
                port(&pid(1), "net-a", &mac(1)),
                port(&pid(2), "net-b", &mac(1)),
                port(&pid(3), "net-a", "FA:16:3E:00:00:01"),
                port(&pid(4), "net-a", &mac(4)),
            ],
        }));
        let ids: Vec<&str> = b.ports.iter().map(|p| p.id.as_str()).collect();
        // The same MAC on another network is fine: FDBs are per network.
        assert_eq!(ids, [pid(1), pid(2), pid(4)]);
        assert_eq!(b.refused.len(), 1);
        assert_refusal(
            &b.refused[0],
            &format!("port {}", pid(3)),
            &format!("mac_address fa:16:3e:00:00:01 is already used on network net-a by port {}", pid(1)),
        );
    }

    #[test]
    fn refused_port_does_not_claim_its_mac() {
        let b = parse(&json!({
            "networks": [vlan("net-a", 10)],
            "ports": [port("short", "net-a", &mac(1)), port(&pid(2), "net-a", &mac(1))],
        }));
        assert_eq!(b.ports.len(), 1);
        assert_eq!(b.ports[0].id, pid(2));
    }

    #[test]
    fn allowed_pairs() {
        let mut p = port(&pid(1), "net-a", &mac(1));
        p["allowed_address_pairs"] = json!([
            {"ip_address": "10.0.0.7"},
            {"ip_address": "10.1.2.3/16", "mac_address": "fa:16:3e:00:00:99"},
            {"ip_address": "2001:db8::1:2/112"},
            {"ip_address": "2001:db8::5"},
            {"ip_address": "0.0.0.0/0", "mac_address": null},
        ]);
        let b = parse(&json!({"networks": [vlan("net-a", 10)], "ports": [p]}));
        assert!(b.refused.is_empty(), "{:?}", b.refused);
        let own = parse_mac(&mac(1)).unwrap();
        let pairs: Vec<(String, u8, [u8; 6])> = b.ports[0]
            .allowed_address_pairs
            .iter()
            .map(|a| (a.ip.to_string(), a.prefix_len, a.mac))
            .collect();
        assert_eq!(
            pairs,
            [
                ("10.0.0.7".to_string(), 32, own),
                ("10.1.0.0".to_string(), 16, [0xfa, 0x16, 0x3e, 0, 0, 0x99]),
                ("2001:db8::1:0".to_string(), 112, own),
                ("2001:db8::5".to_string(), 128, own),
                ("0.0.0.0".to_string(), 0, own),
            ]
        );
    }

    #[test]
    fn agent_refusals() {
        let b = parse(&json!({
            "networks": [], "ports": [],
            "agents": [
                {"agent_type": "DHCP agent"},
                {"host": "node1", "configurations": {"tunneling_ip": "192.0.2.300"}},
                {"host": "node2", "configurations": {"tunneling_ip": "2001:db8::1"}},
                {"host": "node3", "configurations": "none"},
                {"host": "node4", "agent_type": "Open vSwitch agent", "configurations": {"tunneling_ip": "192.0.2.14"}},
                {"host": "node5"},
            ],
        }));
        let hosts: Vec<&str> = b.agents.iter().map(|a| a.host.as_str()).collect();
        assert_eq!(hosts, ["node4", "node5"]);
        assert_eq!(b.agents[0].tunneling_ip, Some(Ipv4Addr::new(192, 0, 2, 14)));
        assert_eq!(b.agents[1].tunneling_ip, None);
        assert_eq!(b.refused.len(), 4, "{:?}", b.refused);
        assert_refusal(&b.refused[0], "agents[0]", "host is missing");
        assert_refusal(
            &b.refused[1],
            "agent node1",
            "configurations.tunneling_ip \"192.0.2.300\" is not an IPv4 address",
        );
        assert_refusal(
            &b.refused[2],
            "agent node2",
            "configurations.tunneling_ip \"2001:db8::1\" is not an IPv4 address",
        );
        assert_refusal(&b.refused[3], "agent node3", "configurations is a string, not an object");
    }

    #[test]
    fn bad_agents_list_spares_the_rest() {
        let b = parse(
            &json!({"networks": [vlan("net-a", 10)], "ports": [port(&pid(1), "net-a", &mac(1))], "agents": {}}),
        );
        assert_eq!(b.networks.len(), 1);
        assert_eq!(b.ports.len(), 1);
        assert_eq!(
            b.refused,
            [Refusal { what: "agents".into(), reason: "\"agents\" is an object, not an array".into() }]
        );
    }

    #[test]
    fn document_errors() {
        let e = doc_err("{\"networks\": [],\n \"ports\": [}\n");
        assert!(e.contains("invalid JSON at line 2, column 12"), "{e}");
        assert!(!e.contains(" at line 2 column"), "position said twice: {e}");
        let e = doc_err("");
        assert!(e.contains("invalid JSON at line 1, column 0: EOF"), "{e}");
        let e = doc_err("[]");
        assert!(e.contains("the document is an array, not an object"), "{e}");
        let e = doc_err(r#"{"ports": []}"#);
        assert!(e.contains("\"networks\" is missing"), "{e}");
        let e = doc_err(r#"{"networks": []}"#);
        assert!(e.contains("\"ports\" is missing"), "{e}");
        let e = doc_err(r#"{"networks": {}, "ports": []}"#);
        assert!(e.contains("\"networks\" is an object, not an array"), "{e}");
        let e = doc_err(r#"{"networks": [], "ports": null}"#);
        assert!(e.contains("\"ports\" is null, not an array"), "{e}");
    }

    #[test]
    fn load_names_the_path() {
        let dir = std::env::temp_dir().join(format!("datapath-bindings-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bindings.json");

        let e = Bindings::load(&path).unwrap_err();
        assert!(format!("{e:#}").contains(&format!("reading bindings {}", path.display())), "{e:#}");

        std::fs::write(&path, "{\n  \"networks\": [],\n  \"ports\": [,]\n}\n").unwrap();
        let e = Bindings::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("bindings {}: invalid JSON at line 3, column", path.display())),
            "{e}"
        );

        std::fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(Bindings::load(&path).unwrap(), Bindings::parse_str(EXAMPLE, "x").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn device_name() {
        let b = parse(&json!({"networks": [vlan("net-a", 10)], "ports": [port(PORT, "net-a", &mac(1))]}));
        assert_eq!(b.ports[0].device_name(), "tap02407769-97");
        assert!(b.ports[0].device_name().len() <= 15);
    }

    #[test]
    fn anti_spoof_and_ownership() {
        let mut vm = port(&pid(1), "net-a", &mac(1));
        vm["device_owner"] = json!("compute:nova");
        let mut insecure = port(&pid(2), "net-a", &mac(2));
        insecure["device_owner"] = json!("compute:nova");
        insecure["port_security_enabled"] = json!(false);
        let mut dhcp = port(&pid(3), "net-a", &mac(3));
        dhcp["device_owner"] = json!("network:dhcp");
        let mut router = port(&pid(4), "net-a", &mac(4));
        router["device_owner"] = json!("network:router_interface");
        let b = parse(&json!({"networks": [vlan("net-a", 10)], "ports": [vm, insecure, dhcp, router]}));
        let got: Vec<(bool, bool)> =
            b.ports.iter().map(|p| (p.anti_spoof_exempt(), p.is_network_owned())).collect();
        assert_eq!(got, [(false, false), (true, false), (true, true), (true, true)]);
    }

    /// Found by the input fuzzer: two ids alike in their first 11 characters
    /// named one tap, and both ports were programmed on it.
    #[test]
    fn two_ports_with_one_device_name_refuse_the_second() {
        let r = refuse_port(port("00000001-0000-4000-8000-999999999999", "net-a", &mac(9)));
        assert_refusal(&r, "port 00000001-0000-4000-8000-999999999999", "already the device of port");
    }

    /// l2population's remote ports all start "fdb-fa163e0": a shared device
    /// name is only a conflict between ports of one host.
    #[test]
    fn one_device_name_on_two_hosts_is_two_devices() {
        let mut a = port("00000001-0000-4000-8000-aaaaaaaaaaaa", "net-a", &mac(8));
        let mut b = port("00000001-0000-4000-8000-bbbbbbbbbbbb", "net-a", &mac(9));
        a["binding:host_id"] = json!("node1");
        b["binding:host_id"] = json!("node2");
        let got = parse(&json!({"networks": [vlan("net-a", 10)], "ports": [a, b]}));
        assert_eq!((got.ports.len(), got.refused.len()), (2, 0), "{:?}", got.refused);
    }

    // A document for the trunk tests: ports 1..=5 on node0, 6 unbound, 7 on
    // node1, 8 refused (unknown network); trunk t0 (parent 1, subport 2 on
    // VLAN 100) before `trunks`.
    fn with_trunks(trunks: &[Value]) -> Bindings {
        let mut ports: Vec<Value> = (1..=5).map(|n| port(&pid(n), "net-a", &mac(n))).collect();
        let mut unbound = port(&pid(6), "net-a", &mac(6));
        unbound["binding:host_id"] = json!("");
        let mut elsewhere = port(&pid(7), "net-b", &mac(7));
        elsewhere["binding:host_id"] = json!("node1");
        ports.extend([unbound, elsewhere, port(&pid(8), "net-zz", &mac(8))]);
        let mut all = vec![json!({"id": "t0", "port_id": pid(1), "sub_ports": [
            {"port_id": pid(2), "segmentation_type": "vlan", "segmentation_id": 100}]})];
        all.extend(trunks.iter().cloned());
        let b = parse(
            &json!({"networks": [vlan("net-a", 10), vlan("net-b", 11)], "ports": ports, "trunks": all}),
        );
        assert_eq!(b.ports.len(), 7, "{:?}", b.refused);
        assert_refusal(&b.refused[0], &format!("port {}", pid(8)), "unknown network");
        assert_eq!(b.trunks[0].sub_ports, [(pid(2), 100)], "{:?}", b.refused);
        b
    }

    fn sub(port_id: &str, vid: u16) -> Value {
        json!({"port_id": port_id, "segmentation_type": "vlan", "segmentation_id": vid})
    }

    // (trunk id, parent, subport) annotations of the ports, for the ones that have any.
    fn annotations(b: &Bindings) -> Vec<(String, Option<String>, Option<SubportOf>)> {
        b.ports
            .iter()
            .filter(|p| p.trunk.is_some() || p.subport.is_some())
            .map(|p| (p.id.clone(), p.trunk.clone(), p.subport.clone()))
            .collect()
    }

    #[test]
    fn trunk_parses_exactly() {
        let mut other_net = port(&pid(2), "net-b", &mac(2));
        other_net["device_owner"] = json!("trunk:subport");
        let b = parse(&json!({
            "networks": [vlan("net-a", 10), vlan("net-b", 11)],
            "ports": [port(&pid(1), "net-a", &mac(1)), other_net, port(&pid(3), "net-a", &mac(3)),
                port(&pid(4), "net-a", &mac(4)), port(&pid(5), "net-a", &mac(5))],
            "trunks": [
                {"id": "t1", "port_id": pid(1), "admin_state_up": false, "name": "x", "status": "ACTIVE",
                 "sub_ports": [
                    {"port_id": pid(2), "segmentation_type": "vlan", "segmentation_id": 101},
                    {"port_id": pid(3), "segmentation_type": "vlan", "segmentation_id": 4094,
                     "mac_address": "x"},
                ]},
                {"id": "t2", "port_id": pid(4), "sub_ports": null, "admin_state_up": null},
            ],
        }));
        assert!(b.refused.is_empty(), "{:?}", b.refused);
        assert_eq!(
            b.trunks,
            [
                Trunk {
                    id: "t1".into(),
                    port_id: pid(1),
                    sub_ports: vec![(pid(2), 101), (pid(3), 4094)],
                    admin_state_up: false,
                },
                Trunk { id: "t2".into(), port_id: pid(4), sub_ports: vec![], admin_state_up: true },
            ]
        );
        let of = |vid| Some(SubportOf { trunk_id: "t1".into(), parent_id: pid(1), vid });
        assert_eq!(
            annotations(&b),
            [
                (pid(1), Some("t1".into()), None),
                (pid(2), None, of(101)),
                (pid(3), None, of(4094)),
                (pid(4), Some("t2".into()), None),
            ]
        );
        assert_eq!(b.ports[4].subport, None);
        assert_eq!(b.ports[4].trunk, None);
        // A subport lives on its parent's tap.
        assert_eq!(b.ports[0].device_name(), "tap00000001-00");
        assert_eq!(b.ports[1].device_name(), "tap00000001-00.101");
        assert_eq!(b.ports[2].device_name(), "tap00000001-00.4094");
        // The trunks change no other field of the ports.
        let plain =
            parse(&json!({"networks": [vlan("net-a", 10)], "ports": [port(&pid(3), "net-a", &mac(3))]}));
        assert_eq!(Port { subport: None, ..b.ports[2].clone() }, plain.ports[0]);
    }

    #[test]
    fn no_trunks() {
        for trunks in [json!(null), json!([])] {
            let b = parse(&json!({
                "networks": [vlan("net-a", 10)],
                "ports": [port(&pid(1), "net-a", &mac(1))],
                "trunks": trunks,
            }));
            assert!(b.refused.is_empty(), "{:?}", b.refused);
            assert!(b.trunks.is_empty());
            assert!(annotations(&b).is_empty());
        }
    }

    #[test]
    fn trunk_refusals() {
        let not_accepted =
            |n: u8, why: &str| format!("port_id {:?} is not an accepted port (it {why})", pid(n));
        let cases: Vec<(Value, &str, String)> = vec![
            (json!("t9"), "trunks[1]", "the entry is a string, not an object".into()),
            (json!({"port_id": pid(3)}), "trunks[1]", "id is missing".into()),
            (json!({"id": "", "port_id": pid(3)}), "trunks[1]", "id is empty".into()),
            (
                json!({"id": "t0", "port_id": pid(3)}),
                "trunk t0",
                "duplicate id: trunks[0] has the same id".into(),
            ),
            (json!({"id": "t9"}), "trunk t9", "port_id is missing".into()),
            (json!({"id": "t9", "port_id": 3}), "trunk t9", "port_id must be a string, not 3".into()),
            (
                json!({"id": "t9", "port_id": pid(3), "admin_state_up": "yes"}),
                "trunk t9",
                "admin_state_up must be true or false, not \"yes\"".into(),
            ),
            (
                json!({"id": "t9", "port_id": pid(3), "sub_ports": {}}),
                "trunk t9",
                "sub_ports must be an array, not {}".into(),
            ),
            (json!({"id": "t9", "port_id": pid(9)}), "trunk t9", not_accepted(9, "is not among the ports")),
            (json!({"id": "t9", "port_id": pid(8)}), "trunk t9", not_accepted(8, "was refused")),
            (
                json!({"id": "t9", "port_id": pid(6)}),
                "trunk t9",
                format!(
                    "port_id {:?}: the parent port is bound to no host (its binding:host_id is empty)",
                    pid(6)
                ),
            ),
            (
                json!({"id": "t9", "port_id": pid(1)}),
                "trunk t9",
                format!("port_id {:?} is already the parent of trunk t0", pid(1)),
            ),
            (
                json!({"id": "t9", "port_id": pid(2)}),
                "trunk t9",
                format!("port_id {:?} is already a subport of trunk t0", pid(2)),
            ),
        ];
        for (trunk, what, reason) in cases {
            let b = with_trunks(std::slice::from_ref(&trunk));
            assert_eq!(b.trunks.len(), 1, "{trunk}: {:?}", b.refused);
            assert_eq!(b.refused.len(), 2, "{trunk}: {:?}", b.refused);
            assert_refusal(&b.refused[1], what, &reason);
            assert_eq!(annotations(&b).len(), 2, "{trunk}");
        }
    }

    #[test]
    fn subport_refusals() {
        let p = |n: u8| format!("sub_ports[1].port_id {:?}", pid(n));
        let cases: Vec<(Value, String)> = vec![
            (json!(5), "sub_ports[1] is a number, not an object".into()),
            (
                json!({"segmentation_type": "vlan", "segmentation_id": 201}),
                "sub_ports[1].port_id is missing".into(),
            ),
            (sub(&pid(9), 201), format!("{} is not an accepted port (it is not among the ports)", p(9))),
            (sub(&pid(8), 201), format!("{} is not an accepted port (it was refused)", p(8))),
            (sub(&pid(3), 201), format!("{} is the trunk's parent port", p(3))),
            (sub(&pid(1), 201), format!("{} is already the parent of trunk t0", p(1))),
            (sub(&pid(2), 201), format!("{} is already a subport of trunk t0", p(2))),
            (sub(&pid(4), 201), format!("{} is already a subport of trunk t9", p(4))),
            (
                json!({"port_id": pid(5), "segmentation_type": "inherit"}),
                "sub_ports[1].segmentation_type \"inherit\" is not supported: only \"vlan\" is, \
                 as with Neutron's OVS and Linux bridge drivers"
                    .into(),
            ),
            (
                json!({"port_id": pid(5), "segmentation_type": "vxlan", "segmentation_id": 201}),
                "sub_ports[1].segmentation_type \"vxlan\" is not supported".into(),
            ),
            (
                json!({"port_id": pid(5), "segmentation_id": 201}),
                "sub_ports[1].segmentation_type is missing; it must be \"vlan\"".into(),
            ),
            (
                json!({"port_id": pid(5), "segmentation_type": "vlan"}),
                "sub_ports[1].segmentation_id is missing; it must be a VLAN id in 1..=4094".into(),
            ),
            (
                json!({"port_id": pid(5), "segmentation_type": "vlan", "segmentation_id": "7"}),
                "sub_ports[1].segmentation_id must be a non-negative integer, not \"7\"".into(),
            ),
            (sub(&pid(5), 0), "sub_ports[1].segmentation_id 0 is outside the VLAN id range 1..=4094".into()),
            (
                sub(&pid(5), 4095),
                "sub_ports[1].segmentation_id 4095 is outside the VLAN id range 1..=4094".into(),
            ),
            (sub(&pid(5), 200), "sub_ports[1].segmentation_id 200 is already subport sub_ports[0]'s".into()),
            (
                sub(&pid(7), 201),
                format!("{} is bound to host \"node1\", not to its parent's host \"node0\"", p(7)),
            ),
            (sub(&pid(6), 201), format!("{} is bound to no host, not to its parent's host \"node0\"", p(6))),
        ];
        for (bad, reason) in cases {
            let b = with_trunks(&[
                json!({"id": "t9", "port_id": pid(3), "sub_ports": [sub(&pid(4), 200), bad.clone()]}),
            ]);
            assert_eq!(b.refused.len(), 2, "{bad}: {:?}", b.refused);
            assert_refusal(&b.refused[1], "trunk t9", &reason);
            assert_eq!(
                b.trunks[1],
                Trunk {
                    id: "t9".into(),
                    port_id: pid(3),
                    sub_ports: vec![(pid(4), 200)],
                    admin_state_up: true
                },
                "{bad}"
            );
            assert_eq!(annotations(&b).len(), 4, "{bad}");
        }
    }

    #[test]
    fn trunk_with_a_bad_subport_keeps_its_good_ones() {
        let b = with_trunks(&[
            // Refused whole: claims neither its parent nor its subports.
            json!({"id": "t8", "port_id": pid(3), "admin_state_up": 1, "sub_ports": [sub(&pid(4), 5)]}),
            json!({"id": "t9", "port_id": pid(3), "sub_ports": [
                sub(&pid(7), 101), // bound elsewhere: refused, claims neither port nor VLAN
                sub(&pid(4), 101),
                sub(&pid(6), 102), // unbound: refused
                sub(&pid(5), 102),
                sub(&pid(7), 103), // still refused
            ]}),
        ]);
        let reasons: Vec<(&str, &str)> =
            b.refused.iter().map(|r| (r.what.as_str(), r.reason.as_str())).collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        assert_refusal(&b.refused[1], "trunk t8", "admin_state_up must be true or false, not 1");
        assert_refusal(&b.refused[2], "trunk t9", "sub_ports[0].port_id");
        assert_refusal(&b.refused[3], "trunk t9", "sub_ports[2].port_id");
        assert_refusal(&b.refused[4], "trunk t9", "sub_ports[4].port_id");
        assert_eq!(b.trunks[1].sub_ports, [(pid(4), 101), (pid(5), 102)]);
        let of = |vid| Some(SubportOf { trunk_id: "t9".into(), parent_id: pid(3), vid });
        assert_eq!(
            annotations(&b)[2..],
            [(pid(3), Some("t9".into()), None), (pid(4), None, of(101)), (pid(5), None, of(102))]
        );
    }

    #[test]
    fn bad_trunks_list_spares_the_rest() {
        let b = parse(&json!({
            "networks": [vlan("net-a", 10)],
            "ports": [port(&pid(1), "net-a", &mac(1)), port(&pid(2), "net-a", &mac(2))],
            "trunks": {"id": "t1", "port_id": pid(1), "sub_ports": [sub(&pid(2), 101)]},
        }));
        assert_eq!(b.networks.len(), 1);
        assert_eq!(b.ports.len(), 2);
        assert!(b.trunks.is_empty());
        assert!(annotations(&b).is_empty());
        assert_eq!(
            b.refused,
            [Refusal { what: "trunks".into(), reason: "\"trunks\" is an object, not an array".into() }]
        );
    }

    #[test]
    fn long_values_are_cut_in_reasons() {
        let mut n = vlan("net-x", 12);
        n["mtu"] = json!("x".repeat(500));
        let r = refuse_network(n);
        assert!(r.reason.len() < 150, "{r:?}");
        assert!(r.reason.ends_with("..."), "{r:?}");
    }
}
