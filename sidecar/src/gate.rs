//! The decision for one request: route, token, verification, route claims.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokengate_policy::CompiledPolicy;
use tokengate_policy::routes::route;
use tokengate_policy::spec::Authentication;

use crate::extract::{ExtractedToken, extract};
use crate::reject::{RejectReason, Rejection};
use crate::token_cache::{Lookup, TokenCache};
use crate::verify::{NoTrace, Trace, VerifiedToken, claim_rejection, verify};
use tokengate_keys::{KeyCache, KeyView, Source};

/// The policy in force, with the key sources it uses. Swapped whole on reload, so a request
/// sees one version from start to end.
pub struct ActivePolicy {
    pub policy: CompiledPolicy,
    pub sources: Vec<Arc<Source>>,
    /// Counts applied policies since start.
    pub version: u64,
}

impl ActivePolicy {
    pub fn key_view(&self, keys: &KeyCache) -> KeyView<'_> {
        let max_stale = keys.settings().max_stale;
        KeyView {
            static_keys: &self.policy.verification.static_keys,
            remote: self
                .sources
                .iter()
                .filter_map(|source| source.current(max_stale))
                .collect(),
        }
    }

    /// Ready when some key can verify tokens (or the policy needs none).
    pub fn keys_ready(&self, keys: &KeyCache) -> bool {
        let verification = &self.policy.verification;
        !self.key_view(keys).is_empty()
            || (verification.allow_unsigned && verification.algorithms.is_empty())
    }
}

/// What a permitted request carries forward.
pub struct Permit {
    pub token: Option<(ExtractedToken, Arc<VerifiedToken>)>,
    /// Which check let the request through, for metrics.
    pub basis: PermitBasis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermitBasis {
    TokenValid,
    AuthenticationDisabled,
    AnonymousOptional,
}

impl PermitBasis {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenValid => "TokenValid",
            Self::AuthenticationDisabled => "AuthenticationDisabled",
            Self::AnonymousOptional => "AnonymousOptional",
        }
    }
}

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

pub struct Gate {
    pub active: ArcSwapOption<ActivePolicy>,
    pub keys: Arc<KeyCache>,
    /// Policy versions applied so far.
    pub versions: AtomicU64,
    pub token_cache: TokenCache,
    pub startup: Startup,
}

impl Gate {
    /// A gate without token cache that refuses requests at once until keys arrive.
    pub fn new(keys: Arc<KeyCache>) -> Self {
        Self::with(
            keys,
            TokenCache::disabled(),
            Startup::new(StartupMode::FailClosed, Duration::ZERO),
        )
    }

    pub fn with(keys: Arc<KeyCache>, token_cache: TokenCache, startup: Startup) -> Self {
        Self {
            active: ArcSwapOption::empty(),
            keys,
            versions: AtomicU64::new(0),
            token_cache,
            startup,
        }
    }

    /// Judges a request against the active policy.
    pub async fn decide(
        &self,
        parts: &http::request::Parts,
    ) -> (Option<Arc<ActivePolicy>>, Result<Permit, Rejection>) {
        let Some(active) = self.active.load_full() else {
            return (
                None,
                Err(Rejection::new(
                    RejectReason::NoPolicy,
                    "no policy selects this pod",
                )),
            );
        };
        let decision = self.decide_with(&active, parts).await;
        (Some(active), decision)
    }

    async fn decide_with(
        &self,
        active: &ActivePolicy,
        parts: &http::request::Parts,
    ) -> Result<Permit, Rejection> {
        let policy = &active.policy;
        let route = route(&policy.rules, parts.method.as_str(), parts.uri.path());
        if route.authentication == Authentication::Disabled {
            return Ok(Permit {
                token: None,
                basis: PermitBasis::AuthenticationDisabled,
            });
        }
        let Some(extracted) = extract(&policy.extraction, &parts.headers, &parts.uri)? else {
            return match route.authentication {
                Authentication::Optional => Ok(Permit {
                    token: None,
                    basis: PermitBasis::AnonymousOptional,
                }),
                _ => Err(Rejection::new(RejectReason::TokenNotPresent, "")),
            };
        };
        let verified = self.verify_cached(active, &extracted.token).await?;
        for requirement in route.required_claims {
            requirement.check(&verified.claims).map_err(|failure| {
                let mut rejection = claim_rejection(failure);
                rejection.stage = crate::reject::Stage::Authorization;
                rejection
            })?;
        }
        Ok(Permit {
            token: Some((extracted, verified)),
            basis: PermitBasis::TokenValid,
        })
    }

    /// Verifies a token through the verified-token cache.
    pub async fn verify_cached(
        &self,
        active: &ActivePolicy,
        token: &str,
    ) -> Result<Arc<VerifiedToken>, Rejection> {
        self.startup.wait_for_keys(active, &self.keys).await;
        let key = {
            let view = active.key_view(&self.keys);
            let rules = &active.policy.verification;
            match self
                .token_cache
                .lookup(active.version, token, rules, &view, unix_now())
            {
                Lookup::Hit(verified) => return Ok(verified),
                Lookup::Refused(rejection) => return Err(rejection),
                Lookup::Miss(key) => key,
            }
        };
        let verified = Arc::new(self.verify(active, token, &mut NoTrace).await?);
        if let Some(key) = key {
            self.token_cache.insert(key, Arc::clone(&verified));
        }
        Ok(verified)
    }

    /// Verifies a token, refetching key sets once when it names a key none of them holds
    /// (unless every source already found that key missing within the cooldown).
    pub async fn verify(
        &self,
        active: &ActivePolicy,
        token: &str,
        trace: &mut dyn Trace,
    ) -> Result<VerifiedToken, Rejection> {
        let rules = &active.policy.verification;
        let now = unix_now();
        {
            let view = active.key_view(&self.keys);
            if view.is_empty() && !active.sources.is_empty() {
                return Err(self.keys_unavailable(active));
            }
            match verify(token, rules, &view, now, trace) {
                Err(rejection)
                    if rejection.reason == RejectReason::TokenSignatureKeyNotFound
                        && !active.sources.is_empty() => {}
                other => return other,
            }
        }
        let kid = token_kid(token);
        let known_unknown = kid
            .as_deref()
            .is_some_and(|kid| self.keys.is_known_unknown(&active.sources, kid));
        if !known_unknown
            && self
                .keys
                .refetch_for_unknown_kid(&active.sources, kid.as_deref())
                .await
        {
            let view = active.key_view(&self.keys);
            let result = verify(token, rules, &view, now, trace);
            if !matches!(&result, Err(r) if r.reason == RejectReason::TokenSignatureKeyNotFound) {
                return result;
            }
        }
        // The key may live in a source we cannot reach: say so rather than blame the token.
        let max_stale = self.keys.settings().max_stale;
        if active
            .sources
            .iter()
            .any(|s| s.current(max_stale).is_none())
        {
            return Err(self.keys_unavailable(active));
        }
        let view = active.key_view(&self.keys);
        verify(token, rules, &view, now, trace)
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

/// The `kid` of a token's header, read without trusting it (only to find keys).
fn token_kid(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(header).ok()?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes).ok()?;
    header.get("kid")?.as_str().map(str::to_owned)
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
