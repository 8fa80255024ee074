//! The Neutron RPC client against a real RabbitMQ on 127.0.0.1:5672, one vhost per test.

use anyhow::{Context, Result, bail};
use datapath_user::neutron::envelope::{decode_request, encode_reply, new_id};
use datapath_user::neutron::notify::{self, Notification};
use datapath_user::neutron::plugin;
use datapath_user::neutron::rpc::{Incoming, LinkEvent, Rpc, Subscription};
use datapath_user::neutron::transport::TransportUrl;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

const WAIT: Duration = Duration::from_secs(20);

fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let out = Command::new("rabbitmqctl").args(args).output().context("running rabbitmqctl")?;
    if !out.status.success() {
        bail!("rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A vhost of its own, removed on drop (also after a failed assertion), so tests run in parallel.
struct Vhost(String);

impl Vhost {
    fn new() -> Self {
        datapath_tests::neutron::ensure_services().expect("starting RabbitMQ");
        let name = format!("dp-test-{}", new_id());
        rabbitmqctl(&["add_vhost", &name]).expect("creating a vhost (is rabbitmq-server running?)");
        let v = Self(name);
        rabbitmqctl(&["set_permissions", "-p", &v.0, "guest", ".*", ".*", ".*"]).expect("granting guest");
        v
    }

    fn url(&self) -> TransportUrl {
        TransportUrl::parse(&format!("rabbit://guest:guest@127.0.0.1:5672/{}", self.0)).unwrap()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["delete_vhost", &self.0]) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

async fn client(v: &Vhost, subs: Vec<Subscription>) -> (Rpc, UnboundedReceiver<Incoming>) {
    let (rpc, rx) = Rpc::start(v.url(), subs);
    rpc.wait_connected(WAIT).await.unwrap();
    (rpc, rx)
}

async fn next(rx: &mut UnboundedReceiver<Incoming>) -> Incoming {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("no message in time").expect("channel closed")
}

/// A stand-in for neutron-server on `topic`: answers `echo` with its args after `delay_ms`,
/// `boom` with a NetworkNotFound failure, and ignores `silent`.
async fn responder(v: &Vhost, topic: &str) -> Rpc {
    let (srv, mut rx) = client(v, vec![Subscription::Topic { routing_key: topic.into() }]).await;
    let s = srv.clone();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let req = decode_request(&m.body).unwrap();
            assert_eq!(m.exchange, "neutron");
            let (Some(msg_id), Some(reply_q)) = (req.msg_id.clone(), req.reply_q.clone()) else { continue };
            let reply = match req.method.as_str() {
                "echo" => encode_reply(&msg_id, Ok(req.args.clone())),
                "boom" => encode_reply(&msg_id, Err(("NetworkNotFound", "Network n1 could not be found."))),
                "get_devices_details_list_and_failed_devices" => {
                    encode_reply(&msg_id, Ok(fake_details(&req.args)))
                }
                "update_device_list" => encode_reply(
                    &msg_id,
                    Ok(json!({"devices_up": req.args["devices_up"], "failed_devices_up": [],
                              "devices_down": [], "failed_devices_down": []})),
                ),
                "report_state" if req.args["agent_state"]["agent_state"]["start_flag"] == true => {
                    encode_reply(&msg_id, Ok(json!("new")))
                }
                _ => continue,
            };
            let delay = req.args["delay_ms"].as_u64().unwrap_or(0);
            let s = s.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                s.publish("", &reply_q, &reply).await.unwrap();
            });
        }
    });
    srv
}

/// Like neutron 29: a tap name is not found (it matches port id prefixes), a prefix is.
fn fake_details(args: &Value) -> Value {
    let devices: Vec<Value> = args["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| match d.as_str().unwrap() {
            name if name.starts_with("tap") => json!({"device": name}),
            name => json!({"device": name, "network_id": "n1", "port_id": format!("{name}-0000"),
                           "mac_address": "fa:16:3e:10:d1:75", "admin_state_up": true, "network_type": "vxlan",
                           "segmentation_id": 458, "physical_network": null, "mtu": 1450, "fixed_ips": [],
                           "device_owner": "compute:nova", "allowed_address_pairs": [], "port_security_enabled": true}),
        })
        .collect();
    json!({"devices": devices, "failed_devices": []})
}

#[tokio::test]
async fn plugin_calls_round_trip() {
    let v = Vhost::new();
    let _srv = responder(&v, plugin::PLUGIN_TOPIC).await;
    let _rep = responder(&v, plugin::REPORTS_TOPIC).await;
    let (rpc, _) = client(&v, vec![]).await;
    let p = plugin::Plugin::new(rpc, "node0");
    let state = plugin::AgentState {
        host: "node0".into(),
        binary: "neutron-ebpfdp-agent".into(),
        interface_mappings: Default::default(),
        tunneling_ip: None,
        tunnel_types: vec![],
        devices: 0,
        uuid: new_id(),
    };
    assert_eq!(p.report_state(&state, true).await.unwrap(), "new");
    let d = p.devices_details(&["tapda64417a-c3".into()]).await.unwrap();
    assert_eq!(d.refused, vec![]);
    assert_eq!(
        (d.devices[0].port_id.as_str(), d.devices[0].segmentation_id),
        ("da64417a-c3-0000", Some(458))
    );
    let r = p.update_device_list(&["tapda64417a-c3".into()], &[], false).await.unwrap();
    assert_eq!(r.devices_up, vec!["tapda64417a-c3"]);
}

#[tokio::test]
async fn call_is_answered_through_the_reply_queue() {
    let v = Vhost::new();
    let _srv = responder(&v, "q-plugin").await;
    let (rpc, _) = client(&v, vec![]).await;
    let r = rpc.call("q-plugin", "echo", json!({"x": 1}), "1.9", WAIT).await.unwrap();
    assert_eq!(r, json!({"x": 1}));
    // The reply queue carries oslo's flags, so a neutron-server can reply to it.
    let q = rabbitmqctl(&["list_queues", "-p", &v.0, "name", "durable", "auto_delete", "arguments"]).unwrap();
    let line = q.lines().find(|l| l.starts_with("reply_")).expect("reply queue");
    assert!(
        line.contains("false\tfalse") && line.contains("x-expires") && line.contains("1800000"),
        "{line}"
    );
}

#[tokio::test]
async fn concurrent_calls_get_their_own_replies() {
    let v = Vhost::new();
    let _srv = responder(&v, "q-plugin").await;
    let (rpc, _) = client(&v, vec![]).await;
    // Later calls answered first: matching must go by _msg_id, not by order.
    let calls =
        (0..8u64).map(|i| {
            let rpc = rpc.clone();
            async move {
                rpc.call("q-plugin", "echo", json!({"i": i, "delay_ms": 400 - i * 50}), "1.0", WAIT).await
            }
        });
    let results = futures_join(calls.collect()).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap()["i"], i as u64);
    }
}

async fn futures_join<F: std::future::Future<Output = Result<Value>> + Send + 'static>(
    fs: Vec<F>,
) -> Vec<Result<Value>> {
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn remote_failure_names_class_and_message() {
    let v = Vhost::new();
    let _srv = responder(&v, "q-plugin").await;
    let (rpc, _) = client(&v, vec![]).await;
    let e = format!("{:#}", rpc.call("q-plugin", "boom", json!({}), "1.0", WAIT).await.unwrap_err());
    assert!(e.contains("NetworkNotFound") && e.contains("Network n1 could not be found"), "{e}");
}

#[tokio::test]
async fn timeout_names_method_and_topic() {
    let v = Vhost::new();
    let _srv = responder(&v, "q-plugin").await;
    let (rpc, _) = client(&v, vec![]).await;
    let e = format!(
        "{:#}",
        rpc.call("q-plugin", "silent", json!({}), "1.0", Duration::from_millis(500)).await.unwrap_err()
    );
    assert!(e.contains("silent") && e.contains("q-plugin") && e.contains("no reply"), "{e}");
}

#[tokio::test]
async fn cast_reaches_the_server_topic() {
    let v = Vhost::new();
    let (_srv, mut rx) =
        client(&v, vec![Subscription::Topic { routing_key: "q-reports-plugin".into() }]).await;
    let (rpc, _) = client(&v, vec![]).await;
    rpc.cast("q-reports-plugin", "report_state", json!({"time": "now"}), "1.4").await.unwrap();
    let req = decode_request(&next(&mut rx).await.body).unwrap();
    assert_eq!((req.method.as_str(), req.version.as_deref()), ("report_state", Some("1.4")));
    assert_eq!((req.msg_id, req.args), (None, json!({"time": "now"})));
}

#[tokio::test]
async fn fanout_and_host_topic_notifications_arrive() {
    let v = Vhost::new();
    let (_agent, mut rx) = client(&v, notify::subscriptions("node0")).await;
    let (server, _) = client(&v, vec![]).await;
    server
        .fanout_cast("q-agent-notifier-port-delete", "port_delete", json!({"port_id": "p1"}), "1.0")
        .await
        .unwrap();
    let m = next(&mut rx).await;
    assert_eq!(m.exchange, "q-agent-notifier-port-delete_fanout");
    assert_eq!(notify::decode(&m).unwrap(), Notification::PortDelete { port_id: "p1".into() });
    server
        .cast(
            "q-agent-notifier-l2population-update.node0",
            "add_fdb_entries",
            json!({"fdb_entries": {}}),
            "1.0",
        )
        .await
        .unwrap();
    let m = next(&mut rx).await;
    assert_eq!(decode_request(&m.body).unwrap().method, "add_fdb_entries");
    // Another host's l2pop casts are not ours.
    server
        .cast("q-agent-notifier-l2population-update.node1", "add_fdb_entries", json!({}), "1.0")
        .await
        .unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), rx.recv()).await.is_err());
}

#[tokio::test]
async fn reconnects_and_redeclares_after_the_broker_drops_us() {
    let v = Vhost::new();
    let subs = vec![Subscription::Fanout { topic: "q-agent-notifier-network-delete".into() }];
    let (agent, mut rx) = client(&v, subs).await;
    let mut events = agent.events();
    rabbitmqctl(&["close_all_connections", "--vhost", &v.0, "test: dropping the link"]).unwrap();
    let mut saw_down = false;
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.expect("no link event").unwrap() {
            LinkEvent::Disconnected(why) => {
                saw_down = true;
                let e = format!(
                    "{:#}",
                    agent
                        .call("q-plugin", "echo", json!({}), "1.0", Duration::from_secs(2))
                        .await
                        .unwrap_err()
                );
                assert!(e.contains("not connected") || e.contains("lost"), "{e}: {why}");
            }
            LinkEvent::Connected { reconnect } => {
                assert!(reconnect && saw_down);
                break;
            }
        }
    }
    assert!(agent.status().connected);
    // Auto-delete queues vanished with the old connection; this only arrives if they were re-declared.
    let (server, _) = client(&v, vec![]).await;
    server
        .fanout_cast("q-agent-notifier-network-delete", "network_delete", json!({"network_id": "n1"}), "1.0")
        .await
        .unwrap();
    assert_eq!(decode_request(&next(&mut rx).await.body).unwrap().args["network_id"], "n1");
    let _srv = responder(&v, "q-plugin").await;
    assert_eq!(agent.call("q-plugin", "echo", json!({"a": 2}), "1.0", WAIT).await.unwrap(), json!({"a": 2}));
}

#[tokio::test]
async fn unreachable_broker_fails_fast_with_the_reason() {
    let url = TransportUrl::parse("rabbit://guest:guest@127.0.0.1:1/").unwrap();
    let (rpc, _) = Rpc::start(url, vec![]);
    let e = format!("{:#}", rpc.wait_connected(Duration::from_secs(2)).await.unwrap_err());
    assert!(e.contains("127.0.0.1:1"), "{e}");
    let e =
        format!("{:#}", rpc.cast("q-reports-plugin", "report_state", json!({}), "1.4").await.unwrap_err());
    assert!(e.contains("not connected") && e.contains("report_state"), "{e}");
}
