//! The `codec_ops` check: an arbitrary sequence of operations applied to
//! `amqp-codec` connections of both roles.
//!
//! Three connections are driven from one input:
//!
//! * a lone client and a lone server fed arbitrary bytes (optionally after
//!   a valid scripted handshake, so garbage also reaches open connections);
//! * a wired client/server pair exchanging what they transmit, in chunks of
//!   sizes the fuzzer picks, with arbitrary frames or bytes injected into
//!   either direction.
//!
//! Operations are input chunks, commands with arbitrary arguments (methods,
//! properties, bodies, channels, codes, decisions), timeouts advancing a
//! virtual clock, and end-of-file. Invariants, checked after every step:
//!
//! * nothing panics;
//! * everything either role transmits parses with
//!   [`amqp_wire::parse_frame`] as valid frames (after the protocol header
//!   a client sends first, or a server sends alone to refuse a header), and
//!   every frame is at most the frame_max in force when it was sent
//!   (4096 before tune-ok; the client's own tune-ok names the new value);
//! * [`Connection::bytes_queued`] equals the bytes `poll_transmit` then
//!   yields;
//! * a closed connection reports no timer, and `Event::Closed` comes once
//!   and last.

use amqp_codec::types::method::{
    BasicPublish, ConnectionOpen, ConnectionStartOk, ConnectionTuneOk,
};
use amqp_codec::types::{BasicProperties, LongString, Method, ReplyCode, ShortString};
use amqp_codec::{
    Answer, ClientConfig, Connection, Credentials, DecisionId, Event, Limits, ServerConfig,
};
use amqp_wire::{FRAME_MIN_SIZE, Frame, FrameLimits, FramePayload, Parsed, parse_frame};
use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::{Bytes, BytesMut};
use std::time::{Duration, Instant};

/// Which connection an operation addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
enum Target {
    LoneClient,
    LoneServer,
    PairClient,
    PairServer,
}

/// A command with arbitrary arguments.
#[derive(Debug, Arbitrary)]
enum Command {
    OpenChannel,
    OpenChannelWith(u16),
    CloseChannel(u16, ReplyCode, String),
    Close(ReplyCode, String),
    SendMethod(u16, Method),
    Publish {
        channel: u16,
        publish: BasicPublish,
        properties: BasicProperties,
        body: BodySpec,
    },
    SendContent {
        channel: u16,
        method: Method,
        properties: BasicProperties,
        body: BodySpec,
    },
    Ack(u16, u64, bool),
    Nack(u16, u64, bool, bool),
    Block(String),
    Unblock,
    Refuse(u16, ReplyCode, String),
    Decide(AnswerSpec),
    Heartbeat,
}

/// A body: the fuzzer's bytes, or a large generated one (to exercise
/// splitting by frame_max without spending the input on it).
#[derive(Debug, Arbitrary)]
enum BodySpec {
    Bytes(Vec<u8>),
    Filled { len: u32, byte: u8 },
}

impl BodySpec {
    fn build(self) -> Bytes {
        match self {
            BodySpec::Bytes(b) => b.into(),
            // At most 384 KiB: many frames at frame_max 4096.
            BodySpec::Filled { len, byte } => vec![byte; (len % (384 * 1024)) as usize].into(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum AnswerSpec {
    Accept,
    Refuse(ReplyCode, String),
    Challenge(Vec<u8>),
    Response(Vec<u8>),
}

impl AnswerSpec {
    fn build(self) -> Answer {
        match self {
            AnswerSpec::Accept => Answer::Accept,
            AnswerSpec::Refuse(c, t) => Answer::refuse(c, t),
            AnswerSpec::Challenge(b) => Answer::Challenge(b.into()),
            AnswerSpec::Response(b) => Answer::Response(b.into()),
        }
    }
}

/// One step.
#[derive(Debug, Arbitrary)]
enum Op {
    /// Arbitrary bytes to a lone connection (a pair connection gets them on
    /// its inbound wire, after what is in flight).
    Input(Target, Vec<u8>),
    /// An arbitrary frame, encoded, as input (same routing as `Input`).
    InjectFrame(Target, Frame),
    /// Move up to `budget` bytes of each direction of the pair, split into
    /// chunks of the given sizes (cycled; 0 counts as 1).
    Pump {
        budget: u16,
        chunks: Vec<u8>,
    },
    /// Move everything in flight both ways until the pair is quiet.
    Settle,
    Command(Target, Box<Command>),
    /// Advance the virtual clock (milliseconds) and fire every timer due.
    Advance(u16),
    /// Advance by whole seconds (heartbeats, handshake and close timers).
    AdvanceSecs(u8),
    Eof(Target),
}

/// Connection settings chosen by the input's first bytes.
#[derive(Debug, Arbitrary)]
struct Setup {
    client_frame_max: u32,
    server_frame_max: u32,
    client_heartbeat: Option<u16>,
    server_heartbeat: u8,
    client_channel_max: u16,
    server_channel_max: u16,
    body_chunks: bool,
    small_limits: bool,
    /// Answer every decision with Accept (otherwise only `Decide` does).
    autopilot: bool,
    /// Lone server: script a valid handshake before the garbage.
    script_lone_server: bool,
    /// Lone client: script a valid server handshake.
    script_lone_client: bool,
    mechanism: u8,
}

fn limits(s: &Setup) -> Limits {
    let mut l = Limits {
        body_chunks: s.body_chunks,
        ..Limits::default()
    };
    if s.small_limits {
        l.max_message_size = 70_000;
        l.connection_budget = 100_000;
        l.max_pending_requests = 3;
    }
    l
}

/// Frame_max values the fuzzer picks from (plus arbitrary ones).
fn frame_max(v: u32) -> u32 {
    match v % 8 {
        0 => 0,
        1 => 4096,
        2 => 4097,
        3 => 131_072,
        4 => 8192,
        _ => v,
    }
}

fn client_config(s: &Setup) -> ClientConfig {
    ClientConfig {
        credentials: match s.mechanism % 3 {
            0 => Credentials::plain("guest", "guest"),
            1 => Credentials::AmqPlain {
                username: "guest".into(),
                password: "guest".into(),
            },
            _ => Credentials::External {
                identity: String::new(),
            },
        },
        channel_max: s.client_channel_max % 8,
        frame_max: frame_max(s.client_frame_max),
        heartbeat: s.client_heartbeat.map(|h| h % 8),
        limits: limits(s),
        ..ClientConfig::default()
    }
}

fn server_config(s: &Setup) -> ServerConfig {
    let fm = frame_max(s.server_frame_max);
    ServerConfig {
        channel_max: s.server_channel_max % 8,
        // The server must offer at least 4096 (or none).
        frame_max: if fm == 0 { 0 } else { fm.max(FRAME_MIN_SIZE) },
        heartbeat: u16::from(s.server_heartbeat % 8),
        limits: limits(s),
        ..ServerConfig::default()
    }
}

/// Checks one connection's transmitted stream as it grows.
#[derive(Debug)]
struct Checker {
    name: &'static str,
    /// Unparsed tail of the stream.
    pending: BytesMut,
    /// Whether the stream may (client: must) open with a protocol header.
    expect_header: Option<bool>,
    /// Client: the frame_max its own tune-ok put in force.
    own_frame_max: Option<u32>,
    frames: u64,
    closed: bool,
}

impl Checker {
    fn new(name: &'static str, client: bool) -> Self {
        Checker {
            name,
            pending: BytesMut::new(),
            expect_header: Some(client),
            own_frame_max: None,
            frames: 0,
            closed: false,
        }
    }

    /// Takes everything `conn` transmits, checks it, and returns it.
    fn drain(&mut self, conn: &mut Connection) -> Vec<Bytes> {
        let queued = conn.bytes_queued();
        let mut out = Vec::new();
        let mut total = 0;
        while let Some(b) = conn.poll_transmit() {
            total += b.len();
            self.pending.extend_from_slice(&b);
            out.push(b);
        }
        assert_eq!(
            queued, total,
            "{}: bytes_queued() disagrees with poll_transmit",
            self.name
        );
        assert_eq!(conn.bytes_queued(), 0, "{}: queue not empty", self.name);
        // 4096 until tune-ok, the negotiated value after (0 = none); the
        // value only ever grows, so checking at the end of a step is exact
        // for frames sent after tune-ok, and frames before it are small.
        let limit = match conn.tuning().frame_max {
            0 => u32::MAX,
            n => n,
        };
        self.check(limit);
        out
    }

    fn check(&mut self, conn_limit: u32) {
        if let Some(client) = self.expect_header {
            if self.pending.len() < 8 {
                if !self.pending.is_empty() {
                    assert!(
                        b"AMQP\x00\x00\x09\x01".starts_with(&self.pending),
                        "{}: stream does not start with a protocol header",
                        self.name
                    );
                }
                if client || self.pending.is_empty() {
                    return;
                }
            }
            if self.pending.starts_with(b"AMQP") {
                assert_eq!(
                    &self.pending[..8],
                    b"AMQP\x00\x00\x09\x01",
                    "{}: bad protocol header sent",
                    self.name
                );
                let _ = self.pending.split_to(8);
                if !client {
                    // A server sends its header only to refuse the client's,
                    // and nothing after it.
                    self.closed = true;
                }
            } else {
                assert!(!client, "{}: client did not send the header", self.name);
            }
            self.expect_header = None;
        }
        if self.closed {
            assert!(
                self.pending.is_empty(),
                "{}: bytes after a refusing protocol header",
                self.name
            );
        }
        loop {
            let buf = self.pending.clone().freeze();
            match parse_frame(&buf, FrameLimits::UNLIMITED) {
                Ok(Parsed::Incomplete { .. }) => return,
                Ok(Parsed::Complete { frame, consumed }) => {
                    let limit = match self.own_frame_max {
                        Some(0) => u32::MAX,
                        Some(n) => n.min(conn_limit),
                        None => conn_limit,
                    };
                    assert!(
                        consumed as u64 <= u64::from(limit),
                        "{}: frame {} of {consumed} bytes exceeds frame_max {limit}: {frame:?}",
                        self.name,
                        self.frames
                    );
                    // A client's own tune-ok puts its value in force for
                    // every frame after it.
                    if let FramePayload::Method(Method::ConnectionTuneOk(t)) = &frame.payload {
                        self.own_frame_max = Some(t.frame_max);
                    }
                    self.frames += 1;
                    let _ = self.pending.split_to(consumed);
                }
                Err(e) => panic!(
                    "{}: transmitted frame {} does not parse: {e} ({:02x?})",
                    self.name,
                    self.frames,
                    &buf[..buf.len().min(64)]
                ),
            }
        }
    }
}

/// A connection with its output checker and event bookkeeping.
struct Side {
    conn: Connection,
    checker: Checker,
    decision: Option<DecisionId>,
    closed_events: u32,
    events: u64,
}

impl Side {
    fn new(conn: Connection, name: &'static str, client: bool) -> Self {
        Side {
            conn,
            checker: Checker::new(name, client),
            decision: None,
            closed_events: 0,
            events: 0,
        }
    }

    /// Drains events (answering decisions on autopilot) and checks the
    /// event invariants.
    fn events(&mut self, autopilot: bool) {
        while let Some(e) = self.conn.poll_event() {
            self.events += 1;
            assert_eq!(
                self.closed_events, 0,
                "{}: event after Closed: {e:?}",
                self.checker.name
            );
            match e {
                Event::Decision { id, .. } => {
                    if autopilot {
                        // Accept may not fit (a client's challenge wants a
                        // response); fall back to keeping the id.
                        if self.conn.decide(id, Answer::Accept).is_err()
                            && self
                                .conn
                                .decide(id, Answer::Response(Bytes::new()))
                                .is_err()
                        {
                            self.decision = Some(id);
                        }
                    } else {
                        self.decision = Some(id);
                    }
                }
                Event::Closed { .. } => self.closed_events += 1,
                _ => {}
            }
        }
        if self.conn.is_closed() {
            assert_eq!(
                self.conn.poll_timeout(),
                None,
                "{}: closed connection wants a timer",
                self.checker.name
            );
        }
    }

    fn command(&mut self, c: Command) {
        let conn = &mut self.conn;
        let _ = match c {
            Command::OpenChannel => conn.open_channel().map(drop),
            Command::OpenChannelWith(n) => conn.open_channel_with(n % 8),
            Command::CloseChannel(ch, code, text) => conn.close_channel(ch % 8, code, &text),
            Command::Close(code, text) => conn.close(code, &text),
            Command::SendMethod(ch, m) => conn.send_method(ch % 8, m),
            Command::Publish {
                channel,
                publish,
                properties,
                body,
            } => conn
                .publish(channel % 8, publish, &properties, body.build())
                .map(drop),
            Command::SendContent {
                channel,
                method,
                properties,
                body,
            } => conn
                .send_content(channel % 8, method, &properties, body.build())
                .map(drop),
            Command::Ack(ch, tag, multiple) => conn.ack(ch % 8, tag % 16, multiple),
            Command::Nack(ch, tag, multiple, requeue) => {
                conn.nack(ch % 8, tag % 16, multiple, requeue)
            }
            Command::Block(r) => conn.block(&r),
            Command::Unblock => conn.unblock(),
            Command::Refuse(ch, code, text) => conn.refuse(ch % 8, code, &text),
            Command::Decide(a) => match self.decision {
                Some(id) => conn.decide(id, a.build()),
                None => Ok(()),
            },
            Command::Heartbeat => conn.send_heartbeat(),
        };
    }
}

fn encode(frame: &Frame) -> Option<Bytes> {
    let mut b = BytesMut::new();
    frame.encode(&mut b).ok()?;
    Some(b.freeze())
}

/// The handshake a client sends, for the lone server.
fn scripted_client_handshake(s: &Setup) -> Vec<Bytes> {
    let mut out = vec![Bytes::from_static(b"AMQP\x00\x00\x09\x01")];
    let sc = server_config(s);
    let frames = [
        Frame::method(
            0,
            ConnectionStartOk {
                client_properties: Default::default(),
                mechanism: ShortString::from_static("PLAIN"),
                response: LongString::from_static("\0guest\0guest"),
                locale: ShortString::from_static("en_US"),
            },
        ),
        Frame::method(
            0,
            ConnectionTuneOk {
                channel_max: sc.channel_max,
                frame_max: sc.frame_max,
                heartbeat: sc.heartbeat,
            },
        ),
        Frame::method(0, ConnectionOpen::default()),
    ];
    out.extend(frames.iter().filter_map(encode));
    out
}

/// The handshake a server sends, for the lone client.
fn scripted_server_handshake(s: &Setup) -> Vec<Bytes> {
    use amqp_codec::types::method::{ConnectionOpenOk, ConnectionStart, ConnectionTune};
    let sc = server_config(s);
    let frames = [
        Frame::method(
            0,
            ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: Default::default(),
                mechanisms: LongString::from_static("PLAIN AMQPLAIN EXTERNAL"),
                locales: LongString::from_static("en_US"),
            },
        ),
        Frame::method(
            0,
            ConnectionTune {
                channel_max: sc.channel_max,
                frame_max: sc.frame_max,
                heartbeat: sc.heartbeat,
            },
        ),
        Frame::method(0, ConnectionOpenOk::default()),
    ];
    frames.iter().filter_map(encode).collect()
}

/// The state of one run.
struct World {
    lone_client: Side,
    lone_server: Side,
    client: Side,
    server: Side,
    /// Bytes in flight client -> server and server -> client.
    c2s: Vec<Bytes>,
    s2c: Vec<Bytes>,
    now: Instant,
    autopilot: bool,
}

impl World {
    fn side(&mut self, t: Target) -> &mut Side {
        match t {
            Target::LoneClient => &mut self.lone_client,
            Target::LoneServer => &mut self.lone_server,
            Target::PairClient => &mut self.client,
            Target::PairServer => &mut self.server,
        }
    }

    /// Collects output and events of every connection (pair output goes on
    /// the wire; lone output is checked and dropped).
    fn collect(&mut self) {
        let ap = self.autopilot;
        for _ in 0..4 {
            for s in [
                &mut self.lone_client,
                &mut self.lone_server,
                &mut self.client,
                &mut self.server,
            ] {
                s.events(ap);
            }
            self.lone_client.checker.drain(&mut self.lone_client.conn);
            self.lone_server.checker.drain(&mut self.lone_server.conn);
            let out = self.client.checker.drain(&mut self.client.conn);
            self.c2s.extend(out);
            let out = self.server.checker.drain(&mut self.server.conn);
            self.s2c.extend(out);
        }
    }

    fn input(&mut self, t: Target, data: Bytes) {
        match t {
            Target::LoneClient => self.lone_client.conn.handle_input(data),
            Target::LoneServer => self.lone_server.conn.handle_input(data),
            // Injected into the pair's wire, after what is in flight.
            Target::PairClient => self.s2c.push(data),
            Target::PairServer => self.c2s.push(data),
        }
    }

    /// Moves up to `budget` bytes each way, chunked by `chunks`.
    fn pump(&mut self, budget: usize, chunks: &[u8]) {
        let mut k = 0;
        for dir in 0..2 {
            let (wire, to) = if dir == 0 {
                (&mut self.c2s, &mut self.server.conn)
            } else {
                (&mut self.s2c, &mut self.client.conn)
            };
            let mut all = BytesMut::new();
            for b in wire.drain(..) {
                all.extend_from_slice(&b);
            }
            let mut all = all.freeze();
            let mut moved = 0;
            while !all.is_empty() && moved < budget {
                let size = chunks
                    .get(k % chunks.len().max(1))
                    .map_or(all.len(), |c| usize::from(*c).max(1));
                k += 1;
                let n = size.min(all.len()).min(budget - moved);
                to.handle_input(all.split_to(n));
                moved += n;
            }
            if !all.is_empty() {
                wire.push(all);
            }
        }
    }

    fn settle(&mut self) {
        for _ in 0..64 {
            self.collect();
            if self.c2s.is_empty() && self.s2c.is_empty() {
                return;
            }
            self.pump(usize::MAX, &[]);
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        for s in [
            &mut self.lone_client,
            &mut self.lone_server,
            &mut self.client,
            &mut self.server,
        ] {
            // As an embedder does: fire when the wake-up time has come.
            if s.conn.poll_timeout().is_some_and(|t| t <= self.now) {
                s.conn.handle_timeout(self.now);
            }
        }
    }
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let setup = Setup::arbitrary(u)?;
    // `CODEC_OPS_TRACE=1` prints the steps of a reproduction.
    let trace = std::env::var_os("CODEC_OPS_TRACE").is_some();
    if trace {
        eprintln!("{setup:?}");
    }
    let now = Instant::now();
    let mut w = World {
        lone_client: Side::new(
            Connection::client(client_config(&setup), now),
            "lone client",
            true,
        ),
        lone_server: Side::new(
            Connection::server(server_config(&setup), now),
            "lone server",
            false,
        ),
        client: Side::new(
            Connection::client(client_config(&setup), now),
            "pair client",
            true,
        ),
        server: Side::new(
            Connection::server(server_config(&setup), now),
            "pair server",
            false,
        ),
        c2s: Vec::new(),
        s2c: Vec::new(),
        now,
        autopilot: setup.autopilot,
    };
    if setup.script_lone_server {
        for b in scripted_client_handshake(&setup) {
            w.lone_server.conn.handle_input(b);
            w.collect();
        }
    }
    if setup.script_lone_client {
        for b in scripted_server_handshake(&setup) {
            w.lone_client.conn.handle_input(b);
            w.collect();
        }
    }
    w.collect();
    let mut steps = 0;
    while !u.is_empty() && steps < 256 {
        steps += 1;
        let op = Op::arbitrary(u)?;
        if trace {
            eprintln!("step {steps}: {op:?}");
        }
        match op {
            Op::Input(t, bytes) => w.input(t, bytes.into()),
            Op::InjectFrame(t, f) => {
                if let Some(b) = encode(&f) {
                    w.input(t, b);
                }
            }
            Op::Pump { budget, chunks } => w.pump(usize::from(budget), &chunks),
            Op::Settle => w.settle(),
            Op::Command(t, c) => w.side(t).command(*c),
            Op::Advance(ms) => w.advance(Duration::from_millis(u64::from(ms))),
            Op::AdvanceSecs(s) => w.advance(Duration::from_secs(u64::from(s % 64))),
            Op::Eof(t) => w.side(t).conn.handle_eof(),
        }
        w.collect();
    }
    w.settle();
    Ok(())
}

/// The check behind the `codec_ops` fuzz target; panics when an invariant
/// above breaks.
pub fn codec_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
}
