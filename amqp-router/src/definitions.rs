//! The topology part of RabbitMQ's definitions export (`rabbitmqctl
//! export_definitions`, the management API's `/api/definitions`):
//! exchanges, queues, bindings with their arguments, and
//! `alternate-exchange` set by policy. Users, permissions, parameters and
//! every other policy key are ignored.
//!
//! ```
//! use amqp_router::definitions::Topology;
//! let json = r#"{
//!   "exchanges": [{"name": "logs", "vhost": "/", "type": "topic", "durable": true,
//!                  "auto_delete": false, "internal": false, "arguments": {}}],
//!   "queues": [{"name": "errors", "vhost": "/", "durable": true, "auto_delete": false,
//!               "arguments": {"x-max-length": 10}}],
//!   "bindings": [{"source": "logs", "vhost": "/", "destination": "errors",
//!                 "destination_type": "queue", "routing_key": "*.error", "arguments": {}}],
//!   "policies": [{"vhost": "/", "name": "ae", "pattern": "^logs$", "apply-to": "exchanges",
//!                 "definition": {"alternate-exchange": "amq.fanout"}, "priority": 0}]
//! }"#;
//! let topology = Topology::from_json(json)?;
//! let router = topology.to_router("/", |name| name.to_string())?;
//! assert_eq!(router.exchange(b"logs").unwrap().policy_alternate_exchange().unwrap(), "amq.fanout");
//! let mut scratch = amqp_router::RouteScratch::new();
//! let routed = router.route(b"logs", b"db.error", None, &mut scratch)?;
//! assert_eq!(routed.handles().collect::<Vec<_>>(), ["errors"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::{Dest, DestinationKind, Router, erl, headers};
use amqp_types::{Decimal, FieldArray, FieldTable, FieldValue, LongString, ShortString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Why a definitions file could not be loaded.
#[derive(Debug)]
pub enum DefinitionsError {
    /// The text is not JSON of the expected shape.
    Json(serde_json::Error),
    /// The JSON is well-formed but names something impossible (an unknown
    /// exchange type, a binding to a missing queue, a bad policy pattern).
    Invalid(String),
}

impl fmt::Display for DefinitionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DefinitionsError::Json(e) => write!(f, "malformed definitions JSON: {e}"),
            DefinitionsError::Invalid(s) => write!(f, "invalid definitions: {s}"),
        }
    }
}

impl std::error::Error for DefinitionsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DefinitionsError::Json(e) => Some(e),
            DefinitionsError::Invalid(_) => None,
        }
    }
}

impl From<serde_json::Error> for DefinitionsError {
    fn from(e: serde_json::Error) -> Self {
        DefinitionsError::Json(e)
    }
}

fn invalid(s: impl Into<String>) -> DefinitionsError {
    DefinitionsError::Invalid(s.into())
}

/// One exchange of the export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    /// Name.
    pub name: String,
    /// Virtual host (absent in a single-vhost export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    /// Type name.
    #[serde(rename = "type")]
    pub kind: String,
    /// Durable flag.
    #[serde(default)]
    pub durable: bool,
    /// Auto-delete flag.
    #[serde(default)]
    pub auto_delete: bool,
    /// Internal flag.
    #[serde(default)]
    pub internal: bool,
    /// Arguments, as untyped JSON.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// One queue of the export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Name.
    pub name: String,
    /// Virtual host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    /// Durable flag.
    #[serde(default)]
    pub durable: bool,
    /// Auto-delete flag.
    #[serde(default)]
    pub auto_delete: bool,
    /// Arguments, as untyped JSON.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// One binding of the export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    /// Source exchange.
    pub source: String,
    /// Virtual host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    /// Destination queue or exchange.
    pub destination: String,
    /// `"queue"` or `"exchange"`.
    pub destination_type: String,
    /// Binding key.
    #[serde(default)]
    pub routing_key: String,
    /// Arguments, as untyped JSON.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// One policy of the export (only `alternate-exchange` is used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDef {
    /// Virtual host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<String>,
    /// Policy name.
    pub name: String,
    /// Regular expression over resource names.
    pub pattern: String,
    /// `"exchanges"`, `"queues"` or `"all"`.
    #[serde(rename = "apply-to", default = "all")]
    pub apply_to: String,
    /// The policy's keys.
    #[serde(default)]
    pub definition: Map<String, Value>,
    /// Higher wins.
    #[serde(default)]
    pub priority: i64,
}

fn all() -> String {
    "all".into()
}

/// What [`Topology::load`] built.
#[derive(Debug)]
pub struct Loaded<Q> {
    /// The router.
    pub router: Router<Q>,
    /// Bindings left out because their source or destination is missing.
    pub skipped: Vec<BindingDef>,
}

/// The topology part of a definitions export.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// Exchanges.
    #[serde(default)]
    pub exchanges: Vec<ExchangeDef>,
    /// Queues.
    #[serde(default)]
    pub queues: Vec<QueueDef>,
    /// Bindings.
    #[serde(default)]
    pub bindings: Vec<BindingDef>,
    /// Policies (only those with `alternate-exchange` matter here).
    #[serde(default)]
    pub policies: Vec<PolicyDef>,
}

/// Untyped JSON to a field value as RabbitMQ's import does
/// (`rabbit_misc:to_amqp_table`): strings are `S`, integers `l`, other
/// numbers `d`, booleans `t`, lists `A`, objects `F`, null `V`.
/// Iterative over nesting.
pub fn json_to_value(v: &Value) -> FieldValue {
    fn scalar(v: &Value) -> Option<FieldValue> {
        Some(match v {
            Value::Null => FieldValue::Void,
            Value::Bool(b) => FieldValue::Bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => FieldValue::I64(i),
                (None, Some(u), _) => FieldValue::Timestamp(u),
                (_, _, Some(f)) => FieldValue::F64(f),
                _ => FieldValue::Void,
            },
            Value::String(s) => FieldValue::LongString(LongString::from(s.as_str())),
            _ => return None,
        })
    }
    enum Frame<'a> {
        Array(std::slice::Iter<'a, Value>, Vec<FieldValue>),
        Table(serde_json::map::Iter<'a>, FieldTable, Option<ShortString>),
    }
    if let Some(s) = scalar(v) {
        return s;
    }
    fn open(v: &Value) -> Option<Frame<'_>> {
        match v {
            Value::Array(a) => Some(Frame::Array(a.iter(), Vec::new())),
            Value::Object(o) => Some(Frame::Table(o.iter(), FieldTable::new(), None)),
            _ => None,
        }
    }
    let mut stack: Vec<Frame<'_>> = vec![open(v).expect("container")];
    loop {
        let top = stack.last_mut().expect("non-empty");
        let next: Option<(Option<ShortString>, &Value)> = match top {
            Frame::Array(it, _) => it.next().map(|v| (None, v)),
            Frame::Table(it, _, _) => it.next().map(|(k, v)| {
                (
                    Some(
                        ShortString::from_bytes(&k.as_bytes()[..k.len().min(255)])
                            .unwrap_or_default(),
                    ),
                    v,
                )
            }),
        };
        let done: FieldValue = match next {
            Some((key, child)) => {
                if let Some(s) = scalar(child) {
                    match top {
                        Frame::Array(_, items) => items.push(s),
                        Frame::Table(_, t, _) => t.push(key.unwrap_or_default(), s),
                    }
                    continue;
                }
                if let Frame::Table(_, _, pending) = top {
                    *pending = key;
                }
                stack.push(open(child).expect("container"));
                continue;
            }
            None => match stack.pop().expect("non-empty") {
                Frame::Array(_, items) => FieldValue::Array(FieldArray::from(items)),
                Frame::Table(_, t, _) => FieldValue::Table(t),
            },
        };
        match stack.last_mut() {
            None => return done,
            Some(Frame::Array(_, items)) => items.push(done),
            Some(Frame::Table(_, t, pending)) => t.push(pending.take().unwrap_or_default(), done),
        }
    }
}

/// A field value as untyped JSON, as RabbitMQ's export writes it (type
/// letters are lost: integers and timestamps are numbers, `S` and `x` are
/// strings, decimals are numbers).
pub fn value_to_json(v: &FieldValue) -> Value {
    fn num(f: f64) -> Value {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
    match v {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::F32(f) => num(f64::from(*f)),
        FieldValue::F64(f) => num(*f),
        FieldValue::Decimal(Decimal { scale, value }) => {
            num(f64::from(*value) / 10f64.powi(i32::from(*scale)))
        }
        FieldValue::LongString(s) | FieldValue::ByteArray(s) => {
            Value::String(s.to_string_lossy().into_owned())
        }
        FieldValue::Void => Value::Null,
        FieldValue::Array(a) => Value::Array(a.iter().map(value_to_json).collect()),
        FieldValue::Table(t) => Value::Object(table_to_json(t)),
        other => match other.as_integer() {
            Some(i) => i64::try_from(i)
                .map(Value::from)
                .or_else(|_| u64::try_from(i).map(Value::from))
                .unwrap_or(Value::Null),
            None => Value::Null,
        },
    }
}

/// [`json_to_value`] for a whole arguments object.
pub fn json_to_table(o: &Map<String, Value>) -> FieldTable {
    match json_to_value(&Value::Object(o.clone())) {
        FieldValue::Table(t) => t,
        _ => FieldTable::new(),
    }
}

/// [`value_to_json`] for a whole table.
pub fn table_to_json(t: &FieldTable) -> Map<String, Value> {
    t.iter()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), value_to_json(v)))
        .collect()
}

fn in_vhost(item: &Option<String>, vhost: &str) -> bool {
    item.as_deref().is_none_or(|v| v == vhost)
}

fn name(s: &str, what: &str) -> Result<ShortString, DefinitionsError> {
    ShortString::try_from(s)
        .map_err(|_| invalid(format!("{what} name longer than 255 bytes: {s:?}")))
}

impl Topology {
    /// Reads a definitions export (the whole file; unknown keys ignored).
    pub fn from_json(text: &str) -> Result<Topology, DefinitionsError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Writes the topology as definitions JSON (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The virtual hosts named anywhere in the topology.
    pub fn vhosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .exchanges
            .iter()
            .map(|x| &x.vhost)
            .chain(self.queues.iter().map(|q| &q.vhost))
            .chain(self.bindings.iter().map(|b| &b.vhost))
            .filter_map(|v| v.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Builds a router for `vhost` (items without a vhost belong to every
    /// vhost) holding the built-in exchanges plus this topology; `make`
    /// gives each queue its handle. Existing exchanges (the built-ins) are
    /// kept as they are; policies with `alternate-exchange` are applied to
    /// the exchanges they match (highest priority wins, as RabbitMQ).
    pub fn to_router<Q>(
        &self,
        vhost: &str,
        make: impl FnMut(&ShortString) -> Q,
    ) -> Result<Router<Q>, DefinitionsError> {
        Ok(self.load(vhost, make)?.router)
    }

    /// [`to_router`](Self::to_router), also reporting the bindings left
    /// out because an end is missing. RabbitMQ's own export leaves internal
    /// exchanges out but keeps the bindings that lead to them, so a real
    /// export can have such dangling bindings.
    pub fn load<Q>(
        &self,
        vhost: &str,
        mut make: impl FnMut(&ShortString) -> Q,
    ) -> Result<Loaded<Q>, DefinitionsError> {
        let mut skipped = Vec::new();
        let mut r = Router::new(vhost);
        for x in self.exchanges.iter().filter(|x| in_vhost(&x.vhost, vhost)) {
            let n = name(&x.name, "exchange")?;
            if n.is_empty() || r.exchange(&n).is_some() {
                continue;
            }
            let kind = r.kind(x.kind.as_bytes()).ok_or_else(|| {
                invalid(format!(
                    "exchange '{}' has unknown type '{}'",
                    x.name, x.kind
                ))
            })?;
            r.insert_exchange(
                n,
                kind,
                x.durable,
                x.auto_delete,
                x.internal,
                json_to_table(&x.arguments),
            );
        }
        for q in self.queues.iter().filter(|q| in_vhost(&q.vhost, vhost)) {
            let n = name(&q.name, "queue")?;
            if r.queue(&n).is_some() {
                continue;
            }
            let handle = make(&n);
            let id = r.queues.insert(crate::Queue {
                name: n.clone(),
                durable: q.durable,
                auto_delete: q.auto_delete,
                exclusive_owner: None,
                arguments: json_to_table(&q.arguments),
                handle,
                inbound: Vec::new(),
            });
            r.queue_names.insert(n, id);
        }
        for b in self.bindings.iter().filter(|b| in_vhost(&b.vhost, vhost)) {
            let source = r.exchange_names.get(b.source.as_bytes()).copied();
            let dest = match b.destination_type.as_str() {
                "queue" => r
                    .queue_names
                    .get(b.destination.as_bytes())
                    .map(|&q| Dest::Queue(q)),
                "exchange" => r
                    .exchange_names
                    .get(b.destination.as_bytes())
                    .map(|&x| Dest::Exchange(x)),
                other => return Err(invalid(format!("binding destination_type '{other}'"))),
            };
            let (Some(source), Some(dest)) = (source, dest) else {
                skipped.push(b.clone());
                continue;
            };
            let args = json_to_table(&b.arguments);
            if let Some(x) = r.exchanges.get(source) {
                let valid = match &x.kind {
                    crate::Kind::Headers => headers::validate_binding(&args),
                    crate::Kind::Custom(t) => t.validate_binding(b.routing_key.as_bytes(), &args),
                    _ => Ok(()),
                };
                valid.map_err(|e| {
                    invalid(format!(
                        "binding from '{}' to '{}': {e}",
                        b.source, b.destination
                    ))
                })?;
            }
            let key = name(&b.routing_key, "routing key")?;
            let args = headers::sort_table(&args);
            if r.find_binding(source, dest, &key, &args).is_none() {
                r.add_binding(source, dest, key, args);
            }
        }
        // Policies: the highest-priority matching policy that applies to
        // exchanges decides; only its alternate-exchange counts.
        let mut compiled = Vec::new();
        for p in self.policies.iter().filter(|p| in_vhost(&p.vhost, vhost)) {
            if !matches!(p.apply_to.as_str(), "exchanges" | "all") {
                continue;
            }
            let re = regex::Regex::new(&p.pattern).map_err(|e| {
                invalid(format!("policy '{}' pattern {:?}: {e}", p.name, p.pattern))
            })?;
            compiled.push((p, re));
        }
        compiled.sort_by_key(|(p, _)| std::cmp::Reverse(p.priority));
        let names: Vec<ShortString> = r.exchanges().map(|x| x.name().clone()).collect();
        for x in names {
            let text = x.to_string_lossy();
            let ae = compiled
                .iter()
                .find(|(_, re)| re.is_match(&text))
                .and_then(|(p, _)| p.definition.get("alternate-exchange"))
                .and_then(Value::as_str)
                .and_then(|s| ShortString::try_from(s).ok());
            if ae.is_some() {
                r.set_policy_alternate_exchange(&x, ae);
            }
        }
        Ok(Loaded { router: r, skipped })
    }

    /// The topology of `router` (built-in `amq.*` exchanges left out, as
    /// RabbitMQ's export does). Alternate exchanges set by policy come out
    /// as one policy per exchange, pattern `^name$`.
    pub fn from_router<Q>(router: &Router<Q>) -> Topology {
        let vhost = Some(router.vhost().to_owned());
        let builtin = |n: &ShortString| crate::BUILTIN_EXCHANGES.iter().any(|(b, _, _)| n == *b);
        let mut t = Topology::default();
        let mut exchanges: Vec<_> = router.exchanges().filter(|x| !builtin(x.name())).collect();
        exchanges.sort_by(|a, b| a.name().cmp(b.name()));
        for x in exchanges {
            t.exchanges.push(ExchangeDef {
                name: x.name().to_string_lossy().into_owned(),
                vhost: vhost.clone(),
                kind: x.type_name().to_owned(),
                durable: x.durable(),
                auto_delete: x.auto_delete(),
                internal: x.internal(),
                arguments: table_to_json(x.arguments()),
            });
            if let Some(ae) = x.policy_alternate_exchange() {
                let mut definition = Map::new();
                definition.insert(
                    "alternate-exchange".into(),
                    Value::String(ae.to_string_lossy().into_owned()),
                );
                t.policies.push(PolicyDef {
                    vhost: vhost.clone(),
                    name: format!("ae-{}", x.name()),
                    pattern: format!("^{}$", regex::escape(&x.name().to_string_lossy())),
                    apply_to: "exchanges".into(),
                    definition,
                    priority: 0,
                });
            }
        }
        let mut queues: Vec<_> = router.queues().collect();
        queues.sort_by(|a, b| a.name().cmp(b.name()));
        for q in queues {
            t.queues.push(QueueDef {
                name: q.name().to_string_lossy().into_owned(),
                vhost: vhost.clone(),
                durable: q.durable(),
                auto_delete: q.auto_delete(),
                arguments: table_to_json(q.arguments()),
            });
        }
        let mut bindings: Vec<_> = router.bindings().collect();
        bindings.sort_by(|a, b| {
            (&a.source, &a.destination, &a.routing_key).cmp(&(
                &b.source,
                &b.destination,
                &b.routing_key,
            ))
        });
        for b in bindings {
            t.bindings.push(BindingDef {
                source: b.source.to_string_lossy().into_owned(),
                vhost: vhost.clone(),
                destination: b.destination.to_string_lossy().into_owned(),
                destination_type: match b.destination_kind {
                    DestinationKind::Queue => "queue",
                    DestinationKind::Exchange => "exchange",
                }
                .into(),
                routing_key: b.routing_key.to_string_lossy().into_owned(),
                arguments: table_to_json(&b.arguments),
            });
        }
        t
    }
}

/// Formats a field value as RabbitMQ would print it in a reply text
/// (`<<"text">>`, `1`, `[{signedint,1}]`), for tools that explain routing.
pub fn erlang_term(v: &FieldValue) -> String {
    let mut s = String::new();
    erl::value(v, &mut s);
    s
}
