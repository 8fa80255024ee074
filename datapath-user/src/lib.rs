//! User side of the datapath: loader, desired state and map sync, binding
//! source, netlink watcher, control socket, and the agent that ties them.

pub mod agent;
pub mod api;
pub mod attach;
pub mod batch;
pub mod bindings;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod desired;
pub mod ethtool;
pub mod features;
pub mod frames;
pub mod introspect;
pub mod learned;
pub mod loader;
pub mod metrics;
pub mod migrate;
pub mod monitor;
pub mod netlink;
pub mod neutron;
pub mod pcap;
pub mod policy;
pub mod source;
pub mod sync;
pub mod synced;
#[cfg(test)]
mod test_rng;
pub mod testrun;
pub mod tunnel;
