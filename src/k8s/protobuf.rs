//! Kubernetes protobuf bodies (`application/vnd.kubernetes.protobuf`): the `k8s\0` + `runtime.Unknown` envelope, decoded with k8s-pb.
//!
//! kubectl sends TokenRequests this way and does not fall back to JSON on 415; answers may
//! still be JSON, which kubectl's `Accept` allows.

use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;

use super::meta::ObjectMeta;
use super::token_request::{BoundObjectReference, TokenRequest, TokenRequestSpec};

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\x00";

/// Why a protobuf body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// No `k8s\0` prefix.
    #[error("missing the k8s protobuf magic prefix")]
    Magic,
    /// The envelope or the object is not valid protobuf.
    #[error("invalid protobuf: {0}")]
    Decode(String),
    /// The envelope names another type.
    #[error("the object in the body is {api_version}/{kind}, not {expected}")]
    Type {
        /// Envelope apiVersion.
        api_version: String,
        /// Envelope kind.
        kind: String,
        /// What the endpoint takes.
        expected: &'static str,
    },
}

/// The envelope's `(apiVersion, kind)` and inner bytes.
pub fn unwrap(body: &[u8]) -> Result<(String, String, Vec<u8>), ProtoError> {
    let rest = body.strip_prefix(MAGIC).ok_or(ProtoError::Magic)?;
    let u = Unknown::decode(rest).map_err(|e| ProtoError::Decode(e.to_string()))?;
    let tm = u.type_meta.unwrap_or_default();
    Ok((
        tm.api_version.unwrap_or_default(),
        tm.kind.unwrap_or_default(),
        u.raw.unwrap_or_default(),
    ))
}

fn meta(m: Option<k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta>) -> ObjectMeta {
    let m = m.unwrap_or_default();
    ObjectMeta {
        name: m.name.unwrap_or_default(),
        generate_name: m.generate_name.unwrap_or_default(),
        namespace: m.namespace.unwrap_or_default(),
        uid: m.uid.unwrap_or_default(),
        resource_version: m.resource_version.unwrap_or_default(),
        labels: m.labels.into_iter().collect(),
        annotations: m.annotations.into_iter().collect(),
        finalizers: m.finalizers,
        ..ObjectMeta::default()
    }
}

/// Decodes a protobuf TokenRequest into the same type JSON decodes to.
///
/// # Errors
/// Bad envelope, bad protobuf, or another type in the envelope.
pub fn token_request(body: &[u8]) -> Result<TokenRequest, ProtoError> {
    let (api_version, kind, raw) = unwrap(body)?;
    if !(api_version.is_empty() || api_version == super::token_request::API_VERSION)
        || !(kind.is_empty() || kind == "TokenRequest")
    {
        return Err(ProtoError::Type {
            api_version,
            kind,
            expected: "authentication.k8s.io/v1 TokenRequest",
        });
    }
    let t = k8s_pb::api::authentication::v1::TokenRequest::decode(raw.as_slice())
        .map_err(|e| ProtoError::Decode(e.to_string()))?;
    let spec = t.spec.unwrap_or_default();
    Ok(TokenRequest {
        api_version,
        kind,
        metadata: meta(t.metadata),
        spec: TokenRequestSpec {
            audiences: spec.audiences,
            expiration_seconds: spec.expiration_seconds,
            bound_object_ref: spec.bound_object_ref.map(|b| BoundObjectReference {
                kind: b.kind.unwrap_or_default(),
                api_version: b.api_version.unwrap_or_default(),
                name: b.name.unwrap_or_default(),
                uid: b.u_id.unwrap_or_default(),
            }),
        },
        status: Default::default(),
    })
}

/// Wraps `msg` in the envelope (for tests and clients).
pub fn wrap<M: Message>(api_version: &str, kind: &str, msg: &M) -> Vec<u8> {
    let u = Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some(api_version.to_owned()),
            kind: Some(kind.to_owned()),
        }),
        raw: Some(msg.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&u.encode_to_vec());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::api::authentication::v1 as pb;

    #[test]
    fn round_trip_kubectl_shape() {
        let req = pb::TokenRequest {
            metadata: Some(Default::default()),
            spec: Some(pb::TokenRequestSpec {
                audiences: vec!["vault".into()],
                expiration_seconds: Some(600),
                bound_object_ref: Some(pb::BoundObjectReference {
                    kind: Some("Pod".into()),
                    api_version: Some("v1".into()),
                    name: Some("p".into()),
                    u_id: Some("u".into()),
                }),
            }),
            status: None,
        };
        let body = wrap("authentication.k8s.io/v1", "TokenRequest", &req);
        let t = token_request(&body).unwrap();
        assert_eq!(t.spec.audiences, vec!["vault"]);
        assert_eq!(t.spec.expiration_seconds, Some(600));
        assert_eq!(t.spec.bound_object_ref.unwrap().uid, "u");
    }

    #[test]
    fn bad_bodies() {
        assert!(matches!(token_request(b"{}"), Err(ProtoError::Magic)));
        assert!(matches!(
            token_request(b"k8s\x00\xff\xff"),
            Err(ProtoError::Decode(_))
        ));
        let body = wrap("v1", "Pod", &pb::TokenRequest::default());
        assert!(matches!(token_request(&body), Err(ProtoError::Type { .. })));
    }
}
