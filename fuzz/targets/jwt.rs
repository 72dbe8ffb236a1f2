//! The JWT front end and the whole verifier chain: `verify::split_jwt` / `JwtParts::header`,
//! then `verify::Chain` over a static verifier (a hashed, unguessable token), the
//! `service_account` verifier (`mint::issuer::Issuer::verify`) and the `jwt` verifier
//! (`verify::oidc`, two issuers from deploy/apiserver/authentication-config.yaml with inline
//! keys), at a fixed time.
//!
//! The first input byte picks the mode:
//! * 0: the rest is the token, as is.
//! * 1: the rest is `HEADER\nPAYLOAD\nSIGNATURE`, each base64url-encoded here (so the fuzzer
//!   works on JSON, not base64); `$KID` in the header is replaced by the real key id.
//! * 2: like 1 without a signature: the harness signs with the issuers' real key, so the
//!   claim checks, CEL rules and mappings after the signature are fuzzed too.
//! * 3: the rest is the payload, signed under the kube-style header `{"alg":"ES256","kid":…}`.
//!
//! Invariants: in modes 0 and 1 nothing may authenticate (no key is known to the input). In
//! modes 2 and 3 a token may authenticate, but only with claims that pass the checks
//! (routable `iss`, unexpired `exp`, matching `aud`, a username); and the same token with one
//! signature bit flipped never does.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use tokenhook::clock::UnixTime;
use tokenhook::metrics::Metrics;
use tokenhook::mint::accounts::{AccountEntry, Registry};
use tokenhook::mint::issuer::{Issuer, IssuerConfig};
use tokenhook::mint::keys::{Alg, KeySet, generate_pem};
use tokenhook::mint::revocations::Revocations;
use tokenhook::verify::cel::CelEnv;
use tokenhook::verify::oidc::{Jwt, JwtIssuer, JwtSettings, KeyOverride};
use tokenhook::verify::static_file::{StaticFile, TokenTable};
use tokenhook::verify::{
    AnyVerifier, Chain, Outcome, ServiceAccount, Token, authn_config, split_jwt,
};

const NOW: UnixTime = UnixTime(1_700_000_000);
const LEEWAY: u64 = 60;
const SA_ISSUER: &str = "https://tokenhook.example";
const OIDC_ISSUERS: &[&str] = &["https://issuer.example", "https://gh.example"];

/// deploy/apiserver/authentication-config.yaml with the issuers renamed.
const AUTHN: &str = r#"
apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://issuer.example
    audiences: [kubernetes, kubectl]
    audienceMatchPolicy: MatchAny
  claimValidationRules:
  - expression: 'claims.?email_verified.orValue(true) == true'
    message: the email address must be verified
  claimMappings:
    username:
      expression: '"oidc:" + claims.email'
    groups:
      claim: groups
      prefix: "oidc:"
    uid:
      claim: sub
    extra:
    - key: example.com/tenant
      valueExpression: 'has(claims.tenant) ? claims.tenant : ""'
  userValidationRules:
  - expression: "!user.username.startsWith('system:')"
    message: 'username cannot use the reserved system: prefix'
  - expression: "user.groups.all(group, !group.startsWith('system:'))"
    message: 'groups cannot use the reserved system: prefix'
- issuer:
    url: https://gh.example
    audiences: [https://kubernetes.example.com]
  claimValidationRules:
  - claim: repository_owner
    requiredValue: example-org
  claimMappings:
    username:
      expression: '"github:" + claims.repository + ":" + claims.ref'
    groups:
      expression: '["github:" + claims.repository_owner]'
    uid:
      claim: sub
"#;

struct Fixture {
    rt: tokio::runtime::Runtime,
    chain: Chain,
    keys: KeySet,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let metrics = Metrics::new().expect("metrics");
        // One ES256 key, fresh per process, signs for both kinds of issuer.
        let pem = generate_pem(Alg::ES256).expect("key");
        let path = std::env::temp_dir().join(format!("tokenhook-fuzz-{}.pem", std::process::id()));
        std::fs::write(&path, &pem).expect("write key");
        let load = || KeySet::load(&path, &[]).expect("load key");
        let (sa_keys, keys) = (load(), load());
        let _ = std::fs::remove_file(&path);
        let jwks = keys.jwks();

        let account = AccountEntry {
            namespace: "default".into(),
            name: "builder".into(),
            uid: Some("uid-builder".into()),
            pods: vec![],
            secrets: vec![],
            nodes: vec![],
        };
        let issuer = Issuer::new(
            IssuerConfig {
                issuer: SA_ISSUER.into(),
                jwks_uri: format!("{SA_ISSUER}/openid/v1/jwks"),
                registry: Registry::new(&[account]).expect("registry").into(),
                signing_key_file: path.clone(),
                verify_key_files: vec![],
            },
            sa_keys,
            Revocations::parse("jti=revoked-jti\n").expect("revocations"),
        );

        let cel = CelEnv::new().expect("CEL");
        let settings = JwtSettings {
            min_refresh_interval: Duration::from_secs(3600),
            ..JwtSettings::default()
        };
        let config = authn_config::parse(AUTHN).expect("authentication config");
        let issuers: Vec<JwtIssuer> = config
            .jwt
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let over = KeyOverride {
                    jwks: Some(jwks.clone()),
                    ..KeyOverride::default()
                };
                JwtIssuer::build(a, &over, &format!("jwt[{i}]"), &settings, &cel, &metrics)
                    .expect("issuer builds")
            })
            .collect();
        let jwt = Jwt::new(issuers, Arc::new(cel), "jwt");
        for i in jwt.issuers() {
            rt.block_on(i.keys.refresh()).expect("inline keys load");
        }

        // A hashed static token nobody knows: the chain passes through the static verifier.
        let secret = URL_SAFE_NO_PAD.encode(generate_pem(Alg::EdDSA).expect("entropy"));
        let row = format!(
            "{},someone,1\n",
            tokenhook::verify::static_file::hash_entry(&secret)
        );
        let table = TokenTable::parse(row.as_bytes()).expect("token table");

        let chain = Chain::new(
            vec![
                AnyVerifier::Static(StaticFile::new(table)),
                AnyVerifier::ServiceAccount(ServiceAccount::new(issuer)),
                AnyVerifier::Jwt(jwt),
            ],
            metrics,
        );
        Fixture { rt, chain, keys }
    })
}

fn check(f: &Fixture, token: String) -> Option<(Outcome, &'static str)> {
    // The unverified front end on its own.
    if let Some(parts) = split_jwt(&token) {
        let _ = parts.header::<Value>();
    }
    let d = f.rt.block_on(f.chain.verify(&Token::new(token), NOW));
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("chain: {d:?}");
    }
    let d = d.ok()?;
    Some((d.outcome, d.verifier))
}

fn kid(f: &Fixture) -> &str {
    &f.keys.signing.public.kid
}

/// `HEADER\nPAYLOAD[\nSIGNATURE]` → the three parts, `$KID` replaced.
fn parts<'a>(f: &Fixture, rest: &'a [u8]) -> (Vec<u8>, &'a [u8], &'a [u8]) {
    let mut it = rest.splitn(3, |b| *b == b'\n');
    let header = it.next().unwrap_or_default();
    let payload = it.next().unwrap_or_default();
    let sig = it.next().unwrap_or_default();
    let header = String::from_utf8_lossy(header)
        .replace("$KID", kid(f))
        .into_bytes();
    (header, payload, sig)
}

fn signing_input(header: &[u8], payload: &[u8]) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

fn assert_not_authenticated(r: Option<(Outcome, &'static str)>, what: &str) {
    if let Some((Outcome::Authenticated(id), v)) = r {
        panic!("{what} authenticated via {v}: {id:?}");
    }
}

/// A token the harness signed authenticated: its claims must justify it.
fn assert_justified(payload: &[u8], verifier: &str) {
    // Members the verifiers skip are not checked for UTF-8 by serde_json (nor by Go's
    // encoding/json, which kube uses); read the payload leniently here.
    let claims: Map<String, Value> = serde_json::from_slice(payload)
        .or_else(|_| serde_json::from_str(&String::from_utf8_lossy(payload)))
        .expect("an authenticated payload is a JSON object");
    let iss = claims.get("iss").and_then(Value::as_str).expect("iss");
    let exp = claims.get("exp").and_then(Value::as_f64).expect("exp");
    assert!(
        (NOW.0 as f64) < exp + LEEWAY as f64,
        "expired token accepted: exp {exp}"
    );
    match verifier {
        "service_account" => assert_eq!(iss, SA_ISSUER),
        "jwt" => {
            assert!(OIDC_ISSUERS.contains(&iss), "iss {iss}");
            let want: &[&str] = if iss == OIDC_ISSUERS[0] {
                &["kubernetes", "kubectl"]
            } else {
                &["https://kubernetes.example.com"]
            };
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => want.contains(&a.as_str()),
                Some(Value::Array(a)) => a
                    .iter()
                    .any(|a| a.as_str().is_some_and(|a| want.contains(&a))),
                _ => false,
            };
            assert!(ok, "aud {:?} accepted for {iss}", claims.get("aud"));
        }
        other => panic!("a signed JWT authenticated via {other}"),
    }
}

/// One input, from the fuzzer (fuzz/fuzz_targets/) or the corpus replay (tests/it/fuzz_corpus.rs).
pub fn run(data: &[u8]) {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let token = String::from_utf8_lossy(rest).into_owned();
            assert_not_authenticated(check(f, token), "a raw token");
        }
        1 => {
            let (header, payload, sig) = parts(f, rest);
            let token = format!(
                "{}.{}",
                signing_input(&header, payload),
                URL_SAFE_NO_PAD.encode(sig)
            );
            assert_not_authenticated(check(f, token), "an unsigned token");
        }
        m => {
            let (header, payload) = if m == 2 {
                let (h, p, _) = parts(f, rest);
                (h, p)
            } else {
                let h = format!(r#"{{"alg":"ES256","kid":"{}"}}"#, kid(f)).into_bytes();
                (h, rest)
            };
            let input = signing_input(&header, payload);
            let Ok(mut sig) = f.keys.signing.signer.sign(input.as_bytes()) else {
                return;
            };
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
            if let Some((Outcome::Authenticated(id), v)) = check(f, token) {
                assert!(!id.user.username.is_empty(), "empty username");
                assert_justified(payload, v);
            }
            if let Some(b) = sig.first_mut() {
                *b ^= 1;
            }
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
            assert_not_authenticated(check(f, token), "a token with a flipped signature bit");
        }
    }
}
