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
        let ports = port_range(ports);
        // (A range of one port was chosen by the caller, maybe with
        // free_ports: only check it is free.)
        let port = ports
            .clone()
            .find(|p| {
                if ports.len() == 1 {
                    TcpListener::bind(("127.0.0.1", *p)).is_ok()
                } else {
                    claim(*p)
                }
            })
            .unwrap_or_else(|| panic!("no free port in {ports:?}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_amqp-broker"));
        cmd.arg("--listen").arg(addr.to_string()).args(extra);
        // No HTTP listener on the default ports unless asked for (they
        // are RabbitMQ's, and parallel brokers would fight over them).
        for flag in ["--management", "--prometheus"] {
            if !extra.contains(&flag) {
                cmd.arg(flag).arg("none");
            }
        }
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
        let mut child = child;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "amqp-broker did not listen on {addr} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The HTTP listeners asked for are bound after the AMQP one: wait
        // for them too, or a test's first request may find none.
        for flag in ["--management", "--prometheus"] {
            let Some(http) = extra
                .iter()
                .position(|a| *a == flag)
                .and_then(|i| extra.get(i + 1))
                .and_then(|a| a.parse::<SocketAddr>().ok())
            else {
                continue;
            };
            while TcpStream::connect(http).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "amqp-broker did not listen on {http} ({flag}) within 10 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // What answers must be this broker, not a process of another test
        // run that took the port meanwhile.
        if let Ok(Some(status)) = child.try_wait() {
            panic!("amqp-broker exited ({status}) and something else listens on {addr}");
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

/// An HTTP response.
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A blocking HTTP/1.1 request (basic auth `user:password` when given).
pub fn http(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>, body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect to HTTP");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    if let Some(a) = auth {
        use base64::Engine as _;
        let enc = base64::engine::general_purpose::STANDARD.encode(a);
        req.push_str(&format!("Authorization: Basic {enc}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[eol + 4 + n..];
        }
        body = out;
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// The ports a test asks for, or — when `AMQP_TEST_PORTS` is set (say
/// `5790-5799,15760-15769`, for test runs sharing a machine) — the range
/// given there of the same kind: the first for AMQP (ports below 10000),
/// the second for HTTP.
pub fn port_range(range: std::ops::Range<u16>) -> std::ops::Range<u16> {
    let Ok(v) = std::env::var("AMQP_TEST_PORTS") else {
        return range;
    };
    let parse = |r: &str| -> Option<std::ops::Range<u16>> {
        let (a, b) = r.trim().split_once('-')?;
        Some(a.parse().ok()?..b.parse::<u16>().ok()?.checked_add(1)?)
    };
    let ranges: Vec<std::ops::Range<u16>> = v.split(',').filter_map(parse).collect();
    let kind = usize::from(range.start >= 10000);
    ranges.get(kind).cloned().unwrap_or(range)
}

/// Whether port `p` is free on loopback now and was not handed out to
/// another test of this process before (the tests of one file run in
/// parallel: two of them must never pick the same port, the second then
/// talking to the first's broker).
///
/// A claim lasts as long as the process. Checking a claimed port again by
/// binding it would race with the broker it was handed to: while the
/// check holds the port, that broker's own bind fails, and the test's
/// wait-for-listen connects to the check's socket instead, which resets
/// it (CI, stop 16: `definitions` saw "connection reset by peer").
fn claim(p: u16) -> bool {
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    if taken.contains(&p) || TcpListener::bind(("127.0.0.1", p)).is_err() {
        return false;
    }
    taken.push(p);
    true
}

/// `n` ports of `range` free on loopback now (and not handed out before
/// in this process).
pub fn free_ports(range: std::ops::Range<u16>, n: usize) -> Vec<u16> {
    let range = port_range(range);
    let ports: Vec<u16> = range.clone().filter(|p| claim(*p)).take(n).collect();
    assert_eq!(ports.len(), n, "{n} free ports in {range:?}");
    ports
}

/// The resident set of process `pid`, bytes (`/proc/PID/status`).
pub fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}
