//! The topic exchange's trie, shaped like RabbitMQ's
//! `rabbit_db_topic_exchange` (one node per pattern prefix, at most three
//! kinds of edge out of a node: a word, `*`, `#`), with changes that make
//! a route cost in proportion to the routing key rather than to the
//! number of wildcard paths in the trie, and keep a binding small:
//!
//! * **Interned words.** Every literal word of a pattern gets a `u32` id
//!   (reference-counted); a routing key's word is looked up once per
//!   route, and an unknown word takes no word edge at all. The word table
//!   is open-addressed with words of up to 11 bytes held inline in the
//!   slot, so a lookup is a seeded hash of two integers and one compare.
//! * **Anchors and skeletons.** A literal node (and the root) is an
//!   *anchor*; the wildcard-only nodes below it (reached through `*` and
//!   `#` edges only) are its *skeleton*. A skeleton node's position is
//!   summarised by how many `*` lie between it and its anchor and whether a
//!   `#` does: it consumes exactly that many words, or (with a `#`) at
//!   least that many. The walk over a key therefore never visits skeleton
//!   nodes: its active set holds `(anchor, words consumed since the
//!   anchor)` pairs, and one probe keyed by `(anchor, word id)` finds
//!   every literal edge out of the whole skeleton of that anchor; each
//!   edge records its parent's position, so the ones that apply at this
//!   count are picked out without touching the nodes. Bindings on skeleton
//!   nodes are found the same way at the end of the key. An anchor has at
//!   most one pair per star count plus one saturated pair, so `#` runs
//!   never backtrack: a step costs at most the number of such pairs.
//! * **Path-compressed tails.** Where a pattern leaves the shared part of
//!   the trie through a literal edge and what remains has no `#` and at
//!   most [`TAIL_MAX`] words, the rest is one [`Tail`] (its word ids and
//!   `*`s inline) instead of a chain of single-child nodes and edges. A
//!   tail matches a fixed number of words, so the walk checks it at the
//!   one step where the rest of the key has that length, comparing ids;
//!   a pattern that shares or extends a tail turns it back into nodes.
//!
//! Every literal edge is one 24-byte entry of one open-addressed table
//! ([`Edges`], linear probing) keyed by `(anchor, word id)` and hashed
//! with one multiplication; the key is inline in the slot, and the
//! entries of one key lie in one probe run. The entry also carries a copy
//! of its child's word filter and skeleton summary (for a tail: its
//! length and first word), so a step of the walk reads the entry and
//! never the node it leads to, and skips most tails without reading them;
//! only the last step reads the nodes whose bindings it emits. Removing a
//! binding frees its tail or prunes the nodes it leaves empty, and the
//! tables shrink as they empty.

pub(crate) const NONE: u32 = u32::MAX;
/// `Node::word` of a `*` node.
const STAR: u32 = u32::MAX - 1;
/// `Node::word` of a `#` node.
const HASH: u32 = u32::MAX - 2;
/// `Entry::word` of an entry listing a skeleton node that holds bindings.
const BIND: u32 = u32::MAX - 3;

/// Position bits (`Node::sk` of a skeleton node, `Entry::pos`): the number
/// of `*` since the anchor in the low 16 bits, and whether a `#` lies on
/// the way.
const OPEN: u32 = 1 << 16;
const STARS: u32 = 0xFFFF;
/// Anchor summary bits (`Node::sk` of an anchor): the largest star count of
/// its skeleton (low 16 bits), whether any skeleton node is open ([`OPEN`]),
/// whether a skeleton node may hold bindings, and ([`HASB`]) whether the
/// anchor itself does.
const WBIND: u32 = 1 << 17;
/// Anchor summary bit: the anchor itself holds bindings, so the end of the
/// walk reads an anchor's node only when it has something to emit.
const HASB: u32 = 1 << 18;
/// `Entry::pos` bit of an entry in [`Trie::edges`]: more entries with the
/// same key follow in its probe run.
const MORE: u32 = 1 << 31;
/// `Entry::child` bit: the edge leads to a [`Tail`] (the low bits are its
/// index in [`Trie::tails`]), not to a node.
const TAIL: u32 = 1 << 31;
/// The most words a [`Tail`] holds after its edge's word.
const TAIL_MAX: usize = 5;

/// A path-compressed end of one pattern: the words after a literal edge
/// whose target would otherwise start a chain of single-child nodes. It
/// holds no `#` (so it matches a fixed number of words, at one step of
/// the walk only) and has no children: a pattern that shares or extends
/// it turns it back into nodes ([`Trie::burst`]).
#[derive(Debug, Clone, Copy)]
struct Tail {
    /// Head of the binding list (links in [`Trie::links`]).
    first: u32,
    /// The node the edge leaves.
    parent: u32,
    /// How many of `toks` are used.
    len: u32,
    /// Interned word ids, or [`STAR`].
    toks: [u32; TAIL_MAX],
}

impl Tail {
    const EMPTY: Tail = Tail {
        first: NONE,
        parent: NONE,
        len: 0,
        toks: [NONE; TAIL_MAX],
    };

    /// Whether the rest of a key (word ids, [`NONE`] for a word no
    /// pattern has) is exactly this tail.
    #[inline]
    fn matches(&self, rest: &[u32]) -> bool {
        rest.len() == self.len as usize
            && self
                .toks
                .iter()
                .zip(rest)
                .all(|(&t, &w)| t == w || t == STAR)
    }
}

/// What [`Trie::find`] found for a pattern.
enum Found {
    Nothing,
    Node(u32),
    /// `(parent, edge word, tail)`.
    Tail(u32, u32, u32),
}

#[derive(Debug, Clone)]
struct Node {
    parent: u32,
    /// Interned word id, [`STAR`], [`HASH`], or [`NONE`] for the root.
    word: u32,
    star: u32,
    hash: u32,
    /// Head of this node's binding list (links live in [`Trie::links`]).
    first: u32,
    /// Number of word-edge children.
    nwords: u32,
    /// An anchor's filter of the word ids on its skeleton's literal edges
    /// (bit `id % 32`; may have stale bits).
    filter: u32,
    /// A skeleton node's position, or an anchor's summary (see [`OPEN`],
    /// [`WBIND`]); may over-approximate after removals.
    sk: u32,
}

impl Node {
    fn new(parent: u32, word: u32, sk: u32) -> Self {
        Node {
            parent,
            word,
            star: NONE,
            hash: NONE,
            first: NONE,
            nwords: 0,
            filter: 0,
            sk,
        }
    }
    #[inline]
    fn is_wild(&self) -> bool {
        self.word == STAR || self.word == HASH
    }
    /// This node's position relative to its anchor (0 for an anchor).
    #[inline]
    fn pos(&self) -> u32 {
        if self.is_wild() { self.sk } else { 0 }
    }
}

/// A literal edge out of an anchor's skeleton (or, with `word == BIND`, a
/// skeleton node holding bindings).
#[derive(Debug, Clone, Copy)]
struct Entry {
    anchor: u32,
    word: u32,
    child: u32,
    /// Position of the edge's parent (of the node itself for [`BIND`]).
    pos: u32,
    /// A copy of the child's `filter` and `sk` (an anchor's summary), so
    /// that the walk reaching it need not read the node; for a [`TAIL`]
    /// child, the tail's first word and its length.
    filter: u32,
    sk: u32,
}

#[inline]
fn key_hash(anchor: u32, word: u32) -> u64 {
    let x = (u64::from(anchor) << 32) | u64::from(word);
    let m = u128::from(x ^ 0x243F_6A88_85A3_08D3) * 0x9E37_79B9_7F4A_7C15;
    (m as u64) ^ ((m >> 64) as u64)
}

/// Whether a skeleton node at `pos` consumes exactly `k` words.
#[inline]
fn active(pos: u32, k: u32) -> bool {
    let s = pos & STARS;
    s == k || (pos & OPEN != 0 && s <= k)
}

#[inline]
fn bit(word: u32) -> u32 {
    1 << (word & 31)
}

/// The edge table: open addressing with linear probing over inline
/// 24-byte entries keyed by `(anchor, word)`, so that a probe reads the
/// key and what the walk needs from one slot (no separate control bytes,
/// no pointer to follow). Every entry of a key lies in the probe run from
/// the key's home slot to the next empty slot, in insertion order; each
/// but the last carries [`MORE`], so a lookup that finds its key stops at
/// the last entry of it. Removal shifts the run back (no tombstones) and
/// the table shrinks when it falls below 1/16 full.
#[derive(Debug, Default)]
struct Edges {
    /// A power of two long, or empty; an empty slot has `anchor == NONE`.
    slots: Vec<Entry>,
    len: usize,
}

/// An empty slot of [`Edges`].
const VACANT: Entry = Entry {
    anchor: NONE,
    word: 0,
    child: 0,
    pos: 0,
    filter: 0,
    sk: 0,
};

impl Edges {
    #[inline(always)]
    fn home(&self, anchor: u32, word: u32) -> usize {
        // The high bits of the product are the well-mixed ones.
        (key_hash(anchor, word) >> 32) as usize & (self.slots.len() - 1)
    }

    /// The slot index of the first entry keyed `(anchor, word)`, if any.
    #[inline(always)]
    fn first(&self, anchor: u32, word: u32) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(anchor, word);
        loop {
            let e = &self.slots[i];
            if e.anchor == anchor && e.word == word {
                return Some(i);
            }
            if e.anchor == NONE {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// The slot after `i` holding the next entry of `e`'s key (`e` at `i`
    /// has [`MORE`]).
    #[inline(always)]
    fn next_same(&self, mut i: usize, anchor: u32, word: u32) -> usize {
        let mask = self.slots.len() - 1;
        loop {
            i = (i + 1) & mask;
            let e = &self.slots[i];
            if e.anchor == anchor && e.word == word {
                return i;
            }
        }
    }

    /// Sets [`MORE`] on every entry keyed `(anchor, word)` but the last.
    fn fix_more(&mut self, anchor: u32, word: u32) {
        let Some(mut i) = self.first(anchor, word) else {
            return;
        };
        let mask = self.slots.len() - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let e = &self.slots[j];
            if e.anchor == NONE {
                break;
            }
            if e.anchor == anchor && e.word == word {
                self.slots[i].pos |= MORE;
                i = j;
            }
        }
        self.slots[i].pos &= !MORE;
    }

    fn find_mut(&mut self, anchor: u32, word: u32, child: u32) -> Option<&mut Entry> {
        let mut i = self.first(anchor, word)?;
        loop {
            if self.slots[i].child == child {
                return Some(&mut self.slots[i]);
            }
            if self.slots[i].pos & MORE == 0 {
                return None;
            }
            i = self.next_same(i, anchor, word);
        }
    }

    /// Places `e` at the end of its probe run.
    fn place(&mut self, e: Entry) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(e.anchor, e.word);
        while self.slots[i].anchor != NONE {
            i = (i + 1) & mask;
        }
        self.slots[i] = e;
    }

    fn insert(&mut self, e: Entry) {
        // At most 5/8 full: the probe runs that misses scan stay short.
        if (self.len + 1) * 8 > self.slots.len() * 5 {
            self.resize((self.slots.len() * 2).max(16));
        }
        self.place(Entry {
            pos: e.pos & !MORE,
            ..e
        });
        self.len += 1;
        self.fix_more(e.anchor, e.word);
    }

    fn remove(&mut self, anchor: u32, word: u32, child: u32) {
        let Some(mut i) = self.first(anchor, word) else {
            return;
        };
        while self.slots[i].child != child {
            if self.slots[i].pos & MORE == 0 {
                return;
            }
            i = self.next_same(i, anchor, word);
        }
        // Backward-shift deletion: pull every later entry of the run
        // whose home does not lie cyclically in (hole, its slot] into the
        // hole. Entries of one key keep their order.
        let mask = self.slots.len() - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let e = self.slots[j];
            if e.anchor == NONE {
                break;
            }
            let h = self.home(e.anchor, e.word);
            if (j.wrapping_sub(h) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = e;
                i = j;
            }
        }
        self.slots[i] = VACANT;
        self.len -= 1;
        self.fix_more(anchor, word);
        if self.len == 0 {
            self.slots = Vec::new();
        } else if self.slots.len() > 16 && self.len * 16 < self.slots.len() {
            self.resize(self.slots.len() / 2);
        }
    }

    /// Rebuilds the table with `cap` slots. A run's entries are reinserted
    /// from its first slot on, so the entries of a key keep their order
    /// (and their [`MORE`] bits stay right).
    fn resize(&mut self, cap: usize) {
        let old = std::mem::replace(&mut self.slots, vec![VACANT; cap]);
        let n = old.len();
        // Start just after an empty slot, so that no run is cut in two.
        let start = old.iter().position(|e| e.anchor == NONE).unwrap_or(0);
        for k in 0..n {
            let e = old[(start + k) % n.max(1)];
            if e.anchor != NONE {
                self.place(e);
            }
        }
    }
}

/// Words of at most this many bytes are held inline in [`Words::table`]
/// and compared there as two integers.
const INLINE_WORD: usize = 11;
/// [`WordSlot::hi`] length byte of a longer word (compared through
/// [`Words::slots`]).
const LONG_WORD: u32 = 0xFF;

/// A slot of [`Words::table`]: the word's first bytes packed
/// little-endian (`lo`: bytes 0–7; `hi`: bytes 8–10 and the length, or
/// [`LONG_WORD`], in the top byte) and its id ([`NONE`]: empty slot).
#[derive(Debug, Clone, Copy)]
struct WordSlot {
    lo: u64,
    hi: u32,
    id: u32,
}

const NO_WORD: WordSlot = WordSlot {
    lo: 0,
    hi: 0,
    id: NONE,
};

#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

/// A word's packed form (see [`WordSlot`]).
#[inline(always)]
fn pack(w: &[u8]) -> (u64, u32) {
    let mut lo = 0u64;
    let mut hi = 0u32;
    for (i, &b) in w.iter().take(INLINE_WORD).enumerate() {
        if i < 8 {
            lo |= u64::from(b) << (8 * i);
        } else {
            hi |= u32::from(b) << (8 * (i - 8));
        }
    }
    let len = if w.len() <= INLINE_WORD {
        w.len() as u32
    } else {
        LONG_WORD
    };
    (lo, hi | len << 24)
}

/// Interned words, reference-counted by the nodes and tails that carry
/// them: an open-addressed table (linear probing, at most half full)
/// whose slots hold short words inline, so that looking up a key's word
/// is a hash of two integers and a compare, with no pointer to follow.
#[derive(Debug)]
struct Words {
    /// A power of two long, or empty.
    table: Vec<WordSlot>,
    len: usize,
    /// Per id: the word and its reference count.
    slots: Vec<(Box<[u8]>, u32)>,
    free: Vec<u32>,
    /// Per-table random seed, so that colliding words cannot be chosen in
    /// advance.
    seed: u64,
}

impl Default for Words {
    fn default() -> Self {
        use std::hash::BuildHasher;
        Words {
            table: Vec::new(),
            len: 0,
            slots: Vec::new(),
            free: Vec::new(),
            seed: foldhash::fast::RandomState::default().hash_one(0x5EED_u64) | 1,
        }
    }
}

impl Words {
    #[inline(always)]
    fn hash(&self, w: &[u8], lo: u64, hi: u32) -> u64 {
        let mut h = fold(lo ^ self.seed, u64::from(hi) ^ 0x9E37_79B9_7F4A_7C15);
        if w.len() > INLINE_WORD {
            for c in w[INLINE_WORD..].chunks(8) {
                let mut x = 0u64;
                for (i, &b) in c.iter().enumerate() {
                    x |= u64::from(b) << (8 * i);
                }
                h = fold(h ^ x, 0x2545_F491_4F6C_DD1D ^ self.seed);
            }
        }
        h
    }

    #[inline(always)]
    fn home(&self, h: u64) -> usize {
        (h >> 32) as usize & (self.table.len() - 1)
    }

    /// The table index of `w`, or of the empty slot ending its run.
    #[inline(always)]
    fn probe(&self, w: &[u8]) -> usize {
        let (lo, hi) = pack(w);
        let mask = self.table.len() - 1;
        let mut i = self.home(self.hash(w, lo, hi));
        loop {
            let s = &self.table[i];
            if s.id == NONE
                || (s.lo == lo
                    && s.hi == hi
                    && (hi >> 24 != LONG_WORD || *self.slots[s.id as usize].0 == *w))
            {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// `w`'s id, or [`NONE`] if no pattern has it.
    #[inline]
    fn get(&self, w: &[u8]) -> u32 {
        if self.table.is_empty() {
            return NONE;
        }
        self.table[self.probe(w)].id
    }

    /// Takes a reference to `w`, interning it if new.
    fn intern(&mut self, w: &[u8]) -> u32 {
        if (self.len + 1) * 2 > self.table.len() {
            self.resize((self.table.len() * 2).max(16));
        }
        let i = self.probe(w);
        if self.table[i].id != NONE {
            let id = self.table[i].id;
            self.slots[id as usize].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = (w.into(), 1);
                id
            }
            None => {
                self.slots.push((w.into(), 1));
                (self.slots.len() - 1) as u32
            }
        };
        let (lo, hi) = pack(w);
        self.table[i] = WordSlot { lo, hi, id };
        self.len += 1;
        id
    }

    /// Drops a reference to word `id`, forgetting the word with the last.
    fn release(&mut self, id: u32) {
        let slot = &mut self.slots[id as usize];
        slot.1 -= 1;
        if slot.1 > 0 {
            return;
        }
        let mut i = self.probe(&self.slots[id as usize].0);
        self.slots[id as usize].0 = Box::default();
        // Backward-shift deletion (see [`Edges::remove`]).
        let mask = self.table.len() - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = self.table[j];
            if s.id == NONE {
                break;
            }
            let h = self.home(self.slot_hash(&s));
            if (j.wrapping_sub(h) & mask) >= (j.wrapping_sub(i) & mask) {
                self.table[i] = s;
                i = j;
            }
        }
        self.table[i] = NO_WORD;
        self.len -= 1;
        self.free.push(id);
        if self.len == 0 {
            *self = Words {
                seed: self.seed,
                ..Words::default()
            };
        } else if self.table.len() > 16 && self.len * 8 < self.table.len() {
            self.resize(self.table.len() / 2);
        }
    }

    fn slot_hash(&self, s: &WordSlot) -> u64 {
        let w = &self.slots[s.id as usize].0;
        self.hash(w, s.lo, s.hi)
    }

    fn resize(&mut self, cap: usize) {
        let old = std::mem::replace(&mut self.table, vec![NO_WORD; cap]);
        let mask = cap - 1;
        for s in old {
            if s.id != NONE {
                let mut i = self.home(self.slot_hash(&s));
                while self.table[i].id != NONE {
                    i = (i + 1) & mask;
                }
                self.table[i] = s;
            }
        }
    }
}

/// The trie of one topic exchange. Bindings are `u32` ids chosen by the
/// caller; one id is at one node.
#[derive(Debug)]
pub(crate) struct Trie {
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// Every literal edge, keyed `(anchor, word)` (several entries for an
    /// anchor whose skeleton has several nodes with an edge for the same
    /// word).
    edges: Edges,
    words: Words,
    /// Next binding at the same node or tail, indexed by binding id.
    links: Vec<u32>,
    tails: Vec<Tail>,
    /// Free slots of `tails`.
    tfree: Vec<u32>,
}

/// An active pair of [`Trie::matches`]: `(anchor, count, filter, sk)`.
type Active = (u32, u32, u32, u32);

/// Up to this many pairs, a step's `next` is searched for a duplicate (it
/// is in cache); past it, the per-node stamps of [`TrieScratch`] are used.
/// (Small in unit tests, so that they cross it in both directions.)
#[cfg(not(test))]
const SCAN: usize = 16;
#[cfg(test)]
const SCAN: usize = 2;

/// Whether `next` lacks the pair `(n, count)`, where `count` is 0 (`n` was
/// reached through an open edge: `mark`) or its anchor's star count plus
/// one (a saturated pair: `sat`). Only such pairs are pushed with such a
/// count, save children of edges that are not open, which are never
/// checked (a node's one incoming edge is open or not), so stamping them
/// too is harmless. The first
/// check past [`SCAN`] pairs stamps every such pair already there, and
/// from then on the stamps decide (recording `(n, count)` as present).
#[inline]
fn fresh(
    next: &[Active],
    mark: &mut [u32],
    sat: &mut [u32],
    marked: &mut bool,
    stamp: u32,
    n: u32,
    count: u32,
) -> bool {
    if next.len() < SCAN {
        return !next.iter().any(|q| q.0 == n && q.1 == count);
    }
    if !*marked {
        *marked = true;
        for q in next {
            let stamps = if q.1 == 0 {
                &mut *mark
            } else if q.1 == (q.3 & STARS) + 1 {
                &mut *sat
            } else {
                continue;
            };
            if let Some(m) = stamps.get_mut(q.0 as usize) {
                *m = stamp;
            }
        }
    }
    let stamps = if count == 0 { mark } else { sat };
    match stamps.get_mut(n as usize) {
        Some(m) if *m != stamp => {
            *m = stamp;
            true
        }
        _ => false,
    }
}

/// Reusable buffers for [`Trie::matches`].
#[derive(Debug, Default, Clone)]
pub(crate) struct TrieScratch {
    /// Active `(anchor, words consumed since it)` pairs, each with the
    /// anchor's `filter` and `sk`.
    cur: Vec<Active>,
    next: Vec<Active>,
    /// Per node: the stamp of the step that reached it as a new anchor.
    mark: Vec<u32>,
    /// Per node: the stamp of the step that saturated its count.
    sat: Vec<u32>,
    /// Per tail: the stamp of the step that emitted it.
    tmark: Vec<u32>,
    /// The key's word ids ([`NONE`] for a word no pattern has).
    ids: Vec<u32>,
    stamp: u32,
}

impl TrieScratch {
    /// Sizes the stamp arrays (once per walk).
    #[inline]
    fn size(&mut self, nodes: usize, tails: usize) {
        if self.mark.len() < nodes || self.tmark.len() < tails {
            self.grow(nodes, tails);
        }
    }

    #[cold]
    fn grow(&mut self, nodes: usize, tails: usize) {
        if self.mark.len() < nodes {
            self.mark.resize(nodes, 0);
            self.sat.resize(nodes, 0);
        }
        if self.tmark.len() < tails {
            self.tmark.resize(tails, 0);
        }
    }

    /// A fresh stamp (per step of the walk).
    #[inline(always)]
    fn bump(&mut self) {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.reset();
        }
    }

    #[cold]
    fn reset(&mut self) {
        self.mark.iter_mut().for_each(|m| *m = 0);
        self.sat.iter_mut().for_each(|m| *m = 0);
        self.tmark.iter_mut().for_each(|m| *m = 0);
        self.stamp = 1;
    }
}

/// The words of a topic routing key or pattern: `""` has none; otherwise
/// split on every `.` (empty words are words).
pub(crate) fn words(key: &[u8]) -> impl Iterator<Item = &[u8]> + Clone {
    let none = key.is_empty();
    key.split(|&b| b == b'.').filter(move |_| !none)
}

impl Default for Trie {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::new(NONE, NONE, 0)],
            free: Vec::new(),
            edges: Edges::default(),
            words: Words::default(),
            links: Vec::new(),
            tails: Vec::new(),
            tfree: Vec::new(),
        }
    }
}

impl Trie {
    /// The anchor of node `n` (itself unless it is a skeleton node).
    fn anchor_of(&self, mut n: u32) -> u32 {
        while self.nodes[n as usize].is_wild() {
            n = self.nodes[n as usize].parent;
        }
        n
    }

    fn word_child(&self, parent: u32, word: u32) -> u32 {
        if self.nodes[parent as usize].nwords == 0 {
            return NONE;
        }
        let a = self.anchor_of(parent);
        let mut found = NONE;
        self.entries(a, word, |e| {
            let p = if e.child & TAIL != 0 {
                self.tails[(e.child & !TAIL) as usize].parent
            } else {
                self.nodes[e.child as usize].parent
            };
            if p == parent {
                found = e.child;
            }
        });
        found
    }

    /// Calls `f` with every entry keyed `(anchor, word)`.
    #[inline(always)]
    fn entries(&self, anchor: u32, word: u32, mut f: impl FnMut(&Entry)) {
        if let Some(mut i) = self.edges.first(anchor, word) {
            loop {
                let e = &self.edges.slots[i];
                f(e);
                if e.pos & MORE == 0 {
                    break;
                }
                i = self.edges.next_same(i, anchor, word);
            }
        }
    }

    fn insert_entry(&mut self, e: Entry) {
        self.edges.insert(e);
    }

    fn remove_entry(&mut self, anchor: u32, word: u32, child: u32) {
        self.edges.remove(anchor, word, child);
    }

    /// Copies anchor `a`'s `filter` and `sk` into the entry of its
    /// incoming edge (the root has none).
    fn sync(&mut self, a: u32) {
        let node = &self.nodes[a as usize];
        if a == 0 || node.parent == NONE {
            return;
        }
        let (word, filter, sk) = (node.word, node.filter, node.sk);
        let p = self.anchor_of(node.parent);
        if let Some(e) = self.edges.find_mut(p, word, a) {
            (e.filter, e.sk) = (filter, sk);
        }
    }

    fn alloc(&mut self, node: Node) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                assert!(self.nodes.len() < TAIL as usize, "topic trie full");
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    /// The `*` (`star`) or `#` child of `at`, created if missing.
    fn wild_child(&mut self, at: u32, star: bool) -> u32 {
        let p = &self.nodes[at as usize];
        let existing = if star { p.star } else { p.hash };
        if existing != NONE {
            return existing;
        }
        let pos = p.pos();
        let pos = if star {
            (pos & OPEN) | ((pos & STARS) + 1).min(STARS)
        } else {
            pos | OPEN
        };
        let child = self.alloc(Node::new(at, if star { STAR } else { HASH }, pos));
        let p = &mut self.nodes[at as usize];
        if star {
            p.star = child;
        } else {
            p.hash = child;
        }
        let a = self.anchor_of(at);
        let s = &mut self.nodes[a as usize].sk;
        let old = *s;
        *s = (*s & !STARS) | (*s & STARS).max(pos & STARS) | (pos & OPEN);
        if *s != old {
            self.sync(a);
        }
        child
    }

    /// Adds a literal edge `wid` (a reference the caller already holds)
    /// from `at` to `child` (a node, or [`TAIL`] with a tail id).
    fn add_word_edge(&mut self, at: u32, wid: u32, child: u32) {
        // A tail's entry carries its length and first word, so that the
        // walk rejects most tails without reading them.
        let (filter, sk) = if child & TAIL != 0 {
            let t = &self.tails[(child & !TAIL) as usize];
            (t.toks[0], t.len)
        } else {
            (0, 0)
        };
        let pos = self.nodes[at as usize].pos();
        self.nodes[at as usize].nwords += 1;
        let a = self.anchor_of(at);
        let f = &mut self.nodes[a as usize].filter;
        if *f & bit(wid) == 0 {
            *f |= bit(wid);
            self.sync(a);
        }
        self.insert_entry(Entry {
            anchor: a,
            word: wid,
            child,
            pos,
            filter,
            sk,
        });
    }

    /// A new literal node `wid` (a reference the caller already holds)
    /// under `at`.
    fn new_word_child(&mut self, at: u32, wid: u32) -> u32 {
        let child = self.alloc(Node::new(at, wid, 0));
        self.add_word_edge(at, wid, child);
        child
    }

    /// Makes room for binding id `id` in [`Trie::links`].
    fn link_slot(&mut self, id: u32) {
        let idx = id as usize;
        if self.links.len() <= idx {
            self.links.resize(idx + 1, NONE);
        }
    }

    /// Adds binding `id` at node `at`.
    fn bind_node(&mut self, at: u32, id: u32) {
        self.link_slot(id);
        let node = &self.nodes[at as usize];
        if node.first == NONE && node.is_wild() {
            let pos = node.sk;
            let a = self.anchor_of(at);
            if self.nodes[a as usize].sk & WBIND == 0 {
                self.nodes[a as usize].sk |= WBIND;
                self.sync(a);
            }
            self.insert_entry(Entry {
                anchor: a,
                word: BIND,
                child: at,
                pos,
                filter: 0,
                sk: 0,
            });
        }
        self.links[id as usize] = self.nodes[at as usize].first;
        let node = &mut self.nodes[at as usize];
        node.first = id;
        if !node.is_wild() && node.sk & HASB == 0 {
            node.sk |= HASB;
            self.sync(at);
        }
    }

    /// Turns tail `t`, the target of literal edge `wid` out of `at`, into
    /// a chain of ordinary nodes holding its bindings; returns the node
    /// that replaces the edge's target. The tail's word references pass
    /// to the nodes.
    fn burst(&mut self, at: u32, wid: u32, t: u32) -> u32 {
        let tail = self.tails[t as usize];
        let a = self.anchor_of(at);
        self.remove_entry(a, wid, TAIL | t);
        self.nodes[at as usize].nwords -= 1;
        let head = self.new_word_child(at, wid);
        let mut cur = head;
        for &tok in &tail.toks[..tail.len as usize] {
            cur = if tok == STAR {
                self.wild_child(cur, true)
            } else {
                self.new_word_child(cur, tok)
            };
        }
        let mut b = tail.first;
        while b != NONE {
            let next = self.links[b as usize];
            self.bind_node(cur, b);
            b = next;
        }
        self.free_tail(t);
        head
    }

    fn free_tail(&mut self, t: u32) {
        self.tails[t as usize] = Tail::EMPTY;
        self.tfree.push(t);
    }

    /// Adds binding `id` under `pattern`.
    pub(crate) fn insert(&mut self, pattern: &[u8], id: u32) {
        let mut toks = words(pattern);
        let mut at = 0u32;
        while let Some(w) = toks.next() {
            at = match w {
                b"*" => self.wild_child(at, true),
                b"#" => self.wild_child(at, false),
                _ => {
                    let wid = self.words.get(w);
                    let mut child = if wid == NONE {
                        NONE
                    } else {
                        self.word_child(at, wid)
                    };
                    if child != NONE && child & TAIL != 0 {
                        let t = child & !TAIL;
                        if self.tail_is(t, toks.clone()) {
                            self.link_slot(id);
                            let tail = &mut self.tails[t as usize];
                            self.links[id as usize] = tail.first;
                            tail.first = id;
                            return;
                        }
                        child = self.burst(at, wid, t);
                    }
                    if child == NONE {
                        let rest = toks.clone();
                        if rest.clone().nth(TAIL_MAX).is_none() && !rest.clone().any(|t| t == b"#")
                        {
                            let wid = self.words.intern(w);
                            let mut tail = Tail::EMPTY;
                            tail.parent = at;
                            tail.len = rest.clone().count() as u32;
                            for (slot, t) in tail.toks.iter_mut().zip(rest) {
                                *slot = if t == b"*" {
                                    STAR
                                } else {
                                    self.words.intern(t)
                                };
                            }
                            self.link_slot(id);
                            tail.first = id;
                            self.links[id as usize] = NONE;
                            let t = match self.tfree.pop() {
                                Some(t) => {
                                    self.tails[t as usize] = tail;
                                    t
                                }
                                None => {
                                    self.tails.push(tail);
                                    (self.tails.len() - 1) as u32
                                }
                            };
                            self.add_word_edge(at, wid, TAIL | t);
                            return;
                        }
                        let wid = self.words.intern(w);
                        child = self.new_word_child(at, wid);
                    }
                    child
                }
            };
        }
        self.bind_node(at, id);
    }

    /// Whether tail `t` holds exactly the pattern words `rest`.
    fn tail_is<'p>(&self, t: u32, rest: impl Iterator<Item = &'p [u8]> + Clone) -> bool {
        let tail = &self.tails[t as usize];
        rest.clone().nth(TAIL_MAX).is_none()
            && tail.len as usize == rest.clone().count()
            && tail.toks.iter().zip(rest).all(|(&tok, w)| {
                if w == b"*" {
                    tok == STAR
                } else if w == b"#" {
                    false
                } else {
                    tok != STAR && self.words.get(w) == tok
                }
            })
    }

    /// Where `pattern`'s bindings are.
    fn find(&self, pattern: &[u8]) -> Found {
        let mut toks = words(pattern);
        let mut at = 0u32;
        while let Some(w) = toks.next() {
            at = match w {
                b"*" => self.nodes[at as usize].star,
                b"#" => self.nodes[at as usize].hash,
                _ => {
                    let wid = self.words.get(w);
                    if wid == NONE {
                        NONE
                    } else {
                        let c = self.word_child(at, wid);
                        if c != NONE && c & TAIL != 0 {
                            let t = c & !TAIL;
                            return if self.tail_is(t, toks) {
                                Found::Tail(at, wid, t)
                            } else {
                                Found::Nothing
                            };
                        }
                        c
                    }
                }
            };
            if at == NONE {
                return Found::Nothing;
            }
        }
        Found::Node(at)
    }

    /// Removes binding `id` from under `pattern`, pruning nodes left empty.
    pub(crate) fn remove(&mut self, pattern: &[u8], id: u32) {
        let at = match self.find(pattern) {
            Found::Nothing => return,
            Found::Tail(parent, wid, t) => {
                let mut prev = NONE;
                let mut cur = self.tails[t as usize].first;
                while cur != NONE && cur != id {
                    prev = cur;
                    cur = self.links[cur as usize];
                }
                if cur == NONE {
                    return;
                }
                let next = self.links[cur as usize];
                if prev == NONE {
                    self.tails[t as usize].first = next;
                } else {
                    self.links[prev as usize] = next;
                }
                self.links[cur as usize] = NONE;
                if self.tails[t as usize].first != NONE {
                    return;
                }
                let tail = self.tails[t as usize];
                let a = self.anchor_of(parent);
                self.remove_entry(a, wid, TAIL | t);
                self.words.release(wid);
                for &tok in &tail.toks[..tail.len as usize] {
                    if tok != STAR {
                        self.words.release(tok);
                    }
                }
                self.nodes[parent as usize].nwords -= 1;
                self.free_tail(t);
                self.prune(parent);
                return;
            }
            Found::Node(at) => at,
        };
        // Unlink the id from the node's list.
        let mut prev = NONE;
        let mut cur = self.nodes[at as usize].first;
        while cur != NONE && cur != id {
            prev = cur;
            cur = self.links[cur as usize];
        }
        if cur == NONE {
            return;
        }
        let next = self.links[cur as usize];
        if prev == NONE {
            self.nodes[at as usize].first = next;
        } else {
            self.links[prev as usize] = next;
        }
        self.links[cur as usize] = NONE;
        let node = &mut self.nodes[at as usize];
        if node.first == NONE {
            if node.is_wild() {
                let a = self.anchor_of(at);
                self.remove_entry(a, BIND, at);
            } else {
                node.sk &= !HASB;
                self.sync(at);
            }
        }
        self.prune(at);
    }

    /// Frees `n` and its ancestors while they are left empty, then resets
    /// the summary of an anchor left without a skeleton.
    fn prune(&mut self, mut n: u32) {
        while n != 0 {
            let node = &self.nodes[n as usize];
            if node.first != NONE || node.star != NONE || node.hash != NONE || node.nwords > 0 {
                break;
            }
            let (parent, word) = (node.parent, node.word);
            match word {
                STAR => self.nodes[parent as usize].star = NONE,
                HASH => self.nodes[parent as usize].hash = NONE,
                _ => {
                    let a = self.anchor_of(parent);
                    self.remove_entry(a, word, n);
                    self.words.release(word);
                    self.nodes[parent as usize].nwords -= 1;
                }
            }
            self.nodes[n as usize] = Node::new(NONE, NONE, 0);
            self.free.push(n);
            n = parent;
        }
        // An anchor left without a skeleton forgets its summary.
        let a = self.anchor_of(n);
        let node = &mut self.nodes[a as usize];
        if node.star == NONE && node.hash == NONE {
            node.sk &= HASB;
            if node.nwords == 0 {
                node.filter = 0;
            }
            self.sync(a);
        }
    }

    /// Whether nothing is bound.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        let r = &self.nodes[0];
        r.first == NONE && r.star == NONE && r.hash == NONE && r.nwords == 0
    }

    /// Calls `out` with every binding id whose pattern matches `key` (each
    /// matching node or tail once; an id appears once per match).
    pub(crate) fn matches(&self, key: &[u8], s: &mut TrieScratch, mut out: impl FnMut(u32)) {
        s.size(self.nodes.len(), self.tails.len());
        s.ids.clear();
        s.ids.extend(words(key).map(|w| self.words.get(w)));
        s.cur.clear();
        let root = &self.nodes[0];
        s.cur.push((0, 0, root.filter, root.sk));
        let nwords = s.ids.len();
        for i in 0..nwords {
            if s.cur.is_empty() {
                return;
            }
            s.bump();
            let stamp = s.stamp;
            s.next.clear();
            let wid = s.ids[i];
            let wbit = if wid == NONE { 0 } else { bit(wid) };
            let mut marked = false;
            for c in 0..s.cur.len() {
                let (a, k, filter, sk) = s.cur[c];
                if filter & wbit != 0 {
                    let TrieScratch {
                        mark,
                        sat,
                        tmark,
                        next,
                        ids,
                        ..
                    } = s;
                    let rest = &ids[i + 1..];
                    self.entries(a, wid, |e| {
                        if !active(e.pos, k) {
                            return;
                        }
                        if e.child & TAIL != 0 {
                            // A tail ends the pattern, so it can match
                            // at one step only; an open edge may reach it
                            // from several counts of that step.
                            let t = (e.child & !TAIL) as usize;
                            if rest.len() == e.sk as usize
                                && rest
                                    .first()
                                    .is_none_or(|&w| w == e.filter || e.filter == STAR)
                                && self.tails[t].matches(rest)
                                && (e.pos & OPEN == 0 || tmark[t] != stamp)
                            {
                                tmark[t] = stamp;
                                self.emit(self.tails[t].first, &mut out);
                            }
                            return;
                        }
                        // `cur` holds each `(anchor, count)` once, and an
                        // edge whose parent is not open applies at one
                        // count only: only open edges need the check.
                        if e.pos & OPEN == 0
                            || fresh(next, mark, sat, &mut marked, stamp, e.child, 0)
                        {
                            next.push((e.child, 0, e.filter, e.sk));
                        }
                    });
                }
                let maxs = sk & STARS;
                if k < maxs {
                    s.next.push((a, k + 1, filter, sk));
                } else if sk & OPEN != 0
                    && fresh(
                        &s.next,
                        &mut s.mark,
                        &mut s.sat,
                        &mut marked,
                        stamp,
                        a,
                        maxs + 1,
                    )
                {
                    // Past every `*`: only the open nodes remain, whatever
                    // the count; keep one pair at `maxs + 1`.
                    s.next.push((a, maxs + 1, filter, sk));
                }
            }
            std::mem::swap(&mut s.cur, &mut s.next);
        }
        // Each matching node once: `cur` holds each `(anchor, count)`
        // once, so an anchor's own bindings are emitted once, and a
        // skeleton node that is not open applies at one count only.
        s.bump();
        let stamp = s.stamp;
        for &(a, k, _, sk) in &s.cur {
            if k == 0 && sk & HASB != 0 {
                self.emit(self.nodes[a as usize].first, &mut out);
            }
            if sk & WBIND != 0 {
                let mark = &mut s.mark;
                self.entries(a, BIND, |e| {
                    if active(e.pos, k) && (e.pos & OPEN == 0 || mark[e.child as usize] != stamp) {
                        if e.pos & OPEN != 0 {
                            mark[e.child as usize] = stamp;
                        }
                        self.emit(self.nodes[e.child as usize].first, &mut out);
                    }
                });
            }
        }
    }

    #[inline]
    fn emit(&self, mut b: u32, out: &mut impl FnMut(u32)) {
        while b != NONE {
            out(b);
            b = self.links[b as usize];
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &Trie, key: &str) -> Vec<u32> {
        let mut s = TrieScratch::default();
        let mut v = Vec::new();
        t.matches(key.as_bytes(), &mut s, |b| v.push(b));
        v.sort();
        v
    }

    #[test]
    fn wildcards() {
        let mut t = Trie::default();
        let pats = [
            "a.*",
            "a.#",
            "#",
            "",
            "*",
            "#.#.b",
            "a..c",
            "*.*",
            "#.*.#",
            "a.#.*.b.#",
        ];
        for (i, p) in pats.iter().enumerate() {
            t.insert(p.as_bytes(), i as u32);
        }
        assert_eq!(m(&t, ""), vec![2, 3]);
        assert_eq!(m(&t, "a"), vec![1, 2, 4, 8]);
        assert_eq!(m(&t, "a.b"), vec![0, 1, 2, 5, 7, 8]);
        assert_eq!(m(&t, "a..c"), vec![1, 2, 6, 8]);
        assert_eq!(m(&t, "."), vec![2, 7, 8]);
        assert_eq!(m(&t, "a.x.b"), vec![1, 2, 5, 8, 9]);
        assert_eq!(m(&t, "a.x.y.b.c.d"), vec![1, 2, 8, 9]);
        for (i, p) in pats.iter().enumerate() {
            t.remove(p.as_bytes(), i as u32);
        }
        assert!(t.is_empty());
        assert_eq!(t.free.len() + 1, t.nodes.len());
        assert_eq!(t.edges.len, 0);
        assert!(t.edges.slots.is_empty());
        assert_eq!(t.words.len, 0);
        assert_eq!(t.tfree.len(), t.tails.len());
    }

    fn naive(p: &[&[u8]], k: &[&[u8]]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&b"#", rest)) => (0..=k.len()).any(|i| naive(rest, &k[i..])),
            Some((&b"*", rest)) => !k.is_empty() && naive(rest, &k[1..]),
            Some((w, rest)) => k.first() == Some(w) && naive(rest, &k[1..]),
        }
    }

    /// Random binds and unbinds over a tiny vocabulary (many skeleton
    /// nodes sharing an anchor and a word), checked against a naive matcher.
    #[test]
    fn random_against_naive() {
        random_run(0x9E37_79B9_7F4A_7C15, &["a", "b", ""], 64, 5, 6, 4000);
    }

    /// Hostile input: patterns made of `#` and `*` runs against keys of
    /// thousands of words. The active set holds at most one pair per
    /// (anchor, star count) plus one saturated pair, so it stays small
    /// however long the key (no backtracking over the `#`s), and huge
    /// keys and words are looked up without trouble.
    #[test]
    fn hostile_patterns_and_keys() {
        let mut t = Trie::default();
        let pats = [
            "#.#.#.#.x",
            "#.*.#.*.#.*.#.x",
            "*.#.*.#.*.#.*.#.*.#.*.#.*.#.*.#",
            "#.x.#.x.#.x.#.x.#.x.#.y",
            "x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.x.y",
        ];
        for (i, p) in pats.iter().enumerate() {
            t.insert(p.as_bytes(), i as u32);
        }
        let long = "x.".repeat(20_000);
        let cases = [
            (format!("{long}x"), vec![0, 1, 2]),
            (format!("{long}y"), vec![2, 3]),
            (format!("{long}z"), vec![2]),
            ("x.y".to_owned(), vec![]),
            ("x.x.y".to_owned(), vec![]),
            ("a.x".to_owned(), vec![0]),
            (format!("{}y", "x.".repeat(24)), vec![2, 3, 4]),
        ];
        let mut s = TrieScratch::default();
        for (key, want) in &cases {
            let mut got = Vec::new();
            t.matches(key.as_bytes(), &mut s, |b| got.push(b));
            got.sort();
            assert_eq!(&got, want, "{}", &key[key.len().saturating_sub(40)..]);
        }
        assert!(
            s.cur.capacity().max(s.next.capacity()) <= 64,
            "active set grew to {}",
            s.cur.capacity().max(s.next.capacity())
        );
        // A single huge word, and a key of empty words.
        let huge = "w".repeat(100_000);
        t.insert(huge.as_bytes(), 9);
        assert_eq!(m(&t, &huge), vec![9]);
        assert_eq!(m(&t, &".".repeat(50_000)), vec![2]);
        t.remove(huge.as_bytes(), 9);
        for (i, p) in pats.iter().enumerate() {
            t.remove(p.as_bytes(), i as u32);
        }
        assert!(t.is_empty());
        assert_eq!(t.words.len, 0);
    }

    /// The same with long patterns and keys, so that a step's active set
    /// outgrows [`SCAN`] and duplicates are caught by the stamps.
    #[test]
    fn random_long_against_naive() {
        let peak = random_run(0x2545_F491_4F6C_DD1D, &["a", "b", ""], 64, 10, 12, 3000);
        assert!(peak > SCAN, "active sets stayed small: {peak}");
    }

    /// A wider vocabulary, long words (compared outside the word table)
    /// and more bindings: tails that stay tails, tables that grow and
    /// shrink.
    #[test]
    fn random_wide_against_naive() {
        let vocab: Vec<String> = (0..24)
            .map(|i| {
                if i % 5 == 0 {
                    format!("a-word-longer-than-eleven-bytes-{i}")
                } else {
                    format!("w{i}")
                }
            })
            .collect();
        let vocab: Vec<&str> = vocab.iter().map(String::as_str).collect();
        random_run(0x853C_49E6_748F_EA9B, &vocab, 512, 7, 8, 20_000);
    }

    /// Returns the largest capacity the active sets reached. Patterns are
    /// drawn from `literals` plus `*` and `#`, keys from `literals`.
    fn random_run(
        seed: u64,
        literals: &[&str],
        ids: usize,
        plen: u64,
        klen: u64,
        rounds: usize,
    ) -> usize {
        let mut seed = seed;
        let mut peak = 0;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut vocab = literals.to_vec();
        vocab.extend(["*", "#"]);
        let nlit = literals.len() as u64;
        let nall = vocab.len() as u64;
        let mut t = Trie::default();
        let mut live: Vec<Option<String>> = vec![None; ids];
        let mut tails = 0;
        let mut hits = 0;
        for round in 0..rounds {
            let id = rnd(ids as u64) as usize;
            if let Some(p) = live[id].take() {
                t.remove(p.as_bytes(), id as u32);
            } else {
                let n = rnd(plen);
                let p: Vec<&str> = (0..n).map(|_| vocab[rnd(nall) as usize]).collect();
                let p = p.join(".");
                t.insert(p.as_bytes(), id as u32);
                live[id] = Some(p);
            }
            if round % 7 == 0 {
                let from = rnd(ids as u64) as usize;
                let k: Vec<&str> = match &live[from] {
                    // Half the keys instantiate a live pattern, so that
                    // long patterns match too.
                    Some(p) if rnd(2) == 0 => p
                        .split('.')
                        .flat_map(|w| {
                            let n = match w {
                                "*" => 1,
                                "#" => rnd(3) as usize,
                                _ => 0,
                            };
                            let mut v: Vec<&str> =
                                (0..n).map(|_| vocab[rnd(nlit) as usize]).collect();
                            if n == 0 && w != "#" {
                                v.push(w);
                            }
                            v
                        })
                        .collect(),
                    _ => {
                        let n = rnd(klen);
                        (0..n).map(|_| vocab[rnd(nlit) as usize]).collect()
                    }
                };
                let k = k.join(".");
                let kw: Vec<&[u8]> = words(k.as_bytes()).collect();
                let mut want: Vec<u32> = live
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| {
                        let p = p.as_ref()?;
                        let pw: Vec<&[u8]> = words(p.as_bytes()).collect();
                        naive(&pw, &kw).then_some(i as u32)
                    })
                    .collect();
                want.sort();
                let mut s = TrieScratch::default();
                let mut got = Vec::new();
                t.matches(k.as_bytes(), &mut s, |b| got.push(b));
                got.sort();
                tails = tails.max(t.tails.len() - t.tfree.len());
                hits += got.len();
                peak = peak.max(s.cur.capacity()).max(s.next.capacity());
                assert_eq!(got, want, "key {k:?}");
            }
        }
        for (id, p) in live.iter().enumerate() {
            if let Some(p) = p {
                t.remove(p.as_bytes(), id as u32);
            }
        }
        assert!(t.is_empty());
        assert_eq!(t.edges.len, 0);
        assert!(t.edges.slots.is_empty());
        assert_eq!(t.tfree.len(), t.tails.len());
        assert_eq!(t.words.len, 0);
        assert!(t.words.table.is_empty());
        assert!(tails > 0, "no pattern ended in a tail");
        assert!(hits > rounds / 50, "few matches: {hits}");
        peak
    }
}

#[cfg(test)]
mod mem_probe {
    use super::*;
    #[test]
    #[ignore]
    fn breakdown() {
        let mut s = 4242u64 + 100_000;
        let mut rnd = |n: u64| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        };
        let mut t = Trie::default();
        let mut id = 0u32;
        while id < 100_000 {
            let n = 3 + rnd(5);
            let w: Vec<String> = (0..n)
                .map(|_| match rnd(100) {
                    0..=11 => "*".into(),
                    12..=17 => "#".into(),
                    _ => format!("w{}", rnd(1000)),
                })
                .collect();
            if w.iter()
                .filter(|w| !matches!(w.as_str(), "*" | "#"))
                .count()
                < 2
            {
                continue;
            }
            let _q = rnd(10_000);
            t.insert(w.join(".").as_bytes(), id);
            id += 1;
        }
        let per = |b: usize| b as f64 / 100_000.0;
        eprintln!(
            "nodes {} live ({} cap) {:.1} B/b; tails {} ({} cap) {:.1}; edges {} in {} slots {:.1}; words {}; links {:.1}",
            t.nodes.len() - t.free.len(),
            t.nodes.capacity(),
            per(t.nodes.capacity() * size_of::<Node>()),
            t.tails.len() - t.tfree.len(),
            t.tails.capacity(),
            per(t.tails.capacity() * size_of::<Tail>()),
            t.edges.len,
            t.edges.slots.len(),
            per(t.edges.slots.len() * size_of::<Entry>()),
            t.words.len,
            per(t.links.capacity() * 4),
        );
    }
}
