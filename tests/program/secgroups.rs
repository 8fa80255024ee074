//! Security groups on golden frames: what a port sends (`vm_port`, egress
//! rules) and what is delivered to it (`vm_port_out`, ingress rules). The
//! connection table carries state from row to row, so each table runs in
//! order on a bench of its own.

use aya::maps::IterableMap;
use datapath_common::{
    CtEntry, CtKey, DropReason, MAX_CONNTRACK, SG_JUDGED_ALLOWANCE, SG_JUDGED_FRAGMENT, SG_JUDGED_NONE,
    SG_JUDGED_TRACKED, names, sg_judged_parts,
};
use datapath_tests::program::Bench;
use datapath_user::{
    batch,
    bindings::Bindings,
    frames::*,
    policy::{Members, expand_groups, table_slots},
};

use crate::scenario::CONFIG;

const TC_ACT_SHOT: u32 = 2;

const BINDINGS: &str = r#"{
 "networks": [
  {"id": "11111111-1111-4111-8111-111111111111", "name": "net1", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 1000, "mtu": 1500}
 ],
 "ports": [
  {"id": "a0000000-0a00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0a",
   "fixed_ips": [{"ip_address": "10.10.10.2"}, {"ip_address": "2001:db8::a"}], "device_owner": "compute:nova", "binding:host_id": "node0",
   "security_groups": ["web"]},
  {"id": "b0000000-0b00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0b",
   "fixed_ips": [{"ip_address": "10.10.10.3"}], "device_owner": "compute:nova", "binding:host_id": "node0",
   "security_groups": ["db", "admin"]},
  {"id": "5a000000-5a00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:5a",
   "fixed_ips": [{"ip_address": "10.10.10.6"}], "device_owner": "compute:nova", "binding:host_id": "node0",
   "security_groups": ["nostate"]},
  {"id": "6e000000-6e00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:6e",
   "fixed_ips": [{"ip_address": "10.10.10.7"}], "device_owner": "compute:nova", "binding:host_id": "node0",
   "security_groups": []},
  {"id": "90000000-0900-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:09",
   "fixed_ips": [{"ip_address": "10.10.10.5"}], "device_owner": "compute:nova", "binding:host_id": "node0",
   "port_security_enabled": false, "security_groups": []},
  {"id": "b1000000-0b10-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:01:0b",
   "fixed_ips": [{"ip_address": "10.10.10.30"}], "device_owner": "compute:nova", "binding:host_id": "node1",
   "security_groups": ["web"]}
 ],
 "security_groups": [
  {"id": "web", "stateful": true, "security_group_rules": [
   {"id": "out4", "direction": "egress", "ethertype": "IPv4"},
   {"id": "out6", "direction": "egress", "ethertype": "IPv6"},
   {"id": "ssh", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22},
   {"id": "http-from-web", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 80, "port_range_max": 81, "remote_group_id": "web"},
   {"id": "dns-from-net", "direction": "ingress", "ethertype": "IPv4", "protocol": "udp", "port_range_min": 53, "port_range_max": 53, "remote_ip_prefix": "192.0.2.0/24"},
   {"id": "ping", "direction": "ingress", "ethertype": "IPv4", "protocol": "icmp", "port_range_min": 8},
   {"id": "vrrp", "direction": "ingress", "ethertype": "IPv4", "protocol": "112"},
   {"id": "top-port", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 65535, "port_range_max": 65535},
   {"id": "port-one", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 1, "port_range_max": 1},
   {"id": "ssh6", "direction": "ingress", "ethertype": "IPv6", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22}]},
  {"id": "db", "security_group_rules": [
   {"id": "db-out", "direction": "egress", "ethertype": "IPv4"},
   {"id": "pg-from-web", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 5432, "port_range_max": 5432, "remote_group_id": "web"}]},
  {"id": "admin", "security_group_rules": [
   {"id": "admin-ssh", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "192.0.2.0/24"}]},
  {"id": "nostate", "stateful": false, "security_group_rules": [
   {"id": "udp-in", "direction": "ingress", "ethertype": "IPv4", "protocol": "udp", "port_range_min": 5000, "port_range_max": 5000},
   {"id": "tcp-in", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 8080, "port_range_max": 8080},
   {"id": "udp-out", "direction": "egress", "ethertype": "IPv4", "protocol": "udp"}]}
 ]
}"#;

const DEVICES: &[&str] =
    &["eth2", "tapa0000000-0a", "tapb0000000-0b", "tap5a000000-5a", "tap6e000000-6e", "tap90000000-09"];

/// In the "web" group (stateful), with IPv4 and IPv6 addresses.
const A: &str = "tapa0000000-0a";
/// In the "db" group (PostgreSQL from "web" members only) and "admin" (ssh
/// from 192.0.2.0/24): a table each.
const B: &str = "tapb0000000-0b";
/// In the stateless "nostate" group.
const S: &str = "tap5a000000-5a";
/// Port security on, no groups: the fixed allowances only.
const N: &str = "tap6e000000-6e";
/// Port security off: never filtered.
const X: &str = "tap90000000-09";

const A_IP: [u8; 4] = [10, 10, 10, 2];
const B_IP: [u8; 4] = [10, 10, 10, 3];
const S_IP: [u8; 4] = [10, 10, 10, 6];
const N_IP: [u8; 4] = [10, 10, 10, 7];
const X_IP: [u8; 4] = [10, 10, 10, 5];
/// A "web" member on another node.
const WEB_REMOTE: [u8; 4] = [10, 10, 10, 30];
const MAC_A: Mac = neutron_mac(0x0a);
const MAC_B: Mac = neutron_mac(0x0b);
const MAC_S: Mac = neutron_mac(0x5a);
const MAC_N: Mac = neutron_mac(0x6e);
const MAC_X: Mac = neutron_mac(0x09);
/// Whoever sits behind the uplink or a router.
const MAC_GW: Mac = [0xfa, 0x16, 0x3e, 0x00, 0x01, 0x0b];

enum Expect {
    /// Not dropped, and no drop counted.
    Pass,
    /// Passes, admitted as the trace record says: a rule's id, "tracked",
    /// "allowance", "fragment", or "unfiltered" (the groups did not judge it).
    By(&'static str),
    Drop(DropReason),
}

/// What admitted a frame at `dev`, by the trace record's `sg_judged`: a
/// rule of one of the port's tables, each expanded from `BINDINGS` as the
/// agent does.
fn admitted_by(dev: &str, judged: u32) -> String {
    match judged {
        SG_JUDGED_NONE => "unfiltered".into(),
        SG_JUDGED_TRACKED => "tracked".into(),
        SG_JUDGED_ALLOWANCE => "allowance".into(),
        SG_JUDGED_FRAGMENT => "fragment".into(),
        n => {
            let (slot, rule) = sg_judged_parts(n).expect("a rule's judgement");
            let b = Bindings::parse_str(BINDINGS, "test bindings").expect("the test's bindings parse");
            let groups = b.security_groups.iter().map(|g| (g.id.clone(), g.clone())).collect();
            let addrs = b.address_groups.iter().map(|g| (g.id.clone(), g.clone())).collect();
            let members = Members::index(b.ports.iter());
            let port = b.ports.iter().find(|p| p.device_name() == dev).expect("a port of the bindings");
            let ids = port.security_groups.as_deref().expect("a filtered port");
            let slots = table_slots(ids);
            let table = expand_groups(slots[slot as usize], &groups, &addrs, &members);
            table
                .rules
                .get(rule as usize)
                .map_or_else(|| format!("rule index {rule} of slot {slot}"), |r| r.id.clone())
        }
    }
}

/// One frame, where it meets its port, and what must happen. `Sends` runs
/// `vm_port` (the port sends it), `Gets` runs `vm_port_out` (it is delivered).
enum Step {
    Sends(&'static str, &'static str, Vec<u8>, Expect),
    Gets(&'static str, &'static str, Vec<u8>, Expect),
}

fn v4(dst: Mac, src: Mac, packet: Vec<u8>) -> Vec<u8> {
    eth(dst, src, 0x0800, &packet)
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv4_tcp(src, dst, sport, dport, flags)
}

/// An ICMP error (type 3 code 3) from `from` to `to`, quoting `inner` (an IPv4 packet).
fn unreachable(from: [u8; 4], to: [u8; 4], inner: &[u8]) -> Vec<u8> {
    ipv4_icmp(from, to, 3, 3, [0; 4], &inner[..28])
}

fn run(bench: &mut Bench, steps: Vec<Step>) {
    let mut failures = Vec::new();
    for step in steps {
        let (prog, what, dev, frame, expect) = match step {
            Step::Sends(what, dev, frame, e) => (names::PROG_VM_PORT, what, dev, frame, e),
            Step::Gets(what, dev, frame, e) => (names::PROG_VM_PORT_OUT, what, dev, frame, e),
        };
        let out = match bench.run(prog, dev, &frame, true) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{what}: {e:#}"));
                continue;
            }
        };
        let trace = out.trace.expect("a traced run writes its record");
        let dropped: Vec<&str> =
            DropReason::ALL.iter().filter(|r| out.drops[**r as usize] > 0).map(|r| r.label()).collect();
        match expect {
            Expect::By(want) => {
                let by = admitted_by(dev, trace.sg_judged);
                if out.retval == TC_ACT_SHOT || trace.reason != 0 || !dropped.is_empty() {
                    let why = DropReason::from_index(trace.reason).map_or("?", |r| r.label());
                    failures.push(format!("{what}: dropped ({why}), want it admitted by {want}"));
                } else if by != want {
                    failures.push(format!("{what}: admitted by {by}, want {want}"));
                }
            }
            Expect::Pass => {
                if out.retval == TC_ACT_SHOT || trace.reason != 0 || !dropped.is_empty() {
                    let why = DropReason::from_index(trace.reason).map_or("?", |r| r.label());
                    failures.push(format!("{what}: dropped ({why}), want it to pass"));
                }
            }
            Expect::Drop(reason) => {
                if out.retval != TC_ACT_SHOT || trace.reason != reason as u32 || dropped != [reason.label()] {
                    let got = DropReason::from_index(trace.reason).map_or("none", |r| r.label());
                    failures.push(format!(
                        "{what}: verdict {} reason {got}, counted {dropped:?}; want {}",
                        out.retval,
                        reason.label()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} rows failed:\n{}", failures.len(), failures.join("\n"));
}

fn bench() -> Bench {
    datapath_tests::require_root();
    Bench::new(CONFIG, BINDINGS, DEVICES).expect("building the security-group bench")
}

#[test]
fn rules_protocols_ports_and_remotes() {
    use Expect::*;
    use Step::*;
    let far = [198, 51, 100, 7];
    let steps = vec![
        Gets(
            "ssh from anywhere reaches A (rule ssh)",
            A,
            v4(MAC_A, MAC_GW, tcp(far, A_IP, 50000, 22, TCP_SYN)),
            By("ssh"),
        ),
        Gets(
            "tcp 23 to A is no rule's",
            A,
            v4(MAC_A, MAC_GW, tcp(far, A_IP, 50000, 23, TCP_SYN)),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "tcp 21, below the range",
            A,
            v4(MAC_A, MAC_GW, tcp(far, A_IP, 50000, 21, TCP_SYN)),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "http 81 from a web member on another node (rule http-from-web, top of 80-81)",
            A,
            v4(MAC_A, MAC_GW, tcp(WEB_REMOTE, A_IP, 50001, 81, TCP_SYN)),
            By("http-from-web"),
        ),
        Gets(
            "http 80 from B, which is not in web",
            A,
            v4(MAC_A, MAC_B, tcp(B_IP, A_IP, 50002, 80, TCP_SYN)),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "http 82 from a web member: beyond the range",
            A,
            v4(MAC_A, MAC_GW, tcp(WEB_REMOTE, A_IP, 50003, 82, TCP_SYN)),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "dns from 192.0.2.9 (rule dns-from-net: remote prefix)",
            A,
            v4(MAC_A, MAC_GW, ipv4_udp([192, 0, 2, 9], A_IP, 3333, 53, b"q")),
            By("dns-from-net"),
        ),
        Gets(
            "dns from 192.0.3.9, outside the prefix",
            A,
            v4(MAC_A, MAC_GW, ipv4_udp([192, 0, 3, 9], A_IP, 3333, 53, b"q")),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "a ping to A (rule ping: ICMP type 8)",
            A,
            v4(MAC_A, MAC_GW, ipv4_icmp_echo(far, A_IP)),
            By("ping"),
        ),
        Gets(
            "ICMP timestamp (type 13) to A",
            A,
            v4(MAC_A, MAC_GW, ipv4_icmp(far, A_IP, 13, 0, [0, 1, 0, 1], &[0; 12])),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "VRRP (protocol 112) to A (a protocol-number rule)",
            A,
            v4(MAC_A, MAC_GW, ipv4(far, A_IP, 112, &[0x21; 20])),
            Pass,
        ),
        Gets(
            "protocol 113 to A",
            A,
            v4(MAC_A, MAC_GW, ipv4(far, A_IP, 113, &[0; 20])),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "tcp 65535 to A (rule top-port: min = max = 65535)",
            A,
            v4(MAC_A, MAC_GW, tcp(far, A_IP, 1, 65535, TCP_SYN)),
            By("top-port"),
        ),
        Gets(
            "tcp 65534 to A",
            A,
            v4(MAC_A, MAC_GW, tcp(far, A_IP, 1, 65534, TCP_SYN)),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "tcp port 0 to A",
            A,
            v4(MAC_A, MAC_GW, tcp(far, A_IP, 1, 0, TCP_SYN)),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "tcp port 1 to A (rule port-one: min = max = 1)",
            A,
            v4(MAC_A, MAC_GW, tcp(far, A_IP, 3, 1, TCP_SYN)),
            By("port-one"),
        ),
        Gets(
            "tcp port 2 to A, above port-one",
            A,
            v4(MAC_A, MAC_GW, tcp(far, A_IP, 3, 2, TCP_SYN)),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "ssh over IPv6 behind hop-by-hop and destination options (rule ssh6)",
            A,
            eth(
                MAC_A,
                MAC_GW,
                0x86dd,
                &ipv6_ext(
                    v6("2001:db8::99"),
                    v6("2001:db8::a"),
                    &[Ext::HopByHop, Ext::DestOpts],
                    6,
                    &tcp_segment(5000, 22, TCP_SYN),
                ),
            ),
            Pass,
        ),
        Gets(
            "tcp 23 over IPv6 behind the same headers",
            A,
            eth(
                MAC_A,
                MAC_GW,
                0x86dd,
                &ipv6_ext(
                    v6("2001:db8::99"),
                    v6("2001:db8::a"),
                    &[Ext::HopByHop, Ext::DestOpts],
                    6,
                    &tcp_segment(5000, 23, TCP_SYN),
                ),
            ),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "B takes PostgreSQL from A, a web member (rule pg-from-web, its first group's)",
            B,
            v4(MAC_B, MAC_A, tcp(A_IP, B_IP, 40000, 5432, TCP_SYN)),
            By("pg-from-web"),
        ),
        Gets(
            "B takes ssh from the admin network (rule admin-ssh, its second group's)",
            B,
            v4(MAC_B, MAC_GW, tcp([192, 0, 2, 9], B_IP, 40000, 22, TCP_SYN)),
            By("admin-ssh"),
        ),
        Gets(
            "B refuses ssh from elsewhere: neither of its groups admits it",
            B,
            v4(MAC_B, MAC_GW, tcp(far, B_IP, 40000, 22, TCP_SYN)),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "B refuses PostgreSQL from the admin network: admin admits ssh only",
            B,
            v4(MAC_B, MAC_GW, tcp([192, 0, 2, 9], B_IP, 40000, 5432, TCP_SYN)),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "B refuses PostgreSQL from X, who is in no group",
            B,
            v4(MAC_B, MAC_X, tcp(X_IP, B_IP, 40000, 5432, TCP_SYN)),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "X, without port security, is never filtered",
            X,
            v4(MAC_X, MAC_GW, tcp(far, X_IP, 1, 23, TCP_SYN)),
            Pass,
        ),
        Gets(
            "ARP is not IP: the groups do not filter it",
            N,
            arp_request(MAC_A, A_IP, N_IP),
            By("unfiltered"),
        ),
    ];
    run(&mut bench(), steps);
}

#[test]
fn connection_tracking_replies_invalid_and_related() {
    use Expect::*;
    use Step::*;
    let syn = tcp(A_IP, B_IP, 40000, 5432, TCP_SYN);
    let steps = vec![
        Sends("A opens a connection to B (rule out4)", A, v4(MAC_B, MAC_A, syn.clone()), By("out4")),
        Gets(
            "B's SYN-ACK reaches A as a reply, though no ingress rule of A admits tcp 40000",
            A,
            v4(MAC_A, MAC_B, tcp(B_IP, A_IP, 5432, 40000, TCP_SYN | TCP_ACK)),
            By("tracked"),
        ),
        Gets(
            "a SYN-ACK of no connection is invalid",
            A,
            v4(MAC_A, MAC_B, tcp(B_IP, A_IP, 5432, 40001, TCP_SYN | TCP_ACK)),
            Drop(DropReason::CtInvalid),
        ),
        Gets(
            "a RST of no connection is invalid",
            A,
            v4(MAC_A, MAC_B, tcp(B_IP, A_IP, 5432, 40001, TCP_RST)),
            Drop(DropReason::CtInvalid),
        ),
        Gets(
            "a FIN without ACK is invalid, even on a connection",
            A,
            v4(MAC_A, MAC_B, tcp(B_IP, A_IP, 5432, 40000, TCP_FIN)),
            Drop(DropReason::CtInvalid),
        ),
        Sends(
            "SYN+FIN is invalid",
            A,
            v4(MAC_B, MAC_A, tcp(A_IP, B_IP, 40010, 5432, TCP_SYN | TCP_FIN)),
            Drop(DropReason::CtInvalid),
        ),
        Sends(
            "no flags at all is invalid",
            A,
            v4(MAC_B, MAC_A, tcp(A_IP, B_IP, 40011, 5432, 0)),
            Drop(DropReason::CtInvalid),
        ),
        Gets(
            "data of the connection flows on (ACK|PSH)",
            A,
            v4(MAC_A, MAC_B, tcp(B_IP, A_IP, 5432, 40000, TCP_ACK | TCP_PSH)),
            Pass,
        ),
        Gets(
            "an ICMP error quoting A's connection reaches A (related)",
            A,
            v4(MAC_A, MAC_GW, unreachable([10, 10, 10, 1], A_IP, &syn)),
            Pass,
        ),
        Gets(
            "an ICMP error quoting a flow A never opened is invalid",
            A,
            v4(MAC_A, MAC_GW, unreachable([10, 10, 10, 1], A_IP, &tcp(A_IP, B_IP, 40002, 5432, TCP_SYN))),
            Drop(DropReason::CtInvalid),
        ),
        Gets(
            "a ping reaches A (rule ping)",
            A,
            v4(MAC_A, MAC_GW, ipv4_icmp_echo([203, 0, 113, 5], A_IP)),
            Pass,
        ),
        Sends(
            "A's echo reply leaves as a reply",
            A,
            v4(
                MAC_GW,
                MAC_A,
                ipv4_icmp(A_IP, [203, 0, 113, 5], 0, 0, [0x12, 0x34, 0, 1], b"datapath-test-payload"),
            ),
            Pass,
        ),
        Gets(
            "an echo reply that answers no request is invalid",
            A,
            v4(MAC_A, MAC_GW, ipv4_icmp([203, 0, 113, 5], A_IP, 0, 0, [0x99, 0x99, 0, 1], b"x")),
            Drop(DropReason::CtInvalid),
        ),
        Gets(
            "a mid-stream ACK is picked up as new, and the rules decide (ssh)",
            A,
            v4(MAC_A, MAC_GW, tcp([198, 51, 100, 8], A_IP, 50100, 22, TCP_ACK)),
            Pass,
        ),
        Gets(
            "a mid-stream ACK the rules do not admit",
            A,
            v4(MAC_A, MAC_GW, tcp([198, 51, 100, 8], A_IP, 50100, 24, TCP_ACK)),
            Drop(DropReason::SgIngressDenied),
        ),
    ];
    run(&mut bench(), steps);
}

#[test]
fn fixed_allowances_stateless_ports_and_fragments() {
    use Expect::*;
    use Step::*;
    let dhcp_server = [10, 10, 10, 10];
    let (first_ok, later_ok) = {
        let udp = udp4_segment(3333, 53, &[7; 24]);
        ipv4_fragments([192, 0, 2, 9], A_IP, 77, 17, &udp, 16)
    };
    let (first_no, later_no) = {
        let udp = udp4_segment(3333, 53, &[7; 24]);
        ipv4_fragments([192, 0, 3, 9], A_IP, 78, 17, &udp, 16)
    };
    let a6 = v6("2001:db8::a");
    let steps = vec![
        Sends(
            "N, in no group, may send DHCPDISCOVER",
            N,
            v4(BROADCAST, MAC_N, ipv4_udp([0; 4], [255; 4], 68, 67, &dhcp_body(1, MAC_N))),
            By("allowance"),
        ),
        Gets(
            "and gets the offer",
            N,
            v4(MAC_N, MAC_GW, ipv4_udp(dhcp_server, N_IP, 67, 68, &dhcp_body(2, MAC_N))),
            Pass,
        ),
        Sends(
            "N may send nothing else",
            N,
            v4(MAC_B, MAC_N, ipv4_udp(N_IP, B_IP, 1000, 53, b"q")),
            Drop(DropReason::SgEgressDenied),
        ),
        Gets(
            "nor get a ping",
            N,
            v4(MAC_N, MAC_GW, ipv4_icmp_echo([203, 0, 113, 5], N_IP)),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "a neighbour solicitation reaches A",
            A,
            eth(
                MAC_A,
                MAC_GW,
                0x86dd,
                &ipv6(v6("fe80::1"), a6, 58, &icmpv6(v6("fe80::1"), a6, 135, 0, &[0; 20])),
            ),
            Pass,
        ),
        Gets(
            "a router advertisement reaches A, which has an IPv6 address",
            A,
            eth(
                MAC_A,
                MAC_GW,
                0x86dd,
                &ipv6(
                    v6("fe80::1"),
                    v6("ff02::1"),
                    58,
                    &icmpv6(v6("fe80::1"), v6("ff02::1"), 134, 0, &[0; 12]),
                ),
            ),
            Pass,
        ),
        Gets(
            "but not N, which has none",
            N,
            eth(
                MAC_N,
                MAC_GW,
                0x86dd,
                &ipv6(
                    v6("fe80::1"),
                    v6("ff02::1"),
                    58,
                    &icmpv6(v6("fe80::1"), v6("ff02::1"), 134, 0, &[0; 12]),
                ),
            ),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "stateless: udp 5000 reaches S (rule udp-in)",
            S,
            v4(MAC_S, MAC_GW, ipv4_udp([198, 51, 100, 1], S_IP, 7000, 5000, b"x")),
            Pass,
        ),
        Sends(
            "S sends udp 6000 -> 7000 (rule udp-out)",
            S,
            v4(MAC_GW, MAC_S, ipv4_udp(S_IP, [198, 51, 100, 1], 6000, 7000, b"x")),
            Pass,
        ),
        Gets(
            "the answer is not a tracked reply: no rule admits udp 6000",
            S,
            v4(MAC_S, MAC_GW, ipv4_udp([198, 51, 100, 1], S_IP, 7000, 6000, b"x")),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "stateless: a lone ACK reaches S (rule tcp-in): nothing is invalid without tracking",
            S,
            v4(MAC_S, MAC_GW, tcp([198, 51, 100, 1], S_IP, 1234, 8080, TCP_ACK)),
            Pass,
        ),
        Sends(
            "stateless: S may not send tcp (no rule)",
            S,
            v4(MAC_GW, MAC_S, tcp(S_IP, [198, 51, 100, 1], 8080, 1234, TCP_SYN | TCP_ACK)),
            Drop(DropReason::SgEgressDenied),
        ),
        Gets(
            "a first fragment of dns from 192.0.2.9 reaches A",
            A,
            v4(MAC_A, MAC_GW, first_ok),
            By("dns-from-net"),
        ),
        Gets("its later fragment follows it", A, v4(MAC_A, MAC_GW, later_ok), By("fragment")),
        Gets(
            "a first fragment from outside the prefix",
            A,
            v4(MAC_A, MAC_GW, first_no),
            Drop(DropReason::SgIngressDenied),
        ),
        Gets(
            "its later fragment gets the same verdict",
            A,
            v4(MAC_A, MAC_GW, later_no),
            Drop(DropReason::SgIngressDenied),
        ),
    ];
    run(&mut bench(), steps);
}

/// A full connection table refuses new connections and keeps carrying the
/// established ones; a connection that closes (RST) moves to `CT_CLOSING`,
/// where its late packets still pass, and its room in `CONNTRACK` takes the
/// next new connection.
#[test]
fn a_full_connection_table_refuses_new_connections_only() {
    use Expect::*;
    use Step::*;
    let mut bench = bench();
    run(
        &mut bench,
        vec![Sends(
            "A opens a connection to B",
            A,
            v4(MAC_B, MAC_A, tcp(A_IP, B_IP, 40000, 5432, TCP_SYN)),
            Pass,
        )],
    );
    let (key, entry) = bench.dp.maps.conntrack.iter().next().expect("one connection").unwrap();
    let mut filler = key;
    let mut n = 1;
    while n < MAX_CONNTRACK {
        filler.remote_port = (n & 0xffff) as u16;
        filler.local_port = 1 + (n >> 16) as u16;
        bench.dp.maps.conntrack.insert(filler, entry, 0).expect("filling the table");
        n += 1;
    }
    run(
        &mut bench,
        vec![
            Sends(
                "a new connection finds the table full",
                A,
                v4(MAC_B, MAC_A, tcp(A_IP, B_IP, 40001, 5432, TCP_SYN)),
                Drop(DropReason::CtFull),
            ),
            Gets(
                "the established one carries on",
                A,
                v4(MAC_A, MAC_B, tcp(B_IP, A_IP, 5432, 40000, TCP_SYN | TCP_ACK)),
                Pass,
            ),
        ],
    );

    // The agent's batched read (its sweep and `datapath conntrack`) sees
    // every entry of the full table once, as the entry-by-entry walk does.
    let started = std::time::Instant::now();
    let batched = batch::read_all::<CtKey, CtEntry>(bench.dp.maps.conntrack.map()).expect("a batched read");
    let batched_in = started.elapsed();
    let started = std::time::Instant::now();
    let walked: Vec<(CtKey, CtEntry)> = bench.dp.maps.conntrack.iter().map(Result::unwrap).collect();
    let walked_in = started.elapsed();
    assert_eq!(batched.len(), MAX_CONNTRACK as usize);
    let keys = |v: &[(CtKey, CtEntry)]| {
        let mut k: Vec<Vec<u8>> = v.iter().map(|(k, _)| bytemuck::bytes_of(k).to_vec()).collect();
        k.sort();
        k
    };
    let ks = keys(&batched);
    assert!(ks.windows(2).all(|w| w[0] != w[1]), "no entry twice");
    assert_eq!(ks, keys(&walked), "the batched read and the walk see the same keys");
    let by_key: std::collections::HashMap<Vec<u8>, Vec<u8>> = walked
        .iter()
        .map(|(k, e)| (bytemuck::bytes_of(k).to_vec(), bytemuck::bytes_of(e).to_vec()))
        .collect();
    assert!(
        batched.iter().all(|(k, e)| by_key[bytemuck::bytes_of(k)] == bytemuck::bytes_of(e)),
        "each value comes with its key"
    );
    eprintln!("{MAX_CONNTRACK} connections read in {batched_in:?} in batches, {walked_in:?} one by one");

    run(
        &mut bench,
        vec![Sends(
            "A resets the established connection",
            A,
            v4(MAC_B, MAC_A, tcp(A_IP, B_IP, 40000, 5432, TCP_RST | TCP_ACK)),
            By("tracked"),
        )],
    );
    let maps = &bench.dp.maps;
    let closing: Vec<(CtKey, CtEntry)> = maps.ct_closing.iter().map(Result::unwrap).collect();
    assert_eq!(closing.len(), 1, "the reset connection is in CT_CLOSING: {closing:?}");
    assert_eq!(closing[0].0, key, "CT_CLOSING holds the reset connection's key");
    assert_ne!(closing[0].1.flags & datapath_common::CT_F_RST, 0, "its entry saw the RST");
    assert!(maps.conntrack.get(&key, 0).is_err(), "the reset connection left CONNTRACK");
    run(
        &mut bench,
        vec![
            Gets(
                "B's late RST of the closed connection still passes, found in CT_CLOSING",
                A,
                v4(MAC_A, MAC_B, tcp(B_IP, A_IP, 5432, 40000, TCP_RST)),
                By("tracked"),
            ),
            Sends(
                "the new connection takes the room the closed one left",
                A,
                v4(MAC_B, MAC_A, tcp(A_IP, B_IP, 40001, 5432, TCP_SYN)),
                By("out4"),
            ),
            Sends(
                "and the next one finds the table full again",
                A,
                v4(MAC_B, MAC_A, tcp(A_IP, B_IP, 40002, 5432, TCP_SYN)),
                Drop(DropReason::CtFull),
            ),
            Sends(
                "A reopens the closed connection with a SYN: new, in CONNTRACK, which is full",
                A,
                v4(MAC_B, MAC_A, tcp(A_IP, B_IP, 40000, 5432, TCP_SYN)),
                Drop(DropReason::CtFull),
            ),
        ],
    );
    let listed = datapath_user::conntrack::read_all(&bench.dp.maps).expect("reading both tables");
    assert_eq!(listed.len(), MAX_CONNTRACK as usize + 1, "the agent lists both tables' connections once");
}
