//! Kernel side of the datapath: TC programs for VM ports and uplinks, and
//! the uplinks' XDP stage.
//!
//! Each entry point is thin: it calls the family's `try_` function and hands
//! the result to the one exit, `verdict::finish`, which counts it.
#![no_std]
#![no_main]
// BPF's atomic add (`qos`): the target's atomic types offer no fetch_add.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod antispoof;
mod arp;
mod conntrack;
mod flow;
mod forward;
mod frag;
mod maps;
mod monitor;
mod parse;
mod port_out;
mod qos;
mod secgroup;
mod skb;
mod stats;
mod trace;
mod tunnel;
mod underlay_xdp;
mod uplink;
mod uplink_xdp;
mod verdict;
mod vm_port;
mod xdp_verdict;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use datapath_common::names;

use crate::verdict::Meta;

/// TC ingress of VM taps and namespace ports: what the port sends.
#[classifier]
pub fn vm_port(ctx: TcContext) -> i32 {
    let mut meta = Meta::new(&ctx);
    let res = vm_port::try_vm_port(&ctx, &mut meta);
    verdict::finish(&ctx, &meta, names::PROG_INDEX_VM_PORT, res)
}

/// TC egress of VM taps and namespace ports: what the port receives.
#[classifier]
pub fn vm_port_out(ctx: TcContext) -> i32 {
    let mut meta = Meta::new(&ctx);
    meta.egress = true;
    let res = port_out::try_vm_port_out(&ctx, &mut meta);
    verdict::finish(&ctx, &meta, names::PROG_INDEX_VM_PORT_OUT, res)
}

/// TC ingress of a physical uplink: what the wire delivers.
#[classifier]
pub fn uplink_in(ctx: TcContext) -> i32 {
    let mut meta = Meta::new(&ctx);
    let res = uplink::try_uplink(&ctx, &mut meta);
    verdict::finish(&ctx, &meta, names::PROG_INDEX_UPLINK, res)
}

/// XDP of a physical uplink, in the driver: the drops that need no skb, and the fast path to the taps.
#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    let mut meta = xdp_verdict::XdpMeta::new(&ctx);
    let res = uplink_xdp::try_uplink_xdp(&ctx, &mut meta);
    xdp_verdict::finish(&ctx, &meta, names::PROG_INDEX_UPLINK_XDP, res)
}

/// XDP of the underlay device (the one holding `local_ip`): tunnel traffic of
/// no served VNI, or from no peer, dropped in the driver; the host's own passes uncounted.
#[xdp]
pub fn underlay_xdp(ctx: XdpContext) -> u32 {
    let mut meta = xdp_verdict::XdpMeta::new(&ctx);
    let seen = underlay_xdp::try_underlay_xdp(&ctx, &mut meta);
    match underlay_xdp::counted(seen) {
        Some(res) => xdp_verdict::finish(&ctx, &meta, names::PROG_INDEX_UNDERLAY_XDP, res),
        None => aya_ebpf::bindings::xdp_action::XDP_PASS,
    }
}

/// TC ingress of the collect-metadata VXLAN device: what the tunnels deliver.
#[classifier]
pub fn tunnel_in(ctx: TcContext) -> i32 {
    let mut meta = Meta::new(&ctx);
    let res = tunnel::try_tunnel(&ctx, &mut meta);
    verdict::finish(&ctx, &meta, names::PROG_INDEX_TUNNEL, res)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
