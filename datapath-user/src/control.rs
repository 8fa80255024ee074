//! The control socket: one JSON request per line in, one JSON reply per line
//! out. The listener only parses and forwards; the agent loop answers, so all
//! state stays owned by one task.
//!
//! Request:  `{"cmd": "ports"}`, `{"cmd": "stats", "port": "tap02407769-97"}`, ...
//! Reply:    `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

/// Longest request line accepted; anything longer is refused without being read whole.
pub const MAX_REQUEST: usize = 1 << 20;

/// What a client can ask.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Agent summary.
    Status,
    /// Every port (and unbound tap, and uplink) with its state.
    Ports,
    /// Networks with ports on this node.
    Networks,
    /// Forwarding entries, of one network (id, name or local index) or all.
    Fdb { network: Option<String> },
    /// Counters per port, of one port (device or port id) or all.
    Stats { port: Option<String> },
    /// Runs the real program on a frame (hex) against the live maps, changing nothing.
    Trace { port: String, frame: String },
}

/// A request waiting for the agent's answer.
pub struct Pending {
    pub request: Request,
    pub reply: oneshot::Sender<Result<Value, String>>,
}

/// Listens on `path` and forwards every request to `tx`.
pub async fn serve(path: PathBuf, tx: mpsc::Sender<Pending>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a killed agent would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    log::info!("control socket at {}", path.display());
    loop {
        let (stream, _) = listener.accept().await.context("accepting on the control socket")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, tx).await {
                log::debug!("control connection: {e:#}");
            }
        });
    }
}

async fn connection(stream: tokio::net::UnixStream, tx: mpsc::Sender<Pending>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = AsyncBufReader::new(read.take(MAX_REQUEST as u64 + 1)).lines();
    while let Some(line) = lines.next_line().await.context("reading a request")? {
        let reply = match parse_request(&line) {
            Ok(request) => {
                let (reply, rx) = oneshot::channel();
                tx.send(Pending { request, reply }).await.context("agent loop is gone")?;
                rx.await.context("agent dropped the request")?
            }
            Err(e) => Err(e),
        };
        let body = match reply {
            Ok(result) => json!({"ok": true, "result": result}),
            Err(error) => json!({"ok": false, "error": error}),
        };
        let mut text = serde_json::to_string(&body)?;
        text.push('\n');
        write.write_all(text.as_bytes()).await.context("writing a reply")?;
    }
    Ok(())
}

/// The wire form of a request, before it is checked against its command.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    cmd: String,
    network: Option<String>,
    port: Option<String>,
    frame: Option<String>,
}

/// Parses one request line; the error says what is wrong with it.
pub fn parse_request(line: &str) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    let raw: RawRequest =
        serde_json::from_str(line).map_err(|e| format!("bad request: {e} (at column {})", e.column()))?;
    let unexpected = |field: &str, present: bool| {
        if present { Err(format!("bad request: {:?} takes no {field:?}", raw.cmd)) } else { Ok(()) }
    };
    let request = match raw.cmd.as_str() {
        "status" | "ports" | "networks" => {
            unexpected("network", raw.network.is_some())?;
            unexpected("port", raw.port.is_some())?;
            unexpected("frame", raw.frame.is_some())?;
            match raw.cmd.as_str() {
                "status" => Request::Status,
                "ports" => Request::Ports,
                _ => Request::Networks,
            }
        }
        "fdb" => {
            unexpected("port", raw.port.is_some())?;
            unexpected("frame", raw.frame.is_some())?;
            Request::Fdb { network: raw.network.clone() }
        }
        "stats" => {
            unexpected("network", raw.network.is_some())?;
            unexpected("frame", raw.frame.is_some())?;
            Request::Stats { port: raw.port.clone() }
        }
        "trace" => {
            unexpected("network", raw.network.is_some())?;
            let port = raw.port.clone().ok_or("bad request: trace needs \"port\"")?;
            let frame = raw.frame.clone().ok_or("bad request: trace needs \"frame\"")?;
            Request::Trace { port, frame }
        }
        other => {
            return Err(format!(
                "bad request: unknown cmd {other:?} (status, ports, networks, fdb, stats, trace)"
            ));
        }
    };
    Ok(request)
}

/// Sends one request to the agent listening on `path` and returns its result.
pub fn query(path: &Path, request: &Request) -> Result<Value> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!("connecting to the agent's control socket {} (is the agent running?)", path.display())
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).context("sending the request")?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).context("reading the agent's reply")?;
    if reply.is_empty() {
        bail!("the agent closed the connection without replying");
    }
    let v: Value = serde_json::from_str(&reply).context("the agent's reply is not JSON")?;
    if v["ok"] == Value::Bool(true) {
        Ok(v["result"].clone())
    } else {
        bail!("agent: {}", v["error"].as_str().unwrap_or("unknown error"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_round_trip() {
        assert_eq!(parse_request(r#"{"cmd":"ports"}"#), Ok(Request::Ports));
        assert_eq!(parse_request(r#"{"cmd":"fdb"}"#), Ok(Request::Fdb { network: None }));
        assert_eq!(
            parse_request(r#"{"cmd":"stats","port":"tap1"}"#),
            Ok(Request::Stats { port: Some("tap1".into()) })
        );
        let t = Request::Trace { port: "p".into(), frame: "ff".into() };
        assert_eq!(parse_request(&serde_json::to_string(&t).unwrap()), Ok(t));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let e = parse_request("not json").unwrap_err();
        assert!(e.contains("bad request"), "{e}");
        let e = parse_request(r#"{"cmd":"reboot"}"#).unwrap_err();
        assert!(e.contains("reboot"), "{e}");
        let e = parse_request(r#"{"cmd":"trace","port":"x"}"#).unwrap_err();
        assert!(e.contains("frame"), "{e}");
        let e = parse_request(r#"{"cmd":"ports","extra":1}"#).unwrap_err();
        assert!(e.contains("extra"), "{e}");
        let e = parse_request(r#"{"cmd":"ports","port":"x"}"#).unwrap_err();
        assert!(e.contains("takes no"), "{e}");
        assert!(parse_request(&"x".repeat(MAX_REQUEST + 1)).unwrap_err().contains("longer"));
    }
}
