//! Stream queues keep their messages and offsets across a crash (SIGKILL:
//! every confirmed message is there, at the offset it was delivered
//! with), and retention's deletions stay deleted.

mod support;

use amqp_codec::Event;
use amqp_codec::types::method::*;
use amqp_codec::types::{FieldTable, FieldValue, LongString, Method};
use support::{Broker, Client};

fn declare(c: &mut Client, name: &str, extra: &[(&str, FieldValue)]) {
    let mut arguments = FieldTable::new();
    arguments.insert("x-queue-type", LongString::from_static("stream"));
    for (k, v) in extra {
        arguments.insert(k, v.clone());
    }
    let r = c.call(QueueDeclare {
        queue: name.try_into().unwrap(),
        durable: true,
        arguments,
        ..Default::default()
    });
    assert!(matches!(r, Method::QueueDeclareOk(_)), "{r:?}");
}

/// Publishes with confirms on channel 1 (`published`: how many it
/// published before) and waits until every one is acknowledged.
fn publish_confirmed(c: &mut Client, queue: &str, bodies: &[String], published: &mut u64) {
    if *published == 0 {
        let _ = c.call(ConfirmSelect::default());
    }
    for b in bodies {
        c.publish(1, "", queue, b);
    }
    *published += bodies.len() as u64;
    let mut acked = 0u64;
    while acked < *published {
        if let Event::Confirm {
            delivery_tag, ack, ..
        } = c.until(|e| matches!(e, Event::Confirm { .. }))
        {
            assert!(ack, "nacked");
            acked = acked.max(delivery_tag);
        }
    }
}

/// Reads `n` messages from the first offset on channel `ch`: (offset,
/// body).
fn read(c: &mut Client, ch: u16, queue: &str, n: usize) -> Vec<(i128, String)> {
    c.conn.open_channel_with(ch).unwrap();
    c.until(|e| matches!(e, Event::ChannelOpened { channel } if *channel == ch));
    c.call_on(
        ch,
        BasicQos {
            prefetch_count: 10_000,
            ..Default::default()
        },
    );
    let mut arguments = FieldTable::new();
    arguments.insert("x-stream-offset", LongString::from_static("first"));
    c.call_on(
        ch,
        BasicConsume {
            queue: queue.try_into().unwrap(),
            arguments,
            ..Default::default()
        },
    );
    let mut out = Vec::new();
    while out.len() < n {
        if let Event::Message { message, .. } =
            c.until(|e| matches!(e, Event::Message { channel, .. } if *channel == ch))
        {
            let offset = message
                .properties
                .headers
                .as_ref()
                .and_then(|h| h.get("x-stream-offset"))
                .and_then(FieldValue::as_integer)
                .expect("x-stream-offset");
            out.push((offset, String::from_utf8_lossy(&message.body).into_owned()));
        }
    }
    out
}

#[test]
fn a_stream_survives_a_crash_with_its_offsets_and_its_retention() {
    let dir = std::env::temp_dir().join(format!("amqp-broker-streams-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.to_str().unwrap().to_owned();
    let broker = Broker::start(5770..5780, &["--data-dir", &data]);
    let mut c = Client::connect(broker.addr);
    declare(&mut c, "events", &[]);
    // Small segments and a byte limit: old segments go as new ones start.
    declare(
        &mut c,
        "recent",
        &[
            ("x-max-length-bytes", FieldValue::I64(2_000)),
            ("x-stream-max-segment-size-bytes", FieldValue::I64(500)),
        ],
    );
    let bodies: Vec<String> = (0..20).map(|i| format!("event-{i}")).collect();
    let mut published = 0;
    publish_confirmed(&mut c, "events", &bodies, &mut published);
    let big: Vec<String> = (0..40).map(|i| format!("{i:>100}")).collect();
    publish_confirmed(&mut c, "recent", &big, &mut published);
    let before = read(&mut c, 2, "recent", 1);
    let first_recent = before[0].0;
    assert!(first_recent > 0, "retention deleted the oldest segments");
    drop(c);
    drop(broker); // SIGKILL

    let broker = Broker::start(5770..5780, &["--data-dir", &data]);
    let mut c = Client::connect(broker.addr);
    let events = read(&mut c, 2, "events", 20);
    let expected: Vec<(i128, String)> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| (i as i128, b.clone()))
        .collect();
    assert_eq!(events, expected, "every confirmed message, at its offset");
    // The next message continues the offsets.
    publish_confirmed(&mut c, "events", &["after".to_string()], &mut 0);
    let more = read(&mut c, 3, "events", 21);
    assert_eq!(more[20], (20, "after".to_string()));
    // What retention deleted stays deleted; the rest keeps its offsets.
    let recent = read(&mut c, 4, "recent", (40 - first_recent) as usize);
    assert_eq!(recent[0].0, first_recent);
    assert_eq!(recent.last().unwrap().0, 39);
    assert_eq!(recent.last().unwrap().1, big[39]);
    drop(c);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
