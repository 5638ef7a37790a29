//! Fuzz target `router_ops`: the check is [`amqp_fuzz::router::router_ops`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_fuzz::router::router_ops(data));
