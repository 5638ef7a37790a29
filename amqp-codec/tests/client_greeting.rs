//! What a client hears instead of `connection.start`: a server refusing
//! the protocol version answers with its own protocol header and closes;
//! a peer that is no AMQP server (an HTTP server) answers something else.
//! Both end the connection with an error naming the problem, not a
//! `FrameTooLarge` of ~1.3 GB read from the text as a frame header. Also
//! `CloseCause`'s `Display`.

use amqp_codec::types::{ErrorKind, ReplyCode};
use amqp_codec::{
    ClientConfig, CloseCause, CloseReason, Connection, Event, Initiator, TimeoutKind,
};
use bytes::Bytes;
use std::time::Instant;

/// Feeds `input` to a new client in chunks of `chunk` bytes; returns the
/// cause it closed with, its transmitted bytes, and whether it is closed.
fn client_hears(input: &[u8], chunk: usize) -> (Option<CloseCause>, Vec<u8>) {
    let mut c = Connection::client(ClientConfig::default(), Instant::now());
    let mut sent = Vec::new();
    while let Some(b) = c.poll_transmit() {
        sent.extend_from_slice(&b);
    }
    assert_eq!(sent, b"AMQP\x00\x00\x09\x01");
    for piece in input.chunks(chunk) {
        c.handle_input(Bytes::copy_from_slice(piece));
    }
    let mut cause = None;
    while let Some(e) = c.poll_event() {
        if let Event::Closed { cause: c } = e {
            cause = Some(c);
        }
    }
    let mut after = Vec::new();
    while let Some(b) = c.poll_transmit() {
        after.extend_from_slice(&b);
    }
    assert_eq!(cause.is_some(), c.is_closed());
    (cause, after)
}

fn failure(cause: Option<CloseCause>) -> amqp_codec::types::ProtocolError {
    match cause {
        Some(CloseCause::Failed(e)) => e,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn server_protocol_header_is_a_refused_version() {
    for chunk in [1, 3, 8] {
        // A 0-9-1 server that refuses the connection names its own version.
        let (cause, after) = client_hears(b"AMQP\x00\x00\x09\x01", chunk);
        assert!(after.is_empty(), "the client sends nothing more");
        let text = cause.clone().unwrap().to_string();
        let e = failure(cause);
        assert_eq!(
            e.kind(),
            &ErrorKind::ProtocolVersionRefused {
                version: [0, 0, 9, 1]
            }
        );
        assert!(text.contains("refused AMQP 0-9-1"), "{text}");

        // An AMQP 1.0 server.
        let (cause, _) = client_hears(b"AMQP\x00\x01\x00\x00", chunk);
        let text = cause.clone().unwrap().to_string();
        let e = failure(cause);
        assert_eq!(
            e.kind(),
            &ErrorKind::ProtocolVersionRefused {
                version: [0, 1, 0, 0]
            }
        );
        assert_eq!(
            text,
            "the server refused AMQP 0-9-1: it answered with the protocol header of \
             AMQP 1.0.0 (protocol id 0)"
        );
    }
}

#[test]
fn http_server_is_not_amqp() {
    let reply = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    for chunk in [1, 5, reply.len()] {
        let (cause, after) = client_hears(reply, chunk);
        assert!(after.is_empty());
        let text = cause.clone().unwrap().to_string();
        let e = failure(cause);
        let ErrorKind::NotAmqp { received } = e.kind() else {
            panic!("not NotAmqp: {e:?}");
        };
        assert!(reply.starts_with(received) && !received.is_empty());
        assert!(!matches!(e.kind(), ErrorKind::FrameTooLarge { .. }));
        if chunk == reply.len() {
            assert_eq!(
                text,
                "not an AMQP server: it answered \"HTTP/1.1 400 Bad Request\\r\\nConten\""
            );
        }
    }
    // Text that starts with the A of AMQP but is not a protocol header.
    let (cause, _) = client_hears(b"ACCESS DENIED\r\n", 4);
    assert!(matches!(failure(cause).kind(), ErrorKind::NotAmqp { .. }));
}

#[test]
fn close_cause_reads_well() {
    let peer = CloseCause::Closed {
        initiator: Initiator::Peer,
        reason: CloseReason {
            code: ReplyCode::NOT_FOUND,
            text: "NOT_FOUND - no exchange 'nope' in vhost '/'"
                .try_into()
                .unwrap(),
            class_id: 60,
            method_id: 40,
        },
    };
    assert_eq!(
        peer.to_string(),
        "closed by peer: 404 NOT_FOUND - no exchange 'nope' in vhost '/' (basic.publish)"
    );
    let local = CloseCause::Closed {
        initiator: Initiator::Local,
        reason: CloseReason::new(ReplyCode::REPLY_SUCCESS, "bye"),
    };
    assert_eq!(local.to_string(), "closed by us: 200 REPLY_SUCCESS - bye");
    assert_eq!(
        CloseCause::Timeout(TimeoutKind::Heartbeat).to_string(),
        "heartbeat timeout"
    );
    assert_eq!(
        CloseCause::TransportClosed.to_string(),
        "connection closed by peer without a close handshake"
    );
    let bad_end =
        amqp_codec::types::ProtocolError::frame_error(ErrorKind::BadFrameEnd { found: 0 });
    assert_eq!(
        CloseCause::Failed(bad_end).to_string(),
        "protocol error: FRAME_ERROR - invalid frame end octet 0x00 (expected 0xce)"
    );
}
