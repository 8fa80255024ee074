//! Kernel features probed at start-up, and the fallback each missing one
//! takes (see docs/operations.md, "Kernels"). Whatever the datapath cannot do
//! without fails later with a message that names it: the verifier names a
//! helper it lacks, attaching names the qdisc or classifier.

use anyhow::{Result, bail};
use aya::programs::{SchedClassifier, TcAttachType};

use crate::config::TcHook;

/// How programs are hooked into a device's TC ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// tcx bpf_links (Linux 6.6+): pinned, updated atomically, ordered with other programs.
    Tcx,
    /// A cls_bpf filter on the clsact qdisc, through netlink (older kernels).
    Netlink,
}

impl Hook {
    /// For logs and `datapath status`.
    pub fn describe(self) -> &'static str {
        match self {
            Hook::Tcx => "tcx links",
            Hook::Netlink => "cls_bpf filters on clsact (netlink; no tcx on this kernel)",
        }
    }
}

/// What this kernel offers.
#[derive(Debug, Clone)]
pub struct Features {
    /// The running kernel's release.
    pub kernel: String,
    pub hook: Hook,
}

/// Probes the running kernel and settles the config's `tc_hook` choice.
pub fn probe(choice: TcHook) -> Result<Features> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let tcx = has_tcx();
    let hook = match choice {
        TcHook::Auto if tcx => Hook::Tcx,
        TcHook::Auto | TcHook::Netlink => Hook::Netlink,
        TcHook::Tcx if tcx => Hook::Tcx,
        TcHook::Tcx => bail!(
            "tc_hook = \"tcx\", but kernel {kernel} has no tcx links (Linux 6.6+); \
             use tc_hook = \"auto\" or \"netlink\" for cls_bpf filters"
        ),
    };
    Ok(Features { kernel, hook })
}

/// A tcx query on `lo`, which every namespace has: kernels without tcx reject the attach type.
fn has_tcx() -> bool {
    SchedClassifier::query_tcx("lo", TcAttachType::Ingress).is_ok()
}
