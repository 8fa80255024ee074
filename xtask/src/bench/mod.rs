//! `cargo xtask bench`: the datapath against a legacy-like OVS hybrid chain,
//! both built in namespaces and measured alternately in one run; results in
//! target/bench/ (results.json, ratios.svg). Method: docs/performance.md.
//!
//! The engine links the datapath library, whose build script embeds the eBPF
//! object, so it sits behind the `bench` feature: the everyday xtask (built
//! without an object) builds a release xtask with the feature and the object,
//! and runs it. That keeps the library out of every other `cargo xtask` build.

// Pure parts, compiled in every build so that the unit layer tests them; only
// the engine (feature `bench`) calls most of them.
#[cfg_attr(not(feature = "bench"), allow(dead_code))]
mod chart;
#[cfg_attr(not(feature = "bench"), allow(dead_code))]
mod interrupt;
#[cfg_attr(not(feature = "bench"), allow(dead_code))]
mod report;
#[cfg_attr(not(feature = "bench"), allow(dead_code))]
mod stats;

#[cfg(feature = "bench")]
mod connect;
#[cfg(feature = "bench")]
mod control;
#[cfg(feature = "bench")]
mod engine;
#[cfg(feature = "bench")]
mod floor;
#[cfg(feature = "bench")]
mod legacy;
#[cfg(feature = "bench")]
mod ours;
#[cfg(feature = "bench")]
mod plan;
#[cfg(feature = "bench")]
mod traffic;
#[cfg(feature = "bench")]
mod wiring;
#[cfg(feature = "bench")]
mod xdp;
#[cfg(feature = "bench")]
mod xdpgen;
#[cfg(feature = "bench")]
mod xdploop;

use std::path::Path;

use anyhow::{Context, Result, bail};

/// Runs the benchmark with the eBPF object `obj` and the datapath binary `bin`.
#[cfg(not(feature = "bench"))]
pub fn run(obj: &Path, bin: &Path, quick: bool) -> Result<()> {
    use std::time::Instant;

    use crate::{
        user,
        util::{cmd, describe, root, secs, status, step},
    };

    // Ctrl-C reaches the engine too; waiting for it lets it remove its namespaces first.
    interrupt::install()?;
    let start = Instant::now();
    step("bench engine", "building (release, with the eBPF object)");
    let mut build = user::cargo(obj, ["build", "--release", "-p", "xtask", "--features", "bench"]);
    crate::util::run(&mut build).context("building the benchmark engine")?;
    step("bench engine", &format!("built in {}", secs(start)));
    let mut engine = cmd(root().join("target/release/xtask"), ["bench"]);
    if quick {
        engine.arg("--quick");
    }
    // The topology harness starts agents from DATAPATH_BIN; the wiring figures need neutron.
    engine.env("DATAPATH_BIN", bin);
    engine.env("DATAPATH_NEUTRON_VENV", crate::neutron::setup()?);
    let exit = status(&mut engine)?;
    if interrupt::interrupted() {
        bail!("the benchmark was interrupted");
    }
    if !exit.success() {
        bail!("`{}` failed ({exit})", describe(&engine));
    }
    Ok(())
}

/// Runs the benchmark (this is the engine build; `obj` is already embedded).
#[cfg(feature = "bench")]
pub fn run(_obj: &Path, _bin: &Path, quick: bool) -> Result<()> {
    use crate::util::{root, step};

    interrupt::install()?;
    let plan = plan::Plan::new(quick);
    let outcome = match engine::bench(&plan) {
        Ok(o) => o,
        // Every guard has dropped by now: the namespaces are gone.
        Err(_) if interrupt::interrupted() => bail!("interrupted; everything the benchmark built is removed"),
        Err(e) => return Err(e),
    };
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!();
    print!("{}", report::table(&outcome.records));
    println!();
    for line in &outcome.profile {
        println!("{line}");
    }
    let json = dir.join("results.json");
    report::write_json(&outcome.records, &json)?;
    let svg = dir.join("ratios.svg");
    let title = format!(
        "datapath vs legacy hybrid chain ({} run, {})",
        if quick { "quick" } else { "full" },
        machine()
    );
    std::fs::write(&svg, chart::svg(&outcome.records, &title))
        .with_context(|| format!("writing {}", svg.display()))?;
    step("bench: results", &format!("{} and {}", json.display(), svg.display()));
    // The one assertion, in both modes: traffic flowed on both paths. Never a speed.
    if !outcome.no_traffic.is_empty() {
        bail!("traffic did not flow:\n  {}", outcome.no_traffic.join("\n  "));
    }
    Ok(())
}

/// "N CPUs, kernel X", for the chart's title.
#[cfg(feature = "bench")]
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, kernel {}", kernel.trim())
}
