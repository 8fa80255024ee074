//! `cargo xtask lint`: fmt and clippy, each in two passes (the user workspace with
//! stable, the eBPF crate with nightly for its own target), since the two crate
//! sets never build together.

use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{
    ebpf, user,
    util::{cmd, report, root, run, secs, step},
};

/// Runs every check, going on after a failure so that one run reports them all.
pub fn lint() -> Result<()> {
    let mut failed = Vec::new();
    let mut check = |name: &str, result: Result<()>, start: Instant| match result {
        Ok(()) => step(name, &format!("ok ({})", secs(start))),
        Err(e) => {
            report(&e);
            step(name, "FAILED");
            failed.push(name.to_string());
        }
    };

    let start = Instant::now();
    let r = run(cmd("cargo", ["fmt", "--all", "--check"]).current_dir(root()))
        .context("formatting differs in the user workspace; fix with: cargo fmt --all");
    check("fmt (user workspace)", r, start);

    let start = Instant::now();
    let r = run(cmd("cargo", ["+nightly", "fmt", "--check"]).current_dir(root().join("datapath-ebpf")))
        .context("formatting differs in datapath-ebpf; fix with: (cd datapath-ebpf && cargo +nightly fmt)");
    check("fmt (eBPF crate)", r, start);

    // The fuzz crate is a workspace of its own (built by cargo-fuzz with
    // libFuzzer); its clippy would need that build, its formatting does not.
    let start = Instant::now();
    let r = run(cmd("cargo", ["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"]).current_dir(root()))
        .context("formatting differs in fuzz/; fix with: cargo fmt --manifest-path fuzz/Cargo.toml");
    check("fmt (fuzz crate)", r, start);

    // The user side's build script embeds the object, so clippy needs it first;
    // --all-features takes in the bench engine (xtask's `bench` feature).
    let start = Instant::now();
    match ebpf::build() {
        Ok(obj) => {
            let r = run(&mut user::cargo(
                &obj,
                ["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"],
            ))
            .context("clippy pass 1 (user workspace)");
            check("clippy pass 1 (user workspace)", r, start);
        }
        Err(e) => check("clippy pass 1 (needs the eBPF object)", Err(e), start),
    }

    let start = Instant::now();
    let mut clippy = ebpf::cargo("clippy");
    clippy.args(["--", "-D", "warnings"]);
    let r = run(&mut clippy).context("clippy pass 2 (eBPF crate)");
    check("clippy pass 2 (eBPF crate)", r, start);

    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    Ok(())
}
