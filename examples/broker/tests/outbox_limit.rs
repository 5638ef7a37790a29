//! A consumer's deliveries are bounded by what its connection has
//! written, not by what its shell has taken: a shell that keeps taking
//! and encoding deliveries without getting to write them (its publisher
//! neighbour keeps the core busy) must not grow its output without bound.
//! Before this held, a 1 KiB run could livelock: the consumer's task
//! encoded deliveries round after round, wrote nothing, received nothing
//! for seconds, and the broker spent most of its CPU zeroing fresh pages
//! for the growing output buffer.

use amqp_broker::core::{OUTBOX_LIMIT, Out};
use amqp_broker::testing::Harness;
use bytes::Bytes;

const BODY: usize = 1024;

/// Delivered body bytes in `outs`.
fn delivered(outs: &[Out]) -> usize {
    outs.iter()
        .filter_map(|o| match o {
            Out::Deliver { msg, .. } => Some(msg.size()),
            _ => None,
        })
        .sum()
}

#[test]
fn deliveries_taken_but_not_written_count_against_the_outbox_limit() {
    let mut h = Harness::default();
    let (consumer, publisher) = h.consumer_and_publisher("q", true);
    let cid = h.links[consumer].id;

    // Three times the limit, published in rounds; after each round the
    // consumer's shell takes its outbox (and encodes it) but never
    // finishes a write.
    let rounds = 3 * OUTBOX_LIMIT / BODY / 100;
    let total = rounds * 100;
    let mut taken = 0;
    for round in 0..rounds {
        h.publish_batch(publisher, "q", Bytes::from(vec![round as u8; BODY]), 100);
        let outs = h.core.take_outbox(cid);
        taken += delivered(&outs);
        for out in outs {
            out.apply_to(&mut h.links[consumer].server).unwrap();
        }
        assert!(
            taken <= OUTBOX_LIMIT + BODY,
            "round {round}: {taken} bytes handed to a consumer that wrote nothing"
        );
    }
    // (Each delivery also counts its method and header frames.)
    assert!(
        taken >= OUTBOX_LIMIT * 3 / 4,
        "about the limit goes out, not much less: {taken}"
    );

    // Each completed write lets about one limit's worth more through,
    // until everything is delivered.
    let mut writes = 0;
    while taken < total * BODY {
        assert!(h.core.resume(cid), "held back, so resumed");
        writes += 1;
        let outs = h.core.take_outbox(cid);
        let now = delivered(&outs);
        assert!(now > 0 && now <= OUTBOX_LIMIT + BODY, "{now} after a write");
        taken += now;
        assert!(writes <= 4, "{writes} writes for {taken} bytes");
    }
    assert_eq!(taken, total * BODY);
    // Nothing is left: a further write resumes nothing.
    assert!(!h.core.resume(cid));
}
