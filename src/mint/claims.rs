//! The claims of kube's bound service-account tokens: what minting writes and what verification reads.

use serde::{Deserialize, Serialize};

use super::accounts::ObjectRef;
use crate::clock::UnixTime;

/// `{name, uid}` inside `kubernetes.io`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    /// Object name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Object uid.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

impl From<&ObjectRef> for Ref {
    fn from(o: &ObjectRef) -> Self {
        Ref {
            name: o.name.clone(),
            uid: o.uid.clone(),
        }
    }
}

/// The `kubernetes.io` private claim.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KubernetesClaims {
    /// Namespace of the service account.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The service account.
    #[serde(default)]
    pub serviceaccount: Option<Ref>,
    /// Bound pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    /// Bound secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
    /// Bound node (or the node of the bound pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
    /// Time after which kube warns about the token's use (extended-expiration tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnafter: Option<u64>,
}

/// The whole claim set, members in the order go-jose writes them (sorted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Audiences, always an array.
    pub aud: Vec<String>,
    /// Expiry.
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Issuer.
    pub iss: String,
    /// Token id (UUID).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    /// kube's private claims.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
    /// Not before.
    pub nbf: u64,
    /// `system:serviceaccount:NS:NAME`.
    pub sub: String,
}

/// What a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// Nothing.
    None,
    /// A pod of the account, and the node it was scheduled to (kube names the node of a
    /// pod-bound token; its uid is empty when the node was not found).
    Pod {
        /// The pod.
        pod: ObjectRef,
        /// Its node, once scheduled.
        node: Option<ObjectRef>,
    },
    /// A secret.
    Secret(ObjectRef),
    /// A node.
    Node(ObjectRef),
}

/// kube's service-account username.
pub fn username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// Builds the claims for a new token.
#[allow(clippy::too_many_arguments)] // one per claim kube writes; a struct would only rename them
pub fn new_claims(
    issuer: &str,
    namespace: &str,
    sa: &ObjectRef,
    bound: &Bound,
    audiences: Vec<String>,
    now: UnixTime,
    expiration_seconds: u64,
    jti: String,
) -> Claims {
    let mut k = KubernetesClaims {
        namespace: namespace.to_owned(),
        serviceaccount: Some(sa.into()),
        ..KubernetesClaims::default()
    };
    match bound {
        Bound::None => {}
        Bound::Pod { pod, node } => {
            k.pod = Some(pod.into());
            k.node = node.as_ref().map(Ref::from);
        }
        Bound::Secret(s) => k.secret = Some(s.into()),
        Bound::Node(n) => k.node = Some(n.into()),
    }
    Claims {
        aud: audiences,
        exp: now.0.saturating_add(expiration_seconds),
        iat: now.0,
        iss: issuer.to_owned(),
        jti,
        kubernetes: k,
        nbf: now.0,
        sub: username(namespace, &sa.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_kube() {
        let sa = ObjectRef {
            name: "build".into(),
            uid: "u1".into(),
        };
        let c = new_claims(
            "https://issuer",
            "ns",
            &sa,
            &Bound::Pod {
                pod: ObjectRef {
                    name: "p".into(),
                    uid: "pu".into(),
                },
                node: Some(ObjectRef {
                    name: "n1".into(),
                    uid: "nu".into(),
                }),
            },
            vec!["vault".into()],
            UnixTime(1000),
            600,
            "j".into(),
        );
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"aud":["vault"],"exp":1600,"iat":1000,"iss":"https://issuer","jti":"j","kubernetes.io":{"namespace":"ns","serviceaccount":{"name":"build","uid":"u1"},"pod":{"name":"p","uid":"pu"},"node":{"name":"n1","uid":"nu"}},"nbf":1000,"sub":"system:serviceaccount:ns:build"}"#
        );
    }
}
