//! Verified-token cache: a token that passed every check of a policy version is not verified
//! again while it stays valid.
//!
//! Only valid tokens are kept, keyed by the SHA-256 of the token and the policy version, so a
//! policy change never reuses a decision. A hit rechecks `exp`/`nbf`/`iat` with the policy's
//! clock skew and that the key which verified the token is still in the key set, so expiry and
//! key removal apply to cached tokens as to new ones. Route-level claims are checked by the
//! caller on every request, cached or not. Eviction is S3-FIFO (quick_cache): constant time,
//! bounded by entry count.

use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use jsonwebtoken::Algorithm;
use prometheus::IntCounter;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, UnitWeighter};
use tokengate_policy::Verification;

use crate::metrics::Metrics;
use crate::reject::Rejection;
use crate::verify::{NoTrace, VerifiedToken, check_times};
use tokengate_keys::KeyView;

/// Default `--token-cache-entries`.
pub const DEFAULT_ENTRIES: usize = 10_000;
/// Tokens longer than this are verified every time: a few large tokens must not crowd out
/// many ordinary ones.
pub const MAX_CACHED_TOKEN_BYTES: usize = 8 * 1024;

pub use tokengate_policy::keys::KeyFingerprint;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    version: u64,
    token: [u8; 32],
}

/// The result of looking a token up.
pub enum Lookup {
    /// Verified before, still within its times, its key still trusted.
    Hit(Arc<VerifiedToken>),
    /// Verify it; store the result under the key when there is one.
    Miss(Option<CacheKey>),
    /// Cached, but its time has passed (or not come): the refusal.
    Refused(Rejection),
}

type Entries =
    Cache<CacheKey, Arc<VerifiedToken>, UnitWeighter, DefaultHashBuilder, CountEvictions>;

pub struct TokenCache {
    /// `None` when disabled.
    inner: Option<Inner>,
}

struct Inner {
    entries: Entries,
    capacity: usize,
    hits: IntCounter,
    misses: IntCounter,
    expired: IntCounter,
}

/// Counts capacity evictions into `tokengate_token_cache_total{result="evicted"}`.
#[derive(Clone)]
struct CountEvictions(IntCounter);

impl Lifecycle<CacheKey, Arc<VerifiedToken>> for CountEvictions {
    type RequestState = u64;

    fn begin_request(&self) -> u64 {
        0
    }

    fn on_evict(&self, evicted: &mut u64, _: CacheKey, _: Arc<VerifiedToken>) {
        *evicted += 1;
    }

    fn end_request(&self, evicted: u64) {
        if evicted > 0 {
            self.0.inc_by(evicted);
        }
    }
}

impl TokenCache {
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

    /// Looks `token` up for policy `version`, rechecking its times against `rules` at `now`
    /// and its key against `keys`.
    pub fn lookup(
        &self,
        version: u64,
        token: &str,
        rules: &Verification,
        keys: &KeyView<'_>,
        now: f64,
    ) -> Lookup {
        let Some(inner) = &self.inner else {
            return Lookup::Miss(None);
        };
        if token.len() > MAX_CACHED_TOKEN_BYTES {
            return Lookup::Miss(None);
        }
        let mut key = CacheKey {
            version,
            token: [0; 32],
        };
        key.token
            .copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        let Some(cached) = inner.entries.get(&key) else {
            inner.misses.inc();
            return Lookup::Miss(Some(key));
        };
        if !key_still_trusted(&cached, keys) {
            inner.entries.remove(&key);
            inner.misses.inc();
            return Lookup::Miss(Some(key));
        }
        if let Err(rejection) = check_times(
            &cached.claims,
            rules,
            now,
            cached.expires_at,
            cached.not_before,
            &mut NoTrace,
        ) {
            inner.entries.remove(&key);
            inner.expired.inc();
            return Lookup::Refused(rejection);
        }
        inner.hits.inc();
        Lookup::Hit(cached)
    }

    /// Keeps a token that passed verification.
    pub fn insert(&self, key: CacheKey, verified: Arc<VerifiedToken>) {
        if let Some(inner) = &self.inner {
            inner.entries.insert(key, verified);
        }
    }
}

/// Whether the key that verified the token would still be tried for it.
fn key_still_trusted(cached: &VerifiedToken, keys: &KeyView<'_>) -> bool {
    let Some(fingerprint) = &cached.verified_by else {
        // Unsigned tokens, accepted by policy: no key involved.
        return true;
    };
    let Ok(alg) = cached.algorithm.parse::<Algorithm>() else {
        return false;
    };
    keys.candidates(cached.kid.as_deref(), alg)
        .into_iter()
        .any(|key| key.fingerprint() == fingerprint)
}
