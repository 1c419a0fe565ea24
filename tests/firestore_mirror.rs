//! The Firestore mirror against a real gRPC peer: the npm `@firestore-emulator/server` (pinned in
//! tests/firestore-emulator/package-lock.json; `npm ci` there first), started by
//! tests/support/firestore_emulator.rs on 127.0.0.1 with a free port, and the release controller
//! binary on the local control plane of `tests/cluster/` (`tests/cluster/up`, or `tests/run-all`).
//!
//! These tests FAIL, never skip, when node, the installed emulator package or the cluster is
//! missing. Each test has its own namespace, emulator and controller (watching only that
//! namespace), so they run in parallel with each other and with the rest of the suite.

mod support;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use prediction_batch_controller::api::PredictionBatch;
use prediction_batch_controller::mirror::document::{BatchDocument, FieldValue};
use prediction_batch_controller::mirror::firestore::{DocumentStore, StoredDocument, WriteOutcome};
use serde_json::{Value, json};
use support::batch::{batch_json, condition_object, describe, phase, wait_for_phase};
use support::controller::{Controller, Launch};
use support::firestore_emulator::{Docs, Emulator, PROJECT};
use support::{TestNamespace, kubectl, kubectl_json, kubectl_stdin, stages, wait_until};

const FINALIZER: &str = "predictions.dev/firestore-mirror";

// ---------------------------------------------------------------------------------- controller

/// The controller binary watching `ns`, logging JSON, with the emulator as its Firestore; when
/// dropped it first deletes the test's batches, so their finalizers go with it.
fn controller(ns: &str, emulator_host: &str, extra: &[&str]) -> Controller {
    support::ensure_crd();
    Launch::test(ns, ns)
        .json_logs()
        .args(extra)
        .env("FIRESTORE_EMULATOR_HOST", emulator_host)
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .delete_batches_on_drop(ns)
        .start()
}

/// [`controller`] with the mirror on (`--firestore-project`).
fn with_mirror(ns: &str, emulator_host: &str, extra: &[&str]) -> Controller {
    controller(ns, emulator_host, &[&["--firestore-project", PROJECT], extra].concat())
}

// -------------------------------------------------------------------------------------- batches

/// A batch of `examples/batch.yaml`'s shape; `worker_annotations` go on the worker pod template.
fn batch_yaml(
    name: &str,
    target: u32,
    per_shard: u32,
    parallelism: u32,
    worker_annotations: &[(&str, &str)],
) -> String {
    let annotations = if worker_annotations.is_empty() {
        "{}".to_string()
    } else {
        let items: Vec<String> = worker_annotations.iter().map(|(k, v)| format!("{k:?}: {v:?}")).collect();
        format!("{{{}}}", items.join(", "))
    };
    format!(
        r#"apiVersion: predictions.dev/v1alpha1
kind: PredictionBatch
metadata:
  name: {name}
spec:
  gameDate: "2026-01-02"
  targetCount: {target}
  itemsPerShard: {per_shard}
  parallelism: {parallelism}
  worker:
    backoffLimitPerShard: 3
    template:
      metadata:
        labels:
          app: prediction-worker
        annotations: {annotations}
      spec:
        containers:
          - name: worker
            image: registry.example.com/nba/prediction-worker:1.4.2
            args: ["predict", "--game-date=$(GAME_DATE)", "--shard=$(SHARD_INDEX)"]
  completion:
    minSucceededPercent: 100
  consolidation:
    template:
      spec:
        containers:
          - name: consolidate
            image: registry.example.com/nba/prediction-consolidator:1.4.2
  export:
    template:
      spec:
        containers:
          - name: export
            image: registry.example.com/nba/phase6-exporter:1.4.2
"#
    )
}

/// Waits until the batch's MirrorSynced condition has `status`; the batch.
fn wait_mirror_synced(ns: &str, name: &str, ctl: &Controller, status: &str, what: &str, timeout: Duration) -> Value {
    wait_until(
        what,
        timeout,
        || batch_json(ns, name).filter(|b| condition_object(b, "MirrorSynced").is_some_and(|c| c["status"] == status)),
        || describe(ns, name, ctl),
    )
}

/// Whether the document shows the finished batch exactly.
fn doc_is_final(d: &StoredDocument, uid: &str, expected: i64) -> bool {
    d.bool("is_complete") == Some(true)
        && d.str("phase") == Some("Succeeded")
        && d.int("expected_players") == Some(expected)
        && d.int("completed_players") == Some(expected)
        && d.int("failed_players") == Some(0)
        && d.bool("consolidation_triggered") == Some(true)
        && d.bool("consolidation_completed") == Some(true)
        && d.bool("export_completed") == Some(true)
        && d.bool("deleted") == Some(false)
        && d.str("uid") == Some(uid)
}

fn stored_summary(d: &Option<StoredDocument>) -> String {
    match d {
        None => "no document".into(),
        Some(d) => format!("{:#?}", d.fields),
    }
}

/// The document the mirror writes for a batch `ns/name` with this UID, creation time and
/// resourceVersion, in `phase` with `items.1` of `items.0` items done.
fn document(
    ns: &str,
    name: &str,
    uid: &str,
    created: Timestamp,
    version: u64,
    phase: &str,
    (expected, completed): (u32, u32),
) -> BatchDocument {
    let batch: PredictionBatch = serde_json::from_value(json!({
        "apiVersion": "predictions.dev/v1alpha1",
        "kind": "PredictionBatch",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": uid,
            "generation": 1,
            "resourceVersion": version.to_string(),
            "creationTimestamp": created.to_string(),
        },
        "spec": {
            "gameDate": "2026-01-02",
            "targetCount": expected,
            "worker": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}},
        },
        "status": {"phase": phase, "items": {"target": expected, "succeeded": completed, "failed": 0}},
    }))
    .expect("a batch");
    BatchDocument::from_batch(&batch, "2026-01-02T12:00:00Z".parse().unwrap(), false).expect("a document")
}

// ---------------------------------------------------------------------------------------- tests

#[test]
fn the_document_tracks_a_batch_to_completion_and_deletion() {
    let emulator = Emulator::start(0);
    let docs = Docs::new(&emulator.host());
    let ns = TestNamespace::new("fs-e2e");
    let ctl = with_mirror(ns.name(), &emulator.host(), &[]);
    let name = "nba-2026-01-02";
    let id = format!("{}.{name}", ns.name());
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &batch_yaml(name, 120, 4, 10, &[]));

    // Follow the document while the batch runs.
    let mut seen: Vec<(String, i64)> = Vec::new();
    let started = Instant::now();
    let done = loop {
        let d = docs.get(&id);
        if let Some(d) = &d {
            let state = (d.str("phase").unwrap_or("").to_string(), d.int("completed_players").unwrap_or(-1));
            if seen.last() != Some(&state) {
                seen.push(state);
            }
        }
        let batch = batch_json(ns.name(), name);
        if let (Some(d), Some(b)) = (&d, &batch) {
            let uid = b["metadata"]["uid"].as_str().unwrap_or("");
            if phase(b) == "Succeeded" && doc_is_final(d, uid, 120) {
                break (d.clone(), b.clone());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the batch or its document did not finish within 120s; document states seen {seen:?}\ndocument: {}\n{}",
            stored_summary(&d),
            describe(ns.name(), name, &ctl)
        );
        std::thread::sleep(Duration::from_millis(150));
    };
    let (doc, batch) = done;
    println!("document states seen: {seen:?}");
    assert!(
        seen.iter().any(|(p, c)| p != "Succeeded" || *c < 120),
        "the document showed only the final state, never the progress: {seen:?}"
    );
    let completed: Vec<i64> = seen.iter().map(|(_, c)| *c).collect();
    assert!(completed.windows(2).all(|w| w[0] <= w[1]), "completed_players went backwards: {seen:?}");
    assert_eq!(doc.str("batch_id"), Some(id.as_str()));
    assert_eq!(doc.str("game_date"), Some("2026-01-02"));
    assert_eq!(doc.int("generation"), batch["metadata"]["generation"].as_i64());
    let rv: i64 = batch["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    let version = doc.int("status_version").expect("status_version");
    assert!(version > 0 && version <= rv, "status_version {version} vs resourceVersion {rv}");
    assert!(matches!(doc.get("updated_at"), Some(FieldValue::Time(_))));
    assert!(matches!(doc.get("completed_at"), Some(FieldValue::Time(_))));

    // The finalizer is there (mirror on) and MirrorSynced ends True under the mirror's own manager.
    let b = wait_mirror_synced(ns.name(), name, &ctl, "True", "MirrorSynced=True", Duration::from_secs(15));
    let finalizers = b["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
    assert!(finalizers.iter().any(|f| f == FINALIZER), "finalizer missing: {finalizers:?}");
    let managed = kubectl_json(&["get", "predictionbatch", name, "-n", ns.name(), "--show-managed-fields"]);
    let mirror_manages_condition = managed["metadata"]["managedFields"].as_array().unwrap().iter().any(|m| {
        m["manager"] == "prediction-batch-controller-mirror"
            && m["subresource"] == "status"
            && m["fieldsV1"].to_string().contains("MirrorSynced")
    });
    assert!(mirror_manages_condition, "MirrorSynced is not owned by the mirror's field manager:\n{managed:#}");

    // Deleting the batch marks its document deleted (phase kept) and lets the batch go.
    kubectl(&["delete", "predictionbatch", name, "-n", ns.name(), "--wait=false"]);
    let deleted = wait_until(
        "the document marked deleted",
        Duration::from_secs(20),
        || docs.get(&id).filter(|d| d.bool("deleted") == Some(true)),
        || format!("{}\n{}", stored_summary(&docs.get(&id)), describe(ns.name(), name, &ctl)),
    );
    assert_eq!(deleted.str("phase"), Some("Succeeded"), "the phase is kept");
    assert_eq!(deleted.int("completed_players"), Some(120));
    wait_until(
        "the batch to be gone",
        Duration::from_secs(20),
        || batch_json(ns.name(), name).is_none().then_some(()),
        || describe(ns.name(), name, &ctl),
    );
    assert_eq!(ctl.metric("prediction_batch_mirror_failures_total"), 0.0);
}

#[test]
fn a_firestore_outage_neither_delays_the_batch_nor_loses_the_final_state() {
    const OUTAGE: Duration = Duration::from_secs(60);
    const RUN_FOR_SECS: u64 = 20;
    let mut emulator = Emulator::start(0);
    let port = emulator.port;
    let host = emulator.host();
    let ns = TestNamespace::new("fs-outage");
    let ctl = with_mirror(ns.name(), &host, &[]);
    let name = "outage";
    let id = format!("{}.{name}", ns.name());
    // 10 shards that all run 20 s: the batch is mid-run when Firestore goes away.
    let run_for = format!("{RUN_FOR_SECS}s");
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &batch_yaml(name, 10, 1, 10, &[(stages::RUN_FOR, &run_for)]));

    {
        let docs = Docs::new(&host);
        wait_until(
            "the document to show the batch running",
            Duration::from_secs(60),
            || docs.get(&id).filter(|d| d.str("phase") == Some("Running")),
            || describe(ns.name(), name, &ctl),
        );
    }
    emulator.stop();
    let down_at = Instant::now();
    println!("emulator stopped");

    // The batch goes on and finishes during the outage, on time; MirrorSynced turns False.
    let mut saw_false: Option<Value> = None;
    let finished = wait_until(
        "the batch to succeed while Firestore is down",
        Duration::from_secs(55),
        || {
            let b = batch_json(ns.name(), name)?;
            if let Some(c) = condition_object(&b, "MirrorSynced").filter(|c| c["status"] == "False") {
                saw_false.get_or_insert_with(|| c.clone());
            }
            (phase(&b) == "Succeeded").then_some(b)
        },
        || describe(ns.name(), name, &ctl),
    );
    assert!(down_at.elapsed() < OUTAGE, "the batch did not finish within the outage");
    let start: Timestamp = finished["status"]["startTime"].as_str().unwrap().parse().unwrap();
    let end: Timestamp = finished["status"]["completionTime"].as_str().unwrap().parse().unwrap();
    let took = end.duration_since(start).as_secs_f64();
    println!("batch took {took:.1}s (workers run {RUN_FOR_SECS}s) with Firestore down");
    assert!(took < (RUN_FOR_SECS + 15) as f64, "the outage slowed the batch: {took:.1}s");
    let synced_false = match saw_false {
        Some(c) => c,
        None => {
            let b = batch_json(ns.name(), name).unwrap();
            condition_object(&b, "MirrorSynced").cloned().filter(|c| c["status"] == "False").unwrap_or_else(|| {
                panic!("MirrorSynced never went False during the outage\n{}", describe(ns.name(), name, &ctl))
            })
        }
    };
    println!("MirrorSynced during the outage: {synced_false}");
    assert!(ctl.metric("prediction_batch_mirror_failures_total") > 0.0, "failures are counted");

    // Firestore comes back (empty: the emulator keeps nothing); the final state lands within 5 s.
    if let Some(rest) = OUTAGE.checked_sub(down_at.elapsed()) {
        std::thread::sleep(rest);
    }
    let _emulator = Emulator::start(port);
    let back_at = Instant::now();
    println!("emulator back after {:.1}s", down_at.elapsed().as_secs_f64());
    let docs = Docs::new(&host);
    let uid = finished["metadata"]["uid"].as_str().unwrap().to_string();
    let doc = wait_until(
        "the final document after the outage",
        Duration::from_secs(30),
        || docs.get(&id).filter(|d| doc_is_final(d, &uid, 10)),
        || format!("{}\n{}", stored_summary(&docs.get(&id)), describe(ns.name(), name, &ctl)),
    );
    let lag = back_at.elapsed();
    println!("final document correct {:.2}s after the emulator's return", lag.as_secs_f64());
    assert!(lag < Duration::from_secs(5), "the final document took {lag:?} after Firestore's return");
    assert_eq!(doc.int("completed_players"), Some(10));

    let b = wait_mirror_synced(
        ns.name(),
        name,
        &ctl,
        "True",
        "MirrorSynced=True after the outage",
        Duration::from_secs(15),
    );
    println!("MirrorSynced back True {:.2}s after the emulator's return", back_at.elapsed().as_secs_f64());
    assert_eq!(phase(&b), "Succeeded");
}

/// A document from a newer writer (higher watermark) is never overwritten; fields that become
/// empty are cleared; equal watermarks do not rewrite.
#[test]
fn the_store_never_moves_a_document_backwards() {
    let emulator = Emulator::start(0);
    let docs = Docs::new(&emulator.host());
    let created: Timestamp = "2026-01-02T11:00:00Z".parse().unwrap();
    let doc = |version: u64, phase: &str, completed: u32| {
        let mut d = document("ns", "stale", "uid-1", created, version, phase, (120, completed));
        d.progress = Some(format!("{completed}/120"));
        d.message = Some("waiting".into());
        d
    };
    let write = |d: &BatchDocument| docs.rt.block_on(docs.store.write(d)).expect("write");

    assert_eq!(write(&doc(100, "Running", 10)), WriteOutcome::Written);
    // A newer writer got there first...
    docs.rt.block_on(docs.store.write_unchecked(&doc(1000, "Succeeded", 120))).unwrap();
    // ...so an older snapshot (a stale or restarted controller) is skipped, as is an equal one.
    assert_eq!(write(&doc(500, "Running", 60)), WriteOutcome::Stale { stored: 1000 });
    assert_eq!(write(&doc(1000, "Running", 60)), WriteOutcome::Stale { stored: 1000 });
    let stored = docs.get("ns.stale").unwrap();
    assert_eq!(stored.int("status_version"), Some(1000));
    assert_eq!(stored.str("phase"), Some("Succeeded"));
    assert_eq!(stored.int("completed_players"), Some(120));

    // A newer snapshot is written, and fields it no longer has are cleared, not left stale.
    let mut newer = doc(1001, "Succeeded", 120);
    newer.message = None;
    newer.progress = None;
    assert_eq!(write(&newer), WriteOutcome::Written);
    let stored = docs.get("ns.stale").unwrap();
    assert_eq!(stored.int("status_version"), Some(1001));
    assert!(stored.is_null("message"), "message was not cleared: {:?}", stored.get("message"));
    assert!(stored.is_null("progress"));
    assert_eq!(stored.str("uid"), Some("uid-1"));
}

/// resourceVersions order the snapshots of one batch only: a document of another batch (another
/// UID: the same name in a restored or a second cluster, or before a delete and re-create) is
/// ordered by creation time, whatever its watermark.
#[test]
fn the_store_compares_the_uid_before_the_watermark() {
    let emulator = Emulator::start(0);
    let docs = Docs::new(&emulator.host());
    let at = |s: &str| -> Timestamp { s.parse().unwrap() };
    let write = |d: &BatchDocument| docs.rt.block_on(docs.store.write(d)).expect("write");
    let plant = |d: &BatchDocument| docs.rt.block_on(docs.store.write_unchecked(d)).expect("plant");
    let ours = |version: u64, completed: u32| {
        document("ns", "b", "uid-ours", at("2026-01-02T11:00:00Z"), version, "Running", (8, completed))
    };

    // An earlier batch of the same name (before a restore) at a far higher watermark.
    plant(&document("ns", "b", "uid-before", at("2025-06-01T00:00:00Z"), 1_000_000, "Succeeded", (7, 7)));
    let outcome = write(&ours(500, 1));
    let stored = docs.get("ns.b").unwrap();
    assert_eq!(
        (outcome, stored.str("uid"), stored.int("status_version")),
        (WriteOutcome::Written, Some("uid-ours"), Some(500)),
        "the document of an earlier batch of the same name blocked ours: {:#?}",
        stored.fields
    );
    // From then on the watermark orders our snapshots.
    assert_eq!(write(&ours(400, 0)), WriteOutcome::Stale { stored: 500 });
    assert_eq!(write(&ours(600, 2)), WriteOutcome::Written);

    // A batch of the same name created after ours (a second cluster), at a lower watermark: its
    // document is left alone, and a deletion of ours does not mark it deleted either.
    let elsewhere = document("ns", "b", "uid-elsewhere", at("2026-01-02T12:00:00Z"), 3, "Running", (5, 1));
    plant(&elsewhere);
    let outcome = write(&ours(700, 3));
    let mut ours_deleted = ours(800, 3);
    ours_deleted.deleted = true;
    let deleted_outcome = write(&ours_deleted);
    let stored = docs.get("ns.b").unwrap();
    assert_ne!(outcome, WriteOutcome::Written, "overwrote a newer batch's document: {:#?}", stored.fields);
    assert_ne!(deleted_outcome, WriteOutcome::Written, "marked a newer batch's document deleted");
    assert_eq!((stored.str("uid"), stored.int("status_version")), (Some("uid-elsewhere"), Some(3)));
    assert_eq!(stored.bool("deleted"), Some(false));

    // Once that batch is deleted, its name is free: ours takes the document over.
    let mut gone = elsewhere.clone();
    gone.deleted = true;
    plant(&gone);
    assert_eq!(write(&ours(900, 4)), WriteOutcome::Written);
    let stored = docs.get("ns.b").unwrap();
    assert_eq!((stored.str("uid"), stored.int("completed_players")), (Some("uid-ours"), Some(4)));
}

/// A controller that is behind the stored document of its own batch (restarted from an old state,
/// or a stale replica) leaves it alone, and still reports itself caught up: the newer snapshot
/// is there.
#[test]
fn a_controller_behind_the_stored_document_never_overwrites_it() {
    const FUTURE_VERSION: u64 = 1_000_000_000_000_000;
    let emulator = Emulator::start(0);
    let docs = Docs::new(&emulator.host());
    let ns = TestNamespace::new("fs-stale");
    let name = "stale";
    let id = format!("{}.{name}", ns.name());
    // The batch exists before its controller starts, so the planted document can carry its UID.
    support::ensure_crd();
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &batch_yaml(name, 8, 4, 2, &[]));
    let batch = batch_json(ns.name(), name).expect("the batch");
    let uid = batch["metadata"]["uid"].as_str().unwrap();
    let created: Timestamp = batch["metadata"]["creationTimestamp"].as_str().unwrap().parse().unwrap();
    // Far ahead of any resourceVersion (and exact in the emulator's JavaScript numbers).
    let future = document(ns.name(), name, uid, created, FUTURE_VERSION, "Succeeded", (7, 7));
    docs.rt.block_on(docs.store.write_unchecked(&future)).unwrap();
    let ctl = with_mirror(ns.name(), &emulator.host(), &[]);
    wait_for_phase(ns.name(), name, "Succeeded", Duration::from_secs(90), &ctl);
    wait_mirror_synced(ns.name(), name, &ctl, "True", "MirrorSynced=True", Duration::from_secs(15));
    let stored = docs.get(&id).expect("the planted document");
    assert_eq!(stored.int("expected_players"), Some(7), "overwritten: {:#?}", stored.fields);
    assert_eq!(stored.int("status_version"), Some(FUTURE_VERSION as i64));
    assert!(ctl.log_text().contains("Firestore holds a newer document"), "the skip is logged");
}

/// A restored cluster (or a delete and re-create while Firestore was down): the document left by
/// an earlier batch of the same name, at a watermark far above this cluster's resourceVersions,
/// is taken over by the batch that exists now.
#[test]
fn a_document_left_by_an_earlier_batch_of_the_same_name_is_taken_over() {
    let emulator = Emulator::start(0);
    let docs = Docs::new(&emulator.host());
    let ns = TestNamespace::new("fs-restored");
    let name = "restored";
    let id = format!("{}.{name}", ns.name());
    let before: Timestamp = "2025-06-01T00:00:00Z".parse().unwrap();
    let left = document(ns.name(), name, "uid-before-the-restore", before, 1_000_000_000_000, "Succeeded", (7, 7));
    docs.rt.block_on(docs.store.write_unchecked(&left)).unwrap();
    let ctl = with_mirror(ns.name(), &emulator.host(), &[]);
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &batch_yaml(name, 8, 4, 2, &[]));
    let batch = wait_for_phase(ns.name(), name, "Succeeded", Duration::from_secs(90), &ctl);
    let uid = batch["metadata"]["uid"].as_str().unwrap().to_string();
    wait_until(
        "the document to show this cluster's finished batch",
        Duration::from_secs(20),
        || docs.get(&id).filter(|d| doc_is_final(d, &uid, 8)),
        || format!("{}\n{}", stored_summary(&docs.get(&id)), describe(ns.name(), name, &ctl)),
    );
    wait_mirror_synced(ns.name(), name, &ctl, "True", "MirrorSynced=True", Duration::from_secs(15));
}

/// A second cluster writing the same collection: its batch of the same name, created after ours,
/// keeps its document whatever the two watermarks, and ours says MirrorSynced=False (it writes
/// nothing) instead of claiming to be in sync.
#[test]
fn a_newer_batch_of_the_same_name_elsewhere_keeps_its_document_and_mirror_synced_says_so() {
    let emulator = Emulator::start(0);
    let docs = Docs::new(&emulator.host());
    let ns = TestNamespace::new("fs-elsewhere");
    // Created in the other cluster after ours (ours is created below).
    let later = Timestamp::now() + std::time::Duration::from_secs(24 * 3600);
    // One watermark far above this cluster's resourceVersions, one far below.
    let cases = [("above", 1_000_000_000_000u64), ("below", 2u64)];
    for (name, version) in cases {
        let theirs = document(ns.name(), name, &format!("uid-elsewhere-{name}"), later, version, "Running", (7, 3));
        docs.rt.block_on(docs.store.write_unchecked(&theirs)).unwrap();
    }
    let ctl = with_mirror(ns.name(), &emulator.host(), &[]);
    for (name, _) in cases {
        kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &batch_yaml(name, 8, 4, 2, &[]));
    }
    for (name, version) in cases {
        wait_for_phase(ns.name(), name, "Succeeded", Duration::from_secs(90), &ctl);
        let b = wait_until(
            &format!("MirrorSynced=False on {name}"),
            Duration::from_secs(20),
            || {
                batch_json(ns.name(), name)
                    .filter(|b| condition_object(b, "MirrorSynced").is_some_and(|c| c["status"] == "False"))
            },
            || {
                format!(
                    "{}\n{}",
                    stored_summary(&docs.get(&format!("{}.{name}", ns.name()))),
                    describe(ns.name(), name, &ctl)
                )
            },
        );
        let c = condition_object(&b, "MirrorSynced").unwrap();
        println!("{name}: MirrorSynced {}: {}", c["reason"], c["message"]);
        assert_eq!(c["reason"], "DocumentOfAnotherBatch", "{c}");
        let stored = docs.get(&format!("{}.{name}", ns.name())).expect("their document");
        assert_eq!(stored.str("uid"), Some(format!("uid-elsewhere-{name}").as_str()), "{:#?}", stored.fields);
        assert_eq!(stored.int("status_version"), Some(version as i64));
        assert_eq!(stored.int("completed_players"), Some(3));
    }
}

/// Deleting a batch while Firestore is down goes through after the (configured) timeout, with a
/// Warning event.
#[test]
fn deletion_is_bounded_when_firestore_stays_down() {
    let mut emulator = Emulator::start(0);
    let ns = TestNamespace::new("fs-delete");
    let ctl = with_mirror(ns.name(), &emulator.host(), &["--firestore-delete-timeout", "5"]);
    let name = "bounded";
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &batch_yaml(name, 4, 4, 1, &[]));
    wait_for_phase(ns.name(), name, "Succeeded", Duration::from_secs(90), &ctl);
    let b = batch_json(ns.name(), name).unwrap();
    assert!(b["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|f| f == FINALIZER)));
    emulator.stop();
    let deleted_at = Instant::now();
    kubectl(&["delete", "predictionbatch", name, "-n", ns.name(), "--wait=false"]);
    wait_until(
        "the batch to be gone despite Firestore being down",
        Duration::from_secs(30),
        || batch_json(ns.name(), name).is_none().then_some(()),
        || describe(ns.name(), name, &ctl),
    );
    let took = deleted_at.elapsed();
    println!("deletion went through after {:.1}s with Firestore down (timeout 5s)", took.as_secs_f64());
    assert!(took >= Duration::from_secs(3), "the finalizer did not wait for Firestore: {took:?}");
    let events = wait_until(
        "the MirrorDeleteTimedOut event",
        Duration::from_secs(15),
        || {
            let out = kubectl(&[
                "get",
                "events",
                "-n",
                ns.name(),
                "--field-selector",
                "reason=MirrorDeleteTimedOut",
                "-o",
                "json",
            ]);
            let v: Value = serde_json::from_str(&out).ok()?;
            v["items"].as_array().filter(|i| !i.is_empty()).cloned()
        },
        || kubectl(&["get", "events", "-n", ns.name()]),
    );
    assert_eq!(events[0]["type"], "Warning");
    println!("event: {}", events[0]["message"].as_str().or(events[0]["note"].as_str()).unwrap_or(""));
}

/// With the mirror off (the default), the controller never connects to Firestore, even with
/// FIRESTORE_EMULATOR_HOST set, and adds neither the finalizer nor the condition.
#[test]
fn with_the_mirror_off_nothing_reaches_firestore() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if conn.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let ns = TestNamespace::new("fs-off");
    let ctl = controller(ns.name(), &host, &[]);
    let name = "mirror-off";
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &batch_yaml(name, 8, 4, 2, &[]));
    let b = wait_for_phase(ns.name(), name, "Succeeded", Duration::from_secs(90), &ctl);
    assert!(b["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty()), "a finalizer was added: {b:#}");
    assert!(condition_object(&b, "MirrorSynced").is_none(), "MirrorSynced was written: {b:#}");
    kubectl(&["delete", "predictionbatch", name, "-n", ns.name(), "--wait=true", "--timeout=30s"]);
    assert_eq!(connections.load(Ordering::SeqCst), 0, "the controller connected to FIRESTORE_EMULATOR_HOST");
    assert_eq!(ctl.metric("prediction_batch_mirror_failures_total"), 0.0);
}

/// Grants `user` in `ns` what the controller needs to run batches (the chart's rules without
/// `firestore.enabled`): everything but the `patch` on PredictionBatches the mirror's finalizer needs.
fn grant_all_but_the_mirror_finalizer(ns: &str, user: &str) {
    let rule = |group: &str, resource: &str, verbs: &[&str]| json!({ "apiGroups": [group], "resources": [resource], "verbs": verbs });
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": { "name": "controller-without-mirror-rule", "namespace": ns },
        "rules": [
            rule("predictions.dev", "predictionbatches", &["get", "list", "watch"]),
            rule("predictions.dev", "predictionbatches/status", &["patch", "update"]),
            rule("predictions.dev", "predictionbatches/finalizers", &["update"]),
            rule("batch", "jobs", &["get", "list", "watch", "create", "patch", "delete"]),
            rule("events.k8s.io", "events", &["create", "patch"]),
            rule("", "events", &["create", "patch"]),
        ],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": { "name": "controller-without-mirror-rule", "namespace": ns },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "controller-without-mirror-rule" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }],
    });
    kubectl_stdin(
        &["apply", "-f", "-"],
        &json!({ "apiVersion": "v1", "kind": "List", "items": [role, binding] }).to_string(),
    );
}

/// The mirror is on but can do nothing right: Firestore is unreachable, and the controller lacks
/// the RBAC rule of the mirror's finalizer (as with `--firestore-project` set by hand on a chart
/// installed without `firestore.enabled`). The batch runs to Succeeded regardless, while the
/// mirror reports both failures: `MirrorSynced=False` with the Firestore error, and its refused
/// finalizer patches in `prediction_batch_mirror_reconcile_errors_total`.
#[test]
fn a_broken_mirror_never_holds_up_a_batch() {
    let ns = TestNamespace::new("fs-broken");
    let user = format!("pbc-{}", ns.name());
    grant_all_but_the_mirror_finalizer(ns.name(), &user);
    // A port nobody listens on.
    let unreachable = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let ctl = Launch::test(ns.name(), ns.name())
        .json_logs()
        .kubeconfig(&support::impersonating_kubeconfig(&user))
        .args(["--firestore-project", PROJECT])
        .env("FIRESTORE_EMULATOR_HOST", &unreachable)
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .delete_batches_on_drop(ns.name())
        .start();
    let name = "broken-mirror";
    let started = Instant::now();
    kubectl_stdin(&["apply", "-n", ns.name(), "-f", "-"], &batch_yaml(name, 8, 4, 2, &[]));
    let b = wait_for_phase(ns.name(), name, "Succeeded", Duration::from_secs(90), &ctl);
    println!("Succeeded {:.1}s after creation with the mirror broken", started.elapsed().as_secs_f64());
    assert!(
        b["metadata"]["finalizers"].as_array().is_none_or(|f| !f.iter().any(|f| f == FINALIZER)),
        "the finalizer was added despite RBAC: {b:#}"
    );

    let b = wait_until(
        "MirrorSynced=False",
        Duration::from_secs(30),
        || {
            batch_json(ns.name(), name)
                .filter(|b| condition_object(b, "MirrorSynced").is_some_and(|c| c["status"] == "False"))
        },
        || describe(ns.name(), name, &ctl),
    );
    let c = condition_object(&b, "MirrorSynced").unwrap();
    println!("MirrorSynced False {}: {}", c["reason"], c["message"]);
    assert!(c["reason"].as_str().is_some_and(|r| r.starts_with("Firestore")), "{c}");
    let refused = "prediction_batch_mirror_reconcile_errors_total{kind=\"client\"}";
    wait_until(
        "the mirror's failures in its metrics",
        Duration::from_secs(30),
        || {
            let counted = ctl.try_metric(refused).is_ok_and(|n| n >= 1.0)
                && ctl.metric("prediction_batch_mirror_failures_total") >= 1.0;
            counted.then_some(())
        },
        || ctl.try_metric(refused).err().unwrap_or_default(),
    );
    assert!(ctl.log_text().contains("forbidden"), "the refused finalizer patch is logged");
}
