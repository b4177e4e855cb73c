//! Key-fetch metrics, registered into the registry of the process that owns the key cache (the
//! sidecar's, or the operator's, which fetches the same sources to report `KeysResolved`).

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

pub struct KeyMetrics {
    /// `tokengate_jwks_fetch_total{source,result}`
    pub jwks_fetch: IntCounterVec,
    /// `tokengate_keys{source}`
    pub keys: IntGaugeVec,
    /// `tokengate_keys_fetched_timestamp_seconds{source}`: when the keys held were fetched, so
    /// their age is `time() - ` this.
    pub fetched: GaugeVec,
    /// `tokengate_keys_delivered_total{source}`: key sets taken from the operator's bundle.
    pub delivered: IntCounterVec,
}

impl KeyMetrics {
    /// Creates the key metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let jwks_fetch = IntCounterVec::new(
            Opts::new(
                "tokengate_jwks_fetch_total",
                "Key set fetches, by source and result",
            ),
            &["source", "result"],
        )?;
        let keys = IntGaugeVec::new(
            Opts::new("tokengate_keys", "Usable verification keys held, by source"),
            &["source"],
        )?;
        let fetched = GaugeVec::new(
            Opts::new(
                "tokengate_keys_fetched_timestamp_seconds",
                "Unix time of the last successful fetch of the keys held, by source",
            ),
            &["source"],
        )?;
        let delivered = IntCounterVec::new(
            Opts::new(
                "tokengate_keys_delivered_total",
                "Key sets taken from the operator's bundle instead of fetched, by source",
            ),
            &["source"],
        )?;
        registry.register(Box::new(jwks_fetch.clone()))?;
        registry.register(Box::new(delivered.clone()))?;
        registry.register(Box::new(keys.clone()))?;
        registry.register(Box::new(fetched.clone()))?;
        Ok(Self {
            jwks_fetch,
            keys,
            fetched,
            delivered,
        })
    }

    /// Metrics registered nowhere, for one-shot uses such as `check`.
    pub fn unregistered() -> Result<Self, prometheus::Error> {
        Self::register(&Registry::new())
    }
}
