//! The Sans-IO connection state machine, client and server roles.

use crate::channels::ChannelTable;
use crate::model::*;
use crate::sasl::Credentials;
use crate::stream::{Body, Decoded, FrameDecoder, FrameEncoder, SendError, check_frame_max};
use amqp_types::method::*;
use amqp_types::{
    BasicProperties, ErrorKind, FieldTable, FieldValue, LongString, Method, MethodKind,
    ProtocolError, ReplyCode, ShortString,
};
use amqp_wire::{
    ContentHeader, Frame, FramePayload, PROTOCOL_HEADER, Parsed, ProtocolHeader, parse_frame,
};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

type ChannelMap = ChannelTable<Channel>;

/// Which kinds answer some request ([`MethodKind::is_reply`], which scans
/// the whole method table on every call), computed once at compile time and
/// indexed by the kind's discriminant.
const REPLY_KINDS: [bool; 128] = {
    let mut t = [false; 128];
    let all = MethodKind::ALL;
    let mut i = 0;
    while i < all.len() {
        let replies = all[i].info().replies;
        let mut j = 0;
        while j < replies.len() {
            t[replies[j] as usize] = true;
            j += 1;
        }
        i += 1;
    }
    t
};

/// Whether `kind` answers some request (as [`MethodKind::is_reply`]).
#[inline]
fn is_reply(kind: MethodKind) -> bool {
    REPLY_KINDS.get(kind as usize).copied().unwrap_or(false)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    // client
    AwaitStart,
    AwaitTune,
    AwaitOpenOk,
    // server
    AwaitHeader,
    AwaitStartOk,
    Authenticating,
    AwaitSecureOk,
    AwaitTuneOk,
    AwaitOpen,
    OpeningVhost,
    // both
    Open,
    Closing,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChState {
    Opening,
    Open,
    Closing,
}

/// A message's content in assembly on one channel. Idle without a method,
/// awaiting the header with a method and no header, awaiting the body with
/// both. Updated field by field in place: the method is moved once on the
/// way in and once into the [`Message`], and the content header stays in
/// the box the frame layer parsed it into (moving whole enum states would
/// copy the ~450-byte properties several times per message).
#[derive(Debug, Default)]
struct Assembly {
    method: Option<Method>,
    header: Option<Box<ContentHeader>>,
    received: u64,
    parts: Vec<Bytes>,
    seqno: Option<u64>,
}

impl Assembly {
    fn is_idle(&self) -> bool {
        self.method.is_none()
    }

    fn reset(&mut self) {
        self.method = None;
        self.header = None;
        self.received = 0;
        self.parts = Vec::new();
        self.seqno = None;
    }
}

#[derive(Debug)]
struct Channel {
    state: ChState,
    /// Our synchronous requests awaiting the peer's reply.
    pending_out: VecDeque<MethodKind>,
    /// The peer's synchronous requests awaiting our reply.
    pending_in: VecDeque<MethodKind>,
    content: Assembly,
    /// Bytes of `content` counted against the connection budget.
    held: usize,
    /// The last method received (class, method), for error attribution.
    last_in: (u16, u16),
    /// Confirm mode.
    confirm: bool,
    /// Client: next publish sequence number; server: last issued.
    seqno: u64,
    /// Client role: outstanding publish sequence numbers.
    unconfirmed: BTreeSet<u64>,
    /// Highest delivery tag received (client) or issued (server).
    delivery_tag: u64,
    consumers: Vec<ShortString>,
    flow_active: bool,
    close_reason: Option<CloseReason>,
}

impl Channel {
    fn new(state: ChState) -> Box<Self> {
        Box::new(Channel {
            state,
            pending_out: VecDeque::new(),
            pending_in: VecDeque::new(),
            content: Assembly::default(),
            held: 0,
            last_in: (0, 0),
            confirm: false,
            seqno: 0,
            unconfirmed: BTreeSet::new(),
            delivery_tag: 0,
            consumers: Vec::new(),
            flow_active: true,
            close_reason: None,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    half: Duration,
    next_check: Instant,
    silent_checks: u32,
}

#[derive(Debug)]
enum PendingDecision {
    Authenticate { mechanism: ShortString },
    OpenVhost,
    Challenge,
}

#[derive(Debug)]
enum RoleConfig {
    Client(Box<ClientConfig>),
    Server(Box<ServerConfig>),
}

fn conn_err(code: ReplyCode, text: String) -> ProtocolError {
    ProtocolError::connection(code, ErrorKind::Refused(text))
}

fn unexpected(what: String) -> ProtocolError {
    ProtocolError::connection(
        ReplyCode::UNEXPECTED_FRAME,
        ErrorKind::UnexpectedFrame { what },
    )
}

/// A 505 naming what arrived on `channel` (a method by name, with its ids
/// for the close; or a content frame) and `context`.
fn unexpected_on(channel: u16, payload: &FramePayload, context: &str) -> ProtocolError {
    match payload {
        FramePayload::Method(m) => {
            unexpected(format!("{} on channel {channel} {context}", m.name()))
                .on_channel(channel)
                .with_method(m.class_id(), m.method_id())
        }
        _ => {
            unexpected(format!("content frame on channel {channel} {context}")).on_channel(channel)
        }
    }
}

/// How many events may wait to be read before
/// [`Connection::handle_input`] stops decoding (the rest of the input is
/// decoded by [`Connection::poll_event`] as the queue empties). Bounds the
/// event queue, which would otherwise grow with the chunk size (a 64 KiB
/// chunk of `basic.ack`s is over 3,000 events).
pub const MAX_PENDING_EVENTS: usize = 16;

/// One AMQP 0-9-1 connection, client or server side, without I/O.
///
/// Drive it with [`handle_input`](Self::handle_input) (bytes from the
/// peer), [`handle_timeout`](Self::handle_timeout) (when
/// [`poll_timeout`](Self::poll_timeout) has passed) and commands; after
/// each, drain [`poll_transmit`](Self::poll_transmit) to the peer and
/// [`poll_event`](Self::poll_event) to the application. See the crate
/// documentation for a complete example.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: RoleConfig,
    limits: Limits,
    phase: Phase,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    events: VecDeque<Event>,
    channels: ChannelMap,
    tuning: Tuning,
    peer_caps: Capabilities,
    peer_properties: FieldTable,
    now: Instant,
    handshake_deadline: Option<Instant>,
    close_deadline: Option<Instant>,
    heartbeat: Option<Heartbeat>,
    sent_activity: bool,
    recv_activity: bool,
    held: usize,
    decision: Option<(u64, PendingDecision)>,
    next_decision: u64,
    username: Option<String>,
    decision_mechanism: Option<ShortString>,
    close_reason: Option<CloseReason>,
    blocked: bool,
    /// Input decoding stopped at [`MAX_PENDING_EVENTS`].
    input_paused: bool,
    /// The peer's silence is not counted (see
    /// [`pause_peer_monitor`](Self::pause_peer_monitor)).
    monitor_paused: bool,
    /// An embedder's limit on open channels below `channel_max`, and the
    /// refusal's text (see [`set_channel_cap`](Self::set_channel_cap)).
    channel_cap: Option<(usize, String)>,
}

impl Connection {
    fn new(role: Role, config: RoleConfig, limits: Limits, now: Instant) -> Self {
        Connection {
            role,
            config,
            phase: if role == Role::Client {
                Phase::AwaitStart
            } else {
                Phase::AwaitHeader
            },
            decoder: if role == Role::Client {
                FrameDecoder::for_client()
            } else {
                FrameDecoder::expecting_protocol_header()
            },
            encoder: FrameEncoder::new(),
            events: VecDeque::new(),
            channels: ChannelMap::default(),
            tuning: Tuning {
                channel_max: 0,
                frame_max: amqp_wire::FRAME_MIN_SIZE,
                heartbeat: 0,
            },
            peer_caps: Capabilities::NONE,
            peer_properties: FieldTable::new(),
            now,
            handshake_deadline: Some(now + limits.handshake_timeout),
            close_deadline: None,
            heartbeat: None,
            sent_activity: false,
            recv_activity: false,
            monitor_paused: false,
            held: 0,
            decision: None,
            next_decision: 0,
            username: None,
            decision_mechanism: None,
            close_reason: None,
            blocked: false,
            input_paused: false,
            channel_cap: None,
            limits,
        }
    }

    /// A client connection; the protocol header is queued at once.
    pub fn client(config: ClientConfig, now: Instant) -> Self {
        let limits = config.limits.clone();
        let mut c = Self::new(
            Role::Client,
            RoleConfig::Client(Box::new(config)),
            limits,
            now,
        );
        c.encoder.push_raw(&PROTOCOL_HEADER);
        c.sent_activity = true;
        c
    }

    /// A server connection, waiting for the client's protocol header.
    pub fn server(config: ServerConfig, now: Instant) -> Self {
        let limits = config.limits.clone();
        Self::new(
            Role::Server,
            RoleConfig::Server(Box::new(config)),
            limits,
            now,
        )
    }

    // ----- observers -------------------------------------------------

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the handshake finished and no close has started.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Whether the connection is over (flush transmits, then drop the
    /// transport).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The negotiated values (the pre-tune defaults until tune-ok).
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// The capabilities the peer announced.
    pub fn peer_capabilities(&self) -> Capabilities {
        self.peer_caps
    }

    /// The peer's properties table.
    pub fn peer_properties(&self) -> &FieldTable {
        &self.peer_properties
    }

    /// Client role: whether the server has sent `connection.blocked`.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Whether `channel` is open (not opening, not closing).
    pub fn is_channel_open(&self, channel: u16) -> bool {
        self.channels
            .get(&channel)
            .is_some_and(|c| c.state == ChState::Open)
    }

    /// Channels in use (opening, open or closing).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Whether the peer allows publishing on `channel` (channel.flow).
    pub fn is_flow_active(&self, channel: u16) -> bool {
        self.channels.get(&channel).is_some_and(|c| c.flow_active)
    }

    /// Client role: publish sequence numbers not yet confirmed on `channel`.
    pub fn unconfirmed(&self, channel: u16) -> usize {
        self.channels
            .get(&channel)
            .map_or(0, |c| c.unconfirmed.len())
    }

    /// Consumer tags active on `channel` (consume-ok seen, not cancelled).
    pub fn consumer_tags(&self, channel: u16) -> &[ShortString] {
        self.channels
            .get(&channel)
            .map_or(&[][..], |c| &c.consumers[..])
    }

    /// Bytes of incomplete message bodies held (counted against the
    /// connection budget).
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Bytes queued for sending: apply backpressure on the application
    /// when this grows.
    pub fn bytes_queued(&self) -> usize {
        self.encoder.queued()
    }

    // ----- outputs ---------------------------------------------------

    /// The next segment of bytes to send to the peer, if any. Segments are
    /// in order; body bytes are slices of the bodies given to
    /// [`publish`](Self::publish) (gather several for a vectored write).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.encoder.poll_transmit()
    }

    /// The next event, if any.
    ///
    /// Input is decoded only while fewer than [`MAX_PENDING_EVENTS`] events
    /// wait to be read: when [`handle_input`](Self::handle_input) stops
    /// there, the rest of the input waits in the decoder and is decoded
    /// here, as the queue empties. So what the peer can make this side
    /// queue is bounded by that many events, whatever the chunk size; and
    /// frames decoded here may queue bytes to send: drain
    /// [`poll_transmit`](Self::poll_transmit) after this returns `None`.
    pub fn poll_event(&mut self) -> Option<Event> {
        /// Queues this small are given back when empty.
        const SMALL_EVENT_QUEUE: usize = 8;
        if self.events.is_empty() {
            if self.input_paused {
                self.input_paused = false;
                self.process_input();
            } else if self.events.capacity() > 2 * MAX_PENDING_EVENTS {
                // After a burst outside the bound (EOF, commands): give the
                // memory back.
                self.events.shrink_to(MAX_PENDING_EVENTS);
            } else if self.events.capacity() <= SMALL_EVENT_QUEUE {
                // A quiet connection (an idle one after its handshake)
                // keeps no queue; a busy one keeps the room it grew.
                self.events = VecDeque::new();
            }
        }
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called;
    /// `None` when no timer runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Closed {
            return None;
        }
        [
            self.handshake_deadline,
            self.close_deadline,
            self.heartbeat.map(|h| h.next_check),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ----- inputs ----------------------------------------------------

    /// Feeds bytes received from the peer (any chunking). Decodes them
    /// while fewer than [`MAX_PENDING_EVENTS`] events are pending; the rest
    /// is decoded by [`poll_event`](Self::poll_event).
    pub fn handle_input(&mut self, data: Bytes) {
        if self.phase == Phase::Closed || data.is_empty() {
            return;
        }
        self.recv_activity = true;
        self.decoder.push(data);
        self.process_input();
    }

    /// Decodes and handles buffered input; pauses while a decision is
    /// pending (input after it waits in the decoder, bounded by the
    /// handshake's 4096-byte frame_max per frame).
    fn process_input(&mut self) {
        self.decode_input(MAX_PENDING_EVENTS);
    }

    /// Decodes and handles input while fewer than `max_events` events are
    /// pending.
    fn decode_input(&mut self, max_events: usize) {
        while self.phase != Phase::Closed && self.decision.is_none() {
            // While closing, every frame but close/close-ok is dropped and
            // nothing is queued, so the bound does not apply: a close-ok
            // behind unread events still ends the handshake.
            if self.events.len() >= max_events && self.phase != Phase::Closing {
                // Resumed by poll_event once the queue is read.
                self.input_paused = true;
                break;
            }
            // Frames are handled in place (by reference), and moved out
            // only where they are kept: a frame is 168 bytes, and each move
            // through the layers below is a memcpy. The common case (a
            // whole frame in the first chunk) is parsed here, in this
            // frame's slot; the rest goes through the decoder.
            if let Some((front, limits)) = self.decoder.front_chunk()
                && let Ok(Parsed::Complete {
                    frame: mut f,
                    consumed,
                }) = parse_frame(front, limits)
            {
                self.decoder.consume_front(consumed);
                if let Err(e) = self.on_frame(&mut f) {
                    self.fail(e);
                }
                continue;
            }
            let mut decoded = self.decoder.decode();
            match &mut decoded {
                Ok(None) => break,
                Ok(Some(Decoded::ProtocolHeader(h))) => self.on_protocol_header(*h),
                Ok(Some(Decoded::Frame(f))) => {
                    if let Err(e) = self.on_frame(f) {
                        self.fail(e);
                    }
                }
                Err(_) => {}
            }
            if let Err(e) = decoded {
                self.on_decode_error(e);
                break;
            }
        }
    }

    /// The peer closed its end of the transport. Input not decoded yet
    /// (see [`poll_event`](Self::poll_event)) is decoded first, whatever
    /// the number of events it queues.
    pub fn handle_eof(&mut self) {
        if self.input_paused {
            self.input_paused = false;
            self.decode_input(usize::MAX);
        }
        if self.phase != Phase::Closed {
            self.finish(CloseCause::TransportClosed);
        }
    }

    /// Advances timers to `now`: heartbeats, handshake and close-ok
    /// timeouts. Call it when [`poll_timeout`](Self::poll_timeout) has
    /// passed (more often is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        self.resume_closing_input();
        if self.phase == Phase::Closed {
            return;
        }
        if self.handshake_deadline.is_some_and(|d| now >= d) {
            self.finish(CloseCause::Timeout(TimeoutKind::Handshake));
            return;
        }
        if self.close_deadline.is_some_and(|d| now >= d) {
            self.finish(CloseCause::Timeout(TimeoutKind::CloseOk));
            return;
        }
        let Some(mut hb) = self.heartbeat else {
            return;
        };
        if now < hb.next_check {
            return;
        }
        // One check per half interval, as RabbitMQ's heartbeater does:
        // send if nothing went out since the last check; the peer is dead
        // after two intervals (four checks) with nothing received.
        if self.recv_activity || self.monitor_paused {
            hb.silent_checks = 0;
        } else {
            hb.silent_checks += 1;
        }
        self.recv_activity = false;
        if hb.silent_checks >= 4 {
            self.heartbeat = None;
            self.finish(CloseCause::Timeout(TimeoutKind::Heartbeat));
            return;
        }
        if !self.sent_activity {
            let _ = self.encoder.push_frame(&Frame::heartbeat());
        }
        self.sent_activity = false;
        hb.next_check += hb.half;
        if hb.next_check <= now {
            hb.next_check = now + hb.half;
        }
        self.heartbeat = Some(hb);
    }

    // ----- commands --------------------------------------------------

    /// Answers a pending [`Decision`].
    pub fn decide(&mut self, id: DecisionId, answer: Answer) -> Result<(), CommandError> {
        let Some((pending_id, _)) = &self.decision else {
            return Err(CommandError::BadDecision);
        };
        if *pending_id != id.0 {
            return Err(CommandError::BadDecision);
        }
        let Some((_, pending)) = self.decision.take() else {
            return Err(CommandError::BadDecision);
        };
        match (pending, answer) {
            (PendingDecision::Authenticate { .. }, Answer::Accept) => {
                let RoleConfig::Server(cfg) = &self.config else {
                    return Err(CommandError::BadDecision);
                };
                let tune = ConnectionTune {
                    channel_max: cfg.channel_max,
                    frame_max: cfg.frame_max,
                    heartbeat: cfg.heartbeat,
                };
                self.put(&Frame::method(0, tune));
                self.phase = Phase::AwaitTuneOk;
            }
            (PendingDecision::Authenticate { mechanism }, Answer::Challenge(c)) => {
                self.put(&Frame::method(
                    0,
                    ConnectionSecure {
                        challenge: LongString::new(c),
                    },
                ));
                self.phase = Phase::AwaitSecureOk;
                self.decision_mechanism = Some(mechanism);
            }
            (PendingDecision::Authenticate { .. }, Answer::Refuse { code, text }) => {
                if self.peer_caps.authentication_failure_close {
                    self.send_connection_close(CloseReason::new(code, &text));
                } else {
                    self.finish(CloseCause::Failed(conn_err(code, text)));
                }
            }
            (PendingDecision::OpenVhost, Answer::Accept) => {
                let RoleConfig::Server(cfg) = &self.config else {
                    return Err(CommandError::BadDecision);
                };
                let ok = ConnectionOpenOk {
                    known_hosts: cfg.known_hosts.clone(),
                };
                self.put(&Frame::method(0, ok));
                self.set_open();
            }
            (PendingDecision::OpenVhost, Answer::Refuse { code, text }) => {
                let mut r = CloseReason::new(code, &text);
                r.class_id = ConnectionOpen::CLASS_ID;
                r.method_id = ConnectionOpen::METHOD_ID;
                self.send_connection_close(r);
            }
            (PendingDecision::Challenge, Answer::Response(r)) => {
                self.put(&Frame::method(
                    0,
                    ConnectionSecureOk {
                        response: LongString::new(r),
                    },
                ));
            }
            (PendingDecision::Challenge, Answer::Refuse { code, text }) => {
                self.send_connection_close(CloseReason::new(code, &text));
            }
            (p, _) => {
                self.decision = Some((id.0, p));
                return Err(CommandError::BadDecision);
            }
        }
        self.process_input();
        Ok(())
    }

    /// The reason of the `connection.close` this side sent (by
    /// [`close`](Self::close) or because of a protocol error), while its
    /// `close-ok` is awaited.
    pub fn close_sent(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }

    /// Server role: while `cap` is `Some((n, text))`, a `channel.open` that
    /// would make more than `n` channels open closes the connection with
    /// 530 NOT_ALLOWED and `text` (without the `NOT_ALLOWED - ` prefix),
    /// before `channel.open-ok` is sent. For limits the embedder keeps
    /// beyond the negotiated `channel_max`, such as RabbitMQ's per-user
    /// `max-channels`; `None` lifts it.
    pub fn set_channel_cap(&mut self, cap: Option<(usize, String)>) {
        self.channel_cap = cap;
    }

    /// Client role: opens the lowest free channel number; the channel is
    /// usable after [`Event::ChannelOpened`].
    pub fn open_channel(&mut self) -> Result<u16, CommandError> {
        let max = self.channel_limit();
        let id = (1..=max)
            .find(|n| !self.channels.contains_key(n))
            .ok_or(CommandError::ChannelLimit(max))?;
        self.open_channel_with(id)?;
        Ok(id)
    }

    /// Client role: opens channel `id`.
    pub fn open_channel_with(&mut self, id: u16) -> Result<(), CommandError> {
        self.check_open()?;
        if self.role != Role::Client {
            return Err(CommandError::WrongRole(MethodKind::ChannelOpen));
        }
        if id == 0 || self.channels.contains_key(&id) {
            return Err(CommandError::ChannelInUse(id));
        }
        let max = self.channel_limit();
        if self.channels.len() >= usize::from(max) {
            return Err(CommandError::ChannelLimit(max));
        }
        self.put(&Frame::method(id, ChannelOpen::default()));
        self.channels.insert(id, Channel::new(ChState::Opening));
        Ok(())
    }

    /// Closes a channel (channel.close; [`Event::ChannelClosed`] follows
    /// close-ok). Until then every incoming frame on it but close and
    /// close-ok is dropped.
    pub fn close_channel(
        &mut self,
        channel: u16,
        code: ReplyCode,
        text: &str,
    ) -> Result<(), CommandError> {
        self.check_open()?;
        match self.channels.get(&channel) {
            Some(c) if c.state != ChState::Closing => {}
            _ => return Err(CommandError::ChannelNotOpen(channel)),
        }
        self.start_channel_close(channel, CloseReason::new(code, text));
        Ok(())
    }

    /// Closes the connection (connection.close; [`Event::Closed`] follows
    /// close-ok or the close timeout).
    pub fn close(&mut self, code: ReplyCode, text: &str) -> Result<(), CommandError> {
        match self.phase {
            Phase::Closing | Phase::Closed => Err(CommandError::NotOpen),
            Phase::AwaitHeader => {
                self.finish(CloseCause::Closed {
                    initiator: Initiator::Local,
                    reason: CloseReason::new(code, text),
                });
                Ok(())
            }
            _ => {
                self.send_connection_close(CloseReason::new(code, text));
                self.resume_closing_input();
                Ok(())
            }
        }
    }

    /// Decodes input paused behind unread events once the connection is
    /// closing (see [`decode_input`](Self::decode_input): nothing is
    /// queued then, so the peer's close-ok is seen whether or not the
    /// embedder reads its events).
    fn resume_closing_input(&mut self) {
        if self.input_paused && self.phase == Phase::Closing {
            self.input_paused = false;
            self.process_input();
        }
    }

    /// Refuses the last method received on `channel` (or answers a policy
    /// question about it) with `code`: a soft code closes the channel, a
    /// hard code (or channel 0) the connection, naming that method's class
    /// and method ids, as RabbitMQ does.
    pub fn refuse(
        &mut self,
        channel: u16,
        code: ReplyCode,
        text: &str,
    ) -> Result<(), CommandError> {
        self.check_open()?;
        let last = if channel == 0 {
            (0, 0)
        } else {
            self.channels
                .get(&channel)
                .ok_or(CommandError::ChannelNotOpen(channel))?
                .last_in
        };
        let mut reason = CloseReason::new(code, text);
        reason.class_id = last.0;
        reason.method_id = last.1;
        if channel == 0 || code.is_hard() {
            self.send_connection_close(reason);
        } else {
            self.start_channel_close(channel, reason);
        }
        Ok(())
    }

    /// Hands a [`ProtocolError`] found by the embedder (say, `amqp-router`
    /// refusing a declare, bind or publish) to the connection, which closes
    /// with it: `channel.close` on `channel` for a soft error, or
    /// `connection.close` when the error's code is hard, its scope is the
    /// connection, or `channel` is 0. The close carries the error's reply
    /// text ([`ProtocolError::reply_text`], e.g. `NOT_FOUND - no exchange
    /// 'x' in vhost '/'`) and its class and method ids; an error that names
    /// no method gets the last method received on `channel`, as
    /// [`refuse`](Self::refuse) gives.
    ///
    /// Errors: the connection is not open, or `channel` is not open.
    pub fn refuse_error(
        &mut self,
        channel: u16,
        error: &ProtocolError,
    ) -> Result<(), CommandError> {
        self.check_open()?;
        let last = if channel == 0 {
            (0, 0)
        } else {
            self.channels
                .get(&channel)
                .ok_or(CommandError::ChannelNotOpen(channel))?
                .last_in
        };
        let mut reason = CloseReason::from_error(error);
        if reason.class_id == 0 {
            (reason.class_id, reason.method_id) = last;
        }
        if channel == 0 || error.code().is_hard() || error.scope() == amqp_types::Scope::Connection
        {
            self.send_connection_close(reason);
        } else {
            self.start_channel_close(channel, reason);
        }
        Ok(())
    }

    /// Sends a method without content on `channel` (0 for connection-class
    /// methods such as `connection.blocked` or `update-secret`).
    ///
    /// Checks the role, the channel state, the reply discipline (a reply
    /// must answer the peer's oldest unanswered request on the channel),
    /// capabilities (`basic.cancel` from a server, `connection.blocked`),
    /// delivery tags, and that the frame fits frame_max.
    pub fn send_method(
        &mut self,
        channel: u16,
        method: impl Into<Method>,
    ) -> Result<(), CommandError> {
        let m = method.into();
        self.check_open()?;
        let kind = m.kind();
        let info = self.sendable(kind)?;
        if info.has_content {
            return Err(CommandError::UseCommand(kind));
        }
        use MethodKind as K;
        match kind {
            K::ConnectionStart
            | K::ConnectionStartOk
            | K::ConnectionSecure
            | K::ConnectionSecureOk
            | K::ConnectionTune
            | K::ConnectionTuneOk
            | K::ConnectionOpen
            | K::ConnectionOpenOk
            | K::ConnectionClose
            | K::ConnectionCloseOk
            | K::ChannelOpen
            | K::ChannelOpenOk
            | K::ChannelClose
            | K::ChannelCloseOk => return Err(CommandError::UseCommand(kind)),
            _ => {}
        }
        let frame = Frame::method(channel, m);
        self.encoder.check_fits(&frame)?;
        let FramePayload::Method(m) = &frame.payload else {
            return Err(CommandError::UseCommand(kind));
        };
        if channel == 0 {
            if info.class_id != 10 {
                return Err(CommandError::ChannelNotOpen(0));
            }
            if kind == K::ConnectionBlocked && !self.peer_caps.connection_blocked {
                return Err(CommandError::PeerLacksCapability("connection.blocked"));
            }
            if kind == K::ConnectionUnblocked && !self.peer_caps.connection_blocked {
                return Err(CommandError::PeerLacksCapability("connection.blocked"));
            }
            self.put(&frame);
            return Ok(());
        }
        if info.class_id == 10 {
            return Err(CommandError::UseCommand(kind));
        }
        let role = self.role;
        let peer_caps = self.peer_caps;
        let ch = self
            .channels
            .get_mut(&channel)
            .filter(|c| c.state != ChState::Closing)
            .ok_or(CommandError::ChannelNotOpen(channel))?;
        if is_reply(kind) {
            match ch.pending_in.front() {
                Some(req) if req.is_answered_by(kind) => {}
                _ => return Err(CommandError::NotAReply(kind)),
            }
        }
        match m {
            Method::BasicAck(BasicAck {
                delivery_tag: t, ..
            })
            | Method::BasicNack(BasicNack {
                delivery_tag: t, ..
            })
            | Method::BasicReject(BasicReject {
                delivery_tag: t, ..
            }) => {
                let issued = match role {
                    Role::Client => ch.delivery_tag,
                    Role::Server => ch.seqno,
                };
                if *t > issued {
                    return Err(CommandError::UnknownDeliveryTag(*t));
                }
            }
            Method::BasicCancel(_) if role == Role::Server && !peer_caps.consumer_cancel_notify => {
                return Err(CommandError::PeerLacksCapability("consumer_cancel_notify"));
            }
            _ => {}
        }
        // Committed: update the bookkeeping.
        if is_reply(kind) {
            ch.pending_in.pop_front();
        }
        if m.expects_reply() {
            ch.pending_out.push_back(kind);
        }
        match m {
            Method::ConfirmSelect(_) if role == Role::Client && !ch.confirm => {
                ch.confirm = true;
                ch.seqno = 1;
            }
            Method::BasicConsumeOk(ok) => ch.consumers.push(ok.consumer_tag.clone()),
            Method::BasicCancel(c) if role == Role::Server => {
                ch.consumers.retain(|t| *t != c.consumer_tag)
            }
            Method::BasicCancelOk(ok) => ch.consumers.retain(|t| *t != ok.consumer_tag),
            Method::ChannelFlowOk(ok) if role == Role::Server => ch.flow_active = ok.active,
            _ => {}
        }
        self.put(&frame);
        Ok(())
    }

    /// Client role: `basic.publish` with content; the body is split by
    /// frame_max and sent without copying. Returns the publish sequence
    /// number when the channel is in confirm mode.
    pub fn publish(
        &mut self,
        channel: u16,
        publish: BasicPublish,
        properties: &BasicProperties,
        body: Bytes,
    ) -> Result<Option<u64>, CommandError> {
        self.send_content(channel, Method::BasicPublish(publish), properties, body)
    }

    /// Sends a content method (`basic.publish` from a client; `deliver`,
    /// `return`, `get-ok` from a server) with its header and body frames.
    ///
    /// Server role: a `basic.deliver` or `basic.get-ok` with delivery tag 0
    /// gets the channel's next delivery tag; `get-ok` must answer a
    /// pending `basic.get`. Returns the publish sequence number (client,
    /// confirm mode) or the delivery tag used (server).
    pub fn send_content(
        &mut self,
        channel: u16,
        method: Method,
        properties: &BasicProperties,
        body: Bytes,
    ) -> Result<Option<u64>, CommandError> {
        self.send_content_with(
            channel,
            method,
            Props::Decoded(properties),
            Body::Shared(&body),
        )
    }

    /// [`send_content`](Self::send_content) with the properties already
    /// in wire form ([`amqp_wire::encode_properties`]): a broker that keeps
    /// messages that way sends them without decoding. `properties` is
    /// checked for shape ([`amqp_wire::check_properties`]: flags and
    /// lengths; a headers table is sent as it is); a [`Body::Borrowed`]
    /// body is copied into the output, a [`Body::Shared`] one is not.
    pub fn send_content_encoded(
        &mut self,
        channel: u16,
        method: Method,
        properties: &[u8],
        body: Body<'_>,
    ) -> Result<Option<u64>, CommandError> {
        amqp_wire::check_properties(properties)
            .map_err(|e| CommandError::Send(SendError::Properties(e)))?;
        self.send_content_with(channel, method, Props::Encoded(properties), body)
    }

    fn send_content_with(
        &mut self,
        channel: u16,
        mut method: Method,
        properties: Props<'_>,
        body: Body<'_>,
    ) -> Result<Option<u64>, CommandError> {
        self.check_open()?;
        let kind = method.kind();
        let info = self.sendable(kind)?;
        if !info.has_content {
            return Err(CommandError::UseCommand(kind));
        }
        let ch = self
            .channels
            .get_mut(&channel)
            .filter(|c| c.state != ChState::Closing)
            .ok_or(CommandError::ChannelNotOpen(channel))?;
        if kind == MethodKind::BasicGetOk
            && !ch
                .pending_in
                .front()
                .is_some_and(|r| r.is_answered_by(kind))
        {
            return Err(CommandError::NotAReply(kind));
        }
        let mut result = None;
        let mut assigned = None;
        match &mut method {
            Method::BasicDeliver(BasicDeliver { delivery_tag, .. })
            | Method::BasicGetOk(BasicGetOk { delivery_tag, .. }) => {
                if *delivery_tag == 0 {
                    *delivery_tag = ch.delivery_tag + 1;
                }
                assigned = Some(*delivery_tag);
            }
            Method::BasicPublish(_) if ch.confirm => result = Some(ch.seqno),
            _ => {}
        }
        match (properties, body) {
            (Props::Decoded(p), Body::Shared(b)) => {
                self.encoder.push_content(channel, &method, p, b)
            }
            (Props::Decoded(p), Body::Borrowed(b)) => {
                self.encoder
                    .push_content(channel, &method, p, &Bytes::copy_from_slice(b))
            }
            (Props::Encoded(p), body) => {
                self.encoder.push_content_encoded(channel, &method, p, body)
            }
        }
        .map_err(CommandError::Send)?;
        self.sent_activity = true;
        let Some(ch) = self.channels.get_mut(&channel) else {
            return Ok(None);
        };
        if let Some(t) = assigned {
            ch.delivery_tag = ch.delivery_tag.max(t);
            result = Some(t);
        }
        if kind == MethodKind::BasicGetOk {
            ch.pending_in.pop_front();
        }
        if let Some(s) = result.filter(|_| kind == MethodKind::BasicPublish) {
            ch.unconfirmed.insert(s);
            ch.seqno += 1;
        }
        Ok(result)
    }

    /// Acknowledges: a client acks deliveries, a server confirms publishes
    /// (channel in confirm mode). `multiple` settles everything up to `tag`.
    pub fn ack(
        &mut self,
        channel: u16,
        delivery_tag: u64,
        multiple: bool,
    ) -> Result<(), CommandError> {
        self.send_method(
            channel,
            BasicAck {
                delivery_tag,
                multiple,
            },
        )
    }

    /// Negative acknowledgement (basic.nack).
    pub fn nack(
        &mut self,
        channel: u16,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), CommandError> {
        self.send_method(
            channel,
            BasicNack {
                delivery_tag,
                multiple,
                requeue,
            },
        )
    }

    /// Server role: `connection.blocked` (only to clients that announced the
    /// capability).
    pub fn block(&mut self, reason: &str) -> Result<(), CommandError> {
        self.send_method(
            0,
            ConnectionBlocked {
                reason: short(reason),
            },
        )
    }

    /// Server role: `connection.unblocked`.
    pub fn unblock(&mut self) -> Result<(), CommandError> {
        self.send_method(0, ConnectionUnblocked {})
    }

    /// Stops (`true`) or restarts counting the peer's silence against its
    /// heartbeat: an embedder that stops reading from a blocked publisher
    /// (as RabbitMQ's reader does) pauses it so that the peer is not
    /// declared dead for heartbeats it could not read. Heartbeats still go
    /// out.
    pub fn pause_peer_monitor(&mut self, paused: bool) {
        self.monitor_paused = paused;
    }

    /// Queues a heartbeat frame now (timers send them on their own).
    ///
    /// Only once the connection is tuned (tune-ok sent or received) and
    /// not closed: before that a frame would precede the peer's protocol
    /// header or the handshake.
    pub fn send_heartbeat(&mut self) -> Result<(), CommandError> {
        match self.phase {
            Phase::AwaitOpenOk
            | Phase::AwaitOpen
            | Phase::OpeningVhost
            | Phase::Open
            | Phase::Closing => {
                self.put(&Frame::heartbeat());
                Ok(())
            }
            _ => Err(CommandError::NotOpen),
        }
    }

    // ----- internals -------------------------------------------------

    fn check_open(&self) -> Result<(), CommandError> {
        // A client may pipeline after tune-ok, before open-ok (as RabbitMQ
        // allows).
        if self.phase == Phase::Open || self.phase == Phase::AwaitOpenOk {
            Ok(())
        } else {
            Err(CommandError::NotOpen)
        }
    }

    /// The protocol facts of `kind`, if this side's role may send it.
    fn sendable(&self, kind: MethodKind) -> Result<&'static MethodInfo, CommandError> {
        let info = kind.info();
        let allowed = match self.role {
            Role::Client => info.sender.client(),
            Role::Server => info.sender.server(),
        };
        if allowed {
            Ok(info)
        } else {
            Err(CommandError::WrongRole(kind))
        }
    }

    fn channel_limit(&self) -> u16 {
        if self.tuning.channel_max == 0 {
            u16::MAX
        } else {
            self.tuning.channel_max
        }
    }

    /// Queues a frame the machine itself built (it fits: handshake and
    /// close frames are small; a failure only drops the frame).
    fn put(&mut self, frame: &Frame) {
        if self.encoder.push_frame(frame).is_ok() {
            self.sent_activity = true;
        }
    }

    #[inline]
    fn emit(&mut self, e: Event) {
        self.events.push_back(e);
    }

    fn finish(&mut self, cause: CloseCause) {
        self.phase = Phase::Closed;
        self.handshake_deadline = None;
        self.close_deadline = None;
        self.heartbeat = None;
        self.channels.clear();
        self.held = 0;
        self.decision = None;
        self.emit(Event::Closed { cause });
    }

    fn send_connection_close(&mut self, reason: CloseReason) {
        let close = ConnectionClose {
            reply_code: reason.code.0,
            reply_text: reason.text.clone(),
            class_id: reason.class_id,
            method_id: reason.method_id,
        };
        self.put(&Frame::method(0, close));
        self.phase = Phase::Closing;
        self.handshake_deadline = None;
        self.decision = None;
        self.close_deadline = Some(self.now + self.limits.close_timeout);
        self.close_reason = Some(reason);
        for (_, ch) in self.channels.iter_mut() {
            ch.content.reset();
        }
        self.held = 0;
    }

    fn start_channel_close(&mut self, channel: u16, reason: CloseReason) {
        let close = ChannelClose {
            reply_code: reason.code.0,
            reply_text: reason.text.clone(),
            class_id: reason.class_id,
            method_id: reason.method_id,
        };
        self.put(&Frame::method(channel, close));
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.state = ChState::Closing;
            ch.content.reset();
            self.held -= ch.held;
            ch.held = 0;
            ch.pending_in.clear();
            ch.pending_out.clear();
            ch.close_reason = Some(reason);
        }
    }

    /// Answers a fault found in the peer's input.
    fn fail(&mut self, e: ProtocolError) {
        if self.phase == Phase::Closed {
            return;
        }
        self.emit(Event::ProtocolError(e.clone()));
        let reason = CloseReason::from_error(&e);
        let ch = e.channel_id();
        if e.scope() == amqp_types::Scope::Channel
            && ch != 0
            && !e.code().is_hard()
            && self.phase == Phase::Open
            && self.channels.contains_key(&ch)
        {
            self.start_channel_close(ch, reason);
            return;
        }
        match self.phase {
            Phase::Closing => {}
            Phase::AwaitHeader | Phase::AwaitStart => self.finish(CloseCause::Failed(e)),
            _ => self.send_connection_close(reason),
        }
    }

    fn on_decode_error(&mut self, e: ProtocolError) {
        match self.phase {
            Phase::AwaitHeader => {
                // A wrong header: answer with ours and close, as RabbitMQ.
                self.encoder.push_raw(&PROTOCOL_HEADER);
                self.finish(CloseCause::Failed(e));
            }
            Phase::AwaitStart | Phase::Closing => self.finish(CloseCause::Failed(e)),
            _ => {
                // The stream cannot be resynchronised: send the close that
                // names the fault and end without waiting for close-ok.
                self.fail(e.clone());
                if self.phase != Phase::Closed {
                    self.finish(CloseCause::Failed(e));
                }
            }
        }
    }

    fn on_protocol_header(&mut self, h: ProtocolHeader) {
        if self.role == Role::Client {
            // A server refusing our version names its own and closes.
            self.finish(CloseCause::Failed(
                ProtocolError::frame_error(ErrorKind::ProtocolVersionRefused {
                    version: h.version,
                })
                .at_offset(0),
            ));
            return;
        }
        if !h.is_0_9_1() {
            self.encoder.push_raw(&PROTOCOL_HEADER);
            self.finish(CloseCause::Failed(ProtocolError::connection(
                ReplyCode::FRAME_ERROR,
                ErrorKind::BadProtocolHeader {
                    header: h.to_bytes().to_vec(),
                },
            )));
            return;
        }
        let RoleConfig::Server(cfg) = &mut self.config else {
            return;
        };
        // Sent once: the connection does not keep them.
        let mut props = std::mem::take(&mut cfg.properties);
        if !props.contains_key("capabilities") {
            props.push(
                ShortString::from_static("capabilities"),
                FieldValue::Table(cfg.capabilities.to_table()),
            );
        }
        let start = ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: cfg.mechanisms.clone(),
            locales: cfg.locales.clone(),
        };
        let frame = Frame::method(0, start);
        self.put(&frame);
        self.phase = Phase::AwaitStartOk;
    }

    fn new_decision(&mut self, pending: PendingDecision, decision: Decision) {
        self.next_decision += 1;
        let id = self.next_decision;
        self.decision = Some((id, pending));
        self.emit(Event::Decision {
            id: DecisionId(id),
            decision,
        });
    }

    fn set_open(&mut self) {
        self.phase = Phase::Open;
        self.handshake_deadline = None;
        self.emit(Event::Connected {
            tuning: self.tuning,
            peer_properties: self.peer_properties.clone(),
            peer_capabilities: self.peer_caps,
        });
    }

    fn apply_tuning(&mut self, t: Tuning) {
        self.tuning = t;
        self.decoder.set_frame_max(t.frame_max);
        self.encoder.set_frame_max(t.frame_max);
        self.heartbeat = (t.heartbeat > 0).then(|| {
            let half = Duration::from_millis(u64::from(t.heartbeat) * 500);
            Heartbeat {
                half,
                next_check: self.now + half,
                silent_checks: 0,
            }
        });
        self.recv_activity = false;
    }

    #[inline]
    fn on_frame(&mut self, f: &mut Frame) -> Result<(), ProtocolError> {
        if let FramePayload::Heartbeat = f.payload {
            if f.channel != 0 {
                return Err(
                    unexpected(format!("heartbeat frame on channel {}", f.channel))
                        .on_channel(f.channel),
                );
            }
            return Ok(());
        }
        match self.phase {
            Phase::Open => self.on_frame_open(f),
            Phase::Closing => self.on_frame_closing(take_frame(f)),
            Phase::Closed => Ok(()),
            _ => self.on_handshake_frame(take_frame(f)),
        }
    }

    fn on_frame_closing(&mut self, f: Frame) -> Result<(), ProtocolError> {
        if f.channel != 0 {
            return Ok(());
        }
        match f.payload {
            FramePayload::Method(Method::ConnectionClose(_)) => {
                self.put(&Frame::method(0, ConnectionCloseOk {}));
            }
            FramePayload::Method(Method::ConnectionCloseOk(_)) => {
                let reason = self
                    .close_reason
                    .take()
                    .unwrap_or_else(|| CloseReason::new(ReplyCode::REPLY_SUCCESS, ""));
                self.finish(CloseCause::Closed {
                    initiator: Initiator::Local,
                    reason,
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn peer_close(&mut self, c: ConnectionClose) {
        self.put(&Frame::method(0, ConnectionCloseOk {}));
        self.finish(CloseCause::Closed {
            initiator: Initiator::Peer,
            reason: CloseReason {
                code: ReplyCode(c.reply_code),
                text: c.reply_text,
                class_id: c.class_id,
                method_id: c.method_id,
            },
        });
    }

    fn on_handshake_frame(&mut self, f: Frame) -> Result<(), ProtocolError> {
        let m = match f.payload {
            FramePayload::Method(m) if f.channel == 0 => m,
            FramePayload::Method(m) => {
                return Err(ProtocolError::connection(
                    ReplyCode::CHANNEL_ERROR,
                    ErrorKind::UnexpectedFrame {
                        what: format!(
                            "{} on channel {} before the connection is open",
                            m.name(),
                            f.channel
                        ),
                    },
                )
                .on_channel(f.channel)
                .with_method(m.class_id(), m.method_id()));
            }
            _ => {
                return Err(
                    unexpected("content frame before the connection is open".into())
                        .on_channel(f.channel),
                );
            }
        };
        let ids = (m.class_id(), m.method_id());
        let name = m.name();
        match (self.phase, m) {
            (_, Method::ConnectionClose(c)) => {
                self.peer_close(c);
                Ok(())
            }
            (Phase::AwaitStart, Method::ConnectionStart(s)) => self.client_on_start(s),
            (Phase::AwaitTune, Method::ConnectionSecure(s)) => {
                self.new_decision(
                    PendingDecision::Challenge,
                    Decision::Challenge {
                        challenge: s.challenge.into_bytes(),
                    },
                );
                Ok(())
            }
            (Phase::AwaitTune, Method::ConnectionTune(t)) => self.client_on_tune(t),
            (Phase::AwaitOpenOk, Method::ConnectionOpenOk(_)) => {
                self.set_open();
                Ok(())
            }
            (Phase::AwaitStartOk, Method::ConnectionStartOk(s)) => self.server_on_start_ok(s),
            (Phase::AwaitSecureOk, Method::ConnectionSecureOk(s)) => {
                let mechanism = self.decision_mechanism.take().unwrap_or_default();
                let response = s.response.into_bytes();
                let credentials = Credentials::parse(mechanism.as_bytes(), &response);
                self.phase = Phase::Authenticating;
                self.new_decision(
                    PendingDecision::Authenticate {
                        mechanism: mechanism.clone(),
                    },
                    Decision::Authenticate {
                        mechanism,
                        credentials,
                        response,
                    },
                );
                Ok(())
            }
            (Phase::AwaitTuneOk, Method::ConnectionTuneOk(t)) => self.server_on_tune_ok(t),
            (Phase::AwaitOpen, Method::ConnectionOpen(o)) => {
                self.phase = Phase::OpeningVhost;
                let username = self.username.clone();
                self.new_decision(
                    PendingDecision::OpenVhost,
                    Decision::OpenVhost {
                        virtual_host: o.virtual_host,
                        username,
                    },
                );
                Ok(())
            }
            _ => Err(ProtocolError::connection(
                ReplyCode::COMMAND_INVALID,
                ErrorKind::UnexpectedFrame {
                    what: format!("{name} during the handshake"),
                },
            )
            .with_method(ids.0, ids.1)),
        }
    }

    fn client_on_start(&mut self, s: ConnectionStart) -> Result<(), ProtocolError> {
        let RoleConfig::Client(cfg) = &self.config else {
            return Ok(());
        };
        let mech = cfg.credentials.mechanism();
        let offered = s
            .mechanisms
            .as_bytes()
            .split(|b| *b == b' ')
            .any(|m| m == mech.as_bytes());
        if (s.version_major, s.version_minor) != (0, 9) || !offered {
            let e = conn_err(
                ReplyCode::NOT_ALLOWED,
                format!(
                    "server version {}-{} or mechanisms {} do not fit {}",
                    s.version_major, s.version_minor, s.mechanisms, mech
                ),
            );
            self.finish(CloseCause::Failed(e));
            return Ok(());
        }
        let mut props = cfg.properties.clone();
        if !props.contains_key("capabilities") {
            props.push(
                ShortString::from_static("capabilities"),
                FieldValue::Table(cfg.capabilities.to_table()),
            );
        }
        let start_ok = ConnectionStartOk {
            client_properties: props,
            mechanism: mech,
            response: cfg.credentials.response(),
            locale: cfg.locale.clone(),
        };
        self.peer_caps = Capabilities::from_properties(&s.server_properties);
        self.peer_properties = s.server_properties;
        self.put(&Frame::method(0, start_ok));
        self.phase = Phase::AwaitTune;
        Ok(())
    }

    fn client_on_tune(&mut self, t: ConnectionTune) -> Result<(), ProtocolError> {
        let RoleConfig::Client(cfg) = &self.config else {
            return Ok(());
        };
        check_frame_max(t.frame_max).map_err(|e| e.with_method(10, 30))?;
        fn lower_nonzero<T: Ord + Default + Copy>(a: T, b: T) -> T {
            let zero = T::default();
            match (a == zero, b == zero) {
                (true, _) => b,
                (_, true) => a,
                _ => a.min(b),
            }
        }
        let heartbeat = match cfg.heartbeat {
            None => t.heartbeat,
            Some(0) => 0,
            Some(n) => lower_nonzero(n, t.heartbeat),
        };
        let tuning = Tuning {
            channel_max: lower_nonzero(cfg.channel_max, t.channel_max),
            frame_max: lower_nonzero(
                cfg.frame_max.max(if cfg.frame_max == 0 {
                    0
                } else {
                    amqp_wire::FRAME_MIN_SIZE
                }),
                t.frame_max,
            ),
            heartbeat,
        };
        let open = ConnectionOpen {
            virtual_host: cfg.virtual_host.clone(),
            capabilities: cfg.open_capabilities.clone(),
            insist: cfg.insist,
        };
        self.put(&Frame::method(
            0,
            ConnectionTuneOk {
                channel_max: tuning.channel_max,
                frame_max: tuning.frame_max,
                heartbeat: tuning.heartbeat,
            },
        ));
        self.apply_tuning(tuning);
        self.put(&Frame::method(0, open));
        self.phase = Phase::AwaitOpenOk;
        Ok(())
    }

    fn server_on_start_ok(&mut self, s: ConnectionStartOk) -> Result<(), ProtocolError> {
        let RoleConfig::Server(cfg) = &self.config else {
            return Ok(());
        };
        self.peer_caps = Capabilities::from_properties(&s.client_properties);
        self.peer_properties = s.client_properties;
        let offered = cfg
            .mechanisms
            .as_bytes()
            .split(|b| *b == b' ')
            .any(|m| m == s.mechanism.as_bytes());
        if !offered {
            return Err(conn_err(
                ReplyCode::COMMAND_INVALID,
                format!("unknown authentication mechanism '{}'", s.mechanism),
            )
            .with_method(10, 11));
        }
        let response = s.response.into_bytes();
        let credentials = Credentials::parse(s.mechanism.as_bytes(), &response);
        self.username = credentials.username().map(str::to_owned);
        self.phase = Phase::Authenticating;
        self.new_decision(
            PendingDecision::Authenticate {
                mechanism: s.mechanism.clone(),
            },
            Decision::Authenticate {
                mechanism: s.mechanism,
                credentials,
                response,
            },
        );
        Ok(())
    }

    fn server_on_tune_ok(&mut self, t: ConnectionTuneOk) -> Result<(), ProtocolError> {
        let RoleConfig::Server(cfg) = &self.config else {
            return Ok(());
        };
        let refuse = |what: &str, v: u64, max: u64| {
            Err(conn_err(
                ReplyCode::NOT_ALLOWED,
                format!("negotiated {what} = {v} is higher than the maximum allowed value ({max})"),
            )
            .with_method(10, 31))
        };
        if cfg.channel_max != 0 && (t.channel_max == 0 || t.channel_max > cfg.channel_max) {
            return refuse("channel_max", t.channel_max.into(), cfg.channel_max.into());
        }
        if cfg.frame_max != 0 && (t.frame_max == 0 || t.frame_max > cfg.frame_max) {
            return refuse("frame_max", t.frame_max.into(), cfg.frame_max.into());
        }
        check_frame_max(t.frame_max).map_err(|e| e.with_method(10, 31))?;
        self.apply_tuning(Tuning {
            channel_max: t.channel_max,
            frame_max: t.frame_max,
            heartbeat: t.heartbeat,
        });
        self.phase = Phase::AwaitOpen;
        Ok(())
    }

    #[inline]
    fn on_frame_open(&mut self, f: &mut Frame) -> Result<(), ProtocolError> {
        let channel = f.channel;
        if channel == 0 {
            let FramePayload::Method(m) = &mut f.payload else {
                return Err(unexpected("content frame on channel 0".into()));
            };
            return self.on_connection_method(take_method(m));
        }
        let Some(mut ch) = self.channels.remove(&channel) else {
            return self.on_unknown_channel(channel, take_frame(f).payload);
        };
        let r = self.on_channel_frame(channel, &mut ch, &mut f.payload);
        if !matches!(r, Ok(true)) {
            self.channels.restore(channel, ch);
        }
        r.map(|_| ())
    }

    fn on_unknown_channel(
        &mut self,
        channel: u16,
        payload: FramePayload,
    ) -> Result<(), ProtocolError> {
        match payload {
            FramePayload::Method(Method::ChannelOpen(_)) if self.role == Role::Server => {
                let max = self.channel_limit();
                if self.channels.len() >= usize::from(max) {
                    return Err(conn_err(
                        ReplyCode::NOT_ALLOWED,
                        format!("number of channels opened ({}) has reached the negotiated channel_max ({max})", self.channels.len()),
                    )
                    // RabbitMQ's close names no method (class 0, method 0):
                    // the limit is the connection's, not channel.open's.
                    .on_channel(channel));
                }
                if let Some((cap, text)) = &self.channel_cap
                    && self.channels.len() >= *cap
                {
                    return Err(conn_err(ReplyCode::NOT_ALLOWED, text.clone()).on_channel(channel));
                }
                self.channels.insert(channel, Channel::new(ChState::Open));
                self.put(&Frame::method(channel, ChannelOpenOk::default()));
                self.emit(Event::ChannelOpened { channel });
                Ok(())
            }
            // RabbitMQ's words: "CHANNEL_ERROR - expected 'channel.open'".
            FramePayload::Method(m) => Err(ProtocolError::connection(
                ReplyCode::CHANNEL_ERROR,
                ErrorKind::Refused("expected 'channel.open'".into()),
            )
            .on_channel(channel)
            .with_method(m.class_id(), m.method_id())),
            _ => Err(unexpected_on(channel, &payload, "which is not open")),
        }
    }

    /// Returns `Ok(true)` when the channel is gone.
    #[inline]
    fn on_channel_frame(
        &mut self,
        channel: u16,
        ch: &mut Channel,
        payload: &mut FramePayload,
    ) -> Result<bool, ProtocolError> {
        match ch.state {
            ChState::Closing => {
                match payload {
                    FramePayload::Method(Method::ChannelClose(_)) => {
                        self.put(&Frame::method(channel, ChannelCloseOk {}));
                    }
                    FramePayload::Method(Method::ChannelCloseOk(_)) => {
                        let reason = ch
                            .close_reason
                            .take()
                            .unwrap_or_else(|| CloseReason::new(ReplyCode::REPLY_SUCCESS, ""));
                        self.emit(Event::ChannelClosed {
                            channel,
                            initiator: Initiator::Local,
                            reason,
                        });
                        return Ok(true);
                    }
                    _ => {}
                }
                return Ok(false);
            }
            ChState::Opening => {
                return match std::mem::replace(payload, FramePayload::Heartbeat) {
                    FramePayload::Method(Method::ChannelOpenOk(_)) => {
                        ch.state = ChState::Open;
                        self.emit(Event::ChannelOpened { channel });
                        Ok(false)
                    }
                    FramePayload::Method(Method::ChannelClose(c)) => {
                        self.peer_channel_close(channel, c);
                        Ok(true)
                    }
                    other => Err(unexpected_on(channel, &other, "before channel.open-ok")),
                };
            }
            ChState::Open => {}
        }
        match payload {
            FramePayload::Method(m) => self.on_channel_method(channel, ch, m),
            FramePayload::Header(_) => {
                let FramePayload::Header(h) = std::mem::replace(payload, FramePayload::Heartbeat)
                else {
                    return Ok(false);
                };
                self.on_header(channel, ch, boxed(h)).map(|_| false)
            }
            FramePayload::Body(b) => self.on_body(channel, ch, std::mem::take(b)).map(|_| false),
            FramePayload::Heartbeat => Ok(false),
            _ => Ok(false),
        }
    }

    fn peer_channel_close(&mut self, channel: u16, c: ChannelClose) {
        self.put(&Frame::method(channel, ChannelCloseOk {}));
        self.emit(Event::ChannelClosed {
            channel,
            initiator: Initiator::Peer,
            reason: CloseReason {
                code: ReplyCode(c.reply_code),
                text: c.reply_text,
                class_id: c.class_id,
                method_id: c.method_id,
            },
        });
    }

    fn on_channel_method(
        &mut self,
        channel: u16,
        ch: &mut Channel,
        m: &mut Method,
    ) -> Result<bool, ProtocolError> {
        let kind = m.kind();
        let info = kind.info();
        let ids = (info.class_id, info.method_id);
        if !ch.content.is_idle() {
            return Err(unexpected(format!(
                "{} on channel {channel} while a message's content is incomplete",
                info.name
            ))
            .on_channel(channel)
            .with_method(ids.0, ids.1));
        }
        let from_peer_ok = match self.role {
            Role::Client => info.sender.server(),
            Role::Server => info.sender.client(),
        };
        if !from_peer_ok || info.class_id == 10 {
            return Err(conn_err(
                ReplyCode::COMMAND_INVALID,
                format!(
                    "{} is not valid from this peer on channel {channel}",
                    info.name
                ),
            )
            .on_channel(channel)
            .with_method(ids.0, ids.1));
        }
        ch.last_in = ids;
        match m {
            Method::ChannelOpen(_) => {
                return Err(ProtocolError::connection(
                    ReplyCode::CHANNEL_ERROR,
                    ErrorKind::UnexpectedFrame {
                        what: format!("second 'channel.open' seen on channel {channel}"),
                    },
                )
                .on_channel(channel)
                .with_method(ids.0, ids.1));
            }
            Method::ChannelClose(c) => {
                self.held -= ch.held;
                self.peer_channel_close(channel, std::mem::take(c));
                return Ok(true);
            }
            Method::ChannelCloseOk(_) | Method::ChannelOpenOk(_) => {
                return Err(unexpected(format!("{} on channel {channel}", info.name))
                    .on_channel(channel)
                    .with_method(ids.0, ids.1));
            }
            _ => {}
        }
        if is_reply(kind) {
            match ch.pending_out.front() {
                Some(req) if req.is_answered_by(kind) => {
                    ch.pending_out.pop_front();
                }
                _ => {
                    return Err(unexpected(format!(
                        "{} on channel {channel} answers no request",
                        info.name
                    ))
                    .on_channel(channel)
                    .with_method(ids.0, ids.1));
                }
            }
        }
        if m.expects_reply() && !(self.role == Role::Client && kind == MethodKind::ChannelFlow) {
            if ch.pending_in.len() >= self.limits.max_pending_requests {
                return Err(conn_err(
                    ReplyCode::RESOURCE_ERROR,
                    format!(
                        "more than {} unanswered requests on channel {channel}",
                        self.limits.max_pending_requests
                    ),
                )
                .on_channel(channel)
                .with_method(ids.0, ids.1));
            }
            ch.pending_in.push_back(kind);
        }
        if info.has_content {
            let seqno =
                if self.role == Role::Server && ch.confirm && kind == MethodKind::BasicPublish {
                    ch.seqno += 1;
                    Some(ch.seqno)
                } else {
                    None
                };
            match &*m {
                Method::BasicDeliver(d) => ch.delivery_tag = ch.delivery_tag.max(d.delivery_tag),
                Method::BasicGetOk(d) => ch.delivery_tag = ch.delivery_tag.max(d.delivery_tag),
                _ => {}
            }
            ch.content.method = Some(take_method(m));
            ch.content.seqno = seqno;
            return Ok(false);
        }
        match (self.role, &mut *m) {
            (Role::Client, Method::ChannelFlow(f)) => {
                ch.flow_active = f.active;
                self.put(&Frame::method(channel, ChannelFlowOk { active: f.active }));
                self.emit(Event::Flow {
                    channel,
                    active: f.active,
                });
            }
            (Role::Client, Method::BasicAck(a)) if ch.confirm => {
                let settled = settle(ch, a.delivery_tag, a.multiple);
                self.emit(Event::Confirm {
                    channel,
                    delivery_tag: a.delivery_tag,
                    multiple: a.multiple,
                    ack: true,
                    settled,
                });
            }
            (Role::Client, Method::BasicNack(a)) if ch.confirm => {
                let settled = settle(ch, a.delivery_tag, a.multiple);
                self.emit(Event::Confirm {
                    channel,
                    delivery_tag: a.delivery_tag,
                    multiple: a.multiple,
                    ack: false,
                    settled,
                });
            }
            (Role::Client, Method::BasicCancel(c)) => {
                ch.consumers.retain(|t| *t != c.consumer_tag);
                if !c.nowait {
                    ch.pending_in.pop_back();
                    self.put(&Frame::method(
                        channel,
                        BasicCancelOk {
                            consumer_tag: c.consumer_tag.clone(),
                        },
                    ));
                }
                self.emit(Event::Method {
                    channel,
                    method: take_method(m),
                });
            }
            (role, _) => {
                match &*m {
                    Method::BasicConsumeOk(ok) if role == Role::Client => {
                        ch.consumers.push(ok.consumer_tag.clone())
                    }
                    Method::BasicCancelOk(ok) if role == Role::Client => {
                        ch.consumers.retain(|t| *t != ok.consumer_tag)
                    }
                    Method::ConfirmSelect(_) if role == Role::Server => ch.confirm = true,
                    Method::ChannelFlowOk(ok) if role == Role::Client => ch.flow_active = ok.active,
                    Method::BasicConsume(_) | Method::BasicCancel(_) | Method::BasicQos(_) => {}
                    _ => {}
                }
                let method = take_method(m);
                self.emit(Event::Method { channel, method });
            }
        }
        Ok(false)
    }

    fn on_header(
        &mut self,
        channel: u16,
        ch: &mut Channel,
        h: Box<ContentHeader>,
    ) -> Result<(), ProtocolError> {
        let a = &mut ch.content;
        let Some(method) = &a.method else {
            return Err(unexpected(format!(
                "expected method frame, got a content header on channel {channel}"
            ))
            .on_channel(channel));
        };
        // Only the error paths need the ids (two out-of-line matches).
        let ids = |m: &Method| (m.class_id(), m.method_id());
        if a.header.is_some() {
            let ids = ids(method);
            return Err(unexpected(format!(
                "expected content body, got a second content header on channel {channel}"
            ))
            .with_method(ids.0, ids.1)
            .on_channel(channel));
        }
        if h.body_size > self.limits.max_message_size {
            let ids = ids(method);
            a.reset();
            return Err(ProtocolError::channel(
                channel,
                ReplyCode::PRECONDITION_FAILED,
                ErrorKind::Refused(format!(
                    "message size {} is larger than configured max size {}",
                    h.body_size, self.limits.max_message_size
                )),
            )
            .with_method(ids.0, ids.1));
        }
        if self.limits.body_chunks {
            self.emit(Event::ContentStart {
                channel,
                method: method.clone(),
                properties: Box::new(h.properties.clone()),
                body_size: h.body_size,
                seqno: a.seqno,
            });
            if h.body_size == 0 {
                a.reset();
                self.emit(Event::BodyChunk {
                    channel,
                    data: Bytes::new(),
                    last: true,
                });
                return Ok(());
            }
        } else if h.body_size == 0 {
            let (Some(method), seqno) = (a.method.take(), a.seqno.take()) else {
                return Ok(());
            };
            a.reset();
            self.emit(Event::Message {
                channel,
                message: Box::new(Message {
                    method,
                    properties: h.properties,
                    body: Bytes::new(),
                }),
                seqno,
            });
            return Ok(());
        }
        a.header = Some(h);
        a.received = 0;
        Ok(())
    }

    fn on_body(&mut self, channel: u16, ch: &mut Channel, b: Bytes) -> Result<(), ProtocolError> {
        let a = &mut ch.content;
        let (Some(method), Some(header)) = (&a.method, &a.header) else {
            return Err(match &a.method {
                Some(method) => unexpected(format!(
                    "expected content header for class 60, got a body frame on channel {channel}"
                ))
                .with_method(method.class_id(), method.method_id()),
                None => unexpected(format!(
                    "body frame on channel {channel} without a content method"
                )),
            }
            .on_channel(channel));
        };
        let body_size = header.body_size;
        let len = b.len() as u64;
        let total = a.received + len;
        if total > body_size {
            return Err(ProtocolError::frame_error(ErrorKind::Refused(format!(
                "body of {total}+ bytes is longer than the content header's body-size {body_size}"
            )))
            .on_channel(channel)
            .with_method(method.class_id(), method.method_id()));
        }
        a.received = total;
        let last = total == body_size;
        if self.limits.body_chunks {
            if last {
                a.reset();
            }
            self.emit(Event::BodyChunk {
                channel,
                data: b,
                last,
            });
            return Ok(());
        }
        if !last {
            if self.held + b.len() > self.limits.connection_budget {
                return Err(conn_err(
                    ReplyCode::RESOURCE_ERROR,
                    format!(
                        "incomplete messages exceed the connection budget of {} bytes",
                        self.limits.connection_budget
                    ),
                )
                .on_channel(channel));
            }
            self.held += b.len();
            ch.held += b.len();
            a.parts.push(b);
            return Ok(());
        }
        let (Some(method), Some(header)) = (a.method.take(), a.header.take()) else {
            return Ok(());
        };
        let seqno = a.seqno.take();
        let parts = std::mem::take(&mut a.parts);
        a.received = 0;
        self.held -= ch.held;
        ch.held = 0;
        let body = if parts.is_empty() {
            b
        } else {
            let mut all = BytesMut::with_capacity(usize::try_from(total).unwrap_or(0));
            for p in &parts {
                all.extend_from_slice(p);
            }
            all.extend_from_slice(&b);
            all.freeze()
        };
        self.emit(Event::Message {
            channel,
            message: Box::new(Message {
                method,
                properties: header.properties,
                body,
            }),
            seqno,
        });
        Ok(())
    }

    fn on_connection_method(&mut self, m: Method) -> Result<(), ProtocolError> {
        match (self.role, m) {
            (_, Method::ConnectionClose(c)) => {
                self.peer_close(c);
                Ok(())
            }
            (Role::Client, Method::ConnectionBlocked(b)) => {
                self.blocked = true;
                self.emit(Event::Blocked { reason: b.reason });
                Ok(())
            }
            (Role::Client, Method::ConnectionUnblocked(_)) => {
                self.blocked = false;
                self.emit(Event::Unblocked);
                Ok(())
            }
            (Role::Server, m @ Method::ConnectionUpdateSecret(_))
            | (Role::Client, m @ Method::ConnectionUpdateSecretOk(_)) => {
                self.emit(Event::Method {
                    channel: 0,
                    method: m,
                });
                Ok(())
            }
            (_, m) => Err(conn_err(
                ReplyCode::COMMAND_INVALID,
                format!("{} on channel 0 of an open connection", m.name()),
            )
            .with_method(m.class_id(), m.method_id())),
        }
    }
}

/// Moves a method out of a decoded frame, leaving a field-less one behind.
#[inline]
fn take_method(m: &mut Method) -> Method {
    std::mem::replace(m, Method::TxSelect(TxSelect {}))
}

/// Moves a frame out of the decoder's result (the slow paths: handshake,
/// closing, unknown channels).
#[inline]
fn take_frame(f: &mut Frame) -> Frame {
    std::mem::replace(f, Frame::heartbeat())
}

/// The content header of a header frame's payload, boxed (amqp-wire parses
/// it into a box: no allocation, no copy).
#[inline]
fn boxed(h: impl Into<Box<ContentHeader>>) -> Box<ContentHeader> {
    h.into()
}

/// Client role: settles publish sequence numbers for an ack/nack.
fn settle(ch: &mut Channel, tag: u64, multiple: bool) -> Vec<u64> {
    if multiple {
        let rest = ch.unconfirmed.split_off(&(tag.saturating_add(1)));
        let done = std::mem::replace(&mut ch.unconfirmed, rest);
        done.into_iter().collect()
    } else if ch.unconfirmed.remove(&tag) {
        vec![tag]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod reply_table_tests {
    use super::*;

    #[test]
    fn reply_table_matches_method_kind() {
        assert!(MethodKind::ALL.len() <= REPLY_KINDS.len());
        for &k in MethodKind::ALL {
            assert_eq!(is_reply(k), k.is_reply(), "{k}");
        }
    }
}

#[cfg(test)]
mod quiet_connection_tests {
    use super::*;

    /// After its handshake, an idle server connection keeps no event
    /// queue, no encode buffer and not the server properties it sent.
    #[test]
    fn a_quiet_connection_keeps_no_buffers() {
        let now = Instant::now();
        let mut server_config = ServerConfig::default();
        server_config.properties.insert("x-test", "test broker");
        let mut server = Connection::server(server_config, now);
        let mut client = Connection::client(ClientConfig::default(), now);
        for _ in 0..20 {
            while let Some(b) = client.poll_transmit() {
                server.handle_input(b);
            }
            while let Some(e) = server.poll_event() {
                if let Event::Decision { id, .. } = e {
                    server.decide(id, Answer::Accept).unwrap();
                }
            }
            while let Some(b) = server.poll_transmit() {
                client.handle_input(b);
            }
            while client.poll_event().is_some() {}
        }
        assert!(server.is_open() && client.is_open());
        assert_eq!(server.events.capacity(), 0, "event queue kept");
        assert_eq!(server.encoder.scratch_capacity(), 0, "encode buffer kept");
        let RoleConfig::Server(cfg) = &server.config else {
            panic!("a server")
        };
        assert!(cfg.properties.is_empty(), "server properties kept");
        assert_eq!(
            client.peer_properties().get("x-test"),
            Some(&FieldValue::from("test broker"))
        );
    }
}

/// Properties to send: decoded, or already in wire form.
#[derive(Clone, Copy)]
enum Props<'a> {
    Decoded(&'a BasicProperties),
    Encoded(&'a [u8]),
}
