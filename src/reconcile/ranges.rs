//! Sets of shard indexes in the compressed form the Job controller uses for
//! `completedIndexes` / `failedIndexes` ("0-36,38"). Status keeps per-shard detail
//! in this form so that even 10000 shards stay far below the etcd object limit.

use std::fmt;

/// A set of shard indexes kept as sorted, disjoint, non-adjacent inclusive intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexSet {
    intervals: Vec<(u32, u32)>,
}

/// A compressed range string that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid index ranges {input:?}: {reason}")]
pub struct ParseRangesError {
    pub input: String,
    pub reason: &'static str,
}

impl IndexSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses "0-36,38" (whitespace tolerated, any order, overlaps merged).
    pub fn parse(input: &str) -> Result<Self, ParseRangesError> {
        let err = |reason| ParseRangesError { input: input.chars().take(200).collect(), reason };
        let mut set = IndexSet::new();
        for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let lo: u32 = lo.parse().map_err(|_| err("not a number"))?;
            let hi: u32 = hi.parse().map_err(|_| err("not a number"))?;
            if hi < lo {
                return Err(err("range end before its start"));
            }
            set.insert_range(lo, hi);
        }
        Ok(set)
    }

    /// Parses what a Job reports; `None` (field absent) is the empty set.
    pub fn parse_opt(input: Option<&str>) -> Result<Self, ParseRangesError> {
        input.map_or_else(|| Ok(Self::new()), Self::parse)
    }

    pub fn from_indexes(indexes: impl IntoIterator<Item = u32>) -> Self {
        let mut set = IndexSet::new();
        for i in indexes {
            set.insert_range(i, i);
        }
        set
    }

    /// The whole range `0..total`.
    pub fn full(total: u32) -> Self {
        let mut set = IndexSet::new();
        if total > 0 {
            set.intervals.push((0, total - 1));
        }
        set
    }

    pub fn insert_range(&mut self, lo: u32, hi: u32) {
        debug_assert!(lo <= hi);
        let (mut lo, mut hi) = (lo, hi);
        let mut merged = Vec::with_capacity(self.intervals.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.intervals {
            if b.saturating_add(1) < lo {
                merged.push((a, b));
            } else if hi.saturating_add(1) < a {
                if !placed {
                    merged.push((lo, hi));
                    placed = true;
                }
                merged.push((a, b));
            } else {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        if !placed {
            merged.push((lo, hi));
        }
        self.intervals = merged;
    }

    pub fn union(&self, other: &IndexSet) -> IndexSet {
        let mut out = self.clone();
        for &(a, b) in &other.intervals {
            out.insert_range(a, b);
        }
        out
    }

    /// Indexes in `0..total` that are not in the set.
    pub fn complement(&self, total: u32) -> IndexSet {
        let mut out = IndexSet::new();
        let mut next = 0u32;
        for &(a, b) in &self.intervals {
            if a >= total {
                break;
            }
            if a > next {
                out.intervals.push((next, a - 1));
            }
            next = b.saturating_add(1);
        }
        if next < total {
            out.intervals.push((next, total - 1));
        }
        out
    }

    /// Only the indexes below `total` (a Job can never report more, but status input is untrusted).
    pub fn clamp(&self, total: u32) -> IndexSet {
        let intervals = self
            .intervals
            .iter()
            .filter(|(a, _)| *a < total)
            .map(|&(a, b)| (a, b.min(total.saturating_sub(1))))
            .collect();
        IndexSet { intervals }
    }

    pub fn contains(&self, index: u32) -> bool {
        self.intervals.iter().any(|&(a, b)| a <= index && index <= b)
    }

    pub fn len(&self) -> u64 {
        self.intervals.iter().map(|&(a, b)| u64::from(b - a) + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }

    pub fn intervals(&self) -> &[(u32, u32)] {
        &self.intervals
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.intervals.iter().flat_map(|&(a, b)| a..=b)
    }
}

impl fmt::Display for IndexSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(a, b)) in self.intervals.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_job_controller_format() {
        let set = IndexSet::parse("0-36,38").unwrap();
        assert_eq!(set.len(), 38);
        assert!(set.contains(36) && !set.contains(37) && set.contains(38));
        assert_eq!(set.to_string(), "0-36,38");
        assert_eq!(IndexSet::parse("").unwrap(), IndexSet::new());
        assert_eq!(IndexSet::parse("7, 3").unwrap().to_string(), "3,7");
        assert_eq!(IndexSet::parse("1-2,3-4").unwrap().to_string(), "1-4");
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in ["a", "3-1", "1-", "-1", "1,,x", "99999999999"] {
            assert!(IndexSet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn complement_and_clamp() {
        let set = IndexSet::parse("3,7").unwrap();
        assert_eq!(set.complement(10).to_string(), "0-2,4-6,8-9");
        assert_eq!(IndexSet::full(10).complement(10), IndexSet::new());
        assert_eq!(IndexSet::parse("5-20").unwrap().clamp(10).to_string(), "5-9");
        assert_eq!(IndexSet::parse("12").unwrap().clamp(10), IndexSet::new());
    }

    #[test]
    fn every_second_shard_of_100000_items_stays_small() {
        // The worst case for a compressed form is nothing adjacent. 100000 items fit in at most
        // 10000 shards (10 items each); with every second one failed, both lists together:
        let total = 10_000u32;
        let failed = IndexSet::from_indexes((0..total).step_by(2));
        let succeeded = failed.complement(total);
        let bytes = failed.to_string().len() + succeeded.to_string().len();
        assert!(bytes < 256 * 1024, "{bytes} bytes");
        assert_eq!(IndexSet::parse(&failed.to_string()).unwrap(), failed);
    }

    proptest! {
        #[test]
        fn round_trips(indexes in proptest::collection::btree_set(0u32..5000, 0..400)) {
            let set = IndexSet::from_indexes(indexes.iter().copied());
            let text = set.to_string();
            let back = IndexSet::parse(&text).unwrap();
            prop_assert_eq!(&back, &set);
            prop_assert_eq!(back.len(), indexes.len() as u64);
            prop_assert!(back.iter().eq(indexes.iter().copied()));
        }

        #[test]
        fn complement_partitions(indexes in proptest::collection::btree_set(0u32..300, 0..300), total in 0u32..300) {
            let set = IndexSet::from_indexes(indexes.iter().copied()).clamp(total);
            let rest = set.complement(total);
            prop_assert_eq!(set.len() + rest.len(), u64::from(total));
            prop_assert_eq!(set.union(&rest), IndexSet::full(total));
        }

        #[test]
        fn parse_never_panics(s in ".{0,64}") {
            let _ = IndexSet::parse(&s);
        }
    }
}
