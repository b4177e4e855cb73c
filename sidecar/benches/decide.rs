//! Refusals per core: the whole decision for one request (route, extraction, token cache,
//! verification, key lookup) for the token shapes an unauthenticated client can send, against a
//! real key set fetched from the test identity provider (one RSA key, and eight, with each
//! `keySelection`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::Algorithm;
use tokengate_keys::{KeyCache, KeySettings};
use tokengate_policy::{KeyFiles, compile, parse_documents};
use tokengate_sidecar::gate::{Decision, Gate, Startup, StartupMode};
use tokengate_sidecar::metrics::Metrics;
use tokengate_sidecar::token_cache::TokenCache;
use tokengate_testkit::idp::{DEFAULT_AUDIENCE, IdentityProvider, KeyFamily};

struct NoFiles;
impl KeyFiles for NoFiles {
    fn read(&self, path: &str) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            path.to_owned(),
        ))
    }
}

fn request(token: &str) -> http::request::Parts {
    http::Request::get("/orders")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .expect("request")
        .into_parts()
        .0
}

/// A token of the provider with its payload changed: well-formed, signature of the right size,
/// verifying with no key.
fn forged(valid: &str) -> String {
    let mut parts = valid.split('.');
    let (header, _, signature) = (
        parts.next().expect("header"),
        parts.next(),
        parts.next().expect("signature"),
    );
    let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin","exp":4102444800}"#);
    format!("{header}.{payload}.{signature}")
}

fn without_kid(token: &str) -> String {
    let (_, rest) = token.split_once('.').expect("header");
    format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#)
    )
}

fn with_kid(token: &str, kid: &str) -> String {
    let (_, rest) = token.split_once('.').expect("header");
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": kid}).to_string();
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header))
}

fn bench_refusals(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (rsa_keys, selection) in [(1, "ByKid"), (8, "ByKid"), (8, "TryAll")] {
        let idp = runtime
            .block_on(IdentityProvider::start())
            .expect("identity provider");
        for _ in 1..rsa_keys {
            idp.rotate(KeyFamily::Rsa);
        }
        let text = format!(
            "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {{name: bench}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n  validateJwt:\n    jwksUris: [\"{}\"]\n    audiences: [\"{DEFAULT_AUDIENCE}\"]\n    keySelection: {selection}\n",
            idp.jwks_url()
        );
        let policy = compile(&parse_documents(&text).expect("policy").remove(0), &NoFiles)
            .expect("compiles");
        let metrics = Metrics::new().expect("metrics");
        let gate = runtime.block_on(async {
            let keys = KeyCache::new(KeySettings::default(), Arc::clone(&metrics.keys), None)
                .expect("key cache");
            let gate = Gate::with(
                Arc::clone(&keys),
                TokenCache::new(10_000, &metrics),
                Startup::new(StartupMode::FailClosed, Duration::ZERO),
            );
            let active = gate.apply_policy(policy);
            keys.fetch_all(&active.sources).await;
            gate
        });
        let valid = idp.token(Algorithm::RS256);
        let forged = forged(&valid);
        let mut shapes = vec![("kid-less forged", without_kid(&forged))];
        if rsa_keys == 1 {
            shapes.extend([
                ("unknown kid", with_kid(&forged, "nobody")),
                ("known kid, wrong signature", forged.clone()),
                ("garbage", "Z2FyYmFnZQ.Z2FyYmFnZQ.Z2FyYmFnZQ".to_owned()),
                ("valid, cache hit", valid.clone()),
            ]);
        }
        for (shape, token) in shapes {
            let parts = request(&token);
            let outcome = match runtime.block_on(gate.decide(&parts)) {
                Decision::Allow(permit) => permit.basis.as_str().to_owned(),
                Decision::Deny(refusal) => refusal.rejection.to_string(),
            };
            println!("{shape} ({rsa_keys} RSA keys, {selection}): {outcome}");
            c.bench_function(
                &format!("decide {shape}, {rsa_keys} RSA keys, {selection}"),
                |b| {
                    b.iter(|| {
                        matches!(
                            runtime.block_on(gate.decide(black_box(&parts))),
                            Decision::Allow(_)
                        )
                    })
                },
            );
        }
    }
}

criterion_group!(benches, bench_refusals);
criterion_main!(benches);
