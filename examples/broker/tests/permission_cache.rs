//! A connection remembers its permission checks (a publisher's regular
//! expressions run once per exchange, not per message), and forgets them
//! the moment an administrator changes its user's permissions: the next
//! publish is refused, as RabbitMQ refuses it.

use amqp_broker::auth::Permission;
use amqp_broker::testing::Harness;
use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, ReplyCode};
use amqp_codec::{ClientConfig, Event, ServerConfig};
use bytes::Bytes;

fn publish(h: &mut Harness, link: usize, channel: u16, exchange: &'static str) {
    h.links[link]
        .client
        .publish(
            channel,
            BasicPublish {
                exchange: exchange.try_into().unwrap(),
                routing_key: "k".try_into().unwrap(),
                ..Default::default()
            },
            &BasicProperties::default(),
            Bytes::from_static(b"m"),
        )
        .unwrap();
}

fn closed(events: &[(usize, Event)]) -> Option<u16> {
    events.iter().find_map(|(_, e)| match e {
        Event::ChannelClosed { reason, .. } => Some(reason.code.0),
        _ => None,
    })
}

#[test]
fn revoking_write_permission_refuses_the_next_publish() {
    let mut h = Harness::default();
    let l = h.connect(ClientConfig::default(), ServerConfig::default());
    assert!(h.settle(100).1);
    h.links[l].client.open_channel_with(1).unwrap();
    assert!(h.settle(100).1);
    // Allowed, many times over (the checks come from the cache).
    for _ in 0..3 {
        publish(&mut h, l, 1, "amq.direct");
        let (ev, ok) = h.settle(100);
        assert!(ok);
        assert_eq!(closed(&ev), None, "{ev:?}");
    }
    // Write access now only to exchanges named `other.*`.
    h.core
        .admin_set_permission(
            "guest",
            "/",
            Permission::new(".*", "^other\\.", ".*").unwrap(),
        )
        .unwrap();
    publish(&mut h, l, 1, "amq.direct");
    let (ev, _) = h.settle(100);
    assert_eq!(closed(&ev), Some(ReplyCode::ACCESS_REFUSED.0), "{ev:?}");

    // And granted back: a new channel publishes again.
    h.core
        .admin_set_permission("guest", "/", Permission::new(".*", ".*", ".*").unwrap())
        .unwrap();
    h.links[l].client.open_channel_with(2).unwrap();
    assert!(h.settle(100).1);
    publish(&mut h, l, 2, "amq.direct");
    let (ev, ok) = h.settle(100);
    assert!(ok);
    assert_eq!(closed(&ev), None, "{ev:?}");
}
