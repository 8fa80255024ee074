//! `BPF_PROG_TEST_RUN` for TC (sched_cls) and XDP programs: runs a program once on a
//! given frame and context and returns the verdict, the frame as the program
//! left it and the writable context fields.
//!
//! Programs aya loaded (`datapath trace`, the program tests) run through
//! aya's `TestRun` (`run_prog`). The raw bpf(2) path (`run_skb`) stays for
//! programs aya did not load: the differential fuzzer's shims and the bench's
//! XDP generator are hand-assembled and loaded with `load_raw`, since aya has
//! no way to load raw instructions, and its `TestRun` runs only its own
//! `Program` objects.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use anyhow::{Context, Result, bail};
use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp};

/// `BPF_PROG_TEST_RUN` in `enum bpf_cmd` (also known as `BPF_PROG_RUN`).
pub const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Extra room in the output buffer, because programs may push headers (VLAN tags).
const OUT_HEADROOM: usize = 256;

/// Input of one test run of a TC (sched_cls) program.
#[derive(Debug, Clone, Copy)]
pub struct SkbRun<'a> {
    /// The whole frame, starting with the Ethernet header.
    pub frame: &'a [u8],
    /// The device the frame "arrives" on; must exist in the calling thread's netns (0 = none).
    pub ifindex: u32,
    /// Initial `skb->cb[]`, readable and writable by the program.
    pub cb: [u32; 5],
    /// Initial `skb->mark`.
    pub mark: u32,
}

/// What one test run left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    /// The program's return value (the TC verdict).
    pub retval: u32,
    /// The frame after the program ran.
    pub frame: Vec<u8>,
    /// `skb->cb[]` after the run.
    pub cb: [u32; 5],
    /// `skb->mark` after the run.
    pub mark: u32,
    /// Run time reported by the kernel, in nanoseconds.
    pub duration_ns: u32,
}

/// Runs `prog` (loaded by aya) once on `input`, through aya's `TestRun`.
pub fn run_prog(prog: &SchedClassifier, input: &SkbRun) -> Result<RunOutput> {
    let ctx_in = input.ctx(0);
    let mut ctx_out = uapi::SkBuff::default();
    let mut out = vec![0u8; input.frame.len() + OUT_HEADROOM];
    let opts = TestRunOptions {
        data_in: Some(input.frame),
        data_out: Some(&mut out),
        ctx_in: Some(bytemuck::bytes_of(&ctx_in)),
        ctx_out: Some(bytemuck::bytes_of_mut(&mut ctx_out)),
        // Side effects (counters, clone_redirect copies) must happen exactly once.
        repeat: 1,
        ..TestRunOptions::new()
    };
    let r = match prog.test_run(opts) {
        Ok(r) => r,
        Err(ProgramError::SyscallError(e)) => {
            let errno = e.io_error.raw_os_error().unwrap_or(0);
            bail!(
                "BPF_PROG_TEST_RUN ({}-byte frame, ifindex {}) failed: {}{} ({})",
                input.frame.len(),
                input.ifindex,
                errno_name(errno),
                hint(errno, input),
                e.io_error
            );
        }
        Err(e) => return Err(e).context("BPF_PROG_TEST_RUN"),
    };
    out.truncate(r.data_size_out as usize);
    Ok(RunOutput {
        retval: r.return_value,
        frame: out,
        cb: ctx_out.cb,
        mark: ctx_out.mark,
        duration_ns: u32::try_from(r.duration.as_nanos()).unwrap_or(u32::MAX),
    })
}

/// Runs the XDP program `prog` (loaded by aya) once on `frame`, as if it
/// arrived on `ifindex` (a device of the calling thread's netns) with `meta`
/// in front of it as XDP metadata (at most 32 bytes, a multiple of 4),
/// through aya's `TestRun`. The output frame is without the metadata; `cb`
/// and `mark` stay zero.
pub fn run_xdp(prog: &Xdp, frame: &[u8], ifindex: u32, meta: &[u8]) -> Result<RunOutput> {
    if meta.len() > 32 || !meta.len().is_multiple_of(4) {
        bail!("XDP metadata is {} bytes; the kernel takes a multiple of 4 up to 32", meta.len());
    }
    let data: Vec<u8> = meta.iter().chain(frame).copied().collect();
    let ctx_in = uapi::XdpMd {
        data: meta.len() as u32,
        data_end: len_u32(data.len())?,
        ingress_ifindex: ifindex,
        ..Default::default()
    };
    let mut ctx_out = uapi::XdpMd::default();
    let mut out = vec![0u8; data.len() + OUT_HEADROOM];
    let opts = TestRunOptions {
        data_in: Some(&data),
        data_out: Some(&mut out),
        ctx_in: Some(bytemuck::bytes_of(&ctx_in)),
        ctx_out: Some(bytemuck::bytes_of_mut(&mut ctx_out)),
        // Counters must move exactly once.
        repeat: 1,
        ..TestRunOptions::new()
    };
    let r = prog.test_run(opts).map_err(|e| match e {
        ProgramError::SyscallError(e) => anyhow::anyhow!(
            "BPF_PROG_TEST_RUN of an XDP program ({}-byte frame, ifindex {ifindex}) failed: {} ({})",
            frame.len(),
            errno_name(e.io_error.raw_os_error().unwrap_or(0)),
            e.io_error
        ),
        e => anyhow::Error::new(e).context("BPF_PROG_TEST_RUN"),
    })?;
    out.truncate(r.data_size_out as usize);
    // The output starts with the metadata as the program left it.
    out.drain(..(ctx_out.data as usize).min(out.len()));
    Ok(RunOutput {
        retval: r.return_value,
        frame: out,
        cb: [0; 5],
        mark: 0,
        duration_ns: u32::try_from(r.duration.as_nanos()).unwrap_or(u32::MAX),
    })
}

impl SkbRun<'_> {
    /// The `__sk_buff` the run starts with.
    fn ctx(&self, gso_size: u32) -> uapi::SkBuff {
        uapi::SkBuff {
            mark: self.mark,
            ingress_ifindex: self.ifindex,
            ifindex: self.ifindex,
            cb: self.cb,
            gso_size,
            ..Default::default()
        }
    }
}

/// What an errno of BPF_PROG_TEST_RUN usually means for a TC program.
fn hint(errno: i32, input: &SkbRun) -> String {
    match errno {
        libc::EINVAL => ": the kernel rejected the run (a __sk_buff field it does not accept, \
             a frame shorter than 14 bytes or longer than a page, or not a sched_cls program)"
            .to_string(),
        libc::ENODEV => format!(": ifindex {} does not exist in this thread's netns", input.ifindex),
        libc::ENOSPC => format!(": the output needs more than {} bytes", input.frame.len() + OUT_HEADROOM),
        libc::EPERM | libc::EACCES => ": needs CAP_BPF/CAP_SYS_ADMIN (root)".to_string(),
        _ => String::new(),
    }
}

/// Runs the sched_cls program `prog_fd` once on `input`, through bpf(2) (for
/// programs aya did not load).
///
/// The run happens in the calling thread's network namespace: `input.ifindex`
/// is looked up there, and redirect/clone helpers act on devices there.
pub fn run_skb(prog_fd: BorrowedFd<'_>, input: &SkbRun) -> Result<RunOutput> {
    run_skb_gso(prog_fd, input, 0)
}

/// Like [`run_skb`], with `skb_shinfo()->gso_size` set: the frame poses as a
/// GSO super-frame of `gso_size`-byte segments (0: not GSO).
pub fn run_skb_gso(prog_fd: BorrowedFd<'_>, input: &SkbRun, gso_size: u32) -> Result<RunOutput> {
    let ctx_in = input.ctx(gso_size);
    let mut ctx_out = uapi::SkBuff::default();
    let mut out = vec![0u8; input.frame.len() + OUT_HEADROOM];

    let mut attr = uapi::TestAttr {
        prog_fd: prog_fd.as_raw_fd() as u32,
        data_size_in: len_u32(input.frame.len())?,
        data_size_out: len_u32(out.len())?,
        data_in: input.frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        // 0 would also mean once, but be explicit: side effects (counters,
        // clone_redirect copies) must happen exactly once per call.
        repeat: 1,
        ctx_size_in: size_of::<uapi::SkBuff>() as u32,
        ctx_size_out: size_of::<uapi::SkBuff>() as u32,
        ctx_in: &ctx_in as *const uapi::SkBuff as u64,
        ctx_out: &mut ctx_out as *mut uapi::SkBuff as u64,
        ..Default::default()
    };

    // SAFETY: `attr` is a fully initialised (padding included) copy of the
    // kernel's `test` member; every pointer in it refers to a live buffer of
    // the size given next to it, and those buffers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut uapi::TestAttr,
            size_of::<uapi::TestAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        let errno = err.raw_os_error().unwrap_or(0);
        let name = errno_name(errno);
        let hint = hint(errno, input);
        bail!(
            "BPF_PROG_TEST_RUN on prog fd {} ({}-byte frame, ifindex {}) failed: {name}{hint} ({err})",
            prog_fd.as_raw_fd(),
            input.frame.len(),
            input.ifindex
        );
    }

    out.truncate(attr.data_size_out as usize);
    Ok(RunOutput {
        retval: attr.retval,
        frame: out,
        cb: ctx_out.cb,
        mark: ctx_out.mark,
        duration_ns: attr.duration,
    })
}

fn len_u32(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| anyhow::anyhow!("frame of {n} bytes is too large for BPF_PROG_TEST_RUN"))
}

/// The symbolic name of the errnos bpf(2) returns, so errors read like the man page.
fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENXIO => "ENXIO",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        // The kernel-internal ENOTSUPP leaks out of bpf(2) for unsupported program types.
        524 => "ENOTSUPP",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

/// One BPF instruction as (opcode, dst | src << 4, offset, immediate).
pub type Insn = (u8, u8, i16, i32);
/// `BPF_PROG_TYPE_SCHED_CLS`.
pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `BPF_PROG_TYPE_XDP`.
pub const BPF_PROG_TYPE_XDP: u32 = 6;

/// Loads a hand-assembled program of `prog_type` (GPL) named `name` (at
/// most 15 bytes), for probes and tools that need no object file.
pub fn load_raw(prog_type: u32, insns: &[Insn], name: &str) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut raw = Vec::with_capacity(insns.len() * 8);
    for (code, regs, off, imm) in insns {
        raw.push(*code);
        raw.push(*regs);
        raw.extend_from_slice(&off.to_le_bytes());
        raw.extend_from_slice(&imm.to_le_bytes());
    }
    let mut attr = uapi::ProgLoad {
        prog_type,
        insn_cnt: len_u32(insns.len())?,
        insns: raw.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        ..Default::default()
    };
    let n = name.len().min(attr.prog_name.len() - 1);
    attr.prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: attr is a zero-padded BPF_PROG_LOAD member whose pointers refer to
    // buffers that outlive the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr, size_of::<uapi::ProgLoad>() as libc::c_uint)
    };
    if fd < 0 {
        bail!("BPF_PROG_LOAD of {name} (type {prog_type}): {}", io::Error::last_os_error());
    }
    // SAFETY: the kernel just handed us this fd, owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_PROG_LOAD` in `enum bpf_cmd`.
const BPF_PROG_LOAD: libc::c_long = 5;

/// Mirrors of kernel uapi structs (include/uapi/linux/bpf.h).
pub mod uapi {
    /// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to
    /// `expected_attach_type`, with the rest of the union zeroed.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct ProgLoad {
        pub prog_type: u32,
        pub insn_cnt: u32,
        pub insns: u64,
        pub license: u64,
        pub log_level: u32,
        pub log_size: u32,
        pub log_buf: u64,
        pub kern_version: u32,
        pub prog_flags: u32,
        pub prog_name: [u8; 16],
        pub prog_ifindex: u32,
        pub expected_attach_type: u32,
        pub _rest: [u64; 12],
    }

    /// The `test` member of `union bpf_attr`.
    ///
    /// The kernel requires every byte after the last field it knows for this
    /// command (`batch_size`) to be zero, so the tail padding is an explicit
    /// field and the whole struct is built from `Default`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub struct TestAttr {
        pub prog_fd: u32,
        pub retval: u32,
        pub data_size_in: u32,
        pub data_size_out: u32,
        pub data_in: u64,
        pub data_out: u64,
        pub repeat: u32,
        pub duration: u32,
        pub ctx_size_in: u32,
        pub ctx_size_out: u32,
        pub ctx_in: u64,
        pub ctx_out: u64,
        pub flags: u32,
        pub cpu: u32,
        pub batch_size: u32,
        pub _pad: u32,
    }

    /// `struct __sk_buff`, as of Linux 5.18+ (192 bytes). The kernel refuses a
    /// ctx with non-zero fields other than mark, priority, ingress_ifindex,
    /// ifindex, cb, tstamp, wire_len, gso_segs, gso_size and hwtstamp, so
    /// everything else stays zero.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub(super) struct SkBuff {
        pub len: u32,
        pub pkt_type: u32,
        pub mark: u32,
        pub queue_mapping: u32,
        pub protocol: u32,
        pub vlan_present: u32,
        pub vlan_tci: u32,
        pub vlan_proto: u32,
        pub priority: u32,
        pub ingress_ifindex: u32,
        pub ifindex: u32,
        pub tc_index: u32,
        pub cb: [u32; 5],
        pub hash: u32,
        pub tc_classid: u32,
        pub data: u32,
        pub data_end: u32,
        pub napi_id: u32,
        pub family: u32,
        pub remote_ip4: u32,
        pub local_ip4: u32,
        pub remote_ip6: [u32; 4],
        pub local_ip6: [u32; 4],
        pub remote_port: u32,
        pub local_port: u32,
        pub data_meta: u32,
        /// `__bpf_md_ptr(struct bpf_flow_keys *, flow_keys)`: always 8 bytes, 8-aligned.
        pub flow_keys: u64,
        pub tstamp: u64,
        pub wire_len: u32,
        pub gso_segs: u32,
        /// `__bpf_md_ptr(struct bpf_sock *, sk)`.
        pub sk: u64,
        pub gso_size: u32,
        pub tstamp_type: u8,
        /// `__u32 :24`.
        pub _pad: [u8; 3],
        pub hwtstamp: u64,
    }

    /// `struct xdp_md`, the XDP program's context.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub struct XdpMd {
        pub data: u32,
        pub data_end: u32,
        pub data_meta: u32,
        pub ingress_ifindex: u32,
        pub rx_queue_index: u32,
        pub egress_ifindex: u32,
    }

    const _: () = assert!(size_of::<TestAttr>() == 80);
    const _: () = assert!(size_of::<XdpMd>() == 24);
    const _: () = assert!(size_of::<SkBuff>() == 192);
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::uapi::{SkBuff, TestAttr};
    use super::*;

    #[test]
    fn test_attr_layout_matches_uapi() {
        assert_eq!(size_of::<TestAttr>(), 80);
        assert_eq!(offset_of!(TestAttr, data_in), 16);
        assert_eq!(offset_of!(TestAttr, data_out), 24);
        assert_eq!(offset_of!(TestAttr, repeat), 32);
        assert_eq!(offset_of!(TestAttr, ctx_size_in), 40);
        assert_eq!(offset_of!(TestAttr, ctx_in), 48);
        assert_eq!(offset_of!(TestAttr, ctx_out), 56);
        assert_eq!(offset_of!(TestAttr, flags), 64);
        assert_eq!(offset_of!(TestAttr, batch_size), 72);
    }

    #[test]
    fn sk_buff_layout_matches_uapi() {
        assert_eq!(size_of::<SkBuff>(), 192);
        assert_eq!(offset_of!(SkBuff, mark), 8);
        assert_eq!(offset_of!(SkBuff, priority), 32);
        assert_eq!(offset_of!(SkBuff, ingress_ifindex), 36);
        assert_eq!(offset_of!(SkBuff, ifindex), 40);
        assert_eq!(offset_of!(SkBuff, cb), 48);
        assert_eq!(offset_of!(SkBuff, hash), 68);
        assert_eq!(offset_of!(SkBuff, data_meta), 140);
        assert_eq!(offset_of!(SkBuff, flow_keys), 144);
        assert_eq!(offset_of!(SkBuff, tstamp), 152);
        assert_eq!(offset_of!(SkBuff, wire_len), 160);
        assert_eq!(offset_of!(SkBuff, sk), 168);
        assert_eq!(offset_of!(SkBuff, gso_size), 176);
        assert_eq!(offset_of!(SkBuff, tstamp_type), 180);
        assert_eq!(offset_of!(SkBuff, hwtstamp), 184);
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EINVAL), "EINVAL");
        assert_eq!(errno_name(524), "ENOTSUPP");
        assert_eq!(errno_name(9999), "errno 9999");
    }
}

/// Runs against the real kernel; needs root, so it skips itself otherwise.
#[cfg(test)]
mod kernel_tests {
    use std::os::fd::{AsFd, OwnedFd};

    use super::*;

    /// Loads `r2 = 0x1234; skb->mark = r2; skb->cb[1] = skb->cb[0] + 1; return 3`.
    fn load_probe_prog() -> OwnedFd {
        let insns: [Insn; 7] = [
            (0xb7, 2, 0, 0x1234),      // mov64 r2, 0x1234
            (0x63, 1 | 2 << 4, 8, 0),  // stxw [r1 + mark], r2
            (0x61, 2 | 1 << 4, 48, 0), // ldxw r2, [r1 + cb[0]]
            (0x07, 2, 0, 1),           // add64 r2, 1
            (0x63, 1 | 2 << 4, 52, 0), // stxw [r1 + cb[1]], r2
            (0xb7, 0, 0, 3),           // mov64 r0, 3
            (0x95, 0, 0, 0),           // exit
        ];
        load_raw(BPF_PROG_TYPE_SCHED_CLS, &insns, "probe").unwrap()
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn runs_program_and_returns_ctx() {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let prog = load_probe_prog();
        let mut frame = vec![0xffu8; 6];
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
        frame.extend_from_slice(&[0u8; 28]);
        let out = run_skb(prog.as_fd(), &SkbRun { frame: &frame, ifindex: 1, cb: [41, 0, 0, 0, 7], mark: 5 })
            .unwrap();
        assert_eq!(out.retval, 3);
        assert_eq!(out.mark, 0x1234);
        assert_eq!(out.cb, [41, 42, 0, 0, 7]);
        assert_eq!(out.frame, frame);
    }

    #[test]
    fn unknown_ifindex_names_the_errno() {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let prog = load_probe_prog();
        let frame = [0u8; 60];
        let err = run_skb(prog.as_fd(), &SkbRun { frame: &frame, ifindex: 0x7fff_fff0, cb: [0; 5], mark: 0 })
            .unwrap_err();
        assert!(format!("{err:#}").contains("ENODEV"), "{err:#}");
        let err = run_skb(prog.as_fd(), &SkbRun { frame: &frame[..10], ifindex: 0, cb: [0; 5], mark: 0 })
            .unwrap_err();
        assert!(format!("{err:#}").contains("EINVAL"), "{err:#}");
    }
}
