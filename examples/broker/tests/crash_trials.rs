//! Crash trials: a producer publishes persistent messages with confirms to
//! a durable queue while a consumer acknowledges some; the broker is killed
//! with SIGKILL at a random moment and restarted on the same data
//! directory; the queue is drained. Every confirmed message must be back
//! unless it was acknowledged before the crash (lost must be 0), nothing
//! that was never published may appear, and every message that comes back
//! after having been delivered is flagged redelivered.
//!
//! `AMQP_CRASH_TRIALS=N` sets the number of trials (default 5, as CI runs;
//! `benches/crash_trials.sh` runs 100); `AMQP_CRASH_SEED` the first seed.
//! The broker runs with a paging window of 200 messages, so queues page.
//! A kill -9 leaves the page cache intact, so this cannot catch a confirm
//! sent before fsync; it catches lost records, bad recovery and bad
//! bookkeeping.

mod support;

use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, Method};
use amqp_codec::{ClientConfig, Connection, Event};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const QUEUE: &str = "crash-trials";

/// The broker process, killed when dropped (also when a check fails).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(addr: SocketAddr, data: &Path) -> Running {
    // A paging window of 200 messages: the queue pages under load, and
    // the pages (a cache, thrown away at start) must never stand in for
    // the store.
    let config = data.with_extension("toml");
    std::fs::write(
        &config,
        "[paging]\nwindow_messages = 200\npage_messages = 100\nmemory_budget = 0\n",
    )
    .expect("write the config");
    let child = Command::new(env!("CARGO_BIN_EXE_amqp-broker"))
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start amqp-broker");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the broker did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }
    Running(child)
}

/// A connection driven by hand; `None` once the broker is gone.
struct Link {
    conn: Connection,
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Link {
    fn open(addr: SocketAddr) -> Option<Link> {
        let sock = TcpStream::connect(addr).ok()?;
        sock.set_read_timeout(Some(Duration::from_millis(5))).ok()?;
        let mut l = Link {
            conn: Connection::client(ClientConfig::default(), Instant::now()),
            sock,
            buf: vec![0; 256 * 1024],
        };
        l.wait(|e| matches!(e, Event::Connected { .. }))?;
        l.conn.open_channel_with(1).ok()?;
        l.wait(|e| matches!(e, Event::ChannelOpened { .. }))?;
        Some(l)
    }

    /// Sends what is queued and reads what is there; returns the events,
    /// or `None` when the connection is gone.
    fn pump(&mut self) -> Option<Vec<Event>> {
        while let Some(b) = self.conn.poll_transmit() {
            self.sock.write_all(&b).ok()?;
        }
        match self.sock.read(&mut self.buf) {
            Ok(0) => return None,
            Ok(n) => self
                .conn
                .handle_input(Bytes::copy_from_slice(&self.buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return None,
        }
        let ev: Vec<Event> = std::iter::from_fn(|| self.conn.poll_event()).collect();
        if ev.iter().any(|e| matches!(e, Event::Closed { .. })) {
            return None;
        }
        while let Some(b) = self.conn.poll_transmit() {
            self.sock.write_all(&b).ok()?;
        }
        Some(ev)
    }

    fn wait(&mut self, mut f: impl FnMut(&Event) -> bool) -> Option<Event> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            for e in self.pump()? {
                if f(&e) {
                    return Some(e);
                }
            }
        }
        None
    }

    fn call(&mut self, m: impl Into<Method>) -> Option<()> {
        self.conn.send_method(1, m).ok()?;
        self.wait(|e| matches!(e, Event::Method { .. })).map(|_| ())
    }
}

#[derive(Default)]
struct Seen {
    published: BTreeSet<u64>,
    confirmed: BTreeSet<u64>,
    delivered: BTreeSet<u64>,
    acked: BTreeSet<u64>,
}

fn declare(l: &mut Link) -> Option<()> {
    l.call(QueueDeclare {
        queue: QUEUE.try_into().unwrap(),
        durable: true,
        ..Default::default()
    })
}

fn producer(addr: SocketAddr, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let Some(mut l) = Link::open(addr) else {
        return;
    };
    if declare(&mut l).is_none() || l.call(ConfirmSelect::default()).is_none() {
        return;
    }
    let props = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    // publish sequence number -> message id
    let mut outstanding: BTreeMap<u64, u64> = BTreeMap::new();
    let mut next = 1u64;
    while !stop.load(Ordering::Relaxed) {
        // A modest pace, so that the consumer keeps up and acknowledgements
        // race the crash too.
        std::thread::sleep(Duration::from_millis(1));
        while outstanding.len() < 200 {
            let id = next;
            next += 1;
            let Ok(Some(seq)) = l.conn.publish(
                1,
                BasicPublish {
                    routing_key: QUEUE.try_into().unwrap(),
                    ..Default::default()
                },
                &props,
                Bytes::from(id.to_be_bytes().to_vec()),
            ) else {
                return;
            };
            outstanding.insert(seq, id);
            seen.lock().unwrap().published.insert(id);
        }
        let Some(events) = l.pump() else { return };
        for e in events {
            if let Event::Confirm { settled, ack, .. } = e {
                let mut s = seen.lock().unwrap();
                for seq in settled {
                    if let Some(id) = outstanding.remove(&seq)
                        && ack
                    {
                        s.confirmed.insert(id);
                    }
                }
            }
        }
    }
}

fn consumer(addr: SocketAddr, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>, seed: u64) {
    let Some(mut l) = Link::open(addr) else {
        return;
    };
    if declare(&mut l).is_none()
        || l.call(BasicQos {
            prefetch_count: 50,
            ..Default::default()
        })
        .is_none()
        || l.call(BasicConsume {
            queue: QUEUE.try_into().unwrap(),
            ..Default::default()
        })
        .is_none()
    {
        return;
    }
    let mut rng = seed | 1;
    // Deliveries held back: acknowledged later, so that some are always
    // unacknowledged when the broker dies.
    let mut held: std::collections::VecDeque<(u64, u64)> = Default::default();
    while !stop.load(Ordering::Relaxed) {
        let Some(events) = l.pump() else { return };
        for e in events {
            if let Event::Message { message, .. } = e
                && let Method::BasicDeliver(d) = &message.method
            {
                let id = u64::from_be_bytes(message.body[..8].try_into().unwrap());
                seen.lock().unwrap().delivered.insert(id);
                // Acknowledge about two thirds, leave the rest unacked.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                held.push_back((d.delivery_tag, id));
                let keep = !rng.is_multiple_of(3);
                if keep || held.len() > 20 {
                    let (tag, id) = if keep {
                        held.pop_back().unwrap_or((d.delivery_tag, id))
                    } else {
                        held.pop_front().unwrap_or((d.delivery_tag, id))
                    };
                    if l.conn.ack(1, tag, false).is_err() {
                        return;
                    }
                    seen.lock().unwrap().acked.insert(id);
                }
            }
        }
    }
}

/// One trial; returns (confirmed, acked, recovered, duplicates, lost).
fn trial(seed: u64, port: u16) -> (usize, usize, usize, usize, usize) {
    let data = std::env::temp_dir().join(format!("amqp-crash-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut broker = start(addr, &data);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let p = {
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || producer(addr, s, st))
    };
    let c = {
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || consumer(addr, s, st, seed))
    };
    // Kill at a random moment.
    let wait = 200 + (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) % 1300;
    std::thread::sleep(Duration::from_millis(wait));
    broker.0.kill().expect("SIGKILL");
    broker.0.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    p.join().unwrap();
    c.join().unwrap();
    // What the kill left, kept (beside the data directory) when the trial
    // fails, so that a loss can be looked into.
    let at_kill = data.with_extension("at-kill");
    let _ = std::fs::remove_dir_all(&at_kill);
    copy_dir(&data, &at_kill);
    // Restart on the same directory and drain.
    let broker = start(addr, &data);
    let mut l = Link::open(addr).expect("connect after restart");
    let mut recovered: BTreeMap<u64, bool> = BTreeMap::new();
    let mut dups = 0;
    loop {
        l.conn
            .send_method(
                1,
                BasicGet {
                    queue: QUEUE.try_into().unwrap(),
                    no_ack: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let e = l
            .wait(|e| {
                matches!(
                    e,
                    Event::Message { .. }
                        | Event::Method {
                            method: Method::BasicGetEmpty(_),
                            ..
                        }
                        | Event::Method {
                            method: Method::ChannelClose(_),
                            ..
                        }
                )
            })
            .expect("get after restart");
        let Event::Message { message, .. } = e else {
            break;
        };
        let Method::BasicGetOk(g) = &message.method else {
            panic!("get-ok expected")
        };
        let id = u64::from_be_bytes(message.body[..8].try_into().unwrap());
        assert!(
            recovered.insert(id, g.redelivered).is_none(),
            "message {id} twice"
        );
    }
    let s = seen.lock().unwrap();
    for (id, redelivered) in &recovered {
        assert!(
            s.published.contains(id),
            "seed {seed}: message {id} was never published"
        );
        if s.delivered.contains(id) {
            dups += usize::from(s.acked.contains(id));
            assert!(
                *redelivered,
                "seed {seed}: message {id} was delivered before the crash but comes back without redelivered"
            );
        }
    }
    let lost: Vec<u64> = s
        .confirmed
        .iter()
        .filter(|id| !s.acked.contains(id) && !recovered.contains_key(id))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: confirmed messages lost: {lost:?}"
    );
    let out = (
        s.confirmed.len(),
        s.acked.len(),
        recovered.len(),
        dups,
        lost.len(),
    );
    drop(s);
    drop(broker);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&at_kill);
    let _ = std::fs::remove_file(data.with_extension("toml"));
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy of the data directory");
    for e in std::fs::read_dir(from).expect("read the data directory") {
        let e = e.expect("a directory entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("its type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy a data file");
        }
    }
}

#[test]
fn confirmed_persistent_messages_survive_kill_9() {
    let trials: u64 = std::env::var("AMQP_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let first: u64 = std::env::var("AMQP_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let port = (5800..5810)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 5800..5809");
    let mut totals = (0, 0, 0, 0, 0);
    for seed in first..first + trials {
        let (c, a, r, d, l) = trial(seed, port);
        totals = (
            totals.0 + c,
            totals.1 + a,
            totals.2 + r,
            totals.3 + d,
            totals.4 + l,
        );
    }
    eprintln!(
        "{trials} crash trials: {} confirmed, {} acked, {} recovered, {} duplicates (acked before the crash, back flagged redelivered), {} lost",
        totals.0, totals.1, totals.2, totals.3, totals.4
    );
    assert!(totals.0 > 0, "the producer got confirms");
}
