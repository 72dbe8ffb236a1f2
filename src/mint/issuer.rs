//! The token issuer: current keys, registry and revocations; signs new tokens and verifies presented ones.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::accounts::{Accounts, BoundRef, Lookup};
use super::claims::{Claims, username};
use super::cluster::Kind;
use super::keys::KeySet;
use super::revocations::Revocations;
use crate::clock::UnixTime;
use crate::k8s::token_review::UserInfo;
use crate::verify::{Identity, Outcome, RejectReason, Rejection, VerifyError};

/// Clock skew tolerated on `exp`, `nbf` and `iat`, as kube's service-account validator.
pub const LEEWAY_SECONDS: u64 = 60;

/// Extra keys kube's service-account authenticator sets.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// See [`EXTRA_POD_NAME`].
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// See [`EXTRA_POD_NAME`].
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// See [`EXTRA_POD_NAME`].
pub const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";
/// See [`EXTRA_POD_NAME`].
pub const EXTRA_CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The claims did not serialise (a bug).
    #[error("encoding claims")]
    Encode(#[from] serde_json::Error),
    /// The signer failed.
    #[error("signing")]
    Sign(#[from] josekit::JoseError),
}

/// Settings fixed at start (keys and revocations reload).
pub struct IssuerConfig {
    /// `iss` of minted tokens and the discovery `issuer`.
    pub issuer: String,
    /// `jwks_uri` published in discovery.
    pub jwks_uri: String,
    /// Accounts and the objects tokens are bound to.
    pub registry: Accounts,
    /// Signing key file.
    pub signing_key_file: PathBuf,
    /// Verify-only key files.
    pub verify_key_files: Vec<PathBuf>,
}

/// Shared by the mint endpoint, the `service_account` verifier and discovery.
pub struct Issuer {
    /// Fixed settings.
    pub config: IssuerConfig,
    keys: ArcSwap<KeySet>,
    revocations: ArcSwap<Revocations>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
    #[serde(default)]
    crit: Option<Value>,
}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Outcome {
    Outcome::Rejected(Rejection {
        reason,
        detail: detail.into(),
    })
}

impl Issuer {
    /// An issuer with `keys` and `revocations` loaded.
    pub fn new(config: IssuerConfig, keys: KeySet, revocations: Revocations) -> Arc<Self> {
        Arc::new(Issuer {
            config,
            keys: ArcSwap::from_pointee(keys),
            revocations: ArcSwap::from_pointee(revocations),
        })
    }

    /// Installs reloaded keys.
    pub fn set_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(keys));
    }

    /// Installs a reloaded revocation list.
    pub fn set_revocations(&self, r: Revocations) {
        self.revocations.store(Arc::new(r));
    }

    /// The current keys.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Signs `claims` with the active key. The header is exactly kube's `{"alg":…,"kid":…}`
    /// (josekit's own serialiser would order the members differently), so the compact form is
    /// assembled here and only the signature comes from josekit.
    ///
    /// # Errors
    /// Only on a signer failure.
    pub fn sign(&self, claims: &Claims) -> Result<String, SignError> {
        let keys = self.keys.load();
        let key = &keys.signing;
        let header =
            serde_json::to_vec(&json!({"alg": key.public.alg.as_str(), "kid": key.public.kid}))?;
        let payload = serde_json::to_vec(claims)?;
        let mut out = URL_SAFE_NO_PAD.encode(header);
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let signature = key.signer.sign(out.as_bytes())?;
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(out)
    }

    /// The OIDC discovery document.
    pub fn discovery(&self) -> Value {
        let keys = self.keys.load();
        let mut algs: Vec<&str> = keys.public_keys().map(|k| k.alg.as_str()).collect();
        algs.sort_unstable();
        algs.dedup();
        json!({
            "issuer": self.config.issuer,
            "jwks_uri": self.config.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
        })
    }

    /// The public JWKS.
    pub fn jwks(&self) -> Value {
        self.keys.load().jwks()
    }

    /// Verifies `token` as one of ours.
    ///
    /// Anything that is not a compact JWS carrying our `iss` is `NotMine` (the payload is
    /// peeked at unverified only to route it); from then on every failure is a rejection.
    ///
    /// # Errors
    /// The cluster registry has not listed its objects yet: the token cannot be checked.
    pub fn verify(&self, token: &str, now: UnixTime) -> Result<Outcome, VerifyError> {
        let Some(parts) = crate::verify::split_jwt(token) else {
            return Ok(Outcome::NotMine);
        };
        if parts.iss.as_deref() != Some(self.config.issuer.as_str()) {
            return Ok(Outcome::NotMine);
        }
        let Some(header) = parts.header::<Header>() else {
            return Ok(reject(
                RejectReason::Malformed,
                "header is not base64url JSON",
            ));
        };
        let payload = parts.payload;
        if header.crit.is_some() {
            return Ok(reject(
                RejectReason::Malformed,
                "crit header is not supported",
            ));
        }
        let keys = self.keys.load();
        let Some(key) = keys.find(&header.kid) else {
            return Ok(reject(
                RejectReason::UnknownKey,
                format!("unknown kid {:?}", header.kid),
            ));
        };
        if header.alg != key.alg.as_str() {
            return Ok(reject(
                RejectReason::BadSignature,
                format!(
                    "alg {:?} does not match key {} ({})",
                    header.alg,
                    key.kid,
                    key.alg.as_str()
                ),
            ));
        }
        if josekit::jws::deserialize_compact(token, &*key.verifier).is_err() {
            return Ok(reject(
                RejectReason::BadSignature,
                "signature does not verify",
            ));
        }
        let claims: Claims = match serde_json::from_slice(&payload) {
            Ok(c) => c,
            Err(e) => return Ok(reject(RejectReason::Malformed, format!("claims: {e}"))),
        };
        self.check_claims(&claims, now)
    }

    /// Time, audiences, then kube's validator checks against the registry: the account and
    /// every bound object exist with the uid the token carries. A pod-bound token's node is
    /// only carried into the user's extra, as kube does; a node-bound one's node is checked.
    fn check_claims(&self, c: &Claims, now: UnixTime) -> Result<Outcome, VerifyError> {
        if now.0 >= c.exp.saturating_add(LEEWAY_SECONDS) {
            return Ok(reject(
                RejectReason::Expired,
                format!("expired at {}", c.exp),
            ));
        }
        if c.nbf > now.0.saturating_add(LEEWAY_SECONDS)
            || c.iat > now.0.saturating_add(LEEWAY_SECONDS)
        {
            return Ok(reject(
                RejectReason::NotYetValid,
                format!("not valid before {}", c.nbf),
            ));
        }
        if c.aud.is_empty() {
            return Ok(reject(RejectReason::Malformed, "no audiences"));
        }
        let k = &c.kubernetes;
        let Some(sa_ref) = &k.serviceaccount else {
            return Ok(reject(
                RejectReason::Malformed,
                "no kubernetes.io/serviceaccount claim",
            ));
        };
        if c.sub != username(&k.namespace, &sa_ref.name) {
            return Ok(reject(
                RejectReason::Malformed,
                "sub does not match kubernetes.io claims",
            ));
        }
        let registry = &self.config.registry;
        let not_ready = || VerifyError::Unavailable {
            verifier: "service_account".into(),
            reason: "the cluster registry has not listed its objects yet".into(),
        };
        let mut bound = vec![BoundRef {
            kind: Kind::ServiceAccount,
            namespace: k.namespace.clone(),
            name: sa_ref.name.clone(),
            uid: sa_ref.uid.clone(),
        }];
        if let Some(p) = &k.pod {
            bound.push(BoundRef {
                kind: Kind::Pod,
                namespace: k.namespace.clone(),
                name: p.name.clone(),
                uid: p.uid.clone(),
            });
        }
        if let Some(s) = &k.secret {
            bound.push(BoundRef {
                kind: Kind::Secret,
                namespace: k.namespace.clone(),
                name: s.name.clone(),
                uid: s.uid.clone(),
            });
        }
        if let (Some(n), None) = (&k.node, &k.pod) {
            bound.push(BoundRef {
                kind: Kind::Node,
                namespace: String::new(),
                name: n.name.clone(),
                uid: n.uid.clone(),
            });
        }
        let mut sa_uid = String::new();
        // As kube: objects marked for deletion longer ago than the leeway are gone.
        let deleted_before = now.0.saturating_sub(LEEWAY_SECONDS);
        for r in &bound {
            let found = match r.kind {
                Kind::ServiceAccount => registry.account(&r.namespace, &r.name, deleted_before),
                Kind::Pod => match registry.pod(&r.namespace, &r.name, deleted_before) {
                    Lookup::Found(p) => Lookup::Found(p.uid),
                    Lookup::Missing => Lookup::Missing,
                    Lookup::NotReady => Lookup::NotReady,
                },
                Kind::Secret => registry.secret(&r.namespace, &r.name, deleted_before),
                Kind::Node => registry.node(&r.name, deleted_before),
            };
            let what = match r.kind {
                Kind::ServiceAccount => "service account",
                Kind::Pod => "pod",
                Kind::Secret => "secret",
                Kind::Node => "node",
            };
            match found {
                Lookup::NotReady => return Err(not_ready()),
                Lookup::Missing => {
                    return Ok(reject(
                        RejectReason::Invalidated,
                        format!("{what} {}/{} no longer exists", r.namespace, r.name),
                    ));
                }
                Lookup::Found(uid) if uid != r.uid => {
                    return Ok(reject(
                        RejectReason::Invalidated,
                        format!("{what} UID ({uid}) does not match claim ({})", r.uid),
                    ));
                }
                Lookup::Found(uid) => {
                    if r.kind == Kind::ServiceAccount {
                        sa_uid = uid;
                    }
                }
            }
        }
        let bound_uids: Vec<&str> = [&k.pod, &k.secret, &k.node]
            .iter()
            .filter_map(|r| r.as_ref().map(|r| r.uid.as_str()))
            .chain(std::iter::once(sa_uid.as_str()))
            .collect();
        if let Some(why) =
            self.revocations
                .load()
                .check(&c.jti, &k.namespace, &sa_ref.name, &bound_uids)
        {
            return Ok(reject(RejectReason::Revoked, why));
        }

        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Some(p) = &k.pod {
            extra.insert(EXTRA_POD_NAME.into(), vec![p.name.clone()]);
            extra.insert(EXTRA_POD_UID.into(), vec![p.uid.clone()]);
        }
        if let Some(n) = &k.node {
            extra.insert(EXTRA_NODE_NAME.into(), vec![n.name.clone()]);
            // kube names the node of a pod-bound token even when the node was not found at
            // minting time; its uid then stays out.
            if !n.uid.is_empty() {
                extra.insert(EXTRA_NODE_UID.into(), vec![n.uid.clone()]);
            }
        }
        if !c.jti.is_empty() {
            extra.insert(EXTRA_CREDENTIAL_ID.into(), vec![format!("JTI={}", c.jti)]);
        }
        if registry.is_live() {
            registry.reference(&bound);
        } else {
            // The static lists never change under a running process: nothing to re-check.
            bound.clear();
        }
        Ok(Outcome::Authenticated(Identity {
            user: UserInfo {
                username: c.sub.clone(),
                uid: sa_uid,
                groups: vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{}", k.namespace),
                ],
                extra,
            },
            audiences: Some(c.aud.clone()),
            expires_at: Some(UnixTime(c.exp)),
            bound,
        }))
    }
}
