//! Command-line options (PerfTest's letters and meanings), the broker URI,
//! queue-pattern expansion and `--queue-args` parsing.

use amqp_codec::types::{FieldTable, FieldValue, LongString, ShortString};
use clap::{ArgAction, Args, Parser, Subcommand};
use std::fmt;

/// `amqp-perftest`: a RabbitMQ-PerfTest-style load generator.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "amqp-perftest",
    version,
    about = "A RabbitMQ-PerfTest-style AMQP 0-9-1 load generator built on amqp-codec",
    long_about = "A RabbitMQ-PerfTest-style AMQP 0-9-1 load generator built on amqp-codec.\n\n\
        Runs producers (-x) and consumers (-y), each on its own connection, on a few threads, \
        and prints a progress line per interval and a summary at the end. Exit status: 0 on \
        success, 1 when the broker closed a channel or the connection with an error (or it \
        could not be reached), 2 when a count-limited run (-C/-D) lost messages or confirms.\n\n\
        `amqp-perftest sink --listen 127.0.0.1:5711` runs a broker stand-in that discards \
        publishes and floods consumers, to measure this tool's own ceiling.",
    disable_help_flag = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A subcommand (none: run a load test).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The load test's options.
    #[command(flatten)]
    pub run: RunArgs,
    /// Print help (`-h` is the URI, as in PerfTest).
    #[arg(long = "help", short = '?', action = ArgAction::Help, global = true)]
    pub help: Option<bool>,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run a broker stand-in built on amqp-codec's server role: accepts any
    /// credentials, answers declares/binds/qos/consume, discards publishes
    /// (confirming them) and floods consumers with deliveries as fast as
    /// their prefetch allows.
    Sink(SinkArgs),
    /// Open many connections that complete the AMQP handshake with
    /// heartbeats and then idle (answering heartbeats) until --time
    /// elapses or SIGINT/SIGTERM; prints `connected N` on stdout once all
    /// are open. For measuring a broker's memory per idle connection.
    Idle(IdleArgs),
}

/// Options of `amqp-perftest idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Broker URI, as for a load test.
    #[arg(
        short = 'h',
        long = "uri",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,
    /// Connections to open.
    #[arg(short = 'n', long = "connections", default_value_t = 1000)]
    pub connections: u32,
    /// Heartbeat interval asked for, in seconds (the broker may lower it;
    /// 0 turns heartbeats off).
    #[arg(long = "heartbeat", default_value_t = 60)]
    pub heartbeat: u16,
    /// Connection handshakes in flight at once.
    #[arg(long = "concurrency", default_value_t = 50)]
    pub concurrency: u32,
    /// Seconds to hold the connections once all are open (0: until
    /// SIGINT or SIGTERM).
    #[arg(short = 'z', long = "time", default_value_t = 0)]
    pub time: u64,
    /// Worker threads.
    #[arg(long = "threads", default_value_t = 1)]
    pub threads: usize,
}

impl IdleArgs {
    /// Checks the values clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        parse_uri(&self.uri).map(|_| ())
    }
}

/// Options of `amqp-perftest sink`.
#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5711")]
    pub listen: String,
    /// Body size of the messages delivered to consumers, in bytes.
    #[arg(long, default_value_t = 12)]
    pub body_size: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Route publishes to the consumers of the queues they are bound to
    /// (in memory, unbounded: limit producers with -c or -r) instead of
    /// flooding consumers and discarding publishes.
    #[arg(long)]
    pub loopback: bool,
}

/// Options of a load test run (PerfTest's letters and meanings).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Broker URI: amqp://user:pass@host:port/vhost (vhost percent-encoded,
    /// `%2f` is "/"). Default amqp://guest:guest@127.0.0.1:5672/%2f.
    #[arg(
        short = 'h',
        long = "uri",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub uri: String,
    /// Number of producers (one connection and channel each).
    #[arg(short = 'x', long = "producers", default_value_t = 1)]
    pub producers: u32,
    /// Number of consumers (one connection and channel each).
    #[arg(short = 'y', long = "consumers", default_value_t = 1)]
    pub consumers: u32,
    /// Message body size in bytes. The first 12 bytes carry a run id and
    /// the send time (consumer latency is measured only when the body holds
    /// them).
    #[arg(short = 's', long = "size", default_value_t = 12)]
    pub size: usize,
    /// Run duration in seconds (0: until the counts are reached or Ctrl-C).
    #[arg(short = 'z', long = "time", default_value_t = 0)]
    pub time: u64,
    /// Publisher confirms, with at most N messages outstanding per producer.
    #[arg(short = 'c', long = "confirm")]
    pub confirm: Option<u32>,
    /// Consumers use automatic acknowledgement (no-ack).
    #[arg(short = 'a', long = "autoack")]
    pub autoack: bool,
    /// Consumer prefetch count (basic.qos, per consumer; 0 = unlimited).
    #[arg(short = 'q', long = "qos", default_value_t = 0)]
    pub qos: u16,
    /// Channel (global) prefetch count (basic.qos with global=true; 0 = none).
    #[arg(short = 'Q', long = "global-qos", default_value_t = 0)]
    pub global_qos: u16,
    /// Acknowledge every N messages with multiple=true (0 or 1: each one).
    #[arg(short = 'A', long = "multi-ack-every", default_value_t = 0)]
    pub multi_ack_every: u32,
    /// Exchange type.
    #[arg(short = 't', long = "type", default_value = "direct")]
    pub exchange_type: String,
    /// Exchange name ("" is the default exchange; amq.* are not declared).
    #[arg(short = 'e', long = "exchange", default_value = "direct")]
    pub exchange: String,
    /// Routing key (default: a random key; with --queue-pattern the queue
    /// name; with -e "" the queue name).
    #[arg(short = 'k', long = "routing-key")]
    pub routing_key: Option<String>,
    /// Queue name (default: a server-named exclusive queue per consumer).
    #[arg(short = 'u', long = "queue")]
    pub queue: Option<String>,
    /// Queue name pattern with %d (or %0Nd), expanded from
    /// --queue-pattern-from to --queue-pattern-to; producers and consumers
    /// are spread over the queues round-robin.
    #[arg(long = "queue-pattern", requires_all = ["queue_pattern_from", "queue_pattern_to"], conflicts_with = "queue")]
    pub queue_pattern: Option<String>,
    /// First number of --queue-pattern.
    #[arg(long = "queue-pattern-from", requires = "queue_pattern")]
    pub queue_pattern_from: Option<u32>,
    /// Last number (inclusive) of --queue-pattern.
    #[arg(long = "queue-pattern-to", requires = "queue_pattern")]
    pub queue_pattern_to: Option<u32>,
    /// Bind each named queue (-u or --queue-pattern) this many times to the
    /// exchange, with keys from --binding-key-pattern; producers then cycle
    /// through routing keys that match those bindings, one per message, so
    /// each message reaches one queue and all queues get the same share.
    #[arg(
        long = "bindings-per-queue",
        default_value_t = 1,
        conflicts_with = "routing_key"
    )]
    pub bindings_per_queue: u32,
    /// Binding key pattern with %d (or %0Nd), numbered from 0 over all
    /// bindings; binding `b` goes to queue `b mod queues`. For a topic
    /// exchange the routing keys published are the binding keys with each
    /// `*` or `#` word replaced by `x` (e.g. `stock.%d.*` binds
    /// `stock.7.*` and publishes `stock.7.x`). Default `perftest.%d` when
    /// --bindings-per-queue is above 1.
    #[arg(long = "binding-key-pattern", conflicts_with = "routing_key")]
    pub binding_key_pattern: Option<String>,
    /// Message and queue flags: `persistent` (delivery mode 2, durable
    /// queues) or `mandatory` (returned when unroutable). Repeatable.
    #[arg(short = 'f', long = "flag", value_parser = ["persistent", "mandatory"])]
    pub flags: Vec<String>,
    /// Producer rate limit, msg/s per producer (unlimited if absent).
    /// Messages are spread evenly, as PerfTest does: each is sent at its
    /// own time (a microsecond timer on Linux), not in bursts per
    /// millisecond.
    #[arg(short = 'r', long = "rate")]
    pub rate: Option<f64>,
    /// Consumer rate limit, msg/s per consumer (unlimited if absent).
    #[arg(short = 'R', long = "consumer-rate")]
    pub consumer_rate: Option<f64>,
    /// Messages each producer publishes, then stops (0 = unlimited).
    #[arg(short = 'C', long = "pmessages", default_value_t = 0)]
    pub pmessages: u64,
    /// Messages each consumer receives, then stops (0 = unlimited).
    #[arg(short = 'D', long = "cmessages", default_value_t = 0)]
    pub cmessages: u64,
    /// Queue arguments as key=value,... (integers and true/false are typed,
    /// e.g. x-max-length=1000,x-queue-type=quorum).
    #[arg(long = "queue-args", value_parser = parse_queue_args)]
    pub queue_args: Option<QueueArgs>,
    /// Whether declared named queues are auto-delete.
    #[arg(long = "auto-delete", default_value_t = true, action = ArgAction::Set)]
    pub auto_delete: bool,
    /// Reporting interval in seconds.
    #[arg(short = 'i', long = "interval", default_value_t = 1.0)]
    pub interval: f64,
    /// Test id shown on every line (default test-HHMMSS-mmm).
    #[arg(long = "id")]
    pub id: Option<String>,
    /// Print the summary as one JSON object on stdout (progress lines go to
    /// stderr).
    #[arg(long = "json")]
    pub json: bool,
    /// Report this process's CPU seconds (from /proc/PID/stat) per message.
    #[arg(long = "broker-pid")]
    pub broker_pid: Option<u32>,
    /// Worker threads driving all connections (default: CPUs, at most 4).
    #[arg(long = "threads")]
    pub threads: Option<usize>,
    /// Print no progress lines, only the summary.
    #[arg(long = "quiet")]
    pub quiet: bool,
}

impl RunArgs {
    /// The options with their defaults, as if given no argument.
    pub fn defaults() -> RunArgs {
        RunArgs::parse_from(["amqp-perftest"])
    }

    /// Parses run options from an argument list (the first is the program
    /// name).
    pub fn parse_from<I, T>(args: I) -> RunArgs
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args).unwrap_or_else(|e| e.exit())
    }

    /// As [`parse_from`](Self::parse_from), returning the error.
    pub fn try_parse_from<I, T>(args: I) -> Result<RunArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        Ok(cli.run)
    }

    /// Whether `-f persistent` was given.
    pub fn persistent(&self) -> bool {
        self.flags.iter().any(|f| f == "persistent")
    }

    /// Whether `-f mandatory` was given.
    pub fn mandatory(&self) -> bool {
        self.flags.iter().any(|f| f == "mandatory")
    }

    /// The named queues: the --queue-pattern expansion, -u, or none
    /// (server-named queues, one per consumer).
    pub fn queue_names(&self) -> Result<Vec<String>, String> {
        match (&self.queue_pattern, &self.queue) {
            (Some(p), _) => expand_queue_pattern(
                p,
                self.queue_pattern_from.unwrap_or(0),
                self.queue_pattern_to.unwrap_or(0),
            ),
            (None, Some(q)) => Ok(vec![q.clone()]),
            (None, None) => Ok(vec![]),
        }
    }

    /// Whether named queues get bindings from --binding-key-pattern and
    /// producers cycle through routing keys matching them.
    pub fn cycles_bindings(&self) -> bool {
        self.bindings_per_queue > 1 || self.binding_key_pattern.is_some()
    }

    /// The first `total` binding keys of --binding-key-pattern (binding
    /// `b` is numbered `b`).
    pub fn binding_keys(&self, total: u32) -> Result<Vec<String>, String> {
        let pattern = self.binding_key_pattern.as_deref().unwrap_or("perftest.%d");
        if !has_number(pattern) {
            return Err(format!(
                "--binding-key-pattern {pattern:?} has no %d (e.g. stock.%d.*)"
            ));
        }
        (0..total)
            .map(|b| format_pattern("--binding-key-pattern", pattern, b))
            .collect()
    }

    /// The routing key a producer publishes to reach a binding: for a
    /// topic exchange the key with every `*` or `#` word replaced by `x`,
    /// otherwise the key itself.
    pub fn routing_key_for(&self, binding_key: &str) -> String {
        if self.exchange_type != "topic" {
            return binding_key.to_owned();
        }
        binding_key
            .split('.')
            .map(|w| if w == "*" || w == "#" { "x" } else { w })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// Checks combinations clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval <= 0.0 || !self.interval.is_finite() {
            return Err("-i/--interval must be a positive number of seconds".into());
        }
        if self.rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
            return Err(
                "-r/--rate must be a positive number of msg/s (omit it for no limit)".into(),
            );
        }
        if self
            .consumer_rate
            .is_some_and(|r| r <= 0.0 || !r.is_finite())
        {
            return Err(
                "-R/--consumer-rate must be a positive number of msg/s (omit it for no limit)"
                    .into(),
            );
        }
        if self.confirm == Some(0) {
            return Err("-c/--confirm needs a window of at least 1 outstanding message".into());
        }
        if self.producers == 0 && self.consumers == 0 {
            return Err("nothing to do: give at least one producer (-x) or consumer (-y)".into());
        }
        if self.threads == Some(0) {
            return Err("--threads must be at least 1".into());
        }
        let queues = self.queue_names()?;
        if self.bindings_per_queue == 0 {
            return Err("--bindings-per-queue must be at least 1".into());
        }
        if self.cycles_bindings() {
            if queues.is_empty() {
                return Err("--bindings-per-queue / --binding-key-pattern bind named queues: give -u or --queue-pattern".into());
            }
            if self.exchange.is_empty() {
                return Err("--bindings-per-queue / --binding-key-pattern need an exchange (-e), not the default one".into());
            }
            let total = u64::from(self.bindings_per_queue) * queues.len() as u64;
            if total > 1_000_000 {
                return Err(format!(
                    "{total} bindings ({} queues x --bindings-per-queue {}): at most 1000000",
                    queues.len(),
                    self.bindings_per_queue
                ));
            }
            self.binding_keys(total as u32)?;
        }
        if self.exchange.is_empty() && queues.is_empty() && self.routing_key.is_none() {
            return Err("with the default exchange (-e \"\") name the queue (-u or --queue-pattern) or the routing key (-k)".into());
        }
        parse_uri(&self.uri)?;
        Ok(())
    }
}

/// Expands a queue pattern: each `%d` (or `%0Nd`, zero-padded to N digits)
/// becomes the number, for every number from `from` to `to` inclusive; `%%`
/// is a `%`.
pub fn expand_queue_pattern(pattern: &str, from: u32, to: u32) -> Result<Vec<String>, String> {
    if from > to {
        return Err(format!(
            "--queue-pattern-from ({from}) is greater than --queue-pattern-to ({to})"
        ));
    }
    if to - from >= 100_000 {
        return Err("--queue-pattern would expand to more than 100000 queues".into());
    }
    if !has_number(pattern) {
        return Err(format!(
            "--queue-pattern {pattern:?} has no %d (e.g. perf-test-%d)"
        ));
    }
    (from..=to)
        .map(|n| format_pattern("--queue-pattern", pattern, n))
        .collect()
}

fn has_number(pattern: &str) -> bool {
    pattern.contains("%d") || pattern.contains("%0")
}

fn format_pattern(option: &str, pattern: &str, n: u32) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        loop {
            match chars.next() {
                Some('d') => break,
                Some('%') if spec.is_empty() => {
                    out.push('%');
                    spec.push('%');
                    break;
                }
                Some(d) if d.is_ascii_digit() => spec.push(d),
                _ => {
                    return Err(format!(
                        "{option} {pattern:?}: only %d, %0Nd and %% are supported"
                    ));
                }
            }
        }
        if spec == "%" {
            continue;
        }
        if spec.is_empty() {
            out.push_str(&n.to_string());
        } else {
            let width: usize = spec
                .trim_start_matches('0')
                .parse()
                .map_err(|_| format!("{option} {pattern:?}: bad width {spec:?}"))?;
            if spec.starts_with('0') {
                out.push_str(&format!("{n:0width$}"));
            } else {
                out.push_str(&format!("{n:width$}"));
            }
        }
    }
    if out.len() > 255 {
        return Err(format!("{option}: {out:?} is longer than 255 bytes"));
    }
    Ok(out)
}

/// Parsed `--queue-args`: key/value pairs in order.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueArgs(pub Vec<(String, QueueArgValue)>);

/// One `--queue-args` value.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueArgValue {
    /// An integer (sent as a signed 64-bit `l`).
    Int(i64),
    /// `true` or `false`.
    Bool(bool),
    /// Anything else (a long string).
    Str(String),
}

impl QueueArgs {
    /// The arguments table for `queue.declare`.
    pub fn to_table(&self) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in &self.0 {
            let value = match v {
                QueueArgValue::Int(i) => FieldValue::I64(*i),
                QueueArgValue::Bool(b) => FieldValue::Bool(*b),
                QueueArgValue::Str(s) => {
                    FieldValue::LongString(LongString::copy_from(s.as_bytes()))
                }
            };
            // Keys were checked to fit a short string when parsed.
            if let Ok(key) = ShortString::try_from(k.as_str()) {
                t.push(key, value);
            }
        }
        t
    }
}

/// Parses `key=value,key=value` (see [`QueueArgs`]).
pub fn parse_queue_args(s: &str) -> Result<QueueArgs, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("queue argument {part:?} is not key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            return Err(format!("queue argument {part:?} has an empty key"));
        }
        if k.len() > 255 {
            return Err(format!("queue argument key {k:?} is longer than 255 bytes"));
        }
        let value = if let Ok(i) = v.parse::<i64>() {
            QueueArgValue::Int(i)
        } else if v == "true" || v == "false" {
            QueueArgValue::Bool(v == "true")
        } else {
            QueueArgValue::Str(v.to_owned())
        };
        out.push((k.to_owned(), value));
    }
    Ok(QueueArgs(out))
}

/// An `amqp://user:pass@host:port/vhost` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Virtual host (decoded).
    pub vhost: String,
}

impl fmt::Display for Uri {
    /// The URI without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "amqp://{}@{}:{}/{}",
            self.user,
            self.host,
            self.port,
            self.vhost.replace('%', "%25").replace('/', "%2f")
        )
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?} (write %2f for /)"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// Parses an `amqp://` URI; user, password and vhost are percent-decoded;
/// no path means the vhost "/".
pub fn parse_uri(uri: &str) -> Result<Uri, String> {
    let rest = uri.strip_prefix("amqp://").ok_or_else(|| {
        format!("{uri:?}: give an amqp:// URI such as amqp://guest:guest@127.0.0.1:5672/%2f")
    })?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => {
            let (a, b) = u.split_once(':').unwrap_or((u, ""));
            (percent_decode(a)?, percent_decode(b)?)
        }
        None => ("guest".into(), "guest".into()),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse()
                .map_err(|_| format!("{uri:?}: bad port {p:?} (give 1..65535)"))?,
        ),
        None => (hostport, 5672),
    };
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    let vhost = if !rest.contains('/') {
        "/".to_owned()
    } else {
        percent_decode(path)?
    };
    if vhost.len() > 255 {
        return Err(format!("{uri:?}: the vhost is longer than 255 bytes"));
    }
    Ok(Uri {
        user,
        password,
        host: host.to_owned(),
        port,
        vhost,
    })
}
