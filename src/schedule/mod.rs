//! PredictionSchedule (issue 17, in progress): when a schedule runs and what its runs are named.

pub mod timing;
