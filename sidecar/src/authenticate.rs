//! The authenticator: one token, one pass.
//!
//! token-cache lookup -> parse once -> algorithm -> keys by `kid` -> (at most one refetch of
//! the key sets, when the token names a key we do not hold) -> signature -> claims -> into the
//! cache. A cache hit rechecks what may have changed since the token was verified: its times,
//! and that the key which verified it would still be tried for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokengate_keys::KeyCache;

use crate::active::ActivePolicy;
use crate::reject::{RejectReason, Rejection};
use crate::token::ParsedToken;
use crate::token_cache::{LookupResult, TokenCache};
use crate::trace::Trace;
use crate::verify::{
    Signing, VerifiedToken, check_algorithm, check_claims, check_signature, check_times,
    names_unknown_key, unix_now,
};

/// What requests that arrive before the first keys do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StartupMode {
    /// Refused at once with 503 `KeysUnavailable`.
    #[default]
    #[value(name = "failClosed")]
    FailClosed,
    /// Held until the keys arrive (up to the startup timeout), then judged.
    #[value(name = "wait")]
    Wait,
}

/// The startup window during which requests may wait for keys.
pub struct Startup {
    deadline: Instant,
    over: AtomicBool,
}

impl Startup {
    /// A window of `timeout` from now.
    pub fn new(mode: StartupMode, timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            deadline: now.checked_add(timeout).unwrap_or(now),
            over: AtomicBool::new(mode == StartupMode::FailClosed),
        }
    }

    /// In `wait` mode and within the window: returns once every key source of the policy has
    /// keys, or the window closes.
    async fn wait_for_keys(&self, active: &ActivePolicy, keys: &KeyCache) {
        if self.over.load(Ordering::Relaxed) || active.sources.is_empty() {
            return;
        }
        let max_stale = keys.settings().max_stale;
        // Subscribed before checking, so a fetch completing in between is not missed.
        let mut fetches = keys.fetch_events();
        loop {
            if active
                .sources
                .iter()
                .all(|source| source.current(max_stale).is_some())
            {
                return;
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            let changed = tokio::time::timeout(left, fetches.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                // The window closed: from now on requests are judged at once.
                self.over.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}

pub struct Authenticator {
    keys: Arc<KeyCache>,
    cache: TokenCache<VerifiedToken>,
    startup: Startup,
}

impl Authenticator {
    pub fn new(keys: Arc<KeyCache>, cache: TokenCache<VerifiedToken>, startup: Startup) -> Self {
        Self {
            keys,
            cache,
            startup,
        }
    }

    pub fn keys(&self) -> &Arc<KeyCache> {
        &self.keys
    }

    pub fn cache(&self) -> &TokenCache<VerifiedToken> {
        &self.cache
    }

    /// The verified token, from the cache or verified now (and then cached).
    pub async fn authenticate(
        &self,
        active: &ActivePolicy,
        token: &str,
        trace: &mut dyn Trace,
    ) -> Result<Arc<VerifiedToken>, Rejection> {
        self.startup.wait_for_keys(active, &self.keys).await;
        let now = unix_now();
        let key = self.cache.key(active.version, token);
        if let Some(key) = &key {
            match self.cache.get(key) {
                None => self.cache.record(LookupResult::Miss),
                Some(cached) => match self.recheck(active, &cached, now, trace) {
                    Recheck::Valid => {
                        self.cache.record(LookupResult::Hit);
                        return Ok(cached);
                    }
                    Recheck::Expired(rejection) => {
                        self.cache.remove(key);
                        self.cache.record(LookupResult::Expired);
                        return Err(rejection);
                    }
                    Recheck::KeyGone => {
                        // Verified again: the key set has changed under it.
                        self.cache.remove(key);
                        self.cache.record(LookupResult::Miss);
                    }
                },
            }
        }
        let mut verified = self.verify(active, token, now, trace).await?;
        verified.keep_claims(active.kept_claims());
        let verified = Arc::new(verified);
        if let Some(key) = key {
            self.cache.insert(key, Arc::clone(&verified));
        }
        Ok(verified)
    }

    /// What a cached token still has to satisfy: its key would still be tried for it, and its
    /// times hold.
    fn recheck(
        &self,
        active: &ActivePolicy,
        cached: &VerifiedToken,
        now: f64,
        trace: &mut dyn Trace,
    ) -> Recheck {
        let rules = &active.policy.verification;
        if let (Signing::Signed(alg), Some(fingerprint)) = (cached.algorithm, &cached.verified_by) {
            let view = active.key_view(&self.keys);
            if !view.still_selects(cached.kid.as_deref(), alg, rules.key_selection, fingerprint) {
                return Recheck::KeyGone;
            }
        }
        match check_times(&cached.times, rules, now, trace) {
            Ok(()) => {
                trace.step("cache", true, format_args!("verified before, still valid"));
                Recheck::Valid
            }
            Err(rejection) => Recheck::Expired(rejection),
        }
    }

    /// Parses the token once and checks it, refetching the key sets at most once when it names
    /// a key none of them holds (unless every source found that `kid` missing within the
    /// cooldown: the key cache's negative cache).
    async fn verify(
        &self,
        active: &ActivePolicy,
        token: &str,
        now: f64,
        trace: &mut dyn Trace,
    ) -> Result<VerifiedToken, Rejection> {
        let rules = &active.policy.verification;
        let remote = !active.sources.is_empty();
        let view = active.key_view(&self.keys);
        if view.is_empty() && remote {
            return Err(self.keys_unavailable(active));
        }
        let token = ParsedToken::parse(token)?;
        trace.step(
            "format",
            true,
            format_args!(
                "three base64url segments, JSON header (typ {})",
                token.typ().unwrap_or("absent")
            ),
        );
        let signing = check_algorithm(&token, rules, trace)?;
        let Signing::Signed(alg) = signing else {
            return check_claims(&token, signing, None, rules, &view, now, trace);
        };
        let kid = token.kid();
        let choice = view.select(kid, alg, rules.key_selection);
        if !(remote && names_unknown_key(&token, &choice)) {
            let verified_by = check_signature(&token, alg, &choice, trace)?;
            return check_claims(&token, signing, Some(verified_by), rules, &view, now, trace);
        }
        drop(choice);
        drop(view);

        let known_unknown = kid.is_some_and(|kid| self.keys.is_known_unknown(&active.sources, kid));
        if known_unknown {
            trace.step(
                "key sets",
                false,
                format_args!("kid {kid:?} was missing from every key set at the last refetch"),
            );
        } else {
            trace.step(
                "key sets",
                true,
                format_args!("no key for kid {kid:?} yet: refetched"),
            );
            self.keys
                .refetch_for_unknown_kid(&active.sources, kid)
                .await;
        }
        // Looked at again even without a refetch of ours: another request's may have landed.
        let view = active.key_view(&self.keys);
        let choice = view.select(kid, alg, rules.key_selection);
        if names_unknown_key(&token, &choice) && active.has_unavailable_source(&self.keys) {
            // The key may live in a source we cannot reach: say so rather than blame the token.
            return Err(self.keys_unavailable(active));
        }
        let verified_by = check_signature(&token, alg, &choice, trace)?;
        check_claims(&token, signing, Some(verified_by), rules, &view, now, trace)
    }

    fn keys_unavailable(&self, active: &ActivePolicy) -> Rejection {
        let max_stale = self.keys.settings().max_stale;
        let missing: Vec<String> = active
            .sources
            .iter()
            .filter(|s| s.current(max_stale).is_none())
            .map(|s| match s.last_error() {
                Some(err) => format!("{} ({err})", s.id),
                None => format!("{} (not fetched yet)", s.id),
            })
            .collect();
        Rejection::new(
            RejectReason::KeysUnavailable,
            format!("no usable keys from {}", missing.join(", ")),
        )
    }
}

/// What a cache hit comes to.
enum Recheck {
    Valid,
    /// Its times no longer hold: refused.
    Expired(Rejection),
    /// The key that verified it would no longer be tried for it.
    KeyGone,
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::Algorithm;
    use serde_json::json;
    use tokengate_testkit::idp::{IdentityProvider, KeyFamily, SignWith};

    use super::*;
    use crate::metrics::Metrics;
    use crate::testing::{cache_count, first_fetches, jwks_policy, key_cache, policy};
    use crate::trace::NoTrace;

    struct Fixture {
        authenticator: Authenticator,
        active: ActivePolicy,
        metrics: Metrics,
    }

    /// An authenticator for `policy` with a token cache of `entries`, once each key source has
    /// been fetched (by its refresher) once.
    async fn fixture(policy: tokengate_policy::CompiledPolicy, entries: usize) -> Fixture {
        let metrics = Metrics::new().expect("metrics");
        let keys = key_cache(&metrics);
        let sources = keys.sources(&policy.verification.remote_sources);
        first_fetches(&keys, &sources).await;
        let authenticator = Authenticator::new(
            keys,
            TokenCache::new(entries, &metrics),
            Startup::new(StartupMode::FailClosed, Duration::ZERO),
        );
        Fixture {
            authenticator,
            active: ActivePolicy::new(policy, sources, 1),
            metrics,
        }
    }

    impl Fixture {
        async fn outcome(&self, token: &str) -> Result<(), (RejectReason, String)> {
            self.authenticator
                .authenticate(&self.active, token, &mut NoTrace)
                .await
                .map(|_| ())
                .map_err(|rejection| (rejection.reason, rejection.detail))
        }

        fn cache_count(&self, result: &str) -> u64 {
            cache_count(&self.metrics, result)
        }
    }

    #[tokio::test]
    async fn a_cached_token_is_served_then_expires_on_time() {
        let idp = IdentityProvider::start().await.expect("provider");
        let auth = fixture(jwks_policy(&idp, ""), 100).await;
        let mut claims = idp.claims();
        let issued = claims["iat"].as_u64().expect("iat");
        claims["exp"] = json!(issued + 1);
        let token = idp.sign(Algorithm::RS256, &claims);
        assert_eq!(auth.outcome(&token).await, Ok(()));
        assert_eq!(auth.outcome(&token).await, Ok(()));
        assert_eq!((auth.cache_count("miss"), auth.cache_count("hit")), (1, 1));
        assert_eq!(auth.authenticator.cache().len(), 1);

        // exp is rechecked on the hit (clock skew 0).
        let wait = (issued + 1) as f64 - unix_now();
        tokio::time::sleep(Duration::from_secs_f64(wait.max(0.0) + 0.05)).await;
        assert_eq!(
            auth.outcome(&token).await,
            Err((RejectReason::TokenExpired, "exp has passed".into()))
        );
        assert_eq!(auth.cache_count("expired"), 1);
        assert_eq!(auth.cache_count("hit"), 1);
        assert!(
            auth.authenticator.cache().is_empty(),
            "the expired entry is dropped"
        );
    }

    #[tokio::test]
    async fn a_retired_key_takes_its_cached_tokens_with_it() {
        let idp = IdentityProvider::start().await.expect("provider");
        let auth = fixture(jwks_policy(&idp, ""), 100).await;
        let old_kid = idp.current_kid(KeyFamily::Rsa);
        let token = idp.token(Algorithm::RS256);
        for _ in 0..2 {
            assert_eq!(auth.outcome(&token).await, Ok(()));
        }
        assert_eq!(auth.cache_count("hit"), 1);

        idp.rotate(KeyFamily::Rsa);
        assert!(idp.retire(&old_kid));
        // A token of the new key makes the key set be fetched again.
        let fresh = idp.token(Algorithm::RS256);
        assert_eq!(auth.outcome(&fresh).await, Ok(()));

        let refused = auth.outcome(&token).await;
        assert_eq!(
            refused.map_err(|(reason, _)| reason),
            Err(RejectReason::TokenSignatureKeyNotFound)
        );
        assert_eq!(auth.cache_count("hit"), 1, "no hit for the retired key");
        assert_eq!(
            auth.cache_count("miss"),
            3,
            "the retired entry counts as a miss"
        );
    }

    /// Unknown `kid`s: one refetch for the first, none for its repeats (the negative cache) nor
    /// for other unknown kids within the cooldown; a rotated key is found with one refetch.
    #[tokio::test]
    async fn an_unknown_kid_costs_at_most_one_refetch() {
        let idp = IdentityProvider::start().await.expect("provider");
        let auth = fixture(jwks_policy(&idp, ""), 100).await;
        let fetched = idp.jwks_fetches();

        let rotated = idp.rotate(KeyFamily::Rsa);
        let token = idp.sign_with_kid(&rotated, Algorithm::RS256, &idp.claims());
        assert_eq!(auth.outcome(&token).await, Ok(()));
        assert_eq!(
            idp.jwks_fetches(),
            fetched + 1,
            "one refetch finds the new key"
        );

        let hidden = idp.add_unpublished_key(KeyFamily::Rsa);
        let unknown = idp.sign_with_kid(&hidden, Algorithm::RS256, &idp.claims());
        let made_up = idp.sign_with_header(
            &json!({"alg": "RS256", "kid": "made-up"}),
            &idp.claims(),
            SignWith::Current(Algorithm::RS256),
        );
        for token in [&unknown, &unknown, &made_up, &made_up] {
            assert_eq!(
                auth.outcome(token).await.map_err(|(reason, _)| reason),
                Err(RejectReason::TokenSignatureKeyNotFound)
            );
        }
        assert_eq!(
            idp.jwks_fetches(),
            fetched + 1,
            "within the cooldown, unknown kids fetch nothing"
        );
    }

    /// The amplification bound: a token without a kid where eight keys fit costs no signature
    /// check by default, and at most four with `keySelection: TryAll`; neither fetches keys.
    #[tokio::test]
    async fn tokens_without_a_kid_are_bounded_by_the_key_selection() {
        let idp = IdentityProvider::start().await.expect("provider");
        let first = idp.current_kid(KeyFamily::Rsa);
        let mut last = first.clone();
        for _ in 1..8 {
            last = idp.rotate(KeyFamily::Rsa);
        }
        let kid_less = |kid: &str| {
            idp.sign_with_header(
                &json!({"alg": "RS256", "typ": "JWT"}),
                &idp.claims(),
                SignWith::Kid(kid.to_owned(), Algorithm::RS256),
            )
        };

        let by_kid = fixture(jwks_policy(&idp, ""), 0).await;
        let fetched = idp.jwks_fetches();
        assert_eq!(
            by_kid.outcome(&kid_less(&first)).await,
            Err((
                RejectReason::TokenSignatureKeyNotFound,
                "the token has no kid and 8 keys verify RS256: keys are chosen by kid (keySelection ByKid)"
                    .into()
            ))
        );
        assert_eq!(idp.jwks_fetches(), fetched, "no refetch for a missing kid");

        let try_all = fixture(jwks_policy(&idp, "    keySelection: TryAll\n"), 0).await;
        let fetched = idp.jwks_fetches();
        assert_eq!(try_all.outcome(&kid_less(&first)).await, Ok(()));
        assert_eq!(
            try_all.outcome(&kid_less(&last)).await,
            Err((
                RejectReason::TokenSignatureInvalid,
                "signature does not verify with the 4 keys tried of 8 candidates (at most 4 are tried)"
                    .into()
            ))
        );
        assert_eq!(idp.jwks_fetches(), fetched);
    }

    /// A token whose key is in no key set we can reach is answered 503, not blamed: here one
    /// source is down and the other lacks the kid.
    #[tokio::test]
    async fn keys_unavailable_when_a_source_that_may_hold_the_key_is_down() {
        let up = IdentityProvider::start().await.expect("provider");
        let down = IdentityProvider::start().await.expect("provider");
        down.set_available(false);
        let two = fixture(
            policy(&format!(
                "  validateJwt:\n    jwksUris: [\"{}\", \"{}\"]\n",
                up.jwks_url(),
                down.jwks_url()
            )),
            0,
        )
        .await;
        assert_eq!(
            two.outcome(&up.token(Algorithm::RS256)).await,
            Ok(()),
            "the source that is up serves its keys"
        );
        let refused = two.outcome(&down.token(Algorithm::RS256)).await;
        let (reason, detail) = refused.expect_err("refused");
        assert_eq!(reason, RejectReason::KeysUnavailable);
        assert!(detail.contains(&down.jwks_url()), "{detail}");

        // With no source up at all, nothing is parsed: 503 at once.
        up.set_available(false);
        let nothing = fixture(jwks_policy(&up, ""), 0).await;
        assert_eq!(
            nothing.outcome("garbage").await.map_err(|(r, _)| r),
            Err(RejectReason::KeysUnavailable)
        );
    }
}
