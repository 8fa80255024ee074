//! Tests with real guests, built by `cargo xtask test --vm` (which sets
//! DATAPATH_GUEST_KERNEL and DATAPATH_GUEST_INITRD): QEMU VMs on taps, booted
//! from Debian's kernel, and a Debian 12 system that installs the package.

mod guests;
mod package;
mod trunk;
