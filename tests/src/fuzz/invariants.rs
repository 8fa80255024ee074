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
    desired::link_local_of,
    netlink::Devices,
};

use super::bindings::{AGENTS, UPLINKS, VXLAN_DEV};
use crate::model::{HwTag, Prog, Target};

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
    /// The offloaded tag it arrived with, which comes before any in the frame.
    pub hw: Option<HwTag>,
    /// The tunnel key it arrived with (for the VNI that selects the network).
    pub tunnel: Option<(u32, u32)>,
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
                let (tpid, tci) = match s.hw {
                    Some(tag) => (tag.proto, tag.tci),
                    None => (
                        u16::from_be_bytes([*s.input.get(12)?, *s.input.get(13)?]),
                        u16::from_be_bytes([*s.input.get(14).unwrap_or(&0), *s.input.get(15).unwrap_or(&0)]),
                    ),
                };
                let segment = match tpid {
                    0x8100 => tci as u32 & 0x0fff,
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
            Prog::Tunnel => {
                let (vni, _) = s.tunnel.filter(|_| s.ingress == VXLAN_DEV)?;
                self.nets
                    .iter()
                    .find(|(_, (t, _, seg))| *t == NetworkType::Vxlan && *seg == vni)
                    .map(|(id, _)| id.clone())
            }
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
                let bad_vtep = t.vtep == 0 || t.vtep == local;
                if s.prog != Prog::VmPort || *net_type != NetworkType::Vxlan || t.vni != segment || bad_vtep {
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

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{
     "networks": [
      {"id": "n1", "provider:network_type": "vlan", "provider:physical_network": "physnet1", "provider:segmentation_id": 100},
      {"id": "n2", "provider:network_type": "vlan", "provider:physical_network": "physnet1", "provider:segmentation_id": 200},
      {"id": "n3", "provider:network_type": "vxlan", "provider:segmentation_id": 5000}
     ],
     "ports": [
      {"id": "d0000000-0000", "network_id": "n1", "mac_address": "fa:16:3e:00:00:01", "fixed_ips": [{"ip_address": "10.0.0.1"}], "binding:host_id": "node0", "device_owner": "compute:nova"},
      {"id": "d0000001-0100", "network_id": "n2", "mac_address": "fa:16:3e:00:00:02", "fixed_ips": [{"ip_address": "10.0.0.2"}], "binding:host_id": "node0", "device_owner": "compute:nova"},
      {"id": "d0000002-0200", "network_id": "n3", "mac_address": "fa:16:3e:00:00:03", "fixed_ips": [{"ip_address": "10.0.0.3"}], "binding:host_id": "node0", "device_owner": "compute:nova"}
     ]}"#;

    fn invariants() -> Invariants {
        let b = Bindings::parse_str(DOC, "test").unwrap();
        let devices: Devices = [
            ("eth2", 2),
            ("vxlan-dp", 4),
            ("tapd0000000-00", 10),
            ("tapd0000001-01", 11),
            ("tapd0000002-02", 12),
        ]
        .into_iter()
        .map(|(n, i)| (n.to_string(), i))
        .collect();
        Invariants::new(&b, &devices)
    }

    /// A UDP frame from port 1's MAC and IPv4 address.
    fn from_port1() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[
            0xfa, 0x16, 0x3e, 0, 0, 1, 0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0,
        ]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 9, 0, 1, 0, 2, 0, 8, 0, 0]);
        f
    }

    fn check(prog: Prog, ingress: &str, input: &[u8], targets: &[Target], output: &[u8]) -> Vec<String> {
        invariants().check(&Sent {
            prog,
            ingress,
            input,
            hw: None,
            tunnel: None,
            action: Action::Flooded,
            targets,
            output,
        })
    }

    #[test]
    fn a_frame_within_its_network_and_segment_passes() {
        let f = from_port1();
        let t = [Target { ifindex: 2, vlan: 100, vtep: 0, vni: 0 }];
        assert_eq!(check(Prog::VmPort, "tapd0000000-00", &f, &t, &f), Vec::<String>::new());
    }

    #[test]
    fn another_network_a_wrong_tag_a_wrong_vni_and_a_spoofed_source_are_caught() {
        let f = from_port1();
        let vm = Prog::VmPort;
        assert!(
            check(vm, "tapd0000000-00", &f, &[Target::port(11)], &f)[0].contains("reached tapd0000001-01")
        );
        let tagged = [Target { ifindex: 2, vlan: 200, vtep: 0, vni: 0 }];
        assert!(check(vm, "tapd0000000-00", &f, &tagged, &f)[0].contains("with VLAN 200"));
        let tunnel = [Target { ifindex: 4, vlan: 0, vtep: 0xc000020b, vni: 5001 }];
        assert!(check(vm, "tapd0000002-02", &f, &tunnel, &f).iter().any(|v| v.contains("VNI 5001")));
        let mut spoofed = f.clone();
        spoofed[26..30].copy_from_slice(&[10, 0, 0, 2]);
        let up = [Target { ifindex: 2, vlan: 100, vtep: 0, vni: 0 }];
        assert!(check(vm, "tapd0000000-00", &spoofed, &up, &spoofed)[0].contains("IPv4 source"));
        // From the wire, tag 200 belongs to n2: n1's port is another network.
        let mut wire = f[..12].to_vec();
        wire.extend_from_slice(&[0x81, 0x00, 0x00, 0xc8]);
        wire.extend_from_slice(&f[12..]);
        assert!(
            check(Prog::Uplink, "eth2", &wire, &[Target::port(10)], &f)[0].contains("reached tapd0000000-00")
        );
        assert!(check(Prog::Uplink, "eth2", &wire, &[Target::port(11)], &f).is_empty());
    }
}
