//! Fuzz target `parse_frames`: the check is [`amqp_fuzz::wire::parse_frames`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_fuzz::wire::parse_frames(data));
