//! Option parsing, defaults, queue-pattern expansion, queue arguments and
//! URIs.

use amqp_codec::types::{FieldValue, LongString};
use amqp_perftest::cli::{
    QueueArgValue, RunArgs, expand_queue_pattern, parse_queue_args, parse_uri,
};
use amqp_perftest::run::Plan;
use amqp_perftest::{Cli, Command};
use clap::{CommandFactory, Parser};

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
        "--bindings-per-queue",
        "--binding-key-pattern",
        "--help",
        "sink",
        "idle",
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
    let bound: Vec<_> = p.bindings.iter().map(|(q, k)| (*q, k.as_str())).collect();
    assert_eq!(
        bound,
        [(0, "pq-1"), (1, "pq-2"), (2, "pq-3")],
        "pattern queues are bound with their names"
    );
    assert!(p.producers.iter().all(|t| t.cycle.is_empty()));
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

fn topic_args(extra: &[&str]) -> RunArgs {
    let mut v = vec![
        "-t",
        "topic",
        "-e",
        "tx",
        "--queue-pattern",
        "tq-%d",
        "--queue-pattern-from",
        "1",
        "--queue-pattern-to",
        "10",
    ];
    v.extend_from_slice(extra);
    parse(&v)
}

#[test]
fn bindings_per_queue_bind_every_queue_and_producers_cycle_through_them() {
    let a = topic_args(&[
        "-x",
        "3",
        "-y",
        "10",
        "--bindings-per-queue",
        "100",
        "--binding-key-pattern",
        "stock.%d.*",
    ]);
    assert_eq!(a.bindings_per_queue, 100);
    assert_eq!(a.binding_key_pattern.as_deref(), Some("stock.%d.*"));
    assert!(a.cycles_bindings());
    let p = Plan::new(a).unwrap();
    assert_eq!(p.bindings.len(), 1000);
    assert_eq!(p.bindings[0], (0, "stock.0.*".to_owned()));
    assert_eq!(p.bindings[13], (3, "stock.13.*".to_owned()));
    assert_eq!(p.bindings[999], (9, "stock.999.*".to_owned()));
    for q in 0..10 {
        assert_eq!(
            p.bindings.iter().filter(|(b, _)| *b == q).count(),
            100,
            "queue {q} has 100 bindings"
        );
    }
    let keys: std::collections::BTreeSet<_> = p.bindings.iter().map(|(_, k)| k).collect();
    assert_eq!(keys.len(), 1000, "binding keys are distinct");
    // Every producer publishes every routing key in turn, each matching
    // one binding (its `*` word filled in), starting at its own index.
    for (i, t) in p.producers.iter().enumerate() {
        assert_eq!(t.cycle.len(), 1000);
        assert_eq!(t.cycle[0], (format!("stock.{i}.x"), i % 10));
        assert_eq!(
            (t.routing_key.as_str(), t.queue),
            (t.cycle[0].0.as_str(), Some(i % 10))
        );
        let mut seen: Vec<_> = t.cycle.iter().map(|(k, q)| (k.clone(), *q)).collect();
        seen.sort();
        let mut want: Vec<_> = p
            .bindings
            .iter()
            .map(|(q, k)| (k.replace('*', "x"), *q))
            .collect();
        want.sort();
        assert_eq!(seen, want);
    }
    // One queue per message, every queue consumed: the sends count once.
    assert!(!p.broadcast);
    let mut sent = vec![10u64; 10];
    sent.push(0);
    assert_eq!(p.expected_received(&sent, &[0; 11]), Some(100));
    // Returns cannot be told apart by queue while keys cycle.
    let mut returned = vec![0u64; 10];
    returned.push(1);
    assert_eq!(p.expected_received(&sent, &returned), None);
}

#[test]
fn binding_keys_fill_topic_wildcards_only_for_topic_exchanges() {
    let a = topic_args(&["--binding-key-pattern", "a.#.%03d.*"]);
    assert_eq!(a.binding_keys(2).unwrap(), ["a.#.000.*", "a.#.001.*"]);
    assert_eq!(a.routing_key_for("a.#.000.*"), "a.x.000.x");
    assert_eq!(a.routing_key_for("a.b*.c"), "a.b*.c", "only whole words");
    let d = parse(&["-t", "direct", "-u", "q", "--binding-key-pattern", "k.%d.*"]);
    assert_eq!(d.routing_key_for("k.1.*"), "k.1.*");
    let p = Plan::new(d).unwrap();
    assert_eq!(p.bindings, [(0, "k.0.*".to_owned())]);
    assert_eq!(p.producers[0].cycle, [("k.0.*".to_owned(), 0)]);
    // The default pattern, with a single named queue.
    let p = Plan::new(parse(&["-u", "q", "--bindings-per-queue", "3"])).unwrap();
    let keys: Vec<_> = p.bindings.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(keys, ["perftest.0", "perftest.1", "perftest.2"]);
    // Fanout still reaches every queue.
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
        "--bindings-per-queue",
        "2",
    ]))
    .unwrap();
    assert!(p.broadcast);
    assert_eq!(p.expected_received(&[5, 5, 0], &[0, 0, 0]), Some(20));
}

#[test]
fn bad_binding_options_are_refused() {
    let mut v = vec![
        "amqp-perftest",
        "-u",
        "q",
        "-k",
        "rk",
        "--bindings-per-queue",
        "2",
    ];
    assert!(RunArgs::try_parse_from(&v).is_err(), "-k conflicts");
    v.truncate(5);
    v.extend(["--binding-key-pattern", "k.%d"]);
    assert!(RunArgs::try_parse_from(&v).is_err(), "-k conflicts");
    let invalid = |args: &[&str]| parse(args).validate().unwrap_err();
    assert!(invalid(&["--bindings-per-queue", "2"]).contains("-u"));
    assert!(invalid(&["-u", "q", "--bindings-per-queue", "0"]).contains("at least 1"));
    assert!(invalid(&["-e", "", "-u", "q", "--bindings-per-queue", "2"]).contains("-e"));
    assert!(invalid(&["-u", "q", "--binding-key-pattern", "fixed"]).contains("%d"));
    assert!(
        invalid(&["-u", "q", "--binding-key-pattern", "k.%x"]).contains("--binding-key-pattern")
    );
    assert!(invalid(&["-u", "q", "--bindings-per-queue", "1000001"]).contains("at most 1000000"));
    assert!(
        invalid(&[
            "-u",
            "q",
            "--binding-key-pattern",
            &format!("{}%d", "k".repeat(255))
        ])
        .contains("longer than 255")
    );
    assert!(Plan::new(parse(&["--bindings-per-queue", "2"])).is_err());
}

#[test]
fn idle_options_parse() {
    let cli = Cli::try_parse_from([
        "amqp-perftest",
        "idle",
        "-h",
        "amqp://u:p@h:1234/v",
        "-n",
        "10000",
        "--heartbeat",
        "30",
        "--concurrency",
        "20",
        "-z",
        "60",
        "--threads",
        "2",
    ])
    .unwrap();
    let Some(Command::Idle(a)) = cli.command else {
        panic!("not idle: {:?}", cli.command)
    };
    assert_eq!(a.uri, "amqp://u:p@h:1234/v");
    assert_eq!((a.connections, a.heartbeat, a.concurrency), (10000, 30, 20));
    assert_eq!((a.time, a.threads), (60, 2));
    assert!(a.validate().is_ok());
    let Some(Command::Idle(d)) = Cli::try_parse_from(["amqp-perftest", "idle"])
        .unwrap()
        .command
    else {
        panic!("not idle")
    };
    assert_eq!(
        (d.connections, d.heartbeat, d.concurrency, d.time),
        (1000, 60, 50, 0)
    );
    assert_eq!(d.uri, "amqp://guest:guest@127.0.0.1:5672/%2f");
    let invalid = |args: &[&str]| {
        let mut v = vec!["amqp-perftest", "idle"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v).unwrap().command {
            Some(Command::Idle(a)) => a.validate().unwrap_err(),
            c => panic!("not idle: {c:?}"),
        }
    };
    assert!(invalid(&["-n", "0"]).contains("--connections"));
    assert!(invalid(&["--concurrency", "0"]).contains("--concurrency"));
    assert!(invalid(&["--threads", "0"]).contains("--threads"));
    assert!(invalid(&["-h", "http://x"]).contains("amqp://"));
    assert!(Cli::try_parse_from(["amqp-perftest", "idle", "-n", "-1"]).is_err());
    assert!(Cli::try_parse_from(["amqp-perftest", "idle", "--heartbeat", "70000"]).is_err());
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
