//! Turns a `Status` into the HTTP response kube-apiserver would send for it.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::k8s::Status;
use crate::k8s::codec::encode;

/// Response body type used everywhere.
pub type Body = Full<Bytes>;

/// A JSON response with `code`.
pub fn json(code: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A plain-text response with `code`.
pub fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The `Status` as a response: its code, JSON body, and `Retry-After` when it says to wait.
pub fn status_response(status: &Status, pretty: bool) -> Response<Body> {
    let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json(code, encode(status, pretty));
    if let Some(secs) = status.details.as_ref().and_then(|d| d.retry_after_seconds) {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}
