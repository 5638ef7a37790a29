//! Policies, as RabbitMQ 3.10 has them: a named rule per virtual host
//! (a regular expression over queue or exchange names, what it applies to,
//! a priority and a definition of keys) that sets lifecycle settings on
//! every matching queue or exchange, now and as they are declared.
//!
//! Of the policies matching a resource, the one with the highest priority
//! applies (equal priorities: the first by name); its definition combines
//! with the queue's own `x-` arguments as RabbitMQ's
//! `process_args_policy` does: for TTLs, expiry, length limits and the
//! delivery limit the lower value wins; for the dead-letter exchange and
//! routing key and the overflow behaviour the argument wins.
//!
//! The definition is validated with RabbitMQ's rules and texts ("Validation
//! failed\n\n… is not a valid message TTL\n"). Keys RabbitMQ accepts for
//! features this broker does not have (mirroring, lazy mode, federation,
//! in-memory limits, stream retention) are accepted, kept and shown, and
//! have no effect.

use amqp_router::definitions::PolicyDef;
use amqp_types::ShortString;
use serde_json::{Map, Value};

use crate::lifecycle::{Overflow, QueueArgs, QueueKind};

/// What a policy applies to (`apply-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    /// `queues`.
    Queues,
    /// `exchanges`.
    Exchanges,
    /// `all`.
    All,
}

impl ApplyTo {
    /// RabbitMQ's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::All => "all",
        }
    }
}

/// The keys of a definition that change what the broker does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    /// `message-ttl`, ms.
    pub message_ttl: Option<u64>,
    /// `expires`, ms.
    pub expires: Option<u64>,
    /// `dead-letter-exchange`.
    pub dead_letter_exchange: Option<ShortString>,
    /// `dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<ShortString>,
    /// `max-length`.
    pub max_length: Option<u64>,
    /// `max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// `overflow`.
    pub overflow: Option<Overflow>,
    /// `delivery-limit` (quorum queues).
    pub delivery_limit: Option<u64>,
    /// `alternate-exchange` (exchanges).
    pub alternate_exchange: Option<ShortString>,
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its name.
    pub name: String,
    /// The pattern as given.
    pub pattern: String,
    regex: regex::Regex,
    /// What it applies to.
    pub apply_to: ApplyTo,
    /// Higher wins.
    pub priority: i64,
    /// The definition as given (shown by the management API and exports).
    pub definition: Map<String, Value>,
    /// What the definition sets.
    pub keys: Keys,
}

/// The keys RabbitMQ 3.10 recognises in a policy definition.
const KNOWN: &[&str] = &[
    "alternate-exchange",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "dead-letter-strategy",
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
    "overflow",
    "queue-mode",
    "queue-master-locator",
    "queue-leader-locator",
    "max-age",
    "stream-max-segment-size-bytes",
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "ha-sync-batch-size",
    "ha-promote-on-shutdown",
    "ha-promote-on-failure",
    "federation-upstream",
    "federation-upstream-set",
];

/// An Erlang term as `~p` prints a JSON value in RabbitMQ's messages.
fn erlang(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Array(a) => format!("[{}]", a.iter().map(erlang).collect::<Vec<_>>().join(",")),
        Value::Object(o) => format!(
            "[{}]",
            o.iter()
                .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erlang(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

fn failed(why: String) -> String {
    format!("Validation failed\n\n{why}\n")
}

impl Policy {
    /// Validates a policy as RabbitMQ's `rabbit_policy` does; the error is
    /// RabbitMQ's text.
    pub fn new(def: &PolicyDef) -> Result<Policy, String> {
        let apply_to = match def.apply_to.as_str() {
            "queues" => ApplyTo::Queues,
            "exchanges" => ApplyTo::Exchanges,
            "all" => ApplyTo::All,
            other => {
                return Err(failed(format!(
                    "apply-to '{other}' unrecognised; should be 'queues', 'exchanges' or 'all'"
                )));
            }
        };
        let regex = regex::Regex::new(&def.pattern).map_err(|e| {
            failed(format!(
                "pattern should be regular expression but is invalid: {{\"{}\"}}",
                e.to_string().lines().last().unwrap_or_default().trim()
            ))
        })?;
        if def.definition.is_empty() {
            return Err(failed("no policy provided".into()));
        }
        let unknown: Vec<(&String, &Value)> = def
            .definition
            .iter()
            .filter(|(k, _)| !KNOWN.contains(&k.as_str()))
            .collect();
        if !unknown.is_empty() {
            let list: Vec<String> = unknown
                .iter()
                .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erlang(v)))
                .collect();
            return Err(failed(format!(
                "[{}] are not recognised policy settings",
                list.join(",")
            )));
        }
        let mut keys = Keys::default();
        for (k, v) in &def.definition {
            let bad = |what: &str| failed(format!("{} is not a valid {what}", erlang(v)));
            let int = |least: u64, what: &str| {
                v.as_u64().filter(|n| *n >= least).ok_or_else(|| bad(what))
            };
            let name = |what: &str| {
                v.as_str()
                    .and_then(|s| ShortString::try_from(s).ok())
                    .ok_or_else(|| bad(what))
            };
            match k.as_str() {
                "message-ttl" => keys.message_ttl = Some(int(0, "message TTL")?),
                "expires" => keys.expires = Some(int(1, "queue expiry")?),
                "max-length" => keys.max_length = Some(int(0, "maximum length")?),
                "max-length-bytes" => {
                    keys.max_length_bytes = Some(int(0, "maximum length in bytes")?);
                }
                "max-in-memory-length" => {
                    int(0, "maximum memory in length")?;
                }
                "max-in-memory-bytes" => {
                    int(0, "maximum memory in bytes")?;
                }
                "delivery-limit" => keys.delivery_limit = Some(int(0, "delivery limit")?),
                "dead-letter-exchange" => {
                    keys.dead_letter_exchange = Some(name("dead letter exchange name")?);
                }
                "dead-letter-routing-key" => {
                    keys.dead_letter_routing_key = Some(name("dead letter routing key")?);
                }
                "alternate-exchange" => {
                    keys.alternate_exchange = Some(name("alternate exchange name")?);
                }
                "overflow" => {
                    keys.overflow = Some(match v.as_str() {
                        Some("drop-head") => Overflow::DropHead,
                        Some("reject-publish") => Overflow::RejectPublish,
                        Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                        _ => return Err(bad("overflow value")),
                    });
                }
                "queue-mode" if !matches!(v.as_str(), Some("default" | "lazy")) => {
                    return Err(bad("queue-mode value"));
                }
                _ => {}
            }
        }
        Ok(Policy {
            name: def.name.clone(),
            pattern: def.pattern.clone(),
            regex,
            apply_to,
            priority: def.priority,
            definition: def.definition.clone(),
            keys,
        })
    }

    /// The policy as a definitions export has it.
    pub fn to_def(&self, vhost: &str) -> PolicyDef {
        PolicyDef {
            vhost: Some(vhost.to_owned()),
            name: self.name.clone(),
            pattern: self.pattern.clone(),
            apply_to: self.apply_to.as_str().into(),
            definition: self.definition.clone(),
            priority: self.priority,
        }
    }

    /// Whether it applies to the queue (`queue`) or exchange named `name`.
    pub fn matches(&self, name: &[u8], queue: bool) -> bool {
        let kind = match self.apply_to {
            ApplyTo::All => true,
            ApplyTo::Queues => queue,
            ApplyTo::Exchanges => !queue,
        };
        kind && self.regex.is_match(&String::from_utf8_lossy(name))
    }
}

/// The policy in force for the queue (`queue`) or exchange named `name`
/// among `policies` (in name order): the highest priority, the first by
/// name among equals, as RabbitMQ's stable sort leaves them.
pub fn effective<'a>(
    policies: impl IntoIterator<Item = &'a Policy>,
    name: &[u8],
    queue: bool,
) -> Option<&'a Policy> {
    let mut best: Option<&Policy> = None;
    for p in policies {
        if p.matches(name, queue) && best.is_none_or(|b| p.priority > b.priority) {
            best = Some(p);
        }
    }
    best
}

/// A queue's settings: its arguments' (`declared`) combined with a
/// policy's keys as RabbitMQ 3.10 combines them.
pub fn combine(declared: &QueueArgs, policy: Option<&Keys>) -> QueueArgs {
    let Some(p) = policy else {
        return declared.clone();
    };
    let min = |arg: Option<u64>, pol: Option<u64>| match (arg, pol) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut out = declared.clone();
    out.message_ttl = min(declared.message_ttl, p.message_ttl);
    out.expires = min(declared.expires, p.expires);
    out.max_length = min(declared.max_length, p.max_length);
    out.max_length_bytes = min(declared.max_length_bytes, p.max_length_bytes);
    if declared.kind == QueueKind::Quorum {
        out.delivery_limit = min(declared.delivery_limit, p.delivery_limit);
    }
    if declared.dead_letter_exchange.is_none() {
        out.dead_letter_exchange = p.dead_letter_exchange.clone();
    }
    if declared.dead_letter_routing_key.is_none() {
        out.dead_letter_routing_key = p.dead_letter_routing_key.clone();
    }
    if !declared.overflow_declared {
        out.overflow = match p.overflow {
            // Quorum queues in 3.10 treat reject-publish-dlx as the default.
            Some(Overflow::RejectPublishDlx) if declared.kind == QueueKind::Quorum => {
                Overflow::DropHead
            }
            Some(o) => o,
            None => declared.overflow,
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(name: &str, pattern: &str, apply_to: &str, priority: i64, d: Value) -> PolicyDef {
        PolicyDef {
            vhost: None,
            name: name.into(),
            pattern: pattern.into(),
            apply_to: apply_to.into(),
            definition: d.as_object().cloned().unwrap_or_default(),
            priority,
        }
    }

    #[test]
    fn validation_says_what_rabbitmq_says() {
        let e = |d: Value| Policy::new(&def("p", "x", "queues", 0, d)).unwrap_err();
        assert_eq!(
            e(json!({"max-length": -1})),
            "Validation failed\n\n-1 is not a valid maximum length\n"
        );
        assert_eq!(
            e(json!({"foo": 1})),
            "Validation failed\n\n[{<<\"foo\">>,1}] are not recognised policy settings\n"
        );
        assert_eq!(
            e(json!({"message-ttl": "x"})),
            "Validation failed\n\n<<\"x\">> is not a valid message TTL\n"
        );
        assert_eq!(
            e(json!({"overflow": "nope"})),
            "Validation failed\n\n<<\"nope\">> is not a valid overflow value\n"
        );
        assert_eq!(e(json!({})), "Validation failed\n\nno policy provided\n");
        assert_eq!(
            Policy::new(&def("p", "x", "foo", 0, json!({"expires": 1}))).unwrap_err(),
            "Validation failed\n\napply-to 'foo' unrecognised; should be 'queues', 'exchanges' or 'all'\n"
        );
        assert!(
            Policy::new(&def("p", "(", "all", 0, json!({"expires": 1})))
                .unwrap_err()
                .starts_with("Validation failed\n\npattern should be regular expression")
        );
        // Accepted without effect.
        assert!(Policy::new(&def("p", "x", "all", 0, json!({"ha-mode": "all"}))).is_ok());
    }

    #[test]
    fn the_highest_priority_then_the_first_name_applies_to_its_kind() {
        let ps: Vec<Policy> = [
            def("a", "^q", "queues", 1, json!({"max-length": 1})),
            def("b", "^q", "all", 5, json!({"max-length": 2})),
            def("c", "^q", "queues", 5, json!({"max-length": 3})),
            def(
                "d",
                "^q",
                "exchanges",
                9,
                json!({"alternate-exchange": "ae"}),
            ),
        ]
        .iter()
        .map(|d| Policy::new(d).unwrap())
        .collect();
        assert_eq!(effective(&ps, b"q1", true).unwrap().name, "b");
        assert_eq!(effective(&ps, b"q1", false).unwrap().name, "d");
        assert!(effective(&ps, b"x", true).is_none());
    }

    #[test]
    fn limits_take_the_lower_and_arguments_win_the_rest() {
        let mut declared = QueueArgs {
            max_length: Some(10),
            dead_letter_exchange: Some(ShortString::from_static("arg-dlx")),
            ..QueueArgs::default()
        };
        let keys = Keys {
            max_length: Some(3),
            message_ttl: Some(100),
            dead_letter_exchange: Some(ShortString::from_static("pol-dlx")),
            dead_letter_routing_key: Some(ShortString::from_static("rk")),
            overflow: Some(Overflow::RejectPublish),
            delivery_limit: Some(2),
            ..Keys::default()
        };
        let c = combine(&declared, Some(&keys));
        assert_eq!(c.max_length, Some(3));
        assert_eq!(c.message_ttl, Some(100));
        assert_eq!(c.dead_letter_exchange.unwrap().as_bytes(), b"arg-dlx");
        assert_eq!(c.dead_letter_routing_key.unwrap().as_bytes(), b"rk");
        assert_eq!(c.overflow, Overflow::RejectPublish);
        assert_eq!(
            c.delivery_limit, None,
            "classic queues have no delivery limit"
        );
        declared.overflow_declared = true;
        assert_eq!(combine(&declared, Some(&keys)).overflow, Overflow::DropHead);
        declared.kind = QueueKind::Quorum;
        assert_eq!(combine(&declared, Some(&keys)).delivery_limit, Some(2));
        assert_eq!(combine(&declared, None), declared);
    }
}
