//! The policy in force and the key sources it uses.

use std::sync::Arc;

use tokengate_keys::{KeyCache, KeyView, Source};
use tokengate_policy::CompiledPolicy;

/// The policy in force, with the key sources it uses. Swapped whole on reload, so a request
/// sees one version from start to end.
pub struct ActivePolicy {
    pub policy: CompiledPolicy,
    pub sources: Vec<Arc<Source>>,
    /// Counts applied policies since start.
    pub version: u64,
    /// The top-level claims read after verification: by route `requiredClaims` and by
    /// `claimsToHeaders`. A verified token keeps only these.
    kept_claims: Vec<String>,
}

impl ActivePolicy {
    pub fn new(policy: CompiledPolicy, sources: Vec<Arc<Source>>, version: u64) -> Self {
        let route_claims = policy
            .rules
            .iter()
            .flat_map(|rule| &rule.required_claims)
            .map(|requirement| &requirement.path);
        let header_claims = policy
            .claims_to_headers
            .iter()
            .map(|mapping| &mapping.claim);
        let mut kept_claims: Vec<String> = route_claims
            .chain(header_claims)
            .flat_map(|path| path.top_level_names())
            .map(str::to_owned)
            .collect();
        kept_claims.sort();
        kept_claims.dedup();
        Self {
            policy,
            sources,
            version,
            kept_claims,
        }
    }

    /// See [`VerifiedToken::keep_claims`](crate::verify::VerifiedToken::keep_claims).
    pub fn kept_claims(&self) -> &[String] {
        &self.kept_claims
    }

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

    /// Whether some key source has no usable keys (never fetched, or stale beyond the limit).
    pub fn has_unavailable_source(&self, keys: &KeyCache) -> bool {
        let max_stale = keys.settings().max_stale;
        self.sources
            .iter()
            .any(|source| source.current(max_stale).is_none())
    }
}
