//! Named network namespaces (`ip netns`) that disappear when their guard drops.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{TempDir, next_id};

/// Longest tag kept in a namespace name, so names stay readable in `ip netns list`.
const MAX_TAG: usize = 20;

/// A named network namespace `dpt-<tag>-<pid>-<n>` with `lo` up; deleted on drop.
///
/// Deleting the name does not kill processes still inside: a namespace lives
/// on (anonymously) while something uses it, so stop what you started first.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates a namespace whose name contains `tag` (sanitised and trimmed).
    pub fn new(tag: &str) -> Result<Self> {
        let tag = sanitize(tag);
        // `ip netns add` makes /run/netns a shared bind mount the first time;
        // two threads doing that at once can stack mounts, so one at a time.
        static CREATE: Mutex<()> = Mutex::new(());
        let _serial = CREATE.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..100 {
            let name = format!("dpt-{tag}-{}-{}", std::process::id(), next_id());
            let out = Command::new("ip")
                .args(["netns", "add", &name])
                .stdin(Stdio::null())
                .output()
                .context("running `ip netns add`")?;
            if !out.status.success() {
                // A leftover of a killed run that had our pid: take the next number.
                if String::from_utf8_lossy(&out.stderr).contains("File exists") {
                    continue;
                }
                bail!("{}", describe_failure(&["ip", "netns", "add", &name], &out));
            }
            let ns = Self { path: Path::new("/run/netns").join(&name), name };
            ns.exec(&["ip", "link", "set", "lo", "up"])?;
            return Ok(ns);
        }
        bail!("no free namespace name for tag {tag:?}")
    }

    /// The namespace's name, as `ip netns` and `ip -n` know it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for setns(2) or `nsenter --net=`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `ip netns exec <name> args...` and returns its stdout; fails on a non-zero exit.
    ///
    /// Note that `ip netns exec` mounts a fresh /sys, so /sys/fs/bpf inside is
    /// not the host's bpffs.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let out = self.exec_output(args)?;
        if !out.status.success() {
            bail!("{}", describe_failure(&self.full_command(args), &out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like [`Netns::exec`] but returns the raw output whatever the exit status.
    pub fn exec_output(&self, args: &[&str]) -> Result<Output> {
        let cmd = self.full_command(args);
        Command::new(cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting `{}`", cmd.join(" ")))
    }

    /// Starts `args` in the background in this namespace; killed and reaped when the guard drops.
    ///
    /// Its stdout and stderr go to a log file, see [`NsChild::output`].
    pub fn spawn(&self, args: &[&str]) -> Result<NsChild> {
        if args.is_empty() {
            bail!("spawn needs a command");
        }
        let dir = TempDir::new("spawn")?;
        let log_path = dir.path().join("output.log");
        let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let cmd = self.full_command(args);
        // `ip netns exec` execs the command in place, so the child's pid is the command's.
        let child = Command::new(cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting `{}`", cmd.join(" ")))?;
        Ok(NsChild { child, command: cmd.join(" "), log_path, _dir: dir })
    }

    fn full_command<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut cmd = vec!["ip", "netns", "exec", self.name.as_str()];
        cmd.extend_from_slice(args);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip").args(["netns", "del", &self.name]).stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("warning: {}", describe_failure(&["ip", "netns", "del", &self.name], &out)),
            Err(e) => eprintln!("warning: running `ip netns del {}`: {e}", self.name),
        }
    }
}

/// A background process started by [`Netns::spawn`]; SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct NsChild {
    child: Child,
    command: String,
    log_path: PathBuf,
    _dir: TempDir,
}

impl NsChild {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdout and stderr so far, interleaved.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` and waits up to `timeout` for the exit (SIGKILL after that).
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: our own, not yet reaped child, so the pid cannot have been reused.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        if crate::wait_until(timeout, || matches!(self.child.try_wait(), Ok(Some(_)))) {
            return Ok(self.child.wait()?);
        }
        self.child.kill()?;
        let status = self.child.wait()?;
        bail!("`{}` ignored signal {signal} for {timeout:?}; killed ({status})", self.command)
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        crate::wait_until(timeout, || matches!(self.child.try_wait(), Ok(Some(_))));
        Ok(self.child.try_wait()?)
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        // kill() on an already exited child is fine; wait() reaps either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps `[A-Za-z0-9_-]` (other characters become `-`) and at most MAX_TAG of them.
fn sanitize(tag: &str) -> String {
    let s: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' })
        .take(MAX_TAG)
        .collect();
    if s.is_empty() { "ns".into() } else { s }
}

/// `` `cmd`: exit status N; stderr: ...; stdout: ... `` for error messages.
pub(crate) fn describe_failure(cmd: &[&str], out: &Output) -> String {
    let mut msg = format!("`{}` failed: {}", cmd.join(" "), out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stderr.trim().is_empty() {
        msg += &format!("\nstderr: {}", stderr.trim_end());
    }
    if !stdout.trim().is_empty() {
        msg += &format!("\nstdout: {}", stdout.trim_end());
    }
    msg
}

/// Names `ip netns list` shows right now.
pub fn list_names() -> Result<Vec<String>> {
    let out = Command::new("ip").args(["netns", "list"]).output().context("running `ip netns list`")?;
    if !out.status.success() {
        bail!("{}", describe_failure(&["ip", "netns", "list"], &out));
    }
    // Lines look like "name" or "name (id: 3)".
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Moves the current thread into a namespace; moves it back on drop.
pub struct ThreadNetns {
    home: File,
}

impl ThreadNetns {
    /// Enters `ns` with this thread only (setns(2) affects the calling thread).
    pub fn enter(ns: &Netns) -> Result<Self> {
        let home = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
        let target = File::open(ns.path()).with_context(|| format!("opening {}", ns.path().display()))?;
        // SAFETY: setns on valid fds; affects only the calling thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns into {}: {}", ns.name(), std::io::Error::last_os_error());
        }
        Ok(Self { home })
    }
}

impl Drop for ThreadNetns {
    fn drop(&mut self) {
        // SAFETY: setns back to the fd we opened before leaving.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Makes closing `socket` (a TCP socket) send a RST (SO_LINGER 0) instead of
/// leaving it in TIME_WAIT.
pub fn reset_on_close(socket: &impl AsRawFd) -> std::io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Whether a TCP connection from `client` to `addr`, listened on in
/// `server`, opens within `timeout`. An error is the setup's (a namespace
/// not entered, an address not bound), never the answer.
pub fn tcp_connects(client: &Netns, server: &Netns, addr: &str, timeout: Duration) -> Result<bool> {
    let sock: std::net::SocketAddr = addr.parse().with_context(|| format!("{addr:?} is not IP:PORT"))?;
    let _listener = {
        let _in = ThreadNetns::enter(server)?;
        std::net::TcpListener::bind(sock)
            .with_context(|| format!("listening on {addr} in {}", server.name()))?
    };
    let _in = ThreadNetns::enter(client)?;
    Ok(std::net::TcpStream::connect_timeout(&sock, timeout).is_ok())
}

/// `GET path` from `addr` (IP:PORT) inside `ns`, over HTTP/1.1 with the
/// connection closed after the answer: (status code, body).
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().with_context(|| format!("{addr:?} is not IP:PORT"))?;
    let mut stream = {
        let _in = ThreadNetns::enter(ns)?;
        std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr} in {}", ns.name()))?
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).with_context(|| format!("reading the answer of {addr}{path}"))?;
    let text = String::from_utf8(raw).context("the answer is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").with_context(|| format!("no header end in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    // hyper sends a small body whole, with Content-Length (no chunks to undo).
    ensure!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "a chunked answer: {head}");
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_trims_and_replaces() {
        assert_eq!(sanitize("node0"), "node0");
        assert_eq!(sanitize("a/b c"), "a-b-c");
        assert_eq!(sanitize(""), "ns");
        assert_eq!(sanitize(&"x".repeat(50)).len(), MAX_TAG);
    }

    #[test]
    fn namespace_lifecycle() {
        crate::require_root();
        let a = Netns::new("life").unwrap();
        let b = Netns::new("life").unwrap();
        assert_ne!(a.name(), b.name());
        assert!(a.name().starts_with(&format!("dpt-life-{}-", std::process::id())));
        assert!(a.path().exists());
        let names = list_names().unwrap();
        assert!(names.iter().any(|n| n == a.name()) && names.iter().any(|n| n == b.name()));

        // lo is up, and nothing else is there.
        let links = a.exec(&["ip", "-o", "link", "show"]).unwrap();
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains("lo:") && links.contains("UP"), "{links}");

        let (na, nb) = (a.name().to_string(), b.name().to_string());
        drop(a);
        drop(b);
        let names = list_names().unwrap();
        assert!(!names.contains(&na) && !names.contains(&nb), "{names:?}");
        assert!(!Path::new("/run/netns").join(&na).exists());
    }

    #[test]
    fn removed_on_panic() {
        crate::require_root();
        let mut name = String::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ns = Netns::new("panic").unwrap();
            name = ns.name().to_string();
            panic!("test panic");
        }));
        assert!(r.is_err());
        assert!(!name.is_empty());
        assert!(!list_names().unwrap().contains(&name));
    }

    #[test]
    fn exec_errors_name_command_status_and_stderr() {
        crate::require_root();
        let ns = Netns::new("err").unwrap();
        let err = ns.exec(&["ip", "link", "show", "dev", "nosuchdev0"]).unwrap_err().to_string();
        assert!(err.contains(&format!("ip netns exec {} ip link show dev nosuchdev0", ns.name())), "{err}");
        assert!(err.contains("exit status"), "{err}");
        assert!(err.contains("nosuchdev0"), "{err}");
        assert_eq!(ns.exec(&["echo", "hi"]).unwrap(), "hi\n");
    }

    #[test]
    fn spawned_process_is_killed_on_drop() {
        crate::require_root();
        let ns = Netns::new("spawn").unwrap();
        let mut child = ns.spawn(&["sh", "-c", "echo started; exec sleep 600"]).unwrap();
        let pid = child.pid();
        assert!(crate::wait_until(Duration::from_secs(5), || child.output().contains("started")));
        assert!(child.running());
        // It really runs inside the namespace.
        let inside = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
        let want = ns.exec(&["readlink", "/proc/self/ns/net"]).unwrap();
        assert_eq!(inside.to_string_lossy(), want.trim());
        drop(child);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} survived its guard");
    }

    #[test]
    fn stop_returns_exit_status() {
        crate::require_root();
        let ns = Netns::new("stop").unwrap();
        let mut child = ns.spawn(&["sleep", "600"]).unwrap();
        let status = child.stop(libc::SIGTERM, Duration::from_secs(5)).unwrap();
        assert!(!status.success());
        let mut quick = ns.spawn(&["true"]).unwrap();
        assert!(quick.wait_timeout(Duration::from_secs(5)).unwrap().unwrap().success());
    }
}
