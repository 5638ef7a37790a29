//! Every committed input of every target (corpus and regressions) stays
//! within [`amqp_fuzz::ALLOCATION_LIMIT`] bytes allocated in total, as the
//! fuzz targets check for every input they run. Among them
//! `artifacts-regressions/codec_ops/quadratic-copy.bin`, which allocated
//! 8.3 GB when the frame decoder copied its partial frame for every chunk.
//!
//! One test function only: the counting allocator sees the whole process.

use amqp_fuzz::{
    ALLOCATION_LIMIT, allocated_by, broker, codec, committed_inputs, router, tls, wire,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// A target's name and its check.
type Target = (&'static str, fn(&[u8]));

#[test]
fn every_committed_input_allocates_within_the_limit() {
    let targets: [Target; 8] = [
        ("broker_ops", broker::broker_ops),
        ("store_recover", broker::store_recover),
        ("codec_ops", codec::codec_ops),
        ("router_ops", router::router_ops),
        ("parse_frames", wire::parse_frames),
        ("roundtrip", wire::roundtrip),
        ("field_table", wire::field_table),
        ("tls_stream", tls::tls_stream),
    ];
    for (target, check) in targets {
        let mut worst = (0, String::new());
        for (path, data) in committed_inputs(target) {
            let allocated = allocated_by(GLOBAL, || check(&data));
            assert!(
                allocated <= ALLOCATION_LIMIT,
                "{} allocated {allocated} bytes in total (limit {ALLOCATION_LIMIT})",
                path.display()
            );
            if allocated > worst.0 {
                worst = (allocated, path.display().to_string());
            }
        }
        println!(
            "{target}: at most {} bytes allocated ({})",
            worst.0, worst.1
        );
    }
    // The regression itself, named so that losing it fails here.
    let regression = committed_inputs("codec_ops")
        .into_iter()
        .find(|(p, _)| p.ends_with("quadratic-copy.bin"))
        .expect("fuzz/artifacts-regressions/codec_ops/quadratic-copy.bin");
    let allocated = allocated_by(GLOBAL, || codec::codec_ops(&regression.1));
    println!("quadratic-copy.bin: {allocated} bytes allocated");
    assert!(allocated <= 16 << 20, "{allocated} bytes");
}
