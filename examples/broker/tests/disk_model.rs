//! A model-based test of durability, in the style of RabbitMQ's
//! `classic_queue_prop_SUITE`: random commands against the broker's core
//! (persistence on, two durable queues both bound to `amq.fanout`, so a
//! publish record may name one queue or both) whose message store runs on a
//! simulated disk ([`store::SimDisk`]) that loses and tears unsynced data at
//! a crash, fails fsync and fills up.
//!
//! Commands: publish persistent messages on a confirm channel, to one
//! queue or through the fanout to both; sync (the
//! core's store records are appended to the [`store::Log`] and synced, and
//! only then is `Core::durable` called, as the shell's store thread does);
//! basic.get with and without ack; consume (prefetch 3) and cancel; ack
//! (single and multiple); reject and nack, requeue or not; an injected
//! fsync failure or a full disk (the log reports it; from then on, as the
//! shell does, nothing is appended or confirmed until a restart); a clean
//! restart (everything synced, the next core recovers with `unclean =
//! false`); a killed process (the disk keeps what was written); a machine
//! crash (the disk drops and tears what was not synced). Each restart runs
//! [`store::recover_on`] over the disk into a fresh core.
//!
//! The model knows, for every message in every queue: whether a confirm
//! reached the client, whether its publish record is known synced, whether it left
//! the queue (ack, reject without requeue, no-ack get) and whether that
//! removal is known synced. Checked:
//!
//! * after every recovery: every message confirmed (or known synced) and
//!   whose removal never reached the log is there exactly once; nothing
//!   never published appears; a message whose removal was synced never
//!   comes back; a clean restart brings back exactly the messages in the
//!   queues and reports no damage; a dirty one reports at most a cut-off
//!   tail of the last segment; the core holds what recovery found;
//! * on every delivery: the message is in the queue and not already
//!   unacknowledged; one that may have been delivered before (in this or
//!   an earlier run, or that came back after its ack was lost) is flagged
//!   redelivered;
//! * every confirm is an ack, for an outstanding publish, once.
//!
//! The test can fail: `unsafe_confirms` runs the same model with the
//! harness calling `durable` before syncing (confirm before fsync) and
//! requires that some seed loses a confirmed message.
//!
//! `AMQP_DISK_SEED=n` replays one seed (with `AMQP_DISK_TRACE=1`: each
//! command); `AMQP_DISK_SEEDS=N` sets how many a run covers (default 2000).

use amqp_broker::core::CoreConfig;
use amqp_broker::paging::{MemPages, Pager, Paging};
use amqp_broker::store::{self, Disk, Log, SimDisk};
use amqp_broker::testing::Harness;
use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, Method, ShortString};
use amqp_codec::{ClientConfig, Event, ServerConfig};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

const DIR: &str = "/data/messages";
/// The durable queues; both are bound to `amq.fanout`.
const QUEUES: [&str; 2] = ["q0", "q1"];

/// A message in one queue: (queue index, message number).
type Key = (usize, u64);
const STEPS: usize = 150;

use amqp_broker::testing::SplitMix as Rng;

/// What the model knows of one message.
#[derive(Debug, Default, Clone)]
struct Msg {
    /// A confirm reached the client.
    confirmed: bool,
    /// Its publish record is known to be on disk.
    synced: bool,
    /// It left the queue (ack, reject/nack without requeue, no-ack get).
    removed: bool,
    /// ... and that removal was handed to the log (it may be on disk).
    removal_written: bool,
    /// ... and that removal is known to be on disk.
    removal_synced: bool,
    /// It did not survive a restart: it must never appear again.
    lost: bool,
    /// It may have been delivered before: the next delivery is flagged.
    seen: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Restart {
    Clean,
    Kill,
    Crash,
}

struct World {
    rng: Rng,
    disk: SimDisk,
    h: Harness,
    log: Log<SimDisk>,
    /// The log reported an error: nothing is appended or confirmed until
    /// the next restart (the shell's contract).
    failed: bool,
    /// Confirm before fsync (the bug `unsafe_confirms` must catch).
    unsafe_confirms: bool,
    msgs: BTreeMap<Key, Msg>,
    next_msg: u64,
    /// Confirm sequence number -> what was published, on this run's channel.
    outstanding: BTreeMap<u64, Vec<Key>>,
    next_seq: u64,
    /// Delivery tag -> message, unacknowledged on this run's channel.
    unacked: BTreeMap<u64, Key>,
    /// Gets sent: (queue, no_ack).
    pending_gets: VecDeque<(usize, bool)>,
    /// The queue the consumer (tag `c`) consumes from.
    consuming: Option<usize>,
    trace: bool,
    stats: Stats,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    commands: u64,
    restarts: u64,
    crashes: u64,
    faults: u64,
    recovered: u64,
    pages_read: u64,
    by_reference: u64,
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*));
        }
    };
}

fn body_id(body: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(body).ok()?.strip_prefix('m')?;
    s.split(' ').next()?.parse().ok()
}

fn boot(disk: &SimDisk, recovered: Option<(store::Recovered, bool)>) -> (Harness, Log<SimDisk>) {
    let mut h = Harness::new(CoreConfig::default());
    // Queues page beyond four messages, as main.rs sets it up: recovered
    // messages page as where their records are, read back from the
    // simulated disk's segments.
    let paging = Paging {
        window_messages: 4,
        window_bytes: 1 << 20,
        page_messages: 3,
        page_bytes: 1 << 20,
        memory_budget: 0,
    };
    h.core.set_pager(
        Pager::new(Box::<MemPages>::default(), paging)
            .with_records(Box::new(store::Segments::new(disk.clone(), Path::new(DIR)))),
    );
    h.connect(ClientConfig::default(), ServerConfig::default());
    h.settle(100);
    h.links[0].client.open_channel_with(1).unwrap();
    for q in QUEUES {
        let queue = ShortString::from_static(q);
        let client = &mut h.links[0].client;
        client
            .send_method(
                1,
                QueueDeclare {
                    queue: queue.clone(),
                    durable: true,
                    ..Default::default()
                },
            )
            .unwrap();
        client
            .send_method(
                1,
                QueueBind {
                    queue,
                    exchange: ShortString::from_static("amq.fanout"),
                    ..Default::default()
                },
            )
            .unwrap();
    }
    h.settle(100);
    // As main.rs does: persistence on, then the recovered messages in.
    h.core.enable_persistence();
    let mut live = store::Liveness::default();
    if let Some((mut r, unclean)) = recovered {
        live = std::mem::take(&mut r.live);
        h.core.recover_messages(r, unclean);
    }
    let mut log = Log::open_on(disk.clone(), Path::new(DIR), live).expect("open the log");
    log.set_segment_max(2048);
    h.links[0]
        .client
        .send_method(1, ConfirmSelect::default())
        .unwrap();
    h.settle(100);
    (h, log)
}

impl World {
    fn new(seed: u64, unsafe_confirms: bool) -> World {
        let disk = SimDisk::new(seed ^ 0x5151);
        let (h, log) = boot(&disk, None);
        World {
            rng: Rng(seed),
            disk,
            h,
            log,
            failed: false,
            unsafe_confirms,
            msgs: BTreeMap::new(),
            next_msg: 1,
            outstanding: BTreeMap::new(),
            next_seq: 1,
            unacked: BTreeMap::new(),
            pending_gets: VecDeque::new(),
            consuming: None,
            trace: std::env::var("AMQP_DISK_TRACE").is_ok(),
            stats: Stats::default(),
        }
    }

    fn settle(&mut self) -> Result<(), String> {
        let (events, settled) = self.h.settle(200);
        check!(settled, "the harness did not settle");
        for (_, e) in events {
            self.event(e)?;
        }
        Ok(())
    }

    fn event(&mut self, e: Event) -> Result<(), String> {
        match e {
            Event::Message { message, .. } => {
                let (tag, redelivered, q, no_ack) = match &message.method {
                    Method::BasicDeliver(d) => {
                        let q = self.consuming.ok_or("a delivery without a consumer")?;
                        (d.delivery_tag, d.redelivered, q, false)
                    }
                    Method::BasicGetOk(g) => {
                        let (q, no_ack) = self.pending_gets.pop_front().ok_or("get-ok unasked")?;
                        (g.delivery_tag, g.redelivered, q, no_ack)
                    }
                    m => return Err(format!("unexpected content {m:?}")),
                };
                let id = body_id(&message.body).ok_or("a body that is no message")?;
                let key = (q, id);
                let m = self
                    .msgs
                    .get_mut(&key)
                    .ok_or(format!("m{id} in q{q}: never published"))?;
                check!(
                    !m.removed && !m.lost,
                    "m{id} delivered but it left the queue: {m:?}"
                );
                check!(
                    !self.unacked.values().any(|&u| u == key),
                    "m{id} delivered while unacknowledged"
                );
                check!(
                    redelivered || !m.seen,
                    "m{id} may have been delivered before but is not flagged redelivered: {m:?}"
                );
                m.seen = true;
                if no_ack {
                    m.removed = true;
                } else {
                    self.unacked.insert(tag, key);
                }
            }
            Event::Method { method, .. } => match method {
                Method::BasicGetEmpty(_) => {
                    self.pending_gets.pop_front().ok_or("get-empty unasked")?;
                }
                Method::ChannelClose(c) => return Err(format!("channel closed: {c:?}")),
                _ => {}
            },
            Event::Confirm { ack, settled, .. } => {
                check!(ack, "a persistent publish was nacked");
                for s in settled {
                    let keys = self
                        .outstanding
                        .remove(&s)
                        .ok_or(format!("confirm of {s}: not outstanding"))?;
                    for key in keys {
                        let m = self.msgs.get_mut(&key).expect("published");
                        check!(
                            m.synced || self.unsafe_confirms,
                            "{key:?} confirmed before its record was synced"
                        );
                        m.confirmed = true;
                    }
                }
            }
            Event::ChannelClosed { .. } | Event::Closed { .. } => {
                return Err(format!("unexpected {e:?}"));
            }
            _ => {}
        }
        Ok(())
    }

    fn send(&mut self, m: impl Into<Method>) {
        self.h.links[0].client.send_method(1, m.into()).unwrap();
    }

    fn publish(&mut self) {
        let id = self.next_msg;
        self.next_msg += 1;
        let p = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        let pad = self.rng.below(200) as usize;
        let mut body = format!("m{id}").into_bytes();
        if pad > 0 {
            body.push(b' ');
            body.extend(std::iter::repeat_n(b'.', pad));
        }
        // One queue through the default exchange, or both through the
        // fanout (one record for both queues).
        let (method, queues) = match self.rng.below(3) {
            2 => (
                BasicPublish {
                    exchange: ShortString::from_static("amq.fanout"),
                    ..Default::default()
                },
                vec![0, 1],
            ),
            q => (
                BasicPublish {
                    routing_key: ShortString::from_static(QUEUES[q as usize]),
                    ..Default::default()
                },
                vec![q as usize],
            ),
        };
        self.h.links[0]
            .client
            .publish(1, method, &p, Bytes::from(body))
            .unwrap();
        let keys: Vec<Key> = queues.into_iter().map(|q| (q, id)).collect();
        for &k in &keys {
            self.msgs.insert(k, Msg::default());
        }
        self.outstanding.insert(self.next_seq, keys);
        self.next_seq += 1;
    }

    /// What the store thread does with one batch.
    fn sync(&mut self) {
        let Some((records, numbers)) = self.h.core.take_store_ops() else {
            return;
        };
        let upto = *numbers.end();
        if self.failed {
            return; // the store thread has stopped
        }
        for m in self.msgs.values_mut().filter(|m| m.removed) {
            m.removal_written = true;
        }
        if self.unsafe_confirms {
            self.h.core.durable(upto);
            let _ = self.h.core.take_woken();
        }
        match self.log.append(&records).and_then(|()| self.log.sync()) {
            Ok(()) => {
                if self.trace {
                    eprintln!("   synced {} records", records.len());
                }
                for m in self.msgs.values_mut().filter(|m| !m.lost) {
                    m.synced = true;
                    if m.removed {
                        m.removal_synced = true;
                    }
                }
                self.h.core.durable(upto);
                let _ = self.h.core.take_woken();
            }
            Err(e) => {
                if self.trace {
                    eprintln!("   store: {e} (records {records:?})");
                }
                self.failed = true;
            }
        }
    }

    fn restart(&mut self, how: Restart) -> Result<(), String> {
        self.stats.restarts += 1;
        if how == Restart::Clean {
            self.sync();
        }
        let how = if how == Restart::Clean && self.failed {
            Restart::Kill // the shell writes no clean mark after a store error
        } else {
            how
        };
        if how == Restart::Crash {
            self.stats.crashes += 1;
            self.disk.crash();
        }
        // The operator frees the disk; faults stop.
        self.disk.set_capacity(None);
        self.disk.fail_next_sync(0);
        let r = store::recover_on(&self.disk, Path::new(DIR))
            .map_err(|e| format!("recovery failed: {e}"))?;
        if self.trace {
            let ids: Vec<_> = r
                .queues
                .values()
                .flatten()
                .filter_map(|m| body_id(&m.body))
                .collect();
            let segs = self.disk.list(Path::new(DIR)).unwrap_or_default();
            eprintln!(
                "   {how:?} restart: recovered {ids:?}, warnings {:?}, segments {segs:?}",
                r.warnings
            );
        }
        check!(
            how != Restart::Clean || r.warnings.is_empty(),
            "a clean restart reported damage: {:?}",
            r.warnings
        );
        // Only the last segment can hold unsynced bytes (recovery syncs
        // what it read before a new segment starts), so damage is only
        // ever a cut-off tail.
        check!(
            r.warnings.iter().all(|w| w.contains("is cut off")),
            "damage inside the log: {:?}",
            r.warnings
        );
        // What came back.
        let mut present: BTreeMap<Key, bool> = BTreeMap::new();
        let mut counts = [0; QUEUES.len()];
        for (queue, msgs) in &r.queues {
            let q = QUEUES
                .iter()
                .position(|&n| n.as_bytes() == queue.1.as_bytes())
                .ok_or(format!("a queue never declared: {queue:?}"))?;
            for rm in msgs {
                let id = body_id(&rm.body).ok_or("a recovered body that is no message")?;
                check!(
                    present.insert((q, id), rm.redelivered).is_none(),
                    "m{id} recovered twice in q{q}"
                );
                counts[q] += 1;
            }
        }
        let n = present.len();
        for (&(q, id), &redelivered) in &present {
            let key = (q, id);
            let m = self
                .msgs
                .get(&key)
                .ok_or(format!("m{id} recovered in q{q}, never published there"))?;
            check!(!m.lost, "m{id} recovered after it was lost: {m:?}");
            check!(
                !m.removal_synced,
                "m{id} recovered after its removal was synced: {m:?}"
            );
            if how == Restart::Clean {
                check!(
                    !m.removed,
                    "m{id} recovered after a clean shutdown removed it"
                );
                check!(
                    redelivered || !m.seen,
                    "m{id} was delivered but recovers not redelivered after a clean shutdown"
                );
            }
        }
        for (&(q, id), m) in self.msgs.iter_mut().filter(|(_, m)| !m.lost) {
            // Confirmed (or known on disk) and not removed, or removed
            // but the removal never reached the log.
            let must = (m.confirmed || m.synced) && !m.removal_written;
            let must = must || (how == Restart::Clean && !m.removed);
            if present.contains_key(&(q, id)) {
                if m.removed {
                    // Its removal was lost: it is back, and may have been
                    // delivered (at least once).
                    m.removed = false;
                    m.removal_written = false;
                    m.seen = true;
                }
                // Recovery syncs what it read.
                m.synced = true;
                if how != Restart::Clean {
                    m.seen = true; // recovers redelivered
                }
            } else {
                check!(!must, "m{id} lost from q{q} by a {how:?} restart: {m:?}");
                m.lost = true;
            }
        }
        let (h, log) = boot(&self.disk, Some((r, how != Restart::Clean)));
        if let Some(p) = self.h.core.page_stats() {
            check!(p.lost == 0, "pages lost: {p:?}");
            self.stats.pages_read += p.read;
            self.stats.by_reference += p.by_reference;
        }
        self.h = h;
        self.log = log;
        self.stats.recovered += n as u64;
        for (q, name) in QUEUES.iter().enumerate() {
            let held = self.h.core.queue_counts("/", name);
            check!(
                held == Some((counts[q], 0)),
                "{name}: the core holds {held:?}, recovery found {}",
                counts[q]
            );
        }
        self.failed = false;
        self.outstanding.clear();
        self.next_seq = 1;
        self.unacked.clear();
        self.pending_gets.clear();
        self.consuming = None;
        Ok(())
    }

    fn pick_unacked(&mut self) -> Option<u64> {
        let n = self.unacked.len() as u64;
        if n == 0 {
            return None;
        }
        let i = self.rng.below(n) as usize;
        self.unacked.keys().nth(i).copied()
    }

    /// The tags a (multiple) settlement of `tag` covers, out of `unacked`.
    fn settle_tags(&mut self, tag: u64, multiple: bool, removed: bool) {
        let tags: Vec<u64> = if multiple {
            self.unacked.range(..=tag).map(|(t, _)| *t).collect()
        } else {
            vec![tag]
        };
        for t in tags {
            if let Some(key) = self.unacked.remove(&t)
                && removed
            {
                self.msgs.get_mut(&key).expect("published").removed = true;
            }
        }
    }

    fn step(&mut self) -> Result<(), String> {
        self.stats.commands += 1;
        let c = self.rng.below(100);
        if self.trace {
            eprintln!(
                "cmd {c:2} (unacked {:?}, failed {})",
                self.unacked, self.failed
            );
        }
        match c {
            0..=24 => {
                for _ in 0..=self.rng.below(3) {
                    self.publish();
                }
            }
            25..=44 => self.sync(),
            45..=54 => {
                let no_ack = self.rng.chance(20);
                let q = self.rng.below(QUEUES.len() as u64) as usize;
                self.pending_gets.push_back((q, no_ack));
                self.send(BasicGet {
                    queue: ShortString::from_static(QUEUES[q]),
                    no_ack,
                    ..Default::default()
                });
            }
            55..=58 => {
                if self.consuming.is_some() {
                    self.send(BasicCancel {
                        consumer_tag: ShortString::from_static("c"),
                        ..Default::default()
                    });
                    // Deliveries already on their way still come (and are
                    // settled below, before the next command).
                    self.settle()?;
                    self.consuming = None;
                } else {
                    let q = self.rng.below(QUEUES.len() as u64) as usize;
                    self.consuming = Some(q);
                    self.send(BasicQos {
                        prefetch_count: 3,
                        ..Default::default()
                    });
                    self.send(BasicConsume {
                        queue: ShortString::from_static(QUEUES[q]),
                        consumer_tag: ShortString::from_static("c"),
                        ..Default::default()
                    });
                }
            }
            59..=71 => {
                if let Some(tag) = self.pick_unacked() {
                    let multiple = self.rng.chance(25);
                    self.send(BasicAck {
                        delivery_tag: tag,
                        multiple,
                    });
                    self.settle_tags(tag, multiple, true);
                }
            }
            72..=79 => {
                if let Some(tag) = self.pick_unacked() {
                    let requeue = self.rng.chance(60);
                    if self.rng.chance(50) {
                        self.send(BasicReject {
                            delivery_tag: tag,
                            requeue,
                        });
                        self.settle_tags(tag, false, !requeue);
                    } else {
                        let multiple = self.rng.chance(25);
                        self.send(BasicNack {
                            delivery_tag: tag,
                            multiple,
                            requeue,
                        });
                        self.settle_tags(tag, multiple, !requeue);
                    }
                }
            }
            80..=82 => self.restart(Restart::Clean)?,
            83..=85 => self.restart(Restart::Kill)?,
            86..=91 => self.restart(Restart::Crash)?,
            92..=95 => {
                self.stats.faults += 1;
                self.disk.fail_next_sync(1);
            }
            _ => {
                self.stats.faults += 1;
                let room = self.rng.below(400);
                self.disk.set_capacity(Some(self.disk.used() + room));
            }
        }
        self.settle()
    }
}

fn run(seed: u64, unsafe_confirms: bool) -> Result<Stats, String> {
    let mut w = World::new(seed, unsafe_confirms);
    for step in 0..STEPS {
        w.step()
            .map_err(|e| format!("seed {seed}, step {step}: {e}"))?;
    }
    // The end: a crash must keep every confirmed message.
    w.restart(Restart::Crash)
        .map_err(|e| format!("seed {seed}, final crash: {e}"))?;
    Ok(w.stats)
}

#[test]
fn nothing_confirmed_is_lost_across_crashes_of_a_simulated_disk() {
    let seeds: Vec<u64> = match std::env::var("AMQP_DISK_SEED") {
        Ok(s) => vec![s.parse().expect("AMQP_DISK_SEED=n")],
        Err(_) => {
            let n = std::env::var("AMQP_DISK_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(2000);
            (0..n).collect()
        }
    };
    let started = std::time::Instant::now();
    let mut total = Stats::default();
    for &seed in &seeds {
        match run(seed, false) {
            Ok(s) => {
                total.commands += s.commands;
                total.restarts += s.restarts;
                total.crashes += s.crashes;
                total.faults += s.faults;
                total.recovered += s.recovered;
                total.pages_read += s.pages_read;
                total.by_reference += s.by_reference;
            }
            Err(e) => panic!("{e}\n(replay: AMQP_DISK_SEED={seed} AMQP_DISK_TRACE=1)"),
        }
    }
    if seeds.len() > 100 {
        assert!(total.by_reference > 0, "no recovered message paged");
    }
    eprintln!(
        "{} seeds, {} commands, {} restarts ({} crashes), {} injected faults, \
         {} messages recovered, {} pages read back ({} messages paged by \
         reference), in {:?}",
        seeds.len(),
        total.commands,
        total.restarts,
        total.crashes,
        total.faults,
        total.recovered,
        total.pages_read,
        total.by_reference,
        started.elapsed()
    );
}

/// The model catches a broker that confirms before fsync.
#[test]
fn unsafe_confirms() {
    let caught = (0..300).find_map(|seed| run(seed, true).err());
    let e = caught.expect("confirming before fsync lost nothing in 300 seeds");
    assert!(e.contains("lost"), "{e}");
    eprintln!("confirm before fsync, caught: {e}");
}

#[test]
fn write_atomically_survives_a_crash_of_the_simulated_disk() {
    // A clean write_atomically on the simulated disk survives a crash.
    let d = SimDisk::new(7);
    store::write_atomically_on(&d, Path::new("/data/definitions.json"), b"{}").unwrap();
    d.crash();
    assert_eq!(d.read(Path::new("/data/definitions.json")).unwrap(), b"{}");
}
