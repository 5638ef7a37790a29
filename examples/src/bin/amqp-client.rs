//! amqp-client: declare, bind, publish to and consume from an AMQP 0-9-1
//! broker, built on amqp-codec's Sans-IO client role driven by tokio.
//!
//! ```text
//! amqp-client [--uri URI] [--heartbeat SECS] [--timeout SECS] COMMAND
//!   declare --queue Q [--durable] [--auto-delete] [--argument SPEC]...
//!   declare --exchange X --type T [--durable] [--auto-delete] [--internal] [--argument SPEC]...
//!   bind    --exchange X (--queue Q | --to-exchange D) [--routing-key K] [--argument SPEC]...
//!   unbind  --exchange X (--queue Q | --to-exchange D) [--routing-key K] [--argument SPEC]...
//!   publish --exchange X --routing-key K [--confirm] [--persistent]
//!           [--content-type T] [--header SPEC]... [--count N] (BODY | --body-file PATH)
//!   consume --queue Q [--count N] [--prefetch N] [--no-ack] [--verbose | --format json]
//!   get     --queue Q [--count N] [--ack] [--verbose | --format json]
//!   delete  (--queue Q | --exchange X)
//!  over the management HTTP API (--api URL):
//!   list    (queues | exchanges | bindings | connections | channels | consumers |
//!            vhosts | users | policies) [--vhost V] [--format table|json] [--columns A,B]
//!   purge   --queue Q [--vhost V]
//!   export  [FILE | -] [--vhost V]
//!   import  (FILE | -) [--vhost V]
//! ```
//!
//! The default URI is `amqp://guest:guest@127.0.0.1:5672/%2f`. A SPEC is
//! `key=value` (a long string) or `key:T=value` typed by a RabbitMQ type
//! letter (`retries:I=3`). `consume` prints each body on its own line, or
//! with `--verbose` the exchange, routing key, redelivered flag,
//! properties and typed headers before it, or with `--format json` one
//! JSON object per line; it exits after `--count` messages (acknowledged
//! unless `--no-ack`). `get` takes up to `--count` messages with
//! basic.get and, like rabbitmqadmin's default, puts them back (requeued,
//! flagged redelivered) unless `--ack`. `publish` waits for the broker's word on the
//! channel before it says "published", so a refusal (such as 404 for a
//! missing exchange) is reported even without `--confirm`. Errors go to
//! stderr as `amqp-client: ...` with exit status 1; a broker refusal names
//! its reply code.
//!
//! `list`, `purge`, `export` and `import` use RabbitMQ's management HTTP
//! API (default `http://127.0.0.1:15672`) with basic authentication as
//! `--user`/`--password`, or else the user and password of `--uri`. `list`
//! prints an aligned table of rabbitmqadmin's default columns, or with
//! `--format json` the API's objects as a JSON array (cut down to
//! `--columns` when given). An API error names the HTTP status and
//! RabbitMQ's `error` and `reason`, with advice.

use amqp_codec::types::method::{
    BasicConsume, BasicGet, BasicPublish, BasicQos, ConfirmSelect, ExchangeBind, ExchangeDeclare,
    ExchangeDelete, ExchangeUnbind, QueueBind, QueueDeclare, QueueDelete, QueueUnbind,
};
use amqp_codec::types::{BasicProperties, FieldTable, Method, ReplyCode, ShortString};
use amqp_codec::{ClientConfig, Connection, Credentials, Event, Message};
use amqp_examples::api::{self, Api};
use amqp_examples::dump::{Arg, property_values, quote};
use amqp_examples::fields::{TYPE_LETTERS_HELP, parse_header, table_to_json, typed};
use bytes::Bytes;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USAGE: &str = "usage: amqp-client [--uri URI] [--heartbeat SECS] [--timeout SECS] COMMAND
  declare --queue Q [--durable] [--auto-delete] [--argument SPEC]...
  declare --exchange X --type T [--durable] [--auto-delete] [--internal] [--argument SPEC]...
  bind    --exchange X (--queue Q | --to-exchange D) [--routing-key K] [--argument SPEC]...
  unbind  --exchange X (--queue Q | --to-exchange D) [--routing-key K] [--argument SPEC]...
  publish --exchange X --routing-key K [--confirm] [--persistent] [--content-type T]
          [--header SPEC]... [--count N] (BODY | --body-file PATH)
  consume --queue Q [--count N] [--prefetch N] [--no-ack] [--verbose | --format json]
  get     --queue Q [--count N] [--ack] [--verbose | --format json]
  delete  (--queue Q | --exchange X)
 over the management HTTP API (--api URL):
  list    (queues | exchanges | bindings | connections | channels | consumers |
           vhosts | users | policies) [--vhost V] [--format table|json] [--columns A,B]
  purge   --queue Q [--vhost V]
  export  [FILE | -] [--vhost V]
  import  (FILE | -) [--vhost V]";

/// `--help`: the usage and what the options mean.
fn help() -> String {
    let columns: String = api::LISTINGS
        .iter()
        .map(|l| format!("  {:<12} {}\n", l.name, l.columns.join(" ")))
        .collect();
    format!(
        "{USAGE}

Declares, binds, publishes to and consumes from an AMQP 0-9-1 broker; lists,
purges, exports and imports through its management HTTP API.

OPTIONS:
  --uri URI          amqp://USER:PASS@HOST:PORT/VHOST (default
                     amqp://guest:guest@127.0.0.1:5672/%2f)
  --heartbeat SECS   heartbeat interval to ask for
  --timeout SECS     give up waiting for the broker after SECS (default 10)
  --queue Q          the queue to declare, delete, bind or consume from
  --exchange X       the exchange to declare, delete or publish to; for
                     bind/unbind the source exchange
  --type T           declare: exchange type (direct, fanout, topic, headers, ...)
  --durable          declare: survive a broker restart
  --auto-delete      declare: delete when the last consumer or binding goes
  --internal         declare: an exchange clients cannot publish to
  --to-exchange D    bind/unbind: the destination exchange (exchange-to-exchange)
  --routing-key K    publish: the routing key; bind/unbind: the binding key
                     (default \"\")
  --argument SPEC    a declare or binding argument (x-match=any, x-max-length:l=10)
  --header SPEC      publish: a message header (repeat for more)
  --content-type T   publish: the content-type property
  --persistent       publish: delivery mode 2
  --confirm          publish: use publisher confirms and mandatory; unroutable or
                     nacked messages make the exit status 1
  --count N          publish: send N copies; consume: stop after N messages
                     (default 1)
  --body-file PATH   publish: the body is the file's contents
  --prefetch N       consume: unacknowledged messages in flight (default
                     min(--count, 100))
  --no-ack           consume: automatic acknowledgement
  --verbose, -v      consume: print exchange, routing key, redelivered,
                     properties and typed headers before each body
  --format json      consume: one JSON object per message (typed headers)
  --format body      consume: only the bodies (the default)
  -h, --help         this text

MANAGEMENT API OPTIONS (list, purge, export, import):
  --api URL          the management API (default http://127.0.0.1:15672;
                     plain http only)
  --user U           the API user (default: the user in --uri, guest)
  --password P       the API password (default: the password in --uri, guest)
  --vhost V          list/export/import: only this vhost (default: all);
                     purge: the queue's vhost (default: the vhost in --uri)
  --format table     list: an aligned table with a header line (the default)
  --format json      list: the API's objects as a JSON array
  --columns A,B      list: these columns (keys of the API's objects; a.b is
                     key b of the object under a, e.g. queue.name) instead
                     of the defaults; with --format json, only these keys

list's default columns:
{columns}
export writes GET /api/definitions to FILE (pretty JSON) or stdout (- or no
FILE); import posts FILE's JSON to POST /api/definitions. purge empties a
queue (DELETE /api/queues/VHOST/Q/contents).

A SPEC is key=value (a long string) or key:T=value with a type letter T:
{TYPE_LETTERS_HELP}

publish says \"published N\" only once the broker has answered on the channel,
so a refusal (404: no such exchange, 403: access refused) is reported with its
reply code and exit status 1, with or without --confirm.

EXIT STATUS: 0 done; 1 usage error, connection failure or broker refusal
(the message on stderr says which); for the API the message names the HTTP
status and RabbitMQ's error and reason, with advice (401: the user or password;
404: no such vhost or object; no answer: is the management API enabled, is
--api right).
"
    )
}

type Error = String;

/// An `amqp://user:pass@host:port/vhost` URI.
#[derive(Debug, PartialEq, Eq)]
struct Uri {
    user: String,
    password: String,
    host: String,
    port: u16,
    vhost: String,
}

fn percent_decode(s: &str) -> Result<String, Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

fn parse_uri(uri: &str) -> Result<Uri, Error> {
    let rest = uri
        .strip_prefix("amqp://")
        .ok_or_else(|| format!("{uri:?}: only amqp:// URIs are supported"))?;
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
            p.parse().map_err(|_| format!("{uri:?}: bad port {p:?}"))?,
        ),
        None => (hostport, 5672),
    };
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    // An absent path means the default vhost "/"; "/%2f" spells it out.
    let vhost = if path.is_empty() && !rest.contains('/') {
        "/".to_owned()
    } else {
        percent_decode(path)?
    };
    Ok(Uri {
        user,
        password,
        host: host.to_owned(),
        port,
        vhost,
    })
}

fn short(s: &str) -> Result<ShortString, Error> {
    ShortString::try_from(s).map_err(|_| format!("{s:?} is longer than 255 bytes"))
}

/// The client role over one TCP connection.
struct Client {
    conn: Connection,
    tcp: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Client {
    async fn connect(uri: &Uri, heartbeat: Option<u16>, timeout: Duration) -> Result<Self, Error> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect((uri.host.as_str(), uri.port)))
            .await
            .map_err(|_| format!("connecting to {}:{} timed out", uri.host, uri.port))?
            .map_err(|e| format!("cannot connect to {}:{}: {e}", uri.host, uri.port))?;
        let _ = tcp.set_nodelay(true);
        let cfg = ClientConfig {
            credentials: Credentials::plain(&uri.user, &uri.password),
            virtual_host: short(&uri.vhost)?,
            heartbeat,
            ..ClientConfig::default()
        };
        let mut c = Client {
            conn: Connection::client(cfg, Instant::now()),
            tcp,
            buf: vec![0; 64 * 1024],
            timeout,
        };
        c.run(|e| matches!(e, Event::Connected { .. }).then_some(()))
            .await?;
        Ok(c)
    }

    /// Runs I/O and timers until `want` picks an event (errors on a
    /// protocol error, a channel or connection closed by the broker, or the
    /// timeout).
    async fn run<T>(&mut self, mut want: impl FnMut(&Event) -> Option<T>) -> Result<T, Error> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            self.flush().await?;
            while let Some(e) = self.conn.poll_event() {
                match &e {
                    Event::ProtocolError(p) => return Err(format!("protocol error: {p}")),
                    Event::ChannelClosed { reason, .. }
                        if reason.code != ReplyCode::REPLY_SUCCESS =>
                    {
                        return Err(format!("channel closed by the broker: {reason}"));
                    }
                    Event::Closed { cause } => {
                        if let Some(t) = want(&e) {
                            return Ok(t);
                        }
                        return Err(format!("connection ended: {cause}"));
                    }
                    _ => {}
                }
                if let Some(t) = want(&e) {
                    return Ok(t);
                }
            }
            let wake = self
                .conn
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or(deadline)
                .min(deadline);
            tokio::select! {
                r = self.tcp.read(&mut self.buf) => match r {
                    Ok(0) => self.conn.handle_eof(),
                    Ok(n) => self.conn.handle_input(Bytes::copy_from_slice(&self.buf[..n])),
                    Err(e) => return Err(format!("read: {e}")),
                },
                _ = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!("timed out after {:?}", self.timeout));
                    }
                    self.conn.handle_timeout(Instant::now());
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), Error> {
        while let Some(b) = self.conn.poll_transmit() {
            self.tcp
                .write_all(&b)
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        Ok(())
    }

    async fn channel(&mut self) -> Result<u16, Error> {
        let ch = self.conn.open_channel().map_err(|e| e.to_string())?;
        self.run(|e| matches!(e, Event::ChannelOpened { channel } if *channel == ch).then_some(()))
            .await?;
        Ok(ch)
    }

    /// Sends a synchronous method and waits for its reply.
    async fn call(&mut self, ch: u16, m: impl Into<Method>) -> Result<Method, Error> {
        self.conn.send_method(ch, m).map_err(|e| e.to_string())?;
        self.run(|e| match e {
            Event::Method { channel, method } if *channel == ch && method.kind().is_reply() => {
                Some(method.clone())
            }
            _ => None,
        })
        .await
    }

    /// Ends the connection with connection.close whatever `result` is: a
    /// failed command still says goodbye (briefly: after an error the
    /// broker may be gone), and `result`'s error wins over the close's.
    async fn finish(mut self, result: Result<(), Error>) -> Result<(), Error> {
        if result.is_err() {
            self.timeout = self.timeout.min(Duration::from_secs(1));
            let _ = self.close().await;
            return result;
        }
        self.close().await
    }

    async fn close(&mut self) -> Result<(), Error> {
        self.conn
            .close(ReplyCode::REPLY_SUCCESS, "bye")
            .map_err(|e| e.to_string())?;
        self.run(|e| matches!(e, Event::Closed { .. }).then_some(()))
            .await?;
        self.flush().await?;
        let _ = self.tcp.shutdown().await;
        Ok(())
    }
}

/// How `consume` prints a message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// The body only, one per line.
    #[default]
    Body,
    /// Delivery fields, properties and typed headers, then the body.
    Verbose,
    /// One JSON object per line.
    Json,
}

/// Parsed command line.
#[derive(Debug, Default)]
struct Args {
    uri: Option<String>,
    heartbeat: Option<u16>,
    timeout: Option<u64>,
    command: String,
    queue: Option<String>,
    exchange: Option<String>,
    to_exchange: Option<String>,
    kind: Option<String>,
    routing_key: Option<String>,
    confirm: bool,
    persistent: bool,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    no_ack: bool,
    /// get: acknowledge (take) the messages instead of requeueing them.
    ack: bool,
    format: Format,
    content_type: Option<String>,
    headers: FieldTable,
    arguments: FieldTable,
    count: Option<u64>,
    prefetch: Option<u16>,
    /// publish: the body; list: what to list; export/import: the file.
    body: Option<String>,
    body_file: Option<String>,
    api: Option<String>,
    user: Option<String>,
    password: Option<String>,
    vhost: Option<String>,
    columns: Option<Vec<String>>,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, Error> {
    let mut a = Args::default();
    let mut it = args.into_iter();
    fn value(it: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, Error> {
        it.next().ok_or_else(|| format!("{flag} needs a value"))
    }
    fn num<T: std::str::FromStr>(s: String, flag: &str) -> Result<T, Error> {
        s.parse().map_err(|_| format!("{flag}: bad number {s:?}"))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--uri" => a.uri = Some(value(&mut it, &arg)?),
            "--heartbeat" => a.heartbeat = Some(num(value(&mut it, &arg)?, &arg)?),
            "--timeout" => a.timeout = Some(num(value(&mut it, &arg)?, &arg)?),
            "--queue" => a.queue = Some(value(&mut it, &arg)?),
            "--exchange" => a.exchange = Some(value(&mut it, &arg)?),
            "--to-exchange" => a.to_exchange = Some(value(&mut it, &arg)?),
            "--type" => a.kind = Some(value(&mut it, &arg)?),
            "--routing-key" => a.routing_key = Some(value(&mut it, &arg)?),
            "--body-file" => a.body_file = Some(value(&mut it, &arg)?),
            "--content-type" => a.content_type = Some(value(&mut it, &arg)?),
            "--api" => a.api = Some(value(&mut it, &arg)?),
            "--user" => a.user = Some(value(&mut it, &arg)?),
            "--password" => a.password = Some(value(&mut it, &arg)?),
            "--vhost" => a.vhost = Some(value(&mut it, &arg)?),
            "--columns" => {
                let v = value(&mut it, &arg)?;
                let cols: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect();
                if cols.is_empty() {
                    return Err("--columns needs at least one column name".into());
                }
                a.columns = Some(cols);
            }
            "--header" => {
                let (k, v) = parse_header(&value(&mut it, &arg)?)?;
                a.headers.push(k, v);
            }
            "--argument" => {
                let (k, v) = parse_header(&value(&mut it, &arg)?)
                    .map_err(|e| e.replacen("bad header", "bad argument", 1))?;
                a.arguments.push(k, v);
            }
            "--count" => a.count = Some(num(value(&mut it, &arg)?, &arg)?),
            "--prefetch" => a.prefetch = Some(num(value(&mut it, &arg)?, &arg)?),
            "--format" => {
                a.format = match value(&mut it, &arg)?.as_str() {
                    "json" => Format::Json,
                    "body" | "table" => Format::Body,
                    "verbose" => Format::Verbose,
                    other => {
                        return Err(format!(
                            "--format must be table or json (list), or body, verbose or json (consume), not {other:?}"
                        ));
                    }
                }
            }
            "-v" | "--verbose" => a.format = Format::Verbose,
            "--confirm" => a.confirm = true,
            "--persistent" => a.persistent = true,
            "--durable" => a.durable = true,
            "--auto-delete" => a.auto_delete = true,
            "--internal" => a.internal = true,
            "--no-ack" => a.no_ack = true,
            "--ack" => a.ack = true,
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            _ if a.command.is_empty() => a.command = arg,
            _ if a.body.is_none() => a.body = Some(arg),
            s => return Err(format!("unexpected argument {s:?}\n{USAGE}")),
        }
    }
    if a.command.is_empty() {
        return Err(USAGE.into());
    }
    Ok(a)
}

/// What a command works on: a queue or an exchange.
enum Target {
    Queue(String),
    Exchange(String),
}

/// The `--queue` or `--exchange` of `declare` and `delete` (exactly one).
fn target(a: &Args) -> Result<Target, Error> {
    match (&a.queue, &a.exchange) {
        (Some(q), None) => Ok(Target::Queue(q.clone())),
        (None, Some(x)) => Ok(Target::Exchange(x.clone())),
        (Some(_), Some(_)) => Err(format!(
            "{} takes either --queue or --exchange, not both\n{USAGE}",
            a.command
        )),
        (None, None) => Err(format!(
            "{} needs --queue or --exchange\n{USAGE}",
            a.command
        )),
    }
}

/// What to do about a common broker refusal (publish refusals carry
/// their own advice, see [`publish_error`]).
fn advice(e: &str) -> Option<&'static str> {
    if e.contains("404 NOT_FOUND") && e.contains("no queue") {
        Some("declare the queue first: amqp-client declare --queue NAME")
    } else if e.contains("403 ACCESS_REFUSED - Login was refused") {
        Some("check the user name and password in --uri amqp://USER:PASS@HOST:PORT/VHOST")
    } else if e.contains("530 NOT_ALLOWED - vhost") {
        Some("check the virtual host at the end of --uri (%2f is the default vhost \"/\")")
    } else if e.contains("403 ACCESS_REFUSED") {
        Some("the user lacks the permission; grant it with rabbitmqctl set_permissions")
    } else {
        None
    }
}

/// Adds advice to a broker refusal of a publish.
fn publish_error(e: Error, exchange: &str) -> Error {
    if !e.starts_with("channel closed by the broker") {
        e
    } else if e.contains("404 NOT_FOUND") && e.contains("no exchange") {
        format!(
            "publish refused, nothing was delivered: {e}\n\
             (declare it first: amqp-client declare --exchange {exchange:?} --type direct, \
             or publish to an existing exchange)"
        )
    } else {
        format!("publish refused: {e}")
    }
}

/// Writes one property or delivery field for `consume --verbose`.
fn arg_text(arg: Arg<'_>, out: &mut String) {
    let _ = match arg {
        Arg::Octet(v) => write!(out, "{v}"),
        Arg::Short(v) => write!(out, "{v}"),
        Arg::Long(v) => write!(out, "{v}"),
        Arg::LongLong(v) => write!(out, "{v}"),
        Arg::Bit(v) => write!(out, "{v}"),
        Arg::ShortStr(s) => {
            quote(s.as_bytes(), usize::MAX, out);
            Ok(())
        }
        Arg::LongStr(s) => {
            quote(s.as_bytes(), usize::MAX, out);
            Ok(())
        }
        Arg::Table(_) => Ok(()),
        _ => write!(out, "{arg:?}"),
    };
}

/// What a basic.deliver or basic.get-ok says of its message.
struct Delivery<'a> {
    exchange: &'a ShortString,
    routing_key: &'a ShortString,
    redelivered: bool,
    delivery_tag: u64,
}

impl<'a> Delivery<'a> {
    fn of(m: &'a Method) -> Option<Delivery<'a>> {
        match m {
            Method::BasicDeliver(d) => Some(Delivery {
                exchange: &d.exchange,
                routing_key: &d.routing_key,
                redelivered: d.redelivered,
                delivery_tag: d.delivery_tag,
            }),
            Method::BasicGetOk(g) => Some(Delivery {
                exchange: &g.exchange,
                routing_key: &g.routing_key,
                redelivered: g.redelivered,
                delivery_tag: g.delivery_tag,
            }),
            _ => None,
        }
    }
}

/// Prints a delivered message as `--format` says.
fn print_message(format: Format, n: u64, message: &Message) {
    match format {
        Format::Body => println!("{}", String::from_utf8_lossy(&message.body)),
        Format::Json => println!("{}", render_json(message)),
        Format::Verbose => {
            let mut text = String::new();
            render_verbose(n, message, &mut text);
            print!("{text}");
        }
    }
}

/// `consume --verbose`: the delivery, each property on its own line,
/// headers one per line with their AMQP types, then the body.
fn render_verbose(n: u64, message: &Message, out: &mut String) {
    if let Some(d) = Delivery::of(&message.method) {
        let _ = write!(out, "--- message {n}\nexchange: ");
        quote(d.exchange.as_bytes(), usize::MAX, out);
        out.push_str("\nrouting-key: ");
        quote(d.routing_key.as_bytes(), usize::MAX, out);
        let _ = writeln!(
            out,
            "\nredelivered: {}\ndelivery-tag: {}",
            d.redelivered, d.delivery_tag
        );
    }
    for (name, arg) in property_values(&message.properties) {
        if let Arg::Table(t) = arg {
            let _ = writeln!(out, "{name}:");
            for (k, v) in t {
                out.push_str("  ");
                quote(k.as_bytes(), usize::MAX, out);
                out.push_str(": ");
                typed(v, out);
                out.push('\n');
            }
            continue;
        }
        let _ = write!(out, "{name}: ");
        arg_text(arg, out);
        match (name, arg) {
            ("delivery-mode", Arg::Octet(2)) => out.push_str(" (persistent)"),
            ("delivery-mode", Arg::Octet(1)) => out.push_str(" (transient)"),
            _ => {}
        }
        out.push('\n');
    }
    let _ = writeln!(out, "body: {} bytes", message.body.len());
    out.push_str(&String::from_utf8_lossy(&message.body));
    out.push('\n');
}

/// `consume --format json`: one object per message.
fn render_json(message: &Message) -> String {
    use serde_json::{Map, Value, json};
    let mut obj = Map::new();
    if let Some(d) = Delivery::of(&message.method) {
        obj.insert("exchange".into(), json!(d.exchange.to_string_lossy()));
        obj.insert("routing_key".into(), json!(d.routing_key.to_string_lossy()));
        obj.insert("redelivered".into(), json!(d.redelivered));
        obj.insert("delivery_tag".into(), json!(d.delivery_tag));
    }
    let mut props = Map::new();
    for (name, arg) in property_values(&message.properties) {
        let v = match arg {
            Arg::Octet(v) => json!(v),
            Arg::Short(v) => json!(v),
            Arg::Long(v) => json!(v),
            Arg::LongLong(v) => json!(v),
            Arg::Bit(v) => json!(v),
            Arg::ShortStr(s) => json!(s.to_string_lossy()),
            Arg::LongStr(s) => json!(s.to_string_lossy()),
            Arg::Table(t) => table_to_json(t),
            _ => Value::Null,
        };
        props.insert(name.replace('-', "_"), v);
    }
    obj.insert("properties".into(), Value::Object(props));
    match std::str::from_utf8(&message.body) {
        Ok(text) => obj.insert("body".into(), json!(text)),
        Err(_) => obj.insert(
            "body_hex".into(),
            json!(
                message
                    .body
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
        ),
    };
    Value::Object(obj).to_string()
}

async fn run(a: Args) -> Result<(), Error> {
    let uri = parse_uri(
        a.uri
            .as_deref()
            .unwrap_or("amqp://guest:guest@127.0.0.1:5672/%2f"),
    )?;
    let need = |v: &Option<String>, flag: &str| {
        v.clone()
            .ok_or_else(|| format!("{} needs {flag}\n{USAGE}", a.command))
    };
    let timeout = Duration::from_secs(a.timeout.unwrap_or(10));
    if API_COMMANDS.contains(&a.command.as_str()) {
        return run_api(&a, &uri, timeout);
    }
    match a.command.as_str() {
        "declare" => {
            let target = target(&a)?;
            let kind = match &target {
                Target::Exchange(_) => Some(need(&a.kind, "--type")?),
                Target::Queue(_) => None,
            };
            let mut c = Client::connect(&uri, a.heartbeat, timeout).await?;
            let result = async {
                let ch = c.channel().await?;
                match (target, kind) {
                    (Target::Exchange(x), Some(kind)) => {
                        c.call(
                            ch,
                            ExchangeDeclare {
                                exchange: short(&x)?,
                                kind: short(&kind)?,
                                durable: a.durable,
                                auto_delete: a.auto_delete,
                                internal: a.internal,
                                arguments: a.arguments.clone(),
                                ..Default::default()
                            },
                        )
                        .await?;
                        println!("declared exchange {x} type={kind}");
                    }
                    (target, _) => {
                        let Target::Queue(queue) = target else {
                            return Err("declare: internal error".into());
                        };
                        let ok = c
                            .call(
                                ch,
                                QueueDeclare {
                                    queue: short(&queue)?,
                                    durable: a.durable,
                                    auto_delete: a.auto_delete,
                                    arguments: a.arguments.clone(),
                                    ..Default::default()
                                },
                            )
                            .await?;
                        if let Method::QueueDeclareOk(ok) = ok {
                            println!(
                                "declared {} messages={} consumers={}",
                                ok.queue, ok.message_count, ok.consumer_count
                            );
                        }
                    }
                }
                Ok::<(), Error>(())
            }
            .await;
            c.finish(result).await
        }
        "delete" => {
            let target = target(&a)?;
            let mut c = Client::connect(&uri, a.heartbeat, timeout).await?;
            let result = async {
                let ch = c.channel().await?;
                match target {
                    Target::Queue(queue) => {
                        let ok = c
                            .call(
                                ch,
                                QueueDelete {
                                    queue: short(&queue)?,
                                    ..Default::default()
                                },
                            )
                            .await?;
                        if let Method::QueueDeleteOk(ok) = ok {
                            println!("deleted {queue} messages={}", ok.message_count);
                        }
                    }
                    Target::Exchange(x) => {
                        c.call(
                            ch,
                            ExchangeDelete {
                                exchange: short(&x)?,
                                ..Default::default()
                            },
                        )
                        .await?;
                        println!("deleted exchange {x}");
                    }
                }
                Ok::<(), Error>(())
            }
            .await;
            c.finish(result).await
        }
        "bind" | "unbind" => {
            let source = need(&a.exchange, "--exchange (the source)")?;
            let routing_key = a.routing_key.clone().unwrap_or_default();
            let dest = match (&a.queue, &a.to_exchange) {
                (Some(q), None) => Target::Queue(q.clone()),
                (None, Some(x)) => Target::Exchange(x.clone()),
                _ => {
                    return Err(format!(
                        "{} needs one destination: --queue Q or --to-exchange D\n{USAGE}",
                        a.command
                    ));
                }
            };
            let bind = a.command == "bind";
            let mut c = Client::connect(&uri, a.heartbeat, timeout).await?;
            let result = async {
                let ch = c.channel().await?;
                let (src, rk, args) = (short(&source)?, short(&routing_key)?, a.arguments.clone());
                let (method, what): (Method, String) = match dest {
                    Target::Queue(q) if bind => (
                        QueueBind {
                            queue: short(&q)?,
                            exchange: src,
                            routing_key: rk,
                            arguments: args,
                            ..Default::default()
                        }
                        .into(),
                        format!("queue {q}"),
                    ),
                    Target::Queue(q) => (
                        QueueUnbind {
                            queue: short(&q)?,
                            exchange: src,
                            routing_key: rk,
                            arguments: args,
                            ..Default::default()
                        }
                        .into(),
                        format!("queue {q}"),
                    ),
                    Target::Exchange(d) if bind => (
                        ExchangeBind {
                            destination: short(&d)?,
                            source: src,
                            routing_key: rk,
                            arguments: args,
                            ..Default::default()
                        }
                        .into(),
                        format!("exchange {d}"),
                    ),
                    Target::Exchange(d) => (
                        ExchangeUnbind {
                            destination: short(&d)?,
                            source: src,
                            routing_key: rk,
                            arguments: args,
                            ..Default::default()
                        }
                        .into(),
                        format!("exchange {d}"),
                    ),
                };
                c.call(ch, method).await?;
                println!(
                    "{} {what} {} exchange {source} with routing key {routing_key:?}",
                    if bind { "bound" } else { "unbound" },
                    if bind { "to" } else { "from" }
                );
                Ok::<(), Error>(())
            }
            .await;
            c.finish(result).await
        }
        "publish" => {
            let exchange = need(&a.exchange, "--exchange")?;
            let routing_key = need(&a.routing_key, "--routing-key")?;
            let body = match (&a.body_file, &a.body) {
                (Some(path), None) => std::fs::read(path).map_err(|e| format!("{path}: {e}"))?,
                (None, Some(b)) => b.clone().into_bytes(),
                _ => return Err(format!("publish needs BODY or --body-file\n{USAGE}")),
            };
            let count = a.count.unwrap_or(1);
            let headers = a.headers.clone();
            let props = BasicProperties {
                content_type: a.content_type.as_deref().map(short).transpose()?,
                delivery_mode: a.persistent.then_some(2),
                headers: (!headers.is_empty()).then_some(headers),
                ..Default::default()
            };
            let mut c = Client::connect(&uri, a.heartbeat, timeout).await?;
            let result = async {
                let ch = c.channel().await?;
                publish(&mut c, ch, &a, &exchange, &routing_key, &props, body, count).await
            }
            .await
            .map_err(|e| publish_error(e, &exchange));
            c.finish(result).await
        }
        "consume" => {
            let queue = need(&a.queue, "--queue")?;
            let count = a.count.unwrap_or(1);
            let mut c = Client::connect(&uri, a.heartbeat, timeout).await?;
            let result = async {
                let ch = c.channel().await?;
                let prefetch = a
                    .prefetch
                    .unwrap_or_else(|| u16::try_from(count.min(100)).unwrap_or(100));
                if !a.no_ack {
                    c.call(
                        ch,
                        BasicQos {
                            prefetch_count: prefetch,
                            ..Default::default()
                        },
                    )
                    .await?;
                }
                c.call(
                    ch,
                    BasicConsume {
                        queue: short(&queue)?,
                        no_ack: a.no_ack,
                        ..Default::default()
                    },
                )
                .await?;
                let mut got = 0;
                while got < count {
                    let message = c
                        .run(|e| match e {
                            Event::Message {
                                channel, message, ..
                            } if *channel == ch
                                && matches!(message.method, Method::BasicDeliver(_)) =>
                            {
                                Some(message.clone())
                            }
                            _ => None,
                        })
                        .await
                        .map_err(|e| format!("{e} (after {got} of {count} messages)"))?;
                    let Method::BasicDeliver(d) = &message.method else {
                        continue;
                    };
                    let tag = d.delivery_tag;
                    got += 1;
                    print_message(a.format, got, &message);
                    if !a.no_ack {
                        c.conn.ack(ch, tag, false).map_err(|e| e.to_string())?;
                    }
                }
                Ok::<(), Error>(())
            }
            .await;
            c.finish(result).await
        }
        "get" => {
            let queue = need(&a.queue, "--queue")?;
            let count = a.count.unwrap_or(1);
            let mut c = Client::connect(&uri, a.heartbeat, timeout).await?;
            let result = async {
                let ch = c.channel().await?;
                let mut got = 0;
                let mut last = None;
                while got < count {
                    c.conn
                        .send_method(
                            ch,
                            BasicGet {
                                queue: short(&queue)?,
                                no_ack: false,
                                ..Default::default()
                            },
                        )
                        .map_err(|e| e.to_string())?;
                    let reply = c
                        .run(|e| match e {
                            Event::Message {
                                channel, message, ..
                            } if *channel == ch => Some(Some(message.clone())),
                            Event::Method {
                                channel,
                                method: Method::BasicGetEmpty(_),
                            } if *channel == ch => Some(None),
                            _ => None,
                        })
                        .await?;
                    let Some(message) = reply else {
                        break;
                    };
                    got += 1;
                    last = Delivery::of(&message.method).map(|d| d.delivery_tag);
                    print_message(a.format, got, &message);
                }
                if got == 0 {
                    eprintln!("amqp-client: queue {queue:?} is empty");
                }
                if let Some(tag) = last {
                    // All at once: taken (--ack), or back where they were.
                    let done = if a.ack {
                        c.conn.ack(ch, tag, true)
                    } else {
                        c.conn.nack(ch, tag, true, true)
                    };
                    done.map_err(|e| e.to_string())?;
                }
                Ok::<(), Error>(())
            }
            .await;
            c.finish(result).await
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

/// The commands that go through the management HTTP API.
const API_COMMANDS: &[&str] = &["list", "purge", "export", "import"];

/// Runs `list`, `purge`, `export` or `import` against the management API
/// at `--api`, as `--user`/`--password` or the --uri's user.
fn run_api(a: &Args, uri: &Uri, timeout: Duration) -> Result<(), Error> {
    let api = Api::new(
        a.api.as_deref().unwrap_or("http://127.0.0.1:15672"),
        a.user.as_deref().unwrap_or(&uri.user),
        a.password.as_deref().unwrap_or(&uri.password),
        timeout,
    );
    match a.command.as_str() {
        "list" => {
            let names = || {
                api::LISTINGS
                    .iter()
                    .map(|l| l.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let what = a
                .body
                .as_deref()
                .ok_or_else(|| format!("list needs what to list: {}\n{USAGE}", names()))?;
            let listing = api::listing(what)
                .ok_or_else(|| format!("list: unknown {what:?}; one of {}", names()))?;
            let path = match (&a.vhost, listing.one_vhost) {
                (None, _) => listing.all.to_owned(),
                (Some(v), Some(p)) => p.replace("{}", &api::encode(v)),
                (Some(_), None) => return Err(format!("list {what} takes no --vhost")),
            };
            let rows = match api.get(&path)? {
                serde_json::Value::Array(rows) => rows,
                other => {
                    return Err(format!(
                        "GET {path}: expected a JSON array, got {other:.80}"
                    ));
                }
            };
            let columns: Vec<&str> = match &a.columns {
                Some(c) => c.iter().map(String::as_str).collect(),
                None => listing.columns.to_vec(),
            };
            let text = match (a.format, &a.columns) {
                (Format::Json, None) => serde_json::to_string_pretty(&rows),
                (Format::Json, Some(_)) => {
                    serde_json::to_string_pretty(&api::project(&rows, &columns))
                }
                _ => Ok(api::table(&rows, &columns)),
            }
            .map_err(|e| e.to_string())?;
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            Ok(())
        }
        "purge" => {
            let queue = a
                .queue
                .as_deref()
                .ok_or_else(|| format!("purge needs --queue\n{USAGE}"))?;
            let vhost = a.vhost.as_deref().unwrap_or(&uri.vhost);
            api.delete(&format!(
                "/api/queues/{}/{}/contents",
                api::encode(vhost),
                api::encode(queue)
            ))?;
            println!("purged {queue}");
            Ok(())
        }
        "export" => {
            let path = match &a.vhost {
                Some(v) => format!("/api/definitions/{}", api::encode(v)),
                None => "/api/definitions".to_owned(),
            };
            let defs = api.get(&path)?;
            let text = serde_json::to_string_pretty(&defs).map_err(|e| e.to_string())? + "\n";
            match a.body.as_deref() {
                None | Some("-") => print!("{text}"),
                Some(file) => {
                    std::fs::write(file, &text).map_err(|e| format!("{file}: {e}"))?;
                    let count =
                        |k: &str| defs.get(k).and_then(|v| v.as_array()).map_or(0, Vec::len);
                    println!(
                        "exported {} queues, {} exchanges, {} bindings to {file}",
                        count("queues"),
                        count("exchanges"),
                        count("bindings")
                    );
                }
            }
            Ok(())
        }
        "import" => {
            let file = a
                .body
                .as_deref()
                .ok_or_else(|| format!("import needs FILE (- for stdin)\n{USAGE}"))?;
            let text = if file == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| format!("stdin: {e}"))?;
                s
            } else {
                std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?
            };
            let defs: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{file}: not JSON: {e}"))?;
            if !defs.is_object() {
                return Err(format!("{file}: definitions must be a JSON object"));
            }
            let path = match &a.vhost {
                Some(v) => format!("/api/definitions/{}", api::encode(v)),
                None => "/api/definitions".to_owned(),
            };
            api.post(&path, &text)?;
            println!("imported {file}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

/// Publishes `count` copies of `body` and waits for the broker's answer:
/// confirms with `--confirm`; otherwise one synchronous round trip on the
/// same channel, which the broker answers only after it has handled every
/// publish before it, so that a refusal (the channel closed with 404 for
/// a missing exchange, 403 for no write permission) arrives first.
#[allow(clippy::too_many_arguments)]
async fn publish(
    c: &mut Client,
    ch: u16,
    a: &Args,
    exchange: &str,
    routing_key: &str,
    props: &BasicProperties,
    body: Vec<u8>,
    count: u64,
) -> Result<(), Error> {
    if a.confirm {
        c.call(ch, ConfirmSelect { nowait: false }).await?;
    }
    let body = Bytes::from(body);
    let publish = BasicPublish {
        exchange: short(exchange)?,
        routing_key: short(routing_key)?,
        // With --confirm, an unroutable message comes back as
        // basic.return, so the user hears about it.
        mandatory: a.confirm,
        ..Default::default()
    };
    for _ in 0..count {
        c.conn
            .publish(ch, publish.clone(), props, body.clone())
            .map_err(|e| e.to_string())?;
        // Backpressure: write out before queueing more.
        if c.conn.bytes_queued() > 1 << 20 {
            c.flush().await?;
        }
    }
    c.flush().await?;
    if !a.confirm {
        // basic.qos with the defaults changes nothing on a channel without
        // consumers; its qos-ok is the broker saying "all handled".
        c.call(ch, BasicQos::default()).await?;
        println!("published {count}");
        return Ok(());
    }
    let (mut acked, mut nacked, mut returned) = (0u64, 0u64, 0u64);
    // Settled counts come from the events (the machine's own count
    // may already be ahead of the events not read yet).
    while acked + nacked < count {
        match c
            .run(|e| match e {
                Event::Confirm { ack, settled, .. } => Some((*ack, settled.len() as u64, 0)),
                Event::Message { message, .. }
                    if matches!(message.method, Method::BasicReturn(_)) =>
                {
                    Some((true, 0, 1))
                }
                _ => None,
            })
            .await?
        {
            (true, n, r) => {
                acked += n;
                returned += r;
            }
            (false, n, _) => nacked += n,
        }
    }
    println!("published {count} confirmed {acked} nacked {nacked} returned {returned}");
    if nacked > 0 || returned > 0 {
        return Err(format!("{nacked} nacked, {returned} returned (unroutable)"));
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Asked-for help is output, not an error: stdout, exit status 0.
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{}", help());
        return ExitCode::SUCCESS;
    }
    let result = match parse_args(args) {
        Ok(a) => run(a).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amqp-client: {e}");
            if let Some(advice) = advice(&e) {
                eprintln!("({advice})");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = parse_uri("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(
            u,
            Uri {
                user: "guest".into(),
                password: "guest".into(),
                host: "127.0.0.1".into(),
                port: 5672,
                vhost: "/".into()
            }
        );
        let u = parse_uri("amqp://a%40b:p%3Aw@broker/prod").unwrap();
        assert_eq!((u.user.as_str(), u.password.as_str()), ("a@b", "p:w"));
        assert_eq!(
            (u.host.as_str(), u.port, u.vhost.as_str()),
            ("broker", 5672, "prod")
        );
        assert_eq!(parse_uri("amqp://h").unwrap().vhost, "/");
        assert!(parse_uri("http://h").is_err());
        assert!(parse_uri("amqp://h:x/").is_err());
        assert!(parse_uri("amqp://h/%zz").is_err());
    }

    #[test]
    fn args() {
        let a = parse_args(
            [
                "publish",
                "--exchange",
                "",
                "--routing-key",
                "q",
                "--confirm",
                "--header",
                "k=v",
                "hi",
            ]
            .map(String::from),
        )
        .unwrap();
        assert_eq!(a.command, "publish");
        assert_eq!(a.body.as_deref(), Some("hi"));
        assert!(a.confirm);
        assert_eq!(
            a.headers.get("k"),
            Some(&amqp_codec::types::FieldValue::LongString("v".into()))
        );
        let a = parse_args(
            ["publish", "--header", "n:I=1", "--argument", "x-match=any"].map(String::from),
        )
        .unwrap();
        assert_eq!(
            a.headers.get("n"),
            Some(&amqp_codec::types::FieldValue::I32(1))
        );
        assert!(a.arguments.get("x-match").is_some());
        assert!(parse_args(["publish", "--header", "n:I=one"].map(String::from)).is_err());
        assert!(parse_args(["consume", "--format", "xml"].map(String::from)).is_err());
        assert!(parse_args(["--count".to_owned()]).is_err());
        assert!(parse_args(["x", "--bogus"].map(String::from)).is_err());
        let a = parse_args(
            [
                "list",
                "queues",
                "--api",
                "http://h:1",
                "--columns",
                "name, messages",
                "--format",
                "table",
                "--vhost",
                "/",
            ]
            .map(String::from),
        )
        .unwrap();
        assert_eq!(
            (a.command.as_str(), a.body.as_deref()),
            ("list", Some("queues"))
        );
        assert_eq!(a.columns, Some(vec!["name".into(), "messages".into()]));
        assert_eq!(
            (a.api.as_deref(), a.vhost.as_deref()),
            (Some("http://h:1"), Some("/"))
        );
        assert_eq!(a.format, Format::Body);
        assert!(parse_args(["list", "--columns", ","].map(String::from)).is_err());
    }
}
