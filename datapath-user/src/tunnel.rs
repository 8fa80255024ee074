//! The VXLAN device the datapath encapsulates through: one collect-metadata
//! ("external") device per node, whose tunnel key each frame's program sets.
//! The kernel's own VXLAN code then speaks standard VXLAN on UDP 4789.

use std::{net::Ipv4Addr, process::Command};

use anyhow::{Context, Result, bail};
use datapath_common::VXLAN_PORT;

use crate::netlink::Devices;

/// Name of the agent's VXLAN device.
pub const TUNNEL_DEVICE: &str = "vxlan-dp";

/// Creates the VXLAN device with `local_ip` as source, if it is missing.
pub fn ensure(devices: &Devices, local_ip: Ipv4Addr) -> Result<bool> {
    if devices.contains_key(TUNNEL_DEVICE) {
        return Ok(false);
    }
    let port = VXLAN_PORT.to_string();
    let local = local_ip.to_string();
    ip(&["link", "add", TUNNEL_DEVICE, "type", "vxlan", "external", "dstport", &port, "local", &local])?;
    ip(&["link", "set", TUNNEL_DEVICE, "up"])?;
    log::info!("created {TUNNEL_DEVICE} (VXLAN, external, udp/{VXLAN_PORT}, local {local_ip})");
    Ok(true)
}

/// Deletes the VXLAN device, if present.
pub fn remove() -> Result<()> {
    let exists =
        Command::new("ip").args(["link", "show", TUNNEL_DEVICE]).output().is_ok_and(|o| o.status.success());
    if exists {
        ip(&["link", "del", TUNNEL_DEVICE])?;
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
