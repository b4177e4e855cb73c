//! Verified-token cache: a plain, bounded store of tokens that passed every check of a policy
//! version, so they are not verified again while they stay valid.
//!
//! Entries are keyed by the SHA-256 of the token and the policy version, so a policy change
//! never reuses a decision. The store knows nothing of tokens beyond that key: the
//! authenticator decides what to keep and rechecks what a hit must still satisfy (times, the
//! verifying key), and reports each lookup's result here for the metrics. Eviction is S3-FIFO
//! (quick_cache): constant time, bounded by entry count.

use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use prometheus::IntCounter;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, UnitWeighter};

use crate::metrics::Metrics;

/// Default `--token-cache-entries`.
pub const DEFAULT_ENTRIES: usize = 10_000;
/// Tokens longer than this are verified every time: a few large tokens must not crowd out
/// many ordinary ones.
pub const MAX_CACHED_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    version: u64,
    token: [u8; 32],
}

/// What a lookup came to, as `tokengate_token_cache_total{result}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupResult {
    /// Served from the cache.
    Hit,
    /// Not held, or held but no longer usable as it is (its key left the key set).
    Miss,
    /// Held, but its time has passed (or not come): refused.
    Expired,
}

type Entries<V> = Cache<CacheKey, Arc<V>, UnitWeighter, DefaultHashBuilder, CountEvictions>;

pub struct TokenCache<V> {
    /// `None` when disabled.
    inner: Option<Inner<V>>,
}

struct Inner<V> {
    entries: Entries<V>,
    capacity: usize,
    hits: IntCounter,
    misses: IntCounter,
    expired: IntCounter,
}

/// Counts capacity evictions into `tokengate_token_cache_total{result="evicted"}`.
#[derive(Clone)]
struct CountEvictions(IntCounter);

impl<V> Lifecycle<CacheKey, Arc<V>> for CountEvictions {
    type RequestState = u64;

    fn begin_request(&self) -> u64 {
        0
    }

    fn on_evict(&self, evicted: &mut u64, _: CacheKey, _: Arc<V>) {
        *evicted += 1;
    }

    fn end_request(&self, evicted: u64) {
        if evicted > 0 {
            self.0.inc_by(evicted);
        }
    }
}

impl<V> TokenCache<V> {
    /// A cache of at most `entries` tokens; 0 disables it.
    pub fn new(entries: usize, metrics: &Metrics) -> Self {
        if entries == 0 {
            return Self::disabled();
        }
        let counter = |result: &str| metrics.token_cache.with_label_values(&[result]);
        // Whole shards of at least 32 entries each, so that the bound holds exactly.
        let mut shards = (entries / 32).clamp(1, 16);
        if !shards.is_power_of_two() {
            shards = shards.next_power_of_two() / 2;
        }
        let capacity = entries - entries % shards;
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(capacity)
            .weight_capacity(capacity as u64)
            .build();
        match options {
            Ok(options) => Self {
                inner: Some(Inner {
                    entries: Cache::with_options(
                        options,
                        UnitWeighter,
                        DefaultHashBuilder::default(),
                        CountEvictions(counter("evicted")),
                    ),
                    capacity,
                    hits: counter("hit"),
                    misses: counter("miss"),
                    expired: counter("expired"),
                }),
            },
            Err(err) => {
                tracing::warn!(error = %err, "token cache disabled");
                Self::disabled()
            }
        }
    }

    /// A cache that keeps nothing, for one-shot use such as `check`.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |inner| inner.entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most entries held at once (0: disabled).
    pub fn capacity(&self) -> usize {
        self.inner.as_ref().map_or(0, |inner| inner.capacity)
    }

    /// Where `token` is kept for policy `version`; `None` when it is never kept (the cache is
    /// disabled or the token too long).
    pub fn key(&self, version: u64, token: &str) -> Option<CacheKey> {
        if self.inner.is_none() || token.len() > MAX_CACHED_TOKEN_BYTES {
            return None;
        }
        let mut key = CacheKey {
            version,
            token: [0; 32],
        };
        key.token
            .copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        Some(key)
    }
}

impl<V: Send + Sync> TokenCache<V> {
    pub fn get(&self, key: &CacheKey) -> Option<Arc<V>> {
        self.inner.as_ref()?.entries.get(key)
    }

    pub fn insert(&self, key: CacheKey, value: Arc<V>) {
        if let Some(inner) = &self.inner {
            inner.entries.insert(key, value);
        }
    }

    pub fn remove(&self, key: &CacheKey) {
        if let Some(inner) = &self.inner {
            inner.entries.remove(key);
        }
    }

    /// Counts a lookup's result.
    pub fn record(&self, result: LookupResult) {
        let Some(inner) = &self.inner else {
            return;
        };
        match result {
            LookupResult::Hit => inner.hits.inc(),
            LookupResult::Miss => inner.misses.inc(),
            LookupResult::Expired => inner.expired.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(metrics: &Metrics, result: &str) -> u64 {
        metrics.token_cache.with_label_values(&[result]).get()
    }

    #[test]
    fn keys_depend_on_token_and_version() {
        let metrics = Metrics::new().expect("metrics");
        let cache = TokenCache::<u32>::new(64, &metrics);
        let key = cache.key(1, "a.b.c").expect("kept");
        assert_eq!(cache.key(1, "a.b.c"), Some(key));
        assert_ne!(cache.key(2, "a.b.c"), Some(key));
        assert_ne!(cache.key(1, "a.b.d"), Some(key));
        assert_eq!(cache.key(1, &"t".repeat(MAX_CACHED_TOKEN_BYTES + 1)), None);
        assert_eq!(TokenCache::<u32>::disabled().key(1, "a.b.c"), None);
    }

    #[test]
    fn stores_removes_and_counts() {
        let metrics = Metrics::new().expect("metrics");
        let cache = TokenCache::new(64, &metrics);
        let key = cache.key(1, "a.b.c").expect("kept");
        assert!(cache.get(&key).is_none());
        cache.insert(key, Arc::new(7));
        assert_eq!(cache.get(&key).as_deref(), Some(&7));
        cache.remove(&key);
        assert!(cache.is_empty());
        for result in [LookupResult::Hit, LookupResult::Miss, LookupResult::Miss] {
            cache.record(result);
        }
        cache.record(LookupResult::Expired);
        assert_eq!(
            [
                counted(&metrics, "hit"),
                counted(&metrics, "miss"),
                counted(&metrics, "expired")
            ],
            [1, 2, 1]
        );
    }

    #[test]
    fn the_bound_holds_and_evictions_are_counted() {
        let metrics = Metrics::new().expect("metrics");
        let cache = TokenCache::new(64, &metrics);
        assert_eq!(cache.capacity(), 64);
        for i in 0..200u32 {
            let key = cache.key(1, &format!("token-{i}")).expect("kept");
            cache.insert(key, Arc::new(i));
        }
        let held = cache.len();
        assert!((32..=64).contains(&held), "{held}");
        assert_eq!(counted(&metrics, "evicted") as usize, 200 - held);
    }
}
