//! Regressions found by the `codec_ops` fuzz target (fuzz/src/codec.rs):
//! each test is the minimal scenario of one crash, stated as the invariant
//! it broke.

use amqp_codec::types::ReplyCode;
use amqp_codec::{ClientConfig, CommandError, Connection, ServerConfig};
use bytes::{Bytes, BytesMut};
use std::time::Instant;

fn drain(c: &mut Connection) -> Bytes {
    let mut out = BytesMut::new();
    while let Some(b) = c.poll_transmit() {
        out.extend_from_slice(&b);
    }
    out.freeze()
}

/// A heartbeat requested before the handshake went out ahead of the
/// server's protocol header (refusing a bad client header), so the peer
/// saw a frame where a header belongs.
#[test]
fn no_heartbeat_before_tune() {
    let now = Instant::now();
    let mut s = Connection::server(ServerConfig::default(), now);
    assert_eq!(s.send_heartbeat(), Err(CommandError::NotOpen));
    s.handle_input(Bytes::from_static(b"HTTP/1.1"));
    assert_eq!(&drain(&mut s)[..], b"AMQP\x00\x00\x09\x01");
    assert!(s.is_closed());

    let mut c = Connection::client(ClientConfig::default(), now);
    assert_eq!(c.send_heartbeat(), Err(CommandError::NotOpen));
    assert_eq!(&drain(&mut c)[..], b"AMQP\x00\x00\x09\x01");
    c.close(ReplyCode::REPLY_SUCCESS, "").ok();
}
