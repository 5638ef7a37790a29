//! `amqp-perftest idle`: many connections that complete the handshake with
//! heartbeats and then idle, answering and sending heartbeats, so that a
//! broker's memory per idle connection can be read from outside.

use crate::cli::{IdleArgs, parse_uri};
use crate::link::{Link, Wake, fatal};
use crate::run::connect_to;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, watch};

/// Read size of an idle connection: heartbeats and a close fit.
const IDLE_CHUNK: usize = 4096;

/// What an idle run reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdleEvent {
    /// Every connection completed its handshake, after this long.
    Connected(usize, Duration),
    /// A connection failed (while opening or while idling).
    Failed(String),
}

/// Opens `args.connections` connections and idles them until `stop` turns
/// true (or, if `args.time` > 0, that many seconds after all are open).
/// `on_event` hears when all are open and of the first failure; the run
/// ends on a failure. Returns the connections that were open at the end.
pub async fn idle(
    args: &IdleArgs,
    mut stop: watch::Receiver<bool>,
    mut on_event: impl FnMut(IdleEvent),
) -> Result<usize, String> {
    args.validate()?;
    let uri = Arc::new(parse_uri(&args.uri)?);
    let n = args.connections as usize;
    let gate = Arc::new(Semaphore::new(args.concurrency as usize));
    let open = Arc::new(AtomicUsize::new(0));
    let (done_tx, _) = watch::channel(false);
    let (err_tx, mut err_rx) = mpsc::unbounded_channel::<String>();
    let heartbeat = Some(args.heartbeat);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (uri, gate, open, err_tx) = (uri.clone(), gate.clone(), open.clone(), err_tx.clone());
        let mut done = done_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            let who = format!("connection {i}");
            let permit = gate.acquire_owned().await;
            let name = format!("amqp-perftest idle {i}");
            let mut link = match connect_to(&uri, &name, &who, heartbeat, Some(IDLE_CHUNK)).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = err_tx.send(e);
                    return;
                }
            };
            drop(permit);
            open.fetch_add(1, Relaxed);
            if let Err(e) = hold(&mut link, &mut done).await {
                let _ = err_tx.send(format!("{who}: {e}"));
            }
            open.fetch_sub(1, Relaxed);
            link.close(Duration::from_secs(2)).await;
        }));
    }
    drop(err_tx);
    let mut all_open_at: Option<Instant> = None;
    let mut failure = None;
    loop {
        tokio::select! {
            e = err_rx.recv() => {
                if let Some(e) = e {
                    on_event(IdleEvent::Failed(e.clone()));
                    failure = Some(e);
                }
                break;
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() { break; }
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if all_open_at.is_none() && open.load(Relaxed) == n {
            let now = Instant::now();
            all_open_at = Some(now);
            on_event(IdleEvent::Connected(n, now - start));
        }
        if let Some(t) = all_open_at
            && args.time > 0
            && t.elapsed() >= Duration::from_secs(args.time)
        {
            break;
        }
    }
    let still_open = open.load(Relaxed);
    done_tx.send_replace(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(still_open),
    }
}

/// Keeps one connection alive (heartbeats both ways) until `done`.
async fn hold(link: &mut Link, done: &mut watch::Receiver<bool>) -> Result<(), String> {
    let io = |e: std::io::Error| format!("connection lost: {e}");
    loop {
        if *done.borrow() {
            return Ok(());
        }
        link.tick(Instant::now());
        while let Some(e) = link.conn.poll_event() {
            if let Some(err) = fatal(&e) {
                return Err(err);
            }
        }
        link.try_flush().map_err(io)?;
        if link.try_fill().map_err(io)? {
            continue;
        }
        if link.eof() || link.conn.is_closed() {
            return Err("the broker closed the connection".into());
        }
        link.wait(true, None, Wake::Changed(done))
            .await
            .map_err(io)?;
    }
}
