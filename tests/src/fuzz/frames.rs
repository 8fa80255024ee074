//! The structure-aware frame generator: VLAN stacks (none, priority,
//! 802.1Q, QinQ, 802.1ad), ARP (good, spoofed, wrong lengths), IPv4 with
//! options and fragments, IPv6 with extension-header chains, ICMPv6 ND/RA,
//! DHCP and DHCPv6 both ways, VXLAN inside UDP, truncation at any offset,
//! with MACs and IPs drawn from the bound set and from outside it.

use std::net::IpAddr;

use datapath_user::{
    bindings::{Bindings, NetworkType},
    desired::link_local_of,
};

use super::{
    bindings::{AGENTS, STRAY, TAP_SLOTS, UPLINKS, VXLAN_DEV, tap_name},
    rng::Rng,
};
use crate::model::{HwTag, Prog};

type Mac = [u8; 6];

/// One generated input: the device it arrives on, the program, the frame.
#[derive(Debug, Clone)]
pub struct Case {
    pub device: String,
    pub prog: Prog,
    pub frame: Vec<u8>,
    /// Non-zero: the frame poses as a GSO super-frame of this segment size.
    pub gso_size: u32,
    /// (VNI, remote VTEP) for the tunnel program; `None`: the skb has no tunnel key.
    pub tunnel: Option<(u32, u32)>,
    /// The offloaded VLAN tag (taken out of the frame, as a real device's receive path does).
    pub hw: Option<HwTag>,
}

/// What a port may legitimately send from, to build frames that pass.
#[derive(Debug, Clone, Default)]
struct Identity {
    macs: Vec<Mac>,
    v4: Vec<[u8; 4]>,
    v6: Vec<[u8; 16]>,
}

/// Addresses of one bindings document, plus what a datagram's later fragments reuse.
#[derive(Debug, Clone, Default)]
pub struct Generator {
    macs: Vec<Mac>,
    v4: Vec<[u8; 4]>,
    v6: Vec<[u8; 16]>,
    segments: Vec<u16>,
    /// VNIs of the document's VXLAN networks.
    vnis: Vec<u32>,
    /// (uplink device, VLAN id or `None` for flat) of every network on a physical network.
    wires: Vec<(String, Option<u16>)>,
    /// Device -> what the port bound there owns.
    own: Vec<(String, Identity)>,
    /// Source MACs of recent frames from the wire, which the kernel learns: VMs send to them.
    heard: Vec<Mac>,
    /// Recent first fragments: (device, IP header bytes to reuse, is IPv6).
    datagrams: Vec<(String, Vec<u8>, bool)>,
}

impl Generator {
    /// The address palette of `b`.
    pub fn new(b: &Bindings) -> Self {
        let mut g = Generator::default();
        for net in &b.networks {
            if let Some(s) = net.segmentation_id {
                g.segments.push((s & 0x0fff) as u16);
            }
            if net.network_type == NetworkType::Vxlan {
                g.vnis.extend(net.segmentation_id);
            }
            let uplink = UPLINKS.iter().find(|(p, _)| Some(*p) == net.physical_network.as_deref());
            if let Some((_, dev)) = uplink {
                g.wires.push((dev.to_string(), net.segmentation_id.map(|s| s as u16)));
            }
        }
        for p in &b.ports {
            let mut id = Identity { macs: vec![p.mac], ..Default::default() };
            for ip in &p.fixed_ips {
                match ip {
                    IpAddr::V4(a) => id.v4.push(a.octets()),
                    IpAddr::V6(a) => id.v6.push(a.octets()),
                }
            }
            for pair in &p.allowed_address_pairs {
                if !id.macs.contains(&pair.mac) {
                    id.macs.push(pair.mac);
                }
                match pair.ip {
                    IpAddr::V4(a) => id.v4.push(a.octets()),
                    IpAddr::V6(a) => id.v6.push(a.octets()),
                }
            }
            for m in id.macs.clone() {
                id.v6.push(link_local_of(&m));
            }
            g.macs.extend(&id.macs);
            g.v4.extend(&id.v4);
            g.v6.extend(&id.v6);
            if p.host == AGENTS[0].0 {
                g.own.push((p.device_name(), id));
            }
        }
        g
    }

    /// Whether the next frame poses as GSO: rarely, it changes only the length rules.
    fn gso_next(&self, rng: &mut Rng) -> bool {
        rng.chance(4)
    }

    /// A decapsulated frame's key: mostly a VNI of the document from a node that hosts ports.
    fn tunnel_key(&self, rng: &mut Rng) -> (u32, u32) {
        let vni = match rng.below(10) {
            0..=7 if !self.vnis.is_empty() => *rng.pick(&self.vnis),
            _ => rng.range(0, 1 << 24),
        };
        // Never this node's own VTEP: the IP layer drops such a packet as a
        // martian before the VXLAN device sees it.
        let vtep = match rng.below(10) {
            0..=7 => u32::from_be_bytes(rng.pick(&AGENTS[1..]).1),
            8 => 0,
            _ => rng.next_u64() as u32,
        };
        (vni, vtep)
    }

    /// The next case.
    pub fn case(&mut self, rng: &mut Rng) -> Case {
        let (device, prog) = ingress(rng, &self.own);
        let me = self.own.iter().find(|(d, _)| *d == device).map(|(_, id)| id.clone()).unwrap_or_default();
        let mut f = Builder { rng, g: self, me: &me, device: &device };
        let mut frame = f.frame();
        let hw = if prog != Prog::Tunnel && rng.chance(40) { offload(&mut frame) } else { None };
        let gso_size = if self.gso_next(rng) { *rng.pick(&[1448, 1398, 8948]) } else { 0 };
        let tunnel = (prog == Prog::Tunnel && rng.chance(85)).then(|| self.tunnel_key(rng));
        Case { device, prog, frame, gso_size, tunnel, hw }
    }
}

/// Takes the outer in-band tag, if any, out of the frame into the offloaded
/// slot, as the receive path of a real device does before TC runs.
fn offload(frame: &mut Vec<u8>) -> Option<HwTag> {
    let proto = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if !matches!(proto, 0x8100 | 0x88a8) || frame.len() < 18 {
        return None;
    }
    let tci = u16::from_be_bytes([frame[14], frame[15]]);
    frame.drain(12..16);
    Some(HwTag { proto, tci })
}

/// A device of the pool and the program it normally runs (sometimes another):
/// mostly the taps this document binds, so that frames reach the deep rules.
fn ingress(rng: &mut Rng, bound: &[(String, Identity)]) -> (String, Prog) {
    let (device, prog) = match rng.below(100) {
        0..=59 if !bound.is_empty() => (rng.pick(bound).0.clone(), Prog::VmPort),
        0..=64 => (tap_name(rng.below(TAP_SLOTS)), Prog::VmPort),
        65..=94 => (rng.pick(&UPLINKS).1.to_string(), Prog::Uplink),
        95..=96 => (VXLAN_DEV.to_string(), Prog::Tunnel),
        _ => (STRAY.to_string(), *rng.pick(&[Prog::VmPort, Prog::Uplink, Prog::Tunnel])),
    };
    if rng.chance(2) {
        return (device, *rng.pick(&[Prog::VmPort, Prog::Uplink, Prog::Tunnel]));
    }
    (device, prog)
}

struct Builder<'a> {
    rng: &'a mut Rng,
    g: &'a mut Generator,
    /// What the ingress port owns (empty for uplinks and unbound taps).
    me: &'a Identity,
    device: &'a str,
}

const BROADCAST: Mac = [0xff; 6];

impl Builder<'_> {
    fn frame(&mut self) -> Vec<u8> {
        let (ethertype, payload) = match self.rng.below(100) {
            0..=19 => (0x0806, self.arp()),
            20..=54 => (0x0800, self.ipv4()),
            55..=89 => (0x86dd, self.ipv6()),
            90..=94 => {
                (*self.rng.pick(&[0x88cc, 0x0026, 0x9000, 0x0000, 0x05dc, 0x8863]), self.random_bytes(0, 64))
            }
            _ => (self.rng.next_u64() as u16, self.random_bytes(0, 64)),
        };
        let mut f = Vec::with_capacity(18 + payload.len() + 8);
        f.extend_from_slice(&self.dst_mac());
        f.extend_from_slice(&self.src_mac());
        self.vlan_stack(&mut f);
        f.extend_from_slice(&u16::to_be_bytes(ethertype));
        f.extend_from_slice(&payload);
        if self.rng.chance(30) && f.len() < 60 {
            f.resize(60, 0);
        }
        self.damage(&mut f);
        f
    }

    fn random_bytes(&mut self, lo: u32, hi: u32) -> Vec<u8> {
        let n = self.rng.range(lo, hi) as usize;
        (0..n).map(|_| self.rng.byte()).collect()
    }

    /// Truncation at any offset (never under the 14 bytes BPF_PROG_TEST_RUN needs), or a flipped byte.
    fn damage(&mut self, f: &mut Vec<u8>) {
        if self.rng.chance(15) && f.len() > 14 {
            let keep = self.rng.range(14, f.len() as u32) as usize;
            f.truncate(keep);
        }
        if self.rng.chance(3) {
            let at = self.rng.below(f.len());
            f[at] ^= 1 << self.rng.below(8);
        }
    }

    fn random_unicast(&mut self) -> Mac {
        let mut m = self.rng.bytes::<6>();
        m[0] &= 0xfe;
        m
    }

    fn any_mac(&mut self) -> Mac {
        if !self.g.macs.is_empty() && self.rng.chance(70) {
            return *self.rng.pick(&self.g.macs);
        }
        self.random_unicast()
    }

    fn dst_mac(&mut self) -> Mac {
        match self.rng.below(100) {
            0..=24 => BROADCAST,
            25..=54 => self.any_mac(),
            55..=64 => [0x33, 0x33, 0, 0, 0, self.rng.byte()],
            65..=69 => [0x01, 0x00, 0x5e, 0, 0, self.rng.byte()],
            70..=74 => [0x01, 0x80, 0xc2, 0, 0, self.rng.byte() & 0x1f],
            75..=79 if !self.me.macs.is_empty() => self.me.macs[0],
            80..=87 if !self.g.heard.is_empty() => *self.rng.pick(&self.g.heard),
            _ => self.random_unicast(),
        }
    }

    fn src_mac(&mut self) -> Mac {
        let mac = match self.rng.below(100) {
            0..=59 if !self.me.macs.is_empty() => *self.rng.pick(&self.me.macs),
            60..=84 => self.any_mac(),
            85..=87 => [0; 6],
            88..=89 => [0x01, 0, 0x5e, 0, 0, 1],
            _ => self.random_unicast(),
        };
        if self.me.macs.is_empty() {
            self.g.heard.push(mac);
            if self.g.heard.len() > 32 {
                self.g.heard.remove(0);
            }
        }
        mac
    }

    fn vid(&mut self) -> u16 {
        if !self.g.segments.is_empty() && self.rng.chance(60) {
            return *self.rng.pick(&self.g.segments);
        }
        self.rng.range(0, 4095) as u16
    }

    fn tag(&mut self, f: &mut Vec<u8>, tpid: u16, vid: u16) {
        f.extend_from_slice(&tpid.to_be_bytes());
        let pcp = (self.rng.byte() as u16 & 0x7) << 13;
        f.extend_from_slice(&(pcp | vid).to_be_bytes());
    }

    fn vlan_stack(&mut self, f: &mut Vec<u8>) {
        // The wire mostly carries the segments of networks programmed on that uplink.
        if self.me.macs.is_empty() && self.rng.chance(60) {
            let wires: Vec<Option<u16>> =
                self.g.wires.iter().filter(|(d, _)| d == self.device).map(|(_, s)| *s).collect();
            if !wires.is_empty() {
                if let Some(v) = *self.rng.pick(&wires) {
                    self.tag(f, 0x8100, v);
                }
                return;
            }
        }
        match self.rng.below(100) {
            0..=69 => {}
            70..=79 => self.tag(f, 0x8100, 0),
            80..=88 => {
                let v = self.vid();
                self.tag(f, 0x8100, v);
            }
            89..=94 => {
                let (outer, inner) = (if self.rng.chance(30) { 0 } else { self.vid() }, self.vid());
                self.tag(f, 0x8100, outer);
                self.tag(f, 0x8100, inner);
            }
            _ => {
                let outer = if self.rng.chance(30) { 0 } else { self.vid() };
                self.tag(f, 0x88a8, outer);
                if self.rng.chance(70) {
                    let inner = self.vid();
                    self.tag(f, 0x8100, inner);
                }
            }
        }
    }

    fn src_v4(&mut self) -> [u8; 4] {
        match self.rng.below(100) {
            0..=54 if !self.me.v4.is_empty() => *self.rng.pick(&self.me.v4),
            55..=74 if !self.g.v4.is_empty() => *self.rng.pick(&self.g.v4),
            75..=79 => [0; 4],
            _ => self.rng.bytes(),
        }
    }

    fn dst_v4(&mut self) -> [u8; 4] {
        match self.rng.below(100) {
            0..=49 if !self.g.v4.is_empty() => *self.rng.pick(&self.g.v4),
            50..=69 => [255; 4],
            _ => self.rng.bytes(),
        }
    }

    fn src_v6(&mut self) -> [u8; 16] {
        match self.rng.below(100) {
            0..=54 if !self.me.v6.is_empty() => *self.rng.pick(&self.me.v6),
            55..=74 if !self.g.v6.is_empty() => *self.rng.pick(&self.g.v6),
            75..=79 => [0; 16],
            _ => self.rng.bytes(),
        }
    }

    fn dst_v6(&mut self) -> [u8; 16] {
        if !self.g.v6.is_empty() && self.rng.chance(50) {
            return *self.rng.pick(&self.g.v6);
        }
        let mut a = [0u8; 16];
        a[0] = 0xff;
        a[1] = 0x02;
        a[15] = *self.rng.pick(&[1, 2, 0x16]);
        if self.rng.chance(30) { self.rng.bytes() } else { a }
    }

    /// ARP: good requests and replies, probes, spoofed sender MAC or IP, wrong lengths.
    fn arp(&mut self) -> Vec<u8> {
        let mut p = vec![0x00, 0x01, 0x08, 0x00, 6, 4];
        if self.rng.chance(10) {
            let at = self.rng.range(1, 5) as usize;
            p[at] = self.rng.byte();
        }
        p.extend_from_slice(&u16::to_be_bytes(*self.rng.pick(&[1, 1, 2, 3])));
        let sha =
            if self.rng.chance(75) && !self.me.macs.is_empty() { self.me.macs[0] } else { self.any_mac() };
        p.extend_from_slice(&sha);
        let spa = if self.rng.chance(10) { [0; 4] } else { self.src_v4() };
        p.extend_from_slice(&spa);
        p.extend_from_slice(&[0; 6]);
        let tpa = self.dst_v4();
        p.extend_from_slice(&tpa);
        p
    }

    fn udp_ports(&mut self) -> (u16, u16) {
        match self.rng.below(8) {
            0 => (68, 67),
            1 => (67, 68),
            2 => (546, 547),
            3 => (547, 546),
            4 => (self.rng.range(1024, 65535) as u16, 4789),
            5 => (67, self.rng.next_u64() as u16),
            _ => (self.rng.next_u64() as u16, self.rng.next_u64() as u16),
        }
    }

    fn udp(&mut self) -> Vec<u8> {
        let (sport, dport) = self.udp_ports();
        let body = if dport == 4789 {
            // VXLAN: flags, VNI, then an inner Ethernet frame.
            let mut b = vec![0x08, 0, 0, 0];
            let vni = if self.g.segments.is_empty() { 5000 } else { *self.rng.pick(&self.g.segments) as u32 };
            b.extend_from_slice(&(vni << 8).to_be_bytes());
            b.extend_from_slice(&self.any_mac());
            b.extend_from_slice(&self.any_mac());
            b.extend_from_slice(&[0x08, 0x06]);
            b.extend(self.arp());
            b
        } else if matches!(sport, 67 | 68) {
            let mut b = vec![if sport == 68 { 1 } else { 2 }, 1, 6, 0];
            b.resize(240, 0);
            b[236..240].copy_from_slice(&[99, 130, 83, 99]);
            b
        } else if self.rng.chance(5) {
            // Around the MTUs (1450 tunnel, 1500, 9000): exceeds some, fits others.
            vec![0; self.rng.range(1380, 1520) as usize]
        } else {
            self.random_bytes(0, 48)
        };
        let mut u = Vec::with_capacity(8 + body.len());
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend(body);
        u
    }

    /// IPv4 with or without options, whole, a first fragment, or a later one
    /// (usually of a datagram whose first fragment was generated before).
    fn ipv4(&mut self) -> Vec<u8> {
        if self.rng.chance(12)
            && let Some(h) = self.reuse_datagram(false)
        {
            let mut h = h;
            let ihl = ((h[0] & 0x0f) as usize * 4).clamp(20, h.len());
            h.truncate(ihl);
            let off = self.rng.range(1, 0x1fff) as u16 | if self.rng.chance(50) { 0x2000 } else { 0 };
            h[6..8].copy_from_slice(&off.to_be_bytes());
            let body = self.random_bytes(0, 64);
            h.extend(body);
            let total = h.len() as u16;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            return h;
        }
        let any = self.rng.byte();
        let proto = *self.rng.pick(&[17, 17, 1, 6, 47, any]);
        let payload = match proto {
            17 => self.udp(),
            1 => {
                let mut p = vec![8, 0, 0, 0, 0, 1, 0, 1];
                p.extend(self.random_bytes(0, 32));
                p
            }
            _ => self.random_bytes(0, 40),
        };
        let opts = if self.rng.chance(20) { self.rng.range(1, 10) as usize * 4 } else { 0 };
        let mut h = vec![0x45 + (opts / 4) as u8, 0, 0, 0];
        h.extend_from_slice(&self.rng.bytes::<2>());
        let frag = match self.rng.below(10) {
            0 => 0x2000,
            1 => 0x2000 | self.rng.range(1, 0x1fff) as u16,
            2 => self.rng.range(1, 0x1fff) as u16,
            _ => 0x4000,
        };
        h.extend_from_slice(&u16::to_be_bytes(frag));
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&self.src_v4());
        h.extend_from_slice(&self.dst_v4());
        h.extend((0..opts).map(|i| if i + 1 == opts { 0 } else { 1 }));
        h.extend(payload);
        let mut total = h.len() as u16;
        if self.rng.chance(5) {
            total = self.rng.next_u64() as u16;
        }
        h[2..4].copy_from_slice(&total.to_be_bytes());
        if self.rng.chance(3) {
            h[0] = self.rng.byte();
        }
        if frag & 0x3fff == 0x2000 {
            self.g.datagrams.push((self.device.to_string(), h.clone(), false));
            self.trim_datagrams();
        }
        h
    }

    fn trim_datagrams(&mut self) {
        if self.g.datagrams.len() > 64 {
            self.g.datagrams.remove(0);
        }
    }

    fn reuse_datagram(&mut self, v6: bool) -> Option<Vec<u8>> {
        let mine: Vec<&Vec<u8>> = self
            .g
            .datagrams
            .iter()
            .filter(|(d, _, six)| d == self.device && *six == v6)
            .map(|(_, h, _)| h)
            .collect();
        if mine.is_empty() {
            return None;
        }
        Some(mine[self.rng.below(mine.len())].clone())
    }

    fn icmpv6(&mut self) -> Vec<u8> {
        let kind = *self.rng.pick(&[133, 134, 134, 135, 136, 136, 128, 1]);
        let mut p = vec![kind, 0, 0, 0];
        match kind {
            134 => p.extend_from_slice(&[64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]),
            135 | 136 => {
                p.extend_from_slice(&[0x60, 0, 0, 0]);
                let target = self.src_v6();
                p.extend_from_slice(&target);
                if self.rng.chance(70) {
                    p.extend_from_slice(&[2, 1]);
                    p.extend_from_slice(&self.any_mac());
                }
            }
            _ => p.extend(self.random_bytes(4, 32)),
        }
        p
    }

    /// IPv6 with a chain of 0..8 extension headers (hop-by-hop, routing,
    /// fragment, destination options, AH), then UDP, ICMPv6, TCP, ESP or none.
    fn ipv6(&mut self) -> Vec<u8> {
        let later = self.rng.chance(10);
        let reused = if later { self.reuse_datagram(true) } else { None };
        let (src, dst) = match &reused {
            Some(h) => (h[8..24].try_into().expect("16"), h[24..40].try_into().expect("16")),
            None => (self.src_v6(), self.dst_v6()),
        };
        let n_ext = if self.rng.chance(50) { 0 } else { self.rng.range(1, 8) as usize };
        let mut kinds: Vec<u8> = (0..n_ext).map(|_| *self.rng.pick(&[0, 43, 44, 60, 51])).collect();
        if later && !kinds.contains(&44) {
            kinds.push(44);
        }
        let any = self.rng.byte();
        let upper = *self.rng.pick(&[17, 58, 58, 58, 6, 50, 59, any]);
        let mut body = Vec::new();
        let mut first_frag_header = None;
        for (i, kind) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(upper);
            match kind {
                44 => {
                    let (off, id) = match &reused {
                        Some(h) => (self.rng.range(1, 0x1fff) as u16, h[44..48].try_into().unwrap_or([0; 4])),
                        None if later => (self.rng.range(1, 0x1fff) as u16, self.rng.bytes()),
                        None => (0, self.rng.bytes()),
                    };
                    let m = if off == 0 || self.rng.chance(50) { 1 } else { 0 };
                    let next = match &reused {
                        Some(h) => h[40],
                        None => next,
                    };
                    if off == 0 {
                        first_frag_header = Some(body.len());
                    }
                    body.extend_from_slice(&[next, 0]);
                    body.extend_from_slice(&((off << 3) | m).to_be_bytes());
                    body.extend_from_slice(&id);
                    if off != 0 {
                        break;
                    }
                }
                51 => {
                    let len = self.rng.range(1, 4) as usize;
                    body.extend_from_slice(&[next, len as u8]);
                    body.extend((0..(len + 2) * 4 - 2).map(|_| 0u8));
                }
                _ => {
                    let len = self.rng.range(0, 2) as usize;
                    body.extend_from_slice(&[next, len as u8]);
                    body.extend((0..(len + 1) * 8 - 2).map(|_| 1u8));
                }
            }
        }
        if !body.is_empty() || reused.is_none() {
            match upper {
                17 => body.extend(self.udp()),
                58 => body.extend(self.icmpv6()),
                _ => body.extend(self.random_bytes(0, 32)),
            }
        }
        let first_next = kinds.first().copied().unwrap_or(upper);
        let mut h = vec![0x60, 0, 0, 0];
        let mut plen = body.len() as u16;
        if self.rng.chance(4) {
            plen = self.rng.next_u64() as u16;
        }
        h.extend_from_slice(&plen.to_be_bytes());
        h.extend_from_slice(&[first_next, 255]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        if let Some(at) = first_frag_header {
            // Later fragments reuse (src, dst) and the fragment header.
            let mut key = h.clone();
            key.extend_from_slice(&body[at..at + 8]);
            self.g.datagrams.push((self.device.to_string(), key, true));
            self.trim_datagrams();
        }
        h.extend(body);
        if self.rng.chance(3) {
            h[0] = self.rng.byte();
        }
        h
    }
}
