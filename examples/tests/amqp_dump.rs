//! Runs the built `amqp-dump` binary: on the capture shipped in
//! `examples/data/`, on every stream of the wire corpus (checked against the
//! corpus's own decoding), on malformed and random input (never a panic),
//! and as a live proxy between a test client and a fake upstream on
//! loopback.
//!
//! The corpus directory comes from `AMQP_WIRE_CORPUS`, default
//! `tests-data/corpus/wire` in this repository; a directory that does not
//! exist is a failure, not a skip.

use amqp_types::method::{
    BasicDeliver, BasicPublish, ChannelOpen, ConnectionClose, ConnectionCloseOk, ConnectionStart,
    ConnectionTune,
};
use amqp_types::{BasicProperties, FieldTable, LongString, ShortString};
use amqp_wire::Frame;
use bytes::{Bytes, BytesMut};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_amqp-dump");

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("runs amqp-dump")
}

/// Runs amqp-dump on `input` given through standard input.
fn run_stdin(input: &[u8], extra: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .arg("-")
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns amqp-dump");
    // amqp-dump reads all of its input before it prints anything, so
    // writing first and reading after cannot deadlock.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("writes input");
    child.wait_with_output().expect("waits")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("output is UTF-8")
}

/// The line printed for the frame at `offset` (file mode).
fn line_at(text: &str, offset: u64) -> Option<&str> {
    text.lines().find(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some(&offset.to_string()) && words.next() != Some("error:")
    })
}

#[test]
fn shipped_capture_client_side() {
    let o = run(&[data("demo.c2s.bin").to_str().expect("utf-8 path")]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "       0  -        protocol-header AMQP 0-9-1");
    assert_eq!(
        lines[1],
        "       8  ch 0     connection.start-ok client-properties={6 entries} \
         mechanism=\"PLAIN\" response=<12 bytes> locale=\"en_US\""
    );
    assert_eq!(
        line_at(&text, 371),
        Some(
            "     371  ch 0     connection.tune-ok channel-max=2047 frame-max=131072 heartbeat=60"
        )
    );
    assert_eq!(
        line_at(&text, 470),
        Some(
            "     470  ch 1     queue.declare queue=\"demo.eu\" auto-delete \
             arguments={x-max-priority: 5, x-message-ttl: 60000}"
        )
    );
    assert_eq!(
        line_at(&text, 586),
        Some(
            "     586  ch 1     basic.publish exchange=\"demo.orders\" routing-key=\"order.eu.paris\""
        )
    );
    assert_eq!(
        line_at(&text, 628),
        Some(
            "     628  ch 1     content-header body-size=16 content-type=\"application/json\" \
             headers={tenant: \"acme\", attempt: 1, tags: [\"a\", \"b\"]} delivery-mode=2 (persistent) \
             priority=3 correlation-id=\"c-42\" message-id=\"m-1\" app-id=\"record.py\""
        )
    );
    assert_eq!(
        line_at(&text, 855),
        Some("     855  ch 1     content-body 5000 bytes [5000/5000]")
    );
    assert_eq!(
        line_at(&text, 6018),
        Some(
            "    6018  ch 0     connection.close reply-code=200 REPLY_SUCCESS \
             reply-text=\"Normal shutdown\" class-id=0 method-id=0"
        )
    );
    assert_eq!(
        lines.last().copied(),
        Some("-- 22 frames, 6052 bytes c2s: ok")
    );
    // Credentials stay out of the summary.
    assert!(!text.contains("guest"), "{text}");
}

#[test]
fn shipped_capture_server_side() {
    let o = run(&[data("demo.s2c.bin").to_str().expect("utf-8 path")]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with(
            "       0  ch 0     connection.start version-major=0 version-minor=9 \
             server-properties={7 entries} mechanisms=\"AMQPLAIN PLAIN\" locales=\"en_US\"\n"
        ),
        "{text}"
    );
    assert_eq!(
        line_at(&text, 5969),
        Some(
            "    5969  ch 1     channel.close reply-code=404 NOT_FOUND reply-text=\"NOT_FOUND - \
             no queue 'demo.missing' in vhost '/'\" class-id=50 method-id=10 (queue.declare)"
        )
    );
    assert_eq!(
        line_at(&text, 659),
        Some(
            "     659  ch 1     basic.get-ok delivery-tag=1 exchange=\"demo.orders\" \
             routing-key=\"order.eu.paris\" message-count=1"
        )
    );
    assert!(
        text.ends_with("-- 19 frames, 6048 bytes s2c: ok\n"),
        "{text}"
    );
}

#[test]
fn shipped_capture_verbose() {
    let o = run(&[
        data("demo.s2c.bin").to_str().expect("utf-8 path"),
        "--verbose",
    ]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    for needle in [
        "          server-properties (table) = table, 7 entries\n",
        "            \"capabilities\": F table, ",
        "              \"publisher_confirms\": t true\n",
        "            \"product\": S \"RabbitMQ\"\n",
        "            \"tags\": A array, 2 items\n",
        "              [0]: S \"a\"\n",
        "            \"attempt\": ",
        "          channel-max (short) = 2047\n",
        "          reply-code (short) = 404 NOT_FOUND\n",
        // connection.tune, byte for byte, with its ASCII column.
        "          0000  01 00 00 00 00 00 0c 00  0a 00 1e 07 ff 00 02 00  |................|\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[test]
fn help_and_usage_errors() {
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("--listen ADDR --upstream ADDR"));
    for args in [
        &[][..],
        &["--bogus"],
        &["a", "b"],
        &["--listen", "127.0.0.1:0"],
        &["--direction", "up", "x"],
        &["--frame-max", "lots", "x"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("amqp-dump:"));
    }
    let o = run(&["/nonexistent/capture.bin"]);
    assert_eq!(o.status.code(), Some(2));
}

// ---------------------------------------------------------------------------
// The wire corpus.

#[path = "../../tests-support/corpus.rs"]
mod corpus;
use corpus::wire_dir as corpus_dir;

/// The parts of a `frames.jsonl` record this test needs, read without a
/// JSON library: the top-level keys come first in every record (`dir`,
/// `offset`, `len`, `type`, `channel`, then `hex`), `decoded.name` is the
/// first `"name":` key, and `malformed` is a top-level key after `decoded`.
#[derive(Debug)]
struct Record {
    dir: String,
    offset: u64,
    ty: String,
    channel: Option<u16>,
    name: Option<String>,
    malformed: bool,
    truncated: bool,
}

fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    if let Some(s) = rest.strip_prefix('"') {
        return s.find('"').map(|end| &s[..end]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

fn record(line: &str) -> Record {
    let decoded_at = line.find("\"decoded\":").unwrap_or(line.len());
    let (head, tail) = line.split_at(decoded_at);
    Record {
        dir: json_field(head, "dir").expect("dir").to_string(),
        offset: json_field(head, "offset")
            .expect("offset")
            .parse()
            .expect("numeric offset"),
        ty: json_field(head, "type").expect("type").to_string(),
        channel: json_field(head, "channel").and_then(|c| c.parse().ok()),
        name: json_field(tail, "name")
            .filter(|n| *n != "null")
            .map(str::to_string),
        malformed: tail.contains("\"malformed\":"),
        truncated: tail.contains("\"truncated\":true"),
    }
}

#[test]
fn every_corpus_stream_decodes_as_the_corpus_says() {
    let dir = corpus_dir();
    let mut captures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("frames.jsonl").is_file())
        .collect();
    captures.sort();
    assert!(!captures.is_empty(), "no captures in {}", dir.display());
    let (mut streams, mut checked, mut failing) = (0, 0, 0);
    for capture in &captures {
        let jsonl = std::fs::read_to_string(capture.join("frames.jsonl")).expect("frames.jsonl");
        let records: Vec<Record> = jsonl
            .lines()
            .filter(|l| !l.is_empty())
            .map(record)
            .collect();
        for direction in ["c2s", "s2c"] {
            let file = capture.join(format!("{direction}.bin"));
            if !file.is_file() {
                continue;
            }
            streams += 1;
            let o = run(&[file.to_str().expect("utf-8 path")]);
            let text = stdout(&o);
            let code = o.status.code();
            let what = format!("{}\n{text}", file.display());
            assert!(
                matches!(code, Some(0 | 1)),
                "exit {code:?} (a panic is 101) on {what}"
            );
            let mine: Vec<&Record> = records.iter().filter(|r| r.dir == direction).collect();
            // Every record up to the first malformed one prints as a line at
            // its offset, on its channel, with its method name.
            let mut frames = 0;
            let mut bad = None;
            for r in &mine {
                if r.malformed {
                    bad = Some(r);
                    break;
                }
                let line = line_at(&text, r.offset)
                    .unwrap_or_else(|| panic!("no line at offset {} in {what}", r.offset));
                checked += 1;
                if r.ty == "protocol-header" {
                    assert!(line.contains("protocol-header AMQP"), "{line}");
                    continue;
                }
                frames += 1;
                let ch = format!("ch {}", r.channel.expect("frames have a channel"));
                assert!(line.contains(&format!(" {ch} ")), "{line} / {r:?}");
                let expect = match (r.ty.as_str(), &r.name) {
                    ("1", Some(name)) => name.as_str(),
                    ("2", _) => "content-header",
                    ("3", _) => "content-body",
                    ("8", _) => "heartbeat",
                    _ => panic!("unexpected record {r:?}"),
                };
                assert!(
                    line.split_whitespace().nth(3) == Some(expect),
                    "{line} / {r:?}"
                );
            }
            match bad {
                None => {
                    assert_eq!(code, Some(0), "{what}");
                    assert!(
                        text.ends_with(&format!(" frames, {} bytes {direction}: ok\n", {
                            std::fs::metadata(&file).expect("size").len()
                        })),
                        "{what}"
                    );
                }
                Some(r) => {
                    failing += 1;
                    assert_eq!(code, Some(1), "{what}");
                    let last = text
                        .lines()
                        .rev()
                        .nth(1)
                        .expect("a line before the summary");
                    let offset = format!("{:>8}  ", r.offset);
                    assert!(last.starts_with(&offset), "{last} / {r:?}");
                    if r.truncated {
                        assert!(last.contains("truncated: the stream ends inside a frame"));
                    } else {
                        assert!(last.contains("error: reply-code 50"), "{last}");
                        assert!(last.contains(", at offset "), "{last}");
                    }
                    assert!(text.ends_with("FAILED\n"));
                }
            }
            assert!(
                text.contains(&format!("-- {frames} frames, ")),
                "expected {frames} frames in {what}"
            );
        }
    }
    println!(
        "{streams} streams from {} captures, {checked} records matched, {failing} malformed streams refused",
        captures.len()
    );
    assert!(streams >= captures.len());
}

// ---------------------------------------------------------------------------
// Malformed and random input.

fn demo_c2s() -> Vec<u8> {
    std::fs::read(data("demo.c2s.bin")).expect("shipped capture")
}

/// Offsets of the frames of a well-formed stream with a protocol header.
fn frame_offsets(stream: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut pos = 8;
    while pos + 7 <= stream.len() {
        offsets.push(pos);
        let size = u32::from_be_bytes([
            stream[pos + 3],
            stream[pos + 4],
            stream[pos + 5],
            stream[pos + 6],
        ]) as usize;
        pos += 8 + size;
    }
    offsets
}

#[test]
fn malformed_captures_print_the_typed_error() {
    let good = demo_c2s();
    let offsets = frame_offsets(&good);
    // The 3rd frame is connection.open at 391 (16 bytes): break its end octet.
    let open = offsets[2];
    assert_eq!(open, 391);
    let mut bad_end = good.clone();
    bad_end[open + 15] = 0x00;
    let o = run_stdin(&bad_end, &[]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "     391  error: reply-code 501 FRAME_ERROR (connection scope), at offset 406, \
             channel 0: FRAME_ERROR - invalid frame end octet 0x00 (expected 0xce)\n"
        ),
        "{text}"
    );
    // Nothing after the fault is decoded.
    assert!(!text.contains("channel.open"), "{text}");
    assert!(
        text.ends_with("-- 2 frames, 6052 bytes: FAILED\n"),
        "{text}"
    );

    // An unknown method id in channel.open (20/10 -> 20/99).
    let mut unknown = good.clone();
    let ch_open = offsets[3];
    unknown[ch_open + 10] = 99;
    let text = stdout(&run_stdin(&unknown, &[]));
    assert!(
        text.contains(&format!(
            "{ch_open:>8}  error: reply-code 503 COMMAND_INVALID (connection scope), at offset {}, \
             channel 1, method 20/99: COMMAND_INVALID - unknown method 20/99",
            ch_open + 7
        )),
        "{text}"
    );

    // An unknown field type letter in client-properties: "product" is 'S'.
    let mut letter = good.clone();
    let at = 8 + 7 + 4 + 4 + 1 + 7;
    assert_eq!(&letter[at - 7..=at], b"productS");
    letter[at] = b'U';
    let o = run_stdin(&letter, &[]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text.contains(&format!(
            "       8  error: reply-code 501 FRAME_ERROR (connection scope), at offset {at}, \
             channel 0, method 10/11 (connection.start-ok): FRAME_ERROR - unknown field value \
             type 'U' (0x55)"
        )),
        "{text}"
    );

    // A frame larger than --frame-max (the 5000-byte body against 4096).
    let o = run(&[
        data("demo.c2s.bin").to_str().expect("utf-8 path"),
        "--frame-max",
        "4096",
    ]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text.contains(
            "     855  error: reply-code 501 FRAME_ERROR (connection scope), at offset 858, channel 1"
        ),
        "{text}"
    );

    // A stream that ends mid-frame: how many bytes are missing.
    let o = run_stdin(&good[..good.len() - 5], &[]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1));
    let last = *offsets.last().expect("frames");
    assert!(
        text.contains(&format!(
            "{last:>8}  truncated: the stream ends inside a frame ({} bytes present, at least 5 more needed)",
            good.len() - 5 - last
        )),
        "{text}"
    );
    // ... also inside the protocol header and inside a frame header.
    let text = stdout(&run_stdin(b"AMQP\x00", &[]));
    assert!(text.contains(
        "       0  truncated: the stream ends inside a frame (5 bytes present, at least 3 more needed)"
    ));
    let text = stdout(&run_stdin(&good[..open + 3], &[]));
    assert!(text.contains(&format!(
        "{open:>8}  truncated: the stream ends inside a frame (3 bytes present, at least 5 more needed)"
    )));
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_garbage_never_panics() {
    let good = demo_c2s();
    let offsets = frame_offsets(&good);
    let mut rng = Rng(0x5eed_a3b1_c0de_0001);
    let mut outcomes = [0usize; 2];
    for i in 0..300 {
        let input: Vec<u8> = match i % 4 {
            // Pure noise.
            0 => (0..rng.below(600)).map(|_| rng.next() as u8).collect(),
            // A protocol header, then noise shaped like frame headers.
            1 => {
                let mut v = b"AMQP\x00\x00\x09\x01".to_vec();
                for _ in 0..rng.below(8) {
                    v.push([1, 2, 3, 8][rng.below(4)]);
                    v.extend_from_slice(&(rng.below(3) as u16).to_be_bytes());
                    let len = rng.below(64);
                    v.extend_from_slice(&(len as u32).to_be_bytes());
                    v.extend((0..len).map(|_| rng.next() as u8));
                    v.push(0xce);
                }
                v
            }
            // The real capture with a few bytes changed.
            2 => {
                let mut v = good.clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(v.len());
                    v[at] = rng.next() as u8;
                }
                v
            }
            // The real capture cut at a random point, bytes inside one
            // frame's payload flipped.
            _ => {
                let mut v = good.clone();
                let f = offsets[rng.below(offsets.len())];
                let at = (f + 7 + rng.below(16)).min(v.len() - 1);
                v[at] ^= 1 << rng.below(8);
                v.truncate(rng.below(v.len() + 1));
                v
            }
        };
        let verbose: &[&str] = if i % 3 == 0 { &["--verbose"] } else { &[] };
        let o = run_stdin(&input, verbose);
        let code = o.status.code();
        let text = stdout(&o);
        assert!(
            matches!(code, Some(0 | 1)),
            "input {i} exited {code:?}: {}\n{input:02x?}",
            String::from_utf8_lossy(&o.stderr)
        );
        outcomes[code.unwrap_or(0) as usize] += 1;
        if code == Some(1) {
            assert!(
                text.contains("error: reply-code ") || text.contains("truncated: "),
                "{text}"
            );
        }
    }
    // The generator must exercise both outcomes.
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

// ---------------------------------------------------------------------------
// The live proxy.

/// Kills the proxy when the test ends, even by a failed assertion.
struct Proxy(Child);
impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for f in frames {
        f.encode(&mut b).expect("encodes");
    }
    b.to_vec()
}

fn client_bytes() -> Vec<u8> {
    let mut v = b"AMQP\x00\x00\x09\x01".to_vec();
    v.extend(encode(&[
        Frame::method(1, ChannelOpen::default()),
        Frame::method(
            1,
            BasicPublish {
                exchange: ShortString::from_static("ex"),
                routing_key: ShortString::from_static("rk"),
                ..Default::default()
            },
        ),
        Frame::header(1, 3, BasicProperties::default()),
        Frame::body(1, Bytes::from_static(b"abc")),
    ]));
    // Garbage: an unknown frame type. The proxy must still forward it and
    // everything after it.
    v.extend_from_slice(b"\x09\x00\x01\x00\x00\x00\x01\xff\xce trailing bytes");
    v
}

fn server_bytes() -> Vec<u8> {
    let mut props = FieldTable::new();
    props.insert("product", "fake upstream");
    encode(&[
        Frame::method(
            0,
            ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                mechanisms: LongString::from("PLAIN"),
                locales: LongString::from("en_US"),
            },
        ),
        Frame::method(
            0,
            ConnectionTune {
                channel_max: 7,
                frame_max: 4096,
                heartbeat: 0,
            },
        ),
        Frame::heartbeat(),
        Frame::method(
            1,
            BasicDeliver {
                consumer_tag: ShortString::from_static("ctag"),
                delivery_tag: 9,
                routing_key: ShortString::from_static("rk"),
                ..Default::default()
            },
        ),
        Frame::header(1, 3, BasicProperties::default()),
        Frame::body(1, Bytes::from_static(b"xyz")),
    ])
}

fn read_to_end_bounded(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("reads until the peer closes");
    v
}

#[test]
fn proxy_forwards_unchanged_and_prints_both_directions() {
    const CONNECTIONS: usize = 2;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (c2s, s2c) = (client_bytes(), server_bytes());

    // A fake upstream: for each connection, send the server bytes, read
    // what the client sent until it closes its side, then close.
    let upstream = TcpListener::bind("127.0.0.1:0").expect("binds");
    let upstream_addr = upstream.local_addr().expect("addr");
    upstream.set_nonblocking(true).expect("nonblocking");
    let (got_tx, got_rx) = mpsc::channel::<Vec<u8>>();
    let server = s2c.clone();
    std::thread::spawn(move || {
        let mut served = 0;
        while served < CONNECTIONS && Instant::now() < deadline {
            match upstream.accept() {
                Ok((mut s, _)) => {
                    served += 1;
                    let server = server.clone();
                    let got_tx = got_tx.clone();
                    std::thread::spawn(move || {
                        s.set_nonblocking(false).expect("blocking");
                        s.write_all(&server).expect("upstream writes");
                        let got = read_to_end_bounded(&mut s);
                        let _ = got_tx.send(got);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });

    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--upstream"])
        .arg(upstream_addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawns the proxy");
    let out = child.stdout.take().expect("stdout");
    let _proxy = Proxy(child);
    let (line_tx, line_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let next_line = |lines: &mut Vec<String>| -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = line_rx.recv_timeout(left).ok()?;
        lines.push(l.clone());
        Some(l)
    };
    let first = next_line(&mut lines).expect("the proxy says where it listens");
    let addr = first
        .strip_prefix("listening on ")
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();

    // Clients: write in small pieces, half-close, read everything back.
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let addr = addr.clone();
            let c2s = c2s.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).expect("connects to the proxy");
                for piece in c2s.chunks(5) {
                    s.write_all(piece).expect("client writes");
                }
                s.shutdown(std::net::Shutdown::Write).expect("half-close");
                read_to_end_bounded(&mut s)
            })
        })
        .collect();
    for c in clients {
        let got = c.join().expect("client thread");
        assert_eq!(got, s2c, "s2c bytes changed by the proxy");
    }
    for _ in 0..CONNECTIONS {
        let got = got_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("upstream received");
        assert_eq!(got, c2s, "c2s bytes changed by the proxy");
    }
    // Wait until the proxy reports both connections closed.
    let mut closed = 0;
    while closed < CONNECTIONS {
        let l = next_line(&mut lines)
            .unwrap_or_else(|| panic!("proxy output stopped:\n{}", lines.join("\n")));
        if l.contains("] closed: ") {
            closed += 1;
        }
    }
    let text = lines.join("\n");
    for id in 1..=CONNECTIONS {
        let c = format!("[conn {id} c2s] ");
        let s = format!("[conn {id} s2c] ");
        for needle in [
            format!("{c}       0  -        protocol-header AMQP 0-9-1"),
            format!("{c}       8  ch 1     channel.open"),
            format!("{c}      21  ch 1     basic.publish exchange=\"ex\" routing-key=\"rk\""),
            format!("{c}      42  ch 1     content-header body-size=3"),
            format!("{c}      64  ch 1     content-body 3 bytes [3/3]"),
            format!(
                "{c}      75  error: reply-code 501 FRAME_ERROR (connection scope), at offset 75, \
                 channel 1: FRAME_ERROR - unknown frame type 9"
            ),
            format!("{c}decoding stopped; still forwarding"),
            format!(
                "{s}       0  ch 0     connection.start version-major=0 version-minor=9 \
                 server-properties={{product: \"fake upstream\"}} mechanisms=\"PLAIN\" locales=\"en_US\""
            ),
            format!("{s}      62  ch 0     connection.tune channel-max=7 frame-max=4096"),
            format!("{s}      82  ch 0     heartbeat"),
            format!(
                "{s}      90  ch 1     basic.deliver consumer-tag=\"ctag\" delivery-tag=9 \
                 exchange=\"\" routing-key=\"rk\""
            ),
            format!("{s}     142  ch 1     content-body 3 bytes [3/3]"),
            format!(
                "[conn {id}] closed: {} bytes c2s, {} bytes s2c",
                c2s.len(),
                s2c.len()
            ),
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(&needle)),
                "missing {needle:?} in\n{text}"
            );
        }
    }
}

/// Starts the proxy towards `upstream` and returns it, its address and
/// a receiver of its output lines.
fn start_proxy(upstream: &str) -> (Proxy, String, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawns the proxy");
    let out = child.stdout.take().expect("stdout");
    let proxy = Proxy(child);
    let (line_tx, line_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = line_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the proxy says where it listens");
    let addr = first
        .strip_prefix("listening on ")
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    (proxy, addr, line_rx)
}

/// The proxy's lines up to and including `[conn N] closed: ...`.
fn lines_until_closed(rx: &mpsc::Receiver<String>, id: u32) -> Vec<String> {
    let mut lines = Vec::new();
    let end = format!("[conn {id}] closed: ");
    loop {
        let l = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("proxy output stopped:\n{}", lines.join("\n")));
        let done = l.starts_with(&end);
        lines.push(l);
        if done {
            return lines;
        }
    }
}

/// A broker that ends a connection with a reset (RabbitMQ does on every
/// close: SO_LINGER 0) is not an error once connection.close and close-ok
/// went by; before that, the reset is reported, naming who did it.
#[test]
fn proxy_reset_after_close_is_a_clean_close() {
    let upstream = TcpListener::bind("127.0.0.1:0").expect("binds");
    let upstream_addr = upstream.local_addr().expect("addr").to_string();
    let handshake_end = encode(&[Frame::method(0, ConnectionCloseOk {})]);
    let start = server_bytes();
    std::thread::spawn(move || {
        for answer in [handshake_end, start] {
            let Ok((mut s, _)) = upstream.accept() else {
                return;
            };
            s.write_all(&answer).expect("upstream writes");
            // Leave what the client sent unread: closing then sends a
            // reset instead of a FIN.
            std::thread::sleep(Duration::from_millis(300));
            drop(s);
        }
    });
    let (_proxy, addr, rx) = start_proxy(&upstream_addr);
    // Connection 1: the client closes, the broker answers close-ok and
    // resets.
    let mut c = TcpStream::connect(&addr).expect("connects to the proxy");
    let mut hello = b"AMQP\x00\x00\x09\x01".to_vec();
    hello.extend(encode(&[Frame::method(
        0,
        ConnectionClose {
            reply_code: 200,
            reply_text: ShortString::from_static("bye"),
            class_id: 0,
            method_id: 0,
        },
    )]));
    c.write_all(&hello).expect("client writes");
    let _ = read_to_end_bounded(&mut c);
    drop(c);
    let lines = lines_until_closed(&rx, 1);
    let text = lines.join("\n");
    assert!(text.contains("connection.close-ok"), "{text}");
    assert!(!text.contains("reset"), "{text}");
    assert!(!text.contains("error"), "{text}");
    assert!(!text.contains("without connection.close"), "{text}");
    // Connection 2: the broker resets in the middle of the handshake.
    let mut c = TcpStream::connect(&addr).expect("connects to the proxy");
    c.write_all(b"AMQP\x00\x00\x09\x01").expect("client writes");
    let _ = read_to_end_bounded(&mut c);
    drop(c);
    let lines = lines_until_closed(&rx, 2);
    let text = lines.join("\n");
    assert!(
        text.contains(
            "[conn 2 s2c] the broker reset the connection before connection.close: Connection reset by peer"
        ),
        "{text}"
    );
    // The client's hang-up that follows is a consequence, not news.
    assert!(!text.contains("the client closed"), "{text}");
}

/// Through the proxy to the interop RabbitMQ (127.0.0.1:5672): a clean
/// session, one whose publish the broker refuses and one whose consume it
/// refuses all end with connection.close and without a reset, hang-up or
/// error line. Skips when `AMQP_INTEROP=0`.
#[test]
fn proxy_to_rabbitmq_closes_cleanly() {
    if std::env::var("AMQP_INTEROP").as_deref() == Ok("0") {
        eprintln!("skipped: AMQP_INTEROP=0");
        return;
    }
    let (_proxy, addr, rx) = start_proxy("127.0.0.1:5672");
    let uri = format!("amqp://guest:guest@{addr}/%2f");
    let client = env!("CARGO_BIN_EXE_amqp-client");
    let q = format!("amqp-dump-test-{}", std::process::id());
    let out = Command::new(client)
        .args(["--uri", &uri, "declare", "--queue", &q, "--auto-delete"])
        .output()
        .expect("runs amqp-client");
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(client)
        .args([
            "--uri",
            &uri,
            "publish",
            "--exchange",
            "amqp-dump-no-such-exchange",
            "--routing-key",
            "k",
            "x",
        ])
        .output()
        .expect("runs amqp-client");
    assert!(!out.status.success(), "{out:?}");
    // A refused consume: amqp-client still says goodbye with
    // connection.close (no hang-up).
    let out = Command::new(client)
        .args([
            "--uri",
            &uri,
            "consume",
            "--queue",
            "amqp-dump-no-such-queue",
        ])
        .output()
        .expect("runs amqp-client");
    assert!(!out.status.success(), "{out:?}");
    for id in [1, 2, 3] {
        let text = lines_until_closed(&rx, id).join("\n");
        assert!(text.contains("connection.close-ok"), "{text}");
        for bad in [
            "reset",
            "error",
            "without connection.close",
            "not forwarded",
        ] {
            assert!(!text.contains(bad), "{bad:?} in\n{text}");
        }
    }
}

/// Address problems name the address and say what to do.
#[test]
fn proxy_address_errors_name_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("binds");
    let taken = taken.local_addr().expect("addr").to_string();
    for (args, expected) in [
        (
            ["--listen", taken.as_str(), "--upstream", "127.0.0.1:5672"],
            format!("cannot listen on {taken}: "),
        ),
        (
            ["--listen", "nonsense", "--upstream", "127.0.0.1:5672"],
            "--listen \"nonsense\" is not an address to listen on".to_owned(),
        ),
        (
            ["--listen", "127.0.0.1:0", "--upstream", "nonsense"],
            "--upstream \"nonsense\" is not a broker address".to_owned(),
        ),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&expected), "{args:?}: {err}");
        assert!(
            err.contains("pick another --listen port") || err.contains("give HOST:PORT"),
            "{args:?}: {err}"
        );
    }
}
