//! The kernel/user ABI of the datapath: map and program names, map keys and
//! values, drop reasons and action counters.
//!
//! Every type here is `#[repr(C)]`, explicitly padded and free of `bool`,
//! `Option` and enum fields, so that both sides agree on every byte. A change
//! of any layout must bump [`ABI_VERSION`]: the agent pins maps under a
//! directory named after it and refuses to adopt maps of another version.
#![no_std]

pub mod names;
pub mod reason;
pub mod types;

pub use reason::{ACTION_SLOTS, Action, DROP_REASON_SLOTS, DropReason};
pub use types::*;

/// Version of the map layouts below; part of every pin path.
#[cfg(not(feature = "abi-next"))]
pub const ABI_VERSION: u32 = 4;
/// Version of the map layouts below; part of every pin path. The `abi-next`
/// test build is one ahead, with a layout of its own.
#[cfg(feature = "abi-next")]
pub const ABI_VERSION: u32 = 5;
