//! TokenReview semantics: users, versions, audiences, cache.

use serde_json::json;

use crate::support::{Opts, TestServer, review_body};

#[tokio::test]
async fn static_token_gives_full_user_info() {
    let s = TestServer::start(Opts::default()).await;
    let r = s.client().review("alice-token", &[]).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["kind"], "TokenReview");
    assert_eq!(v["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(
        v["status"],
        json!({
            "authenticated": true,
            "user": {
                "username": "alice",
                "uid": "1001",
                "groups": ["developers", "viewers"],
                "extra": {"example.com/team": ["platform", "infra"]}
            }
        })
    );
}

#[tokio::test]
async fn unknown_token_is_a_plain_no() {
    let s = TestServer::start(Opts::default()).await;
    let r = s.client().review("nobody-has-this", &[]).await;
    assert_eq!(r.status, 201);
    // Byte-for-byte what kube-apiserver answers: no error, so the caller may cache the "no".
    assert_eq!(r.json()["status"], json!({"user": {}}));
}

#[tokio::test]
async fn hashed_entry_authenticates_the_token_only() {
    let hash = tokenhook::verify::static_file::hash_entry("s3cret-token");
    let s = TestServer::start(Opts {
        tokens: format!("{hash},dave,2001,ops\n"),
        ..Opts::default()
    })
    .await;
    let c = s.client();
    let v = c.review("s3cret-token", &[]).await.json();
    assert_eq!(v["status"]["authenticated"], true);
    assert_eq!(v["status"]["user"]["username"], "dave");
    let v = c.review(&hash, &[]).await.json();
    assert_eq!(v["status"]["authenticated"], json!(null));
}

#[tokio::test]
async fn v1_and_v1beta1_round_trip_on_every_review_path() {
    let s = TestServer::start(Opts::default()).await;
    let c = s.client();
    for path in [
        "/apis/authentication.k8s.io/v1/tokenreviews",
        "/apis/authentication.k8s.io/v1beta1/tokenreviews",
        "/authenticate",
    ] {
        for version in ["authentication.k8s.io/v1", "authentication.k8s.io/v1beta1"] {
            let r = c
                .post_json(path, &review_body(version, "bob-token", &[]))
                .await;
            assert_eq!(r.status, 201, "{path} {version}");
            let v = r.json();
            assert_eq!(v["apiVersion"], version, "{path}");
            assert_eq!(v["kind"], "TokenReview");
            assert_eq!(v["status"]["user"]["username"], "bob");
        }
    }
    // No apiVersion in the body: the path's version answers.
    let r = c
        .post_json(
            "/apis/authentication.k8s.io/v1beta1/tokenreviews",
            &json!({"spec": {"token": "bob-token"}}),
        )
        .await;
    assert_eq!(r.json()["apiVersion"], "authentication.k8s.io/v1beta1");
    // Over HTTP/2 as well.
    let r = c.http2().review("bob-token", &[]).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["status"]["authenticated"], true);
}

#[tokio::test]
async fn exact_apiserver_v1beta1_request() {
    // As kube-apiserver's webhook client serialises it.
    let s = TestServer::start(Opts::default()).await;
    let body = r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1beta1","metadata":{"creationTimestamp":null},"spec":{"token":"bob-token"},"status":{"user":{}}}"#;
    let r = s
        .client()
        .request(
            http::Method::POST,
            "/authenticate",
            &[("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(r.warnings().is_empty(), "{:?}", r.warnings());
    assert_eq!(
        r.text(),
        "{\"kind\":\"TokenReview\",\"apiVersion\":\"authentication.k8s.io/v1beta1\",\"metadata\":{\"creationTimestamp\":null},\"spec\":{\"token\":\"bob-token\"},\"status\":{\"authenticated\":true,\"user\":{\"username\":\"bob\",\"uid\":\"1002\"}}}\n"
    );
}

#[tokio::test]
async fn audiences_without_api_audiences() {
    let s = TestServer::start(Opts::default()).await;
    let c = s.client();
    // Audience-agnostic token: valid for "the API server", status.audiences empty.
    for spec in [&[][..], &["https://kubernetes.default.svc"][..]] {
        let v = c.review("bob-token", spec).await.json();
        assert_eq!(v["status"]["authenticated"], true, "{spec:?}");
        assert_eq!(v["status"].get("audiences"), None, "{spec:?}");
    }
    // Audience-bound token: intersection in request order, or a plain no.
    let v = c
        .review("vault-token", &["consul", "x", "vault"])
        .await
        .json();
    assert_eq!(v["status"]["authenticated"], true);
    assert_eq!(v["status"]["audiences"], json!(["consul", "vault"]));
    let v = c.review("vault-token", &["x"]).await.json();
    assert_eq!(v["status"], json!({"user": {}}));
    let v = c.review("vault-token", &[]).await.json();
    assert_eq!(v["status"], json!({"user": {}}));
}

#[tokio::test]
async fn audiences_with_api_audiences() {
    let s = TestServer::start(Opts {
        extra_toml: "[review]\napi_audiences = [\"https://kubernetes.default.svc\", \"api\"]\n"
            .into(),
        tokens: format!(
            "{}k8s-token,svc,9,,https://kubernetes.default.svc\n",
            crate::support::TOKENS
        ),
        ..Opts::default()
    })
    .await;
    let c = s.client();
    let v = c.review("bob-token", &[]).await.json();
    assert_eq!(
        v["status"]["audiences"],
        json!(["https://kubernetes.default.svc", "api"])
    );
    let v = c.review("bob-token", &["api", "other"]).await.json();
    assert_eq!(v["status"]["audiences"], json!(["api"]));
    let v = c.review("bob-token", &["other"]).await.json();
    assert_eq!(v["status"]["authenticated"], json!(null));
    // A bound token with empty spec.audiences is checked against the API audiences.
    let v = c.review("k8s-token", &[]).await.json();
    assert_eq!(
        v["status"]["audiences"],
        json!(["https://kubernetes.default.svc"])
    );
    let v = c.review("vault-token", &[]).await.json();
    assert_eq!(v["status"]["authenticated"], json!(null));
}

#[tokio::test]
async fn cache_hit_does_not_run_the_chain_again() {
    let s = TestServer::start(Opts::default()).await;
    let c = s.client();
    let calls = || {
        s.metric(
            "tokenhook_verifier_duration_seconds_count",
            "verifier=\"static\"",
        )
    };
    assert_eq!(calls().await, 0.0);
    c.review("alice-token", &[]).await;
    assert_eq!(calls().await, 1.0);
    for _ in 0..5 {
        let v = c.review("alice-token", &[]).await.json();
        assert_eq!(v["status"]["user"]["username"], "alice");
    }
    assert_eq!(calls().await, 1.0, "cache hits must not reach the verifier");
    assert_eq!(
        s.metric("tokenhook_cache_requests_total", "result=\"hit\"")
            .await,
        5.0
    );
    // Other audiences are another key.
    c.review("alice-token", &["x"]).await;
    assert_eq!(calls().await, 2.0);
    // Negative answers are cached too.
    c.review("unknown", &[]).await;
    c.review("unknown", &[]).await;
    assert_eq!(calls().await, 3.0);
    // One lookup counted per review: the three that ran the chain, and six hits.
    assert_eq!(
        s.metric("tokenhook_cache_requests_total", "result=\"miss\"")
            .await,
        3.0
    );
    assert_eq!(
        s.metric("tokenhook_cache_requests_total", "result=\"hit\"")
            .await,
        6.0
    );
    assert_eq!(
        s.metric("tokenhook_reviews_total", "outcome=\"authenticated\"")
            .await,
        7.0
    );
}

/// A review whose body arrives in two pieces a moment apart (HTTP/1.1 chunked, HTTP/2 with no
/// length) is answered as one that came whole: a miss through the chain, then a hit.
#[tokio::test]
async fn review_bodies_arriving_in_pieces_are_answered_whole() {
    const BODY: &str = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"bob-token"}}"#;
    let s = TestServer::start(Opts::default()).await;
    for h2 in [false, true] {
        let c = if h2 { s.client().http2() } else { s.client() };
        for _ in 0..2 {
            let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes>::new(1);
            tokio::spawn(async move {
                let _ = tx
                    .send_data(bytes::Bytes::from_static(&BODY.as_bytes()[..20]))
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                let _ = tx
                    .send_data(bytes::Bytes::from_static(&BODY.as_bytes()[20..]))
                    .await;
            });
            let req =
                http::Request::post("https://localhost/apis/authentication.k8s.io/v1/tokenreviews")
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .body(body)
                    .unwrap();
            let r = c.send(req).await.unwrap();
            assert_eq!(r.status, 201, "h2 {h2}: {}", r.text());
            let v = r.json();
            assert_eq!(v["status"]["authenticated"], true, "h2 {h2}: {v}");
            assert_eq!(v["status"]["user"]["username"], "bob");
            assert_eq!(v["spec"]["token"], "bob-token");
        }
    }
    // The first review ran the chain; the other three were hits.
    assert_eq!(
        s.metric("tokenhook_cache_requests_total", "result=\"hit\"")
            .await,
        3.0
    );
}

#[tokio::test]
async fn cache_can_be_switched_off() {
    let s = TestServer::start(Opts {
        extra_toml: "[cache]\nenabled = false\n".into(),
        ..Opts::default()
    })
    .await;
    let c = s.client();
    for _ in 0..3 {
        c.review("alice-token", &[]).await;
    }
    assert_eq!(
        s.metric(
            "tokenhook_verifier_duration_seconds_count",
            "verifier=\"static\""
        )
        .await,
        3.0
    );
}
