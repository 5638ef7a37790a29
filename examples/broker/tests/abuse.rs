//! Hostile clients, each with a bounded cost, while a well-behaved client
//! publishes and consumes: it must see every message, in order. Its
//! publish-to-deliver latency (p50 / p99) with and without the abusers is
//! printed (reported, not asserted: this machine is noisy).
//!
//! The abusers: a frame announcing 4 GiB after the handshake (refused
//! with 501 before anything is allocated for it), a channel flood past
//! channel_max (530), 5,000 consumers on one channel, 2,000 exclusive
//! queues declared and dropped with their connection, a half-open client
//! that stops answering heartbeats (closed after two intervals), garbage
//! after the handshake and instead of a protocol header, a client that
//! vanishes mid-frame, a slowloris sending its protocol header a byte at
//! a time, and a consumer that never reads while 32 MB flood its queue.

mod support;

use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, ReplyCode};
use amqp_codec::{ClientConfig, Event};
use bytes::Bytes;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::Client;

/// The good client: `n` messages through its own queue, each carrying
/// its send time; returns the latencies (µs), checking order.
fn good_round(addr: SocketAddr, queue: &str, n: usize) -> Vec<u64> {
    let mut c = Client::connect(addr);
    c.call(QueueDeclare {
        queue: queue.try_into().unwrap(),
        auto_delete: true,
        ..Default::default()
    });
    c.call(BasicConsume {
        queue: queue.try_into().unwrap(),
        no_ack: true,
        ..Default::default()
    });
    let origin = Instant::now();
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let sent = origin.elapsed().as_micros() as u64;
        c.conn
            .publish(
                1,
                BasicPublish {
                    routing_key: queue.try_into().unwrap(),
                    ..Default::default()
                },
                &BasicProperties::default(),
                Bytes::from(format!("{i} {sent}")),
            )
            .unwrap();
        let Event::Message { message, .. } = c.until(|e| matches!(e, Event::Message { .. })) else {
            unreachable!()
        };
        let text = String::from_utf8_lossy(&message.body).into_owned();
        let (idx, at) = text.split_once(' ').unwrap();
        assert_eq!(idx.parse::<usize>().unwrap(), i, "in order, none lost");
        lat.push(origin.elapsed().as_micros() as u64 - at.parse::<u64>().unwrap());
    }
    c.conn.close(ReplyCode::REPLY_SUCCESS, "bye").unwrap();
    c.until(|e| matches!(e, Event::Closed { .. }));
    lat
}

fn percentiles(mut v: Vec<u64>) -> (u64, u64) {
    v.sort_unstable();
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

/// Reads until the broker closes the socket (at most `secs`); returns
/// what it sent and whether it closed.
fn until_closed(s: &mut TcpStream, secs: u64) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

/// The reply code of the last connection.close in `bytes` (a frame of
/// type 1 on channel 0, class 10 method 50).
fn close_code(bytes: &[u8]) -> Option<u16> {
    let mut i = 0;
    let mut code = None;
    while i + 7 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[i + 3..i + 7].try_into().unwrap()) as usize;
        let p = &bytes[i + 7..(i + 7 + size).min(bytes.len())];
        if bytes[i] == 1 && p.len() >= 6 && p[..4] == [0, 10, 0, 50] {
            code = Some(u16::from_be_bytes([p[4], p[5]]));
        }
        i += 8 + size;
    }
    code
}

/// A raw connection past the handshake (guest/guest), as bytes on a
/// socket: the codec's client does the handshake, then hands the socket
/// over.
fn raw_open(addr: SocketAddr, heartbeat: Option<u16>) -> TcpStream {
    let c = Client::connect_with(
        addr,
        ClientConfig {
            heartbeat,
            ..ClientConfig::default()
        },
    );
    c.sock
}

#[test]
fn hostile_clients_have_bounded_costs_and_spare_a_well_behaved_one() {
    let broker = support::Broker::start(5740..5750, &[]);
    let addr = broker.addr;
    let alone = percentiles(good_round(addr, "good-alone", 2000));

    // A frame announcing 4 GiB: 501 FRAME_ERROR, nothing allocated.
    let mut bomb = raw_open(addr, None);
    bomb.write_all(&[1, 0, 1, 0xff, 0xff, 0xff, 0xff]).unwrap();
    let (bytes, closed) = until_closed(&mut bomb, 5);
    assert!(closed, "the frame bomb's connection is closed");
    assert_eq!(close_code(&bytes), Some(501), "FRAME_ERROR");

    // Garbage instead of a protocol header (an HTTP request), and a
    // client that vanishes in the middle of a frame.
    let mut http = TcpStream::connect(addr).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (reply, closed) = until_closed(&mut http, 5);
    assert!(closed, "the HTTP client is closed");
    assert_eq!(
        reply, b"AMQP\x00\x00\x09\x01",
        "answered with the protocol header"
    );
    {
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"AMQP\x00\x00\x09\x01\x01\x00\x00\x00\x00\x01")
            .unwrap();
    }

    // Garbage after the handshake: closed with a connection error.
    let mut garbage = raw_open(addr, None);
    garbage.write_all(&[0xde; 4096]).unwrap();
    let (_, closed) = until_closed(&mut garbage, 5);
    assert!(closed, "the garbage connection is closed");

    // A channel flood past channel_max (2047): 530 NOT_ALLOWED.
    let mut flood = Client::connect(addr);
    for ch in 2..=2047u16 {
        flood.conn.open_channel_with(ch).unwrap();
    }
    flood.until(|e| matches!(e, Event::ChannelOpened { channel: 2047 }));
    let mut extra = Vec::new();
    // Channel 2048 is past the negotiated maximum: written raw.
    extra.extend_from_slice(&[1, 0x08, 0x00, 0, 0, 0, 5, 0, 20, 0, 10, 0, 0xce]);
    flood.sock.write_all(&extra).unwrap();
    match flood.until(|e| matches!(e, Event::Closed { .. })) {
        Event::Closed { cause } => {
            assert!(format!("{cause:?}").contains("530"), "{cause:?}");
        }
        _ => unreachable!(),
    }

    // 5,000 consumers on one channel, and 2,000 exclusive queues that go
    // with their connection.
    let mut many = Client::connect(addr);
    many.call(QueueDeclare {
        queue: "many-consumers".try_into().unwrap(),
        auto_delete: true,
        ..Default::default()
    });
    // (The codec answers more than 64 unanswered requests on a channel
    // with 506: a flood pipelines in batches below that.)
    for batch in 0..140 {
        for i in 0..50 {
            let m: amqp_codec::types::Method = if batch < 100 {
                BasicConsume {
                    queue: "many-consumers".try_into().unwrap(),
                    no_ack: true,
                    ..Default::default()
                }
                .into()
            } else {
                QueueDeclare {
                    queue: format!("excl-{batch}-{i}").as_str().try_into().unwrap(),
                    exclusive: true,
                    ..Default::default()
                }
                .into()
            };
            many.conn.send_method(1, m).unwrap();
        }
        for _ in 0..50 {
            many.until(|e| matches!(e, Event::Method { .. }));
        }
    }

    // Half-open: heartbeat 1 s, then silence (no FIN): closed after two
    // intervals.
    let half_open = raw_open(addr, Some(1));
    let half_open_since = Instant::now();

    // A slowloris and a consumer that never reads under a flood, in the
    // background of the good round.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        for b in b"AMQP\x00\x00\x09\x01" {
            if s.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut stuck = Client::connect(addr);
    stuck.call(QueueDeclare {
        queue: "flooded".try_into().unwrap(),
        auto_delete: true,
        ..Default::default()
    });
    stuck.call(BasicConsume {
        queue: "flooded".try_into().unwrap(),
        no_ack: true,
        ..Default::default()
    });
    let mut flooder = Client::connect(addr);
    let body = Bytes::from(vec![0u8; 16 * 1024]);
    for _ in 0..2000 {
        flooder
            .conn
            .publish(
                1,
                BasicPublish {
                    routing_key: "flooded".try_into().unwrap(),
                    ..Default::default()
                },
                &BasicProperties::default(),
                body.clone(),
            )
            .unwrap();
    }
    while let Some(b) = flooder.conn.poll_transmit() {
        flooder.sock.write_all(&b).unwrap();
    }

    let with = percentiles(good_round(addr, "good-with-abusers", 2000));
    eprintln!(
        "well-behaved client, publish->deliver latency: alone p50 {} us p99 {} us; \
         with abusers p50 {} us p99 {} us",
        alone.0, alone.1, with.0, with.1
    );

    // The half-open client is gone within two intervals and a bit.
    let mut half_open = half_open;
    let (_, closed) = until_closed(&mut half_open, 10);
    assert!(closed, "the half-open connection is closed");
    let gone = half_open_since.elapsed();
    assert!(gone < Duration::from_secs(6), "after {gone:?}");

    slow.join().unwrap();
    drop((stuck, flooder, many));
    assert!(
        broker.terminate().is_some_and(|s| s.success()),
        "the broker exits cleanly on SIGTERM after all this"
    );
}
