//! Reply codes and the workspace's protocol error type.

use std::fmt;

/// An AMQP reply code, as carried by `connection.close`, `channel.close`
/// and `basic.return`.
///
/// An open type: peers send codes outside the spec (pika closes channels
/// with 0), so any `u16` is a `ReplyCode`; the spec's codes are associated
/// constants.
///
/// ```
/// use amqp_types::{ReplyCode, ReplyClass};
/// assert_eq!(ReplyCode::NOT_FOUND.class(), ReplyClass::Soft);
/// assert_eq!(ReplyCode::FRAME_ERROR.class(), ReplyClass::Hard);
/// assert_eq!(ReplyCode(0).name(), None);
/// assert_eq!(ReplyCode::NO_ROUTE.to_string(), "312 NO_ROUTE");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ReplyCode(pub u16);

/// What a reply code means for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum ReplyClass {
    /// 200: success.
    Success,
    /// A soft error: only the channel closes.
    Soft,
    /// A hard error: the whole connection closes.
    Hard,
    /// A code the spec does not define.
    Unknown,
}

macro_rules! reply_codes {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, $class:ident; )*) => {
        impl ReplyCode {
            $( $(#[$doc])* pub const $name: ReplyCode = ReplyCode($code); )*

            /// The spec's name for the code (`"NOT_FOUND"`), if it has one.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $code => Some(stringify!($name)), )*
                    _ => None,
                }
            }

            /// Whether the code is success, a soft (channel) error or a hard
            /// (connection) error.
            pub const fn class(self) -> ReplyClass {
                match self.0 {
                    $( $code => ReplyClass::$class, )*
                    _ => ReplyClass::Unknown,
                }
            }
        }
    };
}

reply_codes! {
    /// 200: the method completed normally.
    REPLY_SUCCESS = 200, Success;
    /// 311: the content was too large (soft).
    CONTENT_TOO_LARGE = 311, Soft;
    /// 312: a mandatory message could not be routed (soft, in `basic.return`).
    NO_ROUTE = 312, Soft;
    /// 313: an immediate message had no consumer (soft).
    NO_CONSUMERS = 313, Soft;
    /// 320: an operator closed the connection (hard).
    CONNECTION_FORCED = 320, Hard;
    /// 402: invalid path (hard).
    INVALID_PATH = 402, Hard;
    /// 403: access refused (soft).
    ACCESS_REFUSED = 403, Soft;
    /// 404: not found (soft).
    NOT_FOUND = 404, Soft;
    /// 405: resource locked, e.g. an exclusive queue (soft).
    RESOURCE_LOCKED = 405, Soft;
    /// 406: precondition failed (soft).
    PRECONDITION_FAILED = 406, Soft;
    /// 501: a malformed frame (hard).
    FRAME_ERROR = 501, Hard;
    /// 502: a syntax error in a method's fields (hard).
    SYNTAX_ERROR = 502, Hard;
    /// 503: an invalid command (hard).
    COMMAND_INVALID = 503, Hard;
    /// 504: a channel error (hard).
    CHANNEL_ERROR = 504, Hard;
    /// 505: an unexpected frame (hard).
    UNEXPECTED_FRAME = 505, Hard;
    /// 506: the server ran out of a resource (hard).
    RESOURCE_ERROR = 506, Hard;
    /// 530: not allowed (hard).
    NOT_ALLOWED = 530, Hard;
    /// 540: not implemented (hard).
    NOT_IMPLEMENTED = 540, Hard;
    /// 541: internal error (hard).
    INTERNAL_ERROR = 541, Hard;
}

impl ReplyCode {
    /// Whether an error with this code closes the whole connection (a hard
    /// error or an unknown code) rather than just the channel.
    pub const fn is_hard(self) -> bool {
        !matches!(self.class(), ReplyClass::Soft | ReplyClass::Success)
    }
}

impl fmt::Debug for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{} {}", self.0, n),
            None => write!(f, "{}", self.0),
        }
    }
}

impl From<u16> for ReplyCode {
    fn from(v: u16) -> Self {
        ReplyCode(v)
    }
}
impl From<ReplyCode> for u16 {
    fn from(v: ReplyCode) -> Self {
        v.0
    }
}

/// What an error closes: one channel or the whole connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Scope {
    /// A soft error: `channel.close` on the channel.
    Channel,
    /// A hard error: `connection.close`.
    Connection,
}

/// What was wrong, in words. The reply code and scope are on
/// [`ProtocolError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The frame's end octet was not 0xCE.
    #[error("invalid frame end octet 0x{found:02x} (expected 0xce)")]
    BadFrameEnd {
        /// The octet found.
        found: u8,
    },
    /// The frame type octet is not 1, 2, 3 or 8.
    #[error("unknown frame type {frame_type}")]
    UnknownFrameType {
        /// The type octet.
        frame_type: u8,
    },
    /// The frame announces more payload than frame_max allows.
    #[error("frame too large: payload of {size} bytes, frame_max {frame_max}")]
    FrameTooLarge {
        /// The announced payload size.
        size: u32,
        /// The frame_max in force.
        frame_max: u32,
    },
    /// The class/method pair names no method.
    #[error("unknown method {class_id}/{method_id}")]
    UnknownMethod {
        /// The class id.
        class_id: u16,
        /// The method id.
        method_id: u16,
    },
    /// A content header for a class that has no content.
    #[error("content header for class {class_id}, which has no content")]
    UnknownContentClass {
        /// The class id.
        class_id: u16,
    },
    /// The payload ended inside a field.
    #[error("truncated {what}: payload ends before the field does")]
    Truncated {
        /// The field or structure being read.
        what: &'static str,
    },
    /// A method or header payload had bytes after its last field.
    #[error("{count} trailing bytes after the last field")]
    TrailingBytes {
        /// How many bytes were left over.
        count: usize,
    },
    /// A field value had a type letter outside RabbitMQ's set.
    #[error("unknown field value type {}", describe_letter(*.letter))]
    UnknownFieldType {
        /// The type octet.
        letter: u8,
    },
    /// Tables/arrays nest deeper than [`MAX_NESTING_DEPTH`](crate::MAX_NESTING_DEPTH).
    #[error("field tables nested deeper than {limit} levels")]
    NestingTooDeep {
        /// The limit.
        limit: usize,
    },
    /// A length field announces more bytes than its container holds.
    #[error("{what} length {len} exceeds the {available} bytes left")]
    LengthOverrun {
        /// The field being read.
        what: &'static str,
        /// The announced length.
        len: u64,
        /// The bytes that were left.
        available: usize,
    },
    /// Property flags with bits set that name no property.
    #[error("property flags 0x{flags:04x} set reserved bits")]
    BadPropertyFlags {
        /// The flags word.
        flags: u16,
    },
    /// A heartbeat frame with a payload.
    #[error("heartbeat frame with a {size}-byte payload")]
    BadHeartbeat {
        /// Payload size.
        size: u32,
    },
    /// A protocol header other than `AMQP 0 0 9 1`.
    #[error("bad protocol header {header:02x?}")]
    BadProtocolHeader {
        /// The bytes received (up to 8).
        header: Vec<u8>,
    },
    /// Client side: the server answered with a protocol header instead of
    /// `connection.start`, which is how a server refuses the protocol
    /// version the client asked for (it names its own, then closes).
    #[error(
        "the server refused AMQP 0-9-1: it answered with the protocol header of {}",
        describe_protocol(*.version)
    )]
    ProtocolVersionRefused {
        /// The four octets after `AMQP` in the server's header (protocol
        /// id, major, minor, revision; `0 1 0 0` is AMQP 1.0).
        version: [u8; 4],
    },
    /// Client side: the peer's first bytes are neither a frame nor a
    /// protocol header; it is not an AMQP server (an HTTP server, a TLS
    /// port spoken to in plain text, ...).
    #[error("not an AMQP server: it answered \"{}\"", .received.escape_ascii())]
    NotAmqp {
        /// The first bytes received (at most 32).
        received: Vec<u8>,
    },
    /// A frame that is valid in itself but not at this point of the
    /// conversation.
    #[error("unexpected frame: {what}")]
    UnexpectedFrame {
        /// What was expected and what came.
        what: String,
    },
    /// A configured limit was exceeded (message size, buffered bytes,
    /// channels, ...).
    #[error("{what} of {size} exceeds the limit of {limit}")]
    LimitExceeded {
        /// What was too large or too many.
        what: &'static str,
        /// The size or count seen.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// Any other refusal, with RabbitMQ-style explanatory text (the router's
    /// and the embedder's semantic errors).
    #[error("{0}")]
    Refused(String),
}

/// A protocol header's version octets in words: `AMQP 0-9-1`, `AMQP 1.0.0`
/// (AMQP 1.0 headers carry protocol id 0, 2 for TLS or 3 for SASL, then
/// major, minor, revision).
fn describe_protocol(v: [u8; 4]) -> String {
    match v {
        [0, 0, 9, 1] => "AMQP 0-9-1 (its own version: it refused this connection)".to_string(),
        [0, 0, m, r] => format!("AMQP 0-{m}-{r}"),
        [id, major, minor, rev] => {
            format!("AMQP {major}.{minor}.{rev} (protocol id {id})")
        }
    }
}

fn describe_letter(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}' (0x{b:02x})", b as char)
    } else {
        format!("0x{b:02x}")
    }
}

/// The one error type for protocol faults across the workspace: what was
/// wrong, the AMQP reply code that answers it, whether it closes a channel
/// or the connection, and where it happened.
///
/// Its `Display` is the reply text a close would carry, in RabbitMQ's style:
/// `FRAME_ERROR - invalid frame end octet 0x00 (expected 0xce)`.
///
/// ```
/// use amqp_types::{ErrorKind, ProtocolError, ReplyCode, Scope};
/// let e = ProtocolError::connection(ReplyCode::FRAME_ERROR, ErrorKind::BadFrameEnd { found: 0 })
///     .on_channel(1)
///     .at_offset(59);
/// assert_eq!(e.code(), ReplyCode::FRAME_ERROR);
/// assert_eq!(e.scope(), Scope::Connection);
/// assert_eq!(e.offset(), Some(59));
/// assert!(e.to_string().starts_with("FRAME_ERROR - invalid frame end"));
/// ```
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.reply_text())]
pub struct ProtocolError(Box<Inner>);

#[derive(Clone, PartialEq, Eq)]
struct Inner {
    kind: ErrorKind,
    code: ReplyCode,
    scope: Scope,
    channel: u16,
    class_id: u16,
    method_id: u16,
    offset: Option<u64>,
}

impl ProtocolError {
    /// A new error with an explicit scope.
    pub fn new(code: ReplyCode, scope: Scope, kind: ErrorKind) -> Self {
        ProtocolError(Box::new(Inner {
            kind,
            code,
            scope,
            channel: 0,
            class_id: 0,
            method_id: 0,
            offset: None,
        }))
    }

    /// A hard error that closes the connection.
    pub fn connection(code: ReplyCode, kind: ErrorKind) -> Self {
        Self::new(code, Scope::Connection, kind)
    }

    /// A soft error that closes channel `channel`.
    pub fn channel(channel: u16, code: ReplyCode, kind: ErrorKind) -> Self {
        Self::new(code, Scope::Channel, kind).on_channel(channel)
    }

    /// A refusal with explanatory text, scoped by its code: a soft code
    /// closes channel `channel`, any other closes the connection.
    ///
    /// ```
    /// use amqp_types::{ProtocolError, ReplyCode, Scope};
    /// let e = ProtocolError::refused(2, ReplyCode::NOT_FOUND, "no queue 'q' in vhost '/'");
    /// assert_eq!(e.scope(), Scope::Channel);
    /// assert_eq!(e.to_string(), "NOT_FOUND - no queue 'q' in vhost '/'");
    /// let e = ProtocolError::refused(2, ReplyCode::NOT_ALLOWED, "vhost 'x' not found");
    /// assert_eq!(e.scope(), Scope::Connection);
    /// ```
    pub fn refused(channel: u16, code: ReplyCode, text: impl Into<String>) -> Self {
        let scope = if code.is_hard() {
            Scope::Connection
        } else {
            Scope::Channel
        };
        Self::new(code, scope, ErrorKind::Refused(text.into())).on_channel(channel)
    }

    /// A 501 FRAME_ERROR, connection scope.
    pub fn frame_error(kind: ErrorKind) -> Self {
        Self::connection(ReplyCode::FRAME_ERROR, kind)
    }

    /// Sets the channel the fault happened on.
    pub fn on_channel(mut self, channel: u16) -> Self {
        self.0.channel = channel;
        self
    }

    /// Sets the class and method ids a close must name.
    pub fn with_method(mut self, class_id: u16, method_id: u16) -> Self {
        self.0.class_id = class_id;
        self.0.method_id = method_id;
        self
    }

    /// Sets the byte offset where the fault was found.
    pub fn at_offset(mut self, offset: u64) -> Self {
        self.0.offset = Some(offset);
        self
    }

    /// Adds `base` to the offset (used when a stream decoder reports
    /// offsets from the start of the stream).
    pub fn offset_by(mut self, base: u64) -> Self {
        self.0.offset = Some(self.0.offset.unwrap_or(0).saturating_add(base));
        self
    }

    /// What was wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.0.kind
    }

    /// The reply code a close should carry.
    pub fn code(&self) -> ReplyCode {
        self.0.code
    }

    /// Whether the channel or the connection closes.
    pub fn scope(&self) -> Scope {
        self.0.scope
    }

    /// The channel the fault happened on (0 for the connection).
    pub fn channel_id(&self) -> u16 {
        self.0.channel
    }

    /// The class id a close should name (0 if none).
    pub fn class_id(&self) -> u16 {
        self.0.class_id
    }

    /// The method id a close should name (0 if none).
    pub fn method_id(&self) -> u16 {
        self.0.method_id
    }

    /// The byte offset of the fault in the input, if known.
    pub fn offset(&self) -> Option<u64> {
        self.0.offset
    }

    /// The reply text for a close: `"CODE_NAME - what was wrong"`,
    /// truncated to fit a short string (255 bytes).
    pub fn reply_text(&self) -> String {
        let mut s = match self.0.code.name() {
            Some(n) => format!("{n} - {}", self.0.kind),
            None => self.0.kind.to_string(),
        };
        if s.len() > 255 {
            let mut cut = 255;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        s
    }
}

impl fmt::Debug for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.0;
        let mut d = f.debug_struct("ProtocolError");
        d.field("code", &i.code)
            .field("scope", &i.scope)
            .field("kind", &i.kind)
            .field("channel", &i.channel);
        if i.class_id != 0 || i.method_id != 0 {
            d.field("method", &(i.class_id, i.method_id));
        }
        if let Some(o) = i.offset {
            d.field("offset", &o);
        }
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_spec() {
        assert_eq!(ReplyCode::REPLY_SUCCESS.class(), ReplyClass::Success);
        for c in [311, 312, 313, 403, 404, 405, 406] {
            assert_eq!(ReplyCode(c).class(), ReplyClass::Soft, "{c}");
            assert!(!ReplyCode(c).is_hard());
        }
        for c in [320, 402, 501, 502, 503, 504, 505, 506, 530, 540, 541] {
            assert_eq!(ReplyCode(c).class(), ReplyClass::Hard, "{c}");
            assert!(ReplyCode(c).is_hard());
        }
        assert_eq!(ReplyCode(0).class(), ReplyClass::Unknown);
        assert_eq!(ReplyCode(999).to_string(), "999");
    }

    #[test]
    fn reply_text_fits_a_short_string() {
        let e =
            ProtocolError::channel(3, ReplyCode::NOT_FOUND, ErrorKind::Refused("é".repeat(300)));
        assert!(e.reply_text().len() <= 255);
        assert!(e.reply_text().starts_with("NOT_FOUND - é"));
        assert_eq!(e.channel_id(), 3);
        assert_eq!(e.scope(), Scope::Channel);
    }

    #[test]
    fn unknown_letter_is_described() {
        let e = ProtocolError::frame_error(ErrorKind::UnknownFieldType { letter: b'U' });
        assert_eq!(
            e.to_string(),
            "FRAME_ERROR - unknown field value type 'U' (0x55)"
        );
    }
}
