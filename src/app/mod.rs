//! The shared state every handler reads (`App`), and the entry point that builds it from a `Config` and serves it (`Server::bind`).
//!
//! Layering: `server/` is transport (TLS, accept loop, body limits, caller credentials) and
//! knows nothing of the handlers; `routes`, `review` and `mint` sit on top of it and read
//! `App`; this module builds both and hands the router to the transport. `build` holds the
//! pieces built from configuration (verifier chain, issuer, file watchers).

pub mod build;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::HeaderMap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::cache::VerdictCache;
use crate::clock::Clock;
use crate::config::Config;
use crate::k8s::Status;
use crate::metrics::Metrics;
use crate::mint::accounts::Accounts;
use crate::mint::cluster::{self, Cluster};
use crate::mint::issuer::Issuer;
use crate::reload;
use crate::server::caller::CallerAuth;
use crate::server::{ConnInfo, Handler, Transport, serve, tls};
use crate::verify::Token;
use crate::verify::static_file::TokenFileError;
use crate::verify::{Chain, StaticFile};

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
    /// An upstream verifier (tokenreview, introspection) could not be set up.
    #[error("verifier {verifier}: {reason}")]
    Upstream {
        /// Which one (`verifiers[i]`).
        verifier: String,
        /// What is wrong.
        reason: String,
    },
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
}

impl App {
    /// Who is calling, for endpoints any authenticated user may use (minting, SelfSubjectReview):
    /// a verified client certificate (user = CN, groups = O, as kube's x509 authenticator), else a
    /// bearer token that tokenhook's own chain accepts as a credential for tokenhook itself
    /// (audience-agnostic, or meant for the audiences tokens default to here).
    ///
    /// # Errors
    /// 401 without an acceptable credential; 503 when the chain could not check the token.
    pub async fn authenticate_user(
        &self,
        conn: &ConnInfo,
        headers: &HeaderMap,
    ) -> Result<crate::k8s::token_review::UserInfo, Status> {
        use crate::verify::Outcome;
        if let Some(c) = &conn.client_cert {
            return Ok(crate::k8s::token_review::UserInfo {
                username: c.common_name.clone(),
                groups: c.organizations.clone(),
                ..Default::default()
            });
        }
        let Some(t) = crate::server::caller::bearer(headers) else {
            return Err(Status::unauthorized());
        };
        let token = Token::new(t.to_owned());
        let own = &self.default_audiences;
        match self.chain.verify(&token, self.clock.now()).await {
            Ok(d) => match d.outcome {
                Outcome::Authenticated(id)
                    if crate::review::audiences(own, own, id.audiences.as_deref()).is_some() =>
                {
                    Ok(id.user)
                }
                _ => Err(Status::unauthorized()),
            },
            Err(e) => {
                tracing::warn!(error = %e, token = %token.digest().fingerprint(), "could not authenticate a caller");
                Err(Status::service_unavailable(
                    "the caller's credential could not be checked right now; retry",
                    1,
                ))
            }
        }
    }
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

        let cert = build::read("certificate", &config.cert_file)?;
        let key = build::read("private key", &config.key_file)?;
        let ca = match &config.callers.client_ca {
            Some(p) => Some(build::read("client CA", p)?),
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
                let (issuer, w) = build::issuer(m, accounts, &cache)?;
                watched.extend(w);
                Some(issuer)
            }
            None => None,
        };
        // SIGHUP: every file-backed source, the watched files and local JWKS files alike.
        let (reload_now, reload_rx) = watch::channel(0u64);
        let verifiers = build::verifiers(
            &config,
            &metrics,
            &cache,
            issuer.as_ref(),
            &stop_rx,
            &reload_rx,
            &mut watched,
        )
        .await?;
        let caller_tokens = match &config.callers.tokens_file {
            Some(path) => {
                let (table, bytes) = build::load_table(path)?;
                let v = StaticFile::new(table);
                watched.push(build::watch_table(
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
            config,
        });
        let transport = Arc::new(Transport {
            tls: current,
            limits: app.config.limits.clone(),
            metrics: metrics.clone(),
        });
        watched.push(build::tls_watch(&app.config, &transport, cert, key, ca));
        let handler: Handler = {
            let app = app.clone();
            // The router boxes each request's future itself (see there).
            Arc::new(move |conn, req| crate::routes::handle(app.clone(), conn, req))
        };

        let reloader = reload::spawn(
            watched,
            app.config.reload_interval,
            reload_rx,
            stop_rx.clone(),
            metrics.clone(),
        );
        let metrics_task = metrics_listener.map(|l| {
            tokio::spawn(serve(
                l,
                true,
                transport.clone(),
                handler.clone(),
                stop_rx.clone(),
            ))
        });
        let task = tokio::spawn(async move {
            serve(listener, false, transport, handler, stop_rx).await;
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
