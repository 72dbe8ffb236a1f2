//! Prometheus metrics: one registry per server (never the global one), label values from fixed sets only.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets from 50µs to 10s: a cache hit is tens of microseconds, an upstream call
/// can take seconds.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Every metric tokenhook exports. Cheap to clone (all handles are `Arc`s inside).
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// `tokenhook_http_requests_total{route,code}`.
    pub requests: IntCounterVec,
    /// `tokenhook_http_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `tokenhook_reviews_total{verifier,outcome}` (outcome: authenticated, unauthenticated, error).
    pub reviews: IntCounterVec,
    /// `tokenhook_rejections_total{verifier,reason}`.
    pub rejections: IntCounterVec,
    /// `tokenhook_verifier_duration_seconds{verifier}`: time in one verifier (cache misses only).
    pub verifier_duration: HistogramVec,
    /// `tokenhook_cache_requests_total{result}` (hit, miss).
    pub cache_requests: IntCounterVec,
    /// `tokenhook_cache_evictions_total{cause}` (expired, size, explicit, replaced).
    pub cache_evictions: IntCounterVec,
    /// `tokenhook_cache_entries`, refreshed at scrape time.
    pub cache_entries: IntGauge,
    /// `tokenhook_reloads_total{source,result}` (result: success, failure).
    pub reloads: IntCounterVec,
    /// `tokenhook_serving_certificate_expiry_timestamp_seconds`.
    pub cert_expiry: IntGauge,
    /// `tokenhook_tokens_minted_total{namespace}` (namespaces come from the registry only).
    pub tokens_minted: IntCounterVec,
    /// `tokenhook_jwks_refreshes_total{issuer,result}` (issuer: the configured URL).
    pub jwks_refreshes: IntCounterVec,
    /// `tokenhook_build_info{version}`, always 1.
    pub build_info: IntGaugeVec,
    /// `tokenhook_connections_open`: TCP connections accepted and not yet closed.
    pub connections_open: IntGauge,
    /// `tokenhook_connections_closed_total{reason}`.
    pub connections_closed: IntCounterVec,
}

/// Values of `tokenhook_connections_closed_total{reason}`.
pub const CLOSE_REASONS: [&str; 5] = [
    "handshake_failed",
    "handshake_timeout",
    "idle",
    "shutdown",
    "ended",
];

impl Metrics {
    /// Creates every metric and registers it in a fresh registry.
    ///
    /// # Errors
    /// Only on a programming error (duplicate or malformed metric names).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let m = Metrics {
            requests: counter(
                "tokenhook_http_requests_total",
                "HTTP requests answered, by route and status code.",
                &["route", "code"],
            )?,
            request_duration: histogram(
                "tokenhook_http_request_duration_seconds",
                "Time from request head to response, by route.",
                &["route"],
            )?,
            reviews: counter(
                "tokenhook_reviews_total",
                "Token reviews answered, by deciding verifier and outcome.",
                &["verifier", "outcome"],
            )?,
            rejections: counter(
                "tokenhook_rejections_total",
                "Tokens a verifier recognised and refused, by reason.",
                &["verifier", "reason"],
            )?,
            verifier_duration: histogram(
                "tokenhook_verifier_duration_seconds",
                "Time spent in one verifier on a cache miss.",
                &["verifier"],
            )?,
            cache_requests: counter(
                "tokenhook_cache_requests_total",
                "Verdict cache lookups, by result (hit or miss).",
                &["result"],
            )?,
            cache_evictions: counter(
                "tokenhook_cache_evictions_total",
                "Verdicts removed from the cache, by cause.",
                &["cause"],
            )?,
            cache_entries: gauge("tokenhook_cache_entries", "Verdicts currently cached.")?,
            reloads: counter(
                "tokenhook_reloads_total",
                "Reloads of file-backed sources, by source and result.",
                &["source", "result"],
            )?,
            cert_expiry: gauge(
                "tokenhook_serving_certificate_expiry_timestamp_seconds",
                "Expiry (notAfter) of the serving certificate in use, as a Unix timestamp.",
            )?,
            tokens_minted: counter(
                "tokenhook_tokens_minted_total",
                "Service-account tokens minted, by namespace.",
                &["namespace"],
            )?,
            jwks_refreshes: counter(
                "tokenhook_jwks_refreshes_total",
                "JWKS loads per configured issuer, by result.",
                &["issuer", "result"],
            )?,
            build_info: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "tokenhook_build_info",
                        "Always 1; labelled with the version.",
                    ),
                    &["version"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            connections_open: gauge(
                "tokenhook_connections_open",
                "Connections accepted and not yet closed (both listeners).",
            )?,
            connections_closed: counter(
                "tokenhook_connections_closed_total",
                "Connections closed, by reason: handshake_failed, handshake_timeout, idle, shutdown, ended (by the client or after an error).",
                &["reason"],
            )?,
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Series that exist from the start (at zero), so that rates and alerts work before
        // the first event.
        for reason in CLOSE_REASONS {
            m.connections_closed.with_label_values(&[reason]);
        }
        for cause in ["expired", "size", "explicit", "replaced"] {
            m.cache_evictions.with_label_values(&[cause]);
        }
        for result in ["hit", "miss"] {
            m.cache_requests.with_label_values(&[result]);
        }
        // process_* (CPU, memory, file descriptors, start time) from /proc.
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// The text exposition of everything registered.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding our own, well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Counts one reload of `source`.
    pub fn reloaded(&self, source: &str, ok: bool) {
        self.reloads
            .with_label_values(&[source, if ok { "success" } else { "failure" }])
            .inc();
    }
}
