//! A queue's messages: ready ones in order, with requeued messages going
//! back to their original place.
//!
//! Every message enqueued gets the next sequence number. Ready messages
//! that were never delivered sit in a FIFO (`fresh`, O(1) at both ends);
//! a message that comes back (nack/reject with requeue, channel closed,
//! recover) goes into an ordered map keyed by its sequence number
//! (`returned`, O(log n)), so it is served again before every message
//! enqueued after it, as RabbitMQ's classic queues do. Taking the head
//! compares the two fronts. No operation costs more than O(log n) in the
//! queue's length.

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use amqp_types::{BasicProperties, ShortString};

/// A published message, stored once however many queues it reaches.
#[derive(Debug)]
pub struct Msg {
    /// The exchange it was published to.
    pub exchange: ShortString,
    /// The routing key it was published with.
    pub routing_key: ShortString,
    /// Its properties (BCC already removed).
    pub properties: BasicProperties,
    /// Its body.
    pub body: Bytes,
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
}

/// The ready messages of one queue.
#[derive(Debug, Default)]
pub struct Ready {
    fresh: VecDeque<Entry>,
    returned: BTreeMap<u64, Entry>,
    next_seq: u64,
    bytes: usize,
}

impl Ready {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ready messages.
    pub fn len(&self) -> usize {
        self.fresh.len() + self.returned.len()
    }

    /// Whether no message is ready.
    pub fn is_empty(&self) -> bool {
        self.fresh.is_empty() && self.returned.is_empty()
    }

    /// Body bytes of the ready messages.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends a new message at the tail.
    pub fn push(&mut self, msg: Arc<Msg>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += msg.size();
        self.fresh.push_back(Entry {
            seq,
            msg,
            redelivered: false,
        });
        seq
    }

    /// Puts a delivered message back in its original place, marked
    /// redelivered.
    pub fn requeue(&mut self, mut e: Entry) {
        e.redelivered = true;
        self.bytes += e.msg.size();
        // A message with a sequence number beyond the fresh FIFO's front
        // cannot be ahead of anything there; ordered insertion by key
        // keeps the head comparison right in every case.
        self.returned.insert(e.seq, e);
    }

    /// The head message, without taking it.
    pub fn peek(&self) -> Option<&Entry> {
        match (self.fresh.front(), self.returned.first_key_value()) {
            (Some(f), Some((&r, re))) => Some(if r < f.seq { re } else { f }),
            (Some(f), None) => Some(f),
            (None, Some((_, re))) => Some(re),
            (None, None) => None,
        }
    }

    /// Takes the head message.
    pub fn pop(&mut self) -> Option<Entry> {
        let from_returned = match (self.fresh.front(), self.returned.first_key_value()) {
            (Some(f), Some((&r, _))) => r < f.seq,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        let e = if from_returned {
            self.returned.pop_first().map(|(_, e)| e)
        } else {
            self.fresh.pop_front()
        }?;
        self.bytes -= e.msg.size();
        Some(e)
    }

    /// Removes every ready message; returns how many there were.
    pub fn purge(&mut self) -> usize {
        let n = self.len();
        self.fresh.clear();
        self.returned.clear();
        self.bytes = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &'static str) -> Arc<Msg> {
        Arc::new(Msg {
            exchange: ShortString::EMPTY,
            routing_key: ShortString::EMPTY,
            properties: BasicProperties::default(),
            body: Bytes::from_static(body.as_bytes()),
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
            r.push(msg(b));
        }
        let a = r.pop().unwrap();
        let b = r.pop().unwrap();
        let c = r.pop().unwrap();
        r.requeue(c);
        r.requeue(a);
        assert_eq!(r.len(), 3);
        assert_eq!(r.bytes(), 3);
        r.push(msg("e"));
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
    fn purge_counts_both_parts() {
        let mut r = Ready::new();
        r.push(msg("x"));
        r.push(msg("y"));
        let x = r.pop().unwrap();
        r.requeue(x);
        assert_eq!(r.peek().unwrap().seq, 0);
        assert_eq!(r.purge(), 2);
        assert!(r.pop().is_none());
    }
}
