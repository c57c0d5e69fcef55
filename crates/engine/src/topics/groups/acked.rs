//! The acknowledged offsets of a group's partition above its position, as ranges: a group whose
//! position is stuck below millions of acknowledged offsets (one slow message) holds one range,
//! not millions of offsets, in memory as in the store.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent half-open ranges `start..end`, keyed by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckedRanges {
    ranges: BTreeMap<u64, u64>,
    /// How many offsets the ranges hold.
    count: u64,
}

impl AckedRanges {
    /// How many offsets are acknowledged.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn contains(&self, offset: u64) -> bool {
        self.ranges.range(..=offset).next_back().is_some_and(|(_, &end)| offset < end)
    }

    /// Adds `start..end`, merging with the ranges it touches; returns whether it added any
    /// offset.
    pub fn insert_range(&mut self, mut start: u64, mut end: u64) -> bool {
        if start >= end {
            return false;
        }
        let before = self.count;
        // A range that starts before `start` and reaches it absorbs the new one.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e >= start
        {
            if e >= end {
                return false;
            }
            self.ranges.remove(&s);
            self.count -= e - s;
            start = s;
            end = end.max(e);
        }
        // Ranges that start inside (or right at the end of) the new one are merged into it.
        let inside: Vec<(u64, u64)> = self.ranges.range(start..=end).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in inside {
            self.ranges.remove(&s);
            self.count -= e - s;
            end = end.max(e);
        }
        self.ranges.insert(start, end);
        self.count += end - start;
        self.count != before
    }

    pub fn insert(&mut self, offset: u64) -> bool {
        self.insert_range(offset, offset.saturating_add(1))
    }

    /// Removes every offset below `floor`.
    pub fn drop_below(&mut self, floor: u64) {
        while let Some((&s, &e)) = self.ranges.first_key_value()
            && s < floor
        {
            self.ranges.remove(&s);
            self.count -= e - s;
            if e > floor {
                self.ranges.insert(floor, e);
                self.count += e - floor;
                break;
            }
        }
    }

    /// If a range starts at `offset`, removes it and returns its end (the position moves over
    /// it).
    pub fn take_run_at(&mut self, offset: u64) -> Option<u64> {
        let end = self.ranges.remove(&offset)?;
        self.count -= end - offset;
        Some(end)
    }

    /// The ranges in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }
}
