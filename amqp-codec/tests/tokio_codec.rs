//! `Framed<TcpStream, AmqpCodec>` over loopback.
#![cfg(feature = "tokio-util")]

use amqp_codec::codec::AmqpCodec;
use amqp_codec::types::method::BasicAck;
use amqp_codec::wire::{Frame, FramePayload};
use bytes::Bytes;
use std::future::poll_fn;
use std::pin::Pin;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Decoder, Encoder, Framed};

#[tokio::test]
async fn framed_over_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let writer = tokio::spawn(async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = bytes::BytesMut::new();
        let mut codec = AmqpCodec::new();
        for i in 0..100u64 {
            codec
                .encode(
                    Frame::method(
                        1,
                        BasicAck {
                            delivery_tag: i,
                            multiple: false,
                        },
                    ),
                    &mut buf,
                )
                .unwrap();
        }
        codec
            .encode(Frame::body(1, Bytes::from(vec![9u8; 4000])), &mut buf)
            .unwrap();
        // One byte at a time for the first 50 bytes, then the rest.
        for b in buf[..50].chunks(1) {
            tcp.write_all(b).await.unwrap();
        }
        tcp.write_all(&buf[50..]).await.unwrap();
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let mut framed = Framed::new(tcp, AmqpCodec::new());
    let mut n = 0u64;
    loop {
        let next = poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut framed), cx)).await;
        let Some(frame) = next else { break };
        let frame = frame.unwrap();
        match frame.payload {
            FramePayload::Method(_) => n += 1,
            FramePayload::Body(b) => assert_eq!(b.len(), 4000),
            _ => panic!(),
        }
    }
    assert_eq!(n, 100);
    writer.await.unwrap();
}

#[test]
fn oversized_frame_is_refused_from_the_header() {
    let mut codec = AmqpCodec::new();
    let mut buf = bytes::BytesMut::from(&[3u8, 0, 1, 0, 0, 0x13, 0x88][..]);
    assert!(codec.decode(&mut buf).is_err());
    let mut big = bytes::BytesMut::new();
    assert!(
        codec
            .encode(Frame::body(1, Bytes::from(vec![0u8; 5000])), &mut big)
            .is_err()
    );
}
