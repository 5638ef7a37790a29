//! The user's own pika and amqplib programs (`tests/seed-programs/`, run
//! unchanged) print the same against amqp-broker as against RabbitMQ.
//!
//! One story, run against a real RabbitMQ (127.0.0.1:5672, or
//! `AMQP_RABBITMQ_URL`) and against this build's broker: an unbound
//! publish that is dropped, a bound one, a consumer with prefetch 1 and
//! manual acks, a publish to an undeclared exchange (404) and to a declared
//! one, and amqplib's producer and consumer. Their outputs must be equal,
//! line for line. Needs python3 with pika and node with amqplib (`bash
//! .ci/services` installs them); `AMQP_INTEROP=0` skips it.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

const CLEANUP: &str = r#"
import os, pika
c = pika.BlockingConnection(pika.URLParameters(os.environ['AMQP_URL']))
ch = c.channel()
for q in ['task_queue', 'seed_queue']:
    ch.queue_delete(queue=q)
for x in ['direct_logs', 'logs']:
    ch.exchange_delete(exchange=x)
c.close()
"#;

fn node_path() -> String {
    std::env::var("AMQP_NODE_PATH").unwrap_or_else(|_| {
        support::workspace()
            .join("target/node/node_modules")
            .display()
            .to_string()
    })
}

/// Runs one program in `dir` against `url`; returns what it printed.
fn run(dir: &Path, prog: &str, args: &[&str], url: &str) -> Vec<String> {
    let o = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .env("AMQP_URL", url)
        .env("NODE_PATH", node_path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{prog} {args:?} against {url} failed: {}\n{stdout}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let mut out = vec![format!(
        "$ {prog} {}",
        args.first().filter(|a| **a != "-c").unwrap_or(&"(cleanup)")
    )];
    out.extend(stdout.lines().map(str::to_owned));
    out
}

fn rabbitmq_url() -> String {
    std::env::var("AMQP_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Runs the story against `url`; returns everything the programs printed.
fn story(url: &str) -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/seed-programs");
    let steps: &[(&str, &[&str])] = &[
        ("python3", &["-c", CLEANUP]),
        ("python3", &["pika_producer.py", "first"]),
        ("python3", &["pika_producer_bound.py", "second"]),
        ("python3", &["pika_producer.py", "third"]),
        ("python3", &["pika_consumer.py", "2", "10"]),
        ("python3", &["pika_publish_logs.py"]),
        ("python3", &["pika_publish_logs_declared.py"]),
        (
            "node",
            &["amqplib_producer.js", "seed_queue", "from amqplib"],
        ),
        ("node", &["amqplib_producer.js", "seed_queue", "again"]),
        ("node", &["amqplib_consumer.js", "seed_queue", "2", "10"]),
        ("python3", &["-c", CLEANUP]),
    ];
    let mut out = Vec::new();
    for (prog, args) in steps {
        out.extend(run(&dir, prog, args, url));
    }
    out
}

#[test]
fn seed_programs_print_the_same_as_against_rabbitmq() {
    if !support::interop("seed_programs") {
        return;
    }
    let expected = story(&rabbitmq_url());
    let broker = support::Broker::start(5730..5740, &[]);
    let got = story(&broker.url());
    // Both saw the story as the seed programs' README tells it.
    assert!(
        expected.iter().any(|l| l.contains("Received b'second'")),
        "{expected:#?}"
    );
    assert!(
        expected
            .iter()
            .any(|l| l.contains("404, \"NOT_FOUND - no exchange 'logs' in vhost '/'\""))
    );
    assert_eq!(
        got, expected,
        "amqp-broker (left) and RabbitMQ (right) differ"
    );
    let status = broker.terminate().expect("broker exits after SIGTERM");
    assert!(status.success(), "broker exit status {status}");
}

/// Every program in `tests/clients/` (pika and amqplib programs written
/// for features the seed programs do not reach, such as Direct Reply-to)
/// prints the same against the broker as against RabbitMQ.
#[test]
fn client_programs_print_the_same_as_against_rabbitmq() {
    if !support::interop("client_programs") {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let mut programs: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/clients")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".py") || n.ends_with(".js"))
        .collect();
    programs.sort();
    assert!(!programs.is_empty());
    let broker = support::Broker::start(5740..5750, &[]);
    for p in &programs {
        let interpreter = if p.ends_with(".py") {
            "python3"
        } else {
            "node"
        };
        let expected = run(&dir, interpreter, &[p], &rabbitmq_url());
        let got = run(&dir, interpreter, &[p], &broker.url());
        assert_eq!(
            got, expected,
            "{p}: amqp-broker (left) and RabbitMQ (right) differ"
        );
    }
    eprintln!("{} client programs agree", programs.len());
}
