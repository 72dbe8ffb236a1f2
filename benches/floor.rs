//! The floor server: tokenhook's TLS setup (rustls provider, certificate, ALPN), its tokio runtime and hyper-util builder, reading and parsing a TokenReview and answering a fixed one. Nothing that answers TokenReviews over TLS can be cheaper.
//!
//! `cargo run --release --example floor -- --listen 127.0.0.1:9443 --cert server.crt --key server.key`
//!
//! `--status FILE` sets the answer's status (JSON). With `--verify ALG --public-key FILE` (the key in the form aws-lc-rs takes: PKCS#1 DER for
//! RS256, the uncompressed point for ES256, the raw key for EdDSA) it also checks each token's
//! signature with aws-lc-rs, key parsed once: the floor for JWT cache misses, floor plus the
//! fastest raw verify measured in one server rather than added up from two measurements.
//!
//! With `--upstream URL --upstream-ca FILE` it is the floor of a review forwarded to an
//! upstream webhook (the load harness's scenario f): each review's spec is POSTed to `URL`
//! with hyper-util's pooled client over rustls (the crates tokenhook's outbound client is
//! made of, HTTP/2 offered first), and the upstream's `status` is answered as it came, unparsed:
//! the least any webhook that stands in front of another can do per review.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::Arc;

use aws_lc_rs::signature;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::value::RawValue;
use tokenhook::k8s::codec;
use tokenhook::k8s::token_review::{ApiVersion, TokenReview, TokenReviewStatus, UserInfo};

fn opt_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn arg(name: &str) -> String {
    opt_arg(name).unwrap_or_else(|| panic!("missing {name}"))
}

/// The raw signature check of `--verify`, key parsed once.
fn raw_verifier() -> Option<Arc<signature::ParsedPublicKey>> {
    let alg = opt_arg("--verify")?;
    let algorithm: &'static dyn signature::VerificationAlgorithm = match alg.as_str() {
        "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
        "ES256" => &signature::ECDSA_P256_SHA256_FIXED,
        "EdDSA" => &signature::ED25519,
        other => panic!("--verify {other}: RS256, ES256 or EdDSA"),
    };
    let public = std::fs::read(arg("--public-key")).unwrap();
    Some(Arc::new(
        signature::ParsedPublicKey::new(algorithm, public).unwrap(),
    ))
}

/// What the `aws-lc-rs-parsed` criterion bench measures: split, decode, verify.
fn raw_verify(key: &signature::ParsedPublicKey, token: &str) -> bool {
    let Some((signed, sig)) = token.rsplit_once('.') else {
        return false;
    };
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    key.verify_sig(signed.as_bytes(), &sig).is_ok()
}

/// The pooled HTTPS client of `--upstream`, trusting `--upstream-ca`.
type Upstream = (Client<HttpsConnector<HttpConnector>, Full<Bytes>>, String);

fn upstream() -> Option<Arc<Upstream>> {
    let url = opt_arg("--upstream")?;
    let ca = std::fs::read(arg("--upstream-ca")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(tokenhook::server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_all_versions()
        .wrap_connector(http);
    Some(Arc::new((
        Client::builder(TokioExecutor::new()).build(connector),
        url,
    )))
}

/// The upstream's answer to `review`'s spec: its `status`, as it came.
async fn forward(upstream: &Upstream, review: &TokenReview) -> Box<RawValue> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Ask<'a> {
        api_version: &'static str,
        kind: &'static str,
        spec: &'a tokenhook::k8s::token_review::TokenReviewSpec,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        status: Box<RawValue>,
    }
    let (client, url) = upstream;
    let ask = serde_json::to_vec(&Ask {
        api_version: "authentication.k8s.io/v1",
        kind: "TokenReview",
        spec: &review.spec,
    })
    .unwrap();
    let req = hyper::Request::post(url.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(ask)))
        .unwrap();
    let body = client
        .request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice::<Answer>(&body).unwrap().status
}

fn main() {
    // With no subscriber at all, every span h2 opens falls back to the `log` crate (tracing's
    // `log` feature, which a dependency turns on): about 7k instructions per HTTP/2 request
    // (benches/load/profile.py --h2) that tokenhook, whose subscriber filters those spans
    // out, never pays. The floor must not pay them either.
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
    let listen = arg("--listen");
    let cert = std::fs::read(arg("--cert")).unwrap();
    let key = std::fs::read(arg("--key")).unwrap();
    let built = tokenhook::server::tls::build(&cert, &key, None).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(built.config);
    let verifier = raw_verifier();
    // The same runtime tokenhook's main builds.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
        println!("floor listening on {}", listener.local_addr().unwrap());
        // The answer: `--status FILE` (a TokenReviewStatus as JSON, so that the floor writes
        // the same bytes as the server it is compared with), or a built-in one. Serialised
        // once, as tokenhook's cached verdicts are, and written verbatim.
        let status: TokenReviewStatus = match opt_arg("--status") {
            Some(path) => serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap(),
            None => TokenReviewStatus::authenticated(
                UserInfo {
                    username: "alice".into(),
                    uid: "uid-alice".into(),
                    groups: vec!["developers".into()],
                    ..UserInfo::default()
                },
                vec![],
            ),
        };
        let status = Arc::new(serde_json::value::to_raw_value(&status).unwrap());
        let denied = Arc::new(
            serde_json::value::to_raw_value(&TokenReviewStatus::unauthenticated()).unwrap(),
        );
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256);
        let upstream = upstream();
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            let (acceptor, builder) = (acceptor.clone(), builder.clone());
            let (status, denied, verifier) = (status.clone(), denied.clone(), verifier.clone());
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (status, denied, verifier, upstream) = (
                        status.clone(),
                        denied.clone(),
                        verifier.clone(),
                        upstream.clone(),
                    );
                    async move {
                        let body = Limited::new(req.into_body(), 3 << 20)
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let review: TokenReview =
                            codec::decode(&body).map(|d| d.value).unwrap_or_default();
                        let forwarded = match &upstream {
                            Some(u) => Some(forward(u, &review).await),
                            None => None,
                        };
                        let answer: &RawValue = match (&forwarded, &verifier) {
                            (Some(f), _) => f,
                            (None, Some(key)) if !raw_verify(key, &review.spec.token) => &denied,
                            _ => &status,
                        };
                        let out = codec::encode(&review.respond(ApiVersion::V1, answer), false);
                        let mut r = hyper::Response::new(Full::new(Bytes::from(out)));
                        *r.status_mut() = hyper::StatusCode::CREATED;
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
}
