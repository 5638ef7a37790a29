//! Option parsing, defaults, queue-pattern expansion, queue arguments and
//! URIs.

use amqp_codec::types::{FieldValue, LongString};
use amqp_perftest::Cli;
use amqp_perftest::cli::{
    QueueArgValue, RunArgs, expand_queue_pattern, parse_queue_args, parse_uri,
};
use amqp_perftest::run::Plan;
use clap::CommandFactory;

fn parse(args: &[&str]) -> RunArgs {
    let mut v = vec!["amqp-perftest"];
    v.extend_from_slice(args);
    RunArgs::try_parse_from(v).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn the_command_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn defaults_are_perftests() {
    let a = RunArgs::defaults();
    assert_eq!(a.uri, "amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_eq!((a.producers, a.consumers), (1, 1));
    assert_eq!(a.size, 12);
    assert_eq!(a.time, 0);
    assert_eq!(a.confirm, None);
    assert!(!a.autoack);
    assert_eq!((a.qos, a.global_qos, a.multi_ack_every), (0, 0, 0));
    assert_eq!(
        (a.exchange.as_str(), a.exchange_type.as_str()),
        ("direct", "direct")
    );
    assert_eq!((a.routing_key.clone(), a.queue.clone()), (None, None));
    assert!(a.flags.is_empty() && !a.persistent() && !a.mandatory());
    assert_eq!((a.rate, a.consumer_rate), (None, None));
    assert_eq!((a.pmessages, a.cmessages), (0, 0));
    assert_eq!(a.queue_args, None);
    assert!(a.auto_delete);
    assert_eq!(a.interval, 1.0);
    assert!(!a.json && !a.quiet);
    assert_eq!(a.broker_pid, None);
    assert!(a.validate().is_ok());
    assert!(a.queue_names().unwrap().is_empty());
}

#[test]
fn every_short_option_parses() {
    let a = parse(&[
        "-h",
        "amqp://u:p@h:1234/v",
        "-x",
        "3",
        "-y",
        "4",
        "-s",
        "1024",
        "-z",
        "10",
        "-c",
        "1000",
        "-a",
        "-q",
        "100",
        "-Q",
        "200",
        "-A",
        "10",
        "-t",
        "topic",
        "-e",
        "ex",
        "-k",
        "rk",
        "-u",
        "q1",
        "-f",
        "persistent",
        "-f",
        "mandatory",
        "-r",
        "500",
        "-R",
        "400",
        "-C",
        "2000",
        "-D",
        "3000",
        "-i",
        "2",
    ]);
    assert_eq!(a.uri, "amqp://u:p@h:1234/v");
    assert_eq!((a.producers, a.consumers, a.size, a.time), (3, 4, 1024, 10));
    assert_eq!(a.confirm, Some(1000));
    assert!(a.autoack);
    assert_eq!((a.qos, a.global_qos, a.multi_ack_every), (100, 200, 10));
    assert_eq!(
        (a.exchange_type.as_str(), a.exchange.as_str()),
        ("topic", "ex")
    );
    assert_eq!(a.routing_key.as_deref(), Some("rk"));
    assert_eq!(a.queue.as_deref(), Some("q1"));
    assert!(a.persistent() && a.mandatory());
    assert_eq!((a.rate, a.consumer_rate), (Some(500.0), Some(400.0)));
    assert_eq!((a.pmessages, a.cmessages), (2000, 3000));
    assert_eq!(a.interval, 2.0);
}

#[test]
fn long_options_parse() {
    let a = parse(&[
        "--uri",
        "amqp://h",
        "--producers",
        "2",
        "--consumers",
        "0",
        "--confirm",
        "5",
        "--autoack",
        "--queue-args",
        "x-max-length=10",
        "--json",
        "--broker-pid",
        "1",
        "--auto-delete",
        "false",
        "--threads",
        "1",
        "--id",
        "t1",
        "--quiet",
    ]);
    assert_eq!((a.producers, a.consumers, a.confirm), (2, 0, Some(5)));
    assert!(a.json && a.quiet && !a.auto_delete);
    assert_eq!(a.broker_pid, Some(1));
    assert_eq!(a.threads, Some(1));
    assert_eq!(a.id.as_deref(), Some("t1"));
}

#[test]
fn bad_options_are_refused_with_a_hint() {
    let bad = |args: &[&str]| {
        let mut v = vec!["amqp-perftest"];
        v.extend_from_slice(args);
        RunArgs::try_parse_from(v).is_err()
    };
    assert!(bad(&["-f", "transient"]));
    assert!(bad(&["-x", "-1"]));
    assert!(bad(&["--queue-pattern", "q-%d"]), "needs from/to");
    assert!(bad(&["--queue-pattern-from", "1"]), "needs the pattern");
    assert!(bad(&[
        "-u",
        "q",
        "--queue-pattern",
        "q-%d",
        "--queue-pattern-from",
        "1",
        "--queue-pattern-to",
        "2"
    ]));
    assert!(bad(&["--queue-args", "novalue"]));
    let invalid = |args: &[&str]| parse(args).validate().unwrap_err();
    assert!(invalid(&["-c", "0"]).contains("-c"));
    assert!(invalid(&["-x", "0", "-y", "0"]).contains("-x"));
    assert!(invalid(&["-r", "0"]).contains("-r"));
    assert!(invalid(&["-i", "0"]).contains("-i"));
    assert!(invalid(&["-e", ""]).contains("-u"));
    assert!(invalid(&["-h", "http://x"]).contains("amqp://"));
}

#[test]
fn help_is_complete() {
    let help = Cli::command().render_long_help().to_string();
    for opt in [
        "--uri",
        "--producers",
        "--consumers",
        "--size",
        "--time",
        "--confirm",
        "--autoack",
        "--qos",
        "--global-qos",
        "--multi-ack-every",
        "--type",
        "--exchange",
        "--routing-key",
        "--queue",
        "--queue-pattern",
        "--queue-pattern-from",
        "--queue-pattern-to",
        "--flag",
        "--rate",
        "--consumer-rate",
        "--pmessages",
        "--cmessages",
        "--queue-args",
        "--interval",
        "--json",
        "--broker-pid",
        "--help",
        "sink",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}");
    }
    assert!(help.contains("-h, --uri"));
}

#[test]
fn queue_patterns_expand() {
    assert_eq!(
        expand_queue_pattern("perf-test-%d", 1, 3).unwrap(),
        ["perf-test-1", "perf-test-2", "perf-test-3"]
    );
    assert_eq!(
        expand_queue_pattern("q-%03d-x", 9, 10).unwrap(),
        ["q-009-x", "q-010-x"]
    );
    assert_eq!(expand_queue_pattern("100%%-%d", 5, 5).unwrap(), ["100%-5"]);
    assert!(
        expand_queue_pattern("q-%d", 3, 1)
            .unwrap_err()
            .contains("greater")
    );
    assert!(expand_queue_pattern("q", 1, 2).unwrap_err().contains("%d"));
    assert!(expand_queue_pattern("q-%s", 1, 2).is_err());
}

#[test]
fn producers_and_consumers_spread_over_the_pattern_queues() {
    let a = parse(&[
        "-x",
        "4",
        "-y",
        "5",
        "--queue-pattern",
        "pq-%d",
        "--queue-pattern-from",
        "1",
        "--queue-pattern-to",
        "3",
    ]);
    let p = Plan::new(a).unwrap();
    assert_eq!(p.queues, ["pq-1", "pq-2", "pq-3"]);
    assert_eq!(
        p.binding_keys, p.queues,
        "pattern queues are bound with their names"
    );
    let targets: Vec<_> = p
        .producers
        .iter()
        .map(|t| (t.routing_key.as_str(), t.queue))
        .collect();
    assert_eq!(
        targets,
        [
            ("pq-1", Some(0)),
            ("pq-2", Some(1)),
            ("pq-3", Some(2)),
            ("pq-1", Some(0))
        ]
    );
    assert_eq!(p.consumers, [Some(0), Some(1), Some(2), Some(0), Some(1)]);
    assert!(!p.broadcast);
    // Sends per queue (plus the unknown slot); queue 3 has a consumer.
    assert_eq!(
        p.expected_received(&[10, 20, 30, 0], &[0, 0, 0, 0]),
        Some(60)
    );
    assert_eq!(
        p.expected_received(&[10, 20, 30, 0], &[1, 0, 0, 0]),
        Some(59)
    );
}

#[test]
fn expected_deliveries_follow_the_topology() {
    // Server-named queues: every consumer's queue gets every message.
    let p = Plan::new(parse(&["-x", "2", "-y", "3"])).unwrap();
    assert!(p.broadcast);
    assert_eq!(p.expected_received(&[100], &[0]), Some(300));
    // One named queue, consumers share it.
    let p = Plan::new(parse(&["-y", "3", "-u", "q"])).unwrap();
    assert_eq!(p.expected_received(&[100, 0], &[0, 0]), Some(100));
    // Fanout over pattern queues: every queue gets every message.
    let p = Plan::new(parse(&[
        "-t",
        "fanout",
        "-e",
        "fx",
        "--queue-pattern",
        "f-%d",
        "--queue-pattern-from",
        "1",
        "--queue-pattern-to",
        "2",
        "-y",
        "2",
    ]))
    .unwrap();
    assert_eq!(p.expected_received(&[5, 5, 0], &[0, 0, 0]), Some(20));
    // Consumers limited by -D, or none: nothing to expect.
    let p = Plan::new(parse(&["-D", "10"])).unwrap();
    assert_eq!(p.expected_received(&[100], &[0]), None);
    let p = Plan::new(parse(&["-y", "0"])).unwrap();
    assert_eq!(p.expected_received(&[100], &[0]), None);
    // Default exchange: the routing key is the queue name.
    let p = Plan::new(parse(&["-e", "", "-u", "dq"])).unwrap();
    assert_eq!(p.producers[0].routing_key, "dq");
    assert_eq!(p.producers[0].exchange, "");
}

#[test]
fn queue_args_are_typed() {
    let q =
        parse_queue_args("x-max-length=1000, x-queue-type=quorum,x-single-active-consumer=true")
            .unwrap();
    assert_eq!(
        q.0,
        vec![
            ("x-max-length".into(), QueueArgValue::Int(1000)),
            ("x-queue-type".into(), QueueArgValue::Str("quorum".into())),
            ("x-single-active-consumer".into(), QueueArgValue::Bool(true)),
        ]
    );
    let t = q.to_table();
    assert_eq!(t.get("x-max-length"), Some(&FieldValue::I64(1000)));
    assert_eq!(
        t.get("x-queue-type"),
        Some(&FieldValue::LongString(LongString::from_static("quorum")))
    );
    assert_eq!(
        t.get("x-single-active-consumer"),
        Some(&FieldValue::Bool(true))
    );
    assert!(parse_queue_args("").unwrap().0.is_empty());
    assert!(parse_queue_args("=1").is_err());
    assert!(parse_queue_args("a").is_err());
}

#[test]
fn uris_parse() {
    let u = parse_uri("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
    assert_eq!(
        (
            u.user.as_str(),
            u.password.as_str(),
            u.host.as_str(),
            u.port,
            u.vhost.as_str()
        ),
        ("guest", "guest", "127.0.0.1", 5672, "/")
    );
    let u = parse_uri("amqp://h").unwrap();
    assert_eq!(
        (u.user.as_str(), u.port, u.vhost.as_str()),
        ("guest", 5672, "/")
    );
    let u = parse_uri("amqp://a%40b:p%3Aw@h:5711/dev").unwrap();
    assert_eq!(
        (
            u.user.as_str(),
            u.password.as_str(),
            u.port,
            u.vhost.as_str()
        ),
        ("a@b", "p:w", 5711, "dev")
    );
    assert!(parse_uri("amqp://h:notaport").is_err());
    assert!(parse_uri("amqps://h").is_err());
    assert!(parse_uri("amqp://h/%zz").is_err());
    assert_eq!(u.to_string(), "amqp://a@b@h:5711/dev");
}
