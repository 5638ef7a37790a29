//! The server role against a real client: pika (Python) runs the seed
//! producer/consumer (`tests/data/pika_seed.py`) against a tokio TCP
//! listener on 127.0.0.1 driven by `Connection::server`, with every reply
//! produced through the server role's API by the test's `MiniBroker`.
//!
//! Skips (saying so) only when `AMQP_INTEROP=0`; a missing python3 or pika
//! fails. The whole exchange is bounded (30 s), after which pika is killed.

mod common;

use amqp_codec::types::{Method, ShortString};
use amqp_codec::{CloseCause, Connection, Event, Initiator, ServerConfig};
use bytes::Bytes;
use common::MiniBroker;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

const LIMIT: Duration = Duration::from_secs(30);

/// Drives the server role over `tcp` until the connection is closed and
/// the peer has dropped the socket (or has been answered and gone).
async fn serve(tcp: &mut TcpStream, conn: &mut Connection, broker: &mut MiniBroker) {
    let mut buf = vec![0u8; 65536];
    let mut eof = false;
    loop {
        broker.handle(conn);
        while let Some(b) = conn.poll_transmit() {
            // pika may drop the socket right after close-ok; a write error
            // then is not the test's concern.
            if tcp.write_all(&b).await.is_err() {
                eof = true;
            }
        }
        if conn.is_closed() && (eof || conn.bytes_queued() == 0) {
            // Let pika read close-ok and hang up; it exits on its own.
            let _ = tcp.shutdown().await;
            return;
        }
        if eof {
            conn.handle_eof();
            continue;
        }
        let wake = conn
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + LIMIT);
        tokio::select! {
            r = tcp.read(&mut buf) => match r {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => conn.handle_input(Bytes::copy_from_slice(&buf[..n])),
            },
            _ = tokio::time::sleep_until(wake) => conn.handle_timeout(Instant::now()),
        }
    }
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

#[tokio::test(flavor = "current_thread")]
async fn server_role_against_pika_seed() {
    if std::env::var("AMQP_INTEROP").as_deref() == Ok("0") {
        eprintln!("skipped: AMQP_INTEROP=0");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pika_seed.py");
    let mut child = Command::new(python())
        .arg(script)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} (needed with pika): {e}", python()));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s).await;
        s
    });
    let err = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });

    let mut broker = MiniBroker::default();
    let mut conn = Connection::server(ServerConfig::default(), Instant::now());
    let session = async {
        let mut tcp = tokio::select! {
            r = listener.accept() => r.expect("accept").0,
            st = child.wait() => {
                return Err(format!("pika exited before connecting: {st:?}"));
            }
        };
        serve(&mut tcp, &mut conn, &mut broker).await;
        drop(tcp);
        let st = child.wait().await.map_err(|e| e.to_string())?;
        Ok(st)
    };
    let result = tokio::time::timeout(LIMIT, session).await;
    // On timeout or early exit, make sure the child is gone before reading
    // its output.
    let _ = child.start_kill();
    let _ = child.wait().await;
    let stdout = out.await.unwrap();
    let stderr = err.await.unwrap();
    let diag = || {
        format!(
            "\n--- pika stdout ---\n{stdout}--- pika stderr ---\n{stderr}--- events ---\n{:#?}",
            broker.events
        )
    };
    let status = match result {
        Err(_) => panic!("timed out after {LIMIT:?}; pika killed{}", diag()),
        Ok(Err(e)) => panic!("{e}{}", diag()),
        Ok(Ok(st)) => st,
    };
    assert!(status.success(), "pika exited with {status}{}", diag());

    // What pika printed.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "connected",
            "declared seed.q",
            "received hello from the pika seed tag=1 content_type=text/plain delivery_mode=2 x-seed=42",
            "closed",
        ],
        "{}",
        diag()
    );

    // What the handler saw, in order.
    let ev = &broker.events;
    assert!(
        matches!(&ev[0], Event::Decision { .. }),
        "authentication first{}",
        diag()
    );
    let connected = ev
        .iter()
        .find_map(|e| match e {
            Event::Connected {
                peer_capabilities, ..
            } => Some(*peer_capabilities),
            _ => None,
        })
        .expect("connected");
    assert!(connected.authentication_failure_close && connected.basic_nack);

    let methods: Vec<&Method> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Method { channel: 1, method } => Some(method),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = methods.iter().map(|m| m.name()).collect();
    assert_eq!(
        names,
        [
            "exchange.declare",
            "queue.declare",
            "queue.bind",
            "basic.qos",
            "basic.consume",
            "basic.ack",
            "basic.cancel",
            "queue.delete",
            "exchange.delete",
        ],
        "{}",
        diag()
    );
    let Method::ExchangeDeclare(x) = methods[0] else {
        unreachable!()
    };
    assert!(x.durable && x.kind == ShortString::from_static("direct"));
    let Method::QueueDeclare(q) = methods[1] else {
        unreachable!()
    };
    assert_eq!(q.queue, ShortString::from_static("seed.q"));
    assert!(q.durable && !q.auto_delete && !q.exclusive && !q.nowait);
    let Method::BasicQos(qos) = methods[3] else {
        unreachable!()
    };
    assert_eq!((qos.prefetch_count, qos.prefetch_size), (1, 0));
    assert!(!qos.global);
    let Method::BasicConsume(c) = methods[4] else {
        unreachable!()
    };
    assert_eq!(c.consumer_tag, ShortString::from_static("seed-consumer"));
    assert!(!c.no_ack);
    let Method::BasicAck(a) = methods[5] else {
        unreachable!()
    };
    assert_eq!((a.delivery_tag, a.multiple), (1, false));
    assert_eq!(broker.acks_received, 1);

    // The published message, assembled by the server role.
    let msgs: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Message {
                channel: 1,
                message,
                seqno,
            } => Some((message, *seqno)),
            _ => None,
        })
        .collect();
    assert_eq!(msgs.len(), 1, "{}", diag());
    let (m, seqno) = msgs[0];
    assert_eq!(seqno, None, "no confirm mode");
    let Method::BasicPublish(p) = &m.method else {
        panic!("{:?}", m.method)
    };
    assert_eq!(p.exchange, ShortString::from_static("seed.direct"));
    assert_eq!(p.routing_key, ShortString::from_static("seed"));
    assert_eq!(&m.body[..], b"hello from the pika seed");
    assert_eq!(m.properties.delivery_mode, Some(2));
    assert_eq!(
        m.properties.content_type,
        Some(ShortString::from_static("text/plain"))
    );
    let headers = m.properties.headers.as_ref().expect("headers");
    assert!(
        headers
            .get("x-seed")
            .is_some_and(|v| format!("{v:?}").contains("42")),
        "{headers:?}"
    );

    // Clean close: pika's channel.close and connection.close, answered.
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::ChannelClosed {
            channel: 1,
            initiator: Initiator::Peer,
            ..
        }
    )));
    match ev.last() {
        Some(Event::Closed {
            cause: CloseCause::Closed { initiator, reason },
        }) => {
            assert_eq!(*initiator, Initiator::Peer);
            assert_eq!(reason.code.0, 200);
        }
        other => panic!("last event {other:?}{}", diag()),
    }
    assert!(!ev.iter().any(|e| matches!(e, Event::ProtocolError(_))));
    eprintln!(
        "pika seed: {} events, {} frames' worth of replies produced by the server role",
        ev.len(),
        methods.len()
    );
}
