//! The four isolation and anti-spoofing invariants, checked on every sent
//! frame straight from the bindings document, independently of the model:
//! a frame never reaches a port of another network; it never leaves on the
//! uplink with a tag other than its network's segment; it never leaves with
//! a VNI other than its network's; a spoofed source never leaves a port
//! with port security.

use std::{collections::BTreeMap, net::IpAddr};

use datapath_common::Action;
use datapath_user::{
    bindings::{Bindings, NetworkType, Port},
    desired::{Devices, link_local_of},
};

use super::bindings::{AGENTS, UPLINKS, VXLAN_DEV};
use crate::model::{Prog, Target};

/// The bindings, indexed by what the invariants ask.
pub struct Invariants {
    /// Device -> the node0 port bound there.
    ports: BTreeMap<String, Port>,
    /// ifindex -> device name.
    names: BTreeMap<u32, String>,
    /// Network id -> (type, physical network, segment).
    nets: BTreeMap<String, (NetworkType, Option<String>, u32)>,
}

/// A frame that left: where to and what it looked like.
pub struct Sent<'a> {
    pub prog: Prog,
    pub ingress: &'a str,
    /// The frame as it arrived (for the tag that selects the network on the uplink).
    pub input: &'a [u8],
    pub action: Action,
    pub targets: &'a [Target],
    pub output: &'a [u8],
}

fn has_inband_tag(frame: &[u8]) -> bool {
    frame.len() >= 14 && matches!(u16::from_be_bytes([frame[12], frame[13]]), 0x8100 | 0x88a8)
}

/// Whether `addr` lies in `net`/`len`, by integer masks (the model walks bytes instead).
fn in_prefix(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Invariants {
    pub fn new(b: &Bindings, devices: &Devices) -> Self {
        let ports = b.ports_on_host(AGENTS[0].0).map(|p| (p.device_name(), p.clone())).collect();
        let names = devices.iter().map(|(n, i)| (*i, n.clone())).collect();
        let nets = b
            .networks
            .iter()
            .map(|n| {
                (
                    n.id.clone(),
                    (n.network_type.clone(), n.physical_network.clone(), n.segmentation_id.unwrap_or(0)),
                )
            })
            .collect();
        Self { ports, names, nets }
    }

    /// The network a frame entering on `ingress` belongs to, if any.
    fn network_of(&self, s: &Sent) -> Option<String> {
        match s.prog {
            Prog::VmPort => self.ports.get(s.ingress).map(|p| p.network_id.clone()),
            Prog::Uplink => {
                let physnet = UPLINKS.iter().find(|(_, d)| *d == s.ingress)?.0;
                let tpid = u16::from_be_bytes([*s.input.get(12)?, *s.input.get(13)?]);
                let segment = match tpid {
                    0x8100 => u16::from_be_bytes([*s.input.get(14)?, *s.input.get(15)?]) as u32 & 0x0fff,
                    0x88a8 => return None,
                    _ => 0,
                };
                self.nets
                    .iter()
                    .find(|(_, (t, p, seg))| {
                        p.as_deref() == Some(physnet)
                            && match t {
                                NetworkType::Flat => segment == 0,
                                NetworkType::Vlan => *seg == segment,
                                NetworkType::Vxlan => false,
                            }
                    })
                    .map(|(id, _)| id.clone())
            }
            // Test runs carry no tunnel key: nothing may leave the tunnel program.
            Prog::Tunnel => None,
        }
    }

    /// Every invariant `s` breaks, in words.
    pub fn check(&self, s: &Sent) -> Vec<String> {
        let mut bad = Vec::new();
        let Some(net_id) = self.network_of(s) else {
            bad.push(format!("a frame with no network (ingress {}) was sent to {:?}", s.ingress, s.targets));
            return bad;
        };
        let (net_type, physnet, segment) = self.nets[&net_id].clone();
        let net_type = &net_type;
        for t in s.targets {
            let name = self.names.get(&t.ifindex).map(String::as_str).unwrap_or("?");
            if let Some(p) = self.ports.get(name) {
                if p.network_id != net_id {
                    bad.push(format!(
                        "a frame of network {net_id} reached {name} of network {}",
                        p.network_id
                    ));
                }
            } else if let Some((wire_net, _)) = UPLINKS.iter().find(|(_, d)| *d == name) {
                let want_vlan = if *net_type == NetworkType::Vlan { segment } else { 0 };
                if s.prog != Prog::VmPort || physnet.as_deref() != Some(*wire_net) || t.vlan != want_vlan {
                    bad.push(format!(
                        "a frame of network {net_id} ({net_type:?} {segment}) from {} left on {name} with VLAN {}",
                        s.ingress, t.vlan
                    ));
                }
                if has_inband_tag(s.output) {
                    bad.push(format!("a frame left on {name} with an in-band tag under the pushed one"));
                }
            } else if name == VXLAN_DEV {
                let local = u32::from_be_bytes(AGENTS[0].1);
                if *net_type != NetworkType::Vxlan || t.vni != segment || t.vtep == 0 || t.vtep == local {
                    bad.push(format!(
                        "a frame of network {net_id} ({net_type:?} {segment}) left into the tunnel with VNI {} to VTEP {:#x}",
                        t.vni, t.vtep
                    ));
                }
                if has_inband_tag(s.output) {
                    bad.push("a frame entered the tunnel with an in-band VLAN tag".into());
                }
            } else {
                bad.push(format!("a frame was sent to {name} (ifindex {}), which is no port", t.ifindex));
            }
        }
        if let Some(p) = self.ports.get(s.ingress)
            && s.prog == Prog::VmPort
            && p.port_security_enabled
            && !p.is_network_owned()
            && s.action != Action::ArpReplied
            && let Some(why) = spoofed(p, s.output)
        {
            bad.push(format!("a spoofed frame left port-security port {}: {why}", s.ingress));
        }
        bad
    }
}

/// Why `frame` is not something `p` may send, if it is not.
fn spoofed(p: &Port, frame: &[u8]) -> Option<String> {
    let mac: [u8; 6] = frame.get(6..12)?.try_into().ok()?;
    let macs: Vec<[u8; 6]> =
        std::iter::once(p.mac).chain(p.allowed_address_pairs.iter().map(|a| a.mac)).collect();
    if !macs.contains(&mac) {
        return Some(format!("source MAC {mac:02x?}"));
    }
    let ip_ok = |m: [u8; 6], ip: IpAddr| {
        let fixed = m == p.mac && p.fixed_ips.contains(&ip);
        let pair = p.allowed_address_pairs.iter().any(|a| a.mac == m && in_prefix(ip, a.ip, a.prefix_len));
        let link_local = matches!(ip, IpAddr::V6(x) if macs.contains(&m) && x.octets() == link_local_of(&m));
        fixed || pair || link_local
    };
    let l3 = &frame[14..];
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 if l3.len() >= 20 => {
            let src: [u8; 4] = l3[12..16].try_into().ok()?;
            let ihl = (l3[0] & 0x0f) as usize * 4;
            let first = u16::from_be_bytes([l3[6], l3[7]]) & 0x1fff == 0;
            let dhcp_client =
                l3[9] == 17 && first && l3.get(ihl..ihl + 4) == Some(&[0, 68, 0, 67][..]) && src == [0; 4];
            if !dhcp_client && !ip_ok(mac, IpAddr::from(src)) {
                return Some(format!("IPv4 source {src:?} with MAC {mac:02x?}"));
            }
        }
        0x0806 if l3.len() >= 28 && l3[2..6] == [0x08, 0x00, 6, 4] => {
            let sha: [u8; 6] = l3[8..14].try_into().ok()?;
            let spa: [u8; 4] = l3[14..18].try_into().ok()?;
            if sha != mac || (spa != [0; 4] && !ip_ok(sha, IpAddr::from(spa))) {
                return Some(format!("ARP sender {sha:02x?} {spa:?}"));
            }
        }
        0x86dd if l3.len() >= 40 => {
            let src: [u8; 16] = l3[8..24].try_into().ok()?;
            if src != [0; 16] && !ip_ok(mac, IpAddr::from(src)) {
                return Some(format!("IPv6 source {} with MAC {mac:02x?}", std::net::Ipv6Addr::from(src)));
            }
        }
        _ => {}
    }
    None
}
