//! Validation cost per token: signature and claim checks, no network; cold (parsing and full
//! verification) and through the gate with its verified-token cache (a hit: route, extraction,
//! digest, lookup, key and time rechecks).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::Algorithm;
use std::sync::Arc;
use tokengate_keys::{KeyView, SourceKeys};
use tokengate_policy::{KeyFiles, compile, parse_documents};
use tokengate_sidecar::gate::{Decision, Gate, Startup, StartupMode};
use tokengate_sidecar::metrics::Metrics;
use tokengate_sidecar::token::ParsedToken;
use tokengate_sidecar::token_cache::TokenCache;
use tokengate_sidecar::trace::NoTrace;
use tokengate_sidecar::verify::verify;
use tokengate_testkit::idp::{EntraTokenVersion, IdentityProvider, KeyFamily};

struct NoFiles;
impl KeyFiles for NoFiles {
    fn read(&self, path: &str) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            path.to_owned(),
        ))
    }
}

fn bench_verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let idp = runtime
        .block_on(IdentityProvider::start())
        .expect("identity provider");
    let rsa = idp.current_key(KeyFamily::Rsa);
    let p256 = idp.current_key(KeyFamily::EcP256);
    let text = format!(
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {{name: bench}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n  validateJwt:\n    issuerSigningKeys: [{{jwk: {}}}, {{jwk: {}}}]\n    issuers: [\"{}\"]\n    audiences: [\"api://tokengate-tests\"]\n    requiredClaims: [{{name: sub}}]\n",
        rsa.jwk,
        p256.jwk,
        idp.issuer()
    );
    let doc = parse_documents(&text).expect("policy").remove(0);
    let policy = compile(&doc, &NoFiles).expect("compiles");
    let metrics = Metrics::new().expect("metrics");
    let view = KeyView {
        static_keys: &policy.verification.static_keys,
        remote: Vec::new(),
    };
    let keys = tokengate_keys::KeyCache::new(
        tokengate_keys::KeySettings::default(),
        Arc::clone(&metrics.keys),
        None,
    )
    .expect("key cache");
    let gate = Gate::with(
        keys,
        TokenCache::new(10_000, &metrics),
        Startup::new(StartupMode::FailClosed, std::time::Duration::ZERO),
    );
    gate.apply_policy(policy.clone());
    // The gate's decisions on this thread, without a scheduler hop.
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let token = idp.token(alg);
        // Taken after minting: the token's nbf is its minting second.
        let now = tokengate_sidecar::gate::unix_now() + 1.0;
        let parse_and_verify = |token: &str| {
            let parsed = ParsedToken::parse(token)?;
            verify(&parsed, &policy.verification, &view, now, &mut NoTrace)
        };
        parse_and_verify(&token).expect("token verifies");
        c.bench_function(&format!("verify {alg:?} cold"), |b| {
            b.iter(|| parse_and_verify(black_box(&token)))
        });
        let request = http::Request::get("/")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .expect("request")
            .into_parts()
            .0;
        let decide = || match local.block_on(gate.decide(black_box(&request))) {
            Decision::Allow(permit) => permit,
            Decision::Deny(refusal) => panic!("refused: {}", refusal.rejection),
        };
        decide();
        c.bench_function(&format!("gate {alg:?} cached"), |b| b.iter(decide));
    }
}

/// The same RS256 verification in Entra mode: version, issuer, tenant, audience forms and client
/// application checked on top.
fn bench_verify_entra(c: &mut Criterion) {
    const TENANT: &str = "4a5f1b7e-2c3d-4e5f-8a9b-0c1d2e3f4a5b";
    const API: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
    const CLIENT: &str = "11111111-2222-4333-8444-555555555555";
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let idp = runtime
        .block_on(IdentityProvider::start_entra(TENANT))
        .expect("identity provider");
    let text = format!(
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {{name: bench}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n  validateAzureAdToken:\n    tenantId: {TENANT}\n    authenticationEndpoint: {}\n    audiences: [api://orders]\n    backendApplicationIds: [{API}]\n    clientApplicationIds: [{CLIENT}]\n    requiredClaims: [{{name: roles, match: any, values: [Orders.Read]}}]\n",
        idp.base_url()
    );
    let doc = parse_documents(&text).expect("policy").remove(0);
    let policy = compile(&doc, &NoFiles).expect("compiles");
    let key =
        tokengate_policy::VerificationKey::from_jwk_value(&idp.current_key(KeyFamily::Rsa).jwk)
            .expect("RSA key");
    let view = KeyView {
        static_keys: &[],
        remote: vec![std::sync::Arc::new(SourceKeys {
            keys: vec![key],
            issuer: Some(idp.issuer().to_owned()),
            fetched_at: std::time::Instant::now(),
        })],
    };
    let mut claims = idp.entra_claims(EntraTokenVersion::V2, TENANT, CLIENT, API);
    claims["roles"] = serde_json::json!(["Orders.Read"]);
    let token = idp.sign(Algorithm::RS256, &claims);
    let now = tokengate_sidecar::gate::unix_now() + 1.0;
    let parse_and_verify = |token: &str| {
        let parsed = ParsedToken::parse(token)?;
        verify(&parsed, &policy.verification, &view, now, &mut NoTrace)
    };
    parse_and_verify(&token).expect("token verifies");
    c.bench_function("verify RS256 entra v2.0", |b| {
        b.iter(|| parse_and_verify(black_box(&token)))
    });
}

criterion_group!(benches, bench_verify, bench_verify_entra);
criterion_main!(benches);
