//! The topic exchange's trie, shaped like RabbitMQ's
//! `rabbit_db_topic_exchange`: one node per pattern prefix, at most three
//! kinds of edge out of a node (a word, `*`, `#`), every word edge in one
//! hash table keyed by (parent node, word). Matching walks the routing key
//! word by word, keeping a deduplicated set of active nodes, so its cost is
//! proportional to the key's length times the number of live wildcard paths,
//! never to the number of bindings.

use hashbrown::HashTable;
use std::hash::BuildHasher;

pub(crate) const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge {
    Root,
    Word,
    Star,
    Hash,
}

#[derive(Debug)]
struct Node {
    parent: u32,
    edge: Edge,
    star: u32,
    hash: u32,
    children: u32,
    /// Word-edge children.
    word_children: u32,
    /// The only word child, when known (else [`NONE`]: use the table).
    single: u32,
    /// Head of this node's binding list (links live in [`Trie::links`]).
    first: u32,
    word: Box<[u8]>,
}

/// The trie of one topic exchange. Bindings are `u32` ids chosen by the
/// caller; one id is at one node.
#[derive(Debug)]
pub(crate) struct Trie {
    nodes: Vec<Node>,
    free: Vec<u32>,
    edges: HashTable<u32>,
    /// Next binding at the same node, indexed by binding id.
    links: Vec<u32>,
    state: foldhash::fast::RandomState,
}

/// Reusable buffers for [`Trie::matches`].
#[derive(Debug, Default, Clone)]
pub(crate) struct TrieScratch {
    cur: Vec<u32>,
    next: Vec<u32>,
    mark: Vec<u32>,
    stamp: u32,
}

impl TrieScratch {
    fn bump(&mut self, nodes: usize) {
        if self.mark.len() < nodes {
            self.mark.resize(nodes, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
    }
}

#[inline]
fn mix(word_hash: u64, parent: u32) -> u64 {
    let x = (word_hash ^ u64::from(parent)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
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
            nodes: vec![Node {
                parent: NONE,
                edge: Edge::Root,
                star: NONE,
                hash: NONE,
                children: 0,
                word_children: 0,
                single: NONE,
                first: NONE,
                word: Box::default(),
            }],
            free: Vec::new(),
            edges: HashTable::new(),
            links: Vec::new(),
            state: foldhash::fast::RandomState::default(),
        }
    }
}

impl Trie {
    #[inline]
    fn word_child(&self, parent: u32, word: &[u8], wh: u64) -> u32 {
        let p = &self.nodes[parent as usize];
        if p.word_children == 0 {
            return NONE;
        }
        if p.single != NONE {
            let c = &self.nodes[p.single as usize];
            return if &*c.word == word { p.single } else { NONE };
        }
        let nodes = &self.nodes;
        self.edges
            .find(mix(wh, parent), |&c| {
                let n = &nodes[c as usize];
                n.parent == parent && &*n.word == word
            })
            .copied()
            .unwrap_or(NONE)
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
            let (edge, existing) = match w {
                b"*" => (Edge::Star, self.nodes[at as usize].star),
                b"#" => (Edge::Hash, self.nodes[at as usize].hash),
                _ => {
                    let wh = self.state.hash_one(w);
                    (Edge::Word, self.word_child(at, w, wh))
                }
            };
            if existing != NONE {
                at = existing;
                continue;
            }
            let child = self.alloc(Node {
                parent: at,
                edge,
                star: NONE,
                hash: NONE,
                children: 0,
                word_children: 0,
                single: NONE,
                first: NONE,
                word: if edge == Edge::Word {
                    w.into()
                } else {
                    Box::default()
                },
            });
            self.nodes[at as usize].children += 1;
            match edge {
                Edge::Star => self.nodes[at as usize].star = child,
                Edge::Hash => self.nodes[at as usize].hash = child,
                _ => {
                    let p = &mut self.nodes[at as usize];
                    p.single = if p.word_children == 0 { child } else { NONE };
                    p.word_children += 1;
                    let h = mix(self.state.hash_one(w), at);
                    let nodes = &self.nodes;
                    let state = &self.state;
                    self.edges.insert_unique(h, child, |&c| {
                        let n = &nodes[c as usize];
                        mix(state.hash_one(&*n.word), n.parent)
                    });
                }
            }
            at = child;
        }
        let idx = id as usize;
        if self.links.len() <= idx {
            self.links.resize(idx + 1, NONE);
        }
        self.links[idx] = self.nodes[at as usize].first;
        self.nodes[at as usize].first = id;
    }

    fn find(&self, pattern: &[u8]) -> u32 {
        let mut at = 0u32;
        for w in words(pattern) {
            at = match w {
                b"*" => self.nodes[at as usize].star,
                b"#" => self.nodes[at as usize].hash,
                _ => self.word_child(at, w, self.state.hash_one(w)),
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
        // Prune upwards.
        let mut n = at;
        while n != 0 {
            let node = &self.nodes[n as usize];
            if node.children > 0 || node.first != NONE {
                break;
            }
            let parent = node.parent;
            match node.edge {
                Edge::Star => self.nodes[parent as usize].star = NONE,
                Edge::Hash => self.nodes[parent as usize].hash = NONE,
                _ => {
                    let h = mix(self.state.hash_one(&*node.word), parent);
                    if let Ok(entry) = self.edges.find_entry(h, |&c| c == n) {
                        entry.remove();
                    }
                    let p = &mut self.nodes[parent as usize];
                    p.word_children -= 1;
                    // The remaining child, if one, is found through the table.
                    p.single = NONE;
                }
            }
            self.nodes[parent as usize].children -= 1;
            self.nodes[n as usize].word = Box::default();
            self.nodes[n as usize].parent = NONE;
            self.free.push(n);
            n = parent;
        }
    }

    /// Whether nothing is bound.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes[0].children == 0 && self.nodes[0].first == NONE
    }

    /// Calls `out` with every binding id whose pattern matches `key` (each
    /// matching node once; an id appears once per matching node).
    pub(crate) fn matches(&self, key: &[u8], s: &mut TrieScratch, mut out: impl FnMut(u32)) {
        s.bump(self.nodes.len());
        s.cur.clear();
        self.add(0, &mut s.cur, &mut s.mark, s.stamp);
        for w in words(key) {
            if s.cur.is_empty() {
                return;
            }
            s.bump(self.nodes.len());
            s.next.clear();
            let wh = self.state.hash_one(w);
            for i in 0..s.cur.len() {
                let n = s.cur[i];
                let node = &self.nodes[n as usize];
                if node.edge == Edge::Hash {
                    self.add(n, &mut s.next, &mut s.mark, s.stamp);
                }
                if node.children > 0 {
                    if node.star != NONE {
                        self.add(node.star, &mut s.next, &mut s.mark, s.stamp);
                    }
                    let c = self.word_child(n, w, wh);
                    if c != NONE {
                        self.add(c, &mut s.next, &mut s.mark, s.stamp);
                    }
                }
            }
            std::mem::swap(&mut s.cur, &mut s.next);
        }
        for &n in &s.cur {
            let mut b = self.nodes[n as usize].first;
            while b != NONE {
                out(b);
                b = self.links[b as usize];
            }
        }
    }

    /// Adds `n` and its `#` closure (a `#` matches zero words) to `set`.
    #[inline]
    fn add(&self, mut n: u32, set: &mut Vec<u32>, mark: &mut [u32], stamp: u32) {
        while n != NONE && mark[n as usize] != stamp {
            mark[n as usize] = stamp;
            set.push(n);
            n = self.nodes[n as usize].hash;
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
        for (i, p) in ["a.*", "a.#", "#", "", "*", "#.#.b", "a..c", "*.*"]
            .iter()
            .enumerate()
        {
            t.insert(p.as_bytes(), i as u32);
        }
        assert_eq!(m(&t, ""), vec![2, 3]);
        assert_eq!(m(&t, "a"), vec![1, 2, 4]);
        assert_eq!(m(&t, "a.b"), vec![0, 1, 2, 5, 7]);
        assert_eq!(m(&t, "a..c"), vec![1, 2, 6]);
        assert_eq!(m(&t, "."), vec![2, 7]);
        for (i, p) in ["a.*", "a.#", "#", "", "*", "#.#.b", "a..c", "*.*"]
            .iter()
            .enumerate()
        {
            t.remove(p.as_bytes(), i as u32);
        }
        assert!(t.is_empty());
        assert_eq!(t.free.len() + 1, t.nodes.len());
        assert_eq!(t.edges.len(), 0);
    }
}
