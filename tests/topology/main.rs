//! Topology tests: the real agent and programs on namespaces joined by veth
//! pairs and a bridge that plays the physical network. Each test builds its
//! own cluster with unique names and removes it on exit, also on panic.

mod aging;
mod chaos;
mod events;
mod hardening;
mod host_uplink;
mod introspection;
mod isolation;
mod lifecycle;
mod metrics;
mod monitor;
mod qos;
mod restart;
mod scenario;
mod secgroup_scenarios;
mod secgroups;
mod security;
mod seed;
mod trunk;
mod vxlan;
mod xdp;
