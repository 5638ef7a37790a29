//! Instruction counts for the wire benchmarks, amqp-wire against
//! amq-protocol 10 on the same bytes: run under callgrind by
//! `benches/instructions.sh`, which is reliable on a noisy machine where
//! wall-clock timings are not. Each `ours_*` / `theirs_*` function is one
//! iteration of a workload; the script counts instructions inside it only.

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::types::{generation::gen_field_table, parsing::parse_field_table};
use amqp_types::method::{BasicAck, BasicDeliver, BasicPublish};
use amqp_types::{
    BasicProperties, Decimal, FieldArray, FieldTable, FieldValue, LongString, ShortString,
};
use amqp_wire::{
    Frame, FrameLimits, FramePayload, Parsed, decode_field_table, encode_field_table, parse_frame,
};
use bytes::{Buf, Bytes, BytesMut};
use std::hint::black_box;

fn ss(s: &str) -> ShortString {
    ShortString::try_from(s).expect("short")
}

fn encode(frames: &[Frame]) -> Bytes {
    let mut b = BytesMut::new();
    for f in frames {
        f.encode(&mut b).expect("encodable");
    }
    b.freeze()
}

fn properties() -> BasicProperties {
    // Sorted keys: amq-protocol keeps tables in a BTreeMap, and the two
    // libraries must write identical bytes.
    let mut h = FieldTable::new();
    h.insert("attempt", 3i32);
    h.insert("priority-class", "gold");
    h.insert("retry", true);
    h.insert("tenant", "acme");
    h.insert("trace-id", "0af7651916cd43dd8448eb211c80319c");
    BasicProperties {
        content_type: Some(ss("application/json")),
        delivery_mode: Some(2),
        message_id: Some(ss("msg-000001")),
        timestamp: Some(1_700_000_000),
        headers: Some(h),
        ..Default::default()
    }
}

fn publish() -> Vec<Frame> {
    vec![
        Frame::method(
            1,
            BasicPublish {
                exchange: ss("orders"),
                routing_key: ss("order.eu.paris"),
                ..Default::default()
            },
        ),
        Frame::header(1, 1024, properties()),
        Frame::body(1, Bytes::from(vec![7u8; 1024])),
    ]
}

fn deliver() -> Vec<Frame> {
    vec![
        Frame::method(
            1,
            BasicDeliver {
                consumer_tag: ss("amq.ctag-5Hq3zR0PpTtqLVxqX4cW3w"),
                delivery_tag: 42,
                exchange: ss("orders"),
                routing_key: ss("order.eu.paris"),
                ..Default::default()
            },
        ),
        Frame::header(1, 1024, properties()),
        Frame::body(1, Bytes::from(vec![7u8; 1024])),
    ]
}

fn table() -> FieldTable {
    let mut inner = FieldTable::new();
    inner.insert("count", 2i64);
    inner.insert("reason", "expired");
    let mut death = FieldTable::new();
    death.insert("count", 1i64);
    death.insert("queue", "orders.retry");
    let mut array = FieldArray::new();
    array.push(1i32);
    array.push("two");
    array.push(false);
    let mut deaths = FieldArray::new();
    deaths.push(death);
    let mut t = FieldTable::new();
    t.insert("a-bool", true);
    t.insert("b-i8", -5i8);
    t.insert("c-u8", 200u8);
    t.insert("d-i16", -1234i16);
    t.insert("e-u16", 54_321u16);
    t.insert("f-i32", -100_000i32);
    t.insert("g-u32", 3_000_000_000u32);
    t.insert("h-i64", -9_000_000_000_000_000i64);
    t.insert("i-f32", 1.5f32);
    t.insert("j-f64", 2.25f64);
    t.insert(
        "k-decimal",
        Decimal {
            scale: 2,
            value: 12_345,
        },
    );
    t.insert("l-longstr", "application/json; charset=utf-8");
    t.insert("m-array", array);
    t.push(ss("n-timestamp"), FieldValue::Timestamp(1_700_000_000));
    t.insert("o-table", inner);
    t.push(ss("p-void"), FieldValue::Void);
    t.push(
        ss("q-bytes"),
        FieldValue::ByteArray(LongString::from((0u8..16).collect::<Vec<u8>>())),
    );
    t.insert("r-x-death", deaths);
    t.insert("s-long-longstr", "y".repeat(200));
    t.insert("t-priority", 5u8);
    t
}

const LIMITS: FrameLimits = FrameLimits::new(128 * 1024);

/// Sums what both libraries expose the same way, so neither can skip work.
#[inline(never)]
fn ours_parse(input: &Bytes) -> u64 {
    let mut n = 0u64;
    let mut rest = input.clone();
    while !rest.is_empty() {
        match &parse_frame(&rest, LIMITS) {
            Ok(Parsed::Complete { frame, consumed }) => {
                n += frame.channel as u64 + frame.frame_type() as u64;
                if let FramePayload::Body(b) = &frame.payload {
                    n += b.len() as u64;
                }
                rest.advance(*consumed);
            }
            other => panic!("{other:?}"),
        }
    }
    n
}

#[inline(never)]
fn theirs_parse(input: &[u8]) -> u64 {
    let mut n = 0u64;
    let mut rest = input;
    while !rest.is_empty() {
        let (r, f) = amq_protocol::frame::parse_frame(rest).expect("parse");
        n += match &f {
            AMQPFrame::Method(ch, _) => *ch as u64 + 1,
            AMQPFrame::Header(ch, _) => *ch as u64 + 2,
            AMQPFrame::Body(ch, b) => *ch as u64 + 3 + b.len() as u64,
            _ => 8,
        };
        rest = r;
    }
    n
}

#[inline(never)]
fn ours_serialize(frames: &[Frame], out: &mut [u8]) -> u64 {
    let mut d = out;
    let before = d.len();
    for f in frames {
        f.encode(&mut d).expect("encode");
    }
    (before - d.len()) as u64
}

#[inline(never)]
fn theirs_serialize(frames: &[AMQPFrame], out: &mut [u8]) -> u64 {
    let mut ctx = WriteContext::from(out);
    for f in frames {
        ctx = gen_frame(f)(ctx).expect("gen");
    }
    ctx.position
}

#[inline(never)]
fn ours_table_decode(i: &Bytes) -> u64 {
    decode_field_table(i).expect("table").len() as u64
}

#[inline(never)]
fn theirs_table_decode(i: &[u8]) -> u64 {
    parse_field_table(i).expect("table").1.inner().len() as u64
}

#[inline(never)]
fn ours_table_encode(t: &FieldTable, out: &mut [u8]) -> u64 {
    let mut d = out;
    encode_field_table(t, &mut d).expect("encode") as u64
}

#[inline(never)]
fn theirs_table_encode(t: &amq_protocol::types::FieldTable, out: &mut [u8]) -> u64 {
    gen_field_table(t)(WriteContext::from(out))
        .expect("gen")
        .position
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let iters: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let pubs = encode(&publish());
    let dels = encode(&deliver());
    let acks = encode(
        &(0..10_000u64)
            .map(|i| {
                Frame::method(
                    1,
                    BasicAck {
                        delivery_tag: i,
                        multiple: false,
                    },
                )
            })
            .collect::<Vec<_>>(),
    );
    let ours_frames = publish();
    let mut theirs_frames = Vec::new();
    let mut rest = &pubs[..];
    while !rest.is_empty() {
        let (r, f) = amq_protocol::frame::parse_frame(rest).expect("parse");
        theirs_frames.push(f);
        rest = r;
    }
    let t = table();
    let mut tb = BytesMut::new();
    encode_field_table(&t, &mut tb).expect("encode");
    let tin = tb.freeze();
    let theirs_t = parse_field_table(&tin[..]).expect("table").1;
    if which == "check" {
        // Both libraries read the same inputs to the same sums, and write
        // the same bytes (run once, outside any counted function).
        for input in [&pubs, &dels, &acks] {
            assert_eq!(ours_parse(input), theirs_parse(input));
        }
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        let n = ours_serialize(&ours_frames, &mut a) as usize;
        assert_eq!(n as u64, theirs_serialize(&theirs_frames, &mut b));
        assert_eq!(a[..n], b[..n]);
        assert_eq!(ours_table_decode(&tin), theirs_table_decode(&tin));
        let n = ours_table_encode(&t, &mut a) as usize;
        assert_eq!(n as u64, theirs_table_encode(&theirs_t, &mut b));
        assert_eq!(a[..n], b[..n]);
        println!("same results and bytes from both libraries");
        return;
    }
    let mut out = vec![0u8; 4096];
    let mut s = 0u64;
    for _ in 0..iters {
        s += match which.as_str() {
            "parse_publish/ours" => ours_parse(black_box(&pubs)),
            "parse_publish/theirs" => theirs_parse(black_box(&pubs)),
            "parse_deliver/ours" => ours_parse(black_box(&dels)),
            "parse_deliver/theirs" => theirs_parse(black_box(&dels)),
            "parse_ack_x10000/ours" => ours_parse(black_box(&acks)),
            "parse_ack_x10000/theirs" => theirs_parse(black_box(&acks)),
            "serialize_publish/ours" => ours_serialize(black_box(&ours_frames), &mut out),
            "serialize_publish/theirs" => theirs_serialize(black_box(&theirs_frames), &mut out),
            "table_decode/ours" => ours_table_decode(black_box(&tin)),
            "table_decode/theirs" => theirs_table_decode(black_box(&tin)),
            "table_encode/ours" => ours_table_encode(black_box(&t), &mut out),
            "table_encode/theirs" => theirs_table_encode(black_box(&theirs_t), &mut out),
            _ => {
                eprintln!("usage: wire_instructions GROUP/(ours|theirs) [ITERATIONS]");
                std::process::exit(2);
            }
        };
    }
    println!("{s}");
}
