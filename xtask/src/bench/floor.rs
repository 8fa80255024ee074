//! Reference topologies that are not a Neutron path: the floor, two namespaces
//! joined by one veth pair, nothing in between (what a 64-byte frame costs there
//! is the generator, one hop and the sink; subtracting it from a path's cost
//! leaves what the path itself adds), and a plain Linux bridge between two VM
//! namespaces, the simplest switch a node could have.

use anyhow::Result;
use datapath_tests::netns::Netns;

use super::traffic::{Endpoint, Flow, napi_for_generator};

const A: (&str, &str) = ("10.33.0.1", "fa:16:3e:33:00:01");
const B: (&str, &str) = ("10.33.0.2", "fa:16:3e:33:00:02");

/// The two endpoint namespaces, and the bridge's when there is one; all deleted on drop.
pub struct Floor {
    a: Netns,
    b: Netns,
    _bridge: Option<Netns>,
}

impl Floor {
    /// a and b on the two ends of one veth pair.
    pub fn veth_pair() -> Result<Self> {
        let a = Netns::new("floor-a")?;
        let b = Netns::new("floor-b")?;
        a.exec(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b.name()])?;
        napi_for_generator(&b, "eth0")?;
        Self { a, b, _bridge: None }.addressed()
    }

    /// a and b each behind a veth pair whose other end is a port of Linux bridge br0
    /// (no netfilter on it, unlike the legacy chain's qbr).
    pub fn linux_bridge() -> Result<Self> {
        let a = Netns::new("plainbr-a")?;
        let b = Netns::new("plainbr-b")?;
        let br = Netns::new("plainbr")?;
        br.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        for table in ["iptables", "ip6tables", "arptables"] {
            br.exec(&["sh", "-c", &format!("echo 0 > /proc/sys/net/bridge/bridge-nf-call-{table}")])?;
        }
        br.exec(&["ip", "link", "set", "br0", "up"])?;
        for (port, vm) in [("tapa", &a), ("tapb", &b)] {
            br.exec(&[
                "ip",
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                vm.name(),
            ])?;
            br.exec(&["ip", "link", "set", port, "master", "br0", "up"])?;
            napi_for_generator(&br, port)?;
        }
        Self { a, b, _bridge: Some(br) }.addressed()
    }

    fn addressed(self) -> Result<Self> {
        for (ns, (ip, mac)) in [(&self.a, A), (&self.b, B)] {
            ns.exec(&["ip", "link", "set", "eth0", "address", mac, "up"])?;
            ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        }
        Ok(self)
    }

    /// a -> b.
    pub fn flow(&self) -> Flow<'_> {
        Flow {
            src: Endpoint { ns: &self.a, ip: A.0, mac: A.1 },
            dst: Endpoint { ns: &self.b, ip: B.0, mac: B.1 },
        }
    }
}
