//! QoS policies as the bindings carry them, in the shape
//! `GET /v2.0/qos/policies` returns (each policy with its `rules`), checked
//! as neutron-server checks a new rule: a rule it would reject is refused
//! alone, with the reason, and its policy keeps the rest.

use serde_json::Value;

use super::Refusal;

/// Which traffic a rule is about, as Neutron sees it from the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QosDirection {
    /// What the VM sends.
    Egress,
    /// What the VM receives.
    Ingress,
    /// Both (`minimum_packet_rate` only).
    Any,
}

/// One accepted rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QosRule {
    /// A bandwidth cap: kbit/s, and a burst in kbit (0: Neutron's default, 80 % of the rate).
    BandwidthLimit { direction: QosDirection, max_kbps: u64, max_burst_kbps: u64 },
    /// A packet-rate cap: kilo-packets/s, and a burst in kilo-packets (0: 80 % of the rate).
    PacketRateLimit { direction: QosDirection, max_kpps: u64, max_burst_kpps: u64 },
    /// The DSCP the VM's IP packets leave with.
    DscpMarking { dscp_mark: u8 },
    /// A placement hint for Nova (kbit/s): reported, not enforced.
    MinimumBandwidth { direction: QosDirection, min_kbps: u64 },
    /// A placement hint for Nova (kpps): reported, not enforced.
    MinimumPacketRate { direction: QosDirection, min_kpps: u64 },
}

/// A QoS policy with its accepted rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QosPolicy {
    pub id: String,
    pub name: String,
    pub rules: Vec<QosRule>,
}

/// The DSCP values Neutron accepts (`neutron_lib.constants.VALID_DSCP_MARKS`).
pub const VALID_DSCP_MARKS: [u8; 21] =
    [0, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 46, 48, 56];

/// Neutron's bound on rates and bursts (a 32-bit signed integer in its database).
const MAX_VALUE: u64 = i32::MAX as u64;

/// Reads the `qos_policies` list: a broken policy is refused whole, a broken rule alone.
pub fn read_qos_policies(list: &[Value], refused: &mut Vec<Refusal>) -> Vec<QosPolicy> {
    let mut out: Vec<QosPolicy> = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let id = entry.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
        let what = id.map_or_else(|| format!("qos_policies[{i}]"), |id| format!("qos policy {id}"));
        let Some(id) = id else {
            refused.push(Refusal { what, reason: "id is missing or not a string".into() });
            continue;
        };
        if out.iter().any(|p| p.id == id) {
            refused.push(Refusal { what, reason: "duplicate id: an earlier policy has the same id".into() });
            continue;
        }
        let name = match entry.get("name") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                refused.push(Refusal { what, reason: format!("name must be a string, not {other}") });
                continue;
            }
        };
        let rules = match entry.get("rules") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(r)) => r.as_slice(),
            Some(other) => {
                refused.push(Refusal { what, reason: format!("rules must be an array, not {other}") });
                continue;
            }
        };
        let mut accepted: Vec<QosRule> = Vec::new();
        for (j, r) in rules.iter().enumerate() {
            match rule_from(r).and_then(|rule| unique(&accepted, rule)) {
                Ok(rule) => accepted.push(rule),
                Err(reason) => {
                    let rid =
                        r.get("id").and_then(Value::as_str).map_or(String::new(), |s| format!(" ({s})"));
                    refused.push(Refusal { what: what.clone(), reason: format!("rules[{j}]{rid}: {reason}") })
                }
            }
        }
        out.push(QosPolicy { id: id.to_string(), name, rules: accepted });
    }
    out
}

/// Neutron allows one rule of each type (and direction) in a policy.
fn unique(accepted: &[QosRule], rule: QosRule) -> Result<QosRule, String> {
    let key = |r: &QosRule| match r {
        QosRule::BandwidthLimit { direction, .. } => (0, Some(*direction)),
        QosRule::PacketRateLimit { direction, .. } => (1, Some(*direction)),
        QosRule::DscpMarking { .. } => (2, None),
        QosRule::MinimumBandwidth { direction, .. } => (3, Some(*direction)),
        QosRule::MinimumPacketRate { direction, .. } => (4, Some(*direction)),
    };
    if accepted.iter().any(|r| key(r) == key(&rule)) {
        return Err("the policy already has a rule of this type and direction".into());
    }
    Ok(rule)
}

fn rule_from(v: &Value) -> Result<QosRule, String> {
    let obj = v.as_object().ok_or_else(|| format!("the rule is {v}, not an object"))?;
    let ty = obj.get("type").and_then(Value::as_str).ok_or("type is missing or not a string")?;
    let direction = |any_ok: bool| -> Result<QosDirection, String> {
        match obj.get("direction") {
            None | Some(Value::Null) => Ok(QosDirection::Egress),
            Some(Value::String(s)) if s == "egress" => Ok(QosDirection::Egress),
            Some(Value::String(s)) if s == "ingress" => Ok(QosDirection::Ingress),
            Some(Value::String(s)) if s == "any" && any_ok => Ok(QosDirection::Any),
            Some(other) => Err(format!(
                "direction {other} is not {}",
                if any_ok { "\"egress\", \"ingress\" or \"any\"" } else { "\"egress\" or \"ingress\"" }
            )),
        }
    };
    let value = |key: &str, required: bool| -> Result<u64, String> {
        match obj.get(key) {
            None | Some(Value::Null) if !required => Ok(0),
            None | Some(Value::Null) => Err(format!("{key} is missing")),
            Some(v) => match v.as_u64() {
                Some(n) if n <= MAX_VALUE => Ok(n),
                _ => Err(format!("{key} {v} is not an integer in 0..={MAX_VALUE}")),
            },
        }
    };
    match ty {
        "bandwidth_limit" => Ok(QosRule::BandwidthLimit {
            direction: direction(false)?,
            max_kbps: value("max_kbps", true)?,
            max_burst_kbps: value("max_burst_kbps", false)?,
        }),
        "packet_rate_limit" => Ok(QosRule::PacketRateLimit {
            direction: direction(false)?,
            max_kpps: value("max_kpps", true)?,
            max_burst_kpps: value("max_burst_kpps", false)?,
        }),
        "dscp_marking" => {
            let mark = value("dscp_mark", true)?;
            match VALID_DSCP_MARKS.iter().find(|m| u64::from(**m) == mark) {
                Some(m) => Ok(QosRule::DscpMarking { dscp_mark: *m }),
                None => {
                    Err(format!("dscp_mark {mark} is not one of Neutron's valid marks {VALID_DSCP_MARKS:?}"))
                }
            }
        }
        "minimum_bandwidth" => {
            Ok(QosRule::MinimumBandwidth { direction: direction(false)?, min_kbps: value("min_kbps", true)? })
        }
        "minimum_packet_rate" => {
            Ok(QosRule::MinimumPacketRate { direction: direction(true)?, min_kpps: value("min_kpps", true)? })
        }
        other => Err(format!(
            "type {other:?} is not a QoS rule type (bandwidth_limit, packet_rate_limit, dscp_marking, \
             minimum_bandwidth, minimum_packet_rate)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(v: Value) -> (Vec<QosPolicy>, Vec<Refusal>) {
        let mut refused = Vec::new();
        let p = read_qos_policies(v.as_array().unwrap(), &mut refused);
        (p, refused)
    }

    #[test]
    fn every_rule_type_parses_with_neutrons_defaults() {
        let (p, refused) = read(json!([{"id": "q1", "name": "gold", "rules": [
            {"id": "r1", "type": "bandwidth_limit", "max_kbps": 100000, "max_burst_kbps": 10000, "direction": "ingress"},
            {"type": "bandwidth_limit", "max_kbps": 2000},
            {"type": "packet_rate_limit", "max_kpps": 50, "direction": "egress"},
            {"type": "dscp_marking", "dscp_mark": 46},
            {"type": "minimum_bandwidth", "min_kbps": 1000},
            {"type": "minimum_packet_rate", "min_kpps": 10, "direction": "any"}]}]));
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(p[0].name, "gold");
        assert_eq!(
            p[0].rules,
            vec![
                QosRule::BandwidthLimit {
                    direction: QosDirection::Ingress,
                    max_kbps: 100000,
                    max_burst_kbps: 10000
                },
                QosRule::BandwidthLimit {
                    direction: QosDirection::Egress,
                    max_kbps: 2000,
                    max_burst_kbps: 0
                },
                QosRule::PacketRateLimit { direction: QosDirection::Egress, max_kpps: 50, max_burst_kpps: 0 },
                QosRule::DscpMarking { dscp_mark: 46 },
                QosRule::MinimumBandwidth { direction: QosDirection::Egress, min_kbps: 1000 },
                QosRule::MinimumPacketRate { direction: QosDirection::Any, min_kpps: 10 },
            ]
        );
    }

    #[test]
    fn a_bad_rule_is_refused_alone_and_a_bad_policy_whole() {
        let (p, refused) = read(json!([
            {"id": "q1", "rules": [
                {"id": "bad", "type": "dscp_marking", "dscp_mark": 7},
                {"type": "bandwidth_limit", "max_kbps": -1},
                {"type": "bandwidth_limit", "max_kbps": 5, "direction": "sideways"},
                {"type": "packet_rate_limit", "max_kpps": 5, "direction": "any"},
                {"type": "shaping"},
                {"type": "bandwidth_limit"},
                {"type": "bandwidth_limit", "max_kbps": 1000},
                {"type": "bandwidth_limit", "max_kbps": 2000}]},
            {"id": "q1", "rules": []},
            {"name": "no id"},
            {"id": "q2", "rules": {}}]));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].rules.len(), 1, "only the first 1000 kbit/s egress limit stays");
        let reasons: Vec<String> = refused.iter().map(|r| format!("{}: {}", r.what, r.reason)).collect();
        let want = [
            "qos policy q1: rules[0] (bad): dscp_mark 7 is not one of Neutron's valid marks",
            "qos policy q1: rules[1]: max_kbps -1 is not an integer in 0..=2147483647",
            "qos policy q1: rules[2]: direction \"sideways\" is not \"egress\" or \"ingress\"",
            "qos policy q1: rules[3]: direction \"any\" is not \"egress\" or \"ingress\"",
            "qos policy q1: rules[4]: type \"shaping\" is not a QoS rule type",
            "qos policy q1: rules[5]: max_kbps is missing",
            "qos policy q1: rules[7]: the policy already has a rule of this type and direction",
            "qos policy q1: duplicate id",
            "qos_policies[2]: id is missing",
            "qos policy q2: rules must be an array",
        ];
        assert_eq!(reasons.len(), want.len(), "{reasons:#?}");
        for (got, want) in reasons.iter().zip(want) {
            assert!(got.starts_with(want), "{got}\n  does not start with\n{want}");
        }
    }
}
