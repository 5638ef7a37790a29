//! Replays the committed corpora of the wire fuzz targets (`parse_frames`,
//! `roundtrip`, `field_table`) through the same checks the targets run, so
//! stable `cargo test` re-checks every input the fuzzer ever kept.
//!
//! A corpus directory that is missing or empty is a failure. Crash inputs
//! worth keeping go to `fuzz/artifacts-regressions/<target>/` (replayed here
//! too, when present).

use amqp_fuzz::wire;
use bytes::Bytes;

use amqp_fuzz::replay;

#[test]
fn parse_frames_corpus() {
    let inputs = replay("parse_frames", wire::parse_frames);
    // The corpus must actually reach every outcome, or the replay proves
    // little: every frame type, both reply codes the frame layer gives,
    // a stream that ends inside a frame, a protocol header.
    let mut frames = [0usize; 4];
    let mut codes = std::collections::BTreeSet::new();
    let (mut incomplete, mut header) = (0, 0);
    for data in &inputs {
        let r = wire::parse_frames_report(data);
        for (total, n) in frames.iter_mut().zip(r.frames) {
            *total += n;
        }
        codes.extend(r.error_codes);
        incomplete += usize::from(r.ended_incomplete);
        header += usize::from(r.protocol_header);
    }
    eprintln!(
        "parse_frames corpus: method/header/body/heartbeat frames {frames:?}, \
         error codes {codes:?}, {incomplete} ending incomplete, {header} with a protocol header"
    );
    assert!(
        frames.iter().all(|&n| n > 0),
        "frame types missing: {frames:?}"
    );
    assert!(
        codes.contains(&501) && codes.contains(&503),
        "codes {codes:?}"
    );
    assert!(incomplete > 0 && header > 0);
}

#[test]
fn roundtrip_corpus() {
    replay("roundtrip", wire::roundtrip);
}

#[test]
fn field_table_corpus() {
    replay("field_table", wire::field_table);
}

/// Hand-written inputs, so the checks are exercised even on a checkout
/// without corpora.
#[test]
fn handwritten_inputs() {
    // basic.ack on channel 1 behind "unlimited, window 0", then a heartbeat
    // and half a frame.
    let ack = [
        1, 0, 1, 0, 0, 0, 13, 0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 42, 0, 0xce,
    ];
    let heartbeat = [8, 0, 0, 0, 0, 0, 0, 0xce];
    let mut stream = b"AMQP\x00\x00\x09\x01".to_vec();
    stream.extend_from_slice(&ack);
    stream.extend_from_slice(&heartbeat);
    stream.extend_from_slice(&ack[..10]);
    for selector in 0..4 {
        for window in [0, 1, 7, 8, 21, 63] {
            let input = wire::ParseInput::encode(selector, 13, window, &stream);
            let r = wire::parse_frames_report(&input);
            assert_eq!(
                r.frames,
                [1, 0, 0, 1],
                "selector {selector} window {window}"
            );
            assert!(r.ended_incomplete && r.protocol_header);
        }
    }
    // frame_max 12 refuses the 13-byte payload: 501.
    let r = wire::parse_frames_report(&wire::ParseInput::encode(3, 12, 0, &ack));
    assert_eq!(r.error_codes, [501]);
    // Unknown method 60/99: 503.
    let mut bad = ack;
    bad[10] = 99;
    let r = wire::parse_frames_report(&wire::ParseInput::encode(0, 0, 0, &bad));
    assert_eq!(r.error_codes, [503]);

    for data in [&[][..], &[0], &[0xff; 64], &ack, &stream] {
        wire::parse_frames(data);
        wire::roundtrip(data);
        wire::field_table(data);
    }
    // A table {"a": t:1, "b": A[I:7]} and one nested 100 deep (refused).
    let table = b"\x00\x00\x00\x10\x01at\x01\x01bA\x00\x00\x00\x05I\x00\x00\x00\x07";
    assert_eq!(
        amqp_wire::decode_field_table(&Bytes::from_static(table))
            .unwrap()
            .len(),
        2
    );
    wire::field_table(table);
    let mut deep = vec![0, 0, 0, 0];
    for _ in 0..100 {
        let mut outer = (deep.len() as u32 + 3).to_be_bytes().to_vec();
        outer.extend_from_slice(b"\x01kF");
        outer.extend_from_slice(&deep);
        deep = outer;
    }
    let err = amqp_wire::decode_field_table(&Bytes::from(deep.clone())).unwrap_err();
    assert_eq!(err.code().0, 501, "{err}");
    wire::field_table(&deep);
}
