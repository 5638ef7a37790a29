//! The broker's deterministic core: virtual hosts (each an
//! [`amqp_router::Router`]), queues, consumers, deliveries, unacknowledged
//! messages, publisher confirms and transactions.
//!
//! It never touches a socket, a thread, a clock or a file. The shell feeds
//! it each connection's [`amqp_codec::Event`]s ([`Core::handle`]) and takes
//! back, per connection, what to do with that connection's codec
//! ([`Out`], [`Core::take_outbox`]); [`Core::take_woken`] names the other
//! connections that have something new (deliveries to their consumers,
//! cancels). Time comes in as an argument.

use crate::auth::{Access, Auth};
use crate::consumers::Key as ConsumerKey;
use crate::lifecycle::{self, Overflow, QueueArgs, Reason};
use crate::paging::Pager;
use crate::queue::{self, Entry, Msg, Ready, StreamLog};
use crate::store::{ARRIVED_HEADER, QueueKey, Record, STREAM_AT_HEADER};
use amqp_codec::types::method::*;
use amqp_codec::types::{
    BasicProperties, FieldTable, FieldValue, LongString, Method, ProtocolError, ReplyCode,
    ShortString,
};
use amqp_codec::{Answer, Capabilities, DecisionId, Event};
use amqp_codec::{Decision, Message};
use amqp_router as r;
use amqp_router::{Bind, OwnerId, Publish, QueueUsage, Removed, RouteScratch, Router};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

// Management: read-only snapshots, counters and admin operations.
#[path = "snapshot.rs"]
pub mod snapshot;

/// The core's hash maps: foldhash (the keys are the broker's own ids and
/// names; SipHash's cost showed in profiles), randomly seeded, or with a
/// fixed seed on a thread that asked for [`fixed_hashing_on_this_thread`].
type HashMap<K, V> = std::collections::HashMap<K, V, CoreHasher>;

thread_local! {
    static FIXED_HASHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Hash maps the core creates on this thread from now on iterate in the
/// same order in every process, so a simulation or a fuzzer input replays
/// exactly from its seed. A server keeps random seeds (hash flooding).
pub fn fixed_hashing_on_this_thread() {
    FIXED_HASHING.with(|f| f.set(true));
}

/// The core's [`std::hash::BuildHasher`]: see [`fixed_hashing_on_this_thread`].
#[derive(Debug, Clone)]
pub struct CoreHasher(foldhash::fast::SeedableRandomState);

impl Default for CoreHasher {
    fn default() -> Self {
        CoreHasher(if FIXED_HASHING.with(std::cell::Cell::get) {
            foldhash::fast::SeedableRandomState::fixed()
        } else {
            foldhash::fast::SeedableRandomState::random()
        })
    }
}

impl std::hash::BuildHasher for CoreHasher {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Identifies a connection to the core (the shell's choice, unique).
pub type ConnId = u64;
/// Identifies a queue (the router's handle for it).
pub type QueueId = u64;

/// Bodies smaller than this are copied out of the read buffer they
/// arrived in, so that a queued small message does not pin a whole
/// read buffer; larger ones are kept as slices of it (zero-copy from
/// publish to deliver).
pub const COMPACT_BELOW: usize = 8 * 1024;

/// Bytes of deliveries the core hands one connection before it stops
/// dispatching to that connection's consumers until the shell has written
/// them all ([`Core::resume`]). Taking the outbox
/// ([`Core::take_outbox`]) does not make room: a consumer whose shell
/// keeps encoding deliveries without getting to write them would
/// otherwise grow its output without bound while it received nothing.
pub const OUTBOX_LIMIT: usize = 1024 * 1024;

/// Emptied outboxes the core keeps for reuse, at most ...
const SPARE_OUTBOXES: usize = 8;
/// ... of room for at most this many instructions each (a larger one is
/// freed).
const SPARE_OUTBOX_MAX: usize = 1024;
/// The vectors an ack settles through are kept for reuse up to this many
/// entries of room.
const SETTLE_BUF_MAX: usize = 4096;
/// The store's emptied record vector is kept for reuse up to this many
/// records of room ([`Core::recycle_store_ops`]).
const SPARE_STORE_OPS_MAX: usize = 16 * 1024;

/// Consumer bias, RabbitMQ's `consumer_bias` with credit flow in the
/// shape of this broker: a queue holding more than this many ready
/// messages while its consumers are taking them ...
pub const FLOW_BACKLOG: usize = 1000;
/// ... and a batch of a connection's input that put at least this many
/// messages into such queues (a publisher that writes one message at a
/// time is never held) ...
pub const FLOW_BATCH: u32 = 32;
/// ... holds the publisher (the shell reads nothing more from it) until
/// the last such queue has delivered to its consumers as many messages as
/// that batch put in, or for this long at most. A queue's consumers are
/// "taking" messages when it delivered within [`FLOW_ACTIVE`].
///
/// Without it, a publisher pipelining 1,000 unconfirmed messages outruns
/// a consumer acking each of its 100 prefetched ones: both compete for
/// the same CPU, the consumer's round trips lose, and the queue grows by
/// hundreds of thousands of messages a second while the consumer gets
/// fewer. RabbitMQ's queue process serves acks and consumer credit
/// before publishes once egress falls behind ingress, and its credit flow
/// then stops reading from the publisher (connection state `flow`).
pub const FLOW_HOLD: std::time::Duration = std::time::Duration::from_millis(1);
/// See [`FLOW_HOLD`].
pub const FLOW_ACTIVE: std::time::Duration = std::time::Duration::from_millis(10);

/// What the shell must do with one connection's codec, in order.
#[derive(Debug)]
pub enum Out {
    /// `send_method(channel, method)`.
    Method {
        /// The channel.
        channel: u16,
        /// The method (boxed: most instructions are deliveries, which
        /// should not all take a method's room).
        method: Box<Method>,
    },
    /// `send_content(channel, method, &msg.properties, msg.body.clone())`:
    /// a get-ok or return (or a Direct Reply-to delivery).
    Content {
        /// The channel.
        channel: u16,
        /// `basic.deliver`, `basic.get-ok` or `basic.return`.
        method: Box<Method>,
        /// The message.
        msg: Msg,
    },
    /// A `basic.deliver` of `msg` to a consumer (its exchange and
    /// routing key are the message's, filled in by the shell).
    Deliver {
        /// The channel.
        channel: u16,
        /// The delivery tag.
        delivery_tag: u64,
        /// The redelivered flag.
        redelivered: bool,
        /// The consumer's tag.
        consumer_tag: ShortString,
        /// The message.
        msg: Msg,
    },
    /// Close the channel (soft code) or the connection (hard code) with
    /// this error, naming its class and method.
    Refuse(ProtocolError),
    /// Close the channel (the connection: channel 0) with this code and
    /// text as they are, naming no method (class and method 0: the
    /// broker's own decision, such as a consumer timeout).
    Close {
        /// The channel (0: the connection).
        channel: u16,
        /// The reply code.
        code: ReplyCode,
        /// The whole reply text.
        text: String,
    },
    /// Answer a handshake decision.
    Decide {
        /// The decision.
        id: DecisionId,
        /// The answer.
        answer: Answer,
    },
    /// Refuse `channel.open` (530, `text`) once `cap` channels are open on
    /// the connection: what is left of its user's `max-channels`.
    ChannelCap {
        /// Channels the connection may have open.
        cap: usize,
        /// The refusal's text, without `NOT_ALLOWED - `.
        text: String,
    },
}

/// A method for [`Out::Method`] or [`Out::Content`].
fn boxed(m: impl Into<Method>) -> Box<Method> {
    Box::new(m.into())
}

impl Out {
    /// Carries this instruction out on the connection's codec. An error
    /// means the channel or connection closed meanwhile (nothing to send).
    pub fn apply_to(
        self,
        conn: &mut amqp_codec::Connection,
    ) -> Result<(), amqp_codec::CommandError> {
        match self {
            Out::Method { channel, method } => conn.send_method(channel, *method),
            Out::Content {
                channel,
                method,
                msg,
            } => conn
                .send_content_encoded(channel, *method, msg.raw_properties(), msg.body_to_send())
                .map(|_| ()),
            Out::Deliver {
                channel,
                delivery_tag,
                redelivered,
                consumer_tag,
                msg,
            } => {
                let method = BasicDeliver {
                    consumer_tag,
                    delivery_tag,
                    redelivered,
                    exchange: msg.exchange_name(),
                    routing_key: msg.routing_key_name(),
                };
                conn.send_content_encoded(
                    channel,
                    method.into(),
                    msg.raw_properties(),
                    msg.body_to_send(),
                )
                .map(|_| ())
            }
            Out::Refuse(e) => conn.refuse_error(e.channel_id(), &e),
            Out::Close {
                channel: 0,
                code,
                text,
            } => conn.close(code, &text),
            Out::Close {
                channel,
                code,
                text,
            } => conn.close_channel(channel, code, &text),
            Out::Decide { id, answer } => conn.decide(id, answer),
            Out::ChannelCap { cap, text } => {
                conn.set_channel_cap(Some((cap, text)));
                Ok(())
            }
        }
    }
}

/// Static configuration of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Users and permissions.
    pub auth: Auth,
    /// Virtual hosts to create.
    pub vhosts: Vec<String>,
    /// Seed of the generator of consumer tags.
    pub seed: u64,
    /// `consumer_timeout`: a channel whose oldest unacknowledged delivery
    /// is older than this is closed (406) at its next tick; `None` never.
    pub consumer_timeout: Option<Duration>,
    /// How often channels check their unacknowledged deliveries
    /// (RabbitMQ's `channel_tick_interval`).
    pub channel_tick: Duration,
    /// Policies, each in the vhost it names (validated: see
    /// [`crate::policy::Policy::new`]; invalid ones are left out).
    pub policies: Vec<amqp_router::definitions::PolicyDef>,
    /// Limits per vhost and per user, and on message size.
    pub limits: Limits,
}

/// Limits, as RabbitMQ's `set_vhost_limits`, `set_user_limits` and
/// `max_message_size`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Per vhost: `max-connections`, `max-queues`.
    pub vhosts: std::collections::HashMap<String, VhostLimits>,
    /// Per user: `max-connections`.
    pub users: std::collections::HashMap<String, UserLimits>,
    /// The largest message body accepted (RabbitMQ's default: 128 MiB).
    pub max_message_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            vhosts: Default::default(),
            users: Default::default(),
            max_message_size: MAX_MESSAGE_SIZE,
        }
    }
}

/// RabbitMQ's default `max_message_size` (128 MiB).
pub const MAX_MESSAGE_SIZE: u64 = 128 << 20;

/// A vhost's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhostLimits {
    /// Open connections.
    pub max_connections: Option<u64>,
    /// Queues.
    pub max_queues: Option<u64>,
}

/// A user's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserLimits {
    /// Open connections.
    pub max_connections: Option<u64>,
    /// Open channels, over all the user's connections (RabbitMQ's
    /// `max-channels`).
    pub max_channels: Option<u64>,
}

/// RabbitMQ's default `consumer_timeout` (30 minutes).
pub const CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// RabbitMQ's default `channel_tick_interval` (60 s).
pub const CHANNEL_TICK: Duration = Duration::from_secs(60);

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            auth: Auth::default(),
            vhosts: vec!["/".into()],
            seed: 0x5eed,
            consumer_timeout: Some(CONSUMER_TIMEOUT),
            channel_tick: CHANNEL_TICK,
            policies: Vec::new(),
            limits: Limits::default(),
        }
    }
}

/// What the core knows of a connection's peer when it connects.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Connected over a loopback address.
    pub loopback: bool,
    /// The user name a verified TLS client certificate gives (its subject
    /// as [`crate::tls`] formats it), for SASL `EXTERNAL`.
    pub tls_identity: Option<String>,
    /// Over TLS: the session, for the management API.
    pub tls: Option<crate::tls::Session>,
}

#[derive(Debug)]
struct Consumer {
    queue: QueueId,
    no_ack: bool,
    prefetch: u16,
    unacked: u32,
    /// A stream consumer: the next offset it reads.
    cursor: Option<u64>,
}

#[derive(Debug)]
struct Unacked {
    queue: QueueId,
    entry: Entry,
    /// The consumer it was delivered to (`None` for basic.get).
    consumer: Option<ConsumerKey>,
    /// When it was delivered (the consumer timeout).
    at: Option<Instant>,
}

/// What waits for the store to make records durable.
#[derive(Debug, Clone, Copy)]
enum Settle {
    /// A publisher confirm: (sequence number, ack).
    Confirm(u64, bool),
    /// A `tx.commit-ok`.
    CommitOk,
}

/// A publish held by a transaction until commit.
#[derive(Debug)]
struct TxPublish {
    queues: Vec<QueueId>,
    msg: Msg,
    /// (exchange, routing key) of a mandatory message that routed nowhere.
    ret: Option<(ShortString, ShortString)>,
}

#[derive(Debug, Default)]
struct Tx {
    publishes: Vec<TxPublish>,
    acks: Vec<(u64, Unacked, TxAck)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxAck {
    Ack,
    Requeue,
    Drop,
}

/// A channel's publish sequence numbers not settled yet, as flags from
/// the oldest unsettled one on. The numbers come one more at each publish
/// and are settled mostly in order, so a deque of flags serves where a
/// tree would cost a node each.
#[derive(Debug, Default)]
struct Unsettled {
    /// The number of the first flag (the oldest unsettled one).
    base: u64,
    /// Whether each number from `base` on is unsettled; the first is
    /// (when there is one).
    flags: VecDeque<bool>,
}

impl Unsettled {
    fn insert(&mut self, seq: u64) {
        if self.flags.is_empty() {
            self.base = seq;
        }
        let Some(i) = seq.checked_sub(self.base) else {
            return; // settled long ago: the codec numbers them in order
        };
        let i = i as usize;
        if i >= self.flags.len() {
            self.flags.resize(i, false);
            self.flags.push_back(true);
        } else {
            self.flags[i] = true;
        }
    }

    fn remove(&mut self, seq: u64) {
        let Some(i) = seq.checked_sub(self.base) else {
            return;
        };
        if let Some(f) = self.flags.get_mut(i as usize) {
            *f = false;
        }
        while self.flags.front() == Some(&false) {
            self.flags.pop_front();
            self.base += 1;
        }
    }

    /// The oldest unsettled number.
    fn first(&self) -> Option<u64> {
        (!self.flags.is_empty()).then_some(self.base)
    }
}

#[derive(Debug, Default)]
struct Chan {
    /// An error closed it; events still queued for it are ignored.
    closing: bool,
    /// The route of its last publish, shared by the messages that follow
    /// alike.
    routes: queue::Routes,
    next_tag: u64,
    unacked: crate::tags::TagMap<Unacked>,
    /// Unacked deliveries to consumers (the global limit counts these).
    consumer_unacked: u32,
    consumers: crate::consumers::ByTag<Consumer, CoreHasher>,
    prefetch: u16,
    global_prefetch: u16,
    confirm: bool,
    /// Publish sequence numbers settled in this batch: (seqno, ack).
    confirms: Vec<(u64, bool)>,
    /// Publish sequence numbers not confirmed yet (a `multiple` confirm may
    /// only cover settled ones).
    unsettled: Unsettled,
    tx: Option<Tx>,
    last_queue: Option<ShortString>,
    /// Direct reply-to: the consumer tag and the reply-to suffix.
    reply_consumer: Option<(ShortString, String)>,
}

#[derive(Debug, Default)]
struct Conn {
    peer: Peer,
    user: Option<String>,
    vhost: Option<Arc<str>>,
    /// The user's permission in the vhost, resolved when it opened.
    permission: Option<crate::auth::Permission>,
    /// The user's topic permissions in the vhost, compiled when it opened.
    topic: Vec<crate::auth::TopicGrant>,
    /// Permission checks already made on this connection (bounded), so a
    /// publisher's regular expressions run once per exchange, not per
    /// message.
    allowed: HashMap<(Access, ShortString), bool>,
    /// The last of them (a publisher names the same exchange each time).
    last_allowed: Option<(Access, ShortString, bool)>,
    caps: Capabilities,
    /// Management: addresses, client properties, tuning.
    mgmt: snapshot::ConnInfo,
    channels: HashMap<u16, Chan>,
    outbox: Vec<Out>,
    /// Bytes of deliveries handed to the shell since it last wrote
    /// everything (see [`OUTBOX_LIMIT`]).
    outbox_bytes: usize,
    throttled: bool,
    /// A publisher stopped by a resource alarm (the shell stops reading).
    blocked: bool,
    /// Held by consumer bias ([`FLOW_HOLD`]): the hold's number (its
    /// deadline and its queue's entry name it).
    held: Option<u64>,
    /// When it was last held (management shows `flow` for a second).
    held_at: Option<Instant>,
    /// A connection-level error closed it.
    closing: bool,
    /// The channel cap last given to the codec (the user's
    /// `max-channels`).
    channel_cap: Option<usize>,
    /// The SASL mechanism it logged in with.
    mechanism: Option<String>,
}

/// A queue's reference to one of its consumers.
#[derive(Debug, Clone)]
struct QConsumer {
    conn: ConnId,
    ch: u16,
    tag: ShortString,
    /// Its key on its channel (deliveries find it by this, not the tag).
    key: ConsumerKey,
    /// `x-priority` (0 by default).
    priority: i64,
    /// Registration order (single active consumer: the oldest receives).
    since: u64,
}

#[derive(Debug)]
struct QState {
    /// (vhost, name): the store's records name it so.
    key: QueueKey,
    ready: Ready,
    /// Consumers by descending priority; within a priority, in
    /// round-robin order from `rr` (one priority) or rotated to the end of
    /// their group as they receive (several priorities).
    consumers: Vec<QConsumer>,
    rr: usize,
    exclusive_consumer: bool,
    auto_delete: bool,
    had_consumers: bool,
    /// A quorum queue with `reject-publish` went over its limit: publishes
    /// are refused until it is back under 80 % of it (RabbitMQ 3.10's
    /// `rabbit_fifo` soft limit).
    rejecting: bool,
    /// TTL, expiry, dead-lettering, limits, priorities: the arguments
    /// combined with the policy in force.
    args: QueueArgs,
    /// What the queue's own arguments say.
    declared: QueueArgs,
    /// A stream queue's log (`ready` stays empty).
    stream: Option<StreamLog>,
    /// The name of the policy in force.
    policy: Option<String>,
    /// The deadline this queue has in the core's timers, if any.
    armed: Option<Instant>,
    /// Last declared, consumed from or read (`x-expires`).
    last_used: Option<Instant>,
    /// Durable: its persistent messages are in the store.
    durable: bool,
    /// Management: message counters.
    stats: snapshot::MessageStats,
    /// When it last delivered to a consumer (consumer bias).
    delivered_at: Option<Instant>,
    /// Messages delivered to consumers so far (consumer bias).
    delivered: u64,
    /// Publishers held until `delivered` reaches a count ([`FLOW_HOLD`]):
    /// (connection, count, hold number); and the least of those counts.
    holding: Vec<(ConnId, u64, u64)>,
    holding_until: u64,
}

impl QState {
    fn new(
        vhost: &str,
        name: ShortString,
        durable: bool,
        auto_delete: bool,
        arguments: &FieldTable,
        pager: Option<&Pager>,
    ) -> QState {
        let args = QueueArgs::from_arguments(arguments);
        QState {
            key: crate::store::queue_key(vhost, name),
            ready: if args.kind == lifecycle::QueueKind::Quorum {
                Ready::returns_first()
            } else {
                Ready::with_priorities(args.max_priority.unwrap_or(0))
            }
            .paged(pager.cloned()),
            consumers: Vec::new(),
            rr: 0,
            exclusive_consumer: false,
            auto_delete,
            had_consumers: false,
            rejecting: false,
            declared: args.clone(),
            stream: (args.kind == lifecycle::QueueKind::Stream).then(StreamLog::new),
            policy: None,
            args,
            armed: None,
            last_used: None,
            durable,
            stats: snapshot::MessageStats::default(),
            delivered_at: None,
            delivered: 0,
            holding: Vec::new(),
            holding_until: u64::MAX,
        }
    }

    fn key(&self) -> QueueKey {
        self.key.clone()
    }

    fn vhost(&self) -> &String {
        &self.key.0
    }

    fn name(&self) -> &ShortString {
        &self.key.1
    }

    /// Whether `msg` is in the store for this queue: a durable queue's
    /// persistent messages, and every message of a (durable) quorum queue
    /// whatever its delivery mode, as RabbitMQ.
    /// A quorum queue's `reject-publish` state after a change: over the
    /// limit it refuses, at or under 80 % of every limit it accepts again,
    /// in between it stays as it was.
    fn update_rejecting(&mut self) {
        let a = &self.args;
        if a.kind != lifecycle::QueueKind::Quorum || a.overflow != Overflow::RejectPublish {
            return;
        }
        let (len, bytes) = (self.ready.len() as u64, self.ready.bytes() as u64);
        let over =
            a.max_length.is_some_and(|m| len > m) || a.max_length_bytes.is_some_and(|m| bytes > m);
        let soft = |limit: Option<u64>, n: u64| limit.is_none_or(|m| n <= m * 8 / 10);
        if over {
            self.rejecting = true;
        } else if soft(a.max_length, len) && soft(a.max_length_bytes, bytes) {
            self.rejecting = false;
        }
    }

    /// Whether a publish of `size` body bytes is over the queue's length
    /// limits (a quorum queue: whether it is rejecting).
    fn full(&mut self, size: usize) -> bool {
        if self.args.kind == lifecycle::QueueKind::Quorum {
            self.update_rejecting();
            return self.rejecting;
        }
        let a = &self.args;
        a.max_length.is_some_and(|m| self.ready.len() as u64 >= m)
            || a.max_length_bytes
                .is_some_and(|m| (self.ready.bytes() + size) as u64 > m)
    }

    /// (A stream's messages are stored by the stream itself.)
    fn persists(&self, msg: &Msg) -> bool {
        self.durable
            && match self.args.kind {
                lifecycle::QueueKind::Classic => msg.is_persistent(),
                lifecycle::QueueKind::Quorum => true,
                lifecycle::QueueKind::Stream => false,
            }
    }

    /// RabbitMQ's `rs()` of the queue: "queue 'NAME' in vhost 'VHOST'".
    fn rs(&self) -> String {
        format!(
            "queue '{}' in vhost '{}'",
            self.name().to_string_lossy(),
            self.vhost()
        )
    }
}

struct Vhost {
    router: Router<QueueId>,
    /// Policies by name.
    policies: BTreeMap<String, crate::policy::Policy>,
    /// Management: messages in and out per exchange.
    xstats: snapshot::ExchangeStats,
}

/// The broker's state: every virtual host, queue and connection.
pub struct Core {
    auth: Auth,
    vhosts: HashMap<String, Vhost>,
    conns: HashMap<ConnId, Conn>,
    queues: HashMap<QueueId, QState>,
    next_queue: QueueId,
    rng: u64,
    woken: Vec<ConnId>,
    current: ConnId,
    scratch: RouteScratch,
    /// The queues a publish reached (reused).
    route_buf: Vec<QueueId>,
    /// The deliveries an ack settles, and the queues it touches (reused:
    /// two allocations an ack otherwise).
    settle_buf: (Vec<(u64, Unacked)>, Vec<QueueId>),
    /// Consumers registered so far (their order).
    next_consumer: u64,
    /// Queue deadlines: the head's expiry, or `x-expires`.
    timers: BTreeSet<(Instant, QueueId)>,
    timers_changed: bool,
    /// Held publishers' deadlines, in order (each is now + [`FLOW_HOLD`]):
    /// (deadline, connection, hold number).
    held: VecDeque<(Instant, ConnId, u64)>,
    /// Numbers holds.
    next_hold: u64,
    /// Messages the current batch put into queues that are behind
    /// their consumers, and the last such queue.
    behind: (u32, QueueId),
    /// A wall-clock reading (`x-death`'s `time`, TTLs across restarts):
    /// this instant was this many ms since the Unix epoch.
    clock: Option<(Instant, u64)>,
    /// Persistence is on (a message store is attached).
    persistence: bool,
    /// Emptied outboxes to reuse ([`Core::recycle_outbox`]).
    spare_outboxes: Vec<Vec<Out>>,
    /// Records for the store, not yet taken by the shell.
    store_ops: Vec<Record>,
    /// The vector of the batch the store wrote last, emptied, to take the
    /// next records ([`Core::recycle_store_ops`]).
    spare_store_ops: Vec<Record>,
    /// Records emitted so far (the number of the last one).
    store_seq: u64,
    /// The number of the last record taken ([`Core::take_store_ops`]).
    store_taken: u64,
    /// The publish records in `store_ops`, by store id: (id, index in
    /// `store_ops`, a delivery marker followed it). A removal of such a
    /// message takes its queue off the record instead of being recorded.
    store_pending: Vec<(u64, usize, bool)>,
    /// Publish records in `store_ops` left with no queue (not written).
    store_cancelled: usize,
    /// Confirms waiting for their record to be durable: (record number,
    /// connection, channel, publish sequence number, ack).
    waiting: VecDeque<(u64, ConnId, u16, Settle)>,
    /// The next store id for a persistent message.
    next_persist: u64,
    /// Durable topology changed since the last snapshot.
    definitions_dirty: bool,
    /// Direct reply-to suffixes and the channel whose consumer they reach.
    reply_to: HashMap<String, (ConnId, u16)>,
    now: Option<Instant>,
    /// Management: global message counters.
    counters: snapshot::MessageStats,
    /// `consumer_timeout`.
    consumer_timeout: Option<Duration>,
    /// `channel_tick_interval`.
    channel_tick: Duration,
    /// The next channel tick, while some delivery awaits its ack.
    next_tick: Option<Instant>,
    /// A publish just wrote a stream record (its confirm waits for it).
    stream_stored: bool,
    /// Resource alarms in force.
    alarms: BTreeSet<Alarm>,
    /// Bytes of messages delivered and not yet settled (the memory
    /// estimate).
    unacked_bytes: u64,
    /// Limits.
    limits: Limits,
    /// Bytes publishers may still add before the memory alarm goes off
    /// without waiting for the monitor (`None`: no memory watermark).
    memory_credit: Option<u64>,
    /// Where queues page messages beyond their window (`None`: they keep
    /// everything in memory).
    pager: Option<Pager>,
}

/// What a message costs in memory besides its body (its `Msg`, queue entry
/// and bookkeeping), for the memory estimate.
pub const MESSAGE_OVERHEAD: u64 = 160;

fn held(e: &Entry) -> u64 {
    e.msg.size() as u64 + MESSAGE_OVERHEAD
}

/// A resource alarm, as RabbitMQ's `rabbit_alarm` raises them: while one
/// is in force, a connection that publishes is blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Alarm {
    /// Memory above the high watermark.
    Memory,
    /// Free disk space below the limit (or the message store failed).
    Disk,
}

impl Alarm {
    /// RabbitMQ's words for it in `connection.blocked`.
    pub fn reason(self) -> &'static str {
        match self {
            Alarm::Memory => "low on memory",
            Alarm::Disk => "low on disk",
        }
    }

    /// Its name in the management API and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Alarm::Memory => "memory",
            Alarm::Disk => "disk",
        }
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("vhosts", &self.vhosts.len())
            .field("conns", &self.conns.len())
            .field("queues", &self.queues.len())
            .finish()
    }
}

fn s(x: &[u8]) -> String {
    String::from_utf8_lossy(x).into_owned()
}

fn refused(channel: u16, code: ReplyCode, text: String, ids: (u16, u16)) -> ProtocolError {
    ProtocolError::refused(channel, code, text).with_method(ids.0, ids.1)
}

/// The result of handling one method: an error closes the channel or the
/// connection.
type Res = Result<(), ProtocolError>;

impl Core {
    /// A core with the configured users and virtual hosts.
    pub fn new(config: CoreConfig) -> Self {
        let mut vhosts = HashMap::default();
        for v in &config.vhosts {
            let policies = config
                .policies
                .iter()
                .filter(|p| p.vhost.as_deref().unwrap_or("/") == v)
                .filter_map(|p| Some((p.name.clone(), crate::policy::Policy::new(p).ok()?)))
                .collect();
            vhosts.insert(
                v.clone(),
                Vhost {
                    router: Router::new(v.clone()),
                    policies,
                    xstats: snapshot::ExchangeStats::default(),
                },
            );
        }
        Core {
            auth: config.auth,
            vhosts,
            conns: HashMap::default(),
            queues: HashMap::default(),
            next_queue: 1,
            rng: config.seed | 1,
            woken: Vec::new(),
            current: 0,
            scratch: RouteScratch::new(),
            reply_to: HashMap::default(),
            route_buf: Vec::new(),
            settle_buf: (Vec::new(), Vec::new()),
            next_consumer: 0,
            timers: BTreeSet::new(),
            held: VecDeque::new(),
            next_hold: 0,
            behind: (0, 0),
            timers_changed: false,
            clock: None,
            persistence: false,
            spare_outboxes: Vec::new(),
            store_ops: Vec::new(),
            spare_store_ops: Vec::new(),
            store_seq: 0,
            store_taken: 0,
            store_pending: Vec::new(),
            store_cancelled: 0,
            waiting: VecDeque::new(),
            next_persist: 1,
            definitions_dirty: false,
            now: None,
            counters: snapshot::MessageStats::default(),
            consumer_timeout: config.consumer_timeout,
            channel_tick: config.channel_tick,
            next_tick: None,
            stream_stored: false,
            alarms: BTreeSet::new(),
            unacked_bytes: 0,
            limits: config.limits.clone(),
            memory_credit: None,
            pager: None,
        }
    }

    /// Queues created from now on page beyond their window through
    /// `pager` ([`crate::paging`]); set it before recovery.
    pub fn set_pager(&mut self, pager: Pager) {
        self.pager = Some(pager);
    }

    /// The pager's counters, if queues page.
    pub fn page_stats(&self) -> Option<crate::paging::PageStats> {
        self.pager.as_ref().map(Pager::stats)
    }

    /// Loads a definitions export's topology (exchanges, queues, bindings,
    /// alternate-exchange policies) into every vhost it names that this
    /// core has, replacing what they held (for an empty broker at boot).
    /// Returns a warning per binding left out because an end is missing.
    pub fn load_topology(
        &mut self,
        topology: &amqp_router::definitions::Topology,
    ) -> Result<Vec<String>, String> {
        let mut warnings = Vec::new();
        let names: Vec<String> = self.vhosts.keys().cloned().collect();
        for vh in names {
            let mut next = self.next_queue;
            let loaded = topology
                .load(&vh, |_| {
                    next += 1;
                    next - 1
                })
                .map_err(|e| format!("vhost '{vh}': {e}"))?;
            self.next_queue = next;
            for b in &loaded.skipped {
                warnings.push(format!(
                    "vhost '{vh}': binding {} -> {} left out: an end is missing",
                    b.source, b.destination
                ));
            }
            for q in loaded.router.queues() {
                self.queues.insert(
                    *q.handle(),
                    QState::new(
                        &vh,
                        q.name().clone(),
                        q.durable(),
                        q.auto_delete(),
                        q.arguments(),
                        self.pager.as_ref(),
                    ),
                );
            }
            let mut policies = BTreeMap::new();
            for p in topology
                .policies
                .iter()
                .filter(|p| p.vhost.as_deref().is_none_or(|v| v == vh))
            {
                let policy = crate::policy::Policy::new(p)
                    .map_err(|e| format!("vhost '{vh}': policy '{}': {}", p.name, e.trim()))?;
                policies.insert(p.name.clone(), policy);
            }
            if let Some(v) = self.vhosts.get_mut(&vh) {
                v.router = loaded.router;
                v.policies = policies;
            }
            self.apply_policies(&vh);
        }
        self.definitions_dirty = true;
        Ok(warnings)
    }

    /// A new connection (before its handshake).
    pub fn connect(&mut self, id: ConnId, peer: Peer) {
        self.conns.insert(
            id,
            Conn {
                peer,
                ..Conn::default()
            },
        );
    }

    /// Handles a batch of events of connection `id`, in order; what the
    /// connection must do next is in [`take_outbox`](Self::take_outbox).
    pub fn handle(&mut self, id: ConnId, events: impl IntoIterator<Item = Event>, now: Instant) {
        self.now = Some(now);
        self.current = id;
        self.behind = (0, 0);
        for e in events {
            self.event(id, e);
        }
        self.flush_confirms(id);
        if self.behind.0 >= FLOW_BATCH {
            self.hold(id, self.behind, now);
        }
    }

    /// Whether consumer bias holds publisher `id` ([`FLOW_HOLD`]): the
    /// shell reads nothing more from it until it is woken.
    pub fn is_held(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.held.is_some())
    }

    fn hold(&mut self, id: ConnId, (n, q): (u32, QueueId), now: Instant) {
        let (Some(c), Some(qs)) = (self.conns.get_mut(&id), self.queues.get_mut(&q)) else {
            return;
        };
        if c.held.is_some() || c.closing {
            return;
        }
        self.next_hold += 1;
        c.held = Some(self.next_hold);
        c.held_at = Some(now);
        let until = qs.delivered + u64::from(n);
        qs.holding.push((id, until, self.next_hold));
        qs.holding_until = qs.holding_until.min(until);
        self.held.push_back((now + FLOW_HOLD, id, self.next_hold));
        self.timers_changed = true;
    }

    /// Ends hold number `n` if it still holds `id` (the shell is woken to
    /// read again).
    fn release(&mut self, id: ConnId, n: u64) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.held == Some(n)
        {
            c.held = None;
            self.woken.push(id);
        }
    }

    /// Takes what connection `id` must do.
    pub fn take_outbox(&mut self, id: ConnId) -> Vec<Out> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Vec::new();
        };
        std::mem::take(&mut c.outbox)
    }

    /// Hands back an outbox the shell has emptied
    /// ([`take_outbox`](Self::take_outbox)): the next connection to get
    /// output fills it instead of growing a new one a push at a time.
    pub fn recycle_outbox(&mut self, mut outbox: Vec<Out>) {
        outbox.clear();
        if outbox.capacity() > 0
            && outbox.capacity() <= SPARE_OUTBOX_MAX
            && self.spare_outboxes.len() < SPARE_OUTBOXES
        {
            self.spare_outboxes.push(outbox);
        }
    }

    /// The shell wrote everything connection `id` had: the deliveries
    /// handed to it no longer count against [`OUTBOX_LIMIT`], and
    /// dispatch to its consumers resumes if the limit held it back.
    /// Returns whether it did (there may be new output).
    pub fn resume(&mut self, id: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        c.outbox_bytes = 0;
        if !std::mem::take(&mut c.throttled) {
            return false;
        }
        let qs: Vec<QueueId> = c
            .channels
            .values()
            .flat_map(|ch| ch.consumers.values().map(|k| k.queue))
            .collect();
        self.current = id;
        for q in qs {
            self.dispatch(q);
        }
        true
    }

    /// Turns persistence on: persistent messages reaching durable queues
    /// become store records ([`take_store_ops`](Self::take_store_ops)), and
    /// their confirms wait for [`durable`](Self::durable).
    pub fn enable_persistence(&mut self) {
        self.persistence = true;
    }

    /// The records the store must write, and the numbers they cover (hand
    /// the last to [`durable`](Self::durable) once they are synced).
    ///
    /// A persistent message that left all its queues before its publish
    /// record was taken is not in them, nor its removals: nothing of it
    /// needs writing (as RabbitMQ's message store skips the write of a
    /// message removed before it was written). When consumers keep up,
    /// that is most of them. Its numbers are still covered, so its
    /// confirm waits, as every confirm does, for the records before it to
    /// be durable; records may therefore be empty.
    pub fn take_store_ops(&mut self) -> Option<(Vec<Record>, std::ops::RangeInclusive<u64>)> {
        if self.store_taken == self.store_seq {
            return None;
        }
        // The next batch is likely as large: room for it at once rather
        // than a push at a time (the last batch's vector, when it is
        // large enough).
        let room = self.store_ops.len();
        let next = match std::mem::take(&mut self.spare_store_ops) {
            v if v.capacity() >= room => v,
            _ => Vec::with_capacity(room),
        };
        let mut records = std::mem::replace(&mut self.store_ops, next);
        if self.store_cancelled > 0 {
            records.retain(|r| !matches!(r, Record::Message { queues, .. } if queues.is_empty()));
        }
        self.store_pending.clear();
        self.store_cancelled = 0;
        let first = self.store_taken + 1;
        self.store_taken = self.store_seq;
        Some((records, first..=self.store_seq))
    }

    /// Hands back the vector of a batch the store has written
    /// ([`take_store_ops`](Self::take_store_ops)), for the batch after
    /// next: one batch's records are taken without growing a vector a
    /// push at a time. (Kept up to 16,384 records of room.)
    pub fn recycle_store_ops(&mut self, mut records: Vec<Record>) {
        records.clear();
        if records.capacity() <= SPARE_STORE_OPS_MAX
            && records.capacity() > self.spare_store_ops.capacity()
        {
            self.spare_store_ops = records;
        }
    }

    /// Whether records wait to be taken ([`take_store_ops`](Self::take_store_ops))
    /// or the durable topology changed ([`take_definitions`](Self::take_definitions)).
    pub fn has_store_work(&self) -> bool {
        self.store_taken != self.store_seq || self.definitions_dirty
    }

    /// Records up to number `upto` are on disk: their confirms and
    /// commit-oks go out (connections to wake: [`take_woken`](Self::take_woken)).
    pub fn durable(&mut self, upto: u64) {
        self.current = 0;
        let mut conns = Vec::new();
        while let Some(&(n, conn, ch, settle)) = self.waiting.front() {
            if n > upto {
                break;
            }
            self.waiting.pop_front();
            match settle {
                Settle::Confirm(seq, ack) => {
                    if let Some(c) = self.chan(conn, ch) {
                        c.confirms.push((seq, ack));
                        conns.push(conn);
                    }
                }
                Settle::CommitOk => {
                    if self.chan(conn, ch).is_some_and(|c| !c.closing) {
                        self.reply(conn, ch, TxCommitOk {});
                    }
                }
            }
        }
        conns.sort_unstable();
        conns.dedup();
        for c in conns {
            self.flush_confirms(c);
        }
    }

    /// The durable topology (exchanges, queues, bindings of every vhost),
    /// as a RabbitMQ definitions export, when it changed since the last
    /// call.
    pub fn take_definitions(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.definitions_dirty) {
            return None;
        }
        let mut all = amqp_router::definitions::Topology::default();
        for v in self.vhosts.values() {
            let t = amqp_router::definitions::Topology::from_router(&v.router);
            let durable_x: BTreeSet<String> = t
                .exchanges
                .iter()
                .filter(|x| x.durable)
                .map(|x| x.name.clone())
                .collect();
            let durable_q: BTreeSet<String> = v
                .router
                .queues()
                .filter(|q| q.durable() && q.exclusive_owner().is_none())
                .map(|q| q.name().to_string_lossy().into_owned())
                .collect();
            let builtin = |n: &str| n.is_empty() || n.starts_with("amq.");
            all.exchanges
                .extend(t.exchanges.into_iter().filter(|x| x.durable));
            all.queues
                .extend(t.queues.into_iter().filter(|q| durable_q.contains(&q.name)));
            all.bindings.extend(t.bindings.into_iter().filter(|b| {
                (builtin(&b.source) || durable_x.contains(&b.source))
                    && if b.destination_type == "queue" {
                        durable_q.contains(&b.destination)
                    } else {
                        durable_x.contains(&b.destination) || builtin(&b.destination)
                    }
            }));
            all.policies
                .extend(v.policies.values().map(|p| p.to_def(v.router.vhost())));
        }
        // management: users, vhosts and permissions are persisted with it.
        Some(self.definitions_json(all))
    }

    /// Puts recovered messages back in their queues, in order; messages of
    /// queues that no longer exist are removed from the store. After an
    /// unclean shutdown every message comes back redelivered (a delivery's
    /// marker may not have reached the disk), and gets a delivery marker so
    /// that it stays so after a later clean restart. The store records
    /// are written only if persistence is already enabled. Returns how
    /// many were recovered.
    pub fn recover_messages(&mut self, r: crate::store::Recovered, unclean: bool) -> usize {
        let mut n = 0;
        for (queue, msgs) in r.queues {
            for m in msgs {
                n += usize::from(self.recover_message(&queue, m, unclean));
            }
        }
        self.finish_recovery(r.next_id);
        n
    }

    /// Puts one recovered message back into `queue` (as
    /// [`recover_messages`](Self::recover_messages) does for each; the
    /// broker streams them from [`crate::store::recover_each_on`], in
    /// publish order). A queue that no longer exists gets a removal
    /// record instead (and `false` comes back). Call
    /// [`finish_recovery`](Self::finish_recovery) after the last.
    pub fn recover_message(
        &mut self,
        queue: &QueueKey,
        m: crate::store::RecoveredMessage,
        unclean: bool,
    ) -> bool {
        let (vhost, name) = &**queue;
        let wall_ms = self.wall_ms();
        let now = self.now;
        let qid = self
            .vhosts
            .get(vhost)
            .and_then(|v| v.router.queue(name.as_bytes()))
            .map(|q| *q.handle());
        let Some(qs) = qid.and_then(|q| self.queues.get_mut(&q)) else {
            self.record(Record::Remove {
                id: m.id,
                queue: queue.clone(),
            });
            return false;
        };
        if let Some(log) = qs.stream.as_mut() {
            let ([at_ms, offset], properties) =
                crate::store::without_private(&m.properties, [STREAM_AT_HEADER, "x-stream-offset"]);
            let offset = offset.unwrap_or(log.next_offset());
            let msg = Msg::with_encoded(
                m.exchange.as_bytes(),
                m.routing_key.as_bytes(),
                &properties,
                m.body,
            );
            log.append_at(
                offset,
                msg,
                at_ms.unwrap_or(0),
                qs.args.segment_size,
                Some(m.id),
            );
            return true;
        }
        let ([arrived], properties) =
            crate::store::without_private(&m.properties, [ARRIVED_HEADER]);
        let mut msg = Msg::with_encoded(
            m.exchange.as_bytes(),
            m.routing_key.as_bytes(),
            &properties,
            m.body,
        );
        msg.set_persist(Some(m.id));
        msg.set_at(Some(m.at));
        // The TTL counts from when it arrived, not from now.
        let ttl = match (qs.args.message_ttl, msg.expiration_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expires = match (ttl, arrived, now) {
            (Some(ttl), Some(at), Some(now)) => {
                Some(now + Duration::from_millis(at.saturating_add(ttl).saturating_sub(wall_ms)))
            }
            (Some(ttl), None, Some(now)) => Some(now + Duration::from_millis(ttl)),
            _ => None,
        };
        qs.ready
            .push_recovered(msg, m.redelivered || unclean, expires);
        if unclean && !m.redelivered {
            // The flag must outlive this run: a clean restart later
            // trusts only the delivery markers.
            self.record(Record::Delivered {
                id: m.id,
                queue: queue.clone(),
            });
        }
        true
    }

    /// Ends recovery: store ids continue after `next_id - 1`, and the
    /// queues' expiry timers run.
    pub fn finish_recovery(&mut self, next_id: u64) {
        self.next_persist = self.next_persist.max(next_id);
        let queues: Vec<QueueId> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.ready.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for q in queues {
            self.arm(q);
        }
    }

    fn record(&mut self, r: Record) {
        if self.persistence {
            self.store_ops.push(r);
            self.store_seq += 1;
        }
    }

    /// A message that goes to `queues`: persistent and reaching a durable
    /// queue, it gets a store id and a publish record (before anything
    /// can remove it from a queue).
    fn store_publish(&mut self, queues: &[QueueId], mut msg: Msg) -> Msg {
        if self.persistence {
            let keys: Vec<QueueKey> = queues
                .iter()
                .filter_map(|q| self.queues.get(q))
                .filter(|q| q.persists(&msg))
                .map(QState::key)
                .collect();
            if !keys.is_empty() {
                let id = self.next_persist;
                self.next_persist += 1;
                msg.set_persist(Some(id));
                // A TTL runs on across a restart: the record keeps when
                // the message arrived.
                let ttl = msg.has_expiration()
                    || queues
                        .iter()
                        .filter_map(|q| self.queues.get(q))
                        .any(|q| q.args.message_ttl.is_some());
                let properties = ttl.then(|| {
                    let p = lifecycle::with_header(
                        &msg.properties(),
                        ARRIVED_HEADER,
                        self.wall_ms() as i64,
                    );
                    let mut out = Vec::new();
                    let _ = amqp_wire::encode_properties(&p, &mut out);
                    Bytes::from(out)
                });
                if self.persistence {
                    self.store_pending.push((id, self.store_ops.len(), false));
                }
                self.record(Record::Message {
                    id,
                    queues: keys,
                    msg: msg.clone(),
                    properties,
                });
            }
        }
        msg
    }

    /// Message `id` left `queue`: if its publish record is still waiting
    /// to be taken (and no delivery marker followed it), the queue comes
    /// off that record and `true` comes back (nothing to record).
    fn unpublish(&mut self, id: u64, queue: &QueueKey) -> bool {
        let Ok(i) = self.store_pending.binary_search_by_key(&id, |p| p.0) else {
            return false;
        };
        let (_, at, marked) = self.store_pending[i];
        if marked {
            return false;
        }
        let Some(Record::Message { queues, .. }) = self.store_ops.get_mut(at) else {
            return false;
        };
        let Some(k) = queues.iter().position(|k| k == queue) else {
            return false;
        };
        queues.swap_remove(k);
        if queues.is_empty() {
            self.store_cancelled += 1;
        }
        true
    }

    /// Entry `e` left queue `q` for good: the store forgets it there.
    /// Removes every ready message of queue `q` (purge, deletion), page
    /// by page; returns how many there were.
    pub(crate) fn drain_ready(&mut self, q: QueueId) -> usize {
        let n = self.queues.get(&q).map_or(0, |qs| qs.ready.len());
        while let Some(qs) = self.queues.get_mut(&q)
            && !qs.ready.is_empty()
        {
            for e in qs.ready.drain_batch() {
                self.gone(q, &e);
            }
        }
        n
    }

    fn gone(&mut self, q: QueueId, e: &Entry) {
        if let Some(id) = e.msg.persist()
            && let Some(qs) = self.queues.get(&q)
            && qs.persists(&e.msg)
        {
            let key = qs.key();
            if !self.unpublish(id, &key) {
                self.record(Record::Remove { id, queue: key });
            }
        }
    }

    /// Entry `e` of queue `q` is delivered for the first time, awaiting an
    /// ack: it recovers redelivered.
    fn delivered_once(&mut self, q: QueueId, e: &Entry) {
        if !e.redelivered
            && let Some(id) = e.msg.persist()
            && let Some(qs) = self.queues.get(&q)
            && qs.persists(&e.msg)
        {
            let key = qs.key();
            if let Ok(i) = self.store_pending.binary_search_by_key(&id, |p| p.0) {
                self.store_pending[i].2 = true;
            }
            self.record(Record::Delivered { id, queue: key });
        }
    }

    /// Sets the wall clock: `now` is `unix_secs` seconds since the Unix
    /// epoch (the core reads no clock; `x-death` timestamps need one).
    pub fn set_clock(&mut self, now: Instant, unix_secs: u64) {
        self.set_clock_ms(now, unix_secs.saturating_mul(1000));
    }

    /// [`set_clock`](Self::set_clock) to the millisecond.
    pub fn set_clock_ms(&mut self, now: Instant, unix_ms: u64) {
        self.clock = Some((now, unix_ms));
        self.now = Some(now);
    }

    fn wall_ms(&self) -> u64 {
        match (self.clock, self.now) {
            (Some((at, ms)), Some(now)) => {
                ms.saturating_add(now.saturating_duration_since(at).as_millis() as u64)
            }
            _ => 0,
        }
    }

    fn wall_secs(&self) -> u64 {
        self.wall_ms() / 1000
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run (a
    /// message expiring at a queue's head, an unused queue expiring).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let queue = self.timers.first().map(|(t, _)| *t);
        let held = self.held.front().map(|(t, ..)| *t);
        [queue, self.next_tick, held].into_iter().flatten().min()
    }

    /// A delivery now awaits its ack: the channel tick runs if it did not.
    fn tick_armed(&mut self) {
        if self.next_tick.is_none()
            && self.consumer_timeout.is_some()
            && let Some(now) = self.now
        {
            self.next_tick = Some(now + self.channel_tick);
            self.timers_changed = true;
        }
    }

    /// The channel tick: every channel whose oldest unacknowledged delivery
    /// has waited longer than `consumer_timeout` is closed with 406, as
    /// RabbitMQ's `evaluate_consumer_timeout` does (its deliveries go back
    /// to their queues). Ticks go on while deliveries await acks.
    fn tick(&mut self, now: Instant) {
        self.next_tick = None;
        let Some(limit) = self.consumer_timeout else {
            return;
        };
        let mut late = Vec::new();
        let mut waiting = false;
        for (&id, c) in &self.conns {
            if c.closing {
                continue;
            }
            for (&ch, chan) in &c.channels {
                let Some((_, u)) = chan.unacked.first() else {
                    continue;
                };
                if chan.closing {
                    continue;
                }
                if u.at
                    .is_some_and(|at| now.saturating_duration_since(at) > limit)
                {
                    late.push((id, ch));
                } else {
                    waiting = true;
                }
            }
        }
        late.sort_unstable();
        for (id, ch) in late {
            let text = format!(
                "PRECONDITION_FAILED - delivery acknowledgement on channel {ch} timed out. \
                 Timeout value used: {} ms. This timeout value can be configured, see \
                 consumers doc guide to learn more",
                limit.as_millis()
            );
            self.close_as_is(id, ch, ReplyCode::PRECONDITION_FAILED, text);
        }
        if waiting {
            self.next_tick = Some(now + self.channel_tick);
        }
        self.timers_changed = true;
    }

    /// Whether the earliest deadline may have changed since the last call
    /// (the shell's timer then re-reads [`poll_timeout`](Self::poll_timeout)).
    pub fn take_timers_changed(&mut self) -> bool {
        std::mem::take(&mut self.timers_changed)
    }

    /// Runs the deadlines due by `now`: expired messages leave the heads of
    /// their queues (dead-lettered where configured), unused queues with
    /// `x-expires` are deleted. Output for connections is in their
    /// outboxes; [`take_woken`](Self::take_woken) names them.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        self.current = 0;
        while let Some(&(t, id, n)) = self.held.front() {
            if t > now {
                break;
            }
            self.held.pop_front();
            self.release(id, n);
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            self.tick(now);
        }
        while let Some(&(t, q)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            let Some(qs) = self.queues.get_mut(&q) else {
                continue;
            };
            qs.armed = None;
            let unused = qs.consumers.is_empty()
                && qs.args.expires.is_some_and(|ms| {
                    qs.last_used
                        .is_some_and(|u| u + std::time::Duration::from_millis(ms) <= now)
                });
            if unused {
                let (vh, name) = (qs.vhost().clone(), qs.name().clone());
                self.delete_queue_named(&vh, &name);
                continue;
            }
            self.dispatch(q);
        }
    }

    /// The policy in force for queue `q`, combined with its arguments; a
    /// change takes effect at once (a lower length limit drops the head,
    /// as RabbitMQ; timers re-armed).
    fn apply_policy(&mut self, q: QueueId) {
        let Some(qs) = self.queues.get(&q) else {
            return;
        };
        let Some(v) = self.vhosts.get(qs.vhost()) else {
            return;
        };
        let p = crate::policy::effective(v.policies.values(), qs.name().as_bytes(), true);
        let name = p.map(|p| p.name.clone());
        let args = crate::policy::combine(&qs.declared, p.map(|p| &p.keys));
        let Some(qs) = self.queues.get_mut(&q) else {
            return;
        };
        if qs.args == args && qs.policy == name {
            return;
        }
        qs.args = args;
        qs.policy = name;
        qs.update_rejecting();
        self.drop_over_limit(q);
        self.expire(q);
        self.arm(q);
    }

    /// The alternate exchange the policy in force gives `exchange` (an
    /// `alternate-exchange` argument wins over it, in the router).
    fn apply_exchange_policy(&mut self, vhost: &str, exchange: &[u8]) {
        let Some(v) = self.vhosts.get_mut(vhost) else {
            return;
        };
        let ae = crate::policy::effective(v.policies.values(), exchange, false)
            .and_then(|p| p.keys.alternate_exchange.clone());
        v.router.set_policy_alternate_exchange(exchange, ae);
    }

    /// Every queue and exchange of `vhost` under the policies now in force.
    fn apply_policies(&mut self, vhost: &str) {
        let Some(v) = self.vhosts.get(vhost) else {
            return;
        };
        let queues: Vec<QueueId> = v.router.queues().map(|q| *q.handle()).collect();
        let exchanges: Vec<ShortString> = v.router.exchanges().map(|x| x.name().clone()).collect();
        for q in queues {
            self.apply_policy(q);
        }
        for x in exchanges {
            self.apply_exchange_policy(vhost, x.as_bytes());
        }
    }

    /// Sets policy `def.name` in `vhost` (validated as RabbitMQ does: the
    /// error is its text); returns whether it is new. It applies at once to
    /// every matching queue and exchange.
    pub fn set_policy(
        &mut self,
        vhost: &str,
        def: &amqp_router::definitions::PolicyDef,
        now: Instant,
    ) -> Result<bool, snapshot::AdminError> {
        let policy = crate::policy::Policy::new(def).map_err(snapshot::AdminError::BadRequest)?;
        self.now = Some(now);
        self.current = 0;
        let v = self
            .vhosts
            .get_mut(vhost)
            .ok_or_else(|| snapshot::AdminError::NotFound(format!("no vhost '{vhost}'")))?;
        let new = v.policies.insert(def.name.clone(), policy).is_none();
        self.apply_policies(vhost);
        self.definitions_dirty = true;
        Ok(new)
    }

    /// Removes policy `name` from `vhost`; what it set is undone at once.
    pub fn clear_policy(
        &mut self,
        vhost: &str,
        name: &str,
        now: Instant,
    ) -> Result<(), snapshot::AdminError> {
        self.now = Some(now);
        self.current = 0;
        let v = self
            .vhosts
            .get_mut(vhost)
            .ok_or_else(|| snapshot::AdminError::NotFound(format!("no vhost '{vhost}'")))?;
        if v.policies.remove(name).is_none() {
            return Err(snapshot::AdminError::NotFound(format!(
                "no policy '{name}' in vhost '{vhost}'"
            )));
        }
        self.apply_policies(vhost);
        self.definitions_dirty = true;
        Ok(())
    }

    /// The policies of `vhost` (every vhost when `None`), by vhost and name.
    pub fn policies(&self, vhost: Option<&str>) -> Vec<amqp_router::definitions::PolicyDef> {
        let mut names: Vec<&String> = self
            .vhosts
            .keys()
            .filter(|n| vhost.is_none_or(|v| v == n.as_str()))
            .collect();
        names.sort();
        names
            .into_iter()
            .flat_map(|n| self.vhosts[n].policies.values().map(|p| p.to_def(n)))
            .collect()
    }

    /// Queue `q` was declared, consumed from or read (restarts `x-expires`).
    fn used(&mut self, q: QueueId) {
        if let Some(qs) = self.queues.get_mut(&q) {
            qs.last_used = self.now;
        }
        self.arm(q);
    }

    /// Puts queue `q`'s next deadline in the timers.
    fn arm(&mut self, q: QueueId) {
        let Some(qs) = self.queues.get_mut(&q) else {
            return;
        };
        let expiry = qs.ready.next_expiry();
        let unused = match (qs.args.expires, qs.last_used) {
            (Some(ms), Some(u)) if qs.consumers.is_empty() => {
                Some(u + std::time::Duration::from_millis(ms))
            }
            _ => None,
        };
        let next = match (expiry, unused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next == qs.armed {
            return;
        }
        if let Some(old) = qs.armed.take() {
            self.timers.remove(&(old, q));
        }
        if let Some(t) = next {
            self.timers.insert((t, q));
            qs.armed = Some(t);
        }
        self.timers_changed = true;
    }

    /// Takes expired messages from queue `q`'s heads (dead-lettered as
    /// `expired` where configured).
    fn expire(&mut self, q: QueueId) {
        let Some(now) = self.now else {
            return;
        };
        let Some(qs) = self.queues.get_mut(&q) else {
            return;
        };
        let mut gone = Vec::new();
        while let Some(e) = qs.ready.pop_expired(now) {
            gone.push(e);
        }
        if !gone.is_empty() {
            self.dead_letter(q, gone, Reason::Expired);
        }
    }

    /// Dead-letters messages that leave queue `q` for `reason`: to its
    /// dead-letter exchange with the dead-letter routing key (or their own
    /// keys), with `x-death` updated; dropped when the queue has none, the
    /// exchange is missing, or a target would close a cycle.
    fn dead_letter(&mut self, q: QueueId, entries: Vec<Entry>, reason: Reason) {
        for e in &entries {
            self.gone(q, e);
        }
        let Some(qs) = self.queues.get(&q) else {
            return;
        };
        let Some(dlx) = qs.args.dead_letter_exchange.clone() else {
            return;
        };
        let dlrk = qs.args.dead_letter_routing_key.clone();
        let (vhost, qname) = (qs.vhost().clone(), qs.name().clone());
        let time = self.wall_secs();
        for e in entries {
            let props = lifecycle::dead_letter_properties(
                &e.msg.properties(),
                &e.msg.exchange_name(),
                &e.msg.routing_key_name(),
                &qname,
                reason,
                time,
                dlrk.is_some(),
            );
            let key = dlrk.clone().unwrap_or_else(|| e.msg.routing_key_name());
            let Some(v) = self.vhosts.get(&vhost) else {
                return;
            };
            // Without a dead-letter routing key the message goes by all the
            // keys it was published with, BCC ones included.
            let with_bcc = (dlrk.is_none() && !e.msg.bcc().is_empty()).then(|| {
                let mut h = props.headers.clone().unwrap_or_default();
                let mut a = amqp_codec::types::FieldArray::new();
                for k in e.msg.bcc() {
                    a.push(FieldValue::LongString(LongString::copy_from(k.as_bytes())));
                }
                h.set(ShortString::from_static("BCC"), FieldValue::Array(a));
                h
            });
            let Ok(routed) = v.router.route(
                dlx.as_bytes(),
                key.as_bytes(),
                with_bcc.as_ref().or(props.headers.as_ref()),
                &mut self.scratch,
            ) else {
                continue;
            };
            let targets: Vec<QueueId> = routed
                .queues()
                .filter(|t| !lifecycle::is_cycle(&props, t.name().as_bytes()))
                .map(|t| *t.handle())
                .collect();
            let mut dead = Msg::new(dlx.as_bytes(), key.as_bytes(), &props, e.msg.body_bytes());
            if dlrk.is_none() {
                dead.set_bcc(e.msg.bcc().to_vec());
            }
            let msg = self.store_publish(&targets, dead);
            self.enqueue(&targets, &msg);
        }
    }

    /// Connections (other than the one being handled) that have new
    /// output; each appears once.
    pub fn take_woken(&mut self) -> Vec<ConnId> {
        let mut w = std::mem::take(&mut self.woken);
        w.sort_unstable();
        w.dedup();
        w
    }

    /// Messages ready in queue `name` of `vhost`, and unacknowledged ones
    /// (for tests and the management side).
    pub fn queue_counts(&self, vhost: &str, name: &str) -> Option<(usize, usize)> {
        let v = self.vhosts.get(vhost)?;
        let q = v.router.queue(name.as_bytes())?;
        let qs = self.queues.get(q.handle())?;
        let unacked = self
            .conns
            .values()
            .flat_map(|c| c.channels.values())
            .flat_map(|ch| ch.unacked.values())
            .filter(|u| u.queue == *q.handle())
            .count();
        Some((qs.ready.len(), unacked))
    }

    /// Checks the core's internal bookkeeping (for tests, simulations and
    /// fuzzing): every consumer a queue lists exists on its channel and
    /// points back at the queue; unacknowledged counts match the
    /// deliveries outstanding; Direct Reply-to routes lead to live reply
    /// consumers. Returns what is wrong.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (qid, q) in &self.queues {
            for QConsumer {
                conn, ch, tag, key, ..
            } in &q.consumers
            {
                let consumers = self
                    .conns
                    .get(conn)
                    .and_then(|c| c.channels.get(ch))
                    .map(|c| &c.consumers);
                let k = consumers
                    .and_then(|c| c.get(*key))
                    .ok_or_else(|| format!("queue {qid} lists a missing consumer {tag:?}"))?;
                if consumers.and_then(|c| c.tag(*key)) != Some(tag) {
                    return Err(format!(
                        "queue {qid} lists consumer {tag:?} by another's key"
                    ));
                }
                if k.queue != *qid {
                    return Err(format!("consumer {tag:?} is listed by the wrong queue"));
                }
            }
        }
        for (id, c) in &self.conns {
            for (n, ch) in &c.channels {
                let mut per: HashMap<ConsumerKey, u32> = HashMap::default();
                let mut total = 0;
                for u in ch.unacked.values() {
                    if let Some(key) = u.consumer {
                        *per.entry(key).or_default() += 1;
                        total += 1;
                    }
                }
                if total != ch.consumer_unacked {
                    return Err(format!(
                        "conn {id} channel {n}: {} consumer deliveries counted, {total} outstanding",
                        ch.consumer_unacked
                    ));
                }
                for (key, t, k) in ch.consumers.iter() {
                    let q = self.queues.get(&k.queue).ok_or_else(|| {
                        format!("consumer {t:?} of a deleted queue is still on its channel")
                    })?;
                    if !q
                        .consumers
                        .iter()
                        .any(|k| k.conn == *id && k.ch == *n && k.tag == *t && k.key == key)
                    {
                        return Err(format!("consumer {t:?} is not listed by its queue"));
                    }
                    let outstanding = per.get(&key).copied().unwrap_or(0);
                    if k.unacked != outstanding {
                        return Err(format!(
                            "consumer {t:?}: {} counted, {outstanding} outstanding",
                            k.unacked
                        ));
                    }
                }
            }
        }
        for (suffix, (conn, ch)) in &self.reply_to {
            let ok = self
                .conns
                .get(conn)
                .and_then(|c| c.channels.get(ch))
                .and_then(|c| c.reply_consumer.as_ref())
                .is_some_and(|(_, s)| s == suffix);
            if !ok {
                return Err(format!("reply-to route {suffix} leads nowhere"));
            }
        }
        Ok(())
    }

    fn push(&mut self, id: ConnId, out: Out) {
        if let Some(c) = self.conns.get_mut(&id) {
            if let Out::Content { msg, .. } | Out::Deliver { msg, .. } = &out {
                c.outbox_bytes += msg.size() + 64;
            }
            if c.outbox.capacity() == 0
                && let Some(spare) = self.spare_outboxes.pop()
            {
                c.outbox = spare;
            }
            c.outbox.push(out);
            if id != self.current {
                self.woken.push(id);
            }
        }
    }

    fn next_rand(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn consumer_tag(&mut self) -> ShortString {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut tag = String::from("amq.ctag-");
        let (a, b) = (self.next_rand(), self.next_rand());
        for i in 0..22 {
            // 11 six-bit digits from each 64-bit draw.
            let bits = if i < 11 {
                a >> (i * 6)
            } else {
                b >> ((i - 11) * 6)
            };
            tag.push(ALPHABET[(bits & 63) as usize] as char);
        }
        ShortString::try_from(tag.as_str()).unwrap_or_default()
    }

    // ----- events --------------------------------------------------------

    fn event(&mut self, id: ConnId, e: Event) {
        match e {
            Event::Decision { id: did, decision } => self.decision(id, did, decision),
            Event::Connected {
                peer_capabilities,
                tuning,
                peer_properties,
            } => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.caps = peer_capabilities;
                    c.mgmt.connected(tuning, peer_properties); // management
                }
            }
            Event::ChannelOpened { channel } => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.channels.insert(channel, Chan::default());
                }
                self.update_channel_caps(id);
            }
            Event::ChannelClosed { channel, .. } => {
                self.close_channel(id, channel);
                self.update_channel_caps(id);
            }
            Event::Closed { .. } => self.disconnect(id),
            Event::Method { channel, method } => {
                if self.ignoring(id, channel) {
                    return;
                }
                if let Err(e) = self.method(id, channel, method) {
                    self.fail(id, channel, e);
                }
            }
            Event::Message {
                channel,
                message,
                seqno,
            } => {
                if self.ignoring(id, channel) {
                    return;
                }
                if let Err(e) = self.publish(id, channel, message, seqno) {
                    self.fail(id, channel, e);
                }
            }
            // Protocol errors are answered by the codec itself; body-chunk
            // mode is not used.
            _ => {}
        }
    }

    /// Whether events on this channel are to be ignored (an error closed
    /// it or its connection, and the codec's close is under way).
    fn ignoring(&self, id: ConnId, channel: u16) -> bool {
        match self.conns.get(&id) {
            None => true,
            Some(c) if c.closing => true,
            Some(c) => channel != 0 && c.channels.get(&channel).is_none_or(|ch| ch.closing),
        }
    }

    /// An error closes the channel (soft) or the connection (hard).
    fn fail(&mut self, id: ConnId, channel: u16, e: ProtocolError) {
        if e.code().is_hard() || channel == 0 {
            if let Some(c) = self.conns.get_mut(&id) {
                c.closing = true;
            }
        } else {
            self.release_channel(id, channel);
            if let Some(ch) = self
                .conns
                .get_mut(&id)
                .and_then(|c| c.channels.get_mut(&channel))
            {
                ch.closing = true;
            }
        }
        self.push(id, Out::Refuse(e.on_channel(channel)));
    }

    fn decision(&mut self, id: ConnId, did: DecisionId, d: Decision) {
        let answer = match d {
            Decision::Authenticate {
                mechanism,
                credentials,
                ..
            } => {
                let loopback = self.conns.get(&id).is_some_and(|c| c.peer.loopback);
                // EXTERNAL: the user the client certificate names, without
                // a password (rabbitmq_auth_mechanism_ssl; its response,
                // an authorisation identity, is ignored as there).
                let external = (mechanism.as_bytes() == b"EXTERNAL")
                    .then(|| {
                        self.conns
                            .get(&id)
                            .and_then(|c| c.peer.tls_identity.clone())
                    })
                    .flatten()
                    .filter(|u| self.auth.login_external(u, loopback));
                match (credentials.username(), credentials.password()) {
                    _ if external.is_some() => {
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.user = external;
                            c.mechanism = Some("EXTERNAL".into());
                        }
                        Answer::Accept
                    }
                    (Some(u), Some(p)) if self.auth.login(u, p, loopback) => {
                        let u = u.to_owned();
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.user = Some(u);
                            c.mechanism = Some(mechanism.to_string_lossy().into_owned());
                        }
                        Answer::Accept
                    }
                    (user, password) => {
                        let mech = mechanism.to_string_lossy().into_owned();
                        let identity = self
                            .conns
                            .get(&id)
                            .and_then(|c| c.peer.tls_identity.clone());
                        let (user, why) =
                            self.login_refusal(&mech, user, password, identity, loopback);
                        let message = match why {
                            "invalid credentials" | "no such user" => {
                                format!("{mech} login refused: user '{user}' - invalid credentials")
                            }
                            "can only connect via localhost" => {
                                format!(
                                    "{mech} login refused: user '{user}' can only connect via localhost"
                                )
                            }
                            other => format!("{mech} login refused: {other}"),
                        };
                        self.log_refused(id, &mech, &user, why, &message);
                        Answer::refuse(
                            ReplyCode::ACCESS_REFUSED,
                            format!(
                                "ACCESS_REFUSED - Login was refused using authentication mechanism {mech}. For details see the broker logfile."
                            ),
                        )
                    }
                }
            }
            Decision::OpenVhost { virtual_host, .. } => {
                let v = virtual_host.to_string_lossy().into_owned();
                let user = self
                    .conns
                    .get(&id)
                    .and_then(|c| c.user.clone())
                    .unwrap_or_default();
                let refusal = if !self.vhosts.contains_key(&v) {
                    Some((
                        "vhost not found",
                        format!("NOT_ALLOWED - vhost {v} not found"),
                    ))
                } else if !self.auth.may_open(&user, &v) {
                    Some((
                        "no permissions in the vhost",
                        format!("NOT_ALLOWED - access to vhost '{v}' refused for user '{user}'"),
                    ))
                } else {
                    self.connection_limit(&v, &user)
                        .map(|text| ("connection limit", text))
                };
                if let Some((why, text)) = refusal {
                    let mech = self
                        .conns
                        .get(&id)
                        .and_then(|c| c.mechanism.clone())
                        .unwrap_or_default();
                    let message = text.strip_prefix("NOT_ALLOWED - ").unwrap_or(&text);
                    tracing::warn!(
                        conn = id,
                        peer = %self.peer_addr(id),
                        user = %user,
                        mechanism = %mech,
                        vhost = %v,
                        reason = why,
                        "vhost access refused: {message}"
                    );
                    Answer::refuse(ReplyCode::NOT_ALLOWED, text)
                } else {
                    tracing::info!(
                        conn = id,
                        %user,
                        vhost = %v,
                        "user authenticated and granted access to the vhost"
                    );
                    let topic = self.auth.topic_grants(&user, &v);
                    let permission = self.auth.permissions.get(&(user, v.clone())).cloned();
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.vhost = Some(v.into());
                        c.permission = permission;
                        c.topic = topic;
                        c.allowed.clear();
                        c.last_allowed = None;
                    }
                    self.push(
                        id,
                        Out::Decide {
                            id: did,
                            answer: Answer::Accept,
                        },
                    );
                    self.update_channel_caps(id);
                    return;
                }
            }
            _ => Answer::refuse(ReplyCode::NOT_IMPLEMENTED, "unsupported decision"),
        };
        self.push(id, Out::Decide { id: did, answer });
    }

    // ----- helpers ---------------------------------------------------------

    /// Why a login was refused, for the log: the user it named and the
    /// reason (RabbitMQ's "invalid credentials" for a wrong password; an
    /// unknown user and a loopback-only user are told apart here).
    fn login_refusal(
        &self,
        mechanism: &str,
        user: Option<&str>,
        password: Option<&str>,
        identity: Option<String>,
        loopback: bool,
    ) -> (String, &'static str) {
        let loopback_only = |u: &str| !loopback && self.auth.loopback_users.iter().any(|l| l == u);
        if mechanism == "EXTERNAL" {
            return match identity {
                None => (String::new(), "no verified client certificate"),
                Some(u) if !self.auth.users.contains_key(&u) => (u, "no such user"),
                Some(u) if loopback_only(&u) => (u, "can only connect via localhost"),
                Some(u) => (u, "refused"),
            };
        }
        let (Some(user), Some(_)) = (user, password) else {
            return (
                user.unwrap_or_default().to_owned(),
                "malformed or incomplete response",
            );
        };
        let why = if !self.auth.users.contains_key(user) {
            "no such user"
        } else if loopback_only(user) {
            "can only connect via localhost"
        } else {
            "invalid credentials"
        };
        (user.to_owned(), why)
    }

    /// The peer's address, as the logs show it (empty before the shell
    /// gave it).
    fn peer_addr(&self, id: ConnId) -> String {
        self.conns
            .get(&id)
            .and_then(|c| c.mgmt.addrs)
            .map(|(p, _)| p.to_string())
            .unwrap_or_default()
    }

    /// One log line for a refused login, naming peer, user, mechanism and
    /// reason; the message is RabbitMQ's (`PLAIN login refused: user 'x' -
    /// invalid credentials`).
    fn log_refused(&self, id: ConnId, mechanism: &str, user: &str, reason: &str, message: &str) {
        tracing::warn!(
            conn = id,
            peer = %self.peer_addr(id),
            user = %user,
            mechanism = %mechanism,
            reason,
            "{message}"
        );
    }

    /// The codec closed connection `id` with `text` before it logged in:
    /// when the client chose a mechanism the broker does not offer (503,
    /// as RabbitMQ), that is logged as a refused login.
    pub fn log_refused_mechanism(&self, id: ConnId, text: &str) {
        if self.conns.get(&id).is_none_or(|c| c.user.is_some()) {
            return;
        }
        let Some(at) = text.find("unknown authentication mechanism '") else {
            return;
        };
        let message = &text[at..];
        let mechanism = message.split('\'').nth(1).unwrap_or_default();
        self.log_refused(id, mechanism, "", "mechanism not offered", message);
    }

    /// RabbitMQ's refusal when opening `vhost` as `user` would pass the
    /// vhost's or the user's connection limit.
    fn connection_limit(&self, vhost: &str, user: &str) -> Option<String> {
        let open = |f: &dyn Fn(&Conn) -> bool| {
            self.conns
                .values()
                .filter(|c| !c.closing && c.vhost.is_some() && f(c))
                .count() as u64
        };
        if let Some(max) = self
            .limits
            .vhosts
            .get(vhost)
            .and_then(|l| l.max_connections)
            && open(&|c| c.vhost.as_deref() == Some(vhost)) >= max
        {
            return Some(format!(
                "NOT_ALLOWED - access to vhost '{vhost}' refused for user '{user}': \
                 connection limit ({max}) is reached"
            ));
        }
        if let Some(max) = self.limits.users.get(user).and_then(|l| l.max_connections)
            && open(&|c| c.user.as_deref() == Some(user)) >= max
        {
            return Some(format!(
                "NOT_ALLOWED - connection refused for user '{user}': \
                 user connection limit ({max}) is reached"
            ));
        }
        None
    }

    /// RabbitMQ's per-user `max-channels`: each connection of the user of
    /// connection `id` may have open the channels it has plus what is left
    /// of the user's allowance; the codec refuses beyond that (530,
    /// RabbitMQ's text) before `channel.open-ok`.
    fn update_channel_caps(&mut self, id: ConnId) {
        if let Some(user) = self.conns.get(&id).and_then(|c| c.user.clone()) {
            self.user_channel_caps(&user);
        }
    }

    /// [`Self::update_channel_caps`] for the connections of `user`.
    pub(crate) fn user_channel_caps(&mut self, user: &str) {
        let Some(max) = self.limits.users.get(user).and_then(|l| l.max_channels) else {
            // No limit (any more): lift the caps given before.
            let mut capped: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| c.user.as_deref() == Some(user) && c.channel_cap.is_some())
                .map(|(id, _)| *id)
                .collect();
            capped.sort_unstable();
            for cid in capped {
                if let Some(c) = self.conns.get_mut(&cid) {
                    c.channel_cap = None;
                }
                self.push(
                    cid,
                    Out::ChannelCap {
                        cap: usize::MAX,
                        text: String::new(),
                    },
                );
            }
            return;
        };
        let mine = |c: &Conn| !c.closing && c.vhost.is_some() && c.user.as_deref() == Some(user);
        let total: u64 = self
            .conns
            .values()
            .filter(|c| mine(c))
            .map(|c| c.channels.len() as u64)
            .sum();
        let left = max.saturating_sub(total);
        let mut changed: Vec<(ConnId, usize)> = self
            .conns
            .iter()
            .filter(|(_, c)| mine(c))
            .map(|(id, c)| {
                let cap = (c.channels.len() as u64).saturating_add(left);
                (*id, usize::try_from(cap).unwrap_or(usize::MAX))
            })
            .filter(|(id, cap)| {
                self.conns
                    .get(id)
                    .is_some_and(|c| c.channel_cap != Some(*cap))
            })
            .collect();
        changed.sort_unstable();
        let text = format!(
            "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({max})"
        );
        for (cid, cap) in changed {
            if let Some(c) = self.conns.get_mut(&cid) {
                c.channel_cap = Some(cap);
            }
            self.push(
                cid,
                Out::ChannelCap {
                    cap,
                    text: text.clone(),
                },
            );
        }
    }

    fn vhost_name(&self, id: ConnId) -> Arc<str> {
        self.conns
            .get(&id)
            .and_then(|c| c.vhost.clone())
            .unwrap_or_else(|| Arc::from(""))
    }

    fn chan(&mut self, id: ConnId, channel: u16) -> Option<&mut Chan> {
        self.conns.get_mut(&id)?.channels.get_mut(&channel)
    }

    fn reply(&mut self, id: ConnId, channel: u16, method: impl Into<Method>) {
        self.push(
            id,
            Out::Method {
                channel,
                method: boxed(method),
            },
        );
    }

    /// Checks a permission; the refusal is RabbitMQ's 403.
    fn check(
        &mut self,
        id: ConnId,
        channel: u16,
        access: Access,
        kind: &str,
        name: &[u8],
        ids: (u16, u16),
    ) -> Res {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        let name: &[u8] = if kind == "exchange" && name.is_empty() {
            b"amq.default"
        } else {
            name
        };
        if let Some((a, n, true)) = &c.last_allowed
            && *a == access
            && n.as_bytes() == name
        {
            return Ok(());
        }
        let key = ShortString::from_bytes(name).unwrap_or_default();
        let ok = match c.allowed.get(&(access, key.clone())) {
            Some(ok) => *ok,
            None => {
                let ok = c
                    .permission
                    .as_ref()
                    .is_some_and(|p| p.allows(access, name));
                if c.allowed.len() >= 1024 {
                    c.allowed.clear();
                }
                c.allowed.insert((access, key.clone()), ok);
                ok
            }
        };
        c.last_allowed = Some((access, key, ok));
        if ok {
            return Ok(());
        }
        let user = c.user.as_deref().unwrap_or("");
        let vhost = c.vhost.as_deref().unwrap_or("");
        Err(refused(
            channel,
            ReplyCode::ACCESS_REFUSED,
            format!(
                "access to {kind} '{}' in vhost '{vhost}' refused for user '{user}'",
                s(name)
            ),
            ids,
        ))
    }

    /// The checks of a (un)binding, in RabbitMQ's order: write on the
    /// destination (a `queue` or an `exchange`), read on the source
    /// exchange, then the topic permission for the key on it.
    fn check_binding(
        &mut self,
        id: ConnId,
        ch: u16,
        destination: (&str, &[u8]),
        source: &[u8],
        key: &[u8],
        ids: (u16, u16),
    ) -> Res {
        self.check(id, ch, Access::Write, destination.0, destination.1, ids)?;
        self.check(id, ch, Access::Read, "exchange", source, ids)?;
        self.check_topic(id, ch, Access::Read, source, key, ids)
    }

    /// Checks a routing or binding `key` on `exchange` against the
    /// connection's topic permissions (RabbitMQ's
    /// `check_topic_authorisation`): only topic exchanges that exist are
    /// checked (others are refused later, as in RabbitMQ); the refusal is
    /// its 403.
    fn check_topic(
        &self,
        id: ConnId,
        channel: u16,
        access: Access,
        exchange: &[u8],
        key: &[u8],
        ids: (u16, u16),
    ) -> Res {
        let Some(c) = self.conns.get(&id) else {
            return Ok(());
        };
        if c.topic.is_empty() {
            return Ok(());
        }
        let vhost = c.vhost.as_deref().unwrap_or("");
        let topic = self
            .vhosts
            .get(vhost)
            .and_then(|v| v.router.exchange(exchange))
            .is_some_and(|x| x.type_name() == "topic" && !x.internal());
        if !topic || crate::auth::topic_allowed(&c.topic, exchange, access, key) {
            return Ok(());
        }
        let user = c.user.as_deref().unwrap_or("");
        Err(refused(
            channel,
            ReplyCode::ACCESS_REFUSED,
            format!(
                "access to topic '{}' in exchange '{}' in vhost '{vhost}' refused for user '{user}'",
                s(key),
                s(exchange)
            ),
            ids,
        ))
    }

    /// The queue name a method means: an empty name is the channel's last
    /// declared queue (404 when there is none).
    fn queue_name(
        &mut self,
        id: ConnId,
        channel: u16,
        name: &ShortString,
        ids: (u16, u16),
    ) -> Result<ShortString, ProtocolError> {
        if !name.is_empty() {
            return Ok(name.clone());
        }
        self.chan(id, channel)
            .and_then(|c| c.last_queue.clone())
            .ok_or_else(|| {
                refused(
                    channel,
                    ReplyCode::NOT_FOUND,
                    "no previously declared queue".into(),
                    ids,
                )
            })
    }

    // ----- methods -------------------------------------------------------

    fn method(&mut self, id: ConnId, ch: u16, m: Method) -> Res {
        if matches!(
            m,
            Method::ExchangeDeclare(_)
                | Method::ExchangeDelete(_)
                | Method::ExchangeBind(_)
                | Method::ExchangeUnbind(_)
                | Method::QueueDeclare(_)
                | Method::QueueBind(_)
                | Method::QueueUnbind(_)
                | Method::QueueDelete(_)
        ) {
            // The durable topology may change (a snapshot is cheap).
            self.definitions_dirty = true;
        }
        let owner = OwnerId(id);
        let vh = self.vhost_name(id);
        match m {
            Method::ExchangeDeclare(m) => {
                self.check(
                    id,
                    ch,
                    Access::Configure,
                    "exchange",
                    m.exchange.as_bytes(),
                    (40, 10),
                )?;
                let v = self.vhosts.get_mut(&*vh).ok_or_else(no_vhost)?;
                v.router
                    .declare_exchange(&r::ExchangeDeclare::from_method(&m))?;
                self.apply_exchange_policy(&vh, m.exchange.as_bytes());
                if !m.nowait {
                    self.reply(id, ch, ExchangeDeclareOk {});
                }
            }
            Method::ExchangeDelete(m) => {
                self.check(
                    id,
                    ch,
                    Access::Configure,
                    "exchange",
                    m.exchange.as_bytes(),
                    (40, 20),
                )?;
                let v = self.vhosts.get_mut(&*vh).ok_or_else(no_vhost)?;
                let removed = v
                    .router
                    .delete_exchange(m.exchange.as_bytes(), m.if_unused)?;
                self.removed(removed);
                if !m.nowait {
                    self.reply(id, ch, ExchangeDeleteOk {});
                }
            }
            Method::ExchangeBind(m) => {
                self.check_binding(
                    id,
                    ch,
                    ("exchange", m.destination.as_bytes()),
                    m.source.as_bytes(),
                    m.routing_key.as_bytes(),
                    (40, 30),
                )?;
                let v = self.vhosts.get_mut(&*vh).ok_or_else(no_vhost)?;
                v.router
                    .bind_exchange(&Bind::from_exchange_bind(&m, owner))?;
                if !m.nowait {
                    self.reply(id, ch, ExchangeBindOk {});
                }
            }
            Method::ExchangeUnbind(m) => {
                self.check_binding(
                    id,
                    ch,
                    ("exchange", m.destination.as_bytes()),
                    m.source.as_bytes(),
                    m.routing_key.as_bytes(),
                    (40, 40),
                )?;
                let v = self.vhosts.get_mut(&*vh).ok_or_else(no_vhost)?;
                let removed = v
                    .router
                    .unbind_exchange(&Bind::from_exchange_unbind(&m, owner))?;
                self.removed(removed);
                if !m.nowait {
                    self.reply(id, ch, ExchangeUnbindOk {});
                }
            }
            Method::QueueDeclare(m) => self.queue_declare(id, ch, m)?,
            Method::QueueBind(mut m) => {
                m.queue = self.queue_name(id, ch, &m.queue, (50, 20))?;
                self.check_binding(
                    id,
                    ch,
                    ("queue", m.queue.as_bytes()),
                    m.exchange.as_bytes(),
                    m.routing_key.as_bytes(),
                    (50, 20),
                )?;
                let v = self.vhosts.get_mut(&*vh).ok_or_else(no_vhost)?;
                v.router.bind_queue(&Bind::from_queue_bind(&m, owner))?;
                if !m.nowait {
                    self.reply(id, ch, QueueBindOk {});
                }
            }
            Method::QueueUnbind(mut m) => {
                m.queue = self.queue_name(id, ch, &m.queue, (50, 50))?;
                self.check_binding(
                    id,
                    ch,
                    ("queue", m.queue.as_bytes()),
                    m.exchange.as_bytes(),
                    m.routing_key.as_bytes(),
                    (50, 50),
                )?;
                let v = self.vhosts.get_mut(&*vh).ok_or_else(no_vhost)?;
                let removed = v.router.unbind_queue(&Bind::from_queue_unbind(&m, owner))?;
                self.removed(removed);
                self.reply(id, ch, QueueUnbindOk {});
            }
            Method::QueuePurge(mut m) => {
                m.queue = self.queue_name(id, ch, &m.queue, (50, 30))?;
                self.check(id, ch, Access::Read, "queue", m.queue.as_bytes(), (50, 30))?;
                let v = self.vhosts.get(&*vh).ok_or_else(no_vhost)?;
                let qid = *v
                    .router
                    .check_queue(m.queue.as_bytes(), owner, (50, 30))?
                    .handle();
                if let Some(q) = self.queues.get(&qid)
                    && q.stream.is_some()
                {
                    return Err(refused(
                        0,
                        ReplyCode::NOT_IMPLEMENTED,
                        format!("queue.purge not supported by stream queues {}", q.rs()),
                        (50, 30),
                    ));
                }
                let n = self.drain_ready(qid);
                if !m.nowait {
                    self.reply(
                        id,
                        ch,
                        QueuePurgeOk {
                            message_count: count(n),
                        },
                    );
                }
            }
            Method::QueueDelete(mut m) => {
                m.queue = self.queue_name(id, ch, &m.queue, (50, 40))?;
                self.check(
                    id,
                    ch,
                    Access::Configure,
                    "queue",
                    m.queue.as_bytes(),
                    (50, 40),
                )?;
                let queues = &self.queues;
                let mut ready = 0;
                let v = self.vhosts.get_mut(&*vh).ok_or_else(no_vhost)?;
                let removed =
                    v.router
                        .delete_queue(&r::QueueDelete::from_method(&m, owner), |q| {
                            let u = queues.get(q).map_or(QueueUsage::default(), |q| QueueUsage {
                                consumers: count(q.consumers.len()),
                                messages: count(q.ready.len()),
                            });
                            ready = u.messages;
                            u
                        })?;
                if let Some(q) = removed.queues.first()
                    && let Some(qs) = self.queues.get(&q.handle)
                {
                    ready = count(qs.ready.len());
                }
                // delete-ok goes out before the consumers' basic.cancel, as
                // RabbitMQ.
                if !m.nowait {
                    self.reply(
                        id,
                        ch,
                        QueueDeleteOk {
                            message_count: ready,
                        },
                    );
                }
                self.removed(removed);
            }
            Method::BasicQos(m) => {
                if m.prefetch_size != 0 {
                    return Err(refused(
                        ch,
                        ReplyCode::NOT_IMPLEMENTED,
                        format!("prefetch_size!=0 ({})", m.prefetch_size),
                        (60, 10),
                    ));
                }
                let Some(c) = self.chan(id, ch) else {
                    return Ok(());
                };
                if m.global {
                    c.global_prefetch = m.prefetch_count;
                } else {
                    c.prefetch = m.prefetch_count;
                }
                let qs: Vec<QueueId> = c.consumers.values().map(|k| k.queue).collect();
                self.reply(id, ch, BasicQosOk {});
                for q in qs {
                    self.dispatch(q);
                }
            }
            Method::BasicConsume(m) => self.consume(id, ch, m)?,
            Method::BasicCancel(m) => {
                self.cancel(id, ch, &m.consumer_tag);
                if !m.nowait {
                    self.reply(
                        id,
                        ch,
                        BasicCancelOk {
                            consumer_tag: m.consumer_tag,
                        },
                    );
                }
            }
            Method::BasicGet(m) => self.get(id, ch, m)?,
            Method::BasicAck(m) => {
                let taken = self.take_unacked(id, ch, m.delivery_tag, m.multiple, (60, 80))?;
                self.settle(id, ch, taken, TxAck::Ack);
            }
            Method::BasicNack(m) => {
                let taken = self.take_unacked(id, ch, m.delivery_tag, m.multiple, (60, 120))?;
                self.not_from_a_stream(&taken, (60, 120))?;
                let how = if m.requeue {
                    TxAck::Requeue
                } else {
                    TxAck::Drop
                };
                self.settle(id, ch, taken, how);
            }
            Method::BasicReject(m) => {
                let taken = self.take_unacked(id, ch, m.delivery_tag, false, (60, 90))?;
                self.not_from_a_stream(&taken, (60, 90))?;
                let how = if m.requeue {
                    TxAck::Requeue
                } else {
                    TxAck::Drop
                };
                self.settle(id, ch, taken, how);
            }
            Method::BasicRecover(m) => {
                // recover-ok goes out before the redeliveries, as RabbitMQ.
                if m.requeue {
                    self.reply(id, ch, BasicRecoverOk {});
                }
                self.recover(id, ch, m.requeue, (60, 110))?;
            }
            Method::BasicRecoverAsync(m) => self.recover(id, ch, m.requeue, (60, 100))?,
            Method::ChannelFlow(m) => {
                if !m.active {
                    return Err(refused(
                        ch,
                        ReplyCode::NOT_IMPLEMENTED,
                        "active=false".into(),
                        (20, 20),
                    ));
                }
                self.reply(id, ch, ChannelFlowOk { active: true });
            }
            Method::ConfirmSelect(m) => {
                let Some(c) = self.chan(id, ch) else {
                    return Ok(());
                };
                if c.tx.is_some() {
                    return Err(refused(
                        ch,
                        ReplyCode::PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode".into(),
                        (85, 10),
                    ));
                }
                c.confirm = true;
                if !m.nowait {
                    self.reply(id, ch, ConfirmSelectOk {});
                }
            }
            Method::TxSelect(_) => {
                let Some(c) = self.chan(id, ch) else {
                    return Ok(());
                };
                if c.confirm {
                    return Err(refused(
                        ch,
                        ReplyCode::PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode".into(),
                        (90, 10),
                    ));
                }
                if c.tx.is_none() {
                    c.tx = Some(Tx::default());
                }
                self.reply(id, ch, TxSelectOk {});
            }
            Method::TxCommit(_) => {
                let tx = self.tx_take(id, ch, (90, 20))?;
                let before = self.store_seq;
                if self.commit(id, ch, tx) {
                    return Err(refused(
                        ch,
                        ReplyCode::PRECONDITION_FAILED,
                        "partial tx completion".into(),
                        (90, 20),
                    ));
                }
                if self.store_seq > before {
                    // commit-ok once the transaction's records are durable.
                    self.waiting
                        .push_back((self.store_seq, id, ch, Settle::CommitOk));
                } else {
                    self.reply(id, ch, TxCommitOk {});
                }
            }
            Method::TxRollback(_) => {
                let tx = self.tx_take(id, ch, (90, 30))?;
                self.unacked_bytes += tx.acks.iter().map(|(_, u, _)| held(&u.entry)).sum::<u64>();
                if let Some(c) = self.chan(id, ch) {
                    for (tag, u, _) in tx.acks {
                        if u.consumer.is_some() {
                            c.consumer_unacked += 1;
                        }
                        c.unacked.insert(tag, u);
                    }
                }
                self.reply(id, ch, TxRollbackOk {});
            }
            Method::ConnectionUpdateSecret(_) => {
                self.reply(id, 0, ConnectionUpdateSecretOk {});
            }
            // Replies from the client (e.g. a cancel-ok) and anything else
            // the codec lets through need nothing.
            _ => {}
        }
        Ok(())
    }

    fn tx_take(&mut self, id: ConnId, ch: u16, ids: (u16, u16)) -> Result<Tx, ProtocolError> {
        let Some(c) = self.chan(id, ch) else {
            return Ok(Tx::default());
        };
        match &mut c.tx {
            Some(tx) => Ok(std::mem::take(tx)),
            None => Err(refused(
                ch,
                ReplyCode::PRECONDITION_FAILED,
                "channel is not transactional".into(),
                ids,
            )),
        }
    }

    fn queue_declare(&mut self, id: ConnId, ch: u16, m: QueueDeclare) -> Res {
        let owner = OwnerId(id);
        let vh = self.vhost_name(id);
        // (An empty name with passive is not the last declared queue:
        // RabbitMQ looks for a queue named '' and answers 404.)
        if !m.queue.is_empty() {
            self.check(
                id,
                ch,
                Access::Configure,
                "queue",
                m.queue.as_bytes(),
                (50, 10),
            )?;
        }
        if !m.passive
            && let Some(max) = self.limits.vhosts.get(&*vh).and_then(|l| l.max_queues)
            && let Some(v) = self.vhosts.get(&*vh)
            && v.router.queue(m.queue.as_bytes()).is_none()
            && v.router.queues().count() as u64 >= max
        {
            return Err(refused(
                ch,
                ReplyCode::PRECONDITION_FAILED,
                format!(
                    "cannot declare queue '{}': queue limit in vhost '{vh}' ({max}) is reached",
                    m.queue.to_string_lossy()
                ),
                (50, 10),
            ));
        }
        if !m.passive {
            let name = if m.queue.is_empty() {
                "amq.gen".into()
            } else {
                m.queue.to_string_lossy().into_owned()
            };
            check_queue_args(&m.arguments, &name, &vh)
                .map_err(|e| refused(ch, ReplyCode::PRECONDITION_FAILED, e, (50, 10)))?;
        }
        let kind = lifecycle::QueueKind::from_arguments(&m.arguments);
        let replicated = kind != lifecycle::QueueKind::Classic;
        let exists = self
            .vhosts
            .get(&*vh)
            .is_some_and(|v| v.router.queue(m.queue.as_bytes()).is_some());
        if !m.passive
            && !exists
            && let Some(k) = kind.refused_argument(&m.arguments)
        {
            return Err(refused(
                ch,
                ReplyCode::PRECONDITION_FAILED,
                format!(
                    "invalid arg '{k}' for queue '{}' in vhost '{vh}' of queue type {}",
                    m.queue.to_string_lossy(),
                    kind.module()
                ),
                (50, 10),
            ));
        }
        if replicated && !m.passive && !exists {
            // What quorum (and stream) queues cannot be, in RabbitMQ's order.
            let property = if m.auto_delete {
                Some("auto-delete")
            } else if m.exclusive {
                Some("exclusive-owner")
            } else if !m.durable {
                Some("non-durable")
            } else {
                None
            };
            if let Some(p) = property {
                return Err(refused(
                    ch,
                    ReplyCode::PRECONDITION_FAILED,
                    format!(
                        "invalid property '{p}' for queue '{}' in vhost '{vh}'",
                        m.queue.to_string_lossy()
                    ),
                    (50, 10),
                ));
            }
        }
        let mut m = m;
        if exists && !m.passive {
            // Only the arguments of the declared type are compared.
            m.arguments = lifecycle::supported_arguments(kind, &m.arguments);
        }
        let next = self.next_queue;
        let v = self.vhosts.get_mut(&*vh).ok_or_else(no_vhost)?;
        let declared = v
            .router
            .declare_queue(&r::QueueDeclare::from_method(&m, owner), |_| next)?;
        let qid = *v
            .router
            .queue(declared.name.as_bytes())
            .map(|q| q.handle())
            .unwrap_or(&next);
        if qid == next {
            self.next_queue += 1;
            self.queues.insert(
                qid,
                QState::new(
                    &vh,
                    declared.name.clone(),
                    m.durable && !m.exclusive,
                    m.auto_delete,
                    &m.arguments,
                    self.pager.as_ref(),
                ),
            );
            self.apply_policy(qid);
        }
        self.used(qid);
        let (messages, consumers) = self
            .queues
            .get(&qid)
            .map_or((0, 0), |q| (q.ready.len(), q.consumers.len()));
        if let Some(c) = self.chan(id, ch) {
            c.last_queue = Some(declared.name.clone());
        }
        if !m.nowait {
            self.reply(
                id,
                ch,
                QueueDeclareOk {
                    queue: declared.name,
                    message_count: count(messages),
                    consumer_count: count(consumers),
                },
            );
        }
        Ok(())
    }

    fn consume(&mut self, id: ConnId, ch: u16, m: BasicConsume) -> Res {
        let ids = (60, 20);
        if m.queue.as_bytes() == REPLY_TO.as_bytes() {
            return self.consume_replies(id, ch, m);
        }
        let owner = OwnerId(id);
        let vh = self.vhost_name(id);
        let queue = self.queue_name(id, ch, &m.queue, ids)?;
        self.check(id, ch, Access::Read, "queue", queue.as_bytes(), ids)?;
        let v = self.vhosts.get(&*vh).ok_or_else(no_vhost)?;
        let qid = *v.router.check_queue(queue.as_bytes(), owner, ids)?.handle();
        let priority = match m.arguments.get("x-priority") {
            None => 0,
            Some(v) => integer_arg(v).map_err(|why| {
                refused(
                    ch,
                    ReplyCode::PRECONDITION_FAILED,
                    format!(
                        "invalid arg 'x-priority' for queue '{}' in vhost '{vh}': {why}",
                        queue.to_string_lossy()
                    ),
                    ids,
                )
            })? as i64,
        };
        let tag = if m.consumer_tag.is_empty() {
            self.consumer_tag()
        } else {
            m.consumer_tag.clone()
        };
        let Some(c) = self.chan(id, ch) else {
            return Ok(());
        };
        if c.consumers.contains_tag(&tag) {
            return Err(refused(
                ch,
                ReplyCode::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{}'", tag.to_string_lossy()),
                ids,
            ));
        }
        let prefetch = c.prefetch;
        let global = c.global_prefetch > 0;
        let now_ms = self.wall_ms();
        let q = self.queues.get_mut(&qid).ok_or_else(no_vhost)?;
        let mut cursor = None;
        if let Some(log) = &q.stream {
            // RabbitMQ 3.10's stream consumers: a prefetch, acks, an offset.
            if prefetch == 0 {
                return Err(refused(
                    ch,
                    ReplyCode::PRECONDITION_FAILED,
                    format!("consumer prefetch count is not set for '{}'", q.rs()),
                    ids,
                ));
            }
            if m.no_ack {
                return Err(refused(
                    0,
                    ReplyCode::NOT_IMPLEMENTED,
                    format!(
                        "automatic acknowledgement not supported by stream queues {}",
                        q.rs()
                    ),
                    ids,
                ));
            }
            let Some(start) = lifecycle::stream_start(m.arguments.get("x-stream-offset"), now_ms)
            else {
                // RabbitMQ 3.10's channel crashes: the connection closes
                // with a bare 541.
                self.close_as_is(id, 0, ReplyCode::INTERNAL_ERROR, "INTERNAL_ERROR".into());
                return Ok(());
            };
            cursor = Some(log.start(start));
        }
        if global && q.args.kind != lifecycle::QueueKind::Classic {
            // A connection error in RabbitMQ 3.10.
            return Err(refused(
                0,
                ReplyCode::NOT_IMPLEMENTED,
                format!(
                    "queue '{}' in vhost '{}' does not support global qos",
                    q.name().to_string_lossy(),
                    q.vhost()
                ),
                ids,
            ));
        }
        if q.exclusive_consumer
            || (m.exclusive && (!q.consumers.is_empty() || q.args.single_active))
        {
            return Err(refused(
                ch,
                ReplyCode::ACCESS_REFUSED,
                format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    q.name().to_string_lossy(),
                    q.vhost()
                ),
                ids,
            ));
        }
        q.exclusive_consumer = m.exclusive;
        q.had_consumers = true;
        let Some(key) = self.chan(id, ch).map(|c| {
            c.consumers.insert(
                tag.clone(),
                Consumer {
                    queue: qid,
                    no_ack: m.no_ack,
                    prefetch,
                    unacked: 0,
                    cursor,
                },
            )
        }) else {
            return Ok(());
        };
        let q = self.queues.get_mut(&qid).ok_or_else(no_vhost)?;
        let at = q
            .consumers
            .iter()
            .position(|k| k.priority < priority)
            .unwrap_or(q.consumers.len());
        q.consumers.insert(
            at,
            QConsumer {
                conn: id,
                ch,
                tag: tag.clone(),
                key,
                priority,
                since: self.next_consumer,
            },
        );
        self.next_consumer += 1;
        if !m.nowait {
            self.reply(id, ch, BasicConsumeOk { consumer_tag: tag });
        }
        self.used(qid);
        self.dispatch(qid);
        Ok(())
    }

    /// Direct reply-to: a no-ack consumer of the pseudo-queue
    /// `amq.rabbitmq.reply-to`, one per channel.
    fn consume_replies(&mut self, id: ConnId, ch: u16, m: BasicConsume) -> Res {
        let ids = (60, 20);
        let tag = if m.consumer_tag.is_empty() {
            self.consumer_tag()
        } else {
            m.consumer_tag.clone()
        };
        let suffix = format!("{:016x}{:016x}", self.next_rand(), self.next_rand());
        let Some(c) = self.chan(id, ch) else {
            return Ok(());
        };
        if !m.no_ack {
            return Err(refused(
                ch,
                ReplyCode::PRECONDITION_FAILED,
                "reply consumer cannot acknowledge".into(),
                ids,
            ));
        }
        if c.reply_consumer.is_some() {
            return Err(refused(
                ch,
                ReplyCode::PRECONDITION_FAILED,
                "reply consumer already set".into(),
                ids,
            ));
        }
        c.reply_consumer = Some((tag.clone(), suffix.clone()));
        self.reply_to.insert(suffix, (id, ch));
        if !m.nowait {
            self.reply(id, ch, BasicConsumeOk { consumer_tag: tag });
        }
        Ok(())
    }

    /// Removes a consumer; deletes its queue if it was auto-delete and this
    /// was its last consumer.
    fn cancel(&mut self, id: ConnId, ch: u16, tag: &ShortString) {
        if let Some(c) = self.chan(id, ch)
            && c.reply_consumer.as_ref().is_some_and(|(t, _)| t == tag)
        {
            if let Some((_, suffix)) = c.reply_consumer.take() {
                self.reply_to.remove(&suffix);
            }
            return;
        }
        let Some(k) = self.chan(id, ch).and_then(|c| c.consumers.remove(tag)) else {
            return;
        };
        let Some(q) = self.queues.get_mut(&k.queue) else {
            return;
        };
        q.consumers
            .retain(|k| !(k.conn == id && k.ch == ch && k.tag == *tag));
        q.exclusive_consumer = false;
        if q.consumers.is_empty() && q.auto_delete && q.had_consumers {
            let (vh, name) = (q.vhost().clone(), q.name().clone());
            self.delete_queue_named(&vh, &name);
        } else if q.consumers.is_empty() {
            // Unused from now on (x-expires).
            self.used(k.queue);
        }
    }

    fn delete_queue_named(&mut self, vhost: &str, name: &ShortString) {
        let Some(v) = self.vhosts.get_mut(vhost) else {
            return;
        };
        let Some(q) = v.router.queue(name.as_bytes()) else {
            return;
        };
        let owner = OwnerId(q.exclusive_owner().map_or(0, |o| o.0));
        let d = r::QueueDelete {
            name: name.as_bytes(),
            if_unused: false,
            if_empty: false,
            owner,
        };
        if let Ok(removed) = v.router.delete_queue(&d, |_| QueueUsage::default()) {
            self.removed(removed);
        }
    }

    /// Drops the state of queues the router removed; their consumers are
    /// cancelled (with basic.cancel to clients that take it).
    fn removed(&mut self, removed: Removed<QueueId>) {
        if !removed.is_empty() {
            self.definitions_dirty = true;
        }
        for rq in removed.queues {
            // Its messages, ready and unacknowledged, go with it.
            self.drain_ready(rq.handle);
            let gone: Vec<Entry> = self
                .conns
                .values()
                .flat_map(|c| c.channels.values())
                .flat_map(|ch| ch.unacked.values())
                .filter(|u| u.queue == rq.handle)
                .map(|u| u.entry.clone())
                .collect();
            for e in &gone {
                self.gone(rq.handle, e);
            }
            let Some(q) = self.queues.remove(&rq.handle) else {
                continue;
            };
            for QConsumer { conn, ch, tag, .. } in q.consumers {
                let notify = self
                    .conns
                    .get_mut(&conn)
                    .and_then(|c| {
                        let n = c.caps.consumer_cancel_notify;
                        c.channels.get_mut(&ch).map(|chan| (chan, n))
                    })
                    .map(|(chan, n)| chan.consumers.remove(&tag).is_some() && n && !chan.closing)
                    .unwrap_or(false);
                if notify {
                    self.push(
                        conn,
                        Out::Method {
                            channel: ch,
                            method: boxed(BasicCancel {
                                consumer_tag: tag,
                                nowait: true,
                            }),
                        },
                    );
                }
            }
        }
    }

    fn get(&mut self, id: ConnId, ch: u16, m: BasicGet) -> Res {
        let ids = (60, 70);
        let vh = self.vhost_name(id);
        let queue = self.queue_name(id, ch, &m.queue, ids)?;
        self.check(id, ch, Access::Read, "queue", queue.as_bytes(), ids)?;
        let v = self.vhosts.get(&*vh).ok_or_else(no_vhost)?;
        let qid = *v
            .router
            .check_queue(queue.as_bytes(), OwnerId(id), ids)?
            .handle();
        if let Some(q) = self.queues.get(&qid)
            && q.stream.is_some()
        {
            return Err(refused(
                0,
                ReplyCode::NOT_IMPLEMENTED,
                format!("basic.get not supported by stream queues {}", q.rs()),
                ids,
            ));
        }
        self.expire(qid);
        self.used(qid);
        let Some(q) = self.queues.get_mut(&qid) else {
            return Ok(());
        };
        let Some(entry) = q.ready.pop() else {
            q.stats.get_empty += 1; // management
            self.counters.get_empty += 1; // management
            self.reply(
                id,
                ch,
                BasicGetEmpty {
                    cluster_id: ShortString::EMPTY,
                },
            );
            return Ok(());
        };
        // Expired messages the get uncovered go now (the count says so);
        // the new head's expiry is armed.
        self.expire(qid);
        self.arm(qid);
        let (remaining, kind) = self.queues.get(&qid).map_or((0, Default::default()), |q| {
            (count(q.ready.len()), q.args.kind)
        });
        self.count_get(qid, m.no_ack, entry.redelivered); // management
        let Some(c) = self.chan(id, ch) else {
            return Ok(());
        };
        c.next_tag += 1;
        let tag = c.next_tag;
        let method = BasicGetOk {
            delivery_tag: tag,
            redelivered: entry.redelivered,
            exchange: entry.msg.exchange_name(),
            routing_key: entry.msg.routing_key_name(),
            message_count: remaining,
        };
        // A quorum queue's basic.get says how often it came back, 0 too.
        let msg = match kind {
            lifecycle::QueueKind::Quorum => delivery_counted(&entry),
            _ => entry.msg.clone(),
        };
        if m.no_ack {
            self.gone(qid, &entry);
        } else {
            self.delivered_once(qid, &entry);
            let at = self.now;
            self.unacked_bytes += held(&entry);
            if let Some(c) = self.chan(id, ch) {
                c.unacked.insert(
                    tag,
                    Unacked {
                        queue: qid,
                        entry,
                        consumer: None,
                        at,
                    },
                );
            }
            self.tick_armed();
        }
        self.push(
            id,
            Out::Content {
                channel: ch,
                method: Box::new(method.into()),
                msg,
            },
        );
        Ok(())
    }

    /// Takes the unacked deliveries an ack/nack/reject names (406 for a tag
    /// that is not outstanding, as RabbitMQ).
    fn take_unacked(
        &mut self,
        id: ConnId,
        ch: u16,
        tag: u64,
        multiple: bool,
        ids: (u16, u16),
    ) -> Result<Vec<(u64, Unacked)>, ProtocolError> {
        let mut taken = std::mem::take(&mut self.settle_buf.0);
        taken.clear();
        let Some(c) = self.chan(id, ch) else {
            return Ok(taken);
        };
        if multiple && tag == 0 {
            c.unacked.take_all(&mut taken);
        } else if !c.unacked.contains_key(tag) {
            return Err(refused(
                ch,
                ReplyCode::PRECONDITION_FAILED,
                format!("unknown delivery tag {tag}"),
                ids,
            ));
        } else if multiple {
            c.unacked.take_through(tag, &mut taken);
        } else {
            taken.extend(c.unacked.remove(tag).map(|u| (tag, u)));
        }
        for (_, u) in &taken {
            if let Some(key) = u.consumer {
                c.consumer_unacked = c.consumer_unacked.saturating_sub(1);
                if let Some(k) = c.consumers.get_mut(key) {
                    k.unacked = k.unacked.saturating_sub(1);
                }
            }
        }
        let bytes: u64 = taken.iter().map(|(_, u)| held(&u.entry)).sum();
        self.unacked_bytes = self.unacked_bytes.saturating_sub(bytes);
        Ok(taken)
    }

    /// Raises (`on`) or clears a resource alarm. When the last one clears,
    /// blocked publishers get `connection.unblocked` (those that announced
    /// the capability) and are woken. Returns whether anything changed.
    pub fn set_alarm(&mut self, alarm: Alarm, on: bool) -> bool {
        let changed = if on {
            self.alarms.insert(alarm)
        } else {
            self.alarms.remove(&alarm)
        };
        if changed && self.alarms.is_empty() {
            let mut unblocked = Vec::new();
            for (&id, c) in self.conns.iter_mut().filter(|(_, c)| c.blocked) {
                c.blocked = false;
                if c.caps.connection_blocked && !c.closing {
                    c.outbox.push(Out::Method {
                        channel: 0,
                        method: boxed(ConnectionUnblocked {}),
                    });
                }
                unblocked.push(id);
            }
            unblocked.sort_unstable();
            self.woken.extend(unblocked);
        }
        if changed {
            tracing::warn!(
                alarm = alarm.name(),
                "resource alarm {}",
                if on { "raised" } else { "cleared" }
            );
        }
        changed
    }

    /// The memory the core's messages take, estimated: bodies and a fixed
    /// overhead per message in queues, streams and unacknowledged
    /// deliveries, plus what connections have waiting to be written. O(number
    /// of queues and connections): the alarm monitor calls it ten times a
    /// second.
    pub fn memory_estimate(&self) -> u64 {
        let queues: u64 = self
            .queues
            .values()
            .map(|q| match &q.stream {
                Some(log) => log.bytes(),
                None => {
                    let r = &q.ready;
                    (r.bytes() - r.paged_bytes()) as u64
                        + (r.len() - r.paged_len()) as u64 * MESSAGE_OVERHEAD
                }
            })
            .sum();
        let outboxes: u64 = self.conns.values().map(|c| c.outbox_bytes as u64).sum();
        queues + self.unacked_bytes + outboxes
    }

    /// Credit flow for memory: the alarm monitor grants the headroom left
    /// under the watermark at each check; publishes spend it as they add
    /// messages, and the memory alarm goes off the moment it runs out,
    /// without waiting for the next check (so one fast publisher cannot
    /// overshoot the watermark by what it sends in a check interval).
    pub fn grant_memory_credit(&mut self, credit: Option<u64>) {
        self.memory_credit = credit;
    }

    fn spend_memory_credit(&mut self, body: u64, queues: u64) {
        let Some(c) = self.memory_credit else {
            return;
        };
        let need = body + queues * MESSAGE_OVERHEAD;
        if c < need {
            self.memory_credit = Some(0);
            self.set_alarm(Alarm::Memory, true);
        } else {
            self.memory_credit = Some(c - need);
        }
    }

    /// The resource alarms in force.
    pub fn alarms(&self) -> Vec<Alarm> {
        self.alarms.iter().copied().collect()
    }

    /// Whether connection `id` is a publisher blocked by an alarm: the
    /// shell reads nothing more from it until it is woken unblocked.
    pub fn is_blocked(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.blocked)
    }

    /// A publish while an alarm is in force blocks its connection (after
    /// this publish, as RabbitMQ's reader does), with `connection.blocked`
    /// to clients that announced the capability.
    fn block_if_alarmed(&mut self, id: ConnId) {
        if self.alarms.is_empty() {
            return;
        }
        let reason: Vec<&str> = self.alarms.iter().map(|a| a.reason()).collect();
        let reason = reason.join(" & ");
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.blocked || c.closing {
            return;
        }
        c.blocked = true;
        if c.caps.connection_blocked {
            c.outbox.push(Out::Method {
                channel: 0,
                method: boxed(ConnectionBlocked {
                    reason: ShortString::try_from(reason.as_str()).unwrap_or_default(),
                }),
            });
        }
    }

    /// Closes channel `ch` (0: the connection) with `code` and `text` as
    /// they are and no method named, releasing what it held.
    fn close_as_is(&mut self, id: ConnId, ch: u16, code: ReplyCode, text: String) {
        if ch == 0 {
            if let Some(c) = self.conns.get_mut(&id) {
                c.closing = true;
            }
        } else {
            self.release_channel(id, ch);
            if let Some(c) = self.chan(id, ch) {
                c.closing = true;
            }
        }
        self.push(
            id,
            Out::Close {
                channel: ch,
                code,
                text,
            },
        );
    }

    /// Streams refuse nack and reject (540, a connection error in 3.10).
    fn not_from_a_stream(&self, taken: &[(u64, Unacked)], ids: (u16, u16)) -> Res {
        match taken
            .iter()
            .filter_map(|(_, u)| self.queues.get(&u.queue))
            .find(|q| q.stream.is_some())
        {
            Some(q) => Err(refused(
                0,
                ReplyCode::NOT_IMPLEMENTED,
                format!(
                    "basic.nack and basic.reject not supported by stream queues {}",
                    q.rs()
                ),
                ids,
            )),
            None => Ok(()),
        }
    }

    /// Acknowledges, requeues or drops deliveries (in a transaction: at
    /// commit).
    fn settle(&mut self, id: ConnId, ch: u16, mut taken: Vec<(u64, Unacked)>, how: TxAck) {
        let mut touched = std::mem::take(&mut self.settle_buf.1);
        touched.clear();
        if let Some(c) = self.chan(id, ch) {
            // Consumers on this channel may take more now.
            touched.extend(c.consumers.values().map(|k| k.queue));
            if let Some(tx) = &mut c.tx {
                // Settled at commit.
                tx.acks.extend(taken.drain(..).map(|(t, u)| (t, u, how)));
                return;
            }
        }
        self.settle_now(taken.drain(..).map(|(_, u)| (u, how)), &mut touched);
        touched.sort_unstable();
        touched.dedup();
        for &q in &touched {
            self.dispatch(q);
        }
        // (A large one is let go rather than kept.)
        if taken.capacity() <= SETTLE_BUF_MAX && touched.capacity() <= SETTLE_BUF_MAX {
            self.settle_buf = (taken, touched);
        }
    }

    /// Requeues (in place) or drops (dead-letters as `rejected`) settled
    /// deliveries; acknowledged ones just go. Queues that got messages
    /// back are added to `touched`.
    fn settle_now(
        &mut self,
        settled: impl Iterator<Item = (Unacked, TxAck)>,
        touched: &mut Vec<QueueId>,
    ) {
        for (u, how) in settled {
            match how {
                TxAck::Requeue => self.requeue(u, touched),
                TxAck::Drop => self.dead_letter(u.queue, vec![u.entry], Reason::Rejected),
                TxAck::Ack => {
                    self.gone(u.queue, &u.entry);
                    self.count_ack(u.queue); // management
                }
            }
        }
    }

    /// A delivery comes back unacknowledged (nack or reject with requeue,
    /// recover, its channel closed): to its place in a classic queue, to
    /// the returns of a quorum queue, counted; past a quorum queue's
    /// `x-delivery-limit`, dead-lettered as `delivery_limit`. Back over a
    /// length limit, the head goes (RabbitMQ's `requeue_and_run`). The
    /// queue is added to `touched` for dispatch.
    fn requeue(&mut self, u: Unacked, touched: &mut Vec<QueueId>) {
        let Some(q) = self.queues.get_mut(&u.queue) else {
            return;
        };
        if q.stream.is_some() {
            // A stream keeps its messages: nothing goes back.
            return;
        }
        let mut e = u.entry;
        if q.args.kind == lifecycle::QueueKind::Quorum {
            e.returns = e.returns.saturating_add(1);
            if q.args
                .delivery_limit
                .is_some_and(|l| u64::from(e.returns) > l)
            {
                self.dead_letter(u.queue, vec![e], Reason::DeliveryLimit);
                return;
            }
        }
        q.ready.requeue(e);
        q.update_rejecting();
        touched.push(u.queue);
        self.drop_over_limit(u.queue);
    }

    fn recover(&mut self, id: ConnId, ch: u16, requeue: bool, ids: (u16, u16)) -> Res {
        if !requeue {
            return Err(refused(
                ch,
                ReplyCode::NOT_IMPLEMENTED,
                "requeue=false".into(),
                ids,
            ));
        }
        let taken = self.take_unacked(id, ch, 0, true, ids)?;
        let mut touched = Vec::new();
        for (_, u) in taken {
            self.requeue(u, &mut touched);
        }
        touched.sort_unstable();
        touched.dedup();
        for q in touched {
            self.dispatch(q);
        }
        Ok(())
    }

    /// Applies a transaction; returns whether a queue refused a publish
    /// (`x-overflow` reject-publish).
    fn commit(&mut self, id: ConnId, ch: u16, tx: Tx) -> bool {
        let mut refused = false;
        for TxPublish { queues, msg, ret } in tx.publishes {
            let msg = self.store_publish(&queues, msg);
            if let Some((exchange, routing_key)) = ret {
                self.push(
                    id,
                    Out::Content {
                        channel: ch,
                        method: boxed(BasicReturn {
                            reply_code: ReplyCode::NO_ROUTE.0,
                            reply_text: ShortString::from_static("NO_ROUTE"),
                            exchange,
                            routing_key,
                        }),
                        msg: msg.clone(),
                    },
                );
            }
            refused |= self.enqueue(&queues, &msg);
        }
        let mut touched = Vec::new();
        self.settle_now(
            tx.acks.into_iter().map(|(_, u, how)| (u, how)),
            &mut touched,
        );
        if let Some(c) = self.chan(id, ch) {
            touched.extend(c.consumers.values().map(|k| k.queue));
        }
        touched.sort_unstable();
        touched.dedup();
        for q in touched {
            self.dispatch(q);
        }
        refused
    }

    // ----- publishing ------------------------------------------------------

    fn publish(
        &mut self,
        id: ConnId,
        ch: u16,
        mut message: Box<Message>,
        seqno: Option<u64>,
    ) -> Res {
        self.stream_stored = false;
        self.block_if_alarmed(id);
        let ids = (60, 40);
        if let Some(seq) = seqno
            && let Some(c) = self.chan(id, ch)
        {
            c.unsettled.insert(seq);
        }
        // (Worked on where the codec put it: the message and its
        // properties are hundreds of bytes, each move a copy.)
        let Message {
            method,
            properties: props,
            body,
        } = &mut *message;
        let Method::BasicPublish(p) = &*method else {
            return Ok(());
        };
        let body = std::mem::take(body);
        let size = body.len() as u64;
        if size > self.limits.max_message_size {
            return Err(refused(
                ch,
                ReplyCode::PRECONDITION_FAILED,
                format!(
                    "message size {size} is larger than configured max size {}",
                    self.limits.max_message_size
                ),
                ids,
            ));
        }
        self.check(
            id,
            ch,
            Access::Write,
            "exchange",
            p.exchange.as_bytes(),
            ids,
        )?;
        if let Some(uid) = &props.user_id {
            let user = self
                .conns
                .get(&id)
                .and_then(|c| c.user.clone())
                .unwrap_or_default();
            if uid.as_bytes() != user.as_bytes() {
                return Err(refused(
                    ch,
                    ReplyCode::PRECONDITION_FAILED,
                    format!(
                        "user_id property set to '{}' but authenticated user was '{user}'",
                        uid.to_string_lossy()
                    ),
                    ids,
                ));
            }
        }
        if let Err(why) = lifecycle::expiration_ms(props) {
            return Err(refused(ch, ReplyCode::PRECONDITION_FAILED, why, ids));
        }
        if props
            .reply_to
            .as_ref()
            .is_some_and(|r| r.as_bytes() == REPLY_TO.as_bytes())
        {
            let Some((_, suffix)) = self.chan(id, ch).and_then(|c| c.reply_consumer.as_ref())
            else {
                return Err(refused(
                    ch,
                    ReplyCode::PRECONDITION_FAILED,
                    "fast reply consumer does not exist".into(),
                    ids,
                ));
            };
            props.reply_to = ShortString::try_from(format!("{REPLY_TO}.{suffix}").as_str()).ok();
        }
        if p.exchange.is_empty()
            && let Some(suffix) = p
                .routing_key
                .as_bytes()
                .strip_prefix(REPLY_TO.as_bytes())
                .and_then(|r| r.strip_prefix(b"."))
        {
            let target = std::str::from_utf8(suffix)
                .ok()
                .and_then(|s| self.reply_to.get(s).copied());
            let msg = Msg::new(p.exchange.as_bytes(), p.routing_key.as_bytes(), props, body);
            self.reply_direct(id, ch, target, p, msg, seqno);
            return Ok(());
        }
        self.check_topic(
            id,
            ch,
            Access::Write,
            p.exchange.as_bytes(),
            p.routing_key.as_bytes(),
            ids,
        )?;
        let vh = self.vhost_name(id);
        let v = self.vhosts.get(&*vh).ok_or_else(no_vhost)?;
        let routed = v.router.publish(
            &Publish::from_method(p, props.headers.as_ref()),
            &mut self.scratch,
        )?;
        let returned = routed.returned();
        self.counters.count_publish(routed.is_empty(), returned); // management
        let routed_any = !routed.is_empty(); // management
        // The queues reached, in a buffer kept between publishes.
        let mut queues = std::mem::take(&mut self.route_buf);
        queues.clear();
        queues.extend(routed.handles().copied());
        let bcc = bcc_keys(props);
        without_bcc(props);
        let (exchange, key) = (p.exchange.as_bytes(), p.routing_key.as_bytes());
        let mut msg = match self.chan(id, ch) {
            Some(c) => c.routes.msg(exchange, key, queue::encode(props), body),
            None => Msg::new(exchange, key, props, body),
        };
        msg.set_bcc(bcc);
        let ret = returned.then(|| (p.exchange.clone(), p.routing_key.clone()));
        self.count_exchange(&vh, &p.exchange, routed_any); // management
        let in_tx = self.chan(id, ch).is_some_and(|c| c.tx.is_some());
        if in_tx {
            let msg = msg;
            if let Some(tx) = self.chan(id, ch).and_then(|c| c.tx.as_mut()) {
                tx.publishes.push(TxPublish { queues, msg, ret });
            }
            return Ok(());
        }
        if let Some((exchange, routing_key)) = ret {
            self.push(
                id,
                Out::Content {
                    channel: ch,
                    method: boxed(BasicReturn {
                        reply_code: ReplyCode::NO_ROUTE.0,
                        reply_text: ShortString::from_static("NO_ROUTE"),
                        exchange,
                        routing_key,
                    }),
                    msg: msg.clone(),
                },
            );
        }
        self.spend_memory_credit(msg.size() as u64, queues.len() as u64);
        let msg = self.store_publish(&queues, msg);
        let refused = self.enqueue(&queues, &msg);
        self.route_buf = queues;
        if let Some(seq) = seqno {
            self.counters.confirm += u64::from(!refused); // management
            if msg.persist().is_some() || std::mem::take(&mut self.stream_stored) {
                // Confirmed once its record is on disk.
                self.waiting
                    .push_back((self.store_seq, id, ch, Settle::Confirm(seq, !refused)));
            } else if let Some(c) = self.chan(id, ch) {
                c.confirms.push((seq, !refused));
            }
        }
        Ok(())
    }

    /// A reply to `amq.rabbitmq.reply-to.<suffix>`: straight to the
    /// requester's reply consumer; unroutable (returned if mandatory) when
    /// it is gone.
    fn reply_direct(
        &mut self,
        id: ConnId,
        ch: u16,
        target: Option<(ConnId, u16)>,
        p: &BasicPublish,
        msg: Msg,
        seqno: Option<u64>,
    ) {
        let consumer = target.and_then(|(conn, tch)| {
            let c = self.conns.get_mut(&conn)?;
            if c.closing {
                return None;
            }
            let chan = c.channels.get_mut(&tch).filter(|c| !c.closing)?;
            let (tag, _) = chan.reply_consumer.as_ref()?;
            let tag = tag.clone();
            chan.next_tag += 1;
            Some((conn, tch, tag, chan.next_tag))
        });
        match consumer {
            Some((conn, tch, consumer_tag, delivery_tag)) => {
                let method = BasicDeliver {
                    consumer_tag,
                    delivery_tag,
                    redelivered: false,
                    exchange: p.exchange.clone(),
                    routing_key: p.routing_key.clone(),
                };
                self.push(
                    conn,
                    Out::Content {
                        channel: tch,
                        method: Box::new(method.into()),
                        msg,
                    },
                );
            }
            None if p.mandatory => self.push(
                id,
                Out::Content {
                    channel: ch,
                    method: boxed(BasicReturn {
                        reply_code: ReplyCode::NO_ROUTE.0,
                        reply_text: ShortString::from_static("NO_ROUTE"),
                        exchange: p.exchange.clone(),
                        routing_key: p.routing_key.clone(),
                    }),
                    msg,
                },
            ),
            None => {}
        }
        if let Some(seq) = seqno
            && let Some(c) = self.chan(id, ch)
        {
            c.confirms.push((seq, true));
        }
    }

    /// Puts a message in queues, as their limits allow; returns whether a
    /// queue refused it (`x-overflow` `reject-publish[-dlx]`: the publisher
    /// gets a nack).
    fn enqueue(&mut self, queues: &[QueueId], msg: &Msg) -> bool {
        let mut refused = false;
        // A queue behind its consumers that this message reached (one
        // message counts once, however many such queues it reached).
        let mut behind = None;
        let msg_ttl = msg.expiration_ms();
        for &q in queues {
            if self.queues.get(&q).is_some_and(|qs| qs.stream.is_some()) {
                self.append_to_stream(q, msg);
                continue;
            }
            self.expire(q);
            let Some(qs) = self.queues.get_mut(&q) else {
                continue;
            };
            let full = qs.full(msg.size());
            let a = &qs.args;
            if full && a.overflow != Overflow::DropHead {
                refused = true;
                let dlx = a.overflow == Overflow::RejectPublishDlx;
                let e = Entry {
                    seq: 0,
                    msg: msg.clone(),
                    redelivered: false,
                    level: 0,
                    expires: crate::queue::Expiry::NEVER,
                    returns: 0,
                };
                if dlx {
                    self.dead_letter(q, vec![e], Reason::Maxlen);
                } else {
                    self.gone(q, &e);
                }
                continue;
            }
            let ttl = match (a.message_ttl, msg_ttl) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let expires = ttl.and_then(|ms| Some(self.now? + std::time::Duration::from_millis(ms)));
            qs.ready.push(msg.clone(), expires);
            if qs.ready.len() > FLOW_BACKLOG
                && !qs.consumers.is_empty()
                && let (Some(at), Some(now)) = (qs.delivered_at, self.now)
                && now.saturating_duration_since(at) < FLOW_ACTIVE
            {
                behind = Some(q);
            }
            qs.update_rejecting();
            qs.stats.publish += 1; // management
            // A consumer that can take it now gets it (a TTL-0 message
            // too, and one over a limit of 0); then drop-head.
            self.deliver_ready(q);
            self.drop_over_limit(q);
            self.expire(q);
            self.arm(q);
        }
        if let Some(q) = behind {
            self.behind = (self.behind.0 + 1, q);
        }
        refused
    }

    /// Appends `msg` to stream `q`: stored as a record of its own that
    /// carries its offset and time (recovery puts it back where it was),
    /// old segments deleted by retention, consumers served.
    fn append_to_stream(&mut self, q: QueueId, msg: &Msg) {
        let at_ms = self.wall_ms();
        let Some(qs) = self.queues.get(&q) else {
            return;
        };
        let Some(log) = &qs.stream else {
            return;
        };
        let offset = log.next_offset();
        let key = qs.key();
        let id = (self.persistence && qs.durable).then(|| {
            let id = self.next_persist;
            self.next_persist += 1;
            let p = lifecycle::with_header(&msg.properties(), "x-stream-offset", offset as i64);
            let p = lifecycle::with_header(&p, STREAM_AT_HEADER, at_ms as i64);
            let mut properties = Vec::new();
            let _ = amqp_wire::encode_properties(&p, &mut properties);
            self.record(Record::Message {
                id,
                queues: vec![key.clone()],
                msg: msg.clone(),
                properties: Some(properties.into()),
            });
            self.stream_stored = true;
            id
        });
        let Some(qs) = self.queues.get_mut(&q) else {
            return;
        };
        let (max_bytes, max_age, segment) = (
            qs.args.max_length_bytes,
            qs.args.max_age_ms,
            qs.args.segment_size,
        );
        qs.stats.publish += 1; // management
        let Some(log) = qs.stream.as_mut() else {
            return;
        };
        log.append_at(offset, msg.clone(), at_ms, segment, id);
        let gone = log.retain(max_bytes, max_age, at_ms);
        for e in gone {
            if let Some(id) = e.id {
                self.record(Record::Remove {
                    id,
                    queue: key.clone(),
                });
            }
        }
        self.deliver_stream(q);
    }

    /// drop-head: the oldest ready messages of queue `q` go (dead-lettered
    /// as `maxlen`) while it is over its length limits.
    fn drop_over_limit(&mut self, q: QueueId) {
        let Some(qs) = self.queues.get_mut(&q) else {
            return;
        };
        if qs.args.overflow != Overflow::DropHead {
            return;
        }
        let mut dropped = Vec::new();
        while qs
            .args
            .max_length
            .is_some_and(|m| qs.ready.len() as u64 > m)
            || qs
                .args
                .max_length_bytes
                .is_some_and(|m| qs.ready.bytes() as u64 > m)
        {
            match qs.ready.pop() {
                Some(e) => dropped.push(e),
                None => break,
            }
        }
        if !dropped.is_empty() {
            self.dead_letter(q, dropped, Reason::Maxlen);
        }
    }

    /// Sends the confirms settled in this batch, a run of acks as one
    /// `multiple` ack.
    fn flush_confirms(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut outs = Vec::new();
        for (&ch, chan) in c.channels.iter_mut() {
            if chan.confirms.is_empty() || chan.closing {
                chan.confirms.clear();
                continue;
            }
            let mut cs = std::mem::take(&mut chan.confirms);
            cs.sort_unstable();
            for &(seq, _) in &cs {
                chan.unsettled.remove(seq);
            }
            // A run of consecutive numbers with the same outcome is one
            // `multiple` confirm, when nothing below it is still unsettled
            // (a persistent message waiting for the disk).
            let mut i = 0;
            while i < cs.len() {
                let ack = cs[i].1;
                let mut j = i;
                while j + 1 < cs.len() && cs[j + 1].1 == ack && cs[j + 1].0 == cs[j].0 + 1 {
                    j += 1;
                }
                let below_settled = chan.unsettled.first().is_none_or(|u| u > cs[j].0);
                if j > i && below_settled {
                    outs.push((ch, cs[j].0, true, ack));
                } else {
                    for &(seq, ack) in &cs[i..=j] {
                        outs.push((ch, seq, false, ack));
                    }
                }
                i = j + 1;
            }
        }
        for (ch, tag, multiple, ack) in outs {
            let method: Method = if ack {
                BasicAck {
                    delivery_tag: tag,
                    multiple,
                }
                .into()
            } else {
                BasicNack {
                    delivery_tag: tag,
                    multiple,
                    requeue: false,
                }
                .into()
            };
            self.push(
                id,
                Out::Method {
                    channel: ch,
                    method: Box::new(method),
                },
            );
        }
    }

    // ----- dispatch --------------------------------------------------------

    /// Delivers queue `q`'s ready messages to its consumers while any can
    /// take one: to the highest-priority consumers that can, round robin
    /// among equals.
    fn dispatch(&mut self, q: QueueId) {
        if self.queues.get(&q).is_some_and(|qs| qs.stream.is_some()) {
            self.deliver_stream(q);
            return;
        }
        self.expire(q);
        self.deliver_ready(q);
        self.arm(q);
    }

    /// A stream's consumers each read on from their offset, as far as
    /// their prefetch lets them (the messages stay).
    fn deliver_stream(&mut self, q: QueueId) {
        let Some(qs) = self.queues.get(&q) else {
            return;
        };
        let consumers = qs.consumers.clone();
        for c in consumers {
            while self.can_deliver(c.conn, c.ch, c.key) {
                let Some(cursor) = self
                    .chan(c.conn, c.ch)
                    .and_then(|ch| ch.consumers.get(c.key))
                    .and_then(|k| k.cursor)
                else {
                    break;
                };
                let Some(log) = self.queues.get(&q).and_then(|qs| qs.stream.as_ref()) else {
                    return;
                };
                let offset = log.at_or_after(cursor);
                let Some(e) = log.get(offset) else {
                    break;
                };
                let entry = Entry {
                    seq: e.offset,
                    msg: e.msg.clone(),
                    redelivered: false,
                    level: 0,
                    expires: crate::queue::Expiry::NEVER,
                    returns: 0,
                };
                if let Some(k) = self
                    .chan(c.conn, c.ch)
                    .and_then(|ch| ch.consumers.get_mut(c.key))
                {
                    k.cursor = Some(offset + 1);
                }
                self.deliver(c.conn, c.ch, (c.tag.clone(), c.key), q, entry);
            }
        }
    }

    /// The delivery loop of [`dispatch`](Self::dispatch), without expiry.
    fn deliver_ready(&mut self, q: QueueId) {
        loop {
            let Some(qs) = self.queues.get(&q) else {
                return;
            };
            if qs.ready.is_empty() || qs.consumers.is_empty() {
                return;
            }
            let n = qs.consumers.len();
            if qs.args.single_active {
                // Only the oldest consumer receives; the others wait.
                let Some(c) = qs.consumers.iter().min_by_key(|k| k.since).cloned() else {
                    return;
                };
                if !self.can_deliver(c.conn, c.ch, c.key) {
                    return;
                }
                let Some(entry) = self.queues.get_mut(&q).and_then(|qs| qs.ready.pop()) else {
                    return;
                };
                self.deliver(c.conn, c.ch, (c.tag, c.key), q, entry);
                continue;
            }
            // One priority (the usual case): a rotating start, O(1) when
            // the next consumer can take the message.
            let single = qs.consumers[0].priority == qs.consumers[n - 1].priority;
            let start = if single { qs.rr % n } else { 0 };
            let mut chosen = None;
            for k in 0..n {
                let i = (start + k) % n;
                let Some(c) = self.queues.get(&q).map(|qs| qs.consumers[i].clone()) else {
                    return;
                };
                if self.can_deliver(c.conn, c.ch, c.key) {
                    chosen = Some(i);
                    break;
                }
            }
            let Some(i) = chosen else {
                return;
            };
            let Some(qs) = self.queues.get_mut(&q) else {
                return;
            };
            let c = qs.consumers[i].clone();
            if single {
                qs.rr = (i + 1) % n;
            } else {
                // To the end of its priority group.
                let end = qs.consumers[i..]
                    .iter()
                    .position(|k| k.priority != c.priority)
                    .map_or(n, |p| i + p);
                qs.consumers[i..end].rotate_left(1);
            }
            let Some(entry) = qs.ready.pop() else {
                return;
            };
            self.deliver(c.conn, c.ch, (c.tag, c.key), q, entry);
        }
    }

    fn can_deliver(&mut self, conn: ConnId, ch: u16, key: ConsumerKey) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.closing {
            return false;
        }
        if c.outbox_bytes >= OUTBOX_LIMIT {
            c.throttled = true;
            return false;
        }
        let Some(chan) = c.channels.get(&ch) else {
            return false;
        };
        if chan.closing {
            return false;
        }
        let Some(k) = chan.consumers.get(key) else {
            return false;
        };
        if k.no_ack {
            return true;
        }
        (k.prefetch == 0 || k.unacked < u32::from(k.prefetch))
            && (chan.global_prefetch == 0
                || chan.consumer_unacked < u32::from(chan.global_prefetch))
    }

    fn deliver(
        &mut self,
        conn: ConnId,
        ch: u16,
        (tag, key): (ShortString, ConsumerKey),
        q: QueueId,
        entry: Entry,
    ) {
        let now = self.now;
        let mut kind = lifecycle::QueueKind::default();
        if let Some(qs) = self.queues.get_mut(&q) {
            kind = qs.args.kind;
            qs.delivered_at = now;
            qs.delivered += 1;
            if qs.delivered >= qs.holding_until {
                // Its consumers took as many as these publishers put in:
                // they go on.
                let d = qs.delivered;
                let mut go = Vec::new();
                qs.holding.retain(|&(id, until, n)| {
                    let done = until <= d;
                    if done {
                        go.push((id, n));
                    }
                    !done
                });
                qs.holding_until = qs.holding.iter().map(|h| h.1).min().unwrap_or(u64::MAX);
                for (id, n) in go {
                    // (A hold that ended at its deadline leaves its entry
                    // here; it must not end a later hold early.)
                    self.release(id, n);
                }
            }
        }
        // (One lookup of the consumer: it counts the delivery now.)
        let no_ack = match self.chan(conn, ch).and_then(|c| c.consumers.get_mut(key)) {
            Some(k) if !k.no_ack => {
                k.unacked += 1;
                false
            }
            _ => true,
        };
        if no_ack {
            self.gone(q, &entry);
        } else {
            self.delivered_once(q, &entry);
        }
        let Some(chan) = self.chan(conn, ch) else {
            return;
        };
        chan.next_tag += 1;
        let dtag = chan.next_tag;
        let msg = match kind {
            lifecycle::QueueKind::Quorum if entry.returns > 0 => delivery_counted(&entry),
            lifecycle::QueueKind::Stream => entry.msg.with_properties(&lifecycle::with_header(
                &entry.msg.properties(),
                "x-stream-offset",
                entry.seq as i64,
            )),
            _ => entry.msg.clone(),
        };
        let redelivered = entry.redelivered; // management
        let size = held(&entry);
        if !no_ack {
            chan.consumer_unacked += 1;
            chan.unacked.insert(
                dtag,
                Unacked {
                    queue: q,
                    entry,
                    consumer: Some(key),
                    at: now,
                },
            );
        }
        if !no_ack {
            self.unacked_bytes += size;
            self.tick_armed();
        }
        self.count_deliver(q, no_ack, redelivered); // management
        self.push(
            conn,
            Out::Deliver {
                channel: ch,
                delivery_tag: dtag,
                redelivered,
                consumer_tag: tag,
                msg,
            },
        );
    }

    // ----- closing ---------------------------------------------------------

    /// Cancels a channel's consumers and requeues its unacknowledged
    /// messages (RabbitMQ does both however the channel ends).
    fn release_channel(&mut self, id: ConnId, ch: u16) {
        let Some(c) = self.chan(id, ch) else {
            return;
        };
        let mut tags: Vec<ShortString> = c.consumers.tags().cloned().collect();
        tags.extend(c.reply_consumer.as_ref().map(|(t, _)| t.clone()));
        let mut unacked = Vec::new();
        c.unacked.take_all(&mut unacked);
        c.consumer_unacked = 0;
        c.tx = None;
        c.confirms.clear();
        let bytes: u64 = unacked.iter().map(|(_, u)| held(&u.entry)).sum();
        self.unacked_bytes = self.unacked_bytes.saturating_sub(bytes);
        let mut touched = Vec::new();
        for (_, u) in unacked {
            self.requeue(u, &mut touched);
        }
        for t in tags {
            self.cancel(id, ch, &t);
        }
        touched.sort_unstable();
        touched.dedup();
        for q in touched {
            self.dispatch(q);
        }
    }

    fn close_channel(&mut self, id: ConnId, ch: u16) {
        self.release_channel(id, ch);
        if let Some(c) = self.conns.get_mut(&id) {
            c.channels.remove(&ch);
        }
    }

    /// The connection is gone: its channels are released and its exclusive
    /// queues deleted.
    pub fn disconnect(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.closing = true;
        let chans: Vec<u16> = c.channels.keys().copied().collect();
        let vh = c.vhost.clone();
        if let Some(v) = &vh {
            // As RabbitMQ's "closing AMQP connection ... (vhost, user)".
            tracing::info!(
                conn = id,
                user = c.user.as_deref().unwrap_or(""),
                vhost = &**v,
                channels = chans.len(),
                "connection left the vhost"
            );
        }
        for ch in chans {
            self.close_channel(id, ch);
        }
        if let Some(v) = vh.and_then(|v| self.vhosts.get_mut(&*v)) {
            let removed = v.router.delete_exclusive_queues(OwnerId(id));
            self.removed(removed);
        }
        if let Some(user) = self.conns.remove(&id).and_then(|c| c.user) {
            self.user_channel_caps(&user);
        }
    }
}

/// An argument that must be an integer (of one of AMQP's integer types,
/// as RabbitMQ requires); the error is RabbitMQ's explanation.
fn integer_arg(value: &FieldValue) -> Result<i128, String> {
    let integer = matches!(
        value,
        FieldValue::I8(_)
            | FieldValue::U8(_)
            | FieldValue::I16(_)
            | FieldValue::U16(_)
            | FieldValue::I32(_)
            | FieldValue::U32(_)
            | FieldValue::I64(_)
    );
    value.as_integer().filter(|_| integer).ok_or_else(|| {
        format!(
            "\"expected integer, got {}\"",
            amqp_router::erlang_type_name(value)
        )
    })
}

/// Checks the queue arguments RabbitMQ 3.10 validates, in its order; the
/// error is RabbitMQ's text for queue `queue` in `vhost`.
fn check_queue_args(args: &FieldTable, queue: &str, vhost: &str) -> Result<(), String> {
    let invalid = |k: &str, why: String| {
        format!("invalid arg '{k}' for queue '{queue}' in vhost '{vhost}': {why}")
    };
    let unacceptable =
        |v: &FieldValue| format!("{{unacceptable_type,{}}}", amqp_router::erlang_type_name(v));
    // Integer arguments: (name, least allowed, most allowed, how "too
    // large" is said).
    let integer = |k: &str, v: &FieldValue, min: i128, max: Option<i128>| -> Result<(), String> {
        let n = integer_arg(v).map_err(|why| invalid(k, why))?;
        if n < 0 {
            return Err(invalid(k, format!("{{value_negative,{n}}}")));
        }
        if n < min {
            return Err(invalid(k, format!("{{value_zero,{n}}}")));
        }
        match max {
            Some(m) if n > m && k == "x-max-priority" => {
                Err(invalid(k, format!("{{max_value_exceeded,{n}}}")))
            }
            Some(m) if n > m => Err(invalid(k, format!("{{value_too_large,{n}}}"))),
            _ => Ok(()),
        }
    };
    let ttl = i128::from(lifecycle::MAX_TTL);
    for key in [
        "x-expires",
        "x-message-ttl",
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-max-length",
        "x-max-length-bytes",
        "x-max-priority",
        "x-overflow",
        "x-queue-type",
        "x-single-active-consumer",
        "x-max-in-memory-length",
        "x-max-in-memory-bytes",
        "x-max-age",
        "x-stream-max-segment-size-bytes",
        "x-initial-cluster-size",
        "x-queue-leader-locator",
    ] {
        let Some(v) = args.get(key) else { continue };
        match key {
            "x-expires" => integer(key, v, 1, Some(ttl))?,
            "x-message-ttl" => integer(key, v, 0, Some(ttl))?,
            "x-max-length"
            | "x-max-length-bytes"
            | "x-max-in-memory-length"
            | "x-max-in-memory-bytes"
            | "x-stream-max-segment-size-bytes"
            | "x-initial-cluster-size" => integer(key, v, 0, None)?,
            "x-max-age" => match v {
                FieldValue::LongString(s) if lifecycle::max_age_ms(s.as_bytes()).is_some() => {}
                FieldValue::LongString(_) => return Err(invalid(key, "invalid_max_age".into())),
                other => return Err(invalid(key, unacceptable(other))),
            },
            "x-queue-leader-locator" => match v {
                FieldValue::LongString(s)
                    if matches!(
                        s.as_bytes(),
                        b"client-local" | b"balanced" | b"random" | b"least-leaders"
                    ) => {}
                _ => return Err(invalid(key, "invalid_queue_locator_arg".into())),
            },
            "x-max-priority" => integer(key, v, 0, Some(255))?,
            "x-dead-letter-exchange" if !matches!(v, FieldValue::LongString(_)) => {
                return Err(format!(
                    "invalid type '{}' for arg '{key}' in queue '{queue}' in vhost '{vhost}'",
                    amqp_router::erlang_type_name(v)
                ));
            }
            "x-dead-letter-routing-key" => {
                if !matches!(v, FieldValue::LongString(_)) {
                    return Err(invalid(key, unacceptable(v)));
                }
                if !args.contains_key("x-dead-letter-exchange") {
                    return Err(invalid(key, "routing_key_but_no_dlx_defined".into()));
                }
            }
            "x-overflow" => match v {
                FieldValue::LongString(s)
                    if matches!(
                        s.as_bytes(),
                        b"drop-head" | b"reject-publish" | b"reject-publish-dlx"
                    ) => {}
                FieldValue::LongString(_) => return Err(invalid(key, "invalid_overflow".into())),
                other => return Err(invalid(key, unacceptable(other))),
            },
            "x-queue-type" => match v {
                FieldValue::LongString(s)
                    if matches!(s.as_bytes(), b"classic" | b"quorum" | b"stream") => {}
                FieldValue::LongString(s) => {
                    return Err(invalid(
                        key,
                        format!("\"unsupported queue type '{}'\"", s.to_string_lossy()),
                    ));
                }
                other => return Err(invalid(key, unacceptable(other))),
            },
            "x-single-active-consumer" if !matches!(v, FieldValue::Bool(_)) => {
                return Err(invalid(key, unacceptable(v)));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A quorum queue's delivery of `e`: its message with `x-delivery-count`.
fn delivery_counted(e: &Entry) -> Msg {
    e.msg.with_properties(&lifecycle::with_delivery_count(
        &e.msg.properties(),
        e.returns,
    ))
}

/// The Direct Reply-to pseudo-queue.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

fn no_vhost() -> ProtocolError {
    ProtocolError::refused(0, ReplyCode::INTERNAL_ERROR, "virtual host is gone")
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The long strings of a `BCC` header array.
fn bcc_keys(p: &BasicProperties) -> Vec<ShortString> {
    match p.headers.as_ref().and_then(|h| h.get("BCC")) {
        Some(FieldValue::Array(a)) => a
            .iter()
            .filter_map(|v| match v {
                FieldValue::LongString(s) => ShortString::from_bytes(s.as_bytes()).ok(),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The properties a message is stored with: a `BCC` header is removed
/// (sender-selected distribution keeps it from the receivers).
fn without_bcc(p: &mut BasicProperties) {
    if let Some(h) = &mut p.headers
        && h.contains_key("BCC")
    {
        let mut t = FieldTable::new();
        for (k, v) in h.iter() {
            if k.as_bytes() != b"BCC" {
                t.push(k.clone(), v.clone());
            }
        }
        *h = t;
    }
}

/// RabbitMQ's `server-properties`, with our product name.
pub fn server_properties(product: &str) -> FieldTable {
    let mut caps = FieldTable::new();
    for c in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(c, FieldValue::Bool(true));
    }
    let mut t = FieldTable::new();
    t.insert("capabilities", FieldValue::Table(caps));
    let ls = |s: &str| FieldValue::LongString(LongString::copy_from(s.as_bytes()));
    t.insert("cluster_name", ls("amqp-broker@localhost"));
    t.insert("copyright", ls("Copyright (c) The amqp-toolkit developers"));
    t.insert(
        "information",
        ls("Licensed under MIT OR Apache-2.0. Website: https://github.com/amqp-rs/amqp-toolkit"),
    );
    t.insert("platform", ls("Rust"));
    t.insert("product", ls(product));
    t.insert("version", ls(env!("CARGO_PKG_VERSION")));
    t
}

#[cfg(test)]
mod tests {
    use super::{
        Core, CoreConfig, Out, Record, SPARE_OUTBOX_MAX, SPARE_OUTBOXES, SPARE_STORE_OPS_MAX,
        Unsettled,
    };

    /// Emptied outboxes are kept for reuse, but only so many and none too
    /// large; an empty one (no room) is not worth keeping.
    #[test]
    fn spare_outboxes_are_bounded() {
        let mut core = Core::new(CoreConfig::default());
        for _ in 0..SPARE_OUTBOXES + 5 {
            core.recycle_outbox(Vec::<Out>::with_capacity(10));
        }
        core.recycle_outbox(Vec::with_capacity(SPARE_OUTBOX_MAX + 1));
        core.recycle_outbox(Vec::new());
        assert_eq!(core.spare_outboxes.len(), SPARE_OUTBOXES);
        assert!(
            core.spare_outboxes
                .iter()
                .all(|v| v.is_empty() && v.capacity() == 10)
        );
    }

    /// The store's emptied record vector takes the next batch when it has
    /// room enough; one too large is not kept.
    #[test]
    fn the_store_record_vector_is_reused() {
        let mut core = Core::new(CoreConfig::default());
        core.recycle_store_ops(Vec::with_capacity(SPARE_STORE_OPS_MAX + 1));
        assert_eq!(core.spare_store_ops.capacity(), 0, "too large to keep");
        let kept = Vec::with_capacity(100);
        let ptr = kept.as_ptr();
        core.recycle_store_ops(kept);
        core.recycle_store_ops(Vec::with_capacity(10));
        assert_eq!(core.spare_store_ops.as_ptr(), ptr, "the larger one stays");
        // A batch of 5 records: the next one takes the spare vector.
        for id in 1..=5 {
            core.store_ops.push(Record::Remove {
                id,
                queue: crate::store::queue_key("/", "q".try_into().unwrap()),
            });
            core.store_seq += 1;
        }
        let (records, numbers) = core.take_store_ops().unwrap();
        assert_eq!((records.len(), numbers), (5, 1..=5));
        assert_eq!(core.store_ops.as_ptr(), ptr);
        assert_eq!(core.spare_store_ops.capacity(), 0);
    }

    use std::collections::BTreeSet;

    /// The flag window answers as a set of the unsettled numbers does,
    /// over settlements in and out of order (a little xorshift generator
    /// picks them, from fixed seeds).
    #[test]
    fn unsettled_numbers_behave_as_a_set() {
        for seed in 1..=50u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let (mut window, mut model) = (Unsettled::default(), BTreeSet::new());
            let mut seq = 1 + next() % 1000;
            for _ in 0..2000 {
                if next() % 3 > 0 {
                    window.insert(seq);
                    model.insert(seq);
                    seq += 1;
                } else if let Some(&first) = model.first() {
                    // Mostly the oldest, sometimes a later one.
                    let pick = first + next() % 4 * (next() % 8);
                    window.remove(pick);
                    model.remove(&pick);
                }
                assert_eq!(window.first(), model.first().copied(), "seed {seed}");
                assert!(window.flags.len() as u64 <= seq.saturating_sub(window.base));
            }
            for s in model.clone() {
                window.remove(s);
                model.remove(&s);
            }
            assert_eq!(window.first(), None);
            assert!(window.flags.is_empty(), "seed {seed}");
        }
    }
}
