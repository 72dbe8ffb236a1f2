//! Files change under a running server: certificates and token files reload without a restart or a failed request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::assert_eventually;
use crate::support::{Opts, TestServer, replace_file};

async fn served_cert(s: &TestServer) -> Vec<u8> {
    let tls = s.client().connect().await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn serving_certificate_reloads_without_failed_requests() {
    let s = TestServer::start(Opts::default()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (c, stop, ok, failed) = (s.client(), stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // A fresh connection each time, so each request sees the current certificate.
                match c.send(review_request(&c)).await {
                    Ok(r) if r.status == 201 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let next = s.ca.server();
    assert_ne!(served_cert(&s).await, der(&next.cert));
    replace_file(&s.path("server.key"), &next.key);
    replace_file(&s.path("server.crt"), &next.cert);
    assert_eventually!(
        10,
        served_cert(&s).await == der(&next.cert),
        "new certificate not served"
    );
    assert!(
        s.metric(
            "tokenhook_reloads_total",
            "source=\"tls\",result=\"success\""
        )
        .await
            >= 1.0
    );

    // A broken pair is refused; the good one keeps serving.
    replace_file(&s.path("server.crt"), "not a certificate");
    assert_eventually!(
        10,
        s.metric(
            "tokenhook_reloads_total",
            "source=\"tls\",result=\"failure\""
        )
        .await
            >= 1.0,
        "broken certificate not reported"
    );
    assert_eq!(served_cert(&s).await, der(&next.cert));

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the reload"
    );
}

fn review_request(c: &crate::support::Client) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let _ = c;
    http::Request::builder()
        .method("POST")
        .uri("/apis/authentication.k8s.io/v1/tokenreviews")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"apiVersion":"authentication.k8s.io/v1","spec":{"token":"bob-token"}}"#,
        )))
        .unwrap()
}

#[tokio::test]
async fn token_file_edits_take_effect() {
    let s = TestServer::start(Opts::default()).await;
    let c = s.client();
    assert_eq!(
        c.review("bob-token", &[]).await.json()["status"]["authenticated"],
        true
    );
    assert_eq!(
        c.review("carol-token", &[]).await.json()["status"]["authenticated"],
        serde_json::json!(null)
    );

    // bob removed, carol added; bob's "yes" is cached but must not outlive the edit.
    replace_file(
        &s.tokens_path,
        "alice-token,alice,1001\ncarol-token,carol,1004,ops\n",
    );
    assert_eventually!(
        10,
        c.review("carol-token", &[]).await.json()["status"]["authenticated"] == true,
        "new token not accepted"
    );
    assert_eq!(
        c.review("bob-token", &[]).await.json()["status"],
        serde_json::json!({"user": {}})
    );

    // A broken file keeps the last good version.
    replace_file(&s.tokens_path, "only,two\n");
    assert_eventually!(
        10,
        s.metric(
            "tokenhook_reloads_total",
            "source=\"static_tokens\",result=\"failure\""
        )
        .await
            >= 1.0,
        "broken token file not reported"
    );
    assert_eq!(
        c.review("carol-token", &[]).await.json()["status"]["authenticated"],
        true
    );
}
