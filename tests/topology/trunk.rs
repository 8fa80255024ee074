//! Trunk ports (Neutron's VLAN-aware VMs) on live agents: a VM whose tap is a
//! trunk's parent reaches the parent's network untagged and each subport's
//! network (VLAN and VXLAN) by the subport's VLAN id, which never reaches the
//! wire; tags of no subport and a subport's forged sources are dropped and
//! counted where they belong; a subport's security groups filter what it
//! receives; subports come and go while another carries traffic; and
//! `datapath ports` shows the trunk.
//!
//! The host has no 8021q module, so no namespace can hold a VLAN
//! subinterface: the trunk VM is a real tap whose other end is the test
//! (`TapFd`, as QEMU holds a guest's tap). It writes frames with their
//! 802.1Q tags in them, as a guest's VLAN subinterfaces send them, and
//! reads what the tap transmits with the tag in the frame (tun writes an
//! offloaded tag inline). A thread plays the guest's stack: it answers ARP
//! and ICMP echo on each of its interfaces (untagged, and one per VLAN id)
//! and keeps every frame it got, so that the tests can say with which tag
//! each arrived. The other VMs are namespaces with their own stacks.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use datapath_common::SUBPORT_ID_BASE;
use datapath_tests::{
    capture::Capture,
    cluster::{Cluster, PortSpec, agents_json, network_json},
    link::TapFd,
    netns::Netns,
    wait_for,
};
use datapath_user::{
    bindings::parse_mac,
    frames::{self, Mac},
};
use serde_json::{Value, json};

use crate::{
    monitor::{listeners, monitor},
    scenario::{FLAT, NET1, NET2, networks},
};

const TUN: &str = "8c166940-9402-4aca-eaf3-a0753f07373f";
const VNI: u32 = 5000;
const TRUNK: &str = "7e57a0a0-0000-4000-8000-00000000beef";

/// The trunk's parent: the VM's own port on net1 (VLAN 1000), untagged on its tap.
fn parent() -> PortSpec {
    PortSpec::vm("a0a0a0a0-0a00-4000-8000-000000000001", NET1, "fa:16:3e:a0:00:01", "10.10.10.2", "node0")
}

/// A subport on net2 (VLAN 1001) with the parent's MAC, as a guest's VLAN
/// subinterface has (Neutron's advice for VLAN-aware VMs).
fn sub_vlan() -> PortSpec {
    PortSpec::vm("a1a1a1a1-0a00-4000-8000-000000000002", NET2, "fa:16:3e:a0:00:01", "10.10.11.2", "node0")
}

/// A subport on the VXLAN network, with a MAC of its own.
fn sub_tun() -> PortSpec {
    PortSpec::vm("a2a2a2a2-0a00-4000-8000-000000000003", TUN, "fa:16:3e:a2:00:03", "10.20.0.2", "node0")
}

/// A subport on the flat network, with a MAC of its own.
fn sub_flat() -> PortSpec {
    PortSpec::vm("a3a3a3a3-0a00-4000-8000-000000000004", FLAT, "fa:16:3e:a3:00:04", "10.10.12.2", "node0")
}

/// A VM (namespace) of `net` on `host`, `n` telling them apart.
fn peer(n: u8, net: &str, ip: &str, host: &str) -> PortSpec {
    PortSpec::vm(
        &format!("b{n}b{n}b{n}b{n}-0b00-4000-8000-00000000000{n}"),
        net,
        &format!("fa:16:3e:b{n}:00:0{n}"),
        ip,
        host,
    )
}

fn tun_network() -> Value {
    let mut tun = network_json(TUN, "tun1", "vxlan", Some(VNI));
    tun["mtu"] = json!(1450);
    tun["provider:physical_network"] = Value::Null;
    tun
}

/// The bindings: `ports` (their JSON), and the trunk of `parent()` with `subports` (port, VLAN id).
fn bindings(ports: &[Value], subports: &[(&PortSpec, u16)], agents: usize) -> Value {
    let mut nets = networks();
    nets.push(tun_network());
    let sub_ports: Vec<Value> = subports
        .iter()
        .map(|(p, vid)| json!({"port_id": p.id, "segmentation_type": "vlan", "segmentation_id": vid}))
        .collect();
    json!({
        "networks": nets,
        "ports": ports,
        "trunks": [{"id": TRUNK, "name": "trunk0", "port_id": parent().id, "sub_ports": sub_ports,
                    "admin_state_up": true}],
        "agents": agents_json(agents),
    })
}

fn mac(s: &str) -> Mac {
    parse_mac(s).unwrap()
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(be16(&[c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request (`kind` 8) or reply (0) in IPv4.
fn icmp_echo(kind: u8, src: [u8; 4], dst: [u8; 4], id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(data);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    frames::ipv4(src, dst, 1, &icmp)
}

/// A frame as a VM's stack sees it: its outer tag (TPID, VID; (0, 0) untagged) and the rest.
struct Rx<'a> {
    tag: (u16, u16),
    dst: Mac,
    src: Mac,
    ethertype: u16,
    payload: &'a [u8],
}

impl<'a> Rx<'a> {
    fn parse(f: &'a [u8]) -> Option<Self> {
        if f.len() < 14 {
            return None;
        }
        let (dst, src) = (f[0..6].try_into().ok()?, f[6..12].try_into().ok()?);
        let et = be16(&f[12..]);
        let (tag, ethertype, payload) = if et == 0x8100 || et == 0x88a8 {
            if f.len() < 18 {
                return None;
            }
            ((et, be16(&f[14..]) & 0x0fff), be16(&f[16..]), &f[18..])
        } else {
            ((0, 0), et, &f[14..])
        };
        Some(Rx { tag, dst, src, ethertype, payload })
    }

    /// The VLAN id of an 802.1Q tag: 0 untagged, None for another TPID.
    fn vid(&self) -> Option<u16> {
        match self.tag {
            (0, _) => Some(0),
            (0x8100, vid) => Some(vid),
            _ => None,
        }
    }

    /// ARP: (op, sender MAC, sender IP, target IP).
    fn arp(&self) -> Option<(u16, Mac, [u8; 4], [u8; 4])> {
        let p = self.payload;
        if self.ethertype != 0x0806 || p.len() < 28 {
            return None;
        }
        Some((
            be16(&p[6..]),
            p[8..14].try_into().ok()?,
            p[14..18].try_into().ok()?,
            p[24..28].try_into().ok()?,
        ))
    }

    /// The IPv4 packet in the frame.
    fn ipv4(&self) -> Option<Ip<'a>> {
        let p = self.payload;
        if self.ethertype != 0x0800 || p.len() < 20 || p[0] >> 4 != 4 {
            return None;
        }
        let (ihl, total) = (usize::from(p[0] & 0x0f) * 4, usize::from(be16(&p[2..])));
        let upper = p.get(ihl..total.min(p.len()))?;
        Some(Ip { src: p[12..16].try_into().ok()?, dst: p[16..20].try_into().ok()?, proto: p[9], upper })
    }

    /// The ICMP echo request or reply in the frame.
    fn echo(&self) -> Option<Echo> {
        let ip = self.ipv4()?;
        let icmp = ip.upper;
        if ip.proto != 1 || icmp.len() < 8 || !(icmp[0] == 0 || icmp[0] == 8) {
            return None;
        }
        Some(Echo { kind: icmp[0], id: be16(&icmp[4..]), seq: be16(&icmp[6..]), src: ip.src })
    }

    /// UDP's destination port.
    fn udp_dport(&self) -> Option<u16> {
        let ip = self.ipv4()?;
        (ip.proto == 17 && ip.upper.len() >= 8).then(|| be16(&ip.upper[2..]))
    }
}

/// An IPv4 packet: its addresses, protocol and upper-layer bytes.
struct Ip<'a> {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    upper: &'a [u8],
}

/// An ICMP echo: `kind` 8 (request) or 0 (reply).
struct Echo {
    kind: u8,
    id: u16,
    seq: u16,
    src: [u8; 4],
}

/// One of the guest's interfaces: untagged (`vid` 0) or a VLAN subinterface.
#[derive(Clone, Copy)]
struct Iface {
    vid: u16,
    mac: Mac,
    ip: [u8; 4],
}

impl Iface {
    fn of(p: &PortSpec, vid: u16) -> Self {
        Iface { vid, mac: mac(&p.mac), ip: ip4(&p.ip) }
    }

    /// A frame this interface sends: tagged with its VLAN id, if it has one.
    fn frame(&self, dst: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let f = frames::eth(dst, self.mac, ethertype, payload);
        if self.vid == 0 { f } else { frames::tagged(&f, 0x8100, self.vid) }
    }
}

struct Guest {
    tap: TapFd,
    ifaces: Vec<Iface>,
    seen: Mutex<Vec<Vec<u8>>>,
    stop: AtomicBool,
}

impl Guest {
    /// Keeps every frame, and answers ARP requests and pings for an
    /// interface's address on that interface's VLAN, until told to stop.
    fn serve(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let Ok(Some(f)) = self.tap.read_frame(Duration::from_millis(100)) else { continue };
            if let Some(answer) = self.answer(&f) {
                let _ = self.tap.write_frame(&answer);
            }
            self.seen.lock().unwrap().push(f);
        }
    }

    fn answer(&self, f: &[u8]) -> Option<Vec<u8>> {
        let rx = Rx::parse(f)?;
        let me = self.ifaces.iter().find(|i| Some(i.vid) == rx.vid())?;
        if let Some((1, sha, spa, tpa)) = rx.arp()
            && tpa == me.ip
        {
            return Some(me.frame(sha, 0x0806, &frames::arp(2, me.mac, me.ip, sha, spa)));
        }
        let (ip, echo) = (rx.ipv4()?, rx.echo()?);
        if echo.kind == 8 && ip.dst == me.ip && rx.dst == me.mac {
            let reply = icmp_echo(0, me.ip, ip.src, echo.id, echo.seq, &ip.upper[8..]);
            return Some(me.frame(rx.src, 0x0800, &reply));
        }
        None
    }
}

/// The trunk VM: the parent's tap held by the test, and the guest's stack on it.
struct TrunkVm {
    guest: Arc<Guest>,
    thread: Option<JoinHandle<()>>,
}

impl TrunkVm {
    /// The tap `device` in `ns`, up, answering on `ifaces`.
    fn start(ns: &Netns, device: &str, ifaces: Vec<Iface>) -> Self {
        let tap = TapFd::open(Some(ns), device).unwrap();
        tap.up().unwrap();
        let guest =
            Arc::new(Guest { tap, ifaces, seen: Mutex::new(Vec::new()), stop: AtomicBool::new(false) });
        let g = Arc::clone(&guest);
        let thread = std::thread::spawn(move || g.serve());
        TrunkVm { guest, thread: Some(thread) }
    }

    fn iface(&self, vid: u16) -> Iface {
        *self
            .guest
            .ifaces
            .iter()
            .find(|i| i.vid == vid)
            .unwrap_or_else(|| panic!("no interface on VLAN {vid}"))
    }

    /// Sends `frame` as the guest.
    fn send(&self, frame: &[u8]) {
        self.guest.tap.write_frame(frame).unwrap();
    }

    /// How many frames the guest got so far.
    fn mark(&self) -> usize {
        self.guest.seen.lock().unwrap().len()
    }

    /// Every frame the guest got since `mark`.
    fn since(&self, mark: usize) -> Vec<Vec<u8>> {
        self.guest.seen.lock().unwrap()[mark..].to_vec()
    }

    /// The first frame since `mark` for which `want` holds, within `timeout`.
    fn wait_frame(&self, mark: usize, timeout: Duration, want: impl Fn(&Rx) -> bool) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let hit = self.since(mark).into_iter().find(|f| Rx::parse(f).is_some_and(|r| want(&r)));
            if hit.is_some() || Instant::now() > deadline {
                return hit;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// ARP from the interface of `vid` for `ip`: the reply, whatever its tag.
    fn resolve(&self, vid: u16, ip: &str) -> Option<Vec<u8>> {
        let me = self.iface(vid);
        let ip = ip4(ip);
        for _ in 0..5 {
            let mark = self.mark();
            self.send(&me.frame(frames::BROADCAST, 0x0806, &frames::arp(1, me.mac, me.ip, [0; 6], ip)));
            let reply = self.wait_frame(mark, Duration::from_secs(2), |r| {
                r.arp().is_some_and(|(op, _, spa, tpa)| op == 2 && spa == ip && tpa == me.ip)
            });
            if reply.is_some() {
                return reply;
            }
        }
        None
    }

    /// A ping from the interface of `vid` to `ip` (resolved first), with ICMP
    /// id `id`: the echo reply, whatever its tag.
    fn ping(&self, vid: u16, ip: &str, id: u16) -> Option<Vec<u8>> {
        let arp = self.resolve(vid, ip)?;
        let dst = Rx::parse(&arp)?.arp()?.1;
        let me = self.iface(vid);
        for seq in 1..=5 {
            let mark = self.mark();
            self.send(&me.frame(dst, 0x0800, &icmp_echo(8, me.ip, ip4(ip), id, seq, b"trunk-test")));
            let reply = self.wait_frame(mark, Duration::from_secs(2), |r| {
                r.echo().is_some_and(|e| e.kind == 0 && e.id == id && e.src == ip4(ip))
            });
            if reply.is_some() {
                return reply;
            }
        }
        None
    }
}

impl Drop for TrunkVm {
    fn drop(&mut self) {
        self.guest.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The VLAN id an 802.1Q frame carries (0: untagged; None: another TPID or no frame).
fn vid_of(f: &[u8]) -> Option<u16> {
    Rx::parse(f)?.vid()
}

/// `device`'s row of node0's `datapath stats`.
fn stats(c: &Cluster, device: &str) -> Value {
    c.cli_json("node0", &["stats", "--port", device]).unwrap()["ports"][0].clone()
}

fn count(v: &Value, kind: &str, label: &str) -> u64 {
    v[kind][label].as_u64().unwrap_or(0)
}

/// node0's `datapath ports` row of `device`, if it lists one.
fn port_row(c: &Cluster, device: &str) -> Option<Value> {
    c.port_row("node0", device)
}

fn is_up(c: &Cluster, device: &str) -> bool {
    c.port_is_up("node0", device)
}

/// A VM whose tap is a trunk's parent on node0 reaches, across the wire, a
/// VM of its own network untagged, a VM of a VLAN subport's network with the
/// subport's VLAN id, and a VM of a VXLAN subport's network the same way;
/// the replies come back tagged as the requests went. On the wire each
/// frame carries its network's segment (VLAN 1001, VNI 5000), never the
/// VM's VLAN ids; nothing crosses from one network to another, and
/// `datapath ports` shows the trunk.
#[test]
fn a_trunk_vm_reaches_each_subport_network_by_its_vlan_id_and_the_id_never_reaches_the_wire() {
    let mut c = Cluster::with_tunnels("trunk", 2).unwrap();
    let (p, sv, st) = (parent(), sub_vlan(), sub_tun());
    let v1 = peer(1, NET1, "10.10.10.3", "node1");
    let v2 = peer(2, NET2, "10.10.11.3", "node1");
    let v3 = peer(3, TUN, "10.20.0.3", "node1");
    let ports: Vec<Value> = [&p, &sv, &st, &v1, &v2, &v3].iter().map(|p| p.to_json()).collect();
    c.write_bindings(&bindings(&ports, &[(&sv, 101), (&st, 102)], 2)).unwrap();
    let (i1, i2, i3) = (
        c.add_vm("node1", v1.clone()).unwrap(),
        c.add_vm("node1", v2.clone()).unwrap(),
        c.add_vm("node1", v3.clone()).unwrap(),
    );
    c.vms[i3].exec(&["ip", "link", "set", "eth0", "mtu", "1450"]).unwrap();
    for i in [i1, i2, i3] {
        c.vms[i].set_static_ip().unwrap();
    }
    let vm = TrunkVm::start(
        &c.node("node0").ns,
        &p.device(),
        vec![Iface::of(&p, 0), Iface::of(&sv, 101), Iface::of(&st, 102)],
    );
    let wire = Capture::start(&c.phys, "up-node0", "").unwrap();
    let underlay = Capture::start(&c.phys, "ul-node0", "udp port 4789").unwrap();
    let at_v2 = Capture::start(&c.vms[i2].ns, "eth0", "").unwrap();
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();
    for n in ["node0", "node1"] {
        c.wait_agent(n, Duration::from_secs(60)).unwrap();
    }
    let (dev_v, dev_t) = (format!("{}.101", p.device()), format!("{}.102", p.device()));
    wait_for("node0 to program the trunk", Duration::from_secs(10), || {
        [p.device(), dev_v.clone(), dev_t.clone()].iter().all(|d| is_up(&c, d))
    });

    // `datapath ports`: the parent and its subports, each with its place in the trunk.
    let row = port_row(&c, &p.device()).unwrap();
    assert_eq!((row["kind"].as_str(), row["trunk_id"].as_str()), (Some("vm"), Some(TRUNK)), "{row}");
    assert!(row.get("parent").is_none() && row.get("vid").is_none(), "{row}");
    for (dev, port, net, vid) in [(&dev_v, &sv, NET2, 101), (&dev_t, &st, TUN, 102)] {
        let row = port_row(&c, dev).unwrap();
        assert_eq!(row["port_id"], port.id.as_str(), "{row}");
        assert_eq!((row["kind"].as_str(), row["network"].as_str()), (Some("subport"), Some(net)), "{row}");
        assert_eq!(
            (row["trunk_id"].as_str(), row["parent"].as_str(), row["vid"].as_u64()),
            (Some(TRUNK), Some(p.device().as_str()), Some(vid)),
            "{row}"
        );
        let id = row["ifindex"].as_u64().unwrap();
        assert!(id >= u64::from(SUBPORT_ID_BASE), "a subport's id is no device's: {row}");
    }
    let (ok, text, err) = c.cli("node0", &["ports"]).unwrap();
    assert!(ok, "{err}");
    let line = |dev: &str| text.lines().find(|l| l.starts_with(&format!("{dev} "))).unwrap_or("").to_string();
    assert!(text.lines().next().unwrap().contains("TRUNK"), "{text}");
    assert!(line(&dev_v).contains(&format!("{TRUNK} vlan 101 on {}", p.device())), "{text}");
    assert!(line(&dev_v).contains("subport"), "{text}");
    assert!(line(&p.device()).contains(&format!("parent of {TRUNK}")), "{text}");
    // node1 serves none of the trunk's ports.
    let on1 = c.cli_json("node1", &["ports"]).unwrap();
    assert!(!on1.to_string().contains(TRUNK), "{on1}");

    // The VMs of node1 reach the trunk VM's three addresses; the guest answers on the interface asked.
    let mark = vm.mark();
    assert!(c.vms[i1].reaches(&p.ip), "parent network: v1 -> the trunk VM (untagged)");
    assert!(c.vms[i2].reaches(&sv.ip), "VLAN subport: v2 -> the trunk VM (VLAN 101)");
    assert!(c.vms[i3].reaches(&st.ip), "VXLAN subport: v3 -> the trunk VM (VLAN 102)");

    // And the trunk VM reaches them, each reply tagged as its request went.
    let reply = vm.ping(0, &v1.ip, 0x0a01).expect("no reply from v1 on the parent's network");
    assert_eq!(vid_of(&reply), Some(0), "v1's reply arrives untagged");
    let reply = vm.ping(101, &v2.ip, 0x0a02).expect("no reply from v2 through VLAN 101");
    assert_eq!(vid_of(&reply), Some(101), "v2's reply arrives tagged 101");
    let arp_replied = |c: &Cluster| count(&stats(c, &dev_t), "actions", "arp_replied");
    let answered = arp_replied(&c);
    let reply = vm.ping(102, &v3.ip, 0x0a03).expect("no reply from v3 through VLAN 102");
    assert_eq!(vid_of(&reply), Some(102), "v3's reply arrives tagged 102");
    // The VXLAN network's ARP responder answered the subport on node0, tagged.
    assert!(arp_replied(&c) > answered, "node0 answered the subport's ARP request itself");
    let arp = vm.resolve(102, &v3.ip).unwrap();
    assert_eq!((vid_of(&arp), Rx::parse(&arp).unwrap().arp().unwrap().1), (Some(102), mac(&v3.mac)));

    // What the guest got: each peer's frames on its network's interface, and nothing else.
    let got = vm.since(mark);
    for (peer, want) in [(&v1, 0), (&v2, 101), (&v3, 102)] {
        let tags: Vec<Option<u16>> =
            got.iter().filter(|f| f[6..12] == mac(&peer.mac)).map(|f| vid_of(f)).collect();
        assert!(!tags.is_empty(), "nothing from {} reached the trunk VM", peer.ip);
        assert!(
            tags.iter().all(|t| *t == Some(want)),
            "{}'s frames came with tags {tags:?}, not {want}",
            peer.ip
        );
    }
    for f in &got {
        let r = Rx::parse(f).unwrap();
        let dst_ip = r.ipv4().map(|i| i.dst).or(r.arp().map(|(_, _, _, t)| t));
        let Some(dst_ip) = dst_ip else { continue };
        let want = match dst_ip[..3] {
            [10, 10, 10] => Some(0),
            [10, 10, 11] => Some(101),
            [10, 20, 0] => Some(102),
            _ => continue,
        };
        assert_eq!(r.vid(), want, "a frame for {dst_ip:?} with the wrong tag: {f:02x?}");
    }

    // The subports' counters are their own: what they sent and what they received.
    for dev in [&dev_v, &dev_t] {
        let s = stats(&c, dev);
        assert_eq!((s["kind"].as_str(), s["device"].as_str()), (Some("subport"), Some(dev.as_str())), "{s}");
        assert!(count(&s, "actions", "rx") > 0, "{dev} counted what it sent: {s}");
        assert!(count(&s, "actions", "delivered") > 0, "{dev} counted what it received: {s}");
        assert_eq!(s["dropped"], 0, "{s}");
    }
    assert_eq!(stats(&c, &p.device())["dropped"], 0);

    // v2 got the trunk VM's frames untagged, and only those of its network.
    let at_v2 = at_v2.stop().unwrap();
    let from_trunk: Vec<_> = at_v2.iter().filter(|l| l.contains(&sv.mac)).collect();
    assert!(from_trunk.iter().any(|l| l.contains("ICMP echo reply")), "{at_v2:#?}");
    for l in &from_trunk {
        assert!(!l.contains("vlan") && !l.contains("802.1Q"), "v2 got a tagged frame: {l}");
        assert!(
            !l.contains("10.10.10.") && !l.contains("10.20.0."),
            "another network's frame reached v2: {l}"
        );
    }

    // On the wire: net1 under VLAN 1000, net2 under VLAN 1001, each with one
    // tag; the VXLAN subport's frames in VNI 5000, untagged inside.
    let lines = wire.stop().unwrap();
    for (peer, tag) in [(&v1, "vlan 1000,"), (&v2, "vlan 1001,")] {
        let ours: Vec<_> = lines.iter().filter(|l| l.contains(&peer.mac)).collect();
        assert!(
            ours.iter().any(|l| l.contains("ICMP echo request")),
            "{}'s pings crossed: {lines:#?}",
            peer.ip
        );
        for l in ours {
            assert!(l.contains(tag) && l.matches("vlan ").count() == 1, "not exactly {tag} on the wire: {l}");
        }
    }
    for l in &lines {
        assert!(!l.contains("vlan 101,") && !l.contains("vlan 102,"), "the VM's VLAN id on the wire: {l}");
        assert!(
            !l.contains(&st.mac) && !l.contains(&v3.mac),
            "the VXLAN network's frame on the VLAN wire: {l}"
        );
    }
    // tcpdump prints a VXLAN packet's inner frame on the line after its outer headers.
    let tunnel = underlay.stop().unwrap();
    let packets: Vec<(&String, &String)> =
        tunnel.windows(2).filter(|w| w[0].contains("VXLAN")).map(|w| (&w[0], &w[1])).collect();
    let ours: Vec<_> =
        packets.iter().filter(|(_, inner)| inner.contains(&st.mac) || inner.contains(&v3.mac)).collect();
    assert!(ours.iter().any(|(_, inner)| inner.contains("ICMP echo reply")), "{tunnel:#?}");
    for (outer, inner) in ours {
        assert!(outer.contains(&format!("vni {VNI}")), "{outer}");
        assert!(!inner.contains("vlan") && !inner.contains("802.1Q"), "a tag inside the tunnel: {inner}");
    }
}

/// One node: the trunk VM (parent on net1, subport on net2 with VLAN 101)
/// and a VM of each network, v1 and v2; the agent running and the trunk
/// VM reaching v2 through its subport. `sub` is the subport's JSON.
fn one_node(tag: &str, sub: Value) -> (Cluster, TrunkVm, usize, usize) {
    let mut c = Cluster::new(tag, 1).unwrap();
    let (p, sv) = (parent(), sub_vlan());
    let v1 = peer(1, NET1, "10.10.10.3", "node0");
    let v2 = peer(2, NET2, "10.10.11.3", "node0");
    let mut doc = bindings(&[p.to_json(), sub, v1.to_json(), v2.to_json()], &[(&sv, 101)], 1);
    doc["security_groups"] = groups();
    c.write_bindings(&doc).unwrap();
    let i1 = c.add_vm("node0", v1).unwrap();
    let i2 = c.add_vm("node0", v2.clone()).unwrap();
    for i in [i1, i2] {
        c.vms[i].set_static_ip().unwrap();
    }
    let vm = TrunkVm::start(
        &c.node("node0").ns,
        &p.device(),
        vec![Iface::of(&p, 0), Iface::of(&sv, 101), Iface::of(&sub_flat(), 102)],
    );
    c.start_agent("node0").unwrap();
    c.wait_agent("node0", Duration::from_secs(60)).unwrap();
    let dev = format!("{}.101", p.device());
    wait_for("node0 to program the subport", Duration::from_secs(10), || is_up(&c, &dev));
    let reply = vm.ping(101, &v2.ip, 0x0b00).expect("control: the trunk VM reaches v2 through VLAN 101");
    assert_eq!(vid_of(&reply), Some(101));
    (c, vm, i1, i2)
}

/// A group that admits ICMP only of IPv4 (and IPv6, for the VMs' own
/// router solicitations and MLD reports), and lets the port send anything.
fn groups() -> Value {
    json!([
        {"id": "icmp-only", "security_group_rules": [
            {"id": "any-out", "direction": "egress", "ethertype": "IPv4"},
            {"id": "icmp-in", "direction": "ingress", "ethertype": "IPv4", "protocol": "icmp"},
            {"id": "v6-in", "direction": "ingress", "ethertype": "IPv6"}]}
    ])
}

/// A tag that is no subport of the trunk (another VLAN id, or an 802.1ad
/// tag with the subport's id) is dropped as `vm_tagged`, counted on the
/// parent; a subport that forges its source (MAC, or an address not its
/// own, the parent's included) is dropped and counted on the subport, and
/// the parent forging the subport's address on its own; none of it reaches
/// a VM or the wire.
#[test]
fn tags_of_no_subport_and_forged_subport_sources_are_dropped_and_counted_where_they_belong() {
    let (c, vm, i1, i2) = one_node("trunk-drop", sub_vlan().to_json());
    let (p, sv) = (parent(), sub_vlan());
    let (v1, v2) = (&c.vms[i1].port, &c.vms[i2].port);
    let (pdev, dev) = (p.device(), format!("{}.101", p.device()));
    let (pdev, dev) = (pdev.as_str(), dev.as_str());
    let captures: Vec<Capture> =
        [i1, i2].iter().map(|&i| Capture::start(&c.vms[i].ns, "eth0", "icmp").unwrap()).collect();
    let wire = Capture::start(&c.phys, "up-node0", "").unwrap();
    let (parent0, sub0) = (stats(&c, pdev), stats(&c, dev));

    let to_v2 = |src_mac: Mac, src_ip: &str, id: u16| {
        frames::eth(mac(&v2.mac), src_mac, 0x0800, &icmp_echo(8, ip4(src_ip), ip4(&v2.ip), id, 1, b"forged"))
    };
    let to_v1 = |src_ip: &str, id: u16| {
        frames::eth(
            mac(&v1.mac),
            mac(&p.mac),
            0x0800,
            &icmp_echo(8, ip4(src_ip), ip4(&v1.ip), id, 1, b"forged"),
        )
    };
    const N: u64 = 7;
    // (frame, id, the device it is counted on, the drop reason)
    let forged: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (frames::tagged(&to_v2(mac(&sv.mac), &sv.ip, 0xd001), 0x8100, 999), 0xd001, pdev, "vm_tagged"),
        (frames::tagged(&to_v2(mac(&sv.mac), &sv.ip, 0xd002), 0x88a8, 101), 0xd002, pdev, "vm_tagged"),
        (
            frames::tagged(&to_v2(mac(&sv.mac), "10.10.11.99", 0xd003), 0x8100, 101),
            0xd003,
            dev,
            "ipv4_src_spoof",
        ),
        (frames::tagged(&to_v2(mac(&sv.mac), &p.ip, 0xd004), 0x8100, 101), 0xd004, dev, "ipv4_src_spoof"),
        (
            frames::tagged(&to_v2(mac("fa:16:3e:66:66:66"), &sv.ip, 0xd005), 0x8100, 101),
            0xd005,
            dev,
            "src_mac_spoof",
        ),
        (to_v1(&sv.ip, 0xd006), 0xd006, pdev, "ipv4_src_spoof"),
    ];
    let mut want: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for (frame, _, dev, reason) in &forged {
        for _ in 0..N {
            vm.send(frame);
        }
        *want.entry((dev, reason)).or_default() += N;
    }
    let counted = |dev: &str, reason: &str, before: &Value| {
        count(&stats(&c, dev), "drops", reason) - count(before, "drops", reason)
    };
    let before = |d: &str| if d == pdev { &parent0 } else { &sub0 };
    wait_for("the drops to be counted", Duration::from_secs(5), || {
        want.iter().all(|((d, r), n)| counted(d, r, before(d)) >= *n)
    });
    for ((d, r), n) in &want {
        assert_eq!(counted(d, r, before(d)), *n, "{r} on {d}");
    }
    // Each drop on its own port only: nothing counted on the other.
    let (parent1, sub1) = (stats(&c, pdev), stats(&c, dev));
    assert_eq!(count(&sub1, "drops", "vm_tagged"), count(&sub0, "drops", "vm_tagged"), "{sub1}");
    assert_eq!(
        count(&parent1, "drops", "src_mac_spoof"),
        count(&parent0, "drops", "src_mac_spoof"),
        "{parent1}"
    );
    // The subport counted its three kinds of forged frames, none of the
    // others (a few more: the guest answers v2's ARP probes meanwhile).
    let rx = count(&sub1, "actions", "rx") - count(&sub0, "actions", "rx");
    assert!((3 * N..3 * N + 4).contains(&rx), "the subport counted {rx} frames: {sub1}");

    // A good ping still goes through after all that.
    assert_eq!(vm.ping(101, &v2.ip, 0x0b01).as_deref().and_then(vid_of), Some(101));
    let mut seen: Vec<String> = captures.into_iter().flat_map(|cap| cap.stop().unwrap()).collect();
    seen.extend(wire.stop().unwrap());
    assert!(
        seen.iter().any(|l| l.contains(&format!("id {},", 0x0b01))),
        "the captures saw the good ping: {seen:#?}"
    );
    for (_, id, _, _) in &forged {
        let leaked: Vec<_> = seen.iter().filter(|l| l.contains(&format!("id {id},"))).collect();
        assert!(leaked.is_empty(), "forged frame {id:#x} reached a VM or the wire: {leaked:#?}");
    }
}

/// A subport's security groups filter what it receives: a group that
/// admits ICMP only lets v2's pings through to the subport (and tracks
/// them under the subport) and drops v2's UDP, counted `sg_ingress_denied`
/// under the subport, while the parent, in no group, receives UDP.
#[test]
fn a_subports_security_groups_filter_what_it_receives() {
    let mut sub = sub_vlan().to_json();
    sub["security_groups"] = json!(["icmp-only"]);
    let (c, vm, i1, i2) = one_node("trunk-sg", sub);
    let (p, sv) = (parent(), sub_vlan());
    let dev = format!("{}.101", p.device());
    let mark = vm.mark();

    assert!(c.vms[i2].reaches(&sv.ip), "ICMP to the subport passes its group");
    let ct = c.cli_json("node0", &["conntrack", "--port", &dev]).unwrap();
    let conns = ct["connections"].as_array().unwrap();
    assert!(
        conns.iter().any(|r| r["port"] == dev.as_str()
            && r["protocol"] == "icmp"
            && r["direction"] == "ingress"
            && r["rule"] == "icmp-in"),
        "the subport tracks v2's pings, admitted by icmp-in: {ct}"
    );

    let (sub0, parent0) = (stats(&c, &dev), stats(&c, &p.device()));
    const N: u64 = 5;
    let udp =
        |to: &str| format!("for i in $(seq {N}); do echo datagram > /dev/udp/{to}/9999; sleep 0.05; done");
    c.vms[i2].exec(&["bash", "-c", &udp(&sv.ip)]).unwrap();
    c.vms[i1].exec(&["bash", "-c", &udp(&p.ip)]).unwrap();
    let denied = |c: &Cluster| {
        count(&stats(c, &dev), "drops", "sg_ingress_denied") - count(&sub0, "drops", "sg_ingress_denied")
    };
    wait_for("the subport's group to deny v2's UDP", Duration::from_secs(5), || denied(&c) >= N);
    let parent_got =
        || vm.since(mark).iter().filter(|f| Rx::parse(f).and_then(|r| r.udp_dport()) == Some(9999)).count();
    wait_for("the parent to receive v1's UDP", Duration::from_secs(5), || parent_got() >= N as usize);
    assert_eq!(denied(&c), N, "every datagram to the subport, and nothing else, denied");
    let parent1 = stats(&c, &p.device());
    assert_eq!(count(&parent1, "drops", "sg_ingress_denied"), count(&parent0, "drops", "sg_ingress_denied"));

    // The guest got UDP only untagged (the parent's), never on VLAN 101.
    for f in vm.since(mark) {
        let r = Rx::parse(&f).unwrap();
        if r.udp_dport() == Some(9999) {
            assert_eq!(r.vid(), Some(0), "UDP reached the subport (VLAN {:?}) through its group", r.vid());
            assert_eq!(r.ipv4().unwrap().dst, ip4(&p.ip));
        }
    }
    assert!(c.vms[i2].ping(&sv.ip, 2), "ICMP still passes after the denials");
}

/// While v2 pings the trunk VM's subport on VLAN 101 every 20 ms, a second
/// subport (the flat network, VLAN 102) is added, used, and removed, twice,
/// by rewriting the bindings file: not one ping is lost, the first
/// subport keeps its id and counters, and once the second is gone its VLAN
/// id is a tag of no subport again.
#[test]
fn a_subport_added_and_removed_while_another_carries_traffic_loses_nothing() {
    let (mut c, vm, i1, i2) = one_node("trunk-churn", sub_vlan().to_json());
    let (p, sv, sf) = (parent(), sub_vlan(), sub_flat());
    let (v1, v2) = (c.vms[i1].port.clone(), c.vms[i2].port.clone());
    let v3 = peer(3, FLAT, "10.10.12.3", "node0");
    let i3 = c.add_vm("node0", v3.clone()).unwrap();
    c.vms[i3].set_static_ip().unwrap();
    let (dev_v, dev_f) = (format!("{}.101", p.device()), format!("{}.102", p.device()));
    let base: Vec<Value> = [&p, &sv, &v1, &v2, &v3].iter().map(|p| p.to_json()).collect();
    let with_flat: Vec<Value> = base.iter().cloned().chain([sf.to_json()]).collect();
    let one = bindings(&base, &[(&sv, 101)], 1);
    let two = bindings(&with_flat, &[(&sv, 101), (&sf, 102)], 1);
    c.write_bindings(&one).unwrap();
    assert!(c.vms[i2].reaches(&sv.ip));
    wait_for("v3's port to be programmed", Duration::from_secs(10), || is_up(&c, &v3.device()));
    let id_before = port_row(&c, &dev_v).unwrap()["ifindex"].clone();
    let rx_before = count(&stats(&c, &dev_v), "actions", "rx");

    const PINGS: u64 = 500;
    let pinger =
        c.vms[i2].ns.spawn(&["ping", "-c", &PINGS.to_string(), "-i", "0.02", "-W", "2", &sv.ip]).unwrap();
    for round in 1..=2 {
        c.write_bindings(&two).unwrap();
        wait_for("the second subport to come", Duration::from_secs(10), || is_up(&c, &dev_f));
        if round == 1 {
            assert!(c.vms[i3].reaches(&sf.ip), "v3 reaches the new subport");
            let reply = vm.ping(102, &v3.ip, 0x0c00).expect("the new subport reaches v3");
            assert_eq!(vid_of(&reply), Some(102));
        }
        c.write_bindings(&one).unwrap();
        wait_for("the second subport to go", Duration::from_secs(10), || port_row(&c, &dev_f).is_none());
    }
    // VLAN 102 is no subport's any more: the parent drops it as a VM's tag.
    let tagged0 = count(&stats(&c, &p.device()), "drops", "vm_tagged");
    let (me, mark) = (vm.iface(102), vm.mark());
    vm.send(&me.frame(mac(&v3.mac), 0x0800, &icmp_echo(8, me.ip, ip4(&v3.ip), 0x0c01, 1, b"gone")));
    wait_for("the tag of the removed subport to be vm_tagged", Duration::from_secs(5), || {
        count(&stats(&c, &p.device()), "drops", "vm_tagged") > tagged0
    });
    let answered = vm.wait_frame(mark, Duration::from_secs(1), |r| r.echo().is_some_and(|e| e.id == 0x0c01));
    assert!(answered.is_none(), "v3 answered through the removed subport");

    let mut pinger = pinger;
    let status = pinger.wait_timeout(Duration::from_secs(60)).unwrap();
    let out = pinger.output();
    assert!(status.is_some_and(|s| s.success()), "{out}");
    assert!(out.contains(&format!("{PINGS} packets transmitted, {PINGS} received")), "pings lost: {out}");
    let row = port_row(&c, &dev_v).unwrap();
    assert_eq!(row["ifindex"], id_before, "the first subport kept its id: {row}");
    let rx = count(&stats(&c, &dev_v), "actions", "rx") - rx_before;
    assert!(rx >= PINGS, "the first subport's counters went on ({rx} frames sent meanwhile)");
}

/// Events of `rx` until `enough` holds of them (then 300 ms more), or `within` passes.
fn collect(rx: &mpsc::Receiver<Value>, within: Duration, enough: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let end = Instant::now() + within;
    let mut out: Vec<Value> = Vec::new();
    let mut settle: Option<Instant> = None;
    loop {
        let deadline = settle.unwrap_or(end).min(end);
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { return out };
        match rx.recv_timeout(left) {
            Ok(v) if v["type"] == "event" => out.push(v),
            Ok(_) => {}
            Err(_) => return out,
        }
        if settle.is_none() && enough(&out) {
            settle = Some(Instant::now() + Duration::from_millis(300));
        }
    }
}

/// What an operator asks about a subport is about the subport: `datapath
/// trace --port <parent tap>.101` runs a frame as the VM sends it on VLAN
/// 101 (and says why `--receive` cannot), a frame for the subport goes to
/// the parent's tap tagged 101, and `datapath monitor` names the subport,
/// its port and its network for what happens to its frames on the parent's
/// tap, also when it follows the subport's decisions, which are not the
/// parent's.
#[test]
fn trace_and_monitor_see_a_subport_as_a_port_of_its_own() {
    let (c, vm, i1, i2) = one_node("trunk-ops", sub_vlan().to_json());
    let (p, sv) = (parent(), sub_vlan());
    let (v1, v2) = (c.vms[i1].port.clone(), c.vms[i2].port.clone());
    let (pdev, dev) = (p.device(), format!("{}.101", p.device()));
    let trace =
        |port: &str, spec: &str| c.cli_json("node0", &["trace", "--port", port, "--frame", spec]).unwrap();

    let good = format!("icmp from {} {} to {} {}", sv.mac, sv.ip, v2.mac, v2.ip);
    let t = trace(&dev, &good);
    assert_eq!((t["port"].as_str(), t["program"].as_str()), (Some(dev.as_str()), Some("vm_port")), "{t}");
    assert_eq!((t["action"].as_str(), t["network"].as_str()), (Some("to_local_port"), Some(NET2)), "{t}");
    assert_eq!(
        (t["targets"][0]["device"].as_str(), t["targets"][0]["vlan"].as_u64()),
        (Some(v2.device().as_str()), Some(0)),
        "{t}"
    );
    let t = trace(&dev, &format!("icmp from {} 10.10.11.99 to {} {}", sv.mac, v2.mac, v2.ip));
    assert_eq!((t["verdict"].as_str(), t["reason"].as_str()), (Some("drop"), Some("ipv4_src_spoof")), "{t}");
    // The parent's own frames are its own: its network, its addresses.
    let t = trace(&pdev, &format!("icmp from {} {} to {} {}", p.mac, p.ip, v1.mac, v1.ip));
    assert_eq!(
        (t["network"].as_str(), t["targets"][0]["device"].as_str()),
        (Some(NET1), Some(v1.device().as_str())),
        "{t}"
    );
    let t = trace(&pdev, &format!("icmp from {} {} to {} {}", sv.mac, sv.ip, v2.mac, v2.ip));
    assert_eq!(t["reason"], "ipv4_src_spoof", "the subport's address is not the parent's: {t}");
    let t = trace(&pdev, &format!("vlan 999 {good}"));
    assert_eq!(t["reason"], "vm_tagged", "{t}");
    // Towards the subport: the parent's tap, with VLAN 101 pushed.
    let t = trace(&v2.device(), &format!("icmp from {} {} to {} {}", v2.mac, v2.ip, sv.mac, sv.ip));
    assert_eq!(
        (t["targets"][0]["device"].as_str(), t["targets"][0]["vlan"].as_u64()),
        (Some(pdev.as_str()), Some(101)),
        "{t}"
    );
    let (ok, _, err) = c.cli("node0", &["trace", "--port", &dev, "--receive", "--frame", &good]).unwrap();
    assert!(!ok && err.contains("is a subport"), "{err}");

    let (mut all, all_rx) = monitor(&c, "node0", &[]);
    let (mut sub, sub_rx) = monitor(&c, "node0", &["--port", &dev, "--decisions"]);
    assert!(listeners(&c, "node0", 2.0), "both monitors listen");
    let me = vm.iface(101);
    vm.send(&me.frame(mac(&v2.mac), 0x0800, &icmp_echo(8, ip4("10.10.11.99"), ip4(&v2.ip), 0xe001, 1, b"x")));
    let tagged = frames::tagged(
        &frames::eth(mac(&v2.mac), me.mac, 0x0800, &icmp_echo(8, me.ip, ip4(&v2.ip), 0xe002, 1, b"x")),
        0x8100,
        999,
    );
    vm.send(&tagged);
    assert_eq!(vm.ping(101, &v2.ip, 0xe003).as_deref().and_then(vid_of), Some(101));
    assert_eq!(vm.ping(0, &v1.ip, 0xe004).as_deref().and_then(vid_of), Some(0));

    let has = |evs: &[Value], key: &str, value: &str| evs.iter().any(|e| e[key] == value);
    let drops = collect(&all_rx, Duration::from_secs(10), |e| {
        has(e, "reason", "ipv4_src_spoof") && has(e, "reason", "vm_tagged")
    });
    let spoof =
        drops.iter().find(|e| e["reason"] == "ipv4_src_spoof").unwrap_or_else(|| panic!("{drops:#?}"));
    assert_eq!(
        (spoof["device"].as_str(), spoof["port_id"].as_str(), spoof["network"].as_str()),
        (Some(dev.as_str()), Some(sv.id.as_str()), Some(NET2)),
        "the subport's drop is the subport's: {spoof}"
    );
    let tag = drops.iter().find(|e| e["reason"] == "vm_tagged").unwrap();
    assert_eq!(
        (tag["device"].as_str(), tag["port_id"].as_str(), tag["network"].as_str()),
        (Some(pdev.as_str()), Some(p.id.as_str()), Some(NET1)),
        "a tag of no subport is the parent's: {tag}"
    );
    let decisions = collect(&sub_rx, Duration::from_secs(10), |e| {
        has(e, "reason", "ipv4_src_spoof")
            && has(e, "action", "to_local_port")
            && has(e, "action", "delivered")
    });
    assert!(
        has(&decisions, "reason", "ipv4_src_spoof") && has(&decisions, "action", "delivered"),
        "{decisions:#?}"
    );
    for e in &decisions {
        assert_eq!(
            (e["device"].as_str(), e["port_id"].as_str()),
            (Some(dev.as_str()), Some(sv.id.as_str())),
            "not the subport's: {e}"
        );
    }
    for m in [&mut all, &mut sub] {
        let _ = m.kill();
        let _ = m.wait();
    }
}
