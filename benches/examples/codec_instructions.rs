//! Instruction counts for the codec benchmark (`benches/benches/codec.rs`):
//! the same 8-channel stream (2,000 publishes with 1 KiB bodies and 5
//! headers, interleaved frame by frame, plus 2,000 acks) through
//! amqp-codec's server role (decode + assemble + every event read, fed in
//! 64 KiB chunks) against amq-protocol 10's `parse_frame` over the same
//! bytes. Run under callgrind (see the codec section of benches/README.md): only `ours` / `theirs` are counted;
//! building the connection and its handshake is not.
//!
//! `cargo run --release -p amqp-benches --example codec_instructions -- check`
//! checks that both read the same content.

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic as their_basic};
use amqp_codec::types::method::{
    BasicAck, BasicPublish, ChannelOpen, ConnectionOpen, ConnectionStartOk, ConnectionTuneOk,
};
use amqp_codec::types::{BasicProperties, FieldTable, LongString, Method, ShortString};
use amqp_codec::wire::Frame;
use amqp_codec::{Answer, Connection, Event, ServerConfig};
use bytes::{Bytes, BytesMut};
use std::hint::black_box;
use std::time::Instant;

const CHANNELS: u16 = 8;
const PER_CHANNEL: u64 = 250;
const BODY: usize = 1024;
const CHUNK: usize = 64 * 1024;

fn ss(s: &str) -> ShortString {
    ShortString::try_from(s).unwrap()
}

fn properties() -> BasicProperties {
    let mut h = FieldTable::new();
    h.insert("x-tenant", "acme");
    h.insert("x-retry", 0i32);
    h.insert("x-trace-id", "4bf92f3577b34da6a3ce929d0e0e4736");
    h.insert("x-priority-class", "gold");
    h.insert("x-sent-at", 1_700_000_000i64);
    BasicProperties {
        content_type: Some(ss("application/json")),
        delivery_mode: Some(2),
        headers: Some(h),
        ..Default::default()
    }
}

fn encode(frames: &[Frame], out: &mut BytesMut) {
    for f in frames {
        f.encode(out).unwrap();
    }
}

fn preamble() -> Vec<Bytes> {
    let mut v = vec![Bytes::from_static(b"AMQP\x00\x00\x09\x01")];
    let mut b = BytesMut::new();
    encode(
        &[Frame::method(
            0,
            ConnectionStartOk {
                mechanism: ss("PLAIN"),
                response: LongString::from("\0guest\0guest"),
                locale: ss("en_US"),
                ..Default::default()
            },
        )],
        &mut b,
    );
    v.push(b.split().freeze());
    encode(
        &[
            Frame::method(
                0,
                ConnectionTuneOk {
                    channel_max: 2047,
                    frame_max: 131_072,
                    heartbeat: 0,
                },
            ),
            Frame::method(
                0,
                ConnectionOpen {
                    virtual_host: ss("/"),
                    ..Default::default()
                },
            ),
        ],
        &mut b,
    );
    v.push(b.split().freeze());
    for ch in 1..=CHANNELS {
        encode(&[Frame::method(ch, ChannelOpen::default())], &mut b);
    }
    v.push(b.freeze());
    v
}

fn stream() -> (Bytes, u64) {
    let props = properties();
    let body = Bytes::from((0..BODY).map(|i| i as u8).collect::<Vec<_>>());
    let mut out = BytesMut::new();
    let mut frames = 0;
    for round in 1..=PER_CHANNEL {
        let mut batch = Vec::new();
        for ch in 1..=CHANNELS {
            batch.push(Frame::method(
                ch,
                BasicPublish {
                    exchange: ss("orders"),
                    routing_key: ShortString::try_from(format!("orders.eu.{ch}")).unwrap(),
                    ..Default::default()
                },
            ));
        }
        for ch in 1..=CHANNELS {
            batch.push(Frame::header(ch, BODY as u64, props.clone()));
        }
        for ch in 1..=CHANNELS {
            batch.push(Frame::body(ch, body.clone()));
        }
        for ch in 1..=CHANNELS {
            batch.push(Frame::method(
                ch,
                BasicAck {
                    delivery_tag: round,
                    multiple: false,
                },
            ));
        }
        frames += batch.len() as u64;
        encode(&batch, &mut out);
    }
    (out.freeze(), frames)
}

fn ready_server() -> Connection {
    let mut s = Connection::server(ServerConfig::default(), Instant::now());
    for b in preamble() {
        s.handle_input(b);
        while let Some(e) = s.poll_event() {
            if let Event::Decision { id, .. } = e {
                s.decide(id, Answer::Accept).unwrap();
            }
        }
    }
    assert!(s.is_open() && s.channel_count() == usize::from(CHANNELS));
    while s.poll_transmit().is_some() {}
    s
}

/// What both sides read, as order-independent sums of the same fields.
#[derive(Default, Debug, PartialEq, Eq)]
struct Sums {
    frames: u64,
    /// Channels of publishes and acks.
    channels: u64,
    routing_key_len: u64,
    body_len: u64,
    header_count: u64,
    delivery_mode: u64,
    ack_tags: u64,
}

/// One iteration: the whole stream through the server role, every event read.
#[inline(never)]
fn ours(server: &mut Connection, input: &Bytes) -> Sums {
    let mut s = Sums::default();
    let mut at = 0;
    while at < input.len() {
        let end = (at + CHUNK).min(input.len());
        server.handle_input(input.slice(at..end));
        at = end;
        while let Some(e) = server.poll_event() {
            match e {
                Event::Message {
                    channel, message, ..
                } => {
                    let Method::BasicPublish(p) = &message.method else {
                        panic!("{:?}", message.method)
                    };
                    let pr = &message.properties;
                    s.frames += 3;
                    s.channels += u64::from(channel);
                    s.routing_key_len += p.routing_key.len() as u64;
                    s.body_len += message.body.len() as u64;
                    s.header_count += pr.headers.as_ref().map_or(0, |h| h.len() as u64);
                    s.delivery_mode += pr.delivery_mode.map_or(0, u64::from);
                }
                Event::Method {
                    channel,
                    method: Method::BasicAck(a),
                } => {
                    s.frames += 1;
                    s.channels += u64::from(channel);
                    s.ack_tags += a.delivery_tag;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    s
}

/// One iteration: amq-protocol's parse_frame over the same bytes.
#[inline(never)]
fn theirs(input: &[u8]) -> Sums {
    let mut s = Sums::default();
    let mut rest = input;
    while !rest.is_empty() {
        let (r, frame) = amq_protocol::frame::parse_frame(rest).expect("amq-protocol parses");
        rest = r;
        s.frames += 1;
        match &frame {
            AMQPFrame::Method(ch, AMQPClass::Basic(their_basic::AMQPMethod::Publish(p))) => {
                s.channels += u64::from(*ch);
                s.routing_key_len += p.routing_key.as_str().len() as u64;
            }
            AMQPFrame::Method(ch, AMQPClass::Basic(their_basic::AMQPMethod::Ack(a))) => {
                s.channels += u64::from(*ch);
                s.ack_tags += a.delivery_tag;
            }
            AMQPFrame::Header(_, h) => {
                let pr = &h.properties;
                s.header_count += pr.headers().as_ref().map_or(0, |h| h.inner().len() as u64);
                s.delivery_mode += pr.delivery_mode().map_or(0, u64::from);
            }
            AMQPFrame::Body(_, b) => s.body_len += b.len() as u64,
            other => panic!("unexpected {other:?}"),
        }
    }
    s
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let iters: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let (input, frames) = stream();
    match which.as_str() {
        "check" => {
            let a = ours(&mut ready_server(), &input);
            let b = theirs(&input);
            assert_eq!(a, b, "amqp-codec and amq-protocol read different content");
            assert_eq!(a.frames, frames);
            println!(
                "{frames} frames, {} bytes; both sides read every frame",
                input.len()
            );
        }
        "ours" => {
            let mut t = 0;
            for _ in 0..iters {
                let mut s = ready_server();
                t += ours(&mut s, black_box(&input)).frames;
                drop(black_box(s));
            }
            println!("{t} frames ({frames} per iteration)");
        }
        "theirs" => {
            let mut t = 0;
            for _ in 0..iters {
                t += theirs(black_box(&input)).frames;
            }
            println!("{t} frames ({frames} per iteration)");
        }
        _ => {
            eprintln!("usage: codec_instructions (check|ours|theirs) [ITERATIONS]");
            std::process::exit(2);
        }
    }
}
