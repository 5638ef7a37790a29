//! Runs `amqp-route` on a definitions file exported from a real RabbitMQ
//! (amqp-router/tests/data/definitions.json, vhost `router-defs`).

use std::process::{Command, Output};

const DEFS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../amqp-router/tests/data/definitions.json"
);

fn route(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_amqp-route"))
        .args(args)
        .output()
        .expect("run amqp-route")
}

fn ok(args: &[&str]) -> String {
    let out = route(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn fails(args: &[&str]) -> String {
    let out = route(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8(out.stderr).expect("utf-8");
    assert!(err.starts_with("amqp-route: "), "{err}");
    err.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn explains_topic_and_exchange_to_exchange() {
    let out = ok(&["--definitions", DEFS, "orders.topic", "eu.audit"]);
    assert!(out.contains("exchange 'orders.topic' (topic):"), "{out}");
    assert!(
        out.contains("matched binding 'eu.#' -> queue 'eu-orders'"),
        "{out}"
    );
    assert!(
        out.contains("matched binding '#.audit' -> exchange 'fan'"),
        "{out}"
    );
    assert!(out.contains("exchange 'fan' (fanout):"), "{out}");
    assert!(
        out.contains("routed to 3 queue(s): eu-orders, fan-a, fan-b"),
        "{out}"
    );
}

#[test]
fn explains_alternate_exchange_from_policy() {
    let out = ok(&[
        "--definitions",
        DEFS,
        "--vhost",
        "router-defs",
        "orders.topic",
        "asia.shop",
    ]);
    assert!(out.contains("alternate exchange 'unrouted' taken"), "{out}");
    assert!(out.contains("routed to 1 queue(s): all-unrouted"), "{out}");
}

#[test]
fn typed_headers() {
    let out = ok(&[
        "--definitions",
        DEFS,
        "by-headers",
        "",
        "-H",
        "retries:I=3",
        "-H",
        "kind=job",
    ]);
    assert!(out.contains("-> queue 'big-retries'"), "{out}");
    let out = ok(&[
        "--definitions",
        DEFS,
        "by-headers",
        "",
        "-H",
        "retries:I=2",
        "-H",
        "kind=job",
    ]);
    assert!(
        out.contains("no binding matched and no alternate exchange"),
        "{out}"
    );
    assert!(out.contains("unroutable"), "{out}");
}

#[test]
fn bad_input_is_one_clear_line() {
    let e = fails(&["--definitions", DEFS, "nope", "k"]);
    assert!(
        e.contains("NOT_FOUND - no exchange 'nope' in vhost 'router-defs'"),
        "{e}"
    );
    let e = fails(&[
        "--definitions",
        DEFS,
        "by-headers",
        "",
        "-H",
        "retries:I=three",
    ]);
    assert!(e.contains("bad header"), "{e}");
    let e = fails(&["--definitions", DEFS, "by-headers", "", "-H", "novalue"]);
    assert!(e.contains("bad header"), "{e}");
    let e = fails(&["--definitions", DEFS, "only-one-arg"]);
    assert!(e.contains("expected EXCHANGE and ROUTING_KEY"), "{e}");
    let dir = std::env::temp_dir().join(format!("amqp-route-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let e = fails(&["--definitions", bad.to_str().unwrap(), "x", "k"]);
    assert!(e.contains("malformed definitions JSON"), "{e}");
    let e = fails(&["--definitions", "/nonexistent/defs.json", "x", "k"]);
    assert!(e.contains("cannot read"), "{e}");
}
