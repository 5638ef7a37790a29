//! A queue's messages: ready ones in order, by priority level, with
//! requeued messages going back to their original place.
//!
//! Every message enqueued gets the next sequence number. Within a priority
//! level, ready messages that were never delivered sit in a FIFO (`fresh`,
//! O(1) at both ends); a message that comes back (nack/reject with
//! requeue, channel closed, recover) goes into an ordered map keyed by its
//! sequence number (`returned`, O(log n)), so it is served again before
//! every message enqueued after it, as RabbitMQ's classic queues do.
//! Taking the head compares the two fronts of the highest non-empty level
//! (a queue without `x-max-priority` has one level). No operation costs
//! more than O(log n) in the queue's length (times the number of levels,
//! at most 256).
//!
//! Messages may carry an expiry time; [`Ready::pop_expired`] takes expired
//! messages from the heads only, as RabbitMQ expires them (a short-lived
//! message behind a long-lived one stays, and stays counted).

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use amqp_types::{BasicProperties, ShortString};

/// A published message, stored once however many queues it reaches.
#[derive(Debug, Clone)]
pub struct Msg {
    /// The exchange it was published to.
    pub exchange: ShortString,
    /// The routing key it was published with.
    pub routing_key: ShortString,
    /// Its properties (BCC already removed).
    pub properties: BasicProperties,
    /// Its body.
    pub body: Bytes,
    /// Its id in the message store, when it is persistent and reached a
    /// durable queue.
    pub persist: Option<u64>,
    /// The `BCC` routing keys it was published with (removed from its
    /// headers; dead-lettering without a routing key routes by them too).
    pub bcc: Vec<ShortString>,
}

impl Msg {
    /// Bytes counted against length limits and memory (the body).
    pub fn size(&self) -> usize {
        self.body.len()
    }
}

/// A message in a queue.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the queue's enqueue order.
    pub seq: u64,
    /// The message.
    pub msg: Arc<Msg>,
    /// Delivered before (and requeued).
    pub redelivered: bool,
    /// Its priority level in the queue (0 without priorities).
    pub level: u8,
    /// When it expires (queue TTL or `expiration`, the lower), if ever.
    pub expires: Option<Instant>,
    /// How often it came back unacknowledged (quorum queues count it:
    /// `x-delivery-count`, `x-delivery-limit`).
    pub returns: u32,
}

#[derive(Debug, Default)]
struct Level {
    fresh: VecDeque<Entry>,
    returned: BTreeMap<u64, Entry>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.fresh.is_empty() && self.returned.is_empty()
    }

    /// Whether the head is in `returned`.
    fn head_returned(&self) -> bool {
        match (self.fresh.front(), self.returned.first_key_value()) {
            (Some(f), Some((&r, _))) => r < f.seq,
            (None, Some(_)) => true,
            (_, None) => false,
        }
    }

    fn peek(&self) -> Option<&Entry> {
        if self.head_returned() {
            self.returned.first_key_value().map(|(_, e)| e)
        } else {
            self.fresh.front()
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        if self.head_returned() {
            self.returned.pop_first().map(|(_, e)| e)
        } else {
            self.fresh.pop_front()
        }
    }
}

/// The ready messages of one queue.
#[derive(Debug)]
pub struct Ready {
    /// One level per priority, highest last.
    levels: Vec<Level>,
    /// Quorum queues: requeued messages wait here, in the order they came
    /// back, and are served before every other message (`None`: they go
    /// back to their place).
    returns: Option<VecDeque<Entry>>,
    len: usize,
    next_seq: u64,
    bytes: usize,
}

impl Default for Ready {
    fn default() -> Self {
        Ready::new()
    }
}

impl Ready {
    /// An empty queue without priorities.
    pub fn new() -> Self {
        Ready::with_priorities(0)
    }

    /// An empty queue with priorities 0 to `max` (`x-max-priority`).
    pub fn with_priorities(max: u8) -> Self {
        Ready {
            levels: (0..=max).map(|_| Level::default()).collect(),
            returns: None,
            len: 0,
            next_seq: 0,
            bytes: 0,
        }
    }

    /// An empty queue that serves requeued messages first, in the order
    /// they came back (a quorum queue's returns).
    pub fn returns_first() -> Self {
        Ready {
            returns: Some(VecDeque::new()),
            ..Ready::new()
        }
    }

    /// Ready messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no message is ready.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Body bytes of the ready messages.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The level a message of this priority goes to: priorities above the
    /// queue's maximum count as the maximum.
    pub fn level_of(&self, priority: Option<u8>) -> u8 {
        let max = (self.levels.len() - 1) as u8;
        priority.unwrap_or(0).min(max)
    }

    /// Appends a recovered message (redelivered if it was delivered
    /// before the restart).
    pub fn push_recovered(&mut self, msg: Arc<Msg>, redelivered: bool) {
        let level = usize::from(self.level_of(msg.properties.priority));
        self.push(msg, None);
        if let Some(e) = self.levels[level].fresh.back_mut() {
            e.redelivered = redelivered;
        }
    }

    /// Appends a new message at the tail of its level.
    pub fn push(&mut self, msg: Arc<Msg>, expires: Option<Instant>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += msg.size();
        self.len += 1;
        let level = self.level_of(msg.properties.priority);
        self.levels[usize::from(level)].fresh.push_back(Entry {
            seq,
            msg,
            redelivered: false,
            level,
            expires,
            returns: 0,
        });
        seq
    }

    /// Puts a delivered message back in its original place, marked
    /// redelivered.
    pub fn requeue(&mut self, mut e: Entry) {
        e.redelivered = true;
        self.bytes += e.msg.size();
        self.len += 1;
        if let Some(r) = &mut self.returns {
            r.push_back(e);
            return;
        }
        let level = usize::from(e.level).min(self.levels.len() - 1);
        self.levels[level].returned.insert(e.seq, e);
    }

    fn top(&self) -> Option<usize> {
        self.levels.iter().rposition(|l| !l.is_empty())
    }

    /// The head message (of the highest non-empty level), without taking
    /// it.
    pub fn peek(&self) -> Option<&Entry> {
        if let Some(e) = self.returns.as_ref().and_then(VecDeque::front) {
            return Some(e);
        }
        self.levels[self.top()?].peek()
    }

    /// Takes the head message.
    pub fn pop(&mut self) -> Option<Entry> {
        let e = match self.returns.as_mut().and_then(VecDeque::pop_front) {
            Some(e) => e,
            None => {
                let top = self.top()?;
                self.levels[top].pop()?
            }
        };
        self.len -= 1;
        self.bytes -= e.msg.size();
        Some(e)
    }

    /// Takes the head message if it has expired by `now` (only the head,
    /// the one a consumer would get next: an expired lower-priority message
    /// waits, counted, as in RabbitMQ).
    pub fn pop_expired(&mut self, now: Instant) -> Option<Entry> {
        if self.peek()?.expires.is_none_or(|t| t > now) {
            return None;
        }
        self.pop()
    }

    /// When the head expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.peek()?.expires
    }

    /// Removes and returns every ready message.
    pub fn drain(&mut self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.len);
        if let Some(r) = &mut self.returns {
            out.extend(r.drain(..));
        }
        for l in &mut self.levels {
            out.extend(l.fresh.drain(..));
            out.extend(std::mem::take(&mut l.returned).into_values());
        }
        self.len = 0;
        self.bytes = 0;
        out
    }

    /// Removes every ready message; returns how many there were.
    pub fn purge(&mut self) -> usize {
        let n = self.len;
        if let Some(r) = &mut self.returns {
            r.clear();
        }
        for l in &mut self.levels {
            l.fresh.clear();
            l.returned.clear();
        }
        self.len = 0;
        self.bytes = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg(body: &'static str, priority: Option<u8>) -> Arc<Msg> {
        Arc::new(Msg {
            exchange: ShortString::EMPTY,
            routing_key: ShortString::EMPTY,
            properties: BasicProperties {
                priority,
                ..Default::default()
            },
            body: Bytes::from_static(body.as_bytes()),
            persist: None,
            bcc: Vec::new(),
        })
    }

    fn bodies(r: &mut Ready) -> Vec<(String, bool)> {
        std::iter::from_fn(|| r.pop())
            .map(|e| {
                (
                    String::from_utf8(e.msg.body.to_vec()).unwrap(),
                    e.redelivered,
                )
            })
            .collect()
    }

    #[test]
    fn requeued_messages_go_back_to_their_place() {
        let mut r = Ready::new();
        for b in ["a", "b", "c", "d"] {
            r.push(msg(b, None), None);
        }
        let a = r.pop().unwrap();
        let b = r.pop().unwrap();
        let c = r.pop().unwrap();
        r.requeue(c);
        r.requeue(a);
        assert_eq!(r.len(), 3);
        assert_eq!(r.bytes(), 3);
        r.push(msg("e", None), None);
        drop(b);
        assert_eq!(
            bodies(&mut r),
            [
                ("a".into(), true),
                ("c".into(), true),
                ("d".into(), false),
                ("e".into(), false)
            ]
        );
        assert!(r.is_empty());
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn quorum_returns_are_served_first_in_the_order_they_came_back() {
        let mut r = Ready::returns_first();
        for b in ["a", "b", "c", "d"] {
            r.push(msg(b, None), None);
        }
        let a = r.pop().unwrap();
        let b = r.pop().unwrap();
        r.requeue(b);
        r.requeue(a);
        assert_eq!(r.len(), 4);
        assert_eq!(
            bodies(&mut r),
            [
                ("b".into(), true),
                ("a".into(), true),
                ("c".into(), false),
                ("d".into(), false)
            ]
        );
        r.push(msg("e", None), None);
        let e = r.pop().unwrap();
        r.requeue(e);
        assert_eq!(r.drain().len(), 1);
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn purge_counts_both_parts() {
        let mut r = Ready::new();
        r.push(msg("x", None), None);
        r.push(msg("y", None), None);
        let x = r.pop().unwrap();
        r.requeue(x);
        assert_eq!(r.peek().unwrap().seq, 0);
        assert_eq!(r.purge(), 2);
        assert!(r.pop().is_none());
    }

    #[test]
    fn higher_priorities_first_fifo_within_and_capped_at_the_max() {
        let mut r = Ready::with_priorities(5);
        r.push(msg("low1", Some(1)), None);
        r.push(msg("none", None), None);
        r.push(msg("high1", Some(5)), None);
        r.push(msg("over", Some(200)), None);
        r.push(msg("low2", Some(1)), None);
        let h = r.pop().unwrap();
        assert_eq!(&h.msg.body[..], b"high1");
        r.requeue(h);
        let got: Vec<String> = bodies(&mut r).into_iter().map(|(b, _)| b).collect();
        assert_eq!(got, ["high1", "over", "low1", "low2", "none"]);
    }

    #[test]
    fn only_the_head_expires() {
        let t0 = Instant::now();
        let mut r = Ready::new();
        r.push(msg("long", None), Some(t0 + Duration::from_secs(10)));
        r.push(msg("short", None), Some(t0 + Duration::from_millis(1)));
        assert_eq!(r.next_expiry(), Some(t0 + Duration::from_secs(10)));
        assert!(r.pop_expired(t0 + Duration::from_secs(1)).is_none());
        assert_eq!(r.len(), 2, "the expired message behind a live one stays");
        let e = r.pop_expired(t0 + Duration::from_secs(11)).unwrap();
        assert_eq!(&e.msg.body[..], b"long");
        assert!(r.pop_expired(t0 + Duration::from_secs(11)).is_some());
        assert!(r.is_empty());
        // Behind a higher priority that does not expire, a low one waits.
        let mut r = Ready::with_priorities(10);
        r.push(msg("hi", Some(9)), None);
        r.push(msg("lo", Some(1)), Some(t0));
        assert!(r.pop_expired(t0 + Duration::from_secs(1)).is_none());
        assert_eq!(r.next_expiry(), None);
        assert_eq!(r.len(), 2);
    }
}
