//! tokengate's key cache: remote key sets (OIDC discovery, then `jwks_uri`, or a JWKS URL)
//! fetched once per process and shared (or delivered by the operator through the bundle), refreshed in the background, refetched on an unknown
//! `kid`, kept while refreshes fail; TLS roots for those fetches; and their metrics. Used by the
//! sidecar to verify tokens and by the operator to report `KeysResolved`.

pub mod cache;
pub mod delivery;
pub mod metrics;
mod tls;

pub use cache::{
    KeyCache, KeyChoice, KeySettings, KeyView, MAX_KEYS_TRIED, Source, SourceKeys, user_agent,
};
pub use metrics::KeyMetrics;
pub use tls::https_connector;
