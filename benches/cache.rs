//! Criterion: the verdict-cache hit path and key derivation.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tokenhook::cache::{CacheConfig, Cached, VerdictCache};
use tokenhook::k8s::token_review::TokenReviewStatus;
use tokenhook::verify::Token;

fn cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cache = VerdictCache::new(CacheConfig {
        enabled: true,
        max_entries: 100_000,
        ttl: Duration::from_secs(600),
        negative_ttl: Duration::from_secs(10),
    });
    let auds = vec!["https://kubernetes.default.svc".to_string()];
    let token = Token::new("a-token-of-typical-length-0123456789abcdef".into());
    let key = VerdictCache::key(&token, &auds);
    let v = Arc::new(
        Cached::new(
            &TokenReviewStatus::unauthenticated(),
            "static",
            Duration::from_secs(600),
        )
        .unwrap(),
    );
    rt.block_on(cache.get_or_verify(|| key, || async { Ok(v.clone()) }))
        .unwrap();
    c.bench_function("cache_key", |b| {
        b.iter(|| VerdictCache::key(std::hint::black_box(&token), &auds))
    });
    c.bench_function("cache_hit", |b| {
        b.iter(|| {
            rt.block_on(cache.get_or_verify(|| key, || async { unreachable!("hit expected") }))
                .unwrap()
        })
    });
}

criterion_group!(benches, cache);
criterion_main!(benches);
