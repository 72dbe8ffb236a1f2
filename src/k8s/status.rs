//! The `Status` object (core/v1) that every non-2xx answer carries, with kube-apiserver's reasons and messages.

use serde::Serialize;

/// `metav1.StatusReason`: the machine-readable half of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// 400
    BadRequest,
    /// 401
    Unauthorized,
    /// 403
    Forbidden,
    /// 404
    NotFound,
    /// 405
    MethodNotAllowed,
    /// 406
    NotAcceptable,
    /// 409
    AlreadyExists,
    /// 409
    Conflict,
    /// 413
    RequestEntityTooLarge,
    /// 415
    UnsupportedMediaType,
    /// 422
    Invalid,
    /// 429
    TooManyRequests,
    /// 500
    InternalError,
    /// 503
    ServiceUnavailable,
    /// 504
    Timeout,
}

/// One field-level problem inside an `Invalid` status (`metav1.StatusCause`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusCause {
    /// e.g. `FieldValueNotSupported`.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reason: String,
    /// Human-readable text for this cause alone.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub message: String,
    /// The field path, e.g. `dryRun`.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub field: String,
}

/// `metav1.StatusDetails`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    /// Name of the object concerned.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: String,
    /// API group of the object concerned.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub group: String,
    /// Kind of the object concerned.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub kind: String,
    /// Field-level causes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    /// Seconds a client should wait before retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

/// Always-empty `metadata` (kube sends `"metadata": {}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ListMeta {}

/// A `kind: Status` failure object, field order as kube-apiserver writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Always `Status`.
    pub kind: &'static str,
    /// Always `v1`.
    pub api_version: &'static str,
    /// Always empty.
    pub metadata: ListMeta,
    /// Always `Failure` (successes are answered with the object itself).
    pub status: &'static str,
    /// Human-readable description.
    pub message: String,
    /// Machine-readable reason.
    pub reason: Reason,
    /// Extra detail, mostly for `Invalid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<StatusDetails>>,
    /// The HTTP status code, repeated.
    pub code: u16,
}

impl Status {
    /// A failure with the given code, reason and message.
    pub fn failure(code: u16, reason: Reason, message: impl Into<String>) -> Self {
        Status {
            kind: "Status",
            api_version: "v1",
            metadata: ListMeta {},
            status: "Failure",
            message: message.into(),
            reason,
            details: None,
            code,
        }
    }

    /// Attaches details.
    pub fn with_details(mut self, details: StatusDetails) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// 400, as `apierrors.NewBadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::failure(400, Reason::BadRequest, message)
    }

    /// 404 for a path nothing is served at, as kube-apiserver's NotFound handler.
    pub fn path_not_found() -> Self {
        Self::failure(
            404,
            Reason::NotFound,
            "the server could not find the requested resource",
        )
        .with_details(StatusDetails::default())
    }

    /// 405, as go-restful's answer through `NewGenericServerResponse`.
    pub fn method_not_allowed() -> Self {
        Self::failure(
            405,
            Reason::MethodNotAllowed,
            "the server does not allow this method on the requested resource",
        )
        .with_details(StatusDetails::default())
    }

    /// 413, as kube-apiserver's body limit.
    pub fn too_large(limit: u64) -> Self {
        Self::failure(
            413,
            Reason::RequestEntityTooLarge,
            format!("Request entity too large: limit is {limit}"),
        )
    }

    /// 415, as `NewUnsupportedMediaTypeError`.
    pub fn unsupported_media_type(accepted: &[&str]) -> Self {
        Self::failure(
            415,
            Reason::UnsupportedMediaType,
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ),
        )
    }

    /// 422, as `apierrors.NewInvalid`: `Kind.group "name" is invalid: [causes]`.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<StatusCause>) -> Self {
        let qualified = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let list: Vec<String> = causes
            .iter()
            .map(|c| {
                if c.field.is_empty() {
                    c.message.clone()
                } else {
                    format!("{}: {}", c.field, c.message)
                }
            })
            .collect();
        let joined = match list.as_slice() {
            [one] => one.clone(),
            _ => format!("[{}]", list.join(", ")),
        };
        Self::failure(
            422,
            Reason::Invalid,
            format!("{qualified} \"{name}\" is invalid: {joined}"),
        )
        .with_details(StatusDetails {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: kind.to_owned(),
            causes,
            retry_after_seconds: None,
        })
    }

    /// 401 with kube-apiserver's text.
    pub fn unauthorized() -> Self {
        Self::failure(401, Reason::Unauthorized, "Unauthorized")
    }

    /// 403, as `apierrors.NewForbidden` for a cluster-scoped create.
    pub fn forbidden(group: &str, resource: &str, user: &str, verb: &str) -> Self {
        let qualified = if group.is_empty() {
            resource.to_owned()
        } else {
            format!("{resource}.{group}")
        };
        Self::failure(
            403,
            Reason::Forbidden,
            format!(
                "{qualified} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" at the cluster scope"
            ),
        )
        .with_details(StatusDetails {
            group: group.to_owned(),
            kind: resource.to_owned(),
            ..StatusDetails::default()
        })
    }

    /// 404 for a missing object, as `apierrors.NewNotFound`: `pods "x" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::failure(
            404,
            Reason::NotFound,
            format!("{} \"{name}\" not found", qualify(resource, group)),
        )
        .with_details(StatusDetails {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: resource.to_owned(),
            ..StatusDetails::default()
        })
    }

    /// 409, as `apierrors.NewConflict`: `Operation cannot be fulfilled on X "name": why`.
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        Self::failure(
            409,
            Reason::Conflict,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualify(resource, group)
            ),
        )
        .with_details(StatusDetails {
            name: name.to_owned(),
            group: group.to_owned(),
            kind: resource.to_owned(),
            ..StatusDetails::default()
        })
    }

    /// 403 for a namespaced (sub)resource, as `apierrors.NewForbidden` with the authorizer's
    /// reason appended.
    pub fn forbidden_namespaced(
        resource: &str,
        subresource: &str,
        name: &str,
        user: &str,
        namespace: &str,
        reason: &str,
    ) -> Self {
        Self::failure(
            403,
            Reason::Forbidden,
            format!(
                "{resource} \"{name}\" is forbidden: User \"{user}\" cannot create resource \"{resource}/{subresource}\" in API group \"\" in the namespace \"{namespace}\": {reason}"
            ),
        )
        .with_details(StatusDetails {
            name: name.to_owned(),
            kind: resource.to_owned(),
            ..StatusDetails::default()
        })
    }

    /// 503 with `retryAfterSeconds`, for "could not check, try again".
    pub fn service_unavailable(message: impl Into<String>, retry_after: u32) -> Self {
        Self::failure(503, Reason::ServiceUnavailable, message).with_details(StatusDetails {
            retry_after_seconds: Some(retry_after),
            ..StatusDetails::default()
        })
    }

    /// 429, as kube-apiserver's max-in-flight filter answers: retried by its clients.
    pub fn too_many_requests(retry_after: u32) -> Self {
        Self::failure(
            429,
            Reason::TooManyRequests,
            "Too many requests, please try again later.",
        )
        .with_details(StatusDetails {
            retry_after_seconds: Some(retry_after),
            ..StatusDetails::default()
        })
    }

    /// 500 for a failure of our own.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::failure(
            500,
            Reason::InternalError,
            format!("Internal error occurred: {}", message.into()),
        )
    }
}

/// `resource.group`, or `resource` for the core group.
fn qualify(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_message_matches_kube_layout() {
        let one = Status::invalid(
            "meta.k8s.io",
            "CreateOptions",
            "",
            vec![StatusCause {
                reason: "FieldValueNotSupported".into(),
                message: "Unsupported value: \"x\": supported values: \"All\"".into(),
                field: "dryRun".into(),
            }],
        );
        assert_eq!(
            one.message,
            "CreateOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: \"x\": supported values: \"All\""
        );
        assert_eq!(one.code, 422);
        let json = serde_json::to_value(&one).unwrap();
        assert_eq!(json["kind"], "Status");
        assert_eq!(json["apiVersion"], "v1");
        assert_eq!(json["status"], "Failure");
        assert_eq!(json["reason"], "Invalid");
        assert_eq!(json["details"]["causes"][0]["field"], "dryRun");
        assert_eq!(json["details"]["name"], serde_json::Value::Null);
    }

    #[test]
    fn field_order_is_kubes() {
        let s = serde_json::to_string(&Status::unauthorized()).unwrap();
        assert_eq!(
            s,
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#
        );
    }
}
