//! The floor: two namespaces joined by one veth pair, nothing in between.
//! What a 64-byte frame costs there is the generator, one hop and the sink;
//! subtracting it from a path's cost leaves what the path itself adds.

use anyhow::Result;
use datapath_tests::netns::Netns;

use super::traffic::{Endpoint, Flow};

const A: (&str, &str) = ("10.33.0.1", "fa:16:3e:33:00:01");
const B: (&str, &str) = ("10.33.0.2", "fa:16:3e:33:00:02");

/// The two namespaces; both are deleted on drop.
pub struct Floor {
    a: Netns,
    b: Netns,
}

impl Floor {
    /// Creates the pair, addressed and up.
    pub fn new() -> Result<Self> {
        let a = Netns::new("floor-a")?;
        let b = Netns::new("floor-b")?;
        a.exec(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b.name()])?;
        for (ns, (ip, mac)) in [(&a, A), (&b, B)] {
            ns.exec(&["ip", "link", "set", "eth0", "address", mac, "up"])?;
            ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        }
        Ok(Self { a, b })
    }

    /// a -> b.
    pub fn flow(&self) -> Flow<'_> {
        Flow {
            src: Endpoint { ns: &self.a, ip: A.0, mac: A.1 },
            dst: Endpoint { ns: &self.b, ip: B.0, mac: B.1 },
        }
    }
}
