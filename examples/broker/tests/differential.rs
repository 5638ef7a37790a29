//! Differential tests: scripted AMQP 0-9-1 client conversations run against
//! RabbitMQ (the specification) and against `amqp-broker`, transcripts
//! compared. See `tests/README.md` for the scenario language.
//!
//! * `AMQP_DIFF_A` / `AMQP_DIFF_B`: the two addresses (default A =
//!   RabbitMQ on 127.0.0.1:5672, B = a spawned `amqp-broker`).
//! * `AMQP_DIFF_ONLY=name`: one scenario (file stem, or `seed-N`).
//! * `AMQP_DIFF_SEED=N`: one generated scenario (printed); otherwise seeds
//!   1..=`AMQP_DIFF_SEEDS` (default 50).
//! * `AMQP_INTEROP=0`: skip.

mod support;

mod differential {
    pub mod dsl;
    pub mod generate;
}

use amqp_codec::types::{Method, MethodKind, ReplyCode};
use amqp_codec::{
    Capabilities, ClientConfig, CloseCause, Connection, Credentials, Event, Initiator,
};
use amqp_types::{FieldValue, ShortString};
use bytes::Bytes;
use differential::dsl::{self, Args};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// How long a step waits for what it expects.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// Confirms are kept in a stream of their own, keyed by the channel
/// number with this bit set.
const CONFIRM_STREAM: u16 = 0x8000;
/// Default quiet window.
const QUIET: Duration = Duration::from_millis(200);

/// One scenario: a name and its step lines.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file stem or `seed-N`.
    pub name: String,
    /// The step lines.
    pub text: String,
}

impl Scenario {
    /// The step lines (1-based line numbers), comments and blanks skipped.
    fn steps(&self) -> Vec<(usize, &str)> {
        self.text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .collect()
    }
}

/// One recorded event.
#[derive(Debug, Clone)]
struct Rec {
    conn: String,
    channel: u16,
    /// Index into `Transcript::steps` of the step during which it arrived.
    step: usize,
    /// Publisher confirms: (channel incarnation, seqno), to sort by.
    key: (u32, u64),
    text: String,
}

/// Everything one run of a scenario saw.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    recs: Vec<Rec>,
    /// The steps as run (after substitution), with their line numbers.
    steps: Vec<(usize, String)>,
    prefix: String,
}

type Stream = Vec<(usize, String)>;

impl Transcript {
    /// Normalised streams per (connection, channel), in order of first
    /// connection use and channel number; each line with its step index.
    fn streams(&self) -> BTreeMap<(usize, String, u16), Stream> {
        let mut order: Vec<&str> = vec![];
        for r in &self.recs {
            if !order.contains(&r.conn.as_str()) {
                order.push(&r.conn);
            }
        }
        let mut recs: Vec<&Rec> = self.recs.iter().collect();
        // Confirm streams by (channel incarnation, seqno); stable, so
        // everything else keeps its arrival order.
        recs.sort_by_key(|r| r.key);
        let mut m: BTreeMap<(usize, String, u16), Stream> = BTreeMap::new();
        for r in recs {
            let ci = order.iter().position(|c| *c == r.conn).unwrap_or(0);
            m.entry((ci, r.conn.clone(), r.channel))
                .or_default()
                .push((r.step, r.text.clone()));
        }
        // Server-generated names numbered in order of appearance, over the
        // streams in this order.
        let mut names = Normaliser::new(&self.prefix);
        for s in m.values_mut() {
            for (_, t) in s.iter_mut() {
                *t = names.apply(t);
            }
        }
        m
    }

    /// The normalised transcript, for reading.
    fn render(&self, name: &str) -> String {
        let mut s = format!("=== {name}\n");
        for ((_, c, ch), lines) in self.streams() {
            let _ = writeln!(s, "--- {}", stream_name(&c, ch));
            for (step, t) in lines {
                let _ = writeln!(s, "  [step {step:>3}] {t}");
            }
        }
        s
    }

    fn step_text(&self, i: usize) -> String {
        match self.steps.get(i) {
            Some((line, t)) => format!("line {line}: {t}"),
            None => "(after the last step)".into(),
        }
    }
}

/// A stream's name for reports.
fn stream_name(c: &str, ch: u16) -> String {
    if ch & CONFIRM_STREAM != 0 {
        format!(
            "connection {c} channel {} (publisher confirms, by seqno)",
            ch & !CONFIRM_STREAM
        )
    } else {
        format!("connection {c} channel {ch}")
    }
}

/// Replaces what legitimately differs between brokers and runs.
struct Normaliser {
    prefix: String,
    seen: HashMap<String, String>,
    counters: HashMap<&'static str, usize>,
    re_gen: regex::Regex,
    re_time: regex::Regex,
}

impl Normaliser {
    fn new(prefix: &str) -> Self {
        Normaliser {
            prefix: prefix.to_string(),
            seen: HashMap::new(),
            counters: HashMap::new(),
            re_gen: regex::Regex::new(r"amq\.(gen|ctag)-[A-Za-z0-9_\-]+").unwrap(),
            re_time: regex::Regex::new(r"time=T:\d+").unwrap(),
        }
    }

    fn apply(&mut self, text: &str) -> String {
        let t = text.replace(&self.prefix, "{p}");
        let t = self.re_time.replace_all(&t, "time=T:*").into_owned();
        let mut out = String::new();
        let mut last = 0;
        for m in self.re_gen.find_iter(&t) {
            out.push_str(&t[last..m.start()]);
            let name = m.as_str().to_string();
            let kind: &'static str = if name.starts_with("amq.gen") {
                "amq.gen"
            } else {
                "amq.ctag"
            };
            let rep = match self.seen.get(&name) {
                Some(r) => r.clone(),
                None => {
                    let c = self.counters.entry(kind).or_insert(0);
                    *c += 1;
                    let r = format!("{kind}-#{c}");
                    self.seen.insert(name, r.clone());
                    r
                }
            };
            out.push_str(&rep);
            last = m.end();
        }
        out.push_str(&t[last..]);
        out
    }
}

#[derive(Debug, Default, Clone)]
struct Chan {
    replies_expected: u64,
    replies_seen: u64,
    async_expected: u64,
    async_seen: u64,
    closed: bool,
    last_reply: Option<Method>,
    /// How many times the channel was opened.
    incarnation: u32,
}

struct Client {
    name: String,
    conn: Connection,
    wr: Option<OwnedWriteHalf>,
    closed: bool,
    chans: BTreeMap<u16, Chan>,
}

/// One run of one scenario against one broker.
struct Run {
    addr: String,
    /// The broker's management API (policies), if it has one.
    http: Option<String>,
    /// Policies the scenario set (vhost, name): cleared at the end.
    policies: BTreeSet<(String, String)>,
    prefix: String,
    clients: Vec<Client>,
    by_name: HashMap<String, usize>,
    tx: mpsc::UnboundedSender<(usize, Option<Bytes>)>,
    rx: mpsc::UnboundedReceiver<(usize, Option<Bytes>)>,
    t: Transcript,
    step: usize,
    vars: HashMap<String, String>,
    masks: Vec<String>,
    queues: BTreeSet<String>,
    exchanges: BTreeSet<String>,
    last_event: Instant,
    recording: bool,
    key: (u32, u64),
}

fn short(s: &str) -> ShortString {
    ShortString::try_from(s).unwrap_or_default()
}

fn reason_text(code: ReplyCode, text: &ShortString, class_id: u16, method_id: u16) -> String {
    let m = MethodKind::from_ids(class_id, method_id)
        .map(|k| format!(" ({})", k.name()))
        .unwrap_or_default();
    format!(
        "reply-code={} reply-text={} class-id={class_id} method-id={method_id}{m}",
        code.0,
        dsl::quote(text.as_bytes())
    )
}

fn show_body(b: &[u8]) -> String {
    if b.len() <= 256 {
        dsl::quote(b)
    } else {
        // FNV-1a: enough to tell bodies apart.
        let mut h: u64 = 0xcbf29ce484222325;
        for &c in b {
            h = (h ^ u64::from(c)).wrapping_mul(0x100000001b3);
        }
        format!("<{} bytes, fnv {h:016x}>", b.len())
    }
}

impl Run {
    fn new(addr: &str, http: Option<&str>, prefix: &str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Run {
            addr: addr.to_string(),
            http: http.map(str::to_owned),
            policies: BTreeSet::new(),
            prefix: prefix.to_string(),
            clients: vec![],
            by_name: HashMap::new(),
            tx,
            rx,
            t: Transcript {
                prefix: prefix.to_string(),
                ..Default::default()
            },
            step: 0,
            vars: HashMap::new(),
            masks: vec![],
            queues: BTreeSet::new(),
            exchanges: BTreeSet::new(),
            last_event: Instant::now(),
            recording: true,
            key: (0, 0),
        }
    }

    fn push(&mut self, ci: usize, channel: u16, text: String) {
        self.last_event = Instant::now();
        if !self.recording {
            return;
        }
        let mut text = text;
        for m in &self.masks {
            let re = regex::Regex::new(&format!(r"\b{}=[^ ]+", regex::escape(m))).unwrap();
            text = re.replace_all(&text, format!("{m}=*")).into_owned();
        }
        self.t.recs.push(Rec {
            conn: self.clients[ci].name.clone(),
            channel,
            step: self.step,
            key: self.key,
            text,
        });
    }

    fn chan(&mut self, ci: usize, ch: u16) -> &mut Chan {
        self.clients[ci].chans.entry(ch).or_default()
    }

    fn record(&mut self, ci: usize, ev: Event) {
        match ev {
            Event::Connected {
                tuning,
                peer_capabilities: _,
                peer_properties,
            } => {
                let mut caps = vec![];
                if let Some(FieldValue::Table(t)) = peer_properties.get("capabilities") {
                    for (k, v) in t.iter() {
                        caps.push(format!("{}={}", k, dsl::show_value(v)));
                    }
                }
                caps.sort();
                let text = format!(
                    "connected channel-max={} frame-max={} heartbeat={} capabilities=[{}]",
                    tuning.channel_max,
                    tuning.frame_max,
                    tuning.heartbeat,
                    caps.join(" ")
                );
                self.push(ci, 0, text);
            }
            Event::ChannelOpened { channel } => {
                let c = self.chan(ci, channel);
                c.replies_seen += 1;
                c.incarnation += 1;
                self.push(ci, channel, "channel.open-ok".into());
            }
            Event::ChannelClosed {
                channel,
                initiator,
                reason,
            } => {
                self.chan(ci, channel).closed = true;
                let text = match initiator {
                    Initiator::Local => "channel.close-ok".to_string(),
                    Initiator::Peer => format!(
                        "channel.close {}",
                        reason_text(reason.code, &reason.text, reason.class_id, reason.method_id)
                    ),
                };
                self.push(ci, channel, text);
            }
            Event::Method { channel, method } => {
                let kind = method.kind();
                let c = self.chan(ci, channel);
                if kind.is_reply() {
                    c.replies_seen += 1;
                    c.last_reply = Some(method.clone());
                } else {
                    c.async_seen += 1;
                }
                self.push(ci, channel, dsl::show_method(&method));
            }
            Event::Message {
                channel, message, ..
            } => {
                let c = self.chan(ci, channel);
                if message.method.kind() == MethodKind::BasicGetOk {
                    c.replies_seen += 1;
                } else {
                    c.async_seen += 1;
                }
                let props: Vec<String> = dsl::property_fields(&message.properties)
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let text = format!(
                    "{} | props {} | body {}",
                    dsl::show_method(&message.method),
                    if props.is_empty() {
                        "-".to_string()
                    } else {
                        props.join(" ")
                    },
                    show_body(&message.body)
                );
                self.push(ci, channel, text);
            }
            Event::Confirm {
                channel,
                delivery_tag,
                multiple,
                ack,
                settled,
            } => {
                // Confirms are not counted as asynchronous events (the
                // `confirms` step waits for them), and go to their own
                // stream, by seqno: the order in which RabbitMQ confirms
                // messages routed to different queues (or to none) is
                // timing-dependent.
                let what = if ack { "ack" } else { "nack" };
                let inc = self.chan(ci, channel).incarnation;
                let channel = channel | CONFIRM_STREAM;
                self.key = (inc, delivery_tag);
                if settled.is_empty() {
                    self.push(
                        ci,
                        channel,
                        format!(
                            "confirm {what} delivery-tag={delivery_tag} multiple={multiple} (settles nothing)"
                        ),
                    );
                }
                for s in settled {
                    self.key = (inc, s);
                    self.push(ci, channel, format!("confirm {what} seqno={s}"));
                }
                self.key = (0, 0);
            }
            Event::Flow { channel, active } => {
                self.chan(ci, channel).async_seen += 1;
                self.push(ci, channel, format!("channel.flow active={active}"));
            }
            Event::Blocked { reason } => self.push(
                ci,
                0,
                format!(
                    "connection.blocked reason={}",
                    dsl::quote(reason.as_bytes())
                ),
            ),
            Event::Unblocked => self.push(ci, 0, "connection.unblocked".into()),
            Event::ProtocolError(e) => {
                self.push(ci, 0, format!("protocol error (client side): {e}"))
            }
            Event::Closed { cause } => {
                self.clients[ci].closed = true;
                let text = match cause {
                    CloseCause::Closed {
                        initiator: Initiator::Local,
                        ..
                    } => "connection.close-ok".to_string(),
                    CloseCause::Closed { reason, .. } => format!(
                        "connection.close {}",
                        reason_text(reason.code, &reason.text, reason.class_id, reason.method_id)
                    ),
                    CloseCause::Timeout(k) => format!("connection timed out ({k:?})"),
                    CloseCause::Failed(e) => format!("connection failed: {e}"),
                    CloseCause::TransportClosed => "connection: transport closed".into(),
                    other => format!("connection ended: {other:?}"),
                };
                self.push(ci, 0, text);
                self.clients[ci].wr = None;
            }
            other => self.push(ci, 0, format!("unexpected event {other:?}")),
        }
    }

    /// Drains events and writes pending bytes of every client.
    async fn flush(&mut self) {
        loop {
            let mut any = false;
            for ci in 0..self.clients.len() {
                while let Some(e) = self.clients[ci].conn.poll_event() {
                    any = true;
                    self.record(ci, e);
                }
                let c = &mut self.clients[ci];
                while let Some(b) = c.conn.poll_transmit() {
                    any = true;
                    if let Some(w) = c.wr.as_mut()
                        && w.write_all(&b).await.is_err()
                    {
                        c.wr = None;
                    }
                }
                if c.conn.is_closed() {
                    c.wr = None;
                }
            }
            if !any {
                return;
            }
        }
    }

    /// Runs I/O until `done` holds or `limit` passes; whether it held.
    async fn pump(&mut self, limit: Duration, done: impl Fn(&Run) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            self.flush().await;
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wake = self
                .clients
                .iter()
                .filter_map(|c| c.conn.poll_timeout())
                .min()
                .unwrap_or(deadline)
                .min(deadline)
                .max(now);
            tokio::select! {
                m = self.rx.recv() => {
                    if let Some((ci, data)) = m
                        && let Some(c) = self.clients.get_mut(ci)
                    {
                        match data {
                            Some(b) => c.conn.handle_input(b),
                            None => c.conn.handle_eof(),
                        }
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    let now = Instant::now();
                    for c in &mut self.clients {
                        c.conn.handle_timeout(now);
                    }
                }
            }
        }
    }

    /// Runs I/O until nothing arrived for `window` (at most `STEP_TIMEOUT`).
    async fn quiet(&mut self, window: Duration) {
        let start = Instant::now();
        self.last_event = start;
        loop {
            let until = self.last_event + window;
            let now = Instant::now();
            if now >= until || now >= start + STEP_TIMEOUT {
                return;
            }
            let le = self.last_event;
            self.pump(until - now, move |r| r.last_event != le).await;
        }
    }

    fn subst(&self, line: &str) -> String {
        let mut s = line.replace("{p}", &self.prefix);
        for (k, v) in &self.vars {
            s = s.replace(&format!("{{{k}}}"), v);
        }
        s
    }

    async fn connect(&mut self, name: &str, mut args: Args) -> Result<(), String> {
        let user = args.take("user").unwrap_or_else(|| "guest".into());
        let password = args.take("password").unwrap_or_else(|| "guest".into());
        let vhost = args.take("vhost").unwrap_or_else(|| "/".into());
        let mut cfg = ClientConfig {
            credentials: Credentials::plain(user, password),
            virtual_host: short(&vhost),
            ..Default::default()
        };
        if let Some(h) = args.take("heartbeat") {
            cfg.heartbeat = Some(h.parse().map_err(|e| format!("heartbeat: {e}"))?);
        }
        if args.take("caps").as_deref() == Some("none") {
            cfg.capabilities = Capabilities::NONE;
        }
        args.finish()?;
        let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&self.addr))
            .await
            .map_err(|_| format!("connecting to {} timed out", self.addr))?
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
        tcp.set_nodelay(true).ok();
        let (mut rd, wr) = tcp.into_split();
        let ci = self.clients.len();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = tx.send((ci, None));
                        return;
                    }
                    Ok(n) => {
                        if tx
                            .send((ci, Some(Bytes::copy_from_slice(&buf[..n]))))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        self.clients.push(Client {
            name: name.to_string(),
            conn: Connection::client(cfg, Instant::now()),
            wr: Some(wr),
            closed: false,
            chans: BTreeMap::new(),
        });
        self.by_name.insert(name.to_string(), ci);
        let ok = self
            .pump(Duration::from_secs(10), move |r| {
                let c = &r.clients[ci];
                c.closed || c.conn.is_open()
            })
            .await;
        if !ok {
            self.push(ci, 0, "timeout waiting for the handshake".into());
        }
        Ok(())
    }

    fn client(&self, name: &str) -> Result<usize, String> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| format!("no connection named {name:?} (connect it first)"))
    }

    /// Waits for every reply expected on the channel.
    async fn await_replies(&mut self, ci: usize, ch: u16) {
        let ok = self
            .pump(STEP_TIMEOUT, move |r| {
                let c = &r.clients[ci];
                let s = c.chans.get(&ch).cloned().unwrap_or_default();
                c.closed || s.closed || s.replies_seen >= s.replies_expected
            })
            .await;
        if !ok {
            let s = self.chan(ci, ch).clone();
            self.push(
                ci,
                ch,
                format!(
                    "(runner) timeout: {} of {} replies",
                    s.replies_seen, s.replies_expected
                ),
            );
            let c = self.chan(ci, ch);
            c.replies_expected = c.replies_seen;
        }
    }

    async fn step(&mut self, line: &str) -> Result<(), String> {
        let line = self.subst(line);
        let toks = dsl::tokenize(&line)?;
        self.t.steps.push((0, line.clone()));
        self.step = self.t.steps.len() - 1;
        self.masks.clear();
        let Some(target) = toks.first() else {
            return Ok(());
        };
        // Global steps.
        match target.as_str() {
            "quiet" => {
                let ms = toks.get(1).map_or(Ok(QUIET.as_millis() as u64), |t| {
                    t.parse::<u64>().map_err(|e| e.to_string())
                })?;
                self.quiet(Duration::from_millis(ms)).await;
                return Ok(());
            }
            "policy" => return self.policy(&toks[1..]),
            "sleep" => {
                let ms: u64 = toks
                    .get(1)
                    .ok_or("sleep MS")?
                    .parse()
                    .map_err(|e| format!("{e}"))?;
                self.pump(Duration::from_millis(ms), |_| false).await;
                return Ok(());
            }
            _ => {}
        }
        let verb = toks.get(1).ok_or_else(|| format!("no verb in {line:?}"))?;
        let mut args = dsl::parse_args(&toks[2..]);
        let (cname, ch) = match target.split_once('.') {
            Some((c, n)) => (
                c.to_string(),
                Some(
                    n.parse::<u16>()
                        .map_err(|e| format!("channel {n:?}: {e}"))?,
                ),
            ),
            None => (target.clone(), None),
        };
        if verb == "connect" {
            return self.connect(&cname, args).await;
        }
        let ci = self.client(&cname)?;
        let Some(ch) = ch else {
            return self.conn_step(ci, verb, args).await;
        };
        match verb.as_str() {
            "open" | "ensure-open" => {
                args.finish()?;
                if verb == "ensure-open"
                    && (self.clients[ci].conn.is_channel_open(ch)
                        || !self.clients[ci].conn.is_open())
                {
                    return Ok(());
                }
                match self.clients[ci].conn.open_channel_with(ch) {
                    Ok(()) => {
                        *self.chan(ci, ch) = Chan {
                            replies_expected: 1,
                            ..Default::default()
                        };
                        self.await_replies(ci, ch).await;
                    }
                    Err(e) => self.push(ci, ch, format!("(client refused) {e}")),
                }
            }
            "close" => {
                let code = args.take("code").map_or(Ok(200), |c| c.parse::<u16>());
                let code = code.map_err(|e| e.to_string())?;
                let text = args.take("text").unwrap_or_default();
                args.finish()?;
                match self.clients[ci]
                    .conn
                    .close_channel(ch, ReplyCode(code), &text)
                {
                    Ok(()) => {
                        self.pump(STEP_TIMEOUT, move |r| {
                            let c = &r.clients[ci];
                            c.closed || c.chans.get(&ch).is_none_or(|s| s.closed)
                        })
                        .await;
                    }
                    Err(e) => self.push(ci, ch, format!("(client refused) {e}")),
                }
            }
            "expect" => {
                let n: u64 = args
                    .0
                    .first()
                    .map(|(k, _)| k.parse())
                    .ok_or("expect N")?
                    .map_err(|e| format!("expect: {e}"))?;
                let c = self.chan(ci, ch);
                c.async_expected += n;
                let ok = self
                    .pump(STEP_TIMEOUT, move |r| {
                        let c = &r.clients[ci];
                        let s = c.chans.get(&ch).cloned().unwrap_or_default();
                        c.closed || s.closed || s.async_seen >= s.async_expected
                    })
                    .await;
                if !ok {
                    let s = self.chan(ci, ch).clone();
                    self.push(
                        ci,
                        ch,
                        format!(
                            "(runner) timeout: {} of {} asynchronous events",
                            s.async_seen, s.async_expected
                        ),
                    );
                }
                let c = self.chan(ci, ch);
                c.async_expected = c.async_seen;
            }
            "confirms" => {
                args.finish()?;
                let ok = self
                    .pump(STEP_TIMEOUT, move |r| {
                        let c = &r.clients[ci];
                        c.closed
                            || c.chans.get(&ch).is_some_and(|s| s.closed)
                            || c.conn.unconfirmed(ch) == 0
                    })
                    .await;
                if !ok {
                    let n = self.clients[ci].conn.unconfirmed(ch);
                    self.push(
                        ci,
                        ch,
                        format!("(runner) timeout: {n} publishes unconfirmed"),
                    );
                }
            }
            "raw" => {
                let name = args.0.first().map(|(k, _)| k.clone()).ok_or("raw METHOD")?;
                args.0.remove(0);
                let m = dsl::build_method(&name, &mut args)?;
                args.finish()?;
                self.flush().await;
                let mut out = vec![];
                amqp_codec::wire::Frame::method(ch, m)
                    .encode_to_vec(&mut out)
                    .map_err(|e| e.to_string())?;
                if let Some(w) = self.clients[ci].wr.as_mut() {
                    let _ = w.write_all(&out).await;
                }
            }
            method => self.method_step(ci, ch, method, args).await?,
        }
        Ok(())
    }

    async fn conn_step(&mut self, ci: usize, verb: &str, mut args: Args) -> Result<(), String> {
        match verb {
            "close" => {
                let code = args.take("code").map_or(Ok(200), |c| c.parse::<u16>());
                let code = code.map_err(|e| e.to_string())?;
                let text = args.take("text").unwrap_or_default();
                args.finish()?;
                match self.clients[ci].conn.close(ReplyCode(code), &text) {
                    Ok(()) => {
                        self.pump(STEP_TIMEOUT, move |r| r.clients[ci].closed).await;
                    }
                    Err(e) => self.push(ci, 0, format!("(client refused) {e}")),
                }
            }
            "drop" => {
                args.finish()?;
                self.flush().await;
                let c = &mut self.clients[ci];
                if let Some(mut w) = c.wr.take() {
                    let _ = w.shutdown().await;
                }
                c.closed = true;
                // Not recorded: the transport is gone on our side.
                let fresh = Connection::client(ClientConfig::default(), Instant::now());
                c.conn = fresh;
                c.conn.close(ReplyCode(200), "").ok();
                while c.conn.poll_transmit().is_some() {}
                c.conn.handle_eof();
                while c.conn.poll_event().is_some() {}
                // A later connect under the same name starts a new client.
                self.by_name.remove(&c.name);
            }
            _ => return Err(format!("unknown connection step {verb:?}")),
        }
        Ok(())
    }

    async fn method_step(
        &mut self,
        ci: usize,
        ch: u16,
        method: &str,
        mut args: Args,
    ) -> Result<(), String> {
        let (name, wait) = match method.strip_suffix('&') {
            Some(n) => (n, false),
            None => (method, true),
        };
        let save = args.take("save");
        if let Some(m) = args.take("mask") {
            self.masks = m.split(',').map(str::to_string).collect();
        }
        if name == "basic.publish" {
            let count: usize = args
                .take("count")
                .map_or(Ok(1), |c| c.parse())
                .map_err(|e| format!("count: {e}"))?;
            let body = args.take("body").unwrap_or_default();
            let body_size = args.take("body-size");
            let props = dsl::build_properties(&mut args)?;
            let m = dsl::build_method(name, &mut args)?;
            args.finish()?;
            let Method::BasicPublish(p) = m else {
                unreachable!()
            };
            for i in 1..=count {
                let b: Bytes = match &body_size {
                    Some(n) => {
                        let n: usize = n.parse().map_err(|e| format!("body-size: {e}"))?;
                        (0..n).map(|j| (j % 251) as u8).collect::<Vec<u8>>().into()
                    }
                    None => body.replace("{i}", &i.to_string()).into_bytes().into(),
                };
                if let Err(e) = self.clients[ci].conn.publish(ch, p.clone(), &props, b) {
                    self.push(ci, ch, format!("(client refused) {e}"));
                    break;
                }
            }
            self.flush().await;
            return Ok(());
        }
        let m = dsl::build_method(name, &mut args)?;
        args.finish()?;
        match &m {
            Method::ExchangeDeclare(x)
                if x.exchange.as_bytes().starts_with(self.prefix.as_bytes()) =>
            {
                self.exchanges.insert(x.exchange.to_string());
            }
            Method::QueueDeclare(q) if q.queue.as_bytes().starts_with(self.prefix.as_bytes()) => {
                self.queues.insert(q.queue.to_string());
            }
            _ => {}
        }
        let expects = m.expects_reply();
        match self.clients[ci].conn.send_method(ch, m) {
            Ok(()) => {
                if expects {
                    self.chan(ci, ch).replies_expected += 1;
                }
                if expects && wait {
                    self.await_replies(ci, ch).await;
                } else {
                    self.flush().await;
                }
            }
            Err(e) => self.push(ci, ch, format!("(client refused) {e}")),
        }
        if let Some(var) = save {
            let v = match self.chan(ci, ch).last_reply.clone() {
                Some(Method::QueueDeclareOk(q)) => q.queue.to_string(),
                Some(Method::BasicConsumeOk(c)) => c.consumer_tag.to_string(),
                other => return Err(format!("save={var}: nothing to save from {other:?}")),
            };
            self.vars.insert(var, v);
        }
        Ok(())
    }

    /// Deletes the queues and exchanges the scenario declared (not
    /// recorded).
    async fn cleanup(&mut self) {
        self.recording = false;
        if self.queues.is_empty() && self.exchanges.is_empty() {
            return;
        }
        let name = "__cleanup";
        if self.connect(name, Args::default()).await.is_err() {
            return;
        }
        let ci = self.clients.len() - 1;
        let queues: Vec<String> = self.queues.iter().cloned().collect();
        let exchanges: Vec<String> = self.exchanges.iter().cloned().collect();
        let ops = queues
            .iter()
            .map(|q| format!("queue.delete queue={q}"))
            .chain(
                exchanges
                    .iter()
                    .map(|x| format!("exchange.delete exchange={x}")),
            );
        for op in ops {
            if self.clients[ci].closed {
                return;
            }
            if !self.clients[ci].conn.is_channel_open(1) {
                let _ = self.step(&format!("{name}.1 open")).await;
            }
            let _ = self.step(&format!("{name}.1 {op}")).await;
        }
        let _ = self.step(&format!("{name} close")).await;
    }

    /// `policy set NAME pattern=RE definition=JSON [apply-to=A]
    /// [priority=N] [vhost=V]` or `policy clear NAME [vhost=V]`, through
    /// the management API; the status (and an error's reason) is recorded
    /// in a stream of its own.
    fn policy(&mut self, toks: &[String]) -> Result<(), String> {
        let usage = "policy set NAME pattern=RE definition=JSON [apply-to=A] [priority=N] | policy clear NAME";
        let (verb, name) = match toks {
            [v, n, ..] => (v.as_str(), n.clone()),
            _ => return Err(usage.into()),
        };
        let mut args = dsl::parse_args(&toks[2..]);
        let vhost = args.take("vhost").unwrap_or_else(|| "/".into());
        let http = self
            .http
            .clone()
            .ok_or("policy: this broker has no management API address")?;
        let addr: std::net::SocketAddr = http.parse().map_err(|e| format!("{http}: {e}"))?;
        let path = format!(
            "/api/policies/{}/{}",
            percent_encoding::utf8_percent_encode(&vhost, percent_encoding::NON_ALPHANUMERIC),
            percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
        );
        let reply = match verb {
            "set" => {
                let mut body = serde_json::Map::new();
                for (k, v) in args.0 {
                    let value = match k.as_str() {
                        "definition" => serde_json::from_str(&v)
                            .map_err(|e| format!("definition is not JSON: {e}"))?,
                        "priority" => serde_json::Value::from(
                            v.parse::<i64>().map_err(|e| format!("priority: {e}"))?,
                        ),
                        "pattern" | "apply-to" => serde_json::Value::String(v),
                        other => return Err(format!("policy: unknown argument {other:?}")),
                    };
                    body.insert(k, value);
                }
                self.policies.insert((vhost, name.clone()));
                let body = serde_json::Value::Object(body).to_string();
                support::http(addr, "PUT", &path, Some("guest:guest"), &body)
            }
            "clear" => support::http(addr, "DELETE", &path, Some("guest:guest"), ""),
            _ => return Err(usage.into()),
        };
        let mut text = format!("(policy) {verb} {name}: {}", reply.status);
        if reply.status >= 400 {
            let reason = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
                .unwrap_or_default();
            text.push_str(&format!(" {}", dsl::quote(reason.as_bytes())));
        }
        self.last_event = Instant::now();
        self.t.recs.push(Rec {
            conn: "http".into(),
            channel: 0,
            step: self.step,
            key: self.key,
            text,
        });
        Ok(())
    }

    async fn finish(&mut self) {
        // Policies first (they could act on the queues cleaned up below).
        if let Some(addr) = self.http.as_deref().and_then(|h| h.parse().ok()) {
            for (vhost, name) in std::mem::take(&mut self.policies) {
                let path = format!(
                    "/api/policies/{}/{}",
                    percent_encoding::utf8_percent_encode(
                        &vhost,
                        percent_encoding::NON_ALPHANUMERIC
                    ),
                    percent_encoding::utf8_percent_encode(
                        &name,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                );
                let _ = support::http(addr, "DELETE", &path, Some("guest:guest"), "");
            }
        }
        // Close what is still open (not recorded: the scenario ends here).
        self.recording = false;
        for ci in 0..self.clients.len() {
            if !self.clients[ci].closed && self.clients[ci].conn.is_open() {
                let _ = self.clients[ci].conn.close(ReplyCode(200), "");
            }
        }
        self.pump(STEP_TIMEOUT, |r| {
            r.clients.iter().all(|c| c.closed || c.conn.is_closed())
        })
        .await;
        self.cleanup().await;
    }
}

/// A short random prefix for this run's names.
fn run_prefix(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let n = N.fetch_add(1, Ordering::Relaxed);
    let x = (t ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9e3779b97f4a7c15) ^ n;
    format!("dt{tag}{:08x}{n}-", x as u32)
}

/// Runs a scenario against `addr`; scenario errors (typos) are `Err`.
pub async fn run_scenario(
    s: &Scenario,
    addr: &str,
    http: Option<&str>,
    tag: &str,
) -> Result<Transcript, String> {
    let prefix = run_prefix(tag);
    let mut run = Run::new(addr, http, &prefix);
    let mut result = Ok(());
    for (line_no, line) in s.steps() {
        if let Err(e) = run.step(line).await {
            result = Err(format!("{}:{line_no}: {e}\n  {line}", s.name));
            break;
        }
        if let Some(st) = run.t.steps.last_mut() {
            st.0 = line_no;
        }
    }
    let steps = run.t.steps.len();
    run.finish().await;
    run.t.steps.truncate(steps);
    result.map(|_| run.t)
}

/// The differences between two transcripts of one scenario, rendered; empty
/// when they agree.
pub fn compare(name: &str, a: &Transcript, b: &Transcript, la: &str, lb: &str) -> Vec<String> {
    let sa = a.streams();
    let sb = b.streams();
    let mut keys: Vec<(String, u16)> = vec![];
    for (_, c, ch) in sa.keys().chain(sb.keys()) {
        if !keys.contains(&(c.clone(), *ch)) {
            keys.push((c.clone(), *ch));
        }
    }
    let find = |s: &BTreeMap<(usize, String, u16), Stream>, c: &str, ch: u16| -> Stream {
        s.iter()
            .find(|((_, cc, chh), _)| cc == c && *chh == ch)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut out = vec![];
    for (c, ch) in keys {
        let xa = find(&sa, &c, ch);
        let xb = find(&sb, &c, ch);
        let ta: Vec<&str> = xa.iter().map(|(_, t)| t.as_str()).collect();
        let tb: Vec<&str> = xb.iter().map(|(_, t)| t.as_str()).collect();
        if ta == tb {
            continue;
        }
        let first = (0..ta.len().max(tb.len()))
            .find(|&i| ta.get(i) != tb.get(i))
            .unwrap_or(0);
        let at = xa.get(first).or(xb.get(first)).map_or(0, |x| x.0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "MISMATCH in scenario {name}, {}, event {} (during step {}):",
            stream_name(&c, ch),
            first + 1,
            a.step_text(at)
        );
        for i in 0..ta.len().max(tb.len()) {
            let sa_ = xa.get(i);
            let sb_ = xb.get(i);
            match (sa_, sb_) {
                (Some(x), Some(y)) if x.1 == y.1 => {
                    let _ = writeln!(s, "    [step {:>3}]   {}", x.0, x.1);
                }
                _ => {
                    if let Some(x) = sa_ {
                        let _ = writeln!(s, "  {la} [step {:>3}] {}", x.0, x.1);
                    }
                    if let Some(y) = sb_ {
                        let _ = writeln!(s, "  {lb} [step {:>3}] {}", y.0, y.1);
                    }
                }
            }
        }
        out.push(s);
    }
    out
}

fn load_scenarios() -> Vec<Scenario> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scenarios");
    let mut v: Vec<Scenario> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .map(|p| Scenario {
            name: p.file_stem().unwrap().to_string_lossy().into_owned(),
            text: std::fs::read_to_string(&p).unwrap(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn skip() -> bool {
    if std::env::var("AMQP_INTEROP").as_deref() == Ok("0") {
        eprintln!("skipped: AMQP_INTEROP=0");
        return true;
    }
    false
}

fn rabbitmq_addr() -> String {
    let a = std::env::var("AMQP_DIFF_A").unwrap_or_else(|_| "127.0.0.1:5672".into());
    if std::net::TcpStream::connect(&a).is_err() {
        panic!("RabbitMQ (AMQP_DIFF_A) must listen on {a} (set AMQP_INTEROP=0 to skip)");
    }
    a
}

struct Outcome {
    name: String,
    steps: usize,
    mismatches: Vec<String>,
    text: String,
}

/// A broker under test: its AMQP address and its management API's.
#[derive(Clone)]
struct Target {
    amqp: String,
    http: Option<String>,
}

async fn diff_one(s: Scenario, a: Target, b: Target) -> Outcome {
    let (ta, tb) = tokio::join!(
        run_scenario(&s, &a.amqp, a.http.as_deref(), "a"),
        run_scenario(&s, &b.amqp, b.http.as_deref(), "b")
    );
    let steps = s.steps().len();
    let mismatches = match (ta, tb) {
        (Ok(ta), Ok(tb)) => {
            if std::env::var("AMQP_DIFF_SHOW").is_ok_and(|v| v != "0") {
                eprintln!("{}", ta.render(&s.name));
            }
            compare(&s.name, &ta, &tb, "A", "B")
        }
        (Err(e), _) | (_, Err(e)) => vec![format!("scenario error: {e}")],
    };
    Outcome {
        name: s.name,
        steps,
        mismatches,
        text: s.text,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential() {
    if skip() {
        return;
    }
    let a = Target {
        amqp: rabbitmq_addr(),
        http: Some(std::env::var("AMQP_DIFF_A_HTTP").unwrap_or_else(|_| "127.0.0.1:15672".into())),
    };
    let broker;
    let b = match std::env::var("AMQP_DIFF_B") {
        Ok(b) => Target {
            amqp: b,
            http: std::env::var("AMQP_DIFF_B_HTTP").ok(),
        },
        Err(_) => {
            let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/differential.toml");
            let api = format!("127.0.0.1:{}", support::free_ports(15700..15710, 1)[0]);
            broker =
                support::Broker::start(5700..5710, &["--config", config, "--management", &api]);
            Target {
                amqp: broker.addr.to_string(),
                http: Some(api),
            }
        }
    };
    eprintln!(
        "differential: A = {} (the specification), B = {}",
        a.amqp, b.amqp
    );
    let only = std::env::var("AMQP_DIFF_ONLY").ok();
    let mut scenarios: Vec<Scenario> = vec![];
    if std::env::var("AMQP_DIFF_SEED").is_err() {
        scenarios.extend(load_scenarios());
    }
    let seeds: Vec<u64> = match std::env::var("AMQP_DIFF_SEED") {
        Ok(s) => vec![s.parse().expect("AMQP_DIFF_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("AMQP_DIFF_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(50);
            (1..=n).collect()
        }
    };
    for seed in seeds {
        scenarios.push(Scenario {
            name: format!("seed-{seed}"),
            text: differential::generate::scenario(seed),
        });
    }
    if let Some(o) = &only {
        scenarios.retain(|s| &s.name == o);
        assert!(!scenarios.is_empty(), "no scenario named {o:?}");
    }
    if std::env::var("AMQP_DIFF_SEED").is_ok() {
        eprintln!("{}", scenarios[0].text);
    }
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(6));
    let mut tasks = vec![];
    for s in scenarios {
        let (a, b, sem) = (a.clone(), b.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            diff_one(s, a, b).await
        }));
    }
    let (mut n, mut steps, mut agreed) = (0, 0, 0);
    let mut failures = vec![];
    for t in tasks {
        let o = t.await.expect("scenario task panicked");
        n += 1;
        steps += o.steps;
        if o.mismatches.is_empty() {
            agreed += 1;
        } else {
            let mut f = o.mismatches.join("\n");
            if o.name.starts_with("seed-") {
                let _ = write!(
                    f,
                    "\n(replay: AMQP_DIFF_SEED={} ; the scenario:)\n{}",
                    &o.name[5..],
                    o.text
                );
            }
            failures.push(f);
        }
    }
    for f in &failures {
        eprintln!("{f}");
    }
    eprintln!(
        "{n} scenarios, {steps} steps: {agreed} agreed, {} differed ({:.1} s)",
        n - agreed,
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {n} scenarios differ between A and B (see above)",
        failures.len()
    );
}

/// The runner can fail: two different conversations are reported as
/// different, and a scenario agrees with itself on RabbitMQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_detects_differences() {
    if skip() {
        return;
    }
    let a = rabbitmq_addr();
    let one = Scenario {
        name: "one".into(),
        text: "c1 connect\nc1.1 open\nc1.1 queue.declare queue={p}q exclusive\n\
               c1.1 confirm.select\nc1.1 basic.publish routing-key={p}q body=x\n\
               c1.1 confirms\nc1.1 basic.get queue={p}q no-ack\n"
            .into(),
    };
    let two = Scenario {
        name: "two".into(),
        text: "c1 connect\nc1.1 open\nc1.1 queue.declare queue={p}q exclusive\n\
               c1.1 basic.get queue={p}q no-ack\n"
            .into(),
    };
    let t1 = run_scenario(&one, &a, None, "x").await.unwrap();
    let t1b = run_scenario(&one, &a, None, "x").await.unwrap();
    let t2 = run_scenario(&two, &a, None, "x").await.unwrap();
    assert_eq!(compare("one", &t1, &t1b, "A", "B"), Vec::<String>::new());
    let d = compare("one-vs-two", &t1, &t2, "A", "B");
    eprintln!("{}", d.join("\n"));
    assert!(
        d.iter()
            .any(|m| m.contains("basic.get-ok") && m.contains("basic.get-empty")),
        "{d:?}"
    );
}

#[test]
fn normaliser_numbers_server_names() {
    let mut n = Normaliser::new("dtab-");
    assert_eq!(
        n.apply("q=\"amq.gen-AbC_1\" t=\"amq.ctag-x-Y\" dtab-q amq.gen-AbC_1 amq.gen-Z"),
        "q=\"amq.gen-#1\" t=\"amq.ctag-#1\" {p}q amq.gen-#1 amq.gen-#2"
    );
    assert_eq!(n.apply("x-death time=T:1700000000"), "x-death time=T:*");
}
