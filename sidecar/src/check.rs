//! `tokengate-sidecar check`: the decision for one token, explained check by check.

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokengate_policy::CompiledPolicy;
use tokengate_policy::entra::{EntraRules, TenantRule};
use tokengate_policy::routes::route;
use tokengate_policy::spec::Authentication;

use crate::gate::{ActivePolicy, Gate};
use crate::reject::{Rejection, Stage, rejection_response};
use crate::verify::{Trace, claim_rejection};
use tokengate_keys::KeyCache;

/// Collects the checks as lines of text.
#[derive(Default)]
pub struct Explanation {
    pub lines: Vec<String>,
}

impl Trace for Explanation {
    fn step(&mut self, check: &'static str, passed: bool, message: String) {
        let mark = if passed { "pass" } else { "FAIL" };
        self.lines.push(format!("  [{mark}] {check}: {message}"));
    }
}

/// The outcome of `check`, printed as text; `allowed` sets the exit code.
pub struct CheckReport {
    pub allowed: bool,
    pub text: String,
}

/// Judges `token` as the proxy would for `method path`, fetching the policy's keys first.
pub async fn check(
    policy: CompiledPolicy,
    keys: Arc<KeyCache>,
    token: &str,
    method: &str,
    path: &str,
) -> CheckReport {
    let mut text = String::new();
    let _ = writeln!(text, "policy: {}", policy.name);
    let sources = keys.sources(&policy.verification.remote_sources);
    keys.fetch_all(&sources).await;
    let active = ActivePolicy {
        policy,
        sources,
        version: 0,
    };
    let _ = writeln!(
        text,
        "keys: {} static",
        active.policy.verification.static_keys.len()
    );
    let max_stale = keys.settings().max_stale;
    for source in &active.sources {
        match source.current(max_stale) {
            Some(k) => {
                let kids: Vec<&str> = k.keys.iter().filter_map(|key| key.kid.as_deref()).collect();
                let _ = writeln!(
                    text,
                    "  {}: {} keys [{}]",
                    source.id,
                    k.keys.len(),
                    kids.join(", ")
                );
                if let Some(issuer) = &k.issuer {
                    let _ = writeln!(text, "    issuer {issuer}");
                }
            }
            None => {
                let _ = writeln!(
                    text,
                    "  {}: unavailable: {}",
                    source.id,
                    source.last_error().unwrap_or_else(|| "not fetched".into())
                );
            }
        }
    }
    if let Some(entra) = &active.policy.verification.entra {
        let discovery_issuer = active
            .sources
            .iter()
            .find_map(|source| source.current(max_stale)?.issuer.clone());
        describe_entra(
            &mut text,
            entra,
            &active.policy.verification.audiences,
            discovery_issuer.as_deref(),
        );
    }
    describe_token(&mut text, token);

    let route = route(&active.policy.rules, method, path);
    let rule = route
        .rule
        .map_or_else(|| "no rule matched".to_owned(), |i| format!("rules[{i}]"));
    let _ = writeln!(
        text,
        "route: {method} {path} -> {:?} ({rule})",
        route.authentication
    );
    if route.authentication == Authentication::Disabled {
        let _ = writeln!(
            text,
            "decision: ALLOW (authentication disabled on this route)"
        );
        return CheckReport {
            allowed: true,
            text,
        };
    }

    let gate = Gate::new(Arc::clone(&keys));
    let mut explanation = Explanation::default();
    let mut result = gate.verify(&active, token, &mut explanation).await;
    if let Ok(verified) = &result {
        for requirement in route.required_claims {
            if let Err(failure) = requirement.check(&verified.claims) {
                let mut rejection = claim_rejection(failure);
                rejection.stage = Stage::Authorization;
                explanation.step("route claim", false, rejection.to_string());
                result = Err(rejection);
                break;
            }
            explanation.step(
                "route claim",
                true,
                format!("{} satisfied", requirement.path.as_str()),
            );
        }
    }
    text.push_str("checks:\n");
    for line in &explanation.lines {
        text.push_str(line);
        text.push('\n');
    }
    match result {
        Ok(_) => {
            let _ = writeln!(text, "decision: ALLOW");
            CheckReport {
                allowed: true,
                text,
            }
        }
        Err(rejection) => {
            describe_rejection(&mut text, &rejection, &active);
            CheckReport {
                allowed: false,
                text,
            }
        }
    }
}

fn describe_rejection(text: &mut String, rejection: &Rejection, active: &ActivePolicy) {
    let response = rejection_response(rejection, Some(&active.policy.failed_validation));
    let _ = writeln!(
        text,
        "decision: DENY {} ({})",
        rejection.reason, rejection.detail
    );
    let _ = writeln!(text, "response: HTTP {}", response.status().as_u16());
    if let Some(challenge) = response.headers().get(http::header::WWW_AUTHENTICATE)
        && let Ok(challenge) = challenge.to_str()
    {
        let _ = writeln!(text, "  WWW-Authenticate: {challenge}");
    }
}

/// What an Entra policy accepts, so a refusal can be read against it.
fn describe_entra(
    text: &mut String,
    entra: &EntraRules,
    audiences: &[String],
    discovery_issuer: Option<&str>,
) {
    let cloud = entra
        .authority
        .cloud
        .map_or_else(String::new, |name| format!(" ({name})"));
    let _ = writeln!(
        text,
        "entra: authority {}{cloud}, tenant {}",
        entra.authority.endpoint,
        entra.tenant.path_segment()
    );
    if let TenantRule::Multi { allowed, .. } = &entra.tenant
        && !allowed.is_empty()
    {
        let _ = writeln!(text, "  allowed tenants: {}", allowed.join(", "));
    }
    let resolved = entra.resolved_tenant(discovery_issuer);
    if let (TenantRule::Domain(domain), Some(id)) = (&entra.tenant, &resolved) {
        let _ = writeln!(text, "  {domain} is tenant {id}");
    }
    let _ = writeln!(
        text,
        "  accepted issuers: {}",
        entra.expected_issuers(resolved.as_deref())
    );
    let _ = writeln!(text, "  accepted audiences: {}", audiences.join(", "));
    let _ = writeln!(
        text,
        "  client applications (appid in v1.0, azp in v2.0): {}",
        entra.client_application_ids.join(", ")
    );
}

/// The token's header and claims, decoded without trusting them: the person running `check`
/// holds the token already.
fn describe_token(text: &mut String, token: &str) {
    let mut segments = token.split('.');
    for (label, segment) in [("header", segments.next()), ("claims", segments.next())] {
        let decoded = segment
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
        match decoded {
            Some(value) => {
                let _ = writeln!(text, "token {label} (unverified): {value}");
            }
            None => {
                let _ = writeln!(text, "token {label}: not decodable");
            }
        }
    }
}
