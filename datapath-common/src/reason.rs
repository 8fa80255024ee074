//! Why a packet was dropped, and what was done with the ones that were not.
//!
//! Both are indices into [`crate::PortCounters`]. They are enums in code but
//! never stored as enum fields in a shared type: counters are arrays indexed
//! by `as usize`.

macro_rules! counted_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every variant, in counter order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stable, operator-facing name (used in `datapath stats`).
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// The variant whose counter index is `index`, if any.
            pub const fn from_index(index: u32) -> Option<$name> {
                match index {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

counted_enum! {
    /// Why a frame was dropped. Every drop in the kernel programs names one.
    pub enum DropReason {
        /// The ingress device has no entry in `PORTS` (the agent is detaching it).
        PortUnknown = 1 => "port_unknown",
        /// A tap with no binding for this host.
        PortUnbound = 2 => "port_unbound",
        /// The Neutron port is `admin_state_up: false`.
        PortAdminDown = 3 => "port_admin_down",
        /// Truncated or malformed headers.
        Malformed = 4 => "malformed",
        /// Source MAC is neither the port's nor an allowed-address-pair MAC.
        SrcMacSpoof = 5 => "src_mac_spoof",
        /// IPv4 source is neither a fixed IP nor an allowed pair.
        Ipv4SrcSpoof = 6 => "ipv4_src_spoof",
        /// ARP sender IP/MAC is not the port's.
        ArpSpoof = 7 => "arp_spoof",
        /// IPv6 source is neither a fixed IP, an allowed pair, nor link-local of the MAC.
        Ipv6SrcSpoof = 8 => "ipv6_src_spoof",
        /// IPv6 neighbour advertisement for a target the port does not own.
        NdSpoof = 9 => "nd_spoof",
        /// DHCP (v4 or v6) server reply sent by a VM port.
        DhcpServerFromVm = 10 => "dhcp_server_from_vm",
        /// A VM sent an 802.1Q/802.1ad tagged frame (not a priority tag).
        VmTagged = 11 => "vm_tagged",
        /// IEEE 802.1D link-local control frames (STP BPDU, LLDP, pause).
        L2Control = 12 => "l2_control",
        /// A frame from the uplink whose VLAN is not a known segmentation id.
        UnknownSegment = 13 => "unknown_segment",
        /// The port's network has no `NETWORKS` entry.
        NoNetwork = 14 => "no_network",
        /// Broadcast/unknown unicast with no other member to flood to.
        FloodNoTarget = 15 => "flood_no_target",
        /// The destination lives on the side the frame came from (same port, or the uplink).
        Hairpin = 16 => "hairpin",
        /// The redirect helper failed.
        RedirectFailed = 17 => "redirect_failed",
        /// The frame exceeds the network MTU towards a tunnel.
        MtuExceeded = 18 => "mtu_exceeded",
        /// A multicast or all-zero source MAC.
        SrcMacInvalid = 19 => "src_mac_invalid",
        /// A frame from the uplink that claims a local port's MAC as its source.
        UplinkSrcIsLocal = 20 => "uplink_src_is_local",
        /// The VLAN push/pop helper failed.
        VlanOpFailed = 21 => "vlan_op_failed",
        /// Setting or reading the tunnel key failed (a frame on the VXLAN device without tunnel metadata).
        TunnelOpFailed = 22 => "tunnel_op_failed",
        /// An IPv6 router advertisement (ICMPv6 134) from a port with port security.
        RaFromVm = 23 => "ra_from_vm",
        /// A non-first fragment whose first fragment this port did not send (or not recently).
        FragUnknown = 24 => "frag_unknown",
        /// The destination is on the wire, but the network has no uplink (or tunnel device) on this node.
        NoUplink = 25 => "no_uplink",
        /// A remote MAC of a tunnel network is known without the VTEP it lives behind.
        NoVtep = 26 => "no_vtep",
        /// No security-group rule of the port (nor a fixed allowance) admits what it receives.
        SgIngressDenied = 27 => "sg_ingress_denied",
        /// No security-group rule of the port (nor a fixed allowance) admits what it sends.
        SgEgressDenied = 28 => "sg_egress_denied",
        /// Connection tracking: TCP flags no connection has, a reply or an ICMP
        /// error that belongs to no tracked connection.
        CtInvalid = 29 => "ct_invalid",
        /// The connection table is full: a new connection is refused.
        CtFull = 30 => "ct_full",
        /// A tunnel frame from a VTEP that hosts no port of its network (no
        /// tunnel peer of this node for it, as the OVS agent has none).
        ForeignVtep = 31 => "foreign_vtep",
        /// Over the port's QoS limit (bandwidth or packet rate), in the
        /// direction the frame goes.
        QosPoliced = 32 => "qos_policed",
    }
}

counted_enum! {
    /// What happened to a frame that was not dropped.
    pub enum Action {
        /// Frames seen by the program (before any decision).
        Received = 0 => "rx",
        /// Sent to one local port.
        ToLocalPort = 1 => "to_local_port",
        /// Sent to the uplink (tagged with the segmentation id when VLAN), or into a tunnel.
        ToUplink = 2 => "to_uplink",
        /// Flooded (broadcast, multicast, unknown unicast).
        Flooded = 3 => "flooded",
        /// Copies made while flooding (one per extra target).
        FloodCopies = 4 => "flood_copies",
        /// A remote MAC learned or refreshed from the uplink or a tunnel.
        Learned = 5 => "learned",
        /// An ARP request answered on the node (tunnel networks), never flooded.
        ArpReplied = 6 => "arp_replied",
        /// Flood copies the clone helper refused (the flooded frame itself went on).
        FloodCopyFailed = 7 => "flood_copy_failed",
        /// Floods too large for the tunnel MTU: the local ports got them, the remote VTEPs did not.
        FloodTunnelMtu = 8 => "flood_tunnel_mtu",
        /// Delivered to a port whose security groups (if any) admitted it (the port's egress program).
        Delivered = 9 => "delivered",
        /// Handed on unchanged: by an uplink's XDP stage to its TC stage
        /// (`XDP_PASS`), or by its TC stage to the host stack (`untagged_to_host`).
        Passed = 10 => "passed",
        /// Sent by an uplink's XDP stage straight to a local tap (the fast
        /// path), its tag removed: known unicast that needs nothing else.
        Redirected = 11 => "xdp_redirected",
        /// A frame the port sent whose DSCP the port's QoS policy rewrote.
        DscpMarked = 12 => "dscp_marked",
    }
}

/// Number of drop counters per port (index 0 is unused).
pub const DROP_REASON_SLOTS: usize = 48;
/// Number of action counters per port.
pub const ACTION_SLOTS: usize = 16;

const _: () = {
    let mut i = 0;
    while i < DropReason::ALL.len() {
        assert!((DropReason::ALL[i] as usize) < DROP_REASON_SLOTS);
        i += 1;
    }
    let mut i = 0;
    while i < Action::ALL.len() {
        assert!((Action::ALL[i] as usize) < ACTION_SLOTS);
        i += 1;
    }
};
