//! The protocol analyser behind `amqp-dump`: one incremental decoder over a
//! growing buffer, and the formatting of what it finds, shared by the file
//! mode and the live proxy.
//!
//! A [`Decoder`] is fed the bytes of one direction of one connection, in
//! chunks of any size ([`Decoder::push`]). It reads the optional 8-byte
//! protocol header at the start, then frames with [`amqp_wire::parse_frame`],
//! and returns one [`Event`] per frame. The first malformed frame ends the
//! decoding of that stream (AMQP has no way to resynchronise); the event
//! carries the typed [`ProtocolError`] with its offset in the stream and its
//! reply code. [`Decoder::finish`] reports a stream that ends inside a frame.
//! [`Event::render`] turns an event into text: one line per frame, or with
//! [`Options::verbose`] every argument, every table entry with its type
//! letter, and a hex dump of the frame.
//!
//! ```
//! use amqp_examples::dump::{Decoder, Options};
//! use amqp_types::method::BasicAck;
//! use amqp_wire::Frame;
//! use bytes::BytesMut;
//!
//! let mut wire = BytesMut::new();
//! wire.extend_from_slice(b"AMQP\x00\x00\x09\x01");
//! Frame::method(1, BasicAck { delivery_tag: 7, multiple: true }).encode(&mut wire)?;
//!
//! let options = Options::default();
//! let mut decoder = Decoder::new(options.clone());
//! let mut text = String::new();
//! // Feed it in two arbitrary pieces: the output is the same.
//! for piece in [&wire[..11], &wire[11..]] {
//!     for event in decoder.push(piece) {
//!         event.render(&options, &mut text);
//!     }
//! }
//! assert!(decoder.finish().is_none());
//! assert_eq!(
//!     text,
//!     "       0  -        protocol-header AMQP 0-9-1\n       \
//!             8  ch 1     basic.ack delivery-tag=7 multiple\n"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use amqp_types::{
    BasicProperties, FieldArray, FieldTable, FieldValue, LongString, Method, MethodKind,
    ProtocolError, ReplyCode, ShortString,
};
use amqp_wire::{
    ContentHeader, Frame, FrameLimits, FramePayload, Parsed, ProtocolHeader, parse_frame,
    parse_protocol_header,
};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::fmt::Write as _;

/// Which way a stream flows; used to label lines and to flag methods sent
/// by the wrong peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    ClientToServer,
    /// Server to client.
    ServerToClient,
}

impl Direction {
    /// `"c2s"` or `"s2c"`.
    pub const fn label(self) -> &'static str {
        match self {
            Direction::ClientToServer => "c2s",
            Direction::ServerToClient => "s2c",
        }
    }

    /// Parses `"c2s"` or `"s2c"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "c2s" => Some(Direction::ClientToServer),
            "s2c" => Some(Direction::ServerToClient),
            _ => None,
        }
    }
}

/// How to decode and print a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Print every argument and table entry (with type letters) and a hex
    /// dump of each frame, not just the one-line summary.
    pub verbose: bool,
    /// The frame size limit to enforce while decoding (0 = none, the
    /// default, so that a capture's oversized frames still print).
    pub frame_max: u32,
    /// The direction of the stream, if known: a method the other peer
    /// should have sent is flagged.
    pub direction: Option<Direction>,
    /// Text put in front of every line (the proxy's `[conn 3 c2s] `).
    pub prefix: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            verbose: false,
            frame_max: FrameLimits::UNLIMITED.frame_max,
            direction: None,
            prefix: String::new(),
        }
    }
}

/// Something the decoder found in the stream.
// Events live only until they are printed; boxing the frame would cost an
// allocation per frame for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The 8-byte protocol header at the start of the stream.
    ProtocolHeader {
        /// Byte offset in the stream (always 0).
        offset: u64,
        /// The header.
        header: ProtocolHeader,
    },
    /// One frame.
    Frame {
        /// Byte offset of the frame's first byte in the stream.
        offset: u64,
        /// The decoded frame.
        frame: Frame,
        /// The frame's bytes as they were on the wire.
        raw: Bytes,
        /// For a body frame: the body bytes seen so far on this channel
        /// (this frame included) and the body size its content header
        /// announced.
        progress: Option<(u64, u64)>,
    },
    /// A malformed frame or header; the stream is not decoded further.
    Error {
        /// Byte offset in the stream where the faulty frame starts.
        frame_offset: u64,
        /// The fault, with its offset counted from the start of the stream.
        error: ProtocolError,
    },
    /// The stream ended inside a frame (or the protocol header).
    Truncated {
        /// Byte offset where the incomplete frame starts.
        offset: u64,
        /// How many of its bytes are present.
        present: usize,
        /// At least this many more bytes were needed.
        needed: usize,
    },
}

impl Event {
    /// Whether the event means the stream is not a well-formed AMQP stream
    /// (an error or a truncation).
    pub fn is_failure(&self) -> bool {
        matches!(self, Event::Error { .. } | Event::Truncated { .. })
    }

    /// Appends the event's text (one line, or more with
    /// [`Options::verbose`]) to `out`, each line ending in `\n`.
    pub fn render(&self, options: &Options, out: &mut String) {
        let p = options.prefix.as_str();
        match self {
            Event::ProtocolHeader { offset, header } => {
                let _ = write!(out, "{p}{offset:>8}  {:<8} protocol-header ", "-");
                if header.is_0_9_1() {
                    out.push_str("AMQP 0-9-1");
                } else {
                    let v = header.version;
                    let _ = write!(
                        out,
                        "AMQP {} {} {} {} (not AMQP 0-9-1)",
                        v[0], v[1], v[2], v[3]
                    );
                }
                out.push('\n');
                if options.verbose {
                    hex_dump(p, &header.to_bytes(), out);
                }
            }
            Event::Frame {
                offset,
                frame,
                raw,
                progress,
            } => {
                let ch = format!("ch {}", frame.channel);
                let _ = write!(out, "{p}{offset:>8}  {ch:<8} ");
                summary(frame, *progress, options.direction, out);
                out.push('\n');
                if options.verbose {
                    details(p, frame, out);
                    hex_dump(p, raw, out);
                }
            }
            Event::Error {
                frame_offset,
                error,
            } => {
                let _ = write!(out, "{p}{frame_offset:>8}  ");
                describe_error(error, out);
                out.push('\n');
            }
            Event::Truncated {
                offset,
                present,
                needed,
            } => {
                let _ = writeln!(
                    out,
                    "{p}{offset:>8}  truncated: the stream ends inside a frame \
                     ({present} bytes present, at least {needed} more needed)"
                );
            }
        }
    }
}

/// Writes `error` as `error: reply-code 501 FRAME_ERROR (connection), at
/// offset N, channel C, method ...: <reply text>`.
pub fn describe_error(error: &ProtocolError, out: &mut String) {
    let _ = write!(
        out,
        "error: reply-code {} ({} scope)",
        error.code(),
        format!("{:?}", error.scope()).to_lowercase()
    );
    if let Some(o) = error.offset() {
        let _ = write!(out, ", at offset {o}");
    }
    let _ = write!(out, ", channel {}", error.channel_id());
    let (c, m) = (error.class_id(), error.method_id());
    if c != 0 || m != 0 {
        let _ = write!(out, ", method {c}/{m}");
        if let Some(k) = MethodKind::from_ids(c, m) {
            let _ = write!(out, " ({})", k.name());
        }
    }
    let _ = write!(out, ": {error}");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing decoded yet: a protocol header may come first.
    Start,
    /// Reading frames.
    Frames,
    /// A fault was found; the rest of the stream is ignored.
    Failed,
}

/// An incremental decoder for one direction of one connection.
///
/// Bytes go in with [`push`](Self::push) in pieces of any size; events come
/// out as soon as whole frames are there. Offsets count from the first byte
/// pushed. Memory is bounded by the largest frame plus one push.
#[derive(Debug)]
pub struct Decoder {
    options: Options,
    buf: BytesMut,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Do not try to parse again until `buf` holds this many bytes.
    wait_for: usize,
    state: State,
    /// Per channel: body bytes seen and body size announced, while a
    /// message's body is incomplete.
    content: HashMap<u16, (u64, u64)>,
    error: Option<ProtocolError>,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new(options: Options) -> Self {
        Decoder {
            options,
            buf: BytesMut::new(),
            base: 0,
            wait_for: 0,
            state: State::Start,
            content: HashMap::new(),
            error: None,
        }
    }

    /// The options this decoder was made with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The fault that stopped decoding, if any.
    pub fn error(&self) -> Option<&ProtocolError> {
        self.error.as_ref()
    }

    /// How many bytes have been pushed so far.
    pub fn position(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Feeds the next bytes of the stream and returns what they completed.
    /// After an error the decoder ignores further input (and returns
    /// nothing).
    pub fn push(&mut self, data: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        if self.state == State::Failed {
            self.base += data.len() as u64;
            return events;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() < self.wait_for {
            return events;
        }
        self.wait_for = 0;
        // Parse from a frozen view (body frames then share it), and keep
        // the incomplete tail for the next push.
        let input = std::mem::take(&mut self.buf).freeze();
        let mut pos = 0;
        while pos < input.len() {
            let rest = input.slice(pos..);
            let offset = self.base + pos as u64;
            match self.step(&rest, offset) {
                Ok(Some((event, consumed))) => {
                    events.push(event);
                    pos += consumed;
                }
                Ok(None) => break,
                Err(error) => {
                    let error = error.offset_by(offset);
                    self.error = Some(error.clone());
                    events.push(Event::Error {
                        frame_offset: offset,
                        error,
                    });
                    self.state = State::Failed;
                    self.base += input.len() as u64;
                    self.wait_for = 0;
                    return events;
                }
            }
        }
        self.base += pos as u64;
        let tail = input.slice(pos..);
        self.buf = match tail.try_into_mut() {
            Ok(b) => b,
            Err(tail) => BytesMut::from(&tail[..]),
        };
        events
    }

    /// Decodes one item from the front of `rest`: `Ok(None)` when more
    /// bytes are needed (and `wait_for` is set accordingly).
    fn step(&mut self, rest: &Bytes, offset: u64) -> Result<Option<(Event, usize)>, ProtocolError> {
        if self.state == State::Start {
            // Only "AMQP..." at the very start is a protocol header; any
            // other first byte is read as a frame (and usually refused as
            // an unknown frame type).
            let n = rest.len().min(4);
            if rest[..n] == b"AMQP"[..n] {
                match parse_protocol_header(rest)? {
                    Parsed::Complete { frame, consumed } => {
                        self.state = State::Frames;
                        return Ok(Some((
                            Event::ProtocolHeader {
                                offset,
                                header: frame,
                            },
                            consumed,
                        )));
                    }
                    Parsed::Incomplete { needed } => {
                        self.wait_for = rest.len() + needed.get();
                        return Ok(None);
                    }
                }
            }
            self.state = State::Frames;
        }
        match parse_frame(rest, FrameLimits::new(self.options.frame_max))? {
            Parsed::Complete { frame, consumed } => {
                let progress = self.track_content(&frame);
                Ok(Some((
                    Event::Frame {
                        offset,
                        raw: rest.slice(..consumed),
                        frame,
                        progress,
                    },
                    consumed,
                )))
            }
            Parsed::Incomplete { needed } => {
                self.wait_for = rest.len().saturating_add(needed.get());
                Ok(None)
            }
        }
    }

    fn track_content(&mut self, frame: &Frame) -> Option<(u64, u64)> {
        match &frame.payload {
            FramePayload::Header(h) => {
                if h.body_size == 0 {
                    self.content.remove(&frame.channel);
                } else {
                    self.content.insert(frame.channel, (0, h.body_size));
                }
                None
            }
            FramePayload::Body(b) => {
                let entry = self.content.get_mut(&frame.channel)?;
                entry.0 = entry.0.saturating_add(b.len() as u64);
                let progress = *entry;
                if progress.0 >= progress.1 {
                    self.content.remove(&frame.channel);
                }
                Some(progress)
            }
            FramePayload::Method(_) => {
                self.content.remove(&frame.channel);
                None
            }
            _ => None,
        }
    }

    /// Ends the stream: a [`Event::Truncated`] if it stopped inside a
    /// frame or the protocol header, otherwise `None` (also after an
    /// error, which was already reported).
    pub fn finish(&mut self) -> Option<Event> {
        if self.state == State::Failed || self.buf.is_empty() {
            return None;
        }
        let present = self.buf.len();
        Some(Event::Truncated {
            offset: self.base,
            present,
            needed: self.wait_for.saturating_sub(present).max(1),
        })
    }
}

/// Decodes a whole captured stream at once: every event, the truncation
/// (if any) last.
pub fn decode_all(data: &[u8], options: &Options) -> Vec<Event> {
    let mut d = Decoder::new(options.clone());
    let mut events = d.push(data);
    events.extend(d.finish());
    events
}

// ---------------------------------------------------------------------------
// Argument access, generated from the protocol table.

/// One method argument or property value, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Arg<'a> {
    /// `octet`.
    Octet(u8),
    /// `short`.
    Short(u16),
    /// `long`.
    Long(u32),
    /// `longlong` or `timestamp`.
    LongLong(u64),
    /// `bit`.
    Bit(bool),
    /// `shortstr`.
    ShortStr(&'a ShortString),
    /// `longstr`.
    LongStr(&'a LongString),
    /// `table`.
    Table(&'a FieldTable),
}

macro_rules! arg_from {
    ($($t:ty => $v:ident),*) => {$(
        impl<'a> From<&'a $t> for Arg<'a> {
            fn from(v: &'a $t) -> Self {
                Arg::$v(v)
            }
        }
    )*};
}
arg_from!(ShortString => ShortStr, LongString => LongStr, FieldTable => Table);

macro_rules! arg_from_copy {
    ($($t:ty => $v:ident),*) => {$(
        impl<'a> From<&'a $t> for Arg<'a> {
            fn from(v: &'a $t) -> Self {
                Arg::$v(*v)
            }
        }
    )*};
}
arg_from_copy!(u8 => Octet, u16 => Short, u32 => Long, u64 => LongLong, bool => Bit);

impl Arg<'_> {
    /// The spec's primitive type name (`"shortstr"`).
    pub const fn domain(&self) -> &'static str {
        match self {
            Arg::Octet(_) => "octet",
            Arg::Short(_) => "short",
            Arg::Long(_) => "long",
            Arg::LongLong(_) => "longlong",
            Arg::Bit(_) => "bit",
            Arg::ShortStr(_) => "shortstr",
            Arg::LongStr(_) => "longstr",
            Arg::Table(_) => "table",
        }
    }
}

macro_rules! method_arg_visitor {
    ($(
        $Name:ident ($cid:literal, $mid:literal, $name:literal, $from:ident, $content:ident,
                     [$($reply:ident),*], [$($nw:ident)?])
        { $( $f:ident : $ty:ident = $fname:literal ),* $(,)? }
    )*) => {
        /// The arguments of `method` with their spec names, in wire order
        /// (generated from `amqp_types::for_each_method!`).
        pub fn method_args(method: &Method) -> Vec<(&'static str, Arg<'_>)> {
            match method {
                $(
                    #[allow(unused_variables)]
                    Method::$Name(m) => vec![$( ($fname, Arg::from(&m.$f)) ),*],
                )*
                #[allow(unreachable_patterns)]
                _ => Vec::new(),
            }
        }
    };
}
amqp_types::for_each_method!(method_arg_visitor);

macro_rules! property_visitor {
    ($( $f:ident : $ty:ident = $name:literal @ $bit:literal ),* $(,)?) => {
        /// The present properties with their spec names, in wire order
        /// (generated from `amqp_types::for_each_basic_property!`).
        pub fn property_values(p: &BasicProperties) -> Vec<(&'static str, Arg<'_>)> {
            let mut v = Vec::new();
            $( if let Some(x) = &p.$f { v.push(($name, Arg::from(x))); } )*
            v
        }
    };
}
amqp_types::for_each_basic_property!(property_visitor);

// ---------------------------------------------------------------------------
// One-line summaries.

/// Deprecated arguments that always carry their default: left out of the
/// one-line summary (shown with `--verbose`).
const QUIET: &[&str] = &[
    "ticket",
    "out-of-band",
    "capabilities",
    "insist",
    "known-hosts",
    "channel-id",
    "cluster-id",
];

/// Long strings that carry credentials: only their length is summarised.
const SECRET: &[&str] = &["response", "challenge", "new-secret"];

/// How much of a string a summary shows.
const SUMMARY_STR: usize = 64;
/// Tables that render longer than this are summarised by their size.
const SUMMARY_TABLE: usize = 96;

fn summary(
    frame: &Frame,
    progress: Option<(u64, u64)>,
    direction: Option<Direction>,
    out: &mut String,
) {
    match &frame.payload {
        FramePayload::Method(m) => {
            out.push_str(m.name());
            let args = method_args(m);
            for (name, arg) in &args {
                if QUIET.contains(name) {
                    continue;
                }
                summarise_arg(name, *arg, out);
            }
            // connection.close / channel.close: name the failing method.
            let id = |n: &str| {
                args.iter().find_map(|(k, a)| match a {
                    Arg::Short(v) if *k == n => Some(*v),
                    _ => None,
                })
            };
            if let (Some(c), Some(mid)) = (id("class-id"), id("method-id"))
                && let Some(k) = MethodKind::from_ids(c, mid)
            {
                let _ = write!(out, " ({})", k.name());
            }
            if let Some(d) = direction {
                let sender = m.info().sender;
                let ok = match d {
                    Direction::ClientToServer => sender.client(),
                    Direction::ServerToClient => sender.server(),
                };
                if !ok {
                    let _ = write!(out, " [!not a {} method]", d.label());
                }
            }
        }
        FramePayload::Header(h) => summarise_header(h, out),
        FramePayload::Body(b) => {
            let _ = write!(out, "content-body {} bytes", b.len());
            if let Some((seen, total)) = progress {
                let _ = write!(out, " [{seen}/{total}]");
                if seen > total {
                    out.push_str(" [!longer than announced]");
                }
            }
        }
        FramePayload::Heartbeat => out.push_str("heartbeat"),
        _ => out.push_str("(unknown payload)"),
    }
}

fn summarise_header(h: &ContentHeader, out: &mut String) {
    let _ = write!(out, "content-header body-size={}", h.body_size);
    if h.weight != 0 {
        let _ = write!(out, " weight={}", h.weight);
    }
    for (name, arg) in property_values(&h.properties) {
        summarise_arg(name, arg, out);
        if name == "delivery-mode" {
            match arg {
                Arg::Octet(2) => out.push_str(" (persistent)"),
                Arg::Octet(1) => out.push_str(" (transient)"),
                _ => {}
            }
        }
    }
}

fn summarise_arg(name: &str, arg: Arg<'_>, out: &mut String) {
    match arg {
        Arg::Bit(false) => {}
        Arg::Bit(true) => {
            let _ = write!(out, " {name}");
        }
        Arg::Short(v) if name == "reply-code" => {
            let _ = write!(out, " {name}={}", ReplyCode(v));
        }
        Arg::Octet(v) => {
            let _ = write!(out, " {name}={v}");
        }
        Arg::Short(v) => {
            let _ = write!(out, " {name}={v}");
        }
        Arg::Long(v) => {
            let _ = write!(out, " {name}={v}");
        }
        Arg::LongLong(v) => {
            let _ = write!(out, " {name}={v}");
        }
        Arg::ShortStr(s) => {
            let _ = write!(out, " {name}=");
            quote(s.as_bytes(), SUMMARY_STR, out);
        }
        Arg::LongStr(s) if SECRET.contains(&name) => {
            let _ = write!(out, " {name}=<{} bytes>", s.len());
        }
        Arg::LongStr(s) => {
            let _ = write!(out, " {name}=");
            quote(s.as_bytes(), SUMMARY_STR, out);
        }
        Arg::Table(t) if t.is_empty() => {}
        Arg::Table(t) => {
            let _ = write!(out, " {name}=");
            let mark = out.len();
            if compact_table(t, mark + SUMMARY_TABLE, out).is_err() {
                out.truncate(mark);
                let _ = write!(out, "{{{}}}", entries(t.len()));
            }
        }
    }
}

fn entries(n: usize) -> String {
    format!("{n} {}", if n == 1 { "entry" } else { "entries" })
}

/// Compact rendering; gives up (`Err`) once `out` grows past `limit`.
fn compact_table(t: &FieldTable, limit: usize, out: &mut String) -> Result<(), ()> {
    out.push('{');
    for (i, (k, v)) in t.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&k.to_string_lossy());
        out.push_str(": ");
        compact_value(v, limit, out)?;
        if out.len() > limit {
            return Err(());
        }
    }
    out.push('}');
    Ok(())
}

fn compact_array(a: &FieldArray, limit: usize, out: &mut String) -> Result<(), ()> {
    out.push('[');
    for (i, v) in a.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        compact_value(v, limit, out)?;
        if out.len() > limit {
            return Err(());
        }
    }
    out.push(']');
    Ok(())
}

fn compact_value(v: &FieldValue, limit: usize, out: &mut String) -> Result<(), ()> {
    match v {
        FieldValue::Table(t) => compact_table(t, limit, out),
        FieldValue::Array(a) => compact_array(a, limit, out),
        FieldValue::LongString(s) => {
            quote(s.as_bytes(), SUMMARY_STR, out);
            Ok(())
        }
        other => {
            scalar(other, out);
            Ok(())
        }
    }
}

/// A scalar value without its type letter (`true`, `10`, `1.5`,
/// `12345e-2`, `<3 bytes>`, `void`).
pub fn scalar(v: &FieldValue, out: &mut String) {
    let _ = match v {
        FieldValue::Bool(b) => write!(out, "{b}"),
        FieldValue::I8(x) => write!(out, "{x}"),
        FieldValue::U8(x) => write!(out, "{x}"),
        FieldValue::I16(x) => write!(out, "{x}"),
        FieldValue::U16(x) => write!(out, "{x}"),
        FieldValue::I32(x) => write!(out, "{x}"),
        FieldValue::U32(x) => write!(out, "{x}"),
        FieldValue::I64(x) => write!(out, "{x}"),
        FieldValue::F32(x) => write!(out, "{x:?}"),
        FieldValue::F64(x) => write!(out, "{x:?}"),
        FieldValue::Decimal(d) => write!(out, "{}e-{}", d.value, d.scale),
        FieldValue::Timestamp(t) => write!(out, "{t}"),
        FieldValue::Void => write!(out, "void"),
        FieldValue::ByteArray(b) => write!(out, "<{} bytes>", b.len()),
        FieldValue::LongString(s) => {
            quote(s.as_bytes(), usize::MAX, out);
            Ok(())
        }
        FieldValue::Table(t) => write!(out, "{{{}}}", entries(t.len())),
        FieldValue::Array(a) => write!(out, "[{} items]", a.len()),
        _ => write!(out, "{v:?}"),
    };
}

/// Writes `bytes` as a double-quoted, escaped string, cut after `max`
/// characters (with `…`).
pub fn quote(bytes: &[u8], max: usize, out: &mut String) {
    out.push('"');
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            for (i, c) in s.chars().enumerate() {
                if i == max {
                    out.push('…');
                    break;
                }
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if c.is_control() => out.extend(c.escape_default()),
                    c => out.push(c),
                }
            }
        }
        Err(_) => {
            for (i, &b) in bytes.iter().enumerate() {
                if i == max {
                    out.push('…');
                    break;
                }
                match b {
                    b'"' => out.push_str("\\\""),
                    b'\\' => out.push_str("\\\\"),
                    0x20..=0x7e => out.push(b as char),
                    _ => {
                        let _ = write!(out, "\\x{b:02x}");
                    }
                }
            }
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------
// Verbose details.

const INDENT: &str = "          ";

fn details(prefix: &str, frame: &Frame, out: &mut String) {
    match &frame.payload {
        FramePayload::Method(m) => {
            let info = m.info();
            let _ = writeln!(
                out,
                "{prefix}{INDENT}class {} method {} ({}{})",
                info.class_id,
                info.method_id,
                if info.synchronous() {
                    "synchronous"
                } else {
                    "asynchronous"
                },
                if info.has_content {
                    ", carries content"
                } else {
                    ""
                },
            );
            for (name, arg) in method_args(m) {
                detail_arg(prefix, name, arg, out);
            }
        }
        FramePayload::Header(h) => {
            let _ = writeln!(
                out,
                "{prefix}{INDENT}class 60 weight {} body-size {} property-flags 0x{:04x}",
                h.weight,
                h.body_size,
                h.properties.flags()
            );
            for (name, arg) in property_values(&h.properties) {
                detail_arg(prefix, name, arg, out);
            }
        }
        _ => {}
    }
}

fn detail_arg(prefix: &str, name: &str, arg: Arg<'_>, out: &mut String) {
    let _ = write!(out, "{prefix}{INDENT}{name} ({}) = ", arg.domain());
    match arg {
        Arg::Bit(b) => {
            let _ = write!(out, "{b}");
        }
        Arg::Octet(v) => {
            let _ = write!(out, "{v}");
        }
        Arg::Short(v) if name == "reply-code" => {
            let _ = write!(out, "{}", ReplyCode(v));
        }
        Arg::Short(v) => {
            let _ = write!(out, "{v}");
        }
        Arg::Long(v) => {
            let _ = write!(out, "{v}");
        }
        Arg::LongLong(v) => {
            let _ = write!(out, "{v}");
        }
        Arg::ShortStr(s) => quote(s.as_bytes(), usize::MAX, out),
        Arg::LongStr(s) => quote(s.as_bytes(), usize::MAX, out),
        Arg::Table(t) => {
            let _ = write!(out, "table, {}", entries(t.len()));
            out.push('\n');
            table_lines(prefix, t, 1, out);
            return;
        }
    }
    out.push('\n');
}

/// One line per entry, `key: L value`, nested containers indented below
/// their entry. Depth is bounded by the parser's nesting limit.
fn table_lines(prefix: &str, t: &FieldTable, depth: usize, out: &mut String) {
    for (k, v) in t {
        let _ = write!(out, "{prefix}{INDENT}{:width$}", "", width = depth * 2);
        quote(k.as_bytes(), usize::MAX, out);
        out.push_str(": ");
        value_line(prefix, v, depth, out);
    }
}

fn value_line(prefix: &str, v: &FieldValue, depth: usize, out: &mut String) {
    out.push(v.letter() as char);
    out.push(' ');
    match v {
        FieldValue::Table(t) => {
            let _ = writeln!(out, "table, {}", entries(t.len()));
            table_lines(prefix, t, depth + 1, out);
        }
        FieldValue::Array(a) => {
            let _ = writeln!(
                out,
                "array, {} item{}",
                a.len(),
                if a.len() == 1 { "" } else { "s" }
            );
            for (i, item) in a.iter().enumerate() {
                let _ = write!(
                    out,
                    "{prefix}{INDENT}{:width$}[{i}]: ",
                    "",
                    width = (depth + 1) * 2
                );
                value_line(prefix, item, depth + 1, out);
            }
        }
        FieldValue::ByteArray(b) => {
            let _ = write!(out, "<{} bytes> ", b.len());
            quote(b.as_bytes(), usize::MAX, out);
            out.push('\n');
        }
        other => {
            scalar(other, out);
            out.push('\n');
        }
    }
}

/// A classic hex dump: offset within the frame, 16 bytes, ASCII.
pub fn hex_dump(prefix: &str, bytes: &[u8], out: &mut String) {
    for (row, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{prefix}{INDENT}{:04x}  ", row * 16);
        for i in 0..16 {
            match chunk.get(i) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
            if i == 7 {
                out.push(' ');
            }
        }
        out.push_str(" |");
        for &b in chunk {
            out.push(if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            });
        }
        out.push_str("|\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_types::method::{BasicPublish, ConnectionClose, QueueDeclare};

    fn wire(frames: &[Frame]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.extend_from_slice(b"AMQP\x00\x00\x09\x01");
        for f in frames {
            f.encode(&mut b).expect("encodes");
        }
        b.to_vec()
    }

    fn render_all(events: &[Event], o: &Options) -> String {
        let mut s = String::new();
        for e in events {
            e.render(o, &mut s);
        }
        s
    }

    fn sample() -> Vec<u8> {
        let mut args = FieldTable::new();
        args.insert("x-max-priority", 10u8);
        let mut headers = FieldTable::new();
        headers.insert("colour", "blue");
        headers.insert("n", 3i32);
        wire(&[
            Frame::method(
                1,
                QueueDeclare {
                    queue: ShortString::from_static("orders"),
                    durable: true,
                    arguments: args,
                    ..Default::default()
                },
            ),
            Frame::method(
                1,
                BasicPublish {
                    exchange: ShortString::from_static(""),
                    routing_key: ShortString::from_static("orders"),
                    mandatory: true,
                    ..Default::default()
                },
            ),
            Frame::header(
                1,
                5,
                BasicProperties {
                    content_type: Some(ShortString::from_static("text/plain")),
                    delivery_mode: Some(2),
                    headers: Some(headers),
                    ..Default::default()
                },
            ),
            Frame::body(1, Bytes::from_static(b"hel")),
            Frame::body(1, Bytes::from_static(b"lo")),
            Frame::method(
                0,
                ConnectionClose {
                    reply_code: 404,
                    reply_text: ShortString::from_static("NOT_FOUND - no queue"),
                    class_id: 50,
                    method_id: 10,
                },
            ),
            Frame::heartbeat(),
        ])
    }

    #[test]
    fn summary_lines() {
        let o = Options::default();
        let text = render_all(&decode_all(&sample(), &o), &o);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8, "{text}");
        assert_eq!(lines[0], "       0  -        protocol-header AMQP 0-9-1");
        assert_eq!(
            lines[1],
            "       8  ch 1     queue.declare queue=\"orders\" durable arguments={x-max-priority: 10}"
        );
        assert!(
            lines[2].ends_with("basic.publish exchange=\"\" routing-key=\"orders\" mandatory"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].ends_with(
                "content-header body-size=5 content-type=\"text/plain\" \
                 headers={colour: \"blue\", n: 3} delivery-mode=2 (persistent)"
            ),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].ends_with("content-body 3 bytes [3/5]"),
            "{}",
            lines[4]
        );
        assert!(
            lines[5].ends_with("content-body 2 bytes [5/5]"),
            "{}",
            lines[5]
        );
        assert!(
            lines[6].ends_with(
                "connection.close reply-code=404 NOT_FOUND reply-text=\"NOT_FOUND - no queue\" \
                 class-id=50 method-id=10 (queue.declare)"
            ),
            "{}",
            lines[6]
        );
        assert!(lines[7].ends_with("ch 0     heartbeat"), "{}", lines[7]);
    }

    #[test]
    fn chunking_does_not_change_the_output() {
        let o = Options {
            verbose: true,
            ..Options::default()
        };
        let data = sample();
        let whole = render_all(&decode_all(&data, &o), &o);
        for size in [1, 2, 3, 7, 13, 64] {
            let mut d = Decoder::new(o.clone());
            let mut events = Vec::new();
            for c in data.chunks(size) {
                events.extend(d.push(c));
            }
            events.extend(d.finish());
            assert_eq!(render_all(&events, &o), whole, "chunk size {size}");
        }
    }

    #[test]
    fn verbose_shows_types_and_hex() {
        let o = Options {
            verbose: true,
            ..Options::default()
        };
        let text = render_all(&decode_all(&sample(), &o), &o);
        assert!(text.contains("ticket (short) = 0\n"), "{text}");
        assert!(text.contains("\"x-max-priority\": B 10\n"), "{text}");
        assert!(text.contains("\"colour\": S \"blue\"\n"), "{text}");
        assert!(text.contains("\"n\": I 3\n"), "{text}");
        assert!(text.contains("0000  41 4d 51 50 00 00 09 01"), "{text}");
        assert!(
            text.contains("68  65 6c ce                 |.......hel.|"),
            "{text}"
        );
    }

    #[test]
    fn errors_carry_stream_offsets() {
        let mut data = sample();
        // Break the end octet of the second frame (basic.publish).
        let first =
            8 + 7 + u32::from_be_bytes([data[11], data[12], data[13], data[14]]) as usize + 1;
        let second_len = u32::from_be_bytes([
            data[first + 3],
            data[first + 4],
            data[first + 5],
            data[first + 6],
        ]) as usize;
        let end = first + 7 + second_len;
        data[end] = 0;
        let o = Options::default();
        let events = decode_all(&data, &o);
        let Some(Event::Error {
            frame_offset,
            error,
        }) = events.last()
        else {
            panic!("{events:?}");
        };
        assert_eq!(*frame_offset, first as u64);
        assert_eq!(error.offset(), Some(end as u64));
        assert_eq!(error.code(), ReplyCode::FRAME_ERROR);
        assert_eq!(events.len(), 3);
        let text = render_all(&events, &o);
        assert!(
            text.contains(&format!(
                "error: reply-code 501 FRAME_ERROR (connection scope), at offset {end}, channel 1"
            )),
            "{text}"
        );
    }

    #[test]
    fn truncation_is_reported() {
        let data = sample();
        let o = Options::default();
        let events = decode_all(&data[..data.len() - 3], &o);
        assert_eq!(
            events.last(),
            Some(&Event::Truncated {
                offset: (data.len() - 8) as u64,
                present: 5,
                needed: 3
            })
        );
        let events = decode_all(b"AMQ", &o);
        assert!(matches!(
            events[..],
            [Event::Truncated {
                offset: 0,
                present: 3,
                needed: 5
            }]
        ));
        assert!(decode_all(b"", &o).is_empty());
    }

    #[test]
    fn garbage_first_byte_is_an_unknown_frame_type() {
        let o = Options::default();
        let events = decode_all(b"GET / HTTP/1.1\r\n\r\n", &o);
        let [Event::Error { error, .. }] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!(error.code(), ReplyCode::FRAME_ERROR);
        assert_eq!(error.offset(), Some(0));
    }

    #[test]
    fn frame_max_is_enforced_when_asked() {
        let body = Frame::body(1, Bytes::from(vec![0u8; 5000]));
        let data = wire(&[body]);
        assert!(
            decode_all(&data, &Options::default())
                .iter()
                .all(|e| !e.is_failure())
        );
        let strict = Options {
            frame_max: 4096,
            ..Options::default()
        };
        let events = decode_all(&data, &strict);
        let Some(Event::Error { error, .. }) = events.last() else {
            panic!()
        };
        assert_eq!(error.code(), ReplyCode::FRAME_ERROR);
        assert_eq!(error.offset(), Some(8 + 3));
    }

    #[test]
    fn wrong_sender_is_flagged() {
        let o = Options {
            direction: Some(Direction::ClientToServer),
            ..Options::default()
        };
        let data = wire(&[Frame::method(
            0,
            amqp_types::method::ConnectionOpenOk::default(),
        )]);
        let text = render_all(&decode_all(&data, &o), &o);
        assert!(text.contains("[!not a c2s method]"), "{text}");
    }

    #[test]
    fn quoting_escapes() {
        let mut s = String::new();
        quote(b"a\"b\n", 10, &mut s);
        quote(b"\xff\x00z", 10, &mut s);
        quote(b"abcdef", 3, &mut s);
        quote("it's é\u{1}".as_bytes(), 10, &mut s);
        assert_eq!(s, r#""a\"b\n""\xff\x00z""abc…""it's é\u{1}""#);
    }
}
