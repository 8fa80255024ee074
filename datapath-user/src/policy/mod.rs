//! Security-group policy: what one port's groups admit, expanded into
//! plain prefixes (`expand`), evaluated straight from Neutron's semantics
//! (`reference`), and compiled into longest-prefix-match tables whose lookup
//! cost does not grow with the number of rules (`compile`). The randomized
//! tests check that the compiled tables and the reference agree on every packet.

pub mod compile;
mod expand;
pub mod reference;

use std::net::IpAddr;

pub use expand::{Members, expand, expand_groups, stateful, table_slots};

use crate::bindings::{Direction, Family, Ports, masked};

/// One rule of a port's policy, its remote expanded into prefixes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    /// Neutron's rule id, for `datapath trace`.
    pub id: String,
    pub direction: Direction,
    pub family: Family,
    /// None: any protocol.
    pub protocol: Option<u8>,
    pub ports: Ports,
    /// Who may be on the other end: prefixes of the rule's family (empty: nobody,
    /// e.g. a remote group without members).
    pub remotes: Vec<(IpAddr, u8)>,
}

/// What a set of groups admits, the union of their rules: one port's whole
/// policy, or one of its tables in the kernel (`table_slots`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct PortPolicy {
    /// False when the port's groups are stateless.
    pub stateful: bool,
    /// In the port's group order, then each group's rule order; the index is the
    /// rule's number in the compiled tables.
    pub rules: Vec<Rule>,
}

/// What a packet shows the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub direction: Direction,
    pub family: Family,
    pub protocol: u8,
    /// The destination port (tcp, udp, sctp, dccp, udplite), ICMP type << 8 | code, or 0.
    pub port: u16,
    /// The source for ingress, the destination for egress.
    pub remote: IpAddr,
}

/// Whether `addr` lies in `prefix/len` (of the same family).
pub fn contains(prefix: &IpAddr, len: u8, addr: &IpAddr) -> bool {
    // Addresses of two families mask to two variants, which never compare equal.
    masked(*prefix, len) == masked(*addr, len)
}
