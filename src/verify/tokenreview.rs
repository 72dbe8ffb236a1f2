//! The `tokenreview` verifier: forwards selected tokens to an upstream TokenReview webhook described by a kube-apiserver webhook kubeconfig, and applies kube's webhook-client rules to the answer.
//!
//! What kube-apiserver does with `--authentication-token-webhook-config-file`
//! (`k8s.io/apiserver/plugin/pkg/authenticator/token/webhook`), behind tokenhook's chain:
//! the review's `spec.audiences` are forwarded; with audiences asked, the answer's
//! `status.audiences` (or, when it gives none, the API audiences) must intersect them; an
//! unauthenticated answer is a plain "no"; retries follow kube's webhook backoff (500 ms,
//! ×1.5, jitter 0.2, 5 steps) on connection resets, 429, 500, 504 and answers carrying
//! `Retry-After`, never past this verifier's `timeout_seconds`. Every failure is "could not
//! check" (503, never cached); 401/403 means tokenhook's credentials are wrong and is
//! logged as a configuration error. The kubeconfig and the files it names are re-read when
//! they change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use serde::{Deserialize, Serialize};

use super::selector::{KnownIssuers, Selector, SelectorConfig};
use super::{Digest, Identity, Outcome, RejectReason, Rejection, Token, Verifier, VerifyError};
use crate::clock::UnixTime;
use crate::k8s::token_review::{ApiVersion, TokenReviewStatus, UserInfo};
use crate::metrics::Metrics;
use crate::outbound::{
    Answer, Backoff, BreakerConfig, HttpsClient, OutboundError, TlsOptions, Upstream,
    limit_problems, result,
};

/// `[[verifiers]] type = "tokenreview"` as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// Name in metrics, logs and `/readyz?verbose`. Default `tokenreview-<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A kubeconfig in the format of kube-apiserver's
    /// `--authentication-token-webhook-config-file`. Required; reloaded when it changes.
    pub kubeconfig: PathBuf,
    /// `v1` or `v1beta1` (default, as kube-apiserver's `--authentication-token-webhook-version`).
    #[serde(default = "default_version")]
    pub version: String,
    /// Put before every username the upstream answers (e.g. `cluster-b:`). Default empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username_prefix: String,
    /// Put before every group the upstream answers. Default empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub groups_prefix: String,
    /// Only tokens with this prefix are forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_prefix: Option<String>,
    /// Only tokens matching this regular expression are forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_regex: Option<String>,
    /// Only JWTs with this `iss` are forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_issuer: Option<String>,
    /// Time for one review's upstream calls, retries included, in seconds. Default 10.
    #[serde(default = "crate::outbound::file_defaults::timeout_seconds")]
    pub timeout_seconds: u64,
    /// Calls to this upstream at once; more wait (until the timeout). Default 100.
    #[serde(default = "crate::outbound::file_defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// Consecutive failed calls that open the circuit (0: never). Default 5.
    #[serde(default = "crate::outbound::file_defaults::failure_threshold")]
    pub failure_threshold: u32,
    /// Seconds an open circuit fails fast before one probe call. Default 10.
    #[serde(default = "crate::outbound::file_defaults::cool_down_seconds")]
    pub cool_down_seconds: u64,
    /// Lifetime of this upstream's "yes" in the verdict cache, in seconds. Default: `[cache] ttl_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl_seconds: Option<u64>,
}

fn default_version() -> String {
    "v1beta1".into()
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Metric label and log name.
    pub name: String,
    /// The webhook kubeconfig (absolute or relative to the working directory).
    pub kubeconfig: PathBuf,
    /// Version of the reviews sent.
    pub version: ApiVersion,
    /// Username prefix.
    pub username_prefix: String,
    /// Group prefix.
    pub groups_prefix: String,
    /// Which tokens are forwarded.
    pub selector: SelectorConfig,
    /// Budget of one review.
    pub timeout: Duration,
    /// Concurrency limit.
    pub max_in_flight: usize,
    /// Circuit breaker.
    pub breaker: BreakerConfig,
    /// Positive cache lifetime, when not the global one.
    pub cache_ttl: Option<Duration>,
}

impl FileSettings {
    /// Validates, resolving paths with `rel`; every problem is reported, prefixed with `path`.
    ///
    /// # Errors
    /// The problems.
    pub fn validate(
        &self,
        index: usize,
        rel: &dyn Fn(&PathBuf) -> PathBuf,
    ) -> Result<Settings, Vec<String>> {
        let path = format!("verifiers[{index}]");
        let mut errs = Vec::new();
        let version = match self.version.as_str() {
            "v1" => Some(ApiVersion::V1),
            "v1beta1" => Some(ApiVersion::V1beta1),
            other => {
                errs.push(format!(
                    "{path}.version: {other:?} is not \"v1\" or \"v1beta1\""
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
        if let Some(n) = &self.name
            && !valid_name(n)
        {
            errs.push(format!(
                "{path}.name: {n:?} must be 1-63 characters of a-z, 0-9, '-', '_' or '.'"
            ));
        }
        // Read when the server starts (loading configuration reads no key material).
        if self.kubeconfig.as_os_str().is_empty() {
            errs.push(format!("{path}.kubeconfig: Required value"));
        }
        let kubeconfig = rel(&self.kubeconfig);
        match version {
            Some(version) if errs.is_empty() => Ok(Settings {
                name: self
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("tokenreview-{index}")),
                kubeconfig,
                version,
                username_prefix: self.username_prefix.clone(),
                groups_prefix: self.groups_prefix.clone(),
                selector,
                timeout: Duration::from_secs(self.timeout_seconds),
                max_in_flight: self.max_in_flight,
                breaker,
                cache_ttl: self.cache_ttl_seconds.map(Duration::from_secs),
            }),
            _ => Err(errs),
        }
    }
}

/// A name usable as a metric label value.
pub(crate) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// The parts of a kubeconfig file a webhook client reads (client-go's names).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KubeconfigFile {
    clusters: Vec<NamedCluster>,
    users: Vec<NamedUser>,
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    current_context: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
    proxy_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct User {
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    username: Option<String>,
    password: Option<String>,
    exec: Option<serde_yaml_ng::Value>,
    auth_provider: Option<serde_yaml_ng::Value>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("User { .. }")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Context {
    cluster: String,
    user: String,
}

/// Where and how to call: the current kubeconfig, loaded.
struct Target {
    url: String,
    client: HttpsClient,
    bearer: Option<HeaderValue>,
    /// Digest over the kubeconfig and every file it names, to notice changes.
    digest: Digest,
}

/// Per-request timeout kube's webhook client sets (`defaultRequestTimeout`); the review's
/// own budget usually ends calls sooner.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Target {
    /// Reads `path` and the files it names, as client-go would for a webhook.
    fn load(path: &Path) -> Result<Target, String> {
        let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mut digest_input = text.clone();
        let file: KubeconfigFile = serde_yaml_ng::from_slice(&text)
            .map_err(|e| format!("{} is not a kubeconfig: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut read = |p: &str, what: &str| -> Result<Vec<u8>, String> {
            let full = dir.join(p);
            let b = std::fs::read(&full)
                .map_err(|e| format!("reading {what} {}: {e}", full.display()))?;
            digest_input.extend_from_slice(&b);
            Ok(b)
        };
        let ctx_name = if file.current_context.is_empty() {
            match file.contexts.as_slice() {
                [only] => only.name.clone(),
                _ => return Err("no current-context".into()),
            }
        } else {
            file.current_context.clone()
        };
        let ctx = file
            .contexts
            .iter()
            .find(|c| c.name == ctx_name)
            .ok_or_else(|| format!("context {ctx_name:?} not found"))?;
        let cluster = file
            .clusters
            .iter()
            .find(|c| c.name == ctx.context.cluster)
            .map(|c| &c.cluster)
            .ok_or_else(|| format!("cluster {:?} not found", ctx.context.cluster))?;
        let user = file
            .users
            .iter()
            .find(|u| u.name == ctx.context.user)
            .map(|u| &u.user);
        if !cluster.server.starts_with("https://") {
            return Err(format!(
                "cluster {:?}: server {:?} is not an https URL",
                ctx.context.cluster, cluster.server
            ));
        }
        if cluster.insecure_skip_tls_verify {
            return Err("insecure-skip-tls-verify is not supported: give the upstream's CA".into());
        }
        if cluster.proxy_url.is_some() {
            return Err("proxy-url is not supported".into());
        }
        let data = |s: &str, what: &str| {
            STANDARD
                .decode(s.trim())
                .map_err(|_| format!("{what}-data is not base64"))
        };
        // As client-go: *-data overrides the file.
        let ca_pem = match (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(d), _) => Some(data(d, "certificate-authority")?),
            (None, Some(p)) => Some(read(p, "certificate-authority")?),
            (None, None) => None,
        };
        let mut tls = TlsOptions {
            ca_pem,
            client_cert: None,
            server_name: cluster.tls_server_name.clone(),
        };
        let mut bearer = None;
        if let Some(u) = user {
            if u.exec.is_some() || u.auth_provider.is_some() {
                return Err("user exec and auth-provider plugins are not supported".into());
            }
            if u.username.is_some() || u.password.is_some() {
                return Err("basic authentication (username/password) is not supported".into());
            }
            let cert = match (&u.client_certificate_data, &u.client_certificate) {
                (Some(d), _) => Some(data(d, "client-certificate")?),
                (None, Some(p)) => Some(read(p, "client-certificate")?),
                (None, None) => None,
            };
            let key = match (&u.client_key_data, &u.client_key) {
                (Some(d), _) => Some(data(d, "client-key")?),
                (None, Some(p)) => Some(read(p, "client-key")?),
                (None, None) => None,
            };
            tls.client_cert = match (cert, key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => return Err("client-certificate and client-key go together".into()),
            };
            // As client-go: a token file, when set, wins over the inline token.
            let token = match (&u.token_file, &u.token) {
                (Some(p), _) => Some(
                    String::from_utf8(read(p, "tokenFile")?)
                        .map_err(|_| "tokenFile is not UTF-8".to_string())?
                        .trim()
                        .to_owned(),
                ),
                (None, Some(t)) => Some(t.clone()),
                (None, None) => None,
            };
            if let Some(t) = token.filter(|t| !t.is_empty()) {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| "token has characters a header cannot carry".to_string())?;
                v.set_sensitive(true);
                bearer = Some(v);
            }
        }
        let client = HttpsClient::with_tls(&tls, REQUEST_TIMEOUT)?;
        Ok(Target {
            url: cluster.server.clone(),
            client,
            bearer,
            digest: Digest::of(&digest_input),
        })
    }
}

/// The verifier. Clones share the upstream, its connections and its circuit.
#[derive(Clone)]
pub struct TokenReview {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    selector: Selector,
    upstream: Arc<Upstream>,
    target: ArcSwap<Target>,
    /// The API audiences (`[review] api_audiences`): kube's implicit audiences.
    api_audiences: Vec<String>,
}

/// What one attempt came to.
enum Step {
    Answer(TokenReviewStatus),
    Retry(String, &'static str),
    Fail(String, &'static str),
    Forbidden(http::StatusCode),
}

impl TokenReview {
    /// Builds the verifier and starts re-reading its kubeconfig every `reload_interval`
    /// (the task ends when the verifier is dropped).
    ///
    /// # Errors
    /// The kubeconfig or a file it names is unusable.
    pub fn build(
        settings: &Settings,
        known: &KnownIssuers,
        api_audiences: &[String],
        metrics: &Metrics,
        reload_interval: Duration,
    ) -> Result<Self, String> {
        let target = Target::load(&settings.kubeconfig)
            .map_err(|e| format!("{}: {e}", settings.kubeconfig.display()))?;
        let v = TokenReview {
            inner: Arc::new(Inner {
                selector: Selector::build(&settings.selector, known)?,
                upstream: Upstream::new(
                    settings.name.clone(),
                    settings.max_in_flight,
                    settings.breaker,
                    Some(metrics.clone()),
                ),
                target: ArcSwap::from_pointee(target),
                api_audiences: api_audiences.to_vec(),
                settings: settings.clone(),
            }),
        };
        tracing::info!(
            upstream = %settings.name,
            url = %v.inner.target.load().url,
            tokens = %settings.selector.describe(),
            "tokenreview upstream configured"
        );
        spawn_reload(Arc::downgrade(&v.inner), reload_interval, metrics.clone());
        Ok(v)
    }

    /// The upstream guard (circuit state for readiness).
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.inner.upstream
    }

    /// Positive cache lifetime, when configured.
    pub fn cache_ttl(&self) -> Option<Duration> {
        self.inner.settings.cache_ttl
    }

    /// Reviews `token` for `audiences` (the review's `spec.audiences`).
    ///
    /// # Errors
    /// The upstream could not answer usably in time, or refused tokenhook (401/403).
    pub async fn review(
        &self,
        token: &Token,
        audiences: &[String],
    ) -> Result<Outcome, VerifyError> {
        let inner = &self.inner;
        if !inner.selector.matches(token) {
            return Ok(Outcome::NotMine);
        }
        let name = &inner.settings.name;
        let unavailable = |reason: String| VerifyError::Unavailable {
            verifier: format!("tokenreview {name}"),
            reason,
        };
        let deadline = Instant::now() + inner.settings.timeout;
        // Encoded once (each retry sends the same bytes), straight from borrowed fields.
        let body = bytes::Bytes::from(
            serde_json::to_vec(&Ask {
                api_version: inner.settings.version.as_str(),
                kind: "TokenReview",
                metadata: AskMeta {
                    creation_timestamp: (),
                },
                spec: AskSpec {
                    token: token.expose(),
                    audiences,
                },
            })
            .map_err(|e| unavailable(format!("encoding the review: {e}")))?,
        );
        let backoff = Backoff::default();
        let mut attempt = 0;
        loop {
            let target = inner.target.load_full();
            let permit = inner
                .upstream
                .admit(deadline)
                .await
                .map_err(|r| unavailable(r.to_string()))?;
            let headers: Vec<_> = target
                .bearer
                .iter()
                .map(|b| (http::header::AUTHORIZATION, b.clone()))
                .collect();
            let answer = target
                .client
                .post(
                    &target.url,
                    "application/json",
                    &headers,
                    body.clone(),
                    Some(deadline),
                )
                .await;
            match judge_answer(answer, inner.settings.version) {
                Step::Answer(status) => {
                    permit.finish(result::SUCCESS);
                    return Ok(self.outcome(status, audiences, token));
                }
                Step::Forbidden(code) => {
                    permit.finish(result::FORBIDDEN);
                    tracing::error!(
                        upstream = %name,
                        url = %target.url,
                        status = code.as_u16(),
                        "configuration error: the upstream refused tokenhook's credentials (fix the user in the kubeconfig); answering \"could not check\""
                    );
                    return Err(unavailable(format!(
                        "the upstream refused tokenhook's credentials ({code})"
                    )));
                }
                Step::Fail(reason, label) => {
                    permit.finish(label);
                    return Err(unavailable(reason));
                }
                Step::Retry(reason, label) => {
                    permit.finish(label);
                    attempt += 1;
                    if attempt >= backoff.steps {
                        return Err(unavailable(format!("{reason} ({attempt} attempts)")));
                    }
                    let wait = backoff.wait(attempt - 1);
                    if Instant::now() + wait >= deadline {
                        return Err(unavailable(format!(
                            "{reason} (no time left to retry after {attempt} attempts)"
                        )));
                    }
                    tracing::debug!(upstream = %name, attempt, wait = ?wait, reason = %reason, "retrying upstream review");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// kube's webhook rules over a usable answer.
    fn outcome(&self, status: TokenReviewStatus, audiences: &[String], token: &Token) -> Outcome {
        let s = &self.inner.settings;
        if !audiences.is_empty() {
            let got = if status.audiences.is_empty() {
                &self.inner.api_audiences
            } else {
                &status.audiences
            };
            // With no API audiences, an answer without audiences is audience-agnostic
            // (tokenhook's rule for every source, see the README); otherwise kube's check.
            let agnostic = status.audiences.is_empty() && got.is_empty();
            let intersects = audiences.iter().any(|a| got.contains(a));
            if !agnostic && !intersects {
                return Outcome::Rejected(Rejection {
                    reason: RejectReason::AudienceMismatch,
                    detail: format!(
                        "upstream {}: requested audiences {audiences:?} not among {got:?}",
                        s.name
                    ),
                });
            }
        }
        if !status.authenticated {
            let mut error = status.error;
            // The upstream's text goes to the log: never if it repeats the token.
            if error.contains(token.expose()) {
                error = "(withheld: it contains the token)".into();
            }
            if let Some((cut, _)) = error.char_indices().nth(256) {
                error.truncate(cut);
            }
            return Outcome::Rejected(Rejection {
                reason: RejectReason::UpstreamRejected,
                detail: format!("upstream {} said no: {error:?}", s.name),
            });
        }
        let u = status.user;
        if u.username.is_empty() {
            return Outcome::Rejected(Rejection {
                reason: RejectReason::Malformed,
                detail: format!("upstream {} authenticated an empty username", s.name),
            });
        }
        let user = UserInfo {
            username: format!("{}{}", s.username_prefix, u.username),
            uid: u.uid,
            groups: u
                .groups
                .into_iter()
                .map(|g| format!("{}{g}", s.groups_prefix))
                .collect(),
            extra: u.extra.into_iter().collect::<BTreeMap<_, _>>(),
        };
        // Audiences were checked above; with none asked, kube checks none, and the
        // identity goes by the API audiences like any audience-agnostic one.
        let audiences =
            (!audiences.is_empty() && !status.audiences.is_empty()).then_some(status.audiences);
        Outcome::Authenticated(Identity {
            user,
            audiences,
            expires_at: None,
            bound: Vec::new(),
        })
    }
}

/// The review sent upstream, as kube-apiserver's webhook client encodes it: Go's zero
/// `ObjectMeta` (`"creationTimestamp":null`) and `audiences` omitted when empty.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Ask<'a> {
    api_version: &'a str,
    kind: &'static str,
    metadata: AskMeta,
    spec: AskSpec<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AskMeta {
    creation_timestamp: (),
}

#[derive(Serialize)]
struct AskSpec<'a> {
    token: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    audiences: &'a [String],
}

/// Classifies one call as kube's webhook client would: which answers are usable, which
/// failures it retries (`DefaultShouldRetry`: connection reset, 500, 504, 429, or a
/// `Retry-After`).
fn judge_answer(answer: Result<Answer, OutboundError>, version: ApiVersion) -> Step {
    let a = match answer {
        Ok(a) => a,
        Err(e @ OutboundError::Reset { .. }) => {
            return Step::Retry(e.to_string(), result::TRANSPORT);
        }
        Err(e @ OutboundError::Timeout { .. }) => {
            return Step::Fail(e.to_string(), result::TIMEOUT);
        }
        Err(e) => return Step::Fail(e.to_string(), result::TRANSPORT),
    };
    let code = a.status;
    if code.is_success() {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answered {
            #[serde(default)]
            api_version: String,
            #[serde(default)]
            kind: String,
            #[serde(default)]
            status: TokenReviewStatus,
        }
        return match serde_json::from_slice::<Answered>(&a.body) {
            Ok(r) if !r.kind.is_empty() && r.kind != "TokenReview" => Step::Fail(
                format!("the upstream answered a {:?}, not a TokenReview", r.kind),
                result::INVALID,
            ),
            Ok(r)
                if !r.api_version.is_empty()
                    && ApiVersion::parse(&r.api_version) != Some(version) =>
            {
                Step::Fail(
                    format!(
                        "the upstream answered {:?} to a {} review",
                        r.api_version,
                        version.as_str()
                    ),
                    result::INVALID,
                )
            }
            Ok(r) => Step::Answer(r.status),
            Err(e) => Step::Fail(
                format!("the upstream's answer is not a TokenReview: {e}"),
                result::INVALID,
            ),
        };
    }
    if code == http::StatusCode::UNAUTHORIZED || code == http::StatusCode::FORBIDDEN {
        return Step::Forbidden(code);
    }
    let reason = format!("the upstream answered {code}");
    let retry = matches!(code.as_u16(), 429 | 500 | 504)
        || (a.headers.contains_key(http::header::RETRY_AFTER)
            && (code.is_server_error() || code == http::StatusCode::TOO_MANY_REQUESTS));
    if retry {
        Step::Retry(reason, result::SERVER_ERROR)
    } else if code.is_server_error() {
        Step::Fail(reason, result::SERVER_ERROR)
    } else {
        Step::Fail(reason, result::INVALID)
    }
}

/// Re-reads the kubeconfig (and the files it names) every `interval`; a change that loads
/// replaces the target, one that does not is logged and the old target kept.
fn spawn_reload(inner: Weak<Inner>, interval: Duration, metrics: Metrics) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(inner) = inner.upgrade() else { return };
            let path = inner.settings.kubeconfig.clone();
            let current = inner.target.load().digest;
            // Reading files is blocking work.
            let loaded = tokio::task::spawn_blocking(move || Target::load(&path)).await;
            match loaded {
                Ok(Ok(t)) if t.digest == current => {}
                Ok(Ok(t)) => {
                    tracing::info!(upstream = %inner.settings.name, url = %t.url, "tokenreview kubeconfig reloaded");
                    inner.target.store(Arc::new(t));
                    metrics.reloaded("tokenreview_kubeconfig", true);
                }
                Ok(Err(e)) => {
                    // Logged once per change rather than every poll would be nicer; a broken
                    // file is rare and the interval is seconds.
                    tracing::warn!(upstream = %inner.settings.name, error = %e, "tokenreview kubeconfig unusable; keeping the loaded one");
                    metrics.reloaded("tokenreview_kubeconfig", false);
                }
                Err(_) => return,
            }
        }
    });
}

impl Verifier for TokenReview {
    /// Without the review's audiences (the chain passes them through
    /// [`TokenReview::review`]).
    async fn verify(&self, token: &Token, _now: UnixTime) -> Result<Outcome, VerifyError> {
        self.review(token, &[]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: u16, body: &str, retry_after: bool) -> Result<Answer, OutboundError> {
        let mut headers = http::HeaderMap::new();
        if retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        Ok(Answer {
            status: http::StatusCode::from_u16(code).unwrap(),
            headers,
            body: bytes::Bytes::from(body.to_owned()),
        })
    }

    #[test]
    fn answers_are_judged_as_kube_does() {
        let v = ApiVersion::V1;
        let ok = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","status":{"authenticated":true,"user":{"username":"a"}}}"#;
        assert!(
            matches!(judge_answer(answer(201, ok, false), v), Step::Answer(s) if s.authenticated)
        );
        assert!(matches!(
            judge_answer(answer(200, ok, false), ApiVersion::V1beta1),
            Step::Fail(_, "invalid")
        ));
        assert!(matches!(
            judge_answer(answer(200, "nope", false), v),
            Step::Fail(_, "invalid")
        ));
        for code in [429, 500, 504] {
            assert!(
                matches!(judge_answer(answer(code, "", false), v), Step::Retry(..)),
                "{code}"
            );
        }
        assert!(matches!(
            judge_answer(answer(503, "", true), v),
            Step::Retry(..)
        ));
        assert!(matches!(
            judge_answer(answer(503, "", false), v),
            Step::Fail(_, "server_error")
        ));
        assert!(matches!(
            judge_answer(answer(502, "", false), v),
            Step::Fail(..)
        ));
        assert!(matches!(
            judge_answer(answer(404, "", false), v),
            Step::Fail(_, "invalid")
        ));
        for code in [401, 403] {
            assert!(matches!(
                judge_answer(answer(code, "", false), v),
                Step::Forbidden(_)
            ));
        }
        let reset = Err(OutboundError::Reset {
            url: "u".into(),
            reason: "reset".into(),
        });
        assert!(matches!(judge_answer(reset, v), Step::Retry(..)));
        let refused = Err(OutboundError::Transport {
            url: "u".into(),
            reason: "refused".into(),
        });
        assert!(matches!(
            judge_answer(refused, v),
            Step::Fail(_, "transport")
        ));
    }

    #[test]
    fn kubeconfig_in_the_webhook_format_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.cert.pem()).unwrap();
        std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
        let kc = dir.path().join("webhook.kubeconfig");
        std::fs::write(
            &kc,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: up\n  cluster:\n    server: https://127.0.0.1:9/authenticate\n    certificate-authority: ca.crt\nusers:\n- name: me\n  user:\n    tokenFile: token\ncontexts:\n- name: c\n  context:\n    cluster: up\n    user: me\ncurrent-context: c\n",
        )
        .unwrap();
        let t = Target::load(&kc).unwrap();
        assert_eq!(t.url, "https://127.0.0.1:9/authenticate");
        assert_eq!(t.bearer.unwrap().to_str().unwrap(), "Bearer s3cret");
        std::fs::write(
            &kc,
            "clusters:\n- name: up\n  cluster:\n    server: http://x\ncontexts:\n- name: c\n  context: {cluster: up, user: me}\ncurrent-context: c\n",
        )
        .unwrap();
        assert!(
            Target::load(&kc)
                .err()
                .unwrap()
                .contains("not an https URL")
        );
        std::fs::write(
            &kc,
            "clusters:\n- name: up\n  cluster:\n    server: https://x\n    insecure-skip-tls-verify: true\ncontexts:\n- name: c\n  context: {cluster: up, user: me}\ncurrent-context: c\n",
        )
        .unwrap();
        assert!(
            Target::load(&kc)
                .err()
                .unwrap()
                .contains("insecure-skip-tls-verify")
        );
    }
}
