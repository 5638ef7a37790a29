//! Corpus replay: for each capture of the wire corpus, run one side's role,
//! feed it the other side's recorded bytes (record by record, then in
//! random chunk sizes), issue the local side's recorded frames as commands,
//! and compare what the machine transmits with the recording.
//!
//! The corpus directory comes from `AMQP_WIRE_CORPUS` (default: the copy in
//! this repository, `tests-data/corpus/wire`); a variable that is set but points nowhere
//! fails. Replies the machine produces itself (closes for protocol faults)
//! are compared by reply code and failing method (the reply text is ours);
//! docs/DESIGN.md's deliberate deviations from RabbitMQ 3.10 are accepted where
//! they apply and printed.

mod common;

use amqp_codec::types::{LongString, Method, ReplyCode};
use amqp_codec::wire::{Frame, FrameLimits, FramePayload, Parsed, parse_frame};
use amqp_codec::{
    Answer, ClientConfig, Connection, Credentials, Decision, Event, Limits, ServerConfig,
};
use bytes::Bytes;
use common::Rng;
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone)]
struct Rec {
    c2s: bool,
    bytes: Bytes,
    frame: Option<Frame>,
    bad: bool,
}

#[path = "../../tests-support/corpus.rs"]
mod corpus;
use corpus::{unhex as hex, wire_dir as corpus_dir};

fn load(dir: &Path) -> Vec<Rec> {
    let text = std::fs::read_to_string(dir.join("frames.jsonl")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let bytes = Bytes::from(hex(v["hex"].as_str().unwrap()));
            let bad = v.get("malformed").is_some()
                || v.get("truncated").is_some()
                || v["type"].as_str() == Some("unparsed");
            let frame = if v["type"].is_u64() && !bad {
                match parse_frame(&bytes, FrameLimits::UNLIMITED) {
                    Ok(Parsed::Complete { frame, .. }) => Some(frame),
                    _ => None,
                }
            } else {
                None
            };
            Rec {
                c2s: v["dir"] == "c2s",
                bytes,
                frame,
                bad,
            }
        })
        .collect()
}

fn method_of(r: &Rec) -> Option<&Method> {
    match r.frame.as_ref().map(|f| &f.payload) {
        Some(FramePayload::Method(m)) => Some(m),
        _ => None,
    }
}

fn close_code(b: &[u8]) -> Option<(u16, u16, u16, String)> {
    let bytes = Bytes::copy_from_slice(b);
    match parse_frame(&bytes, FrameLimits::UNLIMITED) {
        Ok(Parsed::Complete {
            frame:
                Frame {
                    payload: FramePayload::Method(m),
                    ..
                },
            ..
        }) => match m {
            Method::ConnectionClose(c) => Some((
                c.reply_code,
                c.class_id,
                c.method_id,
                c.reply_text.to_string(),
            )),
            Method::ChannelClose(c) => Some((
                c.reply_code,
                c.class_id,
                c.method_id,
                c.reply_text.to_string(),
            )),
            _ => None,
        },
        _ => None,
    }
}

fn frame_len(b: &[u8]) -> usize {
    if b.len() >= 7 && b[0] != b'A' {
        8 + u32::from_be_bytes([b[3], b[4], b[5], b[6]]) as usize
    } else {
        8.min(b.len())
    }
}

enum Outcome {
    Replayed(Vec<String>),
    Skipped(String),
}

struct Replay<'a> {
    recs: &'a [Rec],
    server_role: bool,
    conn: Connection,
    produced: Vec<u8>,
    matched: usize,
    pending_in: Vec<u8>,
    rng: Rng,
    random_chunks: bool,
    notes: Vec<String>,
    unmatched: Vec<Vec<u8>>,
    /// Local-side record indexes already produced by a content command.
    consumed: Vec<bool>,
    raw_client: bool,
}

impl Replay<'_> {
    fn local(&self, r: &Rec) -> bool {
        r.c2s != self.server_role
    }

    fn feed(&mut self) {
        let data = Bytes::from(std::mem::take(&mut self.pending_in));
        let mut off = 0;
        while off < data.len() {
            let n = if self.random_chunks {
                self.rng.range(1, 700) as usize
            } else {
                data.len()
            };
            let end = data.len().min(off + n);
            self.conn.handle_input(data.slice(off..end));
            off = end;
        }
    }

    fn drain(&mut self) {
        while let Some(b) = self.conn.poll_transmit() {
            self.produced.extend_from_slice(&b);
        }
    }

    fn answer_decisions(&mut self, next: Option<&Rec>) -> Result<(), String> {
        while let Some(e) = self.conn.poll_event() {
            if let Event::Decision { id, decision } = e {
                let nm = next.and_then(method_of);
                let answer = match (decision, nm) {
                    (_, Some(Method::ConnectionClose(c))) => {
                        Answer::refuse(ReplyCode(c.reply_code), c.reply_text.to_string())
                    }
                    (Decision::Authenticate { .. }, Some(Method::ConnectionSecure(s))) => {
                        Answer::Challenge(s.challenge.bytes().clone())
                    }
                    (Decision::Challenge { .. }, Some(Method::ConnectionSecureOk(s))) => {
                        Answer::Response(s.response.bytes().clone())
                    }
                    (Decision::Challenge { .. }, _) => {
                        return Err("challenge without secure-ok".into());
                    }
                    _ => Answer::Accept,
                };
                self.conn.decide(id, answer).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Issues local record `i` as a command.
    fn issue(&mut self, i: usize) -> Result<(), String> {
        let r = &self.recs[i];
        let Some(f) = r.frame.clone() else {
            return Err("local side sends a frame the role cannot express".into());
        };
        let ch = f.channel;
        let res = match f.payload {
            FramePayload::Heartbeat => self.conn.send_heartbeat().map_err(|e| e.to_string()),
            FramePayload::Method(m) if m.has_content() => {
                // Gather the header and body records of the local stream.
                let mut idx: Vec<usize> = (i + 1..self.recs.len())
                    .filter(|&j| self.local(&self.recs[j]))
                    .collect();
                idx.retain(|&j| self.recs[j].frame.as_ref().is_some_and(|f| f.channel == ch));
                let Some(&h) = idx.first() else {
                    return Err("content method without header".into());
                };
                let Some(FramePayload::Header(hdr)) =
                    self.recs[h].frame.as_ref().map(|f| f.payload.clone())
                else {
                    return Err("content method without header".into());
                };
                self.consumed[h] = true;
                let mut body = Vec::new();
                for &j in &idx[1..] {
                    if body.len() as u64 >= hdr.body_size {
                        break;
                    }
                    let Some(FramePayload::Body(b)) =
                        self.recs[j].frame.as_ref().map(|f| f.payload.clone())
                    else {
                        return Err("content without all its body frames".into());
                    };
                    body.extend_from_slice(&b);
                    self.consumed[j] = true;
                }
                let whole = idx[1..].iter().all(|&j| {
                    self.consumed[j]
                        || !matches!(
                            self.recs[j].frame.as_ref().map(|f| &f.payload),
                            Some(FramePayload::Body(_))
                        )
                        || body.len() as u64 >= hdr.body_size
                });
                if body.len() as u64 != hdr.body_size || !whole {
                    return Err(format!(
                        "record {i}: content whose body frames do not add up to the header's body-size"
                    ));
                }
                self.conn
                    .send_content(ch, m, &hdr.properties, body.into())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            FramePayload::Method(m) => match m {
                Method::ChannelOpen(_) => {
                    self.conn.open_channel_with(ch).map_err(|e| e.to_string())
                }
                Method::ChannelClose(c) if c.class_id != 0 => self
                    .conn
                    .refuse(ch, ReplyCode(c.reply_code), &c.reply_text.to_string())
                    .map_err(|e| e.to_string()),
                Method::ChannelClose(c) => self
                    .conn
                    .close_channel(ch, ReplyCode(c.reply_code), &c.reply_text.to_string())
                    .map_err(|e| e.to_string()),
                Method::ConnectionClose(c) if c.class_id != 0 => {
                    // Refuse on the channel of the peer's method it names.
                    let on = (0..i)
                        .rev()
                        .filter(|&j| !self.local(&self.recs[j]))
                        .find_map(|j| {
                            let f = self.recs[j].frame.as_ref()?;
                            let m = method_of(&self.recs[j])?;
                            ((m.class_id(), m.method_id()) == (c.class_id, c.method_id))
                                .then_some(f.channel)
                        })
                        .unwrap_or(0);
                    self.conn
                        .refuse(on, ReplyCode(c.reply_code), &c.reply_text.to_string())
                        .map_err(|e| e.to_string())
                }
                Method::ConnectionClose(c) => self
                    .conn
                    .close(ReplyCode(c.reply_code), &c.reply_text.to_string())
                    .map_err(|e| e.to_string()),
                m => self.conn.send_method(ch, m).map_err(|e| e.to_string()),
            },
            _ => Err("header/body frame outside content".into()),
        };
        res.map_err(|e| format!("command for record {i} refused: {e}"))
    }

    /// Splits what was transmitted into frames not yet matched.
    fn split_produced(&mut self) {
        while self.matched < self.produced.len() {
            let len =
                frame_len(&self.produced[self.matched..]).min(self.produced.len() - self.matched);
            self.unmatched
                .push(self.produced[self.matched..self.matched + len].to_vec());
            self.matched += len;
        }
    }

    /// Finds record `i` among the transmitted frames: it must be the oldest
    /// unmatched frame on its channel (channels are independent, so frames
    /// of different channels may come in another order).
    fn find(&mut self, i: usize) -> Result<bool, String> {
        self.split_produced();
        let want = &self.recs[i].bytes;
        let chan = |b: &[u8]| {
            if b.len() >= 3 && b[0] != b'A' {
                u16::from_be_bytes([b[1], b[2]])
            } else {
                u16::MAX
            }
        };
        let Some(pos) = self.unmatched.iter().position(|g| chan(g) == chan(want)) else {
            return Ok(false);
        };
        let got = self.unmatched[pos].clone();
        if got == want[..] {
            self.unmatched.remove(pos);
            return Ok(true);
        }
        // The same frame, re-encoded canonically by the frame layer (e.g. a
        // boolean octet of 255 in a table goes out as 1).
        let parse = |b: &[u8]| match parse_frame(&Bytes::copy_from_slice(b), FrameLimits::UNLIMITED)
        {
            Ok(Parsed::Complete { frame, .. }) => Some(frame),
            _ => None,
        };
        if parse(&got).is_some() && parse(&got) == parse(want) {
            self.notes.push(format!(
                "record {i} re-encoded canonically (same decoded frame)"
            ));
            self.unmatched.remove(pos);
            return Ok(true);
        }
        // A close the machine produced itself: compare code and method.
        if let (true, Some(w), Some(g)) = (!self.consumed[i], close_code(want), close_code(&got)) {
            let same = (w.0, w.1, w.2) == (g.0, g.1, g.2);
            let deviation = (w.0 == 541 && g.0 == 501)
                || (w.0 == 505
                    && g.0 == 501
                    && g.3.contains("longer than the content header's body-size"));
            if same || deviation {
                if deviation {
                    self.notes.push(format!(
                        "deviation: RabbitMQ {} / we {} ({})",
                        w.0, g.0, g.3
                    ));
                }
                self.unmatched.remove(pos);
                return Ok(true);
            }
            return Err(format!("record {i}: close {g:?}, recorded {w:?}"));
        }
        Err(format!(
            "record {i}: transmitted {:02x?} recorded {:02x?}",
            &got[..got.len().min(48)],
            &want[..want.len().min(48)]
        ))
    }

    fn run(mut self) -> Result<Vec<String>, String> {
        let n = self.recs.len();
        for i in 0..n {
            let r = &self.recs[i];
            if !self.local(r) {
                self.pending_in.extend_from_slice(&r.bytes);
                continue;
            }
            if r.bad {
                if self.server_role {
                    return Err(format!(
                        "record {i}: the server side sends a malformed frame"
                    ));
                }
                return Err("skip: the recorded client sends malformed frames (covered by the server-role replay)".into());
            }
            self.feed();
            self.answer_decisions(Some(r))
                .map_err(|e| format!("record {i}: {e}"))?;
            self.drain();
            if self.find(i)? {
                continue;
            }
            if self.conn.is_closed() {
                return Err(format!(
                    "record {i}: machine closed before the recording did"
                ));
            }
            if let Err(e) = self.issue(i) {
                if self.raw_client && !self.server_role {
                    return Err(format!(
                        "skip: the recorded raw client does what the client role refuses ({e})"
                    ));
                }
                return Err(e);
            }
            self.drain();
            let found = match self.find(i) {
                Err(e) if self.raw_client && !self.server_role => {
                    return Err(format!(
                        "skip: the recorded raw client sends what the client role would not ({e})"
                    ));
                }
                r => r?,
            };
            if !found {
                return Err(format!("record {i}: the command transmitted nothing"));
            }
        }
        self.feed();
        self.answer_decisions(None)?;
        self.drain();
        // Output beyond the recording: only a close or close-ok where the
        // recorded peer dropped the socket instead.
        self.split_produced();
        for extra in std::mem::take(&mut self.unmatched) {
            let extra = Bytes::from(extra);
            match parse_frame(&extra, FrameLimits::UNLIMITED) {
                Ok(Parsed::Complete {
                    frame:
                        Frame {
                            payload: FramePayload::Method(m),
                            ..
                        },
                    ..
                }) if matches!(
                    m,
                    Method::ConnectionClose(_)
                        | Method::ConnectionCloseOk(_)
                        | Method::ChannelCloseOk(_)
                ) =>
                {
                    self.notes
                        .push(format!("extra {} where the recording ends", m.name()));
                }
                _ => {
                    return Err(format!(
                        "extra output beyond the recording: {:02x?}",
                        &extra[..extra.len().min(32)]
                    ));
                }
            }
        }
        Ok(self.notes)
    }
}

fn replay(
    name: &str,
    recs: &[Rec],
    meta: &Value,
    server_role: bool,
    random_chunks: bool,
) -> Outcome {
    let now = Instant::now();
    let local: Vec<&Rec> = recs.iter().filter(|r| r.c2s != server_role).collect();
    let find = |f: &dyn Fn(&Method) -> bool| {
        local
            .iter()
            .find_map(|r| method_of(r).filter(|m| f(m)).cloned())
    };
    let limits = Limits {
        handshake_timeout: std::time::Duration::from_secs(3600),
        ..Default::default()
    };
    let conn = if server_role {
        let mut cfg = ServerConfig {
            limits,
            ..Default::default()
        };
        if let Some(Method::ConnectionStart(s)) = find(&|m| matches!(m, Method::ConnectionStart(_)))
        {
            cfg.properties = s.server_properties;
            cfg.mechanisms = s.mechanisms;
            cfg.locales = s.locales;
        }
        if let Some(Method::ConnectionTune(t)) = find(&|m| matches!(m, Method::ConnectionTune(_))) {
            cfg.channel_max = t.channel_max;
            cfg.frame_max = t.frame_max;
            cfg.heartbeat = t.heartbeat;
        }
        if let Some(Method::ConnectionOpenOk(o)) =
            find(&|m| matches!(m, Method::ConnectionOpenOk(_)))
        {
            cfg.known_hosts = o.known_hosts;
        }
        Connection::server(cfg, now)
    } else {
        let mut cfg = ClientConfig {
            limits,
            ..Default::default()
        };
        if let Some(Method::ConnectionStartOk(s)) =
            find(&|m| matches!(m, Method::ConnectionStartOk(_)))
        {
            cfg.properties = s.client_properties;
            cfg.credentials = Credentials::Other {
                mechanism: s.mechanism,
                response: s.response.bytes().clone(),
            };
            cfg.locale = s.locale;
        }
        if let Some(Method::ConnectionTuneOk(t)) =
            find(&|m| matches!(m, Method::ConnectionTuneOk(_)))
        {
            cfg.channel_max = t.channel_max;
            cfg.frame_max = t.frame_max;
            cfg.heartbeat = Some(t.heartbeat);
        }
        if let Some(Method::ConnectionOpen(o)) = find(&|m| matches!(m, Method::ConnectionOpen(_))) {
            cfg.virtual_host = o.virtual_host;
            cfg.open_capabilities = o.capabilities;
            cfg.insist = o.insist;
        }
        Connection::client(cfg, now)
    };
    // The recording proxy interleaves the two directions by arrival, which
    // can put a peer's close-ok before the close it answers; move such a
    // close-ok to just after the local close it answers.
    let mut ordered: Vec<Rec> = Vec::with_capacity(recs.len());
    let mut deferred: Vec<Rec> = vec![];
    let mut outstanding: std::collections::HashSet<u16> = Default::default();
    let mut reordered = 0;
    for r in recs {
        let local = r.c2s != server_role;
        let ch = r.frame.as_ref().map_or(0, |f| f.channel);
        match method_of(r) {
            Some(Method::ChannelClose(_) | Method::ConnectionClose(_)) if local => {
                outstanding.insert(ch);
                ordered.push(r.clone());
                if let Some(pos) = deferred
                    .iter()
                    .position(|d| d.frame.as_ref().map_or(0, |f| f.channel) == ch)
                {
                    ordered.push(deferred.remove(pos));
                    outstanding.remove(&ch);
                }
                continue;
            }
            Some(Method::ChannelCloseOk(_) | Method::ConnectionCloseOk(_))
                if !local && !outstanding.remove(&ch) =>
            {
                reordered += 1;
                deferred.push(r.clone());
                continue;
            }
            _ => {}
        }
        ordered.push(r.clone());
    }
    ordered.extend(deferred);
    let recs = &ordered[..];
    let seed = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    let _ = LongString::from("");
    let raw = meta["client"].as_str().unwrap_or("").starts_with("raw");
    let r = Replay {
        recs,
        server_role,
        conn,
        produced: vec![],
        matched: 0,
        pending_in: vec![],
        rng: Rng(seed),
        random_chunks,
        notes: vec![],
        unmatched: vec![],
        consumed: vec![false; recs.len()],
        raw_client: meta["client"].as_str().unwrap_or("").starts_with("raw"),
    }
    .run();
    match r {
        Ok(mut notes) => {
            if reordered > 0 {
                notes.push(format!("{reordered} close-ok record(s) moved after the close they answer (proxy arrival order)"));
            }
            Outcome::Replayed(notes)
        }
        Err(e) if e.starts_with("skip: ") => Outcome::Skipped(e[6..].to_owned()),
        // The raw client is deliberately broken; the client role will not
        // reproduce its faults (the server-role replay checks them).
        Err(e) if raw && !server_role => Outcome::Skipped(format!(
            "the recorded raw client does what the client role would not: {e}"
        )),
        Err(e) => panic!(
            "{name} ({} role{}): {e}",
            if server_role { "server" } else { "client" },
            if random_chunks { ", random chunks" } else { "" }
        ),
    }
}

#[test]
fn corpus_replay() {
    let dir = corpus_dir();
    if std::env::var_os("AMQP_WIRE_CORPUS").is_none() && !dir.is_dir() {
        panic!("wire corpus not found at {}", dir.display());
    }
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("frames.jsonl").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no captures in {}", dir.display());
    let (mut replayed, mut skipped) = (0, vec![]);
    for name in &names {
        let recs = load(&dir.join(name));
        let meta: Value = std::fs::read_to_string(dir.join(name).join("meta.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        for server_role in [true, false] {
            let mut outcome = None;
            for random in [false, true] {
                outcome = Some(replay(name, &recs, &meta, server_role, random));
            }
            let role = if server_role { "server" } else { "client" };
            match outcome.unwrap() {
                Outcome::Replayed(notes) => {
                    replayed += 1;
                    for n in notes.iter().collect::<std::collections::BTreeSet<_>>() {
                        println!("  {name} ({role} role): {n}");
                    }
                }
                Outcome::Skipped(why) => skipped.push(format!("{name} ({role} role): {why}")),
            }
        }
    }
    println!(
        "corpus replay: {replayed} of {} capture-roles replayed ({} captures, both roles, recorded and random chunking), {} skipped:",
        names.len() * 2,
        names.len(),
        skipped.len()
    );
    for s in &skipped {
        println!("  skipped {s}");
    }
    // Every capture replays in the server role.
    assert!(skipped.iter().all(|s| s.contains("(client role)")));
}
