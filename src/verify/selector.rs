//! Which tokens a verifier that calls out (introspection, an upstream TokenReview) is asked about: a prefix, a regular expression, a JWT `iss`, or (default) anything but a JWT of a configured issuer.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use super::oidc::Jwt;
use super::{Token, split_jwt};

/// The selector as configured: at most one of the three keys; none means the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorConfig {
    /// Tokens starting with this (e.g. `k8s-aws-v1.`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_prefix: Option<String>,
    /// Tokens matching this regular expression (Rust `regex` syntax, unanchored unless it
    /// says `^…$`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_regex: Option<String>,
    /// JWTs whose (unverified) `iss` is exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_issuer: Option<String>,
}

impl SelectorConfig {
    /// Problems, each prefixed with `path`.
    pub fn validate(&self, path: &str) -> Vec<String> {
        let mut errs = Vec::new();
        let set = [
            self.token_prefix.is_some(),
            self.token_regex.is_some(),
            self.token_issuer.is_some(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            errs.push(format!(
                "{path}: set at most one of token_prefix, token_regex and token_issuer"
            ));
        }
        if self.token_prefix.as_deref() == Some("") {
            errs.push(format!(
                "{path}.token_prefix: empty (leave it out to use the default selector)"
            ));
        }
        if self.token_issuer.as_deref() == Some("") {
            errs.push(format!("{path}.token_issuer: empty"));
        }
        if let Some(r) = &self.token_regex
            && let Err(e) = regex::Regex::new(r)
        {
            errs.push(format!(
                "{path}.token_regex: {r:?} is not a regular expression: {e}"
            ));
        }
        errs
    }

    /// A description for logs and `/readyz?verbose`.
    pub fn describe(&self) -> String {
        match (&self.token_prefix, &self.token_regex, &self.token_issuer) {
            (Some(p), _, _) => format!("prefix {p:?}"),
            (_, Some(r), _) => format!("regex {r:?}"),
            (_, _, Some(i)) => format!("JWT iss {i:?}"),
            _ => "not a JWT of a configured issuer".into(),
        }
    }
}

/// The JWT issuers configured in the chain, known once the chain is built (the default
/// selector leaves their tokens alone). Clones share one set.
#[derive(Clone, Default)]
pub struct KnownIssuers(Arc<OnceLock<Vec<Jwt>>>);

impl KnownIssuers {
    /// Fills in the chain's JWT verifiers (once; later calls are ignored).
    pub fn set(&self, jwt: Vec<Jwt>) {
        let _ = self.0.set(jwt);
    }

    fn contains(&self, iss: &str) -> bool {
        self.0
            .get()
            .is_some_and(|all| all.iter().any(|j| j.has_issuer(iss)))
    }
}

/// A compiled selector.
#[derive(Clone)]
pub enum Selector {
    /// Tokens with this prefix.
    Prefix(String),
    /// Tokens matching.
    Regex(regex::Regex),
    /// JWTs with this `iss`.
    Issuer(String),
    /// Anything but a JWT whose `iss` is a configured issuer.
    NotConfiguredJwt(KnownIssuers),
}

impl Selector {
    /// Compiles `c` (already validated).
    ///
    /// # Errors
    /// A regular expression that does not compile.
    pub fn build(c: &SelectorConfig, known: &KnownIssuers) -> Result<Self, String> {
        Ok(match (&c.token_prefix, &c.token_regex, &c.token_issuer) {
            (Some(p), _, _) => Selector::Prefix(p.clone()),
            (_, Some(r), _) => Selector::Regex(regex::Regex::new(r).map_err(|e| e.to_string())?),
            (_, _, Some(i)) => Selector::Issuer(i.clone()),
            _ => Selector::NotConfiguredJwt(known.clone()),
        })
    }

    /// Whether the verifier should be asked about `token`.
    pub fn matches(&self, token: &Token) -> bool {
        let raw = token.expose();
        match self {
            Selector::Prefix(p) => raw.starts_with(p.as_str()),
            Selector::Regex(r) => r.is_match(raw),
            Selector::Issuer(i) => split_jwt(raw).and_then(|j| j.iss).as_deref() == Some(i),
            Selector::NotConfiguredJwt(known) => match split_jwt(raw).and_then(|j| j.iss) {
                Some(iss) => !known.contains(&iss),
                None => true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn jwt(iss: &str) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.sig",
            b(r#"{"alg":"RS256"}"#),
            b(&format!(r#"{{"iss":"{iss}"}}"#))
        )
    }

    #[test]
    fn selectors_pick_their_tokens() {
        let known = KnownIssuers::default();
        let t = |s: &str| Token::new(s.into());
        let sel = |c: SelectorConfig| Selector::build(&c, &known).unwrap();
        let prefix = sel(SelectorConfig {
            token_prefix: Some("k8s-aws-v1.".into()),
            ..Default::default()
        });
        assert!(prefix.matches(&t("k8s-aws-v1.abc")));
        assert!(!prefix.matches(&t("abc")));
        let re = sel(SelectorConfig {
            token_regex: Some("^opaque-[0-9]+$".into()),
            ..Default::default()
        });
        assert!(re.matches(&t("opaque-42")));
        assert!(!re.matches(&t("opaque-x")));
        let iss = sel(SelectorConfig {
            token_issuer: Some("https://b.example".into()),
            ..Default::default()
        });
        assert!(iss.matches(&t(&jwt("https://b.example"))));
        assert!(!iss.matches(&t(&jwt("https://a.example"))));
        assert!(!iss.matches(&t("opaque")));
        let default = sel(SelectorConfig::default());
        assert!(default.matches(&t("opaque")));
        assert!(default.matches(&t(&jwt("https://unknown.example"))));
    }

    #[test]
    fn at_most_one_key_and_valid_regex() {
        let c = SelectorConfig {
            token_prefix: Some("a".into()),
            token_regex: Some("(".into()),
            token_issuer: None,
        };
        let errs = c.validate("verifiers[0]");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("at most one"));
        assert!(errs[1].contains("verifiers[0].token_regex"));
    }
}
