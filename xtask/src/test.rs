//! `cargo xtask test`: the three test layers, each its own cargo run, with one
//! summary at the end. Layers 2 and 3 need root; `setup` has checked that.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use crate::{
    build,
    util::{describe, root},
};

/// A test layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Layer {
    /// User-side logic, no root.
    Unit,
    /// The programs on golden frames through BPF_PROG_TEST_RUN.
    Program,
    /// The agent and programs on namespaces with real traffic.
    Topology,
}

impl Layer {
    const ALL: [Layer; 3] = [Layer::Unit, Layer::Program, Layer::Topology];

    fn cargo_args(self) -> Vec<&'static str> {
        match self {
            Layer::Unit => vec!["test", "--release", "--workspace", "--exclude", "datapath-tests"],
            Layer::Program => vec!["test", "--release", "-p", "datapath-tests", "--test", "program"],
            Layer::Topology => {
                vec!["test", "--release", "-p", "datapath-tests", "--lib", "--test", "topology"]
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Parses cargo's `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
fn parse_result(line: &str, t: &mut Tally) -> bool {
    let Some(rest) = line.trim().strip_prefix("test result: ") else { return false };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(what), Some(n)) = (words.next(), words.next()) else { continue };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => t.passed += n,
            "failed" => t.failed += n,
            "ignored" => t.ignored += n,
            _ => {}
        }
    }
    true
}

/// Runs the layers (all when `only` is empty), passing `extra` to every cargo test.
pub fn test(only: &[Layer], extra: &[String]) -> Result<()> {
    build::all()?;
    let bin = root().join("target/release/datapath");
    let layers: Vec<Layer> = if only.is_empty() { Layer::ALL.to_vec() } else { only.to_vec() };
    let mut rows = Vec::new();
    for layer in layers {
        let start = Instant::now();
        let mut args = layer.cargo_args();
        if !extra.is_empty() {
            args.push("--");
            args.extend(extra.iter().map(String::as_str));
        }
        let mut cmd = build::cargo(&args);
        cmd.env("DATAPATH_BIN", &bin).stdout(Stdio::piped());
        println!("\n[xtask] === {layer:?} tests: {} ===", describe(&cmd));
        let mut child = cmd.spawn().with_context(|| format!("starting `{}`", describe(&cmd)))?;
        let mut tally = Tally::default();
        let mut results = 0;
        for line in BufReader::new(child.stdout.take().context("piped stdout")?).lines() {
            let line = line.context("reading cargo test output")?;
            println!("{line}");
            if parse_result(&line, &mut tally) {
                results += 1;
            }
        }
        let status = child.wait().context("waiting for cargo test")?;
        let ok = status.success() && tally.failed == 0 && results > 0 && tally.passed > 0;
        let note = if !status.success() && results == 0 {
            "did not run (build error?)"
        } else if tally.passed == 0 {
            "ran no test"
        } else if ok {
            "ok"
        } else {
            "FAILED"
        };
        rows.push((layer, tally, note, start.elapsed().as_secs_f64(), ok));
    }
    println!("\n[xtask] test summary");
    println!("  {:<10} {:>7} {:>7} {:>8} {:>8}  status", "layer", "passed", "failed", "ignored", "seconds");
    let (mut passed, mut failed, mut all_ok) = (0, 0, true);
    for (layer, t, note, secs, ok) in &rows {
        println!(
            "  {:<10} {:>7} {:>7} {:>8} {:>8.1}  {note}",
            format!("{layer:?}").to_lowercase(),
            t.passed,
            t.failed,
            t.ignored,
            secs
        );
        passed += t.passed;
        failed += t.failed;
        all_ok &= ok;
    }
    println!("{passed} passed, {failed} failed");
    if !all_ok {
        bail!("some test layers failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cargo_result_lines() {
        let mut t = Tally::default();
        assert!(parse_result(
            "test result: ok. 58 passed; 0 failed; 2 ignored; 0 measured; 1 filtered out",
            &mut t
        ));
        assert!(parse_result("test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured", &mut t));
        assert!(!parse_result("running 4 tests", &mut t));
        assert_eq!((t.passed, t.failed, t.ignored), (61, 1, 2));
    }
}
