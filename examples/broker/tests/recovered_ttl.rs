//! A TTL keeps running across a restart: a recovered message expires when
//! its TTL, counted from when it arrived, runs out — not a whole TTL after
//! the restart. In the core with a simulated clock: the records a first
//! core writes go through the store's encoding and recovery into a second
//! core whose clock is later.

use std::time::Duration;

use amqp_broker::core::CoreConfig;
use amqp_broker::store;
use amqp_broker::testing::Harness;
use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, FieldTable, FieldValue, Method, ShortString};
use amqp_codec::{ClientConfig, Event, ServerConfig};
use bytes::Bytes;

/// A harness with a client on link 0, channel 1 open, and the queues
/// declared: `ttl` (x-message-ttl 10 s, durable) and `plain` (durable).
fn broker(unix_secs: u64) -> Harness {
    let mut h = Harness::new(CoreConfig::default());
    h.core.set_clock(h.now, unix_secs);
    h.connect(ClientConfig::default(), ServerConfig::default());
    h.settle(100);
    h.links[0].client.open_channel_with(1).unwrap();
    let mut ttl = FieldTable::new();
    ttl.insert("x-message-ttl", FieldValue::I32(10_000));
    for (q, arguments) in [("ttl", ttl), ("plain", FieldTable::new())] {
        h.links[0]
            .client
            .send_method(
                1,
                QueueDeclare {
                    queue: q.try_into().unwrap(),
                    durable: true,
                    arguments,
                    ..Default::default()
                },
            )
            .unwrap();
    }
    h.settle(100);
    h
}

fn publish(h: &mut Harness, queue: &str, expiration: Option<&str>) {
    let p = BasicProperties {
        delivery_mode: Some(2),
        expiration: expiration.map(|e| ShortString::try_from(e).unwrap()),
        ..Default::default()
    };
    h.links[0]
        .client
        .publish(
            1,
            BasicPublish {
                routing_key: queue.try_into().unwrap(),
                ..Default::default()
            },
            &p,
            Bytes::from_static(b"x"),
        )
        .unwrap();
    h.settle(100);
}

/// Whether a basic.get finds a message in `queue`.
fn holds(h: &mut Harness, queue: &str) -> bool {
    h.links[0]
        .client
        .send_method(
            1,
            BasicGet {
                queue: queue.try_into().unwrap(),
                no_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    let (events, _) = h.settle(100);
    events.iter().any(|(_, e)| {
        matches!(e, Event::Message { message, .. } if matches!(message.method, Method::BasicGetOk(_)))
    })
}

#[test]
fn a_recovered_message_expires_when_its_ttl_counted_from_arrival_runs_out() {
    let t0 = 1_700_000_000;
    let mut first = broker(t0);
    first.core.enable_persistence();
    publish(&mut first, "ttl", None); // the queue's 10 s
    publish(&mut first, "plain", Some("6000")); // its own 6 s
    publish(&mut first, "plain", None); // forever
    let (records, _) = first.core.take_store_ops().expect("records");
    let mut segment = Vec::new();
    for r in &records {
        r.encode(&mut segment);
    }
    // The broker comes back 5 s later.
    let recovered = store::recover_from(vec![(1, segment)], |_, _| Ok(())).unwrap();
    let mut second = broker(t0 + 5);
    assert_eq!(second.core.recover_messages(recovered, false), 3);
    assert_eq!(second.core.queue_counts("/", "ttl"), Some((1, 0)));
    assert_eq!(second.core.queue_counts("/", "plain"), Some((2, 0)));
    // 1.5 s after the restart (6.5 s after arrival) the 6 s message is
    // gone on its own timer; the 10 s one and the eternal one stay.
    second.advance(Duration::from_millis(1_500));
    assert_eq!(second.core.queue_counts("/", "plain"), Some((1, 0)));
    assert_eq!(second.core.queue_counts("/", "ttl"), Some((1, 0)));
    // 5.5 s after the restart: 10.5 s after arrival.
    second.advance(Duration::from_secs(4));
    assert_eq!(second.core.queue_counts("/", "ttl"), Some((0, 0)));
    assert!(!holds(&mut second, "ttl"));
    // The private arrival time does not leak into what consumers see.
    assert!(holds(&mut second, "plain"));
}

#[test]
fn a_message_whose_ttl_ran_out_while_down_is_gone_at_once() {
    let t0 = 1_700_000_000;
    let mut first = broker(t0);
    first.core.enable_persistence();
    publish(&mut first, "ttl", None);
    let (records, _) = first.core.take_store_ops().expect("records");
    let mut segment = Vec::new();
    for r in &records {
        r.encode(&mut segment);
    }
    let recovered = store::recover_from(vec![(1, segment)], |_, _| Ok(())).unwrap();
    let mut second = broker(t0 + 60);
    second.core.recover_messages(recovered, false);
    second.advance(Duration::from_millis(1));
    assert_eq!(second.core.queue_counts("/", "ttl"), Some((0, 0)));
}
