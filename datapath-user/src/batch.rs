//! Whole-map reads in batches (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6): one
//! syscall per few thousand entries, where aya's iterator makes two per
//! entry. The connection table's sweep reads every entry every 10 s, and
//! tables of 100,000 connections would cost it 200,000 syscalls each time.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use anyhow::{Result, bail};
use aya::maps::MapData;
use bytemuck::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call; grows when one hash bucket holds more (ENOSPC).
const FIRST_CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, value) of the hash map `map`, in the kernel's bucket order.
/// Entries added or removed during the read may be missed or seen; each
/// entry read is whole.
pub fn read_all<K: Pod, V: Pod>(map: &MapData) -> Result<Vec<(K, V)>> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    let mut chunk = FIRST_CHUNK;
    // The hash map's cursor is a bucket index (a u32); none on the first call.
    let (mut cursor, mut next, mut started) = (0u32, 0u32, false);
    loop {
        let mut keys = vec![K::zeroed(); chunk];
        let mut values = vec![V::zeroed(); chunk];
        let mut attr = BatchAttr {
            in_batch: if started { &cursor as *const u32 as u64 } else { 0 },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is the kernel's `batch` member, zeroed beyond it;
        // `keys` and `values` hold `count` elements of the map's key and
        // value sizes, and the cursors are u32s; all outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        // ENOENT: the walk is over, with the last call's entries in.
        let done = match (rc < 0).then(io::Error::last_os_error) {
            None => false,
            // A bucket holds more entries than `chunk`: ask for more at once.
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                chunk *= 4;
                continue;
            }
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) => bail!("BPF_MAP_LOOKUP_BATCH on map fd {fd}: {e}"),
        };
        let n = (attr.count as usize).min(chunk);
        out.extend(keys.into_iter().zip(values).take(n));
        if done {
            return Ok(out);
        }
        cursor = next;
        started = true;
    }
}
