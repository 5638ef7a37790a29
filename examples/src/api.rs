//! A blocking client for RabbitMQ's management HTTP API (plain http, basic
//! authentication), and the tables `amqp-client list` prints from it.

use serde_json::Value;
use std::time::Duration;

/// The management API at one base URL, as one user.
pub struct Api {
    base: String,
    authorization: String,
    agent: ureq::Agent,
}

/// What `amqp-client list` can list: the endpoint and the default columns
/// (rabbitmqadmin's, give or take).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listing {
    /// The word on the command line (`queues`).
    pub name: &'static str,
    /// The endpoint listing every vhost's objects (`/api/queues`).
    pub all: &'static str,
    /// The endpoint for one vhost, `{}` standing for the encoded vhost
    /// (`/api/queues/{}`); `None` when the objects belong to no vhost.
    pub one_vhost: Option<&'static str>,
    /// The default columns; `a.b` is the key `b` of the object under `a`.
    pub columns: &'static [&'static str],
}

/// Every listing, in the order `--help` names them.
pub const LISTINGS: &[Listing] = &[
    Listing {
        name: "queues",
        all: "/api/queues",
        one_vhost: Some("/api/queues/{}"),
        columns: &[
            "vhost",
            "name",
            "type",
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ],
    },
    Listing {
        name: "exchanges",
        all: "/api/exchanges",
        one_vhost: Some("/api/exchanges/{}"),
        columns: &[
            "vhost",
            "name",
            "type",
            "durable",
            "auto_delete",
            "internal",
        ],
    },
    Listing {
        name: "bindings",
        all: "/api/bindings",
        one_vhost: Some("/api/bindings/{}"),
        columns: &[
            "vhost",
            "source",
            "destination",
            "destination_type",
            "routing_key",
        ],
    },
    Listing {
        name: "connections",
        all: "/api/connections",
        one_vhost: Some("/api/vhosts/{}/connections"),
        columns: &["name", "user", "vhost", "channels", "state"],
    },
    Listing {
        name: "channels",
        all: "/api/channels",
        one_vhost: Some("/api/vhosts/{}/channels"),
        columns: &[
            "name",
            "user",
            "vhost",
            "consumer_count",
            "messages_unacknowledged",
        ],
    },
    Listing {
        name: "consumers",
        all: "/api/consumers",
        one_vhost: Some("/api/consumers/{}"),
        columns: &[
            "queue.vhost",
            "queue.name",
            "channel_details.name",
            "consumer_tag",
            "ack_required",
            "prefetch_count",
        ],
    },
    Listing {
        name: "vhosts",
        all: "/api/vhosts",
        one_vhost: None,
        columns: &["name", "messages"],
    },
    Listing {
        name: "users",
        all: "/api/users",
        one_vhost: None,
        columns: &["name", "tags"],
    },
    Listing {
        name: "policies",
        all: "/api/policies",
        one_vhost: Some("/api/policies/{}"),
        columns: &[
            "vhost",
            "name",
            "pattern",
            "apply-to",
            "definition",
            "priority",
        ],
    },
];

/// The listing called `name`.
pub fn listing(name: &str) -> Option<&'static Listing> {
    LISTINGS.iter().find(|l| l.name == name)
}

/// Percent-encodes one path segment: every byte but `A-Za-z0-9-._~`
/// (the default vhost `/` becomes `%2F`).
pub fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Standard base64 with padding (for the basic authorization header).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What went wrong talking to the API, with RabbitMQ's `error` and
/// `reason` and advice on what to check.
pub fn status_error(method: &str, path: &str, status: u16, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    };
    let mut text = format!("{method} {path}: HTTP {status}");
    match (field("error"), field("reason")) {
        (Some(e), Some(r)) => text.push_str(&format!(" {e}: {r}")),
        (Some(e), None) | (None, Some(e)) => text.push_str(&format!(" {e}")),
        (None, None) if !body.trim().is_empty() => text.push_str(&format!(
            " {}",
            body.trim().chars().take(200).collect::<String>()
        )),
        (None, None) => {}
    }
    let advice = match status {
        401 => Some("check --user/--password (or the USER:PASS in --uri)"),
        403 => Some("the user lacks a management tag or the permission for this"),
        404 => {
            Some("the vhost or object does not exist: see amqp-client list vhosts / list queues")
        }
        405 => Some("this endpoint does not take that method: is --api a management API?"),
        400 => Some("the broker refused the request body; check the file or the arguments"),
        _ => None,
    };
    if let Some(a) = advice {
        text.push_str(&format!("\n({a})"));
    }
    text
}

impl Api {
    /// The API at `base` (such as `http://127.0.0.1:15672`), as `user`.
    pub fn new(base: &str, user: &str, password: &str, timeout: Duration) -> Api {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Api {
            base: base.trim_end_matches('/').to_owned(),
            authorization: format!("Basic {}", base64(format!("{user}:{password}").as_bytes())),
            agent,
        }
    }

    /// Sends a request; the body of a 2xx answer, or the error explained.
    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<String, String> {
        let url = format!("{}{path}", self.base);
        if !url.starts_with("http://") {
            return Err(format!(
                "--api {}: only http:// URLs are supported",
                self.base
            ));
        }
        let result = match (method, body) {
            ("GET", _) => self
                .agent
                .get(&url)
                .header("authorization", &self.authorization)
                .call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("authorization", &self.authorization)
                .call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("authorization", &self.authorization)
                .header("content-type", "application/json")
                .send(body.unwrap_or("")),
        };
        let mut response = result.map_err(|e| {
            format!(
                "cannot reach the management API at {}: {e}\n\
                 (is the management API enabled (rabbitmq-plugins enable rabbitmq_management, \
                 or amqp-broker --management ADDR), and is --api pointing at it?)",
                self.base
            )
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .map_err(|e| format!("{method} {path}: reading the answer: {e}"))?;
        if (200..300).contains(&status) {
            Ok(text)
        } else {
            Err(status_error(method, path, status, &text))
        }
    }

    /// GET `path` as JSON.
    pub fn get(&self, path: &str) -> Result<Value, String> {
        let text = self.request("GET", path, None)?;
        serde_json::from_str(&text).map_err(|e| format!("GET {path}: not JSON: {e}"))
    }

    /// DELETE `path`.
    pub fn delete(&self, path: &str) -> Result<(), String> {
        self.request("DELETE", path, None).map(drop)
    }

    /// POST `body` (JSON) to `path`; the answer's body.
    pub fn post(&self, path: &str, body: &str) -> Result<String, String> {
        self.request("POST", path, Some(body))
    }
}

/// The value at a column: `a.b` looks up `b` in the object under `a`.
pub fn lookup<'a>(object: &'a Value, column: &str) -> Option<&'a Value> {
    object
        .get(column)
        .or_else(|| column.split('.').try_fold(object, |v, k| v.get(k)))
}

/// A cell's text: strings bare, nothing for null or missing, lists of
/// strings joined by commas, other values as compact JSON.
pub fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Some(v) => v.to_string(),
    }
}

/// An aligned table: a header line of the column names, then one line per
/// object; numbers right-aligned, the rest left-aligned, two spaces
/// between columns and no trailing blanks.
pub fn table(rows: &[Value], columns: &[&str]) -> String {
    let cells: Vec<Vec<(String, bool)>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| {
                    let v = lookup(row, c);
                    (cell(v), v.is_some_and(Value::is_number))
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].0.chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let header: Vec<(String, bool)> = columns.iter().map(|c| (c.to_string(), false)).collect();
    for line in std::iter::once(&header).chain(&cells) {
        let mut text = String::new();
        for (i, ((s, number), w)) in line.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = w - s.chars().count();
            if *number {
                text.push_str(&" ".repeat(pad));
                text.push_str(s);
            } else {
                text.push_str(s);
                text.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// The objects cut down to `columns` (a dotted column becomes a key of
/// its own, `"queue.name"`), for `--format json --columns ...`.
pub fn project(rows: &[Value], columns: &[&str]) -> Value {
    Value::Array(
        rows.iter()
            .map(|row| {
                Value::Object(
                    columns
                        .iter()
                        .map(|c| {
                            (
                                (*c).to_owned(),
                                lookup(row, c).cloned().unwrap_or(Value::Null),
                            )
                        })
                        .collect(),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_and_encode() {
        assert_eq!(base64(b"guest:guest"), "Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b""), "");
        assert_eq!(encode("/"), "%2F");
        assert_eq!(encode("a b/c.d"), "a%20b%2Fc.d");
    }

    #[test]
    fn tables() {
        let rows = vec![
            json!({"vhost": "/", "name": "q", "messages": 12, "queue": {"name": "n"}}),
            json!({"vhost": "/", "name": "longer", "messages": 3, "tags": ["a", "b"]}),
        ];
        let t = table(&rows, &["name", "messages", "queue.name", "tags"]);
        assert_eq!(
            t,
            "name    messages  queue.name  tags\n\
             q             12  n\n\
             longer         3              a,b\n"
        );
        assert_eq!(
            project(&rows, &["name", "queue.name"]),
            json!([{"name": "q", "queue.name": "n"}, {"name": "longer", "queue.name": null}])
        );
        assert_eq!(table(&[], &["a", "bb"]), "a  bb\n");
    }

    #[test]
    fn errors() {
        let e = status_error(
            "GET",
            "/api/queues/nope",
            404,
            r#"{"error":"Object Not Found","reason":"Not Found"}"#,
        );
        assert!(
            e.starts_with("GET /api/queues/nope: HTTP 404 Object Not Found: Not Found\n("),
            "{e}"
        );
        assert!(e.contains("does not exist"), "{e}");
        assert!(status_error("GET", "/", 401, "").contains("--user/--password"));
    }
}
