//! Running commands with errors that name the command line, and the paths xtask works with.

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

/// Project-local tools (bpf-linker and the LLVM links it runs against), kept out of ~/.cargo.
pub fn tools_dir() -> PathBuf {
    root().join(".tools")
}

/// PATH with the project's tools first, so cargo finds our bpf-linker.
pub fn path_with_tools() -> OsString {
    let mut paths = vec![tools_dir().join("bin")];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).expect("PATH entries contain no separator")
}

/// A `Command` for `program` with `args`.
pub fn cmd<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: impl IntoIterator<Item = S>) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// The command line as one would type it in a shell, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    if let Some(dir) = cmd.get_current_dir() {
        s.push_str(&format!("cd {} && ", dir.display()));
    }
    for (k, v) in cmd.get_envs() {
        let Some(v) = v else { continue };
        if k == "PATH" {
            // The full PATH is long and says nothing; only our prefix matters.
            s.push_str(&format!("PATH={}:$PATH ", tools_dir().join("bin").display()));
        } else {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status().with_context(|| format!("could not start `{}`", describe(cmd)))
}

/// Runs `cmd` with inherited stdio; fails if it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; on a non-zero exit, fails with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", describe(cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prints one progress line. On stderr, so that `cargo xtask run -- ...` leaves the
/// datapath's own stdout clean for pipes.
pub fn step(what: &str, state: &str) {
    eprintln!("[xtask] {what:<34} {state}");
}

/// Prints an error with its causes, one per line. Not `{:?}`: with RUST_BACKTRACE set
/// that appends xtask's own backtrace, which says nothing about what failed.
pub fn report(e: &anyhow::Error) {
    eprintln!("[xtask] error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("[xtask]   caused by: {cause}");
    }
}

/// Seconds since `start`, for progress lines.
pub fn secs(start: Instant) -> String {
    format!("{:.1}s", start.elapsed().as_secs_f64())
}
