//! Fuzz target `field_table`: the check is [`amqp_fuzz::wire::field_table`].
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_fuzz::wire::field_table(data));
