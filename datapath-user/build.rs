//! Embeds the eBPF object built by `cargo xtask build` into the `datapath` binary.
//!
//! The object comes from `DATAPATH_EBPF_OBJ` (xtask sets it). Without it, a plain
//! `cargo build`/`cargo test` on the stable toolchain still compiles the user
//! side: an empty object is embedded and loading fails at run time with a
//! message that says to build through `cargo xtask`.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DATAPATH_EBPF_OBJ");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("datapath.bpf.o");
    match env::var_os("DATAPATH_EBPF_OBJ") {
        Some(obj) => {
            let obj = PathBuf::from(obj);
            println!("cargo:rerun-if-changed={}", obj.display());
            fs::copy(&obj, &out).unwrap_or_else(|e| panic!("copying eBPF object {}: {e}", obj.display()));
        }
        None => {
            println!(
                "cargo:warning=DATAPATH_EBPF_OBJ is not set: embedding no eBPF object (build with `cargo xtask build`)"
            );
            fs::write(&out, b"").expect("writing empty eBPF object placeholder");
        }
    }
}
