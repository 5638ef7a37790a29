//! `amqp-client list/purge/export/import` against our broker's management
//! API (a broker process started here, AMQP on a port in 5795-5799 and the
//! API on one in 15765-15769), and `list` against the interop RabbitMQ's
//! management API on 127.0.0.1:15672 (guest/guest), skipped (saying so)
//! only when `AMQP_INTEROP=0`.
//!
//! The broker binary is the workspace's `amqp-broker`, found beside this
//! build's `amqp-client` (the same target directory and profile), which
//! `cargo test --workspace` builds; run alone (`cargo test -p
//! amqp-examples`), the test builds it first with `cargo build -p
//! amqp-broker`. `AMQP_BROKER_BIN` names another binary.

use serde_json::Value;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The amqp-broker binary of this build (built if missing).
fn broker_binary() -> PathBuf {
    if let Ok(p) = std::env::var("AMQP_BROKER_BIN") {
        return PathBuf::from(p);
    }
    let client = PathBuf::from(env!("CARGO_BIN_EXE_amqp-client"));
    let bin = client.with_file_name(format!("amqp-broker{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        // target/<profile>/amqp-client: build the broker into the same
        // target directory.
        let target = client
            .parent()
            .and_then(|p| p.parent())
            .expect("target directory");
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "amqp-broker", "--bin", "amqp-broker"])
            .env("CARGO_TARGET_DIR", target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p amqp-broker");
        assert!(status.success(), "cargo build -p amqp-broker failed");
    }
    assert!(
        bin.exists(),
        "{} missing: cargo build -p amqp-broker",
        bin.display()
    );
    bin
}

fn free_port(ports: std::ops::RangeInclusive<u16>) -> u16 {
    ports
        .clone()
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap_or_else(|| panic!("no free port in {ports:?}"))
}

/// Our broker with its management API, killed when dropped.
struct Broker {
    amqp: u16,
    http: u16,
    child: Child,
    dir: PathBuf,
}

impl Broker {
    fn start() -> Broker {
        let amqp = free_port(5795..=5799);
        let http = free_port(15765..=15769);
        let dir = std::env::temp_dir().join(format!(
            "amqp-client-api-test-{}-{amqp}",
            std::process::id()
        ));
        let child = Command::new(broker_binary())
            .arg("--listen")
            .arg(format!("127.0.0.1:{amqp}"))
            .arg("--management")
            .arg(format!("127.0.0.1:{http}"))
            .args(["--prometheus", "none", "--data-dir"])
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start amqp-broker");
        let b = Broker {
            amqp,
            http,
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", amqp)).is_err()
            || TcpStream::connect(("127.0.0.1", http)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "amqp-broker did not listen on {amqp} and {http} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    fn client(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_amqp-client"))
            .arg("--uri")
            .arg(format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp))
            .arg("--api")
            .arg(format!("http://127.0.0.1:{}", self.http))
            .args(args)
            .output()
            .expect("run amqp-client")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// `list queues --format json`, polled until `pred` holds (the API's
    /// counts may lag a moment behind the AMQP side).
    fn queues_until(&self, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v: Value =
                serde_json::from_str(&self.ok(&["list", "queues", "--format", "json"])).unwrap();
            let rows = v.as_array().expect("a JSON array").clone();
            if pred(&rows) || Instant::now() > deadline {
                return rows;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn queue<'a>(rows: &'a [Value], name: &str) -> Option<&'a Value> {
    rows.iter().find(|q| q["name"] == name)
}

/// The words of each line of a table.
fn words(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// The words of one line.
fn cols(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn list_purge_export_import_against_our_broker() {
    let b = Broker::start();
    b.ok(&["declare", "--queue", "orders"]);
    b.ok(&["declare", "--exchange", "shop", "--type", "direct"]);
    b.ok(&[
        "bind",
        "--exchange",
        "shop",
        "--queue",
        "orders",
        "--routing-key",
        "new",
    ]);
    assert_eq!(
        b.ok(&[
            "publish",
            "--exchange",
            "shop",
            "--routing-key",
            "new",
            "--count",
            "3",
            "o"
        ]),
        "published 3\n"
    );
    let rows = b.queues_until(|r| queue(r, "orders").is_some_and(|q| q["messages"] == 3));

    // --format json: the API's objects.
    let q = queue(&rows, "orders").expect("orders listed");
    assert_eq!(q["vhost"], "/");
    assert_eq!(q["messages"], 3, "{q}");
    assert_eq!(q["messages_ready"], 3, "{q}");
    assert_eq!(q["messages_unacknowledged"], 0, "{q}");
    assert_eq!(q["consumers"], 0, "{q}");
    assert!(q.get("durable").is_some(), "the whole object: {q}");

    // The table: a header of rabbitmqadmin's columns, aligned rows.
    let table = b.ok(&["list", "queues"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        cols(lines[0]),
        [
            "vhost",
            "name",
            "type",
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "consumers"
        ],
        "{table}"
    );
    let row = lines
        .iter()
        .find(|l| l.split_whitespace().nth(1) == Some("orders"))
        .unwrap_or_else(|| panic!("no orders row: {table}"));
    assert_eq!(
        cols(row),
        ["/", "orders", "classic", "3", "3", "0", "0"],
        "{table}"
    );
    // Aligned: the number ends under the end of its header.
    let end = lines[0].find("messages ").unwrap() + "messages".len();
    assert_eq!(&row[end - 1..end], "3", "{table}");
    assert!(table.lines().all(|l| !l.ends_with(' ')), "{table}");

    // --columns, in a table and in JSON.
    assert_eq!(
        words(&b.ok(&["list", "queues", "--columns", "name,messages"])),
        [vec!["name", "messages"], vec!["orders", "3"]]
    );
    let v: Value = serde_json::from_str(&b.ok(&[
        "list",
        "queues",
        "--vhost",
        "/",
        "--format",
        "json",
        "--columns",
        "name,messages_ready",
    ]))
    .unwrap();
    assert_eq!(
        v,
        serde_json::json!([{"name": "orders", "messages_ready": 3}])
    );

    // Bindings and exchanges.
    let t = b.ok(&["list", "bindings"]);
    let w = words(&t);
    assert_eq!(
        w[0],
        [
            "vhost",
            "source",
            "destination",
            "destination_type",
            "routing_key"
        ]
    );
    assert!(
        w.contains(&vec!["/", "shop", "orders", "queue", "new"]),
        "{t}"
    );
    let t = b.ok(&["list", "exchanges"]);
    assert!(
        words(&t).contains(&vec!["/", "shop", "direct", "false", "false", "false"]),
        "{t}"
    );
    let v: Value = serde_json::from_str(&b.ok(&["list", "vhosts", "--format", "json"])).unwrap();
    assert_eq!(v[0]["name"], "/");
    assert!(words(&b.ok(&["list", "users"])).contains(&vec!["guest", "administrator"]));

    // export: to stdout, and to a file.
    let defs: Value = serde_json::from_str(&b.ok(&["export"])).unwrap();
    let queues = defs["queues"].as_array().unwrap();
    assert!(queues.iter().any(|q| q["name"] == "orders"), "{defs}");
    let file = b.dir.with_extension("defs.json");
    let out = b.ok(&["export", file.to_str().unwrap()]);
    assert!(out.starts_with("exported 1 queues, "), "{out}");
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(saved["queues"], defs["queues"]);

    // import: a small definitions file creates a queue.
    std::fs::write(
        &file,
        r#"{"queues": [{"name": "imported", "vhost": "/", "durable": true,
             "auto_delete": false, "arguments": {}}]}"#,
    )
    .unwrap();
    let out = b.ok(&["import", file.to_str().unwrap()]);
    assert_eq!(out, format!("imported {}\n", file.display()));
    let _ = std::fs::remove_file(&file);
    let rows = b.queues_until(|r| queue(r, "imported").is_some());
    assert_eq!(queue(&rows, "imported").expect("imported")["durable"], true);

    // purge empties the queue.
    assert_eq!(b.ok(&["purge", "--queue", "orders"]), "purged orders\n");
    let rows = b.queues_until(|r| queue(r, "orders").is_some_and(|q| q["messages"] == 0));
    assert_eq!(queue(&rows, "orders").unwrap()["messages"], 0);

    // Errors: status, RabbitMQ's reason, advice, exit status 1.
    let out = b.client(&["list", "queues", "--vhost", "no-such-vhost"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("amqp-client: GET /api/queues/no-such-vhost: HTTP 404 "),
        "{err}"
    );
    assert!(err.contains("Not Found"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    let out = b.client(&["list", "queues", "--password", "wrong"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(err.contains("check --user/--password"), "{err}");
    let out = b.client(&["purge", "--queue", "no-such-queue"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 404"));
}

#[test]
fn unreachable_api_is_explained() {
    // A port in our range with nothing listening.
    let port = free_port(15765..=15769);
    let out = Command::new(env!("CARGO_BIN_EXE_amqp-client"))
        .args([
            "--api",
            &format!("http://127.0.0.1:{port}"),
            "list",
            "queues",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "amqp-client: cannot reach the management API at http://127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert!(err.contains("is --api pointing at it?"), "{err}");
}

#[test]
fn help_names_the_api_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_amqp-client"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for word in [
        "list",
        "purge",
        "export",
        "import",
        "--api",
        "--columns",
        "--vhost",
    ] {
        assert!(text.contains(word), "{word} missing from --help");
    }
    assert!(
        text.contains("queues       vhost name type messages messages_ready"),
        "{text}"
    );
}

#[test]
fn list_against_rabbitmq() {
    if std::env::var("AMQP_INTEROP").as_deref() == Ok("0") {
        eprintln!("skipped: AMQP_INTEROP=0");
        return;
    }
    let q = format!("amqp-client-api-test-{}", std::process::id());
    let client = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_amqp-client"))
            .args(["--uri", "amqp://guest:guest@127.0.0.1:5672/%2f"])
            .args(["--api", "http://127.0.0.1:15672", "--timeout", "15"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    client(&["declare", "--queue", &q]);
    // Deletes the queue however the test ends.
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new(env!("CARGO_BIN_EXE_amqp-client"))
                .args(["--uri", "amqp://guest:guest@127.0.0.1:5672/%2f"])
                .args(["delete", "--queue", &self.0])
                .output();
        }
    }
    let _cleanup = Cleanup(q.clone());
    client(&[
        "publish",
        "--exchange",
        "",
        "--routing-key",
        &q,
        "--count",
        "2",
        "x",
    ]);
    // RabbitMQ's queue counts come from its stats, which lag.
    let deadline = Instant::now() + Duration::from_secs(15);
    let row = loop {
        let v: Value =
            serde_json::from_str(&client(&["list", "queues", "--format", "json"])).unwrap();
        let row = v
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == q.as_str())
            .cloned();
        if row.as_ref().is_some_and(|r| r["messages"] == 2) || Instant::now() > deadline {
            break row.expect("the queue is listed");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(row["messages"], 2, "{row}");
    assert_eq!(row["vhost"], "/");
    let table = client(&["list", "queues", "--vhost", "/"]);
    assert!(
        table.starts_with("vhost  name"),
        "a header line first: {table}"
    );
    // (RabbitMQ leaves "consumers" out until its stats have the queue.)
    assert!(
        words(&table)
            .iter()
            .any(|w| w[..w.len().min(6)] == ["/", q.as_str(), "classic", "2", "2", "0"]),
        "{table}"
    );
    assert!(words(&client(&["list", "exchanges"])).contains(&vec![
        "/",
        "amq.direct",
        "direct",
        "true",
        "false",
        "false"
    ]));
    assert_eq!(client(&["purge", "--queue", &q]), format!("purged {q}\n"));
    assert_eq!(
        client(&["delete", "--queue", &q]),
        format!("deleted {q} messages=0\n")
    );
}
