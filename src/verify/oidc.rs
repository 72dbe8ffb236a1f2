//! The `jwt` verifier: OIDC/JWT issuers with kube's AuthenticationConfiguration semantics, routed by the token's unverified `iss`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::authn_config::{JwtAuthenticator, validate};
use super::cel::{CelEnv, Expr};
use super::jwks::{ALLOWED_ALGS, Fresh, IssuerKeys, KeySet, KeySource, Stale};
use super::{Identity, Outcome, RejectReason, Rejection, Token, Verifier, VerifyError};
use crate::clock::UnixTime;
use crate::k8s::token_review::UserInfo;
use crate::metrics::Metrics;
use crate::outbound::HttpsClient;

/// kube's extra key for the token id.
const CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// Where keys come from when not from discovery (tokenhook's additions to kube's schema).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeyOverride {
    /// A JWKS URL.
    pub jwks_url: Option<String>,
    /// A local JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// Inline JWKS.
    pub jwks: Option<Value>,
}

/// Settings that apply to every issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// Clock skew tolerated on `exp`, `nbf`, `iat`.
    pub leeway: Duration,
    /// Periodic JWKS refresh.
    pub refresh_interval: Duration,
    /// Least time from the end of one JWKS fetch to the start of a fetch for a token that
    /// no key verifies (unknown `kid`); such tokens arriving sooner are "could not check".
    pub min_refresh_interval: Duration,
    /// Timeout of one fetch.
    pub fetch_timeout: Duration,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            leeway: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(600),
            min_refresh_interval: Duration::from_secs(1),
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

enum Mapping {
    Claim { claim: String, prefix: String },
    Expr(Expr),
}

enum ClaimRule {
    Required { claim: String, value: String },
    Expr { expr: Expr, message: String },
}

/// Claims to a user, as kube's `claimValidationRules`, `claimMappings` and
/// `userValidationRules` say, compiled once. Shared by JWT issuers and token introspection
/// (whose response members are the claims).
pub struct ClaimMapper {
    claim_rules: Vec<ClaimRule>,
    username: Mapping,
    username_from_email: bool,
    groups: Option<Mapping>,
    uid: Option<Mapping>,
    extra: Vec<(String, Mapping)>,
    user_rules: Vec<(Expr, String)>,
}

/// A rejection as the `Err` of a mapping.
fn no<T>(reason: RejectReason, detail: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection {
        reason,
        detail: detail.into(),
    })
}

impl ClaimMapper {
    /// Compiles the rules and mappings; problems go to `errs`, named by `path` and
    /// followed by `context`. `None` when something did not compile.
    #[allow(clippy::type_complexity)] // the local mapping helper's compile callback
    pub fn compile(
        claim_validation_rules: &[super::authn_config::ClaimValidationRule],
        m: &super::authn_config::ClaimMappings,
        user_validation_rules: &[super::authn_config::UserValidationRule],
        path: &str,
        context: &str,
        cel: &CelEnv,
        errs: &mut Vec<String>,
    ) -> Option<Self> {
        let mut compile =
            |src: &str, field: String, vars: &[&str]| match Expr::compile(cel, src, vars) {
                Ok(e) => Some(e),
                Err(e) => {
                    errs.push(format!(
                        "{path}.{field}: Invalid value: {src:?}: {e}{context}"
                    ));
                    None
                }
            };
        let mapping =
            |c: &str,
             p: &Option<String>,
             e: &str,
             field: &str,
             compile: &mut dyn FnMut(&str, String, &[&str]) -> Option<Expr>| {
                if !e.is_empty() {
                    compile(e, format!("claimMappings.{field}.expression"), &["claims"])
                        .map(Mapping::Expr)
                } else if !c.is_empty() {
                    Some(Mapping::Claim {
                        claim: c.to_owned(),
                        prefix: p.clone().unwrap_or_default(),
                    })
                } else {
                    None
                }
            };
        let username = mapping(
            &m.username.claim,
            &m.username.prefix,
            &m.username.expression,
            "username",
            &mut compile,
        );
        let groups = mapping(
            &m.groups.claim,
            &m.groups.prefix,
            &m.groups.expression,
            "groups",
            &mut compile,
        );
        let uid = mapping(
            &m.uid.claim,
            &Some(String::new()),
            &m.uid.expression,
            "uid",
            &mut compile,
        );
        let mut claim_rules = Vec::new();
        for (i, r) in claim_validation_rules.iter().enumerate() {
            if !r.expression.is_empty() {
                if let Some(expr) = compile(
                    &r.expression,
                    format!("claimValidationRules[{i}].expression"),
                    &["claims"],
                ) {
                    claim_rules.push(ClaimRule::Expr {
                        expr,
                        message: r.message.clone(),
                    });
                }
            } else {
                claim_rules.push(ClaimRule::Required {
                    claim: r.claim.clone(),
                    value: r.required_value.clone(),
                });
            }
        }
        let mut extra = Vec::new();
        for (i, e) in m.extra.iter().enumerate() {
            if let Some(x) = compile(
                &e.value_expression,
                format!("claimMappings.extra[{i}].valueExpression"),
                &["claims"],
            ) {
                extra.push((e.key.clone(), Mapping::Expr(x)));
            }
        }
        let mut user_rules = Vec::new();
        for (i, r) in user_validation_rules.iter().enumerate() {
            if let Some(x) = compile(
                &r.expression,
                format!("userValidationRules[{i}].expression"),
                &["user"],
            ) {
                user_rules.push((x, r.message.clone()));
            }
        }
        // kube: a username built from claims.email by expression must be paired with a
        // check of claims.email_verified somewhere.
        let uses_verified = |e: &str| e.contains("email_verified");
        let without_verified = m.username.expression.replace("email_verified", "");
        let uses_email = ["claims.email", "claims.?email"]
            .iter()
            .any(|p| without_verified.contains(p));
        if uses_email && !uses_verified(&m.username.expression) {
            let checked = claim_validation_rules
                .iter()
                .any(|r| uses_verified(&r.expression))
                || m.extra.iter().any(|e| uses_verified(&e.value_expression));
            if !checked {
                errs.push(format!(
                    "{path}.claimMappings.username.expression: Invalid value: {:?}: claims.email_verified must be used in claimMappings.username.expression or claimMappings.extra[*].valueExpression or claimValidationRules[*].expression when claims.email is used in claimMappings.username.expression",
                    m.username.expression
                ));
            }
        }
        Some(ClaimMapper {
            claim_rules,
            username_from_email: m.username.claim == "email",
            username: username?,
            groups,
            uid,
            extra,
            user_rules,
        })
    }

    /// Checks the claim rules, maps the user and checks the user rules.
    ///
    /// # Errors
    /// The rejection, when a rule fails or a mapping does not give what it must.
    pub fn map(&self, claims_v: &Value, cel: &CelEnv) -> Result<UserInfo, Rejection> {
        for r in &self.claim_rules {
            match r {
                ClaimRule::Required { claim, value } => {
                    if claims_v.get(claim).and_then(Value::as_str) != Some(value.as_str()) {
                        return no(
                            RejectReason::ClaimRule,
                            format!("claim rule \"{claim}\" failed: expected {value:?}"),
                        );
                    }
                }
                ClaimRule::Expr { expr, message } => {
                    if let Err(o) =
                        check_rule(expr, cel, &[("claims", claims_v)], "claim rule", message)
                    {
                        return no(RejectReason::ClaimRule, o);
                    }
                }
            }
        }
        if self.username_from_email
            && let Some(v) = claims_v.get("email_verified")
            && v != &Value::Bool(true)
        {
            return no(RejectReason::ClaimRule, "email not verified");
        }
        let eval_strings = |m: &Mapping, what: &str| -> Result<Vec<String>, String> {
            match m {
                Mapping::Claim { claim, prefix } => match claims_v.get(claim) {
                    None | Some(Value::Null) => Ok(vec![]),
                    Some(Value::String(s)) => Ok(vec![format!("{prefix}{s}")]),
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .map(|s| format!("{prefix}{s}"))
                                .ok_or_else(|| format!("{what} claim {claim:?} holds a non-string"))
                        })
                        .collect(),
                    Some(_) => Err(format!("{what} claim {claim:?} is not a string")),
                },
                Mapping::Expr(e) => match e.eval(cel, &[("claims", claims_v)]) {
                    Ok(Value::String(s)) => Ok(vec![s]),
                    Ok(Value::Array(a)) => a
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_owned)
                                .ok_or_else(|| format!("{what} expression returned a non-string"))
                        })
                        .collect(),
                    Ok(Value::Null) => Ok(vec![]),
                    Ok(other) => Err(format!("{what} expression returned {other}, not a string")),
                    Err(err) => Err(format!("{what} expression \"{}\": {err}", e.source)),
                },
            }
        };
        let one = |m: &Mapping, what: &str| -> Result<String, String> {
            let mut v = eval_strings(m, what)?;
            if v.len() > 1 {
                return Err(format!("{what} must be a single string"));
            }
            Ok(v.pop().unwrap_or_default())
        };
        let username = match one(&self.username, "username") {
            Ok(u) if !u.is_empty() => u,
            Ok(_) => return no(RejectReason::ClaimRule, "username is empty"),
            Err(e) => return no(RejectReason::ClaimRule, e),
        };
        let groups = match self.groups.as_ref().map(|g| eval_strings(g, "groups")) {
            None => vec![],
            Some(Ok(g)) => g,
            Some(Err(e)) => return no(RejectReason::ClaimRule, e),
        };
        let uid = match self.uid.as_ref().map(|u| one(u, "uid")) {
            None => String::new(),
            Some(Ok(u)) => u,
            Some(Err(e)) => return no(RejectReason::ClaimRule, e),
        };
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, e) in &self.extra {
            match eval_strings(e, &format!("extra {key}")) {
                Ok(v) => {
                    let v: Vec<String> = v.into_iter().filter(|s| !s.is_empty()).collect();
                    if !v.is_empty() {
                        extra.insert(key.clone(), v);
                    }
                }
                Err(err) => return no(RejectReason::ClaimRule, err),
            }
        }
        if let Some(Value::String(jti)) = claims_v.get("jti")
            && !jti.is_empty()
        {
            extra.insert(CREDENTIAL_ID.into(), vec![format!("JTI={jti}")]);
        }
        let user = UserInfo {
            username,
            uid,
            groups,
            extra,
        };
        if !self.user_rules.is_empty() {
            let user_v = json!({"username": user.username, "uid": user.uid, "groups": user.groups, "extra": user.extra});
            for (expr, message) in &self.user_rules {
                if let Err(o) = check_rule(expr, cel, &[("user", &user_v)], "user rule", message) {
                    return no(RejectReason::ClaimRule, o);
                }
            }
        }
        Ok(user)
    }
}

/// One issuer, compiled.
pub struct JwtIssuer {
    /// The issuer URL (`iss`).
    pub url: String,
    audiences: Vec<String>,
    /// Its keys.
    pub keys: Arc<IssuerKeys>,
    mapper: ClaimMapper,
    leeway: u64,
}

/// Evaluates a validation rule (`what` names it in the log): true passes; false, a
/// non-bool or an evaluation error fails with the reason.
fn check_rule(
    expr: &Expr,
    cel: &CelEnv,
    vars: &[(&str, &Value)],
    what: &str,
    message: &str,
) -> Result<(), String> {
    let why = match expr.eval(cel, vars) {
        Ok(Value::Bool(true)) => return Ok(()),
        Ok(Value::Bool(false)) => message.to_owned(),
        Ok(other) => format!("returned {other}, not a bool"),
        Err(e) => e,
    };
    Err(format!("{what} \"{}\" failed: {why}", expr.source))
}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Outcome {
    Outcome::Rejected(Rejection {
        reason,
        detail: detail.into(),
    })
}

impl JwtIssuer {
    /// Compiles one authenticator. `path` names it in errors (`jwt[0]`).
    #[allow(clippy::type_complexity)] // the local mapping helper's compile callback
    ///
    /// # Errors
    /// Every problem: kube's structural rules, CEL that does not compile, an unusable CA
    /// or key override.
    pub fn build(
        a: &JwtAuthenticator,
        keys_override: &KeyOverride,
        path: &str,
        settings: &JwtSettings,
        cel: &CelEnv,
        metrics: &Metrics,
    ) -> Result<Self, Vec<String>> {
        let mut errs = validate(std::slice::from_ref(a), "jwt")
            .into_iter()
            .map(|e| e.replacen("jwt[0]", path, 1))
            .collect::<Vec<_>>();
        let mapper = ClaimMapper::compile(
            &a.claim_validation_rules,
            &a.claim_mappings,
            &a.user_validation_rules,
            path,
            &format!(" (issuer {})", a.issuer.url),
            cel,
            &mut errs,
        );
        let ca = (!a.issuer.certificate_authority.is_empty())
            .then_some(a.issuer.certificate_authority.as_str());
        let ca_text = a.issuer.certificate_authority.clone();
        let client = HttpsClient::new(ca, settings.fetch_timeout)
            .map_err(|e| errs.push(format!("{path}.issuer.certificateAuthority: {e}")))
            .ok();
        let source = match (keys_override, a.issuer.discovery_url.is_empty()) {
            (KeyOverride { jwks: Some(v), .. }, _) => KeySource::Inline(v.clone()),
            (
                KeyOverride {
                    jwks_file: Some(p), ..
                },
                _,
            ) => KeySource::File(p.clone()),
            (
                KeyOverride {
                    jwks_url: Some(u), ..
                },
                _,
            ) => KeySource::Url(u.clone()),
            (_, true) => KeySource::Discovery {
                url: format!(
                    "{}/.well-known/openid-configuration",
                    a.issuer.url.trim_end_matches('/')
                ),
                issuer: a.issuer.url.clone(),
            },
            (_, false) => KeySource::Discovery {
                url: a.issuer.discovery_url.clone(),
                issuer: a.issuer.url.clone(),
            },
        };
        if let KeySource::Url(u) = &source
            && !u.starts_with("https://")
        {
            errs.push(format!("{path}.jwks_url: {u:?} must be an https URL"));
        }
        match (errs.is_empty(), mapper, client) {
            (true, Some(mapper), Some(client)) => Ok(JwtIssuer {
                url: a.issuer.url.clone(),
                audiences: a.issuer.audiences.clone(),
                keys: IssuerKeys::new(
                    a.issuer.url.clone(),
                    source,
                    ca_text,
                    client,
                    settings.min_refresh_interval,
                    metrics.clone(),
                ),
                mapper,
                leeway: settings.leeway.as_secs(),
            }),
            _ => Err(errs),
        }
    }

    async fn verify(
        &self,
        token: &str,
        header: &Header,
        payload: &[u8],
        cel: &CelEnv,
        now: UnixTime,
    ) -> Result<Outcome, VerifyError> {
        let (signing_input, signature) = match token.rsplit_once('.') {
            Some((input, sig)) => (input, URL_SAFE_NO_PAD.decode(sig).unwrap_or_default()),
            None => (token, Vec::new()),
        };
        let (kid, alg) = (header.kid.as_deref(), header.alg.as_str());
        // kube (go-oidc) tries every key with the token's kid, or every key when it has
        // none, and refetches when none verifies; so does `verify_fresh`.
        let check = |set: &KeySet| {
            let mut candidates = set.candidates(kid, alg).peekable();
            if candidates.peek().is_none() {
                Err(RejectReason::UnknownKey)
            } else if candidates.any(|k| k.verify(alg, signing_input.as_bytes(), &signature)) {
                Ok(())
            } else {
                Err(RejectReason::BadSignature)
            }
        };
        match self.keys.verify_fresh(check).await {
            Ok(Fresh::Verified(())) => {}
            Ok(Fresh::Refused(RejectReason::UnknownKey)) => {
                return Ok(reject(
                    RejectReason::UnknownKey,
                    format!("no key for kid {kid:?} and alg {alg}, even after refetching"),
                ));
            }
            Ok(Fresh::Refused(reason)) => {
                return Ok(reject(reason, "signature does not verify"));
            }
            Err(e) => {
                let why = match &e {
                    Stale::Fetch(f) => format!("{e}: {f}"),
                    Stale::RateLimited(_) => e.to_string(),
                };
                let reason = if self.keys.current().is_some() {
                    format!("no key verifies the token (kid {kid:?}) and {why}")
                } else {
                    format!("no signing keys could be loaded yet ({why})")
                };
                return Err(VerifyError::Unavailable {
                    verifier: format!("jwt issuer {}", self.url),
                    reason,
                });
            }
        }
        let claims: Map<String, Value> = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(_) => {
                return Ok(reject(
                    RejectReason::Malformed,
                    "payload is not a JSON object",
                ));
            }
        };
        Ok(self.check(claims, cel, now))
    }

    fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|f| *f >= 0.0)
                .map(|f| Some(f as u64))
                .ok_or_else(|| format!("{name} is not a valid time")),
            Some(_) => Err(format!("{name} is not a number")),
        }
    }

    fn check(&self, claims: Map<String, Value>, cel: &CelEnv, now: UnixTime) -> Outcome {
        // iss matched when routing; audiences (MatchAny), then times.
        let auds = aud_values(&claims);
        if !auds.iter().any(|a| self.audiences.iter().any(|c| c == a)) {
            return reject(
                RejectReason::AudienceMismatch,
                format!("aud {auds:?} not in {:?}", self.audiences),
            );
        }
        let (exp, nbf, iat) = match (
            Self::time_claim(&claims, "exp"),
            Self::time_claim(&claims, "nbf"),
            Self::time_claim(&claims, "iat"),
        ) {
            (Ok(e), Ok(n), Ok(i)) => (e, n, i),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return reject(RejectReason::Malformed, e);
            }
        };
        let Some(exp) = exp else {
            return reject(RejectReason::Malformed, "no exp claim");
        };
        if now.0 >= exp.saturating_add(self.leeway) {
            return reject(RejectReason::Expired, format!("expired at {exp}"));
        }
        if nbf.is_some_and(|n| n > now.0.saturating_add(self.leeway)) {
            return reject(
                RejectReason::NotYetValid,
                format!("not valid before {nbf:?}"),
            );
        }
        if iat.is_some_and(|i| i > now.0.saturating_add(self.leeway)) {
            return reject(
                RejectReason::NotYetValid,
                format!("issued in the future ({iat:?})"),
            );
        }
        let claims_v = Value::Object(claims);
        let user = match self.mapper.map(&claims_v, cel) {
            Ok(u) => u,
            Err(r) => return Outcome::Rejected(r),
        };
        Outcome::Authenticated(Identity {
            user,
            // Audience-agnostic towards the review, as kube (DESIGN.md).
            audiences: None,
            expires_at: Some(UnixTime(exp)),
            bound: Vec::new(),
        })
    }
}

/// Keeps `keys` fresh: loads now (unless `loaded` says that was just done), then every
/// `interval` and whenever `now` changes (SIGHUP), until the issuer is dropped or `stop`
/// turns true. Inline keys never change after their first load.
pub fn spawn_refresh(
    keys: &Arc<IssuerKeys>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    now: Option<tokio::sync::watch::Receiver<u64>>,
    loaded: bool,
) {
    let weak = Arc::downgrade(keys);
    let once = matches!(keys.source(), KeySource::Inline(_));
    let mut now = now;
    tokio::spawn(async move {
        let mut skip = loaded;
        loop {
            if !skip {
                let Some(k) = weak.upgrade() else { return };
                let _ = k.refresh().await;
            }
            skip = false;
            if once {
                return;
            }
            let sighup = async {
                match now.as_mut() {
                    Some(n) => {
                        let _ = n.changed().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = sighup => {}
                _ = stop.changed() => return,
            }
        }
    });
}

/// Builds every authenticator of a configuration, reporting all problems at once.
///
/// # Errors
/// Every problem of every authenticator.
pub fn build_all(
    jwt: &[JwtAuthenticator],
    settings: &JwtSettings,
    cel: &CelEnv,
    metrics: &Metrics,
) -> Result<Vec<JwtIssuer>, Vec<String>> {
    let mut out = Vec::new();
    let mut errs = super::authn_config::validate(jwt, "jwt")
        .into_iter()
        .filter(|e| e.contains("Duplicate value"))
        .collect::<Vec<_>>();
    for (i, a) in jwt.iter().enumerate() {
        match JwtIssuer::build(
            a,
            &KeyOverride::default(),
            &format!("jwt[{i}]"),
            settings,
            cel,
            metrics,
        ) {
            Ok(x) => out.push(x),
            Err(e) => errs.extend(e),
        }
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
    #[serde(default)]
    jku: Option<Value>,
    #[serde(default)]
    x5u: Option<Value>,
    #[serde(default)]
    jwk: Option<Value>,
}

/// The verifier: issuers by URL, swapped whole when their configuration reloads.
#[derive(Clone)]
pub struct Jwt {
    issuers: Arc<ArcSwap<IssuerIndex>>,
    cel: Arc<CelEnv>,
    /// Metric label.
    pub kind: &'static str,
}

impl Jwt {
    /// Replaces every issuer, keeping the loaded keys of issuers whose URL, key source and
    /// CA did not change (so a reload does not send them back to their issuer).
    pub fn replace_keeping_keys(&self, mut issuers: Vec<JwtIssuer>) -> Vec<Arc<IssuerKeys>> {
        let old = self.issuers.load();
        let mut fresh = Vec::new();
        for i in &mut issuers {
            match old.get(&i.url) {
                Some(o) if o.keys.same_origin(&i.keys) => i.keys = o.keys.clone(),
                _ => fresh.push(i.keys.clone()),
            }
        }
        self.replace(issuers);
        fresh
    }

    /// A verifier over `issuers`.
    pub fn new(issuers: Vec<JwtIssuer>, cel: Arc<CelEnv>, kind: &'static str) -> Self {
        Jwt {
            issuers: Arc::new(ArcSwap::from_pointee(index(issuers))),
            cel,
            kind,
        }
    }

    /// Replaces every issuer (configuration reload).
    pub fn replace(&self, issuers: Vec<JwtIssuer>) {
        self.issuers.store(Arc::new(index(issuers)));
    }

    /// The current issuers.
    pub fn issuers(&self) -> Vec<Arc<JwtIssuer>> {
        self.issuers.load().values().cloned().collect()
    }

    /// Whether `iss` is one of the current issuers' URLs.
    pub fn has_issuer(&self, iss: &str) -> bool {
        self.issuers.load().contains_key(iss)
    }
}

/// Issuers by URL. foldhash, seeded per process, rather than SipHash: one lookup per JWT
/// review, and the URL is the token's unverified `iss`, so still not a predictable hash.
type IssuerIndex = HashMap<String, Arc<JwtIssuer>, foldhash::quality::RandomState>;

fn index(issuers: Vec<JwtIssuer>) -> IssuerIndex {
    issuers
        .into_iter()
        .map(|i| (i.url.clone(), Arc::new(i)))
        .collect()
}

impl Verifier for Jwt {
    async fn verify(&self, token: &Token, now: UnixTime) -> Result<Outcome, VerifyError> {
        let t = token.expose();
        let Some(parts) = super::split_jwt(t) else {
            return Ok(Outcome::NotMine);
        };
        // Routed by the unverified iss: one lookup, not a trial of every issuer.
        let Some(issuer) = parts
            .iss
            .as_ref()
            .and_then(|i| self.issuers.load().get(i).cloned())
        else {
            return Ok(Outcome::NotMine);
        };
        let Some(header) = parts.header::<Header>() else {
            return Ok(reject(
                RejectReason::Malformed,
                "header is not base64url JSON",
            ));
        };
        let payload = parts.payload;
        if !ALLOWED_ALGS.contains(&header.alg.as_str()) {
            return Ok(reject(
                RejectReason::BadSignature,
                format!("alg {:?} is not allowed", header.alg),
            ));
        }
        if header.crit.is_some() {
            return Ok(reject(
                RejectReason::Malformed,
                "crit header is not supported",
            ));
        }
        if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() {
            // Keys come from the issuer's configuration only; a token naming its own key is
            // refused rather than followed.
            return Ok(reject(
                RejectReason::Malformed,
                "jku/x5u/jwk headers are not accepted",
            ));
        }
        issuer.verify(t, &header, &payload, &self.cel, now).await
    }
}

/// The `aud` claim as a list: a string is one audience, an array its string members.
pub(crate) fn aud_values(claims: &Map<String, Value>) -> Vec<&str> {
    match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}
