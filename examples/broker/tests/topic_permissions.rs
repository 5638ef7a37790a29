//! Topic permissions on the in-memory harness (no RabbitMQ needed; the
//! differential scenario `topic_permissions` compares the same behaviour
//! with RabbitMQ): a write pattern on basic.publish and a read pattern on
//! queue.bind / exchange.bind to a topic exchange, `{username}` expanded,
//! RabbitMQ's 403 text, and a change taking effect on an open connection.

use amqp_broker::auth::TopicPermission;
use amqp_broker::core::CoreConfig;
use amqp_broker::testing::Harness;
use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, ReplyCode};
use amqp_codec::{ClientConfig, Event, ServerConfig};
use bytes::Bytes;

/// What the last method did: `Ok` or the channel's close.
fn outcome(h: &mut Harness) -> Result<(), (u16, String, u16, u16)> {
    let (events, _) = h.settle(100);
    for (_, e) in events {
        if let Event::ChannelClosed { reason, .. } = e {
            return Err((
                reason.code.0,
                reason.text.to_string_lossy().into_owned(),
                reason.class_id,
                reason.method_id,
            ));
        }
    }
    Ok(())
}

fn open(h: &mut Harness, ch: u16) {
    h.links[0].client.open_channel_with(ch).unwrap();
    h.settle(100);
}

fn publish(h: &mut Harness, ch: u16, key: &str) -> Result<(), (u16, String, u16, u16)> {
    h.links[0]
        .client
        .publish(
            ch,
            BasicPublish {
                exchange: "amq.topic".try_into().unwrap(),
                routing_key: key.try_into().unwrap(),
                ..Default::default()
            },
            &BasicProperties::default(),
            Bytes::from_static(b"x"),
        )
        .unwrap();
    outcome(h)
}

fn bind(h: &mut Harness, ch: u16, key: &str) -> Result<(), (u16, String, u16, u16)> {
    h.links[0]
        .client
        .send_method(
            ch,
            QueueBind {
                queue: "q".try_into().unwrap(),
                exchange: "amq.topic".try_into().unwrap(),
                routing_key: key.try_into().unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
    outcome(h)
}

fn refusal(key: &str) -> (u16, String, u16, u16) {
    (
        ReplyCode::ACCESS_REFUSED.0,
        format!(
            "ACCESS_REFUSED - access to topic '{key}' in exchange 'amq.topic' in vhost '/' refused for user 'guest'"
        ),
        0,
        0,
    )
}

#[test]
fn topic_permissions_check_routing_and_binding_keys() {
    let mut config = CoreConfig::default();
    config.auth.topic_permissions.insert(
        ("guest".into(), "/".into(), "amq.topic".into()),
        TopicPermission::new("^{username}\\.", "^x\\.").unwrap(),
    );
    let mut h = Harness::new(config);
    h.connect(ClientConfig::default(), ServerConfig::default());
    h.settle(100);
    open(&mut h, 1);
    h.links[0]
        .client
        .send_method(
            1,
            QueueDeclare {
                queue: "q".try_into().unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
    h.settle(100);
    assert_eq!(publish(&mut h, 1, "guest.a"), Ok(()));
    let with_ids = |(code, text, _, _): (u16, String, u16, u16), c: u16, m: u16| (code, text, c, m);
    assert_eq!(
        publish(&mut h, 1, "other.a"),
        Err(with_ids(refusal("other.a"), 60, 40))
    );
    open(&mut h, 2);
    assert_eq!(bind(&mut h, 2, "x.#"), Ok(()));
    assert_eq!(
        bind(&mut h, 2, "y.#"),
        Err(with_ids(refusal("y.#"), 50, 20))
    );
    // Exchanges that are not topic exchanges are not checked.
    open(&mut h, 3);
    h.links[0]
        .client
        .publish(
            3,
            BasicPublish {
                exchange: "amq.direct".try_into().unwrap(),
                routing_key: "other".try_into().unwrap(),
                ..Default::default()
            },
            &BasicProperties::default(),
            Bytes::from_static(b"x"),
        )
        .unwrap();
    assert_eq!(outcome(&mut h), Ok(()));
    // A new pattern applies to the open connection from its next
    // operation; removing it opens the exchange.
    h.core
        .admin_set_topic_permission(
            "guest",
            "/",
            "amq.topic",
            TopicPermission::new("^other\\.", "").unwrap(),
        )
        .unwrap();
    assert_eq!(publish(&mut h, 3, "other.a"), Ok(()));
    assert_eq!(
        publish(&mut h, 3, "guest.a"),
        Err(with_ids(refusal("guest.a"), 60, 40))
    );
    h.core
        .admin_clear_topic_permissions("guest", "/", None)
        .unwrap();
    open(&mut h, 4);
    assert_eq!(publish(&mut h, 4, "anything"), Ok(()));
    assert_eq!(bind(&mut h, 4, "y.#"), Ok(()));
    assert!(
        h.core
            .admin_clear_topic_permissions("guest", "/", None)
            .is_err()
    );
}
