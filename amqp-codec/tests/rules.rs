//! Targeted protocol rules: each malformed or out-of-order input gets the
//! reply code docs/DESIGN.md states; limits hold.

mod common;

use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, Method, ReplyCode};
use amqp_codec::wire::Frame;
use amqp_codec::{ClientConfig, CloseCause, Connection, Event, Initiator, Limits, ServerConfig};
use bytes::{Bytes, BytesMut};
use common::MiniBroker;
use std::time::Instant;

fn enc(frames: &[Frame]) -> Bytes {
    let mut b = BytesMut::new();
    for f in frames {
        f.encode(&mut b).unwrap();
    }
    b.freeze()
}

/// A server with a hand-driven client: header, start-ok, tune-ok, open.
fn open_server(cfg: ServerConfig, tune_ok: ConnectionTuneOk) -> (Connection, MiniBroker) {
    let mut s = Connection::server(cfg, Instant::now());
    let mut b = MiniBroker::default();
    s.handle_input(Bytes::from_static(b"AMQP\x00\x00\x09\x01"));
    s.handle_input(enc(&[Frame::method(
        0,
        ConnectionStartOk {
            mechanism: "PLAIN".try_into().unwrap(),
            response: "\0guest\0guest".into(),
            ..Default::default()
        },
    )]));
    b.handle(&mut s);
    s.handle_input(enc(&[
        Frame::method(0, tune_ok),
        Frame::method(
            0,
            ConnectionOpen {
                virtual_host: "/".try_into().unwrap(),
                ..Default::default()
            },
        ),
    ]));
    b.handle(&mut s);
    (s, b)
}

fn tune(channel_max: u16, frame_max: u32) -> ConnectionTuneOk {
    ConnectionTuneOk {
        channel_max,
        frame_max,
        heartbeat: 0,
    }
}

/// Channel 1's basic.acks of delivery tags 1..=n.
fn acks(n: u64) -> Vec<Frame> {
    (1..=n)
        .map(|i| {
            Frame::method(
                1,
                BasicAck {
                    delivery_tag: i,
                    multiple: false,
                },
            )
        })
        .collect()
}

/// The close the server sent last: (channel, code, class, method).
fn last_close(s: &mut Connection) -> Option<(u16, u16, u16, u16)> {
    last_close_with_text(s).map(|(c, _)| c)
}

/// The last close sent, with its reply text.
fn last_close_with_text(s: &mut Connection) -> Option<((u16, u16, u16, u16), String)> {
    let mut out = BytesMut::new();
    while let Some(b) = s.poll_transmit() {
        out.extend_from_slice(&b);
    }
    let mut dec = amqp_codec::FrameDecoder::new();
    dec.set_frame_max(0);
    let mut out = out.freeze();
    if out.starts_with(b"AMQP") {
        out = out.slice(8..);
    }
    dec.push(out);
    let mut last = None;
    while let Ok(Some(amqp_codec::Decoded::Frame(f))) = dec.decode() {
        match f.payload {
            amqp_codec::wire::FramePayload::Method(Method::ConnectionClose(c)) => {
                last = Some((
                    (0, c.reply_code, c.class_id, c.method_id),
                    c.reply_text.to_string_lossy().into_owned(),
                ))
            }
            amqp_codec::wire::FramePayload::Method(Method::ChannelClose(c)) => {
                last = Some((
                    (f.channel, c.reply_code, c.class_id, c.method_id),
                    c.reply_text.to_string_lossy().into_owned(),
                ))
            }
            _ => {}
        }
    }
    last
}

fn with_channel(cfg: ServerConfig) -> (Connection, MiniBroker) {
    let (mut s, b) = open_server(cfg, tune(2047, 131_072));
    assert!(s.is_open());
    while s.poll_transmit().is_some() {}
    s.handle_input(enc(&[Frame::method(1, ChannelOpen::default())]));
    assert!(s.is_channel_open(1));
    (s, b)
}

#[test]
fn tune_ok_frame_max_below_4096_is_530() {
    let (mut s, _) = open_server(ServerConfig::default(), tune(2047, 4095));
    assert_eq!(last_close(&mut s), Some((0, 530, 10, 31)));
    let (mut s, _) = open_server(ServerConfig::default(), tune(0, 131_072));
    assert_eq!(
        last_close(&mut s),
        Some((0, 530, 10, 31)),
        "channel_max 0 where a limit was offered"
    );
    let (mut s, _) = open_server(ServerConfig::default(), tune(2047, 0));
    assert_eq!(
        last_close(&mut s),
        Some((0, 530, 10, 31)),
        "frame_max 0 where a limit was offered"
    );
}

#[test]
fn channel_max_counts_open_channels() {
    let (mut s, _) = open_server(ServerConfig::default(), tune(2, 131_072));
    while s.poll_transmit().is_some() {}
    s.handle_input(enc(&[
        Frame::method(7, ChannelOpen::default()),
        Frame::method(9, ChannelOpen::default()),
    ]));
    assert_eq!(s.channel_count(), 2);
    s.handle_input(enc(&[Frame::method(9, ChannelClose::default())]));
    s.handle_input(enc(&[Frame::method(3, ChannelOpen::default())]));
    assert_eq!(s.channel_count(), 2, "a closed channel frees a slot");
    s.handle_input(enc(&[Frame::method(4, ChannelOpen::default())]));
    // As RabbitMQ: the close names no method (class 0, method 0).
    assert_eq!(last_close(&mut s), Some((0, 530, 0, 0)));
}

#[test]
fn channel_cap_refuses_before_open_ok() {
    let (mut s, _) = open_server(ServerConfig::default(), tune(2047, 131_072));
    while s.poll_transmit().is_some() {}
    s.set_channel_cap(Some((2, "no more for you".into())));
    s.handle_input(enc(&[
        Frame::method(1, ChannelOpen::default()),
        Frame::method(2, ChannelOpen::default()),
    ]));
    assert_eq!(s.channel_count(), 2);
    s.set_channel_cap(Some((3, "no more for you".into())));
    s.handle_input(enc(&[Frame::method(3, ChannelOpen::default())]));
    assert_eq!(s.channel_count(), 3, "a raised cap lets one more in");
    while s.poll_transmit().is_some() {}
    s.handle_input(enc(&[Frame::method(4, ChannelOpen::default())]));
    assert_eq!(s.channel_count(), 3, "channel 4 was not opened");
    assert_eq!(
        last_close_with_text(&mut s),
        Some(((0, 530, 0, 0), "NOT_ALLOWED - no more for you".to_owned()))
    );
}

#[test]
fn channel_faults_are_504() {
    let (mut s, _) = with_channel(ServerConfig::default());
    s.handle_input(enc(&[Frame::method(1, ChannelOpen::default())]));
    assert_eq!(last_close(&mut s), Some((0, 504, 20, 10)));
    let (mut s, _) = with_channel(ServerConfig::default());
    s.handle_input(enc(&[Frame::method(5, QueueDeclare::default())]));
    assert_eq!(
        last_close_with_text(&mut s),
        Some((
            (0, 504, 50, 10),
            "CHANNEL_ERROR - expected 'channel.open'".to_owned()
        )),
        "RabbitMQ's text"
    );
}

#[test]
fn content_sequence_faults_are_505() {
    let publish = Frame::method(1, BasicPublish::default());
    let header = Frame::header(1, 10, BasicProperties::default());
    let body = Frame::body(1, Bytes::from_static(b"0123456789"));
    type Close = (u16, u16, u16, u16);
    let cases: Vec<(Vec<Frame>, Close)> = vec![
        (vec![header.clone()], (0, 505, 0, 0)),
        (vec![publish.clone(), body.clone()], (0, 505, 60, 40)),
        (
            vec![publish.clone(), Frame::method(1, QueueDeclare::default())],
            (0, 505, 50, 10),
        ),
        (
            vec![
                publish.clone(),
                header.clone(),
                Frame::method(1, BasicQos::default()),
            ],
            (0, 505, 60, 10),
        ),
        (
            vec![Frame {
                channel: 1,
                payload: amqp_codec::wire::FramePayload::Heartbeat,
            }],
            (0, 505, 0, 0),
        ),
        (
            vec![Frame::header(0, 1, BasicProperties::default())],
            (0, 505, 0, 0),
        ),
    ];
    for (frames, want) in cases {
        let (mut s, _) = with_channel(ServerConfig::default());
        s.handle_input(enc(&frames));
        assert_eq!(last_close(&mut s), Some(want), "{frames:?}");
    }
}

#[test]
fn body_longer_than_header_is_501_at_once() {
    let (mut s, _) = with_channel(ServerConfig::default());
    s.handle_input(enc(&[
        Frame::method(1, BasicPublish::default()),
        Frame::header(1, 4, BasicProperties::default()),
        Frame::body(1, Bytes::from_static(b"0123456789")),
    ]));
    assert_eq!(last_close(&mut s), Some((0, 501, 60, 40)));
}

#[test]
fn oversized_message_is_406_on_the_channel_before_allocating() {
    let limits = Limits {
        max_message_size: 1000,
        ..Default::default()
    };
    let (mut s, _) = with_channel(ServerConfig {
        limits,
        ..Default::default()
    });
    // A header announcing u64::MAX bytes: refused from the header alone.
    s.handle_input(enc(&[
        Frame::method(1, BasicPublish::default()),
        Frame::header(1, u64::MAX, BasicProperties::default()),
    ]));
    assert_eq!(last_close(&mut s), Some((1, 406, 60, 40)));
    assert_eq!(s.held_bytes(), 0);
    // The channel is closing: body frames that follow are dropped, and the
    // connection stays open.
    s.handle_input(enc(&[Frame::body(1, Bytes::from_static(b"x"))]));
    assert!(s.is_open());
    s.handle_input(enc(&[Frame::method(1, ChannelCloseOk {})]));
    assert!(!s.is_channel_open(1));
}

#[test]
fn one_budget_per_connection() {
    let limits = Limits {
        connection_budget: 10_000,
        ..Default::default()
    };
    let (mut s, _) = open_server(
        ServerConfig {
            limits,
            ..Default::default()
        },
        tune(2047, 131_072),
    );
    let mut frames = vec![];
    for ch in 1..=3u16 {
        frames.push(Frame::method(ch, ChannelOpen::default()));
        frames.push(Frame::method(ch, BasicPublish::default()));
        frames.push(Frame::header(ch, 1_000_000, BasicProperties::default()));
        frames.push(Frame::body(ch, Bytes::from(vec![0u8; 4000])));
    }
    s.handle_input(enc(&frames));
    assert_eq!(last_close(&mut s), Some((0, 506, 0, 0)));
}

#[test]
fn soft_error_closes_the_channel_and_drops_until_close_ok() {
    let (mut s, _) = with_channel(ServerConfig::default());
    s.handle_input(enc(&[Frame::method(
        1,
        BasicAck {
            delivery_tag: 42,
            multiple: false,
        },
    )]));
    while s.poll_event().is_some() {}
    s.refuse(
        1,
        ReplyCode::PRECONDITION_FAILED,
        "PRECONDITION_FAILED - unknown delivery tag 42",
    )
    .unwrap();
    assert_eq!(last_close(&mut s), Some((1, 406, 60, 80)));
    // Dropped while closing; a close from the peer is still answered.
    s.handle_input(enc(&[
        Frame::method(1, QueueDeclare::default()),
        Frame::method(1, ChannelClose::default()),
    ]));
    assert!(s.poll_event().is_none());
    assert!(s.poll_transmit().is_some(), "close-ok answered");
    s.handle_input(enc(&[Frame::method(1, ChannelCloseOk {})]));
    assert!(matches!(
        s.poll_event(),
        Some(Event::ChannelClosed {
            channel: 1,
            initiator: Initiator::Local,
            ..
        })
    ));
    assert!(s.is_open());
}

#[test]
fn bad_protocol_header_is_answered_with_ours() {
    let mut s = Connection::server(ServerConfig::default(), Instant::now());
    s.handle_input(Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"));
    assert_eq!(&s.poll_transmit().unwrap()[..], b"AMQP\x00\x00\x09\x01");
    assert!(s.is_closed());
}

#[test]
fn auth_failure_close_only_with_the_capability() {
    for cap in [true, false] {
        let mut s = Connection::server(ServerConfig::default(), Instant::now());
        let mut b = MiniBroker::default();
        let mut props = amqp_codec::types::FieldTable::new();
        let caps = amqp_codec::Capabilities {
            authentication_failure_close: cap,
            ..Default::default()
        };
        props.insert("capabilities", caps.to_table());
        s.handle_input(Bytes::from_static(b"AMQP\x00\x00\x09\x01"));
        s.handle_input(enc(&[Frame::method(
            0,
            ConnectionStartOk {
                client_properties: props,
                mechanism: "PLAIN".try_into().unwrap(),
                response: "\0guest\0wrong".into(),
                ..Default::default()
            },
        )]));
        while s.poll_transmit().is_some() {}
        b.handle(&mut s);
        if cap {
            assert_eq!(last_close(&mut s), Some((0, 403, 0, 0)));
        } else {
            assert_eq!(last_close(&mut s), None);
            assert!(s.is_closed());
        }
    }
}

#[test]
fn client_refuses_a_server_frame_max_below_4096() {
    let mut c = Connection::client(ClientConfig::default(), Instant::now());
    c.handle_input(enc(&[Frame::method(
        0,
        ConnectionStart {
            version_minor: 9,
            mechanisms: "PLAIN".into(),
            ..Default::default()
        },
    )]));
    c.handle_input(enc(&[Frame::method(
        0,
        ConnectionTune {
            channel_max: 0,
            frame_max: 512,
            heartbeat: 0,
        },
    )]));
    assert_eq!(last_close(&mut c), Some((0, 530, 10, 30)));
    let _ = CloseCause::TransportClosed;
}

#[test]
fn pending_events_are_bounded_and_input_resumes_on_poll_event() {
    // 3,000 acks in one chunk: handle_input stops decoding at
    // MAX_PENDING_EVENTS; poll_event decodes the rest as the queue empties;
    // every ack comes out, in order, and nothing is lost at EOF.
    let (mut s, _) = with_channel(ServerConfig::default());
    while s.poll_event().is_some() {}
    let n = 3_000u64;
    let acks = acks(n);
    s.handle_input(enc(&acks));
    let mut tags = vec![];
    while let Some(e) = s.poll_event() {
        if let Event::Method {
            method: Method::BasicAck(a),
            ..
        } = e
        {
            tags.push(a.delivery_tag);
        }
    }
    assert_eq!(tags, (1..=n).collect::<Vec<_>>());
    // Paused input is decoded before EOF closes the connection.
    s.handle_input(enc(&acks));
    assert!(s.poll_event().is_some());
    s.handle_eof();
    assert!(s.is_closed());
    let mut acks_after = 1;
    let mut closed = false;
    while let Some(e) = s.poll_event() {
        match e {
            Event::Method { .. } => acks_after += 1,
            Event::Closed { .. } => closed = true,
            _ => {}
        }
    }
    assert_eq!(acks_after, n);
    assert!(closed);
    assert!(amqp_codec::MAX_PENDING_EVENTS < n as usize);
}

#[test]
fn close_ok_behind_unread_events_ends_the_close_handshake() {
    // The embedder reads no events: input pauses at MAX_PENDING_EVENTS.
    // Once this side closes, the paused frames are dropped (as every frame
    // but close/close-ok is while closing) and the peer's close-ok is seen
    // at once, not after the close-ok timeout.
    let (mut s, _) = with_channel(ServerConfig::default());
    let acks = acks(100);
    s.handle_input(enc(&acks));
    s.close(ReplyCode(320), "shutting down").unwrap();
    assert!(!s.is_closed());
    assert_eq!(last_close(&mut s), Some((0, 320, 0, 0)));
    s.handle_input(enc(&[Frame::method(0, ConnectionCloseOk {})]));
    assert!(s.is_closed(), "close-ok behind unread events was not seen");
    assert_eq!(s.poll_timeout(), None);
    let mut acks_seen = 0;
    let mut closed_locally = false;
    while let Some(e) = s.poll_event() {
        match e {
            Event::Method {
                method: Method::BasicAck(_),
                ..
            } => acks_seen += 1,
            Event::Closed {
                cause:
                    CloseCause::Closed {
                        initiator: Initiator::Local,
                        ..
                    },
            } => closed_locally = true,
            _ => {}
        }
    }
    // The events queued before the close are kept; the rest were dropped.
    assert!(acks_seen <= amqp_codec::MAX_PENDING_EVENTS, "{acks_seen}");
    assert!(closed_locally);
}

/// The close frames `s` transmits: (channel, code, text, class, method).
fn closes(s: &mut Connection) -> Vec<(u16, u16, String, u16, u16)> {
    let mut out = BytesMut::new();
    while let Some(b) = s.poll_transmit() {
        out.extend_from_slice(&b);
    }
    let mut dec = amqp_codec::FrameDecoder::new();
    dec.set_frame_max(0);
    dec.push(out.freeze());
    let mut v = vec![];
    while let Ok(Some(amqp_codec::Decoded::Frame(f))) = dec.decode() {
        match f.payload {
            amqp_codec::wire::FramePayload::Method(Method::ConnectionClose(c)) => v.push((
                0,
                c.reply_code,
                c.reply_text.to_string(),
                c.class_id,
                c.method_id,
            )),
            amqp_codec::wire::FramePayload::Method(Method::ChannelClose(c)) => v.push((
                f.channel,
                c.reply_code,
                c.reply_text.to_string(),
                c.class_id,
                c.method_id,
            )),
            _ => {}
        }
    }
    v
}

#[test]
fn refuse_error_closes_with_the_errors_code_text_and_method() {
    use amqp_codec::CommandError;
    use amqp_codec::types::{ErrorKind, ProtocolError};
    let declare = Frame::method(1, ExchangeDeclare::default());

    // A soft error naming its method: channel.close with all of it.
    let (mut s, _) = with_channel(ServerConfig::default());
    s.handle_input(enc(std::slice::from_ref(&declare)));
    while s.poll_transmit().is_some() {}
    let e = ProtocolError::channel(
        1,
        ReplyCode::NOT_FOUND,
        ErrorKind::Refused("no queue 'q' in vhost '/'".into()),
    )
    .with_method(50, 20);
    s.refuse_error(1, &e).unwrap();
    assert_eq!(
        closes(&mut s),
        vec![(
            1,
            404,
            "NOT_FOUND - no queue 'q' in vhost '/'".into(),
            50,
            20
        )]
    );
    assert!(s.is_open());

    // No method in the error: the last one received on the channel.
    let (mut s, _) = with_channel(ServerConfig::default());
    s.handle_input(enc(std::slice::from_ref(&declare)));
    while s.poll_transmit().is_some() {}
    let e = ProtocolError::channel(
        1,
        ReplyCode::PRECONDITION_FAILED,
        ErrorKind::Refused("inequivalent arg 'type'".into()),
    );
    s.refuse_error(1, &e).unwrap();
    assert_eq!(
        closes(&mut s),
        vec![(
            1,
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type'".into(),
            40,
            10
        )]
    );

    // A hard code closes the connection.
    let (mut s, _) = with_channel(ServerConfig::default());
    s.handle_input(enc(std::slice::from_ref(&declare)));
    while s.poll_transmit().is_some() {}
    let e = ProtocolError::connection(
        ReplyCode::COMMAND_INVALID,
        ErrorKind::Refused("unknown exchange type 'x-nope'".into()),
    );
    s.refuse_error(1, &e).unwrap();
    assert_eq!(
        closes(&mut s),
        vec![(
            0,
            503,
            "COMMAND_INVALID - unknown exchange type 'x-nope'".into(),
            40,
            10
        )]
    );

    // A channel that is not open is the caller's mistake.
    let (mut s, _) = with_channel(ServerConfig::default());
    assert_eq!(s.refuse_error(7, &e), Err(CommandError::ChannelNotOpen(7)));
}

/// Encoded properties go out as given when well formed; malformed ones
/// (unknown flag bits, a value cut short, trailing bytes) are refused
/// before anything is queued.
#[test]
fn encoded_properties_are_checked_before_sending() {
    let (mut s, _b) = with_channel(ServerConfig::default());
    while s.poll_transmit().is_some() {}
    let deliver = || -> Method {
        BasicDeliver {
            consumer_tag: "c".try_into().unwrap(),
            ..Default::default()
        }
        .into()
    };
    let props = BasicProperties {
        content_type: Some("text/plain".try_into().unwrap()),
        ..Default::default()
    };
    let mut wire = Vec::new();
    amqp_codec::wire::encode_properties(&props, &mut wire).unwrap();
    for bad in [
        &[0x00, 0x01][..],
        &wire[..wire.len() - 1],
        &[&wire[..], &[0][..]].concat(),
    ] {
        let r = s.send_content_encoded(1, deliver(), bad, amqp_codec::Body::Borrowed(b"x"));
        assert!(
            matches!(
                r,
                Err(amqp_codec::CommandError::Send(
                    amqp_codec::SendError::Properties(_)
                ))
            ),
            "{bad:?}: {r:?}"
        );
        assert!(s.poll_transmit().is_none(), "nothing queued for {bad:?}");
    }
    assert_eq!(
        s.send_content_encoded(1, deliver(), &wire, amqp_codec::Body::Borrowed(b"body")),
        Ok(Some(1))
    );
    let out: Vec<u8> = std::iter::from_fn(|| s.poll_transmit()).flatten().collect();
    let out = Bytes::from(out);
    let limits = amqp_codec::wire::FrameLimits::UNLIMITED;
    let Ok(amqp_codec::wire::Parsed::Complete { consumed, .. }) =
        amqp_codec::wire::parse_frame(&out, limits)
    else {
        panic!("a method frame first");
    };
    let Ok(amqp_codec::wire::Parsed::Complete { frame, .. }) =
        amqp_codec::wire::parse_frame(&out.slice(consumed..), limits)
    else {
        panic!("then a header frame");
    };
    assert!(
        matches!(&frame.payload, amqp_codec::wire::FramePayload::Header(h) if h.properties == props)
    );
}
