//! The wire benchmark's inputs, built with amqp-types and encoded once: both
//! libraries parse these exact bytes (and must re-encode them byte for byte).
//! Shared by `benches/wire.rs` (criterion) and `examples/wire_instructions.rs`
//! (callgrind).

use amqp_types::method::{BasicAck, BasicDeliver, BasicPublish};
use amqp_types::{
    BasicProperties, Decimal, FieldArray, FieldTable, FieldValue, LongString, ShortString,
};
use amqp_wire::Frame;
use bytes::{Bytes, BytesMut};

fn ss(s: &str) -> ShortString {
    ShortString::try_from(s).unwrap()
}

/// A typical message's properties: content type, persistent delivery, five
/// application headers, a message id and a timestamp. Header keys are
/// sorted and unique so that amq-protocol's BTreeMap keeps wire order.
pub fn message_properties() -> BasicProperties {
    let mut headers = FieldTable::new();
    headers.insert("correlation-source", "billing-service");
    headers.insert("retry-count", 3i32);
    headers.insert("tenant", "acme-eu");
    headers.insert("trace-id", "4bf92f3577b34da6a3ce929d0e0e4736");
    headers.push(ss("x-first-seen"), FieldValue::Timestamp(1_700_000_000));
    BasicProperties {
        content_type: Some(ss("application/json")),
        headers: Some(headers),
        delivery_mode: Some(2),
        message_id: Some(ss("7f1c0e9a-3b52-4d0e-9a51-3f1d2c8b6e70")),
        timestamp: Some(1_700_000_123),
        ..Default::default()
    }
}

/// A body of `len` bytes.
pub fn body(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 + 7) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Encodes `frames` into one buffer.
pub fn encode_all(frames: &[Frame]) -> Bytes {
    let mut out = BytesMut::new();
    for f in frames {
        f.encode(&mut out).unwrap();
    }
    out.freeze()
}

/// basic.publish + header + 1 KiB body.
pub fn publish_frames() -> Vec<Frame> {
    vec![
        Frame::method(
            1,
            BasicPublish {
                ticket: 0,
                exchange: ss("orders"),
                routing_key: ss("orders.eu.created"),
                mandatory: true,
                immediate: false,
            },
        ),
        Frame::header(1, 1024, message_properties()),
        Frame::body(1, body(1024)),
    ]
}

/// basic.deliver + header + 1 KiB body.
pub fn deliver_frames() -> Vec<Frame> {
    vec![
        Frame::method(
            1,
            BasicDeliver {
                consumer_tag: ss("amq.ctag-Lk3Tq9JrZ0cQm1wYp7VxhA"),
                delivery_tag: 123_456,
                redelivered: false,
                exchange: ss("orders"),
                routing_key: ss("orders.eu.created"),
            },
        ),
        Frame::header(1, 1024, message_properties()),
        Frame::body(1, body(1024)),
    ]
}

/// `n` basic.ack frames.
pub fn ack_frames(n: u64) -> Vec<Frame> {
    (1..=n)
        .map(|tag| {
            Frame::method(
                1,
                BasicAck {
                    delivery_tag: tag,
                    multiple: tag % 16 == 0,
                },
            )
        })
        .collect()
}

/// 20 entries covering every type letter (t b B s u I i l f d D S A T F V x),
/// keys sorted and unique (amq-protocol's table is a BTreeMap).
pub fn twenty_entry_table() -> FieldTable {
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
    // Long enough (200 bytes) for amqp-wire's zero-copy path.
    t.insert("s-long-longstr", "y".repeat(200));
    t.insert("t-priority", 5u8);
    assert_eq!(t.len(), 20);
    let letters: std::collections::BTreeSet<u8> = t.iter().map(|(_, v)| v.letter()).collect();
    assert_eq!(
        letters.len(),
        FieldValue::LETTERS.len(),
        "every type letter"
    );
    t
}
