//! Helpers for the unit tests: policies from YAML, requests, tokens made in-process, a key cache
//! fed by the test identity provider over real HTTP. Only leaf modules are used here, so that
//! no module's tests and these helpers import each other.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::Value;
use tokengate_keys::{KeyCache, KeySettings, Source};
use tokengate_policy::{CompiledPolicy, KeyFiles, compile, parse_documents};
use tokengate_testkit::idp::IdentityProvider;

use crate::metrics::Metrics;

struct NoFiles;

impl KeyFiles for NoFiles {
    fn read(&self, path: &str) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            path.to_owned(),
        ))
    }
}

/// A policy selecting `app: a`, with `spec` (indented by two spaces) as the rest of its spec.
pub fn policy(spec: &str) -> CompiledPolicy {
    let text = format!(
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {{name: unit}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n{spec}"
    );
    let document = parse_documents(&text).expect("policy parses").remove(0);
    compile(&document, &NoFiles).unwrap_or_else(|err| panic!("policy compiles: {err}"))
}

/// A 32-byte HMAC secret of `byte`, standard base64 (the policy's `value` form).
pub fn secret_base64(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// A compact JWS with exactly this header and payload, signed with the HMAC secret of `byte`.
pub fn hmac_token(header: &Value, claims: &Value, byte: u8) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let alg: Algorithm = header["alg"]
        .as_str()
        .and_then(|alg| alg.parse().ok())
        .unwrap_or(Algorithm::HS256);
    let key = EncodingKey::from_secret(&[byte; 32]).expect("HMAC key");
    let signature = jsonwebtoken::crypto::sign(signed.as_bytes(), &key, alg).expect("signs");
    format!("{signed}.{signature}")
}

/// `token` with its header replaced (the signature no longer covers it).
pub fn with_header(token: &str, header: &Value) -> String {
    let (_, rest) = token.split_once('.').expect("a compact token");
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
}

/// `GET path` carrying `token` as a bearer token.
pub fn request(path: &str, token: Option<&str>) -> http::request::Parts {
    let mut builder = http::Request::get(path);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(()).expect("request").into_parts().0
}

/// A key cache reporting into `metrics`, with the default timings.
pub fn key_cache(metrics: &Metrics) -> Arc<KeyCache> {
    KeyCache::new(KeySettings::default(), Arc::clone(&metrics.keys), None).expect("key cache")
}

/// Waits for the first fetch of every source (its refresher's), so that later fetches are the
/// ones a test causes.
pub async fn first_fetches(keys: &KeyCache, sources: &[Arc<Source>]) {
    let mut fetches = keys.fetch_events();
    let max_stale = keys.settings().max_stale;
    let fetched = || {
        sources
            .iter()
            .all(|source| source.current(max_stale).is_some() || source.last_error().is_some())
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while !fetched() {
            fetches.changed().await.expect("key cache alive");
        }
    })
    .await
    .expect("first fetch of every source within 20s");
}

/// A policy whose keys are the provider's JWKS, accepting its default audience.
pub fn jwks_policy(idp: &IdentityProvider, extra: &str) -> CompiledPolicy {
    policy(&format!(
        "  validateJwt:\n    jwksUris: [\"{}\"]\n    audiences: [\"{}\"]\n{extra}",
        idp.jwks_url(),
        tokengate_testkit::idp::DEFAULT_AUDIENCE
    ))
}

/// The count of `tokengate_token_cache_total{result}`.
pub fn cache_count(metrics: &Metrics, result: &str) -> u64 {
    metrics.token_cache.with_label_values(&[result]).get()
}
