//! The control socket: one JSON request per line in, one JSON reply per line
//! out, in the shapes of `api`. The listener only parses and forwards; the
//! agent loop answers, so all state stays owned by one task.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader},
    net::UnixListener,
    sync::{Semaphore, mpsc, oneshot},
};

use crate::api::{Answer, ApiError, ErrorKind, MonitorLine, Reply, Request};

/// Longest request line accepted; anything longer is refused without being read whole.
pub const MAX_REQUEST: usize = 1 << 20;

/// Clients served at once. More get a `busy` reply and are closed, so that no
/// number of clients can take the agent's file descriptors (1024 by default).
pub const MAX_CLIENTS: usize = 64;

/// A client that sends no request for this long is closed, so that idle
/// connections cannot hold the slots of `MAX_CLIENTS` forever.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request waiting for the agent's answer.
pub struct Pending {
    pub request: Request,
    pub reply: oneshot::Sender<Result<Answer, ApiError>>,
    /// For a streaming request (`monitor`): where the agent sends the lines
    /// that follow its answer. Closed by the connection when the client goes.
    pub stream: Option<mpsc::Sender<String>>,
}

/// Lines of a stream that wait for a slow client; more are dropped and counted.
pub const STREAM_BACKLOG: usize = 1024;

/// Binds the control socket at `path`, owner-only.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a killed agent would make bind fail.
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    log::info!("control socket at {}", path.display());
    Ok(listener)
}

/// Serves `listener` and forwards every request to `tx`.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Pending>) -> Result<()> {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // EMFILE, ENFILE, ENOBUFS: the listener is fine, the process or
            // the machine is short of something. Wait, and serve again.
            Err(e) => {
                log::warn!("accepting on the control socket: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            tokio::spawn(busy(stream));
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(stream, tx).await {
                log::debug!("control connection: {e:#}");
            }
        });
    }
}

/// Tells a client over `MAX_CLIENTS` to come back later, and closes.
async fn busy(mut stream: tokio::net::UnixStream) {
    let error =
        ApiError::new(ErrorKind::Busy, format!("the agent serves {MAX_CLIENTS} clients already; try again"));
    let Ok(mut text) = serde_json::to_string(&Reply::<Answer>::from_result(Err(error))) else { return };
    text.push('\n');
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(text.as_bytes())).await;
}

async fn connection(stream: tokio::net::UnixStream, tx: mpsc::Sender<Pending>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = AsyncBufReader::new(read.take(MAX_REQUEST as u64 + 1)).lines();
    loop {
        let Ok(next) = tokio::time::timeout(IDLE_TIMEOUT, lines.next_line()).await else {
            log::debug!("control connection idle for {IDLE_TIMEOUT:?}: closed");
            return Ok(());
        };
        let Some(line) = next.context("reading a request")? else { return Ok(()) };
        let mut stream = None;
        let reply = match parse_request(&line) {
            Ok(request) => {
                let (reply, rx) = oneshot::channel();
                let lines = matches!(request, Request::Monitor { .. }).then(|| {
                    let (stx, srx) = mpsc::channel(STREAM_BACKLOG);
                    stream = Some(srx);
                    stx
                });
                tx.send(Pending { request, reply, stream: lines }).await.context("agent loop is gone")?;
                rx.await.context("agent dropped the request")?
            }
            Err(e) => Err(e),
        };
        let ok = reply.is_ok();
        let mut text = serde_json::to_string(&Reply::from_result(reply))?;
        text.push('\n');
        write.write_all(text.as_bytes()).await.context("writing a reply")?;
        if let (true, Some(mut lines_out)) = (ok, stream) {
            // The connection is a stream now: lines until the client closes it.
            let mut probe = [0u8; 1];
            let mut rest = lines.into_inner();
            loop {
                tokio::select! {
                    next = lines_out.recv() => {
                        let Some(mut text) = next else { return Ok(()) };
                        text.push('\n');
                        if write.write_all(text.as_bytes()).await.is_err() {
                            return Ok(());
                        }
                    }
                    // Anything from the client, or its end, ends the stream.
                    _ = rest.read(&mut probe) => return Ok(()),
                }
            }
        }
    }
}

/// Parses one request line; the error says what is wrong with it.
pub fn parse_request(line: &str) -> Result<Request, ApiError> {
    if line.len() > MAX_REQUEST {
        return Err(ApiError::new(ErrorKind::BadRequest, format!("request longer than {MAX_REQUEST} bytes")));
    }
    serde_json::from_str(line).map_err(|e| {
        ApiError::new(
            ErrorKind::BadRequest,
            format!("bad request: {e} (commands: status, ports, networks, fdb, stats, trace, conntrack, conntrack_flush, metrics, monitor)"),
        )
    })
}

/// Sends one request to the agent listening on `path` and returns its result,
/// read as the reply type of that request. An agent that answers `busy` (it
/// serves its maximum of clients) is asked again for a few seconds.
pub fn query<T: DeserializeOwned>(path: &Path, request: &Request) -> Result<T> {
    let mut wait = Duration::from_millis(50);
    for _ in 0..BUSY_RETRIES {
        match query_once(path, request) {
            Err(e) if e.downcast_ref::<ApiError>().is_some_and(|a| a.kind == ErrorKind::Busy) => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
    query_once(path, request)
}

/// How many times a `busy` answer is retried (about 4 s in all).
const BUSY_RETRIES: usize = 10;

fn query_once<T: DeserializeOwned>(path: &Path, request: &Request) -> Result<T> {
    let stream = send(path, request)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    read_reply(&mut BufReader::new(&stream))
}

/// Connects to the agent at `path` and sends `request`.
fn send(path: &Path, request: &Request) -> Result<UnixStream> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!("connecting to the agent's control socket {} (is the agent running?)", path.display())
    })?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).context("sending the request")?;
    Ok(stream)
}

/// Sends a streaming request (`monitor`) to the agent at `path`: its answer,
/// then each line that follows, until the agent closes the connection.
pub fn stream<T: DeserializeOwned>(
    path: &Path,
    request: &Request,
) -> Result<(T, impl Iterator<Item = Result<MonitorLine>>)> {
    let stream = send(path, request)?;
    let mut reader = BufReader::new(stream);
    let answer = read_reply(&mut reader)?;
    let lines = reader.lines().map(|l| {
        let l = l.context("reading the agent's stream")?;
        serde_json::from_str(&l).with_context(|| format!("a stream line of another version: {l}"))
    });
    Ok((answer, lines))
}

fn read_reply<T: DeserializeOwned>(reader: &mut impl BufRead) -> Result<T> {
    let mut reply = String::new();
    reader.read_line(&mut reply).context("reading the agent's reply")?;
    if reply.is_empty() {
        bail!("the agent closed the connection without replying");
    }
    let reply: Reply<T> =
        serde_json::from_str(&reply).context("the agent's reply is not a reply of this version")?;
    match (reply.result, reply.error) {
        (Some(result), _) if reply.ok => Ok(result),
        (_, Some(error)) => Err(error).context("agent"),
        _ => bail!("agent: a reply with neither a result nor an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_answers_are_retried_until_the_agent_has_room() {
        use crate::api::PortsReply;
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!("datapath-control-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            // Busy twice, then an answer: as an agent at its client limit that frees up.
            for i in 0..3 {
                let (mut s, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).unwrap();
                let reply = if i < 2 {
                    serde_json::to_string(&Reply::<PortsReply>::from_result(Err(ApiError::new(
                        ErrorKind::Busy,
                        "busy",
                    ))))
                } else {
                    serde_json::to_string(&Reply::from_result(Ok(PortsReply { ports: vec![] })))
                };
                s.write_all(format!("{}\n", reply.unwrap()).as_bytes()).unwrap();
            }
        });
        let r: PortsReply = query(&path, &Request::Ports {}).unwrap();
        assert!(r.ports.is_empty());
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn requests_parse() {
        assert_eq!(parse_request(r#"{"cmd":"ports"}"#), Ok(Request::Ports {}));
        assert_eq!(parse_request(r#"{"cmd":"fdb"}"#), Ok(Request::Fdb { network: None }));
        assert_eq!(
            parse_request(r#"{"cmd":"stats","port":"tap1"}"#),
            Ok(Request::Stats { port: Some("tap1".into()) })
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let bad = |line: &str| {
            let e = parse_request(line).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest);
            e.message
        };
        assert!(bad("not json").contains("bad request"));
        assert!(bad(r#"{"cmd":"reboot"}"#).contains("reboot"));
        assert!(bad(r#"{"cmd":"trace","port":"x"}"#).contains("frame"));
        assert!(bad(r#"{"cmd":"stats","extra":1}"#).contains("extra"));
        assert!(bad(r#"{"cmd":"ports","port":"x"}"#).contains("port"));
        assert!(bad(&"x".repeat(MAX_REQUEST + 1)).contains("longer"));
    }
}
