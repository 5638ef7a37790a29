//! The tokio server around the [`core`](crate::core): listeners, one task
//! per connection, timers and shutdown.
//!
//! Each connection task owns its [`Connection`] (the codec's server role)
//! and its socket. Input is fed to the codec; the events that come out go
//! to the core in one batch under its lock; what the core says this
//! connection must do is applied to the codec; the bytes the codec
//! transmits are written with vectored writes. Connections the core woke
//! (deliveries to their consumers) are notified and take their own output
//! the same way.

use crate::core::{ConnId, Core, Peer};
use crate::tls::Tls;
use amqp_codec::types::ReplyCode;
use amqp_codec::{Connection, Event, ServerConfig};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// The most a connection reads at once.
const READ_BUFFER: usize = 128 * 1024;
/// What a connection reads at once to begin with (an idle connection
/// keeps no more): reads that fill the buffer double it up to
/// [`READ_BUFFER`], small ones halve it back.
const READ_BUFFER_MIN: usize = 1024;

/// The reply text RabbitMQ closes connections with when it shuts down.
pub const SHUTDOWN_TEXT: &str =
    "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'";

/// What every connection task shares.
pub struct Shared {
    core: Mutex<Core>,
    /// A store thread ([`store_thread`]) takes the core's records.
    store: bool,
    /// Wakes the store thread, which waits on it with the core's lock,
    /// when there is work for it.
    store_wake: Condvar,
    /// The store thread waits for work (set and read under the core's
    /// lock, so that a wake is never lost).
    store_idle: AtomicBool,
    /// Shutdown: the store thread finishes what the core has and stops
    /// (set under the core's lock).
    store_closed: AtomicBool,
    /// Wakes the timer task when the core's earliest deadline changed.
    timer: Notify,
    wakers: Mutex<HashMap<ConnId, Arc<Notify>>>,
    next_id: AtomicU64,
    config: ServerConfig,
    /// The message store failed to write or sync: the disk alarm stays.
    pub store_failed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// State shared by the connections of one broker; `store`: a
    /// [`store_thread`] will take the core's records (without one they
    /// are dropped).
    pub fn new(core: Core, config: ServerConfig, store: bool) -> Arc<Self> {
        Arc::new(Shared {
            core: Mutex::new(core),
            store,
            store_wake: Condvar::new(),
            store_idle: AtomicBool::new(false),
            store_closed: AtomicBool::new(false),
            timer: Notify::new(),
            wakers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            config,
            store_failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// What the core has for the timer and the store after a call, seen
    /// under its lock; [`Shared::after`] acts on it once the lock is free.
    /// Returns whether the store thread must be woken.
    fn take_side_work(&self, core: &mut Core) -> bool {
        if core.take_timers_changed() {
            self.timer.notify_one();
        }
        if !self.store {
            core.take_store_ops();
            core.take_definitions();
            return false;
        }
        core.has_store_work() && self.store_idle.load(Ordering::Relaxed)
    }

    fn after(&self, wake_store: bool) {
        if wake_store {
            self.store_wake.notify_one();
        }
    }

    /// Lets the store thread finish: it writes what the core has, then
    /// stops.
    pub fn close_store(&self) {
        {
            let _core = self.core();
            self.store_closed.store(true, Ordering::Relaxed);
        }
        self.store_wake.notify_one();
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock is a bug; the state is still the
        // best there is, so keep serving.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the core under its lock (the management API's reads and
    /// admin operations), then hands the timer and the store what it left
    /// them and wakes the connections it gave output to.
    pub fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        let (r, woken, side) = {
            let mut core = self.core();
            let r = f(&mut core);
            let side = self.take_side_work(&mut core);
            (r, core.take_woken(), side)
        };
        self.after(side);
        self.wake(&woken);
        r
    }

    fn wakers(&self) -> MutexGuard<'_, HashMap<ConnId, Arc<Notify>>> {
        self.wakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, ids: &[ConnId]) {
        if ids.is_empty() {
            return;
        }
        let w = self.wakers();
        for id in ids {
            if let Some(n) = w.get(id) {
                n.notify_one();
            }
        }
    }
}

/// Runs the core's deadlines (message expiry at queue heads, `x-expires`)
/// until `shutdown` turns true, waking the connections they concern.
pub async fn timer_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        shared.core().set_clock_ms(Instant::now(), unix_ms);
    }
    loop {
        let next = shared.core().poll_timeout();
        let sleep = async {
            match next {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {
                let (woken, side) = {
                    let mut core = shared.core();
                    core.handle_timeout(Instant::now());
                    let side = shared.take_side_work(&mut core);
                    (core.take_woken(), side)
                };
                shared.after(side);
                shared.wake(&woken);
            }
            _ = shared.timer.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Accepts connections on `listener` until `shutdown` turns true.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    tasks: Arc<tokio::sync::Mutex<tokio::task::JoinSet<()>>>,
) {
    accept_on(listener, None, shared, shutdown, tasks).await;
}

/// Accepts TLS connections (`amqps://`) on `listener` until `shutdown`
/// turns true; each gets the configuration `tls` has when it connects.
pub async fn accept_tls_loop(
    listener: TcpListener,
    tls: Arc<Tls>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    tasks: Arc<tokio::sync::Mutex<tokio::task::JoinSet<()>>>,
) {
    accept_on(listener, Some(tls), shared, shutdown, tasks).await;
}

async fn accept_on(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    tasks: Arc<tokio::sync::Mutex<tokio::task::JoinSet<()>>>,
) {
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    let tls = tls.clone();
                    tasks.lock().await.spawn(async move {
                        match tls {
                            None => serve(stream, peer, shared, shutdown).await,
                            // (Boxed: a plain connection's task is not
                            // sized for a TLS handshake.)
                            Some(tls) => Box::pin(serve_tls(stream, peer, &tls, shared, shutdown)).await,
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// Serves one plain TCP connection until it closes.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer); // management
    let who = Peer {
        loopback: peer.ip().is_loopback(),
        tls_identity: None,
        tls: None,
    };
    let config = shared.config.clone();
    serve_stream(stream, peer, local, who, config, shared, shutdown).await;
}

/// Serves one TLS connection: the handshake (at most the configured
/// handshake timeout; a failure closes this connection with a log line),
/// then AMQP as on plain TCP. A verified client certificate adds
/// `EXTERNAL` to the mechanisms offered, for the user it names.
pub async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &Tls,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    let limit = tls.settings().handshake_timeout;
    let stream = tokio::select! {
        r = tokio::time::timeout(limit, acceptor.accept(stream)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                // Closed before a handshake: port probes, health checks.
                tracing::debug!(%peer, "TLS connection closed during the handshake: {e}");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(%peer, "TLS handshake failed, connection closed: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "TLS handshake not done within {limit:?}, connection closed");
                return;
            }
        },
        _ = shutdown.changed() => return,
    };
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    let tls_identity = cert.as_deref().and_then(|c| tls.identity(c));
    let mut config = shared.config.clone();
    if cert.is_some() {
        tracing::info!(%peer, identity = ?tls_identity, "TLS client certificate verified");
        let offered = config.mechanisms.to_string_lossy().into_owned();
        if !offered.split(' ').any(|m| m == "EXTERNAL") {
            config.mechanisms = amqp_codec::types::LongString::from(format!("{offered} EXTERNAL"));
        }
    }
    let who = Peer {
        loopback: peer.ip().is_loopback(),
        tls_identity,
        tls: Some(crate::tls::Session::of(stream.get_ref().1)),
    };
    serve_stream(stream, peer, local, who, config, shared, shutdown).await;
}

/// Serves one connection over any byte stream until it closes.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    who: Peer,
    config: ServerConfig,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let notify = Arc::new(Notify::new());
    shared.wakers().insert(id, notify.clone());
    shared.core().connect(id, who);
    shared.with_core(|c| c.set_conn_info(id, peer, local, crate::management::unix_ms()));
    tracing::info!(conn = id, %peer, "connection accepted");
    let mut conn = Connection::server(config, Instant::now());
    let mut want = READ_BUFFER_MIN;
    let mut buf = BytesMut::with_capacity(want);
    let mut segments: Vec<Bytes> = Vec::new();
    let mut closing = *shutdown.borrow();
    if closing {
        let _ = conn.close(ReplyCode::CONNECTION_FORCED, SHUTDOWN_TEXT);
    }
    let mut eof = false;
    let mut blocked = false;
    let mut close_seen = false;
    loop {
        let (cause, now_blocked, held) = run(&shared, id, &mut conn);
        if !close_seen && let Some(reason) = conn.close_sent() {
            // A refusal the codec made itself (an unknown mechanism) is
            // logged as a refused login.
            close_seen = true;
            let text = reason.text.to_string_lossy();
            shared.with_core(|c| c.log_refused_mechanism(id, &text));
        }
        if now_blocked != blocked {
            // A resource alarm: nothing more is read from this publisher
            // (TCP pushes back) until it clears; its silence meanwhile is
            // not a missed heartbeat.
            blocked = now_blocked;
            conn.pause_peer_monitor(blocked);
            tracing::info!(conn = id, %peer, blocked, "publisher flow");
        }
        // Write everything the codec has for the peer.
        segments.extend(std::iter::from_fn(|| conn.poll_transmit()));
        if let Err(e) = write_all(&mut stream, &mut segments).await {
            tracing::debug!(conn = id, "write failed: {e}");
            conn.handle_eof();
            let _ = run(&shared, id, &mut conn);
            break;
        }
        if let Some(cause) = cause {
            tracing::info!(conn = id, %peer, "connection closed: {cause:?}");
            break;
        }
        if conn.is_closed() || eof {
            break;
        }
        // Everything is written: consumers held back for this connection
        // may take more.
        let resumed = shared.core().resume(id);
        if resumed {
            continue;
        }
        if buf.capacity() - buf.len() < READ_BUFFER_MIN / 4 {
            buf.reserve(want);
        }
        let room = buf.capacity() - buf.len();
        let deadline = conn.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = stream.read_buf(&mut buf), if !blocked && !held => match r {
                Ok(0) | Err(_) => {
                    conn.handle_eof();
                    eof = true;
                }
                Ok(n) => {
                    if n == room {
                        want = (want * 2).min(READ_BUFFER);
                    } else if n < want / 4 {
                        want = (want / 2).max(READ_BUFFER_MIN);
                    }
                    conn.handle_input(buf.split().freeze());
                }
            },
            _ = notify.notified() => {}
            _ = sleep => conn.handle_timeout(Instant::now()),
            r = shutdown.changed(), if !closing => {
                if r.is_err() || *shutdown.borrow() {
                    closing = true;
                    let _ = conn.close(ReplyCode::CONNECTION_FORCED, SHUTDOWN_TEXT);
                }
            }
        }
    }
    let _ = stream.shutdown().await;
    shared.wakers().remove(&id);
    shared.core().disconnect(id);
}

/// Moves events to the core and the core's output to the codec until both
/// are quiet; returns the cause if the connection ended, whether a
/// resource alarm blocks it, and whether consumer bias holds it
/// ([`FLOW_HOLD`](crate::core::FLOW_HOLD)).
fn run(
    shared: &Shared,
    id: ConnId,
    conn: &mut Connection,
) -> (Option<amqp_codec::CloseCause>, bool, bool) {
    thread_local! {
        /// The events of one turn on their way to the core: kept per
        /// worker thread (run never waits, so no other connection uses
        /// it meanwhile), so that a connection's events do not grow a new
        /// vector every turn, nor leave one behind.
        static EVENTS: std::cell::Cell<Vec<Event>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut closed = None;
    let mut events = EVENTS.take();
    // The last turn's emptied outbox, handed back to the core next turn.
    let mut emptied: Option<Vec<crate::core::Out>> = None;
    let r = loop {
        events.clear();
        while events.len() < TURN_EVENTS
            && let Some(e) = conn.poll_event()
        {
            if let Event::Closed { cause } = &e {
                closed = Some(cause.clone());
            }
            events.push(e);
        }
        let had_events = !events.is_empty();
        let (outs, woken, side, blocked, held) = {
            let mut core = shared.core();
            if let Some(v) = emptied.take() {
                core.recycle_outbox(v);
            }
            if had_events {
                core.handle(id, events.drain(..), Instant::now());
            }
            let side = shared.take_side_work(&mut core);
            (
                core.take_outbox(id),
                core.take_woken(),
                side,
                core.is_blocked(id),
                core.is_held(id),
            )
        };
        shared.after(side);
        shared.wake(&woken);
        if !had_events && outs.is_empty() {
            break (closed, blocked, held);
        }
        let mut outs = outs;
        for out in outs.drain(..) {
            if let Err(e) = out.apply_to(conn) {
                // The channel or connection closed meanwhile.
                tracing::debug!(conn = id, "not sent: {e}");
            }
        }
        emptied = Some(outs);
    };
    // (A turn of many events leaves a large vector: not kept.)
    if events.capacity() <= EVENTS_KEPT {
        EVENTS.set(events);
    }
    r
}

/// The most events handed to the core under one hold of its lock: the
/// connections it wakes (consumers of what was published) start writing
/// while this one goes on, rather than after the whole of a large read.
const TURN_EVENTS: usize = 256;

/// Events of one turn whose room a worker thread keeps for the next.
const EVENTS_KEPT: usize = 4096;

/// Writes the segments with vectored writes, then flushes (TLS keeps
/// what it encrypted until then; TCP has nothing to flush).
async fn write_all<W: AsyncWrite + Unpin>(
    wr: &mut W,
    segments: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let mut start = 0;
    while start < segments.len() {
        let slices: Vec<IoSlice<'_>> = segments[start..]
            .iter()
            .take(64)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && start < segments.len() {
            let len = segments[start].len();
            if n >= len {
                n -= len;
                start += 1;
            } else {
                let rest = segments[start].split_off(n);
                segments[start] = rest;
                n = 0;
            }
        }
    }
    segments.clear();
    wr.flush().await
}

/// What the store thread writes in one turn: records, the numbers they
/// cover, a new snapshot of the durable topology if it changed.
#[derive(Debug)]
pub struct StoreBatch {
    /// Records to append (fewer than the numbers they cover where the
    /// core left out messages gone before they were taken).
    pub records: Vec<crate::store::Record>,
    /// The core's numbers these records cover (empty: none).
    pub numbers: std::ops::RangeInclusive<u64>,
    /// The durable topology, as a definitions export.
    pub definitions: Option<String>,
}

impl Default for StoreBatch {
    fn default() -> Self {
        StoreBatch {
            records: Vec::new(),
            numbers: NO_NUMBERS,
            definitions: None,
        }
    }
}

/// An empty range of record numbers.
#[allow(clippy::reversed_empty_ranges)]
const NO_NUMBERS: std::ops::RangeInclusive<u64> = 1..=0;

impl StoreBatch {
    /// Takes what the core has for the store.
    fn take(core: &mut Core) -> StoreBatch {
        let (records, numbers) = core.take_store_ops().unwrap_or((Vec::new(), NO_NUMBERS));
        StoreBatch {
            records,
            numbers,
            definitions: core.take_definitions(),
        }
    }

    /// Writes it: the topology snapshot, then the records, synced.
    /// `written` is the number of the last record written before; the
    /// batch must follow it. Returns the number to hand to
    /// [`Core::durable`], if any.
    fn write(
        &self,
        log: &mut crate::store::Log,
        definitions: &std::path::Path,
        written: &mut u64,
    ) -> std::io::Result<Option<u64>> {
        if let Some(d) = &self.definitions {
            crate::store::write_atomically(definitions, d.as_bytes())?;
        }
        if self.numbers.is_empty() {
            return Ok(None);
        }
        let (first, last) = (*self.numbers.start(), *self.numbers.end());
        if first != *written + 1 {
            // Writing them would let a sync release confirms for records
            // that were never written.
            return Err(std::io::Error::other(format!(
                "records {first} to {last} do not follow record {written} \
                 (a bug in the broker: please report it)"
            )));
        }
        if !self.records.is_empty() {
            log.append(&self.records)?;
            log.sync()?;
        }
        *written = last;
        Ok(Some(last))
    }
}

/// The store thread: takes what the core has for the store (under its
/// lock, so in the order the core made it), writes it with one
/// `fdatasync` (group commit: while it syncs, the connections' next
/// records gather in the core and share the next sync), then releases
/// their confirms. It sleeps while there is nothing to write, woken by
/// the connection that adds some. On a write or sync
/// error it logs, raises the disk alarm and writes nothing more: confirms
/// are withheld from then on rather than given for what may not be on
/// disk. At shutdown ([`Shared::close_store`]) it writes what is left
/// and returns whether everything was written and synced.
pub fn store_thread(
    shared: Arc<Shared>,
    mut log: crate::store::Log,
    definitions: std::path::PathBuf,
) -> bool {
    // The core numbers its records from 1 without a gap: the last one
    // written, to check that each batch follows it.
    let mut written = 0u64;
    let mut failed = false;
    loop {
        let batch = {
            let mut core = shared.core();
            while !core.has_store_work() {
                if shared.store_closed.load(Ordering::Relaxed) {
                    return !failed;
                }
                shared.store_idle.store(true, Ordering::Relaxed);
                core = shared
                    .store_wake
                    .wait(core)
                    .unwrap_or_else(|p| p.into_inner());
                shared.store_idle.store(false, Ordering::Relaxed);
            }
            StoreBatch::take(&mut core)
        };
        if failed {
            // Taken only so that they do not pile up in the core.
            continue;
        }
        match batch.write(&mut log, &definitions, &mut written) {
            Ok(durable) => {
                let mut records = batch.records;
                records.clear(); // (outside the lock)
                let woken = {
                    let mut core = shared.core();
                    if let Some(upto) = durable {
                        core.durable(upto);
                    }
                    core.recycle_store_ops(records);
                    core.take_woken()
                };
                shared.wake(&woken);
            }
            Err(e) => {
                tracing::error!(
                    "message store: {e}: no further publisher confirms or transaction commits \
                     will be sent; publishers are blocked (disk alarm); stop the broker and \
                     fix the cause (a full or failing disk) before restarting it"
                );
                shared.store_failed.store(true, Ordering::Relaxed);
                let woken = {
                    let mut core = shared.core();
                    core.set_alarm(crate::core::Alarm::Disk, true);
                    core.take_woken()
                };
                shared.wake(&woken);
                failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Shared, StoreBatch, store_thread};
    use crate::core::{Core, CoreConfig};
    use crate::store::{Liveness, Log, Record, queue_key};

    fn batch(ids: std::ops::RangeInclusive<u64>) -> StoreBatch {
        let q = queue_key("/", "q".try_into().unwrap());
        StoreBatch {
            records: ids
                .clone()
                .map(|id| Record::Remove {
                    id,
                    queue: q.clone(),
                })
                .collect(),
            numbers: ids,
            definitions: None,
        }
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("amqp-store-thread-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_that_do_not_follow_the_last_written_are_refused() {
        let dir = temp("gap");
        let mut log = Log::open(&dir.join("messages"), Liveness::default()).expect("open the log");
        let defs = dir.join("definitions.json");
        let mut written = 0;
        let r = batch(1..=2).write(&mut log, &defs, &mut written);
        assert_eq!(r.expect("in order"), Some(2));
        // Numbers whose records were all left out: nothing to write, but
        // their confirms may go.
        let mut empty = batch(3..=4);
        empty.records.clear();
        let r = empty.write(&mut log, &defs, &mut written);
        assert_eq!(r.expect("in order"), Some(4));
        // Record 5 never came: 6 and 7 are not written and nothing is
        // released.
        let r = batch(6..=7).write(&mut log, &defs, &mut written);
        assert!(r.is_err(), "a gap must stop the store");
        assert_eq!(written, 4);
        // A batch of no numbers (only a topology snapshot) releases none.
        let r = StoreBatch::default().write(&mut log, &defs, &mut written);
        assert_eq!(r.expect("nothing to check"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_store_thread_writes_what_is_left_when_closed() {
        let dir = temp("close");
        let log = Log::open(&dir.join("messages"), Liveness::default()).expect("open the log");
        let defs = dir.join("definitions.json");
        let shared = Shared::new(Core::new(CoreConfig::default()), Default::default(), true);
        let thread = {
            let (shared, defs) = (shared.clone(), defs.clone());
            std::thread::spawn(move || store_thread(shared, log, defs))
        };
        let topology: amqp_router::definitions::Topology = serde_json::from_str(
            r#"{"queues": [{"name": "kept-q", "vhost": "/", "durable": true,
                "auto_delete": false, "arguments": {}}]}"#,
        )
        .expect("a definitions export");
        shared
            .with_core(|c| c.load_topology(&topology))
            .expect("the queue loads");
        shared.close_store();
        assert!(thread.join().expect("the store thread does not panic"));
        let written = std::fs::read_to_string(&defs).expect("the snapshot is written");
        assert!(written.contains("kept-q"), "{written}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
