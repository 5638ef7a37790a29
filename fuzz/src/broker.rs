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
/// never panics, cuts only the last segment, reports every damaged
/// segment, and every message it returns names a queue.
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
    assert!(r.warnings.len() <= 3);
    for (q, msgs) in &r.queues {
        assert!(!msgs.is_empty(), "{q:?} listed without messages");
        assert!(msgs.windows(2).all(|w| w[0].id < w[1].id), "publish order");
    }
}
