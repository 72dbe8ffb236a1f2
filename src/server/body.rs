//! Request-body plumbing shared by the create endpoints: media type, size-limited read, pretty printing, warnings.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderValue, USER_AGENT, WARNING};
use http::{HeaderMap, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;
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
pub async fn read(limits: &Limits, mut body: Incoming) -> Result<Bytes, Status> {
    match read_now(limits, &mut body) {
        Arrived::Whole(r) => r,
        Arrived::Part(part) => read_rest(limits, body, part).await,
    }
}

/// How much of a body [`read_now`] found.
#[derive(Debug)]
pub enum Arrived {
    /// All of it (or the error that ends the request).
    Whole(Result<Bytes, Status>),
    /// What had arrived, the rest still on its way: [`read_rest`] takes it from there.
    Part(Part),
}

/// The start of a body whose rest has not arrived yet.
#[derive(Debug, Default)]
pub struct Part {
    /// The first chunk (a body usually arrives in one).
    first: Bytes,
    /// Every chunk, joined, once there is more than one.
    joined: Option<BytesMut>,
}

impl Part {
    fn len(&self) -> usize {
        self.joined.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    fn push(&mut self, chunk: Bytes) {
        if self.first.is_empty() && self.joined.is_none() {
            self.first = chunk;
        } else if !chunk.is_empty() {
            self.joined
                .get_or_insert_with(|| BytesMut::from(&self.first[..]))
                .extend_from_slice(&chunk);
        }
    }

    fn into_bytes(self) -> Bytes {
        self.joined.map_or(self.first, BytesMut::freeze)
    }
}

/// The body as far as it has arrived, taken without waiting: a TokenReview usually arrives
/// with its head, and then the whole review is answered in one pass, with no future kept
/// across a wait (issue 12). Checks the limit as [`read`] does.
pub fn read_now(limits: &Limits, body: &mut Incoming) -> Arrived {
    let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
    // The declared length as hyper parsed it from Content-Length (no header lookup again).
    let declared = hyper::body::Body::size_hint(body).exact();
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return Arrived::Whole(Err(Status::too_large(limits.max_body_bytes)));
    }
    // Nothing waits on this poll: a chunk not there yet is read by `read_rest`, which polls
    // the body again with the request's own waker.
    let mut cx = Context::from_waker(Waker::noop());
    let mut part = Part::default();
    loop {
        if hyper::body::Body::is_end_stream(body) {
            return Arrived::Whole(Ok(part.into_bytes()));
        }
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(None) => return Arrived::Whole(Ok(part.into_bytes())),
            // Trailers are ignored, as `collect().to_bytes()` ignores them.
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if part.len() + data.len() > limit {
                        return Arrived::Whole(Err(Status::too_large(limits.max_body_bytes)));
                    }
                    part.push(data);
                }
            }
            Poll::Ready(Some(Err(_))) => return Arrived::Whole(Err(cut_off())),
            Poll::Pending => return Arrived::Part(part),
        }
    }
}

/// The rest of a body [`read_now`] found incomplete, within what is left of the limit and
/// within `server.body_read_timeout_seconds`.
///
/// # Errors
/// As [`read`].
pub async fn read_rest(limits: &Limits, body: Incoming, mut part: Part) -> Result<Bytes, Status> {
    let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
    let limited = Limited::new(body, limit.saturating_sub(part.len()));
    match tokio::time::timeout(limits.body_read_timeout, limited.collect()).await {
        Err(_) => Err(Status::failure(
            408,
            Reason::Timeout,
            "the request body was not received in time",
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Status::too_large(limits.max_body_bytes))
        }
        Ok(Err(_)) => Err(cut_off()),
        Ok(Ok(c)) => {
            part.push(c.to_bytes());
            Ok(part.into_bytes())
        }
    }
}

fn cut_off() -> Status {
    Status::bad_request("the request body could not be read")
}

/// Adds one `Warning: 299 - "…"` header per text.
pub fn add_warnings(r: &mut Response<Body>, warnings: &[String]) {
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&warning_header(w)) {
            r.headers_mut().append(WARNING, v);
        }
    }
}
