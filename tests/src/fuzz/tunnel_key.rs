//! A way into `tunnel_in` past its tunnel key: BPF_PROG_TEST_RUN cannot
//! hand a program a decapsulated frame's key, so a hand-assembled shim sets
//! one (VNI from `cb[3]`, remote VTEP from `cb[4]`, as the local address of
//! a TX key, which `bpf_skb_get_tunnel_key` reads back as the remote) and
//! tail-calls the real `tunnel_in`, which then runs on the frame as if the
//! VXLAN device had decapsulated it.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Result, bail};
use datapath_user::testrun::{BPF_PROG_TYPE_SCHED_CLS, Insn, load_raw};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
const BPF_FUNC_TAIL_CALL: i32 = 12;
const BPF_FUNC_SKB_SET_TUNNEL_KEY: i32 = 21;
/// `sizeof(struct bpf_tunnel_key)`: id, remote (16), tos, ttl, ext, label, local (16).
const TUNNEL_KEY_SIZE: i32 = 44;
/// What the shim returns if the tail call fails (the run then records no decision).
pub const SHIM_FAILED: u32 = 0x5eed;

/// The shim and the program array that holds `tunnel_in`; both close on drop.
pub struct TunnelShim {
    prog: OwnedFd,
    _array: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16], what: &str) -> Result<i64> {
    // SAFETY: `attr` is a zeroed 128-byte bpf_attr whose pointers refer to live buffers.
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr) as libc::c_uint) };
    if rc < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(rc)
}

impl TunnelShim {
    /// Loads the shim, tail-calling into `tunnel_in`.
    pub fn new(tunnel_in: BorrowedFd) -> Result<Self> {
        let mut attr = [0u64; 16];
        attr[0] = BPF_MAP_TYPE_PROG_ARRAY as u64 | (4 << 32); // map_type, key_size
        attr[1] = 4 | (1 << 32); // value_size, max_entries
        let fd = bpf(BPF_MAP_CREATE, &mut attr, "creating the shim's program array")?;
        // SAFETY: the kernel just returned this fd, owned by nothing else.
        let array = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let (key, value) = (0u32, tunnel_in.as_raw_fd() as u32);
        let mut attr = [0u64; 16];
        attr[0] = array.as_raw_fd() as u64;
        attr[1] = &key as *const u32 as u64;
        attr[2] = &value as *const u32 as u64;
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr, "putting tunnel_in into the shim's program array")?;
        let (r0, r1, r2, r3, r4, r6, r10) = (0u8, 1u8, 2u8, 3u8, 4u8, 6u8, 10u8);
        let mut insns: Vec<Insn> = vec![(0xbf, r6 | r1 << 4, 0, 0)]; // r6 = ctx
        for off in (-48..0).step_by(8) {
            insns.push((0x7a, r10, off, 0)); // *(u64 *)(r10 + off) = 0: the key
        }
        insns.extend([
            (0x61, r2 | r6 << 4, 60, 0),   // r2 = skb->cb[3]
            (0x63, r10 | r2 << 4, -48, 0), // key.tunnel_id = r2
            (0x61, r2 | r6 << 4, 64, 0),   // r2 = skb->cb[4]
            (0x63, r10 | r2 << 4, -20, 0), // key.local_ipv4 = r2
            (0xbf, r1 | r6 << 4, 0, 0),    // r1 = ctx
            (0xbf, r2 | r10 << 4, 0, 0),   // r2 = &key
            (0x07, r2, 0, -48),
            (0xb7, r3, 0, TUNNEL_KEY_SIZE),
            (0xb7, r4, 0, 0),
            (0x85, 0, 0, BPF_FUNC_SKB_SET_TUNNEL_KEY),
            (0xbf, r1 | r6 << 4, 0, 0),                // r1 = ctx
            (0x18, r2 | 1 << 4, 0, array.as_raw_fd()), // r2 = the program array (BPF_PSEUDO_MAP_FD)
            (0, 0, 0, 0),
            (0xb7, r3, 0, 0),
            (0x85, 0, 0, BPF_FUNC_TAIL_CALL),
            (0xb7, r0, 0, SHIM_FAILED as i32),
            (0x95, 0, 0, 0),
        ]);
        let prog = load_raw(BPF_PROG_TYPE_SCHED_CLS, &insns, "tunnel_shim")?;
        Ok(Self { prog, _array: array })
    }

    /// The shim's fd, to run instead of `tunnel_in` with the key in `cb[3..5]`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.prog.as_fd()
    }
}
