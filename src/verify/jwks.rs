//! JSON Web Key Sets: parsing into verifiers under an algorithm allow-list, and fetching them (discovery, URL, file) with rate-limited refresh.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tokio::sync::{Mutex, watch};

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
            O::Transport { url, reason } => FetchError::Transport { url, reason },
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

/// An issuer's keys: the last good set, refreshed periodically and whenever no key in it
/// verifies a token, kept while the issuer is unreachable.
///
/// # Refreshes
/// One fetch at a time per issuer (single flight): whoever needs keys while a fetch is in
/// flight waits for that fetch instead of starting another. The fetch runs in its own task,
/// so a review that gives up (its client went away) does not cancel it for the others.
///
/// A token that no key verifies may be answered "no" only from a set fetched after the
/// token was found unverifiable ([`IssuerKeys::verify_fresh`]); such a fetch starts at most
/// `min_interval` after the previous fetch finished, so a flood of made-up `kid`s costs
/// the issuer about one fetch per `min_interval`, and the tokens that arrive inside that
/// interval are "could not check" ([`Stale::RateLimited`]), which kube-apiserver retries
/// and never caches.
pub struct IssuerKeys {
    /// Metric label and log name (the configured issuer URL).
    pub label: String,
    source: KeySource,
    ca: String,
    client: HttpsClient,
    current: ArcSwapOption<KeySet>,
    loaded: Mutex<Option<crate::verify::Digest>>,
    /// Never held across an await.
    flight: std::sync::Mutex<Flight>,
    min_interval: Duration,
    metrics: Metrics,
}

/// The outcome of one fetch, as its waiters see it.
type FetchResult = Option<Result<(), FetchError>>;

/// Bookkeeping of the fetches of one issuer.
#[derive(Default)]
struct Flight {
    /// Fetches started so far; each fetch is numbered by this count when it starts.
    started: u64,
    /// The number of the last fetch that succeeded (0: none yet).
    succeeded: u64,
    /// The fetch in flight: its number and where its result appears.
    in_flight: Option<(u64, watch::Receiver<FetchResult>)>,
    /// When the last fetch finished, and how.
    finished: Option<(Instant, Result<(), FetchError>)>,
}

/// Why no key set fresh enough to judge a token could be had: "could not check".
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Stale {
    /// The last fetch finished less than the minimum refresh interval ago.
    #[error("keys were fetched less than {0:?} ago; not refetching yet")]
    RateLimited(Duration),
    /// The fetch made for this token failed (the last good set, if any, stays in use).
    #[error("refetching the keys failed")]
    Fetch(#[source] FetchError),
}

/// What [`IssuerKeys::verify_fresh`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fresh<V, R> {
    /// A key verified the token (in the current set or a refetched one).
    Verified(V),
    /// Even a set fetched after the token was found unverifiable has no key for it.
    Refused(R),
}

impl IssuerKeys {
    /// Keys from `source`; nothing is fetched until [`IssuerKeys::refresh`].
    /// `min_interval`: least time from the end of one fetch to the start of a fetch for a
    /// token no key verifies.
    pub fn new(
        label: String,
        source: KeySource,
        ca: String,
        client: HttpsClient,
        min_interval: Duration,
        metrics: Metrics,
    ) -> Arc<Self> {
        // Both results exist (at zero) from the start, so that `increase()` in the JWKS
        // alert sees the first failure too.
        for result in ["success", "failure"] {
            metrics.jwks_refreshes.with_label_values(&[&label, result]);
        }
        Arc::new(IssuerKeys {
            label,
            source,
            ca,
            client,
            current: ArcSwapOption::empty(),
            loaded: Mutex::new(None),
            flight: std::sync::Mutex::new(Flight::default()),
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

    fn flight(&self) -> std::sync::MutexGuard<'_, Flight> {
        // The lock guards plain bookkeeping that is never left half-written.
        self.flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts fetch number `started + 1` in its own task. Called with the lock held.
    fn start(self: &Arc<Self>, f: &mut Flight) -> (u64, watch::Receiver<FetchResult>) {
        f.started += 1;
        let n = f.started;
        let (tx, rx) = watch::channel(None);
        f.in_flight = Some((n, rx.clone()));
        let keys = self.clone();
        tokio::spawn(async move {
            let r = keys.fetch_and_install().await;
            {
                let mut f = keys.flight();
                f.in_flight = None;
                if r.is_ok() {
                    f.succeeded = n;
                }
                f.finished = Some((Instant::now(), r.clone()));
            }
            let _ = tx.send(Some(r));
        });
        (n, rx)
    }

    /// Waits for fetch `n`. A fetch whose task vanished (runtime shutting down) counts
    /// as failed and no longer blocks later fetches.
    async fn wait(&self, n: u64, mut rx: watch::Receiver<FetchResult>) -> Result<(), FetchError> {
        if let Ok(r) = rx.wait_for(Option::is_some).await
            && let Some(r) = r.clone()
        {
            return r;
        }
        let mut f = self.flight();
        if f.in_flight.as_ref().is_some_and(|(m, _)| *m == n) {
            f.in_flight = None;
        }
        Err(FetchError::Transport {
            url: self.label.clone(),
            reason: "the fetch was abandoned".into(),
        })
    }

    /// Fetches now and installs the result, or waits for the fetch already in flight; on
    /// failure the last good set stays in use. Not rate-limited: for the periodic refresh,
    /// the first load and the reload signal.
    ///
    /// # Errors
    /// The fetch error (already logged and counted).
    pub async fn refresh(self: &Arc<Self>) -> Result<(), FetchError> {
        let (n, rx) = {
            let mut f = self.flight();
            match f.in_flight.clone() {
                Some(flying) => flying,
                None => self.start(&mut f),
            }
        };
        self.wait(n, rx).await
    }

    /// Verifies a token against the keys: `check` tries one set and says whether a key
    /// verified the token (`Ok`) or why not (`Err`).
    ///
    /// When the current set fails, the token's verdict must come from a set fetched after
    /// that moment (kube-apiserver's go-oidc key set likewise refetches when no cached key
    /// verifies a token). So this joins the fetch in flight, or starts one unless a fetch
    /// finished less than `min_interval` ago; a fetch that was already in flight when the
    /// token failed can still verify it, but not refuse it.
    ///
    /// # Concurrent calls
    /// Any number of tokens share one fetch.
    ///
    /// # Errors
    /// [`Stale`]: no fresh set could be had (rate limit, failed fetch, nothing loaded);
    /// "could not check", never "no".
    pub async fn verify_fresh<V, R>(
        self: &Arc<Self>,
        check: impl Fn(&KeySet) -> Result<V, R>,
    ) -> Result<Fresh<V, R>, Stale> {
        // Read the count before the set: a fetch numbered above it started after this
        // token found the set wanting.
        let seen = self.flight().started;
        if let Some(set) = self.current()
            && let Ok(v) = check(&set)
        {
            return Ok(Fresh::Verified(v));
        }
        loop {
            let (n, rx) = {
                let mut f = self.flight();
                if f.succeeded > seen
                    && let Some(set) = self.current()
                {
                    // A fresh fetch finished while we were getting here.
                    return Ok(match check(&set) {
                        Ok(v) => Fresh::Verified(v),
                        Err(r) => Fresh::Refused(r),
                    });
                }
                match (f.in_flight.clone(), &f.finished) {
                    (Some(flying), _) => flying,
                    (None, Some((at, r))) if f.started > seen => {
                        // A fresh fetch finished and failed; do not pile another on.
                        match r {
                            Err(e) => return Err(Stale::Fetch(e.clone())),
                            Ok(()) if at.elapsed() < self.min_interval => {
                                return Err(Stale::RateLimited(self.min_interval));
                            }
                            Ok(()) => self.start(&mut f),
                        }
                    }
                    (None, Some((at, _))) if at.elapsed() < self.min_interval => {
                        return Err(Stale::RateLimited(self.min_interval));
                    }
                    (None, _) => self.start(&mut f),
                }
            };
            let r = self.wait(n, rx).await;
            let set = self.current();
            match (n > seen, r, set) {
                (true, Ok(()), Some(set)) => {
                    return Ok(match check(&set) {
                        Ok(v) => Fresh::Verified(v),
                        Err(r) => Fresh::Refused(r),
                    });
                }
                (true, Err(e), _) => return Err(Stale::Fetch(e)),
                (false, Ok(()), Some(set)) => {
                    // An older fetch: it may hold the key, but cannot refuse the token.
                    if let Ok(v) = check(&set) {
                        return Ok(Fresh::Verified(v));
                    }
                }
                // An older fetch failed, or nothing is loaded: go round (the rate limit
                // decides whether a fetch of our own may start).
                _ => {}
            }
        }
    }

    /// One fetch: loads, installs a changed set, logs and counts.
    async fn fetch_and_install(&self) -> Result<(), FetchError> {
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

    /// Keys read from `path`, refetched for tokens no key verifies at most once per `min`.
    fn file_keys(path: &std::path::Path, min: Duration) -> Arc<IssuerKeys> {
        IssuerKeys::new(
            "test".into(),
            KeySource::File(path.to_owned()),
            String::new(),
            HttpsClient::new(None, Duration::from_secs(1)).unwrap(),
            min,
            Metrics::new().unwrap(),
        )
    }

    fn jwks_with(kids: &[&str]) -> String {
        let keys: Vec<Value> = kids
            .iter()
            .map(|k| {
                let mut j = rsa_jwk();
                j["kid"] = json!(k);
                j
            })
            .collect();
        json!({ "keys": keys }).to_string()
    }

    fn has(kid: &'static str) -> impl Fn(&KeySet) -> Result<(), &'static str> {
        move |set: &KeySet| {
            if set.has_kid(kid) {
                Ok(())
            } else {
                Err("no key")
            }
        }
    }

    #[tokio::test]
    async fn a_no_comes_only_from_a_fresh_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks_with(&["k1"])).unwrap();
        let keys = file_keys(&path, Duration::ZERO);
        keys.refresh().await.unwrap();
        // Known: no fetch needed.
        assert_eq!(keys.verify_fresh(has("k1")).await, Ok(Fresh::Verified(())));
        // Published after the load: fetched for the token that needs it.
        std::fs::write(&path, jwks_with(&["k1", "k2"])).unwrap();
        assert_eq!(keys.verify_fresh(has("k2")).await, Ok(Fresh::Verified(())));
        // Not in a set fetched after the token failed: a plain no.
        assert_eq!(
            keys.verify_fresh(has("k3")).await,
            Ok(Fresh::Refused("no key"))
        );
        // The source fails: could not check, and the last good set stays.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            keys.verify_fresh(has("k3")).await,
            Err(Stale::Fetch(FetchError::File { .. }))
        ));
        assert!(keys.current().unwrap().has_kid("k2"));
        assert_eq!(keys.verify_fresh(has("k2")).await, Ok(Fresh::Verified(())));
    }

    #[tokio::test]
    async fn inside_the_floor_an_unknown_kid_is_could_not_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks_with(&["k1"])).unwrap();
        let keys = file_keys(&path, Duration::from_secs(3600));
        keys.refresh().await.unwrap();
        std::fs::write(&path, jwks_with(&["k1", "k2"])).unwrap();
        for kid in ["k2", "k3"] {
            assert_eq!(
                keys.verify_fresh(has(kid)).await,
                Err(Stale::RateLimited(Duration::from_secs(3600)))
            );
        }
        // The periodic refresh is not limited, and what it loads verifies.
        keys.refresh().await.unwrap();
        assert_eq!(keys.verify_fresh(has("k2")).await, Ok(Fresh::Verified(())));
    }
}
