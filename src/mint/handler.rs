//! `POST /api/v1/namespaces/{namespace}/serviceaccounts/{name}/token`: kube-apiserver's TokenRequest checks, then our policy, then a signed token.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::accounts::{Accounts, Lookup, ObjectRef};
use super::claims::{Bound, new_claims};
use super::policy::{Ask, Caller};
use crate::app::App;
use crate::clock::UnixTime;
use crate::k8s::codec::{self, FieldValidation, encode};
use crate::k8s::query::{CreateOptions, go_quote};
use crate::k8s::token_request::{
    API_VERSION, BoundObjectReference, SpecOut, TokenRequest, TokenRequestResponse,
    TokenRequestStatus,
};
use crate::k8s::token_review::GROUP;
use crate::k8s::{Status, StatusCause, protobuf};
use crate::server::ConnInfo;
use crate::server::body::{self, Media};
use crate::server::http_error::{Body, json, status_response};

/// `Retry-After` while the cluster registry is not ready.
const RETRY_AFTER_SECONDS: u32 = 1;
/// kube's minimum token lifetime (`MinTokenAgeSec`).
const MIN_EXPIRATION: i64 = 600;
/// kube's maximum requestable lifetime.
const MAX_EXPIRATION: i64 = 1 << 32;
/// kube's default `expirationSeconds`.
const DEFAULT_EXPIRATION: i64 = 3600;
/// The kubelet's request length that kube may extend (`WarnOnlyBoundTokenExpirationSeconds`).
const EXTENDABLE: i64 = 3607;
/// How long an extended token lives (`ExpirationExtensionSeconds`).
const EXTENDED: u64 = 365 * 24 * 3600;

fn decode(
    media: Media,
    body: &[u8],
    validation: FieldValidation,
) -> Result<(TokenRequest, Vec<String>), Status> {
    let cannot = |detail: String| {
        Status::bad_request(format!(
            "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: {detail}"
        ))
    };
    let (tr, problems) = match media {
        Media::Protobuf => (
            protobuf::token_request(body).map_err(|e| cannot(e.to_string()))?,
            Vec::new(),
        ),
        Media::Json => {
            let d = codec::decode::<TokenRequest>(body).map_err(|e| match e {
                codec::DecodeError::Syntax(_) => Status::bad_request(format!(
                    "the object provided is unrecognized (must be of type TokenRequest): {}",
                    e.detail()
                )),
                codec::DecodeError::Type(_) => cannot(e.detail()),
            })?;
            (d.value, d.problems)
        }
    };
    if !tr.api_version.is_empty() && tr.api_version != API_VERSION {
        return Err(Status::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({API_VERSION})",
            tr.api_version
        )));
    }
    if !tr.kind.is_empty() && tr.kind != "TokenRequest" {
        return Err(Status::bad_request(format!(
            "{k} in version \"v1\" cannot be handled as a TokenRequest: no kind \"{k}\" is registered for version \"{API_VERSION}\"",
            k = tr.kind
        )));
    }
    let warnings = codec::apply_field_validation(validation, problems).map_err(cannot)?;
    Ok((tr, warnings))
}

/// `group/version, Kind=kind`, as Go's `GroupVersionKind.String()`.
fn gvk_string(api_version: &str, kind: &str) -> String {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    format!("{group}/{version}, Kind={kind}")
}

/// The answer while the cluster registry has not listed its objects yet.
fn not_ready() -> Status {
    Status::service_unavailable(
        "the service-account registry is not ready; retry",
        RETRY_AFTER_SECONDS,
    )
}

/// Resolves `boundObjectRef` against the registry, as kube resolves it against its store.
fn bind(
    app_ns: &str,
    sa_name: &str,
    r: &BoundObjectReference,
    registry: &Accounts,
) -> Result<Bound, Status> {
    let group = r.api_version.split_once('/').map_or("", |(g, _)| g);
    let (resource, kind) = match (group, r.kind.as_str()) {
        ("", "Pod") => ("pods", "Pod"),
        ("", "Secret") => ("secrets", "Secret"),
        ("", "Node") => ("nodes", "Node"),
        _ => {
            return Err(Status::bad_request(format!(
                "cannot bind token to object of type {}",
                gvk_string(&r.api_version, &r.kind)
            )));
        }
    };
    if r.name.is_empty() {
        return Err(Status::bad_request("Name parameter required."));
    }
    let found = |l: Lookup<String>| match l {
        Lookup::Found(uid) => Ok(uid),
        Lookup::Missing => Err(Status::not_found("", resource, &r.name)),
        Lookup::NotReady => Err(not_ready()),
    };
    let (uid, pod) = match kind {
        "Pod" => {
            let pod = match registry.pod(app_ns, &r.name, 0) {
                Lookup::Found(p) => p,
                Lookup::Missing => return Err(Status::not_found("", resource, &r.name)),
                Lookup::NotReady => return Err(not_ready()),
            };
            if pod.service_account != sa_name {
                return Err(Status::bad_request(format!(
                    "cannot bind token for serviceaccount {} to pod running with different serviceaccount name.",
                    go_quote(sa_name)
                )));
            }
            (pod.uid.clone(), Some(pod))
        }
        "Secret" => (found(registry.secret(app_ns, &r.name, 0))?, None),
        _ => (found(registry.node(&r.name, 0))?, None),
    };
    if !r.uid.is_empty() && r.uid != uid {
        return Err(Status::conflict(
            "",
            kind,
            &r.name,
            &format!(
                "the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
                r.uid
            ),
        ));
    }
    let obj = ObjectRef {
        name: r.name.clone(),
        uid,
    };
    Ok(match (kind, pod) {
        // kube puts the pod's node in the claims when it is scheduled: by name alone when
        // the node is not (or no longer) there.
        ("Pod", Some(p)) => Bound::Pod {
            pod: obj,
            node: p.node_name.map(|name| ObjectRef {
                uid: match registry.node(&name, 0) {
                    Lookup::Found(uid) => uid,
                    Lookup::Missing | Lookup::NotReady => String::new(),
                },
                name,
            }),
        },
        ("Secret", _) => Bound::Secret(obj),
        _ => Bound::Node(obj),
    })
}

/// Answers one TokenRequest.
pub async fn handle(
    app: &Arc<App>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    namespace: &str,
    name: &str,
) -> Response<Body> {
    let pretty_hint = body::user_agent_wants_pretty(req.headers());
    match mint(app, conn, req, namespace, name, pretty_hint).await {
        Ok(r) => r,
        Err(st) => status_response(&st, pretty_hint),
    }
}

async fn mint(
    app: &Arc<App>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    namespace: &str,
    name: &str,
    pretty_hint: bool,
) -> Result<Response<Body>, Status> {
    let (Some(issuer), Some(cfg)) = (&app.issuer, &app.config.mint) else {
        return Err(Status::path_not_found());
    };
    let user = app.authenticate_user(conn, req.headers()).await?;
    let caller = Caller {
        user: user.username,
        groups: user.groups,
    };
    let (parts, body) = req.into_parts();
    let media = body::media_type(&parts.headers, &[Media::Json, Media::Protobuf])?;
    let bytes = body::read(&app.config.limits, body).await?;
    let options = CreateOptions::parse(parts.uri.query())?;
    let pretty = options.pretty.unwrap_or(pretty_hint);
    let (mut tr, mut warnings) = decode(media, &bytes, options.field_validation)?;

    if !tr.metadata.namespace.is_empty() && tr.metadata.namespace != namespace {
        return Err(Status::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if !tr.metadata.name.is_empty() && tr.metadata.name != name {
        return Err(Status::invalid(
            GROUP,
            "TokenRequest",
            name,
            vec![StatusCause {
                reason: "FieldValueInvalid".into(),
                message: format!(
                    "Invalid value: {}: must match the service account name if specified",
                    go_quote(&tr.metadata.name)
                ),
                field: "metadata.name".into(),
            }],
        ));
    }
    let requested = tr.spec.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION);
    let default_audiences = &app.default_audiences;
    if tr.spec.audiences.is_empty() {
        tr.spec.audiences = default_audiences.clone();
    }
    let mut causes = Vec::new();
    for (bad, why) in [
        (
            requested < MIN_EXPIRATION,
            "may not specify a duration less than 10 minutes",
        ),
        (
            requested > MAX_EXPIRATION,
            "may not specify a duration larger than 2^32 seconds",
        ),
    ] {
        if bad {
            causes.push(StatusCause {
                reason: "FieldValueInvalid".into(),
                message: format!("Invalid value: {requested}: {why}"),
                field: "spec.expirationSeconds".into(),
            });
        }
    }
    if !causes.is_empty() {
        return Err(Status::invalid(GROUP, "TokenRequest", "", causes));
    }

    // Authorisation before existence, so that callers cannot probe for accounts.
    let policy_ceiling = cfg
        .policy
        .allow(
            &caller,
            &Ask {
                namespace,
                name,
                audiences: &tr.spec.audiences,
            },
        )
        .map_err(|why| {
            tracing::info!(caller = %caller.user, %namespace, %name, reason = %why, "mint refused");
            Status::forbidden_namespaced(
                "serviceaccounts",
                "token",
                name,
                &caller.user,
                namespace,
                &why,
            )
        })?;

    let registry = &issuer.config.registry;
    let sa = match registry.account(namespace, name, 0) {
        Lookup::Found(uid) => ObjectRef {
            name: name.to_owned(),
            uid,
        },
        Lookup::Missing => return Err(Status::not_found("", "serviceaccounts", name)),
        Lookup::NotReady => return Err(not_ready()),
    };
    if !tr.metadata.uid.is_empty() && tr.metadata.uid != sa.uid {
        return Err(Status::conflict(
            GROUP,
            "TokenRequest",
            name,
            &format!(
                "the UID in the token request ({}) does not match the UID of the service account ({})",
                tr.metadata.uid, sa.uid
            ),
        ));
    }
    let bound = match &tr.spec.bound_object_ref {
        Some(r) => bind(namespace, name, r, registry)?,
        None => Bound::None,
    };

    let ceiling = match (cfg.max_expiration_seconds, policy_ceiling) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut expiration = requested;
    if let Some(max) = ceiling.and_then(|m| i64::try_from(m).ok())
        && expiration > max
    {
        warnings.push(format!(
            "requested expiration of {expiration} seconds shortened to {max} seconds"
        ));
        expiration = max;
    }
    let now = app.clock.now();
    let mut token_lifetime = u64::try_from(expiration).unwrap_or(0);
    let mut warnafter = None;
    if cfg.extend_expiration
        && matches!(bound, Bound::Pod { .. })
        && expiration == EXTENDABLE
        && tr
            .spec
            .audiences
            .iter()
            .all(|a| default_audiences.contains(a))
    {
        warnafter = Some(now.0 + token_lifetime);
        token_lifetime = EXTENDED;
    }
    let jti = uuid::Uuid::new_v4().to_string();
    let mut claims = new_claims(
        &cfg.issuer,
        namespace,
        &sa,
        &bound,
        tr.spec.audiences.clone(),
        now,
        token_lifetime,
        jti.clone(),
    );
    claims.kubernetes.warnafter = warnafter;
    let token = issuer.sign(&claims).map_err(|e| {
        tracing::error!(error = %e, "signing failed");
        Status::internal("failed to generate token")
    })?;
    app.metrics
        .tokens_minted
        .with_label_values(&[namespace])
        .inc();
    tracing::info!(
        caller = %caller.user,
        %namespace,
        serviceaccount = %sa.name,
        audiences = ?tr.spec.audiences,
        expiration_seconds = expiration,
        jti = %jti,
        kid = %issuer.keys().signing.public.kid,
        dry_run = options.dry_run,
        "minted"
    );

    let mut metadata = tr.metadata.clone();
    metadata.name = sa.name.clone();
    metadata.namespace = namespace.to_owned();
    metadata.uid = sa.uid.clone();
    metadata.creation_timestamp = Some(now.rfc3339());
    let status = TokenRequestStatus {
        token,
        expiration_timestamp: UnixTime(now.0 + u64::try_from(expiration).unwrap_or(0)).rfc3339(),
    };
    let out = TokenRequestResponse {
        kind: "TokenRequest",
        api_version: API_VERSION,
        metadata: &metadata,
        spec: SpecOut {
            audiences: &tr.spec.audiences,
            expiration_seconds: expiration,
            bound_object_ref: tr.spec.bound_object_ref.as_ref(),
        },
        status: &status,
    };
    let mut r = json(StatusCode::CREATED, encode(&out, pretty));
    body::add_warnings(&mut r, &warnings);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gvk_strings_like_go() {
        assert_eq!(gvk_string("v1", "ConfigMap"), "/v1, Kind=ConfigMap");
        assert_eq!(
            gvk_string("apps/v1", "Deployment"),
            "apps/v1, Kind=Deployment"
        );
        assert_eq!(gvk_string("", "Foo"), "/, Kind=Foo");
    }
}
