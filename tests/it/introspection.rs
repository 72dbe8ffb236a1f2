//! `type = "introspection"` (RFC 7662) against a real authorization server, node-oidc-provider (issue 14): mapping, each client authentication method, revocation, provider down and back, no token in the logs.

use serde_json::{Value, json};

use crate::assert_eventually;
use crate::support::oidc_provider::{self, APP, BASIC, JWT, OidcProvider, POST, ROBOT};
use crate::support::{Opts, TestServer, secrets};

/// How tokenhook authenticates to the provider.
#[derive(Debug, Clone, Copy)]
enum Auth {
    Basic,
    Post,
    PrivateKeyJwt,
}

/// The `[[verifiers]]` entry for `p`: discovery from the issuer, the provider's CA, client
/// authentication `auth`, a positive cache of `ttl` seconds, and claimMappings over the
/// introspection response: username from `sub` (else `client:` + `client_id`), groups from
/// `groups`, extra from `client_id` and `scope`; `keys` are more top-level keys.
fn verifier_toml(p: &OidcProvider, auth: Auth, ttl: u64, keys: &str) -> String {
    let (client_id, method, credential) = match auth {
        Auth::Basic => (
            BASIC,
            "client_secret_basic",
            format!("client_secret_file = {:?}", p.path("tokenhook.secret")),
        ),
        Auth::Post => (
            POST,
            "client_secret_post",
            format!("client_secret_file = {:?}", p.path("tokenhook-post.secret")),
        ),
        Auth::PrivateKeyJwt => (
            JWT,
            "private_key_jwt",
            format!("private_key_file = {:?}", p.path("tokenhook-jwt.key")),
        ),
    };
    format!(
        r#"
[[verifiers]]
type = "introspection"
issuer = "{issuer}"
certificateAuthority = """
{ca}"""
client_id = "{client_id}"
client_auth = "{method}"
{credential}
cache_ttl_seconds = {ttl}
{keys}

[verifiers.claimMappings.username]
expression = "claims.?sub.orValue('client:' + claims.client_id)"
[verifiers.claimMappings.groups]
claim = "groups"
prefix = ""
[[verifiers.claimMappings.extra]]
key = "example.com/client-id"
valueExpression = "claims.client_id"
[[verifiers.claimMappings.extra]]
key = "example.com/scope"
valueExpression = "claims.scope.split(' ')"
"#,
        issuer = p.issuer,
        ca = p.ca.pem,
    )
}

/// tokenhook with the introspection verifier for `p`, cached for one second.
async fn tokenhook(p: &OidcProvider, auth: Auth) -> TestServer {
    tokenhook_with(p, auth, 1, "").await
}

async fn tokenhook_with(p: &OidcProvider, auth: Auth, ttl: u64, keys: &str) -> TestServer {
    TestServer::start(Opts {
        extra_toml: verifier_toml(p, auth, ttl, keys),
        ..Opts::default()
    })
    .await
}

/// The `status` of a TokenReview answer (201 Created, as kube-apiserver answers).
fn status(r: &crate::support::Resp) -> Value {
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["status"].clone()
}

#[tokio::test]
async fn an_active_token_is_the_user_its_introspection_response_names() {
    let p = OidcProvider::start().await;
    let s = tokenhook(&p, Auth::Basic).await;
    let c = s.client();

    let token = p.token(APP, "kube:read kube:write").await;
    assert_eq!(p.introspect(&token).await["active"], true);
    let st = status(&c.review(&token, &[]).await);
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(
        st["user"],
        json!({
            "username": "robot-1",
            "groups": ["ci", "deployers"],
            "extra": {
                "example.com/client-id": ["app"],
                "example.com/scope": ["kube:read", "kube:write"],
            },
        })
    );

    // No `sub` in this client's tokens: the username falls back to the client id.
    let token = p.token(ROBOT, "kube:read").await;
    let st = status(&c.review(&token, &[]).await);
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(st["user"]["username"], "client:robot");
    assert_eq!(
        st["user"]["extra"]["example.com/scope"],
        json!(["kube:read"])
    );

    // A token the provider never issued: `active: false`, a plain no.
    let unknown = format!("never-issued-{}", uuid::Uuid::new_v4().simple());
    let st = status(&c.review(&unknown, &[]).await);
    assert_eq!(st, json!({"user": {}}), "{st}");
    secrets::check();
}

#[tokio::test]
async fn each_client_authentication_method_is_accepted_by_the_provider() {
    let p = OidcProvider::start().await;
    for auth in [Auth::Basic, Auth::Post, Auth::PrivateKeyJwt] {
        let s = tokenhook(&p, auth).await;
        let c = s.client();
        // Two tokens, so two introspection calls: with private_key_jwt each carries a fresh
        // assertion (the provider refuses a replayed `jti`).
        for _ in 0..2 {
            let token = p.token(APP, "kube:read").await;
            let r = c.review(&token, &[]).await;
            assert_eq!(r.status, 201, "{auth:?}: {}", r.text());
            let st = status(&r);
            assert_eq!(st["authenticated"], true, "{auth:?}: {st}");
            assert_eq!(st["user"]["username"], "robot-1", "{auth:?}");
        }
    }
    // All six introspections (and none of the test's own) reached the provider.
    assert_eq!(p.stats().await.introspections, 6);
    secrets::check();
}

#[tokio::test]
async fn a_rejected_client_secret_is_could_not_check_not_no() {
    let p = OidcProvider::start().await;
    let s = tokenhook(&p, Auth::Basic).await;
    // tokenhook's secret no longer matches the provider's: a configuration error, which
    // must not turn valid tokens into a cacheable "no".
    let secret_file = p.path("tokenhook.secret");
    std::fs::write(&secret_file, "not-the-secret-of-tokenhook").unwrap();
    secrets::secret("not-the-secret-of-tokenhook");
    let token = p.token(APP, "kube:read").await;
    let c = s.client();
    // Every answer is "could not check" (503 + Retry-After) or, before the new file is
    // read, a yes; never a no.
    let review = |c: crate::support::Client, token: String| async move {
        let r = c.review(&token, &[]).await;
        match r.status.as_u16() {
            503 => {
                assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
                false
            }
            _ => {
                assert_eq!(status(&r)["authenticated"], true, "{}", r.text());
                true
            }
        }
    };
    assert_eventually!(
        30,
        !review(c.clone(), token.clone()).await,
        "the changed secret file was not picked up"
    );
    assert!(!review(c.clone(), token.clone()).await);
    // Restored (client_secret_file is read for every call): authenticated again, once any
    // circuit opened by the failures has let a probe through.
    std::fs::write(&secret_file, p.secret(BASIC)).unwrap();
    assert_eventually!(
        30,
        review(c.clone(), token.clone()).await,
        "the restored secret file was not picked up"
    );
    secrets::check();
}

#[tokio::test]
async fn a_token_revoked_at_the_provider_is_refused_once_the_cache_lifetime_has_passed() {
    let p = OidcProvider::start().await;
    let s = tokenhook(&p, Auth::Basic).await;
    let c = s.client();
    let token = p.token(APP, "kube:read").await;
    let other = p.token(APP, "kube:read").await;
    assert_eq!(status(&c.review(&token, &[]).await)["authenticated"], true);
    assert_eq!(status(&c.review(&other, &[]).await)["authenticated"], true);

    p.revoke(APP, &token).await;
    assert_eq!(p.introspect(&token).await, json!({"active": false}));
    // Revocation latency is the positive cache lifetime (1 s here): until then the cached
    // answer may stand; after it, the provider's "no" is the answer.
    assert_eventually!(
        30,
        status(&c.review(&token, &[]).await) == json!({"user": {}}),
        "the revoked token is still accepted"
    );
    assert_eq!(status(&c.review(&token, &[]).await), json!({"user": {}}));
    // The other token of the same client is untouched.
    assert_eq!(status(&c.review(&other, &[]).await)["authenticated"], true);
    secrets::check();
}

#[tokio::test]
async fn provider_stopped_is_503_with_retry_after_and_recovers_when_it_is_back() {
    let mut p = OidcProvider::start().await;
    let s = tokenhook(&p, Auth::Basic).await;
    let c = s.client();
    let seen = p.token(APP, "kube:read").await;
    let unseen = p.token(APP, "kube:write").await;
    assert_eq!(status(&c.review(&seen, &[]).await)["authenticated"], true);

    p.stop().await;
    // A token never reviewed cannot be checked: 503 + Retry-After, a `Status`, not a "no".
    for _ in 0..2 {
        let r = c.review(&unseen, &[]).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
        assert_eq!(r.json()["kind"], "Status");
    }
    // The reviewed one is answered from the cache until its lifetime passes, then is
    // "could not check" too; never "no".
    let mut answers = Vec::new();
    assert_eventually!(
        30,
        {
            let r = c.review(&seen, &[]).await;
            let code = r.status.as_u16();
            if code == 201 {
                answers.push(r.json()["status"]["authenticated"].clone());
            }
            code == 503
        },
        "the cached answer outlived its lifetime"
    );
    assert!(answers.iter().all(|a| *a == true), "{answers:?}");

    // Back (same port, same tokens): both authenticate again.
    p.restart().await;
    assert_eventually!(
        30,
        {
            let r = c.review(&unseen, &[]).await;
            r.status == 201 && r.json()["status"]["authenticated"] == true
        },
        "no recovery after the provider came back"
    );
    assert_eq!(status(&c.review(&seen, &[]).await)["authenticated"], true);
    secrets::check();
}

#[tokio::test]
async fn the_peer_is_a_real_provider() {
    // The support module's own contract, checked against the provider itself rather than
    // through tokenhook: opaque tokens (not JWTs), RFC 7009 revocation, state kept over a
    // restart, stats counting requests.
    let mut p = OidcProvider::start().await;
    let token = p.token(APP, "kube:read").await;
    assert_eq!(token.split('.').count(), 1, "not an opaque token");
    let v = p.introspect(&token).await;
    assert_eq!(v["active"], true);
    assert_eq!(v["client_id"], APP);
    assert_eq!(v["iss"], p.issuer.as_str());
    assert_eq!(v["scope"], "kube:read");
    p.restart().await;
    assert_eq!(p.introspect(&token).await["active"], true);
    p.revoke(APP, &token).await;
    assert_eq!(p.introspect(&token).await["active"], false);
    assert_eq!(
        p.stats().await,
        oidc_provider::Stats {
            introspections: 2,
            revocations: 1,
            tokens: 0
        }
    );
    secrets::check();
}

#[tokio::test]
async fn concurrent_reviews_of_one_token_make_one_introspection_call() {
    let p = OidcProvider::start().await;
    // Cached long enough that every review below finds the first answer.
    // A generous call timeout: on a loaded 2-core machine the provider's one answer can
    // take seconds while 100 TLS handshakes compete with it.
    let s = tokenhook_with(&p, Auth::Basic, 300, "timeout_seconds = 60").await;
    let token = p.token(APP, "kube:read").await;
    let before = p.stats().await.introspections;
    let reviews: Vec<_> = (0..100)
        .map(|_| {
            let (c, t) = (s.client(), token.clone());
            tokio::spawn(async move { c.review(&t, &[]).await })
        })
        .collect();
    for r in reviews {
        let r = r.await.unwrap();
        assert_eq!(status(&r)["authenticated"], true);
    }
    // One miss for all of them (concurrent misses coalesced), the rest from the cache.
    assert_eq!(p.stats().await.introspections - before, 1);
    secrets::check();
}

#[tokio::test]
async fn required_scopes_and_the_issuer_are_checked() {
    let p = OidcProvider::start().await;
    let s = tokenhook_with(&p, Auth::Basic, 1, r#"required_scopes = ["kube:write"]"#).await;
    let c = s.client();
    let both = p.token(APP, "kube:read kube:write").await;
    let read_only = p.token(APP, "kube:read").await;
    // The provider says active (and names itself as `iss`) for both; tokenhook requires
    // the scope.
    assert_eq!(p.introspect(&read_only).await["active"], true);
    assert_eq!(p.introspect(&both).await["iss"], p.issuer.as_str());
    assert_eq!(status(&c.review(&both, &[]).await)["authenticated"], true);
    assert_eq!(
        status(&c.review(&read_only, &[]).await),
        json!({"user": {}})
    );
    secrets::check();
}
