//! Fuzz target `codec_ops`: the check is [`amqp_fuzz::codec::codec_ops`]
//! (arbitrary input chunks, commands, timeouts and EOF applied to lone and
//! wired client/server `amqp-codec` connections; never panics, every
//! transmitted byte parses as frames within frame_max).
#![no_main]

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use std::alloc::System;

// Counts allocations so that each input's total is bounded (see
// `amqp_fuzz::ALLOCATION_LIMIT`).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_fuzz::bounded_allocation(GLOBAL, || {
    amqp_fuzz::codec::codec_ops(data)
}));
