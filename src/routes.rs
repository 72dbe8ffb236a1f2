//! The router: one `match` on method and path, plus the per-request metrics and health answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tracing::Instrument;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::App;
use crate::k8s::Status;
use crate::k8s::token_review::ApiVersion;
use crate::review;
use crate::server::ConnInfo;
use crate::server::http_error::{Body, status_response, text};

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Review(ApiVersion),
    Webhook,
    Mint { namespace: &'a str, name: &'a str },
    Discovery,
    Jwks,
    Version,
    SelfSubjectReview,
    ApiDiscovery,
    OpenApiIndex,
    OpenApi(&'a str),
    OpenApiV2,
    Metrics,
    Health(&'static str),
    NotFound,
}

impl<'a> Route<'a> {
    fn of(app: &App, path: &'a str) -> Route<'a> {
        if let Some(rest) = path.strip_prefix("/api/v1/namespaces/") {
            let mut seg = rest.split('/');
            if let (Some(namespace), Some("serviceaccounts"), Some(name), Some("token"), None) =
                (seg.next(), seg.next(), seg.next(), seg.next(), seg.next())
                && !namespace.is_empty()
                && !name.is_empty()
            {
                return Route::Mint { namespace, name };
            }
        }
        if let Some(v) = path.strip_prefix("/openapi/v3/apis/authentication.k8s.io/") {
            return Route::OpenApi(v);
        }
        if crate::k8s::discovery::is_discovery(path) {
            return Route::ApiDiscovery;
        }
        match path {
            "/apis/authentication.k8s.io/v1/selfsubjectreviews" => Route::SelfSubjectReview,
            "/openapi/v3" => Route::OpenApiIndex,
            "/openapi/v2" => Route::OpenApiV2,
            "/.well-known/openid-configuration" => Route::Discovery,
            "/openid/v1/jwks" => Route::Jwks,
            "/version" => Route::Version,
            "/apis/authentication.k8s.io/v1/tokenreviews" => Route::Review(ApiVersion::V1),
            "/apis/authentication.k8s.io/v1beta1/tokenreviews" => {
                Route::Review(ApiVersion::V1beta1)
            }
            "/metrics" => Route::Metrics,
            "/livez" => Route::Health("livez"),
            "/readyz" => Route::Health("readyz"),
            "/healthz" => Route::Health("healthz"),
            p if p == app.config.webhook_path => Route::Webhook,
            _ => Route::NotFound,
        }
    }

    /// Metric label.
    fn label(&self) -> &'static str {
        match self {
            Route::Review(_) => "tokenreviews",
            Route::Webhook => "webhook",
            Route::Mint { .. } => "token",
            Route::Discovery => "openid_configuration",
            Route::Jwks => "jwks",
            Route::Version => "version",
            Route::SelfSubjectReview => "selfsubjectreviews",
            Route::ApiDiscovery => "discovery",
            Route::OpenApiIndex | Route::OpenApi(_) | Route::OpenApiV2 => "openapi",
            Route::Metrics => "metrics",
            Route::Health(h) => h,
            Route::NotFound => "other",
        }
    }
}

/// Named once: inserting by `&str` parses and checks the name on every response.
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A process-unique request id: a random prefix (per process) and a counter, so that ids
/// from several replicas do not collide in aggregated logs.
fn request_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        let _ = aws_lc_rs::rand::fill(&mut b);
        u32::from_le_bytes(b)
    });
    // Hand-rolled hex: this runs on every request, and `format!` costs more than the rest.
    let hex = |v: u64| char::from_digit((v & 0xf) as u32, 16).unwrap_or('0');
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    // Exactly as long as it will be: `Bytes::from` takes a full buffer over as it is, but
    // gives one with spare capacity a second allocation (`with_request_id`).
    let mut id = String::with_capacity(9 + digits as usize);
    for shift in (0..8).rev() {
        id.push(hex(u64::from(*prefix) >> (shift * 4)));
    }
    id.push('-');
    for shift in (0..digits).rev() {
        id.push(hex(n >> (shift * 4)));
    }
    id
}

/// The span that every line written while serving a request carries: its id.
pub fn request_span(id: &str) -> tracing::Span {
    tracing::info_span!("request", id)
}

/// Serves one request; never fails (every failure is a `Status` response). Every log line
/// written while serving it carries its request id (also sent back as `X-Request-Id`).
///
/// Returns the request's future boxed: hyper moves a stream's future several times before it
/// runs (into the HTTP/2 stream task, then tokio's task cell), and a pointer is cheaper to
/// move than the request's whole state. The box holds only the future of what the request
/// is: a review's is a fraction of the size of one that could be any route (issue 12).
pub fn handle(
    app: Arc<App>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
    let started = Instant::now();
    let id = request_id();
    let route = Route::of(&app, req.uri().path());
    let review = match route {
        _ if conn.metrics_only || req.method() != Method::POST => None,
        Route::Review(v) => Some((v, route.label())),
        Route::Webhook => Some((ApiVersion::V1, route.label())),
        _ => None,
    };
    match review {
        Some((version, label)) => {
            Box::pin(review_route(app, conn, req, version, label, id, started))
        }
        None => Box::pin(other_route(app, conn, req, id, started)),
    }
}

/// A TokenReview POST, the hot path. It makes the request span only when it writes a line
/// (`review::first`): made, entered and formatted for every request, the span cost a tenth
/// of a cache hit's instructions at the default log level (issue 12).
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async fn`
/// keeps a second copy of each argument (the request is 264 bytes) in its state
/// (rust-lang/rust#62958).
#[allow(clippy::manual_async_fn)]
fn review_route(
    app: Arc<App>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
    version: ApiVersion,
    label: &'static str,
    id: String,
    started: Instant,
) -> impl Future<Output = Response<Body>> + Send {
    async move {
        let pretty_hint = crate::server::body::user_agent_wants_pretty(req.headers());
        // Bounded as every API request is (see `route_request`).
        let Ok(_slot) = app.in_flight.try_acquire() else {
            app.metrics
                .requests
                .with_label_values(&[label, "429"])
                .inc();
            let r = status_response(&Status::too_many_requests(1), pretty_hint);
            return with_request_id(r, id);
        };
        let arrival = review::Arrival {
            started,
            pretty_hint,
            id: &id,
        };
        // Only what has to wait is awaited (a hit has nothing to): this future's state is the
        // request and a pointer, not the whole review's.
        let response = match review::first(&app, &conn, req, version, arrival) {
            review::First::Done(r) => r,
            review::First::Wait(rest) => rest.await,
        };
        app.metrics
            .request_done(label, response.status(), started.elapsed());
        with_request_id(response, id)
    }
}

/// Every other route, inside the request span.
async fn other_route(
    app: Arc<App>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
    id: String,
    started: Instant,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let route = Route::of(&app, &path);
    let r = route_request(app, conn, req, route, &path, &id, started)
        .instrument(request_span(&id))
        .await;
    with_request_id(r, id)
}

/// Sends the request id back as `X-Request-Id`.
fn with_request_id(mut r: Response<Body>, id: String) -> Response<Body> {
    // The id's own buffer becomes the header value: no copy (it is allocated full, see
    // `request_id`).
    if let Ok(mut v) = http::HeaderValue::from_maybe_shared(bytes::Bytes::from(id)) {
        // Unique per response, so HTTP/2's HPACK must not index it: indexing made the
        // encoder search and churn its dynamic table on every response (about 5k
        // instructions, counted with benches/load/profile.py --h2). Sensitive values are
        // sent as never-indexed literals.
        v.set_sensitive(true);
        r.headers_mut().insert(X_REQUEST_ID, v);
    }
    r
}

async fn route_request(
    app: Arc<App>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
    route: Route<'_>,
    path: &str,
    id: &str,
    started: Instant,
) -> Response<Body> {
    let pretty_hint = crate::server::body::user_agent_wants_pretty(req.headers());
    let arrival = review::Arrival {
        started,
        pretty_hint,
        id,
    };
    // The metrics listener serves metrics and health only; with one configured, the main
    // listener does not serve metrics.
    let route = match (conn.metrics_only, route) {
        (true, Route::Metrics | Route::Health(_)) => route,
        (true, _) => Route::NotFound,
        (false, Route::Metrics) if app.config.metrics.listen.is_some() => Route::NotFound,
        (false, r) => r,
    };
    // API work (not health or metrics) is bounded: over the limit, 429 at once rather than
    // an unbounded queue; kube-apiserver's webhook client retries 429.
    let _slot = match route {
        Route::Review(_) | Route::Webhook | Route::Mint { .. } | Route::SelfSubjectReview => {
            match app.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    app.metrics
                        .requests
                        .with_label_values(&[route.label(), "429"])
                        .inc();
                    return status_response(&Status::too_many_requests(1), pretty_hint);
                }
            }
        }
        _ => None,
    };
    let response = match (route, req.method()) {
        // Reviews take `review_route`; these arms keep this function whole on its own, boxed
        // so that they add nothing to its state.
        (Route::Review(v), &Method::POST) => {
            Box::pin(review::handle(&app, &conn, req, v, arrival)).await
        }
        (Route::Webhook, &Method::POST) => {
            Box::pin(review::handle(&app, &conn, req, ApiVersion::V1, arrival)).await
        }
        // Rare routes with large futures are boxed so that the review path's stays small.
        (Route::Mint { namespace, name }, &Method::POST) => {
            Box::pin(crate::mint::handler::handle(
                &app, &conn, req, namespace, name,
            ))
            .await
        }
        (Route::Discovery, &Method::GET) => discovery(&app, false),
        (Route::Jwks, &Method::GET) => discovery(&app, true),
        (Route::Version, &Method::GET) => version(),
        (Route::SelfSubjectReview, &Method::POST) => {
            Box::pin(review::self_subject_review(&app, &conn, req)).await
        }
        (Route::ApiDiscovery, &Method::GET) => {
            match crate::k8s::discovery::document(path, app.issuer.is_some()) {
                Some(doc) => crate::server::http_error::json(
                    StatusCode::OK,
                    crate::k8s::codec::encode(&doc, pretty_hint),
                ),
                None => status_response(&Status::path_not_found(), pretty_hint),
            }
        }
        (Route::OpenApiV2, &Method::GET) => openapi_v2(req.headers()),
        (Route::OpenApiIndex, &Method::GET) => crate::server::http_error::json(
            StatusCode::OK,
            crate::k8s::codec::encode(&crate::k8s::discovery::openapi_index(), false),
        ),
        (Route::OpenApi(v), &Method::GET) => match crate::k8s::discovery::openapi(v) {
            Some(doc) => crate::server::http_error::json(
                StatusCode::OK,
                crate::k8s::codec::encode(&doc, false),
            ),
            None => status_response(&Status::path_not_found(), pretty_hint),
        },
        (Route::Metrics, &Method::GET) => Box::pin(metrics(&app, &conn, &req)).await,
        (Route::Health(name), &Method::GET | &Method::HEAD) => {
            health(&app, name, req.uri().query())
        }
        (Route::NotFound, _) => status_response(&Status::path_not_found(), pretty_hint),
        _ => status_response(&Status::method_not_allowed(), pretty_hint),
    };
    app.metrics
        .request_done(route.label(), response.status(), started.elapsed());
    response
}

/// OIDC discovery and the JWKS, public as kube's ServiceAccountIssuerDiscovery (404 when
/// minting is not configured).
fn discovery(app: &App, jwks: bool) -> Response<Body> {
    let Some(issuer) = &app.issuer else {
        return status_response(&Status::path_not_found(), false);
    };
    let (doc, content_type) = if jwks {
        (issuer.jwks(), "application/jwk-set+json")
    } else {
        (issuer.discovery(), "application/json")
    };
    let mut r =
        crate::server::http_error::json(StatusCode::OK, crate::k8s::codec::encode(&doc, false));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

/// `GET /openapi/v2`: protobuf when the client accepts it (kubectl only does), else JSON.
fn openapi_v2(headers: &http::HeaderMap) -> Response<Body> {
    use crate::k8s::openapi_v2;
    let wants_pb = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(openapi_v2::PROTOBUF));
    if wants_pb {
        let mut r = text(StatusCode::OK, openapi_v2::protobuf());
        // As kube-openapi answers it: the requested type is not a valid Content-Type for
        // Go's mime parser ('@').
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
        r
    } else {
        crate::server::http_error::json(
            StatusCode::OK,
            crate::k8s::codec::encode(&openapi_v2::json(), false),
        )
    }
}

/// `GET /version`, shaped like kube's `version.Info` so clients that ask can parse it.
fn version() -> Response<Body> {
    let v = serde_json::json!({
        "major": "1",
        "minor": "36",
        "gitVersion": concat!("v1.36.0+tokenhook-", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    });
    crate::server::http_error::json(StatusCode::OK, crate::k8s::codec::encode(&v, false))
}

async fn metrics(app: &App, conn: &ConnInfo, req: &Request<Incoming>) -> Response<Body> {
    if let Err(st) = app
        .callers
        .check(conn.client_cert.as_ref(), req.headers(), "metrics")
    {
        return status_response(&st, false);
    }
    let entries = app.cache.settled_entry_count().await;
    app.metrics
        .cache_entries
        .set(i64::try_from(entries).unwrap_or(i64::MAX));
    let mut r = text(StatusCode::OK, app.metrics.encode());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `/livez`, `/readyz`, `/healthz`, as kube-apiserver answers them: `ok`, or with
/// `?verbose` one `[+]`/`[-]` line per check. Readiness needs every JWT issuer's keys and,
/// with the `kubernetes` registry, every watch listed and running; a failed check answers
/// 500 with the list.
fn health(app: &App, name: &'static str, query: Option<&str>) -> Response<Body> {
    let verbose = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.split('=').next() == Some("verbose"))
    });
    let mut checks: Vec<(String, bool)> = vec![("ping".into(), true)];
    if name != "livez" {
        checks.push(("tls-certificate".into(), true));
        checks.extend(app.chain.readiness());
        if let Some(i) = &app.issuer {
            checks.extend(i.config.registry.readiness());
        }
    }
    let ok = checks.iter().all(|(_, up)| *up);
    if ok && !verbose {
        return text(StatusCode::OK, "ok");
    }
    let mut out = String::new();
    for (c, up) in &checks {
        if *up {
            out.push_str(&format!("[+]{c} ok\n"));
        } else {
            out.push_str(&format!("[-]{c} failed: reason withheld\n"));
        }
    }
    if ok {
        out.push_str(&format!("{name} check passed\n"));
        text(StatusCode::OK, out)
    } else {
        out.push_str(&format!("{name} check failed\n"));
        text(StatusCode::INTERNAL_SERVER_ERROR, out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_a_fixed_prefix_and_a_hex_counter() {
        let ids: Vec<String> = (0..40).map(|_| super::request_id()).collect();
        for w in ids.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            let (pa, na) = a.split_once('-').unwrap();
            let (pb, nb) = b.split_once('-').unwrap();
            assert_eq!(pa, pb);
            assert_eq!(pa.len(), 8);
            let (na, nb) = (
                u64::from_str_radix(na, 16).unwrap(),
                u64::from_str_radix(nb, 16).unwrap(),
            );
            // Other tests may take ids in between; never the same one twice.
            assert!(nb > na, "{a} then {b}");
            assert_eq!(format!("{pa}-{na:x}"), *a);
            // Allocated full, so that the header value takes the buffer over unchanged.
            assert_eq!(a.len(), a.capacity(), "{a}");
        }
    }
}
