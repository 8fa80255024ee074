//! Compiles a port's policy into two longest-prefix-match tables, the shape
//! the kernel's LPM tries take, so that a packet costs two lookups (three when
//! its protocol has no rule of its own) whatever the number of rules.
//!
//! 1. Ports: per (direction, family, protocol), every rule's port interval is
//!    cut into aligned blocks (prefixes of the 16-bit port). A block's class is
//!    the set of rules whose interval contains the whole block. The longest
//!    block that contains a packet's port has exactly the rules whose interval
//!    contains the port: each such rule has a block around the port, and the
//!    longest block lies inside it. Rules of any protocol join every
//!    protocol's table, and have a table of their own for the protocols
//!    without rules.
//! 2. Remotes: per class, every prefix its rules name. A prefix's entry holds
//!    the first rule that names a prefix containing it. The longest prefix
//!    that contains the remote address finds exactly the rules that admit it,
//!    by the same argument, so the first of them is the reference's answer.
//!
//! Blocks and prefixes with no rule get no entry: a shorter one that contains
//! them has a subset of their rules, so a miss there is right too.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{Packet, PortPolicy, Rule, contains};
use crate::bindings::{Direction, Family, Ports};

/// The table a packet's protocol uses: its own, or the one of rules of any protocol.
pub type TableKey = (Direction, Family, Option<u8>);

/// A port policy as prefix tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    /// (direction, family, protocol) -> (port prefix value, prefix length) -> class.
    pub ports: BTreeMap<TableKey, BTreeMap<(u16, u8), u32>>,
    /// class -> (remote prefix, length) -> the first rule admitting it.
    pub remotes: BTreeMap<u32, BTreeMap<(IpAddr, u8), u32>>,
}

/// The port (or ICMP type and code) interval a rule admits.
fn interval(rule: &Rule) -> (u16, u16) {
    match (rule.protocol, rule.ports) {
        (None, _) | (_, Ports::Any) => (0, u16::MAX),
        (_, Ports::Range(lo, hi)) => (lo, hi),
        (_, Ports::Icmp(t, None)) => (u16::from(t) << 8, u16::from(t) << 8 | 0xff),
        (_, Ports::Icmp(t, Some(c))) => {
            let v = u16::from(t) << 8 | u16::from(c);
            (v, v)
        }
    }
}

/// The aligned blocks that cover lo..=hi exactly, as (value, prefix length).
fn blocks(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    let mut out = Vec::new();
    while lo <= hi {
        // The largest block starting at lo that stays within hi.
        let mut size = if lo == 0 { 1u32 << 16 } else { 1u32 << lo.trailing_zeros().min(16) };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

/// The ports a block covers.
fn block_range((v, len): (u16, u8)) -> (u16, u16) {
    let last = u32::from(v) + (1u32 << (16 - u32::from(len))) - 1;
    (v, last as u16)
}

fn block_within(block: (u16, u8), (lo, hi): (u16, u16)) -> bool {
    let (first, last) = block_range(block);
    lo <= first && last <= hi
}

fn prefix_within(inner: &(IpAddr, u8), outer: &(IpAddr, u8)) -> bool {
    outer.1 <= inner.1 && contains(&outer.0, outer.1, &inner.0)
}

/// Compiles `policy`.
pub fn compile(policy: &PortPolicy) -> Compiled {
    let mut out = Compiled::default();
    let mut classes: BTreeMap<BTreeSet<usize>, u32> = BTreeMap::new();
    let tables: BTreeSet<TableKey> =
        policy.rules.iter().map(|r| (r.direction, r.family, r.protocol)).collect();
    for key in tables {
        let (direction, family, protocol) = key;
        let rules: Vec<(usize, (u16, u16))> = policy
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.direction == direction && r.family == family)
            .filter(|(_, r)| r.protocol.is_none() || r.protocol == protocol)
            .map(|(i, r)| (i, interval(r)))
            .collect();
        let all: BTreeSet<(u16, u8)> = rules.iter().flat_map(|(_, (lo, hi))| blocks(*lo, *hi)).collect();
        let mut table = BTreeMap::new();
        for b in all {
            let set: BTreeSet<usize> =
                rules.iter().filter(|(_, iv)| block_within(b, *iv)).map(|(i, _)| *i).collect();
            if set.is_empty() {
                continue;
            }
            let next = classes.len() as u32;
            let class = *classes.entry(set).or_insert(next);
            table.insert(b, class);
        }
        out.ports.insert(key, table);
    }
    for (set, class) in classes {
        let mut remotes = BTreeMap::new();
        let named: BTreeSet<(IpAddr, u8)> =
            set.iter().flat_map(|i| policy.rules[*i].remotes.iter().copied()).collect();
        for q in named {
            let first = set.iter().find(|i| policy.rules[**i].remotes.iter().any(|p| prefix_within(&q, p)));
            if let Some(i) = first {
                remotes.insert(q, *i as u32);
            }
        }
        out.remotes.insert(class, remotes);
    }
    out
}

/// The longest entry of `table` whose prefix contains `value`, as the kernel's LPM trie finds it.
fn longest<K: Copy, V: Copy>(
    table: &BTreeMap<K, V>,
    len_of: impl Fn(&K) -> u8,
    holds: impl Fn(&K) -> bool,
) -> Option<V> {
    table.iter().filter(|(k, _)| holds(k)).max_by_key(|(k, _)| len_of(k)).map(|(_, v)| *v)
}

impl Compiled {
    /// What the kernel's lookups find for `pkt`: the admitting rule, or None (denied).
    pub fn lookup(&self, pkt: &Packet) -> Option<usize> {
        let own = (pkt.direction, pkt.family, Some(pkt.protocol));
        let table = self.ports.get(&own).or_else(|| self.ports.get(&(pkt.direction, pkt.family, None)))?;
        let class = longest(table, |k| k.1, |k| block_within((pkt.port, 16), block_range(*k)))?;
        let remotes = self.remotes.get(&class)?;
        longest(remotes, |k| k.1, |k| contains(&k.0, k.1, &pkt.remote)).map(|r| r as usize)
    }

    /// Entries in both tables, for the memory figures.
    pub fn entries(&self) -> usize {
        self.ports.values().map(BTreeMap::len).sum::<usize>()
            + self.remotes.values().map(BTreeMap::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::test_rng::Rng;
    use crate::{
        bindings::{PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP},
        policy::reference::first_admitting,
    };

    #[test]
    fn blocks_cover_exactly() {
        assert_eq!(blocks(0, u16::MAX), vec![(0, 0)]);
        assert_eq!(blocks(22, 22), vec![(22, 16)]);
        assert_eq!(blocks(1, 3), vec![(1, 16), (2, 15)]);
        assert_eq!(blocks(65535, 65535), vec![(65535, 16)]);
        for (lo, hi) in [(1u16, 65535u16), (1000, 2000), (0, 0), (32768, 65535), (7, 9)] {
            let b = blocks(lo, hi);
            let covered: u32 = b.iter().map(|(_, l)| 1u32 << (16 - l)).sum();
            assert_eq!(covered, u32::from(hi) - u32::from(lo) + 1, "{lo}-{hi}");
            assert!(b.iter().all(|blk| block_within(*blk, (lo, hi))), "{lo}-{hi}");
        }
    }

    const PROTOS: [Option<u8>; 7] = [
        None,
        Some(PROTO_TCP),
        Some(PROTO_UDP),
        Some(PROTO_ICMP),
        Some(PROTO_ICMPV6),
        Some(PROTO_SCTP),
        Some(47),
    ];
    /// Ports where ranges begin and end, so that edges are hit often.
    const EDGES: [u16; 9] = [0, 1, 2, 21, 22, 23, 1024, 65534, 65535];

    fn addr(rng: &mut Rng, family: Family) -> IpAddr {
        // A small space, so that prefixes overlap.
        match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(10, 0, rng.below(4) as u8, rng.below(8) as u8)),
            Family::V6 => {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, rng.below(4) as u16, rng.below(8) as u16))
            }
        }
    }

    fn prefix(rng: &mut Rng, family: Family) -> (IpAddr, u8) {
        let max = if family == Family::V4 { 32 } else { 128 };
        let len = [0, max - 8, max - 3, max - 1, max][rng.below(5) as usize];
        // Host bits cleared, as the parser does.
        (crate::bindings::masked(addr(rng, family), len), len)
    }

    fn port(rng: &mut Rng) -> u16 {
        if rng.below(3) == 0 {
            rng.below(65536) as u16
        } else {
            EDGES[rng.below(EDGES.len() as u64) as usize]
        }
    }

    fn rule(rng: &mut Rng, i: usize) -> Rule {
        let family = if rng.below(2) == 0 { Family::V4 } else { Family::V6 };
        let protocol = PROTOS[rng.below(PROTOS.len() as u64) as usize];
        let ports = match protocol {
            Some(p) if crate::bindings::has_ports(p) && rng.below(3) != 0 => {
                let (a, b) = (port(rng).max(1), port(rng).max(1));
                Ports::Range(a.min(b), a.max(b))
            }
            Some(PROTO_ICMP | PROTO_ICMPV6) if rng.below(2) == 0 => {
                Ports::Icmp(rng.below(4) as u8 * 4, (rng.below(2) == 0).then(|| rng.below(2) as u8))
            }
            _ => Ports::Any,
        };
        let remotes = (0..rng.below(3)).map(|_| prefix(rng, family)).collect();
        Rule {
            id: format!("r{i}"),
            direction: if rng.below(2) == 0 { Direction::Ingress } else { Direction::Egress },
            family,
            protocol,
            ports,
            remotes,
        }
    }

    fn packet(rng: &mut Rng, policy: &PortPolicy) -> Packet {
        let family = if rng.below(2) == 0 { Family::V4 } else { Family::V6 };
        let protocol = PROTOS[1 + rng.below(PROTOS.len() as u64 - 1) as usize].unwrap_or(0);
        // Half the packets aim at a rule's edges.
        let port = match policy.rules.get(rng.below(policy.rules.len() as u64 + 1) as usize).map(interval) {
            Some((lo, hi)) if rng.below(2) == 0 => {
                [lo.saturating_sub(1), lo, hi, hi.saturating_add(1)][rng.below(4) as usize]
            }
            _ => port(rng),
        };
        Packet {
            direction: if rng.below(2) == 0 { Direction::Ingress } else { Direction::Egress },
            family,
            protocol,
            port,
            remote: addr(rng, family),
        }
    }

    /// Random rule sets and packets: the compiled tables and the reference
    /// agree on the verdict and on which rule admitted the packet.
    #[test]
    fn compiled_tables_agree_with_the_reference() {
        let mut admitted = 0;
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let n = rng.below(12) as usize;
            let policy = PortPolicy { stateful: true, rules: (0..n).map(|i| rule(&mut rng, i)).collect() };
            let compiled = compile(&policy);
            for _ in 0..200 {
                let pkt = packet(&mut rng, &policy);
                let want = first_admitting(&policy, &pkt);
                admitted += usize::from(want.is_some());
                assert_eq!(compiled.lookup(&pkt), want, "seed {seed}: {pkt:?}\n{policy:#?}\n{compiled:#?}");
            }
        }
        // The generator must exercise both verdicts, or the agreement says little.
        assert!(admitted > 5_000 && admitted < 55_000, "admitted {admitted} of 60,000");
    }

    #[test]
    fn a_thousand_rules_compile_to_tables_that_stay_small() {
        let rules = (0..1000u16)
            .map(|i| Rule {
                id: format!("r{i}"),
                direction: Direction::Ingress,
                family: Family::V4,
                protocol: Some(PROTO_TCP),
                ports: Ports::Range(1000 + i, 1000 + i),
                remotes: vec![(IpAddr::V4(Ipv4Addr::new(10, (i >> 8) as u8, i as u8, 0)), 24)],
            })
            .collect();
        let compiled = compile(&PortPolicy { stateful: true, rules });
        assert_eq!(compiled.entries(), 2000, "one port block and one remote prefix per rule");
        let pkt = |port, remote: [u8; 4]| Packet {
            direction: Direction::Ingress,
            family: Family::V4,
            protocol: PROTO_TCP,
            port,
            remote: IpAddr::V4(remote.into()),
        };
        assert_eq!(compiled.lookup(&pkt(1999, [10, 3, 231, 7])), Some(999));
        assert_eq!(
            compiled.lookup(&pkt(1999, [10, 3, 230, 7])),
            None,
            "the right port from the wrong remote"
        );
        assert_eq!(compiled.lookup(&pkt(999, [10, 0, 0, 1])), None);
    }
}
