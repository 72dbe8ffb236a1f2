//! Memory of the verdict cache: fills it with N distinct verdicts (as N distinct static tokens would) and prints the resident set size before and after.
//!
//! `cargo run --release --example cache_rss -- 1000000 [--one-verdict]`
//!
//! `--one-verdict` caches one shared verdict under every key, so that what remains is the
//! cost of the cache itself (moka's entry, its expiry timer and the key).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use tokenhook::cache::{CacheConfig, Cached, VerdictCache};
use tokenhook::k8s::token_review::{TokenReviewStatus, UserInfo};
use tokenhook::verify::Token;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let one_verdict = std::env::args().any(|a| a == "--one-verdict");
    let shared = Arc::new(
        Cached::new(
            &TokenReviewStatus::authenticated(UserInfo::default(), vec![]),
            "static",
            Duration::from_secs(3600),
        )
        .unwrap(),
    );
    rt.block_on(async {
        let cache = VerdictCache::new(CacheConfig {
            enabled: true,
            max_entries: n,
            ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(10),
        });
        let before = rss_kib();
        let auds = vec!["https://kubernetes.default.svc".to_string()];
        for i in 0..n {
            let key = VerdictCache::key(&Token::new(format!("token-{i}")), &auds);
            if one_verdict {
                let v = shared.clone();
                cache
                    .get_or_verify(|| key, || async { Ok(v) })
                    .await
                    .unwrap();
                continue;
            }
            let user = UserInfo {
                username: format!("user-{}", i % 1000),
                uid: format!("uid-{}", i % 1000),
                groups: vec!["developers".into(), "viewers".into()],
                ..UserInfo::default()
            };
            let v = Arc::new(
                Cached::new(
                    &TokenReviewStatus::authenticated(user, vec![]),
                    "static",
                    Duration::from_secs(3600),
                )
                .unwrap(),
            );
            cache
                .get_or_verify(|| key, || async { Ok(v) })
                .await
                .unwrap();
        }
        let entries = cache.settled_entry_count().await;
        let after = rss_kib();
        let json = serde_json::json!({
            "entries": entries,
            "one_verdict": one_verdict,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "bytes_per_entry": ((after - before) * 1024) / entries.max(1),
        });
        println!("{json}");
    });
}
