//! Security groups on live traffic between VM namespaces, on one node and
//! across two, modelled on neutron's functional firewall tests and
//! neutron-tempest-plugin's `test_security_groups.py`: the default group's
//! shape, a port in no group, an established connection cut when its rule
//! goes while another carries on, the same session back when the rule
//! returns, and connections that outlive an agent killed and restarted.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use datapath_common::DropReason;
use datapath_tests::{
    cluster::{Cluster, PortSpec},
    netns::{Netns, ThreadNetns, reset_on_close, tcp_connects},
    pinned::{ifindex_in, port_view},
    wait_for, wait_until,
};
use datapath_user::frames;
use serde_json::{Value, json};

use crate::scenario::*;

/// The groups of the test: "default" as Neutron creates it (egress to
/// anyone, ingress from members), and "server" with two TCP ports open.
fn groups(with_5555: bool) -> Value {
    let mut server = vec![
        json!({"id": "egress-any", "direction": "egress", "ethertype": "IPv4"}),
        json!({"id": "tcp-6666", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
               "port_range_min": 6666, "port_range_max": 6666}),
    ];
    if with_5555 {
        server.push(json!({"id": "tcp-5555", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                           "port_range_min": 5555, "port_range_max": 5555, "remote_ip_prefix": "10.10.10.0/24"}));
    }
    json!([
        {"id": "default", "security_group_rules": [
            {"id": "d-egress4", "direction": "egress", "ethertype": "IPv4"},
            {"id": "d-egress6", "direction": "egress", "ethertype": "IPv6"},
            {"id": "d-from-members4", "direction": "ingress", "ethertype": "IPv4", "remote_group_id": "default"},
            {"id": "d-from-members6", "direction": "ingress", "ethertype": "IPv6", "remote_group_id": "default"}]},
        {"id": "server", "security_group_rules": server},
        {"id": "client", "security_group_rules": [
            {"id": "c-egress4", "direction": "egress", "ethertype": "IPv4"}]}
    ])
}

pub(crate) fn with_groups(p: &PortSpec, groups: &[&str]) -> Value {
    let mut v = p.to_json();
    v["security_groups"] = json!(groups);
    v
}

pub(crate) fn listen_in(ns: &Netns, addr: &str) -> TcpListener {
    let _in = ThreadNetns::enter(ns).unwrap();
    TcpListener::bind(addr).unwrap()
}

pub(crate) fn connect_in(ns: &Netns, addr: &str) -> std::io::Result<TcpStream> {
    let _in = ThreadNetns::enter(ns).unwrap();
    TcpStream::connect_timeout(&addr.parse::<SocketAddr>().unwrap(), Duration::from_secs(3))
}

/// A TCP connection between two VMs: the client's end and the server's.
pub(crate) struct Conn {
    client: TcpStream,
    server: TcpStream,
}

impl Conn {
    pub(crate) fn open(server_ns: &Netns, client_ns: &Netns, addr: &str) -> Conn {
        let listener = listen_in(server_ns, addr);
        let client = connect_in(client_ns, addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let (server, _) = listener.accept().unwrap();
        Conn { client, server }
    }

    /// Whether `msg` from the client arrives at the server within `wait`.
    /// Bytes still in flight from earlier tries may arrive first: what
    /// counts is that `msg` ends what arrived.
    pub(crate) fn carries(&mut self, msg: &[u8], wait: Duration) -> bool {
        self.client.write_all(msg).unwrap();
        let deadline = std::time::Instant::now() + wait;
        let mut got = Vec::new();
        while !got.ends_with(msg) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            self.server.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 64];
            match self.server.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        true
    }
}

#[test]
fn groups_on_live_traffic_cut_and_restore_connections_and_survive_a_restart() {
    let mut c = Cluster::new("sg", 2).unwrap();
    // a: a server in "default" and "server" (node0); b: in "default" (node1);
    // k: a client in "client" only (node1), so that only "server" admits it at a;
    // n: port security on and no group (node0); x: in "default", on node0 with a.
    let a = vm1();
    let b = vm2();
    let n = PortSpec::vm(
        "0e0e0e0e-0000-4000-8000-000000000001",
        NET1,
        "fa:16:3e:0e:00:01",
        "10.10.10.7",
        "node0",
    );
    let x = PortSpec::vm(
        "0f0f0f0f-0000-4000-8000-000000000001",
        NET1,
        "fa:16:3e:0f:00:01",
        "10.10.10.8",
        "node0",
    );
    let k = PortSpec::vm(
        "0c0c0c0c-0000-4000-8000-000000000001",
        NET1,
        "fa:16:3e:0c:00:01",
        "10.10.10.9",
        "node1",
    );
    let doc = |with_5555: bool| {
        json!({"networks": networks(), "ports": [
            with_groups(&a, &["default", "server"]), with_groups(&b, &["default"]),
            with_groups(&n, &[]), with_groups(&x, &["default"]),
            with_groups(&k, &["client"])],
            "security_groups": groups(with_5555)})
    };
    c.write_bindings(&doc(true)).unwrap();
    let ia = c.add_vm("node0", a.clone()).unwrap();
    let ib = c.add_vm("node1", b.clone()).unwrap();
    let in_ = c.add_vm("node0", n.clone()).unwrap();
    let ix = c.add_vm("node0", x.clone()).unwrap();
    let ik = c.add_vm("node1", k.clone()).unwrap();
    for i in [ia, ib, in_, ix, ik] {
        c.vms[i].set_static_ip().unwrap();
    }
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();

    // The default group: members reach each other, across nodes and on one.
    assert!(c.vms[ib].reaches(&a.ip), "b reaches a across nodes (remote group default)");
    assert!(c.vms[ix].reaches(&a.ip), "x reaches a on the same node");
    let pin0 = c.pins.path().join("node0");
    let node0 = &c.node("node0").ns;
    let drops = |port: &PortSpec, reason: DropReason| {
        port_view(&pin0, ifindex_in(node0, &port.device()).unwrap()).unwrap().drops(reason)
    };
    // A port with port security and no group: nothing in, nothing out.
    assert!(!c.vms[in_].ping(&a.ip, 2), "n, in no group, sends nothing");
    assert!(drops(&n, DropReason::SgEgressDenied) >= 1, "n's pings counted as sg_egress_denied");
    assert!(!c.vms[ix].ping(&n.ip, 2), "nothing reaches n");
    assert!(drops(&n, DropReason::SgIngressDenied) >= 1, "pings to n counted as sg_ingress_denied at n");
    assert!(!c.vms[ik].ping(&a.ip, 2), "k, not in default, does not reach a (no rule admits its ping)");

    // Two connections from k to a, each admitted by its own rule.
    let mut cut = Conn::open(&c.vms[ia].ns, &c.vms[ik].ns, &format!("{}:5555", a.ip));
    let mut kept = Conn::open(&c.vms[ia].ns, &c.vms[ik].ns, &format!("{}:6666", a.ip));
    assert!(cut.carries(b"one", Duration::from_secs(5)), "5555 carries data");
    assert!(kept.carries(b"one", Duration::from_secs(5)), "6666 carries data");

    // `datapath conntrack` lists them at a, each with the rule that admitted it.
    let listed = |c: &Cluster| {
        let v = c.cli_json("node0", &["conntrack", "--port", &a.device()]).unwrap();
        v["connections"].as_array().cloned().unwrap_or_default()
    };
    let at_a = listed(&c);
    let find = |rows: &[Value], port: &str| {
        rows.iter().find(|r| r["local"] == format!("{}:{port}", a.ip) && r["protocol"] == "tcp").cloned()
    };
    let row = find(&at_a, "5555").unwrap_or_else(|| panic!("no entry of 5555 at a: {at_a:?}"));
    assert_eq!(
        (row["direction"].as_str(), row["state"].as_str(), row["rule"].as_str()),
        (Some("ingress"), Some("established"), Some("tcp-5555")),
        "{row}"
    );
    assert!(find(&at_a, "6666").is_some_and(|r| r["rule"] == "tcp-6666"), "{at_a:?}");

    // `datapath trace --receive` names the rule that admits a new connection
    // to a, or says that none does.
    let syn_to = |port: u16| {
        let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap().octets();
        let mac = |s: &str| datapath_user::bindings::parse_mac(s).unwrap();
        let f = frames::eth(
            mac(&a.mac),
            mac(&k.mac),
            0x0800,
            &frames::ipv4_tcp(ip(&k.ip), ip(&a.ip), 40999, port, frames::TCP_SYN),
        );
        f.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let trace = |port: u16| {
        c.cli_json("node0", &["trace", "--port", &a.device(), "--receive", "--frame", &syn_to(port)]).unwrap()
    };
    let t = trace(6666);
    assert_eq!(
        (t["verdict"].as_str(), t["security_group"].as_str()),
        (Some("forward"), Some("admitted by rule tcp-6666")),
        "{t:#}"
    );
    let t = trace(7777);
    assert_eq!(
        (t["reason"].as_str(), t["security_group"].as_str()),
        (Some("sg_ingress_denied"), Some("no rule admits it")),
        "{t:#}"
    );

    // A port no rule opens is refused.
    let refused = connect_in(&c.vms[ik].ns, &format!("{}:7777", a.ip));
    assert!(refused.is_err(), "tcp 7777 is no rule's: the SYN is dropped, the connect times out");

    // The rule of 5555 goes: its established connection is cut within a
    // second or so, and 6666 carries on.
    let before = drops(&a, DropReason::SgIngressDenied);
    c.write_bindings(&doc(false)).unwrap();
    wait_for("the connection on 5555 to be cut", Duration::from_secs(10), || {
        !cut.carries(b"x", Duration::from_millis(700))
    });
    assert!(kept.carries(b"two", Duration::from_secs(5)), "6666 still carries data after 5555's rule went");
    assert!(drops(&a, DropReason::SgIngressDenied) > before, "the cut connection's segments count at a");
    assert!(find(&listed(&c), "5555").is_none(), "the cut connection's entry went");

    // `conntrack flush` deletes a's entries; a connection its rules admit
    // is picked up again with its next segment.
    let flushed = c.cli_json("node0", &["conntrack", "flush", "--port", &a.device()]).unwrap();
    assert!(flushed["flushed"].as_u64().unwrap_or(0) >= 1, "{flushed}");
    assert!(kept.carries(b"flushed", Duration::from_secs(5)), "6666 carries data after a flush");
    assert!(find(&listed(&c), "6666").is_some(), "and is tracked again");

    // The rule comes back: the same session carries data again (its
    // retransmissions are admitted as new and tracked anew).
    c.write_bindings(&doc(true)).unwrap();
    assert!(
        cut.carries(b"three", Duration::from_secs(20)),
        "the session on 5555 came back when its rule did"
    );

    // SIGKILL and a new agent: not one established connection is lost.
    c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGKILL).unwrap();
    assert!(kept.carries(b"during", Duration::from_secs(5)), "6666 carries data with no agent running");
    c.start_agent("node0").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || c.cli_json("node0", &["status"]).is_ok()),
        "the new agent answers"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(kept.carries(b"after", Duration::from_secs(5)), "6666 carries data after the restart");
    assert!(cut.carries(b"after", Duration::from_secs(5)), "5555 carries data after the restart");
}

/// Connections the churning VM of the next test opens and resets.
const CHURNED: usize = 2000;
/// Room the next test leaves in `CONNTRACK`: far less than the churn's two
/// entries a connection, far more than the few open at once.
const ROOM: u32 = 200;

/// One VM opening and resetting connections faster than they expire does
/// not starve its node: each closed connection's entries move to
/// `CT_CLOSING`, so a connection table all but full (filled here from the
/// pins, with entries no sweep removes) takes every one of its connections
/// and still a neighbour's. (Before `CT_CLOSING`, the 101st connection
/// found the table full: `ct_full`.)
#[test]
fn a_vm_churning_connections_leaves_room_for_its_neighbours() {
    use aya::maps::{HashMap, IterableMap, Map, MapData};
    use datapath_common::{CT_F_INGRESS, CT_F_REPLIED, CtEntry, CtKey, IP_FAMILY_V4, MAX_CONNTRACK, names};
    use datapath_user::{batch, loader::versioned_pin_dir};

    let mut c = Cluster::new("sgchurn", 1).unwrap();
    let a = vm1();
    let port = |id: &str, mac: &str, ip: &str| PortSpec::vm(id, NET1, mac, ip, "node0");
    let s = port("05050505-0000-4000-8000-000000000001", "fa:16:3e:05:00:01", "10.10.10.15");
    let n = port("0e0e0e0e-0000-4000-8000-000000000002", "fa:16:3e:0e:00:02", "10.10.10.16");
    c.write_bindings(&json!({"networks": networks(), "ports": [
        with_groups(&a, &["default"]), with_groups(&s, &["default"]), with_groups(&n, &["default"])],
        "security_groups": groups(false)}))
        .unwrap();
    let (ia, is, in_) = (
        c.add_vm("node0", a.clone()).unwrap(),
        c.add_vm("node0", s.clone()).unwrap(),
        c.add_vm("node0", n.clone()).unwrap(),
    );
    for i in [ia, is, in_] {
        c.vms[i].set_static_ip().unwrap();
    }
    c.start_agent("node0").unwrap();
    c.wait_agent("node0", Duration::from_secs(60)).unwrap();
    let node0 = &c.node("node0").ns;
    let maps = versioned_pin_dir(&c.pins.path().join("node0")).join("maps");
    let table = |name: &str| -> HashMap<MapData, CtKey, CtEntry> {
        HashMap::try_from(Map::HashMap(MapData::from_pin(maps.join(name)).unwrap())).unwrap()
    };
    let count = |name: &str| batch::read_all::<CtKey, CtEntry>(table(name).map()).unwrap().len() as u32;

    // Fill CONNTRACK but for ROOM entries: established connections of s from
    // 198.18.0.0/15, opened by a fixed allowance (table 0), which no sweep
    // cuts, and fresh for days.
    let mut conntrack = table(names::CONNTRACK);
    let sdev = ifindex_in(node0, &s.device()).unwrap();
    let sip: std::net::Ipv4Addr = s.ip.parse().unwrap();
    // The programs' clock (bpf_ktime_get_ns), as the agent reads it.
    let now = datapath_user::learned::monotonic_ns();
    let entry = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        flags: CT_F_INGRESS | CT_F_REPLIED,
        table: 0,
        rule: 0,
        lifetime_s: 432_000,
    };
    let filled = MAX_CONNTRACK - ROOM;
    let mut i = count(names::CONNTRACK);
    while i < filled {
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&sip.octets());
        let mut remote = [0u8; 16];
        remote[..4].copy_from_slice(&[198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        let key = CtKey {
            ifindex: sdev,
            local_port: 7000,
            remote_port: 40000,
            protocol: 6,
            family: IP_FAMILY_V4,
            _pad: [0; 2],
            local,
            remote,
        };
        conntrack.insert(key, entry, 0).unwrap();
        i += 1;
    }

    let addr = format!("{}:7000", s.ip);
    let listener = listen_in(&c.vms[is].ns, &addr);
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (opened, failed) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if listener.accept().is_err() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let (mut opened, mut failed) = (0, 0);
        let _in = ThreadNetns::enter(&c.vms[ia].ns).unwrap();
        let to: SocketAddr = addr.parse().unwrap();
        for _ in 0..CHURNED {
            match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                Ok(stream) => {
                    // Closed with a RST, as a load balancer's health checks and
                    // many clients close.
                    reset_on_close(&stream).expect("setting SO_LINGER 0");
                    opened += 1;
                }
                Err(_) => failed += 1,
            }
            // A full table refuses every try from here on, each after the timeout.
            if failed == 5 {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (opened, failed)
    });
    let drops = |p: &PortSpec| {
        port_view(&c.pins.path().join("node0"), ifindex_in(node0, &p.device()).unwrap()).unwrap()
    };
    assert_eq!(
        (opened, failed, drops(&a).drops(DropReason::CtFull), drops(&s).drops(DropReason::CtFull)),
        (CHURNED, 0, 0, 0),
        "every churned connection opens, none is refused ct_full at either end (opened, failed, ct_full at a, at s)"
    );
    let (open_now, closing) = (count(names::CONNTRACK), count(names::CT_CLOSING));
    println!("connection tables after the churn: CONNTRACK {open_now}, CT_CLOSING {closing}");
    assert!(open_now <= filled + 4, "closed connections left CONNTRACK: {open_now} entries, {filled} filled");
    assert!(closing >= CHURNED as u32, "the closed connections are in CT_CLOSING: {closing}");
    assert!(
        tcp_connects(&c.vms[in_].ns, &c.vms[is].ns, &format!("{}:7001", s.ip), Duration::from_secs(3))
            .unwrap(),
        "the neighbour n still opens a connection to s"
    );
}
