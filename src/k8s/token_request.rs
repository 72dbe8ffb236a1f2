//! `TokenRequest` wire types (authentication.k8s.io/v1), as posted to `serviceaccounts/{name}/token` and answered.

use serde::{Deserialize, Serialize};

use super::codec::null_default;
use super::meta::ObjectMeta;

/// `authentication.k8s.io/v1`, the only version TokenRequest has.
pub const API_VERSION: &str = "authentication.k8s.io/v1";

/// A TokenRequest as posted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequest {
    /// `apiVersion`, empty when absent.
    #[serde(default, deserialize_with = "null_default")]
    pub api_version: String,
    /// `kind`, empty when absent.
    #[serde(default, deserialize_with = "null_default")]
    pub kind: String,
    /// Name/namespace must match the URL when given; echoed back.
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: ObjectMeta,
    /// What to mint.
    #[serde(default, deserialize_with = "null_default")]
    pub spec: TokenRequestSpec,
    /// Discarded, as kube does (still field-validated).
    #[serde(default, deserialize_with = "null_default")]
    pub status: TokenRequestStatus,
}

/// `TokenRequestSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequestSpec {
    /// Intended audiences; empty means the API audiences.
    #[serde(default, deserialize_with = "null_default")]
    pub audiences: Vec<String>,
    /// Requested lifetime; defaults to 3600.
    #[serde(default)]
    pub expiration_seconds: Option<i64>,
    /// Object the token is bound to.
    #[serde(default)]
    pub bound_object_ref: Option<BoundObjectReference>,
}

/// `BoundObjectReference`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BoundObjectReference {
    /// `Pod`, `Secret` or `Node`.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub kind: String,
    /// API version of the referent.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub api_version: String,
    /// Name of the referent.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    /// UID of the referent.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub uid: String,
}

/// `TokenRequestStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequestStatus {
    /// The token.
    #[serde(default, deserialize_with = "null_default")]
    pub token: String,
    /// RFC 3339 expiry.
    #[serde(default, deserialize_with = "null_default")]
    pub expiration_timestamp: String,
}

/// The answer's spec: kube's v1 tags have no `omitempty` here, so all three always appear.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecOut<'a> {
    /// Audiences after defaulting.
    pub audiences: &'a [String],
    /// Lifetime after defaulting and clamping.
    pub expiration_seconds: i64,
    /// The request's reference, or null.
    pub bound_object_ref: Option<&'a BoundObjectReference>,
}

/// The 201 answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequestResponse<'a> {
    /// `TokenRequest`.
    pub kind: &'static str,
    /// `authentication.k8s.io/v1`.
    pub api_version: &'static str,
    /// name, namespace, uid, creationTimestamp (plus whatever the request carried).
    pub metadata: &'a ObjectMeta,
    /// What was minted.
    pub spec: SpecOut<'a>,
    /// The token.
    pub status: &'a TokenRequestStatus,
}
