//! The connection's channels, indexed by channel number.
//!
//! A two-level table: pages of [`PAGE`] slots, allocated when a channel in
//! their range opens. A frame's channel is found by two indexings (no
//! hashing), and taking a channel out and putting it back (the frame path
//! does both for every frame) moves one pointer. Memory stays bounded
//! whatever the peer does: a connection whose peer uses channel 65,535
//! holds one top-level vector of at most 1,024 pointers (8 KiB) and one
//! page (512 B) per 64-channel range in use.

/// Slots per page.
const PAGE: usize = 64;

type Page<T> = Box<[Option<Box<T>>]>;

#[derive(Debug)]
pub(crate) struct ChannelTable<T> {
    pages: Vec<Option<Page<T>>>,
    len: usize,
}

impl<T> Default for ChannelTable<T> {
    fn default() -> Self {
        ChannelTable {
            pages: Vec::new(),
            len: 0,
        }
    }
}

#[inline]
fn split(channel: u16) -> (usize, usize) {
    let c = usize::from(channel);
    (c / PAGE, c % PAGE)
}

impl<T> ChannelTable<T> {
    /// Channels held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn slot(&self, channel: u16) -> Option<&Option<Box<T>>> {
        let (p, s) = split(channel);
        self.pages.get(p)?.as_ref()?.get(s)
    }

    #[inline]
    fn slot_mut(&mut self, channel: u16) -> Option<&mut Option<Box<T>>> {
        let (p, s) = split(channel);
        self.pages.get_mut(p)?.as_mut()?.get_mut(s)
    }

    pub(crate) fn get(&self, channel: &u16) -> Option<&T> {
        self.slot(*channel)?.as_deref()
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, channel: &u16) -> Option<&mut T> {
        self.slot_mut(*channel)?.as_deref_mut()
    }

    pub(crate) fn contains_key(&self, channel: &u16) -> bool {
        self.get(channel).is_some()
    }

    /// Takes the channel out of its slot.
    #[inline]
    pub(crate) fn remove(&mut self, channel: &u16) -> Option<Box<T>> {
        let ch = self.slot_mut(*channel)?.take()?;
        self.len -= 1;
        Some(ch)
    }

    /// Puts `ch` in `channel`'s slot (replacing and dropping what was there).
    #[inline]
    pub(crate) fn insert(&mut self, channel: u16, ch: Box<T>) {
        let (p, s) = split(channel);
        if self.pages.len() <= p {
            self.pages.resize_with(p + 1, || None);
        }
        let page = self.pages[p]
            .get_or_insert_with(|| std::iter::repeat_with(|| None).take(PAGE).collect());
        if page[s].replace(ch).is_none() {
            self.len += 1;
        }
    }

    /// Puts back a channel taken out by [`remove`](Self::remove): its page
    /// exists, so this is one store (no allocation, no growth check).
    #[inline]
    pub(crate) fn restore(&mut self, channel: u16, ch: Box<T>) {
        match self.slot_mut(channel) {
            Some(slot @ None) => {
                *slot = Some(ch);
                self.len += 1;
            }
            _ => self.insert(channel, ch),
        }
    }

    /// Drops every channel and every page.
    pub(crate) fn clear(&mut self) {
        self.pages = Vec::new();
        self.len = 0;
    }

    /// Every channel, in ascending channel order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u16, &mut T)> {
        self.pages
            .iter_mut()
            .enumerate()
            .filter_map(|(p, page)| page.as_mut().map(|page| (p, page)))
            .flat_map(|(p, page)| {
                page.iter_mut().enumerate().filter_map(move |(s, c)| {
                    c.as_deref_mut()
                        .map(|c| (u16::try_from(p * PAGE + s).unwrap_or(u16::MAX), c))
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::ChannelTable;

    #[test]
    fn insert_remove_iterate() {
        let mut t = ChannelTable::<u32>::default();
        assert_eq!(t.len(), 0);
        assert!(t.get(&7).is_none());
        assert!(t.remove(&65535).is_none());
        for c in [1u16, 64, 65535, 2] {
            t.insert(c, Box::new(u32::from(c) * 10));
        }
        t.insert(2, Box::new(21));
        assert_eq!(t.len(), 4);
        assert_eq!(t.get(&2), Some(&21));
        *t.get_mut(&64).unwrap() += 1;
        let all: Vec<_> = t.iter_mut().map(|(c, v)| (c, *v)).collect();
        assert_eq!(all, [(1, 10), (2, 21), (64, 641), (65535, 655350)]);
        let one = t.remove(&1).unwrap();
        assert_eq!(*one, 10);
        assert!(!t.contains_key(&1));
        assert_eq!(t.len(), 3);
        t.restore(1, one);
        assert_eq!((t.get(&1), t.len()), (Some(&10), 4));
        t.restore(200, Box::new(2000));
        assert_eq!((t.get(&200), t.len()), (Some(&2000), 5));
        t.remove(&1);
        t.remove(&200);
        assert_eq!(t.len(), 3);
        t.clear();
        assert_eq!(t.len(), 0);
        assert!(!t.contains_key(&65535));
    }
}
