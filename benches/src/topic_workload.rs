//! The seeded topic workload of the router bench and its profiling harness
//! (`examples/router_instructions.rs`): one topic exchange `t`, a queue per
//! ten bindings, patterns of 3–7 words from a 1,000-word vocabulary with
//! ~12 % `*` and ~6 % `#` (at least two literal words each), and keys drawn
//! from the patterns so that every key matches about once at every size.

use amqp_router::types::FieldTable;
use amqp_router::{Bind, ExchangeDeclare, OwnerId, QueueDeclare, Router};

/// xorshift64*: small, seeded, good enough for workloads.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (not exactly uniform; fine for workloads).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The owner of every queue the workload declares.
pub const OWNER: OwnerId = OwnerId(1);

/// Words are `w0` … `w999`.
const VOCAB: u64 = 1000;

fn word(rng: &mut Rng) -> String {
    format!("w{}", rng.below(VOCAB))
}

/// A topic pattern of 3–7 words: ~12% `*`, ~6% `#`, at least two literal
/// words (so accidental matches stay rare at every size).
pub fn pattern(rng: &mut Rng) -> String {
    loop {
        let n = 3 + rng.below(5);
        let words: Vec<String> = (0..n)
            .map(|_| match rng.below(100) {
                0..=11 => "*".into(),
                12..=17 => "#".into(),
                _ => word(rng),
            })
            .collect();
        if words
            .iter()
            .filter(|w| !matches!(w.as_str(), "*" | "#"))
            .count()
            >= 2
        {
            return words.join(".");
        }
    }
}

/// A key that matches `pattern` (wildcards instantiated with random
/// words), so every key has at least one match.
pub fn key_for(pattern: &str, rng: &mut Rng) -> String {
    let mut out = Vec::new();
    for w in pattern.split('.') {
        match w {
            "*" => out.push(word(rng)),
            "#" => {
                for _ in 0..rng.below(3) {
                    out.push(word(rng));
                }
            }
            w => out.push(w.to_owned()),
        }
    }
    out.join(".")
}

/// A router holding the workload, and what it was built from.
pub struct TopicWorkload {
    /// Exchange `t` with the bindings, queues `q0` … (handle = number).
    pub router: Router<u32>,
    /// The patterns bound, in order (duplicates of a (queue, pattern) pair
    /// are drawn again).
    pub patterns: Vec<String>,
    /// How many queues were declared.
    pub queues: usize,
}

/// Builds `bindings` topic bindings from `seed`.
pub fn topic_workload(bindings: usize, seed: u64) -> TopicWorkload {
    let mut rng = Rng(seed);
    let mut router: Router<u32> = Router::new("/");
    router
        .declare_exchange(&ExchangeDeclare::new(b"t", b"topic"))
        .unwrap();
    let queues = (bindings / 10).max(10);
    for q in 0..queues {
        let name = format!("q{q}");
        router
            .declare_queue(&QueueDeclare::new(name.as_bytes(), OWNER), |_| q as u32)
            .unwrap();
    }
    let none = FieldTable::new();
    let mut patterns = Vec::with_capacity(bindings);
    while patterns.len() < bindings {
        let p = pattern(&mut rng);
        let q = format!("q{}", rng.below(queues as u64));
        if router
            .bind_queue(&Bind::new(b"t", q.as_bytes(), p.as_bytes(), &none, OWNER))
            .unwrap()
        {
            patterns.push(p);
        }
    }
    TopicWorkload {
        router,
        patterns,
        queues,
    }
}

/// `n` distinct keys, each drawn from a random pattern of `patterns`.
pub fn distinct_keys(patterns: &[String], n: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed);
    let mut keys = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::with_capacity(n);
    while keys.len() < n {
        let p = &patterns[rng.below(patterns.len() as u64) as usize];
        let k = key_for(p, &mut rng);
        if seen.insert(k.clone()) {
            keys.push(k);
        }
    }
    keys
}
