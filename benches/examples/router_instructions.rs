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

use amqp_benches::topic_workload::{distinct_keys, topic_workload};
use amqp_router::{RouteScratch, Router};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::hint::black_box;
use std::time::Instant;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The bench's workload, with the router's own live heap measured around
/// the build (minus the pattern strings kept, each at its exact length).
fn build(bindings: usize, seed: u64) -> (Router<u32>, Vec<String>, f64) {
    let region = Region::new(GLOBAL);
    let w = topic_workload(bindings, seed);
    let s = region.change();
    let total = s.bytes_allocated as f64 - s.bytes_deallocated as f64;
    let own = w.patterns.capacity() * std::mem::size_of::<String>()
        + w.patterns.iter().map(String::capacity).sum::<usize>();
    (w.router, w.patterns, total - own as f64)
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
    let keys = distinct_keys(&patterns, nkeys, 99 + size as u64);
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
