//! The server: builds everything from a `Config`, binds, accepts TLS connections, serves HTTP/1.1 and HTTP/2, drains on shutdown.

pub mod body;
pub mod caller;
pub mod http_error;
pub mod routes;
pub mod tls;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::cache::VerdictCache;
use crate::clock::Clock;
use crate::config::{Config, VerifierSpec};
use crate::metrics::Metrics;
use crate::mint::accounts::Accounts;
use crate::mint::cluster::{self, Cluster};
use crate::mint::issuer::{Issuer, IssuerConfig};
use crate::mint::keys::KeySet;
use crate::mint::revocations::Revocations;
use crate::reload::{self, Watched};
use crate::verify::authn_config;
use crate::verify::cel::CelEnv;
use crate::verify::jwks::{IssuerKeys, KeySource};
use crate::verify::oidc::{Jwt, JwtIssuer, JwtSettings, build_all, spawn_refresh};
use crate::verify::static_file::{TokenFileError, TokenTable};
use crate::verify::{AnyVerifier, Chain, Digest, ServiceAccount, StaticFile};
use caller::{CallerAuth, ClientCert};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Metrics could not be registered (a bug).
    #[error("registering metrics")]
    Metrics(#[from] prometheus::Error),
    /// A configured file could not be read.
    #[error("reading {what} {path}")]
    Read {
        /// What the file is for.
        what: &'static str,
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Certificate, key or client CA unusable.
    #[error("loading TLS material")]
    Tls(#[from] tls::TlsError),
    /// A token file is malformed.
    #[error("loading {path}")]
    TokenFile {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: TokenFileError,
    },
    /// A signing or verification key is unusable.
    #[error("loading service-account keys")]
    Keys(#[from] crate::mint::keys::KeyError),
    /// The revocation list is malformed.
    #[error("loading revocation list {path}: {reason}")]
    Revocations {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A JWT issuer's settings are invalid (every problem listed).
    #[error("JWT issuers:\n  - {}", .0.join("\n  - "))]
    Jwt(Vec<String>),
    /// The cluster registry's client could not be set up (kubeconfig, in-cluster account).
    #[error("connecting the service-account registry to the cluster")]
    Registry(#[from] crate::mint::cluster::ClusterError),
    /// An AuthenticationConfiguration file is unusable.
    #[error("loading the AuthenticationConfiguration")]
    AuthnConfig(#[from] crate::verify::authn_config::AuthnConfigError),
    /// Local or inline JWKS could not be loaded.
    #[error("loading JWKS")]
    JwtKeys(#[from] crate::verify::jwks::FetchError),
    /// The listen address could not be bound.
    #[error("binding {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl BindError {
    /// True when the fix is in the configuration or the files it names (exit code 64).
    pub fn is_config(&self) -> bool {
        !matches!(self, BindError::Metrics(_) | BindError::Listen { .. })
    }
}

/// State shared by every connection.
pub struct App {
    /// The configuration in force.
    pub config: Config,
    /// This server's metrics.
    pub metrics: Metrics,
    /// The verifier chain.
    pub chain: Chain,
    /// The verdict cache.
    pub cache: VerdictCache,
    /// Caller authentication.
    pub callers: CallerAuth,
    /// Time source.
    pub clock: Clock,
    /// The token issuer, when `[mint]` is configured.
    pub issuer: Option<Arc<Issuer>>,
    /// Slots for API requests in flight (`server.max_in_flight`).
    pub in_flight: Arc<Semaphore>,
    /// What an empty audience list means for audience-bound tokens: the API audiences, or
    /// (as kube's `--api-audiences` defaults to the service-account issuer) the issuer.
    pub default_audiences: Vec<String>,
    tls: tls::Current,
}

/// Per-connection facts.
pub struct ConnInfo {
    /// Accepted on the metrics-only listener.
    pub metrics_only: bool,
    /// Remote address.
    pub peer: SocketAddr,
    /// The verified client certificate, if one was presented.
    pub client_cert: Option<ClientCert>,
}

/// Entry point: `Server::bind(config)`.
pub struct Server;

/// A bound, serving server.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The metrics listener's address, when `[metrics] listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// Its metrics.
    pub metrics: Metrics,
    reload_now: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Checks every watched file now (what SIGHUP does).
    pub fn reload_now(&self) {
        self.reload_now.send_modify(|generation| *generation += 1);
    }

    /// Stops accepting, lets in-flight requests finish (within the grace period), and returns
    /// when everything has stopped.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, BindError> {
    std::fs::read(path).map_err(|source| BindError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn load_table(path: &Path) -> Result<(TokenTable, Vec<u8>), BindError> {
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
fn watch_table(
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

impl Server {
    /// Builds everything `config` describes and starts serving on `config.listen`.
    ///
    /// # Errors
    /// Unreadable or invalid files ([`BindError::is_config`]) or an unbindable address.
    pub async fn bind(config: Config) -> Result<Running, BindError> {
        Self::bind_with_clock(config, Clock::System).await
    }

    /// [`Server::bind`] with a chosen clock.
    ///
    /// # Errors
    /// As [`Server::bind`].
    pub async fn bind_with_clock(config: Config, clock: Clock) -> Result<Running, BindError> {
        let metrics = Metrics::new()?;
        let mut watched = Vec::new();

        let cert = read("certificate", &config.cert_file)?;
        let key = read("private key", &config.key_file)?;
        let ca = match &config.callers.client_ca {
            Some(p) => Some(read("client CA", p)?),
            None => None,
        };
        let built = tls::build(&cert, &key, ca.as_deref())?;
        metrics.cert_expiry.set(built.not_after);
        let current = tls::Current::new(built.config);

        let cache = VerdictCache::with_eviction_counter(
            config.cache.clone(),
            Some(metrics.cache_evictions.clone()),
        );
        let (stop, stop_rx) = watch::channel(false);
        let issuer = match &config.mint {
            Some(m) => {
                let accounts = match &m.cluster {
                    None => Accounts::Static(m.registry.clone()),
                    Some(kubeconfig) => Accounts::Cluster(Cluster::start(
                        cluster::client(kubeconfig.as_deref()).await?,
                        cache.clone(),
                        metrics.clone(),
                        stop_rx.clone(),
                    )),
                };
                let (issuer, w) = build_issuer(m, accounts, &cache)?;
                watched.extend(w);
                Some(issuer)
            }
            None => None,
        };
        // SIGHUP: every file-backed source, the watched files and local JWKS files alike.
        let (reload_now, reload_rx) = watch::channel(0u64);
        let cel = Arc::new(CelEnv::new().map_err(|e| BindError::Jwt(vec![e]))?);
        let mut verifiers = Vec::new();
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
                        &metrics,
                    )
                    .map_err(BindError::Jwt)?;
                    start_keys(&issuer.keys, &config, &settings, &stop_rx, &reload_rx).await?;
                    verifiers.push(AnyVerifier::Jwt(Jwt::new(vec![issuer], cel.clone(), "jwt")));
                }
                VerifierSpec::AuthenticationConfig { file } => {
                    let settings = config.jwt.clone();
                    let bytes = read("AuthenticationConfiguration", file)?;
                    let conf = authn_config::load(file)?;
                    let issuers =
                        build_all(&conf.jwt, &settings, &cel, &metrics).map_err(BindError::Jwt)?;
                    for i in &issuers {
                        start_keys(&i.keys, &config, &settings, &stop_rx, &reload_rx).await?;
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
                    if let Some(i) = &issuer {
                        verifiers.push(AnyVerifier::ServiceAccount(ServiceAccount::new(i.clone())));
                    }
                }
            }
        }
        let caller_tokens = match &config.callers.tokens_file {
            Some(path) => {
                let (table, bytes) = load_table(path)?;
                let v = StaticFile::new(table);
                watched.push(watch_table(
                    "caller_tokens",
                    path.clone(),
                    &bytes,
                    v.clone(),
                    None,
                ));
                Some(v)
            }
            None => None,
        };
        if config.callers.is_open() {
            tracing::warn!(
                "no [callers] configured: anyone who can reach the port may review tokens"
            );
        }

        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| BindError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| BindError::Listen {
            addr: config.listen,
            source,
        })?;
        let mut metrics_addr = None;

        let metrics_listener = match config.metrics.listen {
            Some(a) => {
                let l = TcpListener::bind(a)
                    .await
                    .map_err(|source| BindError::Listen { addr: a, source })?;
                metrics_addr = Some(
                    l.local_addr()
                        .map_err(|source| BindError::Listen { addr: a, source })?,
                );
                Some(l)
            }
            None => None,
        };
        let app = Arc::new(App {
            chain: Chain::new(verifiers, metrics.clone()),
            callers: CallerAuth::new(config.callers.clone(), caller_tokens),
            metrics: metrics.clone(),
            cache,
            clock,
            issuer,
            in_flight: Arc::new(Semaphore::new(config.limits.max_in_flight)),
            default_audiences: match (&config.mint, config.api_audiences.is_empty()) {
                (Some(m), true) => vec![m.issuer.clone()],
                _ => config.api_audiences.clone(),
            },
            tls: current,
            config,
        });
        watched.push(tls_watch(&app, cert, key, ca));

        let reloader = reload::spawn(
            watched,
            app.config.reload_interval,
            reload_rx,
            stop_rx.clone(),
            metrics.clone(),
        );
        let metrics_task =
            metrics_listener.map(|l| tokio::spawn(serve(l, true, app.clone(), stop_rx.clone())));
        let task = tokio::spawn(async move {
            serve(listener, false, app, stop_rx).await;
            if let Some(t) = metrics_task {
                let _ = t.await;
            }
            reloader.abort();
        });
        Ok(Running {
            addr,
            metrics_addr,
            metrics,
            reload_now,
            stop,
            task,
        })
    }
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
fn build_issuer(
    m: &crate::config::MintConfig,
    accounts: Accounts,
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

fn tls_watch(app: &Arc<App>, cert: Vec<u8>, key: Vec<u8>, ca: Option<Vec<u8>>) -> Watched {
    let mut paths = vec![app.config.cert_file.clone(), app.config.key_file.clone()];
    let mut loaded = vec![Digest::of(&cert), Digest::of(&key)];
    if let (Some(p), Some(ca)) = (&app.config.callers.client_ca, &ca) {
        paths.push(p.clone());
        loaded.push(Digest::of(ca));
    }
    let app = Arc::downgrade(app);
    Watched {
        source: "tls",
        paths,
        loaded,
        apply: Box::new(move |c| {
            let Some(app) = app.upgrade() else {
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
            app.metrics.cert_expiry.set(built.not_after);
            app.tls.set(built.config);
            Ok(format!(
                "serving certificate valid until {}",
                built.not_after
            ))
        }),
    }
}

/// Accepts until `stop`, then drains.
async fn serve(
    listener: TcpListener,
    metrics_only: bool,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = app.config.limits.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper starts the header deadline as soon as an HTTP/1.1 connection waits for a request,
    // so it also bounds keep-alive idleness there.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // Rapid reset (CVE-2023-44487) and reset floods: GOAWAY after this many streams reset
    // before we accept them, or reset by us for protocol errors. Headers are bounded too
    // (CONTINUATION floods).
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024))
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Each connection task holds a clone; when every clone is dropped, all have finished.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);

    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // EMFILE and friends: back off rather than spin.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let app = app.clone();
        let builder = builder.clone();
        let (alive, stop) = (alive.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _alive = alive;
            app.metrics.connections_open.inc();
            let reason = connection(metrics_only, &app, builder, stop, tcp, peer).await;
            app.metrics.connections_open.dec();
            app.metrics
                .connections_closed
                .with_label_values(&[reason])
                .inc();
        });
    }
    drop(listener);
    drop(alive);
    tracing::info!(
        grace_seconds = limits.shutdown_grace.as_secs(),
        "draining connections"
    );
    if tokio::time::timeout(limits.shutdown_grace, all_done.recv())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

/// Requests in flight on one connection and when the last one finished, for the idle timeout.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        Some(self.start.elapsed().saturating_sub(last))
    }
}

struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_ms.store(now, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection to its end; returns why it ended (a `connections_closed` reason).
async fn connection(
    metrics_only: bool,
    app: &Arc<App>,
    builder: auto::Builder<TokioExecutor>,
    mut stop: watch::Receiver<bool>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> &'static str {
    let _ = tcp.set_nodelay(true);
    let limits = &app.config.limits;
    let acceptor = TlsAcceptor::from(app.tls.get());
    let stream = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return "handshake_failed";
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return "handshake_timeout";
        }
    };
    let client_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| ClientCert::from_der(c));
    let conn = Arc::new(ConnInfo {
        metrics_only,
        peer,
        client_cert,
    });
    let activity = Arc::new(Activity {
        start: Instant::now(),
        in_flight: AtomicUsize::new(0),
        last_ms: AtomicU64::new(0),
    });
    let svc = {
        let (app, activity) = (app.clone(), activity.clone());
        service_fn(move |req| {
            let busy = activity.begin();
            let app = app.clone();
            let conn = conn.clone();
            // Boxed once here: hyper moves a stream's future several times before it runs
            // (into the HTTP/2 stream task, then tokio's task cell), and a pointer is cheaper
            // to move than the request's whole state.
            Box::pin(async move {
                let response = routes::handle(app, conn, req).await;
                drop(busy);
                Ok::<_, Infallible>(response)
            })
        })
    };
    let served = builder.serve_connection(TokioIo::new(stream), svc);
    let mut served = std::pin::pin!(served);
    let idle_timeout = limits.idle_timeout;
    let mut tick = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(50)));
    let mut closing = None;
    let mut goaway_at = None;
    loop {
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return closing.unwrap_or("ended");
            }
            _ = stop.wait_for(|s| *s), if closing.is_none() => {
                closing = Some("shutdown");
                served.as_mut().graceful_shutdown();
            }
            _ = tick.tick(), if closing != Some("shutdown") => {
                let idle = activity.idle_for().is_some_and(|d| d >= idle_timeout);
                match goaway_at {
                    None if idle => {
                        tracing::debug!(%peer, "closing idle connection");
                        closing = Some("idle");
                        goaway_at = Some(Instant::now());
                        served.as_mut().graceful_shutdown();
                    }
                    // HTTP/2's graceful close waits for the peer to answer a PING; a peer
                    // that never does is dropped once it has been idle that long again.
                    Some(at) if idle && at.elapsed() >= idle_timeout => return "idle",
                    _ => {}
                }
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
