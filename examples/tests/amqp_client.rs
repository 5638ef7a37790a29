//! Runs `amqp-client` against the interop RabbitMQ on 127.0.0.1:5672
//! (guest/guest): declare, publish with confirms (several messages, a
//! header, persistent), consume with acks, a broker refusal (404), delete.
//! Skips (saying so) only when `AMQP_INTEROP=0`; a missing broker fails.

use std::process::{Command, Output};

const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn client(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_amqp-client"))
        .args(["--uri", URI, "--timeout", "15"])
        .args(args)
        .output()
        .expect("run amqp-client")
}

fn ok(args: &[&str]) -> String {
    let out = client(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn skip() -> bool {
    if std::env::var("AMQP_INTEROP").as_deref() == Ok("0") {
        eprintln!("skipped: AMQP_INTEROP=0");
        return true;
    }
    false
}

#[test]
fn publish_confirm_then_consume_against_rabbitmq() {
    if skip() {
        return;
    }
    let q = format!("amqp-client-test-{}", std::process::id());
    let out = ok(&["declare", "--queue", &q, "--auto-delete"]);
    assert_eq!(out, format!("declared {q} messages=0 consumers=0\n"));

    let out = ok(&[
        "publish",
        "--exchange",
        "",
        "--routing-key",
        &q,
        "--confirm",
        "--persistent",
        "--header",
        "origin=test",
        "--count",
        "3",
        "hello from amqp-client",
    ]);
    assert_eq!(out, "published 3 confirmed 3 nacked 0 returned 0\n");
    // A fourth, without confirms, and a body larger than frame_max.
    let big = "x".repeat(300_000);
    let file = std::env::temp_dir().join(format!("{q}.body"));
    std::fs::write(&file, &big).unwrap();
    let path = file.to_str().unwrap();
    assert_eq!(
        ok(&[
            "publish",
            "--exchange",
            "",
            "--routing-key",
            &q,
            "--body-file",
            path
        ]),
        "published 1\n"
    );
    let _ = std::fs::remove_file(&file);

    let out = ok(&["consume", "--queue", &q, "--count", "4", "--prefetch", "1"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out:.200}");
    assert!(lines[..3].iter().all(|l| *l == "hello from amqp-client"));
    assert_eq!(lines[3], big);

    // Everything was acked: the queue is empty now.
    let out = ok(&["delete", "--queue", &q]);
    assert_eq!(out, format!("deleted {q} messages=0\n"));
}

#[test]
fn broker_refusals_are_reported() {
    if skip() {
        return;
    }
    // Consuming from a queue that does not exist: channel.close 404.
    let out = client(&["consume", "--queue", "amqp-client-no-such-queue"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("amqp-client: channel closed by the broker: 404 NOT_FOUND"),
        "{err}"
    );
    assert!(
        err.contains("(declare the queue first: amqp-client declare --queue NAME)"),
        "{err}"
    );

    // An unroutable mandatory publish with --confirm is returned.
    let out = client(&[
        "publish",
        "--exchange",
        "amq.direct",
        "--routing-key",
        "amqp-client-nowhere",
        "--confirm",
        "lost",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "published 1 confirmed 1 nacked 0 returned 1\n"
    );

    // Wrong password: RabbitMQ closes with 403 (the client announces
    // authentication_failure_close).
    let out = Command::new(env!("CARGO_BIN_EXE_amqp-client"))
        .args([
            "--uri",
            "amqp://guest:wrong@127.0.0.1:5672/%2f",
            "declare",
            "--queue",
            "x",
        ])
        .output()
        .expect("run amqp-client");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("403"), "{err}");
    assert!(err.contains("check the user name and password"), "{err}");

    // Usage errors.
    let out = client(&["publish", "--exchange", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --routing-key"));
}

/// Pointed at something that is not an AMQP server (here an HTTP server
/// on loopback, or an AMQP 1.0 server's protocol header), the client says
/// so instead of reporting a frame of ~1.3 GB. Needs no broker.
#[test]
fn not_an_amqp_server_is_named() {
    use std::io::{Read, Write};
    for (answer, expected) in [
        (
            &b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"[..],
            "not an AMQP server: it answered \"HTTP/1.1 400 Bad Request",
        ),
        (
            &b"AMQP\x00\x01\x00\x00"[..],
            "the server refused AMQP 0-9-1: it answered with the protocol header of AMQP 1.0.0",
        ),
    ] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut header = [0u8; 8];
            s.read_exact(&mut header).expect("client header");
            s.write_all(answer).expect("answer");
        });
        let out = Command::new(env!("CARGO_BIN_EXE_amqp-client"))
            .args([
                "--uri",
                &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
                "--timeout",
                "5",
                "declare",
                "--queue",
                "q",
            ])
            .output()
            .expect("run amqp-client");
        server.join().expect("fake server");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains("too large"), "{err}");
    }
}

/// `--help` is output asked for: usage on stdout, exit status 0 (an
/// unknown option is still an error on stderr).
#[test]
fn help_goes_to_stdout_and_succeeds() {
    for args in [&["--help"][..], &["-h"], &["publish", "--help"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_amqp-client"))
            .args(args)
            .output()
            .expect("run amqp-client");
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("usage: amqp-client"), "{text}");
        // Complete: every command and the options that need explaining.
        for needle in [
            "declare --exchange X --type T",
            "bind    --exchange X",
            "unbind  --exchange X",
            "--format json",
            "--to-exchange D",
            "key:T=value",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        assert!(out.stderr.is_empty());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_amqp-client"))
        .arg("--nope")
        .output()
        .expect("run amqp-client");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option --nope"));
}

/// Without `--confirm`, a publish to a missing exchange is refused by the
/// broker closing the channel (404): the client waits for the broker's
/// word, reports the reply code and text, and exits non-zero instead of
/// saying "published 1".
#[test]
fn publish_to_missing_exchange_without_confirm_fails() {
    if skip() {
        return;
    }
    let out = client(&[
        "publish",
        "--exchange",
        "amqp-client-no-such-exchange",
        "--routing-key",
        "k",
        "lost",
    ]);
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("404 NOT_FOUND - no exchange 'amqp-client-no-such-exchange' in vhost '/'"),
        "{err}"
    );
    assert!(err.contains("amqp-client declare --exchange"), "{err}");
}

/// Exchange declare, typed headers bindings, `consume --verbose` and
/// `--format json`, unbind and delete, end to end.
#[test]
fn exchanges_bindings_and_consume_formats() {
    if skip() {
        return;
    }
    let id = std::process::id();
    let (x, q, fan) = (
        format!("amqp-client-hx-{id}"),
        format!("amqp-client-hq-{id}"),
        format!("amqp-client-fan-{id}"),
    );
    assert_eq!(
        ok(&["declare", "--exchange", &x, "--type", "headers"]),
        format!("declared exchange {x} type=headers\n")
    );
    ok(&["declare", "--exchange", &fan, "--type", "fanout"]);
    ok(&["declare", "--queue", &q]);
    // Exchange-to-exchange: the fanout feeds the headers exchange.
    assert_eq!(
        ok(&["bind", "--exchange", &fan, "--to-exchange", &x]),
        format!("bound exchange {x} to exchange {fan} with routing key \"\"\n")
    );
    let binding = [
        "--exchange",
        &x,
        "--queue",
        &q,
        "--argument",
        "x-match=all",
        "--argument",
        "retries:I=1",
    ];
    let bind: Vec<&str> = ["bind"].iter().chain(binding.iter()).copied().collect();
    assert_eq!(
        ok(&bind),
        format!("bound queue {q} to exchange {x} with routing key \"\"\n")
    );
    // A string "1" does not match the integer 1 (unroutable, returned);
    // the typed header does.
    let out = client(&[
        "publish",
        "--exchange",
        &fan,
        "--routing-key",
        "rk",
        "--header",
        "retries=1",
        "--confirm",
        "string",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "published 1 confirmed 1 nacked 0 returned 1\n"
    );
    for body in ["first", "second"] {
        ok(&[
            "publish",
            "--exchange",
            &fan,
            "--routing-key",
            "rk",
            "--header",
            "retries:l=1",
            "--header",
            "origin=test",
            "--content-type",
            "text/plain",
            "--persistent",
            "--confirm",
            body,
        ]);
    }
    let out = ok(&["consume", "--queue", &q, "--verbose"]);
    assert_eq!(
        out,
        format!(
            "--- message 1\nexchange: \"{fan}\"\nrouting-key: \"rk\"\nredelivered: false\n\
             delivery-tag: 1\ncontent-type: \"text/plain\"\nheaders:\n  \"retries\": 1 (signed 64-bit)\n  \
             \"origin\": \"test\" (long string)\ndelivery-mode: 2 (persistent)\nbody: 5 bytes\nfirst\n"
        )
    );
    // The second message may have been delivered to the first consumer
    // (prefetch 1) before it closed, and so come back redelivered.
    let out = ok(&["consume", "--queue", &q, "--format", "json"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let mut got: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    let redelivered = got
        .as_object_mut()
        .and_then(|o| o.remove("redelivered"))
        .unwrap_or_else(|| panic!("no redelivered in {out}"));
    assert!(redelivered.is_boolean(), "{out}");
    assert_eq!(
        got,
        serde_json::json!({
            "exchange": fan,
            "routing_key": "rk",
            "delivery_tag": 1,
            "properties": {
                "content_type": "text/plain",
                "headers": {
                    "retries": {"type": "signed 64-bit", "value": 1},
                    "origin": {"type": "long string", "value": "test"},
                },
                "delivery_mode": 2,
            },
            "body": "second",
        })
    );
    let unbind: Vec<&str> = ["unbind"].iter().chain(binding.iter()).copied().collect();
    assert_eq!(
        ok(&unbind),
        format!("unbound queue {q} from exchange {x} with routing key \"\"\n")
    );
    // Unbound: the typed header no longer reaches the queue.
    let out = client(&[
        "publish",
        "--exchange",
        &x,
        "--routing-key",
        "",
        "--header",
        "retries:I=1",
        "--confirm",
        "nowhere",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        ok(&["delete", "--exchange", &fan]),
        format!("deleted exchange {fan}\n")
    );
    assert_eq!(
        ok(&["delete", "--exchange", &x]),
        format!("deleted exchange {x}\n")
    );
    assert_eq!(
        ok(&["delete", "--queue", &q]),
        format!("deleted {q} messages=0\n")
    );
    // Usage: declare needs exactly one of --queue and --exchange.
    let out = client(&[
        "declare",
        "--queue",
        "a",
        "--exchange",
        "b",
        "--type",
        "direct",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("either --queue or --exchange"));
    let out = client(&["declare", "--exchange", "b"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("declare needs --type"));
}

#[test]
fn get_peeks_by_default_and_takes_with_ack() {
    if skip() {
        return;
    }
    let q = format!("amqp-client-get-{}", std::process::id());
    ok(&["declare", "--queue", &q]);
    ok(&[
        "publish",
        "--exchange",
        "",
        "--routing-key",
        &q,
        "--count",
        "2",
        "m",
    ]);
    // A peek: both printed, both still there (redelivered now).
    assert_eq!(ok(&["get", "--queue", &q, "--count", "5"]), "m\nm\n");
    let json = ok(&["get", "--queue", &q, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["redelivered"], true);
    assert_eq!(v["routing_key"], q.as_str());
    // --ack takes one; one is left.
    assert_eq!(ok(&["get", "--queue", &q, "--ack"]), "m\n");
    assert_eq!(ok(&["get", "--queue", &q, "--ack", "--count", "3"]), "m\n");
    // Empty: said on stderr, not an error.
    let out = client(&["get", "--queue", &q]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));
    ok(&["delete", "--queue", &q]);
}
