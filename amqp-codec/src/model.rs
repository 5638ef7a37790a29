//! Configuration, events, decisions and errors of [`Connection`](crate::Connection).

use crate::sasl::Credentials;
use amqp_types::{
    BasicProperties, ErrorKind, FieldTable, FieldValue, LongString, Method, MethodKind,
    ProtocolError, ReplyCode, ShortString,
};
use bytes::Bytes;
use std::fmt;
use std::time::Duration;

/// Which side of the connection this machine plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The client: sends the protocol header, authenticates, opens channels.
    Client,
    /// The server (broker) side.
    Server,
}

macro_rules! capabilities {
    ($($f:ident = $name:literal),* $(,)?) => {
        /// The capability flags exchanged in `server-properties` and
        /// `client-properties` (`capabilities` table).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct Capabilities {
            $(
                #[doc = concat!("`", $name, "`.")]
                pub $f: bool,
            )*
        }

        impl Capabilities {
            /// Every capability set.
            pub const ALL: Capabilities = Capabilities { $($f: true),* };
            /// No capability set.
            pub const NONE: Capabilities = Capabilities { $($f: false),* };

            /// The `capabilities` table announcing the set flags.
            pub fn to_table(&self) -> FieldTable {
                let mut t = FieldTable::new();
                $( if self.$f { t.push(ShortString::from_static($name), FieldValue::Bool(true)); } )*
                t
            }

            /// Reads the `capabilities` entry of a properties table
            /// (missing or non-boolean entries count as unset).
            pub fn from_properties(properties: &FieldTable) -> Capabilities {
                let Some(FieldValue::Table(t)) = properties.get("capabilities") else {
                    return Capabilities::NONE;
                };
                let on = |k: &str| matches!(t.get(k), Some(FieldValue::Bool(true)));
                Capabilities { $($f: on($name)),* }
            }
        }
    };
}

capabilities! {
    publisher_confirms = "publisher_confirms",
    consumer_cancel_notify = "consumer_cancel_notify",
    basic_nack = "basic.nack",
    connection_blocked = "connection.blocked",
    authentication_failure_close = "authentication_failure_close",
    exchange_exchange_bindings = "exchange_exchange_bindings",
    per_consumer_qos = "per_consumer_qos",
}

/// Negotiated connection parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuning {
    /// Most channels open at once (0 = no limit, i.e. 65535).
    pub channel_max: u16,
    /// Largest frame in bytes, header and end octet included (0 = no limit).
    pub frame_max: u32,
    /// Heartbeat interval in seconds (0 = off).
    pub heartbeat: u16,
}

/// Limits and timers shared by both roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message body accepted (a larger body-size is refused with a
    /// channel error 406 before anything is allocated). Default: RabbitMQ
    /// 3.10's 128 MiB.
    pub max_message_size: u64,
    /// Most bytes of incomplete message bodies held at once, over all
    /// channels of the connection (exceeding it is 506 RESOURCE_ERROR).
    /// Not used in body-chunk mode, where nothing is held. Default 128 MiB.
    pub connection_budget: usize,
    /// Most synchronous requests a peer may have outstanding on one channel
    /// (the embedder has not answered yet). Default 64.
    pub max_pending_requests: usize,
    /// How long the handshake may take, from creation to open-ok. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long to wait for `close-ok` after sending `connection.close`.
    /// Default 3 s.
    pub close_timeout: Duration,
    /// Deliver content as [`Event::ContentStart`] + [`Event::BodyChunk`]
    /// instead of assembled [`Event::Message`]s.
    pub body_chunks: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: amqp_types::constants::DEFAULT_MAX_MESSAGE_SIZE,
            connection_budget: 128 * 1024 * 1024,
            max_pending_requests: 64,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(3),
            body_chunks: false,
        }
    }
}

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Credentials (PLAIN, AMQPLAIN, EXTERNAL or another mechanism).
    pub credentials: Credentials,
    /// The virtual host to open.
    pub virtual_host: ShortString,
    /// `client-properties`. If it has no `capabilities` entry, one is added
    /// from [`ClientConfig::capabilities`].
    pub properties: FieldTable,
    /// Capabilities to announce.
    pub capabilities: Capabilities,
    /// Locale for start-ok.
    pub locale: ShortString,
    /// Wished channel_max (0 = none); the lower non-zero of this and the
    /// server's offer is used.
    pub channel_max: u16,
    /// Wished frame_max (0 = none); the lower non-zero value is used.
    pub frame_max: u32,
    /// Heartbeat: `None` takes the server's offer; `Some(0)` turns
    /// heartbeats off; `Some(n)` uses `n` (or the server's offer if lower
    /// and non-zero).
    pub heartbeat: Option<u16>,
    /// The reserved `capabilities` argument of `connection.open`.
    pub open_capabilities: ShortString,
    /// The reserved `insist` bit of `connection.open`.
    pub insist: bool,
    /// Limits and timers.
    pub limits: Limits,
}

impl Default for ClientConfig {
    fn default() -> Self {
        let mut properties = FieldTable::new();
        properties.push(
            ShortString::from_static("product"),
            FieldValue::LongString(LongString::from_static("amqp-codec")),
        );
        ClientConfig {
            credentials: Credentials::plain("guest", "guest"),
            virtual_host: ShortString::from_static("/"),
            properties,
            capabilities: Capabilities::ALL,
            locale: ShortString::from_static("en_US"),
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: None,
            open_capabilities: ShortString::EMPTY,
            insist: false,
            limits: Limits::default(),
        }
    }
}

/// How a server greets and tunes clients.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `server-properties`. If it has no `capabilities` entry, one is added
    /// from [`ServerConfig::capabilities`].
    pub properties: FieldTable,
    /// Capabilities to announce.
    pub capabilities: Capabilities,
    /// Space-separated SASL mechanisms offered.
    pub mechanisms: LongString,
    /// Space-separated locales offered.
    pub locales: LongString,
    /// channel_max offered (0 = none).
    pub channel_max: u16,
    /// frame_max offered (0 = none; at least 4096 otherwise).
    pub frame_max: u32,
    /// Heartbeat offered, in seconds.
    pub heartbeat: u16,
    /// The reserved `known-hosts` of `connection.open-ok`.
    pub known_hosts: ShortString,
    /// Limits and timers.
    pub limits: Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let mut properties = FieldTable::new();
        properties.push(
            ShortString::from_static("product"),
            FieldValue::LongString(LongString::from_static("amqp-codec")),
        );
        ServerConfig {
            properties,
            capabilities: Capabilities::ALL,
            mechanisms: LongString::from_static("PLAIN AMQPLAIN EXTERNAL"),
            locales: LongString::from_static("en_US"),
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
            known_hosts: ShortString::EMPTY,
            limits: Limits::default(),
        }
    }
}

/// The reply code, text and failing method of a close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The reply code.
    pub code: ReplyCode,
    /// The reply text.
    pub text: ShortString,
    /// Class id of the method that caused the close (0 if none).
    pub class_id: u16,
    /// Method id of the method that caused the close (0 if none).
    pub method_id: u16,
}

impl CloseReason {
    /// A reason with no failing method.
    pub fn new(code: ReplyCode, text: &str) -> Self {
        CloseReason {
            code,
            text: short(text),
            class_id: 0,
            method_id: 0,
        }
    }

    /// The reason a protocol error closes with.
    pub fn from_error(e: &ProtocolError) -> Self {
        CloseReason {
            code: e.code(),
            text: short(&e.reply_text()),
            class_id: e.class_id(),
            method_id: e.method_id(),
        }
    }
}

/// `404 NOT_FOUND - no exchange 'x' in vhost '/' (basic.publish)`: the
/// code with its name, the text (RabbitMQ's texts start with the code's
/// name, which is then not repeated) and the failing method, if any.
impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Non-UTF-8 bytes are shown as ShortString's Display shows them.
        let text = self.text.to_string();
        let text = text.as_str();
        match self.code.name() {
            Some(name) if text.starts_with(name) => write!(f, "{} {text}", self.code.0)?,
            _ if text.is_empty() => write!(f, "{}", self.code)?,
            _ => write!(f, "{} - {text}", self.code)?,
        }
        if self.class_id != 0 {
            match MethodKind::from_ids(self.class_id, self.method_id) {
                Some(m) => write!(f, " ({m})")?,
                None => write!(f, " (method {}/{})", self.class_id, self.method_id)?,
            }
        }
        Ok(())
    }
}

/// A string cut to fit a short string.
pub(crate) fn short(s: &str) -> ShortString {
    let mut cut = s.len().min(255);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    ShortString::try_from(&s[..cut]).unwrap_or_default()
}

/// Who started a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Initiator {
    /// This side sent the close (a command or a protocol error found here).
    Local,
    /// The peer sent the close.
    Peer,
}

/// Which timer expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeoutKind {
    /// The handshake did not finish in time.
    Handshake,
    /// No `close-ok` came in time after `connection.close`.
    CloseOk,
    /// Nothing was received for two heartbeat intervals.
    Heartbeat,
}

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCause {
    /// The close handshake completed (or the peer closed and we answered).
    Closed {
        /// Who sent `connection.close`.
        initiator: Initiator,
        /// The close's code and text.
        reason: CloseReason,
    },
    /// A timer expired.
    Timeout(TimeoutKind),
    /// The connection ended without a close handshake because of this
    /// fault (a bad protocol header, a stream that cannot be resynchronised
    /// after a framing error, a failed authentication without
    /// `authentication_failure_close`, ...).
    Failed(ProtocolError),
    /// The peer closed its end of the transport ([`Connection::handle_eof`](crate::Connection::handle_eof)).
    TransportClosed,
}

/// `handshake timeout`, `close-ok timeout`, `heartbeat timeout`.
impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutKind::Handshake => "handshake timeout",
            TimeoutKind::CloseOk => "close-ok timeout",
            TimeoutKind::Heartbeat => "heartbeat timeout",
        })
    }
}

/// Why the connection ended, in words for a person:
///
/// * `closed by peer: 320 CONNECTION_FORCED - broker forced connection closure`
///   or `closed by us: 200 REPLY_SUCCESS - bye` (see [`CloseReason`]'s
///   `Display`);
/// * `heartbeat timeout` (and `handshake timeout`, `close-ok timeout`);
/// * `protocol error: FRAME_ERROR - invalid frame end octet 0x00 (expected
///   0xce)`, or for a peer that is no AMQP 0-9-1 server, what it is: `not an
///   AMQP server: it answered "HTTP/1.1 400 Bad Request..."`, `the server
///   refused AMQP 0-9-1: ...`;
/// * `connection closed by peer without a close handshake`.
///
/// ```
/// use amqp_codec::{CloseCause, CloseReason, Initiator, TimeoutKind};
/// use amqp_codec::types::ReplyCode;
/// let cause = CloseCause::Closed {
///     initiator: Initiator::Peer,
///     reason: CloseReason::new(ReplyCode::NOT_FOUND, "NOT_FOUND - no queue 'q'"),
/// };
/// assert_eq!(cause.to_string(), "closed by peer: 404 NOT_FOUND - no queue 'q'");
/// assert_eq!(CloseCause::Timeout(TimeoutKind::Heartbeat).to_string(), "heartbeat timeout");
/// ```
impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseCause::Closed {
                initiator: Initiator::Peer,
                reason,
            } => write!(f, "closed by peer: {reason}"),
            CloseCause::Closed {
                initiator: Initiator::Local,
                reason,
            } => write!(f, "closed by us: {reason}"),
            CloseCause::Timeout(kind) => write!(f, "{kind}"),
            CloseCause::Failed(e) => match e.kind() {
                ErrorKind::NotAmqp { .. } | ErrorKind::ProtocolVersionRefused { .. } => {
                    write!(f, "{}", e.kind())
                }
                _ => write!(f, "protocol error: {e}"),
            },
            CloseCause::TransportClosed => {
                f.write_str("connection closed by peer without a close handshake")
            }
        }
    }
}

/// A message assembled from a content method, its header and body frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `basic.publish`, `basic.deliver`, `basic.return` or `basic.get-ok`.
    pub method: Method,
    /// The content header's properties.
    pub properties: BasicProperties,
    /// The body: a slice of the input when it came in one body frame.
    pub body: Bytes,
}

/// Identifies a pending [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecisionId(pub(crate) u64);

/// A policy question the embedder answers with [`Connection::decide`](crate::Connection::decide).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Server: are these credentials good? Answer [`Answer::Accept`],
    /// [`Answer::Challenge`] (send `connection.secure`) or
    /// [`Answer::Refuse`] (403; the client sees `connection.close` only
    /// if it announced `authentication_failure_close`).
    Authenticate {
        /// The mechanism the client chose.
        mechanism: ShortString,
        /// The credentials read from the response.
        credentials: Credentials,
        /// The raw response (of start-ok or secure-ok).
        response: Bytes,
    },
    /// Server: may this client open this virtual host? Refuse with 530
    /// (unknown vhost) or 403 (access refused).
    OpenVhost {
        /// The requested virtual host.
        virtual_host: ShortString,
        /// The user accepted by authentication, if any.
        username: Option<String>,
    },
    /// Client: the server sent `connection.secure`; answer
    /// [`Answer::Response`].
    Challenge {
        /// The challenge bytes.
        challenge: Bytes,
    },
}

/// An answer to a [`Decision`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// Yes.
    Accept,
    /// No, with this reply code and text.
    Refuse {
        /// The reply code (403, 530, ...).
        code: ReplyCode,
        /// The reply text.
        text: String,
    },
    /// Server: send `connection.secure` with this challenge.
    Challenge(Bytes),
    /// Client: send `connection.secure-ok` with this response.
    Response(Bytes),
}

impl Answer {
    /// A refusal.
    pub fn refuse(code: ReplyCode, text: impl Into<String>) -> Self {
        Answer::Refuse {
            code,
            text: text.into(),
        }
    }
}

/// What happened, from [`Connection::poll_event`](crate::Connection::poll_event).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake finished (open-ok sent or received).
    Connected {
        /// The negotiated values.
        tuning: Tuning,
        /// The peer's properties table.
        peer_properties: FieldTable,
        /// The peer's capabilities.
        peer_capabilities: Capabilities,
    },
    /// A policy question; answer with [`Connection::decide`](crate::Connection::decide).
    Decision {
        /// The id to answer.
        id: DecisionId,
        /// The question.
        decision: Decision,
    },
    /// A channel is open (open-ok received, or sent for a peer's open).
    ChannelOpened {
        /// The channel.
        channel: u16,
    },
    /// A channel closed (close-ok received for our close, or the peer's
    /// close answered).
    ChannelClosed {
        /// The channel.
        channel: u16,
        /// Who closed it.
        initiator: Initiator,
        /// Code and text.
        reason: CloseReason,
    },
    /// A method for the embedder: requests to answer (server role: every
    /// client request; answer with [`Connection::send_method`](crate::Connection::send_method) or
    /// refuse with [`Connection::refuse`](crate::Connection::refuse)), replies to our requests,
    /// and asynchronous methods (acks, cancels, ...).
    Method {
        /// The channel (0 for connection-class methods such as update-secret).
        channel: u16,
        /// The method.
        method: Method,
    },
    /// A whole message (method, header and body).
    Message {
        /// The channel.
        channel: u16,
        /// The message (boxed: it is most of the event's size, and every
        /// other event would otherwise be as large).
        message: Box<Message>,
        /// Server role, channel in confirm mode: the publish sequence number
        /// to acknowledge.
        seqno: Option<u64>,
    },
    /// Body-chunk mode: a content method and its header arrived; the body
    /// follows in [`Event::BodyChunk`]s.
    ContentStart {
        /// The channel.
        channel: u16,
        /// The content method.
        method: Method,
        /// The properties (boxed, as [`Event::Message`]'s message).
        properties: Box<BasicProperties>,
        /// The announced body size.
        body_size: u64,
        /// As in [`Event::Message`].
        seqno: Option<u64>,
    },
    /// Body-chunk mode: a piece of a body (a slice of the input).
    BodyChunk {
        /// The channel.
        channel: u16,
        /// The bytes.
        data: Bytes,
        /// Whether this completes the body.
        last: bool,
    },
    /// Client role: publisher confirms (basic.ack / basic.nack from the
    /// server on a channel in confirm mode).
    Confirm {
        /// The channel.
        channel: u16,
        /// The delivery tag the server sent.
        delivery_tag: u64,
        /// The `multiple` bit.
        multiple: bool,
        /// `true` for ack, `false` for nack.
        ack: bool,
        /// The outstanding sequence numbers this settled, lowest first.
        settled: Vec<u64>,
    },
    /// Client role: the server sent `channel.flow` (flow-ok was answered).
    Flow {
        /// The channel.
        channel: u16,
        /// Whether publishing may go on.
        active: bool,
    },
    /// Client role: `connection.blocked`.
    Blocked {
        /// The server's reason.
        reason: ShortString,
    },
    /// Client role: `connection.unblocked`.
    Unblocked,
    /// The peer broke the protocol; the close that answers it has been
    /// queued (channel or connection, by the error's scope).
    ProtocolError(ProtocolError),
    /// The connection is over: flush [`poll_transmit`](crate::Connection::poll_transmit) and drop the transport.
    Closed {
        /// Why.
        cause: CloseCause,
    },
}

/// A command that could not be carried out (a usage error on this side,
/// nothing was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The connection is not open (handshake unfinished, closing or closed).
    #[error("the connection is not open")]
    NotOpen,
    /// The channel is not open.
    #[error("channel {0} is not open")]
    ChannelNotOpen(u16),
    /// The channel is already in use.
    #[error("channel {0} is already open")]
    ChannelInUse(u16),
    /// channel_max channels are open.
    #[error("channel_max ({0}) channels are open")]
    ChannelLimit(u16),
    /// This role may not send the method.
    #[error("{0} cannot be sent by this role")]
    WrongRole(MethodKind),
    /// The method is managed by the machine (handshake, open, close) or
    /// needs another command.
    #[error("{0} is sent through its own command")]
    UseCommand(MethodKind),
    /// A reply with no request of the peer to answer.
    #[error("{0} answers no pending request")]
    NotAReply(MethodKind),
    /// The peer did not announce the capability the method needs.
    #[error("the peer did not announce the {0} capability")]
    PeerLacksCapability(&'static str),
    /// A delivery tag or sequence number that was never issued.
    #[error("unknown delivery tag {0}")]
    UnknownDeliveryTag(u64),
    /// No decision with this id is pending, or the answer does not fit it.
    #[error("no pending decision accepts this answer")]
    BadDecision,
    /// The frame cannot be sent.
    #[error(transparent)]
    Send(#[from] crate::stream::SendError),
}
