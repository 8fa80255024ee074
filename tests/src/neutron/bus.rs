//! The message bus as a node sees it. A node is a network namespace, and
//! RabbitMQ listens on the host's loopback; this proxy listens on the node's
//! own 127.0.0.1:5672 (a socket keeps the namespace it was made in) and
//! forwards every connection to the broker. Cutting it is how a test takes
//! the bus away from one node without disturbing the tests running beside it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::{Netns, ThreadNetns};

/// The broker, on the host's loopback.
const BROKER: &str = "127.0.0.1:5672";

/// Forwards the node's 127.0.0.1:5672 to the broker until dropped.
pub struct BusProxy {
    stop: Arc<AtomicBool>,
    /// While set, connections are refused and open ones are cut.
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl BusProxy {
    /// Starts forwarding inside `ns`.
    pub fn start(ns: &Netns) -> Result<Self> {
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        let listener = {
            let _inside = ThreadNetns::enter(ns)?;
            TcpListener::bind("127.0.0.1:5672")
                .with_context(|| format!("listening on 127.0.0.1:5672 in {}", ns.name()))?
        };
        listener.set_nonblocking(true).context("making the proxy listener non-blocking")?;
        let broker: SocketAddr = BROKER.parse().expect("a valid address");
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (s, c, o) = (stop.clone(), cut.clone(), open.clone());
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) if c.load(Ordering::Relaxed) => drop(client),
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect_timeout(&broker, Duration::from_secs(2)) else {
                            continue;
                        };
                        let mut open = o.lock().unwrap_or_else(|e| e.into_inner());
                        open.retain(|s| s.peer_addr().is_ok());
                        for st in [&client, &server] {
                            if let Ok(st) = st.try_clone() {
                                open.push(st);
                            }
                        }
                        pipe(&client, &server);
                        pipe(&server, &client);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self { stop, cut, open, accept: Some(accept) })
    }

    /// Takes the bus away from the node: open connections are cut and new ones refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        self.close_all();
    }

    /// Gives the bus back.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }

    fn close_all(&self) {
        for s in self.open.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` on a thread until either side closes.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { return };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

impl Drop for BusProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.close_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
