//! The uplinks' XDP stage against the TC stage alone: two datapath clusters
//! built alike (two nodes on the physical bridge and the underlay, a VLAN and
//! a VXLAN network), node1's uplink and underlay device running the stages
//! in their drivers in one (`xdp = "native"`) and not at all in the other
//! (`xdp = "off"`), measured back to back:
//!
//! - a flood of frames of a VLAN no node serves, into node1's uplink from
//!   its switch port (the XDP live-frames generator in the fabric), and a
//!   flood of VXLAN from a host that is no tunnel peer, into node1's
//!   underlay device: frames dropped per second, as the datapath counts them;
//! - 64-byte frames from the wire (node1's switch port, VLAN 1000, from a
//!   host behind it) to a VM's tap on node1: the fast path against TC. A
//!   thread reads the tap, as QEMU does. Two figures: what the datapath
//!   handed to the tap (its own `delivered` count, which both paths keep),
//!   and what the reader got of it (the tap's tx packets), which one reader
//!   thread on this 2-CPU machine caps;
//! - TCP and RTT between two VMs (namespace ports) across the nodes.
//!
//! The uplinks are veths. Their native XDP is real driver XDP, but it takes
//! GSO away from the peer, which the TCP figure shows (docs/performance.md).

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use datapath_tests::{
    cluster::{Cluster, PortSpec, agents_json, network_json, vtep_ip},
    link::TapFd,
    netns::ThreadNetns,
};
use datapath_user::{bindings::parse_mac, frames};
use serde_json::{Value, json};

use super::{
    interrupt,
    plan::{SINK_PORT, VLAN_SEGMENT},
    traffic::{Endpoint, Flow, busy_ns, cpus, napi_for_generator, pin_thread},
    xdpgen::XdpGen,
    xdploop,
};

const NET: &str = "b0b0b0b0-0000-4000-8000-00000000b0d0";
const VXLAN_NET: &str = "b0b0b0b0-0000-4000-8000-00000000b0d1";
/// The VXLAN network's VNI, served on both nodes.
const VNI: u32 = 5100;
/// A host behind node1's switch port on the VLAN network: the fast path's sender.
const REMOTE_HOST: [u8; 6] = [0xfa, 0x16, 0x3e, 0xd0, 0x00, 0x77];
/// A host on the underlay that is in no agent list: no tunnel peer.
const STRANGER_VTEP: [u8; 4] = [192, 0, 2, 99];
/// A VLAN no node serves: the flood's.
const FOREIGN_VLAN: u16 = 3999;
const WARMUP: Duration = Duration::from_millis(500);

/// VM a on node0 sends; VM b (a namespace) and tap t (a VM's tap) on node1 receive.
fn ports() -> [PortSpec; 3] {
    [
        PortSpec::vm("b0d00001-0a00-4000-8000-0000000000d1", NET, "fa:16:3e:d0:00:01", "10.40.0.1", "node0"),
        PortSpec::vm("b0d00002-0a00-4000-8000-0000000000d2", NET, "fa:16:3e:d0:00:02", "10.40.0.2", "node1"),
        PortSpec::vm("b0d00003-0a00-4000-8000-0000000000d3", NET, "fa:16:3e:d0:00:03", "10.40.0.3", "node1"),
    ]
}

/// 64-byte frames per second into the tap.
pub struct TapRates {
    /// What the datapath handed to the tap (its `delivered` count).
    pub delivered: f64,
    /// What the tap's reader got of that (its tx packets).
    pub read: f64,
}

/// One of the two clusters.
pub struct Side {
    pub xdp: &'static str,
    cluster: Cluster,
    tap: Arc<TapFd>,
    tap_port: PortSpec,
    drain: Option<Drain>,
}

/// Frames dropped, and what they cost.
#[derive(Debug, Clone, Copy)]
pub struct Drops {
    pub per_s: f64,
    /// Every CPU's busy time over the window, per dropped frame: the
    /// generator, the hand-over and the stage, all on the sender's CPU.
    pub busy_ns: Option<f64>,
}

/// Both sides, and the floor the stages are measured from.
pub struct XdpPair {
    pub native: Side,
    pub off: Side,
    _floor: DropFloor,
}

impl XdpPair {
    /// Builds both clusters and waits until their flows work.
    pub fn build() -> Result<Self> {
        let native = Side::build("bench-xdp", "native")?;
        let off = Side::build("bench-tc", "off")?;
        let floor = DropFloor::build(&native.cluster.phys)?;
        Ok(Self { native, off, _floor: floor })
    }

    /// `frame` from the same generator in the same namespace into a veth whose
    /// driver drops everything at once (`XDP_DROP`): what a dropped frame costs
    /// without any stage. A stage's own cost per frame is its side's `busy_ns`
    /// less this one's.
    pub fn floor_drops(&self, frame: Vec<u8>, window: Duration) -> Result<Drops> {
        let (sender_cpu, _) = cpus();
        let phys = &self.native.cluster.phys;
        let generator = XdpGen::start(phys.path(), FLOOR_TX, frame, sender_cpu)?;
        rate("floor", generator, window, || {
            let n = phys.exec(&["cat", &format!("/sys/class/net/{FLOOR_RX}/statistics/rx_packets")])?;
            n.trim().parse().with_context(|| format!("rx_packets of {FLOOR_RX}: {n:?}"))
        })
    }
}

/// The floor's veth pair, in the fabric's namespace (removed with it).
const FLOOR_TX: &str = "xfloor0";
const FLOOR_RX: &str = "xfloor1";

/// The floor's receiving end runs `XDP_DROP` while this holds its link.
struct DropFloor {
    _link: std::os::fd::OwnedFd,
}

impl DropFloor {
    fn build(phys: &datapath_tests::netns::Netns) -> Result<Self> {
        phys.exec(&["ip", "link", "add", FLOOR_TX, "type", "veth", "peer", "name", FLOOR_RX])?;
        for dev in [FLOOR_TX, FLOOR_RX] {
            phys.exec(&["ip", "link", "set", dev, "up"])?;
        }
        let _in = ThreadNetns::enter(phys)?;
        let link = xdploop::drop_all(xdploop::ifindex(FLOOR_RX)?, FLOOR_RX)?;
        Ok(Self { _link: link })
    }
}

/// A frame of `FOREIGN_VLAN`, from a host no node knows to VM b's MAC.
pub fn flood_frame() -> Vec<u8> {
    let udp = frames::ipv4_udp([10, 40, 0, 99], [10, 40, 0, 2], SINK_PORT, SINK_PORT, &[0; 18]);
    let frame =
        frames::eth([0xfa, 0x16, 0x3e, 0xd0, 0x00, 0x02], [0xfa, 0x16, 0x3e, 0xee, 0, 1], 0x0800, &udp);
    frames::tagged(&frame, 0x8100, FOREIGN_VLAN)
}

/// What `count` counted per second while `generator` ran, for `window` after
/// a warm-up, and every CPU's busy time per count.
fn rate(who: &str, generator: XdpGen, window: Duration, count: impl Fn() -> Result<u64>) -> Result<Drops> {
    let ([per_s], busy) = rates(who, generator, window, || Ok([count()?]))?;
    let frames = per_s * busy.1;
    Ok(Drops { per_s, busy_ns: (frames > 0.0).then(|| busy.0 / frames) })
}

/// `rate` for several counters read together; with (busy ns, seconds) of the window.
fn rates<const N: usize>(
    who: &str,
    generator: XdpGen,
    window: Duration,
    count: impl Fn() -> Result<[u64; N]>,
) -> Result<([f64; N], (f64, f64))> {
    interrupt::sleep(WARMUP)?;
    let (n0, b0, t0) = (count()?, busy_ns()?, Instant::now());
    interrupt::sleep(window)?;
    let (n1, b1, t1) = (count()?, busy_ns()?, Instant::now());
    // A sender that died early would make a low count look like a slow path.
    if !generator.running() {
        bail!("{who}: the generator stopped early");
    }
    drop(generator);
    let secs = (t1 - t0).as_secs_f64();
    Ok((std::array::from_fn(|i| n1[i].saturating_sub(n0[i]) as f64 / secs), (b1 - b0, secs)))
}

impl Side {
    fn build(tag: &str, xdp: &'static str) -> Result<Self> {
        let mut c = Cluster::with_tunnels(tag, 2)?;
        let [a, b, t] = ports();
        // A VM of the VXLAN network on each node, so that node1 serves it and has node0 as its peer.
        let vx = |id: &str, mac: &str, ip: &str, host: &str| PortSpec::vm(id, VXLAN_NET, mac, ip, host);
        let v0 = vx("b0d10001-0a00-4000-8000-0000000000e1", "fa:16:3e:d1:00:01", "10.41.0.1", "node0");
        let v1 = vx("b0d10002-0a00-4000-8000-0000000000e2", "fa:16:3e:d1:00:02", "10.41.0.2", "node1");
        let mut vxlan = network_json(VXLAN_NET, "bench-xdp-vxlan", "vxlan", Some(VNI));
        vxlan["provider:physical_network"] = Value::Null;
        c.write_bindings(&json!({
            "networks": [network_json(NET, "bench-xdp", "vlan", Some(VLAN_SEGMENT)), vxlan],
            "ports": [a.to_json(), b.to_json(), t.to_json(), v0.to_json(), v1.to_json()],
            "agents": agents_json(2),
        }))?;
        for p in [&a, &b, &v0, &v1] {
            let i = c.add_vm(&p.host, p.clone())?;
            napi_for_generator(&c.node(&p.host).ns, &p.device())?;
            c.vms[i].set_static_ip()?;
        }
        let tap = TapFd::open(Some(&c.node("node1").ns), &t.device())?;
        tap.up()?;
        // The flood's generator hands frames to node1's uplink through its XDP
        // ring, which needs NAPI: the stage gives it, GRO gives it without.
        napi_for_generator(&c.node("node1").ns, "eth2")?;
        napi_for_generator(&c.node("node1").ns, "eth1")?;
        c.append_config("node1", &format!("xdp = \"{xdp}\""))?;
        c.start_agent("node0")?;
        c.start_agent("node1")?;
        let want = if xdp == "off" { Value::Null } else { json!("native") };
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = |s: &Value| s["xdp"]["eth2"] == want && s["xdp"]["eth1"] == want;
        while c.cli_json("node1", &["status"]).map_or(true, |s| !ready(&s)) {
            interrupt::check()?;
            if Instant::now() > deadline {
                bail!(
                    "{tag}: node1's XDP stage is not {want} after 10 s: {:?}",
                    c.cli_json("node1", &["status"])
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let tap = Arc::new(tap);
        let drain = Some(Drain::start(tap.clone())?);
        let side = Self { xdp, cluster: c, tap, tap_port: t, drain };
        side.flow().prepare(&format!("{tag}: vm a to vm b"))?;
        Ok(side)
    }

    /// VM a to VM b: the namespace ports.
    pub fn flow(&self) -> Flow<'_> {
        let end = |i: usize| {
            let vm = &self.cluster.vms[i];
            Endpoint { ns: &vm.ns, ip: &vm.port.ip, mac: &vm.port.mac }
        };
        Flow { src: end(0), dst: end(1) }
    }

    /// The frames of a flood of `FOREIGN_VLAN` into node1's uplink dropped.
    pub fn flood_drops(&self, window: Duration) -> Result<Drops> {
        rate(self.xdp, self.switch_sends("up-node1", flood_frame())?, window, || self.unknown_segment_drops())
    }

    /// The generator, on CPU 0, sending `frame` out of node1's switch port `port`.
    fn switch_sends(&self, port: &str, frame: Vec<u8>) -> Result<XdpGen> {
        let (sender_cpu, _) = cpus();
        XdpGen::start(self.cluster.phys.path(), port, frame, sender_cpu)
    }

    /// The frames of a flood of VXLAN (VNI `VNI`, served here) from a host
    /// that is no tunnel peer, into node1's underlay device, dropped.
    pub fn foreign_vtep_drops(&self, window: Duration) -> Result<Drops> {
        let frame = self.foreign_vtep_frame()?;
        rate(self.xdp, self.switch_sends("ul-node1", frame)?, window, || self.foreign_vtep_count())
    }

    /// VXLAN from `STRANGER_VTEP` to node1's underlay address and MAC.
    pub fn foreign_vtep_frame(&self) -> Result<Vec<u8>> {
        let ns = &self.cluster.node("node1").ns;
        let shown: Value = serde_json::from_str(&ns.exec(&["ip", "-j", "link", "show", "eth1"])?)?;
        let mac = parse_mac(shown[0]["address"].as_str().context("eth1 has no address")?)?;
        let local: std::net::Ipv4Addr = vtep_ip(1).parse()?;
        let inner =
            frames::eth([0xfa, 0x16, 0x3e, 0xd1, 0, 1], [0xfa, 0x16, 0x3e, 0xee, 0, 2], 0x0800, &[0; 46]);
        let udp = frames::ipv4_udp(STRANGER_VTEP, local.octets(), 49152, 4789, &frames::vxlan(VNI, &inner));
        Ok(frames::eth(mac, [0x02, 0, 0, 0, 0, 0x99], 0x0800, &udp))
    }

    /// node1's VXLAN device's foreign-VTEP drops, both stages (the TC stage's and the underlay's).
    fn foreign_vtep_count(&self) -> Result<u64> {
        let s = self.cluster.cli_json("node1", &["stats", "--port", "vxlan-dp"])?;
        let p = &s["ports"][0];
        let n = |v: &Value| v["drops"]["foreign_vtep"].as_u64().unwrap_or(0);
        Ok(n(p) + n(&p["xdp"]))
    }

    /// node1's uplink's unknown-segment drops, both stages.
    fn unknown_segment_drops(&self) -> Result<u64> {
        let s = self.cluster.cli_json("node1", &["stats", "--port", "eth2"])?;
        let p = &s["ports"][0];
        let n = |v: &Value| v["drops"]["unknown_segment"].as_u64().unwrap_or(0);
        Ok(n(p) + n(&p["xdp"]))
    }

    /// 64-byte frames per second from the wire (node1's switch port, VLAN
    /// `VLAN_SEGMENT`, from a host behind it) into the tap on node1.
    pub fn tap_pps(&self, window: Duration) -> Result<TapRates> {
        let t = &self.tap_port;
        let t_ip: std::net::Ipv4Addr = t.ip.parse()?;
        let udp = frames::ipv4_udp([10, 40, 0, 77], t_ip.octets(), SINK_PORT, SINK_PORT, &[0; 18]);
        let frame = frames::eth(parse_mac(&t.mac)?, REMOTE_HOST, 0x0800, &udp);
        let frame = frames::tagged(&frame, 0x8100, VLAN_SEGMENT as u16);
        // The stage removes the tag in place: each frame is written anew.
        let (sender_cpu, _) = cpus();
        let generator = XdpGen::start_restoring(self.cluster.phys.path(), "up-node1", frame, sender_cpu)?;
        let [delivered, read] =
            rates(self.xdp, generator, window, || Ok([self.delivered()?, self.tap.stats()?.tx_packets]))?.0;
        Ok(TapRates { delivered, read })
    }

    /// What the datapath delivered to the tap: its `delivered` counter, which
    /// the tap's TC egress program and the fast path both count.
    fn delivered(&self) -> Result<u64> {
        let s = self.cluster.cli_json("node1", &["stats", "--port", &self.tap_port.device()])?;
        s["ports"][0]["actions"]["delivered"].as_u64().context("the tap has no delivered counter")
    }

    /// node1's uplink's XDP counters (what took the fast path), for the log.
    pub fn redirected(&self) -> Result<u64> {
        let s = self.cluster.cli_json("node1", &["stats", "--port", "eth2"])?;
        Ok(s["ports"][0]["xdp"]["actions"]["xdp_redirected"].as_u64().unwrap_or(0))
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        // The reader goes before the tap it reads.
        drop(self.drain.take());
    }
}

/// A thread that reads the tap as fast as it can, as a VM's NIC would.
struct Drain {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drain {
    fn start(tap: Arc<TapFd>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (_, reader_cpu) = cpus();
        let raw = tap.as_fd().as_raw_fd();
        // Non-blocking, so that a read with nothing left returns and the stop flag is seen.
        // SAFETY: fcntl on an fd the tap keeps open.
        if unsafe { libc::fcntl(raw, libc::F_SETFL, libc::fcntl(raw, libc::F_GETFL) | libc::O_NONBLOCK) } != 0
        {
            return Err(std::io::Error::last_os_error()).context("making the tap's fd non-blocking");
        }
        let thread = std::thread::Builder::new()
            .name("tap-drain".into())
            .spawn(move || {
                let _ = pin_thread(reader_cpu);
                let fd = tap.as_fd().as_raw_fd();
                let mut buf = vec![0u8; 65536];
                while !flag.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                    // SAFETY: one valid pollfd.
                    if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
                        continue;
                    }
                    // SAFETY: reading into a valid buffer of buf.len() bytes.
                    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {
                        if flag.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            })
            .context("starting the tap's reader")?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
