//! AMQP 0-9-1 frames, one at a time: parse them from bytes and serialize
//! them to bytes, exactly as RabbitMQ and real clients do.
//!
//! * [`parse_frame`] reads one frame from the front of a [`Bytes`] buffer and
//!   returns the frame and how many bytes it used, [`Parsed::Incomplete`]
//!   with how many more bytes the frame needs, or a [`ProtocolError`] that
//!   names the fault and its AMQP reply code. Body frames and long strings
//!   of [`ZERO_COPY_MIN`] bytes or more are slices of the input, not copies.
//! * [`Frame::encode`] writes a frame into any [`BufMut`];
//!   [`write_body_frame_header`] and [`FRAME_END`] let a body go out as its
//!   own [`Bytes`] (vectored write) without copying it.
//! * [`parse_protocol_header`] handles the 8-byte `AMQP 0 0 9 1` preamble.
//!
//! The method and property code is generated from the protocol table in
//! `amqp-types` (`for_each_method!`), so every method is parsed and written
//! by the same few primitives. Hostile input is normal input: every byte
//! sequence yields a frame, "incomplete", or a typed error; lengths are
//! checked against the bytes actually present before they are used, nested
//! tables stop at [`MAX_NESTING_DEPTH`](amqp_types::MAX_NESTING_DEPTH), and
//! `frame_max` is enforced from the 7-byte header before the payload is
//! waited for.
//!
//! ```
//! use amqp_wire::{parse_frame, Frame, FramePayload, Parsed, FrameLimits};
//! use amqp_types::{Method, method::BasicAck};
//! use bytes::{Bytes, BytesMut};
//!
//! let mut out = BytesMut::new();
//! Frame::method(1, BasicAck { delivery_tag: 42, multiple: false }).encode(&mut out)?;
//! let input: Bytes = out.freeze();
//!
//! // The first 5 bytes are not a frame yet.
//! assert!(matches!(parse_frame(&input.slice(..5), FrameLimits::default())?, Parsed::Incomplete { .. }));
//!
//! match parse_frame(&input, FrameLimits::default())? {
//!     Parsed::Complete { frame, consumed } => {
//!         assert_eq!(consumed, input.len());
//!         assert_eq!(frame.channel, 1);
//!         assert!(matches!(frame.payload, FramePayload::Method(Method::BasicAck(BasicAck { delivery_tag: 42, .. }))));
//!     }
//!     Parsed::Incomplete { .. } => unreachable!(),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod fields;
mod frame;

pub use amqp_types::constants::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEADER_SIZE, FRAME_HEARTBEAT, FRAME_METHOD,
    FRAME_MIN_SIZE, FRAME_OVERHEAD, PROTOCOL_HEADER,
};
pub use amqp_types::{ErrorKind, ProtocolError, ReplyCode};
pub use fields::{EncodeError, ZERO_COPY_MIN};
pub use frame::{ContentHeader, Frame, FramePayload, ProtocolHeader};

use amqp_types::constants::CLASS_BASIC;
use amqp_types::{BasicProperties, FieldTable, Method};
use bytes::{BufMut, Bytes};
use fields::{Fail, Reader, Writer};
use std::cell::RefCell;
use std::num::NonZeroUsize;

/// The result of a parse that may need more input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A whole value, and how many input bytes it used.
    Complete {
        /// The value.
        frame: T,
        /// Bytes consumed from the front of the input.
        consumed: usize,
    },
    /// The input ends inside the value: at least `needed` more bytes are
    /// required before parsing again (with the same bytes at the front).
    Incomplete {
        /// The minimum number of additional bytes.
        needed: NonZeroUsize,
    },
}

/// Limits checked while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FrameLimits {
    /// The largest frame accepted, in bytes including the 8 bytes of header
    /// and end octet; 0 means no limit. A frame whose header announces a
    /// larger payload is refused (501) as soon as the 7-byte header is
    /// there. As RabbitMQ does, the comparison allows 8 bytes of slack:
    /// payloads up to `frame_max` are accepted (RabbitMQ's
    /// `FRAME_SIZE_FUDGE`); peers must still *send* frames of at most
    /// `frame_max` bytes.
    pub frame_max: u32,
}

impl Default for FrameLimits {
    /// 4096, the frame_max in force before `connection.tune-ok`.
    fn default() -> Self {
        FrameLimits {
            frame_max: FRAME_MIN_SIZE,
        }
    }
}

impl FrameLimits {
    /// No frame size limit.
    pub const UNLIMITED: FrameLimits = FrameLimits { frame_max: 0 };

    /// A limit of `frame_max` bytes per frame (0 = none).
    pub const fn new(frame_max: u32) -> Self {
        FrameLimits { frame_max }
    }
}

fn incomplete<T>(needed: u64) -> Parsed<T> {
    let needed = usize::try_from(needed).unwrap_or(usize::MAX);
    Parsed::Incomplete {
        needed: NonZeroUsize::new(needed).unwrap_or(NonZeroUsize::MIN),
    }
}

/// Reads the 7-byte frame header: type, channel, payload size.
#[inline(always)]
fn frame_header(input: &[u8]) -> Option<(u8, u16, u32)> {
    let h: &[u8; FRAME_HEADER_SIZE] = input.get(..FRAME_HEADER_SIZE)?.try_into().ok()?;
    Some((
        h[0],
        u16::from_be_bytes([h[1], h[2]]),
        u32::from_be_bytes([h[3], h[4], h[5], h[6]]),
    ))
}

/// Parses one frame from the front of `input`.
///
/// Returns the frame and the bytes it used; [`Parsed::Incomplete`] while
/// the frame itself is incomplete (a truncated field inside a complete frame
/// is an error, never "incomplete"); or a [`ProtocolError`]:
///
/// | fault | code |
/// | --- | --- |
/// | unknown frame type, bad end octet, frame larger than `frame_max`, a method or header payload that does not decode (truncated field, trailing bytes, unknown field type letter, tables nested too deep), a heartbeat with a payload | 501 FRAME_ERROR |
/// | unknown class/method id | 503 COMMAND_INVALID |
///
/// Errors carry the channel, the class/method ids when known, and the byte
/// offset in `input` of the faulty byte.
pub fn parse_frame(input: &Bytes, limits: FrameLimits) -> Result<Parsed<Frame>, ProtocolError> {
    let Some((frame_type, channel, size)) = frame_header(input) else {
        // The smallest frame is the header plus the end octet.
        return Ok(incomplete((FRAME_OVERHEAD - input.len()) as u64));
    };
    if limits.frame_max != 0 && size > limits.frame_max {
        return Err(ProtocolError::frame_error(ErrorKind::FrameTooLarge {
            size,
            frame_max: limits.frame_max,
        })
        .on_channel(channel)
        .at_offset(3));
    }
    if !matches!(
        frame_type,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(
            ProtocolError::frame_error(ErrorKind::UnknownFrameType { frame_type })
                .on_channel(channel)
                .at_offset(0),
        );
    }
    let total = FRAME_HEADER_SIZE as u64 + size as u64 + 1;
    if (input.len() as u64) < total {
        return Ok(incomplete(total - input.len() as u64));
    }
    let total = total as usize;
    let end = total - 1;
    if input[end] != FRAME_END {
        return Err(
            ProtocolError::frame_error(ErrorKind::BadFrameEnd { found: input[end] })
                .on_channel(channel)
                .at_offset(end as u64),
        );
    }
    let payload = match frame_type {
        FRAME_METHOD => return decode_method_frame(input, FRAME_HEADER_SIZE, end, channel, total),
        FRAME_HEADER => {
            FramePayload::Header(decode_header_at(input, FRAME_HEADER_SIZE, end, channel)?)
        }
        FRAME_BODY => FramePayload::Body(input.slice(FRAME_HEADER_SIZE..end)),
        _ => {
            if size != 0 {
                return Err(ProtocolError::frame_error(ErrorKind::BadHeartbeat { size })
                    .on_channel(channel)
                    .at_offset(FRAME_HEADER_SIZE as u64));
            }
            FramePayload::Heartbeat
        }
    };
    Ok(Parsed::Complete {
        frame: Frame { channel, payload },
        consumed: total,
    })
}

/// Decodes a method payload (`start..end` of `buf`) into the whole parse
/// result.
#[inline]
fn decode_method_frame(
    buf: &Bytes,
    start: usize,
    end: usize,
    channel: u16,
    consumed: usize,
) -> Result<Parsed<Frame>, ProtocolError> {
    let mut r = Reader::new(buf, start, end);
    let (Ok(class_id), Ok(method_id)) = (r.u16(), r.u16()) else {
        return Err(ProtocolError::frame_error(ErrorKind::Truncated {
            what: "class and method ids",
        })
        .on_channel(channel)
        .at_offset(start as u64));
    };
    fields::read_method_frame(class_id, method_id, &mut r, channel, consumed)
}

fn decode_header_at(
    buf: &Bytes,
    start: usize,
    end: usize,
    channel: u16,
) -> Result<Box<ContentHeader>, ProtocolError> {
    let mut r = Reader::new(buf, start, end);
    let fixed = (|| Ok::<_, Fail>((r.u16()?, r.u16()?, r.u64()?, r.u16()?)))();
    let (class_id, weight, body_size, flags) =
        fixed.map_err(|f| f.into_error(r.pos).on_channel(channel))?;
    if class_id != CLASS_BASIC {
        return Err(
            ProtocolError::frame_error(ErrorKind::UnknownContentClass { class_id })
                .on_channel(channel)
                .at_offset(start as u64),
        );
    }
    if flags & !BasicProperties::KNOWN_FLAGS != 0 {
        return Err(
            ProtocolError::frame_error(ErrorKind::BadPropertyFlags { flags })
                .on_channel(channel)
                .at_offset(start as u64 + 12),
        );
    }
    // Built in its box, properties read in place: no 450-byte move.
    let mut header = Box::new(ContentHeader {
        weight,
        body_size,
        properties: BasicProperties::default(),
    });
    fields::read_properties_into(flags, &mut r, &mut header.properties)
        .map_err(|f| f.into_error(r.pos).on_channel(channel))?;
    if r.remaining() != 0 {
        return Err(fields::trailing_error(&r).on_channel(channel));
    }
    Ok(header)
}

/// Decodes a method frame's payload (class id, method id, arguments) on its
/// own, e.g. for a payload reassembled by other means. Long strings share
/// `payload` when they are at least [`ZERO_COPY_MIN`] bytes long.
pub fn decode_method(payload: &Bytes) -> Result<Method, ProtocolError> {
    match decode_method_frame(payload, 0, payload.len(), 0, 0)? {
        Parsed::Complete {
            frame:
                Frame {
                    payload: FramePayload::Method(m),
                    ..
                },
            ..
        } => Ok(m),
        _ => unreachable!("a method payload decodes to a method frame"),
    }
}

/// Decodes a content header frame's payload on its own.
pub fn decode_content_header(payload: &Bytes) -> Result<ContentHeader, ProtocolError> {
    decode_header_at(payload, 0, payload.len(), 0).map(|h| *h)
}

/// Decodes a field table as it appears on the wire (a 4-byte length, then
/// the entries); the whole of `input` must be that table.
pub fn decode_field_table(input: &Bytes) -> Result<FieldTable, ProtocolError> {
    let mut r = Reader::new(input, 0, input.len());
    let t = r.table().map_err(|f| f.into_error(r.pos))?;
    if r.remaining() != 0 {
        return Err(fields::trailing_error(&r));
    }
    Ok(t)
}

/// Encodes a field table as it appears on the wire (a 4-byte length, then
/// the entries). Nothing is written if the table cannot be encoded.
pub fn encode_field_table(table: &FieldTable, dst: &mut impl BufMut) -> Result<usize, EncodeError> {
    with_scratch(|v| {
        let mut w = Writer::new(v);
        w.table(table);
        w.finish()?;
        check_room(dst, v.len())?;
        dst.put_slice(v);
        Ok(v.len())
    })
}

thread_local! {
    /// Where method and header frames are encoded before they are copied to
    /// the caller's `BufMut` in one piece: one pass over the value (table
    /// lengths patched in place) instead of measuring it first.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Scratch space kept per thread, at most this large between calls.
const SCRATCH_KEEP: usize = 64 * 1024;

fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            v.clear();
            let r = f(&mut v);
            if v.capacity() > SCRATCH_KEEP {
                *v = Vec::new();
            }
            r
        }
        // Re-entered (a `BufMut` that encodes frames itself): use a fresh one.
        Err(_) => f(&mut Vec::new()),
    })
}

/// Encodes a method or header frame into `v`: header, payload, end octet.
fn encode_small_frame(frame: &Frame, v: &mut Vec<u8>) -> Result<(), EncodeError> {
    v.extend_from_slice(&[frame.frame_type(), 0, 0, 0, 0, 0, 0]);
    v[1..3].copy_from_slice(&frame.channel.to_be_bytes());
    let mut w = Writer::new(v);
    match &frame.payload {
        FramePayload::Method(m) => {
            w.u16(m.class_id());
            w.u16(m.method_id());
            fields::write_method(m, &mut w);
        }
        FramePayload::Header(h) => {
            w.u16(CLASS_BASIC);
            w.u16(h.weight);
            w.u64(h.body_size);
            w.u16(h.properties.flags());
            fields::write_properties(&h.properties, &mut w);
        }
        _ => unreachable!("bodies and heartbeats are not encoded here"),
    }
    w.finish()?;
    let len = v.len() - FRAME_HEADER_SIZE;
    let size = u32::try_from(len).map_err(|_| EncodeError::TooLong {
        what: "frame payload",
        len: len as u64,
    })?;
    v[3..7].copy_from_slice(&size.to_be_bytes());
    v.push(FRAME_END);
    Ok(())
}

fn check_room(dst: &impl BufMut, needed: usize) -> Result<(), EncodeError> {
    let available = dst.remaining_mut();
    if available < needed {
        return Err(EncodeError::BufferTooSmall { needed, available });
    }
    Ok(())
}

/// Parses the 8-byte protocol header from the front of `input`.
///
/// Any `AMQP` + four octets is returned (check
/// [`ProtocolHeader::is_0_9_1`]; a server answers other versions with its
/// own header and closes). Input that cannot start with `AMQP` is refused at
/// once, without waiting for 8 bytes.
pub fn parse_protocol_header(input: &[u8]) -> Result<Parsed<ProtocolHeader>, ProtocolError> {
    use nom::Parser;
    use nom::bytes::streaming::{tag, take};
    // nom's streaming mode: "AMQP" then four octets; a prefix of that is
    // Incomplete, anything else an error at once.
    let parsed: nom::IResult<&[u8], &[u8]> = (tag(&b"AMQP"[..]), take(4usize))
        .parse(input)
        .map(|(rest, (_, version))| (rest, version));
    match parsed {
        Ok((_, v)) => Ok(Parsed::Complete {
            frame: ProtocolHeader {
                version: [v[0], v[1], v[2], v[3]],
            },
            consumed: 8,
        }),
        Err(nom::Err::Incomplete(_)) => Ok(incomplete(8 - input.len().min(7) as u64)),
        Err(_) => Err(ProtocolError::connection(
            ReplyCode::FRAME_ERROR,
            ErrorKind::BadProtocolHeader {
                header: input[..input.len().min(8)].to_vec(),
            },
        )
        .at_offset(0)),
    }
}

/// Writes the 7-byte header of a body frame carrying `body_len` bytes.
///
/// To send a body without copying it: write this header, then the body
/// `Bytes` itself, then [`FRAME_END`]. The caller keeps `body_len` within
/// the peer's frame_max.
pub fn write_body_frame_header(dst: &mut impl BufMut, channel: u16, body_len: u32) {
    dst.put_u8(FRAME_BODY);
    dst.put_u16(channel);
    dst.put_u32(body_len);
}

impl Frame {
    /// The frame's size on the wire (header, payload, end octet), or why it
    /// cannot be encoded.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        match &self.payload {
            FramePayload::Body(b) => body_size(b).map(|n| n as usize + FRAME_OVERHEAD),
            FramePayload::Heartbeat => Ok(FRAME_OVERHEAD),
            _ => with_scratch(|v| encode_small_frame(self, v).map(|()| v.len())),
        }
    }

    /// Writes the frame into `dst` and returns the bytes written.
    ///
    /// Nothing is written if the frame cannot be encoded (tables nested
    /// deeper than `MAX_NESTING_DEPTH`, a payload over 4 GiB) or if `dst`
    /// cannot grow to hold it. Checking the size against the peer's
    /// frame_max is the caller's business ([`Frame::encoded_len`]). A body
    /// frame is written straight from its `Bytes`; method and header frames
    /// are encoded in one pass into scratch space kept per thread, then
    /// copied into `dst` in one piece.
    pub fn encode(&self, dst: &mut impl BufMut) -> Result<usize, EncodeError> {
        match &self.payload {
            FramePayload::Body(b) => {
                let len = body_size(b)?;
                check_room(dst, b.len() + FRAME_OVERHEAD)?;
                write_body_frame_header(dst, self.channel, len);
                dst.put_slice(b);
                dst.put_u8(FRAME_END);
                Ok(b.len() + FRAME_OVERHEAD)
            }
            FramePayload::Heartbeat => {
                check_room(dst, FRAME_OVERHEAD)?;
                let [hi, lo] = self.channel.to_be_bytes();
                dst.put_slice(&[FRAME_HEARTBEAT, hi, lo, 0, 0, 0, 0, FRAME_END]);
                Ok(FRAME_OVERHEAD)
            }
            _ => with_scratch(|v| {
                encode_small_frame(self, v)?;
                check_room(dst, v.len())?;
                dst.put_slice(v);
                Ok(v.len())
            }),
        }
    }
}

fn body_size(b: &Bytes) -> Result<u32, EncodeError> {
    u32::try_from(b.len()).map_err(|_| EncodeError::TooLong {
        what: "frame payload",
        len: b.len() as u64,
    })
}
