//! prediction-batch-controller: runs batch prediction pipelines (worker shards → consolidation →
//! export) from `PredictionBatch` resources, with all progress kept in the resource's status.

pub mod api;
pub mod cache;
pub mod context;
pub mod controller;
pub mod decode;
pub mod error;
pub mod faults;
pub mod http;
pub mod labels;
pub mod leadership;
pub mod metrics;
pub mod mirror;
pub mod reconcile;
pub mod release;
pub mod watch_health;
