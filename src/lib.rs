//! prediction-batch-controller: runs batch prediction pipelines (worker shards → consolidation →
//! export) from `PredictionBatch` resources, with all progress kept in the resource's status.

/// The git revision this binary was built from (`<12 hex digits>[-dirty]`, or `unknown`); see build.rs.
pub const REVISION: &str = env!("PBC_GIT_REVISION");

pub mod api;
pub mod cache;
pub mod client;
pub mod context;
pub mod controller;
pub mod decode;
pub mod error;
#[cfg(feature = "test-faults")]
pub mod faults;
pub mod http;
pub mod initial_list;
pub mod labels;
pub mod leadership;
pub mod metrics;
pub mod mirror;
pub mod reconcile;
pub mod release;
pub mod schedule;
pub mod sweep;
pub mod watch_health;
