//! `TokenReview` wire types (authentication.k8s.io v1 and v1beta1, which share one shape) and their constructors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::codec::{null_default, unique_map};
use super::meta::ObjectMeta;

/// The API group of TokenReview and TokenRequest.
pub const GROUP: &str = "authentication.k8s.io";

/// The two served versions of `authentication.k8s.io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiVersion {
    /// `authentication.k8s.io/v1`
    V1,
    /// `authentication.k8s.io/v1beta1` (kube-apiserver's webhook default)
    V1beta1,
}

impl ApiVersion {
    /// The full `apiVersion` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1 => "authentication.k8s.io/v1",
            ApiVersion::V1beta1 => "authentication.k8s.io/v1beta1",
        }
    }

    /// The version part alone (`v1`).
    pub fn version(self) -> &'static str {
        match self {
            ApiVersion::V1 => "v1",
            ApiVersion::V1beta1 => "v1beta1",
        }
    }

    /// Parses a full `apiVersion` string.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "authentication.k8s.io/v1" => Some(ApiVersion::V1),
            "authentication.k8s.io/v1beta1" => Some(ApiVersion::V1beta1),
            _ => None,
        }
    }
}

/// A TokenReview as posted (every field optional on the wire; `status` is ignored but still
/// field-validated, as kube does).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReview {
    /// `apiVersion`, empty when absent.
    #[serde(default, deserialize_with = "null_default")]
    pub api_version: String,
    /// `kind`, empty when absent.
    #[serde(default, deserialize_with = "null_default")]
    pub kind: String,
    /// Echoed back.
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: ObjectMeta,
    /// What to review.
    #[serde(default, deserialize_with = "null_default")]
    pub spec: TokenReviewSpec,
    /// Ignored on input.
    #[serde(default, deserialize_with = "null_default")]
    pub status: TokenReviewStatus,
}

/// `TokenReviewSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReviewSpec {
    /// The opaque bearer token.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub token: String,
    /// Audiences the resource server identifies as.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub audiences: Vec<String>,
}

/// `UserInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    /// Unique name among active users.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub username: String,
    /// Unique across time.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub uid: String,
    /// Group names.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub groups: Vec<String>,
    /// Additional authenticator-provided information.
    #[serde(
        default,
        deserialize_with = "unique_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// `TokenReviewStatus`, serialised with Go's `omitempty` rules (an unauthenticated answer is
/// `{"user":{}}`, exactly as kube-apiserver writes it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReviewStatus {
    /// The token belongs to a known user.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_false"
    )]
    pub authenticated: bool,
    /// Who.
    #[serde(default, deserialize_with = "null_default")]
    pub user: UserInfo,
    /// Audiences compatible with both the review and the token.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub audiences: Vec<String>,
    /// Set when the token could not be checked.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub error: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl TokenReviewStatus {
    /// A "yes" for `user`, valid for `audiences` (empty = the API server's own audience).
    pub fn authenticated(user: UserInfo, audiences: Vec<String>) -> Self {
        TokenReviewStatus {
            authenticated: true,
            user,
            audiences,
            error: String::new(),
        }
    }

    /// A "no" with no reason given.
    pub fn unauthenticated() -> Self {
        TokenReviewStatus::default()
    }

    /// A "no" carrying a terse error for the caller.
    pub fn error(message: impl Into<String>) -> Self {
        TokenReviewStatus {
            error: message.into(),
            ..TokenReviewStatus::default()
        }
    }
}

/// The answer: the request echoed (kind, apiVersion asked, metadata, spec) plus a status.
///
/// `S` is the status: a [`TokenReviewStatus`], or the same already serialised (a cached
/// verdict's `RawValue`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenReviewResponse<'a, S: ?Sized = TokenReviewStatus> {
    /// Always `TokenReview`.
    pub kind: &'static str,
    /// The version the caller used.
    pub api_version: &'static str,
    /// The request's metadata (`creationTimestamp: null` as kube writes it).
    pub metadata: &'a ObjectMeta,
    /// The request's spec.
    pub spec: &'a TokenReviewSpec,
    /// The verdict.
    pub status: &'a S,
}

impl TokenReview {
    /// Builds the answer to this review in `version`.
    pub fn respond<'a, S: Serialize + ?Sized>(
        &'a self,
        version: ApiVersion,
        status: &'a S,
    ) -> TokenReviewResponse<'a, S> {
        TokenReviewResponse {
            kind: "TokenReview",
            api_version: version.as_str(),
            metadata: &self.metadata,
            spec: &self.spec,
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1beta1 review exactly as kube-apiserver's webhook client sends it.
    const APISERVER_V1BETA1: &str = r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1beta1","metadata":{"creationTimestamp":null},"spec":{"token":"abc.def","audiences":["https://kubernetes.default.svc"]},"status":{"user":{}}}"#;

    #[test]
    fn decodes_apiserver_request() {
        let r: TokenReview = serde_json::from_str(APISERVER_V1BETA1).unwrap();
        assert_eq!(ApiVersion::parse(&r.api_version), Some(ApiVersion::V1beta1));
        assert_eq!(r.spec.token, "abc.def");
        assert_eq!(r.spec.audiences, vec!["https://kubernetes.default.svc"]);
    }

    #[test]
    fn unauthenticated_answer_is_byte_identical_to_kube() {
        let r: TokenReview = serde_json::from_str(
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":"x"}}"#,
        )
        .unwrap();
        let st = TokenReviewStatus::unauthenticated();
        let out = serde_json::to_string(&r.respond(ApiVersion::V1, &st)).unwrap();
        assert_eq!(
            out,
            r#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"spec":{"token":"x"},"status":{"user":{}}}"#
        );
    }

    #[test]
    fn authenticated_answer_layout() {
        let r = TokenReview::default();
        let mut extra = BTreeMap::new();
        extra.insert("b".to_string(), vec!["2".to_string()]);
        extra.insert("a".to_string(), vec!["1".to_string()]);
        let st = TokenReviewStatus::authenticated(
            UserInfo {
                username: "alice".into(),
                uid: "42".into(),
                groups: vec!["dev".into()],
                extra,
            },
            vec![],
        );
        let v = serde_json::to_value(r.respond(ApiVersion::V1beta1, &st)).unwrap();
        assert_eq!(v["apiVersion"], "authentication.k8s.io/v1beta1");
        assert_eq!(v["status"]["authenticated"], true);
        assert!(v["status"].get("audiences").is_none());
        let s = serde_json::to_string(&v["status"]["user"]["extra"]).unwrap();
        assert_eq!(s, r#"{"a":["1"],"b":["2"]}"#);
    }

    #[test]
    fn nulls_decode_as_empty() {
        let r: TokenReview = serde_json::from_str(
            r#"{"metadata":null,"spec":{"token":null,"audiences":null},"status":null}"#,
        )
        .unwrap();
        assert!(r.spec.token.is_empty());
        assert!(r.spec.audiences.is_empty());
    }
}
