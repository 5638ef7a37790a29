//! Replays every committed input of `fuzz/corpus/broker_ops/` through the
//! same check the `broker_ops` target runs (the broker's core driven by
//! arbitrary client operations: no panic, bookkeeping holds), so stable
//! `cargo test` re-checks everything the fuzzer kept. A missing or empty
//! corpus directory is a failure.

#[test]
fn broker_ops_corpus_replays() {
    let inputs = amqp_fuzz::replay("broker_ops", amqp_fuzz::broker::broker_ops);
    assert!(!inputs.is_empty());
}

#[test]
fn store_recover_corpus_replays() {
    let inputs = amqp_fuzz::replay("store_recover", amqp_fuzz::broker::store_recover);
    assert!(!inputs.is_empty());
}
