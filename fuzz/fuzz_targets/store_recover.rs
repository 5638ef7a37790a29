//! Fuzz target `store_recover`: the check is
//! [`amqp_fuzz::broker::store_recover`] (arbitrary bytes as a data
//! directory's message segments; recovery never panics, cuts only the last
//! segment's tail, keeps publish order).
#![no_main]

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::alloc::System;

// Counts allocations so that each input's total is bounded (see
// `amqp_fuzz::ALLOCATION_LIMIT`).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_fuzz::bounded_allocation(GLOBAL, || {
    amqp_fuzz::broker::store_recover(data)
}));
