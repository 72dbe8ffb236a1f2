//! The user-facing configuration shape (TOML / env), every field with its default, unit and env name.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// Connections served at once; more wait in the kernel's accept queue. Default 10000.
    pub max_connections: usize,
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
            max_connections: 10_000,
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

/// One `[[verifiers]]` entry, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum VerifierConfig {
    /// `type = "static"`: a kube `--token-auth-file` CSV (plus hashed entries, audiences, extra).
    Static {
        /// The CSV file; reloaded when it changes.
        file: PathBuf,
    },
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
# Connections served at once; more wait in the accept queue.
max_connections = {maxc}
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
        maxc = s.max_connections,
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
    out.push_str(
        "\n# The verifier chain, tried in order; the first that recognises a token decides.\n",
    );
    for v in &c.verifiers {
        match v {
            VerifierConfig::Static { file } => out.push_str(&format!(
                "\n[[verifiers]]\n# kube --token-auth-file CSV: token,user,uid[,\"groups\"[,\"audiences\"[,\"key=value,...\"]]]\ntype = \"static\"\nfile = {}\n",
                q(&file.to_string_lossy())
            )),
        }
    }
    out
}
