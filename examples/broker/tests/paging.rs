//! Paging, end to end: a queue far longer than its in-memory window keeps
//! the broker's memory flat (its messages are page files in the data
//! directory, counted as `messages_paged_out` by the management API), and
//! every message comes back, in order and intact, as consumers drain it;
//! the page files go as they are read. Persistent messages of a durable
//! queue that was paging survive a kill -9 (the message store has them;
//! pages are only a cache), and a purge of a paging durable queue stays
//! purged after a restart.

mod support;

use amqp_broker::paging::BackgroundPages;
use amqp_codec::Event;
use amqp_codec::types::method::*;
use amqp_codec::types::{BasicProperties, Method};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{Broker, Client, rss};

fn data_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("amqp-paging-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn page_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("paging"))
        .map(|d| d.filter(|e| e.is_ok()).count())
        .unwrap_or(0)
}

/// Writes what the client has to send.
/// Waits (at most 10 s) for `n` page files: the broker's page writer
/// writes them in the background.
fn wait_for_page_files(data: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while page_files(data) < n {
        assert!(
            Instant::now() < deadline,
            "{} page files, not {n}",
            page_files(data)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn flush(c: &mut Client) {
    use std::io::Write;
    while let Some(b) = c.conn.poll_transmit() {
        c.sock.write_all(&b).unwrap();
    }
}

fn body(i: u32, size: usize) -> Bytes {
    let mut b = format!("{i:08}").into_bytes();
    b.resize(size, (i % 251) as u8);
    Bytes::from(b)
}

fn declare(c: &mut Client, q: &str, durable: bool) -> u32 {
    match c.call(QueueDeclare {
        queue: q.try_into().unwrap(),
        durable,
        ..Default::default()
    }) {
        Method::QueueDeclareOk(ok) => ok.message_count,
        other => panic!("{other:?}"),
    }
}

/// Publishes `n` messages numbered from `from` and waits until the queue
/// holds `expect` (a declare on the same channel follows every publish).
fn publish(c: &mut Client, q: &str, from: u32, n: u32, size: usize, persistent: bool) {
    let props = BasicProperties {
        delivery_mode: persistent.then_some(2),
        ..Default::default()
    };
    for i in from..from + n {
        c.conn
            .publish(
                1,
                BasicPublish {
                    routing_key: q.try_into().unwrap(),
                    ..Default::default()
                },
                &props,
                body(i, size),
            )
            .unwrap();
        if i % 500 == 0 {
            flush(c);
        }
    }
    flush(c);
}

/// Consumes `n` messages (no-ack) and checks they are `from..from+n` in
/// order, intact.
fn consume_in_order(c: &mut Client, q: &str, from: u32, n: u32, size: usize) {
    c.call(BasicConsume {
        queue: q.try_into().unwrap(),
        no_ack: true,
        ..Default::default()
    });
    for i in from..from + n {
        let Event::Message { message, .. } = c.until(|e| matches!(e, Event::Message { .. })) else {
            unreachable!()
        };
        assert_eq!(message.body, body(i, size), "message {i}");
    }
}

fn queue_json(api: &str, q: &str) -> serde_json::Value {
    let addr = api.parse().unwrap();
    let r = support::http(
        addr,
        "GET",
        &format!("/api/queues/%2f/{q}"),
        Some("guest:guest"),
        "",
    );
    assert_eq!(r.status, 200);
    r.json()
}

#[test]
fn a_long_queue_pages_to_disk_and_comes_back_in_order() {
    const N: u32 = 60_000;
    const SIZE: usize = 2048;
    let data = data_dir("long");
    let cfg = data.with_extension("toml");
    std::fs::write(
        &cfg,
        "[paging]\nwindow_messages = 2000\nwindow_bytes = 8388608\npage_messages = 1000\nmemory_budget = 0\n",
    )
    .unwrap();
    let api = format!("127.0.0.1:{}", support::free_ports(15870..15875, 1)[0]);
    let broker = Broker::start(
        5870..5875,
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--management",
            &api,
        ],
    );
    let mut c = Client::connect(broker.addr);
    declare(&mut c, "long", false);
    let before = rss(broker.pid());
    publish(&mut c, "long", 0, N, SIZE, false);
    assert_eq!(declare(&mut c, "long", false), N);
    let after = rss(broker.pid());
    let q = queue_json(&api, "long");
    let paged = q["messages_paged_out"].as_u64().unwrap();
    eprintln!(
        "{N} messages of {SIZE} B queued ({} MiB of bodies): broker RSS {} -> {} MiB; {paged} paged out in {} files",
        (N as usize * SIZE) >> 20,
        before >> 20,
        after >> 20,
        page_files(&data)
    );
    assert!(paged >= u64::from(N) - 4000, "{q}");
    assert_eq!(q["messages"].as_u64(), Some(u64::from(N)));
    assert_eq!(
        q["messages_ram"].as_u64().unwrap() + paged,
        u64::from(N),
        "{q}"
    );
    wait_for_page_files(&data, 50);
    // 117 MiB of bodies; in memory at most the window and the tail.
    assert!(
        after < before + (64 << 20),
        "RSS grew {} MiB for a queue that pages",
        (after - before) >> 20
    );
    consume_in_order(&mut c, "long", 0, N, SIZE);
    let deadline = Instant::now() + Duration::from_secs(5);
    // Drained, the broker keeps a few page files to overwrite (faster than
    // new ones), and deletes the rest.
    while page_files(&data) > BackgroundPages::KEEP_FREE {
        assert!(Instant::now() < deadline, "page files left after draining");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        queue_json(&api, "long")["messages_paged_out"].as_u64(),
        Some(0)
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn a_paging_durable_queue_survives_kill_9_and_a_purge_stays_purged() {
    const N: u32 = 12_000;
    const SIZE: usize = 512;
    let data = data_dir("durable");
    let cfg = data.with_extension("toml");
    std::fs::write(
        &cfg,
        "[paging]\nwindow_messages = 1000\npage_messages = 500\nmemory_budget = 0\n",
    )
    .unwrap();
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--management",
        "none",
    ];
    let broker = Broker::start(5875..5880, &args);
    let mut c = Client::connect(broker.addr);
    declare(&mut c, "kept", true);
    declare(&mut c, "purged", true);
    let _ = c.call(ConfirmSelect::default());
    publish(&mut c, "kept", 0, N, SIZE, true);
    publish(&mut c, "purged", 0, N, SIZE, true);
    // Every confirm: both queues are in the store.
    let mut confirmed = 0;
    while confirmed < 2 * u64::from(N) {
        if let Event::Confirm {
            delivery_tag, ack, ..
        } = c.until(|e| matches!(e, Event::Confirm { .. }))
        {
            assert!(ack);
            confirmed = confirmed.max(delivery_tag);
        }
    }
    wait_for_page_files(&data, 11); // both queues page
    match c.call(QueuePurge {
        queue: "purged".try_into().unwrap(),
        ..Default::default()
    }) {
        Method::QueuePurgeOk(ok) => assert_eq!(ok.message_count, N),
        other => panic!("{other:?}"),
    }
    // Make the purge durable before the kill: a confirmed publish after
    // it is fsynced with (or after) the purge's records.
    publish(&mut c, "purged", N, 1, SIZE, true);
    while confirmed < 2 * u64::from(N) + 1 {
        if let Event::Confirm { delivery_tag, .. } = c.until(|e| matches!(e, Event::Confirm { .. }))
        {
            confirmed = confirmed.max(delivery_tag);
        }
    }
    drop(c);
    drop(broker); // SIGKILL
    let broker = Broker::start(5875..5880, &args);
    let mut c = Client::connect(broker.addr);
    assert_eq!(declare(&mut c, "kept", true), N);
    assert_eq!(declare(&mut c, "purged", true), 1, "the purge stayed");
    consume_in_order(&mut c, "kept", 0, N, SIZE);
    drop(broker);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(&cfg);
}
