//! Packet captures with tcpdump inside a namespace, read back as text lines.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{TempDir, netns::Netns};

/// How long tcpdump may take to start capturing.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `tcpdump -U -nn -e -i IFACE -w FILE [filter]` in a namespace;
/// killed, and its file removed, on drop.
#[derive(Debug)]
pub struct Capture {
    child: Child,
    iface: String,
    ns_name: String,
    pcap: PathBuf,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl Capture {
    /// Starts capturing on `iface` in `ns` with a tcpdump `filter` ("" for everything);
    /// returns once tcpdump is actually capturing.
    pub fn start(ns: &Netns, iface: &str, filter: &str) -> Result<Self> {
        let dir = TempDir::new("cap")?;
        let pcap = dir.path().join("capture.pcap");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), "tcpdump"])
            // -U: write each packet out at once; --immediate-mode: do not let packets
            // sit in the kernel ring, where they would be lost when we stop;
            // -Z root: Debian's tcpdump otherwise drops to a user that cannot write
            // our temp dir.
            .args(["-U", "--immediate-mode", "-Z", "root", "-nn", "-e", "-i", iface, "-w"])
            .arg(&pcap);
        if !filter.trim().is_empty() {
            cmd.arg(filter);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump (is it installed?)")?;

        // tcpdump says "listening on IFACE" on stderr once the socket and filter
        // are in place; from then on every packet is caught.
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().expect("stderr is piped");
        let text = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
                let mut t = text.lock().unwrap_or_else(|e| e.into_inner());
                t.push_str(&line);
                t.push('\n');
            }
        });
        let mut cap = Self {
            child,
            iface: iface.into(),
            ns_name: ns.name().into(),
            pcap,
            stderr,
            reader: Some(reader),
            _dir: dir,
        };

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => return Ok(cap),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed without "listening on": tcpdump is gone.
                    let status = cap.child.wait()?;
                    bail!(
                        "tcpdump on {} in {} exited ({status}): {}",
                        cap.iface,
                        cap.ns_name,
                        cap.stderr_text()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    bail!(
                        "tcpdump on {} in {} did not start capturing within {START_TIMEOUT:?}: {}",
                        cap.iface,
                        cap.ns_name,
                        cap.stderr_text()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// The pcap file being written (removed when the guard drops).
    pub fn pcap_path(&self) -> &Path {
        &self.pcap
    }

    /// Stops the capture and returns what it caught, one `tcpdump -nn -e -r` line per packet.
    pub fn stop(mut self) -> Result<Vec<String>> {
        // Let packets already on their way reach the file: wait until it stops growing.
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut last = size(&self.pcap);
        let mut stable_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && stable_since.elapsed() < Duration::from_millis(150) {
            std::thread::sleep(Duration::from_millis(25));
            let now = size(&self.pcap);
            if now != last {
                last = now;
                stable_since = Instant::now();
            }
        }

        // SIGINT makes tcpdump flush and close the file properly.
        // SAFETY: our own, not yet reaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        if !crate::wait_until(Duration::from_secs(5), || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
        }
        self.child.wait().context("waiting for tcpdump")?;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }

        let out = Command::new("tcpdump")
            .args(["-Z", "root", "-nn", "-e", "-r"])
            .arg(&self.pcap)
            .stdin(Stdio::null())
            .output()
            .context("running tcpdump -r")?;
        if !out.status.success() {
            bail!(
                "tcpdump -r {} failed ({}): {}\ncapture's stderr: {}",
                self.pcap.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.stderr_text()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // After stop() these are no-ops on a reaped child.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Veth;

    #[test]
    fn captures_only_what_the_filter_selects() {
        crate::require_root();
        let ns = Netns::new("cap").unwrap();
        let veth = Veth::new("c0", Some(&ns), "c1", Some(&ns)).unwrap();
        veth.a().add_addr("10.97.0.1/24").unwrap();
        veth.up().unwrap();
        let all = Capture::start(&ns, "c0", "").unwrap();
        let udp = Capture::start(&ns, "c0", "udp port 9").unwrap();
        // Neighbour resolution goes out c0 (unanswered); then a UDP datagram to a static neighbour.
        ns.exec(&["ip", "neigh", "replace", "10.97.0.9", "lladdr", "02:00:00:00:00:09", "dev", "c0"])
            .unwrap();
        ns.exec(&["bash", "-c", "echo hi > /dev/udp/10.97.0.9/9"]).unwrap();
        ns.exec(&["ping", "-c1", "-W1", "10.97.0.3"]).unwrap_err();
        let udp_lines = udp.stop().unwrap();
        let all_lines = all.stop().unwrap();
        assert!(
            all_lines.iter().any(|l| l.contains("ARP") && l.contains("who-has 10.97.0.3")),
            "{all_lines:#?}"
        );
        assert!(all_lines.iter().any(|l| l.contains("10.97.0.9.9: UDP")), "{all_lines:#?}");
        assert_eq!(udp_lines.len(), 1, "{udp_lines:#?}");
        assert!(
            udp_lines[0].contains("> 02:00:00:00:00:09") && udp_lines[0].contains("10.97.0.9.9: UDP"),
            "{udp_lines:#?}"
        );
    }

    #[test]
    fn start_fails_clearly_on_a_missing_interface() {
        crate::require_root();
        let ns = Netns::new("capbad").unwrap();
        let err = Capture::start(&ns, "nosuch0", "").unwrap_err().to_string();
        assert!(err.contains("nosuch0"), "{err}");
    }

    #[test]
    fn dropping_without_stop_cleans_up() {
        crate::require_root();
        let ns = Netns::new("capdrop").unwrap();
        let cap = Capture::start(&ns, "lo", "").unwrap();
        let (pid, dir) = (cap.child.id(), cap.pcap.parent().unwrap().to_path_buf());
        drop(cap);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(!dir.exists());
    }
}
