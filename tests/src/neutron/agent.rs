//! A live agent, as far as neutron-server can tell: one `report_state` cast in
//! oslo.messaging's envelope, published with a plain AMQP client. Only what the
//! tests need until the datapath agent speaks the RPC itself.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use lapin::{BasicProperties, Connection, ConnectionProperties, options::BasicPublishOptions};
use serde_json::{Value, json};

/// The agent type our mechanism driver binds for; the one definition is
/// `AGENT_TYPE` in neutron-driver/datapath_neutron/__init__.py.
pub const AGENT_TYPE: &str = "eBPF datapath agent";

/// Publishes `report_state` for an agent of our type on `host` with the given
/// `configurations` (interface_mappings, tunnel_types, ...) to the broker at
/// `amqp_url`. A cast, as agents send every report after their first.
pub fn report_state(amqp_url: &str, host: &str, configurations: Value) -> Result<()> {
    let message = json!({
        "method": "report_state",
        "version": "1.4",
        "args": {
            "agent_state": {"agent_state": {
                "binary": "datapath", "host": host, "topic": "N/A", "agent_type": AGENT_TYPE,
                "start_flag": true, "configurations": configurations
            }},
            "time": utc_now(),
        },
        "_unique_id": unique_id(),
        // The only context field the server needs: without it, lookups are project-scoped.
        "_context_is_admin": true,
        "_context_roles": ["admin"],
    });
    // oslo.messaging's envelope: the message is a JSON string inside the JSON body.
    let body = json!({"oslo.version": "2.0", "oslo.message": message.to_string()}).to_string();
    // Exchange `neutron` and the reports topic, which neutron-rpc-server consumes.
    publish(amqp_url, "neutron", "q-reports-plugin", body.as_bytes())
}

/// Publishes `body` as it is to `exchange` with `routing_key` (to send agents bad input).
pub fn publish(amqp_url: &str, exchange: &str, routing_key: &str, body: &[u8]) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime for AMQP")?;
    runtime.block_on(async {
        let conn = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .with_context(|| format!("connecting to {amqp_url}"))?;
        let channel = conn.create_channel().await.context("opening an AMQP channel")?;
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2);
        channel
            .basic_publish(exchange.into(), routing_key.into(), BasicPublishOptions::default(), body, props)
            .await
            .with_context(|| format!("publishing to {exchange}/{routing_key}"))?
            .await
            .with_context(|| format!("publishing to {exchange}/{routing_key}"))?;
        conn.close(200, "done".into()).await.context("closing the AMQP connection")?;
        Ok(())
    })
}

/// A message id unique per process and call, as oslo's uuid4 hex is.
fn unique_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:016x}{:08x}{:08x}", nanos as u64, std::process::id(), crate::next_id())
}

/// The time now in UTC as oslo writes it (`2026-12-01T21:49:37.046826`).
fn utc_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970");
    let (days, secs) = (now.as_secs() / 86_400, now.as_secs() % 86_400);
    // Howard Hinnant's civil_from_days: days since 1970-01-01 to a proleptic Gregorian date.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:06}", now.subsec_micros())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_now_agrees_with_date() {
        // Compared to the minute, read before and after, so a minute tick cannot fail it.
        let date = || {
            let out = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M"]).output().unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let before = date();
        let ours = super::utc_now();
        let after = date();
        assert!(ours.starts_with(&before) || ours.starts_with(&after), "{ours} vs date -u {before}");
        assert_eq!(ours.len(), "2026-12-01T21:49:37.046826".len(), "{ours}");
    }
}
