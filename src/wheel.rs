//! A hashed timing wheel with one-second ticks.
//!
//! Entries are slot indices. The wheel is lazy: a connection's activity never
//! touches it; when its bucket comes due the owner re-checks the connection's
//! real deadline and either times it out or puts it back. Each live
//! connection has at most one valid entry (the owner records the tick it was
//! filed under, so stale entries from a previous occupant are skipped).
//! Filing and expiry are O(1) per connection; nothing is ever searched.
//!
//! Uses: nothing of the crate.

/// The wheel. `N` buckets; deadlines further than `N - 1` ticks away are
/// filed at the horizon and re-filed when it comes due.
pub(crate) struct Wheel {
    buckets: Vec<Vec<u32>>,
    /// Number of entries across all buckets (stale ones included).
    len: usize,
    /// The next tick not yet expired.
    next: u32,
}

/// Marks a slot that is not filed in the wheel.
pub(crate) const NOT_FILED: u32 = u32::MAX;

impl Wheel {
    /// A wheel of `n` one-second buckets (rounded up to a power of two).
    pub(crate) fn new(n: usize) -> Wheel {
        let n = n.next_power_of_two().max(2);
        Wheel {
            buckets: (0..n).map(|_| Vec::new()).collect(),
            len: 0,
            next: 0,
        }
    }

    fn mask(&self) -> u32 {
        self.buckets.len() as u32 - 1
    }

    /// Files `slot` to be looked at on tick `due` (clamped to the wheel's
    /// horizon and to the first unexpired tick). Returns the tick it was
    /// actually filed under, which the caller records.
    pub(crate) fn file(&mut self, slot: u32, due: u32) -> u32 {
        let horizon = self.next.wrapping_add(self.mask());
        let due = due.clamp(self.next, horizon);
        let idx = (due & self.mask()) as usize;
        self.buckets[idx].push(slot);
        self.len += 1;
        due
    }

    /// True when nothing is filed (the worker may then sleep without a
    /// timeout).
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the entries of every tick up to and including `now`, in tick
    /// order, calling `f(slot, tick)` for each. `f` may file new entries
    /// (they land on later ticks). Reuses `scratch` to avoid allocation.
    pub(crate) fn expire(
        &mut self,
        now: u32,
        scratch: &mut Vec<u32>,
        mut f: impl FnMut(&mut Wheel, u32, u32),
    ) {
        while self.next <= now {
            let tick = self.next;
            let idx = (tick & self.mask()) as usize;
            std::mem::swap(scratch, &mut self.buckets[idx]);
            self.len -= scratch.len();
            self.next = tick.wrapping_add(1);
            for &slot in scratch.iter() {
                f(self, slot, tick);
            }
            scratch.clear();
            // Give back the emptied vector to keep its capacity.
            std::mem::swap(scratch, &mut self.buckets[idx]);
            if self.buckets[idx].capacity() > 4096 && self.buckets[idx].is_empty() {
                self.buckets[idx].shrink_to(64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_expires_in_order() {
        let mut w = Wheel::new(8);
        let mut scratch = Vec::new();
        assert_eq!(w.file(1, 3), 3);
        assert_eq!(w.file(2, 100), 7); // clamped to the horizon
        assert_eq!(w.file(3, 0), 0);
        let mut seen = Vec::new();
        w.expire(3, &mut scratch, |_, s, t| seen.push((s, t)));
        assert_eq!(seen, vec![(3, 0), (1, 3)]);
        assert!(!w.is_empty());
        seen.clear();
        w.expire(7, &mut scratch, |w, s, t| {
            seen.push((s, t));
            if s == 2 {
                w.file(2, 12);
            }
        });
        assert_eq!(seen, vec![(2, 7)]);
        seen.clear();
        w.expire(20, &mut scratch, |_, s, t| seen.push((s, t)));
        assert_eq!(seen, vec![(2, 12)]);
        assert!(w.is_empty());
    }
}
