//! A large body goes from the publisher's input buffer to the consumer's
//! output without a copy (checked by pointer), and a small one is copied
//! out so that it does not pin the buffer it arrived in.

use amqp_broker::core::{Core, CoreConfig, Out, Peer};
use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, Method};
use amqp_codec::{ClientConfig, Connection, Event, ServerConfig};
use bytes::{Bytes, BytesMut};
use std::time::Instant;

struct Side {
    id: u64,
    client: Connection,
    server: Connection,
}

fn settle(core: &mut Core, sides: &mut [&mut Side], now: Instant) -> Vec<Event> {
    let mut client_events = Vec::new();
    for _ in 0..50 {
        for s in sides.iter_mut() {
            while let Some(b) = s.client.poll_transmit() {
                s.server.handle_input(b);
            }
            let ev: Vec<Event> = std::iter::from_fn(|| s.server.poll_event()).collect();
            core.handle(s.id, ev, now);
        }
        for s in sides.iter_mut() {
            for out in core.take_outbox(s.id) {
                out.apply_to(&mut s.server).unwrap();
            }
            while let Some(b) = s.server.poll_transmit() {
                s.client.handle_input(b);
            }
            client_events.extend(std::iter::from_fn(|| s.client.poll_event()));
        }
    }
    client_events
}

fn side(core: &mut Core, id: u64, now: Instant) -> Side {
    core.connect(id, Peer { loopback: true });
    let mut s = Side {
        id,
        client: Connection::client(ClientConfig::default(), now),
        server: Connection::server(ServerConfig::default(), now),
    };
    settle(core, &mut [&mut s], now);
    assert!(s.client.is_open());
    s.client.open_channel_with(1).unwrap();
    settle(core, &mut [&mut s], now);
    s
}

/// Publishes `size` bytes in one input chunk; returns the chunk and the
/// delivery the consumer's connection was told to send.
fn publish_and_deliver(size: usize) -> (Bytes, Bytes, Vec<Bytes>) {
    let now = Instant::now();
    let mut core = Core::new(CoreConfig::default());
    let mut consumer = side(&mut core, 1, now);
    let mut publisher = side(&mut core, 2, now);
    consumer
        .client
        .send_method(
            1,
            QueueDeclare {
                queue: "big".try_into().unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
    consumer
        .client
        .send_method(
            1,
            BasicConsume {
                queue: "big".try_into().unwrap(),
                no_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    settle(&mut core, &mut [&mut consumer], now);
    publisher
        .client
        .publish(
            1,
            BasicPublish {
                routing_key: "big".try_into().unwrap(),
                ..Default::default()
            },
            &BasicProperties::default(),
            Bytes::from(vec![7u8; size]),
        )
        .unwrap();
    // Everything the publisher sent, as one input chunk.
    let mut wire = BytesMut::new();
    while let Some(b) = publisher.client.poll_transmit() {
        wire.extend_from_slice(&b);
    }
    let wire = wire.freeze();
    publisher.server.handle_input(wire.clone());
    let ev: Vec<Event> = std::iter::from_fn(|| publisher.server.poll_event()).collect();
    core.handle(2, ev, now);
    let outs = core.take_outbox(1);
    let mut body = None;
    for out in outs {
        if let Out::Content { msg, method, .. } = &out {
            assert!(matches!(method, Method::BasicDeliver(_)));
            body = Some(msg.body.clone());
        }
        out.apply_to(&mut consumer.server).unwrap();
    }
    let segments: Vec<Bytes> = std::iter::from_fn(|| consumer.server.poll_transmit()).collect();
    (wire, body.expect("a delivery"), segments)
}

fn within(inner: &Bytes, outer: &Bytes) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

#[test]
fn a_large_body_is_never_copied_between_publish_and_deliver() {
    let (wire, body, segments) = publish_and_deliver(100 * 1024);
    assert_eq!(body.len(), 100 * 1024);
    assert!(
        within(&body, &wire),
        "the stored body is a slice of the input"
    );
    assert!(
        segments
            .iter()
            .any(|s| s.as_ptr() == body.as_ptr() && s.len() == body.len()),
        "the delivery transmits the stored body itself"
    );
}

#[test]
fn a_small_body_is_compacted_out_of_the_read_buffer() {
    let (wire, body, _) = publish_and_deliver(16);
    assert_eq!(&body[..], &[7u8; 16]);
    assert!(
        !within(&body, &wire),
        "a 16-byte body must not pin the input"
    );
}
