//! Fuzz target `roundtrip`: the check is [`amqp_fuzz::wire::roundtrip`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_fuzz::wire::roundtrip(data));
