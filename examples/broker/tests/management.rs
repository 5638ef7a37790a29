//! The management HTTP API and the Prometheus exporter: the broker binary
//! on free ports (AMQP 5790..5799, HTTP 15700..15709), topology and
//! traffic from a client, then the JSON RabbitMQ's clients read and the
//! metrics text. `rabbitmq_shapes_match` compares with a live RabbitMQ
//! 3.10 whose management plugin is enabled (skipped with
//! `AMQP_INTEROP=0`).

mod support;

use support::{Client, free_ports, http};

use amqp_codec::Event;
use amqp_codec::types::method::*;
use amqp_codec::types::{FieldTable, FieldValue, Method, ReplyCode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The same topology and traffic as `tests/support/management_traffic.py`:
/// exchange `P-x` (topic), queue `P-q` (x-max-length 100) bound with
/// `a.#`; 5 confirmed publishes and 1 unroutable; a consumer (prefetch 2,
/// tag ctag-1) holding 2 unacked; one get, acked. The client stays
/// connected.
fn traffic(addr: SocketAddr, prefix: &str) -> Client {
    let (x, q) = (format!("{prefix}-x"), format!("{prefix}-q"));
    let mut c = Client::connect_on(addr, &[1, 2, 3]);
    c.call_on(
        1,
        ExchangeDeclare {
            exchange: x.as_str().try_into().unwrap(),
            kind: "topic".try_into().unwrap(),
            ..Default::default()
        },
    );
    let mut args = FieldTable::new();
    args.insert("x-max-length", FieldValue::I64(100));
    c.call_on(
        1,
        QueueDeclare {
            queue: q.as_str().try_into().unwrap(),
            arguments: args,
            ..Default::default()
        },
    );
    c.call_on(
        1,
        QueueBind {
            queue: q.as_str().try_into().unwrap(),
            exchange: x.as_str().try_into().unwrap(),
            routing_key: "a.#".try_into().unwrap(),
            ..Default::default()
        },
    );
    c.call_on(1, ConfirmSelect { nowait: false });
    for i in 0..5 {
        c.publish(1, &x, "a.b", &format!("hello{i}"));
    }
    c.publish(1, &x, "z", "nowhere");
    let mut confirmed = 0;
    while confirmed < 6 {
        if let Event::Confirm { settled, .. } = c.until(|e| matches!(e, Event::Confirm { .. })) {
            confirmed += settled.len();
        }
    }
    c.call_on(
        2,
        BasicQos {
            prefetch_count: 2,
            ..Default::default()
        },
    );
    c.call_on(
        2,
        BasicConsume {
            queue: q.as_str().try_into().unwrap(),
            consumer_tag: "ctag-1".try_into().unwrap(),
            ..Default::default()
        },
    );
    for _ in 0..2 {
        c.until(|e| matches!(e, Event::Message { channel: 2, .. }));
    }
    c.conn
        .send_method(
            3,
            BasicGet {
                queue: q.as_str().try_into().unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
    let Event::Message { message, .. } =
        c.until(|e| matches!(e, Event::Message { channel: 3, .. }))
    else {
        unreachable!()
    };
    let Method::BasicGetOk(ok) = message.method else {
        panic!("get-ok expected, got {:?}", message.method)
    };
    c.conn
        .send_method(
            3,
            BasicAck {
                delivery_tag: ok.delivery_tag,
                multiple: false,
            },
        )
        .unwrap();
    // A round trip on channel 3 so that the ack has arrived.
    c.call_on(
        3,
        BasicQos {
            prefetch_count: 0,
            ..Default::default()
        },
    );
    c
}

// ----- a tiny HTTP/1.1 client ------------------------------------------------

const GUEST: Option<&str> = Some("guest:guest");

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let r = http(addr, "GET", path, GUEST, "");
    assert_eq!(
        r.status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

struct Ours {
    broker: support::Broker,
    api: SocketAddr,
    metrics: SocketAddr,
}

/// The tests take ports from the same ranges: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn start() -> Ours {
    start_with(&[])
}

fn start_with(extra: &[&str]) -> Ours {
    // (Eight tests at once, two HTTP ports each.)
    let p = free_ports(15700..15730, 2);
    let api = SocketAddr::from(([127, 0, 0, 1], p[0]));
    let metrics = SocketAddr::from(([127, 0, 0, 1], p[1]));
    let broker = support::Broker::start(
        5790..5810,
        &[
            "--management",
            &api.to_string(),
            "--prometheus",
            &metrics.to_string(),
            "--management-sample-interval",
            "0.5",
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(api).is_err() || TcpStream::connect(metrics).is_err() {
        assert!(Instant::now() < deadline, "HTTP listeners did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ours {
        broker,
        api,
        metrics,
    }
}

fn typed(v: &Value, key: &str) -> &'static str {
    match &v[key] {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn assert_types(v: &Value, what: &str, expected: &[(&str, &str)]) {
    for (k, t) in expected {
        assert_eq!(typed(v, k), *t, "{what}.{k} in {v}");
    }
}

#[test]
fn management_api_serves_what_rabbitmq_clients_read() {
    let _serial = serial();
    let ours = start();
    let api = ours.api;
    let client = traffic(ours.broker.addr, "mgmt-test");

    // Authentication and errors, as RabbitMQ's bodies.
    let r = http(api, "GET", "/api/overview", None, "");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "not_authorised", "reason": "Login failed"})
    );
    assert!(r.header("www-authenticate").is_some());
    let r = http(api, "GET", "/api/overview", Some("guest:wrong"), "");
    assert_eq!(r.status, 401);
    let r = http(api, "GET", "/api/queues/%2F/no-such-queue", GUEST, "");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "Object Not Found", "reason": "Not Found"})
    );

    // The queue, as /api/queues/vhost/name.
    let q = get_json(api, "/api/queues/%2F/mgmt-test-q");
    assert_types(
        &q,
        "queue",
        &[
            ("name", "string"),
            ("vhost", "string"),
            ("durable", "bool"),
            ("auto_delete", "bool"),
            ("exclusive", "bool"),
            ("arguments", "object"),
            ("messages", "int"),
            ("messages_ready", "int"),
            ("messages_unacknowledged", "int"),
            ("consumers", "int"),
            ("memory", "int"),
            ("message_bytes", "int"),
            ("message_stats", "object"),
            ("messages_details", "object"),
            ("node", "string"),
            ("state", "string"),
            ("type", "string"),
            ("consumer_details", "array"),
        ],
    );
    assert_eq!(q["name"], "mgmt-test-q");
    assert_eq!(q["vhost"], "/");
    assert_eq!(q["arguments"]["x-max-length"], 100);
    assert_eq!(q["messages_ready"], 2);
    assert_eq!(q["messages_unacknowledged"], 2);
    assert_eq!(q["messages"], 4);
    assert_eq!(q["consumers"], 1);
    assert_eq!(q["message_bytes_ready"], 12);
    assert!(q["memory"].as_u64().unwrap() >= 24);
    let st = &q["message_stats"];
    assert_eq!(st["publish"], 5);
    assert_eq!(st["deliver"], 2);
    assert_eq!(st["get"], 1);
    assert_eq!(st["deliver_get"], 3);
    assert_eq!(st["ack"], 1);
    assert!(st["publish_details"]["rate"].is_f64());
    let k = &q["consumer_details"][0];
    assert_eq!(k["consumer_tag"], "ctag-1");
    assert_eq!(k["prefetch_count"], 2);
    assert_eq!(k["ack_required"], true);
    assert_eq!(k["channel_details"]["number"], 2);
    assert_eq!(k["queue"]["name"], "mgmt-test-q");

    let queues = get_json(api, "/api/queues");
    assert_eq!(queues.as_array().unwrap().len(), 1);
    assert_eq!(get_json(api, "/api/queues/%2F")[0]["name"], "mgmt-test-q");

    // Exchanges.
    let x = get_json(api, "/api/exchanges/%2F/mgmt-test-x");
    assert_eq!(x["type"], "topic");
    assert_eq!(x["durable"], false);
    assert_eq!(x["internal"], false);
    assert_eq!(x["message_stats"]["publish_in"], 6);
    assert_eq!(x["message_stats"]["publish_out"], 5);
    let xs = get_json(api, "/api/exchanges/%2F");
    let names: Vec<&str> = xs
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    for n in ["", "amq.direct", "amq.fanout", "amq.topic", "mgmt-test-x"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    assert_eq!(
        get_json(api, "/api/exchanges/%2F/amq.default")["name"],
        "",
        "amq.default names the default exchange"
    );

    // Overview.
    let o = get_json(api, "/api/overview");
    assert_eq!(o["object_totals"]["queues"], 1);
    assert_eq!(o["object_totals"]["connections"], 1);
    assert_eq!(o["object_totals"]["channels"], 3);
    assert_eq!(o["object_totals"]["consumers"], 1);
    assert_eq!(o["queue_totals"]["messages"], 4);
    assert_eq!(o["message_stats"]["publish"], 6);
    assert_eq!(o["message_stats"]["confirm"], 6);
    assert_eq!(o["message_stats"]["drop_unroutable"], 1);
    assert!(o["rabbitmq_version"].as_str().unwrap().starts_with("3."));
    assert!(o["node"].is_string());

    // Connections, channels, consumers.
    let c = &get_json(api, "/api/connections")[0];
    assert_types(
        c,
        "connection",
        &[
            ("name", "string"),
            ("user", "string"),
            ("vhost", "string"),
            ("channels", "int"),
            ("peer_host", "string"),
            ("peer_port", "int"),
            ("client_properties", "object"),
            ("connected_at", "int"),
            ("frame_max", "int"),
            ("channel_max", "int"),
            ("timeout", "int"),
        ],
    );
    assert_eq!(c["user"], "guest");
    assert_eq!(c["channels"], 3);
    assert!(c["client_properties"]["capabilities"].is_object());
    let name = c["name"].as_str().unwrap().to_owned();
    let one = get_json(
        api,
        &format!(
            "/api/connections/{}",
            name.replace(' ', "%20").replace('>', "%3E")
        ),
    );
    assert_eq!(one["name"], name.as_str());
    let chans = get_json(api, "/api/channels");
    let chans = chans.as_array().unwrap();
    assert_eq!(chans.len(), 3);
    assert_eq!(chans[0]["confirm"], true);
    assert_eq!(chans[1]["prefetch_count"], 2);
    assert_eq!(chans[1]["consumer_count"], 1);
    assert_eq!(chans[1]["messages_unacknowledged"], 2);
    assert_eq!(chans[1]["name"], format!("{name} (2)"));
    let cons = get_json(api, "/api/consumers");
    assert_eq!(cons[0]["consumer_tag"], "ctag-1");
    assert_eq!(
        get_json(api, "/api/consumers/%2F")[0]["consumer_tag"],
        "ctag-1"
    );

    // Bindings: the default exchange's and ours.
    let b = get_json(api, "/api/bindings/%2F");
    let b = b.as_array().unwrap();
    assert_eq!(b.len(), 2, "{b:?}");
    assert_eq!(b[0]["source"], "");
    assert_eq!(b[1]["source"], "mgmt-test-x");
    assert_eq!(b[1]["routing_key"], "a.#");
    assert_eq!(b[1]["properties_key"], "a.%23");
    let bq = get_json(api, "/api/queues/%2F/mgmt-test-q/bindings");
    assert_eq!(bq.as_array().unwrap().len(), 2);

    // Vhosts, users, permissions, whoami, health, nodes, definitions.
    let v = get_json(api, "/api/vhosts");
    assert_eq!(v[0]["name"], "/");
    assert_eq!(v[0]["messages"], 4);
    let u = get_json(api, "/api/users");
    assert_eq!(u[0]["name"], "guest");
    assert_eq!(u[0]["tags"], serde_json::json!(["administrator"]));
    assert_eq!(u[0]["hashing_algorithm"], "rabbit_password_hashing_sha256");
    let p = get_json(api, "/api/permissions");
    assert_eq!(
        p[0],
        serde_json::json!({"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"})
    );
    assert_eq!(
        get_json(api, "/api/whoami"),
        serde_json::json!({"name": "guest", "tags": ["administrator"]})
    );
    assert_eq!(
        get_json(api, "/api/health/checks/alarms"),
        serde_json::json!({"status": "ok"})
    );
    let n = get_json(api, "/api/nodes");
    assert_eq!(n[0]["running"], true);
    assert!(n[0]["mem_used"].is_u64());
    let d = get_json(api, "/api/definitions");
    assert_eq!(d["queues"][0]["name"], "mgmt-test-q");
    assert_eq!(d["exchanges"][0]["name"], "mgmt-test-x");
    assert_eq!(d["bindings"][0]["routing_key"], "a.#");
    assert_eq!(d["users"][0]["name"], "guest");
    assert_eq!(d["vhosts"][0]["name"], "/");

    // Rates: the sampler runs every 0.5 s here; after traffic stops the
    // last interval's rates fall to 0.
    std::thread::sleep(Duration::from_millis(1300));
    let q = get_json(api, "/api/queues/%2F/mgmt-test-q");
    assert_eq!(q["message_stats"]["publish_details"]["rate"], 0.0);
    // History as RabbitMQ gives it: `samples` newest first, one per
    // `msg_rates_incr` seconds over `msg_rates_age`.
    // (Points before the queue existed are left out: on a loaded machine
    // the sampler may need a moment for a second one.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let q = loop {
        let q = get_json(
            api,
            "/api/queues/%2F/mgmt-test-q?msg_rates_age=1&msg_rates_incr=0.5&lengths_age=1&lengths_incr=0.5",
        );
        let n = q["message_stats"]["publish_details"]["samples"]
            .as_array()
            .map_or(0, Vec::len);
        if n >= 2 {
            break q;
        }
        assert!(Instant::now() < deadline, "two samples: {q}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let d = &q["message_stats"]["publish_details"];
    let samples = d["samples"].as_array().unwrap();
    assert!(samples.len() <= 3, "{d}");
    assert_eq!(samples[0]["sample"], 5);
    let t0 = samples[0]["timestamp"].as_u64().unwrap();
    assert_eq!(samples[1]["timestamp"].as_u64().unwrap(), t0 - 500);
    assert_eq!(t0 % 500, 0);
    assert!(d["avg_rate"].is_f64() && d["avg"].is_f64());
    assert_eq!(q["messages_details"]["samples"][0]["sample"], 4);
    let o = get_json(api, "/api/overview?msg_rates_age=1&msg_rates_incr=0.5");
    assert_eq!(
        o["message_stats"]["publish_details"]["samples"][0]["sample"],
        6
    );
    assert!(
        o["queue_totals"]["messages_details"]
            .get("samples")
            .is_none()
    );
    // Hostile values are ignored.
    let q = get_json(
        api,
        "/api/queues/%2F/mgmt-test-q?msg_rates_age=1e9&msg_rates_incr=0",
    );
    assert!(
        q["message_stats"]["publish_details"]
            .get("samples")
            .is_none()
    );

    // The smaller endpoints monitoring tools poll.
    let enc_name = name.replace(' ', "%20").replace('>', "%3E");
    assert_eq!(
        get_json(api, &format!("/api/connections/{enc_name}/channels"))
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        get_json(api, "/api/vhosts/%2F/channels")
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        get_json(api, "/api/vhosts/%2F/connections")[0]["name"],
        name.as_str()
    );
    assert_eq!(get_json(api, "/api/extensions"), serde_json::json!([]));
    assert!(get_json(api, "/api/cluster-name")["name"].is_string());
    for check in ["local-alarms", "virtual-hosts", "node-is-quorum-critical"] {
        assert_eq!(
            get_json(api, &format!("/api/health/checks/{check}")),
            serde_json::json!({"status": "ok"})
        );
    }
    assert_eq!(
        get_json(api, "/api/aliveness-test/%2F"),
        serde_json::json!({"status": "ok"})
    );

    drop(client);
    assert!(ours.broker.terminate().is_some_and(|s| s.success()));
}

#[test]
fn management_api_mutations() {
    let _serial = serial();
    let ours = start();
    let api = ours.api;
    let put = |path: &str, body: &str| http(api, "PUT", path, GUEST, body).status;
    assert_eq!(
        put(
            "/api/exchanges/%2F/m-x",
            r#"{"type":"fanout","durable":false,"auto_delete":false,"internal":false,"arguments":{}}"#
        ),
        201
    );
    assert_eq!(
        put(
            "/api/exchanges/%2F/m-x",
            r#"{"type":"fanout","durable":false}"#
        ),
        204
    );
    assert_eq!(
        put(
            "/api/queues/%2F/m-q",
            r#"{"durable":false,"arguments":{"x-max-length":10}}"#
        ),
        201
    );
    assert_eq!(
        put(
            "/api/queues/%2F/m-q",
            r#"{"durable":false,"arguments":{"x-max-length":10}}"#
        ),
        204
    );
    let r = http(
        api,
        "PUT",
        "/api/queues/%2F/m-q",
        GUEST,
        r#"{"durable":true}"#,
    );
    assert_eq!(r.status, 400, "inequivalent redeclare");
    assert_eq!(r.json()["error"], "bad_request");
    assert_eq!(put("/api/queues/no-vhost/m-q", "{}"), 404);
    let r = http(
        api,
        "POST",
        "/api/bindings/%2F/e/m-x/q/m-q",
        GUEST,
        r#"{"routing_key":"k","arguments":{}}"#,
    );
    assert_eq!(r.status, 201);
    assert!(r.header("location").is_some_and(|l| l.ends_with("/k")));
    assert_eq!(
        get_json(api, "/api/bindings/%2F/e/m-x/q/m-q")[0]["routing_key"],
        "k"
    );

    // A consumer on the queue: what the API publishes reaches it.
    let mut c = Client::connect_on(ours.broker.addr, &[1]);
    c.call_on(
        1,
        BasicConsume {
            queue: "m-q".try_into().unwrap(),
            no_ack: true,
            ..Default::default()
        },
    );
    let r = http(
        api,
        "POST",
        "/api/exchanges/%2F/m-x/publish",
        GUEST,
        r#"{"properties":{"content_type":"text/plain","headers":{"h":1}},"routing_key":"any","payload":"to the consumer","payload_encoding":"string"}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"routed": true}));
    let Event::Message { message, .. } = c.until(|e| matches!(e, Event::Message { .. })) else {
        unreachable!()
    };
    assert_eq!(&message.body[..], b"to the consumer");
    assert_eq!(
        message
            .properties
            .content_type
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned()),
        Some("text/plain".into())
    );
    c.conn.close(ReplyCode::REPLY_SUCCESS, "bye").unwrap();
    c.until(|e| matches!(e, Event::Closed { .. }));

    // Without a consumer: publish (default exchange), get with requeue,
    // get without, purge.
    for i in 0..3 {
        let r = http(
            api,
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            GUEST,
            &format!(
                r#"{{"properties":{{}},"routing_key":"m-q","payload":"bSVk","payload_encoding":"base64","i":{i}}}"#
            ),
        );
        assert_eq!(r.json()["routed"], true);
    }
    let r = http(
        api,
        "POST",
        "/api/queues/%2F/m-q/get",
        GUEST,
        r#"{"count":2,"ackmode":"ack_requeue_true","encoding":"auto","truncate":50000}"#,
    );
    assert_eq!(r.status, 200);
    let got = r.json();
    assert_eq!(got.as_array().unwrap().len(), 2);
    assert_eq!(got[0]["payload"], "m%d");
    assert_eq!(got[0]["payload_encoding"], "string");
    assert_eq!(got[0]["payload_bytes"], 3);
    assert_eq!(got[0]["routing_key"], "m-q");
    assert_eq!(got[0]["message_count"], 2);
    assert_eq!(get_json(api, "/api/queues/%2F/m-q")["messages_ready"], 3);
    let r = http(
        api,
        "POST",
        "/api/queues/%2F/m-q/get",
        GUEST,
        r#"{"count":1,"ackmode":"ack_requeue_false","encoding":"base64"}"#,
    );
    let got = r.json();
    assert_eq!(got[0]["redelivered"], true);
    assert_eq!(got[0]["payload_encoding"], "base64");
    assert_eq!(get_json(api, "/api/queues/%2F/m-q")["messages_ready"], 2);
    assert_eq!(
        http(api, "DELETE", "/api/queues/%2F/m-q/contents", GUEST, "").status,
        204
    );
    assert_eq!(get_json(api, "/api/queues/%2F/m-q")["messages_ready"], 0);

    // Unbind, delete.
    assert_eq!(
        http(api, "DELETE", "/api/bindings/%2F/e/m-x/q/m-q/k", GUEST, "").status,
        204
    );
    assert_eq!(
        get_json(api, "/api/bindings/%2F/e/m-x/q/m-q"),
        serde_json::json!([])
    );
    assert_eq!(
        http(api, "DELETE", "/api/queues/%2F/m-q", GUEST, "").status,
        204
    );
    assert_eq!(
        http(api, "DELETE", "/api/exchanges/%2F/m-x", GUEST, "").status,
        204
    );
    assert_eq!(
        http(api, "GET", "/api/queues/%2F/m-q", GUEST, "").status,
        404
    );
    assert!(ours.broker.terminate().is_some_and(|s| s.success()));
}

#[test]
fn management_access_follows_user_tags() {
    let _serial = serial();
    let config = std::env::temp_dir().join(format!("amqp-broker-mgmt-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        r#"
[[vhosts]]
name = "/"
[[vhosts]]
name = "other"
[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
[[users]]
name = "mon"
password = "pw"
tags = ["monitoring"]
[[users]]
name = "mgr"
password = "pw"
tags = ["management"]
[[users]]
name = "plain"
password = "pw"
[[permissions]]
user = "guest"
vhost = "/"
configure = ".*"
write = ".*"
read = ".*"
[[permissions]]
user = "guest"
vhost = "other"
configure = ".*"
write = ".*"
read = ".*"
[[permissions]]
user = "mgr"
vhost = "/"
configure = "^mgr-"
write = "^mgr-"
read = "^mgr-"
"#,
    )
    .unwrap();
    let ours = start_with(&["--config", config.to_str().unwrap()]);
    let api = ours.api;
    let status = |method: &str, path: &str, user: &str, body: &str| {
        http(api, method, path, Some(user), body).status
    };
    // No management tag: refused everywhere.
    let r = http(api, "GET", "/api/overview", Some("plain:pw"), "");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "Not management user");
    // management: its vhosts only; no nodes, users, definitions.
    assert_eq!(status("GET", "/api/overview", "mgr:pw", ""), 200);
    assert_eq!(status("GET", "/api/nodes", "mgr:pw", ""), 401);
    assert_eq!(status("GET", "/api/users", "mgr:pw", ""), 401);
    assert_eq!(status("GET", "/api/definitions", "mgr:pw", ""), 401);
    let v = http(api, "GET", "/api/vhosts", Some("mgr:pw"), "").json();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(status("GET", "/api/queues/other", "mgr:pw", ""), 404);
    assert_eq!(status("PUT", "/api/queues/%2F/mgr-q", "mgr:pw", "{}"), 201);
    assert_eq!(
        status("PUT", "/api/queues/%2F/not-mine", "mgr:pw", "{}"),
        401
    );
    assert_eq!(
        status("PUT", "/api/queues/other/mgr-q", "mgr:pw", "{}"),
        404
    );
    // monitoring: every vhost and the nodes, not the users.
    assert_eq!(status("GET", "/api/nodes", "mon:pw", ""), 200);
    assert_eq!(status("GET", "/api/users", "mon:pw", ""), 401);
    let v = http(api, "GET", "/api/vhosts", Some("mon:pw"), "").json();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    // administrator: everything.
    assert_eq!(status("GET", "/api/users", "guest:guest", ""), 200);
    let u = http(api, "GET", "/api/users", GUEST, "").json();
    assert_eq!(u.as_array().unwrap().len(), 4);
    let _ = std::fs::remove_file(&config);
    assert!(ours.broker.terminate().is_some_and(|s| s.success()));
}

/// Parses the Prometheus text format: every line is a comment (`# HELP`,
/// `# TYPE`) or `name{labels} value`. Returns the samples.
fn parse_metrics(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix("# ") {
            let mut w = c.split(' ');
            let kind = w.next().unwrap();
            assert!(kind == "HELP" || kind == "TYPE", "comment {line}");
            let name = w.next().expect("metric name");
            if kind == "TYPE" {
                let t = w.next().expect("type");
                assert!(
                    ["counter", "gauge", "untyped", "histogram", "summary"].contains(&t),
                    "{line}"
                );
                typed.insert(name.to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, v) = rest.split_once("=\"").expect("label=\"");
                    let mut val = String::new();
                    let mut chars = v.char_indices();
                    let mut end = None;
                    while let Some((i, ch)) = chars.next() {
                        match ch {
                            '\\' => {
                                let (_, e) = chars.next().expect("escape");
                                val.push(if e == 'n' { '\n' } else { e });
                            }
                            '"' => {
                                end = Some(i);
                                break;
                            }
                            c => val.push(c),
                        }
                    }
                    let end = end.expect("closing quote");
                    labels.insert(k.to_owned(), val);
                    rest = v[end + 1..].strip_prefix(',').unwrap_or(&v[end + 1..]);
                }
                (n, labels)
            }
            None => (series, BTreeMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{name}"
        );
        assert!(typed.contains(name), "{name} has a TYPE line before it");
        out.push((name.to_owned(), labels, value));
    }
    out
}

#[test]
fn prometheus_metrics_parse_and_name_as_rabbitmq() {
    let _serial = serial();
    let ours = start();
    let client = traffic(ours.broker.addr, "prom-test");
    let r = http(ours.metrics, "GET", "/metrics", None, "");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.body).unwrap();
    let samples = parse_metrics(&text);
    let value = |name: &str| {
        samples
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
            .2
    };
    for name in [
        "rabbitmq_identity_info",
        "rabbitmq_build_info",
        "rabbitmq_global_publishers",
        "rabbitmq_global_consumers",
    ] {
        value(name);
    }
    assert_eq!(value("rabbitmq_global_messages_received_total"), 6.0);
    assert_eq!(value("rabbitmq_global_messages_routed_total"), 5.0);
    assert_eq!(value("rabbitmq_global_messages_delivered_total"), 3.0);
    assert_eq!(value("rabbitmq_global_messages_acknowledged_total"), 1.0);
    assert_eq!(value("rabbitmq_global_messages_confirmed_total"), 6.0);
    assert_eq!(value("rabbitmq_connections"), 1.0);
    assert_eq!(value("rabbitmq_channels"), 3.0);
    assert_eq!(value("rabbitmq_queues"), 1.0);
    assert_eq!(value("rabbitmq_queue_messages_ready"), 2.0);
    assert_eq!(value("rabbitmq_queue_messages_unacked"), 2.0);
    assert_eq!(value("rabbitmq_queue_messages"), 4.0);
    assert_eq!(value("rabbitmq_queue_consumers"), 1.0);
    let (_, labels, _) = samples
        .iter()
        .find(|(n, _, _)| n == "rabbitmq_global_messages_received_total")
        .unwrap();
    assert_eq!(labels.get("protocol").map(String::as_str), Some("amqp091"));

    let text =
        String::from_utf8(http(ours.metrics, "GET", "/metrics/per-object", None, "").body).unwrap();
    let samples = parse_metrics(&text);
    let q = samples
        .iter()
        .find(|(n, l, _)| {
            n == "rabbitmq_queue_messages_ready"
                && l.get("queue").map(String::as_str) == Some("prom-test-q")
        })
        .unwrap_or_else(|| panic!("per-object queue metric in\n{text}"));
    assert_eq!(q.1.get("vhost").map(String::as_str), Some("/"));
    assert_eq!(q.2, 2.0);

    // /metrics/detailed: the families asked for, rabbitmq_detailed_*.
    let text = String::from_utf8(
        http(
            ours.metrics,
            "GET",
            "/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count&vhost=%2F",
            None,
            "",
        )
        .body,
    )
    .unwrap();
    let samples = parse_metrics(&text);
    let detailed = |name: &str| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name && l.get("queue").map(String::as_str) == Some("prom-test-q")
            })
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    assert_eq!(detailed("rabbitmq_detailed_queue_messages_ready"), 2.0);
    assert_eq!(detailed("rabbitmq_detailed_queue_consumers"), 1.0);
    assert!(
        !text.contains("rabbitmq_detailed_queue_messages_bytes"),
        "queue_metrics was not asked for"
    );
    let other = String::from_utf8(
        http(
            ours.metrics,
            "GET",
            "/metrics/detailed?family=queue_coarse_metrics&vhost=nowhere",
            None,
            "",
        )
        .body,
    )
    .unwrap();
    assert!(!other.contains("prom-test-q"), "another vhost's queue");
    drop(client);
    assert!(ours.broker.terminate().is_some_and(|s| s.success()));
}

// ----- comparison with RabbitMQ ------------------------------------------------

/// Runs the pika traffic script against `port`; the returned child keeps
/// its connection until its stdin closes.
fn pika_traffic(port: u16, prefix: &str) -> std::process::Child {
    let script = support::workspace().join("examples/broker/tests/support/management_traffic.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &port.to_string(), prefix])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "READY", "the traffic script is ready");
    child
}

fn finish(mut child: std::process::Child) {
    drop(child.stdin.take());
    let _ = child.wait();
}

/// Keys whose values differ between brokers by nature (names of nodes and
/// connections, ports, times, rates, versions) or by implementation
/// (Erlang internals): their presence and type are compared, not their
/// value.
const VOLATILE: &[&str] = &[
    "node",
    "name",
    "connection_name",
    "peer_port",
    "port",
    "memory",
    "consumer_capacity",
    "consumer_utilisation",
    "rate",
    "user_who_performed_action",
    "idle_since",
    "samples",
    "sample",
    "timestamp",
    "avg",
    "avg_rate",
];

/// Keys RabbitMQ has that are Erlang VM internals or not implemented here
/// (listed in the report); skipped.
const NOT_SERVED: &[&str] = &[
    "garbage_collection",
    "reductions",
    "reductions_details",
    "idle_since",
    "backing_queue_status",
    "churn_rates",
    "listeners",
    "contexts",
];

/// Differences between RabbitMQ's JSON `a` and ours `b`: missing keys,
/// different types, different values (outside [`VOLATILE`]).
fn compare(path: &str, key: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                if NOT_SERVED.contains(&k.as_str()) {
                    continue;
                }
                match y.get(k) {
                    None => out.push(format!("{path}.{k}: missing")),
                    Some(vb) => compare(&format!("{path}.{k}"), k, va, vb, out),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if let (Some(a0), Some(b0)) = (x.first(), y.first()) {
                compare(&format!("{path}[0]"), key, a0, b0, out);
            }
            if !VOLATILE.contains(&key) && x.len() != y.len() {
                out.push(format!("{path}: {} items, ours {}", x.len(), y.len()));
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            if x.is_f64() != y.is_f64() {
                out.push(format!("{path}: {a} ({}), ours {b}", typed_of(a)));
            } else if !VOLATILE.contains(&key) && a != b {
                out.push(format!("{path}: {a}, ours {b}"));
            }
        }
        _ if std::mem::discriminant(a) != std::mem::discriminant(b) => {
            out.push(format!("{path}: {a} ({}), ours {b}", typed_of(a)));
        }
        _ => {
            if !VOLATILE.contains(&key) && a != b {
                out.push(format!("{path}: {a}, ours {b}"));
            }
        }
    }
}

fn typed_of(v: &Value) -> &'static str {
    let o = serde_json::json!({ "v": v });
    typed(&o, "v")
}

#[test]
fn rabbitmq_shapes_match() {
    if !support::interop("rabbitmq_shapes_match") {
        return;
    }
    // RabbitMQ's management plugin must be on (rabbitmq-plugins enable
    // rabbitmq_management); without it there is nothing to compare with.
    let rabbit_api = SocketAddr::from(([127, 0, 0, 1], 15672));
    if TcpStream::connect(rabbit_api).is_err() {
        panic!(
            "RabbitMQ's management API is not on 127.0.0.1:15672: run `rabbitmq-plugins enable rabbitmq_management` (or set AMQP_INTEROP=0)"
        );
    }
    let prefix = format!("mgmt-cmp-{}", std::process::id());
    let _serial = serial();
    let ours = start();
    let rabbit = pika_traffic(5672, &prefix);
    let mine = pika_traffic(ours.broker.addr.port(), &prefix);
    // RabbitMQ's statistics reach its API after its emission interval (5 s).
    let qpath = format!("/api/queues/%2F/{prefix}-q");
    let deadline = Instant::now() + Duration::from_secs(20);
    let rq = loop {
        let r = http(rabbit_api, "GET", &qpath, GUEST, "");
        if r.status == 200 {
            let v = r.json();
            if v["messages"] == 4 && v["message_stats"]["ack"] == 1 && v["consumers"] == 1 {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "RabbitMQ's queue stats settle");
        std::thread::sleep(Duration::from_millis(500));
    };
    let xpath = format!("/api/exchanges/%2F/{prefix}-x");
    let mut diffs = Vec::new();
    compare("queue", "", &rq, &get_json(ours.api, &qpath), &mut diffs);
    compare(
        "exchange",
        "",
        &get_json(rabbit_api, &xpath),
        &get_json(ours.api, &xpath),
        &mut diffs,
    );
    // The overview's totals count everything on each broker (RabbitMQ is
    // shared): keys and types only.
    let mut overview = Vec::new();
    compare(
        "overview",
        "",
        &get_json(
            rabbit_api,
            "/api/overview?msg_rates_age=60&msg_rates_incr=5",
        ),
        &get_json(ours.api, "/api/overview?msg_rates_age=60&msg_rates_incr=5"),
        &mut overview,
    );
    for d in &overview {
        eprintln!("overview (not compared): {d}");
    }
    diffs.extend(
        overview
            .into_iter()
            .filter(|d| d.contains("missing") || d.contains("), ours")),
    );
    // Identity of the products and versions differs by design.
    for d in &diffs {
        eprintln!("difference: {d}");
    }
    diffs.retain(|d| {
        ![
            "product_name",
            "product_version",
            "rabbitmq_version",
            "management_version",
            "erlang_",
            "cluster_name",
        ]
        .iter()
        .any(|k| d.contains(k))
    });
    finish(rabbit);
    finish(mine);
    assert!(
        diffs.is_empty(),
        "differences from RabbitMQ:\n{}",
        diffs.join("\n")
    );
    assert!(ours.broker.terminate().is_some_and(|s| s.success()));
}

// ----- users, vhosts, permissions, connections, definitions import ---------

/// Logs `user` in to `vhost` over AMQP: the client with channel 1 open, or
/// how the broker refused (`code text`).
fn login(addr: SocketAddr, user: &str, password: &str, vhost: &str) -> Result<Client, String> {
    use amqp_codec::{ClientConfig, Connection, Credentials};
    let attempt = std::panic::catch_unwind(|| {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut c = Client {
            conn: Connection::client(
                ClientConfig {
                    credentials: Credentials::plain(user, password),
                    virtual_host: vhost.try_into().unwrap(),
                    ..ClientConfig::default()
                },
                Instant::now(),
            ),
            sock,
            events: Vec::new(),
        };
        match c.until(|e| matches!(e, Event::Connected { .. } | Event::Closed { .. })) {
            Event::Connected { .. } => {
                c.conn.open_channel_with(1).unwrap();
                c.until(|e| matches!(e, Event::ChannelOpened { .. }));
                Ok(c)
            }
            Event::Closed { cause } => Err(closed_text(&cause)),
            _ => unreachable!(),
        }
    });
    attempt.unwrap_or_else(|_| Err("dropped".into()))
}

fn closed_text(cause: &amqp_codec::CloseCause) -> String {
    match cause {
        amqp_codec::CloseCause::Closed { reason, .. } => {
            format!("{} {}", reason.code.0, reason.text.to_string_lossy())
        }
        other => format!("{other:?}"),
    }
}

/// Waits for the broker to close `c`'s connection; `code text`. (The
/// broker may drop the socket right after its `connection.close`: write
/// errors are ignored.)
fn closed_by_broker(c: &mut Client) -> String {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(e) = c.conn.poll_event() {
            if let Event::Closed { cause } = e {
                return closed_text(&cause);
            }
        }
        while let Some(b) = c.conn.poll_transmit() {
            let _ = c.sock.write_all(&b);
        }
        assert!(
            Instant::now() < deadline,
            "the broker closes the connection"
        );
        match c.sock.read(&mut buf) {
            Ok(0) => c.conn.handle_eof(),
            Ok(n) => c
                .conn
                .handle_input(bytes::Bytes::copy_from_slice(&buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => c.conn.handle_eof(),
        }
        c.conn.handle_timeout(Instant::now());
    }
}

/// Declares queue `q` on a new channel `ch`: `Ok` or the channel's
/// `code text`.
fn declare_on(c: &mut Client, ch: u16, q: &str) -> Result<(), String> {
    c.conn.open_channel_with(ch).unwrap();
    c.until(|e| matches!(e, Event::ChannelOpened { channel } if *channel == ch));
    c.conn
        .send_method(
            ch,
            QueueDeclare {
                queue: q.try_into().unwrap(),
                ..Default::default()
            },
        )
        .unwrap();
    match c.until(|e| {
        matches!(e, Event::Method { channel, .. } | Event::ChannelClosed { channel, .. } if *channel == ch)
    }) {
        Event::Method { .. } => Ok(()),
        Event::ChannelClosed { reason, .. } => Err(format!(
            "{} {}",
            reason.code.0,
            reason.text.to_string_lossy()
        )),
        _ => unreachable!(),
    }
}

#[test]
fn management_api_users_vhosts_permissions_take_effect() {
    let _serial = serial();
    let ours = start();
    let (api, amqp) = (ours.api, ours.broker.addr);
    let req = |method: &str, path: &str, body: &str| http(api, method, path, GUEST, body);

    // A vhost: 201, then 204; its metadata shows.
    let r = req(
        "PUT",
        "/api/vhosts/t-vh",
        r#"{"description":"for tests","tags":"a,b"}"#,
    );
    assert_eq!(r.status, 201);
    assert_eq!(req("PUT", "/api/vhosts/t-vh", "").status, 204);
    let v = get_json(api, "/api/vhosts/t-vh");
    assert_eq!(v["description"], "for tests");
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(v["metadata"]["tags"], serde_json::json!(["a", "b"]));
    // Its creator got every permission in it (as RabbitMQ's API grants).
    assert_eq!(
        get_json(api, "/api/permissions/t-vh/guest"),
        serde_json::json!({"user": "guest", "vhost": "t-vh", "configure": ".*", "write": ".*", "read": ".*"})
    );

    // A user: tags are required; password or password_hash.
    let r = req("PUT", "/api/users/t-user", r#"{"password":"pw"}"#);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "bad_request", "reason": "tags_not_present"})
    );
    let r = req(
        "PUT",
        "/api/users/t-user",
        r#"{"password_hash":"!!","tags":""}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["reason"], serde_json::json!(["not_base64", "!!"]));
    assert_eq!(
        req(
            "PUT",
            "/api/users/t-user",
            r#"{"password":"pw","tags":"management"}"#
        )
        .status,
        201
    );
    let u = get_json(api, "/api/users/t-user");
    assert_eq!(u["tags"], serde_json::json!(["management"]));
    assert_eq!(u["hashing_algorithm"], "rabbit_password_hashing_sha256");
    // A password hash made elsewhere (`amqp-broker hash-password`'s format).
    let hash = amqp_broker::auth::Password::hash(
        "hashed-pw",
        [1, 2, 3, 4],
        amqp_broker::auth::HashAlgorithm::Sha512,
    );
    let r = req(
        "PUT",
        "/api/users/t-hashed",
        &format!(
            r#"{{"password_hash":"{hash}","hashing_algorithm":"rabbit_password_hashing_sha512","tags":["monitoring"]}}"#
        ),
    );
    assert_eq!(r.status, 201);
    assert_eq!(get_json(api, "/api/users/t-hashed")["password_hash"], hash);

    // No permission yet: the user logs in but may not open the vhost.
    let refused = login(amqp, "t-user", "pw", "t-vh").err().unwrap();
    assert!(refused.starts_with("530 NOT_ALLOWED"), "{refused}");
    assert!(login(amqp, "t-user", "wrong", "t-vh").is_err());

    // Permissions: RabbitMQ's validation, then 201 / 204.
    let r = req(
        "PUT",
        "/api/permissions/t-vh/t-user",
        r#"{"configure":".*"}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["reason"],
        "[{key_missing,write},{key_missing,read}]"
    );
    let r = req(
        "PUT",
        "/api/permissions/no-vh/t-user",
        r#"{"configure":".*","write":".*","read":".*"}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["reason"], "vhost_or_user_not_found");
    let r = req(
        "PUT",
        "/api/permissions/t-vh/t-user",
        r#"{"configure":"(","write":".*","read":".*"}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["reason"][0], "invalid_regexp");
    let all = r#"{"configure":".*","write":".*","read":".*"}"#;
    assert_eq!(req("PUT", "/api/permissions/t-vh/t-user", all).status, 201);
    assert_eq!(req("PUT", "/api/permissions/t-vh/t-user", all).status, 204);
    assert_eq!(
        http(api, "GET", "/api/permissions/t-vh/nobody", GUEST, "").status,
        404
    );
    assert_eq!(
        get_json(api, "/api/users/t-user/permissions")[0]["vhost"],
        "t-vh"
    );
    assert_eq!(
        get_json(api, "/api/vhosts/t-vh/permissions")
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Now the user opens the vhost and declares; narrowed permissions
    // apply to the open connection's next operations.
    let mut c = login(amqp, "t-user", "pw", "t-vh").expect("log in after PUT permissions");
    assert_eq!(declare_on(&mut c, 2, "t-q"), Ok(()));
    let narrow = r#"{"configure":"-mine$","write":".*","read":".*"}"#;
    assert_eq!(
        req("PUT", "/api/permissions/t-vh/t-user", narrow).status,
        204
    );
    assert_eq!(declare_on(&mut c, 3, "t-q2-mine"), Ok(()));
    let e = declare_on(&mut c, 4, "t-other").unwrap_err();
    assert_eq!(
        e,
        "403 ACCESS_REFUSED - access to queue 't-other' in vhost 't-vh' refused for user 't-user'"
    );
    assert_eq!(
        req("DELETE", "/api/permissions/t-vh/t-user", "").status,
        204
    );
    assert_eq!(
        req("DELETE", "/api/permissions/t-vh/t-user", "").status,
        404
    );
    assert!(
        declare_on(&mut c, 5, "t-q3-mine")
            .unwrap_err()
            .starts_with("403 ")
    );
    assert_eq!(req("PUT", "/api/permissions/t-vh/t-user", all).status, 201);

    // DELETE /api/connections/name: 320 with X-Reason's text, or RabbitMQ's.
    let name = |user: &str| {
        get_json(api, "/api/connections")
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["user"] == user)
            .map(|c| {
                c["name"]
                    .as_str()
                    .unwrap()
                    .replace(' ', "%20")
                    .replace('>', "%3E")
            })
            .unwrap()
    };
    let path = format!("/api/connections/{}", name("t-user"));
    let r = {
        // With X-Reason (the tiny client sends no custom headers: raw).
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(api).unwrap();
        write!(
            s,
            "DELETE {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nX-Reason: maintenance window\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    assert_eq!(
        closed_by_broker(&mut c),
        "320 CONNECTION_FORCED - maintenance window"
    );
    // Once the close handshake is over the connection is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while http(api, "GET", &path, GUEST, "").status != 404 {
        assert!(Instant::now() < deadline, "the closed connection goes");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http(api, "DELETE", &path, GUEST, "").status, 404);
    let mut g = Client::connect(amqp);
    let path = format!("/api/connections/{}", name("guest"));
    assert_eq!(http(api, "DELETE", &path, GUEST, "").status, 204);
    assert_eq!(
        closed_by_broker(&mut g),
        "320 CONNECTION_FORCED - Closed via management plugin"
    );

    // Deleting the vhost closes its connections (320) and deletes its
    // queues.
    let mut c = login(amqp, "t-user", "pw", "t-vh").unwrap();
    assert_eq!(
        get_json(api, "/api/queues/t-vh").as_array().unwrap().len(),
        2
    );
    assert_eq!(req("DELETE", "/api/vhosts/t-vh", "").status, 204);
    assert_eq!(
        closed_by_broker(&mut c),
        "320 CONNECTION_FORCED - vhost 't-vh' is deleted"
    );
    assert_eq!(req("DELETE", "/api/vhosts/t-vh", "").status, 404);
    assert_eq!(req("GET", "/api/queues/t-vh/t-q", "").status, 404);
    assert!(
        get_json(api, "/api/queues")
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["vhost"] != "t-vh")
    );
    assert_eq!(
        get_json(api, "/api/users/t-user/permissions"),
        serde_json::json!([])
    );
    let refused = login(amqp, "t-user", "pw", "t-vh").err().unwrap();
    assert_eq!(refused, "530 NOT_ALLOWED - vhost t-vh not found");

    // Deleting a user closes their connections and ends their logins.
    assert_eq!(req("PUT", "/api/permissions/%2F/t-user", all).status, 201);
    let mut c = login(amqp, "t-user", "pw", "/").unwrap();
    assert_eq!(req("DELETE", "/api/users/t-user", "").status, 204);
    assert_eq!(
        closed_by_broker(&mut c),
        "320 CONNECTION_FORCED - user 't-user' is deleted"
    );
    assert_eq!(req("DELETE", "/api/users/t-user", "").status, 404);
    assert!(login(amqp, "t-user", "pw", "/").is_err());
    assert_eq!(
        req("GET", "/api/permissions/%2F/t-user", "").status,
        404,
        "the user's permissions went with them"
    );

    // Only administrators; hostile bodies get 400/413, never a crash.
    assert_eq!(
        req(
            "PUT",
            "/api/users/t-mon",
            r#"{"password":"pw","tags":"monitoring"}"#
        )
        .status,
        201
    );
    let mon = Some("t-mon:pw");
    assert_eq!(http(api, "PUT", "/api/vhosts/x", mon, "").status, 401);
    assert_eq!(http(api, "DELETE", "/api/users/guest", mon, "").status, 401);
    assert_eq!(
        http(api, "PUT", "/api/permissions/%2F/t-mon", mon, all).status,
        401
    );
    assert_eq!(http(api, "POST", "/api/definitions", mon, "{}").status, 401);
    for (path, body) in [
        ("/api/vhosts/x", "{not json"),
        ("/api/vhosts/x", "[1,2]"),
        ("/api/users/x", "\"tags\""),
        (
            "/api/permissions/%2F/guest",
            "{\"configure\":1,\"write\":[],\"read\":{}}",
        ),
        ("/api/users/x", r#"{"password":5,"tags":""}"#),
        (
            "/api/users/x",
            r#"{"password":"p","tags":"","hashing_algorithm":"rot13"}"#,
        ),
    ] {
        let r = req("PUT", path, body);
        assert_eq!(r.status, 400, "PUT {path} {body}");
        assert_eq!(r.json()["error"], "bad_request");
    }
    let big = format!("{{\"tags\":\"{}\"}}", "x".repeat(3 << 20));
    assert_eq!(req("PUT", "/api/users/big", &big).status, 413);
    let long = "v".repeat(300);
    assert_eq!(req("PUT", &format!("/api/vhosts/{long}"), "").status, 400);
    // The broker still answers.
    assert_eq!(get_json(api, "/api/whoami")["name"], "guest");
    drop(g);
    assert!(ours.broker.terminate().is_some_and(|s| s.success()));
}

#[test]
fn definitions_import_takes_effect_and_everything_persists() {
    let _serial = serial();
    let data =
        std::env::temp_dir().join(format!("amqp-broker-mgmt-persist-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let data_arg = data.to_str().unwrap().to_owned();
    let ours = start_with(&["--data-dir", &data_arg]);
    let (api, amqp) = (ours.api, ours.broker.addr);
    let req = |method: &str, path: &str, body: &str| http(api, method, path, GUEST, body);

    // Hostile imports: RabbitMQ's reasons, nothing imported.
    let r = req("POST", "/api/definitions", "[1]");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["reason"], "failed_to_parse_json");
    let r = req("POST", "/api/definitions", "{\"users\":[{\"name\":1}]}");
    assert_eq!(r.status, 400);
    let r = req(
        "POST",
        "/api/definitions",
        r#"{"queues":[{"name":"q","vhost":"nope","durable":true,"auto_delete":false,"arguments":{}}]}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["reason"],
        serde_json::json!(["no_such_vhost", "nope"])
    );

    // An import in the format GET /api/definitions gives.
    let hash = amqp_broker::auth::Password::hash(
        "imported-pw",
        [9, 8, 7, 6],
        amqp_broker::auth::HashAlgorithm::Sha256,
    );
    let defs = format!(
        r#"{{"users":[{{"name":"i-user","password_hash":"{hash}","hashing_algorithm":"rabbit_password_hashing_sha256","tags":["management"]}}],
            "vhosts":[{{"name":"i-vh","metadata":{{"description":"imported","tags":["t"]}}}}],
            "permissions":[{{"user":"i-user","vhost":"i-vh","configure":".*","write":".*","read":".*"}}],
            "policies":[{{"vhost":"i-vh","name":"short","pattern":"^i-q$","apply-to":"queues","definition":{{"max-length":1}},"priority":0}}],
            "queues":[{{"name":"i-q","vhost":"i-vh","durable":true,"auto_delete":false,"arguments":{{}}}}],
            "exchanges":[{{"name":"i-x","vhost":"i-vh","type":"fanout","durable":true,"auto_delete":false,"internal":false,"arguments":{{}}}}],
            "bindings":[{{"source":"i-x","vhost":"i-vh","destination":"i-q","destination_type":"queue","routing_key":"","arguments":{{}}}}]}}"#
    );
    assert_eq!(req("POST", "/api/definitions", &defs).status, 204);
    // Again: existing objects are left as they are (RabbitMQ's import).
    assert_eq!(req("POST", "/api/definitions", &defs).status, 204);
    assert_eq!(get_json(api, "/api/vhosts/i-vh")["description"], "imported");
    assert_eq!(
        get_json(api, "/api/bindings/i-vh/e/i-x/q/i-q")[0]["routing_key"],
        ""
    );
    assert_eq!(get_json(api, "/api/queues/i-vh/i-q")["policy"], "short");
    let mut c = login(amqp, "i-user", "imported-pw", "i-vh").expect("the imported user logs in");
    c.publish(1, "i-x", "", "one");
    c.publish(1, "i-x", "", "two");
    c.call_on(
        1,
        QueueDeclare {
            queue: "i-q".try_into().unwrap(),
            durable: true,
            passive: true,
            ..Default::default()
        },
    );
    drop(c);
    assert_eq!(
        get_json(api, "/api/queues/i-vh/i-q")["messages"],
        1,
        "the imported policy's max-length 1"
    );
    // Per-vhost import: objects without a vhost go to the one named.
    let r = req(
        "POST",
        "/api/definitions/i-vh",
        r#"{"queues":[{"name":"i-q2","durable":true,"auto_delete":false,"arguments":{}}]}"#,
    );
    assert_eq!(r.status, 204);
    let per = get_json(api, "/api/definitions/i-vh");
    let names: Vec<&str> = per["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["i-q", "i-q2"]);
    assert!(per["queues"][0].get("vhost").is_none());

    // API changes: a user with a clear password, a deleted one, a vhost.
    assert_eq!(
        req(
            "PUT",
            "/api/users/p-user",
            r#"{"password":"p-pw","tags":""}"#
        )
        .status,
        201
    );
    assert_eq!(
        req(
            "PUT",
            "/api/permissions/i-vh/p-user",
            r#"{"configure":"^p-","write":".*","read":".*"}"#
        )
        .status,
        201
    );
    assert_eq!(req("PUT", "/api/vhosts/gone-vh", "").status, 201);
    assert_eq!(req("DELETE", "/api/vhosts/gone-vh", "").status, 204);
    let before = get_json(api, "/api/definitions");
    assert!(ours.broker.terminate().is_some_and(|s| s.success()));

    // All of it comes back from the data directory.
    let ours = start_with(&["--data-dir", &data_arg]);
    let api = ours.api;
    let after = get_json(api, "/api/definitions");
    for k in [
        "users",
        "vhosts",
        "permissions",
        "queues",
        "exchanges",
        "bindings",
        "policies",
    ] {
        assert_eq!(before[k], after[k], "{k} after a restart");
    }
    assert_eq!(
        get_json(api, "/api/vhosts/i-vh")["tags"],
        serde_json::json!(["t"])
    );
    assert_eq!(
        http(api, "GET", "/api/vhosts/gone-vh", GUEST, "").status,
        404
    );
    assert_eq!(get_json(api, "/api/queues/i-vh/i-q")["durable"], true);
    assert!(login(ours.broker.addr, "i-user", "imported-pw", "i-vh").is_ok());
    let mut p = login(ours.broker.addr, "p-user", "p-pw", "i-vh").expect("p-user logs in");
    assert_eq!(declare_on(&mut p, 2, "p-q"), Ok(()));
    assert!(declare_on(&mut p, 3, "other").is_err());
    drop(p);
    // A deleted user stays deleted (the saved state wins over the
    // first-boot guest).
    assert_eq!(
        http(api, "DELETE", "/api/users/p-user", GUEST, "").status,
        204
    );
    assert!(ours.broker.terminate().is_some_and(|s| s.success()));
    let ours = start_with(&["--data-dir", &data_arg]);
    assert!(login(ours.broker.addr, "p-user", "p-pw", "i-vh").is_err());
    assert!(login(ours.broker.addr, "guest", "guest", "/").is_ok());
    assert!(ours.broker.terminate().is_some_and(|s| s.success()));
    let _ = std::fs::remove_dir_all(&data);
}

/// The name of `user`'s connection in `vhost` on a broker's API, encoded
/// for a path (RabbitMQ lists a connection after its next statistics
/// emission: polled up to 15 s).
fn connection_path(api: SocketAddr, user: &str, vhost: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let conns = get_json(api, "/api/connections");
        if let Some(c) = conns
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["user"] == user && c["vhost"] == vhost)
        {
            let name = c["name"].as_str().unwrap();
            return format!(
                "/api/connections/{}",
                name.replace(' ', "%20").replace('>', "%3E")
            );
        }
        assert!(Instant::now() < deadline, "{user}'s connection is listed");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn rabbitmq_mutations_match() {
    if !support::interop("rabbitmq_mutations_match") {
        return;
    }
    let rabbit_api = SocketAddr::from(([127, 0, 0, 1], 15672));
    if TcpStream::connect(rabbit_api).is_err() {
        panic!(
            "RabbitMQ's management API is not on 127.0.0.1:15672: run `rabbitmq-plugins enable rabbitmq_management` (or set AMQP_INTEROP=0)"
        );
    }
    let rabbit_amqp = SocketAddr::from(([127, 0, 0, 1], 5672));
    let _serial = serial();
    let ours = start();
    let p = format!("mgmt-mut-{}", std::process::id());
    let all = r#"{"configure":".*","write":".*","read":".*"}"#;
    // (method, path, body, compare the body exactly).
    let steps: Vec<(&str, String, String, bool)> = vec![
        ("PUT", format!("/api/vhosts/{p}-vh"), "{}".into(), true),
        ("PUT", format!("/api/vhosts/{p}-vh"), "".into(), true),
        ("PUT", format!("/api/vhosts/{p}-vh"), "{bad".into(), true),
        ("PUT", format!("/api/vhosts/{p}-vh"), "[1]".into(), true),
        (
            "PUT",
            format!("/api/vhosts/{p}-vh2"),
            r#"{"description":"d","tags":"a,b"}"#.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/users/{p}-u"),
            r#"{"password":"pw"}"#.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/users/{p}-u"),
            r#"{"password":"pw","tags":"management"}"#.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/users/{p}-u"),
            r#"{"password":"pw","tags":["management"]}"#.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/users/{p}-u2"),
            r#"{"password_hash":"abc","tags":""}"#.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/users/{p}-u3"),
            r#"{"password_hash":"","tags":"x"}"#.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/permissions/{p}-vh/{p}-u"),
            r#"{"configure":".*"}"#.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/permissions/{p}-none/{p}-u"),
            all.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/permissions/{p}-vh/{p}-none"),
            all.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/permissions/{p}-vh/{p}-u"),
            r#"{"configure":"(","write":".*","read":".*"}"#.into(),
            false,
        ),
        (
            "PUT",
            format!("/api/permissions/{p}-vh/{p}-u"),
            all.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/permissions/{p}-vh/{p}-u"),
            all.into(),
            true,
        ),
        (
            "GET",
            format!("/api/permissions/{p}-vh/{p}-u"),
            "".into(),
            true,
        ),
        (
            "GET",
            format!("/api/permissions/{p}-vh/guest"),
            "".into(),
            true,
        ),
        (
            "GET",
            format!("/api/permissions/{p}-vh/{p}-none"),
            "".into(),
            true,
        ),
        (
            "GET",
            format!("/api/users/{p}-u/permissions"),
            "".into(),
            true,
        ),
        (
            "GET",
            format!("/api/vhosts/{p}-vh/permissions"),
            "".into(),
            false,
        ),
        ("GET", format!("/api/users/{p}-u"), "".into(), false),
        ("GET", format!("/api/users/{p}-u3"), "".into(), true),
        ("GET", format!("/api/vhosts/{p}-vh2"), "".into(), false),
        ("POST", "/api/definitions".into(), "[1]".into(), true),
        (
            "POST",
            "/api/definitions".into(),
            format!(
                r#"{{"queues":[{{"name":"{p}-q","vhost":"{p}-none","durable":true,"auto_delete":false,"arguments":{{}}}}]}}"#
            ),
            true,
        ),
        (
            "POST",
            "/api/definitions".into(),
            format!(
                r#"{{"queues":[{{"name":"{p}-q","vhost":"{p}-vh","durable":true,"auto_delete":false,"arguments":{{}}}}],
                    "exchanges":[{{"name":"{p}-x","vhost":"{p}-vh","type":"fanout","durable":true,"auto_delete":false,"internal":false,"arguments":{{}}}}],
                    "bindings":[{{"source":"{p}-x","vhost":"{p}-vh","destination":"{p}-q","destination_type":"queue","routing_key":"k","arguments":{{}}}}]}}"#
            ),
            true,
        ),
        (
            "POST",
            format!("/api/definitions/{p}-vh"),
            format!(
                r#"{{"queues":[{{"name":"{p}-q","durable":false,"auto_delete":false,"arguments":{{}}}}]}}"#
            ),
            true,
        ),
        ("GET", format!("/api/queues/{p}-vh/{p}-q"), "".into(), false),
        (
            "GET",
            format!("/api/bindings/{p}-vh/e/{p}-x/q/{p}-q"),
            "".into(),
            false,
        ),
        // Topic permissions.
        (
            "PUT",
            format!("/api/topic-permissions/{p}-vh/{p}-u"),
            r#"{"exchange":"amq.topic","write":"^a"}"#.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/topic-permissions/{p}-vh/{p}-u"),
            r#"{"exchange":"amq.topic","write":"(","read":""}"#.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/topic-permissions/{p}-none/{p}-u"),
            r#"{"exchange":"amq.topic","write":"a","read":"b"}"#.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/topic-permissions/{p}-vh/{p}-none"),
            r#"{"exchange":"amq.topic","write":"a","read":"b"}"#.into(),
            true,
        ),
        (
            "GET",
            format!("/api/topic-permissions/{p}-vh/{p}-u"),
            "".into(),
            true,
        ),
        (
            "PUT",
            format!("/api/topic-permissions/{p}-vh/{p}-u"),
            r#"{"exchange":"amq.topic","write":"^{username}\\.","read":""}"#.into(),
            true,
        ),
        (
            "PUT",
            format!("/api/topic-permissions/{p}-vh/{p}-u"),
            r#"{"exchange":"amq.topic","write":"^{username}\\.","read":".*"}"#.into(),
            true,
        ),
        (
            "GET",
            format!("/api/topic-permissions/{p}-vh/{p}-u"),
            "".into(),
            true,
        ),
        (
            "GET",
            format!("/api/users/{p}-u/topic-permissions"),
            "".into(),
            true,
        ),
        (
            "GET",
            format!("/api/vhosts/{p}-vh/topic-permissions"),
            "".into(),
            true,
        ),
        (
            "GET",
            format!("/api/topic-permissions/{p}-vh/guest"),
            "".into(),
            true,
        ),
        (
            "PUT",
            format!("/api/topic-permissions/{p}-vh/{p}-u"),
            r#"{"exchange":"other","write":"","read":""}"#.into(),
            true,
        ),
        (
            "DELETE",
            format!("/api/topic-permissions/{p}-vh/{p}-u"),
            "".into(),
            true,
        ),
        (
            "DELETE",
            format!("/api/topic-permissions/{p}-vh/{p}-u"),
            "".into(),
            true,
        ),
        (
            "GET",
            format!("/api/users/{p}-u/topic-permissions"),
            "".into(),
            true,
        ),
        (
            "POST",
            "/api/definitions".into(),
            format!(
                r#"{{"topic_permissions":[{{"user":"{p}-u","vhost":"{p}-vh","exchange":"amq.topic","write":"w","read":"r"}}]}}"#
            ),
            true,
        ),
        (
            "GET",
            format!("/api/topic-permissions/{p}-vh/{p}-u"),
            "".into(),
            true,
        ),
        (
            "DELETE",
            format!("/api/permissions/{p}-vh/{p}-u"),
            "".into(),
            true,
        ),
        (
            "DELETE",
            format!("/api/permissions/{p}-vh/{p}-u"),
            "".into(),
            true,
        ),
        // A user's limits come in with a definitions import.
        (
            "POST",
            "/api/definitions".into(),
            format!(
                r#"{{"users":[{{"name":"{p}-lim","password_hash":"","hashing_algorithm":"rabbit_password_hashing_sha256","tags":[],"limits":{{"max-channels":7}}}}]}}"#
            ),
            true,
        ),
        ("GET", format!("/api/users/{p}-lim"), "".into(), true),
        ("DELETE", format!("/api/users/{p}-lim"), "".into(), true),
        ("DELETE", format!("/api/users/{p}-u"), "".into(), true),
        ("DELETE", format!("/api/users/{p}-u"), "".into(), true),
        ("DELETE", format!("/api/users/{p}-u2"), "".into(), true),
        ("DELETE", format!("/api/users/{p}-u3"), "".into(), true),
        ("DELETE", format!("/api/vhosts/{p}-vh2"), "".into(), true),
        ("DELETE", format!("/api/vhosts/{p}-vh2"), "".into(), true),
        ("DELETE", "/api/connections/no-such".into(), "".into(), true),
    ];
    let body_of = |r: &support::Reply| -> Value {
        if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&r.body).unwrap_or(Value::String("(not JSON)".into()))
        }
    };
    let mut diffs = Vec::new();
    for (method, path, body, exact) in &steps {
        let a = http(rabbit_api, method, path, GUEST, body);
        let b = http(ours.api, method, path, GUEST, body);
        let what = format!("{method} {path} {body}");
        if a.status != b.status {
            diffs.push(format!("{what}: status {}, ours {}", a.status, b.status));
            continue;
        }
        let (mut va, mut vb) = (body_of(&a), body_of(&b));
        for v in [&mut va, &mut vb] {
            if let Value::Object(o) = v {
                // The node's name differs; RabbitMQ's error texts for
                // regular expressions are PCRE's.
                o.remove("cluster_state");
                if o.get("reason").is_some_and(|r| r[0] == "invalid_regexp") {
                    o.insert("reason".into(), Value::Null);
                }
            }
        }
        if *exact {
            if va != vb {
                diffs.push(format!("{what}: {va}, ours {vb}"));
            }
        } else {
            let mut d = Vec::new();
            compare(&what, "", &va, &vb, &mut d);
            // Hashes have random salts.
            d.retain(|d| !d.contains("password_hash"));
            diffs.extend(d);
        }
    }

    // Over AMQP: closing a connection, deleting a vhost, deleting a user.
    let mut texts = Vec::new();
    for (amqp, api) in [(rabbit_amqp, rabbit_api), (ours.broker.addr, ours.api)] {
        let mut t = Vec::new();
        let put = |path: String, body: &str| http(api, "PUT", &path, GUEST, body).status;
        assert_eq!(
            put(
                format!("/api/users/{p}-c"),
                r#"{"password":"pw","tags":""}"#
            ),
            201
        );
        assert_eq!(put(format!("/api/permissions/{p}-vh/{p}-c"), all), 201);
        let mut c = login(amqp, &format!("{p}-c"), "pw", &format!("{p}-vh")).unwrap();
        let path = connection_path(api, &format!("{p}-c"), &format!("{p}-vh"));
        assert_eq!(http(api, "DELETE", &path, GUEST, "").status, 204);
        t.push(closed_by_broker(&mut c));
        let mut c = login(amqp, &format!("{p}-c"), "pw", &format!("{p}-vh")).unwrap();
        assert_eq!(
            http(api, "DELETE", &format!("/api/users/{p}-c"), GUEST, "").status,
            204
        );
        t.push(closed_by_broker(&mut c));
        let mut c = login(amqp, "guest", "guest", &format!("{p}-vh")).unwrap();
        assert_eq!(declare_on(&mut c, 2, &format!("{p}-q9")), Ok(()));
        assert_eq!(
            http(api, "DELETE", &format!("/api/vhosts/{p}-vh"), GUEST, "").status,
            204
        );
        // RabbitMQ says "is down" instead when the vhost's supervisor
        // stops before the deletion's own close reaches the connection.
        t.push(closed_by_broker(&mut c).replace("' is down", "' is deleted"));
        t.push(
            http(api, "GET", &format!("/api/queues/{p}-vh/{p}-q9"), GUEST, "")
                .status
                .to_string(),
        );
        texts.push(t);
    }
    for d in &diffs {
        eprintln!("difference: {d}");
    }
    assert_eq!(texts[0], texts[1], "closes: RabbitMQ's, then ours");
    assert!(
        texts[1][0].ends_with("Closed via management plugin"),
        "{:?}",
        texts[1]
    );
    assert!(
        diffs.is_empty(),
        "differences from RabbitMQ:\n{}",
        diffs.join("\n")
    );
    assert!(ours.broker.terminate().is_some_and(|s| s.success()));
}
