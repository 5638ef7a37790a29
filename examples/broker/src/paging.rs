//! Paging: queues are bounded in memory, not by it.
//!
//! A queue keeps a window of its ready messages in memory (by default
//! 16,384 messages or 16 MiB, whichever is reached first: [`Paging`]).
//! Beyond it, new messages gather in an in-memory tail, and every full
//! tail (4,096 messages or 4 MiB) is written out as one *page*; in memory
//! the queue then keeps only a [`PageRef`] per page (a few dozen bytes
//! for thousands of messages). As consumers drain the head, the next page
//! is read back whole. Order is kept because a level of the queue is
//! always *head, pages, tail* (see [`crate::queue`]), and a page is only
//! ever read back at the head.
//!
//! Transient and persistent messages are paged alike (as RabbitMQ's
//! classic queues do): a persistent message's page copy is only a cache,
//! the message store still holds it, so pages are never fsynced and are
//! thrown away at every start.
//!
//! The core does no I/O of its own: pages go through a [`PageStore`] it is
//! given. [`DirPages`] keeps each page in a file of its own under the data
//! directory (`paging/NNNNNNNNNNNNNNNN.page`), deleted as soon as it has
//! been read back, so disk space is reclaimed page by page and never
//! needs compaction; [`MemPages`] keeps them in memory for tests and the
//! simulation (it can be told to fail).
//!
//! A page is `[payload length u32 LE][CRC-32 u32 LE][payload]`, the
//! payload a count then the entries (sequence number, flags, priority
//! level, return count, store id, expiry, exchange, routing key, BCC keys,
//! properties as a content header frame, body). A page that cannot be
//! written stays in memory (and is retried when the tail has doubled); a
//! page that cannot be read back or fails its checksum loses its messages
//! (counted in [`PageStats::lost`]; persistent ones come back at the next
//! restart from the message store).

use crate::disk::Aligned;
use crate::queue::{Entry, Msg};
use crate::store::{Damage, Reader, RecordAt, put_content, put_short};
use std::collections::HashMap;
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where pages are kept.
pub trait PageStore: Debug + Send {
    /// Stores `page` under `id` (ids are never reused).
    fn write(&mut self, id: u64, page: &[u8]) -> io::Result<()>;
    /// Reads page `id` back and forgets it.
    fn take(&mut self, id: u64) -> io::Result<Vec<u8>>;
    /// Forgets page `id` unread.
    fn discard(&mut self, id: u64);
}

/// Pages as files in a directory, one file each.
#[derive(Debug)]
pub struct DirPages {
    dir: PathBuf,
}

impl DirPages {
    /// Pages in `dir`, which is created, and emptied of the pages an
    /// earlier run left.
    pub fn open(dir: &Path) -> io::Result<DirPages> {
        std::fs::create_dir_all(dir)?;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_name().to_string_lossy().ends_with(".page") {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(DirPages {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016}.page"))
    }
}

impl PageStore for DirPages {
    fn write(&mut self, id: u64, page: &[u8]) -> io::Result<()> {
        let path = self.path(id);
        std::fs::write(&path, page).inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })
    }

    fn take(&mut self, id: u64) -> io::Result<Vec<u8>> {
        let path = self.path(id);
        let data = std::fs::read(&path);
        let _ = std::fs::remove_file(&path);
        data
    }

    fn discard(&mut self, id: u64) {
        let _ = std::fs::remove_file(self.path(id));
    }
}

/// Pages in files of a directory, written by a thread of their own: a
/// write hands the page over and returns, so the queue that pages (and
/// the core's lock) does not wait for the file system. Measured: a 4 MiB
/// page took 10 ms to write on the 2-core test machine, and with writes in
/// line a consumer with manual acks fell from 135k to 19k msg/s once its
/// queue paged.
///
/// A page not yet written is read back from memory; at most
/// [`BackgroundPages::AHEAD`] bytes wait to be written, beyond which a
/// write waits (publishers are then held back at the disk's pace). A page
/// that cannot be written stays in memory (and is logged), as
/// [`Pager::write`] keeps entries it cannot write.
///
/// The files are *slots*, overwritten rather than deleted and created
/// again, with direct I/O where the file system allows it: on this
/// machine writing into a new file's cached pages ran at 0.2 to 3.5 GB/s,
/// direct I/O at 1.9 GB/s. Up to
/// [`BackgroundPages::KEEP_FREE`] slots are kept free for the next pages;
/// beyond that a slot read back is deleted, so disk space comes back as
/// queues drain.
#[derive(Debug)]
pub struct BackgroundPages {
    shared: Arc<(Mutex<Pending>, std::sync::Condvar)>,
    dir: PathBuf,
    tx: Option<std::sync::mpsc::Sender<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Where pages are read back.
    buf: Aligned,
}

#[derive(Debug, Default)]
struct Pending {
    /// Pages not yet written (or that could not be): id -> (bytes,
    /// counted against [`BackgroundPages::AHEAD`]).
    pages: HashMap<u64, (Arc<Vec<u8>>, bool)>,
    /// Bytes counted.
    bytes: usize,
    /// Pages handed to the thread and not yet done with.
    queued: usize,
    /// Pages written: id -> (slot, length).
    written: HashMap<u64, (u64, usize)>,
    /// Slots free to be overwritten.
    free: Vec<u64>,
    /// The next slot never used.
    next_slot: u64,
}

impl Pending {
    fn slot(&mut self) -> u64 {
        self.free.pop().unwrap_or_else(|| {
            self.next_slot += 1;
            self.next_slot
        })
    }

    /// Slot `slot` is no longer needed: kept for a next page, or deleted.
    fn release(&mut self, dir: &Path, slot: u64) {
        if self.free.len() < BackgroundPages::KEEP_FREE {
            self.free.push(slot);
        } else {
            let _ = std::fs::remove_file(slot_path(dir, slot));
        }
    }

    /// Page `id` if it is still in memory (not yet written, or it could
    /// not be), forgotten there.
    fn take_held(&mut self, id: u64) -> Option<Arc<Vec<u8>>> {
        let (page, counted) = self.pages.remove(&id)?;
        if counted {
            self.bytes -= page.len();
        }
        Some(page)
    }
}

fn slot_path(dir: &Path, slot: u64) -> PathBuf {
    dir.join(format!("{slot:016}.page"))
}

fn lock_pending(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BackgroundPages {
    /// Bytes of pages that may wait to be written.
    pub const AHEAD: usize = 16 << 20;
    /// Slot files kept for the next pages once read back.
    pub const KEEP_FREE: usize = 16;

    /// Pages in `dir` ([`DirPages::open`]: emptied of an earlier run's),
    /// written by a thread it starts.
    pub fn open(dir: &Path) -> io::Result<BackgroundPages> {
        DirPages::open(dir)?;
        let shared: Arc<(Mutex<Pending>, std::sync::Condvar)> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        let state = shared.clone();
        let files = dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("page-writer".into())
            .spawn(move || {
                let (lock, done) = &*state;
                let mut buf = Aligned::default();
                for id in rx {
                    let todo = {
                        let mut p = lock_pending(lock);
                        let page = p.pages.get(&id).map(|p| p.0.clone());
                        page.map(|page| (page, p.slot()))
                    };
                    // (Not yet written and already read back: nothing to do.)
                    let written = todo.map(|(page, slot)| {
                        let r = write_slot(&files, slot, &page, &mut buf);
                        (slot, page.len(), r)
                    });
                    let mut p = lock_pending(lock);
                    p.queued -= 1;
                    match written {
                        None => {}
                        Some((slot, len, Ok(()))) => match p.take_held(id) {
                            Some(_) => {
                                p.written.insert(id, (slot, len));
                            }
                            // Read back while it was being written.
                            None => p.release(&files, slot),
                        },
                        Some((slot, _, Err(e))) => {
                            tracing::warn!("page {id} could not be written (kept in memory): {e}");
                            let _ = std::fs::remove_file(slot_path(&files, slot));
                            if let Some((page, counted)) = p.pages.get_mut(&id)
                                && *counted
                            {
                                *counted = false;
                                p.bytes -= page.len();
                            }
                        }
                    }
                    done.notify_all();
                }
            })?;
        Ok(BackgroundPages {
            shared,
            dir: dir.to_owned(),
            tx: Some(tx),
            thread: Some(thread),
            buf: Aligned::default(),
        })
    }

    /// Waits until every page handed over is written (or failed).
    pub fn flush(&self) {
        let (lock, done) = &*self.shared;
        let mut p = lock_pending(lock);
        while p.queued > 0 {
            p = done.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Slot files on disk now (written pages and free slots).
    pub fn files(&self) -> usize {
        let p = lock_pending(&self.shared.0);
        p.written.len() + p.free.len()
    }
}

/// Opens slot file `slot` for direct I/O (pages skip the page cache:
/// written straight from a reused buffer, they cost no new cached pages,
/// which this machine allocates slowly; `dd` wrote 1.9 GB/s direct), or
/// normally where the file system refuses it (tmpfs).
fn open_slot(dir: &Path, slot: u64, write: bool) -> io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(!write).write(write).create(write).truncate(false);
    crate::disk::open_direct(&o, &slot_path(dir, slot)).map(|(f, _)| f)
}

/// Writes `page` over the start of slot file `slot` (created if new; a
/// longer page written there before leaves its tail, never read), in
/// whole blocks through `buf`.
fn write_slot(dir: &Path, slot: u64, page: &[u8], buf: &mut Aligned) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = open_slot(dir, slot, true)?;
    let blocks = buf.blocks(page.len());
    blocks[..page.len()].copy_from_slice(page);
    blocks[page.len()..].fill(0);
    f.write_all_at(blocks, 0)
}

/// Reads the `len` bytes at the start of slot file `slot`, in whole blocks
/// through `buf`.
fn read_slot(dir: &Path, slot: u64, len: usize, buf: &mut Aligned) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = open_slot(dir, slot, false)?;
    let blocks = buf.blocks(len);
    f.read_exact_at(blocks, 0)?;
    Ok(blocks[..len].to_vec())
}

impl PageStore for BackgroundPages {
    fn write(&mut self, id: u64, page: &[u8]) -> io::Result<()> {
        let (lock, done) = &*self.shared;
        let mut p = lock_pending(lock);
        // (Rechecked every 100 ms: a writer that died would never wake
        // this; its pages then stay in memory.)
        let writing =
            |t: &Option<std::thread::JoinHandle<()>>| t.as_ref().is_some_and(|t| !t.is_finished());
        while p.bytes > Self::AHEAD && writing(&self.thread) {
            p = done
                .wait_timeout(p, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        p.bytes += page.len();
        p.queued += 1;
        p.pages.insert(id, (Arc::new(page.to_vec()), true));
        drop(p);
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(id).is_ok());
        if !sent {
            // (The thread is gone: the page stays in memory.)
            let mut p = lock_pending(lock);
            p.queued -= 1;
            if let Some((page, counted)) = p.pages.get_mut(&id) {
                *counted = false;
                p.bytes -= page.len();
            }
        }
        Ok(())
    }

    fn take(&mut self, id: u64) -> io::Result<Vec<u8>> {
        let (lock, done) = &*self.shared;
        let (slot, len) = {
            let mut p = lock_pending(lock);
            if let Some(page) = p.take_held(id) {
                done.notify_all();
                return Ok(Arc::try_unwrap(page).unwrap_or_else(|p| p.to_vec()));
            }
            p.written
                .remove(&id)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?
        };
        let read = read_slot(&self.dir, slot, len, &mut self.buf);
        lock_pending(lock).release(&self.dir, slot);
        read
    }

    fn discard(&mut self, id: u64) {
        let (lock, done) = &*self.shared;
        let mut p = lock_pending(lock);
        if p.take_held(id).is_some() {
            done.notify_all();
        } else if let Some((slot, _)) = p.written.remove(&id) {
            p.release(&self.dir, slot);
        }
    }
}

impl Drop for BackgroundPages {
    fn drop(&mut self) {
        // The thread ends once the channel is closed and its queue done.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Pages in memory (tests, the simulation): the paging code runs, nothing
/// is saved. Writes and reads can be made to fail.
#[derive(Debug, Default)]
pub struct MemPages {
    pages: HashMap<u64, Vec<u8>>,
    /// Refuse writes (as a full disk would).
    pub fail_writes: bool,
    /// Fail reads (as a lost file would).
    pub fail_reads: bool,
    /// Flip a byte of every page read back (as a corrupted file would).
    pub corrupt_reads: bool,
}

impl MemPages {
    /// Refusing writes (`true`) or not.
    pub fn failing_writes(mut self, on: bool) -> Self {
        self.fail_writes = on;
        self
    }

    /// Failing reads (`true`) or not.
    pub fn failing_reads(mut self, on: bool) -> Self {
        self.fail_reads = on;
        self
    }

    /// Corrupting every page read back (`true`) or not.
    pub fn corrupting(mut self, on: bool) -> Self {
        self.corrupt_reads = on;
        self
    }

    /// Pages held.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether no page is held.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

impl PageStore for MemPages {
    fn write(&mut self, id: u64, page: &[u8]) -> io::Result<()> {
        if self.fail_writes {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "simulated"));
        }
        self.pages.insert(id, page.to_vec());
        Ok(())
    }

    fn take(&mut self, id: u64) -> io::Result<Vec<u8>> {
        let page = self.pages.remove(&id);
        if self.fail_reads {
            return Err(io::Error::other("simulated"));
        }
        let mut page = page.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if self.corrupt_reads
            && let Some(b) = page.last_mut()
        {
            *b ^= 0xff;
        }
        Ok(page)
    }

    fn discard(&mut self, id: u64) {
        self.pages.remove(&id);
    }
}

/// Where the messages recovered from the message store are read back
/// from ([`crate::store::Segments`]). With one, a page holds of such a
/// message only where its record lies ([`RecordAt`]), not a copy: a
/// restart pages a long queue without writing its bodies again.
pub trait RecordSource: Debug + Send {
    /// `len` bytes of segment `segment` from `offset` (an error, not an
    /// allocation, if the segment is shorter).
    fn read(&mut self, segment: u64, offset: u64, len: u64) -> io::Result<Vec<u8>>;
}

/// Records read back together when they lie at most this far apart (one
/// read instead of one per record).
const SPAN_GAP: u64 = 64 << 10;
/// The most one read of records covers.
const SPAN_MAX: u64 = 8 << 20;

/// How much of a queue stays in memory, and how big pages are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// Messages a queue keeps in memory before it pages.
    pub window_messages: usize,
    /// Bytes (bodies plus [`crate::core::MESSAGE_OVERHEAD`] each) a queue
    /// keeps in memory before it pages.
    pub window_bytes: usize,
    /// Messages per page.
    pub page_messages: usize,
    /// Bytes per page (the page is written when either is reached).
    pub page_bytes: usize,
    /// A queue past its window pages only while the ready messages of
    /// all queues hold more than this in memory (bodies plus
    /// [`crate::core::MESSAGE_OVERHEAD`] each), as RabbitMQ pages only
    /// past `vm_memory_high_watermark_paging_ratio`; 0: always at the
    /// window.
    pub memory_budget: usize,
}

impl Default for Paging {
    fn default() -> Self {
        Paging {
            window_messages: 16_384,
            window_bytes: 16 << 20,
            page_messages: 4_096,
            page_bytes: 4 << 20,
            memory_budget: 0,
        }
    }
}

/// Counters over every queue of a pager.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageStats {
    /// Pages written.
    pub written: u64,
    /// Pages read back.
    pub read: u64,
    /// Pages that could not be written (kept in memory).
    pub write_errors: u64,
    /// Messages lost with pages that could not be read back.
    pub lost: u64,
    /// Pages on disk now.
    pub pages: u64,
    /// Messages written to pages as where their records are in the message
    /// store ([`RecordSource`]), not as copies.
    pub by_reference: u64,
}

#[derive(Debug)]
struct Inner {
    store: Box<dyn PageStore>,
    next: u64,
    stats: PageStats,
    /// The page being encoded (reused: a fresh multi-MiB buffer per page
    /// would be cleared by the kernel each time).
    buf: Vec<u8>,
    /// Where recovered messages are read back from, if anywhere.
    records: Option<Box<dyn RecordSource>>,
}

/// The page store, shared by every queue of a core (cloning shares it).
#[derive(Debug, Clone)]
pub struct Pager {
    inner: Arc<Mutex<Inner>>,
    /// Bytes the ready messages of its queues hold in memory, as each
    /// queue last reported them.
    held: Arc<std::sync::atomic::AtomicUsize>,
    /// The sizes in force.
    pub paging: Paging,
}

/// A page on disk: what a queue remembers of it.
#[derive(Debug)]
pub struct PageRef {
    id: u64,
    /// Messages in it.
    pub count: usize,
    /// Their body bytes.
    pub bytes: usize,
    /// Whether any of them has a store id (a purge must read it back to
    /// remove them from the store; other pages are dropped unread).
    pub persistent: bool,
    /// Expiry times are stored relative to this.
    base: Option<Instant>,
}

const REDELIVERED: u8 = 1;
const PERSIST: u8 = 2;
const EXPIRES: u8 = 4;
const EXPIRES_BEFORE_BASE: u8 = 8;
/// The entry holds where the message's record is, not the message.
const STORED: u8 = 16;

impl Pager {
    /// A pager over `store`.
    pub fn new(store: Box<dyn PageStore>, paging: Paging) -> Pager {
        Pager {
            inner: Arc::new(Mutex::new(Inner {
                store,
                next: 1,
                stats: PageStats::default(),
                buf: Vec::new(),
                records: None,
            })),
            held: Default::default(),
            paging,
        }
    }

    /// Bytes the ready messages of its queues hold in memory.
    pub fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A queue's memory went from `was` to `now` bytes.
    pub(crate) fn report(&self, was: usize, now: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if now > was {
            self.held.fetch_add(now - was, Relaxed);
        } else if was > now {
            self.held.fetch_sub(was - now, Relaxed);
        }
    }

    /// Whether a queue past its window should page now: there is no
    /// memory budget, or the queues are over it.
    pub fn over_budget(&self) -> bool {
        self.paging.memory_budget == 0 || self.held() > self.paging.memory_budget
    }

    /// Reads messages recovered from the message store back from
    /// `records`: their pages hold where they are, not copies.
    pub fn with_records(self, records: Box<dyn RecordSource>) -> Pager {
        self.lock().records = Some(records);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counters so far.
    pub fn stats(&self) -> PageStats {
        self.lock().stats
    }

    /// Writes `entries` as one page; on failure they are handed back.
    pub fn write(&self, entries: Vec<Entry>) -> Result<PageRef, Vec<Entry>> {
        let base = entries.iter().find_map(|e| e.expires.get());
        let mut inner = self.lock();
        let mut payload = std::mem::take(&mut inner.buf);
        payload.clear();
        payload.extend_from_slice(&[0; 8]);
        payload.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        let (mut bytes, mut persistent) = (0, false);
        let by_ref = inner.records.is_some();
        for e in &entries {
            bytes += e.msg.size();
            persistent |= e.msg.persist().is_some();
            inner.stats.by_reference += u64::from(encode(&mut payload, e, base, by_ref));
        }
        let len = (payload.len() - 8) as u32;
        let crc = crc32fast::hash(&payload[8..]);
        payload[..4].copy_from_slice(&len.to_le_bytes());
        payload[4..8].copy_from_slice(&crc.to_le_bytes());
        let id = inner.next;
        inner.next += 1;
        let written = inner.store.write(id, &payload);
        inner.buf = payload;
        match written {
            Ok(()) => {
                inner.stats.written += 1;
                inner.stats.pages += 1;
                Ok(PageRef {
                    id,
                    count: entries.len(),
                    bytes,
                    persistent,
                    base,
                })
            }
            Err(_) => {
                inner.stats.write_errors += 1;
                Err(entries)
            }
        }
    }

    /// Reads a page back (its messages in order); `None` if it is lost.
    pub fn read(&self, page: PageRef) -> Option<Vec<Entry>> {
        let mut inner = self.lock();
        inner.stats.pages = inner.stats.pages.saturating_sub(1);
        let got = inner
            .store
            .take(page.id)
            .ok()
            .and_then(|data| decode(&data, page.base).ok())
            .filter(|(v, _)| v.len() == page.count)
            .and_then(|(v, stored)| resolve(v, &stored, inner.records.as_mut()));
        match got {
            Some(v) => {
                inner.stats.read += 1;
                Some(v)
            }
            None => {
                inner.stats.lost += page.count as u64;
                None
            }
        }
    }

    /// Drops a page unread.
    pub fn discard(&self, page: PageRef) {
        let mut inner = self.lock();
        inner.stats.pages = inner.stats.pages.saturating_sub(1);
        inner.store.discard(page.id);
    }
}

/// Puts the messages of the entries at `stored` (index, where) into them,
/// read from `records`: nearby records in one read. `None` if any of them
/// cannot be read or is not the message the entry names.
fn resolve(
    mut entries: Vec<Entry>,
    stored: &[(usize, RecordAt)],
    records: Option<&mut Box<dyn RecordSource>>,
) -> Option<Vec<Entry>> {
    if stored.is_empty() {
        return Some(entries);
    }
    let records = records?;
    let mut rest = stored;
    while let Some(&(_, first)) = rest.first() {
        // The run of records one read covers.
        let (mut end, mut n) = (first.offset.checked_add(first.len)?, 1);
        while let Some(&(_, next)) = rest.get(n) {
            let next_end = next.offset.checked_add(next.len)?;
            if next.segment != first.segment
                || next.offset < end
                || next.offset - end > SPAN_GAP
                || next_end - first.offset > SPAN_MAX
            {
                break;
            }
            end = next_end;
            n += 1;
        }
        let span = records
            .read(first.segment, first.offset, end - first.offset)
            .ok()?;
        for &(i, at) in &rest[..n] {
            let from = usize::try_from(at.offset - first.offset).ok()?;
            let bytes = span.get(from..from.checked_add(usize::try_from(at.len).ok()?)?)?;
            let (id, mut msg) = crate::store::decode_publish(bytes).ok()?;
            let e = entries.get_mut(i)?;
            if e.msg.persist() != Some(id) {
                return None;
            }
            msg.set_persist(Some(id));
            msg.set_at(Some(at));
            e.msg = msg;
        }
        rest = &rest[n..];
    }
    Some(entries)
}

/// Writes entry `e`; with `by_ref`, a message recovered from the store as
/// where its record is ([`STORED`]: then `true` comes back).
fn encode(out: &mut Vec<u8>, e: &Entry, base: Option<Instant>, by_ref: bool) -> bool {
    let mut flags = 0;
    let stored = match (by_ref, e.msg.at(), e.msg.persist()) {
        (true, Some(at), Some(_)) if e.msg.bcc().is_empty() => {
            flags |= STORED;
            Some(at)
        }
        _ => None,
    };
    if e.redelivered {
        flags |= REDELIVERED;
    }
    if e.msg.persist().is_some() {
        flags |= PERSIST;
    }
    let offset = match (e.expires.get(), base) {
        (Some(t), Some(b)) => {
            flags |= EXPIRES;
            if t >= b {
                t - b
            } else {
                flags |= EXPIRES_BEFORE_BASE;
                b - t
            }
        }
        _ => Duration::ZERO,
    };
    out.extend_from_slice(&e.seq.to_le_bytes());
    out.push(flags);
    out.push(e.level);
    out.extend_from_slice(&e.returns.to_le_bytes());
    if let Some(id) = e.msg.persist() {
        out.extend_from_slice(&id.to_le_bytes());
    }
    if flags & EXPIRES != 0 {
        let nanos = u64::try_from(offset.as_nanos()).unwrap_or(u64::MAX);
        out.extend_from_slice(&nanos.to_le_bytes());
    }
    if let Some(at) = stored {
        for v in [at.segment, at.offset, at.len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        return true;
    }
    put_short(out, e.msg.exchange());
    put_short(out, e.msg.routing_key());
    out.push(e.msg.bcc().len().min(255) as u8);
    for k in e.msg.bcc().iter().take(255) {
        put_short(out, k.as_bytes());
    }
    put_content(out, e.msg.raw_properties(), e.msg.body());
    false
}

/// A page's entries, and which of them are [`STORED`] (their message is a
/// placeholder until [`resolve`] reads it).
type Decoded = (Vec<Entry>, Vec<(usize, RecordAt)>);

fn decode(data: &[u8], base: Option<Instant>) -> Result<Decoded, Damage> {
    if data.len() < 8 {
        return Err(Damage::Truncated);
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let crc = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    let payload = data.get(8..8 + len).ok_or(Damage::Truncated)?;
    if crc32fast::hash(payload) != crc {
        return Err(Damage::Checksum);
    }
    let mut r = Reader { b: payload };
    let n = r.u32()? as usize;
    // An entry takes at least 20 bytes: no allocation sized by an
    // unchecked count.
    let mut out = Vec::with_capacity(n.min(r.b.len() / 20));
    let mut stored = Vec::new();
    for _ in 0..n {
        let seq = r.u64()?;
        let flags = r.u8()?;
        let level = r.u8()?;
        let returns = r.u32()?;
        let persist = if flags & PERSIST != 0 {
            Some(r.u64()?)
        } else {
            None
        };
        let expires = if flags & EXPIRES != 0 {
            let d = Duration::from_nanos(r.u64()?);
            let b = base.ok_or(Damage::Malformed("expiry without a base"))?;
            Some(if flags & EXPIRES_BEFORE_BASE != 0 {
                b.checked_sub(d).unwrap_or(b)
            } else {
                b + d
            })
        } else {
            None
        };
        if flags & STORED != 0 {
            if persist.is_none() {
                return Err(Damage::Malformed("a stored entry without a store id"));
            }
            let at = RecordAt {
                segment: r.u64()?,
                offset: r.u64()?,
                len: r.u64()?,
            };
            stored.push((out.len(), at));
            // A placeholder with the id, checked against the record read
            // back.
            let mut msg = Msg::with_encoded(b"", b"", &[0, 0], bytes::Bytes::new());
            msg.set_persist(persist);
            msg.set_at(Some(at));
            out.push(Entry {
                seq,
                msg,
                redelivered: flags & REDELIVERED != 0,
                level,
                expires: expires.into(),
                returns,
            });
            continue;
        }
        let exchange = r.short()?;
        let routing_key = r.short()?;
        let nbcc = r.u8()?;
        let mut bcc = Vec::with_capacity(usize::from(nbcc).min(r.b.len()));
        for _ in 0..nbcc {
            bcc.push(r.short()?);
        }
        let (properties, body) = r.content()?;
        let mut msg = Msg::with_encoded(
            exchange.as_bytes(),
            routing_key.as_bytes(),
            &properties,
            body,
        );
        msg.set_persist(persist);
        msg.set_bcc(bcc);
        out.push(Entry {
            seq,
            msg,
            redelivered: flags & REDELIVERED != 0,
            level,
            expires: expires.into(),
            returns,
        });
    }
    if !r.b.is_empty() {
        return Err(Damage::Malformed("bytes after the page's entries"));
    }
    Ok((out, stored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_types::{BasicProperties, ShortString};
    use bytes::Bytes;

    fn entry(seq: u64, expires: Option<Instant>) -> Entry {
        Entry {
            seq,
            msg: {
                let mut m = Msg::new(
                    b"x",
                    b"rk",
                    &BasicProperties {
                        priority: Some(3),
                        ..Default::default()
                    },
                    Bytes::from(format!("body {seq}")),
                );
                m.set_persist(seq.is_multiple_of(2).then_some(seq + 100));
                m.set_bcc(vec![ShortString::from_static("b")]);
                m
            },
            redelivered: seq.is_multiple_of(3),
            level: 2,
            expires: expires.into(),
            returns: seq as u32,
        }
    }

    #[test]
    fn a_page_comes_back_as_it_went() {
        let now = Instant::now();
        let pager = Pager::new(Box::<MemPages>::default(), Paging::default());
        let entries: Vec<Entry> = (0..5)
            .map(|i| {
                let t = match i {
                    0 => None,
                    1 => Some(now + Duration::from_millis(5)),
                    _ => Some(now + Duration::from_millis(1) * i as u32),
                };
                entry(i, t)
            })
            .collect();
        let page = pager.write(entries.clone()).expect("written");
        assert_eq!((page.count, page.bytes, page.persistent), (5, 30, true));
        let back = pager.read(page).expect("read");
        for (a, b) in entries.iter().zip(&back) {
            assert_eq!(a.seq, b.seq);
            assert_eq!(a.redelivered, b.redelivered);
            assert_eq!(a.level, b.level);
            assert_eq!(a.expires, b.expires);
            assert_eq!(a.returns, b.returns);
            assert_eq!(a.msg.body(), b.msg.body());
            assert_eq!(a.msg.persist(), b.msg.persist());
            assert_eq!(a.msg.properties(), b.msg.properties());
            assert_eq!(a.msg.exchange(), b.msg.exchange());
            assert_eq!(a.msg.routing_key(), b.msg.routing_key());
            assert_eq!(a.msg.bcc(), b.msg.bcc());
            assert_eq!(a.msg, b.msg);
        }
        assert_eq!(back.len(), 5);
        assert_eq!(pager.stats().pages, 0);
    }

    #[test]
    fn failures_hand_back_or_count_the_loss() {
        let pager = Pager::new(
            Box::new(MemPages::default().failing_writes(true)),
            Paging::default(),
        );
        let back = pager.write(vec![entry(1, None)]).expect_err("refused");
        assert_eq!(back.len(), 1);
        assert_eq!(pager.stats().write_errors, 1);

        let corrupt = Pager::new(
            Box::new(MemPages::default().corrupting(true)),
            Paging::default(),
        );
        let page = corrupt
            .write(vec![entry(1, None), entry(2, None)])
            .expect("written");
        assert!(corrupt.read(page).is_none());
        assert_eq!(corrupt.stats().lost, 2);
    }

    #[test]
    fn any_bytes_decode_to_an_error_or_entries_never_a_panic() {
        let pager = Pager::new(Box::<MemPages>::default(), Paging::default());
        let page = pager
            .write(vec![entry(1, None), entry(2, None)])
            .expect("written");
        let mut inner = pager.lock();
        let data = inner.store.take(page.id).expect("held");
        drop(inner);
        for cut in 0..data.len() {
            assert!(decode(&data[..cut], None).is_err());
        }
        // Checksum recomputed over a damaged payload: the parser itself
        // must refuse, not panic.
        for i in 8..data.len() {
            let mut d = data.clone();
            d[i] ^= 0x5a;
            let crc = crc32fast::hash(&d[8..]);
            d[4..8].copy_from_slice(&crc.to_le_bytes());
            let _ = decode(&d, None);
        }
    }

    /// Segments in memory, for [`RecordSource`].
    #[derive(Debug, Default)]
    struct MemSegments(HashMap<u64, Vec<u8>>);

    impl RecordSource for MemSegments {
        fn read(&mut self, segment: u64, offset: u64, len: u64) -> io::Result<Vec<u8>> {
            self.0
                .get(&segment)
                .and_then(|d| d.get(offset as usize..(offset + len) as usize))
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
        }
    }

    /// Messages as recovery hands them over: each with where its publish
    /// record is in `segments` (two segments, a record of another message
    /// between some of them, so reads are split and spans skip gaps).
    fn recovered(n: u64, segments: &mut MemSegments) -> Vec<Entry> {
        (0..n)
            .map(|i| {
                let seg = 1 + i / 5;
                let data = segments.0.entry(seg).or_default();
                if i % 3 == 0 {
                    crate::store::Record::Remove {
                        id: 999,
                        queue: crate::store::queue_key("/", ShortString::from_static("q")),
                    }
                    .encode(data);
                }
                let offset = data.len() as u64;
                let properties = BasicProperties {
                    priority: Some(i as u8),
                    ..Default::default()
                };
                let body = Bytes::from(format!("recovered {i} {}", "x".repeat(200)));
                crate::store::Record::Publish {
                    id: 100 + i,
                    queues: vec![crate::store::queue_key("/", ShortString::from_static("q"))],
                    exchange: ShortString::from_static("x"),
                    routing_key: ShortString::from_static("rk"),
                    properties: {
                        let mut v = Vec::new();
                        amqp_wire::encode_properties(&properties, &mut v).unwrap();
                        v.into()
                    },
                    body: body.clone(),
                }
                .encode(data);
                let at = RecordAt {
                    segment: seg,
                    offset,
                    len: data.len() as u64 - offset,
                };
                Entry {
                    seq: i,
                    msg: {
                        let mut m = Msg::new(b"x", b"rk", &properties, body);
                        m.set_persist(Some(100 + i));
                        m.set_at(Some(at));
                        m
                    },
                    redelivered: i % 2 == 0,
                    level: 0,
                    expires: crate::queue::Expiry::NEVER,
                    returns: 0,
                }
            })
            .collect()
    }

    #[test]
    fn a_recovered_message_pages_as_where_its_record_is() {
        let mut segments = MemSegments::default();
        let entries = recovered(12, &mut segments);
        let full = Pager::new(Box::<MemPages>::default(), Paging::default());
        let page = full.write(entries.clone()).expect("written");
        let full_size = full.lock().store.take(page.id).unwrap().len();

        let pager = Pager::new(Box::<MemPages>::default(), Paging::default())
            .with_records(Box::new(segments));
        let page = pager.write(entries.clone()).expect("written");
        assert_eq!((page.count, page.persistent), (12, true));
        assert_eq!(
            (pager.stats().by_reference, full.stats().by_reference),
            (12, 0)
        );
        let back = pager.read(page).expect("read back from the segments");
        assert_eq!(back.len(), 12);
        for (a, b) in entries.iter().zip(&back) {
            assert_eq!(a.seq, b.seq);
            assert_eq!(a.redelivered, b.redelivered);
            assert_eq!(a.msg, b.msg, "message {}", a.seq);
        }
        // Written again, it is still by reference: only the where.
        let again = pager.write(back).expect("written");
        let stored_size = {
            let mut inner = pager.lock();
            let data = inner.store.take(again.id).unwrap();
            inner.store.write(again.id, &data).unwrap();
            data.len()
        };
        assert!(
            stored_size * 2 < full_size,
            "{stored_size} bytes by reference, {full_size} with the messages"
        );
        assert!(pager.read(again).is_some());
    }

    #[test]
    fn a_recovered_page_whose_records_are_damaged_is_lost_whole() {
        // A flipped byte (checksum), a cut segment, another message's
        // record at the place: each loses the page, and counts it.
        for damage in 0..3 {
            let mut segments = MemSegments::default();
            let entries = recovered(8, &mut segments);
            let at = entries[6].msg.at().unwrap();
            match damage {
                0 => segments.0.get_mut(&at.segment).unwrap()[at.offset as usize + 20] ^= 1,
                1 => segments
                    .0
                    .get_mut(&at.segment)
                    .unwrap()
                    .truncate(at.offset as usize + 5),
                _ => {
                    let other = entries[5].msg.at().unwrap();
                    let mut e = entries.clone();
                    e[6].msg.set_at(Some(other));
                    let pager = Pager::new(Box::<MemPages>::default(), Paging::default())
                        .with_records(Box::new(segments));
                    let page = pager.write(e).expect("written");
                    assert!(pager.read(page).is_none(), "a record of another message");
                    assert_eq!(pager.stats().lost, 8);
                    continue;
                }
            }
            let pager = Pager::new(Box::<MemPages>::default(), Paging::default())
                .with_records(Box::new(segments));
            let page = pager.write(entries).expect("written");
            assert!(pager.read(page).is_none(), "damage {damage}");
            assert_eq!(pager.stats().lost, 8);
        }
    }

    #[test]
    fn background_pages_come_back_written_or_not_in_reused_slots() {
        let dir = std::env::temp_dir().join(format!("amqp-bgpages-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = || std::fs::read_dir(&dir).unwrap().count();
        let mut pages = BackgroundPages::open(&dir).expect("opened");
        // Lengths go down, so later pages overwrite longer ones.
        let page = |i: u64| vec![i as u8; 3000 - i as usize];
        let kept = |i: &u64| !i.is_multiple_of(3) && !i.is_multiple_of(5);
        for i in 1..=200 {
            pages.write(i, &page(i)).unwrap();
            // Some are read back at once (likely before they are
            // written), some discarded.
            if i % 3 == 0 {
                assert_eq!(pages.take(i).unwrap(), page(i));
            } else if i % 5 == 0 {
                pages.discard(i);
            }
        }
        pages.flush();
        let n = (1..=200u64).filter(kept).count();
        assert!(files() >= n && files() <= n + BackgroundPages::KEEP_FREE);
        assert_eq!(files(), pages.files());
        for i in (1..=200).filter(kept) {
            assert_eq!(pages.take(i).unwrap(), page(i), "page {i}");
        }
        assert!(pages.take(3).is_err(), "taken once");
        assert_eq!(files(), BackgroundPages::KEEP_FREE, "the rest deleted");
        // The next pages go into the free slots: no file is created.
        for i in 201..=210 {
            pages.write(i, &page(i - 200)).unwrap();
        }
        pages.flush();
        assert_eq!(files(), BackgroundPages::KEEP_FREE);
        for i in 201..=210 {
            assert_eq!(pages.take(i).unwrap(), page(i - 200), "page {i}");
        }
        let p = lock_pending(&pages.shared.0);
        assert_eq!(
            (p.bytes, p.queued, p.pages.len(), p.written.len()),
            (0, 0, 0, 0)
        );
        drop(p);
        drop(pages);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dir_pages_are_files_removed_when_read() {
        let dir = std::env::temp_dir().join(format!("amqp-paging-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0000000000000009.page"), b"old").unwrap();
        let mut pages = DirPages::open(&dir).expect("opened");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "old pages cleared"
        );
        pages.write(1, b"abc").unwrap();
        pages.write(2, b"def").unwrap();
        assert_eq!(pages.take(1).unwrap(), b"abc");
        pages.discard(2);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        assert!(pages.take(1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
