//! Fuzz target `codec_ops`: the check is [`amqp_fuzz::codec::codec_ops`]
//! (arbitrary input chunks, commands, timeouts and EOF applied to lone and
//! wired client/server `amqp-codec` connections; never panics, every
//! transmitted byte parses as frames within frame_max).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_fuzz::codec::codec_ops(data));
