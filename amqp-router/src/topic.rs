//! The topic exchange's trie, shaped like RabbitMQ's
//! `rabbit_db_topic_exchange` (one node per pattern prefix, at most three
//! kinds of edge out of a node: a word, `*`, `#`), with two changes that
//! make a route cost in proportion to the routing key rather than to the
//! number of wildcard paths in the trie:
//!
//! * **Interned words.** Every literal word of a pattern gets a `u32` id
//!   (reference-counted); a routing key's word is hashed once per route,
//!   and an unknown word takes no word edge at all.
//! * **Anchors and skeletons.** A literal node (and the root) is an
//!   *anchor*; the wildcard-only nodes below it (reached through `*` and
//!   `#` edges only) are its *skeleton*. A skeleton node's position is
//!   summarised by how many `*` lie between it and its anchor and whether a
//!   `#` does: it consumes exactly that many words, or (with a `#`) at
//!   least that many. The walk over a key therefore never visits skeleton
//!   nodes: its active set holds `(anchor, words consumed since the
//!   anchor)` pairs, and one hash lookup keyed by `(anchor, word id)` finds
//!   every literal edge out of the whole skeleton of that anchor; each
//!   edge records its parent's position, so the ones that apply at this
//!   count are picked out without touching the nodes. Bindings on skeleton
//!   nodes are found the same way at the end of the key.
//!
//! Every literal edge is one 24-byte entry of one flat hash table keyed by
//! `(anchor, word id)`, hashed with one multiplication. The entry also
//! carries a copy of its child's word filter and skeleton summary, so a
//! step of the walk reads the entry and never the node it leads to; only
//! the last step reads the nodes whose bindings it emits.

use hashbrown::HashTable;
use std::hash::BuildHasher;

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
/// `Entry::pos` bit of an entry in [`Trie::edges`]: [`Trie::extra`] holds
/// more entries with the same key.
const MORE: u32 = 1 << 31;

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
    /// that the walk reaching it need not read the node.
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

/// Interned words, reference-counted by the nodes that carry them.
#[derive(Debug, Default)]
struct Words {
    table: HashTable<u32>,
    slots: Vec<(Box<[u8]>, u32)>,
    free: Vec<u32>,
    state: foldhash::fast::RandomState,
}

impl Words {
    #[inline]
    fn get(&self, w: &[u8]) -> u32 {
        let slots = &self.slots;
        self.table
            .find(self.state.hash_one(w), |&i| &*slots[i as usize].0 == w)
            .copied()
            .unwrap_or(NONE)
    }

    fn intern(&mut self, w: &[u8]) -> u32 {
        let h = self.state.hash_one(w);
        let slots = &self.slots;
        if let Some(&i) = self.table.find(h, |&i| &*slots[i as usize].0 == w) {
            self.slots[i as usize].1 += 1;
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = (w.into(), 1);
                i
            }
            None => {
                self.slots.push((w.into(), 1));
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        let state = &self.state;
        self.table
            .insert_unique(h, i, |&j| state.hash_one(&*slots[j as usize].0));
        i
    }

    fn release(&mut self, i: u32) {
        let slot = &mut self.slots[i as usize];
        slot.1 -= 1;
        if slot.1 == 0 {
            let h = self.state.hash_one(&*slot.0);
            slot.0 = Box::default();
            if let Ok(e) = self.table.find_entry(h, |&j| j == i) {
                e.remove();
            }
            self.free.push(i);
        }
    }
}

/// The trie of one topic exchange. Bindings are `u32` ids chosen by the
/// caller; one id is at one node.
#[derive(Debug)]
pub(crate) struct Trie {
    nodes: Vec<Node>,
    free: Vec<u32>,
    /// One entry per `(anchor, word)` key.
    edges: HashTable<Entry>,
    /// Further entries for keys already in `edges` (an anchor whose
    /// skeleton has several nodes with an edge for the same word).
    extra: HashTable<Entry>,
    words: Words,
    /// Next binding at the same node, indexed by binding id.
    links: Vec<u32>,
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
    stamp: u32,
}

impl TrieScratch {
    #[inline]
    fn bump(&mut self, nodes: usize) {
        if self.mark.len() < nodes {
            self.mark.resize(nodes, 0);
            self.sat.resize(nodes, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.sat.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
    }
}

/// The words of a topic routing key or pattern: `""` has none; otherwise
/// split on every `.` (empty words are words).
pub(crate) fn words(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    let none = key.is_empty();
    key.split(|&b| b == b'.').filter(move |_| !none)
}

impl Default for Trie {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::new(NONE, NONE, 0)],
            free: Vec::new(),
            edges: HashTable::new(),
            extra: HashTable::new(),
            words: Words::default(),
            links: Vec::new(),
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
            if self.nodes[e.child as usize].parent == parent {
                found = e.child;
            }
        });
        found
    }

    /// Calls `f` with every entry keyed `(anchor, word)`.
    #[inline]
    fn entries(&self, anchor: u32, word: u32, mut f: impl FnMut(&Entry)) {
        let h = key_hash(anchor, word);
        if let Some(e) = self.edges.find(h, |e| e.anchor == anchor && e.word == word) {
            f(e);
            if e.pos & MORE != 0 {
                for x in self.extra.iter_hash(h) {
                    if x.anchor == anchor && x.word == word {
                        f(x);
                    }
                }
            }
        }
    }

    fn insert_entry(&mut self, e: Entry) {
        let h = key_hash(e.anchor, e.word);
        let rehash = |e: &Entry| key_hash(e.anchor, e.word);
        if let Some(p) = self
            .edges
            .find_mut(h, |x| x.anchor == e.anchor && x.word == e.word)
        {
            p.pos |= MORE;
            self.extra.insert_unique(h, e, rehash);
        } else {
            self.edges.insert_unique(h, e, rehash);
        }
    }

    fn remove_entry(&mut self, anchor: u32, word: u32, child: u32) {
        let h = key_hash(anchor, word);
        let rehash = |e: &Entry| key_hash(e.anchor, e.word);
        let same = |x: &Entry| x.anchor == anchor && x.word == word;
        let Ok(head) = self.edges.find_entry(h, same) else {
            return;
        };
        if head.get().child == child {
            let more = head.get().pos & MORE != 0;
            head.remove();
            if more && let Ok(x) = self.extra.find_entry(h, same) {
                let (mut x, _) = x.remove();
                x.pos &= !MORE;
                if self.extra.find(h, same).is_some() {
                    x.pos |= MORE;
                }
                self.edges.insert_unique(h, x, rehash);
            }
        } else {
            if let Ok(x) = self.extra.find_entry(h, |x| same(x) && x.child == child) {
                x.remove();
            }
            if self.extra.find(h, same).is_none()
                && let Some(p) = self.edges.find_mut(h, same)
            {
                p.pos &= !MORE;
            }
        }
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
        let h = key_hash(p, word);
        let same = |x: &Entry| x.anchor == p && x.word == word && x.child == a;
        if let Some(e) = self.edges.find_mut(h, same) {
            (e.filter, e.sk) = (filter, sk);
        } else if let Some(e) = self.extra.find_mut(h, same) {
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
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    /// Adds binding `id` under `pattern`.
    pub(crate) fn insert(&mut self, pattern: &[u8], id: u32) {
        let mut at = 0u32;
        for w in words(pattern) {
            let p = &self.nodes[at as usize];
            at = match w {
                b"*" | b"#" => {
                    let star = w == b"*";
                    let existing = if star { p.star } else { p.hash };
                    if existing != NONE {
                        existing
                    } else {
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
                }
                _ => {
                    let wid = self.words.get(w);
                    let existing = if wid == NONE {
                        NONE
                    } else {
                        self.word_child(at, wid)
                    };
                    if existing != NONE {
                        existing
                    } else {
                        let pos = p.pos();
                        let wid = self.words.intern(w);
                        let child = self.alloc(Node::new(at, wid, 0));
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
                            filter: 0,
                            sk: 0,
                        });
                        child
                    }
                }
            };
        }
        let idx = id as usize;
        if self.links.len() <= idx {
            self.links.resize(idx + 1, NONE);
        }
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
        self.links[idx] = self.nodes[at as usize].first;
        let node = &mut self.nodes[at as usize];
        node.first = id;
        if !node.is_wild() && node.sk & HASB == 0 {
            node.sk |= HASB;
            self.sync(at);
        }
    }

    fn find(&self, pattern: &[u8]) -> u32 {
        let mut at = 0u32;
        for w in words(pattern) {
            at = match w {
                b"*" => self.nodes[at as usize].star,
                b"#" => self.nodes[at as usize].hash,
                _ => {
                    let wid = self.words.get(w);
                    if wid == NONE {
                        NONE
                    } else {
                        self.word_child(at, wid)
                    }
                }
            };
            if at == NONE {
                return NONE;
            }
        }
        at
    }

    /// Removes binding `id` from under `pattern`, pruning nodes left empty.
    pub(crate) fn remove(&mut self, pattern: &[u8], id: u32) {
        let at = self.find(pattern);
        if at == NONE {
            return;
        }
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
        // Prune upwards.
        let mut n = at;
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
    /// matching node once; an id appears once per matching node).
    pub(crate) fn matches(&self, key: &[u8], s: &mut TrieScratch, mut out: impl FnMut(u32)) {
        s.cur.clear();
        let root = &self.nodes[0];
        s.cur.push((0, 0, root.filter, root.sk));
        for w in words(key) {
            if s.cur.is_empty() {
                return;
            }
            s.bump(self.nodes.len());
            let stamp = s.stamp;
            s.next.clear();
            let wid = self.words.get(w);
            let wbit = if wid == NONE { 0 } else { bit(wid) };
            let mut marked = false;
            for i in 0..s.cur.len() {
                let (a, k, filter, sk) = s.cur[i];
                if filter & wbit != 0 {
                    let (mark, sat, next) = (&mut s.mark, &mut s.sat, &mut s.next);
                    self.entries(a, wid, |e| {
                        // `cur` holds each `(anchor, count)` once, and an
                        // edge whose parent is not open applies at one
                        // count only: only open edges need the check.
                        if active(e.pos, k)
                            && (e.pos & OPEN == 0
                                || fresh(next, mark, sat, &mut marked, stamp, e.child, 0))
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
        s.bump(self.nodes.len());
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
        assert_eq!(t.edges.len(), 0);
        assert_eq!(t.extra.len(), 0);
        assert_eq!(t.words.table.len(), 0);
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
        random_run(0x9E37_79B9_7F4A_7C15, 5, 6, 4000);
    }

    /// The same with long patterns and keys, so that a step's active set
    /// outgrows [`SCAN`] and duplicates are caught by the stamps.
    #[test]
    fn random_long_against_naive() {
        let peak = random_run(0x2545_F491_4F6C_DD1D, 10, 12, 3000);
        assert!(peak > SCAN, "active sets stayed small: {peak}");
    }

    /// Returns the largest capacity the active sets reached.
    fn random_run(seed: u64, plen: u64, klen: u64, rounds: usize) -> usize {
        let mut seed = seed;
        let mut peak = 0;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let vocab = ["a", "b", "", "*", "#"];
        let mut t = Trie::default();
        let mut live: Vec<Option<String>> = vec![None; 64];
        for round in 0..rounds {
            let id = rnd(64) as usize;
            if let Some(p) = live[id].take() {
                t.remove(p.as_bytes(), id as u32);
            } else {
                let n = rnd(plen);
                let p: Vec<&str> = (0..n).map(|_| vocab[rnd(5) as usize]).collect();
                let p = p.join(".");
                t.insert(p.as_bytes(), id as u32);
                live[id] = Some(p);
            }
            if round % 7 == 0 {
                let n = rnd(klen);
                let k: Vec<&str> = (0..n).map(|_| vocab[rnd(3) as usize]).collect();
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
        assert_eq!(t.edges.len() + t.extra.len(), 0);
        peak
    }
}
