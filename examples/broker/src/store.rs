//! The message store: persistent messages of durable queues in an
//! append-only log of checksummed records, in segment files, with group
//! commit and recovery.
//!
//! * A record is `[payload length u32 LE][CRC-32 of payload u32 LE][payload]`;
//!   the payload is a kind byte and the record's fields. Kinds: a publish
//!   (message id, the durable queues it went to, exchange, routing key,
//!   properties as an AMQP content header frame, body), a removal (the
//!   message left one queue: acknowledged, dropped, expired,
//!   dead-lettered, purged or deleted with its queue) and a delivery
//!   marker (recovered messages come back `redelivered`).
//! * Segments are `NNNNNNNNNNNNNNNN.seg` files of at most
//!   [`SEGMENT_MAX`] bytes, written in order; a new one is started at every
//!   boot. A segment is deleted once every message published in it is
//!   gone and every older segment is deleted too (so no removal record is
//!   lost while the publish it cancels still exists).
//! * [`recover`] reads the segments in order: a torn or corrupt record at
//!   the end of the last segment is cut off (with a warning); damage
//!   elsewhere ends that segment's reading, is reported, and the other
//!   segments are still read. It never panics on any bytes. It then
//!   fsyncs the last segment: what it recovered stays recovered. The
//!   broker recovers in two passes ([`recover_each_on`]), one segment in
//!   memory at a time: the first learns which messages are alive in
//!   which queues (without decoding properties or copying bodies), the
//!   second decodes only those and streams them into their queues, which
//!   page; segments without a live message are read once.
//!
//! The writer ([`Log`]) is driven by the shell's store thread: it appends
//! what the core asked for, then one `fdatasync` covers every connection's
//! pending records (group commit); only then are the confirms released.
//!
//! Every file operation goes through the [`Disk`] trait
//! ([`crate::disk`]): create and append to a segment, `fdatasync`, list
//! the segments, read one, truncate a torn tail, remove, rename, sync the
//! directory. The broker runs on [`RealDisk`] (`std::fs`; `Log` defaults
//! to it, and [`recover`] and [`write_atomically`] use it). Tests and
//! fuzzers use [`SimDisk`] through [`Log::open_on`], [`recover_on`] and
//! [`write_atomically_on`]: an in-memory disk that, from a seed, tears
//! unsynced writes at a crash (a random prefix survives, sometimes with
//! garbage after it), loses unsynced directory operations, fails fsync
//! (`EIO`) and fills up (a write fails partway with `ENOSPC`). When
//! [`Log::append`] or [`Log::sync`] fails, the caller must stop releasing
//! confirms: nothing after the last successful sync is known durable
//! (`tests/disk_model.rs` checks exactly this across thousands of crashes).

pub use crate::disk::{Disk, RealDisk, SimDisk};
use crate::queue::Msg;
use amqp_types::{BasicProperties, ShortString};
use bytes::Bytes;
use std::collections::BTreeMap;
/// foldhash, randomly seeded, as the core's maps (SipHash showed in the
/// store thread's profile).
type HashMap<K, V> = std::collections::HashMap<K, V, crate::core::CoreHasher>;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest segment file, in bytes (a record may end past it).
pub const SEGMENT_MAX: u64 = 64 * 1024 * 1024;

/// A queue, as the store names it: (vhost, queue name), shared (a record
/// per publish and per ack names its queue: a clone is a count, not two
/// allocations).
pub type QueueKey = Arc<(String, ShortString)>;

/// The [`QueueKey`] of queue `name` in `vhost`.
pub fn queue_key(vhost: impl Into<String>, name: ShortString) -> QueueKey {
    Arc::new((vhost.into(), name))
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A persistent message routed to durable queues.
    Publish {
        /// The store's id for it.
        id: u64,
        /// The durable queues it went to.
        queues: Vec<QueueKey>,
        /// Exchange it was published to.
        exchange: ShortString,
        /// Routing key.
        routing_key: ShortString,
        /// Properties, in wire form ([`amqp_wire::encode_properties`]).
        properties: Bytes,
        /// Body.
        body: Bytes,
    },
    /// A persistent message's publish record, written from the message
    /// itself, without copying its parts: it encodes as the
    /// [`Record::Publish`] of the same parts, which is what reading it
    /// back gives.
    Message {
        /// The store's id for it.
        id: u64,
        /// The durable queues it went to.
        queues: Vec<QueueKey>,
        /// The message.
        msg: Msg,
        /// Properties to write instead of the message's own (with the
        /// arrival time, for a TTL that runs on across a restart).
        properties: Option<Bytes>,
    },
    /// Message `id` left `queue`.
    Remove {
        /// Message.
        id: u64,
        /// Queue.
        queue: QueueKey,
    },
    /// Message `id` was delivered from `queue` (it recovers redelivered).
    Delivered {
        /// Message.
        id: u64,
        /// Queue.
        queue: QueueKey,
    },
}

impl Record {
    /// The message the record is about.
    pub fn id(&self) -> u64 {
        match self {
            Record::Publish { id, .. }
            | Record::Message { id, .. }
            | Record::Remove { id, .. }
            | Record::Delivered { id, .. } => *id,
        }
    }
}

/// The messages that `records` publish and then remove from every queue
/// they went to ([`Log::append`] writes none of their records).
fn cancelled(records: &[Record]) -> std::collections::HashSet<u64, crate::core::CoreHasher> {
    let mut gone = std::collections::HashSet::default();
    if !records.iter().any(|r| matches!(r, Record::Remove { .. })) {
        return gone;
    }
    // id -> (its queues, a bit per queue it has left); a message of more
    // than 64 queues is always written.
    let mut open: HashMap<u64, (&[QueueKey], u64)> = HashMap::default();
    for r in records {
        match r {
            Record::Publish { id, queues, .. } | Record::Message { id, queues, .. } => {
                if !queues.is_empty() && queues.len() <= 64 {
                    open.insert(*id, (queues, 0));
                }
            }
            Record::Remove { id, queue } => {
                if let Some((queues, left)) = open.get_mut(id)
                    && let Some(at) = queues.iter().position(|q| q == queue)
                {
                    *left |= 1 << at;
                    if *left == u64::MAX >> (64 - queues.len()) {
                        gone.insert(*id);
                        open.remove(id);
                    }
                }
            }
            Record::Delivered { .. } => {}
        }
    }
    gone
}

const PUBLISH: u8 = 1;
const REMOVE: u8 = 2;
const DELIVERED: u8 = 3;

pub(crate) fn put_short(out: &mut Vec<u8>, s: &[u8]) {
    out.push(s.len().min(255) as u8);
    out.extend_from_slice(&s[..s.len().min(255)]);
}

/// Writes properties (as an AMQP content header frame) and body, each
/// length-prefixed.
pub(crate) fn put_content(out: &mut Vec<u8>, properties: &[u8], body: &[u8]) {
    let n = properties.len() + 12 + amqp_wire::FRAME_OVERHEAD;
    out.extend_from_slice(&(n as u32).to_le_bytes());
    amqp_wire::write_header_frame(out, 0, body.len() as u64, properties);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}

/// A publish record's fields.
fn put_publish(
    out: &mut Vec<u8>,
    id: u64,
    queues: &[QueueKey],
    exchange: &[u8],
    routing_key: &[u8],
    properties: &[u8],
    body: &[u8],
) {
    out.push(PUBLISH);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(queues.len() as u32).to_le_bytes());
    for q in queues {
        put_queue(out, q);
    }
    put_short(out, exchange);
    put_short(out, routing_key);
    put_content(out, properties, body);
}

fn put_queue(out: &mut Vec<u8>, q: &QueueKey) {
    put_short(out, q.0.as_bytes());
    put_short(out, q.1.as_bytes());
}

impl Record {
    /// Appends the record, framed and checksummed, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        match self {
            Record::Publish {
                id,
                queues,
                exchange,
                routing_key,
                properties,
                body,
            } => {
                put_publish(
                    out,
                    *id,
                    queues,
                    exchange.as_bytes(),
                    routing_key.as_bytes(),
                    properties,
                    body,
                );
            }
            Record::Message {
                id,
                queues,
                msg,
                properties,
            } => {
                let props = properties.as_deref().unwrap_or(msg.raw_properties());
                put_publish(
                    out,
                    *id,
                    queues,
                    msg.exchange(),
                    msg.routing_key(),
                    props,
                    msg.body(),
                );
            }
            Record::Remove { id, queue } | Record::Delivered { id, queue } => {
                out.push(if matches!(self, Record::Remove { .. }) {
                    REMOVE
                } else {
                    DELIVERED
                });
                out.extend_from_slice(&id.to_le_bytes());
                put_queue(out, queue);
            }
        }
        let len = (out.len() - start - 8) as u32;
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The input ends inside the record (a torn write).
    Truncated,
    /// The checksum does not match.
    Checksum,
    /// The checksum matches but the fields do not parse.
    Malformed(&'static str),
}

/// Reads the fields of a record's payload (and of a page's entries:
/// [`crate::paging`]); every read checks the length first.
pub(crate) struct Reader<'a> {
    pub(crate) b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Damage> {
        if self.b.len() < n {
            return Err(Damage::Malformed("field past the record's end"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, Damage> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, Damage> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, Damage> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }
    pub(crate) fn short(&mut self) -> Result<ShortString, Damage> {
        let n = self.u8()?;
        ShortString::from_bytes(self.take(usize::from(n))?)
            .map_err(|_| Damage::Malformed("short string"))
    }
    /// Properties (in wire form, checked) and body, as [`put_content`]
    /// writes them.
    pub(crate) fn content(&mut self) -> Result<(Bytes, Bytes), Damage> {
        let hlen = self.u32()? as usize;
        let header = self.take(hlen)?;
        // A content header frame: type, channel, size, class, weight, body
        // size, then the properties, then the end octet.
        let properties = match header {
            [2, _, _, s0, s1, s2, s3, 0, 60, _, _, rest @ .., 0xCE]
                if rest.len() >= 8
                    && u32::from_be_bytes([*s0, *s1, *s2, *s3]) as usize + 8 == header.len() =>
            {
                &rest[8..]
            }
            _ => return Err(Damage::Malformed("content header")),
        };
        let properties = Bytes::copy_from_slice(properties);
        let headers_table = amqp_wire::has_property(&properties, HEADERS);
        let ok = if headers_table {
            amqp_wire::decode_properties(&properties).is_ok()
        } else {
            amqp_wire::check_properties(&properties).is_ok()
        };
        if !ok {
            return Err(Damage::Malformed("content header"));
        }
        let blen = self.u32()? as usize;
        let body = Bytes::copy_from_slice(self.take(blen)?);
        Ok((properties, body))
    }
    fn queue(&mut self) -> Result<QueueKey, Damage> {
        let vhost = self.short()?;
        let name = self.short()?;
        Ok(queue_key(vhost.to_string_lossy(), name))
    }
}

/// The `headers` property's flag.
const HEADERS: u16 = amqp_wire::property_flag("headers");

/// The header a stream's stored record keeps its append time in (ms since
/// the epoch); removed again at recovery.
pub(crate) const STREAM_AT_HEADER: &str = "x-amqp-broker-stream-at";

/// The header a stored record with a TTL keeps its arrival time in (ms
/// since the epoch); removed again at recovery.
pub(crate) const ARRIVED_HEADER: &str = "x-amqp-broker-arrived";

/// Removes header `key` of stored properties, returning its integer value
/// (and no headers table at all when it was the only one).
pub(crate) fn take_private_header(p: &mut BasicProperties, key: &str) -> Option<u64> {
    let h = p.headers.as_mut()?;
    let v = h.remove(key);
    if h.is_empty() {
        p.headers = None;
    }
    v?.as_integer().and_then(|v| u64::try_from(v).ok())
}

/// Stored properties (wire form) without the private headers `keys`:
/// each one's integer value, and the properties left (the same bytes
/// when there is no headers table).
pub(crate) fn without_private<const N: usize>(
    properties: &Bytes,
    keys: [&str; N],
) -> ([Option<u64>; N], Bytes) {
    let mut values = [None; N];
    if !amqp_wire::has_property(properties, HEADERS) {
        return (values, properties.clone());
    }
    let Ok(mut p) = amqp_wire::decode_properties(properties) else {
        return (values, properties.clone());
    };
    for (v, k) in values.iter_mut().zip(keys) {
        *v = take_private_header(&mut p, k);
    }
    let mut out = Vec::new();
    let _ = amqp_wire::encode_properties(&p, &mut out);
    (values, out.into())
}

/// A message's publish record read back from `bytes` (exactly one record,
/// checksum verified): its id and the message (without the arrival
/// header).
pub(crate) fn decode_publish(bytes: &[u8]) -> Result<(u64, crate::queue::Msg), Damage> {
    match decode(bytes)? {
        (
            Record::Publish {
                id,
                exchange,
                routing_key,
                properties,
                body,
                ..
            },
            used,
        ) if used == bytes.len() => {
            let (_, properties) = without_private(&properties, [ARRIVED_HEADER]);
            let msg = crate::queue::Msg::with_encoded(
                exchange.as_bytes(),
                routing_key.as_bytes(),
                &properties,
                body,
            );
            Ok((id, msg))
        }
        _ => Err(Damage::Malformed("not one publish record")),
    }
}

/// The log's segments, read back at [`RecordAt`]s: the source of the pages
/// of recovered messages ([`crate::paging::RecordSource`]).
#[derive(Debug)]
pub struct Segments<D: Disk = RealDisk> {
    disk: D,
    dir: PathBuf,
}

impl<D: Disk> Segments<D> {
    /// The segments of the log in `dir` of `disk`.
    pub fn new(disk: D, dir: &Path) -> Segments<D> {
        Segments {
            disk,
            dir: dir.to_owned(),
        }
    }
}

impl<D: Disk + Send> crate::paging::RecordSource for Segments<D> {
    fn read(&mut self, segment: u64, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.disk
            .read_at(&segment_path(&self.dir, segment), offset, len)
    }
}

/// Reads one record from the front of `input`: the record and the bytes it
/// used.
pub fn decode(input: &[u8]) -> Result<(Record, usize), Damage> {
    decode_with(input, true, true)
}

/// [`decode`]; without `content`, a publish comes back with default
/// properties and an empty body (their lengths are still checked), which
/// costs no allocation for them; without `verify`, the checksum is not
/// computed (for bytes whose records were verified before).
fn decode_with(input: &[u8], content: bool, verify: bool) -> Result<(Record, usize), Damage> {
    if input.len() < 8 {
        return Err(Damage::Truncated);
    }
    let len = u32::from_le_bytes([input[0], input[1], input[2], input[3]]) as usize;
    let crc = u32::from_le_bytes([input[4], input[5], input[6], input[7]]);
    let Some(payload) = input.get(8..8 + len) else {
        return Err(Damage::Truncated);
    };
    if verify && crc32fast::hash(payload) != crc {
        return Err(Damage::Checksum);
    }
    let mut r = Reader { b: payload };
    let rec = match r.u8()? {
        PUBLISH => {
            let id = r.u64()?;
            let n = r.u32()? as usize;
            // Each queue takes at least two bytes: no allocation sized by
            // an unchecked count.
            let mut queues = Vec::with_capacity(n.min(r.b.len() / 2));
            for _ in 0..n {
                queues.push(r.queue()?);
            }
            let exchange = r.short()?;
            let routing_key = r.short()?;
            let (properties, body) = if content {
                r.content()?
            } else {
                let hlen = r.u32()? as usize;
                r.take(hlen)?;
                let blen = r.u32()? as usize;
                r.take(blen)?;
                (Bytes::new(), Bytes::new())
            };
            Record::Publish {
                id,
                queues,
                exchange,
                routing_key,
                properties,
                body,
            }
        }
        k @ (REMOVE | DELIVERED) => {
            let id = r.u64()?;
            let queue = r.queue()?;
            if k == REMOVE {
                Record::Remove { id, queue }
            } else {
                Record::Delivered { id, queue }
            }
        }
        _ => return Err(Damage::Malformed("record kind")),
    };
    if !r.b.is_empty() {
        return Err(Damage::Malformed("bytes after the record's fields"));
    }
    Ok((rec, 8 + len))
}

/// Where a publish record lies in the log. A page of messages recovered
/// from the store holds only this for each ([`crate::paging`]): their
/// segments stay while they are alive, and are never rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordAt {
    /// Segment number.
    pub segment: u64,
    /// Offset of the record in it.
    pub offset: u64,
    /// Length of the record (header included).
    pub len: u64,
}

/// A message recovered into a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredMessage {
    /// Store id (publish order).
    pub id: u64,
    /// Where its record is.
    pub at: RecordAt,
    /// Exchange.
    pub exchange: ShortString,
    /// Routing key.
    pub routing_key: ShortString,
    /// Properties, in wire form.
    pub properties: Bytes,
    /// Body.
    pub body: Bytes,
    /// Delivered before the restart.
    pub redelivered: bool,
}

/// What [`recover`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Live messages per queue, in publish order.
    pub queues: BTreeMap<QueueKey, Vec<RecoveredMessage>>,
    /// The next message id to use.
    pub next_id: u64,
    /// Problems found, one line each (logged as warnings).
    pub warnings: Vec<String>,
    /// The segment bookkeeping the writer continues from.
    pub live: Liveness,
    /// Records read.
    pub records: u64,
}

/// Which messages are alive where, so segments can be deleted.
///
/// Message ids grow with the log, so a segment's ids come in runs: a
/// segment keeps, per id of each run from its first, which queues still
/// hold that message (queue keys interned as numbers; one queue inline),
/// 16 bytes a message. Ids whose records were never written (a message
/// gone before its batch was: [`Log::append`]) leave gaps; a gap of more
/// than `RUN_GAP` (4) ids starts a new run. An id out of that order (never
/// written by this broker) is kept aside in a map, so any log stays
/// correct.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Interned queue keys.
    keys: Vec<QueueKey>,
    index: HashMap<QueueKey, u32>,
    /// Segment → its messages.
    segments: BTreeMap<u64, SegLive>,
    /// First id of a run → its segment and its place in the segment's
    /// runs.
    by_first: BTreeMap<u64, (u64, usize)>,
    /// The highest id placed in a run.
    last_id: Option<u64>,
    /// Ids out of order: id → (segment, queues).
    stray: HashMap<u64, (u64, Vec<u32>)>,
    /// Messages alive.
    alive: usize,
}

#[derive(Debug, Default)]
struct SegLive {
    runs: Vec<Run>,
    /// Messages published in this segment still alive.
    live: u64,
}

/// Consecutive ids (with gaps of at most [`RUN_GAP`]).
#[derive(Debug)]
struct Run {
    /// The id of `slots[0]`.
    first: u64,
    slots: Vec<Holders>,
}

/// The queues still holding a message.
#[derive(Debug, Default)]
enum Holders {
    #[default]
    Gone,
    One(u32),
    // Boxed on purpose: a thin pointer keeps `Holders` at 16 bytes (a
    // `Vec` or a boxed slice would make every message's slot 24 or 32).
    #[allow(clippy::box_collection)]
    Many(Box<Vec<u32>>),
}

impl Holders {
    fn of(queues: Vec<u32>) -> Holders {
        match queues.as_slice() {
            [] => Holders::Gone,
            [q] => Holders::One(*q),
            _ => Holders::Many(Box::new(queues)),
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Holders::Gone => &[],
            Holders::One(q) => std::slice::from_ref(q),
            Holders::Many(v) => v,
        }
    }

    /// Takes `q` out; whether the message is gone now (and was not
    /// before).
    fn remove(&mut self, q: u32) -> bool {
        match self {
            Holders::Gone => false,
            Holders::One(x) if *x == q => {
                *self = Holders::Gone;
                true
            }
            Holders::One(_) => false,
            Holders::Many(v) => {
                v.retain(|x| *x != q);
                match v.as_slice() {
                    [] => {
                        *self = Holders::Gone;
                        true
                    }
                    [one] => {
                        *self = Holders::One(*one);
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

const _: () = assert!(std::mem::size_of::<Holders>() == 16);

/// Ids skipped inside a run (16 bytes each) beyond which a new run
/// starts instead (about as much again, with its index entry).
const RUN_GAP: u64 = 4;

impl Liveness {
    fn intern(&mut self, q: &QueueKey) -> u32 {
        if let Some(&i) = self.index.get(q) {
            return i;
        }
        let i = self.keys.len() as u32;
        self.keys.push(q.clone());
        self.index.insert(q.clone(), i);
        i
    }

    fn publish(&mut self, seg: u64, id: u64, queues: &[QueueKey]) {
        let mut qs: Vec<u32> = queues.iter().map(|q| self.intern(q)).collect();
        qs.sort_unstable();
        qs.dedup();
        let e = self.segments.entry(seg).or_default();
        if qs.is_empty() {
            return;
        }
        let in_order = self.last_id.is_none_or(|l| id > l);
        if in_order && !self.stray.contains_key(&id) {
            // In order, so at or past the end of the last run.
            let extends = e
                .runs
                .last()
                .is_some_and(|r| id - r.first <= r.slots.len() as u64 + RUN_GAP);
            if !extends {
                e.runs.push(Run {
                    first: id,
                    slots: Vec::new(),
                });
                self.by_first.insert(id, (seg, e.runs.len() - 1));
            }
            if let Some(r) = e.runs.last_mut() {
                r.slots
                    .resize_with((id - r.first) as usize, Holders::default);
                r.slots.push(Holders::of(qs));
            }
            self.last_id = Some(id);
        } else {
            if let Some((old_seg, _)) = self.stray.insert(id, (seg, qs)) {
                // The same id twice: the earlier copy no longer counts.
                if let Some(o) = self.segments.get_mut(&old_seg) {
                    o.live = o.live.saturating_sub(1);
                }
                self.alive -= 1;
            }
        }
        if let Some(e) = self.segments.get_mut(&seg) {
            e.live += 1;
        }
        self.alive += 1;
    }

    /// Where message `id`'s holders are: its segment, the run and the
    /// slot.
    fn find(&self, id: u64) -> Option<(u64, usize, usize)> {
        let (&first, &(seg, run)) = self.by_first.range(..=id).next_back()?;
        let r = self.segments.get(&seg)?.runs.get(run)?;
        let at = usize::try_from(id - first).ok()?;
        (at < r.slots.len()).then_some((seg, run, at))
    }

    fn remove(&mut self, id: u64, queue: &QueueKey) {
        let Some(&q) = self.index.get(queue) else {
            return;
        };
        let (seg, gone) = if let Some((seg, qs)) = self.stray.get_mut(&id) {
            let seg = *seg;
            let before = qs.len();
            qs.retain(|x| *x != q);
            let gone = before > 0 && qs.is_empty();
            if gone {
                self.stray.remove(&id);
            }
            (seg, gone)
        } else if let Some((seg, run, at)) = self.find(id) {
            let gone = self
                .segments
                .get_mut(&seg)
                .is_some_and(|e| e.runs[run].slots[at].remove(q));
            (seg, gone)
        } else {
            return;
        };
        if gone {
            self.alive -= 1;
            if let Some(e) = self.segments.get_mut(&seg) {
                e.live = e.live.saturating_sub(1);
            }
        }
    }

    /// The queues still holding message `id` (none if it is gone).
    fn holders(&self, id: u64) -> impl Iterator<Item = &QueueKey> {
        let qs: &[u32] = match self.stray.get(&id) {
            Some((_, qs)) => qs,
            None => match self.find(id) {
                Some((seg, run, at)) => self.segments[&seg].runs[run].slots[at].as_slice(),
                None => &[],
            },
        };
        qs.iter().filter_map(|&i| self.keys.get(i as usize))
    }

    /// Whether a message of segment `seg` is alive.
    fn segment_live(&self, seg: u64) -> bool {
        self.segments.get(&seg).is_some_and(|e| e.live > 0)
    }

    fn touch(&mut self, seg: u64) {
        self.segments.entry(seg).or_default();
    }

    /// The oldest segments (before `active`) whose messages are all gone,
    /// removed from the bookkeeping; they may be deleted.
    fn collectable(&mut self, active: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some((&seg, e)) = self.segments.first_key_value() {
            if seg >= active || e.live > 0 {
                break;
            }
            for r in &e.runs {
                self.by_first.remove(&r.first);
            }
            self.segments.pop_first();
            out.push(seg);
        }
        out
    }

    /// Messages alive.
    pub fn messages(&self) -> usize {
        self.alive
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.seg"))
}

fn segments<D: Disk>(disk: &D, dir: &Path) -> io::Result<Vec<u64>> {
    let mut v: Vec<u64> = disk
        .list(dir)?
        .iter()
        .filter_map(|name| name.strip_suffix(".seg").and_then(|n| n.parse().ok()))
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Reads the log in `dir`: every message still in a queue, in order. A
/// torn or corrupt tail of the last segment is cut off; damage elsewhere
/// is reported and the rest is read.
pub fn recover(dir: &Path) -> io::Result<Recovered> {
    recover_on(&RealDisk, dir)
}

/// [`recover`] on `disk`.
pub fn recover_on<D: Disk>(disk: &D, dir: &Path) -> io::Result<Recovered> {
    let mut queues: BTreeMap<QueueKey, Vec<RecoveredMessage>> = BTreeMap::new();
    let mut out = recover_each_on(disk, dir, |q, m| {
        queues.entry(q.clone()).or_default().push(m);
    })?;
    out.queues = queues;
    Ok(out)
}

/// [`recover_on`], handing each message still in a queue to `each` (in
/// publish order; a message in several queues once per queue) instead of
/// collecting them: memory holds one chunk of a segment at a time, and
/// only the bookkeeping of which messages are alive. `Recovered::queues`
/// stays empty.
pub fn recover_each_on<D: Disk>(
    disk: &D,
    dir: &Path,
    each: impl FnMut(&QueueKey, RecoveredMessage),
) -> io::Result<Recovered> {
    let segs = segments(disk, dir)?;
    let recovered = recover_each(
        &segs,
        |seg, off, into| disk.read_part(&segment_path(dir, seg), off, into),
        |seg, len| disk.truncate(&segment_path(dir, seg), len),
        each,
    )?;
    // After a killed process, the last segment's tail may be in the page
    // cache only (and after a failed fsync it may stay so): what is
    // recovered now must not vanish at a later crash.
    if let Some(&last) = segs.last() {
        disk.sync_path(&segment_path(dir, last))?;
    }
    Ok(recovered)
}

/// [`recover`] over segments given as (number, bytes), in order;
/// `truncate(segment, length)` cuts the last segment's damaged tail.
pub fn recover_from(
    segments: Vec<(u64, Vec<u8>)>,
    truncate: impl FnMut(u64, u64) -> io::Result<()>,
) -> io::Result<Recovered> {
    let numbers: Vec<u64> = segments.iter().map(|(n, _)| *n).collect();
    let files: HashMap<u64, Vec<u8>> = segments.into_iter().collect();
    let mut queues: BTreeMap<QueueKey, Vec<RecoveredMessage>> = BTreeMap::new();
    let mut out = recover_each(
        &numbers,
        |seg, off, into| {
            let file = files.get(&seg).map_or(&[][..], Vec::as_slice);
            let from = usize::try_from(off).unwrap_or(usize::MAX).min(file.len());
            let n = into.len().min(file.len() - from);
            into[..n].copy_from_slice(&file[from..from + n]);
            Ok(n)
        },
        truncate,
        |q, m| queues.entry(q.clone()).or_default().push(m),
    )?;
    out.queues = queues;
    Ok(out)
}

/// How much of a segment recovery reads at a time (its buffer starts at
/// [`CHUNK_FIRST`] and doubles as a segment proves longer).
const CHUNK: usize = 1 << 20;
const CHUNK_FIRST: usize = 64 << 10;

/// A segment's records in order, read a chunk at a time through one
/// buffer (grown, by doubling as bytes arrive, only for a record longer
/// than it: never by a length field alone).
#[derive(Default)]
struct Chunks {
    buf: Vec<u8>,
    /// Unread bytes are `buf[at..end]`; `buf[0]` is byte `pos` of the
    /// segment.
    at: usize,
    end: usize,
    pos: u64,
    eof: bool,
}

/// What [`Chunks::next`] found.
enum Next {
    /// A record at `offset`, `used` bytes long, now at `buf[from..]`.
    Record {
        rec: Record,
        offset: u64,
        from: usize,
        used: usize,
    },
    /// The segment ends.
    End,
    /// Damage at `offset`; `rest` bytes from there to the end.
    Damaged {
        offset: u64,
        damage: Damage,
        rest: u64,
    },
}

impl Chunks {
    fn start(&mut self) {
        (self.at, self.end, self.pos, self.eof) = (0, 0, 0, false);
    }

    /// Reads (`read(offset, into)`, 0 at the end) until `need` unread
    /// bytes are held or the segment ends.
    fn fill(
        &mut self,
        need: usize,
        read: &mut impl FnMut(u64, &mut [u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        if self.at > 0 {
            self.buf.copy_within(self.at..self.end, 0);
            self.pos += self.at as u64;
            self.end -= self.at;
            self.at = 0;
        }
        while self.end < need && !self.eof {
            if self.end == self.buf.len() {
                let grown = (self.buf.len() * 2).max(CHUNK_FIRST).min(need.max(CHUNK));
                self.buf.resize(grown, 0);
            }
            match read(self.pos + self.end as u64, &mut self.buf[self.end..])? {
                0 => self.eof = true,
                n => self.end += n,
            }
        }
        Ok(())
    }

    /// The next record, stopping at byte `limit` of the segment;
    /// `content` and `verify` as for [`decode_with`].
    fn next(
        &mut self,
        limit: u64,
        content: bool,
        verify: bool,
        read: &mut impl FnMut(u64, &mut [u8]) -> io::Result<usize>,
    ) -> io::Result<Next> {
        loop {
            let offset = self.pos + self.at as u64;
            if offset >= limit {
                return Ok(Next::End);
            }
            let avail = &self.buf[self.at..self.end];
            // A zero length is no record: the block padding after the
            // last one (direct I/O), or zeros a crash left in an unsynced
            // tail. The segment ends there.
            if avail.starts_with(&[0; 4])
                || (self.eof && !avail.is_empty() && avail.iter().all(|&b| b == 0))
            {
                return Ok(Next::End);
            }
            match decode_with(avail, content, verify) {
                Ok((rec, used)) => {
                    let from = self.at;
                    self.at += used;
                    return Ok(Next::Record {
                        rec,
                        offset,
                        from,
                        used,
                    });
                }
                Err(Damage::Truncated) if !self.eof => {
                    let need = match avail.get(..4) {
                        Some(b) => 8 + u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                        None => 8,
                    };
                    self.fill(need.max(CHUNK), read)?;
                }
                Err(_) if avail.is_empty() => return Ok(Next::End),
                Err(damage) => {
                    // How much follows, for the warning.
                    let mut rest = (self.end - self.at) as u64;
                    self.at = self.end;
                    while !self.eof {
                        self.fill(CHUNK, read)?;
                        rest += self.end as u64;
                        self.at = self.end;
                    }
                    return Ok(Next::Damaged {
                        offset,
                        damage,
                        rest,
                    });
                }
            }
        }
    }
}

/// Recovery's second pass: every message `live` holds, from the readable
/// part of each segment, decoded and handed to `emit` once per queue
/// holding it, in log order. Returns its warnings.
fn pass_two<'a>(
    segs: &[u64],
    readable: &[u64],
    live: &'a Liveness,
    delivered: &std::collections::HashSet<u64>,
    read: &mut impl FnMut(u64, u64, &mut [u8]) -> io::Result<usize>,
    emit: &mut impl FnMut(&'a QueueKey, RecoveredMessage),
) -> io::Result<Vec<String>> {
    let mut warnings = Vec::new();
    let mut chunks = Chunks::default();
    // Ids out of order (a log this broker wrote has none) may appear more
    // than once: the first copy is the one recovered.
    let mut stray_seen: std::collections::HashSet<u64> = Default::default();
    for (&seg, &end) in segs.iter().zip(readable) {
        if !live.segment_live(seg) {
            continue;
        }
        chunks.start();
        let mut read = |off: u64, into: &mut [u8]| read(seg, off, into);
        let mut unreadable = Vec::new();
        // (Verified by the first pass: the same bytes of a file this
        // process has locked.)
        while let Next::Record {
            rec,
            offset,
            from,
            used,
        } = chunks.next(end, false, false, &mut read)?
        {
            let Record::Publish { id, .. } = rec else {
                continue;
            };
            if live.holders(id).next().is_none()
                || (live.stray.contains_key(&id) && !stray_seen.insert(id))
            {
                continue;
            }
            match decode_with(&chunks.buf[from..from + used], true, false) {
                Ok((
                    Record::Publish {
                        exchange,
                        routing_key,
                        properties,
                        body,
                        ..
                    },
                    _,
                )) => {
                    let m = RecoveredMessage {
                        id,
                        at: RecordAt {
                            segment: seg,
                            offset,
                            len: used as u64,
                        },
                        exchange,
                        routing_key,
                        properties,
                        body,
                        redelivered: delivered.contains(&id),
                    };
                    let mut holders = live.holders(id).peekable();
                    while let Some(q) = holders.next() {
                        if holders.peek().is_some() {
                            emit(q, m.clone());
                        } else {
                            emit(q, m);
                            break;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => unreadable.push(id),
            }
        }
        if !unreadable.is_empty() {
            // (Checksummed, yet its properties do not parse: written by
            // something else than this broker.)
            warnings.push(format!(
                "segment {seg:016}: {} messages with unreadable properties left out (ids {:?}{})",
                unreadable.len(),
                &unreadable[..unreadable.len().min(5)],
                if unreadable.len() > 5 { ", …" } else { "" }
            ));
        }
    }
    Ok(warnings)
}

/// Recovery in two passes over the segments `segs` (in order), each read
/// a chunk at a time with `read(segment, offset, into)` (the bytes read,
/// 0 at the end): the first learns which
/// messages are alive where (and which were delivered), cutting a torn
/// tail of the last segment with `truncate` and reporting damage; the
/// second hands every live message to `each`, decoding only those, in the
/// log's order (publish order: ids grow along a log this broker wrote).
/// At most two warnings per segment.
pub fn recover_each(
    segs: &[u64],
    mut read: impl FnMut(u64, u64, &mut [u8]) -> io::Result<usize>,
    mut truncate: impl FnMut(u64, u64) -> io::Result<()>,
    mut each: impl FnMut(&QueueKey, RecoveredMessage),
) -> io::Result<Recovered> {
    let mut out = Recovered {
        next_id: 1,
        ..Default::default()
    };
    let mut delivered: std::collections::HashSet<u64> = Default::default();
    // How much of each segment is readable.
    let mut readable = Vec::with_capacity(segs.len());
    let mut chunks = Chunks::default();
    for (i, &seg) in segs.iter().enumerate() {
        let path = format!("segment {seg:016}");
        out.live.touch(seg);
        chunks.start();
        let mut read = |off: u64, into: &mut [u8]| read(seg, off, into);
        let end = loop {
            match chunks.next(u64::MAX, false, true, &mut read)? {
                Next::Record { rec, .. } => {
                    out.records += 1;
                    match rec {
                        Record::Publish { id, queues, .. } | Record::Message { id, queues, .. } => {
                            out.next_id = out.next_id.max(id.saturating_add(1));
                            out.live.publish(seg, id, &queues);
                        }
                        Record::Remove { id, queue } => out.live.remove(id, &queue),
                        Record::Delivered { id, .. } => {
                            if out.live.holders(id).next().is_some() {
                                delivered.insert(id);
                            }
                        }
                    }
                }
                Next::End => break chunks.pos + chunks.at as u64,
                Next::Damaged {
                    offset: off,
                    damage: d,
                    rest,
                } => {
                    if i + 1 == segs.len() {
                        out.warnings.push(format!(
                            "{path}: {d:?} record at byte {off}: the tail ({rest} bytes) is cut off"
                        ));
                        truncate(seg, off)?;
                    } else {
                        out.warnings.push(format!(
                            "{path}: {d:?} record at byte {off}: the remaining {rest} bytes of this segment are unreadable and skipped"
                        ));
                    }
                    break off;
                }
            }
        };
        readable.push(end);
    }
    // Pass two decodes the live messages. (On a thread of its own, it
    // was slower: the messages are freed by another thread than the one
    // that allocated them, and the hand-over costs more than it saves.)
    let mut emit = |q: &QueueKey, m| each(q, m);
    let warnings = pass_two(segs, &readable, &out.live, &delivered, &mut read, &mut emit)?;
    out.warnings.extend(warnings);
    Ok(out)
}

/// The writer: appends records to the active segment, syncs, rotates and
/// deletes segments whose messages are all gone. On `D` (the real file
/// system unless a test says otherwise).
#[derive(Debug)]
pub struct Log<D: Disk = RealDisk> {
    disk: D,
    dir: PathBuf,
    file: D::File,
    active: u64,
    len: u64,
    segment_max: u64,
    live: Liveness,
    /// An append or sync failed: the log refuses to go on.
    failed: bool,
}

impl Log<RealDisk> {
    /// Opens the log in `dir` after [`recover`]: starts a new segment.
    pub fn open(dir: &Path, recovered: Liveness) -> io::Result<Log> {
        Log::open_on(RealDisk, dir, recovered)
    }
}

impl<D: Disk> Log<D> {
    /// Opens the log in `dir` of `disk` after [`recover_on`]: starts a new
    /// segment.
    pub fn open_on(disk: D, dir: &Path, recovered: Liveness) -> io::Result<Log<D>> {
        disk.create_dir_all(dir)?;
        let active = segments(&disk, dir)?.last().map_or(1, |n| n + 1);
        let file = disk.create_log(&segment_path(dir, active))?;
        disk.sync_dir(dir)?;
        let mut live = recovered;
        live.touch(active);
        Ok(Log {
            disk,
            dir: dir.to_owned(),
            file,
            active,
            len: 0,
            segment_max: SEGMENT_MAX,
            live,
            failed: false,
        })
    }

    /// Starts a new segment once the active one holds `bytes` (tests use
    /// small segments; the default is [`SEGMENT_MAX`]).
    pub fn set_segment_max(&mut self, bytes: u64) {
        self.segment_max = bytes;
    }

    /// Appends records (not yet durable: call [`sync`](Self::sync)).
    ///
    /// A message that `records` both publish and remove from every queue
    /// it went to is not written at all, nor its other records: it is
    /// gone before it could be recovered (as RabbitMQ's message store
    /// skips the write of a message removed before it was written). When
    /// consumers keep up, that is most of them.
    ///
    /// After an error from `append` or [`sync`](Self::sync), every later
    /// call fails too: a partly written record may end the segment, and
    /// what follows it would be cut off with it at recovery.
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        self.check()?;
        self.failed = true;
        let gone = cancelled(records);
        let (live, active) = (&mut self.live, self.active);
        let n = self.disk.append_with(&mut self.file, &mut |out| {
            for r in records {
                if !gone.is_empty() && gone.contains(&r.id()) {
                    continue;
                }
                r.encode(out);
                match r {
                    Record::Publish { id, queues, .. } | Record::Message { id, queues, .. } => {
                        live.publish(active, *id, queues)
                    }
                    Record::Remove { id, queue } => live.remove(*id, queue),
                    Record::Delivered { .. } => {}
                }
            }
        })?;
        self.len += n as u64;
        self.failed = false;
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "the message store failed earlier; restart to recover",
            ));
        }
        Ok(())
    }

    /// Makes everything appended durable (`fdatasync`), then rotates the
    /// segment if it is full and deletes segments no longer needed. An
    /// error is final, as for [`append`](Self::append).
    pub fn sync(&mut self) -> io::Result<()> {
        self.check()?;
        self.failed = true;
        self.disk.sync_data(&mut self.file)?;
        if self.len >= self.segment_max {
            self.active += 1;
            self.file = self
                .disk
                .create_log(&segment_path(&self.dir, self.active))?;
            self.len = 0;
            self.live.touch(self.active);
            self.disk.sync_dir(&self.dir)?;
        }
        let gone = self.live.collectable(self.active);
        for seg in &gone {
            self.disk.remove(&segment_path(&self.dir, *seg))?;
        }
        if !gone.is_empty() {
            self.disk.sync_dir(&self.dir)?;
        }
        self.failed = false;
        Ok(())
    }

    /// Messages alive in the log.
    pub fn live_messages(&self) -> usize {
        self.live.messages()
    }

    /// Segment files on disk.
    pub fn segment_count(&self) -> usize {
        segments(&self.disk, &self.dir).map_or(0, |s| s.len())
    }
}

/// Writes `contents` to `path` atomically: a temporary file, fsync, rename,
/// fsync of the directory.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_atomically_on(&RealDisk, path, contents)
}

/// [`write_atomically`] on `disk`.
pub fn write_atomically_on<D: Disk>(disk: &D, path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    disk.create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = disk.create(&tmp, false)?;
    disk.append(&mut f, contents)?;
    disk.sync_all(&mut f)?;
    drop(f);
    disk.rename(&tmp, path)?;
    disk.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn q(name: &'static str) -> QueueKey {
        queue_key("/", ShortString::from_static(name))
    }

    fn publish(id: u64, queues: Vec<QueueKey>, body: &'static str) -> Record {
        Record::Publish {
            id,
            queues,
            exchange: ShortString::from_static("x"),
            routing_key: ShortString::from_static("k"),
            properties: {
                let mut v = Vec::new();
                amqp_wire::encode_properties(
                    &BasicProperties {
                        delivery_mode: Some(2),
                        ..Default::default()
                    },
                    &mut v,
                )
                .unwrap();
                v.into()
            },
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn a_message_record_encodes_as_the_publish_of_its_parts() {
        let props = BasicProperties {
            delivery_mode: Some(2),
            priority: Some(3),
            ..Default::default()
        };
        let mut raw = Vec::new();
        amqp_wire::encode_properties(&props, &mut raw).unwrap();
        let other = {
            let mut v = Vec::new();
            let p = BasicProperties {
                message_id: Some(ShortString::from_static("m")),
                ..props.clone()
            };
            amqp_wire::encode_properties(&p, &mut v).unwrap();
            Bytes::from(v)
        };
        // Inline and large bodies; the message's own properties or others.
        for size in [0, 16, 1024, crate::core::COMPACT_BELOW + 1] {
            for override_props in [None, Some(other.clone())] {
                let body = Bytes::from(vec![b'b'; size]);
                let msg = Msg::new(b"ex", b"route", &props, body.clone());
                let queues = vec![q("a"), q("b")];
                let mut from_msg = Vec::new();
                Record::Message {
                    id: 9,
                    queues: queues.clone(),
                    msg,
                    properties: override_props.clone(),
                }
                .encode(&mut from_msg);
                let parts = Record::Publish {
                    id: 9,
                    queues,
                    exchange: ShortString::from_static("ex"),
                    routing_key: ShortString::from_static("route"),
                    properties: override_props.unwrap_or_else(|| raw.clone().into()),
                    body,
                };
                let mut from_parts = Vec::new();
                parts.encode(&mut from_parts);
                assert_eq!(from_msg, from_parts, "body of {size}");
                let (back, used) = decode(&from_msg).unwrap();
                assert_eq!((back, used), (parts, from_msg.len()));
            }
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("amqp-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    type ReadOutcome = (
        Vec<(String, u64, RecordAt, usize)>,
        Vec<String>,
        Vec<(u64, u64)>,
    );

    /// Recovery of `segs` with reads of at most `most` bytes each: what it
    /// hands over (queue, id, where, body length), its warnings and the
    /// truncations it asks for.
    fn recover_reading_at_most(segs: &[(u64, Vec<u8>)], most: usize) -> ReadOutcome {
        let mut got = Vec::new();
        let mut cuts = Vec::new();
        let numbers: Vec<u64> = segs.iter().map(|s| s.0).collect();
        let out = recover_each(
            &numbers,
            |n, off, into| {
                let file = &segs.iter().find(|s| s.0 == n).unwrap().1;
                let from = (off as usize).min(file.len());
                let k = into.len().min(most).min(file.len() - from);
                into[..k].copy_from_slice(&file[from..from + k]);
                Ok(k)
            },
            |seg, len| {
                cuts.push((seg, len));
                Ok(())
            },
            |queue, m| {
                got.push((
                    queue.1.to_string_lossy().into_owned(),
                    m.id,
                    m.at,
                    m.body.len(),
                ));
            },
        )
        .unwrap();
        (got, out.warnings, cuts)
    }

    #[test]
    fn recovery_reads_in_chunks_as_it_would_in_one_piece() {
        // Small records, one longer than the first chunk (the buffer grows
        // for it), damage inside a segment and a torn tail.
        let big: &'static str = Box::leak("B".repeat(3 * CHUNK_FIRST).into_boxed_str());
        let mut segs = Vec::new();
        let mut id = 1;
        for n in 1..=3u64 {
            let mut data = Vec::new();
            for i in 0..300 {
                let body = if n == 2 && i == 150 { big } else { "small" };
                publish(id, vec![q("a")], body).encode(&mut data);
                if i % 7 == 0 {
                    Record::Remove { id, queue: q("a") }.encode(&mut data);
                }
                id += 1;
            }
            segs.push((n, data));
        }
        let whole = recover_reading_at_most(&segs, usize::MAX);
        assert_eq!(whole.0.len(), 900 - 3 * 43);
        assert!(whole.0.iter().any(|m| m.3 == big.len()));
        for m in &whole.0 {
            // Where it says, there is its record.
            let file = &segs[m.2.segment as usize - 1].1;
            let rec = &file[m.2.offset as usize..(m.2.offset + m.2.len) as usize];
            assert_eq!(decode_publish(rec).unwrap().0, m.1);
        }
        for most in [1, 7, 4096, CHUNK_FIRST + 3] {
            assert_eq!(
                recover_reading_at_most(&segs, most),
                whole,
                "reads of {most}"
            );
        }
        segs[0].1[5000] ^= 0x10;
        let len = segs[2].1.len();
        segs[2].1.truncate(len - 3);
        let damaged = recover_reading_at_most(&segs, usize::MAX);
        assert_eq!(damaged.1.len(), 2, "{:?}", damaged.1);
        assert!(damaged.1[0].contains("unreadable and skipped"));
        assert!(damaged.1[1].contains("is cut off"));
        assert_eq!(damaged.2.len(), 1);
        for most in [1, 13, 65_536] {
            assert_eq!(
                recover_reading_at_most(&segs, most),
                damaged,
                "reads of {most}"
            );
        }
    }

    #[test]
    fn live_messages_come_in_log_order_once_per_queue() {
        // Some in both queues, some removed from one.
        let mut segs = Vec::new();
        let mut expected = Vec::new();
        let mut id = 1;
        for n in 1..=3u64 {
            let mut data = Vec::new();
            for _ in 0..3000 {
                let both = id % 5 == 0;
                let queues = if both {
                    vec![q("a"), q("b")]
                } else {
                    vec![q("a")]
                };
                publish(id, queues, "m").encode(&mut data);
                let gone_from_a = id % 7 == 0;
                if gone_from_a {
                    Record::Remove { id, queue: q("a") }.encode(&mut data);
                } else {
                    expected.push(("a".to_owned(), id));
                }
                if both {
                    expected.push(("b".to_owned(), id));
                }
                id += 1;
            }
            segs.push((n, data));
        }
        let (got, warnings, _) = recover_reading_at_most(&segs, usize::MAX);
        let got: Vec<(String, u64)> = got.into_iter().map(|m| (m.0, m.1)).collect();
        assert_eq!(got, expected);
        assert!(warnings.is_empty());
    }

    #[test]
    fn records_round_trip_and_any_damage_is_named() {
        let r = publish(7, vec![q("a"), q("b")], "hello");
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert_eq!(decode(&buf), Ok((r, buf.len())));
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "prefix {cut}");
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            let _ = decode(&bad); // never panics
        }
        let mut bad = buf.clone();
        bad[20] ^= 1;
        assert_eq!(decode(&bad).unwrap_err(), Damage::Checksum);
    }

    /// However a segment's last record falls against the block padding
    /// direct I/O leaves (ending 0 to 4 bytes short of a block boundary,
    /// or on it), recovery reads every record and warns of nothing.
    #[test]
    fn the_block_padding_after_the_last_record_is_no_damage() {
        let body: &'static str = "x".repeat(4200).leak();
        let mut ends = std::collections::BTreeSet::new();
        for n in 3950..4120 {
            let dir = tmp(&format!("padding-{n}"));
            let mut log = Log::open(&dir, Liveness::default()).unwrap();
            log.append(&[publish(1, vec![q("a")], &body[..n])]).unwrap();
            log.append(&[publish(2, vec![q("a")], "second")]).unwrap();
            log.sync().unwrap();
            ends.insert(log.len % crate::disk::BLOCK as u64);
            drop(log);
            let r = recover(&dir).unwrap();
            assert!(r.warnings.is_empty(), "{n}: {:?}", r.warnings);
            assert_eq!(r.queues[&q("a")].len(), 2, "{n}");
            // And again after that restart (a new segment, empty).
            let log = Log::open(&dir, r.live).unwrap();
            drop(log);
            let r = recover(&dir).unwrap();
            assert!(r.warnings.is_empty(), "{n}: {:?}", r.warnings);
            assert_eq!(r.queues[&q("a")].len(), 2, "{n}");
            let _ = fs::remove_dir_all(&dir);
        }
        for short in 0..=4u64 {
            let end = (crate::disk::BLOCK as u64 - short) % crate::disk::BLOCK as u64;
            assert!(
                ends.contains(&end),
                "no log ended {short} bytes short of a block"
            );
        }
    }

    #[test]
    fn recovery_keeps_what_was_not_removed_in_order() {
        let dir = tmp("recover");
        let mut log = Log::open(&dir, Liveness::default()).unwrap();
        log.append(&[
            publish(1, vec![q("a"), q("b")], "one"),
            publish(2, vec![q("a")], "two"),
            Record::Delivered {
                id: 2,
                queue: q("a"),
            },
            Record::Remove {
                id: 1,
                queue: q("a"),
            },
            publish(3, vec![q("a")], "three"),
        ])
        .unwrap();
        log.sync().unwrap();
        drop(log);
        let r = recover(&dir).unwrap();
        let a: Vec<_> = r.queues[&q("a")]
            .iter()
            .map(|m| (m.id, m.redelivered))
            .collect();
        assert_eq!(a, [(2, true), (3, false)]);
        assert_eq!(r.queues[&q("b")].len(), 1);
        assert_eq!(r.next_id, 4);
        assert!(r.warnings.is_empty());
        // A torn tail is cut off with a warning; what precedes survives.
        let seg = segment_path(&dir, 1);
        let mut data = fs::read(&seg).unwrap();
        // Written with direct I/O, the segment ends in zeros up to a whole
        // block; its last record ends in a queue name, not a zero.
        assert!(data.len().is_multiple_of(crate::disk::BLOCK) || !data.ends_with(&[0]));
        data.truncate(data.len() - data.iter().rev().take_while(|&&b| b == 0).count());
        let full = data.len();
        publish(4, vec![q("a")], "torn").encode(&mut data);
        data.truncate(full + 10);
        fs::write(&seg, &data).unwrap();
        let r = recover(&dir).unwrap();
        assert_eq!(r.queues[&q("a")].len(), 2);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert_eq!(fs::metadata(&seg).unwrap().len(), full as u64);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn streaming_recovery_reads_dead_segments_once_and_decodes_only_live_messages() {
        let seg = |recs: &[Record]| {
            let mut b = Vec::new();
            for r in recs {
                r.encode(&mut b);
            }
            b
        };
        let remove = |id, name| Record::Remove { id, queue: q(name) };
        let segments = [
            (
                1,
                seg(&[
                    publish(1, vec![q("a"), q("b")], "one"),
                    publish(2, vec![q("a")], "two"),
                ]),
            ),
            // Everything published here is gone by the end.
            (2, seg(&[publish(3, vec![q("a")], "three"), remove(3, "a")])),
            (
                3,
                seg(&[
                    remove(1, "b"),
                    Record::Delivered {
                        id: 2,
                        queue: q("a"),
                    },
                    publish(4, vec![q("b")], "four"),
                ]),
            ),
        ];
        let mut reads: HashMap<u64, u32> = HashMap::default();
        let mut got = Vec::new();
        let out = recover_each(
            &[1, 2, 3],
            |n, off, into| {
                let file = &segments.iter().find(|s| s.0 == n).unwrap().1;
                if off == 0 {
                    *reads.entry(n).or_default() += 1;
                }
                let from = (off as usize).min(file.len());
                let k = into.len().min(file.len() - from);
                into[..k].copy_from_slice(&file[from..from + k]);
                Ok(k)
            },
            |_, _| Ok(()),
            |queue, m| got.push((queue.1.to_string_lossy().into_owned(), m.id, m.redelivered)),
        )
        .unwrap();
        assert_eq!(
            got,
            [
                ("a".to_owned(), 1, false),
                ("a".to_owned(), 2, true),
                ("b".to_owned(), 4, false)
            ]
        );
        assert_eq!((reads[&1], reads[&2], reads[&3]), (2, 1, 2));
        assert_eq!((out.next_id, out.records, out.live.messages()), (5, 7, 3));
        assert!(out.queues.is_empty() && out.warnings.is_empty());
    }

    #[test]
    fn liveness_agrees_with_a_map_of_every_message() {
        for seed in 1..=100u64 {
            let mut rng = crate::testing::SplitMix(seed);
            let mut rnd = move |n: u64| rng.below(n);
            let names = ["a", "b", "c"];
            let mut live = Liveness::default();
            // The model: id -> (segment, queues), segment -> live count.
            let mut model: BTreeMap<u64, (u64, Vec<&str>)> = BTreeMap::new();
            let (mut seg, mut id, mut active) = (1u64, 1u64, 1u64);
            let mut used = std::collections::HashSet::new();
            for _ in 0..400 {
                match rnd(10) {
                    0..=3 => {
                        // Mostly in order, sometimes a gap (within a
                        // run or starting one), rarely an id from the
                        // past (kept aside).
                        let mut this = match rnd(20) {
                            0 => rnd(id) + 1,
                            1 => id + rnd(200_000),
                            2..=4 => id + rnd(2 * RUN_GAP + 2),
                            _ => id,
                        };
                        // (Never an id used before: a log has none.)
                        if !used.insert(this) {
                            this = id.max(this + 1);
                            used.insert(this);
                        }
                        id = id.max(this + 1);
                        let qs: Vec<&str> = names.iter().copied().filter(|_| rnd(2) == 0).collect();
                        let keys: Vec<QueueKey> = qs.iter().map(|n| q(n)).collect();
                        live.publish(seg, this, &keys);
                        if !qs.is_empty() {
                            model.insert(this, (seg, qs));
                        }
                    }
                    4..=7 if !model.is_empty() => {
                        let ids: Vec<u64> = model.keys().copied().collect();
                        let victim = ids[rnd(ids.len() as u64) as usize];
                        let name = names[rnd(3) as usize];
                        live.remove(victim, &q(name));
                        let e = model.get_mut(&victim).unwrap();
                        e.1.retain(|n| *n != name);
                        if e.1.is_empty() {
                            model.remove(&victim);
                        }
                    }
                    8 => {
                        seg += 1;
                        active = seg;
                        live.touch(seg);
                    }
                    _ => {
                        let gone = live.collectable(active);
                        for g in gone {
                            assert!(
                                model.values().all(|(s, _)| *s != g),
                                "seed {seed}: segment {g} collected with live messages"
                            );
                        }
                    }
                }
                assert_eq!(model.len(), live.messages(), "seed {seed}");
                for (&mid, (_, qs)) in &model {
                    let mut got: Vec<String> = live
                        .holders(mid)
                        .map(|k| k.1.to_string_lossy().into_owned())
                        .collect();
                    got.sort();
                    let mut want: Vec<String> = qs.iter().map(|s| s.to_string()).collect();
                    want.sort();
                    want.dedup();
                    assert_eq!(got, want, "seed {seed}: message {mid}");
                }
            }
        }
    }

    #[test]
    fn a_message_gone_within_one_append_is_never_written() {
        let dir = tmp("cancel");
        let mut log = Log::open(&dir, Liveness::default()).unwrap();
        let remove = |id, name| Record::Remove { id, queue: q(name) };
        log.append(&[
            publish(1, vec![q("a")], "consumed"),
            Record::Delivered {
                id: 1,
                queue: q("a"),
            },
            remove(1, "a"),
            publish(2, vec![q("a")], "kept"),
            publish(3, vec![q("a"), q("b")], "still in b"),
            remove(3, "a"),
            publish(4, vec![q("a"), q("b")], "gone from both"),
            remove(4, "b"),
            remove(4, "a"),
            // Removed from a queue it never went to: still in a.
            publish(5, vec![q("a")], "wrong queue"),
            remove(5, "b"),
        ])
        .unwrap();
        // Message 2 leaves in a later append: its records are written.
        log.append(&[remove(2, "a")]).unwrap();
        log.sync().unwrap();
        assert_eq!(log.live_messages(), 2, "3 (in b) and 5");
        drop(log);
        let data = fs::read(segment_path(&dir, 1)).unwrap();
        let mut written = Vec::new();
        let mut at = 0;
        while let Ok((r, n)) = decode(&data[at..]) {
            written.push(r.id());
            at += n;
        }
        assert_eq!(written, [2, 3, 3, 5, 5, 2]);
        let r = recover(&dir).unwrap();
        let ids = |name| -> Vec<u64> { r.queues[&q(name)].iter().map(|m| m.id).collect() };
        assert_eq!(ids("a"), [5]);
        assert_eq!(ids("b"), [3]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn segments_whose_messages_are_gone_are_deleted_oldest_first() {
        let dir = tmp("gc");
        let mut log = Log::open(&dir, Liveness::default()).unwrap();
        log.append(&[publish(1, vec![q("a")], "x")]).unwrap();
        log.sync().unwrap();
        drop(log);
        let r = recover(&dir).unwrap();
        let mut log = Log::open(&dir, r.live).unwrap();
        assert_eq!(log.segment_count(), 2);
        log.append(&[Record::Remove {
            id: 1,
            queue: q("a"),
        }])
        .unwrap();
        log.sync().unwrap();
        assert_eq!(log.segment_count(), 1, "segment 1 held only message 1");
        assert_eq!(log.live_messages(), 0);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn after_a_failure_the_log_refuses_to_go_on() {
        let disk = SimDisk::new(3);
        let dir = Path::new("/m");
        let mut log = Log::open_on(disk.clone(), dir, Liveness::default()).unwrap();
        log.append(&[publish(1, vec![q("a")], "one")]).unwrap();
        log.sync().unwrap();
        disk.set_capacity(Some(disk.used() + 5));
        let full = log.append(&[publish(2, vec![q("a")], "two")]).unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::StorageFull);
        disk.set_capacity(None);
        // Appending after the partial record would put synced records
        // behind damage that recovery cuts off.
        assert!(log.append(&[publish(3, vec![q("a")], "three")]).is_err());
        assert!(log.sync().is_err());
        disk.crash();
        let r = recover_on(&disk, dir).unwrap();
        assert_eq!(r.queues[&q("a")].len(), 1);
        // An fsync failure is final too.
        let mut log = Log::open_on(disk.clone(), dir, r.live).unwrap();
        log.append(&[publish(4, vec![q("a")], "four")]).unwrap();
        disk.fail_next_sync(1);
        assert!(log.sync().is_err());
        assert!(log.sync().is_err());
    }

    #[test]
    fn garbage_segments_never_panic() {
        let dir = tmp("garbage");
        fs::create_dir_all(&dir).unwrap();
        let mut seed = 1u64;
        for n in 1..=3 {
            let bytes: Vec<u8> = (0..5000)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect();
            fs::write(segment_path(&dir, n), bytes).unwrap();
        }
        let r = recover(&dir).unwrap();
        assert_eq!(r.warnings.len(), 3);
        let _ = fs::remove_dir_all(&dir);
    }
}
