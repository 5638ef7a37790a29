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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// The store thread's queue, when persistence is on (taken away to
    /// let the thread finish at shutdown).
    store: Mutex<Option<std::sync::mpsc::Sender<StoreBatch>>>,
    /// Wakes the timer task when the core's earliest deadline changed.
    timer: Notify,
    wakers: Mutex<HashMap<ConnId, Arc<Notify>>>,
    next_id: AtomicU64,
    /// Numbers the store batches in the order the core made them (taken
    /// under the core's lock; they are sent after it is let go, so they
    /// may reach the store thread in another order).
    batches: AtomicU64,
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
    /// State shared by the connections of one broker.
    pub fn new(
        core: Core,
        config: ServerConfig,
        store: Option<std::sync::mpsc::Sender<StoreBatch>>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            core: Mutex::new(core),
            store: Mutex::new(store),
            timer: Notify::new(),
            wakers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            batches: AtomicU64::new(1),
            config,
            store_failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// What the core has for the timer and the store after a call, taken
    /// under its lock; [`Shared::after`] acts on it once the lock is free.
    fn take_side_work(&self, core: &mut Core) -> Option<StoreBatch> {
        if core.take_timers_changed() {
            self.timer.notify_one();
        }
        let records = core.take_store_ops();
        let definitions = core.take_definitions();
        if records.is_none() && definitions.is_none() {
            return None;
        }
        let (records, upto) = records.unwrap_or_default();
        Some(StoreBatch {
            number: self.batches.fetch_add(1, Ordering::Relaxed),
            records,
            upto,
            definitions,
        })
    }

    fn after(&self, batch: Option<StoreBatch>) {
        let Some(b) = batch else { return };
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = &*store {
            // A closed channel means the store thread stopped on a disk
            // error (logged there): confirms stay withheld.
            let _ = tx.send(b);
        }
    }

    /// Lets the store thread finish what it has (at shutdown): nothing is
    /// sent to it after this.
    pub fn close_store(&self) {
        let last = {
            let mut core = self.core();
            self.take_side_work(&mut core)
        };
        self.after(last);
        self.store.lock().unwrap_or_else(|p| p.into_inner()).take();
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
    let mut closed = None;
    loop {
        let mut events = Vec::new();
        while let Some(e) = conn.poll_event() {
            if let Event::Closed { cause } = &e {
                closed = Some(cause.clone());
            }
            events.push(e);
        }
        let had_events = !events.is_empty();
        let (outs, woken, side, blocked, held) = {
            let mut core = shared.core();
            if had_events {
                core.handle(id, events, Instant::now());
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
            return (closed, blocked, held);
        }
        for out in outs {
            if let Err(e) = out.apply_to(conn) {
                // The channel or connection closed meanwhile.
                tracing::debug!(conn = id, "not sent: {e}");
            }
        }
    }
}

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

/// Records for the store thread, with the number of the last one and a
/// new snapshot of the durable topology if it changed.
#[derive(Debug, Default)]
pub struct StoreBatch {
    /// The batch's place in the order the core made them, from 1.
    pub number: u64,
    /// Records to append.
    pub records: Vec<crate::store::Record>,
    /// The core's number of the last record (for [`Core::durable`]).
    pub upto: u64,
    /// The durable topology, as a definitions export.
    pub definitions: Option<String>,
}

impl StoreBatch {
    /// Appends batch `later` to `to`: its records after, its topology
    /// snapshot instead.
    fn join(to: &mut Option<StoreBatch>, later: StoreBatch) {
        let Some(b) = to else {
            *to = Some(later);
            return;
        };
        b.number = later.number;
        b.records.extend(later.records);
        b.upto = b.upto.max(later.upto);
        if later.definitions.is_some() {
            b.definitions = later.definitions;
        }
    }
}

/// Puts store batches back in the order the core made them. Connection
/// tasks take their batch under the core's lock but send it after letting
/// the lock go, so two of them can arrive swapped; written as they
/// arrive, the later batch's sync would release the confirms of the
/// earlier one before its records are written (and an older topology
/// snapshot could replace a newer one).
#[derive(Debug)]
pub struct InOrder {
    next: u64,
    early: std::collections::BTreeMap<u64, StoreBatch>,
}

impl Default for InOrder {
    fn default() -> Self {
        InOrder {
            next: 1,
            early: Default::default(),
        }
    }
}

impl InOrder {
    /// Takes a batch in; returns the batches that now continue the order
    /// without a gap, merged into one (records in order, the last
    /// topology snapshot), or `None` while one before them is missing.
    pub fn push(&mut self, batch: StoreBatch) -> Option<StoreBatch> {
        self.early.insert(batch.number, batch);
        let mut out: Option<StoreBatch> = None;
        while let Some(b) = self.early.remove(&self.next) {
            self.next += 1;
            StoreBatch::join(&mut out, b);
        }
        out
    }

    /// Batches held back waiting for an earlier one.
    pub fn waiting(&self) -> usize {
        self.early.len()
    }
}

/// The store thread: writes what the connections' batches carry, in the
/// order the core made them ([`InOrder`]), with one `fdatasync` for all
/// of them (group commit: while it syncs, the next batches queue up and
/// share the next sync), then releases their confirms. On a write or
/// sync error it logs and stops: confirms are withheld from then on
/// rather than given for what may not be on disk.
/// Returns whether everything sent to it was written and synced.
pub fn store_thread(
    shared: Arc<Shared>,
    mut log: crate::store::Log,
    definitions: std::path::PathBuf,
    rx: std::sync::mpsc::Receiver<StoreBatch>,
) -> bool {
    let mut order = InOrder::default();
    // The core numbers its records from 1 without a gap: the last one
    // written, to check that each batch follows it.
    let mut written_upto = 0u64;
    while let Ok(first) = rx.recv() {
        let mut ready = order.push(first);
        while let Ok(more) = rx.try_recv() {
            if let Some(m) = order.push(more) {
                StoreBatch::join(&mut ready, m);
            }
        }
        let Some(b) = ready else { continue };
        let written = (|| -> std::io::Result<()> {
            if let Some(d) = &b.definitions {
                crate::store::write_atomically(&definitions, d.as_bytes())?;
            }
            if !b.records.is_empty() {
                let from = (b.upto + 1).checked_sub(b.records.len() as u64);
                if from != Some(written_upto + 1) {
                    // Writing them would let a sync release confirms for
                    // records that were never written.
                    return Err(std::io::Error::other(format!(
                        "records up to {} do not follow record {written_upto} \
                         (a bug in the broker: please report it)",
                        b.upto
                    )));
                }
                log.append(&b.records)?;
                log.sync()?;
                written_upto = b.upto;
            }
            Ok(())
        })();
        if let Err(e) = written {
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
            return false;
        }
        let woken = {
            let mut core = shared.core();
            core.durable(b.upto);
            core.take_woken()
        };
        shared.wake(&woken);
    }
    if order.waiting() > 0 {
        tracing::error!(
            "message store: {} batches were never written: one before them never arrived",
            order.waiting()
        );
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::{InOrder, Shared, StoreBatch, store_thread};
    use crate::core::{Alarm, Core, CoreConfig};
    use crate::store::{Liveness, Log, Record, queue_key};

    fn batch(number: u64, ids: std::ops::RangeInclusive<u64>, defs: Option<&str>) -> StoreBatch {
        let q = queue_key("/", "q".try_into().unwrap());
        StoreBatch {
            number,
            upto: *ids.end(),
            records: ids
                .map(|id| Record::Remove {
                    id,
                    queue: q.clone(),
                })
                .collect(),
            definitions: defs.map(str::to_owned),
        }
    }

    fn ids(b: &StoreBatch) -> Vec<u64> {
        b.records
            .iter()
            .map(|r| match r {
                Record::Remove { id, .. } => *id,
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn a_batch_that_overtakes_an_earlier_one_waits_for_it() {
        let mut o = InOrder::default();
        let b1 = o
            .push(batch(1, 1..=2, None))
            .expect("the first batch is in order");
        assert_eq!((ids(&b1), b1.upto), (vec![1, 2], 2));
        // Batch 3 arrives before batch 2: its sync must not release
        // batch 2's records, which are not written yet.
        assert!(o.push(batch(3, 6..=7, Some("new"))).is_none());
        assert!(o.push(batch(5, 9..=9, None)).is_none());
        assert_eq!(o.waiting(), 2);
        let b = o
            .push(batch(2, 3..=5, Some("old")))
            .expect("the gap is filled");
        assert_eq!(ids(&b), vec![3, 4, 5, 6, 7]);
        assert_eq!(b.upto, 7);
        assert_eq!(
            b.definitions.as_deref(),
            Some("new"),
            "the later snapshot wins"
        );
        assert_eq!(o.waiting(), 1);
        let b = o.push(batch(4, 8..=8, None)).expect("and the next gap");
        assert_eq!((ids(&b), b.upto), (vec![8, 9], 9));
        assert_eq!(o.waiting(), 0);
    }

    /// Runs the store thread on a fresh log over `batches`; returns
    /// whether it finished cleanly and the alarms the core has then.
    fn run_store(name: &str, batches: Vec<StoreBatch>) -> (bool, Vec<Alarm>) {
        let dir =
            std::env::temp_dir().join(format!("amqp-store-thread-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = Log::open(&dir.join("messages"), Liveness::default()).expect("open the log");
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Shared::new(Core::new(CoreConfig::default()), Default::default(), None);
        let thread = {
            let shared = shared.clone();
            let defs = dir.join("definitions.json");
            std::thread::spawn(move || store_thread(shared, log, defs, rx))
        };
        for b in batches {
            tx.send(b).expect("the store thread takes batches");
        }
        drop(tx);
        let clean = thread.join().expect("the store thread does not panic");
        let alarms = shared.with_core(|c| c.alarms());
        let _ = std::fs::remove_dir_all(&dir);
        (clean, alarms)
    }

    #[test]
    fn records_that_do_not_follow_the_last_written_stop_the_store() {
        // Swapped in the channel, they are put back in order.
        let (clean, alarms) = run_store(
            "swapped",
            vec![batch(2, 3..=4, None), batch(1, 1..=2, None)],
        );
        assert!(clean);
        assert!(alarms.is_empty());
        // Record 3 never comes: records 4 and 5 are not written, the
        // store stops and the disk alarm blocks publishers.
        let (clean, alarms) = run_store("gap", vec![batch(1, 1..=2, None), batch(2, 4..=5, None)]);
        assert!(!clean);
        assert_eq!(alarms, vec![Alarm::Disk]);
    }
}
