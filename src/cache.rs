//! The verdict cache: moka, keyed by SHA-256 over token and audiences, entries never outliving the token.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use serde_json::value::RawValue;

use crate::k8s::token_review::TokenReviewStatus;
use crate::mint::accounts::BoundRef;
use crate::verify::{Token, VerifyError};

/// A cached verdict: the status to answer, who decided, and how long it may be reused.
///
/// The status is kept as the compact JSON it is answered with, serialised once on the miss:
/// about 100 bytes in one allocation instead of a struct of strings and vectors (half the
/// memory of a verdict), and a hit writes it verbatim instead of serialising it again.
#[derive(Debug, Clone)]
pub struct Cached {
    status: Box<RawValue>,
    /// The status says authenticated (metrics and logs).
    pub authenticated: bool,
    /// Deciding verifier's kind (metric label).
    pub verifier: &'static str,
    /// Lifetime in the cache, in milliseconds (at most 49 days): four bytes instead of a
    /// `Duration`'s sixteen put a verdict in a smaller allocation (≤ 600 bytes each, issue 12).
    ttl_ms: u32,
    /// Cluster objects the verdict depends on (empty for most): see [`Identity::bound`].
    ///
    /// [`Identity::bound`]: crate::verify::Identity::bound
    pub bound: Box<[BoundRef]>,
}

impl Cached {
    /// The verdict `status`, decided by `verifier`, reusable for `ttl`.
    ///
    /// # Errors
    /// Only if `status` cannot be serialised, which its types rule out.
    pub fn new(
        status: &TokenReviewStatus,
        verifier: &'static str,
        ttl: Duration,
    ) -> Result<Self, serde_json::Error> {
        Ok(Cached {
            status: serde_json::value::to_raw_value(status)?,
            authenticated: status.authenticated,
            verifier,
            ttl_ms: u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX),
            bound: Box::default(),
        })
    }

    /// Lifetime in the cache.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(u64::from(self.ttl_ms))
    }

    /// The same verdict, depending on `bound`.
    #[must_use]
    pub fn depending_on(mut self, bound: Vec<BoundRef>) -> Self {
        self.bound = bound.into_boxed_slice();
        self
    }

    /// The status as compact JSON, exactly as a `TokenReviewStatus` serialises.
    pub fn status_json(&self) -> &RawValue {
        &self.status
    }

    /// The status decoded again (pretty answers, tests).
    ///
    /// # Errors
    /// Never for a status made by [`Cached::new`].
    pub fn status(&self) -> Result<TokenReviewStatus, serde_json::Error> {
        serde_json::from_str(self.status.get())
    }
}

/// Cache key: SHA-256 over the token's digest and the requested audiences.
pub type Key = [u8; 32];

/// moka's own hasher is SipHash, a few hundred instructions per lookup for a key that is
/// already a digest; foldhash, seeded at random per process, does it in a few dozen and
/// still keeps an attacker who can choose digests from aiming them at one bucket.
type Hasher = foldhash::quality::RandomState;

struct PerEntry;

impl Expiry<Key, Arc<Cached>> for PerEntry {
    fn expire_after_create(&self, _: &Key, v: &Arc<Cached>, _: Instant) -> Option<Duration> {
        Some(v.ttl())
    }
}

/// Settings, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Off: every review runs the chain.
    pub enabled: bool,
    /// Maximum number of verdicts kept.
    pub max_entries: u64,
    /// Lifetime of a "yes" (capped by the token's own expiry).
    pub ttl: Duration,
    /// Lifetime of a "no".
    pub negative_ttl: Duration,
}

/// Which cached verdicts depend on which cluster object (by uid), so that a deletion drops
/// them at once. Only bound verdicts are in it: moka's invalidation closures, which did
/// this before, cost every entry 32 bytes (issue 12's ≤ 600 bytes per verdict).
type BoundIndex = Arc<Mutex<HashMap<String, HashSet<Key>>>>;

/// The cache, or nothing when disabled. Clones share one cache.
#[derive(Clone)]
pub struct VerdictCache {
    inner: Option<Cache<Key, Arc<Cached>, Hasher>>,
    config: CacheConfig,
    bound: BoundIndex,
}

fn unindex(index: &BoundIndex, key: &Key, v: &Cached) {
    let mut index = index.lock().unwrap_or_else(PoisonError::into_inner);
    for b in &v.bound {
        if let Some(keys) = index.get_mut(&b.uid) {
            keys.remove(key);
            if keys.is_empty() {
                index.remove(&b.uid);
            }
        }
    }
}

impl VerdictCache {
    /// Builds the cache described by `config`.
    pub fn new(config: CacheConfig) -> Self {
        Self::with_eviction_counter(config, None)
    }

    /// [`VerdictCache::new`], counting evictions by cause in `evictions`
    /// (`tokenhook_cache_evictions_total{cause}`).
    pub fn with_eviction_counter(
        config: CacheConfig,
        evictions: Option<prometheus::IntCounterVec>,
    ) -> Self {
        let bound = BoundIndex::default();
        let index = bound.clone();
        let inner = config.enabled.then(|| {
            Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(PerEntry)
                .eviction_listener(move |key, v: Arc<Cached>, cause| {
                    if !v.bound.is_empty() {
                        unindex(&index, &key, &v);
                    }
                    if let Some(counter) = &evictions {
                        let label = match cause {
                            moka::notification::RemovalCause::Expired => "expired",
                            moka::notification::RemovalCause::Explicit => "explicit",
                            moka::notification::RemovalCause::Replaced => "replaced",
                            moka::notification::RemovalCause::Size => "size",
                        };
                        counter.with_label_values(&[label]).inc();
                    }
                })
                .build_with_hasher(Hasher::default())
        });
        VerdictCache {
            inner,
            config,
            bound,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Derives the key for `token` under `audiences`, never the raw token. With no
    /// audiences the key is the token's SHA-256 itself, which verifiers needing a digest
    /// reuse, so a review hashes the token once, hit or miss. With audiences it is
    /// SHA-256(0xFF || digest || (length, audience)...): 0xFF never occurs in UTF-8, so no
    /// token's own digest can equal such a key, and the lengths keep audience lists apart.
    pub fn key(token: &Token, audiences: &[String]) -> Key {
        if audiences.is_empty() {
            return token.digest().0;
        }
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&[0xff]);
        ctx.update(&token.digest().0);
        for a in audiences {
            ctx.update(&(a.len() as u64).to_le_bytes());
            ctx.update(a.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The cached verdict for the key `key` derives, or the result of the future `verify`
    /// makes, which runs at most once for concurrent callers of one key. Returns whether the
    /// answer came from the cache. `verify` is only called on a miss, so a hit builds no
    /// verification future; `key` only when the cache is on, so no cache hashes nothing.
    ///
    /// # Errors
    /// `verify`'s error, shared by every coalesced caller and never cached.
    ///
    /// # Concurrent calls
    /// moka's `or_try_insert_with` coalesces: one caller runs `verify`, the others wait for it.
    pub async fn get_or_verify<K, F, Fut>(
        &self,
        key: K,
        verify: F,
    ) -> Result<(Arc<Cached>, bool), Arc<VerifyError>>
    where
        K: FnOnce() -> Key,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<Cached>, VerifyError>>,
    {
        if let Some(cache) = &self.inner {
            let key = key();
            if let Some(hit) = cache.get(&key).await {
                return Ok((hit, true));
            }
            return self.verify_missing(key, verify).await;
        }
        verify().await.map(|c| (c, false)).map_err(Arc::new)
    }

    /// Whether verdicts are cached at all.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The verdict cached under `key`, found without waiting: `None` when there is none, or
    /// in the rare case that moka's read would have had to wait (its bookkeeping shares a
    /// lock with its maintenance), and then the caller goes on as on a miss:
    /// [`VerdictCache::verify_missing`] finds a verdict stored meanwhile. A hit is then
    /// answered in the request's first poll (`review::first`).
    pub fn peek(&self, key: &Key) -> Option<Arc<Cached>> {
        let cache = self.inner.as_ref()?;
        let get = std::pin::pin!(cache.get(key));
        match get.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(found) => found,
            // Dropping moka's read midway is safe: it completes an interrupted read's
            // bookkeeping on a later call (`retry_interrupted_ops`).
            Poll::Pending => None,
        }
    }

    /// After a lookup found nothing under `key` ([`VerdictCache::peek`], or
    /// [`VerdictCache::get_or_verify`]'s own): the result of the future
    /// `verify` makes, which runs at most once for concurrent callers of one key, stored.
    /// Returns whether the verdict was another caller's after all (stored since the peek).
    ///
    /// # Errors
    /// `verify`'s error, shared by every coalesced caller and never cached.
    pub async fn verify_missing<F, Fut>(
        &self,
        key: Key,
        verify: F,
    ) -> Result<(Arc<Cached>, bool), Arc<VerifyError>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<Cached>, VerifyError>>,
    {
        let Some(cache) = &self.inner else {
            return verify().await.map(|c| (c, false)).map_err(Arc::new);
        };
        // Boxed: moka's insertion future is large and only misses need it.
        let entry = Box::pin(cache.entry(key).or_try_insert_with(verify())).await?;
        let hit = !entry.is_fresh();
        if !hit && !entry.value().bound.is_empty() {
            let mut index = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
            for b in &entry.value().bound {
                index.entry(b.uid.clone()).or_default().insert(key);
            }
        }
        Ok((entry.into_value(), hit))
    }

    /// Drops every verdict (a source changed: a removed token must stop working now).
    pub fn invalidate_all(&self) {
        if let Some(c) = &self.inner {
            c.invalidate_all();
        }
    }

    /// Drops the verdict under `key`.
    pub async fn invalidate(&self, key: &Key) {
        if let Some(c) = &self.inner {
            c.invalidate(key).await;
        }
    }

    /// Drops every verdict that depends on the object with `uid` (it was deleted).
    pub async fn invalidate_bound(&self, uid: &str) {
        let keys = self
            .bound
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uid);
        self.invalidate_keys(keys.into_iter().flatten()).await;
    }

    /// Drops every verdict that depends on cluster objects.
    pub async fn invalidate_all_bound(&self) {
        let all = std::mem::take(&mut *self.bound.lock().unwrap_or_else(PoisonError::into_inner));
        let keys: HashSet<Key> = all.into_values().flatten().collect();
        self.invalidate_keys(keys).await;
    }

    async fn invalidate_keys(&self, keys: impl IntoIterator<Item = Key>) {
        if let Some(c) = &self.inner {
            for key in keys {
                c.invalidate(&key).await;
            }
        }
    }

    /// Number of entries, after moka's pending maintenance (expirations, evictions and their
    /// notifications) has run, so that a scrape sees settled numbers.
    pub async fn settled_entry_count(&self) -> u64 {
        match &self.inner {
            Some(c) => {
                c.run_pending_tasks().await;
                c.entry_count()
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_audience_lists() {
        let t = Token::new("t".into());
        let a = VerdictCache::key(&t, &["ab".into(), "c".into()]);
        let b = VerdictCache::key(&t, &["a".into(), "bc".into()]);
        let c = VerdictCache::key(&t, &[]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(c, VerdictCache::key(&t, &[]));
        // No audiences: the token's digest, shared with the verifiers.
        assert_eq!(c, t.digest().0);
        assert_ne!(VerdictCache::key(&Token::new("s".into()), &[]), c);
        // A token spelling out the bytes hashed for (t, ["ab"]) cannot start with 0xFF:
        // Strings are UTF-8.
        assert!(
            (0..=u32::from(char::MAX))
                .filter_map(char::from_u32)
                .all(|c| {
                    let mut b = [0u8; 4];
                    c.encode_utf8(&mut b);
                    b[0] != 0xff
                })
        );
    }

    #[test]
    fn verdicts_keep_the_status_as_it_serialises() {
        use crate::k8s::token_review::UserInfo;
        let mut extra = std::collections::BTreeMap::new();
        extra.insert("example.com/team".to_string(), vec!["platform".to_string()]);
        let yes = TokenReviewStatus::authenticated(
            UserInfo {
                username: "alice".into(),
                uid: "uid-1".into(),
                groups: vec!["developers".into(), "viewers".into()],
                extra,
            },
            vec!["https://kubernetes.default.svc".into()],
        );
        for (status, authenticated) in [(yes, true), (TokenReviewStatus::unauthenticated(), false)]
        {
            let c = Cached::new(&status, "static", Duration::from_secs(1)).unwrap();
            assert_eq!(c.authenticated, authenticated);
            assert_eq!(
                c.status_json().get(),
                serde_json::to_string(&status).unwrap()
            );
            assert_eq!(c.status().unwrap(), status);
        }
        let no = Cached::new(
            &TokenReviewStatus::unauthenticated(),
            "none",
            Duration::from_secs(1),
        )
        .unwrap();
        // kube-apiserver's own "no".
        assert_eq!(no.status_json().get(), r#"{"user":{}}"#);
    }

    #[tokio::test]
    async fn errors_are_not_cached_and_hits_are_reported() {
        let cache = VerdictCache::new(CacheConfig {
            enabled: true,
            max_entries: 10,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
        });
        let err = cache
            .get_or_verify(
                || [1; 32],
                || async {
                    Err(VerifyError::Unavailable {
                        verifier: "x".into(),
                        reason: "down".into(),
                    })
                },
            )
            .await;
        assert!(err.is_err());
        let ok = Arc::new(
            Cached::new(
                &TokenReviewStatus::unauthenticated(),
                "none",
                Duration::from_secs(60),
            )
            .unwrap(),
        );
        let (_, hit) = cache
            .get_or_verify(|| [1; 32], || async { Ok(ok.clone()) })
            .await
            .unwrap();
        assert!(!hit);
        let (_, hit) = cache
            .get_or_verify(|| [1; 32], || async { panic!("must not run") })
            .await
            .unwrap();
        assert!(hit);
    }

    #[tokio::test]
    async fn verdicts_bound_to_a_deleted_object_are_dropped() {
        use crate::mint::cluster::Kind;
        let cache = VerdictCache::new(CacheConfig {
            enabled: true,
            max_entries: 10,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
        });
        let bound = |uid: &str| {
            Arc::new(
                Cached::new(
                    &TokenReviewStatus::unauthenticated(),
                    "service_account",
                    Duration::from_secs(60),
                )
                .unwrap()
                .depending_on(vec![BoundRef {
                    kind: Kind::Pod,
                    namespace: "ns".into(),
                    name: "p".into(),
                    uid: uid.into(),
                }]),
            )
        };
        for (key, v) in [([3; 32], bound("pod-a")), ([4; 32], bound("pod-b"))] {
            cache
                .get_or_verify(|| key, || async { Ok(v) })
                .await
                .unwrap();
        }
        cache.invalidate_bound("pod-a").await;
        let (_, hit_a) = cache
            .get_or_verify(|| [3; 32], || async { Ok(bound("pod-a")) })
            .await
            .unwrap();
        let (_, hit_b) = cache
            .get_or_verify(|| [4; 32], || async { panic!("must not run") })
            .await
            .unwrap();
        assert!(!hit_a, "the deleted pod's verdict was dropped");
        assert!(hit_b, "the other pod's verdict stays");
        // A relist drops every bound verdict, and the index keeps nothing it no longer needs.
        cache.invalidate_all_bound().await;
        let (_, hit_b) = cache
            .get_or_verify(|| [4; 32], || async { Ok(bound("pod-b")) })
            .await
            .unwrap();
        assert!(!hit_b, "a relist drops every bound verdict");
        cache.invalidate(&[3; 32]).await;
        cache.invalidate(&[4; 32]).await;
        assert!(
            cache.bound.lock().unwrap().is_empty(),
            "removed verdicts leave the index"
        );
    }

    #[tokio::test]
    async fn zero_ttl_entries_expire_at_once() {
        let cache = VerdictCache::new(CacheConfig {
            enabled: true,
            max_entries: 10,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
        });
        let v = Arc::new(
            Cached::new(
                &TokenReviewStatus::unauthenticated(),
                "none",
                Duration::ZERO,
            )
            .unwrap(),
        );
        cache
            .get_or_verify(|| [2; 32], || async { Ok(v.clone()) })
            .await
            .unwrap();
        let (_, hit) = cache
            .get_or_verify(|| [2; 32], || async { Ok(v.clone()) })
            .await
            .unwrap();
        assert!(!hit);
    }
}
