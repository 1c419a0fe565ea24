//! `prediction-batch-controller release-finalizers`: removes the finalizers only a running
//! controller would remove — the Firestore mirror's (`predictions.dev/firestore-mirror`) on
//! PredictionBatches and the outcome finalizer (`predictions.dev/record-outcome`) on the stage
//! Jobs — so that, once the controller is uninstalled, deleting batches, Jobs or their namespace
//! does not hang. The chart runs it as a `post-delete` hook; people can run it by hand.
//!
//! Every removal is a JSON patch that first tests the object's UID and that the finalizer is still
//! at the index it was read at, so nobody else's finalizer (or a same-named new object) is ever
//! touched; a failed test reads the object again and retries. Running it twice, or concurrently
//! with itself, is harmless. With the controller still running it is safe too, but not final: the
//! controller puts the mirror finalizer back on live batches, and a Job released before its
//! outcome was recorded can then lose that outcome if it is deleted early. Hence `--wait-for-pods`:
//! the hook waits until the controller's pods are gone before it releases anything.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use crate::api::PredictionBatch;
use crate::error::status_code;
use crate::labels::{BATCH_LABEL, FIELD_MANAGER, OUTCOME_FINALIZER};
use crate::mirror::MIRROR_FINALIZER;

/// Where to release: one namespace, or all of them.
#[derive(Debug, Clone)]
pub enum Scope {
    Namespace(String),
    All,
}

/// What one run released.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub batches: usize,
    pub jobs: usize,
}

/// Tries per object: a failed `test` (the object changed between list and patch) reads it again.
const TRIES: usize = 5;

fn api<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    match scope {
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        Scope::All => Api::all(client.clone()),
    }
}

/// Releases the mirror finalizer from every batch and the outcome finalizer from every stage Job
/// (Jobs carrying `predictions.dev/batch`) in `scope`.
pub async fn release_finalizers(client: &Client, scope: &Scope) -> anyhow::Result<Released> {
    let batches: Api<PredictionBatch> = api(client, scope);
    let jobs: Api<Job> = api(client, scope);
    // Metadata only: a batch that no longer decodes (see decode.rs) is released like any other.
    let batches = release_all(client, batches, &ListParams::default(), MIRROR_FINALIZER).await?;
    let jobs = release_all(client, jobs, &ListParams::default().labels(BATCH_LABEL), OUTCOME_FINALIZER).await?;
    Ok(Released { batches, jobs })
}

async fn release_all<K>(client: &Client, list_api: Api<K>, lp: &ListParams, finalizer: &str) -> anyhow::Result<usize>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
{
    let kind = K::kind(&());
    let list = list_api.list_metadata(lp).await.map_err(|e| anyhow::anyhow!("list {kind}: {e}"))?;
    let mut released = 0;
    for meta in list.items {
        if !meta.metadata.finalizers.iter().flatten().any(|f| f == finalizer) {
            continue;
        }
        let (Some(ns), Some(name)) = (meta.metadata.namespace.clone(), meta.metadata.name.clone()) else { continue };
        let api: Api<K> = Api::namespaced(client.clone(), &ns);
        if release_one(&api, meta, finalizer).await.map_err(|e| anyhow::anyhow!("{kind} {ns}/{name}: {e}"))? {
            info!(kind = %kind, namespace = ns, name, finalizer, "released");
            released += 1;
        }
    }
    Ok(released)
}

/// Removes `finalizer` from one object; `true` if this call removed it.
async fn release_one<K>(api: &Api<K>, mut meta: PartialObjectMeta<K>, finalizer: &str) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let name = meta.metadata.name.clone().unwrap_or_default();
    let Some(uid) = meta.metadata.uid.clone() else { return Ok(false) };
    let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    for attempt in 1..=TRIES {
        let Some(i) = meta.metadata.finalizers.iter().flatten().position(|f| f == finalizer) else { return Ok(false) };
        let ops = json!([
            { "op": "test", "path": "/metadata/uid", "value": uid },
            { "op": "test", "path": format!("/metadata/finalizers/{i}"), "value": finalizer },
            { "op": "remove", "path": format!("/metadata/finalizers/{i}") },
        ]);
        let patch = Patch::<()>::Json(serde_json::from_value(ops).expect("a valid JSON patch"));
        match api.patch_metadata(&name, &pp, &patch).await {
            Ok(_) => return Ok(true),
            Err(e) if status_code(&e) == Some(404) => return Ok(false),
            // A test failed: the finalizers moved or the object was replaced. Read it again.
            Err(e) if attempt < TRIES && matches!(status_code(&e), Some(409 | 422 | 500)) => {
                match api.get_metadata_opt(&name).await? {
                    Some(m) if m.metadata.uid.as_deref() == Some(uid.as_str()) => meta = m,
                    _ => return Ok(false),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Waits until no pod matches `selector` in `namespace` (the controller has stopped), at most
/// `timeout`. `false` when it timed out (the caller releases anyway: that is still safe).
pub async fn wait_for_pods_gone(client: &Client, namespace: &str, selector: &str, timeout: Duration) -> bool {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().labels(selector);
    let start = Instant::now();
    loop {
        match pods.list_metadata(&lp).await {
            Ok(list) if list.items.is_empty() => return true,
            Ok(list) => info!(namespace, selector, left = list.items.len(), "waiting for the controller's pods to go"),
            Err(e) => warn!(namespace, selector, error = %e, "cannot list the controller's pods"),
        }
        if start.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
