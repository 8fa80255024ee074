//! Port binding by our mechanism driver: it binds `tap` ports on hosts where a
//! live agent of our type maps the port's segment, and nowhere else.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use datapath_tests::{
    neutron::{AGENT_TYPE, Neutron, Provider},
    wait_until,
};
use serde_json::{Value, json};

/// How long an agent's first report may take to show in the API.
const ALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the datapath agent reports on a node whose uplink eth2 carries `default`.
fn configurations(tunnel_types: &[&str]) -> Value {
    json!({
        "interface_mappings": {"default": "eth2"},
        "tunnel_types": tunnel_types,
        "tunneling_ip": "192.0.2.10",
        "l2_population": true,
        "devices": 0
    })
}

/// Reports an agent on `host`, then waits until the API lists it alive.
fn agent_alive(n: &Neutron, host: &str, tunnel_types: &[&str]) -> Result<Value> {
    n.report_agent(host, configurations(tunnel_types))?;
    let mut last = Vec::new();
    let alive = wait_until(ALIVE_TIMEOUT, || {
        last = n.api().agents(Some(host)).unwrap_or_default();
        std::thread::sleep(Duration::from_millis(300));
        last.iter().any(|a| a["alive"] == json!(true))
    });
    if !alive {
        bail!("no live agent on {host} after {ALIVE_TIMEOUT:?}: {last:?}\n{}", n.log_tail(30));
    }
    Ok(last.swap_remove(0))
}

/// Creates a network with a subnet and a VM port on `host`; returns the port.
fn vm_port(n: &Neutron, name: &str, provider: Provider, cidr: &str, host: &str) -> Result<Value> {
    let api = n.api();
    let net = api.create_network(name, provider).with_context(|| format!("creating network {name}"))?;
    let net_id = net["id"].as_str().context("network without id")?;
    api.create_subnet(net_id, cidr)?;
    api.create_port(net_id, host, "compute:nova")
}

fn id(port: &Value) -> &str {
    port["id"].as_str().expect("ports have an id")
}

/// Asserts `port` is bound by our driver the way Nova needs it: a tap, filtered by the agent.
fn assert_bound_by_us(n: &Neutron, port: &Value, host: &str, what: &str) {
    assert_eq!(port["binding:vif_type"], "tap", "{what}: {port:#}\n{}", n.log_tail(30));
    assert_eq!(
        port["binding:vif_details"],
        json!({"connectivity": "l2", "port_filter": true, "bound_drivers": {"0": "datapath"}}),
        "{what}: {port:#}"
    );
    assert_eq!(port["binding:vnic_type"], "normal", "{what}");
    assert_eq!(port["binding:host_id"], host, "{what}");
}

#[test]
fn server_loads_the_driver_and_binds_only_once_the_agent_is_alive() {
    let n = Neutron::start().expect("starting neutron");
    // Both processes load ML2: the API binds ports, the RPC server serves the agents.
    for log in ["rpc-server.log", "gunicorn.log"] {
        let path = n.log_paths().into_iter().find(|p| p.ends_with(log)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("Registered mechanism drivers: ['datapath', 'l2population']"),
            "{} does not show our driver registered:\n{}",
            path.display(),
            n.log_tail(40)
        );
    }
    assert_eq!(n.api().agents(None).unwrap(), Vec::<Value>::new(), "a fresh server knows no agents");

    let host = "node-late";
    let port = vm_port(&n, "vlan1000", Provider::Vlan { physnet: "default", id: 1000 }, "10.10.0.0/24", host)
        .unwrap();
    assert_eq!(port["binding:vif_type"], "binding_failed", "no agent on {host} yet: {port:#}");
    assert_eq!(port["status"], "DOWN");
    let reason = format!("no agent of type {AGENT_TYPE} registered on host {host}");
    assert!(n.logs().contains(&reason), "the log does not say `{reason}`:\n{}", n.log_tail(40));

    let agent = agent_alive(&n, host, &["vxlan"]).unwrap();
    assert_eq!(agent["agent_type"], AGENT_TYPE, "{agent:#}");
    assert_eq!(agent["binary"], "datapath", "{agent:#}");
    assert_eq!(agent["configurations"]["interface_mappings"], json!({"default": "eth2"}), "{agent:#}");
    // A failed binding stays failed until the port is updated; any update retries it.
    assert_eq!(n.api().port(id(&port)).unwrap()["binding:vif_type"], "binding_failed");
    let port = n.api().update_port(id(&port), json!({"name": "retry"})).unwrap();
    assert_bound_by_us(&n, &port, host, "after the agent came up and the port was updated");
    n.api().delete_port(id(&port)).unwrap();
    let gone = n.api().port(id(&port)).unwrap_err();
    assert!(format!("{gone:#}").contains("404"), "a deleted port is still there: {gone:#}");
}

#[test]
fn ports_bind_where_a_live_agent_maps_the_segment() {
    let n = Neutron::start().expect("starting neutron");
    let (overlay, vlan_only) = ("node-a", "node-b");
    agent_alive(&n, overlay, &["vxlan"]).unwrap();
    agent_alive(&n, vlan_only, &[]).unwrap();

    let bound = [
        ("flat", Provider::Flat { physnet: "default" }, "10.1.0.0/24"),
        ("vlan1001", Provider::Vlan { physnet: "default", id: 1001 }, "10.2.0.0/24"),
        ("vxlan101", Provider::Vxlan { vni: 101 }, "10.3.0.0/24"),
    ];
    for (name, provider, cidr) in bound {
        let port = vm_port(&n, name, provider, cidr, overlay).unwrap();
        assert_bound_by_us(&n, &port, overlay, name);
        // What Nova reads back before plugging the VM.
        assert_bound_by_us(&n, &n.api().port(id(&port)).unwrap(), overlay, name);
    }

    let refused = [
        // The agents map only `default`.
        ("flat-unmapped", Provider::Flat { physnet: "unmapped" }, "10.4.0.0/24", overlay),
        ("vlan-unmapped", Provider::Vlan { physnet: "unmapped", id: 7 }, "10.5.0.0/24", overlay),
        // This agent reports no tunnel types.
        ("vxlan102", Provider::Vxlan { vni: 102 }, "10.6.0.0/24", vlan_only),
    ];
    for (name, provider, cidr, host) in refused {
        let port = vm_port(&n, name, provider, cidr, host).unwrap();
        assert_eq!(port["binding:vif_type"], "binding_failed", "{name} on {host} bound: {port:#}");
    }
    // The VLAN-only host binds what it maps.
    let port =
        vm_port(&n, "vlan1002", Provider::Vlan { physnet: "default", id: 1002 }, "10.7.0.0/24", vlan_only)
            .unwrap();
    assert_bound_by_us(&n, &port, vlan_only, "vlan1002 on the VLAN-only host");
}

/// The answer of an RPC call, which must come within 30 s.
async fn within<T>(what: &str, call: impl std::future::Future<Output = anyhow::Result<T>>) -> T {
    match tokio::time::timeout(Duration::from_secs(30), call).await {
        Ok(r) => r.unwrap_or_else(|e| panic!("{what}: {e:#}")),
        Err(_) => panic!("{what}: no answer within 30 s"),
    }
}

#[test]
fn the_agent_rpc_client_gets_details_and_sets_ports_up_on_a_real_server() {
    use datapath_user::bindings::Remote;
    use datapath_user::neutron::{plugin::Plugin, rpc::Rpc, transport::TransportUrl};
    let n = Neutron::start().expect("starting neutron");
    agent_alive(&n, "node-rpc", &[]).unwrap();
    let port =
        vm_port(&n, "vlan1003", Provider::Vlan { physnet: "default", id: 1003 }, "10.9.0.0/24", "node-rpc")
            .unwrap();
    // Through a node's namespace and its proxy to the bus, as the agents under test connect;
    // on a thread of its own, so that the API calls here stay in this namespace.
    let ns = datapath_tests::netns::Netns::new("rpcnode").unwrap();
    let _proxy = datapath_tests::neutron::BusProxy::start(&ns).unwrap();
    let url = TransportUrl::parse(&n.transport_url()).unwrap();
    let port_id = id(&port).to_string();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _inside = datapath_tests::netns::ThreadNetns::enter(&ns).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (rpc, _incoming) =
                    Rpc::start(url, datapath_user::neutron::notify::subscriptions("node-rpc"));
                rpc.wait_connected(Duration::from_secs(10)).await.unwrap();
                let p = Plugin::new(rpc, "node-rpc");
                let tap = format!("tap{}", &port_id[..11]);
                let d = within("details", p.devices_details(std::slice::from_ref(&tap))).await;
                assert_eq!(d.devices.len(), 1, "{d:?}");
                assert_eq!(d.devices[0].port_id, port_id);
                let up = within("update_device_list", p.update_device_list(std::slice::from_ref(&port_id), &[], true))
                    .await;
                assert_eq!(up.devices_up, vec![port_id.clone()], "{up:?}");
                let sg = within("security_group_info_for_devices", p.security_group_info_for_devices(std::slice::from_ref(&port_id)))
                    .await;
                // The port is in the project's default group: egress anywhere, ingress from the group.
                let info = datapath_user::neutron::secgroups::parse(&sg).unwrap();
                assert_eq!(info.refused, vec![], "{sg:#}");
                let groups = &info.ports[&port_id];
                assert_eq!(groups.len(), 1, "{sg:#}");
                let default = info.groups.iter().find(|g| g.id == groups[0]).expect("the default group");
                assert!(default.stateful);
                assert_eq!(default.rules.len(), 4, "{sg:#}");
                let from_group = default.rules.iter().filter(|r| r.remote == Remote::Group(groups[0].clone()));
                assert_eq!(from_group.count(), 2, "ingress IPv4 and IPv6 from the group: {sg:#}");
                let ip = port["fixed_ips"][0]["ip_address"].as_str().unwrap();
                let policy = datapath_user::policy::expand(
                    &datapath_user::bindings::Bindings::parse_str(
                        &serde_json::json!({"networks": [{"id": "n", "provider:network_type": "flat",
                            "provider:physical_network": "default"}], "ports": [{"id": port_id, "network_id": "n",
                            "mac_address": "fa:16:3e:00:00:01", "security_groups": groups}]}).to_string(),
                        "test",
                    )
                    .unwrap()
                    .ports[0],
                    &info.groups.iter().map(|g| (g.id.clone(), g.clone())).collect(),
                    &Default::default(),
                    &info.members,
                )
                .unwrap();
                let members: Vec<String> = policy
                    .rules
                    .iter()
                    .flat_map(|r| r.remotes.iter().map(|(a, l)| format!("{a}/{l}")))
                    .collect();
                assert!(members.contains(&format!("{ip}/32")), "the port is a member of its group: {members:?}");
            });
        })
        .join()
        .expect("the RPC thread panicked");
    });
    assert_eq!(n.api().port(id(&port)).unwrap()["status"], "ACTIVE");
}
