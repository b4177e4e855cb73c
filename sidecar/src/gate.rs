//! The decision for one request: route, token, authentication, route claims.
//!
//! One function decides for both the proxy (`run`, which traces nothing) and `check` (which
//! traces every step to explain it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tokengate_keys::KeyCache;
use tokengate_policy::CompiledPolicy;
use tokengate_policy::routes::route;
use tokengate_policy::spec::Authentication;

pub use crate::active::ActivePolicy;
use crate::authenticate::Authenticator;
pub use crate::authenticate::{Startup, StartupMode};
use crate::extract::{ExtractedToken, extract};
use crate::reject::{RejectReason, Rejection, Stage, rejection_response};
use crate::token_cache::TokenCache;
use crate::trace::{NoTrace, Trace};
pub use crate::verify::unix_now;
use crate::verify::{VerifiedToken, claim_rejection};

/// What happens to a request.
pub enum Decision {
    /// Forwarded, as the permit says.
    Allow(Permit),
    /// Answered with the refusal.
    Deny(Refusal),
}

/// Proof that a request may pass: the policy that let it, and what it was let through on.
pub struct Permit {
    pub policy: Arc<ActivePolicy>,
    /// The token and what it proved; `None` when none was needed.
    pub token: Option<(ExtractedToken, Arc<VerifiedToken>)>,
    /// Which check let the request through, for metrics.
    pub basis: PermitBasis,
}

impl Permit {
    pub fn policy_name(&self) -> &str {
        &self.policy.policy.name
    }
}

/// A refused request: why, and under which policy (`None`: no policy selects this pod).
pub struct Refusal {
    pub policy: Option<Arc<ActivePolicy>>,
    pub rejection: Rejection,
}

impl Refusal {
    /// Empty when no policy applies.
    pub fn policy_name(&self) -> &str {
        self.policy
            .as_ref()
            .map_or("", |active| active.policy.name.as_str())
    }

    /// The response the client gets.
    pub fn response(&self) -> http::Response<Bytes> {
        let failed = self
            .policy
            .as_ref()
            .map(|active| &active.policy.failed_validation);
        rejection_response(&self.rejection, failed)
    }
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
    active: ArcSwapOption<ActivePolicy>,
    /// Policy versions applied so far (removals count too).
    versions: AtomicU64,
    authenticator: Authenticator,
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

    pub fn with(
        keys: Arc<KeyCache>,
        token_cache: TokenCache<VerifiedToken>,
        startup: Startup,
    ) -> Self {
        Self {
            active: ArcSwapOption::empty(),
            versions: AtomicU64::new(0),
            authenticator: Authenticator::new(keys, token_cache, startup),
        }
    }

    pub fn keys(&self) -> &Arc<KeyCache> {
        self.authenticator.keys()
    }

    pub fn token_cache(&self) -> &TokenCache<VerifiedToken> {
        self.authenticator.cache()
    }

    /// The policy in force.
    pub fn active(&self) -> Option<Arc<ActivePolicy>> {
        self.active.load_full()
    }

    /// Policy versions applied so far.
    pub fn version(&self) -> u64 {
        self.versions.load(Ordering::Relaxed)
    }

    /// Puts `policy` in force as the next version, with its key sources (whose fetching starts
    /// now if no other policy used them).
    pub fn apply_policy(&self, policy: CompiledPolicy) -> Arc<ActivePolicy> {
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let verification = &policy.verification;
        let sources = self
            .keys()
            .sources_for(&verification.remote_sources, verification.key_delivery);
        let active = Arc::new(ActivePolicy::new(policy, sources, version));
        self.active.store(Some(Arc::clone(&active)));
        active
    }

    /// Leaves no policy in force (every request is refused with `NoPolicy`); the version this
    /// counts as.
    pub fn remove_policy(&self) -> u64 {
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        self.active.store(None);
        version
    }

    /// Whether a policy is in force and can verify tokens.
    pub fn is_ready(&self) -> bool {
        self.active
            .load()
            .as_ref()
            .is_some_and(|active| active.keys_ready(self.keys()))
    }

    /// Judges a request against the policy in force.
    pub async fn decide(&self, parts: &http::request::Parts) -> Decision {
        self.decide_traced(parts, &mut NoTrace).await
    }

    /// [`decide`](Self::decide), reporting each step to `trace`.
    pub async fn decide_traced(
        &self,
        parts: &http::request::Parts,
        trace: &mut dyn Trace,
    ) -> Decision {
        let Some(policy) = self.active() else {
            let rejection = Rejection::new(RejectReason::NoPolicy, "no policy selects this pod");
            trace.step("decision", false, format_args!("{rejection}"));
            return Decision::Deny(Refusal {
                policy: None,
                rejection,
            });
        };
        match self.judge(&policy, parts, trace).await {
            Ok((token, basis)) => {
                trace.step("decision", true, format_args!("{}", basis.as_str()));
                Decision::Allow(Permit {
                    policy,
                    token,
                    basis,
                })
            }
            Err(rejection) => {
                trace.step("decision", false, format_args!("{rejection}"));
                Decision::Deny(Refusal {
                    policy: Some(policy),
                    rejection,
                })
            }
        }
    }

    async fn judge(
        &self,
        active: &ActivePolicy,
        parts: &http::request::Parts,
        trace: &mut dyn Trace,
    ) -> Result<(Option<(ExtractedToken, Arc<VerifiedToken>)>, PermitBasis), Rejection> {
        let policy = &active.policy;
        let (method, path) = (parts.method.as_str(), parts.uri.path());
        let route = route(&policy.rules, method, path);
        trace.step(
            "route",
            true,
            format_args!(
                "{method} {path} -> {:?} ({})",
                route.authentication,
                RuleName(route.rule)
            ),
        );
        if route.authentication == Authentication::Disabled {
            return Ok((None, PermitBasis::AuthenticationDisabled));
        }
        let Some(extracted) = extract(&policy.extraction, &parts.headers, &parts.uri)? else {
            return match route.authentication {
                Authentication::Optional => Ok((None, PermitBasis::AnonymousOptional)),
                _ => Err(Rejection::new(RejectReason::TokenNotPresent, "")),
            };
        };
        trace.step(
            "token",
            true,
            format_args!("found in the {:?}", extracted.location),
        );
        let verified = self
            .authenticator
            .authenticate(active, &extracted.token, trace)
            .await?;
        for requirement in route.required_claims {
            if let Err(failure) = requirement.check(&verified.claims) {
                let mut rejection = claim_rejection(failure);
                rejection.stage = Stage::Authorization;
                return Err(rejection);
            }
            trace.step(
                "route claim",
                true,
                format_args!("{} satisfied", requirement.path.as_str()),
            );
        }
        Ok((Some((extracted, verified)), PermitBasis::TokenValid))
    }
}

/// The rule a route came from, for explanations.
struct RuleName(Option<usize>);

impl std::fmt::Display for RuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(i) => write!(f, "rules[{i}]"),
            None => f.write_str("no rule matched"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::metrics::Metrics;
    use crate::testing::{hmac_token, policy, request, secret_base64};

    /// A gate applying `policy` (keys in the policy only) with a token cache of `entries`.
    fn gate(policy: CompiledPolicy, entries: usize) -> Gate {
        let metrics = Metrics::new().expect("metrics");
        let keys = crate::testing::key_cache(&metrics);
        let gate = Gate::with(
            keys,
            TokenCache::new(entries, &metrics),
            Startup::new(StartupMode::FailClosed, Duration::ZERO),
        );
        gate.apply_policy(policy);
        gate
    }

    /// The decision on `GET path` with `token`: the permit's basis, or the refusal's reason
    /// and detail.
    async fn outcome(
        gate: &Gate,
        path: &str,
        token: Option<&str>,
    ) -> Result<&'static str, (RejectReason, String)> {
        match gate.decide(&request(path, token)).await {
            Decision::Allow(permit) => Ok(permit.basis.as_str()),
            Decision::Deny(refusal) => Err((refusal.rejection.reason, refusal.rejection.detail)),
        }
    }

    /// HMAC keys in the policy (no key sources), rules for every kind of route, claims copied
    /// into headers.
    fn routes_policy() -> CompiledPolicy {
        policy(&format!(
            "  validateJwt:\n    issuerSigningKeys: [{{id: k1, value: \"{}\"}}]\n    algorithms: [HS256]\n  forwarding:\n    claimsToHeaders: [{{claim: sub, header: X-User}}]\n  rules:\n    - {{paths: [\"/healthz\"], authentication: Disabled}}\n    - {{paths: [\"/public/*\"], authentication: Optional}}\n    - {{paths: [\"/admin/*\"], requiredClaims: [{{name: realm_access.roles, values: [admin]}}]}}\n",
            secret_base64(1)
        ))
    }

    fn token(roles: &[&str]) -> String {
        let now = unix_now() as u64;
        hmac_token(
            &json!({"alg": "HS256", "kid": "k1"}),
            &json!({"sub": "alice", "email": "alice@example.com", "name": "Alice",
                    "realm_access": {"roles": roles}, "iat": now, "exp": now + 60}),
            1,
        )
    }

    #[tokio::test]
    async fn no_policy_refuses_everything() {
        let gate = gate(routes_policy(), 0);
        gate.remove_policy();
        match gate.decide(&request("/healthz", None)).await {
            Decision::Deny(refusal) => {
                assert_eq!(refusal.rejection.reason, RejectReason::NoPolicy);
                assert_eq!(refusal.policy_name(), "");
                assert_eq!(refusal.response().status(), http::StatusCode::FORBIDDEN);
            }
            Decision::Allow(_) => panic!("allowed without a policy"),
        }
        assert_eq!(gate.version(), 2, "applying and removing are two versions");
    }

    #[tokio::test]
    async fn routes_decide_whether_a_token_is_needed() {
        let gate = gate(routes_policy(), 0);
        assert_eq!(
            outcome(&gate, "/healthz", Some("garbage")).await,
            Ok("AuthenticationDisabled")
        );
        assert_eq!(
            outcome(&gate, "/public/page", None).await,
            Ok("AnonymousOptional")
        );
        assert_eq!(
            outcome(&gate, "/public/page", Some("garbage"))
                .await
                .map_err(|(reason, _)| reason),
            Err(RejectReason::JwtInvalid),
            "a presented token must be valid on an optional route"
        );
        assert_eq!(
            outcome(&gate, "/orders", None).await,
            Err((RejectReason::TokenNotPresent, String::new()))
        );
        let mut basic = request("/orders", None);
        basic.headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Basic YTpi"),
        );
        match gate.decide(&basic).await {
            Decision::Deny(refusal) => {
                assert_eq!(refusal.rejection.reason, RejectReason::TokenSchemeInvalid)
            }
            Decision::Allow(_) => panic!("Basic credentials let through"),
        }
        assert_eq!(
            outcome(&gate, "/orders", Some(&token(&[]))).await,
            Ok("TokenValid")
        );
    }

    #[tokio::test]
    async fn route_claims_refuse_with_403_even_for_valid_tokens() {
        let gate = gate(routes_policy(), 100);
        for _ in 0..2 {
            // The second time from the cache: route claims are checked on every request.
            match gate
                .decide(&request("/admin/users", Some(&token(&["reader"]))))
                .await
            {
                Decision::Deny(refusal) => {
                    assert_eq!(
                        refusal.rejection.reason,
                        RejectReason::TokenClaimValueNotAllowed
                    );
                    assert_eq!(refusal.rejection.stage, Stage::Authorization);
                    let response = refusal.response();
                    assert_eq!(response.status(), http::StatusCode::FORBIDDEN);
                    assert!(
                        response.headers()[http::header::WWW_AUTHENTICATE]
                            .to_str()
                            .is_ok_and(|challenge| challenge.contains("insufficient_scope"))
                    );
                }
                Decision::Allow(_) => panic!("admin route without the admin role"),
            }
        }
        assert_eq!(
            outcome(&gate, "/admin/users", Some(&token(&["admin"]))).await,
            Ok("TokenValid")
        );
    }

    /// The permit carries its policy and, of the token's claims, only those route rules and
    /// headers read.
    #[tokio::test]
    async fn a_permit_carries_the_policy_and_the_claims_it_needs() {
        let gate = gate(routes_policy(), 100);
        let token = token(&["admin"]);
        for _ in 0..2 {
            let Decision::Allow(permit) = gate.decide(&request("/admin/x", Some(&token))).await
            else {
                panic!("refused");
            };
            assert_eq!(permit.policy_name(), "unit");
            assert_eq!(permit.basis, PermitBasis::TokenValid);
            let (extracted, verified) = permit.token.expect("token");
            assert_eq!(extracted.token, token);
            let names: Vec<&str> = verified.claims.keys().map(String::as_str).collect();
            assert_eq!(names, ["realm_access", "sub"]);
            assert_eq!(
                verified.times.expires_at.map(|exp| exp > unix_now()),
                Some(true)
            );
        }
        assert_eq!(gate.token_cache().len(), 1);
    }

    /// `check` sees every step through the same decision function.
    #[tokio::test]
    async fn a_tracer_sees_each_step() {
        struct Steps(Vec<String>);
        impl Trace for Steps {
            fn step(
                &mut self,
                check: &'static str,
                passed: bool,
                message: std::fmt::Arguments<'_>,
            ) {
                self.0.push(format!("{check} {passed}: {message}"));
            }
        }
        let gate = gate(routes_policy(), 0);
        let mut steps = Steps(Vec::new());
        let decision = gate
            .decide_traced(&request("/admin/x", Some(&token(&["admin"]))), &mut steps)
            .await;
        assert!(matches!(decision, Decision::Allow(_)));
        let checks: Vec<&str> = steps
            .0
            .iter()
            .map(|step| step.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(
            checks,
            [
                "route",
                "token",
                "format",
                "algorithm",
                "signature",
                "exp",
                "iat",
                "issuer",
                "audience",
                "route",
                "decision"
            ]
        );
        assert_eq!(
            steps.0[0],
            "route true: GET /admin/x -> Required (rules[2])"
        );
        assert_eq!(
            steps.0.last().map(String::as_str),
            Some("decision true: TokenValid")
        );
    }
}
