//! What BPF_PROG_TEST_RUN cannot hand a program: a decapsulated frame's
//! tunnel key, and an offloaded VLAN tag. A hand-assembled shim sets one
//! from `cb[3..5]` and tail-calls the real program, which then runs as if
//! the VXLAN device had decapsulated the frame, or as if the receive path
//! had taken the tag out of the frame (as it does on real devices).
//!
//! - tunnel: VNI from `cb[3]`, remote VTEP from `cb[4]`, set as the local
//!   address of a TX key, which `bpf_skb_get_tunnel_key` reads back as the remote;
//! - VLAN: `cb[3]` = TPID << 16 | TCI, pushed with `bpf_skb_vlan_push`, which
//!   puts it in the offloaded slot of a frame that has none.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{Result, bail};
use datapath_user::testrun::{BPF_PROG_TYPE_SCHED_CLS, Insn, load_raw};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
const BPF_FUNC_TAIL_CALL: i32 = 12;
const BPF_FUNC_SKB_SET_TUNNEL_KEY: i32 = 21;
const BPF_FUNC_SKB_VLAN_PUSH: i32 = 18;
/// `sizeof(struct bpf_tunnel_key)`: id, remote (16), tos, ttl, ext, label, local (16).
const TUNNEL_KEY_SIZE: i32 = 44;
/// What the shim returns if the tail call fails (the run then records no decision).
pub const SHIM_FAILED: u32 = 0x5eed;

/// A shim and the program array that holds its target; both close on drop.
pub struct Shim {
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

/// A program array holding `target` alone.
fn prog_array(target: BorrowedFd) -> Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = BPF_MAP_TYPE_PROG_ARRAY as u64 | (4 << 32); // map_type, key_size
    attr[1] = 4 | (1 << 32); // value_size, max_entries
    let fd = bpf(BPF_MAP_CREATE, &mut attr, "creating a shim's program array")?;
    // SAFETY: the kernel just returned this fd, owned by nothing else.
    let array = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let (key, value) = (0u32, target.as_raw_fd() as u32);
    let mut attr = [0u64; 16];
    attr[0] = array.as_raw_fd() as u64;
    attr[1] = &key as *const u32 as u64;
    attr[2] = &value as *const u32 as u64;
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr, "putting the target into a shim's program array")?;
    Ok(array)
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R10: u8 = 10;

/// `body` (with the context in r6), then the tail call into `array`'s program.
fn load(body: &[Insn], array: OwnedFd, name: &str) -> Result<Shim> {
    let mut insns: Vec<Insn> = vec![(0xbf, R6 | R1 << 4, 0, 0)]; // r6 = ctx
    insns.extend_from_slice(body);
    insns.extend([
        (0xbf, R1 | R6 << 4, 0, 0),                // r1 = ctx
        (0x18, R2 | 1 << 4, 0, array.as_raw_fd()), // r2 = the program array (BPF_PSEUDO_MAP_FD)
        (0, 0, 0, 0),
        (0xb7, R3, 0, 0),
        (0x85, 0, 0, BPF_FUNC_TAIL_CALL),
        (0xb7, R0, 0, SHIM_FAILED as i32),
        (0x95, 0, 0, 0),
    ]);
    let prog = load_raw(BPF_PROG_TYPE_SCHED_CLS, &insns, name)?;
    Ok(Shim { prog, _array: array })
}

impl Shim {
    /// Sets the tunnel key from `cb[3]` (VNI) and `cb[4]` (remote VTEP), then runs `tunnel_in`.
    pub fn tunnel(tunnel_in: BorrowedFd) -> Result<Self> {
        let mut body: Vec<Insn> = (-48..0).step_by(8).map(|off| (0x7a, R10, off, 0)).collect(); // key = 0
        body.extend([
            (0x61, R2 | R6 << 4, 60, 0),   // r2 = skb->cb[3]
            (0x63, R10 | R2 << 4, -48, 0), // key.tunnel_id = r2
            (0x61, R2 | R6 << 4, 64, 0),   // r2 = skb->cb[4]
            (0x63, R10 | R2 << 4, -20, 0), // key.local_ipv4 = r2
            (0xbf, R1 | R6 << 4, 0, 0),    // r1 = ctx
            (0xbf, R2 | R10 << 4, 0, 0),   // r2 = &key
            (0x07, R2, 0, -48),
            (0xb7, R3, 0, TUNNEL_KEY_SIZE),
            (0xb7, R4, 0, 0),
            (0x85, 0, 0, BPF_FUNC_SKB_SET_TUNNEL_KEY),
        ]);
        load(&body, prog_array(tunnel_in)?, "tunnel_shim")
    }

    /// Pushes the tag in `cb[3]` (TPID << 16 | TCI) into the offloaded slot, then runs `target`.
    pub fn vlan(target: BorrowedFd) -> Result<Self> {
        let body: [Insn; 7] = [
            (0x61, R2 | R6 << 4, 60, 0), // r2 = skb->cb[3]
            (0xbf, R3 | R2 << 4, 0, 0),  // r3 = r2
            (0x57, R3, 0, 0xffff),       // r3 &= 0xffff: the TCI
            (0x77, R2, 0, 16),           // r2 >>= 16: the TPID
            (0xdc, R2, 0, 16),           // r2 = htons(r2)
            (0xbf, R1 | R6 << 4, 0, 0),  // r1 = ctx
            (0x85, 0, 0, BPF_FUNC_SKB_VLAN_PUSH),
        ];
        load(&body, prog_array(target)?, "vlan_shim")
    }

    /// The shim's fd, to run instead of `tunnel_in` with the key in `cb[3..5]`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.prog.as_fd()
    }
}
