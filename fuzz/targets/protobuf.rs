//! `k8s::protobuf::{unwrap, token_request}`: the `k8s\0` + `runtime.Unknown` envelope and a
//! kubectl protobuf TokenRequest, as the mint endpoint and SelfSubjectReview decode them.

use tokenhook::k8s::codec;
use tokenhook::k8s::protobuf;
use tokenhook::k8s::token_request::{SpecOut, TokenRequestResponse, TokenRequestStatus};

/// One input, from the fuzzer (fuzz/fuzz_targets/) or the corpus replay (tests/it/fuzz_corpus.rs).
pub fn run(data: &[u8]) {
    // The fuzzer mostly mutates bodies that already carry the magic; also try it prefixed so
    // that envelope-less seeds reach the decoder.
    let _ = protobuf::unwrap(data);
    let prefixed;
    let body = if data.starts_with(b"k8s\0") {
        data
    } else {
        prefixed = [b"k8s\0", data].concat();
        &prefixed[..]
    };
    let _ = protobuf::unwrap(body);
    let Ok(t) = protobuf::token_request(body) else {
        return;
    };
    // What the mint endpoint would answer must encode, and decode back as JSON to the same spec.
    let status = TokenRequestStatus::default();
    let answer = TokenRequestResponse {
        kind: "TokenRequest",
        api_version: "authentication.k8s.io/v1",
        metadata: &t.metadata,
        spec: SpecOut {
            audiences: &t.spec.audiences,
            expiration_seconds: t.spec.expiration_seconds.unwrap_or(3600),
            bound_object_ref: t.spec.bound_object_ref.as_ref(),
        },
        status: &status,
    };
    for pretty in [false, true] {
        let json = codec::encode(&answer, pretty);
        let back: codec::Decoded<tokenhook::k8s::token_request::TokenRequest> =
            codec::decode(&json).expect("our own TokenRequest answer decodes");
        assert!(back.problems.is_empty(), "{:?}", back.problems);
        assert_eq!(back.value.spec.audiences, t.spec.audiences);
        assert_eq!(back.value.spec.bound_object_ref, t.spec.bound_object_ref);
        assert_eq!(back.value.metadata, t.metadata);
    }
}
