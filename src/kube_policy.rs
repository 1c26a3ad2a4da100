//! The Kubernetes policy source (an edge): reflectors on upstream's three CRDs, scoped as
//! upstream's maas-api scopes them, compiled by the policy's one compiler on every change.
//!
//! Model refs are watched in every namespace, or in each of a configured list; subscriptions and
//! auth policies in the subscription namespace. Each watched scope has a reflector store that
//! kube-runtime keeps: a relist (after `410 Gone`, a dropped connection or any watch error) fills
//! a buffer that replaces the store only once the list is complete, so the policy is never
//! compiled from a half-listed cluster. Every change wakes one compiler task, which turns the
//! stores into [`ClusterObject`]s and calls [`Policy::from_cluster_objects`]; a policy that does
//! not compile is reported and the last good one stays in force.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::policy::{ClusterKind, ClusterObject, Policy, PolicySync};
use crate::tls::CaBundle;

/// Where the API server is and which namespaces to watch.
#[derive(Debug, Clone)]
pub struct KubernetesSourceSettings {
    /// The API server; `None`: in-cluster (service account), else `KUBECONFIG`/`~/.kube/config`.
    pub api_url: Option<String>,
    /// Bearer token file sent to an explicit `api_url` (re-read as kube-rs refreshes it).
    pub token_file: Option<PathBuf>,
    /// CA bundle of an https `api_url`.
    pub ca_file: Option<PathBuf>,
    /// Where MaaSSubscriptions and MaaSAuthPolicies are watched.
    pub subscription_namespace: String,
    /// Where MaaSModelRefs are watched; empty: all namespaces.
    pub model_namespaces: Vec<String>,
}

/// One watched kind in one scope (a namespace, or all), with the store its reflector fills.
struct Feed {
    kind: ClusterKind,
    scope: String,
    api: Api<DynamicObject>,
    resource: ApiResource,
}

/// The watched scopes of a cluster, ready to run.
pub struct KubernetesSource {
    feeds: Vec<Feed>,
}

impl std::fmt::Debug for KubernetesSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scopes: Vec<String> = self
            .feeds
            .iter()
            .map(|feed| format!("{} in {}", feed.kind.plural(), feed.scope))
            .collect();
        f.debug_struct("KubernetesSource")
            .field("feeds", &scopes)
            .finish()
    }
}

impl KubernetesSource {
    /// Builds the client (nothing is sent yet) and the scopes to watch.
    pub async fn connect(settings: &KubernetesSourceSettings) -> anyhow::Result<Self> {
        let config = client_config(settings).await?;
        let client = Client::try_from(config).context("cannot build the Kubernetes client")?;
        Ok(Self::with_client(client, settings))
    }

    fn with_client(client: Client, settings: &KubernetesSourceSettings) -> Self {
        let mut feeds = Vec::new();
        let mut add = |kind: ClusterKind, namespace: Option<&str>| {
            let gvk = GroupVersionKind::gvk("maas.opendatahub.io", "v1alpha1", kind.kind());
            let resource = ApiResource::from_gvk_with_plural(&gvk, kind.plural());
            let (api, scope) = match namespace {
                Some(namespace) => (
                    Api::namespaced_with(client.clone(), namespace, &resource),
                    format!("namespace {namespace}"),
                ),
                None => (
                    Api::all_with(client.clone(), &resource),
                    "all namespaces".to_owned(),
                ),
            };
            feeds.push(Feed {
                kind,
                scope,
                api,
                resource,
            });
        };
        if settings.model_namespaces.is_empty() {
            add(ClusterKind::ModelRef, None);
        }
        for namespace in &settings.model_namespaces {
            add(ClusterKind::ModelRef, Some(namespace));
        }
        add(
            ClusterKind::Subscription,
            Some(&settings.subscription_namespace),
        );
        add(
            ClusterKind::AuthPolicy,
            Some(&settings.subscription_namespace),
        );
        Self { feeds }
    }

    /// Watches until `shutdown`, keeping `policy` compiled from the cluster. `sync` becomes
    /// synced once every scope was listed in full and the policy compiled.
    pub async fn run(
        self,
        policy: Arc<ArcSwap<Policy>>,
        sync: Arc<PolicySync>,
        metrics: Arc<Metrics>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let changed = Arc::new(Notify::new());
        let mut stores = Vec::new();
        let mut watchers = tokio::task::JoinSet::new();
        for feed in self.feeds {
            let writer = reflector::store::Writer::<DynamicObject>::new(feed.resource.clone());
            stores.push((feed.kind, writer.as_reader()));
            watchers.spawn(watch_feed(feed, writer, changed.clone(), metrics.clone()));
        }
        let compiler = compile_on_change(stores, changed, policy, sync, metrics);
        tokio::select! {
            () = shutdown => {}
            () = compiler => {}
        }
        watchers.shutdown().await;
    }
}

/// Feeds one reflector from its watcher, waking the compiler on every change it applies.
async fn watch_feed(
    feed: Feed,
    writer: reflector::store::Writer<DynamicObject>,
    changed: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    let kind = feed.kind.kind();
    let events = reflector::reflector(
        writer,
        watcher(feed.api, watcher::Config::default()).default_backoff(),
    );
    let mut events = pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                metrics.observe_policy_list(kind);
                tracing::debug!(kind, scope = %feed.scope, "listing");
            }
            Ok(watcher::Event::InitApply(_)) => {}
            Ok(watcher::Event::InitDone) => {
                tracing::info!(kind, scope = %feed.scope, "listed in full; watching");
                changed.notify_one();
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => changed.notify_one(),
            Err(error) => {
                metrics.observe_policy_watch_error(kind);
                tracing::warn!(
                    kind,
                    scope = %feed.scope,
                    %error,
                    "watch failed; resuming (relisting after 410 Gone), the policy in force stays"
                );
            }
        }
    }
}

/// Waits until every store was listed once, then compiles after every change.
async fn compile_on_change(
    stores: Vec<(ClusterKind, Store<DynamicObject>)>,
    changed: Arc<Notify>,
    policy: Arc<ArcSwap<Policy>>,
    sync: Arc<PolicySync>,
    metrics: Arc<Metrics>,
) {
    for (kind, store) in &stores {
        if store.wait_until_ready().await.is_err() {
            tracing::error!(
                kind = kind.kind(),
                "the watcher stopped before its first list"
            );
            return;
        }
    }
    tracing::info!("every watched kind listed: compiling the policy");
    let mut last_rejection = String::new();
    loop {
        let objects: Vec<ClusterObject> = stores
            .iter()
            .flat_map(|(kind, store)| {
                store
                    .state()
                    .into_iter()
                    .map(move |object| cluster_object(*kind, &object))
            })
            .collect();
        let compiled =
            tokio::task::spawn_blocking(move || Policy::from_cluster_objects(&objects)).await;
        match compiled {
            Ok(Ok(compiled)) => {
                last_rejection.clear();
                let now = chrono::Utc::now();
                if compiled.fingerprint() == policy.load().fingerprint() && sync.snapshot().synced {
                    metrics.set_policy_sync(&sync.record_in_force(compiled.fingerprint(), now));
                } else {
                    let counts = compiled.counts();
                    let fingerprint = compiled.fingerprint().to_owned();
                    policy.store(Arc::new(compiled));
                    let state = sync.record_in_force(&fingerprint, now);
                    metrics.observe_policy_reload(true);
                    metrics.set_policy_counts(
                        counts.models,
                        counts.subscriptions,
                        counts.auth_policies,
                    );
                    metrics.set_policy_sync(&state);
                    tracing::info!(
                        generation = state.generation,
                        fingerprint,
                        models = counts.models,
                        subscriptions = counts.subscriptions,
                        auth_policies = counts.auth_policies,
                        "policy from the cluster in force"
                    );
                }
            }
            Ok(Err(error)) => {
                let text = error.to_string();
                if text != last_rejection {
                    metrics.observe_policy_reload(false);
                    tracing::error!(
                        active_fingerprint = policy.load().fingerprint(),
                        "policy change from the cluster rejected, keeping the last good policy: {text}"
                    );
                    last_rejection = text;
                }
            }
            Err(error) => tracing::error!(%error, "the policy compiler task failed"),
        }
        changed.notified().await;
    }
}

fn cluster_object(kind: ClusterKind, object: &DynamicObject) -> ClusterObject {
    ClusterObject {
        kind,
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
        name: object.metadata.name.clone().unwrap_or_default(),
        object: serde_json::to_value(object).unwrap_or_default(),
    }
}

/// The client configuration: an explicit API server with its token and CA files, else what
/// kube-rs infers (kubeconfig, then the pod's service account).
async fn client_config(settings: &KubernetesSourceSettings) -> anyhow::Result<kube::Config> {
    let Some(url) = settings
        .api_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    else {
        return kube::Config::infer().await.context(
            "MAAS_AUTHZ_POLICY_SOURCE=kubernetes: no MAAS_AUTHZ_KUBE_API_URL, not in a pod \
             and no usable kubeconfig",
        );
    };
    let uri = url
        .parse()
        .with_context(|| format!("MAAS_AUTHZ_KUBE_API_URL={url}: not a URL"))?;
    let mut config = kube::Config::new(uri);
    if let Some(path) = &settings.token_file {
        // Read now so that a wrong path fails at start-up, not at the first list.
        std::fs::metadata(path).with_context(|| {
            format!("MAAS_AUTHZ_KUBE_TOKEN_FILE={}: cannot read", path.display())
        })?;
        config.auth_info.token_file = Some(path.display().to_string());
    }
    if let Some(path) = &settings.ca_file {
        let bundle = CaBundle::read(path).with_context(|| "MAAS_AUTHZ_KUBE_CA_FILE".to_owned())?;
        let certificates = CertificateDer::pem_slice_iter(bundle.pem())
            .map(|certificate| certificate.map(|der| der.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("MAAS_AUTHZ_KUBE_CA_FILE={}", path.display()))?;
        config.root_cert = Some(certificates);
    }
    Ok(config)
}
