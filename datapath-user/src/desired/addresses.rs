//! The addresses a port may send from (anti-spoofing), and the ARP
//! responder's table of tunnel networks.

use std::net::IpAddr;

use datapath_common::{ADDR_KEY_FIXED_BITS, AddrKeyV4, AddrKeyV6, ArpEntry, ArpKey, MacKey};

use super::MapState;
use crate::bindings::Port;

/// The IPv6 link-local address (EUI-64) of a MAC, which Neutron always allows.
pub fn link_local_of(mac: &[u8; 6]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    a
}

fn mask<const N: usize>(mut addr: [u8; N], prefix: u8) -> [u8; N] {
    for (i, byte) in addr.iter_mut().enumerate() {
        let bits = (prefix as usize).saturating_sub(i * 8).min(8);
        *byte &= (0xffu16 << (8 - bits)) as u8;
    }
    addr
}

/// The (MAC, address) pairs `port` (on `ifindex`) may send from: its MAC
/// with its fixed IPs, each allowed address pair with its MAC, and the
/// link-local address of every allowed MAC.
pub(super) fn add_allowed(state: &mut MapState, ifindex: u32, port: &Port) {
    let mut macs = vec![port.mac];
    let mut pairs: Vec<([u8; 6], IpAddr, u8)> = Vec::new();
    for ip in &port.fixed_ips {
        pairs.push((port.mac, *ip, if ip.is_ipv4() { 32 } else { 128 }));
    }
    for pair in &port.allowed_address_pairs {
        if !macs.contains(&pair.mac) {
            macs.push(pair.mac);
        }
        pairs.push((pair.mac, pair.ip, pair.prefix_len));
    }
    for mac in &macs {
        state.allowed_macs.insert(MacKey { ifindex, mac: *mac, _pad: [0; 2] }, 1);
        pairs.push((*mac, IpAddr::from(link_local_of(mac)), 128));
    }
    for (mac, ip, prefix) in pairs {
        match ip {
            IpAddr::V4(v4) => {
                let data = AddrKeyV4 { ifindex, mac, _pad: [0; 2], addr: mask(v4.octets(), prefix) };
                state.allowed_v4.insert((ADDR_KEY_FIXED_BITS + prefix as u32, data), 1);
            }
            IpAddr::V6(v6) => {
                let data = AddrKeyV6 { ifindex, mac, _pad: [0; 2], addr: mask(v6.octets(), prefix) };
                state.allowed_v6.insert((ADDR_KEY_FIXED_BITS + prefix as u32, data), 1);
            }
        }
    }
}

/// The ARP responder's entries of a tunnel network (node-local `net_index`):
/// every IPv4 address of every port the bindings place on it, on any host.
/// The first port to claim an address keeps it.
pub(super) fn add_arp<'a>(state: &mut MapState, net_index: u32, ports: impl Iterator<Item = &'a Port>) {
    for port in ports {
        for ip in &port.fixed_ips {
            if let IpAddr::V4(v4) = ip {
                let key = ArpKey { net_index, ipv4: v4.octets() };
                state.arp.entry(key).or_insert(ArpEntry { mac: port.mac, _pad: [0; 2] });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::bindings::{AddressPair, Port};

    const OWN: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
    const PAIR: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];

    fn port(fixed_ips: &[&str], pairs: &[(&str, u8, [u8; 6])]) -> Port {
        Port {
            id: "p".into(),
            network_id: "n".into(),
            mac: OWN,
            fixed_ips: fixed_ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            device_owner: "compute:nova".into(),
            host: "node0".into(),
            admin_state_up: true,
            port_security_enabled: true,
            security_groups: None,
            subport: None,
            trunk: None,
            qos_policy_id: None,
            allowed_address_pairs: pairs
                .iter()
                .map(|(ip, prefix_len, mac)| AddressPair {
                    ip: ip.parse().unwrap(),
                    prefix_len: *prefix_len,
                    mac: *mac,
                })
                .collect(),
        }
    }

    #[test]
    fn allowed_address_pairs_add_their_mac_and_prefix() {
        let mut state = MapState::default();
        let p = port(&["10.0.0.5", "2001:db8::5"], &[("10.0.0.0", 24, OWN), ("192.168.7.7", 32, PAIR)]);
        add_allowed(&mut state, 9, &p);
        let macs: Vec<[u8; 6]> = state.allowed_macs.keys().map(|k| k.mac).collect();
        assert_eq!(macs, [OWN, PAIR], "the port's MAC and the pair's");
        let v4: Vec<(u32, [u8; 6], Ipv4Addr)> = state
            .allowed_v4
            .keys()
            .map(|(plen, k)| (*plen - ADDR_KEY_FIXED_BITS, k.mac, k.addr.into()))
            .collect();
        assert_eq!(
            v4,
            [
                (24, OWN, Ipv4Addr::new(10, 0, 0, 0)),
                (32, OWN, Ipv4Addr::new(10, 0, 0, 5)),
                (32, PAIR, Ipv4Addr::new(192, 168, 7, 7)),
            ]
        );
        let v6: Vec<(u32, [u8; 6], IpAddr)> = state
            .allowed_v6
            .keys()
            .map(|(plen, k)| (*plen - ADDR_KEY_FIXED_BITS, k.mac, IpAddr::from(k.addr)))
            .collect();
        assert!(v6.contains(&(128, OWN, "2001:db8::5".parse().unwrap())));
        assert!(v6.contains(&(128, OWN, IpAddr::from(link_local_of(&OWN)))), "each MAC's link-local");
        assert!(v6.contains(&(128, PAIR, IpAddr::from(link_local_of(&PAIR)))));
        assert!(state.allowed_v4.keys().all(|(_, k)| k.ifindex == 9));
    }

    #[test]
    fn the_first_port_to_claim_an_address_keeps_its_arp_entry() {
        let mut state = MapState::default();
        let first = port(&["10.0.0.5", "2001:db8::5"], &[]);
        let mut second = port(&["10.0.0.5", "10.0.0.6"], &[]);
        second.mac = PAIR;
        add_arp(&mut state, 4, [&first, &second].into_iter());
        let got: Vec<([u8; 4], [u8; 6])> = state.arp.iter().map(|(k, v)| (k.ipv4, v.mac)).collect();
        assert_eq!(got, [([10, 0, 0, 5], OWN), ([10, 0, 0, 6], PAIR)]);
        assert!(state.arp.keys().all(|k| k.net_index == 4));
    }

    #[test]
    fn masks_clear_host_bits() {
        assert_eq!(mask([10, 1, 2, 3], 16), [10, 1, 0, 0]);
        assert_eq!(mask([10, 1, 2, 255], 25), [10, 1, 2, 128]);
        assert_eq!(mask([1, 2, 3, 4], 32), [1, 2, 3, 4]);
        assert_eq!(mask([1, 2, 3, 4], 0), [0, 0, 0, 0]);
    }
}
