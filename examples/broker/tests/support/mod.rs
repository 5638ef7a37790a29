//! What the broker's integration tests share: a broker process on a free
//! loopback port, and whether the interop services are wanted.

#![allow(dead_code)]

use amqp_codec::types::Method;
use amqp_codec::{ClientConfig, Connection, Event};
use bytes::Bytes;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An amqp-broker process, killed when dropped.
pub struct Broker {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
}

impl Broker {
    /// Starts the broker binary of this build on a free port in
    /// `ports` (never RabbitMQ's 5672) and waits until it accepts
    /// connections (at most 10 s).
    pub fn start(ports: std::ops::Range<u16>, extra: &[&str]) -> Broker {
        let port = ports
            .clone()
            .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .unwrap_or_else(|| panic!("no free port in {ports:?}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_amqp-broker"));
        cmd.arg("--listen").arg(addr.to_string()).args(extra);
        if !extra.contains(&"--data-dir") {
            // A fresh data directory per broker (tests run in parallel).
            let dir = std::env::temp_dir().join(format!(
                "amqp-broker-test-{}-{port}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            cmd.arg("--data-dir").arg(dir);
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("AMQP_BROKER_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("start amqp-broker");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "amqp-broker did not listen on {addr} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { addr, child }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `amqp://guest:guest@ADDR/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub fn terminate(mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the interop tests run (`AMQP_INTEROP=0` skips them, saying so).
pub fn interop(test: &str) -> bool {
    if std::env::var("AMQP_INTEROP").is_ok_and(|v| v == "0") {
        eprintln!("{test}: AMQP_INTEROP=0, skipped");
        return false;
    }
    true
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A blocking client on amqp-codec's client role.
pub struct Client {
    /// The connection.
    pub conn: Connection,
    /// The socket.
    pub sock: TcpStream,
    /// Events seen while waiting for others.
    pub events: Vec<Event>,
}

impl Client {
    /// Connects as guest and opens channel 1.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::connect_with(addr, ClientConfig::default())
    }

    /// Connects with this configuration and opens channel 1.
    pub fn connect_with(addr: SocketAddr, config: ClientConfig) -> Client {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut c = Client {
            conn: Connection::client(config, Instant::now()),
            sock,
            events: Vec::new(),
        };
        c.until(|e| matches!(e, Event::Connected { .. }));
        c.conn.open_channel_with(1).unwrap();
        c.until(|e| matches!(e, Event::ChannelOpened { .. }));
        c
    }

    /// Moves bytes until an event matches (at most 10 s).
    pub fn until(&mut self, mut f: impl FnMut(&Event) -> bool) -> Event {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Some(b) = self.conn.poll_transmit() {
                self.sock.write_all(&b).expect("write");
            }
            while let Some(e) = self.conn.poll_event() {
                if f(&e) {
                    return e;
                }
                self.events.push(e);
            }
            assert!(
                Instant::now() < deadline,
                "timed out; events: {:?}",
                self.events
            );
            match self.sock.read(&mut buf) {
                Ok(0) => panic!("the broker closed the connection"),
                Ok(n) => self.conn.handle_input(Bytes::copy_from_slice(&buf[..n])),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read: {e}"),
            }
            self.conn.handle_timeout(Instant::now());
        }
    }

    /// Connects as guest and opens these channels (1 always).
    pub fn connect_on(addr: SocketAddr, channels: &[u16]) -> Client {
        let mut c = Client::connect(addr);
        for &ch in channels.iter().filter(|&&ch| ch != 1) {
            c.conn.open_channel_with(ch).unwrap();
            c.until(|e| matches!(e, Event::ChannelOpened { channel } if *channel == ch));
        }
        c
    }

    /// Sends a method on channel `ch` and waits for a method back on it.
    pub fn call_on(&mut self, ch: u16, m: impl Into<Method>) -> Method {
        self.conn.send_method(ch, m).unwrap();
        match self.until(|e| matches!(e, Event::Method { channel, .. } if *channel == ch)) {
            Event::Method { method, .. } => method,
            _ => unreachable!(),
        }
    }

    /// Publishes a text body (no properties) on channel `ch`.
    pub fn publish(&mut self, ch: u16, exchange: &str, key: &str, body: &str) {
        self.conn
            .publish(
                ch,
                amqp_codec::types::method::BasicPublish {
                    exchange: exchange.try_into().unwrap(),
                    routing_key: key.try_into().unwrap(),
                    ..Default::default()
                },
                &amqp_codec::types::BasicProperties::default(),
                Bytes::from(body.to_owned()),
            )
            .unwrap();
    }

    /// Sends a method on channel 1 and waits for a method back.
    pub fn call(&mut self, m: impl Into<Method>) -> Method {
        self.conn.send_method(1, m).unwrap();
        match self.until(|e| matches!(e, Event::Method { .. })) {
            Event::Method { method, .. } => method,
            _ => unreachable!(),
        }
    }
}
