//! Instruction counts for the wire benchmarks, amqp-wire against
//! amq-protocol 10 on the same bytes: run under callgrind by
//! `benches/instructions.sh`, which is reliable on a noisy machine where
//! wall-clock timings are not. Each `ours_*` / `theirs_*` function is one
//! iteration of a workload; the script counts instructions inside it only.

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::types::{generation::gen_field_table, parsing::parse_field_table};
use amqp_benches::wire_inputs::{
    ack_frames, body, deliver_frames, encode_all, publish_frames, twenty_entry_table,
};
use amqp_types::FieldTable;
use amqp_wire::{
    Frame, FrameLimits, FramePayload, Parsed, decode_field_table, encode_field_table,
    encode_field_table_to_slice, parse_frame,
};
use bytes::{Buf, Bytes, BytesMut};
use std::hint::black_box;

const LIMITS: FrameLimits = FrameLimits::new(128 * 1024);

/// Sums what both libraries expose the same way, so neither can skip work.
/// The `Bytes` handle is cloned by the caller, outside the counted
/// function, as the criterion bench makes it outside the timed region.
#[inline(never)]
fn ours_parse(rest: &mut Bytes) -> u64 {
    let mut n = 0u64;
    while !rest.is_empty() {
        match &parse_frame(rest, LIMITS) {
            Ok(Parsed::Complete { frame, consumed }) => {
                n += frame.channel as u64 + frame.frame_type() as u64;
                if let FramePayload::Body(b) = &frame.payload {
                    n += b.len() as u64;
                }
                rest.advance(*consumed);
            }
            other => panic!("{other:?}"),
        }
    }
    n
}

#[inline(never)]
fn theirs_parse(input: &[u8]) -> u64 {
    let mut n = 0u64;
    let mut rest = input;
    while !rest.is_empty() {
        let (r, f) = amq_protocol::frame::parse_frame(rest).expect("parse");
        n += match &f {
            AMQPFrame::Method(ch, _) => *ch as u64 + 1,
            AMQPFrame::Header(ch, _) => *ch as u64 + 2,
            AMQPFrame::Body(ch, b) => *ch as u64 + 3 + b.len() as u64,
            _ => 8,
        };
        rest = r;
    }
    n
}

/// Ours into the slice with `Frame::encode_to_slice`, theirs with
/// cookie-factory's `WriteContext` over the same kind of slice.
#[inline(never)]
fn ours_serialize(frames: &[Frame], out: &mut [u8]) -> u64 {
    let mut pos = 0;
    for f in frames {
        pos += f.encode_to_slice(&mut out[pos..]).expect("encode");
    }
    pos as u64
}

/// Ours through the generic `BufMut` API (scratch space, one copy).
#[inline(never)]
fn ours_serialize_bufmut(frames: &[Frame], out: &mut [u8]) -> u64 {
    let mut d = out;
    let before = d.len();
    for f in frames {
        f.encode(&mut d).expect("encode");
    }
    (before - d.len()) as u64
}

#[inline(never)]
fn theirs_serialize(frames: &[AMQPFrame], out: &mut [u8]) -> u64 {
    let mut ctx = WriteContext::from(out);
    for f in frames {
        ctx = gen_frame(f)(ctx).expect("gen");
    }
    ctx.position
}

#[inline(never)]
fn ours_table_decode(i: &Bytes) -> u64 {
    decode_field_table(i).expect("table").len() as u64
}

#[inline(never)]
fn theirs_table_decode(i: &[u8]) -> u64 {
    parse_field_table(i).expect("table").1.inner().len() as u64
}

#[inline(never)]
fn ours_table_encode(t: &FieldTable, out: &mut [u8]) -> u64 {
    encode_field_table_to_slice(t, out).expect("encode") as u64
}

#[inline(never)]
fn ours_table_encode_bufmut(t: &FieldTable, out: &mut [u8]) -> u64 {
    let mut d = out;
    encode_field_table(t, &mut d).expect("encode") as u64
}

#[inline(never)]
fn theirs_table_encode(t: &amq_protocol::types::FieldTable, out: &mut [u8]) -> u64 {
    gen_field_table(t)(WriteContext::from(out))
        .expect("gen")
        .position
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let iters: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let pubs = encode_all(&publish_frames());
    let dels = encode_all(&deliver_frames());
    let acks = encode_all(&ack_frames(10_000));
    let body_1b = encode_all(&[Frame::body(1, body(1))]);
    let body_128k = encode_all(&[Frame::body(1, body(128 * 1024))]);
    let ours_frames = publish_frames();
    let mut theirs_frames = Vec::new();
    let mut rest = &pubs[..];
    while !rest.is_empty() {
        let (r, f) = amq_protocol::frame::parse_frame(rest).expect("parse");
        theirs_frames.push(f);
        rest = r;
    }
    let t = twenty_entry_table();
    let mut tb = BytesMut::new();
    encode_field_table(&t, &mut tb).expect("encode");
    let tin = tb.freeze();
    let theirs_t = parse_field_table(&tin[..]).expect("table").1;
    if which == "check" {
        // Both libraries read the same inputs to the same sums, and write
        // the same bytes (run once, outside any counted function).
        for input in [&pubs, &dels, &acks, &body_1b, &body_128k] {
            assert_eq!(ours_parse(&mut input.clone()), theirs_parse(input));
        }
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        let n = ours_serialize(&ours_frames, &mut a) as usize;
        assert_eq!(n as u64, theirs_serialize(&theirs_frames, &mut b));
        assert_eq!(a[..n], b[..n]);
        a.fill(0);
        assert_eq!(ours_serialize_bufmut(&ours_frames, &mut a) as usize, n);
        assert_eq!(a[..n], b[..n]);
        assert_eq!(ours_table_decode(&tin), theirs_table_decode(&tin));
        let n = ours_table_encode(&t, &mut a) as usize;
        assert_eq!(n as u64, theirs_table_encode(&theirs_t, &mut b));
        assert_eq!(a[..n], b[..n]);
        a.fill(0);
        assert_eq!(ours_table_encode_bufmut(&t, &mut a) as usize, n);
        assert_eq!(a[..n], b[..n]);
        println!("same results and bytes from both libraries");
        return;
    }
    let mut out = vec![0u8; 4096];
    let mut s = 0u64;
    for _ in 0..iters {
        s += match which.as_str() {
            "parse_publish/ours" => ours_parse(black_box(&mut pubs.clone())),
            "parse_publish/theirs" => theirs_parse(black_box(&pubs)),
            "parse_deliver/ours" => ours_parse(black_box(&mut dels.clone())),
            "parse_deliver/theirs" => theirs_parse(black_box(&dels)),
            "parse_ack_x10000/ours" => ours_parse(black_box(&mut acks.clone())),
            "parse_ack_x10000/theirs" => theirs_parse(black_box(&acks)),
            "parse_body_1B/ours" => ours_parse(black_box(&mut body_1b.clone())),
            "parse_body_1B/theirs" => theirs_parse(black_box(&body_1b)),
            "parse_body_128KiB/ours" => ours_parse(black_box(&mut body_128k.clone())),
            "parse_body_128KiB/theirs" => theirs_parse(black_box(&body_128k)),
            "serialize_publish/ours" => ours_serialize(black_box(&ours_frames), &mut out),
            "serialize_publish/theirs" => theirs_serialize(black_box(&theirs_frames), &mut out),
            "table_decode/ours" => ours_table_decode(black_box(&tin)),
            "table_decode/theirs" => theirs_table_decode(black_box(&tin)),
            "table_encode/ours" => ours_table_encode(black_box(&t), &mut out),
            "table_encode/theirs" => theirs_table_encode(black_box(&theirs_t), &mut out),
            "serialize_publish_bufmut/ours" => {
                ours_serialize_bufmut(black_box(&ours_frames), &mut out)
            }
            "serialize_publish_bufmut/theirs" => {
                theirs_serialize(black_box(&theirs_frames), &mut out)
            }
            "table_encode_bufmut/ours" => ours_table_encode_bufmut(black_box(&t), &mut out),
            "table_encode_bufmut/theirs" => theirs_table_encode(black_box(&theirs_t), &mut out),
            _ => {
                eprintln!("usage: wire_instructions GROUP/(ours|theirs) [ITERATIONS]");
                std::process::exit(2);
            }
        };
    }
    println!("{s}");
}
