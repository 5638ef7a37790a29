//! The file system the message store runs over: a small trait, [`Disk`],
//! with exactly the operations the store's writer ([`crate::store::Log`]),
//! recovery ([`crate::store::recover_on`]) and
//! [`crate::store::write_atomically_on`] use; the real one over `std::fs`
//! ([`RealDisk`], what the broker runs on); and a simulated one in memory
//! ([`SimDisk`]) that tests and fuzzers crash.
//!
//! [`SimDisk`] keeps, for every file, the bytes a reader sees (the page
//! cache) and how many of them are durable (synced), and for the
//! namespace, the directory as of the last directory sync plus the
//! creations, removals and renames since. Driven by a seed, it injects:
//!
//! * **a crash** ([`SimDisk::crash`]): of each file's unsynced bytes a
//!   random prefix survives (none, some or all: a torn write), sometimes
//!   followed by a few garbage bytes (a sector half written) or with a
//!   run of zeros inside it (a page written out of order); of the
//!   directory operations since the last directory sync, a random prefix
//!   survives (they are journaled in order). Synced bytes always survive.
//! * **fsync failure** ([`SimDisk::fail_next_sync`],
//!   [`SimDisk::fail_syncs`]): `sync_data`/`sync_all`/`sync_dir` return
//!   `EIO`; what they should have made durable stays volatile (and may be
//!   lost at the next crash).
//! * **a full disk** ([`SimDisk::set_capacity`]): a write that does not
//!   fit writes the prefix that fits, then fails with
//!   [`io::ErrorKind::StorageFull`]; nothing already written changes.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// What the message store needs from a file system. Files are written
/// only by appending, through a handle; everything else goes by path.
pub trait Disk: Debug {
    /// An open file, written by appending.
    type File: Debug;
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir` (none if it does not exist).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole content of the file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Up to `into.len()` bytes of the file at `path` from `offset`
    /// (fewer only at its end: 0 there).
    fn read_part(&self, path: &Path, offset: u64, into: &mut [u8]) -> io::Result<usize>;
    /// `len` bytes of the file at `path` from `offset` (an error, before
    /// any allocation, if the file is shorter).
    fn read_at(&self, path: &Path, offset: u64, len: u64) -> io::Result<Vec<u8>>;
    /// Creates the file at `path` for writing: with `new`, failing if it
    /// exists; otherwise replacing (truncating) any file there.
    fn create(&self, path: &Path, new: bool) -> io::Result<Self::File>;
    /// Creates a new segment of the message store's log at `path`
    /// (failing if it exists); [`RealDisk`] writes it with direct I/O.
    /// Past the last record such a file may end in zeros, up to a whole
    /// block: a record never starts with a zero length, so readers stop
    /// there.
    fn create_log(&self, path: &Path) -> io::Result<Self::File> {
        self.create(path, true)
    }
    /// Writes all of `data` at the end of `file` (it may write a prefix
    /// and fail).
    fn append(&self, file: &mut Self::File, data: &[u8]) -> io::Result<()>;
    /// [`append`](Self::append)s the bytes `encode` adds to the end of
    /// the vector it is handed (it must not touch what is there before);
    /// returns how many. [`RealDisk`] has them encoded straight into its
    /// direct-I/O buffer; the default encodes into a vector of its own.
    fn append_with(
        &self,
        file: &mut Self::File,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> io::Result<usize> {
        let mut data = Vec::new();
        encode(&mut data);
        self.append(file, &data)?;
        Ok(data.len())
    }
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self, file: &mut Self::File) -> io::Result<()>;
    /// Makes the file's data and metadata durable (`fsync`).
    fn sync_all(&self, file: &mut Self::File) -> io::Result<()>;
    /// Makes the data of the file at `path` durable (`fsync`).
    fn sync_path(&self, path: &Path) -> io::Result<()>;
    /// Cuts the file at `path` to `len` bytes, durably.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Removes the file at `path` (durable after [`sync_dir`](Self::sync_dir)).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` (durable after
    /// [`sync_dir`](Self::sync_dir)).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the creations, removals and renames in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system, through `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealDisk;

/// Direct I/O (`O_DIRECT`) works in blocks of this size, from buffers
/// aligned to it.
pub(crate) const BLOCK: usize = 4096;

/// A buffer whose slice starts at a [`BLOCK`]-aligned address (found by
/// offsetting into a larger vector: no unsafe code).
#[derive(Debug, Default)]
pub(crate) struct Aligned {
    v: Vec<u8>,
    off: usize,
}

impl Aligned {
    /// `len` bytes rounded up to whole blocks, aligned (what was there
    /// before is lost when it grows).
    pub(crate) fn blocks(&mut self, len: usize) -> &mut [u8] {
        self.grow(len, 0)
    }

    /// [`blocks`](Self::blocks), keeping the first `keep` bytes when it
    /// grows.
    fn grow(&mut self, len: usize, keep: usize) -> &mut [u8] {
        let n = len.div_ceil(BLOCK) * BLOCK;
        if self.v.len() < self.off + n {
            let mut v = vec![0; n + BLOCK];
            let off = (BLOCK - v.as_ptr() as usize % BLOCK) % BLOCK;
            v[off..off + keep].copy_from_slice(&self.v[self.off..self.off + keep]);
            (self.v, self.off) = (v, off);
        }
        &mut self.v[self.off..self.off + n]
    }

    /// Keeps the first `keep` bytes, appends what `encode` adds after
    /// them, and pads with zeros to whole blocks: returns the blocks and
    /// the length before padding. Encoding into the vector itself saves
    /// copying the bytes in (3% of the broker's instructions with
    /// persistent 1 KiB messages). If the vector moved while it grew, the
    /// bytes move to a new aligned one with room to spare, which happens
    /// only while the appends grow.
    fn fill(&mut self, keep: usize, encode: &mut dyn FnMut(&mut Vec<u8>)) -> (&mut [u8], usize) {
        self.v.truncate(self.off + keep);
        encode(&mut self.v);
        let total = self.v.len() - self.off;
        let n = total.div_ceil(BLOCK) * BLOCK;
        let aligned = (self.v.as_ptr() as usize + self.off).is_multiple_of(BLOCK);
        if !aligned || self.v.capacity() < self.off + n {
            let mut v = Vec::with_capacity(2 * n + BLOCK);
            let off = (BLOCK - v.as_ptr() as usize % BLOCK) % BLOCK;
            v.resize(off, 0);
            v.extend_from_slice(&self.v[self.off..]);
            (self.v, self.off) = (v, off);
        }
        // (Within the capacity: the vector does not move.)
        self.v.resize(self.off + n, 0);
        (&mut self.v[self.off..], total)
    }

    /// After [`fill`](Self::fill)'s blocks are written: the partial last
    /// block of `total` bytes moves to the front, for the next append.
    fn keep_tail(&mut self, total: usize) {
        let last = total / BLOCK * BLOCK;
        self.v
            .copy_within(self.off + last..self.off + total, self.off);
        self.v.truncate(self.off + total - last);
    }
}

/// Opens `path` with `options` and `O_DIRECT`, or without it where the
/// file system refuses it (tmpfs); says which.
pub(crate) fn open_direct(options: &OpenOptions, path: &Path) -> io::Result<(File, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    match options
        .clone()
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
            options.open(path).map(|f| (f, false))
        }
        r => r.map(|f| (f, true)),
    }
}

/// A file [`RealDisk`] appends to: plainly, or for a log segment with
/// direct I/O, in whole blocks from an aligned buffer that keeps the
/// partial last block (each append rewrites it, zero-padded). Appending
/// a record into new page-cache pages was 62% of the broker's CPU with
/// persistent 1 KiB messages on this machine (`perf`).
#[derive(Debug)]
pub struct RealFile {
    file: File,
    /// `Some` with direct I/O: the buffer (its first `len % BLOCK` bytes
    /// are the partial last block).
    direct: Option<Aligned>,
    /// Without direct I/O: what [`Disk::append_with`] encodes into.
    scratch: Vec<u8>,
    /// Bytes appended.
    len: u64,
}

impl Disk for RealDisk {
    type File = RealFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        match fs::read_dir(dir) {
            Ok(entries) => {
                for e in entries {
                    v.push(e?.file_name().to_string_lossy().into_owned());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(v)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn read_part(&self, path: &Path, offset: u64, into: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let f = File::open(path)?;
        let mut n = 0;
        while n < into.len() {
            match f.read_at(&mut into[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn read_at(&self, path: &Path, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let f = File::open(path)?;
        let size = f.metadata()?.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: {len} bytes at {offset} are past its end ({size})",
                    path.display()
                ),
            ));
        }
        let mut buf = vec![0; len as usize];
        f.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn create(&self, path: &Path, new: bool) -> io::Result<RealFile> {
        let file = if new {
            OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(path)?
        } else {
            File::create(path)?
        };
        Ok(RealFile {
            file,
            direct: None,
            scratch: Vec::new(),
            len: 0,
        })
    }

    fn create_log(&self, path: &Path) -> io::Result<RealFile> {
        let mut o = OpenOptions::new();
        o.create_new(true).write(true);
        let (file, direct) = open_direct(&o, path)?;
        Ok(RealFile {
            file,
            direct: direct.then(Aligned::default),
            scratch: Vec::new(),
            len: 0,
        })
    }

    #[inline]
    fn append(&self, file: &mut RealFile, data: &[u8]) -> io::Result<()> {
        self.append_with(file, &mut |v| v.extend_from_slice(data))?;
        Ok(())
    }

    fn append_with(
        &self,
        file: &mut RealFile,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> io::Result<usize> {
        let Some(buf) = &mut file.direct else {
            file.scratch.clear();
            encode(&mut file.scratch);
            file.file.write_all(&file.scratch)?;
            file.len += file.scratch.len() as u64;
            return Ok(file.scratch.len());
        };
        use std::os::unix::fs::FileExt;
        let keep = (file.len % BLOCK as u64) as usize;
        let start = file.len - keep as u64;
        let (blocks, total) = buf.fill(keep, encode);
        file.file.write_all_at(blocks, start)?;
        file.len += (total - keep) as u64;
        buf.keep_tail(total);
        Ok(total - keep)
    }

    #[inline]
    fn sync_data(&self, file: &mut RealFile) -> io::Result<()> {
        file.file.sync_data()
    }

    fn sync_all(&self, file: &mut RealFile) -> io::Result<()> {
        file.file.sync_all()
    }

    fn sync_path(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// A simulated file system in memory with fault injection (see the
/// module docs). Clones share the same disk, so a test can keep one to
/// crash while the store's [`Log`](crate::store::Log) owns another.
#[derive(Debug, Clone)]
pub struct SimDisk {
    inner: Arc<Mutex<Sim>>,
}

/// A handle to a file of a [`SimDisk`]: its inode.
#[derive(Debug)]
pub struct SimFile {
    ino: usize,
}

#[derive(Debug, Default)]
struct Inode {
    /// What a reader sees.
    data: Vec<u8>,
    /// How many leading bytes of `data` are durable.
    synced: usize,
}

#[derive(Debug)]
enum DirOp {
    Link(PathBuf, usize),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl DirOp {
    fn apply(&self, names: &mut BTreeMap<PathBuf, usize>) {
        match self {
            DirOp::Link(p, ino) => {
                names.insert(p.clone(), *ino);
            }
            DirOp::Unlink(p) => {
                names.remove(p);
            }
            DirOp::Rename(from, to) => {
                if let Some(ino) = names.remove(from) {
                    names.insert(to.clone(), ino);
                }
            }
        }
    }

    fn dir(&self) -> &Path {
        let p = match self {
            DirOp::Link(p, _) | DirOp::Unlink(p) | DirOp::Rename(_, p) => p,
        };
        p.parent().unwrap_or(Path::new(""))
    }
}

#[derive(Debug, Default)]
struct Sim {
    rng: u64,
    inodes: Vec<Inode>,
    /// The namespace as it is now.
    names: BTreeMap<PathBuf, usize>,
    /// The namespace as of the last directory syncs.
    durable: BTreeMap<PathBuf, usize>,
    /// Directory operations not yet made durable, in order.
    pending: Vec<DirOp>,
    /// Sync calls left to fail.
    fail_next: u32,
    /// Chance (per mille) that any sync fails.
    fail_rate: u32,
    capacity: Option<u64>,
    crashes: u64,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file (simulated)", path.display()),
    )
}

impl Sim {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn sync_fails(&mut self) -> bool {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return true;
        }
        self.fail_rate > 0 && self.below(1000) < u64::from(self.fail_rate)
    }

    fn eio() -> io::Error {
        io::Error::other("input/output error (simulated fsync failure)")
    }

    fn used(&self) -> u64 {
        let mut inos: Vec<usize> = self
            .names
            .values()
            .chain(self.durable.values())
            .copied()
            .collect();
        inos.sort_unstable();
        inos.dedup();
        inos.iter().map(|&i| self.inodes[i].data.len() as u64).sum()
    }

    fn lookup(&self, path: &Path) -> io::Result<usize> {
        self.names.get(path).copied().ok_or_else(|| not_found(path))
    }
}

impl SimDisk {
    /// An empty disk whose faults are drawn from `seed`.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            inner: Arc::new(Mutex::new(Sim {
                rng: seed,
                ..Default::default()
            })),
        }
    }

    fn sim(&self) -> MutexGuard<'_, Sim> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `n` syncs (of files or directories) fail with `EIO`.
    pub fn fail_next_sync(&self, n: u32) {
        self.sim().fail_next = n;
    }

    /// Every sync fails with this chance, in thousandths.
    pub fn fail_syncs(&self, per_mille: u32) {
        self.sim().fail_rate = per_mille;
    }

    /// The disk holds at most `bytes` of file data (`None`: unlimited);
    /// writes past it fail with [`io::ErrorKind::StorageFull`].
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.sim().capacity = bytes;
    }

    /// Bytes of file data held.
    pub fn used(&self) -> u64 {
        self.sim().used()
    }

    /// Crashes done so far.
    pub fn crashes(&self) -> u64 {
        self.sim().crashes
    }

    /// The machine crashes and comes back: unsynced data and directory
    /// operations are lost or torn (see the module docs). Injected faults
    /// are cleared (a new disk may be in place: capacity is kept).
    /// Handles opened before must not be used again.
    pub fn crash(&self) {
        let mut s = self.sim();
        s.crashes += 1;
        // A prefix of the directory operations since the last sync.
        let pending = std::mem::take(&mut s.pending);
        let keep = s.below(pending.len() as u64 + 1) as usize;
        let mut names = std::mem::take(&mut s.durable);
        for op in &pending[..keep] {
            op.apply(&mut names);
        }
        // Each file: a prefix of its unsynced bytes, maybe with garbage.
        for ino in 0..s.inodes.len() {
            let (len, synced) = (s.inodes[ino].data.len(), s.inodes[ino].synced);
            if len > synced {
                let cut = synced + s.below((len - synced) as u64 + 1) as usize;
                s.inodes[ino].data.truncate(cut);
                if cut > synced && s.below(8) == 0 {
                    // A page in the middle never made it: zeros, with
                    // what follows it intact.
                    let at = synced + s.below((cut - synced) as u64) as usize;
                    let n = 1 + s.below(512) as usize;
                    let end = (at + n).min(cut);
                    s.inodes[ino].data[at..end].fill(0);
                } else if s.below(4) == 0 {
                    let n = 1 + s.below(16) as usize;
                    for _ in 0..n {
                        let b = s.next() as u8;
                        s.inodes[ino].data.push(b);
                    }
                }
            }
            let n = s.inodes[ino].data.len();
            s.inodes[ino].synced = n;
        }
        s.names = names.clone();
        s.durable = names;
        s.fail_next = 0;
        s.fail_rate = 0;
    }
}

impl Disk for SimDisk {
    type File = SimFile;

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories are implicit: every path's parent exists.
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.sim();
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.sim();
        let ino = s.lookup(path)?;
        Ok(s.inodes[ino].data.clone())
    }

    fn read_part(&self, path: &Path, offset: u64, into: &mut [u8]) -> io::Result<usize> {
        let s = self.sim();
        let data = &s.inodes[s.lookup(path)?].data;
        let from = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = into.len().min(data.len() - from);
        into[..n].copy_from_slice(&data[from..from + n]);
        Ok(n)
    }

    fn read_at(&self, path: &Path, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let s = self.sim();
        let ino = s.lookup(path)?;
        let data = &s.inodes[ino].data;
        usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, n)| data.get(o..o.checked_add(n)?))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}: {len} bytes at {offset} are past its end (simulated)",
                        path.display()
                    ),
                )
            })
    }

    fn create(&self, path: &Path, new: bool) -> io::Result<SimFile> {
        let mut s = self.sim();
        if new && s.names.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists (simulated)", path.display()),
            ));
        }
        let ino = s.inodes.len();
        s.inodes.push(Inode::default());
        let op = DirOp::Link(path.to_owned(), ino);
        op.apply(&mut s.names);
        s.pending.push(op);
        Ok(SimFile { ino })
    }

    fn append(&self, file: &mut SimFile, data: &[u8]) -> io::Result<()> {
        let mut s = self.sim();
        let room = match s.capacity {
            Some(c) => c.saturating_sub(s.used()),
            None => u64::MAX,
        };
        let fits = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
        let inode = s
            .inodes
            .get_mut(file.ino)
            .ok_or_else(|| not_found(Path::new("?")))?;
        inode.data.extend_from_slice(&data[..fits]);
        if fits < data.len() {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (simulated)",
            ));
        }
        Ok(())
    }

    fn sync_data(&self, file: &mut SimFile) -> io::Result<()> {
        let mut s = self.sim();
        if s.sync_fails() {
            return Err(Sim::eio());
        }
        if let Some(inode) = s.inodes.get_mut(file.ino) {
            inode.synced = inode.data.len();
        }
        Ok(())
    }

    fn sync_all(&self, file: &mut SimFile) -> io::Result<()> {
        self.sync_data(file)
    }

    fn sync_path(&self, path: &Path) -> io::Result<()> {
        let mut s = self.sim();
        let ino = s.lookup(path)?;
        if s.sync_fails() {
            return Err(Sim::eio());
        }
        let inode = &mut s.inodes[ino];
        inode.synced = inode.data.len();
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.sim();
        let ino = s.lookup(path)?;
        if s.sync_fails() {
            return Err(Sim::eio());
        }
        let inode = &mut s.inodes[ino];
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len < inode.data.len() {
            inode.data.truncate(len);
        } else {
            inode.data.resize(len, 0);
        }
        inode.synced = inode.data.len();
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.sim();
        s.lookup(path)?;
        let op = DirOp::Unlink(path.to_owned());
        op.apply(&mut s.names);
        s.pending.push(op);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.sim();
        s.lookup(from)?;
        let op = DirOp::Rename(from.to_owned(), to.to_owned());
        op.apply(&mut s.names);
        s.pending.push(op);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.sim();
        if s.sync_fails() {
            return Err(Sim::eio());
        }
        // The operations in `dir` become durable; so do the ones before
        // them (the journal commits in order).
        let Some(last) = s.pending.iter().rposition(|op| op.dir() == dir) else {
            return Ok(());
        };
        let done: Vec<DirOp> = s.pending.drain(..=last).collect();
        for op in &done {
            op.apply(&mut s.durable);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log segment written with direct I/O holds exactly the bytes
    /// appended, then zeros to the end of the block, whatever the sizes
    /// of the appends (each rewrites the partial last block), copied in
    /// or encoded in place (the buffer moving as it grows).
    #[test]
    fn direct_appends_are_the_bytes_appended_then_block_padding() {
        let dir = std::env::temp_dir().join(format!("amqp-broker-direct-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("seg");
        let d = RealDisk;
        let mut f = d.create_log(&path).unwrap();
        let mut all = Vec::new();
        let mut x = 1u64;
        for i in 0..300usize {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = match i % 4 {
                0 => (x >> 33) as usize % 10,
                1 => BLOCK - 1 + (x >> 40) as usize % 3,
                2 => (x >> 33) as usize % 20_000,
                _ => 1,
            };
            let data: Vec<u8> = (0..n)
                .map(|k| (k as u8).wrapping_add(i as u8) | 1)
                .collect();
            if i % 3 == 0 {
                d.append(&mut f, &data).unwrap();
            } else {
                // Encoded in two pieces, straight into the buffer.
                let (a, b) = data.split_at(n / 2);
                let wrote = d
                    .append_with(&mut f, &mut |v| {
                        v.extend_from_slice(a);
                        v.extend_from_slice(b);
                    })
                    .unwrap();
                assert_eq!(wrote, n);
            }
            all.extend_from_slice(&data);
            if i % 50 == 0 {
                d.sync_data(&mut f).unwrap();
            }
        }
        d.sync_data(&mut f).unwrap();
        let on_disk = fs::read(&path).unwrap();
        if f.direct.is_some() {
            assert_eq!(on_disk.len(), all.len().div_ceil(BLOCK) * BLOCK);
        }
        assert_eq!(&on_disk[..all.len()], &all[..]);
        assert!(on_disk[all.len()..].iter().all(|&b| b == 0));
        assert_eq!(f.len, all.len() as u64);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn synced_bytes_survive_a_crash_and_unsynced_ones_may_not() {
        for seed in 0..200 {
            let d = SimDisk::new(seed);
            let dir = Path::new("/m");
            let p = dir.join("a");
            let mut f = d.create(&p, true).unwrap();
            d.sync_dir(dir).unwrap();
            d.append(&mut f, b"durable").unwrap();
            d.sync_data(&mut f).unwrap();
            d.append(&mut f, b"volatile").unwrap();
            let q = dir.join("b");
            d.create(&q, true).unwrap();
            d.crash();
            let after = d.read(&p).unwrap();
            assert!(after.starts_with(b"durable"), "{seed}: {after:?}");
            assert!(d.list(dir).unwrap().contains(&"a".to_string()));
        }
    }

    #[test]
    fn a_full_disk_writes_a_prefix_and_fails() {
        let d = SimDisk::new(1);
        let mut f = d.create(Path::new("/m/a"), true).unwrap();
        d.set_capacity(Some(4));
        let e = d.append(&mut f, b"123456").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(d.read(Path::new("/m/a")).unwrap(), b"1234");
        d.fail_next_sync(1);
        assert!(d.sync_data(&mut f).is_err());
        assert!(d.sync_data(&mut f).is_ok());
    }
}
