//! A large body goes from the publisher's input buffer to the consumer's
//! output without a copy (checked by pointer), and a small one is copied
//! out so that it does not pin the buffer it arrived in.

use amqp_broker::core::Out;
use amqp_broker::testing::Harness;
use amqp_codec::Event;
use amqp_codec::types::BasicProperties;
use amqp_codec::types::method::*;
use bytes::{Bytes, BytesMut};

/// Publishes `size` bytes in one input chunk; returns the chunk and the
/// delivery the consumer's connection was told to send.
fn publish_and_deliver(size: usize) -> (Bytes, (usize, Vec<u8>), Vec<Bytes>) {
    let mut h = Harness::default();
    let (consumer, publisher) = h.consumer_and_publisher("big", true);
    let p = &mut h.links[publisher];
    p.client
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
    // Everything the publisher sent, as one input chunk, by hand.
    let mut wire = BytesMut::new();
    while let Some(b) = p.client.poll_transmit() {
        wire.extend_from_slice(&b);
    }
    let wire = wire.freeze();
    p.server.handle_input(wire.clone());
    let ev: Vec<Event> = std::iter::from_fn(|| p.server.poll_event()).collect();
    let (pid, cid) = (p.id, h.links[consumer].id);
    h.core.handle(pid, ev, h.now);
    let mut body = None;
    for out in h.core.take_outbox(cid) {
        if let Out::Deliver { msg, .. } = &out {
            // Where the stored body lies, and its bytes.
            body = Some((msg.body().as_ptr() as usize, msg.body().to_vec()));
        }
        out.apply_to(&mut h.links[consumer].server).unwrap();
    }
    let server = &mut h.links[consumer].server;
    let segments: Vec<Bytes> = std::iter::from_fn(|| server.poll_transmit()).collect();
    (wire, body.expect("a delivery"), segments)
}

fn within((i, inner): &(usize, Vec<u8>), outer: &Bytes) -> bool {
    let o = outer.as_ptr() as usize;
    *i >= o && i + inner.len() <= o + outer.len()
}

#[test]
fn a_large_body_is_never_copied_between_publish_and_deliver() {
    let (wire, body, segments) = publish_and_deliver(100 * 1024);
    assert_eq!(body.1.len(), 100 * 1024);
    assert!(
        within(&body, &wire),
        "the stored body is a slice of the input"
    );
    assert!(
        segments
            .iter()
            .any(|s| s.as_ptr() as usize == body.0 && s.len() == body.1.len()),
        "the delivery transmits the stored body itself"
    );
}

#[test]
fn a_small_body_is_compacted_out_of_the_read_buffer() {
    let (wire, body, _) = publish_and_deliver(16);
    assert_eq!(&body.1[..], &[7u8; 16]);
    assert!(
        !within(&body, &wire),
        "a 16-byte body must not pin the input"
    );
}
