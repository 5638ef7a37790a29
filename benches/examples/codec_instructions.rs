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
use amqp_benches::codec_stream::{CHUNK, ready_server, stream};
use amqp_codec::types::Method;
use amqp_codec::{Connection, Event};
use bytes::Bytes;
use std::hint::black_box;

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
