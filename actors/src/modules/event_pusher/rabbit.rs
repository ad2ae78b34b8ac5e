//! The rabbit backend: MongooseIM's JSON events published to RabbitMQ
//! (AMQP 0-9-1, with lapin) through `[outgoing_pools.rabbit.<pool_name>]`.
//!
//! - presence: `{"user_id": full JID, "present": bool}` to the presence
//!   exchange, routing key the user's bare JID, when a resource becomes
//!   available and when it leaves;
//! - chat messages with a body: `{"from_user_id", "to_user_id", "message"}`
//!   to the chat exchange, routing key `<sender's bare JID>.<sent_topic>`
//!   for the sender and, when the recipient is a local account,
//!   `<recipient's bare JID>.<recv_topic>` for the recipient.
//!
//! Events wait in the pool's bounded queue (`queue`); one task publishes
//! them in order, up to 128 at a time without waiting in between, then waits
//! for their publisher confirms when `confirms_enabled`; a refused (nacked)
//! event goes again. While RabbitMQ is unreachable the task reconnects
//! (backing off up to 5 s), declares the exchanges again, and publishes the
//! event it holds and then the queued ones: nothing in the queue is lost. An
//! event that finds the queue full is dropped and counted
//! (`meerkat_event_pusher_dropped_total{backend="rabbit"}`), never waited
//! for. Delivery is at least once: an event whose confirm was lost with the
//! connection is published again. On a durable exchange, events are
//! published persistent.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::mpsc;

use crate::ext::pools::RabbitPool;
use crate::ext::Metric;

/// An exchange of MongooseIM's rabbit backend.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    pub name: String,
    /// `topic`, `direct`, `fanout` or `headers`.
    #[serde(rename = "type", default = "topic")]
    pub kind: String,
    #[serde(default)]
    pub durable: bool,
    /// Topics of message exchanges (unused on the presence exchange).
    #[serde(default)]
    pub sent_topic: Option<String>,
    #[serde(default)]
    pub recv_topic: Option<String>,
}

fn topic() -> String {
    "topic".into()
}

fn exchange(name: &str, sent: Option<&str>, recv: Option<&str>) -> Exchange {
    Exchange {
        name: name.into(),
        kind: topic(),
        durable: false,
        sent_topic: sent.map(str::to_owned),
        recv_topic: recv.map(str::to_owned),
    }
}

/// `[modules.mod_event_pusher.rabbit]`
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitConfig {
    /// The `[outgoing_pools.rabbit.<name>]` to publish through.
    pub pool_name: String,
    pub presence_exchange: Exchange,
    pub chat_msg_exchange: Exchange,
    /// Declared for group chats (MUC Light), which publish nothing yet.
    pub groupchat_msg_exchange: Exchange,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        RabbitConfig {
            pool_name: "event_pusher".into(),
            presence_exchange: exchange("presence", None, None),
            chat_msg_exchange: exchange("chat_msg", Some("chat_msg_sent"), Some("chat_msg_recv")),
            groupchat_msg_exchange: exchange("groupchat_msg", Some("groupchat_msg_sent"), Some("groupchat_msg_recv")),
        }
    }
}

impl RabbitConfig {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, e) in [
            ("rabbit.presence_exchange", &self.presence_exchange),
            ("rabbit.chat_msg_exchange", &self.chat_msg_exchange),
            ("rabbit.groupchat_msg_exchange", &self.groupchat_msg_exchange),
        ] {
            if e.name.is_empty() || e.name.len() > 255 {
                return Err((key, "an exchange name has 1 to 255 bytes".into()));
            }
            if kind(&e.kind).is_none() {
                return Err((key, format!("type \"{}\": one of topic, direct, fanout, headers", e.kind)));
            }
        }
        if self.chat_msg_exchange.sent_topic.is_none() || self.chat_msg_exchange.recv_topic.is_none() {
            return Err(("rabbit.chat_msg_exchange", "needs sent_topic and recv_topic".into()));
        }
        Ok(())
    }

    pub fn sent_topic(&self) -> &str {
        self.chat_msg_exchange.sent_topic.as_deref().unwrap_or("chat_msg_sent")
    }

    pub fn recv_topic(&self) -> &str {
        self.chat_msg_exchange.recv_topic.as_deref().unwrap_or("chat_msg_recv")
    }
}

fn kind(k: &str) -> Option<ExchangeKind> {
    Some(match k {
        "topic" => ExchangeKind::Topic,
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        _ => return None,
    })
}

/// MongooseIM's payload of a chat message event.
#[derive(serde::Serialize)]
pub struct ChatPayload<'a> {
    pub from_user_id: &'a str,
    pub to_user_id: &'a str,
    pub message: &'a str,
}

/// One event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub exchange: Arc<str>,
    pub routing_key: String,
    /// Shared by the sent and the received event of one message.
    pub payload: Arc<str>,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    connected: AtomicBool,
}

/// The running publisher.
pub struct Publisher {
    /// The exchanges' names, shared by the events.
    pub presence_exchange: Arc<str>,
    pub chat_exchange: Arc<str>,
    tx: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
    pool: String,
}

impl Publisher {
    pub fn start(cfg: &RabbitConfig, pool: &RabbitPool) -> Publisher {
        let (tx, rx) = mpsc::channel(pool.queue);
        let counters = Arc::new(Counters::default());
        let c = &pool.connection;
        let scheme = if c.tls { "amqps" } else { "amqp" };
        let vhost = if c.virtual_host == "/" { "%2f".to_owned() } else { c.virtual_host.clone() };
        let uri = format!("{scheme}://{}:{}@{}:{}/{vhost}", c.username, c.password, c.host, c.port);
        let exchanges =
            vec![cfg.presence_exchange.clone(), cfg.chat_msg_exchange.clone(), cfg.groupchat_msg_exchange.clone()];
        let task = tokio::spawn(run(rx, uri, exchanges, c.confirms_enabled, counters.clone()));
        Publisher {
            presence_exchange: cfg.presence_exchange.name.as_str().into(),
            chat_exchange: cfg.chat_msg_exchange.name.as_str().into(),
            tx,
            counters,
            task,
            pool: cfg.pool_name.clone(),
        }
    }

    /// Whether an event pushed now would be queued (not dropped): a caller
    /// builds its events only then, and counts them as dropped otherwise.
    pub fn has_room(&self, events: usize) -> bool {
        if self.tx.capacity() >= events {
            return true;
        }
        self.counters.dropped.fetch_add(events as u64, Ordering::Relaxed);
        false
    }

    /// Queues an event; a full queue drops it, counted.
    pub fn push(&self, event: Event) {
        if self.tx.try_send(event).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stop(&self) {
        self.task.abort();
    }

    pub fn metrics(&self, out: &mut Vec<Metric>) {
        let labels = || vec![("backend", "rabbit".to_owned()), ("pool", self.pool.clone())];
        for (name, c) in [
            ("meerkat_event_pusher_sent_total", &self.counters.published),
            ("meerkat_event_pusher_failed_total", &self.counters.failed),
            ("meerkat_event_pusher_dropped_total", &self.counters.dropped),
        ] {
            out.push(Metric { name, labels: labels(), value: c.load(Ordering::Relaxed) as f64, counter: true });
        }
        out.push(Metric {
            name: "meerkat_event_pusher_queued",
            labels: labels(),
            value: (self.tx.max_capacity() - self.tx.capacity()) as f64,
            counter: false,
        });
        out.push(Metric {
            name: "meerkat_event_pusher_connected",
            labels: labels(),
            value: if self.counters.connected.load(Ordering::Relaxed) { 1.0 } else { 0.0 },
            counter: false,
        });
    }
}

/// Connects, declares the exchanges and enables confirms.
async fn connect(uri: &str, exchanges: &[Exchange], confirms: bool) -> lapin::Result<(Connection, Channel)> {
    let conn = Connection::connect(uri, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    for e in exchanges {
        let options = ExchangeDeclareOptions { durable: e.durable, ..Default::default() };
        let k = kind(&e.kind).unwrap_or(ExchangeKind::Topic);
        channel.exchange_declare(e.name.as_str().into(), k, options, FieldTable::default()).await?;
    }
    if confirms {
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
    }
    Ok((conn, channel))
}

/// Publishes one event; `Ok(false)` when RabbitMQ refused it (a nack).
/// Events published together before their confirms are awaited.
const BATCH: usize = 128;

/// Sends one event; its confirm is awaited later.
async fn send(channel: &Channel, e: &Event, persistent: bool) -> lapin::Result<lapin::PublisherConfirm> {
    let mut props = BasicProperties::default().with_content_type("application/json".into());
    if persistent {
        props = props.with_delivery_mode(2);
    }
    channel
        .basic_publish(
            (&*e.exchange).into(),
            e.routing_key.as_str().into(),
            BasicPublishOptions::default(),
            e.payload.as_bytes(),
            props,
        )
        .await
}

/// Sends `batch` in its order and waits until every event was handed to
/// the connection, together: each publish hands its frames to lapin's I/O
/// thread and wakes it, and awaiting each one before the next would cost two
/// thread wake-ups an event; side by side, the I/O thread writes what came
/// meanwhile at once. The first poll of each publish, which queues its frames
/// and takes its delivery tag, runs in the batch's order.
async fn send_all(
    channel: &Channel,
    batch: &[Event],
    durable: &std::collections::HashSet<String>,
) -> Vec<lapin::Result<lapin::PublisherConfirm>> {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;
    type Publish<'a> = Pin<Box<dyn Future<Output = lapin::Result<lapin::PublisherConfirm>> + Send + 'a>>;
    let mut pending: Vec<Option<Publish<'_>>> =
        batch.iter().map(|e| Some(Box::pin(send(channel, e, durable.contains(&*e.exchange))) as Publish<'_>)).collect();
    let mut done: Vec<Option<lapin::Result<lapin::PublisherConfirm>>> = batch.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (slot, out) in pending.iter_mut().zip(done.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(r) => {
                        *out = Some(r);
                        *slot = None;
                    }
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// What happened to a batch.
enum Outcome {
    /// Every event was confirmed (or refused and kept in `held` for later).
    Done,
    /// The connection failed: the unconfirmed events are back in `held`.
    Lost(lapin::Error),
}

/// Publishes `batch` in order without waiting in between, then waits for the
/// confirms in order. Events RabbitMQ refused (nacks), and on a failure every
/// event not confirmed yet, go back to `held`, in order, to be published again.
async fn publish_batch(
    channel: &Channel,
    batch: Vec<Event>,
    durable: &std::collections::HashSet<String>,
    held: &mut std::collections::VecDeque<Event>,
    c: &Counters,
) -> Outcome {
    let mut sent = Vec::with_capacity(batch.len());
    let mut failure = None;
    let results = send_all(channel, &batch, durable).await;
    let mut events = batch.into_iter();
    for result in results {
        let Some(e) = events.next() else { break };
        match result {
            Ok(confirm) => sent.push((e, confirm)),
            Err(err) => {
                failure = Some((err, e));
                break;
            }
        }
    }
    let mut again = Vec::new();
    let mut sent = sent.into_iter();
    for (e, confirm) in sent.by_ref() {
        match confirm.await {
            Ok(conf) if !conf.is_nack() => {
                c.published.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                // RabbitMQ could not take it now: again, later.
                c.failed.fetch_add(1, Ordering::Relaxed);
                again.push(e);
            }
            Err(err) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                again.push(e);
                again.extend(sent.map(|(e, _)| e));
                if let Some((_, unsent)) = failure.take() {
                    again.push(unsent);
                }
                again.extend(events);
                for e in again.into_iter().rev() {
                    held.push_front(e);
                }
                return Outcome::Lost(err);
            }
        }
    }
    if let Some((err, unsent)) = failure {
        c.failed.fetch_add(1, Ordering::Relaxed);
        again.push(unsent);
        again.extend(events);
        for e in again.into_iter().rev() {
            held.push_front(e);
        }
        return Outcome::Lost(err);
    }
    for e in again.into_iter().rev() {
        held.push_front(e);
    }
    Outcome::Done
}

/// The publisher's loop: until the queue is closed (the module stopped).
async fn run(mut rx: mpsc::Receiver<Event>, uri: String, exchanges: Vec<Exchange>, confirms: bool, c: Arc<Counters>) {
    let durable: std::collections::HashSet<String> =
        exchanges.iter().filter(|e| e.durable).map(|e| e.name.clone()).collect();
    // Taken from the queue and not confirmed yet: published first.
    let mut held: std::collections::VecDeque<Event> = std::collections::VecDeque::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let (conn, channel) = match connect(&uri, &exchanges, confirms).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "event pusher: RabbitMQ unreachable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        tracing::info!("event pusher: connected to RabbitMQ");
        c.connected.store(true, Ordering::Relaxed);
        backoff = Duration::from_millis(100);
        loop {
            let mut batch: Vec<Event> = held.drain(..held.len().min(BATCH)).collect();
            if batch.is_empty() {
                match rx.recv().await {
                    Some(e) => batch.push(e),
                    None => {
                        let _ = conn.close(200, "shutting down".into()).await;
                        return;
                    }
                }
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            let refused_before = held.len();
            match publish_batch(&channel, batch, &durable, &mut held, &c).await {
                Outcome::Done if held.len() > refused_before => {
                    // Some were refused (nacks): a pause before they go again.
                    tokio::time::sleep(backoff).await;
                }
                Outcome::Done => {}
                Outcome::Lost(e) => {
                    tracing::warn!(error = %e, "event pusher: publishing to RabbitMQ failed; reconnecting");
                    c.connected.store(false, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}
