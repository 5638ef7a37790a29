//! amqp-wire against amq-protocol 10 (the codec under `lapin`), over the
//! same input bytes, in one run.
//!
//! Every group holds one benchmark per library (`amqp-wire`, `amq-protocol`)
//! fed the very same bytes. Before anything is timed, `main` checks that:
//!
//! * both libraries decode every input to the same fingerprint (the one
//!   function [`Fp`] fed by [`Fingerprint`], which reads each library's
//!   decoded values through its public accessors in the same order);
//! * both serialize the frames and the table to byte-identical output, equal
//!   to the input bytes (ours through both its slice and its `BufMut` API);
//! * our parsed bodies of `ZERO_COPY_MIN` bytes or more (and the long string
//!   over `ZERO_COPY_MIN`) point into the input buffer: zero copy, proved by
//!   address, not by hashing; the 1-byte body is a copy.
//!
//! Every timed iteration parses and fingerprints (or serializes) the whole
//! input, so a lazy decoder would pay for whatever it defers.
//!
//! Run: `cargo bench -p amqp-benches --bench wire` (see benches/README.md).

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::{AMQPClass, BasicProperties as TheirProps, basic as their_basic};
use amq_protocol_types::{
    AMQPValue, FieldTable as TheirTable, generation::gen_field_table, parsing::parse_field_table,
};
use amqp_benches::wire_inputs::{
    ack_frames, body, deliver_frames, encode_all, publish_frames, twenty_entry_table,
};
use amqp_types::{FieldTable, FieldValue, Method, ShortString};
use amqp_wire::{
    Frame, FrameLimits, FramePayload, Parsed, ZERO_COPY_MIN, decode_field_table,
    encode_field_table, encode_field_table_to_slice, parse_frame,
};
use bytes::{Buf, Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput, black_box};
use std::time::Duration;

// ---------------------------------------------------------------------------
// The one fingerprint.
// ---------------------------------------------------------------------------

/// An order-sensitive fingerprint (FNV-1a style mixing of 64-bit words).
#[derive(Clone, Copy)]
struct Fp(u64);

impl Fp {
    fn new() -> Self {
        Fp(0xcbf2_9ce4_8422_2325)
    }
    #[inline(always)]
    fn add(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// What the fingerprint reads, the same for both libraries:
///
/// * frame: channel, frame type, then
///   * method: class id, method id, then its arguments: integers and bits by
///     value, short strings by length (publish: exchange, routing key,
///     mandatory, immediate; deliver: consumer tag, delivery tag,
///     redelivered, exchange, routing key; ack: delivery tag, multiple);
///   * header: class id, body size, then for each present property its index
///     and value (short strings by length, octets and timestamps by value,
///     headers as a table);
///   * body: length;
/// * table: entry count, then per entry the key length and the value;
/// * value: type letter, then integers/timestamps by value, floats by bit
///   pattern, decimals by scale and value, long strings and byte arrays by
///   length, arrays by count and elements, tables recursively.
trait Fingerprint {
    fn fp(&self, fp: &mut Fp);
}

fn fingerprint(v: &impl Fingerprint) -> u64 {
    let mut fp = Fp::new();
    v.fp(&mut fp);
    fp.0
}

// --- amqp-wire / amqp-types -------------------------------------------------

impl Fingerprint for Frame {
    #[inline]
    fn fp(&self, fp: &mut Fp) {
        fp.add(self.channel.into());
        fp.add(self.frame_type().into());
        match &self.payload {
            FramePayload::Method(m) => {
                fp.add(m.class_id().into());
                fp.add(m.method_id().into());
                match m {
                    Method::BasicPublish(p) => {
                        fp.add(p.exchange.len() as u64);
                        fp.add(p.routing_key.len() as u64);
                        fp.add(p.mandatory.into());
                        fp.add(p.immediate.into());
                    }
                    Method::BasicDeliver(d) => {
                        fp.add(d.consumer_tag.len() as u64);
                        fp.add(d.delivery_tag);
                        fp.add(d.redelivered.into());
                        fp.add(d.exchange.len() as u64);
                        fp.add(d.routing_key.len() as u64);
                    }
                    Method::BasicAck(a) => {
                        fp.add(a.delivery_tag);
                        fp.add(a.multiple.into());
                    }
                    other => panic!("no fingerprint rule for {}", other.name()),
                }
            }
            FramePayload::Header(h) => {
                fp.add(60);
                fp.add(h.body_size);
                let p = &h.properties;
                let s = |fp: &mut Fp, i: u64, v: &Option<ShortString>| {
                    if let Some(v) = v {
                        fp.add(i);
                        fp.add(v.len() as u64);
                    }
                };
                let n = |fp: &mut Fp, i: u64, v: Option<u64>| {
                    if let Some(v) = v {
                        fp.add(i);
                        fp.add(v);
                    }
                };
                s(fp, 0, &p.content_type);
                s(fp, 1, &p.content_encoding);
                if let Some(t) = &p.headers {
                    fp.add(2);
                    t.fp(fp);
                }
                n(fp, 3, p.delivery_mode.map(u64::from));
                n(fp, 4, p.priority.map(u64::from));
                s(fp, 5, &p.correlation_id);
                s(fp, 6, &p.reply_to);
                s(fp, 7, &p.expiration);
                s(fp, 8, &p.message_id);
                n(fp, 9, p.timestamp);
                s(fp, 10, &p.kind);
                s(fp, 11, &p.user_id);
                s(fp, 12, &p.app_id);
                s(fp, 13, &p.cluster_id);
            }
            FramePayload::Body(b) => fp.add(b.len() as u64),
            FramePayload::Heartbeat => {}
            _ => panic!("unknown payload"),
        }
    }
}

impl Fingerprint for FieldTable {
    fn fp(&self, fp: &mut Fp) {
        fp.add(self.len() as u64);
        for (k, v) in self {
            fp.add(k.len() as u64);
            v.fp(fp);
        }
    }
}

impl Fingerprint for FieldValue {
    fn fp(&self, fp: &mut Fp) {
        fp.add(self.letter().into());
        match self {
            FieldValue::Bool(v) => fp.add((*v).into()),
            FieldValue::I8(v) => fp.add(*v as u64),
            FieldValue::U8(v) => fp.add((*v).into()),
            FieldValue::I16(v) => fp.add(*v as u64),
            FieldValue::U16(v) => fp.add((*v).into()),
            FieldValue::I32(v) => fp.add(*v as u64),
            FieldValue::U32(v) => fp.add((*v).into()),
            FieldValue::I64(v) => fp.add(*v as u64),
            FieldValue::F32(v) => fp.add(v.to_bits().into()),
            FieldValue::F64(v) => fp.add(v.to_bits()),
            FieldValue::Decimal(d) => {
                fp.add(d.scale.into());
                fp.add(d.value.into());
            }
            FieldValue::LongString(s) | FieldValue::ByteArray(s) => fp.add(s.len() as u64),
            FieldValue::Array(a) => {
                fp.add(a.len() as u64);
                for v in a {
                    v.fp(fp);
                }
            }
            FieldValue::Timestamp(v) => fp.add(*v),
            FieldValue::Table(t) => t.fp(fp),
            FieldValue::Void => {}
            _ => panic!("unknown field value"),
        }
    }
}

// --- amq-protocol -------------------------------------------------------------

impl Fingerprint for AMQPFrame {
    #[inline]
    fn fp(&self, fp: &mut Fp) {
        fp.add(self.channel_id().into());
        match self {
            AMQPFrame::Method(_, class) => {
                fp.add(1);
                fp.add(class.get_amqp_class_id().into());
                fp.add(class.get_amqp_method_id().into());
                match class {
                    AMQPClass::Basic(their_basic::AMQPMethod::Publish(p)) => {
                        fp.add(p.exchange.as_str().len() as u64);
                        fp.add(p.routing_key.as_str().len() as u64);
                        fp.add(p.mandatory.into());
                        fp.add(p.immediate.into());
                    }
                    AMQPClass::Basic(their_basic::AMQPMethod::Deliver(d)) => {
                        fp.add(d.consumer_tag.as_str().len() as u64);
                        fp.add(d.delivery_tag);
                        fp.add(d.redelivered.into());
                        fp.add(d.exchange.as_str().len() as u64);
                        fp.add(d.routing_key.as_str().len() as u64);
                    }
                    AMQPClass::Basic(their_basic::AMQPMethod::Ack(a)) => {
                        fp.add(a.delivery_tag);
                        fp.add(a.multiple.into());
                    }
                    other => panic!("no fingerprint rule for {other:?}"),
                }
            }
            AMQPFrame::Header(_, h) => {
                fp.add(2);
                fp.add(h.class_id.into());
                fp.add(h.body_size);
                their_props_fp(&h.properties, fp);
            }
            AMQPFrame::Body(_, b) => {
                fp.add(3);
                fp.add(b.len() as u64);
            }
            AMQPFrame::Heartbeat => fp.add(8),
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

fn their_props_fp(p: &TheirProps, fp: &mut Fp) {
    use amq_protocol_types::ShortString as S;
    let s = |fp: &mut Fp, i: u64, v: &Option<S>| {
        if let Some(v) = v {
            fp.add(i);
            fp.add(v.as_str().len() as u64);
        }
    };
    let n = |fp: &mut Fp, i: u64, v: Option<u64>| {
        if let Some(v) = v {
            fp.add(i);
            fp.add(v);
        }
    };
    s(fp, 0, p.content_type());
    s(fp, 1, p.content_encoding());
    if let Some(t) = p.headers() {
        fp.add(2);
        t.fp(fp);
    }
    n(fp, 3, p.delivery_mode().map(u64::from));
    n(fp, 4, p.priority().map(u64::from));
    s(fp, 5, p.correlation_id());
    s(fp, 6, p.reply_to());
    s(fp, 7, p.expiration());
    s(fp, 8, p.message_id());
    n(fp, 9, *p.timestamp());
    s(fp, 10, p.kind());
    s(fp, 11, p.user_id());
    s(fp, 12, p.app_id());
    s(fp, 13, p.cluster_id());
}

impl Fingerprint for TheirTable {
    fn fp(&self, fp: &mut Fp) {
        let map = self.inner();
        fp.add(map.len() as u64);
        for (k, v) in map {
            fp.add(k.as_str().len() as u64);
            v.fp(fp);
        }
    }
}

impl Fingerprint for AMQPValue {
    fn fp(&self, fp: &mut Fp) {
        fp.add(u64::from(self.get_type().get_id()));
        match self {
            AMQPValue::Boolean(v) => fp.add((*v).into()),
            AMQPValue::ShortShortInt(v) => fp.add(*v as u64),
            AMQPValue::ShortShortUInt(v) => fp.add((*v).into()),
            AMQPValue::ShortInt(v) => fp.add(*v as u64),
            AMQPValue::ShortUInt(v) => fp.add((*v).into()),
            AMQPValue::LongInt(v) => fp.add(*v as u64),
            AMQPValue::LongUInt(v) => fp.add((*v).into()),
            AMQPValue::LongLongInt(v) => fp.add(*v as u64),
            AMQPValue::Float(v) => fp.add(v.to_bits().into()),
            AMQPValue::Double(v) => fp.add(v.to_bits()),
            AMQPValue::DecimalValue(d) => {
                fp.add(d.scale.into());
                fp.add(d.value.into());
            }
            AMQPValue::LongString(s) => fp.add(s.len() as u64),
            AMQPValue::ByteArray(s) => fp.add(s.len() as u64),
            AMQPValue::FieldArray(a) => {
                fp.add(a.as_slice().len() as u64);
                for v in a.as_slice() {
                    v.fp(fp);
                }
            }
            AMQPValue::Timestamp(v) => fp.add(*v),
            AMQPValue::FieldTable(t) => t.fp(fp),
            AMQPValue::Void => {}
            AMQPValue::ShortString(_) => panic!("'s' is a short int on the wire, as RabbitMQ"),
        }
    }
}

// ---------------------------------------------------------------------------
// Inputs: built with amqp-types, encoded once; both libraries parse these
// exact bytes (and must re-encode them byte for byte).
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// The two parse loops and the two serializers (exactly what is timed).
// ---------------------------------------------------------------------------

/// 128 KiB, RabbitMQ's default frame_max: the 128 KiB body frame fits (the
/// parser allows `frame_max` bytes of payload, as RabbitMQ does).
const LIMITS: FrameLimits = FrameLimits::new(128 * 1024);

/// Parses the whole of `rest`, advancing it as a decoder advances its read
/// buffer. The `Bytes` handle itself is made outside the timed region (see
/// [`parse_group`]): it is the caller's buffer, not a per-frame cost.
#[inline]
fn ours_parse(rest: &mut Bytes) -> u64 {
    let mut fp = Fp::new();
    while !rest.is_empty() {
        // Read the frame where it lies (both loops match by reference, so
        // neither pays for moving its frame out of the result).
        match &parse_frame(rest, LIMITS) {
            Ok(Parsed::Complete { frame, consumed }) => {
                frame.fp(&mut fp);
                rest.advance(*consumed);
            }
            other => panic!("amqp-wire: {other:?}"),
        }
    }
    fp.0
}

#[inline]
fn theirs_parse(input: &[u8]) -> u64 {
    let mut fp = Fp::new();
    let mut rest = input;
    while !rest.is_empty() {
        match &amq_protocol::frame::parse_frame(rest) {
            Ok((r, frame)) => {
                frame.fp(&mut fp);
                rest = r;
            }
            Err(e) => panic!("amq-protocol: {e:?}"),
        }
    }
    fp.0
}

/// Both serializers write into the same kind of sink, a preallocated
/// `&mut [u8]`, so neither pays for growing a buffer: ours through
/// `Frame::encode_to_slice` (straight into the slice, lengths patched in
/// place), theirs through cookie-factory's `WriteContext` over the slice
/// (its in-place `BackToTheBuffer`).
#[inline]
fn ours_serialize(frames: &[Frame], out: &mut [u8]) -> usize {
    let mut pos = 0;
    for f in frames {
        pos += f.encode_to_slice(&mut out[pos..]).unwrap();
    }
    pos
}

/// Ours through the generic `Frame::encode` into a `BufMut` (here the same
/// `&mut [u8]`): method and header frames go through per-thread scratch
/// space and one copy. Timed for information as `amqp-wire/BufMut`.
#[inline]
fn ours_serialize_bufmut(frames: &[Frame], out: &mut [u8]) -> usize {
    let mut dst = &mut out[..];
    let before = dst.len();
    for f in frames {
        f.encode(&mut dst).unwrap();
    }
    before - dst.len()
}

#[inline]
fn theirs_serialize(frames: &[AMQPFrame], out: &mut [u8]) -> usize {
    let mut ctx = WriteContext::from(out);
    for f in frames {
        ctx = gen_frame(f)(ctx).unwrap();
    }
    ctx.position as usize
}

fn theirs_frames(input: &[u8]) -> Vec<AMQPFrame> {
    let mut rest = input;
    let mut v = Vec::new();
    while !rest.is_empty() {
        let (r, f) = amq_protocol::frame::parse_frame(rest).unwrap();
        v.push(f);
        rest = r;
    }
    v
}

fn ours_frames(input: &Bytes) -> Vec<Frame> {
    let mut rest = input.clone();
    let mut v = Vec::new();
    while !rest.is_empty() {
        match parse_frame(&rest, LIMITS).unwrap() {
            Parsed::Complete { frame, consumed } => {
                v.push(frame);
                rest.advance(consumed);
            }
            Parsed::Incomplete { .. } => unreachable!(),
        }
    }
    v
}

// ---------------------------------------------------------------------------
// Checks made before timing.
// ---------------------------------------------------------------------------

fn assert_inside(what: &str, part: &[u8], whole: &[u8]) {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    assert!(
        p >= w && p + part.len() <= w + whole.len(),
        "{what}: not a slice of the input buffer (copied)"
    );
}

/// A body under `ZERO_COPY_MIN` bytes is copied: it must not pin the input.
fn assert_outside(what: &str, part: &[u8], whole: &[u8]) {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    assert!(
        part.is_empty() || p + part.len() <= w || p >= w + whole.len(),
        "{what}: a {}-byte body shares the input buffer",
        part.len()
    );
}

/// Same fingerprint from both parsers; our bodies of `ZERO_COPY_MIN` bytes
/// or more point into the input, smaller ones are copies.
fn check_parse(name: &str, input: &Bytes) -> u64 {
    let ours = ours_parse(&mut input.clone());
    let theirs = theirs_parse(input);
    assert_eq!(ours, theirs, "{name}: fingerprints differ");
    for f in ours_frames(input) {
        if let FramePayload::Body(b) = &f.payload {
            if b.len() >= ZERO_COPY_MIN {
                assert_inside(name, b, input);
            } else {
                assert_outside(name, b, input);
            }
        }
    }
    ours
}

/// Both serializers reproduce `input` byte for byte.
fn check_serialize(name: &str, input: &Bytes) {
    let (ours, theirs) = (ours_frames(input), theirs_frames(input));
    let mut a = vec![0u8; input.len()];
    let mut b = vec![0u8; input.len()];
    assert_eq!(ours_serialize_bufmut(&ours, &mut a), input.len());
    assert!(
        a == input[..],
        "{name}: amqp-wire (BufMut) output differs from input"
    );
    a.fill(0);
    assert_eq!(ours_serialize(&ours, &mut a), input.len());
    assert_eq!(theirs_serialize(&theirs, &mut b), input.len());
    assert!(
        a == input[..],
        "{name}: amqp-wire output differs from input"
    );
    assert!(
        b == input[..],
        "{name}: amq-protocol output differs from input"
    );
}

// ---------------------------------------------------------------------------
// The groups.
// ---------------------------------------------------------------------------

const OURS: &str = "amqp-wire";
const OURS_BUFMUT: &str = "amqp-wire/BufMut";
const THEIRS: &str = "amq-protocol";

/// Times both parsers over `input`. Each iteration starts from its own
/// handle on the input, made before the timed region and dropped after it,
/// the same way for both libraries: a `Bytes` clone for ours (a reference
/// count increment, and a decrement when it is dropped), a copy of the
/// `&[u8]` for theirs. A decoder owns its read buffer and parses many frames
/// from it, so the handle's two atomics are not a per-frame cost; timing them
/// inside the loop made the one-frame groups (`parse_body`) measure the
/// bench's clone rather than the parser.
fn time_parse(g: &mut BenchmarkGroup<'_, WallTime>, label: Option<&str>, input: &Bytes) {
    let id = |lib: &str| match label {
        Some(l) => BenchmarkId::new(lib, l),
        None => BenchmarkId::from_parameter(lib),
    };
    g.bench_function(id(OURS), |b| {
        b.iter_batched_ref(
            || input.clone(),
            |rest| ours_parse(black_box(rest)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function(id(THEIRS), |b| {
        b.iter_batched_ref(
            || &input[..],
            |rest| theirs_parse(black_box(rest)),
            BatchSize::SmallInput,
        )
    });
}

fn parse_group(c: &mut Criterion, name: &str, input: &Bytes) {
    check_parse(name, input);
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(input.len() as u64));
    time_parse(&mut g, None, input);
    g.finish();
}

fn bench(c: &mut Criterion) {
    let publish = encode_all(&publish_frames());
    let deliver = encode_all(&deliver_frames());
    let acks = encode_all(&ack_frames(10_000));

    // 1. parse basic.publish + header (5 headers) + 1 KiB body.
    parse_group(c, "parse_publish", &publish);

    // 2. serialize the same three frames.
    check_serialize("serialize_publish", &publish);
    {
        let ours = ours_frames(&publish);
        let theirs = theirs_frames(&publish);
        let mut buf = vec![0u8; publish.len()];
        let mut g = c.benchmark_group("serialize_publish");
        g.throughput(Throughput::Bytes(publish.len() as u64));
        g.bench_function(OURS, |b| {
            b.iter(|| ours_serialize(black_box(&ours), black_box(&mut buf)))
        });
        g.bench_function(THEIRS, |b| {
            b.iter(|| theirs_serialize(black_box(&theirs), black_box(&mut buf)))
        });
        g.bench_function(OURS_BUFMUT, |b| {
            b.iter(|| ours_serialize_bufmut(black_box(&ours), black_box(&mut buf)))
        });
        g.finish();
    }

    // 3. parse basic.deliver + header + 1 KiB body.
    parse_group(c, "parse_deliver", &deliver);

    // 4. parse 10,000 basic.ack frames from one buffer.
    parse_group(c, "parse_ack_x10000", &acks);

    // 5. one body frame: 1 byte and 128 KiB.
    {
        let mut g = c.benchmark_group("parse_body");
        for (label, len) in [("1B", 1usize), ("128KiB", 128 * 1024)] {
            let input = encode_all(&[Frame::body(1, body(len))]);
            check_parse("parse_body", &input);
            time_parse(&mut g, Some(label), &input);
        }
        g.finish();
    }

    // 6. a 20-entry table with every type letter: decode, then encode.
    {
        let table = twenty_entry_table();
        let mut enc = BytesMut::new();
        encode_field_table(&table, &mut enc).unwrap();
        let input = enc.freeze();

        let ours = decode_field_table(&input).unwrap();
        let (rest, theirs) = parse_field_table(&input[..]).unwrap();
        assert!(rest.is_empty());
        assert_eq!(ours, table);
        assert_eq!(
            fingerprint(&ours),
            fingerprint(&theirs),
            "table fingerprints"
        );
        let long = ours.get("s-long-longstr").and_then(FieldValue::as_bytes);
        assert_inside("table long string", long.unwrap(), &input);

        let mut g = c.benchmark_group("table_decode");
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(OURS, |b| {
            b.iter(|| fingerprint(&decode_field_table(black_box(&input)).unwrap()))
        });
        g.bench_function(THEIRS, |b| {
            b.iter(|| fingerprint(&parse_field_table(black_box(&input[..])).unwrap().1))
        });
        g.finish();

        // Both into a preallocated `&mut [u8]`: ours with
        // `encode_field_table_to_slice`, theirs with cookie-factory's
        // `WriteContext` (the `BufMut` API is timed as `amqp-wire/BufMut`).
        let ours_enc =
            |t: &FieldTable, out: &mut [u8]| encode_field_table_to_slice(t, out).unwrap();
        let ours_enc_bufmut = |t: &FieldTable, out: &mut [u8]| {
            let mut dst = &mut out[..];
            encode_field_table(t, &mut dst).unwrap()
        };
        let theirs_enc = |t: &TheirTable, out: &mut [u8]| {
            gen_field_table(t)(WriteContext::from(out))
                .unwrap()
                .position as usize
        };
        let mut a = vec![0u8; input.len()];
        let mut b = vec![0u8; input.len()];
        assert_eq!(ours_enc_bufmut(&ours, &mut a), input.len());
        assert!(a == input[..], "amqp-wire (BufMut) table encoding differs");
        a.fill(0);
        assert_eq!(ours_enc(&ours, &mut a), input.len());
        assert_eq!(theirs_enc(&theirs, &mut b), input.len());
        assert!(a == input[..], "amqp-wire table encoding differs");
        assert!(b == input[..], "amq-protocol table encoding differs");

        let mut g = c.benchmark_group("table_encode");
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(OURS, |b| {
            b.iter(|| ours_enc(black_box(&ours), black_box(&mut a)))
        });
        g.bench_function(THEIRS, |b| {
            b.iter(|| theirs_enc(black_box(&theirs), black_box(&mut a)))
        });
        g.bench_function(OURS_BUFMUT, |b| {
            b.iter(|| ours_enc_bufmut(black_box(&ours), black_box(&mut a)))
        });
        g.finish();
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
