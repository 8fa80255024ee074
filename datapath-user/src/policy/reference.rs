//! The reference evaluator: Neutron's rule semantics written down directly,
//! one rule at a time. Slow and obviously right; the compiled tables must
//! agree with it.

use super::{Packet, PortPolicy, Rule, contains};
use crate::bindings::{PROTO_ICMP, PROTO_ICMPV6, Ports, has_ports};

/// Whether `rule` admits `pkt`.
pub fn admits(rule: &Rule, pkt: &Packet) -> bool {
    if rule.direction != pkt.direction || rule.family != pkt.family {
        return false;
    }
    if rule.protocol.is_some_and(|p| p != pkt.protocol) {
        return false;
    }
    let ports = match rule.ports {
        Ports::Any => true,
        Ports::Range(lo, hi) => has_ports(pkt.protocol) && (lo..=hi).contains(&pkt.port),
        Ports::Icmp(t, code) => {
            matches!(pkt.protocol, PROTO_ICMP | PROTO_ICMPV6)
                && (pkt.port >> 8) as u8 == t
                && code.is_none_or(|c| c == pkt.port as u8)
        }
    };
    ports && rule.remotes.iter().any(|(p, len)| contains(p, *len, &pkt.remote))
}

/// The first rule of the policy that admits `pkt`, if any (none: denied).
pub fn first_admitting(policy: &PortPolicy, pkt: &Packet) -> Option<usize> {
    policy.rules.iter().position(|r| admits(r, pkt))
}
