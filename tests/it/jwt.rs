//! JWT/OIDC issuers: a real issuer on loopback, tokens signed by another JWT library, kube's AuthenticationConfiguration semantics.

use serde_json::{Value, json};

use crate::assert_eventually;
use crate::support::issuer::{Issuer, keypair};
use crate::support::{Opts, TestServer, replace_file};

/// The issuer block of an AuthenticationConfiguration for `iss`, indented for `jwt:`.
pub(crate) fn issuer_yaml(iss: &Issuer, ca: &str, audiences: &[&str]) -> String {
    let ca: String = ca.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "- issuer:\n    url: {url}\n    audiences: [{auds}]\n    audienceMatchPolicy: MatchAny\n    certificateAuthority: |\n{ca}",
        url = iss.url,
        auds = audiences
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Starts tokenhook (its own CA) plus one issuer signed by that CA, configured by `rest`
/// (the YAML after the issuer block of `jwt[0]`).
async fn setup(rest: &str) -> (TestServer, Issuer) {
    setup_with(rest, "[jwt]\nmin_refresh_interval_seconds = 0\n").await
}

async fn setup_with(rest: &str, jwt_section: &str) -> (TestServer, Issuer) {
    // The issuer needs the CA before tokenhook's config exists: make the CA first by
    // starting a throwaway server, then reuse its CA for the real one.
    let probe = TestServer::start(Opts::default()).await;
    let issuer = Issuer::start(&probe.ca).await;
    let yaml = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n{}{rest}",
        issuer_yaml(&issuer, &probe.ca.pem, &["my-app", "other-app"])
    );
    std::fs::write(probe.path("authn.yaml"), &yaml).unwrap();
    let s = TestServer::start_in(
        probe,
        Opts {
            extra_toml: format!(
                "{jwt_section}\n[[verifiers]]\ntype = \"authentication_config\"\nfile = \"authn.yaml\"\n"
            ),
            ..Opts::default()
        },
    )
    .await;
    (s, issuer)
}

const MAPPINGS: &str = "  claimMappings:\n    username:\n      claim: sub\n      prefix: \"oidc:\"\n    groups:\n      claim: groups\n      prefix: \"\"\n";

#[tokio::test]
async fn every_algorithm_verifies() {
    let (s, iss) = setup(MAPPINGS).await;
    let c = s.client();
    for (alg, kid) in [
        ("RS256", "k1"),
        ("PS256", "kp"),
        ("ES256", "ke"),
        ("EdDSA", "kd"),
        ("RS512", "kr"),
    ] {
        if kid != "k1" {
            iss.add_key(alg, kid);
        }
        let t = iss.sign(
            kid,
            &iss.claims(json!({"groups": ["dev", "ops"], "jti": "abc"})),
        );
        let v = c
            .review(&t, &["https://kubernetes.default.svc"])
            .await
            .json();
        assert_eq!(
            v["status"],
            json!({"authenticated": true, "user": {"username": "oidc:jane", "groups": ["dev", "ops"],
                   "extra": {"authentication.kubernetes.io/credential-id": ["JTI=abc"]}}}),
            "{alg}"
        );
    }
}

#[tokio::test]
async fn attacks_are_rejected() {
    let (s, iss) = setup(MAPPINGS).await;
    let c = s.client();
    let no = json!({"user": {}});
    let good = iss.sign("k1", &iss.claims(json!({})));
    assert_eq!(
        c.review(&good, &[]).await.json()["status"]["authenticated"],
        true
    );
    let b64 = |v: &Value| {
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            v.to_string(),
        )
    };
    let payload = b64(&iss.claims(json!({})));

    // alg none
    let none = format!("{}.{payload}.", b64(&json!({"alg": "none", "kid": "k1"})));
    // HS256 with the RSA public key (the JWK's modulus JSON) as the secret
    let secret = iss.jwk("k1").to_string();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("k1".into());
    let hmac = jsonwebtoken::encode(
        &h,
        &iss.claims(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    // a key of another issuer, under a kid the real issuer uses
    let (a, k, _) = keypair("RS256", "k1");
    let mut h = jsonwebtoken::Header::new(a);
    h.kid = Some("k1".into());
    let foreign = jsonwebtoken::encode(&h, &iss.claims(json!({})), &k).unwrap();
    // tampered payload
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = b64(&iss.claims(json!({"sub": "admin"})));
    let tampered = parts.join(".");
    // jku header pointing elsewhere
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("k1".into());
    h.jku = Some("https://evil.example/jwks".into());
    let with_jku = iss.sign_with_header(h, &iss.claims(json!({})));
    // Headers naming a key elsewhere or embedding one, signed with the issuer's real key:
    // never followed, refused outright.
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("k1".into());
    h.x5u = Some("https://evil.example/cert.pem".into());
    let with_x5u = iss.sign_with_header(h, &iss.claims(json!({})));
    let real = json!({"alg": "RS256", "kid": "k1", "typ": "JWT"});
    let with_header = |extra: Value| {
        let mut h = real.clone();
        h.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        iss.sign_raw("k1", &h, &iss.claims(json!({})))
    };
    let with_jwk = with_header(json!({"jwk": iss.jwk("k1")}));
    // crit names an extension this verifier does not understand (RFC 7515 §4.1.11).
    let with_crit = with_header(json!({"crit": ["exp"], "exp": 0}));
    // An attacker's own key, embedded as jwk, under a kid the issuer does not have.
    let (a, k, attacker_jwk) = keypair("RS256", "attacker");
    let mut h = jsonwebtoken::Header::new(a);
    h.kid = Some("attacker".into());
    h.jwk = Some(serde_json::from_value(attacker_jwk).unwrap());
    let self_signed = jsonwebtoken::encode(&h, &iss.claims(json!({})), &k).unwrap();
    // kid path traversal and injection: looked up as opaque strings, matching nothing.
    let (a, k, _) = keypair("RS256", "x");
    let odd_kid = |kid: &str| {
        let mut h = jsonwebtoken::Header::new(a);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, &iss.claims(json!({})), &k).unwrap()
    };
    // A nested JWT (cty: JWT): the payload is a token, not a claim set.
    let nested = {
        let header = b64(&json!({"alg": "RS256", "kid": "k1", "cty": "JWT"}));
        let inner = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            good.as_bytes(),
        );
        format!("{header}.{inner}.{}", good.split('.').nth(2).unwrap())
    };
    // A JWE (five segments) carrying the good token's pieces.
    let jwe = format!(
        "{}..{}.{}.{}",
        b64(&json!({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": "k1"})),
        good.split('.').nth(1).unwrap(),
        payload,
        "AAAA"
    );
    let now = tokenhook::clock::Clock::System.now().0;
    let cases = [
        ("x5u", with_x5u),
        ("embedded jwk of the real key", with_jwk),
        ("crit", with_crit),
        ("embedded attacker jwk", self_signed),
        ("kid path traversal", odd_kid("../../../../etc/passwd")),
        ("kid injection", odd_kid("k1' OR '1'='1")),
        ("kid with NUL", odd_kid("k1\u{0}")),
        ("kid huge", odd_kid(&"k".repeat(64 * 1024))),
        ("nested JWT", nested),
        ("JWE", jwe),
        ("alg none", none),
        ("hs256 with public key", hmac),
        ("foreign key", foreign),
        ("tampered", tampered),
        ("jku", with_jku),
        (
            "expired",
            iss.sign("k1", &iss.claims(json!({"exp": now - 3600}))),
        ),
        (
            "future nbf",
            iss.sign("k1", &iss.claims(json!({"nbf": now + 3600}))),
        ),
        (
            "no exp",
            iss.sign("k1", &{
                let mut c = iss.claims(json!({}));
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
        ),
        (
            "wrong aud",
            iss.sign("k1", &iss.claims(json!({"aud": ["someone-else"]}))),
        ),
        (
            "missing username claim",
            iss.sign("k1", &{
                let mut c = iss.claims(json!({}));
                c.as_object_mut().unwrap().remove("sub");
                c
            }),
        ),
        ("unknown kid", {
            let (a, k, _) = keypair("RS256", "nope");
            let mut h = jsonwebtoken::Header::new(a);
            h.kid = Some("nope".into());
            jsonwebtoken::encode(&h, &iss.claims(json!({})), &k).unwrap()
        }),
    ];
    for (what, token) in cases {
        let r = c.review(&token, &[]).await;
        assert_eq!(r.status, 201, "{what}");
        assert_eq!(r.json()["status"], no, "{what}");
    }
    // Wrong iss is simply not this verifier's token.
    let other = iss.sign("k1", &iss.claims(json!({"iss": "https://other.example"})));
    assert_eq!(c.review(&other, &[]).await.json()["status"], no);
    // An oversized token is refused whole, never parsed past the limit.
    let big = format!(
        "{}.{}.x",
        b64(&json!({"alg": "RS256"})),
        "A".repeat(4 << 20)
    );
    let r = c.review(&big, &[]).await;
    assert_eq!(r.status, 413);
    for reason in [
        "bad_signature",
        "expired",
        "not_yet_valid",
        "audience_mismatch",
        "unknown_kid",
        "claim_rule",
        "malformed",
    ] {
        assert!(
            s.metric(
                "tokenhook_rejections_total",
                &format!("reason=\"{reason}\"")
            )
            .await
                >= 1.0,
            "no rejection counted as {reason}"
        );
    }
}

#[tokio::test]
async fn key_rotation_and_outages() {
    let (s, iss) = setup(MAPPINGS).await;
    let c = s.client();
    let t1 = iss.sign("k1", &iss.claims(json!({})));
    assert_eq!(
        c.review(&t1, &[]).await.json()["status"]["authenticated"],
        true
    );
    // Rotation at the issuer: k2 appears, k1 goes. A k2 token triggers a refresh.
    iss.add_key("ES256", "k2");
    iss.unpublish("k1");
    let t2 = iss.sign("k2", &iss.claims(json!({"sub": "second"})));
    assert_eq!(
        c.review(&t2, &[]).await.json()["status"]["user"]["username"],
        "oidc:second"
    );
    // Issuer down after the fetch: the last good keys keep verifying.
    iss.set_down(true);
    let t3 = iss.sign("k2", &iss.claims(json!({"sub": "third"})));
    assert_eq!(
        c.review(&t3, &[]).await.json()["status"]["user"]["username"],
        "oidc:third"
    );
    assert!(
        s.metric("tokenhook_jwks_refreshes_total", "result=\"success\"")
            .await
            >= 2.0
    );
    iss.set_down(false);
    let r = s.client().get("/readyz?verbose").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains(&format!("[+]jwt-issuer {} ok", iss.url)),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn issuer_down_before_first_fetch_is_transient() {
    let probe = TestServer::start(Opts::default()).await;
    let iss = Issuer::start(&probe.ca).await;
    iss.set_down(true);
    let yaml = format!(
        "apiVersion: apiserver.config.k8s.io/v1beta1\nkind: AuthenticationConfiguration\njwt:\n{}{MAPPINGS}",
        issuer_yaml(&iss, &probe.ca.pem, &["my-app"])
    );
    std::fs::write(probe.path("authn.yaml"), &yaml).unwrap();
    let s = TestServer::start_in(
        probe,
        Opts {
            extra_toml: "[jwt]\nmin_refresh_interval_seconds = 0\n\n[[verifiers]]\ntype = \"authentication_config\"\nfile = \"authn.yaml\"\n".into(),
            ..Opts::default()
        },
    )
    .await;
    let c = s.client();
    let t = iss.sign("k1", &iss.claims(json!({})));
    // Not ready, and "could not check" rather than "no": 503 with Retry-After, not cached.
    let r = s.anonymous().get("/readyz").await;
    assert_eq!(r.status, 500);
    assert!(
        r.text()
            .contains(&format!("[-]jwt-issuer {} failed", iss.url))
    );
    for _ in 0..2 {
        let r = c.review(&t, &[]).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.headers["retry-after"], "1");
        assert_eq!(r.json()["reason"], "ServiceUnavailable");
    }
    iss.set_down(false);
    assert_eq!(
        c.review(&t, &[]).await.json()["status"]["authenticated"],
        true
    );
    assert_eq!(s.anonymous().get("/readyz").await.status, 200);
}

#[tokio::test]
async fn kube_documentation_examples_behave_as_documented() {
    // The "Valid token" example: CEL username/groups/uid/extra and a user rule.
    let doc = r#"  claimMappings:
    username:
      expression: 'claims.username + ":external-user"'
    groups:
      expression: 'claims.roles.split(",")'
    uid:
      expression: 'claims.sub'
    extra:
    - key: 'example.com/tenant'
      valueExpression: 'claims.tenant'
  userValidationRules:
  - expression: "!user.username.startsWith('system:')"
    message: 'username cannot used reserved system: prefix'
"#;
    let (s, iss) = setup(doc).await;
    let claims = json!({"jti": "7c337942807e73caa2c30c868ac0ce910bce02ddcbfebe8c23b8b5f27ad62873",
                        "roles": "user,admin", "sub": "auth",
                        "tenant": "72f988bf-86f1-41af-91ab-2d7cd011db4a", "username": "foo"});
    let t = iss.sign("k1", &iss.claims(claims.clone()));
    let v = s.client().review(&t, &[]).await.json();
    assert_eq!(
        v["status"]["user"],
        json!({"username": "foo:external-user", "uid": "auth", "groups": ["user", "admin"],
               "extra": {"example.com/tenant": ["72f988bf-86f1-41af-91ab-2d7cd011db4a"],
                         "authentication.kubernetes.io/credential-id": ["JTI=7c337942807e73caa2c30c868ac0ce910bce02ddcbfebe8c23b8b5f27ad62873"]}})
    );

    // "Fails claim validation": the hd rule fails.
    let failing = format!(
        "  claimValidationRules:\n  - expression: 'claims.hd == \"example.com\"'\n    message: the hd claim must be set to example.com\n{doc}"
    );
    let (s, iss) = setup(&failing).await;
    let t = iss.sign("k1", &iss.claims(claims.clone()));
    assert_eq!(
        s.client().review(&t, &[]).await.json()["status"],
        json!({"user": {}})
    );
    let t = iss.sign("k1", &iss.claims(json!({"hd": "example.com", "roles": "a", "sub": "s", "tenant": "t", "username": "foo"})));
    assert_eq!(
        s.client().review(&t, &[]).await.json()["status"]["authenticated"],
        true
    );

    // "Fails user validation": a system: username.
    let sys = doc.replace(
        "'claims.username + \":external-user\"'",
        "'\"system:\" + claims.username'",
    );
    let (s, iss) = setup(&sys).await;
    let t = iss.sign("k1", &iss.claims(claims));
    assert_eq!(
        s.client().review(&t, &[]).await.json()["status"],
        json!({"user": {}})
    );

    // claim + requiredValue, and email with email_verified.
    let email = "  claimValidationRules:\n  - claim: hd\n    requiredValue: example.com\n  claimMappings:\n    username:\n      claim: email\n      prefix: \"\"\n";
    let (s, iss) = setup(email).await;
    let c = s.client();
    let ok = iss.sign(
        "k1",
        &iss.claims(json!({"hd": "example.com", "email": "j@example.com", "email_verified": true})),
    );
    assert_eq!(
        c.review(&ok, &[]).await.json()["status"]["user"]["username"],
        "j@example.com"
    );
    let unverified = iss.sign(
        "k1",
        &iss.claims(
            json!({"hd": "example.com", "email": "j@example.com", "email_verified": false}),
        ),
    );
    assert_eq!(
        c.review(&unverified, &[]).await.json()["status"],
        json!({"user": {}})
    );
    let wrong_hd = iss.sign(
        "k1",
        &iss.claims(json!({"hd": "evil.com", "email": "j@example.com"})),
    );
    assert_eq!(
        c.review(&wrong_hd, &[]).await.json()["status"],
        json!({"user": {}})
    );
}

#[tokio::test]
async fn audience_agnostic_towards_the_review() {
    let (s, iss) = setup(MAPPINGS).await;
    // aud is a client id; kube-apiserver asks with its API audiences: still a yes, and
    // status.audiences stays empty ("valid for the API server").
    let t = iss.sign("k1", &iss.claims(json!({"aud": ["other-app", "x"]})));
    let v = s
        .client()
        .review(&t, &["https://kubernetes.default.svc"])
        .await
        .json();
    assert_eq!(v["status"]["authenticated"], true);
    assert_eq!(v["status"].get("audiences"), None);
}

#[tokio::test]
async fn bad_expressions_fail_at_load_naming_issuer_and_field() {
    let probe = TestServer::start(Opts::default()).await;
    let iss = Issuer::start(&probe.ca).await;
    let yaml = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n{}  claimMappings:\n    username:\n      expression: 'claims.sub +'\n    extra:\n    - key: example.com/x\n      valueExpression: 'frobnicate(claims.sub)'\n",
        issuer_yaml(&iss, &probe.ca.pem, &["my-app"])
    );
    let dir = probe.dir.path().to_owned();
    std::fs::write(dir.join("authn.yaml"), &yaml).unwrap();
    std::fs::write(
        dir.join("t.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\n[[verifiers]]\ntype = \"authentication_config\"\nfile = \"authn.yaml\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenhook"))
        .args(["serve", "--config"])
        .arg(dir.join("t.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "jwt[0].claimMappings.username.expression",
        "jwt[0].claimMappings.extra[0].valueExpression",
        "frobnicate",
        iss.url.as_str(),
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
}

#[tokio::test]
async fn authentication_config_reloads() {
    let (s, iss) = setup(MAPPINGS).await;
    let c = s.client();
    let t = iss.sign("k1", &iss.claims(json!({"aud": "my-app"})));
    assert_eq!(
        c.review(&t, &[]).await.json()["status"]["user"]["username"],
        "oidc:jane"
    );
    // New prefix and audience list.
    let yaml = std::fs::read_to_string(s.path("authn.yaml"))
        .unwrap()
        .replace("prefix: \"oidc:\"", "prefix: \"corp:\"");
    replace_file(&s.path("authn.yaml"), &yaml);
    assert_eventually!(
        10,
        c.review(&t, &[]).await.json()["status"]["user"]["username"] == "corp:jane",
        "reloaded mapping not applied"
    );
    // A broken version is refused and the good one kept.
    replace_file(&s.path("authn.yaml"), "apiVersion: nope\n");
    assert_eventually!(
        10,
        s.metric(
            "tokenhook_reloads_total",
            "source=\"authentication_config\",result=\"failure\""
        )
        .await
            >= 1.0,
        "broken config not reported"
    );
    assert_eq!(
        c.review(&t, &[]).await.json()["status"]["user"]["username"],
        "corp:jane"
    );
}

#[tokio::test]
async fn inline_toml_issuer_with_local_jwks_file() {
    // The same settings inline in tokenhook's own config, keys from a local JWKS file.
    let probe = TestServer::start(Opts::default()).await;
    let iss = Issuer::start(&probe.ca).await;
    std::fs::write(
        probe.path("jwks.json"),
        json!({"keys": [iss.jwk("k1")]}).to_string(),
    )
    .unwrap();
    let toml = format!(
        "[[verifiers]]\ntype = \"jwt\"\njwks_file = \"jwks.json\"\n[verifiers.issuer]\nurl = \"{url}\"\naudiences = [\"my-app\"]\n[verifiers.claimMappings.username]\nexpression = \"'ci:' + claims.sub\"\n[[verifiers.claimValidationRules]]\nexpression = \"claims.sub != 'blocked'\"\nmessage = \"blocked subject\"\n",
        url = iss.url
    );
    let s = TestServer::start_in(
        probe,
        Opts {
            extra_toml: toml,
            ..Opts::default()
        },
    )
    .await;
    iss.set_down(true); // the file is the only source
    let c = s.client();
    let t = iss.sign("k1", &iss.claims(json!({})));
    assert_eq!(
        c.review(&t, &[]).await.json()["status"]["user"]["username"],
        "ci:jane"
    );
    let t = iss.sign("k1", &iss.claims(json!({"sub": "blocked"})));
    assert_eq!(
        c.review(&t, &[]).await.json()["status"],
        json!({"user": {}})
    );
}

/// Key rotation with the default `[jwt]` settings (a 1 s floor between fetches), issue 14
/// item 4: a token no key verifies is "no" only when a set fetched after it arrived says
/// so; until such a fetch can happen it is "could not check" (503), never "no".
mod rotation {
    use super::*;
    use crate::support::Client;
    use std::sync::atomic::Ordering::SeqCst;

    /// The default settings, and the first key set loaded.
    async fn started() -> (TestServer, Issuer) {
        let (s, iss) = setup_with(MAPPINGS, "").await;
        let anon = s.anonymous();
        assert_eventually!(
            10,
            anon.get("/readyz").await.status == 200,
            "the keys never loaded"
        );
        (s, iss)
    }

    /// Past the 1 s floor since the last fetch finished (which happened before this call).
    async fn past_the_floor() {
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }

    /// Reviews `token` as kube-apiserver's webhook client does: a 503 with Retry-After is
    /// retried (5 tries). Every answer before the last must be that 503, never a "no".
    async fn review_like_kube(c: &Client, token: &str) -> Value {
        for _ in 0..5 {
            let r = c.review(token, &[]).await;
            if r.status == 201 {
                return r.json()["status"].clone();
            }
            assert_eq!(r.status, 503, "{}", r.text());
            let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
        }
        panic!("still 503 after 5 tries");
    }

    #[tokio::test]
    async fn a_key_published_right_after_the_fetch_verifies() {
        let (s, iss) = started().await;
        let c = s.client();
        // Published right after tokenhook fetched the keys, used at once: never a "no"
        // (the old behaviour answered {"user":{}} for 10 s, cached by kube for 2 min).
        iss.add_key("ES256", "k2");
        let t2 = iss.sign("k2", &iss.claims(json!({"sub": "second"})));
        let asked = std::time::Instant::now();
        assert_eq!(
            review_like_kube(&c, &t2).await["user"]["username"],
            "oidc:second"
        );
        eprintln!(
            "rotation: a key published right after the fetch authenticated after {:?}",
            asked.elapsed()
        );
        // Past the floor, a new key is fetched for the first token that needs it, and
        // concurrent reviews of tokens signed with it share that one fetch.
        past_the_floor().await;
        iss.add_key("RS256", "k3");
        let before = iss.jwks_hits.load(SeqCst);
        let reviews: Vec<_> = (0..20)
            .map(|i| {
                let (c, t) = (
                    s.client(),
                    iss.sign("k3", &iss.claims(json!({"sub": format!("u{i}")}))),
                );
                tokio::spawn(async move { c.review(&t, &[]).await })
            })
            .collect();
        for (i, r) in reviews.into_iter().enumerate() {
            let r = r.await.unwrap();
            assert_eq!(r.status, 201, "{}", r.text());
            assert_eq!(r.json()["status"]["user"]["username"], format!("oidc:u{i}"));
        }
        assert_eq!(iss.jwks_hits.load(SeqCst) - before, 1, "one shared fetch");
    }

    #[tokio::test]
    async fn a_fresh_set_without_the_key_is_a_plain_no() {
        let (s, iss) = started().await;
        let c = s.client();
        past_the_floor().await;
        let before = iss.jwks_hits.load(SeqCst);
        let (a, k, _) = keypair("RS256", "never-published");
        let mut h = jsonwebtoken::Header::new(a);
        h.kid = Some("never-published".into());
        let t = jsonwebtoken::encode(&h, &iss.claims(json!({})), &k).unwrap();
        let r = c.review(&t, &[]).await;
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.json()["status"], json!({"user": {}}));
        assert_eq!(iss.jwks_hits.load(SeqCst) - before, 1, "refetched once");
        // The same for a token under a known kid that its key does not verify (kube's
        // go-oidc refetches then too: an issuer may reuse a kid for a new key).
        past_the_floor().await;
        let mut h = jsonwebtoken::Header::new(a);
        h.kid = Some("k1".into());
        let forged = jsonwebtoken::encode(&h, &iss.claims(json!({})), &k).unwrap();
        let r = c.review(&forged, &[]).await;
        assert_eq!(r.json()["status"], json!({"user": {}}), "{}", r.text());
        assert_eq!(iss.jwks_hits.load(SeqCst) - before, 2);
        assert!(
            s.metric("tokenhook_rejections_total", "reason=\"unknown_kid\"")
                .await
                >= 1.0
        );
    }

    #[tokio::test]
    async fn issuer_down_and_an_unknown_kid_is_could_not_check_until_it_is_back() {
        let (s, iss) = started().await;
        let c = s.client();
        iss.stop();
        iss.add_key("ES256", "k2");
        let t2 = iss.sign("k2", &iss.claims(json!({"sub": "second"})));
        // Inside the floor and past it (a fetch is tried and fails): 503 with Retry-After.
        for _ in 0..2 {
            let r = c.review(&t2, &[]).await;
            assert_eq!(r.status, 503, "{}", r.text());
            assert_eq!(r.headers["retry-after"], "1");
            assert_eq!(r.json()["reason"], "ServiceUnavailable");
            past_the_floor().await;
        }
        assert!(
            s.metric("tokenhook_jwks_refreshes_total", "result=\"failure\"")
                .await
                >= 1.0
        );
        // The last good set keeps working meanwhile.
        let t1 = iss.sign("k1", &iss.claims(json!({})));
        assert_eq!(
            c.review(&t1, &[]).await.json()["status"]["authenticated"],
            true
        );
        // Back: the same token (never cached as a "no") is authenticated.
        iss.restart().await;
        assert_eq!(
            review_like_kube(&c, &t2).await["user"]["username"],
            "oidc:second"
        );
    }

    #[tokio::test]
    async fn a_flood_of_random_kids_costs_about_one_fetch_a_second() {
        let (s, iss) = started().await;
        let (a, k, _) = keypair("RS256", "bogus");
        let tokens: Vec<String> = (0..200)
            .map(|i| {
                let mut h = jsonwebtoken::Header::new(a);
                h.kid = Some(format!("bogus-{i}"));
                jsonwebtoken::encode(&h, &iss.claims(json!({})), &k).unwrap()
            })
            .collect();
        past_the_floor().await;
        let before = iss.jwks_hits.load(SeqCst);
        let started = std::time::Instant::now();
        // 8 clients, each reviewing its share of the tokens one after another.
        let tasks: Vec<_> = tokens
            .chunks(25)
            .map(|chunk| {
                let (c, chunk) = (s.client(), chunk.to_vec());
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    for t in chunk {
                        let r = c.review(&t, &[]).await;
                        answers.push((r.status.as_u16(), r.json()));
                    }
                    answers
                })
            })
            .collect();
        let mut noes = 0usize;
        for t in tasks {
            for (status, body) in t.await.unwrap() {
                match status {
                    201 => {
                        assert_eq!(body["status"], json!({"user": {}}));
                        noes += 1;
                    }
                    503 => assert_eq!(body["reason"], "ServiceUnavailable"),
                    other => panic!("status {other}: {body}"),
                }
            }
        }
        let fetches = iss.jwks_hits.load(SeqCst) - before;
        eprintln!(
            "flood: 200 reviews of unknown kids in {:?}: {fetches} JWKS fetches, {noes} refused by a fresh set, {} answered 503",
            started.elapsed(),
            200 - noes
        );
        // A fetch starts at most once a second after the previous one finished, so
        // however long the flood took, it caused at most one more fetch than whole seconds.
        let bound = started.elapsed().as_secs() as usize + 1;
        assert!(
            (1..=bound).contains(&fetches),
            "{fetches} JWKS fetches for 200 unknown kids (at most {bound})"
        );
        assert!(noes >= 1, "no token was refused by a fresh set");
    }
}

#[test]
fn the_deploy_example_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/apiserver/authentication-config.yaml");
    let c = tokenhook::verify::authn_config::load(&path).unwrap();
    assert_eq!(c.jwt.len(), 2);
    let cel = tokenhook::verify::cel::CelEnv::new().unwrap();
    let metrics = tokenhook::metrics::Metrics::new().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokenhook::verify::oidc::build_all(&c.jwt, &Default::default(), &cel, &metrics).unwrap();
    });
}

#[tokio::test]
async fn sighup_reloads_local_jwks_files() {
    let probe = TestServer::start(Opts::default()).await;
    let iss = Issuer::start(&probe.ca).await;
    iss.set_down(true);
    std::fs::write(
        probe.path("jwks.json"),
        json!({"keys": [iss.jwk("k1")]}).to_string(),
    )
    .unwrap();
    let toml = format!(
        "[[verifiers]]\ntype = \"jwt\"\njwks_file = \"jwks.json\"\n[verifiers.issuer]\nurl = \"{}\"\naudiences = [\"my-app\"]\n[verifiers.claimMappings.username]\nclaim = \"sub\"\nprefix = \"\"\n",
        iss.url
    );
    // Files are polled hourly here: only the reload signal can pick the new key up.
    let s = TestServer::start_in(
        probe,
        Opts {
            extra_toml: toml,
            reload_interval_ms: 3_600_000,
            ..Opts::default()
        },
    )
    .await;
    iss.add_key("ES256", "k2");
    let t = iss.sign("k2", &iss.claims(json!({})));
    std::fs::write(
        s.path("jwks.json"),
        json!({"keys": [iss.jwk("k1"), iss.jwk("k2")]}).to_string(),
    )
    .unwrap();
    let before = s
        .metric("tokenhook_jwks_refreshes_total", "result=\"success\"")
        .await;
    s._running.reload_now();
    assert_eventually!(
        10,
        s.metric("tokenhook_jwks_refreshes_total", "result=\"success\"")
            .await
            > before,
        "the reload signal did not reload the JWKS file"
    );
    assert_eq!(
        s.client().review(&t, &[]).await.json()["status"]["authenticated"],
        true
    );
}

#[tokio::test]
async fn hanging_issuer_is_cut_by_the_fetch_timeout_and_counted_as_transient() {
    // An "issuer" that accepts connections and never says a word.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", hang.local_addr().unwrap().port());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((tcp, _)) = hang.accept().await {
            conns.push(tcp);
        }
    });
    let probe = TestServer::start(Opts::default()).await;
    let ca: String = probe
        .ca
        .pem
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    std::fs::write(
        probe.path("authn.yaml"),
        format!("apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n- issuer:\n    url: {url}\n    audiences: [my-app]\n    certificateAuthority: |\n{ca}{MAPPINGS}"),
    )
    .unwrap();
    let s = TestServer::start_in(
        probe,
        Opts {
            extra_toml: "[jwt]\nfetch_timeout_seconds = 3\nmin_refresh_interval_seconds = 0\n\n[[verifiers]]\ntype = \"authentication_config\"\nfile = \"authn.yaml\"\n".into(),
            ..Opts::default()
        },
    )
    .await;
    let (a, k, _) = keypair("RS256", "k1");
    let mut h = jsonwebtoken::Header::new(a);
    h.kid = Some("k1".into());
    let now = tokenhook::clock::Clock::System.now().0;
    let t = jsonwebtoken::encode(
        &h,
        &json!({"iss": url, "aud": "my-app", "sub": "jane", "exp": now + 600}),
        &k,
    )
    .unwrap();
    // Each review waits at most the fetch timeout, then answers "could not check" (503 with
    // Retry-After, which kube-apiserver retries), never "no".
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let r = s.client().review(&t, &[]).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.headers["retry-after"], "1");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
    // While a review waits on the hanging issuer, other tokens are answered: the static
    // token's answer comes back before the waiting review's.
    let waiting = tokio::spawn({
        let (c, t) = (s.client(), t.clone());
        async move { c.review(&t, &[]).await.status }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        s.client().review("bob-token", &[]).await.json()["status"]["authenticated"],
        true
    );
    assert!(
        !waiting.is_finished(),
        "the static token waited for the issuer"
    );
    assert_eq!(waiting.await.unwrap(), 503);
    assert!(
        s.metric("tokenhook_reviews_total", "outcome=\"error\"")
            .await
            >= 2.0
    );
    assert!(
        s.metric("tokenhook_jwks_refreshes_total", "result=\"failure\"")
            .await
            >= 2.0
    );
    held.abort();
}
