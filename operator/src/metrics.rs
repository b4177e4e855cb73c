//! The operator's Prometheus metrics, in one explicit registry (names in DESIGN.md).

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// `result`: `success`, or the failure's [`crate::error::Error::metric_label`]
    /// (`api_error`, `render_error`, `encode_error`, `timeout`).
    pub reconcile: IntCounterVec,
    pub reconcile_duration: Histogram,
    /// TokenPolicies per namespace.
    pub policies: IntGaugeVec,
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
        Ok(Self {
            registry,
            reconcile,
            reconcile_duration,
            policies,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(error = %err, "encoding metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
