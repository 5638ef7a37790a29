//! The client role against a real RabbitMQ on 127.0.0.1:5672 (guest/guest),
//! over tokio. Skips (saying so) only when `AMQP_INTEROP=0`; a missing
//! broker fails.

use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, Method, ReplyCode};
use amqp_codec::{ClientConfig, CloseCause, Connection, Event, Initiator};
use bytes::Bytes;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Driver {
    conn: Connection,
    tcp: TcpStream,
    events: Vec<Event>,
}

impl Driver {
    /// Runs I/O and timers until `done` holds for the events seen so far
    /// (bounded by `limit`).
    async fn until(&mut self, limit: Duration, mut done: impl FnMut(&[Event]) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut buf = vec![0u8; 65536];
        loop {
            while let Some(b) = self.conn.poll_transmit() {
                self.tcp.write_all(&b).await.unwrap();
            }
            while let Some(e) = self.conn.poll_event() {
                if let Event::ProtocolError(e) = &e {
                    panic!("protocol error: {e}");
                }
                self.events.push(e);
            }
            if done(&self.events) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out; events: {:?}",
                self.events
            );
            let wake = self
                .conn
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or(deadline)
                .min(deadline);
            tokio::select! {
                r = self.tcp.read(&mut buf) => {
                    let n = r.unwrap();
                    if n == 0 { self.conn.handle_eof(); } else { self.conn.handle_input(Bytes::copy_from_slice(&buf[..n])); }
                }
                _ = tokio::time::sleep_until(wake) => self.conn.handle_timeout(Instant::now()),
            }
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn client_role_against_rabbitmq() {
    if std::env::var("AMQP_INTEROP").as_deref() == Ok("0") {
        eprintln!("skipped: AMQP_INTEROP=0");
        return;
    }
    let tcp = TcpStream::connect("127.0.0.1:5672")
        .await
        .expect("RabbitMQ must listen on 127.0.0.1:5672 (set AMQP_INTEROP=0 to skip)");
    let cfg = ClientConfig {
        heartbeat: Some(1),
        ..Default::default()
    };
    let mut d = Driver {
        conn: Connection::client(cfg, Instant::now()),
        tcp,
        events: vec![],
    };
    d.until(Duration::from_secs(10), |e| {
        e.iter().any(|e| matches!(e, Event::Connected { .. }))
    })
    .await;
    assert_eq!(d.conn.tuning().heartbeat, 1);

    let ch = d.conn.open_channel().unwrap();
    d.until(Duration::from_secs(5), |e| {
        e.iter().any(|e| matches!(e, Event::ChannelOpened { .. }))
    })
    .await;
    let q = format!("amqp-codec-interop-{}", std::process::id());
    let qs = q.as_str().try_into().unwrap();
    d.conn
        .send_method(ch, ConfirmSelect { nowait: false })
        .unwrap();
    d.conn
        .send_method(
            ch,
            QueueDeclare {
                queue: q.as_str().try_into().unwrap(),
                auto_delete: true,
                ..Default::default()
            },
        )
        .unwrap();
    d.conn
        .send_method(
            ch,
            BasicQos {
                prefetch_count: 1,
                ..Default::default()
            },
        )
        .unwrap();
    let n = 20u64;
    for i in 0..n {
        let body = Bytes::from(vec![i as u8; (i as usize) * 3000]);
        let props = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        d.conn
            .publish(
                ch,
                BasicPublish {
                    routing_key: q.as_str().try_into().unwrap(),
                    ..Default::default()
                },
                &props,
                body,
            )
            .unwrap();
    }
    d.until(Duration::from_secs(10), |e| {
        e.iter()
            .filter_map(|e| match e {
                Event::Confirm {
                    ack: true, settled, ..
                } => Some(settled.len() as u64),
                _ => None,
            })
            .sum::<u64>()
            == n
    })
    .await;
    assert_eq!(d.conn.unconfirmed(ch), 0);

    d.conn
        .send_method(
            ch,
            BasicConsume {
                queue: qs,
                ..Default::default()
            },
        )
        .unwrap();
    let mut got = 0u64;
    d.events.clear();
    while got < n {
        d.until(Duration::from_secs(10), |e| {
            e.iter().any(|e| matches!(e, Event::Message { .. }))
        })
        .await;
        let ev = std::mem::take(&mut d.events);
        for e in ev {
            if let Event::Message { message, .. } = e {
                let Method::BasicDeliver(dl) = &message.method else {
                    panic!()
                };
                assert_eq!(message.body.len() as u64, got * 3000);
                assert!(message.body.iter().all(|b| *b == got as u8));
                got += 1;
                // prefetch 1: the next delivery comes only after this ack
                d.conn.ack(ch, dl.delivery_tag, false).unwrap();
            }
        }
    }

    // Idle for 3.5 s with heartbeat 1 s, then a synchronous method.
    let idle_until = Instant::now() + Duration::from_millis(3500);
    d.until(Duration::from_secs(6), |_| Instant::now() >= idle_until)
        .await;
    assert!(d.conn.is_open());
    d.events.clear();
    d.conn
        .send_method(
            ch,
            QueueDeclare {
                queue: q.as_str().try_into().unwrap(),
                passive: true,
                ..Default::default()
            },
        )
        .unwrap();
    d.until(Duration::from_secs(5), |e| {
        e.iter().any(|e| {
            matches!(
                e,
                Event::Method {
                    method: Method::QueueDeclareOk(_),
                    ..
                }
            )
        })
    })
    .await;

    d.conn.close(ReplyCode::REPLY_SUCCESS, "bye").unwrap();
    d.until(Duration::from_secs(5), |e| {
        e.iter().any(|e| matches!(e, Event::Closed { .. }))
    })
    .await;
    assert!(d.events.iter().any(|e| matches!(
        e,
        Event::Closed {
            cause: CloseCause::Closed {
                initiator: Initiator::Local,
                ..
            }
        }
    )));
}
