//! Seeds the wire fuzz corpora from the wire corpus.
//!
//! ```text
//! cargo run -p amqp-fuzz --example seed_corpus [WIRE_CORPUS [OUT_DIR]]
//! ```
//!
//! `WIRE_CORPUS` defaults to `$AMQP_WIRE_CORPUS`, else `tests-data/corpus/wire`
//! relative to the workspace root; `OUT_DIR` defaults to `fuzz/corpus`. Writes
//!
//! * `parse_frames/`: every record of every `frames.jsonl` (its `hex`) alone,
//!   and the first [`STREAM_SEED_MAX`] bytes of each `c2s.bin`/`s2c.bin`,
//!   each behind a `parse_frames` prefix byte that varies the `frame_max`
//!   selector and the chunked window (see `amqp_fuzz::wire::ParseInput`);
//! * `roundtrip/`: the frame records, raw (the arbitrary decoder turns any
//!   bytes into a frame; real frames give it realistic shapes);
//! * `field_table/`: every field table found in the frames (method
//!   arguments, client/server properties, `headers`, and the tables nested
//!   in those), in wire form.
//!
//! Files are named by a hash of their content, so seeding twice adds
//! nothing. Run `cargo fuzz cmin <target>` afterwards.

use amqp_fuzz::wire::ParseInput;
use amqp_types::{FieldTable, FieldValue, Method};
use amqp_wire::{FrameLimits, FramePayload, Parsed, encode_field_table, parse_frame};
use bytes::Bytes;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::{env, fs};

/// Stream seeds are cut to this many bytes (libFuzzer sizes its inputs from
/// the largest seed).
const STREAM_SEED_MAX: usize = 4096;
/// Frame records larger than this are cut too.
const FRAME_SEED_MAX: usize = 4096;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = env::args_os().skip(1);
    let wire = args
        .next()
        .map(PathBuf::from)
        .or_else(|| env::var_os("AMQP_WIRE_CORPUS").map(PathBuf::from))
        .unwrap_or_else(|| root.join("../tests-data/corpus/wire"));
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    assert!(
        wire.is_dir(),
        "wire corpus {} is not a directory",
        wire.display()
    );

    let mut captures: Vec<PathBuf> = fs::read_dir(&wire)
        .expect("read wire corpus")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("frames.jsonl").is_file())
        .collect();
    captures.sort();
    assert!(!captures.is_empty(), "no captures under {}", wire.display());

    let mut seeds = Seeds::new(&out);
    let mut n = 0u8;
    for capture in &captures {
        for dir in ["c2s.bin", "s2c.bin"] {
            let stream = fs::read(capture.join(dir)).expect("read stream");
            let stream = &stream[..stream.len().min(STREAM_SEED_MAX)];
            n = n.wrapping_add(1);
            // Unlimited / 4096 / 131072 in turn, whole-frame windows mostly.
            seeds.add(
                "parse_frames",
                &ParseInput::encode(n % 3, 0, if n.is_multiple_of(4) { n } else { 0 }, stream),
            );
        }
        let jsonl = fs::read_to_string(capture.join("frames.jsonl")).expect("read frames.jsonl");
        for line in jsonl.lines() {
            let Some(hex) = field(line, "hex") else {
                continue;
            };
            let frame = decode_hex(hex);
            let cut = &frame[..frame.len().min(FRAME_SEED_MAX)];
            n = n.wrapping_add(1);
            let selector = n % 4;
            // For selector 3 a frame_max just at, or just under, the payload.
            let payload = cut.len().saturating_sub(8) as u32;
            seeds.add(
                "parse_frames",
                &ParseInput::encode(selector, payload.saturating_sub(u32::from(n % 2)), n, cut),
            );
            seeds.add("roundtrip", cut);
            let frame = Bytes::from(frame);
            if let Ok(Parsed::Complete { frame, .. }) = parse_frame(&frame, FrameLimits::UNLIMITED)
            {
                let mut tables = Vec::new();
                match &frame.payload {
                    FramePayload::Method(m) => method_tables(m, &mut tables),
                    FramePayload::Header(h) => tables.extend(h.properties.headers.iter()),
                    _ => {}
                }
                for t in tables {
                    add_tables(&mut seeds, t);
                }
            }
        }
    }
    for (target, count) in &seeds.counts {
        println!(
            "{target}: {count} new seeds in {}",
            out.join(target).display()
        );
    }
}

/// The tables among a method's arguments.
fn method_tables<'a>(m: &'a Method, out: &mut Vec<&'a FieldTable>) {
    match m {
        Method::ConnectionStart(m) => out.push(&m.server_properties),
        Method::ConnectionStartOk(m) => out.push(&m.client_properties),
        Method::ExchangeDeclare(m) => out.push(&m.arguments),
        Method::ExchangeBind(m) => out.push(&m.arguments),
        Method::ExchangeUnbind(m) => out.push(&m.arguments),
        Method::QueueDeclare(m) => out.push(&m.arguments),
        Method::QueueBind(m) => out.push(&m.arguments),
        Method::QueueUnbind(m) => out.push(&m.arguments),
        Method::BasicConsume(m) => out.push(&m.arguments),
        _ => {}
    }
}

/// Adds `table` and every table nested in it.
fn add_tables(seeds: &mut Seeds, table: &FieldTable) {
    let mut wire = Vec::new();
    encode_field_table(table, &mut wire).expect("a parsed table encodes");
    seeds.add("field_table", &wire);
    let mut stack: Vec<&FieldValue> = table.iter().map(|(_, v)| v).collect();
    while let Some(v) = stack.pop() {
        match v {
            FieldValue::Table(t) => {
                let mut wire = Vec::new();
                encode_field_table(t, &mut wire).expect("a parsed table encodes");
                seeds.add("field_table", &wire);
                stack.extend(t.iter().map(|(_, v)| v));
            }
            FieldValue::Array(a) => stack.extend(a.iter()),
            _ => {}
        }
    }
}

struct Seeds {
    out: PathBuf,
    counts: std::collections::BTreeMap<&'static str, usize>,
}

impl Seeds {
    fn new(out: &Path) -> Self {
        Seeds {
            out: out.to_path_buf(),
            counts: Default::default(),
        }
    }

    fn add(&mut self, target: &'static str, data: &[u8]) {
        let dir = self.out.join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        let mut h = DefaultHasher::new();
        data.hash(&mut h);
        let path = dir.join(format!("seed-{:016x}", h.finish()));
        if !path.exists() {
            fs::write(&path, data).expect("write seed");
            *self.counts.entry(target).or_default() += 1;
        }
    }
}

/// The string value of `"name":"..."` in a JSON line (enough for `hex`).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let start = line.find(&key)? + key.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

fn decode_hex(hex: &str) -> Vec<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("bad hex digit {:?}", c as char),
    };
    hex.as_bytes()
        .chunks(2)
        .map(|p| digit(p[0]) << 4 | digit(p[1]))
        .collect()
}
