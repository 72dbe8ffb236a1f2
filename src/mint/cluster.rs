//! The `kubernetes` registry source: kube-rs reflectors of ServiceAccounts, Pods, Nodes and Secrets kept in memory, so that minting and every review read the cluster without an API call.
//!
//! ServiceAccounts, Secrets and Nodes are watched as metadata only (`Api<PartialObjectMeta<_>>`:
//! a Secret's data never reaches this process); Pods in full, because the account a pod runs as and its node are
//! in `spec`, trimmed to those two fields before they are stored. Each kind has its own
//! watch loop: a failed watch marks the kind down (`/readyz`, `tokenhook_registry_watch_up`),
//! then starts again from a fresh list after a backoff, which also catches deletions missed
//! while it was down. A delete event drops the cached verdicts of tokens bound to the object.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PartialObjectMeta};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use tokio::sync::watch;

use crate::cache::VerdictCache;
use crate::metrics::Metrics;

/// Longest wait between two attempts of a failed watch.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// First wait after a failure.
const MIN_BACKOFF: Duration = Duration::from_millis(500);

/// Why the cluster could not be reached at start (a configuration problem: exit 64).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig file is unreadable or invalid.
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig given and not running in a pod.
    #[error("no mint.registry.kubeconfig and no in-cluster service account")]
    InCluster(#[source] kube::config::InClusterError),
    /// The client could not be built from the configuration.
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
}

/// The watched kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `v1/ServiceAccount`.
    ServiceAccount,
    /// `v1/Pod`.
    Pod,
    /// `v1/Secret`.
    Secret,
    /// `v1/Node`.
    Node,
}

impl Kind {
    /// Every kind, in `/readyz` order.
    pub const ALL: [Kind; 4] = [Kind::Node, Kind::Pod, Kind::Secret, Kind::ServiceAccount];

    /// The resource (plural) name: readiness checks and metric labels.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::ServiceAccount => "serviceaccounts",
            Kind::Pod => "pods",
            Kind::Secret => "secrets",
            Kind::Node => "nodes",
        }
    }
}

/// A pod as minting needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// `metadata.uid`.
    pub uid: String,
    /// `spec.serviceAccountName`.
    pub service_account: String,
    /// `spec.nodeName`, once scheduled.
    pub node_name: Option<String>,
}

/// Health of one watch.
#[derive(Default)]
struct WatchState {
    /// The current watch has completed its list and has not failed since.
    up: AtomicBool,
    /// A list has completed once: the store holds the cluster (perhaps late while `up` is
    /// false, as any informer's cache is while it reconnects).
    listed: AtomicBool,
}

/// The stores, the watch states and the uids that cached verdicts depend on.
pub struct Cluster {
    service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    pods: Store<Pod>,
    secrets: Store<PartialObjectMeta<Secret>>,
    nodes: Store<PartialObjectMeta<Node>>,
    states: [WatchState; 4],
    /// Uids of objects that some cached "yes" depends on: a delete of anything else
    /// needs no cache work (pods come and go far more often than tokens are bound to them).
    referenced: Mutex<HashSet<String>>,
    cache: VerdictCache,
    metrics: Metrics,
}

/// Builds the client `kubeconfig` describes, or the in-cluster one.
///
/// # Errors
/// An unreadable kubeconfig, or neither a kubeconfig nor a pod's service account.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, ClusterError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| ClusterError::Kubeconfig {
                path: path.to_owned(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClusterError::Kubeconfig {
                    path: path.to_owned(),
                    source,
                })?
        }
        None => kube::Config::incluster().map_err(ClusterError::InCluster)?,
    };
    Client::try_from(config).map_err(ClusterError::Client)
}

/// Drops everything but what is looked up: names, uids and (pods) the account and node.
fn trim_meta(m: &mut ObjectMeta) {
    m.annotations = None;
    m.labels = None;
    m.managed_fields = None;
    m.owner_references = None;
    m.finalizers = None;
}

fn trim_pod(p: &mut Pod) {
    trim_meta(&mut p.metadata);
    p.spec = p.spec.take().map(|s| PodSpec {
        service_account_name: s.service_account_name,
        node_name: s.node_name,
        ..PodSpec::default()
    });
    p.status = None;
}

impl Cluster {
    /// Starts the four watches on `client`; they run until `stop`. Nothing is ready until
    /// each has listed once ([`Cluster::listed`]).
    pub fn start(
        client: Client,
        cache: VerdictCache,
        metrics: Metrics,
        stop: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let (service_accounts, sa_w) = reflector::store();
        let (pods, pod_w) = reflector::store();
        let (secrets, secret_w) = reflector::store();
        let (nodes, node_w) = reflector::store();
        for kind in Kind::ALL {
            metrics
                .registry_watch_up
                .with_label_values(&[kind.resource()])
                .set(0);
            metrics
                .registry_watch_failures
                .with_label_values(&[kind.resource()]);
        }
        let cluster = Arc::new(Cluster {
            service_accounts,
            pods,
            secrets,
            nodes,
            states: Default::default(),
            referenced: Mutex::new(HashSet::new()),
            cache,
            metrics,
        });
        let cfg = watcher::Config::default();
        {
            let api: Api<PartialObjectMeta<ServiceAccount>> = Api::all(client.clone());
            let cfg = cfg.clone();
            tokio::spawn(run(
                Arc::downgrade(&cluster),
                Kind::ServiceAccount,
                move || watcher::watcher(api.clone(), cfg.clone()),
                sa_w,
                |m| trim_meta(&mut m.metadata),
                stop.clone(),
            ));
        }
        {
            let api: Api<Pod> = Api::all(client.clone());
            let cfg = cfg.clone();
            tokio::spawn(run(
                Arc::downgrade(&cluster),
                Kind::Pod,
                move || watcher::watcher(api.clone(), cfg.clone()),
                pod_w,
                trim_pod,
                stop.clone(),
            ));
        }
        {
            let api: Api<PartialObjectMeta<Secret>> = Api::all(client.clone());
            let cfg = cfg.clone();
            tokio::spawn(run(
                Arc::downgrade(&cluster),
                Kind::Secret,
                move || watcher::watcher(api.clone(), cfg.clone()),
                secret_w,
                |m| trim_meta(&mut m.metadata),
                stop.clone(),
            ));
        }
        {
            let api: Api<PartialObjectMeta<Node>> = Api::all(client);
            tokio::spawn(run(
                Arc::downgrade(&cluster),
                Kind::Node,
                move || watcher::watcher(api.clone(), cfg.clone()),
                node_w,
                |m| trim_meta(&mut m.metadata),
                stop,
            ));
        }
        cluster
    }

    fn state(&self, kind: Kind) -> &WatchState {
        let [node, pod, secret, service_account] = &self.states;
        match kind {
            Kind::Node => node,
            Kind::Pod => pod,
            Kind::Secret => secret,
            Kind::ServiceAccount => service_account,
        }
    }

    /// Every watch has listed once: lookups can answer. Before, they cannot tell.
    pub fn listed(&self) -> bool {
        self.states.iter().all(|s| s.listed.load(Ordering::Acquire))
    }

    /// One `/readyz` check per kind: `registry-<resource>`.
    pub fn readiness(&self) -> Vec<(String, bool)> {
        Kind::ALL
            .iter()
            .map(|k| {
                (
                    format!("registry-{}", k.resource()),
                    self.state(*k).up.load(Ordering::Acquire),
                )
            })
            .collect()
    }

    /// The uid of ServiceAccount `namespace/name`. Here and below, an object whose
    /// `deletionTimestamp` is before `deleted_before` (Unix seconds; 0: never) counts as gone,
    /// as kube's validator treats objects deleted more than its leeway ago.
    pub fn service_account(
        &self,
        namespace: &str,
        name: &str,
        deleted_before: u64,
    ) -> Option<String> {
        uid_of(&self.service_accounts, namespace, name, deleted_before)
    }

    /// Pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str, deleted_before: u64) -> Option<PodFacts> {
        let p = self.pods.get(&ObjectRef::new(name).within(namespace))?;
        if gone(&p.metadata, deleted_before) {
            return None;
        }
        let spec = p.spec.as_ref();
        Some(PodFacts {
            uid: p.metadata.uid.clone().unwrap_or_default(),
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            node_name: spec.and_then(|s| s.node_name.clone()),
        })
    }

    /// The uid of Secret `namespace/name`.
    pub fn secret(&self, namespace: &str, name: &str, deleted_before: u64) -> Option<String> {
        uid_of(&self.secrets, namespace, name, deleted_before)
    }

    /// The uid of Node `name`.
    pub fn node(&self, name: &str, deleted_before: u64) -> Option<String> {
        let n = self.nodes.get(&ObjectRef::new(name))?;
        if gone(&n.metadata, deleted_before) {
            return None;
        }
        n.metadata.uid.clone()
    }

    /// Notes that a cached verdict depends on these uids, so that their deletion drops it.
    pub fn reference<'a>(&self, uids: impl IntoIterator<Item = &'a str>) {
        if let Ok(mut r) = self.referenced.lock() {
            for u in uids {
                if !r.contains(u) {
                    r.insert(u.to_owned());
                }
            }
        }
    }

    async fn deleted(&self, kind: Kind, uid: Option<&str>) {
        let Some(uid) = uid else { return };
        let was_referenced = self
            .referenced
            .lock()
            .map(|mut r| r.remove(uid))
            .unwrap_or(true);
        if was_referenced {
            tracing::info!(
                kind = kind.resource(),
                uid,
                "bound object deleted; dropping its cached verdicts"
            );
            self.cache.invalidate_bound(uid).await;
        }
    }

    /// After a relist that followed a failure, deletions may have gone unseen: drop every
    /// verdict that depends on the cluster.
    async fn relisted(&self, kind: Kind) {
        tracing::info!(
            kind = kind.resource(),
            "watch listed again; dropping cached verdicts of bound tokens"
        );
        if let Ok(mut r) = self.referenced.lock() {
            r.clear();
        }
        self.cache.invalidate_all_bound().await;
    }

    fn set_up(&self, kind: Kind, up: bool) {
        let state = self.state(kind);
        state.up.store(up, Ordering::Release);
        if up {
            state.listed.store(true, Ordering::Release);
        }
        self.metrics
            .registry_watch_up
            .with_label_values(&[kind.resource()])
            .set(i64::from(up));
    }
}

fn uid_of<K>(
    store: &Store<PartialObjectMeta<K>>,
    namespace: &str,
    name: &str,
    deleted_before: u64,
) -> Option<String>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let o = store.get(&ObjectRef::new(name).within(namespace))?;
    if gone(&o.metadata, deleted_before) {
        return None;
    }
    o.metadata.uid.clone()
}

/// Marked for deletion before `deleted_before`.
fn gone(m: &ObjectMeta, deleted_before: u64) -> bool {
    m.deletion_timestamp
        .as_ref()
        .is_some_and(|t| t.0.as_second() < i64::try_from(deleted_before).unwrap_or(i64::MAX))
}

/// One kind's watch loop: applies events to the store, reports deletions, and on failure
/// marks the kind down and starts again from a fresh list after a backoff.
async fn run<K, S, F>(
    cluster: std::sync::Weak<Cluster>,
    kind: Kind,
    stream: F,
    mut writer: reflector::store::Writer<K>,
    trim: fn(&mut K),
    mut stop: watch::Receiver<bool>,
) where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    F: Fn() -> S + Send + 'static,
    S: Stream<Item = watcher::Result<Event<K>>> + Send,
{
    let mut backoff = MIN_BACKOFF;
    let mut listed_before = false;
    loop {
        let mut events = std::pin::pin!(stream());
        loop {
            let item = tokio::select! {
                i = events.next() => i,
                _ = stop.wait_for(|s| *s) => return,
            };
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            match item {
                Some(Ok(event)) => {
                    let event = event.modify(trim);
                    writer.apply_watcher_event(&event);
                    match &event {
                        Event::Delete(o) => cluster.deleted(kind, o.meta().uid.as_deref()).await,
                        Event::InitDone => {
                            if listed_before {
                                cluster.relisted(kind).await;
                            }
                            listed_before = true;
                            backoff = MIN_BACKOFF;
                            cluster.set_up(kind, true);
                            tracing::info!(kind = kind.resource(), "registry watch listed");
                        }
                        _ => {}
                    }
                }
                Some(Err(e)) => {
                    cluster.set_up(kind, false);
                    cluster
                        .metrics
                        .registry_watch_failures
                        .with_label_values(&[kind.resource()])
                        .inc();
                    tracing::warn!(
                        kind = kind.resource(),
                        error = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        "registry watch failed; listing again"
                    );
                    break;
                }
                // The watcher never ends by itself; were it to, start again.
                None => break,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_keep_only_their_account_and_node() {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u",
                         "labels": {"a": "b"}, "annotations": {"c": "d"}},
            "spec": {"serviceAccountName": "sa", "nodeName": "n1",
                     "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Pending"}
        }))
        .unwrap();
        trim_pod(&mut p);
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                "spec": {"serviceAccountName": "sa", "nodeName": "n1", "containers": []}
            })
        );
    }
}
