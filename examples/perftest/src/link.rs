//! One amqp-codec [`Connection`] over one TCP stream, driven without
//! blocking: writes gather every pending transmit segment into one buffer
//! (one `write` for many frames), reads take large chunks that go to the
//! codec without copying.

use crate::pacer::Pacer;
use amqp_codec::types::ReplyCode;
use amqp_codec::{CloseCause, Connection, Event, Initiator};
use bytes::BytesMut;
use std::io;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 256 * 1024;
/// Above this many unsent bytes, producers and the sink stop generating.
pub const OUT_HIGH: usize = 256 * 1024;
/// The longest a driver sleeps without a reason to wake (a safety net: the
/// stop signal, socket readiness and deadlines wake it).
pub const MAX_IDLE: Duration = Duration::from_millis(500);

/// What else ends a [`Link::wait`].
#[derive(Debug)]
pub enum Wake<'a> {
    /// Nothing else.
    Nothing,
    /// A change of this value (the run's stop signal).
    Changed(&'a mut watch::Receiver<bool>),
    /// A notification (the sink's inbox).
    Notified(&'a Notify),
}

/// A connection and its socket.
#[derive(Debug)]
pub struct Link {
    /// The Sans-IO connection.
    pub conn: Connection,
    tcp: TcpStream,
    rbuf: BytesMut,
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
    chunk: usize,
    /// Set by [`pace`](Self::pace): `until` in [`wait`](Self::wait) is
    /// met to the microsecond.
    pacer: Option<Pacer>,
}

impl Link {
    /// Wraps a connected socket (Nagle off: frames are already batched).
    pub fn new(conn: Connection, tcp: TcpStream) -> Link {
        Link::with_chunk(conn, tcp, READ_CHUNK)
    }

    /// As [`new`](Self::new), reading `chunk` bytes at a time (small for
    /// the many idle connections of `amqp-perftest idle`).
    pub fn with_chunk(conn: Connection, tcp: TcpStream, chunk: usize) -> Link {
        let _ = tcp.set_nodelay(true);
        let chunk = chunk.max(64);
        Link {
            conn,
            tcp,
            rbuf: BytesMut::with_capacity(chunk),
            out: Vec::with_capacity(chunk.min(OUT_HIGH)),
            out_pos: 0,
            eof: false,
            chunk,
            pacer: None,
        }
    }

    /// Makes [`wait`](Self::wait) wake at its `until` to the microsecond
    /// (a [`Pacer`]), not at tokio's next millisecond tick: for rate
    /// limits.
    pub fn pace(&mut self) {
        self.pacer.get_or_insert_with(Pacer::new);
    }

    /// Whether the peer closed its end of the socket.
    pub fn eof(&self) -> bool {
        self.eof
    }

    /// Bytes waiting to be written (ours and the codec's).
    pub fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos + self.conn.bytes_queued()
    }

    fn gather(&mut self) {
        while let Some(seg) = self.conn.poll_transmit() {
            self.out.extend_from_slice(&seg);
        }
    }

    /// Moves the codec's transmit segments into the write buffer and
    /// writes as much as the socket takes. Returns whether bytes went out.
    pub fn try_flush(&mut self) -> io::Result<bool> {
        self.gather();
        let mut progressed = false;
        while self.out_pos < self.out.len() {
            match self.tcp.try_write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out_pos += n;
                    progressed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos >= OUT_HIGH {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(progressed)
    }

    /// Reads one chunk, if any is ready, into the codec. Returns whether
    /// anything (data or end of stream) was read.
    pub fn try_fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.rbuf.capacity() - self.rbuf.len() < self.chunk / 4 {
            self.rbuf.reserve(self.chunk);
        }
        match self.tcp.try_read_buf(&mut self.rbuf) {
            Ok(0) => {
                self.eof = true;
                self.conn.handle_eof();
                Ok(true)
            }
            Ok(_) => {
                let chunk = self.rbuf.split().freeze();
                self.conn.handle_input(chunk);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs the codec's timers (heartbeats) if due.
    pub fn tick(&mut self, now: Instant) {
        if self.conn.poll_timeout().is_some_and(|t| now >= t) {
            self.conn.handle_timeout(now);
        }
    }

    /// Waits until the socket is readable (if `read`), writable (if bytes
    /// are pending), `until`, a codec timer, `wake`, or [`MAX_IDLE`].
    pub async fn wait(
        &mut self,
        read: bool,
        until: Option<Instant>,
        wake: Wake<'_>,
    ) -> io::Result<()> {
        let now = Instant::now();
        let mut deadline = now + MAX_IDLE;
        for t in [until, self.conn.poll_timeout()].into_iter().flatten() {
            deadline = deadline.min(t);
        }
        let write = self.pending_out() > 0;
        let interest = match (read && !self.eof, write) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        };
        let paced = until.filter(|&u| u <= deadline);
        let pacer = &mut self.pacer;
        let sleep = async move {
            match (pacer, paced) {
                (Some(p), Some(u)) => p.sleep_until(u).await,
                _ => tokio::time::sleep_until(deadline.into()).await,
            }
        };
        let stopped = async {
            let woken = match wake {
                Wake::Nothing => false,
                // A dropped sender means no stop will come: sleep on.
                Wake::Changed(r) => r.changed().await.is_ok(),
                Wake::Notified(n) => {
                    n.notified().await;
                    true
                }
            };
            if !woken {
                std::future::pending::<()>().await;
            }
        };
        match interest {
            Some(i) => {
                tokio::select! {
                    r = self.tcp.ready(i) => { r?; }
                    _ = sleep => {}
                    _ = stopped => {}
                }
            }
            None => {
                tokio::select! {
                    _ = sleep => {}
                    _ = stopped => {}
                }
            }
        }
        self.tick(Instant::now());
        Ok(())
    }

    /// Drives I/O until `pick` selects an event; a broker close (channel
    /// or connection) or the timeout is an error. For setup steps, not the
    /// hot path.
    pub async fn until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.try_flush().map_err(|e| io_error(what, &e))?;
            while let Some(e) = self.conn.poll_event() {
                if let Some(t) = pick(&e) {
                    self.try_flush().map_err(|e| io_error(what, &e))?;
                    return Ok(t);
                }
                if let Some(err) = fatal(&e) {
                    return Err(format!("{what}: {err}"));
                }
            }
            self.try_flush().map_err(|e| io_error(what, &e))?;
            if self.try_fill().map_err(|e| io_error(what, &e))? {
                continue;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{what}: no answer from the broker within {timeout:?} (is it overloaded or blocked?)"
                ));
            }
            self.wait(true, Some(deadline), Wake::Nothing)
                .await
                .map_err(|e| io_error(what, &e))?;
        }
    }

    /// Closes the connection (reply 200) and waits up to `timeout` for the
    /// close handshake; errors are ignored (the run is over).
    pub async fn close(&mut self, timeout: Duration) {
        if self.conn.is_closed() {
            let _ = self.try_flush();
            return;
        }
        if self
            .conn
            .close(ReplyCode::REPLY_SUCCESS, "amqp-perftest done")
            .is_err()
        {
            return;
        }
        let deadline = Instant::now() + timeout;
        while !self.conn.is_closed() && !self.eof && Instant::now() < deadline {
            if self.try_flush().is_err() {
                return;
            }
            while self.conn.poll_event().is_some() {}
            match self.try_fill() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(_) => return,
            }
            if self
                .wait(true, Some(deadline), Wake::Nothing)
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = self.try_flush();
    }
}

fn io_error(what: &str, e: &io::Error) -> String {
    format!("{what}: connection lost: {e}")
}

/// The error an event stands for, if it ends the run: a channel or the
/// connection closed by the broker with an error code, a protocol error, a
/// lost connection.
pub fn fatal(e: &Event) -> Option<String> {
    match e {
        Event::ChannelClosed {
            channel,
            initiator,
            reason,
        } if *initiator == Initiator::Peer || reason.code != ReplyCode::REPLY_SUCCESS => {
            Some(format!(
                "the broker closed channel {channel}: {} {} (class {}, method {})",
                reason.code.0, reason.text, reason.class_id, reason.method_id
            ))
        }
        Event::ProtocolError(p) => Some(format!("protocol error: {p}")),
        Event::Closed { cause } => Some(match cause {
            CloseCause::Closed {
                initiator: Initiator::Local,
                reason,
            } if reason.code == ReplyCode::REPLY_SUCCESS => return None,
            CloseCause::Closed { initiator, reason } => format!(
                "the {} closed the connection: {} {} (class {}, method {})",
                if *initiator == Initiator::Peer {
                    "broker"
                } else {
                    "client"
                },
                reason.code.0,
                reason.text,
                reason.class_id,
                reason.method_id
            ),
            CloseCause::Timeout(k) => format!("connection timed out: {k:?}"),
            CloseCause::Failed(p) => format!("connection failed: {p}"),
            CloseCause::TransportClosed => {
                "the broker closed the TCP connection without a close handshake".into()
            }
            other => format!("connection ended: {other:?}"),
        }),
        _ => None,
    }
}
