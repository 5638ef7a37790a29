//! Fuzz target `broker_ops`: the check is [`amqp_fuzz::broker::broker_ops`]
//! (arbitrary client operations, garbage, time and disconnects against
//! amqp-broker's core over in-memory connections; never panics, the core's
//! bookkeeping holds, the network settles).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_fuzz::broker::broker_ops(data));
