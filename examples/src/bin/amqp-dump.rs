//! `amqp-dump`: an AMQP 0-9-1 protocol analyser built on `amqp-wire`.
//!
//! * `amqp-dump FILE` decodes a captured byte stream (one direction of one
//!   connection, optionally starting with the protocol header) and prints
//!   one line per frame.
//! * `amqp-dump --listen ADDR --upstream ADDR` is a live proxy that forwards
//!   bytes unchanged both ways and prints both directions frame by frame.
//!
//! Run `amqp-dump --help` for the options.

use amqp_examples::dump::{Decoder, Direction, Event, Options};
use amqp_types::Method;
use amqp_wire::FramePayload;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HELP: &str = "\
amqp-dump: print AMQP 0-9-1 traffic frame by frame

USAGE:
    amqp-dump [OPTIONS] FILE
    amqp-dump [OPTIONS] --listen ADDR --upstream ADDR [--record DIR]

FILE mode decodes a captured byte stream: the bytes one peer sent on one
connection (like a wire corpus c2s.bin or s2c.bin), optionally starting with
the 8-byte protocol header. FILE may be `-` for standard input. Each frame
prints as one line: byte offset, channel, method name and key arguments,
content-header properties, or body size.

Proxy mode listens on ADDR, connects every accepted client to the upstream
broker, forwards the bytes unchanged both ways and prints both directions,
each line prefixed with `[conn N c2s]` or `[conn N s2c]`. Decoding errors
are printed and never interfere with forwarding. The first line printed is
`listening on ADDR` (useful with port 0). A connection that ends with a
reset after connection.close (RabbitMQ always resets) is a clean close; a
reset or hang-up before connection.close is reported, naming who did it.

OPTIONS:
    -v, --verbose          every argument, every table entry with its type
                           letter, and a hex dump of each frame
    --direction c2s|s2c    label a FILE's direction and flag methods the
                           other peer should have sent (default: guessed
                           from the file name when it contains c2s or s2c)
    --frame-max BYTES      refuse frames larger than BYTES, as a broker
                           would (default 0: no limit, so that oversized
                           frames in a capture still print)
    --listen ADDR          proxy mode: address to listen on
    --upstream ADDR        proxy mode: the broker to forward to
    --record DIR           proxy mode: also write each direction's bytes to
                           DIR/conn-N.c2s.bin and DIR/conn-N.s2c.bin
    -h, --help             this text

EXIT STATUS:
    0  the stream decoded cleanly (FILE mode)
    1  malformed input: the typed error is printed with its byte offset and
       AMQP reply code; or the stream ends inside a frame
    2  usage or I/O error
";

struct Args {
    file: Option<String>,
    listen: Option<String>,
    upstream: Option<String>,
    record: Option<PathBuf>,
    direction: Option<Direction>,
    verbose: bool,
    frame_max: u32,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        file: None,
        listen: None,
        upstream: None,
        record: None,
        direction: None,
        verbose: false,
        frame_max: 0,
    };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "-v" | "--verbose" => a.verbose = true,
            "--direction" => {
                let v = value("--direction")?;
                a.direction = Some(
                    Direction::parse(&v)
                        .ok_or_else(|| format!("--direction must be c2s or s2c, not {v:?}"))?,
                );
            }
            "--frame-max" => {
                let v = value("--frame-max")?;
                a.frame_max = v
                    .parse()
                    .map_err(|_| format!("--frame-max: not a number of bytes: {v:?}"))?;
            }
            "--listen" => a.listen = Some(value("--listen")?),
            "--upstream" => a.upstream = Some(value("--upstream")?),
            "--record" => a.record = Some(PathBuf::from(value("--record")?)),
            s if s.starts_with('-') && s != "-" => return Err(format!("unknown option {s}")),
            _ => {
                if a.file.replace(arg).is_some() {
                    return Err("only one FILE at a time".into());
                }
            }
        }
    }
    match (&a.file, &a.listen, &a.upstream) {
        (Some(_), None, None) => {
            if a.record.is_some() {
                return Err("--record is for proxy mode".into());
            }
        }
        (None, Some(_), Some(_)) => {}
        (None, None, None) => return Err("give a FILE, or --listen and --upstream".into()),
        (Some(_), _, _) => return Err("give either a FILE or --listen/--upstream".into()),
        _ => return Err("proxy mode needs both --listen and --upstream".into()),
    }
    Ok(Some(a))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("amqp-dump: {e}\n(try --help)");
            return ExitCode::from(2);
        }
    };
    let options = Options {
        verbose: args.verbose,
        frame_max: args.frame_max,
        direction: args.direction,
        prefix: String::new(),
    };
    match &args.file {
        Some(file) => dump_file(file, options),
        None => proxy_main(&args, options),
    }
}

/// Writes `text` to standard output; a closed pipe (`amqp-dump ... | head`)
/// ends the program quietly instead of panicking as `print!` would.
fn emit(text: &str) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("amqp-dump: writing output: {e}");
        std::process::exit(2);
    }
}

fn guess_direction(file: &str) -> Option<Direction> {
    let name = Path::new(file).file_name()?.to_string_lossy().into_owned();
    match (name.contains("c2s"), name.contains("s2c")) {
        (true, false) => Some(Direction::ClientToServer),
        (false, true) => Some(Direction::ServerToClient),
        _ => None,
    }
}

fn dump_file(file: &str, mut options: Options) -> ExitCode {
    let data = if file == "-" {
        let mut v = Vec::new();
        io::Read::read_to_end(&mut io::stdin(), &mut v).map(|_| v)
    } else {
        std::fs::read(file)
    };
    let data = match data {
        Ok(d) => d,
        Err(e) => {
            eprintln!("amqp-dump: {file}: {e}");
            return ExitCode::from(2);
        }
    };
    if options.direction.is_none() {
        options.direction = guess_direction(file);
    }
    let mut decoder = Decoder::new(options.clone());
    let mut failed = false;
    let mut frames = 0u64;
    // One push of the whole file: the same incremental decoder the proxy
    // feeds chunk by chunk. Print in batches to keep memory flat.
    let mut text = String::new();
    let events = decoder.push(&data);
    for event in events.iter().chain(decoder.finish().iter()) {
        failed |= event.is_failure();
        frames += u64::from(matches!(event, Event::Frame { .. }));
        event.render(&options, &mut text);
        if text.len() > 1 << 16 {
            emit(&text);
            text.clear();
        }
    }
    let dir = options.direction.map_or("", |d| d.label());
    text.push_str(&format!(
        "-- {frames} frames, {} bytes{}{}: {}\n",
        data.len(),
        if dir.is_empty() { "" } else { " " },
        dir,
        if failed { "FAILED" } else { "ok" }
    ));
    emit(&text);
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn proxy_main(args: &Args, options: Options) -> ExitCode {
    let (Some(listen), Some(upstream)) = (&args.listen, &args.upstream) else {
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("amqp-dump: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let record = args.record.clone();
    match runtime.block_on(proxy(listen, upstream, options, record)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amqp-dump: {e}");
            ExitCode::from(2)
        }
    }
}

async fn proxy(
    listen: &str,
    upstream: &str,
    options: Options,
    record: Option<PathBuf>,
) -> io::Result<()> {
    let listener = listen_on(listen).await?;
    check_upstream(upstream).await?;
    if let Some(dir) = &record {
        std::fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("--record {}: {e}", dir.display())))?;
    }
    emit(&format!(
        "listening on {}, forwarding to {upstream}\n",
        listener.local_addr()?
    ));
    let upstream: Arc<str> = upstream.into();
    let next_id = AtomicU64::new(1);
    loop {
        let (client, peer) = listener.accept().await?;
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let upstream = upstream.clone();
        let options = options.clone();
        let record = record.clone();
        tokio::spawn(async move {
            connection(id, client, peer, &upstream, options, record).await;
        });
    }
}

/// Binds the `--listen` address; the error names the address and says
/// what to do.
async fn listen_on(listen: &str) -> io::Result<TcpListener> {
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host(listen).await {
        Ok(a) => a.collect(),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "--listen {listen:?} is not an address to listen on ({e}); \
                     give HOST:PORT, e.g. 127.0.0.1:5673 (port 0 picks a free port)"
                ),
            ));
        }
    };
    TcpListener::bind(addrs.as_slice()).await.map_err(|e| {
        let advice = match e.kind() {
            io::ErrorKind::AddrInUse => {
                "another program listens there; pick another --listen port \
                 (port 0 picks a free one)"
            }
            io::ErrorKind::PermissionDenied => {
                "ports below 1024 need privileges; pick a higher port"
            }
            io::ErrorKind::AddrNotAvailable => "the address is not one of this machine's",
            _ => "pick another --listen address",
        };
        io::Error::new(
            e.kind(),
            format!("cannot listen on {listen}: {e}; {advice}"),
        )
    })
}

/// Resolves the `--upstream` address once at start, so that a typo is
/// reported now rather than on the first connection.
async fn check_upstream(upstream: &str) -> io::Result<()> {
    match tokio::net::lookup_host(upstream)
        .await
        .map(|mut a| a.next())
    {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("--upstream {upstream:?} resolves to no address"),
        )),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "--upstream {upstream:?} is not a broker address ({e}); \
                 give HOST:PORT, e.g. 127.0.0.1:5672"
            ),
        )),
    }
}

async fn connection(
    id: u64,
    client: TcpStream,
    peer: SocketAddr,
    upstream: &str,
    options: Options,
    record: Option<PathBuf>,
) {
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            emit(&format!(
                "[conn {id}] {peer}: cannot connect to {upstream}: {e}; closing\n"
            ));
            return;
        }
    };
    emit(&format!("[conn {id}] {peer} -> {upstream} open\n"));
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let ending = Arc::new(Ending::default());
    let file = |dir: Direction| {
        record
            .as_ref()
            .map(|d| d.join(format!("conn-{id}.{}.bin", dir.label())))
    };
    let c2s = pump(
        id,
        Direction::ClientToServer,
        client_read,
        server_write,
        options.clone(),
        file(Direction::ClientToServer),
        ending.clone(),
    );
    let s2c = pump(
        id,
        Direction::ServerToClient,
        server_read,
        client_write,
        options,
        file(Direction::ServerToClient),
        ending,
    );
    let (up, down) = tokio::join!(c2s, s2c);
    emit(&format!(
        "[conn {id}] closed: {up} bytes c2s, {down} bytes s2c\n"
    ));
}

/// How far one proxied connection has got towards its end, shared by
/// its two directions. Once either side sent connection.close (or
/// close-ok), or hung up, a reset is how the connection ends, not news:
/// RabbitMQ closes its sockets with SO_LINGER 0, so its side always ends
/// with a reset.
#[derive(Default)]
struct Ending {
    /// connection.close or close-ok went by.
    closing: AtomicBool,
    /// One direction ended (end of stream, reset or error).
    ended: AtomicBool,
}

impl Ending {
    fn expected(&self) -> bool {
        self.closing.load(Ordering::Relaxed) || self.ended.load(Ordering::Relaxed)
    }
}

/// Whether `e` is the peer going away (reset, broken pipe) rather than a
/// fault of this side.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Forwards one direction until EOF or an error, decoding a copy of what
/// passed. Forwarding comes first; decoding never blocks or stops it.
/// A reset once the connection is [`Ending`] ends the direction quietly,
/// as a clean close; a hang-up or reset before that is reported. Returns
/// the bytes forwarded.
async fn pump(
    id: u64,
    direction: Direction,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut options: Options,
    record: Option<PathBuf>,
    ending: Arc<Ending>,
) -> u64 {
    let (reader, writer) = match direction {
        Direction::ClientToServer => ("the client", "the broker"),
        Direction::ServerToClient => ("the broker", "the client"),
    };
    let label = direction.label();
    options.direction = Some(direction);
    options.prefix = format!("[conn {id} {label}] ");
    let mut decoder = Decoder::new(options.clone());
    let mut recorder = match record {
        Some(path) => match tokio::fs::File::create(&path).await {
            Ok(f) => Some(f),
            Err(e) => {
                emit(&format!(
                    "[conn {id} {label}] cannot record to {}: {e}\n",
                    path.display()
                ));
                None
            }
        },
        None => None,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                if !ending.expected() {
                    emit(&format!(
                        "[conn {id} {label}] {reader} closed the TCP connection without connection.close\n"
                    ));
                }
                break;
            }
            Ok(n) => n,
            Err(e) if peer_gone(&e) && ending.expected() => break,
            Err(e) if peer_gone(&e) => {
                emit(&format!(
                    "[conn {id} {label}] {reader} reset the connection before connection.close: {e}\n"
                ));
                break;
            }
            Err(e) => {
                emit(&format!("[conn {id} {label}] reading from {reader}: {e}\n"));
                break;
            }
        };
        let chunk = &buf[..n];
        if let Err(e) = to.write_all(chunk).await {
            if !(peer_gone(&e) && ending.expected()) {
                emit(&format!(
                    "[conn {id} {label}] {n} bytes not forwarded, writing to {writer}: {e}\n"
                ));
            }
            break;
        }
        total += n as u64;
        if let Some(f) = &mut recorder
            && let Err(e) = f.write_all(chunk).await
        {
            emit(&format!("[conn {id} {label}] recording stopped: {e}\n"));
            recorder = None;
        }
        let was_failed = decoder.error().is_some();
        let mut text = String::new();
        for event in decoder.push(chunk) {
            if let Event::Frame { frame, .. } = &event
                && matches!(
                    frame.payload,
                    FramePayload::Method(Method::ConnectionClose(_) | Method::ConnectionCloseOk(_))
                )
            {
                ending.closing.store(true, Ordering::Relaxed);
            }
            event.render(&options, &mut text);
        }
        if !was_failed && decoder.error().is_some() {
            text.push_str(&format!(
                "[conn {id} {label}] decoding stopped; still forwarding\n"
            ));
        }
        if !text.is_empty() {
            emit(&text);
        }
    }
    ending.ended.store(true, Ordering::Relaxed);
    let _ = to.shutdown().await;
    if let Some(f) = &mut recorder {
        let _ = f.flush().await;
    }
    if let Some(event) = decoder.finish() {
        let mut text = String::new();
        event.render(&options, &mut text);
        emit(&text);
    }
    total
}
