//! The verifier contract (`Verifier`, `Outcome`), the token newtype, and the ordered chain built from config.

pub mod authn_config;
pub mod cel;
pub mod introspection;
pub mod jwks;
pub mod oidc;
pub mod selector;
pub mod service_account;
pub mod static_file;
pub mod tokenreview;

use std::fmt;
use std::future::Future;
use std::time::Instant;

use aws_lc_rs::digest;

use crate::clock::UnixTime;
use crate::k8s::token_review::UserInfo;
use crate::metrics::Metrics;

pub use service_account::ServiceAccount;
pub use static_file::StaticFile;

/// SHA-256 of a token: what caches, logs and token files see instead of the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Digest(out)
    }

    /// The first 8 bytes in hex: enough to correlate log lines, useless to an attacker.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.0.get(..8).unwrap_or_default())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}…", self.fingerprint())
    }
}

/// A bearer token under review. `Debug` prints only its fingerprint.
pub struct Token {
    raw: String,
    /// Computed on first use, then shared by the cache key, the verifiers and log lines.
    digest: std::sync::OnceLock<Digest>,
}

impl Token {
    /// Wraps a token.
    pub fn new(raw: String) -> Self {
        Token {
            raw,
            digest: std::sync::OnceLock::new(),
        }
    }

    /// The token itself: for verifiers only, never for logs.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The token back, once reviewed (the answer echoes it).
    pub fn into_raw(self) -> String {
        self.raw
    }

    /// Its SHA-256 (computed once).
    pub fn digest(&self) -> &Digest {
        self.digest.get_or_init(|| Digest::of(self.raw.as_bytes()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({:?})", self.digest())
    }
}

/// A compact JWS split for routing: the header (still base64url), the decoded payload, and
/// the payload's `iss` when it is a string. Nothing here is verified.
pub struct JwtParts<'a> {
    /// Header segment, base64url.
    pub header_b64: &'a str,
    /// Payload, decoded.
    pub payload: Vec<u8>,
    /// Unverified `iss`.
    pub iss: Option<String>,
}

impl JwtParts<'_> {
    /// The header, decoded into `T`; `None` when it is not base64url JSON of that shape.
    pub fn header<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(self.header_b64)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Splits `token` if it has the shape of a compact JWS with a base64url JSON payload;
/// anything else (opaque tokens, JWE's five parts) is `None`.
pub fn split_jwt(token: &str) -> Option<JwtParts<'_>> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct IssOnly {
        #[serde(default)]
        iss: Option<serde_json::Value>,
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p)
        .ok()?;
    let iss = match serde_json::from_slice::<IssOnly>(&payload).ok()?.iss {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    };
    Some(JwtParts {
        header_b64: h,
        payload,
        iss,
    })
}

/// Who a token belongs to, and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user as kube sees it.
    pub user: UserInfo,
    /// `None`: audience-agnostic, valid for "the API server". `Some`: valid only for these.
    pub audiences: Option<Vec<String>>,
    /// When the token stops being valid, if it says.
    pub expires_at: Option<UnixTime>,
    /// Cluster objects the identity depends on (a minted token's account and bound object,
    /// with the `kubernetes` registry): a cached "yes" is re-checked against them on every
    /// hit and dropped when one is deleted. Empty for every other source.
    pub bound: Vec<crate::mint::accounts::BoundRef>,
}

/// Why a recognised token was refused. The label is for metrics; it never reaches the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Past its expiry.
    Expired,
    /// Not valid yet.
    NotYetValid,
    /// Signature did not verify.
    BadSignature,
    /// Not meant for any requested audience.
    AudienceMismatch,
    /// Revoked before expiry.
    Revoked,
    /// Recognised but malformed.
    Malformed,
    /// Signed with a key id we do not have.
    UnknownKey,
    /// The account or bound object it names is gone or was recreated.
    Invalidated,
    /// A claim validation rule, user validation rule or claim mapping failed.
    ClaimRule,
    /// An upstream (TokenReview webhook, introspection endpoint) said no.
    UpstreamRejected,
}

impl RejectReason {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Expired => "expired",
            RejectReason::NotYetValid => "not_yet_valid",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::AudienceMismatch => "audience_mismatch",
            RejectReason::Revoked => "revoked",
            RejectReason::Malformed => "malformed",
            RejectReason::UnknownKey => "unknown_kid",
            RejectReason::Invalidated => "invalidated",
            RejectReason::ClaimRule => "claim_rule",
            RejectReason::UpstreamRejected => "upstream_rejected",
        }
    }
}

/// A refusal: the label plus the precise reason for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Metric label.
    pub reason: RejectReason,
    /// Log text (never sent to the caller, never containing the token).
    pub detail: String,
}

/// What a verifier concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Ours and valid.
    Authenticated(Identity),
    /// Ours and invalid: stop the chain, answer "no".
    Rejected(Rejection),
    /// Not ours: try the next verifier.
    NotMine,
}

/// A verifier could not decide (an upstream is down). Never cached; answered so that
/// kube-apiserver retries.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// A source the verifier depends on is unavailable.
    #[error("verifier {verifier} could not check the token: {reason}")]
    Unavailable {
        /// Which verifier.
        verifier: String,
        /// Why (no secrets).
        reason: String,
    },
}

/// One source of identities.
pub trait Verifier {
    /// Checks `token` at time `now`.
    fn verify(
        &self,
        token: &Token,
        now: UnixTime,
    ) -> impl Future<Output = Result<Outcome, VerifyError>> + Send;
}

/// The closed set of verifiers the chain can hold.
pub enum AnyVerifier {
    /// Static token file.
    Static(StaticFile),
    /// Tokens this tokenhook minted.
    ServiceAccount(ServiceAccount),
    /// JWT/OIDC issuers.
    Jwt(oidc::Jwt),
    /// An upstream TokenReview webhook.
    TokenReview(tokenreview::TokenReview),
    /// An OAuth 2.0 introspection endpoint.
    Introspection(introspection::Introspection),
}

impl AnyVerifier {
    /// Metric label for this verifier's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyVerifier::Static(_) => "static",
            AnyVerifier::ServiceAccount(_) => "service_account",
            AnyVerifier::Jwt(j) => j.kind,
            AnyVerifier::TokenReview(_) => "tokenreview",
            AnyVerifier::Introspection(_) => "introspection",
        }
    }

    /// How long this verifier's "yes" may be cached, when not `[cache] ttl_seconds`.
    pub fn cache_ttl(&self) -> Option<std::time::Duration> {
        match self {
            AnyVerifier::TokenReview(v) => v.cache_ttl(),
            AnyVerifier::Introspection(v) => v.cache_ttl(),
            _ => None,
        }
    }

    async fn verify(
        &self,
        token: &Token,
        audiences: &[String],
        now: UnixTime,
    ) -> Result<Outcome, VerifyError> {
        match self {
            AnyVerifier::Static(v) => v.verify(token, now).await,
            AnyVerifier::ServiceAccount(v) => v.verify(token, now).await,
            AnyVerifier::Jwt(v) => v.verify(token, now).await,
            // Upstream webhooks are told the audiences, as kube's webhook client tells them.
            AnyVerifier::TokenReview(v) => v.review(token, audiences).await,
            AnyVerifier::Introspection(v) => v.verify(token, now).await,
        }
    }
}

/// What the chain decided, and which verifier decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The outcome (`NotMine` when no verifier claimed the token).
    pub outcome: Outcome,
    /// Kind of the deciding verifier, `none` when nobody claimed it.
    pub verifier: &'static str,
    /// The deciding verifier's own positive cache lifetime, if it has one.
    pub cache_ttl: Option<std::time::Duration>,
}

/// The ordered verifiers: the first that does not answer `NotMine` decides.
pub struct Chain {
    verifiers: Vec<AnyVerifier>,
    metrics: Metrics,
}

impl Chain {
    /// A chain over `verifiers`, in order.
    pub fn new(verifiers: Vec<AnyVerifier>, metrics: Metrics) -> Self {
        Chain { verifiers, metrics }
    }

    /// Readiness checks: one per JWT issuer, true once it has keys; one per upstream,
    /// naming its circuit's state but always passing (an upstream that is down must not take
    /// every replica, and the verifiers that still work, out of service).
    pub fn readiness(&self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for v in &self.verifiers {
            match v {
                AnyVerifier::Jwt(j) => {
                    for i in j.issuers() {
                        out.push((format!("jwt-issuer {}", i.url), i.keys.current().is_some()));
                    }
                }
                AnyVerifier::TokenReview(_) | AnyVerifier::Introspection(_) => {
                    let u = match v {
                        AnyVerifier::TokenReview(t) => t.upstream(),
                        AnyVerifier::Introspection(i) => i.upstream(),
                        _ => continue,
                    };
                    out.push((
                        format!("upstream {} circuit {}", u.name(), u.state().as_str()),
                        true,
                    ));
                }
                _ => {}
            }
        }
        out.sort();
        out
    }

    /// Runs `token` through the chain.
    ///
    /// # Errors
    /// The first verifier that cannot check the token stops the chain with its error: moving
    /// on could let a later verifier say "no" to a token the broken one would have accepted.
    pub async fn verify(&self, token: &Token, now: UnixTime) -> Result<Decision, VerifyError> {
        self.verify_for(token, &[], now).await
    }

    /// [`Chain::verify`] for a review asking for `audiences` (`spec.audiences`), which
    /// upstream webhooks are told.
    ///
    /// # Errors
    /// As [`Chain::verify`].
    pub async fn verify_for(
        &self,
        token: &Token,
        audiences: &[String],
        now: UnixTime,
    ) -> Result<Decision, VerifyError> {
        // One clock read per verifier: each one's end is the next one's start.
        let mut started = Instant::now();
        for v in &self.verifiers {
            let result = v.verify(token, audiences, now).await;
            let ended = Instant::now();
            self.metrics
                .verifier_took(v.kind(), ended.saturating_duration_since(started));
            started = ended;
            match result? {
                Outcome::NotMine => continue,
                outcome => {
                    return Ok(Decision {
                        outcome,
                        verifier: v.kind(),
                        cache_ttl: v.cache_ttl(),
                    });
                }
            }
        }
        Ok(Decision {
            outcome: Outcome::NotMine,
            verifier: "none",
            cache_ttl: None,
        })
    }
}
