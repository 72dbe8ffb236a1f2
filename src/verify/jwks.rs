//! JSON Web Key Sets: parsing into verifiers under an algorithm allow-list, and fetching them (discovery, URL, file) with rate-limited refresh.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::metrics::Metrics;
use crate::outbound::HttpsClient;

/// Signature algorithms accepted from issuers. Never `none`, never an HMAC (a public key
/// must not double as a shared secret).
pub const ALLOWED_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
];

/// One public key with a verifier for each algorithm it may be used with, straight through
/// aws-lc-rs (the provider rustls already carries): a JWT verification is one signature
/// check, so a library in between is pure overhead (josekit measured 1.2× the raw RS256
/// verify and 2.3× for EdDSA).
pub struct VerifyKey {
    /// `kid`, if the JWK has one.
    pub kid: Option<String>,
    /// Parsed once at load: aws-lc would otherwise rebuild the key (an RSA Montgomery
    /// context, an EC point check) on every verification.
    verifiers: Vec<(&'static str, signature::ParsedPublicKey)>,
}

/// A JWK member as bytes (base64url, padding tolerated).
///
/// # Errors
/// Missing member or not base64url.
pub(crate) fn b64_field(v: &Value, field: &str) -> Result<Vec<u8>, String> {
    let s = v
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("JWK has no {field:?}"))?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("JWK {field:?} is not base64url"))
}

impl VerifyKey {
    /// Builds the verifiers a JWK allows: its `alg` alone when given, else every allowed
    /// algorithm of its key type. Keys for encryption (`use: enc`) are refused.
    ///
    /// # Errors
    /// Unsupported or unusable key, as text.
    pub fn from_jwk(v: &Value) -> Result<Self, String> {
        if let Some(u) = v.get("use").and_then(Value::as_str)
            && u != "sig"
        {
            return Err(format!("key use {u:?} is not \"sig\""));
        }
        let kty = v.get("kty").and_then(Value::as_str).unwrap_or("");
        let crv = v.get("crv").and_then(Value::as_str);
        let candidates: Vec<&'static str> = match (kty, crv) {
            ("RSA", _) => vec!["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"],
            ("EC", Some("P-256")) => vec!["ES256"],
            ("EC", Some("P-384")) => vec!["ES384"],
            ("EC", Some("P-521")) => vec!["ES512"],
            ("OKP", Some("Ed25519")) => vec!["EdDSA"],
            (kty, crv) => return Err(format!("unsupported key type {kty:?} {crv:?}")),
        };
        let wanted: Vec<&'static str> = match v.get("alg").and_then(Value::as_str) {
            Some(a) => match candidates.iter().find(|c| **c == a) {
                Some(c) => vec![*c],
                None => return Err(format!("JWK alg {a:?} does not fit its key type")),
            },
            None => candidates,
        };
        let mut verifiers = Vec::new();
        for alg in wanted {
            let raw = match kty {
                "RSA" => {
                    let n = b64_field(v, "n")?;
                    let e = b64_field(v, "e")?;
                    let significant = n.iter().skip_while(|b| **b == 0).count();
                    if significant < 256 {
                        return Err("RSA keys must have at least 2048 bits".into());
                    }
                    let params: &'static signature::RsaParameters = match alg {
                        "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                        "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                        "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                        "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                        "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                        _ => &signature::RSA_PSS_2048_8192_SHA512,
                    };
                    signature::RsaPublicKeyComponents {
                        n: n.as_slice(),
                        e: e.as_slice(),
                    }
                    .to_parsed_public_key(params)
                    .map_err(|e| format!("RSA key rejected: {e}"))?
                }
                "EC" => {
                    let (size, algorithm): (usize, &'static signature::EcdsaVerificationAlgorithm) =
                        match alg {
                            "ES256" => (32, &signature::ECDSA_P256_SHA256_FIXED),
                            "ES384" => (48, &signature::ECDSA_P384_SHA384_FIXED),
                            _ => (66, &signature::ECDSA_P521_SHA512_FIXED),
                        };
                    let (x, y) = (b64_field(v, "x")?, b64_field(v, "y")?);
                    if x.len() != size || y.len() != size {
                        return Err(format!("EC coordinates must be {size} bytes"));
                    }
                    let mut point = Vec::with_capacity(1 + 2 * size);
                    point.push(4);
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    signature::ParsedPublicKey::new(algorithm, point)
                        .map_err(|e| format!("EC key rejected: {e}"))?
                }
                _ => {
                    let x = b64_field(v, "x")?;
                    if x.len() != 32 {
                        return Err("Ed25519 keys are 32 bytes".into());
                    }
                    signature::ParsedPublicKey::new(&signature::ED25519, x)
                        .map_err(|e| format!("Ed25519 key rejected: {e}"))?
                }
            };
            verifiers.push((alg, raw));
        }
        Ok(VerifyKey {
            kid: v.get("kid").and_then(Value::as_str).map(str::to_owned),
            verifiers,
        })
    }

    /// Whether this key may be used with `alg`.
    pub fn supports(&self, alg: &str) -> bool {
        self.verifiers.iter().any(|(a, _)| *a == alg)
    }

    /// Checks `signature` over `signing_input` with `alg`; false when this key may not be
    /// used with `alg` or the signature does not verify.
    pub fn verify(&self, alg: &str, signing_input: &[u8], signature: &[u8]) -> bool {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, k)| k.verify_sig(signing_input, signature).is_ok())
    }
}

/// A parsed key set.
#[derive(Default)]
pub struct KeySet {
    /// The usable keys.
    pub keys: Vec<VerifyKey>,
    /// Keys skipped, with why (for the log).
    pub skipped: Vec<String>,
}

impl KeySet {
    /// Parses `{"keys": [...]}`, skipping keys that cannot be used for signatures.
    ///
    /// # Errors
    /// Not a JWKS, or no usable key in it.
    pub fn parse(doc: &Value) -> Result<Self, String> {
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("not a JWKS: no \"keys\" array")?;
        let mut set = KeySet::default();
        for (i, k) in keys.iter().enumerate() {
            match VerifyKey::from_jwk(k) {
                Ok(v) => set.keys.push(v),
                Err(e) => set.skipped.push(format!("key {i}: {e}")),
            }
        }
        if set.keys.is_empty() {
            return Err(format!(
                "no usable signing key ({})",
                set.skipped.join("; ")
            ));
        }
        Ok(set)
    }

    /// Keys that may verify a token with this header: the one with `kid`, or (no `kid`)
    /// every key that supports `alg`.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: &'a str,
    ) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| kid.is_none() || k.kid.as_deref() == kid)
            .filter(move |k| k.supports(alg))
    }

    /// Whether any key has `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Why keys could not be fetched.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Transport or TLS failure, or a timeout.
    #[error("fetching {url}: {reason}")]
    Transport {
        /// What was fetched.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered, but not with a usable document.
    #[error("{url}: {reason}")]
    Document {
        /// What was fetched.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A key file could not be read.
    #[error("reading {path}: {reason}")]
    File {
        /// Which file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl From<crate::outbound::OutboundError> for FetchError {
    fn from(e: crate::outbound::OutboundError) -> Self {
        use crate::outbound::OutboundError as O;
        match e {
            O::Transport { url, reason } | O::Reset { url, reason } => {
                FetchError::Transport { url, reason }
            }
            O::Timeout { url, after } => FetchError::Transport {
                url,
                reason: format!("no answer within {after:?}"),
            },
            O::Status { url, status } => FetchError::Document {
                url,
                reason: format!("status {status}"),
            },
            O::Document { url, reason } => FetchError::Document { url, reason },
        }
    }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// OIDC discovery at this URL; its `issuer` must equal `issuer`.
    Discovery {
        /// Discovery document URL.
        url: String,
        /// The configured issuer URL.
        issuer: String,
    },
    /// A JWKS URL.
    Url(String),
    /// A local JWKS file (reloaded when it changes).
    File(PathBuf),
    /// Keys given in the configuration.
    Inline(Value),
}

/// An issuer's keys: the last good set, refreshed periodically and on unknown `kid`s
/// (rate-limited), kept while the issuer is unreachable.
pub struct IssuerKeys {
    /// Metric label and log name (the configured issuer URL).
    pub label: String,
    source: KeySource,
    ca: String,
    client: HttpsClient,
    current: ArcSwapOption<KeySet>,
    loaded: Mutex<Option<crate::verify::Digest>>,
    last_attempt: Mutex<Option<Instant>>,
    min_interval: Duration,
    metrics: Metrics,
}

impl IssuerKeys {
    /// Keys from `source`; nothing is fetched until [`IssuerKeys::refresh`].
    pub fn new(
        label: String,
        source: KeySource,
        ca: String,
        client: HttpsClient,
        min_interval: Duration,
        metrics: Metrics,
    ) -> Arc<Self> {
        Arc::new(IssuerKeys {
            label,
            source,
            ca,
            client,
            current: ArcSwapOption::empty(),
            loaded: Mutex::new(None),
            last_attempt: Mutex::new(None),
            min_interval,
            metrics,
        })
    }

    /// The current set (`None` before the first successful load).
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// The source.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Same issuer, key source and CA: the loaded keys can be carried over.
    pub fn same_origin(&self, other: &IssuerKeys) -> bool {
        self.label == other.label && self.source == other.source && self.ca == other.ca
    }

    async fn load(&self) -> Result<(KeySet, crate::verify::Digest), FetchError> {
        let doc = match &self.source {
            KeySource::Inline(v) => v.clone(),
            KeySource::File(p) => {
                let bytes = std::fs::read(p).map_err(|e| FetchError::File {
                    path: p.clone(),
                    reason: e.to_string(),
                })?;
                serde_json::from_slice(&bytes).map_err(|e| FetchError::File {
                    path: p.clone(),
                    reason: format!("not JSON: {e}"),
                })?
            }
            KeySource::Url(u) => self.client.get_json(u).await?,
            KeySource::Discovery { url, issuer } => {
                let d = self.client.get_json(url).await?;
                let bad = |reason: String| FetchError::Document {
                    url: url.clone(),
                    reason,
                };
                match d.get("issuer").and_then(Value::as_str) {
                    Some(i) if i == issuer => {}
                    other => {
                        return Err(bad(format!(
                            "discovery issuer {other:?} does not match the configured issuer {issuer:?}"
                        )));
                    }
                }
                let jwks_uri = d
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("no jwks_uri".into()))?;
                if !jwks_uri.starts_with("https://") {
                    return Err(bad(format!("jwks_uri {jwks_uri:?} is not https")));
                }
                self.client.get_json(jwks_uri).await?
            }
        };
        let digest = crate::verify::Digest::of(doc.to_string().as_bytes());
        KeySet::parse(&doc)
            .map(|k| (k, digest))
            .map_err(|reason| FetchError::Document {
                url: match &self.source {
                    KeySource::Url(u) | KeySource::Discovery { url: u, .. } => u.clone(),
                    KeySource::File(p) => p.display().to_string(),
                    KeySource::Inline(_) => "inline keys".into(),
                },
                reason,
            })
    }

    /// Fetches now (unconditionally) and installs the result; on failure the last good
    /// set stays in use.
    ///
    /// # Errors
    /// The fetch error (already logged and counted).
    pub async fn refresh(&self) -> Result<(), FetchError> {
        *self.last_attempt.lock().await = Some(Instant::now());
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<(), FetchError> {
        match self.load().await {
            Ok((set, digest)) => {
                let mut loaded = self.loaded.lock().await;
                if *loaded == Some(digest) && self.current.load().is_some() {
                    // Unchanged: nothing to install or log.
                    return Ok(());
                }
                *loaded = Some(digest);
                for s in &set.skipped {
                    tracing::warn!(issuer = %self.label, skipped = %s, "JWKS key skipped");
                }
                tracing::info!(issuer = %self.label, keys = set.keys.len(), "JWKS loaded");
                self.current.store(Some(Arc::new(set)));
                self.metrics
                    .jwks_refreshes
                    .with_label_values(&[&self.label, "success"])
                    .inc();
                Ok(())
            }
            Err(e) => {
                let kept = self.current.load().is_some();
                tracing::warn!(issuer = %self.label, error = %e, keeping_last_good = kept, "JWKS refresh failed");
                self.metrics
                    .jwks_refreshes
                    .with_label_values(&[&self.label, "failure"])
                    .inc();
                Err(e)
            }
        }
    }

    /// The key set to verify a token whose header names `kid`: refreshes first when the
    /// set is missing or lacks that `kid`, at most once per `min_interval` however many
    /// tokens ask (concurrent askers wait for the one refresh).
    pub async fn for_kid(&self, kid: Option<&str>) -> Option<Arc<KeySet>> {
        let cur = self.current();
        let satisfied = |s: &Option<Arc<KeySet>>| match (s, kid) {
            (Some(set), Some(k)) => set.has_kid(k),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if satisfied(&cur) {
            return cur;
        }
        let mut last = self.last_attempt.lock().await;
        // Someone else may have refreshed while we waited for the lock.
        let cur = self.current();
        if satisfied(&cur) {
            return cur;
        }
        if last.is_some_and(|t| t.elapsed() < self.min_interval) {
            return cur;
        }
        *last = Some(Instant::now());
        let _ = self.refresh_locked().await;
        self.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa_jwk() -> Value {
        let pem = crate::mint::keys::generate_pem(crate::mint::keys::Alg::RS256).unwrap();
        let k = openssl::pkey::PKey::private_key_from_pem(&pem).unwrap();
        let rsa = k.rsa().unwrap();
        let b = |v: Vec<u8>| URL_SAFE_NO_PAD.encode(v);
        json!({"kty": "RSA", "kid": "k1", "n": b(rsa.n().to_vec()), "e": b(rsa.e().to_vec())})
    }

    #[test]
    fn allow_list_and_use() {
        let mut k = rsa_jwk();
        let key = VerifyKey::from_jwk(&k).unwrap();
        assert!(key.supports("RS256"));
        assert!(key.supports("PS512"));
        assert!(!key.supports("HS256"));
        assert!(!key.supports("none"));
        k["alg"] = json!("RS384");
        let key = VerifyKey::from_jwk(&k).unwrap();
        assert!(!key.supports("RS256"));
        assert!(key.supports("RS384"));
        k["alg"] = json!("ES256");
        assert!(VerifyKey::from_jwk(&k).is_err());
        k["alg"] = json!("RS256");
        k["use"] = json!("enc");
        assert!(VerifyKey::from_jwk(&k).is_err());
        assert!(VerifyKey::from_jwk(&json!({"kty": "oct", "k": "c2VjcmV0"})).is_err());
    }

    #[test]
    fn sets_skip_unusable_keys_but_need_one() {
        let set = KeySet::parse(&json!({"keys": [{"kty": "oct", "k": "eA"}, rsa_jwk()]})).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.skipped.len(), 1);
        assert!(set.has_kid("k1"));
        assert_eq!(set.candidates(Some("k1"), "RS256").count(), 1);
        assert_eq!(set.candidates(Some("k2"), "RS256").count(), 0);
        assert_eq!(set.candidates(None, "ES256").count(), 0);
        assert!(KeySet::parse(&json!({"keys": [{"kty": "oct", "k": "eA"}]})).is_err());
        assert!(KeySet::parse(&json!({"nokeys": 1})).is_err());
    }
}
