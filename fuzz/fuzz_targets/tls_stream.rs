//! Fuzz target `tls_stream`: the check is [`amqp_fuzz::tls::tls_stream`]
//! (arbitrary bytes, or a real client's records with arbitrary plaintext,
//! chunking and corruption, through the broker's rustls server
//! configuration into an AMQP connection and the core; never panics,
//! output bounded).
#![no_main]

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::alloc::System;

// Counts allocations so that each input's total is bounded (see
// `amqp_fuzz::ALLOCATION_LIMIT`).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_fuzz::bounded_allocation(GLOBAL, || {
    amqp_fuzz::tls::tls_stream(data)
}));
