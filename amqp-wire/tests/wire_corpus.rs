//! Conformance against recorded RabbitMQ conversations.
//!
//! Walks every capture of the wire corpus (directory from `AMQP_WIRE_CORPUS`,
//! default `tests-data/corpus/wire` in this repository; a variable that is
//! set but names no directory is a failure). For every record of both
//! directions it:
//!
//! * builds the expected value from the corpus's independent decoding
//!   (`decoded`: every argument, property and typed table value) and
//!   compares it with what `parse_frame` returns;
//! * re-encodes the parsed frame and compares it byte for byte with the
//!   recording (records in non-canonical form, such as a boolean octet of
//!   255, are re-encoded canonically and listed);
//! * checks that every proper prefix of every valid frame is "incomplete";
//! * checks that records malformed at the frame level get the reply code
//!   docs/DESIGN.md gives them, and truncated records are "incomplete".
//!
//! It also walks each stream from its first byte with `parse_frame` alone and
//! checks that the frames it finds tile the stream as the records do.

use amqp_types::method;
use amqp_types::{
    BasicProperties, Decimal, FieldArray, FieldTable, FieldValue, LongString, Method, ReplyCode,
    ShortString,
};
use amqp_wire::{
    ContentHeader, Frame, FrameLimits, FramePayload, Parsed, ProtocolHeader, parse_frame,
    parse_protocol_header,
};
use bytes::{Bytes, BytesMut};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[path = "../../tests-support/corpus.rs"]
mod corpus;
use corpus::{unhex, wire_dir as corpus_dir};

/// Python's `json` writes NaN and infinities as bare words; make them strings
/// so that serde_json can read the line.
fn sanitize_json(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_str = false;
    let mut escaped = false;
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let mut matched = false;
        for word in ["-Infinity", "Infinity", "NaN"] {
            if rest.starts_with(word) {
                out.push('"');
                out.push_str(word);
                out.push('"');
                rest = &rest[word.len()..];
                matched = true;
                break;
            }
        }
        if matched {
            continue;
        }
        if c == '"' {
            in_str = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

// ---- the expected values, built from the corpus's JSON ----------------------

fn json_bytes(v: &Value, what: &str) -> Vec<u8> {
    match v {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Object(o) if o.contains_key("hex") => unhex(o["hex"].as_str().expect("hex string")),
        other => panic!("{what}: expected a string, got {other}"),
    }
}

fn json_float(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("float"),
        Value::String(s) if s == "NaN" => f64::NAN,
        Value::String(s) if s == "Infinity" => f64::INFINITY,
        Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        other => panic!("not a float: {other}"),
    }
}

fn json_int(v: &Value) -> i128 {
    if let Some(u) = v.as_u64() {
        u as i128
    } else {
        v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}")) as i128
    }
}

fn field_value(v: &Value) -> FieldValue {
    let letter = v["type"].as_str().expect("type letter");
    let val = &v["value"];
    let int = || json_int(val);
    match letter {
        "t" => FieldValue::Bool(val.as_bool().expect("bool")),
        "b" => FieldValue::I8(int() as i8),
        "B" => FieldValue::U8(int() as u8),
        "s" => FieldValue::I16(int() as i16),
        "u" => FieldValue::U16(int() as u16),
        "I" => FieldValue::I32(int() as i32),
        "i" => FieldValue::U32(int() as u32),
        "l" => FieldValue::I64(int() as i64),
        "T" => FieldValue::Timestamp(int() as u64),
        "f" => FieldValue::F32(json_float(val) as f32),
        "d" => FieldValue::F64(json_float(val)),
        "D" => FieldValue::Decimal(Decimal {
            scale: json_int(&val["scale"]) as u8,
            value: json_int(&val["value"]) as u32,
        }),
        "S" | "x" => {
            let bytes = if v.get("hex").is_some() {
                unhex(v["hex"].as_str().unwrap())
            } else {
                json_bytes(val, letter)
            };
            let s = LongString::from(bytes);
            if letter == "S" {
                FieldValue::LongString(s)
            } else {
                FieldValue::ByteArray(s)
            }
        }
        "A" => FieldValue::Array(
            val.as_array()
                .expect("array")
                .iter()
                .map(field_value)
                .collect::<FieldArray>(),
        ),
        "F" => FieldValue::Table(field_table(val)),
        "V" => FieldValue::Void,
        other => panic!("unknown letter {other} in corpus"),
    }
}

fn field_table(v: &Value) -> FieldTable {
    v.as_object()
        .expect("table object")
        .iter()
        .map(|(k, v)| (ShortString::try_from(k.as_str()).unwrap(), field_value(v)))
        .collect()
}

/// A value of one argument type, from its corpus JSON.
trait FromJson: Sized {
    fn from_json(v: &Value, name: &str) -> Self;
}
impl FromJson for u8 {
    fn from_json(v: &Value, n: &str) -> Self {
        u8::try_from(v.as_u64().unwrap_or_else(|| panic!("{n}: {v}"))).unwrap()
    }
}
impl FromJson for u16 {
    fn from_json(v: &Value, n: &str) -> Self {
        u16::try_from(v.as_u64().unwrap_or_else(|| panic!("{n}: {v}"))).unwrap()
    }
}
impl FromJson for u32 {
    fn from_json(v: &Value, n: &str) -> Self {
        u32::try_from(v.as_u64().unwrap_or_else(|| panic!("{n}: {v}"))).unwrap()
    }
}
impl FromJson for u64 {
    fn from_json(v: &Value, n: &str) -> Self {
        v.as_u64().unwrap_or_else(|| panic!("{n}: {v}"))
    }
}
impl FromJson for bool {
    fn from_json(v: &Value, n: &str) -> Self {
        v.as_bool().unwrap_or_else(|| panic!("{n}: {v}"))
    }
}
impl FromJson for ShortString {
    fn from_json(v: &Value, n: &str) -> Self {
        ShortString::from_bytes(&json_bytes(v, n)).unwrap()
    }
}
impl FromJson for LongString {
    fn from_json(v: &Value, n: &str) -> Self {
        LongString::from(json_bytes(v, n))
    }
}
impl FromJson for FieldTable {
    fn from_json(v: &Value, _: &str) -> Self {
        field_table(v)
    }
}

/// The expected method, generated from the same protocol table: every
/// argument is looked up by its spec name in the corpus's `args`.
macro_rules! method_from_json {
    ($(
        $Name:ident ( $cid:literal, $mid:literal, $($head:tt)* )
        { $( $f:ident : $ty:ident = $fname:literal ),* $(,)? }
    )*) => {
        fn method_from_json(class_id: u16, method_id: u16, args: &Value) -> Option<Method> {
            Some(match (class_id, method_id) {
                $(
                    ($cid, $mid) => {
                        let fields: &[&str] = &[$($fname),*];
                        let obj = args.as_object().expect("args object");
                        assert_eq!(obj.len(), fields.len(), "{}: argument count", stringify!($Name));
                        Method::$Name(method::$Name {
                            $( $f: <$ty as FromJson>::from_json(
                                obj.get($fname).unwrap_or_else(|| panic!("{} lacks {}", stringify!($Name), $fname)),
                                $fname,
                            ), )*
                        })
                    }
                )*
                _ => return None,
            })
        }
    };
}
amqp_types::for_each_method!(method_from_json);

macro_rules! properties_from_json {
    ($( $f:ident : $ty:ident = $name:literal @ $bit:literal ),* $(,)?) => {
        fn properties_from_json(v: &Value) -> BasicProperties {
            let obj = v.as_object().expect("properties object");
            let known: &[&str] = &[$($name),*];
            for k in obj.keys() {
                assert!(known.contains(&k.as_str()), "unknown property {k}");
            }
            BasicProperties {
                $( $f: obj.get($name).map(|x| <$ty as FromJson>::from_json(x, $name)), )*
            }
        }
    };
}
amqp_types::for_each_basic_property!(properties_from_json);

fn expected_frame(rec: &Value) -> Frame {
    let channel = rec["channel"].as_u64().expect("channel") as u16;
    let d = &rec["decoded"];
    let payload = match rec["type"].as_u64().expect("frame type") {
        1 => {
            let (cid, mid) = (
                d["class_id"].as_u64().unwrap() as u16,
                d["method_id"].as_u64().unwrap() as u16,
            );
            let m = method_from_json(cid, mid, &d["args"])
                .unwrap_or_else(|| panic!("corpus method {cid}/{mid} not in the table"));
            assert_eq!(d["name"].as_str(), Some(m.name()), "method name");
            FramePayload::Method(m)
        }
        2 => {
            assert_eq!(d["class_id"].as_u64(), Some(60));
            let props = properties_from_json(&d["properties"]);
            assert_eq!(
                d["property_flags"].as_u64(),
                Some(props.flags() as u64),
                "property flags"
            );
            FramePayload::Header(Box::new(ContentHeader {
                weight: d["weight"].as_u64().unwrap() as u16,
                body_size: d["body_size"].as_u64().unwrap(),
                properties: props,
            }))
        }
        3 => {
            let hex = unhex(rec["hex"].as_str().unwrap());
            let body = Bytes::copy_from_slice(&hex[7..hex.len() - 1]);
            assert_eq!(d["size"].as_u64(), Some(body.len() as u64), "body size");
            FramePayload::Body(body)
        }
        8 => FramePayload::Heartbeat,
        t => panic!("unexpected frame type {t} in a valid record"),
    };
    Frame { channel, payload }
}

// ---- the walk ------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    captures: usize,
    records: usize,
    frames_checked: usize,
    headers_checked: usize,
    prefixes_checked: usize,
    canonicalized: Vec<String>,
    malformed: Vec<String>,
    skipped: Vec<String>,
    failures: Vec<String>,
}

/// The reply code docs/DESIGN.md gives a record malformed at the frame level,
/// judged from the corpus's own description of the fault.
fn expected_code(reason: &str) -> Option<ReplyCode> {
    let r = reason.to_ascii_lowercase();
    if r.contains("end octet")
        || r.contains("unknown frame type")
        || r.contains("field type")
        || r.contains("type letter")
    {
        Some(ReplyCode::FRAME_ERROR)
    } else if r.contains("class/method") || r.contains("method id") {
        Some(ReplyCode::COMMAND_INVALID)
    } else {
        None
    }
}

/// Compares a canonical re-encoding with non-canonical input: every byte
/// that differs must be a boolean octet above 1 written as 1, or a bit
/// octet whose unused high bits were set.
fn only_canonical_differences(original: &[u8], ours: &[u8]) -> bool {
    original.len() == ours.len()
        && original
            .iter()
            .zip(ours)
            .all(|(&o, &c)| o == c || (c == 1 && o > 1) || (o & c == c && (o ^ c) > c))
}

fn check_capture(dir: &Path, t: &mut Tally) {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let negotiated_frame_max = meta["negotiated"]["frame_max"].as_u64().map(|v| v as u32);
    let streams = [
        (
            "c2s",
            Bytes::from(std::fs::read(dir.join("c2s.bin")).unwrap()),
        ),
        (
            "s2c",
            Bytes::from(std::fs::read(dir.join("s2c.bin")).unwrap()),
        ),
    ];
    let text = std::fs::read_to_string(dir.join("frames.jsonl")).unwrap();
    let mut next_offset = [0usize; 2];
    let mut frame_starts: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
    for (lineno, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        t.records += 1;
        let rec: Value = serde_json::from_str(&sanitize_json(line))
            .unwrap_or_else(|e| panic!("{name}:{}: bad JSON: {e}", lineno + 1));
        let here = format!(
            "{name}:{} ({})",
            lineno + 1,
            rec["dir"].as_str().unwrap_or("?")
        );
        let di = match rec["dir"].as_str() {
            Some("c2s") => 0,
            Some("s2c") => 1,
            other => panic!("{here}: bad dir {other:?}"),
        };
        let stream = &streams[di].1;
        let off = rec["offset"].as_u64().unwrap() as usize;
        let len = rec["len"].as_u64().unwrap() as usize;
        assert_eq!(
            off, next_offset[di],
            "{here}: records do not tile the stream"
        );
        if rec["type"].is_u64() && rec.get("truncated").is_none() {
            frame_starts[di].push(off);
        }
        next_offset[di] = off + len;
        let bytes = stream.slice(off..off + len);
        assert_eq!(
            &bytes[..],
            &unhex(rec["hex"].as_str().unwrap())[..],
            "{here}: hex differs from stream"
        );

        // Non-frame records.
        match rec["type"].as_str() {
            Some("protocol-header") => {
                let d = &rec["decoded"];
                let want = ProtocolHeader {
                    version: [
                        d["protocol_id"].as_u64().unwrap() as u8,
                        d["major"].as_u64().unwrap() as u8,
                        d["minor"].as_u64().unwrap() as u8,
                        d["revision"].as_u64().unwrap() as u8,
                    ],
                };
                match parse_protocol_header(&bytes) {
                    Ok(Parsed::Complete { frame, consumed: 8 }) if frame == want => {
                        assert_eq!(frame.to_bytes(), bytes[..]);
                        t.headers_checked += 1;
                    }
                    other => t
                        .failures
                        .push(format!("{here}: protocol header parsed as {other:?}")),
                }
                continue;
            }
            Some("unparsed") => {
                match parse_protocol_header(&bytes) {
                    Err(e) if e.code() == ReplyCode::FRAME_ERROR => {
                        t.malformed.push(format!("{here}: not AMQP -> {e}"));
                    }
                    other => t
                        .failures
                        .push(format!("{here}: non-AMQP stream parsed as {other:?}")),
                }
                continue;
            }
            Some(other) => panic!("{here}: unknown record type {other}"),
            None => {}
        }

        if rec.get("truncated").and_then(Value::as_bool) == Some(true) {
            match parse_frame(&bytes, FrameLimits::UNLIMITED) {
                Ok(Parsed::Incomplete { .. }) => {
                    t.malformed.push(format!("{here}: truncated -> incomplete"))
                }
                other => t
                    .failures
                    .push(format!("{here}: truncated record parsed as {other:?}")),
            }
            continue;
        }

        if let Some(reason) = rec.get("malformed").and_then(Value::as_str) {
            let got = parse_frame(&bytes, FrameLimits::UNLIMITED);
            match (got, expected_code(reason)) {
                (Err(e), Some(code)) if e.code() == code => {
                    t.malformed
                        .push(format!("{here}: {reason} -> {}", e.code()));
                }
                (Err(e), None) => {
                    t.malformed.push(format!(
                        "{here}: {reason} -> {} (no code stated for this fault)",
                        e.code()
                    ));
                }
                (got, want) => t.failures.push(format!(
                    "{here}: malformed ({reason}) gave {got:?}, want {want:?}"
                )),
            }
            continue;
        }

        // A valid frame.
        let expected = expected_frame(&rec);
        let parsed = match parse_frame(&bytes, FrameLimits::UNLIMITED) {
            Ok(Parsed::Complete { frame, consumed }) if consumed == len => frame,
            other => {
                t.failures.push(format!("{here}: parse gave {other:?}"));
                continue;
            }
        };
        if parsed != expected {
            t.failures.push(format!(
                "{here}: decoded {parsed:?}\n  corpus  {expected:?}"
            ));
            continue;
        }
        // Zero copy: a body of ZERO_COPY_MIN bytes or more is a slice of
        // the input; a smaller one is a copy that does not pin it.
        if let FramePayload::Body(b) = &parsed.payload {
            let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
            let inside = range.contains(&(b.as_ptr() as usize));
            if b.len() >= amqp_wire::ZERO_COPY_MIN {
                assert!(inside, "{here}: body was copied");
            } else {
                assert!(
                    b.is_empty() || !inside,
                    "{here}: small body shares the input"
                );
            }
        }
        let mut out = BytesMut::new();
        parsed.encode(&mut out).unwrap();
        if out[..] != bytes[..] {
            if only_canonical_differences(&bytes, &out) {
                let reparsed = match parse_frame(&out.clone().freeze(), FrameLimits::UNLIMITED) {
                    Ok(Parsed::Complete { frame, .. }) => frame,
                    other => panic!("{here}: canonical re-encoding does not parse: {other:?}"),
                };
                assert_eq!(
                    reparsed, parsed,
                    "{here}: canonical re-encoding changed the value"
                );
                t.canonicalized.push(here.clone());
            } else {
                t.failures.push(format!(
                    "{here}: re-encoding differs\n  ours   {:02x?}\n  theirs {:02x?}",
                    &out[..],
                    &bytes[..]
                ));
                continue;
            }
        }
        // Every proper prefix is incomplete, never an error.
        for cut in 0..len {
            match parse_frame(&bytes.slice(..cut), FrameLimits::UNLIMITED) {
                Ok(Parsed::Incomplete { needed }) => {
                    assert!(
                        needed.get() <= len - cut,
                        "{here}: prefix {cut} asks for too much"
                    );
                }
                other => {
                    t.failures
                        .push(format!("{here}: prefix of {cut} bytes gave {other:?}"));
                    break;
                }
            }
            t.prefixes_checked += 1;
        }
        // A frame beyond the negotiated frame_max is refused from its header
        // alone (501), as RabbitMQ does.
        if let Some(fm) = negotiated_frame_max.filter(|&fm| fm != 0) {
            let limit = FrameLimits::new(fm);
            let too_large = (len - 8) as u64 > fm as u64;
            match parse_frame(&bytes.slice(..7), limit) {
                Err(e) if too_large && e.code() == ReplyCode::FRAME_ERROR => {
                    t.malformed.push(format!(
                        "{here}: {} byte frame over frame_max {fm} -> {}",
                        len,
                        e.code()
                    ));
                }
                Ok(Parsed::Incomplete { .. }) if !too_large => {}
                other => t
                    .failures
                    .push(format!("{here}: frame_max {fm} check gave {other:?}")),
            }
        }
        t.frames_checked += 1;
    }
    for (i, (dir_name, stream)) in streams.iter().enumerate() {
        assert_eq!(
            next_offset[i],
            stream.len(),
            "{name}: {dir_name} records do not cover the stream"
        );
        walk_stream(&name, dir_name, stream, &frame_starts[i], t);
    }
    t.captures += 1;
}

/// Parses a whole stream front to back with `parse_frame` alone: the frames
/// it finds must start exactly where the corpus's frame records start, up to
/// the first malformed or truncated frame.
fn walk_stream(name: &str, dir: &str, stream: &Bytes, starts: &[usize], t: &mut Tally) {
    let mut pos = if stream.starts_with(b"AMQP") {
        8.min(stream.len())
    } else {
        0
    };
    let mut found = Vec::new();
    while pos < stream.len() {
        match parse_frame(&stream.slice(pos..), FrameLimits::UNLIMITED) {
            Ok(Parsed::Complete { consumed, .. }) => {
                found.push(pos);
                pos += consumed;
            }
            Ok(Parsed::Incomplete { .. }) | Err(_) => break,
        }
    }
    if starts.get(..found.len()) != Some(&found[..]) {
        t.failures.push(format!(
            "{name} {dir}: stream walk found frames at {found:?}, records say {starts:?}"
        ));
    }
}

#[test]
fn wire_corpus_conformance() {
    let root = corpus_dir();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("frames.jsonl").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no captures in {}", root.display());

    // Independent count: lines of every frames.jsonl.
    let expected_records: usize = dirs
        .iter()
        .map(|d| {
            std::fs::read_to_string(d.join("frames.jsonl"))
                .unwrap()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
        })
        .sum();

    let mut t = Tally::default();
    for d in &dirs {
        check_capture(d, &mut t);
    }

    println!("{} frames from {} captures", t.records, t.captures);
    println!(
        "  {} valid frames decoded, compared and re-encoded; {} protocol headers; {} proper prefixes incomplete",
        t.frames_checked, t.headers_checked, t.prefixes_checked
    );
    println!("  re-encoded canonically ({}):", t.canonicalized.len());
    for c in &t.canonicalized {
        println!("    {c}");
    }
    println!(
        "  malformed / truncated / over frame_max, checked for their outcome ({}):",
        t.malformed.len()
    );
    for m in &t.malformed {
        println!("    {m}");
    }
    println!("  skipped ({}):", t.skipped.len());
    for s in &t.skipped {
        println!("    {s}");
    }
    for f in &t.failures {
        eprintln!("FAIL {f}");
    }
    assert!(t.failures.is_empty(), "{} records failed", t.failures.len());
    assert_eq!(
        t.records, expected_records,
        "records walked differ from the count in frames.jsonl"
    );
    assert_eq!(t.captures, dirs.len());
}
