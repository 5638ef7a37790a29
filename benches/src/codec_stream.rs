//! The codec benchmark's input: a server connection after the handshake and
//! a stream of publishes (1 KiB bodies, 5 headers) interleaved frame by frame
//! over 8 channels, plus acks. Shared by `benches/codec.rs` (criterion) and
//! `examples/codec_instructions.rs` (callgrind).

use amqp_codec::types::method::{
    BasicAck, BasicPublish, ChannelOpen, ConnectionOpen, ConnectionStartOk, ConnectionTuneOk,
};
use amqp_codec::types::{BasicProperties, FieldTable, LongString, ShortString};
use amqp_codec::wire::Frame;
use amqp_codec::{Answer, Connection, Event, ServerConfig};
use bytes::{Bytes, BytesMut};
use std::time::Instant;

/// Channels the stream interleaves.
pub const CHANNELS: u16 = 8;
/// Publishes (and acks) per channel.
pub const PER_CHANNEL: u64 = 250;
/// Body size of every publish.
pub const BODY: usize = 1024;
/// Bytes handed to the server per `handle_input` call.
pub const CHUNK: usize = 64 * 1024;

fn ss(s: &str) -> ShortString {
    ShortString::try_from(s).unwrap()
}

/// The properties of every publish: content type, persistent, 5 headers.
pub fn properties() -> BasicProperties {
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

/// Encodes `frames` onto `out`.
pub fn encode(frames: &[Frame], out: &mut BytesMut) {
    for f in frames {
        f.encode(out).unwrap();
    }
}

/// The client's handshake and channel opens (fed before timing).
pub fn preamble() -> Vec<Bytes> {
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

/// Publishes interleaved frame by frame over the channels, then acks.
pub fn stream() -> (Bytes, u64) {
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

/// A server connection after the handshake with every channel open.
pub fn ready_server() -> Connection {
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
