//! The connection: kubeconfig, context and namespace as kubectl picks them, and reading one batch.

use anyhow::{Context as _, anyhow};
use kube::api::{Api, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::ApiResource;
use kube::{Client, Config};
use prediction_batch_controller::api::PredictionBatch;
use serde_json::Value;

use crate::Global;

/// A client and the namespace the command works in.
pub struct Ctx {
    pub client: Client,
    /// `--namespace`, else the context's namespace, else "default".
    pub namespace: String,
}

impl Ctx {
    /// The kubeconfig of `--kubeconfig` (else `$KUBECONFIG`, else `~/.kube/config`), its context
    /// `--context` (else its current-context); without either flag and without a kubeconfig, the
    /// in-cluster service account.
    pub async fn connect(global: &Global) -> anyhow::Result<Ctx> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let options = KubeConfigOptions { context: global.context.clone(), ..Default::default() };
        let config = match (&global.kubeconfig, &global.context) {
            (Some(path), _) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .with_context(|| format!("kubeconfig {}", path.display()))?
            }
            (None, Some(context)) => {
                Config::from_kubeconfig(&options).await.with_context(|| format!("kubeconfig context {context:?}"))?
            }
            (None, None) => Config::infer().await.context("no kubeconfig found (use --kubeconfig or $KUBECONFIG)")?,
        };
        let namespace = global.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).context("cannot build a client from the kubeconfig")?;
        Ok(Ctx { client, namespace })
    }

    /// PredictionBatches of the command's namespace, untyped: a stored object the controller's
    /// types cannot read (reason InvalidObject) still lists and shows.
    pub fn batches(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &batch_resource())
    }

    pub fn all_batches(&self) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &batch_resource())
    }

    /// The batch `name` of the namespace: an error naming it when it does not exist.
    pub async fn get_batch(&self, name: &str) -> anyhow::Result<Batch> {
        match self.batches().get_opt(name).await {
            Ok(Some(obj)) => Batch::from_dynamic(obj),
            Ok(None) => Err(anyhow!("predictionbatch {name:?} not found in namespace {:?}", self.namespace)),
            Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read predictionbatch {name:?}"))),
        }
    }
}

pub fn batch_resource() -> ApiResource {
    ApiResource::erase::<PredictionBatch>(&())
}

/// One batch as stored (`raw`, for fields the types may not have yet, such as `status.stuckPods`)
/// and as the controller's types read it (`typed`; `None` with the reason when they cannot).
#[derive(Clone, Debug)]
pub struct Batch {
    pub raw: Value,
    pub typed: Result<PredictionBatch, String>,
}

impl Batch {
    pub fn from_dynamic(obj: DynamicObject) -> anyhow::Result<Batch> {
        let raw = serde_json::to_value(&obj).context("cannot serialize the batch")?;
        Ok(Batch::from_value(raw))
    }

    pub fn from_value(raw: Value) -> Batch {
        let typed = serde_json::from_value::<PredictionBatch>(raw.clone()).map_err(|e| e.to_string());
        Batch { raw, typed }
    }
}

/// An error as one line for stderr: the chain of contexts, ending with the API's own message.
pub fn describe_error(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        if let Some(kube::Error::Api(status)) = cause.downcast_ref::<kube::Error>() {
            parts.push(format!("{} (HTTP {})", status.message.trim_end_matches([':', ' ']), status.code));
            break;
        }
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
