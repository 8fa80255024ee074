//! `cargo xtask test`: the test layers, each its own cargo invocation, then one
//! summary. Program and topology tests need root; `setup` has checked that.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::ExitStatusExt,
    path::Path,
    process::{ExitStatus, Stdio},
    time::Instant,
};

use anyhow::{Context, Result};
use clap::ValueEnum;

use crate::{
    ebpf, neutron, setup, user,
    util::{describe, step},
    vm,
};

/// A test layer, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Layer {
    /// `#[cfg(test)]` tests of the user-side crates and xtask.
    Unit,
    /// The programs on golden frames through BPF_PROG_TEST_RUN.
    Program,
    /// 10^6 generated frames through the programs and their reference model (seed printed).
    Fuzz,
    /// The agent and the programs on namespaces with real traffic.
    Topology,
    /// A short churn run (soak smoke): ports, devices and agents change while traffic flows.
    Soak,
    /// A real neutron-server (RabbitMQ, MariaDB, RPC server, API) with our ML2
    /// mechanism driver, driven through its REST API.
    Neutron,
    /// Real QEMU guests (Debian's kernel) on taps, through the datapath (`--vm`).
    Guest,
    /// The program and topology layers again, inside a QEMU VM running
    /// Debian bookworm's LTS kernel (6.1), which has no tcx (`--vm`).
    LtsKernel,
}

/// The layers `cargo xtask test` runs without `--layer`: the VM layers only with `--vm`.
pub fn default_layers(vm: bool) -> Vec<Layer> {
    let mut l = vec![Layer::Unit, Layer::Program, Layer::Fuzz, Layer::Topology, Layer::Soak, Layer::Neutron];
    if vm {
        l.extend([Layer::Guest, Layer::LtsKernel]);
    }
    l
}

impl Layer {
    fn name(self) -> &'static str {
        match self {
            Layer::Unit => "unit",
            Layer::Program => "program",
            Layer::Fuzz => "fuzz",
            Layer::Topology => "topology",
            Layer::Soak => "soak",
            Layer::Neutron => "neutron",
            Layer::Guest => "guest",
            Layer::LtsKernel => "lts-kernel",
        }
    }

    fn needs_bin(self) -> bool {
        matches!(self, Layer::Topology | Layer::Soak | Layer::Neutron | Layer::Guest | Layer::LtsKernel)
    }

    fn needs_guest(self) -> bool {
        matches!(self, Layer::Guest | Layer::LtsKernel)
    }

    fn cargo_args(self) -> &'static [&'static str] {
        // --no-fail-fast: a failing test binary must not hide the results of the others.
        match self {
            Layer::Unit => &["test", "--no-fail-fast", "--workspace", "--exclude", "datapath-tests"],
            Layer::Program => &["test", "--no-fail-fast", "-p", "datapath-tests", "--test", "program"],
            // --nocapture: the seed and the frame count must reach the log even when it passes.
            Layer::Fuzz => {
                &["test", "--no-fail-fast", "-p", "datapath-tests", "--test", "fuzz", "--", "--nocapture"]
            }
            // --lib: the harness's self-tests (tests/src) create namespaces and links, so they
            // belong with the topology tests rather than with the unit layer.
            Layer::Topology => {
                &["test", "--no-fail-fast", "-p", "datapath-tests", "--lib", "--test", "topology"]
            }
            // --nocapture: the seed and the figures must reach the log even when it passes.
            Layer::Soak => {
                &["test", "--no-fail-fast", "-p", "datapath-tests", "--test", "soak", "--", "--nocapture"]
            }
            // The agent's RPC client against the same RabbitMQ (tests/amqp), then neutron-server.
            Layer::Neutron => {
                &["test", "--no-fail-fast", "-p", "datapath-tests", "--test", "amqp", "--test", "neutron"]
            }
            Layer::Guest => &["test", "--no-fail-fast", "-p", "datapath-tests", "--test", "vm"],
            // Not a cargo run: `run_in_guest` builds the program and topology binaries.
            Layer::LtsKernel => &[],
        }
    }
}

/// Test counts summed over every `test result:` line of one layer.
#[derive(Default, Debug, PartialEq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    results: u64,
}

impl Tally {
    /// Prints `line` and counts it if it is a result line.
    fn echo(&mut self, line: &str) {
        self.add_line(line);
        // Ignore a closed stdout and keep draining, so that the writer is never blocked.
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }

    /// Adds a libtest `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line
    /// (or its `FAILED.` variant); other lines are ignored.
    fn add_line(&mut self, line: &str) {
        let Some(at) = line.find("test result: ") else { return };
        let rest = &line[at + "test result: ".len()..];
        if !(rest.starts_with("ok.") || rest.starts_with("FAILED.")) {
            return;
        }
        self.results += 1;
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

struct Row {
    layer: Layer,
    tally: Tally,
    status: String,
    ok: bool,
    secs: f64,
}

/// Runs the `only` layers (the default ones if empty) in order, passing `extra`
/// to every `cargo test`; returns whether every layer passed.
pub fn test(only: &[Layer], vm: bool, extra: &[String]) -> Result<bool> {
    let mut layers = if only.is_empty() { default_layers(vm) } else { only.to_vec() };
    layers.sort();
    layers.dedup();

    let obj = ebpf::build()?;
    // Topology and guest tests start the real binary (tests/src/cluster.rs reads DATAPATH_BIN).
    let bin = if layers.iter().any(|l| l.needs_bin()) { Some(user::build(&obj, true)?) } else { None };
    // The upgrade tests cross a real map-layout change: a second build, one version ahead.
    let next = if bin.is_some() { Some(user::build_abi_next(&ebpf::build_abi_next()?)?) } else { None };
    let venv = if layers.contains(&Layer::Neutron) { Some(neutron::setup()?) } else { None };
    let guest = if layers.iter().any(|l| l.needs_guest()) {
        setup::vm_packages()?;
        Some(vm::guest()?)
    } else {
        None
    };
    // The package test: a clean Debian system, and the two packages it upgrades between.
    let system = match (layers.contains(&Layer::Guest), &bin, &next) {
        (true, Some(bin), Some(next)) => {
            let (deb, deb_next) = crate::deb::upgrade_pair(bin, next)?;
            Some([
                ("DATAPATH_GUEST_DISK", vm::system::image()?),
                ("DATAPATH_DEB", deb),
                ("DATAPATH_DEB_NEXT", deb_next),
            ])
        }
        _ => None,
    };

    let mut rows = Vec::new();
    for layer in layers {
        let row = match (layer, &guest, &bin) {
            (Layer::LtsKernel, Some(g), Some(bin)) => run_in_guest(g, &obj, bin, next.as_deref(), extra)?,
            (Layer::Neutron, _, _) => {
                let venv = venv.as_deref().expect("set up when the layer is selected");
                run_layer(layer, &obj, bin.as_deref(), None, None, &[("DATAPATH_NEUTRON_VENV", venv)], extra)?
            }
            (Layer::Guest, _, _) => {
                let env: Vec<(&str, &Path)> =
                    system.iter().flatten().map(|(k, v)| (*k, v.as_path())).collect();
                run_layer(layer, &obj, bin.as_deref(), next.as_deref(), guest.as_ref(), &env, extra)?
            }
            _ => run_layer(layer, &obj, bin.as_deref(), next.as_deref(), guest.as_ref(), &[], extra)?,
        };
        rows.push(row);
    }
    // A filter after `--` may match nothing in some layer; without one, an empty layer
    // means tests went missing.
    let filtered = !extra.is_empty();
    let ran = |r: &Row| r.tally.passed + r.tally.failed > 0;
    let any_ran = rows.iter().any(ran);
    for r in &mut rows {
        if r.ok && !ran(r) {
            if filtered && any_ran {
                r.status = "none matched".into();
            } else {
                r.status = "FAILED: ran no tests".into();
                r.ok = false;
            }
        }
    }
    Ok(summary(&rows))
}

fn run_layer(
    layer: Layer,
    obj: &Path,
    bin: Option<&Path>,
    next: Option<&Path>,
    guest: Option<&vm::Guest>,
    env: &[(&str, &Path)],
    extra: &[String],
) -> Result<Row> {
    let mut cargo = user::cargo(obj, layer.cargo_args());
    if !extra.is_empty() {
        if !layer.cargo_args().contains(&"--") {
            cargo.arg("--");
        }
        cargo.args(extra);
    }
    if let Some(bin) = bin {
        cargo.env("DATAPATH_BIN", bin);
    }
    if let Some(next) = next {
        cargo.env("DATAPATH_BIN_ABI_NEXT", next);
    }
    if let Some(g) = guest {
        cargo.env("DATAPATH_GUEST_KERNEL", &g.kernel).env("DATAPATH_GUEST_INITRD", &g.initrd);
    }
    cargo.envs(env.iter().copied());
    // Only stdout is piped: it carries the harness output and the result lines; cargo's
    // own progress and errors stay on the inherited stderr.
    cargo.stdout(Stdio::piped());
    step(&format!("{} tests", layer.name()), &describe(&cargo));
    let start = Instant::now();
    let mut child = cargo.spawn().with_context(|| format!("could not start `{}`", describe(&cargo)))?;
    let tally = relay(child.stdout.take().expect("stdout is piped"), &describe(&cargo))?;
    let exit = child.wait().with_context(|| format!("waiting for `{}`", describe(&cargo)))?;
    let (ok, status) = verdict(&tally, exit);
    Ok(Row { layer, tally, status, ok, secs: start.elapsed().as_secs_f64() })
}

/// Copies test output to our stdout line by line, counting the result lines.
fn relay(out: impl std::io::Read, what: &str) -> Result<Tally> {
    let mut tally = Tally::default();
    for line in BufReader::new(out).lines() {
        let line = line.with_context(|| format!("reading the output of `{what}`"))?;
        tally.echo(&line);
    }
    Ok(tally)
}

/// How many times longer the lts-kernel guest's tests may wait for what must happen.
const GUEST_PATIENCE: &str = "3";

/// The program and topology test binaries, run inside a VM on the guest kernel.
fn run_in_guest(
    guest: &vm::Guest,
    obj: &Path,
    bin: &Path,
    next: Option<&Path>,
    extra: &[String],
) -> Result<Row> {
    let start = Instant::now();
    let mut binaries = Vec::new();
    for layer in [Layer::Program, Layer::Topology] {
        binaries.extend(user::test_binaries(obj, layer.cargo_args())?);
    }
    let mut env = vec![("DATAPATH_BIN", bin), ("DATAPATH_EBPF_OBJ", obj)];
    env.extend(next.map(|n| ("DATAPATH_BIN_ABI_NEXT", n)));
    // The guest is emulated (TCG), several times slower than the host: its
    // tests' positive waits (a ping answered, an agent's first reconcile)
    // get that much longer; see `datapath_tests::patience`.
    env.push(("DATAPATH_TEST_PATIENCE", Path::new(GUEST_PATIENCE)));
    step("lts-kernel tests", &format!("{} test binaries in a {} guest", binaries.len(), guest.release));
    let mut tally = Tally::default();
    let code = vm::run_suite(guest, &binaries, &env, extra, |line| tally.echo(line))?;
    let exit = ExitStatus::from_raw(code << 8);
    let (ok, status) = verdict(&tally, exit);
    Ok(Row { layer: Layer::LtsKernel, tally, status, ok, secs: start.elapsed().as_secs_f64() })
}

/// Whether a layer passed, and how to say so; an empty layer is judged by the caller.
fn verdict(t: &Tally, exit: ExitStatus) -> (bool, String) {
    if t.failed > 0 {
        (false, "FAILED".into())
    } else if !exit.success() && t.results == 0 {
        (false, format!("FAILED: cargo {exit} before any test ran (build error?)"))
    } else if !exit.success() {
        (false, format!("FAILED: cargo {exit}"))
    } else {
        (true, "ok".into())
    }
}

/// Prints the table, then the totals as the very last line (CI greps for it).
fn summary(rows: &[Row]) -> bool {
    println!();
    println!("{:<11} {:>7} {:>7} {:>8} {:>8}  status", "layer", "passed", "failed", "ignored", "seconds");
    for r in rows {
        println!(
            "{:<11} {:>7} {:>7} {:>8} {:>8.1}  {}",
            r.layer.name(),
            r.tally.passed,
            r.tally.failed,
            r.tally.ignored,
            r.secs,
            r.status
        );
    }
    let bad: Vec<&str> = rows.iter().filter(|r| !r.ok).map(|r| r.layer.name()).collect();
    if !bad.is_empty() {
        eprintln!("[xtask] failed test layers: {}", bad.join(", "));
    }
    let passed: u64 = rows.iter().map(|r| r.tally.passed).sum();
    let failed: u64 = rows.iter().map(|r| r.tally.failed).sum();
    println!("{passed} passed, {failed} failed");
    bad.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_result_lines() {
        let mut t = Tally::default();
        t.add_line(
            "test result: ok. 58 passed; 0 failed; 2 ignored; 0 measured; 1 filtered out; finished in 0.1s",
        );
        t.add_line("test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add_line("running 4 tests");
        t.add_line("test foo ... ok");
        t.add_line("some test printed this test result: ok. 1 passed; 0 failed; 0 ignored");
        assert_eq!(t, Tally { passed: 62, failed: 1, ignored: 2, results: 3 });
    }

    #[test]
    fn ignores_look_alikes() {
        let mut t = Tally::default();
        t.add_line("test result: maybe 5 passed");
        assert_eq!(t, Tally::default());
    }
}
