//! Checks for the frame-layer targets: `parse_frames`, `roundtrip` and
//! `field_table`.
//!
//! Each check panics (with a message naming the broken invariant) when
//! `amqp-wire` or `amqp-types` misbehave, and returns normally otherwise.
//! Nothing here catches panics or filters inputs before they reach the
//! parser.

use amqp_types::{FieldTable, ReplyCode, Scope};
use amqp_wire::{
    FRAME_END, FRAME_HEADER_SIZE, FRAME_OVERHEAD, Frame, FrameLimits, FramePayload, Parsed,
    ProtocolError, decode_field_table, encode_field_table, parse_frame, parse_protocol_header,
};
use arbitrary::{Arbitrary, Unstructured};
use bytes::{BufMut, Bytes, BytesMut};

/// The fixed `frame_max` values `parse_frames` chooses among (selector
/// values 0 to 2); selector 3 reads an arbitrary `u32` from the input.
pub const FRAME_MAX_CHOICES: [u32; 3] = [0, 4096, 131_072];

/// How a `parse_frames` input is laid out:
///
/// * byte 0, low 2 bits: the `frame_max` selector ([`FRAME_MAX_CHOICES`],
///   or 3: the next 4 bytes, big-endian, are `frame_max`);
/// * byte 0, high 6 bits: the initial window (0 to 63 bytes) of the chunked
///   pass, which then grows by exactly what each `Incomplete` asks for;
/// * the rest: the byte stream, optionally opening with a protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseInput<'a> {
    /// The limits every frame is parsed with.
    pub limits: FrameLimits,
    /// The chunked pass's first window for each frame.
    pub window: usize,
    /// The byte stream.
    pub stream: &'a [u8],
}

impl<'a> ParseInput<'a> {
    /// Splits a fuzzer input (never fails: short inputs give short streams).
    pub fn split(data: &'a [u8]) -> Self {
        let Some((&first, rest)) = data.split_first() else {
            return ParseInput {
                limits: FrameLimits::UNLIMITED,
                window: 0,
                stream: &[],
            };
        };
        let window = usize::from(first >> 2);
        let (frame_max, stream) = match first & 3 {
            3 => {
                let (head, tail) = rest.split_at(rest.len().min(4));
                let mut word = [0u8; 4];
                word[..head.len()].copy_from_slice(head);
                (u32::from_be_bytes(word), tail)
            }
            i => (FRAME_MAX_CHOICES[usize::from(i)], rest),
        };
        ParseInput {
            limits: FrameLimits::new(frame_max),
            window,
            stream,
        }
    }

    /// The inverse of [`split`](Self::split), for building seeds:
    /// `selector` 0 to 2 picks from [`FRAME_MAX_CHOICES`], 3 uses
    /// `frame_max`; `window` is taken modulo 64.
    pub fn encode(selector: u8, frame_max: u32, window: u8, stream: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(stream.len() + 5);
        out.push((selector & 3) | ((window & 63) << 2));
        if selector & 3 == 3 {
            out.extend_from_slice(&frame_max.to_be_bytes());
        }
        out.extend_from_slice(stream);
        out
    }
}

/// One outcome of parsing at a position of the stream (short-lived, so
/// the frame is kept inline).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// A complete frame and the bytes it used.
    Frame(Frame, usize),
    /// A protocol error; parsing stops.
    Error(ProtocolError),
    /// The stream ends inside a frame (or exactly at a frame boundary).
    End,
}

/// What a `parse_frames` run saw, for corpus statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseReport {
    /// Complete frames by type octet: method, header, body, heartbeat.
    pub frames: [usize; 4],
    /// Reply codes of the errors (at most one per input).
    pub error_codes: Vec<u16>,
    /// Whether the stream ended inside a frame.
    pub ended_incomplete: bool,
    /// Whether the stream opened with a complete protocol header.
    pub protocol_header: bool,
}

/// The `parse_frames` target: parse a raw byte stream frame by frame under
/// a fuzzer-chosen `frame_max` (see [`ParseInput`]), twice — once over the
/// whole stream, once growing a window by exactly what each `Incomplete`
/// asks for — and check:
///
/// * no panic; the two passes agree step for step;
/// * every complete frame: `consumed` ≤ input, matches the header's size,
///   respects `frame_max`, ends in 0xCE; it re-encodes to `consumed` bytes
///   (`encoded_len` agrees), the encoding parses back to an equal frame and
///   is a fixed point; body frames are slices of the input (zero copy);
/// * every `Incomplete`: `needed` > 0, never more than the frame still
///   lacks (exactly what it lacks once the 7-byte header is in), never
///   reported for a frame that is complete in the buffer; feeding exactly
///   `needed` more bytes of the stream makes progress, and once the header
///   is in, that completes the frame;
/// * every error: a hard, connection-scoped reply code ≥ 500 with an offset
///   inside the buffer it was parsed from;
/// * `parse_protocol_header` on the raw input and on the stream.
pub fn parse_frames(data: &[u8]) {
    parse_frames_report(data);
}

/// [`parse_frames`], returning what it saw.
pub fn parse_frames_report(data: &[u8]) -> ParseReport {
    check_protocol_header(data);
    let input = ParseInput::split(data);
    check_protocol_header(input.stream);
    let stream = Bytes::copy_from_slice(input.stream);
    let start = match parse_protocol_header(&stream) {
        Ok(Parsed::Complete { consumed, .. }) => consumed,
        _ => 0,
    };
    let whole = parse_whole(&stream, start, input.limits);
    let chunked = parse_chunked(&stream, start, input.limits, input.window);
    assert_eq!(
        whole, chunked,
        "parsing the whole stream and parsing it in growing windows disagree"
    );
    let mut report = ParseReport {
        protocol_header: start != 0,
        ..ParseReport::default()
    };
    for (pos, step) in &whole {
        match step {
            Step::Frame(f, _) => {
                let i = match f.payload {
                    FramePayload::Method(_) => 0,
                    FramePayload::Header(_) => 1,
                    FramePayload::Body(_) => 2,
                    _ => 3,
                };
                report.frames[i] += 1;
            }
            Step::Error(e) => report.error_codes.push(e.code().0),
            Step::End => report.ended_incomplete = *pos < stream.len(),
        }
    }
    report
}

/// Parses `stream[start..]` frame by frame, each time with everything that
/// is left.
fn parse_whole(stream: &Bytes, start: usize, limits: FrameLimits) -> Vec<(usize, Step)> {
    let mut steps = Vec::new();
    let mut pos = start;
    loop {
        let buf = stream.slice(pos..);
        match parse_frame(&buf, limits) {
            Ok(Parsed::Complete { frame, consumed }) => {
                check_frame(&frame, consumed, &buf, limits);
                steps.push((pos, Step::Frame(frame, consumed)));
                pos += consumed;
            }
            Ok(Parsed::Incomplete { needed }) => {
                check_incomplete(&buf, needed.get());
                steps.push((pos, Step::End));
                return steps;
            }
            Err(e) => {
                check_error(&e, buf.len());
                steps.push((pos, Step::Error(e)));
                return steps;
            }
        }
    }
}

/// Parses `stream[start..]` frame by frame, starting each frame with a
/// window of `first_window` bytes and growing it by exactly `needed` after
/// each `Incomplete`.
fn parse_chunked(
    stream: &Bytes,
    start: usize,
    limits: FrameLimits,
    first_window: usize,
) -> Vec<(usize, Step)> {
    let mut steps = Vec::new();
    let mut pos = start;
    loop {
        let rest = stream.len() - pos;
        let mut window = first_window.min(rest);
        // Whether the last round was an `Incomplete` with the frame header
        // in the window and exactly `needed` was fed: this round must
        // finish the frame.
        let mut must_finish = false;
        // The smallest window the last `Incomplete` allows a frame in.
        let mut complete_from = 0usize;
        loop {
            let buf = stream.slice(pos..pos + window);
            match parse_frame(&buf, limits) {
                Ok(Parsed::Complete { frame, consumed }) => {
                    assert!(
                        window >= complete_from,
                        "Incomplete asked for a window of {complete_from} bytes at stream \
                         offset {pos}, but {window} gave a complete frame"
                    );
                    check_frame(&frame, consumed, &buf, limits);
                    steps.push((pos, Step::Frame(frame, consumed)));
                    pos += consumed;
                    break;
                }
                Err(e) => {
                    check_error(&e, buf.len());
                    steps.push((pos, Step::Error(e)));
                    return steps;
                }
                Ok(Parsed::Incomplete { needed }) => {
                    assert!(
                        !must_finish,
                        "fed exactly the {window} bytes the frame header announced at stream \
                         offset {pos}, still Incomplete"
                    );
                    let needed = needed.get();
                    check_incomplete(&buf, needed);
                    if window == rest {
                        steps.push((pos, Step::End));
                        return steps;
                    }
                    complete_from = window.saturating_add(needed);
                    if needed > rest - window {
                        // The stream lacks the bytes: feed what it has (it
                        // may still reveal an error, never a frame).
                        window = rest;
                        must_finish = false;
                    } else {
                        if needed > 1 {
                            // `needed` is a lower bound: one byte fewer
                            // cannot give a complete frame.
                            let shorter = stream.slice(pos..pos + window + needed - 1);
                            let r = parse_frame(&shorter, limits);
                            assert!(
                                !matches!(r, Ok(Parsed::Complete { .. })),
                                "Incomplete asked for {needed} more bytes with {window} in \
                                 hand at stream offset {pos}, but {} more gave a frame",
                                needed - 1
                            );
                        }
                        must_finish = window >= FRAME_HEADER_SIZE;
                        window += needed;
                    }
                }
            }
        }
    }
}

fn header_size(buf: &[u8]) -> u32 {
    u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]])
}

fn check_incomplete(buf: &[u8], needed: usize) {
    assert!(needed > 0, "Incomplete with needed = 0");
    if buf.len() < FRAME_HEADER_SIZE {
        // The smallest frame is 8 bytes; asking for more than that could
        // stall a peer that sends one small frame and waits.
        assert!(
            needed <= FRAME_OVERHEAD - buf.len(),
            "Incomplete with {} bytes in hand asks for {needed} more (a frame can be {})",
            buf.len(),
            FRAME_OVERHEAD
        );
    } else {
        let total = FRAME_HEADER_SIZE as u64 + u64::from(header_size(buf)) + 1;
        assert!(
            (buf.len() as u64) < total,
            "Incomplete for a frame of {total} bytes with {} bytes in hand",
            buf.len()
        );
        assert_eq!(
            needed as u64,
            total - buf.len() as u64,
            "Incomplete must ask for exactly the rest of a frame whose header is in \
             ({} bytes in hand, frame of {total} bytes)",
            buf.len()
        );
    }
}

fn check_error(e: &ProtocolError, window: usize) {
    // Display and Debug must not panic either.
    let text = e.to_string();
    let _ = format!("{e:?}");
    let code = e.code();
    assert!(
        code.0 >= 500 && code.is_hard(),
        "frame-level fault with reply code {code:?} (need a hard error >= 500): {text}"
    );
    assert_eq!(
        e.scope(),
        Scope::Connection,
        "frame-level fault scoped to a channel: {text}"
    );
    if let Some(offset) = e.offset() {
        assert!(
            offset < window as u64,
            "error offset {offset} outside the {window}-byte buffer: {text}"
        );
    }
}

fn check_frame(frame: &Frame, consumed: usize, buf: &Bytes, limits: FrameLimits) {
    assert!(
        consumed <= buf.len(),
        "consumed {consumed} of a {}-byte buffer",
        buf.len()
    );
    assert!(consumed >= FRAME_OVERHEAD, "consumed {consumed} < 8");
    let size = header_size(buf);
    assert_eq!(
        consumed as u64,
        u64::from(size) + FRAME_OVERHEAD as u64,
        "consumed disagrees with the header's size"
    );
    if limits.frame_max != 0 {
        assert!(
            size <= limits.frame_max,
            "accepted a {size}-byte payload over frame_max {}",
            limits.frame_max
        );
    }
    assert_eq!(buf[consumed - 1], FRAME_END, "accepted a bad end octet");
    assert_eq!(frame.frame_type(), buf[0], "frame type changed");
    assert_eq!(
        frame.channel,
        u16::from_be_bytes([buf[1], buf[2]]),
        "channel changed"
    );
    if let FramePayload::Body(body) = &frame.payload {
        // ZERO_COPY_MIN bytes or more: a slice of the input; less: a copy
        // that does not pin it.
        let range = buf.as_ptr_range();
        let inside = range.start <= body.as_ptr() && body.as_ptr_range().end <= range.end;
        if body.len() >= amqp_wire::ZERO_COPY_MIN {
            assert!(inside, "body frame copied instead of sliced");
        } else {
            assert!(
                body.is_empty() || !inside,
                "a {}-byte body shares the input",
                body.len()
            );
        }
    }

    // The canonical encoding: same size, parses back equal, fixed point.
    let encoding = encode_frame(frame);
    assert_eq!(
        encoding.len(),
        consumed,
        "re-encoding a parsed frame changed its size: {frame:?}"
    );
    match parse_frame(&encoding, limits) {
        Ok(Parsed::Complete {
            frame: again,
            consumed: n,
        }) => {
            assert_eq!(
                n,
                encoding.len(),
                "re-parse consumed {n} of {}",
                encoding.len()
            );
            assert_eq!(&again, frame, "parse(encode(frame)) != frame");
            assert_eq!(
                encode_frame(&again),
                encoding,
                "canonical encoding is not a fixed point"
            );
        }
        other => panic!("re-encoded frame does not parse: {other:?}\nframe: {frame:?}"),
    }
}

/// Encodes a frame, checking `encode` against `encoded_len`.
fn encode_frame(frame: &Frame) -> Bytes {
    let len = frame
        .encoded_len()
        .unwrap_or_else(|e| panic!("frame has no encoded length ({e}): {frame:?}"));
    let mut out = BytesMut::with_capacity(len);
    let n = frame
        .encode(&mut out)
        .unwrap_or_else(|e| panic!("frame does not encode ({e}): {frame:?}"));
    assert_eq!(n, len, "encode wrote {n} bytes, encoded_len said {len}");
    assert_eq!(out.len(), n, "encode returned {n} but wrote {}", out.len());
    out.freeze()
}

/// Checks `parse_protocol_header` against its definition: `AMQP` and four
/// octets, "incomplete" for a proper prefix of that, an error otherwise.
fn check_protocol_header(input: &[u8]) {
    let prefix = input.len().min(4);
    let looks_right = input[..prefix] == b"AMQP"[..prefix];
    match parse_protocol_header(input) {
        Ok(Parsed::Complete { frame, consumed }) => {
            assert!(looks_right && input.len() >= 8, "accepted {input:02x?}");
            assert_eq!(consumed, 8);
            assert_eq!(frame.to_bytes(), input[..8], "protocol header changed");
        }
        Ok(Parsed::Incomplete { needed }) => {
            assert!(
                looks_right && input.len() < 8,
                "Incomplete for {input:02x?}"
            );
            assert_eq!(needed.get(), 8 - input.len());
        }
        Err(e) => {
            assert!(!looks_right, "refused a valid protocol header: {e}");
            assert!(e.code().0 >= 500, "protocol header error {e}");
        }
    }
}

/// Frames up to this size have every proper prefix parsed in `roundtrip`;
/// larger ones a handful.
pub const ALL_PREFIXES_MAX: usize = 512;

/// The `roundtrip` target: an arbitrary frame (`Frame::arbitrary`) encodes
/// to `encoded_len()` bytes, which parse back (no limit) to an equal frame
/// consuming all of them, also with trailing bytes after it; every proper
/// prefix is `Incomplete` asking for no more than the rest (all prefixes
/// up to [`ALL_PREFIXES_MAX`] bytes, a few beyond); a `frame_max` equal to
/// the payload size accepts it and one byte less refuses it (501) from the
/// 7-byte header alone; encoding into a buffer one byte too small fails
/// without writing.
pub fn roundtrip(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(frame) = Frame::arbitrary(&mut u) else {
        return;
    };
    let bytes = encode_frame(&frame);
    let n = bytes.len();

    let parsed = parse_frame(&bytes, FrameLimits::UNLIMITED);
    match &parsed {
        Ok(Parsed::Complete {
            frame: back,
            consumed,
        }) => {
            assert_eq!(*consumed, n, "consumed {consumed} of an {n}-byte encoding");
            assert_eq!(back, &frame, "parse(encode(frame)) != frame");
        }
        other => panic!("encoded frame does not parse: {other:?}\nframe: {frame:?}"),
    }

    // Trailing bytes (the start of the next frame) change nothing.
    let mut longer = BytesMut::from(&bytes[..]);
    longer.put_slice(u.take_rest());
    assert_eq!(
        parse_frame(&longer.freeze(), FrameLimits::UNLIMITED),
        parsed,
        "bytes after the frame changed the result"
    );

    // frame_max: payload == frame_max is accepted, one more byte refused
    // as soon as the header is there.
    let payload = (n - FRAME_OVERHEAD) as u32;
    if payload >= 1 {
        assert_eq!(
            parse_frame(&bytes, FrameLimits::new(payload)),
            parsed,
            "frame_max == payload size must accept"
        );
    }
    if payload >= 2 {
        let limits = FrameLimits::new(payload - 1);
        for buf in [bytes.slice(..FRAME_HEADER_SIZE), bytes.clone()] {
            match parse_frame(&buf, limits) {
                Err(e) => assert_eq!(
                    e.code(),
                    ReplyCode::FRAME_ERROR,
                    "frame over frame_max: {e}"
                ),
                other => panic!(
                    "payload {payload} over frame_max {} with {} bytes in hand: {other:?}",
                    payload - 1,
                    buf.len()
                ),
            }
        }
    }

    // Every proper prefix is Incomplete.
    let check_prefix = |k: usize| match parse_frame(&bytes.slice(..k), FrameLimits::UNLIMITED) {
        Ok(Parsed::Incomplete { needed }) => assert!(
            needed.get() <= n - k,
            "prefix of {k}/{n} bytes asks for {needed} more"
        ),
        other => panic!("prefix of {k}/{n} bytes: {other:?}"),
    };
    if n <= ALL_PREFIXES_MAX {
        (0..n).for_each(check_prefix);
    } else {
        [0, 1, 6, 7, 8, n / 2, n - 2, n - 1]
            .into_iter()
            .for_each(check_prefix);
    }

    // A buffer that cannot hold the frame: an error and nothing written.
    if n <= ALL_PREFIXES_MAX {
        let mut space = vec![0xA5u8; n - 1];
        let mut dst: &mut [u8] = &mut space;
        assert!(
            frame.encode(&mut dst).is_err(),
            "encode into {} bytes succeeded",
            n - 1
        );
        assert_eq!(dst.len(), n - 1, "failed encode advanced the buffer");
        assert!(
            space.iter().all(|&b| b == 0xA5),
            "failed encode wrote bytes"
        );
    }
}

/// The `field_table` target:
///
/// * the raw input as a wire table (`decode_field_table`): if it decodes,
///   it re-encodes to the same number of bytes, which decode to an equal
///   table and re-encode identically; if not, the error is 501 FRAME_ERROR
///   with an offset inside the input;
/// * the input as `FieldTable::arbitrary`: encode, decode, equal.
pub fn field_table(data: &[u8]) {
    let input = Bytes::copy_from_slice(data);
    match decode_field_table(&input) {
        Ok(table) => {
            let encoding = table_roundtrip(&table);
            assert_eq!(
                encoding.len(),
                data.len(),
                "re-encoding a decoded table changed its size: {table:?}"
            );
        }
        Err(e) => {
            let text = e.to_string();
            assert_eq!(
                e.code(),
                ReplyCode::FRAME_ERROR,
                "table decode failure: {text}"
            );
            if let Some(offset) = e.offset() {
                assert!(
                    offset <= data.len() as u64,
                    "error offset {offset} beyond the {}-byte input: {text}",
                    data.len()
                );
            }
        }
    }

    let mut u = Unstructured::new(data);
    if let Ok(table) = FieldTable::arbitrary(&mut u) {
        table_roundtrip(&table);
    }
}

/// encode → decode → equal → encode → same bytes; returns the encoding.
fn table_roundtrip(table: &FieldTable) -> Bytes {
    let encoding = encode_table(table);
    match decode_field_table(&encoding) {
        Ok(back) => {
            assert_eq!(&back, table, "decode(encode(table)) != table");
            assert_eq!(
                encode_table(&back),
                encoding,
                "table encoding is not a fixed point"
            );
        }
        Err(e) => panic!("encoded table does not decode: {e}\ntable: {table:?}"),
    }
    encoding
}

fn encode_table(table: &FieldTable) -> Bytes {
    let mut out = BytesMut::new();
    let n = encode_field_table(table, &mut out)
        .unwrap_or_else(|e| panic!("table does not encode ({e}): {table:?}"));
    assert_eq!(
        n,
        out.len(),
        "encode_field_table returned {n}, wrote {}",
        out.len()
    );
    out.freeze()
}
