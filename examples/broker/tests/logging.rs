//! `--log-format json`: every line on stderr is a JSON object, and a
//! connection's life is logged with who and why: accepted (peer),
//! authenticated into a vhost (user, vhost), left the vhost, closed
//! (cause).

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
