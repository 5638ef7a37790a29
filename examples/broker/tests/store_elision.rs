//! A persistent message that leaves its queues before the store takes its
//! publish record is not written: the core takes each queue it left off
//! the record, and records nothing for the removal; a message left with
//! no queue is not in the batch at all, though its record number still
//! is (its confirm waits for the records before it). A message that was
//! delivered awaiting an ack keeps every record. What is written recovers
//! to what the queues hold. In the core, with the store's encoding and
//! recovery.

use amqp_broker::core::CoreConfig;
use amqp_broker::store::{self, Record};
use amqp_broker::testing::Harness;
use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, Method};
use amqp_codec::{ClientConfig, Event, ServerConfig};
use bytes::Bytes;

/// A harness with a client on link 0, channel 1 open, durable queues `a`
/// and `b` both bound to `amq.fanout`, persistence on.
fn broker() -> Harness {
    let mut h = Harness::new(CoreConfig::default());
    h.core.enable_persistence();
    h.connect(ClientConfig::default(), ServerConfig::default());
    h.settle(100);
    h.links[0].client.open_channel_with(1).unwrap();
    for q in ["a", "b"] {
        let c = &mut h.links[0].client;
        c.send_method(
            1,
            QueueDeclare {
                queue: q.try_into().unwrap(),
                durable: true,
                ..Default::default()
            },
        )
        .unwrap();
        c.send_method(
            1,
            QueueBind {
                queue: q.try_into().unwrap(),
                exchange: "amq.fanout".try_into().unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
    }
    h.settle(100);
    h
}

/// Publishes one persistent message to both queues.
fn publish(h: &mut Harness) {
    let p = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    h.links[0]
        .client
        .publish(
            1,
            BasicPublish {
                exchange: "amq.fanout".try_into().unwrap(),
                ..Default::default()
            },
            &p,
            Bytes::from_static(b"m"),
        )
        .unwrap();
    h.settle(100);
}

/// basic.get on `queue`; returns the delivery tag if a message came.
fn get(h: &mut Harness, queue: &str, no_ack: bool) -> Option<u64> {
    h.links[0]
        .client
        .send_method(
            1,
            BasicGet {
                queue: queue.try_into().unwrap(),
                no_ack,
                ..Default::default()
            },
        )
        .unwrap();
    let (events, _) = h.settle(100);
    events.iter().find_map(|(_, e)| match e {
        Event::Message { message, .. } => match &message.method {
            Method::BasicGetOk(ok) => Some(ok.delivery_tag),
            _ => None,
        },
        _ => None,
    })
}

/// The records' kinds and queues, in order: ("publish", [queues]),
/// ("remove", [queue]), ("delivered", [queue]).
fn kinds(records: &[Record]) -> Vec<(&'static str, Vec<String>)> {
    let name = |k: &store::QueueKey| k.1.to_string();
    records
        .iter()
        .map(|r| match r {
            Record::Publish { queues, .. } | Record::Message { queues, .. } => {
                let mut q: Vec<String> = queues.iter().map(name).collect();
                q.sort();
                ("publish", q)
            }
            Record::Remove { queue, .. } => ("remove", vec![name(queue)]),
            Record::Delivered { queue, .. } => ("delivered", vec![name(queue)]),
        })
        .collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn a_message_gone_before_its_record_is_taken_is_not_written() {
    let mut h = broker();
    // Taken from `a` with auto-ack before the store took its record: the
    // record goes to `b` only, and no removal is recorded.
    publish(&mut h);
    assert!(get(&mut h, "a", true).is_some());
    // Taken from both: nothing of it is written.
    publish(&mut h);
    assert!(get(&mut h, "a", true).is_some());
    assert!(get(&mut h, "b", true).is_some());
    // Delivered from `a` awaiting an ack (a delivery marker), then acked:
    // every record stays.
    publish(&mut h);
    let tag = get(&mut h, "a", false).expect("a message in a");
    h.links[0]
        .client
        .send_method(
            1,
            BasicAck {
                delivery_tag: tag,
                multiple: false,
            },
        )
        .unwrap();
    h.settle(100);
    let (records, numbers) = h.core.take_store_ops().expect("records");
    assert_eq!(
        kinds(&records),
        vec![
            ("publish", s(&["b"])),
            ("publish", s(&["a", "b"])),
            ("delivered", s(&["a"])),
            ("remove", s(&["a"])),
        ]
    );
    // Numbered: the three publish records and the two markers of the
    // third message (the left-out removals were never numbered).
    assert_eq!(numbers, 1..=5);
    // A removal whose publish record was taken already is recorded.
    assert!(get(&mut h, "b", true).is_some());
    let (later, numbers) = h.core.take_store_ops().expect("a removal");
    assert_eq!(kinds(&later), vec![("remove", s(&["b"]))]);
    assert_eq!(numbers, 6..=6);
    // Recovered, the queues hold what they hold now: the third message in
    // `b`.
    let mut segment = Vec::new();
    for r in records.iter().chain(&later) {
        r.encode(&mut segment);
    }
    let recovered = store::recover_from(vec![(1, segment)], |_, _| Ok(())).unwrap();
    let mut again = broker();
    assert_eq!(again.core.recover_messages(recovered, false), 1);
    assert_eq!(again.core.queue_counts("/", "a"), Some((0, 0)));
    assert_eq!(again.core.queue_counts("/", "b"), Some((1, 0)));
    assert_eq!(h.core.queue_counts("/", "b"), Some((1, 0)));
}

#[test]
fn a_batch_whose_messages_all_left_still_covers_their_numbers() {
    let mut h = broker();
    publish(&mut h);
    assert!(get(&mut h, "a", true).is_some());
    assert!(get(&mut h, "b", true).is_some());
    let (records, numbers) = h.core.take_store_ops().expect("numbers to cover");
    assert!(records.is_empty(), "{records:?}");
    assert_eq!(numbers, 1..=1);
    // (The queues' declarations left a topology snapshot to take.)
    assert!(h.core.take_definitions().is_some());
    assert!(!h.core.has_store_work());
    assert!(h.core.take_store_ops().is_none());
}
