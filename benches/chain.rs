//! Criterion: static-token lookup through the chain, and TokenReview decoding.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use tokenhook::clock::UnixTime;
use tokenhook::k8s::codec;
use tokenhook::k8s::token_review::TokenReview;
use tokenhook::metrics::Metrics;
use tokenhook::verify::static_file::TokenTable;
use tokenhook::verify::{AnyVerifier, Chain, StaticFile, Token};

fn chain(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut csv = String::new();
    for i in 0..10_000 {
        csv.push_str(&format!("token-{i:05},user{i},{i},\"g1,g2\"\n"));
    }
    // Four static verifiers; only the last holds the token.
    let mut verifiers = Vec::new();
    for n in 0..4 {
        let text = if n == 3 {
            csv.clone()
        } else {
            "other,x,1\n".into()
        };
        verifiers.push(AnyVerifier::Static(StaticFile::new(
            TokenTable::parse(text.as_bytes()).unwrap(),
        )));
    }
    let chain = Chain::new(verifiers, Metrics::new().unwrap());
    c.bench_function("chain_4_static_last_matches", |b| {
        b.iter(|| {
            let t = Token::new("token-04242".into());
            rt.block_on(chain.verify(&t, UnixTime(0))).unwrap()
        })
    });
    let body = br#"{"kind":"TokenReview","apiVersion":"authentication.k8s.io/v1beta1","metadata":{"creationTimestamp":null},"spec":{"token":"token-04242","audiences":["https://kubernetes.default.svc"]},"status":{"user":{}}}"#;
    c.bench_function("decode_token_review_json", |b| {
        b.iter(|| codec::decode::<TokenReview>(std::hint::black_box(body)).unwrap())
    });
}

criterion_group!(benches, chain);
criterion_main!(benches);
