//! A pure AMQP 0-9-1 routing engine that agrees with RabbitMQ case for case.
//!
//! `amqp-router` holds the *declarations* of one virtual host (exchanges,
//! queues, bindings, alternate exchanges) and answers the question every
//! broker, proxy, test double or debugging tool asks: *which queues does
//! this message reach?* It never holds messages, owns no socket, thread or
//! clock, and hands back the embedder's own queue handles (the `Q` in
//! [`Router<Q>`]).
//!
//! * Exchanges: direct, fanout, topic (a trie, cost proportional to the
//!   key), headers (`x-match` all/any/all-with-x/any-with-x with RabbitMQ's
//!   value comparison), the default exchange, the predeclared `amq.*`
//!   exchanges, exchange-to-exchange bindings, alternate exchanges, and
//!   [custom types](ExchangeType).
//! * Every declare/delete/bind/unbind rule with RabbitMQ's reply code, scope
//!   and text, as a [`ProtocolError`]; every mutation reports what it
//!   removed in cascade ([`Removed`]).
//! * [`Router::route`] takes `&self` and a caller-owned [`RouteScratch`]:
//!   many threads route concurrently and a warm call allocates nothing.
//!   [`Router::route_observed`] reports the walk (bindings matched,
//!   alternate exchanges taken) through a [`RouteObserver`].
//! * With the `serde` feature, [`definitions`] loads and saves the topology
//!   part of RabbitMQ's definitions export.
//!
//! ```
//! use amqp_router::{Bind, ExchangeDeclare, OwnerId, QueueDeclare, RouteScratch, Router};
//! use amqp_router::types::{FieldTable, ReplyCode};
//!
//! let mut router: Router<u32> = Router::new("/");
//! let none = FieldTable::new();
//! router.declare_exchange(&ExchangeDeclare::new(b"logs", b"topic"))?;
//! let owner = OwnerId(1);
//! router.declare_queue(&QueueDeclare::new(b"errors", owner), |_name| 7)?;
//! router.bind_queue(&Bind::new(b"logs", b"errors", b"*.error", &none, owner))?;
//!
//! let mut scratch = RouteScratch::new();
//! let routed = router.route(b"logs", b"db.error", None, &mut scratch)?;
//! assert_eq!(routed.handles().copied().collect::<Vec<_>>(), [7]);
//!
//! let err = router.route(b"nope", b"", None, &mut scratch).unwrap_err();
//! assert_eq!(err.code(), ReplyCode::NOT_FOUND);
//! assert_eq!(err.reply_text(), "NOT_FOUND - no exchange 'nope' in vhost '/'");
//! # Ok::<(), amqp_router::types::ProtocolError>(())
//! ```
//!
//! # Features
//!
//! * `serde`: [`definitions`], RabbitMQ's definitions export (topology).
//!
// The link resolves only where the module exists (docs.rs builds with every
// feature); without the feature it points at this section.
#![cfg_attr(feature = "serde", doc = "[`definitions`]: crate::definitions")]
#![cfg_attr(not(feature = "serde"), doc = "[`definitions`]: #features")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod erl;
mod exchange_type;
mod headers;
mod route;
mod topic;

#[cfg(feature = "serde")]
pub mod definitions;

/// The vocabulary this crate builds on.
pub use amqp_types as types;

pub use exchange_type::{BindingId, BindingIndex, ExchangeType, Message};
pub use headers::{XMatch, nested_eq, value_eq};
pub use route::{AlternateOutcome, NoObserver, Publish, RouteObserver, RouteScratch, Routed};

/// The Erlang type atom RabbitMQ names a field value's type by in its
/// reply texts (`long`, `longstr`, `bool`, ...), for embedders that write
/// RabbitMQ's texts about arguments of their own.
///
/// ```
/// use amqp_router::types::FieldValue;
/// assert_eq!(amqp_router::erlang_type_name(&FieldValue::I64(5)), "long");
/// ```
pub fn erlang_type_name(v: &FieldValue) -> &'static str {
    erl::type_name(v)
}

use amqp_types::{ErrorKind, FieldTable, FieldValue, ProtocolError, ReplyCode, ShortString};
use hashbrown::{HashMap, HashTable};
use std::borrow::Cow;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

type Map<V> = HashMap<ShortString, V, foldhash::fast::RandomState>;

/// An opaque id for whoever owns exclusive queues (in a broker: the
/// connection). The router only compares owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct OwnerId(pub u64);

/// Where a binding leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestinationKind {
    /// A queue (`queue.bind`).
    Queue,
    /// Another exchange (`exchange.bind`).
    Exchange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dest {
    Queue(u32),
    Exchange(u32),
}

/// The built-in exchange types.
#[derive(Clone)]
pub(crate) enum Kind {
    Direct,
    Fanout,
    Topic,
    Headers,
    Custom(Arc<dyn ExchangeType>),
}

impl Kind {
    fn name(&self) -> &str {
        match self {
            Kind::Direct => "direct",
            Kind::Fanout => "fanout",
            Kind::Topic => "topic",
            Kind::Headers => "headers",
            Kind::Custom(t) => t.name(),
        }
    }
}

pub(crate) enum Index {
    /// Direct: routing key to bindings.
    Direct(Map<Vec<u32>>),
    /// Fanout and headers: the exchange's outgoing list is the index.
    List,
    Topic(topic::Trie),
    Custom(Box<dyn BindingIndex>),
}

/// An exchange: its declaration and (privately) its bindings.
pub struct Exchange {
    name: ShortString,
    kind: Kind,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: FieldTable,
    policy_alternate: Option<ShortString>,
    out: Vec<u32>,
    inbound: Vec<u32>,
    index: Index,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("name", &self.name)
            .field("type", &self.kind.name())
            .field("durable", &self.durable)
            .field("auto_delete", &self.auto_delete)
            .field("internal", &self.internal)
            .field("arguments", &self.arguments)
            .field("bindings", &self.out.len())
            .finish()
    }
}

impl Exchange {
    /// The exchange's name.
    pub fn name(&self) -> &ShortString {
        &self.name
    }
    /// The type name (`"topic"`, or a custom type's name).
    pub fn type_name(&self) -> &str {
        self.kind.name()
    }
    /// Whether it was declared durable.
    pub fn durable(&self) -> bool {
        self.durable
    }
    /// Whether it is deleted when its last binding as source goes.
    pub fn auto_delete(&self) -> bool {
        self.auto_delete
    }
    /// Whether publishing to it directly is refused.
    pub fn internal(&self) -> bool {
        self.internal
    }
    /// The declare arguments, as given when it was created.
    pub fn arguments(&self) -> &FieldTable {
        &self.arguments
    }
    /// The alternate exchange set by policy (the `alternate-exchange`
    /// argument, if any, wins over it).
    pub fn policy_alternate_exchange(&self) -> Option<&ShortString> {
        self.policy_alternate.as_ref()
    }
    /// The alternate exchange's name in force: the `alternate-exchange`
    /// argument (a long string or byte array), else the policy's. `Some`
    /// with no usable name (an argument of another type) is reported as
    /// `Err(())`: it names nothing, so unroutable messages are dropped.
    pub fn alternate_exchange(&self) -> Option<Result<&[u8], ()>> {
        match self.arguments.get("alternate-exchange") {
            Some(FieldValue::LongString(s) | FieldValue::ByteArray(s)) => Some(Ok(s.as_bytes())),
            Some(_) => Some(Err(())),
            None => self.policy_alternate.as_ref().map(|s| Ok(s.as_bytes())),
        }
    }
    /// How many bindings have this exchange as their source.
    pub fn binding_count(&self) -> usize {
        self.out.len()
    }
}

/// A queue's declaration and the embedder's handle for it.
#[derive(Debug)]
pub struct Queue<Q> {
    name: ShortString,
    durable: bool,
    auto_delete: bool,
    exclusive_owner: Option<OwnerId>,
    arguments: FieldTable,
    handle: Q,
    inbound: Vec<u32>,
}

impl<Q> Queue<Q> {
    /// The queue's name.
    pub fn name(&self) -> &ShortString {
        &self.name
    }
    /// Whether it was declared durable.
    pub fn durable(&self) -> bool {
        self.durable
    }
    /// Whether it was declared auto-delete (the embedder deletes it when
    /// its last consumer goes; the router knows no consumers).
    pub fn auto_delete(&self) -> bool {
        self.auto_delete
    }
    /// The owner of an exclusive queue.
    pub fn exclusive_owner(&self) -> Option<OwnerId> {
        self.exclusive_owner
    }
    /// The declare arguments.
    pub fn arguments(&self) -> &FieldTable {
        &self.arguments
    }
    /// The embedder's handle.
    pub fn handle(&self) -> &Q {
        &self.handle
    }
    /// The embedder's handle, mutably.
    pub fn handle_mut(&mut self) -> &mut Q {
        &mut self.handle
    }
    /// How many bindings lead to this queue.
    pub fn binding_count(&self) -> usize {
        self.inbound.len()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct BindingRec {
    source: u32,
    dest: Dest,
    key: ShortString,
    /// Sorted stably by key, as RabbitMQ stores binding arguments; boxed
    /// (most bindings have none), so that a record stays small.
    args: Option<Box<FieldTable>>,
    xmatch: XMatch,
    src_pos: u32,
    dst_pos: u32,
}

/// The arguments of a binding that has none.
static NO_ARGS: FieldTable = FieldTable::new();

impl BindingRec {
    /// The binding's arguments.
    pub(crate) fn args(&self) -> &FieldTable {
        self.args.as_deref().unwrap_or(&NO_ARGS)
    }
}

/// A binding, by name: what mutations report and what the router lists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BindingInfo {
    /// The source exchange.
    pub source: ShortString,
    /// The destination queue or exchange.
    pub destination: ShortString,
    /// Whether the destination is a queue or an exchange.
    pub destination_kind: DestinationKind,
    /// The binding key.
    pub routing_key: ShortString,
    /// The arguments, sorted by key (their order does not matter).
    pub arguments: FieldTable,
}

/// An exchange's declaration, by value: what deletions report.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeInfo {
    /// The name.
    pub name: ShortString,
    /// The type name.
    pub type_name: String,
    /// Durable flag.
    pub durable: bool,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Internal flag.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
}

/// A queue removed by a mutation, with the embedder's handle given back.
#[derive(Debug)]
pub struct RemovedQueue<Q> {
    /// The queue's name.
    pub name: ShortString,
    /// The embedder's handle.
    pub handle: Q,
}

/// Everything a mutation removed, in the order it went: the bindings, the
/// exchanges (the one deleted and auto-delete exchanges that lost their last
/// binding as source, cascading) and queues.
#[derive(Debug)]
pub struct Removed<Q> {
    /// Bindings removed.
    pub bindings: Vec<BindingInfo>,
    /// Exchanges removed.
    pub exchanges: Vec<ExchangeInfo>,
    /// Queues removed.
    pub queues: Vec<RemovedQueue<Q>>,
}

impl<Q> Default for Removed<Q> {
    fn default() -> Self {
        Removed {
            bindings: Vec::new(),
            exchanges: Vec::new(),
            queues: Vec::new(),
        }
    }
}

impl<Q> Removed<Q> {
    /// Whether nothing was removed.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty() && self.exchanges.is_empty() && self.queues.is_empty()
    }
}

/// Whether a declare created something or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// It did not exist and was created.
    Created,
    /// It existed (and was equivalent, or the declare was passive).
    Existed,
}

/// `exchange.declare`'s arguments.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeDeclare<'a> {
    /// Exchange name (CR and LF are stripped, as RabbitMQ does).
    pub name: &'a [u8],
    /// Type name.
    pub kind: &'a [u8],
    /// Only check that it exists.
    pub passive: bool,
    /// Durable flag.
    pub durable: bool,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Internal flag.
    pub internal: bool,
    /// Arguments (`alternate-exchange`).
    pub arguments: &'a FieldTable,
}

static EMPTY_TABLE: FieldTable = FieldTable::new();

impl<'a> ExchangeDeclare<'a> {
    /// A non-passive, non-durable declare with no arguments.
    pub fn new(name: &'a [u8], kind: &'a [u8]) -> Self {
        ExchangeDeclare {
            name,
            kind,
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: &EMPTY_TABLE,
        }
    }
}

/// `queue.declare`'s arguments.
#[derive(Debug, Clone, Copy)]
pub struct QueueDeclare<'a> {
    /// Queue name; empty asks for a server-generated `amq.gen-` name.
    pub name: &'a [u8],
    /// Only check that it exists.
    pub passive: bool,
    /// Durable flag.
    pub durable: bool,
    /// Exclusive to `owner`.
    pub exclusive: bool,
    /// Auto-delete flag (kept for the embedder).
    pub auto_delete: bool,
    /// Arguments.
    pub arguments: &'a FieldTable,
    /// Who is declaring (the connection).
    pub owner: OwnerId,
}

impl<'a> QueueDeclare<'a> {
    /// A non-passive, non-durable, non-exclusive declare with no arguments.
    pub fn new(name: &'a [u8], owner: OwnerId) -> Self {
        QueueDeclare {
            name,
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: &EMPTY_TABLE,
            owner,
        }
    }
}

/// The result of a successful `queue.declare`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclared {
    /// The queue's name (generated for an empty declare name).
    pub name: ShortString,
    /// Whether it was created.
    pub declared: Declared,
}

/// `queue.delete`'s arguments.
#[derive(Debug, Clone, Copy)]
pub struct QueueDelete<'a> {
    /// Queue name.
    pub name: &'a [u8],
    /// Refuse (406) if it has consumers.
    pub if_unused: bool,
    /// Refuse (406) if it holds messages.
    pub if_empty: bool,
    /// Who is deleting (the connection).
    pub owner: OwnerId,
}

/// What the embedder knows about a queue that the router does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueUsage {
    /// Consumers attached.
    pub consumers: u32,
    /// Messages held.
    pub messages: u32,
}

/// `queue.bind`/`exchange.bind` (and unbind) arguments.
#[derive(Debug, Clone, Copy)]
pub struct Bind<'a> {
    /// Source exchange.
    pub source: &'a [u8],
    /// Destination queue or exchange.
    pub destination: &'a [u8],
    /// Binding key.
    pub routing_key: &'a [u8],
    /// Binding arguments.
    pub arguments: &'a FieldTable,
    /// Who is binding (the connection), for exclusive queues.
    pub owner: OwnerId,
}

impl<'a> Bind<'a> {
    /// All the fields.
    pub fn new(
        source: &'a [u8],
        destination: &'a [u8],
        routing_key: &'a [u8],
        arguments: &'a FieldTable,
        owner: OwnerId,
    ) -> Self {
        Bind {
            source,
            destination,
            routing_key,
            arguments,
            owner,
        }
    }
}

// ----- from the methods received -----------------------------------------
//
// A server goes from a received method to the router without copying
// fields by hand: each declaration borrows from the method it came in.

use amqp_types::method as am;

impl<'a> ExchangeDeclare<'a> {
    /// The declaration a received `exchange.declare` makes.
    pub fn from_method(m: &'a am::ExchangeDeclare) -> Self {
        ExchangeDeclare {
            name: m.exchange.as_bytes(),
            kind: m.kind.as_bytes(),
            passive: m.passive,
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
            arguments: &m.arguments,
        }
    }
}

impl<'a> QueueDeclare<'a> {
    /// The declaration a received `queue.declare` makes for `owner`.
    pub fn from_method(m: &'a am::QueueDeclare, owner: OwnerId) -> Self {
        QueueDeclare {
            name: m.queue.as_bytes(),
            passive: m.passive,
            durable: m.durable,
            exclusive: m.exclusive,
            auto_delete: m.auto_delete,
            arguments: &m.arguments,
            owner,
        }
    }
}

impl<'a> QueueDelete<'a> {
    /// The deletion a received `queue.delete` asks for on behalf of `owner`.
    pub fn from_method(m: &'a am::QueueDelete, owner: OwnerId) -> Self {
        QueueDelete {
            name: m.queue.as_bytes(),
            if_unused: m.if_unused,
            if_empty: m.if_empty,
            owner,
        }
    }
}

/// The four binding methods, each to a [`Bind`]: (constructor, method,
/// source field, destination field, doc).
macro_rules! bind_from_methods {
    ($($f:ident($m:ident: $src:ident -> $dst:ident) $doc:literal;)*) => {
        impl<'a> Bind<'a> {
            $(
                #[doc = $doc]
                pub fn $f(m: &'a am::$m, owner: OwnerId) -> Self {
                    Bind::new(
                        m.$src.as_bytes(),
                        m.$dst.as_bytes(),
                        m.routing_key.as_bytes(),
                        &m.arguments,
                        owner,
                    )
                }
            )*
        }
    };
}

bind_from_methods! {
    from_queue_bind(QueueBind: exchange -> queue) "`queue.bind`: exchange to queue.";
    from_queue_unbind(QueueUnbind: exchange -> queue) "`queue.unbind`.";
    from_exchange_bind(ExchangeBind: source -> destination) "`exchange.bind`: source exchange to destination exchange.";
    from_exchange_unbind(ExchangeUnbind: source -> destination) "`exchange.unbind`.";
}

impl<'a> Publish<'a> {
    /// The routing-relevant fields of a received `basic.publish` and its
    /// `headers` property.
    pub fn from_method(m: &'a am::BasicPublish, headers: Option<&'a FieldTable>) -> Self {
        Publish {
            exchange: m.exchange.as_bytes(),
            routing_key: m.routing_key.as_bytes(),
            headers,
            mandatory: m.mandatory,
            immediate: m.immediate,
        }
    }
}

/// Class and method ids of the methods whose refusals the router builds.
pub mod method_ids {
    /// exchange.declare
    pub const EXCHANGE_DECLARE: (u16, u16) = (40, 10);
    /// exchange.delete
    pub const EXCHANGE_DELETE: (u16, u16) = (40, 20);
    /// exchange.bind
    pub const EXCHANGE_BIND: (u16, u16) = (40, 30);
    /// exchange.unbind
    pub const EXCHANGE_UNBIND: (u16, u16) = (40, 40);
    /// queue.declare
    pub const QUEUE_DECLARE: (u16, u16) = (50, 10);
    /// queue.bind
    pub const QUEUE_BIND: (u16, u16) = (50, 20);
    /// queue.purge
    pub const QUEUE_PURGE: (u16, u16) = (50, 30);
    /// queue.delete
    pub const QUEUE_DELETE: (u16, u16) = (50, 40);
    /// queue.unbind
    pub const QUEUE_UNBIND: (u16, u16) = (50, 50);
    /// basic.publish
    pub const BASIC_PUBLISH: (u16, u16) = (60, 40);
}
use method_ids as m;

/// Queue arguments RabbitMQ compares on redeclare, in its order.
const QUEUE_EQUIVALENCE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
    "x-queue-master-locator",
    "x-delivery-limit",
    "x-dead-letter-strategy",
];

/// Type names that are Erlang atoms in a running RabbitMQ but no exchange
/// type: RabbitMQ calls them "invalid" rather than "unknown".
const ATOM_TYPE_NAMES: &[&[u8]] = &[
    b"",
    b"undefined",
    b"true",
    b"false",
    b"ok",
    b"error",
    b"none",
    b"all",
    b"any",
    b"exchange",
    b"queue",
    b"binding",
    b"classic",
    b"quorum",
    b"stream",
    b"default",
    b"x",
];

fn refuse(code: ReplyCode, text: String, (class_id, method_id): (u16, u16)) -> ProtocolError {
    let e = if code.is_hard() {
        ProtocolError::connection(code, ErrorKind::Refused(text))
    } else {
        ProtocolError::channel(0, code, ErrorKind::Refused(text))
    };
    e.with_method(class_id, method_id)
}

fn strip_cr_lf(name: &[u8]) -> Cow<'_, [u8]> {
    if name.iter().any(|&b| b == b'\r' || b == b'\n') {
        Cow::Owned(
            name.iter()
                .copied()
                .filter(|&b| b != b'\r' && b != b'\n')
                .collect(),
        )
    } else {
        Cow::Borrowed(name)
    }
}

fn short(name: &[u8], what: &str, ids: (u16, u16)) -> Result<ShortString, ProtocolError> {
    ShortString::from_bytes(name).map_err(|_| {
        refuse(
            ReplyCode::PRECONDITION_FAILED,
            format!("{what} name longer than 255 bytes"),
            ids,
        )
    })
}

fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// RabbitMQ's type classes for argument equivalence.
fn type_class(v: &FieldValue) -> u8 {
    match v.letter() {
        b'b' | b's' | b'I' | b'l' | b'D' | b'B' | b'u' | b'i' => b'1',
        b'f' | b'd' => b'2',
        b'S' | b'x' => b'S',
        other => other,
    }
}

/// `rabbit_misc:assert_args_equivalence` for one key: `None` if
/// equivalent, else the "received X but current is Y" text.
fn arg_inequivalence(orig: Option<&FieldValue>, new: Option<&FieldValue>) -> Option<String> {
    fn typed(v: Option<&FieldValue>) -> String {
        match v {
            None => "none".into(),
            Some(v) => format!(
                "the value '{}' of type '{}'",
                erl::bare(v),
                erl::type_name(v)
            ),
        }
    }
    match (orig, new) {
        (None, None) => None,
        (Some(o), Some(n)) => {
            if o == n {
                return None;
            }
            let same_value = match (o, n) {
                (FieldValue::Decimal(a), FieldValue::Decimal(b)) => a == b,
                _ if o.as_integer().is_some() && n.as_integer().is_some() => {
                    o.as_integer() == n.as_integer()
                }
                _ => headers::value_eq(o, n),
            };
            if type_class(o) == type_class(n) && same_value {
                None
            } else {
                Some(format!(
                    "received '{}' but current is '{}'",
                    erl::bare(n),
                    erl::bare(o)
                ))
            }
        }
        (o, n) => Some(format!("received {} but current is {}", typed(n), typed(o))),
    }
}

/// A slab of optional slots with a free list.
#[derive(Debug)]
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, v: T) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.items[i as usize] = Some(v);
                i
            }
            None => {
                self.items.push(Some(v));
                (self.items.len() - 1) as u32
            }
        }
    }
    fn remove(&mut self, i: u32) -> Option<T> {
        let v = self.items.get_mut(i as usize)?.take();
        if v.is_some() {
            self.free.push(i);
        }
        v
    }
    #[inline]
    fn get(&self, i: u32) -> Option<&T> {
        self.items.get(i as usize).and_then(Option::as_ref)
    }
    #[inline]
    fn get_mut(&mut self, i: u32) -> Option<&mut T> {
        self.items.get_mut(i as usize).and_then(Option::as_mut)
    }
    fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (i as u32, v)))
    }
    fn slots(&self) -> usize {
        self.items.len()
    }
}

/// The declarations of one virtual host and the routing over them.
///
/// `Q` is the embedder's queue handle: whatever it wants back from routing
/// (an index, an `Arc` to a queue process, a channel sender).
pub struct Router<Q> {
    vhost: String,
    exchanges: Slab<Exchange>,
    exchange_names: Map<u32>,
    queues: Slab<Queue<Q>>,
    queue_names: Map<u32>,
    bindings: Slab<BindingRec>,
    binding_ids: HashTable<u32>,
    types: Vec<Arc<dyn ExchangeType>>,
    state: foldhash::fast::RandomState,
    generated: u64,
}

impl<Q> std::fmt::Debug for Router<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("vhost", &self.vhost)
            .field("exchanges", &self.exchange_names.len())
            .field("queues", &self.queue_names.len())
            .field("bindings", &self.binding_ids.len())
            .finish()
    }
}

/// The exchanges every RabbitMQ virtual host starts with.
pub const BUILTIN_EXCHANGES: &[(&str, &str, bool)] = &[
    ("amq.direct", "direct", false),
    ("amq.fanout", "fanout", false),
    ("amq.topic", "topic", false),
    ("amq.headers", "headers", false),
    ("amq.match", "headers", false),
    ("amq.rabbitmq.trace", "topic", true),
];

impl<Q> Router<Q> {
    /// A virtual host named `vhost` (used in reply texts) holding only the
    /// built-in exchanges ([`BUILTIN_EXCHANGES`], all durable).
    pub fn new(vhost: impl Into<String>) -> Self {
        let mut r = Router {
            vhost: vhost.into(),
            exchanges: Slab::default(),
            exchange_names: Map::default(),
            queues: Slab::default(),
            queue_names: Map::default(),
            bindings: Slab::default(),
            binding_ids: HashTable::new(),
            types: Vec::new(),
            state: foldhash::fast::RandomState::default(),
            generated: 0,
        };
        for &(name, kind, internal) in BUILTIN_EXCHANGES {
            let kind = r.kind(kind.as_bytes()).unwrap_or(Kind::Direct);
            r.insert_exchange(
                ShortString::from_static(name),
                kind,
                true,
                false,
                internal,
                FieldTable::new(),
            );
        }
        r
    }

    /// The virtual host's name.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Adds an exchange type (replacing one of the same name). Built-in
    /// names (`direct`, `fanout`, `topic`, `headers`) cannot be replaced.
    pub fn register_exchange_type(&mut self, ty: Arc<dyn ExchangeType>) {
        self.types.retain(|t| t.name() != ty.name());
        self.types.push(ty);
    }

    fn kind(&self, name: &[u8]) -> Option<Kind> {
        Some(match name {
            b"direct" => Kind::Direct,
            b"fanout" => Kind::Fanout,
            b"topic" => Kind::Topic,
            b"headers" => Kind::Headers,
            other => Kind::Custom(
                self.types
                    .iter()
                    .find(|t| t.name().as_bytes() == other)?
                    .clone(),
            ),
        })
    }

    fn rs(&self, what: &str, name: &[u8]) -> String {
        format!("{what} '{}' in vhost '{}'", erl::s(name), self.vhost)
    }

    fn not_found(&self, what: &str, name: &[u8], ids: (u16, u16)) -> ProtocolError {
        refuse(
            ReplyCode::NOT_FOUND,
            format!("no {}", self.rs(what, name)),
            ids,
        )
    }

    fn default_refused(ids: (u16, u16)) -> ProtocolError {
        refuse(
            ReplyCode::ACCESS_REFUSED,
            "operation not permitted on the default exchange".into(),
            ids,
        )
    }

    fn locked(&self, name: &[u8], ids: (u16, u16)) -> ProtocolError {
        refuse(
            ReplyCode::RESOURCE_LOCKED,
            format!(
                "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                self.rs("queue", name)
            ),
            ids,
        )
    }

    // ----- lookups -------------------------------------------------------

    /// An exchange by name (the default exchange `""` is not one).
    pub fn exchange(&self, name: &[u8]) -> Option<&Exchange> {
        self.exchange_names
            .get(name)
            .and_then(|&i| self.exchanges.get(i))
    }

    /// A queue by name.
    pub fn queue(&self, name: &[u8]) -> Option<&Queue<Q>> {
        self.queue_names.get(name).and_then(|&i| self.queues.get(i))
    }

    /// A queue by name, mutably (for its handle).
    pub fn queue_mut(&mut self, name: &[u8]) -> Option<&mut Queue<Q>> {
        let i = *self.queue_names.get(name)?;
        self.queues.get_mut(i)
    }

    /// Every exchange (built-ins included), in no particular order.
    pub fn exchanges(&self) -> impl Iterator<Item = &Exchange> {
        self.exchanges.iter().map(|(_, x)| x)
    }

    /// Every queue, in no particular order.
    pub fn queues(&self) -> impl Iterator<Item = &Queue<Q>> {
        self.queues.iter().map(|(_, q)| q)
    }

    /// Every binding, in no particular order.
    pub fn bindings(&self) -> impl Iterator<Item = BindingInfo> + '_ {
        self.bindings.iter().map(|(_, b)| self.binding_info(b))
    }

    /// How many bindings exist.
    pub fn binding_count(&self) -> usize {
        self.binding_ids.len()
    }

    /// A binding by id (ids come from [`BindingIndex`] and observers).
    pub fn binding(&self, id: BindingId) -> Option<BindingInfo> {
        self.bindings.get(id.0).map(|b| self.binding_info(b))
    }

    fn binding_info(&self, b: &BindingRec) -> BindingInfo {
        let (destination, destination_kind) = self.dest_name(b.dest);
        BindingInfo {
            source: self
                .exchanges
                .get(b.source)
                .map(|x| x.name.clone())
                .unwrap_or_default(),
            destination,
            destination_kind,
            routing_key: b.key.clone(),
            arguments: b.args().clone(),
        }
    }

    fn dest_name(&self, d: Dest) -> (ShortString, DestinationKind) {
        match d {
            Dest::Queue(q) => (
                self.queues
                    .get(q)
                    .map(|q| q.name.clone())
                    .unwrap_or_default(),
                DestinationKind::Queue,
            ),
            Dest::Exchange(x) => (
                self.exchanges
                    .get(x)
                    .map(|x| x.name.clone())
                    .unwrap_or_default(),
                DestinationKind::Exchange,
            ),
        }
    }

    /// Checks that a queue exists and that `owner` may use it (404, 405),
    /// as `queue.purge` and the like need; `ids` are the method's class and
    /// method ids for the error.
    pub fn check_queue(
        &self,
        name: &[u8],
        owner: OwnerId,
        ids: (u16, u16),
    ) -> Result<&Queue<Q>, ProtocolError> {
        let q = self
            .queue(name)
            .ok_or_else(|| self.not_found("queue", name, ids))?;
        match q.exclusive_owner {
            Some(o) if o != owner => Err(self.locked(name, ids)),
            _ => Ok(q),
        }
    }

    // ----- exchanges -----------------------------------------------------

    fn insert_exchange(
        &mut self,
        name: ShortString,
        kind: Kind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> u32 {
        let index = match &kind {
            Kind::Direct => Index::Direct(Map::default()),
            Kind::Fanout | Kind::Headers => Index::List,
            Kind::Topic => Index::Topic(topic::Trie::default()),
            Kind::Custom(t) => Index::Custom(t.new_index(&arguments)),
        };
        let id = self.exchanges.insert(Exchange {
            name: name.clone(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            policy_alternate: None,
            out: Vec::new(),
            inbound: Vec::new(),
            index,
        });
        self.exchange_names.insert(name, id);
        id
    }

    /// `exchange.declare`, active or passive, with RabbitMQ's checks in its
    /// order: unknown type (503, connection; not for passive), the default
    /// exchange (403), existence (404 for passive), reserved `amq.` names
    /// (403, only when creating), the `alternate-exchange` type (406, only
    /// when creating), equivalence (406: type, durable, auto_delete,
    /// internal, then the `alternate-exchange` argument).
    pub fn declare_exchange(&mut self, d: &ExchangeDeclare<'_>) -> Result<Declared, ProtocolError> {
        let ids = m::EXCHANGE_DECLARE;
        let name = strip_cr_lf(d.name);
        if d.passive {
            if name.is_empty() {
                return Err(Self::default_refused(ids));
            }
            return match self.exchange(&name) {
                Some(_) => Ok(Declared::Existed),
                None => Err(self.not_found("exchange", &name, ids)),
            };
        }
        let Some(kind) = self.kind(d.kind) else {
            let word = if ATOM_TYPE_NAMES.contains(&d.kind) {
                "invalid"
            } else {
                "unknown"
            };
            return Err(refuse(
                ReplyCode::COMMAND_INVALID,
                format!("{word} exchange type '{}'", erl::s(d.kind)),
                ids,
            ));
        };
        if name.is_empty() {
            return Err(Self::default_refused(ids));
        }
        let rs = || self.rs("exchange", &name);
        let Some(x) = self.exchange(&name) else {
            if name.starts_with(b"amq.") {
                return Err(refuse(
                    ReplyCode::ACCESS_REFUSED,
                    format!(
                        "exchange name '{}' contains reserved prefix 'amq.*'",
                        erl::s(&name)
                    ),
                    ids,
                ));
            }
            if let Some(v) = d.arguments.get("alternate-exchange")
                && !matches!(v, FieldValue::LongString(_))
            {
                return Err(refuse(
                    ReplyCode::PRECONDITION_FAILED,
                    format!(
                        "invalid type '{}' for arg 'alternate-exchange' in {}",
                        erl::type_name(v),
                        rs()
                    ),
                    ids,
                ));
            }
            let name = short(&name, "exchange", ids)?;
            self.insert_exchange(
                name,
                kind,
                d.durable,
                d.auto_delete,
                d.internal,
                d.arguments.clone(),
            );
            return Ok(Declared::Created);
        };
        let fail = |arg: &str, text: String| {
            Err(refuse(
                ReplyCode::PRECONDITION_FAILED,
                format!("inequivalent arg '{arg}' for {}: {text}", rs()),
                ids,
            ))
        };
        if x.kind.name() != kind.name() {
            return fail(
                "type",
                format!(
                    "received '{}' but current is '{}'",
                    kind.name(),
                    x.kind.name()
                ),
            );
        }
        for (arg, have, want) in [
            ("durable", x.durable, d.durable),
            ("auto_delete", x.auto_delete, d.auto_delete),
            ("internal", x.internal, d.internal),
        ] {
            if have != want {
                return fail(
                    arg,
                    format!(
                        "received '{}' but current is '{}'",
                        bool_text(want),
                        bool_text(have)
                    ),
                );
            }
        }
        if let Some(text) = arg_inequivalence(
            x.arguments.get("alternate-exchange"),
            d.arguments.get("alternate-exchange"),
        ) {
            return fail("alternate-exchange", text);
        }
        Ok(Declared::Existed)
    }

    /// Sets (or clears) the alternate exchange a policy gives `exchange`;
    /// returns whether the exchange exists. The `alternate-exchange`
    /// argument, when present, wins over it.
    pub fn set_policy_alternate_exchange(
        &mut self,
        exchange: &[u8],
        alternate: Option<ShortString>,
    ) -> bool {
        match self.exchange_names.get(exchange).copied() {
            Some(i) => {
                if let Some(x) = self.exchanges.get_mut(i) {
                    x.policy_alternate = alternate;
                }
                true
            }
            None => false,
        }
    }

    /// `exchange.delete`: the default exchange and every `amq.` name are
    /// refused (403, existing or not); a missing exchange is fine;
    /// `if_unused` refuses (406) an exchange that is the source of a
    /// binding. Removes the exchange, its bindings both ways, and auto-delete
    /// exchanges that thereby lost their last binding as source, cascading.
    pub fn delete_exchange(
        &mut self,
        name: &[u8],
        if_unused: bool,
    ) -> Result<Removed<Q>, ProtocolError> {
        let ids = m::EXCHANGE_DELETE;
        let name = strip_cr_lf(name);
        if name.is_empty() {
            return Err(Self::default_refused(ids));
        }
        if name.starts_with(b"amq.") {
            return Err(refuse(
                ReplyCode::ACCESS_REFUSED,
                format!(
                    "deletion of system {} not allowed",
                    self.rs("exchange", &name)
                ),
                ids,
            ));
        }
        let mut removed = Removed::default();
        let Some(&xid) = self.exchange_names.get(&*name) else {
            return Ok(removed);
        };
        if if_unused && self.exchanges.get(xid).is_some_and(|x| !x.out.is_empty()) {
            return Err(refuse(
                ReplyCode::PRECONDITION_FAILED,
                format!("{} in use", self.rs("exchange", &name)),
                ids,
            ));
        }
        let mut work = Vec::new();
        self.remove_exchange(xid, &mut removed, &mut work);
        self.cascade(work, &mut removed);
        Ok(removed)
    }

    /// Removes exchange `xid` and all its bindings; pushes the sources of
    /// its inbound bindings onto `work`.
    fn remove_exchange(&mut self, xid: u32, removed: &mut Removed<Q>, work: &mut Vec<u32>) {
        let Some(x) = self.exchanges.get(xid) else {
            return;
        };
        let mut ids: Vec<u32> = x.out.iter().chain(x.inbound.iter()).copied().collect();
        ids.sort_unstable();
        ids.dedup();
        for b in ids {
            if let Some(src) = self.remove_binding(b, removed)
                && src != xid
            {
                work.push(src);
            }
        }
        if let Some(x) = self.exchanges.remove(xid) {
            self.exchange_names.remove(&x.name);
            removed.exchanges.push(ExchangeInfo {
                name: x.name,
                type_name: x.kind.name().to_owned(),
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments,
            });
        }
    }

    /// Deletes auto-delete exchanges in `work` that have no binding as
    /// source left, cascading (iteratively).
    fn cascade(&mut self, mut work: Vec<u32>, removed: &mut Removed<Q>) {
        while let Some(x) = work.pop() {
            let gone = self
                .exchanges
                .get(x)
                .is_some_and(|x| x.auto_delete && x.out.is_empty());
            if gone {
                self.remove_exchange(x, removed, &mut work);
            }
        }
    }

    // ----- queues --------------------------------------------------------

    /// `queue.declare`. Passive: 404 if missing, 405 if exclusive to another
    /// owner. Active: reserved `amq.` names (403), then for an existing
    /// queue exclusivity (405) and equivalence (406: durable, auto_delete,
    /// RabbitMQ's queue arguments); a new queue gets the handle `make`
    /// returns. An empty name is given a generated `amq.gen-` name.
    pub fn declare_queue(
        &mut self,
        d: &QueueDeclare<'_>,
        make: impl FnOnce(&ShortString) -> Q,
    ) -> Result<QueueDeclared, ProtocolError> {
        let ids = m::QUEUE_DECLARE;
        let stripped = strip_cr_lf(d.name);
        if d.passive {
            let q = self.check_queue(&stripped, d.owner, ids)?;
            return Ok(QueueDeclared {
                name: q.name.clone(),
                declared: Declared::Existed,
            });
        }
        let name: ShortString = if stripped.is_empty() {
            self.generate_name()
        } else {
            if stripped.starts_with(b"amq.") {
                return Err(refuse(
                    ReplyCode::ACCESS_REFUSED,
                    format!(
                        "queue name '{}' contains reserved prefix 'amq.*'",
                        erl::s(&stripped)
                    ),
                    ids,
                ));
            }
            short(&stripped, "queue", ids)?
        };
        let owner = d.exclusive.then_some(d.owner);
        if let Some(q) = self.queue(&name) {
            if q.exclusive_owner != owner {
                return Err(self.locked(&name, ids));
            }
            let rs = self.rs("queue", &name);
            let fail = |arg: &str, text: String| {
                Err(refuse(
                    ReplyCode::PRECONDITION_FAILED,
                    format!("inequivalent arg '{arg}' for {rs}: {text}"),
                    ids,
                ))
            };
            for (arg, have, want) in [
                ("durable", q.durable, d.durable),
                ("auto_delete", q.auto_delete, d.auto_delete),
            ] {
                if have != want {
                    return fail(
                        arg,
                        format!(
                            "received '{}' but current is '{}'",
                            bool_text(want),
                            bool_text(have)
                        ),
                    );
                }
            }
            for key in QUEUE_EQUIVALENCE_ARGS {
                if let Some(text) = arg_inequivalence(q.arguments.get(key), d.arguments.get(key)) {
                    return fail(key, text);
                }
            }
            return Ok(QueueDeclared {
                name,
                declared: Declared::Existed,
            });
        }
        let handle = make(&name);
        let id = self.queues.insert(Queue {
            name: name.clone(),
            durable: d.durable,
            auto_delete: d.auto_delete,
            exclusive_owner: owner,
            arguments: d.arguments.clone(),
            handle,
            inbound: Vec::new(),
        });
        self.queue_names.insert(name.clone(), id);
        Ok(QueueDeclared {
            name,
            declared: Declared::Created,
        })
    }

    fn generate_name(&mut self) -> ShortString {
        loop {
            self.generated += 1;
            let a = self.state.hash_one(self.generated);
            let b = self.state.hash_one(!self.generated);
            let name = format!("amq.gen-{a:016x}{b:08x}");
            if !self.queue_names.contains_key(name.as_bytes()) {
                return ShortString::try_from(name.as_str()).unwrap_or_default();
            }
        }
    }

    /// `queue.delete`: a missing queue is fine (nothing removed); 405 if
    /// exclusive to another owner; `if_unused`/`if_empty` look at what
    /// `usage` says of the queue (406 "in use" / "not empty"). Removes the
    /// queue and its bindings, then auto-delete exchanges that lost their
    /// last binding as source, cascading; the handle comes back in
    /// [`Removed::queues`].
    pub fn delete_queue(
        &mut self,
        d: &QueueDelete<'_>,
        usage: impl FnOnce(&Q) -> QueueUsage,
    ) -> Result<Removed<Q>, ProtocolError> {
        let ids = m::QUEUE_DELETE;
        let name = strip_cr_lf(d.name);
        let mut removed = Removed::default();
        let Some(&qid) = self.queue_names.get(&*name) else {
            return Ok(removed);
        };
        let q = self.check_queue(&name, d.owner, ids)?;
        if d.if_unused || d.if_empty {
            let u = usage(&q.handle);
            if d.if_unused && u.consumers > 0 {
                return Err(refuse(
                    ReplyCode::PRECONDITION_FAILED,
                    format!("{} in use", self.rs("queue", &name)),
                    ids,
                ));
            }
            if d.if_empty && u.messages > 0 {
                return Err(refuse(
                    ReplyCode::PRECONDITION_FAILED,
                    format!("{} not empty", self.rs("queue", &name)),
                    ids,
                ));
            }
        }
        self.remove_queue(qid, &mut removed);
        Ok(removed)
    }

    fn remove_queue(&mut self, qid: u32, removed: &mut Removed<Q>) {
        let Some(q) = self.queues.get(qid) else {
            return;
        };
        let inbound = q.inbound.clone();
        let mut work = Vec::new();
        for b in inbound {
            if let Some(src) = self.remove_binding(b, removed) {
                work.push(src);
            }
        }
        if let Some(q) = self.queues.remove(qid) {
            self.queue_names.remove(&q.name);
            removed.queues.push(RemovedQueue {
                name: q.name,
                handle: q.handle,
            });
        }
        self.cascade(work, removed);
    }

    /// Deletes every exclusive queue `owner` holds (its connection closed),
    /// with the same cascade as [`delete_queue`](Self::delete_queue).
    pub fn delete_exclusive_queues(&mut self, owner: OwnerId) -> Removed<Q> {
        let ids: Vec<u32> = self
            .queues
            .iter()
            .filter(|(_, q)| q.exclusive_owner == Some(owner))
            .map(|(i, _)| i)
            .collect();
        let mut removed = Removed::default();
        for q in ids {
            self.remove_queue(q, &mut removed);
        }
        removed
    }

    // ----- bindings ------------------------------------------------------

    fn identity_hash(&self, source: u32, dest: Dest, key: &[u8], args: &FieldTable) -> u64 {
        let mut h = self.state.build_hasher();
        source.hash(&mut h);
        dest.hash(&mut h);
        key.hash(&mut h);
        args.hash(&mut h);
        h.finish()
    }

    fn find_binding(&self, source: u32, dest: Dest, key: &[u8], args: &FieldTable) -> Option<u32> {
        let h = self.identity_hash(source, dest, key, args);
        self.binding_ids
            .find(h, |&b| {
                self.bindings.get(b).is_some_and(|r| {
                    r.source == source
                        && r.dest == dest
                        && r.key.as_bytes() == key
                        && *r.args() == *args
                })
            })
            .copied()
    }

    fn resolve(
        &self,
        b: &Bind<'_>,
        kind: DestinationKind,
        ids: (u16, u16),
        missing_ok: bool,
    ) -> Result<Option<(u32, Dest)>, ProtocolError> {
        let src = strip_cr_lf(b.source);
        let dst = strip_cr_lf(b.destination);
        if (kind == DestinationKind::Exchange && dst.is_empty()) || src.is_empty() {
            return Err(Self::default_refused(ids));
        }
        let source = self.exchange_names.get(&*src).copied();
        let dest = match kind {
            DestinationKind::Queue => self.queue_names.get(&*dst).map(|&q| Dest::Queue(q)),
            DestinationKind::Exchange => self.exchange_names.get(&*dst).map(|&x| Dest::Exchange(x)),
        };
        match (source, dest) {
            (Some(s), Some(d)) => Ok(Some((s, d))),
            _ if missing_ok => Ok(None),
            (None, _) => Err(self.not_found("exchange", &src, ids)),
            (Some(_), None) => Err(self.not_found(
                match kind {
                    DestinationKind::Queue => "queue",
                    DestinationKind::Exchange => "exchange",
                },
                &dst,
                ids,
            )),
        }
    }

    fn check_exclusive(
        &self,
        d: Dest,
        owner: OwnerId,
        ids: (u16, u16),
    ) -> Result<(), ProtocolError> {
        if let Dest::Queue(q) = d
            && let Some(q) = self.queues.get(q)
            && q.exclusive_owner.is_some_and(|o| o != owner)
        {
            return Err(self.locked(&q.name, ids));
        }
        Ok(())
    }

    /// `queue.bind`: 403 for the default exchange, 404 for a missing
    /// exchange (reported first) or queue, 406 for a bad `x-match` on a
    /// headers exchange (or a custom type's refusal), 405 for another
    /// owner's exclusive queue. Returns whether a new binding was added
    /// (binding twice is fine).
    pub fn bind_queue(&mut self, b: &Bind<'_>) -> Result<bool, ProtocolError> {
        self.bind(b, DestinationKind::Queue, m::QUEUE_BIND)
    }

    /// `exchange.bind` (source = the method's `source`, destination = its
    /// `destination`), with the same rules as [`bind_queue`](Self::bind_queue).
    pub fn bind_exchange(&mut self, b: &Bind<'_>) -> Result<bool, ProtocolError> {
        self.bind(b, DestinationKind::Exchange, m::EXCHANGE_BIND)
    }

    /// `queue.unbind`: 403 for the default exchange; unbinding what does
    /// not exist (binding, queue or exchange) is fine. Reports the binding
    /// and any auto-delete exchanges removed in cascade.
    pub fn unbind_queue(&mut self, b: &Bind<'_>) -> Result<Removed<Q>, ProtocolError> {
        self.unbind(b, DestinationKind::Queue, m::QUEUE_UNBIND)
    }

    /// `exchange.unbind`, with the rules of [`unbind_queue`](Self::unbind_queue).
    pub fn unbind_exchange(&mut self, b: &Bind<'_>) -> Result<Removed<Q>, ProtocolError> {
        self.unbind(b, DestinationKind::Exchange, m::EXCHANGE_UNBIND)
    }

    fn bind(
        &mut self,
        b: &Bind<'_>,
        kind: DestinationKind,
        ids: (u16, u16),
    ) -> Result<bool, ProtocolError> {
        let Some((source, dest)) = self.resolve(b, kind, ids, false)? else {
            return Ok(false);
        };
        let x = self
            .exchanges
            .get(source)
            .ok_or_else(|| self.not_found("exchange", b.source, ids))?;
        let valid = match &x.kind {
            Kind::Headers => headers::validate_binding(b.arguments),
            Kind::Custom(t) => t.validate_binding(b.routing_key, b.arguments),
            _ => Ok(()),
        };
        if let Err(text) = valid {
            return Err(refuse(ReplyCode::PRECONDITION_FAILED, text, ids));
        }
        self.check_exclusive(dest, b.owner, ids)?;
        let key = short(b.routing_key, "routing key", ids)?;
        let args = headers::sort_table(b.arguments);
        if self.find_binding(source, dest, &key, &args).is_some() {
            return Ok(false);
        }
        self.add_binding(source, dest, key, args);
        Ok(true)
    }

    pub(crate) fn add_binding(
        &mut self,
        source: u32,
        dest: Dest,
        key: ShortString,
        args: FieldTable,
    ) -> u32 {
        let h = self.identity_hash(source, dest, &key, &args);
        let xmatch = XMatch::of(&args);
        let src_pos = self.exchanges.get(source).map_or(0, |x| x.out.len() as u32);
        let dst_pos = match dest {
            Dest::Queue(q) => self.queues.get(q).map_or(0, |q| q.inbound.len() as u32),
            Dest::Exchange(x) => self.exchanges.get(x).map_or(0, |x| x.inbound.len() as u32),
        };
        let id = self.bindings.insert(BindingRec {
            source,
            dest,
            key,
            args: (!args.is_empty()).then(|| Box::new(args)),
            xmatch,
            src_pos,
            dst_pos,
        });
        let bindings = &self.bindings;
        let state = &self.state;
        self.binding_ids.insert_unique(h, id, |&b| {
            let r = bindings.get(b).expect("binding in identity table exists");
            let mut hs = state.build_hasher();
            r.source.hash(&mut hs);
            r.dest.hash(&mut hs);
            r.key.as_bytes().hash(&mut hs);
            r.args().hash(&mut hs);
            hs.finish()
        });
        match dest {
            Dest::Queue(q) => {
                if let Some(q) = self.queues.get_mut(q) {
                    q.inbound.push(id);
                }
            }
            Dest::Exchange(x) => {
                if let Some(x) = self.exchanges.get_mut(x) {
                    x.inbound.push(id);
                }
            }
        }
        let rec = self.bindings.get(id).expect("just inserted");
        if let Some(x) = self.exchanges.get_mut(source) {
            x.out.push(id);
            match &mut x.index {
                Index::Direct(map) => match map.get_mut(rec.key.as_bytes()) {
                    Some(v) => v.push(id),
                    None => {
                        map.insert(rec.key.clone(), vec![id]);
                    }
                },
                Index::Topic(t) => t.insert(rec.key.as_bytes(), id),
                Index::List => {}
                Index::Custom(c) => c.add(BindingId(id), rec.key.as_bytes(), rec.args()),
            }
        }
        id
    }

    fn unbind(
        &mut self,
        b: &Bind<'_>,
        kind: DestinationKind,
        ids: (u16, u16),
    ) -> Result<Removed<Q>, ProtocolError> {
        let mut removed = Removed::default();
        let Some((source, dest)) = self.resolve(b, kind, ids, true)? else {
            return Ok(removed);
        };
        self.check_exclusive(dest, b.owner, ids)?;
        let args = headers::sort_table(b.arguments);
        if let Some(id) = self.find_binding(source, dest, b.routing_key, &args) {
            self.remove_binding(id, &mut removed);
            self.cascade(vec![source], &mut removed);
        }
        Ok(removed)
    }

    /// Removes one binding from every structure; returns its source.
    fn remove_binding(&mut self, id: u32, removed: &mut Removed<Q>) -> Option<u32> {
        let rec = self.bindings.get(id)?.clone();
        removed.bindings.push(self.binding_info(&rec));
        let h = self.identity_hash(rec.source, rec.dest, &rec.key, rec.args());
        if let Ok(e) = self.binding_ids.find_entry(h, |&b| b == id) {
            e.remove();
        }
        // Source list and index.
        if let Some(x) = self.exchanges.get_mut(rec.source) {
            let pos = rec.src_pos as usize;
            x.out.swap_remove(pos);
            if let Some(&moved) = x.out.get(pos)
                && let Some(m) = self.bindings.get_mut(moved)
            {
                m.src_pos = pos as u32;
            }
            let x = self.exchanges.get_mut(rec.source).expect("exists");
            match &mut x.index {
                Index::Direct(map) => {
                    if let Some(v) = map.get_mut(rec.key.as_bytes()) {
                        v.retain(|&b| b != id);
                        if v.is_empty() {
                            map.remove(rec.key.as_bytes());
                        }
                    }
                }
                Index::Topic(t) => t.remove(rec.key.as_bytes(), id),
                Index::List => {}
                Index::Custom(c) => c.remove(BindingId(id), rec.key.as_bytes(), rec.args()),
            }
        }
        // Destination list.
        let pos = rec.dst_pos as usize;
        let list = match rec.dest {
            Dest::Queue(q) => self.queues.get_mut(q).map(|q| &mut q.inbound),
            Dest::Exchange(x) => self.exchanges.get_mut(x).map(|x| &mut x.inbound),
        };
        if let Some(list) = list {
            list.swap_remove(pos);
            if let Some(&moved) = list.get(pos)
                && let Some(m) = self.bindings.get_mut(moved)
            {
                m.dst_pos = pos as u32;
            }
        }
        self.bindings.remove(id);
        Some(rec.source)
    }
}
