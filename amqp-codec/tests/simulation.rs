//! Deterministic simulation: the client role and the server role wired to
//! each other in memory, a simulated clock, seeded random chunking.
//!
//! Every seed is reproducible: `AMQP_SIM_SEED=1234 cargo test -p amqp-codec
//! --test simulation` runs just that one; `AMQP_SIM_SEEDS=N` sets how many
//! seeds a run covers (default 2000).

mod common;

use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, Method, ReplyCode};
use amqp_codec::{
    ClientConfig, CloseCause, Connection, Event, Initiator, ServerConfig, TimeoutKind,
};
use bytes::Bytes;
use common::{MiniBroker, Rng};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

struct Pair {
    rng: Rng,
    now: Instant,
    client: Connection,
    server: Connection,
    broker: MiniBroker,
    c2s: VecDeque<Bytes>,
    s2c: VecDeque<Bytes>,
    client_events: Vec<Event>,
    /// Deliver nothing from the server to the client (a silent peer).
    server_silent: bool,
    max_chunk: u64,
}

impl Pair {
    fn new(seed: u64, ccfg: ClientConfig, scfg: ServerConfig) -> Pair {
        let now = Instant::now();
        let mut rng = Rng(seed);
        let max_chunk = [1, 7, 64, 1000, 70_000][rng.range(0, 4) as usize];
        Pair {
            now,
            client: Connection::client(ccfg, now),
            server: Connection::server(scfg, now),
            broker: MiniBroker::default(),
            c2s: VecDeque::new(),
            s2c: VecDeque::new(),
            client_events: vec![],
            server_silent: false,
            max_chunk,
            rng,
        }
    }

    /// Splits a queue of segments into one random chunk.
    fn take_chunk(rng: &mut Rng, q: &mut VecDeque<Bytes>, max: u64) -> Option<Bytes> {
        let front = q.front_mut()?;
        let n = (rng.range(1, max) as usize).min(front.len());
        let chunk = front.split_to(n);
        if front.is_empty() {
            q.pop_front();
        }
        Some(chunk)
    }

    /// Moves bytes and events until both sides are quiet; returns whether
    /// anything moved.
    fn drive(&mut self) -> bool {
        let mut any = false;
        for _ in 0..10_000_000 {
            let mut moved = false;
            while let Some(b) = self.client.poll_transmit() {
                self.c2s.push_back(b);
            }
            while let Some(b) = self.server.poll_transmit() {
                if !self.server_silent {
                    self.s2c.push_back(b);
                }
            }
            // Deliver a few chunks each way, in random order.
            for _ in 0..self.rng.range(1, 64) {
                if self.rng.chance(50) {
                    if let Some(c) = Self::take_chunk(&mut self.rng, &mut self.c2s, self.max_chunk)
                    {
                        self.server.handle_input(c);
                        moved = true;
                    }
                } else if let Some(c) =
                    Self::take_chunk(&mut self.rng, &mut self.s2c, self.max_chunk)
                {
                    self.client.handle_input(c);
                    moved = true;
                }
            }
            self.broker.handle(&mut self.server);
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(e);
                moved = true;
            }
            let pending = !self.c2s.is_empty() || !self.s2c.is_empty();
            any |= moved;
            if !moved
                && !pending
                && self.client.bytes_queued() == 0
                && self.server.bytes_queued() == 0
            {
                return any;
            }
        }
        panic!("no quiescence");
    }

    /// Advances the simulated clock by `d` in small random steps, firing
    /// timers on both sides and moving bytes.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            let step = Duration::from_millis(self.rng.range(1, 300));
            self.now = (self.now + step).min(end);
            for c in [&mut self.client, &mut self.server] {
                if c.poll_timeout().is_some_and(|t| t <= self.now) {
                    c.handle_timeout(self.now);
                }
            }
            self.drive();
        }
    }

    fn take_client_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.client_events)
    }
}

fn run_seed(seed: u64) {
    let mut rng = Rng(seed ^ 0xA5A5);
    let frame_max = [4096, 8192, 131_072, 0][rng.range(0, 3) as usize];
    let heartbeat = [0u16, 1, 2, 5][rng.range(0, 3) as usize];
    let channels = rng.range(1, 12) as u16;
    let ccfg = ClientConfig {
        frame_max,
        heartbeat: Some(heartbeat),
        channel_max: rng.range(0, 1) as u16 * 64,
        ..Default::default()
    };
    let scfg = ServerConfig {
        frame_max: 131_072,
        heartbeat: 60,
        ..Default::default()
    };
    let mut p = Pair::new(seed, ccfg, scfg);
    p.drive();
    let ev = p.take_client_events();
    let Some(Event::Connected { tuning, .. }) = ev.first() else {
        panic!("seed {seed}: no Connected: {ev:?}");
    };
    assert_eq!(tuning.heartbeat, heartbeat);
    assert_eq!(p.server.tuning(), *tuning);
    assert!(p.client.peer_capabilities().publisher_confirms);

    // Open channels, select confirms, declare, consume.
    let mut chans = vec![];
    for _ in 0..channels {
        chans.push(p.client.open_channel().unwrap());
    }
    p.drive();
    let opened = p
        .take_client_events()
        .iter()
        .filter(|e| matches!(e, Event::ChannelOpened { .. }))
        .count();
    assert_eq!(opened, chans.len(), "seed {seed}");
    for &ch in &chans {
        let q = format!("q{ch}");
        p.client
            .send_method(ch, ConfirmSelect { nowait: false })
            .unwrap();
        p.client
            .send_method(
                ch,
                QueueDeclare {
                    queue: q.as_str().try_into().unwrap(),
                    durable: true,
                    ..Default::default()
                },
            )
            .unwrap();
        p.client
            .send_method(
                ch,
                BasicQos {
                    prefetch_count: 1,
                    ..Default::default()
                },
            )
            .unwrap();
        p.client
            .send_method(
                ch,
                BasicConsume {
                    queue: q.as_str().try_into().unwrap(),
                    ..Default::default()
                },
            )
            .unwrap();
    }
    p.drive();
    for &ch in &chans {
        assert_eq!(p.client.consumer_tags(ch).len(), 1, "seed {seed}");
    }

    // Publish with confirms; each message comes back by deliver; ack.
    let mut sent: BTreeMap<(u16, usize), Bytes> = BTreeMap::new();
    let per_channel = rng.range(1, 6) as usize;
    for i in 0..per_channel {
        for &ch in &chans {
            let len = match rng.range(0, 5) {
                0 => 0,
                1 => rng.range(1, 10),
                2 if p.max_chunk > 1 => 4088,
                3 if p.max_chunk > 1 => 4089,
                2 | 3 => 100,
                _ => rng.range(
                    0,
                    [300, 3_000, 40_000]
                        [(p.max_chunk >= 10) as usize + (p.max_chunk >= 1000) as usize],
                ),
            } as usize;
            let body: Bytes = (0..len)
                .map(|k| (k ^ i ^ ch as usize) as u8)
                .collect::<Vec<u8>>()
                .into();
            let props = BasicProperties {
                message_id: Some(format!("{ch}-{i}").as_str().try_into().unwrap()),
                delivery_mode: Some(2),
                ..Default::default()
            };
            let seq = p
                .client
                .publish(
                    ch,
                    BasicPublish {
                        routing_key: format!("q{ch}").as_str().try_into().unwrap(),
                        ..Default::default()
                    },
                    &props,
                    body.clone(),
                )
                .unwrap();
            assert_eq!(seq, Some(i as u64 + 1));
            sent.insert((ch, i), body);
        }
        if rng.chance(30) {
            p.advance(Duration::from_millis(rng.range(0, 3000)));
        }
    }
    p.drive();
    let mut got = 0;
    let mut confirmed = 0;
    let mut last_tag: BTreeMap<u16, u64> = BTreeMap::new();
    for e in p.take_client_events() {
        match e {
            Event::Message {
                channel, message, ..
            } => {
                let Method::BasicDeliver(d) = &message.method else {
                    panic!()
                };
                let id = message.properties.message_id.as_ref().unwrap().to_string();
                let (c, i) = id.split_once('-').unwrap();
                let key = (c.parse::<u16>().unwrap(), i.parse::<usize>().unwrap());
                assert_eq!(key.0, channel);
                assert_eq!(sent[&key], message.body, "seed {seed}: body of {id}");
                last_tag.insert(channel, d.delivery_tag);
                got += 1;
            }
            Event::Confirm {
                ack: true, settled, ..
            } => confirmed += settled.len(),
            Event::ProtocolError(e) => panic!("seed {seed}: {e}"),
            _ => {}
        }
    }
    assert_eq!(got, sent.len(), "seed {seed}");
    assert_eq!(confirmed, sent.len(), "seed {seed}");
    for &ch in &chans {
        assert_eq!(p.client.unconfirmed(ch), 0);
        let tag = last_tag[&ch];
        if rng.chance(50) {
            p.client.ack(ch, tag, true).unwrap();
        } else {
            for t in 1..=tag {
                p.client.ack(ch, t, false).unwrap();
            }
        }
        assert!(
            p.client.ack(ch, tag + 1, false).is_err(),
            "unknown tag accepted"
        );
    }
    p.drive();

    // Idle with heartbeats: the connection must stay up.
    p.advance(Duration::from_secs(rng.range(0, 8)));
    assert!(
        p.client.is_open() && p.server.is_open(),
        "seed {seed}: idle killed it"
    );

    // Close some channels from either side.
    for &ch in &chans {
        match rng.range(0, 2) {
            0 => p
                .client
                .close_channel(ch, ReplyCode::REPLY_SUCCESS, "bye")
                .unwrap(),
            1 => p
                .server
                .close_channel(ch, ReplyCode::REPLY_SUCCESS, "bye")
                .unwrap(),
            _ => {
                // both at once
                p.client
                    .close_channel(ch, ReplyCode::REPLY_SUCCESS, "bye")
                    .unwrap();
                p.server
                    .close_channel(ch, ReplyCode::REPLY_SUCCESS, "bye")
                    .unwrap();
            }
        }
    }
    p.drive();
    let closed = p
        .take_client_events()
        .iter()
        .filter(|e| matches!(e, Event::ChannelClosed { .. }))
        .count();
    assert_eq!(closed, chans.len(), "seed {seed}");
    assert_eq!(p.client.channel_count(), 0);
    assert_eq!(p.server.channel_count(), 0);

    // Close the connection: client, server or both at once.
    match rng.range(0, 3) {
        0 => p.client.close(ReplyCode::REPLY_SUCCESS, "bye").unwrap(),
        1 => p
            .server
            .close(ReplyCode::CONNECTION_FORCED, "forced")
            .unwrap(),
        2 => {
            p.client.close(ReplyCode::REPLY_SUCCESS, "bye").unwrap();
            p.server.close(ReplyCode::REPLY_SUCCESS, "bye").unwrap();
        }
        _ => {
            // A silent server: the client times it out (heartbeat) or the
            // close-ok never comes.
            p.server_silent = true;
            if heartbeat == 0 {
                p.client.close(ReplyCode::REPLY_SUCCESS, "bye").unwrap();
            }
            p.advance(Duration::from_secs(u64::from(heartbeat) * 3 + 4));
            let ev = p.take_client_events();
            let cause = ev.iter().find_map(|e| match e {
                Event::Closed { cause } => Some(cause.clone()),
                _ => None,
            });
            let want = if heartbeat == 0 {
                TimeoutKind::CloseOk
            } else {
                TimeoutKind::Heartbeat
            };
            assert_eq!(cause, Some(CloseCause::Timeout(want)), "seed {seed}");
            return;
        }
    }
    p.drive();
    assert!(p.client.is_closed(), "seed {seed}: client not closed");
    assert!(p.server.is_closed(), "seed {seed}: server not closed");
    let cause = p.take_client_events().into_iter().find_map(|e| match e {
        Event::Closed { cause } => Some(cause),
        _ => None,
    });
    assert!(
        matches!(
            cause,
            Some(CloseCause::Closed {
                initiator: Initiator::Local | Initiator::Peer,
                ..
            })
        ),
        "seed {seed}: {cause:?}"
    );
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("AMQP_SIM_SEED") {
        return vec![s.parse().expect("AMQP_SIM_SEED")];
    }
    let n = std::env::var("AMQP_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    (0..n).collect()
}

#[test]
fn simulation_many_seeds() {
    let seeds = seeds();
    for &seed in &seeds {
        let r = std::panic::catch_unwind(|| run_seed(seed));
        if r.is_err() {
            panic!("simulation failed for seed {seed}; rerun with AMQP_SIM_SEED={seed}");
        }
    }
    println!("simulation: {} seeds passed", seeds.len());
}

/// A peer that stops sending: dead after two heartbeat intervals, not
/// before.
#[test]
fn silent_peer_times_out_after_two_intervals() {
    let ccfg = ClientConfig {
        heartbeat: Some(2),
        ..Default::default()
    };
    let mut p = Pair::new(7, ccfg, ServerConfig::default());
    p.drive();
    assert!(p.client.is_open());
    let start = p.now;
    p.server_silent = true;
    let mut died = None;
    while died.is_none() && p.now < start + Duration::from_secs(20) {
        p.advance(Duration::from_millis(100));
        if p.client.is_closed() {
            died = Some(p.now - start);
        }
    }
    let died = died.expect("never timed out");
    assert!(
        died >= Duration::from_secs(4) && died <= Duration::from_secs(6),
        "{died:?}"
    );
    assert!(p.take_client_events().contains(&Event::Closed {
        cause: CloseCause::Timeout(TimeoutKind::Heartbeat)
    }));
}

/// A paused peer monitor (the embedder stopped reading a blocked peer)
/// does not count the peer's silence: the connection outlives many
/// intervals, and dies two intervals after the monitor restarts.
#[test]
fn a_paused_peer_monitor_keeps_a_silent_peer() {
    let ccfg = ClientConfig {
        heartbeat: Some(2),
        ..Default::default()
    };
    let mut p = Pair::new(7, ccfg, ServerConfig::default());
    p.drive();
    assert!(p.client.is_open());
    p.client.pause_peer_monitor(true);
    p.server_silent = true;
    let start = p.now;
    while p.now < start + Duration::from_secs(20) {
        p.advance(Duration::from_millis(100));
    }
    assert!(p.client.is_open(), "paused: still alive after 10 intervals");
    p.client.pause_peer_monitor(false);
    let resumed = p.now;
    while p.client.is_open() && p.now < resumed + Duration::from_secs(20) {
        p.advance(Duration::from_millis(100));
    }
    let died = p.now - resumed;
    assert!(
        died >= Duration::from_secs(4) && died <= Duration::from_secs(6),
        "{died:?}"
    );
}

/// Heartbeats go out when nothing else does: a client with heartbeat 1
/// sends at least one every second of idleness.
#[test]
fn heartbeats_are_sent_when_idle() {
    let now = Instant::now();
    let mut c = Connection::client(
        ClientConfig {
            heartbeat: Some(1),
            ..Default::default()
        },
        now,
    );
    let mut s = Connection::server(ServerConfig::default(), now);
    let mut b = MiniBroker::default();
    for _ in 0..10 {
        while let Some(x) = c.poll_transmit() {
            s.handle_input(x);
        }
        b.handle(&mut s);
        while let Some(x) = s.poll_transmit() {
            c.handle_input(x);
        }
    }
    assert!(c.is_open());
    while c.poll_event().is_some() {}
    let mut t = now;
    let mut heartbeats = 0;
    for _ in 0..40 {
        t += Duration::from_millis(100);
        if c.poll_timeout().is_some_and(|d| d <= t) {
            c.handle_timeout(t);
        }
        while let Some(x) = c.poll_transmit() {
            assert_eq!(&x[..], &[8, 0, 0, 0, 0, 0, 0, 0xCE]);
            heartbeats += 1;
            // the server echoes activity so the client stays alive
            c.handle_input(Bytes::from_static(&[8, 0, 0, 0, 0, 0, 0, 0xCE]));
        }
    }
    assert!(
        (6..=8).contains(&heartbeats),
        "{heartbeats} heartbeats in 4 s"
    );
    assert!(c.is_open());
}

#[test]
fn handshake_timeout() {
    let now = Instant::now();
    let mut c = Connection::client(ClientConfig::default(), now);
    let t = c.poll_timeout().unwrap();
    assert_eq!(t, now + Duration::from_secs(10));
    c.handle_timeout(t);
    assert!(c.is_closed());
    assert_eq!(
        c.poll_event(),
        Some(Event::Closed {
            cause: CloseCause::Timeout(TimeoutKind::Handshake)
        })
    );
}
