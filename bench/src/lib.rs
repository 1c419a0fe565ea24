//! The benchmark as a library: the measuring core, shared by the `pbc-bench` binary and the CI
//! guard `bench/tests/smoke.rs`.

pub mod core;
