//! Request-body plumbing shared by the create endpoints: media type, size-limited read, pretty printing, warnings.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, USER_AGENT, WARNING};
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::http_error::Body;
use crate::config::Limits;
use crate::k8s::codec::warning_header;
use crate::k8s::{Reason, Status, protobuf};

/// How a request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// `application/json` (or no Content-Type, which kube treats as JSON).
    Json,
    /// `application/vnd.kubernetes.protobuf`.
    Protobuf,
}

/// The body's media type, or the 415 listing `accepted`.
///
/// # Errors
/// A type not in `accepted`.
pub fn media_type(headers: &HeaderMap, accepted: &[Media]) -> Result<Media, Status> {
    let media = match headers.get(CONTENT_TYPE) {
        None => Some(Media::Json),
        // What kube-apiserver's webhook client and kubectl send, matched before any parsing
        // (parsing it cost about 400 instructions per review, issue 12).
        Some(v) if v.as_bytes() == b"application/json" => Some(Media::Json),
        Some(v) => v.to_str().ok().and_then(|v| {
            let t = v.split(';').next().unwrap_or("").trim();
            if t.is_empty() || t.eq_ignore_ascii_case("application/json") {
                Some(Media::Json)
            } else if t.eq_ignore_ascii_case(protobuf::MEDIA_TYPE) {
                Some(Media::Protobuf)
            } else {
                None
            }
        }),
    };
    media.filter(|m| accepted.contains(m)).ok_or_else(|| {
        let names: Vec<&str> = accepted
            .iter()
            .map(|m| match m {
                Media::Json => "application/json",
                Media::Protobuf => protobuf::MEDIA_TYPE,
            })
            .collect();
        Status::unsupported_media_type(&names)
    })
}

/// kube's `isPrettyPrint` fallback: curl, Wget and browsers get indented JSON.
pub fn user_agent_wants_pretty(headers: &HeaderMap) -> bool {
    headers
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| {
            ["curl", "Wget", "Mozilla/5.0"]
                .iter()
                .any(|p| ua.starts_with(p))
        })
}

/// Reads the body within `server.max_body_bytes` and `server.body_read_timeout_seconds`.
///
/// # Errors
/// 413 over the limit (declared or actual), 408 too slow, 400 cut off.
pub async fn read(limits: &Limits, body: Incoming) -> Result<Bytes, Status> {
    let limit = limits.max_body_bytes;
    // The declared length as hyper parsed it from Content-Length (no header lookup again).
    let declared = hyper::body::Body::size_hint(&body).exact();
    if declared.is_some_and(|n| n > limit) {
        return Err(Status::too_large(limit));
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let mut collect = std::pin::pin!(limited.collect());
    // A TokenReview usually arrives with its head: take it without arming a timer (a timer
    // entry per request costs more than the rest of the read).
    let now = std::future::poll_fn(|cx| std::task::Poll::Ready(collect.as_mut().poll(cx))).await;
    let read = match now {
        std::task::Poll::Ready(r) => Ok(r),
        std::task::Poll::Pending => tokio::time::timeout(limits.body_read_timeout, collect).await,
    };
    match read {
        Err(_) => Err(Status::failure(
            408,
            Reason::Timeout,
            "the request body was not received in time",
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Status::too_large(limit)),
        Ok(Err(_)) => Err(Status::bad_request("the request body could not be read")),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// Adds one `Warning: 299 - "…"` header per text.
pub fn add_warnings(r: &mut Response<Body>, warnings: &[String]) {
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&warning_header(w)) {
            r.headers_mut().append(WARNING, v);
        }
    }
}
