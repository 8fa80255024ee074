//! Prometheus metrics: the ports' counters and the agent's state, in the
//! OpenMetrics text format (encoded by prometheus-client), served over HTTP
//! at `metrics_address`.
//!
//! A scrape is a `metrics` request to the agent loop, like a control-socket
//! request: the loop reads the counters and renders a `Snapshot`, so all
//! state stays owned by one task. Nothing here touches the datapath: the
//! counters are per-CPU map slots that the programs write and a scrape only
//! reads. A port's series exist while the port does; a scrape after it goes
//! no longer has them.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{Method, Request as HttpRequest, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::ConstCounter,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc, oneshot},
};

use crate::{
    api::{Answer, Request},
    control::Pending,
};

/// The content type of the OpenMetrics text format, which Prometheus asks for and reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Scrapes served at once; more wait for a slot (Prometheus scrapes one at a time).
const MAX_SCRAPES: usize = 8;

/// A client that has not sent its request head by then is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// One port's counters, summed over CPUs, with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct PortSample {
    pub port_id: String,
    pub device: String,
    /// Neutron network id ("" when none).
    pub network: String,
    /// Action label (`Action::label`) -> frames.
    pub actions: BTreeMap<String, u64>,
    /// Drop reason label (`DropReason::label`) -> frames, the reasons that
    /// dropped any: 31 reasons for each of 4,000 ports would be 124,000
    /// series, mostly zeros. The node's totals have every reason.
    pub drops: BTreeMap<String, u64>,
    /// The XDP stage's actions and drops, on uplinks where it runs.
    pub xdp: Option<(BTreeMap<String, u64>, BTreeMap<String, u64>)>,
}

/// One map's fill.
#[derive(Debug, Clone, PartialEq)]
pub struct MapFill {
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
}

/// Everything one scrape exports.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub ports: Vec<PortSample>,
    /// Drop reason label -> frames dropped on this node, every reason: the
    /// ports' and those of devices the agent does not know (counter slot 0).
    pub node_drops: BTreeMap<String, u64>,
    /// Reconciliations since start.
    pub reconciles: u64,
    /// The durations of every reconciliation (the agent's histogram, shared).
    pub reconcile_seconds: Histogram,
    /// Whether the bindings in force are the source's latest (no load error).
    pub bindings_ok: bool,
    /// When bindings were last loaded without error (Unix seconds), if ever.
    pub bindings_last_good: Option<f64>,
    pub maps: Vec<MapFill>,
    /// How programs are hooked: `tcx` or `netlink`.
    pub hook: String,
    /// Uplink device -> whether its XDP stage runs (native) or not (the TC stage alone).
    pub xdp: BTreeMap<String, bool>,
    pub kernel: String,
    pub version: String,
    pub abi_version: u32,
    /// `file` or `neutron`.
    pub source: String,
    /// Monitor events the kernel did not send (over its rate, or a full ring).
    pub monitor_suppressed: u64,
    /// Monitor listeners connected.
    pub monitor_listeners: usize,
}

/// The agent's reconcile histogram: 100 µs to about 13 s, doubling.
pub fn reconcile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// How often kernel-written maps are counted: a count reads the whole map,
/// and the connection table may hold 262,144 entries.
pub const KERNEL_COUNT_EVERY: Duration = Duration::from_secs(10);

/// What the agent keeps for the metrics between scrapes.
#[derive(Debug)]
pub struct Telemetry {
    pub reconcile_seconds: Histogram,
    /// When bindings were last applied without a load error.
    pub bindings_last_good: Option<std::time::SystemTime>,
    /// The kernel-written maps' entries, and when they were counted.
    pub kernel_counts: Option<(Instant, BTreeMap<&'static str, u64>)>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self { reconcile_seconds: reconcile_histogram(), bindings_last_good: None, kernel_counts: None }
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_ports(
            &mut encoder,
            (
                "datapath_port_frames",
                "Frames a port's programs handled, by what they did with them (rx, to_local_port, to_uplink, flooded, learned, ...).",
            ),
            "action",
            |p| Some(&p.actions),
        )?;
        self.encode_ports(
            &mut encoder,
            ("datapath_port_dropped_frames", "Frames a port's programs dropped, by reason."),
            "reason",
            |p| Some(&p.drops),
        )?;
        self.encode_ports(
            &mut encoder,
            (
                "datapath_port_xdp_frames",
                "Frames an uplink's XDP stage handled, in the driver: rx, passed (on to the TC stage).",
            ),
            "action",
            |p| p.xdp.as_ref().map(|x| &x.0),
        )?;
        self.encode_ports(
            &mut encoder,
            (
                "datapath_port_xdp_dropped_frames",
                "Frames an uplink's XDP stage dropped in the driver, by reason.",
            ),
            "reason",
            |p| p.xdp.as_ref().map(|x| &x.1),
        )?;
        let mut e = encoder.encode_descriptor(
            "datapath_xdp_stage",
            "1 where an uplink's XDP stage runs in its driver, 0 where the TC stage runs alone (datapath status says why).",
            None,
            MetricType::Gauge,
        )?;
        for (device, native) in &self.xdp {
            ConstGauge::new(i64::from(*native)).encode(e.encode_family(&[("device", device.as_str())])?)?;
        }
        let mut e = encoder.encode_descriptor(
            "datapath_dropped_frames",
            "Frames dropped on this node, by reason: every port's, and those of devices the agent does not know.",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &self.node_drops {
            ConstCounter::new(*n).encode(e.encode_family(&[("reason", reason.as_str())])?)?;
        }
        let e = encoder.encode_descriptor(
            "datapath_reconciles",
            "Reconciliations of the kernel's maps with the bindings since the agent started.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.reconciles).encode(e)?;
        let e = encoder.encode_descriptor(
            "datapath_reconcile_duration_seconds",
            "How long each reconciliation took.",
            None,
            MetricType::Histogram,
        )?;
        self.reconcile_seconds.encode(e)?;
        let e = encoder.encode_descriptor(
            "datapath_bindings_ok",
            "1 when the bindings in force are the source's latest, 0 when the source's latest were refused (the last good ones stay in force).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(self.bindings_ok)).encode(e)?;
        if let Some(t) = self.bindings_last_good {
            let e = encoder.encode_descriptor(
                "datapath_bindings_last_good_load_timestamp_seconds",
                "When the agent last applied bindings that loaded without error (Unix time).",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(t).encode(e)?;
        }
        let mut e = encoder.encode_descriptor(
            "datapath_map_entries",
            "Entries in each map (kernel-written maps are counted at most every 10 s).",
            None,
            MetricType::Gauge,
        )?;
        for m in &self.maps {
            let entries = i64::try_from(m.entries).unwrap_or(i64::MAX);
            ConstGauge::new(entries).encode(e.encode_family(&[("map", m.name.as_str())])?)?;
        }
        let mut e = encoder.encode_descriptor(
            "datapath_map_capacity",
            "The most entries each map holds.",
            None,
            MetricType::Gauge,
        )?;
        for m in &self.maps {
            let capacity = i64::try_from(m.capacity).unwrap_or(i64::MAX);
            ConstGauge::new(capacity).encode(e.encode_family(&[("map", m.name.as_str())])?)?;
        }
        let e = encoder.encode_descriptor(
            "datapath_monitor_suppressed_events",
            "Monitor events the programs did not send: over the per-CPU rate, or the ring buffer full.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.monitor_suppressed).encode(e)?;
        let e = encoder.encode_descriptor(
            "datapath_monitor_listeners",
            "Clients of datapath monitor connected now.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.monitor_listeners as i64).encode(e)?;
        let mut e = encoder.encode_descriptor(
            "datapath_build",
            "The agent's build and where it runs, as labels; the value is 1.",
            None,
            MetricType::Gauge,
        )?;
        let info = [
            ("version", self.version.clone()),
            ("abi_version", self.abi_version.to_string()),
            ("kernel", self.kernel.clone()),
            ("hook", self.hook.clone()),
            ("source", self.source.clone()),
        ];
        ConstGauge::new(1i64).encode(e.encode_family(&info)?)?;
        Ok(())
    }
}

impl Snapshot {
    /// The counter family `(name, help)` of every port that `counts` has
    /// counters of, one series per entry, labelled with the port and `key`.
    fn encode_ports(
        &self,
        encoder: &mut DescriptorEncoder,
        (name, help): (&str, &str),
        key: &'static str,
        counts: impl Fn(&PortSample) -> Option<&BTreeMap<String, u64>>,
    ) -> Result<(), std::fmt::Error> {
        let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for p in &self.ports {
            for (what, n) in counts(p).into_iter().flatten() {
                let set = [
                    ("port_id", p.port_id.as_str()),
                    ("device", p.device.as_str()),
                    ("network", p.network.as_str()),
                    (key, what.as_str()),
                ];
                ConstCounter::new(*n).encode(e.encode_family(&set)?)?;
            }
        }
        Ok(())
    }
}

/// The OpenMetrics text of `snapshot`.
pub fn render(snapshot: Snapshot) -> Result<String> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).context("encoding the metrics")?;
    Ok(out)
}

/// Binds the metrics endpoint at `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listener =
        TcpListener::bind(addr).await.with_context(|| format!("binding the metrics endpoint {addr}"))?;
    log::info!("metrics at http://{}/metrics", listener.local_addr().unwrap_or(addr));
    Ok(listener)
}

/// Serves `GET /metrics` on `listener`, each scrape answered by the agent loop through `tx`.
pub async fn serve(listener: TcpListener, tx: mpsc::Sender<Pending>) -> Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Short of descriptors or buffers: the listener is fine; wait and serve again.
            Err(e) => {
                log::warn!("accepting on the metrics endpoint: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { return Ok(()) };
        let tx = tx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, tx.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                log::debug!("metrics client: {e}");
            }
            drop(slot);
        });
    }
}

async fn answer<B>(
    req: HttpRequest<B>,
    tx: mpsc::Sender<Pending>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    let text = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, text, "not found: the metrics are at /metrics\n".into()));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, text, "only GET reads /metrics\n".into()));
    }
    let started = Instant::now();
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx.send(Pending { request: Request::Metrics {}, reply: reply_tx, stream: None }).await.is_err() {
        return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, text, "the agent is stopping\n".into()));
    }
    Ok(match reply_rx.await {
        Ok(Ok(Answer::Metrics(m))) => {
            log::debug!("metrics scrape answered in {:?}", started.elapsed());
            reply(StatusCode::OK, CONTENT_TYPE, m.text)
        }
        Ok(Ok(_)) => {
            reply(StatusCode::INTERNAL_SERVER_ERROR, text, "the agent answered another request\n".into())
        }
        Ok(Err(e)) => reply(StatusCode::INTERNAL_SERVER_ERROR, text, format!("{}\n", e.message)),
        Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, text, "the agent is stopping\n".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let h = reconcile_histogram();
        h.observe(0.002);
        h.observe(0.2);
        Snapshot {
            ports: vec![
                PortSample {
                    port_id: "a0000000-0a00-4000-8000-000000000001".into(),
                    device: "tapa0000000-0a".into(),
                    network: "11111111-1111-4111-8111-111111111111".into(),
                    actions: [("rx".to_string(), 7), ("to_uplink".to_string(), 5)].into(),
                    drops: [("src_mac_spoof".to_string(), 2)].into(),
                    xdp: None,
                },
                PortSample {
                    port_id: String::new(),
                    device: "eth2".into(),
                    network: String::new(),
                    actions: [("rx".to_string(), 9)].into(),
                    drops: BTreeMap::new(),
                    xdp: Some((
                        [("rx".to_string(), 12), ("passed".to_string(), 9)].into(),
                        [("unknown_segment".to_string(), 3)].into(),
                    )),
                },
            ],
            node_drops: [("src_mac_spoof".to_string(), 3), ("malformed".to_string(), 0)].into(),
            reconciles: 3,
            reconcile_seconds: h,
            bindings_ok: true,
            bindings_last_good: Some(1_765_000_000.5),
            maps: vec![MapFill { name: "PORTS".into(), entries: 3, capacity: 4096 }],
            hook: "tcx".into(),
            xdp: [("eth2".to_string(), true), ("eth3".to_string(), false)].into(),
            kernel: "6.18.0".into(),
            version: "0.1.0".into(),
            abi_version: 3,
            source: "file".into(),
            monitor_suppressed: 4,
            monitor_listeners: 1,
        }
    }

    #[test]
    fn the_exposition_has_every_family_with_its_labels_and_values() {
        let text = render(snapshot()).unwrap();
        let port = r#"port_id="a0000000-0a00-4000-8000-000000000001",device="tapa0000000-0a",network="11111111-1111-4111-8111-111111111111""#;
        for line in [
            "# TYPE datapath_port_frames counter".to_string(),
            format!("datapath_port_frames_total{{{port},action=\"rx\"}} 7"),
            format!("datapath_port_frames_total{{{port},action=\"to_uplink\"}} 5"),
            format!("datapath_port_dropped_frames_total{{{port},reason=\"src_mac_spoof\"}} 2"),
            "datapath_dropped_frames_total{reason=\"src_mac_spoof\"} 3".into(),
            r#"datapath_port_xdp_frames_total{port_id="",device="eth2",network="",action="passed"} 9"#.into(),
            r#"datapath_port_xdp_dropped_frames_total{port_id="",device="eth2",network="",reason="unknown_segment"} 3"#.into(),
            "datapath_xdp_stage{device=\"eth2\"} 1".into(),
            "datapath_xdp_stage{device=\"eth3\"} 0".into(),
            "datapath_dropped_frames_total{reason=\"malformed\"} 0".into(),
            "datapath_reconciles_total 3".into(),
            "datapath_reconcile_duration_seconds_count 2".into(),
            "datapath_reconcile_duration_seconds_bucket{le=\"0.0032\"} 1".into(),
            "datapath_bindings_ok 1".into(),
            "datapath_bindings_last_good_load_timestamp_seconds 1765000000.5".into(),
            "datapath_map_entries{map=\"PORTS\"} 3".into(),
            "datapath_map_capacity{map=\"PORTS\"} 4096".into(),
            "datapath_build{version=\"0.1.0\",abi_version=\"3\",kernel=\"6.18.0\",hook=\"tcx\",source=\"file\"} 1"
                .into(),
            "datapath_monitor_suppressed_events_total 4".into(),
            "datapath_monitor_listeners 1".into(),
            "# EOF".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
    }

    #[test]
    fn a_port_that_went_has_no_series() {
        let mut s = snapshot();
        s.ports.clear();
        let text = render(s).unwrap();
        assert!(!text.contains("tapa0000000-0a"), "{text}");
        assert!(text.contains("# TYPE datapath_port_frames counter"), "the family stays, empty: {text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = snapshot();
        s.ports[0].device = "a\"b\\c\nd".into();
        let text = render(s).unwrap();
        assert!(text.contains(r#"device="a\"b\\c\nd""#), "{text}");
    }
}
