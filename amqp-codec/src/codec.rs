//! `tokio_util::codec` adapter: [`AmqpCodec`] decodes and encodes frames,
//! so `Framed<TcpStream, AmqpCodec>` is a stream and sink of frames.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use amqp_codec::codec::AmqpCodec;
//! use tokio_util::codec::Framed;
//! let tcp = tokio::net::TcpStream::connect("127.0.0.1:5672").await?;
//! let framed = Framed::new(tcp, AmqpCodec::new());
//! # drop(framed); Ok(()) }
//! ```
//!
//! The codec frames bytes only; it does not run the connection state
//! machine (the protocol header is written with
//! [`AmqpCodec::protocol_header`] on the client side).

use amqp_types::ProtocolError;
use amqp_wire::{Frame, FrameLimits, PROTOCOL_HEADER, Parsed, parse_frame};
use bytes::BytesMut;

/// Errors of the codec: I/O or a protocol fault in the input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The input is not valid AMQP framing.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A frame could not be encoded or exceeds frame_max.
    #[error(transparent)]
    Send(#[from] crate::stream::SendError),
}

/// Frames over a byte stream, with the frame_max in force (4096 until the
/// embedder sets the negotiated value with [`AmqpCodec::set_frame_max`]).
#[derive(Debug, Clone)]
pub struct AmqpCodec {
    frame_max: u32,
}

impl Default for AmqpCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl AmqpCodec {
    /// A codec with frame_max 4096.
    pub fn new() -> Self {
        AmqpCodec {
            frame_max: amqp_wire::FRAME_MIN_SIZE,
        }
    }

    /// Sets the negotiated frame_max (0 = no limit).
    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    /// The client's protocol header, to write before the first frame.
    pub fn protocol_header() -> [u8; 8] {
        PROTOCOL_HEADER
    }
}

impl tokio_util::codec::Decoder for AmqpCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let limits = FrameLimits::new(self.frame_max);
        if src.len() < amqp_wire::FRAME_HEADER_SIZE {
            return Ok(None);
        }
        // Judge the header first (frame_max, frame type) on a copy of its
        // 7 bytes, then take exactly one frame off the buffer: body frames
        // share its memory, nothing else is copied.
        let header = bytes::Bytes::copy_from_slice(&src[..amqp_wire::FRAME_HEADER_SIZE]);
        parse_frame(&header, limits)?;
        let size = u32::from_be_bytes([src[3], src[4], src[5], src[6]]) as u64;
        let total = usize::try_from(size + amqp_wire::FRAME_OVERHEAD as u64).unwrap_or(usize::MAX);
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let bytes = src.split_to(total).freeze();
        match parse_frame(&bytes, limits)? {
            Parsed::Complete { frame, .. } => Ok(Some(frame)),
            Parsed::Incomplete { .. } => Ok(None),
        }
    }
}

impl tokio_util::codec::Encoder<Frame> for AmqpCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let mut enc = crate::FrameEncoder::new();
        enc.set_frame_max(self.frame_max);
        enc.push_frame(&frame)?;
        for seg in enc.drain() {
            dst.extend_from_slice(&seg);
        }
        Ok(())
    }
}
