//! Outbound HTTPS: the client every call tokenhook makes goes through (JWKS and discovery fetches, introspection, upstream TokenReviews), and the per-upstream guard (concurrency limit, circuit breaker, metrics).
//!
//! Verifiers own one [`HttpsClient`] per peer (its CA, client certificate and timeout) and,
//! for peers asked once per review, one [`Upstream`]: a call first takes an
//! [`Upstream::admit`] permit, which fails fast while the circuit is open or every slot is
//! busy until the review's deadline, and reports its outcome through [`Permit::finish`].
//! Nothing here sees a token except as an opaque request body: errors name URLs only.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// Largest answer accepted (a discovery document, a JWKS, a TokenReview, an introspection
/// response).
pub const MAX_DOCUMENT: usize = 1 << 20;

/// Why an outbound call failed. Messages name the URL, never a request body (which may
/// hold a token).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum OutboundError {
    /// Transport or TLS failure, or a timeout.
    #[error("fetching {url}: {reason}")]
    Transport {
        /// What was fetched.
        url: String,
        /// Why.
        reason: String,
    },
    /// No answer within the time allowed.
    #[error("fetching {url}: no answer within {after:?}")]
    Timeout {
        /// What was fetched.
        url: String,
        /// The time allowed.
        after: Duration,
    },
    /// The connection broke (reset, aborted, closed mid-answer) after it was made: the one
    /// transport failure kube's webhook client retries.
    #[error("fetching {url}: {reason}")]
    Reset {
        /// What was fetched.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an unexpected status.
    #[error("{url}: status {status}")]
    Status {
        /// What was fetched.
        url: String,
        /// The status it answered.
        status: http::StatusCode,
    },
    /// The server answered, but not with a usable document.
    #[error("{url}: {reason}")]
    Document {
        /// What was fetched.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// TLS material for one peer.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// PEM CA bundle the peer's certificate must chain to; `None`: the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain and private key to present.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to check the peer's certificate against instead of the URL's host
    /// (kubeconfig `tls-server-name`).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("TlsOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("client_cert", &self.client_cert.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// A response, fully read (at most [`MAX_DOCUMENT`] bytes).
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// An HTTPS client for one peer: its CA or the system roots, optionally a client
/// certificate; HTTP/2 when the peer offers it (ALPN), HTTP/1.1 otherwise; connections kept
/// and reused between calls. Clones share the connection pool.
#[derive(Clone)]
pub struct HttpsClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

fn tls_error(what: &str) -> impl Fn(rustls::pki_types::pem::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl HttpsClient {
    /// A client for one peer. `ca_pem`: its `certificateAuthority`, else the system trust
    /// store.
    ///
    /// # Errors
    /// An unusable CA bundle.
    pub fn new(ca_pem: Option<&str>, timeout: Duration) -> Result<Self, String> {
        Self::with_tls(
            &TlsOptions {
                ca_pem: ca_pem.map(|s| s.as_bytes().to_vec()),
                ..TlsOptions::default()
            },
            timeout,
        )
    }

    /// A client with `tls`; each request may take at most `timeout` (headers and body).
    ///
    /// # Errors
    /// An unusable CA bundle, client certificate or key.
    pub fn with_tls(tls: &TlsOptions, timeout: Duration) -> Result<Self, String> {
        let provider = crate::server::tls::provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca_pem {
            Some(pem) => {
                for c in CertificateDer::pem_slice_iter(pem) {
                    roots
                        .add(c.map_err(tls_error("certificateAuthority"))?)
                        .map_err(|e| format!("certificateAuthority: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("certificateAuthority holds no certificate".into());
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        let builder = builder.with_root_certificates(roots);
        // ALPN (h2, http/1.1) is set by the connector builder below.
        let config = match &tls.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(tls_error("client certificate"))?;
                if chain.is_empty() {
                    return Err("client certificate: no certificate in it".into());
                }
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|_| "client key: no usable private key in it".to_string())?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate and key: {e}"))?
            }
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config);
        let connector = match &tls.server_name {
            Some(name) => {
                let name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| format!("tls-server-name {name:?}: {e}"))?;
                connector
                    .https_only()
                    .with_server_name_resolver(move |_: &http::Uri| {
                        Ok::<_, std::convert::Infallible>(name.clone())
                    })
                    .enable_all_versions()
                    .wrap_connector(http)
            }
            None => connector
                .https_only()
                .enable_all_versions()
                .wrap_connector(http),
        };
        Ok(HttpsClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .build(connector),
            timeout,
        })
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one request and reads the whole answer, within the client's timeout and, when
    /// given, before `deadline`. Any status is an `Ok` answer: the caller judges it.
    ///
    /// # Errors
    /// Bad URL, transport or TLS failure, timeout, or an answer over [`MAX_DOCUMENT`].
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(http::HeaderName, HeaderValue)],
        body: Bytes,
        deadline: Option<Instant>,
    ) -> Result<Answer, OutboundError> {
        let transport = |reason: String| OutboundError::Transport {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|e| OutboundError::Document {
            url: url.to_owned(),
            reason: format!("bad URL: {e}"),
        })?;
        let mut req = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| transport(e.to_string()))?;
        let timeout = match deadline {
            Some(d) => self
                .timeout
                .min(d.saturating_duration_since(Instant::now())),
            None => self.timeout,
        };
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let reason = format!("{e:#}");
                if !e.is_connect() && broke(&e) {
                    OutboundError::Reset {
                        url: url.to_owned(),
                        reason,
                    }
                } else {
                    transport(reason)
                }
            })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_DOCUMENT)
                .collect()
                .await
                .map_err(|e| transport(e.to_string()))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| OutboundError::Timeout {
                url: url.to_owned(),
                after: timeout,
            })?
    }

    /// POSTs `body` (of `content_type`) with `headers`, answering whatever came back.
    ///
    /// # Errors
    /// As [`HttpsClient::send`].
    pub async fn post(
        &self,
        url: &str,
        content_type: &'static str,
        headers: &[(http::HeaderName, HeaderValue)],
        body: impl Into<Bytes>,
        deadline: Option<Instant>,
    ) -> Result<Answer, OutboundError> {
        let mut all = Vec::with_capacity(headers.len() + 2);
        all.push((
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        ));
        all.push((
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        ));
        all.extend(headers.iter().cloned());
        self.send(Method::POST, url, &all, body.into(), deadline)
            .await
    }

    /// GETs `url` and parses JSON (200 only, at most 1 MiB, within the timeout).
    ///
    /// # Errors
    /// Transport, status, size or JSON problems.
    pub async fn get_json(&self, url: &str) -> Result<Value, OutboundError> {
        let a = self.send(Method::GET, url, &[], Bytes::new(), None).await?;
        if a.status != StatusCode::OK {
            return Err(OutboundError::Status {
                url: url.to_owned(),
                status: a.status,
            });
        }
        serde_json::from_slice(&a.body).map_err(|e| OutboundError::Document {
            url: url.to_owned(),
            reason: format!("not JSON: {e}"),
        })
    }
}

/// Whether an error's causes include a connection that broke after it was made.
fn broke(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit (0: never opens).
    pub failure_threshold: u32,
    /// How long an open circuit fails fast before one probe is let through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: file_defaults::failure_threshold(),
            cool_down: Duration::from_secs(file_defaults::cool_down_seconds()),
        }
    }
}

/// The limit keys every verifier that calls out (`introspection`, `tokenreview`) has in its
/// file settings: their serde defaults here, the keys themselves written out in each struct
/// because serde's `flatten` does not combine with `deny_unknown_fields`.
pub mod file_defaults {
    /// `timeout_seconds`.
    pub fn timeout_seconds() -> u64 {
        10
    }
    /// `max_in_flight`.
    pub fn max_in_flight() -> usize {
        100
    }
    /// `failure_threshold`.
    pub fn failure_threshold() -> u32 {
        5
    }
    /// `cool_down_seconds`.
    pub fn cool_down_seconds() -> u64 {
        10
    }
}

/// The problems with those limit keys, each prefixed with `path`.
pub fn limit_problems(
    path: &str,
    timeout_seconds: u64,
    max_in_flight: usize,
    breaker: BreakerConfig,
) -> Vec<String> {
    let mut errs = Vec::new();
    if timeout_seconds == 0 {
        errs.push(format!("{path}.timeout_seconds: must be at least 1"));
    }
    if max_in_flight == 0 {
        errs.push(format!("{path}.max_in_flight: must be at least 1"));
    }
    if breaker.failure_threshold > 0 && breaker.cool_down.is_zero() {
        errs.push(format!("{path}.cool_down_seconds: must be at least 1"));
    }
    errs
}

/// Where the circuit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// The cool-down has passed: one probe call decides.
    HalfOpen,
}

impl CircuitState {
    /// Text for `/readyz?verbose` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }

    /// `tokenhook_upstream_circuit_state` value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

#[derive(Debug)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Why a call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The circuit is open.
    #[error("circuit open after repeated failures")]
    CircuitOpen,
    /// Every slot stayed busy until the deadline.
    #[error("too many calls in flight")]
    Overloaded,
}

/// One upstream's guard: a concurrency limit, a circuit breaker and its metrics. Cheap to
/// share behind an `Arc`.
pub struct Upstream {
    name: String,
    slots: Semaphore,
    config: BreakerConfig,
    breaker: Mutex<Breaker>,
    metrics: Option<Metrics>,
    /// The series every successful call touches, looked up once: a lookup by label values
    /// hashes them on each call.
    hot: Option<(prometheus::IntCounter, prometheus::Histogram)>,
}

/// Call result labels (`tokenhook_upstream_requests_total{result}`).
pub mod result {
    /// A usable answer (yes or no).
    pub const SUCCESS: &str = "success";
    /// Transport or TLS failure.
    pub const TRANSPORT: &str = "transport";
    /// No answer in time.
    pub const TIMEOUT: &str = "timeout";
    /// A 5xx or 429.
    pub const SERVER_ERROR: &str = "server_error";
    /// 401 or 403: tokenhook is not allowed to ask.
    pub const FORBIDDEN: &str = "forbidden";
    /// An answer that is not what the protocol says.
    pub const INVALID: &str = "invalid";
    /// Not sent: circuit open.
    pub const CIRCUIT_OPEN: &str = "circuit_open";
    /// Not sent: concurrency limit.
    pub const OVERLOADED: &str = "overloaded";
}

impl Upstream {
    /// A guard for the upstream `name` (a metric label: from configuration only), letting
    /// `max_in_flight` calls run at once.
    pub fn new(
        name: String,
        max_in_flight: usize,
        config: BreakerConfig,
        metrics: Option<Metrics>,
    ) -> Arc<Self> {
        let hot = metrics.as_ref().map(|m| {
            (
                m.upstream_requests
                    .with_label_values(&[&name, result::SUCCESS]),
                m.upstream_duration.with_label_values(&[&name]),
            )
        });
        let u = Upstream {
            name,
            slots: Semaphore::new(max_in_flight.max(1)),
            config,
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            metrics,
            hot,
        };
        u.set_gauge(CircuitState::Closed);
        Arc::new(u)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The circuit's state now.
    pub fn state(&self) -> CircuitState {
        let b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        match &*b {
            Breaker::Closed { .. } => CircuitState::Closed,
            Breaker::Open { until } if Instant::now() >= *until => CircuitState::HalfOpen,
            Breaker::Open { .. } => CircuitState::Open,
            Breaker::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn set_gauge(&self, s: CircuitState) {
        if let Some(m) = &self.metrics {
            m.upstream_circuit
                .with_label_values(&[&self.name])
                .set(s.gauge());
        }
    }

    fn count(&self, result: &str, took: Option<Duration>) {
        let (Some(m), Some((success, duration))) = (&self.metrics, &self.hot) else {
            return;
        };
        if result == result::SUCCESS {
            success.inc();
        } else {
            m.upstream_requests
                .with_label_values(&[&self.name, result])
                .inc();
        }
        if let Some(t) = took {
            duration.observe(t.as_secs_f64());
        }
    }

    /// Takes a slot for one call, waiting for one until `deadline` at the latest.
    ///
    /// # Errors
    /// The circuit is open (or its one probe is already out), or no slot came free in time.
    /// Both are counted.
    pub async fn admit(self: &Arc<Self>, deadline: Instant) -> Result<Permit, Refused> {
        let probe = {
            let mut b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
            match &mut *b {
                Breaker::Closed { .. } => false,
                Breaker::Open { until } if Instant::now() >= *until => {
                    *b = Breaker::HalfOpen { probing: true };
                    true
                }
                Breaker::HalfOpen { probing } if !*probing => {
                    *probing = true;
                    true
                }
                Breaker::Open { .. } | Breaker::HalfOpen { .. } => {
                    drop(b);
                    self.count(result::CIRCUIT_OPEN, None);
                    return Err(Refused::CircuitOpen);
                }
            }
        };
        if probe {
            self.set_gauge(CircuitState::HalfOpen);
        }
        let mut permit = Permit {
            upstream: self.clone(),
            probe,
            started: Instant::now(),
            finished: false,
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, self.slots.acquire()).await {
            Ok(Ok(slot)) => {
                // Released when the permit goes: the semaphore counts, the permit owns.
                slot.forget();
                permit.started = Instant::now();
                Ok(permit)
            }
            _ => {
                // Not a failure of the upstream: the breaker is left as it was.
                permit.finished = true;
                permit.release_probe();
                self.count(result::OVERLOADED, None);
                Err(Refused::Overloaded)
            }
        }
    }

    fn record(&self, ok: bool) {
        let state = {
            let mut b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
            let next = match (&*b, ok) {
                (_, true) => Breaker::Closed { failures: 0 },
                (Breaker::Closed { failures }, false) => {
                    let failures = failures.saturating_add(1);
                    if self.config.failure_threshold > 0
                        && failures >= self.config.failure_threshold
                    {
                        Breaker::Open {
                            until: Instant::now() + self.config.cool_down,
                        }
                    } else {
                        Breaker::Closed { failures }
                    }
                }
                (Breaker::HalfOpen { .. }, false) => Breaker::Open {
                    until: Instant::now() + self.config.cool_down,
                },
                // Failures of calls admitted before the circuit opened change nothing.
                (Breaker::Open { until }, false) => Breaker::Open { until: *until },
            };
            let opened =
                matches!(next, Breaker::Open { .. }) && !matches!(*b, Breaker::Open { .. });
            *b = next;
            match &*b {
                Breaker::Closed { .. } => CircuitState::Closed,
                Breaker::Open { .. } => {
                    if opened {
                        tracing::warn!(upstream = %self.name, cool_down = ?self.config.cool_down, "circuit opened: failing fast");
                    }
                    CircuitState::Open
                }
                Breaker::HalfOpen { .. } => CircuitState::HalfOpen,
            }
        };
        self.set_gauge(state);
    }
}

/// One admitted call. Report its outcome with [`Permit::finish`]; dropped unfinished (the
/// review was cancelled) it frees its slot and, if it was the half-open probe, lets the
/// next call probe.
pub struct Permit {
    upstream: Arc<Upstream>,
    probe: bool,
    started: Instant,
    finished: bool,
}

impl Permit {
    /// Records the call's `result` (a [`result`] label); every result but `success` counts
    /// as a failure towards opening the circuit.
    pub fn finish(mut self, result: &'static str) {
        self.finished = true;
        let ok = result == result::SUCCESS;
        self.upstream.count(result, Some(self.started.elapsed()));
        self.upstream.record(ok);
        self.upstream.slots.add_permits(1);
    }

    fn release_probe(&self) {
        if self.probe {
            let mut b = self
                .upstream
                .breaker
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Breaker::HalfOpen { probing } = &mut *b {
                *probing = false;
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.finished {
            self.release_probe();
            self.upstream.slots.add_permits(1);
        }
    }
}

/// kube's webhook retry schedule (`k8s.io/apiserver/pkg/util/webhook`): 500 ms, ×1.5,
/// jitter 0.2, 5 steps (so at most 5 attempts and 4 waits).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First wait.
    pub initial: Duration,
    /// Growth per step.
    pub factor: f64,
    /// Up to this fraction of each wait is added at random.
    pub jitter: f64,
    /// Attempts in all.
    pub steps: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            factor: 1.5,
            jitter: 0.2,
            steps: 5,
        }
    }
}

impl Backoff {
    /// The wait after attempt `n` (0-based), jittered as `wait.Jitter` does: plus a
    /// uniform random fraction up to `jitter` of it.
    pub fn wait(&self, n: u32) -> Duration {
        let base = self.initial.as_secs_f64() * self.factor.powi(i32::try_from(n).unwrap_or(0));
        let mut bytes = [0u8; 4];
        // Without randomness the wait is merely unjittered.
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        let r = f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX);
        Duration::from_secs_f64(base * (1.0 + self.jitter * r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn breaker_opens_fails_fast_and_probes_once() {
        let u = Upstream::new(
            "t".into(),
            4,
            BreakerConfig {
                failure_threshold: 2,
                cool_down: Duration::from_millis(50),
            },
            None,
        );
        let far = Instant::now() + Duration::from_secs(5);
        u.admit(far).await.unwrap().finish(result::TRANSPORT);
        assert_eq!(u.state(), CircuitState::Closed);
        u.admit(far).await.unwrap().finish(result::TIMEOUT);
        assert_eq!(u.state(), CircuitState::Open);
        assert_eq!(u.admit(far).await.err(), Some(Refused::CircuitOpen));
        // After the cool-down, exactly one probe goes.
        while u.state() == CircuitState::Open {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let probe = u.admit(far).await.unwrap();
        assert_eq!(u.admit(far).await.err(), Some(Refused::CircuitOpen));
        // A cancelled probe lets the next call probe.
        drop(probe);
        let probe = u.admit(far).await.unwrap();
        probe.finish(result::SERVER_ERROR);
        assert_eq!(u.state(), CircuitState::Open);
        while u.state() == CircuitState::Open {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        u.admit(far).await.unwrap().finish(result::SUCCESS);
        assert_eq!(u.state(), CircuitState::Closed);
    }

    #[tokio::test]
    async fn concurrency_limit_waits_until_the_deadline() {
        let u = Upstream::new("t".into(), 1, BreakerConfig::default(), None);
        let far = Instant::now() + Duration::from_secs(5);
        let held = u.admit(far).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(u.admit(soon).await.err(), Some(Refused::Overloaded));
        drop(held);
        u.admit(far).await.unwrap().finish(result::SUCCESS);
        // Overload is not the upstream's failure.
        assert_eq!(u.state(), CircuitState::Closed);
    }

    #[test]
    fn backoff_follows_kube() {
        let b = Backoff::default();
        for (n, base) in [(0, 0.5), (1, 0.75), (2, 1.125), (3, 1.6875)] {
            let w = b.wait(n).as_secs_f64();
            assert!(w >= base - 1e-9 && w <= base * 1.2 + 1e-9, "{n}: {w}");
        }
    }
}
