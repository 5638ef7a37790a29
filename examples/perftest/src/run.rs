//! A load test run: the plan (queues, keys, who publishes where), the
//! producer and consumer drivers, and the coordinator that starts them,
//! prints progress and decides when the run is over.

use crate::cli::{RunArgs, Uri, parse_uri};
use crate::link::{Link, OUT_HIGH, Wake, fatal};
use crate::stats::{
    Columns, Counters, LocalCounts, Percentiles, RunHistograms, SharedHistogram, Summary, Totals,
    process_cpu_seconds, progress_line,
};
use amqp_codec::types::method::{
    BasicConsume, BasicPublish, BasicQos, ConfirmSelect, ExchangeDeclare, QueueBind, QueueDeclare,
};
use amqp_codec::types::{BasicProperties, FieldTable, FieldValue, LongString, Method, ShortString};
use amqp_codec::{ClientConfig, Connection, Credentials, Event};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeSet, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Bytes at the start of a body that carry the run id (4) and the send
/// time in nanoseconds since the process epoch (8).
pub const STAMP_LEN: usize = 12;
/// How long a setup step (connect, declare, consume) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// After the producers finished, how long the run waits without a new
/// delivery before it gives up on the missing ones.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Publishes per loop turn before the driver reads and yields.
const PUBLISH_BATCH: usize = 512;
/// Chunks read per loop turn before the driver yields.
const READS_PER_TURN: usize = 4;

/// Nanoseconds since this process's epoch (the first call), the clock that
/// producers write into bodies and consumers read back.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Clock reads a [`Stale`] clock answers from the last one: at 500,000
/// messages a second, reading the clock for every send and every delivery
/// was a tenth of the tool's CPU.
const CLOCK_EVERY: u32 = 16;

/// [`now_ns`], read afresh at the first call and every [`CLOCK_EVERY`]th
/// after; made anew per batch of sends and per batch of deliveries, so a
/// message alone in its batch (every one at a fixed rate) gets an exact
/// time. Within a batch a send time is early (latency overstated) and a
/// receive time late (understated) by at most the time the tool takes for
/// 15 messages, a few microseconds; all the messages of a batch go out in
/// one write, or came in one read, anyway.
struct Stale {
    at: u64,
    left: u32,
}

impl Stale {
    fn new() -> Stale {
        Stale { at: 0, left: 0 }
    }

    fn now(&mut self) -> u64 {
        if self.left == 0 {
            self.at = now_ns();
            self.left = CLOCK_EVERY;
        }
        self.left -= 1;
        self.at
    }
}

/// A per-process random id written into bodies, so that latency is only
/// computed for messages this process sent.
pub fn run_id() -> u32 {
    static ID: OnceLock<u32> = OnceLock::new();
    *ID.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let x = (t ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((x >> 32) as u32) | 1
    })
}

fn random_suffix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:08x}{:04x}",
        run_id(),
        N.fetch_add(1, Relaxed) ^ (now_ns() & 0xffff)
    )
}

fn short(s: &str) -> Result<ShortString, String> {
    ShortString::try_from(s).map_err(|_| format!("{s:?} is longer than 255 bytes"))
}

/// Where one producer publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerTarget {
    /// Exchange name.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// The named queue its messages go to (None: server-named queues, a
    /// broadcast, or unknown).
    pub queue: Option<usize>,
    /// With --bindings-per-queue / --binding-key-pattern: the routing keys
    /// it publishes in turn (one per message, starting at its own index)
    /// and the queue each reaches; `routing_key` and `queue` are the
    /// first. Empty otherwise.
    pub cycle: Vec<(String, usize)>,
}

/// What a run declares and who talks to which queue.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The options.
    pub args: RunArgs,
    /// The broker.
    pub uri: Uri,
    /// The test id.
    pub id: String,
    /// Named queues (empty: one server-named queue per consumer).
    pub queues: Vec<String>,
    /// The bindings of the named queues (queue index, binding key), when
    /// the exchange is not the default one: one per queue, or
    /// --bindings-per-queue each.
    pub bindings: Vec<(usize, String)>,
    /// Per producer.
    pub producers: Vec<ProducerTarget>,
    /// Per consumer: the named queue it consumes from (None: its own
    /// server-named queue).
    pub consumers: Vec<Option<usize>>,
    /// The key server-named queues are bound with.
    pub server_named_key: String,
    /// Whether one publish reaches every bound queue (fanout, headers, or
    /// every binding with the same key).
    pub broadcast: bool,
}

impl Plan {
    /// Builds the plan from the options (PerfTest's spreading: producer
    /// `i` publishes to queue `i mod n`, consumer `j` consumes from queue
    /// `j mod n`).
    pub fn new(args: RunArgs) -> Result<Plan, String> {
        args.validate()?;
        let uri = parse_uri(&args.uri)?;
        let queues = args.queue_names()?;
        let id = args.id.clone().unwrap_or_else(default_id);
        let n = queues.len();
        let default_exchange = args.exchange.is_empty();
        let random_key = format!("perftest-{}", random_suffix());
        let cycling = args.cycles_bindings();
        let bindings: Vec<(usize, String)> = if cycling {
            let total = n as u32 * args.bindings_per_queue;
            args.binding_keys(total)?
                .into_iter()
                .enumerate()
                .map(|(b, k)| (b % n, k))
                .collect()
        } else {
            queues
                .iter()
                .enumerate()
                .map(|(i, q)| match (&args.routing_key, &args.queue_pattern) {
                    (Some(k), _) => (i, k.clone()),
                    (None, Some(_)) => (i, q.clone()),
                    (None, None) => (i, random_key.clone()),
                })
                .collect()
        };
        let routes: Vec<(String, usize)> = if cycling {
            bindings
                .iter()
                .map(|(q, k)| (args.routing_key_for(k), *q))
                .collect()
        } else {
            Vec::new()
        };
        let producers = (0..args.producers as usize)
            .map(|i| {
                if cycling {
                    let mut cycle = routes.clone();
                    cycle.rotate_left(i % routes.len());
                    ProducerTarget {
                        exchange: args.exchange.clone(),
                        routing_key: cycle[0].0.clone(),
                        queue: Some(cycle[0].1),
                        cycle,
                    }
                } else if default_exchange {
                    let rk = args
                        .routing_key
                        .clone()
                        .unwrap_or_else(|| queues[i % n].clone());
                    let queue = queues.iter().position(|q| *q == rk);
                    ProducerTarget {
                        exchange: String::new(),
                        routing_key: rk,
                        queue,
                        cycle: Vec::new(),
                    }
                } else if n > 0 {
                    ProducerTarget {
                        exchange: args.exchange.clone(),
                        routing_key: bindings[i % n].1.clone(),
                        queue: Some(i % n),
                        cycle: Vec::new(),
                    }
                } else {
                    ProducerTarget {
                        exchange: args.exchange.clone(),
                        routing_key: args
                            .routing_key
                            .clone()
                            .unwrap_or_else(|| random_key.clone()),
                        queue: None,
                        cycle: Vec::new(),
                    }
                }
            })
            .collect();
        let consumers = (0..args.consumers as usize)
            .map(|j| (n > 0).then(|| j % n))
            .collect();
        let fanout = matches!(args.exchange_type.as_str(), "fanout" | "headers");
        let broadcast = !default_exchange
            && (fanout
                || (!cycling
                    && (n == 0 || args.routing_key.is_some() || args.queue_pattern.is_none())));
        Ok(Plan {
            server_named_key: args.routing_key.clone().unwrap_or(random_key),
            args,
            uri,
            id,
            queues,
            bindings,
            producers,
            consumers,
            broadcast,
        })
    }

    /// How many deliveries the publishes should produce, given the sends
    /// (and returns) per named queue (index `queues.len()` holds sends
    /// with no known queue). `None` when it cannot be known.
    pub fn expected_received(&self, sent_q: &[u64], returned_q: &[u64]) -> Option<u64> {
        if self.args.cmessages > 0 || self.consumers.is_empty() || self.producers.is_empty() {
            return None;
        }
        let routed = |i: usize| sent_q[i].saturating_sub(returned_q[i]);
        let total: u64 = (0..sent_q.len()).map(routed).sum();
        if self.queues.is_empty() {
            // Every consumer has its own queue bound with the same key.
            return Some(total * self.consumers.len() as u64);
        }
        let consumed: BTreeSet<usize> = self.consumers.iter().flatten().copied().collect();
        if self.broadcast {
            return Some(total * consumed.len() as u64);
        }
        if sent_q[self.queues.len()] > 0 || returned_q[self.queues.len()] > 0 {
            return None;
        }
        Some(consumed.iter().map(|&q| routed(q)).sum())
    }
}

fn default_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let day = secs.as_secs() % 86_400;
    format!(
        "test-{:02}{:02}{:02}-{:03}",
        day / 3600,
        day / 60 % 60,
        day % 60,
        secs.subsec_millis()
    )
}

/// State shared by the coordinator and every agent.
#[derive(Debug)]
struct Shared {
    counters: Counters,
    latency: SharedHistogram,
    confirm_latency: SharedHistogram,
    stop: AtomicBool,
    /// Wakes idle agents when the run stops.
    stop_tx: watch::Sender<bool>,
    error: Mutex<Option<String>>,
    ready: AtomicUsize,
    producers_done: AtomicUsize,
    consumers_done: AtomicUsize,
    unconfirmed: AtomicU64,
    /// Sends per named queue; the last slot counts sends to no known queue.
    sent_q: Vec<AtomicU64>,
    returned_q: Vec<AtomicU64>,
}

impl Shared {
    fn fail(&self, e: String) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        drop(slot);
        self.halt();
    }

    fn halt(&self) {
        self.stop.store(true, Relaxed);
        self.stop_tx.send_replace(true);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }

    fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Opens a connection and waits for the handshake.
async fn connect(plan: &Plan, who: &str) -> Result<Link, String> {
    let name = format!("{} {who}", plan.id);
    connect_to(&plan.uri, &name, who, None, None).await
}

/// Opens a connection to `u` named `name` (asking for `heartbeat` seconds
/// if given; reading `chunk` bytes at a time if given) and waits for the
/// handshake.
pub(crate) async fn connect_to(
    u: &Uri,
    name: &str,
    who: &str,
    heartbeat: Option<u16>,
    chunk: Option<usize>,
) -> Result<Link, String> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect((u.host.as_str(), u.port)),
    )
    .await
    .map_err(|_| format!("{who}: connecting to {}:{} timed out", u.host, u.port))?
    .map_err(|e| {
        format!(
            "{who}: cannot connect to {}:{}: {e} (is the broker running? check -h/--uri)",
            u.host, u.port
        )
    })?;
    let mut cfg = ClientConfig {
        credentials: Credentials::plain(&u.user, &u.password),
        virtual_host: short(&u.vhost)?,
        heartbeat,
        ..ClientConfig::default()
    };
    cfg.properties = FieldTable::new();
    cfg.properties.push(
        ShortString::from_static("product"),
        FieldValue::LongString(LongString::from_static("amqp-perftest")),
    );
    cfg.properties.push(
        ShortString::from_static("connection_name"),
        FieldValue::LongString(LongString::copy_from(name.as_bytes())),
    );
    let conn = Connection::client(cfg, Instant::now());
    let mut link = match chunk {
        Some(c) => Link::with_chunk(conn, tcp, c),
        None => Link::new(conn, tcp),
    };
    link.until(&format!("{who}: handshake"), SETUP_TIMEOUT, |e| {
        matches!(e, Event::Connected { .. }).then_some(())
    })
    .await?;
    Ok(link)
}

async fn open_channel(link: &mut Link, who: &str) -> Result<u16, String> {
    let ch = link
        .conn
        .open_channel()
        .map_err(|e| format!("{who}: channel.open: {e}"))?;
    link.until(&format!("{who}: channel.open"), SETUP_TIMEOUT, |e| {
        matches!(e, Event::ChannelOpened { channel } if *channel == ch).then_some(())
    })
    .await?;
    Ok(ch)
}

/// Sends a synchronous request and waits for its reply.
async fn rpc(link: &mut Link, ch: u16, m: impl Into<Method>, who: &str) -> Result<Method, String> {
    let m = m.into();
    let what = format!("{who}: {}", m.name());
    link.conn
        .send_method(ch, m)
        .map_err(|e| format!("{what}: {e}"))?;
    link.until(&what, SETUP_TIMEOUT, |e| match e {
        Event::Method { channel, method } if *channel == ch => Some(method.clone()),
        _ => None,
    })
    .await
}

/// Declares the exchange and the named queues, and binds them.
async fn declare_topology(plan: &Plan) -> Result<(), String> {
    let a = &plan.args;
    let declare_exchange = !a.exchange.is_empty() && !a.exchange.starts_with("amq.");
    if !declare_exchange && plan.queues.is_empty() {
        return Ok(());
    }
    let who = "setup";
    let mut link = connect(plan, who).await?;
    let ch = open_channel(&mut link, who).await?;
    if declare_exchange {
        rpc(
            &mut link,
            ch,
            ExchangeDeclare {
                exchange: short(&a.exchange)?,
                kind: short(&a.exchange_type)?,
                ..Default::default()
            },
            who,
        )
        .await?;
    }
    let args = a
        .queue_args
        .as_ref()
        .map(|q| q.to_table())
        .unwrap_or_default();
    for q in &plan.queues {
        rpc(
            &mut link,
            ch,
            QueueDeclare {
                queue: short(q)?,
                durable: a.persistent(),
                auto_delete: a.auto_delete,
                arguments: args.clone(),
                ..Default::default()
            },
            who,
        )
        .await?;
    }
    if !a.exchange.is_empty() {
        for (q, key) in &plan.bindings {
            rpc(
                &mut link,
                ch,
                QueueBind {
                    queue: short(&plan.queues[*q])?,
                    exchange: short(&a.exchange)?,
                    routing_key: short(key)?,
                    ..Default::default()
                },
                who,
            )
            .await?;
        }
    }
    link.close(Duration::from_secs(2)).await;
    Ok(())
}

/// Makes message bodies: the run id and a fresh timestamp in the first
/// [`STAMP_LEN`] bytes, carved out of a large shared buffer (one
/// allocation per many messages).
#[derive(Debug)]
struct BodyMaker {
    template: Vec<u8>,
    arena: BytesMut,
    fixed: Option<Bytes>,
}

impl BodyMaker {
    fn new(size: usize) -> BodyMaker {
        let mut template = vec![0u8; size];
        let fixed = if size >= STAMP_LEN {
            template[..4].copy_from_slice(&run_id().to_be_bytes());
            None
        } else {
            Some(Bytes::from(template.clone()))
        };
        BodyMaker {
            template,
            arena: BytesMut::new(),
            fixed,
        }
    }

    fn make(&mut self, ts: u64) -> Bytes {
        if let Some(b) = &self.fixed {
            return b.clone();
        }
        let n = self.template.len();
        if self.arena.capacity() - self.arena.len() < n {
            self.arena = BytesMut::with_capacity((256 * 1024).max(n));
        }
        self.arena.extend_from_slice(&self.template);
        self.arena[4..STAMP_LEN].copy_from_slice(&ts.to_be_bytes());
        self.arena.split().freeze()
    }
}

/// The send time in a body this process stamped.
fn stamp_of(body: &[u8]) -> Option<u64> {
    if body.len() < STAMP_LEN || body[..4] != run_id().to_be_bytes() {
        return None;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&body[4..STAMP_LEN]);
    Some(u64::from_be_bytes(ts))
}

const SETTLED: u64 = u64::MAX;

/// One producer: a connection, a channel, a publish loop.
struct Producer {
    link: Link,
    ch: u16,
    shared: Arc<Shared>,
    /// What each publish carries in turn (exchange and routing key) and
    /// the counting slot (named queue, or `queues.len()`) it goes to.
    routes: Vec<(BasicPublish, usize)>,
    next_route: usize,
    /// Sends per slot since the last flush.
    slot_sent: Vec<u64>,
    /// The slot returns are counted in.
    return_slot: usize,
    props: BasicProperties,
    body: BodyMaker,
    window: Option<u64>,
    limit: u64,
    rate: Option<f64>,
    /// Publish times of outstanding confirms, from sequence number `base`.
    times: VecDeque<u64>,
    base: u64,
    outstanding: u64,
    sent: u64,
    local: LocalCounts,
    samples: Vec<u64>,
    stop: watch::Receiver<bool>,
}

impl Producer {
    async fn setup(plan: &Plan, i: usize, shared: Arc<Shared>) -> Result<Producer, String> {
        let stop = shared.stop_tx.subscribe();
        let who = format!("producer {i}");
        let a = &plan.args;
        let t = &plan.producers[i];
        let mut link = connect(plan, &who).await?;
        let ch = open_channel(&mut link, &who).await?;
        if a.confirm.is_some() {
            rpc(&mut link, ch, ConfirmSelect { nowait: false }, &who).await?;
        }
        let props = BasicProperties {
            delivery_mode: a.persistent().then_some(2),
            ..Default::default()
        };
        let unknown = plan.queues.len();
        let publish = |key: &str| -> Result<BasicPublish, String> {
            Ok(BasicPublish {
                exchange: short(&t.exchange)?,
                routing_key: short(key)?,
                mandatory: a.mandatory(),
                ..Default::default()
            })
        };
        let routes = if t.cycle.is_empty() {
            vec![(publish(&t.routing_key)?, t.queue.unwrap_or(unknown))]
        } else {
            t.cycle
                .iter()
                .map(|(k, q)| Ok((publish(k)?, *q)))
                .collect::<Result<Vec<_>, String>>()?
        };
        // A return cannot be told apart by queue when keys cycle.
        let return_slot = if routes.len() == 1 {
            routes[0].1
        } else {
            unknown
        };
        if a.rate.is_some() {
            link.pace();
        }
        Ok(Producer {
            link,
            ch,
            routes,
            next_route: 0,
            slot_sent: vec![0; unknown + 1],
            return_slot,
            shared,
            props,
            body: BodyMaker::new(a.size),
            window: a.confirm.map(u64::from),
            limit: a.pmessages,
            rate: a.rate,
            times: VecDeque::new(),
            base: 1,
            outstanding: 0,
            sent: 0,
            local: LocalCounts::default(),
            samples: Vec::new(),
            stop,
        })
    }

    fn may_publish(&self, allowed: u64) -> bool {
        (self.limit == 0 || self.sent < self.limit)
            && self.window.is_none_or(|w| self.outstanding < w)
            && self.sent < allowed
            && !self.link.conn.is_blocked()
            && self.link.conn.is_flow_active(self.ch)
    }

    fn flush_counts(&mut self) {
        let s = &self.shared;
        if self.local.sent > 0 {
            for (slot, n) in self.slot_sent.iter_mut().enumerate() {
                if *n > 0 {
                    s.sent_q[slot].fetch_add(*n, Relaxed);
                    *n = 0;
                }
            }
        }
        if self.local.returned > 0 {
            s.returned_q[self.return_slot].fetch_add(self.local.returned, Relaxed);
        }
        self.local.flush(&s.counters);
        s.confirm_latency.record_batch(&mut self.samples);
    }

    fn on_events(&mut self) -> Result<(), String> {
        while let Some(e) = self.link.conn.poll_event() {
            match e {
                Event::Confirm { settled, ack, .. } => {
                    let now = now_ns();
                    for s in settled {
                        let Some(slot) = s
                            .checked_sub(self.base)
                            .and_then(|i| self.times.get_mut(i as usize))
                        else {
                            continue;
                        };
                        if *slot == SETTLED {
                            continue;
                        }
                        self.samples.push(now.saturating_sub(*slot));
                        *slot = SETTLED;
                        self.outstanding -= 1;
                        if ack {
                            self.local.confirmed += 1;
                        } else {
                            self.local.nacked += 1;
                        }
                    }
                    while self.times.front() == Some(&SETTLED) {
                        self.times.pop_front();
                        self.base += 1;
                    }
                }
                Event::Message { message, .. } => {
                    if matches!(message.method, Method::BasicReturn(_)) {
                        self.local.returned += 1;
                    }
                }
                e => {
                    if let Some(err) = fatal(&e) {
                        return Err(err);
                    }
                }
            }
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let io = |e: std::io::Error| format!("connection lost: {e}");
        loop {
            if self.shared.stopped() {
                return Ok(());
            }
            let now = Instant::now();
            self.link.tick(now);
            let allowed = match self.rate {
                Some(r) => (now - start).as_secs_f64().mul_add(r, 1.0) as u64,
                None => u64::MAX,
            };
            let mut progress = false;
            let mut n = 0;
            let mut clock = Stale::new();
            while n < PUBLISH_BATCH
                && self.may_publish(allowed)
                && self.link.pending_out() < OUT_HIGH
            {
                let ts = clock.now();
                let body = self.body.make(ts);
                let (publish, slot) = &self.routes[self.next_route];
                self.next_route += 1;
                if self.next_route == self.routes.len() {
                    self.next_route = 0;
                }
                self.slot_sent[*slot] += 1;
                let seq = self
                    .link
                    .conn
                    .publish(self.ch, publish.clone(), &self.props, body)
                    .map_err(|e| format!("basic.publish: {e}"))?;
                if seq.is_some() {
                    self.times.push_back(ts);
                    self.outstanding += 1;
                }
                self.sent += 1;
                self.local.sent += 1;
                n += 1;
            }
            progress |= n > 0;
            progress |= self.link.try_flush().map_err(io)?;
            for _ in 0..READS_PER_TURN {
                if !self.link.try_fill().map_err(io)? {
                    break;
                }
                progress = true;
                self.on_events()?;
            }
            self.on_events()?;
            progress |= self.link.try_flush().map_err(io)?;
            self.flush_counts();
            if self.limit > 0
                && self.sent >= self.limit
                && self.outstanding == 0
                && self.link.pending_out() == 0
            {
                self.shared.producers_done.fetch_add(1, Relaxed);
                return Ok(());
            }
            if self.link.eof() || self.link.conn.is_closed() {
                return Err("the broker closed the connection".into());
            }
            if progress {
                tokio::task::yield_now().await;
            } else {
                let due = self
                    .rate
                    .map(|r| start + Duration::from_secs_f64(self.sent as f64 / r));
                self.link
                    .wait(true, due, Wake::Changed(&mut self.stop))
                    .await
                    .map_err(io)?;
            }
        }
    }
}

/// One consumer: a connection, a channel, a consume loop.
struct Consumer {
    link: Link,
    ch: u16,
    shared: Arc<Shared>,
    no_ack: bool,
    every: u64,
    unacked: u64,
    last_tag: u64,
    limit: u64,
    rate: Option<f64>,
    received: u64,
    local: LocalCounts,
    samples: Vec<u64>,
    stop: watch::Receiver<bool>,
}

impl Consumer {
    async fn setup(plan: &Plan, j: usize, shared: Arc<Shared>) -> Result<Consumer, String> {
        let stop = shared.stop_tx.subscribe();
        let who = format!("consumer {j}");
        let a = &plan.args;
        let mut link = connect(plan, &who).await?;
        let ch = open_channel(&mut link, &who).await?;
        if a.qos > 0 {
            let qos = BasicQos {
                prefetch_count: a.qos,
                ..Default::default()
            };
            rpc(&mut link, ch, qos, &who).await?;
        }
        if a.global_qos > 0 {
            let qos = BasicQos {
                prefetch_count: a.global_qos,
                global: true,
                ..Default::default()
            };
            rpc(&mut link, ch, qos, &who).await?;
        }
        let queue = match plan.consumers[j] {
            Some(q) => plan.queues[q].clone(),
            None => {
                let args = a
                    .queue_args
                    .as_ref()
                    .map(|q| q.to_table())
                    .unwrap_or_default();
                let ok = rpc(
                    &mut link,
                    ch,
                    QueueDeclare {
                        exclusive: true,
                        auto_delete: true,
                        arguments: args,
                        ..Default::default()
                    },
                    &who,
                )
                .await?;
                let Method::QueueDeclareOk(ok) = ok else {
                    return Err(format!("{who}: queue.declare answered by {}", ok.name()));
                };
                let name = ok.queue.to_string_lossy().into_owned();
                rpc(
                    &mut link,
                    ch,
                    QueueBind {
                        queue: ok.queue,
                        exchange: short(&a.exchange)?,
                        routing_key: short(&plan.server_named_key)?,
                        ..Default::default()
                    },
                    &who,
                )
                .await?;
                name
            }
        };
        rpc(
            &mut link,
            ch,
            BasicConsume {
                queue: short(&queue)?,
                no_ack: a.autoack,
                ..Default::default()
            },
            &who,
        )
        .await?;
        if a.consumer_rate.is_some() {
            link.pace();
        }
        Ok(Consumer {
            link,
            ch,
            shared,
            no_ack: a.autoack,
            every: u64::from(a.multi_ack_every.max(1)),
            unacked: 0,
            last_tag: 0,
            limit: a.cmessages,
            rate: a.consumer_rate,
            received: 0,
            local: LocalCounts::default(),
            samples: Vec::new(),
            stop,
        })
    }

    fn ack_pending(&mut self) -> Result<(), String> {
        if self.unacked > 0 {
            self.link
                .conn
                .ack(self.ch, self.last_tag, self.unacked > 1)
                .map_err(|e| format!("basic.ack: {e}"))?;
            self.unacked = 0;
        }
        Ok(())
    }

    /// Handles events while the rate allows (`allowed` deliveries in all).
    fn on_events(&mut self, allowed: u64) -> Result<(), String> {
        let mut clock = Stale::new();
        while self.received < allowed && (self.limit == 0 || self.received < self.limit) {
            let Some(e) = self.link.conn.poll_event() else {
                break;
            };
            match e {
                Event::Message { message, .. } => {
                    let Method::BasicDeliver(d) = &message.method else {
                        continue;
                    };
                    self.received += 1;
                    self.local.received += 1;
                    if let Some(ts) = stamp_of(&message.body) {
                        self.samples.push(clock.now().saturating_sub(ts));
                    }
                    if !self.no_ack {
                        self.unacked += 1;
                        self.last_tag = d.delivery_tag;
                        if self.unacked >= self.every {
                            self.ack_pending()?;
                        }
                    }
                }
                Event::Method {
                    method: Method::BasicCancel(c),
                    ..
                } => {
                    return Err(format!(
                        "the broker cancelled consumer {} (was the queue deleted?)",
                        c.consumer_tag
                    ));
                }
                e => {
                    if let Some(err) = fatal(&e) {
                        return Err(err);
                    }
                }
            }
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let io = |e: std::io::Error| format!("connection lost: {e}");
        loop {
            if self.shared.stopped() {
                return Ok(());
            }
            let now = Instant::now();
            self.link.tick(now);
            let allowed = match self.rate {
                Some(r) => (now - start).as_secs_f64().mul_add(r, 1.0) as u64,
                None => u64::MAX,
            };
            let mut progress = false;
            let before = self.received;
            self.on_events(allowed)?;
            let may_read = self.received < allowed;
            if may_read {
                for _ in 0..READS_PER_TURN {
                    if !self.link.try_fill().map_err(io)? {
                        break;
                    }
                    progress = true;
                    self.on_events(allowed)?;
                    if !self.no_ack {
                        // Acks out at once: with a small prefetch the
                        // broker waits for them.
                        self.link.try_flush().map_err(io)?;
                    }
                    if self.received >= allowed {
                        break;
                    }
                }
            }
            progress |= self.received != before;
            if self.limit > 0 && self.received >= self.limit {
                self.ack_pending()?;
                self.link.try_flush().map_err(io)?;
                self.local.flush(&self.shared.counters);
                self.shared.latency.record_batch(&mut self.samples);
                self.shared.consumers_done.fetch_add(1, Relaxed);
                return Ok(());
            }
            if !progress {
                // Idle: settle a partial multi-ack batch so a prefetch
                // smaller than -A cannot stall the consumer.
                self.ack_pending()?;
            }
            progress |= self.link.try_flush().map_err(io)?;
            self.local.flush(&self.shared.counters);
            self.shared.latency.record_batch(&mut self.samples);
            if self.link.eof() || self.link.conn.is_closed() {
                // Report the close reason if the codec has it queued.
                self.on_events(u64::MAX)?;
                return Err("the broker closed the connection".into());
            }
            if progress {
                tokio::task::yield_now().await;
            } else {
                let due = self
                    .rate
                    .filter(|_| !may_read)
                    .map(|r| start + Duration::from_secs_f64(self.received as f64 / r));
                self.link
                    .wait(may_read, due, Wake::Changed(&mut self.stop))
                    .await
                    .map_err(io)?;
            }
        }
    }
}

/// Where progress lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Standard output.
    Stdout,
    /// Standard error (with --json).
    Stderr,
    /// Nowhere (--quiet, tests).
    Off,
}

fn emit(to: Progress, line: &str) {
    match to {
        Progress::Stdout => {
            let _ = writeln!(std::io::stdout(), "{line}");
        }
        Progress::Stderr => {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
        Progress::Off => {}
    }
}

/// Runs a load test on a new runtime with `--threads` workers.
pub fn run(args: RunArgs, progress: Progress) -> Summary {
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get().min(4))
            .unwrap_or(2)
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failed(&args, format!("cannot start the runtime: {e}")),
    };
    rt.block_on(run_async(args, progress))
}

fn failed(args: &RunArgs, error: String) -> Summary {
    Summary {
        id: args.id.clone().unwrap_or_else(default_id),
        duration: Duration::ZERO,
        totals: Totals::default(),
        expected_received: None,
        unconfirmed: 0,
        confirms: args.confirm.is_some(),
        count_limited: args.pmessages > 0 || args.cmessages > 0,
        latency: Percentiles::default(),
        confirm_latency: Percentiles::default(),
        broker_cpu_s: None,
        self_cpu_s: None,
        error: Some(error),
    }
}

/// Runs a load test on the current tokio runtime (multi-threaded).
pub async fn run_async(args: RunArgs, progress: Progress) -> Summary {
    let plan = match Plan::new(args.clone()) {
        Ok(p) => Arc::new(p),
        Err(e) => return failed(&args, e),
    };
    if let Err(e) = declare_topology(&plan).await {
        return failed(&args, e);
    }
    let slots = plan.queues.len() + 1;
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        latency: SharedHistogram::default(),
        confirm_latency: SharedHistogram::default(),
        stop: AtomicBool::new(false),
        stop_tx: watch::channel(false).0,
        error: Mutex::new(None),
        ready: AtomicUsize::new(0),
        producers_done: AtomicUsize::new(0),
        consumers_done: AtomicUsize::new(0),
        unconfirmed: AtomicU64::new(0),
        sent_q: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        returned_q: (0..slots).map(|_| AtomicU64::new(0)).collect(),
    });
    let (go_tx, go_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // Consumers first: they must be consuming before anything is sent.
    for j in 0..plan.consumers.len() {
        let (plan, shared, mut go) = (plan.clone(), shared.clone(), go_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = match Consumer::setup(&plan, j, shared.clone()).await {
                Ok(c) => c,
                Err(e) => return shared.fail(e),
            };
            shared.ready.fetch_add(1, Relaxed);
            let _ = go.wait_for(|g| *g).await;
            if let Err(e) = c.run().await {
                shared.fail(format!("consumer {j}: {e}"));
            }
            c.link.close(Duration::from_secs(2)).await;
        }));
    }
    let agents = plan.producers.len() + plan.consumers.len();
    if !wait_ready(&shared, plan.consumers.len()).await {
        let _ = go_tx.send(true);
        return finish(&plan, &shared, tasks, Instant::now(), None, None).await;
    }
    for i in 0..plan.producers.len() {
        let (plan, shared, mut go) = (plan.clone(), shared.clone(), go_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut p = match Producer::setup(&plan, i, shared.clone()).await {
                Ok(p) => p,
                Err(e) => return shared.fail(e),
            };
            shared.ready.fetch_add(1, Relaxed);
            let _ = go.wait_for(|g| *g).await;
            if let Err(e) = p.run().await {
                shared.fail(format!("producer {i}: {e}"));
            }
            shared.unconfirmed.fetch_add(p.outstanding, Relaxed);
            p.flush_counts();
            p.link.close(Duration::from_secs(2)).await;
        }));
    }
    if !wait_ready(&shared, agents).await {
        let _ = go_tx.send(true);
        return finish(&plan, &shared, tasks, Instant::now(), None, None).await;
    }
    let broker_pid = plan.args.broker_pid.map(|p| p.to_string());
    let broker_cpu0 = match broker_pid.as_deref().map(process_cpu_seconds) {
        Some(Err(e)) => {
            shared.fail(format!("--broker-pid: {e}"));
            None
        }
        Some(Ok(c)) => Some(c),
        None => None,
    };
    let self_cpu0 = process_cpu_seconds("self").ok();
    let start = Instant::now();
    let _ = go_tx.send(true);
    let run_hist = coordinate(&plan, &shared, start, progress).await;
    let duration = start.elapsed();
    let broker_cpu = broker_pid
        .as_deref()
        .and_then(|p| process_cpu_seconds(p).ok())
        .zip(broker_cpu0)
        .map(|(b, a)| b - a);
    let self_cpu = process_cpu_seconds("self")
        .ok()
        .zip(self_cpu0)
        .map(|(b, a)| b - a);
    let mut s = finish(&plan, &shared, tasks, start, broker_cpu, self_cpu).await;
    s.duration = duration;
    s.latency = Percentiles::of(&run_hist.latency);
    s.confirm_latency = Percentiles::of(&run_hist.confirm);
    s
}

/// Waits until `n` agents are set up; false on an error.
async fn wait_ready(shared: &Shared, n: usize) -> bool {
    while shared.ready.load(Relaxed) < n {
        if shared.stopped() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    !shared.stopped()
}

/// Prints progress every interval and decides when the run ends.
async fn coordinate(
    plan: &Plan,
    shared: &Shared,
    start: Instant,
    progress: Progress,
) -> RunHistograms {
    let a = &plan.args;
    let interval = Duration::from_secs_f64(a.interval);
    let cols = Columns {
        returned: a.mandatory(),
        confirms: a.confirm.is_some(),
    };
    let deadline = (a.time > 0).then(|| start + Duration::from_secs(a.time));
    let mut hist = RunHistograms::default();
    let mut next_report = start + interval;
    let mut last = Totals::default();
    let mut last_at = start;
    let mut last_received = (0u64, Instant::now());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let np = plan.producers.len();
    let nc = plan.consumers.len();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            _ = &mut ctrl_c => { shared.halt(); }
        }
        let now = Instant::now();
        if now >= next_report {
            let t = shared.counters.totals();
            let lat = shared.latency.take();
            let conf = shared.confirm_latency.take();
            hist.add(&lat, &conf);
            let delta = Totals {
                sent: t.sent - last.sent,
                returned: t.returned - last.returned,
                confirmed: t.confirmed - last.confirmed,
                nacked: t.nacked - last.nacked,
                received: t.received - last.received,
            };
            let line = progress_line(
                &plan.id,
                now - start,
                delta,
                now - last_at,
                cols,
                &Percentiles::of(&lat),
                &Percentiles::of(&conf),
            );
            emit(progress, &line);
            last = t;
            last_at = now;
            while next_report <= now {
                next_report += interval;
            }
        }
        if shared.stopped() || deadline.is_some_and(|d| now >= d) {
            break;
        }
        let producers_done = np > 0 && shared.producers_done.load(Relaxed) == np;
        let consumers_done = nc > 0 && shared.consumers_done.load(Relaxed) == nc;
        if a.cmessages > 0 && nc > 0 {
            if consumers_done && (np == 0 || a.pmessages == 0 || producers_done) {
                break;
            }
            continue;
        }
        if !producers_done {
            continue;
        }
        if nc == 0 {
            break;
        }
        let t = shared.counters.totals();
        if t.received != last_received.0 {
            last_received = (t.received, now);
        }
        let (sent_q, returned_q) = per_queue(shared);
        match plan.expected_received(&sent_q, &returned_q) {
            Some(e) if t.received >= e => break,
            _ if now - last_received.1 >= DRAIN_TIMEOUT => break,
            _ => {}
        }
    }
    shared.halt();
    // Samples recorded after the last report.
    hist.add(&shared.latency.take(), &shared.confirm_latency.take());
    hist
}

fn per_queue(shared: &Shared) -> (Vec<u64>, Vec<u64>) {
    (
        shared.sent_q.iter().map(|a| a.load(Relaxed)).collect(),
        shared.returned_q.iter().map(|a| a.load(Relaxed)).collect(),
    )
}

/// Stops the agents, waits for them, and builds the summary.
async fn finish(
    plan: &Plan,
    shared: &Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    start: Instant,
    broker_cpu_s: Option<f64>,
    self_cpu_s: Option<f64>,
) -> Summary {
    shared.halt();
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
        {
            shared.fail("an agent did not stop within 10 s".into());
        }
    }
    let totals = shared.counters.totals();
    let (sent_q, returned_q) = per_queue(shared);
    let a = &plan.args;
    Summary {
        id: plan.id.clone(),
        duration: start.elapsed(),
        totals,
        expected_received: plan.expected_received(&sent_q, &returned_q),
        unconfirmed: shared.unconfirmed.load(Relaxed),
        confirms: a.confirm.is_some(),
        count_limited: a.pmessages > 0 || a.cmessages > 0,
        latency: Percentiles::default(),
        confirm_latency: Percentiles::default(),
        broker_cpu_s,
        self_cpu_s,
        error: shared.error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_a_stamp_and_share_an_allocation() {
        let mut m = BodyMaker::new(16);
        let a = m.make(42);
        let b = m.make(43);
        assert_eq!(a.len(), 16);
        assert_eq!(stamp_of(&a), Some(42));
        assert_eq!(stamp_of(&b), Some(43));
        let mut small = BodyMaker::new(4);
        assert_eq!(stamp_of(&small.make(1)), None);
        assert_eq!(stamp_of(&[0u8; 12]), None);
    }

    #[test]
    fn a_stale_clock_is_read_afresh_first_and_every_sixteenth_time() {
        let mut c = Stale::new();
        let first = c.now();
        std::thread::sleep(Duration::from_millis(2));
        for _ in 1..CLOCK_EVERY {
            assert_eq!(c.now(), first, "answered from the last read");
        }
        let next = c.now();
        assert!(next >= first + 2_000_000, "read afresh after {CLOCK_EVERY}");
        // A new one (a new batch) reads the clock at once.
        std::thread::sleep(Duration::from_millis(2));
        assert!(Stale::new().now() >= next + 2_000_000);
    }
}
