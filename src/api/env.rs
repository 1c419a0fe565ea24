//! The environment contract: the variables the controller puts into every container of a
//! stage's pods (before the container's own env, which wins on a clash). Users' images read
//! these names, so they are public API; the README's env table lists the same.

/// The batch's name (every stage).
pub const PREDICTION_BATCH: &str = "PREDICTION_BATCH";
/// `spec.gameDate` (every stage).
pub const GAME_DATE: &str = "GAME_DATE";
/// The item count: `spec.targetCount` or the loader's count (every stage after the loader).
pub const TARGET_COUNT: &str = "TARGET_COUNT";
/// Number of worker shards (every stage after the loader).
pub const SHARD_COUNT: &str = "SHARD_COUNT";
/// `spec.itemsPerShard` (every stage after the loader).
pub const ITEMS_PER_SHARD: &str = "ITEMS_PER_SHARD";
/// The loader's `itemsRef`, when it reported one (every stage after the loader).
pub const ITEMS_REF: &str = "ITEMS_REF";
/// Workers only: the shard this pod predicts (0-based).
pub const SHARD_INDEX: &str = "SHARD_INDEX";
/// Consolidation and export: the succeeded shards as ranges, e.g. `0-2,4-6,8-29`.
pub const SUCCEEDED_SHARDS: &str = "SUCCEEDED_SHARDS";
/// Consolidation and export: every shard that did not succeed, as ranges.
pub const FAILED_SHARDS: &str = "FAILED_SHARDS";
/// Consolidation and export: items of the succeeded shards.
pub const SUCCEEDED_ITEMS: &str = "SUCCEEDED_ITEMS";
