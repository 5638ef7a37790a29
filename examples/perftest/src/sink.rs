//! A broker stand-in built on amqp-codec's server role, to measure
//! amqp-perftest's own ceiling: it accepts any credentials and vhost and
//! answers declares, binds, qos, confirm.select and consume. Publishes are
//! confirmed at once (one `multiple` ack per channel and batch).
//!
//! * Flood mode (the default) discards publishes and floods each consumer
//!   with its own deliveries as fast as prefetch and the socket allow.
//! * Loopback mode (`--loopback`) routes publishes to the consumers of the
//!   queues they are bound to (default exchange: the queue named by the
//!   routing key; fanout/headers exchanges: every bound queue; others: the
//!   exact binding key), round-robin among a queue's consumers, in memory
//!   and unbounded (bound the producers with -c or -r). A publish that
//!   reaches no consumer is dropped, or returned when mandatory and
//!   unroutable. Counts and latency are then end-to-end.

use crate::link::{Link, OUT_HIGH, Wake};
use amqp_codec::types::method::{
    BasicCancelOk, BasicConsumeOk, BasicDeliver, BasicQosOk, BasicReturn, ConfirmSelectOk,
    ExchangeDeclareOk, ExchangeDeleteOk, QueueBindOk, QueueDeclareOk, QueueDeleteOk, QueuePurgeOk,
    QueueUnbindOk,
};
use amqp_codec::types::{BasicProperties, Method, ReplyCode, ShortString};
use amqp_codec::{Answer, Connection, Event, ServerConfig};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

/// Deliveries generated per loop turn before the sink reads and yields.
const DELIVER_BATCH: usize = 512;

/// Sink settings.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Body size of the messages flooded to consumers (flood mode).
    pub body_size: usize,
    /// Route publishes to consumers instead of flooding.
    pub loopback: bool,
}

/// Binds `addr`; serve with [`serve`].
pub async fn bind(addr: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr}: {e} (is the port in use? give another with --listen)")
    })
}

/// Accepts connections forever, one task each.
pub async fn serve(listener: TcpListener, cfg: SinkConfig) {
    let body = Bytes::from(vec![0u8; cfg.body_size]);
    let router = cfg
        .loopback
        .then(|| Arc::new(Mutex::new(Router::default())));
    let ids = AtomicU64::new(0);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
        let router = router.clone();
        let id = ids.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let server = ServerConfig {
                heartbeat: 0,
                ..ServerConfig::default()
            };
            let link = Link::new(Connection::server(server, Instant::now()), tcp);
            let (tx, rx) = mpsc::unbounded_channel();
            let mut s = Session {
                id,
                link,
                body,
                props: BasicProperties::default(),
                channels: HashMap::new(),
                router,
                inbox: Inbox {
                    tx,
                    notify: Arc::new(Notify::new()),
                },
                rx,
                publishes: Vec::new(),
            };
            if let Err(e) = s.run().await {
                eprintln!("sink: {peer}: {e}");
            }
            if let Some(r) = &s.router {
                r.lock().unwrap_or_else(|p| p.into_inner()).forget(id);
            }
        });
    }
}

/// A message routed to a consumer of another connection.
#[derive(Debug)]
struct Delivery {
    channel: u16,
    tag: ShortString,
    body: Bytes,
}

/// Where a session receives routed messages.
#[derive(Debug, Clone)]
struct Inbox {
    tx: mpsc::UnboundedSender<Delivery>,
    notify: Arc<Notify>,
}

#[derive(Debug)]
struct RouteConsumer {
    session: u64,
    channel: u16,
    tag: ShortString,
    inbox: Inbox,
}

#[derive(Debug, Default)]
struct RouteQueue {
    consumers: Vec<RouteConsumer>,
    next: usize,
}

/// Loopback mode's shared state: exchanges, bindings, queues, consumers.
#[derive(Debug, Default)]
struct Router {
    broadcast: HashSet<ShortString>,
    bindings: HashMap<(ShortString, ShortString), Vec<ShortString>>,
    by_exchange: HashMap<ShortString, Vec<ShortString>>,
    queues: HashMap<ShortString, RouteQueue>,
    names: u64,
}

impl Router {
    fn declare_queue(&mut self, name: ShortString) -> ShortString {
        let name = if name.is_empty() {
            self.names += 1;
            ShortString::try_from(format!("amq.gen-sink-{}", self.names).as_str())
                .unwrap_or_default()
        } else {
            name
        };
        self.queues.entry(name.clone()).or_default();
        name
    }

    fn bind(&mut self, queue: ShortString, exchange: ShortString, key: ShortString) {
        let qs = self.bindings.entry((exchange.clone(), key)).or_default();
        if !qs.contains(&queue) {
            qs.push(queue.clone());
        }
        let qs = self.by_exchange.entry(exchange).or_default();
        if !qs.contains(&queue) {
            qs.push(queue);
        }
    }

    /// Sends one publish to one consumer of each queue it reaches; whether
    /// it reached a queue.
    fn route(
        &mut self,
        exchange: &ShortString,
        key: &ShortString,
        body: &Bytes,
        woken: &mut Vec<Arc<Notify>>,
    ) -> bool {
        let targets: &[ShortString] = if exchange.is_empty() {
            std::slice::from_ref(key)
        } else if self.broadcast.contains(exchange) {
            self.by_exchange.get(exchange).map_or(&[], |v| &v[..])
        } else {
            self.bindings
                .get(&(exchange.clone(), key.clone()))
                .map_or(&[], |v| &v[..])
        };
        let mut routed = false;
        for q in targets {
            let Some(q) = self.queues.get_mut(q) else {
                continue;
            };
            routed = true;
            if q.consumers.is_empty() {
                continue;
            }
            let c = &q.consumers[q.next % q.consumers.len()];
            q.next = q.next.wrapping_add(1);
            let _ = c.inbox.tx.send(Delivery {
                channel: c.channel,
                tag: c.tag.clone(),
                body: body.clone(),
            });
            if !woken.iter().any(|n| Arc::ptr_eq(n, &c.inbox.notify)) {
                woken.push(c.inbox.notify.clone());
            }
        }
        routed
    }

    fn forget(&mut self, session: u64) {
        for q in self.queues.values_mut() {
            q.consumers.retain(|c| c.session != session);
        }
    }
}

/// One consumer on a sink channel.
#[derive(Debug)]
struct Flood {
    tag: ShortString,
    no_ack: bool,
    queue: ShortString,
}

#[derive(Debug, Default)]
struct SinkChannel {
    prefetch: u16,
    consumers: Vec<Flood>,
    next: usize,
    issued: u64,
    acked: u64,
    /// Whether the (single) consumer is no-ack (loopback).
    no_ack: bool,
    /// Routed messages waiting for credit (loopback).
    pending: VecDeque<(ShortString, Bytes)>,
    /// Highest publish sequence number to confirm.
    to_confirm: Option<u64>,
}

impl SinkChannel {
    fn has_credit(&self, no_ack: bool) -> bool {
        no_ack || self.prefetch == 0 || self.issued - self.acked < u64::from(self.prefetch)
    }
}

/// A publish waiting to be routed (loopback).
struct Publish {
    channel: u16,
    exchange: ShortString,
    key: ShortString,
    mandatory: bool,
    body: Bytes,
}

struct Session {
    id: u64,
    link: Link,
    body: Bytes,
    props: BasicProperties,
    channels: HashMap<u16, SinkChannel>,
    router: Option<Arc<Mutex<Router>>>,
    inbox: Inbox,
    rx: mpsc::UnboundedReceiver<Delivery>,
    publishes: Vec<Publish>,
}

impl Session {
    fn reply(&mut self, ch: u16, m: impl Into<Method>) -> Result<(), String> {
        self.link.conn.send_method(ch, m).map_err(|e| e.to_string())
    }

    fn with_router<T>(&self, f: impl FnOnce(&mut Router) -> T) -> Option<T> {
        self.router
            .as_ref()
            .map(|r| f(&mut r.lock().unwrap_or_else(|p| p.into_inner())))
    }

    fn on_event(&mut self, e: Event) -> Result<bool, String> {
        match e {
            Event::Decision { id, .. } => {
                self.link
                    .conn
                    .decide(id, Answer::Accept)
                    .map_err(|e| e.to_string())?;
            }
            Event::ChannelOpened { channel } => {
                self.channels.insert(channel, SinkChannel::default());
            }
            Event::ChannelClosed { channel, .. } => {
                self.channels.remove(&channel);
            }
            Event::Message {
                channel,
                seqno,
                message,
            } => {
                if let (Some(s), Some(c)) = (seqno, self.channels.get_mut(&channel)) {
                    c.to_confirm = Some(s);
                }
                if self.router.is_some()
                    && let Method::BasicPublish(p) = message.method
                {
                    self.publishes.push(Publish {
                        channel,
                        exchange: p.exchange,
                        key: p.routing_key,
                        mandatory: p.mandatory,
                        body: message.body,
                    });
                }
            }
            Event::Method { channel, method } => self.on_method(channel, method)?,
            Event::Closed { .. } => return Ok(false),
            _ => {}
        }
        Ok(true)
    }

    fn on_method(&mut self, ch: u16, m: Method) -> Result<(), String> {
        match m {
            Method::ExchangeDeclare(d) => {
                if matches!(d.kind.as_bytes(), b"fanout" | b"headers") {
                    self.with_router(|r| r.broadcast.insert(d.exchange.clone()));
                }
                if d.nowait {
                    return Ok(());
                }
                self.reply(ch, ExchangeDeclareOk {})
            }
            Method::ExchangeDelete(d) if !d.nowait => self.reply(ch, ExchangeDeleteOk {}),
            Method::QueueDeclare(d) => {
                let queue = match self.with_router(|r| r.declare_queue(d.queue.clone())) {
                    Some(q) => q,
                    None if d.queue.is_empty() => ShortString::try_from(
                        format!("amq.gen-sink-{}-{}", self.id, self.channels.len()).as_str(),
                    )
                    .unwrap_or_default(),
                    None => d.queue,
                };
                if d.nowait {
                    return Ok(());
                }
                self.reply(
                    ch,
                    QueueDeclareOk {
                        queue,
                        ..Default::default()
                    },
                )
            }
            Method::QueueBind(b) => {
                self.with_router(|r| {
                    r.bind(b.queue.clone(), b.exchange.clone(), b.routing_key.clone())
                });
                if b.nowait {
                    return Ok(());
                }
                self.reply(ch, QueueBindOk {})
            }
            Method::QueueUnbind(_) => self.reply(ch, QueueUnbindOk {}),
            Method::QueuePurge(p) if !p.nowait => self.reply(ch, QueuePurgeOk::default()),
            Method::QueueDelete(d) if !d.nowait => self.reply(ch, QueueDeleteOk::default()),
            Method::BasicQos(q) => {
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.prefetch = match (c.prefetch, q.prefetch_count) {
                        (0, n) | (n, 0) => n,
                        (a, b) => a.min(b),
                    };
                }
                self.reply(ch, BasicQosOk {})
            }
            Method::ConfirmSelect(c) => {
                if c.nowait {
                    Ok(())
                } else {
                    self.reply(ch, ConfirmSelectOk {})
                }
            }
            Method::BasicConsume(c) => {
                let tag = if c.consumer_tag.is_empty() {
                    ShortString::try_from(format!("amq.ctag-sink-{}-{ch}", self.id).as_str())
                        .unwrap_or_default()
                } else {
                    c.consumer_tag.clone()
                };
                if !c.nowait {
                    self.reply(
                        ch,
                        BasicConsumeOk {
                            consumer_tag: tag.clone(),
                        },
                    )?;
                }
                let (session, inbox) = (self.id, self.inbox.clone());
                let routed = self.with_router(|r| {
                    let q = r.queues.entry(c.queue.clone()).or_default();
                    q.consumers.push(RouteConsumer {
                        session,
                        channel: ch,
                        tag: tag.clone(),
                        inbox,
                    });
                });
                if let Some(s) = self.channels.get_mut(&ch) {
                    if routed.is_some() {
                        s.no_ack = c.no_ack;
                    } else {
                        s.consumers.push(Flood {
                            tag,
                            no_ack: c.no_ack,
                            queue: c.queue,
                        });
                    }
                }
                Ok(())
            }
            Method::BasicCancel(c) => {
                if let Some(s) = self.channels.get_mut(&ch) {
                    s.consumers.retain(|f| f.tag != c.consumer_tag);
                }
                let (session, tag) = (self.id, c.consumer_tag.clone());
                self.with_router(|r| {
                    for q in r.queues.values_mut() {
                        q.consumers.retain(|x| x.session != session || x.tag != tag);
                    }
                });
                if c.nowait {
                    Ok(())
                } else {
                    self.reply(
                        ch,
                        BasicCancelOk {
                            consumer_tag: c.consumer_tag,
                        },
                    )
                }
            }
            Method::BasicAck(a) => {
                if let Some(s) = self.channels.get_mut(&ch) {
                    // The client acks in order: a multiple ack settles up
                    // to its tag, a single one settles one more.
                    s.acked = if a.multiple {
                        s.acked.max(a.delivery_tag)
                    } else {
                        s.acked + 1
                    };
                }
                Ok(())
            }
            Method::BasicNack(_) | Method::BasicReject(_) => Ok(()),
            // Requests sent with nowait need no answer.
            Method::ExchangeDelete(_) | Method::QueuePurge(_) | Method::QueueDelete(_) => Ok(()),
            other => self
                .link
                .conn
                .refuse(
                    ch,
                    ReplyCode::NOT_IMPLEMENTED,
                    &format!("the sink does not implement {}", other.name()),
                )
                .map_err(|e| e.to_string()),
        }
    }

    /// Routes the publishes read this turn (loopback), under one lock;
    /// returns unroutable mandatory ones.
    fn route(&mut self) -> Result<(), String> {
        if self.publishes.is_empty() {
            return Ok(());
        }
        let Some(router) = &self.router else {
            self.publishes.clear();
            return Ok(());
        };
        let mut returns = Vec::new();
        let mut woken: Vec<Arc<Notify>> = Vec::new();
        {
            let mut r = router.lock().unwrap_or_else(|p| p.into_inner());
            for p in self.publishes.drain(..) {
                if !r.route(&p.exchange, &p.key, &p.body, &mut woken) && p.mandatory {
                    returns.push(p);
                }
            }
        }
        for n in woken {
            n.notify_one();
        }
        for p in returns {
            let ret = BasicReturn {
                reply_code: ReplyCode::NO_ROUTE.0,
                reply_text: ShortString::from_static("NO_ROUTE"),
                exchange: p.exchange,
                routing_key: p.key,
            };
            self.link
                .conn
                .send_content(p.channel, Method::BasicReturn(ret), &self.props, p.body)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Confirms publishes (one multiple ack per channel) and generates
    /// deliveries while credit and the write buffer allow. Returns whether
    /// anything was queued.
    fn produce(&mut self) -> Result<bool, String> {
        let mut any = false;
        let conn = &mut self.link.conn;
        for (&ch, c) in self.channels.iter_mut() {
            if let Some(s) = c.to_confirm.take() {
                conn.ack(ch, s, true).map_err(|e| e.to_string())?;
                any = true;
            }
        }
        while let Ok(d) = self.rx.try_recv() {
            if let Some(c) = self.channels.get_mut(&d.channel) {
                c.pending.push_back((d.tag, d.body));
            }
        }
        let mut n = 0;
        for (&ch, c) in self.channels.iter_mut() {
            // Routed messages (loopback).
            while n < DELIVER_BATCH
                && conn.bytes_queued() < OUT_HIGH
                && !c.pending.is_empty()
                && c.has_credit(c.no_ack)
            {
                let Some((tag, body)) = c.pending.pop_front() else {
                    break;
                };
                let d = BasicDeliver {
                    consumer_tag: tag,
                    delivery_tag: 0,
                    redelivered: false,
                    exchange: ShortString::EMPTY,
                    routing_key: ShortString::EMPTY,
                };
                let tag = conn
                    .send_content(ch, Method::BasicDeliver(d), &self.props, body)
                    .map_err(|e| e.to_string())?;
                c.issued = tag.unwrap_or(c.issued + 1);
                if c.no_ack {
                    c.acked = c.issued;
                }
                n += 1;
                any = true;
            }
            // Flooded messages.
            while !c.consumers.is_empty() && n < DELIVER_BATCH && conn.bytes_queued() < OUT_HIGH {
                let f = &c.consumers[c.next % c.consumers.len()];
                let no_ack = f.no_ack;
                if !c.has_credit(no_ack) {
                    break;
                }
                let d = BasicDeliver {
                    consumer_tag: f.tag.clone(),
                    delivery_tag: 0,
                    redelivered: false,
                    exchange: ShortString::EMPTY,
                    routing_key: f.queue.clone(),
                };
                let tag = conn
                    .send_content(ch, Method::BasicDeliver(d), &self.props, self.body.clone())
                    .map_err(|e| e.to_string())?;
                c.issued = tag.unwrap_or(c.issued + 1);
                if no_ack {
                    c.acked = c.issued;
                }
                c.next = c.next.wrapping_add(1);
                n += 1;
                any = true;
            }
        }
        Ok(any)
    }

    /// Handles every queued event; false once the connection is over.
    fn drain(&mut self) -> Result<bool, String> {
        while let Some(e) = self.link.conn.poll_event() {
            if !self.on_event(e)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn run(&mut self) -> Result<(), String> {
        let io = |e: std::io::Error| format!("connection lost: {e}");
        loop {
            let mut progress = false;
            for _ in 0..4 {
                if !self.link.try_fill().map_err(io)? {
                    break;
                }
                progress = true;
                if !self.drain()? {
                    let _ = self.link.try_flush();
                    return Ok(());
                }
            }
            if !self.drain()? {
                let _ = self.link.try_flush();
                return Ok(());
            }
            self.route()?;
            if self.link.conn.is_open() && self.link.pending_out() < OUT_HIGH {
                progress |= self.produce()?;
            }
            progress |= self.link.try_flush().map_err(io)?;
            if self.link.eof() || self.link.conn.is_closed() {
                let _ = self.link.try_flush();
                return Ok(());
            }
            if progress {
                tokio::task::yield_now().await;
            } else {
                let notify = self.inbox.notify.clone();
                self.link
                    .wait(true, None, Wake::Notified(&notify))
                    .await
                    .map_err(io)?;
            }
        }
    }
}
