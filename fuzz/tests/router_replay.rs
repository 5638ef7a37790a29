//! Replays every committed input of `fuzz/corpus/router_ops/` through the
//! same check the `router_ops` target runs (router vs naive model), so
//! stable `cargo test` re-checks everything the fuzzer kept. A missing or
//! empty corpus directory is a failure.

#[test]
fn router_ops_corpus_replays() {
    let inputs = amqp_fuzz::committed_inputs("router_ops");
    let mut bytes = 0;
    for (path, data) in &inputs {
        bytes += data.len();
        let r = std::panic::catch_unwind(|| amqp_fuzz::router::router_ops(data));
        assert!(
            r.is_ok(),
            "input {} fails the router_ops check",
            path.display()
        );
    }
    println!(
        "router_ops: {} inputs, {bytes} bytes replayed",
        inputs.len()
    );
}
