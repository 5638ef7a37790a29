//! The frame stream: an incremental decoder over owned input chunks and an
//! output queue that splits content by frame_max without copying bodies.

use amqp_types::{BasicProperties, ErrorKind, Method, ProtocolError, ReplyCode};
use amqp_wire::{
    EncodeError, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
    FRAME_MIN_SIZE, FRAME_OVERHEAD, Frame, FrameLimits, Parsed, ProtocolHeader, parse_frame,
    parse_protocol_header, write_body_frame_header,
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::VecDeque;

/// The most the decoder reserves for an incomplete frame before its bytes
/// arrive (a larger frame's buffer grows by doubling as they do).
const PARTIAL_RESERVE_MAX: usize = 1 << 20;

/// What the decoder produced.
// Frames are the common case; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The 8-byte protocol header (only when the decoder expects one).
    ProtocolHeader(ProtocolHeader),
    /// One frame.
    Frame(Frame),
}

/// An incremental frame decoder.
///
/// Input is handed over as owned [`Bytes`] chunks of any size (down to one
/// byte); frames come out in order. Frames that lie wholly inside a chunk
/// are parsed in place (bodies are slices of the chunk); only a frame that
/// straddles chunks is copied, and only that frame's bytes, each once
/// however finely the frame is chunked. What the decoder
/// holds is bounded: the unconsumed chunks the caller handed over, plus at
/// most one incomplete frame of at most `frame_max` + 8 bytes (the frame
/// size is checked from the 7-byte header before the rest is waited for).
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    /// Bytes of one incomplete frame, gathered across chunks.
    partial: BytesMut,
    /// The length `partial` must reach before it is parsed again (the
    /// frame's whole length once its header is known).
    partial_want: usize,
    /// Input not looked at yet.
    rest: VecDeque<Bytes>,
    frame_max: u32,
    expect_header: bool,
    /// Client side, before the first frame: a protocol header (a server
    /// refusing our version) or bytes that are no frame at all are told
    /// apart from frames.
    expect_greeting: bool,
    /// Stream offset of the first byte of `partial` (or of `rest` when
    /// `partial` is empty).
    offset: u64,
    failed: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder for frames (the client side, or a server after the
    /// protocol header), with the pre-tune frame_max of 4096.
    pub fn new() -> Self {
        FrameDecoder {
            partial: BytesMut::new(),
            partial_want: 0,
            rest: VecDeque::new(),
            frame_max: FRAME_MIN_SIZE,
            expect_header: false,
            expect_greeting: false,
            offset: 0,
            failed: false,
        }
    }

    /// A decoder that first expects the 8-byte protocol header (the server
    /// side of a connection).
    pub fn expecting_protocol_header() -> Self {
        FrameDecoder {
            expect_header: true,
            ..Self::new()
        }
    }

    /// A decoder for the client side of a connection: frames, except that
    /// before the first one it recognises what a client may get instead of
    /// `connection.start`. A server refusing the protocol version answers
    /// with its own protocol header: that comes out as
    /// [`Decoded::ProtocolHeader`]. A first byte that is neither a frame
    /// type nor the `A` of `AMQP` is an error,
    /// [`ErrorKind::NotAmqp`] (an HTTP server, say), rather than a frame
    /// header read from text (whose "size" is some gigabytes).
    pub fn for_client() -> Self {
        FrameDecoder {
            expect_greeting: true,
            ..Self::new()
        }
    }

    /// The frame_max in force for incoming frames (0 = no limit).
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Sets the frame_max in force (after `connection.tune-ok`).
    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    /// Hands over a chunk of input.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.rest.push_back(chunk);
        }
    }

    /// Bytes handed over and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.partial.len() + self.rest.iter().map(Bytes::len).sum::<usize>()
    }

    /// The stream offset of the next byte to decode.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the decoder stopped at an error (it stays stopped).
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Decodes the next frame, `Ok(None)` when more input is needed.
    ///
    /// After an error the decoder is stopped: every later call returns
    /// `Ok(None)`; the stream cannot be resynchronised.
    #[inline]
    pub fn decode(&mut self) -> Result<Option<Decoded>, ProtocolError> {
        if self.failed {
            return Ok(None);
        }
        let r = self.decode_inner();
        if let Err(e) = &r {
            self.failed = true;
            let _ = e;
        }
        r
    }

    /// The connection's fast path: the first input chunk and the limits,
    /// when the next frame is parsed straight from it (no partial frame
    /// gathered, no protocol header expected, no earlier failure). The
    /// caller parses the frame in its own stack slot (a frame moved out
    /// through [`decode`](Self::decode)'s result is copied twice) and
    /// reports a whole one with [`consume_front`](Self::consume_front);
    /// anything else (incomplete, an error) goes through `decode`, which
    /// parses it again.
    #[inline]
    pub(crate) fn front_chunk(&self) -> Option<(&Bytes, FrameLimits)> {
        if self.failed || self.expect_header || self.expect_greeting || !self.partial.is_empty() {
            return None;
        }
        Some((self.rest.front()?, FrameLimits::new(self.frame_max)))
    }

    /// A whole frame of `consumed` bytes was parsed from
    /// [`front_chunk`](Self::front_chunk).
    #[inline]
    pub(crate) fn consume_front(&mut self, consumed: usize) {
        if let Some(front) = self.rest.front_mut() {
            front.advance(consumed);
            if front.is_empty() {
                self.rest.pop_front();
            }
        }
        self.offset += consumed as u64;
    }

    #[inline]
    fn decode_inner(&mut self) -> Result<Option<Decoded>, ProtocolError> {
        if self.expect_header {
            return self.decode_header();
        }
        if self.expect_greeting {
            let Some(&first) = self
                .partial
                .first()
                .or(self.rest.front().and_then(|b| b.first()))
            else {
                return Ok(None);
            };
            match first {
                FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT => {
                    self.expect_greeting = false;
                }
                b'A' => return self.decode_greeting_header(),
                _ => return Err(self.not_amqp()),
            }
        }
        let limits = FrameLimits::new(self.frame_max);
        loop {
            if self.partial.is_empty() {
                let Some(front) = self.rest.front_mut() else {
                    return Ok(None);
                };
                match parse_frame(front, limits).map_err(|e| e.offset_by(self.offset))? {
                    Parsed::Complete { frame, consumed } => {
                        front.advance(consumed);
                        if front.is_empty() {
                            self.rest.pop_front();
                        }
                        self.offset += consumed as u64;
                        return Ok(Some(Decoded::Frame(frame)));
                    }
                    Parsed::Incomplete { needed } => {
                        // Move the incomplete frame's bytes aside (at most
                        // frame_max + 8, checked above when the header was
                        // there; otherwise fewer than 7 bytes), with room
                        // for the rest of the frame.
                        let front = self.rest.pop_front().unwrap_or_default();
                        self.gather_into_partial(&front, needed.get());
                    }
                }
            } else if self.partial.len() < self.partial_want {
                // Gather up to the length the last parse asked for before
                // parsing again: each byte of a trickled frame is copied
                // once, not once per chunk.
                let Some(front) = self.rest.front_mut() else {
                    return Ok(None);
                };
                let take = (self.partial_want - self.partial.len()).min(front.len());
                self.partial.extend_from_slice(&front[..take]);
                front.advance(take);
                if front.is_empty() {
                    self.rest.pop_front();
                }
            } else {
                // `partial` has what the last parse asked for: the whole
                // frame, or (when its header was short) 8 bytes.
                let frozen = std::mem::take(&mut self.partial).freeze();
                match parse_frame(&frozen, limits).map_err(|e| e.offset_by(self.offset))? {
                    Parsed::Complete { frame, consumed } => {
                        // `partial` never holds more than one frame.
                        debug_assert_eq!(consumed, frozen.len());
                        self.partial_want = 0;
                        self.offset += consumed as u64;
                        return Ok(Some(Decoded::Frame(frame)));
                    }
                    Parsed::Incomplete { needed } => {
                        // Only the frame header was short: now its size is
                        // known (and checked against frame_max).
                        self.gather_into_partial(&frozen, needed.get());
                    }
                }
            }
        }
    }

    /// Starts (or restarts) gathering an incomplete frame: `partial` gets
    /// `bytes` and room for the `needed` more that the parser asked for
    /// (capped, so that a header announcing a huge frame reserves no more
    /// than [`PARTIAL_RESERVE_MAX`] before its bytes arrive; past that the
    /// buffer grows by doubling).
    fn gather_into_partial(&mut self, bytes: &[u8], needed: usize) {
        let want = bytes.len().saturating_add(needed);
        let mut partial = BytesMut::with_capacity(want.min(PARTIAL_RESERVE_MAX));
        partial.extend_from_slice(bytes);
        self.partial = partial;
        self.partial_want = want;
    }

    /// Client side: 8 bytes starting with `A`, a server's protocol header
    /// or not AMQP at all.
    fn decode_greeting_header(&mut self) -> Result<Option<Decoded>, ProtocolError> {
        match self.decode_header() {
            Ok(Some(h)) => {
                self.expect_greeting = false;
                Ok(Some(h))
            }
            Ok(None) => Ok(None),
            Err(_) => Err(self.not_amqp()),
        }
    }

    /// [`ErrorKind::NotAmqp`] with the first bytes received (at most 32).
    fn not_amqp(&self) -> ProtocolError {
        let mut received: Vec<u8> = self.partial.iter().copied().take(32).collect();
        for chunk in &self.rest {
            let room = 32 - received.len();
            received.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        ProtocolError::frame_error(ErrorKind::NotAmqp { received }).at_offset(0)
    }

    fn decode_header(&mut self) -> Result<Option<Decoded>, ProtocolError> {
        while self.partial.len() < 8 {
            let Some(front) = self.rest.front_mut() else {
                break;
            };
            let take = (8 - self.partial.len()).min(front.len());
            self.partial.extend_from_slice(&front[..take]);
            front.advance(take);
            if front.is_empty() {
                self.rest.pop_front();
            }
        }
        match parse_protocol_header(&self.partial)? {
            Parsed::Complete { frame, consumed } => {
                self.partial.advance(consumed);
                self.offset += consumed as u64;
                self.expect_header = false;
                Ok(Some(Decoded::ProtocolHeader(frame)))
            }
            Parsed::Incomplete { .. } => Ok(None),
        }
    }
}

/// Why something could not be queued for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The frame would exceed the peer's frame_max.
    #[error("frame of {len} bytes exceeds frame_max {frame_max}")]
    FrameTooLarge {
        /// The encoded frame size.
        len: usize,
        /// The frame_max in force.
        frame_max: u32,
    },
    /// The value cannot be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Encoded properties are malformed ([`amqp_wire::check_properties`]).
    #[error("encoded properties: {0}")]
    Properties(ProtocolError),
}

/// A body to send with [`FrameEncoder::push_content_encoded`].
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// Copied into the output.
    Borrowed(&'a [u8]),
    /// Large pieces go out as slices of it, without a copy.
    Shared(&'a Bytes),
}

impl Body<'_> {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Body::Borrowed(b) => b.len(),
            Body::Shared(b) => b.len(),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The coalescing buffer goes out as a segment of its own at this size.
const SEAL_AT: usize = 64 * 1024;

/// Below this many queued bytes the coalescing buffer grows in place
/// rather than going out as a segment ([`FrameEncoder::room`]).
const GROW_IN_PLACE_BELOW: usize = 8 * 1024;

/// Bodies shorter than this are copied into the coalescing buffer rather
/// than queued as their own segment.
const COPY_BODY_BELOW: usize = 512;

/// The output queue: encoded frames waiting to be written, as a list of
/// [`Bytes`] segments suitable for vectored writes. Small frames are
/// coalesced into one segment; body bytes of content go out as slices of
/// the caller's body, never copied (except tiny ones).
#[derive(Debug, Default, Clone)]
pub struct FrameEncoder {
    segments: VecDeque<Bytes>,
    scratch: BytesMut,
    queued: usize,
    frame_max: u32,
}

impl FrameEncoder {
    /// An encoder with the pre-tune frame_max of 4096.
    pub fn new() -> Self {
        FrameEncoder {
            frame_max: FRAME_MIN_SIZE,
            ..Default::default()
        }
    }

    /// The frame_max frames are split and checked against (0 = no limit).
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Sets the frame_max (after tune).
    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    /// Bytes queued and not yet taken by [`FrameEncoder::poll_transmit`]:
    /// the number to watch for backpressure.
    pub fn queued(&self) -> usize {
        self.queued
    }

    fn limit(&self) -> usize {
        if self.frame_max == 0 {
            u32::MAX as usize
        } else {
            self.frame_max as usize
        }
    }

    /// Queues raw bytes (the protocol header).
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.room(bytes.len());
        self.scratch.extend_from_slice(bytes);
        self.queued += bytes.len();
    }

    /// Encodes one frame (checked against frame_max) and queues it; on
    /// error nothing is queued. The frame is encoded once, straight into
    /// the coalescing buffer, and measured there.
    pub fn push_frame(&mut self, frame: &Frame) -> Result<usize, SendError> {
        if let amqp_wire::FramePayload::Body(_) | amqp_wire::FramePayload::Heartbeat =
            &frame.payload
        {
            // Sized without encoding: written straight in, not over
            // zeroed room.
            let len = frame.encoded_len()?;
            if len > self.limit() {
                return Err(SendError::FrameTooLarge {
                    len,
                    frame_max: self.frame_max,
                });
            }
            self.room(len);
            let n = frame.encode(&mut self.scratch)?;
            self.queued += n;
            return Ok(n);
        }
        self.push_small(|out| frame.encode_to_slice(out))
    }

    /// [`push_frame`](Self::push_frame) for a method frame whose method
    /// is borrowed (not cloned into a [`Frame`]).
    pub fn push_method(&mut self, channel: u16, method: &Method) -> Result<usize, SendError> {
        let frame = amqp_wire::MethodFrame { channel, method };
        self.push_small(|out| frame.encode_to_slice(out))
    }

    /// Queues a method or header frame that `encode` writes at the front
    /// of a slice (or says how much room it needs).
    fn push_small(
        &mut self,
        encode: impl Fn(&mut [u8]) -> Result<usize, EncodeError>,
    ) -> Result<usize, SendError> {
        /// Room a method or header frame is encoded into first (most
        /// need far less; a larger one is encoded again in the room it
        /// said it needs).
        const GUESS: usize = 256;
        let mut room = GUESS;
        let (start, n) = loop {
            self.room(room);
            let start = self.scratch.len();
            self.scratch.resize(start + room, 0);
            match encode(&mut self.scratch[start..]) {
                Ok(n) => break (start, n),
                Err(EncodeError::BufferTooSmall { needed, .. }) if needed > room => {
                    self.scratch.truncate(start);
                    if needed > self.limit() {
                        return Err(SendError::FrameTooLarge {
                            len: needed,
                            frame_max: self.frame_max,
                        });
                    }
                    room = needed;
                }
                Err(e) => {
                    self.scratch.truncate(start);
                    return Err(e.into());
                }
            }
        };
        if n > self.limit() {
            self.scratch.truncate(start);
            return Err(SendError::FrameTooLarge {
                len: n,
                frame_max: self.frame_max,
            });
        }
        self.scratch.truncate(start + n);
        self.queued += n;
        Ok(n)
    }

    /// Checks that a method frame (and a content header) would fit,
    /// without queuing anything. A method whose arguments cannot add up to
    /// more than frame_max (no table, no long string) is not measured.
    pub fn check_fits(&self, frame: &Frame) -> Result<(), SendError> {
        if let amqp_wire::FramePayload::Method(m) = &frame.payload {
            return self.check_method_fits(frame.channel, m);
        }
        self.fits(frame.encoded_len()?)
    }

    /// [`check_fits`](Self::check_fits) for a method frame whose method
    /// is borrowed.
    pub fn check_method_fits(&self, channel: u16, method: &Method) -> Result<(), SendError> {
        if let Some(max) = method.kind().max_payload_len()
            && max + FRAME_OVERHEAD <= self.limit()
        {
            return Ok(());
        }
        self.fits(amqp_wire::MethodFrame { channel, method }.encoded_len()?)
    }

    fn fits(&self, len: usize) -> Result<(), SendError> {
        if len > self.limit() {
            return Err(SendError::FrameTooLarge {
                len,
                frame_max: self.frame_max,
            });
        }
        Ok(())
    }

    /// Queues a content method, its header and the body split into body
    /// frames of at most frame_max bytes each. Nothing is queued on error.
    pub fn push_content(
        &mut self,
        channel: u16,
        method: &Method,
        properties: &BasicProperties,
        body: &Bytes,
    ) -> Result<usize, SendError> {
        // (Borrowed, the method and properties are encoded without being
        // cloned into frames.)
        let h = amqp_wire::HeaderFrame {
            channel,
            body_size: body.len() as u64,
            properties,
        };
        self.check_method_fits(channel, method)?;
        self.fits(h.encoded_len()?)?;
        let mut n = self.push_method(channel, method)?;
        n += self.push_small(|out| h.encode_to_slice(out))?;
        let max_body = self.limit().saturating_sub(FRAME_OVERHEAD).max(1);
        let mut off = 0;
        while off < body.len() {
            let end = body.len().min(off + max_body);
            let piece = body.slice(off..end);
            n += self.push_body(channel, piece);
            off = end;
        }
        Ok(n)
    }

    /// [`push_content`](Self::push_content) with the properties already
    /// encoded ([`amqp_wire::encode_properties`], checked with
    /// [`amqp_wire::check_properties`]) and the body borrowed or shared.
    /// Nothing is queued on error.
    pub fn push_content_encoded(
        &mut self,
        channel: u16,
        method: &Method,
        properties: &[u8],
        body: Body<'_>,
    ) -> Result<usize, SendError> {
        self.check_method_fits(channel, method)?;
        let header_len = properties.len() + 12 + FRAME_OVERHEAD;
        if header_len > self.limit() {
            return Err(SendError::FrameTooLarge {
                len: header_len,
                frame_max: self.frame_max,
            });
        }
        let mut n = self.push_method(channel, method)?;
        let len = body.len();
        self.room(header_len);
        n += amqp_wire::write_header_frame(&mut self.scratch, channel, len as u64, properties);
        self.queued += header_len;
        let max_body = self.limit().saturating_sub(FRAME_OVERHEAD).max(1);
        let mut off = 0;
        while off < len {
            let end = len.min(off + max_body);
            n += match body {
                Body::Shared(b) => self.push_body(channel, b.slice(off..end)),
                Body::Borrowed(b) => self.push_body_copied(channel, &b[off..end]),
            };
            off = end;
        }
        Ok(n)
    }

    fn push_body_copied(&mut self, channel: u16, piece: &[u8]) -> usize {
        let len = piece.len();
        self.room(len + FRAME_OVERHEAD);
        write_body_frame_header(&mut self.scratch, channel, len as u32);
        self.scratch.put_slice(piece);
        self.scratch.put_u8(FRAME_END);
        self.queued += len + FRAME_OVERHEAD;
        self.seal_if_large();
        len + FRAME_OVERHEAD
    }

    /// Moves the coalescing buffer to the segments once it holds
    /// [`SEAL_AT`] bytes: many copied bodies then go out in buffers of
    /// about that size, which the allocator reuses, instead of one buffer
    /// doubling into fresh memory (a consumer's 1,000 deliveries of 1 KiB
    /// grew it past 1 MiB, and zeroing the new pages was half of the
    /// broker's CPU in `perf`).
    fn seal_if_large(&mut self) {
        if self.scratch.len() >= SEAL_AT {
            let full = self.scratch.split().freeze();
            self.segments.push_back(full);
        }
    }

    /// Makes room for `need` more bytes in the coalescing buffer. Once it
    /// holds [`GROW_IN_PLACE_BELOW`] bytes, it does so without moving what
    /// it holds: the full buffer goes out as a segment of its own and a
    /// new one twice its size (up to [`SEAL_AT`]) takes over. Growing in
    /// place would copy everything queued at each doubling, about once
    /// more for every byte a burst of copied bodies queues. Below that it
    /// grows in place (a cheap copy), so that a small burst, such as one
    /// publish, stays one segment: a peer that writes segments one by one
    /// without `TCP_NODELAY` would otherwise wait on Nagle's algorithm and
    /// the delayed ack (40 ms) for the second. An empty buffer grows to
    /// just `need` (a quiet connection keeps little).
    fn room(&mut self, need: usize) {
        if self.scratch.capacity() - self.scratch.len() >= need {
            return;
        }
        if self.scratch.len() < GROW_IN_PLACE_BELOW {
            self.scratch.reserve(need);
            return;
        }
        let next = (self.scratch.capacity() * 2).min(SEAL_AT).max(need);
        let full = std::mem::replace(&mut self.scratch, BytesMut::with_capacity(next));
        self.segments.push_back(full.freeze());
    }

    /// Queues one body frame whose bytes are `piece` (the caller keeps it
    /// within frame_max − 8).
    pub fn push_body(&mut self, channel: u16, piece: Bytes) -> usize {
        let len = piece.len();
        self.room(if len < COPY_BODY_BELOW {
            len + FRAME_OVERHEAD
        } else {
            FRAME_OVERHEAD
        });
        write_body_frame_header(&mut self.scratch, channel, len as u32);
        if len < COPY_BODY_BELOW {
            self.scratch.put_slice(&piece);
        } else {
            let head = self.scratch.split().freeze();
            self.segments.push_back(head);
            self.segments.push_back(piece);
        }
        self.scratch.put_u8(FRAME_END);
        self.queued += len + FRAME_OVERHEAD;
        len + FRAME_OVERHEAD
    }

    /// Takes the next segment of bytes to write, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        /// Less room than this left in the scratch buffer once everything
        /// is taken is given back (a quiet connection keeps none).
        const SMALL_SCRATCH: usize = 1024;
        let b = match self.segments.pop_front() {
            Some(b) => b,
            None if !self.scratch.is_empty() => {
                let b = self.scratch.split().freeze();
                if self.scratch.capacity() < SMALL_SCRATCH {
                    self.scratch = BytesMut::new();
                }
                b
            }
            None => return None,
        };
        self.queued -= b.len();
        Some(b)
    }

    /// Room held by the encode buffer (tests of what a quiet connection
    /// keeps).
    #[cfg(test)]
    pub(crate) fn scratch_capacity(&self) -> usize {
        self.scratch.capacity()
    }

    /// Takes everything queued as one list of segments (for a vectored
    /// write).
    pub fn drain(&mut self) -> Vec<Bytes> {
        let mut v = Vec::with_capacity(self.segments.len() + 1);
        while let Some(b) = self.poll_transmit() {
            v.push(b);
        }
        v
    }
}

/// Checks a frame_max a peer proposes or answers: 0 (no limit) or at least
/// 4096. A smaller value is refused with 530 NOT_ALLOWED (rabbitmq-c's
/// advisory: a frame_max below 4096 must not be accepted).
pub fn check_frame_max(frame_max: u32) -> Result<(), ProtocolError> {
    if frame_max != 0 && frame_max < FRAME_MIN_SIZE {
        return Err(ProtocolError::connection(
            ReplyCode::NOT_ALLOWED,
            ErrorKind::Refused(format!("frame_max={frame_max} < {FRAME_MIN_SIZE} min_size")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_types::method::{BasicAck, BasicPublish, QueueDeclare};
    use amqp_wire::FramePayload;

    /// Encoded properties and a borrowed or shared body give the very
    /// bytes push_content gives, body split across frames included.
    #[test]
    fn encoded_content_is_the_same_bytes() {
        let props = BasicProperties {
            content_type: Some(amqp_types::ShortString::from_static("text/plain")),
            delivery_mode: Some(2),
            headers: Some(amqp_types::FieldTable::new()),
            ..Default::default()
        };
        let mut wire = Vec::new();
        amqp_wire::encode_properties(&props, &mut wire).unwrap();
        let method: Method = BasicPublish::default().into();
        for len in [0usize, 1, 511, 512, 4088, 4089, 10_000] {
            let body = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>());
            let all = |enc: &mut FrameEncoder| enc.drain().concat();
            let mut plain = FrameEncoder::new();
            let n = plain.push_content(3, &method, &props, &body).unwrap();
            let expected = all(&mut plain);
            assert_eq!(n, expected.len());
            for b in [Body::Shared(&body), Body::Borrowed(&body)] {
                let mut enc = FrameEncoder::new();
                let m = enc.push_content_encoded(3, &method, &wire, b).unwrap();
                assert_eq!(enc.queued(), m);
                assert_eq!(all(&mut enc), expected, "body of {len} bytes");
            }
        }
        // Many copied bodies leave in segments of about SEAL_AT bytes, in
        // order, not in one buffer that doubles.
        let body = vec![5u8; 1024];
        // Queued bytes are never moved to grow the buffer once they are
        // GROW_IN_PLACE_BELOW or more: while no segment is added, what is
        // queued stays where it was written.
        let (mut enc, mut plain) = (FrameEncoder::new(), FrameEncoder::new());
        let mut moved = 0;
        for _ in 0..1000 {
            let (before, at) = (enc.segments.len(), enc.scratch.as_ptr());
            let queued = enc.scratch.len() >= GROW_IN_PLACE_BELOW;
            enc.push_content_encoded(3, &method, &wire, Body::Borrowed(&body))
                .unwrap();
            if queued && enc.segments.len() == before && enc.scratch.as_ptr() != at {
                moved += 1;
            }
            plain
                .push_content(3, &method, &props, &Bytes::from(body.clone()))
                .unwrap();
        }
        assert_eq!(moved, 0, "pushes that moved the queued bytes to grow");
        // And one publish is one segment (a small burst grows in place).
        let mut one = FrameEncoder::new();
        one.set_frame_max(131_072);
        one.push_content(3, &method, &props, &Bytes::from(vec![1u8; 100]))
            .unwrap();
        assert_eq!(one.drain().len(), 1, "one publish, one segment");
        one.push_content_encoded(3, &method, &wire, Body::Borrowed(&[1u8; 2000]))
            .unwrap();
        assert_eq!(one.drain().len(), 1, "one copied publish, one segment");
        let segments = enc.drain();
        assert!(segments.len() > 10, "{} segments", segments.len());
        assert!(segments.iter().all(|s| s.len() < SEAL_AT + 2048));
        assert_eq!(segments.concat(), plain.drain().concat());
        // A header frame over frame_max is refused and nothing is queued.
        let mut enc = FrameEncoder::new();
        let long = vec![0u8; 5000];
        assert!(matches!(
            enc.push_content_encoded(3, &method, &long, Body::Borrowed(b"x")),
            Err(SendError::FrameTooLarge { .. })
        ));
        assert_eq!(enc.queued(), 0);
    }

    fn frames_bytes() -> (Vec<Frame>, Bytes) {
        let mut enc = FrameEncoder::new();
        enc.set_frame_max(4096);
        let mut frames = vec![];
        for i in 0..5u64 {
            let f = Frame::method(
                1,
                BasicAck {
                    delivery_tag: i,
                    multiple: false,
                },
            );
            enc.push_frame(&f).unwrap();
            frames.push(f);
        }
        let body = Bytes::from(vec![7u8; 10_000]);
        let publish = Method::from(BasicPublish::default());
        enc.push_content(2, &publish, &BasicProperties::default(), &body)
            .unwrap();
        frames.push(Frame::method(2, BasicPublish::default()));
        frames.push(Frame::header(2, 10_000, BasicProperties::default()));
        frames.push(Frame::body(2, body.slice(0..4088)));
        frames.push(Frame::body(2, body.slice(4088..8176)));
        frames.push(Frame::body(2, body.slice(8176..)));
        frames.push(Frame::heartbeat());
        enc.push_frame(&Frame::heartbeat()).unwrap();
        let mut all = BytesMut::new();
        let q = enc.queued();
        for s in enc.drain() {
            all.extend_from_slice(&s);
        }
        assert_eq!(q, all.len());
        assert_eq!(enc.queued(), 0);
        (frames, all.freeze())
    }

    fn decode_all(dec: &mut FrameDecoder) -> Vec<Frame> {
        let mut out = vec![];
        while let Some(d) = dec.decode().unwrap() {
            match d {
                Decoded::Frame(f) => out.push(f),
                Decoded::ProtocolHeader(_) => panic!(),
            }
        }
        out
    }

    #[test]
    fn any_chunking_gives_the_same_frames() {
        let (frames, all) = frames_bytes();
        for chunk in [1usize, 2, 3, 7, 8, 100, 4095, 4096, 4097, all.len()] {
            let mut dec = FrameDecoder::new();
            let mut out = vec![];
            let mut off = 0;
            while off < all.len() {
                let end = all.len().min(off + chunk);
                dec.push(all.slice(off..end));
                out.extend(decode_all(&mut dec));
                assert!(dec.buffered() <= 4096 + 8, "buffered {}", dec.buffered());
                off = end;
            }
            assert_eq!(out, frames, "chunk {chunk}");
            assert_eq!(dec.offset(), all.len() as u64);
        }
    }

    #[test]
    fn frames_inside_a_chunk_are_zero_copy() {
        let (_, all) = frames_bytes();
        let mut dec = FrameDecoder::new();
        dec.push(all.clone());
        let range = all.as_ptr() as usize..all.as_ptr() as usize + all.len();
        for f in decode_all(&mut dec) {
            if let FramePayload::Body(b) = f.payload {
                assert!(range.contains(&(b.as_ptr() as usize)));
            }
        }
    }

    #[test]
    fn split_bodies_are_sent_without_copy_and_within_frame_max() {
        let mut enc = FrameEncoder::new();
        enc.set_frame_max(4096);
        let body = Bytes::from(vec![1u8; 3 * 4088 + 1]);
        enc.push_content(
            1,
            &BasicPublish::default().into(),
            &Default::default(),
            &body,
        )
        .unwrap();
        let segs = enc.drain();
        let inside = segs
            .iter()
            .filter(|s| s.as_ptr() >= body.as_ptr() && s.len() == 4088)
            .count();
        assert_eq!(inside, 3);
    }

    #[test]
    fn frame_max_is_checked_from_the_header() {
        // A 7-byte header announcing 5000 bytes at frame_max 4096: refused
        // before the payload arrives.
        let mut dec = FrameDecoder::new();
        dec.push(Bytes::from_static(&[3, 0, 1, 0, 0, 0x13, 0x88]));
        let e = dec.decode().unwrap_err();
        assert_eq!(e.code(), ReplyCode::FRAME_ERROR);
        // Exactly frame_max of payload is RabbitMQ's slack: accepted.
        let mut dec = FrameDecoder::new();
        let mut b = vec![3, 0, 1, 0, 0, 0x10, 0x00];
        b.extend(vec![0u8; 4096]);
        b.push(0xCE);
        dec.push(Bytes::from(b));
        assert!(matches!(dec.decode().unwrap(), Some(Decoded::Frame(_))));
    }

    #[test]
    fn frame_size_overflow_is_refused_not_wrapped() {
        // rabbitmq-c advisory: size 0xFFFFFFFF must not overflow the
        // computation of the frame length.
        for frame_max in [0, 4096, u32::MAX] {
            let mut dec = FrameDecoder::new();
            dec.set_frame_max(frame_max);
            dec.push(Bytes::from_static(&[1, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]));
            match dec.decode() {
                Err(e) => assert_eq!(e.code(), ReplyCode::FRAME_ERROR),
                Ok(None) => {
                    // Unlimited: waits for the bytes; holds only what it got.
                    assert!(dec.buffered() <= 16);
                }
                Ok(Some(_)) => panic!("decoded a frame from 9 bytes"),
            }
        }
    }

    #[test]
    fn frame_max_below_4096_is_refused() {
        assert_eq!(
            check_frame_max(4095).unwrap_err().code(),
            ReplyCode::NOT_ALLOWED
        );
        assert_eq!(
            check_frame_max(1).unwrap_err().code(),
            ReplyCode::NOT_ALLOWED
        );
        check_frame_max(0).unwrap();
        check_frame_max(4096).unwrap();
    }

    #[test]
    fn too_large_frames_are_not_sent() {
        let mut enc = FrameEncoder::new();
        let mut args = amqp_types::FieldTable::new();
        args.insert("big", amqp_types::LongString::from(vec![0u8; 5000]));
        let f = Frame::method(
            1,
            QueueDeclare {
                arguments: args,
                ..Default::default()
            },
        );
        assert!(matches!(
            enc.push_frame(&f),
            Err(SendError::FrameTooLarge { .. })
        ));
        assert_eq!(enc.queued(), 0);
        // One that fits but is larger than the first room it is encoded
        // in, after a small one: the same bytes as encoded on its own.
        let mut args = amqp_types::FieldTable::new();
        args.insert("big", amqp_types::LongString::from(vec![7u8; 3000]));
        let big = Frame::method(
            2,
            QueueDeclare {
                arguments: args,
                ..Default::default()
            },
        );
        let small = Frame::method(1, BasicAck::default());
        let n = enc.push_frame(&small).unwrap() + enc.push_frame(&big).unwrap();
        assert_eq!(enc.queued(), n);
        let mut expected = Vec::new();
        small.encode_to_vec(&mut expected).unwrap();
        big.encode_to_vec(&mut expected).unwrap();
        assert_eq!(enc.drain().concat(), expected);
    }

    #[test]
    fn protocol_header_then_frames() {
        let mut dec = FrameDecoder::expecting_protocol_header();
        for b in b"AMQP\x00\x00\x09\x01" {
            dec.push(Bytes::copy_from_slice(&[*b]));
        }
        assert!(matches!(
            dec.decode().unwrap(),
            Some(Decoded::ProtocolHeader(h)) if h.is_0_9_1()
        ));
        let mut dec = FrameDecoder::expecting_protocol_header();
        dec.push(Bytes::from_static(b"GET / HTTP/1.1\r\n"));
        assert!(dec.decode().is_err());
        assert_eq!(dec.decode().unwrap(), None);
    }
}
