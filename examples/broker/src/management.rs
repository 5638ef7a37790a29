//! A RabbitMQ-compatible management HTTP API (the JSON of RabbitMQ 3.10's
//! management plugin, so that its clients parse it) and a Prometheus
//! exporter (the metric names of RabbitMQ's `rabbitmq_prometheus`).
//!
//! Both read [`Snapshot`]s of the core taken under its lock
//! ([`Shared::with_core`]); mutations call the core's `admin_*` methods.
//!
//! **Rates.** A sampler task ([`sample_loop`]) takes a snapshot every
//! sample interval (5 s by default, RabbitMQ's `collect_statistics_interval`;
//! `--management-sample-interval`). Every `*_details.rate` is the change of
//! its counter (or depth) between the last two samples divided by the time
//! between them, in units per second, as RabbitMQ's "basic" rates mode
//! reports the last interval. Before two samples exist rates are 0.0.
//!
//! **Access.** HTTP basic authentication against the broker's users
//! ([`Auth`]), with RabbitMQ's loopback restriction. Users tagged
//! `management`, `policymaker`, `monitoring` or `administrator` may use
//! the API; `/api/nodes` needs `monitoring` or `administrator`;
//! `/api/users`, `/api/permissions` and `/api/definitions` need
//! `administrator`, as do creating and deleting vhosts, users and
//! permissions and importing definitions (`POST /api/definitions`);
//! closing a connection (`DELETE /api/connections/name`) needs
//! `administrator` or to own it.
//!
//! **Mutations of users, vhosts and permissions** take effect at once:
//! new logins and vhost opens see them, open connections' permission
//! checks are redone from their next operation, deleting a vhost or a user
//! closes its connections with 320 CONNECTION_FORCED (RabbitMQ's texts),
//! and they are saved with the durable topology in the data directory's
//! `definitions.json`, which is authoritative at the next boot. Users without `monitoring` or `administrator` see the
//! virtual hosts they have permissions in, and only their own connections,
//! channels and consumers.

use crate::auth::{Access, Auth};
use crate::core::snapshot::{AdminError, ConnSnap, MessageStats, QueueSnap, Snapshot};
use crate::shell::Shared;
use amqp_codec::types::{BasicProperties, FieldTable, ShortString};
use amqp_router::definitions::{json_to_table, table_to_json, value_to_json};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The RabbitMQ version whose management API and metrics this one
/// follows (what `rabbitmq_version` and `management_version` say).
pub const RABBITMQ_COMPAT_VERSION: &str = "3.10.0";

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How the management side is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node name shown (`amqp-broker@<hostname>` by default).
    pub node: String,
    /// Time between rate samples.
    pub sample_interval: Duration,
    /// The AMQP listeners (shown in `/api/overview`).
    pub amqp_listeners: Vec<SocketAddr>,
    /// The management listener.
    pub management: Option<SocketAddr>,
    /// The Prometheus listener.
    pub prometheus: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node: default_node_name(),
            sample_interval: Duration::from_secs(5),
            amqp_listeners: Vec::new(),
            management: None,
            prometheus: None,
        }
    }
}

/// `amqp-broker@<hostname>`.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("amqp-broker@{host}")
}

/// Depths sampled for rates: messages, ready, unacknowledged.
type Depths = [u64; 3];

#[derive(Debug, Clone, Default)]
struct Sample {
    totals: MessageStats,
    depths: Depths,
    queues: HashMap<(String, String), (MessageStats, Depths)>,
    exchanges: HashMap<(String, String), [u64; 2]>,
}

/// Per-second rates of [`MessageStats`] counters, by key.
type StatRates = HashMap<&'static str, f64>;

/// Rates, per second, computed from the last two samples.
#[derive(Debug, Clone, Default)]
struct Rates {
    totals: StatRates,
    depths: [f64; 3],
    queues: HashMap<(String, String), (StatRates, [f64; 3])>,
    exchanges: HashMap<(String, String), [f64; 2]>,
}

fn stat_rates(new: &MessageStats, old: &MessageStats, secs: f64) -> HashMap<&'static str, f64> {
    new.fields()
        .iter()
        .zip(old.fields().iter())
        .map(|((k, a), (_, b))| (*k, a.saturating_sub(*b) as f64 / secs))
        .collect()
}

fn depth_rates(new: &Depths, old: &Depths, secs: f64) -> [f64; 3] {
    std::array::from_fn(|i| (new[i] as f64 - old[i] as f64) / secs)
}

fn sample_of(s: &Snapshot) -> Sample {
    let mut depths = [0; 3];
    let mut queues = HashMap::new();
    for q in &s.queues {
        let d = [q.messages(), q.messages_ready, q.messages_unacknowledged];
        for i in 0..3 {
            depths[i] += d[i];
        }
        queues.insert((q.vhost.clone(), q.name.clone()), (q.stats, d));
    }
    let exchanges = s
        .exchanges
        .iter()
        .filter_map(|x| {
            let n = x.publish_in?;
            Some(((x.vhost.clone(), x.name.clone()), [n, x.publish_out]))
        })
        .collect();
    Sample {
        totals: s.totals,
        depths,
        queues,
        exchanges,
    }
}

/// The management API's state.
pub struct Management {
    shared: Arc<Shared>,
    config: Config,
    started: Instant,
    last: Mutex<Option<(Instant, Sample)>>,
    /// The last [`HISTORY`] samples with their time (ms since the Unix
    /// epoch), for `?msg_rates_age=..&msg_rates_incr=..`.
    history: Mutex<std::collections::VecDeque<(u64, Sample)>>,
    rates: Mutex<Rates>,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Management {
    /// The management state of the broker whose connections share
    /// `shared`.
    pub fn new(shared: Arc<Shared>, config: Config) -> Arc<Self> {
        Arc::new(Management {
            shared,
            config,
            started: Instant::now(),
            last: Mutex::new(None),
            history: Mutex::new(std::collections::VecDeque::new()),
            rates: Mutex::new(Rates::default()),
        })
    }

    fn snapshot(&self) -> Snapshot {
        self.shared.with_core(|c| c.snapshot())
    }

    fn rates(&self) -> Rates {
        self.rates.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes one rate sample now.
    pub fn sample(&self) {
        let now = Instant::now();
        let s = sample_of(&self.snapshot());
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, old)) = last.as_ref() {
            let secs = now.duration_since(*t).as_secs_f64().max(1e-3);
            let mut rates = Rates {
                totals: stat_rates(&s.totals, &old.totals, secs),
                depths: depth_rates(&s.depths, &old.depths, secs),
                queues: HashMap::new(),
                exchanges: HashMap::new(),
            };
            for (k, n) in &s.exchanges {
                let o = old.exchanges.get(k).copied().unwrap_or_default();
                let r = std::array::from_fn(|i| n[i].saturating_sub(o[i]) as f64 / secs);
                rates.exchanges.insert(k.clone(), r);
            }
            for (k, (st, d)) in &s.queues {
                let (ost, od) = old.queues.get(k).copied().unwrap_or_default();
                rates.queues.insert(
                    k.clone(),
                    (stat_rates(st, &ost, secs), depth_rates(d, &od, secs)),
                );
            }
            *self.rates.lock().unwrap_or_else(|p| p.into_inner()) = rates;
        }
        {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            let mut kept = s.clone();
            if kept.queues.len() > HISTORY_QUEUES {
                // Many queues: their history would cost too much memory.
                kept.queues.clear();
            }
            kept.exchanges.clear();
            h.push_back((unix_ms(), kept));
            while h.len() > HISTORY {
                h.pop_front();
            }
        }
        *last = Some((now, s));
    }
}

/// Samples kept for `samples` in `*_details` (RabbitMQ's
/// `msg_rates_age`/`lengths_age` queries): 5 minutes at the default 5 s
/// interval.
pub const HISTORY: usize = 60;

/// Above this many queues, per-queue history is not kept (global only).
pub const HISTORY_QUEUES: usize = 1000;

/// `?msg_rates_age=S&msg_rates_incr=S` and `?lengths_age=S&lengths_incr=S`
/// (seconds): RabbitMQ's request for `samples` in the `*_details` of
/// message counters and queue lengths.
#[derive(Debug, Clone, Copy, Default)]
struct SampleQuery {
    msg: Option<(f64, f64)>,
    lengths: Option<(f64, f64)>,
}

impl SampleQuery {
    fn parse(query: Option<&str>) -> Self {
        let mut get = HashMap::new();
        for kv in query.unwrap_or("").split('&') {
            if let Some((k, v)) = kv.split_once('=')
                && let Ok(v) = v.parse::<f64>()
                && v.is_finite()
                && v > 0.0
            {
                get.insert(k, v);
            }
        }
        let pair = |a: &str, i: &str| -> Option<(f64, f64)> {
            let (age, incr) = (*get.get(a)?, *get.get(i)?);
            // At most 1000 points.
            (age / incr <= 1000.0).then_some((age, incr))
        };
        SampleQuery {
            msg: pair("msg_rates_age", "msg_rates_incr"),
            lengths: pair("lengths_age", "lengths_incr"),
        }
    }
}

impl Management {
    /// Adds RabbitMQ's `samples`, `avg` and `avg_rate` to every
    /// `<key>_details` of `o` whose counter `get` finds in the history:
    /// newest first, one every `incr` seconds over `age`, each the last
    /// sample taken at or before its (aligned) timestamp.
    fn add_samples(
        &self,
        o: &mut Value,
        (age, incr): (f64, f64),
        get: impl Fn(&Sample, &str) -> Option<u64>,
    ) {
        let Value::Object(o) = o else { return };
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let incr_ms = ((incr * 1000.0) as u64).max(1);
        let now = unix_ms();
        let newest = now - now % incr_ms;
        let points = (age / incr) as u64;
        let keys: Vec<String> = o
            .keys()
            .filter_map(|k| k.strip_suffix("_details").map(str::to_owned))
            .collect();
        for k in keys {
            let mut samples = Vec::new();
            for i in 0..=points {
                let t = newest.saturating_sub(i * incr_ms);
                let Some((_, s)) = h.iter().rev().find(|(ts, _)| *ts <= t) else {
                    break;
                };
                let Some(v) = get(s, &k) else { break };
                samples.push((v, t));
            }
            if samples.is_empty() {
                continue;
            }
            let avg = samples.iter().map(|(v, _)| *v as f64).sum::<f64>() / samples.len() as f64;
            let (first, last) = (samples[samples.len() - 1], samples[0]);
            let span = (last.1 - first.1) as f64 / 1000.0;
            let avg_rate = if span > 0.0 {
                (last.0 as f64 - first.0 as f64) / span
            } else {
                0.0
            };
            if let Some(Value::Object(d)) = o.get_mut(&format!("{k}_details")) {
                d.insert(
                    "samples".into(),
                    samples
                        .iter()
                        .map(|(v, t)| json!({"sample": v, "timestamp": t}))
                        .collect::<Vec<_>>()
                        .into(),
                );
                d.insert("avg".into(), json!(avg));
                d.insert("avg_rate".into(), json!(avg_rate));
            }
        }
    }

    /// `samples` for a queue's `message_stats` and lengths.
    fn queue_samples(&self, v: &mut Value, vhost: &str, name: &str, q: SampleQuery) {
        let key = (vhost.to_owned(), name.to_owned());
        let stat = |s: &Sample, k: &str| {
            let (st, _) = s.queues.get(&key)?;
            st.fields().iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
        };
        let length = |s: &Sample, k: &str| {
            let (_, d) = s.queues.get(&key)?;
            depth(d, k)
        };
        if let Some(p) = q.msg {
            self.add_samples(&mut v["message_stats"], p, stat);
        }
        if let Some(p) = q.lengths {
            self.add_samples(v, p, length);
        }
    }
}

fn depth(d: &Depths, k: &str) -> Option<u64> {
    match k {
        "messages" => Some(d[0]),
        "messages_ready" => Some(d[1]),
        "messages_unacknowledged" => Some(d[2]),
        _ => None,
    }
}

/// Samples rates every [`Config::sample_interval`] until `shutdown`.
pub async fn sample_loop(m: Arc<Management>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(m.config.sample_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => m.sample(),
            _ = shutdown.changed() => return,
        }
    }
}

// ----- errors ------------------------------------------------------------

/// An error answered as RabbitMQ's JSON error body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: Value,
}

impl ApiError {
    fn not_found() -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error: "Object Not Found",
            reason: "Not Found".into(),
        }
    }

    fn unauthorised(reason: &str) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorised",
            reason: reason.into(),
        }
    }

    fn bad_request(reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            reason: Value::String(reason.into()),
        }
    }

    /// A 400 whose reason is an Erlang term RabbitMQ renders as JSON (a
    /// list such as `["not_base64","abc"]`).
    fn bad_request_term(reason: Value) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            reason,
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound(_) => ApiError::not_found(),
            AdminError::BadRequest(r) => ApiError::bad_request(r),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(json!({"error": self.error, "reason": self.reason})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
            );
        }
        r
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(v: Value) -> ApiResult {
    Ok(axum::Json(v).into_response())
}

// ----- authentication ------------------------------------------------------

/// An authenticated management user.
#[derive(Debug, Clone)]
pub struct User {
    name: String,
    tags: Vec<String>,
    /// Sees every vhost and connection (administrator, monitoring).
    monitor: bool,
    admin: bool,
}

impl User {
    fn need_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::unauthorised("Not administrator user"))
        }
    }

    fn need_monitor(&self) -> Result<(), ApiError> {
        if self.monitor {
            Ok(())
        } else {
            Err(ApiError::unauthorised("Not monitor user"))
        }
    }

    /// Policies: administrators and policymakers (in the vhosts they may
    /// open), as RabbitMQ.
    fn need_policymaker(&self, auth: &Auth, vhost: &str) -> Result<(), ApiError> {
        let maker = self.tags.iter().any(|t| t == "policymaker");
        if self.admin || (maker && auth.may_open(&self.name, vhost)) {
            Ok(())
        } else {
            Err(ApiError::unauthorised("Not policymaker user"))
        }
    }

    fn sees_vhost(&self, auth: &Auth, vhost: &str) -> bool {
        self.monitor || auth.may_open(&self.name, vhost)
    }

    fn sees_conn(&self, c: &ConnSnap) -> bool {
        self.monitor || c.user.as_deref() == Some(self.name.as_str())
    }
}

fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let h = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = h.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

impl FromRequestParts<Arc<Management>> for User {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        m: &Arc<Management>,
    ) -> Result<Self, Self::Rejection> {
        let loopback = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .is_none_or(|c| c.0.ip().is_loopback());
        let (name, password) =
            basic_credentials(parts).ok_or_else(|| ApiError::unauthorised("Login failed"))?;
        let tags = m.shared.with_core(|c| {
            let auth = c.auth();
            auth.login(&name, &password, loopback)
                .then(|| auth.users.get(&name).map(|u| u.tags.clone()))
                .flatten()
        });
        let tags = tags.ok_or_else(|| ApiError::unauthorised("Login failed"))?;
        let has = |t: &str| tags.iter().any(|x| x == t);
        let admin = has("administrator");
        let monitor = admin || has("monitoring");
        if !(monitor || has("management") || has("policymaker")) {
            return Err(ApiError::unauthorised("Not management user"));
        }
        Ok(User {
            name,
            tags,
            monitor,
            admin,
        })
    }
}

// ----- JSON shapes ---------------------------------------------------------

fn rate(r: f64) -> Value {
    json!({ "rate": r })
}

/// `message_stats` with the `keys` wanted, each with `<key>_details`.
fn message_stats(
    s: &MessageStats,
    rates: Option<&HashMap<&'static str, f64>>,
    keys: &[&str],
) -> Value {
    let mut o = Map::new();
    for (k, v) in s.fields() {
        if !keys.contains(&k) {
            continue;
        }
        let r = rates.and_then(|r| r.get(k)).copied().unwrap_or(0.0);
        o.insert(k.into(), json!(v));
        o.insert(format!("{k}_details"), rate(r));
    }
    Value::Object(o)
}

const QUEUE_STATS: &[&str] = &[
    "ack",
    "deliver",
    "deliver_get",
    "deliver_no_ack",
    "get",
    "get_empty",
    "get_no_ack",
    "publish",
    "redeliver",
];

const ALL_STATS: &[&str] = &[
    "ack",
    "confirm",
    "deliver",
    "deliver_get",
    "deliver_no_ack",
    "drop_unroutable",
    "get",
    "get_empty",
    "get_no_ack",
    "publish",
    "redeliver",
    "return_unroutable",
];

fn table(t: &FieldTable) -> Value {
    Value::Object(table_to_json(t))
}

fn conn_name(c: &ConnSnap) -> String {
    match c.info.addrs {
        Some((peer, local)) => format!("{peer} -> {local}"),
        None => format!("connection {}", c.id),
    }
}

fn peer_host_port(c: &ConnSnap) -> (Value, Value) {
    match c.info.addrs {
        Some((peer, _)) => (json!(peer.ip().to_string()), json!(peer.port())),
        None => (Value::Null, Value::Null),
    }
}

impl Management {
    fn queue_json(&self, q: &QueueSnap, s: &Snapshot, rates: &Rates, detail: bool) -> Value {
        let key = (q.vhost.clone(), q.name.clone());
        let (qr, dr) = match rates.queues.get(&key) {
            Some((a, b)) => (Some(a), *b),
            None => (None, [0.0; 3]),
        };
        let mut o = json!({
            "arguments": table(&q.arguments),
            "auto_delete": q.auto_delete,
            "backing_queue_status": {
                "avg_ack_egress_rate": 0.0,
                "avg_ack_ingress_rate": 0.0,
                "avg_egress_rate": 0.0,
                "avg_ingress_rate": 0.0,
                "len": q.messages_ready,
                "mode": "default",
                "version": 1,
            },
            "consumer_capacity": if q.consumers > 0 { 1.0 } else { 0.0 },
            "consumer_utilisation": if q.consumers > 0 { 1.0 } else { 0.0 },
            "consumers": q.consumers,
            "durable": q.durable,
            "effective_policy_definition": q.policy.as_ref().map_or(json!({}), |p| Value::Object(p.1.clone())),
            "exclusive": q.exclusive_owner.is_some(),
            "exclusive_consumer_tag": q.exclusive_consumer_tag,
            "head_message_timestamp": null,
            "memory": q.memory,
            "message_bytes": q.message_bytes_ready + q.message_bytes_unacknowledged,
            "message_bytes_paged_out": q.message_bytes_paged_out,
            "message_bytes_persistent": 0,
            "message_bytes_ram": q.message_bytes_ready - q.message_bytes_paged_out + q.message_bytes_unacknowledged,
            "message_bytes_ready": q.message_bytes_ready,
            "message_bytes_unacknowledged": q.message_bytes_unacknowledged,
            "message_stats": message_stats(&q.stats, qr, QUEUE_STATS),
            "messages": q.messages(),
            "messages_details": rate(dr[0]),
            "messages_paged_out": q.messages_paged_out,
            "messages_persistent": 0,
            "messages_ram": q.messages() - q.messages_paged_out,
            "messages_ready": q.messages_ready,
            "messages_ready_details": rate(dr[1]),
            "messages_ready_ram": q.messages_ready - q.messages_paged_out,
            "messages_unacknowledged": q.messages_unacknowledged,
            "messages_unacknowledged_details": rate(dr[2]),
            "messages_unacknowledged_ram": q.messages_unacknowledged,
            "name": q.name,
            "node": self.config.node,
            "operator_policy": null,
            "policy": q.policy.as_ref().map(|p| p.0.clone()),
            "recoverable_slaves": null,
            "single_active_consumer_tag": q.single_active_consumer_tag,
            "state": "running",
            "type": q.kind,
            "vhost": q.vhost,
        });
        if detail && let Value::Object(m) = &mut o {
            let consumers: Vec<Value> = s
                .consumers
                .iter()
                .filter(|k| k.vhost == q.vhost && k.queue == q.name)
                .map(|k| self.consumer_json(k, s))
                .collect();
            m.insert("consumer_details".into(), Value::Array(consumers));
            m.insert("deliveries".into(), json!([]));
            m.insert("incoming".into(), json!([]));
        }
        o
    }

    fn exchange_json(
        &self,
        x: &crate::core::snapshot::ExchangeSnap,
        rates: &Rates,
        detail: bool,
    ) -> Value {
        let mut o = json!({
            "arguments": table(&x.arguments),
            "auto_delete": x.auto_delete,
            "durable": x.durable,
            "internal": x.internal,
            "name": x.name,
            "type": x.kind,
            "user_who_performed_action": if x.name.is_empty() || x.name.starts_with("amq.") {
                "rmq-internal"
            } else {
                ""
            },
            "vhost": x.vhost,
        });
        if let Some(n) = x.publish_in
            && let Value::Object(m) = &mut o
        {
            let r = rates
                .exchanges
                .get(&(x.vhost.clone(), x.name.clone()))
                .copied()
                .unwrap_or_default();
            m.insert(
                "message_stats".into(),
                json!({
                    "publish_in": n,
                    "publish_in_details": rate(r[0]),
                    "publish_out": x.publish_out,
                    "publish_out_details": rate(r[1]),
                }),
            );
        }
        if detail && let Value::Object(m) = &mut o {
            m.insert("incoming".into(), json!([]));
            m.insert("outgoing".into(), json!([]));
        }
        o
    }

    fn conn_json(&self, c: &ConnSnap) -> Value {
        let (peer_host, peer_port) = peer_host_port(c);
        let (host, port) = match c.info.addrs {
            Some((_, local)) => (json!(local.ip().to_string()), json!(local.port())),
            None => (Value::Null, Value::Null),
        };
        let tls = c.tls.as_ref();
        let t = c.info.tuning.unwrap_or(amqp_codec::Tuning {
            channel_max: 0,
            frame_max: 0,
            heartbeat: 0,
        });
        json!({
            "auth_mechanism": "PLAIN",
            "channel_max": t.channel_max,
            "channels": c.channels,
            "client_properties": table(&c.info.client_properties()),
            "connected_at": c.info.connected_at,
            "frame_max": t.frame_max,
            "host": host,
            "name": conn_name(c),
            "node": self.config.node,
            "peer_cert_issuer": tls.and_then(|t| t.peer_cert_issuer.clone()),
            "peer_cert_subject": tls.and_then(|t| t.peer_cert_subject.clone()),
            "peer_cert_validity": null,
            "peer_host": peer_host,
            "peer_port": peer_port,
            "port": port,
            "protocol": "AMQP 0-9-1",
            "ssl": tls.is_some(),
            "ssl_cipher": tls.map(|t| t.cipher.clone()),
            "ssl_hash": null,
            "ssl_key_exchange": null,
            "ssl_protocol": tls.map(|t| t.protocol),
            "state": c.state,
            "timeout": t.heartbeat,
            "type": "network",
            "user": c.user.clone().unwrap_or_default(),
            "user_who_performed_action": c.user.clone().unwrap_or_default(),
            "vhost": c.vhost.clone().unwrap_or_default(),
        })
    }

    fn channel_json(&self, ch: &crate::core::snapshot::ChanSnap, s: &Snapshot) -> Value {
        let c = s.connections.iter().find(|c| c.id == ch.conn);
        let (name, ph, pp, user, vhost) = match c {
            Some(c) => {
                let (ph, pp) = peer_host_port(c);
                (
                    conn_name(c),
                    ph,
                    pp,
                    c.user.clone().unwrap_or_default(),
                    c.vhost.clone().unwrap_or_default(),
                )
            }
            None => (
                String::new(),
                Value::Null,
                Value::Null,
                String::new(),
                String::new(),
            ),
        };
        json!({
            "acks_uncommitted": 0,
            "confirm": ch.confirm,
            "connection_details": {"name": name, "peer_host": ph, "peer_port": pp},
            "consumer_count": ch.consumers,
            "global_prefetch_count": ch.global_prefetch,
            "messages_unacknowledged": ch.unacked,
            "messages_uncommitted": 0,
            "messages_unconfirmed": 0,
            "name": format!("{name} ({})", ch.number),
            "node": self.config.node,
            "number": ch.number,
            "pending_raft_commands": 0,
            "prefetch_count": ch.prefetch,
            "state": "running",
            "transactional": ch.transactional,
            "user": user,
            "user_who_performed_action": user,
            "vhost": vhost,
        })
    }

    fn consumer_json(&self, k: &crate::core::snapshot::ConsumerSnap, s: &Snapshot) -> Value {
        let c = s.connections.iter().find(|c| c.id == k.conn);
        let (name, ph, pp, user) = match c {
            Some(c) => {
                let (ph, pp) = peer_host_port(c);
                (conn_name(c), ph, pp, c.user.clone().unwrap_or_default())
            }
            None => (String::new(), Value::Null, Value::Null, String::new()),
        };
        json!({
            "arguments": {},
            "ack_required": k.ack_required,
            "active": k.active,
            "activity_status": if k.active { "up" } else { "waiting" },
            "channel_details": {
                "connection_name": name,
                "name": format!("{name} ({})", k.channel),
                "node": self.config.node,
                "number": k.channel,
                "peer_host": ph,
                "peer_port": pp,
                "user": user,
            },
            "consumer_tag": k.tag,
            "exclusive": k.exclusive,
            "prefetch_count": k.prefetch,
            "queue": {"name": k.queue, "vhost": k.vhost},
        })
    }
}

/// What RabbitMQ's `properties_key` leaves unescaped besides letters and
/// digits (as in URI paths).
const KEY_SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// RabbitMQ's `properties_key` of a binding: the routing key,
/// percent-encoded (`~` when empty), and a digest of the arguments when
/// there are any.
pub fn properties_key(routing_key: &str, arguments: &FieldTable) -> String {
    let key = if routing_key.is_empty() {
        "~".to_owned()
    } else {
        percent_encoding::utf8_percent_encode(routing_key, KEY_SET).to_string()
    };
    if arguments.is_empty() {
        return key;
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{:?}", table_to_json(arguments)).as_bytes());
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..12]);
    format!("{key}~{hash}")
}

fn binding_json(b: &crate::core::snapshot::BindingSnap) -> Value {
    json!({
        "source": b.source,
        "vhost": b.vhost,
        "destination": b.destination,
        "destination_type": b.destination_type,
        "routing_key": b.routing_key,
        "arguments": table(&b.arguments),
        "properties_key": properties_key(&b.routing_key, &b.arguments),
    })
}

/// A user's password as RabbitMQ exports it: (`password_hash`,
/// `hashing_algorithm`); see [`crate::auth::User::password_hash`].
pub fn password_hash(u: &crate::auth::User) -> (String, &'static str) {
    u.password_hash()
}

fn exchange_path_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

fn permissions_json(auth: &Auth) -> Vec<Value> {
    auth.permissions_json(None, None)
}

// ----- handlers --------------------------------------------------------------

type St = State<Arc<Management>>;

async fn overview(
    State(m): St,
    user: User,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> ApiResult {
    let sq = SampleQuery::parse(query.as_deref());
    let s = m.snapshot();
    let rates = m.rates();
    let visible = |v: &str| user.sees_vhost(&s.auth, v);
    let queues: Vec<&QueueSnap> = s.queues.iter().filter(|q| visible(&q.vhost)).collect();
    let (mut msgs, mut ready, mut unacked) = (0, 0, 0);
    for q in &queues {
        msgs += q.messages();
        ready += q.messages_ready;
        unacked += q.messages_unacknowledged;
    }
    let mut stats = message_stats(&s.totals, Some(&rates.totals), ALL_STATS);
    if let Value::Object(o) = &mut stats {
        for k in ["disk_reads", "disk_writes"] {
            o.insert(k.into(), json!(0));
            o.insert(format!("{k}_details"), rate(0.0));
        }
    }
    let conns: Vec<&ConnSnap> = s.connections.iter().filter(|c| user.sees_conn(c)).collect();
    let channels = s
        .channels
        .iter()
        .filter(|ch| conns.iter().any(|c| c.id == ch.conn))
        .count();
    let consumers = s
        .consumers
        .iter()
        .filter(|k| conns.iter().any(|c| c.id == k.conn))
        .count();
    let exchanges = s.exchanges.iter().filter(|x| visible(&x.vhost)).count();
    let mut listeners: Vec<Value> = m
        .config
        .amqp_listeners
        .iter()
        .map(|a| listener(&m.config.node, "amqp", a))
        .collect();
    if let Some(a) = m.config.management {
        listeners.push(listener(&m.config.node, "http", &a));
    }
    if let Some(a) = m.config.prometheus {
        listeners.push(listener(&m.config.node, "http/prometheus", &a));
    }
    let mut o = json!({
        "management_version": RABBITMQ_COMPAT_VERSION,
        "rates_mode": "basic",
        "sample_retention_policies": {
            "global": [600, 3600, 28800, 86400],
            "basic": [600, 3600],
            "detailed": [600],
        },
        "exchange_types": exchange_types(),
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": "amqp-broker",
        "rabbitmq_version": RABBITMQ_COMPAT_VERSION,
        "cluster_name": m.config.node,
        "erlang_version": "none",
        "erlang_full_version": "none (amqp-broker is written in Rust)",
        "release_series_support_status": "supported",
        "disable_stats": false,
        "enable_queue_totals": false,
        "message_stats": stats,
        "queue_totals": {
            "messages": msgs,
            "messages_details": rate(rates.depths[0]),
            "messages_ready": ready,
            "messages_ready_details": rate(rates.depths[1]),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": rate(rates.depths[2]),
        },
        "object_totals": {
            "channels": channels,
            "connections": conns.len(),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues.len(),
        },
        "statistics_db_event_queue": 0,
        "collect_statistics_interval": m.config.sample_interval.as_millis() as u64,
        "node": m.config.node,
        "listeners": listeners,
        "contexts": [],
    });
    if let Some(p) = sq.msg {
        // disk_reads and disk_writes stay 0.
        m.add_samples(&mut o["message_stats"], p, |s, k| {
            let v = s.totals.fields().into_iter().find(|(n, _)| *n == k);
            Some(v.map_or(0, |(_, v)| v))
        });
    }
    if let Some(p) = sq.lengths {
        m.add_samples(&mut o["queue_totals"], p, |s, k| depth(&s.depths, k));
    }
    ok(o)
}

fn listener(node: &str, protocol: &str, a: &SocketAddr) -> Value {
    json!({
        "node": node,
        "protocol": protocol,
        "ip_address": a.ip().to_string(),
        "port": a.port(),
        "socket_opts": {},
    })
}

fn exchange_types() -> Value {
    json!([
        {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
        {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
        {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
        {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true},
    ])
}

fn process_memory() -> u64 {
    // Resident set size from /proc (Linux); 0 elsewhere.
    crate::alarms::resident_memory().unwrap_or(0)
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

fn node_json(m: &Management, s: &Snapshot) -> Value {
    let processors = std::thread::available_parallelism().map_or(1, |n| n.get());
    json!({
        "name": m.config.node,
        "type": "disc",
        "running": true,
        "being_drained": false,
        "os_pid": std::process::id().to_string(),
        "uptime": m.started.elapsed().as_millis() as u64,
        "processors": processors,
        "run_queue": 0,
        "mem_used": process_memory(),
        "mem_limit": 0,
        "mem_alarm": s.alarms.contains(&crate::core::Alarm::Memory),
        "disk_free": 0,
        "disk_free_limit": 0,
        "disk_free_alarm": s.alarms.contains(&crate::core::Alarm::Disk),
        "fd_used": open_fds(),
        "fd_total": 0,
        "sockets_used": s.connections.len(),
        "sockets_total": 0,
        "proc_used": 0,
        "proc_total": 0,
        "partitions": [],
        "applications": [],
        "exchange_types": exchange_types(),
        "rates_mode": "basic",
        "net_ticktime": 60,
        "enabled_plugins": ["rabbitmq_management", "rabbitmq_prometheus"],
    })
}

async fn nodes(State(m): St, user: User) -> ApiResult {
    user.need_monitor()?;
    let s = m.snapshot();
    ok(json!([node_json(&m, &s)]))
}

async fn node(State(m): St, user: User, Path(name): Path<String>) -> ApiResult {
    user.need_monitor()?;
    if name != m.config.node {
        return Err(ApiError::not_found());
    }
    let s = m.snapshot();
    ok(node_json(&m, &s))
}

async fn connections(State(m): St, user: User) -> ApiResult {
    let s = m.snapshot();
    ok(Value::Array(
        s.connections
            .iter()
            .filter(|c| user.sees_conn(c))
            .map(|c| m.conn_json(c))
            .collect(),
    ))
}

async fn connection(State(m): St, user: User, Path(name): Path<String>) -> ApiResult {
    let s = m.snapshot();
    let c = s
        .connections
        .iter()
        .find(|c| user.sees_conn(c) && conn_name(c) == name)
        .ok_or_else(ApiError::not_found)?;
    ok(m.conn_json(c))
}

async fn channels(State(m): St, user: User) -> ApiResult {
    let s = m.snapshot();
    let visible = |id| {
        s.connections
            .iter()
            .any(|c| c.id == id && user.sees_conn(c))
    };
    ok(Value::Array(
        s.channels
            .iter()
            .filter(|ch| visible(ch.conn))
            .map(|ch| m.channel_json(ch, &s))
            .collect(),
    ))
}

async fn consumers_in(m: &Management, user: &User, vhost: Option<&str>) -> ApiResult {
    let s = m.snapshot();
    if let Some(v) = vhost
        && !s.vhosts.iter().any(|x| x.name == v)
    {
        return Err(ApiError::not_found());
    }
    let visible = |id| {
        s.connections
            .iter()
            .any(|c| c.id == id && user.sees_conn(c))
    };
    ok(Value::Array(
        s.consumers
            .iter()
            .filter(|k| visible(k.conn) && vhost.is_none_or(|v| v == k.vhost))
            .map(|k| m.consumer_json(k, &s))
            .collect(),
    ))
}

async fn consumers(State(m): St, user: User) -> ApiResult {
    consumers_in(&m, &user, None).await
}

async fn consumers_vhost(State(m): St, user: User, Path(vhost): Path<String>) -> ApiResult {
    consumers_in(&m, &user, Some(&vhost)).await
}

fn check_vhost(s: &Snapshot, user: &User, vhost: &str) -> Result<(), ApiError> {
    if s.vhosts.iter().any(|v| v.name == vhost) && user.sees_vhost(&s.auth, vhost) {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

async fn exchanges_in(m: &Management, user: &User, vhost: Option<&str>) -> ApiResult {
    let s = m.snapshot();
    if let Some(v) = vhost {
        check_vhost(&s, user, v)?;
    }
    let rates = m.rates();
    ok(Value::Array(
        s.exchanges
            .iter()
            .filter(|x| user.sees_vhost(&s.auth, &x.vhost) && vhost.is_none_or(|v| v == x.vhost))
            .map(|x| m.exchange_json(x, &rates, false))
            .collect(),
    ))
}

async fn exchanges(State(m): St, user: User) -> ApiResult {
    exchanges_in(&m, &user, None).await
}

async fn exchanges_vhost(State(m): St, user: User, Path(vhost): Path<String>) -> ApiResult {
    exchanges_in(&m, &user, Some(&vhost)).await
}

async fn exchange(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let s = m.snapshot();
    check_vhost(&s, &user, &vhost)?;
    let name = exchange_path_name(&name);
    let x = s
        .exchanges
        .iter()
        .find(|x| x.vhost == vhost && x.name == name)
        .ok_or_else(ApiError::not_found)?;
    ok(m.exchange_json(x, &m.rates(), true))
}

fn body_json(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        // RabbitMQ's reason for both.
        Ok(_) | Err(_) => Err(ApiError::bad_request("not_json")),
    }
}

fn flag(o: &Map<String, Value>, k: &str, default: bool) -> bool {
    match o.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => default,
    }
}

fn args(o: &Map<String, Value>) -> FieldTable {
    match o.get("arguments") {
        Some(Value::Object(a)) => json_to_table(a),
        _ => FieldTable::new(),
    }
}

/// A user without `monitoring`/`administrator` must have permissions in
/// the vhost, and the needed access to the resource.
fn check_access(
    m: &Management,
    user: &User,
    vhost: &str,
    access: Access,
    name: &str,
) -> Result<(), ApiError> {
    let (exists, allowed) = m.shared.with_core(|c| {
        let auth = c.auth();
        (
            c.has_vhost(vhost) && (user.admin || auth.may_open(&user.name, vhost)),
            auth.allowed(&user.name, vhost, access, name.as_bytes()),
        )
    });
    if !exists {
        return Err(ApiError::not_found());
    }
    if !allowed {
        return Err(ApiError::unauthorised(&format!(
            "access to resource '{name}' in vhost '{vhost}' refused for user '{}'",
            user.name
        )));
    }
    Ok(())
}

fn created(created: bool) -> Response {
    if created {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// `GET /api/policies[/vhost]`: the policies of the vhosts the user may
/// set policies in.
async fn policies_list(State(m): St, user: User, vhost: Option<Path<String>>) -> ApiResult {
    let vhost = vhost.map(|Path(v)| v);
    let list = m.shared.with_core(|c| {
        c.policies(vhost.as_deref())
            .into_iter()
            .filter(|p| {
                let v = p.vhost.as_deref().unwrap_or("/");
                user.need_policymaker(c.auth(), v).is_ok()
            })
            .collect::<Vec<_>>()
    });
    if let Some(v) = &vhost
        && !m.shared.with_core(|c| c.has_vhost(v))
    {
        return Err(ApiError::not_found());
    }
    ok(serde_json::to_value(list).unwrap_or_default())
}

/// `GET /api/policies/vhost/name`.
async fn policy_one(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    m.shared
        .with_core(|c| user.need_policymaker(c.auth(), &vhost))?;
    let p = m.shared.with_core(|c| {
        c.policies(Some(&vhost))
            .into_iter()
            .find(|p| p.name == name)
    });
    let p = p.ok_or_else(ApiError::not_found)?;
    ok(serde_json::to_value(p).unwrap_or_default())
}

/// `PUT /api/policies/vhost/name` with `pattern`, `definition`,
/// `priority` (0) and `apply-to` (`all`).
async fn put_policy(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let o = body_json(&body)?;
    m.shared
        .with_core(|c| user.need_policymaker(c.auth(), &vhost))?;
    let missing = |k: &str| ApiError::bad_request(format!("{k} not found"));
    let def = amqp_router::definitions::PolicyDef {
        vhost: Some(vhost.clone()),
        name,
        pattern: o
            .get("pattern")
            .and_then(Value::as_str)
            .ok_or_else(|| missing("pattern"))?
            .to_owned(),
        apply_to: o
            .get("apply-to")
            .and_then(Value::as_str)
            .unwrap_or("all")
            .to_owned(),
        definition: match o.get("definition") {
            Some(Value::Object(d)) => d.clone(),
            _ => return Err(missing("definition")),
        },
        priority: match o.get("priority") {
            None => 0,
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| ApiError::bad_request("priority must be an integer"))?,
        },
    };
    let new = m
        .shared
        .with_core(|c| c.set_policy(&vhost, &def, Instant::now()))
        .map_err(|e| match e {
            // RabbitMQ escapes the Erlang terms of its validation texts.
            AdminError::BadRequest(r) => {
                ApiError::bad_request(r.replace('<', "&lt;").replace('>', "&gt;"))
            }
            e => e.into(),
        })?;
    Ok(created(new))
}

/// `DELETE /api/policies/vhost/name`.
async fn delete_policy(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    m.shared
        .with_core(|c| user.need_policymaker(c.auth(), &vhost))?;
    m.shared
        .with_core(|c| c.clear_policy(&vhost, &name, Instant::now()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn put_exchange(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let o = body_json(&body)?;
    check_access(&m, &user, &vhost, Access::Configure, &name)?;
    let kind = o
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("direct")
        .to_owned();
    let a = args(&o);
    let (durable, auto_delete, internal) = (
        flag(&o, "durable", true),
        flag(&o, "auto_delete", false),
        flag(&o, "internal", false),
    );
    let c = m.shared.with_core(|c| {
        c.admin_declare_exchange(&vhost, &name, &kind, durable, auto_delete, internal, &a)
    })?;
    Ok(created(c))
}

#[derive(Debug, serde::Deserialize, Default)]
struct DeleteQuery {
    #[serde(rename = "if-unused", default)]
    if_unused: Option<String>,
    #[serde(rename = "if-empty", default)]
    if_empty: Option<String>,
}

async fn delete_exchange(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<DeleteQuery>,
) -> ApiResult {
    check_access(&m, &user, &vhost, Access::Configure, &name)?;
    let if_unused = q.if_unused.as_deref() == Some("true");
    m.shared.with_core(|c| {
        c.admin_delete_exchange(&vhost, exchange_path_name(&name), if_unused, Instant::now())
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn properties_from_json(o: &Map<String, Value>) -> Result<BasicProperties, ApiError> {
    let sh = |k: &str| -> Result<Option<ShortString>, ApiError> {
        match o.get(k) {
            Some(Value::String(s)) => ShortString::try_from(s.as_str())
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("{k} too long"))),
            Some(Value::Null) | None => Ok(None),
            Some(v) => Ok(ShortString::try_from(v.to_string().as_str()).ok()),
        }
    };
    let int = |k: &str| o.get(k).and_then(Value::as_u64);
    Ok(BasicProperties {
        content_type: sh("content_type")?,
        content_encoding: sh("content_encoding")?,
        headers: match o.get("headers") {
            Some(Value::Object(h)) => Some(json_to_table(h)),
            _ => None,
        },
        delivery_mode: int("delivery_mode").map(|v| v as u8),
        priority: int("priority").map(|v| v as u8),
        correlation_id: sh("correlation_id")?,
        reply_to: sh("reply_to")?,
        expiration: sh("expiration")?,
        message_id: sh("message_id")?,
        timestamp: int("timestamp"),
        kind: sh("type")?,
        user_id: sh("user_id")?,
        app_id: sh("app_id")?,
        cluster_id: sh("cluster_id")?,
    })
}

fn properties_json(p: &BasicProperties) -> Value {
    let mut o = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            o.insert(k.into(), v);
        }
    };
    let s = |x: &Option<ShortString>| x.as_ref().map(|s| json!(s.to_string_lossy()));
    put("content_type", s(&p.content_type));
    put("content_encoding", s(&p.content_encoding));
    put("priority", p.priority.map(|v| json!(v)));
    put("correlation_id", s(&p.correlation_id));
    put("reply_to", s(&p.reply_to));
    put("expiration", s(&p.expiration));
    put("message_id", s(&p.message_id));
    put("timestamp", p.timestamp.map(|v| json!(v)));
    put("type", s(&p.kind));
    put("user_id", s(&p.user_id));
    put("app_id", s(&p.app_id));
    put("cluster_id", s(&p.cluster_id));
    put("delivery_mode", p.delivery_mode.map(|v| json!(v)));
    put(
        "headers",
        p.headers.as_ref().map(|h| {
            Value::Object(
                h.iter()
                    .map(|(k, v)| (k.to_string_lossy().into_owned(), value_to_json(v)))
                    .collect(),
            )
        }),
    );
    if o.is_empty() {
        // RabbitMQ answers an empty property list as [].
        return json!([]);
    }
    Value::Object(o)
}

async fn publish(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let o = body_json(&body)?;
    let name = exchange_path_name(&name).to_owned();
    check_access(
        &m,
        &user,
        &vhost,
        Access::Write,
        if name.is_empty() {
            "amq.default"
        } else {
            &name
        },
    )?;
    let props = match o.get("properties") {
        Some(Value::Object(p)) => properties_from_json(p)?,
        _ => BasicProperties::default(),
    };
    let key = o
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let payload = o.get("payload").and_then(Value::as_str).unwrap_or("");
    let body = match o.get("payload_encoding").and_then(Value::as_str) {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        _ => payload.as_bytes().to_vec(),
    };
    let routed = m
        .shared
        .with_core(|c| c.admin_publish(&vhost, &name, &key, props, body.into(), Instant::now()))?;
    ok(json!({ "routed": routed }))
}

async fn queues_in(m: &Management, user: &User, vhost: Option<&str>, sq: SampleQuery) -> ApiResult {
    let s = m.snapshot();
    if let Some(v) = vhost {
        check_vhost(&s, user, v)?;
    }
    let rates = m.rates();
    ok(Value::Array(
        s.queues
            .iter()
            .filter(|q| user.sees_vhost(&s.auth, &q.vhost) && vhost.is_none_or(|v| v == q.vhost))
            .map(|q| {
                let mut v = m.queue_json(q, &s, &rates, false);
                m.queue_samples(&mut v, &q.vhost, &q.name, sq);
                v
            })
            .collect(),
    ))
}

async fn queues(
    State(m): St,
    user: User,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> ApiResult {
    queues_in(&m, &user, None, SampleQuery::parse(q.as_deref())).await
}

async fn queues_vhost(
    State(m): St,
    user: User,
    Path(vhost): Path<String>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> ApiResult {
    queues_in(&m, &user, Some(&vhost), SampleQuery::parse(q.as_deref())).await
}

async fn queue(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> ApiResult {
    let s = m.snapshot();
    check_vhost(&s, &user, &vhost)?;
    let q = s
        .queues
        .iter()
        .find(|q| q.vhost == vhost && q.name == name)
        .ok_or_else(ApiError::not_found)?;
    let mut v = m.queue_json(q, &s, &m.rates(), true);
    m.queue_samples(&mut v, &vhost, &name, SampleQuery::parse(query.as_deref()));
    ok(v)
}

async fn put_queue(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let o = body_json(&body)?;
    check_access(&m, &user, &vhost, Access::Configure, &name)?;
    let a = args(&o);
    let (durable, auto_delete) = (flag(&o, "durable", true), flag(&o, "auto_delete", false));
    let c = m.shared.with_core(|c| {
        c.admin_declare_queue(&vhost, &name, durable, auto_delete, &a, Instant::now())
    })?;
    Ok(created(c))
}

async fn delete_queue(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<DeleteQuery>,
) -> ApiResult {
    check_access(&m, &user, &vhost, Access::Configure, &name)?;
    let if_unused = q.if_unused.as_deref() == Some("true");
    let if_empty = q.if_empty.as_deref() == Some("true");
    m.shared
        .with_core(|c| c.admin_delete_queue(&vhost, &name, if_unused, if_empty, Instant::now()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn purge_queue(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    check_access(&m, &user, &vhost, Access::Read, &name)?;
    m.shared.with_core(|c| c.admin_purge(&vhost, &name))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_messages(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let o = body_json(&body)?;
    check_access(&m, &user, &vhost, Access::Read, &name)?;
    let count = o.get("count").and_then(Value::as_u64).unwrap_or(1) as usize;
    let requeue = match o.get("ackmode").and_then(Value::as_str) {
        Some("ack_requeue_true") | Some("reject_requeue_true") | None => true,
        Some("ack_requeue_false") | Some("reject_requeue_false") => false,
        Some(other) => return Err(ApiError::bad_request(format!("unknown ackmode {other}"))),
    };
    let encoding = o.get("encoding").and_then(Value::as_str).unwrap_or("auto");
    let truncate = o
        .get("truncate")
        .and_then(Value::as_u64)
        .map(|t| t as usize);
    let got = m
        .shared
        .with_core(|c| c.admin_get(&vhost, &name, count, requeue, Instant::now()))?;
    let out: Vec<Value> = got
        .iter()
        .map(|g| {
            let body = g.msg.body();
            let shown = &body[..truncate.unwrap_or(body.len()).min(body.len())];
            let (payload, enc) = match std::str::from_utf8(shown) {
                Ok(s) if encoding == "auto" => (s.to_owned(), "string"),
                _ => (
                    base64::engine::general_purpose::STANDARD.encode(shown),
                    "base64",
                ),
            };
            json!({
                "payload_bytes": body.len(),
                "redelivered": g.redelivered,
                "exchange": String::from_utf8_lossy(g.msg.exchange()),
                "routing_key": String::from_utf8_lossy(g.msg.routing_key()),
                "message_count": g.message_count,
                "properties": properties_json(&g.msg.properties()),
                "payload": payload,
                "payload_encoding": enc,
            })
        })
        .collect();
    ok(Value::Array(out))
}

#[derive(Debug, Default)]
struct BindingFilter<'a> {
    vhost: Option<&'a str>,
    source: Option<&'a str>,
    destination: Option<(&'a str, &'a str)>,
}

fn bindings_matching(m: &Management, user: &User, f: &BindingFilter<'_>) -> ApiResult {
    let s = m.snapshot();
    if let Some(v) = f.vhost {
        check_vhost(&s, user, v)?;
    }
    ok(Value::Array(
        s.bindings
            .iter()
            .filter(|b| {
                user.sees_vhost(&s.auth, &b.vhost)
                    && f.vhost.is_none_or(|v| v == b.vhost)
                    && f.source.is_none_or(|x| x == b.source)
                    && f.destination
                        .is_none_or(|(t, d)| t == b.destination_type && d == b.destination)
            })
            .map(binding_json)
            .collect(),
    ))
}

async fn bindings(State(m): St, user: User) -> ApiResult {
    bindings_matching(&m, &user, &BindingFilter::default())
}

async fn bindings_vhost(State(m): St, user: User, Path(vhost): Path<String>) -> ApiResult {
    bindings_matching(
        &m,
        &user,
        &BindingFilter {
            vhost: Some(&vhost),
            ..BindingFilter::default()
        },
    )
}

async fn queue_bindings(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    bindings_matching(
        &m,
        &user,
        &BindingFilter {
            vhost: Some(&vhost),
            destination: Some(("queue", &name)),
            ..BindingFilter::default()
        },
    )
}

async fn exchange_bindings_source(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    bindings_matching(
        &m,
        &user,
        &BindingFilter {
            vhost: Some(&vhost),
            source: Some(exchange_path_name(&name)),
            ..BindingFilter::default()
        },
    )
}

async fn exchange_bindings_destination(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    bindings_matching(
        &m,
        &user,
        &BindingFilter {
            vhost: Some(&vhost),
            destination: Some(("exchange", &name)),
            ..BindingFilter::default()
        },
    )
}

fn dest_kind(kind: &str) -> Result<(&'static str, bool), ApiError> {
    match kind {
        "q" => Ok(("queue", true)),
        "e" => Ok(("exchange", false)),
        _ => Err(ApiError::not_found()),
    }
}

async fn bindings_between(
    State(m): St,
    user: User,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
) -> ApiResult {
    let (t, _) = dest_kind(&kind)?;
    bindings_matching(
        &m,
        &user,
        &BindingFilter {
            vhost: Some(&vhost),
            source: Some(exchange_path_name(&source)),
            destination: Some((t, &dest)),
        },
    )
}

async fn post_binding(
    State(m): St,
    user: User,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let (_, to_queue) = dest_kind(&kind)?;
    let o = body_json(&body)?;
    check_access(&m, &user, &vhost, Access::Write, &dest)?;
    check_access(&m, &user, &vhost, Access::Read, &source)?;
    let key = o
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let a = args(&o);
    m.shared
        .with_core(|c| c.admin_bind(&vhost, &source, &dest, to_queue, &key, &a))?;
    let location = format!(
        "../../../../{}/e/{}/{kind}/{}/{}",
        enc(&vhost),
        enc(&source),
        enc(&dest),
        properties_key(&key, &a)
    );
    let mut r = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn find_binding(
    m: &Management,
    vhost: &str,
    source: &str,
    t: &str,
    dest: &str,
    props: &str,
) -> Option<crate::core::snapshot::BindingSnap> {
    let s = m.snapshot();
    s.bindings.into_iter().find(|b| {
        b.vhost == vhost
            && b.source == source
            && b.destination_type == t
            && b.destination == dest
            && (properties_key(&b.routing_key, &b.arguments) == props
                || (b.arguments.is_empty() && b.routing_key == props))
    })
}

async fn binding(
    State(m): St,
    user: User,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let (t, _) = dest_kind(&kind)?;
    let s = m.snapshot();
    check_vhost(&s, &user, &vhost)?;
    let b = find_binding(&m, &vhost, exchange_path_name(&source), t, &dest, &props)
        .ok_or_else(ApiError::not_found)?;
    ok(binding_json(&b))
}

async fn delete_binding(
    State(m): St,
    user: User,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let (t, to_queue) = dest_kind(&kind)?;
    check_access(&m, &user, &vhost, Access::Write, &dest)?;
    check_access(&m, &user, &vhost, Access::Read, &source)?;
    let b = find_binding(&m, &vhost, exchange_path_name(&source), t, &dest, &props)
        .ok_or_else(ApiError::not_found)?;
    m.shared.with_core(|c| {
        c.admin_unbind(
            &vhost,
            &b.source,
            &b.destination,
            to_queue,
            &b.routing_key,
            &b.arguments,
            Instant::now(),
        )
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn vhost_json(m: &Management, s: &Snapshot, rates: &Rates, name: &str) -> Value {
    let mut stats = MessageStats::default();
    let (mut msgs, mut ready, mut unacked) = (0, 0, 0);
    let mut dr = [0.0; 3];
    let mut sr: HashMap<&'static str, f64> = HashMap::new();
    for q in s.queues.iter().filter(|q| q.vhost == name) {
        msgs += q.messages();
        ready += q.messages_ready;
        unacked += q.messages_unacknowledged;
        let a = q.stats;
        stats.publish += a.publish;
        stats.deliver += a.deliver;
        stats.deliver_no_ack += a.deliver_no_ack;
        stats.get += a.get;
        stats.get_no_ack += a.get_no_ack;
        stats.get_empty += a.get_empty;
        stats.redeliver += a.redeliver;
        stats.ack += a.ack;
        if let Some((r, d)) = rates.queues.get(&(q.vhost.clone(), q.name.clone())) {
            for (k, v) in r {
                *sr.entry(k).or_default() += v;
            }
            for i in 0..3 {
                dr[i] += d[i];
            }
        }
    }
    let meta = s
        .auth
        .vhost_meta
        .get(name)
        .cloned()
        .unwrap_or_else(|| crate::auth::VhostMeta {
            description: if name == "/" {
                "Default virtual host"
            } else {
                ""
            }
            .into(),
            tags: Vec::new(),
        });
    json!({
        "cluster_state": { m.config.node.clone(): "running" },
        "default_queue_type": "undefined",
        "description": meta.description,
        "message_stats": message_stats(&stats, Some(&sr), ALL_STATS),
        "messages": msgs,
        "messages_details": rate(dr[0]),
        "messages_ready": ready,
        "messages_ready_details": rate(dr[1]),
        "messages_unacknowledged": unacked,
        "messages_unacknowledged_details": rate(dr[2]),
        "metadata": {
            "description": meta.description,
            "tags": meta.tags,
        },
        "name": name,
        "tags": meta.tags,
        "tracing": false,
    })
}

async fn vhosts(State(m): St, user: User) -> ApiResult {
    let s = m.snapshot();
    let rates = m.rates();
    ok(Value::Array(
        s.vhosts
            .iter()
            .filter(|v| user.sees_vhost(&s.auth, &v.name))
            .map(|v| vhost_json(&m, &s, &rates, &v.name))
            .collect(),
    ))
}

async fn vhost(State(m): St, user: User, Path(name): Path<String>) -> ApiResult {
    let s = m.snapshot();
    check_vhost(&s, &user, &name)?;
    ok(vhost_json(&m, &s, &m.rates(), &name))
}

async fn users(State(m): St, user: User) -> ApiResult {
    user.need_admin()?;
    ok(Value::Array(m.shared.with_core(|c| c.users_json())))
}

async fn user_one(State(m): St, user: User, Path(name): Path<String>) -> ApiResult {
    user.need_admin()?;
    m.shared
        .with_core(|c| c.users_json())
        .into_iter()
        .find(|u| u["name"] == name.as_str())
        .map_or_else(|| Err(ApiError::not_found()), ok)
}

async fn permissions(State(m): St, user: User) -> ApiResult {
    user.need_admin()?;
    let auth = m.shared.with_core(|c| c.auth().clone());
    ok(Value::Array(permissions_json(&auth)))
}

/// RabbitMQ's health check: 200 without alarms, 503 with the alarms in
/// force.
async fn alarms(State(m): St, _user: User) -> ApiResult {
    let alarms = m.shared.with_core(|c| c.alarms());
    if alarms.is_empty() {
        return ok(json!({"status": "ok"}));
    }
    let list: Vec<Value> = alarms
        .iter()
        .map(|a| json!({"node": m.config.node, "resource": a.name()}))
        .collect();
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({
            "status": "failed",
            "reason": "resource alarm(s) in effect in the cluster",
            "alarms": list,
        })),
    )
        .into_response())
}

async fn extensions(_user: User) -> ApiResult {
    ok(json!([]))
}

async fn cluster_name(State(m): St, _user: User) -> ApiResult {
    ok(json!({ "name": m.config.node }))
}

async fn vhosts_healthy(State(m): St, _user: User) -> ApiResult {
    // Every virtual host lives in the one process: up while it answers.
    let _ = m.shared.with_core(|c| c.has_vhost("/"));
    ok(json!({"status": "ok"}))
}

/// `/api/aliveness-test/vhost`: declares the queue `aliveness-test`,
/// publishes a message to it and takes it back, as RabbitMQ does.
async fn aliveness(State(m): St, user: User, Path(vhost): Path<String>) -> ApiResult {
    check_access(&m, &user, &vhost, Access::Configure, "aliveness-test")?;
    let now = Instant::now();
    let got = m.shared.with_core(|c| {
        c.admin_declare_queue(
            &vhost,
            "aliveness-test",
            false,
            false,
            &FieldTable::new(),
            now,
        )?;
        c.admin_publish(
            &vhost,
            "",
            "aliveness-test",
            BasicProperties::default(),
            Bytes::from_static(b"test_message"),
            now,
        )?;
        c.admin_get(&vhost, "aliveness-test", 1, false, now)
    })?;
    if got.iter().any(|g| g.msg.body() == b"test_message") {
        ok(json!({"status": "ok"}))
    } else {
        ok(json!({"status": "failed", "reason": "the test message did not come back"}))
    }
}

async fn conns_of_vhost(State(m): St, user: User, Path(vhost): Path<String>) -> ApiResult {
    let s = m.snapshot();
    check_vhost(&s, &user, &vhost)?;
    ok(Value::Array(
        s.connections
            .iter()
            .filter(|c| user.sees_conn(c) && c.vhost.as_deref() == Some(vhost.as_str()))
            .map(|c| m.conn_json(c))
            .collect(),
    ))
}

async fn channels_where(m: &Management, user: &User, f: impl Fn(&ConnSnap) -> bool) -> ApiResult {
    let s = m.snapshot();
    let visible = |id| {
        s.connections
            .iter()
            .any(|c| c.id == id && user.sees_conn(c) && f(c))
    };
    ok(Value::Array(
        s.channels
            .iter()
            .filter(|ch| visible(ch.conn))
            .map(|ch| m.channel_json(ch, &s))
            .collect(),
    ))
}

async fn channels_of_vhost(State(m): St, user: User, Path(vhost): Path<String>) -> ApiResult {
    if !m.shared.with_core(|c| c.has_vhost(&vhost)) {
        return Err(ApiError::not_found());
    }
    channels_where(&m, &user, |c| c.vhost.as_deref() == Some(vhost.as_str())).await
}

async fn channels_of_conn(State(m): St, user: User, Path(name): Path<String>) -> ApiResult {
    channels_where(&m, &user, |c| conn_name(c) == name).await
}

async fn whoami(user: User) -> ApiResult {
    ok(json!({"name": user.name, "tags": user.tags}))
}

async fn definitions(State(m): St, user: User) -> ApiResult {
    user.need_admin()?;
    let (topology, auth, vhosts, users) = m.shared.with_core(|c| {
        let s = c.snapshot();
        (c.topology(), c.auth().clone(), s.vhosts, c.users_json())
    });
    let t = serde_json::to_value(&topology).unwrap_or(Value::Null);
    ok(json!({
        "rabbit_version": RABBITMQ_COMPAT_VERSION,
        "rabbitmq_version": RABBITMQ_COMPAT_VERSION,
        "product_name": "amqp-broker",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users,
        "vhosts": vhosts
            .iter()
            .map(|v| crate::core::snapshot::vhost_def_json(&auth, &v.name))
            .collect::<Vec<_>>(),
        "permissions": permissions_json(&auth),
        "topic_permissions": auth.topic_permissions_json(None, None),
        "parameters": [],
        "global_parameters": [],
        "policies": t.get("policies").cloned().unwrap_or(json!([])),
        "queues": t.get("queues").cloned().unwrap_or(json!([])),
        "exchanges": t.get("exchanges").cloned().unwrap_or(json!([])),
        "bindings": t.get("bindings").cloned().unwrap_or(json!([])),
    }))
}

/// `GET /api/definitions/vhost`: one vhost's topology, its objects without
/// `vhost` keys, as RabbitMQ's per-vhost export.
async fn definitions_vhost(State(m): St, user: User, Path(vhost): Path<String>) -> ApiResult {
    user.need_admin()?;
    let topology = m
        .shared
        .with_core(|c| c.has_vhost(&vhost).then(|| c.topology()))
        .ok_or_else(ApiError::not_found)?;
    let t = serde_json::to_value(&topology).unwrap_or(Value::Null);
    let of_vhost = |k: &str| -> Value {
        let items = t
            .get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Value::Array(
            items
                .into_iter()
                .filter(|o| o.get("vhost").and_then(Value::as_str).unwrap_or("/") == vhost)
                .map(|mut o| {
                    if let Value::Object(m) = &mut o {
                        m.remove("vhost");
                    }
                    o
                })
                .collect(),
        )
    };
    ok(json!({
        "rabbit_version": RABBITMQ_COMPAT_VERSION,
        "rabbitmq_version": RABBITMQ_COMPAT_VERSION,
        "product_name": "amqp-broker",
        "product_version": env!("CARGO_PKG_VERSION"),
        "parameters": [],
        "policies": of_vhost("policies"),
        "queues": of_vhost("queues"),
        "exchanges": of_vhost("exchanges"),
        "bindings": of_vhost("bindings"),
    }))
}

// ----- users, vhosts, permissions, definitions import, closing ------------

/// `PUT /api/vhosts/vhost` with optional `description` and `tags` (a list
/// or a comma-separated string): 201 created, 204 updated. The creating
/// administrator gets every permission in a new vhost, as in RabbitMQ.
async fn put_vhost(State(m): St, user: User, Path(name): Path<String>, body: Bytes) -> ApiResult {
    user.need_admin()?;
    let o = body_json(&body)?;
    let meta = (o.contains_key("description") || o.contains_key("tags")).then(|| {
        let old = m
            .shared
            .with_core(|c| c.auth().vhost_meta.get(&name).cloned())
            .unwrap_or_default();
        crate::auth::VhostMeta {
            description: match o.get("description") {
                None => old.description,
                Some(Value::String(d)) => d.clone(),
                Some(Value::Null) => String::new(),
                Some(other) => other.to_string(),
            },
            tags: o.get("tags").map_or(old.tags, crate::auth::parse_tags),
        }
    });
    let new = m
        .shared
        .with_core(|c| c.admin_add_vhost(&name, meta, Some(&user.name)))?;
    Ok(created(new))
}

/// `DELETE /api/vhosts/vhost`: its connections close (320), its queues go.
async fn delete_vhost(State(m): St, user: User, Path(name): Path<String>) -> ApiResult {
    user.need_admin()?;
    m.shared
        .with_core(|c| c.admin_delete_vhost(&name, Instant::now()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /api/users/name` with `tags` (required, as RabbitMQ) and
/// `password`, or `password_hash` (base64 of salt and digest) with
/// `hashing_algorithm`; neither: a user without a password.
async fn put_user(State(m): St, user: User, Path(name): Path<String>, body: Bytes) -> ApiResult {
    use crate::auth::{HashAlgorithm, Password};
    user.need_admin()?;
    let o = body_json(&body)?;
    let tags = o
        .get("tags")
        .map(crate::auth::parse_tags)
        .ok_or_else(|| ApiError::bad_request("tags_not_present"))?;
    let algorithm = match o.get("hashing_algorithm") {
        None | Some(Value::Null) => HashAlgorithm::Sha256,
        Some(Value::String(a)) => {
            HashAlgorithm::from_name(Some(a)).map_err(ApiError::bad_request)?
        }
        Some(_) => return Err(ApiError::bad_request("hashing_algorithm must be a string")),
    };
    let password = match (o.get("password"), o.get("password_hash")) {
        (Some(Value::String(p)), _) => Password::hashed(p, algorithm),
        (Some(_), _) => return Err(ApiError::bad_request("password must be a string")),
        (None, Some(Value::String(h))) => Password::from_stored_hash(h, algorithm)
            .map_err(|_| ApiError::bad_request_term(json!(["not_base64", h])))?,
        (None, Some(_)) => return Err(ApiError::bad_request("password_hash must be a string")),
        (None, None) => Password::Hashed {
            algorithm,
            salted: Vec::new(),
        },
    };
    let new = m.shared.with_core(|c| {
        c.admin_put_user(crate::auth::User {
            name,
            password,
            tags,
        })
    });
    Ok(created(new))
}

/// `DELETE /api/users/name`: their permissions go, their connections close
/// (320).
async fn delete_user(State(m): St, user: User, Path(name): Path<String>) -> ApiResult {
    user.need_admin()?;
    m.shared
        .with_core(|c| c.admin_delete_user(&name, Instant::now()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/permissions/vhost/user`.
async fn permission_one(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    user.need_admin()?;
    let p = m
        .shared
        .with_core(|c| c.auth().permissions_json(Some(&name), Some(&vhost)));
    p.into_iter()
        .next()
        .map_or_else(|| Err(ApiError::not_found()), ok)
}

/// `PUT /api/permissions/vhost/user` with `configure`, `write` and `read`
/// (regular expressions): 201 created, 204 updated. Open connections of
/// the user in the vhost are checked against the new patterns from their
/// next operation.
async fn put_permission(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    user.need_admin()?;
    let o = body_json(&body)?;
    let missing: Vec<String> = ["configure", "write", "read"]
        .iter()
        .filter(|k| !o.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!("[{}]", missing.join(","))));
    }
    let pattern = |k: &str| match &o[k] {
        Value::String(s) => Ok(s.clone()),
        _ => Err(ApiError::bad_request(format!("{k} must be a string"))),
    };
    let (configure, write, read) = (pattern("configure")?, pattern("write")?, pattern("read")?);
    let permission = crate::auth::Permission::new(&configure, &write, &read).map_err(|e| {
        let bad = [&configure, &write, &read]
            .into_iter()
            .find(|p| regex::Regex::new(p).is_err())
            .cloned()
            .unwrap_or_default();
        ApiError::bad_request_term(json!(["invalid_regexp", bad, e.to_string()]))
    })?;
    let new = m
        .shared
        .with_core(|c| c.admin_set_permission(&name, &vhost, permission))?;
    Ok(created(new))
}

/// `DELETE /api/permissions/vhost/user`.
async fn delete_permission(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    user.need_admin()?;
    m.shared
        .with_core(|c| c.admin_clear_permission(&name, &vhost))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/topic-permissions`.
async fn topic_permissions(State(m): St, user: User) -> ApiResult {
    user.need_admin()?;
    let list = m
        .shared
        .with_core(|c| c.auth().topic_permissions_json(None, None));
    ok(Value::Array(list))
}

/// `GET /api/topic-permissions/vhost/user`: the user's topic permissions
/// in the vhost, one per exchange (404 when there is none).
async fn topic_permission_one(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    user.need_admin()?;
    let list = m
        .shared
        .with_core(|c| c.auth().topic_permissions_json(Some(&name), Some(&vhost)));
    if list.is_empty() {
        return Err(ApiError::not_found());
    }
    ok(Value::Array(list))
}

/// `PUT /api/topic-permissions/vhost/user` with `exchange`, `write` and
/// `read`: 201 when the user had no topic permission in the vhost, else
/// 204 (RabbitMQ's answers).
async fn put_topic_permission(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    user.need_admin()?;
    let o = body_json(&body)?;
    let missing: Vec<String> = ["exchange", "write", "read"]
        .iter()
        .filter(|k| !o.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!("[{}]", missing.join(","))));
    }
    let field = |k: &str| match &o[k] {
        Value::String(s) => Ok(s.clone()),
        _ => Err(ApiError::bad_request(format!("{k} must be a string"))),
    };
    let (exchange, write, read) = (field("exchange")?, field("write")?, field("read")?);
    let permission = crate::auth::TopicPermission::new(&write, &read).map_err(|e| {
        let bad = if crate::auth::TopicPermission::new(&write, "").is_err() {
            &write
        } else {
            &read
        };
        ApiError::bad_request_term(json!(["invalid_regexp", bad, e]))
    })?;
    let new = m.shared.with_core(|c| {
        let had = !c
            .auth()
            .topic_permissions_json(Some(&name), Some(&vhost))
            .is_empty();
        c.admin_set_topic_permission(&name, &vhost, &exchange, permission)
            .map(|_| !had)
    })?;
    Ok(created(new))
}

/// `DELETE /api/topic-permissions/vhost/user`: all of the user's topic
/// permissions in the vhost (as RabbitMQ 3.10's API).
async fn delete_topic_permission(
    State(m): St,
    user: User,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    user.need_admin()?;
    m.shared
        .with_core(|c| c.admin_clear_topic_permissions(&name, &vhost, None))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/users/user/topic-permissions`.
async fn topic_permissions_of_user(
    State(m): St,
    user: User,
    Path(name): Path<String>,
) -> ApiResult {
    user.need_admin()?;
    let (exists, list) = m.shared.with_core(|c| {
        let a = c.auth();
        (
            a.users.contains_key(&name),
            a.topic_permissions_json(Some(&name), None),
        )
    });
    if !exists {
        return Err(ApiError::not_found());
    }
    ok(Value::Array(list))
}

/// `GET /api/vhosts/vhost/topic-permissions`.
async fn topic_permissions_in_vhost(
    State(m): St,
    user: User,
    Path(vhost): Path<String>,
) -> ApiResult {
    user.need_admin()?;
    let (exists, list) = m.shared.with_core(|c| {
        (
            c.has_vhost(&vhost),
            c.auth().topic_permissions_json(None, Some(&vhost)),
        )
    });
    if !exists {
        return Err(ApiError::not_found());
    }
    ok(Value::Array(list))
}

/// `GET /api/users/user/permissions`.
async fn permissions_of_user(State(m): St, user: User, Path(name): Path<String>) -> ApiResult {
    user.need_admin()?;
    let (exists, list) = m.shared.with_core(|c| {
        let a = c.auth();
        (
            a.users.contains_key(&name),
            a.permissions_json(Some(&name), None),
        )
    });
    if !exists {
        return Err(ApiError::not_found());
    }
    ok(Value::Array(list))
}

/// `GET /api/vhosts/vhost/permissions`.
async fn permissions_in_vhost(State(m): St, user: User, Path(vhost): Path<String>) -> ApiResult {
    user.need_admin()?;
    let (exists, list) = m.shared.with_core(|c| {
        (
            c.has_vhost(&vhost),
            c.auth().permissions_json(None, Some(&vhost)),
        )
    });
    if !exists {
        return Err(ApiError::not_found());
    }
    ok(Value::Array(list))
}

/// `POST /api/definitions[/vhost]`: imports an export (the format `GET
/// /api/definitions` gives) into the running broker, adding and updating;
/// 204, or 400 with RabbitMQ's reason for what could not be imported.
async fn import_definitions(
    m: &Management,
    user: &User,
    vhost: Option<&str>,
    body: &Bytes,
) -> ApiResult {
    user.need_admin()?;
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("not_json"))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(_)) => {}
        _ => return Err(ApiError::bad_request("failed_to_parse_json")),
    }
    let defs = crate::definitions::Definitions::from_json(text).map_err(ApiError::bad_request)?;
    if let Some(v) = vhost
        && !m.shared.with_core(|c| c.has_vhost(v))
    {
        return Err(ApiError::not_found());
    }
    m.shared
        .with_core(|c| defs.import(c, vhost, Some(&user.name), Instant::now()))
        .map_err(|e| match e {
            // Reasons that are Erlang terms come as JSON lists.
            AdminError::BadRequest(r) if r.starts_with('[') => {
                match serde_json::from_str::<Value>(&r) {
                    Ok(v) => ApiError::bad_request_term(v),
                    Err(_) => ApiError::bad_request(r),
                }
            }
            AdminError::NotFound(r) => ApiError::bad_request(r),
            e => e.into(),
        })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn post_definitions(State(m): St, user: User, body: Bytes) -> ApiResult {
    import_definitions(&m, &user, None, &body).await
}

async fn post_definitions_vhost(
    State(m): St,
    user: User,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult {
    import_definitions(&m, &user, Some(&vhost), &body).await
}

/// `DELETE /api/connections/name`: closes it with 320 CONNECTION_FORCED
/// and RabbitMQ's text, or the `X-Reason` header's. Administrators may
/// close any connection, other management users their own.
async fn delete_connection(
    State(m): St,
    user: User,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult {
    let s = m.snapshot();
    let c = s
        .connections
        .iter()
        .find(|c| conn_name(c) == name && (user.admin || c.user.as_deref() == Some(&*user.name)))
        .ok_or_else(ApiError::not_found)?;
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or(crate::core::snapshot::CLOSED_VIA_MANAGEMENT)
        .to_owned();
    m.shared
        .with_core(|core| core.admin_close_connection(c.id, &reason, Instant::now()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The web overview: one self-contained page (inline CSS and JavaScript)
/// that polls this API with the credentials its login form (or RabbitMQ's
/// `#/login/user/password` link) keeps in `sessionStorage`.
pub const OVERVIEW_HTML: &str = include_str!("overview.html");

async fn overview_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        OVERVIEW_HTML,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// The largest definitions import taken (RabbitMQ's default
/// `management.http.max_body_size` is 20 MB).
pub const DEFINITIONS_MAX: usize = 20 * 1024 * 1024;

/// The management API's routes.
pub fn router(m: Arc<Management>) -> Router {
    Router::new()
        .route("/", get(overview_page))
        .route("/index.html", get(overview_page))
        .route("/api/overview", get(overview))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{node}", get(node))
        .route("/api/connections", get(connections))
        .route(
            "/api/connections/{name}",
            get(connection).delete(delete_connection),
        )
        .route("/api/channels", get(channels))
        .route("/api/consumers", get(consumers))
        .route("/api/consumers/{vhost}", get(consumers_vhost))
        .route("/api/exchanges", get(exchanges))
        .route("/api/exchanges/{vhost}", get(exchanges_vhost))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchange).put(put_exchange).delete(delete_exchange),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(exchange_bindings_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(exchange_bindings_destination),
        )
        .route("/api/queues", get(queues))
        .route("/api/queues/{vhost}", get(queues_vhost))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queue).put(put_queue).delete(delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(purge_queue),
        )
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
        .route("/api/queues/{vhost}/{name}/bindings", get(queue_bindings))
        .route("/api/bindings", get(bindings))
        .route("/api/bindings/{vhost}", get(bindings_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}",
            get(bindings_between).post(post_binding),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(binding).delete(delete_binding),
        )
        .route("/api/vhosts", get(vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/api/vhosts/{vhost}/permissions", get(permissions_in_vhost))
        .route("/api/users", get(users))
        .route(
            "/api/users/{name}",
            get(user_one).put(put_user).delete(delete_user),
        )
        .route("/api/users/{name}/permissions", get(permissions_of_user))
        .route("/api/permissions", get(permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(permission_one)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/api/topic-permissions", get(topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(topic_permission_one)
                .put(put_topic_permission)
                .delete(delete_topic_permission),
        )
        .route(
            "/api/users/{name}/topic-permissions",
            get(topic_permissions_of_user),
        )
        .route(
            "/api/vhosts/{vhost}/topic-permissions",
            get(topic_permissions_in_vhost),
        )
        .route("/api/policies", get(policies_list))
        .route("/api/policies/{vhost}", get(policies_list))
        .route(
            "/api/policies/{vhost}/{name}",
            get(policy_one).put(put_policy).delete(delete_policy),
        )
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/health/checks/local-alarms", get(alarms))
        .route("/api/health/checks/virtual-hosts", get(vhosts_healthy))
        .route("/api/health/checks/node-is-quorum-critical", get(alarms))
        .route(
            "/api/health/checks/node-is-mirror-sync-critical",
            get(alarms),
        )
        .route("/api/aliveness-test/{vhost}", get(aliveness))
        .route("/api/extensions", get(extensions))
        .route("/api/cluster-name", get(cluster_name))
        .route("/api/vhosts/{vhost}/connections", get(conns_of_vhost))
        .route("/api/vhosts/{vhost}/channels", get(channels_of_vhost))
        .route("/api/connections/{name}/channels", get(channels_of_conn))
        .route("/api/whoami", get(whoami))
        .route(
            "/api/definitions",
            get(definitions)
                .post(post_definitions)
                .layer(axum::extract::DefaultBodyLimit::max(DEFINITIONS_MAX)),
        )
        .route(
            "/api/definitions/{vhost}",
            get(definitions_vhost)
                .post(post_definitions_vhost)
                .layer(axum::extract::DefaultBodyLimit::max(DEFINITIONS_MAX)),
        )
        .fallback(not_found)
        .with_state(m)
}

// ----- Prometheus ------------------------------------------------------------

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Metrics(String);

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        let _ = writeln!(self.0, "# HELP {name} {help}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.family(name, kind, help);
        self.sample(name, labels, value);
    }
}

/// The Prometheus text exposition of a snapshot: aggregated (queue metrics
/// summed, no per-object labels) or per object (`vhost`/`queue` labels).
pub fn prometheus_text(s: &Snapshot, node: &str, per_object: bool) -> String {
    let mut m = Metrics(String::new());
    m.one(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
        &[
            ("rabbitmq_node", node),
            ("rabbitmq_cluster", node),
            ("rabbitmq_cluster_permanent_id", node),
        ],
        1,
    );
    for (name, alarm) in [
        (
            "rabbitmq_alarms_memory_used_watermark",
            crate::core::Alarm::Memory,
        ),
        (
            "rabbitmq_alarms_free_disk_space_watermark",
            crate::core::Alarm::Disk,
        ),
    ] {
        m.one(
            name,
            "gauge",
            "is 1 if the alarm is in effect",
            &[],
            u64::from(s.alarms.contains(&alarm)),
        );
    }
    m.one(
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
        &[
            ("rabbitmq_version", RABBITMQ_COMPAT_VERSION),
            ("prometheus_plugin_version", env!("CARGO_PKG_VERSION")),
            ("prometheus_client_version", env!("CARGO_PKG_VERSION")),
            ("erlang_version", "none"),
        ],
        1,
    );
    let t = &s.totals;
    let proto = [("protocol", "amqp091")];
    let counters: [(&str, &str, u64); 13] = [
        (
            "rabbitmq_global_messages_received_total",
            "Total number of messages received from publishers",
            t.publish,
        ),
        (
            "rabbitmq_global_messages_routed_total",
            "Total number of messages routed to queues or streams",
            t.routed,
        ),
        (
            "rabbitmq_global_messages_unroutable_dropped_total",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            t.drop_unroutable,
        ),
        (
            "rabbitmq_global_messages_unroutable_returned_total",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            t.return_unroutable,
        ),
        (
            "rabbitmq_global_messages_confirmed_total",
            "Total number of messages confirmed to publishers",
            t.confirm,
        ),
        (
            "rabbitmq_global_messages_delivered_total",
            "Total number of messages delivered to consumers",
            t.deliver_get(),
        ),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
            t.deliver,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_auto_ack_total",
            "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
            t.deliver_no_ack,
        ),
        (
            "rabbitmq_global_messages_delivered_get_manual_ack_total",
            "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
            t.get,
        ),
        (
            "rabbitmq_global_messages_delivered_get_auto_ack_total",
            "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
            t.get_no_ack,
        ),
        (
            "rabbitmq_global_messages_get_empty_total",
            "Total number of times basic.get operations fetched no message",
            t.get_empty,
        ),
        (
            "rabbitmq_global_messages_redelivered_total",
            "Total number of messages redelivered to consumers",
            t.redeliver,
        ),
        (
            "rabbitmq_global_messages_acknowledged_total",
            "Total number of messages acknowledged by consumers",
            t.ack,
        ),
    ];
    for (name, help, v) in counters {
        m.one(name, "counter", help, &proto, v);
    }
    // Publishers: channels with no consumer (the core does not track
    // which channels published).
    let consuming: std::collections::HashSet<(u64, u16)> =
        s.consumers.iter().map(|k| (k.conn, k.channel)).collect();
    let publishers = s
        .channels
        .iter()
        .filter(|c| !consuming.contains(&(c.conn, c.number)))
        .count() as u64;
    m.one(
        "rabbitmq_global_publishers",
        "gauge",
        "Publishers currently connected",
        &proto,
        publishers,
    );
    m.one(
        "rabbitmq_global_consumers",
        "gauge",
        "Consumers currently connected",
        &proto,
        s.consumers.len() as u64,
    );
    m.one(
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
        &[],
        s.connections.len() as u64,
    );
    m.one(
        "rabbitmq_channels",
        "gauge",
        "Channels currently open",
        &[],
        s.channels.len() as u64,
    );
    m.one(
        "rabbitmq_consumers",
        "gauge",
        "Consumers currently connected",
        &[],
        s.consumers.len() as u64,
    );
    m.one(
        "rabbitmq_queues",
        "gauge",
        "Queues available",
        &[],
        s.queues.len() as u64,
    );
    m.one(
        "rabbitmq_process_resident_memory_bytes",
        "gauge",
        "Memory used in bytes",
        &[],
        process_memory(),
    );
    type QueueMetric = (&'static str, &'static str, fn(&QueueSnap) -> u64);
    let per_queue: [QueueMetric; 7] = [
        (
            "rabbitmq_queue_messages_ready",
            "Messages ready to be delivered to consumers",
            |q| q.messages_ready,
        ),
        (
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            |q| q.messages_unacknowledged,
        ),
        (
            "rabbitmq_queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
            QueueSnap::messages,
        ),
        (
            "rabbitmq_queue_messages_bytes",
            "Size in bytes of ready and unacknowledged messages",
            |q| q.message_bytes_ready + q.message_bytes_unacknowledged,
        ),
        (
            "rabbitmq_queue_messages_ready_bytes",
            "Size in bytes of ready messages",
            |q| q.message_bytes_ready,
        ),
        ("rabbitmq_queue_consumers", "Consumers on a queue", |q| {
            q.consumers
        }),
        (
            "rabbitmq_queue_process_memory_bytes",
            "Memory in bytes used by the Erlang queue process",
            |q| q.memory,
        ),
    ];
    for (name, help, f) in per_queue {
        m.family(name, "gauge", help);
        if per_object {
            for q in &s.queues {
                m.sample(name, &[("vhost", &q.vhost), ("queue", &q.name)], f(q));
            }
        } else {
            m.sample(name, &[], s.queues.iter().map(f).sum());
        }
    }
    type QueueCounter = (&'static str, &'static str, fn(&MessageStats) -> u64);
    let queue_counters: [QueueCounter; 3] = [
        (
            "rabbitmq_queue_messages_published_total",
            "Total number of messages published to queues",
            |s| s.publish,
        ),
        (
            "rabbitmq_queue_messages_delivered_total",
            "Total number of messages delivered from queues to consumers",
            MessageStats::deliver_get,
        ),
        (
            "rabbitmq_queue_messages_acked_total",
            "Total number of messages acknowledged by consumers on queues",
            |s| s.ack,
        ),
    ];
    for (name, help, f) in queue_counters {
        m.family(name, "counter", help);
        if per_object {
            for q in &s.queues {
                m.sample(
                    name,
                    &[("vhost", &q.vhost), ("queue", &q.name)],
                    f(&q.stats),
                );
            }
        } else {
            m.sample(name, &[], s.queues.iter().map(|q| f(&q.stats)).sum());
        }
    }
    m.0
}

async fn metrics(State(m): St) -> Response {
    prom(&m, false)
}

async fn metrics_per_object(State(m): St) -> Response {
    prom(&m, true)
}

/// `/metrics/detailed?family=F&vhost=V` (each repeatable), as RabbitMQ's
/// `rabbitmq_prometheus`: the per-queue metrics of the families asked for
/// (`queue_coarse_metrics`, `queue_consumer_count`, `queue_metrics`),
/// named `rabbitmq_detailed_*`, for the vhosts asked for (every vhost
/// without `vhost`). No family, no queue metric.
async fn metrics_detailed(
    State(m): St,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let mut families = Vec::new();
    let mut vhosts = Vec::new();
    for pair in query.as_deref().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned();
        match k {
            "family" => families.push(v),
            "vhost" => vhosts.push(v),
            _ => {}
        }
    }
    let s = m.snapshot();
    let text = detailed_text(&s, &m.config.node, &families, &vhosts);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The text of `/metrics/detailed`.
pub fn detailed_text(s: &Snapshot, node: &str, families: &[String], vhosts: &[String]) -> String {
    let mut m = Metrics(String::new());
    m.one(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
        &[
            ("rabbitmq_node", node),
            ("rabbitmq_cluster", node),
            ("rabbitmq_cluster_permanent_id", node),
        ],
        1,
    );
    type QueueMetric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&QueueSnap) -> u64,
    );
    let metrics: [QueueMetric; 8] = [
        (
            "queue_coarse_metrics",
            "rabbitmq_detailed_queue_messages_ready",
            "Messages ready to be delivered to consumers",
            |q| q.messages_ready,
        ),
        (
            "queue_coarse_metrics",
            "rabbitmq_detailed_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            |q| q.messages_unacknowledged,
        ),
        (
            "queue_coarse_metrics",
            "rabbitmq_detailed_queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
            QueueSnap::messages,
        ),
        (
            "queue_consumer_count",
            "rabbitmq_detailed_queue_consumers",
            "Consumers on a queue",
            |q| q.consumers,
        ),
        (
            "queue_metrics",
            "rabbitmq_detailed_queue_messages_ready_bytes",
            "Size in bytes of ready messages",
            |q| q.message_bytes_ready,
        ),
        (
            "queue_metrics",
            "rabbitmq_detailed_queue_messages_unacked_bytes",
            "Size in bytes of all unacknowledged messages",
            |q| q.message_bytes_unacknowledged,
        ),
        (
            "queue_metrics",
            "rabbitmq_detailed_queue_messages_bytes",
            "Size in bytes of ready and unacknowledged messages",
            |q| q.message_bytes_ready + q.message_bytes_unacknowledged,
        ),
        (
            "queue_metrics",
            "rabbitmq_detailed_queue_process_memory_bytes",
            "Memory in bytes used by the Erlang queue process",
            |q| q.memory,
        ),
    ];
    for (family, name, help, f) in metrics {
        if !families.iter().any(|x| x == family) {
            continue;
        }
        m.family(name, "gauge", help);
        for q in s
            .queues
            .iter()
            .filter(|q| vhosts.is_empty() || vhosts.contains(&q.vhost))
        {
            m.sample(name, &[("vhost", &q.vhost), ("queue", &q.name)], f(q));
        }
    }
    m.0
}

fn prom(m: &Management, per_object: bool) -> Response {
    let text = prometheus_text(&m.snapshot(), &m.config.node, per_object);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The Prometheus exporter's routes (`/metrics`, `/metrics/per-object`).
pub fn prometheus_router(m: Arc<Management>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/per-object", get(metrics_per_object))
        .route("/metrics/detailed", get(metrics_detailed))
        .fallback(not_found)
        .with_state(m)
}

/// Serves `router` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let svc = router.into_make_service_with_connect_info::<SocketAddr>();
    let r = axum::serve(listener, svc)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = r {
        tracing::warn!("management listener failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_queries_as_rabbitmq_takes_them() {
        let q = SampleQuery::parse(Some("msg_rates_age=60&msg_rates_incr=5&x=1"));
        assert_eq!(q.msg, Some((60.0, 5.0)));
        assert_eq!(q.lengths, None);
        let q = SampleQuery::parse(Some("lengths_age=1&lengths_incr=0.5"));
        assert_eq!(q.lengths, Some((1.0, 0.5)));
        // Zero, negative, not numbers, too many points: ignored.
        for bad in [
            "msg_rates_age=60&msg_rates_incr=0",
            "msg_rates_age=-1&msg_rates_incr=1",
            "msg_rates_age=abc&msg_rates_incr=1",
            "msg_rates_age=1e9&msg_rates_incr=1",
            "msg_rates_age=NaN&msg_rates_incr=1",
            "msg_rates_age",
            "",
        ] {
            assert_eq!(SampleQuery::parse(Some(bad)).msg, None, "{bad}");
        }
        assert_eq!(SampleQuery::parse(None).msg, None);
    }
}
