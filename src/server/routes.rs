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
enum Route<'a> {
    Review(ApiVersion),
    Webhook,
    Mint { namespace: &'a str, name: &'a str },
    Discovery,
    Jwks,
    Version,
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
        match path {
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
            Route::Metrics => "metrics",
            Route::Health(h) => h,
            Route::NotFound => "other",
        }
    }
}

/// Serves one request; never fails (every failure is a `Status` response).
pub async fn handle(app: Arc<App>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let route = Route::of(&app, &path);
    let pretty_hint = super::body::user_agent_wants_pretty(req.headers());
    let response = match (route, req.method()) {
        (Route::Review(v), &Method::POST) => review::handle(&app, &conn, req, v).await,
        (Route::Webhook, &Method::POST) => review::handle(&app, &conn, req, ApiVersion::V1).await,
        (Route::Mint { namespace, name }, &Method::POST) => {
            crate::mint::handler::handle(&app, &conn, req, namespace, name).await
        }
        (Route::Discovery, &Method::GET) => discovery(&app, false),
        (Route::Jwks, &Method::GET) => discovery(&app, true),
        (Route::Version, &Method::GET) => version(),
        (Route::Metrics, &Method::GET) => metrics(&app, &conn, &req),
        (Route::Health(name), &Method::GET | &Method::HEAD) => {
            health(&app, name, req.uri().query())
        }
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
    let mut r = super::http_error::json(StatusCode::OK, crate::k8s::codec::encode(&doc, false));
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
    super::http_error::json(StatusCode::OK, crate::k8s::codec::encode(&v, false))
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

/// `/livez`, `/readyz`, `/healthz`, as kube-apiserver answers them: `ok`, or with
/// `?verbose` one `[+]`/`[-]` line per check. Readiness needs every JWT issuer's keys; a
/// failed check answers 500 with the list.
fn health(app: &App, name: &'static str, query: Option<&str>) -> Response<Body> {
    let verbose = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.split('=').next() == Some("verbose"))
    });
    let mut checks: Vec<(String, bool)> = vec![("ping".into(), true)];
    if name != "livez" {
        checks.push(("tls-certificate".into(), true));
        checks.extend(app.chain.readiness());
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
