//! `prediction-batch-controller`: `run` (default) reconciles PredictionBatches; `crd` prints the CRD;
//! `api-reference` prints docs/api-reference.md; `release-finalizers` lets batches and Jobs go once the
//! controller is uninstalled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use prediction_batch_controller::controller::{self, Settings, Shared};
use prediction_batch_controller::initial_list::{self, InitialList};
use prediction_batch_controller::metrics::Metrics;
use prediction_batch_controller::mirror::{self, MirrorHandle};
use prediction_batch_controller::{api, http};
use tokio::sync::watch;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "prediction-batch-controller",
    version = env!("PBC_LONG_VERSION"),
    about = "Runs PredictionBatch pipelines: worker shards → consolidation → export"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once at startup; the Firestore flags tipped it over
enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print a CustomResourceDefinition as YAML (PredictionBatch unless --kind says otherwise).
    Crd(CrdArgs),
    /// Print the API reference (docs/api-reference.md) generated from the CRD as Markdown.
    ApiReference,
    /// Remove the controller's finalizers (the Firestore mirror's on PredictionBatches, the
    /// outcome finalizer on stage Jobs) so that, with the controller uninstalled, deleting batches,
    /// Jobs or their namespace does not hang. Idempotent; batches and Jobs are left in place.
    ReleaseFinalizers(ReleaseArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct CrdArgs {
    /// Which CRD: PredictionBatch (crds/predictions.dev_predictionbatches.yaml) or
    /// PredictionSchedule (crds/predictions.dev_predictionschedules.yaml).
    #[arg(long, value_enum, default_value = "PredictionBatch", env = "PBC_KIND")]
    kind: CrdKind,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum CrdKind {
    #[value(name = "PredictionBatch", alias = "pb", alias = "predictionbatch")]
    PredictionBatch,
    #[value(name = "PredictionSchedule", alias = "pbs", alias = "predictionschedule")]
    PredictionSchedule,
}

#[derive(clap::Args, Debug, Clone)]
#[command(group = clap::ArgGroup::new("scope").required(true).args(["namespace", "all_namespaces"]))]
struct ReleaseArgs {
    /// Release the batches and Jobs of this namespace.
    #[arg(long, short = 'n', env = "PBC_NAMESPACE")]
    namespace: Option<String>,
    /// Release the batches and Jobs of every namespace.
    #[arg(long, short = 'A', env = "PBC_ALL_NAMESPACES")]
    all_namespaces: bool,
    /// First wait until no pod matches this label selector in --pods-namespace (the controller
    /// has stopped, so it cannot put a finalizer back). The chart's uninstall hook sets it.
    #[arg(long, env = "PBC_WAIT_FOR_PODS", requires = "pods_namespace")]
    wait_for_pods: Option<String>,
    /// Namespace of the pods of --wait-for-pods.
    #[arg(long, env = "PBC_PODS_NAMESPACE")]
    pods_namespace: Option<String>,
    /// Seconds to wait for those pods; after that the finalizers are released anyway.
    #[arg(long, env = "PBC_WAIT_TIMEOUT", default_value_t = 120)]
    wait_timeout: u64,
    /// Log format.
    #[arg(long, env = "PBC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces). Also read from WATCH_NAMESPACE.
    #[arg(long, env = "PBC_NAMESPACE")]
    namespace: Option<String>,
    /// Address of /metrics, /healthz and /readyz (port 0 picks a free port and logs it).
    #[arg(long, env = "PBC_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Reconcile only while holding a coordination.k8s.io Lease (for several replicas).
    #[arg(long, env = "PBC_LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "PBC_LEASE_NAME", default_value = "prediction-batch-controller")]
    lease_name: String,
    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, the pod's namespace, else
    /// "default").
    #[arg(long, env = "PBC_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a leader's lease is valid without renewal (at least 3).
    #[arg(long, env = "PBC_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Seconds after its last successful renewal that a leader stops acting (creating, suspending
    /// or deleting Jobs) and reconciling; less than --lease-duration so it stops before a standby
    /// can take over. Default: 2/3 of --lease-duration.
    #[arg(long, env = "PBC_LEASE_RENEW_DEADLINE")]
    lease_renew_deadline: Option<f64>,
    /// Identity in the lease and in events (default: POD_NAME, the pod name, else hostname-pid).
    #[arg(long, env = "PBC_IDENTITY")]
    identity: Option<String>,
    /// Batches reconciled at once (0 = unbounded). Bounded by default: unbounded, a restart over
    /// thousands of batches starts every pass at once and holds their memory together.
    #[arg(long, env = "PBC_CONCURRENCY", default_value_t = controller::DEFAULT_CONCURRENCY)]
    concurrency: u16,
    /// Offer HTTP/2 to the apiserver (ALPN), so concurrent requests share one connection as
    /// streams instead of opening one each; HTTP/1.1 if the apiserver does not take it.
    #[arg(long, env = "PBC_HTTP2")]
    http2: bool,
    /// How the watches fill their caches at start: `auto` (streaming lists when the apiserver
    /// serves them, checked once at start, else pages), `streaming`, or `paged`.
    #[arg(long, env = "PBC_INITIAL_LIST", value_enum, default_value_t = InitialList::Auto)]
    initial_list: InitialList,
    /// Objects per page of a paged initial list (at least 1).
    #[arg(long, env = "PBC_LIST_PAGE_SIZE", default_value_t = initial_list::DEFAULT_PAGE_SIZE,
          value_parser = clap::value_parser!(u32).range(1..))]
    list_page_size: u32,
    /// Seconds a pod of a batch may wait for an image, its configuration or a node (ImagePullBackOff,
    /// ErrImagePull, CreateContainerConfigError, Unschedulable, ...) before the batch shows it in
    /// status.stuckPods and the PodsStuck condition.
    #[arg(long, env = "PBC_STUCK_POD_AFTER", default_value_t = prediction_batch_controller::reconcile::observed::DEFAULT_STUCK_AFTER_SECS as u32)]
    stuck_pod_after: u32,
    /// Seconds a dry run's acceptance of a later stage's Job template stands for other batches of
    /// the same template in the same namespace (0: every batch is dry-run on its own).
    #[arg(long, env = "PBC_DRY_RUN_VERDICT_TTL",
          default_value_t = prediction_batch_controller::reconcile::verdicts::DEFAULT_VERDICT_TTL.as_secs() as u32)]
    dry_run_verdict_ttl: u32,
    /// Test only: fail this share (0..1) of API requests with 409/429/500/timeouts. Needs a build
    /// with the `test-faults` feature (every `cargo test` build); refused otherwise.
    #[arg(long, hide = true, default_value_t = 0.0)]
    inject_api_faults: f64,
    /// Test only: while this file exists, cut this replica off from the apiserver (every request,
    /// or only URL paths containing one of the file's lines). Needs the `test-faults` feature too.
    #[arg(long, hide = true)]
    inject_api_partition: Option<std::path::PathBuf>,
    /// Test only: while this file exists, answer 503 at once to every request (or only to URL
    /// paths containing one of the file's lines). Needs the `test-faults` feature too.
    #[arg(long, hide = true)]
    inject_api_outage: Option<std::path::PathBuf>,
    /// Test only: answer streaming lists as an apiserver without the WatchList feature does (422).
    /// Needs the `test-faults` feature too.
    #[arg(long, hide = true, default_value_t = false)]
    inject_no_streaming_lists: bool,
    /// Log format.
    #[arg(long, env = "PBC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    // --- Firestore mirror ---
    /// Mirror batch state to Firestore in this Google Cloud project (off when unset: nothing
    /// contacts Firestore). Auth: Application Default Credentials; FIRESTORE_EMULATOR_HOST selects
    /// an emulator.
    #[arg(long, env = "PBC_FIRESTORE_PROJECT")]
    firestore_project: Option<String>,
    /// Collection of the mirrored documents (`<collection>/<namespace>.<name>`).
    #[arg(long, env = "PBC_FIRESTORE_COLLECTION", default_value = "prediction_batches")]
    firestore_collection: String,
    /// Firestore database (default: the `(default)` database).
    #[arg(long, env = "PBC_FIRESTORE_DATABASE")]
    firestore_database: Option<String>,
    /// Seconds a deleted batch waits for its document to be marked deleted before it goes anyway.
    #[arg(long, env = "PBC_FIRESTORE_DELETE_TIMEOUT", default_value_t = 30)]
    firestore_delete_timeout: u64,
    // --- end Firestore mirror ---
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

impl RunArgs {
    /// The names the chart has set since its first release, from the downward API, for the
    /// settings that now have a `PBC_` variable of their own (which wins).
    fn with_legacy_env(mut self) -> Self {
        let legacy = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        self.namespace = self.namespace.or_else(|| legacy("WATCH_NAMESPACE"));
        self.lease_namespace = self.lease_namespace.or_else(|| legacy("POD_NAMESPACE"));
        self.identity = self.identity.or_else(|| legacy("POD_NAME"));
        self
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd(args)) => {
            match args.kind {
                CrdKind::PredictionBatch => print!("{}", api::crd::yaml()),
                CrdKind::PredictionSchedule => print!("{}", api::schedule_crd::yaml()),
            }
            Ok(())
        }
        Some(Command::ApiReference) => {
            print!("{}", api::reference::markdown());
            Ok(())
        }
        Some(Command::Run(args)) => run(args.with_legacy_env()),
        Some(Command::ReleaseFinalizers(args)) => release_finalizers(args),
        None => run(cli.run.with_legacy_env()),
    }
}

fn release_finalizers(args: ReleaseArgs) -> anyhow::Result<()> {
    use prediction_batch_controller::release::{self, Scope};
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        init_tracing(args.log_format);
        let client = kube::Client::try_default().await?;
        if let (Some(selector), Some(ns)) = (&args.wait_for_pods, &args.pods_namespace) {
            let timeout = Duration::from_secs(args.wait_timeout);
            if !release::wait_for_pods_gone(&client, ns, selector, timeout).await {
                warn!(namespace = ns, selector, "pods still there after {timeout:?}; releasing anyway");
            }
        }
        let scope = match args.namespace {
            Some(ns) => Scope::Namespace(ns),
            None => Scope::All,
        };
        let released = release::release_finalizers(&client, &scope).await?;
        info!(batches = released.batches, jobs = released.jobs, ?scope, "released the controller's finalizers");
        Ok(())
    })
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// How long a shutdown may take from the first SIGTERM before the process exits anyway: the
/// drain ([`controller::DRAIN_TIMEOUT`]) plus the Lease release, within the chart's 30 s grace.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(25);

fn run(args: RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(run_async(args));
    // Whatever is still running (the HTTP server, mirror writes, a lease release that timed out)
    // is dropped; a blocking task may hold the exit this long at most.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run_async(args: RunArgs) -> anyhow::Result<()> {
    // kube and firestore must agree on one rustls crypto provider; install it before any TLS.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    init_tracing(args.log_format);
    let lease_renew_deadline = renew_deadline(&args)?;
    let faults = fault_layer(&args)?;

    // Signals first: a SIGTERM at any later moment of the start is a clean shutdown.
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let mut signals = Signals::install()?;
    tokio::spawn(async move {
        let first = signals.recv().await;
        info!(signal = first, "shutdown signal received");
        let _ = shutdown_tx.send(true);
        tokio::select! {
            again = signals.recv() => warn!(signal = again, "second shutdown signal: exiting at once"),
            _ = tokio::time::sleep(SHUTDOWN_LIMIT) => {
                error!("shutdown did not finish within {SHUTDOWN_LIMIT:?}; exiting anyway")
            }
        }
        std::process::exit(1);
    });

    let client = tokio::select! {
        client = build_client(faults, args.http2) => client?,
        _ = shutdown_rx.wait_for(|s| *s) => {
            info!("stopped before connecting");
            return Ok(());
        }
    };
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
        format!("{host}-{}", std::process::id())
    });
    let mut settings = Settings {
        namespace: args.namespace.clone(),
        leader_elect: args.leader_elect,
        lease_name: args.lease_name.clone(),
        lease_namespace: args.lease_namespace.clone().unwrap_or_else(|| "default".into()),
        identity,
        lease_duration_secs: args.lease_duration,
        lease_renew_deadline,
        concurrency: args.concurrency,
        initial_list: Default::default(),
        stuck_pod_after_secs: i64::from(args.stuck_pod_after),
        dry_run_verdict_ttl: std::time::Duration::from_secs(args.dry_run_verdict_ttl.into()),
    };
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared::default());

    let mut http_shutdown = shutdown_rx.clone();
    http::serve(args.http_addr, metrics.clone(), shared.clone(), async move {
        let _ = http_shutdown.wait_for(|s| *s).await;
    })
    .await?;

    info!(
        version = env!("CARGO_PKG_VERSION"),
        revision = prediction_batch_controller::REVISION,
        namespace = settings.namespace.as_deref().unwrap_or("<all>"),
        leader_elect = settings.leader_elect,
        "starting"
    );
    let listed = match &settings.namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    settings.initial_list = tokio::select! {
        strategy = initial_list::resolve(listed, args.initial_list, args.list_page_size) => strategy,
        _ = shutdown_rx.wait_for(|s| *s) => {
            info!("stopped before starting");
            return Ok(());
        }
    };
    // --- Firestore mirror ---
    let mirror = match &args.firestore_project {
        Some(project) => {
            let options = mirror::firestore::FirestoreOptions {
                project: project.clone(),
                database: args.firestore_database.clone(),
                collection: args.firestore_collection.clone(),
                emulator_host: None,
            };
            info!(
                project,
                collection = options.collection,
                database = options.database.as_deref().unwrap_or("(default)"),
                "mirroring batch state to Firestore"
            );
            let config = mirror::worker::MirrorConfig {
                delete_timeout: std::time::Duration::from_secs(args.firestore_delete_timeout),
                ..Default::default()
            };
            mirror::worker::firestore_mirror(options, client.clone(), metrics.clone(), config)
        }
        None => MirrorHandle::disabled(),
    };
    // --- end Firestore mirror ---
    if let Err(e) = controller::run(client, settings, metrics, mirror, shared, shutdown_rx).await {
        error!(error = %e, "controller failed");
        return Err(e);
    }
    info!("stopped");
    Ok(())
}

/// `--lease-renew-deadline`, checked against `--lease-duration`.
fn renew_deadline(args: &RunArgs) -> anyhow::Result<Duration> {
    let duration = args.lease_duration;
    anyhow::ensure!(duration >= 3, "--lease-duration must be at least 3 seconds, not {duration}");
    let deadline = match args.lease_renew_deadline {
        Some(secs) => Duration::try_from_secs_f64(secs)
            .map_err(|_| anyhow::anyhow!("--lease-renew-deadline must be a number of seconds, not {secs}"))?,
        None => Duration::from_millis(duration * 2000 / 3),
    };
    anyhow::ensure!(
        deadline >= Duration::from_secs(2) && deadline < Duration::from_secs(duration),
        "--lease-renew-deadline ({deadline:?}) must be at least 2 s and less than --lease-duration ({duration} s)"
    );
    Ok(deadline)
}

async fn build_client(faults: Option<FaultLayer>, http2: bool) -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer().await?;
    if http2 {
        let builder = prediction_batch_controller::client::http2_builder(&config)?;
        return Ok(match faults {
            None => builder.build(),
            Some(layer) => builder.with_layer(&layer).build(),
        });
    }
    Ok(match faults {
        None => kube::Client::try_from(config)?,
        Some(layer) => kube::client::ClientBuilder::try_from(config)?.with_layer(&layer).build(),
    })
}

/// The test-only fault layer (src/faults.rs) the hidden `--inject-api-*` flags ask for; `None`
/// when they are unset.
#[cfg(feature = "test-faults")]
type FaultLayer = prediction_batch_controller::faults::FaultLayer;

#[cfg(feature = "test-faults")]
fn fault_layer(args: &RunArgs) -> anyhow::Result<Option<FaultLayer>> {
    let (fault_rate, partition) = (args.inject_api_faults, args.inject_api_partition.clone());
    let (outage, no_streaming) = (args.inject_api_outage.clone(), args.inject_no_streaming_lists);
    if fault_rate <= 0.0 && partition.is_none() && outage.is_none() && !no_streaming {
        return Ok(None);
    }
    warn!(fault_rate, partition = ?partition, outage = ?outage, no_streaming, "injecting API faults (test only)");
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    let mut layer = FaultLayer::new(fault_rate, seed);
    if let Some(file) = partition {
        layer = layer.with_partition(file);
    }
    if let Some(file) = outage {
        layer = layer.with_outage(file);
    }
    if no_streaming {
        layer = layer.refusing_streaming_lists();
    }
    Ok(Some(layer))
}

/// Without the `test-faults` feature (every shipped build) there is no fault layer, and the
/// flags are refused rather than ignored: a test that asks for faults must not pass without them.
#[cfg(not(feature = "test-faults"))]
type FaultLayer = tower::layer::util::Identity;

#[cfg(not(feature = "test-faults"))]
fn fault_layer(args: &RunArgs) -> anyhow::Result<Option<FaultLayer>> {
    anyhow::ensure!(
        args.inject_api_faults <= 0.0
            && args.inject_api_partition.is_none()
            && args.inject_api_outage.is_none()
            && !args.inject_no_streaming_lists,
        "--inject-api-faults, --inject-api-partition, --inject-api-outage and --inject-no-streaming-lists are test-only: this binary was built without \
         the `test-faults` cargo feature (`cargo test` and tests/run-all build the tests' binary with it)"
    );
    Ok(None)
}

/// SIGTERM and SIGINT (Ctrl-C), listened to from the moment they are installed.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
