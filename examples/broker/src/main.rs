//! amqp-broker: a RabbitMQ-compatible AMQP 0-9-1 broker.

use amqp_broker::auth::{HashAlgorithm, Password};
use amqp_broker::config::Config;
use amqp_broker::core::{Core, server_properties};
use amqp_broker::definitions::Definitions;
use amqp_broker::management;
use amqp_broker::shell::{Shared, accept_loop, accept_tls_loop, store_thread, timer_loop};
use amqp_broker::store;
use amqp_broker::tls::{self, LoginFrom, Settings, Tls};
use amqp_codec::ServerConfig;
use amqp_codec::types::LongString;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

// mimalloc: malloc and free were a sixth of the broker's CPU under load with
// the system allocator (perf, 1 KiB publish/deliver); in stop 13's A/B runs
// the system allocator cost 8-50% more CPU in the persistent and confirms
// rows. Version 2 (see Cargo.toml) keeps less memory than 3.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A RabbitMQ-compatible AMQP 0-9-1 broker.
///
/// With no options it listens on 127.0.0.1:5672 and [::1]:5672 with
/// RabbitMQ's first-boot defaults: vhost `/`, user guest/guest (loopback
/// only). Logs go to stderr (`RUST_LOG=debug` for more). SIGTERM or
/// SIGINT closes every connection with 320 CONNECTION_FORCED and exits 0;
/// SIGHUP reloads the TLS certificate, key and CA files (connections stay).
#[derive(Debug, Parser)]
#[command(name = "amqp-broker", version, about, long_about)]
struct Args {
    /// Address to listen on for AMQP (repeatable). Default: 127.0.0.1:5672
    /// and [::1]:5672.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// TOML configuration file (users, vhosts, permissions, tuning); see
    /// the README for its keys.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A RabbitMQ definitions export (`rabbitmqctl export_definitions`)
    /// to import at boot: users with their password hashes, vhosts,
    /// permissions, exchanges, queues and bindings.
    #[arg(long, value_name = "FILE")]
    definitions: Option<PathBuf>,
    /// Directory for durable state: the durable topology
    /// (`definitions.json`) and persistent messages of durable queues
    /// (`messages/`); also the pages of long queues (`paging/`, emptied
    /// at every start). Locked while the broker runs.
    #[arg(long, value_name = "DIR", default_value = "amqp-broker-data")]
    data_dir: PathBuf,
    /// Address of the management HTTP API (RabbitMQ's `/api/...`), or
    /// `none`. Default: 127.0.0.1:15672 (skipped with a warning if taken).
    #[arg(long, value_name = "ADDR|none")]
    management: Option<String>,
    /// Address of the Prometheus exporter (`/metrics`,
    /// `/metrics/per-object`), or `none`. Default: 127.0.0.1:15692
    /// (skipped with a warning if taken).
    #[arg(long, value_name = "ADDR|none")]
    prometheus: Option<String>,
    /// Seconds between the management API's rate samples (RabbitMQ's
    /// `collect_statistics_interval`).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    management_sample_interval: f64,
    /// Memory high watermark, a fraction of the memory the broker may use
    /// (the machine's, or its cgroup's limit when lower): above it,
    /// publishing connections are blocked (`connection.blocked`) until
    /// consumers drain (RabbitMQ's `vm_memory_high_watermark.relative`).
    #[arg(long, value_name = "FRACTION", default_value_t = amqp_broker::alarms::MEMORY_HIGH_WATERMARK)]
    vm_memory_high_watermark: f64,
    /// Memory high watermark as a size (bytes, or e.g. 512MB, 2GiB);
    /// replaces the relative one (`vm_memory_high_watermark.absolute`).
    #[arg(long, value_name = "SIZE")]
    vm_memory_high_watermark_absolute: Option<String>,
    /// Free disk space on the data directory's file system below which
    /// publishers are blocked (`disk_free_limit.absolute`).
    #[arg(long, value_name = "SIZE", default_value = "50MB")]
    disk_free_limit: String,
    /// Log lines on stderr as text or as JSON objects, one per line (for
    /// log collectors). `RUST_LOG` sets the level (default `info`).
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Address to listen on for AMQP over TLS, `amqps://` (repeatable).
    /// Default: 0.0.0.0:5671 when a certificate is configured; none
    /// without one.
    #[arg(long = "tls-listen", value_name = "ADDR")]
    tls_listen: Vec<SocketAddr>,
    /// The TLS listener's certificate chain (PEM, leaf first). Enables
    /// the TLS listener. Config: `cert` in `[tls]`.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    /// Config: `key` in `[tls]`.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) to verify client certificates against:
    /// clients are asked for one (RabbitMQ's `verify_peer`), and one
    /// verified offers SASL EXTERNAL. Config: `ca` in `[tls]`.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Refuse the TLS handshake of a client without a certificate
    /// (RabbitMQ's `fail_if_no_peer_cert`; needs --tls-ca). Config:
    /// `fail_if_no_peer_cert` in `[tls]`.
    #[arg(long)]
    tls_fail_if_no_peer_cert: bool,
    /// Which user SASL EXTERNAL logs in: the client certificate subject's
    /// full distinguished name as RabbitMQ prints it (e.g.
    /// `CN=client,O=Example,C=UK`), or its common name (RabbitMQ's
    /// `ssl_cert_login_from`). Config: `ssl_cert_login_from` in `[tls]`.
    /// Default: distinguished_name.
    #[arg(long, value_name = "distinguished_name|common_name")]
    ssl_cert_login_from: Option<String>,
    /// Seconds a TLS handshake may take before the connection is closed.
    /// Config: `handshake_timeout` (ms) in `[tls]`. Default: 10.
    #[arg(long, value_name = "SECS")]
    tls_handshake_timeout: Option<f64>,
    /// Keep every message of every queue in memory: no paging of long
    /// queues to the data directory's `paging/` (by default a queue keeps
    /// 16,384 messages or 16 MiB in memory and pages the rest once all
    /// queues' ready messages hold more than half the memory high
    /// watermark, `memory_budget` in `[paging]`). Config: `enabled =
    /// false` in `[paging]`.
    #[arg(long)]
    no_paging: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Prints PASSWORD hashed as RabbitMQ stores it (base64 of a random
    /// 4-byte salt and the digest of salt and password), for the
    /// `password_hash` of a `[[users]]` entry in the config file.
    HashPassword {
        /// The password.
        password: String,
        /// rabbit_password_hashing_sha256 (default), _sha512 or _md5.
        #[arg(long, default_value = "rabbit_password_hashing_sha256")]
        algorithm: String,
    },
    /// Writes the broker's definitions (users, vhosts, permissions,
    /// policies, durable exchanges, queues and bindings) as a RabbitMQ
    /// definitions export, from the data directory (`--data-dir`, before
    /// the subcommand), to FILE or standard output. Works while the broker
    /// runs (the file is replaced atomically); a running broker also
    /// serves it at `GET /api/definitions`.
    ExportDefinitions {
        /// Where to write it (default: standard output).
        file: Option<PathBuf>,
    },
}

/// `ADDR` or `none`.
fn optional_addr(flag: &str, v: &str) -> Result<Option<SocketAddr>, String> {
    if v.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|e| format!("--{flag} {v}: {e} (an address such as 127.0.0.1:15672, or none)"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::ExportDefinitions { file }) = &args.command {
        return export_definitions(&args.data_dir, file.as_deref());
    }
    if let Some(Command::HashPassword {
        password,
        algorithm,
    }) = &args.command
    {
        let algo = match HashAlgorithm::from_name(Some(algorithm)) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("amqp-broker: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "{}",
            Password::hash(password, amqp_broker::auth::random_salt(), algo)
        );
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    let config = match &args.config {
        None => Config::default(),
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("amqp-broker: cannot read {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            };
            match Config::parse(&text) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("amqp-broker: {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let tls = match tls_settings(&args, &config) {
        Ok(None) => None,
        Ok(Some((addrs, settings))) => match Tls::new(settings) {
            Ok(t) => Some((addrs, t)),
            Err(e) => {
                eprintln!("amqp-broker: {e}");
                return ExitCode::FAILURE;
            }
        },
        Err(e) => {
            eprintln!("amqp-broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut core_config = match config.core() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("amqp-broker: configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let definitions = match &args.definitions {
        None => None,
        Some(path) => {
            let read = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| Definitions::from_json(&t));
            match read.and_then(|d| d.apply(&mut core_config).map(|()| d)) {
                Ok(d) => Some(d),
                Err(e) => {
                    eprintln!("amqp-broker: {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    // The data directory: once it holds state, that state is authoritative
    // (the --definitions topology seeds only an empty broker, and the users,
    // vhosts and permissions saved there replace the configuration's).
    let data = match DataDir::open(&args.data_dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "amqp-broker: data directory {}: {e}",
                args.data_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let saved = match std::fs::read_to_string(data.definitions()) {
        Ok(text) => match Definitions::from_json(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!(
                    "amqp-broker: {}: {e} (move it away to start from --definitions)",
                    data.definitions().display()
                );
                return ExitCode::FAILURE;
            }
        },
        Err(_) => None,
    };
    if let Some(d) = saved.as_ref().filter(|d| d.has_auth)
        && let Err(e) = d.restore(&mut core_config)
    {
        eprintln!("amqp-broker: {}: {e}", data.definitions().display());
        return ExitCode::FAILURE;
    }
    let mut core = Core::new(core_config);
    // Paging before any queue exists (pages of an earlier run are stale:
    // the message store has every persistent message).
    let mut paging = config.paging.clone().unwrap_or_default();
    if args.no_paging {
        paging.enabled = Some(false);
    }
    let sizes = match paging.paging() {
        Ok(sizes) => sizes,
        Err(e) => {
            eprintln!("amqp-broker: configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(mut sizes) = sizes {
        // By default queues page only past half the memory high
        // watermark, as RabbitMQ's paging ratio has them.
        if paging.memory_budget.is_none() {
            sizes.memory_budget = alarm_limits(&args)
                .ok()
                .and_then(|l| l.memory)
                .map_or(0, |m| usize::try_from(m / 2).unwrap_or(usize::MAX));
        }
        tracing::info!(
            window_messages = sizes.window_messages,
            memory_budget = sizes.memory_budget,
            "paging"
        );
        match amqp_broker::paging::BackgroundPages::open(&data.paging()) {
            // Recovered messages page as where they are in the store.
            Ok(pages) => core.set_pager(
                amqp_broker::paging::Pager::new(Box::new(pages), sizes).with_records(Box::new(
                    store::Segments::new(store::RealDisk, &data.messages()),
                )),
            ),
            Err(e) => {
                eprintln!(
                    "amqp-broker: paging directory {}: {e}",
                    data.paging().display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    // The wall clock first: recovered TTLs count from their arrival.
    core.set_clock_ms(
        std::time::Instant::now(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    );
    let topology = saved.as_ref().or(definitions.as_ref());
    if let Some(d) = topology {
        match core.load_topology(&d.topology) {
            Ok(warnings) => {
                for w in warnings {
                    tracing::warn!("definitions: {w}");
                }
            }
            Err(e) => {
                eprintln!("amqp-broker: definitions: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let started = std::time::Instant::now();
    let clean = data.take_clean_mark();
    // Persistence first: what recovery records (removals for queues that
    // are gone, delivery markers after an unclean shutdown) is written.
    core.enable_persistence();
    // Messages stream from the store into their queues, one chunk of a
    // segment in memory at a time; beyond a queue's window they page as
    // where they are in the store.
    let mut messages = 0usize;
    let mut recovered = match store::recover_each_on(&store::RealDisk, &data.messages(), |q, m| {
        messages += usize::from(core.recover_message(q, m, !clean));
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("amqp-broker: reading {}: {e}", data.messages().display());
            return ExitCode::FAILURE;
        }
    };
    core.finish_recovery(recovered.next_id);
    for w in &recovered.warnings {
        tracing::warn!("message store: {w}");
    }
    let live = std::mem::take(&mut recovered.live);
    let records = recovered.records;
    if !clean && records > 0 {
        tracing::warn!(
            "the last run did not shut down cleanly: recovered messages are flagged redelivered"
        );
    }
    if records > 0 {
        tracing::info!(
            "recovered {messages} persistent messages ({records} records) in {:?}",
            started.elapsed()
        );
    }
    let log = match store::Log::open(&data.messages(), live) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "amqp-broker: opening the message store in {}: {e}",
                data.messages().display()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut server = ServerConfig {
        properties: server_properties(config.product.as_deref().unwrap_or("amqp-broker")),
        mechanisms: LongString::from_static("PLAIN AMQPLAIN"),
        ..ServerConfig::default()
    };
    if let Some(h) = config.heartbeat {
        server.heartbeat = h;
    }
    if let Some(f) = config.frame_max {
        server.frame_max = f;
    }
    if let Some(c) = config.channel_max {
        server.channel_max = c;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // A connection task that routes a publish wakes its consumers' tasks;
    // tokio puts a task woken from a worker in that worker's LIFO slot,
    // which no other worker may take (tokio-rs/tokio#4941), so the
    // consumer waited for the publisher's task to yield while the second
    // worker idled. Without the slot a woken task goes to the worker's
    // queue, which the other worker steals from: in A/B runs 16 B went
    // from 481-503k to 545-572k msg/s, 1 KiB from 315k to 349-364k,
    // confirms from 177-189k to 192-204k. It costs where each round trip
    // is small: one producer with 100 unconfirmed publishes lost 14%
    // (314-322k to 268-277k), the other worker woken for little work
    // (README, Performance). The option is behind tokio's
    // `tokio_unstable` cfg, which the workspace's `.cargo/config.toml`
    // sets; a build without it keeps the slot.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("amqp-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shared = Shared::new(core, server, true);
    let store = {
        let shared = shared.clone();
        let defs = data.definitions();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || store_thread(shared, log, defs))
            .expect("spawn the store thread")
    };
    let code = runtime.block_on(run(args, shared.clone(), tls));
    // Shutdown: what the store has is written, then the mark that lets the
    // next start trust the delivery markers.
    shared.close_store();
    if store.join().unwrap_or(false) {
        data.set_clean_mark();
    }
    code
}

/// The TLS listener's addresses and settings from the flags and the
/// `[tls]` section (flags win); `None` without a certificate.
fn tls_settings(
    args: &Args,
    config: &Config,
) -> Result<Option<(Vec<SocketAddr>, Settings)>, String> {
    let def = config.tls.clone().unwrap_or_default();
    // Paths in the config file are relative to it.
    let base = args
        .config
        .as_deref()
        .and_then(std::path::Path::parent)
        .unwrap_or(std::path::Path::new(""));
    let from_file = |p: &Option<PathBuf>| p.as_ref().map(|p| base.join(p));
    let cert = args.tls_cert.clone().or_else(|| from_file(&def.cert));
    let key = args.tls_key.clone().or_else(|| from_file(&def.key));
    let ca = args.tls_ca.clone().or_else(|| from_file(&def.ca));
    let Some(cert) = cert else {
        let given = [
            (
                !args.tls_listen.is_empty() || !def.listen.is_empty(),
                "--tls-listen",
            ),
            (key.is_some(), "--tls-key"),
            (ca.is_some(), "--tls-ca"),
            (args.tls_fail_if_no_peer_cert, "--tls-fail-if-no-peer-cert"),
        ];
        if let Some((_, flag)) = given.iter().find(|(g, _)| *g) {
            return Err(format!(
                "{flag} (or its key in [tls]) needs a certificate: give --tls-cert FILE (or cert in [tls])"
            ));
        }
        return Ok(None);
    };
    let Some(key) = key else {
        return Err(format!(
            "the TLS certificate {} needs its private key: give --tls-key FILE (or key in [tls])",
            cert.display()
        ));
    };
    let login_from = match args
        .ssl_cert_login_from
        .as_deref()
        .or(def.ssl_cert_login_from.as_deref())
    {
        None => LoginFrom::default(),
        Some(s) => LoginFrom::parse(s)?,
    };
    let handshake_timeout = match (args.tls_handshake_timeout, def.handshake_timeout) {
        (Some(s), _) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
        (Some(s), _) => return Err(format!("--tls-handshake-timeout {s}: must be positive")),
        (None, Some(ms)) if ms > 0 => Duration::from_millis(ms),
        (None, Some(_)) => return Err("handshake_timeout in [tls]: must be positive".into()),
        (None, None) => tls::HANDSHAKE_TIMEOUT,
    };
    let addrs = if !args.tls_listen.is_empty() {
        args.tls_listen.clone()
    } else if !def.listen.is_empty() {
        def.listen.clone()
    } else {
        vec![SocketAddr::from(([0, 0, 0, 0], 5671))]
    };
    Ok(Some((
        addrs,
        Settings {
            cert,
            key,
            ca,
            fail_if_no_peer_cert: args.tls_fail_if_no_peer_cert
                || def.fail_if_no_peer_cert.unwrap_or(false),
            login_from,
            handshake_timeout,
        },
    )))
}

async fn run(
    args: Args,
    shared: std::sync::Arc<Shared>,
    tls: Option<(Vec<SocketAddr>, Arc<Tls>)>,
) -> ExitCode {
    let explicit = !args.listen.is_empty();
    let addrs = if explicit {
        args.listen.clone()
    } else {
        vec![
            SocketAddr::from(([127, 0, 0, 1], 5672)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5672)),
        ]
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = Arc::new(tokio::sync::Mutex::new(tokio::task::JoinSet::new()));
    let mut listeners = 0;
    let mut addrs_shown = Vec::new();
    for addr in addrs {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!("listening on {addr}");
                listeners += 1;
                addrs_shown.push(addr);
                tokio::spawn(accept_loop(
                    l,
                    shared.clone(),
                    stop_rx.clone(),
                    tasks.clone(),
                ));
            }
            Err(e) if explicit || addr.is_ipv4() => {
                eprintln!(
                    "amqp-broker: cannot listen on {addr}: {e} (is another broker running there? choose another address with --listen)"
                );
                return ExitCode::FAILURE;
            }
            Err(e) => tracing::warn!("not listening on {addr}: {e}"),
        }
    }
    if listeners == 0 {
        eprintln!("amqp-broker: no address to listen on");
        return ExitCode::FAILURE;
    }
    if let Some((addrs, tls)) = tls {
        for addr in addrs {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!("listening for TLS (amqps) on {addr}");
                    tokio::spawn(accept_tls_loop(
                        l,
                        tls.clone(),
                        shared.clone(),
                        stop_rx.clone(),
                        tasks.clone(),
                    ));
                }
                Err(e) => {
                    eprintln!(
                        "amqp-broker: cannot listen for TLS on {addr}: {e} (choose another address with --tls-listen)"
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
        tokio::spawn(reload_on_sighup(tls));
    }
    let _ = &args.data_dir;
    tokio::spawn(timer_loop(shared.clone(), stop_rx.clone()));
    match alarm_limits(&args) {
        Ok(limits) => {
            tracing::info!(
                memory_high_watermark = limits.memory,
                disk_free_limit = limits.disk_free,
                "resource alarms"
            );
            tokio::spawn(amqp_broker::alarms::monitor(
                shared.clone(),
                limits,
                stop_rx.clone(),
            ));
        }
        Err(e) => {
            eprintln!("amqp-broker: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = start_management(&args, &addrs_shown, &shared, &stop_rx).await {
        eprintln!("amqp-broker: {e}");
        return ExitCode::FAILURE;
    }
    wait_for_signal().await;
    tracing::info!("shutting down: closing every connection");
    let _ = stop_tx.send(true);
    let mut set = std::mem::take(&mut *tasks.lock().await);
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some connections did not close within 5 s");
    }
    ExitCode::SUCCESS
}

/// Starts the management API, its rate sampler and the Prometheus
/// exporter, as the flags say.
async fn start_management(
    args: &Args,
    amqp: &[SocketAddr],
    shared: &Arc<Shared>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let flag = |name: &str, v: &Option<String>, default: &str| {
        optional_addr(name, v.as_deref().unwrap_or(default)).map(|a| (a, v.is_some()))
    };
    let (management, m_explicit) = flag("management", &args.management, "127.0.0.1:15672")?;
    let (prometheus, p_explicit) = flag("prometheus", &args.prometheus, "127.0.0.1:15692")?;
    if management.is_none() && prometheus.is_none() {
        return Ok(());
    }
    let interval = args.management_sample_interval;
    if !(interval.is_finite() && interval > 0.0) {
        return Err(format!(
            "--management-sample-interval {interval}: must be positive"
        ));
    }
    let config = management::Config {
        sample_interval: Duration::from_secs_f64(interval),
        amqp_listeners: amqp.to_vec(),
        management,
        prometheus,
        ..management::Config::default()
    };
    let m = management::Management::new(shared.clone(), config);
    for (addr, explicit, router, what) in [
        (
            management,
            m_explicit,
            management::router(m.clone()),
            "management API",
        ),
        (
            prometheus,
            p_explicit,
            management::prometheus_router(m.clone()),
            "Prometheus metrics",
        ),
    ] {
        let Some(addr) = addr else { continue };
        let l = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) if explicit => {
                return Err(format!(
                    "cannot listen on {addr} for the {what}: {e} (choose another address, or none)"
                ));
            }
            Err(e) => {
                tracing::warn!("no {what}: cannot listen on {addr}: {e}");
                continue;
            }
        };
        tracing::info!("{what} on http://{addr}");
        tokio::spawn(management::serve(l, router, stop.clone()));
    }
    tokio::spawn(management::sample_loop(m, stop.clone()));
    Ok(())
}

/// Reloads the TLS files on each SIGHUP; connections keep their session,
/// new ones get the new certificate. A failed reload keeps the old one.
async fn reload_on_sighup(tls: Arc<Tls>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("no SIGHUP handler: TLS certificates are not reloadable");
            return;
        };
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate, key and CA files reloaded"),
                Err(e) => {
                    tracing::error!("SIGHUP: {e}; the TLS listener keeps the previous certificate")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The data directory, locked for this process.
struct DataDir {
    path: PathBuf,
    _lock: std::fs::File,
}

impl DataDir {
    fn open(path: &std::path::Path) -> Result<DataDir, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join("lock"))
            .map_err(|e| e.to_string())?;
        lock.try_lock().map_err(|_| {
            "another amqp-broker is using it (choose another with --data-dir)".to_owned()
        })?;
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    fn definitions(&self) -> PathBuf {
        self.path.join("definitions.json")
    }

    fn messages(&self) -> PathBuf {
        self.path.join("messages")
    }

    fn paging(&self) -> PathBuf {
        self.path.join("paging")
    }

    /// Whether the last run shut down cleanly (and forgets it: a crash of
    /// this run must not look clean).
    fn take_clean_mark(&self) -> bool {
        let mark = self.path.join("clean-shutdown");
        let clean = mark.exists();
        if clean {
            let _ = std::fs::remove_file(&mark);
            let _ = std::fs::File::open(&self.path).and_then(|d| d.sync_all());
        }
        clean
    }

    fn set_clean_mark(&self) {
        let _ = store::write_atomically(&self.path.join("clean-shutdown"), b"");
    }
}

/// The alarm monitor's limits from the command line.
fn alarm_limits(args: &Args) -> Result<amqp_broker::alarms::Limits, String> {
    use amqp_broker::alarms::{parse_size, total_memory};
    let memory = match &args.vm_memory_high_watermark_absolute {
        Some(s) => {
            Some(parse_size(s).map_err(|e| format!("--vm-memory-high-watermark-absolute: {e}"))?)
        }
        None => {
            let f = args.vm_memory_high_watermark;
            if !(0.0..=1.0).contains(&f) {
                return Err(format!(
                    "--vm-memory-high-watermark: {f} is not a fraction from 0 to 1"
                ));
            }
            total_memory().map(|t| (t as f64 * f) as u64)
        }
    };
    Ok(amqp_broker::alarms::Limits {
        memory,
        disk_free: parse_size(&args.disk_free_limit)
            .map_err(|e| format!("--disk-free-limit: {e}"))?,
        data_dir: args.data_dir.clone(),
    })
}

/// `amqp-broker export-definitions`: the data directory's saved
/// definitions, checked, to `file` or standard output.
fn export_definitions(data_dir: &std::path::Path, file: Option<&std::path::Path>) -> ExitCode {
    let path = data_dir.join("definitions.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "amqp-broker: {}: {e} (nothing saved in {} yet: start the broker on it \
                 once, or give the right --data-dir before the subcommand)",
                path.display(),
                data_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = Definitions::from_json(&text) {
        eprintln!("amqp-broker: {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let written = match file {
        Some(f) => {
            store::write_atomically(f, text.as_bytes()).map_err(|e| format!("{}: {e}", f.display()))
        }
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(|e| e.to_string())
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amqp-broker: writing the export: {e}");
            ExitCode::FAILURE
        }
    }
}
