//! The floor server: tokenhook's TLS setup (rustls provider, certificate, ALPN), its tokio runtime and hyper-util builder, reading and parsing a TokenReview and answering a fixed one. Nothing that answers TokenReviews over TLS can be cheaper.
//!
//! `cargo run --release --example floor -- --listen 127.0.0.1:9443 --cert server.crt --key server.key`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokenhook::k8s::codec;
use tokenhook::k8s::token_review::{ApiVersion, TokenReview, TokenReviewStatus, UserInfo};

fn arg(name: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| panic!("missing {name}"))
}

fn main() {
    let listen = arg("--listen");
    let cert = std::fs::read(arg("--cert")).unwrap();
    let key = std::fs::read(arg("--key")).unwrap();
    let built = tokenhook::server::tls::build(&cert, &key, None).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(built.config);
    // The same runtime tokenhook's main builds.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
        println!("floor listening on {}", listener.local_addr().unwrap());
        let status = Arc::new(TokenReviewStatus::authenticated(
            UserInfo {
                username: "alice".into(),
                uid: "uid-alice".into(),
                groups: vec!["developers".into()],
                ..UserInfo::default()
            },
            vec![],
        ));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256);
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            let (acceptor, builder, status) = (acceptor.clone(), builder.clone(), status.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let status = status.clone();
                    async move {
                        let body = Limited::new(req.into_body(), 3 << 20)
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let review: TokenReview =
                            codec::decode(&body).map(|d| d.value).unwrap_or_default();
                        let out = codec::encode(&review.respond(ApiVersion::V1, &status), false);
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
