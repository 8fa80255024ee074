//! Kernel features probed at start-up: tcx has a fallback (netlink cls_bpf);
//! the helpers and map types the programs use have none, and a kernel
//! without one is refused with its name (see docs/operations.md, "Kernels").
//! Attaching names the qdisc or classifier it lacks when that fails.

use anyhow::{Result, bail};
use aya::{
    maps::MapType,
    programs::{ProgramType, SchedClassifier, TcAttachType},
    sys::{BpfHelper, is_helper_supported, is_map_supported},
};

use crate::config::TcHook;

/// How programs are hooked into a device's TC ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// tcx bpf_links (Linux 6.6+): pinned, updated atomically, ordered with other programs.
    Tcx,
    /// A cls_bpf filter on the clsact qdisc, through netlink (older kernels).
    Netlink,
}

/// What this kernel offers.
#[derive(Debug, Clone)]
pub struct Features {
    /// The running kernel's release.
    pub kernel: String,
    pub hook: Hook,
    /// Whether the kernel has tcx (the netlink hook may also be chosen by `tc_hook`).
    pub tcx: bool,
}

impl Features {
    /// The hook in one word: `tcx` or `netlink`.
    pub fn hook_name(&self) -> &'static str {
        match self.hook {
            Hook::Tcx => "tcx",
            Hook::Netlink => "netlink",
        }
    }

    /// The hook and why, for logs and `datapath status`.
    pub fn describe_hook(&self) -> &'static str {
        match (self.hook, self.tcx) {
            (Hook::Tcx, _) => "tcx links",
            (Hook::Netlink, false) => "cls_bpf filters on clsact (netlink; no tcx on this kernel)",
            (Hook::Netlink, true) => "cls_bpf filters on clsact (netlink, as tc_hook asks)",
        }
    }
}

/// Helpers the TC programs call, with the release that brought each (for the message).
const HELPERS: &[(BpfHelper, &str, &str)] = &[
    (BpfHelper::BPF_FUNC_loop, "bpf_loop", "5.17"),
    (BpfHelper::BPF_FUNC_clone_redirect, "bpf_clone_redirect", "4.2"),
    (BpfHelper::BPF_FUNC_redirect, "bpf_redirect", "4.4"),
    (BpfHelper::BPF_FUNC_skb_vlan_push, "bpf_skb_vlan_push", "4.3"),
    (BpfHelper::BPF_FUNC_skb_vlan_pop, "bpf_skb_vlan_pop", "4.3"),
    (BpfHelper::BPF_FUNC_skb_set_tunnel_key, "bpf_skb_set_tunnel_key", "4.3"),
    (BpfHelper::BPF_FUNC_skb_get_tunnel_key, "bpf_skb_get_tunnel_key", "4.3"),
    (BpfHelper::BPF_FUNC_skb_pull_data, "bpf_skb_pull_data", "4.9"),
    (BpfHelper::BPF_FUNC_skb_store_bytes, "bpf_skb_store_bytes", "4.1"),
    (BpfHelper::BPF_FUNC_ktime_get_ns, "bpf_ktime_get_ns", "4.1"),
];

/// Map types of the datapath's maps.
const MAP_TYPES: &[(MapType, &str)] = &[
    (MapType::Hash, "hash"),
    (MapType::LruHash, "LRU hash"),
    (MapType::LpmTrie, "LPM trie"),
    (MapType::PerCpuArray, "per-CPU array"),
];

/// Probes the running kernel and settles the config's `tc_hook` choice.
/// Fails, naming the first missing feature, if the programs could not run.
pub fn probe(choice: TcHook) -> Result<Features> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    for &(helper, name, since) in HELPERS {
        // A probe that cannot run at all (no BPF syscall, no permission) is not a verdict on
        // the helper: loading the programs will say what is wrong in that case.
        if let Ok(false) = is_helper_supported(ProgramType::SchedClassifier, helper) {
            bail!("kernel {kernel} has no {name} for TC programs (Linux {since}+); the datapath needs it");
        }
    }
    for &(map, name) in MAP_TYPES {
        if let Ok(false) = is_map_supported(map) {
            bail!("kernel {kernel} has no {name} maps; the datapath needs them");
        }
    }
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
    Ok(Features { kernel, hook, tcx })
}

/// A tcx query on `lo`, which every namespace has: kernels without tcx reject the attach type.
fn has_tcx() -> bool {
    SchedClassifier::query_tcx("lo", TcAttachType::Ingress).is_ok()
}
