//! Neutron's agent RPC over AMQP 0-9-1 (oslo.messaging rabbit driver wire format).

pub mod envelope;
pub mod l2agent;
pub mod model;
pub mod notify;
pub mod plugin;
pub mod ports;
pub mod rpc;
pub mod secgroups;
pub mod transport;
