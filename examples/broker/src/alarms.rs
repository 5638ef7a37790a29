//! Resource alarms, as RabbitMQ's `vm_memory_monitor` and
//! `rabbit_disk_monitor` raise them: memory above the high watermark, free
//! disk space below the limit. While one is in force the core blocks
//! publishing connections ([`crate::core::Core::set_alarm`]) and the shell
//! stops reading from them; consumers keep draining.
//!
//! The watermark is relative to the machine's memory by default (0.4, as
//! RabbitMQ 3.10) — and, as a deliberate improvement on 3.10, to the
//! cgroup's memory limit when that is lower (a container's limit is the
//! memory the broker really has). Every 100 ms the monitor compares the
//! process's resident set at start plus the core's estimate of what its
//! messages take ([`crate::core::Core::memory_estimate`]) with the
//! watermark (RabbitMQ reads the resident set; here the allocator keeps
//! the freed memory of idle threads, and an alarm waiting for it would
//! never clear); every second it reads the free space of the data
//! directory's file system. A failed write or sync of the message store
//! raises the disk alarm for good. Between checks, publishers spend the
//! headroom as credit ([`crate::core::Core::grant_memory_credit`]): the
//! alarm goes off the moment it is spent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::core::Alarm;
use crate::shell::Shared;

/// What the monitor watches.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The memory high watermark, bytes (`None`: no memory alarm).
    pub memory: Option<u64>,
    /// The free disk space limit, bytes.
    pub disk_free: u64,
    /// Where the data directory is (its file system is watched).
    pub data_dir: PathBuf,
}

/// RabbitMQ's default `vm_memory_high_watermark` (relative).
pub const MEMORY_HIGH_WATERMARK: f64 = 0.4;

/// RabbitMQ's default `disk_free_limit` (50 MB).
pub const DISK_FREE_LIMIT: u64 = 50_000_000;

/// A size as RabbitMQ's configuration writes it: bytes, or a number with
/// `kB`/`KB`/`MB`/`GB`/`TB` (powers of 1000) or `KiB`/`MiB`/`GiB`/`TiB`
/// (powers of 1024, also `k`/`K`, `M`, `G`, `T` alone as RabbitMQ reads
/// them).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (bytes, or e.g. 512MB, 2GiB)"))?;
    let mult: u64 = match unit.trim() {
        "" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "k" | "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        other => return Err(format!("unknown unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The memory the broker may use: the machine's (`/proc/meminfo`), or the
/// cgroup's limit when lower (v2 `memory.max`, v1
/// `memory.limit_in_bytes`). `None` where neither can be read.
pub fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|t| t.trim().parse::<u64>().ok())
    // v1 says "no limit" with a number near 2^63.
    .find(|v| *v < 1 << 60);
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The process's resident set, bytes (`/proc/self/statm`).
pub fn resident_memory() -> Option<u64> {
    let t = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = t.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Free space for unprivileged writers on the file system of `path`.
pub fn free_disk(path: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Watches memory and disk until `shutdown` turns true, raising and
/// clearing the core's alarms (and waking the connections that
/// unblocking concerns).
pub async fn monitor(shared: Arc<Shared>, limits: Limits, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n: u64 = 0;
    // The process without messages (code, runtime, buffers); the messages
    // themselves are counted by the core. (Not the resident set as it
    // goes: the allocator keeps freed memory of idle threads, and an alarm
    // that waited for it would never clear.)
    let baseline = resident_memory().unwrap_or(0);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let memory = limits
            .memory
            .map(|limit| (limit, baseline + shared.with_core(|c| c.memory_estimate())));
        let disk = n.is_multiple_of(10).then(|| {
            shared.store_failed.load(Ordering::Relaxed)
                || free_disk(&limits.data_dir).is_some_and(|f| f < limits.disk_free)
        });
        n += 1;
        shared.with_core(|core| {
            if let Some((limit, used)) = memory {
                core.set_alarm(Alarm::Memory, used > limit);
                core.grant_memory_credit(Some(limit.saturating_sub(used)));
            }
            if let Some(d) = disk {
                core.set_alarm(Alarm::Disk, d);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_rabbitmq_writes_them() {
        assert_eq!(parse_size("50000000"), Ok(50_000_000));
        assert_eq!(parse_size("50MB"), Ok(50_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("5XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn this_machine_has_memory_and_disk() {
        assert!(total_memory().is_some_and(|m| m > 1 << 20));
        assert!(resident_memory().is_some_and(|m| m > 0));
        assert!(free_disk(Path::new(".")).is_some());
    }
}
