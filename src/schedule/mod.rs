//! PredictionSchedule: a batch each time a cron expression fires in an IANA time zone.
//! [`timing`] (when, and what a run is named) and [`plan`] (what a pass does) are pure;
//! [`reconcile`] observes and acts.

pub mod controller;
pub mod plan;
pub mod reconcile;
pub mod timing;

#[cfg(test)]
mod plan_tests;
