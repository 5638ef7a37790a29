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

/// `--help` is output asked for: the whole text on stdout, exit status 0.
#[test]
fn help_goes_to_stdout_and_succeeds() {
    for flag in ["--help", "-h"] {
        let out = route(&[flag]);
        assert!(out.status.success(), "{flag}");
        assert!(out.stderr.is_empty(), "{flag}");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        assert!(
            text.contains("usage: amqp-route --definitions FILE"),
            "{text}"
        );
        assert!(text.contains("TYPE LETTERS"), "{text}");
    }
}

/// Header values are shown with their AMQP type, and a headers binding
/// that did not match says why, key by key: a string "3" is not the
/// integer 3 the binding wants, and the fix is spelled out.
#[test]
fn headers_misses_are_explained_with_types() {
    let out = ok(&[
        "--definitions",
        DEFS,
        "by-headers",
        "",
        "-H",
        "retries=3",
        "-H",
        "kind=job",
    ]);
    assert!(
        out.contains("headers {retries: \"3\" (long string), kind: \"job\" (long string)}"),
        "{out}"
    );
    assert!(
        out.contains("not matched: binding 'big-retries' {kind: \"job\" (long string), retries: 3 (signed 64-bit), x-match: \"all\" (long string)} -> queue 'big-retries'"),
        "{out}"
    );
    assert!(out.contains("x-match all: every key must match"), "{out}");
    assert!(
        out.contains("kind: matches: \"job\" (long string)"),
        "{out}"
    );
    assert!(
        out.contains(
            "retries: the binding wants 3 (signed 64-bit), the message has \"3\" (long string); the types differ"
        ),
        "{out}"
    );
    assert!(out.contains("to match, send -H retries:l=3"), "{out}");
    assert!(
        out.contains("format: missing from the message (the binding wants \"json\" (long string))"),
        "{out}"
    );
    // Sent as suggested, it matches, and the matched binding is not
    // listed as a miss.
    let out = ok(&[
        "--definitions",
        DEFS,
        "by-headers",
        "",
        "-H",
        "retries:l=3",
        "-H",
        "kind=job",
    ]);
    assert!(out.contains("matched binding 'big-retries'"), "{out}");
    assert!(!out.contains("not matched: binding 'big-retries'"), "{out}");
    assert!(out.contains("routed to 1 queue(s): big-retries"), "{out}");
}
