//! Replays every committed input of `fuzz/corpus/codec_ops/` through the
//! same check the `codec_ops` target runs (both roles, wired and lone: no panic, valid frames within frame_max), so
//! stable `cargo test` re-checks everything the fuzzer kept. A missing or
//! empty corpus directory is a failure.

#[test]
fn codec_ops_corpus_replays() {
    let inputs = amqp_fuzz::committed_inputs("codec_ops");
    let mut bytes = 0;
    for (path, data) in &inputs {
        bytes += data.len();
        let r = std::panic::catch_unwind(|| amqp_fuzz::codec::codec_ops(data));
        assert!(
            r.is_ok(),
            "input {} fails the codec_ops check",
            path.display()
        );
    }
    println!("codec_ops: {} inputs, {bytes} bytes replayed", inputs.len());
}
