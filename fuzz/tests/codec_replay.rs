//! Replays every committed input of `fuzz/corpus/codec_ops/` through the
//! same check the `codec_ops` target runs (both roles, wired and lone: no panic, valid frames within frame_max), so
//! stable `cargo test` re-checks everything the fuzzer kept. A missing or
//! empty corpus directory is a failure.

#[test]
fn codec_ops_corpus_replays() {
    let inputs = amqp_fuzz::replay("codec_ops", amqp_fuzz::codec::codec_ops);
    assert!(!inputs.is_empty());
}
