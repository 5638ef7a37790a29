//! Shared counters and latency histograms, the per-interval progress line
//! and the summary.

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Latencies are recorded in nanoseconds, up to this bound (larger values
/// saturate).
const MAX_LATENCY_NS: u64 = 1_000_000_000_000;

fn new_histogram() -> Histogram<u64> {
    // The bounds are valid constants, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// A latency histogram shared by the agents: each records a batch of
/// samples under one lock; the reporter takes the interval's histogram.
#[derive(Debug)]
pub struct SharedHistogram {
    interval: Mutex<Histogram<u64>>,
}

impl Default for SharedHistogram {
    fn default() -> Self {
        SharedHistogram {
            interval: Mutex::new(new_histogram()),
        }
    }
}

impl SharedHistogram {
    /// Records samples (nanoseconds) and empties `samples`.
    pub fn record_batch(&self, samples: &mut Vec<u64>) {
        if samples.is_empty() {
            return;
        }
        let mut h = self.interval.lock().unwrap_or_else(|e| e.into_inner());
        for &s in samples.iter() {
            h.saturating_record(s.max(1));
        }
        samples.clear();
    }

    /// The interval's histogram, leaving an empty one.
    pub fn take(&self) -> Histogram<u64> {
        let mut h = self.interval.lock().unwrap_or_else(|e| e.into_inner());
        let out = h.clone();
        h.reset();
        out
    }
}

/// Counters shared by all agents (each adds its batch once per loop turn).
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages published.
    pub sent: AtomicU64,
    /// basic.return received.
    pub returned: AtomicU64,
    /// Publishes confirmed (ack).
    pub confirmed: AtomicU64,
    /// Publishes nacked.
    pub nacked: AtomicU64,
    /// Deliveries received.
    pub received: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Messages published.
    pub sent: u64,
    /// basic.return received.
    pub returned: u64,
    /// Publishes confirmed.
    pub confirmed: u64,
    /// Publishes nacked.
    pub nacked: u64,
    /// Deliveries received.
    pub received: u64,
}

impl Counters {
    /// The current values.
    pub fn totals(&self) -> Totals {
        Totals {
            sent: self.sent.load(Relaxed),
            returned: self.returned.load(Relaxed),
            confirmed: self.confirmed.load(Relaxed),
            nacked: self.nacked.load(Relaxed),
            received: self.received.load(Relaxed),
        }
    }
}

/// Per-agent counts not yet added to the shared [`Counters`].
#[derive(Debug, Default)]
pub struct LocalCounts {
    /// Messages published.
    pub sent: u64,
    /// Returns received.
    pub returned: u64,
    /// Confirms (ack).
    pub confirmed: u64,
    /// Nacks.
    pub nacked: u64,
    /// Deliveries received.
    pub received: u64,
}

impl LocalCounts {
    /// Adds the local counts to `shared` and zeroes them.
    pub fn flush(&mut self, shared: &Counters) {
        for (local, global) in [
            (&mut self.sent, &shared.sent),
            (&mut self.returned, &shared.returned),
            (&mut self.confirmed, &shared.confirmed),
            (&mut self.nacked, &shared.nacked),
            (&mut self.received, &shared.received),
        ] {
            if *local != 0 {
                global.fetch_add(*local, Relaxed);
                *local = 0;
            }
        }
    }
}

/// min/median/75th/95th/99th (and, for `--json`, 99.9th and max) of a
/// histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Minimum, µs.
    pub min: u64,
    /// Median, µs.
    pub median: u64,
    /// 75th percentile, µs.
    pub p75: u64,
    /// 95th percentile, µs.
    pub p95: u64,
    /// 99th percentile, µs.
    pub p99: u64,
    /// 99.9th percentile, µs (in `--json` only, as PerfTest's lines do not
    /// show it).
    pub p999: u64,
    /// Maximum, µs (in `--json` only).
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `h` (recorded in ns).
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        // Nearest µs: bucket bounds sit just below or above round values.
        let us = |ns: u64| (ns + 500) / 1000;
        Percentiles {
            count: h.len(),
            min: us(h.min()),
            median: us(h.value_at_quantile(0.5)),
            p75: us(h.value_at_quantile(0.75)),
            p95: us(h.value_at_quantile(0.95)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    /// `a/b/c/d/e µs`.
    pub fn line(&self) -> String {
        format!(
            "{}/{}/{}/{}/{} µs",
            self.min, self.median, self.p75, self.p95, self.p99
        )
    }

    fn json(&self) -> Value {
        json!({
            "samples": self.count, "min": self.min, "median": self.median,
            "p75": self.p75, "p95": self.p95, "p99": self.p99,
            "p999": self.p999, "max": self.max,
        })
    }
}

/// Which columns the progress line shows (as PerfTest: returned with
/// `-f mandatory`, confirmed/nacked and confirm latency with `-c`).
#[derive(Debug, Clone, Copy)]
pub struct Columns {
    /// `-f mandatory`.
    pub returned: bool,
    /// `-c`.
    pub confirms: bool,
}

/// One progress line.
pub fn progress_line(
    id: &str,
    elapsed: Duration,
    delta: Totals,
    over: Duration,
    cols: Columns,
    latency: &Percentiles,
    confirm_latency: &Percentiles,
) -> String {
    let secs = over.as_secs_f64().max(1e-9);
    let rate = |n: u64| (n as f64 / secs).round() as u64;
    let mut s = format!(
        "id: {id}, time: {:.3} s, sent: {} msg/s",
        elapsed.as_secs_f64(),
        rate(delta.sent)
    );
    if cols.returned {
        s += &format!(", returned: {} msg/s", rate(delta.returned));
    }
    if cols.confirms {
        s += &format!(
            ", confirmed: {} msg/s, nacked: {} msg/s",
            rate(delta.confirmed),
            rate(delta.nacked)
        );
    }
    s += &format!(
        ", received: {} msg/s, min/median/75th/95th/99th consumer latency: {}",
        rate(delta.received),
        latency.line()
    );
    if cols.confirms {
        s += &format!(", confirm latency: {}", confirm_latency.line());
    }
    s
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The test id.
    pub id: String,
    /// From the first publish/consume to the end.
    pub duration: Duration,
    /// Final counts.
    pub totals: Totals,
    /// How many deliveries the sends should have produced (`None` when it
    /// cannot be known: consumers stopped by -D, or a headers exchange).
    pub expected_received: Option<u64>,
    /// Publishes still unconfirmed at the end (confirm mode).
    pub unconfirmed: u64,
    /// Whether confirms were on.
    pub confirms: bool,
    /// Whether the run was count-limited (-C or -D), so exactness is
    /// checked.
    pub count_limited: bool,
    /// Consumer latency over the whole run.
    pub latency: Percentiles,
    /// Confirm latency over the whole run.
    pub confirm_latency: Percentiles,
    /// Broker CPU seconds over the run (--broker-pid).
    pub broker_cpu_s: Option<f64>,
    /// This process's CPU seconds over the run.
    pub self_cpu_s: Option<f64>,
    /// An error that ended the run (broker close, connection failure).
    pub error: Option<String>,
}

impl Summary {
    /// Sent messages per second on average.
    pub fn send_rate(&self) -> f64 {
        self.totals.sent as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    /// Received messages per second on average.
    pub fn receive_rate(&self) -> f64 {
        self.totals.received as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    /// Every expected delivery arrived (true when there is nothing to
    /// check).
    pub fn all_received(&self) -> bool {
        self.expected_received
            .is_none_or(|e| self.totals.received >= e)
    }

    /// Every publish was confirmed or nacked (true without confirms).
    pub fn all_confirmed(&self) -> bool {
        !self.confirms
            || (self.unconfirmed == 0
                && self.totals.confirmed + self.totals.nacked == self.totals.sent)
    }

    /// Whether the counts are exact (only meaningful for count-limited
    /// runs; always true otherwise).
    pub fn counts_exact(&self) -> bool {
        !self.count_limited || (self.all_received() && self.all_confirmed())
    }

    /// The process exit status: 1 on error, 2 on a count mismatch, else 0.
    pub fn exit_code(&self) -> u8 {
        if self.error.is_some() {
            1
        } else if !self.counts_exact() {
            2
        } else {
            0
        }
    }

    fn per_message(&self, cpu: Option<f64>) -> (Option<f64>, Option<f64>) {
        let per = |n: u64| cpu.filter(|_| n > 0).map(|c| c * 1e6 / n as f64);
        (per(self.totals.sent), per(self.totals.received))
    }

    /// The summary lines, as PerfTest prints them, plus the counts check.
    pub fn lines(&self) -> Vec<String> {
        let id = &self.id;
        let t = &self.totals;
        let mut v = vec![
            format!("id: {id}, sending rate avg: {:.0} msg/s", self.send_rate()),
            format!(
                "id: {id}, receiving rate avg: {:.0} msg/s",
                self.receive_rate()
            ),
        ];
        if self.latency.count > 0 {
            v.push(format!(
                "id: {id}, consumer latency min/median/75th/95th/99th {}",
                self.latency.line()
            ));
        }
        if self.confirms && self.confirm_latency.count > 0 {
            v.push(format!(
                "id: {id}, confirm latency min/median/75th/95th/99th {}",
                self.confirm_latency.line()
            ));
        }
        let mut counts = format!(
            "id: {id}, counts: sent {}, returned {}, confirmed {}, nacked {}, received {}",
            t.sent, t.returned, t.confirmed, t.nacked, t.received
        );
        match self.expected_received {
            Some(e) if t.received >= e => counts += &format!(" of {e} expected (all received)"),
            Some(e) if self.count_limited => {
                counts += &format!(" of {e} expected (MISSING {})", e - t.received)
            }
            Some(e) => {
                counts += &format!(
                    " of {e} routed ({} still queued or in flight when the run stopped)",
                    e - t.received
                )
            }
            None => {}
        }
        if self.confirms {
            if self.all_confirmed() {
                counts += ", every publish confirmed";
            } else if self.count_limited {
                counts += &format!(", {} publishes UNCONFIRMED", self.unconfirmed);
            } else {
                counts += &format!(
                    ", {} publishes awaiting a confirm when the run stopped",
                    self.unconfirmed
                );
            }
        }
        v.push(counts);
        if let Some(c) = self.self_cpu_s {
            let (s, r) = self.per_message(Some(c));
            v.push(format!(
                "id: {id}, amqp-perftest CPU: {c:.2} s ({} µs/msg sent, {} µs/msg received)",
                fmt_opt(s),
                fmt_opt(r)
            ));
        }
        if let Some(c) = self.broker_cpu_s {
            let (s, r) = self.per_message(Some(c));
            v.push(format!(
                "id: {id}, broker CPU: {c:.2} s ({} µs/msg sent, {} µs/msg received)",
                fmt_opt(s),
                fmt_opt(r)
            ));
        }
        if let Some(e) = &self.error {
            v.push(format!("id: {id}, error: {e}"));
        }
        v
    }

    /// The summary as one JSON object.
    pub fn to_json(&self) -> Value {
        let t = &self.totals;
        let (bs, br) = self.per_message(self.broker_cpu_s);
        let (ss, sr) = self.per_message(self.self_cpu_s);
        json!({
            "id": self.id,
            "duration_s": self.duration.as_secs_f64(),
            "sent": t.sent,
            "returned": t.returned,
            "confirmed": t.confirmed,
            "nacked": t.nacked,
            "received": t.received,
            "expected_received": self.expected_received,
            "unconfirmed": self.unconfirmed,
            "send_rate": self.send_rate(),
            "receive_rate": self.receive_rate(),
            "all_received": self.all_received(),
            "all_confirmed": self.all_confirmed(),
            "counts_exact": self.counts_exact(),
            "consumer_latency_us": self.latency.json(),
            "confirm_latency_us": self.confirm_latency.json(),
            "broker_cpu_s": self.broker_cpu_s,
            "broker_cpu_us_per_sent": bs,
            "broker_cpu_us_per_received": br,
            "self_cpu_s": self.self_cpu_s,
            "self_cpu_us_per_sent": ss,
            "self_cpu_us_per_received": sr,
            "error": self.error,
        })
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// CPU seconds (user + system) of process `pid` from /proc/PID/stat.
pub fn process_cpu_seconds(pid: &str) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {path}: {e} (is the PID right?)"))?;
    // Fields after the parenthesised command name: state is field 3, utime
    // field 14, stime field 15.
    let after = s
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("{path}: unexpected format"))?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> Result<u64, String> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{path}: unexpected format"))
    };
    let ticks = field(11)? + field(12)?;
    Ok(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t: &u64| t > 0)
            .unwrap_or(100)
    })
}

/// Merges interval histograms into the run's totals.
#[derive(Debug)]
pub struct RunHistograms {
    /// Consumer latency over the run.
    pub latency: Histogram<u64>,
    /// Confirm latency over the run.
    pub confirm: Histogram<u64>,
}

impl Default for RunHistograms {
    fn default() -> Self {
        RunHistograms {
            latency: new_histogram(),
            confirm: new_histogram(),
        }
    }
}

impl RunHistograms {
    /// Adds an interval's histograms.
    pub fn add(&mut self, latency: &Histogram<u64>, confirm: &Histogram<u64>) {
        // Same bounds everywhere, so adding cannot fail.
        let _ = self.latency.add(latency);
        let _ = self.confirm.add(confirm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            id: "test-1".into(),
            duration: Duration::from_secs(2),
            totals: Totals {
                sent: 100,
                returned: 0,
                confirmed: 100,
                nacked: 0,
                received: 90,
            },
            expected_received: Some(100),
            unconfirmed: 0,
            confirms: true,
            count_limited: true,
            latency: Percentiles::default(),
            confirm_latency: Percentiles::default(),
            broker_cpu_s: Some(0.5),
            self_cpu_s: None,
            error: None,
        }
    }

    #[test]
    fn progress_lines_read_like_perftests() {
        let mut h = new_histogram();
        for us in [100u64, 200, 300, 400, 500] {
            h.record(us * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!((p.p99, p.p999, p.max), (500, 500, 500));
        assert_eq!(p.json()["p999"], 500);
        assert_eq!(p.json()["max"], 500);
        let d = Totals {
            sent: 2000,
            returned: 10,
            confirmed: 1990,
            nacked: 0,
            received: 1000,
        };
        let cols = Columns {
            returned: true,
            confirms: true,
        };
        let line = progress_line(
            "test-1",
            Duration::from_secs(1),
            d,
            Duration::from_secs(2),
            cols,
            &p,
            &p,
        );
        assert_eq!(
            line,
            "id: test-1, time: 1.000 s, sent: 1000 msg/s, returned: 5 msg/s, confirmed: 995 msg/s, \
             nacked: 0 msg/s, received: 500 msg/s, min/median/75th/95th/99th consumer latency: \
             100/300/400/500/500 µs, confirm latency: 100/300/400/500/500 µs"
        );
        let plain = Columns {
            returned: false,
            confirms: false,
        };
        let line = progress_line(
            "t",
            Duration::ZERO,
            d,
            Duration::from_secs(1),
            plain,
            &p,
            &p,
        );
        assert!(!line.contains("confirmed") && !line.contains("returned"));
    }

    #[test]
    fn a_missing_delivery_is_a_count_mismatch() {
        let s = summary();
        assert!(!s.all_received() && s.all_confirmed() && !s.counts_exact());
        assert_eq!(s.exit_code(), 2);
        assert!(s.lines().iter().any(|l| l.contains("MISSING 10")));
        let j = s.to_json();
        assert_eq!(j["counts_exact"], false);
        assert_eq!(j["sent"], 100);
        assert_eq!(j["broker_cpu_us_per_sent"], 5000.0);
        let mut t = summary();
        t.count_limited = false;
        assert_eq!(
            t.exit_code(),
            0,
            "time-limited runs leave messages in flight"
        );
        t.error = Some("x".into());
        assert_eq!(t.exit_code(), 1);
    }

    #[test]
    fn proc_stat_is_read() {
        assert!(process_cpu_seconds("self").unwrap() >= 0.0);
        assert!(process_cpu_seconds("999999999").is_err());
    }
}
