//! Fuzz target `broker_ops`: the check is [`amqp_fuzz::broker::broker_ops`]
//! (arbitrary client operations, garbage, time and disconnects against
//! amqp-broker's core over in-memory connections; never panics, the core's
//! bookkeeping holds, the network settles).
#![no_main]

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::alloc::System;

// Counts allocations so that each input's total is bounded (see
// `amqp_fuzz::ALLOCATION_LIMIT`).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_fuzz::bounded_allocation(GLOBAL, || {
    amqp_fuzz::broker::broker_ops(data)
}));
