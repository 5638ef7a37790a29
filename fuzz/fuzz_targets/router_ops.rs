//! Fuzz target `router_ops`: the check is [`amqp_fuzz::router::router_ops`].
#![no_main]

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::alloc::System;

// Counts allocations so that each input's total is bounded (see
// `amqp_fuzz::ALLOCATION_LIMIT`).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_fuzz::bounded_allocation(GLOBAL, || {
    amqp_fuzz::router::router_ops(data)
}));
