//! Turns the file shape into a `Config` of parsed types, reporting every problem at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{FileConfig, MintSection, RegistrySource, VerifierConfig};
use crate::cache::CacheConfig;
use crate::mint::accounts::Registry;
use crate::mint::policy::Policy;
use crate::verify::authn_config::{JwtAuthenticator, validate as validate_jwt};
use crate::verify::oidc::{JwtSettings, KeyOverride};

/// Validated configuration: everything parsed, nothing left to check at run time.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Serving certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Serving key (PEM).
    pub key_file: PathBuf,
    /// Extra review path.
    pub webhook_path: String,
    /// Sizes and times.
    pub limits: Limits,
    /// File poll interval.
    pub reload_interval: Duration,
    /// Caller authentication.
    pub callers: CallerPolicy,
    /// kube-apiserver's API audiences.
    pub api_audiences: Vec<String>,
    /// Verdict cache.
    pub cache: CacheConfig,
    /// Logging.
    pub log: LogConfig,
    /// The chain, in order.
    pub verifiers: Vec<VerifierSpec>,
    /// Minting, when `[mint] issuer` is set.
    pub mint: Option<MintConfig>,
    /// JWT issuer settings.
    pub jwt: JwtSettings,
    /// Metrics listener and access.
    pub metrics: MetricsConfig,
}

/// Validated `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Separate listener, if any.
    pub listen: Option<SocketAddr>,
    /// No credential needed.
    pub anonymous: bool,
}

/// Validated `[mint]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MintConfig {
    /// `iss`.
    pub issuer: String,
    /// Discovery `jwks_uri`.
    pub jwks_uri: String,
    /// Active key file.
    pub signing_key_file: PathBuf,
    /// Verify-only key files.
    pub verify_key_files: Vec<PathBuf>,
    /// Revocation list file.
    pub revocations_file: Option<PathBuf>,
    /// Global ceiling (None = none).
    pub max_expiration_seconds: Option<u64>,
    /// kube's extend-token-expiration.
    pub extend_expiration: bool,
    /// Accounts (`source = "static"`; empty with `kubernetes`).
    pub registry: Registry,
    /// `Some(kubeconfig)` with `source = "kubernetes"` (`Some(None)`: in-cluster).
    pub cluster: Option<Option<PathBuf>>,
    /// Who may mint.
    pub policy: Policy,
}

/// Request and connection limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest body, bytes.
    pub max_body_bytes: u64,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Request head deadline.
    pub header_read_timeout: Duration,
    /// Request body deadline.
    pub body_read_timeout: Duration,
    /// Idle connection deadline.
    pub idle_timeout: Duration,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Concurrent API requests before 429.
    pub max_in_flight: usize,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
}

/// Who may call the review endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerPolicy {
    /// CA for client certificates.
    pub client_ca: Option<PathBuf>,
    /// Required CN/DNS SAN, if any.
    pub allowed_names: Vec<String>,
    /// Accepted caller bearer tokens.
    pub tokens_file: Option<PathBuf>,
}

impl CallerPolicy {
    /// Neither certificates nor tokens are configured: the endpoint is open.
    pub fn is_open(&self) -> bool {
        self.client_ca.is_none() && self.tokens_file.is_none()
    }
}

/// Logging choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// JSON lines (else human text).
    pub json: bool,
    /// tracing filter directive.
    pub filter: String,
}

/// One verifier to build.
#[derive(Debug, Clone, PartialEq)]
pub enum VerifierSpec {
    /// Static token CSV.
    Static {
        /// The file.
        file: PathBuf,
    },
    /// Tokens minted by `[mint]`.
    ServiceAccount,
    /// One inline JWT issuer.
    Jwt {
        /// kube's `jwt[]` entry.
        authenticator: Box<JwtAuthenticator>,
        /// Key source override.
        keys: KeyOverride,
    },
    /// A kube AuthenticationConfiguration file.
    AuthenticationConfig {
        /// The file.
        file: PathBuf,
    },
    /// An upstream TokenReview webhook.
    TokenReview(Box<crate::verify::tokenreview::Settings>),
    /// An OAuth 2.0 introspection endpoint.
    Introspection(Box<crate::verify::introspection::Settings>),
}

/// Paths that `webhook_path` may not shadow.
const RESERVED_PATHS: &[&str] = &["/metrics", "/livez", "/readyz", "/healthz"];

/// Validates `f`, collecting every problem. Relative paths are resolved against `base` (the
/// configuration file's directory).
///
/// # Errors
/// One line per problem, naming the key.
pub fn validate(f: &FileConfig, base: &Path) -> Result<Config, Vec<String>> {
    let mut errs = Vec::new();
    let rel = |p: &PathBuf| base.join(p);
    let s = &f.server;
    let listen = s
        .listen
        .parse::<SocketAddr>()
        .map_err(|e| {
            errs.push(format!(
                "server.listen: {:?} is not an address:port ({e})",
                s.listen
            ))
        })
        .ok();
    let cert_file = s.cert_file.as_ref().map(rel);
    let key_file = s.key_file.as_ref().map(rel);
    if cert_file.is_none() {
        errs.push("server.cert_file: required (PEM certificate chain to serve)".into());
    }
    if key_file.is_none() {
        errs.push("server.key_file: required (PEM private key for server.cert_file)".into());
    }
    if !s.webhook_path.starts_with('/') || s.webhook_path.contains(['?', '#']) {
        errs.push(format!(
            "server.webhook_path: {:?} must be a path starting with '/'",
            s.webhook_path
        ));
    } else if RESERVED_PATHS.contains(&s.webhook_path.as_str())
        || s.webhook_path.starts_with("/apis/")
    {
        errs.push(format!(
            "server.webhook_path: {:?} collides with a path tokenhook already serves",
            s.webhook_path
        ));
    }
    for (key, v) in [
        ("server.max_body_bytes", s.max_body_bytes),
        (
            "server.handshake_timeout_seconds",
            s.handshake_timeout_seconds,
        ),
        (
            "server.header_read_timeout_seconds",
            s.header_read_timeout_seconds,
        ),
        (
            "server.body_read_timeout_seconds",
            s.body_read_timeout_seconds,
        ),
        ("server.idle_timeout_seconds", s.idle_timeout_seconds),
        ("server.max_connections", s.max_connections as u64),
        ("server.max_in_flight", s.max_in_flight as u64),
        ("server.reload_interval_ms", s.reload_interval_ms),
    ] {
        if v == 0 {
            errs.push(format!("{key}: must be greater than 0"));
        }
    }
    let c = &f.callers;
    if !c.allowed_names.is_empty() && c.client_ca_file.is_none() {
        errs.push("callers.allowed_names: set, but callers.client_ca_file is not: names are read from client certificates".into());
    }
    if c.allowed_names.iter().any(String::is_empty) {
        errs.push("callers.allowed_names: contains an empty name".into());
    }
    if f.review.api_audiences.iter().any(String::is_empty) {
        errs.push("review.api_audiences: contains an empty audience".into());
    }
    let cache = &f.cache;
    if cache.enabled {
        if cache.max_entries == 0 {
            errs.push("cache.max_entries: must be greater than 0 when the cache is enabled".into());
        }
        if cache.ttl_seconds == 0 {
            errs.push("cache.ttl_seconds: must be greater than 0 when the cache is enabled (set cache.enabled = false instead)".into());
        }
    }
    let json = match f.log.format.as_str() {
        "json" => true,
        "text" => false,
        other => {
            errs.push(format!("log.format: {other:?} is not \"json\" or \"text\""));
            true
        }
    };
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&f.log.level) {
        errs.push(format!(
            "log.level: {:?} is not a valid filter ({e})",
            f.log.level
        ));
    }
    if f.verifiers.is_empty() {
        errs.push(
            "verifiers: empty; add at least one [[verifiers]] entry (e.g. type = \"static\")"
                .into(),
        );
    }
    let mut verifiers = Vec::with_capacity(f.verifiers.len());
    for (i, v) in f.verifiers.iter().enumerate() {
        let spec = match v {
            VerifierConfig::Static { file } => VerifierSpec::Static { file: rel(file) },
            VerifierConfig::ServiceAccount {} => VerifierSpec::ServiceAccount,
            VerifierConfig::Jwt {
                issuer,
                claim_validation_rules,
                claim_mappings,
                user_validation_rules,
                jwks_url,
                jwks_file,
                jwks,
            } => VerifierSpec::Jwt {
                authenticator: Box::new(JwtAuthenticator {
                    issuer: issuer.clone(),
                    claim_validation_rules: claim_validation_rules.clone(),
                    claim_mappings: claim_mappings.clone(),
                    user_validation_rules: user_validation_rules.clone(),
                }),
                keys: KeyOverride {
                    jwks_url: jwks_url.clone(),
                    jwks_file: jwks_file.as_ref().map(&rel),
                    jwks: jwks.clone(),
                },
            },
            VerifierConfig::AuthenticationConfig { file } => {
                VerifierSpec::AuthenticationConfig { file: rel(file) }
            }
            VerifierConfig::TokenReview(t) => match t.validate(i, &rel) {
                Ok(settings) => VerifierSpec::TokenReview(Box::new(settings)),
                Err(e) => {
                    errs.extend(e);
                    continue;
                }
            },
            VerifierConfig::Introspection(t) => match t.validate(i, &rel) {
                Ok(settings) => VerifierSpec::Introspection(Box::new(settings)),
                Err(e) => {
                    errs.extend(e);
                    continue;
                }
            },
        };
        verifiers.push(spec);
    }
    let mut names = std::collections::HashSet::new();
    for (i, v) in verifiers.iter().enumerate() {
        let name = match v {
            VerifierSpec::TokenReview(t) => &t.name,
            VerifierSpec::Introspection(t) => &t.name,
            _ => continue,
        };
        if !names.insert(name.clone()) {
            errs.push(format!(
                "verifiers[{i}].name: Duplicate value: {name:?} (upstream names label metrics)"
            ));
        }
    }
    for (i, v) in verifiers.iter().enumerate() {
        if let VerifierSpec::Jwt {
            authenticator,
            keys,
            ..
        } = v
        {
            errs.extend(
                validate_jwt(std::slice::from_ref(&**authenticator), "jwt")
                    .into_iter()
                    .map(|e| e.replacen("jwt[0]", &format!("verifiers[{i}]"), 1)),
            );
            let sources = [
                keys.jwks_url.is_some(),
                keys.jwks_file.is_some(),
                keys.jwks.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() > 1 {
                errs.push(format!(
                    "verifiers[{i}]: set at most one of jwks_url, jwks_file and jwks"
                ));
            }
        }
    }
    let mut issuers = std::collections::HashSet::new();
    for (i, v) in verifiers.iter().enumerate() {
        if let VerifierSpec::Jwt { authenticator, .. } = v
            && !issuers.insert(authenticator.issuer.url.clone())
        {
            errs.push(format!(
                "verifiers[{i}].issuer.url: Duplicate value: {:?}",
                authenticator.issuer.url
            ));
        }
    }
    let mint = validate_mint(&f.mint, &rel, &mut errs);
    let metrics_listen = match &f.metrics.listen {
        None => None,
        Some(l) => match l.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                errs.push(format!(
                    "metrics.listen: {l:?} is not an address:port ({e})"
                ));
                None
            }
        },
    };
    if mint.is_none() && verifiers.contains(&VerifierSpec::ServiceAccount) {
        errs.push(
            "verifiers: type = \"service_account\" needs [mint] issuer and signing_key_file".into(),
        );
    }

    match (listen, cert_file, key_file) {
        (Some(listen), Some(cert_file), Some(key_file)) if errs.is_empty() => Ok(Config {
            listen,
            cert_file,
            key_file,
            webhook_path: s.webhook_path.clone(),
            limits: Limits {
                max_body_bytes: s.max_body_bytes,
                handshake_timeout: Duration::from_secs(s.handshake_timeout_seconds),
                header_read_timeout: Duration::from_secs(s.header_read_timeout_seconds),
                body_read_timeout: Duration::from_secs(s.body_read_timeout_seconds),
                idle_timeout: Duration::from_secs(s.idle_timeout_seconds),
                max_connections: s.max_connections,
                max_in_flight: s.max_in_flight,
                shutdown_grace: Duration::from_secs(s.shutdown_grace_seconds),
            },
            reload_interval: Duration::from_millis(s.reload_interval_ms),
            callers: CallerPolicy {
                client_ca: c.client_ca_file.as_ref().map(rel),
                allowed_names: c.allowed_names.clone(),
                tokens_file: c.tokens_file.as_ref().map(rel),
            },
            api_audiences: f.review.api_audiences.clone(),
            cache: CacheConfig {
                enabled: cache.enabled,
                max_entries: cache.max_entries,
                ttl: Duration::from_secs(cache.ttl_seconds),
                negative_ttl: Duration::from_secs(cache.negative_ttl_seconds),
            },
            log: LogConfig {
                json,
                filter: f.log.level.clone(),
            },
            verifiers,
            mint,
            metrics: MetricsConfig {
                listen: metrics_listen,
                anonymous: f.metrics.anonymous,
            },
            jwt: JwtSettings {
                leeway: Duration::from_secs(f.jwt.leeway_seconds),
                refresh_interval: Duration::from_secs(f.jwt.refresh_interval_seconds.max(1)),
                min_refresh_interval: Duration::from_secs(f.jwt.min_refresh_interval_seconds),
                fetch_timeout: Duration::from_secs(f.jwt.fetch_timeout_seconds.max(1)),
            },
        }),
        _ => Err(errs),
    }
}

fn validate_mint(
    m: &MintSection,
    rel: &dyn Fn(&PathBuf) -> PathBuf,
    errs: &mut Vec<String>,
) -> Option<MintConfig> {
    let Some(issuer) = &m.issuer else {
        let set = m.signing_key_file.is_some()
            || !m.verify_key_files.is_empty()
            || m.revocations_file.is_some()
            || !m.service_accounts.is_empty()
            || m.registry != Default::default()
            || !m.policy.is_empty()
            || m.jwks_uri.is_some();
        if set {
            errs.push("mint.issuer: required when any other [mint] setting is given".into());
        }
        return None;
    };
    let https_url = |s: &str| {
        s.strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(['?', '#', ' ']))
    };
    let before = errs.len();
    if !https_url(issuer) {
        errs.push(format!(
            "mint.issuer: {issuer:?} must be an https:// URL without query or fragment"
        ));
    }
    let jwks_uri = m
        .jwks_uri
        .clone()
        .unwrap_or_else(|| format!("{}/openid/v1/jwks", issuer.trim_end_matches('/')));
    if !https_url(&jwks_uri) {
        errs.push(format!(
            "mint.jwks_uri: {jwks_uri:?} must be an https:// URL"
        ));
    }
    if m.signing_key_file.is_none() {
        errs.push("mint.signing_key_file: required when mint.issuer is set".into());
    }
    let registry = Registry::new(&m.service_accounts)
        .map_err(|e| errs.extend(e))
        .ok();
    let cluster = match m.registry.source {
        RegistrySource::Static => {
            if m.registry.kubeconfig.is_some() {
                errs.push(
                    "mint.registry.kubeconfig: only used with mint.registry.source = \"kubernetes\""
                        .into(),
                );
            }
            None
        }
        RegistrySource::Kubernetes => {
            if !m.service_accounts.is_empty() {
                errs.push("mint.service_accounts: not used with mint.registry.source = \"kubernetes\" (the cluster's own accounts are)".into());
            }
            Some(m.registry.kubeconfig.as_ref().map(rel))
        }
    };
    for (i, r) in m.policy.iter().enumerate() {
        if r.users.is_empty() && r.groups.is_empty() {
            errs.push(format!(
                "mint.policy[{i}]: names no users and no groups, so it can never match"
            ));
        }
        if r.max_expiration_seconds.is_some_and(|m| m < 600) {
            errs.push(format!("mint.policy[{i}].max_expiration_seconds: below the 600-second minimum of every token"));
        }
    }
    if m.max_expiration_seconds != 0 && m.max_expiration_seconds < 600 {
        errs.push("mint.max_expiration_seconds: below the 600-second minimum of every token (0 = no limit)".into());
    }
    if errs.len() != before {
        return None;
    }
    Some(MintConfig {
        issuer: issuer.clone(),
        jwks_uri,
        signing_key_file: rel(m.signing_key_file.as_ref()?),
        verify_key_files: m.verify_key_files.iter().map(rel).collect(),
        revocations_file: m.revocations_file.as_ref().map(rel),
        max_expiration_seconds: (m.max_expiration_seconds != 0).then_some(m.max_expiration_seconds),
        extend_expiration: m.extend_expiration,
        registry: registry?,
        cluster,
        policy: Policy::new(m.policy.clone()),
    })
}
