//! `tokengate-sidecar check`: the decision for one token, explained check by check.
//!
//! The token goes into a request as the policy's token header would carry it, and that request
//! is judged by the proxy's own decision function, with a tracer that writes each step down.

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokengate_policy::entra::{EntraRules, TenantRule};
use tokengate_policy::{CompiledPolicy, Extraction};

use crate::gate::{Decision, Gate, Refusal};
use crate::trace::Trace;
use tokengate_keys::KeyCache;

/// Collects the checks as lines of text.
#[derive(Default)]
pub struct Explanation {
    pub lines: Vec<String>,
}

impl Trace for Explanation {
    fn step(&mut self, check: &'static str, passed: bool, message: std::fmt::Arguments<'_>) {
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
    let gate = Gate::new(Arc::clone(&keys));
    let active = gate.apply_policy(policy);
    keys.fetch_all(&active.sources).await;
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

    let request = match request_carrying(&active.policy.extraction, token, method, path) {
        Ok(request) => request,
        Err(problem) => {
            let _ = writeln!(text, "decision: cannot form the request: {problem}");
            return CheckReport {
                allowed: false,
                text,
            };
        }
    };
    let mut explanation = Explanation::default();
    let decision = gate.decide_traced(&request, &mut explanation).await;
    text.push_str("checks:\n");
    for line in &explanation.lines {
        text.push_str(line);
        text.push('\n');
    }
    match decision {
        Decision::Allow(permit) => {
            let _ = writeln!(text, "decision: ALLOW ({})", permit.basis.as_str());
            CheckReport {
                allowed: true,
                text,
            }
        }
        Decision::Deny(refusal) => {
            describe_rejection(&mut text, &refusal);
            CheckReport {
                allowed: false,
                text,
            }
        }
    }
}

/// `method path` with the token where the policy reads it first: its header, after its scheme.
fn request_carrying(
    extraction: &Extraction,
    token: &str,
    method: &str,
    path: &str,
) -> Result<http::request::Parts, String> {
    let value = match &extraction.scheme {
        Some(scheme) => format!("{scheme} {token}"),
        None => token.to_owned(),
    };
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(extraction.header.as_str(), value)
        .body(())
        .map_err(|err| err.to_string())?;
    Ok(request.into_parts().0)
}

fn describe_rejection(text: &mut String, refusal: &Refusal) {
    let response = refusal.response();
    let _ = writeln!(
        text,
        "decision: DENY {} ({})",
        refusal.rejection.reason, refusal.rejection.detail
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
