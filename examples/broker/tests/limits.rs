//! The message size limit (RabbitMQ's `max_message_size`): a body over it
//! closes the channel with 406 and RabbitMQ's text, naming basic.publish;
//! one at the limit goes through. (The vhost and user limits are checked
//! against RabbitMQ by the differential scenario `limits`.)

use amqp_broker::core::{CoreConfig, Limits};
use amqp_broker::testing::Harness;
use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, ReplyCode};
use amqp_codec::{ClientConfig, Event, ServerConfig};
use bytes::Bytes;

#[test]
fn a_message_over_the_size_limit_closes_its_channel() {
    let mut h = Harness::new(CoreConfig {
        limits: Limits {
            max_message_size: 100,
            ..Limits::default()
        },
        ..CoreConfig::default()
    });
    h.connect(ClientConfig::default(), ServerConfig::default());
    h.settle(100);
    h.links[0].client.open_channel_with(1).unwrap();
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
    let publish = |h: &mut Harness, n: usize| {
        h.links[0]
            .client
            .publish(
                1,
                BasicPublish {
                    routing_key: "q".try_into().unwrap(),
                    ..Default::default()
                },
                &BasicProperties::default(),
                Bytes::from(vec![b'x'; n]),
            )
            .unwrap();
        h.settle(100).0
    };
    let events = publish(&mut h, 100);
    assert!(
        !events
            .iter()
            .any(|(_, e)| matches!(e, Event::ChannelClosed { .. })),
        "{events:?}"
    );
    assert_eq!(h.core.queue_counts("/", "q"), Some((1, 0)));
    let events = publish(&mut h, 101);
    let close = events
        .iter()
        .find_map(|(_, e)| match e {
            Event::ChannelClosed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .expect("the channel closes");
    assert_eq!(close.code, ReplyCode::PRECONDITION_FAILED);
    assert_eq!(
        close.text.as_str(),
        Some("PRECONDITION_FAILED - message size 101 is larger than configured max size 100")
    );
    assert_eq!((close.class_id, close.method_id), (60, 40));
    assert_eq!(h.core.queue_counts("/", "q"), Some((1, 0)));
}
