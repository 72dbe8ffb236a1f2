//! kube-apiserver's `AuthenticationConfiguration` (`jwt:` authenticators): the types, loading from YAML or JSON, and kube's validation rules.

use std::collections::HashSet;
use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// `apiserver.config.k8s.io/{v1beta1,v1}` `AuthenticationConfiguration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthenticationConfiguration {
    /// `apiserver.config.k8s.io/v1beta1`, `v1alpha1` or `v1`.
    pub api_version: String,
    /// `AuthenticationConfiguration`.
    pub kind: String,
    /// The JWT authenticators.
    #[serde(default)]
    pub jwt: Vec<JwtAuthenticator>,
    /// Anonymous-auth settings: kube-apiserver's business, accepted and ignored here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<serde_json::Value>,
}

/// One `jwt[]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtAuthenticator {
    /// Who issues the tokens and for which audiences.
    pub issuer: Issuer,
    /// Conditions on the token's claims.
    #[serde(default)]
    pub claim_validation_rules: Vec<ClaimValidationRule>,
    /// How claims become a user.
    #[serde(default)]
    pub claim_mappings: ClaimMappings,
    /// Conditions on the mapped user.
    #[serde(default)]
    pub user_validation_rules: Vec<UserValidationRule>,
}

/// `issuer`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Issuer {
    /// Must equal the token's `iss`; https.
    pub url: String,
    /// Where to fetch discovery instead of `<url>/.well-known/openid-configuration`.
    #[serde(
        default,
        rename = "discoveryURL",
        skip_serializing_if = "String::is_empty"
    )]
    pub discovery_url: String,
    /// PEM CA bundle for the issuer's TLS.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate_authority: String,
    /// Acceptable `aud` values.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// `MatchAny` (required with more than one audience).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub audience_match_policy: String,
    /// kube's egress selector: not applicable here; only `""` is accepted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub egress_selector_type: String,
}

/// `claimValidationRules[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimValidationRule {
    /// Claim that must be a string equal to `required_value`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claim: String,
    /// Value for `claim`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub required_value: String,
    /// CEL over `claims` returning bool.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub expression: String,
    /// Logged when `expression` is false.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// `claimMappings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimMappings {
    /// Username.
    #[serde(default)]
    pub username: PrefixedClaimOrExpression,
    /// Groups.
    #[serde(default)]
    pub groups: PrefixedClaimOrExpression,
    /// UID.
    #[serde(default)]
    pub uid: ClaimOrExpression,
    /// Extra.
    #[serde(default)]
    pub extra: Vec<ExtraMapping>,
}

/// A claim with a prefix, or an expression.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixedClaimOrExpression {
    /// Claim name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claim: String,
    /// Prefix (required with `claim`; may be `""`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// CEL over `claims`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub expression: String,
}

/// A claim or an expression.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimOrExpression {
    /// Claim name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claim: String,
    /// CEL over `claims`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub expression: String,
}

/// `extra[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtraMapping {
    /// Domain-prefixed, lowercase key.
    pub key: String,
    /// CEL over `claims` returning a string or a list of strings.
    pub value_expression: String,
}

/// `userValidationRules[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserValidationRule {
    /// CEL over `user` returning bool.
    pub expression: String,
    /// Logged when false.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Why an AuthenticationConfiguration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthnConfigError {
    /// Unreadable.
    #[error("reading {path}: {source}")]
    Read {
        /// Which file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not YAML/JSON of the right shape.
    #[error("parsing {path}: {reason}")]
    Parse {
        /// Which file.
        path: std::path::PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// kube's validation rules failed; every problem is listed.
    #[error("{path} is invalid:\n  - {}", .problems.join("\n  - "))]
    Invalid {
        /// Which file.
        path: std::path::PathBuf,
        /// Problems, each naming its field.
        problems: Vec<String>,
    },
}

/// Parses YAML or JSON text (JSON is YAML).
///
/// # Errors
/// Syntax, unknown fields, or a wrong apiVersion/kind.
pub fn parse(text: &str) -> Result<AuthenticationConfiguration, String> {
    let c: AuthenticationConfiguration =
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    if !matches!(
        c.api_version.as_str(),
        "apiserver.config.k8s.io/v1"
            | "apiserver.config.k8s.io/v1beta1"
            | "apiserver.config.k8s.io/v1alpha1"
    ) {
        return Err(format!(
            "apiVersion {:?} is not apiserver.config.k8s.io/v1, v1beta1 or v1alpha1",
            c.api_version
        ));
    }
    if c.kind != "AuthenticationConfiguration" {
        return Err(format!(
            "kind {:?} is not AuthenticationConfiguration",
            c.kind
        ));
    }
    Ok(c)
}

/// Reads, parses and validates a file.
///
/// # Errors
/// Unreadable, unparsable or invalid.
pub fn load(path: &Path) -> Result<AuthenticationConfiguration, AuthnConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthnConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let c = parse(&text).map_err(|reason| AuthnConfigError::Parse {
        path: path.to_owned(),
        reason,
    })?;
    let problems = validate(&c.jwt, "jwt");
    if !problems.is_empty() {
        return Err(AuthnConfigError::Invalid {
            path: path.to_owned(),
            problems,
        });
    }
    Ok(c)
}

/// Reserved extra-key domains kube refuses.
const RESERVED_EXTRA: &[&str] = &["kubernetes.io", "k8s.io"];

fn https_url_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Some("URL scheme must be https");
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Some("URL must have a host");
    }
    if url.contains('?') {
        return Some("URL must not contain a query");
    }
    if url.contains('#') {
        return Some("URL must not contain a fragment");
    }
    if rest.contains('@') {
        return Some("URL must not contain a username or password");
    }
    None
}

/// kube's structural validation of `jwt` authenticators (CEL expressions are compiled
/// separately, by the verifier). Every problem, each prefixed with its field path.
pub fn validate(jwt: &[JwtAuthenticator], root: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let mut seen = HashSet::new();
    for (i, a) in jwt.iter().enumerate() {
        let p = format!("{root}[{i}]");
        let iss = &a.issuer;
        if iss.url.is_empty() {
            errs.push(format!("{p}.issuer.url: Required value"));
        } else {
            if let Some(why) = https_url_problem(&iss.url) {
                errs.push(format!(
                    "{p}.issuer.url: Invalid value: {:?}: {why}",
                    iss.url
                ));
            }
            if !seen.insert(iss.url.clone()) {
                errs.push(format!("{p}.issuer.url: Duplicate value: {:?}", iss.url));
            }
        }
        if !iss.discovery_url.is_empty() {
            if let Some(why) = https_url_problem(&iss.discovery_url) {
                errs.push(format!(
                    "{p}.issuer.discoveryURL: Invalid value: {:?}: {why}",
                    iss.discovery_url
                ));
            }
            if iss.discovery_url.trim_end_matches('/') == iss.url.trim_end_matches('/') {
                errs.push(format!(
                    "{p}.issuer.discoveryURL: Invalid value: {:?}: discoveryURL must be different from URL",
                    iss.discovery_url
                ));
            }
        }
        if iss.audiences.is_empty() {
            errs.push(format!(
                "{p}.issuer.audiences: Required value: at least one issuer.audiences is required"
            ));
        }
        let mut auds = HashSet::new();
        for (j, aud) in iss.audiences.iter().enumerate() {
            if aud.is_empty() {
                errs.push(format!("{p}.issuer.audiences[{j}]: Required value"));
            } else if !auds.insert(aud) {
                errs.push(format!(
                    "{p}.issuer.audiences[{j}]: Duplicate value: {aud:?}"
                ));
            }
        }
        match (iss.audiences.len(), iss.audience_match_policy.as_str()) {
            (_, "" | "MatchAny") if iss.audiences.len() <= 1 => {}
            (_, "MatchAny") => {}
            (_, "") => errs.push(format!(
                "{p}.issuer.audienceMatchPolicy: Invalid value: \"\": audienceMatchPolicy must be MatchAny for multiple audiences"
            )),
            (_, other) => errs.push(format!(
                "{p}.issuer.audienceMatchPolicy: Unsupported value: {other:?}: supported values: \"MatchAny\""
            )),
        }
        if !iss.egress_selector_type.is_empty() {
            errs.push(format!(
                "{p}.issuer.egressSelectorType: Invalid value: {:?}: egress selection is kube-apiserver's and not supported by tokenhook",
                iss.egress_selector_type
            ));
        }
        if !iss.certificate_authority.is_empty()
            && CertificateDer::pem_slice_iter(iss.certificate_authority.as_bytes())
                .filter_map(Result::ok)
                .next()
                .is_none()
        {
            errs.push(format!(
                "{p}.issuer.certificateAuthority: Invalid value: no PEM certificate found"
            ));
        }

        for (j, r) in a.claim_validation_rules.iter().enumerate() {
            let rp = format!("{p}.claimValidationRules[{j}]");
            match (r.claim.is_empty(), r.expression.is_empty()) {
                (true, true) => errs.push(format!("{rp}: Required value: claim or expression is required")),
                (false, false) => errs.push(format!("{rp}: Invalid value: claim and expression can't both be set")),
                (false, true) if !r.message.is_empty() => {
                    errs.push(format!("{rp}.message: Invalid value: message can't be set when claim is set"))
                }
                (true, false) if !r.required_value.is_empty() => errs.push(format!(
                    "{rp}.requiredValue: Invalid value: requiredValue can't be set when expression is set"
                )),
                _ => {}
            }
        }

        let m = &a.claim_mappings;
        let u = &m.username;
        match (u.claim.is_empty(), u.expression.is_empty()) {
            (true, true) => errs.push(format!("{p}.claimMappings.username: Required value: claim or expression is required")),
            (false, false) => errs.push(format!("{p}.claimMappings.username: Invalid value: claim and expression can't both be set")),
            (false, true) if u.prefix.is_none() => errs.push(format!(
                "{p}.claimMappings.username.prefix: Required value: prefix is required when claim is set. It can be set to an empty string to disable prefixing"
            )),
            (true, false) if u.prefix.is_some() => {
                errs.push(format!("{p}.claimMappings.username.prefix: Invalid value: prefix can't be set when expression is set"))
            }
            _ => {}
        }
        let g = &m.groups;
        match (g.claim.is_empty(), g.expression.is_empty()) {
            (false, false) => errs.push(format!("{p}.claimMappings.groups: Invalid value: claim and expression can't both be set")),
            (false, true) if g.prefix.is_none() => errs.push(format!(
                "{p}.claimMappings.groups.prefix: Required value: prefix is required when claim is set. It can be set to an empty string to disable prefixing"
            )),
            (true, false) if g.prefix.is_some() => {
                errs.push(format!("{p}.claimMappings.groups.prefix: Invalid value: prefix can't be set when expression is set"))
            }
            (true, true) if g.prefix.is_some() => {
                errs.push(format!("{p}.claimMappings.groups.prefix: Invalid value: prefix can't be set when claim is not set"))
            }
            _ => {}
        }
        if !m.uid.claim.is_empty() && !m.uid.expression.is_empty() {
            errs.push(format!(
                "{p}.claimMappings.uid: Invalid value: claim and expression can't both be set"
            ));
        }
        let mut keys = HashSet::new();
        for (j, e) in m.extra.iter().enumerate() {
            let ep = format!("{p}.claimMappings.extra[{j}]");
            if e.key.is_empty() {
                errs.push(format!("{ep}.key: Required value"));
                continue;
            }
            if e.value_expression.is_empty() {
                errs.push(format!(
                    "{ep}.valueExpression: Required value: valueExpression is required"
                ));
            }
            if e.key != e.key.to_lowercase() {
                errs.push(format!(
                    "{ep}.key: Invalid value: {:?}: key must be lowercase",
                    e.key
                ));
            }
            let domain = e.key.split('/').next().unwrap_or("");
            if !e.key.contains('/') || domain.is_empty() || !domain.contains('.') {
                errs.push(format!("{ep}.key: Invalid value: {:?}: must be a domain-prefix path (such as \"acme.io/foo\")", e.key));
            }
            if RESERVED_EXTRA
                .iter()
                .any(|r| domain == *r || domain.ends_with(&format!(".{r}")))
            {
                errs.push(format!("{ep}.key: Invalid value: {:?}: k8s.io, kubernetes.io and their subdomains are reserved for Kubernetes use", e.key));
            }
            if !keys.insert(e.key.clone()) {
                errs.push(format!("{ep}.key: Duplicate value: {:?}", e.key));
            }
        }
        for (j, r) in a.user_validation_rules.iter().enumerate() {
            if r.expression.is_empty() {
                errs.push(format!("{p}.userValidationRules[{j}].expression: Required value: expression is required"));
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
apiVersion: apiserver.config.k8s.io/v1beta1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://example.com
    audiences:
    - my-app
  claimMappings:
    username:
      claim: sub
      prefix: ""
"#;

    #[test]
    fn parses_kube_yaml() {
        let c = parse(DOC).unwrap();
        assert_eq!(c.jwt.len(), 1);
        assert_eq!(c.jwt[0].claim_mappings.username.prefix.as_deref(), Some(""));
        assert!(validate(&c.jwt, "jwt").is_empty());
    }

    #[test]
    fn unknown_fields_and_versions_are_refused() {
        assert!(parse(&DOC.replace("audiences:", "audience:")).is_err());
        assert!(parse(&DOC.replace("v1beta1", "v9")).is_err());
    }

    #[test]
    fn kube_rules() {
        let mut c = parse(DOC).unwrap();
        let mut a = c.jwt.remove(0);
        a.issuer.url = "http://example.com?x".into();
        a.issuer.audiences = vec!["a".into(), "b".into()];
        a.claim_mappings.username.prefix = None;
        a.claim_mappings.extra = vec![ExtraMapping {
            key: "kubernetes.io/foo".into(),
            value_expression: "'x'".into(),
        }];
        let errs = validate(&[a.clone(), a], "jwt");
        let text = errs.join("\n");
        for want in [
            "jwt[0].issuer.url: Invalid value: \"http://example.com?x\": URL scheme must be https",
            "jwt[1].issuer.url: Duplicate value",
            "audienceMatchPolicy must be MatchAny for multiple audiences",
            "jwt[0].claimMappings.username.prefix: Required value",
            "reserved for Kubernetes use",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
