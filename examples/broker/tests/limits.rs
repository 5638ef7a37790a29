//! The message size limit (RabbitMQ's `max_message_size`): a body over it
//! closes the channel with 406 and RabbitMQ's text, naming basic.publish;
//! one at the limit goes through. A user's `max-channels` counts channels
//! over all their connections. (The vhost and user limits are checked
//! against RabbitMQ by the differential scenarios `limits` and
//! `max_channels`.)

use amqp_broker::core::{CoreConfig, Limits, UserLimits};
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

#[test]
fn a_users_max_channels_counts_all_their_connections() {
    let mut limits = Limits::default();
    limits.users.insert(
        "guest".into(),
        UserLimits {
            max_channels: Some(3),
            ..UserLimits::default()
        },
    );
    let mut h = Harness::new(CoreConfig {
        limits,
        ..CoreConfig::default()
    });
    let a = h.connect(ClientConfig::default(), ServerConfig::default());
    let b = h.connect(ClientConfig::default(), ServerConfig::default());
    let c = h.connect(ClientConfig::default(), ServerConfig::default());
    h.settle(100);
    let opened = |events: &[(usize, Event)], link: usize| {
        events
            .iter()
            .filter(|(i, e)| *i == link && matches!(e, Event::ChannelOpened { .. }))
            .count()
    };
    let closed_text = |events: &[(usize, Event)], link: usize| {
        events.iter().find_map(|(i, e)| match e {
            Event::Closed { cause } if *i == link => Some(format!("{cause:?}")),
            _ => None,
        })
    };
    // Two on one connection, one on another: the limit is reached.
    for ch in [1, 2] {
        h.links[a].client.open_channel_with(ch).unwrap();
    }
    h.links[b].client.open_channel_with(1).unwrap();
    let (events, _) = h.settle(100);
    assert_eq!(opened(&events, a) + opened(&events, b), 3, "{events:?}");
    // A fourth, on either connection, is refused: 530, connection closed.
    h.links[b].client.open_channel_with(2).unwrap();
    let (events, _) = h.settle(100);
    assert_eq!(opened(&events, b), 0, "{events:?}");
    let text = closed_text(&events, b).expect("b is closed");
    assert!(
        text.contains(
            "NOT_ALLOWED - number of channels opened for user 'guest' has reached the maximum allowed user limit of (3)"
        ),
        "{text}"
    );
    // b's channel is gone with it: c may open one.
    h.links[c].client.open_channel_with(1).unwrap();
    let (events, _) = h.settle(100);
    assert_eq!(opened(&events, c), 1, "{events:?}");
    h.links[c].client.open_channel_with(2).unwrap();
    let (events, _) = h.settle(100);
    assert!(closed_text(&events, c).is_some(), "{events:?}");
    // A closed channel makes room on a.
    h.links[a]
        .client
        .close_channel(1, ReplyCode::REPLY_SUCCESS, "bye")
        .unwrap();
    h.settle(100);
    h.links[a].client.open_channel_with(3).unwrap();
    let (events, _) = h.settle(100);
    assert_eq!(opened(&events, a), 1, "{events:?}");
    // The limit lifted (as a definitions import may): no cap any more.
    h.core.admin_set_user_limits("guest", UserLimits::default());
    h.settle(100);
    for ch in 4..8 {
        h.links[a].client.open_channel_with(ch).unwrap();
    }
    let (events, _) = h.settle(100);
    assert_eq!(opened(&events, a), 4, "{events:?}");
}
