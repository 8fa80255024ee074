//! The VXLAN device the datapath encapsulates through: one collect-metadata
//! ("external") device per node, whose tunnel key each frame's program sets.
//! The kernel's own VXLAN code then speaks standard VXLAN on UDP 4789. The
//! device is created and removed through rtnetlink.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use datapath_common::VXLAN_PORT;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::netlink::Devices;

/// Name of the agent's VXLAN device.
pub const TUNNEL_DEVICE: &str = "vxlan-dp";

/// Creates the VXLAN device with `local_ip` as source, up, if it is missing.
/// Returns whether it was created.
pub fn ensure(devices: &Devices, local_ip: Ipv4Addr) -> Result<bool> {
    if devices.contains_key(TUNNEL_DEVICE) {
        return Ok(false);
    }
    let mut link = LinkMessage::default();
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    link.attributes = vec![
        LinkAttribute::IfName(TUNNEL_DEVICE.into()),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Port(VXLAN_PORT),
                InfoVxlan::Local(local_ip),
            ])),
        ]),
    ];
    request(RouteNetlinkMessage::NewLink(link), NLM_F_CREATE | NLM_F_EXCL).with_context(|| {
        format!("creating {TUNNEL_DEVICE} (vxlan external, udp/{VXLAN_PORT}, local {local_ip})")
    })?;
    log::info!("created {TUNNEL_DEVICE} (VXLAN, external, udp/{VXLAN_PORT}, local {local_ip})");
    Ok(true)
}

/// Deletes the VXLAN device, if present.
pub fn remove() -> Result<()> {
    let Some(&index) = crate::netlink::list_devices()?.get(TUNNEL_DEVICE) else { return Ok(()) };
    let mut link = LinkMessage::default();
    link.header.index = index;
    request(RouteNetlinkMessage::DelLink(link), 0).with_context(|| format!("deleting {TUNNEL_DEVICE}"))
}

/// Sends one rtnetlink request and waits for the kernel's acknowledgement.
fn request(message: RouteNetlinkMessage, flags: u16) -> Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
    socket.bind_auto().context("binding the rtnetlink socket")?;
    socket.connect(&SocketAddr::new(0, 0)).context("connecting the rtnetlink socket")?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(message));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0).context("sending the rtnetlink request")?;
    let mut reply = vec![0; 8192];
    let n = socket.recv(&mut &mut reply[..], 0).context("reading the rtnetlink reply")?;
    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n])
        .context("the kernel's rtnetlink reply does not parse")?;
    match answer.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => bail!("{}", e.to_io()),
        NetlinkPayload::Error(_) => Ok(()),
        other => bail!("unexpected rtnetlink reply: {other:?}"),
    }
}
