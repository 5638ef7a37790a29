//! A queue's messages: ready ones in order, by priority level, with
//! requeued messages going back to their original place.
//!
//! Every message enqueued gets the next sequence number. Within a priority
//! level, ready messages that were never delivered sit in a FIFO (`fresh`,
//! O(1) at both ends); a message that comes back (nack/reject with
//! requeue, channel closed, recover) goes into an ordered map keyed by its
//! sequence number (`returned`, O(log n)), so it is served again before
//! every message enqueued after it, as RabbitMQ's classic queues do.
//! Taking the head compares the two fronts of the highest non-empty level
//! (a queue without `x-max-priority` has one level). No operation costs
//! more than O(log n) in the queue's length (times the number of levels,
//! at most 256).
//!
//! Messages may carry an expiry time; [`Ready::pop_expired`] takes expired
//! messages from the heads only, as RabbitMQ expires them (a short-lived
//! message behind a long-lived one stays, and stays counted).

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use amqp_types::{BasicProperties, ShortString};

use crate::core::MESSAGE_OVERHEAD;
use crate::paging::{PageRef, Pager};

/// A published message, stored once however many queues it reaches: 24
/// bytes (cloning it shares it) and, for a body under
/// [`COMPACT_BELOW`](crate::core::COMPACT_BELOW), one allocation of its
/// own holding its properties in wire form
/// ([`amqp_wire::encode_properties`], sent again as they are) and body.
/// Where it was published (exchange, routing key) and what few messages
/// have (a large body, a store id, `BCC` keys) live in a second
/// allocation that the messages a publisher sends alike share
/// ([`Routes`]), copied on write.
#[derive(Clone, PartialEq, Eq)]
pub struct Msg {
    /// `[flags, priority, properties length (u32 LE), properties..,
    /// body..]`.
    data: Arc<[u8]>,
    ext: Arc<MsgExt>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct MsgExt {
    /// Exchange and routing key.
    route: Arc<Route>,
    /// The body, when it is not inline.
    body: Option<Bytes>,
    persist: Option<u64>,
    at: Option<crate::store::RecordAt>,
    bcc: Vec<ShortString>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Route {
    exchange: ShortString,
    routing_key: ShortString,
}

/// `data[0]` bits.
const PERSISTENT: u8 = 1;
const HAS_PRIORITY: u8 = 2;
const HAS_EXPIRATION: u8 = 4;

/// Where properties start in a message's `data`.
const PROPS_AT: usize = 6;

thread_local! {
    /// Where a message's inline bytes are gathered before the one
    /// allocation that holds them.
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The last route [`Msg::new`] made on this thread (recovery and
    /// paging read runs of messages published alike).
    static LAST: std::cell::RefCell<Routes> = std::cell::RefCell::new(Routes::default());
}

/// The last (exchange, routing key) a publisher used, shared by the
/// messages that follow with the same: a queued message then holds no
/// copy of them (PerfTest's 36-byte routing key was a quarter of a
/// queued 16-byte message's memory).
#[derive(Debug, Default, Clone)]
pub struct Routes {
    last: Option<Arc<MsgExt>>,
}

impl Routes {
    /// A message published to `exchange` with `routing_key` (cut to 255
    /// bytes), these properties in wire form and body.
    pub fn msg(
        &mut self,
        exchange: &[u8],
        routing_key: &[u8],
        properties: impl FnOnce(&mut Vec<u8>),
        body: Bytes,
    ) -> Msg {
        let exchange = &exchange[..exchange.len().min(255)];
        let routing_key = &routing_key[..routing_key.len().min(255)];
        let ext = match &self.last {
            Some(x)
                if x.route.routing_key.as_bytes() == routing_key
                    && x.route.exchange.as_bytes() == exchange =>
            {
                x.clone()
            }
            _ => {
                let x = Arc::new(MsgExt {
                    route: Arc::new(Route {
                        exchange: ShortString::from_bytes(exchange).unwrap_or_default(),
                        routing_key: ShortString::from_bytes(routing_key).unwrap_or_default(),
                    }),
                    ..Default::default()
                });
                self.last = Some(x.clone());
                x
            }
        };
        GATHER.with_borrow_mut(|v| Msg::gather(ext, body, v, properties))
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msg")
            .field("exchange", &String::from_utf8_lossy(self.exchange()))
            .field("routing_key", &String::from_utf8_lossy(self.routing_key()))
            .field("properties", &self.properties())
            .field("body_len", &self.size())
            .field("ext", &self.ext)
            .finish()
    }
}

/// Properties, encoded where they go (no buffer of their own).
pub fn encode(properties: &BasicProperties) -> impl FnOnce(&mut Vec<u8>) + '_ {
    |v| {
        // Cannot fail for properties that were decoded or built in memory
        // (no string over 255 bytes, no table over 4 GiB); if it did, the
        // message would go without any.
        let at = v.len();
        if amqp_wire::encode_properties(properties, v).is_err() {
            v.truncate(at);
            v.extend_from_slice(&[0, 0]);
        }
    }
}

/// Properties already in wire form.
pub fn encoded(properties: &[u8]) -> impl FnOnce(&mut Vec<u8>) + '_ {
    |v| v.extend_from_slice(properties)
}

impl Msg {
    /// A message with these parts (BCC already removed from `properties`).
    pub fn new(
        exchange: &[u8],
        routing_key: &[u8],
        properties: &BasicProperties,
        body: Bytes,
    ) -> Msg {
        LAST.with_borrow_mut(|r| r.msg(exchange, routing_key, encode(properties), body))
    }

    /// A message whose properties are already in wire form (as
    /// [`Msg::raw_properties`] gives them).
    pub fn with_encoded(
        exchange: &[u8],
        routing_key: &[u8],
        properties: &[u8],
        body: Bytes,
    ) -> Msg {
        LAST.with_borrow_mut(|r| r.msg(exchange, routing_key, encoded(properties), body))
    }

    /// Builds the one allocation in `v`: `properties` writes the
    /// properties in wire form where they go.
    fn gather(
        mut ext: Arc<MsgExt>,
        body: Bytes,
        v: &mut Vec<u8>,
        properties: impl FnOnce(&mut Vec<u8>),
    ) -> Msg {
        v.clear();
        v.extend_from_slice(&[0; PROPS_AT]);
        properties(v);
        let len = v.len() - PROPS_AT;
        v[2..PROPS_AT].copy_from_slice(&(len as u32).to_le_bytes());
        (v[0], v[1]) = derived(&v[PROPS_AT..]);
        if body.len() < crate::core::COMPACT_BELOW {
            v.extend_from_slice(&body);
        } else {
            Arc::make_mut(&mut ext).body = Some(body);
        }
        Msg {
            data: Arc::from(&v[..]),
            ext,
        }
    }

    /// The same message with other properties.
    pub fn with_properties(&self, properties: &BasicProperties) -> Msg {
        let body = if self.ext.body.is_some() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(self.body())
        };
        GATHER.with_borrow_mut(|v| Msg::gather(self.ext.clone(), body, v, encode(properties)))
    }

    fn props_range(&self) -> std::ops::Range<usize> {
        let d = &self.data;
        let n = u32::from_le_bytes(d[2..PROPS_AT].try_into().unwrap_or([0; 4])) as usize;
        PROPS_AT..PROPS_AT + n
    }

    /// The exchange it was published to.
    pub fn exchange(&self) -> &[u8] {
        self.ext.route.exchange.as_bytes()
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &[u8] {
        self.ext.route.routing_key.as_bytes()
    }

    /// The exchange, as a short string.
    pub fn exchange_name(&self) -> ShortString {
        self.ext.route.exchange.clone()
    }

    /// The routing key, as a short string.
    pub fn routing_key_name(&self) -> ShortString {
        self.ext.route.routing_key.clone()
    }

    /// Its properties in wire form (flags, then values).
    pub fn raw_properties(&self) -> &[u8] {
        &self.data[self.props_range()]
    }

    /// Its properties, decoded.
    pub fn properties(&self) -> BasicProperties {
        amqp_wire::decode_properties(&Bytes::copy_from_slice(self.raw_properties()))
            .unwrap_or_default()
    }

    /// Its body.
    pub fn body(&self) -> &[u8] {
        match &self.ext.body {
            Some(b) => b,
            None => &self.data[self.props_range().end..],
        }
    }

    /// Its body, to send.
    pub fn body_to_send(&self) -> amqp_codec::Body<'_> {
        match self.ext.body.as_ref() {
            Some(b) => amqp_codec::Body::Shared(b),
            None => amqp_codec::Body::Borrowed(self.body()),
        }
    }

    /// Its body as [`Bytes`] (shared when large, else a copy).
    pub fn body_bytes(&self) -> Bytes {
        match self.ext.body.as_ref() {
            Some(b) => b.clone(),
            None => Bytes::copy_from_slice(self.body()),
        }
    }

    /// Bytes counted against length limits and memory (the body).
    pub fn size(&self) -> usize {
        self.body().len()
    }

    /// `delivery-mode` 2.
    pub fn is_persistent(&self) -> bool {
        self.data[0] & PERSISTENT != 0
    }

    /// Its `priority` property.
    pub fn priority(&self) -> Option<u8> {
        (self.data[0] & HAS_PRIORITY != 0).then(|| self.data[1])
    }

    /// Whether it has an `expiration` property.
    pub fn has_expiration(&self) -> bool {
        self.data[0] & HAS_EXPIRATION != 0
    }

    /// Its `expiration` in milliseconds (none when absent or invalid).
    pub fn expiration_ms(&self) -> Option<u64> {
        if !self.has_expiration() {
            return None;
        }
        crate::lifecycle::expiration_ms(&self.properties())
            .ok()
            .flatten()
    }

    /// Its id in the message store, when it is persistent and reached a
    /// durable queue.
    pub fn persist(&self) -> Option<u64> {
        self.ext.persist
    }

    /// Where its publish record lies in the store, for a message recovered
    /// from it: a page then holds only that ([`crate::paging`]).
    pub fn at(&self) -> Option<crate::store::RecordAt> {
        self.ext.at
    }

    /// The `BCC` routing keys it was published with (removed from its
    /// headers; dead-lettering without a routing key routes by them too).
    pub fn bcc(&self) -> &[ShortString] {
        &self.ext.bcc
    }

    fn ext_mut(&mut self) -> &mut MsgExt {
        Arc::make_mut(&mut self.ext)
    }

    /// Sets its store id.
    pub fn set_persist(&mut self, id: Option<u64>) {
        if id.is_some() || self.persist().is_some() {
            self.ext_mut().persist = id;
        }
    }

    /// Sets where its publish record lies.
    pub fn set_at(&mut self, at: Option<crate::store::RecordAt>) {
        if at.is_some() || self.at().is_some() {
            self.ext_mut().at = at;
        }
    }

    /// Sets its `BCC` keys.
    pub fn set_bcc(&mut self, bcc: Vec<ShortString>) {
        if !bcc.is_empty() || !self.bcc().is_empty() {
            self.ext_mut().bcc = bcc;
        }
    }
}

/// The flags byte and priority of encoded properties.
fn derived(properties: &[u8]) -> (u8, u8) {
    use amqp_wire::{has_property, property_flag, property_value};
    const DELIVERY_MODE: u16 = property_flag("delivery-mode");
    const PRIORITY: u16 = property_flag("priority");
    const EXPIRATION: u16 = property_flag("expiration");
    let mut out = 0;
    if has_property(properties, EXPIRATION) {
        out |= HAS_EXPIRATION;
    }
    if property_value(properties, DELIVERY_MODE) == Some(&[2]) {
        out |= PERSISTENT;
    }
    let priority = match property_value(properties, PRIORITY) {
        Some(&[p]) => {
            out |= HAS_PRIORITY;
            p
        }
        _ => 0,
    };
    (out, priority)
}

/// A message in a queue.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the queue's enqueue order.
    pub seq: u64,
    /// The message.
    pub msg: Msg,
    /// Delivered before (and requeued).
    pub redelivered: bool,
    /// Its priority level in the queue (0 without priorities).
    pub level: u8,
    /// When it expires (queue TTL or `expiration`, the lower), if ever.
    pub expires: Expiry,
    /// How often it came back unacknowledged (quorum queues count it:
    /// `x-delivery-count`, `x-delivery-limit`).
    pub returns: u32,
}

/// An optional [`Instant`] in 8 bytes (an `Option<Instant>` takes 16):
/// nanoseconds from a process-wide base, biased so that instants before
/// it fit too (±292 years); `u64::MAX` is none.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Expiry(u64);

impl Expiry {
    /// Never.
    pub const NEVER: Expiry = Expiry(u64::MAX);

    fn base() -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    /// The instant, if any.
    pub fn get(self) -> Option<Instant> {
        if self == Expiry::NEVER {
            return None;
        }
        let off = self.0 as i64 ^ i64::MIN; // undo the bias
        let d = std::time::Duration::from_nanos(off.unsigned_abs());
        Some(if off >= 0 {
            Expiry::base() + d
        } else {
            Expiry::base() - d
        })
    }
}

impl From<Option<Instant>> for Expiry {
    fn from(t: Option<Instant>) -> Expiry {
        let Some(t) = t else {
            return Expiry::NEVER;
        };
        let base = Expiry::base();
        let off = if t >= base {
            i64::try_from((t - base).as_nanos()).unwrap_or(i64::MAX - 1)
        } else {
            -i64::try_from((base - t).as_nanos()).unwrap_or(i64::MAX)
        };
        Expiry((off ^ i64::MIN) as u64)
    }
}

impl std::fmt::Debug for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// Entries per chunk of a [`Chunked`] queue (48 KiB of entries).
const CHUNK: usize = 1024;

/// A FIFO kept in chunks of at most [`CHUNK`] entries. A `VecDeque`
/// doubles as it grows, copying every entry and leaving a quarter of its
/// capacity unused on average (half, just past a power of two, and the
/// allocator may keep the buffers it outgrew); here a long queue wastes
/// at most one chunk. A short queue is one ring buffer that keeps its
/// capacity, so steady traffic through it allocates nothing.
#[derive(Debug)]
struct Chunked<T> {
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> From<Vec<T>> for Chunked<T> {
    /// One chunk, without a copy (however long `v` is).
    fn from(v: Vec<T>) -> Self {
        let len = v.len();
        Chunked {
            chunks: VecDeque::from([VecDeque::from(v)]),
            len,
        }
    }
}

impl<T> Chunked<T> {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(VecDeque::front)
    }

    fn push_back(&mut self, e: T) {
        match self.chunks.back_mut() {
            Some(c) if c.len() < CHUNK => c.push_back(e),
            _ => {
                let mut c = VecDeque::with_capacity(if self.len == 0 { 1 } else { CHUNK });
                c.push_back(e);
                self.chunks.push_back(c);
            }
        }
        self.len += 1;
    }

    fn push_front(&mut self, e: T) {
        match self.chunks.front_mut() {
            Some(c) if c.len() < CHUNK => c.push_front(e),
            _ => self.chunks.push_front(VecDeque::from([e])),
        }
        self.len += 1;
    }

    fn pop_front(&mut self) -> Option<T> {
        let c = self.chunks.front_mut()?;
        let e = c.pop_front()?;
        // An emptied chunk goes unless it is the last (kept, with its
        // capacity, for the next messages).
        if c.is_empty() && self.chunks.len() > 1 {
            self.chunks.pop_front();
        }
        self.len -= 1;
        Some(e)
    }

    /// Takes the first `n` entries (all, if fewer).
    fn take_front(&mut self, n: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(n.min(self.len));
        while out.len() < n
            && let Some(e) = self.pop_front()
        {
            out.push(e);
        }
        out
    }

    /// Takes every entry, in order.
    fn take_all(&mut self) -> impl Iterator<Item = T> + use<T> {
        self.len = 0;
        std::mem::take(&mut self.chunks).into_iter().flatten()
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

/// One priority level. Never-delivered messages are, in order, `fresh`
/// (in memory, the head), `pages` (on disk) and `tail` (in memory,
/// gathering the next page); `fresh` is empty only when the other two
/// are, so the head is always in memory.
#[derive(Debug, Default)]
struct Level {
    fresh: Chunked<Entry>,
    pages: VecDeque<PageRef>,
    tail: Chunked<Entry>,
    tail_bytes: usize,
    /// After a page could not be written: the tail length at which to
    /// try again.
    retry_at: usize,
    returned: BTreeMap<u64, Entry>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.fresh.is_empty() && self.returned.is_empty()
    }

    /// Whether the head is in `returned`.
    fn head_returned(&self) -> bool {
        match (self.fresh.front(), self.returned.first_key_value()) {
            (Some(f), Some((&r, _))) => r < f.seq,
            (None, Some(_)) => true,
            (_, None) => false,
        }
    }

    fn peek(&self) -> Option<&Entry> {
        if self.head_returned() {
            self.returned.first_key_value().map(|(_, e)| e)
        } else {
            self.fresh.front()
        }
    }
}

/// The ready messages of one queue.
#[derive(Debug)]
pub struct Ready {
    /// One level per priority, highest last.
    levels: Vec<Level>,
    /// Quorum queues: requeued messages wait here, in the order they came
    /// back, and are served before every other message (`None`: they go
    /// back to their place).
    returns: Option<VecDeque<Entry>>,
    len: usize,
    next_seq: u64,
    bytes: usize,
    /// Where pages go (`None`: everything stays in memory).
    pager: Option<Pager>,
    /// Ready messages on disk, and their body bytes.
    paged_len: usize,
    paged_bytes: usize,
    /// The bytes in memory last reported to the pager.
    reported: usize,
}

impl Default for Ready {
    fn default() -> Self {
        Ready::new()
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        if let Some(pager) = &self.pager {
            pager.report(self.reported, 0);
            for l in &mut self.levels {
                for p in l.pages.drain(..) {
                    pager.discard(p);
                }
            }
        }
    }
}

impl Ready {
    /// An empty queue without priorities.
    pub fn new() -> Self {
        Ready::with_priorities(0)
    }

    /// An empty queue with priorities 0 to `max` (`x-max-priority`).
    pub fn with_priorities(max: u8) -> Self {
        Ready {
            levels: (0..=max).map(|_| Level::default()).collect(),
            returns: None,
            len: 0,
            next_seq: 0,
            bytes: 0,
            pager: None,
            paged_len: 0,
            paged_bytes: 0,
            reported: 0,
        }
    }

    /// An empty queue that serves requeued messages first, in the order
    /// they came back (a quorum queue's returns).
    pub fn returns_first() -> Self {
        let mut r = Ready::new();
        r.returns = Some(VecDeque::new());
        r
    }

    /// The same queue, paging through `pager` beyond its window
    /// ([`crate::paging`]).
    pub fn paged(mut self, pager: Option<Pager>) -> Self {
        self.pager = pager;
        self
    }

    /// Ready messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no message is ready.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Body bytes of the ready messages.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Ready messages paged out to disk.
    pub fn paged_len(&self) -> usize {
        self.paged_len
    }

    /// Body bytes of the ready messages paged out to disk.
    pub fn paged_bytes(&self) -> usize {
        self.paged_bytes
    }

    /// The level a message of this priority goes to: priorities above the
    /// queue's maximum count as the maximum.
    pub fn level_of(&self, priority: Option<u8>) -> u8 {
        let max = (self.levels.len() - 1) as u8;
        priority.unwrap_or(0).min(max)
    }

    /// Appends a recovered message (redelivered if it was delivered
    /// before the restart; expiring when its TTL, counted from its arrival,
    /// runs out).
    pub fn push_recovered(&mut self, msg: Msg, redelivered: bool, expires: Option<Instant>) {
        self.append(msg, redelivered, expires);
    }

    /// Appends a new message at the tail of its level.
    pub fn push(&mut self, msg: Msg, expires: Option<Instant>) -> u64 {
        self.append(msg, false, expires)
    }

    /// Bytes its ready messages hold in memory (bodies and overhead).
    pub fn memory(&self) -> usize {
        let in_memory = self.len - self.paged_len;
        self.bytes - self.paged_bytes + in_memory * MESSAGE_OVERHEAD as usize
    }

    /// Tells the pager how much memory the queue holds now.
    fn report(&mut self) {
        if let Some(p) = &self.pager {
            let now = self.memory();
            p.report(self.reported, now);
            self.reported = now;
        }
    }

    fn append(&mut self, msg: Msg, redelivered: bool, expires: Option<Instant>) -> u64 {
        let seq = self.append_unreported(msg, redelivered, expires);
        self.report();
        seq
    }

    fn append_unreported(&mut self, msg: Msg, redelivered: bool, expires: Option<Instant>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let size = msg.size();
        let level = self.level_of(msg.priority());
        let over = self.pager.as_ref().is_some_and(|p| {
            let in_memory = self.len - self.paged_len;
            (in_memory >= p.paging.window_messages || self.memory() >= p.paging.window_bytes)
                && p.over_budget()
        });
        self.bytes += size;
        self.len += 1;
        let e = Entry {
            seq,
            msg,
            redelivered,
            level,
            expires: expires.into(),
            returns: 0,
        };
        let l = &mut self.levels[usize::from(level)];
        if l.pages.is_empty() && l.tail.is_empty() && (!over || l.fresh.is_empty()) {
            l.fresh.push_back(e);
            return seq;
        }
        l.tail_bytes += size;
        l.tail.push_back(e);
        // The tail goes to disk a page at a time while the queues are
        // over the memory budget; under it, it waits in memory.
        while let Some(pager) = &self.pager
            && (l.tail.len() >= pager.paging.page_messages
                || l.tail_bytes >= pager.paging.page_bytes)
            && l.tail.len() >= l.retry_at
            && pager.over_budget()
        {
            let (mut n, mut bytes) = (0, 0);
            for e in l.tail.iter() {
                if n == pager.paging.page_messages || (n > 0 && bytes >= pager.paging.page_bytes) {
                    break;
                }
                n += 1;
                bytes += e.msg.size();
            }
            match pager.write(l.tail.take_front(n)) {
                Ok(page) => {
                    self.paged_len += page.count;
                    self.paged_bytes += page.bytes;
                    l.tail_bytes = l.tail_bytes.saturating_sub(page.bytes);
                    l.retry_at = 0;
                    l.pages.push_back(page);
                }
                Err(back) => {
                    for e in back.into_iter().rev() {
                        l.tail.push_front(e);
                    }
                    l.retry_at = l.tail.len() * 2;
                    break;
                }
            }
        }
        seq
    }

    /// Brings the next page (or the tail) of `level` to its head once the
    /// head is empty. A page that cannot be read back loses its messages.
    fn refill(&mut self, level: usize) {
        let l = &mut self.levels[level];
        while l.fresh.is_empty() {
            let Some(page) = l.pages.pop_front() else {
                l.fresh = std::mem::take(&mut l.tail);
                l.tail_bytes = 0;
                l.retry_at = 0;
                return;
            };
            let (count, bytes) = (page.count, page.bytes);
            self.paged_len -= count;
            self.paged_bytes -= bytes;
            match self.pager.as_ref().and_then(|p| p.read(page)) {
                Some(entries) => l.fresh = entries.into(),
                None => {
                    self.len -= count;
                    self.bytes -= bytes;
                }
            }
        }
    }

    /// Puts a delivered message back in its original place, marked
    /// redelivered.
    pub fn requeue(&mut self, mut e: Entry) {
        e.redelivered = true;
        self.bytes += e.msg.size();
        self.len += 1;
        if let Some(r) = &mut self.returns {
            r.push_back(e);
        } else {
            let level = usize::from(e.level).min(self.levels.len() - 1);
            self.levels[level].returned.insert(e.seq, e);
        }
        self.report();
    }

    fn top(&self) -> Option<usize> {
        self.levels.iter().rposition(|l| !l.is_empty())
    }

    /// The head message (of the highest non-empty level), without taking
    /// it.
    pub fn peek(&self) -> Option<&Entry> {
        if let Some(e) = self.returns.as_ref().and_then(VecDeque::front) {
            return Some(e);
        }
        self.levels[self.top()?].peek()
    }

    /// Takes the head message.
    pub fn pop(&mut self) -> Option<Entry> {
        let e = match self.returns.as_mut().and_then(VecDeque::pop_front) {
            Some(e) => e,
            None => {
                let top = self.top()?;
                let l = &mut self.levels[top];
                if l.head_returned() {
                    l.returned.pop_first()?.1
                } else {
                    let e = l.fresh.pop_front()?;
                    if l.fresh.is_empty() {
                        self.refill(top);
                    }
                    e
                }
            }
        };
        self.len -= 1;
        self.bytes -= e.msg.size();
        self.report();
        Some(e)
    }

    /// Takes the head message if it has expired by `now` (only the head,
    /// the one a consumer would get next: an expired lower-priority message
    /// waits, counted, as in RabbitMQ).
    pub fn pop_expired(&mut self, now: Instant) -> Option<Entry> {
        if self.peek()?.expires.get().is_none_or(|t| t > now) {
            return None;
        }
        self.pop()
    }

    /// When the head expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.peek()?.expires.get()
    }

    /// Removes ready messages and returns them: every one in memory, and
    /// the pages on disk up to the first that holds a persistent message
    /// (read back); pages without one are dropped unread, as nothing needs
    /// them. Call until [`is_empty`](Self::is_empty) (each call takes at
    /// least one page).
    pub fn drain_batch(&mut self) -> Vec<Entry> {
        let mut out = Vec::new();
        if let Some(r) = &mut self.returns {
            out.extend(r.drain(..));
        }
        for l in &mut self.levels {
            out.extend(l.fresh.take_all());
            out.extend(std::mem::take(&mut l.returned).into_values());
            out.extend(l.tail.take_all());
            l.tail_bytes = 0;
            l.retry_at = 0;
        }
        let taken: usize = out.iter().map(|e| e.msg.size()).sum();
        self.len -= out.len();
        self.bytes -= taken;
        'levels: for l in &mut self.levels {
            while let Some(page) = l.pages.pop_front() {
                let (count, bytes) = (page.count, page.bytes);
                self.paged_len -= count;
                self.paged_bytes -= bytes;
                self.len -= count;
                self.bytes -= bytes;
                let Some(pager) = &self.pager else { continue };
                if page.persistent {
                    out.extend(pager.read(page).unwrap_or_default());
                    break 'levels;
                }
                pager.discard(page);
            }
        }
        self.report();
        out
    }

    /// Removes every ready message; returns how many there were.
    pub fn purge(&mut self) -> usize {
        let n = self.len;
        while !self.is_empty() {
            self.drain_batch();
        }
        n
    }
}

/// Where a stream consumer starts (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    /// The first message still in the stream.
    First,
    /// The last message (RabbitMQ: the last chunk; here every message is
    /// a chunk of its own).
    Last,
    /// The next message published (the default).
    Next,
    /// This offset (clamped to what the stream holds).
    Offset(u64),
    /// The first message published at or after this time (ms since the
    /// Unix epoch).
    Since(u64),
}

/// A message in a stream.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    /// Its offset.
    pub offset: u64,
    /// When it was appended, ms since the Unix epoch.
    pub at_ms: u64,
    /// The message.
    pub msg: Msg,
    /// Its record in the message store, if persisted.
    pub id: Option<u64>,
}

/// Bytes a message counts for in a stream's segments (body plus an
/// overhead, as a segment file would hold it).
fn stream_size(msg: &Msg) -> u64 {
    msg.size() as u64 + 64
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    first: u64,
    bytes: u64,
    last_ms: u64,
}

/// A stream queue's log: messages in offset order, read without being
/// removed, in segments that retention deletes whole (the oldest first,
/// never the one being written), as RabbitMQ's osiris does.
#[derive(Debug, Default)]
pub struct StreamLog {
    entries: VecDeque<StreamEntry>,
    segments: VecDeque<Segment>,
    next: u64,
    bytes: u64,
}

impl StreamLog {
    /// An empty stream.
    pub fn new() -> Self {
        StreamLog::default()
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Body bytes held.
    pub fn body_bytes(&self) -> usize {
        self.entries.iter().map(|e| e.msg.size()).sum()
    }

    /// Bytes held, counting each message's overhead (kept as it goes).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The offset the next message gets.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// The first offset still held (the next one when empty).
    pub fn first_offset(&self) -> u64 {
        self.entries.front().map_or(self.next, |e| e.offset)
    }

    /// Appends a message at `offset` (at least the next one: a recovered
    /// stream keeps its offsets) in the segment being written, or in a new
    /// one when that holds `segment_size` bytes or more. Returns the offset.
    pub fn append_at(
        &mut self,
        offset: u64,
        msg: Msg,
        at_ms: u64,
        segment_size: u64,
        id: Option<u64>,
    ) -> u64 {
        let offset = offset.max(self.next);
        let size = stream_size(&msg);
        match self.segments.back_mut() {
            Some(s) if s.bytes < segment_size.max(1) => {
                s.bytes += size;
                s.last_ms = s.last_ms.max(at_ms);
            }
            _ => self.segments.push_back(Segment {
                first: offset,
                bytes: size,
                last_ms: at_ms,
            }),
        }
        self.bytes += size;
        self.entries.push_back(StreamEntry {
            offset,
            at_ms,
            msg,
            id,
        });
        self.next = offset + 1;
        offset
    }

    /// Appends a message at the next offset.
    pub fn append(&mut self, msg: Msg, at_ms: u64, segment_size: u64) -> u64 {
        self.append_at(self.next, msg, at_ms, segment_size, None)
    }

    /// The message at `offset`, if held.
    pub fn get(&self, offset: u64) -> Option<&StreamEntry> {
        let first = self.entries.front()?.offset;
        let i = usize::try_from(offset.checked_sub(first)?).ok()?;
        let e = self.entries.get(i)?;
        // Offsets are contiguous except after a recovery's gaps.
        if e.offset == offset {
            Some(e)
        } else {
            self.entries.iter().find(|e| e.offset == offset)
        }
    }

    /// The first held offset at or after `offset` (`offset` itself when
    /// it is not written yet: a reader past the end waits for it).
    pub fn at_or_after(&self, offset: u64) -> u64 {
        if offset >= self.next || self.get(offset).is_some() {
            return offset;
        }
        let i = self.entries.partition_point(|e| e.offset < offset);
        self.entries.get(i).map_or(self.next, |e| e.offset)
    }

    /// Where a consumer starting at `start` reads first.
    pub fn start(&self, start: StreamStart) -> u64 {
        match start {
            StreamStart::First => self.first_offset(),
            StreamStart::Last => self.entries.back().map_or(self.next, |e| e.offset),
            StreamStart::Next => self.next,
            StreamStart::Offset(o) => self.at_or_after(o.max(self.first_offset())),
            StreamStart::Since(ms) => {
                let i = self.entries.partition_point(|e| e.at_ms < ms);
                self.entries.get(i).map_or(self.next, |e| e.offset)
            }
        }
    }

    /// Deletes whole segments, oldest first and never the one being
    /// written, while the stream holds more than `max_bytes` or the
    /// segment's newest message is older than `max_age_ms` at `now_ms`.
    /// Returns the messages deleted.
    pub fn retain(
        &mut self,
        max_bytes: Option<u64>,
        max_age_ms: Option<u64>,
        now_ms: u64,
    ) -> Vec<StreamEntry> {
        let mut gone = Vec::new();
        while self.segments.len() > 1 {
            let s = self.segments[0];
            let over = max_bytes.is_some_and(|m| self.bytes > m);
            let old = max_age_ms.is_some_and(|a| s.last_ms.saturating_add(a) < now_ms);
            if !(over || old) {
                break;
            }
            self.segments.pop_front();
            let end = self.segments.front().map_or(self.next, |n| n.first);
            while self.entries.front().is_some_and(|e| e.offset < end) {
                if let Some(e) = self.entries.pop_front() {
                    gone.push(e);
                }
            }
            self.bytes -= s.bytes;
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{MemPages, Paging};
    use std::time::Duration;

    fn msg(body: &'static str, priority: Option<u8>) -> Msg {
        Msg::new(
            b"",
            b"",
            &BasicProperties {
                priority,
                ..Default::default()
            },
            Bytes::from_static(body.as_bytes()),
        )
    }

    /// Messages a publisher sends alike share their route; a change of
    /// exchange or routing key, a large body or a store id gets a copy,
    /// and no message sees another's.
    #[test]
    fn messages_published_alike_share_their_route_copied_on_write() {
        let mut r = Routes::default();
        let p = BasicProperties::default();
        let small = || Bytes::from_static(b"body");
        let a = r.msg(b"ex", b"key", encode(&p), small());
        let mut b = r.msg(b"ex", b"key", encode(&p), small());
        assert!(Arc::ptr_eq(&a.ext, &b.ext));
        let c = r.msg(b"ex", b"other", encode(&p), small());
        let d = r.msg(b"ex2", b"other", encode(&p), small());
        assert!(!Arc::ptr_eq(&a.ext, &c.ext) && !Arc::ptr_eq(&c.ext, &d.ext));
        assert_eq!((c.exchange(), c.routing_key()), (&b"ex"[..], &b"other"[..]));
        assert_eq!(
            (d.exchange(), d.routing_key()),
            (&b"ex2"[..], &b"other"[..])
        );
        b.set_persist(Some(7));
        b.set_bcc(vec![ShortString::from_static("cc")]);
        assert_eq!((a.persist(), a.bcc().len()), (None, 0));
        assert_eq!((b.persist(), b.bcc().len()), (Some(7), 1));
        assert_eq!((b.exchange(), b.routing_key()), (&b"ex"[..], &b"key"[..]));
        let large = Bytes::from(vec![3u8; crate::core::COMPACT_BELOW]);
        let e = r.msg(b"ex2", b"other", encode(&p), large.clone());
        assert_eq!(e.body(), &large[..]);
        assert_eq!(d.body(), b"body");
        let f = r.msg(b"ex2", b"other", encode(&p), small());
        assert!(Arc::ptr_eq(&d.ext, &f.ext), "the large body stays its own");
        // A 255-byte cap, as the wire has.
        let long = r.msg(&[b'x'; 300], b"k", encoded(&[0, 0]), small());
        assert_eq!(long.exchange().len(), 255);
    }

    /// The flags read straight off the wire form agree with the decoded
    /// properties, whatever comes before them; every part comes back.
    #[test]
    fn a_message_keeps_its_parts_and_reads_its_flags_right() {
        let mut headers = amqp_types::FieldTable::new();
        headers.insert("k", "v");
        for mask in 0u32..64 {
            let on = |b: u32| mask & (1 << b) != 0;
            let p = BasicProperties {
                content_type: on(0).then(|| ShortString::from_static("text/plain")),
                content_encoding: on(1).then(|| ShortString::from_static("gzip")),
                headers: on(2).then(|| headers.clone()),
                delivery_mode: on(3).then_some(if on(5) { 2 } else { 1 }),
                priority: on(4).then_some(7),
                expiration: on(5).then(|| ShortString::from_static("60000")),
                message_id: on(1).then(|| ShortString::from_static("id")),
                ..Default::default()
            };
            for size in [0usize, 16, crate::core::COMPACT_BELOW] {
                let body = Bytes::from(vec![mask as u8; size]);
                let mut m = Msg::new(b"ex", b"rk", &p, body.clone());
                assert_eq!(m.is_persistent(), p.is_persistent(), "{p:?}");
                assert_eq!(m.priority(), p.priority, "{p:?}");
                assert_eq!(m.has_expiration(), p.expiration.is_some());
                assert_eq!(m.expiration_ms(), p.expiration.as_ref().map(|_| 60000));
                assert_eq!(m.properties(), p);
                assert_eq!((m.exchange(), m.routing_key()), (&b"ex"[..], &b"rk"[..]));
                assert_eq!(m.body(), &body[..]);
                assert_eq!(m.body_bytes(), body);
                assert_eq!(m.persist(), None);
                m.set_persist(Some(9));
                m.set_bcc(vec![ShortString::from_static("b")]);
                let other = m.with_properties(&BasicProperties::default());
                assert_eq!((other.persist(), other.bcc().len()), (Some(9), 1));
                assert_eq!(other.body(), &body[..]);
                assert_eq!(other.properties(), BasicProperties::default());
            }
        }
        // A small message is 24 bytes and one allocation.
        assert_eq!(std::mem::size_of::<Msg>(), 24);
        assert_eq!(std::mem::size_of::<Entry>(), 48);
    }

    /// Queues page past their windows only while all of them together
    /// hold more than the memory budget; pages are page-sized however
    /// long the tail grew meanwhile; a queue that drains lets the others
    /// stop paging.
    #[test]
    fn queues_page_past_their_window_only_over_the_shared_budget() {
        let one = 1 + MESSAGE_OVERHEAD as usize; // a 1-byte body in memory
        let pager = Pager::new(
            Box::<MemPages>::default(),
            Paging {
                window_messages: 2,
                window_bytes: 1 << 20,
                page_messages: 3,
                page_bytes: 1 << 20,
                memory_budget: 20 * one,
            },
        );
        let mut a = Ready::new().paged(Some(pager.clone()));
        let mut b = Ready::new().paged(Some(pager.clone()));
        for _ in 0..12 {
            a.push(msg("a", None), None);
        }
        // 12 messages, past the window of 2, under the budget of 20.
        assert_eq!((a.paged_len(), pager.held()), (0, 12 * one));
        for _ in 0..12 {
            b.push(msg("b", None), None);
        }
        // Past the budget from b's 9th message: b's own messages beyond
        // its window page, 3 at a time; a's stay.
        assert_eq!(a.paged_len(), 0);
        assert!(
            b.paged_len() > 0 && b.paged_len().is_multiple_of(3),
            "{}",
            b.paged_len()
        );
        assert_eq!(pager.held(), a.memory() + b.memory());
        assert!(pager.held() <= 20 * one + 3 * one, "{}", pager.held());
        // a drains: b's next messages stay in memory.
        while a.pop().is_some() {}
        let paged = b.paged_len();
        for _ in 0..6 {
            b.push(msg("b", None), None);
        }
        assert_eq!(b.paged_len(), paged);
        assert_eq!(pager.held(), b.memory());
        // Every message comes back, in order.
        let mut n = 0;
        while let Some(e) = b.pop() {
            assert_eq!(e.seq, n);
            n += 1;
        }
        assert_eq!(n, 18);
        drop(b);
        drop(a);
        assert_eq!(pager.held(), 0);
    }

    /// A chunked queue behaves as a `VecDeque` under every operation,
    /// across chunk boundaries, and wastes at most one chunk besides the
    /// one being consumed.
    #[test]
    fn a_chunked_queue_is_a_fifo() {
        let mut rng = crate::testing::SplitMix(7);
        let mut c: Chunked<u64> = Chunked::default();
        let mut m: VecDeque<u64> = VecDeque::new();
        let mut next = 0;
        for step in 0..200_000u64 {
            match rng.below(100) {
                // Grow and shrink in long runs, so chunks fill and empty.
                r if r < if (step / 5000) % 2 == 0 { 70 } else { 30 } => {
                    c.push_back(next);
                    m.push_back(next);
                    next += 1;
                }
                r if r < 95 => assert_eq!(c.pop_front(), m.pop_front()),
                96 => {
                    c.push_front(next);
                    m.push_front(next);
                    next += 1;
                }
                97 => {
                    let n = rng.below(3000) as usize;
                    let want: Vec<u64> = m.drain(..n.min(m.len())).collect();
                    assert_eq!(c.take_front(n), want);
                }
                98 if rng.below(50) == 0 => {
                    assert!(c.take_all().eq(m.drain(..)));
                }
                _ => {
                    let v: Vec<u64> = (0..rng.below(5000)).map(|i| next + i).collect();
                    next += v.len() as u64;
                    if c.is_empty() {
                        m = v.iter().copied().collect();
                        c = v.into();
                    }
                }
            }
            assert_eq!(c.len(), m.len());
            assert_eq!(c.front(), m.front());
            // Room to spare: the chunk being consumed (its room already
            // used), the one being filled, and a page read back whole.
            let spare: usize = c
                .chunks
                .iter()
                .skip(1)
                .map(|k| k.capacity() - k.len())
                .sum();
            assert!(spare <= 2 * CHUNK + 5000, "{spare} spare slots");
        }
        assert!(c.iter().eq(m.iter()));
    }

    #[test]
    fn an_expiry_keeps_its_instant_to_the_nanosecond() {
        let base = Expiry::base();
        assert_eq!(Expiry::from(None).get(), None);
        assert_eq!(Expiry::NEVER.get(), None);
        for t in [
            base,
            base + Duration::from_nanos(1),
            base + Duration::from_secs(86_400 * 365 * 100),
            base.checked_sub(Duration::from_nanos(1)).unwrap_or(base),
            base.checked_sub(Duration::from_secs(3600)).unwrap_or(base),
        ] {
            assert_eq!(Expiry::from(Some(t)).get(), Some(t));
        }
        // Order between two expiries is the order of their instants.
        let (a, b) = (
            base + Duration::from_millis(1),
            base + Duration::from_millis(2),
        );
        assert!(Expiry::from(Some(a)).get() < Expiry::from(Some(b)).get());
    }

    fn bodies(r: &mut Ready) -> Vec<(String, bool)> {
        std::iter::from_fn(|| r.pop())
            .map(|e| {
                (
                    String::from_utf8(e.msg.body().to_vec()).unwrap(),
                    e.redelivered,
                )
            })
            .collect()
    }

    #[test]
    fn requeued_messages_go_back_to_their_place() {
        let mut r = Ready::new();
        for b in ["a", "b", "c", "d"] {
            r.push(msg(b, None), None);
        }
        let a = r.pop().unwrap();
        let b = r.pop().unwrap();
        let c = r.pop().unwrap();
        r.requeue(c);
        r.requeue(a);
        assert_eq!(r.len(), 3);
        assert_eq!(r.bytes(), 3);
        r.push(msg("e", None), None);
        drop(b);
        assert_eq!(
            bodies(&mut r),
            [
                ("a".into(), true),
                ("c".into(), true),
                ("d".into(), false),
                ("e".into(), false)
            ]
        );
        assert!(r.is_empty());
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn quorum_returns_are_served_first_in_the_order_they_came_back() {
        let mut r = Ready::returns_first();
        for b in ["a", "b", "c", "d"] {
            r.push(msg(b, None), None);
        }
        let a = r.pop().unwrap();
        let b = r.pop().unwrap();
        r.requeue(b);
        r.requeue(a);
        assert_eq!(r.len(), 4);
        assert_eq!(
            bodies(&mut r),
            [
                ("b".into(), true),
                ("a".into(), true),
                ("c".into(), false),
                ("d".into(), false)
            ]
        );
        r.push(msg("e", None), None);
        let e = r.pop().unwrap();
        r.requeue(e);
        assert_eq!(r.drain_batch().len(), 1);
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn a_stream_is_read_from_any_offset_and_loses_whole_old_segments() {
        let mut s = StreamLog::new();
        assert_eq!(s.start(StreamStart::First), 0);
        for i in 0..10 {
            // 100 ms apart; segments of two messages (64 + 1 bytes each,
            // a segment takes more while it holds fewer than 100 bytes).
            assert_eq!(s.append(msg("x", None), 1_000 + i * 100, 100), i);
        }
        assert_eq!(s.start(StreamStart::First), 0);
        assert_eq!(s.start(StreamStart::Last), 9);
        assert_eq!(s.start(StreamStart::Next), 10);
        assert_eq!(s.start(StreamStart::Offset(4)), 4);
        assert_eq!(
            s.start(StreamStart::Offset(400)),
            400,
            "waits for offset 400"
        );
        assert_eq!(s.start(StreamStart::Since(1_450)), 5);
        assert_eq!(s.start(StreamStart::Since(0)), 0);
        // At most 4 messages' bytes: whole segments go, oldest first.
        let gone = s.retain(Some(4 * 65), None, 0);
        assert_eq!(
            gone.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5]
        );
        assert_eq!((s.first_offset(), s.len()), (6, 4));
        assert_eq!(
            s.start(StreamStart::Offset(2)),
            6,
            "an offset gone reads from the first"
        );
        assert!(s.get(5).is_none() && s.get(6).is_some());
        // By age: every segment whose newest message is too old, but
        // never the last one.
        let gone = s.retain(None, Some(50), 10_000);
        assert_eq!(gone.len(), 2);
        assert_eq!((s.first_offset(), s.next_offset()), (8, 10));
        assert!(s.retain(None, Some(1), u64::MAX).is_empty());
        // A recovered stream keeps its offsets.
        let mut r = StreamLog::new();
        r.append_at(42, msg("y", None), 0, 100, Some(7));
        assert_eq!(r.get(42).and_then(|e| e.id), Some(7));
        assert_eq!((r.first_offset(), r.next_offset()), (42, 43));
        assert_eq!(r.append(msg("z", None), 0, 100), 43);
    }

    /// Random pushes (random priorities), pops and requeues against a
    /// model: a pop takes the highest level, and within it the lowest
    /// position (requeued messages back in their place); a quorum queue's
    /// returns come first in the order they came back. 200 seeds.
    #[test]
    fn pops_follow_priority_then_position_against_a_model() {
        for seed in 1..=200u64 {
            let mut rng = crate::testing::SplitMix(seed);
            let mut rnd = move |n: u64| rng.below(n);
            let quorum = seed % 4 == 0;
            let max = if quorum { 0 } else { rnd(6) as u8 };
            let mut r = if quorum {
                Ready::returns_first()
            } else {
                Ready::with_priorities(max)
            };
            // Half the seeds page through a tiny window (pages of 1 to 4
            // messages, some writes refused), so that the head, pages and
            // tail of every level are exercised against the same model.
            let pager = (seed % 2 == 1).then(|| {
                Pager::new(
                    Box::new(MemPages::default().failing_writes(seed % 7 == 1)),
                    Paging {
                        window_messages: 1 + rnd(4) as usize,
                        window_bytes: 1 << 20,
                        page_messages: 1 + rnd(4) as usize,
                        page_bytes: 1 << 20,
                        // Some seeds page only past a memory budget.
                        memory_budget: if seed % 3 == 0 { 0 } else { rnd(1500) as usize },
                    },
                )
            });
            r = r.paged(pager.clone());
            let mut paged_max = 0;
            let mut held_max = 0;
            // Model: ready (seq, level), returns in order, and taken ones.
            let mut ready: Vec<(u64, u8)> = Vec::new();
            let mut returns: Vec<u64> = Vec::new();
            let mut taken: Vec<Entry> = Vec::new();
            // 300 random steps, then 300 pops (that drain it).
            for step in 0..600 {
                match if step < 300 { rnd(10) } else { 5 } {
                    0..=3 => {
                        let p = (rnd(3) > 0).then(|| rnd(12) as u8);
                        let seq = r.push(msg("m", p), None);
                        ready.push((seq, p.unwrap_or(0).min(max)));
                    }
                    4..=6 => {
                        let want = if let Some(&s) = returns.first() {
                            returns.remove(0);
                            Some(s)
                        } else {
                            let best = ready
                                .iter()
                                .copied()
                                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
                            best.map(|(s, _)| {
                                ready.retain(|e| e.0 != s);
                                s
                            })
                        };
                        let got = r.pop();
                        assert_eq!(got.as_ref().map(|e| e.seq), want, "seed {seed}");
                        taken.extend(got);
                    }
                    _ if !taken.is_empty() => {
                        let e = taken.swap_remove(rnd(taken.len() as u64) as usize);
                        if quorum {
                            returns.push(e.seq);
                        } else {
                            ready.push((e.seq, e.level));
                        }
                        r.requeue(e);
                    }
                    _ => {}
                }
                assert_eq!(r.len(), ready.len() + returns.len(), "seed {seed}");
                paged_max = paged_max.max(r.paged_len());
                if let Some(p) = &pager {
                    // The pager's count is the queue's own, at every step.
                    assert_eq!(p.held(), r.memory(), "seed {seed}");
                    held_max = held_max.max(p.held());
                }
            }
            if let Some(p) = pager {
                let stats = p.stats();
                if seed % 7 == 1 {
                    assert_eq!(stats.written, 0, "seed {seed}");
                } else if held_max > p.paging.memory_budget + 2 * MESSAGE_OVERHEAD as usize {
                    assert!(paged_max > 0 && stats.read > 0, "seed {seed}: {stats:?}");
                } else {
                    // Never over the budget: nothing went to disk.
                    assert_eq!(stats.written, 0, "seed {seed}: {stats:?}");
                }
                assert_eq!(p.held(), 0, "seed {seed}");
                assert!(r.is_empty(), "seed {seed}");
                assert_eq!((r.paged_len(), p.stats().pages), (0, 0), "seed {seed}");
            }
        }
    }

    #[test]
    fn a_lost_page_loses_its_messages_and_only_them() {
        let store = MemPages::default();
        let pager = Pager::new(
            Box::new(store),
            Paging {
                window_messages: 2,
                window_bytes: 1 << 20,
                page_messages: 2,
                page_bytes: 1 << 20,
                memory_budget: 0,
            },
        );
        let mut r = Ready::new().paged(Some(pager.clone()));
        for b in ["a", "b", "c", "d", "e", "f", "g"] {
            r.push(msg(b, None), None);
        }
        // a b in memory; c d and e f paged; g in the tail.
        assert_eq!((r.len(), r.paged_len()), (7, 4));
        assert_eq!(pager.stats().pages, 2);
        drop(r);
        assert_eq!(pager.stats().pages, 0, "a dropped queue discards its pages");

        let corrupt = Pager::new(
            Box::new(MemPages::default().corrupting(true)),
            Paging {
                window_messages: 1,
                window_bytes: 1 << 20,
                page_messages: 2,
                page_bytes: 1 << 20,
                memory_budget: 0,
            },
        );
        let mut r = Ready::new().paged(Some(corrupt.clone()));
        for b in ["a", "b", "c", "d"] {
            r.push(msg(b, None), None);
        }
        assert_eq!(r.pop().map(|e| e.msg.body_bytes()), Some(Bytes::from("a")));
        // b c were paged and are lost; d (the tail) follows.
        assert_eq!(r.len(), 1);
        assert_eq!(r.pop().map(|e| e.msg.body_bytes()), Some(Bytes::from("d")));
        assert_eq!(corrupt.stats().lost, 2);
        assert!(r.is_empty());
    }

    #[test]
    fn purge_reads_back_only_pages_with_persistent_messages() {
        let pager = Pager::new(
            Box::<MemPages>::default(),
            Paging {
                window_messages: 1,
                window_bytes: 1 << 20,
                page_messages: 2,
                page_bytes: 1 << 20,
                memory_budget: 0,
            },
        );
        let mut r = Ready::new().paged(Some(pager.clone()));
        for i in 0..9u64 {
            let mut m = msg("m", None);
            m.set_persist((i == 5).then_some(42));
            r.push(m, None);
        }
        assert_eq!(r.paged_len(), 8);
        let mut got = Vec::new();
        while !r.is_empty() {
            got.extend(r.drain_batch().into_iter().map(|e| e.seq));
        }
        // The head (0), then the page holding message 5 (5 and 6); the
        // others were dropped unread.
        assert_eq!(got, [0, 5, 6]);
        assert_eq!(pager.stats().read, 1);
        assert_eq!(pager.stats().pages, 0);
    }

    #[test]
    fn purge_counts_both_parts() {
        let mut r = Ready::new();
        r.push(msg("x", None), None);
        r.push(msg("y", None), None);
        let x = r.pop().unwrap();
        r.requeue(x);
        assert_eq!(r.peek().unwrap().seq, 0);
        assert_eq!(r.purge(), 2);
        assert!(r.pop().is_none());
    }

    #[test]
    fn higher_priorities_first_fifo_within_and_capped_at_the_max() {
        let mut r = Ready::with_priorities(5);
        r.push(msg("low1", Some(1)), None);
        r.push(msg("none", None), None);
        r.push(msg("high1", Some(5)), None);
        r.push(msg("over", Some(200)), None);
        r.push(msg("low2", Some(1)), None);
        let h = r.pop().unwrap();
        assert_eq!(h.msg.body(), b"high1");
        r.requeue(h);
        let got: Vec<String> = bodies(&mut r).into_iter().map(|(b, _)| b).collect();
        assert_eq!(got, ["high1", "over", "low1", "low2", "none"]);
    }

    #[test]
    fn only_the_head_expires() {
        let t0 = Instant::now();
        let mut r = Ready::new();
        r.push(msg("long", None), Some(t0 + Duration::from_secs(10)));
        r.push(msg("short", None), Some(t0 + Duration::from_millis(1)));
        assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(10)));
        assert!(r.pop_expired(t0 + Duration::from_secs(1)).is_none());
        assert_eq!(r.len(), 2, "the expired message behind a live one stays");
        let e = r.pop_expired(t0 + Duration::from_secs(11)).unwrap();
        assert_eq!(e.msg.body(), b"long");
        assert!(r.pop_expired(t0 + Duration::from_secs(11)).is_some());
        assert!(r.is_empty());
        // Behind a higher priority that does not expire, a low one waits.
        let mut r = Ready::with_priorities(10);
        r.push(msg("hi", Some(9)), None);
        r.push(msg("lo", Some(1)), Some(t0));
        assert!(r.pop_expired(t0 + Duration::from_secs(1)).is_none());
        assert_eq!(r.next_expiry(), None);
        assert_eq!(r.len(), 2);
    }
}
