//! Tests with real guests: QEMU VMs on taps, booted from Debian's kernel
//! (built by `cargo xtask test --vm`, which sets DATAPATH_GUEST_KERNEL and
//! DATAPATH_GUEST_INITRD).

mod guests;
