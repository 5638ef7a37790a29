//! amqp-router benchmarks on seeded workloads generated here (a tiny
//! xorshift PRNG, fixed seeds: the same topology and keys on every run).
//! Every distinct result a benchmark produces is checked against the naive
//! linear-scan model (`amqp-router/tests/naive/mod.rs`) before it is
//! measured; the largest topic workloads are checked on a sample (the
//! naive model scans 100,000 patterns per key).
//!
//! Besides criterion's timings, the run prints (to stderr):
//! * 1,000,000 distinct keys routed against 2,000 topic patterns, timed;
//! * routes/s at 1k, 10k, 20k and 100k topic bindings over 1,000,000
//!   distinct keys (matches per key held near 1);
//! * memory per topic binding, from a counting global allocator: the
//!   router's live heap after building it (exchange, queues, binding
//!   records, trie), the workload's pattern strings excluded.
//!
//!     cargo bench -p amqp-benches --bench router

#![allow(missing_docs)]

#[path = "../../amqp-router/tests/naive/mod.rs"]
#[allow(missing_docs, clippy::all)]
mod naive;

use amqp_benches::topic_workload::{
    self, Rng, TopicWorkload, distinct_keys, pattern, topic_workload,
};
use amqp_router::types::{FieldTable, FieldValue};
use amqp_router::{Bind, ExchangeDeclare, OwnerId, QueueDeclare, RouteScratch, Router};
use criterion::{BatchSize, Criterion, black_box, criterion_group, criterion_main};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const OWNER: OwnerId = topic_workload::OWNER;

/// Checks the router against the naive model on `keys` (a naive model with
/// the same bindings is built alongside).
fn cross_check_topic(w: &TopicWorkload, keys: &[String]) {
    let mut model = naive::Naive::new();
    model
        .apply(&naive::Op::DeclareExchange {
            name: "t".into(),
            kind: "topic".into(),
            auto_delete: false,
            internal: false,
            ae: None,
        })
        .unwrap();
    for q in 0..w.queues {
        model
            .apply(&naive::Op::DeclareQueue {
                name: format!("q{q}"),
            })
            .unwrap();
    }
    for b in w.router.bindings() {
        model
            .apply(&naive::Op::Bind {
                source: "t".into(),
                dest: b.destination.to_string(),
                to_queue: true,
                key: b.routing_key.to_string(),
                args: FieldTable::new(),
            })
            .unwrap();
    }
    let mut scratch = RouteScratch::new();
    for k in keys {
        let mut got: Vec<String> = w
            .router
            .route(b"t", k.as_bytes(), None, &mut scratch)
            .unwrap()
            .names()
            .map(|n| n.to_string())
            .collect();
        got.sort();
        assert_eq!(got, model.route("t", k, None).unwrap(), "key {k}");
    }
}

/// Routes every key once; returns (seconds, total matches).
fn route_all(router: &Router<u32>, keys: &[String]) -> (f64, usize) {
    let mut scratch = RouteScratch::new();
    let start = Instant::now();
    let mut matches = 0;
    for k in keys {
        matches += router
            .route(b"t", k.as_bytes(), None, &mut scratch)
            .unwrap()
            .len();
    }
    (start.elapsed().as_secs_f64(), matches)
}

fn topic(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    // 1M keys x 2,000 patterns.
    {
        let w = topic_workload(2_000, 2011);
        let keys = distinct_keys(&w.patterns, 1_000_000, 7);
        cross_check_topic(&w, &keys[..20_000]);
        let (secs, matches) = route_all(&w.router, &keys);
        eprintln!(
            "topic: 1,000,000 distinct keys x 2,000 patterns in {secs:.3} s ({:.2} matches/key)",
            matches as f64 / 1e6
        );
    }
    for (size, sample) in [
        (1_000usize, 20_000usize),
        (10_000, 4_000),
        (20_000, 2_000),
        (100_000, 300),
    ] {
        let region = Region::new(GLOBAL);
        let w = topic_workload(size, 4242 + size as u64);
        let stats = region.change();
        // Live bytes: stats_alloc already counts a realloc's growth in
        // `bytes_allocated` (and a shrink in `bytes_deallocated`), so
        // `bytes_reallocated` is not added. The workload's own pattern
        // list (the vector and its strings) is not the router's.
        let workload = w.patterns.capacity() * std::mem::size_of::<String>()
            + w.patterns.iter().map(String::capacity).sum::<usize>();
        let bytes = stats.bytes_allocated as f64 - stats.bytes_deallocated as f64 - workload as f64;
        let keys = distinct_keys(&w.patterns, 1_000_000, 99 + size as u64);
        cross_check_topic(&w, &keys[..sample]);
        let (secs, matches) = route_all(&w.router, &keys);
        eprintln!(
            "topic: {size} bindings: {:.2} M routes/s over 1,000,000 distinct keys ({:.2} matches/key), {:.0} bytes per binding (router's heap: exchange, queues, bindings, trie)",
            1.0 / secs,
            matches as f64 / 1e6,
            bytes / size as f64
        );
        let mut scratch = RouteScratch::new();
        let mut i = 0;
        g.bench_function(format!("route/{size}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(
                    w.router
                        .route(b"t", keys[i].as_bytes(), None, &mut scratch)
                        .unwrap()
                        .len(),
                )
            })
        });
    }
    g.finish();
}

fn queues(router: &mut Router<u32>, n: usize) {
    for q in 0..n {
        router
            .declare_queue(
                &QueueDeclare::new(format!("q{q}").as_bytes(), OWNER),
                |_| q as u32,
            )
            .unwrap();
    }
}

fn check_against_naive(
    router: &Router<u32>,
    exchange: &str,
    kind: &str,
    cases: &[(String, Option<FieldTable>)],
) {
    let mut model = naive::Naive::new();
    model
        .apply(&naive::Op::DeclareExchange {
            name: exchange.into(),
            kind: kind.into(),
            auto_delete: false,
            internal: false,
            ae: None,
        })
        .unwrap();
    for q in router.queues() {
        model
            .apply(&naive::Op::DeclareQueue {
                name: q.name().to_string(),
            })
            .unwrap();
    }
    for b in router.bindings() {
        model
            .apply(&naive::Op::Bind {
                source: b.source.to_string(),
                dest: b.destination.to_string(),
                to_queue: true,
                key: b.routing_key.to_string(),
                args: b.arguments.clone(),
            })
            .unwrap();
    }
    let mut scratch = RouteScratch::new();
    for (key, headers) in cases {
        let mut got: Vec<String> = router
            .route(
                exchange.as_bytes(),
                key.as_bytes(),
                headers.as_ref(),
                &mut scratch,
            )
            .unwrap()
            .names()
            .map(|n| n.to_string())
            .collect();
        got.sort();
        assert_eq!(
            got,
            model.route(exchange, key, headers.as_ref()).unwrap(),
            "{key} {headers:?}"
        );
    }
}

fn others(c: &mut Criterion) {
    let mut g = c.benchmark_group("router");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let none = FieldTable::new();

    // Direct: 10,000 bindings (distinct keys) over 1,000 queues.
    let mut rng = Rng(10);
    let mut direct: Router<u32> = Router::new("/");
    direct
        .declare_exchange(&ExchangeDeclare::new(b"d", b"direct"))
        .unwrap();
    queues(&mut direct, 1_000);
    for i in 0..10_000 {
        let q = format!("q{}", rng.below(1_000));
        direct
            .bind_queue(&Bind::new(
                b"d",
                q.as_bytes(),
                format!("key.{i}").as_bytes(),
                &none,
                OWNER,
            ))
            .unwrap();
    }
    let keys: Vec<String> = (0..4096)
        .map(|_| format!("key.{}", rng.below(11_000)))
        .collect();
    check_against_naive(
        &direct,
        "d",
        "direct",
        &keys.iter().map(|k| (k.clone(), None)).collect::<Vec<_>>(),
    );
    let mut scratch = RouteScratch::new();
    let mut i = 0;
    g.bench_function("direct/10000-bindings", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(
                direct
                    .route(b"d", keys[i].as_bytes(), None, &mut scratch)
                    .unwrap()
                    .len(),
            )
        })
    });

    // Headers: 1,000 bindings, x-match all/any over 3 keys.
    let mut headers: Router<u32> = Router::new("/");
    headers
        .declare_exchange(&ExchangeDeclare::new(b"h", b"headers"))
        .unwrap();
    queues(&mut headers, 100);
    let value = |rng: &mut Rng| -> FieldValue {
        match rng.below(3) {
            0 => FieldValue::I32(rng.below(20) as i32),
            1 => FieldValue::I64(rng.below(20) as i64),
            _ => FieldValue::LongString(format!("v{}", rng.below(20)).into()),
        }
    };
    for _ in 0..1_000 {
        let mut args = FieldTable::new();
        args.insert("x-match", if rng.below(2) == 0 { "all" } else { "any" });
        for k in ["region", "kind", "tier"] {
            if rng.below(3) > 0 {
                args.insert(k, value(&mut rng));
            }
        }
        let q = format!("q{}", rng.below(100));
        headers
            .bind_queue(&Bind::new(b"h", q.as_bytes(), b"", &args, OWNER))
            .unwrap();
    }
    let msgs: Vec<(String, Option<FieldTable>)> = (0..1024)
        .map(|_| {
            let mut t = FieldTable::new();
            for k in ["region", "kind", "tier", "other"] {
                if rng.below(4) > 0 {
                    t.insert(k, value(&mut rng));
                }
            }
            (String::new(), Some(t))
        })
        .collect();
    check_against_naive(&headers, "h", "headers", &msgs);
    let mut i = 0;
    g.bench_function("headers/1000-bindings", |b| {
        b.iter(|| {
            i = (i + 1) % msgs.len();
            black_box(
                headers
                    .route(b"h", b"", msgs[i].1.as_ref(), &mut scratch)
                    .unwrap()
                    .len(),
            )
        })
    });

    // Fanout to 1,000 queues.
    let mut fanout: Router<u32> = Router::new("/");
    fanout
        .declare_exchange(&ExchangeDeclare::new(b"f", b"fanout"))
        .unwrap();
    queues(&mut fanout, 1_000);
    for q in 0..1_000 {
        fanout
            .bind_queue(&Bind::new(
                b"f",
                format!("q{q}").as_bytes(),
                b"",
                &none,
                OWNER,
            ))
            .unwrap();
    }
    check_against_naive(&fanout, "f", "fanout", &[(String::from("any"), None)]);
    g.bench_function("fanout/1000-queues", |b| {
        b.iter(|| {
            black_box(
                fanout
                    .route(b"f", b"any", None, &mut scratch)
                    .unwrap()
                    .len(),
            )
        })
    });

    // Bind + unbind on a topic exchange holding 10,000 bindings.
    let mut w = topic_workload(10_000, 77);
    w.router
        .declare_queue(&QueueDeclare::new(b"extra", OWNER), |_| u32::MAX)
        .unwrap();
    let mut rng = Rng(78);
    let extra: Vec<String> = (0..1024).map(|_| pattern(&mut rng)).collect();
    let mut i = 0;
    let before = w.router.binding_count();
    g.bench_function("bind+unbind/topic-10000", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % extra.len();
                i
            },
            |i| {
                let bind = Bind::new(b"t", b"extra", extra[i].as_bytes(), &none, OWNER);
                let added = w.router.bind_queue(&bind).unwrap();
                let removed = w.router.unbind_queue(&bind).unwrap();
                black_box((added, removed.bindings.len()))
            },
            BatchSize::SmallInput,
        )
    });
    assert_eq!(
        w.router.binding_count(),
        before,
        "bind+unbind left the topology changed"
    );
    g.finish();
}

criterion_group!(benches, topic, others);
criterion_main!(benches);
