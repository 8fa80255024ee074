//! The binding source: networks, ports and agents in the shapes Neutron's API
//! returns them (GET /v2.0/networks, /v2.0/ports, /v2.0/agents), read from one
//! JSON document:
//!
//! ```json
//! {"networks": [...], "ports": [...], "agents": [...]}
//! ```
//!
//! A broken document is an error; a broken entry is refused on its own and
//! reported in [`Bindings::refused`], so one bad port can't take the node down.

mod addr;
mod catalog;
mod model;
mod parse;
mod qos;
mod secgroups;

pub use addr::{device_name, format_mac, masked, parse_cidr, parse_mac};
pub use catalog::{Catalog, CatalogDelta, Changed, NetBindings, QosPolicies, Security};
pub use model::{
    AddressPair, Agent, Bindings, Network, NetworkType, Port, Refusal, SubportOf, Trunk, subport_device_name,
};
pub use qos::{QosDirection, QosPolicy, QosRule, VALID_DSCP_MARKS};
pub use secgroups::{
    AddressGroup, Direction, Family, PROTO_DCCP, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    PROTO_UDPLITE, Ports, Remote, SecurityGroup, SgRule, has_ports, parse_rule,
};
