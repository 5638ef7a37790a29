//! Waits to the microsecond for rate limits (`-r`, `-R`).
//!
//! PerfTest spreads a rate's messages evenly: its rate limiter (Guava's
//! `SmoothBursty`) hands out one permit every `1 / rate` seconds and sleeps
//! to the microsecond until the next one. tokio's timers tick in whole
//! milliseconds and round a deadline up to the next tick, so a producer
//! paced by them at 10,000 msg/s wakes every 1–2 ms and sends 10–20
//! messages at once; a fixed-rate latency row then measures how such a
//! burst queues behind itself in the broker and the consumer, not the time
//! one message takes.
//!
//! On Linux a [`Pacer`] arms a `timerfd` (a high-resolution kernel timer)
//! that tokio's reactor watches, so the task wakes at the due time without
//! spinning; elsewhere, or if the kernel refuses a timerfd, it falls back
//! to tokio's sleep.

use std::time::Instant;

/// A sub-millisecond sleep for one task (one timer, re-armed each time).
#[derive(Debug, Default)]
pub struct Pacer {
    #[cfg(target_os = "linux")]
    timer: Option<linux::Timer>,
    /// The timerfd could not be made: tokio's sleep from then on.
    #[cfg(target_os = "linux")]
    failed: bool,
}

impl Pacer {
    /// A pacer; its timer is made at the first [`sleep_until`](Self::sleep_until).
    pub fn new() -> Pacer {
        Pacer::default()
    }

    /// Returns at `due` (at once if it has passed). Cancel-safe: a dropped
    /// sleep leaves the timer armed, and the next call re-arms it.
    pub async fn sleep_until(&mut self, due: Instant) {
        let wait = due.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            if self.timer.is_none() && !self.failed {
                self.timer = linux::Timer::new().ok();
                self.failed = self.timer.is_none();
            }
            if let Some(t) = &self.timer {
                match t.sleep(wait).await {
                    Ok(()) => return,
                    Err(_) => {
                        self.timer = None;
                        self.failed = true;
                    }
                }
            }
        }
        tokio::time::sleep_until(due.into()).await;
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
        timerfd_settime,
    };
    use std::io;
    use std::os::fd::OwnedFd;
    use std::time::Duration;
    use tokio::io::unix::AsyncFd;

    /// A non-blocking monotonic timerfd registered with tokio's reactor.
    #[derive(Debug)]
    pub(super) struct Timer {
        fd: AsyncFd<OwnedFd>,
    }

    impl Timer {
        pub(super) fn new() -> io::Result<Timer> {
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            // tokio 1.54 deprecated `AsyncFd::new` for types whose
            // `as_raw_fd` could change or close under it, and made its
            // replacement `unsafe`. An `OwnedFd` owned by the `AsyncFd` is
            // open and the same descriptor until the `AsyncFd` drops it,
            // which is what `register` asks its caller to promise.
            #[allow(deprecated)]
            let fd = AsyncFd::new(fd)?;
            Ok(Timer { fd })
        }

        /// Arms the timer `wait` (non-zero) from now and waits for it.
        pub(super) async fn sleep(&self, wait: Duration) -> io::Result<()> {
            let spec = Itimerspec {
                it_interval: Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: Timespec {
                    tv_sec: wait.as_secs().try_into().unwrap_or(i64::MAX),
                    // A zero value would disarm the timer.
                    tv_nsec: i64::from(wait.subsec_nanos()).max(1),
                },
            };
            // Re-arming also clears expirations a dropped sleep left.
            timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
            loop {
                let mut ready = self.fd.readable().await?;
                let mut count = [0u8; 8];
                match rustix::io::read(self.fd.get_ref(), &mut count) {
                    Ok(_) => return Ok(()),
                    // Readiness left over from an earlier, dropped sleep.
                    Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sleeps_until_the_due_time_and_no_less() {
        let mut p = Pacer::new();
        for micros in [150u64, 400, 900, 2_500] {
            let start = Instant::now();
            let due = start + Duration::from_micros(micros);
            p.sleep_until(due).await;
            assert!(Instant::now() >= due, "woke before {micros} µs");
        }
        #[cfg(target_os = "linux")]
        assert!(p.timer.is_some(), "the timerfd, not tokio's sleep");
    }

    #[tokio::test]
    async fn a_past_due_time_returns_at_once() {
        let mut p = Pacer::new();
        let start = Instant::now();
        p.sleep_until(start - Duration::from_millis(5)).await;
        p.sleep_until(start).await;
        #[cfg(target_os = "linux")]
        assert!(p.timer.is_none(), "no timer made for a time that passed");
    }

    #[tokio::test]
    async fn a_dropped_sleep_does_not_end_the_next_one_early() {
        let mut p = Pacer::new();
        // Arm for 1 ms and drop the sleep at once: the timer fires later
        // with nobody waiting.
        tokio::select! {
            biased;
            _ = p.sleep_until(Instant::now() + Duration::from_millis(1)) => {}
            _ = std::future::ready(()) => {}
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        let due = Instant::now() + Duration::from_millis(4);
        p.sleep_until(due).await;
        assert!(
            Instant::now() >= due,
            "a stale expiry ended the sleep early"
        );
    }
}
