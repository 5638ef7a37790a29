//! A channel's unacknowledged deliveries by delivery tag.
//!
//! Tags are handed out in increasing order and are mostly acknowledged in
//! that order, so the recent ones live in a deque indexed by `tag - base`:
//! an insert, a single ack and a `multiple` ack cost O(1) a delivery
//! (a `BTreeMap` cost 6% of the broker's instructions in the confirms
//! benchmark row, in node searches and rebalancing).
//!
//! A client may hold one delivery for ever while it acks the ones after
//! it; left alone, the deque would then grow by one empty slot a delivery.
//! So when empty slots outnumber live entries (beyond a small slack), the
//! oldest live entries move to a `BTreeMap` of stragglers. The deque's
//! length therefore stays below twice the live entries plus the slack,
//! whatever the client does, and each delivery moves at most once.

use std::collections::{BTreeMap, VecDeque};

/// Empty slots tolerated beyond the live entries before the oldest entries
/// move to the straggler map.
const SLACK: usize = 64;

/// Delivery tag → `T`: see the [module](self) documentation.
#[derive(Debug)]
pub(crate) struct TagMap<T> {
    /// Entries with tags below `base`.
    old: BTreeMap<u64, T>,
    /// The tag of `slots[0]`.
    base: u64,
    /// Tags `base..base + slots.len()`; the front is live when non-empty.
    slots: VecDeque<Option<T>>,
    /// Live entries in `slots`.
    live: usize,
}

impl<T> Default for TagMap<T> {
    fn default() -> Self {
        TagMap {
            old: BTreeMap::new(),
            base: 0,
            slots: VecDeque::new(),
            live: 0,
        }
    }
}

impl<T> TagMap<T> {
    /// How many entries there are.
    pub(crate) fn len(&self) -> usize {
        self.old.len() + self.live
    }

    /// Whether there is none.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `tag` is here.
    pub(crate) fn contains_key(&self, tag: u64) -> bool {
        if tag < self.base {
            self.old.contains_key(&tag)
        } else {
            self.slot(tag).is_some_and(|s| s.is_some())
        }
    }

    fn slot(&self, tag: u64) -> Option<&Option<T>> {
        let i = usize::try_from(tag.checked_sub(self.base)?).ok()?;
        self.slots.get(i)
    }

    /// Adds `v` under `tag` (replacing what was there).
    pub(crate) fn insert(&mut self, tag: u64, v: T) {
        if self.slots.is_empty() {
            // (Stragglers keep tags below the deque's.)
            let above_old = self.old.last_key_value().map_or(0, |(&k, _)| k + 1);
            self.base = tag.max(above_old);
        }
        if tag < self.base {
            self.old.insert(tag, v);
            return;
        }
        let i = tag - self.base;
        // A tag far beyond the deque (a gap of deliveries that need no
        // ack) starts it afresh rather than filling the gap.
        if i > (self.slots.len() + SLACK) as u64 {
            self.spill_all();
            self.base = tag;
        }
        let i = (tag - self.base) as usize;
        while self.slots.len() <= i {
            self.slots.push_back(None);
        }
        if self.slots[i].replace(v).is_none() {
            self.live += 1;
        }
        self.compact();
    }

    /// Moves every deque entry to the straggler map.
    fn spill_all(&mut self) {
        let base = self.base;
        for (k, s) in std::mem::take(&mut self.slots).into_iter().enumerate() {
            if let Some(v) = s {
                self.old.insert(base + k as u64, v);
            }
        }
        self.live = 0;
    }

    /// Keeps the front live and the deque dense enough.
    fn compact(&mut self) {
        while self.slots.len() > 2 * self.live + SLACK {
            if let Some(Some(v)) = self.slots.pop_front() {
                self.old.insert(self.base, v);
                self.live -= 1;
            }
            self.base += 1;
        }
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// Removes and returns the entry for `tag`.
    pub(crate) fn remove(&mut self, tag: u64) -> Option<T> {
        if tag < self.base {
            return self.old.remove(&tag);
        }
        let i = usize::try_from(tag - self.base).ok()?;
        let v = self.slots.get_mut(i)?.take()?;
        self.live -= 1;
        self.compact();
        Some(v)
    }

    /// Removes every entry with a tag up to `tag`, in tag order, into
    /// `out`.
    pub(crate) fn take_through(&mut self, tag: u64, out: &mut Vec<(u64, T)>) {
        if tag >= self.base {
            out.extend(std::mem::take(&mut self.old));
        } else {
            let rest = self.old.split_off(&(tag + 1));
            out.extend(std::mem::replace(&mut self.old, rest));
            return;
        }
        while self.base <= tag {
            let Some(s) = self.slots.pop_front() else {
                break;
            };
            if let Some(v) = s {
                self.live -= 1;
                out.push((self.base, v));
            }
            self.base += 1;
        }
        self.compact();
    }

    /// Removes every entry, in tag order, into `out`.
    pub(crate) fn take_all(&mut self, out: &mut Vec<(u64, T)>) {
        self.take_through(u64::MAX, out);
        self.base = 0;
    }

    /// The entry with the lowest tag.
    pub(crate) fn first(&self) -> Option<(u64, &T)> {
        if let Some((&k, v)) = self.old.first_key_value() {
            return Some((k, v));
        }
        self.slots.front()?.as_ref().map(|v| (self.base, v))
    }

    /// The entries in tag order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.old.values().chain(self.slots.iter().flatten())
    }

    /// The deque's length (tests: it stays bounded).
    #[cfg(test)]
    fn span(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn behaves_as_a_btreemap() {
        for seed in 1..=100u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut a: TagMap<u64> = TagMap::default();
            let mut b: BTreeMap<u64, u64> = BTreeMap::new();
            let mut next = 0u64;
            for _ in 0..2_000 {
                match rng.next() % 10 {
                    0..=3 => {
                        // Deliveries, sometimes after a gap of no-ack tags.
                        next += 1 + if rng.next().is_multiple_of(8) {
                            rng.next() % 200
                        } else {
                            0
                        };
                        a.insert(next, next * 3);
                        b.insert(next, next * 3);
                    }
                    4..=6 => {
                        // A single ack: mostly the oldest, sometimes any.
                        let tag = if rng.next().is_multiple_of(3) {
                            rng.next() % (next + 2)
                        } else {
                            b.keys().next().copied().unwrap_or(0)
                        };
                        assert_eq!(a.remove(tag), b.remove(&tag), "seed {seed}");
                    }
                    7 | 8 => {
                        let tag = rng.next() % (next + 2);
                        let mut got = Vec::new();
                        a.take_through(tag, &mut got);
                        let rest = b.split_off(&(tag + 1));
                        let want: Vec<_> = std::mem::replace(&mut b, rest).into_iter().collect();
                        assert_eq!(got, want, "seed {seed}");
                    }
                    _ => {
                        let tag = rng.next() % (next + 2);
                        assert_eq!(a.contains_key(tag), b.contains_key(&tag));
                        if rng.next().is_multiple_of(50) {
                            let mut got = Vec::new();
                            a.take_all(&mut got);
                            let want: Vec<_> = std::mem::take(&mut b).into_iter().collect();
                            assert_eq!(got, want, "seed {seed}");
                        }
                    }
                }
                assert_eq!(a.len(), b.len(), "seed {seed}");
                assert_eq!(a.first(), b.iter().next().map(|(&k, v)| (k, v)));
                assert!(a.values().eq(b.values()), "seed {seed}");
                assert!(a.span() <= 2 * a.len() + SLACK, "seed {seed}");
            }
        }
    }

    #[test]
    fn one_held_delivery_does_not_grow_the_deque() {
        // The client holds tag 1 and acks every later delivery at once.
        let mut m: TagMap<()> = TagMap::default();
        m.insert(1, ());
        for tag in 2..100_000 {
            m.insert(tag, ());
            assert!(m.remove(tag).is_some());
            assert!(m.span() <= 2 * m.len() + SLACK);
        }
        assert_eq!(m.len(), 1);
        assert_eq!(m.first(), Some((1, &())));
        assert_eq!(m.remove(1), Some(()));
        assert!(m.is_empty());
    }

    #[test]
    fn in_order_acks_keep_every_entry_in_the_deque() {
        let mut m: TagMap<u64> = TagMap::default();
        for tag in 1..=100 {
            m.insert(tag, tag);
        }
        for tag in 1..=100 {
            assert_eq!(m.remove(tag), Some(tag));
            assert!(m.old.is_empty(), "nothing spilled");
        }
        assert!(m.is_empty());
        assert_eq!(m.span(), 0);
    }
}
