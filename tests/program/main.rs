//! Program tests: the real TC and XDP programs run on golden frames through
//! `BPF_PROG_TEST_RUN`, with maps seeded by the agent's own derive + sync.
//! Each row names the frame, where it enters, and what must happen: the
//! verdict, the destinations (with the VLAN pushed towards each), the frame
//! the program leaves behind, and the counter that moves.

mod fast_path;
mod full_maps;
mod golden;
mod injected;
mod learning;
mod monitor;
mod qos;
mod scenario;
mod secgroups;
mod trunk;
mod tunnel;
mod underlay_xdp;
mod uplink_xdp;
