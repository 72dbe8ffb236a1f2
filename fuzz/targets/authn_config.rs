//! `verify::authn_config::{parse, validate}` (kube AuthenticationConfiguration, YAML or
//! JSON), then every CEL expression compiled the way the jwt verifier compiles it and, when
//! it compiles, evaluated against fixed claims.

use std::sync::OnceLock;

use serde_json::{Value, json};
use tokenhook::verify::authn_config;
use tokenhook::verify::cel::{CelEnv, Expr};

struct Fixture {
    cel: CelEnv,
    claims: Value,
    user: Value,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        cel: CelEnv::new().expect("CEL environment"),
        claims: json!({
            "iss": "https://issuer.example", "sub": "1234", "aud": ["kubernetes"],
            "exp": 1700000600, "iat": 1700000000, "email": "a@example.com",
            "email_verified": true, "groups": ["dev", "ops"], "tenant": "t1",
            "nested": {"list": [1, 2.5, "x", null, {"k": "v"}]}
        }),
        user: json!({
            "username": "alice", "uid": "42", "groups": ["dev"],
            "extra": {"example.com/tenant": ["t1"]}
        }),
    })
}

/// One input, from the fuzzer (fuzz/fuzz_targets/) or the corpus replay (tests/it/fuzz_corpus.rs).
pub fn run(data: &[u8]) {
    // The loader reads the file with read_to_string: non-UTF-8 never reaches `parse`.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = authn_config::parse(text) else {
        return;
    };
    let _ = authn_config::validate(&c.jwt, "jwt");
    let f = fixture();
    let claims = [("claims", &f.claims)];
    let user = [("user", &f.user)];
    for a in c.jwt.iter().take(8) {
        let m = &a.claim_mappings;
        let mut exprs: Vec<(&str, &[(&str, &Value)])> = vec![
            (&m.username.expression, &claims),
            (&m.groups.expression, &claims),
            (&m.uid.expression, &claims),
        ];
        exprs.extend(
            a.claim_validation_rules
                .iter()
                .map(|r| (r.expression.as_str(), &claims[..])),
        );
        exprs.extend(
            m.extra
                .iter()
                .map(|e| (e.value_expression.as_str(), &claims[..])),
        );
        exprs.extend(
            a.user_validation_rules
                .iter()
                .map(|r| (r.expression.as_str(), &user[..])),
        );
        for (src, vars) in exprs.into_iter().filter(|(s, _)| !s.is_empty()).take(16) {
            let names: Vec<&str> = vars.iter().map(|(n, _)| *n).collect();
            if let Ok(e) = Expr::compile(&f.cel, src, &names) {
                let _ = e.eval(&f.cel, vars);
            }
        }
    }
}
