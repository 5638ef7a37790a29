//! The `broker_ops` check: arbitrary client operations and byte streams
//! against amqp-broker's core, over in-memory connections
//! ([`amqp_broker::testing::Harness`]).
//!
//! Up to six clients connect (or send raw bytes to the broker side without
//! a client), open and close channels, send any method with arbitrary
//! fields, publish arbitrary properties and bodies, ack arbitrary tags,
//! inject garbage, let time pass and vanish. Invariants, after every step:
//!
//! * nothing panics;
//! * the core's bookkeeping holds ([`Core::check_invariants`](amqp_broker::core::Core::check_invariants));
//! * the in-memory network settles within a bounded number of rounds (no
//!   livelock).

use amqp_broker::testing::Harness;
use amqp_codec::types::method::BasicPublish;
use amqp_codec::types::{BasicProperties, Method, ReplyCode};
use amqp_codec::{ClientConfig, ServerConfig};
use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use std::time::Duration;

#[derive(Debug, Arbitrary)]
enum Op {
    Connect,
    OpenChannel(u8, u16),
    CloseChannel(u8, u16),
    Close(u8),
    Method(u8, u16, Box<Method>),
    Publish(u8, u16, Box<(BasicPublish, BasicProperties)>, Vec<u8>),
    Ack(u8, u16, u64, bool),
    Nack(u8, u16, u64, bool, bool),
    Garbage(u8, Vec<u8>),
    Advance(u16),
    Drop(u8),
    Settle,
    /// Queue `lq{n % 4}` declared with lifecycle arguments an arbitrary
    /// table rarely spells: quorum (delivery limit), stream, TTL, length
    /// limits and overflow, dead-lettering, priorities, single active
    /// consumer.
    Lifecycle(u8, u16, u8, u8),
    /// A publish to `lq{n % 4}` (priority, expiration, persistent).
    PublishTo(u8, u16, u8, u8),
    /// A consumer on `lq{n % 4}` (manual ack, prefetch, a stream offset).
    ConsumeFrom(u8, u16, u8, i8),
    /// A policy over the `lq` queues set (with limits, TTL, delivery
    /// limit, dead-lettering) or cleared.
    Policy(u8, bool),
}

/// The queue arguments of [`Op::Lifecycle`]: `kind` picks the queue type,
/// the bits of `bits` the features.
fn lifecycle_args(kind: u8, bits: u8) -> amqp_codec::types::FieldTable {
    use amqp_codec::types::{FieldTable, FieldValue, LongString};
    let mut t = FieldTable::new();
    match kind % 3 {
        1 => {
            t.insert("x-queue-type", LongString::from_static("quorum"));
            t.insert("x-delivery-limit", FieldValue::I32(i32::from(bits % 3)));
        }
        2 => {
            t.insert("x-queue-type", LongString::from_static("stream"));
            t.insert("x-max-length-bytes", FieldValue::I64(2000));
            t.insert("x-stream-max-segment-size-bytes", FieldValue::I64(500));
            return t;
        }
        _ => {
            if bits & 1 != 0 {
                t.insert("x-max-priority", FieldValue::I32(5));
            }
            if bits & 2 != 0 {
                t.insert("x-single-active-consumer", FieldValue::Bool(true));
            }
        }
    }
    if bits & 4 != 0 {
        t.insert("x-message-ttl", FieldValue::I32(i32::from(bits >> 5) * 10));
    }
    if bits & 8 != 0 {
        t.insert("x-max-length", FieldValue::I32(3));
        let o = ["drop-head", "reject-publish", "reject-publish-dlx"][usize::from(bits % 3)];
        t.insert("x-overflow", LongString::copy_from(o.as_bytes()));
    }
    if bits & 16 != 0 {
        t.insert("x-dead-letter-exchange", LongString::from_static(""));
        t.insert("x-dead-letter-routing-key", LongString::from_static("lq0"));
    }
    t
}

const MAX_LINKS: usize = 6;
const MAX_OPS: usize = 200;

/// Runs one input. Panics on a broken invariant.
pub fn broker_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut h = Harness::default();
    let server = ServerConfig::default();
    for _ in 0..MAX_OPS {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        let pick = |i: u8, h: &Harness| -> Option<usize> {
            (!h.links.is_empty()).then(|| usize::from(i) % h.links.len())
        };
        match op {
            Op::Connect => {
                if h.links.len() < MAX_LINKS {
                    h.connect(ClientConfig::default(), server.clone());
                }
            }
            Op::OpenChannel(i, ch) => {
                if let Some(i) = pick(i, &h) {
                    let _ = h.links[i].client.open_channel_with(ch % 8);
                }
            }
            Op::CloseChannel(i, ch) => {
                if let Some(i) = pick(i, &h) {
                    let _ = h.links[i]
                        .client
                        .close_channel(ch % 8, ReplyCode::REPLY_SUCCESS, "");
                }
            }
            Op::Close(i) => {
                if let Some(i) = pick(i, &h) {
                    let _ = h.links[i].client.close(ReplyCode::REPLY_SUCCESS, "");
                }
            }
            Op::Method(i, ch, m) => {
                if let Some(i) = pick(i, &h) {
                    let _ = h.links[i].client.send_method(ch % 8, *m);
                }
            }
            Op::Publish(i, ch, pp, body) => {
                if let Some(i) = pick(i, &h) {
                    let (p, props) = *pp;
                    let _ = h.links[i]
                        .client
                        .publish(ch % 8, p, &props, Bytes::from(body));
                }
            }
            Op::Ack(i, ch, tag, multiple) => {
                if let Some(i) = pick(i, &h) {
                    let _ = h.links[i].client.ack(ch % 8, tag % 64, multiple);
                }
            }
            Op::Nack(i, ch, tag, multiple, requeue) => {
                if let Some(i) = pick(i, &h) {
                    let _ = h.links[i].client.nack(ch % 8, tag % 64, multiple, requeue);
                }
            }
            Op::Garbage(i, bytes) => {
                if let Some(i) = pick(i, &h) {
                    h.inject(i, Bytes::from(bytes));
                }
            }
            Op::Advance(ms) => h.advance(Duration::from_millis(u64::from(ms) * 10)),
            Op::Drop(i) => {
                if let Some(i) = pick(i, &h) {
                    h.drop_link(i);
                }
            }
            Op::Settle => {}
            Op::Lifecycle(i, ch, n, bits) => {
                if let Some(i) = pick(i, &h) {
                    let kind = bits % 3;
                    let _ = h.links[i].client.send_method(
                        ch % 8,
                        amqp_codec::types::method::QueueDeclare {
                            queue: format!("lq{}", n % 4)
                                .as_str()
                                .try_into()
                                .unwrap_or_default(),
                            durable: kind != 0,
                            arguments: lifecycle_args(kind, bits.rotate_left(u32::from(n))),
                            ..Default::default()
                        },
                    );
                }
            }
            Op::PublishTo(i, ch, n, p) => {
                if let Some(i) = pick(i, &h) {
                    let props = BasicProperties {
                        priority: (p & 1 != 0).then_some(p % 8),
                        expiration: (p & 2 != 0).then(|| {
                            format!("{}", p % 50)
                                .as_str()
                                .try_into()
                                .unwrap_or_default()
                        }),
                        delivery_mode: Some(1 + (p & 4 != 0) as u8),
                        ..Default::default()
                    };
                    let _ = h.links[i].client.publish(
                        ch % 8,
                        BasicPublish {
                            routing_key: format!("lq{}", n % 4)
                                .as_str()
                                .try_into()
                                .unwrap_or_default(),
                            ..Default::default()
                        },
                        &props,
                        Bytes::from(vec![b'x'; usize::from(p)]),
                    );
                }
            }
            Op::ConsumeFrom(i, ch, n, offset) => {
                if let Some(i) = pick(i, &h) {
                    use amqp_codec::types::{FieldTable, FieldValue};
                    let c = &mut h.links[i].client;
                    let _ = c.send_method(
                        ch % 8,
                        amqp_codec::types::method::BasicQos {
                            prefetch_count: u16::from(n % 5),
                            ..Default::default()
                        },
                    );
                    let mut arguments = FieldTable::new();
                    arguments.insert("x-stream-offset", FieldValue::I64(i64::from(offset)));
                    let _ = c.send_method(
                        ch % 8,
                        amqp_codec::types::method::BasicConsume {
                            queue: format!("lq{}", n % 4)
                                .as_str()
                                .try_into()
                                .unwrap_or_default(),
                            no_ack: n & 0x80 != 0,
                            arguments,
                            ..Default::default()
                        },
                    );
                }
            }
            Op::Policy(bits, set) => {
                let now = h.now;
                if set {
                    let mut definition = serde_json::Map::new();
                    definition.insert("max-length".into(), u64::from(bits % 4).into());
                    definition.insert("message-ttl".into(), (u64::from(bits >> 2) * 10).into());
                    definition.insert("delivery-limit".into(), u64::from(bits % 2).into());
                    definition.insert("dead-letter-exchange".into(), "".into());
                    let _ = h.core.set_policy(
                        "/",
                        &amqp_router::definitions::PolicyDef {
                            vhost: Some("/".into()),
                            name: "fuzz".into(),
                            pattern: "^lq".into(),
                            apply_to: "queues".into(),
                            definition,
                            priority: 0,
                        },
                        now,
                    );
                } else {
                    let _ = h.core.clear_policy("/", "fuzz", now);
                }
            }
        }
        let (_, settled) = h.settle(10_000);
        assert!(settled, "the in-memory network did not settle");
        if let Err(e) = h.core.check_invariants() {
            panic!("core bookkeeping: {e}");
        }
    }
}

/// The `store_recover` check: arbitrary bytes as up to three segment files
/// of a data directory (split where the input says), recovered. Recovery
/// never panics, cuts only the last segment, reports damage at most twice
/// per segment (a damaged record; messages whose properties do not
/// parse), and returns each message at most once per queue.
pub fn store_recover(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let cuts: Vec<usize> = (0..2)
        .map(|_| usize::from(u.arbitrary::<u16>().unwrap_or(0)))
        .collect();
    let rest = u.take_rest();
    let mut segments = Vec::new();
    let mut start = 0;
    for (n, c) in cuts.iter().enumerate() {
        let end = (start + c).min(rest.len());
        segments.push((n as u64 + 1, rest[start..end].to_vec()));
        start = end;
    }
    segments.push((3, rest[start..].to_vec()));
    let mut cut = Vec::new();
    let r = amqp_broker::store::recover_from(segments, |seg, len| {
        cut.push((seg, len));
        Ok(())
    })
    .expect("in-memory recovery has no I/O to fail");
    assert!(
        cut.iter().all(|(seg, _)| *seg == 3),
        "only the last segment is cut"
    );
    assert!(r.warnings.len() <= 6, "{:?}", r.warnings);
    for (q, msgs) in &r.queues {
        assert!(!msgs.is_empty(), "{q:?} listed without messages");
        // In the log's order, which is publish order for a log the broker
        // wrote; arbitrary bytes may number them in any order, but never
        // twice.
        let mut ids: Vec<u64> = msgs.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "a message twice in {q:?}"
        );
    }
}
