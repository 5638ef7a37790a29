//! AMQP 0-9-1 frames, one at a time: parse them from bytes and serialize
//! them to bytes, exactly as RabbitMQ and real clients do.
//!
//! * [`parse_frame`] reads one frame from the front of a [`Bytes`] buffer and
//!   returns the frame and how many bytes it used, [`Parsed::Incomplete`]
//!   with how many more bytes the frame needs, or a [`ProtocolError`] that
//!   names the fault and its AMQP reply code. Body frames and long strings
//!   of [`ZERO_COPY_MIN`] bytes or more are slices of the input, not copies.
//! * [`Frame::encode`] writes a frame into any [`BufMut`];
//!   [`Frame::encode_to_slice`], [`Frame::encode_to_vec`] and
//!   [`encode_field_table_to_slice`] write straight into contiguous memory
//!   (lengths patched in place, no scratch copy);
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

#![cfg_attr(docsrs, feature(doc_cfg))]
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
use fields::{Fail, Reader, WriteFail, Writer};
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
        return Err(frame_error(
            ErrorKind::FrameTooLarge {
                size,
                frame_max: limits.frame_max,
            },
            channel,
            3,
        ));
    }
    if !matches!(
        frame_type,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(frame_error(
            ErrorKind::UnknownFrameType { frame_type },
            channel,
            0,
        ));
    }
    let total = FRAME_HEADER_SIZE as u64 + size as u64 + 1;
    if (input.len() as u64) < total {
        return Ok(incomplete(total - input.len() as u64));
    }
    let total = total as usize;
    let end = total - 1;
    if input[end] != FRAME_END {
        return Err(frame_error(
            ErrorKind::BadFrameEnd { found: input[end] },
            channel,
            end as u64,
        ));
    }
    // Each arm builds the whole result where it is returned: no frame is
    // moved through an intermediate value.
    let payload = match frame_type {
        FRAME_METHOD => return decode_method_frame(input, FRAME_HEADER_SIZE, end, channel, total),
        FRAME_HEADER => {
            return Ok(Parsed::Complete {
                frame: Frame {
                    channel,
                    payload: FramePayload::Header(decode_header_at(
                        input,
                        FRAME_HEADER_SIZE,
                        end,
                        channel,
                    )?),
                },
                consumed: total,
            });
        }
        FRAME_BODY => {
            return Ok(Parsed::Complete {
                frame: Frame {
                    channel,
                    payload: FramePayload::Body(body_at(input, end)),
                },
                consumed: total,
            });
        }
        _ => {
            if size != 0 {
                return Err(frame_error(
                    ErrorKind::BadHeartbeat { size },
                    channel,
                    FRAME_HEADER_SIZE as u64,
                ));
            }
            FramePayload::Heartbeat
        }
    };
    Ok(Parsed::Complete {
        frame: Frame { channel, payload },
        consumed: total,
    })
}

/// A 501 error found in the frame's envelope, out of line so that the
/// parser's common path does not build it.
#[cold]
#[inline(never)]
fn frame_error(kind: ErrorKind, channel: u16, offset: u64) -> ProtocolError {
    ProtocolError::frame_error(kind)
        .on_channel(channel)
        .at_offset(offset)
}

/// The body of a body frame that ends at `end`: a slice of the input from
/// [`ZERO_COPY_MIN`] bytes on, else a copy. Sharing costs two atomic
/// reference-count updates (one here, one when the body is dropped) and
/// keeps the whole read buffer alive for as long as the body lives; a small
/// body is cheaper to copy into its own allocation, which frees without
/// atomics and pins nothing.
#[inline(always)]
fn body_at(input: &Bytes, end: usize) -> Bytes {
    if end - FRAME_HEADER_SIZE >= ZERO_COPY_MIN {
        input.slice(FRAME_HEADER_SIZE..end)
    } else {
        Bytes::copy_from_slice(&input[FRAME_HEADER_SIZE..end])
    }
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
    let mut header: Box<ContentHeader> = Box::default();
    header.weight = weight;
    header.body_size = body_size;
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
///
/// The table is encoded in one pass into scratch space kept per thread and
/// then copied into `dst` in one piece; [`encode_field_table_to_slice`]
/// writes straight into a slice instead.
pub fn encode_field_table(table: &FieldTable, dst: &mut impl BufMut) -> Result<usize, EncodeError> {
    encode_in_scratch(
        |out| {
            let mut w = Writer::new(out, 0);
            w.table(table);
            w.finish()
        },
        |bytes| {
            check_room(dst, bytes.len())?;
            dst.put_slice(bytes);
            Ok(bytes.len())
        },
    )
}

/// Encodes a field table (a 4-byte length, then the entries) at the front
/// of `out`, straight into the slice, and returns the bytes written.
///
/// If `out` is too small the error says how many bytes the table needs
/// ([`EncodeError::BufferTooSmall`]). On any error the front of `out` may
/// have been overwritten with a partial encoding; bytes after the returned
/// length are never touched.
///
/// ```
/// use amqp_types::FieldTable;
/// use amqp_wire::{decode_field_table, encode_field_table_to_slice, EncodeError};
///
/// let mut t = FieldTable::new();
/// t.insert("x-max-priority", 10u8);
/// let mut out = [0u8; 64];
/// let n = encode_field_table_to_slice(&t, &mut out)?;
/// assert_eq!(n, 4 + 1 + 14 + 2);
/// assert_eq!(decode_field_table(&bytes::Bytes::copy_from_slice(&out[..n]))?, t);
/// assert_eq!(
///     encode_field_table_to_slice(&t, &mut out[..5]),
///     Err(EncodeError::BufferTooSmall { needed: 21, available: 5 })
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode_field_table_to_slice(
    table: &FieldTable,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let mut w = Writer::new(out, 0);
    w.table(table);
    match w.finish() {
        Ok(n) => Ok(n),
        Err(WriteFail::Encode(e)) => Err(e),
        Err(WriteFail::Full) => Err(EncodeError::BufferTooSmall {
            needed: encode_in_scratch(
                |out| {
                    let mut w = Writer::new(out, 0);
                    w.table(table);
                    w.finish()
                },
                |bytes| Ok(bytes.len()),
            )?,
            available: out.len(),
        }),
    }
}

thread_local! {
    /// Where method and header frames are encoded for a `BufMut` before
    /// they are copied to it in one piece: one pass over the value (table
    /// lengths patched in place) instead of measuring it first. Kept
    /// zero-filled to its length, which is the room it offers.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Scratch space kept per thread, at most this large between calls.
const SCRATCH_KEEP: usize = 64 * 1024;

/// The scratch space's first size.
const SCRATCH_START: usize = 4096;

/// Past this size an encoding cannot be framed (payload lengths are 32-bit),
/// so the scratch space stops growing.
const SCRATCH_LIMIT: usize = u32::MAX as usize + FRAME_OVERHEAD;

fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            let r = f(&mut v);
            if v.len() > SCRATCH_KEEP {
                *v = Vec::new();
            }
            r
        }
        // Re-entered (a `BufMut` that encodes frames itself): use a fresh one.
        Err(_) => f(&mut Vec::new()),
    })
}

/// Runs the one-pass encoder `encode` over the thread's scratch space,
/// doubling it until the encoding fits, then hands the bytes to `then`.
/// The room grows with the value being encoded, never with input.
fn encode_in_scratch<R>(
    encode: impl Fn(&mut [u8]) -> Result<usize, WriteFail>,
    then: impl FnOnce(&[u8]) -> Result<R, EncodeError>,
) -> Result<R, EncodeError> {
    with_scratch(|v| {
        if v.len() < SCRATCH_START {
            v.resize(SCRATCH_START, 0);
        }
        loop {
            match encode(v) {
                Ok(n) => return then(&v[..n]),
                Err(WriteFail::Encode(e)) => return Err(e),
                Err(WriteFail::Full) if v.len() >= SCRATCH_LIMIT => {
                    return Err(EncodeError::TooLong {
                        what: "frame payload",
                        len: v.len() as u64,
                    });
                }
                Err(WriteFail::Full) => {
                    let grown = v.len().saturating_mul(2).min(SCRATCH_LIMIT);
                    v.resize(grown, 0);
                }
            }
        }
    })
}

/// A method or header frame's payload, borrowed.
#[derive(Clone, Copy)]
enum Small<'a> {
    Method(&'a Method),
    Header {
        weight: u16,
        body_size: u64,
        properties: &'a BasicProperties,
    },
}

impl Frame {
    fn small(&self) -> Small<'_> {
        match &self.payload {
            FramePayload::Method(m) => Small::Method(m),
            FramePayload::Header(h) => Small::Header {
                weight: h.weight,
                body_size: h.body_size,
                properties: &h.properties,
            },
            _ => unreachable!("bodies and heartbeats are not encoded here"),
        }
    }
}

/// Encodes a method or header frame at the front of `out`: header, payload,
/// end octet, the payload size patched in last.
fn encode_small_frame(
    channel: u16,
    payload: Small<'_>,
    out: &mut [u8],
) -> Result<usize, WriteFail> {
    let [c0, c1] = channel.to_be_bytes();
    let mut w = Writer::new(out, 0);
    match payload {
        Small::Method(m) => {
            let [a0, a1] = m.class_id().to_be_bytes();
            let [m0, m1] = m.method_id().to_be_bytes();
            w.raw([FRAME_METHOD, c0, c1, 0, 0, 0, 0, a0, a1, m0, m1]);
            fields::write_method(m, &mut w);
        }
        Small::Header {
            weight,
            body_size,
            properties,
        } => {
            let [k0, k1] = CLASS_BASIC.to_be_bytes();
            let [w0, w1] = weight.to_be_bytes();
            let [b0, b1, b2, b3, b4, b5, b6, b7] = body_size.to_be_bytes();
            let [f0, f1] = properties.flags().to_be_bytes();
            w.raw([
                FRAME_HEADER,
                c0,
                c1,
                0,
                0,
                0,
                0,
                k0,
                k1,
                w0,
                w1,
                b0,
                b1,
                b2,
                b3,
                b4,
                b5,
                b6,
                b7,
                f0,
                f1,
            ]);
            fields::write_properties(properties, &mut w);
        }
    }
    w.raw([FRAME_END]);
    let n = w.finish()?;
    let len = n - FRAME_OVERHEAD;
    let size = u32::try_from(len).map_err(|_| {
        WriteFail::Encode(EncodeError::TooLong {
            what: "frame payload",
            len: len as u64,
        })
    })?;
    out[3..7].copy_from_slice(&size.to_be_bytes());
    Ok(n)
}

/// The size of a method or header frame.
fn small_len(channel: u16, payload: Small<'_>) -> Result<usize, EncodeError> {
    encode_in_scratch(
        |out| encode_small_frame(channel, payload, out),
        |b| Ok(b.len()),
    )
}

/// A method or header frame at the front of `out`, or how much room it
/// needs.
fn small_to_slice(channel: u16, payload: Small<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    match encode_small_frame(channel, payload, out) {
        Ok(n) => Ok(n),
        Err(WriteFail::Encode(e)) => Err(e),
        Err(WriteFail::Full) => Err(EncodeError::BufferTooSmall {
            needed: small_len(channel, payload)?,
            available: out.len(),
        }),
    }
}

/// A method frame that borrows its method: encodes as
/// `Frame::method(channel, method.clone())` does, without the clone (a
/// sender that keeps its methods, or builds them per message, need not
/// give them up to encode them).
///
/// ```
/// use amqp_types::Method;
/// use amqp_types::method::BasicAck;
/// use amqp_wire::{Frame, MethodFrame};
///
/// let method = Method::from(BasicAck { delivery_tag: 7, multiple: false });
/// let borrowed = MethodFrame { channel: 1, method: &method };
/// let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
/// let n = borrowed.encode_to_slice(&mut a)?;
/// assert_eq!(n, borrowed.encoded_len()?);
/// assert_eq!(Frame::method(1, method.clone()).encode_to_slice(&mut b)?, n);
/// assert_eq!(a, b);
/// # Ok::<(), amqp_wire::EncodeError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct MethodFrame<'a> {
    /// The channel (0 for the connection).
    pub channel: u16,
    /// The method.
    pub method: &'a Method,
}

impl MethodFrame<'_> {
    /// The frame's size on the wire: [`Frame::encoded_len`].
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        small_len(self.channel, Small::Method(self.method))
    }

    /// Writes the frame at the front of `out`: [`Frame::encode_to_slice`].
    pub fn encode_to_slice(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        small_to_slice(self.channel, Small::Method(self.method), out)
    }
}

/// A content header frame that borrows its properties: encodes as
/// `Frame::header(channel, body_size, properties.clone())` does, without
/// the clone (the properties are hundreds of bytes, and a publisher
/// usually sends the same ones again and again).
///
/// ```
/// use amqp_types::BasicProperties;
/// use amqp_wire::{Frame, HeaderFrame};
///
/// let props = BasicProperties { delivery_mode: Some(2), ..Default::default() };
/// let borrowed = HeaderFrame { channel: 1, body_size: 5, properties: &props };
/// let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
/// let n = borrowed.encode_to_slice(&mut a)?;
/// assert_eq!(n, borrowed.encoded_len()?);
/// assert_eq!(Frame::header(1, 5, props.clone()).encode_to_slice(&mut b)?, n);
/// assert_eq!(a, b);
/// # Ok::<(), amqp_wire::EncodeError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HeaderFrame<'a> {
    /// The channel.
    pub channel: u16,
    /// Total body size in bytes, over all body frames.
    pub body_size: u64,
    /// The message properties.
    pub properties: &'a BasicProperties,
}

impl HeaderFrame<'_> {
    fn small(&self) -> Small<'_> {
        Small::Header {
            weight: 0,
            body_size: self.body_size,
            properties: self.properties,
        }
    }

    /// The frame's size on the wire: [`Frame::encoded_len`].
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        small_len(self.channel, self.small())
    }

    /// Writes the frame at the front of `out`: [`Frame::encode_to_slice`].
    pub fn encode_to_slice(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        small_to_slice(self.channel, self.small(), out)
    }
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

/// Encodes `properties` as a content header carries them: the 16-bit
/// property flags, then each present value in flag order. Appends to `out`
/// and returns the bytes written.
///
/// The result goes out again with [`write_header_frame`] (or
/// `amqp-codec`'s `send_content_encoded`) without decoding, and comes back
/// with [`decode_properties`]: a broker can keep a message's properties in
/// this form, a few bytes instead of a 450-byte [`BasicProperties`].
///
/// ```
/// use amqp_types::{BasicProperties, ShortString};
/// use amqp_wire::{decode_properties, encode_properties};
/// let p = BasicProperties {
///     content_type: Some(ShortString::from_static("text/plain")),
///     delivery_mode: Some(2),
///     ..Default::default()
/// };
/// let mut wire = Vec::new();
/// assert_eq!(encode_properties(&p, &mut wire)?, 2 + 11 + 1);
/// assert_eq!(decode_properties(&wire.into())?, p);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn encode_properties(
    properties: &BasicProperties,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    encode_in_scratch(
        |buf| {
            let mut w = Writer::new(buf, 0);
            let [f0, f1] = properties.flags().to_be_bytes();
            w.raw([f0, f1]);
            fields::write_properties(properties, &mut w);
            w.finish()
        },
        |bytes| {
            out.extend_from_slice(bytes);
            Ok(bytes.len())
        },
    )
}

/// Decodes properties in the form [`encode_properties`] writes (flags,
/// then values); the whole of `input` must be that. Long strings share
/// `input` as [`parse_frame`] does.
pub fn decode_properties(input: &Bytes) -> Result<BasicProperties, ProtocolError> {
    let mut r = Reader::new(input, 0, input.len());
    let flags = r.u16().map_err(|f| f.into_error(r.pos))?;
    if flags & !BasicProperties::KNOWN_FLAGS != 0 {
        return Err(ProtocolError::frame_error(ErrorKind::BadPropertyFlags {
            flags,
        }));
    }
    let mut p = BasicProperties::default();
    fields::read_properties_into(flags, &mut r, &mut p).map_err(|f| f.into_error(r.pos))?;
    if r.remaining() != 0 {
        return Err(fields::trailing_error(&r));
    }
    Ok(p)
}

/// Checks that `input` has the shape of encoded properties: known flags,
/// every announced value present with its length inside `input`, nothing
/// after the last. Field tables are stepped over by their length, not
/// read. Allocates nothing.
pub fn check_properties(input: &[u8]) -> Result<(), ProtocolError> {
    walk_properties(input, |_, _| true)
}

/// The flag bit of the property the spec calls `name` (`"delivery-mode"`,
/// `"headers"`, … as in [`BasicProperties::NAMES`]), for
/// [`property_value`] and [`has_property`]; usable in a `const`. An
/// unknown name panics (at compile time in a `const`).
///
/// ```
/// assert_eq!(amqp_wire::property_flag("delivery-mode"), 1 << 12);
/// ```
pub const fn property_flag(name: &str) -> u16 {
    let names = BasicProperties::NAMES;
    let mut i = 0;
    while i < names.len() {
        let (a, b) = (names[i].as_bytes(), name.as_bytes());
        if a.len() == b.len() {
            let mut k = 0;
            while k < a.len() && a[k] == b[k] {
                k += 1;
            }
            if k == a.len() {
                return 1 << (15 - i);
            }
        }
        i += 1;
    }
    panic!("not a basic property name")
}

/// Whether encoded properties announce the property with flag `flag`
/// ([`property_flag`]), from their flags alone.
pub fn has_property(input: &[u8], flag: u16) -> bool {
    input
        .first_chunk::<2>()
        .is_some_and(|f| u16::from_be_bytes(*f) & flag != 0)
}

/// The value of the property with flag `flag` in encoded properties, as
/// its bytes (a string's or table's without their length), without
/// decoding the others; `None` when absent or malformed.
///
/// ```
/// use amqp_types::BasicProperties;
/// use amqp_wire::{encode_properties, property_flag, property_value};
/// let p = BasicProperties { delivery_mode: Some(2), priority: Some(7), ..Default::default() };
/// let mut wire = Vec::new();
/// encode_properties(&p, &mut wire)?;
/// assert_eq!(property_value(&wire, property_flag("priority")), Some(&[7][..]));
/// assert_eq!(property_value(&wire, property_flag("expiration")), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn property_value(input: &[u8], flag: u16) -> Option<&[u8]> {
    if !has_property(input, flag) {
        return None;
    }
    let mut found = None;
    let _ = walk_properties(input, |bit, value| {
        if bit == flag {
            found = Some(value);
        }
        found.is_none()
    });
    found
}

/// Steps over encoded properties, handing each present one's flag bit and
/// value bytes to `each` until it returns `false`; the error names the
/// first fault (checked up to where `each` stopped).
fn walk_properties<'a>(
    input: &'a [u8],
    mut each: impl FnMut(u16, &'a [u8]) -> bool,
) -> Result<(), ProtocolError> {
    use fields::Shape;
    let truncated = |what, at: usize| {
        ProtocolError::frame_error(ErrorKind::Truncated { what }).at_offset(at as u64)
    };
    let Some((&[f0, f1], mut rest)) = input.split_first_chunk::<2>() else {
        return Err(truncated("property flags", 0));
    };
    let flags = u16::from_be_bytes([f0, f1]);
    if flags & !BasicProperties::KNOWN_FLAGS != 0 {
        return Err(ProtocolError::frame_error(ErrorKind::BadPropertyFlags {
            flags,
        }));
    }
    for (bit, shape) in fields::PROPERTY_SHAPES {
        if flags & bit == 0 {
            continue;
        }
        let at = input.len() - rest.len();
        let len = match shape {
            Shape::Fixed(n) => n,
            Shape::Len8 => match rest.split_first() {
                Some((&n, r)) => {
                    rest = r;
                    n as usize
                }
                None => return Err(truncated("short string length", at)),
            },
            Shape::Len32 => match rest.split_first_chunk::<4>() {
                Some((n, r)) => {
                    rest = r;
                    u32::from_be_bytes(*n) as usize
                }
                None => return Err(truncated("field table length", at)),
            },
        };
        let Some((value, r)) = rest.split_at_checked(len) else {
            return Err(truncated("property value", input.len() - rest.len()));
        };
        rest = r;
        if !each(bit, value) {
            return Ok(());
        }
    }
    if !rest.is_empty() {
        return Err(
            ProtocolError::frame_error(ErrorKind::TrailingBytes { count: rest.len() })
                .at_offset((input.len() - rest.len()) as u64),
        );
    }
    Ok(())
}

/// Writes a whole content header frame (class `basic`, weight 0) whose
/// properties are already encoded ([`encode_properties`]); returns the
/// bytes written, `properties.len()` + 22. The caller keeps that within
/// the peer's frame_max and `properties` well formed
/// ([`check_properties`]).
pub fn write_header_frame(
    dst: &mut impl BufMut,
    channel: u16,
    body_size: u64,
    properties: &[u8],
) -> usize {
    dst.put_u8(FRAME_HEADER);
    dst.put_u16(channel);
    dst.put_u32(12 + properties.len() as u32);
    dst.put_u16(CLASS_BASIC);
    dst.put_u16(0);
    dst.put_u64(body_size);
    dst.put_slice(properties);
    dst.put_u8(FRAME_END);
    properties.len() + 12 + FRAME_OVERHEAD
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
            _ => small_len(self.channel, self.small()),
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
    /// copied into `dst` in one piece. [`Frame::encode_to_slice`] and
    /// [`Frame::encode_to_vec`] write straight into their destination.
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
                dst.put_slice(&self.heartbeat_bytes());
                Ok(FRAME_OVERHEAD)
            }
            _ => encode_in_scratch(
                |out| encode_small_frame(self.channel, self.small(), out),
                |bytes| {
                    check_room(dst, bytes.len())?;
                    dst.put_slice(bytes);
                    Ok(bytes.len())
                },
            ),
        }
    }

    /// Writes the frame at the front of `out`, straight into the slice (no
    /// scratch space, no copy; payload and table lengths are patched in
    /// place), and returns the bytes written.
    ///
    /// If `out` is too small the error says how many bytes the frame needs
    /// ([`EncodeError::BufferTooSmall`]). On any error the front of `out`
    /// may have been overwritten with a partial frame; bytes after the
    /// returned length are never touched.
    ///
    /// ```
    /// use amqp_types::method::BasicAck;
    /// use amqp_wire::{EncodeError, Frame};
    ///
    /// let frame = Frame::method(1, BasicAck { delivery_tag: 7, multiple: false });
    /// let mut out = [0u8; 64];
    /// let n = frame.encode_to_slice(&mut out)?;
    /// assert_eq!(n, frame.encoded_len()?);
    /// assert_eq!(&out[..7], &[1, 0, 1, 0, 0, 0, 13]);
    /// assert_eq!(out[n - 1], amqp_wire::FRAME_END);
    /// assert_eq!(
    ///     frame.encode_to_slice(&mut out[..10]),
    ///     Err(EncodeError::BufferTooSmall { needed: 21, available: 10 })
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn encode_to_slice(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let too_small = |needed: usize, out: &[u8]| EncodeError::BufferTooSmall {
            needed,
            available: out.len(),
        };
        match &self.payload {
            FramePayload::Body(b) => {
                let [l0, l1, l2, l3] = body_size(b)?.to_be_bytes();
                let n = b.len() + FRAME_OVERHEAD;
                let Some(d) = out.get_mut(..n) else {
                    return Err(too_small(n, out));
                };
                let [c0, c1] = self.channel.to_be_bytes();
                d[..FRAME_HEADER_SIZE].copy_from_slice(&[FRAME_BODY, c0, c1, l0, l1, l2, l3]);
                d[FRAME_HEADER_SIZE..n - 1].copy_from_slice(b);
                d[n - 1] = FRAME_END;
                Ok(n)
            }
            FramePayload::Heartbeat => {
                let Some(d) = out.get_mut(..FRAME_OVERHEAD) else {
                    return Err(too_small(FRAME_OVERHEAD, out));
                };
                d.copy_from_slice(&self.heartbeat_bytes());
                Ok(FRAME_OVERHEAD)
            }
            _ => small_to_slice(self.channel, self.small(), out),
        }
    }

    /// Appends the frame to `out` and returns the bytes written; `out` is
    /// left as it was if the frame cannot be encoded.
    ///
    /// ```
    /// use amqp_wire::Frame;
    ///
    /// let mut out = Vec::new();
    /// assert_eq!(Frame::heartbeat().encode_to_vec(&mut out)?, 8);
    /// assert_eq!(out, [8, 0, 0, 0, 0, 0, 0, 0xce]);
    /// # Ok::<(), amqp_wire::EncodeError>(())
    /// ```
    pub fn encode_to_vec(&self, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
        let start = out.len();
        let guess = match &self.payload {
            FramePayload::Body(b) => b.len() + FRAME_OVERHEAD,
            FramePayload::Heartbeat => FRAME_OVERHEAD,
            _ => 512,
        };
        out.resize(start + guess, 0);
        let r = match self.encode_to_slice(&mut out[start..]) {
            Err(EncodeError::BufferTooSmall { needed, .. }) => {
                out.resize(start + needed, 0);
                self.encode_to_slice(&mut out[start..])
            }
            r => r,
        };
        out.truncate(start + *r.as_ref().unwrap_or(&0));
        r
    }

    /// The 8 bytes of a heartbeat frame on this frame's channel.
    fn heartbeat_bytes(&self) -> [u8; FRAME_OVERHEAD] {
        let [hi, lo] = self.channel.to_be_bytes();
        [FRAME_HEARTBEAT, hi, lo, 0, 0, 0, 0, FRAME_END]
    }
}

fn body_size(b: &Bytes) -> Result<u32, EncodeError> {
    u32::try_from(b.len()).map_err(|_| EncodeError::TooLong {
        what: "frame payload",
        len: b.len() as u64,
    })
}
