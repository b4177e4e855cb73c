//! The operator's Prometheus metrics, in one explicit registry (names in DESIGN.md).

use std::sync::Arc;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokengate_keys::KeyMetrics;

pub struct Metrics {
    registry: Registry,
    /// `result`: `success` or `error`.
    pub reconcile: IntCounterVec,
    pub reconcile_duration: Histogram,
    /// TokenPolicies per namespace.
    pub policies: IntGaugeVec,
    /// Key fetches made to report `KeysResolved` (the same metrics as the sidecar's).
    pub keys: Arc<KeyMetrics>,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconcile = IntCounterVec::new(
            Opts::new(
                "tokengate_reconcile_total",
                "TokenPolicy reconciliations, by result",
            ),
            &["result"],
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tokengate_reconcile_duration_seconds",
                "Time to reconcile one TokenPolicy (render, apply, status)",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let policies = IntGaugeVec::new(
            Opts::new("tokengate_policies", "TokenPolicies, by namespace"),
            &["namespace"],
        )?;
        registry.register(Box::new(reconcile.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(policies.clone()))?;
        let keys = Arc::new(KeyMetrics::register(&registry)?);
        Ok(Self {
            registry,
            reconcile,
            reconcile_duration,
            policies,
            keys,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        tokengate_runtime::metrics::encode_text(&self.registry)
    }
}
