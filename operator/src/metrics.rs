//! The operator's Prometheus metrics, in one explicit registry (names in DESIGN.md).

use std::sync::Arc;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
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
    /// Admission reviews answered, by `webhook` (`inject`, `validate`) and `result`
    /// (`injected`, `skipped`, `allowed`, `denied`, `error`).
    pub admission: IntCounterVec,
    /// Time from request to answer inside the webhook, by `webhook`.
    pub admission_duration: HistogramVec,
    /// When the webhook's serving certificate expires (Unix seconds; self-managed mode).
    pub webhook_certificate_expiry: IntGauge,
    /// Time from the fetch that found a changed key set to a namespace's bundle carrying it.
    pub key_delivery: Histogram,
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
        let admission = IntCounterVec::new(
            Opts::new(
                "tokengate_admission_total",
                "Admission reviews answered, by webhook and result",
            ),
            &["webhook", "result"],
        )?;
        let admission_duration = HistogramVec::new(
            HistogramOpts::new(
                "tokengate_admission_duration_seconds",
                "Time to answer one admission review inside the webhook",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["webhook"],
        )?;
        let webhook_certificate_expiry = IntGauge::new(
            "tokengate_webhook_certificate_expiry_timestamp_seconds",
            "When the webhook's serving certificate expires (Unix seconds)",
        )?;
        registry.register(Box::new(admission.clone()))?;
        registry.register(Box::new(admission_duration.clone()))?;
        registry.register(Box::new(webhook_certificate_expiry.clone()))?;
        let key_delivery = Histogram::with_opts(
            HistogramOpts::new(
                "tokengate_key_delivery_seconds",
                "Time from the fetch that found a changed key set (a rotation) to a namespace's \
                 bundle carrying it",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        )?;
        registry.register(Box::new(key_delivery.clone()))?;
        Ok(Self {
            registry,
            reconcile,
            reconcile_duration,
            policies,
            keys,
            admission,
            admission_duration,
            webhook_certificate_expiry,
            key_delivery,
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
