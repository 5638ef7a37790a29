//! Consumer bias: a publisher pipelining into a queue whose consumers are
//! taking messages but falling behind is held (the shell reads nothing
//! more from it) until the queue has delivered as many as the publisher
//! put in, or for `FLOW_HOLD` at most. A publisher sending one message
//! at a time, or a queue whose consumers are idle, holds no one.

use amqp_broker::core::{FLOW_ACTIVE, FLOW_BACKLOG, FLOW_BATCH, FLOW_HOLD, OUTBOX_LIMIT};
use amqp_broker::testing::Harness;
use bytes::Bytes;

const BODY: usize = 1024;

/// `n` messages from `publisher` to queue `q`, handled as one batch (one
/// read's worth); the consumer's shell takes its output but writes
/// nothing (no `resume`), so its deliveries stop at the outbox limit.
fn batch(h: &mut Harness, publisher: usize, consumer: usize, n: usize) {
    h.publish_batch(publisher, "q", Bytes::from(vec![7; BODY]), n);
    let pid = h.links[publisher].id;
    let _ = h.core.take_outbox(pid);
    let cid = h.links[consumer].id;
    let _ = h.core.take_outbox(cid);
}

/// Connection `id`'s state as the management API reports it.
fn state(h: &Harness, id: u64) -> &'static str {
    let snap = h.core.snapshot();
    snap.connections.iter().find(|c| c.id == id).unwrap().state
}

/// A consumer (auto-ack) that has taken its outbox limit and a backlog of
/// more than `FLOW_BACKLOG` behind it, filled one message at a time (a
/// publisher that is never held).
fn behind() -> (Harness, usize, usize) {
    let mut h = Harness::default();
    let (consumer, publisher) = h.consumer_and_publisher("q", true);
    let pid = h.links[publisher].id;
    let n = OUTBOX_LIMIT / BODY + FLOW_BACKLOG + 10;
    for _ in 0..n {
        batch(&mut h, publisher, consumer, 1);
        assert!(!h.core.is_held(pid), "one message at a time is never held");
    }
    (h, consumer, publisher)
}

#[test]
fn a_pipelining_publisher_waits_until_the_consumers_took_as_many() {
    let (mut h, consumer, publisher) = behind();
    let (pid, cid) = (h.links[publisher].id, h.links[consumer].id);
    let _ = h.core.take_woken();

    // Fewer than FLOW_BATCH in one read: not held.
    batch(&mut h, publisher, consumer, FLOW_BATCH as usize - 1);
    assert!(!h.core.is_held(pid));
    // A pipelined batch into the backlog: held, with a deadline.
    batch(&mut h, publisher, consumer, 100);
    assert!(h.core.is_held(pid), "a batch of 100 into a backlog is held");
    assert_eq!(
        state(&h, pid),
        "flow",
        "management shows it as RabbitMQ does"
    );
    assert!(
        h.core
            .poll_timeout()
            .is_some_and(|t| t <= h.now + FLOW_HOLD),
        "a hold has a deadline"
    );

    // The consumer writes what it had: the core delivers about one
    // outbox limit more, many more than the 100 the publisher put in.
    assert!(h.core.resume(cid), "the consumer was throttled");
    assert!(!h.core.is_held(pid), "released by the consumer's progress");
    assert!(
        h.core.take_woken().contains(&pid),
        "its shell is woken to read again"
    );
}

#[test]
fn a_hold_ends_at_its_deadline_without_consumer_progress() {
    let (mut h, consumer, publisher) = behind();
    let pid = h.links[publisher].id;
    batch(&mut h, publisher, consumer, 100);
    assert!(h.core.is_held(pid));
    let _ = h.core.take_woken();

    h.core.handle_timeout(h.now + FLOW_HOLD / 2);
    assert!(h.core.is_held(pid), "not before the deadline");
    h.core.handle_timeout(h.now + FLOW_HOLD);
    assert!(!h.core.is_held(pid), "released at the deadline");
    assert!(h.core.take_woken().contains(&pid));
    // `flow` for a second after its last hold, then `running`.
    assert_eq!(state(&h, pid), "flow");
    h.core
        .handle_timeout(h.now + std::time::Duration::from_secs(1));
    assert_eq!(state(&h, pid), "running");
}

#[test]
fn idle_consumers_hold_no_publisher() {
    let (mut h, consumer, publisher) = behind();
    let pid = h.links[publisher].id;
    // The consumer has delivered nothing for FLOW_ACTIVE: the queue is
    // a buffer now (RabbitMQ does not slow a publisher for a slow
    // consumer either).
    h.now += FLOW_ACTIVE;
    batch(&mut h, publisher, consumer, 1000);
    assert!(
        !h.core.is_held(pid),
        "a backlog with idle consumers holds no one"
    );
}

#[test]
fn without_consumers_a_backlog_holds_no_publisher() {
    let mut h = Harness::default();
    let (consumer, publisher) = h.consumer_and_publisher("q", true);
    let pid = h.links[publisher].id;
    let cid = h.links[consumer].id;
    // The consumer goes away before anything is published.
    h.core.disconnect(cid);
    for _ in 0..(FLOW_BACKLOG / 100 + 3) {
        batch(&mut h, publisher, consumer, 100);
        assert!(!h.core.is_held(pid));
    }
}
