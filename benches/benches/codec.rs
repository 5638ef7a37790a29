//! amqp-codec's server role against amq-protocol 10 over the same bytes, in
//! one run, plus measured bytes of state per connection and per channel.
//!
//! The stream is what a busy client sends a broker: 2,000 `basic.publish`
//! messages (1 KiB bodies, 5 headers, persistent, content type), interleaved
//! frame by frame over 8 channels (8 contents are in assembly at once), and
//! a `basic.ack` per message (a consumer's acks on the same channels).
//!
//! * `amqp-codec`: a server `Connection` (handshake and channel opens done
//!   before timing) is fed the stream in 64 KiB chunks, as socket reads
//!   would hand it over (frames straddling chunks included), and every
//!   event is read: each assembled `Message` (method, properties, body)
//!   and each ack.
//! * `amq-protocol`: `parse_frame` over the same bytes, contiguous (no
//!   chunking, no assembly, no channel state), every frame read.
//!
//! Before timing, `main` checks that both sides read the same content:
//! an order-independent fingerprint over the same fields (channel, routing
//! key, exchange, body size, header count and key lengths, delivery mode,
//! body length, ack tags), and that our bodies are slices of the input.
//!
//! Run: `cargo bench -p amqp-benches --bench codec`.

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic as their_basic};
use amqp_benches::codec_stream::{
    CHANNELS, CHUNK, PER_CHANNEL, encode, preamble, ready_server, stream,
};
use amqp_codec::types::method::ChannelOpen;
use amqp_codec::types::{FieldTable, Method};
use amqp_codec::wire::Frame;
use amqp_codec::{Answer, Connection, Event, ServerConfig};
use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, black_box};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

// ---------------------------------------------------------------------------
// An order-independent fingerprint: the sum of one hash per item, where an
// item is a method, a header or a body (ours come out of one `Message`).
// ---------------------------------------------------------------------------

fn mix(words: &[u64]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in words {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
struct Fp {
    /// Sums by item kind: 1 method, 2 header, 3 body, 4 ack.
    sum: [u64; 5],
    frames: u64,
}

impl Fp {
    fn add(&mut self, words: &[u64]) {
        let k = words[0] as usize;
        self.sum[k] = self.sum[k].wrapping_add(mix(words));
        self.frames += 1;
    }
}

fn publish_item(ch: u16, exchange: usize, routing_key: usize, mandatory: bool) -> [u64; 5] {
    [
        1,
        ch.into(),
        exchange as u64,
        routing_key as u64,
        mandatory.into(),
    ]
}

// ---------------------------------------------------------------------------
// The stream.
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// The two sides (exactly what is timed).
// ---------------------------------------------------------------------------

fn table_words(t: Option<&FieldTable>) -> u64 {
    t.map_or(0, |t| {
        // Order-independent: amq-protocol keeps tables sorted by key.
        t.iter()
            .map(|(k, _)| mix(&[k.len() as u64]))
            .fold(0, u64::wrapping_add)
            ^ t.len() as u64
    })
}

#[inline]
fn ours(server: &mut Connection, input: &Bytes, bodies: &mut Vec<Bytes>) -> Fp {
    let mut fp = Fp::default();
    let mut at = 0;
    while at < input.len() {
        let end = (at + CHUNK).min(input.len());
        server.handle_input(input.slice(at..end));
        at = end;
        while let Some(e) = server.poll_event() {
            match e {
                Event::Message {
                    channel, message, ..
                } => {
                    let Method::BasicPublish(p) = &message.method else {
                        panic!("{:?}", message.method)
                    };
                    fp.add(&publish_item(
                        channel,
                        p.exchange.len(),
                        p.routing_key.len(),
                        p.mandatory,
                    ));
                    let pr = &message.properties;
                    fp.add(&[
                        2,
                        channel.into(),
                        message.body.len() as u64,
                        pr.content_type.as_ref().map_or(0, |s| s.len() as u64),
                        pr.delivery_mode.map_or(0, u64::from),
                        table_words(pr.headers.as_ref()),
                    ]);
                    fp.add(&[3, channel.into(), message.body.len() as u64]);
                    if bodies.capacity() > bodies.len() {
                        bodies.push(message.body);
                    }
                }
                Event::Method {
                    channel,
                    method: Method::BasicAck(a),
                } => fp.add(&[4, channel.into(), a.delivery_tag, a.multiple.into()]),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    fp
}

fn their_table_words(t: Option<&amq_protocol_types::FieldTable>) -> u64 {
    t.map_or(0, |t| {
        let m = t.inner();
        m.keys()
            .map(|k| mix(&[k.as_str().len() as u64]))
            .fold(0, u64::wrapping_add)
            ^ m.len() as u64
    })
}

#[inline]
fn theirs(input: &[u8]) -> Fp {
    let mut fp = Fp::default();
    let mut rest = input;
    while !rest.is_empty() {
        let (r, frame) = amq_protocol::frame::parse_frame(rest).expect("amq-protocol parses");
        rest = r;
        match &frame {
            AMQPFrame::Method(ch, AMQPClass::Basic(their_basic::AMQPMethod::Publish(p))) => {
                fp.add(&publish_item(
                    *ch,
                    p.exchange.as_str().len(),
                    p.routing_key.as_str().len(),
                    p.mandatory,
                ))
            }
            AMQPFrame::Method(ch, AMQPClass::Basic(their_basic::AMQPMethod::Ack(a))) => {
                fp.add(&[4, (*ch).into(), a.delivery_tag, a.multiple.into()])
            }
            AMQPFrame::Header(ch, h) => {
                let pr = &h.properties;
                fp.add(&[
                    2,
                    (*ch).into(),
                    h.body_size,
                    pr.content_type()
                        .as_ref()
                        .map_or(0, |s| s.as_str().len() as u64),
                    pr.delivery_mode().map_or(0, u64::from),
                    their_table_words(pr.headers().as_ref()),
                ])
            }
            AMQPFrame::Body(ch, b) => fp.add(&[3, (*ch).into(), b.len() as u64]),
            other => panic!("unexpected {other:?}"),
        }
    }
    fp
}

// ---------------------------------------------------------------------------
// State sizes, measured with a counting allocator.
// ---------------------------------------------------------------------------

/// Net heap bytes allocated while `f` runs (allocated minus freed,
/// reallocations included).
fn net_heap<T>(f: impl FnOnce() -> T) -> (T, i64) {
    let region = Region::new(GLOBAL);
    let t = f();
    let s = region.change();
    let net = s.bytes_allocated as i64 + s.bytes_reallocated as i64 - s.bytes_deallocated as i64;
    (t, net)
}

fn report_state() {
    let conn_inline = std::mem::size_of::<Connection>();
    let (fresh, fresh_heap) =
        net_heap(|| Connection::server(ServerConfig::default(), Instant::now()));
    drop(fresh);
    // A connection after the handshake, before any channel.
    let (mut s, open_heap) = net_heap(|| {
        let mut s = Connection::server(ServerConfig::default(), Instant::now());
        for b in preamble().into_iter().take(3) {
            s.handle_input(b);
            while let Some(e) = s.poll_event() {
                if let Event::Decision { id, .. } = e {
                    s.decide(id, Answer::Accept).unwrap();
                }
            }
        }
        while s.poll_transmit().is_some() {}
        s
    });
    assert!(s.is_open());
    // Channel opens: 100 channels, one at a time with every event read and
    // every byte sent after each (as an embedder would), so that only what
    // the connection keeps per channel is counted (its map's growth
    // included, amortised).
    let n = 100u16;
    let opens: Vec<Bytes> = (1..=n)
        .map(|ch| {
            let mut b = BytesMut::new();
            encode(&[Frame::method(ch, ChannelOpen::default())], &mut b);
            b.freeze()
        })
        .collect();
    // Warm the event and output queues with one channel, not counted.
    let mut opens = opens.into_iter();
    s.handle_input(opens.next().unwrap());
    while s.poll_event().is_some() {}
    while s.poll_transmit().is_some() {}
    let ((), chan_heap) = net_heap(|| {
        for o in opens {
            s.handle_input(o);
            while s.poll_event().is_some() {}
            while s.poll_transmit().is_some() {}
        }
    });
    let n = n - 1;
    assert_eq!(s.channel_count(), usize::from(n) + 1);
    // After traffic: the whole stream through 8 of them (what stays
    // allocated once every event has been read).
    let (input, _) = stream();
    let ((), traffic_heap) = net_heap(|| {
        let mut bodies = Vec::new();
        ours(&mut s, &input, &mut bodies);
        while s.poll_transmit().is_some() {}
    });
    // The preamble's own buffers (the handshake input) are freed by then;
    // `open_heap` counts what the connection keeps.
    println!(
        "state: Connection inline {conn_inline} B; fresh server {fresh_heap} B heap; \
         open (handshake done, no channel) {open_heap} B heap; \
         per channel {} B heap ({} channels opened: {chan_heap} B); \
         growth after the {} KiB stream was fully read: {traffic_heap} B",
        chan_heap / i64::from(n),
        n,
        input.len() / 1024
    );
}

// ---------------------------------------------------------------------------

fn bench(c: &mut Criterion) {
    let (input, frames) = stream();

    // Checks before timing.
    let mut bodies = Vec::with_capacity(frames as usize);
    let a = ours(&mut ready_server(), &input, &mut bodies);
    let b = theirs(&input);
    assert_eq!(a, b, "amqp-codec and amq-protocol read different content");
    assert_eq!(a.frames, frames);
    let zero_copy = bodies
        .iter()
        .filter(|body| {
            let (p, w) = (body.as_ptr() as usize, input.as_ptr() as usize);
            p >= w && p + body.len() <= w + input.len()
        })
        .count();
    // Bodies that straddle a 64 KiB chunk boundary are copied once (the
    // frame is gathered); all others are slices of the input.
    assert!(
        zero_copy * 10 >= bodies.len() * 9,
        "{zero_copy} of {} bodies zero-copy",
        bodies.len()
    );
    println!(
        "stream: {} bytes, {frames} frames ({} messages over {CHANNELS} channels + {} acks); \
         {zero_copy} of {} bodies are slices of the input",
        input.len(),
        u64::from(CHANNELS) * PER_CHANNEL,
        u64::from(CHANNELS) * PER_CHANNEL,
        bodies.len()
    );
    drop(bodies);
    report_state();

    let mut g = c.benchmark_group("codec_server_stream");
    g.throughput(Throughput::Elements(frames));
    g.bench_function("amqp-codec (decode + assemble + events)", |bch| {
        bch.iter_batched(
            ready_server,
            |mut s| {
                let fp = ours(&mut s, black_box(&input), &mut Vec::new());
                (fp, s)
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("amq-protocol (parse_frame)", |bch| {
        bch.iter(|| theirs(black_box(&input)))
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(15)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}
