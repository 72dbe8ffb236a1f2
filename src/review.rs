//! TokenReview: decode (with fieldValidation), cache, chain, audiences, encode — kube-apiserver's semantics.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::app::App;
use crate::cache::{Cached, Key, VerdictCache};
use crate::k8s::Status;
use crate::k8s::codec::{self, DecodeError, FieldValidation};
use crate::k8s::protobuf;
use crate::k8s::query::CreateOptions;
use crate::k8s::token_review::{ApiVersion, TokenReview, TokenReviewStatus};
use crate::server::ConnInfo;
use crate::server::body::{self, Arrived, Media};
use crate::server::http_error::{Body, json, status_response};
use crate::verify::{Outcome, Token, VerifyError};

/// Seconds kube-apiserver is asked to wait before retrying a review we could not check.
const RETRY_AFTER_SECONDS: u32 = 1;

/// `status.audiences` for an identity, or `None` when it is not valid for the request.
///
/// * `spec`: the review's `spec.audiences`; empty means the API server's (`api`).
/// * `token`: `None` for an audience-agnostic identity (valid for "the API server"),
///   else the audiences the identity is valid for.
///
/// An agnostic identity with no API audiences configured answers empty (the API's "valid for
/// the kube-apiserver's own audience"); otherwise the requested audiences are intersected
/// with the API audiences (agnostic) or the token's own, keeping the request's order.
pub fn audiences(spec: &[String], api: &[String], token: Option<&[String]>) -> Option<Vec<String>> {
    let valid_for = match token {
        None if api.is_empty() => return Some(Vec::new()),
        None => api,
        Some(t) => t,
    };
    let requested = if spec.is_empty() { api } else { spec };
    let both: Vec<String> = requested
        .iter()
        .filter(|a| valid_for.contains(a))
        .cloned()
        .collect();
    (!both.is_empty()).then_some(both)
}

/// What the router already knows of a request, so that the review does not work it out again.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// When the request head arrived (for the log line's latency).
    pub started: Instant,
    /// The User-Agent asks for pretty JSON by default (kube's curl/Wget rule).
    pub pretty_hint: bool,
    /// The request id, for the span its log lines are written in.
    pub id: &'a str,
}

/// Writes one line inside the request's span, made only now that a line is written: a
/// review runs outside it (see `routes::review_route`), so that a cache hit that logs nothing
/// does not pay for it.
macro_rules! logged {
    ($id:expr, $level:expr, $($field:tt)*) => {
        if tracing::enabled!($level) {
            crate::routes::request_span($id).in_scope(|| tracing::event!($level, $($field)*));
        }
    };
}

/// What the first poll of a TokenReview POST came to.
pub enum First {
    /// The answer, made in that poll: the body had arrived with the head and the verdict was
    /// cached, or the request was refused before anything had to be waited for.
    Done(Response<Body>),
    /// The rest of the review, to await: the body is still arriving, the verdict has to be
    /// decided (a miss), or a cached one checked against cluster objects.
    Wait(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

/// Answers one TokenReview POST. `default_version` is the path's, used when the body names none.
pub async fn handle(
    app: &Arc<App>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    default_version: ApiVersion,
    arrival: Arrival<'_>,
) -> Response<Body> {
    match first(app, conn, req, default_version, arrival) {
        First::Done(r) => r,
        First::Wait(rest) => rest.await,
    }
}

/// A TokenReview POST up to its first wait, and without one when it can: run in the first
/// poll of the request's future, by when hyper has handed over the body that came with the
/// head, a cache hit is answered in one pass. Only what has to wait becomes a future (issue
/// 12: the state of a review written as one `async` block was 2.4 KiB, boxed and copied per
/// request, and the decoded review was moved through three nested futures).
pub fn first(
    app: &Arc<App>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    default_version: ApiVersion,
    arrival: Arrival<'_>,
) -> First {
    let Arrival {
        started,
        pretty_hint,
        id,
    } = arrival;
    if let Err(st) = app
        .callers
        .check(conn.client_cert.as_ref(), req.headers(), "tokenreviews")
    {
        logged!(id, tracing::Level::INFO, peer = %conn.peer, code = st.code, "caller refused");
        return First::Done(status_response(&st, pretty_hint));
    }
    let (parts, mut body) = req.into_parts();
    // kube-apiserver's order: media type, body size, query options, decode.
    if let Err(st) = body::media_type(&parts.headers, &[Media::Json]) {
        return First::Done(status_response(&st, pretty_hint));
    }
    let bytes = match body::read_now(&app.config.limits, &mut body) {
        Arrived::Whole(Ok(b)) => b,
        Arrived::Whole(Err(st)) => return First::Done(status_response(&st, pretty_hint)),
        Arrived::Part(part) => {
            let (app, id) = (app.clone(), id.to_owned());
            return First::Wait(Box::pin(async move {
                let bytes = match body::read_rest(&app.config.limits, body, part).await {
                    Ok(b) => b,
                    Err(st) => return status_response(&st, pretty_hint),
                };
                match prepare(parts.uri.query(), &bytes, default_version, pretty_hint) {
                    Ok(review) => rest(app, review, Lookup::Fresh, started, id).await,
                    Err(r) => r,
                }
            }));
        }
    };
    let review = match prepare(parts.uri.query(), &bytes, default_version, pretty_hint) {
        Ok(r) => r,
        Err(r) => return First::Done(r),
    };
    drop((parts, body, bytes));
    if !app.cache.is_enabled() {
        return First::Wait(Box::pin(rest(
            app.clone(),
            review,
            Lookup::Fresh,
            started,
            id.to_owned(),
        )));
    }
    let key = VerdictCache::key(&review.token, &review.review.spec.audiences);
    let lookup = match app.cache.peek(&key) {
        Some(cached) if cached.bound.is_empty() => {
            app.metrics.cache_lookup(true);
            return First::Done(respond(app, review, &cached, true, started, id));
        }
        Some(cached) => Lookup::Found(cached),
        None => Lookup::Missed(key),
    };
    First::Wait(Box::pin(rest(
        app.clone(),
        review,
        lookup,
        started,
        id.to_owned(),
    )))
}

/// A decoded review, its token taken out (with its digest, computed once for the cache key,
/// the verifiers and log lines) and put back in for the echo: no copy of the token.
struct Prepared {
    review: TokenReview,
    token: Token,
    version: ApiVersion,
    warnings: Vec<String>,
    options: CreateOptions,
    pretty: bool,
}

/// Query options, then the body decoded and checked; a refusal is the response to send.
// The response (144 bytes) is smaller than the review it stands in for.
#[allow(clippy::result_large_err)]
fn prepare(
    query: Option<&str>,
    body: &[u8],
    default_version: ApiVersion,
    pretty_hint: bool,
) -> Result<Prepared, Response<Body>> {
    let options = CreateOptions::parse(query).map_err(|st| status_response(&st, pretty_hint))?;
    let pretty = options.pretty.unwrap_or(pretty_hint);
    let (mut review, version, warnings) = decode(body, default_version, options.field_validation)
        .map_err(|st| status_response(&st, pretty))?;
    if review.spec.token.is_empty() {
        return Err(status_response(
            &Status::bad_request("token is required for TokenReview in authentication"),
            pretty,
        ));
    }
    let token = Token::new(std::mem::take(&mut review.spec.token));
    Ok(Prepared {
        review,
        token,
        version,
        warnings,
        options,
        pretty,
    })
}

/// What [`first`] learnt of the cache.
enum Lookup {
    /// Nothing yet (the body came late, or there is no cache).
    Fresh,
    /// No verdict under this key when it looked.
    Missed(Key),
    /// This verdict, which depends on cluster objects.
    Found(Arc<Cached>),
}

/// The review from the cache lookup on: the verdict decided on a miss (once for concurrent
/// callers), checked against the cluster objects it depends on, answered.
///
/// A plain function returning an `async move` block, not an `async fn`, which would keep a
/// second copy of the review in its state (rust-lang/rust#62958).
#[allow(clippy::manual_async_fn)]
fn rest(
    app: Arc<App>,
    review: Prepared,
    lookup: Lookup,
    started: Instant,
    id: String,
) -> impl Future<Output = Response<Body>> + Send {
    async move {
        let (token, audiences) = (&review.token, &review.review.spec.audiences);
        // Boxed: the verification future (issuer fetches, TLS clients…) is large, and only a miss
        // builds it.
        let verify = || {
            Box::pin(decide(&app, token, audiences).instrument(crate::routes::request_span(&id)))
        };
        let verdict = match lookup {
            Lookup::Found(cached) => Ok((cached, true)),
            Lookup::Missed(key) => app.cache.verify_missing(key, verify).await,
            Lookup::Fresh => {
                app.cache
                    .get_or_verify(|| VerdictCache::key(token, audiences), verify)
                    .await
            }
        };
        let (mut cached, hit) = match verdict {
            Ok(v) => v,
            Err(e) => {
                app.metrics.review("none", "error");
                logged!(
                    &id,
                    tracing::Level::WARN,
                    token = %token.digest().fingerprint(),
                    error = %e,
                    latency_us = started.elapsed().as_micros() as u64,
                    "review could not be decided; asking the caller to retry"
                );
                let st = Status::service_unavailable(
                    "the token could not be checked right now; retry",
                    RETRY_AFTER_SECONDS,
                );
                return status_response(&st, review.pretty);
            }
        };
        app.metrics.cache_lookup(hit);
        // A "yes" on a token bound to cluster objects holds only while they exist with the same
        // uids: checked on every review from the watch caches, so that a verdict cached a
        // moment before a deletion was seen cannot outlive it.
        if !cached.bound.is_empty()
            && let Some(issuer) = &app.issuer
            && !issuer.config.registry.still_current(
                &cached.bound,
                app.clock
                    .now()
                    .0
                    .saturating_sub(crate::mint::issuer::LEEWAY_SECONDS),
            )
        {
            let key = VerdictCache::key(token, audiences);
            app.cache
                .invalidate(&key)
                .instrument(crate::routes::request_span(&id))
                .await;
            logged!(
                &id,
                tracing::Level::INFO,
                token = %token.digest().fingerprint(),
                "cached verdict refers to a deleted or replaced object"
            );
            match Cached::new(
                &TokenReviewStatus::unauthenticated(),
                cached.verifier,
                Duration::ZERO,
            ) {
                Ok(no) => cached = Arc::new(no),
                Err(_) => {
                    return status_response(
                        &Status::service_unavailable(
                            "the token could not be checked right now; retry",
                            RETRY_AFTER_SECONDS,
                        ),
                        review.pretty,
                    );
                }
            }
        }
        respond(&app, review, &cached, hit, started, &id)
    }
}

/// The answer to a review with its verdict: counted, logged when it says no (or at debug),
/// and written with the token echoed back.
fn respond(
    app: &App,
    review: Prepared,
    cached: &Cached,
    hit: bool,
    started: Instant,
    id: &str,
) -> Response<Body> {
    let Prepared {
        mut review,
        token,
        version,
        warnings,
        options,
        pretty,
    } = review;
    let outcome = if cached.authenticated {
        "authenticated"
    } else {
        "unauthenticated"
    };
    app.metrics.review(cached.verifier, outcome);
    // One line per review: at debug when the token was accepted (the common case, counted
    // by `tokenhook_reviews_total`; at info it cost a third of the cache-hit throughput,
    // issue 12), at info when it was not, so that refusals stay visible by default.
    macro_rules! review_line {
        ($level:expr) => {
            logged!(
                id,
                $level,
                api_version = version.as_str(),
                verifier = cached.verifier,
                outcome,
                cache = if hit { "hit" } else { "miss" },
                token = %token.digest().fingerprint(),
                latency_us = started.elapsed().as_micros() as u64,
                dry_run = options.dry_run,
                "review"
            )
        };
    }
    if cached.authenticated {
        review_line!(tracing::Level::DEBUG);
    } else {
        review_line!(tracing::Level::INFO);
    }

    review.spec.token = token.into_raw();
    // The cached status is compact JSON, written as it is; a pretty answer decodes it again
    // so that it is indented like the rest.
    let decoded = if pretty { cached.status().ok() } else { None };
    let out = match decoded {
        Some(status) => codec::encode(&review.respond(version, &status), true),
        None => codec::encode(&review.respond(version, cached.status_json()), pretty),
    };
    let mut r = json(StatusCode::CREATED, out);
    body::add_warnings(&mut r, &warnings);
    r
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`: who the caller is, as
/// `kubectl auth whoami` asks (protobuf or JSON). The caller's own credential goes through
/// the same authentication as minting (client certificate, or a bearer token through the
/// chain); kube adds `system:authenticated` to every authenticated user, so does this.
pub async fn self_subject_review(
    app: &Arc<App>,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<Body> {
    let pretty_hint = body::user_agent_wants_pretty(req.headers());
    match whoami(app, conn, req, pretty_hint).await {
        Ok(r) => r,
        Err(st) => status_response(&st, pretty_hint),
    }
}

async fn whoami(
    app: &Arc<App>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    pretty_hint: bool,
) -> Result<Response<Body>, Status> {
    let mut user = app.authenticate_user(conn, req.headers()).await?;
    let (parts, b) = req.into_parts();
    let media = body::media_type(&parts.headers, &[Media::Json, Media::Protobuf])?;
    let bytes = body::read(&app.config.limits, b).await?;
    let options = CreateOptions::parse(parts.uri.query())?;
    let (api_version, kind) = match media {
        Media::Protobuf => {
            let (v, k, _) =
                protobuf::unwrap(&bytes).map_err(|e| Status::bad_request(e.to_string()))?;
            (v, k)
        }
        Media::Json => {
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                Status::bad_request(format!(
                    "the object provided is unrecognized (must be of type SelfSubjectReview): {e}"
                ))
            })?;
            if !v.is_object() {
                return Err(Status::bad_request(
                    "the object provided is unrecognized (must be of type SelfSubjectReview): expected a JSON object",
                ));
            }
            let s = |k: &str| {
                v.get(k)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            (s("apiVersion"), s("kind"))
        }
    };
    if !api_version.is_empty() && api_version != "authentication.k8s.io/v1" {
        return Err(Status::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version (authentication.k8s.io/v1)"
        )));
    }
    if !kind.is_empty() && kind != "SelfSubjectReview" {
        return Err(Status::bad_request(format!(
            "{kind} in version \"v1\" cannot be handled as a SelfSubjectReview: no kind \"{kind}\" is registered for version \"authentication.k8s.io/v1\""
        )));
    }
    if !user.groups.iter().any(|g| g == "system:authenticated") {
        user.groups.push("system:authenticated".into());
    }
    let out = serde_json::json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": app.clock.now().rfc3339()},
        "status": {"userInfo": user}
    });
    Ok(json(
        StatusCode::CREATED,
        codec::encode(&out, options.pretty.unwrap_or(pretty_hint)),
    ))
}

/// Runs the chain on a cache miss and turns its outcome into a cacheable verdict.
async fn decide(
    app: &App,
    token: &Token,
    spec_audiences: &[String],
) -> Result<Arc<Cached>, VerifyError> {
    let now = app.clock.now();
    let decision = app.chain.verify_for(token, spec_audiences, now).await?;
    let cfg = app.cache.config();
    let negative = |status: TokenReviewStatus| (status, cfg.negative_ttl);
    let mut bound = Vec::new();
    let (status, ttl) = match decision.outcome {
        Outcome::Authenticated(mut id) => {
            bound = std::mem::take(&mut id.bound);
            // Agnostic identities go by the configured API audiences alone (none: valid
            // behind any apiserver); bound ones default to what minted tokens default to.
            let api = match id.audiences {
                None => &app.config.api_audiences,
                Some(_) => &app.default_audiences,
            };
            match audiences(spec_audiences, api, id.audiences.as_deref()) {
                Some(auds) => {
                    // A verifier's own lifetime (introspection: revocation latency) or the
                    // global one, never past the token's expiry.
                    let ttl = decision.cache_ttl.unwrap_or(cfg.ttl);
                    let ttl = id.expires_at.map_or(ttl, |exp| ttl.min(now.until(exp)));
                    (TokenReviewStatus::authenticated(id.user, auds), ttl)
                }
                None => {
                    app.metrics
                        .rejections
                        .with_label_values(&[decision.verifier, "audience_mismatch"])
                        .inc();
                    tracing::info!(
                        token = %token.digest().fingerprint(),
                        verifier = decision.verifier,
                        requested = ?spec_audiences,
                        valid_for = ?id.audiences,
                        "audience mismatch"
                    );
                    // A plain "no", as kube's audience-agnostic wrapper answers: without an
                    // error kube-apiserver may cache it.
                    negative(TokenReviewStatus::unauthenticated())
                }
            }
        }
        Outcome::Rejected(r) => {
            app.metrics
                .rejections
                .with_label_values(&[decision.verifier, r.reason.as_str()])
                .inc();
            tracing::info!(
                token = %token.digest().fingerprint(),
                verifier = decision.verifier,
                reason = r.reason.as_str(),
                detail = %r.detail,
                "token rejected"
            );
            negative(TokenReviewStatus::unauthenticated())
        }
        Outcome::NotMine => negative(TokenReviewStatus::unauthenticated()),
    };
    // Serialising our own status cannot fail; were it to, "could not check" (never cached,
    // retried) is the safe answer.
    let cached =
        Cached::new(&status, decision.verifier, ttl).map_err(|e| VerifyError::Unavailable {
            verifier: decision.verifier.to_string(),
            reason: format!("the verdict could not be encoded: {e}"),
        })?;
    let cached = if status.authenticated {
        cached.depending_on(bound)
    } else {
        cached
    };
    Ok(Arc::new(cached))
}

/// Decodes and checks apiVersion/kind, returning the review, the version to answer in, and
/// the warnings to send (public for the fuzz targets).
///
/// # Errors
/// A `Status` (400) naming what is wrong, or the Strict field-validation failure.
pub fn decode(
    body: &[u8],
    default_version: ApiVersion,
    validation: FieldValidation,
) -> Result<(TokenReview, ApiVersion, Vec<String>), Status> {
    let decoded = match codec::decode::<TokenReview>(body) {
        Ok(d) => d,
        Err(e @ DecodeError::Syntax(_)) => {
            return Err(Status::bad_request(format!(
                "the object provided is unrecognized (must be of type TokenReview): {}",
                e.detail()
            )));
        }
        Err(e @ DecodeError::Type(_)) => {
            return Err(Status::bad_request(format!(
                "TokenReview in version \"{}\" cannot be handled as a TokenReview: {}",
                default_version.version(),
                e.detail()
            )));
        }
    };
    let review = decoded.value;
    let version = if review.api_version.is_empty() {
        default_version
    } else {
        ApiVersion::parse(&review.api_version).ok_or_else(|| {
            Status::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                review.api_version,
                default_version.as_str()
            ))
        })?
    };
    if !review.kind.is_empty() && review.kind != "TokenReview" {
        return Err(Status::bad_request(format!(
            "{kind} in version \"{v}\" cannot be handled as a TokenReview: no kind \"{kind}\" is registered for version \"{av}\"",
            kind = review.kind,
            v = version.version(),
            av = version.as_str(),
        )));
    }
    let warnings =
        codec::apply_field_validation(validation, decoded.problems).map_err(|strict| {
            Status::bad_request(format!(
                "TokenReview in version \"{}\" cannot be handled as a TokenReview: {strict}",
                version.version()
            ))
        })?;
    Ok((review, version, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn audience_table() {
        let api = s(&["https://kubernetes.default.svc"]);
        let none: &[String] = &[];
        // (spec, api, token audiences) -> status.audiences
        let cases: Vec<(
            Vec<String>,
            &[String],
            Option<Vec<String>>,
            Option<Vec<String>>,
        )> = vec![
            // agnostic, no API audiences: empty status.audiences whatever was asked
            (vec![], none, None, Some(vec![])),
            (s(&["x"]), none, None, Some(vec![])),
            // agnostic with API audiences: spec (or API) ∩ API
            (vec![], &api, None, Some(api.clone())),
            (
                s(&["x", "https://kubernetes.default.svc"]),
                &api,
                None,
                Some(api.clone()),
            ),
            (s(&["x"]), &api, None, None),
            // audience-bound
            (
                s(&["vault", "x"]),
                none,
                Some(s(&["x", "vault"])),
                Some(s(&["vault", "x"])),
            ),
            (s(&["vault"]), none, Some(s(&["api"])), None),
            (vec![], none, Some(s(&["api"])), None),
            (
                vec![],
                &api,
                Some(s(&["https://kubernetes.default.svc"])),
                Some(api.clone()),
            ),
            (vec![], &api, Some(s(&["vault"])), None),
        ];
        for (spec, api, tok, want) in cases {
            assert_eq!(
                audiences(&spec, api, tok.as_deref()),
                want,
                "spec={spec:?} api={api:?} tok={tok:?}"
            );
        }
    }
}
