//! Prometheus metrics: one registry per server (never the global one), label values from fixed sets only.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
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
    /// `tokenhook_upstream_requests_total{upstream,result}` (upstream: a configured verifier
    /// name; result: see [`crate::outbound::result`]).
    pub upstream_requests: IntCounterVec,
    /// `tokenhook_upstream_request_duration_seconds{upstream}`: calls that were sent.
    pub upstream_duration: HistogramVec,
    /// `tokenhook_upstream_circuit_state{upstream}`: 0 closed, 1 half-open, 2 open.
    pub upstream_circuit: IntGaugeVec,
    /// `tokenhook_build_info{version}`, always 1.
    pub build_info: IntGaugeVec,
    /// `tokenhook_registry_watch_up{resource}`: 1 while the cluster registry's watch of
    /// `resource` (serviceaccounts, pods, secrets, nodes) is listed and running.
    pub registry_watch_up: IntGaugeVec,
    /// `tokenhook_registry_watch_failures_total{resource}`: watches lost (each retried from a
    /// fresh list after a backoff).
    pub registry_watch_failures: IntCounterVec,
    /// `tokenhook_connections_open`: TCP connections accepted and not yet closed.
    pub connections_open: IntGauge,
    /// `tokenhook_connections_closed_total{reason}`.
    pub connections_closed: IntCounterVec,
    /// The review path's series, resolved once.
    hot: Arc<HotSeries>,
}

/// Routes whose series [`HotSeries`] keeps: every review arrives on one of them.
const HOT_ROUTES: [&str; 2] = ["tokenreviews", "webhook"];
/// Verifier labels (`AnyVerifier::kind` and "none"), in [`HotSeries::reviews`] order.
const HOT_VERIFIERS: [&str; 4] = ["static", "service_account", "jwt", "none"];
/// `tokenhook_reviews_total` outcomes, in [`HotSeries::reviews`] order.
const OUTCOMES: [&str; 3] = ["authenticated", "unauthenticated", "error"];

/// The children a review touches, each resolved on first use and then kept: a
/// `with_label_values` call hashes its labels (SipHash) and takes the vector's read lock,
/// four times per review, a few percent of a whole cache hit. Series appear in `/metrics`
/// when first used, as they did before. Label values outside these fixed sets still work,
/// through `with_label_values`.
#[derive(Default)]
struct HotSeries {
    /// `requests{route, "201"}` per [`HOT_ROUTES`] entry.
    created: [OnceLock<IntCounter>; 2],
    /// `request_duration{route}` per [`HOT_ROUTES`] entry.
    duration: [OnceLock<Histogram>; 2],
    /// `cache_requests{hit}`.
    cache_hit: OnceLock<IntCounter>,
    /// `cache_requests{miss}`.
    cache_miss: OnceLock<IntCounter>,
    /// `reviews{verifier, outcome}` per [`HOT_VERIFIERS`] × [`OUTCOMES`].
    reviews: [[OnceLock<IntCounter>; 3]; 4],
    /// `verifier_duration{verifier}` per [`HOT_VERIFIERS`] entry.
    verifier_duration: [OnceLock<Histogram>; 4],
}

/// Applies `f` to the series in `hot` (resolved by `resolve` on first use), or, for a label
/// outside the fixed sets (no slot), to the series `resolve` looks up each time.
fn with_series<M>(hot: Option<&OnceLock<M>>, resolve: impl FnOnce() -> M, f: impl FnOnce(&M)) {
    match hot {
        Some(slot) => f(slot.get_or_init(resolve)),
        None => f(&resolve()),
    }
}

/// The slot of `label` in `slots`, kept in the order of `set`.
fn slot<'a, T>(set: &[&str], slots: &'a [T], label: &str) -> Option<&'a T> {
    slots.get(set.iter().position(|s| *s == label)?)
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
            upstream_requests: counter(
                "tokenhook_upstream_requests_total",
                "Calls to upstream verifiers (introspection, TokenReview), by configured upstream and result.",
                &["upstream", "result"],
            )?,
            upstream_duration: histogram(
                "tokenhook_upstream_request_duration_seconds",
                "Time one upstream call took (calls refused by the circuit or the concurrency limit are not observed).",
                &["upstream"],
            )?,
            upstream_circuit: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "tokenhook_upstream_circuit_state",
                        "Circuit breaker per upstream: 0 closed, 1 half-open (probing), 2 open (failing fast).",
                    ),
                    &["upstream"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
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
            registry_watch_up: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "tokenhook_registry_watch_up",
                        "1 while the kubernetes registry's watch of a resource is listed and running.",
                    ),
                    &["resource"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            registry_watch_failures: counter(
                "tokenhook_registry_watch_failures_total",
                "Watches of the kubernetes registry lost (each retried from a fresh list).",
                &["resource"],
            )?,
            connections_open: gauge(
                "tokenhook_connections_open",
                "Connections accepted and not yet closed (both listeners).",
            )?,
            connections_closed: counter(
                "tokenhook_connections_closed_total",
                "Connections closed, by reason: handshake_failed, handshake_timeout, idle, shutdown, ended (by the client or after an error).",
                &["reason"],
            )?,
            hot: Arc::default(),
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
        m.registry.register(Box::new(DroppedLogLines::new()?))?;
        Ok(m)
    }

    /// The text exposition of everything registered.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding our own, well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Counts one answered request on `route` (a route label) and observes its duration.
    pub fn request_done(&self, route: &'static str, code: http::StatusCode, took: Duration) {
        let created = (code == http::StatusCode::CREATED)
            .then(|| slot(&HOT_ROUTES, &self.hot.created, route))
            .flatten();
        with_series(
            created,
            || self.requests.with_label_values(&[route, code.as_str()]),
            IntCounter::inc,
        );
        with_series(
            slot(&HOT_ROUTES, &self.hot.duration, route),
            || self.request_duration.with_label_values(&[route]),
            |h| h.observe(took.as_secs_f64()),
        );
    }

    /// Counts one verdict cache lookup.
    pub fn cache_lookup(&self, hit: bool) {
        let (label, c) = if hit {
            ("hit", &self.hot.cache_hit)
        } else {
            ("miss", &self.hot.cache_miss)
        };
        with_series(
            Some(c),
            || self.cache_requests.with_label_values(&[label]),
            IntCounter::inc,
        );
    }

    /// Counts one review decided by `verifier` with `outcome`.
    pub fn review(&self, verifier: &str, outcome: &str) {
        let hot = slot(&HOT_VERIFIERS, &self.hot.reviews, verifier)
            .and_then(|by_outcome| slot(&OUTCOMES, by_outcome, outcome));
        with_series(
            hot,
            || self.reviews.with_label_values(&[verifier, outcome]),
            IntCounter::inc,
        );
    }

    /// Observes one verifier call of `took`.
    pub fn verifier_took(&self, verifier: &str, took: Duration) {
        with_series(
            slot(&HOT_VERIFIERS, &self.hot.verifier_duration, verifier),
            || self.verifier_duration.with_label_values(&[verifier]),
            |h| h.observe(took.as_secs_f64()),
        );
    }

    /// Counts one reload of `source`.
    pub fn reloaded(&self, source: &str, ok: bool) {
        self.reloads
            .with_label_values(&[source, if ok { "success" } else { "failure" }])
            .inc();
    }
}

/// `tokenhook_log_lines_dropped_total`: log lines the non-blocking writer dropped because
/// its queue was full ([`crate::logging`]). The count is the process's, read at scrape time,
/// as `process_*` are; it stays 0 where `logging::init` never ran (tests).
struct DroppedLogLines {
    /// Name and help of what each scrape reports.
    opts: Opts,
    /// The one descriptor, from `opts`.
    desc: Vec<prometheus::core::Desc>,
}

impl DroppedLogLines {
    fn new() -> Result<Self, prometheus::Error> {
        use prometheus::core::Describer;
        let opts = Opts::new(
            "tokenhook_log_lines_dropped_total",
            "Log lines dropped because the log writer's queue was full (stderr not draining).",
        );
        let desc = vec![opts.describe()?];
        Ok(DroppedLogLines { opts, desc })
    }
}

impl prometheus::core::Collector for DroppedLogLines {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.desc.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        // A fresh counter per scrape, set to the writer's own count: nothing to keep in step.
        match IntCounter::with_opts(self.opts.clone()) {
            Ok(c) => {
                c.inc_by(crate::logging::dropped_lines());
                c.collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_series_are_the_labelled_ones() {
        let m = Metrics::new().unwrap();
        let ms = Duration::from_millis(1);
        m.request_done("tokenreviews", http::StatusCode::CREATED, ms);
        m.request_done("tokenreviews", http::StatusCode::CREATED, ms);
        m.request_done("tokenreviews", http::StatusCode::BAD_REQUEST, ms);
        m.request_done("jwks", http::StatusCode::OK, ms);
        let count = |route: &str, code: &str| m.requests.with_label_values(&[route, code]).get();
        assert_eq!(count("tokenreviews", "201"), 2);
        assert_eq!(count("tokenreviews", "400"), 1);
        assert_eq!(count("jwks", "200"), 1);
        let observed = |route: &str| {
            m.request_duration
                .with_label_values(&[route])
                .get_sample_count()
        };
        assert_eq!(observed("tokenreviews"), 3);
        assert_eq!(observed("jwks"), 1);

        m.cache_lookup(true);
        m.cache_lookup(false);
        m.cache_lookup(true);
        assert_eq!(m.cache_requests.with_label_values(&["hit"]).get(), 2);
        assert_eq!(m.cache_requests.with_label_values(&["miss"]).get(), 1);

        m.review("jwt", "authenticated");
        m.review("none", "error");
        m.review("none", "error");
        m.review("future_kind", "unauthenticated");
        let reviews = |v: &str, o: &str| m.reviews.with_label_values(&[v, o]).get();
        assert_eq!(reviews("jwt", "authenticated"), 1);
        assert_eq!(reviews("none", "error"), 2);
        assert_eq!(reviews("future_kind", "unauthenticated"), 1);

        m.verifier_took("static", ms);
        m.verifier_took("other", ms);
        for v in ["static", "other"] {
            let h = m.verifier_duration.with_label_values(&[v]);
            assert_eq!(h.get_sample_count(), 1);
            assert!((h.get_sample_sum() - 0.001).abs() < 1e-9);
        }
        // Resolving on first use: unused series are not exported.
        let text = String::from_utf8(m.encode()).unwrap();
        // The log writer's drop count is there from the start (0: no writer in tests).
        assert!(text.contains("\ntokenhook_log_lines_dropped_total 0\n"));
        assert!(!text.contains("verifier=\"service_account\""));
        assert!(!text.contains("route=\"webhook\""));
    }
}
