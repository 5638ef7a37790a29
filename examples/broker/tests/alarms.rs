//! Resource alarms: a publisher flooding a queue with no consumer pushes
//! the broker over a small memory high watermark; it gets
//! `connection.blocked` ("low on memory") and the broker stops reading it,
//! so the broker's memory stays near the watermark; a consumer on another
//! connection keeps draining; `connection.unblocked` follows and every
//! confirmed message arrives. A disk free limit above the disk's free
//! space blocks publishers from the start ("low on disk") while consumers
//! and other operations go on.

mod support;

use amqp_codec::Event;
use amqp_codec::types::Method;
use amqp_codec::types::method::*;
use std::time::{Duration, Instant};
use support::{Broker, Client, rss};

/// The client's events now, reading what its socket holds without waiting.
fn events_now(p: &mut Client) -> Vec<Event> {
    use std::io::{Read, Write};
    while let Some(b) = p.conn.poll_transmit() {
        p.sock.write_all(&b).unwrap();
    }
    let mut buf = [0u8; 16384];
    p.sock.set_nonblocking(true).unwrap();
    while let Ok(n) = p.sock.read(&mut buf) {
        if n == 0 {
            break;
        }
        p.conn
            .handle_input(bytes::Bytes::copy_from_slice(&buf[..n]));
    }
    p.sock.set_nonblocking(false).unwrap();
    let mut out: Vec<Event> = std::mem::take(&mut p.events);
    out.extend(std::iter::from_fn(|| p.conn.poll_event()));
    out
}

fn declare(c: &mut Client, q: &str) {
    let r = c.call(QueueDeclare {
        queue: q.try_into().unwrap(),
        ..Default::default()
    });
    assert!(matches!(r, Method::QueueDeclareOk(_)), "{r:?}");
}

#[test]
fn a_flooding_publisher_is_blocked_at_the_memory_watermark_and_unblocked_after_draining() {
    const WATERMARK: u64 = 80 << 20;
    // (Port ranges apart: the tests of this file run in parallel.)
    let broker = Broker::start(
        5760..5765,
        // (Without paging: queued bodies stay in memory, as in the
        // many-queues case paging does not bound.)
        &[
            "--vm-memory-high-watermark-absolute",
            "80MiB",
            "--no-paging",
        ],
    );
    let mut p = Client::connect(broker.addr);
    declare(&mut p, "flood");
    let _ = p.call(ConfirmSelect::default());
    let body = "x".repeat(4096);
    let (mut published, mut confirmed) = (0u64, 0u64);
    let mut blocked = None;
    // Batches of 500 with confirms until the broker blocks us.
    while blocked.is_none() {
        assert!(
            published < 200_000,
            "never blocked after {published} messages"
        );
        for _ in 0..500 {
            p.publish(1, "", "flood", &body);
        }
        published += 500;
        while blocked.is_none() && confirmed < published {
            match p.until(|e| matches!(e, Event::Confirm { .. } | Event::Blocked { .. })) {
                Event::Confirm {
                    delivery_tag, ack, ..
                } => {
                    assert!(ack);
                    confirmed = confirmed.max(delivery_tag);
                }
                Event::Blocked { reason } => blocked = Some(reason),
                _ => unreachable!(),
            }
        }
    }
    assert_eq!(blocked.unwrap().as_str(), Some("low on memory"));
    let at_block = rss(broker.pid());
    // The broker reads nothing more from us: its memory stays put.
    std::thread::sleep(Duration::from_millis(300));
    let later = rss(broker.pid());
    eprintln!(
        "blocked after {published} messages of 4 KiB: broker RSS {} MiB at the block, {} MiB later (watermark 80 MiB)",
        at_block >> 20,
        later >> 20
    );
    assert!(
        later < WATERMARK + (32 << 20),
        "RSS {} MiB is over the watermark plus 32 MiB",
        later >> 20
    );
    // A consumer on another connection drains; the publisher is unblocked.
    let mut c = Client::connect(broker.addr);
    c.call(BasicConsume {
        queue: "flood".try_into().unwrap(),
        no_ack: true,
        ..Default::default()
    });
    let mut received = 0u64;
    let started = Instant::now();
    let mut unblocked = false;
    while !unblocked {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not unblocked after {received} of {published} drained; RSS {} MiB",
            rss(broker.pid()) >> 20
        );
        for _ in 0..1000 {
            if received == published {
                std::thread::sleep(Duration::from_millis(20));
                break;
            }
            if let Event::Message { .. } = c.until(|e| matches!(e, Event::Message { .. })) {
                received += 1;
            }
        }
        for e in events_now(&mut p) {
            match e {
                Event::Unblocked => unblocked = true,
                Event::Confirm { delivery_tag, .. } => confirmed = confirmed.max(delivery_tag),
                _ => {}
            }
        }
    }
    // Everything published before the block is confirmed.
    while confirmed < published {
        if let Event::Confirm { delivery_tag, .. } = p.until(|e| matches!(e, Event::Confirm { .. }))
        {
            confirmed = confirmed.max(delivery_tag);
        }
    }
    while received < published {
        if let Event::Message { .. } = c.until(|e| matches!(e, Event::Message { .. })) {
            received += 1;
        }
    }
    assert_eq!(received, published, "every confirmed message arrived");
}

#[test]
fn a_disk_alarm_blocks_publishers_but_not_consumers() {
    let ports = support::free_ports(15730..15740, 2);
    let (api, metrics) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
    );
    let broker = Broker::start(
        5765..5770,
        &[
            "--disk-free-limit",
            "1000000TB",
            "--management",
            &api,
            "--prometheus",
            &metrics,
        ],
    );
    let mut c = Client::connect(broker.addr);
    declare(&mut c, "disk");
    // Give the monitor its first look at the disk.
    std::thread::sleep(Duration::from_millis(300));
    c.publish(1, "", "disk", "one");
    match c.until(|e| matches!(e, Event::Blocked { .. })) {
        Event::Blocked { reason } => assert_eq!(reason.as_str(), Some("low on disk")),
        _ => unreachable!(),
    }
    // Another connection that does not publish is served.
    let mut other = Client::connect(broker.addr);
    other
        .conn
        .send_method(
            1,
            BasicGet {
                queue: "disk".try_into().unwrap(),
                no_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    // The message published before the block is there.
    let Event::Message { message, .. } = other.until(|e| matches!(e, Event::Message { .. })) else {
        unreachable!()
    };
    assert_eq!(&message.body[..], b"one");
    let Method::QueueDeclareOk(ok) = other.call(QueueDeclare {
        queue: "disk".try_into().unwrap(),
        passive: true,
        ..Default::default()
    }) else {
        panic!("declare-ok")
    };
    assert_eq!(ok.message_count, 0);
    // The health check and the metrics say so, as RabbitMQ's do.
    let r = support::http(
        api.parse().unwrap(),
        "GET",
        "/api/health/checks/alarms",
        Some("guest:guest"),
        "",
    );
    assert_eq!(r.status, 503);
    let body = r.json();
    assert_eq!(body["status"], "failed");
    assert_eq!(body["alarms"][0]["resource"], "disk");
    let r = support::http(metrics.parse().unwrap(), "GET", "/metrics", None, "");
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains("rabbitmq_alarms_free_disk_space_watermark 1"),
        "{text}"
    );
    assert!(text.contains("rabbitmq_alarms_memory_used_watermark 0"));
}
