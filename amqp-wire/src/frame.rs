//! Frames and the protocol header.

use amqp_types::constants::{FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};
use amqp_types::{BasicProperties, Method};
use bytes::Bytes;

/// One AMQP frame: a channel number and what the frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The channel (0 for the connection).
    pub channel: u16,
    /// What the frame carries.
    pub payload: FramePayload,
}

/// The payload of a [`Frame`], by frame type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FramePayload {
    /// Type 1: a method with its arguments.
    Method(Method),
    /// Type 2: a content header. Boxed: the 14 properties take ~450 bytes,
    /// and keeping them inline would make every frame (acks and bodies
    /// included) that large to move; one allocation per message is cheaper.
    Header(Box<ContentHeader>),
    /// Type 3: a piece of a message body. Parsed bodies of
    /// [`ZERO_COPY_MIN`](crate::ZERO_COPY_MIN) bytes or more share the input
    /// buffer (zero copy); smaller ones are copied.
    Body(Bytes),
    /// Type 8: a heartbeat.
    Heartbeat,
}

impl FramePayload {
    /// The frame type octet.
    pub const fn frame_type(&self) -> u8 {
        match self {
            FramePayload::Method(_) => FRAME_METHOD,
            FramePayload::Header(_) => FRAME_HEADER,
            FramePayload::Body(_) => FRAME_BODY,
            FramePayload::Heartbeat => FRAME_HEARTBEAT,
        }
    }
}

impl Frame {
    /// A method frame.
    pub fn method(channel: u16, method: impl Into<Method>) -> Self {
        Frame {
            channel,
            payload: FramePayload::Method(method.into()),
        }
    }

    /// A content header frame for a `basic` message.
    pub fn header(channel: u16, body_size: u64, properties: BasicProperties) -> Self {
        Frame {
            channel,
            payload: FramePayload::Header(Box::new(ContentHeader {
                weight: 0,
                body_size,
                properties,
            })),
        }
    }

    /// A body frame.
    pub fn body(channel: u16, body: Bytes) -> Self {
        Frame {
            channel,
            payload: FramePayload::Body(body),
        }
    }

    /// A heartbeat frame (on channel 0).
    pub const fn heartbeat() -> Self {
        Frame {
            channel: 0,
            payload: FramePayload::Heartbeat,
        }
    }

    /// The frame type octet.
    pub const fn frame_type(&self) -> u8 {
        self.payload.frame_type()
    }
}

/// A content header: the size of the body that follows and the message's
/// properties. Only the `basic` class (60) has content, so the class id is
/// implied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ContentHeader {
    /// The unused `weight` field (0 in practice), kept for byte-exactness.
    pub weight: u16,
    /// Total body size in bytes, over all body frames.
    pub body_size: u64,
    /// The message properties.
    pub properties: BasicProperties,
}

/// The 8-byte protocol header a client opens with: `AMQP` and four octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ProtocolHeader {
    /// The four octets after `AMQP` (`0 0 9 1` for AMQP 0-9-1).
    pub version: [u8; 4],
}

impl ProtocolHeader {
    /// `AMQP 0 0 9 1`.
    pub const AMQP_0_9_1: ProtocolHeader = ProtocolHeader {
        version: [0, 0, 9, 1],
    };

    /// Whether this is AMQP 0-9-1.
    pub fn is_0_9_1(&self) -> bool {
        *self == Self::AMQP_0_9_1
    }

    /// The 8 bytes on the wire.
    pub fn to_bytes(&self) -> [u8; 8] {
        let v = self.version;
        [b'A', b'M', b'Q', b'P', v[0], v[1], v[2], v[3]]
    }
}

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Frame {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let channel = u.arbitrary()?;
        let payload = match u.choose_index(4)? {
            0 => FramePayload::Method(u.arbitrary()?),
            1 => FramePayload::Header(u.arbitrary()?),
            2 => FramePayload::Body(Bytes::from(u.arbitrary::<Vec<u8>>()?)),
            _ => FramePayload::Heartbeat,
        };
        Ok(Frame { channel, payload })
    }
}
