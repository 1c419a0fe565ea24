//! What one cached suspended batch costs the controller (issue 19, the 100,000 point): the heap
//! bytes asked of the allocator for the batch as the batch watch keeps it (decoded, then
//! `cache::trim_batch`), by part, and for its entry in the reflector store and in the per-batch
//! map of status writes; then the process's RSS per batch for the same, which adds what the
//! allocator keeps beside each allocation.
//!
//!     cargo run --release -p pbc-bench --bin cache-cost [-- N]
//!
//! The batch is `bench/data/suspended-batch.json`: one of the scale preset's batches as the
//! apiserver returned it (managed fields dropped), with the status the controller wrote.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use kube::runtime::reflector::{ObjectRef, store::Writer};
use kube::runtime::watcher::Event;
use prediction_batch_controller::api::PredictionBatch;
use prediction_batch_controller::cache::trim_batch;

struct Counting;
static BYTES: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            BYTES.fetch_add(layout.size(), Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        BYTES.fetch_sub(layout.size(), Relaxed);
        ALLOCS.fetch_sub(1, Relaxed);
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

const BATCH: &str = include_str!("../../data/suspended-batch.json");

fn heap() -> (f64, f64) {
    (BYTES.load(Relaxed) as f64, ALLOCS.load(Relaxed) as f64)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Batch `i`: the fixture with its own name, uid and resource version, trimmed as cached.
fn batch(template: &serde_json::Value, i: usize) -> PredictionBatch {
    let mut v = template.clone();
    v["metadata"]["name"] = format!("bench-{i:05}").into();
    v["metadata"]["uid"] = format!("3879b5db-da2e-4697-bda9-{i:012}").into();
    v["metadata"]["resourceVersion"] = (84427 + i).to_string().into();
    let mut b: PredictionBatch = serde_json::from_value(v).expect("the fixture decodes");
    trim_batch(&mut b);
    b
}

/// The items `make` returns for 0..n, with the heap bytes and allocations each holds.
fn per_item<T>(n: usize, mut make: impl FnMut(usize) -> T) -> (Vec<T>, f64, f64) {
    // The Vec itself is allocated before counting: only what each item holds beyond its own
    // inline bytes is counted.
    let mut kept = Vec::with_capacity(n);
    let (b0, a0) = heap();
    for i in 0..n {
        kept.push(make(i));
    }
    let (b1, a1) = heap();
    (kept, (b1 - b0) / n as f64, (a1 - a0) / n as f64)
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let template: serde_json::Value = serde_json::from_str(BATCH).expect("the fixture is JSON");
    let one = batch(&template, 0);

    println!("one cached suspended batch (the scale preset's), {n} of them:\n");
    println!("| part | inline bytes (size_of) | heap bytes beyond it | allocations |");
    println!("|---|---|---|---|");
    let row = |part: &str, inline: usize, heap: f64, allocs: f64| {
        println!("| {part} | {inline} | {heap:.0} | {allocs:.1} |");
    };
    let (m, hb, ha) = per_item(n, |i| batch(&template, i).metadata);
    row("metadata", std::mem::size_of_val(&one.metadata), hb, ha);
    drop(m);
    let (s, hb, ha) = per_item(n, |_| one.spec.clone());
    row("spec (templates dropped)", std::mem::size_of_val(&one.spec), hb, ha);
    drop(s);
    let (s, hb, ha) = per_item(n, |_| one.status.clone());
    let conditions = one.status.as_ref().map_or(0, |s| s.conditions.len());
    row(format!("status ({conditions} conditions)").as_str(), std::mem::size_of_val(&one.status), hb, ha);
    drop(s);

    // The batch watch's store: `Arc<PredictionBatch>` under an `ObjectRef` key, filled by the
    // same watcher events the controller applies.
    let rss0 = rss_kib();
    let (b0, a0) = heap();
    let mut writer: Writer<PredictionBatch> = Writer::default();
    let store = writer.as_reader();
    writer.apply_watcher_event(&Event::Init);
    for i in 0..n {
        writer.apply_watcher_event(&Event::InitApply(batch(&template, i)));
    }
    writer.apply_watcher_event(&Event::InitDone);
    let (b1, a1) = heap();
    let rss1 = rss_kib();
    assert_eq!(store.len(), n, "every batch is in the store");
    let object = std::mem::size_of::<PredictionBatch>();
    row(
        "whole batch in the reflector store (Arc, ObjectRef key, map slot)",
        object,
        (b1 - b0) / n as f64 - object as f64,
        (a1 - a0) / n as f64,
    );
    let key = ObjectRef::from_obj(&one);
    println!(
        "\nObjectRef key: {} inline bytes; the store's bytes per batch: {:.0} (asked of the allocator), \
         RSS per batch: {:.0} bytes ({:.1} MiB for {n})",
        std::mem::size_of_val(&key),
        (b1 - b0) / n as f64,
        rss1.saturating_sub(rss0) as f64 * 1024.0 / n as f64,
        rss1.saturating_sub(rss0) as f64 / 1024.0,
    );

    // The per-batch entry of `Context::written` once the cache has caught up (object dropped).
    let batches = store.state();
    let (b0, a0) = heap();
    let mut written = std::collections::HashMap::new();
    for b in &batches {
        written.insert(ObjectRef::from_obj(&**b), (std::time::Instant::now(), None::<Arc<PredictionBatch>>));
    }
    let (b1, a1) = heap();
    println!(
        "a status write remembered per batch (Context::written, object dropped): {:.0} heap bytes, {:.1} allocations",
        (b1 - b0) / n as f64,
        (a1 - a0) / n as f64
    );
}
