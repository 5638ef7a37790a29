//! What the frame decoder copies, measured with a counting global allocator:
//! a 128 KiB frame trickled one byte at a time costs a small multiple of
//! its size in allocations (not the frame size times the number of chunks,
//! as when the partial buffer was copied for every chunk that left it
//! incomplete), and a frame that arrives whole in one chunk is parsed in
//! place (its body is a slice of the chunk, nothing of its size is
//! allocated).
//!
//! One test function only: the allocator counts the whole process, so
//! measurements must not run beside other tests.

use amqp_codec::wire::{Frame, FramePayload};
use amqp_codec::{Decoded, FrameDecoder};
use bytes::{Bytes, BytesMut};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// frame_max as RabbitMQ proposes it.
const FRAME_MAX: u32 = 128 * 1024;

/// One body frame of exactly `FRAME_MAX` bytes on the wire.
fn body_frame() -> Bytes {
    let body: Vec<u8> = (0..FRAME_MAX as usize - 8).map(|i| i as u8).collect();
    let mut out = BytesMut::new();
    Frame::body(1, Bytes::from(body))
        .encode(&mut out)
        .expect("encodes");
    assert_eq!(out.len(), FRAME_MAX as usize);
    out.freeze()
}

/// Feeds `chunks` one at a time, decoding after each; returns the frames
/// and the bytes allocated meanwhile (the chunks are made beforehand).
fn decode_counting(chunks: Vec<Bytes>) -> (Vec<Frame>, usize) {
    let mut decoder = FrameDecoder::new();
    decoder.set_frame_max(FRAME_MAX);
    let mut frames = Vec::with_capacity(4);
    let region = Region::new(GLOBAL);
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(d) = decoder.decode().expect("valid stream") {
            match d {
                Decoded::Frame(f) => frames.push(f),
                Decoded::ProtocolHeader(_) => unreachable!("not expected"),
            }
        }
    }
    let stats = region.change();
    (
        frames,
        stats.bytes_allocated + stats.bytes_reallocated.max(0) as usize,
    )
}

fn body_of(frames: &[Frame]) -> &Bytes {
    assert_eq!(frames.len(), 1);
    match &frames[0].payload {
        FramePayload::Body(b) => b,
        other => panic!("not a body frame: {other:?}"),
    }
}

#[test]
fn trickled_frame_costs_a_small_multiple_of_its_size_whole_frame_none() {
    let wire = body_frame();
    let size = wire.len();

    // One byte per chunk: 131,072 chunks.
    let chunks: Vec<Bytes> = (0..size).map(|i| wire.slice(i..i + 1)).collect();
    let (frames, trickled) = decode_counting(chunks);
    assert_eq!(&body_of(&frames)[..], &wire[7..size - 1]);
    println!("128 KiB frame, 1-byte chunks: {trickled} bytes allocated");
    assert!(
        trickled <= 3 * size,
        "{trickled} bytes allocated to gather a {size}-byte frame fed 1 byte at a time"
    );

    // Odd chunk sizes, some straddling the header.
    for chunk in [2, 3, 5, 7, 9, 1000, 4096] {
        let chunks: Vec<Bytes> = (0..size)
            .step_by(chunk)
            .map(|i| wire.slice(i..(i + chunk).min(size)))
            .collect();
        let (frames, allocated) = decode_counting(chunks);
        assert_eq!(&body_of(&frames)[..], &wire[7..size - 1]);
        assert!(
            allocated <= 3 * size,
            "{allocated} bytes allocated for {chunk}-byte chunks"
        );
    }

    // Whole in one chunk: the body is a slice of the input, nothing of the
    // frame's size is allocated.
    let (frames, whole) = decode_counting(vec![wire.clone()]);
    let body = body_of(&frames);
    let input = wire.as_ptr_range();
    assert!(input.contains(&body.as_ptr()), "body copied");
    println!("128 KiB frame, one chunk: {whole} bytes allocated");
    assert!(whole < 1024, "{whole} bytes allocated for a whole frame");
}
