//! A harness for profiling topic routing outside criterion (perf,
//! callgrind, cachegrind): builds the `router` bench's topic workload (the
//! same generator, seeds and sizes) and routes its distinct keys, printing
//! the router's own memory per binding and the routing time.
//!
//!     cargo build --release -p amqp-benches --example router_instructions
//!     router_instructions BINDINGS KEYS [ROUNDS]
//!
//! Under callgrind, `--toggle-collect='router_instructions::route_all'`
//! counts the routing alone.

#![allow(missing_docs)]

use amqp_router::types::FieldTable;
use amqp_router::{Bind, ExchangeDeclare, OwnerId, QueueDeclare, RouteScratch, Router};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::hint::black_box;
use std::time::Instant;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const OWNER: OwnerId = OwnerId(1);

fn word(rng: &mut Rng) -> String {
    format!("w{}", rng.below(1000))
}

fn pattern(rng: &mut Rng) -> String {
    loop {
        let n = 3 + rng.below(5);
        let words: Vec<String> = (0..n)
            .map(|_| match rng.below(100) {
                0..=11 => "*".into(),
                12..=17 => "#".into(),
                _ => word(rng),
            })
            .collect();
        if words
            .iter()
            .filter(|w| !matches!(w.as_str(), "*" | "#"))
            .count()
            >= 2
        {
            return words.join(".");
        }
    }
}

fn key_for(pattern: &str, rng: &mut Rng) -> String {
    let mut out = Vec::new();
    for w in pattern.split('.') {
        match w {
            "*" => out.push(word(rng)),
            "#" => {
                for _ in 0..rng.below(3) {
                    out.push(word(rng));
                }
            }
            w => out.push(w.to_owned()),
        }
    }
    out.join(".")
}

fn build(bindings: usize, seed: u64) -> (Router<u32>, Vec<String>, f64) {
    let mut rng = Rng(seed);
    let mut patterns = Vec::with_capacity(bindings);
    let region = Region::new(GLOBAL);
    let mut router: Router<u32> = Router::new("/");
    router
        .declare_exchange(&ExchangeDeclare::new(b"t", b"topic"))
        .unwrap();
    let queues = (bindings / 10).max(10);
    for q in 0..queues {
        router
            .declare_queue(
                &QueueDeclare::new(format!("q{q}").as_bytes(), OWNER),
                |_| q as u32,
            )
            .unwrap();
    }
    let none = FieldTable::new();
    while patterns.len() < bindings {
        let p = pattern(&mut rng);
        let q = format!("q{}", rng.below(queues as u64));
        if router
            .bind_queue(&Bind::new(b"t", q.as_bytes(), p.as_bytes(), &none, OWNER))
            .unwrap()
        {
            patterns.push(p);
        }
    }
    let s = region.change();
    let total = s.bytes_allocated as f64 - s.bytes_deallocated as f64;
    // The pattern strings kept (each allocated at its exact length).
    let own: usize = patterns.iter().map(String::capacity).sum();
    (router, patterns, total - own as f64)
}

#[inline(never)]
fn route_all(router: &Router<u32>, keys: &[String], scratch: &mut RouteScratch) -> usize {
    let mut n = 0;
    for k in keys {
        n += router
            .route(b"t", k.as_bytes(), None, scratch)
            .unwrap()
            .len();
    }
    n
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let size = args.first().copied().unwrap_or(100_000);
    let nkeys = args.get(1).copied().unwrap_or(1_000_000);
    let rounds = args.get(2).copied().unwrap_or(1);
    let (router, patterns, bytes) = build(size, 4242 + size as u64);
    let mut rng = Rng(99 + size as u64);
    let mut keys = Vec::with_capacity(nkeys);
    let mut seen = std::collections::HashSet::with_capacity(nkeys);
    while keys.len() < nkeys {
        let p = &patterns[rng.below(patterns.len() as u64) as usize];
        let k = key_for(p, &mut rng);
        if seen.insert(k.clone()) {
            keys.push(k);
        }
    }
    drop(seen);
    eprintln!(
        "{size} bindings: {:.0} bytes per binding (router only)",
        bytes / size as f64
    );
    let mut scratch = RouteScratch::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let m = black_box(route_all(&router, &keys, &mut scratch));
        let s = t.elapsed().as_secs_f64();
        eprintln!(
            "{nkeys} keys: {:.0} ns/route, {:.2} matches/key",
            s * 1e9 / nkeys as f64,
            m as f64 / nkeys as f64
        );
    }
}
