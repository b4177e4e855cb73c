//! The operator's Prometheus metrics, in one explicit registry (names in DESIGN.md).

use std::sync::Arc;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokengate_keys::KeyMetrics;

pub struct Metrics {
    registry: Registry,
    /// `result`: `success`, or the failure's [`crate::error::Error::metric_label`]
    /// (`api_error`, `render_error`, `encode_error`, `timeout`).
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokengate_keys::{KeyCache, KeySettings};
    use tokengate_policy::RemoteKeySource;
    use tokengate_testkit::idp::IdentityProvider;

    /// The fetches behind `KeysResolved` show on the operator's own `/metrics`.
    #[tokio::test]
    async fn key_fetches_are_served_with_the_operator_metrics() {
        let idp = IdentityProvider::start().await.expect("identity provider");
        let metrics = Metrics::new().expect("metrics");
        let keys = KeyCache::new(KeySettings::default(), Arc::clone(&metrics.keys), None)
            .expect("key cache");
        let sources = keys.sources(&[RemoteKeySource::Discovery(idp.discovery_url())]);
        keys.fetch_all(&sources).await;
        let text = metrics.render();
        let fetched = format!(
            "tokengate_jwks_fetch_total{{result=\"success\",source=\"{}\"}}",
            idp.discovery_url()
        );
        assert!(text.contains(&fetched), "{text}");
        assert!(text.contains("tokengate_keys{source="), "{text}");
    }
}
