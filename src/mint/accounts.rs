//! The service-account registry: which accounts exist (namespace, name, uid) and which objects their tokens may be bound to, from the configuration (`static`) or from the cluster (`kubernetes`, see `cluster.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cluster::{Cluster, Kind, PodFacts};
use crate::verify::Digest;

/// A named object a token can be bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectEntry {
    /// Object name.
    pub name: String,
    /// Object uid; derived stably from the names when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// One `[[mint.service_accounts]]` entry as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountEntry {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID; when absent, derived from namespace and name so that it is the same on every
    /// replica and across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Pods running as this account (binding target for `boundObjectRef.kind: Pod`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<ObjectEntry>,
    /// Secrets tokens may be bound to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<ObjectEntry>,
    /// Nodes tokens may be bound to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<ObjectEntry>,
}

/// A resolved object reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// A resolved service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Bindable pods.
    pub pods: Vec<ObjectRef>,
    /// Bindable secrets.
    pub secrets: Vec<ObjectRef>,
    /// Bindable nodes.
    pub nodes: Vec<ObjectRef>,
}

/// A UUID-formatted id derived from `parts`: stable, and distinct for distinct objects.
pub fn stable_uid(parts: &[&str]) -> String {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(&(p.len() as u64).to_le_bytes());
        bytes.extend_from_slice(p.as_bytes());
    }
    let mut d = Digest::of(&bytes).0;
    // RFC 9562 version 8 (custom), variant 10.
    d[6] = (d[6] & 0x0f) | 0x80;
    d[8] = (d[8] & 0x3f) | 0x80;
    let h = hex::encode(&d[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// All configured accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    accounts: HashMap<(String, String), ServiceAccount>,
}

impl Registry {
    /// Resolves entries (filling derived uids).
    ///
    /// # Errors
    /// A duplicate account, or an empty name, as text for config validation.
    pub fn new(entries: &[AccountEntry]) -> Result<Self, Vec<String>> {
        let mut errs = Vec::new();
        let mut accounts = HashMap::new();
        for e in entries {
            if e.namespace.is_empty() || e.name.is_empty() {
                errs.push("mint.service_accounts: namespace and name are required".to_string());
                continue;
            }
            let resolve = |kind: &str, list: &[ObjectEntry]| -> Vec<ObjectRef> {
                list.iter()
                    .map(|o| ObjectRef {
                        name: o.name.clone(),
                        uid: o
                            .uid
                            .clone()
                            .unwrap_or_else(|| stable_uid(&[kind, &e.namespace, &o.name])),
                    })
                    .collect()
            };
            let sa = ServiceAccount {
                namespace: e.namespace.clone(),
                name: e.name.clone(),
                uid: e
                    .uid
                    .clone()
                    .unwrap_or_else(|| stable_uid(&["serviceaccount", &e.namespace, &e.name])),
                pods: resolve("pod", &e.pods),
                secrets: resolve("secret", &e.secrets),
                nodes: resolve("node", &e.nodes),
            };
            if accounts
                .insert((e.namespace.clone(), e.name.clone()), sa)
                .is_some()
            {
                errs.push(format!(
                    "mint.service_accounts: {}/{} is listed twice",
                    e.namespace, e.name
                ));
            }
        }
        if errs.is_empty() {
            Ok(Registry { accounts })
        } else {
            Err(errs)
        }
    }

    /// A bindable object: pods and secrets by namespace, nodes cluster-wide. Returns the
    /// owning account's name with it.
    pub fn find_object(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<(&str, &ObjectRef)> {
        self.accounts.values().find_map(|sa| {
            let list = match kind {
                "Pod" if sa.namespace == namespace => &sa.pods,
                "Secret" if sa.namespace == namespace => &sa.secrets,
                "Node" => &sa.nodes,
                _ => return None,
            };
            list.iter()
                .find(|o| o.name == name)
                .map(|o| (sa.name.as_str(), o))
        })
    }

    /// The account `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&ServiceAccount> {
        self.accounts.get(&(namespace.to_owned(), name.to_owned()))
    }
}

/// The answer of a registry lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// It exists.
    Found(T),
    /// It does not.
    Missing,
    /// The registry cannot tell yet (the cluster's lists have not arrived, or a watch is down
    /// before its first list): "could not check", never "no".
    NotReady,
}

impl<T> From<Option<T>> for Lookup<T> {
    fn from(o: Option<T>) -> Self {
        o.map_or(Lookup::Missing, Lookup::Found)
    }
}

/// An object a verdict depends on: if it goes, or comes back with another uid, the verdict
/// is void.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundRef {
    /// Its kind.
    pub kind: Kind,
    /// Namespace (empty for nodes).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The uid the token carries.
    pub uid: String,
}

/// Where accounts and bindable objects come from.
#[derive(Clone)]
pub enum Accounts {
    /// `[[mint.service_accounts]]`: fixed for the life of the process.
    Static(Registry),
    /// Watches of the cluster.
    Cluster(Arc<Cluster>),
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Accounts::Static(r) => f.debug_tuple("Static").field(r).finish(),
            Accounts::Cluster(_) => f.write_str("Cluster"),
        }
    }
}

impl From<Registry> for Accounts {
    fn from(r: Registry) -> Self {
        Accounts::Static(r)
    }
}

impl Accounts {
    fn cluster(&self) -> Option<&Cluster> {
        match self {
            Accounts::Static(_) => None,
            Accounts::Cluster(c) => Some(c),
        }
    }

    /// The uid of account `namespace/name`. Here and below, with the cluster, an object
    /// marked for deletion before `deleted_before` (Unix seconds; 0: never) counts as gone.
    pub fn account(&self, namespace: &str, name: &str, deleted_before: u64) -> Lookup<String> {
        match self {
            Accounts::Static(r) => r.get(namespace, name).map(|sa| sa.uid.clone()).into(),
            Accounts::Cluster(c) if !c.listed() => Lookup::NotReady,
            Accounts::Cluster(c) => c.service_account(namespace, name, deleted_before).into(),
        }
    }

    /// Pod `namespace/name`. Statically, a pod runs as the account it is listed under and
    /// has no node.
    pub fn pod(&self, namespace: &str, name: &str, deleted_before: u64) -> Lookup<PodFacts> {
        match self {
            Accounts::Static(r) => r
                .find_object("Pod", namespace, name)
                .map(|(owner, o)| PodFacts {
                    uid: o.uid.clone(),
                    service_account: owner.to_owned(),
                    node_name: None,
                })
                .into(),
            Accounts::Cluster(c) if !c.listed() => Lookup::NotReady,
            Accounts::Cluster(c) => c.pod(namespace, name, deleted_before).into(),
        }
    }

    /// The uid of Secret `namespace/name`.
    pub fn secret(&self, namespace: &str, name: &str, deleted_before: u64) -> Lookup<String> {
        match self {
            Accounts::Static(r) => r
                .find_object("Secret", namespace, name)
                .map(|(_, o)| o.uid.clone())
                .into(),
            Accounts::Cluster(c) if !c.listed() => Lookup::NotReady,
            Accounts::Cluster(c) => c.secret(namespace, name, deleted_before).into(),
        }
    }

    /// The uid of Node `name`.
    pub fn node(&self, name: &str, deleted_before: u64) -> Lookup<String> {
        match self {
            Accounts::Static(r) => r
                .find_object("Node", "", name)
                .map(|(_, o)| o.uid.clone())
                .into(),
            Accounts::Cluster(c) if !c.listed() => Lookup::NotReady,
            Accounts::Cluster(c) => c.node(name, deleted_before).into(),
        }
    }

    /// True when verdicts on tokens bound to cluster objects must be re-checked on use and
    /// dropped when those objects go: only the cluster changes under a running process.
    pub fn is_live(&self) -> bool {
        self.cluster().is_some()
    }

    /// Notes that a cached verdict depends on `refs` (so that their deletion drops it).
    pub fn reference(&self, refs: &[BoundRef]) {
        if let Some(c) = self.cluster() {
            c.reference(refs.iter().map(|r| r.uid.as_str()));
        }
    }

    /// Every object in `refs` still exists with the same uid: a cached "yes" may be reused.
    /// While a watch is retried its store keeps its last contents, which are used.
    pub fn still_current(&self, refs: &[BoundRef], deleted_before: u64) -> bool {
        let Some(c) = self.cluster() else {
            return true;
        };
        refs.iter().all(|r| {
            let uid = match r.kind {
                Kind::ServiceAccount => c.service_account(&r.namespace, &r.name, deleted_before),
                Kind::Pod => c.pod(&r.namespace, &r.name, deleted_before).map(|p| p.uid),
                Kind::Secret => c.secret(&r.namespace, &r.name, deleted_before),
                Kind::Node => c.node(&r.name, deleted_before),
            };
            uid.as_deref() == Some(r.uid.as_str())
        })
    }

    /// `/readyz` checks: one per watched kind, none for the static lists.
    pub fn readiness(&self) -> Vec<(String, bool)> {
        self.cluster().map(Cluster::readiness).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uids_are_stable_and_distinct() {
        let a = stable_uid(&["serviceaccount", "default", "default"]);
        assert_eq!(a, stable_uid(&["serviceaccount", "default", "default"]));
        assert_ne!(a, stable_uid(&["serviceaccount", "default", "defaul"]));
        assert_ne!(stable_uid(&["a", "bc"]), stable_uid(&["ab", "c"]));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
    }

    #[test]
    fn duplicates_are_errors() {
        let e = AccountEntry {
            namespace: "ns".into(),
            name: "sa".into(),
            uid: None,
            pods: vec![],
            secrets: vec![],
            nodes: vec![],
        };
        assert!(Registry::new(&[e.clone(), e]).is_err());
    }
}
