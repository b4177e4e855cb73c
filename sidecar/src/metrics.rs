//! The sidecar's Prometheus metrics, in one explicit registry.
//!
//! Label values stay bounded: policy names, reason codes, key-source URLs from the policy;
//! never subjects, tokens or paths.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use tokengate_keys::KeyMetrics;

use crate::gate::PermitBasis;
use crate::reject::RejectReason;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: Histogram,
    pub token_cache: IntCounterVec,
    /// Key-fetch metrics, owned by the key cache, served here.
    pub keys: Arc<KeyMetrics>,
    pub policy_reloads: IntCounterVec,
    pub policy_generation: IntGauge,
    /// 1 for each policy that also selects this pod but is not applied (the conflict), with
    /// the one applied instead; empty when there is no conflict.
    pub policy_conflicts: IntGaugeVec,
    /// Client connections open on the proxy port.
    pub connections: IntGauge,
    /// Client connections the sidecar closed itself, by reason.
    pub connections_closed: IntCounterVec,
    /// With `--require-pod-firewall`: 1 for the pod firewall's current state (`in_place` or
    /// `missing`), 0 for the other; no series without it.
    pub pod_firewall: IntGaugeVec,
    /// The request series of the policy in force, resolved once per policy rather than looked
    /// up by label values on every request.
    decisions: ArcSwapOption<PolicyDecisions>,
}

/// `tokengate_requests_total` and `tokengate_request_duration_seconds` of one policy, one handle
/// per label set. A handle is resolved the first time its series is used, so /metrics shows only
/// series that happened, as with per-request lookups.
struct PolicyDecisions {
    policy: String,
    allowed: [OnceLock<IntCounter>; PERMIT_BASES],
    denied: [OnceLock<IntCounter>; RejectReason::ALL.len()],
    allowed_duration: OnceLock<Histogram>,
    denied_duration: OnceLock<Histogram>,
}

const PERMIT_BASES: usize = 3;

fn permit_index(basis: PermitBasis) -> usize {
    match basis {
        PermitBasis::TokenValid => 0,
        PermitBasis::AuthenticationDisabled => 1,
        PermitBasis::AnonymousOptional => 2,
    }
}

impl PolicyDecisions {
    fn new(policy: &str) -> Self {
        Self {
            policy: policy.to_owned(),
            allowed: Default::default(),
            denied: Default::default(),
            allowed_duration: OnceLock::new(),
            denied_duration: OnceLock::new(),
        }
    }
}

/// Validation takes microseconds; the buckets resolve that range and the slow tail of a key
/// fetch on an unknown `kid`.
const VALIDATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tokengate_requests_total",
                "Requests judged, by policy, decision and reason",
            ),
            &["policy", "decision", "reason"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "tokengate_request_duration_seconds",
                "Time spent deciding on a request (extraction and validation)",
            )
            .buckets(VALIDATION_BUCKETS.to_vec()),
            &["policy", "decision"],
        )?;
        let upstream_duration = Histogram::with_opts(HistogramOpts::new(
            "tokengate_upstream_duration_seconds",
            "Time from forwarding a request to the application's response headers",
        ))?;
        let token_cache = IntCounterVec::new(
            Opts::new(
                "tokengate_token_cache_total",
                "Verified-token cache lookups, by result",
            ),
            &["result"],
        )?;
        let policy_reloads = IntCounterVec::new(
            Opts::new("tokengate_policy_reloads_total", "Policy loads, by result"),
            &["result"],
        )?;
        let policy_generation = IntGauge::new(
            "tokengate_policy_generation",
            "Number of policy versions applied since start",
        )?;
        let policy_conflicts = IntGaugeVec::new(
            Opts::new(
                "tokengate_policy_conflicts",
                "Policies that also select this pod but are not applied, with the one applied",
            ),
            &["applied", "ignored"],
        )?;
        let connections = IntGauge::new(
            "tokengate_connections",
            "Client connections open on the proxy port",
        )?;
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "tokengate_connections_closed_total",
                "Client connections closed by the sidecar: first_request_timeout, idle_timeout, or shed (over the connection limit)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(token_cache.clone()))?;
        let keys = Arc::new(KeyMetrics::register(&registry)?);
        registry.register(Box::new(policy_reloads.clone()))?;
        registry.register(Box::new(policy_generation.clone()))?;
        registry.register(Box::new(policy_conflicts.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(connections_closed.clone()))?;
        let pod_firewall = IntGaugeVec::new(
            Opts::new(
                "tokengate_pod_firewall",
                "The pod firewall's rules, as the sidecar last found them (required pods only)",
            ),
            &["state"],
        )?;
        registry.register(Box::new(pod_firewall.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            token_cache,
            keys,
            policy_reloads,
            policy_generation,
            policy_conflicts,
            connections,
            connections_closed,
            pod_firewall,
            decisions: ArcSwapOption::empty(),
        })
    }

    /// Counts a request of `policy` let through on `basis`, and the time its decision took.
    pub fn record_allowed(&self, policy: &str, basis: PermitBasis, seconds: f64) {
        self.with_decisions(policy, |decisions| {
            decisions.allowed[permit_index(basis)]
                .get_or_init(|| {
                    self.requests
                        .with_label_values(&[policy, "allow", basis.as_str()])
                })
                .inc();
            decisions
                .allowed_duration
                .get_or_init(|| self.request_duration.with_label_values(&[policy, "allow"]))
                .observe(seconds);
        });
    }

    /// Counts a request of `policy` refused for `reason`, and the time its decision took.
    pub fn record_denied(&self, policy: &str, reason: RejectReason, seconds: f64) {
        self.with_decisions(policy, |decisions| {
            let counter = || {
                self.requests
                    .with_label_values(&[policy, "deny", reason.as_str()])
            };
            // `ALL` lists the reasons in declaration order.
            match decisions.denied.get(reason as usize) {
                Some(handle) => handle.get_or_init(counter).inc(),
                None => counter().inc(),
            }
            decisions
                .denied_duration
                .get_or_init(|| self.request_duration.with_label_values(&[policy, "deny"]))
                .observe(seconds);
        });
    }

    /// Runs `record` with the handles of `policy`, starting a new set when the policy in force
    /// is another than the last request's.
    fn with_decisions(&self, policy: &str, record: impl FnOnce(&PolicyDecisions)) {
        let current = self.decisions.load();
        match current.as_deref() {
            Some(decisions) if decisions.policy == policy => record(decisions),
            _ => {
                drop(current);
                let decisions = Arc::new(PolicyDecisions::new(policy));
                record(&decisions);
                self.decisions.store(Some(decisions));
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        tokengate_runtime::metrics::encode_text(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_handle() {
        for (index, reason) in RejectReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index, "{reason}");
        }
    }

    #[test]
    fn requests_are_counted_by_policy_and_label_set() {
        let metrics = Metrics::new().expect("metrics");
        metrics.record_allowed("a", PermitBasis::TokenValid, 0.001);
        metrics.record_allowed("a", PermitBasis::TokenValid, 0.002);
        metrics.record_denied("a", RejectReason::TokenExpired, 0.001);
        // Another policy in force, then the first again.
        metrics.record_allowed("b", PermitBasis::AuthenticationDisabled, 0.001);
        metrics.record_denied("a", RejectReason::TokenExpired, 0.001);
        let count = |labels: &[&str]| metrics.requests.with_label_values(labels).get();
        assert_eq!(count(&["a", "allow", "TokenValid"]), 2);
        assert_eq!(count(&["a", "deny", "TokenExpired"]), 2);
        assert_eq!(count(&["b", "allow", "AuthenticationDisabled"]), 1);
        let observed = |labels: &[&str]| {
            metrics
                .request_duration
                .with_label_values(labels)
                .get_sample_count()
        };
        assert_eq!(observed(&["a", "allow"]), 2);
        assert_eq!(observed(&["a", "deny"]), 2);
        assert_eq!(observed(&["b", "allow"]), 1);
    }

    #[test]
    fn series_that_never_happened_are_not_exposed() {
        let metrics = Metrics::new().expect("metrics");
        metrics.record_denied("a", RejectReason::TokenExpired, 0.001);
        let text = metrics.render();
        assert!(text.contains("reason=\"TokenExpired\""), "{text}");
        assert!(!text.contains("TokenSignatureInvalid"), "{text}");
        assert!(!text.contains("decision=\"allow\""), "{text}");
    }
}
