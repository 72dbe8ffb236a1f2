//! Query parameters and every failure as a Kubernetes `Status`, with kube-apiserver's messages.

use http::Method;
use serde_json::json;

use crate::support::{Opts, TestServer, review_body};

const V1: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

fn assert_status(v: &serde_json::Value, code: u16, reason: &str, message: &str) {
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    assert_eq!(v["message"], message, "{v}");
}

#[tokio::test]
async fn query_parameters() {
    let s = TestServer::start(Opts::default()).await;
    let c = s.client();
    let body = review_body("authentication.k8s.io/v1", "bob-token", &[]);

    // dryRun=All validates and answers as usual (nothing is persisted anyway).
    let r = c.post_json(&format!("{V1}?dryRun=All"), &body).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["status"]["authenticated"], true);

    let r = c.post_json(&format!("{V1}?dryRun=Some"), &body).await;
    assert_eq!(r.status, 422);
    let v = r.json();
    assert_status(
        &v,
        422,
        "Invalid",
        "CreateOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: []string{\"Some\"}: supported values: \"All\"",
    );
    assert_eq!(
        v["details"],
        json!({"group": "meta.k8s.io", "kind": "CreateOptions", "causes": [{
            "reason": "FieldValueNotSupported",
            "message": "Unsupported value: []string{\"Some\"}: supported values: \"All\"",
            "field": "dryRun"}]})
    );

    let long = "m".repeat(129);
    let r = c
        .post_json(&format!("{V1}?fieldManager={long}"), &body)
        .await;
    assert_status(
        &r.json(),
        422,
        "Invalid",
        "CreateOptions.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be more than 128 bytes",
    );
    let r = c
        .post_json(&format!("{V1}?fieldManager={}", "m".repeat(128)), &body)
        .await;
    assert_eq!(r.status, 201);
    let r = c
        .post_json(&format!("{V1}?fieldManager=a%01b"), &body)
        .await;
    assert_status(
        &r.json(),
        422,
        "Invalid",
        "CreateOptions.meta.k8s.io \"\" is invalid: fieldManager: Invalid value: \"a\\x01b\": invalid character U+0001 (at position 1)",
    );

    let r = c
        .post_json(&format!("{V1}?fieldValidation=strict"), &body)
        .await;
    assert_status(
        &r.json(),
        422,
        "Invalid",
        "CreateOptions.meta.k8s.io \"\" is invalid: fieldValidation: Unsupported value: \"strict\": supported values: \"\", \"Ignore\", \"Strict\", \"Warn\"",
    );

    // Several bad parameters: every one, in kube's order.
    let r = c
        .post_json(&format!("{V1}?dryRun=x&fieldValidation=y"), &body)
        .await;
    let v = r.json();
    assert_eq!(
        v["message"],
        "CreateOptions.meta.k8s.io \"\" is invalid: [dryRun: Unsupported value: []string{\"x\"}: supported values: \"All\", fieldValidation: Unsupported value: \"y\": supported values: \"\", \"Ignore\", \"Strict\", \"Warn\"]"
    );
    assert_eq!(v["details"]["causes"].as_array().unwrap().len(), 2);

    // pretty=true indents; default is compact with a trailing newline.
    let r = c.post_json(&format!("{V1}?pretty=true"), &body).await;
    assert!(
        r.text().starts_with("{\n  \"kind\": \"TokenReview\","),
        "{}",
        r.text()
    );
    let r = c.post_json(V1, &body).await;
    assert!(r.text().starts_with("{\"kind\":\"TokenReview\""));
    assert!(r.text().ends_with("}\n"));
    // curl gets pretty output unless it asks otherwise, as from kube-apiserver.
    let r = c
        .request(
            Method::POST,
            V1,
            &[("user-agent", "curl/8.5.0")],
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert!(r.text().starts_with("{\n"));
    let r = c
        .request(
            Method::POST,
            &format!("{V1}?pretty=false"),
            &[("user-agent", "curl/8.5.0")],
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert!(r.text().starts_with("{\"kind\""));
}

#[tokio::test]
async fn field_validation_modes() {
    let s = TestServer::start(Opts::default()).await;
    let c = s.client();
    let body = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"x","token":"bob-token","foo":1},"extra":true}"#;
    let post = |q: &'static str| {
        let c = c.clone();
        async move {
            c.request(
                Method::POST,
                &format!("{V1}{q}"),
                &[("content-type", "application/json")],
                body,
            )
            .await
        }
    };
    // Default and Warn: 201, one Warning per problem, the last duplicate wins.
    for q in ["", "?fieldValidation=Warn"] {
        let r = post(q).await;
        assert_eq!(r.status, 201, "{q}");
        assert_eq!(
            r.warnings(),
            [
                r#"299 - "duplicate field \"spec.token\"""#,
                r#"299 - "unknown field \"spec.foo\"""#,
                r#"299 - "unknown field \"extra\"""#,
            ],
            "{q}"
        );
        assert_eq!(r.json()["status"]["user"]["username"], "bob");
    }
    let r = post("?fieldValidation=Ignore").await;
    assert_eq!(r.status, 201);
    assert!(r.warnings().is_empty());
    let r = post("?fieldValidation=Strict").await;
    assert_status(
        &r.json(),
        400,
        "BadRequest",
        "TokenReview in version \"v1\" cannot be handled as a TokenReview: strict decoding error: duplicate field \"spec.token\", unknown field \"spec.foo\", unknown field \"extra\"",
    );
    // A clean body passes Strict.
    let r = c
        .post_json(
            &format!("{V1}?fieldValidation=Strict"),
            &review_body("authentication.k8s.io/v1", "bob-token", &["a"]),
        )
        .await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn bad_requests_are_status_objects() {
    let s = TestServer::start(Opts::default()).await;
    let c = s.client();

    let r = c
        .post_json(
            V1,
            &json!({"apiVersion": "authentication.k8s.io/v1", "spec": {}}),
        )
        .await;
    assert_status(
        &r.json(),
        400,
        "BadRequest",
        "token is required for TokenReview in authentication",
    );
    let r = c.post_json(V1, &json!({"spec": {"token": ""}})).await;
    assert_eq!(r.status, 400);

    let r = c
        .post_json(
            V1,
            &json!({"apiVersion": "v1", "kind": "TokenReview", "spec": {"token": "t"}}),
        )
        .await;
    assert_status(
        &r.json(),
        400,
        "BadRequest",
        "the API version in the data (v1) does not match the expected API version (authentication.k8s.io/v1)",
    );
    let r = c
        .post_json(V1, &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "Pod", "spec": {"token": "t"}}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["reason"], "BadRequest");

    for body in ["{", "[]", "", "{\"spec\":{\"token\":5}}", "null"] {
        let r = c
            .request(
                Method::POST,
                V1,
                &[("content-type", "application/json")],
                body,
            )
            .await;
        assert_eq!(r.status, 400, "{body:?}");
        assert_eq!(r.json()["kind"], "Status");
    }

    let r = c
        .request(Method::POST, V1, &[("content-type", "text/plain")], "x")
        .await;
    assert_status(
        &r.json(),
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: application/json",
    );
    // Parameters on the media type are fine; no Content-Type means JSON.
    let b = serde_json::to_vec(&review_body("authentication.k8s.io/v1", "bob-token", &[])).unwrap();
    let r = c
        .request(
            Method::POST,
            V1,
            &[("content-type", "application/json; charset=utf-8")],
            b.clone(),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = c.request(Method::POST, V1, &[], b).await;
    assert_eq!(r.status, 201);

    let r = c.get(V1).await;
    assert_status(
        &r.json(),
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    );
    let r = c.get("/apis/authentication.k8s.io/v1/nothing").await;
    assert_status(
        &r.json(),
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
    let r = c.request(Method::DELETE, "/", &[], "").await;
    assert_eq!(r.json()["code"], 404);
}

#[tokio::test]
async fn body_limit_is_413() {
    let s = TestServer::start(Opts::default()).await;
    let c = s.client();
    let big = format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","spec":{{"token":"{}"}}}}"#,
        "a".repeat(3 * 1024 * 1024)
    );
    for client in [c.clone(), c.http2()] {
        let r = client
            .request(
                Method::POST,
                V1,
                &[("content-type", "application/json")],
                big.clone(),
            )
            .await;
        assert_status(
            &r.json(),
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        );
    }
}
