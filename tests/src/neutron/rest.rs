//! A small client of Neutron's REST API, as Nova and an operator use it.
//!
//! With `auth_strategy = noauth` and no `X-Project-Id` header every request is
//! admin, which the provider attributes need; resources name their project in
//! the body instead.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The project every resource the tests create belongs to.
pub const PROJECT: &str = "demo";

/// A network's segment, as an operator gives it in the provider attributes.
#[derive(Debug, Clone, Copy)]
pub enum Provider<'a> {
    /// An untagged network on a physical network.
    Flat { physnet: &'a str },
    /// An 802.1Q network on a physical network.
    Vlan { physnet: &'a str, id: u32 },
    /// A VXLAN overlay network.
    Vxlan { vni: u32 },
}

impl Provider<'_> {
    fn attributes(self) -> Value {
        match self {
            Provider::Flat { physnet } => {
                json!({"provider:network_type": "flat", "provider:physical_network": physnet})
            }
            Provider::Vlan { physnet, id } => json!({
                "provider:network_type": "vlan", "provider:physical_network": physnet,
                "provider:segmentation_id": id
            }),
            Provider::Vxlan { vni } => {
                json!({"provider:network_type": "vxlan", "provider:segmentation_id": vni})
            }
        }
    }
}

/// Neutron's REST API at one base URL (`http://127.0.0.1:<port>/v2.0`).
pub struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    /// A client of the API at `base`.
    pub fn new(base: String) -> Self {
        let agent = ureq::Agent::config_builder()
            // Neutron's error bodies say what was wrong: read them rather than stop at the status.
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Self { base, agent }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request; returns the JSON body (`Null` for an empty one), or fails
    /// with the method, the path, the status and Neutron's error message.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let sent = match (method, body) {
            ("GET", None) => self.agent.get(&url).call(),
            ("DELETE", None) => self.agent.delete(&url).call(),
            ("POST", Some(b)) => self.agent.post(&url).send_json(b),
            ("PUT", Some(b)) => self.agent.put(&url).send_json(b),
            _ => bail!("unsupported request {method} {path} (body: {})", body.is_some()),
        };
        let mut resp = sent.with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer to {method} {url}"))?;
        if !status.is_success() {
            bail!("{method} {url} answered {status}: {}", text.trim());
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {url} answered with non-JSON: {text}"))
    }

    /// POSTs `{kind: attrs}` to `/<kind>s` and returns the created `kind`.
    fn create(&self, kind: &str, attrs: Value) -> Result<Value> {
        let body = json!({ kind: attrs });
        let mut created = self.request("POST", &format!("/{kind}s"), Some(&body))?;
        let obj = created[kind].take();
        if !obj.is_object() {
            bail!("POST /{kind}s answered without a {kind}: {created}");
        }
        Ok(obj)
    }

    /// Creates a network with the given segment.
    pub fn create_network(&self, name: &str, provider: Provider) -> Result<Value> {
        let mut attrs = json!({"name": name, "project_id": PROJECT});
        merge(&mut attrs, provider.attributes());
        self.create("network", attrs)
    }

    /// Creates an IPv4 subnet on `network_id`.
    pub fn create_subnet(&self, network_id: &str, cidr: &str) -> Result<Value> {
        self.create(
            "subnet",
            json!({"network_id": network_id, "project_id": PROJECT, "ip_version": 4, "cidr": cidr}),
        )
    }

    /// Creates a port on `network_id` bound to `host`, as Nova does for a VM
    /// (`device_owner` `compute:nova`) or the DHCP agent for its own.
    pub fn create_port(&self, network_id: &str, host: &str, device_owner: &str) -> Result<Value> {
        self.create(
            "port",
            json!({
                "network_id": network_id, "project_id": PROJECT, "device_owner": device_owner,
                "device_id": format!("dev-{host}"), "binding:host_id": host
            }),
        )
    }

    /// The port `id`.
    pub fn port(&self, id: &str) -> Result<Value> {
        Ok(self.request("GET", &format!("/ports/{id}"), None)?["port"].take())
    }

    /// Updates the port `id` with `attrs`; returns the updated port.
    pub fn update_port(&self, id: &str, attrs: Value) -> Result<Value> {
        Ok(self.request("PUT", &format!("/ports/{id}"), Some(&json!({"port": attrs})))?["port"].take())
    }

    /// Deletes the port `id`.
    pub fn delete_port(&self, id: &str) -> Result<()> {
        self.request("DELETE", &format!("/ports/{id}"), None).map(drop)
    }

    /// The agents Neutron knows, of every host or of `host` only.
    pub fn agents(&self, host: Option<&str>) -> Result<Vec<Value>> {
        let path = match host {
            Some(h) => format!("/agents?host={h}"),
            None => "/agents".to_string(),
        };
        let answer = self.request("GET", &path, None)?;
        let Some(agents) = answer["agents"].as_array() else {
            bail!("GET {path} answered without agents: {answer}")
        };
        Ok(agents.clone())
    }
}

/// Adds the keys of `extra` (an object) to `into` (an object).
fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}
