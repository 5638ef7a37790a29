//! The consumer acknowledgement timeout (`consumer_timeout`), in the core
//! with a simulated clock: checked on the channel tick (every 60 s, as
//! RabbitMQ's `channel_tick_interval`), a channel whose oldest
//! unacknowledged delivery (consumer or basic.get) is older than the
//! timeout is closed with 406 and RabbitMQ 3.10's text, with class and
//! method 0, and its deliveries go back to the queue.
//!
//! The text and the close were checked against RabbitMQ 3.10.8 with
//! `consumer_timeout` set to 2,000 ms (`rabbitmqctl eval
//! 'application:set_env(rabbit, consumer_timeout, 2000)'`): it logged and
//! sent "delivery acknowledgement on channel 1 timed out. Timeout value
//! used: 2000 ms. This timeout value can be configured, see consumers doc
//! guide to learn more", for a consumer's delivery and for a basic.get.

use std::time::Duration;

use amqp_broker::core::{CONSUMER_TIMEOUT, CoreConfig};
use amqp_broker::testing::Harness;
use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, Method, ReplyCode};
use amqp_codec::{ClientConfig, Event, ServerConfig};
use bytes::Bytes;

/// A harness with one connection (link 0) and channel 1 open, queue `q`
/// declared, `n` messages published to it.
fn setup(config: CoreConfig, n: usize) -> Harness {
    let mut h = Harness::new(config);
    h.connect(ClientConfig::default(), ServerConfig::default());
    h.settle(100);
    assert!(h.links[0].client.is_open());
    let c = &mut h.links[0].client;
    c.open_channel_with(1).unwrap();
    c.send_method(
        1,
        QueueDeclare {
            queue: "q".try_into().unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..n {
        c.publish(
            1,
            BasicPublish {
                routing_key: "q".try_into().unwrap(),
                ..Default::default()
            },
            &BasicProperties::default(),
            Bytes::from(format!("m{i}")),
        )
        .unwrap();
    }
    h.settle(100);
    h
}

fn send(h: &mut Harness, ch: u16, m: impl Into<Method>) -> Vec<Event> {
    h.links[0].client.send_method(ch, m.into()).unwrap();
    h.settle(100).0.into_iter().map(|(_, e)| e).collect()
}

/// Advances the clock in 30 s steps (heartbeats keep flowing) up to `by`;
/// returns the channel closes seen, with when they came.
fn wait(h: &mut Harness, by: Duration) -> Vec<(Duration, u16, ReplyCode, String, u16, u16)> {
    let mut closes = Vec::new();
    let mut t = Duration::ZERO;
    while t < by {
        let step = Duration::from_secs(30).min(by - t);
        h.advance(step);
        t += step;
        for (_, e) in h.settle(100).0 {
            if let Event::ChannelClosed {
                channel, reason, ..
            } = e
            {
                closes.push((
                    t,
                    channel,
                    reason.code,
                    reason.text.to_string(),
                    reason.class_id,
                    reason.method_id,
                ));
            }
        }
    }
    closes
}

fn consume(h: &mut Harness, ch: u16) {
    send(
        h,
        ch,
        BasicConsume {
            queue: "q".try_into().unwrap(),
            consumer_tag: format!("c{ch}").as_str().try_into().unwrap(),
            ..Default::default()
        },
    );
}

#[test]
fn an_unacked_delivery_closes_its_channel_at_the_first_tick_past_the_timeout() {
    let mut h = setup(CoreConfig::default(), 2);
    consume(&mut h, 1);
    assert_eq!(h.core.queue_counts("/", "q"), Some((0, 2)));
    // The first tick is 60 s after the first delivery; the deliveries are
    // exactly 30 minutes old at the 30th: not yet "older than" the timeout.
    assert!(wait(&mut h, CONSUMER_TIMEOUT).is_empty());
    let closes = wait(&mut h, Duration::from_secs(60));
    assert_eq!(
        closes,
        [(
            Duration::from_secs(60),
            1,
            ReplyCode::PRECONDITION_FAILED,
            "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. \
             Timeout value used: 1800000 ms. This timeout value can be configured, \
             see consumers doc guide to learn more"
                .to_string(),
            0,
            0
        )]
    );
    // Both deliveries are back in the queue; the connection lives on.
    assert_eq!(h.core.queue_counts("/", "q"), Some((2, 0)));
    assert!(h.links[0].client.is_open());
    assert!(h.core.check_invariants().is_ok());
}

#[test]
fn basic_get_deliveries_count_and_acks_reset_the_clock() {
    let mut h = setup(CoreConfig::default(), 2);
    send(
        &mut h,
        1,
        BasicGet {
            queue: "q".try_into().unwrap(),
            ..Default::default()
        },
    );
    // Acked after 20 minutes; a second get then is the oldest.
    assert!(wait(&mut h, Duration::from_secs(20 * 60)).is_empty());
    send(
        &mut h,
        1,
        BasicAck {
            delivery_tag: 1,
            ..Default::default()
        },
    );
    send(
        &mut h,
        1,
        BasicGet {
            queue: "q".try_into().unwrap(),
            ..Default::default()
        },
    );
    assert!(wait(&mut h, Duration::from_secs(30 * 60)).is_empty());
    let closes = wait(&mut h, Duration::from_secs(120));
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(closes[0].2, ReplyCode::PRECONDITION_FAILED);
    assert_eq!(h.core.queue_counts("/", "q"), Some((1, 0)));
}

#[test]
fn only_late_channels_close_and_none_without_a_timeout() {
    let mut h = setup(
        CoreConfig {
            consumer_timeout: Some(Duration::from_secs(90)),
            ..CoreConfig::default()
        },
        3,
    );
    h.links[0].client.open_channel_with(2).unwrap();
    h.settle(100);
    send(
        &mut h,
        2,
        BasicQos {
            prefetch_count: 1,
            ..Default::default()
        },
    );
    consume(&mut h, 2);
    // Channel 2 acks each delivery as it comes, once a minute; channel 1
    // takes one and sits on it.
    send(
        &mut h,
        1,
        BasicGet {
            queue: "q".try_into().unwrap(),
            ..Default::default()
        },
    );
    let mut closes = Vec::new();
    for tag in 1..=2 {
        closes.extend(wait(&mut h, Duration::from_secs(60)));
        send(
            &mut h,
            2,
            BasicAck {
                delivery_tag: tag,
                ..Default::default()
            },
        );
    }
    closes.extend(wait(&mut h, Duration::from_secs(60)));
    let channels: Vec<u16> = closes.iter().map(|c| c.1).collect();
    assert_eq!(channels, [1], "{closes:?}");
    assert!(closes[0].3.contains("Timeout value used: 90000 ms"));

    // consumer_timeout = None: nothing ever closes.
    let mut h = setup(
        CoreConfig {
            consumer_timeout: None,
            ..CoreConfig::default()
        },
        1,
    );
    consume(&mut h, 1);
    assert!(wait(&mut h, Duration::from_secs(3 * 3600)).is_empty());
    assert_eq!(h.core.poll_timeout(), None, "no tick without a timeout");
}
