//! A client that sends garbage, vanishes mid-frame, trickles its bytes or
//! never reads what it is sent neither takes the broker down nor stalls a
//! well-behaved client on another connection.

mod support;

use amqp_codec::Event;
use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, ReplyCode};
use bytes::Bytes;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::Client;

/// The good client declares a queue, consumes it, and publishes and
/// receives `n` messages; returns how long the round took.
fn good_round(addr: SocketAddr, queue: &str, n: usize) -> Duration {
    let start = Instant::now();
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
    for i in 0..n {
        c.conn
            .publish(
                1,
                BasicPublish {
                    routing_key: queue.try_into().unwrap(),
                    ..Default::default()
                },
                &BasicProperties::default(),
                Bytes::from(format!("m{i}")),
            )
            .unwrap();
    }
    for i in 0..n {
        let Event::Message { message, .. } = c.until(|e| matches!(e, Event::Message { .. })) else {
            unreachable!()
        };
        assert_eq!(
            message.body,
            Bytes::from(format!("m{i}")),
            "in order, none lost"
        );
    }
    c.conn.close(ReplyCode::REPLY_SUCCESS, "bye").unwrap();
    c.until(|e| matches!(e, Event::Closed { .. }));
    start.elapsed()
}

#[test]
fn hostile_clients_do_not_hurt_a_well_behaved_one() {
    let broker = support::Broker::start(5750..5760, &[]);
    let addr = broker.addr;
    let alone = good_round(addr, "good-alone", 200);

    // Garbage after a valid protocol header, and garbage instead of one.
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    garbage.write_all(&[0xde; 4096]).unwrap();
    let mut http = TcpStream::connect(addr).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // A client that vanishes in the middle of a frame.
    {
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"AMQP\x00\x00\x09\x01\x01\x00\x00\x00\x00\x01")
            .unwrap();
    }
    // A slowloris: the protocol header, one byte at a time, in the
    // background.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        for b in b"AMQP\x00\x00\x09\x01" {
            if s.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // A consumer that never reads while a publisher floods its queue.
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
    // 32 MB queued for a consumer that reads nothing: the good client
    // still gets every message.
    let with = good_round(addr, "good-with-abusers", 200);
    eprintln!("good round alone {alone:?}, with abusers {with:?}");

    // The garbage connections were closed by the broker.
    for mut s in [garbage, http] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    slow.join().unwrap();
    drop(stuck);
    drop(flooder);
    assert!(
        broker.terminate().is_some_and(|s| s.success()),
        "the broker exits cleanly on SIGTERM after all this"
    );
}
