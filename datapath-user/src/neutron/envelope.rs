//! The oslo.messaging 2.0 envelope: calls, casts and replies as neutron-server writes and reads them.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::io::Read;

/// A random 32-hex-digit id, like Python's `uuid4().hex`.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    // /dev/urandom never fails on Linux once open; a failure here means a broken system.
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).expect("reading /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The outer JSON object on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct Outer {
    #[serde(rename = "oslo.version")]
    version: String,
    #[serde(rename = "oslo.message")]
    message: String,
}

/// A decoded request: a call when `msg_id` and `reply_q` are set, else a cast.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Remote method name.
    pub method: String,
    /// Keyword arguments.
    pub args: Value,
    /// Requested API version, if any.
    pub version: Option<String>,
    /// Call id the reply must carry.
    pub msg_id: Option<String>,
    /// Queue the reply goes to (on the default exchange).
    pub reply_q: Option<String>,
    /// Message id used by oslo for duplicate detection.
    pub unique_id: Option<String>,
}

/// A failure as oslo serializes a remote exception.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Failure {
    /// Exception class, e.g. `NoSuchMethod`.
    pub class: String,
    /// Module of the exception class.
    #[serde(default)]
    pub module: String,
    /// The exception's message.
    #[serde(default)]
    pub message: String,
}

/// A decoded reply to a call.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The `_msg_id` of the call this answers.
    pub msg_id: String,
    /// The result, or the failure the server raised.
    pub outcome: std::result::Result<Value, Failure>,
    /// Whether this is the last reply message for the call.
    pub ending: bool,
}

/// Context keys neutron needs: without `_context_is_admin` its queries are project-scoped and fail.
fn context(map: &mut Map<String, Value>) {
    map.insert("_context_is_admin".into(), json!(true));
    map.insert("_context_roles".into(), json!(["admin"]));
    map.insert("_context_request_id".into(), json!(format!("req-{}", new_id())));
    map.insert("_context_project_id".into(), Value::Null);
    map.insert("_context_user_id".into(), Value::Null);
    map.insert("_context_tenant_id".into(), Value::Null);
}

fn wrap(inner: &Value) -> Vec<u8> {
    let outer = Outer { version: "2.0".into(), message: inner.to_string() };
    serde_json::to_vec(&outer).expect("serializing strings cannot fail")
}

fn base(method: &str, args: Value, version: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("method".into(), json!(method));
    m.insert("args".into(), args);
    m.insert("version".into(), json!(version));
    m.insert("_unique_id".into(), json!(new_id()));
    context(&mut m);
    m
}

/// Encodes a call; `timeout_s` is what oslo puts into `_timeout` (it is informative only).
pub fn encode_call(
    method: &str,
    args: Value,
    version: &str,
    msg_id: &str,
    reply_q: &str,
    timeout_s: Option<u64>,
) -> Vec<u8> {
    let mut m = base(method, args, version);
    m.insert("_msg_id".into(), json!(msg_id));
    m.insert("_reply_q".into(), json!(reply_q));
    m.insert("_timeout".into(), json!(timeout_s));
    wrap(&Value::Object(m))
}

/// Encodes a cast (no reply expected).
pub fn encode_cast(method: &str, args: Value, version: &str) -> Vec<u8> {
    wrap(&Value::Object(base(method, args, version)))
}

/// Encodes a reply the way neutron-server does; used by test responders.
pub fn encode_reply(msg_id: &str, outcome: std::result::Result<Value, (&str, &str)>) -> Vec<u8> {
    let (result, failure) = match outcome {
        Ok(v) => (v, Value::Null),
        Err((class, message)) => (
            Value::Null,
            json!(
                json!({"class": class, "module": "oslo_messaging.rpc.dispatcher", "message": message,
                       "tb": [], "args": [message], "kwargs": {}})
                .to_string()
            ),
        ),
    };
    wrap(&json!({"result": result, "failure": failure, "ending": true,
                 "_msg_id": msg_id, "_unique_id": new_id()}))
}

/// Unwraps the envelope into the inner JSON object.
fn unwrap(body: &[u8]) -> Result<Map<String, Value>> {
    let text = std::str::from_utf8(body).context("message body is not UTF-8")?;
    let outer: Outer = serde_json::from_str(text).with_context(|| {
        format!("not an oslo 2.0 envelope (need oslo.version and oslo.message): {}", excerpt(text))
    })?;
    if outer.version != "2.0" {
        bail!("unsupported oslo.version {:?} (only 2.0)", outer.version);
    }
    match serde_json::from_str(&outer.message)
        .with_context(|| format!("oslo.message is not JSON: {}", excerpt(&outer.message)))?
    {
        Value::Object(m) => Ok(m),
        other => bail!("oslo.message is not a JSON object: {}", excerpt(&other.to_string())),
    }
}

/// The start of a bad input, for error messages that say what was received.
pub fn excerpt(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn opt_str(m: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => bail!("{key} is not a string: {v}"),
    }
}

/// Decodes a call or cast.
pub fn decode_request(body: &[u8]) -> Result<Request> {
    let m = unwrap(body)?;
    let method = opt_str(&m, "method")?.context("request has no method")?;
    let args = m.get("args").cloned().unwrap_or_else(|| json!({}));
    if !args.is_object() {
        bail!("args of {method} is not an object: {}", excerpt(&args.to_string()));
    }
    Ok(Request {
        version: opt_str(&m, "version")?,
        msg_id: opt_str(&m, "_msg_id")?,
        reply_q: opt_str(&m, "_reply_q")?,
        unique_id: opt_str(&m, "_unique_id")?,
        method,
        args,
    })
}

/// Decodes a reply; a `failure` becomes `Err(Failure)` in `outcome`.
pub fn decode_reply(body: &[u8]) -> Result<Reply> {
    let m = unwrap(body)?;
    let msg_id = opt_str(&m, "_msg_id")?.context("reply has no _msg_id")?;
    let ending = m.get("ending").and_then(Value::as_bool).unwrap_or(false);
    let outcome = match m.get("failure") {
        None | Some(Value::Null) => Ok(m.get("result").cloned().unwrap_or(Value::Null)),
        Some(Value::String(f)) => Err(serde_json::from_str::<Failure>(f).with_context(|| {
            format!("reply {msg_id}: failure is not a serialized exception: {}", excerpt(f))
        })?),
        Some(v) => bail!("reply {msg_id}: failure is neither null nor a string: {}", excerpt(&v.to_string())),
    };
    Ok(Reply { msg_id, outcome, ending })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(inner: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"oslo.version": "2.0", "oslo.message": inner})).unwrap()
    }

    #[test]
    fn call_has_the_fields_neutron_needs() {
        let b = encode_call("report_state", json!({"time": "t"}), "1.4", "m1", "reply_q1", Some(30));
        let outer: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(outer["oslo.version"], "2.0");
        let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["method"], "report_state");
        assert_eq!(inner["version"], "1.4");
        assert_eq!(inner["_msg_id"], "m1");
        assert_eq!(inner["_reply_q"], "reply_q1");
        assert_eq!(inner["_timeout"], 30);
        assert_eq!(inner["_context_is_admin"], true);
        assert_eq!(inner["_unique_id"].as_str().unwrap().len(), 32);
        assert!(inner.get("namespace").is_none(), "namespace makes neutron 29 answer UnsupportedVersion");
        let r = decode_request(&b).unwrap();
        assert_eq!(r.msg_id.as_deref(), Some("m1"));
        assert_eq!(r.args, json!({"time": "t"}));
    }

    #[test]
    fn cast_has_no_reply_fields() {
        let r = decode_request(&encode_cast("report_state", json!({}), "1.4")).unwrap();
        assert_eq!((r.msg_id, r.reply_q), (None, None));
    }

    #[test]
    fn captured_notification() {
        let b = env(
            r#"{"method":"port_delete","args":{"port_id":"6009"},"version":"1.0","_unique_id":"ab","_context_is_admin":true}"#,
        );
        let r = decode_request(&b).unwrap();
        assert_eq!(r.method, "port_delete");
        assert_eq!(r.args["port_id"], "6009");
        assert_eq!(r.version.as_deref(), Some("1.0"));
    }

    #[test]
    fn captured_replies() {
        let ok = env(
            r#"{"result": "new", "failure": null, "ending": true, "_msg_id": "3e6d", "_unique_id": "x"}"#,
        );
        let r = decode_reply(&ok).unwrap();
        assert_eq!(r, Reply { msg_id: "3e6d".into(), outcome: Ok(json!("new")), ending: true });
        let failure = json!({"class": "NoSuchMethod", "module": "oslo_messaging.rpc.dispatcher",
                             "message": "Endpoint does not support RPC method nope", "tb": [], "args": [], "kwargs": {}});
        let bad =
            env(&json!({"result": null, "failure": failure.to_string(), "ending": true, "_msg_id": "9"})
                .to_string());
        let f = decode_reply(&bad).unwrap().outcome.unwrap_err();
        assert_eq!(f.class, "NoSuchMethod");
        assert!(f.message.contains("nope"));
        let round = decode_reply(&encode_reply("7", Err(("NetworkNotFound", "gone")))).unwrap();
        assert_eq!(round.outcome.unwrap_err().class, "NetworkNotFound");
    }

    #[test]
    fn malformed_inputs_say_what() {
        let cases: [(&[u8], &str); 7] = [
            (b"\xff\xfe", "UTF-8"),
            (b"{\"method\":\"x\"}", "oslo 2.0 envelope"),
            (br#"{"oslo.version":"1.0","oslo.message":"{}"}"#, "1.0"),
            (br#"{"oslo.version":"2.0","oslo.message":"{nope"}"#, "{nope"),
            (br#"{"oslo.version":"2.0","oslo.message":"[1]"}"#, "not a JSON object"),
            (br#"{"oslo.version":"2.0","oslo.message":"{\"args\":{}}"}"#, "no method"),
            (br#"{"oslo.version":"2.0","oslo.message":"{\"method\":\"m\",\"args\":3}"}"#, "args of m"),
        ];
        for (body, want) in cases {
            let e = format!("{:#}", decode_request(body).unwrap_err());
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
        let e = format!("{:#}", decode_reply(&env(r#"{"failure":"zz","_msg_id":"q"}"#)).unwrap_err());
        assert!(e.contains("reply q") && e.contains("zz"), "{e}");
        let e = format!("{:#}", decode_reply(&env(r#"{"result":1}"#)).unwrap_err());
        assert!(e.contains("_msg_id"), "{e}");
    }
}
