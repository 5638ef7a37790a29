//! `--log-format json`: every line on stderr is a JSON object, and a
//! connection's life is logged with who and why: accepted (peer),
//! authenticated into a vhost (user, vhost), left the vhost, closed
//! (cause). Refused logins (wrong password, unknown user, a mechanism not
//! offered, a vhost the user may not open) get one line each naming peer,
//! user, mechanism and reason, in text and in JSON.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn json_logs_say_who_connected_and_why_they_left() {
    let port = (5735..5740)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port");
    let dir = std::env::temp_dir().join(format!("amqp-broker-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = dir.with_extension("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_amqp-broker"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--management",
            "none",
            "--prometheus",
            "none",
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = support::Client::connect(addr);
    c.conn
        .close(amqp_codec::types::ReplyCode::REPLY_SUCCESS, "done")
        .unwrap();
    c.until(|e| matches!(e, amqp_codec::Event::Closed { .. }));
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |msg: &str| {
        lines
            .iter()
            .find(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(msg))
            })
            .unwrap_or_else(|| panic!("no {msg:?} line in {text}"))
    };
    assert!(find("connection accepted")["fields"]["peer"].is_string());
    let auth = find("user authenticated");
    assert_eq!(auth["fields"]["user"], "guest");
    assert_eq!(auth["fields"]["vhost"], "/");
    assert_eq!(find("connection left the vhost")["fields"]["user"], "guest");
    // (Connection 1 was the port probe.)
    let closed = lines
        .iter()
        .find(|l| {
            l["fields"]["conn"] == auth["fields"]["conn"]
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("connection closed"))
        })
        .expect("the client's close is logged");
    assert!(
        closed["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("done"),
        "the close says why: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
}

/// Starts the broker with `--log-format format` and a config with users
/// guest (all of `/`) and alice (no permissions); runs `attempts` against
/// it; returns its log.
fn broker_log(
    format: &str,
    ports: std::ops::Range<u16>,
    attempts: impl FnOnce(std::net::SocketAddr),
) -> String {
    let port = support::free_ports(ports, 1)[0];
    let dir = std::env::temp_dir().join(format!(
        "amqp-broker-refused-{format}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("broker.toml");
    std::fs::write(
        &config,
        "[[users]]\nname = \"guest\"\npassword = \"guest\"\n[[users]]\nname = \"alice\"\npassword = \"pw\"\n\
         [[permissions]]\nuser = \"guest\"\nvhost = \"/\"\nconfigure = \".*\"\nwrite = \".*\"\nread = \".*\"\n",
    )
    .unwrap();
    let log = dir.join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_amqp-broker"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--management", "none", "--prometheus", "none"])
        .args(["--log-format", format])
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the broker listens");
        std::thread::sleep(Duration::from_millis(20));
    }
    attempts(addr);
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    text
}

/// Drives a client until the broker closes it (at most 10 s).
fn refused(addr: std::net::SocketAddr, user: &str, password: &str, vhost: &str) {
    use amqp_codec::{ClientConfig, Connection, Credentials, Event};
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut c = Connection::client(
        ClientConfig {
            credentials: Credentials::plain(user, password),
            virtual_host: vhost.try_into().unwrap(),
            ..ClientConfig::default()
        },
        Instant::now(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    loop {
        assert!(Instant::now() < deadline, "the broker refuses {user}");
        while let Some(b) = c.poll_transmit() {
            let _ = sock.write_all(&b);
        }
        while let Some(e) = c.poll_event() {
            match e {
                Event::Closed { .. } => return,
                Event::Connected { .. } => panic!("{user} logged in to {vhost}"),
                _ => {}
            }
        }
        match sock.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => c.handle_input(bytes::Bytes::copy_from_slice(&buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        c.handle_timeout(Instant::now());
    }
}

/// A client that picks mechanism FOO, which the broker does not offer.
fn unknown_mechanism(addr: std::net::SocketAddr) {
    use amqp_codec::types::method::ConnectionStartOk;
    use amqp_codec::wire::Frame;
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut buf = vec![0u8; 65536];
    let _ = sock.read(&mut buf).unwrap();
    let mut out = bytes::BytesMut::new();
    Frame::method(
        0,
        ConnectionStartOk {
            mechanism: "FOO".try_into().unwrap(),
            response: "\0guest\0guest".into(),
            ..Default::default()
        },
    )
    .encode(&mut out)
    .unwrap();
    sock.write_all(&out).unwrap();
    // Read until the broker hangs up.
    while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
}

fn all_refusals(addr: std::net::SocketAddr) {
    refused(addr, "guest", "wrong", "/");
    refused(addr, "mallory", "pw", "/");
    unknown_mechanism(addr);
    refused(addr, "alice", "pw", "/");
    refused(addr, "guest", "guest", "no-such-vhost");
}

#[test]
fn refused_logins_are_logged_with_peer_user_mechanism_and_reason_in_json() {
    let text = broker_log("json", 5810..5815, all_refusals);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |msg: &str| {
        let found: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["fields"]["message"].as_str() == Some(msg))
            .collect();
        assert_eq!(found.len(), 1, "one {msg:?} line in {text}");
        found[0]["fields"].clone()
    };
    let peer = |f: &serde_json::Value| {
        assert!(
            f["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{f}"
        );
    };
    let f = find("PLAIN login refused: user 'guest' - invalid credentials");
    peer(&f);
    assert_eq!(
        (&f["user"], &f["mechanism"], &f["reason"]),
        (
            &"guest".into(),
            &"PLAIN".into(),
            &"invalid credentials".into()
        )
    );
    let f = find("PLAIN login refused: user 'mallory' - invalid credentials");
    peer(&f);
    assert_eq!(
        (&f["user"], &f["reason"]),
        (&"mallory".into(), &"no such user".into())
    );
    let f = find("unknown authentication mechanism 'FOO'");
    peer(&f);
    assert_eq!(
        (&f["mechanism"], &f["reason"]),
        (&"FOO".into(), &"mechanism not offered".into())
    );
    let f = find("vhost access refused: access to vhost '/' refused for user 'alice'");
    peer(&f);
    assert_eq!(
        (&f["user"], &f["mechanism"], &f["vhost"], &f["reason"]),
        (
            &"alice".into(),
            &"PLAIN".into(),
            &"/".into(),
            &"no permissions in the vhost".into()
        )
    );
    let f = find("vhost access refused: vhost no-such-vhost not found");
    peer(&f);
    assert_eq!(
        (&f["user"], &f["reason"]),
        (&"guest".into(), &"vhost not found".into())
    );
}

#[test]
fn refused_logins_are_logged_in_text() {
    let text = broker_log("text", 5815..5820, all_refusals);
    let line = |needle: &str| {
        let found: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(needle) && l.contains(" WARN "))
            .collect();
        assert_eq!(found.len(), 1, "one line with {needle:?} in {text}");
        found[0].to_owned()
    };
    for (message, fields) in [
        (
            "PLAIN login refused: user 'guest' - invalid credentials",
            &[
                "user=guest",
                "mechanism=PLAIN",
                "reason=\"invalid credentials\"",
            ][..],
        ),
        (
            "PLAIN login refused: user 'mallory' - invalid credentials",
            &["user=mallory", "reason=\"no such user\""][..],
        ),
        (
            "unknown authentication mechanism 'FOO'",
            &["mechanism=FOO", "reason=\"mechanism not offered\""][..],
        ),
        (
            "access to vhost '/' refused for user 'alice'",
            &[
                "user=alice",
                "mechanism=PLAIN",
                "vhost=/",
                "reason=\"no permissions in the vhost\"",
            ][..],
        ),
    ] {
        let l = line(message);
        assert!(l.contains("peer=127.0.0.1:"), "{l}");
        for f in fields {
            assert!(l.contains(f), "{f} in {l}");
        }
    }
}
