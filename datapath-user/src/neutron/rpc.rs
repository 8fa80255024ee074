//! An oslo.messaging-compatible RPC client over AMQP: calls, casts, consumers and reconnection.

use super::envelope::{self, Failure, decode_reply, encode_call, encode_cast, excerpt, new_id};
use super::transport::TransportUrl;
use anyhow::{Context, Result, anyhow, bail};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, mpsc, oneshot};

/// The control exchange neutron's topics live on.
pub const EXCHANGE: &str = "neutron";
/// oslo.messaging's `x-expires` for reply and fanout queues, in ms.
const QUEUE_EXPIRES_MS: i32 = 1_800_000;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often the supervisor checks the link; lapin reports a dead socket through its status.
const POLL: Duration = Duration::from_millis(200);

/// A queue the client consumes from, re-declared on every reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// A fanout topic: exchange `<topic>_fanout`, queue `<topic>_fanout_<id>`.
    Fanout {
        /// Topic such as `q-agent-notifier-port-update`.
        topic: String,
    },
    /// A routing key on the `neutron` topic exchange, e.g. `q-agent-notifier-l2population-update.<host>`.
    Topic {
        /// The routing key (also the queue name, like oslo's server queues).
        routing_key: String,
    },
}

/// A message received on a subscription, still in its envelope.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The exchange it came from (`<topic>_fanout` or `neutron`).
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// The raw AMQP body.
    pub body: Vec<u8>,
}

/// Changes of the link to the bus, so the agent can log them and resync after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Connected and all queues declared; `reconnect` is false the first time.
    Connected {
        /// Whether a connection existed before this one.
        reconnect: bool,
    },
    /// The link went down, with why.
    Disconnected(String),
}

/// What `datapath status` shows about the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// Whether calls can be made now.
    pub connected: bool,
    /// Since when the link is in its current state.
    pub since: SystemTime,
    /// The last connection error, if any.
    pub last_error: Option<String>,
}

struct Link {
    channel: Option<Channel>,
    since: SystemTime,
    last_error: Option<String>,
}

type Pending = HashMap<String, oneshot::Sender<std::result::Result<Value, Failure>>>;

struct Inner {
    url: TransportUrl,
    reply_q: String,
    subs: Vec<(Subscription, String)>,
    pending: Mutex<Pending>,
    link: Mutex<Link>,
    events: broadcast::Sender<LinkEvent>,
}

/// The RPC client; cheap to clone, the connection lives in a background task.
#[derive(Clone)]
pub struct Rpc {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn properties(expiration_ms: Option<u128>) -> BasicProperties {
    let p = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_headers(FieldTable::default());
    match expiration_ms {
        Some(ms) => p.with_expiration(ms.to_string().into()),
        None => p,
    }
}

fn expiring_queue_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-expires".into(), AMQPValue::LongInt(QUEUE_EXPIRES_MS));
    t
}

impl Rpc {
    /// Starts the client: a background task connects, declares the reply queue and `subs`, and
    /// reconnects with backoff; messages on `subs` arrive on the returned receiver.
    pub fn start(url: TransportUrl, subs: Vec<Subscription>) -> (Self, mpsc::UnboundedReceiver<Incoming>) {
        let subs = subs
            .into_iter()
            .map(|s| {
                let queue = match &s {
                    Subscription::Fanout { topic } => format!("{topic}_fanout_{}", new_id()),
                    Subscription::Topic { routing_key } => routing_key.clone(),
                };
                (s, queue)
            })
            .collect();
        let inner = Arc::new(Inner {
            url,
            reply_q: format!("reply_{}", new_id()),
            subs,
            pending: Mutex::new(HashMap::new()),
            link: Mutex::new(Link { channel: None, since: SystemTime::now(), last_error: None }),
            events: broadcast::channel(16).0,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(supervise(Arc::downgrade(&inner), tx));
        (Self { inner }, rx)
    }

    /// The link's current state.
    pub fn status(&self) -> LinkStatus {
        let l = lock(&self.inner.link);
        LinkStatus { connected: l.channel.is_some(), since: l.since, last_error: l.last_error.clone() }
    }

    /// Link events from now on.
    pub fn events(&self) -> broadcast::Receiver<LinkEvent> {
        self.inner.events.subscribe()
    }

    /// Waits until connected, or fails after `timeout` with the last connection error.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut ev = self.events();
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.status().connected {
            match tokio::time::timeout_at(deadline, ev.recv()).await {
                Ok(_) => {}
                Err(_) => bail!(
                    "not connected to the message bus after {timeout:?} (last error: {})",
                    self.status().last_error.unwrap_or_else(|| "none".into())
                ),
            }
        }
        Ok(())
    }

    fn channel(&self, what: &str) -> Result<Channel> {
        let l = lock(&self.inner.link);
        l.channel.clone().with_context(|| {
            format!(
                "{what}: not connected to the message bus (last error: {})",
                l.last_error.as_deref().unwrap_or("none")
            )
        })
    }

    /// Calls `method` on `topic` and waits up to `timeout` for the reply's result.
    pub async fn call(
        &self,
        topic: &str,
        method: &str,
        args: Value,
        version: &str,
        timeout: Duration,
    ) -> Result<Value> {
        let what = format!("call {method} (version {version}) on topic {topic}");
        let ch = self.channel(&what)?;
        let msg_id = new_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(msg_id.clone(), tx);
        // Removes the entry however this future ends, including when the caller drops it.
        let _pending = PendingGuard { inner: &self.inner, msg_id: &msg_id };
        let body = encode_call(method, args, version, &msg_id, &self.inner.reply_q, Some(timeout.as_secs()));
        let published = ch
            .basic_publish(
                EXCHANGE.into(),
                topic.into(),
                BasicPublishOptions::default(),
                &body,
                properties(Some(timeout.as_millis())),
            )
            .await;
        log::debug!("{what}: published as {msg_id}");
        let outcome = match published {
            Ok(_) => tokio::time::timeout(timeout, rx).await,
            Err(e) => return Err(anyhow!(e)).with_context(|| format!("{what}: publishing")),
        };
        match outcome {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(f))) => bail!("{what}: the server raised {}: {}", f.class, f.message),
            Ok(Err(_)) => bail!("{what}: the connection was lost before the reply"),
            Err(_) => bail!("{what}: no reply within {timeout:?}"),
        }
    }

    /// Casts `method` to `topic` on the `neutron` exchange (no reply).
    pub async fn cast(&self, topic: &str, method: &str, args: Value, version: &str) -> Result<()> {
        self.publish(EXCHANGE, topic, &encode_cast(method, args, version))
            .await
            .with_context(|| format!("cast {method} (version {version}) on topic {topic}"))
    }

    /// Casts to every consumer of fanout `topic` (what neutron-server does for notifications).
    pub async fn fanout_cast(&self, topic: &str, method: &str, args: Value, version: &str) -> Result<()> {
        let exchange = format!("{topic}_fanout");
        let ch = self.channel(&exchange)?;
        declare_fanout(&ch, &exchange).await?;
        self.publish(&exchange, "", &encode_cast(method, args, version))
            .await
            .with_context(|| format!("fanout cast {method} on {exchange}"))
    }

    /// Publishes a raw body; replies go to the default exchange `""` with the queue as routing key.
    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) -> Result<()> {
        let ch = self.channel(&format!("publish to {exchange:?}/{routing_key}"))?;
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties(None),
        )
        .await
        .with_context(|| format!("publishing to exchange {exchange:?} key {routing_key}"))?;
        Ok(())
    }
}

struct PendingGuard<'a> {
    inner: &'a Inner,
    msg_id: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.pending).remove(self.msg_id);
    }
}

async fn declare_fanout(ch: &Channel, exchange: &str) -> Result<()> {
    // Exactly oslo's flags: any other combination gets PRECONDITION_FAILED from the broker.
    let opts = ExchangeDeclareOptions { durable: false, auto_delete: true, ..Default::default() };
    ch.exchange_declare(exchange.into(), ExchangeKind::Fanout, opts, FieldTable::default())
        .await
        .with_context(|| format!("declaring fanout exchange {exchange}"))
}

/// Connects to one broker and declares everything; returns the connection and its channel.
async fn connect_once(
    inner: &Arc<Inner>,
    host: usize,
    tx: &mpsc::UnboundedSender<Incoming>,
) -> Result<(Connection, Channel)> {
    let uri = inner.url.amqp_uri(host);
    let h = &inner.url.hosts[host % inner.url.hosts.len()];
    let broker = format!("{}:{} vhost {:?}", h.hostname, h.port, inner.url.vhost);
    let conn = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {broker}"))?;
    let ch = conn.create_channel().await.context("opening a channel")?;
    let topic_opts = ExchangeDeclareOptions { durable: false, auto_delete: false, ..Default::default() };
    ch.exchange_declare(EXCHANGE.into(), ExchangeKind::Topic, topic_opts, FieldTable::default())
        .await
        .context("declaring exchange neutron")?;
    let queue_opts = QueueDeclareOptions { durable: false, auto_delete: false, ..Default::default() };
    ch.queue_declare(inner.reply_q.as_str().into(), queue_opts, expiring_queue_args())
        .await
        .with_context(|| format!("declaring reply queue {}", inner.reply_q))?;
    let weak = Arc::downgrade(inner);
    consume(&ch, &inner.reply_q, move |d| {
        if let Some(inner) = weak.upgrade() {
            on_reply(&inner, &d.data);
        }
    })
    .await?;
    for (sub, queue) in &inner.subs {
        let (exchange, key) = match sub {
            Subscription::Fanout { topic } => {
                let exchange = format!("{topic}_fanout");
                declare_fanout(&ch, &exchange).await?;
                (exchange, String::new())
            }
            Subscription::Topic { routing_key } => (EXCHANGE.to_string(), routing_key.clone()),
        };
        let opts = match sub {
            Subscription::Fanout { .. } => {
                QueueDeclareOptions { durable: false, auto_delete: true, ..Default::default() }
            }
            Subscription::Topic { .. } => queue_opts,
        };
        ch.queue_declare(queue.as_str().into(), opts, expiring_queue_args())
            .await
            .with_context(|| format!("declaring queue {queue}"))?;
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("binding queue {queue} to {exchange} with key {key:?}"))?;
        let tx = tx.clone();
        consume(&ch, queue, move |d| {
            // The receiver is gone only when the agent shuts down; dropping the message is right then.
            let _ = tx.send(Incoming {
                exchange: d.exchange.to_string(),
                routing_key: d.routing_key.to_string(),
                body: d.data.clone(),
            });
        })
        .await?;
    }
    Ok((conn, ch))
}

async fn consume(
    ch: &Channel,
    queue: &str,
    handle: impl Fn(&lapin::message::Delivery) + Send + Sync + 'static,
) -> Result<()> {
    let consumer = ch
        .basic_consume(
            queue.into(),
            format!("ctag-{}", new_id()).into(),
            // oslo acks after dispatch; with no_ack a message in flight during a crash is lost, which
            // the agent's resync after reconnect covers.
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming from {queue}"))?;
    let handle = Arc::new(handle);
    let queue = queue.to_string();
    consumer.set_delegate(move |delivery: lapin::message::DeliveryResult| {
        let handle = handle.clone();
        let queue = queue.clone();
        async move {
            match delivery {
                Ok(Some(d)) => handle(&d),
                Ok(None) => {}
                Err(e) => log::warn!("consumer of {queue}: {e}"),
            }
        }
    });
    Ok(())
}

fn on_reply(inner: &Inner, body: &[u8]) {
    let reply = match decode_reply(body) {
        Ok(r) => r,
        Err(e) => {
            log::warn!(
                "malformed reply on {}: {e:#}; body: {}",
                inner.reply_q,
                excerpt(&String::from_utf8_lossy(body))
            );
            return;
        }
    };
    log::debug!("reply to call {} (ending: {})", reply.msg_id, reply.ending);
    // oslo may send the result and a separate empty `ending` message; the first one answers the call.
    match lock(&inner.pending).remove(&reply.msg_id) {
        Some(tx) => {
            let _ = tx.send(reply.outcome);
        }
        None if reply.ending => {}
        None => log::debug!("reply for unknown or finished call {}", reply.msg_id),
    }
}

fn set_link(inner: &Inner, channel: Option<Channel>, error: Option<String>) {
    let mut l = lock(&inner.link);
    l.channel = channel;
    l.since = SystemTime::now();
    if error.is_some() {
        l.last_error = error;
    }
}

async fn supervise(weak: Weak<Inner>, tx: mpsc::UnboundedSender<Incoming>) {
    let mut backoff = BACKOFF_MIN;
    let mut host = 0;
    let mut connected_before = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        match connect_once(&inner, host, &tx).await {
            Ok((conn, ch)) => {
                backoff = BACKOFF_MIN;
                set_link(&inner, Some(ch.clone()), None);
                log::info!("connected to the message bus (reply queue {})", inner.reply_q);
                let _ = inner.events.send(LinkEvent::Connected { reconnect: connected_before });
                connected_before = true;
                drop(inner);
                while conn.status().connected() && ch.status().connected() {
                    if weak.strong_count() == 0 {
                        let _ = conn.close(200, "client dropped".into()).await;
                        return;
                    }
                    tokio::time::sleep(POLL).await;
                }
                let Some(inner) = weak.upgrade() else { return };
                let why = "connection to the message bus lost".to_string();
                log::warn!("{why}; reconnecting");
                set_link(&inner, None, Some(why.clone()));
                // Dropping the senders wakes every waiting call with "connection lost".
                lock(&inner.pending).clear();
                let _ = inner.events.send(LinkEvent::Disconnected(why));
                drop(inner);
                // A broker that just dropped us is often restarting; give it a moment.
                tokio::time::sleep(BACKOFF_MIN).await;
            }
            Err(e) => {
                let why = format!("{e:#}");
                log::warn!("message bus: {why}; retrying in {backoff:?}");
                set_link(&inner, None, Some(why));
                host += 1;
                drop(inner);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Re-exported so callers can build replies in tests and responders.
pub use envelope::encode_reply;
