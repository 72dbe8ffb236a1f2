//! The router: one `match` on method and path, plus the per-request metrics and health answers.

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::http_error::{Body, status_response, text};
use super::{App, ConnInfo};
use crate::k8s::Status;
use crate::k8s::token_review::ApiVersion;
use crate::review;

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Review(ApiVersion),
    Webhook,
    Metrics,
    Health(&'static str),
    NotFound,
}

impl Route {
    fn of(app: &App, path: &str) -> Route {
        match path {
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
    fn label(self) -> &'static str {
        match self {
            Route::Review(_) => "tokenreviews",
            Route::Webhook => "webhook",
            Route::Metrics => "metrics",
            Route::Health(h) => h,
            Route::NotFound => "other",
        }
    }
}

/// Serves one request; never fails (every failure is a `Status` response).
pub async fn handle(app: Arc<App>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let route = Route::of(&app, req.uri().path());
    let pretty_hint = review::user_agent_wants_pretty(req.headers());
    let response = match (route, req.method()) {
        (Route::Review(v), &Method::POST) => review::handle(&app, &conn, req, v).await,
        (Route::Webhook, &Method::POST) => review::handle(&app, &conn, req, ApiVersion::V1).await,
        (Route::Metrics, &Method::GET) => metrics(&app, &conn, &req),
        (Route::Health(name), &Method::GET | &Method::HEAD) => health(name, req.uri().query()),
        (Route::NotFound, _) => status_response(&Status::path_not_found(), pretty_hint),
        _ => status_response(&Status::method_not_allowed(), pretty_hint),
    };
    let code = response.status();
    app.metrics
        .requests
        .with_label_values(&[route.label(), code.as_str()])
        .inc();
    app.metrics
        .request_duration
        .with_label_values(&[route.label()])
        .observe(started.elapsed().as_secs_f64());
    response
}

fn metrics(app: &App, conn: &ConnInfo, req: &Request<Incoming>) -> Response<Body> {
    if let Err(st) = app
        .callers
        .check(conn.client_cert.as_ref(), req.headers(), "metrics")
    {
        return status_response(&st, false);
    }
    app.metrics
        .cache_entries
        .set(app.cache.entry_count() as i64);
    let mut r = text(StatusCode::OK, app.metrics.encode());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `/livez`, `/readyz`, `/healthz`: a bound server with loaded certificates and verifiers is
/// live and ready (nothing loads lazily yet). `?verbose` lists the checks as kube does.
fn health(name: &'static str, query: Option<&str>) -> Response<Body> {
    let verbose = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.split('=').next() == Some("verbose"))
    });
    if !verbose {
        return text(StatusCode::OK, "ok");
    }
    let checks: &[&str] = match name {
        "livez" => &["ping"],
        _ => &["ping", "tls-certificate", "verifiers"],
    };
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!("[+]{c} ok\n"));
    }
    out.push_str(&format!("{name} check passed\n"));
    text(StatusCode::OK, out)
}
