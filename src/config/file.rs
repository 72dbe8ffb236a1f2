//! The user-facing configuration shape (TOML / env), every field with its default, unit and env name.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::mint::accounts::AccountEntry;
use crate::mint::policy::Rule;

/// The whole configuration file. Env: `TOKENHOOK_<SECTION>__<KEY>`, e.g. `TOKENHOOK_SERVER__LISTEN`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Listener, TLS and limits.
    pub server: ServerSection,
    /// Who may call the review endpoint.
    pub callers: CallersSection,
    /// Review semantics.
    pub review: ReviewSection,
    /// Verdict cache.
    pub cache: CacheSection,
    /// Logging.
    pub log: LogSection,
    /// Minting service-account tokens (TokenRequest) and OIDC discovery.
    pub mint: MintSection,
    /// JWT/OIDC issuer key handling and time checks.
    pub jwt: JwtSection,
    /// Where `/metrics` is served and who may scrape it.
    pub metrics: MetricsSection,
    /// The verifier chain, in order.
    pub verifiers: Vec<VerifierConfig>,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on (TLS only). Default `0.0.0.0:8443`. Env `TOKENHOOK_SERVER__LISTEN`.
    pub listen: String,
    /// PEM certificate chain served to callers. Required. Env `TOKENHOOK_SERVER__CERT_FILE`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key for `cert_file`. Required. Env `TOKENHOOK_SERVER__KEY_FILE`.
    pub key_file: Option<PathBuf>,
    /// Extra path that answers TokenReviews, besides the two API paths. Default `/authenticate`.
    pub webhook_path: String,
    /// Largest request body accepted, in bytes. Default 3145728 (kube-apiserver's limit).
    pub max_body_bytes: u64,
    /// Time allowed to complete the TLS handshake, in seconds. Default 10.
    pub handshake_timeout_seconds: u64,
    /// Time allowed to send request headers, in seconds. Default 10.
    pub header_read_timeout_seconds: u64,
    /// Time allowed to send a request body, in seconds. Default 10.
    pub body_read_timeout_seconds: u64,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY), in
    /// seconds. Default 120, above the 90 s that Go clients (kube-apiserver) keep idle
    /// connections, so that the client, not tokenhook, normally closes first.
    pub idle_timeout_seconds: u64,
    /// Connections served at once; more wait in the kernel's accept queue. Default 10000.
    pub max_connections: usize,
    /// Reviews, TokenRequests and SelfSubjectReviews processed at once; more are answered
    /// 429 with `Retry-After` (which kube-apiserver retries) instead of queueing. Default 4096.
    pub max_in_flight: usize,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish, in seconds. Default 30.
    pub shutdown_grace_seconds: u64,
    /// How often certificate and token files are checked for changes, in milliseconds. Default 5000.
    pub reload_interval_ms: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "0.0.0.0:8443".into(),
            cert_file: None,
            key_file: None,
            webhook_path: "/authenticate".into(),
            max_body_bytes: 3 * 1024 * 1024,
            handshake_timeout_seconds: 10,
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 10,
            idle_timeout_seconds: 120,
            max_connections: 10_000,
            max_in_flight: 4096,
            shutdown_grace_seconds: 30,
            reload_interval_ms: 5_000,
        }
    }
}

/// `[callers]`: authentication of whoever calls tokenhook (kube-apiserver). With none of
/// these set, anyone who can reach the port may review tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallersSection {
    /// PEM CA bundle; callers may present a client certificate it signed. Env `TOKENHOOK_CALLERS__CLIENT_CA_FILE`.
    pub client_ca_file: Option<PathBuf>,
    /// If non-empty, a client certificate must carry one of these as CN or DNS SAN. Default empty (any).
    pub allowed_names: Vec<String>,
    /// Static-token CSV (same format as the `static` verifier) of bearer tokens callers may send.
    pub tokens_file: Option<PathBuf>,
}

/// `[review]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewSection {
    /// The API server's audiences (kube-apiserver `--api-audiences`). Empty (default): audience-
    /// agnostic identities are answered with empty `status.audiences`, valid for any apiserver.
    pub api_audiences: Vec<String>,
}

/// `[cache]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Cache verdicts at all. Default true.
    pub enabled: bool,
    /// Most verdicts kept. Default 100000.
    pub max_entries: u64,
    /// Lifetime of a "yes", in seconds, never past the token's expiry. Default 120.
    pub ttl_seconds: u64,
    /// Lifetime of a "no", in seconds. Default 10.
    pub negative_ttl_seconds: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            enabled: true,
            max_entries: 100_000,
            ttl_seconds: 120,
            negative_ttl_seconds: 10,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `json` (default) or `text`.
    pub format: String,
    /// A tracing filter: `info` (default), `debug`, `tokenhook=debug,warn`, …
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// A second TLS listener (same certificate) serving only `/metrics` and the health
    /// endpoints; unset (default): `/metrics` is on `server.listen`.
    pub listen: Option<String>,
    /// Scrapes need no credential. Default false: the same caller authentication as
    /// reviews (client certificate from `callers.client_ca_file`, or a `callers.tokens_file` token).
    pub anonymous: bool,
}

/// `[jwt]`: applies to every `jwt` and `authentication_config` verifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSection {
    /// Clock skew tolerated on exp, nbf and iat, in seconds. Default 60.
    pub leeway_seconds: u64,
    /// How often issuers' JWKS are fetched again, in seconds. Default 600.
    pub refresh_interval_seconds: u64,
    /// Least time from the end of one JWKS fetch to the start of a fetch for a token no
    /// key verifies (unknown kid), in seconds; such tokens arriving sooner are answered
    /// "could not check" (503, retried by kube-apiserver), never "no". 0: no floor (each
    /// such token waits for a fetch of its own, shared with concurrent ones). Default 1.
    pub min_refresh_interval_seconds: u64,
    /// Time allowed for one discovery or JWKS fetch, in seconds. Default 10.
    pub fetch_timeout_seconds: u64,
}

impl Default for JwtSection {
    fn default() -> Self {
        JwtSection {
            leeway_seconds: 60,
            refresh_interval_seconds: 600,
            min_refresh_interval_seconds: 1,
            fetch_timeout_seconds: 10,
        }
    }
}

/// `[mint]`: unset `issuer` (default) turns minting, discovery and the `service_account`
/// verifier off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MintSection {
    /// `iss` of minted tokens and the OIDC discovery issuer (an https URL). Env `TOKENHOOK_MINT__ISSUER`.
    pub issuer: Option<String>,
    /// `jwks_uri` published in discovery. Default `<issuer>/openid/v1/jwks`.
    pub jwks_uri: Option<String>,
    /// Active signing key: PEM (PKCS#8, RSA or EC) or JWK with its private part. Reloaded on change.
    pub signing_key_file: Option<PathBuf>,
    /// Further keys tokens may still be verified with (PEM public or private keys, JWK, JWKS).
    pub verify_key_files: Vec<PathBuf>,
    /// Revocation list (`jti=…`, `serviceaccount=NS/NAME`, `uid=…` lines). Reloaded on change.
    pub revocations_file: Option<PathBuf>,
    /// Longest token minted, in seconds (0 = no limit). Default 86400.
    pub max_expiration_seconds: u64,
    /// kube's `--service-account-extend-token-expiration` for pod-bound 3607 s requests. Default false.
    pub extend_expiration: bool,
    /// Where accounts and bindable objects come from (`[mint.registry]`).
    pub registry: RegistrySection,
    /// The service accounts that exist (`source = "static"`).
    pub service_accounts: Vec<AccountEntry>,
    /// Who may mint what. Empty (default): nobody.
    pub policy: Vec<Rule>,
}

impl Default for MintSection {
    fn default() -> Self {
        MintSection {
            issuer: None,
            jwks_uri: None,
            signing_key_file: None,
            verify_key_files: Vec::new(),
            revocations_file: None,
            max_expiration_seconds: 86_400,
            extend_expiration: false,
            registry: RegistrySection::default(),
            service_accounts: Vec::new(),
            policy: Vec::new(),
        }
    }
}

/// `[mint.registry] source`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrySource {
    /// `[[mint.service_accounts]]` (default): for use outside a cluster.
    #[default]
    Static,
    /// Watches of the cluster's ServiceAccounts, Pods, Secrets and Nodes.
    Kubernetes,
}

/// `[mint.registry]`: where accounts and the objects tokens are bound to come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// `static` (default) or `kubernetes`. Env `TOKENHOOK_MINT__REGISTRY__SOURCE`.
    pub source: RegistrySource,
    /// With `kubernetes`: the kubeconfig to use; unset, the pod's in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
}

/// One `[[verifiers]]` entry, tagged by `type`.
#[allow(clippy::large_enum_variant)] // read once at start; boxing would only blur the shape
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum VerifierConfig {
    /// `type = "static"`: a kube `--token-auth-file` CSV (plus hashed entries, audiences, extra).
    Static {
        /// The CSV file; reloaded when it changes.
        file: PathBuf,
    },
    /// `type = "service_account"`: tokens minted by this tokenhook (`[mint]`), all current keys.
    ServiceAccount {},
    /// `type = "jwt"`: one JWT/OIDC issuer, with the fields of a kube
    /// AuthenticationConfiguration `jwt[]` entry (same names), plus where to get keys when not
    /// from discovery.
    Jwt {
        /// `issuer` {url, discoveryURL, certificateAuthority, audiences, audienceMatchPolicy}.
        issuer: crate::verify::authn_config::Issuer,
        /// `claimValidationRules`.
        #[serde(default, rename = "claimValidationRules")]
        claim_validation_rules: Vec<crate::verify::authn_config::ClaimValidationRule>,
        /// `claimMappings`.
        #[serde(default, rename = "claimMappings")]
        claim_mappings: crate::verify::authn_config::ClaimMappings,
        /// `userValidationRules`.
        #[serde(default, rename = "userValidationRules")]
        user_validation_rules: Vec<crate::verify::authn_config::UserValidationRule>,
        /// JWKS URL instead of discovery.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jwks_url: Option<String>,
        /// Local JWKS file instead of discovery (reloaded when it changes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jwks_file: Option<PathBuf>,
        /// Inline JWKS instead of discovery.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jwks: Option<serde_json::Value>,
    },
    /// `type = "authentication_config"`: every `jwt` authenticator of a kube-apiserver
    /// AuthenticationConfiguration file (YAML or JSON), reloaded when it changes. What
    /// `--authentication-config FILE` adds.
    AuthenticationConfig {
        /// The file.
        file: PathBuf,
    },
    /// `type = "tokenreview"`: an upstream TokenReview webhook, described by a kubeconfig in
    /// kube-apiserver's `--authentication-token-webhook-config-file` format.
    #[serde(rename = "tokenreview")]
    TokenReview(crate::verify::tokenreview::FileSettings),
    /// `type = "introspection"`: an OAuth 2.0 token introspection endpoint (RFC 7662).
    Introspection(crate::verify::introspection::FileSettings),
}

/// Renders `c` as a commented TOML file showing every setting.
pub fn render_commented(c: &FileConfig) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let p = |p: &Option<PathBuf>| p.as_ref().map(|p| q(&p.to_string_lossy()));
    let opt = |key: &str, v: Option<String>, example: &str| match v {
        Some(v) => format!("{key} = {v}"),
        None => format!("# {key} = {example}"),
    };
    let list = |v: &[String]| {
        format!(
            "[{}]",
            v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
        )
    };
    let s = &c.server;
    let mut out = format!(
        r#"# tokenhook configuration: every setting, with its default.
# Layering: built-in defaults < this file < TOKENHOOK_<SECTION>__<KEY> env vars < command-line flags.
# Relative paths are relative to this file.

[server]
# Address to listen on. TLS only: there is no plaintext port.
listen = {listen}
# PEM certificate chain and key served to callers; reloaded when the files change.
{cert}
{key}
# Extra path answering TokenReviews (besides /apis/authentication.k8s.io/{{v1,v1beta1}}/tokenreviews).
webhook_path = {webhook_path}
# Largest request body, in bytes (kube-apiserver uses 3 MiB).
max_body_bytes = {max_body}
# Seconds allowed for the TLS handshake, the request headers and the request body.
handshake_timeout_seconds = {hs}
header_read_timeout_seconds = {hr}
body_read_timeout_seconds = {br}
# Seconds a connection may stay idle (no request in flight) before it is closed. HTTP/1.1
# connections waiting for their next request are also bounded by header_read_timeout_seconds.
idle_timeout_seconds = {idle}
# Connections served at once; more wait in the accept queue.
max_connections = {maxc}
# Requests processed at once; more get 429 + Retry-After (kube-apiserver retries those).
max_in_flight = {maxf}
# Seconds in-flight requests may take to finish after SIGTERM/SIGINT.
shutdown_grace_seconds = {grace}
# Milliseconds between checks of certificate and token files for changes.
reload_interval_ms = {reload}

[callers]
# Who may call the review endpoint. Unset: anyone who reaches the port.
# CA that signs callers' client certificates (e.g. kube-apiserver's webhook client cert).
{ca}
# Names (CN or DNS SAN) a client certificate must carry; empty = any name the CA signed.
allowed_names = {names}
# Bearer tokens callers may send instead (static-token CSV format; hashed entries allowed).
{ctok}

[review]
# kube-apiserver's --api-audiences. Empty: audience-agnostic identities get empty
# status.audiences ("valid for the API server"), which works behind any apiserver.
api_audiences = {auds}

[cache]
enabled = {cen}
max_entries = {cmax}
# Seconds a "yes" is reused (never past the token's own expiry), and a "no".
ttl_seconds = {cttl}
negative_ttl_seconds = {cneg}

[log]
# "json" or "text".
format = {lfmt}
# A tracing filter, e.g. "info", "debug", "tokenhook=debug,warn".
level = {llvl}
"#,
        listen = q(&s.listen),
        cert = opt("cert_file", p(&s.cert_file), "\"server.crt\""),
        key = opt("key_file", p(&s.key_file), "\"server.key\""),
        webhook_path = q(&s.webhook_path),
        max_body = s.max_body_bytes,
        hs = s.handshake_timeout_seconds,
        hr = s.header_read_timeout_seconds,
        br = s.body_read_timeout_seconds,
        idle = s.idle_timeout_seconds,
        maxc = s.max_connections,
        maxf = s.max_in_flight,
        grace = s.shutdown_grace_seconds,
        reload = s.reload_interval_ms,
        ca = opt("client_ca_file", p(&c.callers.client_ca_file), "\"ca.crt\""),
        names = list(&c.callers.allowed_names),
        ctok = opt("tokens_file", p(&c.callers.tokens_file), "\"callers.csv\""),
        auds = list(&c.review.api_audiences),
        cen = c.cache.enabled,
        cmax = c.cache.max_entries,
        cttl = c.cache.ttl_seconds,
        cneg = c.cache.negative_ttl_seconds,
        lfmt = q(&c.log.format),
        llvl = q(&c.log.level),
    );
    out.push_str(&format!(
        "\n[jwt]\n# JWT/OIDC issuers: clock skew on exp/nbf/iat, JWKS refresh period, least time\n# from one fetch to a fetch for an unknown kid (sooner: 503, never \"no\"), and\n# the fetch timeout (all seconds).\nleeway_seconds = {}\nrefresh_interval_seconds = {}\nmin_refresh_interval_seconds = {}\nfetch_timeout_seconds = {}\n",
        c.jwt.leeway_seconds,
        c.jwt.refresh_interval_seconds,
        c.jwt.min_refresh_interval_seconds,
        c.jwt.fetch_timeout_seconds
    ));
    out.push_str(&format!(
        "\n[metrics]\n# A second TLS listener for /metrics and health only (unset: /metrics on server.listen).\n{}\n# true: scrapes need no credential; false: the [callers] rules apply.\nanonymous = {}\n",
        match &c.metrics.listen {
            Some(l) => format!("listen = {}", q(l)),
            None => "# listen = \"0.0.0.0:9443\"".into(),
        },
        c.metrics.anonymous
    ));
    out.push_str(&render_mint(&c.mint));
    out.push_str(
        "\n# The verifier chain, tried in order; the first that recognises a token decides.\n",
    );
    for v in &c.verifiers {
        match v {
            VerifierConfig::Static { file } => out.push_str(&format!(
                "\n[[verifiers]]\n# kube --token-auth-file CSV: token,user,uid[,\"groups\"[,\"audiences\"[,\"key=value,...\"]]]\ntype = \"static\"\nfile = {}\n",
                q(&file.to_string_lossy())
            )),
            VerifierConfig::Jwt { .. }
            | VerifierConfig::AuthenticationConfig { .. }
            | VerifierConfig::TokenReview(_)
            | VerifierConfig::Introspection(_) => {
                // Rendered through serde: these carry nested kube structures.
                let mut doc = toml::Table::new();
                if let Ok(toml::Value::Table(t)) = toml::Value::try_from(v) {
                    doc.insert("verifiers".into(), toml::Value::Array(vec![toml::Value::Table(t)]));
                }
                out.push('\n');
                out.push_str(&toml::to_string(&doc).unwrap_or_default());
            }
            VerifierConfig::ServiceAccount {} => out.push_str(
                "\n[[verifiers]]\n# Tokens minted by this tokenhook ([mint]), checked against every current key.\ntype = \"service_account\"\n",
            ),
        }
    }
    out
}

fn render_mint(m: &MintSection) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let list = |v: &[String]| {
        format!(
            "[{}]",
            v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
        )
    };
    let opt = |key: &str, v: &Option<String>, example: &str| match v {
        Some(v) => format!("{key} = {}", q(v)),
        None => format!("# {key} = {example}"),
    };
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
    let mut out = format!(
        r#"
[mint]
# TokenRequest minting (POST /api/v1/namespaces/NS/serviceaccounts/NAME/token) and OIDC
# discovery. Unset issuer: all of it is off.
{issuer}
# Published in /.well-known/openid-configuration; default <issuer>/openid/v1/jwks.
{jwks}
# Active signing key (PEM or JWK; RSA -> RS256, EC P-256 -> ES256, Ed25519 -> EdDSA).
# `tokenhook keys generate --algorithm RS256 --out FILE` makes one.
{signing}
# Keys tokens may still be verified with after a rotation (PEM or JWK/JWKS).
verify_key_files = {verify}
# Revocation list: lines jti=..., serviceaccount=NS/NAME, uid=...
{revocations}
# Longest token minted, in seconds (0 = no limit); longer requests are shortened with a warning.
max_expiration_seconds = {max}
# kube's --service-account-extend-token-expiration for pod-bound 3607-second requests.
extend_expiration = {extend}
"#,
        issuer = opt("issuer", &m.issuer, "\"https://tokenhook.example.com\""),
        jwks = opt(
            "jwks_uri",
            &m.jwks_uri,
            "\"https://tokenhook.example.com/openid/v1/jwks\""
        ),
        signing = opt(
            "signing_key_file",
            &path(&m.signing_key_file),
            "\"sa-signing.key\""
        ),
        verify = list(
            &m.verify_key_files
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        ),
        revocations = opt(
            "revocations_file",
            &path(&m.revocations_file),
            "\"revocations.txt\""
        ),
        max = m.max_expiration_seconds,
        extend = m.extend_expiration,
    );
    let registry = match m.registry.source {
        RegistrySource::Static => {
            "# [mint.registry]\n# source = \"kubernetes\"\n# kubeconfig = \"kubeconfig.yaml\"\n"
                .to_string()
        }
        RegistrySource::Kubernetes => format!(
            "[mint.registry]\nsource = \"kubernetes\"\n{}\n",
            opt(
                "kubeconfig",
                &path(&m.registry.kubeconfig),
                "\"kubeconfig.yaml\""
            )
        ),
    };
    out.push_str(&format!(
        "\n# Where accounts and the pods, secrets and nodes tokens bind to come from: \"static\"\n# (default: [[mint.service_accounts]] below) or \"kubernetes\" (watches of the cluster;\n# kubeconfig unset: the pod's own service account).\n{registry}"
    ));
    out.push_str(
        "\n# Service accounts that exist; uid is derived from namespace/name when omitted.\n",
    );
    for a in &m.service_accounts {
        out.push_str(&format!(
            "[[mint.service_accounts]]\nnamespace = {}\nname = {}\n",
            q(&a.namespace),
            q(&a.name)
        ));
        if let Some(u) = &a.uid {
            out.push_str(&format!("uid = {}\n", q(u)));
        }
        for (key, objs) in [
            ("pods", &a.pods),
            ("secrets", &a.secrets),
            ("nodes", &a.nodes),
        ] {
            let items: Vec<String> = objs
                .iter()
                .map(|o| match &o.uid {
                    Some(u) => format!("{{ name = {}, uid = {} }}", q(&o.name), q(u)),
                    None => format!("{{ name = {} }}", q(&o.name)),
                })
                .collect();
            if !items.is_empty() {
                out.push_str(&format!("{key} = [{}]\n", items.join(", ")));
            }
        }
    }
    out.push_str(
        "\n# Who may mint: callers (users or groups) -> namespaces, accounts, audiences (globs).\n",
    );
    for r in &m.policy {
        out.push_str(&format!(
            "[[mint.policy]]\nusers = {}\ngroups = {}\nnamespaces = {}\nservice_accounts = {}\naudiences = {}\n",
            list(&r.users),
            list(&r.groups),
            list(&r.namespaces),
            list(&r.service_accounts),
            list(&r.audiences)
        ));
        if let Some(m) = r.max_expiration_seconds {
            out.push_str(&format!("max_expiration_seconds = {m}\n"));
        }
    }
    out
}
