//! Conformance: replays every case of the routing corpus (what RabbitMQ
//! 3.10 answered to each step) through the router and compares every
//! outcome. The corpus directory comes from `AMQP_ROUTING_CORPUS`, default
//! `tests-data/corpus/routing` in this repository; a variable
//! that is set but names no directory is a failure.
//!
//! Message counts and channel conveniences (queue `""` = the channel's last
//! declared queue) are not the router's business: a small model here keeps
//! them, as a broker embedding the router would.

use amqp_router::types::{
    Decimal, FieldArray, FieldTable, FieldValue, ProtocolError, ReplyCode, Scope, ShortString,
};
use amqp_router::{
    Bind, ExchangeDeclare, OwnerId, Publish, QueueDeclare, QueueDelete, QueueUsage, RouteScratch,
    Router, method_ids,
};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[path = "../../tests-support/corpus.rs"]
mod corpus;
use corpus::routing_dir as corpus_dir;

fn case_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex string {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|_| panic!("bad hex {s:?}")))
        .collect()
}

fn int<T: TryFrom<i128>>(v: &Value) -> T {
    let n: i128 = if let Some(n) = v.as_i64() {
        n.into()
    } else if let Some(n) = v.as_u64() {
        n.into()
    } else {
        panic!("not an integer: {v}")
    };
    T::try_from(n).unwrap_or_else(|_| panic!("integer {n} out of range"))
}

/// A typed value as the corpus writes it: `{"type": "I", "value": 1}`.
fn typed(v: &Value) -> FieldValue {
    let letter = v["type"].as_str().expect("type letter");
    let value = &v["value"];
    match letter {
        "t" => FieldValue::Bool(value.as_bool().expect("bool")),
        "b" => FieldValue::I8(int(value)),
        "B" => FieldValue::U8(int(value)),
        "s" => FieldValue::I16(int(value)),
        "u" => FieldValue::U16(int(value)),
        "I" => FieldValue::I32(int(value)),
        "i" => FieldValue::U32(int(value)),
        "l" => FieldValue::I64(int(value)),
        "T" => FieldValue::Timestamp(int(value)),
        "f" => FieldValue::F32(value.as_f64().expect("float") as f32),
        "d" => FieldValue::F64(value.as_f64().expect("double")),
        "D" => FieldValue::Decimal(Decimal {
            scale: int(&value["scale"]),
            value: int(&value["unscaled"]),
        }),
        "S" => FieldValue::LongString(value.as_str().expect("string").into()),
        "x" => FieldValue::ByteArray(hex(value.as_str().expect("hex")).into()),
        "A" => FieldValue::Array(
            value
                .as_array()
                .expect("array")
                .iter()
                .map(typed)
                .collect::<FieldArray>(),
        ),
        "F" => FieldValue::Table(table(value.as_object().expect("table"))),
        "V" => FieldValue::Void,
        other => panic!("unknown type letter {other:?}"),
    }
}

fn table(o: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in o {
        t.push(ShortString::try_from(k.as_str()).expect("key"), typed(v));
    }
    t
}

fn s<'a>(step: &'a Value, key: &str) -> &'a str {
    step[key]
        .as_str()
        .unwrap_or_else(|| panic!("step field {key} missing: {step}"))
}

fn b(step: &Value, key: &str) -> bool {
    step[key]
        .as_bool()
        .unwrap_or_else(|| panic!("step field {key} missing: {step}"))
}

fn args(step: &Value, key: &str) -> FieldTable {
    table(
        step[key]
            .as_object()
            .unwrap_or_else(|| panic!("step field {key} missing: {step}")),
    )
}

/// What a step did, in the corpus's terms.
#[derive(Debug, PartialEq)]
enum Outcome {
    Ok(Option<u64>),
    Error {
        scope: &'static str,
        code: u16,
        class_method: (u16, u16),
        text: String,
    },
    Published {
        queues: Vec<String>,
        returned: bool,
    },
}

fn outcome_of_error(e: &ProtocolError) -> Outcome {
    Outcome::Error {
        scope: match e.scope() {
            Scope::Channel => "channel",
            _ => "connection",
        },
        code: e.code().0,
        class_method: (e.class_id(), e.method_id()),
        text: e.reply_text(),
    }
}

fn expected(step: &Value) -> Outcome {
    let e = &step["expect"];
    if let Some(err) = e.get("error") {
        return Outcome::Error {
            scope: match err["scope"].as_str() {
                Some("channel") => "channel",
                Some("connection") => "connection",
                other => panic!("bad scope {other:?}"),
            },
            code: int(&err["reply_code"]),
            class_method: (int(&err["class_id"]), int(&err["method_id"])),
            text: err["reply_text"].as_str().unwrap_or_default().to_owned(),
        };
    }
    if let Some(q) = e.get("queues") {
        let mut queues: Vec<String> = q
            .as_array()
            .expect("queues")
            .iter()
            .map(|v| v.as_str().expect("queue name").to_owned())
            .collect();
        queues.sort();
        return Outcome::Published {
            queues,
            returned: !e["returned"].is_null(),
        };
    }
    assert_eq!(e["ok"], Value::Bool(true), "unknown expect {e}");
    Outcome::Ok(e.get("message_count").map(|v| v.as_u64().expect("count")))
}

/// The broker around the router: message counts, channels, connections.
struct Model {
    router: Router<String>,
    messages: HashMap<String, u64>,
    last_queue: Option<String>,
    owner: OwnerId,
    scratch: RouteScratch,
}

fn no_previous(ids: (u16, u16)) -> Outcome {
    Outcome::Error {
        scope: "channel",
        code: ReplyCode::NOT_FOUND.0,
        class_method: ids,
        text: "NOT_FOUND - no previously declared queue".into(),
    }
}

impl Model {
    fn new(vhost: &str) -> Self {
        Model {
            router: Router::new(vhost),
            messages: HashMap::new(),
            last_queue: None,
            owner: OwnerId(1),
            scratch: RouteScratch::new(),
        }
    }

    /// Channel shortcut: queue `""` is the last declared queue.
    fn expand(&self, name: &str, ids: (u16, u16)) -> Result<String, Outcome> {
        if name.is_empty() {
            self.last_queue.clone().ok_or_else(|| no_previous(ids))
        } else {
            Ok(name.to_owned())
        }
    }

    fn count(&self, q: &str) -> u64 {
        self.messages.get(q).copied().unwrap_or(0)
    }

    fn step(&mut self, step: &Value) -> Outcome {
        let r = self.step_inner(step);
        if let Outcome::Error { scope, .. } = &r {
            // The next step runs on a new channel (or connection).
            self.last_queue = None;
            if *scope == "connection" {
                for q in self.router.delete_exclusive_queues(self.owner).queues {
                    self.messages.remove(q.name.to_string().as_str());
                }
                self.owner = OwnerId(self.owner.0 + 1);
            }
        }
        r
    }

    fn step_inner(&mut self, step: &Value) -> Outcome {
        let owner = self.owner;
        let err = |e: ProtocolError| outcome_of_error(&e);
        match s(step, "op") {
            "exchange.declare" => {
                let arguments = args(step, "arguments");
                let d = ExchangeDeclare {
                    name: s(step, "exchange").as_bytes(),
                    kind: s(step, "type").as_bytes(),
                    passive: b(step, "passive"),
                    durable: b(step, "durable"),
                    auto_delete: b(step, "auto_delete"),
                    internal: b(step, "internal"),
                    arguments: &arguments,
                };
                match self.router.declare_exchange(&d) {
                    Ok(_) => Outcome::Ok(None),
                    Err(e) => err(e),
                }
            }
            "exchange.delete" => {
                match self
                    .router
                    .delete_exchange(s(step, "exchange").as_bytes(), b(step, "if_unused"))
                {
                    Ok(_) => Outcome::Ok(None),
                    Err(e) => err(e),
                }
            }
            op @ ("exchange.bind" | "exchange.unbind") => {
                let arguments = args(step, "arguments");
                let bind = Bind::new(
                    s(step, "source").as_bytes(),
                    s(step, "destination").as_bytes(),
                    s(step, "routing_key").as_bytes(),
                    &arguments,
                    owner,
                );
                let r = if op == "exchange.bind" {
                    self.router.bind_exchange(&bind).map(drop)
                } else {
                    self.router.unbind_exchange(&bind).map(drop)
                };
                match r {
                    Ok(()) => Outcome::Ok(None),
                    Err(e) => err(e),
                }
            }
            "queue.declare" => {
                let arguments = args(step, "arguments");
                let passive = b(step, "passive");
                let mut name = s(step, "queue").to_owned();
                if passive {
                    name = match self.expand(&name, method_ids::QUEUE_DECLARE) {
                        Ok(n) => n,
                        Err(o) => return o,
                    };
                }
                let d = QueueDeclare {
                    name: name.as_bytes(),
                    passive,
                    durable: b(step, "durable"),
                    exclusive: b(step, "exclusive"),
                    auto_delete: b(step, "auto_delete"),
                    arguments: &arguments,
                    owner,
                };
                match self.router.declare_queue(&d, |n| n.to_string()) {
                    Ok(q) => {
                        let name = q.name.to_string();
                        let count = self.count(&name);
                        self.last_queue = Some(name);
                        Outcome::Ok(Some(count))
                    }
                    Err(e) => err(e),
                }
            }
            "queue.delete" => {
                let ids = method_ids::QUEUE_DELETE;
                let name = match self.expand(s(step, "queue"), ids) {
                    Ok(n) => n,
                    Err(o) => return o,
                };
                let messages = &self.messages;
                let d = QueueDelete {
                    name: name.as_bytes(),
                    if_unused: b(step, "if_unused"),
                    if_empty: b(step, "if_empty"),
                    owner,
                };
                match self.router.delete_queue(&d, |q| QueueUsage {
                    consumers: 0,
                    messages: messages.get(q).copied().unwrap_or(0) as u32,
                }) {
                    Ok(removed) => {
                        let mut count = 0;
                        for q in removed.queues {
                            count += self.messages.remove(&q.handle).unwrap_or(0);
                        }
                        Outcome::Ok(Some(count))
                    }
                    Err(e) => err(e),
                }
            }
            "queue.purge" => {
                let ids = method_ids::QUEUE_PURGE;
                let name = match self.expand(s(step, "queue"), ids) {
                    Ok(n) => n,
                    Err(o) => return o,
                };
                match self.router.check_queue(name.as_bytes(), owner, ids) {
                    Ok(q) => {
                        let count = self.messages.remove(q.handle()).unwrap_or(0);
                        Outcome::Ok(Some(count))
                    }
                    Err(e) => err(e),
                }
            }
            op @ ("queue.bind" | "queue.unbind") => {
                let ids = if op == "queue.bind" {
                    method_ids::QUEUE_BIND
                } else {
                    method_ids::QUEUE_UNBIND
                };
                let given = s(step, "queue");
                let name = match self.expand(given, ids) {
                    Ok(n) => n,
                    Err(o) => return o,
                };
                let mut key = s(step, "routing_key").to_owned();
                if given.is_empty() && key.is_empty() {
                    key = name.clone();
                }
                let arguments = args(step, "arguments");
                let bind = Bind::new(
                    s(step, "exchange").as_bytes(),
                    name.as_bytes(),
                    key.as_bytes(),
                    &arguments,
                    owner,
                );
                let r = if op == "queue.bind" {
                    self.router.bind_queue(&bind).map(drop)
                } else {
                    self.router.unbind_queue(&bind).map(drop)
                };
                match r {
                    Ok(()) => Outcome::Ok(None),
                    Err(e) => err(e),
                }
            }
            "basic.publish" => {
                let headers = match &step["headers"] {
                    Value::Null => None,
                    Value::Object(o) => Some(table(o)),
                    other => panic!("bad headers {other}"),
                };
                let p = Publish {
                    exchange: s(step, "exchange").as_bytes(),
                    routing_key: s(step, "routing_key").as_bytes(),
                    headers: headers.as_ref(),
                    mandatory: b(step, "mandatory"),
                    immediate: b(step, "immediate"),
                };
                let keep = step["keep"].as_bool().unwrap_or(false);
                let routed = match self.router.publish(&p, &mut self.scratch) {
                    Ok(r) => r,
                    Err(e) => return err(e),
                };
                let mut queues: Vec<String> = routed.handles().cloned().collect();
                let returned = routed.returned();
                queues.sort();
                assert!(
                    queues.windows(2).all(|w| w[0] != w[1]),
                    "a queue got two copies: {queues:?}"
                );
                if keep {
                    for q in &queues {
                        *self.messages.entry(q.clone()).or_default() += 1;
                    }
                }
                Outcome::Published { queues, returned }
            }
            other => panic!("unknown op {other:?}"),
        }
    }
}

/// Whether two outcomes agree: everything but the reply text must be equal.
fn agrees(got: &Outcome, want: &Outcome) -> (bool, bool) {
    match (got, want) {
        (
            Outcome::Error {
                scope: s1,
                code: c1,
                class_method: m1,
                text: t1,
            },
            Outcome::Error {
                scope: s2,
                code: c2,
                class_method: m2,
                text: t2,
            },
        ) => (s1 == s2 && c1 == c2 && m1 == m2, t1 == t2),
        (Outcome::Ok(a), Outcome::Ok(b)) => (b.is_none() || a == b, true),
        (a, b) => (a == b, true),
    }
}

#[test]
fn routing_corpus() {
    let dir = corpus_dir();
    let files = case_files(&dir);

    // Independent count: files and the lengths of their `steps` arrays.
    let expected_cases = files.len();
    let expected_steps: usize = files
        .iter()
        .map(|f| {
            let v: Value =
                serde_json::from_str(&std::fs::read_to_string(f).expect("read")).expect("json");
            v["steps"].as_array().map_or(0, Vec::len)
        })
        .sum();
    assert!(expected_cases > 0, "no cases in {}", dir.display());

    let mut cases = 0usize;
    let mut steps = 0usize;
    let mut publishes = 0usize;
    let mut text_mismatches = Vec::new();
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read case");
        let case: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = case["name"].as_str().unwrap_or("?").to_owned();
        let vhost = case["recorded_with"]["vhost"].as_str().unwrap_or("/");
        let mut model = Model::new(vhost);
        cases += 1;
        for (i, step) in case["steps"].as_array().expect("steps").iter().enumerate() {
            steps += 1;
            if step["op"] == "basic.publish" {
                publishes += 1;
            }
            let got = model.step(step);
            let want = expected(step);
            let (ok, text_ok) = agrees(&got, &want);
            if !ok {
                failures.push(format!(
                    "{name} step {i} ({}): got {got:?}, want {want:?}",
                    step["op"]
                ));
            } else if !text_ok {
                text_mismatches.push(format!("{name} step {i}: got {got:?}, want {want:?}"));
            }
        }
    }
    println!(
        "{cases} cases, {steps} steps ({publishes} publishes) from {}",
        dir.display()
    );
    for t in &text_mismatches {
        println!("reply text differs: {t}");
    }
    assert_eq!(
        (cases, steps),
        (expected_cases, expected_steps),
        "replayed counts differ from the files"
    );
    assert!(
        failures.is_empty(),
        "{} steps differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        text_mismatches.is_empty(),
        "{} reply texts differ (codes agree)",
        text_mismatches.len()
    );
}

#[test]
fn set_but_missing_corpus_dir_is_a_failure() {
    // The check itself, run in a child process so the variable does not leak.
    if std::env::var_os("AMQP_ROUTING_CORPUS_CHILD").is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", "routing_corpus", "--nocapture"])
        .env("AMQP_ROUTING_CORPUS", "/nonexistent/routing-corpus")
        .env("AMQP_ROUTING_CORPUS_CHILD", "1")
        .output()
        .expect("run child");
    assert!(
        !out.status.success(),
        "a missing corpus directory must fail the test"
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("is not a directory"), "{all}");
}
