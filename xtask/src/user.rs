//! The user-side workspace: cargo with the eBPF object to embed, and the `datapath` binary.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result};

use crate::util::{cmd, root, run, secs, step};

/// `cargo ARGS` at the workspace root, with `DATAPATH_EBPF_OBJ` so that
/// datapath-user's build script embeds `obj` (an empty placeholder otherwise).
pub fn cargo<S: AsRef<std::ffi::OsStr>>(obj: &Path, args: impl IntoIterator<Item = S>) -> Command {
    let mut c = cmd("cargo", args);
    c.current_dir(root()).env("DATAPATH_EBPF_OBJ", obj);
    c
}

/// Builds the `datapath` binary embedding `obj` and returns its path.
pub fn build(obj: &Path, release: bool) -> Result<PathBuf> {
    let start = Instant::now();
    let profile = if release { "release" } else { "debug" };
    step("datapath binary", &format!("building ({profile})"));
    let mut args = vec!["build", "-p", "datapath-user"];
    if release {
        args.push("--release");
    }
    run(&mut cargo(obj, args)).context("building the datapath binary")?;
    let bin = root().join("target").join(profile).join("datapath");
    step("datapath binary", &format!("built in {} ({})", secs(start), bin.display()));
    Ok(bin)
}

/// Builds the `abi-next` test build of the binary (another map layout
/// version, embedding `obj` from `ebpf::build_abi_next`), for the upgrade
/// and downgrade tests across layouts; returns its path.
pub fn build_abi_next(obj: &Path) -> Result<PathBuf> {
    let start = Instant::now();
    step("datapath binary (abi-next)", "building (release)");
    let dir = root().join("target/abi-next");
    let mut c =
        cargo(obj, ["build", "-p", "datapath-user", "--release", "--features", "abi-next", "--target-dir"]);
    c.arg(&dir);
    run(&mut c).context("building the abi-next datapath binary")?;
    let bin = dir.join("release/datapath");
    step("datapath binary (abi-next)", &format!("built in {} ({})", secs(start), bin.display()));
    Ok(bin)
}

/// Builds the test binaries of `cargo ARGS` (a `cargo test ...` line) without
/// running them; returns their paths, as cargo's JSON messages name them.
pub fn test_binaries(obj: &Path, args: &[&str]) -> Result<Vec<PathBuf>> {
    let mut c = cargo(obj, args);
    c.args(["--no-run", "--message-format=json"]);
    let out = crate::util::output(&mut c).context("building the test binaries")?;
    let mut bins = Vec::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let Some(exe) = msg["executable"].as_str()
            && msg["profile"]["test"].as_bool() == Some(true)
        {
            bins.push(PathBuf::from(exe));
        }
    }
    anyhow::ensure!(!bins.is_empty(), "`{}` built no test binary", crate::util::describe(&c));
    Ok(bins)
}
