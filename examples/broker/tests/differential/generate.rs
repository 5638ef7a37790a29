//! Seeded random scenarios: operation sequences over a few queues,
//! exchanges of every type, two connections and three channels, written in
//! the scenario language (so a seed's scenario can be printed and replayed
//! like a hand-written one). Error paths come naturally: missing queues and
//! exchanges, inequivalent redeclares, unknown delivery tags, exclusive
//! queues of the other connection, closed channels.
//!
//! After each step that may cause asynchronous traffic (publishes, acks,
//! consumes, cancels, recovers, closes) the scenario waits for confirms and
//! then for quiet, so both brokers are observed settled.

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545f4914f6cdd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

const CHANNELS: [&str; 3] = ["c1.1", "c1.2", "c2.1"];
const EXCHANGES: [(&str, &str); 4] = [
    ("x0", "direct"),
    ("x1", "topic"),
    ("x2", "fanout"),
    ("x3", "headers"),
];
const KEYS: [&str; 6] = ["a", "b", "a.b", "a.c", "#", "*.b"];
const QUIET_MS: u32 = 100;

/// The scenario for `seed`.
pub fn scenario(seed: u64) -> String {
    let mut r = Rng::new(seed);
    let mut out = format!("# generated from seed {seed}\n");
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("c1 connect".into());
    line("c2 connect".into());
    for ch in CHANNELS {
        line(format!("{ch} open"));
    }
    // Most resources exist from the start, so that the operations below
    // take their happy paths as often as their error paths.
    for (xn, xt) in EXCHANGES {
        if r.chance(85) {
            line(format!(
                "c1.1 exchange.declare exchange={{p}}{xn} type={xt} auto-delete=false"
            ));
        }
    }
    for qn in 0..3 {
        if r.chance(80) {
            line(format!("c1.1 queue.declare queue={{p}}q{qn}"));
        }
    }
    for _ in 0..3 {
        let (xn, xt) = *r.pick(&EXCHANGES);
        let key = *r.pick(&KEYS);
        let mut s = format!(
            "c1.1 queue.bind queue={{p}}q{} exchange={{p}}{xn} routing-key={key}",
            r.below(3)
        );
        if xt == "headers" {
            s.push_str(" arg.x-match=any arg.h0=v arg.h1=v");
        }
        line(s);
        line("c1.1 ensure-open".into());
    }
    let mut msg = 0;
    let ops = 15 + r.below(15);
    for _ in 0..ops {
        let ch = *r.pick(&CHANNELS);
        line(format!("{ch} ensure-open"));
        let q = format!("{{p}}q{}", r.below(3));
        let (xn, xt) = *r.pick(&EXCHANGES);
        let x = format!("{{p}}{xn}");
        let key = *r.pick(&KEYS);
        let settle = |line: &mut dyn FnMut(String)| {
            line(format!("{ch} confirms"));
            line(format!("quiet {QUIET_MS}"));
        };
        match r.below(100) {
            0..=9 => {
                let mut s = format!("{ch} queue.declare queue={q}");
                if r.chance(15) {
                    s.push_str(" passive");
                }
                if r.chance(10) {
                    s.push_str(" exclusive");
                }
                if r.chance(20) {
                    s.push_str(" arg.x-max-length=l:2");
                }
                line(s);
            }
            10..=17 => {
                let ty = if r.chance(10) { "direct" } else { xt };
                let mut s = format!("{ch} exchange.declare exchange={x} type={ty}");
                if r.chance(10) {
                    s.push_str(" passive");
                }
                line(s);
            }
            18..=27 => {
                let mut s = format!("{ch} queue.bind queue={q} exchange={x} routing-key={key}");
                if xt == "headers" {
                    let m = if r.chance(50) { "all" } else { "any" };
                    s.push_str(&format!(" arg.x-match={m} arg.h{}=v", r.below(2)));
                }
                line(s);
            }
            28..=30 => line(format!(
                "{ch} queue.unbind queue={q} exchange={x} routing-key={key}"
            )),
            31..=50 => {
                msg += 1;
                let (ex, rk) = match r.below(4) {
                    0 => (String::new(), q.clone()),
                    1 if r.chance(30) => ("{p}missing".to_string(), key.to_string()),
                    _ => (x.clone(), key.to_string()),
                };
                let mut s =
                    format!("{ch} basic.publish exchange={ex} routing-key={rk} body=m{msg}");
                if r.chance(50) {
                    s.push_str(" mandatory");
                }
                if xt == "headers" || r.chance(20) {
                    s.push_str(&format!(" headers.h{}=v", r.below(2)));
                }
                line(s);
                settle(&mut line);
            }
            51..=55 => line(format!("{ch} confirm.select")),
            56..=62 => {
                let mut s = format!("{ch} basic.get queue={q}");
                if r.chance(40) {
                    s.push_str(" no-ack");
                }
                line(s);
            }
            63..=68 => {
                let mut s = format!("{ch} basic.consume queue={q}");
                if r.chance(50) {
                    s.push_str(" consumer-tag=t1");
                }
                if r.chance(30) {
                    s.push_str(" no-ack");
                }
                if r.chance(10) {
                    s.push_str(" exclusive");
                }
                line(s);
                settle(&mut line);
            }
            69..=70 => {
                line(format!("{ch} basic.cancel consumer-tag=t1"));
                settle(&mut line);
            }
            71..=73 => {
                let g = if r.chance(30) { " global" } else { "" };
                line(format!(
                    "{ch} basic.qos prefetch-count={}{g}",
                    1 + r.below(3)
                ));
            }
            74..=84 => {
                let tag = 1 + r.below(5);
                let multiple = if r.chance(30) { " multiple" } else { "" };
                let requeue = if r.chance(50) { " requeue" } else { "" };
                let s = match r.below(3) {
                    0 => format!("{ch} raw basic.ack delivery-tag={tag}{multiple}"),
                    1 => format!("{ch} raw basic.nack delivery-tag={tag}{multiple}{requeue}"),
                    _ => format!("{ch} raw basic.reject delivery-tag={tag}{requeue}"),
                };
                line(s);
                settle(&mut line);
            }
            85..=86 => {
                line(format!("{ch} basic.recover requeue"));
                settle(&mut line);
            }
            87..=89 => line(format!("{ch} queue.purge queue={q}")),
            90..=92 => {
                let mut s = format!("{ch} queue.delete queue={q}");
                if r.chance(40) {
                    s.push_str(" if-unused");
                }
                if r.chance(30) {
                    s.push_str(" if-empty");
                }
                line(s);
                settle(&mut line);
            }
            93..=94 => line(format!("{ch} exchange.delete exchange={x}")),
            95..=97 => {
                line(format!("{ch} close"));
                settle(&mut line);
            }
            _ => {
                let m = *r.pick(&["tx.select", "tx.commit", "tx.rollback"]);
                line(format!("{ch} {m}"));
                settle(&mut line);
            }
        }
    }
    line(format!("quiet {QUIET_MS}"));
    out
}
