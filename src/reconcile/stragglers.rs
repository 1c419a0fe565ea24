//! Which running shards deserve a backup run (the MapReduce backup-task idea), as pure rules:
//! near the end of the worker stage, a shard that has run far longer than the median of its
//! finished peers gets one backup run; the first of the two to succeed counts.
//!
//! The times come from the worker Job's pods ([`shard_times`]), listed only while the stage is
//! near its end ([`near_end`]), so a large batch is not listed on every pass.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

/// Annotation the Job controller puts on Indexed Job pods.
pub const COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

/// How the rule is tuned (documented in the README, "Backup runs for stragglers").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackupPolicy {
    /// A shard is a straggler once it has run more than this many times the median finished run.
    pub factor: f64,
    /// Finished peers needed before the median means anything.
    pub min_finished: usize,
    /// Backups are considered once at most this share of the shards (at least one) is unfinished.
    pub near_end: f64,
    /// At most this share of the shards (at least one) ever gets a backup.
    pub max_share: f64,
}

impl Default for BackupPolicy {
    fn default() -> Self {
        BackupPolicy { factor: 2.0, min_finished: 5, near_end: 0.1, max_share: 0.1 }
    }
}

impl BackupPolicy {
    /// Few enough shards are unfinished (and enough finished) that stragglers are worth looking for.
    pub fn near_end(&self, total: u32, finished: usize) -> bool {
        let unfinished = (total as usize).saturating_sub(finished) as f64;
        total > 0 && finished >= self.min_finished && unfinished <= (f64::from(total) * self.near_end).max(1.0)
    }

    /// How long a shard may run before it is a straggler: `factor` x the median finished run
    /// (`None` with too few finished runs).
    pub fn limit(&self, finished: &[Duration]) -> Option<Duration> {
        if finished.len() < self.min_finished {
            return None;
        }
        let mut sorted = finished.to_vec();
        sorted.sort();
        Some(sorted[sorted.len() / 2].mul_f64(self.factor.max(1.0)))
    }

    /// The most backups a batch of `total` shards ever gets.
    pub fn budget(&self, total: u32) -> usize {
        ((f64::from(total) * self.max_share).floor() as usize).max(1)
    }
}

/// The shards to back up now, longest-running first. `finished`: how long each finished shard
/// ran; `running`: each running shard and how long it has run so far; `total`: shard count;
/// `unfinished`: shards without an outcome (running or waiting for a slot); `backed_up`: how many
/// shards already had a backup (never a second one for a shard: leave those out of `running`).
pub fn stragglers(
    policy: &BackupPolicy,
    finished: &[Duration],
    running: &[(u32, Duration)],
    total: u32,
    unfinished: u32,
    backed_up: usize,
) -> Vec<u32> {
    let done = total.saturating_sub(unfinished) as usize;
    if !policy.near_end(total, done) {
        return Vec::new();
    }
    let Some(limit) = policy.limit(finished) else { return Vec::new() };
    let budget = policy.budget(total).saturating_sub(backed_up);
    let mut slow: Vec<&(u32, Duration)> = running.iter().filter(|(_, ran)| *ran > limit).collect();
    slow.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    slow.dedup_by_key(|(shard, _)| *shard);
    slow.into_iter().take(budget).map(|(shard, _)| *shard).collect()
}

/// Run times of a worker Job's shards, from its pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardTimes {
    /// How long each succeeded pod ran (start to its last container's end).
    pub finished: Vec<Duration>,
    /// Each shard with a pod running now, and when that pod started.
    pub running: BTreeMap<u32, Timestamp>,
}

/// The shard times of an Indexed Job's pods (pods without a readable index are left out; a
/// shard retried after a failure counts from its current pod's start).
pub fn shard_times(pods: &[Pod]) -> ShardTimes {
    let mut times = ShardTimes::default();
    for pod in pods {
        let Some(index) = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(COMPLETION_INDEX_ANNOTATION))
            .and_then(|i| i.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(status) = pod.status.as_ref() else { continue };
        let start = status.start_time.as_ref().or(pod.metadata.creation_timestamp.as_ref()).map(|t| t.0);
        match status.phase.as_deref() {
            Some("Succeeded") => {
                let end = status
                    .container_statuses
                    .iter()
                    .flatten()
                    .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0))
                    .max();
                if let (Some(start), Some(end)) = (start, end) {
                    times.finished.push(Duration::try_from(end.duration_since(start)).unwrap_or_default());
                }
            }
            Some("Failed") => {}
            _ if pod.metadata.deletion_timestamp.is_some() => {}
            _ => {
                if let Some(start) = start {
                    let current = times.running.entry(index).or_insert(start);
                    *current = (*current).max(start);
                }
            }
        }
    }
    times
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use proptest::prelude::*;

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn a_shard_far_slower_than_its_finished_peers_near_the_end_gets_a_backup() {
        let p = BackupPolicy::default();
        let finished = secs(&[10; 27]);
        let running = [(3, Duration::from_secs(60)), (7, Duration::from_secs(12)), (9, Duration::from_secs(25))];
        assert_eq!(stragglers(&p, &finished, &running, 30, 3, 0), [3, 9]);
        assert_eq!(stragglers(&p, &finished, &running[1..], 30, 3, 1), [9], "the budget counts earlier backups");
    }

    #[test]
    fn no_backups_early_without_peers_or_beyond_the_budget() {
        let p = BackupPolicy::default();
        let long = Duration::from_secs(600);
        // Too many shards unfinished (waiting ones too): not near the end.
        assert!(stragglers(&p, &secs(&[10; 20]), &[(1, long)], 30, 10, 0).is_empty());
        // Too few finished peers for a median.
        assert!(stragglers(&p, &secs(&[10; 4]), &[(1, long)], 5, 1, 0).is_empty());
        // The budget (10% of 30 = 3) is spent.
        assert!(stragglers(&p, &secs(&[10; 27]), &[(1, long)], 30, 3, 3).is_empty());
        // Not slower than twice the median.
        assert!(stragglers(&p, &secs(&[10; 27]), &[(1, Duration::from_secs(20))], 30, 3, 0).is_empty());
    }

    #[test]
    fn the_limit_is_twice_the_median() {
        let p = BackupPolicy::default();
        assert_eq!(p.limit(&secs(&[1, 2, 3, 100, 4])), Some(Duration::from_secs(6)));
        assert_eq!(p.limit(&secs(&[1, 2, 3, 4])), None);
        assert!(p.near_end(30, 27) && !p.near_end(30, 26) && p.near_end(6, 5) && !p.near_end(0, 0));
        assert_eq!((p.budget(30), p.budget(5), p.budget(10_000)), (3, 1, 1000));
    }

    fn pod(index: &str, phase: &str, start: i64, end: Option<i64>, deleting: bool) -> Pod {
        let t = |s: i64| Time(Timestamp::from_second(1_780_000_000 + s).unwrap());
        Pod {
            metadata: ObjectMeta {
                annotations: Some([(COMPLETION_INDEX_ANNOTATION.to_string(), index.to_string())].into()),
                deletion_timestamp: deleting.then(|| t(0)),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                start_time: Some(t(start)),
                container_statuses: end.map(|e| {
                    vec![ContainerStatus {
                        state: Some(ContainerState {
                            terminated: Some(ContainerStateTerminated {
                                finished_at: Some(t(e)),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn times_come_from_succeeded_and_running_pods() {
        let pods = [
            pod("0", "Succeeded", 0, Some(10), false),
            pod("1", "Succeeded", 5, Some(12), false),
            pod("2", "Failed", 0, Some(3), false),
            pod("2", "Running", 4, None, false),
            pod("3", "Running", 1, None, true),
            pod("x", "Running", 1, None, false),
            pod("4", "Pending", 6, None, false),
        ];
        let times = shard_times(&pods);
        assert_eq!(times.finished, secs(&[10, 7]));
        let at = |s: i64| Timestamp::from_second(1_780_000_000 + s).unwrap();
        assert_eq!(times.running, BTreeMap::from([(2, at(4)), (4, at(6))]), "not the deleted pod, nor a bad index");
    }

    proptest! {
        #[test]
        fn backups_are_bounded_distinct_and_only_for_running_slow_shards(
            finished in proptest::collection::vec(1u64..1000, 0..50),
            running in proptest::collection::btree_map(0u32..100, 0u64..5000, 0..20),
            unfinished in 0u32..100,
            backed in 0usize..12,
        ) {
            let p = BackupPolicy::default();
            let running: Vec<(u32, Duration)> = running.into_iter().map(|(s, d)| (s, Duration::from_secs(d))).collect();
            let finished = secs(&finished);
            let out = stragglers(&p, &finished, &running, 100, unfinished, backed);
            prop_assert!(out.len() + backed.min(10) <= 10);
            let limit = p.limit(&finished);
            let mut seen = std::collections::BTreeSet::new();
            for s in &out {
                prop_assert!(seen.insert(*s));
                let ran = running.iter().find(|(r, _)| r == s).map(|(_, d)| *d);
                prop_assert!(ran.is_some_and(|d| Some(d) > limit));
            }
        }
    }
}
