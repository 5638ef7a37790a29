//! amqp-client: publish to and consume from an AMQP 0-9-1 broker, built on
//! amqp-codec's Sans-IO client role driven by tokio.
//!
//! ```text
//! amqp-client [--uri URI] [--heartbeat SECS] [--timeout SECS] COMMAND
//!   declare --queue Q [--durable] [--auto-delete]
//!   publish --exchange X --routing-key K [--confirm] [--persistent]
//!           [--content-type T] [--header NAME=VALUE]... [--count N] (BODY | --body-file PATH)
//!   consume --queue Q [--count N] [--prefetch N] [--no-ack]
//!   delete  --queue Q
//! ```
//!
//! The default URI is `amqp://guest:guest@127.0.0.1:5672/%2f`. `consume`
//! prints each body on its own line and exits after `--count` messages
//! (acknowledged unless `--no-ack`). Errors go to stderr as
//! `amqp-client: ...` with exit status 1; a broker refusal names its reply
//! code.

use amqp_codec::types::method::{
    BasicConsume, BasicPublish, BasicQos, ConfirmSelect, QueueDeclare, QueueDelete,
};
use amqp_codec::types::{
    BasicProperties, FieldTable, FieldValue, LongString, Method, ReplyCode, ShortString,
};
use amqp_codec::{ClientConfig, Connection, Credentials, Event};
use bytes::Bytes;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USAGE: &str = "usage: amqp-client [--uri URI] [--heartbeat SECS] [--timeout SECS] COMMAND
  declare --queue Q [--durable] [--auto-delete]
  publish --exchange X --routing-key K [--confirm] [--persistent] [--content-type T]
          [--header NAME=VALUE]... [--count N] (BODY | --body-file PATH)
  consume --queue Q [--count N] [--prefetch N] [--no-ack]
  delete  --queue Q";

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

    async fn close(mut self) -> Result<(), Error> {
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

/// Parsed command line.
#[derive(Debug, Default)]
struct Args {
    uri: Option<String>,
    heartbeat: Option<u16>,
    timeout: Option<u64>,
    command: String,
    queue: Option<String>,
    exchange: Option<String>,
    routing_key: Option<String>,
    confirm: bool,
    persistent: bool,
    durable: bool,
    auto_delete: bool,
    no_ack: bool,
    content_type: Option<String>,
    headers: Vec<(String, String)>,
    count: Option<u64>,
    prefetch: Option<u16>,
    body: Option<String>,
    body_file: Option<String>,
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
            "--routing-key" => a.routing_key = Some(value(&mut it, &arg)?),
            "--body-file" => a.body_file = Some(value(&mut it, &arg)?),
            "--content-type" => a.content_type = Some(value(&mut it, &arg)?),
            "--header" => {
                let v = value(&mut it, &arg)?;
                let (k, v) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--header wants NAME=VALUE, got {v:?}"))?;
                a.headers.push((k.to_owned(), v.to_owned()));
            }
            "--count" => a.count = Some(num(value(&mut it, &arg)?, &arg)?),
            "--prefetch" => a.prefetch = Some(num(value(&mut it, &arg)?, &arg)?),
            "--confirm" => a.confirm = true,
            "--persistent" => a.persistent = true,
            "--durable" => a.durable = true,
            "--auto-delete" => a.auto_delete = true,
            "--no-ack" => a.no_ack = true,
            "-h" | "--help" => return Err(USAGE.into()),
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
    match a.command.as_str() {
        "declare" => {
            let queue = need(&a.queue, "--queue")?;
            let mut c = Client::connect(&uri, a.heartbeat, timeout).await?;
            let ch = c.channel().await?;
            let ok = c
                .call(
                    ch,
                    QueueDeclare {
                        queue: short(&queue)?,
                        durable: a.durable,
                        auto_delete: a.auto_delete,
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
            c.close().await
        }
        "delete" => {
            let queue = need(&a.queue, "--queue")?;
            let mut c = Client::connect(&uri, a.heartbeat, timeout).await?;
            let ch = c.channel().await?;
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
            c.close().await
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
            let mut headers = FieldTable::new();
            for (k, v) in &a.headers {
                headers.push(
                    short(k)?,
                    FieldValue::LongString(LongString::from(v.clone().into_bytes())),
                );
            }
            let props = BasicProperties {
                content_type: a.content_type.as_deref().map(short).transpose()?,
                delivery_mode: a.persistent.then_some(2),
                headers: (!headers.is_empty()).then_some(headers),
                ..Default::default()
            };
            let mut c = Client::connect(&uri, a.heartbeat, timeout).await?;
            let ch = c.channel().await?;
            if a.confirm {
                c.call(ch, ConfirmSelect { nowait: false }).await?;
            }
            let body = Bytes::from(body);
            let publish = BasicPublish {
                exchange: short(&exchange)?,
                routing_key: short(&routing_key)?,
                // With --confirm, an unroutable message comes back as
                // basic.return, so the user hears about it.
                mandatory: a.confirm,
                ..Default::default()
            };
            for _ in 0..count {
                c.conn
                    .publish(ch, publish.clone(), &props, body.clone())
                    .map_err(|e| e.to_string())?;
                // Backpressure: write out before queueing more.
                if c.conn.bytes_queued() > 1 << 20 {
                    c.flush().await?;
                }
            }
            c.flush().await?;
            if a.confirm {
                let (mut acked, mut nacked, mut returned) = (0u64, 0u64, 0u64);
                // Settled counts come from the events (the machine's own count
                // may already be ahead of the events not read yet).
                while acked + nacked < count {
                    match c
                        .run(|e| match e {
                            Event::Confirm { ack, settled, .. } => {
                                Some((*ack, settled.len() as u64, 0))
                            }
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
                c.close().await?;
                if nacked > 0 || returned > 0 {
                    return Err(format!("{nacked} nacked, {returned} returned (unroutable)"));
                }
                Ok(())
            } else {
                println!("published {count}");
                c.close().await
            }
        }
        "consume" => {
            let queue = need(&a.queue, "--queue")?;
            let count = a.count.unwrap_or(1);
            let mut c = Client::connect(&uri, a.heartbeat, timeout).await?;
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
                let (tag, body) = c
                    .run(|e| match e {
                        Event::Message {
                            channel, message, ..
                        } if *channel == ch => match &message.method {
                            Method::BasicDeliver(d) => Some((d.delivery_tag, message.body.clone())),
                            _ => None,
                        },
                        _ => None,
                    })
                    .await
                    .map_err(|e| format!("{e} (after {got} of {count} messages)"))?;
                println!("{}", String::from_utf8_lossy(&body));
                if !a.no_ack {
                    c.conn.ack(ch, tag, false).map_err(|e| e.to_string())?;
                }
                got += 1;
            }
            c.close().await
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Asked-for help is output, not an error: stdout, exit status 0.
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
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
        assert_eq!(a.headers, [("k".to_owned(), "v".to_owned())]);
        assert!(parse_args(["--count".to_owned()]).is_err());
        assert!(parse_args(["x", "--bogus"].map(String::from)).is_err());
    }
}
