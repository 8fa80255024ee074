//! A reference model of the kernel programs' decisions, written from
//! docs/architecture.md's forwarding rules and docs/maps.md, not from the
//! eBPF code: given the map contents, the learned MACs, the remembered
//! fragment verdicts and a frame with its ingress, it says what the program
//! must do. The differential fuzzer (`crate::fuzz`) runs every frame through
//! both and fails on any difference.

mod antispoof;
mod forward;
pub mod frame;
mod tables;
mod vm_port;
mod wire;

#[cfg(test)]
mod tests;

use datapath_common::{Action, DropReason};
pub use frame::{HwTag, Skb};
pub use tables::{FragKey, Frags, Learned, Model};

/// Which program family runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prog {
    VmPort,
    Uplink,
    Tunnel,
}

impl Prog {
    /// The program's name in the object.
    pub fn name(self) -> &'static str {
        use datapath_common::names;
        match self {
            Prog::VmPort => names::PROG_VM_PORT,
            Prog::Uplink => names::PROG_UPLINK,
            Prog::Tunnel => names::PROG_TUNNEL,
        }
    }
}

/// Where and how a frame arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingress {
    pub prog: Prog,
    pub ifindex: u32,
    /// The offloaded VLAN tag the frame arrives with.
    pub hw: Option<HwTag>,
    pub gso_size: u32,
    /// (VNI, remote VTEP) of a decapsulated frame; `None` when the skb has no tunnel key.
    pub tunnel: Option<(u32, u32)>,
    /// A dry-run trace: the program learns nothing and remembers no fragment.
    pub dry_run: bool,
}

/// One destination and what the frame carries towards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub ifindex: u32,
    /// VLAN id pushed; 0 for none.
    pub vlan: u32,
    /// Remote VTEP (host byte order); 0 for none.
    pub vtep: u32,
    /// VNI; 0 for none.
    pub vni: u32,
}

impl Target {
    /// A local port.
    pub fn port(ifindex: u32) -> Self {
        Target { ifindex, vlan: 0, vtep: 0, vni: 0 }
    }
}

/// What the program must do with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Drop(DropReason),
    /// Sent to `targets` (sorted), leaving `frame` as the program's output.
    Send {
        action: Action,
        targets: Vec<Target>,
        frame: Skb,
    },
}

/// The verdict plus actions counted on the side (a flood whose tunnel
/// copies exceed the MTU still reaches the local ports and counts
/// `flood_tunnel_mtu`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub side_actions: Vec<Action>,
    /// The network the frame was classified into (0: none yet).
    pub net_index: u32,
}

/// Mutable state a run may read and write besides the agent's maps.
#[derive(Debug, Default, Clone)]
pub struct Tables {
    pub learned: Learned,
    pub frags: Frags,
}

/// What one run needs to know and may change.
pub(crate) struct Run<'a> {
    pub model: &'a Model,
    pub tables: &'a mut Tables,
    pub ingress: Ingress,
    pub net_index: u32,
    pub side_actions: Vec<Action>,
}

/// A short result type for the families: a drop, or what to send.
pub(crate) type Decision = Result<(Action, Vec<Target>), DropReason>;

/// Decides what `ingress.prog` does with `frame`; updates `tables` as the
/// kernel would (learning, fragment verdicts).
pub fn decide(model: &Model, tables: &mut Tables, ingress: Ingress, frame: &[u8]) -> Outcome {
    let mut skb = Skb { bytes: frame.to_vec(), hw: ingress.hw, gso_size: ingress.gso_size };
    let mut run = Run { model, tables, ingress, net_index: 0, side_actions: Vec::new() };
    let decision = match ingress.prog {
        Prog::VmPort => vm_port::decide(&mut run, &mut skb),
        Prog::Uplink => wire::uplink(&mut run, &mut skb),
        Prog::Tunnel => wire::tunnel(&mut run, &mut skb),
    };
    let verdict = match decision {
        Ok((action, mut targets)) => {
            targets.sort();
            Verdict::Send { action, targets, frame: skb }
        }
        Err(reason) => Verdict::Drop(reason),
    };
    Outcome { verdict, side_actions: run.side_actions, net_index: run.net_index }
}

/// A read past the end is `malformed`; an incomplete tag the helper cannot pop is `vlan_op_failed`.
impl From<frame::Short> for DropReason {
    fn from(s: frame::Short) -> Self {
        match s {
            frame::Short::Truncated => DropReason::Malformed,
            frame::Short::PopFailed => DropReason::VlanOpFailed,
        }
    }
}
