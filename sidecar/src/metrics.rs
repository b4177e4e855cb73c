//! The sidecar's Prometheus metrics, in one explicit registry.
//!
//! Label values stay bounded: policy names, reason codes, key-source URLs from the policy;
//! never subjects, tokens or paths.

use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use tokengate_keys::KeyMetrics;

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
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        tokengate_runtime::metrics::encode_text(&self.registry)
    }
}
