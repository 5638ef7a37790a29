//! An in-memory broker for tests, simulations and fuzzing: client-role
//! connections wired to server-role connections and one [`Core`], with no
//! socket, thread or clock (in the spirit of quinn-proto's test `Pair`).
//!
//! The caller chooses how bytes are chunked (a function from "at most
//! this many" to a size), so the same harness serves a seeded simulation
//! and a fuzzer.

use crate::core::{ConnId, Core, CoreConfig, Peer};
use amqp_codec::{ClientConfig, Connection, Event, ServerConfig};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Instant;

/// One client wired to its server-side connection.
#[derive(Debug)]
pub struct Link {
    /// The core's id for the connection.
    pub id: ConnId,
    /// The client side.
    pub client: Connection,
    /// The broker side.
    pub server: Connection,
    c2s: VecDeque<Bytes>,
    s2c: VecDeque<Bytes>,
    /// The transport is gone (EOF delivered to both sides).
    pub dropped: bool,
}

/// A core and the links to it.
#[derive(Debug)]
pub struct Harness {
    /// The broker's core.
    pub core: Core,
    /// Every link ever made (dropped ones stay, so indices are stable).
    pub links: Vec<Link>,
    /// The simulated time.
    pub now: Instant,
    next_id: ConnId,
}

impl Harness {
    /// A core with `config`.
    pub fn new(config: CoreConfig) -> Harness {
        // The same run from the same seed in every process.
        crate::core::fixed_hashing_on_this_thread();
        let now = Instant::now();
        let mut core = Core::new(config);
        // A fixed wall clock: x-death timestamps are reproducible.
        core.set_clock(now, 1_700_000_000);
        Harness {
            core,
            links: Vec::new(),
            now,
            next_id: 1,
        }
    }

    /// A new link (not yet handshaken: call a pump); returns its index.
    pub fn connect(&mut self, client: ClientConfig, server: ServerConfig) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        self.core.connect(
            id,
            Peer {
                loopback: true,
                ..Peer::default()
            },
        );
        self.links.push(Link {
            id,
            client: Connection::client(client, self.now),
            server: Connection::server(server, self.now),
            c2s: VecDeque::new(),
            s2c: VecDeque::new(),
            dropped: false,
        });
        self.links.len() - 1
    }

    /// Two links with channel 1 open, the first consuming from a new
    /// queue `queue` (with `no_ack`); returns (consumer, publisher).
    pub fn consumer_and_publisher(&mut self, queue: &str, no_ack: bool) -> (usize, usize) {
        use amqp_codec::types::method::{BasicConsume, QueueDeclare};
        let (consumer, publisher) = (
            self.connect(ClientConfig::default(), ServerConfig::default()),
            self.connect(ClientConfig::default(), ServerConfig::default()),
        );
        assert!(self.settle(100).1, "handshakes");
        for l in [consumer, publisher] {
            self.links[l].client.open_channel_with(1).unwrap();
        }
        let name = amqp_codec::types::ShortString::try_from(queue).unwrap();
        let c = &mut self.links[consumer].client;
        c.send_method(
            1,
            QueueDeclare {
                queue: name.clone(),
                ..Default::default()
            },
        )
        .unwrap();
        c.send_method(
            1,
            BasicConsume {
                queue: name,
                no_ack,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(self.settle(100).1, "declare and consume");
        (consumer, publisher)
    }

    /// `n` messages with `body` from link `i` on channel 1 to the default
    /// exchange with `routing_key`, handled by the core as one batch (one
    /// read's worth) at the current time. Outboxes are left to the caller.
    pub fn publish_batch(&mut self, i: usize, routing_key: &str, body: Bytes, n: usize) {
        use amqp_codec::types::BasicProperties;
        use amqp_codec::types::method::BasicPublish;
        let l = &mut self.links[i];
        let publish = BasicPublish {
            routing_key: routing_key.try_into().unwrap_or_default(),
            ..Default::default()
        };
        for _ in 0..n {
            // A closed channel refuses; the caller's assertions see it.
            let _ = l.client.publish(
                1,
                publish.clone(),
                &BasicProperties::default(),
                body.clone(),
            );
        }
        while let Some(b) = l.client.poll_transmit() {
            l.server.handle_input(b);
        }
        let events: Vec<Event> = std::iter::from_fn(|| l.server.poll_event()).collect();
        self.core.handle(l.id, events, self.now);
    }

    /// Bytes straight into link `i`'s server side, as if its client sent
    /// them (garbage, half frames).
    pub fn inject(&mut self, i: usize, bytes: Bytes) {
        if let Some(l) = self.links.get_mut(i)
            && !l.dropped
        {
            l.c2s.push_back(bytes);
        }
    }

    /// The transport of link `i` goes away: bytes in flight are lost; both
    /// sides see EOF. Returns the client's events.
    pub fn drop_link(&mut self, i: usize) -> Vec<Event> {
        let now = self.now;
        let Some(l) = self.links.get_mut(i) else {
            return Vec::new();
        };
        if l.dropped {
            return Vec::new();
        }
        l.dropped = true;
        l.c2s.clear();
        l.s2c.clear();
        l.client.handle_eof();
        l.server.handle_eof();
        let events: Vec<Event> = std::iter::from_fn(|| l.server.poll_event()).collect();
        self.core.handle(l.id, events, now);
        self.apply_all();
        let l = &mut self.links[i];
        std::iter::from_fn(|| l.client.poll_event()).collect()
    }

    /// Advances the clock; timers of every connection and of the core
    /// run (the core's output is applied).
    pub fn advance(&mut self, by: std::time::Duration) {
        self.now += by;
        let now = self.now;
        for l in self.links.iter_mut().filter(|l| !l.dropped) {
            l.client.handle_timeout(now);
            l.server.handle_timeout(now);
        }
        self.core.handle_timeout(now);
        self.apply_all();
    }

    /// The core's output for every connection, applied to its server side.
    fn apply_all(&mut self) -> bool {
        let mut any = false;
        for l in self.links.iter_mut() {
            for out in self.core.take_outbox(l.id) {
                any = true;
                if !l.dropped {
                    let _ = out.apply_to(&mut l.server);
                }
            }
        }
        let _ = self.core.take_woken();
        for l in self.links.iter() {
            let _ = self.core.resume(l.id);
        }
        any
    }

    /// One round for link `i`: up to `chunks` chunks each way (sizes from
    /// `size`, given the most that is available), the server's events
    /// through the core and the core's output back. Returns whether
    /// anything moved, and the client's events.
    pub fn step(
        &mut self,
        i: usize,
        chunks: usize,
        size: &mut dyn FnMut(usize) -> usize,
    ) -> (bool, Vec<Event>) {
        let now = self.now;
        let mut moved = false;
        if self.links[i].dropped {
            return (false, Vec::new());
        }
        {
            let l = &mut self.links[i];
            while let Some(b) = l.client.poll_transmit() {
                l.c2s.push_back(b);
            }
            for _ in 0..chunks {
                let Some(chunk) = take_chunk(&mut l.c2s, size) else {
                    break;
                };
                l.server.handle_input(chunk);
                moved = true;
            }
        }
        loop {
            let l = &mut self.links[i];
            let events: Vec<Event> = std::iter::from_fn(|| l.server.poll_event()).collect();
            let had = !events.is_empty();
            if had {
                self.core.handle(l.id, events, now);
            }
            let out = self.apply_all();
            if !had && !out {
                break;
            }
            moved = true;
        }
        let l = &mut self.links[i];
        while let Some(b) = l.server.poll_transmit() {
            l.s2c.push_back(b);
        }
        for _ in 0..chunks {
            let Some(chunk) = take_chunk(&mut l.s2c, size) else {
                break;
            };
            l.client.handle_input(chunk);
            moved = true;
        }
        let events: Vec<Event> = std::iter::from_fn(|| l.client.poll_event()).collect();
        moved |= !events.is_empty();
        (moved, events)
    }

    /// Steps every link, in order, until nothing moves (at most `rounds`
    /// rounds); returns each link's client events, and whether it settled.
    pub fn settle(&mut self, rounds: usize) -> (Vec<(usize, Event)>, bool) {
        let mut all = Vec::new();
        for _ in 0..rounds {
            let mut moved = false;
            for i in 0..self.links.len() {
                let (m, ev) = self.step(i, usize::MAX, &mut |n| n);
                moved |= m;
                all.extend(ev.into_iter().map(|e| (i, e)));
            }
            if !moved {
                return (all, true);
            }
        }
        (all, false)
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new(CoreConfig::default())
    }
}

fn take_chunk(q: &mut VecDeque<Bytes>, size: &mut dyn FnMut(usize) -> usize) -> Option<Bytes> {
    while q.front().is_some_and(|b| b.is_empty()) {
        q.pop_front();
    }
    let front = q.front_mut()?;
    let n = size(front.len()).clamp(1, front.len());
    let chunk = front.split_to(n);
    if front.is_empty() {
        q.pop_front();
    }
    Some(chunk)
}

/// A small seeded generator for tests and simulations (splitmix64): the
/// same seed gives the same sequence everywhere. Not for anything but
/// reproducible test runs.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
