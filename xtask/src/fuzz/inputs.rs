//! `cargo xtask fuzz inputs`: each libFuzzer target of `fuzz/` for a time
//! budget, seeded from the corpus in the repo. A crash, a panic or a broken
//! invariant fails the run and leaves the input under `target/fuzz-artifacts`.

use std::{fs, path::Path, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{
    setup,
    util::{self, cmd, path_with_tools, root, secs, step},
};

/// The targets of `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 4] = ["bindings_derive", "config", "control_request", "trace_frame_spec"];

/// Runs every target (or `only`) for `seconds` each and prints one closing line.
pub fn run(seconds: u64, only: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match only {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?}; the targets are {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    setup::fuzz_tools()?;
    let (mut passed, mut failed) = (0, 0);
    for target in targets {
        match run_target(target, seconds) {
            Ok(()) => passed += 1,
            Err(e) => {
                eprintln!("fuzz target {target} FAILED: {e:#}");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} fuzz targets found a crash, a panic or a broken invariant");
    }
    Ok(())
}

fn run_target(target: &str, seconds: u64) -> Result<()> {
    let start = Instant::now();
    // libFuzzer writes what it finds into the first corpus directory: a copy
    // under target/, so the repo's seed corpus stays as it was committed.
    let work = root().join("target/fuzz-corpus").join(target);
    let artifacts = root().join("target/fuzz-artifacts").join(target);
    // A failing input of an earlier run is not this run's finding.
    let _ = fs::remove_dir_all(&artifacts);
    for dir in [&work, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let seeds = root().join("fuzz/corpus").join(target);
    step(&format!("fuzz {target}"), &format!("{seconds} s, seeds from {}", seeds.display()));
    // Safe Rust parsers: no sanitizer (its build doubles the time and finds
    // nothing that a panic would not); debug assertions stay on.
    let mut c = cmd("cargo", ["+nightly", "fuzz", "run", "--fuzz-dir"]);
    c.arg(root().join("fuzz"))
        .args(["--sanitizer", "none", "--debug-assertions", target])
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1");
    let dict = root().join("fuzz/dicts").join(format!("{target}.dict"));
    if dict.exists() {
        c.arg(format!("-dict={}", dict.display()));
    }
    c.current_dir(root()).env("PATH", path_with_tools());
    // libFuzzer reports every new input; keep that in a log and show the totals.
    let log_path = root().join("target/fuzz-logs").join(format!("{target}.log"));
    fs::create_dir_all(log_path.parent().expect("a log dir")).context("creating target/fuzz-logs")?;
    let log = fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    c.stdout(log.try_clone()?).stderr(log);
    let status = c.status().with_context(|| format!("running `{}`", util::describe(&c)))?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    for line in
        text.lines().filter(|l| l.starts_with("stat::number_of_executed_units") || l.starts_with("Done "))
    {
        step(&format!("fuzz {target}"), line);
    }
    let result = if status.success() {
        Ok(())
    } else {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(anyhow::anyhow!(
            "`{}` failed ({status}); log {}:\n{}",
            util::describe(&c),
            log_path.display(),
            tail.join("\n")
        ))
    };
    if let Some(found) = first_file(&artifacts)? {
        bail!(
            "{target}: a failing input is at {} (reproduce: cargo +nightly fuzz run --fuzz-dir fuzz {target} {})",
            found.display(),
            found.display()
        );
    }
    result.with_context(|| format!("fuzz target {target}"))?;
    step(&format!("fuzz {target}"), &format!("no crash in {}", secs(start)));
    Ok(())
}

fn first_file(dir: &Path) -> Result<Option<std::path::PathBuf>> {
    Ok(fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_file()))
}
