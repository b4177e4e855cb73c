//! The decision for one request: route, token, verification, route claims.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use tokengate_policy::CompiledPolicy;
use tokengate_policy::routes::route;
use tokengate_policy::spec::Authentication;

use crate::extract::{ExtractedToken, extract};
use crate::keyset::{KeyCache, KeyView, Source};
use crate::reject::{RejectReason, Rejection};
use crate::verify::{NoTrace, Trace, VerifiedToken, claim_rejection, verify};

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
    pub token: Option<(ExtractedToken, VerifiedToken)>,
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

pub struct Gate {
    pub active: ArcSwapOption<ActivePolicy>,
    pub keys: Arc<KeyCache>,
    /// Policy versions applied so far.
    pub versions: AtomicU64,
}

impl Gate {
    pub fn new(keys: Arc<KeyCache>) -> Self {
        Self {
            active: ArcSwapOption::empty(),
            keys,
            versions: AtomicU64::new(0),
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
        let verified = self.verify(active, &extracted.token, &mut NoTrace).await?;
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

    /// Verifies a token, refetching key sets once when it names a key none of them holds.
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
        if self.keys.refetch_for_unknown_kid(&active.sources).await {
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

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
