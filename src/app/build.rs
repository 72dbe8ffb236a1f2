//! What `Server::bind` builds from configuration: the verifier chain, the token issuer, and the file watchers that reload them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::BindError;
use crate::cache::VerdictCache;
use crate::config::{Config, VerifierSpec};
use crate::metrics::Metrics;
use crate::mint::issuer::{Issuer, IssuerConfig};
use crate::mint::keys::KeySet;
use crate::mint::revocations::Revocations;
use crate::reload::Watched;
use crate::server::{Transport, tls};
use crate::verify::authn_config;
use crate::verify::cel::CelEnv;
use crate::verify::introspection::Introspection;
use crate::verify::jwks::{IssuerKeys, KeySource};
use crate::verify::oidc::{Jwt, JwtIssuer, JwtSettings, build_all, spawn_refresh};
use crate::verify::selector::KnownIssuers;
use crate::verify::static_file::TokenTable;
use crate::verify::tokenreview::TokenReview;
use crate::verify::{AnyVerifier, Digest, ServiceAccount, StaticFile};

pub(super) fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, BindError> {
    std::fs::read(path).map_err(|source| BindError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

pub(super) fn load_table(path: &Path) -> Result<(TokenTable, Vec<u8>), BindError> {
    TokenTable::load(path).map_err(|source| BindError::TokenFile {
        path: path.to_owned(),
        source,
    })
}

fn log_warnings(path: &Path, t: &TokenTable) {
    for w in &t.warnings {
        tracing::warn!(path = %path.display(), warning = %w, "token file");
    }
}

/// A watcher that swaps `table` from `path`, invalidating `cache` (when given) so that a
/// removed token stops working at once.
pub(super) fn watch_table(
    source: &'static str,
    path: PathBuf,
    bytes: &[u8],
    target: StaticFile,
    cache: Option<VerdictCache>,
) -> Watched {
    let p = path.clone();
    Watched {
        source,
        paths: vec![path],
        loaded: vec![Digest::of(bytes)],
        apply: Box::new(move |contents| {
            let t = TokenTable::parse(contents.first().map_or(&[][..], Vec::as_slice))
                .map_err(|e| e.to_string())?;
            log_warnings(&p, &t);
            let summary = format!("{} tokens from {}", t.len(), p.display());
            target.replace(t);
            if let Some(c) = &cache {
                c.invalidate_all();
            }
            Ok(summary)
        }),
    }
}

/// The chain's verifiers, in configured order, with the watchers that keep their files and
/// keys fresh (pushed onto `watched`).
pub(super) async fn verifiers(
    config: &Config,
    metrics: &Metrics,
    cache: &VerdictCache,
    issuer: Option<&Arc<Issuer>>,
    stop_rx: &watch::Receiver<bool>,
    reload_rx: &watch::Receiver<u64>,
    watched: &mut Vec<Watched>,
) -> Result<Vec<AnyVerifier>, BindError> {
    let cel = Arc::new(CelEnv::new().map_err(|e| BindError::Jwt(vec![e]))?);
    let mut verifiers = Vec::new();
    // Filled once the chain is built: the default selector of upstream verifiers leaves the
    // tokens of every configured JWT issuer alone.
    let known_issuers = KnownIssuers::default();
    for (i, spec) in config.verifiers.iter().enumerate() {
        match spec {
            VerifierSpec::Static { file } => {
                let (table, bytes) = load_table(file)?;
                log_warnings(file, &table);
                let v = StaticFile::new(table);
                watched.push(watch_table(
                    "static_tokens",
                    file.clone(),
                    &bytes,
                    v.clone(),
                    Some(cache.clone()),
                ));
                verifiers.push(AnyVerifier::Static(v));
            }
            VerifierSpec::Jwt {
                authenticator,
                keys,
            } => {
                let settings = config.jwt.clone();
                let issuer = JwtIssuer::build(
                    authenticator,
                    keys,
                    &format!("verifiers[{i}]"),
                    &settings,
                    &cel,
                    metrics,
                )
                .map_err(BindError::Jwt)?;
                start_keys(&issuer.keys, config, &settings, stop_rx, reload_rx).await?;
                verifiers.push(AnyVerifier::Jwt(Jwt::new(vec![issuer], cel.clone(), "jwt")));
            }
            VerifierSpec::AuthenticationConfig { file } => {
                let settings = config.jwt.clone();
                let bytes = read("AuthenticationConfiguration", file)?;
                let conf = authn_config::load(file)?;
                let issuers =
                    build_all(&conf.jwt, &settings, &cel, metrics).map_err(BindError::Jwt)?;
                for i in &issuers {
                    start_keys(&i.keys, config, &settings, stop_rx, reload_rx).await?;
                }
                let jwt = Jwt::new(issuers, cel.clone(), "jwt");
                watched.push(watch_authn_config(
                    reload_rx.clone(),
                    file.clone(),
                    &bytes,
                    jwt.clone(),
                    settings,
                    cel.clone(),
                    metrics.clone(),
                    cache.clone(),
                    config.reload_interval,
                    stop_rx.clone(),
                ));
                verifiers.push(AnyVerifier::Jwt(jwt));
            }
            VerifierSpec::ServiceAccount => {
                // validate() refuses this verifier without [mint].
                if let Some(i) = issuer {
                    verifiers.push(AnyVerifier::ServiceAccount(ServiceAccount::new(i.clone())));
                }
            }
            VerifierSpec::TokenReview(settings) => {
                let v = TokenReview::build(
                    settings,
                    &known_issuers,
                    &config.api_audiences,
                    metrics,
                    config.reload_interval,
                )
                .map_err(|reason| BindError::Upstream {
                    verifier: format!("verifiers[{i}]"),
                    reason,
                })?;
                verifiers.push(AnyVerifier::TokenReview(v));
            }
            VerifierSpec::Introspection(settings) => {
                let v = Introspection::build(
                    settings,
                    &known_issuers,
                    cel.clone(),
                    config.jwt.leeway,
                    metrics,
                )
                .map_err(|reason| BindError::Upstream {
                    verifier: format!("verifiers[{i}]"),
                    reason,
                })?;
                verifiers.push(AnyVerifier::Introspection(v));
            }
        }
    }
    known_issuers.set(
        verifiers
            .iter()
            .filter_map(|v| match v {
                AnyVerifier::Jwt(j) => Some(j.clone()),
                _ => None,
            })
            .collect(),
    );
    Ok(verifiers)
}

/// Loads local keys now (a broken inline or file JWKS is a configuration error) and keeps
/// every source fresh in the background; remote sources that are down only make the issuer
/// not ready.
async fn start_keys(
    keys: &Arc<IssuerKeys>,
    config: &Config,
    settings: &JwtSettings,
    stop: &watch::Receiver<bool>,
    reload: &watch::Receiver<u64>,
) -> Result<(), BindError> {
    match keys.source() {
        KeySource::Inline(_) => {
            keys.refresh().await?;
        }
        KeySource::File(_) => {
            keys.refresh().await?;
            spawn_refresh(
                keys,
                config.reload_interval,
                stop.clone(),
                Some(reload.clone()),
                true,
            );
        }
        KeySource::Url(_) | KeySource::Discovery { .. } => {
            spawn_refresh(keys, settings.refresh_interval, stop.clone(), None, false);
        }
    }
    Ok(())
}

/// Reloads an AuthenticationConfiguration file: a valid new version replaces the issuers
/// (keeping the keys of unchanged ones), an invalid one is refused and the old one kept.
#[allow(clippy::too_many_arguments)]
fn watch_authn_config(
    reload: watch::Receiver<u64>,
    path: PathBuf,
    bytes: &[u8],
    jwt: Jwt,
    settings: JwtSettings,
    cel: Arc<CelEnv>,
    metrics: Metrics,
    cache: VerdictCache,
    reload_interval: Duration,
    stop: watch::Receiver<bool>,
) -> Watched {
    Watched {
        source: "authentication_config",
        paths: vec![path],
        loaded: vec![Digest::of(bytes)],
        apply: Box::new(move |c| {
            let text = String::from_utf8_lossy(c.first().map_or(&[][..], Vec::as_slice));
            let conf = authn_config::parse(&text)?;
            let problems = authn_config::validate(&conf.jwt, "jwt");
            if !problems.is_empty() {
                return Err(problems.join("; "));
            }
            let issuers =
                build_all(&conf.jwt, &settings, &cel, &metrics).map_err(|e| e.join("; "))?;
            let n = issuers.len();
            for keys in jwt.replace_keeping_keys(issuers) {
                let interval = match keys.source() {
                    KeySource::File(_) => reload_interval,
                    _ => settings.refresh_interval,
                };
                let on_sighup = matches!(keys.source(), KeySource::File(_)).then(|| reload.clone());
                spawn_refresh(&keys, interval, stop.clone(), on_sighup, false);
            }
            cache.invalidate_all();
            Ok(format!("{n} JWT issuers"))
        }),
    }
}

/// Loads keys and revocations and returns the issuer plus the watchers that reload them;
/// either reload clears the verdict cache, so a revoked token or a withdrawn key stops
/// working at once rather than after the cache TTL.
pub(super) fn issuer(
    m: &crate::config::MintConfig,
    accounts: crate::mint::accounts::Accounts,
    cache: &VerdictCache,
) -> Result<(Arc<Issuer>, Vec<Watched>), BindError> {
    let keys = KeySet::load(&m.signing_key_file, &m.verify_key_files)?;
    let mut key_paths = vec![m.signing_key_file.clone()];
    key_paths.extend(m.verify_key_files.iter().cloned());
    let key_digests = key_paths
        .iter()
        .map(|p| read("key", p).map(|b| Digest::of(&b)))
        .collect::<Result<Vec<_>, _>>()?;
    let revocations = match &m.revocations_file {
        Some(p) => {
            let bytes = read("revocation list", p)?;
            let text = String::from_utf8_lossy(&bytes);
            let r = Revocations::parse(&text).map_err(|reason| BindError::Revocations {
                path: p.clone(),
                reason,
            })?;
            Some((p.clone(), Digest::of(&bytes), r))
        }
        None => None,
    };
    let issuer = Issuer::new(
        IssuerConfig {
            issuer: m.issuer.clone(),
            jwks_uri: m.jwks_uri.clone(),
            registry: accounts,
            signing_key_file: m.signing_key_file.clone(),
            verify_key_files: m.verify_key_files.clone(),
        },
        keys,
        revocations
            .as_ref()
            .map(|(_, _, r)| r.clone())
            .unwrap_or_default(),
    );
    let mut watched = Vec::new();
    {
        let (issuer, cache) = (issuer.clone(), cache.clone());
        watched.push(Watched {
            source: "signing_keys",
            paths: key_paths,
            loaded: key_digests,
            apply: Box::new(move |_| {
                let k = KeySet::load(
                    &issuer.config.signing_key_file,
                    &issuer.config.verify_key_files,
                )
                .map_err(|e| {
                    format!(
                        "{e}: {}",
                        std::error::Error::source(&e)
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    )
                })?;
                let summary = format!(
                    "active key {}, {} verify-only",
                    k.signing.public.kid,
                    k.verify_only.len()
                );
                issuer.set_keys(k);
                cache.invalidate_all();
                Ok(summary)
            }),
        });
    }
    if let Some((path, digest, _)) = revocations {
        let (issuer, cache) = (issuer.clone(), cache.clone());
        watched.push(Watched {
            source: "revocations",
            paths: vec![path],
            loaded: vec![digest],
            apply: Box::new(move |c| {
                let text = String::from_utf8_lossy(c.first().map_or(&[][..], Vec::as_slice));
                let r = Revocations::parse(&text)?;
                let summary = format!("{} revocations", r.len());
                issuer.set_revocations(r);
                cache.invalidate_all();
                Ok(summary)
            }),
        });
    }
    Ok((issuer, watched))
}

/// Reloads the serving certificate, key and client CA into `transport` (a bad set is
/// refused and the old one kept).
pub(super) fn tls_watch(
    config: &Config,
    transport: &Arc<Transport>,
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
) -> Watched {
    let mut paths = vec![config.cert_file.clone(), config.key_file.clone()];
    let mut loaded = vec![Digest::of(&cert), Digest::of(&key)];
    if let (Some(p), Some(ca)) = (&config.callers.client_ca, &ca) {
        paths.push(p.clone());
        loaded.push(Digest::of(ca));
    }
    let transport = Arc::downgrade(transport);
    Watched {
        source: "tls",
        paths,
        loaded,
        apply: Box::new(move |c| {
            let Some(t) = transport.upgrade() else {
                return Err("server stopped".into());
            };
            let (cert, key) = match c {
                [cert, key, ..] => (cert, key),
                _ => return Err("missing files".into()),
            };
            let built = tls::build(cert, key, c.get(2).map(Vec::as_slice)).map_err(|e| {
                let mut s = e.to_string();
                if let Some(src) = std::error::Error::source(&e) {
                    s.push_str(&format!(": {src}"));
                }
                s
            })?;
            t.metrics.cert_expiry.set(built.not_after);
            t.tls.set(built.config);
            Ok(format!(
                "serving certificate valid until {}",
                built.not_after
            ))
        }),
    }
}
