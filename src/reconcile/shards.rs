//! Shard arithmetic: how `targetCount` work items are split into `ceil(target / itemsPerShard)`
//! shards, and how many items a set of shards covers (the last shard may be short).

use super::ranges::IndexSet;

pub use crate::api::MAX_SHARDS;

/// The shape of a batch's work: `target` items in shards of `per_shard`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLayout {
    pub target: u32,
    pub per_shard: u32,
}

impl ShardLayout {
    /// `None` when the layout is unusable (zero items or zero items per shard), which admission
    /// rejects; the planner treats it as an invalid spec instead of dividing by zero.
    pub fn new(target: u32, per_shard: u32) -> Option<Self> {
        (target > 0 && per_shard > 0).then_some(Self { target, per_shard })
    }

    pub fn shard_count(&self) -> u32 {
        self.target.div_ceil(self.per_shard)
    }

    /// Items of shard `index`: `[index * per_shard, min((index + 1) * per_shard, target))`.
    pub fn items_of(&self, index: u32) -> std::ops::Range<u64> {
        let start = u64::from(index) * u64::from(self.per_shard);
        let end = (start + u64::from(self.per_shard)).min(u64::from(self.target));
        start.min(end)..end
    }

    /// How many items the shards in `set` cover (indexes beyond the last shard count nothing).
    pub fn items_in(&self, set: &IndexSet) -> u64 {
        set.intervals()
            .iter()
            .map(|&(a, b)| {
                let start = self.items_of(a).start;
                let end = self.items_of(b).end;
                end.saturating_sub(start)
            })
            .sum()
    }

    /// Whether `succeeded` items meet `percent` of the target (integer arithmetic, no rounding).
    pub fn meets_quorum(&self, succeeded_items: u64, percent: u32) -> bool {
        succeeded_items * 100 >= u64::from(percent) * u64::from(self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_with_a_short_last_shard() {
        let l = ShardLayout::new(10, 4).unwrap();
        assert_eq!(l.shard_count(), 3);
        assert_eq!(l.items_of(0), 0..4);
        assert_eq!(l.items_of(2), 8..10);
        assert_eq!(l.items_of(3), 10..10);
        assert_eq!(l.items_in(&IndexSet::parse("1-2").unwrap()), 6);
        assert_eq!(l.items_in(&IndexSet::parse("2-9").unwrap()), 2);
    }

    #[test]
    fn example_batch_numbers() {
        let l = ShardLayout::new(120, 4).unwrap();
        assert_eq!(l.shard_count(), 30);
        assert_eq!(l.items_in(&IndexSet::parse("3,7").unwrap()), 8);
        assert!(l.meets_quorum(112, 90));
        assert!(!l.meets_quorum(107, 90));
        assert!(l.meets_quorum(108, 90));
        assert!(!l.meets_quorum(119, 100));
    }

    #[test]
    fn rejects_zero() {
        assert!(ShardLayout::new(0, 1).is_none());
        assert!(ShardLayout::new(1, 0).is_none());
    }

    proptest! {
        #[test]
        fn shards_cover_every_item_exactly_once(target in 1u32..100_000, per in 1u32..5000) {
            let l = ShardLayout::new(target, per).unwrap();
            let n = l.shard_count();
            prop_assert_eq!(l.items_in(&IndexSet::full(n)), u64::from(target));
            prop_assert!(l.items_of(n - 1).end == u64::from(target));
            prop_assert!(!l.items_of(n - 1).is_empty());
        }

        #[test]
        fn items_add_up(target in 1u32..5000, per in 1u32..50, split in 0u32..200) {
            let l = ShardLayout::new(target, per).unwrap();
            let n = l.shard_count();
            let a = IndexSet::from_indexes((0..n).filter(|i| i % 3 == split % 3));
            let b = a.complement(n);
            prop_assert_eq!(l.items_in(&a) + l.items_in(&b), u64::from(target));
        }
    }
}
