//! Neutron tests: a real neutron-server (RabbitMQ, MariaDB, RPC server, API)
//! with our ML2 mechanism driver, driven through its REST API as Nova and an
//! operator drive it. Each test starts its own server, database and vhost.

mod binding;
mod l2agent;
