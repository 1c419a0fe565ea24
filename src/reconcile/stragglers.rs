//! Which running shards deserve a backup run (the MapReduce backup-task idea), as a pure rule:
//! once the stage is near its end, a shard that has run far longer than the median of its
//! finished peers gets one backup; the first of the two to succeed counts.
//!
//! Not wired into the planner yet (issue 16, part 4): the worker pods' start times must first be
//! observed (a trimmed pod watch), and a backup runs as a shard Job of its own like a rerun shard.

use std::time::Duration;

/// How the rule is tuned.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackupPolicy {
    /// A shard is a straggler once it has run this many times the median finished duration.
    pub factor: f64,
    /// Finished peers needed before the median means anything.
    pub min_finished: usize,
    /// Backups are considered once at most this share of the shards is still unfinished.
    pub near_end: f64,
    /// At most this share of the shards (at least one) runs a backup at once.
    pub max_share: f64,
}

impl Default for BackupPolicy {
    fn default() -> Self {
        BackupPolicy { factor: 2.0, min_finished: 5, near_end: 0.1, max_share: 0.1 }
    }
}

/// The shards to back up now, longest-running first. `finished`: how long each finished shard
/// ran; `running`: each running shard and how long it has run so far; `total`: shard count;
/// `backed_up`: shards that already have a backup (never a second one).
pub fn stragglers(
    policy: &BackupPolicy,
    finished: &[Duration],
    running: &[(u32, Duration)],
    total: u32,
    backed_up: &[u32],
) -> Vec<u32> {
    if finished.len() < policy.min_finished || total == 0 {
        return Vec::new();
    }
    let unfinished = running.len() as f64;
    if unfinished > (f64::from(total) * policy.near_end).max(1.0) {
        return Vec::new();
    }
    let mut sorted = finished.to_vec();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    let limit = median.mul_f64(policy.factor.max(1.0));
    let budget = ((f64::from(total) * policy.max_share).floor() as usize).max(1).saturating_sub(backed_up.len());
    let mut slow: Vec<&(u32, Duration)> =
        running.iter().filter(|(shard, ran)| *ran > limit && !backed_up.contains(shard)).collect();
    slow.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    slow.into_iter().take(budget).map(|(shard, _)| *shard).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn a_shard_far_slower_than_its_finished_peers_near_the_end_gets_a_backup() {
        let finished = secs(&[10; 27]);
        let running = [(3, Duration::from_secs(60)), (7, Duration::from_secs(12)), (9, Duration::from_secs(25))];
        assert_eq!(stragglers(&BackupPolicy::default(), &finished, &running, 30, &[]), [3, 9]);
        assert_eq!(stragglers(&BackupPolicy::default(), &finished, &running, 30, &[3]), [9], "one backup each");
    }

    #[test]
    fn no_backups_early_without_peers_or_beyond_the_budget() {
        let p = BackupPolicy::default();
        let long = Duration::from_secs(600);
        // Too many shards still running: not near the end.
        let running: Vec<(u32, Duration)> = (0..10).map(|i| (i, long)).collect();
        assert!(stragglers(&p, &secs(&[10; 20]), &running, 30, &[]).is_empty());
        // Too few finished peers for a median.
        assert!(stragglers(&p, &secs(&[10; 4]), &[(1, long)], 30, &[]).is_empty());
        // The budget (10% of 30 = 3) is spent.
        assert!(stragglers(&p, &secs(&[10; 27]), &[(1, long)], 30, &[4, 5, 6]).is_empty());
    }

    proptest! {
        #[test]
        fn backups_are_bounded_distinct_and_only_for_running_slow_shards(
            finished in proptest::collection::vec(1u64..1000, 0..50),
            running in proptest::collection::btree_map(0u32..100, 0u64..5000, 0..20),
            backed in proptest::collection::vec(0u32..100, 0..5),
        ) {
            let p = BackupPolicy::default();
            let running: Vec<(u32, Duration)> = running.into_iter().map(|(s, d)| (s, Duration::from_secs(d))).collect();
            let out = stragglers(&p, &secs(&finished), &running, 100, &backed);
            prop_assert!(out.len() <= 10);
            let mut seen = std::collections::BTreeSet::new();
            for s in &out {
                prop_assert!(seen.insert(*s));
                prop_assert!(!backed.contains(s));
                prop_assert!(running.iter().any(|(r, _)| r == s));
            }
        }
    }
}
