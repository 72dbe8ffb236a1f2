//! TokenRequest minting: kube's rules and messages, policy, verification back, discovery, rotation and revocation.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Method;
use serde_json::{Value, json};

use crate::assert_eventually;
use crate::support::{Client, ISSUER, Opts, TestServer, replace_file};

const BUILDER: &str = "/api/v1/namespaces/ci/serviceaccounts/builder/token";

async fn start() -> TestServer {
    TestServer::start(Opts {
        mint: true,
        ..Opts::default()
    })
    .await
}

fn admin(s: &TestServer) -> Client {
    Client::new(s.addr, &s.ca.pem, Some(&s.ca.client("tokenhook-admin")))
}

fn part(token: &str, i: usize) -> Value {
    let p = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

async fn mint(c: &Client, path: &str, spec: Value) -> String {
    let r = c.post_json(path, &json!({"spec": spec})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["status"]["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn minted_token_has_kubes_layout_and_reviews_back() {
    let s = start().await;
    let body = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": ["vault"],
            "expirationSeconds": 1200,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "job-1", "uid": "pod-uid-1"}
        }
    });
    let r = admin(&s).post_json(BUILDER, &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["kind"], "TokenRequest");
    assert_eq!(v["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(v["metadata"]["name"], "builder");
    assert_eq!(v["metadata"]["namespace"], "ci");
    assert_eq!(v["metadata"]["uid"], "11111111-2222-3333-4444-555555555555");
    assert_eq!(
        v["spec"],
        json!({"audiences": ["vault"], "expirationSeconds": 1200,
               "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "job-1", "uid": "pod-uid-1"}})
    );
    let created = time::OffsetDateTime::parse(
        v["metadata"]["creationTimestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let expires = time::OffsetDateTime::parse(
        v["status"]["expirationTimestamp"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!((expires - created).whole_seconds(), 1200);
    assert!(
        v["status"]["expirationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    let token = v["status"]["token"].as_str().unwrap();
    let header = part(token, 0);
    assert_eq!(
        header.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["alg", "kid"]
    );
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"].as_str().unwrap().len(), 43);
    let claims = part(token, 1);
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "system:serviceaccount:ci:builder");
    assert_eq!(claims["aud"], json!(["vault"]));
    assert_eq!(claims["nbf"], claims["iat"]);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        1200
    );
    assert_eq!(
        claims["kubernetes.io"],
        json!({"namespace": "ci",
               "serviceaccount": {"name": "builder", "uid": "11111111-2222-3333-4444-555555555555"},
               "pod": {"name": "job-1", "uid": "pod-uid-1"}})
    );
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(jti).unwrap().get_version_num(), 4);

    // kube-apiserver reviews it through tokenhook: kube's user info, audiences intersected.
    let c = s.client();
    let v = c.review(token, &["x", "vault"]).await.json();
    assert_eq!(
        v["status"],
        json!({
            "authenticated": true,
            "user": {
                "username": "system:serviceaccount:ci:builder",
                "uid": "11111111-2222-3333-4444-555555555555",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:ci"],
                "extra": {
                    "authentication.kubernetes.io/credential-id": [format!("JTI={jti}")],
                    "authentication.kubernetes.io/pod-name": ["job-1"],
                    "authentication.kubernetes.io/pod-uid": ["pod-uid-1"]
                }
            },
            "audiences": ["vault"]
        })
    );
    // Not for the API server (no API audiences configured, token bound to vault), nor for x.
    assert_eq!(
        c.review(token, &[]).await.json()["status"],
        json!({"user": {}})
    );
    assert_eq!(
        c.review(token, &["x"]).await.json()["status"],
        json!({"user": {}})
    );
    // Tampered payload: rejected, not accepted and not "not mine".
    let mut forged: Vec<&str> = token.split('.').collect();
    let evil = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(
            &json!({"iss": ISSUER, "sub": "system:serviceaccount:ci:other", "aud": ["vault"]}),
        )
        .unwrap(),
    );
    forged[1] = &evil;
    assert_eq!(
        c.review(&forged.join("."), &["vault"]).await.json()["status"],
        json!({"user": {}})
    );
    assert_eq!(
        s.metric(
            "tokenhook_rejections_total",
            "verifier=\"service_account\",reason=\"bad_signature\""
        )
        .await,
        1.0
    );
    assert_eq!(
        s.metric("tokenhook_tokens_minted_total", "namespace=\"ci\"")
            .await,
        1.0
    );
}

#[tokio::test]
async fn node_and_secret_bindings_and_default_audiences() {
    let s = TestServer::start(Opts {
        mint: true,
        extra_toml: "[review]\napi_audiences = [\"https://kubernetes.default.svc\"]\n".into(),
        ..Opts::default()
    })
    .await;
    let a = admin(&s);
    let r = a
        .post_json(BUILDER, &json!({"spec": {"boundObjectRef": {"kind": "Node", "apiVersion": "v1", "name": "n1"}}}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    // Empty audiences: the API audiences; default expiration 3600.
    assert_eq!(
        v["spec"]["audiences"],
        json!(["https://kubernetes.default.svc"])
    );
    assert_eq!(v["spec"]["expirationSeconds"], 3600);
    let token = v["status"]["token"].as_str().unwrap();
    assert_eq!(
        part(token, 1)["kubernetes.io"]["node"],
        json!({"name": "n1", "uid": "node-uid-1"})
    );
    let st = s.client().review(token, &[]).await.json()["status"].clone();
    assert_eq!(st["audiences"], json!(["https://kubernetes.default.svc"]));
    assert_eq!(
        st["user"]["extra"]["authentication.kubernetes.io/node-name"],
        json!(["n1"])
    );
    assert_eq!(
        st["user"]["extra"]["authentication.kubernetes.io/node-uid"],
        json!(["node-uid-1"])
    );

    let token = mint(
        &a,
        BUILDER,
        json!({"boundObjectRef": {"kind": "Secret", "apiVersion": "v1", "name": "s1"}}),
    )
    .await;
    assert_eq!(
        part(&token, 1)["kubernetes.io"]["secret"],
        json!({"name": "s1", "uid": "secret-uid-1"})
    );
    // Unbound: boundObjectRef is null in the answer, as kube writes it.
    let r = a.post_json(BUILDER, &json!({})).await;
    assert_eq!(r.json()["spec"]["boundObjectRef"], Value::Null);
    assert!(
        r.json()["spec"]
            .as_object()
            .unwrap()
            .contains_key("boundObjectRef")
    );
}

#[tokio::test]
async fn kube_validation_rules_codes_and_messages() {
    let s = start().await;
    let a = admin(&s);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            BUILDER,
            json!({"metadata": {"namespace": "other"}, "spec": {}}),
            400,
            "the namespace of the provided object does not match the namespace sent on the request",
        ),
        (
            BUILDER,
            json!({"metadata": {"name": "x"}, "spec": {}}),
            422,
            "TokenRequest.authentication.k8s.io \"builder\" is invalid: metadata.name: Invalid value: \"x\": must match the service account name if specified",
        ),
        (
            "/api/v1/namespaces/ci/serviceaccounts/nosuch/token",
            json!({"spec": {}}),
            404,
            "serviceaccounts \"nosuch\" not found",
        ),
        (
            BUILDER,
            json!({"metadata": {"uid": "wrong"}, "spec": {}}),
            409,
            "Operation cannot be fulfilled on TokenRequest.authentication.k8s.io \"builder\": the UID in the token request (wrong) does not match the UID of the service account (11111111-2222-3333-4444-555555555555)",
        ),
        (
            BUILDER,
            json!({"spec": {"expirationSeconds": 599}}),
            422,
            "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes",
        ),
        (
            BUILDER,
            json!({"spec": {"expirationSeconds": 4294967297i64}}),
            422,
            "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: 4294967297: may not specify a duration larger than 2^32 seconds",
        ),
        (
            BUILDER,
            json!({"spec": {"boundObjectRef": {"kind": "ConfigMap", "apiVersion": "v1", "name": "c"}}}),
            400,
            "cannot bind token to object of type /v1, Kind=ConfigMap",
        ),
        (
            BUILDER,
            json!({"spec": {"boundObjectRef": {"kind": "Deployment", "apiVersion": "apps/v1", "name": "d"}}}),
            400,
            "cannot bind token to object of type apps/v1, Kind=Deployment",
        ),
        (
            BUILDER,
            json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "elsewhere"}}}),
            400,
            "cannot bind token for serviceaccount \"builder\" to pod running with different serviceaccount name.",
        ),
        (
            BUILDER,
            json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "ghost"}}}),
            404,
            "pods \"ghost\" not found",
        ),
        (
            BUILDER,
            json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "job-1", "uid": "stale"}}}),
            409,
            "Operation cannot be fulfilled on Pod \"job-1\": the UID in the bound object reference (stale) does not match the UID in record. The object might have been deleted and then recreated",
        ),
        (
            BUILDER,
            json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1"}}}),
            400,
            "Name parameter required.",
        ),
    ];
    for (path, body, code, message) in cases {
        let r = a.post_json(path, &body).await;
        let v = r.json();
        assert_eq!(r.status.as_u16(), code, "{body}: {v}");
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["message"], message, "{body}");
    }
    // Validation reports 600 and 2^32 as the inclusive bounds.
    for ok in [600i64, 4294967296] {
        let r = a
            .post_json(BUILDER, &json!({"spec": {"expirationSeconds": ok}}))
            .await;
        assert_eq!(r.status, 201, "{ok}");
    }
    // Over the configured maximum: clamped with kube's warning.
    let r = a
        .post_json(BUILDER, &json!({"spec": {"expirationSeconds": 100000}}))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["spec"]["expirationSeconds"], 86400);
    assert_eq!(
        r.warnings(),
        [r#"299 - "requested expiration of 100000 seconds shortened to 86400 seconds""#]
    );
    // dryRun=All validates and answers as kube does (a token, nothing persisted anyway).
    let r = a
        .post_json(&format!("{BUILDER}?dryRun=All"), &json!({"spec": {}}))
        .await;
    assert_eq!(r.status, 201);
    let r = a
        .post_json(&format!("{BUILDER}?dryRun=Nope"), &json!({"spec": {}}))
        .await;
    assert_eq!(r.status, 422);
    // Strict field validation and wrong methods, as on the review endpoint.
    let r = a
        .post_json(
            &format!("{BUILDER}?fieldValidation=Strict"),
            &json!({"spec": {"audience": ["x"]}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["message"],
        "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: strict decoding error: unknown field \"spec.audience\""
    );
    assert_eq!(a.get(BUILDER).await.status, 405);
}

#[tokio::test]
async fn protobuf_bodies_as_kubectl_sends_them() {
    use k8s_pb::api::authentication::v1 as pb;
    let s = start().await;
    let req = pb::TokenRequest {
        metadata: Some(Default::default()),
        spec: Some(pb::TokenRequestSpec {
            audiences: vec!["vault-a".into()],
            expiration_seconds: Some(900),
            bound_object_ref: Some(pb::BoundObjectReference {
                kind: Some("Pod".into()),
                api_version: Some("v1".into()),
                name: Some("job-2".into()),
                u_id: Some(String::new()),
            }),
        }),
        status: None,
    };
    let body = tokenhook::k8s::protobuf::wrap("authentication.k8s.io/v1", "TokenRequest", &req);
    let r = admin(&s)
        .request(
            Method::POST,
            BUILDER,
            &[
                ("content-type", "application/vnd.kubernetes.protobuf"),
                (
                    "accept",
                    "application/vnd.kubernetes.protobuf,application/json",
                ),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["spec"]["expirationSeconds"], 900);
    let claims = part(v["status"]["token"].as_str().unwrap(), 1);
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "job-2");
    // The derived uid is stable (same as the registry's).
    assert_eq!(
        claims["kubernetes.io"]["pod"]["uid"],
        tokenhook::mint::accounts::stable_uid(&["pod", "ci", "job-2"])
    );
    let r = admin(&s)
        .request(
            Method::POST,
            BUILDER,
            &[("content-type", "application/vnd.kubernetes.protobuf")],
            "not protobuf",
        )
        .await;
    assert_eq!(r.status, 400);
    let r = admin(&s)
        .request(Method::POST, BUILDER, &[("content-type", "text/yaml")], "x")
        .await;
    assert_eq!(r.status, 415);
}

#[tokio::test]
async fn policy_decides_who_mints_what() {
    let s = start().await;
    let anon = s.anonymous();
    let r = anon.post_json(BUILDER, &json!({"spec": {}})).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "Unauthorized");

    // alice authenticates with her static token (group developers).
    let as_alice = |path: &'static str, spec: Value| {
        let anon = anon.clone();
        async move {
            anon.request(
                Method::POST,
                path,
                &[
                    ("content-type", "application/json"),
                    ("authorization", "Bearer alice-token"),
                ],
                serde_json::to_vec(&json!({"spec": spec})).unwrap(),
            )
            .await
        }
    };
    let r = as_alice(BUILDER, json!({"audiences": ["vault-prod"]})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Her rule caps tokens at an hour.
    let r = as_alice(
        BUILDER,
        json!({"audiences": ["vault"], "expirationSeconds": 7200}),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["spec"]["expirationSeconds"], 3600);
    assert_eq!(
        r.warnings(),
        [r#"299 - "requested expiration of 7200 seconds shortened to 3600 seconds""#]
    );
    let r = as_alice(BUILDER, json!({"audiences": ["vault", "kubernetes"]})).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["message"],
        "serviceaccounts \"builder\" is forbidden: User \"alice\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"ci\": no mint policy rule for this user and service account allows audience \"kubernetes\""
    );
    let r = as_alice(
        "/api/v1/namespaces/prod/serviceaccounts/builder/token",
        json!({"audiences": ["vault"]}),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .ends_with("allows service account prod/builder")
    );
    // 403 comes before 404: no probing for accounts.
    let r = as_alice(
        "/api/v1/namespaces/prod/serviceaccounts/nosuch/token",
        json!({}),
    )
    .await;
    assert_eq!(r.status, 403);
    // bob has no rule at all; a certificate nobody named neither.
    let r = anon
        .request(
            Method::POST,
            BUILDER,
            &[("authorization", "Bearer bob-token")],
            "{}",
        )
        .await;
    assert_eq!(r.status, 403);
    let stranger = Client::new(s.addr, &s.ca.pem, Some(&s.ca.client("someone")));
    assert_eq!(stranger.post_json(BUILDER, &json!({})).await.status, 403);
    // A minted token can itself be a credential, and gets no more than its groups allow.
    let t = mint(&admin(&s), BUILDER, json!({})).await;
    let r = anon
        .request(
            Method::POST,
            BUILDER,
            &[("authorization", &format!("Bearer {t}"))],
            "{}",
        )
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn an_independent_library_verifies_through_discovery() {
    let s = start().await;
    let token = mint(&admin(&s), BUILDER, json!({"audiences": ["vault"]})).await;
    let anon = s.anonymous();
    let r = anon.get("/.well-known/openid-configuration").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["cache-control"], "public, max-age=3600");
    let d = r.json();
    assert_eq!(
        d,
        json!({"issuer": ISSUER, "jwks_uri": format!("{ISSUER}/openid/v1/jwks"),
               "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
               "id_token_signing_alg_values_supported": ["ES256", "RS256"]})
    );
    let r = anon.get("/openid/v1/jwks").await;
    assert_eq!(r.headers["content-type"], "application/jwk-set+json");
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(jwks.keys.len(), 2);
    assert!(
        !r.text().contains("\"d\""),
        "private key material published"
    );
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let jwk = jwks.find(&kid).expect("signing key published");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["vault"]);
    validation.set_issuer(&[ISSUER]);
    let data = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    )
    .unwrap();
    assert_eq!(data.claims["sub"], "system:serviceaccount:ci:builder");
}

#[tokio::test]
async fn signing_key_rotation_keeps_old_tokens_valid() {
    let s = start().await;
    let a = admin(&s);
    let old_token = mint(&a, BUILDER, json!({"audiences": ["vault"]})).await;
    let old_kid = part(&old_token, 0)["kid"].as_str().unwrap().to_owned();

    // Rotate: a new active key; the previous one becomes verify-only.
    let prev = std::fs::read(s.path("sa.key")).unwrap();
    let prev = openssl::pkey::PKey::private_key_from_pem(&prev).unwrap();
    replace_file(
        &s.path("old.pub"),
        &String::from_utf8(prev.public_key_to_pem().unwrap()).unwrap(),
    );
    let next = tokenhook::mint::keys::generate_pem(tokenhook::mint::keys::Alg::ES256).unwrap();
    replace_file(&s.path("sa.key"), &String::from_utf8(next).unwrap());
    assert_eventually!(
        10,
        part(&mint(&a, BUILDER, json!({"audiences": ["vault"]})).await, 0)["kid"]
            != old_kid.as_str(),
        "new key not used"
    );
    let new_token = mint(&a, BUILDER, json!({"audiences": ["vault"]})).await;
    assert_eq!(part(&new_token, 0)["alg"], "ES256");
    let c = s.client();
    for t in [&old_token, &new_token] {
        assert_eq!(
            c.review(t, &["vault"]).await.json()["status"]["authenticated"],
            true
        );
    }
    // Withdraw the old key: its tokens stop working at once, cached or not.
    let unrelated = tokenhook::mint::keys::generate_pem(tokenhook::mint::keys::Alg::EdDSA).unwrap();
    replace_file(&s.path("old.pub"), &String::from_utf8(unrelated).unwrap());
    assert_eventually!(
        10,
        c.review(&old_token, &["vault"]).await.json()["status"] == json!({"user": {}}),
        "withdrawn key still accepted"
    );
    assert_eq!(
        c.review(&new_token, &["vault"]).await.json()["status"]["authenticated"],
        true
    );
    // A broken key file is refused; the keys in use stay.
    replace_file(&s.path("sa.key"), "garbage");
    assert_eventually!(
        10,
        s.metric(
            "tokenhook_reloads_total",
            "source=\"signing_keys\",result=\"failure\""
        )
        .await
            >= 1.0,
        "broken key not reported"
    );
    assert_eq!(
        a.post_json(BUILDER, &json!({"spec": {"audiences": ["vault"]}}))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn revocation_takes_effect_even_for_cached_verdicts() {
    let s = start().await;
    let a = admin(&s);
    let t1 = mint(&a, BUILDER, json!({"audiences": ["vault"]})).await;
    let t2 = mint(&a, BUILDER, json!({"audiences": ["vault"]})).await;
    let t3 = mint(
        &a,
        "/api/v1/namespaces/ci/serviceaccounts/other/token",
        json!({"audiences": ["vault"]}),
    )
    .await;
    let c = s.client();
    for t in [&t1, &t2, &t3] {
        for _ in 0..2 {
            assert_eq!(
                c.review(t, &["vault"]).await.json()["status"]["authenticated"],
                true
            );
        }
    }
    let jti = part(&t1, 1)["jti"].as_str().unwrap().to_owned();
    replace_file(
        &s.path("revocations.txt"),
        &format!("jti={jti}\nserviceaccount=ci/other\n"),
    );
    assert_eventually!(
        10,
        c.review(&t1, &["vault"]).await.json()["status"] == json!({"user": {}}),
        "revoked jti still accepted"
    );
    assert_eq!(
        c.review(&t3, &["vault"]).await.json()["status"],
        json!({"user": {}})
    );
    assert_eq!(
        c.review(&t2, &["vault"]).await.json()["status"]["authenticated"],
        true
    );
    assert!(
        s.metric("tokenhook_rejections_total", "reason=\"revoked\"")
            .await
            >= 2.0
    );
}
