//! Frame builders (for `datapath trace` specs and the program tests): Ethernet, 802.1Q, ARP,
//! IPv4/UDP (DHCP), IPv6/ICMPv6. Checksums are computed so that frames are
//! what a real stack would send.

/// A MAC address.
pub type Mac = [u8; 6];

/// Broadcast MAC.
pub const BROADCAST: Mac = [0xff; 6];

/// `fa:16:3e:00:00:xx`, the Neutron OUI with a chosen last byte.
pub const fn neutron_mac(last: u8) -> Mac {
    [0xfa, 0x16, 0x3e, 0x00, 0x00, last]
}

/// An Ethernet frame.
pub fn eth(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Inserts an 802.1Q (or other TPID) tag after the MAC addresses.
pub fn tagged(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// An ARP packet (Ethernet/IPv4). `op` 1 = request, 2 = reply.
pub fn arp(op: u16, sha: Mac, spa: [u8; 4], tha: Mac, tpa: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x00, 0x01, 0x08, 0x00, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa);
    p.extend_from_slice(&tha);
    p.extend_from_slice(&tpa);
    p
}

/// A broadcast ARP request frame from `sha`/`spa` for `tpa`.
pub fn arp_request(sha: Mac, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    eth(BROADCAST, sha, 0x0806, &arp(1, sha, spa, [0; 6], tpa))
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header + payload with a correct header checksum.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = csum_fold(csum_add(0, &h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// A UDP datagram in IPv4 with correct checksums.
pub fn ipv4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&len.to_be_bytes());
    let c = csum_fold(csum_add(csum_add(0, &pseudo), &u));
    u[6..8].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 17, &u)
}

/// The VXLAN header (the VNI flag set) followed by `inner`, an Ethernet frame.
pub fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08, 0, 0, 0];
    v.extend_from_slice(&(vni << 8).to_be_bytes());
    v.extend_from_slice(inner);
    v
}

/// An ICMP echo request in IPv4.
pub fn ipv4_icmp_echo(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"datapath-test-payload");
    let c = csum_fold(csum_add(0, &icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 1, &icmp)
}

/// TCP flags, for `tcp_segment`.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// A 20-byte TCP header with `flags` (checksum left 0: the programs do not check it).
pub fn tcp_segment(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1000u32.to_be_bytes());
    t.extend_from_slice(&(if flags & TCP_ACK != 0 { 2000u32 } else { 0 }).to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

/// A TCP segment with `flags` in IPv4.
pub fn ipv4_tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ipv4(src, dst, 6, &tcp_segment(sport, dport, flags))
}

/// An ICMP message in IPv4: type, code, the 4 bytes after the checksum, and a body.
pub fn ipv4_icmp(src: [u8; 4], dst: [u8; 4], kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(body);
    let c = csum_fold(csum_add(0, &icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 1, &icmp)
}

/// A minimal BOOTP/DHCP body (op 1 request or 2 reply) for `chaddr`.
pub fn dhcp_body(op: u8, chaddr: Mac) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[0] = op;
    b[1] = 1;
    b[2] = 6;
    b[28..34].copy_from_slice(&chaddr);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    b
}

/// An IPv6 header + payload.
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.push(next);
    h.push(255);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// An ICMPv6 message (type, code, body) from `src` to `dst`, with its checksum.
pub fn icmpv6(src: [u8; 16], dst: [u8; 16], kind: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(body);
    let c = l4_checksum_v6(src, dst, 58, &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    icmp
}

/// A UDP datagram (header + payload) from `src` to `dst` in IPv6, with its checksum.
pub fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = l4_checksum_v6(src, dst, 17, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

fn l4_checksum_v6(src: [u8; 16], dst: [u8; 16], proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, proto]);
    csum_fold(csum_add(csum_add(0, &pseudo), l4))
}

/// The ICMPv6 body of a neighbour advertisement for `target`, with a target link-layer option.
pub fn na_body(target: [u8; 16], mac: Mac) -> Vec<u8> {
    let mut b = vec![0x60, 0, 0, 0];
    b.extend_from_slice(&target);
    b.extend_from_slice(&[2, 1]);
    b.extend_from_slice(&mac);
    b
}

/// The ICMPv6 body of a router advertisement (hop limit 64, lifetime 1800 s) with a source link-layer option.
pub fn ra_body(mac: Mac) -> Vec<u8> {
    let mut b = vec![64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1];
    b.extend_from_slice(&mac);
    b
}

/// An ICMPv6 neighbour advertisement for `target` (checksum computed), in IPv6.
pub fn ipv6_na(src: [u8; 16], dst: [u8; 16], target: [u8; 16], mac: Mac) -> Vec<u8> {
    ipv6(src, dst, 58, &icmpv6(src, dst, 136, 0, &na_body(target, mac)))
}

/// An IPv6 extension header, to put in front of an upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options (8 bytes, PadN).
    HopByHop,
    /// Destination options (8 bytes, PadN).
    DestOpts,
    /// A routing header with no segments left (8 bytes).
    Routing,
    /// An authentication header with a 4-byte ICV (16 bytes).
    Ah,
    /// A fragment header: `offset` in 8-byte units, the more-fragments flag, the identification.
    Fragment { offset: u16, more: bool, id: u32 },
}

impl Ext {
    /// The header's protocol number.
    pub fn proto(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::DestOpts => 60,
            Ext::Routing => 43,
            Ext::Ah => 51,
            Ext::Fragment { .. } => 44,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop | Ext::DestOpts => vec![next, 0, 1, 4, 0, 0, 0, 0],
            Ext::Routing => vec![next, 0, 0, 0, 0, 0, 0, 0],
            Ext::Ah => vec![next, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0xa5, 0xa5, 0xa5, 0xa5],
            Ext::Fragment { offset, more, id } => {
                let field = (offset << 3) | u16::from(more);
                let mut b = vec![next, 0];
                b.extend_from_slice(&field.to_be_bytes());
                b.extend_from_slice(&id.to_be_bytes());
                b
            }
        }
    }
}

/// An IPv6 packet whose upper layer (`proto`, bytes `upper`) follows the extension headers `exts`.
pub fn ipv6_ext(src: [u8; 16], dst: [u8; 16], exts: &[Ext], proto: u8, upper: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (i, ext) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, |e| e.proto());
        payload.extend_from_slice(&ext.bytes(next));
    }
    payload.extend_from_slice(upper);
    ipv6(src, dst, exts.first().map_or(proto, |e| e.proto()), &payload)
}

/// The two fragments of an IPv6 datagram carrying `upper` (protocol `proto`),
/// split after `split` bytes of it (a multiple of 8).
pub fn ipv6_fragments(
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    proto: u8,
    upper: &[u8],
    split: usize,
) -> (Vec<u8>, Vec<u8>) {
    let (head, tail, offset) = split8(upper, split);
    let first = ipv6_ext(src, dst, &[Ext::Fragment { offset: 0, more: true, id }], proto, head);
    (first, ipv6_ext(src, dst, &[Ext::Fragment { offset, more: false, id }], proto, tail))
}

/// The two fragments of an IPv4 datagram carrying `upper` (protocol `proto`),
/// split after `split` bytes of it (a multiple of 8).
pub fn ipv4_fragments(
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
    proto: u8,
    upper: &[u8],
    split: usize,
) -> (Vec<u8>, Vec<u8>) {
    let (head, tail, offset) = split8(upper, split);
    let fragment = |bytes: &[u8], field: u16| {
        let mut p = ipv4(src, dst, proto, bytes);
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6..8].copy_from_slice(&field.to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = csum_fold(csum_add(0, &p[..20]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    };
    (fragment(head, 0x2000), fragment(tail, offset))
}

/// `upper` cut after `split` bytes (a multiple of 8, as fragment offsets
/// count), and the later part's offset in 8-byte units.
fn split8(upper: &[u8], split: usize) -> (&[u8], &[u8], u16) {
    assert!(split.is_multiple_of(8) && split < upper.len(), "fragments split on 8-byte boundaries");
    (&upper[..split], &upper[split..], (split / 8) as u16)
}

/// The UDP header + payload of a datagram in IPv4 (checksum left 0, which IPv4 allows).
pub fn udp4_segment(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// The EUI-64 link-local address of `mac`.
pub fn link_local(mac: Mac) -> [u8; 16] {
    [0xfe, 0x80, 0, 0, 0, 0, 0, 0, mac[0] ^ 2, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]]
}

/// A `std::net::Ipv6Addr` as bytes, for readability in tables.
pub fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().expect("valid IPv6 literal in test").octets()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = ipv4_udp([10, 0, 0, 1], [10, 0, 0, 2], 1000, 2000, b"abc");
        assert_eq!(csum_fold(csum_add(0, &p[..20])), 0);
    }

    #[test]
    fn extension_headers_chain_their_next_header_fields() {
        let p = ipv6_ext([0; 16], [0; 16], &[Ext::HopByHop, Ext::Ah, Ext::DestOpts], 58, &[134, 0]);
        assert_eq!(p[6], 0, "fixed header points at hop-by-hop");
        assert_eq!(p[40], 51, "hop-by-hop points at AH");
        assert_eq!(p[48], 60, "AH points at destination options");
        assert_eq!((p[49] as usize + 2) * 4, 16, "AH length field");
        assert_eq!(p[64], 58, "destination options point at ICMPv6");
        assert_eq!(&p[72..], &[134, 0]);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]) as usize, p.len() - 40);
    }

    #[test]
    fn fragments_carry_offsets_and_flags() {
        let (a, b) = ipv4_fragments([1, 1, 1, 1], [2, 2, 2, 2], 7, 17, &[0u8; 24], 16);
        assert_eq!((&a[6..8], &b[6..8]), (&[0x20, 0][..], &[0, 2][..]));
        assert_eq!(csum_fold(csum_add(0, &b[..20])), 0);
        let (a, b) = ipv6_fragments([0; 16], [0; 16], 9, 17, &[0u8; 24], 8);
        assert_eq!((&a[42..44], &b[42..44]), (&[0, 1][..], &[0, 8][..]));
        assert_eq!(&b[44..48], &9u32.to_be_bytes());
    }

    #[test]
    fn tag_is_inserted_after_macs() {
        let f = eth(BROADCAST, neutron_mac(1), 0x0800, &[1, 2]);
        let t = tagged(&f, 0x8100, 1000);
        assert_eq!(&t[12..18], &[0x81, 0x00, 0x03, 0xe8, 0x08, 0x00]);
    }
}
