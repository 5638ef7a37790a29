//! Replays every committed input of `fuzz/corpus/router_ops/` through the
//! same check the `router_ops` target runs (router vs naive model), so
//! stable `cargo test` re-checks everything the fuzzer kept. A missing or
//! empty corpus directory is a failure.

#[test]
fn router_ops_corpus_replays() {
    let inputs = amqp_fuzz::replay("router_ops", amqp_fuzz::router::router_ops);
    assert!(!inputs.is_empty());
}
