//! amqp-perftest against the broker: short count-limited runs in which
//! every message sent must be received and every publish confirmed.

mod support;

use amqp_perftest::cli::RunArgs;
use amqp_perftest::{Progress, Summary, run};

fn go(uri: &str, args: &[&str]) -> Summary {
    let mut v = vec!["amqp-perftest", "-h", uri, "--threads", "2", "-z", "60"];
    v.extend_from_slice(args);
    let a = RunArgs::try_parse_from(&v).unwrap_or_else(|e| panic!("{v:?}: {e}"));
    let s = run(a, Progress::Off);
    for l in s.lines() {
        eprintln!("{l}");
    }
    s
}

fn assert_exact(s: &Summary, sent: u64, received: u64) {
    assert_eq!(s.error, None);
    assert_eq!(s.totals.sent, sent, "sent");
    assert_eq!(s.totals.received, received, "received");
    assert!(s.all_received() && s.all_confirmed() && s.counts_exact());
    assert_eq!(s.exit_code(), 0);
}

#[test]
fn perftest_runs_against_the_broker_are_exact() {
    let broker = support::Broker::start(5760..5770, &[]);
    let uri = broker.url();
    // Confirms and manual acks with prefetch.
    let s = go(
        &uri,
        &[
            "-x", "1", "-y", "1", "-C", "5000", "-c", "100", "-q", "100", "-s", "1024",
        ],
    );
    assert_exact(&s, 5000, 5000);
    assert_eq!(s.totals.confirmed, 5000);
    // Auto-ack, 16-byte bodies.
    assert_exact(
        &go(
            &uri,
            &["-x", "1", "-y", "1", "-a", "-C", "20000", "-s", "16"],
        ),
        20000,
        20000,
    );
    // Four producer/consumer pairs on four queues, multi-ack every 10.
    let s = go(
        &uri,
        &[
            "-x",
            "4",
            "-y",
            "4",
            "-C",
            "2000",
            "-c",
            "50",
            "-A",
            "10",
            "-q",
            "50",
            "--queue-pattern",
            "perftest-%d",
            "--queue-pattern-from",
            "1",
            "--queue-pattern-to",
            "4",
            "--auto-delete",
            "true",
        ],
    );
    assert_exact(&s, 8000, 8000);
    // Fan-out to five consumers. queues.
    let s = go(
        &uri,
        &[
            "-x",
            "1",
            "-y",
            "5",
            "-t",
            "fanout",
            "-e",
            "perftest-fanout",
            "-C",
            "1000",
            "-c",
            "100",
            "-a",
        ],
    );
    assert_exact(&s, 1000, 5000);
}
