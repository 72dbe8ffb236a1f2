//! The `introspection` verifier: OAuth 2.0 Token Introspection (RFC 7662) for opaque access tokens, with the identity mapped by the same claim rules and mappings as JWT issuers.
//!
//! The endpoint is the configured `url`, or the `introspection_endpoint` of the `issuer`'s
//! metadata (RFC 8414 `/.well-known/oauth-authorization-server`, else OIDC discovery).
//! tokenhook authenticates as an OAuth client: `client_secret_basic` (default),
//! `client_secret_post`, or `private_key_jwt` (RFC 7523); the secret and key files are read
//! again for every call, so a rotated Secret takes effect at once. `active: false` is a
//! plain "no"; an active token's response members are the claims that
//! `claimValidationRules`, `claimMappings` and `userValidationRules` see. Revocation at the
//! provider shows after at most `cache_ttl_seconds` (default 10), the positive cache
//! lifetime, never past `exp`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::authn_config::{ClaimMappings, ClaimValidationRule, UserValidationRule};
use super::cel::CelEnv;
use super::oidc::ClaimMapper;
use super::selector::{KnownIssuers, Selector, SelectorConfig};
use super::tokenreview::valid_name;
use super::{Identity, Outcome, RejectReason, Rejection, Token, Verifier, VerifyError};
use crate::clock::UnixTime;
use crate::metrics::Metrics;
use crate::outbound::{
    BreakerConfig, HttpsClient, OutboundError, TlsOptions, Upstream, limit_problems, result,
};

/// `[[verifiers]] type = "introspection"` as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// Name in metrics, logs and `/readyz?verbose`. Default `introspection-<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The introspection endpoint (https). Set this or `issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The authorization server (https); its metadata names `introspection_endpoint`.
    /// When set, a response's `iss` (if any) must equal it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// PEM CA bundle for the endpoint; default: the system roots.
    #[serde(
        default,
        rename = "certificateAuthority",
        skip_serializing_if = "String::is_empty"
    )]
    pub certificate_authority: String,
    /// tokenhook's OAuth client id. Required.
    pub client_id: String,
    /// File holding the client secret (read for every call). Required unless
    /// `client_auth = "private_key_jwt"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    /// `client_secret_basic` (default), `client_secret_post` or `private_key_jwt`.
    #[serde(default = "default_auth")]
    pub client_auth: String,
    /// For `private_key_jwt`: the signing key (PEM or JWK; RSA → RS256, EC P-256 → ES256,
    /// Ed25519 → EdDSA), read for every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<PathBuf>,
    /// When non-empty, the response's `aud` must contain one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Scopes the response's `scope` must all contain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
    /// kube's `claimValidationRules`, over the response members.
    #[serde(
        default,
        rename = "claimValidationRules",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub claim_validation_rules: Vec<ClaimValidationRule>,
    /// kube's `claimMappings`, over the response members. Default username: `sub`.
    #[serde(default, rename = "claimMappings")]
    pub claim_mappings: ClaimMappings,
    /// kube's `userValidationRules`.
    #[serde(
        default,
        rename = "userValidationRules",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub user_validation_rules: Vec<UserValidationRule>,
    /// Only tokens with this prefix are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_prefix: Option<String>,
    /// Only tokens matching this regular expression are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_regex: Option<String>,
    /// Only JWTs with this `iss` are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_issuer: Option<String>,
    /// Lifetime of an active token's "yes" in the verdict cache, in seconds: the longest a
    /// token revoked at the provider still works. Default 10.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl_seconds: u64,
    /// Time for one call (metadata or introspection), in seconds. Default 10.
    #[serde(default = "crate::outbound::file_defaults::timeout_seconds")]
    pub timeout_seconds: u64,
    /// Calls at once; more wait (until the timeout). Default 100.
    #[serde(default = "crate::outbound::file_defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// Consecutive failed calls that open the circuit (0: never). Default 5.
    #[serde(default = "crate::outbound::file_defaults::failure_threshold")]
    pub failure_threshold: u32,
    /// Seconds an open circuit fails fast before one probe call. Default 10.
    #[serde(default = "crate::outbound::file_defaults::cool_down_seconds")]
    pub cool_down_seconds: u64,
}

fn default_auth() -> String {
    "client_secret_basic".into()
}
fn default_cache_ttl() -> u64 {
    10
}

/// How tokenhook authenticates to the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the form-encoded id and secret.
    SecretBasic(PathBuf),
    /// `client_id` and `client_secret` in the form.
    SecretPost(PathBuf),
    /// A JWT assertion signed with this key (RFC 7523).
    PrivateKeyJwt(PathBuf),
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Metric label and log name.
    pub name: String,
    /// The endpoint, when given.
    pub url: Option<String>,
    /// The authorization server.
    pub issuer: Option<String>,
    /// PEM CA.
    pub certificate_authority: String,
    /// Client id.
    pub client_id: String,
    /// Client authentication.
    pub client_auth: ClientAuth,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Required scopes.
    pub required_scopes: Vec<String>,
    /// Claim rules.
    pub claim_validation_rules: Vec<ClaimValidationRule>,
    /// Claim mappings (username defaulted to `sub`).
    pub claim_mappings: ClaimMappings,
    /// User rules.
    pub user_validation_rules: Vec<UserValidationRule>,
    /// Which tokens are sent.
    pub selector: SelectorConfig,
    /// Positive cache lifetime.
    pub cache_ttl: Duration,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Concurrency limit.
    pub max_in_flight: usize,
    /// Circuit breaker.
    pub breaker: BreakerConfig,
}

impl FileSettings {
    /// Validates, resolving paths with `rel`; every problem is reported.
    ///
    /// # Errors
    /// The problems, prefixed with `verifiers[index]`.
    pub fn validate(
        &self,
        index: usize,
        rel: &dyn Fn(&PathBuf) -> PathBuf,
    ) -> Result<Settings, Vec<String>> {
        let path = format!("verifiers[{index}]");
        let mut errs = Vec::new();
        match (&self.url, &self.issuer) {
            (None, None) => errs.push(format!("{path}: set url or issuer")),
            (Some(_), Some(_)) => {} // url wins; issuer still checks iss
            _ => {}
        }
        for (key, v) in [("url", &self.url), ("issuer", &self.issuer)] {
            if let Some(u) = v
                && !u.starts_with("https://")
            {
                errs.push(format!("{path}.{key}: {u:?} must be an https URL"));
            }
        }
        if self.client_id.is_empty() {
            errs.push(format!("{path}.client_id: Required value"));
        }
        let secret = self.client_secret_file.as_ref().map(rel);
        let client_auth = match (self.client_auth.as_str(), secret, &self.private_key_file) {
            ("client_secret_basic", Some(s), _) => Some(ClientAuth::SecretBasic(s)),
            ("client_secret_post", Some(s), _) => Some(ClientAuth::SecretPost(s)),
            ("private_key_jwt", _, Some(k)) => Some(ClientAuth::PrivateKeyJwt(rel(k))),
            ("client_secret_basic" | "client_secret_post", None, _) => {
                errs.push(format!(
                    "{path}.client_secret_file: Required value (client_auth = {:?})",
                    self.client_auth
                ));
                None
            }
            ("private_key_jwt", _, None) => {
                errs.push(format!(
                    "{path}.private_key_file: Required value (client_auth = \"private_key_jwt\")"
                ));
                None
            }
            (other, _, _) => {
                errs.push(format!(
                    "{path}.client_auth: {other:?} is not \"client_secret_basic\", \"client_secret_post\" or \"private_key_jwt\""
                ));
                None
            }
        };
        let selector = SelectorConfig {
            token_prefix: self.token_prefix.clone(),
            token_regex: self.token_regex.clone(),
            token_issuer: self.token_issuer.clone(),
        };
        errs.extend(selector.validate(&path));
        let breaker = BreakerConfig {
            failure_threshold: self.failure_threshold,
            cool_down: Duration::from_secs(self.cool_down_seconds),
        };
        errs.extend(limit_problems(
            &path,
            self.timeout_seconds,
            self.max_in_flight,
            breaker,
        ));
        if self
            .required_scopes
            .iter()
            .any(|s| s.is_empty() || s.contains(' '))
        {
            errs.push(format!(
                "{path}.required_scopes: scopes are single non-empty words"
            ));
        }
        if let Some(n) = &self.name
            && !valid_name(n)
        {
            errs.push(format!(
                "{path}.name: {n:?} must be 1-63 characters of a-z, 0-9, '-', '_' or '.'"
            ));
        }
        let mut claim_mappings = self.claim_mappings.clone();
        let u = &claim_mappings.username;
        if u.claim.is_empty() && u.expression.is_empty() {
            claim_mappings.username.claim = "sub".into();
        }
        // CEL is compiled now too, so that a bad expression is a configuration error.
        match CelEnv::new() {
            Ok(cel) => {
                ClaimMapper::compile(
                    &self.claim_validation_rules,
                    &claim_mappings,
                    &self.user_validation_rules,
                    &path,
                    "",
                    &cel,
                    &mut errs,
                );
            }
            Err(e) => errs.push(format!("{path}: CEL: {e}")),
        }
        match client_auth {
            Some(client_auth) if errs.is_empty() => Ok(Settings {
                name: self
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("introspection-{index}")),
                url: self.url.clone(),
                issuer: self.issuer.clone(),
                certificate_authority: self.certificate_authority.clone(),
                client_id: self.client_id.clone(),
                client_auth,
                audiences: self.audiences.clone(),
                required_scopes: self.required_scopes.clone(),
                claim_validation_rules: self.claim_validation_rules.clone(),
                claim_mappings,
                user_validation_rules: self.user_validation_rules.clone(),
                selector,
                cache_ttl: Duration::from_secs(self.cache_ttl_seconds),
                timeout: Duration::from_secs(self.timeout_seconds),
                max_in_flight: self.max_in_flight,
                breaker,
            }),
            _ => Err(errs),
        }
    }
}

/// Request headers.
type Headers = Vec<(http::HeaderName, HeaderValue)>;

/// The verifier. Clones share the connections, the circuit and the discovered endpoint.
#[derive(Clone)]
pub struct Introspection {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    selector: Selector,
    mapper: ClaimMapper,
    cel: Arc<CelEnv>,
    client: HttpsClient,
    upstream: Arc<Upstream>,
    /// The endpoint: configured, or discovered on first use.
    endpoint: ArcSwapOption<String>,
    leeway: u64,
}

impl Introspection {
    /// Builds the verifier. `leeway`: the `[jwt]` clock skew, applied to `exp` and `nbf`.
    ///
    /// # Errors
    /// An unusable CA, or CEL that does not compile.
    pub fn build(
        settings: &Settings,
        known: &KnownIssuers,
        cel: Arc<CelEnv>,
        leeway: Duration,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let mut errs = Vec::new();
        let mapper = ClaimMapper::compile(
            &settings.claim_validation_rules,
            &settings.claim_mappings,
            &settings.user_validation_rules,
            &settings.name,
            "",
            &cel,
            &mut errs,
        );
        let Some(mapper) = mapper.filter(|_| errs.is_empty()) else {
            return Err(errs.join("; "));
        };
        let ca = (!settings.certificate_authority.is_empty())
            .then(|| settings.certificate_authority.as_bytes().to_vec());
        let client = HttpsClient::with_tls(
            &TlsOptions {
                ca_pem: ca,
                ..TlsOptions::default()
            },
            settings.timeout,
        )?;
        tracing::info!(
            upstream = %settings.name,
            endpoint = ?settings.url,
            issuer = ?settings.issuer,
            tokens = %settings.selector.describe(),
            "introspection endpoint configured"
        );
        Ok(Introspection {
            inner: Arc::new(Inner {
                selector: Selector::build(&settings.selector, known)?,
                mapper,
                cel,
                client,
                upstream: Upstream::new(
                    settings.name.clone(),
                    settings.max_in_flight,
                    settings.breaker,
                    Some(metrics.clone()),
                ),
                endpoint: ArcSwapOption::new(settings.url.clone().map(Arc::new)),
                leeway: leeway.as_secs(),
                settings: settings.clone(),
            }),
        })
    }

    /// The upstream guard (circuit state for readiness).
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.inner.upstream
    }

    /// Positive cache lifetime.
    pub fn cache_ttl(&self) -> Option<Duration> {
        Some(self.inner.settings.cache_ttl)
    }

    fn unavailable(&self, reason: String) -> VerifyError {
        VerifyError::Unavailable {
            verifier: format!("introspection {}", self.inner.settings.name),
            reason,
        }
    }

    /// The endpoint, from the issuer's metadata the first time.
    async fn endpoint(&self, deadline: Instant) -> Result<Arc<String>, VerifyError> {
        if let Some(e) = self.inner.endpoint.load_full() {
            return Ok(e);
        }
        let Some(issuer) = &self.inner.settings.issuer else {
            return Err(self.unavailable("no endpoint".into()));
        };
        let base = issuer.trim_end_matches('/');
        let mut last = String::new();
        for well_known in [
            format!("{base}/.well-known/oauth-authorization-server"),
            format!("{base}/.well-known/openid-configuration"),
        ] {
            let permit = self
                .inner
                .upstream
                .admit(deadline)
                .await
                .map_err(|r| self.unavailable(r.to_string()))?;
            match self.inner.client.get_json(&well_known).await {
                Ok(doc) => {
                    let endpoint = doc
                        .get("introspection_endpoint")
                        .and_then(Value::as_str)
                        .filter(|e| e.starts_with("https://"));
                    let same_issuer = doc.get("issuer").and_then(Value::as_str) == Some(issuer);
                    match (endpoint, same_issuer) {
                        (Some(e), true) => {
                            permit.finish(result::SUCCESS);
                            let e = Arc::new(e.to_owned());
                            self.inner.endpoint.store(Some(e.clone()));
                            tracing::info!(upstream = %self.inner.settings.name, endpoint = %e, "introspection endpoint discovered");
                            return Ok(e);
                        }
                        _ => {
                            permit.finish(result::INVALID);
                            last = format!(
                                "{well_known}: no https introspection_endpoint for issuer {issuer:?}"
                            );
                        }
                    }
                }
                Err(e @ OutboundError::Status { .. }) => {
                    // Not served here: try the other document. The server answered, so
                    // the call did not fail.
                    permit.finish(result::SUCCESS);
                    last = e.to_string();
                }
                Err(e) => {
                    permit.finish(outbound_label(&e));
                    return Err(self.unavailable(e.to_string()));
                }
            }
        }
        Err(self.unavailable(last))
    }

    /// The form body and headers that authenticate tokenhook, for `token`.
    fn request(
        &self,
        token: &Token,
        endpoint: &str,
        now: UnixTime,
    ) -> Result<(Vec<u8>, Headers), String> {
        let s = &self.inner.settings;
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token.expose());
        form.append_pair("token_type_hint", "access_token");
        let mut headers = Vec::new();
        let secret = |p: &PathBuf| -> Result<String, String> {
            std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| format!("reading client_secret_file {}: {e}", p.display()))
        };
        match &s.client_auth {
            ClientAuth::SecretBasic(p) => {
                // RFC 6749 §2.3.1: both parts form-encoded before Base64.
                let enc =
                    |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
                let raw = format!("{}:{}", enc(&s.client_id), enc(&secret(p)?));
                let mut v = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(raw)))
                    .map_err(|e| e.to_string())?;
                v.set_sensitive(true);
                headers.push((http::header::AUTHORIZATION, v));
            }
            ClientAuth::SecretPost(p) => {
                form.append_pair("client_id", &s.client_id);
                form.append_pair("client_secret", &secret(p)?);
            }
            ClientAuth::PrivateKeyJwt(p) => {
                let keys = crate::mint::keys::KeySet::load(p, &[])
                    .map_err(|e| format!("private_key_file: {e}"))?;
                let mut aud = vec![Value::String(endpoint.to_owned())];
                if let Some(i) = &s.issuer {
                    aud.push(Value::String(i.clone()));
                }
                let claims = serde_json::json!({
                    "iss": s.client_id,
                    "sub": s.client_id,
                    "aud": aud,
                    "jti": uuid::Uuid::new_v4().to_string(),
                    "iat": now.0,
                    "exp": now.0 + 60,
                });
                let mut header = josekit::jws::JwsHeader::new();
                header.set_algorithm(keys.signing.public.alg.as_str());
                header.set_key_id(&keys.signing.public.kid);
                header.set_token_type("JWT");
                let assertion = josekit::jws::serialize_compact(
                    claims.to_string().as_bytes(),
                    &header,
                    &*keys.signing.signer,
                )
                .map_err(|e| format!("signing the client assertion: {e}"))?;
                form.append_pair("client_id", &s.client_id);
                form.append_pair(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                );
                form.append_pair("client_assertion", &assertion);
            }
        }
        Ok((form.finish().into_bytes(), headers))
    }

    /// Asks the endpoint about `token`.
    ///
    /// # Errors
    /// The endpoint could not be asked or did not answer usably.
    pub async fn introspect(&self, token: &Token, now: UnixTime) -> Result<Outcome, VerifyError> {
        let inner = &self.inner;
        if !inner.selector.matches(token) {
            return Ok(Outcome::NotMine);
        }
        let deadline = Instant::now() + inner.settings.timeout;
        let endpoint = self.endpoint(deadline).await?;
        let (body, headers) = self
            .request(token, &endpoint, now)
            .map_err(|e| self.unavailable(e))?;
        let permit = inner
            .upstream
            .admit(deadline)
            .await
            .map_err(|r| self.unavailable(r.to_string()))?;
        let answer = inner
            .client
            .post(
                &endpoint,
                "application/x-www-form-urlencoded",
                &headers,
                body,
                Some(deadline),
            )
            .await;
        let a = match answer {
            Ok(a) => a,
            Err(e) => {
                permit.finish(outbound_label(&e));
                return Err(self.unavailable(e.to_string()));
            }
        };
        if a.status == http::StatusCode::UNAUTHORIZED || a.status == http::StatusCode::FORBIDDEN {
            permit.finish(result::FORBIDDEN);
            tracing::error!(
                upstream = %inner.settings.name,
                endpoint = %endpoint,
                status = a.status.as_u16(),
                "configuration error: the introspection endpoint refused tokenhook's client credentials; answering \"could not check\""
            );
            return Err(self.unavailable(format!(
                "the endpoint refused tokenhook's client credentials ({})",
                a.status
            )));
        }
        if a.status != http::StatusCode::OK {
            permit.finish(if a.status.is_server_error() {
                result::SERVER_ERROR
            } else {
                result::INVALID
            });
            return Err(self.unavailable(format!("the endpoint answered {}", a.status)));
        }
        let claims = match serde_json::from_slice::<Map<String, Value>>(&a.body) {
            Ok(c) if matches!(c.get("active"), Some(Value::Bool(_))) => c,
            _ => {
                permit.finish(result::INVALID);
                return Err(self.unavailable(
                    "the answer is not an introspection response (no boolean \"active\")".into(),
                ));
            }
        };
        permit.finish(result::SUCCESS);
        Ok(self.judge(claims, now))
    }

    /// RFC 7662 and the configured checks over a response, then the claim mappings.
    fn judge(&self, claims: Map<String, Value>, now: UnixTime) -> Outcome {
        let s = &self.inner.settings;
        let no = |reason: RejectReason, detail: String| {
            Outcome::Rejected(Rejection {
                reason,
                detail: format!("introspection {}: {detail}", s.name),
            })
        };
        if claims.get("active") != Some(&Value::Bool(true)) {
            return no(RejectReason::UpstreamRejected, "token not active".into());
        }
        let time = |name: &str| -> Result<Option<u64>, String> {
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => n
                    .as_f64()
                    .filter(|f| *f >= 0.0)
                    .map(|f| Some(f as u64))
                    .ok_or_else(|| format!("{name} is not a valid time")),
                Some(_) => Err(format!("{name} is not a number")),
            }
        };
        let (exp, nbf) = match (time("exp"), time("nbf")) {
            (Ok(e), Ok(n)) => (e, n),
            (Err(e), _) | (_, Err(e)) => return no(RejectReason::Malformed, e),
        };
        let leeway = self.inner.leeway;
        if let Some(exp) = exp
            && now.0 >= exp.saturating_add(leeway)
        {
            return no(RejectReason::Expired, format!("expired at {exp}"));
        }
        if let Some(nbf) = nbf
            && nbf > now.0.saturating_add(leeway)
        {
            return no(RejectReason::NotYetValid, format!("not valid before {nbf}"));
        }
        if let Some(issuer) = &s.issuer
            && let Some(iss) = claims.get("iss")
            && iss.as_str() != Some(issuer.as_str())
        {
            return no(
                RejectReason::ClaimRule,
                format!("iss {iss} is not {issuer:?}"),
            );
        }
        if !s.audiences.is_empty() {
            let auds = super::oidc::aud_values(&claims);
            if !auds.iter().any(|a| s.audiences.iter().any(|c| c == a)) {
                return no(
                    RejectReason::AudienceMismatch,
                    format!("aud {auds:?} not in {:?}", s.audiences),
                );
            }
        }
        if !s.required_scopes.is_empty() {
            let scope = claims.get("scope").and_then(Value::as_str).unwrap_or("");
            let have: Vec<&str> = scope.split(' ').collect();
            if let Some(missing) = s
                .required_scopes
                .iter()
                .find(|r| !have.contains(&r.as_str()))
            {
                return no(
                    RejectReason::ClaimRule,
                    format!("scope {missing:?} not granted"),
                );
            }
        }
        let claims_v = Value::Object(claims);
        let user = match self.inner.mapper.map(&claims_v, &self.inner.cel) {
            Ok(u) => u,
            Err(r) => return Outcome::Rejected(r),
        };
        Outcome::Authenticated(Identity {
            user,
            // Like JWT issuers: audience-agnostic towards the review (aud is checked
            // against the configured audiences above).
            audiences: None,
            expires_at: exp.map(UnixTime),
            bound: Vec::new(),
        })
    }
}

/// The metric label of a failed call.
fn outbound_label(e: &OutboundError) -> &'static str {
    match e {
        OutboundError::Timeout { .. } => result::TIMEOUT,
        OutboundError::Status { status, .. } if status.is_server_error() => result::SERVER_ERROR,
        OutboundError::Status { .. } | OutboundError::Document { .. } => result::INVALID,
        OutboundError::Transport { .. } | OutboundError::Reset { .. } => result::TRANSPORT,
    }
}

impl Verifier for Introspection {
    async fn verify(&self, token: &Token, now: UnixTime) -> Result<Outcome, VerifyError> {
        self.introspect(token, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verifier(extra: &str) -> (Introspection, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
        let text = format!(
            "url = \"https://idp.example/introspect\"\nissuer = \"https://idp.example\"\nclient_id = \"tokenhook\"\nclient_secret_file = \"secret\"\n{extra}"
        );
        let f: FileSettings = toml::from_str(&text).unwrap();
        let base = dir.path().to_path_buf();
        let s = f.validate(0, &|p| base.join(p)).unwrap();
        let v = Introspection::build(
            &s,
            &KnownIssuers::default(),
            Arc::new(CelEnv::new().unwrap()),
            Duration::from_secs(60),
            &Metrics::new().unwrap(),
        )
        .unwrap();
        (v, dir)
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn responses_are_judged() {
        let now = UnixTime(1_000_000);
        let (v, _dir) = verifier(
            "audiences = [\"api\"]\nrequired_scopes = [\"k8s\"]\n[claimMappings]\ngroups = { claim = \"groups\", prefix = \"idp:\" }\n",
        );
        let good = json!({"active": true, "sub": "alice", "scope": "openid k8s", "aud": ["api"], "iss": "https://idp.example", "exp": 1_000_100, "groups": ["dev"]});
        match v.judge(claims(good.clone()), now) {
            Outcome::Authenticated(id) => {
                assert_eq!(id.user.username, "alice");
                assert_eq!(id.user.groups, vec!["idp:dev"]);
                assert_eq!(id.expires_at, Some(UnixTime(1_000_100)));
            }
            other => panic!("{other:?}"),
        }
        let reason = |c: Value| match v.judge(claims(c), now) {
            Outcome::Rejected(r) => r.reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(json!({"active": false})),
            RejectReason::UpstreamRejected
        );
        let mut c = good.clone();
        c["exp"] = json!(999_000);
        assert_eq!(reason(c), RejectReason::Expired);
        let mut c = good.clone();
        c["exp"] = json!(999_990); // within the leeway
        assert!(matches!(v.judge(claims(c), now), Outcome::Authenticated(_)));
        let mut c = good.clone();
        c["aud"] = json!("other");
        assert_eq!(reason(c), RejectReason::AudienceMismatch);
        let mut c = good.clone();
        c["scope"] = json!("openid");
        assert_eq!(reason(c), RejectReason::ClaimRule);
        let mut c = good.clone();
        c["iss"] = json!("https://evil.example");
        assert_eq!(reason(c), RejectReason::ClaimRule);
        let mut c = good;
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(reason(c), RejectReason::ClaimRule);
    }

    #[test]
    fn client_authentication_forms() {
        let now = UnixTime(1_000_000);
        let t = Token::new("opaque".into());
        let (v, _dir) = verifier("");
        let (body, headers) = v
            .request(&t, "https://idp.example/introspect", now)
            .unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "token=opaque&token_type_hint=access_token"
        );
        assert_eq!(
            headers[0].1.to_str().unwrap(),
            format!("Basic {}", STANDARD.encode("tokenhook:s3cret"))
        );
        let (v, _dir) = verifier("client_auth = \"client_secret_post\"");
        let (body, headers) = v
            .request(&t, "https://idp.example/introspect", now)
            .unwrap();
        assert!(headers.is_empty());
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "token=opaque&token_type_hint=access_token&client_id=tokenhook&client_secret=s3cret"
        );
    }

    #[test]
    fn private_key_jwt_assertion_is_signed_for_the_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let pem = crate::mint::keys::generate_pem(crate::mint::keys::Alg::ES256).unwrap();
        let key = dir.path().join("client.key");
        std::fs::write(&key, &pem).unwrap();
        let f: FileSettings = toml::from_str(&format!(
            "issuer = \"https://idp.example\"\nurl = \"https://idp.example/introspect\"\nclient_id = \"tokenhook\"\nclient_auth = \"private_key_jwt\"\nprivate_key_file = {:?}\n",
            key.display().to_string()
        ))
        .unwrap();
        let s = f.validate(0, &|p| p.clone()).unwrap();
        let v = Introspection::build(
            &s,
            &KnownIssuers::default(),
            Arc::new(CelEnv::new().unwrap()),
            Duration::from_secs(60),
            &Metrics::new().unwrap(),
        )
        .unwrap();
        let (body, headers) = v
            .request(
                &Token::new("opaque".into()),
                "https://idp.example/introspect",
                UnixTime(1_000_000),
            )
            .unwrap();
        assert!(headers.is_empty());
        let form: std::collections::HashMap<String, String> =
            form_urlencoded::parse(&body).into_owned().collect();
        assert_eq!(form["client_id"], "tokenhook");
        assert_eq!(
            form["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        let keys = crate::mint::keys::KeySet::load(&key, &[]).unwrap();
        let (payload, _) = josekit::jws::deserialize_compact(
            &form["client_assertion"],
            &*keys.signing.public.verifier,
        )
        .unwrap();
        let claims: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(claims["iss"], "tokenhook");
        assert_eq!(claims["sub"], "tokenhook");
        assert_eq!(
            claims["aud"],
            json!(["https://idp.example/introspect", "https://idp.example"])
        );
        assert_eq!(claims["exp"], 1_000_060);
    }

    #[test]
    fn every_problem_is_reported() {
        let f: FileSettings = toml::from_str(
            "client_id = \"\"\nclient_auth = \"magic\"\nurl = \"http://x\"\ntoken_regex = \"(\"\n[claimMappings]\nusername = { expression = \"claims.(\" }\n",
        )
        .unwrap();
        let errs = f.validate(3, &|p| p.clone()).unwrap_err();
        for want in [
            "verifiers[3].url",
            "verifiers[3].client_id",
            "verifiers[3].client_auth",
            "verifiers[3].token_regex",
            "verifiers[3].claimMappings.username.expression",
        ] {
            assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
        }
    }
}

#[cfg(test)]
mod render_tests {
    use crate::config::file::{FileConfig, VerifierConfig, render_commented};

    #[test]
    fn upstream_verifiers_render_and_read_back() {
        let text = r#"
[[verifiers]]
type = "tokenreview"
name = "cluster-b"
kubeconfig = "b.kubeconfig"
version = "v1"
username_prefix = "b:"
token_prefix = "k8s-aws-v1."

[[verifiers]]
type = "introspection"
issuer = "https://idp.example"
client_id = "tokenhook"
client_secret_file = "secret"
required_scopes = ["k8s"]
claimValidationRules = [{ expression = "claims.client_id != 'x'", message = "no" }]
token_regex = "^o"

[verifiers.claimMappings]
username = { claim = "sub", prefix = "idp:" }
"#;
        let f: FileConfig = toml::from_str(text).unwrap();
        assert!(matches!(f.verifiers[0], VerifierConfig::TokenReview(_)));
        assert!(matches!(f.verifiers[1], VerifierConfig::Introspection(_)));
        let rendered = render_commented(&f);
        let back: FileConfig = toml::from_str(&rendered).unwrap();
        assert_eq!(back.verifiers, f.verifiers, "{rendered}");
        // Unknown keys are errors here too.
        let bad = text.replace("version = \"v1\"", "versoin = \"v1\"");
        assert!(toml::from_str::<FileConfig>(&bad).is_err());
    }
}
