//! Replays every committed input of `fuzz/corpus/tls_stream/` through the
//! check the `tls_stream` target runs (bytes through the broker's rustls
//! server configuration into an AMQP connection and the core: no panic,
//! bounded output), so stable `cargo test` re-checks what the fuzzer kept.

#[test]
fn tls_stream_corpus_replays() {
    let inputs = amqp_fuzz::replay("tls_stream", amqp_fuzz::tls::tls_stream);
    assert!(!inputs.is_empty());
}
