//! A channel's consumers: by tag for the protocol (`basic.consume`,
//! `basic.cancel`), by [`Key`] for deliveries and acks.
//!
//! Each delivery and each ack used to find its consumer by hashing and
//! comparing its tag (25 to 30 bytes, `amq.ctag-...`): five lookups a
//! message, about 5% of the broker's instructions in the confirms
//! benchmark row. A [`Key`] is a slot index, checked by a generation so
//! that a key kept after its consumer was cancelled (an unacked delivery
//! outlives its consumer) never finds the consumer that took the slot
//! next.

use amqp_types::ShortString;
use std::collections::HashMap;
use std::hash::BuildHasher;

/// Names one consumer of one channel while it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    slot: u32,
    generation: u32,
}

#[derive(Debug)]
struct Slot<V> {
    generation: u32,
    entry: Option<(ShortString, V)>,
}

/// Consumers by tag and by [`Key`].
#[derive(Debug)]
pub(crate) struct ByTag<V, S> {
    slots: Vec<Slot<V>>,
    by_tag: HashMap<ShortString, u32, S>,
    /// Empty slots, to reuse.
    free: Vec<u32>,
}

impl<V, S: Default> Default for ByTag<V, S> {
    fn default() -> Self {
        ByTag {
            slots: Vec::new(),
            by_tag: HashMap::default(),
            free: Vec::new(),
        }
    }
}

impl<V, S: BuildHasher> ByTag<V, S> {
    /// How many consumers there are.
    pub(crate) fn len(&self) -> usize {
        self.by_tag.len()
    }

    /// Whether a consumer has this tag.
    pub(crate) fn contains_tag(&self, tag: &ShortString) -> bool {
        self.by_tag.contains_key(tag)
    }

    /// Adds a consumer (its tag must be new: check with
    /// [`contains_tag`](Self::contains_tag)); returns its key.
    pub(crate) fn insert(&mut self, tag: ShortString, v: V) -> Key {
        if let Some(old) = self.by_tag.get(&tag).copied() {
            // (A replaced consumer's key no longer finds it.)
            self.vacate(old);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.entry = Some((tag.clone(), v));
        self.by_tag.insert(tag, slot);
        Key {
            slot,
            generation: s.generation,
        }
    }

    fn vacate(&mut self, slot: u32) -> Option<V> {
        let s = self.slots.get_mut(slot as usize)?;
        let (_, v) = s.entry.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        Some(v)
    }

    /// Removes the consumer with this tag.
    pub(crate) fn remove(&mut self, tag: &ShortString) -> Option<V> {
        let slot = self.by_tag.remove(tag)?;
        self.vacate(slot)
    }

    /// The slot's tag and consumer, if `key` still names them.
    fn live(&self, key: Key) -> Option<&(ShortString, V)> {
        let s = self.slots.get(key.slot as usize)?;
        (s.generation == key.generation).then_some(s.entry.as_ref()?)
    }

    /// The consumer `key` names, if it still exists.
    pub(crate) fn get(&self, key: Key) -> Option<&V> {
        self.live(key).map(|(_, v)| v)
    }

    /// The consumer `key` names, if it still exists.
    pub(crate) fn get_mut(&mut self, key: Key) -> Option<&mut V> {
        let s = self.slots.get_mut(key.slot as usize)?;
        let (_, v) = s.entry.as_mut()?;
        (s.generation == key.generation).then_some(v)
    }

    /// The tag of the consumer `key` names, if it still exists.
    pub(crate) fn tag(&self, key: Key) -> Option<&ShortString> {
        self.live(key).map(|(t, _)| t)
    }

    /// Every consumer with its tag and key.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Key, &ShortString, &V)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let (t, v) = s.entry.as_ref()?;
            let key = Key {
                slot: i as u32,
                generation: s.generation,
            };
            Some((key, t, v))
        })
    }

    /// Every consumer.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, _, v)| v)
    }

    /// Every consumer's tag.
    pub(crate) fn tags(&self) -> impl Iterator<Item = &ShortString> {
        self.iter().map(|(_, t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> ShortString {
        s.try_into().unwrap()
    }

    #[test]
    fn a_key_outlives_its_consumer_without_finding_the_next() {
        let mut c: ByTag<u32, std::hash::RandomState> = ByTag::default();
        let a = c.insert(t("a"), 1);
        let b = c.insert(t("b"), 2);
        assert_eq!((c.get(a), c.get(b)), (Some(&1), Some(&2)));
        assert_eq!(c.remove(&t("a")), Some(1));
        assert_eq!(c.get(a), None);
        // "c" reuses a's slot; a's key must not find it.
        let k = c.insert(t("c"), 3);
        assert_eq!(c.get(a), None);
        assert_eq!(c.get_mut(a), None);
        assert_eq!(c.tag(a), None);
        assert_eq!((c.get(k), c.tag(k)), (Some(&3), Some(&t("c"))));
        assert_eq!(c.get(b), Some(&2));
        assert_eq!(c.len(), 2);
        assert!(c.contains_tag(&t("b")) && !c.contains_tag(&t("a")));
        let mut tags: Vec<_> = c.tags().cloned().collect();
        tags.sort();
        assert_eq!(tags, [t("b"), t("c")]);
        // Reinserting a tag replaces its consumer; the old key is dead.
        let k2 = c.insert(t("c"), 4);
        assert_eq!((c.get(k), c.get(k2)), (None, Some(&4)));
        assert_eq!(c.len(), 2);
        assert_eq!(c.values().count(), 2);
    }

    #[test]
    fn slots_are_reused() {
        let mut c: ByTag<u32, std::hash::RandomState> = ByTag::default();
        for i in 0..10_000 {
            let tag = t(&format!("ctag-{i}"));
            c.insert(tag.clone(), i);
            assert_eq!(c.remove(&tag), Some(i));
        }
        assert_eq!(c.slots.len(), 1);
        assert_eq!(c.len(), 0);
    }
}
