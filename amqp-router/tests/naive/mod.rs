//! A deliberately naive reference model of the router: plain vectors,
//! linear scans over every binding, a dynamic-programming topic matcher and
//! a headers matcher written from the corpus README's rules, not from the
//! router's code. Shared by the differential proptest, the `router_ops`
//! fuzz target and the benchmarks' cross-checks (included with `#[path]`).
//!
//! [`Op`] is one operation; [`check`] applies a sequence to both the router
//! and the model and panics on the first disagreement.

#![allow(dead_code)]

use amqp_router::types::{FieldTable, FieldValue, ShortString};
use amqp_router::{
    Bind, ExchangeDeclare, OwnerId, QueueDeclare, QueueDelete, QueueUsage, RouteScratch, Router,
};

/// Exchange names the generators pick from (index into this).
pub const EXCHANGES: &[&str] = &[
    "x0",
    "x1",
    "x2",
    "x3",
    "x4",
    "amq.direct",
    "amq.topic",
    "amq.match",
    "",
    "amq.rabbitmq.trace",
];
/// Queue names the generators pick from.
pub const QUEUES: &[&str] = &["q0", "q1", "q2", "q3", "q4", "q5"];
/// Exchange types the generators pick from.
pub const TYPES: &[&str] = &["direct", "fanout", "topic", "headers", "bogus"];
/// Words for routing keys and patterns.
pub const WORDS: &[&str] = &["a", "b", "c", "*", "#", ""];

/// One operation on the topology, or a publish.
#[derive(Debug, Clone)]
pub enum Op {
    /// exchange.declare (non-passive).
    DeclareExchange {
        name: String,
        kind: String,
        auto_delete: bool,
        internal: bool,
        ae: Option<String>,
    },
    /// exchange.delete.
    DeleteExchange { name: String, if_unused: bool },
    /// queue.declare.
    DeclareQueue { name: String },
    /// queue.delete.
    DeleteQueue { name: String },
    /// queue.bind / exchange.bind (to_queue selects which).
    Bind {
        source: String,
        dest: String,
        to_queue: bool,
        key: String,
        args: FieldTable,
    },
    /// queue.unbind / exchange.unbind.
    Unbind {
        source: String,
        dest: String,
        to_queue: bool,
        key: String,
        args: FieldTable,
    },
    /// basic.publish.
    Route {
        exchange: String,
        key: String,
        headers: Option<FieldTable>,
    },
}

#[derive(Debug, Clone)]
struct NExchange {
    name: String,
    kind: String,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    ae: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct NBinding {
    source: String,
    dest: String,
    to_queue: bool,
    key: String,
    args: FieldTable,
}

/// The naive model.
#[derive(Debug, Clone)]
pub struct Naive {
    exchanges: Vec<NExchange>,
    queues: Vec<String>,
    bindings: Vec<NBinding>,
}

fn sorted(t: &FieldTable) -> FieldTable {
    // Insertion sort: stable, obviously correct.
    let mut v: Vec<(ShortString, FieldValue)> = Vec::new();
    for e in t.iter() {
        let pos = v
            .iter()
            .rposition(|x| x.0.as_bytes() <= e.0.as_bytes())
            .map_or(0, |p| p + 1);
        v.insert(pos, e.clone());
    }
    v.into_iter().collect()
}

/// Topic match by dynamic programming over (pattern words, key words).
pub fn topic_match(pattern: &str, key: &str) -> bool {
    let p: Vec<&str> = if pattern.is_empty() {
        vec![]
    } else {
        pattern.split('.').collect()
    };
    let k: Vec<&str> = if key.is_empty() {
        vec![]
    } else {
        key.split('.').collect()
    };
    // dp[i][j]: p[..i] matches k[..j]
    let mut dp = vec![vec![false; k.len() + 1]; p.len() + 1];
    dp[0][0] = true;
    for i in 1..=p.len() {
        for j in 0..=k.len() {
            dp[i][j] = match p[i - 1] {
                "#" => dp[i - 1][j] || (j > 0 && dp[i][j - 1]),
                "*" => j > 0 && dp[i - 1][j - 1],
                w => j > 0 && dp[i - 1][j - 1] && k[j - 1] == w,
            };
        }
    }
    dp[p.len()][k.len()]
}

/// A value as Erlang sees it at the top level of a headers table.
#[derive(Debug)]
enum Term {
    Int(i128),
    Float(f64),
    Bin(Vec<u8>),
    Bool(bool),
    Dec(u8, u32),
    Void,
    EmptyList,
    Other(FieldValue),
}

fn term(v: &FieldValue) -> Term {
    match v {
        FieldValue::I8(x) => Term::Int(i128::from(*x)),
        FieldValue::U8(x) => Term::Int(i128::from(*x)),
        FieldValue::I16(x) => Term::Int(i128::from(*x)),
        FieldValue::U16(x) => Term::Int(i128::from(*x)),
        FieldValue::I32(x) => Term::Int(i128::from(*x)),
        FieldValue::U32(x) => Term::Int(i128::from(*x)),
        FieldValue::I64(x) => Term::Int(i128::from(*x)),
        FieldValue::Timestamp(x) => Term::Int(i128::from(*x)),
        FieldValue::F32(x) => Term::Float(f64::from(*x)),
        FieldValue::F64(x) => Term::Float(*x),
        FieldValue::LongString(s) | FieldValue::ByteArray(s) => Term::Bin(s.to_vec()),
        FieldValue::Bool(b) => Term::Bool(*b),
        FieldValue::Decimal(d) => Term::Dec(d.scale, d.value),
        FieldValue::Void => Term::Void,
        FieldValue::Array(a) if a.is_empty() => Term::EmptyList,
        FieldValue::Table(t) if t.is_empty() => Term::EmptyList,
        other => Term::Other(other.clone()),
    }
}

/// Typed equality inside arrays and tables, recursively (test inputs are
/// shallow).
fn typed_eq(a: &FieldValue, b: &FieldValue) -> bool {
    match (a, b) {
        (FieldValue::F32(x), FieldValue::F32(y)) => x == y,
        (FieldValue::F64(x), FieldValue::F64(y)) => x == y,
        (FieldValue::Array(x), FieldValue::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(a, b)| typed_eq(a, b))
        }
        (FieldValue::Table(x), FieldValue::Table(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|(a, b)| a.0 == b.0 && typed_eq(&a.1, &b.1))
        }
        _ => a == b,
    }
}

/// Top-level headers value equality, from the README's rules.
pub fn header_value_eq(a: &FieldValue, b: &FieldValue) -> bool {
    match (term(a), term(b)) {
        (Term::Int(x), Term::Int(y)) => x == y,
        (Term::Float(x), Term::Float(y)) => x == y,
        (Term::Int(i), Term::Float(f)) | (Term::Float(f), Term::Int(i)) => {
            // Exact: the float must be an integer equal to i.
            f.fract() == 0.0
                && f.is_finite()
                && (-1e30..1e30).contains(&f)
                && f as i128 == i
                && i as f64 == f
        }
        (Term::Bin(x), Term::Bin(y)) => x == y,
        (Term::Bool(x), Term::Bool(y)) => x == y,
        (Term::Dec(s1, v1), Term::Dec(s2, v2)) => s1 == s2 && v1 == v2,
        (Term::Void, Term::Void) => true,
        (Term::EmptyList, Term::EmptyList) => true,
        (Term::Other(x), Term::Other(y)) => x.letter() == y.letter() && typed_eq(&x, &y),
        _ => false,
    }
}

/// Headers match for tables without duplicate keys, from the README:
/// x-match all (default) / any / all-with-x / any-with-x; void binding
/// values test presence; `x-` keys ignored unless -with-x; x-match itself
/// never compared.
pub fn headers_match(binding: &FieldTable, message: Option<&FieldTable>) -> bool {
    let empty = FieldTable::new();
    let message = message.unwrap_or(&empty);
    let mode = match binding.get("x-match") {
        Some(FieldValue::LongString(s)) => s.as_bytes().to_vec(),
        _ => b"all".to_vec(),
    };
    let (all, with_x) = match &mode[..] {
        b"any" => (false, false),
        b"all-with-x" => (true, true),
        b"any-with-x" => (false, true),
        _ => (true, false),
    };
    let mut results = Vec::new();
    for (k, v) in binding.iter() {
        let k = k.as_bytes();
        if k == b"x-match" || (!with_x && k.starts_with(b"x-")) {
            continue;
        }
        let hit = match message.get(k) {
            None => false,
            Some(m) => matches!(v, FieldValue::Void) || header_value_eq(v, m),
        };
        results.push(hit);
    }
    if all {
        results.iter().all(|&h| h)
    } else {
        results.iter().any(|&h| h)
    }
}

/// Routing keys: the key plus the long strings of CC and BCC arrays.
fn routing_keys(key: &str, headers: Option<&FieldTable>) -> Result<Vec<Vec<u8>>, u16> {
    let mut keys = vec![key.as_bytes().to_vec()];
    for h in ["CC", "BCC"] {
        match headers.and_then(|t| t.get(h)) {
            None => {}
            Some(FieldValue::Array(a)) => {
                for v in a.iter() {
                    if let FieldValue::LongString(s) = v {
                        keys.push(s.to_vec());
                    }
                }
            }
            Some(_) => return Err(406),
        }
    }
    Ok(keys)
}

impl Default for Naive {
    fn default() -> Self {
        Self::new()
    }
}

impl Naive {
    /// The built-in exchanges only.
    pub fn new() -> Self {
        let x = |n: &str, k: &str, internal| NExchange {
            name: n.into(),
            kind: k.into(),
            durable: true,
            auto_delete: false,
            internal,
            ae: None,
        };
        Naive {
            exchanges: vec![
                x("amq.direct", "direct", false),
                x("amq.fanout", "fanout", false),
                x("amq.topic", "topic", false),
                x("amq.headers", "headers", false),
                x("amq.match", "headers", false),
                x("amq.rabbitmq.trace", "topic", true),
            ],
            queues: Vec::new(),
            bindings: Vec::new(),
        }
    }

    fn exchange(&self, name: &str) -> Option<&NExchange> {
        self.exchanges.iter().find(|x| x.name == name)
    }

    fn has_queue(&self, name: &str) -> bool {
        self.queues.iter().any(|q| q == name)
    }

    fn known_type(k: &str) -> bool {
        matches!(k, "direct" | "fanout" | "topic" | "headers")
    }

    /// Removes bindings matching `f`, then auto-delete exchanges that lost
    /// their last source binding, to a fixpoint.
    fn remove_bindings(&mut self, f: impl Fn(&NBinding) -> bool) {
        let mut lost: Vec<String> = self
            .bindings
            .iter()
            .filter(|b| f(b))
            .map(|b| b.source.clone())
            .collect();
        self.bindings.retain(|b| !f(b));
        while let Some(x) = lost.pop() {
            let gone = self.exchange(&x).is_some_and(|e| e.auto_delete)
                && !self.bindings.iter().any(|b| b.source == x);
            if gone {
                self.exchanges.retain(|e| e.name != x);
                let dest = x.clone();
                lost.extend(
                    self.bindings
                        .iter()
                        .filter(|b| !b.to_queue && b.dest == dest)
                        .map(|b| b.source.clone()),
                );
                self.bindings
                    .retain(|b| (b.to_queue || b.dest != dest) && b.source != dest);
            }
        }
    }

    /// Applies an operation; `Err(code)` for a refusal; routes return the
    /// sorted queue names.
    pub fn apply(&mut self, op: &Op) -> Result<Vec<String>, u16> {
        match op {
            Op::DeclareExchange {
                name,
                kind,
                auto_delete,
                internal,
                ae,
            } => {
                if !Self::known_type(kind) {
                    return Err(503);
                }
                if name.is_empty() {
                    return Err(403);
                }
                match self.exchange(name) {
                    Some(x) => {
                        if x.kind != *kind
                            || x.durable
                            || x.auto_delete != *auto_delete
                            || x.internal != *internal
                            || x.ae != *ae
                        {
                            return Err(406);
                        }
                    }
                    None => {
                        if name.starts_with("amq.") {
                            return Err(403);
                        }
                        self.exchanges.push(NExchange {
                            name: name.clone(),
                            kind: kind.clone(),
                            durable: false,
                            auto_delete: *auto_delete,
                            internal: *internal,
                            ae: ae.clone(),
                        });
                    }
                }
                Ok(vec![])
            }
            Op::DeleteExchange { name, if_unused } => {
                if name.is_empty() || name.starts_with("amq.") {
                    return Err(403);
                }
                if self.exchange(name).is_none() {
                    return Ok(vec![]);
                }
                if *if_unused && self.bindings.iter().any(|b| b.source == *name) {
                    return Err(406);
                }
                self.exchanges.retain(|x| x.name != *name);
                let n = name.clone();
                self.remove_bindings(|b| b.source == n || (!b.to_queue && b.dest == n));
                Ok(vec![])
            }
            Op::DeclareQueue { name } => {
                if name.starts_with("amq.") {
                    return Err(403);
                }
                if !self.has_queue(name) {
                    self.queues.push(name.clone());
                }
                Ok(vec![])
            }
            Op::DeleteQueue { name } => {
                if self.has_queue(name) {
                    self.queues.retain(|q| q != name);
                    let n = name.clone();
                    self.remove_bindings(|b| b.to_queue && b.dest == n);
                }
                Ok(vec![])
            }
            Op::Bind {
                source,
                dest,
                to_queue,
                key,
                args,
            } => {
                if source.is_empty() || (!to_queue && dest.is_empty()) {
                    return Err(403);
                }
                let Some(x) = self.exchange(source) else {
                    return Err(404);
                };
                let exists = if *to_queue {
                    self.has_queue(dest)
                } else {
                    self.exchange(dest).is_some()
                };
                if !exists {
                    return Err(404);
                }
                if x.kind == "headers" {
                    match args.get("x-match") {
                        None => {}
                        Some(FieldValue::LongString(s))
                            if matches!(
                                s.as_bytes(),
                                b"all" | b"any" | b"all-with-x" | b"any-with-x"
                            ) => {}
                        Some(_) => return Err(406),
                    }
                }
                let b = NBinding {
                    source: source.clone(),
                    dest: dest.clone(),
                    to_queue: *to_queue,
                    key: key.clone(),
                    args: sorted(args),
                };
                if !self.bindings.contains(&b) {
                    self.bindings.push(b);
                }
                Ok(vec![])
            }
            Op::Unbind {
                source,
                dest,
                to_queue,
                key,
                args,
            } => {
                if source.is_empty() || (!to_queue && dest.is_empty()) {
                    return Err(403);
                }
                let b = NBinding {
                    source: source.clone(),
                    dest: dest.clone(),
                    to_queue: *to_queue,
                    key: key.clone(),
                    args: sorted(args),
                };
                self.remove_bindings(|x| *x == b);
                Ok(vec![])
            }
            Op::Route {
                exchange,
                key,
                headers,
            } => self.route(exchange, key, headers.as_ref()),
        }
    }

    /// The queues a publish reaches, sorted.
    pub fn route(
        &self,
        exchange: &str,
        key: &str,
        headers: Option<&FieldTable>,
    ) -> Result<Vec<String>, u16> {
        let mut out: Vec<String> = Vec::new();
        if exchange.is_empty() {
            let keys = routing_keys(key, headers)?;
            for k in keys {
                if let Some(q) = self.queues.iter().find(|q| q.as_bytes() == k) {
                    out.push(q.clone());
                }
            }
        } else {
            let Some(x) = self.exchange(exchange) else {
                return Err(404);
            };
            if x.internal {
                return Err(403);
            }
            let keys = routing_keys(key, headers)?;
            let mut visited: Vec<String> = vec![exchange.to_owned()];
            let mut todo: Vec<String> = vec![exchange.to_owned()];
            while let Some(xn) = todo.pop() {
                let Some(x) = self.exchange(&xn) else {
                    continue;
                };
                let mut matched = false;
                for b in self.bindings.iter().filter(|b| b.source == xn) {
                    let hit = match x.kind.as_str() {
                        "fanout" => true,
                        "direct" => keys.iter().any(|k| *k == b.key.as_bytes()),
                        "topic" => keys
                            .iter()
                            .any(|k| topic_match(&b.key, &String::from_utf8_lossy(k))),
                        "headers" => headers_match(&b.args, headers),
                        _ => false,
                    };
                    if !hit {
                        continue;
                    }
                    matched = true;
                    if b.to_queue {
                        out.push(b.dest.clone());
                    } else if !visited.contains(&b.dest) {
                        visited.push(b.dest.clone());
                        todo.push(b.dest.clone());
                    }
                }
                if !matched
                    && let Some(ae) = &x.ae
                    && !ae.is_empty()
                    && self.exchange(ae).is_some()
                    && !visited.contains(ae)
                {
                    visited.push(ae.clone());
                    todo.push(ae.clone());
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The topology, normalised for comparison.
    pub fn snapshot(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut xs: Vec<String> = self.exchanges.iter().map(|x| x.name.clone()).collect();
        xs.sort();
        let mut qs = self.queues.clone();
        qs.sort();
        let mut bs: Vec<String> = self
            .bindings
            .iter()
            .map(|b| {
                format!(
                    "{}->{}{}:{}:{:?}",
                    b.source,
                    if b.to_queue { "q:" } else { "x:" },
                    b.dest,
                    b.key,
                    b.args
                )
            })
            .collect();
        bs.sort();
        (xs, qs, bs)
    }
}

/// The router's topology, normalised like [`Naive::snapshot`].
pub fn router_snapshot<Q>(r: &Router<Q>) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut xs: Vec<String> = r.exchanges().map(|x| x.name().to_string()).collect();
    xs.sort();
    let mut qs: Vec<String> = r.queues().map(|q| q.name().to_string()).collect();
    qs.sort();
    let mut bs: Vec<String> = r
        .bindings()
        .map(|b| {
            format!(
                "{}->{}{}:{}:{:?}",
                b.source,
                if b.destination_kind == amqp_router::DestinationKind::Queue {
                    "q:"
                } else {
                    "x:"
                },
                b.destination,
                b.routing_key,
                b.arguments
            )
        })
        .collect();
    bs.sort();
    (xs, qs, bs)
}

/// Applies `op` to the router; same result shape as [`Naive::apply`].
pub fn apply_router(
    r: &mut Router<String>,
    scratch: &mut RouteScratch,
    op: &Op,
) -> Result<Vec<String>, u16> {
    let owner = OwnerId(1);
    let code = |e: amqp_router::types::ProtocolError| e.code().0;
    match op {
        Op::DeclareExchange {
            name,
            kind,
            auto_delete,
            internal,
            ae,
        } => {
            let mut args = FieldTable::new();
            if let Some(ae) = ae {
                args.insert("alternate-exchange", ae.as_str());
            }
            let d = ExchangeDeclare {
                auto_delete: *auto_delete,
                internal: *internal,
                arguments: &args,
                ..ExchangeDeclare::new(name.as_bytes(), kind.as_bytes())
            };
            r.declare_exchange(&d).map(|_| vec![]).map_err(code)
        }
        Op::DeleteExchange { name, if_unused } => r
            .delete_exchange(name.as_bytes(), *if_unused)
            .map(|_| vec![])
            .map_err(code),
        Op::DeclareQueue { name } => r
            .declare_queue(&QueueDeclare::new(name.as_bytes(), owner), |n| {
                n.to_string()
            })
            .map(|_| vec![])
            .map_err(code),
        Op::DeleteQueue { name } => r
            .delete_queue(
                &QueueDelete {
                    name: name.as_bytes(),
                    if_unused: false,
                    if_empty: false,
                    owner,
                },
                |_| QueueUsage::default(),
            )
            .map(|_| vec![])
            .map_err(code),
        Op::Bind {
            source,
            dest,
            to_queue,
            key,
            args,
        }
        | Op::Unbind {
            source,
            dest,
            to_queue,
            key,
            args,
        } => {
            let b = Bind::new(
                source.as_bytes(),
                dest.as_bytes(),
                key.as_bytes(),
                args,
                owner,
            );
            let res = match (matches!(op, Op::Bind { .. }), to_queue) {
                (true, true) => r.bind_queue(&b).map(drop),
                (true, false) => r.bind_exchange(&b).map(drop),
                (false, true) => r.unbind_queue(&b).map(drop),
                (false, false) => r.unbind_exchange(&b).map(drop),
            };
            res.map(|_| vec![]).map_err(code)
        }
        Op::Route {
            exchange,
            key,
            headers,
        } => {
            let routed = r
                .route(
                    exchange.as_bytes(),
                    key.as_bytes(),
                    headers.as_ref(),
                    scratch,
                )
                .map_err(code)?;
            let mut v: Vec<String> = routed.handles().cloned().collect();
            let n = v.len();
            v.sort();
            v.dedup();
            assert_eq!(n, v.len(), "a queue was reached twice");
            Ok(v)
        }
    }
}

/// Runs `ops` through the router and the naive model, panicking on the
/// first difference (result of an op, or the topology after it).
pub fn check(ops: &[Op]) {
    let mut router: Router<String> = Router::new("/");
    let mut scratch = RouteScratch::new();
    let mut naive = Naive::new();
    for (i, op) in ops.iter().enumerate() {
        let want = naive.apply(op);
        let got = apply_router(&mut router, &mut scratch, op);
        assert_eq!(got, want, "op {i} {op:?} differs (router, naive)");
        assert_eq!(
            router_snapshot(&router),
            naive.snapshot(),
            "topology differs after op {i} {op:?}"
        );
    }
}
