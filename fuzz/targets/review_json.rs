//! JSON request decoding: `k8s::codec::decode` for TokenReview (v1 and v1beta1 share one
//! type) and TokenRequest, the apiVersion/kind/fieldValidation checks the review endpoint
//! applies after it, and the answer through `codec::encode`, which must decode back to the
//! same object.

use http::HeaderValue;
use tokenhook::k8s::codec::{self, Decoded, FieldValidation};
use tokenhook::k8s::token_request::{SpecOut, TokenRequest, TokenRequestResponse};
use tokenhook::k8s::token_review::{ApiVersion, TokenReview, TokenReviewStatus, UserInfo};

fn warnings(problems: &[String]) {
    for p in problems {
        // What server::body::add_warnings does: an unrepresentable header is dropped.
        let _ = HeaderValue::from_str(&codec::warning_header(p));
    }
    for v in [
        FieldValidation::Ignore,
        FieldValidation::Warn,
        FieldValidation::Strict,
    ] {
        let _ = codec::apply_field_validation(v, problems.to_vec());
    }
}

fn review(data: &[u8]) {
    if let Ok(d) = codec::decode::<TokenReview>(data) {
        warnings(&d.problems);
    }
    // The review endpoint's own decoding: apiVersion/kind checks and field validation.
    for v in [FieldValidation::Warn, FieldValidation::Strict] {
        let _ = tokenhook::review::decode(data, ApiVersion::V1beta1, v);
    }
    let Ok((r, version, _)) =
        tokenhook::review::decode(data, ApiVersion::V1, FieldValidation::Ignore)
    else {
        return;
    };
    let user = UserInfo {
        username: "u".into(),
        uid: "1".into(),
        groups: vec!["g".into()],
        extra: [("k".to_string(), vec!["v".to_string()])].into(),
    };
    for status in [
        TokenReviewStatus::unauthenticated(),
        TokenReviewStatus::authenticated(user, r.spec.audiences.clone()),
        TokenReviewStatus::error(r.spec.token.clone()),
    ] {
        for pretty in [false, true] {
            let out = codec::encode(&r.respond(version, &status), pretty);
            let back: Decoded<TokenReview> =
                codec::decode(&out).expect("our own TokenReview answer decodes");
            assert!(back.problems.is_empty(), "{:?}", back.problems);
            assert_eq!(back.value.api_version, version.as_str());
            assert_eq!(back.value.spec, r.spec);
            assert_eq!(back.value.status, status);
            // Decimals in the echoed metadata come back exactly (serde_json's float_roundtrip,
            // as Go's strconv does).
            assert_eq!(back.value.metadata, r.metadata);
        }
    }
}

fn token_request(data: &[u8]) {
    let Ok(d) = codec::decode::<TokenRequest>(data) else {
        return;
    };
    warnings(&d.problems);
    let t = d.value;
    let answer = TokenRequestResponse {
        kind: "TokenRequest",
        api_version: "authentication.k8s.io/v1",
        metadata: &t.metadata,
        spec: SpecOut {
            audiences: &t.spec.audiences,
            expiration_seconds: t.spec.expiration_seconds.unwrap_or(3600),
            bound_object_ref: t.spec.bound_object_ref.as_ref(),
        },
        status: &t.status,
    };
    let out = codec::encode(&answer, false);
    let back: Decoded<TokenRequest> =
        codec::decode(&out).expect("our own TokenRequest answer decodes");
    assert!(back.problems.is_empty(), "{:?}", back.problems);
    assert_eq!(back.value.spec.audiences, t.spec.audiences);
    assert_eq!(back.value.spec.bound_object_ref, t.spec.bound_object_ref);
    assert_eq!(back.value.status, t.status);
}

/// One input, from the fuzzer (fuzz/fuzz_targets/) or the corpus replay (tests/it/fuzz_corpus.rs).
pub fn run(data: &[u8]) {
    review(data);
    token_request(data);
    // The SelfSubjectReview endpoint only peeks at apiVersion/kind of any JSON value.
    let _ = serde_json::from_slice::<serde_json::Value>(data);
}
